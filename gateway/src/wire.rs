//! The AWS KMS JSON 1.1 shapes atrest speaks, shared by the server ([`crate::kms_api`])
//! and the client ([`crate::client`]): requests serialise and parse the same way on
//! both sides. Binary fields are base64 text; dates are epoch seconds, which other
//! servers send as fractions (so responses parse them leniently).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use crypto_core::kms::{EncryptionContext, KeyMetadata, KeyState, Tag};
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::error::GatewayError;

/// The content type of the AWS JSON 1.1 protocol.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyIdRequest {
    pub key_id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataKeyRequest {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<EncryptionContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// Encrypt's request. `plaintext` is base64 of a secret: zeroized on drop.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptRequest {
    pub key_id: String,
    #[serde(with = "zeroizing_string")]
    pub plaintext: Zeroizing<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<EncryptionContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DecryptRequest {
    pub ciphertext_blob: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<EncryptionContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReEncryptRequest {
    pub ciphertext_blob: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_encryption_context: Option<EncryptionContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_key_id: Option<String>,
    pub destination_key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_encryption_context: Option<EncryptionContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_encryption_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_encryption_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateKeyRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass_policy_lockout_safety_check: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_master_key_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_region: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagResourceRequest {
    pub key_id: String,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UntagResourceRequest {
    pub key_id: String,
    pub tag_keys: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

/// GenerateRandom's request (`CustomKeyStoreId` and `Recipient` are refused).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateRandomRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_key_store_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<serde_json::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateKeyDescriptionRequest {
    pub key_id: String,
    pub description: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduleKeyDeletionRequest {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_window_in_days: Option<u32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasRequest {
    pub alias_name: String,
    pub target_key_id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteAliasRequest {
    pub alias_name: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnableKeyRotationRequest {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyPolicyRequest {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass_policy_lockout_safety_check: Option<bool>,
}

/// KeyMetadata as any KMS-compatible server sends it: only `KeyId` and `Arn` are
/// required; dates may be fractional.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireKeyMetadata {
    pub key_id: String,
    pub arn: String,
    #[serde(default)]
    pub key_state: Option<String>,
    #[serde(default, rename = "AWSAccountId")]
    pub aws_account_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_date")]
    pub creation_date: Option<OffsetDateTime>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub key_usage: Option<String>,
    #[serde(default)]
    pub key_spec: Option<String>,
    #[serde(default)]
    pub customer_master_key_spec: Option<String>,
    #[serde(default)]
    pub key_manager: Option<String>,
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub encryption_algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub multi_region: Option<bool>,
    #[serde(default, deserialize_with = "lenient_date")]
    pub deletion_date: Option<OffsetDateTime>,
    #[serde(default)]
    pub pending_deletion_window_in_days: Option<u32>,
    #[serde(default)]
    pub current_key_material_id: Option<String>,
}

impl WireKeyMetadata {
    /// atrest's `KeyMetadata`. A state atrest does not model (`PendingImport`,
    /// `Unavailable`, ...) is refused rather than guessed.
    pub fn into_metadata(self) -> Result<KeyMetadata, GatewayError> {
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
        let symmetric = || "SYMMETRIC_DEFAULT".to_owned();
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

pub fn parse_key_state(text: &str) -> Result<KeyState, GatewayError> {
    match text {
        "Enabled" => Ok(KeyState::Enabled),
        "Disabled" => Ok(KeyState::Disabled),
        "PendingDeletion" => Ok(KeyState::PendingDeletion),
        other => Err(GatewayError::Kms(
            crypto_core::kms::KmsError::UnsupportedOperation(format!(
                "the key service reported key state '{other}', which atrest does not model"
            )),
        )),
    }
}

/// Epoch seconds, integral or fractional, as an `OffsetDateTime`.
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

/// Decodes a base64 field into a zeroizing buffer; bad base64 is the caller's
/// SerializationException.
pub fn decode_blob(field: &str, text: &str) -> Result<Zeroizing<Vec<u8>>, GatewayError> {
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
    BASE64
        .decode_vec(text, &mut out)
        .map_err(|_| GatewayError::Serialization(format!("'{field}' is not valid base64")))?;
    Ok(out)
}

/// Base64 of `bytes` in a zeroizing string sized up front.
pub fn encode_secret(bytes: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(bytes.len().div_ceil(3) * 4));
    BASE64.encode_string(bytes, &mut out);
    out
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
}
