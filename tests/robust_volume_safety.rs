//! Issue 15, the outside red team's volume findings, one test per finding, each
//! through the real `atrest` binary and real NBD clients (nbdinfo, nbdcopy, nbdsh):
//!
//! 1. the format of a headerless file is never guessed (a raw export's client cannot
//!    turn its bytes into a volume header, nor a damaged volume into a raw image);
//! 2. `--force` never replaces a volume that a server is writing;
//! 3. two valid header copies that disagree are never "repaired" automatically;
//! 4. a served volume follows `volume rewrap` to the new key; rewraps are serialised;
//! 5. an attach needs DescribeKey to allow the key, whatever Decrypt says (moto);
//! 6. paths that are not volumes (FIFO, /dev/null) are refused at once.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{nbdsh, require_nbdsh, require_test_venv, require_tools, run, venv_bin, Home, Served};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;
/// How long a condition the server must reach may take on a loaded machine; the
/// tests never assert that anything is fast, only that it happens.
const PATIENCE: Duration = Duration::from_secs(30);

fn key(home: &Home, alias: &str) -> String {
    let out = home.run(&["kms", "create-key", "--alias", alias]);
    let v: Value = serde_json::from_str(&out).expect("create-key prints JSON");
    v["KeyMetadata"]["Arn"].as_str().expect("an ARN").to_owned()
}

fn create(home: &Home, name: &str, size: &str, key: &str) -> PathBuf {
    let path = home.file(name);
    home.run(&[
        "volume",
        "create",
        path.to_str().unwrap(),
        "--size",
        size,
        "--key-id",
        key,
    ]);
    path
}

fn nbd_serve(home: &Home, args: &[&str]) -> Served {
    let mut all = vec!["nbd", "serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    home.serve(&all)
}

/// Runs `atrest ARGS` to completion, killing it (and failing the test) if it is still
/// running after [`PATIENCE`]: a command that blocks on what it was given is a defect.
fn atrest_bounded(home: &Home, args: &[&str]) -> Output {
    let mut child = home
        .atrest()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running atrest");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if child.try_wait().expect("waiting for atrest").is_some() {
            return child.wait_with_output().expect("atrest output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("atrest {} hung (killed after {PATIENCE:?})", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn nbdinfo_ok(uri: &str) -> bool {
    Command::new("nbdinfo")
        .arg(uri)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running nbdinfo")
        .success()
}

/// Polls `what` until it holds, failing after [`PATIENCE`].
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads `len` bytes at `offset` of the export through nbdsh.
fn nbd_read(uri: &str, offset: u64, len: u64) -> Vec<u8> {
    let out = nbdsh()
        .args(["-u", uri, "-c"])
        .arg(format!(
            "import sys; sys.stdout.buffer.write(h.pread({len}, {offset}))"
        ))
        .output()
        .expect("running nbdsh");
    assert!(out.status.success(), "nbdsh read: {}", stderr_of(&out));
    out.stdout
}

fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// Item 1: a raw export's client writes a stolen encrypted volume (both headers and
/// its ciphertext) into the raw image, and `ATRESTVL` at offset 0 of another. After a
/// restart both are still raw: the client reads back the ciphertext it wrote, never
/// the stolen volume's plaintext, and the server starts. Undeclared headerless files
/// (and volumes whose headers were wiped or truncated away) are refused with the
/// reason and the way to serve a raw image on purpose.
#[test]
fn a_raw_image_is_declared_never_guessed() {
    if !(require_tools(&["nbdcopy"]) && require_nbdsh()) {
        return;
    }
    let home = Home::new();
    let key = key(&home, "alias/victim");
    let victim = create(&home, "victim.vol", "4M", &key);
    // The victim's plaintext: a marker written through an export of it.
    let marker = b"VICTIM-PLAINTEXT-MARKER-".repeat(170);
    {
        let served = nbd_serve(&home, &["--export", &format!("v={}", victim.display())]);
        let src = home.file("marker.bin");
        let mut block = marker.clone();
        block.resize(4096, b'.');
        fs::write(&src, &block).unwrap();
        let out = nbdsh()
            .args(["-u", &served.uri("v"), "-c"])
            .arg(format!(
                "h.pwrite(open({:?}, 'rb').read(), 0); h.flush()",
                src.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        served.stop();
    }
    let stolen = fs::read(&victim).unwrap();

    let scratch = home.file("scratch.img");
    fs::File::create(&scratch)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let magic = home.file("magic.img");
    fs::File::create(&magic).unwrap().set_len(MIB).unwrap();
    let args = [
        "--export".to_owned(),
        format!("scratch={}", scratch.display()),
        "--raw".to_owned(),
        "scratch".to_owned(),
        "--export".to_owned(),
        format!("magic={}", magic.display()),
        "--raw".to_owned(),
        "magic".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let served = nbd_serve(&home, &args);
    let stolen_file = home.file("stolen.bin");
    fs::write(&stolen_file, &stolen).unwrap();
    run(Command::new("nbdcopy")
        .arg(&stolen_file)
        .arg(served.uri("scratch")));
    let out = nbdsh()
        .args(["-u", &served.uri("magic"), "-c"])
        .arg("h.pwrite(b'ATRESTVL', 0); h.flush()")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    served.stop();

    // Restarted: both still raw, the server starts, the client reads its own bytes.
    let served = nbd_serve(&home, &args);
    let back = nbd_read(&served.uri("scratch"), 0, stolen.len() as u64);
    assert!(back == stolen, "the raw export no longer reads as written");
    let data = nbd_read(&served.uri("scratch"), MIB, 4096);
    assert!(
        !data.windows(24).any(|w| w == &marker[..24]),
        "the raw export served the stolen volume's plaintext"
    );
    assert_eq!(nbd_read(&served.uri("magic"), 0, 8), b"ATRESTVL");
    served.stop();

    // The same through an exports file (`format = "raw"`).
    let exports = home.file("exports.toml");
    fs::write(
        &exports,
        format!(
            "[[export]]\nname = \"scratch\"\npath = \"{}\"\nformat = \"raw\"\n",
            scratch.display()
        ),
    )
    .unwrap();
    let served = nbd_serve(&home, &["--exports", exports.to_str().unwrap()]);
    assert!(nbd_read(&served.uri("scratch"), 0, 4096) == stolen[..4096]);
    served.stop();

    // Undeclared files without a valid header are refused, with the reason.
    let plain = home.file("plain.img");
    fs::write(&plain, vec![7u8; 2 * MIB as usize]).unwrap();
    let wiped = create(&home, "wiped.vol", "4M", &key);
    let f = fs::OpenOptions::new().write(true).open(&wiped).unwrap();
    f.write_all_at(&[0u8; 4096], 0).unwrap();
    f.write_all_at(&[0u8; 4096], 512 * 1024).unwrap();
    let wiped_data = file_bytes(&wiped, MIB, 4096);
    let emptied = create(&home, "emptied.vol", "4M", &key);
    fs::OpenOptions::new()
        .write(true)
        .open(&emptied)
        .unwrap()
        .set_len(0)
        .unwrap();
    for (path, primary) in [
        (&plain, "primary copy at offset 0: no atrest volume magic"),
        (&wiped, "primary copy at offset 0: no atrest volume magic"),
        (
            &emptied,
            "primary copy at offset 0: header truncated: 0 of 4096",
        ),
    ] {
        let out = atrest_bounded(
            &home,
            &[
                "nbd",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--export",
                &format!("x={}", path.display()),
            ],
        );
        assert!(!out.status.success(), "{} was served", path.display());
        let stderr = stderr_of(&out);
        assert!(
            stderr.contains(primary) && stderr.contains("backup copy at offset 524288"),
            "{stderr}"
        );
        assert!(stderr.contains("--raw NAME"), "{stderr}");
        let info = atrest_bounded(&home, &["volume", "info", path.to_str().unwrap()]);
        assert!(!info.status.success());
        assert!(stderr_of(&info).contains(primary), "{}", stderr_of(&info));
    }
    // The wiped volume's ciphertext was not touched by any of this.
    assert!(file_bytes(&wiped, MIB, 4096) == wiped_data);
    assert!(file_bytes(&wiped, 0, 4096) == [0u8; 4096]);
    // A --raw that names no export is a mistake, said so.
    let out = atrest_bounded(
        &home,
        &[
            "nbd",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--export",
            &format!("a={}", plain.display()),
            "--raw",
            "b",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("names no export"),
        "{}",
        stderr_of(&out)
    );
}

/// Item 2: `volume copy|snapshot|import SRC DST --force` while a server writes DST is
/// refused with the writer-lock error, and DST is the served file still.
#[test]
fn force_never_replaces_a_volume_a_server_is_writing() {
    if !require_tools(&["nbdinfo"]) {
        return;
    }
    let home = Home::new();
    let key = key(&home, "alias/k");
    let served_path = create(&home, "served.vol", "4M", &key);
    let other = create(&home, "other.vol", "4M", &key);
    let raw = home.file("disk.img");
    fs::write(&raw, vec![3u8; MIB as usize]).unwrap();
    // A served volume that happens to carry the name a copy to `busy.vol` builds
    // under: the stale-leftover cleanup must not unlink it either.
    let busy_partial = create(&home, "busy.vol.partial", "4M", &key);
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let before = inode(&served_path);
    let served = nbd_serve(
        &home,
        &[
            "--export",
            &format!("v={}", served_path.display()),
            "--export",
            &format!("p={}", busy_partial.display()),
        ],
    );
    let busy_before = inode(&busy_partial);
    let busy = home.file("busy.vol");
    let out = atrest_bounded(
        &home,
        &[
            "volume",
            "copy",
            other.to_str().unwrap(),
            busy.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "the copy unlinked a served file");
    assert!(
        stderr_of(&out).contains("already open for writing"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(inode(&busy_partial), busy_before);
    assert!(!busy.exists());
    let dst = served_path.to_str().unwrap();
    let attempts: [Vec<&str>; 3] = [
        vec!["volume", "copy", other.to_str().unwrap(), dst, "--force"],
        vec![
            "volume",
            "snapshot",
            other.to_str().unwrap(),
            dst,
            "--force",
        ],
        vec![
            "volume",
            "import",
            raw.to_str().unwrap(),
            dst,
            "--key-id",
            "alias/k",
            "--force",
        ],
    ];
    for args in &attempts {
        let out = atrest_bounded(&home, args);
        assert!(!out.status.success(), "{args:?} replaced a served volume");
        assert!(
            stderr_of(&out).contains("already open for writing"),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert_eq!(inode(&served_path), before, "{args:?} replaced the file");
        assert!(!home.file("served.vol.partial").exists());
    }
    assert!(nbdinfo_ok(&served.uri("v")));
    served.stop();
    // Nobody writes it any more: --force replaces it.
    let out = atrest_bounded(&home, &attempts[0]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_ne!(inode(&served_path), before);
}

/// Item 3: a stray `dd` of another volume's first 4 KiB leaves two valid header copies
/// of one generation with different volume ids. Opening (even for writing) refuses,
/// naming both, and rewrites neither; `volume repair --dry-run` shows both and writes
/// nothing; `--use backup` restores the volume with its data.
#[test]
fn disagreeing_header_copies_are_never_repaired_automatically() {
    if !require_nbdsh() {
        return;
    }
    let home = Home::new();
    let key_a = key(&home, "alias/a");
    let key_b = key(&home, "alias/b");
    let a = create(&home, "a.vol", "4M", &key_a);
    let b = create(&home, "b.vol", "4M", &key_b);
    let served = nbd_serve(&home, &["--export", &format!("a={}", a.display())]);
    let data = common::pseudo_random(64 * 1024, 15);
    let src = home.file("data.bin");
    fs::write(&src, &data).unwrap();
    let out = nbdsh()
        .args(["-u", &served.uri("a"), "-c"])
        .arg(format!(
            "h.pwrite(open({:?}, 'rb').read(), 0); h.flush()",
            src.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    served.stop();
    let info = |p: &Path| -> Value {
        serde_json::from_str(&home.run(&["volume", "info", p.to_str().unwrap()])).unwrap()
    };
    let (id_a, id_b) = (info(&a)["VolumeId"].clone(), info(&b)["VolumeId"].clone());
    // The stray dd.
    fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .write_all_at(&file_bytes(&b, 0, 4096), 0)
        .unwrap();
    let headers = |p: &Path| (file_bytes(p, 0, 4096), file_bytes(p, 512 * 1024, 4096));
    let damaged = headers(&a);

    let out = atrest_bounded(
        &home,
        &[
            "nbd",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--export",
            &format!("a={}", a.display()),
        ],
    );
    assert!(
        !out.status.success(),
        "a volume with disagreeing headers was served"
    );
    let stderr = stderr_of(&out);
    for needle in [
        id_a.as_str().unwrap(),
        id_b.as_str().unwrap(),
        &key_a,
        &key_b,
        "volume repair",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
    assert!(headers(&a) == damaged, "opening rewrote a header copy");
    let out = atrest_bounded(&home, &["volume", "info", a.to_str().unwrap()]);
    assert!(!out.status.success() && stderr_of(&out).contains("disagree"));

    let dry: Value = serde_json::from_str(&home.run(&[
        "volume",
        "repair",
        a.to_str().unwrap(),
        "--dry-run",
        "--use",
        "backup",
    ]))
    .unwrap();
    assert_eq!(dry["Primary"]["VolumeId"], id_b);
    assert_eq!(dry["Backup"]["VolumeId"], id_a);
    assert_eq!(dry["Primary"]["KeyId"].as_str(), Some(key_b.as_str()));
    assert_eq!(dry["Backup"]["KeyId"].as_str(), Some(key_a.as_str()));
    assert!(dry["OnOpen"].as_str().unwrap().starts_with("refused"));
    assert!(headers(&a) == damaged, "a dry run wrote");

    home.run(&["volume", "repair", a.to_str().unwrap(), "--use", "backup"]);
    assert_eq!(info(&a)["VolumeId"], id_a);
    assert_eq!(info(&a).get("HeaderWarning"), None);
    let served = nbd_serve(&home, &["--export", &format!("a={}", a.display())]);
    assert!(nbd_read(&served.uri("a"), 0, data.len() as u64) == data);
    served.stop();
}

/// Item 3 on a served volume: a stray write of another volume's header while the
/// server runs makes it refuse new attaches (fail closed, the header no longer says
/// which key governs), rewriting nothing; `volume repair --use backup` on the served
/// volume restores service without a restart.
#[test]
fn a_foreign_header_written_under_a_running_server_fails_closed_until_repaired() {
    if !require_tools(&["nbdinfo"]) {
        return;
    }
    let home = Home::new();
    let key_a = key(&home, "alias/a");
    let a = create(&home, "a.vol", "4M", &key_a);
    let b = create(&home, "b.vol", "4M", &key_a);
    let served = nbd_serve(&home, &["--export", &format!("a={}", a.display())]);
    let uri = served.uri("a");
    assert!(nbdinfo_ok(&uri));
    let backup = file_bytes(&a, 512 * 1024, 4096);
    fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .write_all_at(&file_bytes(&b, 0, 4096), 0)
        .unwrap();
    eventually("an attach is refused after the stray header write", || {
        !nbdinfo_ok(&uri)
    });
    assert!(
        file_bytes(&a, 512 * 1024, 4096) == backup,
        "the server rewrote the backup"
    );
    home.run(&["volume", "repair", a.to_str().unwrap(), "--use", "backup"]);
    eventually("attaches work again after the repair", || nbdinfo_ok(&uri));
    served.stop();
}

/// Item 4: after `volume rewrap --key-id K2` of a served volume, disabling K2 stops
/// new attaches (the server follows the header), and disabling the old K1 no longer
/// does. Concurrent rewraps are serialised: every successful one gets its own
/// generation.
#[test]
fn a_served_volume_follows_a_rewrap_and_rewraps_are_serialised() {
    if !require_tools(&["nbdinfo"]) {
        return;
    }
    let home = Home::new();
    let k1 = key(&home, "alias/k1");
    let k2 = key(&home, "alias/k2");
    let v = create(&home, "v.vol", "4M", &k1);
    let served = nbd_serve(&home, &["--export", &format!("v={}", v.display())]);
    let uri = served.uri("v");
    assert!(nbdinfo_ok(&uri));
    home.run(&[
        "volume",
        "rewrap",
        v.to_str().unwrap(),
        "--key-id",
        "alias/k2",
    ]);
    home.run(&["kms", "disable-key", "--key-id", &k2]);
    eventually(
        "an attach is refused once the new key K2 is disabled",
        || !nbdinfo_ok(&uri),
    );
    assert!(
        served.log().contains("header changed"),
        "the switch was not logged:\n{}",
        served.log()
    );
    home.run(&["kms", "enable-key", "--key-id", &k2]);
    eventually("attaches work again once K2 is enabled", || {
        nbdinfo_ok(&uri)
    });
    home.run(&["kms", "disable-key", "--key-id", &k1]);
    // K1 no longer governs this volume: attaches go on working.
    for _ in 0..5 {
        assert!(
            nbdinfo_ok(&uri),
            "disabling the old key K1 refused an attach"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    home.run(&["kms", "enable-key", "--key-id", &k1]);
    served.stop();

    // Two rewraps at once, a few times: each one that succeeds has its generation.
    let generation = |p: &Path| -> u64 {
        let v: Value =
            serde_json::from_str(&home.run(&["volume", "info", p.to_str().unwrap()])).unwrap();
        assert_eq!(v.get("HeaderWarning"), None, "{v}");
        v["HeaderGeneration"].as_u64().unwrap()
    };
    let start = generation(&v);
    let mut succeeded = 0;
    for round in 0..4 {
        let children: Vec<_> = (0..2)
            .map(|i| {
                let target = if (round + i) % 2 == 0 {
                    "alias/k1"
                } else {
                    "alias/k2"
                };
                home.atrest()
                    .args(["volume", "rewrap", v.to_str().unwrap(), "--key-id", target])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            if out.status.success() {
                succeeded += 1;
            } else {
                assert!(
                    stderr_of(&out).contains("another header update"),
                    "{}",
                    stderr_of(&out)
                );
            }
        }
    }
    assert!(succeeded > 0);
    assert_eq!(
        generation(&v),
        start + succeeded,
        "two rewraps wrote one generation"
    );
}

/// moto's server mode on a free port, killed on drop.
struct Moto {
    child: std::process::Child,
    url: String,
}

impl Moto {
    fn start() -> Moto {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let mut child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("moto_server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "moto_server never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Item 5: moto still answers Decrypt for a disabled key. Once the key is disabled,
/// new attaches must be refused anyway (DescribeKey says Disabled), and stay refused.
#[test]
fn an_attach_needs_the_key_enabled_even_when_decrypt_still_answers() {
    if !(require_test_venv(&["moto_server"]) && require_tools(&["nbdinfo"])) {
        return;
    }
    let moto = Moto::start();
    let home = Home::new();
    let env = [
        ("ATREST_KMS_ENDPOINT", moto.url.as_str()),
        ("AWS_ACCESS_KEY_ID", "AKIAMOTO"),
        ("AWS_SECRET_ACCESS_KEY", "moto-secret"),
        ("AWS_REGION", "us-east-1"),
    ];
    let atrest = |args: &[&str]| -> String {
        let out = home.atrest().envs(env).args(args).output().unwrap();
        common::assert_success(&format!("atrest {}", args.join(" ")), &out);
        String::from_utf8(out.stdout).unwrap()
    };
    let key: Value = serde_json::from_str(&atrest(&["kms", "create-key"])).unwrap();
    let key = key["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let v = home.file("v.vol");
    atrest(&[
        "volume",
        "create",
        v.to_str().unwrap(),
        "--size",
        "4M",
        "--key-id",
        &key,
    ]);
    let served = home.serve_env(
        &env,
        &[
            "nbd",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--key-check-interval",
            "200ms",
            "--export",
            &format!("v={}", v.display()),
        ],
    );
    let uri = served.uri("v");
    assert!(nbdinfo_ok(&uri));
    atrest(&["kms", "disable-key", "--key-id", &key]);
    eventually("an attach is refused once the key is disabled", || {
        !nbdinfo_ok(&uri)
    });
    // Refused for good, not only until the next attach re-unwraps with Decrypt.
    for _ in 0..5 {
        assert!(!nbdinfo_ok(&uri), "a disabled key admitted a client");
    }
    atrest(&["kms", "enable-key", "--key-id", &key]);
    eventually("attaches work again once the key is enabled", || {
        nbdinfo_ok(&uri)
    });
    served.stop();
}

/// Item 5, keep-attached: the moment the CMK's deletion completes while the server
/// still holds the data key for its clients is logged at WARN.
#[test]
fn keep_attached_warns_when_the_key_deletion_completes() {
    if !require_tools(&["nbdinfo"]) {
        return;
    }
    let home = Home::new();
    let key = key(&home, "alias/doomed");
    let v = create(&home, "v.vol", "4M", &key);
    let served = nbd_serve(
        &home,
        &[
            "--on-key-disable",
            "keep-attached",
            "--export",
            &format!("v={}", v.display()),
        ],
    );
    assert!(nbdinfo_ok(&served.uri("v")));
    home.run(&[
        "kms",
        "schedule-key-deletion",
        "--key-id",
        &key,
        "--pending-window-in-days",
        "7",
    ]);
    // Eight days later someone uses the key service: the deletion completes.
    let out = home
        .atrest()
        .env("ATREST_CLOCK_OFFSET", "8d")
        .args(["kms", "describe-key", "--key-id", &key])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the key outlived its deletion date");
    eventually("the completed deletion is logged", || {
        served.log().contains("deletion has completed")
    });
    assert!(served.log().contains(" WARN "), "{}", served.log());
    served.stop();
}

/// Item 6: a FIFO, /dev/null and /dev/zero are no volumes: every command refuses them
/// at once, naming the file type, and nothing blocks. `volume create` that the
/// filesystem (here: the file size limit) cannot hold says so in one line naming the
/// target.
#[test]
fn paths_that_are_not_volumes_are_refused_at_once() {
    let home = Home::new();
    let fifo = home.file("pipe");
    run(Command::new("mkfifo").arg(&fifo));
    let fifo = fifo.to_str().unwrap();
    let snap = home.file("snap.vol");
    let snap = snap.to_str().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["volume".into(), "info".into(), fifo.into()], "FIFO"),
        (
            vec!["volume".into(), "snapshot".into(), fifo.into(), snap.into()],
            "FIFO",
        ),
        (vec!["volume".into(), "rewrap".into(), fifo.into()], "FIFO"),
        (
            vec![
                "nbd".into(),
                "serve".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--export".into(),
                format!("p={fifo}"),
            ],
            "FIFO",
        ),
        (
            vec![
                "nbd".into(),
                "serve".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--export".into(),
                format!("p={fifo}"),
                "--raw".into(),
                "p".into(),
            ],
            "FIFO",
        ),
        (
            vec![
                "nbd".into(),
                "serve".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--export".into(),
                "n=/dev/null".into(),
                "--raw".into(),
                "n".into(),
            ],
            "character device",
        ),
        (
            vec![
                "nbd".into(),
                "serve".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--export".into(),
                "z=/dev/zero".into(),
                "--raw".into(),
                "z".into(),
            ],
            "character device",
        ),
    ];
    for (args, kind) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = atrest_bounded(&home, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = stderr_of(&out);
        assert!(
            stderr.contains(kind)
                && stderr.contains("a volume is a regular file or a block device"),
            "{args:?}: {stderr}"
        );
    }

    // The file size limit stands in for a filesystem that cannot hold the volume.
    let big = home.file("big.vol");
    let out = Command::new("sh")
        .args(["-c", "trap '' XFSZ; ulimit -f 1024; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_atrest"))
        .args(["--home", home.path().to_str().unwrap()])
        .args([
            "volume",
            "create",
            big.to_str().unwrap(),
            "--size",
            "16M",
            "--unencrypted",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!("cannot create {}", big.display()))
            && lines[0].contains("cannot hold")
            && !lines[0].contains(".partial")
            && lines[0].matches("File too large").count() == 1,
        "{stderr}"
    );
    assert!(!big.exists());
    let leftovers: Vec<_> = fs::read_dir(home.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
