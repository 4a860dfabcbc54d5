//! Red team, session 9, with the real NBD clients against `atrest nbd serve` and
//! encrypted volumes: a filesystem that fills up under a batch of pipelined writes
//! (nbdsh), pipelined writes and a flush from qemu-io, and two clients of two
//! volumes at once (nbdsh writing a secret, nbdcopy reading the other volume).
//! blockdev/tests/red9_nbd.rs has the hand-written clients; docs/SECURITY.md, "Red
//! team, session 9".

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{nbdsh, require_nbdsh, require_root, require_tools, run, Home, Served};
use serde_json::Value;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

/// A fresh CMK's ARN.
fn create_key(home: &Home) -> String {
    let out = home.run(&["kms", "create-key"]);
    let key: Value = serde_json::from_str(&out).unwrap();
    key["KeyMetadata"]["Arn"].as_str().unwrap().to_owned()
}

/// An encrypted volume of `size` bytes at `path`, under `key`.
fn encrypted_volume(home: &Home, path: &Path, size: u64, key: &str) {
    home.run(&[
        "volume",
        "create",
        "--size",
        &size.to_string(),
        "--key-id",
        key,
        &path.display().to_string(),
    ]);
}

fn nbd_serve(home: &Home, exports: &[(&str, &Path)]) -> Served {
    let mut args = vec![
        "nbd".to_owned(),
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    for (name, path) in exports {
        args.push("--export".into());
        args.push(format!("{name}={}", path.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    home.serve(&args)
}

/// Runs a Python snippet in nbdsh with `URI` set; its output, which must be a success.
fn nbdsh_script(served: &Served, export: &str, script: &str) -> Output {
    let out = nbdsh()
        .env("URI", served.uri(export))
        .args(["-c", script])
        .output()
        .expect("running nbdsh");
    assert!(
        out.status.success(),
        "nbdsh script failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        served.log()
    );
    out
}

/// A tmpfs of `size` on a new directory, unmounted on drop.
struct SmallFilesystem {
    dir: TempDir,
}

impl SmallFilesystem {
    fn mount(size: &str) -> SmallFilesystem {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "red9-enospc"])
            .arg(dir.path()));
        SmallFilesystem { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path())
            .status();
    }
}

/// nbdsh pipelines 256 writes of 4 KiB (held replies) into a 16 MiB encrypted
/// volume on a 512 KiB filesystem: each completes once, done or ENOSPC (not EIO:
/// "disk full" is what the client must be told), a done write reads back, the
/// connection serves on, and the server serves a new client afterwards.
#[test]
fn an_encrypted_volume_on_a_full_filesystem_answers_enospc_in_the_middle_of_a_batch() {
    if !require_root() || !require_nbdsh() || !require_tools(&["mount", "umount"]) {
        return;
    }
    let home = Home::new();
    let key = create_key(&home);
    let small = SmallFilesystem::mount("512k");
    let volume = small.path("v.vol");
    encrypted_volume(&home, &volume, 16 * MIB, &key);
    let served = nbd_serve(&home, &[("v", &volume)]);
    let out = nbdsh_script(
        &served,
        "v",
        r#"
import errno, os
h.connect_uri(os.environ["URI"])
def block(i):
    return bytes([(i * 7 + j) % 251 | 1 for j in range(4096)])
cookies = {h.aio_pwrite(block(i), i * 8192): i for i in range(256)}
while h.aio_in_flight() > 0:
    h.poll(-1)
done, full = [], 0
for cookie, i in cookies.items():
    try:
        assert h.aio_command_completed(cookie)
        done.append(i)
    except nbd.Error as e:
        assert e.errnum == errno.ENOSPC, "write %d: %s" % (i, e)
        full += 1
assert done and full, (len(done), full)
for i in done:
    assert h.pread(4096, i * 8192) == block(i), "write %d said done" % i
h.pwrite(block(1000), done[0] * 8192)
assert h.pread(4096, done[0] * 8192) == block(1000)
h.flush()
print("done %d full %d" % (len(done), full))
"#,
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("done "), "{printed}");
    let info = run(Command::new("nbdinfo").args(["--size", &served.uri("v")]));
    assert_eq!(
        String::from_utf8_lossy(&info.stdout).trim(),
        (16 * MIB).to_string()
    );
    served.stop();
}

/// qemu-io sends 32 pipelined writes (held replies), an aio_flush, then reads each
/// back with its pattern; then the same on a new connection.
#[test]
fn qemu_io_pipelined_writes_and_a_flush_read_back() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let home = Home::new();
    let key = create_key(&home);
    let volume = home.file("v.vol");
    encrypted_volume(&home, &volume, 16 * MIB, &key);
    let served = nbd_serve(&home, &[("v", &volume)]);
    let uri = served.uri("v");
    let mut writes = Command::new("qemu-io");
    writes.args(["-f", "raw", &uri]);
    for i in 0..32u32 {
        writes.args(["-c", &format!("aio_write -P {} {} 4k", i + 1, i * 12288)]);
    }
    writes.args(["-c", "aio_flush"]);
    for i in 0..32u32 {
        writes.args(["-c", &format!("read -P {} {} 4k", i + 1, i * 12288)]);
    }
    let out = run(&mut writes);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        !printed.contains("failed") && !printed.contains("error"),
        "{printed}"
    );
    let mut reads = Command::new("qemu-io");
    reads.args(["-f", "raw", "-r", &uri]);
    for i in 0..32u32 {
        reads.args(["-c", &format!("read -P {} {} 4k", i + 1, i * 12288)]);
    }
    let out = run(&mut reads);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        !printed.contains("failed") && !printed.contains("error"),
        "{printed}"
    );
    assert_eq!(printed.matches("read 4096/4096").count(), 32, "{printed}");
    served.stop();
}

/// Two volumes under two keys on one server. nbdsh writes and reads a secret on
/// `a` with many requests in flight, in connection after connection; meanwhile
/// and after, nbdcopy copies `b` (half written with its own pattern) out again and
/// again: not one copy may hold a byte of `a`'s secret.
#[test]
fn two_clients_of_two_volumes_never_see_each_others_data() {
    if !require_nbdsh() || !require_tools(&["nbdcopy"]) {
        return;
    }
    let home = Home::new();
    let (key_a, key_b) = (create_key(&home), create_key(&home));
    let (a, b) = (home.file("a.vol"), home.file("b.vol"));
    encrypted_volume(&home, &a, 8 * MIB, &key_a);
    encrypted_volume(&home, &b, 8 * MIB, &key_b);
    let served = nbd_serve(&home, &[("a", &a), ("b", &b)]);
    nbdsh_script(
        &served,
        "b",
        r#"
import os
h.connect_uri(os.environ["URI"])
for i in range(0, 64):
    h.pwrite(b"b-pattern-" * 409 + b"bbbbbb", i * 65536)
"#,
    );
    const SECRET: &[u8] = b"SECRET-of-volume-a:";
    let writer = {
        let uri = served.uri("a");
        std::thread::spawn(move || {
            for _ in 0..4 {
                let out = nbdsh()
                    .env("URI", &uri)
                    .args([
                        "-c",
                        r#"
import os
h.connect_uri(os.environ["URI"])
secret = (b"SECRET-of-volume-a:" * 3450)[:65536]
for round in range(3):
    cookies = [h.aio_pwrite(secret, i * 65536) for i in range(128)]
    bufs = [nbd.Buffer(65536) for i in range(128)]
    cookies += [h.aio_pread(bufs[i], i * 65536) for i in range(128)]
    while h.aio_in_flight() > 0:
        h.poll(-1)
"#,
                    ])
                    .output()
                    .expect("running nbdsh");
                assert!(out.status.success(), "{out:?}");
            }
        })
    };
    let copy = home.file("b.raw");
    let expected_b: Vec<u8> = {
        let mut data = vec![0u8; (8 * MIB) as usize];
        let mut block = b"b-pattern-".repeat(409);
        block.extend_from_slice(b"bbbbbb");
        for i in 0..64 {
            data[i * 65536..i * 65536 + 4096].copy_from_slice(&block);
        }
        data
    };
    let check = |round: usize| {
        run(Command::new("nbdcopy").args([
            &served.uri("b"),
            &copy.display().to_string(),
            "--connections=4",
            "--requests=16",
        ]));
        let data = fs::read(&copy).unwrap();
        assert!(
            !data.windows(SECRET.len()).any(|w| w == SECRET),
            "round {round}: a copy of volume b holds volume a's secret"
        );
        assert!(data == expected_b, "round {round}: volume b changed");
        fs::remove_file(&copy).unwrap();
    };
    let mut round = 0;
    while !writer.is_finished() {
        check(round);
        round += 1;
    }
    writer.join().unwrap();
    check(round);
    served.stop();
}

/// `atrest nbd serve` under `prlimit --nofile=100`: the limits are lowered to 9
/// connections, said at start; nine attached clients with writes in flight are
/// served while further connections are refused before the greeting, no `accept`
/// fails for want of descriptors, and a closed connection's place serves nbdinfo.
#[test]
fn under_a_descriptor_limit_of_100_nine_clients_are_served_and_no_accept_fails() {
    use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    if !require_tools(&["prlimit", "nbdinfo"]) {
        return;
    }
    let home = Home::new();
    let image = home.file("disk.img");
    fs::File::create(&image).unwrap().set_len(4 * MIB).unwrap();
    let mut server = Command::new("prlimit")
        .arg("--nofile=100:100")
        .arg(env!("CARGO_BIN_EXE_atrest"))
        .args(["nbd", "serve", "--listen", "127.0.0.1:0", "--raw", "disk"])
        .arg("--export")
        .arg(format!("disk={}", image.display()))
        .env("ATREST_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting prlimit atrest nbd serve");
    let log = Arc::new(Mutex::new(String::new()));
    let (found, listening) = std::sync::mpsc::channel();
    let stderr = server.stderr.take().unwrap();
    let collected = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = found.send(addr.trim().parse::<SocketAddr>().unwrap());
            }
            collected.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    let addr = listening
        .recv_timeout(Duration::from_secs(30))
        .expect("the server never listened");
    let open = || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut greeting = [0u8; 18];
        match stream.read_exact(&mut greeting) {
            Ok(()) => Some(stream),
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                None
            }
            Err(err) => panic!("reading the greeting: {err}"),
        }
    };
    let mut clients = Vec::new();
    for i in 0..9u64 {
        let mut stream = open().unwrap_or_else(|| panic!("client {i} of 9 was refused"));
        stream.write_all(&3u32.to_be_bytes()).unwrap();
        let mut option = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
        option.extend_from_slice(&1u32.to_be_bytes());
        option.extend_from_slice(&4u32.to_be_bytes());
        option.extend_from_slice(b"disk");
        stream.write_all(&option).unwrap();
        let mut reply = [0u8; 10];
        stream.read_exact(&mut reply).unwrap();
        clients.push(stream);
    }
    for _ in 0..20 {
        assert!(open().is_none(), "a 10th connection was greeted");
    }
    // Every client keeps 16 writes in flight at once (16 transmission threads' worth).
    for (i, stream) in clients.iter_mut().enumerate() {
        let mut bytes = Vec::new();
        for j in 0..16u64 {
            let cookie = i as u64 * 100 + j;
            bytes.extend_from_slice(&0x2560_9513u32.to_be_bytes());
            bytes.extend_from_slice(&0u16.to_be_bytes());
            bytes.extend_from_slice(&1u16.to_be_bytes());
            bytes.extend_from_slice(&cookie.to_be_bytes());
            bytes.extend_from_slice(&(cookie * 4096).to_be_bytes());
            bytes.extend_from_slice(&4096u32.to_be_bytes());
            bytes.extend_from_slice(&[i as u8 + 1; 4096]);
        }
        stream.write_all(&bytes).unwrap();
    }
    for stream in &mut clients {
        for _ in 0..16 {
            let mut reply = [0u8; 16];
            stream.read_exact(&mut reply).unwrap();
            assert_eq!(&reply[4..8], &[0; 4], "a write failed");
        }
    }
    let descriptors = fs::read_dir(format!("/proc/{}/fd", server.id()))
        .map(|dir| dir.count())
        .unwrap_or(0);
    assert!(descriptors < 100, "{descriptors} descriptors open");
    // A place freed, nbdinfo is served.
    drop(clients.pop());
    let mut served = false;
    for _ in 0..400 {
        let out = Command::new("nbdinfo")
            .args(["--size", &format!("nbd://{addr}/disk")])
            .output()
            .unwrap();
        if out.status.success() {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(served, "nbdinfo was never served");
    drop(clients);
    run(Command::new("kill").args(["-TERM", &server.id().to_string()]));
    let status = server.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("at most 9 connections, 9 from one source (lowered from 128 and 32"),
        "{log}"
    );
    assert!(
        !log.contains("accepting a connection failed") && !log.contains("Too many open files"),
        "{log}"
    );
}
