//! Injected I/O faults for tests (feature `fault-injection`, never in a release
//! build): a test arms a fault for one volume file, and the next matching operation
//! on that file fails, or writes only part of its data and then fails, as a full or
//! failing disk would. Without the feature none of this is compiled and the I/O path
//! has no check at all; with it, an unarmed process pays one atomic load per call.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// The file operation a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// `pwrite` of data or zeros.
    Write,
    /// `fdatasync`.
    Sync,
    /// `fallocate(PUNCH_HOLE)`.
    PunchHole,
}

/// What the faulty operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails with EIO, changing nothing.
    Fail,
    /// Writes only the first `bytes` bytes (at most the whole write), then fails with
    /// ENOSPC: a short write the caller must not report as done. For other
    /// operations, the same as [`Fault::Fail`].
    Short {
        /// The bytes written before the failure.
        bytes: usize,
    },
}

#[derive(Debug)]
struct Armed {
    op: FaultOp,
    /// Matching operations to let through before the fault.
    skip: u32,
    fault: Fault,
}

static ANY_ARMED: AtomicBool = AtomicBool::new(false);
static ARMED: Mutex<Vec<(PathBuf, Armed)>> = Mutex::new(Vec::new());

/// Makes the `skip + 1`-th `op` on the volume file at `path` (as it was opened)
/// fail with `fault`, once.
pub fn arm(path: &Path, op: FaultOp, skip: u32, fault: Fault) {
    let mut armed = ARMED.lock().unwrap_or_else(PoisonError::into_inner);
    armed.push((path.to_path_buf(), Armed { op, skip, fault }));
    ANY_ARMED.store(true, Ordering::SeqCst);
}

/// Removes every fault armed for `path` that has not fired; returns how many.
pub fn disarm(path: &Path) -> usize {
    let mut armed = ARMED.lock().unwrap_or_else(PoisonError::into_inner);
    let before = armed.len();
    armed.retain(|(p, _)| p != path);
    before - armed.len()
}

/// The fault due now for `op` on `path`, if one is armed and its turn has come.
pub(crate) fn take(path: &Path, op: FaultOp) -> Option<Fault> {
    if !ANY_ARMED.load(Ordering::Relaxed) {
        return None;
    }
    let mut armed = ARMED.lock().unwrap_or_else(PoisonError::into_inner);
    let index = armed.iter().position(|(p, a)| p == path && a.op == op)?;
    let entry = &mut armed[index].1;
    if entry.skip > 0 {
        entry.skip -= 1;
        return None;
    }
    let fault = entry.fault;
    armed.remove(index);
    Some(fault)
}

/// The error an injected fault returns.
pub(crate) fn error(fault: Fault) -> io::Error {
    match fault {
        Fault::Fail => io::Error::from_raw_os_error(libc::EIO),
        Fault::Short { .. } => io::Error::from_raw_os_error(libc::ENOSPC),
    }
}
