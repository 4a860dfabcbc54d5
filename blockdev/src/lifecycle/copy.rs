//! Snapshot (reflink clone or sparse file copy), encrypted copy and import (decrypt
//! and re-encrypt through the volume layer), and the crash-safe publication of the
//! result.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crypto_core::kms::KeyService;
use rustix::fs::{RenameFlags, SeekFrom, CWD};

use super::data_area::{AlignedBuf, DataAreaWriter};
use super::Progress;
use crate::format::{self, VolumeHeader, FLAG_READ_ONLY};
use crate::volume::{self, EncryptedVolume, ImageFormat, NewVolumeKey, Volume};
use crate::Error;

const SECTOR: usize = format::SECTOR_SIZE as usize;
/// Bytes read, re-encrypted and written per step: large enough that the sector cipher
/// spreads it over every core, small enough to stay in the volume's buffer pool.
const CHUNK: usize = 4 * 1024 * 1024;
/// Chunks in flight between the reader and the writer (bounds memory to about
/// `(DEPTH + 2) * CHUNK`).
const DEPTH: usize = 4;
/// Threads that encrypt and write: while one waits for the disk, another encrypts.
const WRITERS: usize = 2;
/// The allocation map is asked for in windows of this many bytes.
const MAP_WINDOW: u64 = 1 << 30;
/// `copy_file_range` moves at most this much per call, so progress stays live.
const COPY_STEP: u64 = 64 * 1024 * 1024;

/// The key of the volume a [`copy`] makes.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// The source's CMK (a fresh data key under it); the source must be encrypted.
    SourceKey,
    /// A fresh data key under this CMK (key id, ARN or alias).
    Key(&'a str),
    /// No encryption; only an unencrypted source may be copied so.
    Unencrypted,
}

/// What [`copy`] and [`import`] did.
#[derive(Clone, Debug)]
pub struct CopyReport {
    /// The new volume's header.
    pub header: VolumeHeader,
    /// Bytes of the source that held data and were re-encrypted.
    pub data_bytes: u64,
    /// Bytes skipped as holes or all-zero sectors (holes in the copy).
    pub hole_bytes: u64,
}

/// What [`snapshot`] did.
#[derive(Clone, Debug)]
pub struct SnapshotReport {
    /// The snapshot's header; `None` when the source is a plain raw image (then the
    /// snapshot file is made read-only by its permissions instead).
    pub header: Option<VolumeHeader>,
    /// True when the filesystem shared the source's blocks (FICLONE) instead of copying.
    pub reflinked: bool,
}

/// A point-in-time, read-only copy of `src` at `dst`, with the same encryption (the
/// same wrapped data key and volume id): a reflink clone where the filesystem can,
/// else a sparse copy of the file. The header's `READ_ONLY` flag is set (a raw image
/// gets mode 0444 instead). A sparse copy is point-in-time only if nothing writes to
/// `src` meanwhile; a clone is atomic. `format` is what `src` is declared to be: an
/// atrest volume must have a valid header; a raw image is copied whatever its bytes
/// say (an atrest header inside it stays data and is not marked read-only).
pub fn snapshot(
    src: &Path,
    format: ImageFormat,
    dst: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<SnapshotReport, Error> {
    check_target(src, dst, force)?;
    let source = open_read(src)?;
    let located = match format {
        ImageFormat::Atrest => Some(format::read_header(&source, src)?),
        ImageFormat::Raw => None,
    };
    if !source
        .metadata()
        .map_err(|e| io_err("stat", src, e))?
        .is_file()
    {
        return Err(Error::InvalidArgument {
            what: format!(
                "{} is a block device: snapshot it with `volume copy` (atrest volume) \
                 or `volume import` (raw image)",
                src.display()
            ),
        });
    }
    let len = volume::file_len(&source, src)?;
    let partial = PartialOutput::create(dst)?;
    progress.start(len);
    let reflinked = match rustix::fs::ioctl_ficlone(&partial.file, &source) {
        Ok(()) => {
            progress.advance(len);
            true
        }
        Err(_) => {
            // No reflinks here (ext4, tmpfs, another filesystem): copy the data extents.
            sparse_file_copy(&source, &partial.file, len, src, &partial.path, progress)?;
            false
        }
    };
    let header = match located {
        Some(located) => {
            let header = located
                .header
                .with_flags(located.header.flags() | FLAG_READ_ONLY)?;
            format::write_header(&partial.file, &partial.path, &header)?;
            Some(header)
        }
        None => {
            partial
                .file
                .set_permissions(std::fs::Permissions::from_mode(0o444))
                .map_err(|e| io_err("make read-only", &partial.path, e))?;
            None
        }
    };
    partial
        .file
        .sync_all()
        .map_err(|e| io_err("sync", &partial.path, e))?;
    partial.publish(dst, force)?;
    progress.finish();
    Ok(SnapshotReport { header, reflinked })
}

/// A new volume at `dst` holding `src`'s data re-encrypted under a fresh data key
/// (EBS CopySnapshot): unencrypted to encrypted and encrypted to encrypted under any
/// CMK work; encrypted to unencrypted is refused, as EBS refuses it. The new volume
/// gets a new volume id; holes and all-zero sectors stay holes.
pub fn copy(
    src: &Path,
    dst: &Path,
    kms: &dyn KeyService,
    target: Target<'_>,
    force: bool,
    progress: &dyn Progress,
) -> Result<CopyReport, Error> {
    check_target(src, dst, force)?;
    let located = format::read_header(&open_read(src)?, src)?;
    let source_key = located.header.encryption().key_arn().map(str::to_owned);
    let key = match (target, &source_key) {
        (Target::Key(key_id), _) => Some(key_id.to_owned()),
        (Target::SourceKey, Some(arn)) => Some(arn.clone()),
        (Target::Unencrypted, None) => None,
        (Target::SourceKey, None) => {
            return Err(Error::InvalidArgument {
                what: format!(
                    "{} is unencrypted: name the CMK of the encrypted copy (--key-id)",
                    src.display()
                ),
            })
        }
        (Target::Unencrypted, Some(arn)) => {
            return Err(Error::InvalidArgument {
                what: format!(
                    "{} is encrypted under {arn}; an unencrypted copy of an encrypted \
                     volume is refused (as EBS refuses it)",
                    src.display()
                ),
            })
        }
    };
    let source = volume::open(src, kms, true)?;
    build(&*source, dst, kms, key.as_deref(), force, progress)
}

/// Encrypts the raw disk image `raw` into a new volume at `dst` under a fresh data key
/// of CMK `key_id`. A size that is not a multiple of 4096 is padded with zeros.
pub fn import(
    raw: &Path,
    dst: &Path,
    kms: &dyn KeyService,
    key_id: &str,
    force: bool,
    progress: &dyn Progress,
) -> Result<CopyReport, Error> {
    check_target(raw, dst, force)?;
    // Only a guard against a mistake: the source is read as raw either way, and
    // nothing in a header found here is used (no key is unwrapped).
    if format::read_header(&open_read(raw)?, raw).is_ok() {
        return Err(Error::InvalidArgument {
            what: format!(
                "{} is already an atrest volume: use `volume copy` to re-encrypt it",
                raw.display()
            ),
        });
    }
    let source = volume::open_raw(raw, true)?;
    if source.size() == 0 {
        return Err(Error::InvalidArgument {
            what: format!("{} is empty", raw.display()),
        });
    }
    build(&*source, dst, kms, Some(key_id), force, progress)
}

/// Creates `dst.partial` (encrypted under `key_id` if given), copies `source` into it
/// and publishes it as `dst`.
fn build(
    source: &dyn Volume,
    dst: &Path,
    kms: &dyn KeyService,
    key_id: Option<&str>,
    force: bool,
    progress: &dyn Progress,
) -> Result<CopyReport, Error> {
    let size = source
        .size()
        .checked_next_multiple_of(SECTOR as u64)
        .ok_or_else(|| Error::InvalidArgument {
            what: format!("size {} cannot be padded to whole sectors", source.size()),
        })?;
    let partial = partial_path(dst)?;
    remove_stale(&partial)?;
    let guard = PartialGuard(partial.clone());
    let key = match key_id {
        Some(key_id) => NewVolumeKey::Kms { kms, key_id },
        None => NewVolumeKey::Unencrypted,
    };
    let header = volume::create(&partial, size, key)?;
    // Opened only for its cipher (one audited Decrypt): the data goes through the writer.
    let encrypted = match key_id {
        Some(_) => Some(EncryptedVolume::open(&partial, kms, false)?),
        None => None,
    };
    let writer = DataAreaWriter::open(&partial, &header, encrypted.as_ref())?;
    progress.start(size);
    let data_bytes = transfer(source, size, &writer, progress)?;
    writer.sync()?;
    drop(writer);
    drop(encrypted);
    publish(&partial, dst, force)?;
    std::mem::forget(guard);
    progress.finish();
    Ok(CopyReport {
        header,
        data_bytes,
        hole_bytes: size - data_bytes,
    })
}

/// Copies every allocated, non-zero sector of `source` to the same offset of the new
/// volume's data area (`size` bytes, `source.size()` padded to whole sectors, reading
/// as zeros). One thread reads (and decrypts) while [`WRITERS`] threads encrypt and
/// write; the cipher itself spreads each chunk over all cores. Returns the bytes
/// written.
fn transfer(
    source: &dyn Volume,
    size: u64,
    writer: &DataAreaWriter<'_>,
    progress: &dyn Progress,
) -> Result<u64, Error> {
    let readable = source.size();
    let (full_tx, full_rx) = crossbeam_channel::bounded::<(u64, AlignedBuf)>(DEPTH);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<AlignedBuf>(DEPTH + 2);
    for _ in 0..DEPTH + 2 {
        let _ = empty_tx.send(AlignedBuf::new(CHUNK));
    }
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let written = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> Result<(), Error> {
            // Volume bytes below `sent` are already on their way: chunks are widened to
            // whole sectors, and two extents may share a sector.
            let mut sent = 0u64;
            let mut window = 0u64;
            while window < readable {
                let window_len = (readable - window).min(MAP_WINDOW);
                let mut pos = window;
                for extent in source.allocation(window, window_len)? {
                    let end = pos + extent.length;
                    if extent.hole || extent.zero {
                        progress.advance(extent.length);
                    } else {
                        let mut at = (pos - pos % SECTOR as u64).max(sent);
                        let stop = end.next_multiple_of(SECTOR as u64).min(size);
                        while at < stop {
                            let len = (stop - at).min(CHUNK as u64) as usize;
                            // Writers hand buffers back; none back means they stopped.
                            let Ok(mut buf) = empty_rx.recv() else {
                                return Ok(());
                            };
                            buf.set_len(len);
                            let bytes = buf.bytes_mut();
                            // The padding past the end of a raw image reads as zeros.
                            let data = (readable - at).min(len as u64) as usize;
                            source.read_at(at, &mut bytes[..data])?;
                            bytes[data..].fill(0);
                            if full_tx.send((at, buf)).is_err() {
                                return Ok(());
                            }
                            at += len as u64;
                        }
                        sent = stop;
                    }
                    pos = end;
                }
                window += window_len;
            }
            Ok(())
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (full_rx, empty_tx) = (full_rx.clone(), empty_tx.clone());
                let (failure, written) = (&failure, &written);
                scope.spawn(move || {
                    for (offset, mut buf) in full_rx {
                        if lock(failure).is_some() {
                            break;
                        }
                        match writer.write_sectors(offset, buf.bytes_mut()) {
                            Ok(bytes) => {
                                written.fetch_add(bytes, Ordering::Relaxed);
                                progress.advance(buf.len() as u64);
                            }
                            Err(err) => {
                                lock(failure).get_or_insert(err);
                                break;
                            }
                        }
                        let _ = empty_tx.send(buf);
                    }
                })
            })
            .collect();
        // Once the writers are gone the reader's channels close and it returns.
        drop((full_rx, empty_tx));
        let panicked = || Error::Io {
            context: "a copy thread panicked".into(),
            source: io::ErrorKind::Other.into(),
        };
        for writer in writers {
            writer.join().map_err(|_| panicked())?;
        }
        reader.join().map_err(|_| panicked())??;
        if let Some(err) = lock(&failure).take() {
            return Err(err);
        }
        Ok(written.load(Ordering::Relaxed))
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Copies `len` bytes of `source` to `target` (already open, empty) extent by extent,
/// so holes stay holes; `copy_file_range` lets the kernel move the data.
fn sparse_file_copy(
    source: &File,
    target: &File,
    len: u64,
    src: &Path,
    dst: &Path,
    progress: &dyn Progress,
) -> Result<(), Error> {
    target.set_len(len).map_err(|e| io_err("size", dst, e))?;
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(source, SeekFrom::Data(pos)) {
            Ok(at) => at.min(len),
            Err(rustix::io::Errno::NXIO) => len,
            Err(errno) => return Err(io_err("SEEK_DATA in", src, errno.into())),
        };
        progress.advance(data - pos);
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(source, SeekFrom::Hole(data))
            .map_err(|errno| io_err("SEEK_HOLE in", src, errno.into()))?
            .min(len);
        copy_range(source, target, data, hole, src, dst, progress)?;
        pos = hole;
    }
    Ok(())
}

fn copy_range(
    source: &File,
    target: &File,
    mut pos: u64,
    end: u64,
    src: &Path,
    dst: &Path,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let mut buf = Vec::new();
    while pos < end {
        let step = (end - pos).min(COPY_STEP);
        let (mut from, mut to) = (pos, pos);
        let moved = match rustix::fs::copy_file_range(
            source,
            Some(&mut from),
            target,
            Some(&mut to),
            step as usize,
        ) {
            Ok(0) => {
                return Err(Error::Corrupted {
                    path: src.to_path_buf(),
                    what: format!("file ended at byte {pos} while copying"),
                })
            }
            Ok(n) => n as u64,
            // Cross-filesystem or unsupported: copy through memory.
            Err(_) => {
                buf.resize(step.min(CHUNK as u64) as usize, 0);
                source
                    .read_exact_at(&mut buf, pos)
                    .map_err(|e| io_err("read", src, e))?;
                target
                    .write_all_at(&buf, pos)
                    .map_err(|e| io_err("write", dst, e))?;
                buf.len() as u64
            }
        };
        pos += moved;
        progress.advance(moved);
    }
    Ok(())
}

fn io_err(what: &str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        context: format!("{what} {}", path.display()),
        source,
    }
}

fn open_read(path: &Path) -> Result<File, Error> {
    volume::open_volume_file(path, false)
}

/// Refuses an existing `dst` (unless `force`) and a `dst` that is `src` itself.
fn check_target(src: &Path, dst: &Path, force: bool) -> Result<(), Error> {
    let source = std::fs::metadata(src).map_err(|e| io_err("stat", src, e))?;
    match std::fs::symlink_metadata(dst) {
        Ok(existing) => {
            let same = std::fs::metadata(dst)
                .is_ok_and(|d| d.dev() == source.dev() && d.ino() == source.ino());
            if same {
                return Err(Error::InvalidArgument {
                    what: format!("{} and {} are the same file", src.display(), dst.display()),
                });
            }
            if !force {
                return Err(Error::AlreadyExists {
                    path: dst.to_path_buf(),
                });
            }
            if existing.is_dir() {
                return Err(Error::InvalidArgument {
                    what: format!("{} is a directory", dst.display()),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("stat", dst, e)),
    }
}

/// `DST.partial`, the name a volume is built under.
fn partial_path(dst: &Path) -> Result<PathBuf, Error> {
    let name = dst.file_name().ok_or_else(|| Error::InvalidArgument {
        what: format!("{} does not name a file", dst.display()),
    })?;
    let mut partial = OsString::from(name);
    partial.push(".partial");
    Ok(dst.with_file_name(partial))
}

/// Removes the leftover of an interrupted run. Nothing of ours uses the name, but a
/// file someone serves could carry it: a regular file is removed only under its
/// writer lock (refused with [`Error::InUse`] while a server writes it); anything else
/// is left alone and refused.
fn remove_stale(partial: &Path) -> Result<(), Error> {
    let _locked = match lock_replaced(partial) {
        Ok(locked) => locked,
        Err(Error::InvalidArgument { .. }) => {
            return Err(Error::InvalidArgument {
                what: format!(
                    "{} exists and is not a regular file; remove it first",
                    partial.display()
                ),
            })
        }
        Err(err) => return Err(err),
    };
    match std::fs::remove_file(partial) {
        Ok(()) => {
            tracing::info!("removed {} left by an interrupted run", partial.display());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", partial, e)),
    }
}

/// Removes `DST.partial` unless forgotten after publication.
struct PartialGuard(PathBuf);

impl Drop for PartialGuard {
    fn drop(&mut self) {
        // Best effort: the error that got us here is the one worth reporting.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A file being written at `DST.partial`.
struct PartialOutput {
    path: PathBuf,
    file: File,
    guard: PartialGuard,
}

impl PartialOutput {
    fn create(dst: &Path) -> Result<Self, Error> {
        let path = partial_path(dst)?;
        remove_stale(&path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err("create", &path, e))?;
        Ok(Self {
            guard: PartialGuard(path.clone()),
            path,
            file,
        })
    }

    fn publish(self, dst: &Path, force: bool) -> Result<(), Error> {
        publish(&self.path, dst, force)?;
        std::mem::forget(self.guard);
        Ok(())
    }
}

/// Renames the finished (synced) `partial` to `dst` and syncs the directory. Without
/// `force` the rename refuses to replace a `dst` that appeared meanwhile. With
/// `force`, the volume being replaced is first opened and its writer lock taken (the
/// one `atrest nbd serve` holds on a volume it writes): while anyone writes to it the
/// replacement is refused with [`Error::InUse`], and the lock is held across the
/// rename so that no writer can open the old file in between. Acknowledged writes of a
/// server can therefore never go to an unlinked inode.
fn publish(partial: &Path, dst: &Path, force: bool) -> Result<(), Error> {
    let _replaced = if force { lock_replaced(dst)? } else { None };
    let flags = if force {
        RenameFlags::empty()
    } else {
        RenameFlags::NOREPLACE
    };
    match rustix::fs::renameat_with(CWD, partial, CWD, dst, flags) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => {
            return Err(Error::AlreadyExists {
                path: dst.to_path_buf(),
            })
        }
        // A filesystem without RENAME_NOREPLACE: link (which refuses to replace), unlink.
        Err(rustix::io::Errno::INVAL) if !force => {
            std::fs::hard_link(partial, dst).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Error::AlreadyExists {
                        path: dst.to_path_buf(),
                    }
                } else {
                    io_err("link", dst, e)
                }
            })?;
            std::fs::remove_file(partial).map_err(|e| io_err("remove", partial, e))?;
        }
        Err(errno) => return Err(io_err("rename to", dst, errno.into())),
    }
    if let Some(dir) = dst.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("sync directory", dir, e))?;
    }
    Ok(())
}

/// Opens the file `--force` is about to replace and takes its writer lock; `None`
/// when there is no such file. Only a regular file is replaced (a symlink is
/// replaced itself, not followed).
fn lock_replaced(dst: &Path) -> Result<Option<File>, Error> {
    match std::fs::symlink_metadata(dst) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("stat", dst, e)),
        Ok(meta) if meta.file_type().is_symlink() => return Ok(None),
        Ok(meta) if !meta.is_file() => {
            return Err(Error::InvalidArgument {
                what: format!(
                    "{} is not a regular file; --force only replaces volume files",
                    dst.display()
                ),
            })
        }
        Ok(_) => {}
    }
    let file = volume::open_volume_file(dst, true)?;
    volume::lock_for_writing(&file, dst)?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_name_is_next_to_the_target() {
        assert_eq!(
            partial_path(Path::new("/a/b/root.vol")).unwrap(),
            PathBuf::from("/a/b/root.vol.partial")
        );
        assert!(partial_path(Path::new("/")).is_err());
    }
}
