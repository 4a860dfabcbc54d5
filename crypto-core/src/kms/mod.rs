//! The key service: the [`KeyService`] trait every consumer (volumes, the HTTP
//! gateway) talks to, and [`LocalKms`], the embedded keystore.
//!
//! Submodules: [`clock`] (the injectable time source), `ident` (key ids, ARNs and
//! alias rules), [`policy`] (AWS key policies), `keystore` (the files on disk) and
//! `local` ([`LocalKms`] itself).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::secret::SecretBytes;

pub mod clock;
mod generation;
mod ident;
mod keystore;
mod local;
pub mod operation;
pub mod policy;
pub mod wire;

pub use clock::{Clock, ManualClock, SystemClock};
pub use generation::KeystoreGeneration;
pub use ident::{principal_account, validate_alias_name, KeyRef};
pub use local::{validate_tags, LocalKms, LocalKmsConfig, AWS_MANAGED_S3_ALIAS};
pub use operation::{ImportOperation, Operation, StateRule};

/// Encryption context: non-secret key/value pairs bound to a ciphertext as AAD.
/// A `BTreeMap` so that iteration order is canonical.
pub type EncryptionContext = BTreeMap<String, String>;

/// AWS KMS key states that atrest models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyState {
    /// Usable for cryptographic operations.
    Enabled,
    /// Kept, but every cryptographic operation fails with `DisabledException`.
    Disabled,
    /// Scheduled for deletion (ScheduleKeyDeletion); unusable until cancelled or deleted.
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
    /// The key's ARN (`arn:aws:kms:<region>:<account>:key/<uuid>`).
    pub arn: String,
    /// Enabled, Disabled or PendingDeletion.
    pub key_state: KeyState,
    /// The account that owns the key (AWS `AWSAccountId`).
    #[serde(rename = "AWSAccountId")]
    pub aws_account_id: String,
    /// When the key was created (epoch seconds on the wire).
    #[serde(with = "time::serde::timestamp")]
    pub creation_date: OffsetDateTime,
    /// True exactly when `key_state` is `Enabled`.
    pub enabled: bool,
    /// The free-text description given at CreateKey or UpdateKeyDescription.
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
    /// Always `["SYMMETRIC_DEFAULT"]`: the one algorithm a symmetric key supports.
    pub encryption_algorithms: Vec<String>,
    /// Always false: atrest keys live in one region.
    pub multi_region: bool,
    /// When a key in `PendingDeletion` will be deleted.
    #[serde(
        with = "time::serde::timestamp::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub deletion_date: Option<OffsetDateTime>,
    /// The waiting period (7..=30 days) chosen at ScheduleKeyDeletion, while pending.
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
    /// `AES_256`: 32 bytes.
    Aes256,
    /// `AES_128`: 16 bytes.
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

/// GenerateDataKey's and GenerateDataKeyWithoutPlaintext's arguments.
#[derive(Clone, Debug)]
pub struct GenerateDataKeyRequest {
    /// Key id, key ARN, alias name or alias ARN.
    pub key_id: String,
    /// The data key's size (AWS `KeySpec` or `NumberOfBytes`).
    pub spec: DataKeySpec,
    /// Bound to the wrapped key as AAD; Decrypt must be given the same pairs.
    pub encryption_context: EncryptionContext,
}

/// GenerateDataKey's answer: the plaintext key and the same key wrapped by the CMK.
#[derive(Debug)]
pub struct GeneratedDataKey {
    /// ARN of the CMK that wrapped the key.
    pub key_id: String,
    /// The data key itself, to use and then drop (zeroized on drop).
    pub plaintext: SecretBytes,
    /// The same key wrapped by the CMK: an envelope blob to store beside the data.
    pub ciphertext_blob: Vec<u8>,
}

/// GenerateDataKeyWithoutPlaintext's and Encrypt's answer.
#[derive(Clone, Debug)]
pub struct WrappedData {
    /// ARN of the CMK that wrapped the data.
    pub key_id: String,
    /// The envelope blob (docs/FORMAT.md), opaque to callers; Decrypt takes it back.
    pub ciphertext_blob: Vec<u8>,
}

/// Decrypt's arguments.
#[derive(Clone, Debug)]
pub struct DecryptRequest {
    /// A blob made by Encrypt, GenerateDataKey* or ReEncrypt.
    pub ciphertext_blob: Vec<u8>,
    /// Must equal the context the blob was made with, else InvalidCiphertextException.
    pub encryption_context: EncryptionContext,
    /// When given, the blob must have been made under this key (else IncorrectKeyException).
    pub key_id: Option<String>,
}

/// Decrypt's answer.
#[derive(Debug)]
pub struct DecryptedData {
    /// ARN of the CMK that decrypted the blob.
    pub key_id: String,
    /// The decrypted bytes (zeroized on drop).
    pub plaintext: SecretBytes,
    /// The id of the key material that decrypted it (`None` from a remote key service
    /// that does not report it).
    pub key_material_id: Option<String>,
}

/// ReEncrypt's arguments: decrypt under the source key and context, encrypt again
/// under the destination ones, without the plaintext leaving the key service.
#[derive(Clone, Debug)]
pub struct ReEncryptRequest {
    /// The blob to re-encrypt.
    pub ciphertext_blob: Vec<u8>,
    /// The context the blob was made with.
    pub source_encryption_context: EncryptionContext,
    /// When given, the blob must have been made under this key (else IncorrectKeyException).
    pub source_key_id: Option<String>,
    /// The key to encrypt under (key id, key ARN, alias name or alias ARN).
    pub destination_key_id: String,
    /// The context to bind to the new blob.
    pub destination_encryption_context: EncryptionContext,
}

/// ReEncrypt's answer.
#[derive(Clone, Debug)]
pub struct ReEncrypted {
    /// ARN of the CMK that decrypted the blob.
    pub source_key_id: String,
    /// ARN of the destination CMK.
    pub key_id: String,
    /// The new blob, under the destination key and context.
    pub ciphertext_blob: Vec<u8>,
    /// The key material that decrypted the blob (`None` when not reported).
    pub source_key_material_id: Option<String>,
    /// The key material that sealed it again (`None` when not reported).
    pub destination_key_material_id: Option<String>,
}

/// CreateKey's arguments. `Default` is AWS's default: a symmetric encryption key with
/// the default key policy.
#[derive(Clone, Debug, Default)]
pub struct CreateKeyRequest {
    /// Free text shown by DescribeKey (AWS `Description`).
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
    /// Most entries on one page, 1..=1000; `None` means 100.
    pub limit: Option<u32>,
    /// Where to resume: the previous page's `next_marker`; `None` for the first page.
    pub marker: Option<String>,
}

/// One entry of ListKeys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyListEntry {
    /// The key's UUID.
    pub key_id: String,
    /// The key's ARN.
    pub key_arn: String,
}

/// One entry of ListAliases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasListEntry {
    /// `alias/` and the name.
    pub alias_name: String,
    /// The alias's ARN (`arn:aws:kms:<region>:<account>:alias/<name>`).
    pub alias_arn: String,
    /// The UUID of the key the alias names.
    pub target_key_id: String,
    /// When the alias was created (epoch seconds on the wire).
    #[serde(with = "time::serde::timestamp")]
    pub creation_date: OffsetDateTime,
    /// When the alias was last pointed at a key (CreateAlias or UpdateAlias).
    #[serde(with = "time::serde::timestamp")]
    pub last_updated_date: OffsetDateTime,
}

/// One page of a List operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// This page's entries, in the service's stable order.
    pub items: Vec<T>,
    /// Pass as `ListRequest::marker` for the next page; `None` on the last page.
    pub next_marker: Option<String>,
}

impl<T> Page<T> {
    /// Whether more pages follow (AWS `Truncated`).
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
    /// When the key will be deleted.
    #[serde(with = "time::serde::timestamp")]
    pub deletion_date: OffsetDateTime,
    /// Always `PendingDeletion`.
    pub key_state: KeyState,
    /// The waiting period in days (7..=30).
    pub pending_window_in_days: u32,
}

/// GetKeyRotationStatus's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationStatus {
    /// Key ARN.
    pub key_id: String,
    /// Whether automatic rotation is on.
    pub key_rotation_enabled: bool,
    /// Days between automatic rotations (90..=2560), when rotation is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
    /// When the next automatic rotation is due, when rotation is on.
    #[serde(
        with = "time::serde::timestamp::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub next_rotation_date: Option<OffsetDateTime>,
    /// When an on-demand rotation (RotateKeyOnDemand) was started, if one is running.
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
    /// Made by the rotation schedule (`AUTOMATIC`).
    Automatic,
    /// Made by RotateKeyOnDemand (`ON_DEMAND`).
    OnDemand,
}

/// One completed rotation (ListKeyRotations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationEntry {
    /// Key ARN.
    pub key_id: String,
    /// When the rotation happened.
    #[serde(with = "time::serde::timestamp")]
    pub rotation_date: OffsetDateTime,
    /// Scheduled or on demand.
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
/// No message ever contains key material. [`KmsError::aws_error`] is the one table
/// from a variant to its AWS name, HTTP status and message.
#[derive(Debug)]
#[non_exhaustive]
pub enum KmsError {
    /// The caller named a key or alias that does not exist.
    NotFound(String),
    /// The caller used a disabled key for a cryptographic operation.
    Disabled(String),
    /// The key's state does not allow the operation (e.g. PendingDeletion).
    InvalidState(String),
    /// The ciphertext blob is malformed, altered, or its encryption context differs.
    InvalidCiphertext(String),
    /// The blob was made under another key than the one the caller named.
    IncorrectKey(String),
    /// The caller gave a malformed or out-of-range argument.
    Validation(String),
    /// The key policy does not allow the caller to perform the action.
    AccessDenied(String),
    /// The caller tried to create something (an alias) that already exists.
    AlreadyExists(String),
    /// The alias name breaks AWS's rules.
    InvalidAliasName(String),
    /// The keystore or trail could not be read or written; the operation did not happen.
    Internal(String),
    /// The key service could not be reached (remote key services).
    Unavailable(String),
    /// The caller used a name reserved for AWS (an alias under `alias/aws/`).
    NotAuthorized(String),
    /// The caller passed a limit (e.g. more than 10 on-demand rotations of one key).
    LimitExceeded(String),
    /// The key policy the caller gave is not valid JSON, not a valid policy, or would
    /// lock the caller out of the key.
    MalformedPolicyDocument(String),
    /// The caller asked for something atrest does not offer (asymmetric keys, ...).
    UnsupportedOperation(String),
    /// The List marker is not one this service issued.
    InvalidMarker(String),
    /// The caller's tags break AWS's rules (reserved `aws:` prefix, a tag key given
    /// twice, more than 50 tags).
    Tag(String),
}

/// How AWS KMS reports a [`KmsError`]: the JSON protocol's `__type` and `message`,
/// and the HTTP status of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AwsError<'a> {
    /// The AWS error name (`NotFoundException`, ...).
    pub code: &'static str,
    /// 500 for the service's own failures, 503 when a dependency timed out, 400 for
    /// everything the caller can fix.
    pub http_status: u16,
    /// The message, without the AWS name.
    pub message: &'a str,
}

impl KmsError {
    /// Every variant's constructor, for [`KmsError::from_aws_name`].
    const VARIANTS: [fn(String) -> KmsError; 17] = [
        KmsError::NotFound,
        KmsError::Disabled,
        KmsError::InvalidState,
        KmsError::InvalidCiphertext,
        KmsError::IncorrectKey,
        KmsError::Validation,
        KmsError::AccessDenied,
        KmsError::AlreadyExists,
        KmsError::InvalidAliasName,
        KmsError::Internal,
        KmsError::Unavailable,
        KmsError::NotAuthorized,
        KmsError::LimitExceeded,
        KmsError::MalformedPolicyDocument,
        KmsError::UnsupportedOperation,
        KmsError::InvalidMarker,
        KmsError::Tag,
    ];

    /// The one table: the AWS error name, HTTP status and message of this error.
    pub fn aws_error(&self) -> AwsError<'_> {
        let (code, http_status, message) = match self {
            KmsError::NotFound(m) => ("NotFoundException", 400, m),
            KmsError::Disabled(m) => ("DisabledException", 400, m),
            KmsError::InvalidState(m) => ("KMSInvalidStateException", 400, m),
            KmsError::InvalidCiphertext(m) => ("InvalidCiphertextException", 400, m),
            KmsError::IncorrectKey(m) => ("IncorrectKeyException", 400, m),
            KmsError::Validation(m) => ("ValidationException", 400, m),
            KmsError::AccessDenied(m) => ("AccessDeniedException", 400, m),
            KmsError::AlreadyExists(m) => ("AlreadyExistsException", 400, m),
            KmsError::InvalidAliasName(m) => ("InvalidAliasNameException", 400, m),
            KmsError::Internal(m) => ("KMSInternalException", 500, m),
            KmsError::Unavailable(m) => ("DependencyTimeoutException", 503, m),
            KmsError::NotAuthorized(m) => ("NotAuthorizedException", 400, m),
            KmsError::LimitExceeded(m) => ("LimitExceededException", 400, m),
            KmsError::MalformedPolicyDocument(m) => ("MalformedPolicyDocumentException", 400, m),
            KmsError::UnsupportedOperation(m) => ("UnsupportedOperationException", 400, m),
            KmsError::InvalidMarker(m) => ("InvalidMarkerException", 400, m),
            KmsError::Tag(m) => ("TagException", 400, m),
        };
        AwsError {
            code,
            http_status,
            message,
        }
    }

    /// The AWS error name (the JSON protocol's `__type`).
    pub fn aws_name(&self) -> &'static str {
        self.aws_error().code
    }

    /// The message without the AWS name (the JSON protocol's `message`).
    pub fn message(&self) -> &str {
        self.aws_error().message
    }

    /// The HTTP status AWS KMS answers with: 500 for its own failures, 503 when a
    /// dependency timed out, 400 for everything the caller can fix.
    pub fn http_status(&self) -> u16 {
        self.aws_error().http_status
    }

    /// The error an AWS-KMS-compatible endpoint reported as `__type` = `name`, for
    /// clients of remote key services. Unknown names keep their text in a
    /// KMSInternalException.
    pub fn from_aws_name(name: &str, message: String) -> KmsError {
        // The JSON protocol may prefix the name with a namespace (`...#Name`).
        let short = name.rsplit('#').next().unwrap_or(name);
        let known = KmsError::VARIANTS
            .into_iter()
            .find(|make| make(String::new()).aws_name() == short);
        match known {
            Some(make) => make(message),
            None => KmsError::Internal(format!("{short}: {message}")),
        }
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let AwsError { code, message, .. } = self.aws_error();
        write!(f, "{code}: {message}")
    }
}

impl std::error::Error for KmsError {}

/// The operations of AWS KMS that atrest serves. Implemented by [`LocalKms`] and by
/// `gateway::RemoteKms`, the client of any AWS-KMS-compatible endpoint.
///
/// Wherever a `key_id` is taken, a key id, key ARN, alias name (`alias/X`) or alias
/// ARN is accepted, except `create_alias`/`update_alias`'s target, which must name a
/// key (as AWS).
pub trait KeyService: Send + Sync {
    /// DescribeKey: the key's metadata.
    fn describe_key(&self, key_id: &str) -> Result<KeyMetadata, KmsError>;
    /// GenerateDataKey: a fresh data key, in plaintext and wrapped by the CMK.
    fn generate_data_key(&self, req: &GenerateDataKeyRequest)
        -> Result<GeneratedDataKey, KmsError>;
    /// GenerateDataKeyWithoutPlaintext: a fresh data key, wrapped only.
    fn generate_data_key_without_plaintext(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<WrappedData, KmsError>;
    /// Encrypt: wraps up to 4096 bytes of `plaintext` under the CMK, bound to the context.
    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        encryption_context: &EncryptionContext,
    ) -> Result<WrappedData, KmsError>;
    /// Decrypt: opens a blob made by this key service.
    fn decrypt(&self, req: &DecryptRequest) -> Result<DecryptedData, KmsError>;
    /// ReEncrypt: moves a blob to another key or context.
    fn re_encrypt(&self, req: &ReEncryptRequest) -> Result<ReEncrypted, KmsError>;

    /// CreateKey: a new symmetric CMK.
    fn create_key(&self, req: &CreateKeyRequest) -> Result<KeyMetadata, KmsError>;
    /// ListKeys: one page of the account's keys.
    fn list_keys(&self, req: &ListRequest) -> Result<Page<KeyListEntry>, KmsError>;
    /// UpdateKeyDescription: replaces the key's description.
    fn update_key_description(&self, key_id: &str, description: &str) -> Result<(), KmsError>;
    /// EnableKey: makes a disabled key usable again.
    fn enable_key(&self, key_id: &str) -> Result<(), KmsError>;
    /// DisableKey: refuses every cryptographic use of the key until enabled.
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
    /// CreateAlias: a new alias naming `target_key_id` (a key, not an alias).
    fn create_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError>;
    /// UpdateAlias: points an existing alias at another key.
    fn update_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError>;
    /// DeleteAlias: removes an alias; the key is untouched.
    fn delete_alias(&self, alias_name: &str) -> Result<(), KmsError>;

    /// `rotation_period_in_days`: 90..=2560, default 365.
    fn enable_key_rotation(
        &self,
        key_id: &str,
        rotation_period_in_days: Option<u32>,
    ) -> Result<(), KmsError>;
    /// DisableKeyRotation: stops automatic rotation.
    fn disable_key_rotation(&self, key_id: &str) -> Result<(), KmsError>;
    /// GetKeyRotationStatus: whether and when the key rotates.
    fn get_key_rotation_status(&self, key_id: &str) -> Result<RotationStatus, KmsError>;
    /// Returns the key ARN.
    fn rotate_key_on_demand(&self, key_id: &str) -> Result<String, KmsError>;
    /// ListKeyRotations: the key's completed rotations.
    fn list_key_rotations(&self, key_id: &str) -> Result<Vec<RotationEntry>, KmsError>;

    /// `policy_name` must be `default` (AWS's only policy name).
    fn get_key_policy(&self, key_id: &str, policy_name: &str) -> Result<String, KmsError>;
    /// PutKeyPolicy: replaces the key's policy (JSON, at most 32 KiB). Unless
    /// `bypass_policy_lockout_safety_check`, refused when the new policy would no
    /// longer let the caller change it.
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
