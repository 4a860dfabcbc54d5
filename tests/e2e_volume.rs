//! `atrest volume create` / `volume info` end to end, and the at-rest check: a sector
//! written through `EncryptedVolume` is, in the file, OpenSSL's AES-256-XTS of the
//! plaintext (python3 `cryptography`, which calls OpenSSL's EVP XTS), and the plaintext
//! appears nowhere in the file.
//!
//! The test gets the plaintext data key as any authorised key user could: Decrypt of
//! the header's wrapped key with the volume's encryption context (audited). No
//! test-only hook exists in the product for it.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output};

use blockdev::volume::{EncryptedVolume, Volume};
use crypto_core::kms::{CreateKeyRequest, DecryptRequest, KeyService, LocalKms, LocalKmsConfig};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

fn atrest(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atrest"));
    cmd.arg("--home").arg(home).args(args);
    for var in [
        "ATREST_REGION",
        "ATREST_ACCOUNT",
        "ATREST_PRINCIPAL",
        "ATREST_ROOT_KEY_FILE",
        "ATREST_CLOCK_OFFSET",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run atrest")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "atrest failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

fn kms(home: &Path) -> LocalKms {
    LocalKms::open(home, LocalKmsConfig::new()).expect("open the key service")
}

fn create_key(home: &Path) -> String {
    let request = CreateKeyRequest {
        description: "e2e volume".into(),
        ..Default::default()
    };
    let arn = kms(home).create_key(&request).expect("create key").arn;
    kms(home)
        .create_alias("alias/e2e-volume", &arn)
        .expect("create alias");
    arn
}

/// AES-256-XTS decryption of one data sector by OpenSSL, tweak = LE sector number.
fn openssl_xts_decrypt(key: &[u8], sector: u64, ciphertext: &[u8]) -> Vec<u8> {
    let script = "import sys\n\
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
        key = bytes.fromhex(sys.argv[1]); tweak = int(sys.argv[2]).to_bytes(16, 'little')\n\
        d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()\n\
        sys.stdout.buffer.write(d.update(sys.stdin.buffer.read()) + d.finalize())\n";
    let hex_key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new("python3")
        .args(["-c", script, &hex_key, &sector.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 must be installed (scripts/install-test-deps.sh)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), ciphertext).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "python3 cryptography failed");
    output.stdout
}

#[test]
fn create_info_and_the_data_at_rest() {
    if !common::require_python3_imports(&["cryptography"]) {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let key_arn = create_key(home.path());
    let path = home.path().join("disk.vol");
    let path_str = path.to_str().unwrap();

    let created = json_of(&atrest(
        home.path(),
        &[
            "volume",
            "create",
            path_str,
            "--size",
            "64M",
            "--key-id",
            "alias/e2e-volume",
        ],
        &[],
    ));
    assert_eq!(created["KeyId"], key_arn.as_str());
    assert_eq!(created["Size"], 64 * MIB);

    let info = json_of(&atrest(home.path(), &["volume", "info", path_str], &[]));
    assert_eq!(info["VolumeId"], created["VolumeId"]);
    assert_eq!(info["Size"], 64 * MIB);
    assert_eq!(info["Encrypted"], true);
    assert_eq!(info["Cipher"], "aes-xts-plain64");
    assert_eq!(info["KeyId"], key_arn.as_str());
    assert_eq!(info["KeyState"], "Enabled");
    assert_eq!(info["SectorSize"], 4096);
    assert_eq!(info["DataOffset"], MIB);
    assert_eq!(info["HeaderCopy"], "primary");
    assert_eq!(info["HeaderWarning"], Value::Null);
    assert_eq!(
        info["EncryptionContext"]["atrest:volume-id"],
        created["VolumeId"]
    );

    // Sparse: 65 MiB long, a few KiB on disk.
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 65 * MIB);
    assert!(
        meta.blocks() * 512 < 256 * 1024,
        "{} bytes allocated",
        meta.blocks() * 512
    );

    // Write a recognisable pattern to data sectors 7 and 8 through the volume.
    let pattern: Vec<u8> = b"atrest-at-rest-pattern-0123456789"
        .iter()
        .copied()
        .cycle()
        .take(8192)
        .collect();
    let kms = kms(home.path());
    let volume = EncryptedVolume::open(&path, &kms, false).unwrap();
    volume.write_at(7 * 4096, &pattern).unwrap();
    volume.flush().unwrap();
    let data_key = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: volume.wrapped_key().blob.clone(),
            encryption_context: volume.encryption_context(),
            key_id: Some(key_arn.clone()),
        })
        .unwrap();
    drop(volume);

    let file = std::fs::File::open(&path).unwrap();
    for sector in [7u64, 8] {
        let mut stored = vec![0u8; 4096];
        file.read_exact_at(&mut stored, MIB + sector * 4096)
            .unwrap();
        let plain = openssl_xts_decrypt(data_key.plaintext.expose(), sector, &stored);
        let at = ((sector - 7) * 4096) as usize;
        assert_eq!(
            plain,
            &pattern[at..at + 4096],
            "sector {sector} differs from OpenSSL's decryption"
        );
    }
    let whole = std::fs::read(&path).unwrap();
    assert!(
        !whole.windows(16).any(|w| w == &pattern[..16]),
        "the plaintext pattern is visible in the volume file"
    );
}

#[test]
fn create_refuses_bad_input_and_existing_files() {
    let home = tempfile::tempdir().unwrap();
    create_key(home.path());
    let path = home.path().join("v.vol");
    let p = path.to_str().unwrap();

    let odd = atrest(
        home.path(),
        &[
            "volume",
            "create",
            p,
            "--size",
            "1GB",
            "--key-id",
            "alias/e2e-volume",
        ],
        &[],
    );
    assert!(!odd.status.success());
    assert!(String::from_utf8_lossy(&odd.stderr).contains("multiple of 4096"));
    assert!(!path.exists());

    let no_key = atrest(home.path(), &["volume", "create", p, "--size", "1M"], &[]);
    assert!(!no_key.status.success());

    let unknown = atrest(
        home.path(),
        &[
            "volume",
            "create",
            p,
            "--size",
            "1M",
            "--key-id",
            "alias/nope",
        ],
        &[],
    );
    assert_eq!(unknown.status.code(), Some(254));
    assert!(String::from_utf8_lossy(&unknown.stderr).starts_with("NotFoundException"));
    assert!(!path.exists());

    json_of(&atrest(
        home.path(),
        &["volume", "create", p, "--size", "1M", "--unencrypted"],
        &[],
    ));
    let again = atrest(
        home.path(),
        &["volume", "create", p, "--size", "1M", "--unencrypted"],
        &[],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let info = json_of(&atrest(home.path(), &["volume", "info", p], &[]));
    assert_eq!(info["Encrypted"], false);
    assert_eq!(info["Cipher"], "none");
    assert_eq!(info["Size"], MIB);
    assert_eq!(info.get("KeyId"), None);
}

#[test]
fn info_reports_damage_headerless_files_and_a_deleted_key() {
    let home = tempfile::tempdir().unwrap();
    let key_arn = create_key(home.path());
    let path = home.path().join("v.vol");
    let p = path.to_str().unwrap();
    json_of(&atrest(
        home.path(),
        &["volume", "create", p, "--size", "4M", "--key-id", &key_arn],
        &[],
    ));

    // A damaged primary header: info still works, from the backup, and says so.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // Flipped, not overwritten: byte 20 is in the random volume id, and writing a
    // fixed value left the header intact whenever the id already held it (1 in 256).
    let flip = |at: u64| {
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
    };
    flip(20);
    let info = json_of(&atrest(home.path(), &["volume", "info", p], &[]));
    assert_eq!(info["HeaderCopy"], "backup");
    assert!(info["HeaderWarning"].as_str().unwrap().contains("checksum"));

    // Both damaged: a clear error naming each copy, never a raw image.
    flip(512 * 1024 + 20);
    let broken = atrest(home.path(), &["volume", "info", p], &[]);
    assert!(!broken.status.success());
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(
        stderr.contains("no valid atrest volume header")
            && stderr.contains("primary copy at offset 0: header checksum")
            && stderr.contains("backup copy at offset 524288: header checksum"),
        "{stderr}"
    );

    // A file without the magic is not guessed to be a raw image: info says why it is
    // no volume and how a raw image is served on purpose.
    let raw = home.path().join("raw.img");
    std::fs::write(&raw, vec![1u8; 8192]).unwrap();
    let out = atrest(home.path(), &["volume", "info", raw.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("primary copy at offset 0: no atrest volume magic")
            && stderr.contains("backup copy at offset 524288: header truncated: 0 of 4096")
            && stderr.contains("--raw NAME")
            && stderr.contains("format = \"raw\""),
        "{stderr}"
    );

    // Crypto-shred: once the key's deletion completes, info says the key is gone.
    let fresh = home.path().join("w.vol");
    let f = fresh.to_str().unwrap();
    json_of(&atrest(
        home.path(),
        &["volume", "create", f, "--size", "4M", "--key-id", &key_arn],
        &[],
    ));
    kms(home.path())
        .schedule_key_deletion(&key_arn, Some(7))
        .unwrap();
    let info = json_of(&atrest(home.path(), &["volume", "info", f], &[]));
    assert_eq!(info["KeyState"], "PendingDeletion");
    let info = json_of(&atrest(
        home.path(),
        &["volume", "info", f],
        &[("ATREST_CLOCK_OFFSET", "8d")],
    ));
    assert_eq!(info["KeyState"], "Deleted");
    assert!(info["KeyStateReason"]
        .as_str()
        .unwrap()
        .contains("unrecoverable"));
}
