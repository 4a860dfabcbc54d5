//! The NBD server: sockets, the handshake, and the transmission phase.
//!
//! Threads: one accept loop; per connection, one thread that runs the handshake, then
//! a few transmission threads (that one among them) that take turns as the reader:
//! each reads one whole request under the connection's read lock, lets go of it, runs
//! the request and writes the reply under the write lock, so requests run side by side
//! and replies leave in completion order with no hand-off between threads (a wake-up
//! per request cost more than the crypto). Small reads whose data is in the page cache
//! are answered by the reading thread itself, their replies gathered and written
//! together once no further request is waiting ([`INLINE_READ_MAX`]); anything that
//! may wait for the disk goes the ordinary way. Each connection bounds its requests in
//! flight (in number by its threads, in bytes by a budget), so a client that floods
//! requests or never reads its replies stalls only itself. Crypto for a large request
//! is spread over the cores (the rayon pool) unless the connection already has a
//! request in flight per core.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rustix::net::SendFlags;
use tracing::{debug, error, info, warn};

use super::proto::{
    self, ClientFlags, ClientOption, Command, Errno, OptionHeader, RequestHeader, SessionLimits,
    CMD_BLOCK_STATUS, CMD_CACHE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES,
};
use super::tls::{self, ClientIdentity, TlsMode, TlsSettings};
use crate::volume::Volume;
use crate::Error;

/// The export a client gets when it asks for the empty name (the spec's default export).
pub const DEFAULT_EXPORT: &str = "default";

/// Transmission threads per connection (so requests in flight, per connection) at most.
const MAX_THREADS_PER_CONNECTION: usize = 16;
/// Payload bytes (read and write buffers) one connection may have in flight.
const MAX_BYTES_IN_FLIGHT: u64 = 128 * 1024 * 1024;
/// A client that does not take its replies for this long is dropped, so a stuck
/// client cannot hold a thread forever.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server waits for each piece of a client's handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Reads up to this size use a buffer each transmission thread keeps: zero-filling a
/// fresh buffer per request was 5% of the server's CPU in 1 MiB sequential reads.
/// Larger reads get a buffer of their own, so an idle connection holds at most this
/// much per thread.
const KEPT_READ_BUFFER: usize = 1024 * 1024;
/// Reads up to this size whose data is in the page cache are answered by the thread
/// reading requests, before it lets go of the read lock: for 4 KiB random reads,
/// handing each request to another thread (a futex wake-up) and writing each reply
/// with its own system call cost more than the read itself.
const INLINE_READ_MAX: u32 = 64 * 1024;
/// Replies gathered that way go out when the client has no further request waiting,
/// or once they reach this size.
const BATCH_BYTES: usize = 128 * 1024;
/// CACHE reads the range through the volume in pieces of this size.
const CACHE_PIECE: u32 = 4 * 1024 * 1024;

/// One named export: the volume and how it is offered.
#[derive(Clone, Debug)]
pub struct Export {
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
    fn read_only(&self) -> bool {
        self.read_only || self.volume.is_read_only()
    }
}

/// The exports by name. Shared with whoever may swap volumes while the server runs;
/// a client keeps the volume it attached to until it disconnects.
pub type ExportTable = Arc<RwLock<BTreeMap<String, Export>>>;

/// The NBD error value for an error, for a request of command `kind`. The one place
/// where errors become wire codes.
pub fn errno(err: &Error, kind: u16) -> Errno {
    match err {
        Error::Io { source, .. } => match source.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Errno::NoSpc,
            _ if source.kind() == io::ErrorKind::StorageFull => Errno::NoSpc,
            _ => Errno::Io,
        },
        Error::OutOfRange { .. } if matches!(kind, CMD_WRITE | CMD_WRITE_ZEROES) => Errno::NoSpc,
        Error::OutOfRange { .. } => Errno::Inval,
        Error::ReadOnly => Errno::Perm,
        Error::KeyUnavailable { .. } => Errno::Io,
        Error::Corrupted { .. } => Errno::Io,
        // Opening a volume fails with these, before any request.
        Error::NoValidHeader { .. }
        | Error::HeaderConflict { .. }
        | Error::NotAVolumeFile { .. }
        | Error::HeaderBusy { .. } => Errno::Io,
        Error::Kms(_) => Errno::Io,
        Error::InvalidRequest(_) => Errno::Inval,
        Error::TooLarge { .. } => Errno::Overflow,
        Error::NotSupported(_) => Errno::NotSup,
        Error::Protocol(_) => Errno::Inval,
        // Only the kernel client's setup returns this, never a request.
        Error::KernelNbd(_) => Errno::Io,
        // TLS fails in the handshake or the pump, never in a request.
        Error::Tls(_) => Errno::Io,
        // Only `volume::create` and header construction return these, never a request.
        // Opening fails with InUse, before any request.
        Error::AlreadyExists { .. } | Error::InvalidArgument { .. } | Error::InUse { .. } => {
            Errno::Inval
        }
    }
}

/// A bound NBD server. [`Server::run`] serves until [`ShutdownHandle::shutdown`].
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    exports: ExportTable,
    shared: Arc<Shared>,
    threads_per_connection: usize,
    gate: Gate,
}

/// An export refused to a client for want of the right certificate.
#[derive(Debug)]
pub struct Refusal<'a> {
    pub export: &'a str,
    /// `None`: the client presented no verified certificate.
    pub client: Option<&'a ClientIdentity>,
    pub peer: &'a str,
    /// The KMS key of the export's volume, when it is encrypted.
    pub key_arn: Option<&'a str>,
    pub reason: &'a str,
}

/// Told of every [`Refusal`] (after it is logged), e.g. to write an audit record.
pub type RefusalAudit = Arc<dyn Fn(&Refusal<'_>) + Send + Sync>;

/// Who may negotiate what: TLS, and whom to tell of refusals. Shared by connections.
#[derive(Clone, Default)]
struct Gate {
    tls: Option<TlsSettings>,
    audit: Option<RefusalAudit>,
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
}

/// A live connection: its socket, and the volume it attached to once it has.
#[derive(Debug)]
struct Registered {
    stream: TcpStream,
    volume: Option<Arc<dyn Volume>>,
}

/// Stops a running [`Server`]: no new connections, in-flight requests finish, every
/// volume is flushed, then `run` returns.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
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
            let _ = connection.stream.shutdown(Shutdown::Read);
            count += 1;
        }
        count
    }
}

/// Shuts the server down on the first SIGINT or SIGTERM; a second one exits at once.
pub fn stop_on_signals(handle: ShutdownHandle) -> Result<(), Error> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|source| Error::Io {
            context: "installing the SIGINT/SIGTERM handlers".into(),
            source,
        })?;
    thread::Builder::new()
        .name("nbd-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen == 1 {
                    info!("signal {signal}: finishing requests, flushing, shutting down");
                    handle.shutdown();
                } else {
                    warn!("signal {signal} again: exiting without waiting");
                    std::process::exit(1);
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
            }),
            threads_per_connection,
            gate: Gate::default(),
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

    /// The address the server listens on (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves until shut down, then waits for every connection to finish its
    /// in-flight requests and flushes every writable export.
    pub fn run(self) -> Result<(), Error> {
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let next_id = AtomicU64::new(0);
        for incoming in self.listener.incoming() {
            if self.shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            let stream = match incoming {
                Ok(stream) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!("accepting a connection failed: {err}");
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            threads.retain(|t| !t.is_finished());
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = self.spawn_connection(id, stream, &mut threads) {
                warn!("connection {id}: {err}");
                lock(&self.shared.connections).remove(&id);
            }
        }
        drop(self.listener);
        for connection in lock(&self.shared.connections).values() {
            // Ends each connection's reads; its in-flight requests still get replies.
            let _ = connection.stream.shutdown(Shutdown::Read);
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

    fn spawn_connection(
        &self,
        id: u64,
        stream: TcpStream,
        threads: &mut Vec<JoinHandle<()>>,
    ) -> Result<(), Error> {
        let io_err = |context: &str| {
            let context = context.to_owned();
            move |source| Error::Io { context, source }
        };
        let registered = stream.try_clone().map_err(io_err("cloning the socket"))?;
        lock(&self.shared.connections).insert(
            id,
            Registered {
                stream: registered,
                volume: None,
            },
        );
        let shared = Arc::clone(&self.shared);
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown peer".to_owned(), |a| a.to_string());
        let context = ConnectionContext {
            exports: Arc::clone(&self.exports),
            gate: self.gate.clone(),
            threads: self.threads_per_connection,
            peer: peer.clone(),
        };
        let thread = thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                match serve_connection(stream, &context, |volume| {
                    if let Some(entry) = lock(&shared.connections).get_mut(&id) {
                        entry.volume = Some(Arc::clone(volume));
                    }
                }) {
                    Ok(()) => debug!("{peer}: disconnected"),
                    Err(Error::Io { source, .. })
                        if source.kind() == io::ErrorKind::UnexpectedEof =>
                    {
                        debug!("{peer}: closed the connection")
                    }
                    Err(err) => warn!("{peer}: {err}"),
                }
                lock(&shared.connections).remove(&id);
            })
            .map_err(io_err("starting a connection thread"))?;
        threads.push(thread);
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_error(context: &'static str) -> impl Fn(io::Error) -> Error {
    move |source| Error::Io {
        context: context.into(),
        source,
    }
}

/// What a connection thread needs to serve its client.
struct ConnectionContext {
    exports: ExportTable,
    gate: Gate,
    /// Transmission threads per connection.
    threads: usize,
    /// The client's address, for logs.
    peer: String,
}

/// A byte stream the handshake and transmission run on: the TCP socket, or over TLS
/// the plaintext end of the connection's TLS pump.
trait Wire: Read + Write + Send + Sized {
    fn shutdown_wire(&self) -> io::Result<()>;
    fn set_read_timeout_wire(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Writes `parts` in order, whole.
    fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        write_all_parts(self, parts)
    }
}

impl Wire for TcpStream {
    /// Every part but the last is sent with `MSG_MORE`, so a reply's header waits for
    /// its data instead of leaving alone. With one `writev` of header and 1 MiB of data
    /// instead, sequential reads over loopback with BBR ran
    /// at 0.68x of nbdkit, which sends this way, with 1.5x the server CPU per request
    /// spent in TCP pacing and in receiving for the client; with MSG_MORE, 0.85x
    /// (kernel 6.18; `net.ipv4.tcp_congestion_control` chooses BBR on this machine).
    fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let Some((last, first)) = parts.split_last() else {
            return Ok(());
        };
        for part in first.iter().filter(|p| !p.is_empty()) {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                match rustix::net::send(&*self, rest, SendFlags::MORE | SendFlags::NOSIGNAL) {
                    Ok(n) => rest = &rest[n..],
                    Err(rustix::io::Errno::INTR) => {}
                    Err(errno) => return Err(errno.into()),
                }
            }
        }
        self.write_all(last)
    }

    fn shutdown_wire(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Both)
    }

    fn set_read_timeout_wire(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

impl Wire for UnixStream {
    fn shutdown_wire(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Both)
    }

    fn set_read_timeout_wire(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)
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

/// Serves one client: the handshake (with a TLS upgrade when the client asks for
/// one), then the transmission phase; `attached` learns the volume it attached to.
fn serve_connection(
    stream: TcpStream,
    context: &ConnectionContext,
    attached: impl FnOnce(&Arc<dyn Volume>),
) -> Result<(), Error> {
    stream
        .set_nodelay(true)
        .map_err(io_error("setting TCP_NODELAY"))?;
    unpaced_on_loopback(&stream);
    stream
        .set_write_timeout(Some(REPLY_WRITE_TIMEOUT))
        .map_err(io_error("setting the write timeout"))?;
    // A client that connects and then says nothing must not hold a thread forever.
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(io_error("setting the handshake timeout"))?;
    let mut writer = stream.try_clone().map_err(io_error("cloning the socket"))?;
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
        Outcome::Abort => Ok(()),
        Outcome::Attach(session) => transmit(reader, writer, session, context, attached),
        Outcome::StartTls(settings) => {
            // The pump owns the socket now; what was read past STARTTLS goes to TLS.
            let early = reader.buffer().to_vec();
            let tcp = reader.into_inner();
            drop(writer);
            let name = thread::current().name().unwrap_or("nbd-conn").to_owned();
            thread::scope(|scope| {
                let session = tls::accept(scope, &settings, tcp, &early, &name)?;
                let identity = session.identity;
                let plain = session.plain;
                plain
                    .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
                    .map_err(io_error("setting the handshake timeout"))?;
                plain
                    .set_write_timeout(Some(REPLY_WRITE_TIMEOUT))
                    .map_err(io_error("setting the write timeout"))?;
                match &identity {
                    Some(who) => info!("{}: TLS with a client certificate, {who}", context.peer),
                    None => debug!("{}: TLS without a client certificate", context.peer),
                }
                let mut writer = plain.try_clone().map_err(io_error("cloning the socket"))?;
                let mut reader = BufReader::with_capacity(256 * 1024, plain);
                // Everything negotiated before TLS is forgotten: a fresh negotiation.
                let secured = Negotiation {
                    context,
                    client,
                    secured: Some(identity.as_ref()),
                };
                match secured.run(&mut reader, &mut writer)? {
                    Outcome::Abort => Ok(()),
                    Outcome::Attach(session) => {
                        transmit(reader, writer, session, context, attached)
                    }
                    Outcome::StartTls(_) => Err(Error::Protocol(
                        "STARTTLS accepted twice on one connection".into(),
                    )),
                }
            })
        }
    }
}

/// The transmission phase of an attached client, with `context.threads` threads.
fn transmit<S: Wire>(
    reader: BufReader<S>,
    writer: S,
    session: Session,
    context: &ConnectionContext,
    attached: impl FnOnce(&Arc<dyn Volume>),
) -> Result<(), Error> {
    // Attached clients may idle as long as they like between requests.
    reader
        .get_ref()
        .set_read_timeout_wire(None)
        .map_err(io_error("clearing the handshake timeout"))?;
    attached(&session.export.volume);
    let connection = Connection {
        volume: session.export.volume,
        limits: session.limits,
        reader: Mutex::new(ReadSide {
            stream: reader,
            batch: Vec::new(),
            end: None,
        }),
        writer: Mutex::new(writer),
        broken: AtomicBool::new(false),
        in_flight: InFlight::new(),
    };
    let name = thread::current().name().unwrap_or("nbd-conn").to_owned();
    thread::scope(|scope| {
        for i in 1..context.threads {
            let spawned = thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn_scoped(scope, || connection.transmit());
            if let Err(err) = spawned {
                warn!("{name}: serving with {i} threads, starting another failed: {err}");
                break;
            }
        }
        connection.transmit();
    });
    let side = connection
        .reader
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    side.end.unwrap_or(Ok(()))
}

/// Serves `export` on `stream` from the transmission phase on, with no handshake:
/// for the kernel's NBD client, which `atrest nbd attach` hands the other end of the
/// socket pair together with the size and flags a handshake would have sent
/// ([`super::kernel::kernel_flags`]). Simple replies only (the kernel negotiates
/// nothing else). Returns when the kernel disconnects (`NBD_CMD_DISC`) or the
/// socket closes.
pub(super) fn serve_kernel_connection(
    export: Export,
    stream: UnixStream,
    threads: usize,
) -> Result<(), Error> {
    stream
        .set_write_timeout(Some(REPLY_WRITE_TIMEOUT))
        .map_err(io_error("setting the write timeout"))?;
    let writer = stream.try_clone().map_err(io_error("cloning the socket"))?;
    let reader = BufReader::with_capacity(256 * 1024, stream);
    let limits = session_limits(&export, false, false);
    let context = ConnectionContext {
        exports: Arc::new(RwLock::new(BTreeMap::new())),
        gate: Gate::default(),
        threads: threads.clamp(1, MAX_THREADS_PER_CONNECTION),
        peer: "the kernel".into(),
    };
    transmit(reader, writer, Session { export, limits }, &context, |_| {})
}

/// What the handshake settled on.
struct Session {
    export: Export,
    limits: SessionLimits,
}

fn resolve(exports: &ExportTable, name: &str) -> Option<(String, Export)> {
    let table = exports.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(export) = table.get(name) {
        return Some((name.to_owned(), export.clone()));
    }
    if !name.is_empty() {
        return None;
    }
    if let Some(export) = table.get(DEFAULT_EXPORT) {
        return Some((DEFAULT_EXPORT.to_owned(), export.clone()));
    }
    match (table.len(), table.iter().next()) {
        (1, Some((only, export))) => Some((only.clone(), export.clone())),
        _ => None,
    }
}

fn read_array<const N: usize>(reader: &mut impl Read) -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    reader
        .read_exact(&mut buf)
        .map_err(io_error("reading from the client"))?;
    Ok(buf)
}

fn drain(reader: &mut impl Read, length: u32) -> Result<(), Error> {
    let copied = io::copy(&mut reader.take(u64::from(length)), &mut io::sink())
        .map_err(io_error("draining a payload"))?;
    if copied < u64::from(length) {
        return Err(Error::Io {
            context: "draining a payload".into(),
            source: io::ErrorKind::UnexpectedEof.into(),
        });
    }
    Ok(())
}

fn send_option(writer: &mut impl Write, bytes: &[u8]) -> Result<(), Error> {
    writer
        .write_all(bytes)
        .map_err(io_error("writing an option reply"))
}

/// How a negotiation ended.
enum Outcome {
    /// The client aborted.
    Abort,
    Attach(Session),
    /// STARTTLS was acknowledged: TLS begins on the socket.
    StartTls(TlsSettings),
}

/// Whether a client may use an export on this connection.
enum Admission {
    Open,
    /// Only over TLS (answered `NBD_REP_ERR_TLS_REQD`).
    TlsRequired,
    /// Not for this client (answered `NBD_REP_ERR_POLICY`); the reason.
    Refused(String),
}

/// One run of the option haggling: in plaintext, or over TLS after STARTTLS (a new
/// run, so nothing negotiated before TLS carries over).
struct Negotiation<'a> {
    context: &'a ConnectionContext,
    client: ClientFlags,
    /// `Some` over TLS, with the client's certificate identity when the server asks
    /// for one.
    secured: Option<Option<&'a ClientIdentity>>,
}

impl Negotiation<'_> {
    /// FORCEDTLS before STARTTLS: every option but STARTTLS and ABORT is refused.
    fn tls_forced(&self) -> bool {
        self.secured.is_none()
            && self
                .context
                .gate
                .tls
                .as_ref()
                .is_some_and(|tls| tls.mode() == TlsMode::Require)
    }

    fn admission(&self, export: &Export) -> Admission {
        if self.tls_forced() {
            return Admission::TlsRequired;
        }
        if export.allowed_clients.is_empty() {
            return Admission::Open;
        }
        match (self.secured, &self.context.gate.tls) {
            (Some(Some(identity)), _) if identity.is_any_of(&export.allowed_clients) => {
                Admission::Open
            }
            (Some(Some(identity)), _) => Admission::Refused(format!(
                "the client certificate ({identity}) is not allowed to use this export"
            )),
            (Some(None), _) => Admission::Refused(
                "this export needs a client certificate, and the server asks for none".into(),
            ),
            (None, Some(_)) => Admission::TlsRequired,
            (None, None) => Admission::Refused(
                "this export needs TLS with a client certificate, which this server does not offer"
                    .into(),
            ),
        }
    }

    /// Logs a refused attach and tells the audit hook.
    fn refused(&self, name: &str, export: &Export, reason: &str) {
        let client = self.secured.flatten();
        let who = client.map_or_else(|| "no client certificate".to_owned(), |c| c.to_string());
        warn!(
            "{}: refused export {name:?} to {who}: {reason}",
            self.context.peer
        );
        if let Some(audit) = &self.context.gate.audit {
            let key_arn = export.volume.encryption_key_arn();
            audit(&Refusal {
                export: name,
                client,
                peer: &self.context.peer,
                key_arn: key_arn.as_deref(),
                reason,
            });
        }
    }

    /// Runs the option haggling to its end.
    fn run(&self, reader: &mut impl Read, writer: &mut impl Write) -> Result<Outcome, Error> {
        use proto::{
            option_error, option_reply, INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_NAME,
            META_BASE_ALLOCATION, META_BASE_ALLOCATION_ID, REP_ACK, REP_ERR_INVALID,
            REP_ERR_POLICY, REP_ERR_TLS_REQD, REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP,
            REP_INFO, REP_META_CONTEXT, REP_SERVER,
        };
        let exports = &self.context.exports;
        let mut structured = false;
        // The export `base:allocation` was selected for, if it was.
        let mut meta_export: Option<String> = None;
        loop {
            let header = OptionHeader::parse(&read_array(reader)?)?;
            let code = header.option;
            debug!("option {code} with {} bytes of data", header.length);
            if header.length > proto::MAX_OPTION_LENGTH {
                if code == proto::OPT_EXPORT_NAME {
                    return Err(Error::Protocol(format!(
                        "export name of {} bytes",
                        header.length
                    )));
                }
                drain(reader, header.length)?;
                send_option(
                    writer,
                    &option_error(code, REP_ERR_TOO_BIG, "option data too long"),
                )?;
                continue;
            }
            let mut data = vec![0u8; header.length as usize];
            reader
                .read_exact(&mut data)
                .map_err(io_error("reading option data"))?;
            if self.tls_forced() && !matches!(code, proto::OPT_STARTTLS | proto::OPT_ABORT) {
                if code == proto::OPT_EXPORT_NAME {
                    // EXPORT_NAME has no error reply; the spec says to drop the connection.
                    return Err(Error::Protocol(
                        "NBD_OPT_EXPORT_NAME before STARTTLS on a server that requires TLS".into(),
                    ));
                }
                let message = "this server requires TLS: send NBD_OPT_STARTTLS first";
                send_option(writer, &option_error(code, REP_ERR_TLS_REQD, message))?;
                continue;
            }
            let option = match proto::parse_option(code, &data) {
                Ok(option) => option,
                // EXPORT_NAME has no error reply; the spec says to drop the connection.
                Err(err) if code == proto::OPT_EXPORT_NAME => return Err(err),
                Err(err) => {
                    send_option(
                        writer,
                        &option_error(code, REP_ERR_INVALID, &err.to_string()),
                    )?;
                    continue;
                }
            };
            match option {
                ClientOption::ExportName(name) => {
                    let (name, export) = resolve(exports, &name).ok_or_else(|| {
                        Error::InvalidRequest(format!("no export named {name:?}"))
                    })?;
                    match self.admission(&export) {
                        Admission::Open => {}
                        Admission::TlsRequired => {
                            return Err(Error::InvalidRequest(format!(
                                "export {name:?} needs TLS; the client asked for it in plaintext"
                            )))
                        }
                        Admission::Refused(reason) => {
                            self.refused(&name, &export, &reason);
                            return Err(Error::InvalidRequest(format!(
                                "export {name:?} refused: {reason}"
                            )));
                        }
                    }
                    export.volume.check_attach()?;
                    let limits = session_limits(&export, structured, false);
                    let flags = proto::transmission_flags(limits.read_only, structured);
                    writer
                        .write_all(&proto::export_name_reply(
                            limits.size,
                            flags,
                            self.client.no_zeroes,
                        ))
                        .map_err(io_error("writing the export reply"))?;
                    return Ok(Outcome::Attach(Session { export, limits }));
                }
                ClientOption::Abort => {
                    // The client may already be gone; the spec says not to mind.
                    let _ = writer.write_all(&option_reply(code, REP_ACK, &[]));
                    return Ok(Outcome::Abort);
                }
                ClientOption::StartTls => match (&self.context.gate.tls, self.secured) {
                    (Some(settings), None) => {
                        send_option(writer, &option_reply(code, REP_ACK, &[]))?;
                        return Ok(Outcome::StartTls(settings.clone()));
                    }
                    (Some(_), Some(_)) => {
                        let message = "TLS is already active on this connection";
                        send_option(writer, &option_error(code, REP_ERR_INVALID, message))?;
                    }
                    (None, _) => {
                        let message = "this server is not configured for TLS";
                        send_option(writer, &option_error(code, REP_ERR_UNSUP, message))?;
                    }
                },
                ClientOption::List => {
                    // Exports this client could not use are not shown.
                    let table: Vec<(String, Option<String>)> = exports
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .iter()
                        .filter(|(_, e)| matches!(self.admission(e), Admission::Open))
                        .map(|(name, e)| (name.clone(), e.description.clone()))
                        .collect();
                    for (name, description) in table {
                        let data = proto::rep_server(&name, description.as_deref().unwrap_or(""));
                        send_option(writer, &option_reply(code, REP_SERVER, &data))?;
                    }
                    send_option(writer, &option_reply(code, REP_ACK, &[]))?;
                }
                ClientOption::Info(query) | ClientOption::Go(query) => {
                    debug!(
                        "option {code}: export {:?}, information requested {:?}",
                        query.name, query.info_requests
                    );
                    let Some((name, export)) = resolve(exports, &query.name) else {
                        let message = format!("no export named {:?}", query.name);
                        send_option(writer, &option_error(code, REP_ERR_UNKNOWN, &message))?;
                        continue;
                    };
                    match self.admission(&export) {
                        Admission::Open => {}
                        Admission::TlsRequired => {
                            let message = format!("export {name:?} is served only over TLS");
                            send_option(writer, &option_error(code, REP_ERR_TLS_REQD, &message))?;
                            continue;
                        }
                        Admission::Refused(reason) => {
                            self.refused(&name, &export, &reason);
                            send_option(writer, &option_error(code, REP_ERR_POLICY, &reason))?;
                            continue;
                        }
                    }
                    if let Err(err) = export.volume.check_attach() {
                        send_option(
                            writer,
                            &option_error(code, REP_ERR_POLICY, &err.to_string()),
                        )?;
                        continue;
                    }
                    let block_status = meta_export.as_deref() == Some(name.as_str());
                    let limits = session_limits(&export, structured, block_status);
                    let flags = proto::transmission_flags(limits.read_only, structured);
                    let mut infos = vec![proto::info_export(limits.size, flags)];
                    if query.info_requests.contains(&INFO_NAME) {
                        infos.push(proto::info_string(INFO_NAME, &name));
                    }
                    if let (true, Some(text)) = (
                        query.info_requests.contains(&INFO_DESCRIPTION),
                        &export.description,
                    ) {
                        infos.push(proto::info_string(INFO_DESCRIPTION, text));
                    }
                    if query.info_requests.contains(&INFO_BLOCK_SIZE) {
                        infos.push(proto::info_block_size(
                            1,
                            export.volume.block_size(),
                            proto::MAX_PAYLOAD,
                        ));
                    }
                    for info in infos {
                        send_option(writer, &option_reply(code, REP_INFO, &info))?;
                    }
                    send_option(writer, &option_reply(code, REP_ACK, &[]))?;
                    if code == proto::OPT_GO {
                        return Ok(Outcome::Attach(Session { export, limits }));
                    }
                }
                ClientOption::StructuredReply => {
                    structured = true;
                    send_option(writer, &option_reply(code, REP_ACK, &[]))?;
                }
                ClientOption::ListMetaContext(query) | ClientOption::SetMetaContext(query) => {
                    if !structured {
                        let message = "negotiate structured replies before metadata contexts";
                        send_option(writer, &option_error(code, REP_ERR_INVALID, message))?;
                        continue;
                    }
                    let Some((name, export)) = resolve(exports, &query.export) else {
                        let message = format!("no export named {:?}", query.export);
                        send_option(writer, &option_error(code, REP_ERR_UNKNOWN, &message))?;
                        continue;
                    };
                    match self.admission(&export) {
                        Admission::Open => {}
                        Admission::TlsRequired => {
                            let message = format!("export {name:?} is served only over TLS");
                            send_option(writer, &option_error(code, REP_ERR_TLS_REQD, &message))?;
                            continue;
                        }
                        Admission::Refused(reason) => {
                            send_option(writer, &option_error(code, REP_ERR_POLICY, &reason))?;
                            continue;
                        }
                    }
                    let listing = code == proto::OPT_LIST_META_CONTEXT;
                    let selected = if query.queries.is_empty() {
                        listing
                    } else {
                        query
                            .queries
                            .iter()
                            .any(|q| q == META_BASE_ALLOCATION || (listing && q == "base:"))
                    };
                    if selected {
                        let id = if listing { 0 } else { META_BASE_ALLOCATION_ID };
                        let data = proto::rep_meta_context(id, META_BASE_ALLOCATION);
                        send_option(writer, &option_reply(code, REP_META_CONTEXT, &data))?;
                    }
                    if !listing {
                        meta_export = selected.then_some(name);
                    }
                    send_option(writer, &option_reply(code, REP_ACK, &[]))?;
                }
                ClientOption::Unsupported(other) => {
                    let message = format!("option {other} is not supported");
                    send_option(writer, &option_error(code, REP_ERR_UNSUP, &message))?;
                }
            }
        }
    }
}

fn session_limits(export: &Export, structured: bool, block_status: bool) -> SessionLimits {
    SessionLimits {
        size: export.volume.size(),
        read_only: export.read_only(),
        structured,
        block_status,
    }
}

/// The transmission phase of one client.
struct Connection<S> {
    volume: Arc<dyn Volume>,
    limits: SessionLimits,
    /// Held by the one thread reading a request; released before it runs it.
    reader: Mutex<ReadSide<S>>,
    writer: Mutex<S>,
    /// Set when a reply could not be written; nothing more is sent.
    broken: AtomicBool,
    in_flight: InFlight,
}

struct ReadSide<S> {
    stream: BufReader<S>,
    /// Replies to reads answered while reading (see [`INLINE_READ_MAX`]), not yet sent.
    batch: Vec<u8>,
    /// How reading ended (end of stream, DISC, an error), once it has: the other
    /// threads then finish what they run and stop.
    end: Option<Result<(), Error>>,
}

/// A request read and admitted, for the thread that read it to run.
struct Request<'a> {
    cookie: u64,
    command: Command,
    /// A write's data: in the reading thread's kept buffer (`Kept`, this many
    /// bytes), or, when larger than [`KEPT_READ_BUFFER`], a buffer of its own.
    payload: Payload,
    permit: Permit<'a>,
}

enum Payload {
    Kept(usize),
    Own(Vec<u8>),
}

impl<S: Wire> Connection<S> {
    /// One transmission thread: read a request, run it, reply; until reading ends.
    fn transmit(&self) {
        let mut read_buffer = Vec::new();
        // Write payloads up to KEPT_READ_BUFFER land here, zero-filled only when it
        // grows: a fresh zeroed 1 MiB buffer per write was 10% of the server's CPU.
        let mut kept_payload = Vec::new();
        while let Some(request) = self.next_request(&mut kept_payload) {
            let run = || {
                let payload = match &request.payload {
                    Payload::Kept(len) => &kept_payload[..*len],
                    Payload::Own(own) => own,
                };
                let mut execute =
                    || self.execute(request.cookie, request.command, payload, &mut read_buffer);
                // With a request in flight per core, every core already has one to
                // run: splitting this one's crypto over the pool only adds hand-offs.
                if request.permit.crowded {
                    crypto_core::xts::serially(execute)
                } else {
                    execute()
                }
            };
            // A panicking volume call must not take the connection's thread with it.
            if std::panic::catch_unwind(AssertUnwindSafe(run)).is_err() {
                error!("a request panicked; it got no reply");
            }
        }
    }

    /// Takes the read lock and reads the next request to run; `None` once reading
    /// has ended (here or in another thread).
    fn next_request(&self, kept_payload: &mut Vec<u8>) -> Option<Request<'_>> {
        let mut side = lock(&self.reader);
        if side.end.is_some() {
            return None;
        }
        let ReadSide { stream, batch, .. } = &mut *side;
        let next = self.read_request(stream, batch, kept_payload);
        self.send_batch(batch);
        match next {
            Ok(Some(request)) => Some(request),
            Ok(None) => {
                side.end = Some(Ok(()));
                None
            }
            Err(err) => {
                side.end = Some(Err(err));
                None
            }
        }
    }

    /// Reads requests until one is to be run, answering the rejected ones and the
    /// small reads the page cache holds on the way (into `batch`, sent whenever the
    /// client has no further request waiting); `None` when the client is done (end of
    /// stream, DISC) or a reply failed. The caller sends what is left in `batch`.
    fn read_request(
        &self,
        reader: &mut BufReader<S>,
        batch: &mut Vec<u8>,
        kept_payload: &mut Vec<u8>,
    ) -> Result<Option<Request<'_>>, Error> {
        loop {
            // About to wait for the client: what it asked for so far goes out first.
            if reader.buffer().len() < proto::REQUEST_HEADER_LEN || batch.len() >= BATCH_BYTES {
                self.send_batch(batch);
            }
            let mut head = [0u8; proto::REQUEST_HEADER_LEN];
            match reader.read_exact(&mut head) {
                Ok(()) => {}
                // A client that closes between requests (or after DISC) ends cleanly.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(source) => {
                    return Err(Error::Io {
                        context: "reading a request".into(),
                        source,
                    })
                }
            }
            if self.broken.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let header = RequestHeader::parse(&head)?;
            let command = match header.validate(&self.limits) {
                Ok(Command::Disconnect) => return Ok(None),
                Ok(command) => command,
                Err(err) => {
                    debug!(
                        "rejected {} request: {err}",
                        proto::command_name(header.kind)
                    );
                    drain(reader, header.payload_length())?;
                    self.reply_error(header.cookie, header.kind, &err);
                    continue;
                }
            };
            if let Command::Read { offset, length } = command {
                if length <= INLINE_READ_MAX
                    && self.read_inline(header.cookie, offset, length, batch)
                {
                    continue;
                }
            }
            let cost = match command {
                Command::Read { length, .. } | Command::Write { length, .. } => u64::from(length),
                _ => 0,
            };
            let permit = self.in_flight.acquire(cost);
            let len = header.payload_length() as usize;
            // Every byte of the kept buffer's first `len` is overwritten by read_exact
            // (or the connection ends), so it needs no zero-filling.
            let payload = if len <= KEPT_READ_BUFFER {
                if kept_payload.len() < len {
                    kept_payload.resize(len, 0);
                }
                reader
                    .read_exact(&mut kept_payload[..len])
                    .map_err(io_error("reading a write payload"))?;
                Payload::Kept(len)
            } else {
                let mut own = vec![0u8; len];
                reader
                    .read_exact(&mut own)
                    .map_err(io_error("reading a write payload"))?;
                Payload::Own(own)
            };
            return Ok(Some(Request {
                cookie: header.cookie,
                command,
                payload,
                permit,
            }));
        }
    }

    /// Runs one request and replies; a read fills `read_buffer` (see [`KEPT_READ_BUFFER`]).
    fn execute(&self, cookie: u64, command: Command, payload: &[u8], read_buffer: &mut Vec<u8>) {
        let volume = &*self.volume;
        let flush_if = |fua: bool| if fua { volume.flush() } else { Ok(()) };
        let (kind, outcome) = match command {
            Command::Read { offset, length } => {
                return self.read(cookie, offset, length, read_buffer)
            }
            Command::BlockStatus {
                offset,
                length,
                one,
            } => return self.block_status(cookie, offset, length, one),
            Command::Write { offset, fua, .. } => (
                CMD_WRITE,
                volume
                    .write_at(offset, payload)
                    .and_then(|()| flush_if(fua)),
            ),
            Command::Flush => (CMD_FLUSH, volume.flush()),
            Command::Trim {
                offset,
                length,
                fua,
            } => (
                CMD_TRIM,
                volume
                    .trim(offset, u64::from(length))
                    .and_then(|()| flush_if(fua)),
            ),
            Command::Cache { offset, length } => (CMD_CACHE, self.cache(offset, length)),
            Command::WriteZeroes {
                offset,
                length,
                fua,
                may_punch,
            } => (
                CMD_WRITE_ZEROES,
                volume
                    .write_zeroes(offset, u64::from(length), may_punch)
                    .and_then(|()| flush_if(fua)),
            ),
            // Reading ends the connection on DISC; it is never run.
            Command::Disconnect => return,
        };
        match outcome {
            Ok(()) => self.send(&[&proto::simple_reply(cookie, None)]),
            Err(err) => self.reply_error(cookie, kind, &err),
        }
    }

    fn read(&self, cookie: u64, offset: u64, length: u32, kept: &mut Vec<u8>) {
        let len = length as usize;
        let mut own = Vec::new();
        // Every byte is overwritten by a successful read_at, and a failed one sends
        // none, so a reused buffer needs no zero-filling.
        let buf = if len <= KEPT_READ_BUFFER {
            if kept.len() < len {
                kept.resize(len, 0);
            }
            &mut kept[..len]
        } else {
            own.resize(len, 0);
            &mut own[..]
        };
        if let Err(err) = self.volume.read_at(offset, buf) {
            return self.reply_error(cookie, CMD_READ, &err);
        }
        if !self.limits.structured {
            return self.send(&[&proto::simple_reply(cookie, None), buf]);
        }
        if is_zero(buf) {
            return self.send(&[&proto::offset_hole_chunk(cookie, offset, length)]);
        }
        match proto::offset_data_header(cookie, offset, buf.len()) {
            Ok(header) => self.send(&[&header, buf]),
            Err(err) => self.reply_error(cookie, CMD_READ, &err),
        }
    }

    /// Answers a small read into `batch` when the page cache holds its data; `false`
    /// (and `batch` as it was) when it needs the disk or fails: the request then runs
    /// the ordinary way, off the read lock, which also reports any error.
    fn read_inline(&self, cookie: u64, offset: u64, length: u32, batch: &mut Vec<u8>) -> bool {
        let start = batch.len();
        let head = if self.limits.structured {
            proto::OFFSET_DATA_HEADER_LEN
        } else {
            proto::SIMPLE_REPLY_LEN
        };
        let data_at = start + head;
        batch.resize(data_at + length as usize, 0);
        if !matches!(
            self.volume.read_cached(offset, &mut batch[data_at..]),
            Ok(true)
        ) {
            batch.truncate(start);
            return false;
        }
        if !self.limits.structured {
            batch[start..data_at].copy_from_slice(&proto::simple_reply(cookie, None));
            return true;
        }
        if is_zero(&batch[data_at..]) {
            batch.truncate(start);
            batch.extend_from_slice(&proto::offset_hole_chunk(cookie, offset, length));
            return true;
        }
        match proto::offset_data_header(cookie, offset, length as usize) {
            Ok(header) => {
                batch[start..data_at].copy_from_slice(&header);
                true
            }
            Err(_) => {
                batch.truncate(start);
                false
            }
        }
    }

    /// Sends the replies gathered in `batch`, in one write.
    fn send_batch(&self, batch: &mut Vec<u8>) {
        if !batch.is_empty() {
            self.send(&[batch]);
            batch.clear();
        }
    }

    fn block_status(&self, cookie: u64, offset: u64, length: u32, one: bool) {
        match self.volume.allocation(offset, u64::from(length)) {
            Ok(extents) => {
                let descriptors = proto::block_descriptors(&extents, length, one);
                let chunk =
                    proto::block_status_chunk(cookie, proto::META_BASE_ALLOCATION_ID, &descriptors);
                self.send(&[&chunk]);
            }
            Err(err) => self.reply_error(cookie, CMD_BLOCK_STATUS, &err),
        }
    }

    /// Prefetch: reading the range pulls the volume file's pages into the OS cache.
    fn cache(&self, offset: u64, length: u32) -> Result<(), Error> {
        let mut scratch = vec![0u8; length.min(CACHE_PIECE) as usize];
        let mut done = 0u32;
        while done < length {
            let piece = (length - done).min(CACHE_PIECE);
            self.volume
                .read_at(offset + u64::from(done), &mut scratch[..piece as usize])?;
            done += piece;
        }
        Ok(())
    }

    fn reply_error(&self, cookie: u64, kind: u16, err: &Error) {
        let code = errno(err, kind);
        debug!(
            "{} failed: {err} (errno {})",
            proto::command_name(kind),
            code.code()
        );
        if self.limits.structured {
            self.send(&[&proto::error_chunk(cookie, code, &err.to_string())]);
        } else {
            self.send(&[&proto::simple_reply(cookie, Some(code))]);
        }
    }

    fn send(&self, parts: &[&[u8]]) {
        if self.broken.load(Ordering::SeqCst) {
            return;
        }
        let mut writer = lock(&self.writer);
        if let Err(err) = writer.write_parts(parts) {
            debug!("dropping the connection: a reply could not be written: {err}");
            self.broken.store(true, Ordering::SeqCst);
            let _ = writer.shutdown_wire();
        }
    }
}

fn write_all_parts(writer: &mut impl Write, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match writer.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn is_zero(buf: &[u8]) -> bool {
    // Whole 64-byte blocks OR-folded vectorise well and stop at the first data.
    let mut blocks = buf.chunks_exact(64);
    blocks.all(|b| b.iter().fold(0, |acc, &x| acc | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

/// Counts a connection's requests and payload bytes in flight.
struct InFlight {
    state: Mutex<FlightState>,
    changed: Condvar,
    /// From this many requests in flight on, each runs its crypto on its own thread.
    crowded_at: usize,
}

#[derive(Default)]
struct FlightState {
    requests: usize,
    bytes: u64,
    /// Only the thread holding the read lock ever waits; releasing skips the
    /// wake-up syscall when it does not.
    reader_waiting: bool,
}

impl InFlight {
    fn new() -> Self {
        InFlight {
            state: Mutex::default(),
            changed: Condvar::new(),
            crowded_at: thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// Waits until the byte budget has room for `cost`. A request larger than the
    /// budget still runs, alone.
    fn acquire(&self, cost: u64) -> Permit<'_> {
        let mut state = lock(&self.state);
        while state.requests > 0 && state.bytes.saturating_add(cost) > MAX_BYTES_IN_FLIGHT {
            state.reader_waiting = true;
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.reader_waiting = false;
        state.requests += 1;
        state.bytes = state.bytes.saturating_add(cost);
        Permit {
            flight: self,
            cost,
            crowded: state.requests >= self.crowded_at,
        }
    }
}

/// One request's place in flight; released when it is done (or unwinds).
struct Permit<'a> {
    flight: &'a InFlight,
    cost: u64,
    /// There were as many requests in flight as cores when this one was admitted.
    crowded: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.flight.state);
        state.requests = state.requests.saturating_sub(1);
        state.bytes = state.bytes.saturating_sub(self.cost);
        if state.reader_waiting {
            self.flight.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn errno_follows_the_spec() {
        let oob = Error::OutOfRange {
            offset: 0,
            length: 1,
            size: 0,
        };
        assert_eq!(errno(&oob, CMD_READ), Errno::Inval);
        assert_eq!(errno(&oob, CMD_TRIM), Errno::Inval);
        assert_eq!(errno(&oob, CMD_WRITE), Errno::NoSpc);
        assert_eq!(errno(&oob, CMD_WRITE_ZEROES), Errno::NoSpc);
        assert_eq!(errno(&Error::ReadOnly, CMD_WRITE), Errno::Perm);
        let key = Error::KeyUnavailable {
            key_arn: "arn".into(),
            reason: "Disabled".into(),
        };
        assert_eq!(errno(&key, CMD_READ), Errno::Io);
        let full = Error::Io {
            context: "w".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(errno(&full, CMD_WRITE), Errno::NoSpc);
        let other = Error::Io {
            context: "w".into(),
            source: io::Error::from_raw_os_error(libc::EBADF),
        };
        assert_eq!(errno(&other, CMD_WRITE), Errno::Io);
        assert_eq!(
            errno(&Error::TooLarge { length: 1, max: 0 }, CMD_WRITE),
            Errno::Overflow
        );
    }

    #[test]
    fn is_zero_sees_a_single_byte_anywhere() {
        for len in [0usize, 1, 63, 64, 65, 4096, 4099] {
            let mut buf = vec![0u8; len];
            assert!(is_zero(&buf));
            for i in 0..len {
                buf[i] = 1;
                assert!(!is_zero(&buf), "len {len} byte {i}");
                buf[i] = 0;
            }
        }
    }

    #[test]
    fn write_all_parts_skips_empty_parts() {
        let mut out = Vec::new();
        write_all_parts(&mut out, &[b"", b"ab", b"", b"c"]).unwrap();
        assert_eq!(out, b"abc");
    }
}
