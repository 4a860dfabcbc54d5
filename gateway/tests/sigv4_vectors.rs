//! SigV4 known-answer tests: the examples of the AWS S3 API reference, "Signature
//! Calculations for the Authorization Header: Transferring Payload in a Single Chunk"
//! (GET Object, `Range: bytes=0-9`) and "Authenticating Requests: Using Query
//! Parameters" (presigned GET of `test.txt`), with AWS's example credentials.

use gateway::sigv4::{
    self, Expectations, PathEncoding, Payload, RequestView, SecretLookup, Signer,
    SigningCredentials,
};
use gateway::GatewayError;
use http::HeaderMap;
use time::macros::datetime;
use zeroize::Zeroizing;

const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const HOST: &str = "examplebucket.s3.amazonaws.com";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

struct ExampleKeys;

impl SecretLookup for ExampleKeys {
    fn lookup(&self, access_key_id: &str) -> Result<(Zeroizing<String>, String), GatewayError> {
        if access_key_id == ACCESS_KEY_ID {
            Ok((
                Zeroizing::new(SECRET.to_owned()),
                "arn:aws:iam::123456789012:user/example".to_owned(),
            ))
        } else {
            Err(GatewayError::UnrecognizedClient("unknown".into()))
        }
    }
}

fn expect_s3(now: time::OffsetDateTime) -> Expectations<'static> {
    Expectations {
        service: "s3",
        region: "us-east-1",
        now,
        path_encoding: PathEncoding::Single,
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

#[test]
fn aws_get_object_example_verifies() {
    let authorization = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";
    let map = headers(&[
        ("host", HOST),
        ("range", "bytes=0-9"),
        ("x-amz-content-sha256", EMPTY_SHA256),
        ("x-amz-date", "20130524T000000Z"),
        ("authorization", authorization),
    ]);
    let view = RequestView {
        method: "GET",
        path: "/test.txt",
        query: "",
        headers: &map,
    };
    let now = datetime!(2013-05-24 00:05:00 UTC);
    let who = sigv4::verify(&view, Payload::Body(b""), &expect_s3(now), &ExampleKeys).unwrap();
    assert_eq!(who.access_key_id, ACCESS_KEY_ID);

    // One byte of the range changed: the signature no longer matches.
    let mut tampered = map.clone();
    tampered.insert("range", http::HeaderValue::from_static("bytes=0-99"));
    let view = RequestView {
        headers: &tampered,
        ..view
    };
    let err = sigv4::verify(&view, Payload::Body(b""), &expect_s3(now), &ExampleKeys).unwrap_err();
    assert_eq!(err.aws_name(), "InvalidSignatureException");
}

#[test]
fn aws_presigned_example_verifies_and_is_reproduced() {
    let query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
    let map = headers(&[("host", HOST)]);
    let view = RequestView {
        method: "GET",
        path: "/test.txt",
        query,
        headers: &map,
    };
    let within = datetime!(2013-05-24 12:00:00 UTC);
    sigv4::verify(&view, Payload::Unsigned, &expect_s3(within), &ExampleKeys).unwrap();

    let after = datetime!(2013-05-25 00:00:01 UTC);
    let err = sigv4::verify(&view, Payload::Unsigned, &expect_s3(after), &ExampleKeys).unwrap_err();
    assert!(matches!(err, GatewayError::PresignExpired(_)), "{err}");

    let credentials = SigningCredentials {
        access_key_id: ACCESS_KEY_ID.into(),
        secret_access_key: Zeroizing::new(SECRET.into()),
        session_token: None,
    };
    let signed_at = datetime!(2013-05-24 00:00:00 UTC);
    let made = sigv4::presign_query(
        &Signer::new(&credentials, "us-east-1", "s3", signed_at),
        "GET",
        HOST,
        "/test.txt",
        &[],
        86400,
        PathEncoding::Single,
    )
    .unwrap();
    assert_eq!(made, query);
}

#[test]
fn signed_requests_verify_and_every_kind_of_tampering_is_caught() {
    let credentials = SigningCredentials {
        access_key_id: ACCESS_KEY_ID.into(),
        secret_access_key: Zeroizing::new(SECRET.into()),
        session_token: None,
    };
    let at = datetime!(2024-01-02 03:04:05 UTC);
    let body = br#"{"KeyId":"alias/MyKMSKey","KeySpec":"AES_256"}"#;
    let mut map = headers(&[
        ("host", "127.0.0.1:4599"),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "TrentService.GenerateDataKey"),
    ]);
    sigv4::sign_headers(
        &Signer::new(&credentials, "us-east-1", "kms", at),
        "POST",
        "/",
        "",
        &mut map,
        Payload::Body(body),
    )
    .unwrap();
    let expect = Expectations {
        service: "kms",
        region: "us-east-1",
        now: at,
        path_encoding: PathEncoding::Double,
    };
    let view = RequestView {
        method: "POST",
        path: "/",
        query: "",
        headers: &map,
    };
    sigv4::verify(&view, Payload::Body(body), &expect, &ExampleKeys).unwrap();

    let name = |r: Result<_, GatewayError>| r.unwrap_err().aws_name();
    // A different body.
    assert_eq!(
        name(sigv4::verify(
            &view,
            Payload::Body(b"{}"),
            &expect,
            &ExampleKeys
        )),
        "InvalidSignatureException"
    );
    // Another operation under the same signature.
    let mut swapped = map.clone();
    swapped.insert(
        "x-amz-target",
        http::HeaderValue::from_static("TrentService.ScheduleKeyDeletion"),
    );
    assert_eq!(
        name(sigv4::verify(
            &RequestView {
                headers: &swapped,
                ..view
            },
            Payload::Body(body),
            &expect,
            &ExampleKeys
        )),
        "InvalidSignatureException"
    );
    // An unsigned x-amz-* header added.
    let mut extra = map.clone();
    extra.insert("x-amz-extra", http::HeaderValue::from_static("1"));
    assert_eq!(
        name(sigv4::verify(
            &RequestView {
                headers: &extra,
                ..view
            },
            Payload::Body(body),
            &expect,
            &ExampleKeys
        )),
        "InvalidSignatureException"
    );
    // 16 minutes late, 16 minutes early.
    for skew in [16i64, -16] {
        let off = Expectations {
            now: at + time::Duration::minutes(skew),
            ..expect
        };
        let err = sigv4::verify(&view, Payload::Body(body), &off, &ExampleKeys).unwrap_err();
        assert_eq!(err.aws_name(), "InvalidSignatureException");
        assert!(err.message().starts_with("Signature"), "{err}");
    }
    // 14 minutes late is still fine.
    let late = Expectations {
        now: at + time::Duration::minutes(14),
        ..expect
    };
    sigv4::verify(&view, Payload::Body(body), &late, &ExampleKeys).unwrap();
    // Wrong region, wrong service.
    let other_region = Expectations {
        region: "eu-west-1",
        ..expect
    };
    assert_eq!(
        name(sigv4::verify(
            &view,
            Payload::Body(body),
            &other_region,
            &ExampleKeys
        )),
        "InvalidSignatureException"
    );
    let other_service = Expectations {
        service: "s3",
        ..expect
    };
    assert_eq!(
        name(sigv4::verify(
            &view,
            Payload::Body(body),
            &other_service,
            &ExampleKeys
        )),
        "InvalidSignatureException"
    );
    // No Authorization at all.
    let bare = headers(&[("host", "127.0.0.1:4599")]);
    assert_eq!(
        name(sigv4::verify(
            &RequestView {
                headers: &bare,
                ..view
            },
            Payload::Body(body),
            &expect,
            &ExampleKeys
        )),
        "MissingAuthenticationTokenException"
    );
    // An unknown access key id.
    let stranger = SigningCredentials {
        access_key_id: "AKIASTRANGER".into(),
        ..credentials
    };
    let mut map2 = headers(&[("host", "127.0.0.1:4599")]);
    sigv4::sign_headers(
        &Signer::new(&stranger, "us-east-1", "kms", at),
        "POST",
        "/",
        "",
        &mut map2,
        Payload::Body(body),
    )
    .unwrap();
    assert_eq!(
        name(sigv4::verify(
            &RequestView {
                headers: &map2,
                ..view
            },
            Payload::Body(body),
            &expect,
            &ExampleKeys
        )),
        "UnrecognizedClientException"
    );
}
