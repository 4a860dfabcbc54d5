//! The Linux kernel's NBD client (`drivers/block/nbd.c`), driven through its
//! generic-netlink family `nbd` (`include/uapi/linux/nbd-netlink.h`), the way
//! nbd-client does in its netlink mode: the kernel does no handshake, it is handed
//! sockets already in the transmission phase with the size, block size and
//! transmission flags a handshake would have settled.
//!
//! [`attach`] connects `/dev/nbdN` to an [`Export`] over socket pairs served in this
//! process by the same engine as `atrest nbd serve` ([`super::server`]);
//! [`disconnect`] and [`status`] are the other two commands a user needs. Messages
//! are built and parsed here by hand (netlink is a few fixed headers and TLV
//! attributes) over a rustix netlink socket: no `unsafe`, no C library.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};
use tracing::{debug, info, warn};

use super::proto::{
    FLAG_CAN_MULTI_CONN, FLAG_HAS_FLAGS, FLAG_READ_ONLY, FLAG_SEND_FLUSH, FLAG_SEND_FUA,
};
use super::proto::{FLAG_SEND_TRIM, FLAG_SEND_WRITE_ZEROES};
use super::server::{self, Export};
use super::transmission;
use crate::Error;

// include/uapi/linux/netlink.h
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(1 << 15 | 1 << 14);
const NLMSG_HEADER_LEN: usize = 16;
const GENL_HEADER_LEN: usize = 4;

// include/uapi/linux/genetlink.h
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

// include/uapi/linux/nbd-netlink.h
const NBD_GENL_FAMILY_NAME: &str = "nbd";
const NBD_GENL_VERSION: u8 = 1;
const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_CMD_STATUS: u8 = 5;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_ATTR_DEVICE_LIST: u16 = 9;
const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;
const NBD_DEVICE_ITEM: u16 = 1;
const NBD_DEVICE_INDEX: u16 = 1;
const NBD_DEVICE_CONNECTED: u16 = 2;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;

/// What `/sys/block/nbdN/backend` says for a device `atrest nbd attach` set up:
/// this prefix, then the volume's path.
pub const BACKEND_PREFIX: &str = "atrest:";
/// The kernel prints the backend identifier into one sysfs page.
const MAX_BACKEND_LEN: usize = 3072;
/// How long the kernel waits for a reply before it gives up on a request (the
/// kernel's default is 30 s). Replies come from this process, which answers every
/// request, with EIO when the key is gone: a request that takes this long means the
/// volume's disk is stuck, and the kernel then retries on another connection.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped attachment waits for the kernel to close its sockets after
/// the disconnect before it closes them itself.
const DISCONNECT_GRACE: Duration = Duration::from_secs(10);
/// Transmission threads per connection: the kernel spreads requests over several
/// connections already.
const THREADS_PER_CONNECTION: usize = 4;

/// `/dev/nbdN` → N. Only names of that shape are accepted: the index goes to the
/// kernel, which must not be asked about some other device.
pub fn device_index(path: &Path) -> Result<u32, Error> {
    let invalid = || Error::InvalidArgument {
        what: format!(
            "{} is not an NBD device: expected /dev/nbdN (N = 0, 1, ...) or `auto`",
            path.display()
        ),
    };
    let name = path.to_str().ok_or_else(invalid)?;
    let digits = name.strip_prefix("/dev/nbd").ok_or_else(invalid)?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return Err(invalid());
    }
    digits.parse().map_err(|_| invalid())
}

/// The transmission flags the kernel is told the server has (what a handshake would
/// have sent): flush, FUA, trim and write-zeroes, or read-only; and multi-conn, which
/// the kernel requires before it takes more than one socket (a flush on any
/// connection covers the writes completed on all of them: they share one volume).
pub fn kernel_flags(read_only: bool) -> u16 {
    let mut flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN;
    if read_only {
        flags |= FLAG_READ_ONLY;
    } else {
        flags |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;
    }
    flags
}

/// A device the kernel knows, as `NBD_CMD_STATUS` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceStatus {
    /// N of `/dev/nbdN`.
    pub index: u32,
    /// The kernel has a server connected to it.
    pub connected: bool,
}

/// Every NBD device the kernel has, connected or not, by index.
pub fn status() -> Result<Vec<DeviceStatus>, Error> {
    let mut socket = GenlSocket::open()?;
    let reply = socket.request(NBD_CMD_STATUS, &[])?;
    let reply = reply.ok_or_else(|| protocol("NBD_CMD_STATUS had no reply"))?;
    parse_status(&reply)
}

/// Disconnects `/dev/nbd<index>`: the kernel sends `NBD_CMD_DISC` on each of the
/// device's connections and fails what is still queued.
pub fn disconnect(index: u32) -> Result<(), Error> {
    let mut socket = GenlSocket::open()?;
    let mut attrs = Vec::new();
    put_u32(&mut attrs, NBD_ATTR_INDEX, index);
    match socket.request(NBD_CMD_DISCONNECT, &attrs) {
        Ok(_) => Ok(()),
        Err(err) => Err(explain(err, Some(index), "disconnecting")),
    }
}

/// What to attach, and where.
#[derive(Debug)]
pub struct AttachRequest<'a> {
    /// `Some(n)` for `/dev/nbd<n>`; `None` for the first free device.
    pub index: Option<u32>,
    /// Connections (sockets, and so hardware queues of the device).
    pub connections: usize,
    /// What `/sys/block/nbdN/backend` shows (see [`BACKEND_PREFIX`]).
    pub backend: &'a str,
    /// The device's logical block size: 512, 1024, 2048 or 4096; `None` for the
    /// volume's own (4096). Smaller blocks work (the volume does read-modify-write)
    /// for software that insists on 512-byte sectors, at a cost for small writes.
    pub block_size: Option<u32>,
    /// How long the kernel waits for a reply before it retries the request on another
    /// connection (or fails it, with one); `None` for [`REQUEST_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// A device attached to an export. [`Attachment::wait`] returns when the device is
/// detached (by [`Attachment::stopper`] or by anyone's `NBD_CMD_DISCONNECT`).
#[derive(Debug)]
pub struct Attachment {
    index: u32,
    export: Export,
    connections: Vec<JoinHandle<Result<(), Error>>>,
    /// Our ends of the socket pairs, to end the connections ourselves should the
    /// kernel not close its ends after a disconnect.
    ends: Vec<UnixStream>,
    ended: mpsc::Receiver<Event>,
    events: mpsc::Sender<Event>,
}

#[derive(Debug)]
enum Event {
    ConnectionEnded,
    Stop,
}

/// Ends an [`Attachment`] from another thread (a signal handler's).
#[derive(Clone, Debug)]
pub struct AttachmentStopper(mpsc::Sender<Event>);

impl AttachmentStopper {
    /// Asks the attachment to write back, flush and detach.
    pub fn stop(&self) {
        // The attachment may be gone already; then there is nothing to stop.
        let _ = self.0.send(Event::Stop);
    }
}

/// SIGINT and SIGTERM, caught from before the attach on: one that arrives while the
/// device is being set up is not the default (death with the device half set up)
/// but a stop as soon as [`StopSignals::stop`] hands it an attachment.
#[derive(Debug)]
pub struct StopSignals(signal_hook::iterator::Signals);

impl StopSignals {
    /// Catches SIGINT and SIGTERM from now on.
    pub fn catch() -> Result<StopSignals, Error> {
        server::catch_stop_signals().map(StopSignals)
    }

    /// Stops `stopper`'s attachment on the first signal (also one caught before this
    /// call); a second one exits at once.
    pub fn stop(self, stopper: AttachmentStopper) -> Result<(), Error> {
        server::on_first_signal(self.0, move |signal| {
            info!("signal {signal}: writing back, flushing, detaching");
            stopper.stop();
        })
    }
}

/// Connects a kernel NBD device to `export`: one socket pair per connection, the
/// server's ends served on threads of this process, the others handed to the kernel
/// with `NBD_CMD_CONNECT`. A volume that would refuse a new client (its key is
/// disabled) is refused here the same way, before the kernel sees anything.
pub fn attach(export: Export, request: &AttachRequest<'_>) -> Result<Attachment, Error> {
    export.volume.check_attach()?;
    if request.backend.len() > MAX_BACKEND_LEN || request.backend.contains('\0') {
        return Err(Error::InvalidArgument {
            what: format!("the backend name must be at most {MAX_BACKEND_LEN} bytes without NUL"),
        });
    }
    let count = request.connections.clamp(1, 16);
    let read_only = export.read_only || export.volume.is_read_only();
    let size = export.volume.size();
    // The kernel takes a power of two from 512 to the page size.
    let block_size = match request.block_size {
        Some(size) if size.is_power_of_two() && (512..=4096).contains(&size) => u64::from(size),
        Some(size) => {
            return Err(Error::InvalidArgument {
                what: format!("block size {size}: use 512, 1024, 2048 or 4096"),
            })
        }
        None => u64::from(export.volume.block_size()).clamp(512, 4096),
    };
    let flags = kernel_flags(read_only);
    let mut socket = GenlSocket::open()?;
    let (events, ended) = mpsc::channel();
    let mut kernel_ends: Vec<UnixStream> = Vec::with_capacity(count);
    let mut connections = Vec::with_capacity(count);
    let mut ends = Vec::with_capacity(count);
    for i in 0..count {
        let (ours, theirs) = UnixStream::pair().map_err(|source| Error::Io {
            context: "creating a socket pair for the kernel".into(),
            source,
        })?;
        ends.push(ours.try_clone().map_err(|source| Error::Io {
            context: "cloning a socket".into(),
            source,
        })?);
        let served = export.clone();
        let done = events.clone();
        let thread = thread::Builder::new()
            .name(format!("nbd-kernel-{i}"))
            .spawn(move || {
                let result =
                    transmission::serve_kernel_connection(served, ours, THREADS_PER_CONNECTION);
                let _ = done.send(Event::ConnectionEnded);
                result
            })
            .map_err(|source| Error::Io {
                context: "starting a connection thread".into(),
                source,
            })?;
        connections.push(thread);
        kernel_ends.push(theirs);
    }
    let mut attrs = Vec::new();
    if let Some(index) = request.index {
        put_u32(&mut attrs, NBD_ATTR_INDEX, index);
    }
    put_u64(&mut attrs, NBD_ATTR_SIZE_BYTES, size);
    put_u64(&mut attrs, NBD_ATTR_BLOCK_SIZE_BYTES, block_size);
    let timeout = request.timeout.unwrap_or(REQUEST_TIMEOUT).as_secs().max(1);
    put_u64(&mut attrs, NBD_ATTR_TIMEOUT, timeout);
    put_u64(&mut attrs, NBD_ATTR_SERVER_FLAGS, u64::from(flags));
    let mut backend = request.backend.as_bytes().to_vec();
    backend.push(0);
    put_attr(&mut attrs, NBD_ATTR_BACKEND_IDENTIFIER, &backend);
    let mut sockets = Vec::new();
    for end in &kernel_ends {
        let fd = u32::try_from(end.as_raw_fd()).map_err(|_| protocol("negative descriptor"))?;
        let mut item = Vec::new();
        put_u32(&mut item, NBD_SOCK_FD, fd);
        put_attr(&mut sockets, NBD_SOCK_ITEM | NLA_F_NESTED, &item);
    }
    put_attr(&mut attrs, NBD_ATTR_SOCKETS | NLA_F_NESTED, &sockets);
    let connected = socket.request(NBD_CMD_CONNECT, &attrs);
    // The kernel holds its own reference to each socket it took; ours go, so that a
    // failed connect ends the serving threads (they read end of stream).
    drop(kernel_ends);
    let index = match connected {
        Ok(Some(reply)) => reply_index(&reply)?,
        Ok(None) => request
            .index
            .ok_or_else(|| protocol("NBD_CMD_CONNECT did not say which device it used"))?,
        Err(err) => {
            for thread in connections {
                let _ = thread.join();
            }
            return Err(explain(err, request.index, "connecting"));
        }
    };
    debug!(
        "/dev/nbd{index}: {count} connections, {size} bytes, block size {block_size}, flags {flags:#x}"
    );
    Ok(Attachment {
        index,
        export,
        connections,
        ends,
        ended,
        events,
    })
}

impl Attachment {
    /// N of `/dev/nbdN`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// A handle that stops this attachment from another thread.
    pub fn stopper(&self) -> AttachmentStopper {
        AttachmentStopper(self.events.clone())
    }

    /// Serves until stopped or detached. When stopped: writes back what the device's
    /// page cache holds, flushes the volume, disconnects the device and waits for
    /// every connection to finish; either way the volume is flushed last.
    pub fn wait(self) -> Result<(), Error> {
        let mut running = self.connections.len();
        let mut stopped = false;
        while running > 0 {
            let event = if stopped {
                // Disconnected: the kernel closes its ends of the sockets. Should it
                // not within DISCONNECT_GRACE, the connections are ended from here,
                // so that a stop always stops.
                match self.ended.recv_timeout(DISCONNECT_GRACE) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        warn!(
                            "/dev/nbd{}: the kernel kept {running} connections open {DISCONNECT_GRACE:?} \
                             after the disconnect; closing them",
                            self.index
                        );
                        for end in &self.ends {
                            let _ = end.shutdown(std::net::Shutdown::Both);
                        }
                        self.ended
                            .recv()
                            .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                    }
                    other => other,
                }
            } else {
                self.ended
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            };
            match event {
                Ok(Event::ConnectionEnded) => running -= 1,
                Ok(Event::Stop) if !stopped => {
                    stopped = true;
                    self.write_back();
                    if let Err(err) = self.export.volume.flush() {
                        warn!("/dev/nbd{}: flushing before disconnect: {err}", self.index);
                    }
                    if let Err(err) = disconnect(self.index) {
                        warn!("{err}");
                    }
                }
                Ok(Event::Stop) => {}
                // Unreachable while `self.events` lives; treat it as the end.
                Err(_) => break,
            }
        }
        if !stopped {
            // Detached from elsewhere, or every connection broke: make sure the
            // kernel lets go of the device too (an error here means it already has).
            if let Err(err) = disconnect(self.index) {
                debug!("{err}");
            }
        }
        let mut first_failure = None;
        for thread in self.connections {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(Error::Io { source, .. }))
                    if matches!(
                        source.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    ) => {}
                Ok(Err(err)) => {
                    warn!("/dev/nbd{}: a connection ended with {err}", self.index);
                }
                Err(_) => warn!("/dev/nbd{}: a connection thread panicked", self.index),
            }
        }
        if !self.export.read_only {
            if let Err(err) = self.export.volume.flush() {
                first_failure = Some(err);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// `fsync` on the device: writes done through `/dev/nbdN` that still sit in its
    /// page cache (a filesystem's metadata among them) reach the volume before the
    /// disconnect. Best effort: the device may already be going away.
    fn write_back(&self) {
        let path = format!("/dev/nbd{}", self.index);
        let synced = File::options()
            .write(true)
            .open(&path)
            .and_then(|device| device.sync_all());
        if let Err(err) = synced {
            warn!("{path}: writing back its page cache before disconnect: {err}");
        }
    }
}

/// Turns the kernel's refusal into the one line a user can act on.
fn explain(err: Error, index: Option<u32>, doing: &str) -> Error {
    let device = index.map_or_else(|| "an NBD device".to_owned(), |i| format!("/dev/nbd{i}"));
    let Error::Io { source, .. } = &err else {
        return err;
    };
    let reason = match source.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "{device} is already connected (see `atrest nbd list`, `atrest nbd detach {device}`)"
        ),
        Some(libc::EPERM | libc::EACCES) => {
            format!("{doing} {device} needs CAP_SYS_ADMIN: run as root")
        }
        Some(libc::EINVAL) if doing == "disconnecting" => {
            format!("{device} does not exist or is not connected")
        }
        Some(libc::ENOSPC | libc::ENODEV) => {
            format!("{doing} {device}: the kernel has no such free NBD device (modprobe nbd nbds_max=N)")
        }
        _ => format!("{doing} {device}: the kernel refused: {source}"),
    };
    Error::KernelNbd(reason)
}

fn protocol(what: &str) -> Error {
    Error::Io {
        context: format!("the kernel's netlink reply: {what}"),
        source: io::Error::from(io::ErrorKind::InvalidData),
    }
}

/// A generic-netlink socket talking to the `nbd` family.
struct GenlSocket {
    fd: OwnedFd,
    family: u16,
    sequence: u32,
}

impl GenlSocket {
    /// Opens the socket and resolves the `nbd` family; a kernel without the nbd
    /// driver loaded fails here with the `modprobe nbd` hint.
    fn open() -> Result<GenlSocket, Error> {
        let fd = rustix::net::socket(
            AddressFamily::NETLINK,
            SocketType::RAW,
            Some(netlink::GENERIC),
        )
        .map_err(|errno| Error::Io {
            context: "opening a generic netlink socket".into(),
            source: errno.into(),
        })?;
        let mut socket = GenlSocket {
            fd,
            family: GENL_ID_CTRL,
            sequence: 0,
        };
        let mut attrs = Vec::new();
        let mut name = NBD_GENL_FAMILY_NAME.as_bytes().to_vec();
        name.push(0);
        put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, &name);
        let reply = match socket.request(CTRL_CMD_GETFAMILY, &attrs) {
            Ok(reply) => reply.ok_or_else(|| protocol("CTRL_CMD_GETFAMILY had no reply"))?,
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                return Err(Error::KernelNbd(
                    "the kernel's NBD driver is not loaded: run `modprobe nbd` as root".into(),
                ))
            }
            Err(err) => return Err(err),
        };
        let family = attributes(&reply)
            .find(|(kind, _)| *kind == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, value)| <[u8; 2]>::try_from(value).ok())
            .map(u16::from_ne_bytes)
            .ok_or_else(|| protocol("the nbd family has no id"))?;
        socket.family = family;
        Ok(socket)
    }

    /// Sends one command and waits for the kernel's answer: the attributes of its
    /// reply message (if it sends one), or the error it acknowledges with.
    fn request(&mut self, command: u8, attrs: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let version = if self.family == GENL_ID_CTRL {
            1
        } else {
            NBD_GENL_VERSION
        };
        let length = NLMSG_HEADER_LEN + GENL_HEADER_LEN + attrs.len();
        let length = u32::try_from(length).map_err(|_| protocol("message too long"))?;
        let mut message = Vec::with_capacity(length as usize);
        message.extend_from_slice(&length.to_ne_bytes());
        message.extend_from_slice(&self.family.to_ne_bytes());
        message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        message.extend_from_slice(&sequence.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(&[command, version, 0, 0]);
        message.extend_from_slice(attrs);
        let kernel = SocketAddrNetlink::new(0, 0);
        rustix::net::sendto(self.fd.as_fd(), &message, SendFlags::empty(), &kernel).map_err(
            |errno| Error::Io {
                context: "sending to the kernel's generic netlink".into(),
                source: errno.into(),
            },
        )?;
        let mut reply = None;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let (received, _) = rustix::net::recv(self.fd.as_fd(), &mut buffer, RecvFlags::empty())
                .map_err(|errno| Error::Io {
                    context: "reading the kernel's netlink reply".into(),
                    source: errno.into(),
                })?;
            let mut rest = buffer.get(..received).unwrap_or_default();
            while !rest.is_empty() {
                let (
                    Message {
                        kind,
                        sequence: seq,
                        payload,
                    },
                    next,
                ) = split_message(rest)?;
                rest = next;
                if seq != sequence {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .and_then(|b| <[u8; 4]>::try_from(b).ok())
                            .map(i32::from_ne_bytes)
                            .ok_or_else(|| protocol("short NLMSG_ERROR"))?;
                        if code == 0 {
                            return Ok(reply);
                        }
                        return Err(Error::Io {
                            context: format!("generic netlink command {command}"),
                            source: io::Error::from_raw_os_error(code.saturating_neg()),
                        });
                    }
                    NLMSG_DONE => return Ok(reply),
                    _ => {
                        let attrs = payload
                            .get(GENL_HEADER_LEN..)
                            .ok_or_else(|| protocol("short generic netlink message"))?;
                        reply = Some(attrs.to_vec());
                    }
                }
            }
        }
    }
}

/// One netlink message: its type, sequence number and payload.
struct Message<'a> {
    kind: u16,
    sequence: u32,
    payload: &'a [u8],
}

/// One netlink message off the front of `bytes`, and what follows it (aligned to 4).
fn split_message(bytes: &[u8]) -> Result<(Message<'_>, &[u8]), Error> {
    let header = bytes
        .get(..NLMSG_HEADER_LEN)
        .ok_or_else(|| protocol("truncated message header"))?;
    let length = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let sequence = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
    if length < NLMSG_HEADER_LEN || length > bytes.len() {
        return Err(protocol("message length out of bounds"));
    }
    let message = Message {
        kind,
        sequence,
        payload: &bytes[NLMSG_HEADER_LEN..length],
    };
    let next = bytes.get(align4(length)..).unwrap_or_default();
    Ok((message, next))
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// The attributes in `bytes`, as (type without the nested/byte-order bits, value);
/// stops at the first malformed one.
fn attributes(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let header = rest.get(..4)?;
        let length = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        let value = rest.get(4..length)?;
        rest = rest.get(align4(length)..).unwrap_or_default();
        Some((kind, value))
    })
}

fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let length = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&length.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

fn put_u32(buf: &mut Vec<u8>, kind: u16, value: u32) {
    put_attr(buf, kind, &value.to_ne_bytes());
}

fn put_u64(buf: &mut Vec<u8>, kind: u16, value: u64) {
    put_attr(buf, kind, &value.to_ne_bytes());
}

fn reply_index(attrs: &[u8]) -> Result<u32, Error> {
    attributes(attrs)
        .find(|(kind, _)| *kind == NBD_ATTR_INDEX)
        .and_then(|(_, value)| <[u8; 4]>::try_from(value).ok())
        .map(u32::from_ne_bytes)
        .ok_or_else(|| protocol("NBD_CMD_CONNECT's reply has no device index"))
}

fn parse_status(attrs: &[u8]) -> Result<Vec<DeviceStatus>, Error> {
    let list = attributes(attrs)
        .find(|(kind, _)| *kind == NBD_ATTR_DEVICE_LIST)
        .map(|(_, value)| value)
        .unwrap_or_default();
    let mut devices = Vec::new();
    for (kind, item) in attributes(list) {
        if kind != NBD_DEVICE_ITEM {
            continue;
        }
        let mut index = None;
        let mut connected = false;
        for (field, value) in attributes(item) {
            match (field, value) {
                (NBD_DEVICE_INDEX, &[a, b, c, d]) => index = Some(u32::from_ne_bytes([a, b, c, d])),
                (NBD_DEVICE_CONNECTED, &[flag]) => connected = flag != 0,
                _ => {}
            }
        }
        let index = index.ok_or_else(|| protocol("a device item without an index"))?;
        devices.push(DeviceStatus { index, connected });
    }
    devices.sort_by_key(|d| d.index);
    Ok(devices)
}

/// What `/sys/block/nbd<index>/backend` holds, if anything.
pub fn backend_of(index: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/sys/block/nbd{index}/backend")).ok()?;
    let text = text.trim_end_matches('\n');
    (!text.is_empty()).then(|| text.to_owned())
}

/// The process that connected `/dev/nbd<index>`, if the kernel says.
pub fn pid_of(index: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/block/nbd{index}/pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_paths() {
        assert_eq!(device_index(Path::new("/dev/nbd0")).unwrap(), 0);
        assert_eq!(device_index(Path::new("/dev/nbd15")).unwrap(), 15);
        for bad in [
            "/dev/nbd",
            "/dev/nbd01",
            "/dev/nbd-1",
            "/dev/sda",
            "nbd0",
            "/dev/nbd0p1",
            "/dev/nbd99999999999",
        ] {
            assert!(device_index(Path::new(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn flags_for_the_kernel() {
        let rw = kernel_flags(false);
        assert_eq!(rw & FLAG_READ_ONLY, 0);
        // Without it the kernel refuses a second socket (EINVAL).
        assert_ne!(rw & FLAG_CAN_MULTI_CONN, 0);
        assert_ne!(rw & FLAG_SEND_TRIM, 0);
        assert_ne!(rw & FLAG_SEND_FUA, 0);
        let ro = kernel_flags(true);
        assert_ne!(ro & FLAG_READ_ONLY, 0);
        assert_eq!(
            ro & (FLAG_SEND_TRIM | FLAG_SEND_FUA | FLAG_SEND_WRITE_ZEROES),
            0
        );
    }

    #[test]
    fn attributes_round_trip_and_nest() {
        let mut item = Vec::new();
        put_u32(&mut item, NBD_DEVICE_INDEX, 7);
        put_attr(&mut item, NBD_DEVICE_CONNECTED, &[1]);
        let mut list = Vec::new();
        put_attr(&mut list, NBD_DEVICE_ITEM | NLA_F_NESTED, &item);
        let mut second = Vec::new();
        put_u32(&mut second, NBD_DEVICE_INDEX, 2);
        put_attr(&mut second, NBD_DEVICE_CONNECTED, &[0]);
        put_attr(&mut list, NBD_DEVICE_ITEM | NLA_F_NESTED, &second);
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NBD_ATTR_DEVICE_LIST | NLA_F_NESTED, &list);
        assert_eq!(attrs.len() % 4, 0);
        assert_eq!(
            parse_status(&attrs).unwrap(),
            vec![
                DeviceStatus {
                    index: 2,
                    connected: false
                },
                DeviceStatus {
                    index: 7,
                    connected: true
                },
            ]
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        // An attribute claiming more bytes than there are ends the walk.
        let truncated = [8u8, 0, 1, 0, 1];
        assert_eq!(attributes(&truncated).count(), 0);
        assert!(reply_index(&truncated).is_err());
        // A message header shorter than its own length field, or longer than the data.
        assert!(split_message(&[0u8; 8]).is_err());
        let mut header = vec![0u8; 16];
        header[..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(split_message(&header).is_err());
        header[..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(split_message(&header).is_err());
        // A device item without its index.
        let mut item = Vec::new();
        put_attr(&mut item, NBD_DEVICE_CONNECTED, &[1]);
        let mut list = Vec::new();
        put_attr(&mut list, NBD_DEVICE_ITEM, &item);
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NBD_ATTR_DEVICE_LIST, &list);
        assert!(parse_status(&attrs).is_err());
    }
}
