//! A read-only mapping of a volume file, read only where the page cache already holds
//! the pages.
//!
//! Reading an encrypted sector with `pread` copies it from the page cache into a
//! buffer, then decrypts the buffer: two passes over memory. Through a mapping the
//! cipher reads the page cache directly and writes plaintext into the buffer in one
//! pass (`SectorCipher::decrypt_sectors_to`): 1 MiB in 152 us instead of 240 us on
//! the development machine (cold page cache data, VAES). See `benches/README.md`.
//!
//! A mapping turns I/O errors into `SIGBUS`, which would take the whole server down.
//! So [`FileMap::resident`] hands out bytes only when `mincore` says every page is in
//! the page cache; anything else goes through `pread`, which reports errors as errors.
//! The kernel tells the truth about page cache residency only to processes that own
//! the file or may write it (otherwise it answers "all resident"), so a file is
//! mapped only then (see [`FileMap::new`]).
//!
//! What is still not covered, and why that is acceptable: a page evicted between the
//! check and the read is read again from the disk, and a disk error in that window
//! raises `SIGBUS`; a file truncated by another process while served raises `SIGBUS`
//! on the next read of the cut range. atrest never truncates an open volume, and a
//! process allowed to truncate the file can destroy the volume anyway
//! (`docs/SECURITY.md`). In both cases the server dies without serving a wrong byte.
#![allow(unsafe_code)]

use std::fs::File;

/// Pages checked per `mincore` call (the answer vector lives on the stack).
const PAGES_PER_CHECK: usize = 512;

/// A shared read-only mapping of a whole volume file.
#[derive(Debug)]
pub(crate) struct FileMap {
    map: memmap2::Mmap,
    page: usize,
}

impl FileMap {
    /// Maps the first `len` bytes of `file` (its length when opened; volume files
    /// never change length while open), or `None` where a mapping would not be safe
    /// to read or cannot be made: an empty file, a file this process neither owns
    /// nor may write (`mincore` would not tell residency), a mapping the kernel
    /// refuses.
    pub(crate) fn new(file: &File, len: u64) -> Option<FileMap> {
        if len == 0 || !residency_is_visible(file) {
            return None;
        }
        let len = usize::try_from(len).ok()?;
        // SAFETY: the mapping is read-only and shared, so this process never writes
        // through it. Its bytes change when the file is written (by this process with
        // `pwrite`, through the same page cache): readers get old or new bytes of a
        // sector that a client is writing at the same time, as NBD allows for
        // overlapping requests in flight, and read them only through `resident`.
        // Truncation by another process is covered in the module comment.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file) }.ok()?;
        let page = rustix::param::page_size();
        Some(FileMap { map, page })
    }

    /// The bytes at `pos..pos + len` when the page cache holds every page of them;
    /// `None` when some page would have to come from the disk, the range is past the
    /// mapping, or the kernel cannot tell.
    ///
    /// The bytes may change while the slice is borrowed (see the deviation noted at
    /// the end): read each byte as data, never rely on reading it twice alike.
    pub(crate) fn resident(&self, pos: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(pos).ok()?;
        let end = start.checked_add(len)?;
        if end > self.map.len() || len == 0 {
            return None;
        }
        let first_page = start / self.page * self.page;
        let mut at = first_page;
        let mut answers = [0u8; PAGES_PER_CHECK];
        while at < end {
            let pages = (end - at).div_ceil(self.page).min(PAGES_PER_CHECK);
            // SAFETY: `at` is page aligned (the mapping starts on a page) and
            // `at..at + pages * page` lies within the mapping rounded up to whole
            // pages, all of which the kernel mapped; `answers` has room for `pages`
            // entries. mincore reads nothing and writes only `answers`.
            let rc = unsafe {
                libc::mincore(
                    self.map.as_ptr().add(at).cast_mut().cast(),
                    pages * self.page,
                    answers.as_mut_ptr(),
                )
            };
            if rc != 0 || answers[..pages].iter().any(|&a| a & 1 == 0) {
                return None;
            }
            at += pages * self.page;
        }
        // DEVIATION from `&[u8]`'s promise (SAFETY of the mapping made in `new`): the
        // slice handed out is not immutable while borrowed. This process writes the
        // same file with `pwrite` (a whole-sector write takes its sector locks
        // shared, and reads take none), and the kernel copies those bytes into the
        // very page-cache pages this mapping shows, so a reader may see a sector
        // change under it. Raw pointers would say so, but the cipher
        // (`SectorCipher::decrypt_sectors_to`, crypto-core) takes slices, and a
        // copy into an owned buffer is the second pass over memory this module
        // exists to avoid. Why it is acceptable: the bytes are ciphertext read as
        // plain data (no index, length or bound is taken from them; the only branch
        // is `decrypt_stored_to`'s all-zero test, whose two looks at a sector may
        // disagree), so the worst outcome is a sector of garbage plaintext in a read
        // that overlaps a write of it, which NBD leaves undefined (the spec gives
        // overlapping requests in flight no order). Nothing outside the mapping is
        // read, and the mapping is never written through.
        Some(&self.map[start..end])
    }
}

/// Whether `mincore` on a mapping of `file` reports the page cache truthfully: the
/// kernel does so for the file's owner, for a process with CAP_FOWNER (root), and for
/// one that may write the file; to anyone else it says every page is resident.
fn residency_is_visible(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let euid = rustix::process::geteuid();
    if euid.is_root() || meta.uid() == euid.as_raw() {
        return true;
    }
    let Ok(flags) = rustix::fs::fcntl_getfl(file) else {
        return false;
    };
    // Opened for writing: the kernel's write-permission check passes as well.
    flags.contains(rustix::fs::OFlags::RDWR) || flags.contains(rustix::fs::OFlags::WRONLY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn cached_bytes_are_handed_out_and_ranges_past_the_end_are_not() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 253) as u8).collect();
        file.write_all(&data).unwrap();
        let map = FileMap::new(&file, data.len() as u64).expect("own file maps");
        // Just written, so in the page cache.
        assert_eq!(map.resident(5, 9000), Some(&data[5..9005]));
        assert_eq!(map.resident(0, data.len()), Some(&data[..]));
        assert_eq!(map.resident(1, data.len()), None, "one byte past the end");
        assert_eq!(map.resident(u64::MAX, 1), None);
        assert_eq!(map.resident(0, 0), None);
    }

    #[test]
    fn a_hole_nobody_read_is_not_resident() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(64 << 20).unwrap();
        let map = FileMap::new(&file, 64 << 20).unwrap();
        // A never-read hole has no page cache page (pread would read zeros).
        assert_eq!(map.resident(32 << 20, 4096), None);
    }

    #[test]
    fn empty_files_are_not_mapped() {
        let file = tempfile::tempfile().unwrap();
        assert!(FileMap::new(&file, 0).is_none());
    }
}
