//! The record layer of [`super::connection::TlsStream`] against rustls's client: data
//! across many records, KeyUpdates both ways, close_notify, and records a client may
//! not send.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::record::{self, TrafficKey, HEADER_LEN, MAX_PLAINTEXT};
use super::*;
use crate::nbd::transmission::Wire;

struct Pki {
    _dir: tempfile::TempDir,
    settings: TlsSettings,
    roots: Arc<RootCertStore>,
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let made = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(made.status.success(), "openssl {args:?}: {made:?}");
}

/// A CA and a server certificate for 127.0.0.1 from it (openssl; webpki refuses a
/// self-signed certificate as its own anchor), and the server settings.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca-key.pem", "-out", "ca.pem"]);
    openssl(&ca, dir.path());
    let mut request = vec![
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "req.pem",
    ];
    request.extend(ec);
    openssl(&request, dir.path());
    std::fs::write(dir.path().join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "req.pem",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
        dir.path(),
    );
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let settings =
        TlsSettings::from_pem_files(&cert, &key, None, TlsMode::Require, &TlsCiphers::default())
            .unwrap();
    let mut roots = RootCertStore::empty();
    for c in read_certificates(&dir.path().join("ca.pem"), "test").unwrap() {
        roots.add(c).unwrap();
    }
    Pki {
        _dir: dir,
        settings,
        roots: Arc::new(roots),
    }
}

fn client_config(pki: &Pki, extract_secrets: bool) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(Arc::clone(&pki.roots))
        .with_no_client_auth();
    config.enable_secret_extraction = extract_secrets;
    Arc::new(config)
}

/// A server session on a fresh loopback connection, `serve` run on it in a thread;
/// the client's socket.
fn session<T: Send + 'static>(
    pki: &Pki,
    max_records: u64,
    serve: impl FnOnce(TlsStream) -> T + Send + 'static,
) -> (TcpStream, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = pki.settings.clone();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let session = accept_with_limit(&settings, tcp, &[], max_records).unwrap();
        serve(session.stream)
    });
    (TcpStream::connect(addr).unwrap(), server)
}

fn tls_client(pki: &Pki, tcp: TcpStream) -> StreamOwned<ClientConnection, TcpStream> {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    StreamOwned::new(
        ClientConnection::new(client_config(pki, false), name).unwrap(),
        tcp,
    )
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_32_mib_reply_and_a_32_mib_payload_cross_intact() {
    let pki = pki();
    let data = Arc::new(pseudo_random(32 << 20, 1));
    let sent = Arc::clone(&data);
    let (tcp, server) = session(&pki, u64::MAX, move |mut stream| {
        stream
            .write_parts(&[&b"reply header"[..], &sent[..], &[]])
            .unwrap();
        let mut payload = vec![0u8; sent.len()];
        stream.read_exact(&mut payload).unwrap();
        payload
    });
    let mut client = tls_client(&pki, tcp);
    let mut reply = vec![0u8; 12 + data.len()];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..12], b"reply header");
    assert!(reply[12..] == data[..], "the 32 MiB reply differs");
    client.write_all(&data).unwrap();
    client.flush().unwrap();
    let payload = server.join().unwrap();
    assert!(payload == data[..], "the 32 MiB payload differs");
}

#[test]
fn a_key_update_from_the_client_is_followed_and_answered() {
    let pki = pki();
    let (tcp, server) = session(&pki, u64::MAX, |mut stream| {
        let mut ping = [0u8; 10];
        stream.read_exact(&mut ping).unwrap();
        let before = stream.sequence_numbers();
        stream.write_all(b"pong").unwrap();
        (ping, before, stream.sequence_numbers())
    });
    let mut client = tls_client(&pki, tcp);
    client.write_all(b"ping1").unwrap();
    client.flush().unwrap();
    client.conn.refresh_traffic_keys().unwrap();
    client.write_all(b"ping2").unwrap();
    client.flush().unwrap();
    let mut pong = [0u8; 4];
    client.read_exact(&mut pong).unwrap();
    let (ping, (_, rx_before), (tx_after, _)) = server.join().unwrap();
    assert_eq!(&ping, b"ping1ping2");
    assert_eq!(&pong, b"pong");
    // The client's key restarted at its KeyUpdate: ping2 is record 0 of the new key.
    assert_eq!(rx_before, 1);
    // The server answered with a KeyUpdate of its own before pong (record 0).
    assert_eq!(tx_after, 1);
}

#[test]
fn keys_are_updated_before_the_limit_in_both_directions() {
    let pki = pki();
    let big = Arc::new(pseudo_random(1 << 20, 2));
    let sent = Arc::clone(&big);
    let (tcp, server) = session(&pki, 8, move |mut stream| {
        stream.write_parts(&[&sent[..]]).unwrap();
        let mut echoed = 0;
        let mut message = [0u8; 1000];
        while stream.read_exact(&mut message).is_ok() {
            stream.write_all(&message).unwrap();
            echoed += 1;
        }
        (echoed, stream.sequence_numbers())
    });
    let mut client = tls_client(&pki, tcp);
    let mut reply = vec![0u8; big.len()];
    client.read_exact(&mut reply).unwrap();
    assert!(reply == big[..], "the reply across key updates differs");
    for round in 0..50u8 {
        let message = [round; 1000];
        client.write_all(&message).unwrap();
        let mut echo = [0u8; 1000];
        client.read_exact(&mut echo).unwrap();
        assert_eq!(echo, message, "round {round}");
    }
    client.conn.send_close_notify();
    client.flush().unwrap();
    let (echoed, (tx, rx)) = server.join().unwrap();
    assert_eq!(echoed, 50);
    assert!(
        tx < 8 && rx < 8,
        "sequence numbers {tx}, {rx} past the limit"
    );
}

#[test]
fn close_notify_ends_the_stream_cleanly_both_ways() {
    let pki = pki();
    let (tcp, server) = session(&pki, u64::MAX, |mut stream| {
        let mut all = Vec::new();
        let read = stream.read_to_end(&mut all).map(|_| all);
        // Replies still go out after the client's close_notify; then ours on drop.
        stream.write_all(b"last reply").unwrap();
        read
    });
    let mut client = tls_client(&pki, tcp);
    client.write_all(b"request").unwrap();
    client.conn.send_close_notify();
    client.flush().unwrap();
    assert_eq!(server.join().unwrap().unwrap(), b"request");
    let mut rest = Vec::new();
    // rustls reports UnexpectedEof if TCP ends without the server's close_notify.
    client.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"last reply");
}

/// A client's Finished, its first data and its close_notify in one write: the server
/// reads the data and sees the stream end (rustls, reading them all at once, used to
/// report the close as a handshake cut short).
#[test]
fn finished_data_and_close_notify_in_one_write_are_all_read() {
    let pki = pki();
    let (mut tcp, server) = session(&pki, u64::MAX, |mut stream| {
        let mut all = Vec::new();
        stream
            .read_to_end(&mut all)
            .map(|_| all)
            .map_err(|e| e.to_string())
    });
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = ClientConnection::new(client_config(&pki, false), name).unwrap();
    while conn.wants_write() {
        conn.write_tls(&mut tcp).unwrap();
    }
    // The server's flight, until the client's Finished is queued (not sent).
    while conn.is_handshaking() {
        conn.read_tls(&mut tcp).unwrap();
        conn.process_new_packets().unwrap();
    }
    conn.writer().write_all(b"request").unwrap();
    conn.send_close_notify();
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).unwrap();
    }
    tcp.write_all(&flight).unwrap();
    assert_eq!(server.join().unwrap().unwrap(), b"request");
}

/// A client that completed the handshake with rustls and took its sending key, to
/// send records rustls never would.
struct RawClient {
    tcp: TcpStream,
    key: TrafficKey,
    /// The server's key, to open what it sends.
    server_key: TrafficKey,
}

fn raw_client(pki: &Pki, mut tcp: TcpStream) -> RawClient {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = ClientConnection::new(client_config(pki, true), name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    // Records sent before the server's handshake is over would meet rustls there,
    // not the record layer under test: the server says "ready" once it is over.
    let mut ready = Vec::new();
    while ready.len() < READY.len() {
        while conn.wants_write() {
            conn.write_tls(&mut tcp).unwrap();
        }
        conn.read_tls(&mut tcp).unwrap();
        conn.process_new_packets().unwrap();
        let _ = conn.reader().read_to_end(&mut ready);
    }
    assert_eq!(ready, READY);
    let secrets = conn.dangerous_extract_secrets().unwrap();
    let (seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    RawClient {
        tcp,
        key: TrafficKey::new(tx, seq).unwrap(),
        server_key: TrafficKey::new(rx, rx_seq).unwrap(),
    }
}

impl RawClient {
    /// The next record from the server, opened: its plaintext.
    fn next_record(&mut self) -> Vec<u8> {
        let mut record = vec![0u8; HEADER_LEN];
        self.tcp.read_exact(&mut record).unwrap();
        let len = record::record_len(&record).unwrap().unwrap();
        record.resize(len, 0);
        self.tcp.read_exact(&mut record[HEADER_LEN..]).unwrap();
        let (content, plain) = record::open(&mut self.server_key, &mut record).unwrap();
        assert_eq!(content, record::ContentType::ApplicationData);
        record[plain].to_vec()
    }
}

/// What the server read before its read failed (or the stream ended: `Ok`).
type Outcome = Result<Vec<u8>, (Vec<u8>, String)>;

/// What the server sends once its handshake is over, for [`raw_client`].
const READY: &[u8] = b"ready";

/// Says [`READY`], then reads until the stream ends or fails.
fn read_until_error(mut stream: TlsStream) -> Outcome {
    stream.write_all(READY).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) => {
                assert_eq!(err.kind(), io::ErrorKind::InvalidData);
                // The session stays failed.
                assert!(stream.read(&mut buf).is_err());
                assert!(stream.write_all(b"reply").is_err());
                return Err((got, err.to_string()));
            }
        }
    }
}

/// Sends a good record ("hello"), then `bad(client)`'s bytes; the server's outcome.
fn after_hello(bad: impl FnOnce(&mut RawClient) -> Vec<u8>) -> Outcome {
    let pki = pki();
    let (tcp, server) = session(&pki, u64::MAX, read_until_error);
    let mut client = raw_client(&pki, tcp);
    let hello = record::seal_inner(&mut client.key, b"hello\x17").unwrap();
    let bytes = bad(&mut client);
    client.tcp.write_all(&hello).unwrap();
    client.tcp.write_all(&bytes).unwrap();
    let _ = client.tcp.shutdown(Shutdown::Write);
    server.join().unwrap()
}

fn refused(outcome: Outcome, reason: &str) {
    match outcome {
        Ok(got) => panic!("accepted; read {got:?}"),
        Err((got, message)) => {
            assert_eq!(got, b"hello", "{message}");
            assert!(
                message.contains(reason),
                "{message:?} does not say {reason:?}"
            );
        }
    }
}

#[test]
fn a_record_with_a_flipped_bit_is_refused() {
    refused(
        after_hello(|c| {
            let mut record = record::seal_inner(&mut c.key, b"world\x17").unwrap();
            record[9] ^= 0x04;
            record
        }),
        "failed authentication",
    );
}

#[test]
fn an_oversized_record_is_refused() {
    refused(
        after_hello(|_| {
            let mut header = vec![23, 3, 3];
            header.extend_from_slice(&((record::MAX_CIPHERTEXT + 1) as u16).to_be_bytes());
            header.resize(5 + record::MAX_CIPHERTEXT + 1, 0);
            header
        }),
        "at most 2^14 + 256",
    );
}

#[test]
fn unprotected_records_and_odd_content_types_are_refused() {
    // A plaintext alert, as if the handshake were still on.
    refused(
        after_hello(|_| vec![21, 3, 3, 0, 2, 1, 0]),
        "unprotected record of type 21",
    );
    refused(
        after_hello(|_| vec![20, 3, 3, 0, 1, 1]),
        "unprotected record of type 20",
    );
    // change_cipher_spec (20) and a type TLS does not know, inside a protected record.
    refused(
        after_hello(|c| record::seal_inner(&mut c.key, b"\x01\x14").unwrap()),
        "content type 20",
    );
    refused(
        after_hello(|c| record::seal_inner(&mut c.key, b"\x01\x63").unwrap()),
        "content type 99",
    );
}

#[test]
fn handshake_messages_other_than_one_key_update_are_refused() {
    // NewSessionTicket is a server's message.
    refused(
        after_hello(|c| record::seal_inner(&mut c.key, b"\x04\x00\x00\x01\x00\x16").unwrap()),
        "handshake message type 4",
    );
    // A KeyUpdate with trailing bytes, or an invalid request value.
    refused(
        after_hello(|c| record::seal_inner(&mut c.key, b"\x18\x00\x00\x01\x00\x18\x16").unwrap()),
        "malformed KeyUpdate",
    );
    refused(
        after_hello(|c| record::seal_inner(&mut c.key, b"\x18\x00\x00\x01\x02\x16").unwrap()),
        "malformed KeyUpdate",
    );
}

#[test]
fn alerts_other_than_close_notify_are_errors() {
    refused(
        after_hello(|c| record::seal_inner(&mut c.key, b"\x02\x28\x15").unwrap()),
        "alert 40",
    );
    refused(
        after_hello(|c| record::seal_inner(&mut c.key, b"\x02\x00\x00\x15").unwrap()),
        "malformed alert",
    );
}

#[test]
fn close_notify_ends_cleanly_and_a_cut_record_does_not() {
    assert_eq!(
        after_hello(|c| record::seal_inner(&mut c.key, b"\x01\x00\x15").unwrap()).unwrap(),
        b"hello"
    );
    refused(
        after_hello(|c| {
            let record = record::seal_inner(&mut c.key, b"world\x17").unwrap();
            record[..record.len() - 3].to_vec()
        }),
        "middle of a TLS record",
    );
}

#[test]
fn a_client_key_update_without_request_switches_the_key() {
    let pki = pki();
    let (tcp, server) = session(&pki, u64::MAX, read_until_error);
    let mut client = raw_client(&pki, tcp);
    let mut wire = record::seal_inner(&mut client.key, b"before\x17").unwrap();
    wire.extend(record::seal_inner(&mut client.key, b"\x18\x00\x00\x01\x00\x16").unwrap());
    // The next record under the old key must now be refused.
    wire.extend(record::seal_inner(&mut client.key, b"stale\x17").unwrap());
    client.tcp.write_all(&wire).unwrap();
    let _ = client.tcp.shutdown(Shutdown::Write);
    let (got, message) = server.join().unwrap().unwrap_err();
    assert_eq!(got, b"before");
    assert!(message.contains("failed authentication"), "{message}");
}

#[test]
fn a_client_that_ignores_the_request_to_update_is_cut_off_at_the_limit() {
    let pki = pki();
    let (tcp, server) = session(&pki, 8, read_until_error);
    let mut client = raw_client(&pki, tcp);
    let mut wire = Vec::new();
    for _ in 0..10 {
        wire.extend(record::seal_inner(&mut client.key, b"x\x17").unwrap());
    }
    client.tcp.write_all(&wire).unwrap();
    let _ = client.tcp.shutdown(Shutdown::Write);
    let (got, message) = server.join().unwrap().unwrap_err();
    // Asked at 4 records (a KeyUpdate with update_requested this client ignores),
    // refused at 8.
    assert_eq!(got, b"xxxxxxxx");
    assert!(message.contains("more records under one key"), "{message}");
}

#[test]
fn read_replies_sealed_in_place_cross_intact_at_every_size() {
    let pki = pki();
    // Around one record, the in-place threshold (first record plus one), many
    // records with a short or a full last one, and past the in-place limit.
    let sizes = [
        0usize,
        1,
        16_364,
        16_365,
        2 * 16_384 - 20,
        2 * 16_384 - 19,
        2 * 16_384 - 18,
        5 * 16_384 + 4_000,
        (1 << 20) - 20,
        1 << 20,
        (4 << 20) + 1,
    ];
    let (tcp, server) = session(&pki, u64::MAX, move |mut stream| {
        for (i, &size) in sizes.iter().enumerate() {
            let mut data = pseudo_random(size, i as u64 + 10);
            stream.write_reply(&[i as u8; 20], &mut data).unwrap();
        }
    });
    let mut client = tls_client(&pki, tcp);
    for (i, &size) in sizes.iter().enumerate() {
        let mut reply = vec![0u8; 20 + size];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[..20], &[i as u8; 20], "header of reply {i}");
        assert!(
            reply[20..] == pseudo_random(size, i as u64 + 10)[..],
            "reply {i} of {size} bytes differs"
        );
    }
    server.join().unwrap();
}

/// The plaintext lengths of the records of one read reply (`header` bytes of header,
/// `size` bytes of data), as a client sees them; checks the bytes too.
fn records_of_reply(header: usize, size: usize) -> Vec<usize> {
    let pki = pki();
    let (tcp, server) = session(&pki, u64::MAX, move |mut stream| {
        stream.write_all(READY).unwrap();
        let mut go = [0u8; 2];
        stream.read_exact(&mut go).unwrap();
        let mut data = pseudo_random(size, 5);
        stream.write_reply(&vec![0xa5; header], &mut data).unwrap();
    });
    let mut client = raw_client(&pki, tcp);
    let go = record::seal_inner(&mut client.key, b"go\x17").unwrap();
    client.tcp.write_all(&go).unwrap();
    let (mut lengths, mut plain) = (Vec::new(), Vec::new());
    while plain.len() < header + size {
        let record = client.next_record();
        lengths.push(record.len());
        plain.extend_from_slice(&record);
    }
    server.join().unwrap();
    assert_eq!(plain.len(), header + size);
    assert!(plain[..header].iter().all(|&b| b == 0xa5));
    assert!(
        plain[header..] == pseudo_random(size, 5)[..],
        "the data differs"
    );
    lengths
}

/// How a read reply is framed (what a client pays per record and per `recv`): the
/// header and the data share records, every record but the last is full (2^14 bytes
/// of plaintext), and a reply that fits one record is one record, whichever way it
/// is sealed (in place, or copied: small and very large replies).
#[test]
fn read_replies_are_full_records_with_the_header_in_the_first() {
    // A structured reply's chunk header and offset (28 bytes), a simple reply's (16).
    for (header, size) in [
        (28, 1 << 20),
        (16, 1 << 20),
        (28, 20_000),
        (28, 40_000),
        (28, (4 << 20) + 4096),
    ] {
        let lengths = records_of_reply(header, size);
        let (last, full) = lengths.split_last().unwrap();
        assert!(full.iter().all(|&l| l == MAX_PLAINTEXT), "{lengths:?}");
        assert!(*last > 0 && *last <= MAX_PLAINTEXT, "{lengths:?}");
        assert_eq!(lengths.len(), (header + size).div_ceil(MAX_PLAINTEXT));
    }
    assert_eq!(records_of_reply(28, 4096), [28 + 4096]);
    assert_eq!(records_of_reply(16, 16_368), [16_384]);
}

/// Server settings with the pki's certificate and `ciphers`.
fn settings_with(pki: &Pki, ciphers: &str) -> TlsSettings {
    let dir = pki._dir.path();
    TlsSettings::from_pem_files(
        &dir.join("cert.pem"),
        &dir.join("key.pem"),
        None,
        TlsMode::Require,
        &ciphers.parse().unwrap(),
    )
    .unwrap()
}

/// A rustls client that offers only `suites`, in that order.
fn client_offering(pki: &Pki, suites: &[TlsCipher]) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = suites.iter().map(|c| c.suite()).collect();
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(Arc::clone(&pki.roots))
        .with_no_client_auth();
    Arc::new(config)
}

/// Runs a handshake between `settings` and a client with `config`; the suite the
/// client ended up with, after a 1 MiB read reply and a 1 MiB payload crossed
/// intact, or the server's and the client's errors.
fn negotiate(
    settings: TlsSettings,
    config: Arc<ClientConfig>,
) -> Result<rustls::CipherSuite, (String, String)> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut stream = accept(&settings, tcp, &[])
            .map_err(|e| e.to_string())?
            .stream;
        let mut data = pseudo_random(1 << 20, 21);
        stream.write_reply(b"header", &mut data).unwrap();
        let mut payload = vec![0u8; 1 << 20];
        stream.read_exact(&mut payload).unwrap();
        assert!(payload == pseudo_random(1 << 20, 22), "the payload differs");
        Ok::<(), String>(())
    });
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut client = StreamOwned::new(
        ClientConnection::new(config, name).unwrap(),
        TcpStream::connect(addr).unwrap(),
    );
    let mut reply = vec![0u8; 6 + (1 << 20)];
    let read = client.read_exact(&mut reply);
    let Some(suite) = client.conn.negotiated_cipher_suite() else {
        let server = server.join().unwrap().expect_err("the server saw no error");
        return Err((server, format!("{read:?}")));
    };
    read.unwrap();
    assert!(
        reply[6..] == pseudo_random(1 << 20, 21),
        "the reply differs"
    );
    client.write_all(&pseudo_random(1 << 20, 22)).unwrap();
    client.flush().unwrap();
    server.join().unwrap().unwrap();
    Ok(suite.suite())
}

#[test]
fn each_cipher_suite_carries_a_session() {
    let pki = pki();
    for cipher in [
        TlsCipher::Aes128Gcm,
        TlsCipher::Aes256Gcm,
        TlsCipher::Chacha20Poly1305,
    ] {
        let got = negotiate(
            settings_with(&pki, cipher.name()),
            client_config(&pki, false),
        )
        .unwrap();
        assert_eq!(got, cipher.suite().suite(), "{cipher}");
    }
}

#[test]
fn a_list_puts_the_servers_order_first_and_the_default_the_clients() {
    let pki = pki();
    let client = || client_offering(&pki, &[TlsCipher::Aes256Gcm, TlsCipher::Aes128Gcm]);
    let server_first = negotiate(settings_with(&pki, "aes128-gcm,aes256-gcm"), client());
    assert_eq!(server_first.unwrap(), TlsCipher::Aes128Gcm.suite().suite());
    let default = negotiate(pki.settings.clone(), client());
    assert_eq!(default.unwrap(), TlsCipher::Aes256Gcm.suite().suite());
    // A suite the list leaves out is not taken even when the client wants only it...
    let only_chacha = client_offering(&pki, &[TlsCipher::Chacha20Poly1305]);
    let (server, client_error) =
        negotiate(settings_with(&pki, "aes128-gcm,aes256-gcm"), only_chacha).unwrap_err();
    assert!(server.contains("handshake failed"), "{server}");
    assert!(
        client_error.contains("HandshakeFailure"),
        "the client is told why: {client_error}"
    );
    // ... and the next client is served.
    let again = negotiate(
        settings_with(&pki, "aes128-gcm,aes256-gcm"),
        client_config(&pki, false),
    );
    assert_eq!(again.unwrap(), TlsCipher::Aes128Gcm.suite().suite());
}

// ---- Replies gathered into records (the transmission code on a TLS session) ----

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::nbd::proto::{self as nbd_proto, RequestHeader, CMD_READ};
use crate::nbd::transmission::serve_for_test;
use crate::volume::{EncryptedVolume, Volume};

/// A simple read reply over the wire: header and 4 KiB.
const READ_REPLY: usize = nbd_proto::SIMPLE_REPLY_LEN + 4096;

/// Called with each read's offset before a [`MemVolume`] serves it.
type ReadHook = Box<dyn Fn(u64) + Send + Sync>;

/// A volume in memory whose every read is "in the page cache" (so the reader answers
/// it itself and gathers its reply), failing reads at `fail_at` (EIO), and calling
/// `hook` first: tests hold the server there while the client sends more.
struct MemVolume {
    data: Vec<u8>,
    fail_at: Option<u64>,
    hook: Option<ReadHook>,
}

impl fmt::Debug for MemVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemVolume")
    }
}

impl MemVolume {
    fn shared(fail_at: Option<u64>, hook: Option<ReadHook>) -> Arc<dyn Volume> {
        Arc::new(MemVolume {
            data: pseudo_random(VOLUME, 11),
            fail_at,
            hook,
        })
    }
}

const VOLUME: usize = 1 << 20;

impl Volume for MemVolume {
    fn size(&self) -> u64 {
        VOLUME as u64
    }
    fn block_size(&self) -> u32 {
        4096
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), crate::Error> {
        if self.fail_at == Some(offset) {
            return Err(crate::Error::Io {
                context: "reading the failing block".into(),
                source: io::Error::from_raw_os_error(libc::EIO),
            });
        }
        buf.copy_from_slice(&self.data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn read_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool, crate::Error> {
        if let Some(hook) = &self.hook {
            hook(offset);
        }
        self.read_at(offset, buf).map(|()| true)
    }
    fn write_at(&self, _: u64, _: &[u8]) -> Result<(), crate::Error> {
        Err(crate::Error::ReadOnly)
    }
    fn flush(&self) -> Result<(), crate::Error> {
        Ok(())
    }
    fn trim(&self, _: u64, _: u64) -> Result<(), crate::Error> {
        Err(crate::Error::ReadOnly)
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> Result<(), crate::Error> {
        Err(crate::Error::ReadOnly)
    }
    fn allocation(&self, _: u64, length: u64) -> Result<Vec<crate::volume::Extent>, crate::Error> {
        Ok(vec![crate::volume::Extent {
            length,
            hole: false,
            zero: false,
        }])
    }
}

/// An NBD server (after its handshake) on a TLS session, serving `volume` with four
/// transmission threads: the client, and how serving ended. `peek` gets a handle on
/// the server's socket (to see what has arrived there).
fn nbd_session(
    pki: &Pki,
    volume: Arc<dyn Volume>,
    peek: impl FnOnce(TcpStream) + Send + 'static,
) -> (RawClient, mpsc::Receiver<Result<(), String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = pki.settings.clone();
    let (done, ended) = mpsc::channel();
    thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        peek(tcp.try_clone().unwrap());
        let mut stream = accept_with_limit(&settings, tcp, &[], u64::MAX)
            .unwrap()
            .stream;
        stream.write_all(READY).unwrap();
        let reader = stream.try_clone().unwrap();
        let outcome = serve_for_test(reader, stream, volume, 4).map_err(|e| e.to_string());
        let _ = done.send(outcome);
    });
    let client = raw_client(pki, TcpStream::connect(addr).unwrap());
    // Only a guard against a server that never answers: nothing here is timed.
    client
        .tcp
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    (client, ended)
}

fn read_request(cookie: u64) -> Vec<u8> {
    RequestHeader {
        flags: 0,
        kind: CMD_READ,
        cookie,
        offset: cookie * 4096,
        length: 4096,
    }
    .encode()
    .to_vec()
}

/// A reply as the client parsed it: cookie, error, and the record it ended in.
#[derive(Debug)]
struct Reply {
    cookie: u64,
    error: u32,
    record: usize,
}

impl RawClient {
    /// Each request in a record of its own (as GnuTLS sends them), all in one write.
    fn send_requests(&mut self, requests: &[Vec<u8>]) {
        let mut wire = Vec::new();
        for request in requests {
            let inner = [&request[..], &[23]].concat();
            wire.extend(record::seal_inner(&mut self.key, &inner).unwrap());
        }
        self.tcp.write_all(&wire).unwrap();
    }

    /// Reads `count` simple read replies (4 KiB each, or none after an error),
    /// checking their data against the volume's.
    fn read_replies(&mut self, count: usize) -> Vec<Reply> {
        let data = pseudo_random(VOLUME, 11);
        let (mut plain, mut records, mut replies) = (Vec::new(), 0, Vec::new());
        while replies.len() < count {
            while plain.len() < nbd_proto::SIMPLE_REPLY_LEN {
                plain.extend(self.next_record());
                records += 1;
            }
            let error = u32::from_be_bytes(plain[4..8].try_into().unwrap());
            let cookie = u64::from_be_bytes(plain[8..16].try_into().unwrap());
            let len = if error == 0 {
                READ_REPLY
            } else {
                nbd_proto::SIMPLE_REPLY_LEN
            };
            while plain.len() < len {
                plain.extend(self.next_record());
                records += 1;
            }
            let at = cookie as usize * 4096;
            assert!(
                plain[nbd_proto::SIMPLE_REPLY_LEN..len] == data[at..at + len - 16],
                "reply {cookie}: wrong data"
            );
            plain.drain(..len);
            replies.push(Reply {
                cookie,
                error,
                record: records,
            });
        }
        assert!(plain.is_empty(), "{} bytes after the replies", plain.len());
        replies
    }
}

/// Waits until the socket has at least `bytes` unread (the client's next request has
/// arrived); a guard, not a timing.
fn wait_for_bytes(tcp: &TcpStream, bytes: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peek = vec![0u8; bytes];
    tcp.set_nonblocking(true).unwrap();
    while !matches!(tcp.peek(&mut peek), Ok(n) if n >= bytes) {
        assert!(Instant::now() < deadline, "the client's bytes never came");
        thread::sleep(Duration::from_millis(1));
    }
    tcp.set_nonblocking(false).unwrap();
}

/// The bytes of one request record on the wire.
const REQUEST_RECORD: usize = HEADER_LEN + nbd_proto::REQUEST_HEADER_LEN + 1 + 16;

/// A client's pipelined 4 KiB reads that arrive together are answered together: their
/// replies sealed as one stream into full records (not one record per reply), so the
/// client reads ceil(N * 4112 / 16384) records for N replies.
#[test]
fn pipelined_reads_are_answered_in_full_records() {
    let pki = pki();
    let (mut client, ended) = nbd_session(&pki, MemVolume::shared(None, None), |_| {});
    let requests: Vec<_> = (0..16).map(read_request).collect();
    client.send_requests(&requests);
    let replies = client.read_replies(16);
    assert!(replies.iter().all(|r| r.error == 0), "{replies:?}");
    let mut cookies: Vec<_> = replies.iter().map(|r| r.cookie).collect();
    cookies.sort_unstable();
    assert_eq!(cookies, (0..16).collect::<Vec<_>>());
    assert_eq!(
        replies.last().unwrap().record,
        (16 * READ_REPLY).div_ceil(MAX_PLAINTEXT),
        "{replies:?}"
    );
    drop(client);
    assert!(ended.recv().unwrap().is_ok());
}

/// A request that arrives while the server answers the one before (whole, in the
/// socket) is answered before that reply leaves, and both go in one record: the
/// client reads one record and wakes once for the two.
#[test]
fn a_read_that_arrives_while_the_last_is_answered_shares_its_record() {
    let pki = pki();
    let (arrived, wait) = mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let (server_tcp_tx, server_tcp) = mpsc::channel::<TcpStream>();
    let (holding, held) = mpsc::channel::<()>();
    let holding = Mutex::new(holding);
    // The server, reading block 1, waits until request 2 is in its socket.
    let hook: ReadHook = Box::new(move |offset| {
        if offset == 4096 {
            lock(&holding).send(()).unwrap();
            lock(&wait).recv().unwrap();
        }
    });
    let (mut client, ended) = nbd_session(&pki, MemVolume::shared(None, Some(hook)), move |tcp| {
        server_tcp_tx.send(tcp).unwrap();
    });
    let server_tcp = server_tcp.recv().unwrap();
    client.send_requests(&[read_request(1)]);
    held.recv().unwrap();
    client.send_requests(&[read_request(2)]);
    wait_for_bytes(&server_tcp, REQUEST_RECORD);
    arrived.send(()).unwrap();
    let replies = client.read_replies(2);
    assert_eq!(
        replies
            .iter()
            .map(|r| (r.cookie, r.record))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 1)],
        "both replies in the first record"
    );
    drop(client);
    assert!(ended.recv().unwrap().is_ok());
}

/// A client that waits for each reply (QD1) gets each at once: nothing waits for a
/// request that has not come, however often the server looks for one in vain.
#[test]
fn lone_reads_are_each_answered_at_once() {
    let pki = pki();
    let (mut client, ended) = nbd_session(&pki, MemVolume::shared(None, None), |_| {});
    for cookie in 0..40 {
        client.send_requests(&[read_request(cookie)]);
        let replies = client.read_replies(1);
        assert_eq!((replies[0].cookie, replies[0].error), (cookie, 0));
    }
    drop(client);
    assert!(ended.recv().unwrap().is_ok());
}

/// A read that fails in the middle of a batch gets EIO; the others their data.
#[test]
fn a_read_error_in_a_batch_fails_only_that_read() {
    let pki = pki();
    let (mut client, ended) = nbd_session(&pki, MemVolume::shared(Some(5 * 4096), None), |_| {});
    let requests: Vec<_> = (0..12).map(read_request).collect();
    client.send_requests(&requests);
    let replies = client.read_replies(12);
    for reply in &replies {
        let want = if reply.cookie == 5 { 5 } else { 0 };
        assert_eq!(reply.error, want, "{replies:?}");
    }
    drop(client);
    assert!(ended.recv().unwrap().is_ok());
}

/// An encrypted volume whose key is revoked (as when its KMS key is disabled) once
/// block `after` has been read.
#[derive(Debug)]
struct RevokedAfter {
    volume: EncryptedVolume,
    after: u64,
}

impl Volume for RevokedAfter {
    fn size(&self) -> u64 {
        self.volume.size()
    }
    fn block_size(&self) -> u32 {
        self.volume.block_size()
    }
    fn is_read_only(&self) -> bool {
        self.volume.is_read_only()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), crate::Error> {
        self.volume.read_at(offset, buf)
    }
    fn read_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool, crate::Error> {
        let read = self.volume.read_cached(offset, buf);
        if offset == self.after * 4096 {
            self.volume.revoke_key("the key was disabled");
        }
        read
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), crate::Error> {
        self.volume.write_at(offset, data)
    }
    fn flush(&self) -> Result<(), crate::Error> {
        self.volume.flush()
    }
    fn trim(&self, offset: u64, length: u64) -> Result<(), crate::Error> {
        self.volume.trim(offset, length)
    }
    fn write_zeroes(&self, offset: u64, length: u64, punch: bool) -> Result<(), crate::Error> {
        self.volume.write_zeroes(offset, length, punch)
    }
    fn allocation(
        &self,
        offset: u64,
        length: u64,
    ) -> Result<Vec<crate::volume::Extent>, crate::Error> {
        self.volume.allocation(offset, length)
    }
}

/// A key revoked in the middle of a batch fails closed: the reads after it get EIO,
/// never data, and the ones before it their data.
#[test]
fn a_key_revoked_in_a_batch_fails_the_reads_after_it() {
    use crypto_core::kms::{CreateKeyRequest, KeyService, LocalKms, LocalKmsConfig};
    let home = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
    let key = kms.create_key(&CreateKeyRequest::default()).unwrap();
    let path = home.path().join("v.vol");
    crate::volume::create(
        &path,
        VOLUME as u64,
        crate::volume::NewVolumeKey::Kms {
            kms: &kms,
            key_id: &key.arn,
        },
    )
    .unwrap();
    let volume = EncryptedVolume::open(&path, &kms, false).unwrap();
    volume.write_at(0, &pseudo_random(VOLUME, 11)).unwrap();
    let volume = Arc::new(RevokedAfter { volume, after: 3 });
    let pki = pki();
    let (mut client, ended) = nbd_session(&pki, volume, |_| {});
    let requests: Vec<_> = (0..10).map(read_request).collect();
    client.send_requests(&requests);
    let replies = client.read_replies(10);
    for reply in &replies {
        let want = if reply.cookie <= 3 { 0 } else { 5 };
        assert_eq!(reply.error, want, "{replies:?}");
    }
    drop(client);
    assert!(ended.recv().unwrap().is_ok());
}

/// A client that hangs up while the server answers its batch ends the connection;
/// no transmission thread is left waiting.
#[test]
fn a_client_that_leaves_in_the_middle_of_a_batch_leaves_no_thread_waiting() {
    let pki = pki();
    let (gone, wait) = mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let hook: ReadHook = Box::new(move |offset| {
        if offset == 2 * 4096 {
            let _ = lock(&wait).recv();
        }
    });
    let (mut client, ended) = nbd_session(&pki, MemVolume::shared(None, Some(hook)), |_| {});
    let requests: Vec<_> = (0..16).map(read_request).collect();
    client.send_requests(&requests);
    client.tcp.shutdown(Shutdown::Both).unwrap();
    drop(client);
    gone.send(()).unwrap();
    // Ends (either way) rather than hanging; the guard only keeps the run from hanging.
    assert!(ended.recv_timeout(Duration::from_secs(60)).is_ok());
}

/// A bad record found while looking for the next request does not take the replies
/// gathered before it: they go out, then the session fails with its alert.
#[test]
fn a_bad_record_after_a_request_still_lets_its_reply_out() {
    let pki = pki();
    let (arrived, wait) = mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let (server_tcp_tx, server_tcp) = mpsc::channel::<TcpStream>();
    let (holding, held) = mpsc::channel::<()>();
    let holding = Mutex::new(holding);
    let hook: ReadHook = Box::new(move |offset| {
        if offset == 4096 {
            lock(&holding).send(()).unwrap();
            lock(&wait).recv().unwrap();
        }
    });
    let (mut client, ended) = nbd_session(&pki, MemVolume::shared(None, Some(hook)), move |tcp| {
        server_tcp_tx.send(tcp).unwrap();
    });
    let server_tcp = server_tcp.recv().unwrap();
    client.send_requests(&[read_request(1)]);
    held.recv().unwrap();
    let mut bad =
        record::seal_inner(&mut client.key, &[&read_request(2)[..], &[23]].concat()).unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    client.tcp.write_all(&bad).unwrap();
    wait_for_bytes(&server_tcp, bad.len());
    arrived.send(()).unwrap();
    let replies = client.read_replies(1);
    assert_eq!((replies[0].cookie, replies[0].error), (1, 0));
    // Then the alert: bad_record_mac.
    let mut header = [0u8; HEADER_LEN];
    client.tcp.read_exact(&mut header).unwrap();
    let len = record::record_len(&header).unwrap().unwrap();
    let mut alert = header.to_vec();
    alert.resize(len, 0);
    client.tcp.read_exact(&mut alert[HEADER_LEN..]).unwrap();
    let (content, plain) = record::open(&mut client.server_key, &mut alert).unwrap();
    assert_eq!(content, record::ContentType::Alert);
    assert_eq!(alert[plain], [2, 20]);
    let outcome = ended.recv().unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap()
}
