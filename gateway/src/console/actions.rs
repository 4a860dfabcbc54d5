//! The AWS calls a page makes through its session: KMS operations, small S3
//! requests, uploads streamed into PutObject, and presigned URLs.

use super::calls::{self, Caller, S3Payload};
use super::{
    header_text, json_reply, parse, reply, Refusal, KMS_OPERATIONS, OBJECT_SUBRESOURCES,
    PRESIGNED_SECONDS, S3_HEADERS,
};
use crate::server::{Body, RequestBody};
use crate::sigv4;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct KmsCall {
    operation: String,
    #[serde(default)]
    input: Value,
}

pub(super) async fn kms(caller: &Caller<'_>, bytes: &[u8]) -> Result<Response<Body>, Refusal> {
    let call: KmsCall = parse(bytes)?;
    if !KMS_OPERATIONS.contains(&call.operation.as_str()) {
        return Err(Refusal::bad(format!(
            "the console does not perform KMS {}",
            call.operation
        )));
    }
    let input = match call.input {
        Value::Null => json!({}),
        input => input,
    };
    let answer = caller
        .kms(&call.operation, Bytes::from(input.to_string().into_bytes()))
        .await?;
    Ok(reply(answer.status, "application/json", answer.body))
}

#[derive(Deserialize)]
struct S3Call {
    method: String,
    #[serde(default)]
    bucket: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    query: Vec<(String, String)>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

/// The URI-encoded path of `key` in `bucket` (path-style).
pub(super) fn object_path(bucket: &str, key: &str) -> String {
    match (bucket.is_empty(), key.is_empty()) {
        (true, _) => "/".to_owned(),
        (false, true) => format!("/{}", sigv4::uri_encode(bucket, true)),
        (false, false) => format!(
            "/{}/{}",
            sigv4::uri_encode(bucket, true),
            sigv4::uri_encode(key, false)
        ),
    }
}

fn allowed_headers<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<HeaderMap, Refusal> {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let name = name.to_ascii_lowercase();
        let Some(allowed) = S3_HEADERS.iter().find(|h| **h == name) else {
            continue;
        };
        let value = HeaderValue::from_str(value)
            .map_err(|_| Refusal::bad(format!("header {name} cannot carry that value")))?;
        headers.insert(*allowed, value);
    }
    Ok(headers)
}

/// An S3 request of a page: bucket and object operations whose answers are small
/// (an object's content is read through a presigned URL, never through here).
pub(super) async fn s3(caller: &Caller<'_>, bytes: &[u8]) -> Result<Response<Body>, Refusal> {
    let call: S3Call = parse(bytes)?;
    let method = match call.method.as_str() {
        "GET" | "PUT" | "DELETE" | "HEAD" => call.method.as_str(),
        other => {
            return Err(Refusal::bad(format!(
                "the console does not send S3 {other}"
            )))
        }
    };
    // An object's content never passes through here (it is read through a presigned
    // URL): on an object, GET only reads a subresource.
    let subresource = call
        .query
        .iter()
        .any(|(k, _)| OBJECT_SUBRESOURCES.contains(&k.as_str()));
    if method == "GET" && !call.key.is_empty() && !subresource {
        return Err(Refusal::bad(
            "objects are read through a presigned URL (presign), not the console API",
        ));
    }
    let path = object_path(&call.bucket, &call.key);
    let query = call
        .query
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                sigv4::uri_encode(k, true)
            } else {
                format!(
                    "{}={}",
                    sigv4::uri_encode(k, true),
                    sigv4::uri_encode(v, true)
                )
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    let headers = allowed_headers(call.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let response = caller
        .s3(
            method,
            &path,
            &query,
            headers,
            S3Payload::<http_body_util::Empty<Bytes>>::Small(Bytes::from(call.body.into_bytes())),
        )
        .await?;
    s3_view(response).await
}

/// An S3 answer as the page reads it: status, headers, and the (XML) body as text.
async fn s3_view(response: Response<Body>) -> Result<Response<Body>, Refusal> {
    let answer = calls::read_whole(response).await?;
    let headers: serde_json::Map<String, Value> = answer
        .headers
        .iter()
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_owned(), Value::from(v)))
        })
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "status": answer.status.as_u16(),
            "headers": headers,
            "body": String::from_utf8_lossy(&answer.body),
        }),
    ))
}

/// `PUT /console/api/upload?bucket=B&key=K`: the body streams into PutObject.
pub(super) async fn upload(
    caller: &Caller<'_>,
    parts: &http::request::Parts,
    body: impl RequestBody,
) -> Result<Response<Body>, Refusal> {
    let pairs = sigv4::query_pairs(parts.uri.query().unwrap_or(""))?;
    let find = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let (bucket, key) = (find("bucket"), find("key"));
    if bucket.is_empty() || key.is_empty() {
        return Err(Refusal::bad("an upload names its bucket and key"));
    }
    let length = header_text(&parts.headers, "content-length")
        .ok_or_else(|| Refusal::bad("an upload states its Content-Length"))?;
    let mut headers = allowed_headers(
        parts
            .headers
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))),
    )?;
    headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from_str(length).map_err(|_| Refusal::bad("bad Content-Length"))?,
    );
    let response = caller
        .s3(
            "PUT",
            &object_path(bucket, key),
            "",
            headers,
            S3Payload::Stream(body),
        )
        .await?;
    s3_view(response).await
}

#[derive(Deserialize)]
struct PresignCall {
    bucket: String,
    key: String,
}

pub(super) fn presign(caller: &Caller<'_>, bytes: &[u8]) -> Result<Response<Body>, Refusal> {
    let call: PresignCall = parse(bytes)?;
    if call.bucket.is_empty() || call.key.is_empty() {
        return Err(Refusal::bad("presign names a bucket and a key"));
    }
    let url = caller.presign_get(&object_path(&call.bucket, &call.key), PRESIGNED_SECONDS)?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "url": url, "expiresIn": PRESIGNED_SECONDS }),
    ))
}
