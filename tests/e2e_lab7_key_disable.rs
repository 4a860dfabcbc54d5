//! LAB step 7, end to end with real clients: with an encrypted volume served and
//! mounted (nbdfuse + loop + ext4), `atrest kms disable-key` makes reads fail with EIO
//! and a new connection is refused with a message naming the key and its state;
//! `enable-key` brings reads back on the same mount; scheduling deletion and letting it
//! complete (an injected clock) makes the volume unreadable for good. The trail shows
//! each Decrypt and each refused attach. `--on-key-disable keep-attached` keeps the
//! mounted volume readable but refuses new attaches.

mod common;
mod lab;

use std::fs;
use std::process::Command;

use common::{pseudo_random, run, Home, Served};
use lab::{attach, direct_read, nbdinfo, poll, require_clients};

const CONTENT_LEN: usize = (3 << 20) + 4096;

struct Setup {
    home: Home,
    key_arn: String,
    volume: std::path::PathBuf,
}

/// A key and a volume under it; `None` when the test is to be skipped.
fn setup() -> Option<Setup> {
    if !require_clients() {
        return None;
    }
    let home = Home::new();
    let key: serde_json::Value =
        serde_json::from_str(&home.run(&["kms", "create-key", "--alias", "alias/MyKMSKey"]))
            .unwrap();
    let key_arn = key["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
    let volume = home.file("root-enc.vol");
    home.run(&[
        "volume",
        "create",
        volume.to_str().unwrap(),
        "--size",
        "64M",
        "--key-id",
        "alias/MyKMSKey",
    ]);
    Some(Setup {
        home,
        key_arn,
        volume,
    })
}

fn serve(setup: &Setup, extra: &[&str]) -> Served {
    let export = format!("root={}", setup.volume.display());
    let mut args = vec![
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--export",
        &export,
    ];
    args.extend_from_slice(extra);
    setup.home.serve(&args)
}

fn kms(home: &Home, args: &[&str]) {
    let mut all = vec!["kms"];
    all.extend_from_slice(args);
    home.run(&all);
}

#[test]
fn lab7_disable_fails_closed_enable_recovers_deletion_shreds() {
    let Some(s) = setup() else { return };
    let home = &s.home;
    let served = serve(&s, &[]);
    let uri = served.uri("root");
    let mut disk = attach(home, &served, "root", "lab7");
    disk.mkfs();
    disk.mount();
    let content = pseudo_random(CONTENT_LEN, 7);
    let file = disk.path("data.bin");
    fs::write(&file, &content).unwrap();
    run(&mut Command::new("sync"));
    assert_eq!(direct_read(&file).unwrap(), content);

    // Disabled: reads on the mounted volume fail with EIO.
    kms(home, &["disable-key", "--key-id", "alias/MyKMSKey"]);
    let error = poll("reads to fail after disable-key", || {
        direct_read(&file).err()
    });
    assert!(error.contains("Input/output error"), "dd said: {error}");
    // A new attach is refused, naming the key and its state.
    let (ok, said) = nbdinfo(&uri);
    assert!(!ok, "nbdinfo attached with the key disabled:\n{said}");
    assert!(
        said.contains(&s.key_arn) && said.contains("Disabled"),
        "nbdinfo did not show the refusal naming the key:\n{said}"
    );

    // Enabled again: the same mount reads again, without reconnecting.
    kms(home, &["enable-key", "--key-id", "alias/MyKMSKey"]);
    let back = poll("reads to work after enable-key", || direct_read(&file).ok());
    assert_eq!(back, content);
    let (ok, said) = nbdinfo(&uri);
    assert!(ok, "nbdinfo refused after enable-key:\n{said}");

    // Scheduled for deletion: fails closed again.
    kms(
        home,
        &[
            "schedule-key-deletion",
            "--key-id",
            "alias/MyKMSKey",
            "--pending-window-in-days",
            "7",
        ],
    );
    poll("reads to fail while pending deletion", || {
        direct_read(&file).err()
    });
    let (ok, said) = nbdinfo(&uri);
    assert!(!ok && said.contains("PendingDeletion"), "{said}");

    // Eight days pass for the key service: the deletion completes.
    let described = home
        .atrest()
        .env("ATREST_CLOCK_OFFSET", "8d")
        .args(["kms", "describe-key", "--key-id", &s.key_arn])
        .output()
        .unwrap();
    assert!(!described.status.success());
    assert!(String::from_utf8_lossy(&described.stderr).contains("NotFoundException"));
    poll("the server to see the deletion", || {
        let (ok, said) = nbdinfo(&uri);
        (!ok && said.contains("Deleted")).then_some(())
    });
    assert!(direct_read(&file).is_err());

    // Unreadable for good: the key cannot come back and nothing can unwrap the data key.
    for args in [
        vec!["kms", "cancel-key-deletion", "--key-id", &s.key_arn],
        vec!["kms", "enable-key", "--key-id", &s.key_arn],
    ] {
        let out = home.atrest().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded after deletion");
    }
    let info: serde_json::Value =
        serde_json::from_str(&home.run(&["volume", "info", s.volume.to_str().unwrap()])).unwrap();
    assert_eq!(info["KeyState"], "Deleted");
    let copy = home
        .atrest()
        .args(["volume", "copy"])
        .arg(&s.volume)
        .arg(home.file("rescue.vol"))
        .output()
        .unwrap();
    assert!(!copy.status.success(), "a copy read the shredded volume");
    assert!(!home.file("rescue.vol").exists());
    assert!(direct_read(&file).is_err());
    drop(disk);
    served.stop();

    // The trail: each successful Decrypt, and each refused attach as a failed Decrypt.
    let decrypts = lab::trail_events(home, "Decrypt");
    let codes: Vec<Option<&str>> = decrypts
        .iter()
        .filter(|e| e["requestParameters"]["keyId"] == s.key_arn.as_str())
        .map(|e| e["errorCode"].as_str())
        .collect();
    for expected in [
        None,
        Some("DisabledException"),
        Some("KMSInvalidStateException"),
        Some("NotFoundException"),
    ] {
        assert!(
            codes.contains(&expected),
            "no Decrypt with error {expected:?} in the trail: {codes:?}"
        );
    }
    let volume_id = info["VolumeId"].as_str().unwrap();
    assert!(decrypts
        .iter()
        .all(|e| e["requestParameters"]["encryptionContext"]["atrest:volume-id"] == volume_id));
    home.run(&["trail", "validate"]);
}

#[test]
fn lab7_keep_attached_serves_the_mount_but_refuses_new_attaches() {
    let Some(s) = setup() else { return };
    let home = &s.home;
    let served = serve(
        &s,
        &[
            "--on-key-disable",
            "keep-attached",
            "--key-check-interval",
            "200ms",
        ],
    );
    let uri = served.uri("root");
    let mut disk = attach(home, &served, "root", "keep");
    disk.mkfs();
    disk.mount();
    let content = pseudo_random(CONTENT_LEN, 8);
    let file = disk.path("data.bin");
    fs::write(&file, &content).unwrap();
    run(&mut Command::new("sync"));

    kms(home, &["disable-key", "--key-id", "alias/MyKMSKey"]);
    poll("new attaches to be refused", || {
        let (ok, said) = nbdinfo(&uri);
        (!ok && said.contains("Disabled")).then_some(())
    });
    assert_eq!(direct_read(&file).unwrap(), content);
    kms(home, &["enable-key", "--key-id", "alias/MyKMSKey"]);
    poll("attaches to work again", || nbdinfo(&uri).0.then_some(()));
    assert_eq!(direct_read(&file).unwrap(), content);
    disk.detach();
    served.stop();
}
