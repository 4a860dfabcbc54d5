use super::*;

#[test]
fn uri_encoding_keeps_only_unreserved() {
    assert_eq!(uri_encode("a-b_c.d~e", true), "a-b_c.d~e");
    assert_eq!(uri_encode("a b/c", true), "a%20b%2Fc");
    assert_eq!(uri_encode("a b/c", false), "a%20b/c");
    assert_eq!(uri_encode("é", true), "%C3%A9");
}

#[test]
fn canonical_uris() {
    assert_eq!(canonical_uri("", PathEncoding::Double).unwrap(), "/");
    assert_eq!(
        canonical_uri("/a%20b/./c/../d", PathEncoding::Double).unwrap(),
        "/a%2520b/d"
    );
    assert_eq!(
        canonical_uri("/bucket/my%20key//x", PathEncoding::Single).unwrap(),
        "/bucket/my%20key//x"
    );
    assert!(canonical_uri("/bad%zz", PathEncoding::Single).is_err());
    assert!(canonical_uri("/bad%2", PathEncoding::Single).is_err());
}

#[test]
fn authorization_header_parses_and_rejects_garbage() {
    let header = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
                  SignedHeaders=content-type;host;x-amz-date, \
                  Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
    let parsed = parse_authorization(header).unwrap();
    assert_eq!(parsed.access_key_id, "AKIDEXAMPLE");
    assert_eq!(parsed.scope.service, "iam");
    assert_eq!(
        parsed.signed_headers,
        ["content-type", "host", "x-amz-date"]
    );
    for bad in [
        "",
        "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=zz",
        "AWS4-HMAC-SHA256 Credential=AKID/2015/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request, SignedHeaders=Host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request, Credential=x, SignedHeaders=host",
        "AWS4-HMAC-SHA256 Nonsense",
    ] {
        assert!(parse_authorization(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn amz_dates_round_trip_and_reject_garbage() {
    let t = parse_amz_date("20150830T123600Z").unwrap();
    assert_eq!(amz_date(t), "20150830T123600Z");
    for bad in [
        "",
        "20150830",
        "20151330T123600Z",
        "20150830T123600",
        "2015-08-30T12:36:00Z",
    ] {
        assert!(parse_amz_date(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn query_pairs_decode_and_canonicalise() {
    let pairs = query_pairs("b=2&a=x%20y&c").unwrap();
    assert_eq!(canonical_query(&pairs), "a=x%20y&b=2&c=");
    assert!(query_pairs("a=%G0").is_err());
}

#[test]
fn the_claimed_access_key_is_read_from_malformed_requests_too() {
    let claimed = |auth: Option<&str>, query: &str| {
        let mut headers = http::HeaderMap::new();
        if let Some(auth) = auth {
            headers.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(auth).unwrap(),
            );
        }
        claimed_access_key_id(&RequestView {
            method: "GET",
            path: "/",
            query,
            headers: &headers,
        })
    };
    let header = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261206/us-east-1/kms/aws4_request, \
                  SignedHeaders=host, Signature=zz";
    assert_eq!(claimed(Some(header), "").as_deref(), Some("AKIDEXAMPLE"));
    assert_eq!(
        claimed(Some("AWS4-HMAC-SHA256 Credential=AKIDONLY"), "").as_deref(),
        Some("AKIDONLY")
    );
    assert_eq!(
        claimed(
            None,
            "X-Amz-Credential=AKIDQ%2F20261206%2Fx%2Fs3%2Faws4_request"
        )
        .as_deref(),
        Some("AKIDQ")
    );
    assert_eq!(claimed(Some("Basic dXNlcjpwYXNz"), ""), None);
    assert_eq!(claimed(Some("AWS4-HMAC-SHA256 Credential=/x"), ""), None);
    assert_eq!(claimed(None, "a=%zz"), None);
}

struct OneKey;

impl SecretLookup for OneKey {
    fn lookup(&self, id: &str) -> Result<(Zeroizing<String>, String), GatewayError> {
        match id {
            "AKIDPOST" => Ok((
                Zeroizing::new("secret".to_owned()),
                "arn:aws:iam::000000000000:user/u".to_owned(),
            )),
            _ => Err(GatewayError::UnrecognizedClient("unknown".into())),
        }
    }
}

#[test]
fn post_policies_verify_under_their_credential_scope() {
    let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let credentials = SigningCredentials {
        access_key_id: "AKIDPOST".into(),
        secret_access_key: Zeroizing::new("secret".into()),
        session_token: None,
    };
    let signer = Signer::new(&credentials, "us-east-1", "s3", now);
    let signature = sign_post_policy(&signer, "cG9saWN5");
    let credential = format!("AKIDPOST/{}/us-east-1/s3/aws4_request", signer.scope.date);
    let date = amz_date(now);
    let expect = Expectations {
        service: "s3",
        region: "us-east-1",
        now,
        path_encoding: PathEncoding::Single,
    };
    let verify = |policy: &str, credential: &str, date: &str, expect: &Expectations<'_>| {
        verify_post_policy(policy, credential, date, &signature, expect, &OneKey)
    };
    let verified = verify("cG9saWN5", &credential, &date, &expect).unwrap();
    assert_eq!(verified.principal, "arn:aws:iam::000000000000:user/u");
    // Another policy, another region or service, a date outside the scope's day,
    // a date well ahead of the clock, an unknown key: refused.
    let mismatch = verify("cG9saWN6", &credential, &date, &expect).unwrap_err();
    assert_eq!(mismatch.s3_code(), "SignatureDoesNotMatch");
    let elsewhere = credential.replace("us-east-1", "eu-west-1");
    assert!(verify("cG9saWN5", &elsewhere, &date, &expect).is_err());
    let kms = credential.replace("/s3/", "/kms/");
    assert!(verify("cG9saWN5", &kms, &date, &expect).is_err());
    let later = amz_date(now + Duration::days(1));
    assert!(verify("cG9saWN5", &credential, &later, &expect).is_err());
    let earlier = Expectations {
        now: now - Duration::hours(1),
        ..expect
    };
    let skew = verify("cG9saWN5", &credential, &date, &earlier).unwrap_err();
    assert_eq!(skew.s3_code(), "RequestTimeTooSkewed");
    let unknown = credential.replace("AKIDPOST", "AKIDOTHER");
    assert!(verify("cG9saWN5", &unknown, &date, &expect).is_err());
}
