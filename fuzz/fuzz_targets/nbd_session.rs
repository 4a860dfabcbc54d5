//! The NBD server as a whole, fed by the fuzzer: one client connection per input,
//! against a server that serves a 64 KiB encrypted volume (`fuzz`, writable), a
//! 1 MiB one (`big`, writable) and a 64 KiB raw one (`ro`, read-only). Whatever the
//! client sends, the server neither panics (a panic in any server thread aborts the
//! run) nor hangs: once the client stops sending, the server closes the connection.
//!
//! Each input's connection is a Unix socket pair served by `Server::serve_stream` on
//! the fuzzer's thread (the same handshake and transmission code as a TCP client's,
//! from the first byte), while one client thread, started once, sends the input and
//! reads the replies: a TCP connection per input (connect, accept, a connection
//! thread) was most of what an input cost.
//!
//! The first input byte picks the mode. Bit 0: a canned handshake (fixed newstyle,
//! structured replies, base:allocation, GO to `fuzz`, or to `big` with bit 2) comes
//! first, so the rest starts in transmission. Bit 1: the rest is a compact request
//! program (see [`requests`]) turned into well-formed requests, so the fuzzer spends
//! its time on commands, flags, ranges and ordering rather than on magic numbers;
//! otherwise the rest is sent as it is.
//!
//! The default export is small because what an input costs is the data it moves:
//! with every request up to 1 MiB, zero-filling and faulting in the server's buffers
//! and encrypting them held this target to about 150 inputs a second. Requests past
//! 128 KiB (spread over the rayon pool) are still reached through `big`.
#![no_main]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use atrest_fuzz::{scratch_dir, Input};
use blockdev::nbd::proto::{
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, IHAVEOPT, OPT_GO, OPT_SET_META_CONTEXT,
    OPT_STRUCTURED_REPLY, REQUEST_MAGIC,
};
use blockdev::nbd::{Export, Server};
use blockdev::volume::{self, NewVolumeKey};
use crypto_core::kms::{CreateKeyRequest, KeyService, LocalKms, LocalKmsConfig};
use libfuzzer_sys::fuzz_target;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::SendFlags;

/// The default export's size, and `big`'s.
const SMALL: u64 = 64 << 10;
const BIG: u64 = 1 << 20;

/// Long enough for any request the 1 MiB export allows; a server that has not closed
/// the connection by then is hung.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(20);

/// The server (bound, never accepting: connections come through `serve_stream`), and
/// the client thread: it takes a connection's client end and the bytes to send, and
/// gives the bytes' buffer back when it has read the server's last reply (the next
/// input's bytes go in it: a buffer grown afresh per input, up to 4 MiB, was a tenth
/// of this target's time in page faults and copies).
struct Fixture {
    _scratch: tempfile::TempDir,
    server: Server,
    client: Sender<(UnixStream, Vec<u8>)>,
    conversed: Mutex<Receiver<Vec<u8>>>,
    /// The last input's bytes' buffer, given back.
    bytes: Mutex<Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let scratch = scratch_dir("nbd");
        let home = scratch.path().join("home");
        let kms = LocalKms::open(&home, LocalKmsConfig::new()).expect("key service");
        let key = kms
            .create_key(&CreateKeyRequest::default())
            .expect("a CMK")
            .arn;
        let small = scratch.path().join("fuzz.vol");
        let big = scratch.path().join("big.vol");
        let raw = scratch.path().join("ro.vol");
        for (path, size) in [(&small, SMALL), (&big, BIG)] {
            let key = NewVolumeKey::Kms {
                kms: &kms,
                key_id: &key,
            };
            volume::create(path, size, key).expect("encrypted volume");
        }
        volume::create(&raw, 64 << 10, NewVolumeKey::Unencrypted).expect("raw volume");
        let mut exports = BTreeMap::new();
        let served = [
            ("fuzz", &small, false),
            ("big", &big, false),
            ("ro", &raw, true),
        ];
        for (name, path, read_only) in served {
            let volume = volume::open(path, &kms, read_only).expect("open volume");
            exports.insert(
                name.to_owned(),
                Export {
                    volume,
                    read_only,
                    description: Some(format!("fuzz export {name}")),
                    allowed_clients: Vec::new(),
                },
            );
        }
        // Two transmission threads per connection, not the default eight: starting
        // them was most of an input's cost, and two still run requests side by side.
        let server = Server::bind("127.0.0.1:0", Arc::new(RwLock::new(exports)))
            .expect("bind")
            .with_threads_per_connection(2);
        let (client, inputs) = mpsc::channel::<(UnixStream, Vec<u8>)>();
        let (conversed_tx, conversed) = mpsc::channel();
        std::thread::Builder::new()
            .name("nbd-fuzz-client".into())
            .spawn(move || {
                let mut sink = vec![0u8; 64 * 1024];
                for (mut stream, bytes) in inputs {
                    converse(&mut stream, &bytes, &mut sink);
                    drop(stream);
                    conversed_tx
                        .send(bytes)
                        .expect("the fuzzer waits for the client");
                }
            })
            .expect("the client thread");
        Fixture {
            _scratch: scratch,
            server,
            client,
            conversed: Mutex::new(conversed),
            bytes: Mutex::new(Vec::new()),
        }
    })
}

fn option(out: &mut Vec<u8>, code: u32, data: &[u8]) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn handshake(out: &mut Vec<u8>, export: &[u8]) {
    out.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
    option(out, OPT_STRUCTURED_REPLY, &[]);
    let mut meta = Vec::new();
    meta.extend_from_slice(&(export.len() as u32).to_be_bytes());
    meta.extend_from_slice(export);
    meta.extend_from_slice(&1u32.to_be_bytes());
    meta.extend_from_slice(&15u32.to_be_bytes());
    meta.extend_from_slice(b"base:allocation");
    option(out, OPT_SET_META_CONTEXT, &meta);
    let mut go = Vec::new();
    go.extend_from_slice(&(export.len() as u32).to_be_bytes());
    go.extend_from_slice(export);
    go.extend_from_slice(&0u16.to_be_bytes());
    option(out, OPT_GO, &go);
}

/// Each request is 7 or 8 program bytes: command (low 3 bits, so mostly valid ones),
/// flags, offset in 16-byte units (u16, modulo the export's `size` plus a sector: all
/// of the export and a little past it), length in 16-byte units (u16, the same
/// modulo; 0 means a length of 0..=255 bytes from the next byte), and the cookie's
/// low byte. Writes carry a payload of the request's length.
fn requests(out: &mut Vec<u8>, program: &mut Input<'_>, size: u64) {
    let span = size + 4096;
    while !program.is_empty() && out.len() < 4 << 20 {
        let command = u16::from(program.u8() & 7);
        let flags = u16::from(program.u8() & 0x1f);
        let offset = u64::from(program.u16()) * 16 % span;
        let length = match program.u16() {
            0 => u32::from(program.u8()),
            units => (u64::from(units) * 16 % span) as u32,
        };
        let cookie = u64::from(program.u8());
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&command.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
        if command == blockdev::nbd::proto::CMD_WRITE {
            let fill = (cookie as u8) | 1;
            out.extend(std::iter::repeat_n(fill, length.min(1 << 20) as usize));
        }
    }
}

/// Sends `bytes` and reads the server's replies until it closes the connection, on
/// this thread: the server may answer more than the socket buffers hold before it
/// has read everything, so writing and reading take turns as `poll` allows (a writer
/// thread per input cost its start-up and wake-ups).
fn converse(stream: &mut UnixStream, bytes: &[u8], sink: &mut [u8]) {
    stream.set_nonblocking(true).expect("non-blocking socket");
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    let mut unsent = bytes;
    let mut write_open = true;
    loop {
        if write_open && unsent.is_empty() {
            // The server may have closed first (bad magic, a protocol error).
            let _ = stream.shutdown(Shutdown::Write);
            write_open = false;
        }
        let mut progressed = false;
        if write_open {
            // No SIGPIPE when the server has closed: libFuzzer's `main` leaves it
            // fatal, as Rust's would not.
            match rustix::net::send(&*stream, unsent, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    unsent = &unsent[n..];
                    progressed = true;
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                // The server closed early: not a failure, the rest is not sent.
                Err(_) => unsent = &[],
            }
        }
        match stream.read(sink) {
            Ok(0) => return,
            Ok(_) => progressed = true,
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(err) => panic!("reading the server's replies: {err}"),
        }
        if progressed {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the server did not close the connection within {CLOSE_TIMEOUT:?}"
        );
        let mut flags = PollFlags::IN;
        if write_open {
            flags |= PollFlags::OUT;
        }
        let timeout = Timespec::try_from(left).expect("a timeout in range");
        // EINTR (libFuzzer's SIGALRM watchdog) just goes round again.
        let _ = poll(&mut [PollFd::new(&*stream, flags)], Some(&timeout));
    }
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let fixture = fixture();
    let mut program = Input::new(data);
    let mode = program.u8();
    let (export, size): (&[u8], u64) = if mode & 4 != 0 {
        (b"big", BIG)
    } else {
        (b"fuzz", SMALL)
    };
    let mut bytes = std::mem::take(&mut *fixture.bytes.lock().expect("one fuzzer thread"));
    bytes.clear();
    if mode & 1 != 0 {
        handshake(&mut bytes, export);
    }
    if mode & 2 != 0 {
        requests(&mut bytes, &mut program, size);
    } else {
        bytes.extend_from_slice(program.rest());
    }
    let (client, served) = UnixStream::pair().expect("a socket pair");
    fixture
        .client
        .send((client, bytes))
        .expect("the client thread runs");
    // Errors are the client's doing (a protocol error, a hang-up mid-handshake): the
    // property is no panic and no hang, and that the client got its replies.
    let _ = fixture.server.serve_stream(served);
    // Given back once the client has read the last reply.
    *fixture.bytes.lock().expect("one fuzzer thread") = fixture
        .conversed
        .lock()
        .expect("one fuzzer thread")
        .recv()
        .expect("the client thread answers");
});
