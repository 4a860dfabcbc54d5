//! The NBD server against an in-memory volume, driven by a hand-written client that
//! speaks the wire format byte by byte (so malformed and pipelined traffic can be
//! sent), plus `nbdinfo`/`nbdsh` for what real clients see.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use blockdev::nbd::proto::*;
use blockdev::nbd::{
    Export, ExportTable, Refusal, RefusalAudit, Server, ShutdownHandle,
    MAX_REFUSALS_PER_NEGOTIATION,
};
use blockdev::volume::{Extent, Volume};
use blockdev::Error;

const BLOCK: u64 = 4096;

/// A volume in memory with 4 KiB allocation blocks, a switch to refuse attaches, and
/// a gate that holds reads at one offset until released (to force out-of-order replies).
#[derive(Debug, Default)]
struct MemVolume {
    data: RwLock<Vec<u8>>,
    allocated: RwLock<Vec<bool>>,
    read_only: bool,
    refuse_attach: bool,
    flushes: AtomicUsize,
    /// Reads answered by `read_cached` (the server's inline path).
    cached_reads: AtomicUsize,
    gate: Mutex<Option<(u64, bool)>>,
    gate_changed: Condvar,
    /// Reads that have reached the held offset and wait there (never decreases).
    held_reads: Mutex<usize>,
    held_changed: Condvar,
    /// A faulty volume: reads of whole holes succeed without writing the buffer
    /// (and nothing is answered from the cache), so a server's reused buffer shows.
    lazy_holes: AtomicBool,
}

impl MemVolume {
    fn new(size: u64) -> MemVolume {
        MemVolume {
            data: RwLock::new(vec![0; size as usize]),
            allocated: RwLock::new(vec![false; size.div_ceil(BLOCK) as usize]),
            ..MemVolume::default()
        }
    }

    fn check(&self, offset: u64, length: u64) -> Result<(), Error> {
        let size = self.size();
        match offset.checked_add(length) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::OutOfRange {
                offset,
                length,
                size,
            }),
        }
    }

    fn hold_reads_at(&self, offset: u64) {
        *self.gate.lock().unwrap() = Some((offset, false));
    }

    /// Waits until `count` reads have reached the held offset: the signal that the
    /// server has taken those requests in and runs them.
    fn wait_for_held_reads(&self, count: usize) {
        let mut held = self.held_reads.lock().unwrap();
        while *held < count {
            held = self.held_changed.wait(held).unwrap();
        }
    }

    fn release_reads(&self) {
        if let Some(gate) = self.gate.lock().unwrap().as_mut() {
            gate.1 = true;
        }
        self.gate_changed.notify_all();
    }
}

impl Volume for MemVolume {
    fn size(&self) -> u64 {
        self.data.read().unwrap().len() as u64
    }
    fn block_size(&self) -> u32 {
        BLOCK as u32
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn check_attach(&self) -> Result<(), Error> {
        if self.refuse_attach {
            return Err(Error::KeyUnavailable {
                key_arn: "arn:aws:kms:local:000000000000:key/test".into(),
                reason: "the key is Disabled".into(),
            });
        }
        Ok(())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check(offset, buf.len() as u64)?;
        let mut gate = self.gate.lock().unwrap();
        let mut counted = false;
        while matches!(*gate, Some((at, false)) if at == offset) {
            if !counted {
                counted = true;
                *self.held_reads.lock().unwrap() += 1;
                self.held_changed.notify_all();
            }
            gate = self.gate_changed.wait(gate).unwrap();
        }
        drop(gate);
        if self.lazy_holes.load(Ordering::SeqCst) {
            let allocated = self.allocated.read().unwrap();
            let blocks = offset / BLOCK..(offset + buf.len() as u64).div_ceil(BLOCK);
            if blocks.clone().all(|block| !allocated[block as usize]) {
                return Ok(());
            }
        }
        let data = self.data.read().unwrap();
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    /// Everything is "cached" except a held offset, which must wait.
    fn read_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool, Error> {
        self.check(offset, buf.len() as u64)?;
        if self.lazy_holes.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if matches!(*self.gate.lock().unwrap(), Some((at, false)) if at == offset) {
            return Ok(false);
        }
        let data = self.data.read().unwrap();
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        self.cached_reads.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
    fn write_at(&self, offset: u64, src: &[u8]) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check(offset, src.len() as u64)?;
        self.data.write().unwrap()[offset as usize..offset as usize + src.len()]
            .copy_from_slice(src);
        let mut allocated = self.allocated.write().unwrap();
        for block in offset / BLOCK..(offset + src.len() as u64).div_ceil(BLOCK) {
            allocated[block as usize] = true;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), Error> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn trim(&self, offset: u64, length: u64) -> Result<(), Error> {
        self.write_zeroes(offset, length, true)
    }
    fn write_zeroes(&self, offset: u64, length: u64, may_punch: bool) -> Result<(), Error> {
        self.check(offset, length)?;
        self.data.write().unwrap()[offset as usize..(offset + length) as usize].fill(0);
        if may_punch {
            let mut allocated = self.allocated.write().unwrap();
            for block in offset.div_ceil(BLOCK)..(offset + length) / BLOCK {
                allocated[block as usize] = false;
            }
        }
        Ok(())
    }
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>, Error> {
        self.check(offset, length)?;
        let allocated = self.allocated.read().unwrap();
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < offset + length {
            let end = ((at / BLOCK + 1) * BLOCK).min(offset + length);
            let hole = !allocated[(at / BLOCK) as usize];
            match out.last_mut() {
                Some(last) if last.hole == hole => last.length += end - at,
                _ => out.push(Extent {
                    length: end - at,
                    hole,
                    zero: hole,
                }),
            }
            at = end;
        }
        Ok(out)
    }
}

struct Running {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    thread: JoinHandle<Result<(), Error>>,
}

impl Running {
    fn stop(self) -> Result<(), Error> {
        self.shutdown.shutdown();
        self.thread.join().unwrap()
    }
}

fn serve(exports: Vec<(&str, Arc<MemVolume>, bool)>) -> Running {
    run(Server::bind("127.0.0.1:0", table(exports)).unwrap())
}

/// Runs `server` on a thread of its own.
fn run(server: Server) -> Running {
    let addr = server.local_addr();
    let shutdown = server.shutdown_handle();
    let thread = thread::spawn(move || server.run());
    Running {
        addr,
        shutdown,
        thread,
    }
}

/// A server of one export, `guarded`, limited to the client certificate `client1` on a
/// server without TLS (so every attach is refused), telling `audit` of each refusal.
fn serve_guarded(audit: RefusalAudit) -> Running {
    let export = Export {
        volume: Arc::new(MemVolume::new(1 << 20)),
        read_only: false,
        description: None,
        allowed_clients: vec!["client1".into()],
    };
    let table: ExportTable = Arc::new(RwLock::new(BTreeMap::from([(
        "guarded".to_owned(),
        export,
    )])));
    run(Server::bind("127.0.0.1:0", table)
        .unwrap()
        .with_refusal_audit(audit))
}

fn table(exports: Vec<(&str, Arc<MemVolume>, bool)>) -> ExportTable {
    let table: BTreeMap<String, Export> = exports
        .into_iter()
        .map(|(name, volume, read_only)| {
            let export = Export {
                volume,
                read_only,
                description: Some(format!("test export {name}")),
                allowed_clients: Vec::new(),
            };
            (name.to_owned(), export)
        })
        .collect();
    Arc::new(RwLock::new(table))
}

/// A client that speaks NBD by hand, over TCP or a Unix socket pair.
struct Client<S = TcpStream> {
    stream: S,
}

#[derive(Debug, PartialEq)]
enum Reply {
    Simple {
        error: u32,
        cookie: u64,
    },
    Chunk {
        flags: u16,
        kind: u16,
        cookie: u64,
        payload: Vec<u8>,
    },
}

impl Reply {
    fn cookie(&self) -> u64 {
        match self {
            Reply::Simple { cookie, .. } | Reply::Chunk { cookie, .. } => *cookie,
        }
    }

    /// The error value: a simple reply's field or an error chunk's first 4 bytes.
    fn error(&self) -> u32 {
        match self {
            Reply::Simple { error, .. } => *error,
            Reply::Chunk { kind, payload, .. } if kind & 0x8000 != 0 => {
                u32::from_be_bytes(payload[0..4].try_into().unwrap())
            }
            Reply::Chunk { .. } => 0,
        }
    }
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client::greeted(stream)
    }
}

impl<S: Read + Write> Client<S> {
    /// Takes the server's greeting on `stream` and answers it.
    fn greeted(stream: S) -> Client<S> {
        let mut client = Client { stream };
        let greeting = client.read_exact(18);
        assert_eq!(greeting, server_greeting());
        client.write(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
        client
    }

    fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf).unwrap();
        buf
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read_exact(4).try_into().unwrap())
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        self.write(
            &OptionHeader {
                option,
                length: data.len() as u32,
            }
            .encode(),
        );
        self.write(data);
    }

    /// One option reply: (type, data).
    fn option_reply(&mut self, option: u32) -> (u32, Vec<u8>) {
        let head = self.read_exact(20);
        assert_eq!(
            u64::from_be_bytes(head[0..8].try_into().unwrap()),
            OPTION_REPLY_MAGIC
        );
        assert_eq!(u32::from_be_bytes(head[8..12].try_into().unwrap()), option);
        let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
        (kind, self.read_exact(len as usize))
    }

    /// Option replies up to and including the final ACK or error.
    fn option_replies(&mut self, option: u32) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let reply = self.option_reply(option);
            let last = reply.0 == REP_ACK || reply.0 & (1 << 31) != 0;
            out.push(reply);
            if last {
                return out;
            }
        }
    }

    fn structured(&mut self) {
        self.option(OPT_STRUCTURED_REPLY, &[]);
        assert_eq!(
            self.option_replies(OPT_STRUCTURED_REPLY),
            vec![(REP_ACK, vec![])]
        );
    }

    fn set_meta(&mut self, export: &str) {
        let mut data = name_data(export);
        data.extend_from_slice(&1u32.to_be_bytes());
        data.extend_from_slice(&name_data(META_BASE_ALLOCATION));
        self.option(OPT_SET_META_CONTEXT, &data);
        let replies = self.option_replies(OPT_SET_META_CONTEXT);
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].0, REP_META_CONTEXT);
    }

    /// `NBD_OPT_GO`; returns (size, transmission flags) or the error reply.
    fn go(&mut self, export: &str) -> Result<(u64, u16), (u32, String)> {
        let mut data = name_data(export);
        data.extend_from_slice(&0u16.to_be_bytes());
        self.option(OPT_GO, &data);
        let mut export_info = None;
        for (kind, data) in self.option_replies(OPT_GO) {
            if kind & (1 << 31) != 0 {
                return Err((kind, String::from_utf8(data).unwrap()));
            }
            if kind == REP_INFO && data[0..2] == INFO_EXPORT.to_be_bytes() {
                let size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                let flags = u16::from_be_bytes(data[10..12].try_into().unwrap());
                export_info = Some((size, flags));
            }
        }
        Ok(export_info.expect("GO succeeded without NBD_INFO_EXPORT"))
    }

    fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, length: u32) {
        self.write(
            &RequestHeader {
                flags,
                kind,
                cookie,
                offset,
                length,
            }
            .encode(),
        );
    }

    /// Reads one reply; `read_len` tells how much data a simple read reply carries.
    fn reply(&mut self, read_len: impl Fn(u64) -> usize) -> (Reply, Vec<u8>) {
        let magic = self.u32();
        if magic == SIMPLE_REPLY_MAGIC {
            let error = self.u32();
            let cookie = u64::from_be_bytes(self.read_exact(8).try_into().unwrap());
            let data = if error == 0 {
                self.read_exact(read_len(cookie))
            } else {
                Vec::new()
            };
            return (Reply::Simple { error, cookie }, data);
        }
        assert_eq!(magic, STRUCTURED_REPLY_MAGIC);
        let head = self.read_exact(16);
        let flags = u16::from_be_bytes(head[0..2].try_into().unwrap());
        let kind = u16::from_be_bytes(head[2..4].try_into().unwrap());
        let cookie = u64::from_be_bytes(head[4..12].try_into().unwrap());
        let len = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let payload = self.read_exact(len as usize);
        (
            Reply::Chunk {
                flags,
                kind,
                cookie,
                payload,
            },
            Vec::new(),
        )
    }

    fn simple(&mut self) -> Reply {
        self.reply(|_| 0).0
    }
}

fn name_data(name: &str) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data
}

fn attached(addr: SocketAddr, export: &str) -> Client {
    let mut client = Client::connect(addr);
    client.go(export).unwrap();
    client
}

#[test]
fn list_info_and_go_report_the_exports() {
    let server = serve(vec![
        ("alpha", Arc::new(MemVolume::new(1 << 20)), false),
        ("beta", Arc::new(MemVolume::new(2 << 20)), true),
    ]);
    let mut client = Client::connect(server.addr);
    client.option(OPT_LIST, &[]);
    let replies = client.option_replies(OPT_LIST);
    let names: Vec<&[u8]> = replies
        .iter()
        .filter(|(kind, _)| *kind == REP_SERVER)
        .map(|(_, data)| &data[4..4 + u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize])
        .collect();
    assert_eq!(names, vec![&b"alpha"[..], &b"beta"[..]]);

    let mut data = name_data("beta");
    data.extend_from_slice(&3u16.to_be_bytes());
    for info in [INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE] {
        data.extend_from_slice(&info.to_be_bytes());
    }
    client.option(OPT_INFO, &data);
    let infos = client.option_replies(OPT_INFO);
    assert_eq!(infos.last().unwrap().0, REP_ACK);
    let by_type: BTreeMap<u16, Vec<u8>> = infos[..infos.len() - 1]
        .iter()
        .map(|(_, d)| (u16::from_be_bytes([d[0], d[1]]), d[2..].to_vec()))
        .collect();
    assert_eq!(by_type[&INFO_EXPORT][0..8], (2u64 << 20).to_be_bytes());
    let flags = u16::from_be_bytes([by_type[&INFO_EXPORT][8], by_type[&INFO_EXPORT][9]]);
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    assert_eq!(flags & FLAG_SEND_TRIM, 0);
    assert_eq!(by_type[&INFO_NAME], b"beta");
    assert_eq!(by_type[&INFO_DESCRIPTION], b"test export beta");
    let mut sizes = Vec::new();
    for i in 0..3 {
        sizes.push(u32::from_be_bytes(
            by_type[&INFO_BLOCK_SIZE][i * 4..i * 4 + 4]
                .try_into()
                .unwrap(),
        ));
    }
    assert_eq!(sizes, vec![1, 4096, MAX_PAYLOAD]);

    // An unknown option is refused and the handshake goes on.
    client.option(99, b"whatever");
    assert_eq!(client.option_replies(99)[0].0, REP_ERR_UNSUP);
    let (size, flags) = client.go("alpha").unwrap();
    assert_eq!(size, 1 << 20);
    let expected = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_TRIM
        | FLAG_SEND_WRITE_ZEROES
        | FLAG_SEND_FAST_ZERO
        | FLAG_SEND_CACHE
        | FLAG_CAN_MULTI_CONN;
    assert_eq!(flags, expected);
    server.stop().unwrap();
}

#[test]
fn unknown_export_and_refused_attach_get_error_replies() {
    let refusing = MemVolume {
        refuse_attach: true,
        ..MemVolume::new(1 << 20)
    };
    let server = serve(vec![("locked", Arc::new(refusing), false)]);
    let mut client = Client::connect(server.addr);
    let (kind, _) = client.go("nope").unwrap_err();
    assert_eq!(kind, REP_ERR_UNKNOWN);
    let (kind, message) = client.go("locked").unwrap_err();
    assert_eq!(kind, REP_ERR_POLICY);
    assert!(message.contains("Disabled"), "{message}");
    client.option(OPT_ABORT, &[]);
    assert_eq!(client.option_reply(OPT_ABORT).0, REP_ACK);
    server.stop().unwrap();
}

/// Every option that names an export for use goes through one admission check, so
/// each refusal reaches the audit hook, metadata-context queries included.
#[test]
fn every_refused_option_is_audited() {
    let audited: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let record = Arc::clone(&audited);
    let server = serve_guarded(Arc::new(move |refusal: &Refusal<'_>| {
        assert!(
            refusal.client.is_none(),
            "a plaintext client has no certificate"
        );
        record
            .lock()
            .unwrap()
            .push((refusal.export.to_owned(), refusal.reason.to_owned()))
    }));
    // A server without TLS cannot serve an export limited to client certificates.
    let reason =
        "this export needs TLS with a client certificate, which this server does not offer";
    let mut client = Client::connect(server.addr);
    client.structured();
    let mut meta_query = name_data("guarded");
    meta_query.extend_from_slice(&1u32.to_be_bytes());
    meta_query.extend_from_slice(&name_data(META_BASE_ALLOCATION));
    for option in [OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT] {
        client.option(option, &meta_query);
        assert_eq!(
            client.option_replies(option),
            vec![(REP_ERR_POLICY, reason.as_bytes().to_vec())]
        );
    }
    let mut info_query = name_data("guarded");
    info_query.extend_from_slice(&0u16.to_be_bytes());
    client.option(OPT_INFO, &info_query);
    assert_eq!(client.option_replies(OPT_INFO)[0].0, REP_ERR_POLICY);
    assert_eq!(
        client.go("guarded"),
        Err((REP_ERR_POLICY, reason.to_owned()))
    );
    // EXPORT_NAME has no error reply: the connection is dropped.
    let mut old_style = Client::connect(server.addr);
    old_style.option(OPT_EXPORT_NAME, b"guarded");
    let mut rest = Vec::new();
    old_style.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "a refused EXPORT_NAME ends the connection");

    let expected = vec![("guarded".to_owned(), reason.to_owned()); 5];
    assert_eq!(*audited.lock().unwrap(), expected, "one record per refusal");
    server.stop().unwrap();
}

/// A client that keeps asking for an export it is refused is cut off after
/// `MAX_REFUSALS_PER_NEGOTIATION` audited refusals: one connection cannot write refusal
/// records for ever. Before the bound, 100 GO options wrote 100 records.
#[test]
fn a_connection_is_closed_after_too_many_refusals() {
    let audited = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&audited);
    let server = serve_guarded(Arc::new(move |_: &Refusal<'_>| {
        count.fetch_add(1, Ordering::SeqCst);
    }));
    let mut client = Client::connect(server.addr);
    // Unknown names are not audited and do not count.
    for _ in 0..2 * MAX_REFUSALS_PER_NEGOTIATION {
        assert_eq!(client.go("nosuch").unwrap_err().0, REP_ERR_UNKNOWN);
    }
    for _ in 0..MAX_REFUSALS_PER_NEGOTIATION {
        assert_eq!(client.go("guarded").unwrap_err().0, REP_ERR_POLICY);
    }
    // The last refusal was answered, then the connection closed: whatever the client
    // sends next gets no reply.
    let mut query = name_data("guarded");
    query.extend_from_slice(&0u16.to_be_bytes());
    let mut bytes = OptionHeader {
        option: OPT_GO,
        length: query.len() as u32,
    }
    .encode()
    .to_vec();
    bytes.extend_from_slice(&query);
    let _ = client.stream.write_all(&bytes);
    let mut rest = Vec::new();
    let _ = client.stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no reply after the bound: {rest:?}");
    assert_eq!(
        audited.load(Ordering::SeqCst),
        MAX_REFUSALS_PER_NEGOTIATION as usize,
        "one record per refusal up to the bound, none after"
    );
    // The server keeps serving others.
    let mut other = Client::connect(server.addr);
    assert_eq!(other.go("nosuch").unwrap_err().0, REP_ERR_UNKNOWN);
    server.stop().unwrap();
}

#[test]
fn export_name_enters_transmission_and_default_name_resolves() {
    let volume = Arc::new(MemVolume::new(1 << 20));
    let server = serve(vec![("default", volume, false)]);
    let mut client = Client::connect(server.addr);
    client.option(OPT_EXPORT_NAME, b"");
    let reply = client.read_exact(10);
    assert_eq!(reply[0..8], (1u64 << 20).to_be_bytes());
    client.request(CMD_WRITE, 0, 1, 0, 3);
    client.write(b"abc");
    assert_eq!(
        client.simple(),
        Reply::Simple {
            error: 0,
            cookie: 1
        }
    );
    client.request(CMD_READ, 0, 2, 0, 3);
    let (reply, data) = client.reply(|_| 3);
    assert_eq!(
        reply,
        Reply::Simple {
            error: 0,
            cookie: 2
        }
    );
    assert_eq!(data, b"abc");
    client.request(CMD_DISC, 0, 3, 0, 0);
    let mut rest = Vec::new();
    client.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "DISC gets no reply");
    server.stop().unwrap();
}

#[test]
fn replies_leave_out_of_order_when_an_earlier_request_is_slow() {
    let volume = Arc::new(MemVolume::new(1 << 20));
    volume.hold_reads_at(0);
    let server = serve(vec![("disk", Arc::clone(&volume), false)]);
    let mut client = attached(server.addr, "disk");
    client.request(CMD_READ, 0, 1, 0, 4096);
    for cookie in 2..40u64 {
        client.request(CMD_WRITE, 0, cookie, cookie * 4096, 4096);
        client.write(&[cookie as u8; 4096]);
    }
    let mut order = Vec::new();
    for _ in 2..40 {
        let reply = client.simple();
        assert_eq!(reply.error(), 0);
        order.push(reply.cookie());
    }
    assert!(
        !order.contains(&1),
        "the held read must not have been answered yet"
    );
    volume.release_reads();
    let (reply, data) = client.reply(|_| 4096);
    assert_eq!(
        reply,
        Reply::Simple {
            error: 0,
            cookie: 1
        }
    );
    assert_eq!(data, vec![0; 4096]);
    order.sort();
    assert_eq!(order, (2..40).collect::<Vec<_>>());
    server.stop().unwrap();
}

#[test]
fn pipelined_small_reads_are_answered_from_the_cache_beside_a_slow_one() {
    for structured in [false, true] {
        let volume = Arc::new(MemVolume::new(1 << 20));
        for (block, data) in volume.data.write().unwrap().chunks_mut(4096).enumerate() {
            data.fill(block as u8 | 0x80);
        }
        volume.hold_reads_at(5 * 4096);
        let server = serve(vec![("disk", Arc::clone(&volume), false)]);
        let mut client = Client::connect(server.addr);
        if structured {
            client.structured();
        }
        client.go("disk").unwrap();
        // One write: the server finds the requests waiting in its buffer.
        let burst: Vec<u8> = (0..64u64)
            .flat_map(|cookie| {
                RequestHeader {
                    flags: 0,
                    kind: CMD_READ,
                    cookie,
                    offset: cookie * 4096,
                    length: 4096,
                }
                .encode()
            })
            .collect();
        client.write(&burst);
        let mut read_one = || match client.reply(|_| 4096) {
            (Reply::Simple { error: 0, cookie }, data) => (cookie, data),
            (
                Reply::Chunk {
                    flags: REPLY_FLAG_DONE,
                    kind: REPLY_TYPE_OFFSET_DATA,
                    cookie,
                    payload,
                },
                _,
            ) => {
                assert_eq!(payload[..8], (cookie * 4096).to_be_bytes());
                (cookie, payload[8..].to_vec())
            }
            other => panic!("{other:?}"),
        };
        let mut answered: Vec<u64> = (0..63)
            .map(|_| {
                let (cookie, data) = read_one();
                assert_eq!(data, vec![cookie as u8 | 0x80; 4096], "cookie {cookie}");
                cookie
            })
            .collect();
        assert!(!answered.contains(&5), "the held read was answered");
        volume.release_reads();
        let (cookie, data) = read_one();
        assert_eq!((cookie, data), (5, vec![0x85; 4096]));
        answered.sort();
        assert_eq!(answered, (0..64).filter(|&c| c != 5).collect::<Vec<_>>());
        assert!(volume.cached_reads.load(Ordering::SeqCst) >= 63);
        server.stop().unwrap();
    }
}

#[test]
fn errors_get_spec_answers_and_the_connection_goes_on() {
    let server = serve(vec![
        ("disk", Arc::new(MemVolume::new(1 << 20)), false),
        ("ro", Arc::new(MemVolume::new(1 << 20)), true),
    ]);
    let mut client = attached(server.addr, "disk");
    let end = 1u64 << 20;
    client.request(CMD_READ, 0, 1, end - 1, 2);
    assert_eq!(
        client.simple(),
        Reply::Simple {
            error: 22,
            cookie: 1
        }
    );
    // A write past the end: ENOSPC, and its payload is drained.
    client.request(CMD_WRITE, 0, 2, end, 512);
    client.write(&[0xAA; 512]);
    assert_eq!(
        client.simple(),
        Reply::Simple {
            error: 28,
            cookie: 2
        }
    );
    client.request(CMD_TRIM, 0, 3, end, 4096);
    assert_eq!(
        client.simple(),
        Reply::Simple {
            error: 22,
            cookie: 3
        }
    );
    client.request(77, 0, 4, 0, 512);
    assert_eq!(
        client.simple(),
        Reply::Simple {
            error: 22,
            cookie: 4
        }
    );
    client.request(CMD_WRITE, CMD_FLAG_REQ_ONE, 5, 0, 4);
    client.write(b"xxxx");
    assert_eq!(
        client.simple(),
        Reply::Simple {
            error: 22,
            cookie: 5
        }
    );
    // An oversize write is drained and refused.
    client.request(CMD_WRITE, 0, 6, 0, MAX_PAYLOAD + 1);
    client.write(&vec![0x55; MAX_PAYLOAD as usize + 1]);
    assert_eq!(
        client.simple(),
        Reply::Simple {
            error: 75,
            cookie: 6
        }
    );
    client.request(
        CMD_WRITE_ZEROES,
        CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE,
        7,
        0,
        4096,
    );
    assert_eq!(
        client.simple(),
        Reply::Simple {
            error: 95,
            cookie: 7
        }
    );
    client.request(CMD_BLOCK_STATUS, 0, 8, 0, 4096);
    assert_eq!(
        client.simple(),
        Reply::Simple {
            error: 22,
            cookie: 8
        }
    );
    // Still serving, and the drained payloads never reached the volume.
    client.request(CMD_READ, 0, 9, 0, 4);
    let (reply, data) = client.reply(|_| 4);
    assert_eq!(reply.error(), 0);
    assert_eq!(data, vec![0; 4]);

    let mut ro = attached(server.addr, "ro");
    ro.request(CMD_WRITE, 0, 1, 0, 4);
    ro.write(b"nope");
    assert_eq!(
        ro.simple(),
        Reply::Simple {
            error: 1,
            cookie: 1
        }
    );
    ro.request(CMD_TRIM, 0, 2, 0, 4096);
    assert_eq!(
        ro.simple(),
        Reply::Simple {
            error: 1,
            cookie: 2
        }
    );
    server.stop().unwrap();
}

#[test]
fn structured_reads_block_status_and_errors_carry_messages() {
    let volume = Arc::new(MemVolume::new(1 << 20));
    let server = serve(vec![("disk", Arc::clone(&volume), false)]);
    let mut client = Client::connect(server.addr);
    client.structured();
    client.set_meta("disk");
    let (_, flags) = client.go("disk").unwrap();
    assert_ne!(flags & FLAG_SEND_DF, 0);

    client.request(CMD_WRITE, CMD_FLAG_FUA, 1, 8192, 4096);
    client.write(&[7u8; 4096]);
    assert_eq!(client.simple().error(), 0);
    assert!(volume.flushes.load(Ordering::SeqCst) >= 1, "FUA flushes");

    client.request(CMD_READ, CMD_FLAG_DF, 2, 8192, 4096);
    let (reply, _) = client.reply(|_| 0);
    let Reply::Chunk {
        flags,
        kind,
        cookie: 2,
        payload,
    } = reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!((flags, kind), (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA));
    assert_eq!(payload[0..8], 8192u64.to_be_bytes());
    assert_eq!(&payload[8..], &[7u8; 4096][..]);

    client.request(CMD_READ, 0, 3, 0, 4096);
    let (reply, _) = client.reply(|_| 0);
    let Reply::Chunk { kind, payload, .. } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(kind, REPLY_TYPE_OFFSET_HOLE);
    assert_eq!(
        payload,
        [&0u64.to_be_bytes()[..], &4096u32.to_be_bytes()].concat()
    );

    client.request(CMD_BLOCK_STATUS, 0, 4, 0, 16384);
    let (reply, _) = client.reply(|_| 0);
    let Reply::Chunk { kind, payload, .. } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(kind, REPLY_TYPE_BLOCK_STATUS);
    let words: Vec<u32> = payload
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect();
    let hole = STATE_HOLE | STATE_ZERO;
    assert_eq!(
        words,
        vec![META_BASE_ALLOCATION_ID, 8192, hole, 4096, 0, 4096, hole]
    );

    client.request(CMD_TRIM, 0, 5, 8192, 4096);
    assert_eq!(client.simple().error(), 0);
    client.request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 6, 0, 16384);
    let (reply, _) = client.reply(|_| 0);
    let Reply::Chunk { payload, .. } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(payload.len(), 12, "REQ_ONE gives one descriptor");

    client.request(CMD_READ, 0, 7, (1 << 20) - 1, 2);
    let (reply, _) = client.reply(|_| 0);
    assert_eq!(reply.error(), 22);
    let Reply::Chunk { flags, payload, .. } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(flags, REPLY_FLAG_DONE);
    let message = String::from_utf8(payload[6..].to_vec()).unwrap();
    assert!(message.contains("outside the volume"), "{message}");
    server.stop().unwrap();
}

#[test]
fn a_client_breaking_the_protocol_does_not_affect_others() {
    let server = serve(vec![("disk", Arc::new(MemVolume::new(1 << 20)), false)]);
    let mut good = attached(server.addr, "disk");
    let mut bad = attached(server.addr, "disk");
    bad.write(&[0xde, 0xad, 0xbe, 0xef]);
    bad.write(&[0u8; 24]);
    let mut rest = Vec::new();
    bad.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bad magic drops the connection");

    let mut half = Client::connect(server.addr);
    half.write(
        &OptionHeader {
            option: OPT_GO,
            length: 1000,
        }
        .encode(),
    );
    drop(half);

    good.request(CMD_WRITE, 0, 1, 0, 5);
    good.write(b"still");
    assert_eq!(good.simple().error(), 0);
    let mut other = attached(server.addr, "disk");
    other.request(CMD_READ, 0, 2, 0, 5);
    let (_, data) = other.reply(|_| 5);
    assert_eq!(data, b"still");
    server.stop().unwrap();
}

#[test]
fn shutdown_finishes_in_flight_requests_and_flushes() {
    let volume = Arc::new(MemVolume::new(1 << 20));
    volume.hold_reads_at(4096);
    let server = serve(vec![("disk", Arc::clone(&volume), false)]);
    let mut client = attached(server.addr, "disk");
    client.request(CMD_READ, 0, 1, 4096, 4096);
    assert_eq!(volume.flushes.load(Ordering::SeqCst), 0);
    // Once the read waits in the volume, ask the server to stop; once it no longer
    // listens (it drops the listener before ending the connections' reads), let the
    // read finish.
    volume.wait_for_held_reads(1);
    let handle = server.shutdown.clone();
    let stopper = thread::spawn(move || handle.shutdown());
    stopper.join().unwrap();
    while TcpStream::connect(server.addr).is_ok() {
        thread::yield_now();
    }
    volume.release_reads();
    let (reply, _) = client.reply(|_| 4096);
    assert_eq!(
        reply,
        Reply::Simple {
            error: 0,
            cookie: 1
        }
    );
    server.thread.join().unwrap().unwrap();
    assert_eq!(
        volume.flushes.load(Ordering::SeqCst),
        1,
        "run flushes on shutdown"
    );
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "no longer listening"
    );
}

/// Whether `name` is installed. Without it the test is skipped with one line on
/// stderr, unless `ATREST_REQUIRE_SYSTEM_TESTS=1` (the README's test command) makes
/// a missing tool a failure.
fn require_tool(name: &str) -> bool {
    let found = Process::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if found {
        return true;
    }
    assert!(
        std::env::var("ATREST_REQUIRE_SYSTEM_TESTS").as_deref() != Ok("1"),
        "{name} is required (run scripts/install-test-deps.sh)"
    );
    // Straight to the process's stderr: the harness would swallow `eprintln!` of a
    // passing test.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {name} is not installed (run scripts/install-test-deps.sh)"
    );
    false
}

#[test]
fn nbdinfo_reads_the_handshake() {
    if !require_tool("nbdinfo") {
        return;
    }
    let server = serve(vec![("disk", Arc::new(MemVolume::new(3 << 20)), false)]);
    let out = Process::new("nbdinfo")
        .args(["--json", &format!("nbd://{}/disk", server.addr)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let export = &json["exports"][0];
    assert_eq!(export["export-name"], "disk");
    assert_eq!(export["export-size"], 3 << 20);
    assert_eq!(export["can_multi_conn"], true);
    assert_eq!(export["can_trim"], true);
    assert_eq!(export["block_size_preferred"], 4096);
    assert_eq!(json["protocol"], "newstyle-fixed");
    assert_eq!(export["contexts"][0], META_BASE_ALLOCATION);
    server.stop().unwrap();
}

#[test]
fn a_flood_of_requests_is_throttled_not_dropped() {
    let volume = Arc::new(MemVolume::new(1 << 20));
    volume.hold_reads_at(0);
    let server = serve(vec![("disk", Arc::clone(&volume), false)]);
    let mut client = attached(server.addr, "disk");
    // More than the server keeps in flight per connection: it stops reading until
    // the held reads finish, and then answers every one.
    let writer = client.stream.try_clone().unwrap();
    let flood = thread::spawn(move || {
        let mut writer = writer;
        for cookie in 0..400u64 {
            let header = RequestHeader {
                flags: 0,
                kind: CMD_READ,
                cookie,
                offset: 0,
                length: 512,
            };
            writer.write_all(&header.encode()).unwrap();
        }
    });
    // The server runs at least 8 requests of a connection at once: it has taken in
    // as many as it runs before the held reads are let go.
    volume.wait_for_held_reads(8);
    flood.join().unwrap();
    volume.release_reads();
    let mut cookies: Vec<u64> = (0..400).map(|_| client.reply(|_| 512).0.cookie()).collect();
    cookies.sort();
    assert_eq!(cookies, (0..400).collect::<Vec<_>>());
    server.stop().unwrap();
}

#[test]
fn many_clients_at_once_each_read_back_their_own_writes() {
    let server = serve(vec![("disk", Arc::new(MemVolume::new(16 << 20)), false)]);
    let addr = server.addr;
    let clients: Vec<_> = (0..16u64)
        .map(|id| {
            thread::spawn(move || {
                let mut client = attached(addr, "disk");
                let base = id << 20;
                // Pipelined: every write goes out before any reply is read.
                for i in 0..64u64 {
                    client.request(CMD_WRITE, 0, i, base + i * 4096, 4096);
                    client.write(&[(id * 64 + i) as u8; 4096]);
                }
                for _ in 0..64 {
                    assert_eq!(client.simple().error(), 0);
                }
                for i in 0..64u64 {
                    client.request(CMD_READ, 0, 100 + i, base + i * 4096, 4096);
                }
                for _ in 0..64 {
                    let (reply, data) = client.reply(|_| 4096);
                    let i = reply.cookie() - 100;
                    assert_eq!(
                        data,
                        vec![(id * 64 + i) as u8; 4096],
                        "client {id} block {i}"
                    );
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    server.stop().unwrap();
}

/// Write payloads are read past the connection's buffer when large (and so is the next
/// header): pipelined writes of every size class, sent in pieces that split headers and
/// payloads anywhere (short reads on the server's side), must each land whole, in
/// place, and a FUA write must flush.
#[test]
fn pipelined_writes_of_any_size_land_whole_however_the_stream_is_split() {
    const SIZE: u64 = 8 << 20;
    let volume = Arc::new(MemVolume::new(SIZE));
    let server = serve(vec![("disk", Arc::clone(&volume), false)]);
    let mut client = attached(server.addr, "disk");
    client.stream.set_nodelay(true).unwrap();
    // (offset, length, flags): more than the server's kept 1 MiB buffer, exactly it,
    // just above and below the direct-read threshold (64 KiB), small ones after large
    // ones and the reverse, unaligned ones.
    let writes: [(u64, usize, u16); 9] = [
        (0, (1 << 20) + 4096, 0),
        (2 << 20, 1 << 20, CMD_FLAG_FUA),
        (4 << 20, 4096, 0),
        ((4 << 20) + 8192, 64 << 10, 0),
        ((5 << 20) + 3, (64 << 10) - 1, 0),
        ((5 << 20) + 70_001, 100, 0),
        (6 << 20, 300_000, 0),
        ((7 << 20) + 17, 70_000, 0),
        ((7 << 20) + 100_000, 28, 0),
    ];
    let mut model = vec![0u8; SIZE as usize];
    let mut stream = Vec::new();
    for (i, &(offset, len, flags)) in writes.iter().enumerate() {
        let data: Vec<u8> = (0..len)
            .map(|j| (j as u8).wrapping_mul(13).wrapping_add(i as u8) | 1)
            .collect();
        stream.extend_from_slice(
            &RequestHeader {
                flags,
                kind: CMD_WRITE,
                cookie: i as u64,
                offset,
                length: len as u32,
            }
            .encode(),
        );
        stream.extend_from_slice(&data);
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
    }
    let flushes_before = volume.flushes.load(Ordering::SeqCst);
    // Piece sizes that cut headers (28 bytes) and payloads at ever different places;
    // a pause after some so the server finds the socket empty mid-request.
    let pieces = [1usize, 27, 4093, 65_537, 5, 300_001, 28, 1 << 20, 77];
    let mut at = 0;
    for (n, piece) in pieces.iter().cycle().enumerate() {
        if at == stream.len() {
            break;
        }
        let end = (at + piece).min(stream.len());
        client.write(&stream[at..end]);
        at = end;
        if n % 3 == 0 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    let mut cookies: Vec<u64> = (0..writes.len())
        .map(|_| {
            let reply = client.simple();
            assert_eq!(reply.error(), 0, "{reply:?}");
            reply.cookie()
        })
        .collect();
    cookies.sort_unstable();
    assert_eq!(cookies, (0..writes.len() as u64).collect::<Vec<_>>());
    assert!(
        volume.flushes.load(Ordering::SeqCst) > flushes_before,
        "the FUA write flushed"
    );
    assert!(
        *volume.data.read().unwrap() == model,
        "volume differs from the model"
    );
    // The connection still parses requests after all that: a read of a written range.
    client.request(CMD_READ, 0, 99, (7 << 20) + 17, 70_000);
    let (reply, data) = client.reply(|_| 70_000);
    assert_eq!(reply.error(), 0);
    assert!(data[..] == model[(7 << 20) + 17..(7 << 20) + 70_017]);
    server.stop().unwrap();
}

/// A client that stops in the middle of a large write's payload (read straight from
/// the socket) gets nothing written: the connection ends, the volume is as it was, and
/// the server goes on serving others.
#[test]
fn a_large_write_cut_short_writes_nothing_and_others_go_on() {
    let volume = Arc::new(MemVolume::new(4 << 20));
    let server = serve(vec![("disk", Arc::clone(&volume), false)]);
    let mut cut = attached(server.addr, "disk");
    cut.request(CMD_WRITE, 0, 1, 0, 1 << 20);
    cut.write(&[0x5a; 300_000]);
    cut.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    cut.stream.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "no reply to a write that never arrived whole"
    );
    assert!(volume.data.read().unwrap().iter().all(|&b| b == 0));

    let mut other = attached(server.addr, "disk");
    other.request(CMD_WRITE, 0, 2, 4096, 1 << 20);
    other.write(&vec![0xa5; 1 << 20]);
    assert_eq!(other.simple().error(), 0);
    other.request(CMD_READ, 0, 3, 4096, 8);
    let (_, data) = other.reply(|_| 8);
    assert_eq!(data, [0xa5; 8]);
    server.stop().unwrap();
}

/// One end of a socket pair, with a read timeout so a server that does not answer
/// fails the test instead of hanging it; and the other end, for the server.
fn socket_pair() -> (UnixStream, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (ours, theirs)
}

#[test]
fn a_socket_pair_is_served_like_a_tcp_connection() {
    let volume = Arc::new(MemVolume::new(1 << 20));
    // Bound, never running: the connection comes through serve_stream.
    let server = Server::bind(
        "127.0.0.1:0",
        table(vec![("disk", Arc::clone(&volume), false)]),
    )
    .unwrap();
    let (ours, theirs) = socket_pair();
    thread::scope(|scope| {
        let served = scope.spawn(|| server.serve_stream(theirs));
        let mut client = Client::greeted(ours);
        client.structured();
        // The same admission as over TCP: an unknown export is refused, and the
        // connection goes on.
        let (kind, _) = client.go("nope").unwrap_err();
        assert_eq!(kind, REP_ERR_UNKNOWN);
        let (size, flags) = client.go("disk").unwrap();
        assert_eq!(size, 1 << 20);
        assert_eq!(flags & FLAG_READ_ONLY, 0);
        let written: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        client.request(CMD_WRITE, 0, 1, 4096, 4096);
        client.write(&written);
        assert_eq!(client.simple().error(), 0);
        assert_eq!(volume.data.read().unwrap()[4096..8192], written[..]);
        // Structured replies were negotiated: the read comes back as a data chunk.
        client.request(CMD_READ, 0, 2, 4096, 4096);
        let (reply, _) = client.reply(|_| 0);
        let Reply::Chunk {
            flags,
            kind,
            cookie: 2,
            payload,
        } = reply
        else {
            panic!("a structured read reply, got {reply:?}");
        };
        assert_eq!((flags, kind), (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA));
        assert_eq!(payload[..8], 4096u64.to_be_bytes());
        assert_eq!(payload[8..], written[..]);
        // Out of range: the spec's EINVAL, and the connection goes on.
        client.request(CMD_READ, 0, 3, 1 << 20, 1);
        let (reply, _) = client.reply(|_| 0);
        assert_eq!(reply.error(), Errno::Inval.code());
        client.request(CMD_DISC, 0, 4, 0, 0);
        let mut rest = Vec::new();
        client.stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "DISC gets no reply");
        served.join().unwrap().unwrap();
    });
}

#[test]
fn a_stream_client_breaking_the_protocol_gets_an_error_and_the_server_goes_on() {
    let volume = Arc::new(MemVolume::new(1 << 20));
    let server = Server::bind(
        "127.0.0.1:0",
        table(vec![("disk", Arc::clone(&volume), false)]),
    )
    .unwrap();
    let (mut ours, theirs) = socket_pair();
    thread::scope(|scope| {
        let served = scope.spawn(|| server.serve_stream(theirs));
        let mut greeting = [0u8; 18];
        ours.read_exact(&mut greeting).unwrap();
        // Client flags the server does not know.
        ours.write_all(&0xffff_ffffu32.to_be_bytes()).unwrap();
        let err = served.join().unwrap().unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
    });
    // A client that hangs up mid-handshake.
    let (ours, theirs) = socket_pair();
    drop(ours);
    let err = server.serve_stream(theirs).unwrap_err();
    assert!(matches!(&err, Error::Io { .. }), "{err}");
    // The same server serves the next stream.
    let (ours, theirs) = socket_pair();
    thread::scope(|scope| {
        let served = scope.spawn(|| server.serve_stream(theirs));
        let mut client = Client::greeted(ours);
        client.go("disk").unwrap();
        client.request(CMD_DISC, 0, 1, 0, 0);
        served.join().unwrap().unwrap();
    });
}

#[test]
fn stream_connections_end_on_a_volume_swap_and_after_shutdown() {
    let volume = Arc::new(MemVolume::new(1 << 20));
    let server = Server::bind(
        "127.0.0.1:0",
        table(vec![("disk", Arc::clone(&volume), false)]),
    )
    .unwrap();
    let handle = server.shutdown_handle();
    let swapped: Arc<dyn Volume> = Arc::clone(&volume) as Arc<dyn Volume>;
    let (ours, theirs) = socket_pair();
    thread::scope(|scope| {
        let served = scope.spawn(|| server.serve_stream(theirs));
        let mut client = Client::greeted(ours);
        client.go("disk").unwrap();
        // A reply means the transmission phase runs, so the attach is registered.
        client.request(CMD_FLUSH, 0, 1, 0, 0);
        assert_eq!(client.simple().error(), 0);
        assert_eq!(handle.disconnect_clients_of(&swapped), 1);
        // Reads end: the server closes the connection.
        let mut rest = Vec::new();
        client.stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        served.join().unwrap().unwrap();
    });
    assert_eq!(handle.disconnect_clients_of(&swapped), 0, "unregistered");
    handle.shutdown();
    let (_ours, theirs) = socket_pair();
    let err = server.serve_stream(theirs).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::ConnectionAborted),
        "{err}"
    );
}

/// Serves one stream connection to `server` on another thread while `client` runs
/// on this one (greeted, negotiated by `client` itself); returns how it ended.
fn over_a_stream<T>(
    server: &Server,
    client: impl FnOnce(Client<UnixStream>) -> T,
) -> (T, Result<(), Error>) {
    let (ours, theirs) = socket_pair();
    thread::scope(|scope| {
        let served = scope.spawn(|| server.serve_stream(theirs));
        let out = client(Client::greeted(ours));
        (out, served.join().unwrap())
    })
}

/// A read's data, as a simple reply (no structured replies negotiated: the data
/// goes out as it is in the server's buffer, zeros or not).
fn simple_read(client: &mut Client<UnixStream>, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    client.request(CMD_READ, 0, cookie, offset, length);
    let (reply, data) = client.reply(|_| length as usize);
    assert_eq!(reply, Reply::Simple { error: 0, cookie });
    data
}

#[test]
fn a_connection_never_gets_the_previous_connections_data_from_a_reused_buffer() {
    // A volume that leaves a hole read's buffer as it was: what the client then gets
    // is whatever the server's buffer held before.
    let volume = Arc::new(MemVolume::new(1 << 20));
    volume.lazy_holes.store(true, Ordering::SeqCst);
    // One transmission thread: each connection's reads run on the handshake thread,
    // with the buffers the previous connection's thread gave back.
    let server = Server::bind(
        "127.0.0.1:0",
        table(vec![("disk", Arc::clone(&volume), false)]),
    )
    .unwrap()
    .with_threads_per_connection(1);
    let secret: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8 | 1).collect();
    for round in 0..50u64 {
        let ((), served) = over_a_stream(&server, |mut client| {
            client.go("disk").unwrap();
            // This connection's data: written, then read back (into the server's
            // kept read buffer), in a block of its own.
            let at = (round % 8) * 64 * 1024;
            client.request(CMD_WRITE, 0, 1, at, secret.len() as u32);
            client.write(&secret);
            assert_eq!(client.simple().error(), 0);
            assert_eq!(simple_read(&mut client, 2, at, secret.len() as u32), secret);
            client.request(CMD_DISC, 0, 3, 0, 0);
        });
        served.unwrap();
        // The next connection reads a hole: zeros, never the bytes above.
        let ((), served) = over_a_stream(&server, |mut client| {
            client.go("disk").unwrap();
            let hole = simple_read(&mut client, 1, 768 * 1024, 64 * 1024);
            assert!(
                hole.iter().all(|&b| b == 0),
                "round {round}: a hole read gave another connection's data"
            );
            client.request(CMD_DISC, 0, 2, 0, 0);
        });
        served.unwrap();
    }
}

#[test]
fn connections_after_one_that_broke_the_protocol_are_served_whole() {
    let volume = Arc::new(MemVolume::new(1 << 20));
    volume.lazy_holes.store(true, Ordering::SeqCst);
    let server = Server::bind(
        "127.0.0.1:0",
        table(vec![("disk", Arc::clone(&volume), false)]),
    )
    .unwrap()
    .with_threads_per_connection(2);
    let data: Vec<u8> = (0..32 * 1024u32).map(|i| (i * 13) as u8 | 1).collect();
    for round in 0..20u64 {
        // Data through both threads' buffers, then a request with a bad magic: the
        // connection ends with a protocol error, its threads with it.
        let ((), served) = over_a_stream(&server, |mut client| {
            client.go("disk").unwrap();
            for cookie in 1..=4 {
                client.request(CMD_WRITE, 0, cookie, 0, data.len() as u32);
                client.write(&data);
                assert_eq!(client.simple().error(), 0);
                assert_eq!(simple_read(&mut client, 10 + cookie, 0, 32 * 1024), data);
            }
            client.write(&[0xff; 28]);
            let mut rest = Vec::new();
            let _ = client.stream.read_to_end(&mut rest);
        });
        assert!(
            matches!(served, Err(Error::Protocol(_))),
            "round {round}: {served:?}"
        );
        // The next connection is served as a first one would be: its first reads
        // (of holes, on either thread) are zeros, its writes land, and it ends
        // cleanly.
        let ((), served) = over_a_stream(&server, |mut client| {
            client.go("disk").unwrap();
            for cookie in 1..=2 {
                let hole = simple_read(&mut client, cookie, 512 * 1024, 32 * 1024);
                assert!(hole.iter().all(|&b| b == 0), "round {round}: stale bytes");
            }
            let at = 64 * 1024 + round * 4096;
            client.request(CMD_WRITE, 0, 3, at, 4096);
            client.write(&data[..4096]);
            assert_eq!(client.simple().error(), 0);
            assert_eq!(simple_read(&mut client, 5, at, 4096), data[..4096]);
            client.request(CMD_DISC, 0, 4, 0, 0);
        });
        served.unwrap();
    }
}
