//! The web console at `/console/`: the lab's pages (keys, buckets and objects, the
//! event history) served by the gateway itself, with their assets built in.
//!
//! The pages are static (HTML, CSS, one script; no inline script, so the
//! Content-Security-Policy allows scripts from this origin only) and talk to a small
//! JSON API under `/console/api/`. A session is opened by signing in with an access
//! key of `atrest iam create-access-key`; every KMS and S3 action then goes through
//! [`calls`], which signs the AWS request with that key and hands it to the gateway's
//! entry point, so key and bucket policies decide and the trail names the principal.
//! The event history reads the home's trail with [`crypto_core::trail`].
//!
//! Security: the session cookie is HttpOnly, SameSite=Strict, and Secure under TLS;
//! sessions expire when idle; every request that changes state carries the session's
//! CSRF token in `X-CSRF-Token` and a JSON (or upload) content type; the secret never
//! leaves [`session::Session`]; failed sign-ins are recorded in the trail as refused
//! `ConsoleLogin` calls and throttled per address.

mod calls;
mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crypto_core::trail::{digest, EventSource, LookupFilter, RefusedCaller, RefusedRequest, Trail};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use self::calls::{Caller, S3Payload};
use self::session::{Session, Sessions, COOKIE};
use crate::server::{Body, Chunk, Gateway, RequestBody};
use crate::sigv4::{self, Expectations, PathEncoding, Payload, SigningCredentials};

/// How long a console session lasts without use, unless configured otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Largest JSON request the console API reads (a key policy is at most 32 KiB).
const MAX_API_BODY: usize = 256 * 1024;
/// How long an "Open" (presigned) URL made by the console stays valid.
const PRESIGNED_SECONDS: u32 = 300;
/// Most events in one page of the event history.
const MAX_EVENTS_PAGE: usize = 200;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
/// The tab icon (without it, browsers ask for `/favicon.ico`, an anonymous S3 request).
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// The pages' policy: scripts, styles and connections to this origin only, images
/// also from `blob:` (upload previews); no frames, no plugins, no inline anything.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' blob:; connect-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// KMS operations the console performs. Operations that answer with plaintext
/// (Decrypt, GenerateDataKey, ...) are not among them: no data key ever reaches a
/// page.
const KMS_OPERATIONS: &[&str] = &[
    "CancelKeyDeletion",
    "CreateAlias",
    "CreateKey",
    "DescribeKey",
    "DisableKey",
    "DisableKeyRotation",
    "EnableKey",
    "EnableKeyRotation",
    "GetKeyPolicy",
    "GetKeyRotationStatus",
    "ListAliases",
    "ListKeyRotations",
    "ListKeys",
    "ListResourceTags",
    "PutKeyPolicy",
    "RotateKeyOnDemand",
    "ScheduleKeyDeletion",
    "TagResource",
    "UpdateKeyDescription",
];

/// The object subresources a page may GET (`?acl`, `?tagging`).
const OBJECT_SUBRESOURCES: &[&str] = &["acl", "tagging"];

/// Request headers a page may set on an S3 request.
const S3_HEADERS: &[&str] = &[
    "content-type",
    "x-amz-acl",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-bucket-key-enabled",
];

/// The console of one gateway: its home (for the trail) and its sessions.
#[derive(Debug)]
pub struct Console {
    home: PathBuf,
    sessions: Sessions,
    /// Where the volumes page looks for volumes (`<home>/volumes` unless configured).
    volume_dirs: Vec<PathBuf>,
}

impl Console {
    /// A console over the state directory `home`, whose sessions end after `idle`
    /// without a request.
    pub fn new(home: &Path, idle: Duration) -> Console {
        Console {
            home: home.to_owned(),
            sessions: Sessions::new(idle),
            volume_dirs: vec![home.join("volumes")],
        }
    }

    /// The same console listing the volumes of `dirs` (besides `<home>/volumes`).
    pub fn with_volume_dirs(mut self, dirs: &[PathBuf]) -> Console {
        for dir in dirs {
            if !self.volume_dirs.contains(dir) {
                self.volume_dirs.push(dir.clone());
            }
        }
        self
    }
}

/// Whether `path` is the console's (`/console` and below).
pub(crate) fn owns(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// A refusal of the console API: an HTTP status and an AWS-style error body.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }
}

impl From<crate::GatewayError> for Refusal {
    fn from(err: crate::GatewayError) -> Refusal {
        Refusal::new(
            StatusCode::from_u16(err.reply(crate::error::Protocol::Json).status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "ConsoleError",
            err.message(),
        )
    }
}

/// Answers a request for a console path. Boxed: the console's own API calls go
/// back through the gateway's entry point, which calls this.
pub(crate) fn respond(
    gateway: Arc<Gateway>,
    request: Request<impl RequestBody>,
    peer: SocketAddr,
) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
    Box::pin(answer(gateway, request, peer))
}

async fn answer(
    gateway: Arc<Gateway>,
    request: Request<impl RequestBody>,
    peer: SocketAddr,
) -> Response<Body> {
    let secure = request
        .extensions()
        .get::<crate::s3::SecureTransport>()
        .is_some();
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let mut response = match (&method, path.as_str()) {
        (&Method::GET, "/console") => {
            let mut response = reply(StatusCode::MOVED_PERMANENTLY, "text/plain", Bytes::new());
            response.headers_mut().insert(
                http::header::LOCATION,
                HeaderValue::from_static("/console/"),
            );
            response
        }
        (&Method::GET, "/console/" | "/console/index.html") => asset(INDEX_HTML, "text/html"),
        (&Method::GET, "/console/app.js") => asset(APP_JS, "text/javascript"),
        (&Method::GET, "/console/app.css") => asset(APP_CSS, "text/css"),
        (&Method::GET, "/console/favicon.svg") => asset(FAVICON_SVG, "image/svg+xml"),
        (_, api) if api.starts_with("/console/api/") => {
            match answer_api(&gateway, request, peer, secure).await {
                Ok(response) => response,
                Err(refusal) => refused(&refusal),
            }
        }
        _ => refused(&Refusal::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such console page",
        )),
    };
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = reply(
        StatusCode::OK,
        content_type,
        Bytes::from_static(text.as_bytes()),
    );
    if content_type == "text/html" {
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    response
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::whole(Chunk::Bytes(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

fn json_reply(status: StatusCode, value: &Value) -> Response<Body> {
    reply(
        status,
        "application/json",
        Bytes::from(value.to_string().into_bytes()),
    )
}

fn refused(refusal: &Refusal) -> Response<Body> {
    json_reply(
        refusal.status,
        &json!({ "__type": refusal.code, "message": refusal.message }),
    )
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The session token of the request's cookie.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn session_cookie(token: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
    let mut cookie = format!("{COOKIE}={token}; Path=/console/; HttpOnly; SameSite=Strict");
    if secure {
        cookie.push_str("; Secure");
    }
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Reads a JSON request body of at most [`MAX_API_BODY`] bytes into a buffer wiped
/// when dropped (a sign-in carries a secret).
async fn read_json(body: impl RequestBody) -> Result<Zeroizing<Vec<u8>>, Refusal> {
    let mut body = body;
    let mut bytes = Zeroizing::new(Vec::with_capacity(4096));
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Refusal::bad(format!("the request body could not be read ({e})")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_API_BODY {
                return Err(Refusal::bad(format!(
                    "the request body exceeds {MAX_API_BODY} bytes"
                )));
            }
            if bytes.len() + data.len() > bytes.capacity() {
                let mut grown = Zeroizing::new(Vec::with_capacity(
                    (bytes.len() + data.len()).max(bytes.capacity() * 2),
                ));
                grown.extend_from_slice(&bytes);
                bytes = grown;
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| Refusal::bad(format!("malformed request: {e}")))
}

async fn answer_api(
    gateway: &Arc<Gateway>,
    request: Request<impl RequestBody>,
    peer: SocketAddr,
    secure: bool,
) -> Result<Response<Body>, Refusal> {
    let Some(console) = gateway.console.as_ref() else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no console here",
        ));
    };
    let (parts, body) = request.into_parts();
    let endpoint = parts
        .uri
        .path()
        .trim_start_matches("/console/api/")
        .to_owned();
    let changes_state = parts.method != Method::GET && parts.method != Method::HEAD;
    if changes_state {
        // A cross-site form cannot send these types without a CORS preflight, which
        // this origin never grants.
        let content_type = header_text(&parts.headers, "content-type").unwrap_or("");
        let expected = if endpoint == "upload" {
            true
        } else {
            content_type.starts_with("application/json")
        };
        if !expected {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "console API requests are JSON",
            ));
        }
    }
    if (&parts.method, endpoint.as_str()) == (&Method::POST, "signin") {
        return sign_in(gateway, console, body, peer, secure).await;
    }
    let token = cookie_token(&parts.headers);
    let session = token
        .as_deref()
        .and_then(|t| console.sessions.find(t))
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "NotSignedIn",
                "sign in first (or again: sessions end after a while without use)",
            )
        })?;
    if changes_state && !session.csrf_matches(header_text(&parts.headers, "x-csrf-token")) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "InvalidCsrfToken",
            "this request lacks the session's X-CSRF-Token",
        ));
    }
    let caller = Caller {
        gateway,
        session: &session,
        peer,
        host: header_text(&parts.headers, "host")
            .unwrap_or("localhost")
            .to_owned(),
        user_agent: header_text(&parts.headers, "user-agent")
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect(),
    };
    match (parts.method.clone(), endpoint.as_str()) {
        (Method::GET, "session") => {
            Ok(json_reply(StatusCode::OK, &session_view(&session, console)))
        }
        (Method::POST, "signout") => {
            if let Some(token) = &token {
                console.sessions.close(token);
            }
            let mut response = json_reply(StatusCode::OK, &json!({ "signedOut": true }));
            response.headers_mut().insert(
                http::header::SET_COOKIE,
                session_cookie("", secure, Some(0)),
            );
            Ok(response)
        }
        (Method::POST, "kms") => kms(&caller, &read_json(body).await?).await,
        (Method::POST, "s3") => s3(&caller, &read_json(body).await?).await,
        (Method::PUT, "upload") => upload(&caller, &parts, body).await,
        (Method::POST, "presign") => presign(&caller, &read_json(body).await?),
        (Method::GET, "events") => events(gateway, console, parts.uri.query().unwrap_or("")).await,
        (Method::GET, "activity") => activity(gateway, console).await,
        (Method::GET, "validate") => validate(console, gateway).await,
        (Method::GET, "volumes") => volumes(&caller, console).await,
        _ => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no console API {} {endpoint}", parts.method),
        )),
    }
}

fn session_view(session: &Session, console: &Console) -> Value {
    json!({
        "principal": session.principal,
        "accessKeyId": session.credentials.access_key_id,
        "csrf": session.csrf,
        "idleSeconds": console.sessions.idle().as_secs(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignIn {
    access_key_id: String,
    /// Moved into a [`Zeroizing`] as soon as parsed.
    secret_access_key: String,
}

/// Checks the access key the way the API does (a request signed with it must
/// verify against the gateway's access keys), then opens a session. A refusal is
/// recorded in the trail as a refused `ConsoleLogin` with the claimed key.
async fn sign_in(
    gateway: &Arc<Gateway>,
    console: &Console,
    body: impl RequestBody,
    peer: SocketAddr,
    secure: bool,
) -> Result<Response<Body>, Refusal> {
    let bytes = read_json(body).await?;
    let SignIn {
        access_key_id,
        secret_access_key,
    } = parse(&bytes)?;
    let secret_access_key = Zeroizing::new(secret_access_key);
    if !console.sessions.may_try(peer.ip()) {
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyFailedSignIns",
            "too many failed sign-ins from this address: wait a few minutes",
        ));
    }
    let credentials = SigningCredentials {
        access_key_id: access_key_id.trim().to_owned(),
        secret_access_key: Zeroizing::new(secret_access_key.trim().to_owned()),
        session_token: None,
    };
    let checked = {
        let gateway = Arc::clone(gateway);
        tokio::task::spawn_blocking(move || {
            let verified = verify_credentials(&gateway, &credentials);
            if let Err(err) = &verified {
                gateway.record_refusal(RefusedRequest {
                    event_time: gateway.now(),
                    event_source: EventSource::Kms,
                    event_name: "ConsoleLogin".into(),
                    caller: RefusedCaller::Unknown,
                    error_code: err.aws_name().to_owned(),
                    error_message: format!("Failed authentication: {}", err.message()),
                    request_parameters: Value::Null,
                    read_only: true,
                    source: crypto_core::trail::RequestSource::remote(
                        peer.ip(),
                        Some(b"atrest-console"),
                        Some(&credentials.access_key_id),
                    ),
                });
            }
            verified.map(|principal| (credentials, principal))
        })
        .await
        .map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                e.to_string(),
            )
        })?
    };
    match checked {
        Ok((credentials, principal)) => {
            let (token, session) = console.sessions.open(credentials, principal);
            let mut response = json_reply(StatusCode::OK, &session_view(&session, console));
            response.headers_mut().insert(
                http::header::SET_COOKIE,
                session_cookie(&token, secure, None),
            );
            Ok(response)
        }
        Err(err) => {
            console.sessions.failed(peer.ip());
            tracing::info!(source = %peer.ip(), "refused console sign-in: {}", err.aws_name());
            Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "SignInRefused",
                "the access key id or secret is wrong, or the key is inactive",
            ))
        }
    }
}

/// The principal of `credentials` when a request signed with them verifies.
fn verify_credentials(
    gateway: &Gateway,
    credentials: &SigningCredentials,
) -> Result<String, crate::GatewayError> {
    let now = gateway.now();
    let signer = sigv4::Signer::new(credentials, gateway.region(), "kms", now);
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("console"));
    sigv4::sign_headers(&signer, "POST", "/", "", &mut headers, Payload::Body(b""))?;
    let view = sigv4::RequestView {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
    };
    let expect = Expectations {
        service: "kms",
        region: gateway.region(),
        now,
        path_encoding: PathEncoding::Double,
    };
    sigv4::verify(&view, Payload::Body(b""), &expect, gateway.credentials())
        .map(|verified| verified.principal)
}

#[derive(Deserialize)]
struct KmsCall {
    operation: String,
    #[serde(default)]
    input: Value,
}

async fn kms(caller: &Caller<'_>, bytes: &[u8]) -> Result<Response<Body>, Refusal> {
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
fn object_path(bucket: &str, key: &str) -> String {
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
async fn s3(caller: &Caller<'_>, bytes: &[u8]) -> Result<Response<Body>, Refusal> {
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
async fn upload(
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

fn presign(caller: &Caller<'_>, bytes: &[u8]) -> Result<Response<Body>, Refusal> {
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

fn open_trail(gateway: &Gateway, console: &Console) -> Result<Trail, Refusal> {
    Trail::open(
        &console.home.join("trail"),
        gateway.kms().region(),
        gateway.kms().account(),
    )
    .map_err(|e| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "TrailError",
            e.to_string(),
        )
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            e.to_string(),
        )
    })?
}

/// `GET events?eventName=&keyId=&user=&before=&max=`: a page of the trail, newest
/// first, like `atrest trail lookup`.
async fn events(
    gateway: &Arc<Gateway>,
    console: &Console,
    query: &str,
) -> Result<Response<Body>, Refusal> {
    let pairs = sigv4::query_pairs(query)?;
    let find = |name: &str| {
        pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let before = find("before")
        .map(|b| {
            b.parse::<u64>()
                .map_err(|_| Refusal::bad("before is a sequence number"))
        })
        .transpose()?;
    let max = find("max")
        .map(|m| {
            m.parse::<usize>()
                .map_err(|_| Refusal::bad("max is a count"))
        })
        .transpose()?
        .unwrap_or(50)
        .clamp(1, MAX_EVENTS_PAGE);
    let filter = LookupFilter {
        event_name: find("eventName"),
        key_id: find("keyId"),
        principal: find("user"),
        start_time: None,
        end_time: None,
        max_results: Some(max),
        before_sequence: before,
    };
    let trail = open_trail(gateway, console)?;
    let page = blocking(move || {
        trail.lookup_page(&filter).map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "TrailError",
                e.to_string(),
            )
        })
    })
    .await?;
    let events: Vec<&Value> = page.records.iter().map(|r| &r.event).collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "events": events, "before": page.next_before }),
    ))
}

/// `GET activity`: calls per minute by event name over the last hour.
async fn activity(gateway: &Arc<Gateway>, console: &Console) -> Result<Response<Body>, Refusal> {
    let now = gateway.now();
    let start = now - time::Duration::hours(1);
    let filter = LookupFilter {
        event_name: None,
        key_id: None,
        principal: None,
        start_time: Some(start),
        end_time: None,
        max_results: Some(100_000),
        before_sequence: None,
    };
    let trail = open_trail(gateway, console)?;
    let records = blocking(move || {
        trail.lookup(&filter).map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "TrailError",
                e.to_string(),
            )
        })
    })
    .await?;
    let mut series: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for record in &records {
        let (Some(name), Some(when)) = (
            record.event["eventName"].as_str(),
            record.event["eventTime"].as_str(),
        ) else {
            continue;
        };
        let Ok(when) =
            time::OffsetDateTime::parse(when, &time::format_description::well_known::Rfc3339)
        else {
            continue;
        };
        let minute = (when - start).whole_minutes();
        if let Ok(minute @ 0..=59) = usize::try_from(minute) {
            series.entry(name.to_owned()).or_insert_with(|| vec![0; 60])[minute] += 1;
        }
    }
    let start_text = start
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "start": start_text, "minutes": 60, "series": series }),
    ))
}

/// `GET validate`: the chain and the signed digests, as `atrest trail validate`.
async fn validate(console: &Console, gateway: &Arc<Gateway>) -> Result<Response<Body>, Refusal> {
    let trail = open_trail(gateway, console)?;
    let dir = console.home.join("trail");
    let result = blocking(move || {
        let chain = match trail.validate_against(None) {
            Ok(report) => report,
            Err(e) => return Ok(json!({ "valid": false, "error": format!("chain: {e}") })),
        };
        let digests = match digest::validate_digests(&dir, None) {
            Ok(report) => report,
            Err(e) => return Ok(json!({ "valid": false, "error": format!("digests: {e}") })),
        };
        let last_digest = digests.last_digest_time.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
        Ok(json!({
            "valid": true,
            "records": chain.records,
            "lastSequence": chain.last_sequence,
            "lastHash": chain.last_hash,
            "notes": chain.notes,
            "digests": digests.digests,
            "digestedRecords": digests.records,
            "digestPublicKey": digests.public_key,
            "lastDigestTime": last_digest,
        }))
    })
    .await?;
    Ok(json_reply(StatusCode::OK, &result))
}

/// What the volumes page shows of one file.
fn describe_volume(path: &Path) -> Value {
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(path).map(|m| m.blocks() * 512).ok();
    let header = blockdev::volume::open_volume_file(path, false)
        .and_then(|file| blockdev::format::read_header(&file, path));
    match header {
        Ok(located) => {
            let key = match located.header.encryption() {
                blockdev::format::Encryption::Aes256XtsPlain64(wrapped) => {
                    Some(wrapped.key_arn.clone())
                }
                blockdev::format::Encryption::None => None,
            };
            json!({
                "path": path.display().to_string(),
                "volumeId": located.header.volume_id().to_string(),
                "size": located.header.size(),
                "allocated": allocated,
                "encrypted": key.is_some(),
                "keyArn": key,
                "warning": located.warning,
            })
        }
        Err(err) => json!({
            "path": path.display().to_string(),
            "allocated": allocated,
            "error": err.to_string(),
        }),
    }
}

/// `GET volumes`: the volumes under the configured directories, each encrypted one
/// with its key's state as the signed-in principal may see it (DescribeKey through
/// the API: a principal the key policy does not allow sees AccessDeniedException).
async fn volumes(caller: &Caller<'_>, console: &Console) -> Result<Response<Body>, Refusal> {
    let dirs = console.volume_dirs.clone();
    let mut listed = blocking(move || {
        let mut volumes = Vec::new();
        for dir in &dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "vol"))
                .collect();
            paths.sort();
            volumes.extend(paths.iter().map(|p| describe_volume(p)));
        }
        Ok(volumes)
    })
    .await?;
    let mut states: std::collections::BTreeMap<String, Value> = Default::default();
    for volume in &mut listed {
        let Some(arn) = volume["keyArn"].as_str().map(str::to_owned) else {
            continue;
        };
        if !states.contains_key(&arn) {
            let input = json!({ "KeyId": arn }).to_string();
            let answer = caller.kms("DescribeKey", Bytes::from(input)).await?;
            let parsed: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            let state = match parsed["KeyMetadata"]["KeyState"].as_str() {
                Some(state) => json!(state),
                None => json!(parsed["__type"].as_str().unwrap_or("unknown")),
            };
            states.insert(arn.clone(), state);
        }
        volume["keyState"] = states[&arn].clone();
    }
    let dirs: Vec<String> = console
        .volume_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "directories": dirs, "volumes": listed }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_owns_its_prefix_only() {
        assert!(owns("/console"));
        assert!(owns("/console/"));
        assert!(owns("/console/api/kms"));
        assert!(!owns("/consoles/key"));
        assert!(!owns("/"));
        assert!(!owns("/bucket/console/x"));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; atrest_console=tok; b=2"),
        );
        assert_eq!(cookie_token(&headers).as_deref(), Some("tok"));
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_tls() {
        let plain = session_cookie("t", false, None);
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        assert!(session_cookie("t", true, None)
            .to_str()
            .unwrap()
            .contains("; Secure"));
    }

    #[test]
    fn object_paths_are_encoded_per_segment() {
        assert_eq!(object_path("b", "a/<img>.png"), "/b/a/%3Cimg%3E.png");
        assert_eq!(object_path("b", ""), "/b");
        assert_eq!(object_path("", ""), "/");
    }

    #[test]
    fn plaintext_operations_are_not_offered() {
        for op in [
            "Decrypt",
            "GenerateDataKey",
            "Encrypt",
            "ReEncrypt",
            "GenerateRandom",
        ] {
            assert!(!KMS_OPERATIONS.contains(&op));
        }
    }

    #[test]
    fn assets_have_no_inline_script_or_handlers() {
        let lower = INDEX_HTML.to_ascii_lowercase();
        assert_eq!(lower.matches("<script").count(), 1);
        assert!(lower.contains("<script src=\"/console/app.js\"></script>"));
        // No inline event handler attribute (` onload=`, ` onclick=` ...).
        let handlers = lower.match_indices(" on").filter(|(at, _)| {
            let rest = &lower[at + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        });
        assert_eq!(handlers.count(), 0);
        assert!(!APP_JS.contains("innerHTML"));
        assert!(!APP_JS.contains("eval("));
    }
}
