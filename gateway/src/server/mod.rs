//! The HTTP server: accepts connections (plain or TLS), reads each request, routes it
//! to a service by its shape ([`Route::of`]), authenticates it with SigV4 for that
//! service, and runs it on a blocking thread (the key service does file I/O).
//!
//! Services are routed here and nowhere else: the KMS JSON API (`POST /` with
//! `X-Amz-Target: TrentService.*`) and S3's REST API (everything else, path-style),
//! each when the gateway serves it. S3 bodies stream both ways through bounded
//! channels between the connection task and a blocking thread, so memory stays
//! bounded whatever an object's size.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use crypto_core::kms::operation::TARGET_PREFIX;
use crypto_core::kms::wire;
use crypto_core::kms::{Clock, LocalKms, Operation, SystemClock};
use crypto_core::trail::{EventSource, RefusedCaller, RefusedRequest, RequestSource};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::credentials::CredentialStore;
use crate::error::{ErrorReply, GatewayError, Protocol};
use crate::kms_api;
use crate::s3::upload::ChannelReader;
use crate::s3::{self, S3Answer, S3Body, S3Context, S3Request, S3Service};
use crate::sigv4::{self, Expectations, PathEncoding, Payload, RequestView, Verified};

/// Largest request body read. KMS's largest input is a 32 KiB key policy; base64
/// and JSON framing stay well under this.
const MAX_BODY: usize = 256 * 1024;
/// The first buffer of a KMS body; it grows as bytes arrive.
const INITIAL_BODY_BUFFER: usize = 16 * 1024;
/// How long a client may take to send a request head, and a TLS handshake.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// `--body-timeout`: a request body that makes no progress for this long ends its
/// connection.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(20);
/// `--max-connections`: open connections, all clients together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// `--max-connections-per-source`: open connections from one IP address.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 128;
/// Descriptors never given to connections: the keystore, the trail, object files,
/// the listener, the runtime's own.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Connections refused over a limit that may be open at once while their 503 is
/// delivered; beyond this, a refused connection is closed at once.
const MAX_LINGERING_REFUSALS: usize = 32;
/// How long a refused connection is kept to deliver its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Repeated warnings (refused requests, accept failures, refused connections) are
/// logged at most once per interval, with the count of those not logged.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Back-off after an accept that failed for lack of descriptors or memory: doubles
/// from the first to the last value while the failures last.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// How many connections a gateway holds open and how long it waits for a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections, all sources together; more are answered 503 SlowDown.
    pub max_connections: usize,
    /// Open connections from one IP address; more are answered 503 SlowDown.
    pub max_per_source: usize,
    /// A request body that makes no progress for this long ends the connection
    /// (400 RequestTimeout); so does a client that reads nothing of an answer for
    /// this long.
    pub body_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

impl ConnectionLimits {
    fn check(&self) -> Result<(), GatewayError> {
        if self.max_connections == 0 || self.max_per_source == 0 {
            return Err(GatewayError::Config(
                "--max-connections and --max-connections-per-source must be at least 1".into(),
            ));
        }
        if self.body_timeout.is_zero() {
            return Err(GatewayError::Config(
                "--body-timeout must be more than 0 seconds".into(),
            ));
        }
        Ok(())
    }

    /// The limits in force when the process may open `descriptors` files: at most
    /// half of what is left after [`RESERVED_DESCRIPTORS`] (so each connection can
    /// have a file open besides its socket), and one source at most half of that (so
    /// a single address can never take every connection).
    pub fn within(self, descriptors: Option<u64>) -> ConnectionLimits {
        let max_connections = match descriptors {
            Some(n) => {
                let room = usize::try_from(n.saturating_sub(RESERVED_DESCRIPTORS) / 2)
                    .unwrap_or(usize::MAX)
                    .max(2);
                self.max_connections.min(room)
            }
            None => self.max_connections,
        };
        let per_source_room = if max_connections > 1 {
            max_connections / 2
        } else {
            1
        };
        ConnectionLimits {
            max_connections,
            max_per_source: self.max_per_source.min(per_source_room).max(1),
            body_timeout: self.body_timeout,
        }
    }
}

/// The soft limit on open descriptors (`ulimit -n`, `prlimit --nofile`).
fn descriptor_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// A warning that may be logged at most once per [`LOG_INTERVAL`]: a burst of bad
/// requests or failing accepts costs one line per interval, not one per event.
#[derive(Debug, Default)]
struct RateLimitedLog {
    /// When a line was last logged, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    /// `Some(held back since the last line)` when a line may be logged now.
    fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = state.1;
                *state = (Some(now), 0);
                Some(held_back)
            }
        }
    }
}

/// Counts open connections, in total and per source address.
#[derive(Debug)]
struct Admission {
    limits: ConnectionLimits,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Full {
    Total,
    Source,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
struct Permit {
    admission: Arc<Admission>,
    source: IpAddr,
}

/// The "source" a per-source limit counts: an IPv4 address (also when it reaches
/// an IPv6 socket as `::ffff:a.b.c.d`), or an IPv6 /64, the block one host or
/// subscriber is usually given (counting single IPv6 addresses would let one host
/// open connections from 2^64 of them).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

impl Admission {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Full> {
        let source = source_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.limits.max_connections {
            return Err(Full::Total);
        }
        let from_source = open.per_source.entry(source).or_insert(0);
        if *from_source >= self.limits.max_per_source {
            return Err(Full::Source);
        }
        *from_source += 1;
        open.total += 1;
        Ok(Permit {
            admission: Arc::clone(self),
            source,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                open.per_source.remove(&self.source);
            }
        }
    }
}

/// A response body that zeroizes its buffer when dropped (answers of
/// GenerateDataKey and Decrypt hold plaintext keys).
#[derive(Debug)]
pub struct ZeroizingBuf {
    bytes: Zeroizing<Vec<u8>>,
    position: usize,
}

impl ZeroizingBuf {
    fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        ZeroizingBuf { bytes, position: 0 }
    }
}

impl Buf for ZeroizingBuf {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn chunk(&self) -> &[u8] {
        &self.bytes[self.position..]
    }

    fn advance(&mut self, count: usize) {
        self.position = self.position.saturating_add(count).min(self.bytes.len());
    }
}

/// Bytes in flight between a connection and the thread serving its S3 request, in
/// each direction (the queue depth of the bounded channels).
const STREAM_QUEUE: usize = 8;
/// Size of the pieces an object is sent in.
const SEND_PIECE: usize = 256 * 1024;

/// One piece of a response body: a zeroizing buffer (KMS answers carry plaintext
/// keys) or bytes of an S3 answer.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes that may hold key material: wiped when the piece is dropped.
    Secret(ZeroizingBuf),
    /// Ordinary bytes (S3 object data, XML answers).
    Bytes(Bytes),
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Secret(b) => b.remaining(),
            Chunk::Bytes(b) => b.remaining(),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Secret(b) => b.chunk(),
            Chunk::Bytes(b) => b.chunk(),
        }
    }

    fn advance(&mut self, count: usize) {
        match self {
            Chunk::Secret(b) => b.advance(count),
            Chunk::Bytes(b) => b.advance(count),
        }
    }
}

/// A response body: whole, or streamed from a blocking thread with a known length.
#[derive(Debug)]
pub struct Body {
    kind: BodyKind,
}

#[derive(Debug)]
enum BodyKind {
    Whole(Option<Chunk>),
    Stream {
        rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
        remaining: u64,
    },
}

impl Body {
    pub(crate) fn whole(chunk: Chunk) -> Body {
        Body {
            kind: BodyKind::Whole(Some(chunk)),
        }
    }

    fn empty() -> Body {
        Body {
            kind: BodyKind::Whole(None),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Chunk;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, std::io::Error>>> {
        match &mut self.kind {
            BodyKind::Whole(chunk) => Poll::Ready(chunk.take().map(|c| Ok(Frame::data(c)))),
            BodyKind::Stream { rx, remaining } => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    *remaining = remaining.saturating_sub(bytes.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(Chunk::Bytes(bytes)))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) if *remaining > 0 => Poll::Ready(Some(Err(
                    std::io::Error::other("the object ended before its length"),
                ))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Whole(chunk) => chunk.as_ref().is_none_or(|c| !c.has_remaining()),
            BodyKind::Stream { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Whole(chunk) => {
                SizeHint::with_exact(chunk.as_ref().map_or(0, |c| c.remaining() as u64))
            }
            BodyKind::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}

/// Which service a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A KMS JSON call, named by its `X-Amz-Target` header.
    Kms(Operation),
    /// Anything else: an S3 REST request.
    S3,
}

impl Route {
    /// Routes by the request's shape: the KMS JSON protocol is `POST` with an
    /// `X-Amz-Target` of `TrentService.*`; with S3 served, everything else is S3.
    pub fn of(parts: &http::request::Parts, services: Services) -> Result<Route, GatewayError> {
        let target = parts
            .headers
            .get("x-amz-target")
            .map(|v| {
                v.to_str()
                    .map_err(|_| GatewayError::BadRequest("X-Amz-Target is not ASCII text".into()))
            })
            .transpose()?;
        match target {
            _ if !services.kms => Ok(Route::S3),
            None if services.s3 => Ok(Route::S3),
            Some(target) => {
                if parts.method != http::Method::POST {
                    return Err(GatewayError::BadRequest(format!(
                        "the JSON protocol takes POST, not {}",
                        parts.method
                    )));
                }
                Ok(Route::Kms(kms_api::parse_target(target)?))
            }
            None => Err(GatewayError::UnknownOperation(
                "no service here answers this request: KMS requests are POST / with an \
                 X-Amz-Target header"
                    .into(),
            )),
        }
    }

    /// The service name SigV4 credential scopes must carry.
    pub fn signing_service(self) -> &'static str {
        match self {
            Route::Kms(_) => "kms",
            Route::S3 => "s3",
        }
    }
}

/// Which APIs a gateway serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Services {
    /// Whether KMS JSON calls (`X-Amz-Target: TrentService.*`) are answered.
    pub kms: bool,
    /// Whether S3 REST requests are answered.
    pub s3: bool,
}

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

    /// The same gateway with other connection limits and body timeout (before the
    /// descriptor limit caps them, see [`ConnectionLimits::within`]).
    /// Applies the buckets' lifecycle rules on `schedule` while serving S3.
    /// The same gateway running the S3 lifecycle sweep (bucket expiration rules) on `schedule`.
    pub fn with_lifecycle(mut self, schedule: crate::s3::LifecycleSchedule) -> Gateway {
        self.lifecycle = Some(schedule);
        self
    }

    /// The same gateway with other connection limits.
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

/// TLS certificate chain and private key, PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    fn acceptor(&self) -> Result<TlsAcceptor, GatewayError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map(Zeroizing::new)
                .map_err(|e| GatewayError::io(format!("reading {}", path.display()), e))
        };
        let cert_pem = read(&self.cert)?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                GatewayError::Config(format!(
                    "--tls-cert {}: not a PEM certificate chain ({e})",
                    self.cert.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(GatewayError::Config(format!(
                "--tls-cert {}: holds no certificate",
                self.cert.display()
            )));
        }
        let key_pem = read(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            GatewayError::Config(format!(
                "--tls-key {}: not a PEM private key ({e})",
                self.key.display()
            ))
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| GatewayError::Config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                GatewayError::Config(format!(
                    "--tls-cert/--tls-key: the key does not fit the certificate ({e})"
                ))
            })?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// A gateway listening on a socket, served by its own runtime on a background
/// thread until [`RunningGateway::shutdown`] or drop.
#[derive(Debug)]
pub struct RunningGateway {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningGateway {
    /// Binds `listen` (port 0 picks a free port) and starts serving.
    pub fn start(
        gateway: Gateway,
        listen: &str,
        tls: Option<&TlsFiles>,
    ) -> Result<RunningGateway, GatewayError> {
        gateway.limits.check()?;
        let acceptor = tls.map(TlsFiles::acceptor).transpose()?;
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| GatewayError::io(format!("cannot listen on {listen}"), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| GatewayError::io("configuring the listening socket", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| GatewayError::io("reading the listening address", e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("atrest-gateway")
            .build()
            .map_err(|e| GatewayError::io("starting the gateway runtime", e))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let gateway = Arc::new(gateway);
        let thread = std::thread::Builder::new()
            .name("atrest-gateway".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let (Some(schedule), true) = (gateway.lifecycle, gateway.s3.is_some()) {
                        tokio::spawn(sweep_lifecycle(Arc::clone(&gateway), schedule));
                    }
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            serve(listener, gateway, acceptor, async {
                                let _ = stopped.await;
                            })
                            .await;
                        }
                        Err(e) => tracing::error!("cannot use the listening socket: {e}"),
                    }
                });
                runtime.shutdown_background();
            })
            .map_err(|e| GatewayError::io("starting the gateway thread", e))?;
        Ok(RunningGateway {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address the gateway listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, drops open connections and waits for the server thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the gateway thread panicked");
            }
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Runs the S3 lifecycle sweep at start and then every `schedule.interval`, on the
/// blocking pool, one sweep at a time; it ends with the server's runtime.
async fn sweep_lifecycle(gateway: Arc<Gateway>, schedule: crate::s3::LifecycleSchedule) {
    let mut ticks = tokio::time::interval(schedule.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let gateway = Arc::clone(&gateway);
        let swept = tokio::task::spawn_blocking(move || {
            if let Some(s3) = &gateway.s3 {
                s3.apply_lifecycle(gateway.clock.now(), schedule.day);
            }
        })
        .await;
        if let Err(e) = swept {
            tracing::error!("the lifecycle sweep failed: {e}");
        }
    }
}

/// Accepts connections until `shutdown` completes, within the gateway's connection
/// limits.
async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    acceptor: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let limits = gateway.limits.within(descriptor_limit());
    tracing::info!(
        max_connections = limits.max_connections,
        max_per_source = limits.max_per_source,
        body_timeout_secs = limits.body_timeout.as_secs_f64(),
        "connection limits"
    );
    let admission = Arc::new(Admission {
        limits,
        open: Mutex::new(OpenConnections::default()),
    });
    let accept_log = RateLimitedLog::default();
    let full_log = RateLimitedLog::default();
    let lingering = Arc::new(AtomicUsize::new(0));
    let slow_down = Bytes::from(slow_down_response(gateway.services()));
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::ZERO;
                pair
            }
            Err(e) => {
                if let Some(held_back) = accept_log.admit() {
                    tracing::warn!(held_back, "accept failed: {e}");
                }
                if out_of_resources(&e) {
                    // The pending connection stays in the backlog: accepting again at
                    // once would fail again, in a tight loop.
                    backoff = (backoff * 2).clamp(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1);
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
                continue;
            }
        };
        let permit = match admission.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(full) => {
                if let Some(held_back) = full_log.admit() {
                    let what = match full {
                        Full::Total => format!("{} open connections", limits.max_connections),
                        Full::Source => {
                            format!(
                                "{} open connections from {}",
                                limits.max_per_source,
                                peer.ip()
                            )
                        }
                    };
                    tracing::warn!(
                        held_back,
                        "refused a connection from {peer}: already {what}"
                    );
                }
                refuse_connection(stream, acceptor.is_none(), &slow_down, &lingering);
                continue;
            }
        };
        // Requests are small and answered at once: Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        let stream = WriteStallGuard::new(stream, limits.body_timeout);
        let gateway = Arc::clone(&gateway);
        let acceptor = acceptor.clone();
        let secure = acceptor.is_some();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |mut request: Request<Incoming>| {
                // S3 bucket policies' aws:SecureTransport.
                if secure {
                    request.extensions_mut().insert(crate::s3::SecureTransport);
                }
                let gateway = Arc::clone(&gateway);
                async move { Ok::<_, std::convert::Infallible>(respond(gateway, request, peer).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            // A client that trickles its request head does not hold a connection
            // (and its task) forever.
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let result = match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => http.serve_connection(TokioIo::new(tls), service).await,
                        Ok(Err(e)) => {
                            tracing::debug!("TLS handshake with {peer} failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake with {peer} timed out");
                            return;
                        }
                    }
                }
                None => http.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = result {
                tracing::debug!("connection from {peer} ended: {e}");
            }
        });
    }
}

/// A connection whose writes fail once the client has taken nothing for `stall`: a
/// client that stops reading an answer (a large GET) does not hold its connection,
/// its task and the object's reader forever.
struct WriteStallGuard<S> {
    inner: S,
    stall: Duration,
    /// Running while a write waits for the client.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStallGuard<S> {
    fn new(inner: S, stall: Duration) -> Self {
        WriteStallGuard {
            inner,
            stall,
            waiting: None,
        }
    }

    /// After the inner write made progress (`Ready`) or not (`Pending`).
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.waiting = None;
            return poll;
        }
        let stall = self.stall;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing of the answer for the body timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteStallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteStallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}

/// Accept failures that retrying at once cannot cure: no descriptor or no memory.
fn out_of_resources(err: &std::io::Error) -> bool {
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    matches!(err.raw_os_error(), Some(ENOMEM | ENFILE | EMFILE | ENOBUFS))
}

/// The answer to a connection over a limit: `503 SlowDown` (S3's XML, or the JSON
/// protocol's ThrottlingException when only KMS is served), then close. SDKs retry
/// both with back-off.
fn slow_down_response(services: Services) -> Vec<u8> {
    let err = GatewayError::SlowDown(
        "Please reduce your request rate: too many open connections.".into(),
    );
    let protocol = if services.s3 {
        Protocol::S3
    } else {
        Protocol::Json
    };
    let ErrorReply {
        code,
        status,
        message,
    } = err.reply(protocol);
    let (content_type, body) = match protocol {
        Protocol::S3 => (
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>{message}</Message></Error>"
            ),
        ),
        Protocol::Json => (
            wire::CONTENT_TYPE,
            serde_json::json!({ "__type": code, "message": message }).to_string(),
        ),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\nretry-after: 1\r\nx-amzn-errortype: SlowDown\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a connection over a limit with `503 SlowDown` and closes it. The answer
/// is written without waiting (it fits in the socket buffer); the connection then
/// lingers up to [`REFUSAL_LINGER`], reading and discarding, so that closing it does
/// not reset it before the client reads the answer. At most
/// [`MAX_LINGERING_REFUSALS`] linger; the rest, and TLS connections (which would need
/// a handshake first), are closed at once.
fn refuse_connection(
    stream: tokio::net::TcpStream,
    plain: bool,
    slow_down: &Bytes,
    lingering: &Arc<AtomicUsize>,
) {
    if !plain {
        return;
    }
    let _ = stream.try_write(slow_down);
    if lingering.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING_REFUSALS {
        lingering.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let lingering = Arc::clone(lingering);
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 4096];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        lingering.fetch_sub(1, Ordering::AcqRel);
    });
}

/// What [`respond`] can read a request body from: a connection's ([`Incoming`]), or
/// one the console built ([`crate::console`]).
pub(crate) trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: std::fmt::Display + Send> + Send + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<Data = Bytes, Error: std::fmt::Display + Send> + Send + Unpin + 'static
{
}

/// The one entry point of every request: the console's pages, then KMS or S3 by the
/// request's shape.
pub(crate) async fn respond(
    gateway: Arc<Gateway>,
    request: Request<impl RequestBody>,
    peer: SocketAddr,
) -> Response<Body> {
    if gateway.console.is_some() && crate::console::owns(request.uri().path()) {
        return crate::console::respond(gateway, request, peer).await;
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = request.into_parts();
    let source = request_source(&parts, peer).with_request_id(&request_id);
    match Route::of(&parts, gateway.services()) {
        Ok(Route::S3) => return respond_s3(gateway, parts, body, request_id, source).await,
        Ok(Route::Kms(_)) => {}
        Err(err) if !gateway.services().kms => {
            return s3_error(&err, parts.uri.path(), &request_id);
        }
        Err(_) => {}
    }
    let body = read_body(body, MAX_BODY, gateway.limits.body_timeout).await;
    let stalled = matches!(body, Err(GatewayError::RequestTimeout(_)));
    let answer = tokio::task::spawn_blocking(move || match body {
        Ok(body) => gateway.answer(&parts, &body, source),
        Err(err) => Err(gateway.refuse_kms(&parts, err, source)),
    })
    .await
    .unwrap_or_else(|e| {
        Err(GatewayError::io(
            "the request handler failed",
            std::io::Error::other(e.to_string()),
        ))
    });
    let mut response = match answer {
        Ok(answer) => build(
            StatusCode::OK,
            answer.content_type,
            answer.body,
            &request_id,
        ),
        Err(err) => {
            let reply = err.reply(Protocol::Json);
            if reply.status >= 500 {
                tracing::warn!(request_id, "{err}");
            } else {
                tracing::debug!(request_id, "{err}");
            }
            let body = serde_json::to_vec(&wire::ErrorResponse {
                kind: Some(reply.code.to_string()),
                message: Some(reply.message.clone()),
            })
            .unwrap_or_default();
            let body = Zeroizing::new(body);
            let status =
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            build(status, wire::CONTENT_TYPE, body, &request_id)
        }
    };
    if stalled {
        close_after(&mut response);
    }
    response
}

/// Marks `response` as the connection's last: hyper closes it once sent.
fn close_after(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
}

fn stalled_body(timeout: Duration) -> GatewayError {
    GatewayError::RequestTimeout(format!(
        "Your socket connection to the server was not read from or written to within the \
         timeout period: no part of the request body arrived for {} s.",
        timeout.as_secs_f64()
    ))
}

/// Reads a whole request body of at most `limit` bytes, failing when no part of it
/// arrives for `stall`. The buffer is zeroized when dropped (KMS bodies carry
/// plaintexts).
async fn read_body(
    mut body: impl RequestBody,
    limit: usize,
    stall: Duration,
) -> Result<Zeroizing<Vec<u8>>, GatewayError> {
    let expected = hyper::body::Body::size_hint(&body).lower();
    if expected > limit as u64 {
        return Err(GatewayError::BadRequest(format!(
            "the request body ({expected} bytes) exceeds {limit} bytes"
        )));
    }
    // What a client announces is not reserved in full before it arrives: a stalled
    // connection holds at most what it sent.
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        usize::try_from(expected)
            .unwrap_or(limit)
            .min(INITIAL_BODY_BUFFER),
    ));
    loop {
        match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return Err(stalled_body(stall)),
            Ok(None) => return Ok(bytes),
            Ok(Some(Err(e))) => {
                return Err(GatewayError::BadRequest(format!(
                    "the request body could not be read ({e})"
                )))
            }
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if bytes.len() + data.len() > limit {
                    return Err(GatewayError::BadRequest(format!(
                        "the request body exceeds {limit} bytes"
                    )));
                }
                if bytes.len() + data.len() > bytes.capacity() {
                    // Grow into a new zeroizing buffer so no copy is left behind.
                    let mut grown = Zeroizing::new(Vec::with_capacity(
                        (bytes.len() + data.len())
                            .max(bytes.capacity() * 2)
                            .min(limit),
                    ));
                    grown.extend_from_slice(&bytes);
                    bytes = grown;
                }
                bytes.extend_from_slice(&data);
            }
        }
    }
}

/// Forwards the request body's bytes into a bounded channel until it ends, fails,
/// stalls for `stall` (returns `true`), or the reader goes away (at once, even while
/// waiting for the client). Waiting for the reader to take a piece is not a stall:
/// only the client's silence is.
///
/// The body is not touched before the reader first asks for it (`wanted`): hyper
/// sends `100 Continue` to an `Expect: 100-continue` request when its body is first
/// polled, and a request refused before that (signature, access, missing bucket)
/// must get its refusal instead, its body never sent.
async fn forward_body(
    mut body: impl RequestBody,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    wanted: tokio::sync::oneshot::Receiver<()>,
    stall: Duration,
) -> bool {
    tokio::select! {
        () = tx.closed() => return false,
        asked = wanted => {
            if asked.is_err() {
                return false;
            }
        }
    }
    loop {
        let frame = tokio::select! {
            // The handler answered without the rest of the body (a refusal): stop
            // reading, so the answer goes out now, not at the body timeout.
            () = tx.closed() => return false,
            frame = tokio::time::timeout(stall, body.frame()) => frame,
        };
        match frame {
            Err(_) => {
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body stalled",
                    )))
                    .await;
                return true;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() && tx.send(Ok(data)).await.is_err() {
                        return false;
                    }
                }
            }
            Ok(Some(Err(e))) => {
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "reading the request body: {e}"
                    ))))
                    .await;
                return false;
            }
            Ok(None) => return false,
        }
    }
}

async fn respond_s3(
    gateway: Arc<Gateway>,
    parts: http::request::Parts,
    body: impl RequestBody,
    request_id: String,
    source: RequestSource,
) -> Response<Body> {
    let resource = parts.uri.path().to_owned();
    let head = parts.method == http::Method::HEAD;
    let refusal_parts = S3Parts::of(&parts);
    let verified = Arc::new(OnceLock::new());
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
    let (wanted_tx, wanted_rx) = tokio::sync::oneshot::channel();
    let stall = gateway.limits.body_timeout;
    let handler = {
        let gateway = Arc::clone(&gateway);
        let verified = Arc::clone(&verified);
        let source = source.clone();
        tokio::task::spawn_blocking(move || {
            gateway.answer_s3(&parts, ChannelReader::new(rx, wanted_tx), source, &verified)
        })
    };
    let (answer, stalled) = tokio::join!(handler, forward_body(body, tx, wanted_rx, stall));
    let answer = match answer {
        _ if stalled => Err(stalled_body(stall)),
        Ok(answer) => answer,
        Err(e) => Err(GatewayError::io(
            "the request handler failed",
            std::io::Error::other(e.to_string()),
        )),
    };
    match answer {
        Ok(answer) => s3_response(answer, head, &request_id),
        Err(err) => {
            if is_s3_refusal(&err) {
                let reply = err.reply(Protocol::S3);
                let error = (reply.code.into_owned(), reply.message);
                let recorded = tokio::task::spawn_blocking({
                    let gateway = Arc::clone(&gateway);
                    move || gateway.refuse_s3(&refusal_parts, error, source, verified.get())
                })
                .await;
                if let Err(e) = recorded {
                    tracing::error!("recording a refused S3 request failed: {e}");
                }
            }
            let mut response = s3_error(&err, &resource, &request_id);
            if stalled {
                close_after(&mut response);
            }
            response
        }
    }
}

fn s3_error(err: &GatewayError, resource: &str, request_id: &str) -> Response<Body> {
    let reply = err.reply(Protocol::S3);
    if reply.status >= 500 && reply.status != 501 {
        tracing::warn!(request_id, "{err}");
    } else {
        tracing::debug!(request_id, "{err}");
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let document = s3::error_document(&reply, resource, request_id);
    let mut response = Response::new(Body::whole(Chunk::Bytes(Bytes::from(document))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    request_id_headers(headers, request_id);
    response
}

fn request_id_headers(headers: &mut http::HeaderMap, request_id: &str) {
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amz-request-id", id.clone());
        headers.insert("x-amz-id-2", id);
    }
}

fn s3_response(answer: S3Answer, head: bool, request_id: &str) -> Response<Body> {
    let body = match answer.body {
        S3Body::Empty => Body::empty(),
        S3Body::Xml(document) => Body::whole(Chunk::Bytes(Bytes::from(document))),
        S3Body::Object(reader) if head => {
            drop(reader);
            Body::empty()
        }
        S3Body::Object(reader) => stream_object(reader),
    };
    let mut response = Response::new(body);
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    request_id_headers(response.headers_mut(), request_id);
    response
}

/// Streams an object's plaintext from a blocking thread, a few pieces ahead of the
/// connection.
fn stream_object(mut reader: Box<objstore::ObjectReader>) -> Body {
    let remaining = reader.remaining();
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
    tokio::task::spawn_blocking(move || loop {
        let want = usize::try_from(reader.remaining())
            .unwrap_or(usize::MAX)
            .min(SEND_PIECE);
        if want == 0 {
            return;
        }
        let mut piece = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match reader.read(&mut piece[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("an object could not be read: {e}");
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        if filled == 0 {
            return;
        }
        piece.truncate(filled);
        if tx.blocking_send(Ok(Bytes::from(piece))).is_err() {
            return;
        }
    });
    Body {
        kind: BodyKind::Stream { rx, remaining },
    }
}

fn build(
    status: StatusCode,
    content_type: &'static str,
    body: Zeroizing<Vec<u8>>,
    request_id: &str,
) -> Response<Body> {
    let mut response = Response::new(Body::whole(Chunk::Secret(ZeroizingBuf::new(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

impl RunningGateway {
    /// Blocks until SIGINT or SIGTERM, then shuts the server down.
    pub fn wait_for_shutdown_signal(self) -> Result<(), GatewayError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| GatewayError::io("starting the signal runtime", e))?;
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut interrupt = signal(SignalKind::interrupt())
                .map_err(|e| GatewayError::io("watching SIGINT", e))?;
            let mut terminate = signal(SignalKind::terminate())
                .map_err(|e| GatewayError::io("watching SIGTERM", e))?;
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            Ok::<(), GatewayError>(())
        })?;
        self.shutdown();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_limit_caps_connections_and_one_source_gets_half() {
        let asked = ConnectionLimits::default();
        let under_256 = asked.within(Some(256));
        assert_eq!(under_256.max_connections, 96);
        assert_eq!(under_256.max_per_source, 48);
        assert_eq!(under_256.body_timeout, DEFAULT_BODY_TIMEOUT);
        let roomy = asked.within(Some(1 << 20));
        assert_eq!(roomy, asked);
        assert_eq!(asked.within(None), asked);
        let tiny = asked.within(Some(10));
        assert_eq!((tiny.max_connections, tiny.max_per_source), (2, 1));
        let single = ConnectionLimits {
            max_connections: 1,
            ..asked
        }
        .within(None);
        assert_eq!(single.max_per_source, 1);
    }

    #[test]
    fn zero_limits_are_refused() {
        for limits in [
            ConnectionLimits {
                max_connections: 0,
                ..ConnectionLimits::default()
            },
            ConnectionLimits {
                max_per_source: 0,
                ..ConnectionLimits::default()
            },
            ConnectionLimits {
                body_timeout: Duration::ZERO,
                ..ConnectionLimits::default()
            },
        ] {
            assert!(matches!(limits.check(), Err(GatewayError::Config(_))));
        }
    }

    #[test]
    fn admission_counts_per_source_and_in_total_and_frees_on_drop() {
        let admission = Arc::new(Admission {
            limits: ConnectionLimits {
                max_connections: 3,
                max_per_source: 2,
                body_timeout: DEFAULT_BODY_TIMEOUT,
            },
            open: Mutex::new(OpenConnections::default()),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = admission.admit(a).expect("first");
        let second = admission.admit(a).expect("second");
        assert_eq!(admission.admit(a).err(), Some(Full::Source));
        let third = admission.admit(b).expect("another source");
        assert_eq!(admission.admit(b).err(), Some(Full::Total));
        drop(first);
        assert!(admission.admit(b).is_ok());
        drop((second, third));
        let open = admission.open.lock().unwrap();
        assert_eq!(open.total, 0);
        assert!(open.per_source.is_empty());
    }

    #[test]
    fn a_rate_limited_log_admits_one_line_per_interval_and_counts_the_rest() {
        let log = RateLimitedLog::default();
        assert_eq!(log.admit(), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.admit(), None);
        }
        // Pretend the interval has passed.
        log.state.lock().unwrap().0 = Instant::now().checked_sub(LOG_INTERVAL);
        assert_eq!(log.admit(), Some(1000));
    }

    #[test]
    fn slow_down_is_a_complete_503_in_the_served_protocol() {
        for (services, marker) in [
            (
                Services {
                    kms: true,
                    s3: true,
                },
                "<Code>SlowDown</Code>",
            ),
            (
                Services {
                    kms: true,
                    s3: false,
                },
                "\"__type\":\"ThrottlingException\"",
            ),
        ] {
            let text = String::from_utf8(slow_down_response(services)).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
            assert!(
                head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
                "{head}"
            );
            assert!(head.contains(&format!("content-length: {}", body.len())));
            assert!(head.contains("connection: close"));
            assert!(body.contains(marker), "{body}");
        }
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_block() {
        let key = |text: &str| source_key(text.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }

    #[test]
    fn only_resource_exhaustion_backs_off_accept() {
        assert!(out_of_resources(&std::io::Error::from_raw_os_error(24)));
        assert!(out_of_resources(&std::io::Error::from_raw_os_error(23)));
        assert!(!out_of_resources(&std::io::Error::from_raw_os_error(103)));
        assert!(!out_of_resources(&std::io::Error::other("other")));
    }
}
