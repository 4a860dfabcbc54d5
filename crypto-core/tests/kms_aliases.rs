//! Alias rules as AWS: `alias/` prefix, `alias/aws/` reserved, one key per alias,
//! many aliases per key, aliases usable wherever a key is named, and paging.

mod kms_support;

use crypto_core::kms::{KeyService, ListRequest};
use kms_support::{ctx, decrypt_req, gdk, outcome, Lab};

#[test]
fn alias_names_follow_aws_rules() {
    let lab = Lab::new();
    let key = lab.key();
    for (name, expected) in [
        ("alias/MyKMSKey", "ok"),
        ("alias/team/app_1-x", "ok"),
        ("MyKMSKey", "ValidationException"),
        ("alias/", "InvalidAliasNameException"),
        ("alias/has space", "InvalidAliasNameException"),
        ("alias/aws/ebs", "NotAuthorizedException"),
        ("", "ValidationException"),
    ] {
        assert_eq!(
            outcome(lab.kms.create_alias(name, &key)),
            expected,
            "{name}"
        );
    }
    let long = format!("alias/{}", "a".repeat(251));
    assert_eq!(
        outcome(lab.kms.create_alias(&long, &key)),
        "ValidationException"
    );
    assert_eq!(outcome(lab.kms.create_alias(&long[..256], &key)), "ok");
}

#[test]
fn one_key_per_alias_many_aliases_per_key() {
    let lab = Lab::new();
    let a = lab.key();
    let b = lab.key();
    lab.kms.create_alias("alias/one", &a).unwrap();
    lab.kms.create_alias("alias/two", &a).unwrap();
    assert_eq!(
        outcome(lab.kms.create_alias("alias/one", &b)),
        "AlreadyExistsException"
    );
    assert_eq!(
        outcome(lab.kms.create_alias("alias/three", "alias/one")),
        "ValidationException"
    );
    assert_eq!(
        outcome(
            lab.kms
                .create_alias("alias/three", "0b0e2c8a-5a36-4f51-8f0a-2a8f9a7b6c5d")
        ),
        "NotFoundException"
    );

    let of_a = lab
        .kms
        .list_aliases(Some(&a), &ListRequest::default())
        .unwrap();
    let names: Vec<_> = of_a.items.iter().map(|x| x.alias_name.as_str()).collect();
    assert_eq!(names, ["alias/one", "alias/two"]);
    assert_eq!(of_a.items[0].target_key_id, a);
    assert_eq!(
        of_a.items[0].alias_arn,
        "arn:aws:kms:local:000000000000:alias/one"
    );

    lab.kms.update_alias("alias/two", &b).unwrap();
    assert_eq!(lab.kms.describe_key("alias/two").unwrap().key_id, b);
    assert_eq!(
        lab.kms
            .describe_key("arn:aws:kms:local:000000000000:alias/two")
            .unwrap()
            .key_id,
        b
    );
    assert_eq!(
        outcome(lab.kms.update_alias("alias/missing", &b)),
        "NotFoundException"
    );

    lab.kms.delete_alias("alias/one").unwrap();
    assert_eq!(
        outcome(lab.kms.describe_key("alias/one")),
        "NotFoundException"
    );
    assert_eq!(
        outcome(lab.kms.delete_alias("alias/one")),
        "NotFoundException"
    );
    assert_eq!(lab.kms.describe_key(&a).unwrap().key_id, a);
}

#[test]
fn aliases_name_keys_in_every_operation() {
    let lab = Lab::new();
    let key = lab.key();
    lab.kms.create_alias("alias/MyKMSKey", &key).unwrap();
    let dk = lab.kms.generate_data_key(&gdk("alias/MyKMSKey")).unwrap();
    assert!(dk.key_id.ends_with(&key));
    let context = gdk(&key).encryption_context;
    lab.kms
        .decrypt(&decrypt_req(&dk.ciphertext_blob, &context))
        .unwrap();
    lab.kms.disable_key("alias/MyKMSKey").unwrap();
    assert_eq!(
        outcome(lab.kms.encrypt("alias/MyKMSKey", b"x", &ctx(&[]))),
        "DisabledException"
    );
    lab.kms
        .enable_key("arn:aws:kms:local:000000000000:alias/MyKMSKey")
        .unwrap();
    lab.kms.encrypt("alias/MyKMSKey", b"x", &ctx(&[])).unwrap();
}

#[test]
fn listings_page_with_markers() {
    let lab = Lab::new();
    let key = lab.key();
    for i in 0..5 {
        lab.kms.create_alias(&format!("alias/a{i}"), &key).unwrap();
        lab.key();
    }
    let mut names = Vec::new();
    let mut marker = None;
    loop {
        let page = lab
            .kms
            .list_aliases(
                None,
                &ListRequest {
                    limit: Some(2),
                    marker: marker.clone(),
                },
            )
            .unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.into_iter().map(|a| a.alias_name));
        match page.next_marker {
            Some(next) => marker = Some(next),
            None => break,
        }
    }
    assert_eq!(
        names,
        ["alias/a0", "alias/a1", "alias/a2", "alias/a3", "alias/a4"]
    );

    let all = lab.kms.list_keys(&ListRequest::default()).unwrap();
    assert_eq!(all.items.len(), 6);
    assert!(!all.truncated());
    let first = lab
        .kms
        .list_keys(&ListRequest {
            limit: Some(4),
            marker: None,
        })
        .unwrap();
    let rest = lab
        .kms
        .list_keys(&ListRequest {
            limit: Some(4),
            marker: first.next_marker.clone(),
        })
        .unwrap();
    assert_eq!(first.items.len() + rest.items.len(), 6);
    assert_eq!(rest.next_marker, None);
    assert_eq!(
        outcome(lab.kms.list_keys(&ListRequest {
            limit: Some(0),
            marker: None
        })),
        "ValidationException"
    );
    assert_eq!(
        outcome(lab.kms.list_keys(&ListRequest {
            limit: Some(1001),
            marker: None
        })),
        "ValidationException"
    );
    assert_eq!(
        outcome(lab.kms.list_keys(&ListRequest {
            limit: None,
            marker: Some("bogus".into())
        })),
        "InvalidMarkerException"
    );
}
