//! fio's nbd engine against `atrest serve`: 4 KiB random writes at iodepth 32 with
//! crc32c verification read back through the same export.

mod common;

use std::process::Command;

use common::{require_tools, run, Home};
use serde_json::Value;

#[test]
fn fio_random_writes_then_verify_with_crc32c_at_iodepth_32() {
    if !require_tools(&["fio"]) {
        return;
    }
    let home = Home::new();
    let served = home.serve_default();
    let out = run(Command::new("fio").current_dir(home.path()).args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", served.uri("default")),
        "--rw=randwrite",
        "--bs=4k",
        "--size=64M",
        "--iodepth=32",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--output-format=json",
    ]));
    // The nbd engine prints "fio: connected to NBD server" before the report.
    let stdout = String::from_utf8(out.stdout).expect("fio prints UTF-8");
    let json = stdout.find('{').map_or("", |start| &stdout[start..]);
    let report: Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("fio JSON ({e}): {stdout}"));
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(
        job["write"]["io_bytes"],
        64 << 20,
        "every block written once: {job}"
    );
    assert_eq!(
        job["read"]["io_bytes"],
        64 << 20,
        "every block read back and verified: {job}"
    );
    served.stop();
}

/// Writes of 4 KiB, 64 KiB and 1 MiB mixed (the server reads the large payloads
/// straight from the socket and encrypts every write in its own buffer), over data
/// written before, verified with crc32c through the same export.
#[test]
fn fio_mixed_size_overwrites_then_verify_with_crc32c() {
    if !require_tools(&["fio"]) {
        return;
    }
    let home = Home::new();
    let served = home.serve_default();
    let uri = format!("--uri={}", served.uri("default"));
    let fio = |args: &[&str]| {
        let out = run(Command::new("fio")
            .current_dir(home.path())
            .args(["--ioengine=nbd", &uri, "--size=32M", "--output-format=json"])
            .args(args));
        let stdout = String::from_utf8(out.stdout).expect("fio prints UTF-8");
        let json = stdout.find('{').map_or("", |start| &stdout[start..]);
        let report: Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("fio JSON ({e}): {stdout}"));
        let job = report["jobs"][0].clone();
        assert_eq!(job["error"], 0, "{job}");
        job
    };
    fio(&["--name=fill", "--rw=write", "--bs=1M", "--iodepth=8"]);
    let job = fio(&[
        "--name=mixed",
        "--rw=randwrite",
        "--bssplit=4k/50:64k/25:1m/25",
        "--iodepth=16",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
    ]);
    assert_eq!(
        job["write"]["io_bytes"],
        32 << 20,
        "every block written once: {job}"
    );
    assert_eq!(
        job["read"]["io_bytes"],
        32 << 20,
        "every block read back and verified: {job}"
    );
    served.stop();
}
