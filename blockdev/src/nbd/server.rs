//! Listening and signals: the accept loop, the exports table, shutdown, and each
//! connection from TLS upgrade to hand-off. The handshake lives in
//! [`super::negotiation`], the transmission phase in [`super::transmission`].
//!
//! Threads: one accept loop, which admits each connection within the
//! [`ConnectionLimits`] ([`super::limits`]) or closes it at once; per admitted
//! connection, one thread that runs the handshake
//! (upgrading to TLS when the client asks), then the transmission phase on that
//! thread and a few more (see [`super::transmission`]). [`Server::serve_stream`]
//! serves one already-connected Unix stream the same way on the caller's thread
//! (tests and the `nbd_session` fuzz target, without TCP).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::num::NonZeroU64;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{debug, error, info, warn};

use super::budget::{
    default_memory_limit, usable_memory, MemoryBudget, MemoryGauge, CONNECTION_RESERVE,
};
use super::limits::ConnectionLimits;
use super::negotiation::{read_array, Negotiation, Outcome};
use super::proto;
use super::status::StatusBoard;
use super::tls::{self, ClientIdentity, TlsSettings};
use super::transmission::{transmit, BufferPool, HelperPool, Wire};
use crate::admission::{
    descriptor_limit, out_of_resources, Admission, Full, Permit, RateLimitedLog,
};
use crate::volume::Volume;
use crate::{Error, ProtocolError};

/// The export a client gets when it asks for the empty name (the spec's default export).
pub const DEFAULT_EXPORT: &str = "default";

/// Transmission threads per connection (so requests in flight, per connection) at most.
pub(super) const MAX_THREADS_PER_CONNECTION: usize = 16;
/// A client that does not take its replies for this long is dropped, so a stuck
/// client cannot hold a thread forever.
pub(super) const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server waits for each piece of a client's handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take from connecting to attaching to an export, however
/// busy it keeps the handshake (a byte per minute, or options answered forever):
/// past it the connection is closed and its place in the [`ConnectionLimits`] freed.
pub const DEFAULT_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(120);
/// The shortest handshake deadline and idle timeout (shorter ones are raised to it):
/// a zero read timeout is refused by the system, and a zero deadline would have the
/// deadline thread spin.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// The pause after an `accept` that failed for want of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How often the accept loop's companion thread looks for handshakes past their
/// deadline.
const HANDSHAKE_SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// TCP keepalive on every connection: probes start after this long without traffic
/// (an attached client may idle for hours; only a peer that is gone stops answering
/// them) ...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// ... and are repeated this often ...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ... this many times before the kernel ends the connection: a client whose host
/// vanished frees its place in the [`ConnectionLimits`] within about two minutes.
const KEEPALIVE_PROBES: u32 = 6;
/// How long data sent may stay unacknowledged before the kernel ends the connection
/// (`TCP_USER_TIMEOUT`), as long as keepalive takes: keepalive probes only an idle
/// connection, so a peer that vanished with replies still unacknowledged would
/// otherwise be retransmitted to for `tcp_retries2` (15: about 15 minutes), its
/// place held all that time.
const UNACKNOWLEDGED_TIMEOUT: Duration =
    KEEPALIVE_IDLE.saturating_add(KEEPALIVE_INTERVAL.saturating_mul(KEEPALIVE_PROBES));

/// One named export: the volume and how it is offered.
#[derive(Clone, Debug)]
pub struct Export {
    /// The volume served.
    pub volume: Arc<dyn Volume>,
    /// Offered read-only even if the volume could be written.
    pub read_only: bool,
    /// Shown to clients (`nbdinfo`) when set.
    pub description: Option<String>,
    /// When not empty: the only client certificate names (CN, DNS or URI SAN) that
    /// may use the export. Such an export needs TLS with client certificates; without
    /// them nobody can use it.
    pub allowed_clients: Vec<String>,
}

impl Export {
    /// Offered read-only: by choice or because the volume cannot be written.
    pub(super) fn read_only(&self) -> bool {
        self.read_only || self.volume.is_read_only()
    }
}

/// The exports by name. Shared with whoever may swap volumes while the server runs;
/// a client keeps the volume it attached to until it disconnects.
pub type ExportTable = Arc<RwLock<BTreeMap<String, Export>>>;

/// A bound NBD server. [`Server::run`] serves until [`ShutdownHandle::shutdown`].
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    exports: ExportTable,
    shared: Arc<Shared>,
    threads_per_connection: usize,
    /// As configured; [`Server::run`] enforces them within the descriptor limit.
    limits: ConnectionLimits,
    /// Payload bytes in flight, all connections together.
    budget: Arc<MemoryBudget>,
    /// From connecting to attaching, at most.
    handshake_deadline: Duration,
    /// How long an attached client may send nothing; `None`: for ever.
    idle_timeout: Option<Duration>,
    gate: Gate,
    /// Where connections, attaches and disconnections are published, if anywhere.
    status: Option<Arc<StatusBoard>>,
}

/// An export refused to a client for want of the right certificate.
#[derive(Debug)]
pub struct Refusal<'a> {
    /// The export asked for.
    pub export: &'a str,
    /// `None`: the client presented no verified certificate.
    pub client: Option<&'a ClientIdentity>,
    /// The client's address.
    pub peer: &'a str,
    /// The KMS key of the export's volume, when it is encrypted.
    pub key_arn: Option<&'a str>,
    /// Why, as the client is told.
    pub reason: &'a str,
}

/// Told of every [`Refusal`] (after it is logged), e.g. to write an audit record.
pub type RefusalAudit = Arc<dyn Fn(&Refusal<'_>) + Send + Sync>;

/// Who may negotiate what: TLS, and whom to tell of refusals. Shared by connections.
#[derive(Clone, Default)]
pub(super) struct Gate {
    pub(super) tls: Option<TlsSettings>,
    pub(super) audit: Option<RefusalAudit>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("tls", &self.tls)
            .field("audit", &self.audit.is_some())
            .finish()
    }
}

#[derive(Debug)]
struct Shared {
    stopping: AtomicBool,
    /// Where a connection wakes the blocked accept loop on shutdown.
    wake_addr: SocketAddr,
    /// Every live connection, so shutdown (or a swap of its volume) can end its reads.
    connections: Mutex<HashMap<u64, Registered>>,
    /// The next connection's number (TCP and [`Server::serve_stream`] alike).
    next_id: AtomicU64,
    /// Transmission threads' buffers, kept from one connection to the next.
    buffers: Arc<BufferPool>,
    /// Transmission threads, parked from one connection to the next.
    helpers: Arc<HelperPool>,
}

/// A live connection: its socket, and the volume it attached to once it has.
#[derive(Debug)]
struct Registered {
    socket: Socket,
    volume: Option<Arc<dyn Volume>>,
    /// When it connected: a connection that has not attached by then plus the
    /// handshake deadline is closed.
    connected: Instant,
    /// The client's address, for the log line of that closing.
    peer: String,
    /// Closed for overrunning the handshake deadline (so it is closed once).
    cut: bool,
}

/// A live connection's socket (a clone of it), kept to end its reads.
#[derive(Debug)]
enum Socket {
    Tcp(TcpStream),
    /// Served by [`Server::serve_stream`].
    Unix(UnixStream),
}

impl Socket {
    /// No further requests are read; in-flight ones still get their replies.
    fn end_reads(&self) {
        self.shutdown(Shutdown::Read);
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Socket::Tcp(stream) => stream.shutdown(how),
            Socket::Unix(stream) => stream.shutdown(how),
        };
    }
}

/// Stops a running [`Server`]: no new connections, in-flight requests finish, every
/// volume is flushed, then `run` returns.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Starts the shutdown; returns at once (`run` returns when it is done).
    pub fn shutdown(&self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // accept() blocks; a connection to ourselves makes it return and see the flag.
        if let Err(err) = TcpStream::connect_timeout(&self.shared.wake_addr, Duration::from_secs(2))
        {
            warn!(
                "could not wake the accept loop at {}: {err}",
                self.shared.wake_addr
            );
        }
    }

    /// Ends every connection attached to `volume` the way shutdown does: no further
    /// requests are read, in-flight ones get their replies, then the socket closes.
    /// For swapping an export's volume: replace it in the [`ExportTable`] first, then
    /// call this until it returns 0 (connections leave the count once their last
    /// reply is sent), then flush the old volume.
    pub fn disconnect_clients_of(&self, volume: &Arc<dyn Volume>) -> usize {
        let target = Arc::as_ptr(volume).cast::<()>();
        let connections = lock(&self.shared.connections);
        let attached = connections.values().filter(|c| {
            c.volume
                .as_ref()
                .is_some_and(|v| Arc::as_ptr(v).cast::<()>() == target)
        });
        let mut count = 0;
        for connection in attached {
            connection.socket.end_reads();
            count += 1;
        }
        count
    }
}

/// Shuts the server down on the first SIGINT or SIGTERM; a second one exits at once.
pub fn stop_on_signals(handle: ShutdownHandle) -> Result<(), Error> {
    on_first_signal(catch_stop_signals()?, move |signal| {
        info!("signal {signal}: finishing requests, flushing, shutting down");
        handle.shutdown();
    })
}

/// Catches SIGINT and SIGTERM from now on (instead of dying of them).
pub(super) fn catch_stop_signals() -> Result<Signals, Error> {
    Signals::new([SIGINT, SIGTERM]).map_err(|source| Error::Io {
        context: "installing the SIGINT/SIGTERM handlers".into(),
        source,
    })
}

/// Runs `first` on a thread of its own at the first of `signals` (also one caught
/// before this call); a second signal exits the process at once, for an operator
/// who does not want to wait for in-flight requests and flushes.
pub(super) fn on_first_signal(
    mut signals: Signals,
    first: impl FnOnce(i32) + Send + 'static,
) -> Result<(), Error> {
    let mut first = Some(first);
    thread::Builder::new()
        .name("nbd-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match first.take() {
                    Some(first) => first(signal),
                    None => {
                        warn!("signal {signal} again: exiting without waiting");
                        std::process::exit(1);
                    }
                }
            }
        })
        .map_err(|source| Error::Io {
            context: "starting the signal thread".into(),
            source,
        })?;
    Ok(())
}

impl Server {
    /// Listens on `addr` (port 0 picks a free port; see [`Server::local_addr`]).
    pub fn bind(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        exports: ExportTable,
    ) -> Result<Server, Error> {
        let io_err = |source| Error::Io {
            context: format!("listening on {addr:?}"),
            source,
        };
        let listener = TcpListener::bind(&addr).map_err(io_err)?;
        let local = listener.local_addr().map_err(io_err)?;
        let wake_ip = match local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        // Two per core, at least eight: a sequential client's queue (and disk reads)
        // stays in flight while others decrypt; many more only add context switches
        // when the data is in the page cache.
        let threads_per_connection = thread::available_parallelism()
            .map_or(2, usize::from)
            .saturating_mul(2)
            .clamp(8, MAX_THREADS_PER_CONNECTION);
        Ok(Server {
            listener,
            local_addr: local,
            exports,
            shared: Arc::new(Shared {
                stopping: AtomicBool::new(false),
                wake_addr: SocketAddr::new(wake_ip, local.port()),
                connections: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                buffers: Arc::new(BufferPool::new(threads_per_connection)),
                helpers: HelperPool::new(threads_per_connection),
            }),
            threads_per_connection,
            limits: ConnectionLimits::default(),
            budget: Arc::new(MemoryBudget::new(default_memory_limit(usable_memory()))),
            handshake_deadline: DEFAULT_HANDSHAKE_DEADLINE,
            idle_timeout: None,
            gate: Gate::default(),
            status: None,
        })
    }

    /// Offers TLS (`NBD_OPT_STARTTLS`), required or optional as `tls` says.
    pub fn with_tls(mut self, tls: TlsSettings) -> Server {
        self.gate.tls = Some(tls);
        self
    }

    /// Calls `audit` for every client refused an export by `allowed_clients`.
    pub fn with_refusal_audit(mut self, audit: RefusalAudit) -> Server {
        self.gate.audit = Some(audit);
        self
    }

    /// Publishes every connection, attach and disconnection on `board` (the status
    /// file the console reads).
    pub fn with_status(mut self, board: Arc<StatusBoard>) -> Server {
        self.status = Some(board);
        self
    }

    /// Serves each connection with `threads` transmission threads (clamped to 1..=16)
    /// instead of two per core, at least eight. For the `nbd_session` fuzz target,
    /// whose connections live for a few requests each: there, starting eight threads
    /// per connection was most of the cost. Two still run requests side by side.
    pub fn with_threads_per_connection(mut self, threads: usize) -> Server {
        self.threads_per_connection = threads.clamp(1, MAX_THREADS_PER_CONNECTION);
        self
    }

    /// Holds at most `limits` TCP connections open (instead of
    /// [`ConnectionLimits::default`]): a connection beyond them is closed as soon as
    /// it is accepted, before the greeting, and no thread is started for it.
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Server {
        self.limits = limits;
        self
    }

    /// Holds at most `limit` payload bytes in flight (read replies waiting to be
    /// sent, write payloads being received and encrypted), all connections
    /// together, beyond [`CONNECTION_RESERVE`] each (instead of
    /// [`default_memory_limit`] of the machine's memory): a request that does not
    /// fit waits, in order of arrival, until others finish. A request larger than
    /// `limit` runs once nothing else holds the shared budget.
    pub fn with_memory_limit(mut self, limit: NonZeroU64) -> Server {
        self.budget = Arc::new(MemoryBudget::new(limit));
        self
    }

    /// The memory limit in force ([`Server::with_memory_limit`]).
    pub fn memory_limit(&self) -> u64 {
        self.budget.limit()
    }

    /// Reads this server's payload bytes in flight (take it after
    /// [`Server::with_memory_limit`]).
    pub fn memory_gauge(&self) -> MemoryGauge {
        MemoryGauge(Arc::clone(&self.budget))
    }

    /// Closes a connection that has not attached to an export `deadline` after it
    /// connected (instead of [`DEFAULT_HANDSHAKE_DEADLINE`]; at least
    /// [`MIN_TIMEOUT`]), freeing its place.
    pub fn with_handshake_deadline(mut self, deadline: Duration) -> Server {
        self.handshake_deadline = deadline.max(MIN_TIMEOUT);
        self
    }

    /// Disconnects an attached client from which no byte has arrived for `timeout`
    /// (by default an attached client may idle for ever, as mounted filesystems and
    /// paused VMs do). Counted from the client's last byte, also while one of its
    /// requests runs: a client waiting for a flush longer than `timeout` is
    /// disconnected too, so choose minutes. At least [`MIN_TIMEOUT`].
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Server {
        self.idle_timeout = Some(timeout.max(MIN_TIMEOUT));
        self
    }

    /// The connection limits [`Server::run`] enforces: those configured, lowered to
    /// fit the process's descriptor limit (`ulimit -n`).
    pub fn connection_limits(&self) -> ConnectionLimits {
        self.limits.within(descriptor_limit())
    }

    /// The address the server listens on (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops this server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves until shut down, then waits for every connection to finish its
    /// in-flight requests and flushes every writable export.
    pub fn run(self) -> Result<(), Error> {
        let limits = self.connection_limits();
        let lowered = if limits == self.limits {
            String::new()
        } else {
            format!(
                " (lowered from {} and {} to fit the descriptor limit, ulimit -n)",
                self.limits.max_connections, self.limits.max_per_source
            )
        };
        info!(
            "at most {} connections, {} from one source{lowered}; payloads in flight: at most {} MiB, plus {} MiB per connection",
            limits.max_connections,
            limits.max_per_source,
            self.budget.limit().div_ceil(1 << 20),
            CONNECTION_RESERVE >> 20
        );
        let admission = Arc::new(Admission::new(
            limits.max_connections.get(),
            limits.max_per_source.get(),
        ));
        let accept_log = RateLimitedLog::default();
        let full_log = RateLimitedLog::default();
        let sweeper = self.sweep_handshakes()?;
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        loop {
            let accepted = self.listener.accept();
            if self.shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    if let Some(held_back) = accept_log.admit() {
                        warn!("accepting a connection failed: {err} ({held_back} more not logged)");
                    }
                    // Out of descriptors or memory: the pending connection stays in
                    // the backlog, and accepting again at once would fail again in a
                    // tight loop. Other failures (a client that reset its pending
                    // connection) cost no pause, or a flood of them would stall
                    // everybody's accepts.
                    if out_of_resources(&err) {
                        thread::sleep(ACCEPT_BACKOFF);
                    }
                    continue;
                }
            };
            let permit = match admission.admit(peer.ip()) {
                Ok(permit) => permit,
                Err(full) => {
                    if let Some(held_back) = full_log.admit() {
                        let already = match full {
                            Full::Total => format!("{} open connections", limits.max_connections),
                            Full::Source => format!(
                                "{} open connections from {}",
                                limits.max_per_source,
                                peer.ip()
                            ),
                        };
                        warn!(
                            "refused a connection from {peer}: already {already} \
                             ({held_back} more refusals not logged)"
                        );
                    }
                    // Closed before the greeting: the client reads end of stream.
                    drop(stream);
                    continue;
                }
            };
            threads.retain(|t| !t.is_finished());
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = self.spawn_connection(id, stream, permit, &mut threads) {
                warn!("connection {id}: {err}");
                lock(&self.shared.connections).remove(&id);
                if let Some(board) = &self.status {
                    board.disconnected(id);
                }
            }
        }
        drop(self.listener);
        sweeper.thread().unpark();
        let _ = sweeper.join();
        for connection in lock(&self.shared.connections).values() {
            // Ends each connection's reads; its in-flight requests still get replies.
            connection.socket.end_reads();
        }
        for thread in threads {
            let _ = thread.join();
        }
        let exports = self.exports.read().unwrap_or_else(PoisonError::into_inner);
        let mut first_failure = None;
        for (name, export) in exports.iter().filter(|(_, e)| !e.read_only()) {
            if let Err(err) = export.volume.flush() {
                error!("flushing export {name:?}: {err}");
                first_failure.get_or_insert(err);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Starts the thread that closes the connections past the handshake deadline
    /// until the server stops.
    fn sweep_handshakes(&self) -> Result<JoinHandle<()>, Error> {
        let shared = Arc::clone(&self.shared);
        let deadline = self.handshake_deadline;
        thread::Builder::new()
            .name("nbd-handshakes".into())
            .spawn(move || {
                while !shared.stopping.load(Ordering::SeqCst) {
                    shared.cut_late_handshakes(deadline);
                    thread::park_timeout(HANDSHAKE_SWEEP_INTERVAL.min(deadline));
                }
            })
            .map_err(io_error("starting the handshake deadline thread"))
    }

    /// Starts the thread that serves `stream`, which holds `permit` until the
    /// connection ends (dropped at once if the thread cannot start).
    fn spawn_connection(
        &self,
        id: u64,
        stream: TcpStream,
        permit: Permit,
        threads: &mut Vec<JoinHandle<()>>,
    ) -> Result<(), Error> {
        let io_err = |context: &str| {
            let context = context.to_owned();
            move |source| Error::Io { context, source }
        };
        let registered = stream.try_clone().map_err(io_err("cloning the socket"))?;
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown peer".to_owned(), |a| a.to_string());
        let (context, publication) = self.register(id, Socket::Tcp(registered), &peer);
        let shared = Arc::clone(&self.shared);
        let thread = thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                // A panic (a volume's bug in the handshake) must still take the
                // connection out of the table: the table's clone of the socket would
                // otherwise keep it open, the client waiting for ever.
                let served = catch_unwind(AssertUnwindSafe(|| {
                    serve_connection(stream, &context, &publication, |volume| {
                        shared.attached(id, volume)
                    })
                }))
                .unwrap_or_else(|_| Err(panicked()));
                shared.finish(id, &publication, &peer, &served);
                drop(permit);
            })
            .map_err(io_err("starting a connection thread"))?;
        threads.push(thread);
        Ok(())
    }

    /// Serves one client already connected on `stream` (an end of a socket pair), on
    /// the calling thread, until it disconnects: the handshake and the transmission
    /// phase as for a TCP client, from the stream's first byte, with this server's
    /// exports, admission checks, refusal audit, limits, timeouts, transmission
    /// threads and status board, and registered like a TCP connection (so
    /// [`ShutdownHandle::disconnect_clients_of`] and the end of [`Server::run`] end
    /// its reads). For tests and fuzzing: the `nbd_session` fuzz target serves each
    /// input this way, without a TCP connection per input. Users serve over TCP with
    /// [`Server::run`], which this does not need (and `run` need not be running).
    ///
    /// Plaintext only: TLS is served over TCP. On a server configured with
    /// [`Server::with_tls`], what TLS requires still holds (a required TLS refuses
    /// every option but STARTTLS, exports with `allowed_clients` are refused), and a
    /// client that asks for STARTTLS gets its acknowledgement, then an error here
    /// (`NotSupported`) and the connection closes. Errors are the connection's, as
    /// [`Server::run`] logs them per connection: a client that breaks the protocol
    /// ends with `Protocol`, one that hangs up mid-handshake with `Io`
    /// (`UnexpectedEof`). A server being shut down refuses the stream (`Io`,
    /// `ConnectionAborted`); [`Server::run`] ends a stream connection's reads when it
    /// stops, but does not wait for the caller's thread to finish its replies.
    pub fn serve_stream(&self, stream: UnixStream) -> Result<(), Error> {
        let registered = stream.try_clone().map_err(io_error("cloning the socket"))?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = format!("stream connection {id}");
        let (context, publication) = self.register(id, Socket::Unix(registered), &peer);
        // Checked once registered: a shutdown that starts after this check still
        // finds the connection in the table and ends its reads.
        let served = if self.shared.stopping.load(Ordering::SeqCst) {
            Err(Error::Io {
                context: "serving a stream".into(),
                source: io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the server is shutting down",
                ),
            })
        } else {
            // A panic is the caller's (a fuzz target's finding), once the stream is
            // out of the table.
            match catch_unwind(AssertUnwindSafe(|| {
                serve_stream_connection(stream, &context, &publication, |volume| {
                    self.shared.attached(id, volume)
                })
            })) {
                Ok(served) => served,
                Err(panic) => {
                    self.shared
                        .finish(id, &publication, &peer, &Err(panicked()));
                    resume_unwind(panic);
                }
            }
        };
        self.shared.finish(id, &publication, &peer, &served);
        served
    }

    /// Enters a new connection in the table and on the status board; what it is
    /// served with.
    fn register(&self, id: u64, socket: Socket, peer: &str) -> (ConnectionContext, Publication) {
        lock(&self.shared.connections).insert(
            id,
            Registered {
                socket,
                volume: None,
                connected: Instant::now(),
                peer: peer.to_owned(),
                cut: false,
            },
        );
        if let Some(board) = &self.status {
            board.connected(id, peer);
        }
        let context = ConnectionContext {
            exports: Arc::clone(&self.exports),
            gate: self.gate.clone(),
            threads: self.threads_per_connection,
            idle_timeout: self.idle_timeout,
            peer: peer.to_owned(),
            buffers: Arc::clone(&self.shared.buffers),
            helpers: Arc::clone(&self.shared.helpers),
            budget: Arc::clone(&self.budget),
        };
        let publication = Publication {
            board: self.status.clone(),
            id,
        };
        (context, publication)
    }
}

impl Shared {
    /// Closes every connection still negotiating `deadline` after it connected: a
    /// client that keeps its handshake busy for ever (options answered one after
    /// another, a byte per minute) would otherwise hold its place for ever.
    fn cut_late_handshakes(&self, deadline: Duration) {
        let now = Instant::now();
        let mut connections = lock(&self.connections);
        let late = connections.values_mut().filter(|c| {
            c.volume.is_none() && !c.cut && now.duration_since(c.connected) >= deadline
        });
        for connection in late {
            connection.cut = true;
            connection.socket.shutdown(Shutdown::Both);
            info!(
                "{}: no export attached {} s after connecting; closing the connection",
                connection.peer,
                deadline.as_secs()
            );
        }
    }

    /// Connection `id` attached to `volume`.
    fn attached(&self, id: u64, volume: &Arc<dyn Volume>) {
        if let Some(entry) = lock(&self.connections).get_mut(&id) {
            entry.volume = Some(Arc::clone(volume));
        }
    }

    /// Connection `id` ended as `served` says: logged, and out of the table and off
    /// the status board.
    fn finish(&self, id: u64, publication: &Publication, peer: &str, served: &Result<(), Error>) {
        match served {
            Ok(()) => debug!("{peer}: disconnected"),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::UnexpectedEof => {
                debug!("{peer}: closed the connection")
            }
            Err(err) => warn!("{peer}: {err}"),
        }
        lock(&self.connections).remove(&id);
        if let Some(board) = &publication.board {
            board.disconnected(id);
        }
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a connection whose thread panicked ended with.
fn panicked() -> Error {
    Error::Io {
        context: "serving the connection".into(),
        source: io::Error::other("its thread panicked"),
    }
}

pub(super) fn io_error(context: &'static str) -> impl Fn(io::Error) -> Error {
    move |source| Error::Io {
        context: context.into(),
        source,
    }
}

/// What a connection thread needs to serve its client.
pub(super) struct ConnectionContext {
    pub(super) exports: ExportTable,
    pub(super) gate: Gate,
    /// Transmission threads per connection.
    pub(super) threads: usize,
    /// An attached client that sends nothing for this long is disconnected.
    pub(super) idle_timeout: Option<Duration>,
    /// The client's address, for logs.
    pub(super) peer: String,
    /// The server's kept transmission buffers.
    pub(super) buffers: Arc<BufferPool>,
    /// The server's parked transmission threads.
    pub(super) helpers: Arc<HelperPool>,
    /// The server's bound on payload bytes in flight.
    pub(super) budget: Arc<MemoryBudget>,
}

/// Where a connection publishes what it attached to: the server's status board and
/// the connection's number there.
struct Publication {
    board: Option<Arc<StatusBoard>>,
    id: u64,
}

impl Publication {
    /// The client attached to `export` (with the certificate `identity`, over TLS).
    fn attached(&self, export: &str, identity: Option<&ClientIdentity>) {
        if let Some(board) = &self.board {
            board.attached(self.id, export, identity.map(ToString::to_string));
        }
    }
}

/// Congestion control for connections from this machine: CUBIC, whatever the system
/// default. Over loopback there is no link to share and nothing to pace, but BBR (a
/// common default, and this machine's) paces every socket: each 1 MiB reply then
/// costs timer and softirq work in the sender (`_raw_spin_unlock_irqrestore`, 13% of
/// the server's CPU for sequential reads). With CUBIC on the server's side of a
/// loopback connection, server CPU per 1 MiB read fell from 486-528 to 389-439 us and
/// throughput rose 20-27% (fio, server pinned to one core). Remote clients keep the
/// system's choice. Best effort: a kernel without CUBIC keeps its default.
fn unpaced_on_loopback(stream: &TcpStream) {
    if !stream.peer_addr().is_ok_and(|peer| peer.ip().is_loopback()) {
        return;
    }
    if let Err(err) = rustix::net::sockopt::set_tcp_congestion(stream, LOOPBACK_CONGESTION) {
        debug!("keeping the default TCP congestion control on a loopback connection: {err}");
    }
}

/// See [`unpaced_on_loopback`].
const LOOPBACK_CONGESTION: &str = "cubic";

/// Probes a connection that carries nothing for [`KEEPALIVE_IDLE`], so that one whose
/// peer is gone (host powered off, network cut: no FIN ever comes) ends and frees its
/// thread and its place in the limits, where it would otherwise wait forever for the
/// next request. A client that is there but silent answers the probes and keeps its
/// connection: the per-source limit bounds how many it can hold.
fn keep_alive(stream: &TcpStream) -> rustix::io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(stream, true)?;
    sockopt::set_tcp_keepidle(stream, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(stream, KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(stream, KEEPALIVE_PROBES)?;
    let millis = u32::try_from(UNACKNOWLEDGED_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    sockopt::set_tcp_user_timeout(stream, millis)
}

/// A client that connects and then says nothing, or takes no replies, must not hold
/// a thread forever; transmission lifts the read timeout once the client attached.
fn handshake_timeouts(wire: &impl Wire) -> Result<(), Error> {
    wire.set_write_timeout_wire(Some(REPLY_WRITE_TIMEOUT))
        .map_err(io_error("setting the write timeout"))?;
    wire.set_read_timeout_wire(Some(HANDSHAKE_TIMEOUT))
        .map_err(io_error("setting the handshake timeout"))
}

/// Serves one TCP client: the handshake (with a TLS upgrade when the client asks for
/// one), then the transmission phase; `attached` learns the volume it attached to.
fn serve_connection(
    stream: TcpStream,
    context: &ConnectionContext,
    publication: &Publication,
    mut attached: impl FnMut(&Arc<dyn Volume>),
) -> Result<(), Error> {
    stream
        .set_nodelay(true)
        .map_err(io_error("setting TCP_NODELAY"))?;
    unpaced_on_loopback(&stream);
    keep_alive(&stream).map_err(|source| Error::Io {
        context: "setting TCP keepalive".into(),
        source: source.into(),
    })?;
    let writer = stream.try_clone().map_err(io_error("cloning the socket"))?;
    let (settings, tcp, early, client) =
        match serve_plaintext(stream, writer, context, publication, &mut attached)? {
            Plaintext::Served => return Ok(()),
            Plaintext::StartTls {
                settings,
                stream,
                early,
                client,
            } => (settings, stream, early, client),
        };
    // TLS owns the socket now; what was read past STARTTLS goes to TLS.
    let session = tls::accept(&settings, tcp, &early)?;
    let identity = session.identity;
    let stream = session.stream;
    handshake_timeouts(&stream)?;
    match &identity {
        Some(who) => info!("{}: TLS with a client certificate, {who}", context.peer),
        None => debug!("{}: TLS without a client certificate", context.peer),
    }
    let mut writer = stream.try_clone().map_err(io_error("cloning the socket"))?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    // Everything negotiated before TLS is forgotten: a fresh negotiation.
    let secured = Negotiation {
        context,
        client,
        secured: Some(identity.as_ref()),
    };
    match secured.run(&mut reader, &mut writer)? {
        Outcome::Abort => Ok(()),
        Outcome::Attach(session, name) => {
            publication.attached(&name, identity.as_ref());
            transmit(reader, writer, session, context, attached)
        }
        Outcome::StartTls(_) => Err(ProtocolError::StartTlsTwice.into()),
    }
}

/// Serves one client of [`Server::serve_stream`]: as [`serve_connection`], in
/// plaintext only.
fn serve_stream_connection(
    stream: UnixStream,
    context: &ConnectionContext,
    publication: &Publication,
    mut attached: impl FnMut(&Arc<dyn Volume>),
) -> Result<(), Error> {
    let writer = stream.try_clone().map_err(io_error("cloning the socket"))?;
    match serve_plaintext(stream, writer, context, publication, &mut attached)? {
        Plaintext::Served => Ok(()),
        Plaintext::StartTls { .. } => Err(Error::NotSupported(
            "TLS on a stream served by Server::serve_stream (TLS is served over TCP)".into(),
        )),
    }
}

/// How the plaintext part of a connection ended.
enum Plaintext<S> {
    /// The client aborted the handshake, or attached and was served to the end.
    Served,
    /// STARTTLS was acknowledged: TLS begins on `stream`, whose first bytes are
    /// `early` (read past STARTTLS already).
    StartTls {
        settings: TlsSettings,
        stream: S,
        early: Vec<u8>,
        client: proto::ClientFlags,
    },
}

/// The greeting, the plaintext negotiation and, if the client attached, the
/// transmission phase, on `stream` (read) and `writer` (a clone of it, written).
fn serve_plaintext<S: Wire>(
    stream: S,
    mut writer: S,
    context: &ConnectionContext,
    publication: &Publication,
    attached: impl FnOnce(&Arc<dyn Volume>),
) -> Result<Plaintext<S>, Error> {
    handshake_timeouts(&stream)?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    writer
        .write_all(&proto::server_greeting())
        .map_err(io_error("writing the greeting"))?;
    let client = proto::parse_client_flags(read_array(&mut reader)?)?;
    let plain = Negotiation {
        context,
        client,
        secured: None,
    };
    match plain.run(&mut reader, &mut writer)? {
        Outcome::Abort => Ok(Plaintext::Served),
        Outcome::Attach(session, name) => {
            publication.attached(&name, None);
            transmit(reader, writer, session, context, attached)?;
            Ok(Plaintext::Served)
        }
        Outcome::StartTls(settings) => Ok(Plaintext::StartTls {
            settings,
            early: reader.buffer().to_vec(),
            stream: reader.into_inner(),
            client,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_per_connection_stay_in_range() {
        let bind = || Server::bind("127.0.0.1:0", ExportTable::default()).unwrap();
        assert!(bind().threads_per_connection >= 8);
        assert_eq!(
            bind().with_threads_per_connection(0).threads_per_connection,
            1
        );
        assert_eq!(
            bind().with_threads_per_connection(2).threads_per_connection,
            2
        );
        assert_eq!(
            bind()
                .with_threads_per_connection(1000)
                .threads_per_connection,
            MAX_THREADS_PER_CONNECTION
        );
    }

    #[test]
    fn zero_deadlines_and_timeouts_are_raised_to_the_minimum() {
        let server = Server::bind("127.0.0.1:0", ExportTable::default())
            .unwrap()
            .with_handshake_deadline(Duration::ZERO)
            .with_idle_timeout(Duration::ZERO);
        assert_eq!(server.handshake_deadline, MIN_TIMEOUT);
        assert_eq!(server.idle_timeout, Some(MIN_TIMEOUT));
    }

    #[test]
    fn a_vanished_peer_is_given_up_on_within_keepalives_time_even_with_replies_unacknowledged() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        keep_alive(&server).unwrap();
        use rustix::net::sockopt;
        assert!(sockopt::socket_keepalive(&server).unwrap());
        assert_eq!(sockopt::tcp_keepidle(&server).unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sockopt::tcp_keepintvl(&server).unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sockopt::tcp_keepcnt(&server).unwrap(), KEEPALIVE_PROBES);
        // 60 s idle + 6 probes 10 s apart: two minutes, with or without data in flight.
        assert_eq!(sockopt::tcp_user_timeout(&server).unwrap(), 120_000);
    }

    #[test]
    fn loopback_connections_are_not_paced() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let default = rustix::net::sockopt::tcp_congestion(&server).unwrap();
        unpaced_on_loopback(&server);
        let listed = |file: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{file}"))
                .unwrap_or_default()
                .split_whitespace()
                .any(|c| c == LOOPBACK_CONGESTION)
        };
        // Loaded, and allowed to this process (root may pick any loaded one).
        let settable = listed("tcp_available_congestion_control")
            && (rustix::process::geteuid().is_root() || listed("tcp_allowed_congestion_control"));
        let expected = if settable {
            LOOPBACK_CONGESTION.to_string()
        } else {
            default
        };
        assert_eq!(
            rustix::net::sockopt::tcp_congestion(&server).unwrap(),
            expected
        );
    }
}
