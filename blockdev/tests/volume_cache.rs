//! An encrypted volume reads the same bytes whether the file's pages come from the disk
//! (`pread`, then decrypted in place) or straight from the page cache (decrypted out of
//! the file mapping): every mix of data, stored zeros and holes, every read size.

mod volume_support;

use std::os::unix::fs::FileExt;
use std::path::Path;

use blockdev::volume::{self, NewVolumeKey, Volume};
use rustix::fs::Advice;
use rustix::io::{Errno, ReadWriteFlags};
use volume_support::TestKms;

const SECTOR: usize = 4096;
const SIZE: usize = 4 << 20;

/// Drops the file's clean pages from the page cache (none is mapped yet: writes and
/// `pread` do not map them).
fn evict(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    rustix::fs::fadvise(&file, 0, None, Advice::DontNeed).unwrap();
}

/// Whether the page cache holds the byte at `pos` of `path`.
fn cached(path: &Path, pos: u64) -> bool {
    let file = std::fs::File::open(path).unwrap();
    let mut byte = [0u8; 1];
    match rustix::io::preadv2(
        &file,
        &mut [std::io::IoSliceMut::new(&mut byte)],
        pos,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(_) => true,
        Err(Errno::AGAIN) => false,
        Err(e) => panic!("preadv2: {e}"),
    }
}

fn read(vol: &dyn Volume, offset: usize, len: usize) -> Vec<u8> {
    let mut buf = vec![0xeeu8; len];
    vol.read_at(offset as u64, &mut buf).unwrap();
    buf
}

#[test]
fn reads_from_the_disk_and_from_the_page_cache_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.vol");
    let kms = TestKms::new();
    let header = volume::create(
        &path,
        SIZE as u64,
        NewVolumeKey::Kms {
            kms: &kms.kms,
            key_id: &kms.key_arn,
        },
    )
    .unwrap();
    let data_at = header.data_offset();
    let vol = volume::open(&path, &kms.kms, false).unwrap();

    // Whole sectors only, so no write reads (and maps) a page before the checks.
    let mut model = vec![0u8; SIZE];
    for (i, chunk) in model.chunks_mut(SECTOR).enumerate() {
        if i % 7 != 3 && i % 11 != 5 {
            chunk.fill((i % 251) as u8 | 1);
        }
    }
    model[SIZE - 64 * SECTOR..].fill(0); // a hole at the end
    vol.write_at(0, &model[..SIZE - 64 * SECTOR]).unwrap();
    // Stored zeros (sector 3 of 7) and holes (sector 5 of 11).
    for i in 0..SIZE / SECTOR - 64 {
        if i % 7 == 3 {
            vol.write_zeroes((i * SECTOR) as u64, SECTOR as u64, false)
                .unwrap();
        } else if i % 11 == 5 {
            vol.trim((i * SECTOR) as u64, SECTOR as u64).unwrap();
        }
    }
    vol.flush().unwrap();
    evict(&path);
    assert!(
        !cached(&path, data_at),
        "the page cache still holds the volume after fadvise(DONTNEED)"
    );

    let reads = [
        (0, SIZE),
        (0, 1 << 20),
        (3 * SECTOR, 5 * SECTOR),
        (17 * SECTOR + 100, 3 * SECTOR),
        (SIZE - 65 * SECTOR, 65 * SECTOR),
        (SIZE - 1, 1),
    ];
    // The first whole read comes from the disk; afterwards every page is cached.
    let from_disk = read(&*vol, 0, SIZE);
    assert!(cached(&path, data_at), "the read left the pages cached");
    assert!(
        from_disk == model,
        "read from the disk differs from what was written"
    );
    for (offset, len) in reads {
        let from_cache = read(&*vol, offset, len);
        assert!(
            from_cache == model[offset..offset + len],
            "cached read of {len} bytes at {offset} differs"
        );
        if offset % SECTOR == 0 && len % SECTOR == 0 {
            let mut small = vec![0xeeu8; len];
            assert!(vol.read_cached(offset as u64, &mut small).unwrap());
            assert!(
                small == model[offset..offset + len],
                "read_cached at {offset}"
            );
        }
    }

    // A write through the file descriptor is seen by the next read from the mapping.
    let fresh = vec![0x5au8; 2 * SECTOR];
    vol.write_at(8 * SECTOR as u64, &fresh).unwrap();
    model[8 * SECTOR..10 * SECTOR].copy_from_slice(&fresh);
    assert!(
        read(&*vol, 0, SIZE) == model,
        "a rewrite is not seen by the cached read"
    );

    // Both paths read ciphertext: the pattern is nowhere in the file.
    let mut stored = vec![0u8; SECTOR];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut stored, data_at)
        .unwrap();
    assert!(stored != model[..SECTOR]);
}
