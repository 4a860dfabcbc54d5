//! Accounts (issue 16 item 1) at the key service: keys and aliases belong to the
//! account of the principal that made them; CreateKey, ListKeys, ListAliases,
//! CreateAlias and alias resolution act in the caller's account; another account's
//! key is reachable only by its key ARN, only for the operations AWS allows across
//! accounts, and only where its key policy allows the caller.

mod kms_support;

use crypto_core::kms::{
    CreateKeyRequest, DataKeySpec, GenerateDataKeyRequest, KeyService, ListRequest,
};
use kms_support::{ctx, decrypt_req, gdk, outcome, Lab};

const EVE: &str = "arn:aws:iam::111111111111:user/Eve";

fn open_policy(owner: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": owner}, "Action": "kms:*", "Resource": "*"},
            {"Effect": "Allow", "Principal": "*",
             "Action": ["kms:GenerateDataKey*", "kms:Encrypt"], "Resource": "*"},
        ]
    })
    .to_string()
}

/// The attack of the issue: Eve registers `alias/payments` first, pointing at her own
/// key whose policy lets anyone GenerateDataKey; a user of 000000000000 then wraps
/// a data key under `alias/payments`. It must be the home account's key, not Eve's.
#[test]
fn another_accounts_alias_cannot_capture_data_keys() {
    let lab = Lab::new();
    let eve = lab.as_user(EVE);
    let trap = eve
        .create_key(&CreateKeyRequest {
            policy: Some(open_policy(EVE)),
            ..CreateKeyRequest::default()
        })
        .unwrap();
    assert!(trap.arn.starts_with("arn:aws:kms:local:111111111111:key/"));
    assert_eq!(trap.aws_account_id, "111111111111");
    eve.create_alias("alias/payments", &trap.key_id).unwrap();

    // The home account does not see Eve's alias: it is free to make its own.
    assert_eq!(
        outcome(lab.kms.generate_data_key(&gdk("alias/payments"))),
        "NotFoundException"
    );
    let mine = lab.key();
    lab.kms.create_alias("alias/payments", &mine).unwrap();
    let dk = lab.kms.generate_data_key(&gdk("alias/payments")).unwrap();
    assert_eq!(dk.key_id, lab.kms.key_arn(&mine.parse().unwrap()));
    let stolen = eve.decrypt(&decrypt_req(
        &dk.ciphertext_blob,
        &gdk("x").encryption_context,
    ));
    assert_eq!(outcome(stolen), "AccessDeniedException");

    // Each account lists its own keys and aliases only.
    let keys = |kms: &crypto_core::kms::LocalKms| -> Vec<String> {
        let page = kms.list_keys(&ListRequest::default()).unwrap();
        page.items.into_iter().map(|k| k.key_arn).collect()
    };
    assert_eq!(keys(&eve), std::slice::from_ref(&trap.arn));
    assert!(!keys(&lab.kms).contains(&trap.arn));
    let aliases = eve
        .list_aliases(None, &ListRequest::default())
        .unwrap()
        .items;
    assert_eq!(aliases.len(), 1);
    assert_eq!(
        aliases[0].alias_arn,
        "arn:aws:kms:local:111111111111:alias/payments"
    );
    let aliases = lab
        .kms
        .list_aliases(None, &ListRequest::default())
        .unwrap()
        .items;
    assert_eq!(aliases.len(), 1);
    assert_eq!(aliases[0].target_key_id, mine);
}

#[test]
fn another_accounts_key_is_reached_only_by_key_arn_and_only_as_its_policy_allows() {
    let lab = Lab::new();
    let eve = lab.as_user(EVE);
    let mine = lab.key();
    let arn = lab.kms.key_arn(&mine.parse().unwrap());
    lab.kms.create_alias("alias/home", &mine).unwrap();

    // By key id, by alias, by alias ARN, or by a key ARN that names her own account
    // with the home key's id: not found.
    for name in [
        mine.clone(),
        "alias/home".to_owned(),
        "arn:aws:kms:local:000000000000:alias/home".to_owned(),
        format!("arn:aws:kms:local:111111111111:key/{mine}"),
    ] {
        assert_eq!(
            outcome(eve.describe_key(&name)),
            "NotFoundException",
            "{name}"
        );
    }
    // By key ARN: found, but the default policy does not let her in.
    assert_eq!(outcome(eve.describe_key(&arn)), "AccessDeniedException");
    assert_eq!(
        outcome(eve.generate_data_key(&gdk(&arn))),
        "AccessDeniedException"
    );
    // Administration never crosses accounts, whatever the policy says.
    assert_eq!(outcome(eve.disable_key(&arn)), "NotFoundException");
    assert_eq!(
        outcome(eve.schedule_key_deletion(&arn, Some(7))),
        "NotFoundException"
    );
    assert_eq!(
        outcome(eve.put_key_policy(&arn, "default", &open_policy(EVE), true)),
        "NotFoundException"
    );
    assert_eq!(
        outcome(eve.create_alias("alias/mine", &arn)),
        "NotFoundException"
    );
    assert_eq!(outcome(eve.rotate_key_on_demand(&arn)), "NotFoundException");

    // Where the key policy names her, she may use the key by its ARN.
    let shared = lab
        .kms
        .create_key(&CreateKeyRequest {
            policy: Some(
                serde_json::json!({
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Principal": {"AWS": kms_support::ROOT},
                         "Action": "kms:*", "Resource": "*"},
                        {"Effect": "Allow", "Principal": {"AWS": EVE},
                         "Action": ["kms:GenerateDataKey", "kms:Decrypt", "kms:DescribeKey"],
                         "Resource": "*"},
                    ]
                })
                .to_string(),
            ),
            ..CreateKeyRequest::default()
        })
        .unwrap();
    let dk = eve
        .generate_data_key(&GenerateDataKeyRequest {
            key_id: shared.arn.clone(),
            spec: DataKeySpec::Aes256,
            encryption_context: ctx(&[]),
        })
        .unwrap();
    assert_eq!(dk.key_id, shared.arn);
    let back = eve
        .decrypt(&decrypt_req(&dk.ciphertext_blob, &ctx(&[])))
        .unwrap();
    assert_eq!(back.plaintext.expose(), dk.plaintext.expose());
    assert_eq!(
        eve.describe_key(&shared.arn).unwrap().aws_account_id,
        "000000000000"
    );
    assert_eq!(
        outcome(eve.describe_key(&shared.key_id)),
        "NotFoundException"
    );
    assert_eq!(outcome(eve.disable_key(&shared.arn)), "NotFoundException");
}
