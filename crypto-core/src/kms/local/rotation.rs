//! Key rotation: Enable/DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand,
//! ListKeyRotations.

use serde_json::json;
use time::Duration;

use super::crypto::key_material_id;
use super::LocalKms;
use crate::kms::keystore::{add_material, to_time, RotationRecord, RotationSchedule};
use crate::kms::operation::Operation;
use crate::kms::{KmsError, RotationEntry, RotationStatus, RotationType};

/// AWS's bounds on the automatic rotation period.
const MIN_ROTATION_DAYS: u32 = 90;
const MAX_ROTATION_DAYS: u32 = 2560;
const DEFAULT_ROTATION_DAYS: u32 = 365;
/// AWS allows 10 on-demand rotations per key.
const MAX_ON_DEMAND_ROTATIONS: usize = 10;

impl LocalKms {
    pub(super) fn enable_key_rotation(
        &self,
        key_id: &str,
        rotation_period_in_days: Option<u32>,
    ) -> Result<(), KmsError> {
        let mut request = json!({ "keyId": key_id });
        if let Some(days) = rotation_period_in_days {
            request["rotationPeriodInDays"] = json!(days);
        }
        let days = rotation_period_in_days.unwrap_or(DEFAULT_ROTATION_DAYS);
        if !(MIN_ROTATION_DAYS..=MAX_ROTATION_DAYS).contains(&days) {
            return self.run(Operation::EnableKeyRotation, request, |_| {
                Err(KmsError::Validation(format!(
                    "1 validation error detected: Value '{days}' at 'rotationPeriodInDays' failed \
                     to satisfy constraint: Member must have value between {MIN_ROTATION_DAYS} and \
                     {MAX_ROTATION_DAYS}"
                )))
            });
        }
        self.administer(
            Operation::EnableKeyRotation,
            key_id,
            request,
            |key, _, _, now| {
                key.rotation = Some(RotationSchedule {
                    period_in_days: days,
                    next_rotation_date: (now + Duration::days(i64::from(days))).unix_timestamp(),
                });
                Ok(())
            },
        )
    }

    pub(super) fn disable_key_rotation(&self, key_id: &str) -> Result<(), KmsError> {
        self.administer(
            Operation::DisableKeyRotation,
            key_id,
            json!({ "keyId": key_id }),
            |key, _, _, _| {
                key.rotation = None;
                Ok(())
            },
        )
    }

    pub(super) fn get_key_rotation_status(&self, key_id: &str) -> Result<RotationStatus, KmsError> {
        self.inspect(
            Operation::GetKeyRotationStatus,
            key_id,
            json!({ "keyId": key_id }),
            |key, _, arn| {
                Ok(RotationStatus {
                    key_id: arn.to_owned(),
                    key_rotation_enabled: key.rotation.is_some(),
                    rotation_period_in_days: key.rotation.as_ref().map(|r| r.period_in_days),
                    next_rotation_date: key
                        .rotation
                        .as_ref()
                        .map(|r| to_time(r.next_rotation_date)),
                    // An on-demand rotation completes within RotateKeyOnDemand, so none
                    // is ever in progress: AWS omits the field when none is.
                    on_demand_rotation_start_date: None,
                })
            },
        )
    }

    pub(super) fn rotate_key_on_demand(&self, key_id: &str) -> Result<String, KmsError> {
        self.administer(
            Operation::RotateKeyOnDemand,
            key_id,
            json!({ "keyId": key_id }),
            |key, id, arn, now| {
                let done = key
                    .rotations
                    .iter()
                    .filter(|r| r.rotation_type == RotationType::OnDemand)
                    .count();
                if done >= MAX_ON_DEMAND_ROTATIONS {
                    return Err(KmsError::LimitExceeded(format!(
                        "{arn} has already been rotated on demand {MAX_ON_DEMAND_ROTATIONS} times"
                    )));
                }
                let ts = now.unix_timestamp();
                add_material(key, id, ts, &self.shared.keystore)?;
                key.rotations.push(RotationRecord {
                    date: ts,
                    rotation_type: RotationType::OnDemand,
                });
                Ok(arn.to_owned())
            },
        )
    }

    pub(super) fn list_key_rotations(&self, key_id: &str) -> Result<Vec<RotationEntry>, KmsError> {
        self.inspect(
            Operation::ListKeyRotations,
            key_id,
            json!({ "keyId": key_id }),
            |key, id, arn| {
                // Rotation `i` made material version `i + 1` (version 0 is the key's first).
                Ok(key
                    .rotations
                    .iter()
                    .zip(1u32..)
                    .map(|(r, version)| RotationEntry {
                        key_id: arn.to_owned(),
                        rotation_date: to_time(r.date),
                        rotation_type: r.rotation_type,
                        key_material_id: Some(key_material_id(id, version)),
                    })
                    .collect())
            },
        )
    }
}
