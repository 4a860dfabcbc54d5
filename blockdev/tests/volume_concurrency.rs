//! Concurrent writers to the same sectors: read-modify-write must never lose a write
//! that touched other bytes of the sector.

mod volume_support;

use std::sync::Arc;

use blockdev::volume::{self, NewVolumeKey, Volume};
use volume_support::TestKms;

#[test]
fn concurrent_unaligned_writers_to_shared_sectors_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.vol");
    let kms = TestKms::new();
    volume::create(
        &path,
        4 * 4096,
        NewVolumeKey::Kms {
            kms: &kms.kms,
            key_id: &kms.key_arn,
        },
    )
    .unwrap();
    let vol: Arc<dyn Volume> = volume::open(&path, &kms.kms, false).unwrap();
    // Eight writers own disjoint, unaligned 1000-byte slots in sectors 0..=1, several
    // straddling a sector edge; a ninth rewrites the whole of sector 3 meanwhile.
    const SLOT: u64 = 1000;
    const ROUNDS: u32 = 1000;
    let threads: Vec<_> = (0..8u64)
        .map(|slot| {
            let vol = Arc::clone(&vol);
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let byte = (slot as u8 + 1).wrapping_mul(17).wrapping_add(round as u8) | 1;
                    vol.write_at(7 + slot * SLOT, &[byte; SLOT as usize])
                        .unwrap();
                    // Only this thread writes the slot, so it must read back at once
                    // and stay so: a stale read-modify-write would revert it.
                    let mut back = [0u8; SLOT as usize];
                    vol.read_at(7 + slot * SLOT, &mut back).unwrap();
                    assert!(
                        back.iter().all(|&b| b == byte),
                        "slot {slot} reverted in round {round}"
                    );
                }
            })
        })
        .chain(std::iter::once({
            let vol = Arc::clone(&vol);
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    vol.write_at(3 * 4096, &[round as u8 | 1; 4096]).unwrap();
                }
            })
        }))
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut all = vec![0u8; 4 * 4096];
    vol.read_at(0, &mut all).unwrap();
    for slot in 0..8u64 {
        let last = (slot as u8 + 1)
            .wrapping_mul(17)
            .wrapping_add((ROUNDS - 1) as u8)
            | 1;
        let start = (7 + slot * SLOT) as usize;
        assert!(
            all[start..start + SLOT as usize].iter().all(|&b| b == last),
            "slot {slot} lost its last write"
        );
    }
    assert!(all[..7].iter().all(|&b| b == 0));
    assert!(all[(7 + 8 * SLOT) as usize..3 * 4096]
        .iter()
        .all(|&b| b == 0));
    assert!(all[3 * 4096..].iter().all(|&b| b == (ROUNDS - 1) as u8 | 1));
}
