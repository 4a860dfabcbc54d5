//! Serving a gateway: binding (plain or TLS), the accept loop within the connection
//! limits, the 503 answer to connections over a limit, writes that stall, shutdown
//! and signals.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crypto_core::kms::wire;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use super::{respond, Gateway, Services};
use crate::error::{ErrorReply, GatewayError, Protocol};
use blockdev::admission::{descriptor_limit, out_of_resources, Admission, Full, RateLimitedLog};

/// How long a client may take to send a request head, and a TLS handshake.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections refused over a limit that may be open at once while their 503 is
/// delivered; beyond this, a refused connection is closed at once.
const MAX_LINGERING_REFUSALS: usize = 32;
/// How long a refused connection is kept to deliver its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Back-off after an accept that failed for lack of descriptors or memory: doubles
/// from the first to the last value while the failures last.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

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
    let admission = Arc::new(Admission::new(
        limits.max_connections,
        limits.max_per_source,
    ));
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

/// The answer to a connection over a limit: `503 SlowDown` (S3's XML, or the JSON
/// protocol's ThrottlingException when only KMS is served), then close. SDKs retry
/// both with back-off.
pub(super) fn slow_down_response(services: Services) -> Vec<u8> {
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
