//! LAB step 6, end to end with real clients: an unencrypted 256 MiB root volume with
//! an ext4 filesystem and files on it (made through nbdfuse + loop), a snapshot of it,
//! an encrypted copy under `alias/MyKMSKey` (fresh data key), swapped in under the
//! export name `root` with SIGHUP, mounted again: files and checksums intact, and the
//! encrypted file holds none of the plaintext. Across the swap the clients of `root`
//! are disconnected while the clients of an untouched export keep working.

mod common;
mod lab;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{pseudo_random, run, Home};
use lab::{attach, poll, require_clients};
use sha2::{Digest, Sha256};

/// Files written on the root filesystem: name, length, seed.
const FILES: [(&str, usize, u64); 3] = [
    ("etc/hostname", 4096 * 3 + 17, 11),
    ("boot/vmlinuz", 5 << 20, 12),
    ("home/user/notes.bin", (1 << 20) + 333, 13),
];
/// A text that must be findable in the plain volume file and absent from the encrypted one.
const MARKER: &str = "atrest-lab6-plaintext-marker-5e1f0c";

fn exports_toml(root: &str) -> String {
    format!(
        "[[export]]\nname = \"root\"\npath = \"{root}\"\ndescription = \"root volume\"\n\n\
         [[export]]\nname = \"data\"\npath = \"data.vol\"\nread_only = true\n"
    )
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn lab6_snapshot_encrypted_copy_and_swap_of_the_root_volume() {
    if !(require_clients() && common::require_nbdsh()) {
        return;
    }
    let home = Home::new();
    let key: serde_json::Value = serde_json::from_str(&home.run(&[
        "kms",
        "create-key",
        "--alias",
        "alias/MyKMSKey",
        "--description",
        "LAB step 6",
    ]))
    .unwrap();
    let key_arn = key["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();

    // The unencrypted root volume, and a second export that the swap must not disturb.
    let root = home.file("root.vol");
    home.run(&[
        "volume",
        "create",
        root.to_str().unwrap(),
        "--size",
        "256M",
        "--unencrypted",
    ]);
    let data = home.file("data.vol");
    home.run(&[
        "volume",
        "create",
        data.to_str().unwrap(),
        "--size",
        "4M",
        "--unencrypted",
    ]);
    let exports = home.file("exports.toml");
    fs::write(&exports, exports_toml("root.vol")).unwrap();
    let served = home.serve(&[
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--exports",
        exports.to_str().unwrap(),
    ]);

    // An ext4 root filesystem with files on it, through nbdfuse + loop.
    let mut checksums = Vec::new();
    {
        let mut disk = attach(&home, &served, "root", "plain");
        disk.mkfs();
        disk.mount();
        for (name, len, seed) in FILES {
            let path = disk.path(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut content = pseudo_random(len, seed);
            content[..MARKER.len()].copy_from_slice(MARKER.as_bytes());
            checksums.push((name, sha256(&content)));
            fs::write(&path, &content).unwrap();
        }
        run(&mut Command::new("sync"));
        disk.detach();
    }
    let plain_bytes = fs::read(&root).unwrap();
    assert!(
        contains(&plain_bytes, MARKER.as_bytes()),
        "the unencrypted volume must hold the files in the clear"
    );

    // Snapshot, then the encrypted copy of the snapshot under alias/MyKMSKey.
    let snap = home.file("root-snap.vol");
    let made: serde_json::Value = serde_json::from_str(&home.run(&[
        "volume",
        "snapshot",
        root.to_str().unwrap(),
        snap.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(made["ReadOnly"], true);
    assert_eq!(made["Encrypted"], false);
    let enc = home.file("root-enc.vol");
    let made: serde_json::Value = serde_json::from_str(&home.run(&[
        "volume",
        "copy",
        snap.to_str().unwrap(),
        enc.to_str().unwrap(),
        "--key-id",
        "alias/MyKMSKey",
    ]))
    .unwrap();
    assert_eq!(made["Encrypted"], true);
    assert_eq!(made["KeyId"], key_arn.as_str());
    let enc_volume_id = made["VolumeId"].as_str().unwrap().to_owned();
    assert_eq!(
        fs::read(&root).unwrap(),
        plain_bytes,
        "copying modified the source"
    );
    assert!(!home.file("root-enc.vol.partial").exists());
    // A copy onto an existing file is refused without --force.
    let refused = home
        .atrest()
        .args(["volume", "copy"])
        .arg(&snap)
        .arg(&enc)
        .args(["--key-id", "alias/MyKMSKey"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already exists"));

    // The encrypted file contains none of the plaintext.
    let enc_bytes = fs::read(&enc).unwrap();
    assert!(!contains(&enc_bytes, MARKER.as_bytes()));
    for (_, len, seed) in FILES {
        let sample = &pseudo_random(len, seed)[4096..4096 + 64];
        assert!(
            !contains(&enc_bytes, sample),
            "plaintext found in the encrypted volume"
        );
    }
    drop(enc_bytes);

    // Clients attached across the swap: one to root (must be disconnected), one to
    // data (must keep working).
    let mut clients = common::nbdsh()
        .args([
            "-c",
            &clients_script(&served.uri("root"), &served.uri("data")),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting nbdsh");
    let mut said = BufReader::new(clients.stdout.take().unwrap()).lines();
    assert_eq!(said.next().unwrap().unwrap(), "attached");

    // The swap: point `root` at the encrypted copy and send SIGHUP.
    fs::write(&exports, exports_toml("root-enc.vol")).unwrap();
    run(Command::new("kill").args(["-HUP", &served.pid().to_string()]));
    poll("the swap of root", || {
        served.log().contains("swapped [\"root\"]").then_some(())
    });
    writeln!(clients.stdin.take().unwrap(), "go").unwrap();
    assert_eq!(said.next().unwrap().unwrap(), "root: disconnected");
    assert_eq!(said.next().unwrap().unwrap(), "data: still served");
    assert!(clients.wait().unwrap().success());

    // Mounted again through a new connection: the encrypted volume, same files.
    {
        let mut disk = attach(&home, &served, "root", "enc");
        disk.mount();
        for (name, sum) in &checksums {
            let got = fs::read(disk.path(name)).unwrap();
            assert_eq!(&sha256(&got), sum, "{name} differs after the swap");
        }
        disk.detach();
    }
    served.stop();

    // The trail shows the Decrypt of the copy's data key, bound to its volume id.
    let decrypts = lab::trail_events(&home, "Decrypt");
    assert!(
        decrypts.iter().any(|e| e["errorCode"].is_null()
            && e["requestParameters"]["encryptionContext"]["atrest:volume-id"]
                == enc_volume_id.as_str()),
        "no Decrypt of the encrypted root volume's data key in the trail"
    );
    let info: serde_json::Value =
        serde_json::from_str(&home.run(&["volume", "info", enc.to_str().unwrap()])).unwrap();
    assert_eq!(info["KeyState"], "Enabled");
}

/// nbdsh: attach to both exports, say so, wait for a line on stdin, then report what
/// a read on each connection does.
fn clients_script(root: &str, data: &str) -> String {
    format!(
        r#"
import sys
r = nbd.NBD(); r.connect_uri("{root}")
d = nbd.NBD(); d.connect_uri("{data}")
r.pread(4096, 0); d.pread(4096, 0)
print("attached", flush=True)
sys.stdin.readline()
try:
    r.pread(4096, 0)
    print("root: still served", flush=True)
except nbd.Error:
    print("root: disconnected", flush=True)
d.pread(4096, 0)
print("data: still served", flush=True)
"#
    )
}
