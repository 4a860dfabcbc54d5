//! The key service the volume tests use: a real `LocalKms` in a temporary home with one
//! CMK, and the plaintext of a volume's data key obtained the way any authorised key
//! user could (an audited Decrypt with the volume's encryption context).
#![allow(dead_code)] // each test file uses a different part

use crypto_core::kms::{CreateKeyRequest, DecryptRequest, KeyService, LocalKms, LocalKmsConfig};

pub struct TestKms {
    pub kms: LocalKms,
    pub key_arn: String,
    _home: tempfile::TempDir,
}

impl TestKms {
    pub fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let kms = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
        let key_arn = kms
            .create_key(&CreateKeyRequest {
                description: "volume tests".into(),
                ..Default::default()
            })
            .unwrap()
            .arn;
        Self {
            kms,
            key_arn,
            _home: home,
        }
    }

    pub fn disable(&self) {
        self.kms.disable_key(&self.key_arn).unwrap();
    }

    pub fn enable(&self) {
        self.kms.enable_key(&self.key_arn).unwrap();
    }

    /// The 64-byte data key of `volume`.
    pub fn data_key(&self, volume: &blockdev::volume::EncryptedVolume) -> Vec<u8> {
        let decrypted = self
            .kms
            .decrypt(&DecryptRequest {
                ciphertext_blob: volume.wrapped_key().blob.clone(),
                encryption_context: volume.encryption_context(),
                key_id: Some(volume.key_arn().to_string()),
            })
            .unwrap();
        decrypted.plaintext.expose().to_vec()
    }
}
