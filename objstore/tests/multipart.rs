//! Multipart uploads against the real key service: assembly, S3's part-list errors,
//! abort, no plaintext on disk, and the key-service calls with the object's context.

mod support;

use std::fs;
use std::path::Path;

use md5::{Digest, Md5};
use objstore::{
    BucketEncryption, CompletedPart, Error, PutObjectOptions, SseAlgorithm, MIN_PART_SIZE,
    S3_ARN_CONTEXT_KEY,
};
use support::{pattern, Lab};

const MIB: usize = 1 << 20;

fn completed(parts: &[(u32, &str)]) -> Vec<CompletedPart> {
    parts
        .iter()
        .map(|&(part_number, etag)| CompletedPart {
            part_number,
            etag: format!("\"{etag}\""),
        })
        .collect()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn parts_assemble_into_an_object_with_the_s3_etag() {
    let lab = Lab::new();
    let opts = PutObjectOptions {
        content_type: Some("text/plain".into()),
        user_metadata: [("who".to_owned(), "me".to_owned())].into(),
        ..lab.opts()
    };
    let upload = lab
        .store
        .create_multipart_upload(lab.kms(), "bkt", "big", &opts, None, support::OWNER)
        .unwrap();
    assert_eq!(upload.upload_id.len(), 32);
    assert_eq!(upload.kms_key_arn, lab.key_arn);
    let p1 = pattern(5 * MIB, 1);
    let p2 = pattern(5 * MIB + 3, 2);
    let p3 = pattern(12345, 3);
    let mut etags = Vec::new();
    // Uploaded out of order, and part 2 twice: the last upload wins.
    for (n, data) in [(3u32, &p3), (2, &p1), (1, &p1), (2, &p2)] {
        let part = lab
            .store
            .upload_part(
                lab.kms(),
                "bkt",
                "big",
                &upload.upload_id,
                n,
                &mut &data[..],
                None,
            )
            .unwrap();
        assert_eq!(part.etag, hex::encode(Md5::digest(data)));
        assert_eq!(part.size, data.len() as u64);
        etags.push((n, part.etag));
    }
    let (listed, parts) = lab
        .store
        .list_parts("bkt", "big", &upload.upload_id)
        .unwrap();
    assert_eq!(listed, upload);
    assert_eq!(
        parts.iter().map(|p| p.part_number).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(parts[1].etag, etags[3].1);
    assert_eq!(
        lab.store.list_multipart_uploads("bkt").unwrap(),
        vec![upload.clone()]
    );

    // No part file holds plaintext.
    for path in files(&lab.home.path().join("s3")) {
        let bytes = fs::read(&path).unwrap();
        assert!(!contains(&bytes, &p3[..64]), "{}", path.display());
        assert!(!contains(&bytes, &p1[MIB..MIB + 64]), "{}", path.display());
    }

    let list = completed(&[(1, &etags[2].1), (2, &etags[3].1), (3, &etags[0].1)]);
    let info = lab
        .store
        .complete_multipart_upload(lab.kms(), "bkt", "big", &upload.upload_id, &list)
        .unwrap();
    let mut digests = Md5::new();
    for data in [&p1, &p2, &p3] {
        digests.update(Md5::digest(data));
    }
    assert_eq!(info.etag, format!("{}-3", hex::encode(digests.finalize())));
    assert_eq!(info.size, (p1.len() + p2.len() + p3.len()) as u64);
    assert_eq!(info.content_type, "text/plain");
    assert_eq!(info.user_metadata["who"], "me");
    assert_eq!(
        info.encryption_context[S3_ARN_CONTEXT_KEY],
        "arn:aws:s3:::bkt/big"
    );
    let expected = [p1.clone(), p2.clone(), p3.clone()].concat();
    assert_eq!(lab.get("big").unwrap(), expected);
    assert_eq!(lab.store.head_object("bkt", "big").unwrap(), info);
    let listed = lab
        .store
        .list_objects_v2("bkt", &Default::default())
        .unwrap();
    assert_eq!(listed.objects, vec![info]);

    // The upload is gone; a later single PUT has a plain ETag again.
    let gone = lab
        .store
        .list_parts("bkt", "big", &upload.upload_id)
        .unwrap_err();
    assert!(matches!(gone, Error::NoSuchUpload { .. }), "{gone}");
    assert!(lab.store.list_multipart_uploads("bkt").unwrap().is_empty());
    let single = lab.put("big", b"small");
    assert_eq!(single.etag, hex::encode(Md5::digest(b"small")));
    assert_eq!(
        lab.store.head_object("bkt", "big").unwrap().etag,
        single.etag
    );
}

#[test]
fn part_lists_are_checked_as_s3_does() {
    let lab = Lab::new();
    let up = lab
        .store
        .create_multipart_upload(lab.kms(), "bkt", "k", &lab.opts(), None, support::OWNER)
        .unwrap();
    let id = up.upload_id.as_str();
    let small = pattern(1000, 1);
    let big = pattern(MIN_PART_SIZE as usize, 2);
    let put = |n: u32, data: &[u8]| {
        lab.store
            .upload_part(lab.kms(), "bkt", "k", id, n, &mut &data[..], None)
            .unwrap()
            .etag
    };
    let e1 = put(1, &small);
    let e2 = put(2, &big);
    let e3 = put(3, &small);
    let complete = |list: &[(u32, &str)]| {
        lab.store
            .complete_multipart_upload(lab.kms(), "bkt", "k", id, &completed(list))
            .unwrap_err()
    };
    let err = complete(&[(2, &e2), (1, &e1)]);
    assert_eq!(err.s3_code(), "InvalidPartOrder");
    let err = complete(&[(2, &e2), (2, &e2)]);
    assert_eq!(err.s3_code(), "InvalidPartOrder");
    let err = complete(&[(2, &e2), (4, &e3)]);
    assert_eq!(
        (err.s3_code().as_ref(), err.http_status()),
        ("InvalidPart", 400)
    );
    let err = complete(&[(2, &e2), (3, &e1[..31])]);
    assert_eq!(err.s3_code(), "InvalidPart");
    let err = complete(&[(1, &e1), (2, &e2)]);
    assert_eq!(err.s3_code(), "EntityTooSmall");
    let err = lab
        .store
        .upload_part(lab.kms(), "bkt", "k", id, 0, &mut &small[..], None)
        .unwrap_err();
    assert_eq!(err.s3_code(), "InvalidArgument");
    let err = lab
        .store
        .upload_part(lab.kms(), "bkt", "k", id, 4, &mut &small[..], Some([0; 16]))
        .unwrap_err();
    assert_eq!(err.s3_code(), "BadDigest");
    // The wrong key, or an id that is not one, is no upload.
    for (key, upload_id) in [("other", id), ("k", "../../bucket.json"), ("k", "")] {
        let err = lab
            .store
            .upload_part(lab.kms(), "bkt", key, upload_id, 1, &mut &small[..], None)
            .unwrap_err();
        assert_eq!(
            (err.s3_code().as_ref(), err.http_status()),
            ("NoSuchUpload", 404)
        );
    }
    // Parts 2 and 3 make a valid upload: the small last part is allowed.
    let info = lab
        .store
        .complete_multipart_upload(lab.kms(), "bkt", "k", id, &completed(&[(2, &e2), (3, &e3)]))
        .unwrap();
    assert!(info.etag.ends_with("-2"));
    assert_eq!(lab.get("k").unwrap(), [big, small].concat());
    // A retry of that Complete (its answer lost) gets the object, as on S3; another
    // part list for the finished upload does not.
    let again = lab
        .store
        .complete_multipart_upload(lab.kms(), "bkt", "k", id, &completed(&[(2, &e2), (3, &e3)]))
        .unwrap();
    assert_eq!(again.etag, info.etag);
    let err = complete(&[(2, &e2)]);
    assert_eq!(err.s3_code(), "NoSuchUpload");
    let err = complete(&[(2, &e2), (3, "not hex")]);
    assert_eq!(err.s3_code(), "NoSuchUpload");
}

#[test]
fn abort_removes_every_file_of_the_upload() {
    let lab = Lab::new();
    let up = lab
        .store
        .create_multipart_upload(lab.kms(), "bkt", "k", &lab.opts(), None, support::OWNER)
        .unwrap();
    let data = pattern(200_000, 9);
    lab.store
        .upload_part(
            lab.kms(),
            "bkt",
            "k",
            &up.upload_id,
            1,
            &mut &data[..],
            None,
        )
        .unwrap();
    let before = files(&lab.home.path().join("s3/buckets/bkt")).len();
    lab.store
        .abort_multipart_upload("bkt", "k", &up.upload_id)
        .unwrap();
    let after = files(&lab.home.path().join("s3/buckets/bkt"));
    assert_eq!(after.len(), before - 2, "{after:?}");
    assert!(!after
        .iter()
        .any(|p| p.to_string_lossy().contains("uploads")));
    for call in [
        lab.store.abort_multipart_upload("bkt", "k", &up.upload_id),
        lab.store
            .upload_part(
                lab.kms(),
                "bkt",
                "k",
                &up.upload_id,
                1,
                &mut &data[..],
                None,
            )
            .map(|_| ()),
    ] {
        assert_eq!(call.unwrap_err().s3_code(), "NoSuchUpload");
    }
    assert_eq!(lab.get("k").unwrap_err().s3_code(), "NoSuchKey");
}

#[test]
fn bucket_default_encryption_and_bucket_keys_apply() {
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
    let up = lab
        .store
        .create_multipart_upload(
            lab.kms(),
            "bkt",
            "bk",
            &PutObjectOptions::default(),
            None,
            support::OWNER,
        )
        .unwrap();
    assert!(up.bucket_key_enabled);
    let data = pattern(70_000, 4);
    let etag = lab
        .store
        .upload_part(
            lab.kms(),
            "bkt",
            "bk",
            &up.upload_id,
            1,
            &mut &data[..],
            None,
        )
        .unwrap()
        .etag;
    let info = lab
        .store
        .complete_multipart_upload(
            lab.kms(),
            "bkt",
            "bk",
            &up.upload_id,
            &completed(&[(1, &etag)]),
        )
        .unwrap();
    assert!(info.bucket_key_enabled);
    assert_eq!(info.kms_key_arn, lab.key_arn);
    assert!(info.etag.ends_with("-1"));
    assert_eq!(lab.get("bk").unwrap(), data);
}
