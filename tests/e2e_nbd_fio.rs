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
