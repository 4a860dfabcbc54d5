//! Random unaligned reads, writes, trims and write-zeroes against an encrypted volume
//! and a `Vec<u8>` model of it; the allocation map and the file's holes are checked too.

mod volume_support;

use std::os::unix::fs::FileExt;

use blockdev::volume::{self, NewVolumeKey};
use proptest::prelude::*;
use volume_support::TestKms;

const SIZE: u64 = 16 * 4096;

#[derive(Clone, Debug)]
enum Op {
    Write {
        offset: u64,
        len: usize,
        seed: u8,
        /// Through `write_in_place` (the NBD server's path) instead of `write_at`.
        in_place: bool,
    },
    Read {
        offset: u64,
        len: usize,
    },
    Trim {
        offset: u64,
        len: u64,
    },
    Zero {
        offset: u64,
        len: u64,
        may_punch: bool,
    },
}

fn any_range() -> impl Strategy<Value = (u64, u64)> {
    // Biased to sector edges so partial heads, tails and whole middles all occur.
    let point = prop_oneof![
        (0u64..=16).prop_map(|s| s * 4096),
        (0u64..=16, 0u64..4096).prop_map(|(s, d)| (s * 4096 + d).min(SIZE)),
        0u64..=SIZE,
    ];
    (point.clone(), point).prop_map(|(a, b)| (a.min(b), a.max(b) - a.min(b)))
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any_range(), any::<u8>(), any::<bool>()).prop_map(|((offset, len), seed, in_place)| Op::Write { offset, len: len as usize, seed, in_place }),
        3 => any_range().prop_map(|(offset, len)| Op::Read { offset, len: len as usize }),
        1 => any_range().prop_map(|(offset, len)| Op::Trim { offset, len }),
        1 => (any_range(), any::<bool>()).prop_map(|((offset, len), may_punch)| Op::Zero { offset, len, may_punch }),
    ]
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    // Never all zero, so written sectors are real data.
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn volume_matches_a_byte_model(ops in proptest::collection::vec(any_op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.vol");
        let kms = TestKms::new();
        let header = volume::create(&path, SIZE, NewVolumeKey::Kms { kms: &kms.kms, key_id: &kms.key_arn }).unwrap();
        let vol = volume::open(&path, &kms.kms, false).unwrap();
        let mut model = vec![0u8; SIZE as usize];
        for op in ops {
            match op {
                Op::Write { offset, len, seed, in_place } => {
                    let data = pattern(len, seed);
                    if in_place {
                        vol.write_in_place(offset, &mut data.clone()).unwrap();
                    } else {
                        vol.write_at(offset, &data).unwrap();
                    }
                    model[offset as usize..offset as usize + len].copy_from_slice(&data);
                }
                Op::Read { offset, len } => {
                    let mut buf = vec![0xEEu8; len];
                    vol.read_at(offset, &mut buf).unwrap();
                    prop_assert_eq!(&buf[..], &model[offset as usize..offset as usize + len]);
                }
                Op::Trim { offset, len } => {
                    vol.trim(offset, len).unwrap();
                    model[offset as usize..(offset + len) as usize].fill(0);
                }
                Op::Zero { offset, len, may_punch } => {
                    vol.write_zeroes(offset, len, may_punch).unwrap();
                    model[offset as usize..(offset + len) as usize].fill(0);
                }
            }
        }
        let mut all = vec![0u8; SIZE as usize];
        vol.read_at(0, &mut all).unwrap();
        prop_assert_eq!(&all, &model);

        // Holes read as zeros and, at sector granularity, exactly cover the holes of the file.
        let extents = vol.allocation(0, SIZE).unwrap();
        prop_assert_eq!(extents.iter().map(|e| e.length).sum::<u64>(), SIZE);
        let file = std::fs::File::open(&path).unwrap();
        let mut at = 0u64;
        for extent in extents {
            prop_assert_eq!(at % 4096, 0);
            if extent.hole {
                prop_assert!(extent.zero);
                prop_assert!(model[at as usize..(at + extent.length) as usize].iter().all(|&b| b == 0));
                let mut stored = vec![1u8; extent.length as usize];
                file.read_exact_at(&mut stored, header.data_offset() + at).unwrap();
                prop_assert!(stored.iter().all(|&b| b == 0));
            }
            at += extent.length;
        }

        // A sector the model says is zero is never stored as encrypted zeros.
        for sector in 0..SIZE / 4096 {
            let range = (sector * 4096) as usize..((sector + 1) * 4096) as usize;
            if model[range.clone()].iter().all(|&b| b == 0) {
                let mut stored = vec![1u8; 4096];
                file.read_exact_at(&mut stored, header.data_offset() + sector * 4096).unwrap();
                prop_assert!(stored.iter().all(|&b| b == 0), "sector {} holds encrypted zeros", sector);
            }
        }
    }
}

#[test]
fn out_of_range_requests_are_refused_without_touching_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.vol");
    let kms = TestKms::new();
    volume::create(
        &path,
        SIZE,
        NewVolumeKey::Kms {
            kms: &kms.kms,
            key_id: &kms.key_arn,
        },
    )
    .unwrap();
    let vol = volume::open(&path, &kms.kms, false).unwrap();
    let mut buf = [0u8; 2];
    assert!(matches!(
        vol.read_at(SIZE - 1, &mut buf),
        Err(blockdev::Error::OutOfRange { .. })
    ));
    assert!(matches!(
        vol.write_at(u64::MAX, &buf),
        Err(blockdev::Error::OutOfRange { .. })
    ));
    assert!(matches!(
        vol.trim(SIZE, 1),
        Err(blockdev::Error::OutOfRange { .. })
    ));
    assert!(matches!(
        vol.allocation(1, SIZE),
        Err(blockdev::Error::OutOfRange { .. })
    ));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024 * 1024 + SIZE);
}
