//! Secret hygiene of the volume path, next to tests/cli_kms.rs (which covers the key
//! service's commands): with `RUST_LOG=trace`, create volumes, serve one over NBD
//! and write through it, rewrap, copy and import; then obtain every secret as a key
//! holder could (the volumes' plaintext data keys by an audited Decrypt of the
//! header's wrapped key, every CMK's material unsealed with the root key as
//! docs/FORMAT.md describes, the root key itself) and search ATREST_HOME, every
//! volume file, the trail, every log line and every output for each of them, raw,
//! in hex and in base64. None may appear (the root key file itself excepted). While it
//! serves, the server's key pages are locked in RAM (`VmLck`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use blockdev::volume::EncryptedVolume;
use common::{contains, nbdsh, require_nbdsh, spellings, unseal_cmk_material, Home};
use crypto_core::kms::{DecryptRequest, KeyService, LocalKms, LocalKmsConfig};

/// Runs `atrest ARGS` (with the test's `RUST_LOG=trace`); keeps all it printed.
fn traced(home: &Home, printed: &mut Vec<u8>, args: &[&str]) -> Output {
    let out = home.atrest().args(args).output().expect("run atrest");
    printed.extend_from_slice(&out.stdout);
    printed.extend_from_slice(&out.stderr);
    common::assert_success(&format!("atrest {}", args.join(" ")), &out);
    out
}

fn data_key(home: &Path, path: &Path) -> Vec<u8> {
    let volume = EncryptedVolume::open_locked(path, true).expect("open locked");
    let kms = LocalKms::open(home, LocalKmsConfig::new()).expect("key service");
    kms.decrypt(&DecryptRequest {
        ciphertext_blob: volume.wrapped_key().blob.clone(),
        encryption_context: volume.encryption_context(),
        key_id: Some(volume.key_arn().to_owned()),
    })
    .expect("unwrap the data key")
    .plaintext
    .expose()
    .to_vec()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_data_key_cmk_material_or_root_key_in_files_logs_or_output() {
    if !require_nbdsh() {
        return;
    }
    // Inherited by every process below; this test binary holds this one test only.
    std::env::set_var("RUST_LOG", "trace");
    let home = Home::new();
    let mut printed = Vec::new();
    let key: serde_json::Value = serde_json::from_slice(
        &traced(
            &home,
            &mut printed,
            &["kms", "create-key", "--alias", "alias/vol"],
        )
        .stdout,
    )
    .expect("JSON");
    let key = key["KeyMetadata"]["Arn"].as_str().expect("arn").to_owned();
    traced(
        &home,
        &mut printed,
        &["kms", "create-key", "--alias", "alias/other"],
    );

    let volumes = home.file("volumes");
    std::fs::create_dir(&volumes).unwrap();
    let first = volumes.join("first.vol");
    traced(
        &home,
        &mut printed,
        &[
            "volume",
            "create",
            first.to_str().unwrap(),
            "--size",
            "8M",
            "--key-id",
            &key,
        ],
    );
    traced(
        &home,
        &mut printed,
        &["volume", "info", first.to_str().unwrap()],
    );

    let served = home.serve(&[
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--export",
        &format!("first={}", first.display()),
    ]);
    let out = nbdsh()
        .args(["-u", &served.uri("first"), "-c"])
        .arg(
            "h.pwrite(b'secret hygiene ' * 1000, 4096)\n\
             h.flush()\n\
             assert h.pread(15, 4096) == b'secret hygiene '\n\
             h.pread(8 << 20, 0)\n",
        )
        .output()
        .expect("nbdsh");
    printed.extend_from_slice(&out.stdout);
    printed.extend_from_slice(&out.stderr);
    common::assert_success("nbdsh", &out);
    // The serving process keeps its keys (data key, XTS round keys) on locked pages.
    let status = std::fs::read_to_string(format!("/proc/{}/status", served.pid()))
        .expect("read the server's /proc status");
    let locked_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmLck in the server's status:\n{status}"));
    assert!(
        locked_kib >= 4,
        "the server holding a data key has no locked memory (VmLck {locked_kib} kB)"
    );
    let log = served.log();
    served.stop();
    printed.extend_from_slice(log.as_bytes());
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "trace logging is on: {log}"
    );

    traced(
        &home,
        &mut printed,
        &[
            "volume",
            "rewrap",
            first.to_str().unwrap(),
            "--key-id",
            "alias/other",
        ],
    );
    let copy = volumes.join("copy.vol");
    traced(
        &home,
        &mut printed,
        &[
            "volume",
            "copy",
            first.to_str().unwrap(),
            copy.to_str().unwrap(),
            "--key-id",
            &key,
        ],
    );
    let raw = volumes.join("raw.img");
    std::fs::write(&raw, common::pseudo_random(2 << 20, 3)).unwrap();
    let imported = volumes.join("imported.vol");
    traced(
        &home,
        &mut printed,
        &[
            "volume",
            "import",
            raw.to_str().unwrap(),
            imported.to_str().unwrap(),
            "--key-id",
            &key,
        ],
    );
    traced(&home, &mut printed, &["trail", "validate"]);

    let mut secrets = Vec::new();
    for volume in [&first, &copy, &imported] {
        let key = data_key(home.path(), volume);
        assert_eq!(key.len(), 64);
        // Each XTS half too: a leak of one half is a leak.
        secrets.push(key[..32].to_vec());
        secrets.push(key[32..].to_vec());
    }
    let root_key_path = home.path().join("kms/root.key");
    let root_key = std::fs::read(&root_key_path).expect("root key");
    let materials = unseal_cmk_material(home.path(), &root_key);
    assert_eq!(materials.len(), 2, "two CMKs, one material each");
    secrets.extend(materials);
    secrets.push(root_key);

    let mut files = Vec::new();
    files_under(home.path(), &mut files);
    files.retain(|path| path != &root_key_path && path != &raw);
    assert!(files.iter().any(|p| p.ends_with("trail/trail.jsonl")));
    assert!(files.iter().any(|p| p.ends_with("kms/keystore.json")));
    assert!(files.contains(&first) && files.contains(&imported));
    for path in &files {
        let bytes = std::fs::read(path).expect("read");
        for secret in &secrets {
            for form in spellings(secret) {
                assert!(!contains(&bytes, &form), "a secret in {}", path.display());
            }
        }
    }
    for secret in &secrets {
        for form in spellings(secret) {
            assert!(!contains(&printed, &form), "a secret in the output or logs");
        }
    }
}
