//! Every key state x every key operation gives AWS KMS's answer.
//!
//! Expected answers transcribe the table "Key states of AWS KMS keys" of the AWS KMS
//! Developer Guide (key-state.md) for symmetric keys with AWS_KMS origin; a deleted
//! key is gone, so every call naming it is NotFoundException.

mod kms_support;

use crypto_core::kms::{KeyService, KeyState, KmsError, ListRequest, ReEncryptRequest};
use kms_support::{ctx, decrypt_req, gdk, outcome, Lab};
use time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    Enabled,
    Disabled,
    PendingDeletion,
    Deleted,
}

const SUBJECTS: [Subject; 4] = [
    Subject::Enabled,
    Subject::Disabled,
    Subject::PendingDeletion,
    Subject::Deleted,
];

/// A key in the state under test, plus an enabled bystander key, an alias on each,
/// and blobs made under each while they were enabled.
struct Fixture {
    lab: Lab,
    key: String,
    other: String,
    blob: Vec<u8>,
    other_blob: Vec<u8>,
}

fn fixture(subject: Subject) -> Fixture {
    let lab = Lab::new();
    let key = lab.key();
    let other = lab.key();
    lab.kms.create_alias("alias/subject", &key).unwrap();
    lab.kms.create_alias("alias/other", &other).unwrap();
    let blob = lab
        .kms
        .encrypt(&key, b"payload", &ctx(&[]))
        .unwrap()
        .ciphertext_blob;
    let other_blob = lab
        .kms
        .encrypt(&other, b"payload", &ctx(&[]))
        .unwrap()
        .ciphertext_blob;
    match subject {
        Subject::Enabled => {}
        Subject::Disabled => lab.kms.disable_key(&key).unwrap(),
        Subject::PendingDeletion => {
            lab.kms.schedule_key_deletion(&key, Some(7)).unwrap();
        }
        Subject::Deleted => {
            lab.kms.schedule_key_deletion(&key, Some(7)).unwrap();
            lab.clock.advance(Duration::days(7));
        }
    }
    let expected_state = match subject {
        Subject::Enabled => Some(KeyState::Enabled),
        Subject::Disabled => Some(KeyState::Disabled),
        Subject::PendingDeletion => Some(KeyState::PendingDeletion),
        Subject::Deleted => None,
    };
    match (lab.kms.describe_key(&key), expected_state) {
        (Ok(meta), Some(state)) => assert_eq!(meta.key_state, state),
        (Err(KmsError::NotFound(_)), None) => {}
        (other, _) => panic!("fixture for {subject:?} is in the wrong state: {other:?}"),
    }
    Fixture {
        lab,
        key,
        other,
        blob,
        other_blob,
    }
}

type Operation = fn(&Fixture) -> Result<(), KmsError>;

/// (operation, expected answer for Enabled, Disabled, PendingDeletion, Deleted).
const TABLE: &[(&str, Operation, [&str; 4])] = {
    const OK: &str = "ok";
    const DIS: &str = "DisabledException";
    const INV: &str = "KMSInvalidStateException";
    const NF: &str = "NotFoundException";
    &[
        (
            "DescribeKey",
            |f| f.lab.kms.describe_key(&f.key).map(drop),
            [OK, OK, OK, NF],
        ),
        (
            "DescribeKey by alias",
            |f| f.lab.kms.describe_key("alias/subject").map(drop),
            [OK, OK, OK, NF],
        ),
        (
            "GenerateDataKey",
            |f| f.lab.kms.generate_data_key(&gdk(&f.key)).map(drop),
            [OK, DIS, INV, NF],
        ),
        (
            "GenerateDataKeyWithoutPlaintext",
            |f| {
                f.lab
                    .kms
                    .generate_data_key_without_plaintext(&gdk(&f.key))
                    .map(drop)
            },
            [OK, DIS, INV, NF],
        ),
        (
            "Encrypt",
            |f| f.lab.kms.encrypt(&f.key, b"x", &ctx(&[])).map(drop),
            [OK, DIS, INV, NF],
        ),
        (
            "Decrypt",
            |f| {
                f.lab
                    .kms
                    .decrypt(&decrypt_req(&f.blob, &ctx(&[])))
                    .map(drop)
            },
            [OK, DIS, INV, NF],
        ),
        (
            "ReEncrypt from the key",
            |f| {
                f.lab
                    .kms
                    .re_encrypt(&ReEncryptRequest {
                        ciphertext_blob: f.blob.clone(),
                        source_encryption_context: ctx(&[]),
                        source_key_id: None,
                        destination_key_id: f.other.clone(),
                        destination_encryption_context: ctx(&[]),
                    })
                    .map(drop)
            },
            [OK, DIS, INV, NF],
        ),
        (
            "ReEncrypt to the key",
            |f| {
                f.lab
                    .kms
                    .re_encrypt(&ReEncryptRequest {
                        ciphertext_blob: f.other_blob.clone(),
                        source_encryption_context: ctx(&[]),
                        source_key_id: None,
                        destination_key_id: f.key.clone(),
                        destination_encryption_context: ctx(&[]),
                    })
                    .map(drop)
            },
            [OK, DIS, INV, NF],
        ),
        (
            "EnableKey",
            |f| f.lab.kms.enable_key(&f.key),
            [OK, OK, INV, NF],
        ),
        (
            "DisableKey",
            |f| f.lab.kms.disable_key(&f.key),
            [OK, OK, INV, NF],
        ),
        (
            "ScheduleKeyDeletion",
            |f| f.lab.kms.schedule_key_deletion(&f.key, None).map(drop),
            [OK, OK, INV, NF],
        ),
        (
            "CancelKeyDeletion",
            |f| f.lab.kms.cancel_key_deletion(&f.key).map(drop),
            [INV, INV, OK, NF],
        ),
        (
            "CreateAlias",
            |f| f.lab.kms.create_alias("alias/new", &f.key),
            [OK, OK, INV, NF],
        ),
        (
            "UpdateAlias to the key",
            |f| f.lab.kms.update_alias("alias/other", &f.key),
            [OK, OK, INV, NF],
        ),
        (
            "UpdateAlias away from the key",
            |f| f.lab.kms.update_alias("alias/subject", &f.other),
            [OK, OK, OK, NF],
        ),
        (
            "DeleteAlias",
            |f| f.lab.kms.delete_alias("alias/subject"),
            [OK, OK, OK, NF],
        ),
        (
            "ListAliases",
            |f| {
                f.lab
                    .kms
                    .list_aliases(Some(&f.key), &ListRequest::default())
                    .map(drop)
            },
            [OK, OK, OK, NF],
        ),
        (
            "UpdateKeyDescription",
            |f| f.lab.kms.update_key_description(&f.key, "d"),
            [OK, OK, INV, NF],
        ),
        (
            "EnableKeyRotation",
            |f| f.lab.kms.enable_key_rotation(&f.key, None),
            [OK, DIS, INV, NF],
        ),
        (
            "DisableKeyRotation",
            |f| f.lab.kms.disable_key_rotation(&f.key),
            [OK, DIS, INV, NF],
        ),
        (
            "GetKeyRotationStatus",
            |f| f.lab.kms.get_key_rotation_status(&f.key).map(drop),
            [OK, OK, OK, NF],
        ),
        (
            "RotateKeyOnDemand",
            |f| f.lab.kms.rotate_key_on_demand(&f.key).map(drop),
            [OK, DIS, INV, NF],
        ),
        (
            "ListKeyRotations",
            |f| f.lab.kms.list_key_rotations(&f.key).map(drop),
            [OK, OK, OK, NF],
        ),
        (
            "GetKeyPolicy",
            |f| f.lab.kms.get_key_policy(&f.key, "default").map(drop),
            [OK, OK, OK, NF],
        ),
        (
            "PutKeyPolicy",
            |f| {
                let policy = f.lab.kms.get_key_policy(&f.other, "default")?;
                f.lab.kms.put_key_policy(&f.key, "default", &policy, false)
            },
            [OK, OK, OK, NF],
        ),
    ]
};

#[test]
fn every_state_and_operation_answers_as_aws() {
    let mut mismatches = Vec::new();
    for (column, subject) in SUBJECTS.iter().enumerate() {
        for (name, op, expected) in TABLE {
            let f = fixture(*subject);
            let got = outcome(op(&f));
            if got != expected[column] {
                mismatches.push(format!(
                    "{name} on {subject:?}: expected {}, got {got}",
                    expected[column]
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn error_messages_name_the_key_and_state_as_aws() {
    let f = fixture(Subject::Disabled);
    let arn = f.lab.kms.describe_key(&f.key).unwrap().arn;
    let err = f.lab.kms.generate_data_key(&gdk(&f.key)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("DisabledException: {arn} is disabled.")
    );

    let f = fixture(Subject::PendingDeletion);
    let arn = f.lab.kms.describe_key(&f.key).unwrap().arn;
    let err = f.lab.kms.encrypt(&f.key, b"x", &ctx(&[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("KMSInvalidStateException: {arn} is pending deletion.")
    );

    let f = fixture(Subject::Enabled);
    let arn = f.lab.kms.describe_key(&f.key).unwrap().arn;
    let err = f.lab.kms.cancel_key_deletion(&f.key).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("KMSInvalidStateException: {arn} is not pending deletion.")
    );
}

#[test]
fn transitions_follow_aws() {
    let f = fixture(Subject::Enabled);
    let kms = &f.lab.kms;
    kms.disable_key(&f.key).unwrap();
    kms.schedule_key_deletion(&f.key, None).unwrap();
    // Cancelling deletion leaves the key Disabled, not Enabled.
    kms.cancel_key_deletion(&f.key).unwrap();
    let meta = kms.describe_key(&f.key).unwrap();
    assert_eq!(meta.key_state, KeyState::Disabled);
    assert!(!meta.enabled);
    assert_eq!(meta.deletion_date, None);
    kms.enable_key(&f.key).unwrap();
    assert!(kms.describe_key(&f.key).unwrap().enabled);
    // Enabled keys also go to PendingDeletion, and come back Disabled.
    kms.schedule_key_deletion(&f.key, Some(30)).unwrap();
    kms.cancel_key_deletion(&f.key).unwrap();
    assert_eq!(
        kms.describe_key(&f.key).unwrap().key_state,
        KeyState::Disabled
    );
}
