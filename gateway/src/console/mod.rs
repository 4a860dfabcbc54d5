//! The web console at `/console/`: the lab's pages (keys, buckets and objects, the
//! event history) served by the gateway itself, with their assets built in.
//!
//! The pages are static (HTML, CSS, one script; no inline script, so the
//! Content-Security-Policy allows scripts from this origin only) and talk to a small
//! JSON API under `/console/api/`. A session is opened by signing in with an access
//! key of `atrest iam create-access-key`; every KMS and S3 action then goes through
//! [`calls`], which signs the AWS request with that key and hands it to the gateway's
//! entry point, so key and bucket policies decide and the trail names the principal.
//! The event history reads the home's trail with [`crypto_core::trail`]. The
//! volumes page's actions (create, snapshot, encrypted copy, rewrap, swap an export
//! of a running NBD server) run the CLI's lifecycle code with a key service whose
//! calls go through [`calls`] the same way ([`volume_actions`]); the exports page
//! reads the status files of running `atrest nbd serve` processes.
//!
//! Security: the session cookie is HttpOnly, SameSite=Strict, and Secure under TLS;
//! sessions expire when idle; every request that changes state carries the session's
//! CSRF token in `X-CSRF-Token` and a JSON (or upload) content type; the secret never
//! leaves [`session::Session`]; sign-ins are recorded in the trail as `ConsoleLogin`
//! events (failed ones as refused, and throttled per address).

mod actions;
mod calls;
mod history;
mod session;
mod signin;
#[cfg(test)]
mod tests;
mod volume_actions;
mod volumes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use self::actions::{kms, presign, s3, upload};
use self::calls::Caller;
use self::history::{activity, events, validate};
use self::session::{Session, Sessions, COOKIE};
use self::signin::sign_in;
use self::volumes::volumes;
use crate::server::{Body, Chunk, Gateway, RequestBody};

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
#[derive(Debug)]
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
        (Method::POST, "volumes/create") => {
            volume_actions::create(&caller, &session, console, &read_json(body).await?).await
        }
        (Method::POST, "volumes/snapshot") => {
            volume_actions::snapshot(console, &read_json(body).await?).await
        }
        (Method::POST, "volumes/copy") => {
            volume_actions::copy(&caller, &session, console, &read_json(body).await?).await
        }
        (Method::POST, "volumes/rewrap") => {
            volume_actions::rewrap(&caller, &session, console, &read_json(body).await?).await
        }
        (Method::GET, "exports") => volume_actions::exports(console).await,
        (Method::POST, "exports/swap") => {
            volume_actions::swap(&caller, &session, console, &read_json(body).await?).await
        }
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
