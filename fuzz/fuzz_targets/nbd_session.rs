//! The NBD server as a whole, fed by the fuzzer: one client connection per input,
//! against a server on the loopback interface that serves a 1 MiB encrypted volume
//! (`fuzz`, writable) and a 64 KiB raw one (`ro`, read-only). Whatever the client
//! sends, the server neither panics (a panic in any server thread aborts the run)
//! nor hangs: once the client stops sending, the server closes the connection.
//!
//! The first input byte picks the mode. Bit 0: a canned handshake (fixed newstyle,
//! structured replies, base:allocation, GO to `fuzz`) comes first, so the rest
//! starts in transmission. Bit 1: the rest is a compact request program (see
//! [`requests`]) turned into well-formed requests, so the fuzzer spends its time on
//! commands, flags, ranges and ordering rather than on magic numbers; otherwise the
//! rest is sent as it is.
#![no_main]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use atrest_fuzz::{scratch_dir, Input};
use blockdev::nbd::proto::{
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, IHAVEOPT, OPT_GO, OPT_SET_META_CONTEXT,
    OPT_STRUCTURED_REPLY, REQUEST_MAGIC,
};
use blockdev::nbd::{Export, Server};
use blockdev::volume::{self, NewVolumeKey};
use crypto_core::kms::{CreateKeyRequest, KeyService, LocalKms, LocalKmsConfig};
use libfuzzer_sys::fuzz_target;

/// Long enough for any request the 1 MiB export allows; a server that has not closed
/// the connection by then is hung.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(20);

fn server() -> SocketAddr {
    static SERVER: OnceLock<(tempfile::TempDir, SocketAddr)> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let scratch = scratch_dir("nbd");
            let home = scratch.path().join("home");
            let kms = LocalKms::open(&home, LocalKmsConfig::new()).expect("key service");
            let key = kms
                .create_key(&CreateKeyRequest::default())
                .expect("a CMK")
                .arn;
            let encrypted = scratch.path().join("fuzz.vol");
            let raw = scratch.path().join("ro.vol");
            volume::create(
                &encrypted,
                1 << 20,
                NewVolumeKey::Kms {
                    kms: &kms,
                    key_id: &key,
                },
            )
            .expect("encrypted volume");
            volume::create(&raw, 64 << 10, NewVolumeKey::Unencrypted).expect("raw volume");
            let mut exports = BTreeMap::new();
            for (name, path, read_only) in [("fuzz", &encrypted, false), ("ro", &raw, true)] {
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
            let server = Server::bind("127.0.0.1:0", Arc::new(RwLock::new(exports))).expect("bind");
            let addr = server.local_addr();
            std::thread::spawn(move || server.run());
            (scratch, addr)
        })
        .1
}

fn option(out: &mut Vec<u8>, code: u32, data: &[u8]) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn handshake(out: &mut Vec<u8>) {
    out.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
    option(out, OPT_STRUCTURED_REPLY, &[]);
    let mut meta = Vec::new();
    meta.extend_from_slice(&4u32.to_be_bytes());
    meta.extend_from_slice(b"fuzz");
    meta.extend_from_slice(&1u32.to_be_bytes());
    meta.extend_from_slice(&15u32.to_be_bytes());
    meta.extend_from_slice(b"base:allocation");
    option(out, OPT_SET_META_CONTEXT, &meta);
    let mut go = Vec::new();
    go.extend_from_slice(&4u32.to_be_bytes());
    go.extend_from_slice(b"fuzz");
    go.extend_from_slice(&0u16.to_be_bytes());
    option(out, OPT_GO, &go);
}

/// Each request is 7 or 8 program bytes: command (low 3 bits, so mostly valid ones),
/// flags, offset in 16-byte units (u16: all of the 1 MiB export and a little past
/// it), length in 16-byte units (u16; 0 means a length of 0..=255 bytes from the next
/// byte), and the cookie's low byte. Writes carry a payload of the request's length.
fn requests(out: &mut Vec<u8>, program: &mut Input<'_>) {
    while !program.is_empty() && out.len() < 4 << 20 {
        let command = u16::from(program.u8() & 7);
        let flags = u16::from(program.u8() & 0x1f);
        let offset = u64::from(program.u16()) * 16;
        let length = match program.u16() {
            0 => u32::from(program.u8()),
            units => u32::from(units) * 16,
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

fuzz_target!(|data: &[u8]| {
    let addr = server();
    let mut program = Input::new(data);
    let mode = program.u8();
    let mut bytes = Vec::new();
    if mode & 1 != 0 {
        handshake(&mut bytes);
    }
    if mode & 2 != 0 {
        requests(&mut bytes, &mut program);
    } else {
        bytes.extend_from_slice(program.rest());
    }
    let mut stream = TcpStream::connect(addr).expect("connect to the fuzz server");
    stream
        .set_read_timeout(Some(CLOSE_TIMEOUT))
        .expect("read timeout");
    let writer_stream = stream.try_clone().expect("clone socket");
    // Write from another thread: the server may answer more than the socket buffers
    // hold before it has read everything we send.
    let writer = std::thread::spawn(move || {
        let mut writer_stream = writer_stream;
        // The server may close early (bad magic, a protocol error): not a failure.
        let _ = writer_stream.write_all(&bytes);
        let _ = writer_stream.shutdown(Shutdown::Write);
    });
    let mut sink = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            // libFuzzer's SIGALRM (its -timeout watchdog) interrupts blocking reads.
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => panic!("the server did not close the connection: {err}"),
        }
    }
    writer.join().expect("writer thread");
});
