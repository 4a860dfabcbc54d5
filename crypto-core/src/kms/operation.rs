//! [`Operation`]: the one table of the KMS operations atrest serves. Each row gives
//! the AWS name (the `X-Amz-Target` suffix and the trail's `eventName`), whether the
//! call is read-only (the trail's `readOnly`), whether another account's key may be
//! named by its ARN, and the key-state rule of AWS's "Key states of AWS KMS keys"
//! table. The key service, the HTTP endpoint, the remote client and the policy
//! engine all speak this type.

use super::{KeyState, KmsError};

/// The `X-Amz-Target` prefix of every KMS operation.
pub const TARGET_PREFIX: &str = "TrentService.";

/// One KMS operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `CreateKey`.
    CreateKey,
    /// `DescribeKey`.
    DescribeKey,
    /// `ListKeys`.
    ListKeys,
    /// `UpdateKeyDescription`.
    UpdateKeyDescription,
    /// `EnableKey`.
    EnableKey,
    /// `DisableKey`.
    DisableKey,
    /// `ScheduleKeyDeletion`.
    ScheduleKeyDeletion,
    /// `CancelKeyDeletion`.
    CancelKeyDeletion,
    /// `ListAliases`.
    ListAliases,
    /// `CreateAlias`.
    CreateAlias,
    /// `UpdateAlias`.
    UpdateAlias,
    /// `DeleteAlias`.
    DeleteAlias,
    /// `EnableKeyRotation`.
    EnableKeyRotation,
    /// `DisableKeyRotation`.
    DisableKeyRotation,
    /// `GetKeyRotationStatus`.
    GetKeyRotationStatus,
    /// `RotateKeyOnDemand`.
    RotateKeyOnDemand,
    /// `ListKeyRotations`.
    ListKeyRotations,
    /// `GetKeyPolicy`.
    GetKeyPolicy,
    /// `PutKeyPolicy`.
    PutKeyPolicy,
    /// `GenerateDataKey`.
    GenerateDataKey,
    /// `GenerateDataKeyWithoutPlaintext`.
    GenerateDataKeyWithoutPlaintext,
    /// `Encrypt`.
    Encrypt,
    /// `Decrypt`.
    Decrypt,
    /// `ReEncrypt`.
    ReEncrypt,
    /// `TagResource`.
    TagResource,
    /// `UntagResource`.
    UntagResource,
    /// `ListResourceTags`.
    ListResourceTags,
    /// `GenerateRandom`.
    GenerateRandom,
    /// `ListKeyPolicies`.
    ListKeyPolicies,
    /// `GetParametersForImport` (refused: atrest keys have origin `AWS_KMS`).
    GetParametersForImport,
    /// `ImportKeyMaterial` (refused: atrest keys have origin `AWS_KMS`).
    ImportKeyMaterial,
    /// `DeleteImportedKeyMaterial` (refused: atrest keys have origin `AWS_KMS`).
    DeleteImportedKeyMaterial,
}

/// Which key states allow an operation on a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateRule {
    /// Any state (or the operation names no key).
    Any,
    /// Only `Enabled` (cryptographic operations and rotation).
    Enabled,
    /// `Enabled` or `Disabled`, not `PendingDeletion` (key administration).
    NotPendingDeletion,
    /// Only `PendingDeletion` (CancelKeyDeletion).
    PendingDeletion,
}

/// One row of the table: everything atrest knows of an operation.
struct Row {
    name: &'static str,
    read_only: bool,
    cross_account: bool,
    state: StateRule,
}

const fn row(name: &'static str, read_only: bool, cross_account: bool, state: StateRule) -> Row {
    Row {
        name,
        read_only,
        cross_account,
        state,
    }
}

/// Column values, so the table reads as words.
const READ: bool = true;
const WRITE: bool = false;
const ANY_ACCOUNT: bool = true;
const OWN_ACCOUNT: bool = false;

impl Operation {
    /// Every operation, in the order of the table.
    pub const ALL: [Operation; 32] = [
        Operation::CreateKey,
        Operation::DescribeKey,
        Operation::ListKeys,
        Operation::UpdateKeyDescription,
        Operation::EnableKey,
        Operation::DisableKey,
        Operation::ScheduleKeyDeletion,
        Operation::CancelKeyDeletion,
        Operation::ListAliases,
        Operation::CreateAlias,
        Operation::UpdateAlias,
        Operation::DeleteAlias,
        Operation::EnableKeyRotation,
        Operation::DisableKeyRotation,
        Operation::GetKeyRotationStatus,
        Operation::RotateKeyOnDemand,
        Operation::ListKeyRotations,
        Operation::GetKeyPolicy,
        Operation::PutKeyPolicy,
        Operation::GenerateDataKey,
        Operation::GenerateDataKeyWithoutPlaintext,
        Operation::Encrypt,
        Operation::Decrypt,
        Operation::ReEncrypt,
        Operation::TagResource,
        Operation::UntagResource,
        Operation::ListResourceTags,
        Operation::GenerateRandom,
        Operation::ListKeyPolicies,
        Operation::GetParametersForImport,
        Operation::ImportKeyMaterial,
        Operation::DeleteImportedKeyMaterial,
    ];

    /// The table. Cross-account use (a key ARN of another account) is AWS's list of
    /// operations that accept one; the state rules are AWS's key-state table for the
    /// three states atrest has.
    const fn row(self) -> Row {
        use StateRule::{Any, Enabled, NotPendingDeletion, PendingDeletion};
        match self {
            Operation::CreateKey => row("CreateKey", WRITE, OWN_ACCOUNT, Any),
            Operation::DescribeKey => row("DescribeKey", READ, ANY_ACCOUNT, Any),
            Operation::ListKeys => row("ListKeys", READ, OWN_ACCOUNT, Any),
            Operation::UpdateKeyDescription => row(
                "UpdateKeyDescription",
                WRITE,
                OWN_ACCOUNT,
                NotPendingDeletion,
            ),
            Operation::EnableKey => row("EnableKey", WRITE, OWN_ACCOUNT, NotPendingDeletion),
            Operation::DisableKey => row("DisableKey", WRITE, OWN_ACCOUNT, NotPendingDeletion),
            Operation::ScheduleKeyDeletion => row(
                "ScheduleKeyDeletion",
                WRITE,
                OWN_ACCOUNT,
                NotPendingDeletion,
            ),
            Operation::CancelKeyDeletion => {
                row("CancelKeyDeletion", WRITE, OWN_ACCOUNT, PendingDeletion)
            }
            Operation::ListAliases => row("ListAliases", READ, OWN_ACCOUNT, Any),
            Operation::CreateAlias => row("CreateAlias", WRITE, OWN_ACCOUNT, NotPendingDeletion),
            Operation::UpdateAlias => row("UpdateAlias", WRITE, OWN_ACCOUNT, NotPendingDeletion),
            Operation::DeleteAlias => row("DeleteAlias", WRITE, OWN_ACCOUNT, Any),
            Operation::EnableKeyRotation => row("EnableKeyRotation", WRITE, OWN_ACCOUNT, Enabled),
            Operation::DisableKeyRotation => row("DisableKeyRotation", WRITE, OWN_ACCOUNT, Enabled),
            Operation::GetKeyRotationStatus => row("GetKeyRotationStatus", READ, ANY_ACCOUNT, Any),
            Operation::RotateKeyOnDemand => row("RotateKeyOnDemand", WRITE, OWN_ACCOUNT, Enabled),
            Operation::ListKeyRotations => row("ListKeyRotations", READ, OWN_ACCOUNT, Any),
            Operation::GetKeyPolicy => row("GetKeyPolicy", READ, OWN_ACCOUNT, Any),
            Operation::PutKeyPolicy => row("PutKeyPolicy", WRITE, OWN_ACCOUNT, Any),
            Operation::GenerateDataKey => row("GenerateDataKey", READ, ANY_ACCOUNT, Enabled),
            Operation::GenerateDataKeyWithoutPlaintext => row(
                "GenerateDataKeyWithoutPlaintext",
                READ,
                ANY_ACCOUNT,
                Enabled,
            ),
            Operation::Encrypt => row("Encrypt", READ, ANY_ACCOUNT, Enabled),
            Operation::Decrypt => row("Decrypt", READ, ANY_ACCOUNT, Enabled),
            Operation::ReEncrypt => row("ReEncrypt", READ, ANY_ACCOUNT, Enabled),
            Operation::TagResource => row("TagResource", WRITE, OWN_ACCOUNT, NotPendingDeletion),
            Operation::UntagResource => {
                row("UntagResource", WRITE, OWN_ACCOUNT, NotPendingDeletion)
            }
            Operation::ListResourceTags => row("ListResourceTags", READ, OWN_ACCOUNT, Any),
            Operation::GenerateRandom => row("GenerateRandom", READ, OWN_ACCOUNT, Any),
            Operation::ListKeyPolicies => row("ListKeyPolicies", READ, OWN_ACCOUNT, Any),
            Operation::GetParametersForImport => {
                row("GetParametersForImport", WRITE, OWN_ACCOUNT, Any)
            }
            Operation::ImportKeyMaterial => row("ImportKeyMaterial", WRITE, OWN_ACCOUNT, Any),
            Operation::DeleteImportedKeyMaterial => {
                row("DeleteImportedKeyMaterial", WRITE, OWN_ACCOUNT, Any)
            }
        }
    }

    /// The AWS operation name (the part of `X-Amz-Target` after `TrentService.`, and
    /// the trail's `eventName`).
    pub const fn name(self) -> &'static str {
        self.row().name
    }

    /// The operation AWS calls `name`, if atrest serves it.
    pub fn from_name(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The `X-Amz-Target` header value of this operation (`TrentService.<Name>`).
    pub fn target(self) -> String {
        format!("{TARGET_PREFIX}{}", self.name())
    }

    /// Whether the call changes nothing (the trail's `readOnly`).
    pub const fn read_only(self) -> bool {
        self.row().read_only
    }

    /// Whether a caller may name another account's key (by its key ARN), as AWS
    /// allows for the cryptographic operations, DescribeKey and GetKeyRotationStatus.
    pub const fn cross_account(self) -> bool {
        self.row().cross_account
    }

    /// Which key states allow the operation.
    pub const fn state_rule(self) -> StateRule {
        self.row().state
    }

    /// The key-policy action (`kms:Decrypt`, ...). ReEncrypt checks
    /// `kms:ReEncryptFrom` and `kms:ReEncryptTo` instead.
    pub fn action(self) -> String {
        format!("kms:{}", self.name())
    }

    /// Whether a key in `state` allows the operation; the refusal AWS gives
    /// (DisabledException, KMSInvalidStateException) names the key `arn`.
    pub fn check_state(self, state: KeyState, arn: &str) -> Result<(), KmsError> {
        let disabled = || Err(KmsError::Disabled(format!("{arn} is disabled.")));
        let pending = || {
            Err(KmsError::InvalidState(format!(
                "{arn} is pending deletion."
            )))
        };
        match (self.state_rule(), state) {
            (StateRule::Any, _)
            | (StateRule::Enabled, KeyState::Enabled)
            | (StateRule::NotPendingDeletion, KeyState::Enabled | KeyState::Disabled)
            | (StateRule::PendingDeletion, KeyState::PendingDeletion) => Ok(()),
            (StateRule::Enabled, KeyState::Disabled) => disabled(),
            (StateRule::Enabled | StateRule::NotPendingDeletion, KeyState::PendingDeletion) => {
                pending()
            }
            (StateRule::PendingDeletion, KeyState::Enabled | KeyState::Disabled) => Err(
                KmsError::InvalidState(format!("{arn} is not pending deletion.")),
            ),
        }
    }
}

/// The key-material import calls, which atrest refuses for its `AWS_KMS` keys
/// ([`LocalKms::refuse_key_material_import`](super::LocalKms::refuse_key_material_import)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportOperation {
    /// `GetParametersForImport`.
    GetParametersForImport,
    /// `ImportKeyMaterial`.
    ImportKeyMaterial,
    /// `DeleteImportedKeyMaterial`.
    DeleteImportedKeyMaterial,
}

impl From<ImportOperation> for Operation {
    fn from(import: ImportOperation) -> Operation {
        match import {
            ImportOperation::GetParametersForImport => Operation::GetParametersForImport,
            ImportOperation::ImportKeyMaterial => Operation::ImportKeyMaterial,
            ImportOperation::DeleteImportedKeyMaterial => Operation::DeleteImportedKeyMaterial,
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        for op in Operation::ALL {
            assert_eq!(Operation::from_name(op.name()), Some(op));
            assert_eq!(format!("{op:?}"), op.name(), "the variant is the AWS name");
            assert_eq!(op.target(), format!("TrentService.{op}"));
        }
        for bad in ["", "TrentService.Encrypt", "encrypt", "Nope"] {
            assert_eq!(Operation::from_name(bad), None);
        }
    }

    #[test]
    fn state_rules_follow_aws_key_state_table() {
        use KeyState::{Disabled, Enabled, PendingDeletion};
        let allowed = |op: Operation, state| op.check_state(state, "arn").is_ok();
        for op in [
            Operation::Encrypt,
            Operation::Decrypt,
            Operation::RotateKeyOnDemand,
        ] {
            assert!(allowed(op, Enabled));
            assert!(matches!(
                op.check_state(Disabled, "k"),
                Err(KmsError::Disabled(m)) if m == "k is disabled."
            ));
            assert!(matches!(
                op.check_state(PendingDeletion, "k"),
                Err(KmsError::InvalidState(m)) if m == "k is pending deletion."
            ));
        }
        for op in [Operation::EnableKey, Operation::TagResource] {
            assert!(allowed(op, Enabled) && allowed(op, Disabled));
            assert!(!allowed(op, PendingDeletion));
        }
        assert!(allowed(Operation::CancelKeyDeletion, PendingDeletion));
        assert!(matches!(
            Operation::CancelKeyDeletion.check_state(Disabled, "k"),
            Err(KmsError::InvalidState(m)) if m == "k is not pending deletion."
        ));
        for state in [Enabled, Disabled, PendingDeletion] {
            assert!(allowed(Operation::DescribeKey, state));
        }
    }

    #[test]
    fn only_reads_and_cryptography_reach_other_accounts() {
        let cross: Vec<_> = Operation::ALL
            .into_iter()
            .filter(|op| op.cross_account())
            .map(Operation::name)
            .collect();
        assert_eq!(
            cross,
            [
                "DescribeKey",
                "GetKeyRotationStatus",
                "GenerateDataKey",
                "GenerateDataKeyWithoutPlaintext",
                "Encrypt",
                "Decrypt",
                "ReEncrypt"
            ]
        );
        assert!(Operation::ALL
            .into_iter()
            .filter(|op| op.cross_account())
            .all(Operation::read_only));
    }
}
