//! Key pages that cannot be locked in RAM (`RLIMIT_MEMLOCK` exhausted, no
//! `CAP_IPC_LOCK`) do not stop atrest: each process warns once and goes on, and what it
//! made is whole. With the limit available, no warning.

mod common;

use std::process::{Command, Output};

use common::{assert_success, nbdsh, pseudo_random, require_nbdsh, require_tools, Home};

const WARNING: &str = "cannot lock key memory in RAM";

/// `atrest ARGS` with a locked-memory limit of 0 and, for root, without
/// `CAP_IPC_LOCK` (which ignores the limit).
fn atrest_unlockable(home: &Home, args: &[&str]) -> Output {
    let inner = home.atrest();
    let mut cmd = Command::new("prlimit");
    cmd.arg("--memlock=0:0");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    if root {
        cmd.args([
            "setpriv",
            "--bounding-set=-ipc_lock",
            "--inh-caps=-ipc_lock",
        ]);
    }
    cmd.arg(inner.get_program()).args(args);
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd.output().expect("run atrest under prlimit")
}

fn warnings(out: &Output) -> usize {
    String::from_utf8_lossy(&out.stderr)
        .matches(WARNING)
        .count()
}

#[test]
fn without_lockable_memory_commands_warn_once_and_work() {
    if !(require_tools(&["prlimit", "setpriv"]) && require_nbdsh()) {
        return;
    }
    let home = Home::new();
    let create = atrest_unlockable(&home, &["kms", "create-key", "--alias", "alias/m"]);
    assert_success("kms create-key without lockable memory", &create);
    assert_eq!(
        warnings(&create),
        1,
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );

    let raw = home.file("disk.raw");
    let data = pseudo_random(3 << 20, 7);
    std::fs::write(&raw, &data).unwrap();
    let vol = home.file("disk.vol");
    let import = atrest_unlockable(
        &home,
        &[
            "volume",
            "import",
            raw.to_str().unwrap(),
            vol.to_str().unwrap(),
            "--key-id",
            "alias/m",
        ],
    );
    assert_success("volume import without lockable memory", &import);
    assert_eq!(
        warnings(&import),
        1,
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );

    // Read back by a server that may lock: no warning, the data intact.
    let served = home.serve(&[
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--export",
        &format!("disk={}", vol.display()),
    ]);
    let out = nbdsh()
        .args(["-u", &served.uri("disk"), "-c"])
        .arg("import sys; sys.stdout.buffer.write(h.pread(3 << 20, 0))")
        .output()
        .expect("nbdsh");
    assert_success("nbdsh read", &out);
    assert!(
        out.stdout == data,
        "the imported volume reads back different bytes"
    );
    let log = served.log();
    served.stop();
    assert!(
        !log.contains(WARNING),
        "a server that may lock warned: {log}"
    );

    let info = home
        .atrest()
        .args(["volume", "info", vol.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success("volume info", &info);
    assert_eq!(warnings(&info), 0);
}
