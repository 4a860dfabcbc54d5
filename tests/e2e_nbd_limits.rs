//! `atrest nbd serve --max-connections N --max-connections-per-source N` and `atrest
//! serve` with the same options, driven by nbdinfo: connections beyond the limit are
//! closed before the greeting, a flood of them costs one log line, a freed place
//! serves the next client.

mod common;

use std::fs;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use common::{require_tools, Home};

const MIB: u64 = 1 << 20;
/// Connections tried against a full server.
const FLOOD: usize = 200;
/// How often nbdinfo is retried while a closed connection's place is being freed.
const ATTEMPTS: usize = 400;
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Connects and reads the 18-byte greeting: `Some(stream)` when admitted, `None`
/// when the server closed the connection without a byte.
fn open(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
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
        0 => None,
        18 => {
            assert_eq!(&greeting[..8], b"NBDMAGIC");
            Some(stream)
        }
        n => panic!("the server sent {n} bytes of a greeting, then closed"),
    }
}

/// Retries until a connection is admitted: the place of a client that just left
/// (nbdinfo) is freed a moment after it closes.
fn eventually_open(addr: SocketAddr) -> TcpStream {
    for _ in 0..ATTEMPTS {
        if let Some(stream) = open(addr) {
            return stream;
        }
        thread::sleep(RETRY_PAUSE);
    }
    panic!("no connection to {addr} was admitted");
}

fn nbdinfo_size(uri: &str) -> Output {
    Command::new("nbdinfo")
        .args(["--size", uri])
        .output()
        .expect("running nbdinfo")
}

/// nbdinfo is served once a place is free (a closed connection's place is freed a
/// moment after the client closes).
fn eventually_served(uri: &str) -> String {
    for _ in 0..ATTEMPTS {
        let out = nbdinfo_size(uri);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        thread::sleep(RETRY_PAUSE);
    }
    panic!("nbdinfo {uri} was never served");
}

#[test]
fn nbd_serve_closes_connections_beyond_max_connections() {
    if !require_tools(&["nbdinfo"]) {
        return;
    }
    let home = Home::new();
    let image = home.file("disk.img");
    fs::File::create(&image).unwrap().set_len(4 * MIB).unwrap();
    let served = home.serve(&[
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--export",
        &format!("disk={}", image.display()),
        "--raw",
        "disk",
        "--max-connections",
        "2",
        "--max-connections-per-source",
        "2",
    ]);
    let uri = served.uri("disk");
    assert_eq!(eventually_served(&uri), (4 * MIB).to_string());
    let first = eventually_open(served.addr);
    let second = eventually_open(served.addr);
    for _ in 0..FLOOD {
        assert!(
            open(served.addr).is_none(),
            "a connection beyond --max-connections 2 was greeted"
        );
    }
    let refused = nbdinfo_size(&uri);
    assert!(
        !refused.status.success(),
        "nbdinfo was served beyond the limit"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("disconnected"),
        "nbdinfo: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // A place freed, the next client is served; the held connection is unharmed.
    drop(first);
    assert_eq!(eventually_served(&uri), (4 * MIB).to_string());
    drop(second);
    let log = served.log();
    assert!(
        log.contains("at most 2 connections, 2 from one source"),
        "the limits in force are not logged:\n{log}"
    );
    // 201 refusals within seconds: one line, the rest counted in the next one.
    let lines = log.matches("refused a connection from").count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} refusal lines for {} refusals:\n{log}",
        FLOOD + 1
    );
    served.stop();
}

#[test]
fn serve_takes_the_same_limits_and_rejects_zero() {
    if !require_tools(&["nbdinfo"]) {
        return;
    }
    let home = Home::new();
    for command in [&["serve"][..], &["nbd", "serve", "--export", "d=x"][..]] {
        let out = home
            .atrest()
            .args(command)
            .args(["--listen", "127.0.0.1:0", "--max-connections", "0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--max-connections 0 was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("'0' is not a count of at least 1"),
            "{stderr}"
        );
    }
    let served = home.serve(&["serve", "--listen", "127.0.0.1:0", "--max-connections", "1"]);
    let held = eventually_open(served.addr);
    let refused = nbdinfo_size(&served.uri("default"));
    assert!(
        !refused.status.success(),
        "nbdinfo was served beyond the limit"
    );
    drop(held);
    assert_eq!(
        eventually_served(&served.uri("default")),
        (1u64 << 30).to_string()
    );
    served.stop();
}

#[test]
fn tls_clients_are_counted_and_refused_alike() {
    if !require_tools(&["nbdinfo", "openssl"]) {
        return;
    }
    let home = Home::new();
    let (cert, tls_key) = home.self_signed_cert();
    // libnbd's tls-certificates=DIR layout: the server's certificate is its own CA.
    let client_dir = home.file("client-pki");
    fs::create_dir(&client_dir).unwrap();
    fs::copy(&cert, client_dir.join("ca-cert.pem")).unwrap();
    let image = home.file("disk.img");
    fs::File::create(&image).unwrap().set_len(2 * MIB).unwrap();
    let served = home.serve(&[
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--export",
        &format!("disk={}", image.display()),
        "--raw",
        "disk",
        "--tls-cert",
        &cert.display().to_string(),
        "--tls-key",
        &tls_key.display().to_string(),
        "--max-connections",
        "1",
    ]);
    let uri = format!(
        "nbds://{}/disk?tls-certificates={}",
        served.addr,
        client_dir.display()
    );
    assert_eq!(eventually_served(&uri), (2 * MIB).to_string());
    // The one place is held by a client that has not started TLS yet: TLS clients
    // are refused before the greeting, as plaintext ones are.
    let held = eventually_open(served.addr);
    for _ in 0..20 {
        assert!(
            open(served.addr).is_none(),
            "a connection beyond the limit was greeted"
        );
    }
    let refused = nbdinfo_size(&uri);
    assert!(
        !refused.status.success(),
        "a TLS client was served beyond the limit"
    );
    drop(held);
    assert_eq!(eventually_served(&uri), (2 * MIB).to_string());
    served.stop();
}

#[test]
fn idle_timeout_disconnects_a_silent_attached_client() {
    if !common::require_nbdsh() {
        return;
    }
    let home = Home::new();
    let image = home.file("disk.img");
    fs::File::create(&image).unwrap().set_len(MIB).unwrap();
    let bad = home
        .atrest()
        .args(["nbd", "serve", "--export", "d=x", "--idle-timeout", "0s"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "--idle-timeout 0s was accepted");
    let served = home.serve(&[
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--export",
        &format!("disk={}", image.display()),
        "--raw",
        "disk",
        "--idle-timeout",
        "1s",
    ]);
    // libnbd attaches, reads, goes silent past the timeout, and finds the
    // connection closed by the server.
    let script = r#"
import os, time
h.connect_uri(os.environ["URI"])
assert h.pread(512, 0) == bytes(512)
time.sleep(3)
try:
    h.pread(512, 0)
except nbd.Error as e:
    print("disconnected:", e)
else:
    raise SystemExit("still served after 3 s of silence with --idle-timeout 1s")
"#;
    let out = common::nbdsh()
        .env("URI", served.uri("disk"))
        .args(["-c", script])
        .output()
        .expect("running nbdsh");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("disconnected:"),
        "{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        served.log()
    );
    let log = served.log();
    assert!(log.contains("no request within the idle timeout"), "{log}");
    served.stop();
}

#[test]
fn max_memory_is_parsed_refused_when_zero_and_shown_at_start() {
    if !require_tools(&["nbdinfo"]) {
        return;
    }
    let home = Home::new();
    for (value, said) in [
        ("0", "'0' is not a size of at least 1 byte"),
        ("lots", "'lots' is not a size"),
        ("5X", "unknown unit"),
    ] {
        for command in [&["serve"][..], &["nbd", "serve", "--export", "d=x"][..]] {
            let out = home
                .atrest()
                .args(command)
                .args(["--listen", "127.0.0.1:0", "--max-memory", value])
                .output()
                .unwrap();
            assert!(!out.status.success(), "--max-memory {value} was accepted");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(said), "--max-memory {value}: {stderr}");
        }
    }
    let image = home.file("disk.img");
    fs::File::create(&image).unwrap().set_len(4 * MIB).unwrap();
    let served = home.serve(&[
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--export",
        &format!("disk={}", image.display()),
        "--raw",
        "disk",
        "--max-memory",
        "48M",
    ]);
    assert_eq!(
        eventually_served(&served.uri("disk")),
        (4 * MIB).to_string()
    );
    let log = served.log();
    assert!(
        log.contains("payloads in flight: at most 48 MiB, plus 1 MiB per connection"),
        "the memory limit is not logged:\n{log}"
    );
    served.stop();
    // `serve` takes it too; without it, the default is logged.
    let served = home.serve(&["serve", "--listen", "127.0.0.1:0", "--max-memory", "1G"]);
    assert_eq!(
        eventually_served(&served.uri("default")),
        (1u64 << 30).to_string()
    );
    assert!(
        served
            .log()
            .contains("payloads in flight: at most 1024 MiB, plus 1 MiB per connection"),
        "{}",
        served.log()
    );
    served.stop();
    let served = home.serve(&["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(
        eventually_served(&served.uri("default")),
        (1u64 << 30).to_string()
    );
    assert!(
        served.log().contains("payloads in flight: at most"),
        "{}",
        served.log()
    );
    served.stop();
}
