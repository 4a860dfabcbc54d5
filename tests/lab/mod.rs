//! What the LAB step 6 and 7 tests and e2e_nbd_mount share: an export attached as a
//! block device the way this kernel allows (nbdfuse shows it as a file, losetup makes
//! that a loop device, with direct I/O for the lab), an ext4 filesystem on it, uncached
//! reads, and polling.
// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{require_root, require_tools, run, Home, Served};

/// How long anything that should happen "within a second" may take on a loaded
/// machine before the test gives up. Tests never assert timing; this only bounds polls.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// `true` when the test runs as root and every client the lab uses is installed;
/// otherwise the skip decision (see `common::system`).
#[must_use = "a test returns early when this is false"]
pub fn require_clients() -> bool {
    require_root()
        && require_tools(&[
            "nbdfuse",
            "nbdinfo",
            "losetup",
            "mkfs.ext4",
            "mount",
            "umount",
            "dd",
        ])
}

/// How the loop device over the nbdfuse file reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LoopIo {
    /// `--direct-io=on`: reads reach the server instead of the FUSE file's page cache.
    Direct,
    /// The loop driver's default, buffered through the page cache.
    Buffered,
}

/// An export attached as a loop device (and maybe mounted). Dropping it undoes
/// whatever was done, so a failing test leaves no mounts or loop devices behind.
pub struct Attached {
    nbdfuse: Option<Child>,
    fuse_dir: PathBuf,
    loop_device: Option<String>,
    pub mount_dir: PathBuf,
    mounted: bool,
}

/// nbdfuse `export` of `served` to a file, then a loop device over it with direct I/O
/// (so reads reach the server instead of the FUSE file's page cache).
pub fn attach(home: &Home, served: &Served, export: &str, tag: &str) -> Attached {
    attach_with(home, served, export, tag, LoopIo::Direct)
}

/// nbdfuse `export` of `served` to a file in `home`, then a loop device over it read as
/// `io` says; `tag` names the directories, so one home can attach several times.
pub fn attach_with(home: &Home, served: &Served, export: &str, tag: &str, io: LoopIo) -> Attached {
    let uri = served.uri(export);
    let fuse_dir = home.file(&format!("fuse-{tag}"));
    let mount_dir = home.file(&format!("mnt-{tag}"));
    fs::create_dir_all(&fuse_dir).unwrap();
    fs::create_dir_all(&mount_dir).unwrap();
    let pidfile = home.file(&format!("nbdfuse-{tag}.pid"));
    let child = Command::new("nbdfuse")
        .arg(crate::common::NBDFUSE_SINGLE_THREADED)
        .arg("-P")
        .arg(&pidfile)
        .arg(fuse_dir.join("disk"))
        .arg(&uri)
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
                "nbdfuse {uri} exited with {status}; server log:\n{}",
                served.log()
            );
        }
        assert!(started.elapsed() < PATIENCE, "nbdfuse never became ready");
        thread::sleep(Duration::from_millis(20));
    }
    let mut losetup = Command::new("losetup");
    losetup.args(["--find", "--show"]);
    if io == LoopIo::Direct {
        losetup.arg("--direct-io=on");
    }
    let out = run(losetup.arg(attached.fuse_dir.join("disk")));
    attached.loop_device = Some(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    attached
}

impl Attached {
    /// The loop device, `/dev/loopN`.
    pub fn device(&self) -> &str {
        self.loop_device.as_deref().expect("attached")
    }

    /// An ext4 filesystem on the device, without discarding (the export starts zeroed).
    pub fn mkfs(&self) {
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "nodiscard"])
            .arg(self.device()));
    }

    /// Mounts the device on `mount_dir`.
    pub fn mount(&mut self) {
        run(Command::new("mount")
            .arg(self.device())
            .arg(&self.mount_dir));
        self.mounted = true;
    }

    /// A path inside the mounted filesystem.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mount_dir.join(name)
    }

    /// Unmounts, detaches and stops nbdfuse, checking that each step succeeds.
    pub fn detach(mut self) {
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

/// Reads `path` with O_DIRECT (bypassing every page cache down to the server): the
/// bytes, or dd's error text.
pub fn direct_read(path: &Path) -> Result<Vec<u8>, String> {
    let out = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["bs=1M", "iflag=direct", "status=none"])
        .output()
        .expect("running dd");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls `check` every 20 ms until it returns `Some`, failing after [`PATIENCE`].
pub fn poll<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// `nbdinfo URI` with libnbd's debug output, which is where libnbd 1.14 shows the
/// server's error message: (success, stdout + stderr).
pub fn nbdinfo(uri: &str) -> (bool, String) {
    let out = Command::new("nbdinfo")
        .env("LIBNBD_DEBUG", "1")
        .arg(uri)
        .output()
        .expect("running nbdinfo");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The `CloudTrailEvent` records `atrest trail lookup` returns for `event_name`.
pub fn trail_events(home: &Home, event_name: &str) -> Vec<serde_json::Value> {
    let out = home.run(&[
        "trail",
        "lookup",
        "--event-name",
        event_name,
        "--max-results",
        "1000",
    ]);
    let page: serde_json::Value = serde_json::from_str(&out).expect("trail lookup JSON");
    page["Events"]
        .as_array()
        .expect("Events")
        .iter()
        .map(|e| serde_json::from_str(e["CloudTrailEvent"].as_str().unwrap()).unwrap())
        .collect()
}
