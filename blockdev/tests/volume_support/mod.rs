//! A small in-memory key service for the volume tests: it hands out random data keys,
//! keeps them by blob, checks the encryption context and key on Decrypt, counts
//! Decrypt calls and can be switched off to act like a disabled CMK.
#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crypto_core::kms::{
    DataKeySpec, DecryptRequest, DecryptedData, EncryptionContext, GenerateDataKeyRequest,
    GeneratedDataKey, KeyMetadata, KeyService, KeyState, KmsError, ReEncryptRequest, ReEncrypted,
    WrappedData,
};
use crypto_core::secret::SecretBytes;

pub const KEY_ARN: &str = "arn:aws:kms:local:000000000000:key/11111111-2222-3333-4444-555555555555";

/// A data key and the encryption context it was wrapped under.
type StoredKey = (Vec<u8>, EncryptionContext);

#[derive(Default)]
pub struct TestKms {
    /// By ciphertext blob.
    keys: Mutex<HashMap<Vec<u8>, StoredKey>>,
    pub decrypts: AtomicUsize,
    pub disabled: AtomicBool,
}

impl TestKms {
    fn check_enabled(&self) -> Result<(), KmsError> {
        if self.disabled.load(Ordering::SeqCst) {
            return Err(KmsError::Disabled(format!("{KEY_ARN} is disabled.")));
        }
        Ok(())
    }

    /// The plaintext data key behind `blob`, as an authorised key user would get it.
    pub fn plaintext_of(&self, blob: &[u8]) -> Vec<u8> {
        self.keys.lock().unwrap()[blob].0.clone()
    }
}

impl KeyService for TestKms {
    fn describe_key(&self, _key_id: &str) -> Result<KeyMetadata, KmsError> {
        let key_state = if self.disabled.load(Ordering::SeqCst) {
            KeyState::Disabled
        } else {
            KeyState::Enabled
        };
        Ok(KeyMetadata {
            key_id: KEY_ARN.rsplit('/').next().unwrap().into(),
            arn: KEY_ARN.into(),
            key_state,
        })
    }

    fn generate_data_key(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<GeneratedDataKey, KmsError> {
        let wrapped = self.generate_data_key_without_plaintext(req)?;
        let plaintext = SecretBytes::from_slice(&self.plaintext_of(&wrapped.ciphertext_blob));
        Ok(GeneratedDataKey {
            key_id: wrapped.key_id,
            plaintext,
            ciphertext_blob: wrapped.ciphertext_blob,
        })
    }

    fn generate_data_key_without_plaintext(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<WrappedData, KmsError> {
        self.check_enabled()?;
        let len = match req.spec {
            DataKeySpec::Aes256 => 32,
            DataKeySpec::Aes128 => 16,
            DataKeySpec::Bytes(n) => usize::from(n),
        };
        let key = SecretBytes::random(len).expose().to_vec();
        let blob = SecretBytes::random(48).expose().to_vec();
        self.keys
            .lock()
            .unwrap()
            .insert(blob.clone(), (key, req.encryption_context.clone()));
        Ok(WrappedData {
            key_id: KEY_ARN.into(),
            ciphertext_blob: blob,
        })
    }

    fn encrypt(&self, _: &str, _: &[u8], _: &EncryptionContext) -> Result<WrappedData, KmsError> {
        Err(KmsError::Validation("TestKms wraps only data keys".into()))
    }

    fn decrypt(&self, req: &DecryptRequest) -> Result<DecryptedData, KmsError> {
        self.decrypts.fetch_add(1, Ordering::SeqCst);
        self.check_enabled()?;
        if req.key_id.as_deref().is_some_and(|k| k != KEY_ARN) {
            return Err(KmsError::IncorrectKey("wrong key".into()));
        }
        let keys = self.keys.lock().unwrap();
        match keys.get(&req.ciphertext_blob) {
            Some((key, context)) if *context == req.encryption_context => Ok(DecryptedData {
                key_id: KEY_ARN.into(),
                plaintext: SecretBytes::from_slice(key),
            }),
            _ => Err(KmsError::InvalidCiphertext(
                "no such blob under this context".into(),
            )),
        }
    }

    fn re_encrypt(&self, _: &ReEncryptRequest) -> Result<ReEncrypted, KmsError> {
        Err(KmsError::Validation("TestKms does not re-encrypt".into()))
    }
}
