//! TagResource, UntagResource and ListResourceTags on LocalKms: AWS's limits, the key
//! states that allow them, policy checks, persistence across reopen, and the trail.

use crypto_core::kms::{
    validate_tags, CreateKeyRequest, KeyService, KmsError, LocalKms, LocalKmsConfig, Tag,
};
use crypto_core::trail::{LookupFilter, Trail};

fn tag(key: &str, value: &str) -> Tag {
    Tag {
        tag_key: key.into(),
        tag_value: value.into(),
    }
}

#[test]
fn tags_are_added_replaced_removed_listed_and_persisted() {
    let home = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
    let key = kms.create_key(&CreateKeyRequest::default()).unwrap();
    assert!(kms.list_resource_tags(&key.key_id).unwrap().is_empty());
    kms.tag_resource(&key.key_id, &[tag("team", "storage"), tag("env", "lab")])
        .unwrap();
    kms.tag_resource(&key.arn, &[tag("env", "prod")]).unwrap();
    assert_eq!(
        kms.list_resource_tags(&key.key_id).unwrap(),
        [tag("env", "prod"), tag("team", "storage")]
    );
    kms.untag_resource(&key.key_id, &["team".into(), "absent".into()])
        .unwrap();
    let reopened = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
    assert_eq!(
        reopened.list_resource_tags(&key.key_id).unwrap(),
        [tag("env", "prod")]
    );

    let trail = Trail::open(&home.path().join("trail"), "local", "000000000000").unwrap();
    for name in ["TagResource", "UntagResource", "ListResourceTags"] {
        let found = trail
            .lookup(&LookupFilter {
                event_name: Some(name.into()),
                ..LookupFilter::default()
            })
            .unwrap();
        assert!(!found.is_empty(), "no {name} in the trail");
    }
}

#[test]
fn aws_limits_and_key_states_apply() {
    assert!(validate_tags(&[tag("k", "")]).is_ok());
    for bad in [
        vec![tag("", "v")],
        vec![tag(&"k".repeat(129), "v")],
        vec![tag("k", &"v".repeat(257))],
    ] {
        assert!(
            matches!(validate_tags(&bad), Err(KmsError::Validation(_))),
            "accepted {bad:?}"
        );
    }
    // AWS's TagException: the reserved prefix in any case, a tag key twice, more than
    // 50 tags in one request.
    let fifty_one: Vec<Tag> = (0..51).map(|i| tag(&format!("k{i}"), "v")).collect();
    for bad in [
        vec![tag("aws:reserved", "v")],
        vec![tag("AWS:reserved", "v")],
        vec![tag("Aws:x", "v")],
        vec![tag("dup", "1"), tag("other", "2"), tag("dup", "3")],
        fifty_one,
    ] {
        let err = validate_tags(&bad).unwrap_err();
        assert!(matches!(err, KmsError::Tag(_)), "{bad:?}: {err}");
        assert_eq!(err.aws_name(), "TagException");
    }

    let home = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
    let key = kms.create_key(&CreateKeyRequest::default()).unwrap();
    let fifty: Vec<Tag> = (0..50).map(|i| tag(&format!("k{i}"), "v")).collect();
    kms.tag_resource(&key.key_id, &fifty).unwrap();
    assert!(matches!(
        kms.tag_resource(&key.key_id, &[tag("one-more", "v")]),
        Err(KmsError::LimitExceeded(_))
    ));
    assert_eq!(kms.list_resource_tags(&key.key_id).unwrap().len(), 50);

    kms.disable_key(&key.key_id).unwrap();
    kms.untag_resource(&key.key_id, &["k0".into()]).unwrap();
    kms.schedule_key_deletion(&key.key_id, Some(7)).unwrap();
    assert!(matches!(
        kms.tag_resource(&key.key_id, &[tag("x", "y")]),
        Err(KmsError::InvalidState(_))
    ));
    assert_eq!(kms.list_resource_tags(&key.key_id).unwrap().len(), 49);
    assert!(matches!(
        kms.list_resource_tags("alias/none"),
        Err(KmsError::NotFound(_))
    ));
}

#[test]
fn tagging_needs_the_policy_action() {
    let home = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
    let key = kms.create_key(&CreateKeyRequest::default()).unwrap();
    let stranger = kms
        .as_principal("arn:aws:iam::000000000000:user/stranger")
        .unwrap();
    assert!(matches!(
        stranger.tag_resource(&key.key_id, &[tag("k", "v")]),
        Err(KmsError::AccessDenied(_))
    ));
    assert!(matches!(
        stranger.list_resource_tags(&key.key_id),
        Err(KmsError::AccessDenied(_))
    ));
}
