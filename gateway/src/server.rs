//! The HTTP server: accepts connections (plain or TLS), reads each request, routes it
//! to a service by its shape ([`Route::of`]), authenticates it with SigV4 for that
//! service, and runs it on a blocking thread (the key service does file I/O).
//!
//! Services are routed here and nowhere else: the KMS JSON API (`POST /` with
//! `X-Amz-Target: TrentService.*`) and S3's REST API (everything else, path-style),
//! each when the gateway serves it. S3 bodies stream both ways through bounded
//! channels between the connection task and a blocking thread, so memory stays
//! bounded whatever an object's size.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use crypto_core::kms::{Clock, LocalKms, SystemClock};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::credentials::CredentialStore;
use crate::error::GatewayError;
use crate::kms_api::{self, KmsOperation};
use crate::s3::upload::ChannelReader;
use crate::s3::{self, S3Answer, S3Body, S3Context, S3Service};
use crate::sigv4::{self, Expectations, PathEncoding, Payload, RequestView};
use crate::wire;

/// Largest request body read. KMS's largest input is a 32 KiB key policy; base64
/// and JSON framing stay well under this.
const MAX_BODY: usize = 256 * 1024;
/// How long a client may take to send a request head, and a TLS handshake.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
    Secret(ZeroizingBuf),
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
    fn whole(chunk: Chunk) -> Body {
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
    Kms(KmsOperation),
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
                Ok(Route::Kms(KmsOperation::parse(target)?))
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
    pub kms: bool,
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
        }
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

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Answers one KMS request (already read whole).
    fn answer(&self, parts: &http::request::Parts, body: &[u8]) -> Result<Answer, GatewayError> {
        let Route::Kms(op) = Route::of(parts, self.services())? else {
            return Err(GatewayError::BadRequest("not a KMS request".into()));
        };
        let view = RequestView {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
        };
        let expect = Expectations {
            service: Route::Kms(op).signing_service(),
            region: &self.region,
            now: self.clock.now(),
            path_encoding: PathEncoding::Double,
        };
        let caller = sigv4::verify(&view, Payload::Body(body), &expect, &self.credentials)?;
        let kms = self.kms.as_principal(&caller.principal)?;
        Ok(Answer {
            content_type: wire::CONTENT_TYPE,
            body: kms_api::handle(&kms, op, body)?,
        })
    }

    /// Answers one S3 request, reading its body from `body` as it arrives.
    fn answer_s3(
        &self,
        parts: &http::request::Parts,
        body: ChannelReader,
    ) -> Result<S3Answer, GatewayError> {
        let Some(s3) = &self.s3 else {
            return Err(GatewayError::UnknownOperation(
                "this endpoint does not serve S3".into(),
            ));
        };
        let ctx = S3Context {
            kms: &self.kms,
            secrets: &self.credentials,
            region: &self.region,
            now: self.clock.now(),
        };
        let mut body = std::io::BufReader::with_capacity(64 * 1024, body);
        s3.handle(&ctx, parts, &mut body)
    }
}

struct Answer {
    content_type: &'static str,
    body: Zeroizing<Vec<u8>>,
}

/// TLS certificate chain and private key, PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
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

/// Accepts connections until `shutdown` completes.
async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    acceptor: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        // Requests are small and answered at once: Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        let gateway = Arc::clone(&gateway);
        let acceptor = acceptor.clone();
        let secure = acceptor.is_some();
        tokio::spawn(async move {
            let service = service_fn(move |mut request: Request<Incoming>| {
                // S3 bucket policies' aws:SecureTransport.
                if secure {
                    request.extensions_mut().insert(crate::s3::SecureTransport);
                }
                let gateway = Arc::clone(&gateway);
                async move { Ok::<_, std::convert::Infallible>(respond(gateway, request).await) }
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

async fn respond(gateway: Arc<Gateway>, request: Request<Incoming>) -> Response<Body> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = request.into_parts();
    match Route::of(&parts, gateway.services()) {
        Ok(Route::S3) => return respond_s3(gateway, parts, body, request_id).await,
        Ok(Route::Kms(_)) => {}
        Err(err) if !gateway.services().kms => {
            return s3_error(&err, parts.uri.path(), &request_id);
        }
        Err(_) => {}
    }
    let answer = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            let body = collected.to_bytes();
            tokio::task::spawn_blocking(move || gateway.answer(&parts, &body))
                .await
                .unwrap_or_else(|e| {
                    Err(GatewayError::io(
                        "the request handler failed",
                        std::io::Error::other(e.to_string()),
                    ))
                })
        }
        Err(e) => Err(GatewayError::BadRequest(format!(
            "the request body could not be read or exceeds {MAX_BODY} bytes ({e})"
        ))),
    };
    match answer {
        Ok(answer) => build(
            StatusCode::OK,
            answer.content_type,
            answer.body,
            &request_id,
        ),
        Err(err) => {
            let status = err.http_status();
            if status >= 500 {
                tracing::warn!(request_id, "{err}");
            } else {
                tracing::debug!(request_id, "{err}");
            }
            let body = serde_json::json!({ "__type": err.aws_name(), "message": err.message() });
            let body = Zeroizing::new(body.to_string().into_bytes());
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            build(status, wire::CONTENT_TYPE, body, &request_id)
        }
    }
}

/// Forwards the request body's bytes into a bounded channel until it ends, fails, or
/// the reader goes away.
async fn forward_body(
    mut body: Incoming,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() && tx.send(Ok(data)).await.is_err() {
                        return;
                    }
                }
            }
            Some(Err(e)) => {
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "reading the request body: {e}"
                    ))))
                    .await;
                return;
            }
            None => return,
        }
    }
}

async fn respond_s3(
    gateway: Arc<Gateway>,
    parts: http::request::Parts,
    body: Incoming,
    request_id: String,
) -> Response<Body> {
    let resource = parts.uri.path().to_owned();
    let head = parts.method == http::Method::HEAD;
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
    let handler =
        tokio::task::spawn_blocking(move || gateway.answer_s3(&parts, ChannelReader::new(rx)));
    let (answer, ()) = tokio::join!(handler, forward_body(body, tx));
    let answer = answer.unwrap_or_else(|e| {
        Err(GatewayError::io(
            "the request handler failed",
            std::io::Error::other(e.to_string()),
        ))
    });
    match answer {
        Ok(answer) => s3_response(answer, head, &request_id),
        Err(err) => s3_error(&err, &resource, &request_id),
    }
}

fn s3_error(err: &GatewayError, resource: &str, request_id: &str) -> Response<Body> {
    let status = err.s3_status();
    if status >= 500 && status != 501 {
        tracing::warn!(request_id, "{err}");
    } else {
        tracing::debug!(request_id, "{err}");
    }
    let document = s3::error_document(err, resource, request_id);
    let mut response = Response::new(Body::whole(Chunk::Bytes(Bytes::from(document))));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
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
