//! The keystore file (`kms/keystore.json`): whatever bytes it holds, opening the key
//! service and using every key it lists never panics. The first input byte picks
//! whether the rest is the whole file, or only its JSON body under a header line
//! whose checksum is made right, so that mutations reach the JSON and the records
//! instead of stopping at the SHA-256. Seeds: real keystores (`scripts/fuzz.sh`).
#![no_main]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use atrest_fuzz::{scratch_dir, KEYSTORE_ROOT_KEY};
use crypto_core::kms::{
    DecryptRequest, EncryptionContext, KeyService, ListRequest, LocalKms, LocalKmsConfig,
};
use crypto_core::trail::{HEAD_FILE, LOG_FILE};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

struct Home {
    _dir: tempfile::TempDir,
    home: PathBuf,
    root_key: PathBuf,
}

fn home() -> &'static Home {
    static HOME: OnceLock<Home> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = scratch_dir("keystore");
        let home = dir.path().join("home");
        fs::create_dir_all(home.join("kms")).expect("kms dir");
        let root_key = dir.path().join("root.key");
        fs::write(&root_key, KEYSTORE_ROOT_KEY).expect("root key");
        fs::set_permissions(&root_key, fs::Permissions::from_mode(0o600)).expect("chmod");
        Home {
            _dir: dir,
            home,
            root_key,
        }
    })
}

fn with_checksum(body: &[u8]) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(body));
    let mut file = format!("atrest-keystore 1 gen:7 sha256:{digest}\n").into_bytes();
    file.extend_from_slice(body);
    file
}

fn exercise(home: &Path, root_key: &Path) {
    let mut config = LocalKmsConfig::new();
    config.root_key_file = Some(root_key.to_path_buf());
    let Ok(kms) = LocalKms::open(home, config) else {
        return;
    };
    let _ = kms.keystore_generation();
    let _ = kms.list_aliases(None, &ListRequest::default());
    let Ok(keys) = kms.list_keys(&ListRequest::default()) else {
        return;
    };
    let context = EncryptionContext::new();
    for key in keys.items.iter().take(8) {
        let _ = kms.describe_key(&key.key_id);
        let _ = kms.get_key_rotation_status(&key.key_id);
        let _ = kms.list_key_rotations(&key.key_id);
        if let Ok(wrapped) = kms.encrypt(&key.key_id, b"fuzz", &context) {
            let decrypted = kms
                .decrypt(&DecryptRequest {
                    ciphertext_blob: wrapped.ciphertext_blob,
                    encryption_context: context.clone(),
                    key_id: None,
                })
                .expect("what the key service just encrypted decrypts");
            assert_eq!(decrypted.plaintext.expose(), b"fuzz");
        }
        // Updates go through maintenance and re-encoding of the parsed store.
        let _ = kms.disable_key(&key.key_id);
        let _ = kms.enable_key(&key.key_id);
    }
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let home = home();
    let file = if mode & 1 == 0 {
        with_checksum(rest)
    } else {
        rest.to_vec()
    };
    fs::write(home.home.join("kms/keystore.json"), file).expect("write keystore");
    // An empty trail each run: it would otherwise grow by every audited call. The
    // files are emptied, not removed: `Trail::open` creating them costs a directory
    // sync per input, and an empty log and head are a new trail.
    for name in [LOG_FILE, HEAD_FILE] {
        let path = home.home.join("trail").join(name);
        match fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) => file.set_len(0).expect("empty a trail file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        }
    }
    exercise(&home.home, &home.root_key);
});
