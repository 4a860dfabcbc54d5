//! SigV4 on whatever a client sends. Two modes, chosen by the first byte:
//!
//! - even: the input is a request as text (method, path, query, header lines, an
//!   empty line, the body); verification and every parser must answer, never panic.
//!   Nothing the fuzzer writes can carry a valid signature, so verification failing
//!   is the expected answer; an accepted request would be a forgery.
//! - odd: the input is a request the gateway's own signer signs (header style, and a
//!   presigned URL); the verifier must accept exactly that request, and refuse it
//!   once one byte of its body, path or query changes.
#![no_main]

use atrest_fuzz::Input;
use gateway::sigv4::{
    self, Expectations, PathEncoding, Payload, RequestView, SecretLookup, Signer,
    SigningCredentials,
};
use gateway::GatewayError;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use zeroize::Zeroizing;

const ACCESS_KEY_ID: &str = "AKIAFUZZFUZZFUZZFUZZ";
const SECRET: &str = "fuzz/secret/access/key/of/forty/chars00";
const PRINCIPAL: &str = "arn:aws:iam::000000000000:user/fuzz";
/// The clock of every verification: 2026-01-02T03:04:05Z.
const NOW: i64 = 1_767_323_045;

struct OneKey;

impl SecretLookup for OneKey {
    fn lookup(&self, access_key_id: &str) -> Result<(Zeroizing<String>, String), GatewayError> {
        if access_key_id == ACCESS_KEY_ID {
            Ok((Zeroizing::new(SECRET.to_owned()), PRINCIPAL.to_owned()))
        } else {
            Err(GatewayError::UnrecognizedClient(
                "unknown access key".into(),
            ))
        }
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(NOW).expect("a valid time")
}

fn expect(service: &str, path_encoding: PathEncoding) -> Expectations<'_> {
    Expectations {
        service,
        region: "local",
        now: now(),
        path_encoding,
    }
}

fn text_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let method = lines.next().unwrap_or("GET");
    let target = lines.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    let view = RequestView {
        method,
        path,
        query,
        headers: &headers,
    };
    for (payload, encoding) in [
        (Payload::Body(body.as_bytes()), PathEncoding::Double),
        (Payload::Unsigned, PathEncoding::Single),
    ] {
        let verdict = sigv4::verify(&view, payload, &expect("s3", encoding), &OneKey);
        assert!(
            verdict.is_err(),
            "a request the fuzzer wrote verified: {verdict:?}"
        );
    }
    let _ = sigv4::present(&view);
    let _ = sigv4::parse_authorization(head);
    let _ = sigv4::parse_presigned(query);
    let _ = sigv4::parse_amz_date(target);
    let _ = sigv4::query_pairs(query);
    let _ = sigv4::uri_encode(path, false);
}

/// Printable text for a path or query from fuzzer bytes (the signer takes what a
/// client would put on the wire).
fn wire_text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| char::from(b'!' + b % 94))
        .filter(|&c| c != '#')
        .collect()
}

fn signed_request(input: &mut Input<'_>) {
    let credentials = SigningCredentials {
        access_key_id: ACCESS_KEY_ID.into(),
        secret_access_key: Zeroizing::new(SECRET.into()),
        session_token: None,
    };
    let signer = Signer::new(&credentials, "local", "kms", now());
    let method = ["GET", "PUT", "POST", "DELETE", "HEAD"][usize::from(input.u8() % 5)];
    let path_len = usize::from(input.u8() % 48);
    let path = format!("/{}", wire_text(input.bytes(path_len)).replace('?', "/"));
    let query_len = usize::from(input.u8() % 48);
    let query = wire_text(input.bytes(query_len)).replace('?', "&");
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:4599"));
    for _ in 0..input.u8() % 4 {
        let name_len = usize::from(input.u8() % 12) + 1;
        let name: String = input
            .bytes(name_len)
            .iter()
            .map(|&b| char::from(b'a' + b % 26))
            .collect();
        let value_len = usize::from(input.u8() % 24);
        let value = wire_text(input.bytes(value_len));
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(
                HeaderName::from_bytes(format!("x-amz-{name}").as_bytes()).expect("a header name"),
                value,
            );
        }
    }
    let body = input.rest().to_vec();
    if sigv4::sign_headers(
        &signer,
        method,
        &path,
        &query,
        &mut headers,
        Payload::Body(&body),
    )
    .is_err()
    {
        return;
    }
    let view = RequestView {
        method,
        path: &path,
        query: &query,
        headers: &headers,
    };
    let kms = expect("kms", PathEncoding::Double);
    let verified = sigv4::verify(&view, Payload::Body(&body), &kms, &OneKey)
        .unwrap_or_else(|err| panic!("the signer's own request was refused: {err}"));
    assert_eq!(verified.principal, PRINCIPAL);

    let mut tampered = body.clone();
    match tampered.first_mut() {
        Some(byte) => *byte ^= 1,
        None => tampered.push(0),
    }
    assert!(
        sigv4::verify(&view, Payload::Body(&tampered), &kms, &OneKey).is_err(),
        "a changed body still verified"
    );
    let other_path = format!("{path}x");
    let moved = RequestView {
        path: &other_path,
        ..view
    };
    assert!(
        sigv4::verify(&moved, Payload::Body(&body), &kms, &OneKey).is_err(),
        "a changed path still verified"
    );

    let presign_signer = Signer::new(&credentials, "local", "s3", now());
    let Ok(presigned) = sigv4::presign_query(
        &presign_signer,
        method,
        "127.0.0.1:4599",
        &path,
        &[],
        300,
        PathEncoding::Single,
    ) else {
        return;
    };
    let mut host_only = HeaderMap::new();
    host_only.insert("host", HeaderValue::from_static("127.0.0.1:4599"));
    let url = RequestView {
        method,
        path: &path,
        query: &presigned,
        headers: &host_only,
    };
    let s3 = expect("s3", PathEncoding::Single);
    sigv4::verify(&url, Payload::Unsigned, &s3, &OneKey)
        .unwrap_or_else(|err| panic!("the signer's own presigned URL was refused: {err}"));
    let extended = format!("{presigned}&extra=1");
    let changed = RequestView {
        query: &extended,
        ..url
    };
    assert!(
        sigv4::verify(&changed, Payload::Unsigned, &s3, &OneKey).is_err(),
        "a presigned URL with an added parameter still verified"
    );
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let mut input = Input::new(data);
    if input.u8() % 2 == 0 {
        text_request(input.rest());
    } else {
        signed_request(&mut input);
    }
});
