//! Injected I/O faults (feature `fault-injection`): failed writes, short writes,
//! failed hole punches and failed fdatasync, at random points of a random workload
//! against an encrypted volume, through a writer and a reader on one file, checked
//! against a byte model. An injected fault fails exactly the request it hit; every byte the
//! model says was acknowledged reads back as acknowledged, also after reopening.
//! Through the NBD server (with nbdsh as the client) the fault is the error of that
//! request (EIO, or ENOSPC for a short write), and the connection goes on.
//!
//! What a failed request leaves in its own range is unknown (the model forgets it).
//! A short write of a sector leaves that whole 4 KiB ciphertext sector torn, so the
//! model forgets the bytes of the touched sectors too: XTS has no journal, the same
//! as dm-crypt, and a client that gets EIO must rewrite what it meant to write.

mod volume_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, RwLock};

use blockdev::nbd::{Export, Server};
use blockdev::volume::faults::{self, Fault, FaultOp};
use blockdev::volume::{self, NewVolumeKey};
use proptest::prelude::*;
use volume_support::TestKms;

const SECTOR: u64 = 4096;
const SIZE: u64 = 16 * SECTOR;

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `in_place`: through `write_in_place` (the NBD server's path).
    Write {
        seed: u8,
        in_place: bool,
    },
    Read,
    Trim,
    Zero {
        may_punch: bool,
    },
    Flush,
    Reopen,
}

/// One request on one of the two handles, maybe with a fault armed for it: the
/// `skip + 1`-th file operation of that kind the request makes fails.
#[derive(Clone, Debug)]
struct Op {
    kind: Kind,
    handle: usize,
    offset: u64,
    len: u64,
    fault: Option<(FaultOp, u32, Fault)>,
}

fn any_range() -> impl Strategy<Value = (u64, u64)> {
    let point = prop_oneof![
        (0u64..=16).prop_map(|s| s * SECTOR),
        (0u64..=16, 0u64..SECTOR).prop_map(|(s, d)| (s * SECTOR + d).min(SIZE)),
    ];
    (point.clone(), point).prop_map(|(a, b)| (a.min(b), a.max(b) - a.min(b)))
}

fn any_fault() -> impl Strategy<Value = Option<(FaultOp, u32, Fault)>> {
    let op = prop_oneof![
        Just(FaultOp::Write),
        Just(FaultOp::Sync),
        Just(FaultOp::PunchHole)
    ];
    let fault = prop_oneof![
        Just(Fault::Fail),
        (0usize..2 * SECTOR as usize).prop_map(|bytes| Fault::Short { bytes }),
    ];
    proptest::option::weighted(0.4, (op, 0u32..3, fault))
}

fn any_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => (any::<u8>(), any::<bool>()).prop_map(|(seed, in_place)| Kind::Write { seed, in_place }),
        3 => Just(Kind::Read),
        1 => Just(Kind::Trim),
        1 => any::<bool>().prop_map(|may_punch| Kind::Zero { may_punch }),
        1 => Just(Kind::Flush),
        1 => Just(Kind::Reopen),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    (any_kind(), 0usize..2, any_range(), any_fault()).prop_map(
        |(kind, handle, (offset, len), fault)| Op {
            kind,
            handle,
            offset,
            len,
            fault,
        },
    )
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// What each byte must read as; `None` where a failed request left it unknown.
struct Model(Vec<Option<u8>>);

impl Model {
    fn set(&mut self, offset: u64, bytes: impl IntoIterator<Item = u8>) {
        for (slot, byte) in self.0[offset as usize..].iter_mut().zip(bytes) {
            *slot = Some(byte);
        }
    }

    /// A failed request over `offset..offset+len`: its bytes, and those of every
    /// sector it touched, are unknown.
    fn forget(&mut self, offset: u64, len: u64) {
        let start = offset / SECTOR * SECTOR;
        let end = (offset + len).div_ceil(SECTOR) * SECTOR;
        self.0[start as usize..end.min(SIZE) as usize].fill(None);
    }

    fn check(&self, offset: u64, read: &[u8], what: &str) -> Result<(), TestCaseError> {
        for (i, (&got, want)) in read.iter().zip(&self.0[offset as usize..]).enumerate() {
            if let Some(want) = want {
                prop_assert_eq!(
                    got,
                    *want,
                    "{}: acknowledged byte {} lost",
                    what,
                    offset + i as u64
                );
            }
        }
        Ok(())
    }
}

fn create(dir: &Path, kms: &TestKms) -> std::path::PathBuf {
    let path = dir.join("faults.vol");
    volume::create(
        &path,
        SIZE,
        NewVolumeKey::Kms {
            kms: &kms.kms,
            key_id: &kms.key_arn,
        },
    )
    .unwrap();
    path
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn injected_faults_fail_their_request_and_lose_nothing_acknowledged(
        ops in proptest::collection::vec(any_op(), 1..60)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let kms = TestKms::new();
        let path = create(dir.path(), &kms);
        let open = |read_only| volume::open(&path, &kms.kms, read_only).unwrap();
        // One writer and a reader beside it (a second writer is refused: InUse).
        let mut handles = [open(false), open(true)];
        let mut model = Model(vec![Some(0); SIZE as usize]);
        for Op { kind, handle, offset, len, fault } in ops {
            if let Some((op, skip, fault)) = fault {
                faults::arm(&path, op, skip, fault);
            }
            let volume = match kind {
                Kind::Write { .. } | Kind::Trim | Kind::Zero { .. } => &handles[0],
                _ => &handles[handle],
            };
            let result = match kind {
                Kind::Write { seed, in_place } => {
                    let data = pattern(len, seed);
                    let written = if in_place {
                        volume.write_in_place(offset, &mut data.clone())
                    } else {
                        volume.write_at(offset, &data)
                    };
                    written.map(|()| Some(data))
                }
                Kind::Read => {
                    let mut buf = vec![0xeeu8; len as usize];
                    volume.read_at(offset, &mut buf).unwrap();
                    model.check(offset, &buf, "read")?;
                    Ok(None)
                }
                Kind::Trim => volume.trim(offset, len).map(|()| Some(vec![0; len as usize])),
                Kind::Zero { may_punch } => volume
                    .write_zeroes(offset, len, may_punch)
                    .map(|()| Some(vec![0; len as usize])),
                Kind::Flush => volume.flush().map(|()| None),
                Kind::Reopen => {
                    if handle == 0 {
                        // The old writer is closed (its lock released) before the new
                        // one opens.
                        handles[0] = open(true);
                        handles[0] = open(false);
                    } else {
                        handles[1] = open(true);
                    }
                    Ok(None)
                }
            };
            // Zero when the fault fired (or none was armed).
            let unfired = faults::disarm(&path);
            match result {
                Ok(Some(bytes)) => model.set(offset, bytes),
                Ok(None) => {}
                Err(err) => {
                    prop_assert!(fault.is_some() && unfired == 0, "{:?} failed without a fault: {}", kind, err);
                    prop_assert!(matches!(err, blockdev::Error::Io { .. }), "{}", err);
                    if !matches!(kind, Kind::Flush) {
                        model.forget(offset, len);
                    }
                }
            }
        }
        faults::disarm(&path);
        for handle in &handles {
            handle.flush().unwrap();
        }
        let reopened = volume::open(&path, &kms.kms, true).unwrap();
        let mut all = vec![0u8; SIZE as usize];
        reopened.read_at(0, &mut all).unwrap();
        model.check(0, &all, "after reopening")?;
    }
}

/// `nbdsh` run by the system Python, which is where Debian's python3-libnbd lives.
fn nbdsh(uri: &str, script: &str) -> std::process::Output {
    let path = std::env::var("PATH").unwrap_or_default();
    Command::new("nbdsh")
        .env("PATH", format!("/usr/bin:{path}"))
        .args(["-u", uri, "-c", script])
        .output()
        .expect("nbdsh is required (scripts/install-test-deps.sh installs python3-libnbd)")
}

#[test]
fn an_injected_fault_is_eio_for_that_nbd_request_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms);
    let volume = volume::open(&path, &kms.kms, false).unwrap();
    let exports = BTreeMap::from([(
        "faults".to_owned(),
        Export {
            volume: Arc::clone(&volume),
            read_only: false,
            description: None,
            allowed_clients: Vec::new(),
        },
    )]);
    let server = Server::bind("127.0.0.1:0", Arc::new(RwLock::new(exports))).unwrap();
    let uri = format!("nbd://{}/faults", server.local_addr());
    let stop = server.shutdown_handle();
    let running = std::thread::spawn(move || server.run());

    volume.write_at(0, &[0x11; 4096]).unwrap();
    volume.flush().unwrap();
    faults::arm(&path, FaultOp::Write, 0, Fault::Short { bytes: 1000 });
    faults::arm(&path, FaultOp::Sync, 0, Fault::Fail);
    faults::arm(&path, FaultOp::PunchHole, 0, Fault::Fail);
    let out = nbdsh(
        &uri,
        r#"
def fails(what, call, code):
    try:
        call()
    except nbd.Error as e:
        assert e.errno == code, (what, e.errno, e.string)
        return
    raise AssertionError(what + " succeeded despite the injected fault")
fails("write", lambda: h.pwrite(b"\x22" * 4096, 8192), "ENOSPC")
h.pwrite(b"\x33" * 4096, 12288)
fails("flush", lambda: h.flush(), "EIO")
h.flush()
fails("trim", lambda: h.trim(4096, 4096), "EIO")
assert h.pread(4096, 12288) == b"\x33" * 4096
assert h.pread(4096, 0) == b"\x11" * 4096
print("ok")
"#,
    );
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "nbdsh: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(faults::disarm(&path), 0, "every armed fault fired");
    stop.shutdown();
    running.join().unwrap().unwrap();
}
