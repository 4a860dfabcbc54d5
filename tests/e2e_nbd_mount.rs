//! A real filesystem on an atrest export. The kernel here has no nbd module, so the
//! export is turned into a block device the other way: nbdfuse shows it as a file,
//! losetup makes that file a loop device, then mkfs.ext4 and mount. Files written
//! before a server restart read back byte-equal after it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{pseudo_random, require_tool, run, Home, Served};

/// The files the test writes: path inside the filesystem, length, seed.
const FILES: [(&str, usize, u64); 3] = [
    ("a.bin", 3 << 20, 1),
    ("dir/b.bin", (1 << 20) + 123, 2),
    ("dir/deeper/c.bin", 4096 * 7 + 1, 3),
];

/// An export attached as a loop device (and maybe mounted). Dropping it undoes
/// whatever was done, so a failing test leaves no mounts or loop devices behind.
struct Attached {
    nbdfuse: Option<Child>,
    fuse_dir: PathBuf,
    loop_device: Option<String>,
    mount_dir: PathBuf,
    mounted: bool,
}

fn attach(home: &Home, served: &Served, round: u32) -> Attached {
    let fuse_dir = home.file(&format!("fuse-{round}"));
    let mount_dir = home.file(&format!("mnt-{round}"));
    fs::create_dir_all(&fuse_dir).unwrap();
    fs::create_dir_all(&mount_dir).unwrap();
    let pidfile = home.file(&format!("nbdfuse-{round}.pid"));
    let child = Command::new("nbdfuse")
        .arg(common::NBDFUSE_SINGLE_THREADED)
        .arg("-P")
        .arg(&pidfile)
        .arg(fuse_dir.join("disk"))
        .arg(served.uri("default"))
        .stdin(Stdio::null())
        .spawn()
        .expect("starting nbdfuse");
    let mut attached = Attached {
        nbdfuse: Some(child),
        fuse_dir,
        loop_device: None,
        mount_dir,
        mounted: false,
    };
    // nbdfuse writes its pid file once the FUSE file is ready.
    let started = Instant::now();
    while !pidfile.exists() {
        if let Some(status) = attached.nbdfuse.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "nbdfuse exited with {status}; server log:\n{}",
                served.log()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nbdfuse never became ready"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let out = run(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(attached.fuse_dir.join("disk")));
    attached.loop_device = Some(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    attached
}

impl Attached {
    fn device(&self) -> &str {
        self.loop_device.as_deref().expect("attached")
    }

    fn mount(&mut self) {
        run(Command::new("mount")
            .arg(self.device())
            .arg(&self.mount_dir));
        self.mounted = true;
    }

    /// Unmounts, detaches and stops nbdfuse, checking that each step succeeds.
    fn detach(mut self) {
        if self.mounted {
            run(Command::new("umount").arg(&self.mount_dir));
            self.mounted = false;
        }
        if let Some(device) = self.loop_device.take() {
            run(Command::new("losetup").args(["--detach", &device]));
        }
        if let Some(mut child) = self.nbdfuse.take() {
            run(Command::new("umount").arg(&self.fuse_dir));
            let status = child.wait().unwrap();
            assert!(status.success(), "nbdfuse exited with {status}");
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let quiet = |cmd: &mut Command| {
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        if self.mounted {
            quiet(Command::new("umount").arg("--lazy").arg(&self.mount_dir));
        }
        if let Some(device) = self.loop_device.take() {
            quiet(Command::new("losetup").args(["--detach", &device]));
        }
        if let Some(mut child) = self.nbdfuse.take() {
            quiet(Command::new("umount").arg("--lazy").arg(&self.fuse_dir));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

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
    for tool in ["nbdfuse", "losetup", "mkfs.ext4", "mount", "umount"] {
        require_tool(tool);
    }
    let home = Home::new();

    let served = home.serve_default();
    let mut attached = attach(&home, &served, 1);
    run(Command::new("mkfs.ext4").args(["-q", "-F", attached.device()]));
    attached.mount();
    write_files(&attached.mount_dir);
    check_files(&attached.mount_dir);
    attached.detach();
    served.stop();

    let served = home.serve_default();
    let mut attached = attach(&home, &served, 2);
    attached.mount();
    check_files(&attached.mount_dir);
    attached.detach();
    served.stop();
}
