//! Cryptographic operations: Encrypt, Decrypt, ReEncrypt, GenerateDataKey(WithoutPlaintext),
//! GenerateRandom.

use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Audit, LocalKms};
use crate::envelope::{self, MAX_PLAINTEXT_LEN};
use crate::kms::keystore::{KeyRecord, StoreData};
use crate::kms::operation::Operation;
use crate::kms::{
    DataKeySpec, DecryptRequest, DecryptedData, EncryptionContext, GenerateDataKeyRequest,
    GeneratedDataKey, KmsError, ReEncryptRequest, ReEncrypted, WrappedData,
};
use crate::secret::{Aes256Key, SecretBytes};

/// AWS's limit on a ciphertext blob passed to Decrypt or ReEncrypt.
const MAX_CIPHERTEXT_LEN: usize = 6144;
/// Bound on the encoded encryption context.
const MAX_CONTEXT_LEN: usize = 8192;
/// GenerateRandom's bounds on `NumberOfBytes`.
const MAX_RANDOM_BYTES: u32 = 1024;

impl LocalKms {
    /// The current material version of a key, unsealed.
    fn current_material(&self, id: &Uuid, key: &KeyRecord) -> Result<(u32, Aes256Key), KmsError> {
        let last = key
            .materials
            .len()
            .checked_sub(1)
            .ok_or_else(|| KmsError::Internal(format!("key {id} has no material")))?;
        let version = u32::try_from(last)
            .map_err(|_| KmsError::Internal(format!("key {id} has too many material versions")))?;
        let material =
            self.shared
                .keystore
                .unseal_material(id, version, &key.materials[last].sealed)?;
        Ok((version, material))
    }

    /// Checks and decrypts a blob for Decrypt/ReEncrypt: the blob's key must exist
    /// (and be `expected`, when the caller named one), allow `action` and be enabled.
    fn open_blob(
        &self,
        audit: &mut Audit,
        store: &StoreData,
        blob: &[u8],
        context: &EncryptionContext,
        expected: Option<&str>,
        action: &str,
    ) -> Result<(String, String, SecretBytes), KmsError> {
        if blob.is_empty() || blob.len() > MAX_CIPHERTEXT_LEN {
            return Err(KmsError::Validation(format!(
                "1 validation error detected: Value at 'ciphertextBlob' failed to satisfy \
                 constraint: Member must have length between 1 and {MAX_CIPHERTEXT_LEN}"
            )));
        }
        let parsed = envelope::parse(blob)?;
        let id = parsed.header.key_id;
        if let Some(named) = expected {
            let (named, named_arn) = self.resolve(store, named, audit.op)?;
            if named != id {
                audit.resources.push(named_arn);
                return Err(KmsError::IncorrectKey(
                    "The key ID in the request does not identify a KMS key that can perform this operation."
                        .into(),
                ));
            }
        }
        let Some(key) = store.keys.get(&id) else {
            if let Some(account) = store.deleted_key_accounts.get(&id) {
                let arn = self.arn_in(account, &id);
                audit.resources.push(arn.clone());
                return Err(KmsError::NotFound(format!(
                    "Key '{arn}' was deleted; its ciphertexts cannot be decrypted"
                )));
            }
            return Err(KmsError::InvalidCiphertext(
                "the ciphertext blob is not valid: it names no key of this key service".into(),
            ));
        };
        let arn = self.arn_in(&key.account, &id);
        audit.resources.push(arn.clone());
        self.authorize(key, action, &arn)?;
        audit.op.check_state(key.state, &arn)?;
        let version = parsed.header.material_version;
        let sealed = usize::try_from(version)
            .ok()
            .and_then(|v| key.materials.get(v))
            .ok_or_else(|| {
                KmsError::InvalidCiphertext(
                    "the ciphertext blob is not valid: unknown key material version".into(),
                )
            })?;
        let material = self
            .shared
            .keystore
            .unseal_material(&id, version, &sealed.sealed)?;
        let plaintext = envelope::open(&material, &parsed, context)?;
        Ok((arn, key_material_id(&id, version), plaintext))
    }

    fn generate(
        &self,
        op: Operation,
        req: &GenerateDataKeyRequest,
    ) -> Result<(String, SecretBytes, Vec<u8>), KmsError> {
        let mut request = json!({
            "keyId": req.key_id,
            "encryptionContext": req.encryption_context,
        });
        match req.spec {
            DataKeySpec::Aes256 => request["keySpec"] = json!("AES_256"),
            DataKeySpec::Aes128 => request["keySpec"] = json!("AES_128"),
            DataKeySpec::Bytes(n) => request["numberOfBytes"] = json!(n),
        }
        self.run(op, request, |audit| {
            let len = req.spec.byte_len()?;
            check_context(&req.encryption_context, "encryptionContext")?;
            let store = self.fresh()?;
            let (id, key, arn) = self.usable_key(audit, &store, &req.key_id, op, &op.action())?;
            let (version, material) = self.current_material(&id, key)?;
            let plaintext = SecretBytes::random(len);
            let blob = envelope::seal(
                &material,
                id,
                version,
                plaintext.expose(),
                &req.encryption_context,
            )?;
            audit.response = Some(json!({ "keyId": arn }));
            Ok((arn, plaintext, blob))
        })
    }

    pub(super) fn generate_data_key(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<GeneratedDataKey, KmsError> {
        let (key_id, plaintext, ciphertext_blob) =
            self.generate(Operation::GenerateDataKey, req)?;
        Ok(GeneratedDataKey {
            key_id,
            plaintext,
            ciphertext_blob,
        })
    }

    pub(super) fn generate_data_key_without_plaintext(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<WrappedData, KmsError> {
        let (key_id, _, ciphertext_blob) =
            self.generate(Operation::GenerateDataKeyWithoutPlaintext, req)?;
        Ok(WrappedData {
            key_id,
            ciphertext_blob,
        })
    }

    pub(super) fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        encryption_context: &EncryptionContext,
    ) -> Result<WrappedData, KmsError> {
        let request = json!({
            "keyId": key_id,
            "encryptionContext": encryption_context,
            "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
        });
        self.run(Operation::Encrypt, request, |audit| {
            if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT_LEN {
                return Err(KmsError::Validation(format!(
                    "1 validation error detected: Value at 'plaintext' failed to satisfy \
                     constraint: Member must have length between 1 and {MAX_PLAINTEXT_LEN}"
                )));
            }
            check_context(encryption_context, "encryptionContext")?;
            let store = self.fresh()?;
            let (id, key, arn) =
                self.usable_key(audit, &store, key_id, Operation::Encrypt, "kms:Encrypt")?;
            let (version, material) = self.current_material(&id, key)?;
            let ciphertext_blob =
                envelope::seal(&material, id, version, plaintext, encryption_context)?;
            audit.response = Some(json!({ "keyId": arn }));
            Ok(WrappedData {
                key_id: arn,
                ciphertext_blob,
            })
        })
    }

    pub(super) fn decrypt(&self, req: &DecryptRequest) -> Result<DecryptedData, KmsError> {
        let mut request = json!({
            "encryptionContext": req.encryption_context,
            "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
        });
        if let Some(key_id) = &req.key_id {
            request["keyId"] = json!(key_id);
        }
        self.run(Operation::Decrypt, request, |audit| {
            check_context(&req.encryption_context, "encryptionContext")?;
            let store = self.fresh()?;
            let (arn, key_material_id, plaintext) = self.open_blob(
                audit,
                &store,
                &req.ciphertext_blob,
                &req.encryption_context,
                req.key_id.as_deref(),
                "kms:Decrypt",
            )?;
            audit.response = Some(json!({ "keyId": arn, "keyMaterialId": key_material_id }));
            Ok(DecryptedData {
                key_id: arn,
                plaintext,
                key_material_id: Some(key_material_id),
            })
        })
    }

    pub(super) fn re_encrypt(&self, req: &ReEncryptRequest) -> Result<ReEncrypted, KmsError> {
        let mut request = json!({
            "destinationKeyId": req.destination_key_id,
            "sourceEncryptionContext": req.source_encryption_context,
            "destinationEncryptionContext": req.destination_encryption_context,
            "sourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "destinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        });
        if let Some(key_id) = &req.source_key_id {
            request["sourceKeyId"] = json!(key_id);
        }
        self.run(Operation::ReEncrypt, request, |audit| {
            check_context(&req.source_encryption_context, "sourceEncryptionContext")?;
            check_context(
                &req.destination_encryption_context,
                "destinationEncryptionContext",
            )?;
            let store = self.fresh()?;
            let (source_arn, source_material_id, plaintext) = self.open_blob(
                audit,
                &store,
                &req.ciphertext_blob,
                &req.source_encryption_context,
                req.source_key_id.as_deref(),
                "kms:ReEncryptFrom",
            )?;
            let (id, key, arn) = self.usable_key(
                audit,
                &store,
                &req.destination_key_id,
                Operation::ReEncrypt,
                "kms:ReEncryptTo",
            )?;
            let (version, material) = self.current_material(&id, key)?;
            let ciphertext_blob = envelope::seal(
                &material,
                id,
                version,
                plaintext.expose(),
                &req.destination_encryption_context,
            )?;
            let destination_material_id = key_material_id(&id, version);
            audit.response = Some(json!({
                "keyId": arn,
                "sourceKeyId": source_arn,
                "sourceKeyMaterialId": source_material_id,
                "destinationKeyMaterialId": destination_material_id,
            }));
            Ok(ReEncrypted {
                source_key_id: source_arn,
                key_id: arn,
                ciphertext_blob,
                source_key_material_id: Some(source_material_id),
                destination_key_material_id: Some(destination_material_id),
            })
        })
    }

    pub(super) fn generate_random(
        &self,
        number_of_bytes: Option<u32>,
    ) -> Result<SecretBytes, KmsError> {
        let request = json!({ "numberOfBytes": number_of_bytes });
        self.run(
            Operation::GenerateRandom,
            request,
            |_| match number_of_bytes {
                Some(n @ 1..=MAX_RANDOM_BYTES) => Ok(SecretBytes::random(n as usize)),
                Some(n) => Err(KmsError::Validation(format!(
                "1 validation error detected: Value '{n}' at 'numberOfBytes' failed to satisfy \
                 constraint: Member must have value between 1 and {MAX_RANDOM_BYTES}"
            ))),
                None => Err(KmsError::Validation(
                    "1 validation error detected: Value null at 'numberOfBytes' failed to satisfy \
                 constraint: Member must not be null"
                        .into(),
                )),
            },
        )
    }
}

/// `KeyMaterialId` of material version `version` of key `id`: hex SHA-256 of a label,
/// the key id and the version, so it names the material (and changes on rotation)
/// without depending on a secret byte.
pub(crate) fn key_material_id(id: &Uuid, version: u32) -> String {
    let mut hash = Sha256::new();
    hash.update(b"atrest key material id v1");
    hash.update(id.as_bytes());
    hash.update(version.to_le_bytes());
    hex::encode(hash.finalize())
}

fn check_context(context: &EncryptionContext, field: &str) -> Result<(), KmsError> {
    let len: usize = context.iter().map(|(k, v)| k.len() + v.len()).sum();
    if len > MAX_CONTEXT_LEN {
        return Err(KmsError::Validation(format!(
            "{field} is {len} bytes; atrest allows at most {MAX_CONTEXT_LEN}"
        )));
    }
    Ok(())
}
