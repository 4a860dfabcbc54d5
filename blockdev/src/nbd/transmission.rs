//! The transmission phase: requests read, run and answered, for TCP clients and the
//! kernel's NBD client alike, and the one mapping from [`crate::Error`] to NBD errno.
//!
//! Threads: per connection, the thread that ran the handshake and a few more (the
//! server's parked helper threads, [`HelperPool`], with their kept buffers from its
//! [`BufferPool`]) take turns as the reader:
//! each reads one whole request under the connection's read lock, lets go of it, runs
//! the request and writes the reply under the write lock, so requests run side by side
//! and replies leave in completion order with no hand-off between threads (a wake-up
//! per request cost more than the crypto). Small reads whose data is in the page cache
//! are answered by the reading thread itself, their replies gathered and written
//! together once no further request is waiting ([`INLINE_READ_MAX`]); over TLS the
//! reader first asks the socket, without waiting, whether the client's next request
//! came meanwhile and answers it too ([`Probe`]), so that several replies share a
//! record and the client wakes once for them. Anything that may wait for the disk
//! goes the ordinary way, and the gathered replies leave before it. Each connection
//! bounds its requests in flight (in number by its threads, in bytes by its own cap
//! and the server's [`MemoryBudget`]), so a client that floods requests or never
//! reads its replies stalls only itself. Crypto for a large request
//! is spread over the cores (the rayon pool) unless the connection already has a
//! request in flight per core (for a write, counting the thread that receives the
//! next payload meanwhile).
//!
//! Writes: a payload lands in the reading thread's kept buffer (or one of its own when
//! larger), large ones straight from the socket ([`DIRECT_PAYLOAD_MIN`]), and the
//! volume encrypts it there in place and writes it from there
//! ([`Volume::write_in_place`]): one copy in from the socket, one pass of the cipher,
//! one copy out to the page cache, as for an unencrypted server plus the cipher.
//!
//! Small writes (up to [`HELD_WRITE_MAX`], no FUA) cost more in hand-offs and system
//! calls than in work, so two things batch them. A thread that reads one takes up to
//! [`TAKE_MAX`] of them when the read buffer already holds them whole (one `recv`
//! having brought many) and runs them in turn: one wake-up of the next reader for
//! several requests. And their replies are held: a held write settles its reply into
//! the connection's held replies, and whichever held write finishes last among those
//! running sends them all in one write (as does any other reply, first, or the
//! [`HELD_REPLIES_MAX`]th). A write with no other held write running is answered at
//! once, so a lone request never waits; FUA writes, flushes and everything else reply
//! as before. Every write is in the volume before its reply is queued, so FLUSH and
//! FUA keep their meaning: a reply only ever leaves later, never earlier.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SendError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread;
use std::time::Duration;

use rustix::net::SendFlags;
use tracing::{debug, error, warn};

use super::budget::{Charge, MemoryBudget, Reserve};
use super::negotiation::{session_limits, Session};
use super::proto::{
    self, Command, Errno, RequestHeader, SessionLimits, CMD_BLOCK_STATUS, CMD_CACHE, CMD_FLUSH,
    CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES,
};
use super::server::{
    io_error, lock, ConnectionContext, Export, Gate, MAX_THREADS_PER_CONNECTION,
    REPLY_WRITE_TIMEOUT,
};
use crate::volume::Volume;
use crate::zero::is_zero;
use crate::Error;

/// Payload bytes (read and write buffers) one connection may have in flight; the
/// server's [`MemoryBudget`] bounds them all together. Twice what the common clients
/// keep in flight (nbdcopy 64 x 256 KiB, fio QD8 x 1 MiB, the kernel's client up to
/// 16 x 128 KiB with 16 threads): a larger request (qemu's are up to 32 MiB) runs
/// alone.
const MAX_BYTES_IN_FLIGHT: u64 = 32 * 1024 * 1024;
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
/// Writes up to this size without FUA are held writes: their replies may wait for the
/// other held writes running at the same time and leave with them in one `send` (see
/// [`Connection::settle_held`]). On loopback, each 16-byte reply sent on its own was
/// about a third of the server's CPU in 4 KiB random writes (TCP transmit plus the
/// client's receive, which the sender runs), and the client woke once per reply.
const HELD_WRITE_MAX: u32 = 64 * 1024;
/// Held replies leave once this many are waiting, even if held writes still run: a
/// client that keeps a deep queue full never lets their number fall to zero.
const HELD_REPLIES_MAX: usize = 16;
/// A thread that reads a held write takes up to this many in all when the read buffer
/// already holds them whole, and runs them one after another: each request handed to
/// another thread cost a futex wake-up and a task switch (together with the spinning
/// on the read lock, a fifth of the server's CPU in 4 KiB random writes on 2 cores),
/// while a few writes of a few microseconds each keep a thread only briefly. 16
/// rather than 4 halved the futex calls per request again (0.5-0.8 -> 0.3-0.4).
const TAKE_MAX: usize = 16;
/// CACHE reads the range through the volume in pieces of this size.
const CACHE_PIECE: u32 = 4 * 1024 * 1024;
/// Write payloads at least this long are read from the socket straight into the
/// request's buffer, and so is the header of the request after one: through the
/// connection's read buffer, which reads ahead as far as the socket allows, most of
/// each 1 MiB payload of a sequential writer was copied twice (the tail of one
/// payload, the next header and the start of the next payload arrive in the buffer
/// together). Smaller requests keep reading ahead: one `recv` then serves many.
const DIRECT_PAYLOAD_MIN: usize = 64 * 1024;

/// A transmission thread's kept buffers up to this size go back to the server's
/// [`BufferPool`] when its connection ends, for the next connection's threads; larger
/// ones are freed, so an idle server holds at most this much twice per pooled set.
const POOLED_BUFFER_MAX: usize = 128 * 1024;

/// Transmission threads' kept buffers (a read buffer and a write payload buffer each),
/// handed from one connection to the next: a connection's threads started with empty
/// buffers that grew, zero-filled and faulted in afresh, with its first requests (a
/// quarter of what a short connection cost the `nbd_session` fuzz target). A set goes
/// back zero-filled (its bytes were a client's data), and only while the pool holds
/// fewer sets than `limit`; so no byte of one connection is ever in another's
/// buffers, even if a volume's read were to leave part of its buffer unwritten.
pub(super) struct BufferPool {
    sets: Mutex<Vec<KeptBuffers>>,
    limit: usize,
}

/// One transmission thread's kept buffers; see [`KEPT_READ_BUFFER`] and [`Payload`].
#[derive(Default)]
struct KeptBuffers {
    read: Vec<u8>,
    payload: Vec<u8>,
}

impl BufferPool {
    /// A pool that keeps at most `limit` sets (one per transmission thread of a
    /// connection is enough for connections served one after another).
    pub(super) fn new(limit: usize) -> Self {
        Self {
            sets: Mutex::new(Vec::new()),
            limit,
        }
    }

    /// A kept set, or an empty one.
    fn take(&self) -> KeptBuffers {
        lock(&self.sets).pop().unwrap_or_default()
    }

    /// Takes `set` back, zero-filled, unless the pool is full; buffers past
    /// [`POOLED_BUFFER_MAX`] are freed instead.
    fn give_back(&self, mut set: KeptBuffers) {
        if lock(&self.sets).len() >= self.limit {
            return;
        }
        for buffer in [&mut set.read, &mut set.payload] {
            if buffer.len() > POOLED_BUFFER_MAX {
                *buffer = Vec::new();
            }
            buffer.fill(0);
        }
        let mut sets = lock(&self.sets);
        if sets.len() < self.limit {
            sets.push(set);
        }
    }

    /// How many sets are kept (for tests).
    #[cfg(test)]
    fn kept(&self) -> usize {
        lock(&self.sets).len()
    }
}

impl std::fmt::Debug for BufferPool {
    /// The number of sets, never their bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("sets", &lock(&self.sets).len())
            .field("limit", &self.limit)
            .finish()
    }
}

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
        // TLS fails in the handshake or the record layer, never in a request.
        Error::Tls(_) => Errno::Io,
        // Only `volume::create` and header construction return these, never a request.
        // Opening fails with InUse, before any request.
        Error::AlreadyExists { .. } | Error::InvalidArgument { .. } | Error::InUse { .. } => {
            Errno::Inval
        }
    }
}

/// A byte stream the handshake and transmission run on: the TCP socket, over TLS the
/// session's record layer (`tls::TlsStream`), or the kernel client's socket pair.
pub(super) trait Wire: Read + Write + Send + Sized + 'static {
    /// Ends both directions (a reply could not be written).
    fn shutdown_wire(&self) -> io::Result<()>;
    /// How long a read may wait (`None`: for ever).
    fn set_read_timeout_wire(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// How long a write may wait (`None`: for ever).
    fn set_write_timeout_wire(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Writes `parts` in order, whole.
    fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        write_all_parts(self, parts)
    }
    /// Writes a read reply: `header`, then `data`, which the wire may overwrite (TLS
    /// seals it in place instead of copying it).
    fn write_reply(&mut self, header: &[u8], data: &mut [u8]) -> io::Result<()> {
        self.write_parts(&[header, data])
    }
    /// Whether at least `need` bytes (never more than a request header) can be read
    /// now without waiting, asking the socket without blocking: the reader then
    /// answers those requests too before it sends the replies it gathered
    /// ([`BATCH_BYTES`]). `false` whenever unsure (the end of the stream, an error, a
    /// TLS record not yet whole): the gathered replies then leave at once. Only TLS
    /// asks: there several replies share a record, which the client pays for per
    /// record; a plaintext client (libnbd) reads each reply with its own `recv`s
    /// anyway, and the look cost the server more than the sends it saved (2.1 -> 2.5
    /// us per 4 KiB read, benches/README.md "Rand read over TLS, session 9").
    fn ready(&self, need: usize) -> bool {
        let _ = need;
        false
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

    fn set_write_timeout_wire(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_write_timeout(timeout)
    }
}

impl Wire for UnixStream {
    fn shutdown_wire(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Both)
    }

    fn set_read_timeout_wire(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)
    }

    fn set_write_timeout_wire(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_write_timeout(timeout)
    }
}

/// Serves `volume` (simple replies) to one client on `stream` with `threads` threads,
/// as after a handshake, until the client is done: for this module's and the TLS
/// record layer's tests.
#[cfg(test)]
pub(super) fn serve_for_test<S: Wire>(
    reader: S,
    writer: S,
    volume: Arc<dyn Volume>,
    threads: usize,
) -> Result<(), Error> {
    let export = Export {
        volume,
        read_only: false,
        description: None,
        allowed_clients: Vec::new(),
    };
    let limits = session_limits(&export, false, false);
    let context = ConnectionContext {
        exports: Arc::new(RwLock::new(BTreeMap::new())),
        gate: Gate::default(),
        threads,
        idle_timeout: None,
        peer: "a test".into(),
        buffers: Arc::new(BufferPool::new(threads)),
        helpers: HelperPool::new(threads),
        budget: Arc::new(MemoryBudget::unbounded()),
    };
    let reader = BufReader::with_capacity(256 * 1024, reader);
    transmit(reader, writer, Session { export, limits }, &context, |_| {})
}

/// The transmission phase of an attached client, with `context.threads` threads.
pub(super) fn transmit<S: Wire>(
    reader: BufReader<S>,
    writer: S,
    session: Session,
    context: &ConnectionContext,
    attached: impl FnOnce(&Arc<dyn Volume>),
) -> Result<(), Error> {
    // Attached clients may idle as long as they like between requests, unless the
    // server has an idle timeout.
    reader
        .get_ref()
        .set_read_timeout_wire(context.idle_timeout)
        .map_err(io_error("replacing the handshake timeout"))?;
    attached(&session.export.volume);
    let connection = Arc::new(Connection {
        volume: session.export.volume,
        limits: session.limits,
        reader: Mutex::new(ReadSide {
            stream: reader,
            batch: Vec::new(),
            header_past_buffer: false,
            probe: Probe::default(),
            end: None,
        }),
        writer: Mutex::new(ReplySide {
            stream: writer,
            held: Vec::new(),
            held_replies: 0,
        }),
        held_running: AtomicUsize::new(0),
        broken: AtomicBool::new(false),
        in_flight: InFlight::new(Arc::clone(&context.budget)),
        buffers: Arc::clone(&context.buffers),
    });
    // The other threads are the server's parked helpers (started only when none is
    // idle); this thread waits until every one has finished with the connection, as
    // a scope of its own threads would.
    let helpers = Latch::default();
    for i in 1..context.threads {
        let (connection, done) = (Arc::clone(&connection), helpers.started());
        let job = Box::new(move || {
            connection.transmit();
            // Before the latch opens: the connection's last clone is this thread's.
            drop(connection);
            drop(done);
        });
        if let Err(err) = context.helpers.run(job) {
            warn!(
                "{}: serving with {i} threads, starting another failed: {err}",
                context.peer
            );
            break;
        }
    }
    // Should this thread's share unwind, the connection still ends only after its
    // helpers have: its place in the limits is held until then.
    let own = std::panic::catch_unwind(AssertUnwindSafe(|| connection.transmit()));
    helpers.wait();
    if let Err(panic) = own {
        std::panic::resume_unwind(panic);
    }
    let end = lock(&connection.reader).end.take();
    end.unwrap_or(Ok(()))
}

/// Counts a connection's helper threads still running it.
#[derive(Default)]
struct Latch(Arc<(Mutex<usize>, Condvar)>);

/// One running helper; the count drops when this does (also when a helper's job
/// unwinds).
struct Running(Arc<(Mutex<usize>, Condvar)>);

impl Latch {
    fn started(&self) -> Running {
        *lock(&self.0 .0) += 1;
        Running(Arc::clone(&self.0))
    }

    /// Until every [`Running`] is dropped (or its job never started).
    fn wait(&self) {
        let (count, done) = &*self.0;
        let mut left = lock(count);
        while *left > 0 {
            left = done.wait(left).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let (count, done) = &*self.0;
        *lock(count) -= 1;
        done.notify_all();
    }
}

/// What a helper thread runs: one connection's share of transmission.
type Job = Box<dyn FnOnce() + Send>;

/// Transmission threads kept from one connection to the next: a connection's helper
/// threads (all but the one that ran its handshake) are taken from here, parked on a
/// channel between connections, instead of started per connection (a thread start
/// is a stack mapped and faulted in, and under AddressSanitizer much more: a fifth of
/// what a short connection cost the `nbd_session` fuzz target). At most `limit`
/// threads stay parked; the rest end when their connection does, and parked ones end
/// when the pool is dropped (with the server).
pub(super) struct HelperPool {
    idle: Mutex<Vec<Sender<Option<Job>>>>,
    limit: usize,
}

impl HelperPool {
    /// A pool that parks at most `limit` idle threads.
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            limit,
        })
    }

    /// Runs `job` on a parked thread, or on a new one when none is idle.
    fn run(self: &Arc<Self>, job: Job) -> io::Result<()> {
        let mut job = Some(job);
        loop {
            let parked = lock(&self.idle).pop();
            let Some(parked) = parked else { break };
            match parked.send(job.take()) {
                Ok(()) => return Ok(()),
                // That thread has ended: the job comes back.
                Err(SendError(back)) => job = back,
            }
        }
        let (sender, jobs) = mpsc::channel::<Option<Job>>();
        let _ = sender.send(job);
        let pool = Arc::downgrade(self);
        thread::Builder::new()
            .name("nbd-transmit".into())
            .spawn(move || {
                while let Ok(Some(job)) = jobs.recv() {
                    job();
                    let Some(pool) = pool.upgrade() else { return };
                    let mut idle = lock(&pool.idle);
                    if idle.len() >= pool.limit {
                        return;
                    }
                    idle.push(sender.clone());
                }
            })
            .map(drop)
    }

    /// Parked threads (for tests).
    #[cfg(test)]
    fn parked(&self) -> usize {
        lock(&self.idle).len()
    }
}

impl Drop for HelperPool {
    /// Parked threads end (busy ones end after their job, finding no pool).
    fn drop(&mut self) {
        for parked in lock(&self.idle).drain(..) {
            let _ = parked.send(None);
        }
    }
}

impl std::fmt::Debug for HelperPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelperPool")
            .field("parked", &lock(&self.idle).len())
            .field("limit", &self.limit)
            .finish()
    }
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
        // The kernel idles as long as the device does.
        idle_timeout: None,
        peer: "the kernel".into(),
        buffers: Arc::new(BufferPool::new(0)),
        helpers: HelperPool::new(0),
        budget: Arc::new(MemoryBudget::unbounded()),
    };
    transmit(reader, writer, Session { export, limits }, &context, |_| {})
}

pub(super) fn drain(reader: &mut impl Read, length: u32) -> Result<(), Error> {
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

/// The transmission phase of one client.
struct Connection<S> {
    volume: Arc<dyn Volume>,
    limits: SessionLimits,
    /// Held by the one thread reading a request; released before it runs it.
    reader: Mutex<ReadSide<S>>,
    writer: Mutex<ReplySide<S>>,
    /// Held writes (see [`HELD_WRITE_MAX`]) admitted whose reply is not yet settled.
    /// Raised without the writer lock when one is admitted, lowered only under it
    /// ([`Connection::settle_held`]), so whenever `ReplySide::held` is not empty
    /// some held write is still running and will send it, or its settling sends it.
    held_running: AtomicUsize,
    /// Set when a reply could not be written; nothing more is sent.
    broken: AtomicBool,
    in_flight: InFlight,
    /// Where its threads take their kept buffers from and give them back to.
    buffers: Arc<BufferPool>,
}

struct ReadSide<S> {
    stream: BufReader<S>,
    /// Replies to reads answered while reading (see [`INLINE_READ_MAX`]), not yet sent.
    batch: Vec<u8>,
    /// The last request had a payload read past the buffer ([`DIRECT_PAYLOAD_MIN`]),
    /// so the next header is read that way too.
    header_past_buffer: bool,
    /// Whether to look for the next request before sending `batch`.
    probe: Probe,
    /// How reading ended (end of stream, DISC, an error), once it has: the other
    /// threads then finish what they run and stop.
    end: Option<Result<(), Error>>,
}

/// The writing half of a connection, under the writer lock.
struct ReplySide<S> {
    stream: S,
    /// Replies to held writes not yet sent, whole replies back to back.
    held: Vec<u8>,
    /// How many replies `held` holds.
    held_replies: usize,
}

/// When the reader, its gathered replies in hand and no whole request in its buffer,
/// asks the wire whether the next request has come meanwhile ([`Wire::ready`]; a
/// `recv` that does not wait) rather than sending them at once. A client that sends
/// its next request while the server answers the last (pipelined reads, whenever the
/// server is not much faster than the client) then gets several replies in one write,
/// over TLS in full records: one `recv` pair, one record and one wake-up for several
/// requests. A client that waits for each reply (QD1) would only pay a `recv` that
/// finds nothing per request, so each miss doubles how many batches go out without
/// asking (up to [`Probe::BACKOFF_MAX`]) and a hit starts again from none.
#[derive(Debug, Default)]
struct Probe {
    /// Batches still to send without asking.
    skip: u8,
    /// How many to skip after the next miss.
    backoff: u8,
}

impl Probe {
    /// At most this many batches go out without asking between two misses: at QD1,
    /// one `recv` in vain per 17 requests.
    const BACKOFF_MAX: u8 = 16;

    /// Whether the next request is ready, by `ask` unless backing off; `false` while
    /// backing off.
    fn next_request_ready(&mut self, ask: impl FnOnce() -> bool) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        if ask() {
            self.backoff = 0;
            return true;
        }
        self.skip = self.backoff;
        self.backoff = (self.backoff * 2).clamp(1, Self::BACKOFF_MAX);
        false
    }
}

/// A request read and admitted, for the thread that read it to run.
struct Request<'a, S: Wire> {
    cookie: u64,
    command: Command,
    /// A write's data: in the reading thread's kept buffer (`Kept`, these bytes of
    /// it), or, when larger than [`KEPT_READ_BUFFER`], a buffer of its own.
    payload: Payload,
    permit: Permit<'a>,
    /// For a held write: its place among the held writes running.
    held: Option<HeldReply<'a, S>>,
}

enum Payload {
    Kept(std::ops::Range<usize>),
    Own(Vec<u8>),
}

impl<S: Wire> Connection<S> {
    /// One transmission thread: read a request, run it, reply; until reading ends.
    fn transmit(&self) {
        // Write payloads up to KEPT_READ_BUFFER land in `payload`, zero-filled only
        // when it grows: a fresh zeroed 1 MiB buffer per write was 10% of the
        // server's CPU. Both are the previous connection's, when the pool kept them.
        let mut kept = self.buffers.take();
        self.serve_requests(&mut kept.read, &mut kept.payload);
        self.buffers.give_back(kept);
    }

    /// [`Connection::transmit`]'s loop, with the thread's kept buffers.
    fn serve_requests(&self, read_buffer: &mut Vec<u8>, kept_payload: &mut Vec<u8>) {
        let mut requests = Vec::with_capacity(TAKE_MAX);
        while self.next_requests(kept_payload, &mut requests) {
            for request in requests.drain(..) {
                self.run(request, kept_payload, read_buffer);
            }
        }
    }

    /// Runs one request read by [`Connection::next_requests`] and replies.
    fn run(&self, mut request: Request<'_, S>, kept_payload: &mut [u8], read_buffer: &mut Vec<u8>) {
        {
            let run = || {
                let payload = match &mut request.payload {
                    Payload::Kept(range) => &mut kept_payload[range.clone()],
                    Payload::Own(own) => own,
                };
                let held = request.held.take();
                let execute = || match (held, request.command) {
                    (Some(held), Command::Write { offset, .. }) => {
                        held.settle(&self.write_reply(request.cookie, offset, payload));
                    }
                    // Only writes are held (see `read_request`).
                    (_, command) => self.execute(request.cookie, command, payload, read_buffer),
                };
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

    /// Takes the read lock and reads the next requests to run into `requests` (one,
    /// or up to [`TAKE_MAX`] held writes); `false` once reading has ended (here or in
    /// another thread).
    fn next_requests<'c>(
        &'c self,
        kept_payload: &mut Vec<u8>,
        requests: &mut Vec<Request<'c, S>>,
    ) -> bool {
        let mut side = lock(&self.reader);
        if side.end.is_some() {
            return false;
        }
        let ReadSide {
            stream,
            batch,
            header_past_buffer,
            probe,
            ..
        } = &mut *side;
        let next = self.read_request(stream, batch, header_past_buffer, probe, kept_payload);
        self.send_batch(batch);
        match next {
            Ok(Some(request)) => {
                let mut used = match &request.payload {
                    Payload::Kept(range) => range.end,
                    Payload::Own(_) => 0,
                };
                let held = request.held.is_some();
                requests.push(request);
                while held && requests.len() < TAKE_MAX {
                    match self.take_buffered_write(stream, kept_payload, used) {
                        Ok(Some(request)) => {
                            if let Payload::Kept(range) = &request.payload {
                                used = range.end;
                            }
                            requests.push(request);
                        }
                        Ok(None) => break,
                        Err(err) => {
                            // Those read so far still run; the next reader stops.
                            side.end = Some(Err(err));
                            break;
                        }
                    }
                }
                true
            }
            Ok(None) => {
                side.end = Some(Ok(()));
                false
            }
            Err(err) => {
                side.end = Some(Err(err));
                false
            }
        }
    }

    /// The next request when the read buffer holds it whole and it is a held write
    /// (see [`HELD_WRITE_MAX`]) whose byte budget is free now, its payload read into
    /// `kept_payload` from `at` on; `None`, with nothing consumed, otherwise.
    fn take_buffered_write<'c>(
        &'c self,
        reader: &mut BufReader<S>,
        kept_payload: &mut Vec<u8>,
        at: usize,
    ) -> Result<Option<Request<'c, S>>, Error> {
        let buffered = reader.buffer();
        let Some(head) = buffered.first_chunk::<{ proto::REQUEST_HEADER_LEN }>() else {
            return Ok(None);
        };
        // A header that does not parse or validate is left for the ordinary path,
        // which answers it.
        let Ok(header) = RequestHeader::parse(head) else {
            return Ok(None);
        };
        let Ok(command @ Command::Write { length, fua, .. }) = header.validate(&self.limits) else {
            return Ok(None);
        };
        let len = length as usize;
        if fua
            || length > HELD_WRITE_MAX
            || len >= DIRECT_PAYLOAD_MIN
            || buffered.len() < proto::REQUEST_HEADER_LEN + len
            || at + len > KEPT_READ_BUFFER
        {
            return Ok(None);
        }
        let Some(permit) = self.in_flight.try_acquire(u64::from(length), true) else {
            return Ok(None);
        };
        reader.consume(proto::REQUEST_HEADER_LEN);
        if kept_payload.len() < at + len {
            kept_payload.resize(at + len, 0);
        }
        // All of it is in the buffer: no system call.
        read_exact_from(reader, &mut kept_payload[at..at + len], false)
            .map_err(io_error("reading a write payload"))?;
        Ok(Some(Request {
            cookie: header.cookie,
            command,
            payload: Payload::Kept(at..at + len),
            permit,
            held: Some(HeldReply::admit(self)),
        }))
    }

    /// Reads requests until one is to be run, answering the rejected ones and the
    /// small reads the page cache holds on the way (into `batch`, sent whenever the
    /// client has no further request waiting); `None` when the client is done (end of
    /// stream, DISC) or a reply failed. The caller sends what is left in `batch`.
    fn read_request(
        &self,
        reader: &mut BufReader<S>,
        batch: &mut Vec<u8>,
        header_past_buffer: &mut bool,
        probe: &mut Probe,
        kept_payload: &mut Vec<u8>,
    ) -> Result<Option<Request<'_, S>>, Error> {
        loop {
            // About to wait for the client: what it asked for so far goes out first,
            // unless the next request has come meanwhile (see `Wire::ready`).
            let buffered = reader.buffer().len();
            if batch.len() >= BATCH_BYTES
                || (buffered < proto::REQUEST_HEADER_LEN
                    && !batch.is_empty()
                    && !probe.next_request_ready(|| {
                        reader.get_ref().ready(proto::REQUEST_HEADER_LEN - buffered)
                    }))
            {
                self.send_batch(batch);
            }
            let mut head = [0u8; proto::REQUEST_HEADER_LEN];
            let past_buffer = std::mem::take(header_past_buffer);
            match read_exact_from(reader, &mut head, past_buffer) {
                Ok(()) => {}
                // A client that closes between requests (or after DISC) ends cleanly.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(source) => {
                    let context = match source.kind() {
                        // SO_RCVTIMEO ran out: EAGAIN.
                        io::ErrorKind::WouldBlock => "no request within the idle timeout",
                        // ETIMEDOUT: the kernel gave up on the peer (keepalive, or
                        // replies unacknowledged for TCP_USER_TIMEOUT).
                        io::ErrorKind::TimedOut => "the client stopped answering",
                        _ => "reading a request",
                    };
                    return Err(Error::Io {
                        context: context.into(),
                        source,
                    });
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
            // This request runs the ordinary way, and getting it may wait (for the
            // byte budget, for its payload): the gathered replies go first.
            self.send_batch(batch);
            let cost = match command {
                Command::Read { length, .. } | Command::Write { length, .. } => u64::from(length),
                _ => 0,
            };
            let permit = self
                .in_flight
                .acquire(cost, matches!(command, Command::Write { .. }));
            let len = header.payload_length() as usize;
            let past_buffer = len >= DIRECT_PAYLOAD_MIN;
            // Every byte of the kept buffer's first `len` is overwritten by the read
            // (or the connection ends), so it needs no zero-filling.
            let payload = if len <= KEPT_READ_BUFFER {
                if kept_payload.len() < len {
                    kept_payload.resize(len, 0);
                }
                read_exact_from(reader, &mut kept_payload[..len], past_buffer)
                    .map_err(io_error("reading a write payload"))?;
                Payload::Kept(0..len)
            } else {
                let mut own = vec![0u8; len];
                read_exact_from(reader, &mut own, past_buffer)
                    .map_err(io_error("reading a write payload"))?;
                Payload::Own(own)
            };
            *header_past_buffer = past_buffer;
            let held = match command {
                Command::Write { length, fua, .. } if length <= HELD_WRITE_MAX && !fua => {
                    Some(HeldReply::admit(self))
                }
                _ => None,
            };
            return Ok(Some(Request {
                cookie: header.cookie,
                command,
                payload,
                permit,
                held,
            }));
        }
    }

    /// Runs a held write (no FUA: see [`HELD_WRITE_MAX`]) and returns its reply, for
    /// [`HeldReply::settle`].
    fn write_reply(&self, cookie: u64, offset: u64, payload: &mut [u8]) -> Vec<u8> {
        match self.volume.write_in_place(offset, payload) {
            Ok(()) => proto::simple_reply(cookie, None).to_vec(),
            Err(err) => self.error_reply(cookie, CMD_WRITE, &err),
        }
    }

    /// Runs one request and replies; a read fills `read_buffer` (see [`KEPT_READ_BUFFER`]).
    /// A write's `payload` is the volume's to use as working space (an encrypted
    /// volume encrypts it in place): the request is done with it once it is written.
    fn execute(
        &self,
        cookie: u64,
        command: Command,
        payload: &mut [u8],
        read_buffer: &mut Vec<u8>,
    ) {
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
                    .write_in_place(offset, payload)
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
            return self.send_reply(&proto::simple_reply(cookie, None), buf);
        }
        if is_zero(buf) {
            return self.send(&[&proto::offset_hole_chunk(cookie, offset, length)]);
        }
        match proto::offset_data_header(cookie, offset, buf.len()) {
            Ok(header) => self.send_reply(&header, buf),
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
        // Run outside `run`'s panic guard, with the read lock held: a panic here
        // would leave this space in the batch for the next reader to send.
        let cached = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.volume.read_cached(offset, &mut batch[data_at..])
        }));
        if !matches!(cached, Ok(Ok(true))) {
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
        self.send(&[&self.error_reply(cookie, kind, err)]);
    }

    /// The reply to a request of command `kind` that failed with `err`.
    fn error_reply(&self, cookie: u64, kind: u16, err: &Error) -> Vec<u8> {
        let code = errno(err, kind);
        debug!(
            "{} failed: {err} (errno {})",
            proto::command_name(kind),
            code.code()
        );
        if self.limits.structured {
            proto::error_chunk(cookie, code, &err.to_string())
        } else {
            proto::simple_reply(cookie, Some(code)).to_vec()
        }
    }

    /// Sends `parts`, after any held replies (in the same write).
    fn send(&self, parts: &[&[u8]]) {
        self.write_with(|writer, held| {
            if held.is_empty() {
                return writer.write_parts(parts);
            }
            let mut all = Vec::with_capacity(parts.len() + 1);
            all.push(held);
            all.extend_from_slice(parts);
            writer.write_parts(&all)
        });
    }

    /// A read reply, after any held replies; `data` may be overwritten (see
    /// [`Wire::write_reply`]).
    fn send_reply(&self, header: &[u8], data: &mut [u8]) {
        self.write_with(|writer, held| {
            if !held.is_empty() {
                // Over TCP sent with MSG_MORE, so it leaves with the reply's header.
                writer.write_parts(&[held, &[]])?;
            }
            writer.write_reply(header, data)
        });
    }

    /// Runs `write` with the stream and the held replies, which it must send first;
    /// they count as sent afterwards.
    fn write_with(&self, write: impl FnOnce(&mut S, &[u8]) -> io::Result<()>) {
        let mut side = lock(&self.writer);
        self.write_locked(&mut side, write);
    }

    fn write_locked(
        &self,
        side: &mut ReplySide<S>,
        write: impl FnOnce(&mut S, &[u8]) -> io::Result<()>,
    ) {
        let ReplySide {
            stream,
            held,
            held_replies,
        } = side;
        if !self.broken.load(Ordering::SeqCst) {
            if let Err(err) = write(stream, held) {
                debug!("dropping the connection: a reply could not be written: {err}");
                self.broken.store(true, Ordering::SeqCst);
                let _ = stream.shutdown_wire();
            }
        }
        held.clear();
        *held_replies = 0;
    }

    /// Settles a held write: adds its `reply` (empty when it has none, after a panic)
    /// to the held replies, and sends them all when no other held write is running
    /// (so a lone reply never waits), or when [`HELD_REPLIES_MAX`] or [`BATCH_BYTES`]
    /// are reached. Otherwise the last held write running sends them with its own.
    fn settle_held(&self, reply: &[u8]) {
        let mut side = lock(&self.writer);
        if !reply.is_empty() {
            side.held.extend_from_slice(reply);
            side.held_replies += 1;
        }
        // Lowered under the writer lock: see `held_running`.
        let others = self.held_running.fetch_sub(1, Ordering::SeqCst) - 1;
        let due =
            others == 0 || side.held_replies >= HELD_REPLIES_MAX || side.held.len() >= BATCH_BYTES;
        if due && !side.held.is_empty() {
            self.write_locked(&mut side, |stream, held| stream.write_parts(&[held]));
        }
    }
}

/// A held write's place among those running (see [`HELD_WRITE_MAX`]): counted from
/// admission until settled, which dropping it unsettled (a panic) also does, so the
/// replies of the others are never left waiting for it.
struct HeldReply<'a, S: Wire> {
    connection: &'a Connection<S>,
    settled: bool,
}

impl<'a, S: Wire> HeldReply<'a, S> {
    fn admit(connection: &'a Connection<S>) -> Self {
        connection.held_running.fetch_add(1, Ordering::SeqCst);
        HeldReply {
            connection,
            settled: false,
        }
    }

    /// Queues `reply` (see [`Connection::settle_held`]).
    fn settle(mut self, reply: &[u8]) {
        self.settled = true;
        self.connection.settle_held(reply);
    }
}

impl<S: Wire> Drop for HeldReply<'_, S> {
    fn drop(&mut self) {
        if !self.settled {
            self.connection.settle_held(&[]);
        }
    }
}

/// Fills `buf` with the next bytes of `reader`. With `past_buffer`, only what the
/// buffer already holds is copied from it and the rest is read straight from the
/// stream into `buf`, so nothing beyond `buf` is read ahead; otherwise the buffer
/// reads ahead as usual.
fn read_exact_from<S: Read>(
    reader: &mut BufReader<S>,
    buf: &mut [u8],
    past_buffer: bool,
) -> io::Result<()> {
    if !past_buffer {
        return reader.read_exact(buf);
    }
    let buffered = reader.buffer().len().min(buf.len());
    let (head, rest) = buf.split_at_mut(buffered);
    head.copy_from_slice(&reader.buffer()[..buffered]);
    reader.consume(buffered);
    // The buffer is empty whenever `rest` is not, so reading past it skips nothing.
    reader.get_mut().read_exact(rest)
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

/// Counts a connection's requests and payload bytes in flight, within its own cap
/// and the server's [`MemoryBudget`].
struct InFlight {
    state: Mutex<FlightState>,
    changed: Condvar,
    /// From this many requests in flight on, each runs its crypto on its own thread.
    crowded_at: usize,
    budget: Arc<MemoryBudget>,
}

#[derive(Default)]
struct FlightState {
    requests: usize,
    bytes: u64,
    /// Only the thread holding the read lock ever waits; releasing skips the
    /// wake-up syscall when it does not.
    reader_waiting: bool,
    /// The connection's share of the server's budget.
    reserve: Reserve,
}

impl InFlight {
    fn new(budget: Arc<MemoryBudget>) -> Self {
        InFlight {
            state: Mutex::default(),
            changed: Condvar::new(),
            crowded_at: thread::available_parallelism().map_or(1, usize::from),
            budget,
        }
    }

    /// Waits until the connection's byte budget has room for `cost`, then until the
    /// server's has ([`MemoryBudget::admit`]). A request larger than the budget
    /// still runs, alone. A `write`'s crypto runs while the reading thread
    /// receives the next payload, a core's work of copying when the client keeps
    /// writing, so that thread counts as one more request in flight: on 2 cores a
    /// sequential writer's 1 MiB writes were spread over the rayon pool whenever the
    /// one before had finished, and the pool's threads spinning for more work
    /// (`sched_yield`) were 15% of the server's CPU.
    fn acquire(&self, cost: u64, write: bool) -> Permit<'_> {
        let mut state = lock(&self.state);
        while state.requests > 0 && state.bytes.saturating_add(cost) > MAX_BYTES_IN_FLIGHT {
            state.reader_waiting = true;
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.reader_waiting = false;
        let (mut state, charge) = self
            .budget
            .admit(cost, state, &self.state, |s| &mut s.reserve);
        self.admit(&mut state, write, charge)
    }

    /// [`InFlight::acquire`] when both budgets have room for `cost` now; `None`
    /// rather than waiting.
    fn try_acquire(&self, cost: u64, write: bool) -> Option<Permit<'_>> {
        let state = lock(&self.state);
        if state.requests > 0 && state.bytes.saturating_add(cost) > MAX_BYTES_IN_FLIGHT {
            return None;
        }
        let (mut state, charge) = self
            .budget
            .try_admit(cost, state, &self.state, |s| &mut s.reserve);
        Some(self.admit(&mut state, write, charge?))
    }

    fn admit<'a>(&'a self, state: &mut FlightState, write: bool, charge: Charge) -> Permit<'a> {
        state.requests += 1;
        state.bytes = state.bytes.saturating_add(charge.cost());
        Permit {
            flight: self,
            charge,
            crowded: state.requests + usize::from(write) >= self.crowded_at,
        }
    }
}

/// One request's place in flight; released when it is done (or unwinds).
struct Permit<'a> {
    flight: &'a InFlight,
    charge: Charge,
    /// There were as many requests in flight as cores when this one was admitted
    /// (counting, for a write, the thread receiving the next one).
    crowded: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.flight.state);
        state.requests = state.requests.saturating_sub(1);
        state.bytes = state.bytes.saturating_sub(self.charge.cost());
        self.flight
            .budget
            .release_reserve(&self.charge, &mut state.reserve);
        if state.reader_waiting {
            self.flight.changed.notify_one();
        }
        drop(state);
        // Without the connection's lock: a reader waiting for the server's budget
        // holds that budget's lock and then takes its connection's.
        self.flight.budget.release_pool(&self.charge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that unwinds gives its bytes back to the server's budget, and a
    /// connection waiting for them is woken.
    #[test]
    fn a_permit_released_by_unwinding_wakes_another_connection() {
        let budget = Arc::new(MemoryBudget::new(
            std::num::NonZeroU64::new(4 << 20).unwrap(),
        ));
        let (a, b) = (
            Arc::new(InFlight::new(Arc::clone(&budget))),
            Arc::new(InFlight::new(Arc::clone(&budget))),
        );
        let (go, hold) = mpsc::channel::<()>();
        let (held, is_held) = mpsc::channel();
        let panicking = {
            let a = Arc::clone(&a);
            thread::spawn(move || {
                let _permit = a.acquire(5 << 20, false);
                held.send(()).unwrap();
                hold.recv().unwrap();
                panic!("a request panicking with its permit");
            })
        };
        is_held.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(b.try_acquire(2 << 20, false).is_none(), "the pool is a's");
        let (admitted, is_admitted) = mpsc::channel();
        let waiting = {
            let b = Arc::clone(&b);
            thread::spawn(move || {
                let permit = b.acquire(2 << 20, false);
                admitted.send(()).unwrap();
                drop(permit);
            })
        };
        go.send(()).unwrap();
        assert!(panicking.join().is_err());
        is_admitted
            .recv_timeout(Duration::from_secs(20))
            .expect("woken by the unwinding release");
        waiting.join().unwrap();
        assert_eq!(budget.in_flight(), 0);
        assert_eq!(lock(&a.state).requests + lock(&b.state).requests, 0);
    }

    #[test]
    fn helper_threads_are_parked_and_reused_even_after_a_panicking_job() {
        let pool = HelperPool::new(2);
        let (sender, ran) = mpsc::channel();
        let on_a_helper = |sender: &mpsc::Sender<thread::ThreadId>| {
            let sender = sender.clone();
            pool.run(Box::new(move || {
                sender.send(thread::current().id()).unwrap()
            }))
            .unwrap();
            ran.recv_timeout(Duration::from_secs(20)).unwrap()
        };
        let first = on_a_helper(&sender);
        assert_ne!(first, thread::current().id());
        let parked_again = |pool: &HelperPool, n: usize| {
            // The helper parks itself just after its job.
            for _ in 0..2000 {
                if pool.parked() == n {
                    return;
                }
                thread::sleep(Duration::from_millis(1));
            }
            panic!("{} parked threads, expected {n}", pool.parked());
        };
        parked_again(&pool, 1);
        // Connections one after another: the same thread each time.
        for _ in 0..10 {
            assert_eq!(on_a_helper(&sender), first);
            parked_again(&pool, 1);
        }
        // A job that panics ends its thread (the latch still opens); the next job
        // gets a new thread.
        let latch = Latch::default();
        let done = latch.started();
        pool.run(Box::new(move || {
            let _done = done;
            panic!("a helper's job panics");
        }))
        .unwrap();
        latch.wait();
        parked_again(&pool, 0);
        let second = on_a_helper(&sender);
        assert_ne!(second, first);
        // At most `limit` threads stay parked.
        let latch = Latch::default();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        for _ in 0..4 {
            let (done, gate) = (latch.started(), Arc::clone(&gate));
            pool.run(Box::new(move || {
                let _done = done;
                let mut open = lock(&gate.0);
                while !*open {
                    open = gate.1.wait(open).unwrap();
                }
            }))
            .unwrap();
        }
        *lock(&gate.0) = true;
        gate.1.notify_all();
        latch.wait();
        parked_again(&pool, 2);
        assert_eq!(format!("{pool:?}"), "HelperPool { parked: 2, limit: 2 }");
    }

    #[test]
    fn pooled_buffers_come_back_zeroed_bounded_in_number_and_size() {
        let pool = BufferPool::new(2);
        let used = || KeptBuffers {
            read: vec![0xa5; 64 * 1024],
            payload: vec![0x5a; 4096],
        };
        pool.give_back(used());
        let again = pool.take();
        // Kept (no new allocation, no zero-filling on growth), but not one byte of
        // the connection that used it.
        assert_eq!(again.read.len(), 64 * 1024);
        assert_eq!(again.payload.len(), 4096);
        assert!(again.read.iter().chain(&again.payload).all(|&b| b == 0));
        assert_eq!(pool.kept(), 0);
        // A buffer past the bound is freed, its set still kept.
        pool.give_back(KeptBuffers {
            read: vec![1; POOLED_BUFFER_MAX + 1],
            payload: vec![2; POOLED_BUFFER_MAX],
        });
        let large = pool.take();
        assert_eq!(large.read.capacity(), 0);
        assert_eq!(large.payload.len(), POOLED_BUFFER_MAX);
        assert!(large.payload.iter().all(|&b| b == 0));
        // At most `limit` sets; past it, sets are dropped; an empty pool gives empty sets.
        for _ in 0..5 {
            pool.give_back(used());
        }
        assert_eq!(pool.kept(), 2);
        let _ = (pool.take(), pool.take());
        let fresh = pool.take();
        assert!(fresh.read.is_empty() && fresh.payload.is_empty());
        // The kernel client's pool keeps nothing.
        let none = BufferPool::new(0);
        none.give_back(used());
        assert_eq!(none.kept(), 0);
        assert_eq!(format!("{pool:?}"), "BufferPool { sets: 0, limit: 2 }");
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

    /// What happened, in order, on a scripted connection: the volume's writes and
    /// flushes and the server's writes to the wire.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Event {
        Write(u64),
        Flush,
        /// One `write_parts` call: the replies in it, by cookie.
        Sent(Vec<u64>),
    }

    /// A client scripted byte by byte: the server reads the chunks fed to it, one
    /// chunk per `read` at most (so requests split where a test says), and waits for
    /// more until the script closes.
    #[derive(Default)]
    struct Script {
        input: Mutex<(std::collections::VecDeque<Vec<u8>>, bool)>,
        fed: Condvar,
        events: Mutex<Vec<Event>>,
        sent: Condvar,
        /// The bytes the server wrote, in order.
        output: Mutex<Vec<u8>>,
    }

    impl Script {
        /// Queues `chunk` for the server (an empty one is nothing: a read of 0 bytes
        /// would be the end of the stream).
        fn feed(&self, chunk: &[u8]) {
            if chunk.is_empty() {
                return;
            }
            lock(&self.input).0.push_back(chunk.to_vec());
            self.fed.notify_all();
        }

        fn close(&self) {
            lock(&self.input).1 = true;
            self.fed.notify_all();
        }

        fn event(&self, event: Event) {
            lock(&self.events).push(event);
            self.sent.notify_all();
        }

        /// Waits until `count` replies have been sent. The timeout only keeps a
        /// broken server from hanging the test run; nothing here is timed.
        fn wait_for_replies(&self, count: usize) -> Vec<Event> {
            let mut events = lock(&self.events);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while replies(&events).len() < count {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                assert!(!left.is_zero(), "{count} replies never came: {events:?}");
                events = self.sent.wait_timeout(events, left).unwrap().0;
            }
            events.clone()
        }
    }

    #[derive(Clone)]
    struct ScriptStream(Arc<Script>);

    impl Read for ScriptStream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut input = lock(&self.0.input);
            loop {
                if let Some(chunk) = input.0.front_mut() {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    chunk.drain(..n);
                    if chunk.is_empty() {
                        input.0.pop_front();
                    }
                    return Ok(n);
                }
                if input.1 {
                    return Ok(0);
                }
                input = self.0.fed.wait(input).unwrap();
            }
        }
    }

    impl Write for ScriptStream {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_parts(&[buf])?;
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Wire for ScriptStream {
        fn shutdown_wire(&self) -> io::Result<()> {
            self.0.close();
            Ok(())
        }

        fn set_read_timeout_wire(&self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }

        fn set_write_timeout_wire(&self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }

        /// One event per call, naming the simple replies in it (the tests negotiate
        /// no structured replies).
        fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
            let bytes = parts.concat();
            let mut output = lock(&self.0.output);
            output.extend_from_slice(&bytes);
            let cookies = bytes
                .chunks(proto::SIMPLE_REPLY_LEN)
                .map(|reply| u64::from_be_bytes(reply[8..16].try_into().unwrap()))
                .collect();
            drop(output);
            self.0.event(Event::Sent(cookies));
            Ok(())
        }
    }

    /// The cookies of every reply sent so far, in order.
    fn replies(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Sent(cookies) => Some(cookies.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// A volume in memory that logs its writes and flushes in the script, fails writes
    /// at `fail_at` and panics in writes at `panic_at`.
    #[derive(Debug)]
    struct LoggedVolume {
        data: Mutex<Vec<u8>>,
        script: ScriptRef,
        fail_at: Option<u64>,
        panic_at: Option<u64>,
    }

    struct ScriptRef(Arc<Script>);

    impl std::fmt::Debug for ScriptRef {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Script")
        }
    }

    impl Volume for LoggedVolume {
        fn size(&self) -> u64 {
            lock(&self.data).len() as u64
        }

        fn block_size(&self) -> u32 {
            512
        }

        fn is_read_only(&self) -> bool {
            false
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
            let data = lock(&self.data);
            buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }

        fn write_at(&self, offset: u64, src: &[u8]) -> Result<(), Error> {
            assert!(self.panic_at != Some(offset), "a volume bug at {offset}");
            if self.fail_at == Some(offset) {
                return Err(Error::Io {
                    context: "writing the failing block".into(),
                    source: io::Error::from_raw_os_error(libc::EIO),
                });
            }
            lock(&self.data)[offset as usize..offset as usize + src.len()].copy_from_slice(src);
            self.script.0.event(Event::Write(offset));
            Ok(())
        }

        fn flush(&self) -> Result<(), Error> {
            self.script.0.event(Event::Flush);
            Ok(())
        }

        fn trim(&self, _: u64, _: u64) -> Result<(), Error> {
            Ok(())
        }

        fn write_zeroes(&self, offset: u64, length: u64, _: bool) -> Result<(), Error> {
            self.write_at(offset, &vec![0; length as usize])
        }

        fn allocation(&self, _: u64, length: u64) -> Result<Vec<crate::volume::Extent>, Error> {
            Ok(vec![crate::volume::Extent {
                length,
                hole: false,
                zero: false,
            }])
        }
    }

    const VOLUME: usize = 64 * 1024;

    /// Serves a scripted client with `threads` transmission threads until the script
    /// closes; returns the volume's bytes.
    fn serve_script(
        script: &Arc<Script>,
        threads: usize,
        fail_at: Option<u64>,
        panic_at: Option<u64>,
    ) -> thread::JoinHandle<Vec<u8>> {
        let volume = Arc::new(LoggedVolume {
            data: Mutex::new(vec![0; VOLUME]),
            script: ScriptRef(script.clone()),
            fail_at,
            panic_at,
        });
        let stream = ScriptStream(script.clone());
        thread::spawn(move || {
            serve_for_test(stream.clone(), stream, volume.clone(), threads).unwrap();
            let data = lock(&volume.data).clone();
            data
        })
    }

    fn request(kind: u16, flags: u16, cookie: u64, offset: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = RequestHeader {
            flags,
            kind,
            cookie,
            offset,
            length: payload.len() as u32,
        }
        .encode()
        .to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn write(cookie: u64, offset: u64, len: usize, fua: bool) -> Vec<u8> {
        let payload: Vec<u8> = (0..len)
            .map(|i| (cookie as usize * 31 + i) as u8 | 1)
            .collect();
        let flags = if fua { proto::CMD_FLAG_FUA } else { 0 };
        request(CMD_WRITE, flags, cookie, offset, &payload)
    }

    /// Each cookie of `expected` answered exactly once, with error `errors[cookie]`
    /// (0: success).
    fn assert_answered_once(script: &Script, expected: &[u64], errors: &[(u64, u32)]) {
        let output = lock(&script.output).clone();
        assert_eq!(
            output.len(),
            expected.len() * proto::SIMPLE_REPLY_LEN,
            "{output:?}"
        );
        let mut seen = Vec::new();
        for reply in output.chunks(proto::SIMPLE_REPLY_LEN) {
            assert_eq!(reply[..4], proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
            let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
            let cookie = u64::from_be_bytes(reply[8..16].try_into().unwrap());
            let want = errors.iter().find(|(c, _)| *c == cookie).map_or(0, |e| e.1);
            assert_eq!(error, want, "cookie {cookie}");
            seen.push(cookie);
        }
        seen.sort_unstable();
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        assert_eq!(seen, expected);
    }

    #[test]
    fn pipelined_requests_split_at_every_byte_boundary_are_each_answered_once() {
        // Held writes (taken several at a time from the buffer), a FUA write, a flush
        // and an unaligned write.
        let stream: Vec<u8> = [
            write(1, 0, 1000, false),
            write(2, 4096, 512, false),
            write(3, 8192, 700, true),
            request(CMD_FLUSH, 0, 4, 0, &[]),
            write(5, 12_345, 300, false),
        ]
        .concat();
        let mut expected_data = vec![0u8; VOLUME];
        for (cookie, offset, len) in [
            (1u64, 0usize, 1000usize),
            (2, 4096, 512),
            (3, 8192, 700),
            (5, 12_345, 300),
        ] {
            for i in 0..len {
                expected_data[offset + i] = (cookie as usize * 31 + i) as u8 | 1;
            }
        }
        for split in 0..=stream.len() {
            for threads in [1, 3] {
                let script = Arc::new(Script::default());
                let server = serve_script(&script, threads, None, None);
                script.feed(&stream[..split]);
                script.feed(&stream[split..]);
                script.wait_for_replies(5);
                script.close();
                let data = server.join().unwrap();
                assert!(data == expected_data, "split at {split}, {threads} threads");
                assert_answered_once(&script, &[1, 2, 3, 4, 5], &[]);
            }
        }
    }

    #[test]
    fn held_replies_leave_together_with_an_error_in_the_middle() {
        let script = Arc::new(Script::default());
        let server = serve_script(&script, 1, Some(4096), None);
        // One chunk: one thread takes the three writes from the buffer at once.
        script.feed(
            &[
                write(1, 0, 512, false),
                write(2, 4096, 512, false),
                write(3, 8192, 512, false),
            ]
            .concat(),
        );
        let events = script.wait_for_replies(3);
        script.close();
        server.join().unwrap();
        assert_answered_once(&script, &[1, 2, 3], &[(2, Errno::Io.code())]);
        let sends: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::Sent(_)))
            .collect();
        assert_eq!(sends, [&Event::Sent(vec![1, 2, 3])], "{events:?}");
    }

    #[test]
    fn a_held_write_that_panics_leaves_no_other_reply_waiting() {
        for threads in [1, 3] {
            let script = Arc::new(Script::default());
            let server = serve_script(&script, threads, None, Some(4096));
            script.feed(
                &[
                    write(1, 0, 512, false),
                    write(2, 4096, 512, false),
                    write(3, 8192, 512, false),
                ]
                .concat(),
            );
            // The panicking write gets no reply; the others get theirs, and the
            // client, waiting for them, sends nothing more meanwhile.
            script.wait_for_replies(2);
            script.feed(&write(4, 12_288, 512, false));
            script.wait_for_replies(3);
            script.close();
            server.join().unwrap();
            assert_answered_once(&script, &[1, 3, 4], &[]);
        }
    }

    #[test]
    fn the_probe_backs_off_on_misses_and_starts_again_on_a_hit() {
        let mut probe = Probe::default();
        let asked_in = |probe: &mut Probe, batches: usize, found: bool| -> Vec<usize> {
            (0..batches)
                .filter(|_| {
                    let mut asked = false;
                    probe.next_request_ready(|| {
                        asked = true;
                        found
                    });
                    asked
                })
                .collect()
        };
        // A client that waits for each reply: each miss doubles the batches sent
        // without asking, up to one look per 17 batches.
        assert_eq!(
            asked_in(&mut probe, 60, false),
            [0, 1, 3, 6, 11, 20, 37, 54]
        );
        // (The last miss, at 54, skips 16 batches: 55..=70.) Once it asks again, a
        // hit makes it look before every batch.
        assert_eq!(asked_in(&mut probe, 17, true), [11, 12, 13, 14, 15, 16]);
        assert_eq!(asked_in(&mut probe, 5, true), [0, 1, 2, 3, 4]);
        // And a miss after hits costs only one batch without asking.
        assert_eq!(asked_in(&mut probe, 4, false), [0, 1, 3]);
    }

    #[test]
    fn a_lone_write_is_answered_while_the_reader_waits_for_more() {
        let script = Arc::new(Script::default());
        let server = serve_script(&script, 4, None, None);
        script.feed(&write(7, 0, 4096, false));
        // The script gives nothing more until the reply has come.
        script.wait_for_replies(1);
        script.feed(&write(8, 4096, 4096, false));
        script.wait_for_replies(2);
        script.close();
        server.join().unwrap();
        assert_answered_once(&script, &[7, 8], &[]);
    }

    #[test]
    fn fua_writes_and_flushes_are_answered_after_the_flush_that_covers_them() {
        for threads in [1, 4] {
            let script = Arc::new(Script::default());
            let server = serve_script(&script, threads, None, None);
            script.feed(
                &[
                    write(1, 0, 512, false),
                    write(2, 4096, 512, true),
                    write(3, 8192, 512, false),
                    request(CMD_FLUSH, 0, 4, 0, &[]),
                ]
                .concat(),
            );
            let events = script.wait_for_replies(4);
            script.close();
            server.join().unwrap();
            assert_answered_once(&script, &[1, 2, 3, 4], &[]);
            let at = |wanted: &Event| events.iter().position(|e| e == wanted).unwrap();
            let replied = |cookie: u64| {
                events
                    .iter()
                    .position(|e| matches!(e, Event::Sent(c) if c.contains(&cookie)))
                    .unwrap()
            };
            // Every write is done before its reply.
            for (cookie, offset) in [(1, 0), (2, 4096), (3, 8192)] {
                assert!(at(&Event::Write(offset)) < replied(cookie), "{events:?}");
            }
            // The FUA write's reply follows a flush after its write; the flush's reply
            // follows a flush after every write answered before the flush was sent.
            let flushed_after =
                |from: usize, until: usize| events[from..until].contains(&Event::Flush);
            assert!(
                flushed_after(at(&Event::Write(4096)), replied(2)),
                "{events:?}"
            );
            assert!(events[..replied(4)].contains(&Event::Flush), "{events:?}");
        }
    }

    #[test]
    fn write_all_parts_skips_empty_parts() {
        let mut out = Vec::new();
        write_all_parts(&mut out, &[b"", b"ab", b"", b"c"]).unwrap();
        assert_eq!(out, b"abc");
    }
}
