//! The HTTP server: accepts connections (plain or TLS), reads each request, routes it
//! to a service by its shape ([`Route::of`]), authenticates it with SigV4 for that
//! service, and runs it on a blocking thread (the key service does file I/O).
//!
//! Services are routed here and nowhere else: the KMS JSON API (`POST /` with
//! `X-Amz-Target: TrentService.*`) and S3's REST API (everything else, path-style),
//! each when the gateway serves it. S3 bodies stream both ways through bounded
//! channels between the connection task and a blocking thread, so memory stays
//! bounded whatever an object's size.

mod body;
mod limits;
mod listen;
mod respond;
mod route;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crypto_core::kms::operation::TARGET_PREFIX;
use crypto_core::kms::wire;
use crypto_core::kms::{Clock, LocalKms, SystemClock};
use crypto_core::trail::{EventSource, RefusedCaller, RefusedRequest, RequestSource};
use http::HeaderValue;
use zeroize::Zeroizing;

pub use body::{Body, Chunk, ZeroizingBuf};
pub use limits::{
    ConnectionLimits, DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
};
pub use listen::{RunningGateway, TlsFiles};
pub(crate) use respond::{respond, RequestBody};
pub use route::{Route, Services};

use crate::credentials::CredentialStore;
use crate::error::{GatewayError, Protocol};
use crate::kms_api;
use crate::s3::upload::ChannelReader;
use crate::s3::{S3Answer, S3Context, S3Request, S3Service};
use crate::sigv4::{self, Expectations, PathEncoding, Payload, RequestView, Verified};
use blockdev::admission::RateLimitedLog;

/// The state every request shares.
pub struct Gateway {
    kms: LocalKms,
    credentials: CredentialStore,
    region: String,
    clock: Arc<dyn Clock>,
    serve_kms: bool,
    s3: Option<S3Service>,
    limits: ConnectionLimits,
    /// Refused requests are logged at WARN through this.
    refusal_log: RateLimitedLog,
    /// The S3 lifecycle sweep's schedule (none: no sweep).
    lifecycle: Option<crate::s3::LifecycleSchedule>,
    /// The web console at `/console/` (none: not served).
    pub(crate) console: Option<crate::console::Console>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("kms", &self.kms)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway over `kms`, accepting the access keys of `home`, in `kms`'s region.
    /// Signatures are checked against the system clock (not the key service's
    /// `ATREST_CLOCK_OFFSET`, which only moves key schedules).
    pub fn new(kms: LocalKms, home: &Path) -> Gateway {
        Gateway {
            region: kms.region().to_owned(),
            kms,
            credentials: CredentialStore::open(home),
            clock: Arc::new(SystemClock::new()),
            serve_kms: true,
            s3: None,
            limits: ConnectionLimits::default(),
            refusal_log: RateLimitedLog::default(),
            lifecycle: None,
            console: None,
        }
    }

    /// The same gateway also serving the web console at `/console/` (which then
    /// owns that path: a bucket named `console` is not reachable path-style).
    pub fn with_console(mut self, console: crate::console::Console) -> Gateway {
        self.console = Some(console);
        self
    }

    /// The same gateway running the S3 lifecycle sweep (the buckets' expiration rules)
    /// on `schedule` while serving S3.
    pub fn with_lifecycle(mut self, schedule: crate::s3::LifecycleSchedule) -> Gateway {
        self.lifecycle = Some(schedule);
        self
    }

    /// The same gateway with other connection limits and body timeout (before the
    /// descriptor limit caps them, see [`ConnectionLimits::within`]).
    pub fn with_limits(mut self, limits: ConnectionLimits) -> Gateway {
        self.limits = limits;
        self
    }

    /// The connection limits this gateway applies.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// The same gateway also serving S3 over `store` (KMS requests are still told
    /// apart by their `X-Amz-Target`).
    pub fn with_s3(mut self, store: objstore::ObjectStore) -> Gateway {
        self.s3 = Some(S3Service::new(store));
        self
    }

    /// The same gateway without the KMS API (`atrest s3 serve`): every request is S3.
    pub fn without_kms_api(mut self) -> Gateway {
        self.serve_kms = false;
        self
    }

    /// Which APIs this gateway answers.
    pub fn services(&self) -> Services {
        Services {
            kms: self.serve_kms,
            s3: self.s3.is_some(),
        }
    }

    /// The same gateway checking request dates against `clock` (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Gateway {
        self.clock = clock;
        self
    }

    /// The region this gateway serves (ARNs, SigV4 credential scope).
    pub fn region(&self) -> &str {
        &self.region
    }

    pub(crate) fn credentials(&self) -> &CredentialStore {
        &self.credentials
    }

    pub(crate) fn kms(&self) -> &LocalKms {
        &self.kms
    }

    pub(crate) fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    /// Answers one KMS request (already read whole). Every refusal before the key
    /// service is reached (routing, signature, caller) is recorded here; the key
    /// service records everything after.
    fn answer(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
        source: RequestSource,
    ) -> Result<Answer, GatewayError> {
        let op = match Route::of(parts, self.services()) {
            Ok(Route::Kms(op)) => op,
            Ok(Route::S3) => {
                let err = GatewayError::BadRequest("not a KMS request".into());
                return Err(self.refuse_kms(parts, err, source));
            }
            Err(err) => return Err(self.refuse_kms(parts, err, source)),
        };
        let view = request_view(parts);
        let expect = Expectations {
            service: Route::Kms(op).signing_service(),
            region: &self.region,
            now: self.clock.now(),
            path_encoding: PathEncoding::Double,
        };
        let caller = match sigv4::verify(&view, Payload::Body(body), &expect, &self.credentials) {
            Ok(caller) => caller,
            Err(err) => return Err(self.refuse_kms(parts, err, source)),
        };
        let source = RequestSource {
            access_key_id: Some(caller.access_key_id),
            ..source
        };
        let kms = match self.kms.as_principal(&caller.principal) {
            Ok(kms) => kms.from_source(source),
            Err(err) => return Err(self.refuse_kms(parts, err.into(), source)),
        };
        Ok(Answer {
            content_type: wire::CONTENT_TYPE,
            body: kms_api::handle(&kms, op, body)?,
        })
    }

    /// Records a KMS request refused before the key service (nobody proven) and
    /// gives back its error.
    fn refuse_kms(
        &self,
        parts: &http::request::Parts,
        err: GatewayError,
        source: RequestSource,
    ) -> GatewayError {
        let event_name = match Route::of(parts, self.services()) {
            Ok(Route::Kms(op)) => op.name().to_owned(),
            _ => claimed_operation(parts),
        };
        let read_only = is_read_only(&event_name);
        let reply = err.reply(Protocol::Json);
        self.record_refusal(RefusedRequest {
            event_time: self.clock.now(),
            event_source: EventSource::Kms,
            event_name,
            caller: RefusedCaller::Unknown,
            error_code: reply.code.into_owned(),
            error_message: reply.message,
            request_parameters: serde_json::Value::Null,
            read_only,
            source,
        });
        err
    }

    /// Records an S3 request refused with `(error code, message)` (a 403 or a
    /// stalled body); `verified` is who signed it, when the signature verified.
    fn refuse_s3(
        &self,
        parts: &S3Parts,
        (error_code, error_message): (String, String),
        source: RequestSource,
        verified: Option<&Verified>,
    ) {
        let caller = match verified {
            Some(verified) => RefusedCaller::Principal(verified.principal.clone()),
            None if parts.signed => RefusedCaller::Unknown,
            None => RefusedCaller::Anonymous,
        };
        self.record_refusal(RefusedRequest {
            event_time: self.clock.now(),
            event_source: EventSource::S3,
            event_name: parts.operation.clone(),
            caller,
            error_code,
            error_message,
            request_parameters: parts.parameters.clone(),
            read_only: parts.read_only,
            source,
        });
    }

    /// Appends `refused` to the trail and logs it at WARN (rate-limited). A trail
    /// that cannot record it is logged as an error; the client still gets its
    /// refusal (nothing was done for it).
    pub(crate) fn record_refusal(&self, refused: RefusedRequest) {
        if let Some(held_back) = self.refusal_log.admit() {
            tracing::warn!(
                source = %refused.source.ip_address,
                access_key = refused.source.access_key_id.as_deref().unwrap_or("-"),
                held_back,
                "refused {}: {}: {}",
                refused.event_name,
                refused.error_code,
                refused.error_message
            );
        }
        if let Err(err) = self.kms.record_refusal(&refused) {
            tracing::error!("{err}");
        }
    }

    /// Appends `call` (an event of the gateway's own, such as a console sign-in) to
    /// the trail, as coming from `source`; fails when the trail cannot record it.
    pub(crate) fn record_event(
        &self,
        call: &crypto_core::trail::ApiCall,
        source: &crypto_core::trail::RequestSource,
    ) -> Result<(), crypto_core::kms::KmsError> {
        self.kms.record_event(call, source)
    }

    /// Answers one S3 request, reading its body from `body` as it arrives. The key
    /// service calls it makes are recorded as coming from `source`; `verified` is
    /// set once its signature verifies.
    fn answer_s3(
        &self,
        parts: &http::request::Parts,
        body: ChannelReader,
        source: RequestSource,
        verified: &OnceLock<Verified>,
    ) -> Result<S3Answer, GatewayError> {
        let Some(s3) = &self.s3 else {
            return Err(GatewayError::UnknownOperation(
                "this endpoint does not serve S3".into(),
            ));
        };
        let kms = self.kms.from_source(source);
        let ctx = S3Context {
            kms: &kms,
            secrets: &self.credentials,
            region: &self.region,
            now: self.clock.now(),
            verified,
        };
        let mut body = std::io::BufReader::with_capacity(64 * 1024, body);
        s3.handle(&ctx, parts, &mut body)
    }
}

/// What an S3 refusal record needs of its request, taken before the request is
/// handed to the S3 service.
#[derive(Debug)]
struct S3Parts {
    operation: String,
    parameters: serde_json::Value,
    read_only: bool,
    /// The request carried a signature (header or presigned), valid or not.
    signed: bool,
}

impl S3Parts {
    fn of(parts: &http::request::Parts) -> S3Parts {
        let query = parts.uri.query().unwrap_or("");
        let routed = S3Request::parse(&parts.method, parts.uri.path(), query).ok();
        let parameters = match &routed {
            Some(request) if request.key.is_empty() && request.bucket.is_empty() => {
                serde_json::Value::Null
            }
            Some(request) if request.key.is_empty() => {
                serde_json::json!({ "bucketName": request.bucket })
            }
            Some(request) => serde_json::json!({
                "bucketName": request.bucket,
                "key": request.key,
            }),
            None => serde_json::Value::Null,
        };
        let signed = parts.headers.contains_key(http::header::AUTHORIZATION)
            || sigv4::query_pairs(query).is_ok_and(|pairs| {
                pairs
                    .iter()
                    .any(|(name, _)| name == "X-Amz-Signature" || name == "X-Amz-Algorithm")
            });
        S3Parts {
            operation: routed.map_or_else(
                || "Unknown".to_owned(),
                |request| format!("{:?}", request.operation),
            ),
            parameters,
            read_only: parts.method == http::Method::GET || parts.method == http::Method::HEAD,
            signed,
        }
    }
}

/// Whether S3 `err` is a refusal the trail records: every 403 (signature,
/// credentials, expired presigned URL, access denied) and a stalled body.
fn is_s3_refusal(err: &GatewayError) -> bool {
    err.reply(Protocol::S3).status == 403 || matches!(err, GatewayError::RequestTimeout(_))
}

/// KMS operations that change nothing (CloudTrail's `readOnly`).
fn is_read_only(operation: &str) -> bool {
    [
        "Describe",
        "List",
        "Get",
        "Decrypt",
        "Encrypt",
        "Generate",
        "ReEncrypt",
        "Verify",
        "Sign",
    ]
    .iter()
    .any(|prefix| operation.starts_with(prefix))
}

/// The operation an unroutable KMS request named in `X-Amz-Target`, when it is a
/// plain name (letters and digits, at most 64); `Unknown` otherwise.
fn claimed_operation(parts: &http::request::Parts) -> String {
    parts
        .headers
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .and_then(|target| target.strip_prefix(TARGET_PREFIX))
        .filter(|name| {
            !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        .unwrap_or("Unknown")
        .to_owned()
}

fn request_view(parts: &http::request::Parts) -> RequestView<'_> {
    RequestView {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
    }
}

/// The trail's view of where `parts` came from: the peer's address, its
/// User-Agent and the access key id it claims.
fn request_source(parts: &http::request::Parts, peer: SocketAddr) -> RequestSource {
    let claimed = sigv4::claimed_access_key_id(&request_view(parts));
    RequestSource::remote(
        peer.ip(),
        parts
            .headers
            .get(http::header::USER_AGENT)
            .map(HeaderValue::as_bytes),
        claimed.as_deref(),
    )
}

struct Answer {
    content_type: &'static str,
    body: Zeroizing<Vec<u8>>,
}
