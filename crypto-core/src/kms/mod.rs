//! The key service: the [`KeyService`] trait every consumer (volumes, the HTTP
//! gateway) talks to, and [`LocalKms`], the embedded keystore.
//!
//! Submodules: [`clock`] (the injectable time source), `ident` (key ids, ARNs and
//! alias rules), [`policy`] (AWS key policies), `keystore` (the files on disk) and
//! `local` ([`LocalKms`] itself).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;

use crate::secret::SecretBytes;

pub mod clock;
mod generation;
mod ident;
mod keystore;
mod local;
pub mod policy;

pub use clock::{Clock, ManualClock, SystemClock};
pub use generation::KeystoreGeneration;
pub use ident::{principal_account, validate_alias_name, KeyRef};
pub use local::{validate_tags, ImportOperation, LocalKms, LocalKmsConfig, AWS_MANAGED_S3_ALIAS};

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

impl KeyState {
    /// The AWS spelling (`Enabled`, `Disabled`, `PendingDeletion`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
        }
    }
}

/// What DescribeKey returns (AWS `KeyMetadata`, PascalCase on the wire; dates are
/// epoch seconds as in the AWS JSON protocol).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    /// The key's UUID.
    pub key_id: String,
    pub arn: String,
    pub key_state: KeyState,
    #[serde(rename = "AWSAccountId")]
    pub aws_account_id: String,
    #[serde(with = "time::serde::timestamp")]
    pub creation_date: OffsetDateTime,
    /// True exactly when `key_state` is `Enabled`.
    pub enabled: bool,
    pub description: String,
    /// Always `ENCRYPT_DECRYPT`: atrest keys are symmetric.
    pub key_usage: String,
    /// Always `SYMMETRIC_DEFAULT`.
    pub key_spec: String,
    /// AWS's deprecated twin of `key_spec`, still returned by DescribeKey.
    pub customer_master_key_spec: String,
    /// Always `CUSTOMER`.
    pub key_manager: String,
    /// Always `AWS_KMS`: the key service made the material.
    pub origin: String,
    pub encryption_algorithms: Vec<String>,
    pub multi_region: bool,
    /// When a key in `PendingDeletion` will be deleted.
    #[serde(
        with = "time::serde::timestamp::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub deletion_date: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_deletion_window_in_days: Option<u32>,
    /// The id of the key material new ciphertexts are made with; changes on every
    /// rotation (AWS's `CurrentKeyMaterialId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_key_material_id: Option<String>,
}

/// Size of a generated data key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKeySpec {
    Aes256,
    Aes128,
    /// `NumberOfBytes`, 1..=1024.
    Bytes(u16),
}

impl DataKeySpec {
    /// Parses AWS's `KeySpec` values `AES_256` and `AES_128`.
    pub fn from_key_spec(spec: &str) -> Result<Self, KmsError> {
        match spec {
            "AES_256" => Ok(DataKeySpec::Aes256),
            "AES_128" => Ok(DataKeySpec::Aes128),
            other => Err(KmsError::Validation(format!(
                "1 validation error detected: Value '{other}' at 'keySpec' failed to satisfy \
                 constraint: Member must satisfy enum value set: [AES_256, AES_128]"
            ))),
        }
    }

    /// The number of key bytes, after checking `NumberOfBytes` is within 1..=1024.
    pub fn byte_len(self) -> Result<usize, KmsError> {
        match self {
            DataKeySpec::Aes256 => Ok(32),
            DataKeySpec::Aes128 => Ok(16),
            DataKeySpec::Bytes(n @ 1..=1024) => Ok(usize::from(n)),
            DataKeySpec::Bytes(n) => Err(KmsError::Validation(format!(
                "1 validation error detected: Value '{n}' at 'numberOfBytes' failed to satisfy \
                 constraint: Member must have value between 1 and 1024"
            ))),
        }
    }
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
    /// The id of the key material that decrypted it (`None` from a remote key service
    /// that does not report it).
    pub key_material_id: Option<String>,
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
    /// The key material that decrypted the blob, and the one that sealed it again.
    pub source_key_material_id: Option<String>,
    pub destination_key_material_id: Option<String>,
}

/// CreateKey's arguments. `Default` is AWS's default: a symmetric encryption key with
/// the default key policy.
#[derive(Clone, Debug, Default)]
pub struct CreateKeyRequest {
    pub description: String,
    /// An AWS-format key policy (JSON); `None` gives the default policy, which allows
    /// the creating principal every `kms:` action on the key.
    pub policy: Option<String>,
    /// Skips the check that the caller can still change the policy afterwards.
    pub bypass_policy_lockout_safety_check: bool,
    /// Only `SYMMETRIC_DEFAULT` is supported.
    pub key_spec: Option<String>,
    /// Only `ENCRYPT_DECRYPT` is supported.
    pub key_usage: Option<String>,
}

/// Paging for the List operations, as AWS: `limit` 1..=1000 (default 100) and the
/// opaque `marker` of the previous page's `next_marker`.
#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    pub limit: Option<u32>,
    pub marker: Option<String>,
}

/// One entry of ListKeys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyListEntry {
    pub key_id: String,
    pub key_arn: String,
}

/// One entry of ListAliases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasListEntry {
    pub alias_name: String,
    pub alias_arn: String,
    pub target_key_id: String,
    #[serde(with = "time::serde::timestamp")]
    pub creation_date: OffsetDateTime,
    #[serde(with = "time::serde::timestamp")]
    pub last_updated_date: OffsetDateTime,
}

/// One page of a List operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `ListRequest::marker` for the next page; `None` on the last page.
    pub next_marker: Option<String>,
}

impl<T> Page<T> {
    pub fn truncated(&self) -> bool {
        self.next_marker.is_some()
    }
}

/// ScheduleKeyDeletion's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduledDeletion {
    /// Key ARN.
    pub key_id: String,
    #[serde(with = "time::serde::timestamp")]
    pub deletion_date: OffsetDateTime,
    pub key_state: KeyState,
    pub pending_window_in_days: u32,
}

/// GetKeyRotationStatus's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationStatus {
    /// Key ARN.
    pub key_id: String,
    pub key_rotation_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
    #[serde(
        with = "time::serde::timestamp::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub next_rotation_date: Option<OffsetDateTime>,
    #[serde(
        with = "time::serde::timestamp::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub on_demand_rotation_start_date: Option<OffsetDateTime>,
}

/// How a key's material was rotated (ListKeyRotations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RotationType {
    Automatic,
    OnDemand,
}

/// One completed rotation (ListKeyRotations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationEntry {
    /// Key ARN.
    pub key_id: String,
    #[serde(with = "time::serde::timestamp")]
    pub rotation_date: OffsetDateTime,
    pub rotation_type: RotationType,
    /// The key material this rotation made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_material_id: Option<String>,
}

/// A key's tag (TagResource, ListResourceTags).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    /// 1 to 128 characters, unique per key; the `aws:` prefix is reserved.
    pub tag_key: String,
    /// 0 to 256 characters.
    pub tag_value: String,
}

/// Errors of the key service, one variant per AWS KMS error name.
/// `Display` prints `AwsName: message`, which is what the CLI shows.
/// No message ever contains key material.
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
    /// The caller used a name reserved for AWS (an alias under `alias/aws/`).
    #[error("NotAuthorizedException: {0}")]
    NotAuthorized(String),
    /// The caller passed a limit (e.g. more than 10 on-demand rotations of one key).
    #[error("LimitExceededException: {0}")]
    LimitExceeded(String),
    /// The key policy the caller gave is not valid JSON, not a valid policy, or would
    /// lock the caller out of the key.
    #[error("MalformedPolicyDocumentException: {0}")]
    MalformedPolicyDocument(String),
    /// The caller asked for something atrest does not offer (asymmetric keys, ...).
    #[error("UnsupportedOperationException: {0}")]
    UnsupportedOperation(String),
    /// The List marker is not one this service issued.
    #[error("InvalidMarkerException: {0}")]
    InvalidMarker(String),
    /// The caller's tags break AWS's rules (reserved `aws:` prefix, a tag key given
    /// twice, more than 50 tags).
    #[error("TagException: {0}")]
    Tag(String),
}

impl KmsError {
    /// The AWS error name (the JSON protocol's `__type`).
    pub fn aws_name(&self) -> &'static str {
        match self {
            KmsError::NotFound(_) => "NotFoundException",
            KmsError::Disabled(_) => "DisabledException",
            KmsError::InvalidState(_) => "KMSInvalidStateException",
            KmsError::InvalidCiphertext(_) => "InvalidCiphertextException",
            KmsError::IncorrectKey(_) => "IncorrectKeyException",
            KmsError::Validation(_) => "ValidationException",
            KmsError::AccessDenied(_) => "AccessDeniedException",
            KmsError::AlreadyExists(_) => "AlreadyExistsException",
            KmsError::InvalidAliasName(_) => "InvalidAliasNameException",
            KmsError::Internal(_) => "KMSInternalException",
            KmsError::Unavailable(_) => "DependencyTimeoutException",
            KmsError::NotAuthorized(_) => "NotAuthorizedException",
            KmsError::LimitExceeded(_) => "LimitExceededException",
            KmsError::MalformedPolicyDocument(_) => "MalformedPolicyDocumentException",
            KmsError::UnsupportedOperation(_) => "UnsupportedOperationException",
            KmsError::InvalidMarker(_) => "InvalidMarkerException",
            KmsError::Tag(_) => "TagException",
        }
    }

    /// The error an AWS-KMS-compatible endpoint reported as `__type` = `name`, for
    /// clients of remote key services. Unknown names keep their text in a
    /// KMSInternalException.
    pub fn from_aws_name(name: &str, message: String) -> KmsError {
        // The JSON protocol may prefix the name with a namespace (`...#Name`).
        let short = name.rsplit('#').next().unwrap_or(name);
        match short {
            "NotFoundException" => KmsError::NotFound(message),
            "DisabledException" => KmsError::Disabled(message),
            "KMSInvalidStateException" => KmsError::InvalidState(message),
            "InvalidCiphertextException" => KmsError::InvalidCiphertext(message),
            "IncorrectKeyException" => KmsError::IncorrectKey(message),
            "ValidationException" => KmsError::Validation(message),
            "AccessDeniedException" => KmsError::AccessDenied(message),
            "AlreadyExistsException" => KmsError::AlreadyExists(message),
            "InvalidAliasNameException" => KmsError::InvalidAliasName(message),
            "KMSInternalException" => KmsError::Internal(message),
            "DependencyTimeoutException" => KmsError::Unavailable(message),
            "NotAuthorizedException" => KmsError::NotAuthorized(message),
            "LimitExceededException" => KmsError::LimitExceeded(message),
            "MalformedPolicyDocumentException" => KmsError::MalformedPolicyDocument(message),
            "UnsupportedOperationException" => KmsError::UnsupportedOperation(message),
            "TagException" => KmsError::Tag(message),
            "InvalidMarkerException" => KmsError::InvalidMarker(message),
            other => KmsError::Internal(format!("{other}: {message}")),
        }
    }

    /// The message without the AWS name (the JSON protocol's `message`).
    pub fn message(&self) -> &str {
        match self {
            KmsError::NotFound(m)
            | KmsError::Disabled(m)
            | KmsError::InvalidState(m)
            | KmsError::InvalidCiphertext(m)
            | KmsError::IncorrectKey(m)
            | KmsError::Validation(m)
            | KmsError::AccessDenied(m)
            | KmsError::AlreadyExists(m)
            | KmsError::InvalidAliasName(m)
            | KmsError::Internal(m)
            | KmsError::Unavailable(m)
            | KmsError::NotAuthorized(m)
            | KmsError::LimitExceeded(m)
            | KmsError::MalformedPolicyDocument(m)
            | KmsError::UnsupportedOperation(m)
            | KmsError::InvalidMarker(m)
            | KmsError::Tag(m) => m,
        }
    }

    /// The HTTP status AWS KMS answers with: 500 for its own failures, 503 when a
    /// dependency timed out, 400 for everything the caller can fix.
    pub fn http_status(&self) -> u16 {
        match self {
            KmsError::Internal(_) => 500,
            KmsError::Unavailable(_) => 503,
            KmsError::NotFound(_)
            | KmsError::Disabled(_)
            | KmsError::InvalidState(_)
            | KmsError::InvalidCiphertext(_)
            | KmsError::IncorrectKey(_)
            | KmsError::Validation(_)
            | KmsError::AccessDenied(_)
            | KmsError::AlreadyExists(_)
            | KmsError::InvalidAliasName(_)
            | KmsError::NotAuthorized(_)
            | KmsError::LimitExceeded(_)
            | KmsError::MalformedPolicyDocument(_)
            | KmsError::UnsupportedOperation(_)
            | KmsError::InvalidMarker(_)
            | KmsError::Tag(_) => 400,
        }
    }
}

/// The operations of AWS KMS that atrest serves. Implemented by [`LocalKms`] and by
/// `gateway::RemoteKms`, the client of any AWS-KMS-compatible endpoint.
///
/// Wherever a `key_id` is taken, a key id, key ARN, alias name (`alias/X`) or alias
/// ARN is accepted, except `create_alias`/`update_alias`'s target, which must name a
/// key (as AWS).
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

    fn create_key(&self, req: &CreateKeyRequest) -> Result<KeyMetadata, KmsError>;
    fn list_keys(&self, req: &ListRequest) -> Result<Page<KeyListEntry>, KmsError>;
    fn update_key_description(&self, key_id: &str, description: &str) -> Result<(), KmsError>;
    fn enable_key(&self, key_id: &str) -> Result<(), KmsError>;
    fn disable_key(&self, key_id: &str) -> Result<(), KmsError>;
    /// `pending_window_in_days`: 7..=30, default 30.
    fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_window_in_days: Option<u32>,
    ) -> Result<ScheduledDeletion, KmsError>;
    /// Returns the key ARN. The key is left `Disabled`, as in AWS.
    fn cancel_key_deletion(&self, key_id: &str) -> Result<String, KmsError>;

    /// Lists every alias, or only those of one key.
    fn list_aliases(
        &self,
        key_id: Option<&str>,
        req: &ListRequest,
    ) -> Result<Page<AliasListEntry>, KmsError>;
    fn create_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError>;
    fn update_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError>;
    fn delete_alias(&self, alias_name: &str) -> Result<(), KmsError>;

    /// `rotation_period_in_days`: 90..=2560, default 365.
    fn enable_key_rotation(
        &self,
        key_id: &str,
        rotation_period_in_days: Option<u32>,
    ) -> Result<(), KmsError>;
    fn disable_key_rotation(&self, key_id: &str) -> Result<(), KmsError>;
    fn get_key_rotation_status(&self, key_id: &str) -> Result<RotationStatus, KmsError>;
    /// Returns the key ARN.
    fn rotate_key_on_demand(&self, key_id: &str) -> Result<String, KmsError>;
    fn list_key_rotations(&self, key_id: &str) -> Result<Vec<RotationEntry>, KmsError>;

    /// `policy_name` must be `default` (AWS's only policy name).
    fn get_key_policy(&self, key_id: &str, policy_name: &str) -> Result<String, KmsError>;
    fn put_key_policy(
        &self,
        key_id: &str,
        policy_name: &str,
        policy: &str,
        bypass_policy_lockout_safety_check: bool,
    ) -> Result<(), KmsError>;

    /// Adds tags to a key, replacing the values of keys it already has (at most 50
    /// tags per key).
    fn tag_resource(&self, key_id: &str, tags: &[Tag]) -> Result<(), KmsError>;
    /// Removes the tags with these keys (absent ones are ignored, as AWS).
    fn untag_resource(&self, key_id: &str, tag_keys: &[String]) -> Result<(), KmsError>;
    /// The key's tags, sorted by tag key.
    fn list_resource_tags(&self, key_id: &str) -> Result<Vec<Tag>, KmsError>;

    /// GenerateRandom: `number_of_bytes` (1..=1024, required) random bytes.
    fn generate_random(&self, number_of_bytes: Option<u32>) -> Result<SecretBytes, KmsError>;
    /// ListKeyPolicies: the names of a key's policies (always `["default"]`).
    fn list_key_policies(&self, key_id: &str) -> Result<Vec<String>, KmsError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_aws_name_then_message() {
        let err = KmsError::Disabled("key is disabled".into());
        assert_eq!(err.to_string(), "DisabledException: key is disabled");
        assert_eq!(err.aws_name(), "DisabledException");
        assert_eq!(err.message(), "key is disabled");
        assert_eq!(err.http_status(), 400);
        assert_eq!(KmsError::Internal("disk".into()).http_status(), 500);
    }

    #[test]
    fn aws_names_round_trip() {
        let all = [
            KmsError::NotFound("m".into()),
            KmsError::Disabled("m".into()),
            KmsError::InvalidState("m".into()),
            KmsError::InvalidCiphertext("m".into()),
            KmsError::IncorrectKey("m".into()),
            KmsError::Validation("m".into()),
            KmsError::AccessDenied("m".into()),
            KmsError::AlreadyExists("m".into()),
            KmsError::InvalidAliasName("m".into()),
            KmsError::Internal("m".into()),
            KmsError::Unavailable("m".into()),
            KmsError::NotAuthorized("m".into()),
            KmsError::LimitExceeded("m".into()),
            KmsError::MalformedPolicyDocument("m".into()),
            KmsError::UnsupportedOperation("m".into()),
            KmsError::InvalidMarker("m".into()),
            KmsError::Tag("m".into()),
        ];
        for err in &all {
            let back = KmsError::from_aws_name(err.aws_name(), err.message().to_owned());
            assert_eq!(back.to_string(), err.to_string());
            let namespaced = format!("com.amazonaws.kms#{}", err.aws_name());
            assert_eq!(
                KmsError::from_aws_name(&namespaced, "m".into()).aws_name(),
                err.aws_name()
            );
        }
        let unknown = KmsError::from_aws_name("ThrottlingException", "slow down".into());
        assert_eq!(
            unknown.to_string(),
            "KMSInternalException: ThrottlingException: slow down"
        );
    }

    #[test]
    fn data_key_spec_bounds() {
        assert_eq!(DataKeySpec::Aes256.byte_len().unwrap(), 32);
        assert_eq!(DataKeySpec::Aes128.byte_len().unwrap(), 16);
        assert_eq!(DataKeySpec::Bytes(1).byte_len().unwrap(), 1);
        assert_eq!(DataKeySpec::Bytes(1024).byte_len().unwrap(), 1024);
        assert!(matches!(
            DataKeySpec::Bytes(0).byte_len(),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            DataKeySpec::Bytes(1025).byte_len(),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            DataKeySpec::from_key_spec("AES_512"),
            Err(KmsError::Validation(_))
        ));
    }

    #[test]
    fn key_metadata_serialises_with_aws_field_names() {
        let meta = KeyMetadata {
            key_id: "k".into(),
            arn: "arn".into(),
            key_state: KeyState::PendingDeletion,
            aws_account_id: "000000000000".into(),
            creation_date: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            enabled: false,
            description: String::new(),
            key_usage: "ENCRYPT_DECRYPT".into(),
            key_spec: "SYMMETRIC_DEFAULT".into(),
            customer_master_key_spec: "SYMMETRIC_DEFAULT".into(),
            key_manager: "CUSTOMER".into(),
            origin: "AWS_KMS".into(),
            encryption_algorithms: vec!["SYMMETRIC_DEFAULT".into()],
            multi_region: false,
            deletion_date: Some(OffsetDateTime::from_unix_timestamp(1_700_086_400).unwrap()),
            pending_deletion_window_in_days: Some(1),
            current_key_material_id: Some("ab".repeat(32)),
        };
        let json = serde_json::to_value(&meta).unwrap();
        assert_eq!(json["AWSAccountId"], "000000000000");
        assert_eq!(json["KeyState"], "PendingDeletion");
        assert_eq!(json["CreationDate"], 1_700_000_000);
        assert_eq!(json["DeletionDate"], 1_700_086_400);
        let back: KeyMetadata = serde_json::from_value(json).unwrap();
        assert_eq!(back, meta);
    }
}
