//! Volumes: what the NBD server reads and writes.
//!
//! - [`open`] opens an atrest volume (encrypted or not) behind the [`Volume`] trait;
//!   [`open_detected`] keeps the concrete type for code that manages keys (the lease).
//!   [`open_raw`] opens a file declared to be a raw image. Nothing is detected from a
//!   file's bytes: see [`ImageFormat`].
//! - [`create`] makes a new volume file (header, sparse data area).
//! - [`EncryptedVolume`], [`RawVolume`]: the two implementations.

mod encrypted;
#[cfg(feature = "fault-injection")]
pub mod faults;
mod file;
mod locks;
mod raw;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crypto_core::kms::{DataKeySpec, GenerateDataKeyRequest, KeyService};
use uuid::Uuid;

pub use encrypted::EncryptedVolume;
pub use raw::RawVolume;

use crate::format::{self, Encryption, LocatedHeader, VolumeHeader, WrappedDataKey};
use crate::Error;
pub use file::open_volume_file;
use file::VolumeFile;
pub(crate) use file::{file_len, lock_for_writing, lock_header};

/// A run of bytes with one allocation status (NBD `base:allocation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Bytes in the extent.
    pub length: u64,
    /// Not allocated in the file (NBD_STATE_HOLE).
    pub hole: bool,
    /// Reads as zeros (NBD_STATE_ZERO).
    pub zero: bool,
}

/// A block device: an encrypted volume or a plain raw image.
///
/// Offsets and lengths are in bytes and may be unaligned; implementations do
/// read-modify-write for partial sectors. All methods take `&self` and are safe to
/// call from many threads at once. Call them from ordinary threads, not from rayon
/// tasks: an encrypted volume holds sector locks while the cipher runs on the rayon
/// pool, and a pool thread that steals a second request for the same sectors meanwhile
/// would wait on itself.
pub trait Volume: Send + Sync + std::fmt::Debug {
    /// Bytes visible to clients.
    fn size(&self) -> u64;
    /// The natural block size (4096 for encrypted volumes): the preferred I/O size.
    fn block_size(&self) -> u32;
    /// The volume cannot be written (opened or created read-only).
    fn is_read_only(&self) -> bool;
    /// Whether a new client may attach now; the error explains a refusal (e.g. key disabled).
    fn check_attach(&self) -> Result<(), Error> {
        Ok(())
    }
    /// The ARN of the KMS key the data is encrypted under; `None` for a plain image.
    /// Audit records of refused clients name it.
    fn encryption_key_arn(&self) -> Option<String> {
        None
    }
    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error>;
    /// [`Volume::read_at`] when it needs no disk I/O (the data is in the page cache):
    /// `Ok(true)` and `buf` filled, or `Ok(false)` when it would have to wait (then
    /// nothing is promised about `buf`; call `read_at`). For servers that answer small
    /// cached reads on the thread that reads requests. A volume that cannot tell
    /// without waiting says `Ok(false)`.
    fn read_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool, Error> {
        let _ = (offset, buf);
        Ok(false)
    }
    /// Writes `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Error>;
    /// [`Volume::write_at`], free to use `data` as working space: afterwards (and
    /// after an error) it holds unspecified bytes. For a caller that is done with the
    /// bytes once they are written, such as the NBD server with a request's payload:
    /// an encrypted volume encrypts whole sectors in place there instead of into a
    /// buffer of its own, one pass over memory less per write.
    fn write_in_place(&self, offset: u64, data: &mut [u8]) -> Result<(), Error> {
        self.write_at(offset, data)
    }
    /// Makes every completed write durable (fdatasync).
    fn flush(&self) -> Result<(), Error>;
    /// Deallocates the range where whole sectors allow; it then reads as zeros.
    fn trim(&self, offset: u64, length: u64) -> Result<(), Error>;
    /// Zeroes the range; deallocates it (punch hole) when `may_punch` is true.
    fn write_zeroes(&self, offset: u64, length: u64, may_punch: bool) -> Result<(), Error>;
    /// Allocation status of the range, in order, covering it exactly (empty only when
    /// `length` is 0).
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>, Error>;
}

/// Fails with [`Error::OutOfRange`] unless `offset..offset + length` lies in `0..size`.
pub(crate) fn check_range(offset: u64, length: u64, size: u64) -> Result<(), Error> {
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            offset,
            length,
            size,
        }),
    }
}

/// How a file is to be read: declared by whoever serves or opens it, never guessed
/// from the file's bytes (a client of a raw image controls those).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageFormat {
    /// An atrest volume: a valid header is required.
    #[default]
    Atrest,
    /// A raw image: every byte of the file is volume data, whatever it looks like.
    Raw,
}

/// A volume opened by [`open_detected`], with its concrete type.
#[derive(Debug, Clone)]
pub enum OpenedVolume {
    /// An atrest volume (header and AES-256-XTS sectors).
    Encrypted(Arc<EncryptedVolume>),
    /// An unencrypted atrest volume or a plain raw image.
    Plain(Arc<RawVolume>),
}

impl OpenedVolume {
    /// The volume behind the trait, for an export.
    pub fn into_dyn(self) -> Arc<dyn Volume> {
        match self {
            OpenedVolume::Encrypted(v) => v,
            OpenedVolume::Plain(v) => v,
        }
    }
}

/// Opens the atrest volume at `path`: an encrypted volume (its data key is unwrapped
/// with one audited Decrypt) or an unencrypted one. A file without a valid header is
/// refused ([`Error::NoValidHeader`]); raw images are opened with [`open_raw`].
pub fn open(path: &Path, kms: &dyn KeyService, read_only: bool) -> Result<Arc<dyn Volume>, Error> {
    Ok(open_detected(path, kms, read_only)?.into_dyn())
}

/// [`open`], keeping the concrete type.
pub fn open_detected(
    path: &Path,
    kms: &dyn KeyService,
    read_only: bool,
) -> Result<OpenedVolume, Error> {
    let opened = open_without_key(path, read_only)?;
    if let OpenedVolume::Encrypted(volume) = &opened {
        volume.unlock(kms)?;
    }
    Ok(opened)
}

/// [`open_detected`] without unwrapping the data key of an encrypted volume (for a
/// caller that unwraps it under its own rules, the lease). The file is opened once:
/// what its header says is what is opened.
pub fn open_without_key(path: &Path, read_only: bool) -> Result<OpenedVolume, Error> {
    let file = open_volume_file(path, !read_only)?;
    if !read_only {
        file::lock_for_writing(&file, path)?;
    }
    let located = read_header_repairing(&file, path, read_only)?;
    let file = VolumeFile::new(file, path);
    Ok(match located.header.encryption() {
        Encryption::None => {
            OpenedVolume::Plain(Arc::new(RawVolume::with_header(file, located, read_only)))
        }
        Encryption::Aes256XtsPlain64(_) => OpenedVolume::Encrypted(Arc::new(
            EncryptedVolume::from_header(file, located, read_only)?,
        )),
    })
}

/// Opens the file at `path` as a raw image declared so by the caller: the whole file
/// (or block device) is the volume, and its bytes are never looked at to decide
/// anything, so an atrest header a client wrote into it stays data.
pub fn open_raw(path: &Path, read_only: bool) -> Result<Arc<RawVolume>, Error> {
    let file = open_volume_file(path, !read_only)?;
    if !read_only {
        file::lock_for_writing(&file, path)?;
    }
    Ok(Arc::new(RawVolume::image(
        VolumeFile::new(file, path),
        read_only,
    )?))
}

/// [`format::read_header`], and when the volume is opened for writing and one header
/// copy was damaged or older, rewrites both from the good one (as GPT tools do), so
/// a later loss of the other copy cannot take the volume with it. The warning stays,
/// saying it was repaired. Copies that disagree ([`Error::HeaderConflict`]) are never
/// rewritten here. The rewrite holds the header-update lock, so it cannot interleave
/// with a `volume rewrap`; the header is read again under it.
pub(crate) fn read_header_repairing(
    file: &File,
    path: &Path,
    read_only: bool,
) -> Result<LocatedHeader, Error> {
    let located = format::read_header(file, path)?;
    if read_only || located.warning.is_none() {
        return Ok(located);
    }
    file::lock_header(file, path)?;
    let mut located = format::read_header(file, path)?;
    if let Some(warning) = &located.warning {
        format::write_header(file, path, &located.header)?;
        tracing::warn!(path = %path.display(), "header repaired: both copies rewritten");
        located.warning = Some(format!("{warning}; repaired: both copies rewritten"));
    }
    file::unlock_header(file, path);
    Ok(located)
}

/// How a new volume's data area is protected.
#[derive(Clone, Copy)]
pub enum NewVolumeKey<'a> {
    /// A fresh 512-bit data key from GenerateDataKeyWithoutPlaintext under the CMK
    /// `key_id` (key id, ARN or alias); only the wrapped key is stored.
    Kms {
        /// The key service that unwraps the data key.
        kms: &'a dyn KeyService,
        /// The CMK the data key must be wrapped under.
        key_id: &'a str,
    },
    /// No encryption; the header still records the volume's id and size.
    Unencrypted,
}

impl std::fmt::Debug for NewVolumeKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NewVolumeKey::Kms { key_id, .. } => f
                .debug_struct("Kms")
                .field("key_id", key_id)
                .finish_non_exhaustive(),
            NewVolumeKey::Unencrypted => f.write_str("Unencrypted"),
        }
    }
}

/// Creates a volume file of `size` bytes (a positive multiple of 4096) at `path`,
/// which must not exist. The file is sized to the full data area up front (sparse, so
/// it costs nothing) so that a shorter file is known to be truncated. The file appears
/// at `path` complete or not at all: it is built under a temporary name and linked into
/// place, which also refuses to replace a file that appeared meanwhile.
pub fn create(path: &Path, size: u64, key: NewVolumeKey<'_>) -> Result<VolumeHeader, Error> {
    if path.symlink_metadata().is_ok() {
        return Err(Error::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let volume_id = Uuid::new_v4();
    // Validate the size before asking the key service for anything.
    let plain = VolumeHeader::new(volume_id, size, Encryption::None)?;
    let header = match key {
        NewVolumeKey::Unencrypted => plain,
        NewVolumeKey::Kms { kms, key_id } => {
            let wrapped = kms.generate_data_key_without_plaintext(&GenerateDataKeyRequest {
                key_id: key_id.to_string(),
                spec: DataKeySpec::Bytes(64),
                encryption_context: plain.encryption_context(),
            })?;
            VolumeHeader::new(
                volume_id,
                size,
                Encryption::Aes256XtsPlain64(WrappedDataKey {
                    key_arn: wrapped.key_id,
                    blob: wrapped.ciphertext_blob,
                }),
            )?
        }
    };
    let partial = PartialFile::create(path, volume_id)?;
    let io = |what: &str, source| Error::Io {
        context: format!("{what} {}", partial.path.display()),
        source,
    };
    partial.file.set_len(header.file_len()).map_err(|source| {
        let too_big = matches!(
            source.raw_os_error(),
            Some(libc::EFBIG | libc::ENOSPC | libc::EDQUOT)
        );
        Error::Io {
            context: if too_big {
                format!(
                    "cannot create {} of {size} bytes: the filesystem cannot hold a file that large",
                    path.display()
                )
            } else {
                format!("cannot create {} of {size} bytes", path.display())
            },
            source,
        }
    })?;
    format::write_header(&partial.file, &partial.path, &header)?;
    partial.file.sync_all().map_err(|e| io("sync", e))?;
    partial.publish(path)?;
    Ok(header)
}

/// A file being built next to its final name; removed unless published.
struct PartialFile {
    path: PathBuf,
    file: File,
    published: bool,
}

impl PartialFile {
    fn create(target: &Path, volume_id: Uuid) -> Result<Self, Error> {
        let name = target.file_name().ok_or_else(|| Error::InvalidArgument {
            what: format!("{} does not name a file", target.display()),
        })?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{volume_id}.partial"));
        let path = target.with_file_name(temp_name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| Error::Io {
                context: format!("create {} (built as {})", target.display(), path.display()),
                source,
            })?;
        Ok(Self {
            path,
            file,
            published: false,
        })
    }

    /// Links the finished file at `target` (failing if it exists) and drops the
    /// temporary name.
    fn publish(mut self, target: &Path) -> Result<(), Error> {
        std::fs::hard_link(&self.path, target).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                Error::AlreadyExists {
                    path: target.to_path_buf(),
                }
            } else {
                Error::Io {
                    context: format!("link {} to {}", self.path.display(), target.display()),
                    source,
                }
            }
        })?;
        self.published = true;
        if let Err(err) = std::fs::remove_file(&self.path) {
            // The volume is in place; a leftover second name is only untidy.
            tracing::warn!("cannot remove {}: {err}", self.path.display());
        }
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| Error::Io {
                    context: format!("sync directory {}", dir.display()),
                    source,
                })?;
        }
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.published {
            // Best effort: the error that got us here is the one worth reporting.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
