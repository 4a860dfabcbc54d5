//! Objects end to end against the real key service: round trips, ranges, metadata,
//! key states, ACLs, crash leftovers.

mod support;

use std::collections::BTreeMap;
use std::io::{self, Read};

use crypto_core::kms::KeyService;
use md5::{Digest, Md5};
use objstore::{
    Acl, BucketEncryption, ByteRange, Error, ObjectStore, PutObjectOptions, Sse, SseAlgorithm,
};
use support::{pattern, Dribble, Lab, SEG};

const WINDOW: usize = 32 * SEG;

#[test]
fn round_trips_at_every_boundary() {
    let lab = Lab::new();
    let sizes = [
        0,
        1,
        SEG - 1,
        SEG,
        SEG + 1,
        2 * SEG,
        WINDOW - 1,
        WINDOW,
        WINDOW + 1,
        3 * WINDOW + SEG + 5,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let data = pattern(size, i as u64);
        let key = format!("obj-{size}");
        let mut body = Dribble {
            data: &data,
            step: i,
        };
        let info = lab
            .store
            .put_object(lab.kms(), "bkt", &key, &mut body, &lab.opts())
            .unwrap();
        assert_eq!(info.size, size as u64);
        assert_eq!(info.etag, hex::encode(Md5::digest(&data)), "size {size}");
        assert_eq!(lab.get(&key).unwrap(), data, "size {size}");
        // Through `Read` as well as `write_to`.
        let mut via_read = Vec::new();
        lab.store
            .get_object(lab.kms(), "bkt", &key, None)
            .unwrap()
            .body
            .read_to_end(&mut via_read)
            .unwrap();
        assert_eq!(via_read, data);
        let head = lab.store.head_object("bkt", &key).unwrap();
        assert_eq!(head, info);
    }
}

#[test]
fn metadata_is_kept_and_context_bound() {
    let lab = Lab::new();
    let opts = PutObjectOptions {
        content_type: Some("image/png".into()),
        user_metadata: BTreeMap::from([("camera".into(), "pinhole".into())]),
        encryption_context: BTreeMap::from([("project".into(), "lab".into())]),
        ..lab.opts()
    };
    let info = lab
        .store
        .put_object(lab.kms(), "bkt", "dir/clock.png", &mut &b"png"[..], &opts)
        .unwrap();
    assert_eq!(info.content_type, "image/png");
    assert_eq!(info.user_metadata["camera"], "pinhole");
    assert_eq!(info.kms_key_arn, lab.key_arn);
    assert_eq!(
        info.encryption_context,
        BTreeMap::from([
            ("aws:s3:arn".into(), "arn:aws:s3:::bkt/dir/clock.png".into()),
            ("project".into(), "lab".into()),
        ])
    );
    let plain = lab
        .store
        .put_object(lab.kms(), "bkt", "plain", &mut &b""[..], &lab.opts())
        .unwrap();
    assert_eq!(plain.content_type, objstore::DEFAULT_CONTENT_TYPE);
    assert_eq!(plain.etag, "d41d8cd98f00b204e9800998ecf8427e");

    let bad_context = PutObjectOptions {
        encryption_context: BTreeMap::from([("aws:s3:arn".into(), "arn:aws:s3:::x/y".into())]),
        ..lab.opts()
    };
    let err = lab
        .store
        .put_object(lab.kms(), "bkt", "k", &mut &b"x"[..], &bad_context)
        .unwrap_err();
    assert_eq!(err.s3_code(), "InvalidArgument");
    let too_much = PutObjectOptions {
        user_metadata: BTreeMap::from([("big".into(), "v".repeat(3000))]),
        ..lab.opts()
    };
    assert!(lab
        .store
        .put_object(lab.kms(), "bkt", "k", &mut &b"x"[..], &too_much)
        .is_err());
}

#[test]
fn ranges_match_the_model() {
    let lab = Lab::new();
    let size = 3 * SEG + 123;
    let data = pattern(size, 7);
    lab.put("r", &data);
    let size = size as u64;
    let seg = SEG as u64;
    let points = [
        0,
        1,
        seg - 1,
        seg,
        seg + 1,
        2 * seg,
        3 * seg,
        size - 2,
        size - 1,
    ];
    for &start in &points {
        for &end in &points {
            if end < start {
                continue;
            }
            let range = ByteRange::From {
                start,
                end: Some(end),
            };
            let mut d = lab
                .store
                .get_object(lab.kms(), "bkt", "r", Some(range))
                .unwrap();
            assert_eq!(d.range, Some((start, end)));
            assert_eq!(d.body.remaining(), end - start + 1);
            let mut got = Vec::new();
            d.body.read_to_end(&mut got).unwrap();
            assert_eq!(got, &data[start as usize..=end as usize], "{range}");
        }
    }
    let suffix = lab
        .store
        .get_object(lab.kms(), "bkt", "r", ByteRange::parse("bytes=-100"))
        .unwrap();
    let mut got = Vec::new();
    suffix.body.write_to(&mut got).unwrap();
    assert_eq!(got, &data[data.len() - 100..]);
    let open_end = lab
        .store
        .get_object(lab.kms(), "bkt", "r", ByteRange::parse("bytes=150000-"))
        .unwrap();
    assert_eq!(open_end.range, Some((150_000, size - 1)));
    for bad in ["bytes=999999-", "bytes=-0"] {
        let err = lab
            .store
            .get_object(lab.kms(), "bkt", "r", ByteRange::parse(bad))
            .unwrap_err();
        assert_eq!(err.http_status(), 416, "{bad}");
    }
    lab.put("empty", b"");
    let err = lab
        .store
        .get_object(lab.kms(), "bkt", "empty", ByteRange::parse("bytes=0-"))
        .unwrap_err();
    assert_eq!(err.s3_code(), "InvalidRange");
}

#[test]
fn a_range_read_only_needs_its_own_segments() {
    let lab = Lab::new();
    let data = pattern(4 * SEG, 3);
    lab.put("k", &data);
    // Damage segment 3: a range inside segment 1 still reads; the whole object fails.
    let path = lab.store.object_path("bkt", "k");
    let mut file = std::fs::read(&path).unwrap();
    let n = file.len();
    file[n - 100] ^= 1;
    std::fs::write(&path, file).unwrap();
    let range = ByteRange::From {
        start: SEG as u64 + 5,
        end: Some(SEG as u64 + 500),
    };
    let mut got = Vec::new();
    lab.store
        .get_object(lab.kms(), "bkt", "k", Some(range))
        .unwrap()
        .body
        .write_to(&mut got)
        .unwrap();
    assert_eq!(got, &data[SEG + 5..=SEG + 500]);
    assert_eq!(lab.get("k").unwrap_err().s3_code(), "InternalError");
}

#[test]
fn overwrite_and_delete() {
    let lab = Lab::new();
    lab.put("k", b"one");
    lab.put("k", b"two!");
    assert_eq!(lab.get("k").unwrap(), b"two!");
    assert!(lab.store.delete_object("bkt", "k").unwrap());
    assert!(!lab.store.delete_object("bkt", "k").unwrap());
    let err = lab.get("k").unwrap_err();
    assert_eq!(
        (err.s3_code().as_ref(), err.http_status()),
        ("NoSuchKey", 404)
    );
    assert_eq!(
        lab.store.head_object("bkt", "k").unwrap_err().s3_code(),
        "NoSuchKey"
    );
    assert_eq!(
        lab.store.head_object("nope", "k").unwrap_err().s3_code(),
        "NoSuchBucket"
    );
}

#[test]
fn keys_never_become_paths() {
    let lab = Lab::new();
    for key in ["../../escape", "a/../b", "./x", ".."] {
        let err = lab
            .store
            .put_object(lab.kms(), "bkt", key, &mut &b"x"[..], &lab.opts())
            .unwrap_err();
        assert_eq!(err.s3_code(), "InvalidArgument", "{key}");
    }
    let long = "é".repeat(512);
    lab.put(&long, b"long key");
    lab.put("/leading//slashes/", b"odd");
    assert_eq!(lab.get(&long).unwrap(), b"long key");
    let err = lab
        .store
        .put_object(
            lab.kms(),
            "bkt",
            &"k".repeat(1025),
            &mut &b""[..],
            &lab.opts(),
        )
        .unwrap_err();
    assert_eq!(err.s3_code(), "KeyTooLongError");
    // Everything the store wrote lies under <home>/s3/.
    let outside: Vec<_> = std::fs::read_dir(lab.home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut outside = outside;
    outside.sort();
    assert_eq!(outside, ["kms", "s3", "trail"]);
}

#[test]
fn no_plaintext_on_disk() {
    let lab = Lab::new();
    let marker = b"THE-SECRET-MARKER-".repeat(5000);
    lab.put("secret", &marker);
    let file = std::fs::read(lab.store.object_path("bkt", "secret")).unwrap();
    assert!(!file.windows(18).any(|w| w == b"THE-SECRET-MARKER-"));
}

#[test]
fn bucket_default_encryption_applies_when_the_put_names_no_key() {
    let lab = Lab::new();
    let none = PutObjectOptions::default();
    // No header and no bucket default: SSE-S3 under the AWS managed key, which the
    // S3 front end creates on first use; without it the key service names the alias.
    let err = lab
        .store
        .put_object(lab.kms(), "bkt", "k", &mut &b"x"[..], &none)
        .unwrap_err();
    assert_eq!(err.s3_code(), "KMS.NotFoundException");
    let managed = lab.kms.aws_managed_key(objstore::SSE_S3_KEY_ALIAS).unwrap();
    let info = lab
        .store
        .put_object(lab.kms(), "bkt", "k", &mut &b"x"[..], &none)
        .unwrap();
    assert_eq!(
        (info.sse, info.kms_key_arn.as_str()),
        (Sse::S3, managed.as_str())
    );
    assert_eq!(lab.get("k").unwrap(), b"x");
    assert_eq!(
        lab.store.bucket_encryption("bkt").unwrap_err().s3_code(),
        "ServerSideEncryptionConfigurationNotFoundError"
    );
    lab.kms
        .create_alias("alias/MyKMSKey", &lab.key_arn)
        .unwrap();
    let enc = BucketEncryption {
        algorithm: SseAlgorithm::AwsKms,
        kms_key_id: Some("alias/MyKMSKey".into()),
        bucket_key_enabled: false,
    };
    lab.store
        .put_bucket_encryption("bkt", Some(enc.clone()))
        .unwrap();
    assert_eq!(lab.store.bucket_encryption("bkt").unwrap(), enc);
    let info = lab
        .store
        .put_object(lab.kms(), "bkt", "k", &mut &b"x"[..], &none)
        .unwrap();
    assert_eq!(info.kms_key_arn, lab.key_arn);
    assert_eq!(lab.get("k").unwrap(), b"x");
}

#[test]
fn disabled_or_deleted_keys_surface_as_kms_errors() {
    let lab = Lab::new();
    lab.put("k", b"data");
    lab.kms.disable_key(&lab.key_arn).unwrap();
    let err = lab.get("k").unwrap_err();
    assert!(matches!(err, Error::Kms(_)));
    assert_eq!(err.s3_code(), "KMS.DisabledException");
    let err = lab
        .store
        .put_object(lab.kms(), "bkt", "k2", &mut &b"x"[..], &lab.opts())
        .unwrap_err();
    assert_eq!(err.s3_code(), "KMS.DisabledException");
    // HEAD needs no key.
    assert_eq!(lab.store.head_object("bkt", "k").unwrap().size, 4);
    lab.kms.enable_key(&lab.key_arn).unwrap();
    assert_eq!(lab.get("k").unwrap(), b"data");
    lab.kms
        .schedule_key_deletion(&lab.key_arn, Some(7))
        .unwrap();
    assert_eq!(
        lab.get("k").unwrap_err().s3_code(),
        "KMS.KMSInvalidStateException"
    );
}

#[test]
fn content_md5_is_checked() {
    let lab = Lab::new();
    let opts = PutObjectOptions {
        content_md5: Some(Md5::digest(b"other").into()),
        ..lab.opts()
    };
    let err = lab
        .store
        .put_object(lab.kms(), "bkt", "k", &mut &b"data"[..], &opts)
        .unwrap_err();
    assert_eq!(err.s3_code(), "BadDigest");
    assert_eq!(
        lab.store.head_object("bkt", "k").unwrap_err().s3_code(),
        "NoSuchKey"
    );
    let opts = PutObjectOptions {
        content_md5: Some(Md5::digest(b"data").into()),
        ..lab.opts()
    };
    lab.store
        .put_object(lab.kms(), "bkt", "k", &mut &b"data"[..], &opts)
        .unwrap();
}

#[test]
fn object_acls() {
    let lab = Lab::new();
    lab.put("k", b"x");
    assert_eq!(lab.store.object_acl("bkt", "k").unwrap(), Acl::Private);
    lab.store
        .put_object_acl("bkt", "k", Acl::PublicRead)
        .unwrap();
    assert_eq!(
        lab.store.head_object("bkt", "k").unwrap().acl,
        Acl::PublicRead
    );
    // Overwriting without an ACL makes the object private again, as on S3.
    lab.put("k", b"y");
    assert_eq!(lab.store.object_acl("bkt", "k").unwrap(), Acl::Private);
    let public = PutObjectOptions {
        acl: Acl::PublicRead,
        ..lab.opts()
    };
    lab.store
        .put_object(lab.kms(), "bkt", "p", &mut &b"z"[..], &public)
        .unwrap();
    assert_eq!(lab.store.object_acl("bkt", "p").unwrap(), Acl::PublicRead);
    lab.store.put_object_acl("bkt", "p", Acl::Private).unwrap();
    assert_eq!(lab.store.object_acl("bkt", "p").unwrap(), Acl::Private);
    assert_eq!(
        lab.store
            .put_object_acl("bkt", "missing", Acl::Private)
            .unwrap_err()
            .s3_code(),
        "NoSuchKey"
    );
    assert!(Acl::parse("authenticated-read").is_err());
}

/// A body that fails after some bytes, like a client that disconnects.
struct Broken(usize);

impl Read for Broken {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(7);
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn a_failed_upload_leaves_the_old_object_and_no_temp_file() {
    let lab = Lab::new();
    lab.put("k", b"old");
    let err = lab
        .store
        .put_object(
            lab.kms(),
            "bkt",
            "k",
            &mut Broken(3 * WINDOW + 17),
            &lab.opts(),
        )
        .unwrap_err();
    assert_eq!(err.s3_code(), "IncompleteBody");
    assert_eq!(lab.get("k").unwrap(), b"old");
    let tmp = lab.store.root().join("buckets/bkt/tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
}

#[test]
fn open_removes_crash_leftovers_but_not_uploads_in_progress() {
    let lab = Lab::new();
    let tmp = lab.store.root().join("buckets/bkt/tmp");
    std::fs::write(tmp.join("crashed.part"), b"half an object").unwrap();
    let running = std::fs::File::create(tmp.join("running.part")).unwrap();
    running.lock().unwrap();
    // An interrupted metadata write: removed once old, kept while it may be running.
    let objects = lab.store.root().join("buckets/bkt/objects");
    let old = std::fs::File::create(objects.join("old.tmp")).unwrap();
    old.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    std::fs::write(objects.join("fresh.tmp"), b"").unwrap();
    ObjectStore::open(lab.home.path()).unwrap();
    assert!(!tmp.join("crashed.part").exists());
    assert!(!objects.join("old.tmp").exists());
    assert!(objects.join("fresh.tmp").exists());
    assert!(tmp.join("running.part").exists());
    drop(running);
    ObjectStore::open(lab.home.path()).unwrap();
    assert!(!tmp.join("running.part").exists());
    // A crashed upload never shows up as an object.
    assert!(lab
        .store
        .list_objects_v2("bkt", &Default::default())
        .unwrap()
        .objects
        .is_empty());
}

#[test]
fn every_key_use_is_audited_with_the_object_arn_and_head_uses_none() {
    use crypto_core::trail::{LookupFilter, Trail};
    let lab = Lab::new();
    lab.put("dir/clock.png", b"png");
    lab.get("dir/clock.png").unwrap();
    let trail = Trail::open(&lab.home.path().join("trail"), "local", "000000000000").unwrap();
    let events = |name: &str| {
        trail
            .lookup(&LookupFilter {
                event_name: Some(name.into()),
                ..LookupFilter::default()
            })
            .unwrap()
    };
    for name in ["GenerateDataKey", "Decrypt"] {
        let found = events(name);
        assert_eq!(found.len(), 1, "{name}");
        let event = &found[0].event;
        assert_eq!(
            event["requestParameters"]["encryptionContext"]["aws:s3:arn"],
            "arn:aws:s3:::bkt/dir/clock.png",
            "{name}"
        );
        assert_eq!(event["userIdentity"]["arn"], support::OWNER, "{name}");
    }
    let before = trail.lookup(&LookupFilter::default()).unwrap().len();
    lab.store.head_object("bkt", "dir/clock.png").unwrap();
    lab.store
        .list_objects_v2("bkt", &Default::default())
        .unwrap();
    assert_eq!(
        trail.lookup(&LookupFilter::default()).unwrap().len(),
        before
    );
}

#[test]
fn a_reader_keeps_the_version_it_opened() {
    let lab = Lab::new();
    let old = pattern(5 * SEG, 1);
    lab.put("k", &old);
    let mut download = lab.store.get_object(lab.kms(), "bkt", "k", None).unwrap();
    let mut first = vec![0u8; 100];
    download.body.read_exact(&mut first).unwrap();
    lab.put("k", b"new");
    lab.store.delete_object("bkt", "k").unwrap();
    let mut rest = Vec::new();
    download.body.read_to_end(&mut rest).unwrap();
    first.extend(rest);
    assert_eq!(first, old);
}
