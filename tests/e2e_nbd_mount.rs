//! A real filesystem on an atrest export. The kernel here has no nbd module, so the
//! export is turned into a block device the other way: nbdfuse shows it as a file,
//! losetup makes that file a loop device, then mkfs.ext4 and mount. Files written
//! before a server restart read back byte-equal after it.

mod common;
mod lab;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{pseudo_random, require_root, require_tools, run, Home};
use lab::{attach_with, LoopIo};

/// The files the test writes: path inside the filesystem, length, seed.
const FILES: [(&str, usize, u64); 3] = [
    ("a.bin", 3 << 20, 1),
    ("dir/b.bin", (1 << 20) + 123, 2),
    ("dir/deeper/c.bin", 4096 * 7 + 1, 3),
];

fn write_files(root: &Path) {
    for (name, len, seed) in FILES {
        let path = root.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, pseudo_random(len, seed)).unwrap();
    }
}

fn check_files(root: &Path) {
    for (name, len, seed) in FILES {
        let got = fs::read(root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            got == pseudo_random(len, seed),
            "{name} differs after the restart"
        );
    }
}

#[test]
fn ext4_on_an_export_survives_a_server_restart() {
    if !(require_root() && require_tools(&["nbdfuse", "losetup", "mkfs.ext4", "mount", "umount"])) {
        return;
    }
    let home = Home::new();

    let served = home.serve_default();
    let mut attached = attach_with(&home, &served, "default", "1", LoopIo::Buffered);
    run(Command::new("mkfs.ext4").args(["-q", "-F", attached.device()]));
    attached.mount();
    write_files(&attached.mount_dir);
    check_files(&attached.mount_dir);
    attached.detach();
    served.stop();

    let served = home.serve_default();
    let mut attached = attach_with(&home, &served, "default", "2", LoopIo::Buffered);
    attached.mount();
    check_files(&attached.mount_dir);
    attached.detach();
    served.stop();
}
