//! Key policies through LocalKms: LAB step 1's separation of key administrators from
//! key users, explicit deny, Get/PutKeyPolicy and the lockout safety check.

mod kms_support;

use crypto_core::kms::{CreateKeyRequest, KeyService, KeyState, KmsError, ReEncryptRequest};
use kms_support::{ctx, decrypt_req, gdk, outcome, Lab, ROOT};

const ADMIN: &str = "arn:aws:iam::000000000000:user/KeyAdmin";
const USER: &str = "arn:aws:iam::000000000000:user/KeyUser";
const STRANGER: &str = "arn:aws:iam::000000000000:user/Stranger";

/// The policy of LAB step 1: the creator (root) keeps full control, administrators
/// manage the key, users use it.
fn lab_policy() -> String {
    format!(
        r#"{{
  "Version": "2012-10-17",
  "Id": "key-consolepolicy-3",
  "Statement": [
    {{"Sid": "Enable IAM User Permissions", "Effect": "Allow",
      "Principal": {{"AWS": "{ROOT}"}}, "Action": "kms:*", "Resource": "*"}},
    {{"Sid": "Allow access for Key Administrators", "Effect": "Allow",
      "Principal": {{"AWS": "{ADMIN}"}},
      "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*",
                 "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*",
                 "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
                 "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand"],
      "Resource": "*"}},
    {{"Sid": "Allow use of the key", "Effect": "Allow",
      "Principal": {{"AWS": ["{USER}"]}},
      "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                 "kms:DescribeKey"],
      "Resource": "*"}}
  ]
}}"#
    )
}

fn lab_key(lab: &Lab) -> String {
    lab.kms
        .create_key(&CreateKeyRequest {
            policy: Some(lab_policy()),
            ..Default::default()
        })
        .unwrap()
        .key_id
}

#[test]
fn an_administrator_cannot_decrypt_and_a_user_cannot_disable() {
    let lab = Lab::new();
    let key = lab_key(&lab);
    let admin = lab.as_user(ADMIN);
    let user = lab.as_user(USER);

    let dk = user.generate_data_key(&gdk(&key)).unwrap();
    let context = gdk(&key).encryption_context;
    assert_eq!(
        user.decrypt(&decrypt_req(&dk.ciphertext_blob, &context))
            .unwrap()
            .plaintext
            .expose(),
        dk.plaintext.expose()
    );

    let err = admin
        .decrypt(&decrypt_req(&dk.ciphertext_blob, &context))
        .unwrap_err();
    assert!(matches!(err, KmsError::AccessDenied(_)), "{err}");
    assert!(
        err.to_string().contains(ADMIN) && err.to_string().contains("kms:Decrypt"),
        "{err}"
    );
    assert_eq!(
        outcome(admin.generate_data_key(&gdk(&key))),
        "AccessDeniedException"
    );
    assert_eq!(
        outcome(admin.encrypt(&key, b"x", &ctx(&[]))),
        "AccessDeniedException"
    );

    let err = user.disable_key(&key).unwrap_err();
    assert!(matches!(err, KmsError::AccessDenied(_)), "{err}");
    assert_eq!(
        outcome(user.schedule_key_deletion(&key, None)),
        "AccessDeniedException"
    );
    assert_eq!(
        outcome(user.put_key_policy(&key, "default", &lab_policy(), false)),
        "AccessDeniedException"
    );
    assert_eq!(
        outcome(user.get_key_policy(&key, "default")),
        "AccessDeniedException"
    );

    admin.disable_key(&key).unwrap();
    assert_eq!(
        outcome(user.generate_data_key(&gdk(&key))),
        "DisabledException"
    );
    admin.enable_key(&key).unwrap();
    admin.enable_key_rotation(&key, None).unwrap();
    admin.rotate_key_on_demand(&key).unwrap();
    assert_eq!(
        admin.describe_key(&key).unwrap().key_state,
        KeyState::Enabled
    );
    assert_eq!(
        user.describe_key(&key).unwrap().key_state,
        KeyState::Enabled
    );

    let stranger = lab.as_user(STRANGER);
    for result in [
        outcome(stranger.describe_key(&key)),
        outcome(stranger.generate_data_key(&gdk(&key))),
        outcome(stranger.disable_key(&key)),
        outcome(stranger.decrypt(&decrypt_req(&dk.ciphertext_blob, &context))),
    ] {
        assert_eq!(result, "AccessDeniedException");
    }
}

#[test]
fn access_is_checked_before_state_and_not_for_missing_keys() {
    let lab = Lab::new();
    let key = lab_key(&lab);
    lab.kms.disable_key(&key).unwrap();
    // A caller without permission learns nothing about the state.
    assert_eq!(
        outcome(lab.as_user(ADMIN).generate_data_key(&gdk(&key))),
        "AccessDeniedException"
    );
    assert_eq!(
        outcome(lab.as_user(USER).generate_data_key(&gdk(&key))),
        "DisabledException"
    );
    assert_eq!(
        outcome(
            lab.as_user(USER)
                .describe_key("0b0e2c8a-5a36-4f51-8f0a-2a8f9a7b6c5d")
        ),
        "NotFoundException"
    );
}

#[test]
fn explicit_deny_overrides_allow() {
    let lab = Lab::new();
    let policy = format!(
        r#"{{"Version": "2012-10-17", "Statement": [
            {{"Effect": "Allow", "Principal": {{"AWS": ["{ROOT}", "{USER}"]}}, "Action": "kms:*", "Resource": "*"}},
            {{"Effect": "Deny", "Principal": {{"AWS": "{USER}"}}, "Action": ["kms:ReEncryptFrom", "kms:Decrypt"], "Resource": "*"}}
        ]}}"#
    );
    let key = lab
        .kms
        .create_key(&CreateKeyRequest {
            policy: Some(policy),
            ..Default::default()
        })
        .unwrap()
        .key_id;
    let other = lab.key();
    let user = lab.as_user(USER);
    let blob = user.encrypt(&key, b"x", &ctx(&[])).unwrap().ciphertext_blob;
    let err = user.decrypt(&decrypt_req(&blob, &ctx(&[]))).unwrap_err();
    assert!(err.to_string().contains("explicit deny"), "{err}");
    // ReEncrypt needs kms:ReEncryptFrom on the source: denied too.
    let err = lab
        .kms
        .as_principal(USER)
        .unwrap()
        .re_encrypt(&ReEncryptRequest {
            ciphertext_blob: blob.clone(),
            source_encryption_context: ctx(&[]),
            source_key_id: None,
            destination_key_id: other,
            destination_encryption_context: ctx(&[]),
        })
        .unwrap_err();
    assert!(matches!(err, KmsError::AccessDenied(_)), "{err}");
    lab.kms.decrypt(&decrypt_req(&blob, &ctx(&[]))).unwrap();
}

#[test]
fn the_default_policy_gives_the_creator_everything_and_nobody_else_anything() {
    let lab = Lab::new();
    let creator = lab.as_user(ADMIN);
    let key = creator
        .create_key(&CreateKeyRequest::default())
        .unwrap()
        .key_id;
    let policy: serde_json::Value =
        serde_json::from_str(&creator.get_key_policy(&key, "default").unwrap()).unwrap();
    assert_eq!(policy["Statement"][0]["Action"], "kms:*");
    assert_eq!(
        policy["Statement"][0]["Principal"]["AWS"],
        serde_json::json!([ROOT, ADMIN])
    );
    creator.generate_data_key(&gdk(&key)).unwrap();
    creator.disable_key(&key).unwrap();
    creator.enable_key(&key).unwrap();
    lab.kms.disable_key(&key).unwrap();
    assert_eq!(
        outcome(lab.as_user(USER).enable_key(&key)),
        "AccessDeniedException"
    );
}

#[test]
fn put_key_policy_replaces_the_policy_and_guards_against_lockout() {
    let lab = Lab::new();
    let key = lab.key();
    lab.kms
        .put_key_policy(&key, "default", &lab_policy(), false)
        .unwrap();
    assert_eq!(
        lab.kms.get_key_policy(&key, "default").unwrap(),
        lab_policy()
    );
    lab.as_user(USER).generate_data_key(&gdk(&key)).unwrap();

    let user_only = format!(
        r#"{{"Statement": {{"Effect": "Allow", "Principal": {{"AWS": "{USER}"}}, "Action": "kms:Decrypt", "Resource": "*"}}}}"#
    );
    let err = lab
        .kms
        .put_key_policy(&key, "default", &user_only, false)
        .unwrap_err();
    assert!(matches!(err, KmsError::MalformedPolicyDocument(_)), "{err}");
    let err = lab
        .kms
        .create_key(&CreateKeyRequest {
            policy: Some(user_only.clone()),
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, KmsError::MalformedPolicyDocument(_)), "{err}");
    // With the bypass, the caller locks itself out, as AWS allows.
    lab.kms
        .put_key_policy(&key, "default", &user_only, true)
        .unwrap();
    assert_eq!(
        outcome(lab.kms.get_key_policy(&key, "default")),
        "AccessDeniedException"
    );
    assert_eq!(outcome(lab.kms.describe_key(&key)), "AccessDeniedException");

    for bad in ["not json", "{}", r#"{"Statement": {"Effect": "Allow"}}"#] {
        assert_eq!(
            outcome(lab.kms.put_key_policy(&lab.key(), "default", bad, false)),
            "MalformedPolicyDocumentException"
        );
    }
    assert_eq!(
        outcome(lab.kms.get_key_policy(&lab.key(), "other")),
        "NotFoundException"
    );
}
