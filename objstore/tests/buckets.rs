//! Buckets and ListObjectsV2 through the store.

mod support;

use objstore::{Acl, ListObjectsRequest, ObjectStore};
use support::{Lab, OWNER};

#[test]
fn bucket_lifecycle() {
    let lab = Lab::new();
    let s = &lab.store;
    let err = s.create_bucket("bkt", OWNER).unwrap_err();
    assert_eq!(
        (err.s3_code().as_ref(), err.http_status()),
        ("BucketAlreadyOwnedByYou", 409)
    );
    let err = s
        .create_bucket("bkt", "arn:aws:iam::000000000000:user/other")
        .unwrap_err();
    assert_eq!(err.s3_code(), "BucketAlreadyExists");
    assert_eq!(
        s.create_bucket("Bad_Name", OWNER).unwrap_err().s3_code(),
        "InvalidBucketName"
    );
    s.create_bucket("a-bucket", OWNER).unwrap();
    let names: Vec<String> = s
        .list_buckets()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["a-bucket", "bkt"]);
    let info = s.bucket("a-bucket").unwrap();
    assert_eq!((info.owner.as_str(), info.acl), (OWNER, Acl::Private));
    s.put_bucket_acl("a-bucket", Acl::PublicRead).unwrap();
    assert_eq!(s.bucket("a-bucket").unwrap().acl, Acl::PublicRead);

    lab.put("k", b"x");
    let err = s.delete_bucket("bkt").unwrap_err();
    assert_eq!(
        (err.s3_code().as_ref(), err.http_status()),
        ("BucketNotEmpty", 409)
    );
    s.delete_object("bkt", "k").unwrap();
    s.delete_bucket("bkt").unwrap();
    assert_eq!(
        s.delete_bucket("bkt").unwrap_err().s3_code(),
        "NoSuchBucket"
    );
    assert_eq!(s.bucket("bkt").unwrap_err().http_status(), 404);
    // The name is free again, and the store reopens cleanly.
    s.create_bucket("bkt", OWNER).unwrap();
    let reopened = ObjectStore::open(lab.home.path()).unwrap();
    assert_eq!(reopened.list_buckets().unwrap().len(), 2);
}

#[test]
fn list_objects_v2_semantics() {
    let lab = Lab::new();
    let keys = [
        "photos/2025/a.jpg",
        "photos/2026/b.jpg",
        "photos/c.jpg",
        "readme",
        "zeta",
        "é",
    ];
    for k in keys {
        lab.put(k, k.as_bytes());
    }
    let s = &lab.store;
    let all = s
        .list_objects_v2("bkt", &ListObjectsRequest::default())
        .unwrap();
    let listed: Vec<&str> = all.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(listed, keys);
    assert!(!all.is_truncated());
    assert_eq!(all.objects[3].size, 6);

    let grouped = s
        .list_objects_v2(
            "bkt",
            &ListObjectsRequest {
                prefix: "photos/".into(),
                delimiter: "/".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(grouped.common_prefixes, ["photos/2025/", "photos/2026/"]);
    assert_eq!(grouped.objects.len(), 1);
    assert_eq!(grouped.key_count(), 3);

    // Page through two at a time.
    let mut req = ListObjectsRequest {
        max_keys: Some(2),
        delimiter: "/".into(),
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = s.list_objects_v2("bkt", &req).unwrap();
        assert!(page.key_count() <= 2);
        seen.extend(page.common_prefixes.iter().cloned());
        seen.extend(page.objects.iter().map(|o| o.key.clone()));
        match page.next_continuation_token {
            Some(t) => req.continuation_token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, ["photos/", "readme", "zeta", "é"]);

    let after = s
        .list_objects_v2(
            "bkt",
            &ListObjectsRequest {
                start_after: Some("readme".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let listed: Vec<&str> = after.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(listed, ["zeta", "é"]);
    let err = s
        .list_objects_v2(
            "bkt",
            &ListObjectsRequest {
                continuation_token: Some("not-a-token".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(err.s3_code(), "InvalidArgument");
    assert_eq!(
        s.list_objects_v2("nope", &ListObjectsRequest::default())
            .unwrap_err()
            .s3_code(),
        "NoSuchBucket"
    );
}
