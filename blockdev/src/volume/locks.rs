//! Striped sector locks: a read-modify-write of a sector must not interleave with any
//! other change to that sector, or bytes the client never wrote revert to old values.
//!
//! Operations that rewrite whole sectors take their stripes shared (they may run side by
//! side; overlapping writes in flight have no defined order anyway); operations with a
//! partial edge sector take them exclusive. Stripes are always taken in ascending index
//! order, so two operations can never wait on each other in a cycle.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Enough stripes that random 4 KiB I/O from many clients rarely shares one.
const STRIPES: u64 = 1024;

#[derive(Debug)]
pub(crate) struct SectorLocks {
    stripes: Box<[RwLock<()>]>,
}

/// Held for the duration of one operation; releases its stripes when dropped.
#[derive(Debug)]
pub(crate) struct SectorRangeGuard<'a> {
    _shared: Vec<RwLockReadGuard<'a, ()>>,
    _exclusive: Vec<RwLockWriteGuard<'a, ()>>,
}

impl SectorLocks {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    /// Locks the stripes of sectors `first..first + count` (`count` >= 1).
    pub(crate) fn lock(&self, first: u64, count: u64, exclusive: bool) -> SectorRangeGuard<'_> {
        let indices: Vec<usize> = if count >= STRIPES {
            (0..STRIPES as usize).collect()
        } else {
            // At most STRIPES distinct values, so no stripe is taken twice.
            let mut v: Vec<usize> = (0..count)
                .map(|i| ((first + i) % STRIPES) as usize)
                .collect();
            v.sort_unstable();
            v
        };
        let mut guard = SectorRangeGuard {
            _shared: Vec::new(),
            _exclusive: Vec::new(),
        };
        // A panic while holding a stripe leaves nothing inconsistent in `()`, so a
        // poisoned stripe is still usable.
        for i in indices {
            if exclusive {
                guard._exclusive.push(
                    self.stripes[i]
                        .write()
                        .unwrap_or_else(PoisonError::into_inner),
                );
            } else {
                guard._shared.push(
                    self.stripes[i]
                        .read()
                        .unwrap_or_else(PoisonError::into_inner),
                );
            }
        }
        guard
    }
}
