//! Key lifecycle: CreateKey, DescribeKey, ListKeys, UpdateKeyDescription, Enable/DisableKey,
//! Schedule/CancelKeyDeletion.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::crypto::key_material_id;
use super::policy_tags::not_in_enum;
use super::LocalKms;
use crate::kms::ident::printable;
use crate::kms::keystore::{add_material, to_time, KeyRecord};
use crate::kms::operation::Operation;
use crate::kms::policy::{default_policy, KeyPolicy};
use crate::kms::{
    CreateKeyRequest, KeyListEntry, KeyMetadata, KeyState, KmsError, ListRequest, Page,
    ScheduledDeletion,
};

/// AWS's bounds on ScheduleKeyDeletion's window.
const MIN_PENDING_DAYS: u32 = 7;
const MAX_PENDING_DAYS: u32 = 30;
const DEFAULT_PENDING_DAYS: u32 = 30;
const MAX_DESCRIPTION_LEN: usize = 8192;
/// AWS's `KeySpec` and `KeyUsageType` enums (botocore 1.44's KMS model): a value outside
/// them is a ValidationException; one inside that atrest does not make (asymmetric,
/// HMAC) an UnsupportedOperationException.
const KEY_SPECS: [&str; 20] = [
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "SYMMETRIC_DEFAULT",
    "HMAC_224",
    "HMAC_256",
    "HMAC_384",
    "HMAC_512",
    "SM2",
    "ML_DSA_44",
    "ML_DSA_65",
    "ML_DSA_87",
    "ECC_NIST_EDWARDS25519",
    "ML_KEM_512",
    "ML_KEM_768",
    "ML_KEM_1024",
];
const KEY_USAGES: [&str; 5] = [
    "SIGN_VERIFY",
    "ENCRYPT_DECRYPT",
    "GENERATE_VERIFY_MAC",
    "KEY_AGREEMENT",
    "ENCAPSULATE_DECAPSULATE",
];

impl LocalKms {
    fn metadata(&self, id: &Uuid, key: &KeyRecord) -> KeyMetadata {
        KeyMetadata {
            key_id: id.to_string(),
            arn: self.arn_in(&key.account, id),
            key_state: key.state,
            aws_account_id: key.account.clone(),
            creation_date: to_time(key.creation_date),
            enabled: key.state == KeyState::Enabled,
            description: key.description.clone(),
            key_usage: "ENCRYPT_DECRYPT".into(),
            key_spec: "SYMMETRIC_DEFAULT".into(),
            customer_master_key_spec: "SYMMETRIC_DEFAULT".into(),
            key_manager: "CUSTOMER".into(),
            origin: "AWS_KMS".into(),
            encryption_algorithms: vec!["SYMMETRIC_DEFAULT".into()],
            multi_region: false,
            deletion_date: key.deletion_date.map(to_time),
            pending_deletion_window_in_days: key.pending_window_in_days,
            current_key_material_id: key
                .materials
                .len()
                .checked_sub(1)
                .and_then(|last| u32::try_from(last).ok())
                .map(|version| key_material_id(id, version)),
        }
    }

    pub(super) fn describe_key(&self, key_id: &str) -> Result<KeyMetadata, KmsError> {
        self.inspect(
            Operation::DescribeKey,
            key_id,
            json!({ "keyId": key_id }),
            |key, id, _| Ok(self.metadata(id, key)),
        )
    }

    pub(super) fn create_key(&self, req: &CreateKeyRequest) -> Result<KeyMetadata, KmsError> {
        let mut request = json!({
            "description": req.description,
            "keyUsage": req.key_usage.as_deref().unwrap_or("ENCRYPT_DECRYPT"),
            "keySpec": req.key_spec.as_deref().unwrap_or("SYMMETRIC_DEFAULT"),
            "origin": "AWS_KMS",
            "bypassPolicyLockoutSafetyCheck": req.bypass_policy_lockout_safety_check,
            "multiRegion": false,
        });
        if let Some(policy) = &req.policy {
            request["policy"] = json!(policy);
        }
        self.run(Operation::CreateKey, request, |audit| {
            if req.description.len() > MAX_DESCRIPTION_LEN {
                return Err(KmsError::Validation(format!(
                    "the description is longer than {MAX_DESCRIPTION_LEN} characters"
                )));
            }
            match req.key_spec.as_deref() {
                None | Some("SYMMETRIC_DEFAULT") => {}
                Some(other) if !KEY_SPECS.contains(&other) => {
                    return Err(not_in_enum(other, "keySpec", &KEY_SPECS))
                }
                Some(other) => {
                    return Err(KmsError::UnsupportedOperation(format!(
                        "KeySpec '{}' is not supported: atrest keys are SYMMETRIC_DEFAULT",
                        printable(other)
                    )))
                }
            }
            match req.key_usage.as_deref() {
                None | Some("ENCRYPT_DECRYPT") => {}
                Some(other) if !KEY_USAGES.contains(&other) => {
                    return Err(not_in_enum(other, "keyUsage", &KEY_USAGES))
                }
                Some(other) => {
                    return Err(KmsError::UnsupportedOperation(format!(
                        "KeyUsage '{}' is not supported: atrest keys are ENCRYPT_DECRYPT",
                        printable(other)
                    )))
                }
            }
            // The key belongs to the caller's account, whatever ATREST_ACCOUNT says.
            let id = Uuid::new_v4();
            let arn = self.key_arn(&id);
            let policy = match &req.policy {
                Some(text) => {
                    let parsed = KeyPolicy::parse(text)?;
                    self.check_lockout(&parsed, &arn, req.bypass_policy_lockout_safety_check)?;
                    text.clone()
                }
                None => default_policy(&self.caller.account, &self.caller.principal),
            };
            self.mutate(audit, |store, now, audit| {
                audit.resources.push(arn.clone());
                let ts = now.unix_timestamp();
                let mut key = KeyRecord {
                    account: self.caller.account.clone(),
                    description: req.description.clone(),
                    creation_date: ts,
                    state: KeyState::Enabled,
                    deletion_date: None,
                    pending_window_in_days: None,
                    policy,
                    rotation: None,
                    rotations: Vec::new(),
                    materials: Vec::new(),
                    tags: BTreeMap::new(),
                };
                add_material(&mut key, &id, ts, &self.shared.keystore)?;
                let meta = self.metadata(&id, &key);
                store.keys.insert(id, key);
                audit.response = Some(json!({ "keyMetadata": {
                    "keyId": meta.key_id,
                    "arn": meta.arn,
                    "aWSAccountId": meta.aws_account_id,
                    "creationDate": date(meta.creation_date),
                    "enabled": meta.enabled,
                    "keyState": meta.key_state.as_str(),
                    "description": meta.description,
                    "keyUsage": meta.key_usage,
                    "keySpec": meta.key_spec,
                    "keyManager": meta.key_manager,
                    "origin": meta.origin,
                }}));
                Ok(meta)
            })
        })
    }

    pub(super) fn list_keys(&self, req: &ListRequest) -> Result<Page<KeyListEntry>, KmsError> {
        let mut request = json!({});
        if let Some(limit) = req.limit {
            request["limit"] = json!(limit);
        }
        if let Some(marker) = &req.marker {
            request["marker"] = json!(marker);
        }
        self.run(Operation::ListKeys, request, |_| {
            let store = self.fresh()?;
            let items = store
                .keys
                .iter()
                .filter(|(_, key)| key.account == self.caller.account)
                .map(|(id, _)| {
                    (
                        id.to_string(),
                        KeyListEntry {
                            key_id: id.to_string(),
                            key_arn: self.key_arn(id),
                        },
                    )
                });
            self.page(items, req)
        })
    }

    pub(super) fn update_key_description(
        &self,
        key_id: &str,
        description: &str,
    ) -> Result<(), KmsError> {
        let request = json!({ "keyId": key_id, "description": description });
        if description.len() > MAX_DESCRIPTION_LEN {
            return self.run(Operation::UpdateKeyDescription, request, |_| {
                Err(KmsError::Validation(format!(
                    "the description is longer than {MAX_DESCRIPTION_LEN} characters"
                )))
            });
        }
        self.administer(
            Operation::UpdateKeyDescription,
            key_id,
            request,
            |key, _, _, _| {
                key.description = description.to_owned();
                Ok(())
            },
        )
    }

    pub(super) fn enable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.administer(
            Operation::EnableKey,
            key_id,
            json!({ "keyId": key_id }),
            |key, _, _, _| {
                key.state = KeyState::Enabled;
                Ok(())
            },
        )
    }

    pub(super) fn disable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.administer(
            Operation::DisableKey,
            key_id,
            json!({ "keyId": key_id }),
            |key, _, _, _| {
                key.state = KeyState::Disabled;
                Ok(())
            },
        )
    }

    pub(super) fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_window_in_days: Option<u32>,
    ) -> Result<ScheduledDeletion, KmsError> {
        let mut request = json!({ "keyId": key_id });
        if let Some(days) = pending_window_in_days {
            request["pendingWindowInDays"] = json!(days);
        }
        let days = pending_window_in_days.unwrap_or(DEFAULT_PENDING_DAYS);
        if !(MIN_PENDING_DAYS..=MAX_PENDING_DAYS).contains(&days) {
            return self.run(Operation::ScheduleKeyDeletion, request, |_| {
                Err(KmsError::Validation(format!(
                    "1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed \
                     to satisfy constraint: Member must have value between {MIN_PENDING_DAYS} and \
                     {MAX_PENDING_DAYS}"
                )))
            });
        }
        self.run(Operation::ScheduleKeyDeletion, request, |audit| {
            self.mutate(audit, |store, now, audit| {
                let (id, arn) = self.resolve(store, key_id, Operation::ScheduleKeyDeletion)?;
                audit.resources.push(arn.clone());
                let key = store
                    .keys
                    .get_mut(&id)
                    .ok_or_else(|| KmsError::NotFound(format!("Key '{arn}' does not exist")))?;
                self.authorize(key, "kms:ScheduleKeyDeletion", &arn)?;
                Operation::ScheduleKeyDeletion.check_state(key.state, &arn)?;
                let deletion_date = now + Duration::days(i64::from(days));
                key.state = KeyState::PendingDeletion;
                key.deletion_date = Some(deletion_date.unix_timestamp());
                key.pending_window_in_days = Some(days);
                audit.response = Some(json!({
                    "keyId": arn,
                    "deletionDate": date(deletion_date),
                    "keyState": "PendingDeletion",
                    "pendingWindowInDays": days,
                }));
                Ok(ScheduledDeletion {
                    key_id: arn,
                    deletion_date: to_time(deletion_date.unix_timestamp()),
                    key_state: KeyState::PendingDeletion,
                    pending_window_in_days: days,
                })
            })
        })
    }

    pub(super) fn cancel_key_deletion(&self, key_id: &str) -> Result<String, KmsError> {
        self.administer(
            Operation::CancelKeyDeletion,
            key_id,
            json!({ "keyId": key_id }),
            |key, _, arn, _| {
                key.state = KeyState::Disabled;
                key.deletion_date = None;
                key.pending_window_in_days = None;
                Ok(arn.to_owned())
            },
        )
    }
}

fn date(ts: OffsetDateTime) -> Value {
    json!(ts.unix_timestamp())
}
