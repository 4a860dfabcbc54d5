//! Opening volumes: detection of encrypted, unencrypted and raw files, both header
//! copies, damaged and truncated files, the key slot, and the stored ciphertext.

mod volume_support;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use blockdev::format::{self, HeaderCopy, BACKUP_HEADER_OFFSET};
use blockdev::volume::{self, EncryptedVolume, NewVolumeKey, OpenedVolume, Volume};
use blockdev::Error;
use crypto_core::secret::XtsKey;
use crypto_core::xts::SectorCipher;
use volume_support::TestKms;

const MIB: u64 = 1024 * 1024;

fn create(dir: &Path, kms: &TestKms, size: u64) -> std::path::PathBuf {
    let path = dir.join("v.vol");
    volume::create(
        &path,
        size,
        NewVolumeKey::Kms {
            kms: &kms.kms,
            key_id: &kms.key_arn,
        },
    )
    .unwrap();
    path
}

fn corrupt(path: &Path, at: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
}

#[test]
fn created_volume_is_sparse_and_records_id_size_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, 64 * MIB);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), MIB + 64 * MIB);
    assert!(
        meta.blocks() * 512 <= 64 * 1024,
        "{} bytes allocated",
        meta.blocks() * 512
    );
    let vol = EncryptedVolume::open(&path, &kms.kms, true).unwrap();
    assert_eq!(vol.size(), 64 * MIB);
    assert_eq!(vol.key_arn(), kms.key_arn);
    assert_eq!(vol.header_copy(), HeaderCopy::Primary);
    assert_eq!(vol.header_warning(), None);
    assert_eq!(
        vol.encryption_context().get("atrest:volume-id"),
        Some(&vol.volume_id().to_string())
    );
    let extents = vol.allocation(0, 64 * MIB).unwrap();
    assert_eq!(extents.len(), 1);
    assert!(extents[0].hole && extents[0].zero);
}

#[test]
fn create_refuses_to_overwrite_and_rejects_partial_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, MIB);
    let again = volume::create(&path, MIB, NewVolumeKey::Unencrypted);
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );
    let odd = volume::create(
        &dir.path().join("odd.vol"),
        MIB + 512,
        NewVolumeKey::Unencrypted,
    );
    assert!(matches!(odd, Err(Error::InvalidArgument { .. })), "{odd:?}");
    assert!(!dir.path().join("odd.vol").exists());
    // Only the volume is left in the directory: no temporary files.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn stored_sectors_are_xts_ciphertext_under_the_unwrapped_key() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, 4 * MIB);
    let vol = EncryptedVolume::open(&path, &kms.kms, false).unwrap();
    let plaintext: Vec<u8> = (0..2 * 4096).map(|i| (i % 251) as u8 + 1).collect();
    vol.write_at(5 * 4096, &plaintext).unwrap();
    let key = kms.data_key(&vol);
    let cipher = SectorCipher::new(key.as_slice().try_into().unwrap()).unwrap();
    let mut expected = plaintext.clone();
    cipher.encrypt_sectors(&mut expected, 5, 4096);
    let mut stored = vec![0u8; 2 * 4096];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut stored, MIB + 5 * 4096)
        .unwrap();
    assert_eq!(stored, expected);
}

#[test]
fn reopened_volume_reads_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, 4 * MIB);
    let vol = volume::open(&path, &kms.kms, false).unwrap();
    vol.write_at(12345, b"persisted across opens").unwrap();
    vol.flush().unwrap();
    drop(vol);
    let vol = volume::open(&path, &kms.kms, true).unwrap();
    let mut buf = [0u8; 22];
    vol.read_at(12345, &mut buf).unwrap();
    assert_eq!(&buf, b"persisted across opens");
    assert!(matches!(vol.write_at(0, b"x"), Err(Error::ReadOnly)));
    assert!(matches!(vol.trim(0, 4096), Err(Error::ReadOnly)));
}

#[test]
fn damaged_primary_header_opens_from_the_backup_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, MIB);
    corrupt(&path, 40);
    let vol = EncryptedVolume::open(&path, &kms.kms, true).unwrap();
    assert_eq!(vol.header_copy(), HeaderCopy::Backup);
    let warning = vol.header_warning().unwrap();
    assert!(
        warning.contains("primary") && warning.contains("checksum"),
        "{warning}"
    );
}

#[test]
fn damaged_backup_header_is_reported_and_the_primary_used() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, MIB);
    corrupt(&path, BACKUP_HEADER_OFFSET + 100);
    let vol = EncryptedVolume::open(&path, &kms.kms, true).unwrap();
    assert_eq!(vol.header_copy(), HeaderCopy::Primary);
    assert!(vol.header_warning().unwrap().contains("backup"));
}

#[test]
fn both_headers_damaged_is_refused_never_raw() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, MIB);
    corrupt(&path, 4000);
    corrupt(&path, BACKUP_HEADER_OFFSET + 9);
    match volume::open(&path, &kms.kms, true) {
        Err(Error::NoValidHeader {
            path: p,
            primary,
            backup,
        }) => {
            assert_eq!(p, path);
            assert!(primary.contains("header checksum"), "{primary}");
            assert!(backup.contains("header checksum"), "{backup}");
        }
        other => panic!("expected NoValidHeader, got {other:?}"),
    }
}

#[test]
fn newer_backup_wins_after_an_interrupted_header_update() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, MIB);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let old = format::read_header(&file, &path).unwrap().header;
    let newer = old
        .with_flags(format::FLAG_READ_ONLY)
        .unwrap()
        .with_encryption(old.encryption().clone())
        .unwrap();
    // The update writes the backup first; stop before the primary.
    file.write_all_at(&newer.encode(), BACKUP_HEADER_OFFSET)
        .unwrap();
    let located = format::read_header(&file, &path).unwrap();
    assert_eq!(located.copy, HeaderCopy::Backup);
    assert_eq!(located.header, newer);
    assert!(located.warning.unwrap().contains("interrupted"));
    // The read-only flag of the newer header is honoured.
    let vol = EncryptedVolume::open(&path, &kms.kms, false).unwrap();
    assert!(vol.is_read_only());
    format::write_header(&file, &path, &newer).unwrap();
    let located = format::read_header(&file, &path).unwrap();
    assert_eq!((located.copy, located.warning), (HeaderCopy::Primary, None));
}

#[test]
fn truncated_files_are_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, 4 * MIB);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(MIB + 4 * MIB - 4096).unwrap();
    let err = volume::open(&path, &kms.kms, true).unwrap_err();
    assert!(err.to_string().contains("file truncated"), "{err}");
    file.set_len(3000).unwrap();
    let err = volume::open(&path, &kms.kms, true).unwrap_err();
    assert!(
        err.to_string()
            .contains("header truncated: 3000 of 4096 bytes"),
        "{err}"
    );
}

#[test]
fn cached_reads_equal_ordinary_reads_or_decline() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let encrypted = volume::open(&create(dir.path(), &kms, 4 * MIB), &kms.kms, false).unwrap();
    let raw_path = dir.path().join("raw.img");
    std::fs::write(&raw_path, vec![0u8; 4 * MIB as usize]).unwrap();
    let raw: std::sync::Arc<dyn Volume> = volume::open_raw(&raw_path, false).unwrap();
    let pattern: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    for vol in [&encrypted, &raw] {
        vol.write_at(MIB, &pattern).unwrap();
        let mut plain = vec![0u8; 3 * 4096 + pattern.len()];
        // Written data and the unwritten sectors after it, pulled into the page cache.
        vol.read_at(MIB, &mut plain).unwrap();
        let mut cached = vec![0xEEu8; plain.len()];
        assert!(
            vol.read_cached(MIB, &mut cached).unwrap(),
            "{vol:?}: data just read is in the page cache"
        );
        assert_eq!(cached, plain);
        assert_eq!(&cached[..pattern.len()], &pattern[..]);
        assert!(matches!(
            vol.read_cached(4 * MIB - 4096, &mut [0u8; 8192]),
            Err(Error::OutOfRange { .. })
        ));
    }
    // Partial sectors need read-modify-write: the encrypted volume declines them.
    assert!(!encrypted.read_cached(MIB + 1, &mut [0u8; 4096]).unwrap());
    assert!(!encrypted.read_cached(MIB, &mut [0u8; 100]).unwrap());
}

#[test]
fn files_without_the_magic_are_refused_unless_declared_raw() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.img");
    std::fs::write(&path, vec![0x5Au8; 3 * 512]).unwrap();
    let kms = TestKms::new();
    let err = volume::open_detected(&path, &kms.kms, false).unwrap_err();
    assert!(
        matches!(&err, Error::NoValidHeader { primary, backup, .. }
            if primary.contains("1536 of 4096") && backup.contains("0 of 4096")),
        "{err:?}"
    );
    assert!(err.to_string().contains("--raw"), "{err}");
    let raw = volume::open_raw(&path, false).unwrap();
    assert!(raw.header().is_none());
    assert_eq!((raw.size(), raw.block_size()), (1536, 512));
    raw.write_at(100, b"abc").unwrap();
    let mut buf = [0u8; 5];
    raw.read_at(99, &mut buf).unwrap();
    assert_eq!(&buf, b"\x5Aabc\x5A");
}

#[test]
fn unencrypted_volumes_store_plaintext_after_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.vol");
    volume::create(&path, 2 * MIB, NewVolumeKey::Unencrypted).unwrap();
    let kms = TestKms::new();
    let OpenedVolume::Plain(vol) = volume::open_detected(&path, &kms.kms, false).unwrap() else {
        panic!("an unencrypted volume opened as encrypted");
    };
    assert_eq!(vol.size(), 2 * MIB);
    assert_eq!(
        vol.header().unwrap().header.encryption(),
        &format::Encryption::None
    );
    vol.write_at(4096, b"visible").unwrap();
    let mut stored = [0u8; 7];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut stored, MIB + 4096)
        .unwrap();
    assert_eq!(&stored, b"visible");
    vol.trim(0, 2 * MIB).unwrap();
    let extents = vol.allocation(0, 2 * MIB).unwrap();
    assert_eq!(extents.len(), 1);
    assert!(extents[0].hole);
}

#[test]
fn revoked_key_fails_every_request_until_reinstalled() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, MIB);
    let vol = EncryptedVolume::open(&path, &kms.kms, false).unwrap();
    vol.write_at(0, b"before").unwrap();
    vol.revoke_key("DisabledException: key disabled");
    assert!(!vol.has_key());
    let mut buf = [0u8; 6];
    let unavailable = |r: Result<(), Error>| match r {
        Err(Error::KeyUnavailable { key_arn, reason }) => {
            assert_eq!(key_arn, kms.key_arn);
            assert!(reason.contains("disabled"));
        }
        other => panic!("expected KeyUnavailable, got {other:?}"),
    };
    unavailable(vol.read_at(0, &mut buf));
    unavailable(vol.read_cached(0, &mut [0u8; 4096]).map(drop));
    unavailable(vol.write_at(0, b"after"));
    unavailable(vol.trim(0, 4096));
    unavailable(vol.write_zeroes(0, 4096, false));
    unavailable(vol.flush());
    unavailable(vol.check_attach());
    unavailable(vol.allocation(0, 4096).map(drop));
    let key = XtsKey::from_slice(&kms.data_key(&vol)).unwrap();
    vol.install_key(key).unwrap();
    vol.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"before");
    vol.check_attach().unwrap();
}

#[test]
fn a_disabled_key_refuses_open_and_locked_open_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, MIB);
    kms.disable();
    let err = volume::open(&path, &kms.kms, false).unwrap_err();
    assert!(err.to_string().starts_with("DisabledException"), "{err}");
    let locked = EncryptedVolume::open_locked(&path, false).unwrap();
    assert!(matches!(
        locked.check_attach(),
        Err(Error::KeyUnavailable { .. })
    ));
    kms.enable();
    locked.unlock(&kms.kms).unwrap();
    locked.check_attach().unwrap();
}

#[test]
fn trim_gives_space_back_and_reads_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, 8 * MIB);
    let vol = volume::open(&path, &kms.kms, false).unwrap();
    vol.write_at(0, &vec![0xA5; 4 * MIB as usize]).unwrap();
    let before = std::fs::metadata(&path).unwrap().blocks() * 512;
    vol.trim(100, 2 * MIB).unwrap();
    let after = std::fs::metadata(&path).unwrap().blocks() * 512;
    assert!(
        before - after >= 2 * MIB - 8192,
        "allocated {before} -> {after}"
    );
    let extents = vol.allocation(0, 8 * MIB).unwrap();
    let lengths: Vec<(u64, bool)> = extents.iter().map(|e| (e.length, e.hole)).collect();
    assert_eq!(
        lengths,
        vec![
            (4096, false),
            (2 * MIB - 4096, true),
            (2 * MIB, false),
            (4 * MIB, true)
        ]
    );
    let mut buf = vec![1u8; 2 * MIB as usize + 200];
    vol.read_at(0, &mut buf).unwrap();
    assert!(buf[..100].iter().all(|&b| b == 0xA5));
    assert!(buf[100..100 + 2 * MIB as usize].iter().all(|&b| b == 0));
    assert!(buf[100 + 2 * MIB as usize..].iter().all(|&b| b == 0xA5));
}

#[test]
fn opening_for_writing_repairs_a_damaged_header_copy() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, MIB);
    corrupt(&path, 4064);
    let read_only = EncryptedVolume::open(&path, &kms.kms, true).unwrap();
    assert_eq!(read_only.header_copy(), HeaderCopy::Backup);
    drop(read_only);
    let writable = EncryptedVolume::open(&path, &kms.kms, false).unwrap();
    assert!(writable.header_warning().unwrap().contains("repaired"));
    drop(writable);
    let file = std::fs::File::open(&path).unwrap();
    let located = format::read_header(&file, &path).unwrap();
    assert_eq!((located.copy, located.warning), (HeaderCopy::Primary, None));
}

#[test]
fn a_volume_has_one_writer_at_a_time_and_readers_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let path = create(dir.path(), &kms, MIB);
    let image = dir.path().join("raw.img");
    std::fs::write(&image, vec![7u8; MIB as usize]).unwrap();
    let open = |path: &std::path::Path, read_only| -> Result<std::sync::Arc<dyn Volume>, Error> {
        if path == image {
            Ok(volume::open_raw(path, read_only)?)
        } else {
            volume::open(path, &kms.kms, read_only)
        }
    };
    for path in [&path, &image] {
        let writer = open(path, false).unwrap();
        let second = open(path, false).err();
        assert!(
            matches!(&second, Some(Error::InUse { path: p }) if p == path),
            "{second:?}"
        );
        assert!(second
            .unwrap()
            .to_string()
            .contains("already open for writing"));
        if path.extension().is_some_and(|e| e == "vol") {
            let locked = EncryptedVolume::open_locked(path, false).err();
            assert!(matches!(locked, Some(Error::InUse { .. })), "{locked:?}");
        }
        // Readers need no lock, and the writer keeps writing meanwhile.
        let reader = open(path, true).unwrap();
        writer.write_at(0, &[1u8; 4096]).unwrap();
        let mut back = [0u8; 4096];
        reader.read_at(0, &mut back).unwrap();
        assert_eq!(back, [1u8; 4096]);
        // Closing the writer frees the volume for the next one.
        drop(writer);
        open(path, false).unwrap();
    }
}
