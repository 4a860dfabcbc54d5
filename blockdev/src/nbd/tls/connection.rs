//! One client's TLS session after the handshake: the record layer run on the
//! transmission threads themselves, with no pump.
//!
//! The read half (used under the connection's read lock) owns the client's traffic
//! key and its sequence number; the write half (under the write lock) owns the
//! server's. Each has its own mutex here too, uncontended in the ordinary course:
//! the reader takes the write half only to answer a KeyUpdate or to send a fatal
//! alert. Lock order: read half, write half, secrets.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustix::net::RecvFlags;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::ConnectionTrafficSecrets;
use tracing::debug;

use super::record::{
    self, ContentType, Parts, RecordError, TrafficKey, HEADER_LEN, MAX_PLAINTEXT, RECORD_OVERHEAD,
    SIDE_LEN,
};
use crate::nbd::transmission::Wire;

/// Ciphertext read from the socket at a time (room for many records, so that a
/// client's pipelined requests are all opened after one `read`).
const RX_BUFFER: usize = 256 * 1024;
/// Sealed records are written once this much is gathered (a 1 MiB read reply goes
/// out in one `write`; a 32 MiB one in pieces, so the buffer stays bounded).
const TX_FLUSH: usize = 2 * 1024 * 1024;
/// Replies up to this much data are sealed where the data is ([`Session::send_reply`]);
/// each record is three `iovec`s, well within `IOV_MAX` (1024).
const IN_PLACE_MAX: usize = 4 * 1024 * 1024;

/// `KeyUpdate` (RFC 8446 section 4.6.3): type 24, length 1, `request_update`.
const KEY_UPDATE: [u8; 4] = [24, 0, 0, 1];
/// KeyUpdates accepted in a row without application data between (BoringSSL's and
/// rustls's limit).
const MAX_KEY_UPDATES: u8 = 32;
/// `NewSessionTicket`, which only a server may send.
const NEW_SESSION_TICKET: u8 = 4;
/// Alert levels and descriptions (RFC 8446 section 6).
const WARNING: u8 = 1;
const FATAL: u8 = 2;
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;
const INTERNAL_ERROR: u8 = 80;
const USER_CANCELED: u8 = 90;

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SessionError {
    /// A record was refused.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The client sent an alert other than close_notify.
    #[error("the client sent TLS alert {0}")]
    PeerAlert(u8),
    /// An alert record that is not one alert.
    #[error("the client sent a malformed alert")]
    BadAlert,
    /// A post-handshake message other than KeyUpdate (NewSessionTicket is a server's).
    #[error("the client sent handshake message type {0} after the handshake")]
    UnexpectedHandshake(u8),
    /// A KeyUpdate that is malformed or not alone in its record.
    #[error("the client sent a malformed KeyUpdate")]
    BadKeyUpdate,
    /// KeyUpdate after KeyUpdate with no data between.
    #[error("the client sent more than {MAX_KEY_UPDATES} KeyUpdates in a row")]
    TooManyKeyUpdates,
    /// The client used its key past the cipher suite's limit, although asked to update.
    #[error("the client sent more records under one key than the cipher suite allows")]
    KeyLimit,
    /// The connection ended inside a record.
    #[error("the client closed the connection in the middle of a TLS record")]
    Truncated,
    /// rustls could not derive the next traffic secret.
    #[error("updating the traffic keys: {0}")]
    Secrets(String),
}

impl SessionError {
    /// The fatal alert the server sends for this error, if any.
    fn alert(&self) -> Option<u8> {
        match self {
            SessionError::Record(RecordError::BadRecord) => Some(BAD_RECORD_MAC),
            SessionError::Record(RecordError::TooLong(_) | RecordError::PlaintextTooLong(_)) => {
                Some(RECORD_OVERFLOW)
            }
            SessionError::Record(
                RecordError::Unprotected(_)
                | RecordError::NoContentType
                | RecordError::ContentType(_),
            ) => Some(UNEXPECTED_MESSAGE),
            SessionError::Record(RecordError::TooShort(_))
            | SessionError::BadAlert
            | SessionError::BadKeyUpdate => Some(DECODE_ERROR),
            SessionError::UnexpectedHandshake(_) | SessionError::TooManyKeyUpdates => {
                Some(UNEXPECTED_MESSAGE)
            }
            SessionError::Record(
                RecordError::SequenceExhausted | RecordError::UnsupportedCipher,
            )
            | SessionError::KeyLimit
            | SessionError::Secrets(_) => Some(INTERNAL_ERROR),
            // The client ended the session itself; nothing to answer.
            SessionError::PeerAlert(_) | SessionError::Truncated => None,
        }
    }
}

fn invalid(err: impl Into<SessionError>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err.into())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A TLS session on a TCP socket: reads give the client's plaintext, writes are
/// sealed into records. Clones share the session (one for reading requests, one
/// for writing replies); the last one dropped sends close_notify.
pub(crate) struct TlsStream {
    session: Arc<Session>,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream").finish_non_exhaustive()
    }
}

struct Session {
    tcp: TcpStream,
    rx: Mutex<Receiver>,
    tx: Mutex<Transmitter>,
    /// Derives the next traffic secrets on a KeyUpdate.
    secrets: Mutex<KernelConnection<ServerConnectionData>>,
    /// Records one key may protect (the cipher suite's confidentiality limit): the
    /// server updates its key before, and asks the client to update at half of it.
    limit: u64,
}

struct Receiver {
    key: TrafficKey,
    /// Ciphertext read from the socket; records are opened in place.
    buf: Vec<u8>,
    /// Bytes of `buf` read from the socket.
    filled: usize,
    /// Where the first record not yet opened starts.
    next: usize,
    /// The part of `buf` holding plaintext not yet read.
    plain: Range<usize>,
    /// Plaintext rustls decrypted during the handshake, read first.
    early: Vec<u8>,
    /// The client sent close_notify: the stream has ended.
    closed: bool,
    /// Why a record was refused: every further read fails with it.
    failed: Option<String>,
    /// A record [`Session::ready`] found bad: the next read fails with it (after the
    /// replies to the requests before it are sent).
    deferred: Option<SessionError>,
    /// The server asked for a new client key and has not seen it yet.
    update_asked: bool,
    /// KeyUpdates since the last application data (bounded, as in rustls and
    /// BoringSSL, so that a client cannot keep the server deriving keys for nothing).
    key_updates: u8,
}

struct Transmitter {
    key: TrafficKey,
    /// Sealed records not yet written.
    out: Vec<u8>,
    /// Headers, sealed content types and tags of records sealed in place.
    side: Vec<u8>,
    /// close_notify or a fatal alert went out, or a write failed: nothing more is sent.
    done: bool,
}

impl TlsStream {
    /// The session after a handshake: `tx` and `rx` as rustls extracted them, the
    /// plaintext rustls already decrypted (`early`), the ciphertext read past it
    /// (`unread`), whether rustls already read the client's close_notify
    /// (`peer_closed`: nothing in `unread` is then the client's), and the cipher
    /// suite's confidentiality `limit`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tcp: TcpStream,
        (tx_seq, tx): (u64, ConnectionTrafficSecrets),
        (rx_seq, rx): (u64, ConnectionTrafficSecrets),
        secrets: KernelConnection<ServerConnectionData>,
        early: Vec<u8>,
        unread: &[u8],
        peer_closed: bool,
        limit: u64,
    ) -> Result<TlsStream, RecordError> {
        let mut buf = vec![0u8; RX_BUFFER.max(unread.len())];
        buf[..unread.len()].copy_from_slice(unread);
        Ok(TlsStream {
            session: Arc::new(Session {
                tcp,
                rx: Mutex::new(Receiver {
                    key: TrafficKey::new(rx, rx_seq)?,
                    buf,
                    filled: unread.len(),
                    next: 0,
                    plain: 0..0,
                    early,
                    closed: peer_closed,
                    failed: None,
                    deferred: None,
                    update_asked: false,
                    key_updates: 0,
                }),
                tx: Mutex::new(Transmitter {
                    key: TrafficKey::new(tx, tx_seq)?,
                    out: Vec::new(),
                    side: Vec::new(),
                    done: false,
                }),
                secrets: Mutex::new(secrets),
                limit: limit.max(4),
            }),
        })
    }

    /// The next sequence numbers (send, receive), for tests of key updates.
    #[cfg(test)]
    pub(crate) fn sequence_numbers(&self) -> (u64, u64) {
        let rx = lock(&self.session.rx).key.seq();
        (lock(&self.session.tx).key.seq(), rx)
    }

    /// Another handle on the same session.
    pub(crate) fn try_clone(&self) -> io::Result<TlsStream> {
        Ok(TlsStream {
            session: Arc::clone(&self.session),
        })
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rx = lock(&self.session.rx);
        self.session.read(&mut rx, buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.session.send(ContentType::ApplicationData, &[buf])?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Wire for TlsStream {
    fn shutdown_wire(&self) -> io::Result<()> {
        lock(&self.session.tx).done = true;
        self.session.tcp.shutdown(Shutdown::Both)
    }

    fn set_read_timeout_wire(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.session.tcp.set_read_timeout(timeout)
    }

    fn set_write_timeout_wire(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.session.tcp.set_write_timeout(timeout)
    }

    /// All parts sealed into records in one buffer and sent with one `write`.
    fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        self.session.send(ContentType::ApplicationData, parts)
    }

    /// The data is sealed where it is (overwritten with its ciphertext) and sent with
    /// the records' headers and tags in one `writev`: it is never copied.
    fn write_reply(&mut self, header: &[u8], data: &mut [u8]) -> io::Result<()> {
        self.session.send_reply(header, data)
    }

    /// Plaintext already opened, else every whole record received, after one `recv`
    /// that does not wait.
    fn ready(&self, need: usize) -> bool {
        let mut rx = lock(&self.session.rx);
        self.session.ready(&mut rx, need)
    }
}

impl Receiver {
    /// Moves buffered plaintext into `out`; how much.
    fn take_plain(&mut self, out: &mut [u8]) -> usize {
        if !self.early.is_empty() {
            let n = self.early.len().min(out.len());
            out[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            return n;
        }
        let n = self.plain.len().min(out.len());
        out[..n].copy_from_slice(&self.buf[self.plain.start..self.plain.start + n]);
        self.plain.start += n;
        n
    }
}

impl Session {
    /// Reads plaintext into `out`: what is buffered, then every record already in
    /// the buffer, and only when that gave nothing, more from the socket.
    fn read(&self, rx: &mut Receiver, out: &mut [u8]) -> io::Result<usize> {
        if let Some(reason) = &rx.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason.clone()));
        }
        if rx.early.is_empty() && rx.plain.is_empty() {
            if let Some(err) = rx.deferred.take() {
                return Err(self.fail(rx, err));
            }
        }
        let mut copied = 0;
        loop {
            while copied < out.len() {
                let n = rx.take_plain(&mut out[copied..]);
                if n == 0 {
                    break;
                }
                copied += n;
            }
            if copied == out.len() {
                return Ok(copied);
            }
            match self.open_next(rx) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => {
                    let err = self.fail(rx, err);
                    // What came before the bad record is the client's; the error
                    // comes with the next read.
                    return if copied > 0 { Ok(copied) } else { Err(err) };
                }
            }
            if copied > 0 || rx.closed {
                return Ok(copied);
            }
            if !self.fill(rx)? {
                if rx.filled > rx.next {
                    return Err(self.fail(rx, SessionError::Truncated));
                }
                // The socket ended without close_notify: the server's own
                // shutdown(Read) (stopping, a volume swap) or a client that hung up
                // between requests, which the NBD layer handles like any end.
                return Ok(0);
            }
        }
    }

    /// Whether at least `need` bytes of plaintext can be read without waiting: those
    /// already opened, else the first whole record received that holds any (after a
    /// `recv` that does not wait, when none is buffered). Records are opened only when
    /// no plaintext is left (each one's plaintext stays where it was opened), so a
    /// request split over records may read as not ready: the caller then only sends
    /// its replies sooner. A record that fails is not reported here but by the next
    /// read ([`Receiver::deferred`]), so the replies gathered before it still go out.
    fn ready(&self, rx: &mut Receiver, need: usize) -> bool {
        if rx.failed.is_some() || rx.deferred.is_some() {
            return false;
        }
        let mut asked = false;
        loop {
            let have = rx.early.len() + rx.plain.len();
            if have > 0 {
                return have >= need;
            }
            match self.open_next(rx) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => {
                    rx.deferred = Some(err);
                    return false;
                }
            }
            if asked || rx.closed || !self.fill_now(rx) {
                return false;
            }
            asked = true;
        }
    }

    /// [`Session::fill`] without waiting: whether it read anything.
    fn fill_now(&self, rx: &mut Receiver) -> bool {
        rx.buf.copy_within(rx.next..rx.filled, 0);
        rx.filled -= rx.next;
        rx.next = 0;
        rx.plain = 0..0;
        loop {
            match rustix::net::recv(&self.tcp, &mut rx.buf[rx.filled..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => return false,
                Ok((n, _)) => {
                    rx.filled += n;
                    return true;
                }
                Err(rustix::io::Errno::INTR) => {}
                // Nothing yet (EAGAIN), or an error the next read reports.
                Err(_) => return false,
            }
        }
    }

    /// Opens the next record if the buffer holds all of it; whether it did.
    fn open_next(&self, rx: &mut Receiver) -> Result<bool, SessionError> {
        if rx.closed {
            return Ok(false);
        }
        let Some(len) = record::record_len(&rx.buf[rx.next..rx.filled])? else {
            return Ok(false);
        };
        if rx.filled - rx.next < len {
            return Ok(false);
        }
        if rx.key.seq() >= self.limit {
            return Err(SessionError::KeyLimit);
        }
        let at = rx.next;
        rx.next += len;
        let (content, range) = record::open(&mut rx.key, &mut rx.buf[at..at + len])?;
        let plain = at + range.start..at + range.end;
        match content {
            ContentType::ApplicationData => {
                rx.plain = plain;
                rx.key_updates = 0;
            }
            ContentType::Alert => match rx.buf[plain].to_vec()[..] {
                [_, CLOSE_NOTIFY] => rx.closed = true,
                // Only a warning: the client's close_notify follows.
                [WARNING, USER_CANCELED] => {}
                [_, description] => return Err(SessionError::PeerAlert(description)),
                _ => return Err(SessionError::BadAlert),
            },
            ContentType::Handshake => {
                // KeyUpdate must end its record (RFC 8446 section 5.1), and the
                // only message a client may send now: so one KeyUpdate per record.
                let request = match rx.buf[plain].to_vec()[..] {
                    [24, 0, 0, 1, request @ (0 | 1)] => request == 1,
                    [NEW_SESSION_TICKET, ..] => {
                        return Err(SessionError::UnexpectedHandshake(NEW_SESSION_TICKET))
                    }
                    [24, ..] | [] => return Err(SessionError::BadKeyUpdate),
                    [other, ..] => return Err(SessionError::UnexpectedHandshake(other)),
                };
                rx.key_updates = rx.key_updates.saturating_add(1);
                if rx.key_updates > MAX_KEY_UPDATES {
                    return Err(SessionError::TooManyKeyUpdates);
                }
                let (seq, secret) = lock(&self.secrets)
                    .update_rx_secret()
                    .map_err(|e| SessionError::Secrets(e.to_string()))?;
                rx.key = TrafficKey::new(secret, seq)?;
                rx.update_asked = false;
                if request {
                    let mut tx = lock(&self.tx);
                    self.update_tx_key(&mut tx, false)
                        .and_then(|()| self.flush(&mut tx))
                        .map_err(|e| SessionError::Secrets(e.to_string()))?;
                }
            }
        }
        if !rx.update_asked && rx.key.seq() >= self.limit / 2 {
            rx.update_asked = true;
            let mut tx = lock(&self.tx);
            self.update_tx_key(&mut tx, true)
                .and_then(|()| self.flush(&mut tx))
                .map_err(|e| SessionError::Secrets(e.to_string()))?;
        }
        Ok(true)
    }

    /// Reads more ciphertext from the socket; `false` at its end.
    fn fill(&self, rx: &mut Receiver) -> io::Result<bool> {
        // All plaintext is read: what is left of the buffer is one partial record.
        rx.buf.copy_within(rx.next..rx.filled, 0);
        rx.filled -= rx.next;
        rx.next = 0;
        rx.plain = 0..0;
        loop {
            match (&self.tcp).read(&mut rx.buf[rx.filled..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    rx.filled += n;
                    return Ok(true);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Ends the session after `err`: a fatal alert when one is due, then nothing more.
    fn fail(&self, rx: &mut Receiver, err: SessionError) -> io::Error {
        debug!("TLS: {err}; ending the session");
        rx.failed = Some(err.to_string());
        let mut tx = lock(&self.tx);
        if let Some(description) = err.alert() {
            let _ = self.send_alert(&mut tx, description);
        }
        tx.done = true;
        let _ = self.tcp.shutdown(Shutdown::Both);
        invalid(err)
    }

    /// Seals `parts` as records of `content` and writes them.
    fn send(&self, content: ContentType, parts: &[&[u8]]) -> io::Result<()> {
        let mut tx = lock(&self.tx);
        if tx.done {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS session has ended",
            ));
        }
        let result = self.seal_and_write(&mut tx, content, parts);
        if result.is_err() {
            tx.done = true;
        }
        // A 32 MiB reply's buffer is not kept for the 4 KiB ones that follow.
        if tx.out.capacity() > 2 * TX_FLUSH {
            tx.out = Vec::new();
        }
        result
    }

    /// Sends `header` and `data` as records, sealing `data` in place (see
    /// [`record::seal_in_place`]): the first record (header and the start of the data)
    /// and the last are copied and sealed as usual, every one between is sealed where
    /// it is. Small replies, very large ones and one that would need a key update on
    /// the way go the ordinary way.
    fn send_reply(&self, header: &[u8], data: &mut [u8]) -> io::Result<()> {
        let mut tx = lock(&self.tx);
        if tx.done {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS session has ended",
            ));
        }
        let first = MAX_PLAINTEXT.saturating_sub(header.len());
        let records = (header.len() + data.len()).div_ceil(MAX_PLAINTEXT) as u64;
        let in_place = data.len() > first + MAX_PLAINTEXT
            && data.len() <= IN_PLACE_MAX
            && tx.key.seq().saturating_add(records) < self.limit - 1;
        let result = if in_place {
            self.seal_in_place_and_write(&mut tx, header, data, first)
        } else {
            self.seal_and_write(&mut tx, ContentType::ApplicationData, &[header, data])
        };
        if result.is_err() {
            tx.done = true;
        }
        if tx.out.capacity() > 2 * TX_FLUSH {
            tx.out = Vec::new();
        }
        result
    }

    fn seal_in_place_and_write(
        &self,
        tx: &mut Transmitter,
        header: &[u8],
        data: &mut [u8],
        first: usize,
    ) -> io::Result<()> {
        let Transmitter { key, out, side, .. } = tx;
        out.clear();
        side.clear();
        let (head, rest) = data.split_at_mut(first);
        let first_parts: [&[u8]; 2] = [header, head];
        let mut plain = Parts::new(&first_parts);
        record::seal(
            key,
            ContentType::ApplicationData,
            &mut plain,
            header.len() + first,
            out,
        )
        .map_err(invalid)?;
        let first_record = out.len();
        // Each record between borrows the first byte of the next for its content
        // type, so the last one (with no byte after it) is copied.
        let middle = (rest.len() - 1) / MAX_PLAINTEXT;
        for i in 0..middle {
            let at = i * MAX_PLAINTEXT;
            record::seal_in_place(key, &mut rest[at..=at + MAX_PLAINTEXT], side)
                .map_err(invalid)?;
        }
        let last = &rest[middle * MAX_PLAINTEXT..];
        record::seal(
            key,
            ContentType::ApplicationData,
            &mut Parts::new(&[last]),
            last.len(),
            out,
        )
        .map_err(invalid)?;
        let mut slices = Vec::with_capacity(3 * middle + 2);
        slices.push(IoSlice::new(&out[..first_record]));
        for (i, sealed) in side.chunks_exact(SIDE_LEN).enumerate() {
            let at = i * MAX_PLAINTEXT;
            slices.push(IoSlice::new(&sealed[..HEADER_LEN]));
            slices.push(IoSlice::new(&rest[at..at + MAX_PLAINTEXT]));
            slices.push(IoSlice::new(&sealed[HEADER_LEN..]));
        }
        slices.push(IoSlice::new(&out[first_record..]));
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match (&self.tcp).write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        out.clear();
        Ok(())
    }

    fn seal_and_write(
        &self,
        tx: &mut Transmitter,
        content: ContentType,
        parts: &[&[u8]],
    ) -> io::Result<()> {
        let mut plain = Parts::new(parts);
        let records = plain.remaining().div_ceil(MAX_PLAINTEXT);
        let sealed = plain.remaining() + records * RECORD_OVERHEAD;
        tx.out
            .reserve(sealed.min(TX_FLUSH + MAX_PLAINTEXT + RECORD_OVERHEAD));
        while plain.remaining() > 0 {
            // The KeyUpdate takes the old key's last record.
            if tx.key.seq() >= self.limit - 1 {
                self.update_tx_key(tx, false)?;
            }
            let len = plain.remaining().min(MAX_PLAINTEXT);
            record::seal(&mut tx.key, content, &mut plain, len, &mut tx.out).map_err(invalid)?;
            if tx.out.len() >= TX_FLUSH {
                self.flush(tx)?;
            }
        }
        self.flush(tx)
    }

    /// Queues a KeyUpdate under the current key and switches to the next one.
    fn update_tx_key(&self, tx: &mut Transmitter, request: bool) -> io::Result<()> {
        let mut message = KEY_UPDATE.to_vec();
        message.push(u8::from(request));
        record::seal_all(
            &mut tx.key,
            ContentType::Handshake,
            &[message.as_slice()],
            &mut tx.out,
        )
        .map_err(invalid)?;
        let (seq, secret) = lock(&self.secrets)
            .update_tx_secret()
            .map_err(|e| invalid(SessionError::Secrets(e.to_string())))?;
        tx.key = TrafficKey::new(secret, seq).map_err(invalid)?;
        Ok(())
    }

    fn send_alert(&self, tx: &mut Transmitter, description: u8) -> io::Result<()> {
        if tx.done {
            return Ok(());
        }
        let level = if description == CLOSE_NOTIFY {
            WARNING
        } else {
            FATAL
        };
        record::seal_all(
            &mut tx.key,
            ContentType::Alert,
            &[&[level, description][..]],
            &mut tx.out,
        )
        .map_err(invalid)?;
        tx.done = true;
        self.flush(tx)
    }

    fn flush(&self, tx: &mut Transmitter) -> io::Result<()> {
        let result = (&self.tcp).write_all(&tx.out);
        tx.out.clear();
        result
    }
}

impl Drop for Session {
    /// An orderly end: close_notify (unless the session failed), then FIN.
    fn drop(&mut self) {
        let mut tx = lock(&self.tx);
        let _ = self.send_alert(&mut tx, CLOSE_NOTIFY);
        drop(tx);
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}
