//! The volume file: positioned I/O, hole punching and the allocation map, with errors
//! that name the file. Shared by both volume kinds.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::{Errno, ReadWriteFlags};

use super::Extent;
use crate::mapped::FileMap;
use crate::Error;

/// Zeros written for `write_zeroes` when the client forbids holes.
static ZEROS: [u8; 128 * 1024] = [0; 128 * 1024];

/// Writes reach the file in pieces of at most this many bytes, each within one
/// aligned 64 KiB block of the file. The page cache sizes the folios it creates for a
/// write by the write's length, and ext4 walks every buffer of a folio on each write
/// into it, so large pieces make later small overwrites dearer. Measured on ext4 with
/// kernel 6.18 (session 9, load 4-5: a 512 MiB file written in pieces of the size
/// shown, then CPU per `pread` of 1 MiB, per `pwrite` of 4 KiB at random, and per
/// 1 MiB rewritten in order from a hot buffer, in 64 KiB pieces or in one call):
///
/// | piece (folio) | 1 MiB read | 4 KiB overwrite | 1 MiB write: 64 KiB pieces / one |
/// |---|---|---|---|
/// | 64 KiB | 110-112 us | 1.5-1.7 us | 106-118 / 108-121 us |
/// | 256 KiB | 111-116 us | 2.3-2.4 us | 120 / 113-114 us |
/// | 1 MiB | 107-114 us | 5.8-5.9 us | 128-132 / 109-116 us |
///
/// Reads no longer depend on the folio size (session 7 measured 47 against 34 us),
/// and a 1 MiB write costs the same in 64 KiB pieces over 64 KiB folios as in one
/// call over 1 MiB ones. In the NBD server (four runs, load 6; `benches/README.md`,
/// "Writes, session 9"), one call per whole aligned 256 KiB block, or pieces of 1 MiB,
/// left the server's CPU per 1 MiB sequential write at 264 and 261 us against 265 us,
/// and took it per later 4 KiB random write from 3.3 to 4.9 and 4.7 us (medians):
/// 64 KiB stays. A 1 MiB write is 16 system calls.
const WRITE_PIECE: u64 = 64 * 1024;

/// The length of the next piece of a write with `len` bytes left at file offset `at`:
/// up to the next [`WRITE_PIECE`] boundary.
fn piece_len(at: u64, len: usize) -> usize {
    // At most WRITE_PIECE, so the cast is exact.
    let room = (WRITE_PIECE - at % WRITE_PIECE) as usize;
    len.min(room)
}

/// Opens `path` (following symlinks) as a volume file: read-only, or read-write with
/// `writable`. The open itself never blocks: it is made with `O_NONBLOCK` (a FIFO
/// with no writer would otherwise wait for ever) and `O_NOCTTY`, then the opened file
/// (not the path, which could be swapped meanwhile) must be a regular file or a block
/// device, else [`Error::NotAVolumeFile`] names its type. `O_NONBLOCK` is cleared
/// again before the file is used.
pub fn open_volume_file(path: &Path, writable: bool) -> Result<File, Error> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| Error::Io {
            context: format!("open {}", path.display()),
            source,
        })?;
    let file_type = file
        .metadata()
        .map_err(|source| Error::Io {
            context: format!("stat {}", path.display()),
            source,
        })?
        .file_type();
    if !file_type.is_file() && !file_type.is_block_device() {
        let kind = if file_type.is_fifo() {
            "FIFO (named pipe)"
        } else if file_type.is_char_device() {
            "character device"
        } else if file_type.is_socket() {
            "socket"
        } else if file_type.is_dir() {
            "directory"
        } else {
            "special file"
        };
        return Err(Error::NotAVolumeFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    let flags = rustix::fs::fcntl_getfl(&file).map_err(|errno| Error::Io {
        context: format!("fcntl {}", path.display()),
        source: errno.into(),
    })?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK).map_err(|errno| {
        Error::Io {
            context: format!("fcntl {}", path.display()),
            source: errno.into(),
        }
    })?;
    Ok(file)
}

/// The length of a volume file: its size for a regular file, the device's capacity
/// for a block device (whose `st_size` is 0).
pub(crate) fn file_len(file: &File, path: &Path) -> Result<u64, Error> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata().map_err(|source| Error::Io {
        context: format!("stat {}", path.display()),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Ok(meta.len());
    }
    rustix::fs::seek(file, SeekFrom::End(0)).map_err(|errno| Error::Io {
        context: format!("size of the block device {}", path.display()),
        source: errno.into(),
    })
}

/// Takes the header-update lock of `file` (opened for writing): an exclusive `fcntl`
/// record lock over the whole file (held by this process), separate from the writer lock (a `flock`)
/// so that `volume rewrap` of a served volume still works, but two header updates
/// (two rewraps, a rewrap and a repair) never interleave and write two headers of
/// one generation. Released when the file is closed. A held lock is waited on for
/// [`WRITER_LOCK_PATIENCE`], then [`Error::HeaderBusy`].
pub(crate) fn lock_header(file: &File, path: &Path) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + WRITER_LOCK_PATIENCE;
    loop {
        match rustix::fs::fcntl_lock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(Errno::WOULDBLOCK | Errno::ACCESS) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(Errno::WOULDBLOCK | Errno::ACCESS) => {
                return Err(Error::HeaderBusy {
                    path: path.to_path_buf(),
                })
            }
            Err(Errno::INTR) => {}
            Err(errno) => {
                tracing::debug!(path = %path.display(), "no header lock on this filesystem: {errno}");
                return Ok(());
            }
        }
    }
}

/// Releases the lock [`lock_header`] took (it also goes when the file is closed).
pub(crate) fn unlock_header(file: &File, path: &Path) {
    if let Err(errno) = rustix::fs::fcntl_lock(file, rustix::fs::FlockOperation::Unlock) {
        tracing::debug!(path = %path.display(), "releasing the header lock: {errno}");
    }
}

/// Takes the volume's writer lock on `file` (opened for writing): an exclusive
/// `flock`, held by the open file until it is closed, so a second writer of the same
/// volume (another process, or another open in this one) gets [`Error::InUse`]
/// instead of interleaving its read-modify-writes with ours. Readers and header-only
/// changes (`atrest volume rewrap` of a served volume, `volume info`) take no lock.
/// A filesystem without `flock` support is served unlocked, as before.
///
/// A lock that was just released can still be held for a moment by a child process
/// that any thread of this process forked before the close and that has not yet
/// exec'd (the child shares the open file until then), so a held lock is retried for
/// [`WRITER_LOCK_PATIENCE`] before the answer is `InUse`.
pub(crate) fn lock_for_writing(file: &File, path: &Path) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + WRITER_LOCK_PATIENCE;
    loop {
        match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(Errno::WOULDBLOCK) => {
                return Err(Error::InUse {
                    path: path.to_path_buf(),
                })
            }
            Err(Errno::INTR) => {}
            Err(errno) => {
                tracing::debug!(path = %path.display(), "no writer lock on this filesystem: {errno}");
                return Ok(());
            }
        }
    }
}

/// How long [`lock_for_writing`] waits for a held lock.
const WRITER_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct VolumeFile {
    file: File,
    path: PathBuf,
    /// Set by [`VolumeFile::with_map`].
    map: Option<FileMap>,
}

impl VolumeFile {
    pub(crate) fn new(file: File, path: &Path) -> Self {
        Self {
            file,
            path: path.to_path_buf(),
            map: None,
        }
    }

    /// Maps the file for [`VolumeFile::cached`] where that is safe (see
    /// [`crate::mapped`]); without a mapping `cached` always says `None`.
    pub(crate) fn with_map(mut self) -> Self {
        self.map = self
            .len()
            .ok()
            .and_then(|len| FileMap::new(&self.file, len));
        if self.map.is_none() {
            tracing::debug!(path = %self.path.display(), "volume file not mapped; reads use pread");
        }
        self
    }

    /// The bytes at `pos..pos + len` straight from the page cache, when it holds all
    /// of them and the file is mapped; `None` means: read them with
    /// [`VolumeFile::read_exact_at`]. Never waits for the disk.
    pub(crate) fn cached(&self, pos: u64, len: usize) -> Option<&[u8]> {
        self.map.as_ref()?.resident(pos, len)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The open file itself (to read the header again).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    fn io_error(&self, what: &str, pos: u64, source: io::Error) -> Error {
        Error::Io {
            context: format!("{what} {} at byte {pos}", self.path.display()),
            source,
        }
    }

    /// Fills `buf` from file offset `pos`. Holes read as zeros; a short read means the
    /// file was cut below the length its header promises.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> Result<(), Error> {
        self.file.read_exact_at(buf, pos).map_err(|source| {
            if source.kind() == io::ErrorKind::UnexpectedEof {
                self.truncated(buf.len(), pos)
            } else {
                self.io_error("read", pos, source)
            }
        })
    }

    /// Fills `buf` from file offset `pos` like [`VolumeFile::read_exact_at`], but only
    /// from the page cache (`RWF_NOWAIT`): `Ok(false)` when some of it would have to
    /// come from the disk (or the kernel cannot tell), and `buf` then holds nothing
    /// promised. Never waits for the disk, so it may run where waiting would hold
    /// others up.
    pub(crate) fn read_cached_at(&self, buf: &mut [u8], pos: u64) -> Result<bool, Error> {
        let mut done = 0;
        while done < buf.len() {
            let at = pos + done as u64;
            let read = rustix::io::preadv2(
                &self.file,
                &mut [io::IoSliceMut::new(&mut buf[done..])],
                at,
                ReadWriteFlags::NOWAIT,
            );
            match read {
                Ok(0) => return Err(self.truncated(buf.len(), pos)),
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                // Not cached (AGAIN), or no RWF_NOWAIT here (OPNOTSUPP, old kernels).
                Err(Errno::AGAIN | Errno::OPNOTSUPP) => return Ok(false),
                Err(errno) => return Err(self.io_error("read", at, errno.into())),
            }
        }
        Ok(true)
    }

    fn truncated(&self, len: usize, pos: u64) -> Error {
        Error::Corrupted {
            path: self.path.clone(),
            what: format!("file truncated: cannot read {len} bytes at byte {pos}"),
        }
    }

    pub(crate) fn write_all_at(&self, data: &[u8], pos: u64) -> Result<(), Error> {
        #[cfg(feature = "fault-injection")]
        if let Some(fault) = super::faults::take(&self.path, super::faults::FaultOp::Write) {
            if let super::faults::Fault::Short { bytes } = fault {
                let part = &data[..bytes.min(data.len())];
                self.file
                    .write_all_at(part, pos)
                    .map_err(|source| self.io_error("write", pos, source))?;
            }
            return Err(self.io_error("write", pos, super::faults::error(fault)));
        }
        let mut at = pos;
        let mut rest = data;
        while !rest.is_empty() {
            let take = piece_len(at, rest.len());
            let (piece, after) = rest.split_at(take);
            self.file
                .write_all_at(piece, at)
                .map_err(|source| self.io_error("write", at, source))?;
            at += take as u64;
            rest = after;
        }
        Ok(())
    }

    /// Deallocates `len` bytes at `pos`; they read back as zeros. The file size stays.
    pub(crate) fn punch_hole(&self, pos: u64, len: u64) -> Result<(), Error> {
        #[cfg(feature = "fault-injection")]
        if let Some(fault) = super::faults::take(&self.path, super::faults::FaultOp::PunchHole) {
            return Err(self.io_error("punch a hole in", pos, super::faults::error(fault)));
        }
        rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            pos,
            len,
        )
        .map_err(|errno| self.io_error("punch a hole in", pos, errno.into()))
    }

    /// Writes `len` zero bytes at `pos`, leaving the range allocated.
    pub(crate) fn write_zero_bytes(&self, mut pos: u64, len: u64) -> Result<(), Error> {
        let end = pos + len;
        while pos < end {
            let chunk = (end - pos).min(ZEROS.len() as u64) as usize;
            self.write_all_at(&ZEROS[..chunk], pos)?;
            pos += chunk as u64;
        }
        Ok(())
    }

    pub(crate) fn sync_data(&self) -> Result<(), Error> {
        #[cfg(feature = "fault-injection")]
        if let Some(fault) = super::faults::take(&self.path, super::faults::FaultOp::Sync) {
            return Err(Error::Io {
                context: format!("fdatasync {}", self.path.display()),
                source: super::faults::error(fault),
            });
        }
        self.file.sync_data().map_err(|source| Error::Io {
            context: format!("fdatasync {}", self.path.display()),
            source,
        })
    }

    pub(crate) fn len(&self) -> Result<u64, Error> {
        file_len(&self.file, &self.path)
    }

    /// Next file offset at or after `pos` that holds data, or `None` past the last data.
    fn next_data(&self, pos: u64) -> Result<Option<u64>, Error> {
        match rustix::fs::seek(&self.file, SeekFrom::Data(pos)) {
            Ok(at) => Ok(Some(at)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            // A block device has no allocation map: all of it is data.
            Err(rustix::io::Errno::INVAL) => Ok(Some(pos)),
            Err(errno) => Err(self.io_error("SEEK_DATA in", pos, errno.into())),
        }
    }

    /// Next file offset at or after `pos` that is a hole (end of file counts as one).
    fn next_hole(&self, pos: u64) -> Result<u64, Error> {
        match rustix::fs::seek(&self.file, SeekFrom::Hole(pos)) {
            Ok(at) => Ok(at),
            Err(rustix::io::Errno::INVAL) => self.len(),
            Err(errno) => Err(self.io_error("SEEK_HOLE in", pos, errno.into())),
        }
    }

    /// Allocation of volume bytes `offset..offset + length`, where volume byte 0 is file
    /// byte `base`. Units of `granularity` bytes (counted from volume byte 0) are
    /// reported as a hole only when wholly unallocated. Adjacent extents differ.
    pub(crate) fn allocation(
        &self,
        base: u64,
        offset: u64,
        length: u64,
        granularity: u64,
    ) -> Result<Vec<Extent>, Error> {
        let end = offset + length;
        let mut extents: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let unit_start = pos / granularity * granularity;
            let (hole, run_end) = match self.next_data(base + unit_start)? {
                None => (true, end),
                Some(data) if data >= base + unit_start + granularity => {
                    (true, (data - base) / granularity * granularity)
                }
                Some(data) => {
                    let hole = self.next_hole(data)?;
                    (false, (hole - base).div_ceil(granularity) * granularity)
                }
            };
            // A concurrent trim can punch the data found by SEEK_DATA before SEEK_HOLE
            // runs, which then answers that very offset: the unit is reported as data
            // (always safe to say) and the walk still moves past it.
            let run_end = run_end.max(unit_start + granularity).min(end);
            let length = run_end - pos;
            match extents.last_mut() {
                Some(last) if last.hole == hole => last.length += length,
                _ => extents.push(Extent {
                    length,
                    hole,
                    zero: hole,
                }),
            }
            pos = run_end;
        }
        Ok(extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_split_into_pieces_lands_whole_at_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let file = VolumeFile::new(file, &path);
        let data: Vec<u8> = (0..3 * WRITE_PIECE as usize + 777)
            .map(|i| (i % 251) as u8 | 1)
            .collect();
        for pos in [0, 1, WRITE_PIECE - 1, WRITE_PIECE, 5000] {
            file.write_all_at(&data, pos).unwrap();
            let mut back = vec![0u8; data.len()];
            file.read_exact_at(&mut back, pos).unwrap();
            assert_eq!(back, data, "write at {pos}");
        }
        file.write_all_at(&[], 7).unwrap();
        assert_eq!(file.len().unwrap(), WRITE_PIECE + data.len() as u64);
    }

    /// The pieces of a write cover it exactly, in order, and none crosses an aligned
    /// `WRITE_PIECE` block: the page cache sizes its folios by them (see `WRITE_PIECE`),
    /// so a 1 MiB write in one `pwrite` would leave 1 MiB folios that make every later
    /// 4 KiB overwrite cost several times more.
    #[test]
    fn pieces_cover_a_write_exactly_and_stay_within_one_aligned_block() {
        let p = WRITE_PIECE;
        let mib = 1024 * 1024;
        // (file offset, length): aligned and unaligned starts, whole blocks, a write
        // crossing a block boundary, lengths that are not a multiple of the piece,
        // one byte, a 512-byte client sector, the end of a large file.
        let cases = [
            (0, 1),
            (0, p),
            (0, mib),
            (mib, mib),
            (mib, 4 * mib + 4096),
            (1, p),
            (p - 1, 2),
            (p - 512, 512),
            (3 * p + 4096, 16 * p - 8192),
            (5 * 512, 7 * 512),
            (u64::MAX / 2 - 3 * p - 100, 3 * p + 100),
        ];
        for (pos, len) in cases {
            let mut at = pos;
            let mut left = len as usize;
            let mut pieces = 0;
            while left > 0 {
                let take = piece_len(at, left);
                assert!(
                    take > 0 && take <= left,
                    "piece of {take} at {at} ({pos}, {len})"
                );
                let end = at + take as u64;
                assert_eq!(at / p, (end - 1) / p, "piece {at}..{end} crosses a block");
                // Each piece but the last ends on a block boundary: no extra calls.
                assert!(
                    end % p == 0 || take == left,
                    "piece {at}..{end} stops early"
                );
                at = end;
                left -= take;
                pieces += 1;
            }
            assert_eq!(at, pos + len, "({pos}, {len}) not covered");
            let blocks = (pos + len).div_ceil(p) - pos / p;
            assert_eq!(
                pieces, blocks,
                "({pos}, {len}): one piece per block touched"
            );
        }
    }
}
