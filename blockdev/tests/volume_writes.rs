//! Writes through `Volume::write_in_place`, the NBD server's path (whole sectors are
//! encrypted in the caller's buffer and written from it): the file must hold exactly
//! what `write_at` stores, i.e. AES-256-XTS of every written sector under the data key
//! (checked with an independent cipher), holes where nothing was written, and refused
//! writes must change nothing.

mod volume_support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use blockdev::volume::{self, EncryptedVolume, NewVolumeKey, Volume};
use blockdev::Error;
use crypto_core::xts::SectorCipher;
use volume_support::TestKms;

const SECTOR: usize = 4096;
const MIB: usize = 1024 * 1024;
const SIZE: usize = 4 * MIB;

fn create(dir: &Path, kms: &TestKms) -> PathBuf {
    let path = dir.join("v.vol");
    volume::create(
        &path,
        SIZE as u64,
        NewVolumeKey::Kms {
            kms: &kms.kms,
            key_id: &kms.key_arn,
        },
    )
    .unwrap();
    path
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    // Never all zero, so every written sector holds data.
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) | 1)
        .collect()
}

/// The stored data area, byte for byte.
fn stored(vol: &EncryptedVolume) -> Vec<u8> {
    let mut all = vec![0u8; SIZE];
    std::fs::File::open(vol.path())
        .unwrap()
        .read_exact_at(&mut all, vol.header().data_offset())
        .unwrap();
    all
}

/// What the data area must hold for `model` (plaintext) with `written` sectors: each
/// written sector encrypted with tweak = its number, every other sector a hole.
fn expected_ciphertext(
    kms: &TestKms,
    vol: &EncryptedVolume,
    model: &[u8],
    written: &[bool],
) -> Vec<u8> {
    let key = kms.data_key(vol);
    let cipher = SectorCipher::new(key.as_slice().try_into().unwrap()).unwrap();
    let mut out = vec![0u8; SIZE];
    for (n, &was_written) in written.iter().enumerate() {
        if was_written {
            let sector = &mut out[n * SECTOR..(n + 1) * SECTOR];
            sector.copy_from_slice(&model[n * SECTOR..(n + 1) * SECTOR]);
            cipher.encrypt_sectors(sector, n as u64, SECTOR);
        }
    }
    out
}

#[test]
fn in_place_writes_store_exactly_the_xts_ciphertext_of_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms);
    let vol = EncryptedVolume::open(&path, &kms.kms, false).unwrap();
    let mut model = vec![0u8; SIZE];
    let mut written = vec![false; SIZE / SECTOR];
    let s = SECTOR as u64;
    // (offset, length): one sector; a 1 MiB write (the NBD server's kept buffer) on
    // and off a 64 KiB boundary; more than 1 MiB (a buffer of its own); whole sectors
    // over a lock-stripe group edge; partial heads and tails (read-modify-write) and
    // a write inside one sector; the last sector of the volume.
    let writes = [
        (0, SECTOR),
        (3 * s, MIB),
        (MIB as u64 + 5 * s, MIB + 3 * SECTOR),
        (15 * s, 2 * SECTOR),
        (200 * s + 100, 3 * SECTOR),
        (300 * s, 2 * SECTOR + 7),
        (400 * s + 9, 50),
        (SIZE as u64 - s, SECTOR),
        (3 * s + 4000, 200),
    ];
    for (i, &(offset, len)) in writes.iter().enumerate() {
        let data = pattern(len, i as u8);
        let mut buf = data.clone();
        vol.write_in_place(offset, &mut buf).unwrap();
        let at = offset as usize;
        model[at..at + len].copy_from_slice(&data);
        written[at / SECTOR..(at + len).div_ceil(SECTOR)].fill(true);
    }
    let mut back = vec![0u8; SIZE];
    vol.read_at(0, &mut back).unwrap();
    assert!(back == model, "reads differ from the model");
    assert!(
        stored(&vol) == expected_ciphertext(&kms, &vol, &model, &written),
        "stored bytes differ from XTS of the model"
    );
}

#[test]
fn in_place_and_copying_writes_store_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms);
    let vol = EncryptedVolume::open(&path, &kms.kms, false).unwrap();
    let data = pattern(MIB + SECTOR, 7);
    vol.write_at(0, &data).unwrap();
    let by_write_at = stored(&vol);
    vol.write_zeroes(0, SIZE as u64, true).unwrap();
    assert!(stored(&vol).iter().all(|&b| b == 0));
    vol.write_in_place(0, &mut data.clone()).unwrap();
    assert!(stored(&vol) == by_write_at);
}

/// A WRITE of zeros is data like any other (as through `write_at`): it is stored
/// encrypted, not as a hole, and reads back as zeros.
#[test]
fn an_all_zero_in_place_write_is_stored_encrypted_like_write_at() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms);
    let vol = EncryptedVolume::open(&path, &kms.kms, false).unwrap();
    vol.write_at(8 * SECTOR as u64, &[0u8; 2 * SECTOR]).unwrap();
    vol.write_in_place(16 * SECTOR as u64, &mut [0u8; 2 * SECTOR])
        .unwrap();
    let mut written = vec![false; SIZE / SECTOR];
    for n in [8, 9, 16, 17] {
        written[n] = true;
    }
    let model = vec![0u8; SIZE];
    assert!(stored(&vol) == expected_ciphertext(&kms, &vol, &model, &written));
    let mut back = vec![1u8; 2 * SECTOR];
    vol.read_at(16 * SECTOR as u64, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    let extents = vol
        .allocation(16 * SECTOR as u64, 2 * SECTOR as u64)
        .unwrap();
    assert!(extents.iter().all(|e| !e.hole), "{extents:?}");
}

#[test]
fn refused_in_place_writes_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms);
    let vol = EncryptedVolume::open(&path, &kms.kms, false).unwrap();
    vol.write_at(0, &pattern(2 * SECTOR, 1)).unwrap();
    let before = stored(&vol);

    let past_end = vol.write_in_place(SIZE as u64 - SECTOR as u64, &mut pattern(2 * SECTOR, 2));
    assert!(
        matches!(past_end, Err(Error::OutOfRange { .. })),
        "{past_end:?}"
    );
    let wrapping = vol.write_in_place(u64::MAX - 10, &mut pattern(SECTOR, 2));
    assert!(
        matches!(wrapping, Err(Error::OutOfRange { .. })),
        "{wrapping:?}"
    );
    vol.write_in_place(SECTOR as u64, &mut []).unwrap();

    vol.revoke_key("DisabledException: key disabled");
    let revoked = vol.write_in_place(0, &mut pattern(SECTOR, 3));
    assert!(
        matches!(revoked, Err(Error::KeyUnavailable { .. })),
        "{revoked:?}"
    );
    drop(vol);

    let read_only = EncryptedVolume::open(&path, &kms.kms, true).unwrap();
    let refused = read_only.write_in_place(0, &mut pattern(SECTOR, 4));
    assert!(matches!(refused, Err(Error::ReadOnly)), "{refused:?}");
    assert!(stored(&read_only) == before);
}

/// The file takes a write in 64 KiB pieces (`blockdev::volume::file`), so the bytes
/// on disk must not depend on where a write starts or ends relative to those pieces
/// or to larger aligned blocks: whole aligned 256 KiB and 1 MiB blocks, a write
/// crossing a 1 MiB boundary off any piece boundary, one ending on the volume's last
/// sector, lengths that are not a multiple of the piece, and client writes of 512-byte
/// sectors that start or end inside a 4 KiB data sector (read-modify-write).
#[test]
fn writes_across_piece_and_block_boundaries_store_the_xts_ciphertext() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms);
    let vol = EncryptedVolume::open(&path, &kms.kms, false).unwrap();
    let mut model = vec![0u8; SIZE];
    let mut written = vec![false; SIZE / SECTOR];
    let s = SECTOR as u64;
    let k = 1024u64;
    let writes = [
        (0, 256 * 1024),
        (MIB as u64, MIB),
        (256 * k, 3 * 256 * 1024),
        (MIB as u64 - 3 * s, 5 * SECTOR),
        (2 * MIB as u64 - 60 * k, 200 * 1024),
        (64 * k + s, 128 * 1024 - 2 * SECTOR),
        (SIZE as u64 - 260 * k, 260 * 1024),
        (3 * MIB as u64 + 512, 64 * 1024),
        (5 * 512, 7 * 512),
        (SIZE as u64 - 1536, 1536),
    ];
    for (i, &(offset, len)) in writes.iter().enumerate() {
        let data = pattern(len, 40 + i as u8);
        let mut buf = data.clone();
        vol.write_in_place(offset, &mut buf).unwrap();
        let at = offset as usize;
        model[at..at + len].copy_from_slice(&data);
        written[at / SECTOR..(at + len).div_ceil(SECTOR)].fill(true);
        let mut back = vec![0u8; len];
        vol.read_at(offset, &mut back).unwrap();
        assert!(
            back == data,
            "write {i} ({offset}, {len}) reads back different bytes"
        );
    }
    assert!(
        stored(&vol) == expected_ciphertext(&kms, &vol, &model, &written),
        "stored bytes differ from XTS of the model"
    );
}
