//! S3 Bucket Keys against the real key service: far fewer key-service calls (counted
//! in the trail), the bucket ARN as the context, the cache scoped to one principal and
//! dropped by any key-store change (fail closed), rotation and replacement keeping old
//! objects readable, per-PUT overrides, and tampering detected.

mod support;

use std::fs;

use crypto_core::kms::{CreateKeyRequest, DecryptRequest, KeyService, KmsError, LocalKms};
use crypto_core::trail::{LookupFilter, Trail};
use objstore::format::ObjectHeader;
use objstore::{BucketEncryption, CacheScope, ObjectStore, PutObjectOptions, SseAlgorithm};
use proptest::prelude::*;
use support::{pattern, Lab, OWNER, SEG};

const USER: &str = "arn:aws:iam::000000000000:user/KeyUser";
const STRANGER: &str = "arn:aws:iam::000000000000:user/Stranger";

fn count(lab: &Lab, name: &str) -> usize {
    Trail::open(&lab.home.path().join("trail"), "local", "000000000000")
        .unwrap()
        .lookup(&LookupFilter {
            event_name: Some(name.into()),
            ..LookupFilter::default()
        })
        .unwrap()
        .iter()
        .filter(|e| e.event["errorCode"].is_null())
        .count()
}

fn last_event(lab: &Lab, name: &str) -> serde_json::Value {
    Trail::open(&lab.home.path().join("trail"), "local", "000000000000")
        .unwrap()
        .lookup(&LookupFilter {
            event_name: Some(name.into()),
            ..LookupFilter::default()
        })
        .unwrap()
        .remove(0)
        .event
}

/// The bucket `bkt` with SSE-KMS default encryption under the lab key, bucket keys on.
fn bucket_key_lab() -> Lab {
    let lab = Lab::new();
    lab.store
        .put_bucket_encryption(
            "bkt",
            Some(BucketEncryption {
                algorithm: SseAlgorithm::AwsKms,
                kms_key_id: Some(lab.key_arn.clone()),
                bucket_key_enabled: true,
            }),
        )
        .unwrap();
    lab
}

/// What the S3 front end does per request: a store handle scoped to the caller.
fn scoped(lab: &Lab, kms: &LocalKms) -> ObjectStore {
    lab.store.with_cache_scope(CacheScope::of(kms).unwrap())
}

fn put(store: &ObjectStore, kms: &dyn KeyService, key: &str, data: &[u8]) -> objstore::ObjectInfo {
    store
        .put_object(
            kms,
            "bkt",
            key,
            &mut &data[..],
            &PutObjectOptions::default(),
        )
        .unwrap()
}

fn get(store: &ObjectStore, kms: &dyn KeyService, key: &str) -> Result<Vec<u8>, objstore::Error> {
    let download = store.get_object(kms, "bkt", key, None)?;
    let mut out = Vec::new();
    download.body.write_to(&mut out)?;
    Ok(out)
}

#[test]
fn many_objects_cost_one_generate_data_key_and_no_decrypt() {
    let lab = bucket_key_lab();
    let n = 25;
    for i in 0..n {
        // A fresh scope per request, as the front end makes them.
        let info = put(
            &scoped(&lab, &lab.kms),
            &lab.kms,
            &format!("o{i}"),
            &pattern(100 + i, i as u64),
        );
        assert!(info.bucket_key_enabled);
        assert_eq!(info.kms_key_arn, lab.key_arn);
        assert_eq!(info.encryption_context["aws:s3:arn"], "arn:aws:s3:::bkt");
    }
    for i in 0..n {
        let got = get(&scoped(&lab, &lab.kms), &lab.kms, &format!("o{i}")).unwrap();
        assert_eq!(got, pattern(100 + i, i as u64));
    }
    assert_eq!(count(&lab, "GenerateDataKey"), 1);
    assert_eq!(count(&lab, "Decrypt"), 0);
    let event = last_event(&lab, "GenerateDataKey");
    assert_eq!(
        event["requestParameters"]["encryptionContext"],
        serde_json::json!({"aws:s3:arn": "arn:aws:s3:::bkt"})
    );
    // HEAD echoes the setting without any call.
    assert!(
        lab.store
            .head_object("bkt", "o3")
            .unwrap()
            .bucket_key_enabled
    );

    // The same work without bucket keys: one call per object and operation.
    let plain = Lab::new();
    for i in 0..n {
        plain.put(&format!("o{i}"), b"x");
        plain.get(&format!("o{i}")).unwrap();
    }
    assert_eq!(count(&plain, "GenerateDataKey"), n);
    assert_eq!(count(&plain, "Decrypt"), n);
}

#[test]
fn without_a_cache_scope_the_recorded_bucket_key_costs_one_decrypt_per_request() {
    let lab = bucket_key_lab();
    for i in 0..5 {
        put(&lab.store, &lab.kms, &format!("o{i}"), b"data");
    }
    for i in 0..5 {
        assert_eq!(
            get(&lab.store, &lab.kms, &format!("o{i}")).unwrap(),
            b"data"
        );
    }
    // One bucket key for the bucket: generated once, then unwrapped per request.
    assert_eq!(count(&lab, "GenerateDataKey"), 1);
    assert_eq!(count(&lab, "Decrypt"), 4 + 5);
    // A store that keeps nothing behaves the same even with a scope.
    let nocache = lab
        .store
        .clone()
        .with_bucket_key_cache_ttl(std::time::Duration::ZERO);
    let s = nocache.with_cache_scope(CacheScope::of(&lab.kms).unwrap());
    get(&s, &lab.kms, "o0").unwrap();
    get(&s, &lab.kms, "o0").unwrap();
    assert_eq!(count(&lab, "Decrypt"), 11);
}

#[test]
fn concurrent_first_uploads_make_one_bucket_key() {
    let lab = bucket_key_lab();
    std::thread::scope(|s| {
        for i in 0..8 {
            let lab = &lab;
            s.spawn(move || put(&scoped(lab, &lab.kms), &lab.kms, &format!("o{i}"), b"x"));
        }
    });
    assert_eq!(count(&lab, "GenerateDataKey"), 1);
    for i in 0..8 {
        assert_eq!(get(&lab.store, &lab.kms, &format!("o{i}")).unwrap(), b"x");
    }
}

#[test]
fn the_cache_is_per_principal_and_the_key_policy_still_decides() {
    let lab = bucket_key_lab();
    // LAB step 1's split, reduced: root administers, USER may use the key.
    let policy = format!(
        r#"{{"Version": "2012-10-17", "Statement": [
            {{"Effect": "Allow", "Principal": {{"AWS": "{OWNER}"}}, "Action": "kms:*", "Resource": "*"}},
            {{"Effect": "Allow", "Principal": {{"AWS": "{USER}"}}, "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*"}}
        ]}}"#
    );
    lab.kms
        .put_key_policy(&lab.key_arn, "default", &policy, false)
        .unwrap();
    put(&scoped(&lab, &lab.kms), &lab.kms, "o", b"secret");
    // Another principal unwraps the bucket key itself once, under its own name.
    let user = lab.kms.as_principal(USER).unwrap();
    assert_eq!(get(&scoped(&lab, &user), &user, "o").unwrap(), b"secret");
    assert_eq!(get(&scoped(&lab, &user), &user, "o").unwrap(), b"secret");
    assert_eq!(count(&lab, "Decrypt"), 1);
    assert_eq!(last_event(&lab, "Decrypt")["userIdentity"]["arn"], USER);

    // A stranger gets nothing, although root and USER hold the bucket key unwrapped.
    let stranger = lab.kms.as_principal(STRANGER).unwrap();
    let err = get(&scoped(&lab, &stranger), &stranger, "o").unwrap_err();
    assert_eq!(err.s3_code(), "AccessDenied", "{err}");
    let err = scoped(&lab, &stranger)
        .put_object(
            &stranger,
            "bkt",
            "p",
            &mut &b"x"[..],
            &PutObjectOptions::default(),
        )
        .unwrap_err();
    assert_eq!(err.s3_code(), "AccessDenied", "{err}");
    assert_eq!(get(&scoped(&lab, &user), &user, "o").unwrap(), b"secret");
    assert_eq!(count(&lab, "Decrypt"), 1);
}

#[test]
fn disabling_the_key_fails_closed_at_once_despite_the_cache() {
    let lab = bucket_key_lab();
    let store = scoped(&lab, &lab.kms);
    put(&store, &lab.kms, "o", b"data");
    assert_eq!(get(&store, &lab.kms, "o").unwrap(), b"data");
    lab.kms.disable_key(&lab.key_arn).unwrap();
    let err = get(&scoped(&lab, &lab.kms), &lab.kms, "o").unwrap_err();
    assert_eq!(err.s3_code(), "KMS.DisabledException");
    let err = scoped(&lab, &lab.kms)
        .put_object(
            &lab.kms,
            "bkt",
            "p",
            &mut &b"x"[..],
            &PutObjectOptions::default(),
        )
        .unwrap_err();
    assert_eq!(err.s3_code(), "KMS.DisabledException");
    lab.kms.enable_key(&lab.key_arn).unwrap();
    assert_eq!(
        get(&scoped(&lab, &lab.kms), &lab.kms, "o").unwrap(),
        b"data"
    );
    lab.kms
        .schedule_key_deletion(&lab.key_arn, Some(7))
        .unwrap();
    let err = get(&scoped(&lab, &lab.kms), &lab.kms, "o").unwrap_err();
    assert_eq!(err.s3_code(), "KMS.KMSInvalidStateException");
}

#[test]
fn objects_stay_readable_after_the_bucket_key_is_rotated_or_replaced() {
    let lab = bucket_key_lab();
    let store = scoped(&lab, &lab.kms);
    put(&store, &lab.kms, "old", b"first key");
    let blob = |key: &str| {
        let bytes = fs::read(lab.store.object_path("bkt", key)).unwrap();
        let len = ObjectHeader::peek_len(&bytes).unwrap() as usize;
        ObjectHeader::decode(&bytes[..len])
            .unwrap()
            .bound
            .wrapped_key
    };
    assert_eq!(lab.store.rotate_bucket_keys("bkt").unwrap(), 1);
    put(&store, &lab.kms, "new", b"second key");
    assert_ne!(blob("old"), blob("new"));
    assert_eq!(count(&lab, "GenerateDataKey"), 2);

    // Replacing the default encryption with another CMK retires the bucket key too.
    let other = lab
        .kms
        .create_key(&CreateKeyRequest::default())
        .unwrap()
        .arn;
    lab.store
        .put_bucket_encryption(
            "bkt",
            Some(BucketEncryption {
                algorithm: SseAlgorithm::AwsKms,
                kms_key_id: Some(other.clone()),
                bucket_key_enabled: true,
            }),
        )
        .unwrap();
    let info = put(&scoped(&lab, &lab.kms), &lab.kms, "third", b"other cmk");
    assert_eq!(info.kms_key_arn, other);
    assert_eq!(count(&lab, "GenerateDataKey"), 3);
    // A store that never saw the old keys reads every object (one Decrypt each key).
    let fresh = ObjectStore::open(lab.home.path()).unwrap();
    let fresh = fresh.with_cache_scope(CacheScope::of(&lab.kms).unwrap());
    assert_eq!(get(&fresh, &lab.kms, "old").unwrap(), b"first key");
    assert_eq!(get(&fresh, &lab.kms, "new").unwrap(), b"second key");
    assert_eq!(get(&fresh, &lab.kms, "third").unwrap(), b"other cmk");
    assert_eq!(count(&lab, "Decrypt"), 3);
}

#[test]
fn the_put_header_and_encryption_context_decide_per_object() {
    let lab = Lab::new();
    // Bucket keys off by default; one PUT asks for one.
    let info = lab
        .store
        .put_object_with_bucket_key(
            &lab.kms,
            "bkt",
            "asked",
            &mut &b"x"[..],
            &lab.opts(),
            Some(true),
        )
        .unwrap();
    assert!(info.bucket_key_enabled);
    assert!(!lab.put("default", b"x").bucket_key_enabled);

    let lab = bucket_key_lab();
    let put_with = |key: &str, enabled, context: &[(&str, &str)]| {
        let opts = PutObjectOptions {
            encryption_context: context
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        lab.store
            .put_object_with_bucket_key(&lab.kms, "bkt", key, &mut &b"x"[..], &opts, enabled)
            .unwrap()
    };
    assert!(!put_with("off", Some(false), &[]).bucket_key_enabled);
    // Pairs of the caller's own must reach the key service: the object gets its own key.
    let info = put_with("ctx", Some(true), &[("project", "lab")]);
    assert!(!info.bucket_key_enabled);
    assert_eq!(
        info.encryption_context["aws:s3:arn"],
        "arn:aws:s3:::bkt/ctx"
    );
    assert_eq!(info.encryption_context["project"], "lab");
    for key in ["off", "ctx"] {
        assert_eq!(lab.get(key).unwrap(), b"x");
    }
}

#[test]
fn the_wrapped_bucket_key_is_bound_to_the_bucket_arn() {
    let lab = bucket_key_lab();
    put(&lab.store, &lab.kms, "o", b"data");
    let bytes = fs::read(lab.store.object_path("bkt", "o")).unwrap();
    let len = ObjectHeader::peek_len(&bytes).unwrap() as usize;
    let bound = ObjectHeader::decode(&bytes[..len]).unwrap().bound;
    assert!(bound.bucket_key_salt.is_some());
    for arn in ["arn:aws:s3:::bkt/o", "arn:aws:s3:::other"] {
        let err = lab
            .kms
            .decrypt(&DecryptRequest {
                ciphertext_blob: bound.wrapped_key.clone(),
                encryption_context: [("aws:s3:arn".to_owned(), arn.to_owned())].into(),
                key_id: None,
            })
            .unwrap_err();
        assert!(matches!(err, KmsError::InvalidCiphertext(_)), "{err}");
    }
}

#[test]
fn tampering_with_a_bucket_key_object_is_detected() {
    let lab = bucket_key_lab();
    let data = pattern(2 * SEG + 7, 3);
    put(&lab.store, &lab.kms, "k", &data);
    put(&lab.store, &lab.kms, "k2", &data);
    let path = lab.store.object_path("bkt", "k");
    let bytes = fs::read(&path).unwrap();
    let hl = ObjectHeader::peek_len(&bytes).unwrap() as usize;
    let reheader = |edit: &dyn Fn(&mut ObjectHeader)| {
        let mut h = ObjectHeader::decode(&bytes[..hl]).unwrap();
        edit(&mut h);
        let mut out = h.encode().unwrap();
        out.extend_from_slice(&bytes[hl..]);
        out
    };
    let other = fs::read(lab.store.object_path("bkt", "k2")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "salt",
            reheader(&|h| h.bound.bucket_key_salt.as_mut().unwrap()[0] ^= 1),
        ),
        (
            "salt removed",
            reheader(&|h| h.bound.bucket_key_salt = None),
        ),
        (
            "wrapped bucket key",
            reheader(&|h| h.bound.wrapped_key[40] ^= 1),
        ),
        (
            "context",
            reheader(&|h| {
                h.bound
                    .encryption_context
                    .insert("aws:s3:arn".into(), "arn:aws:s3:::bkt/k".into());
            }),
        ),
        ("ciphertext", {
            let mut b = bytes.clone();
            b[hl + 5] ^= 1;
            b
        }),
        // The same bucket key and size, another object's salt and body.
        ("other object's body", {
            let hl2 = ObjectHeader::peek_len(&other).unwrap() as usize;
            let mut b = bytes[..hl].to_vec();
            b.extend_from_slice(&other[hl2..]);
            b
        }),
    ];
    for (what, tampered) in cases {
        fs::write(&path, &tampered).unwrap();
        let err = get(&lab.store, &lab.kms, "k").expect_err(what);
        assert!(
            matches!(
                err.s3_code().as_ref(),
                "InternalError" | "KMS.InvalidCiphertextException"
            ),
            "{what}: {err}"
        );
    }
    fs::write(&path, &bytes).unwrap();
    assert_eq!(get(&lab.store, &lab.kms, "k").unwrap(), data);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn prop_bucket_key_objects_round_trip(
        keys in proptest::collection::btree_set("[a-z0-9/]{1,40}", 1..6),
        size in 0usize..3 * SEG,
        seed in any::<u64>(),
    ) {
        let lab = bucket_key_lab();
        let store = scoped(&lab, &lab.kms);
        for (i, key) in keys.iter().enumerate() {
            put(&store, &lab.kms, key, &pattern(size, seed + i as u64));
        }
        for (i, key) in keys.iter().enumerate() {
            prop_assert_eq!(get(&store, &lab.kms, key).unwrap(), pattern(size, seed + i as u64));
        }
        prop_assert_eq!(count(&lab, "GenerateDataKey"), 1);
        prop_assert_eq!(count(&lab, "Decrypt"), 0);
    }
}
