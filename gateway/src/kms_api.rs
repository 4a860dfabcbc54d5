//! The KMS JSON 1.1 API: one parser for `X-Amz-Target` ([`Operation::parse`]),
//! one dispatcher ([`handle`]) from an operation and its JSON body to a
//! [`LocalKms`] call, and the AWS-shaped JSON answers. The caller has already
//! authenticated the request and hands in the key service acting for its principal.
//! Every refusal is in the trail: the key service records the calls it refuses, and
//! [`handle`] records those refused here, before the key service (a body that does
//! not parse, a missing or out-of-range field, bad tags).

use crypto_core::kms::operation::TARGET_PREFIX;
use crypto_core::kms::wire::{self, encode_blob, encode_secret, SYMMETRIC_DEFAULT};
use crypto_core::kms::{
    self, DataKeySpec, ImportOperation, KeyService, KmsError, LocalKms, Operation,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::GatewayError;

/// AWS's `OriginType` enum; atrest makes only `AWS_KMS` keys.
const ORIGINS: [&str; 4] = ["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"];

/// Parses an `X-Amz-Target` header value (`TrentService.<Op>`) into the
/// [`Operation`] it names.
pub fn parse_target(target: &str) -> Result<Operation, GatewayError> {
    let name = target.strip_prefix(TARGET_PREFIX).ok_or_else(|| {
        GatewayError::UnknownOperation(format!("X-Amz-Target must start with '{TARGET_PREFIX}'"))
    })?;
    Operation::from_name(name).ok_or_else(|| {
        GatewayError::UnknownOperation(format!(
            "atrest's key service has no operation '{}'",
            name.chars().take(64).collect::<String>()
        ))
    })
}

/// Why a call failed, and whether the key service already put it in the trail.
enum Refusal {
    /// The key service refused (or failed) the call and recorded it.
    Audited(GatewayError),
    /// Refused here, before the key service saw it: [`handle`] records it.
    Unaudited(GatewayError),
}

impl From<GatewayError> for Refusal {
    fn from(err: GatewayError) -> Self {
        Refusal::Unaudited(err)
    }
}

impl From<KmsError> for Refusal {
    fn from(err: KmsError) -> Self {
        Refusal::Unaudited(GatewayError::Kms(err))
    }
}

/// For the key service's own errors: already in the trail.
fn audited(err: KmsError) -> Refusal {
    Refusal::Audited(GatewayError::Kms(err))
}

/// Runs one operation for the caller `kms` stands for and returns the JSON answer.
/// The buffer is zeroized when dropped: GenerateDataKey's and Decrypt's answers hold
/// plaintext keys. A request refused before it reaches the key service is recorded
/// in the trail here (with its non-secret parameters); if that record cannot be
/// written, the answer is KMSInternalException.
pub fn handle(
    kms: &LocalKms,
    op: Operation,
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, GatewayError> {
    let err = match dispatch(kms, op, body) {
        Ok(answer) => return Ok(answer),
        Err(Refusal::Audited(err)) => err,
        Err(Refusal::Unaudited(err)) => {
            kms.record_invalid_request(
                op,
                refused_parameters(body),
                err.aws_name(),
                &err.message(),
            )?;
            err
        }
    };
    Err(match err {
        // AWS says nothing more about a ciphertext it cannot decrypt; the trail
        // keeps atrest's reason for the operator.
        GatewayError::Kms(KmsError::InvalidCiphertext(_)) => {
            GatewayError::Kms(KmsError::InvalidCiphertext(String::new()))
        }
        other => other,
    })
}

/// The trail's `requestParameters` of a refused request: its top-level JSON fields,
/// camelCase as CloudTrail writes them, without `Plaintext` (a secret) and
/// `CiphertextBlob`, long strings cut; `null` when the body is not a JSON object.
fn refused_parameters(body: &[u8]) -> Value {
    const MAX_FIELDS: usize = 32;
    const MAX_STRING: usize = 1024;
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Value::Null;
    };
    let mut out = serde_json::Map::new();
    for (name, value) in fields.into_iter().take(MAX_FIELDS) {
        if matches!(name.as_str(), "Plaintext" | "CiphertextBlob") {
            continue;
        }
        let mut chars = name.chars();
        let camel: String = match chars.next() {
            Some(first) => first.to_lowercase().chain(chars).take(MAX_STRING).collect(),
            None => continue,
        };
        let value = match value {
            Value::String(text) if text.chars().count() > MAX_STRING => {
                Value::String(text.chars().take(MAX_STRING).collect())
            }
            Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => value,
            other => {
                let text = other.to_string();
                if text.len() > 4 * MAX_STRING {
                    Value::String("(too long to record)".into())
                } else {
                    other
                }
            }
        };
        out.insert(camel, value);
    }
    Value::Object(out)
}

fn dispatch(kms: &LocalKms, op: Operation, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, Refusal> {
    match op {
        Operation::CreateKey => {
            let req: wire::CreateKeyRequest = parse(body)?;
            let tags = req.tags.unwrap_or_default();
            kms::validate_tags(&tags)?;
            if req.multi_region == Some(true) {
                return Err(unsupported("multi-Region keys are not supported").into());
            }
            if let Some(origin) = req.origin.as_deref().filter(|o| !ORIGINS.contains(o)) {
                return Err(GatewayError::Kms(KmsError::Validation(format!(
                    "1 validation error detected: Value '{}' at 'origin' failed to satisfy \
                     constraint: Member must satisfy enum value set: [{}]",
                    origin.chars().take(64).collect::<String>(),
                    ORIGINS.join(", ")
                )))
                .into());
            }
            if let Some(origin) = req.origin.as_deref().filter(|o| *o != "AWS_KMS") {
                return Err(unsupported(&format!(
                    "Origin {origin} is not supported; atrest makes its own key material (AWS_KMS)"
                ))
                .into());
            }
            let spec = match (req.key_spec, req.customer_master_key_spec) {
                (Some(a), Some(b)) if a != b => {
                    return Err(GatewayError::Kms(KmsError::Validation(
                        "KeySpec and CustomerMasterKeySpec differ; give only KeySpec".into(),
                    ))
                    .into())
                }
                (a, b) => a.or(b),
            };
            let meta = kms
                .create_key(&kms::CreateKeyRequest {
                    description: req.description.unwrap_or_default(),
                    policy: req.policy,
                    bypass_policy_lockout_safety_check: req
                        .bypass_policy_lockout_safety_check
                        .unwrap_or(false),
                    key_spec: spec,
                    key_usage: req.key_usage,
                })
                .map_err(audited)?;
            // The tags were checked above; tagging is the creator's second call, in
            // the trail as TagResource.
            if !tags.is_empty() {
                kms.tag_resource(&meta.key_id, &tags).map_err(audited)?;
            }
            Ok(reply(&wire::KeyMetadataResponse { key_metadata: meta })?)
        }
        Operation::DescribeKey => {
            let req: wire::KeyIdRequest = parse(body)?;
            Ok(reply(&wire::KeyMetadataResponse {
                key_metadata: kms.describe_key(&req.key_id).map_err(audited)?,
            })?)
        }
        Operation::ListKeys => {
            let req: wire::ListRequest = parse(body)?;
            let page = kms.list_keys(&list_request(&req)).map_err(audited)?;
            Ok(reply(&wire::ListKeysResponse {
                truncated: page.next_marker.is_some(),
                keys: page.items,
                next_marker: page.next_marker,
            })?)
        }
        Operation::UpdateKeyDescription => {
            let req: wire::UpdateKeyDescriptionRequest = parse(body)?;
            kms.update_key_description(&req.key_id, &req.description)
                .map_err(audited)?;
            Ok(empty()?)
        }
        Operation::EnableKey => {
            let req: wire::KeyIdRequest = parse(body)?;
            kms.enable_key(&req.key_id).map_err(audited)?;
            Ok(empty()?)
        }
        Operation::DisableKey => {
            let req: wire::KeyIdRequest = parse(body)?;
            kms.disable_key(&req.key_id).map_err(audited)?;
            Ok(empty()?)
        }
        Operation::ScheduleKeyDeletion => {
            let req: wire::ScheduleKeyDeletionRequest = parse(body)?;
            Ok(reply(
                &kms.schedule_key_deletion(&req.key_id, req.pending_window_in_days)
                    .map_err(audited)?,
            )?)
        }
        Operation::CancelKeyDeletion => {
            let req: wire::KeyIdRequest = parse(body)?;
            Ok(reply(&wire::KeyIdResponse {
                key_id: kms.cancel_key_deletion(&req.key_id).map_err(audited)?,
            })?)
        }
        Operation::ListAliases => {
            let req: wire::ListRequest = parse(body)?;
            let page = kms
                .list_aliases(req.key_id.as_deref(), &list_request(&req))
                .map_err(audited)?;
            Ok(reply(&wire::ListAliasesResponse {
                truncated: page.next_marker.is_some(),
                aliases: page.items,
                next_marker: page.next_marker,
            })?)
        }
        Operation::CreateAlias => {
            let req: wire::AliasRequest = parse(body)?;
            kms.create_alias(&req.alias_name, &req.target_key_id)
                .map_err(audited)?;
            Ok(empty()?)
        }
        Operation::UpdateAlias => {
            let req: wire::AliasRequest = parse(body)?;
            kms.update_alias(&req.alias_name, &req.target_key_id)
                .map_err(audited)?;
            Ok(empty()?)
        }
        Operation::DeleteAlias => {
            let req: wire::DeleteAliasRequest = parse(body)?;
            kms.delete_alias(&req.alias_name).map_err(audited)?;
            Ok(empty()?)
        }
        Operation::EnableKeyRotation => {
            let req: wire::EnableKeyRotationRequest = parse(body)?;
            kms.enable_key_rotation(&req.key_id, req.rotation_period_in_days)
                .map_err(audited)?;
            Ok(empty()?)
        }
        Operation::DisableKeyRotation => {
            let req: wire::KeyIdRequest = parse(body)?;
            kms.disable_key_rotation(&req.key_id).map_err(audited)?;
            Ok(empty()?)
        }
        Operation::GetKeyRotationStatus => {
            let req: wire::KeyIdRequest = parse(body)?;
            Ok(reply(
                &kms.get_key_rotation_status(&req.key_id).map_err(audited)?,
            )?)
        }
        Operation::RotateKeyOnDemand => {
            let req: wire::KeyIdRequest = parse(body)?;
            Ok(reply(&wire::KeyIdResponse {
                key_id: kms.rotate_key_on_demand(&req.key_id).map_err(audited)?,
            })?)
        }
        Operation::ListKeyRotations => {
            let req: wire::ListRequest = parse(body)?;
            let key_id = req.key_id.as_deref().ok_or_else(|| missing("KeyId"))?;
            let rotations = kms.list_key_rotations(key_id).map_err(audited)?;
            let page = paged_slice(rotations, &req)?;
            Ok(reply(&wire::ListKeyRotationsResponse {
                truncated: page.next_marker.is_some(),
                rotations: page.items,
                next_marker: page.next_marker,
            })?)
        }
        Operation::GetKeyPolicy => {
            let req: wire::KeyPolicyRequest = parse(body)?;
            let name = req.policy_name.unwrap_or_else(|| "default".into());
            let policy = kms.get_key_policy(&req.key_id, &name).map_err(audited)?;
            Ok(reply(&wire::KeyPolicyResponse {
                policy,
                policy_name: Some(name),
            })?)
        }
        Operation::PutKeyPolicy => {
            let req: wire::KeyPolicyRequest = parse(body)?;
            let policy = req.policy.ok_or_else(|| missing("Policy"))?;
            kms.put_key_policy(
                &req.key_id,
                req.policy_name.as_deref().unwrap_or("default"),
                &policy,
                req.bypass_policy_lockout_safety_check.unwrap_or(false),
            )
            .map_err(audited)?;
            Ok(empty()?)
        }
        Operation::TagResource => {
            let req: wire::TagResourceRequest = parse(body)?;
            kms.tag_resource(&req.key_id, &req.tags).map_err(audited)?;
            Ok(empty()?)
        }
        Operation::UntagResource => {
            let req: wire::UntagResourceRequest = parse(body)?;
            kms.untag_resource(&req.key_id, &req.tag_keys)
                .map_err(audited)?;
            Ok(empty()?)
        }
        Operation::ListResourceTags => {
            let req: wire::ListRequest = parse(body)?;
            let key_id = req.key_id.as_deref().ok_or_else(|| missing("KeyId"))?;
            let tags = kms.list_resource_tags(key_id).map_err(audited)?;
            let page = paged_slice(tags, &req)?;
            Ok(reply(&wire::ListResourceTagsResponse {
                truncated: page.next_marker.is_some(),
                tags: page.items,
                next_marker: page.next_marker,
            })?)
        }
        Operation::GenerateDataKey => {
            let req = data_key_request(parse(body)?)?;
            let generated = kms.generate_data_key(&req).map_err(audited)?;
            Ok(reply_with_plaintext(
                &[
                    ("CiphertextBlob", encode_blob(&generated.ciphertext_blob)),
                    ("KeyId", generated.key_id),
                ],
                generated.plaintext.expose(),
            )?)
        }
        Operation::GenerateDataKeyWithoutPlaintext => {
            let req = data_key_request(parse(body)?)?;
            let wrapped = kms
                .generate_data_key_without_plaintext(&req)
                .map_err(audited)?;
            Ok(reply(&wire::CiphertextResponse {
                ciphertext_blob: encode_blob(&wrapped.ciphertext_blob),
                key_id: wrapped.key_id,
                encryption_algorithm: None,
            })?)
        }
        Operation::Encrypt => {
            let req: wire::EncryptRequest = parse(body)?;
            refuse_dry_run(req.dry_run)?;
            check_algorithm(req.encryption_algorithm.as_deref())?;
            let plaintext = decode_blob("Plaintext", &req.plaintext)?;
            let wrapped = kms
                .encrypt(
                    &req.key_id,
                    &plaintext,
                    &req.encryption_context.unwrap_or_default(),
                )
                .map_err(audited)?;
            Ok(reply(&wire::CiphertextResponse {
                ciphertext_blob: encode_blob(&wrapped.ciphertext_blob),
                key_id: wrapped.key_id,
                encryption_algorithm: Some(SYMMETRIC_DEFAULT.to_owned()),
            })?)
        }
        Operation::Decrypt => {
            let req: wire::DecryptRequest = parse(body)?;
            refuse_dry_run(req.dry_run)?;
            check_algorithm(req.encryption_algorithm.as_deref())?;
            let decrypted = kms
                .decrypt(&kms::DecryptRequest {
                    ciphertext_blob: decode_blob("CiphertextBlob", &req.ciphertext_blob)?.to_vec(),
                    encryption_context: req.encryption_context.unwrap_or_default(),
                    key_id: req.key_id,
                })
                .map_err(audited)?;
            let mut fields = vec![
                ("EncryptionAlgorithm", SYMMETRIC_DEFAULT.to_owned()),
                ("KeyId", decrypted.key_id),
            ];
            if let Some(material) = decrypted.key_material_id {
                fields.push(("KeyMaterialId", material));
            }
            Ok(reply_with_plaintext(&fields, decrypted.plaintext.expose())?)
        }
        Operation::ReEncrypt => {
            let req: wire::ReEncryptRequest = parse(body)?;
            refuse_dry_run(req.dry_run)?;
            check_algorithm(req.source_encryption_algorithm.as_deref())?;
            check_algorithm(req.destination_encryption_algorithm.as_deref())?;
            let done = kms
                .re_encrypt(&kms::ReEncryptRequest {
                    ciphertext_blob: decode_blob("CiphertextBlob", &req.ciphertext_blob)?.to_vec(),
                    source_encryption_context: req.source_encryption_context.unwrap_or_default(),
                    source_key_id: req.source_key_id,
                    destination_key_id: req.destination_key_id,
                    destination_encryption_context: req
                        .destination_encryption_context
                        .unwrap_or_default(),
                })
                .map_err(audited)?;
            Ok(reply(&wire::ReEncryptResponse {
                ciphertext_blob: encode_blob(&done.ciphertext_blob),
                source_key_id: done.source_key_id,
                key_id: done.key_id,
                source_encryption_algorithm: Some(SYMMETRIC_DEFAULT.to_owned()),
                destination_encryption_algorithm: Some(SYMMETRIC_DEFAULT.to_owned()),
                source_key_material_id: done.source_key_material_id,
                destination_key_material_id: done.destination_key_material_id,
            })?)
        }
        Operation::GenerateRandom => {
            let req: wire::GenerateRandomRequest = parse(body)?;
            if req.custom_key_store_id.is_some() {
                return Err(unsupported("atrest has no custom key stores").into());
            }
            if req.recipient.is_some() {
                return Err(unsupported(
                    "Recipient (Nitro Enclaves attestation) is not supported by atrest",
                )
                .into());
            }
            let random = kms.generate_random(req.number_of_bytes).map_err(audited)?;
            Ok(reply_with_plaintext(&[], random.expose())?)
        }
        Operation::ListKeyPolicies => {
            let req: wire::ListRequest = parse(body)?;
            let key_id = req.key_id.as_deref().ok_or_else(|| missing("KeyId"))?;
            let names = kms.list_key_policies(key_id).map_err(audited)?;
            let page = paged_slice(names, &req)?;
            Ok(reply(&wire::ListKeyPoliciesResponse {
                truncated: page.next_marker.is_some(),
                policy_names: page.items,
                next_marker: page.next_marker,
            })?)
        }
        Operation::GetParametersForImport => {
            refuse_import(kms, body, ImportOperation::GetParametersForImport)
        }
        Operation::ImportKeyMaterial => {
            refuse_import(kms, body, ImportOperation::ImportKeyMaterial)
        }
        Operation::DeleteImportedKeyMaterial => {
            refuse_import(kms, body, ImportOperation::DeleteImportedKeyMaterial)
        }
    }
}

/// The key-material import calls: every atrest key has origin AWS_KMS, so the key
/// service refuses them (UnsupportedOperationException) once it found the key.
fn refuse_import(
    kms: &LocalKms,
    body: &[u8],
    import: ImportOperation,
) -> Result<Zeroizing<Vec<u8>>, Refusal> {
    let req: wire::KeyIdRequest = parse(body)?;
    Err(audited(kms.refuse_key_material_import(import, &req.key_id)))
}

/// Parses a request body; an empty body is `{}`. Bad JSON syntax is a
/// SerializationException, a missing or mistyped field a ValidationException.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    // The whole body is parsed as JSON first: parsing straight into `T` skips the
    // fields `T` does not have without checking them, and a body with invalid UTF-8
    // or a broken escape there is not JSON, so it must not be accepted.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::Serialization(format!("the request body is not valid JSON: {e}"))
    })?;
    serde_json::from_value(value).map_err(|e| {
        GatewayError::Kms(KmsError::Validation(format!(
            "1 validation error detected: {e}"
        )))
    })
}

fn missing(field: &str) -> GatewayError {
    GatewayError::Kms(KmsError::Validation(format!(
        "1 validation error detected: Value null at '{field}' failed to satisfy constraint: \
         Member must not be null"
    )))
}

fn unsupported(what: &str) -> GatewayError {
    GatewayError::Kms(KmsError::UnsupportedOperation(what.to_owned()))
}

fn refuse_dry_run(dry_run: Option<bool>) -> Result<(), GatewayError> {
    match dry_run {
        Some(true) => Err(unsupported(
            "DryRun is not supported by atrest's key service",
        )),
        Some(false) | None => Ok(()),
    }
}

fn check_algorithm(algorithm: Option<&str>) -> Result<(), GatewayError> {
    match algorithm {
        None | Some(SYMMETRIC_DEFAULT) => Ok(()),
        Some(other) => Err(GatewayError::Kms(KmsError::Validation(format!(
            "EncryptionAlgorithm '{}' is not valid for a symmetric key; use SYMMETRIC_DEFAULT",
            other.chars().take(64).collect::<String>()
        )))),
    }
}

/// A base64 request field; bad base64 is the caller's SerializationException.
fn decode_blob(field: &str, text: &str) -> Result<Zeroizing<Vec<u8>>, GatewayError> {
    wire::decode_blob(field, text).map_err(|e| GatewayError::Serialization(e.to_string()))
}

/// AWS requires exactly one of KeySpec and NumberOfBytes.
fn data_key_request(
    req: wire::DataKeyRequest,
) -> Result<kms::GenerateDataKeyRequest, GatewayError> {
    refuse_dry_run(req.dry_run)?;
    let spec = match (req.key_spec.as_deref(), req.number_of_bytes) {
        (Some(spec), None) => DataKeySpec::from_key_spec(spec)?,
        (None, Some(n)) => {
            let n = u16::try_from(n).unwrap_or(u16::MAX);
            DataKeySpec::Bytes(n)
        }
        (Some(_), Some(_)) => {
            return Err(GatewayError::Kms(KmsError::Validation(
                "Please specify either number of bytes or key spec, not both.".into(),
            )))
        }
        (None, None) => {
            return Err(GatewayError::Kms(KmsError::Validation(
                "Please specify either number of bytes or key spec.".into(),
            )))
        }
    };
    spec.byte_len()?;
    Ok(kms::GenerateDataKeyRequest {
        key_id: req.key_id,
        spec,
        encryption_context: req.encryption_context.unwrap_or_default(),
    })
}

fn list_request(req: &wire::ListRequest) -> kms::ListRequest {
    kms::ListRequest {
        limit: req.limit,
        marker: req.marker.clone(),
    }
}

/// Pages a list the key service returns whole; the marker is the decimal offset of
/// the next item.
fn paged_slice<T>(items: Vec<T>, req: &wire::ListRequest) -> Result<kms::Page<T>, GatewayError> {
    let limit = match req.limit {
        None => 100,
        Some(limit @ 1..=1000) => limit as usize,
        Some(other) => {
            return Err(GatewayError::Kms(KmsError::Validation(format!(
                "1 validation error detected: Value '{other}' at 'limit' failed to satisfy \
                 constraint: Member must have value between 1 and 1000"
            ))))
        }
    };
    let start = match req.marker.as_deref() {
        None => 0,
        Some(marker) => marker
            .parse::<usize>()
            .ok()
            .filter(|start| *start <= items.len())
            .ok_or_else(|| {
                GatewayError::Kms(KmsError::InvalidMarker(
                    "the marker is not one this service issued".into(),
                ))
            })?,
    };
    let end = start.saturating_add(limit).min(items.len());
    let next = (end < items.len()).then(|| end.to_string());
    Ok(kms::Page {
        items: items.into_iter().skip(start).take(end - start).collect(),
        next_marker: next,
    })
}

/// The JSON of an answer. Through a `Value`, whose object keys are sorted: the
/// bytes atrest has always sent, whatever the field order of the answer's type.
fn reply(answer: &impl serde::Serialize) -> Result<Zeroizing<Vec<u8>>, GatewayError> {
    serde_json::to_value(answer)
        .and_then(|value| serde_json::to_vec(&value))
        .map(Zeroizing::new)
        .map_err(|e| {
            GatewayError::Kms(KmsError::Internal(format!("cannot encode the answer: {e}")))
        })
}

fn empty() -> Result<Zeroizing<Vec<u8>>, GatewayError> {
    Ok(Zeroizing::new(b"{}".to_vec()))
}

/// A JSON object of `fields` plus `"Plaintext"`, built in one zeroizing buffer sized
/// up front so no reallocation leaves a copy of the secret behind.
fn reply_with_plaintext(
    fields: &[(&str, String)],
    plaintext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, GatewayError> {
    let encoded = encode_secret(plaintext);
    let mut rendered = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        let value = serde_json::to_string(value).map_err(|e| {
            GatewayError::Kms(KmsError::Internal(format!("cannot encode the answer: {e}")))
        })?;
        rendered.push((*name, value));
    }
    let capacity = rendered
        .iter()
        .map(|(name, value)| name.len() + value.len() + 4)
        .sum::<usize>()
        + encoded.len()
        + 16;
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    out.push(b'{');
    for (name, value) in &rendered {
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value.as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"Plaintext\":\"");
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(b"\"}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_parse_for_every_operation_and_only_those() {
        for op in Operation::ALL {
            let target = format!("TrentService.{}", op.name());
            assert_eq!(parse_target(&target).unwrap(), op);
        }
        for bad in [
            "",
            "TrentService.",
            "TrentService.Nope",
            "S3.GetObject",
            "DescribeKey",
        ] {
            assert!(matches!(
                parse_target(bad),
                Err(GatewayError::UnknownOperation(_))
            ));
        }
    }

    #[test]
    fn bodies_map_to_serialization_or_validation_errors() {
        let syntax = parse::<wire::KeyIdRequest>(b"{").unwrap_err();
        assert_eq!(syntax.aws_name(), "SerializationException");
        let missing = parse::<wire::KeyIdRequest>(b"{}").unwrap_err();
        assert_eq!(missing.aws_name(), "ValidationException");
        let mistyped = parse::<wire::KeyIdRequest>(br#"{"KeyId": 5}"#).unwrap_err();
        assert_eq!(mistyped.aws_name(), "ValidationException");
        // Found by the kms_json fuzz target: an unknown field is skipped by a typed
        // parse without checking its text, but a body that is not JSON is refused.
        for not_json in [
            &b"{\"KeyId\": \"k\", \"Other\": \"\x8c\xab\"}"[..],
            br#"{"KeyId": "k", "Other": "\ud800"}"#,
        ] {
            let err = parse::<wire::KeyIdRequest>(not_json).unwrap_err();
            assert_eq!(err.aws_name(), "SerializationException", "{err}");
        }
    }

    #[test]
    fn refused_requests_are_recorded_without_secrets() {
        let body = br#"{"KeyId": "alias/a", "Plaintext": "c2VjcmV0", "CiphertextBlob": "AQID",
                        "NumberOfBytes": 1025, "EncryptionContext": {"app": "x"}}"#;
        let recorded = refused_parameters(body);
        assert_eq!(
            recorded,
            json!({"keyId": "alias/a", "numberOfBytes": 1025, "encryptionContext": {"app": "x"}})
        );
        let long = format!(r#"{{"Description": "{}"}}"#, "d".repeat(5000));
        let recorded = refused_parameters(long.as_bytes());
        assert_eq!(recorded["description"].as_str().unwrap().len(), 1024);
        assert_eq!(refused_parameters(b"{"), Value::Null);
        assert_eq!(refused_parameters(b"[1]"), Value::Null);
    }

    #[test]
    fn plaintext_answers_are_valid_json() {
        let body =
            reply_with_plaintext(&[("KeyId", "arn:\"odd\"".to_owned())], &[1, 2, 3]).unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["KeyId"], "arn:\"odd\"");
        assert_eq!(value["Plaintext"], "AQID");
    }

    #[test]
    fn data_key_requests_need_exactly_one_size() {
        let both = wire::DataKeyRequest {
            key_id: "k".into(),
            key_spec: Some("AES_256".into()),
            number_of_bytes: Some(32),
            ..Default::default()
        };
        assert!(data_key_request(both).is_err());
        let neither = wire::DataKeyRequest {
            key_id: "k".into(),
            ..Default::default()
        };
        assert!(data_key_request(neither).is_err());
        let huge = wire::DataKeyRequest {
            key_id: "k".into(),
            number_of_bytes: Some(1 << 20),
            ..Default::default()
        };
        assert!(data_key_request(huge).is_err());
    }
}
