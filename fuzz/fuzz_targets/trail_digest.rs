//! Signed trail digests against tampering. A trail of twelve records with two digests
//! (over records 1-8 and 9-12) is made once; each input then changes it and the digest
//! validation must answer, never panic:
//!
//! - mode 0: XOR one byte of `trail.jsonl` with a non-zero mask: the records are all
//!   covered by digests, so validation must fail;
//! - mode 1: truncate `trail.jsonl`: the digests cover more than is left, so
//!   validation must fail;
//! - mode 2: replace a digest file with the fuzzer's bytes: any answer but a panic;
//! - mode 3: XOR one byte of a digest file: any answer but a panic, and the records
//!   themselves still validate against their hash chain.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use atrest_fuzz::{scratch_dir, Input};
use crypto_core::trail::digest::{self, DigestSigner, DIGEST_DIR};
use crypto_core::trail::{ApiCall, Trail, LOG_FILE};
use libfuzzer_sys::fuzz_target;

struct Template {
    dir: tempfile::TempDir,
    public_key: String,
    digests: Vec<String>,
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

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = scratch_dir("trail-digest-template");
        let trail = Trail::open(dir.path(), "local", "000000000000").expect("open trail");
        let signer = DigestSigner::open_or_create(dir.path()).expect("digest key");
        for n in 0..8 {
            trail.append(&call(n)).expect("append");
        }
        digest::write_digest(dir.path(), &signer).expect("first digest");
        for n in 8..12 {
            trail.append(&call(n)).expect("append");
        }
        digest::write_digest(dir.path(), &signer).expect("second digest");
        digest::validate_digests(dir.path(), None).expect("the template validates");
        let mut digests: Vec<String> = std::fs::read_dir(dir.path().join(DIGEST_DIR))
            .expect("digest dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("digest-"))
            .collect();
        digests.sort();
        Template {
            public_key: signer.public_key_hex(),
            dir,
            digests,
        }
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let template = template();
    let mut input = Input::new(data);
    let mode = input.u8() % 4;
    let which = usize::from(input.u8()) % template.digests.len();
    let position = input.u32();
    let mask = input.u8();

    let work = scratch_dir("trail-digest");
    copy_dir(template.dir.path(), work.path());
    let log = work.path().join(LOG_FILE);
    let digest_file = work.path().join(DIGEST_DIR).join(&template.digests[which]);
    let mut log_bytes = std::fs::read(&log).expect("read log");
    match mode {
        0 => {
            let at = position as usize % log_bytes.len();
            log_bytes[at] ^= mask.max(1);
            std::fs::write(&log, &log_bytes).expect("write log");
        }
        1 => {
            log_bytes.truncate(position as usize % log_bytes.len());
            std::fs::write(&log, &log_bytes).expect("write log");
        }
        2 => std::fs::write(&digest_file, input.rest()).expect("write digest"),
        _ => {
            let mut bytes = std::fs::read(&digest_file).expect("read digest");
            let at = position as usize % bytes.len();
            bytes[at] ^= mask.max(1);
            std::fs::write(&digest_file, &bytes).expect("write digest");
        }
    }
    let verdict = digest::validate_digests(work.path(), Some(&template.public_key));
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
