//! `atrest serve` / `atrest nbd serve` driven by the real NBD clients: nbdinfo,
//! nbdcopy and nbdsh (python3-libnbd). Each test has its own home and port.

mod common;

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;

use common::{
    allocated_bytes, nbdsh, pseudo_random, require_nbdsh, require_tools, run, Home, Served,
};
use serde_json::Value;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Creates the zero-config default volume (first run of `atrest serve`) and returns
/// its path, with the server stopped again.
fn default_volume(home: &Home) -> PathBuf {
    home.serve_default().stop();
    let path = home.path().join("volumes/default.vol");
    assert!(
        path.is_file(),
        "atrest serve did not create {}",
        path.display()
    );
    path
}

/// `atrest nbd serve --listen 127.0.0.1:0 ARGS`, waiting until it listens.
fn nbd_serve(home: &Home, args: &[&str]) -> Served {
    let mut all = vec!["nbd", "serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    home.serve(&all)
}

fn nbdinfo_json(args: &[&str]) -> Value {
    let out = run(Command::new("nbdinfo").arg("--json").args(args));
    serde_json::from_slice(&out.stdout).expect("nbdinfo --json prints JSON")
}

/// Runs a Python snippet in nbdsh with `URI` (and `ADDR`) in the environment.
fn nbdsh_script(served: &Served, export: &str, script: &str) {
    let out = nbdsh()
        .env("URI", served.uri(export))
        .env("ADDR", served.addr.to_string())
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
}

#[test]
fn nbdinfo_reports_size_names_flags_and_block_sizes() {
    if !require_tools(&["nbdinfo"]) {
        return;
    }
    let home = Home::new();
    let volume = default_volume(&home);
    let raw = home.file("scratch.img");
    fs::File::create(&raw).unwrap().set_len(16 * MIB).unwrap();
    let served = nbd_serve(
        &home,
        &[
            "--export",
            &format!("default={}", volume.display()),
            "--export",
            &format!("scratch={}", raw.display()),
            "--raw",
            "scratch",
        ],
    );

    let info = nbdinfo_json(&[&served.uri("default")]);
    assert_eq!(info["protocol"], "newstyle-fixed");
    let export = &info["exports"][0];
    assert_eq!(export["export-name"], "default");
    assert_eq!(export["export-size"], GIB);
    assert_eq!(export["is_read_only"], false);
    for capability in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_cache",
        "can_multi_conn",
    ] {
        assert_eq!(export[capability], true, "{capability} in {export}");
    }
    assert_eq!(export["block_size_minimum"], 1);
    assert_eq!(export["block_size_preferred"], 4096);
    assert_eq!(export["block_size_maximum"], 32 * MIB);
    assert!(export["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "base:allocation"));

    let listed = nbdinfo_json(&["--list", &served.uri("")]);
    let names: Vec<&str> = listed["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["default", "scratch"]);
    let scratch = &listed["exports"][1];
    assert_eq!(scratch["export-size"], 16 * MIB);
    assert_eq!(scratch["description"], raw.display().to_string());

    // The empty name is the spec's default export.
    let default = nbdinfo_json(&[&format!("nbd://{}", served.addr)]);
    assert_eq!(default["exports"][0]["export-name"], "default");
    served.stop();
}

#[test]
fn nbdcopy_256_mib_in_and_back_out_is_byte_equal() {
    if !require_tools(&["nbdcopy"]) {
        return;
    }
    let home = Home::new();
    let served = home.serve_default();
    let input = home.file("in.bin");
    let data = pseudo_random(256 * MIB as usize, 0x5eed);
    fs::write(&input, &data).unwrap();
    run(Command::new("nbdcopy")
        .arg(&input)
        .arg(served.uri("default")));
    let output = home.file("out.bin");
    run(Command::new("nbdcopy")
        .arg(served.uri("default"))
        .arg(&output));

    let mut copied = fs::File::open(&output).unwrap();
    assert_eq!(copied.metadata().unwrap().len(), GIB);
    let mut head = vec![0u8; data.len()];
    copied.read_exact(&mut head).unwrap();
    assert!(
        head == data,
        "the first 256 MiB differ from what was copied in"
    );
    let mut rest = vec![0u8; 8 * MIB as usize];
    loop {
        let n = copied.read(&mut rest).unwrap();
        if n == 0 {
            break;
        }
        assert!(
            rest[..n].iter().all(|&b| b == 0),
            "unwritten space must read as zeros"
        );
    }
    served.stop();
}

#[test]
fn trim_leaves_a_hole_that_reads_as_zeros_and_frees_space() {
    if !(require_tools(&["nbdinfo"]) && require_nbdsh()) {
        return;
    }
    let home = Home::new();
    let volume = default_volume(&home);
    let served = nbd_serve(&home, &["--export", &format!("disk={}", volume.display())]);
    nbdsh_script(
        &served,
        "disk",
        r#"
import os
h.connect_uri(os.environ["URI"])
h.pwrite(b"\xa5" * (16 << 20), 8 << 20)
h.flush()
"#,
    );
    let before = allocated_bytes(&volume);
    assert!(
        before >= 16 * MIB,
        "16 MiB written, {before} bytes allocated"
    );

    nbdsh_script(
        &served,
        "disk",
        r#"
import os
h.connect_uri(os.environ["URI"])
h.trim(8 << 20, 8 << 20)
h.flush()
assert h.pread(8 << 20, 8 << 20) == bytes(8 << 20), "trimmed range must read as zeros"
assert h.pread(4096, 16 << 20) == b"\xa5" * 4096, "data after the trim is intact"
"#,
    );
    let after = allocated_bytes(&volume);
    // Splitting the file's extents may cost the filesystem a metadata block or two.
    assert!(
        after + 8 * MIB - 64 * 1024 <= before,
        "trimming 8 MiB should free it: {before} -> {after} bytes allocated"
    );

    let map = nbdinfo_json(&["--map", &served.uri("disk")]);
    let extents = map.as_array().expect("an array of extents");
    let covering = |offset: u64| {
        extents
            .iter()
            .find(|e| {
                let start = e["offset"].as_u64().unwrap();
                start <= offset && offset < start + e["length"].as_u64().unwrap()
            })
            .unwrap_or_else(|| panic!("no extent covers {offset}: {map}"))
    };
    let hole = covering(8 * MIB);
    assert_eq!(
        hole["type"].as_u64().unwrap() & 1,
        1,
        "trimmed range is a hole: {hole}"
    );
    assert!(hole["offset"].as_u64().unwrap() + hole["length"].as_u64().unwrap() >= 16 * MIB);
    let data = covering(16 * MIB);
    assert_eq!(
        data["type"].as_u64().unwrap() & 1,
        0,
        "written range is data: {data}"
    );
    served.stop();
}

/// Each bad request gets the spec's error, the offending connection goes on, and a
/// second client is served between every case.
#[test]
fn nbdsh_error_cases_get_spec_answers_and_others_keep_being_served() {
    if !require_nbdsh() {
        return;
    }
    let home = Home::new();
    let volume = default_volume(&home);
    let export = format!("default={}", volume.display());
    let served = nbd_serve(&home, &["--export", &export]);
    nbdsh_script(&served, "default", &format!("{CLIENTS}{NEGATIVE_CASES}"));
    served.stop();

    let read_only = nbd_serve(&home, &["--read-only", "--export", &export]);
    nbdsh_script(
        &read_only,
        "default",
        &format!("{CLIENTS}{READ_ONLY_CASES}"),
    );
    read_only.stop();
}

const CLIENTS: &str = r#"
import errno, os, socket, struct
def client():
    c = nbd.NBD()
    c.set_strict_mode(0)
    c.connect_uri(os.environ["URI"])
    return c
bad, good = client(), client()
size = bad.get_size()
def expect(code, request, check_good):
    try:
        request()
    except nbd.Error as e:
        # libnbd's Python binding gives the errno by name ("EINVAL").
        got = getattr(errno, e.errno) if isinstance(e.errno, str) else e.errno
        assert got == code, f"wanted {errno.errorcode[code]}, got {e.errno}: {e.string}"
    else:
        raise AssertionError(f"wanted {errno.errorcode[code]}, the request succeeded")
    check_good()
"#;

const NEGATIVE_CASES: &str = r#"
def good_still_works():
    good.pwrite(b"ok" * 2048, 0)
    assert good.pread(4096, 0) == b"ok" * 2048
good_still_works()
expect(errno.EINVAL, lambda: bad.pread(4096, size - 512), good_still_works)
expect(errno.ENOSPC, lambda: bad.pwrite(b"x" * 4096, size - 512), good_still_works)
expect(errno.EINVAL, lambda: bad.trim(8192, size - 4096), good_still_works)
expect(errno.EINVAL, lambda: bad.pwrite(b"x" * 512, 0, nbd.CMD_FLAG_REQ_ONE), good_still_works)
expect(errno.EINVAL, lambda: bad.pread(512, 0, 1 << 12), good_still_works)
big = 33 << 20
expect(errno.EOVERFLOW, lambda: bad.pread(big, 0), good_still_works)
expect(errno.EOVERFLOW, lambda: bad.pwrite(b"y" * big, 0), good_still_works)
# The drained payload of the refused write never reached the volume.
assert bad.pread(4, 0) == b"okok"

# libnbd cannot send an unknown command; a raw socket can.
host, port = os.environ["ADDR"].rsplit(":", 1)
s = socket.create_connection((host, int(port)))
def recv(n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "the server closed the connection"
        out += chunk
    return out
assert recv(18)[:16] == b"NBDMAGICIHAVEOPT"
s.sendall(struct.pack(">I", 3))
name = b"default"
s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 6 + len(name)) + struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
while True:
    _, _, reply, length = struct.unpack(">QIII", recv(20))
    recv(length)
    assert reply < 1 << 31, f"GO refused: {reply:#x}"
    if reply == 1:
        break
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 42, 7, 0, 512))
assert struct.unpack(">IIQ", recv(16)) == (0x67446698, errno.EINVAL, 7)
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 8, 0, 4))
assert struct.unpack(">IIQ", recv(16)) == (0x67446698, 0, 8)
assert recv(4) == b"okok"
s.close()
good_still_works()
bad.shutdown()
"#;

const READ_ONLY_CASES: &str = r#"
assert bad.is_read_only()
def good_still_reads():
    good.pread(4096, 0)
expect(errno.EPERM, lambda: bad.pwrite(b"x" * 512, 0), good_still_reads)
expect(errno.EPERM, lambda: bad.trim(4096, 0), good_still_reads)
expect(errno.EPERM, lambda: bad.zero(4096, 0), good_still_reads)
bad.pread(4096, 0)
"#;

#[test]
fn bad_exports_are_refused_with_a_clear_error() {
    let home = Home::new();
    let missing = home.file("missing.vol");
    let cases: [(Vec<String>, &str); 3] = [
        (
            vec!["--export".into(), "no-equals-sign".into()],
            "NAME=PATH",
        ),
        (
            vec!["--export".into(), format!("a={}", missing.display())],
            "missing.vol",
        ),
        (
            vec![
                "--export".into(),
                format!("a={}", missing.display()),
                "--export".into(),
                format!("a={}", missing.display()),
            ],
            "given twice",
        ),
    ];
    for (args, expected) in cases {
        let out = home
            .atrest()
            .args(["nbd", "serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("listening on"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_volume_served_for_writing_is_refused_to_a_second_writer() {
    if !require_tools(&["nbdinfo"]) {
        return;
    }
    let home = Home::new();
    let volume = default_volume(&home);
    let export = format!("disk={}", volume.display());
    let first = nbd_serve(&home, &["--export", &export]);
    let out = home
        .atrest()
        .args([
            "nbd",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--export",
            &export,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second writer was started: {stderr}"
    );
    assert!(stderr.contains("already open for writing"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    // Beside the writer: a read-only server of the same volume, and the volume's info.
    let reader = nbd_serve(&home, &["--read-only", "--export", &export]);
    let info = nbdinfo_json(&[&reader.uri("disk")]);
    assert_eq!(info["exports"][0]["is_read_only"], true, "{info}");
    home.run(&["volume", "info", &volume.display().to_string()]);
    // The first server still serves, and once it stops the volume is free again.
    let info = nbdinfo_json(&[&first.uri("disk")]);
    assert_eq!(info["exports"][0]["is_read_only"], false, "{info}");
    reader.stop();
    first.stop();
    nbd_serve(&home, &["--export", &export]).stop();
}
