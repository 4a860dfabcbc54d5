//! Striped sector locks: a read-modify-write of a sector must not interleave with any
//! other change to that sector, or bytes the client never wrote revert to old values.
//!
//! Operations that rewrite whole sectors take their stripes shared (they may run side by
//! side; overlapping writes in flight have no defined order anyway); operations with a
//! partial edge sector take them exclusive. Stripes are always taken in ascending index
//! order, so two operations can never wait on each other in a cycle.
//!
//! A stripe covers a group of [`SECTORS_PER_STRIPE`] consecutive sectors, so a 1 MiB
//! write takes 16 or 17 stripes, not 256: each is an atomic on a cache line that the
//! other transmission threads touch too.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Enough stripes that random 4 KiB I/O from many clients rarely shares one.
const STRIPES: u64 = 1024;
/// Sectors (4 KiB each) per stripe: 64 KiB, the volume file's write piece. Only an
/// exclusive lock (a partial sector at an edge) waits for a neighbour in the group.
const SECTORS_PER_STRIPE: u64 = 16;

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
        let mut guard = SectorRangeGuard {
            _shared: Vec::new(),
            _exclusive: Vec::new(),
        };
        // A panic while holding a stripe leaves nothing inconsistent in `()`, so a
        // poisoned stripe is still usable.
        for i in stripes(first, count) {
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

/// The stripes covering sectors `first..first + count` (`count` >= 1): every sector's
/// stripe once, in ascending order.
fn stripes(first: u64, count: u64) -> Vec<usize> {
    let first_group = first / SECTORS_PER_STRIPE;
    let groups = (first + count - 1) / SECTORS_PER_STRIPE - first_group + 1;
    if groups >= STRIPES {
        return (0..STRIPES as usize).collect();
    }
    // Fewer than STRIPES consecutive groups, so no stripe comes up twice.
    let mut v: Vec<usize> = (0..groups)
        .map(|i| ((first_group + i) % STRIPES) as usize)
        .collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sector_of_a_range_has_its_stripe_once_in_order() {
        let span = SECTORS_PER_STRIPE * STRIPES;
        for (first, count) in [
            (0, 1),
            (15, 1),
            (15, 2),
            (16, 16),
            (17, 256),
            (span - 3, 40),
            (span * 5 + 7, span - 20),
            (3, span + 1),
            (u64::MAX / 2, 300),
        ] {
            let got = stripes(first, count);
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "{first}+{count}: {got:?}"
            );
            for sector in (first..first + count).step_by(7).chain([first + count - 1]) {
                let stripe = ((sector / SECTORS_PER_STRIPE) % STRIPES) as usize;
                assert!(
                    got.binary_search(&stripe).is_ok(),
                    "{first}+{count}: sector {sector}"
                );
            }
            let groups = (first + count - 1) / SECTORS_PER_STRIPE - first / SECTORS_PER_STRIPE + 1;
            assert_eq!(got.len() as u64, groups.min(STRIPES), "{first}+{count}");
        }
    }
}
