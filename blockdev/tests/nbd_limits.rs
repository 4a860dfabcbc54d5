//! The NBD server's connection limits (`Server::with_connection_limits`): a
//! connection beyond the total or per-source limit is closed before the greeting
//! while the admitted ones go on being served, a closed connection frees its place,
//! and another source is served while one is at its limit; a client that never ends
//! its handshake loses its place at the handshake deadline, and with an idle timeout
//! an attached client that sends nothing loses it too. Admitted clients are
//! driven by hand-written handshakes and by `nbdinfo`.

#[path = "../../tests/common/system.rs"]
mod system;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::process::{Command, Output};
use std::sync::{Arc, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use blockdev::nbd::proto::*;
use blockdev::nbd::{ConnectionLimits, Export, ExportTable, Server, ShutdownHandle};
use blockdev::volume::{self, Volume};
use blockdev::Error;
use tempfile::TempDir;

const EXPORT_SIZE: usize = 1 << 20;
/// Connections tried beyond a full limit in each flood.
const FLOOD: usize = 40;
/// How often a client retries while a closed connection's place is being freed
/// (the server frees it once that connection's thread has finished).
const ATTEMPTS: usize = 400;
const RETRY_PAUSE: Duration = Duration::from_millis(25);
/// A test that hangs fails instead: no read waits longer than this.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The byte at `offset` of the served image.
fn pattern(offset: usize) -> u8 {
    (offset % 251) as u8
}

struct Running {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    thread: JoinHandle<Result<(), Error>>,
    _dir: TempDir,
}

impl Running {
    fn stop(self) {
        self.shutdown.shutdown();
        self.thread.join().unwrap().unwrap();
    }
}

/// A server of one raw export, `disk`, holding at most `total` connections and
/// `per_source` from one address.
fn serve(total: usize, per_source: usize) -> Running {
    serve_with(total, per_source, |server| server)
}

/// As [`serve`], with more settings made by `configure`.
fn serve_with(
    total: usize,
    per_source: usize,
    configure: impl FnOnce(Server) -> Server,
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let bytes: Vec<u8> = (0..EXPORT_SIZE).map(pattern).collect();
    std::fs::write(&path, bytes).unwrap();
    let volume: Arc<dyn Volume> = volume::open_raw(&path, false).unwrap();
    let export = Export {
        volume,
        read_only: false,
        description: None,
        allowed_clients: Vec::new(),
    };
    let table: ExportTable = Arc::new(RwLock::new(BTreeMap::from([("disk".into(), export)])));
    let limits = ConnectionLimits {
        max_connections: NonZeroUsize::new(total).unwrap(),
        max_per_source: NonZeroUsize::new(per_source).unwrap(),
    };
    let server = Server::bind("127.0.0.1:0", table)
        .unwrap()
        .with_threads_per_connection(2)
        .with_connection_limits(limits);
    assert_eq!(server.connection_limits(), limits);
    let server = configure(server);
    let addr = server.local_addr();
    let shutdown = server.shutdown_handle();
    let thread = thread::spawn(move || server.run());
    Running {
        addr,
        shutdown,
        thread,
        _dir: dir,
    }
}

/// A TCP connection to `addr` from the local address `from` (127.0.0.2 is another
/// source on the loopback).
fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    use rustix::net::{bind, connect, socket, AddressFamily, SocketType};
    let fd: OwnedFd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    connect(&fd, &addr).unwrap();
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream
}

/// What the server sent on a new connection before closing it or within the read
/// timeout: the greeting (18 bytes) when admitted, nothing when refused.
enum Admitted {
    Greeted(TcpStream),
    Closed,
}

fn open(from: Ipv4Addr, addr: SocketAddr) -> Admitted {
    let mut stream = connect_from(from, addr);
    let mut greeting = [0u8; 18];
    let mut got = 0;
    while got < greeting.len() {
        match stream.read(&mut greeting[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == ErrorKind::ConnectionReset => break,
            Err(err) => panic!("reading the greeting: {err}"),
        }
    }
    match got {
        0 => Admitted::Closed,
        18 => {
            assert_eq!(&greeting[..8], &INIT_PASSWD.to_be_bytes());
            assert_eq!(&greeting[8..16], &IHAVEOPT.to_be_bytes());
            Admitted::Greeted(stream)
        }
        n => panic!("the server sent {n} bytes of a greeting, then closed"),
    }
}

/// A connection that must be admitted.
fn greeted(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    match open(from, addr) {
        Admitted::Greeted(stream) => stream,
        Admitted::Closed => panic!("a connection from {from} was refused"),
    }
}

/// A connection that must be refused: closed with not one byte sent.
fn assert_refused(from: Ipv4Addr, addr: SocketAddr) {
    if let Admitted::Greeted(_) = open(from, addr) {
        panic!("a connection from {from} beyond the limit was greeted");
    }
}

/// Retries until a connection from `from` is admitted (a closed one's place is freed
/// when its thread ends, a moment after the client closes).
fn eventually_greeted(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    for _ in 0..ATTEMPTS {
        if let Admitted::Greeted(stream) = open(from, addr) {
            return stream;
        }
        thread::sleep(RETRY_PAUSE);
    }
    panic!("no connection from {from} was admitted after {ATTEMPTS} attempts");
}

/// Ends the handshake of a greeted connection with NBD_OPT_EXPORT_NAME `disk`.
fn attach(mut stream: TcpStream) -> TcpStream {
    stream
        .write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
    let mut option = IHAVEOPT.to_be_bytes().to_vec();
    option.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    option.extend_from_slice(&4u32.to_be_bytes());
    option.extend_from_slice(b"disk");
    stream.write_all(&option).unwrap();
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(
        u64::from_be_bytes(reply[..8].try_into().unwrap()),
        EXPORT_SIZE as u64
    );
    stream
}

/// Reads 4 KiB at `offset` on an attached connection and checks the bytes.
fn read_back(stream: &mut TcpStream, offset: usize) {
    let mut request = REQUEST_MAGIC.to_be_bytes().to_vec();
    request.extend_from_slice(&0u16.to_be_bytes());
    request.extend_from_slice(&CMD_READ.to_be_bytes());
    request.extend_from_slice(&7u64.to_be_bytes());
    request.extend_from_slice(&(offset as u64).to_be_bytes());
    request.extend_from_slice(&4096u32.to_be_bytes());
    stream.write_all(&request).unwrap();
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(&header[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&header[4..8], &0u32.to_be_bytes(), "the read failed");
    assert_eq!(&header[8..], &7u64.to_be_bytes());
    let mut data = vec![0u8; 4096];
    stream.read_exact(&mut data).unwrap();
    assert!(data
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(offset + i)));
}

fn nbdinfo(addr: SocketAddr) -> Output {
    Command::new("nbdinfo")
        .args(["--size", &format!("nbd://{addr}/disk")])
        .output()
        .expect("running nbdinfo")
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

#[test]
fn beyond_the_total_limit_connections_are_closed_before_the_greeting() {
    if !system::require_tools(&["nbdinfo"]) {
        return;
    }
    let server = serve(3, 3);
    let mut first = attach(greeted(LOCAL, server.addr));
    let mut second = attach(greeted(LOCAL, server.addr));
    // The third place: a client still in its handshake counts too.
    let negotiating = greeted(LOCAL, server.addr);
    for _ in 0..FLOOD {
        assert_refused(LOCAL, server.addr);
    }
    // What a real client sees while the server is full: a failed connection.
    let refused = nbdinfo(server.addr);
    assert!(
        !refused.status.success(),
        "nbdinfo was served beyond the limit"
    );
    assert!(!refused.stderr.is_empty(), "nbdinfo said nothing of why");
    // The admitted clients were not disturbed.
    read_back(&mut first, 8192);
    read_back(&mut second, 12288);
    // A closed connection frees its place: nbdinfo is served once it is free.
    drop(negotiating);
    let mut served = None;
    for _ in 0..ATTEMPTS {
        let out = nbdinfo(server.addr);
        if out.status.success() {
            served = Some(out);
            break;
        }
        thread::sleep(RETRY_PAUSE);
    }
    let served = served.expect("nbdinfo was never served after a place was freed");
    assert_eq!(
        String::from_utf8_lossy(&served.stdout).trim(),
        EXPORT_SIZE.to_string()
    );
    // And the limit still holds once nbdinfo has gone: three again, no fourth.
    let third = eventually_greeted(LOCAL, server.addr);
    assert_refused(LOCAL, server.addr);
    read_back(&mut first, 0);
    drop((first, second, third));
    server.stop();
}

#[test]
fn another_source_is_served_while_one_is_at_its_limit() {
    let server = serve(16, 2);
    let mut first = attach(greeted(LOCAL, server.addr));
    let second = greeted(LOCAL, server.addr);
    for _ in 0..FLOOD {
        assert_refused(LOCAL, server.addr);
    }
    // 127.0.0.2 is another source: served while 127.0.0.1 is full, to its own limit.
    let mut other = attach(greeted(OTHER, server.addr));
    let other_second = greeted(OTHER, server.addr);
    assert_refused(OTHER, server.addr);
    read_back(&mut other, 4096);
    read_back(&mut first, 0);
    // A source's place is freed when its connection closes.
    drop(second);
    let mut again = attach(eventually_greeted(LOCAL, server.addr));
    read_back(&mut again, 65536);
    assert_refused(LOCAL, server.addr);
    drop((first, again, other, other_second));
    server.stop();
}

#[test]
fn a_flood_of_refusals_leaks_no_place() {
    // Thousands of refusals cost the server no thread and no place: once the one
    // admitted client leaves, the next is served at once.
    let server = serve(1, 1);
    let mut only = attach(greeted(LOCAL, server.addr));
    for _ in 0..(FLOOD * 10) {
        assert_refused(OTHER, server.addr);
    }
    read_back(&mut only, 4096);
    drop(only);
    let mut next = attach(eventually_greeted(OTHER, server.addr));
    read_back(&mut next, 0);
    drop(next);
    server.stop();
}

/// Sends NBD_OPT_LIST and reads its replies up to the final ACK; `false` when the
/// server closed the connection instead.
fn list_exports(stream: &mut TcpStream) -> bool {
    let mut option = IHAVEOPT.to_be_bytes().to_vec();
    option.extend_from_slice(&OPT_LIST.to_be_bytes());
    option.extend_from_slice(&0u32.to_be_bytes());
    if stream.write_all(&option).is_err() {
        return false;
    }
    loop {
        let mut header = [0u8; 20];
        if stream.read_exact(&mut header).is_err() {
            return false;
        }
        let kind = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let length = u32::from_be_bytes(header[16..20].try_into().unwrap());
        let mut data = vec![0u8; length as usize];
        if stream.read_exact(&mut data).is_err() {
            return false;
        }
        match kind {
            REP_SERVER => continue,
            REP_ACK => return true,
            other => panic!("unexpected reply {other:#x} to NBD_OPT_LIST"),
        }
    }
}

#[test]
fn a_handshake_kept_busy_past_the_deadline_loses_its_place() {
    let deadline = Duration::from_secs(1);
    let server = serve_with(2, 2, |server| server.with_handshake_deadline(deadline));
    let mut attached = attach(greeted(LOCAL, server.addr));
    // A client that never attaches but answers every timeout: an option every 50 ms
    // (each well within the per-read handshake timeout), for ever.
    let mut busy = greeted(LOCAL, server.addr);
    busy.write_all(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
        .unwrap();
    assert_refused(LOCAL, server.addr);
    let mut answered = 0;
    while list_exports(&mut busy) {
        answered += 1;
        assert!(
            answered < 600,
            "a handshake went on for {answered} options, far past its deadline"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(answered > 0, "the busy client was never answered");
    // Its place is free again; the attached client, older than the deadline, stays.
    let mut next = attach(eventually_greeted(LOCAL, server.addr));
    thread::sleep(deadline * 2);
    read_back(&mut attached, 4096);
    read_back(&mut next, 0);
    drop((attached, next));
    server.stop();
}

#[test]
fn an_idle_timeout_frees_the_place_of_a_silent_client_only() {
    let timeout = Duration::from_millis(1500);
    let server = serve_with(2, 2, |server| server.with_idle_timeout(timeout));
    let mut busy = attach(greeted(LOCAL, server.addr));
    let mut silent = attach(greeted(LOCAL, server.addr));
    assert_refused(LOCAL, server.addr);
    // The busy client sends a request well within every timeout, for three timeouts
    // and more; the silent one sends nothing and is disconnected.
    for round in 0..10 {
        read_back(&mut busy, round * 4096);
        thread::sleep(timeout / 5);
    }
    let mut byte = [0u8; 1];
    match silent.read(&mut byte) {
        Ok(0) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the silent client was not disconnected: {other:?}"),
    }
    // Its place is free for the next client.
    let mut next = attach(eventually_greeted(LOCAL, server.addr));
    read_back(&mut next, 0);
    read_back(&mut busy, 8192);
    drop((busy, next));
    server.stop();
}
