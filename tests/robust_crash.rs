//! Crash consistency: `kill -9` at arbitrary points of the server and the commands
//! that change state, then check that what was acknowledged is still there and that
//! everything still opens.
//!
//! - NBD: a client (nbdsh, python3-libnbd) writes unaligned, never-zero blocks to
//!   distinct places with a FLUSH after every few, and logs each acknowledged FLUSH;
//!   the server is killed mid-stream; every write before the last acknowledged FLUSH
//!   reads back intact, and the volume serves again.
//! - `volume import`/`copy`/`rewrap`: killed at a range of delays, the source is
//!   untouched and the destination is either absent or complete (never half a volume
//!   under its name); a rewrapped volume always opens with its data.
//! - `kms create-key`/`rotate-key-on-demand`/`disable-key`/`enable-key`: killed at a
//!   range of delays, the keystore opens, every acknowledged key exists, and
//!   `trail validate` passes (an interrupted final record is a note, as designed).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use blockdev::volume;
use common::{nbdsh, pseudo_random, require_nbdsh, Home};
use crypto_core::kms::{KeyService, ListRequest, LocalKms, LocalKmsConfig};
use crypto_core::trail::Trail;

const MIB: u64 = 1024 * 1024;

/// Where write `i` of the NBD client goes and what it writes: distinct 20000-byte
/// slots, unaligned lengths, bytes that are never zero (so a lost write cannot pass
/// for a hole). `CLIENT` below computes the same.
fn block(i: u64) -> (u64, Vec<u8>) {
    let len = 1 + (i * 7919) % 19999;
    let data = (0..len).map(|j| ((i * 31 + j) % 251 + 1) as u8).collect();
    (i * 20000, data)
}

const CLIENT: &str = r#"
import sys
i = 0
while True:
    length = 1 + (i * 7919) % 19999
    data = bytes(((i * 31 + j) % 251 + 1) for j in range(length))
    h.pwrite(data, i * 20000)
    i += 1
    if i % 8 == 0:
        h.flush()
        print(f"flushed {i}", flush=True)
    if i * 20000 + 20000 > h.get_size():
        break
"#;

fn kms(home: &Path) -> LocalKms {
    LocalKms::open(home, LocalKmsConfig::new()).expect("the keystore opens")
}

fn validate_trail(home: &Path) -> Vec<String> {
    let trail = Trail::open(&home.join("trail"), "local", "000000000000").expect("trail opens");
    let report = trail.validate().expect("trail validate passes");
    for note in &report.notes {
        assert!(
            note.contains("incomplete final record") || note.contains("was not updated"),
            "unexpected note: {note}"
        );
    }
    report.notes
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn kill_9_during_flushed_nbd_writes_loses_nothing_flushed() {
    if !require_nbdsh() {
        return;
    }
    let home = Home::new();
    let key = home.run(&["kms", "create-key"]);
    let key: serde_json::Value = serde_json::from_str(&key).unwrap();
    let key = key["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
    let path = home.file("crash.vol");
    home.run(&[
        "volume",
        "create",
        path.to_str().unwrap(),
        "--size",
        "64M",
        "--key-id",
        &key,
    ]);

    let served = home.serve(&[
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--export",
        &format!("crash={}", path.display()),
    ]);
    let mut client = nbdsh()
        .args(["-u", &served.uri("crash"), "-c", CLIENT])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nbdsh");
    let (tx, flushed) = mpsc::channel();
    let stdout = client.stdout.take().expect("stdout");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("flushed ") {
                let _ = tx.send(n.trim().parse::<u64>().expect("a count"));
            }
        }
    });
    // Kill the server once a good number of writes were flushed, while the client is
    // still writing (it stops only at the end of the volume, ~3300 writes).
    let mut last_flushed = 0;
    while last_flushed < 400 {
        last_flushed = flushed
            .recv_timeout(Duration::from_secs(120))
            .expect("the client keeps flushing");
    }
    drop(served);
    let _ = client.wait();
    while let Ok(n) = flushed.try_recv() {
        last_flushed = n;
    }
    assert!(
        last_flushed * 20000 < 64 * MIB,
        "the kill came after the client finished"
    );

    let volume = volume::open(&path, &kms(home.path()), true).expect("the volume opens");
    for i in 0..last_flushed {
        let (offset, data) = block(i);
        let mut stored = vec![0u8; data.len()];
        volume.read_at(offset, &mut stored).expect("read back");
        assert!(
            stored == data,
            "write {i} of {last_flushed} flushed writes was lost or torn"
        );
    }
    drop(volume);
    let served = home.serve(&[
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--export",
        &format!("crash={}", path.display()),
    ]);
    served.stop();
    validate_trail(home.path());
}

/// Runs `atrest ARGS` and kills it after `delay`; true if it finished first, with
/// success.
fn run_killed(home: &Home, args: &[&str], delay: Duration) -> bool {
    let mut child = home
        .atrest()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start atrest");
    thread::sleep(delay);
    match child.try_wait().expect("poll") {
        Some(status) => status.success(),
        None => {
            kill9(&mut child);
            false
        }
    }
}

/// Kill points for a rewrap, which takes milliseconds.
fn delays() -> impl Iterator<Item = Duration> {
    [0u64, 2, 5, 10, 20, 40, 80, 150, 300, 600]
        .into_iter()
        .map(Duration::from_millis)
}

/// Kill points from the start to 1.2 times `whole`, so some runs finish first.
fn spread(whole: Duration) -> impl Iterator<Item = Duration> {
    (0..=12u32).map(move |tenth| whole * tenth / 10)
}

/// The volume at `path` opens and holds `payload` at its start, middle and end.
fn check_volume(home: &Path, path: &Path, payload: &[u8]) {
    let volume = volume::open(path, &kms(home), true).expect("a published volume opens");
    for at in [0, payload.len() / 2, payload.len() - MIB as usize] {
        let mut stored = vec![0u8; MIB as usize];
        volume.read_at(at as u64, &mut stored).unwrap();
        assert!(
            stored == payload[at..at + MIB as usize],
            "{} differs at {at}",
            path.display()
        );
    }
}

fn sha(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).expect("open");
    let mut all = Vec::new();
    file.read_to_end(&mut all).expect("read");
    all
}

#[test]
fn kill_9_during_import_copy_and_rewrap_leaves_no_half_volume() {
    let home = Home::new();
    let out = home.run(&["kms", "create-key", "--alias", "alias/crash"]);
    assert!(out.contains("KeyMetadata"));
    home.run(&["kms", "create-key", "--alias", "alias/other"]);
    let raw = home.file("source.img");
    let payload = pseudo_random(48 * MIB as usize, 7);
    std::fs::write(&raw, &payload).unwrap();
    let raw_before = sha(&raw);

    // One uninterrupted import first: its duration spreads the kills below over the
    // whole run (a scale for the delays, not an assertion about speed).
    let source = home.file("imported-complete.vol");
    let began = Instant::now();
    home.run(&[
        "volume",
        "import",
        raw.to_str().unwrap(),
        source.to_str().unwrap(),
        "--key-id",
        "alias/crash",
    ]);
    let import_time = began.elapsed();
    check_volume(home.path(), &source, &payload);

    let mut published = 0;
    for (round, delay) in spread(import_time).enumerate() {
        let dst = home.file(&format!("imported-{round}.vol"));
        let done = run_killed(
            &home,
            &[
                "volume",
                "import",
                raw.to_str().unwrap(),
                dst.to_str().unwrap(),
                "--key-id",
                "alias/crash",
            ],
            delay,
        );
        assert!(sha(&raw) == raw_before, "import changed its source");
        if dst.exists() {
            check_volume(home.path(), &dst, &payload);
            published += 1;
        } else {
            assert!(!done, "import reported success without a volume");
            // Run again to the end: the leftover of the killed run is no obstacle.
            home.run(&[
                "volume",
                "import",
                raw.to_str().unwrap(),
                dst.to_str().unwrap(),
                "--key-id",
                "alias/crash",
            ]);
            check_volume(home.path(), &dst, &payload);
        }
    }
    println!("import ({import_time:?} uninterrupted): {published} of 13 finished before the kill");

    let source_before = sha(&source);
    let began = Instant::now();
    let full_copy = home.file("copy-complete.vol");
    home.run(&[
        "volume",
        "copy",
        source.to_str().unwrap(),
        full_copy.to_str().unwrap(),
        "--key-id",
        "alias/other",
    ]);
    let copy_time = began.elapsed();
    check_volume(home.path(), &full_copy, &payload);
    for (round, delay) in spread(copy_time).enumerate() {
        let dst = home.file(&format!("copy-{round}.vol"));
        run_killed(
            &home,
            &[
                "volume",
                "copy",
                source.to_str().unwrap(),
                dst.to_str().unwrap(),
                "--key-id",
                "alias/other",
            ],
            delay,
        );
        assert!(sha(&source) == source_before, "copy changed its source");
        if dst.exists() {
            check_volume(home.path(), &dst, &payload);
        }
    }

    // Rewrap back and forth between two CMKs: at every kill point the volume opens
    // with its data (the data key never changes, only its wrapping).
    for (round, delay) in delays().enumerate() {
        let key = if round % 2 == 0 {
            "alias/other"
        } else {
            "alias/crash"
        };
        run_killed(
            &home,
            &[
                "volume",
                "rewrap",
                source.to_str().unwrap(),
                "--key-id",
                key,
            ],
            delay,
        );
        let volume = volume::open(&source, &kms(home.path()), true).unwrap_or_else(|err| {
            panic!("round {round}: the rewrapped volume does not open: {err}")
        });
        let mut head = vec![0u8; MIB as usize];
        volume.read_at(0, &mut head).unwrap();
        assert!(
            head == payload[..MIB as usize],
            "round {round}: rewrap changed the data"
        );
    }
    validate_trail(home.path());
}

#[test]
fn kill_9_during_key_changes_keeps_keystore_and_trail_whole() {
    let home = Home::new();
    let out = home.run(&["kms", "create-key", "--alias", "alias/loop"]);
    assert!(out.contains("KeyMetadata"));
    let mut acknowledged = Vec::new();
    let mut kills = 0;
    for round in 0..40u64 {
        let delay = Duration::from_millis((round * 7) % 45);
        let (args, label): (Vec<&str>, &str) = match round % 4 {
            0 => (vec!["kms", "create-key", "--description"], "create"),
            1 => (
                vec!["kms", "rotate-key-on-demand", "--key-id", "alias/loop"],
                "rotate",
            ),
            2 => (
                vec!["kms", "disable-key", "--key-id", "alias/loop"],
                "disable",
            ),
            _ => (
                vec!["kms", "enable-key", "--key-id", "alias/loop"],
                "enable",
            ),
        };
        let description = format!("crash-round-{round}");
        let mut args = args;
        if label == "create" {
            args.push(&description);
        }
        if run_killed(&home, &args, delay) {
            if label == "create" {
                acknowledged.push(description.clone());
            }
        } else {
            kills += 1;
        }
        // After every kill the key service must open and answer.
        let service = kms(home.path());
        service
            .list_keys(&ListRequest::default())
            .expect("list keys after a kill");
    }
    println!(
        "{kills} of 40 key changes killed; {} creates acknowledged",
        acknowledged.len()
    );

    let service = kms(home.path());
    let keys = service.list_keys(&ListRequest::default()).unwrap().items;
    let descriptions: Vec<String> = keys
        .iter()
        .map(|k| {
            service
                .describe_key(&k.key_id)
                .expect("every key describes")
                .description
        })
        .collect();
    for description in &acknowledged {
        assert!(
            descriptions.contains(description),
            "acknowledged key {description} is gone"
        );
    }
    // The key every round touched still works: enabled again, it seals and opens.
    service.enable_key("alias/loop").expect("enable");
    let context = Default::default();
    let sealed = service
        .encrypt("alias/loop", b"after the kills", &context)
        .expect("encrypt");
    let opened = service
        .decrypt(&crypto_core::kms::DecryptRequest {
            ciphertext_blob: sealed.ciphertext_blob,
            encryption_context: context,
            key_id: None,
        })
        .expect("decrypt");
    assert_eq!(opened.plaintext.expose(), b"after the kills");
    let _ = validate_trail(home.path());
    home.run(&["trail", "validate"]);
}
