//! Signed trail digests against tampering. A trail of six records with two digests
//! (over records 1-4 and 5-6) is made once; each input then changes it and the digest
//! validation must answer, never panic:
//!
//! - mode 0: XOR one byte of `trail.jsonl` with a non-zero mask: the records are all
//!   covered by digests, so validation must fail;
//! - mode 1: truncate `trail.jsonl`: the digests cover more than is left, so
//!   validation must fail;
//! - mode 2: replace a digest file with the fuzzer's bytes: any answer but a panic;
//! - mode 3: XOR one byte of a digest file: any answer but a panic.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use atrest_fuzz::{scratch_dir, Input};
use crypto_core::trail::digest::{self, DigestSigner, DIGEST_DIR};
use crypto_core::trail::{ApiCall, RequestSource, Trail, LOG_FILE};
use libfuzzer_sys::fuzz_target;

/// The trail and its digests, made once per process in a directory that every input
/// changes one file of and then puts back (`Restore`): copying the whole directory
/// per input was most of the time.
struct Template {
    dir: tempfile::TempDir,
    public_key: String,
    /// `trail.jsonl` as made.
    log: Vec<u8>,
    /// The digest files (path, bytes as made), in sequence.
    digests: Vec<(PathBuf, Vec<u8>)>,
}

fn call(n: u32) -> ApiCall {
    ApiCall {
        event_time: time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(i64::from(n)),
        event_name: if n % 2 == 0 {
            "Decrypt"
        } else {
            "GenerateDataKey"
        }
        .into(),
        principal: "arn:aws:iam::000000000000:root".into(),
        request_parameters: serde_json::json!({"keyId": "alias/fuzz", "n": n}),
        response_elements: None,
        error_code: (n % 5 == 0).then(|| "DisabledException".to_owned()),
        error_message: None,
        read_only: true,
        resources: vec!["arn:aws:kms:local:000000000000:key/fuzz".into()],
    }
}

/// A fixed source, not `RequestSource::local()`: that one names the process id in
/// `userAgent`, so the length of `trail.jsonl`, and with it the place an input's
/// position lands on, changed with the number of digits of the pid. An input then
/// did not do the same thing in a replay as in the fuzzing process that saved it.
fn source() -> RequestSource {
    RequestSource {
        ip_address: "localhost".into(),
        user_agent: "atrest-fuzz".into(),
        access_key_id: None,
        request_id: Some("00000000-0000-4000-8000-000000000000".into()),
    }
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = scratch_dir("trail-digest");
        let trail = Trail::open(dir.path(), "local", "000000000000").expect("open trail");
        let signer = DigestSigner::open_or_create(dir.path()).expect("digest key");
        // Six records, not the twelve of before: validation reads every byte of the
        // trail several times, and two digests of a few records each have every kind
        // of record (both event names, with and without an error) and the chain.
        for n in 0..4 {
            trail.append_from(&call(n), &source()).expect("append");
        }
        digest::write_digest(dir.path(), &signer).expect("first digest");
        for n in 4..6 {
            trail.append_from(&call(n), &source()).expect("append");
        }
        digest::write_digest(dir.path(), &signer).expect("second digest");
        digest::validate_digests(dir.path(), None).expect("the template validates");
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join(DIGEST_DIR))
            .expect("digest dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("digest-"))
            .collect();
        names.sort();
        let digests = names
            .iter()
            .map(|name| {
                let path = dir.path().join(DIGEST_DIR).join(name);
                let bytes = std::fs::read(&path).expect("read digest");
                (path, bytes)
            })
            .collect();
        Template {
            public_key: signer.public_key_hex(),
            log: std::fs::read(dir.path().join(LOG_FILE)).expect("read log"),
            dir,
            digests,
        }
    })
}

/// Puts a file of the template back as it was made, when dropped (after the input's
/// verdict; a failed assertion ends the process, template and all).
struct Restore<'a> {
    path: &'a Path,
    bytes: &'a [u8],
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        write(self.path, self.bytes);
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes)
        .unwrap_or_else(|e| panic!("cannot write the scratch file {}: {e}", path.display()));
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let template = template();
    let mut input = Input::new(data);
    let mode = input.u8() % 4;
    let which = usize::from(input.u8()) % template.digests.len();
    let position = input.u32() as usize;
    let mask = input.u8();

    let log = template.dir.path().join(LOG_FILE);
    let (digest_file, digest_bytes) = &template.digests[which];
    let _restore = match mode {
        0 => {
            let mut bytes = template.log.clone();
            bytes[position % template.log.len()] ^= mask.max(1);
            write(&log, &bytes);
            Restore {
                path: &log,
                bytes: &template.log,
            }
        }
        1 => {
            write(&log, &template.log[..position % template.log.len()]);
            Restore {
                path: &log,
                bytes: &template.log,
            }
        }
        2 => {
            write(digest_file, input.rest());
            Restore {
                path: digest_file,
                bytes: digest_bytes,
            }
        }
        _ => {
            let mut bytes = digest_bytes.clone();
            let at = position % bytes.len();
            bytes[at] ^= mask.max(1);
            write(digest_file, &bytes);
            Restore {
                path: digest_file,
                bytes: digest_bytes,
            }
        }
    };
    let verdict = digest::validate_digests(template.dir.path(), Some(&template.public_key));
    if mode < 2 {
        assert!(
            verdict.is_err(),
            "a changed trail.jsonl passed digest validation: {verdict:?}"
        );
    }
    if let Err(err) = &verdict {
        let _ = err.to_string();
    }
});
