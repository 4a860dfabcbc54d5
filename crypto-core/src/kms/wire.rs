//! The AWS KMS JSON 1.1 shapes atrest speaks, in one place for every side: the
//! HTTP endpoint (`gateway::kms_api`) parses the requests and writes the answers,
//! the remote client (`gateway::client`) writes the requests and parses the answers,
//! and the CLI (`atrest kms ...`) prints the same answers (dates in ISO 8601 there).
//! Binary fields are base64 text; dates are epoch seconds, which other servers send
//! as fractions (so answers parse them leniently). Answers that carry a plaintext
//! (GenerateDataKey, Decrypt, GenerateRandom) are written by hand into zeroizing
//! buffers and have no type here to serialise, only one to parse
//! ([`PlaintextResponse`]). Serde only: no I/O, no key service.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::{EncryptionContext, KeyMetadata, KeyState, KmsError, RotationType, Tag};

/// The content type of the AWS JSON 1.1 protocol.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The only encryption algorithm of atrest's symmetric keys.
pub const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

/// The request of the calls that name only a key (DescribeKey, EnableKey, ...).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyIdRequest {
    /// `KeyId`.
    pub key_id: String,
}

/// GenerateDataKey's and GenerateDataKeyWithoutPlaintext's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataKeyRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `KeySpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<String>,
    /// `NumberOfBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_bytes: Option<u32>,
    /// `EncryptionContext`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<EncryptionContext>,
    /// `DryRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// Encrypt's request. `plaintext` is base64 of a secret: zeroized on drop, never
/// in `Debug`.
#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `Plaintext`.
    #[serde(with = "zeroizing_string")]
    pub plaintext: Zeroizing<String>,
    /// `EncryptionContext`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<EncryptionContext>,
    /// `EncryptionAlgorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<String>,
    /// `DryRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

impl std::fmt::Debug for EncryptRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("key_id", &self.key_id)
            .field("encryption_context", &self.encryption_context)
            .finish_non_exhaustive()
    }
}

/// Decrypt's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DecryptRequest {
    /// `CiphertextBlob`.
    pub ciphertext_blob: String,
    /// `EncryptionContext`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<EncryptionContext>,
    /// `KeyId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `EncryptionAlgorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<String>,
    /// `DryRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// ReEncrypt's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReEncryptRequest {
    /// `CiphertextBlob`.
    pub ciphertext_blob: String,
    /// `SourceEncryptionContext`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_encryption_context: Option<EncryptionContext>,
    /// `SourceKeyId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_key_id: Option<String>,
    /// `DestinationKeyId`.
    pub destination_key_id: String,
    /// `DestinationEncryptionContext`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_encryption_context: Option<EncryptionContext>,
    /// `SourceEncryptionAlgorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_encryption_algorithm: Option<String>,
    /// `DestinationEncryptionAlgorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_encryption_algorithm: Option<String>,
    /// `DryRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// CreateKey's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateKeyRequest {
    /// `Description`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `Policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `BypassPolicyLockoutSafetyCheck`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass_policy_lockout_safety_check: Option<bool>,
    /// `KeySpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<String>,
    /// `CustomerMasterKeySpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_master_key_spec: Option<String>,
    /// `KeyUsage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usage: Option<String>,
    /// `Origin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `Tags`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
    /// `MultiRegion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_region: Option<bool>,
}

/// TagResource's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagResourceRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `Tags`.
    pub tags: Vec<Tag>,
}

/// UntagResource's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UntagResourceRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `TagKeys`.
    pub tag_keys: Vec<String>,
}

/// The request of the paged lists (ListKeys, ListAliases, ListKeyRotations, ListResourceTags, ListKeyPolicies).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListRequest {
    /// `KeyId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `Limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `Marker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

/// GenerateRandom's request (`CustomKeyStoreId` and `Recipient` are refused).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateRandomRequest {
    /// `NumberOfBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_bytes: Option<u32>,
    /// `CustomKeyStoreId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_key_store_id: Option<String>,
    /// `Recipient`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<serde_json::Value>,
}

/// UpdateKeyDescription's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateKeyDescriptionRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `Description`.
    pub description: String,
}

/// ScheduleKeyDeletion's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduleKeyDeletionRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `PendingWindowInDays`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_window_in_days: Option<u32>,
}

/// CreateAlias's and UpdateAlias's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasRequest {
    /// `AliasName`.
    pub alias_name: String,
    /// `TargetKeyId`.
    pub target_key_id: String,
}

/// DeleteAlias's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteAliasRequest {
    /// `AliasName`.
    pub alias_name: String,
}

/// EnableKeyRotation's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnableKeyRotationRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `RotationPeriodInDays`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
}

/// GetKeyPolicy's and PutKeyPolicy's request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyPolicyRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `PolicyName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
    /// `Policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `BypassPolicyLockoutSafetyCheck`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass_policy_lockout_safety_check: Option<bool>,
}

/// KeyMetadata as any KMS-compatible server sends it: only `KeyId` and `Arn` are
/// required; dates may be fractional.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireKeyMetadata {
    /// `KeyId`.
    pub key_id: String,
    /// `Arn`.
    pub arn: String,
    /// `KeyState`.
    #[serde(default)]
    pub key_state: Option<String>,
    /// `AWSAccountId`.
    #[serde(default, rename = "AWSAccountId")]
    pub aws_account_id: Option<String>,
    /// `CreationDate`.
    #[serde(default, deserialize_with = "lenient_date")]
    pub creation_date: Option<OffsetDateTime>,
    /// `Enabled`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `Description`.
    #[serde(default)]
    pub description: Option<String>,
    /// `KeyUsage`.
    #[serde(default)]
    pub key_usage: Option<String>,
    /// `KeySpec`.
    #[serde(default)]
    pub key_spec: Option<String>,
    /// `CustomerMasterKeySpec`.
    #[serde(default)]
    pub customer_master_key_spec: Option<String>,
    /// `KeyManager`.
    #[serde(default)]
    pub key_manager: Option<String>,
    /// `Origin`.
    #[serde(default)]
    pub origin: Option<String>,
    /// `EncryptionAlgorithms`.
    #[serde(default)]
    pub encryption_algorithms: Option<Vec<String>>,
    /// `MultiRegion`.
    #[serde(default)]
    pub multi_region: Option<bool>,
    /// `DeletionDate`.
    #[serde(default, deserialize_with = "lenient_date")]
    pub deletion_date: Option<OffsetDateTime>,
    /// `PendingDeletionWindowInDays`.
    #[serde(default)]
    pub pending_deletion_window_in_days: Option<u32>,
    /// `CurrentKeyMaterialId`.
    #[serde(default)]
    pub current_key_material_id: Option<String>,
}

impl WireKeyMetadata {
    /// atrest's `KeyMetadata`. A state atrest does not model (`PendingImport`,
    /// `Unavailable`, ...) is refused rather than guessed.
    pub fn into_metadata(self) -> Result<KeyMetadata, KmsError> {
        let key_state = match self.key_state.as_deref() {
            Some(text) => parse_key_state(text)?,
            None if self.enabled == Some(false) => KeyState::Disabled,
            None => KeyState::Enabled,
        };
        let account = self.aws_account_id.unwrap_or_else(|| {
            self.arn
                .split(':')
                .nth(4)
                .map(str::to_owned)
                .unwrap_or_default()
        });
        let symmetric = || SYMMETRIC_DEFAULT.to_owned();
        Ok(KeyMetadata {
            key_id: self.key_id,
            arn: self.arn,
            key_state,
            aws_account_id: account,
            creation_date: self.creation_date.unwrap_or(OffsetDateTime::UNIX_EPOCH),
            enabled: key_state == KeyState::Enabled,
            description: self.description.unwrap_or_default(),
            key_usage: self.key_usage.unwrap_or_else(|| "ENCRYPT_DECRYPT".into()),
            key_spec: self.key_spec.unwrap_or_else(symmetric),
            customer_master_key_spec: self.customer_master_key_spec.unwrap_or_else(symmetric),
            key_manager: self.key_manager.unwrap_or_else(|| "CUSTOMER".into()),
            origin: self.origin.unwrap_or_else(|| "AWS_KMS".into()),
            encryption_algorithms: self
                .encryption_algorithms
                .unwrap_or_else(|| vec![symmetric()]),
            multi_region: self.multi_region.unwrap_or(false),
            deletion_date: self.deletion_date,
            pending_deletion_window_in_days: self.pending_deletion_window_in_days,
            current_key_material_id: self.current_key_material_id,
        })
    }
}

/// A key state as another server reports it; one atrest does not model
/// (`PendingImport`, `Unavailable`, ...) is an UnsupportedOperationException.
pub fn parse_key_state(text: &str) -> Result<KeyState, KmsError> {
    match text {
        "Enabled" => Ok(KeyState::Enabled),
        "Disabled" => Ok(KeyState::Disabled),
        "PendingDeletion" => Ok(KeyState::PendingDeletion),
        other => Err(KmsError::UnsupportedOperation(format!(
            "the key service reported key state '{other}', which atrest does not model"
        ))),
    }
}

/// Epoch seconds, integral or fractional, as an `OffsetDateTime` (serde
/// `deserialize_with`).
pub fn lenient_date<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<OffsetDateTime>, D::Error> {
    let seconds: Option<f64> = Option::deserialize(deserializer)?;
    seconds
        .map(|secs| {
            if !secs.is_finite() {
                return Err(serde::de::Error::custom("a date is not a finite number"));
            }
            let nanos = (secs * 1e9).round() as i128;
            OffsetDateTime::from_unix_timestamp_nanos(nanos)
                .map_err(|_| serde::de::Error::custom("a date is out of range"))
        })
        .transpose()
}

/// A base64 field that does not decode; the endpoint answers SerializationException.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBase64 {
    /// The field's AWS name (`CiphertextBlob`, `Plaintext`).
    pub field: String,
}

impl std::fmt::Display for InvalidBase64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "'{}' is not valid base64", self.field)
    }
}

impl std::error::Error for InvalidBase64 {}

/// Decodes a base64 field into a zeroizing buffer.
pub fn decode_blob(field: &str, text: &str) -> Result<Zeroizing<Vec<u8>>, InvalidBase64> {
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
    BASE64
        .decode_vec(text, &mut out)
        .map_err(|_| InvalidBase64 {
            field: field.to_owned(),
        })?;
    Ok(out)
}

/// Base64 of `bytes` (not a secret: ciphertext blobs).
pub fn encode_blob(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Base64 of `bytes` (a secret) in a zeroizing string sized up front.
pub fn encode_secret(bytes: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(bytes.len().div_ceil(3) * 4));
    BASE64.encode_string(bytes, &mut out);
    out
}

/// The answer of CreateKey and DescribeKey: `M` is [`KeyMetadata`] where atrest
/// writes it, [`WireKeyMetadata`] where it reads another server's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadataResponse<M> {
    /// The key.
    pub key_metadata: M,
}

/// The answer of Encrypt and GenerateDataKeyWithoutPlaintext.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CiphertextResponse {
    /// The ciphertext blob, base64.
    pub ciphertext_blob: String,
    /// The ARN of the key that encrypted it.
    pub key_id: String,
    /// Encrypt's algorithm (`SYMMETRIC_DEFAULT`); GenerateDataKeyWithoutPlaintext
    /// sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<String>,
}

/// The answer of GenerateDataKey, Decrypt and GenerateRandom, as read from a
/// server (atrest writes these by hand into zeroizing buffers). The base64 text of
/// `plaintext` is the reader's to wipe once decoded.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PlaintextResponse {
    /// The key's ARN (GenerateRandom has none).
    #[serde(default)]
    pub key_id: Option<String>,
    /// GenerateDataKey's wrapped copy of the key, base64.
    #[serde(default)]
    pub ciphertext_blob: Option<String>,
    /// The secret, base64.
    pub plaintext: String,
    /// Decrypt's key material.
    #[serde(default)]
    pub key_material_id: Option<String>,
}

impl std::fmt::Debug for PlaintextResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaintextResponse")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// ReEncrypt's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReEncryptResponse {
    /// The new ciphertext blob, base64.
    pub ciphertext_blob: String,
    /// The ARN of the key that decrypted the old blob.
    pub source_key_id: String,
    /// The ARN of the key that encrypted the new blob.
    pub key_id: String,
    /// `SYMMETRIC_DEFAULT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_encryption_algorithm: Option<String>,
    /// `SYMMETRIC_DEFAULT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_encryption_algorithm: Option<String>,
    /// The key material that decrypted the old blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_key_material_id: Option<String>,
    /// The key material that encrypted the new blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_key_material_id: Option<String>,
}

/// The answer of CancelKeyDeletion and RotateKeyOnDemand.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyIdResponse {
    /// The key's ARN (CancelKeyDeletion) or id (RotateKeyOnDemand).
    pub key_id: String,
}

/// GetKeyPolicy's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyPolicyResponse {
    /// The policy document, JSON text.
    pub policy: String,
    /// Its name (`default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
}

/// ScheduleKeyDeletion's answer as any server sends it (atrest writes
/// [`ScheduledDeletion`](super::ScheduledDeletion)).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduleKeyDeletionResponse {
    /// The key's ARN.
    pub key_id: String,
    /// When the key is deleted.
    #[serde(deserialize_with = "lenient_date")]
    pub deletion_date: Option<OffsetDateTime>,
    /// `PendingDeletion`.
    #[serde(default)]
    pub key_state: Option<String>,
    /// The waiting period.
    #[serde(default)]
    pub pending_window_in_days: Option<u32>,
}

/// GetKeyRotationStatus's answer as any server sends it (atrest writes
/// [`RotationStatus`](super::RotationStatus)).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationStatusResponse {
    /// The key's ARN (older servers send none).
    #[serde(default)]
    pub key_id: Option<String>,
    /// Whether automatic rotation is on.
    pub key_rotation_enabled: bool,
    /// The automatic rotation period.
    #[serde(default)]
    pub rotation_period_in_days: Option<u32>,
    /// The next automatic rotation.
    #[serde(default, deserialize_with = "lenient_date")]
    pub next_rotation_date: Option<OffsetDateTime>,
    /// When an on-demand rotation in progress started.
    #[serde(default, deserialize_with = "lenient_date")]
    pub on_demand_rotation_start_date: Option<OffsetDateTime>,
}

/// An alias as other servers send it: AWS-managed aliases lack a target and dates.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireAlias {
    /// `alias/NAME`.
    pub alias_name: String,
    /// The alias ARN.
    pub alias_arn: String,
    /// The key it names.
    #[serde(default)]
    pub target_key_id: Option<String>,
    /// When it was made.
    #[serde(default, deserialize_with = "lenient_date")]
    pub creation_date: Option<OffsetDateTime>,
    /// When it last changed.
    #[serde(default, deserialize_with = "lenient_date")]
    pub last_updated_date: Option<OffsetDateTime>,
}

/// A completed rotation as other servers send it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireRotation {
    /// The key's ARN.
    pub key_id: String,
    /// When it rotated.
    #[serde(deserialize_with = "lenient_date")]
    pub rotation_date: Option<OffsetDateTime>,
    /// Automatic or on demand.
    pub rotation_type: RotationType,
    /// The material the rotation made.
    #[serde(default)]
    pub key_material_id: Option<String>,
}

/// Declares the answer of a marker-paged list: its items' field, `Truncated` and
/// `NextMarker` (sent only when truncated).
macro_rules! list_response {
    ($(#[$doc:meta])* $name:ident<$item:ident>, $field:ident) => {
        $(#[$doc])*
        #[derive(Debug, Serialize, Deserialize)]
        #[serde(rename_all = "PascalCase")]
        pub struct $name<$item> {
            /// This page's items.
            #[serde(default = "Vec::new")]
            pub $field: Vec<$item>,
            /// Whether more pages follow.
            #[serde(default)]
            pub truncated: bool,
            /// The marker of the next page.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub next_marker: Option<String>,
        }

        impl<$item> $name<$item> {
            /// The marker of the next page, when there is one.
            pub fn next_page(&self) -> Option<String> {
                self.next_marker.clone().filter(|_| self.truncated)
            }
        }
    };
}

list_response!(
    /// ListKeys's answer (of [`KeyListEntry`](super::KeyListEntry)).
    ListKeysResponse<K>,
    keys
);
list_response!(
    /// ListAliases's answer: `A` is [`AliasListEntry`](super::AliasListEntry) where atrest writes it,
    /// [`WireAlias`] where it reads another server's.
    ListAliasesResponse<A>,
    aliases
);
list_response!(
    /// ListKeyRotations's answer: `R` is [`RotationEntry`](super::RotationEntry)
    /// where atrest writes it, [`WireRotation`] where it reads another server's.
    ListKeyRotationsResponse<R>,
    rotations
);
list_response!(
    /// ListResourceTags's answer (of [`Tag`]).
    ListResourceTagsResponse<T>,
    tags
);
list_response!(
    /// ListKeyPolicies's answer (of policy names).
    ListKeyPoliciesResponse<P>,
    policy_names
);

/// An error answer: the AWS error name and its message.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The AWS error name, maybe namespaced (`com.amazonaws.kms#NotFoundException`).
    #[serde(rename = "__type", default)]
    pub kind: Option<String>,
    /// The message (some servers spell it `Message`).
    #[serde(alias = "Message", default)]
    pub message: Option<String>,
}

mod zeroizing_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(value: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
        String::deserialize(d).map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_metadata_from_other_servers_parses_leniently() {
        let json = r#"{"KeyId":"k","Arn":"arn:aws:kms:us-east-1:123456789012:key/k",
            "CreationDate":1700000000.5,"KeyState":"Disabled","Extra":1}"#;
        let meta: WireKeyMetadata = serde_json::from_str(json).unwrap();
        let meta = meta.into_metadata().unwrap();
        assert_eq!(meta.key_state, KeyState::Disabled);
        assert!(!meta.enabled);
        assert_eq!(meta.aws_account_id, "123456789012");
        assert_eq!(meta.creation_date.unix_timestamp(), 1_700_000_000);
        let odd: WireKeyMetadata =
            serde_json::from_str(r#"{"KeyId":"k","Arn":"a","KeyState":"PendingImport"}"#).unwrap();
        assert!(odd.into_metadata().is_err());
        assert!(serde_json::from_str::<WireKeyMetadata>(
            r#"{"KeyId":"k","Arn":"a","CreationDate":"x"}"#
        )
        .is_err());
    }

    #[test]
    fn requests_round_trip_with_aws_field_names() {
        let request = DataKeyRequest {
            key_id: "alias/x".into(),
            key_spec: Some("AES_256".into()),
            ..DataKeyRequest::default()
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(json, r#"{"KeyId":"alias/x","KeySpec":"AES_256"}"#);
        let back: DataKeyRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.key_spec.as_deref(), Some("AES_256"));
        assert!(decode_blob("CiphertextBlob", "!!").is_err());
        assert_eq!(decode_blob("b", "AAEC").unwrap().as_slice(), [0, 1, 2]);
        assert_eq!(encode_secret(&[0, 1, 2]).as_str(), "AAEC");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let request: EncryptRequest =
            serde_json::from_str(r#"{"KeyId":"k","Plaintext":"c2VjcmV0LXBsYWludGV4dA=="}"#)
                .unwrap();
        assert_eq!(request.plaintext.as_str(), "c2VjcmV0LXBsYWludGV4dA==");
        let answer: PlaintextResponse =
            serde_json::from_str(r#"{"KeyId":"k","Plaintext":"c2VjcmV0LXBsYWludGV4dA=="}"#)
                .unwrap();
        for debug in [format!("{request:?}"), format!("{answer:?}")] {
            assert!(debug.contains("\"k\""), "{debug}");
            assert!(!debug.contains("c2VjcmV0"), "{debug}");
        }
    }

    #[test]
    fn answers_serialise_with_aws_names_and_omit_what_is_absent() {
        let answer = CiphertextResponse {
            ciphertext_blob: "AQID".into(),
            key_id: "arn".into(),
            encryption_algorithm: None,
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"CiphertextBlob":"AQID","KeyId":"arn"}"#
        );
        let page = ListKeyPoliciesResponse {
            policy_names: vec!["default".to_owned()],
            truncated: false,
            next_marker: None,
        };
        assert_eq!(
            serde_json::to_string(&page).unwrap(),
            r#"{"PolicyNames":["default"],"Truncated":false}"#
        );
        let more: ListKeyPoliciesResponse<String> =
            serde_json::from_str(r#"{"PolicyNames":[],"Truncated":true,"NextMarker":"2"}"#)
                .unwrap();
        assert_eq!(more.next_page().as_deref(), Some("2"));
        let last: ListKeyPoliciesResponse<String> =
            serde_json::from_str(r#"{"NextMarker":"2"}"#).unwrap();
        assert_eq!(
            last.next_page(),
            None,
            "a marker without Truncated ends the list"
        );
    }
}
