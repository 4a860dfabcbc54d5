//! Property tests: every backend equals RustCrypto's `xts-mode` (the reference), round
//! trips, and splitting across threads changes nothing.

use aes::cipher::{Array, KeyInit};
use aes::Aes256;
use crypto_core::xts::{Backend, SectorCipher, PARALLEL_THRESHOLD};
use proptest::prelude::*;
use xts_mode::{get_tweak_default, Xts128};

/// What atrest must compute: `xts-mode` with the sector index reduced to 64 bits, since
/// atrest's sector numbers wrap at 2^64 (dm-crypt `plain64`).
fn reference_encrypt(key: &[u8; 64], buf: &mut [u8], first_sector: u64, sector_size: usize) {
    reference(key).encrypt_area(buf, sector_size, u128::from(first_sector), wrap64);
}

fn reference_decrypt(key: &[u8; 64], buf: &mut [u8], first_sector: u64, sector_size: usize) {
    reference(key).decrypt_area(buf, sector_size, u128::from(first_sector), wrap64);
}

fn wrap64(index: u128) -> Array<u8, aes::cipher::consts::U16> {
    get_tweak_default(u128::from(index as u64))
}

fn reference(key: &[u8; 64]) -> Xts128<Aes256> {
    Xts128::new(
        Aes256::new_from_slice(&key[..32]).unwrap(),
        Aes256::new_from_slice(&key[32..]).unwrap(),
    )
}

fn distinct_halves() -> impl Strategy<Value = [u8; 64]> {
    any::<[u8; 64]>().prop_filter("XTS key halves must differ", |k| k[..32] != k[32..])
}

fn sector_number() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0u64..64).prop_map(|d| u64::MAX - d),
        (0u64..64).prop_map(|d| (1u64 << 32) - 32 + d),
        0u64..1024,
    ]
}

/// Sector sizes: the two the volume layer uses, other multiples of 16, and lengths
/// that need ciphertext stealing.
fn sector_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(512usize),
        Just(4096usize),
        (1usize..=40).prop_map(|b| b * 16),
        16usize..=300,
    ]
}

fn sectors_of(sector_size: usize) -> impl Strategy<Value = Vec<u8>> {
    let max = (16 * 1024 / sector_size).clamp(1, 24);
    (1..=max).prop_flat_map(move |n| proptest::collection::vec(any::<u8>(), n * sector_size))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_backend_equals_the_reference(
        key in distinct_halves(),
        first in sector_number(),
        (size, data) in sector_size().prop_flat_map(|s| (Just(s), sectors_of(s))),
    ) {
        let mut expected = data.clone();
        reference_encrypt(&key, &mut expected, first, size);
        for backend in Backend::available() {
            let cipher = SectorCipher::with_backend(&key, backend).unwrap();
            let mut buf = data.clone();
            cipher.encrypt_sectors(&mut buf, first, size);
            prop_assert_eq!(&buf, &expected, "encrypt on {:?}", backend);
            let mut back = expected.clone();
            reference_decrypt(&key, &mut back, first, size);
            prop_assert_eq!(&back, &data);
            cipher.decrypt_sectors(&mut buf, first, size);
            prop_assert_eq!(&buf, &data, "decrypt on {:?}", backend);
        }
    }

    #[test]
    fn crypting_into_another_buffer_equals_crypting_in_place(
        key in distinct_halves(),
        first in sector_number(),
        (size, data) in sector_size().prop_flat_map(|s| (Just(s), sectors_of(s))),
    ) {
        let mut stored = data.clone();
        reference_encrypt(&key, &mut stored, first, size);
        for backend in Backend::available() {
            let cipher = SectorCipher::with_backend(&key, backend).unwrap();
            let mut out = vec![0xa5; stored.len()];
            cipher.decrypt_sectors_to(&stored, &mut out, first, size);
            prop_assert_eq!(&out, &data, "decrypt_sectors_to on {:?}", backend);
            out.fill(0x5a);
            cipher.encrypt_sectors_to(&data, &mut out, first, size);
            prop_assert_eq!(&out, &stored, "encrypt_sectors_to on {:?}", backend);
        }
    }

    #[test]
    fn splitting_a_call_changes_nothing(
        key in distinct_halves(),
        first in sector_number(),
        (size, data) in sector_size().prop_flat_map(|s| (Just(s), sectors_of(s))),
        split in any::<prop::sample::Index>(),
    ) {
        let sectors = data.len() / size;
        let at = split.index(sectors + 1);
        for backend in Backend::available() {
            let cipher = SectorCipher::with_backend(&key, backend).unwrap();
            let mut whole = data.clone();
            cipher.encrypt_sectors(&mut whole, first, size);
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(at * size);
            cipher.encrypt_sectors(a, first, size);
            cipher.encrypt_sectors(b, first.wrapping_add(at as u64), size);
            prop_assert_eq!(&parts, &whole, "{:?}", backend);
        }
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// Buffers above the threshold run on several threads; their output must be the
/// single-threaded output, for every backend and both directions.
#[test]
fn parallel_output_equals_serial_output() {
    let key: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(151).wrapping_add(7));
    let data: Vec<u8> = (0..PARALLEL_THRESHOLD * 5 + 4096 * 3)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let serial = pool(1);
    let parallel = pool(4);
    for backend in Backend::available() {
        let cipher = SectorCipher::with_backend(&key, backend).unwrap();
        for (size, first) in [(4096, u64::MAX - 40), (512, 1 << 40), (4096 + 8, 3)] {
            let len = data.len() / size * size;
            let mut one = data[..len].to_vec();
            serial.install(|| cipher.encrypt_sectors(&mut one, first, size));
            let mut many = data[..len].to_vec();
            parallel.install(|| cipher.encrypt_sectors(&mut many, first, size));
            assert!(
                one == many,
                "{backend:?} parallel encryption differs, sector size {size}"
            );
            let mut reference = data[..len].to_vec();
            reference_encrypt(&key, &mut reference, first, size);
            assert!(
                one == reference,
                "{backend:?} differs from xts-mode, sector size {size}"
            );
            let mut into = vec![0u8; len];
            parallel.install(|| cipher.encrypt_sectors_to(&data[..len], &mut into, first, size));
            assert!(
                into == one,
                "{backend:?} parallel encryption into another buffer, sector size {size}"
            );
            parallel.install(|| cipher.decrypt_sectors_to(&many, &mut into, first, size));
            assert!(
                into == data[..len],
                "{backend:?} parallel decryption into another buffer, sector size {size}"
            );
            parallel.install(|| cipher.decrypt_sectors(&mut many, first, size));
            assert!(
                many == data[..len],
                "{backend:?} parallel decryption, sector size {size}"
            );
        }
    }
}

/// Calls of one to nine sectors (one sector takes each kernel's single-sector entry,
/// which encrypts the tweak itself; more go through the batched tweaks, eight per
/// batch on AES-NI, so nine is a batch and one left over), sector numbers that wrap
/// past `u64::MAX`, both sector sizes and one that needs ciphertext stealing, in place
/// and into another buffer, on every backend, against `xts-mode`.
#[test]
fn one_to_nine_sectors_per_call_equal_the_reference() {
    let key: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let firsts = [0u64, 5, u64::MAX - 8, u64::MAX - 3, u64::MAX];
    for sector_size in [512usize, 4096, 528, 520] {
        for sectors in 1..=9usize {
            let plain: Vec<u8> = (0..sectors * sector_size)
                .map(|i| (i % 251) as u8 ^ sectors as u8)
                .collect();
            for &first in &firsts {
                let mut expected = plain.clone();
                reference_encrypt(&key, &mut expected, first, sector_size);
                for backend in Backend::available() {
                    let cipher = SectorCipher::with_backend(&key, backend).unwrap();
                    let what = format!("{backend:?}, {sectors} x {sector_size} B from {first}");
                    let mut buf = plain.clone();
                    cipher.encrypt_sectors(&mut buf, first, sector_size);
                    assert_eq!(buf, expected, "encrypt in place, {what}");
                    cipher.decrypt_sectors(&mut buf, first, sector_size);
                    assert_eq!(buf, plain, "decrypt in place, {what}");
                    let mut out = vec![0u8; plain.len()];
                    cipher.encrypt_sectors_to(&plain, &mut out, first, sector_size);
                    assert_eq!(out, expected, "encrypt to, {what}");
                    cipher.decrypt_sectors_to(&expected, &mut out, first, sector_size);
                    assert_eq!(out, plain, "decrypt to, {what}");
                    // Sector by sector gives the same as the whole call.
                    let mut one_by_one = plain.clone();
                    for (i, s) in one_by_one.chunks_mut(sector_size).enumerate() {
                        cipher.encrypt_sectors(s, first.wrapping_add(i as u64), sector_size);
                    }
                    assert_eq!(one_by_one, expected, "one sector per call, {what}");
                }
            }
        }
    }
}
