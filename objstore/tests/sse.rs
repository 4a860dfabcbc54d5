//! SSE-S3 (the AWS managed key), SSE-C (the customer's key, never stored) and
//! conditional writes and deletes, at the storage layer.

mod support;

use std::sync::Arc;

use crypto_core::kms::{LocalKms, LocalKmsConfig};
use objstore::{
    BucketEncryption, Condition, CustomerKey, EncryptionRequest, PutObjectOptions, Sse,
    SseAlgorithm, SSE_S3_KEY_ALIAS,
};
use support::Lab;

fn customer(byte: u8) -> EncryptionRequest {
    EncryptionRequest::Customer(Arc::new(CustomerKey::new(&[byte; 32]).unwrap()))
}

fn read_all(download: objstore::ObjectDownload) -> Vec<u8> {
    let mut out = Vec::new();
    download.body.write_to(&mut out).unwrap();
    out
}

#[test]
fn sse_s3_is_the_default_and_a_bucket_default_may_name_it() {
    let lab = Lab::new();
    let managed = lab.kms.aws_managed_key(SSE_S3_KEY_ALIAS).unwrap();
    // A second call finds the same key.
    assert_eq!(lab.kms.aws_managed_key(SSE_S3_KEY_ALIAS).unwrap(), managed);
    let s3 = PutObjectOptions {
        encryption: EncryptionRequest::SseS3,
        ..Default::default()
    };
    let info = lab
        .store
        .put_object(lab.kms(), "bkt", "a", &mut &b"aaa"[..], &s3)
        .unwrap();
    assert_eq!(
        (info.sse, info.kms_key_arn.clone()),
        (Sse::S3, managed.clone())
    );
    assert_eq!(lab.store.head_object("bkt", "a").unwrap().sse, Sse::S3);
    // aws:kms without a key id: the managed key too, reported as SSE-KMS.
    let kms = PutObjectOptions {
        encryption: EncryptionRequest::SseKms,
        ..Default::default()
    };
    let info = lab
        .store
        .put_object(lab.kms(), "bkt", "b", &mut &b"b"[..], &kms)
        .unwrap();
    assert_eq!(
        (info.sse, info.kms_key_arn.clone()),
        (Sse::Kms, managed.clone())
    );
    // A bucket default of aws:kms with a key wins over the managed key.
    lab.store
        .put_bucket_encryption(
            "bkt",
            Some(BucketEncryption {
                algorithm: SseAlgorithm::AwsKms,
                kms_key_id: Some(lab.key_arn.clone()),
                bucket_key_enabled: false,
            }),
        )
        .unwrap();
    let info = lab
        .store
        .put_object(lab.kms(), "bkt", "c", &mut &b"c"[..], &Default::default())
        .unwrap();
    assert_eq!(
        (info.sse, info.kms_key_arn.clone()),
        (Sse::Kms, lab.key_arn.clone())
    );
    // AES256 with a key id is refused, as S3 does.
    assert!(lab
        .store
        .put_bucket_encryption(
            "bkt",
            Some(BucketEncryption {
                algorithm: SseAlgorithm::Aes256,
                kms_key_id: Some(lab.key_arn.clone()),
                bucket_key_enabled: false,
            }),
        )
        .is_err());
    lab.store
        .put_bucket_encryption(
            "bkt",
            Some(BucketEncryption {
                algorithm: SseAlgorithm::Aes256,
                kms_key_id: None,
                bucket_key_enabled: true,
            }),
        )
        .unwrap();
    let info = lab
        .store
        .put_object(lab.kms(), "bkt", "d", &mut &b"dd"[..], &Default::default())
        .unwrap();
    assert_eq!(info.sse, Sse::S3);
    assert!(info.bucket_key_enabled);
    for key in ["a", "b", "c", "d"] {
        assert!(!lab.get(key).unwrap().is_empty());
    }
}

#[test]
fn sse_c_objects_need_their_key_and_keep_no_trace_of_it() {
    let lab = Lab::new();
    let marker = b"SSE-C-PLAINTEXT-MARKER-".repeat(5000);
    let opts = PutObjectOptions {
        encryption: customer(7),
        ..Default::default()
    };
    let info = lab
        .store
        .put_object(lab.kms(), "bkt", "c", &mut &marker[..], &opts)
        .unwrap();
    assert!(matches!(info.sse, Sse::Customer { .. }));
    assert!(info.kms_key_arn.is_empty() && info.encryption_context.is_empty());
    // The ETag is not the MD5 of the plaintext.
    assert_ne!(info.etag, hex::encode(md5_of(&marker)));
    let file = std::fs::read(lab.store.object_path("bkt", "c")).unwrap();
    assert!(!file.windows(23).any(|w| w == b"SSE-C-PLAINTEXT-MARKER-"));
    assert!(!file.windows(32).any(|w| w == [7u8; 32]));
    let md5 = CustomerKey::new(&[7; 32]).unwrap().md5();
    assert!(!file.windows(16).any(|w| w == md5));

    let right = CustomerKey::new(&[7; 32]).unwrap();
    let wrong = CustomerKey::new(&[8; 32]).unwrap();
    let got = lab
        .store
        .get_object_with_key(lab.kms(), "bkt", "c", None, Some(&right))
        .unwrap();
    assert_eq!(read_all(got), marker);
    fn code<T>(r: Result<T, objstore::Error>) -> (String, u16) {
        let e = r.map(|_| ()).unwrap_err();
        (e.s3_code().into_owned(), e.http_status())
    }
    assert_eq!(
        code(lab.store.get_object(lab.kms(), "bkt", "c", None)),
        ("InvalidRequest".into(), 400)
    );
    assert_eq!(
        code(
            lab.store
                .get_object_with_key(lab.kms(), "bkt", "c", None, Some(&wrong))
        ),
        ("AccessDenied".into(), 403)
    );
    assert_eq!(
        code(lab.store.head_object_with_key("bkt", "c", None)),
        ("InvalidRequest".into(), 400)
    );
    assert_eq!(
        code(lab.store.head_object_with_key("bkt", "c", Some(&wrong))),
        ("AccessDenied".into(), 403)
    );
    lab.store
        .head_object_with_key("bkt", "c", Some(&right))
        .unwrap();
    // An SSE-C key on an object that is not SSE-C is refused.
    lab.put("k", b"kms");
    assert_eq!(
        code(
            lab.store
                .get_object_with_key(lab.kms(), "bkt", "k", None, Some(&right))
        ),
        ("InvalidRequest".into(), 400)
    );
    // No multipart upload under SSE-C (refused, not silently re-keyed).
    assert!(lab
        .store
        .create_multipart_upload(lab.kms(), "bkt", "m", &opts, None, support::OWNER)
        .is_err());
}

fn md5_of(data: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(data).into()
}

#[test]
fn conditional_writes_and_deletes_hold_at_commit() {
    let lab = Lab::new();
    let absent = PutObjectOptions {
        condition: Some(Condition::Absent),
        ..lab.opts()
    };
    let first = lab
        .store
        .put_object(lab.kms(), "bkt", "k", &mut &b"one"[..], &absent)
        .unwrap();
    let again = lab
        .store
        .put_object(lab.kms(), "bkt", "k", &mut &b"two"[..], &absent)
        .unwrap_err();
    assert_eq!(
        (again.s3_code().as_ref(), again.http_status()),
        ("PreconditionFailed", 412)
    );
    assert_eq!(lab.get("k").unwrap(), b"one");
    let stale = PutObjectOptions {
        condition: Some(Condition::EtagMatches("\"0123\"".into())),
        ..lab.opts()
    };
    let err = lab
        .store
        .put_object(lab.kms(), "bkt", "k", &mut &b"two"[..], &stale)
        .unwrap_err();
    assert_eq!(err.http_status(), 412);
    let fresh = PutObjectOptions {
        condition: Some(Condition::EtagMatches(format!("\"{}\"", first.etag))),
        ..lab.opts()
    };
    lab.store
        .put_object(lab.kms(), "bkt", "k", &mut &b"two"[..], &fresh)
        .unwrap();
    assert_eq!(lab.get("k").unwrap(), b"two");
    // If-Match on a key with no object: NoSuchKey, as S3.
    let err = lab
        .store
        .put_object(lab.kms(), "bkt", "none", &mut &b"x"[..], &fresh)
        .unwrap_err();
    assert_eq!(err.s3_code(), "NoSuchKey");
    // Delete only with the current ETag.
    let err = lab
        .store
        .delete_object_if("bkt", "k", Some(&first.etag))
        .unwrap_err();
    assert_eq!(err.http_status(), 412);
    assert_eq!(lab.get("k").unwrap(), b"two");
    let etag = lab.store.head_object("bkt", "k").unwrap().etag;
    assert!(lab.store.delete_object_if("bkt", "k", Some(&etag)).unwrap());
    assert_eq!(lab.get("k").unwrap_err().s3_code(), "NoSuchKey");
}

#[test]
fn racing_create_only_writers_leave_exactly_one_winner() {
    let lab = Lab::new();
    let winners: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let lab = &lab;
                scope.spawn(move || {
                    let opts = PutObjectOptions {
                        condition: Some(Condition::Absent),
                        ..lab.opts()
                    };
                    let body = vec![i; 200_000];
                    lab.store
                        .put_object(lab.kms(), "bkt", "race", &mut &body[..], &opts)
                        .is_ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(winners.iter().filter(|w| **w).count(), 1);
    let winner = winners.iter().position(|w| *w).unwrap() as u8;
    assert_eq!(lab.get("race").unwrap(), vec![winner; 200_000]);
}

#[test]
fn nobody_can_administer_or_repoint_the_managed_key() {
    use crypto_core::kms::KeyService;
    let lab = Lab::new();
    let managed = lab.kms.aws_managed_key(SSE_S3_KEY_ALIAS).unwrap();
    // Not even the account's root user (the lab's principal) through the API.
    assert!(lab.kms.disable_key(&managed).is_err());
    assert!(lab.kms.schedule_key_deletion(&managed, Some(7)).is_err());
    assert!(lab
        .kms
        .put_key_policy(&managed, "default", r#"{"Statement":[]}"#, false)
        .is_err());
    assert!(lab
        .kms
        .update_alias(SSE_S3_KEY_ALIAS, &lab.key_arn)
        .is_err());
    assert!(lab.kms.delete_alias(SSE_S3_KEY_ALIAS).is_err());
    assert!(lab
        .kms
        .create_alias("alias/aws/other", &lab.key_arn)
        .is_err());
    // Names that are not alias/aws/SERVICE are no managed key.
    assert!(lab.kms.aws_managed_key("alias/mine").is_err());
    assert!(lab.kms.aws_managed_key("alias/aws/../x").is_err());
    // It still works for S3.
    let info = lab
        .store
        .put_object(lab.kms(), "bkt", "k", &mut &b"x"[..], &Default::default())
        .unwrap();
    assert_eq!(info.kms_key_arn, managed);
    // Nobody calls the managed key directly (kms:ViaService), the owner's root user
    // included; another account's principal gets its own on first use.
    let direct = LocalKms::open(lab.home.path(), LocalKmsConfig::new()).unwrap();
    let request = crypto_core::kms::GenerateDataKeyRequest {
        key_id: managed.clone(),
        spec: crypto_core::kms::DataKeySpec::Aes256,
        encryption_context: Default::default(),
    };
    assert!(direct.generate_data_key(&request).is_err());
    let eve = direct
        .as_principal("arn:aws:iam::111111111111:user/Eve")
        .unwrap();
    assert!(eve.generate_data_key(&request).is_err());
    let eve_via_s3 = lab
        .kms
        .as_principal("arn:aws:iam::111111111111:user/Eve")
        .unwrap();
    let eves = eve_via_s3.aws_managed_key(SSE_S3_KEY_ALIAS).unwrap();
    assert_ne!(eves, managed);
    assert!(eves.contains(":111111111111:"), "{eves}");
}
