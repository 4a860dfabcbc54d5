//! The HTTP server: accepts connections (plain or TLS), reads each request, routes it
//! to a service by its shape ([`Route::of`]), authenticates it with SigV4 for that
//! service, and runs it on a blocking thread (the key service does file I/O).
//!
//! Services are routed here and nowhere else: today the KMS JSON API
//! (`POST /` with `X-Amz-Target: TrentService.*`); S3's REST API routes by path.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Buf;
use crypto_core::kms::{Clock, LocalKms, SystemClock};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
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

type Body = Full<ZeroizingBuf>;

/// Which service a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Kms(KmsOperation),
}

impl Route {
    /// Routes by the request's shape: the KMS JSON protocol is `POST` with an
    /// `X-Amz-Target` of `TrentService.*`.
    pub fn of(parts: &http::request::Parts) -> Result<Route, GatewayError> {
        let target = parts
            .headers
            .get("x-amz-target")
            .map(|v| {
                v.to_str()
                    .map_err(|_| GatewayError::BadRequest("X-Amz-Target is not ASCII text".into()))
            })
            .transpose()?;
        match target {
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
        }
    }

    fn path_encoding(self) -> PathEncoding {
        match self {
            Route::Kms(_) => PathEncoding::Double,
        }
    }
}

/// The state every request shares.
pub struct Gateway {
    kms: LocalKms,
    credentials: CredentialStore,
    region: String,
    clock: Arc<dyn Clock>,
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

    /// Answers one request (already read whole).
    fn answer(&self, parts: &http::request::Parts, body: &[u8]) -> Result<Answer, GatewayError> {
        let route = Route::of(parts)?;
        let view = RequestView {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
        };
        let expect = Expectations {
            service: route.signing_service(),
            region: &self.region,
            now: self.clock.now(),
            path_encoding: route.path_encoding(),
        };
        let caller = sigv4::verify(&view, Payload::Body(body), &expect, &self.credentials)?;
        match route {
            Route::Kms(op) => {
                let kms = self.kms.as_principal(&caller.principal)?;
                Ok(Answer {
                    content_type: wire::CONTENT_TYPE,
                    body: kms_api::handle(&kms, op, body)?,
                })
            }
        }
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
        tokio::spawn(async move {
            let service = service_fn(move |request| {
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

fn build(
    status: StatusCode,
    content_type: &'static str,
    body: Zeroizing<Vec<u8>>,
    request_id: &str,
) -> Response<Body> {
    let mut response = Response::new(Full::new(ZeroizingBuf::new(body)));
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
