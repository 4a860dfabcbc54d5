//! The key service: the [`KeyService`] trait every consumer (volumes, the HTTP
//! gateway) talks to, and [`LocalKms`], the embedded keystore.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::secret::SecretBytes;

/// Encryption context: non-secret key/value pairs bound to a ciphertext as AAD.
/// A `BTreeMap` so that iteration order is canonical.
pub type EncryptionContext = BTreeMap<String, String>;

/// AWS KMS key states that atrest models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

/// What DescribeKey returns (AWS `KeyMetadata`, PascalCase on the wire).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    pub key_id: String,
    pub arn: String,
    pub key_state: KeyState,
}

/// Size of a generated data key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKeySpec {
    Aes256,
    Aes128,
    /// `NumberOfBytes`, 1..=1024.
    Bytes(u16),
}

#[derive(Clone, Debug)]
pub struct GenerateDataKeyRequest {
    /// Key id, key ARN, alias name or alias ARN.
    pub key_id: String,
    pub spec: DataKeySpec,
    pub encryption_context: EncryptionContext,
}

/// GenerateDataKey's answer: the plaintext key and the same key wrapped by the CMK.
#[derive(Debug)]
pub struct GeneratedDataKey {
    /// ARN of the CMK that wrapped the key.
    pub key_id: String,
    pub plaintext: SecretBytes,
    pub ciphertext_blob: Vec<u8>,
}

/// GenerateDataKeyWithoutPlaintext's and Encrypt's answer.
#[derive(Clone, Debug)]
pub struct WrappedData {
    /// ARN of the CMK that wrapped the data.
    pub key_id: String,
    pub ciphertext_blob: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct DecryptRequest {
    pub ciphertext_blob: Vec<u8>,
    pub encryption_context: EncryptionContext,
    /// When given, the blob must have been made under this key (else IncorrectKeyException).
    pub key_id: Option<String>,
}

#[derive(Debug)]
pub struct DecryptedData {
    /// ARN of the CMK that decrypted the blob.
    pub key_id: String,
    pub plaintext: SecretBytes,
}

#[derive(Clone, Debug)]
pub struct ReEncryptRequest {
    pub ciphertext_blob: Vec<u8>,
    pub source_encryption_context: EncryptionContext,
    pub source_key_id: Option<String>,
    pub destination_key_id: String,
    pub destination_encryption_context: EncryptionContext,
}

#[derive(Clone, Debug)]
pub struct ReEncrypted {
    pub source_key_id: String,
    /// ARN of the destination CMK.
    pub key_id: String,
    pub ciphertext_blob: Vec<u8>,
}

/// Errors of the key service, one variant per AWS KMS error name.
/// `Display` prints `AwsName: message`, which is what the CLI shows.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The caller named a key or alias that does not exist.
    #[error("NotFoundException: {0}")]
    NotFound(String),
    /// The caller used a disabled key for a cryptographic operation.
    #[error("DisabledException: {0}")]
    Disabled(String),
    /// The key's state does not allow the operation (e.g. PendingDeletion).
    #[error("KMSInvalidStateException: {0}")]
    InvalidState(String),
    /// The ciphertext blob is malformed, altered, or its encryption context differs.
    #[error("InvalidCiphertextException: {0}")]
    InvalidCiphertext(String),
    /// The blob was made under another key than the one the caller named.
    #[error("IncorrectKeyException: {0}")]
    IncorrectKey(String),
    /// The caller gave a malformed or out-of-range argument.
    #[error("ValidationException: {0}")]
    Validation(String),
    /// The key policy does not allow the caller to perform the action.
    #[error("AccessDeniedException: {0}")]
    AccessDenied(String),
    /// The caller tried to create something (an alias) that already exists.
    #[error("AlreadyExistsException: {0}")]
    AlreadyExists(String),
    /// The alias name breaks AWS's rules.
    #[error("InvalidAliasNameException: {0}")]
    InvalidAliasName(String),
    /// The keystore or trail could not be read or written; the operation did not happen.
    #[error("KMSInternalException: {0}")]
    Internal(String),
    /// The key service could not be reached (remote key services).
    #[error("DependencyTimeoutException: {0}")]
    Unavailable(String),
}

/// The operations of AWS KMS that atrest serves. Implemented by [`LocalKms`] and,
/// later, by a client of any AWS-KMS-compatible endpoint.
pub trait KeyService: Send + Sync {
    fn describe_key(&self, key_id: &str) -> Result<KeyMetadata, KmsError>;
    fn generate_data_key(&self, req: &GenerateDataKeyRequest)
        -> Result<GeneratedDataKey, KmsError>;
    fn generate_data_key_without_plaintext(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<WrappedData, KmsError>;
    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        encryption_context: &EncryptionContext,
    ) -> Result<WrappedData, KmsError>;
    fn decrypt(&self, req: &DecryptRequest) -> Result<DecryptedData, KmsError>;
    fn re_encrypt(&self, req: &ReEncryptRequest) -> Result<ReEncrypted, KmsError>;
}

/// The embedded key service (keystore under `ATREST_HOME`).
#[derive(Debug)]
pub struct LocalKms {}
