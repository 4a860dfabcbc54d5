//! [`EncryptedVolume`]: AES-256-XTS over 4096-byte sectors of a sparse file.
//!
//! Data sector `n` lives at file offset `data_offset + n * 4096` and is encrypted with
//! tweak `n` (little-endian), exactly dm-crypt's `aes-xts-plain64` with 4096-byte
//! sectors and large-sector IVs. A sector whose stored bytes are all zero — a hole, or
//! zeros written for `write_zeroes` without punching — reads as zeros and is never
//! decrypted; zeroed ranges are never stored as encrypted zeros.
//!
//! Writes of whole sectors through [`Volume::write_in_place`] (the NBD server's path)
//! are encrypted in the caller's buffer and written from it with no copy; `write_at`
//! encrypts from the caller's bytes into a pooled buffer, and a write with a partial
//! sector at either end reads, merges and encrypts its sectors there. A WRITE of zeros
//! is data like any other: stored encrypted, not as a hole.

use std::path::Path;
use std::sync::{Mutex, PoisonError, RwLock};

use crypto_core::kms::{DecryptRequest, EncryptionContext, KeyService};
use crypto_core::secret::XtsKey;
use crypto_core::xts::SectorCipher;
use uuid::Uuid;

use super::file::VolumeFile;
use super::locks::SectorLocks;
use super::{check_range, Extent, Volume};
use crate::format::{self, Encryption, HeaderCopy, LocatedHeader, VolumeHeader, WrappedDataKey};
use crate::zero::is_zero;
use crate::Error;

const SECTOR: usize = format::SECTOR_SIZE as usize;
const SECTOR_U64: u64 = format::SECTOR_SIZE as u64;

/// Write buffers kept for reuse, and the largest one worth keeping.
const POOLED_BUFFERS: usize = 16;
const POOLED_BUFFER_MAX: usize = 4 * 1024 * 1024;

/// The slot the plaintext key lives in: a cipher (which owns and zeroizes the key) or
/// the reason there is none. I/O holds the read side for its whole duration, so once
/// [`EncryptedVolume::revoke_key`] returns no request is still using the key.
enum KeySlot {
    Installed(Box<SectorCipher>),
    Empty(String),
}

/// An encrypted volume. Every method takes `&self`; share it in an `Arc`.
pub struct EncryptedVolume {
    file: VolumeFile,
    /// The header the volume was opened with. Its geometry (volume id, size, data
    /// offset) never changes; its wrapped key may be superseded by a re-wrap, see
    /// `wrapped`.
    located: LocatedHeader,
    /// The wrapped key of the newest header seen (the header is known to be
    /// encrypted) and that header's generation: a `volume rewrap` while the volume is
    /// open replaces it ([`EncryptedVolume::reread_header`]).
    wrapped: Mutex<(WrappedDataKey, u64)>,
    /// The first 32 bytes of an all-zero sector encrypted at tweak `u64::MAX` with the
    /// first data key installed: every later key (a re-unwrap, a key from a re-wrapped
    /// header) must give the same bytes, so a header whose wrapped key unwraps to
    /// another data key cannot make the volume serve garbage.
    key_check: Mutex<Option<[u8; 32]>>,
    read_only: bool,
    key: RwLock<KeySlot>,
    locks: SectorLocks,
    buffers: Mutex<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for EncryptedVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedVolume")
            .field("path", &self.file.path())
            .field("volume_id", &self.located.header.volume_id())
            .field("size", &self.located.header.size())
            .field("key_arn", &self.key_arn())
            .field("read_only", &self.read_only)
            // try_read: formatting must never wait on (or deadlock with) a revocation.
            .field(
                "key",
                &match self.key.try_read().as_deref() {
                    Ok(KeySlot::Installed(_)) => "installed",
                    Ok(KeySlot::Empty(_)) => "none",
                    Err(_) => "changing",
                },
            )
            .finish_non_exhaustive()
    }
}

impl EncryptedVolume {
    /// Opens the volume and unwraps its data key with one audited Decrypt call.
    pub fn open(path: &Path, kms: &dyn KeyService, read_only: bool) -> Result<Self, Error> {
        let volume = Self::open_locked(path, read_only)?;
        volume.unlock(kms)?;
        Ok(volume)
    }

    /// Opens the volume without its key: every I/O fails with
    /// [`Error::KeyUnavailable`] until [`Self::unlock`] or [`Self::install_key`].
    pub fn open_locked(path: &Path, read_only: bool) -> Result<Self, Error> {
        let file = super::open_volume_file(path, !read_only)?;
        if !read_only {
            super::file::lock_for_writing(&file, path)?;
        }
        let located = super::read_header_repairing(&file, path, read_only)?;
        Self::from_header(VolumeFile::new(file, path), located, read_only)
    }

    pub(crate) fn from_header(
        file: VolumeFile,
        located: LocatedHeader,
        read_only: bool,
    ) -> Result<Self, Error> {
        let wrapped = match located.header.encryption() {
            Encryption::Aes256XtsPlain64(wrapped) => wrapped.clone(),
            Encryption::None => {
                return Err(Error::InvalidArgument {
                    what: format!("{} is an unencrypted volume", file.path().display()),
                })
            }
        };
        let read_only = read_only || located.header.is_read_only();
        let generation = located.header.generation();
        Ok(Self {
            file: file.with_map(),
            located,
            wrapped: Mutex::new((wrapped, generation)),
            key_check: Mutex::new(None),
            read_only,
            key: RwLock::new(KeySlot::Empty(
                "the data key has not been unwrapped yet".into(),
            )),
            locks: SectorLocks::new(),
            buffers: Mutex::new(Vec::new()),
        })
    }

    /// Unwraps the data key (Decrypt with the volume's encryption context and key ARN)
    /// and installs it. The key service's refusal is returned as is.
    pub fn unlock(&self, kms: &dyn KeyService) -> Result<(), Error> {
        let key = self.unwrap(kms)?;
        self.install_key(key)
    }

    /// Unwraps the data key (one audited Decrypt) without installing it.
    pub fn unwrap(&self, kms: &dyn KeyService) -> Result<XtsKey, Error> {
        let wrapped = self.wrapped_key();
        let decrypted = kms.decrypt(&DecryptRequest {
            ciphertext_blob: wrapped.blob.clone(),
            encryption_context: self.encryption_context(),
            key_id: Some(wrapped.key_arn.clone()),
        })?;
        let key = XtsKey::from_slice(decrypted.plaintext.expose()).ok_or_else(|| {
            Error::KeyUnavailable {
                key_arn: wrapped.key_arn.clone(),
                reason: format!(
                    "the unwrapped data key is {} bytes, AES-256-XTS needs 64",
                    decrypted.plaintext.len()
                ),
            }
        })?;
        Ok(key)
    }

    /// Makes `key` the volume's data key; I/O works from now on. A key that is not the
    /// one installed first (see `key_check`) is refused and nothing changes.
    pub fn install_key(&self, key: XtsKey) -> Result<(), Error> {
        let cipher = SectorCipher::new(key.expose()).map_err(|err| Error::KeyUnavailable {
            key_arn: self.key_arn(),
            reason: err.to_string(),
        })?;
        let mut probe = vec![0u8; SECTOR];
        cipher.encrypt_sectors(&mut probe, u64::MAX, SECTOR);
        let mut check = [0u8; 32];
        check.copy_from_slice(&probe[..32]);
        {
            let mut known = self
                .key_check
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match *known {
                Some(known) if known != check => {
                    return Err(Error::KeyUnavailable {
                        key_arn: self.key_arn(),
                        reason: "the wrapped key in the header unwraps to a different data key \
                                 than this volume's: refusing to serve with it"
                            .into(),
                    })
                }
                Some(_) => {}
                None => *known = Some(check),
            }
        }
        *self.key.write().unwrap_or_else(PoisonError::into_inner) =
            KeySlot::Installed(Box::new(cipher));
        Ok(())
    }

    /// Reads the header again (both copies, quietly) and, when it holds another
    /// wrapped key than the one in use (a `volume rewrap` ran), makes that the
    /// wrapped key: the next [`EncryptedVolume::unlock`] uses it. Returns the old and
    /// the new wrapped key when it switched. A header that now describes another
    /// volume, or another geometry, is [`Error::Corrupted`]; none valid is the error
    /// of [`format::read_header`].
    pub fn reread_header(&self) -> Result<Option<(WrappedDataKey, WrappedDataKey)>, Error> {
        let path = self.path();
        let (primary, backup) = format::read_copies(self.file.file(), path)?;
        let located = format::choose_copy(path, primary, backup)?;
        let header = &located.header;
        let opened = &self.located.header;
        if header.volume_id() != opened.volume_id()
            || header.size() != opened.size()
            || header.data_offset() != opened.data_offset()
        {
            return Err(Error::Corrupted {
                path: path.to_path_buf(),
                what: format!(
                    "the header now describes volume {} ({} bytes at {}), not the served \
                     volume {} ({} bytes at {})",
                    header.volume_id(),
                    header.size(),
                    header.data_offset(),
                    opened.volume_id(),
                    opened.size(),
                    opened.data_offset()
                ),
            });
        }
        let Encryption::Aes256XtsPlain64(new) = header.encryption() else {
            return Err(Error::Corrupted {
                path: path.to_path_buf(),
                what: "the header of the served encrypted volume now says unencrypted".into(),
            });
        };
        let mut current = self.wrapped.lock().unwrap_or_else(PoisonError::into_inner);
        if current.0 == *new || header.generation() < current.1 {
            return Ok(None);
        }
        let old = std::mem::replace(&mut *current, (new.clone(), header.generation()));
        Ok(Some((old.0, new.clone())))
    }

    /// Drops (and so zeroizes) the plaintext key after in-flight I/O finishes; later
    /// I/O and attaches fail with [`Error::KeyUnavailable`] carrying `reason`.
    pub fn revoke_key(&self, reason: impl Into<String>) {
        *self.key.write().unwrap_or_else(PoisonError::into_inner) = KeySlot::Empty(reason.into());
    }

    /// Whether the data key is installed (false once the lease revoked it).
    pub fn has_key(&self) -> bool {
        matches!(
            *self.key.read().unwrap_or_else(PoisonError::into_inner),
            KeySlot::Installed(_)
        )
    }

    /// ARN of the CMK that wraps the data key (in the newest header seen).
    pub fn key_arn(&self) -> String {
        self.wrapped_key().key_arn
    }

    /// The wrapped data key of the newest header seen.
    pub fn wrapped_key(&self) -> WrappedDataKey {
        self.wrapped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// The volume's id (from its header).
    pub fn volume_id(&self) -> Uuid {
        self.located.header.volume_id()
    }

    /// `{"atrest:volume-id": "<uuid>"}`, what Decrypt must be given.
    pub fn encryption_context(&self) -> EncryptionContext {
        self.located.header.encryption_context()
    }

    /// The header the volume was opened with.
    pub fn header(&self) -> &VolumeHeader {
        &self.located.header
    }

    /// Which header copy the volume was opened from.
    pub fn header_copy(&self) -> HeaderCopy {
        self.located.copy
    }

    /// Why the other header copy was not used, if it was damaged or stale.
    pub fn header_warning(&self) -> Option<&str> {
        self.located.warning.as_deref()
    }

    /// The volume file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// A second handle on the same open file (not a new open of the path, which may
    /// name another file by now).
    pub fn file_handle(&self) -> Result<std::fs::File, Error> {
        self.file.file().try_clone().map_err(|source| Error::Io {
            context: format!("duplicate the handle of {}", self.path().display()),
            source,
        })
    }

    /// Runs `io` with the installed cipher, holding the key slot's read side so the key
    /// cannot be revoked mid-request; fails closed when there is no key.
    pub(crate) fn with_cipher<R>(
        &self,
        io: impl FnOnce(&SectorCipher) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let slot = self.key.read().unwrap_or_else(PoisonError::into_inner);
        match &*slot {
            KeySlot::Installed(cipher) => io(cipher),
            KeySlot::Empty(reason) => Err(Error::KeyUnavailable {
                key_arn: self.key_arn(),
                reason: reason.clone(),
            }),
        }
    }

    fn file_pos(&self, sector: u64) -> u64 {
        self.located.header.data_offset() + sector * SECTOR_U64
    }

    /// Reads whole sectors starting at `first` into `buf`, decrypted, with all-zero
    /// stored sectors (holes, zeroed ranges) as zeros: straight from the page cache
    /// when it holds them all ([`VolumeFile::cached`]), else read, then decrypted in
    /// place.
    fn read_sectors(&self, cipher: &SectorCipher, first: u64, buf: &mut [u8]) -> Result<(), Error> {
        let pos = self.file_pos(first);
        if let Some(stored) = self.file.cached(pos, buf.len()) {
            decrypt_stored_to(cipher, first, stored, buf);
            return Ok(());
        }
        self.file.read_exact_at(buf, pos)?;
        decrypt_stored(cipher, first, buf);
        Ok(())
    }

    /// A buffer of at least `len` bytes from the pool.
    fn take_buffer(&self, len: usize) -> Vec<u8> {
        let mut buf = self
            .buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        // Only ever grown, so a reused buffer is not zero-filled again; every byte the
        // caller uses is overwritten before it is read.
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    fn return_buffer(&self, buf: Vec<u8>) {
        if buf.capacity() <= POOLED_BUFFER_MAX {
            let mut pool = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.len() < POOLED_BUFFERS {
                pool.push(buf);
            }
        }
    }

    fn check_writable(&self) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    /// Zeroes `offset..offset + length`: whole sectors are punched out (or, when
    /// `punch` is false, stored as zero bytes), partial edge sectors are
    /// read-modify-written, and an edge that becomes all zeros is treated as whole.
    fn zero_range(&self, offset: u64, length: u64, punch: bool) -> Result<(), Error> {
        self.check_writable()?;
        check_range(offset, length, self.size())?;
        if length == 0 {
            return Ok(());
        }
        self.with_cipher(|cipher| self.zero_sectors(cipher, offset, offset + length, punch))
    }

    fn zero_sectors(
        &self,
        cipher: &SectorCipher,
        offset: u64,
        end: u64,
        punch: bool,
    ) -> Result<(), Error> {
        let first = offset / SECTOR_U64;
        let last = (end - 1) / SECTOR_U64;
        let head = (offset % SECTOR_U64 != 0).then(|| {
            (
                first,
                offset % SECTOR_U64,
                (end - first * SECTOR_U64).min(SECTOR_U64),
            )
        });
        let tail = (end % SECTOR_U64 != 0 && !(head.is_some() && last == first)).then(|| {
            (
                last,
                offset.saturating_sub(last * SECTOR_U64),
                end % SECTOR_U64,
            )
        });
        let _guard = self
            .locks
            .lock(first, last - first + 1, head.is_some() || tail.is_some());
        let whole_start = if head.is_some() {
            (first + 1) * SECTOR_U64
        } else {
            offset
        };
        let whole_end = if tail.is_some() {
            last * SECTOR_U64
        } else {
            end
        };
        for (sector, from, to) in head.into_iter().chain(tail) {
            let mut block = [0u8; SECTOR];
            self.read_sectors(cipher, sector, &mut block)?;
            block[from as usize..to as usize].fill(0);
            if is_zero(&block) {
                self.store_zero(self.file_pos(sector), SECTOR_U64, punch)?;
            } else {
                cipher.encrypt_sectors(&mut block, sector, SECTOR);
                self.file.write_all_at(&block, self.file_pos(sector))?;
            }
        }
        if whole_start < whole_end {
            let pos = self.located.header.data_offset() + whole_start;
            self.store_zero(pos, whole_end - whole_start, punch)?;
        }
        Ok(())
    }

    fn read_unaligned(
        &self,
        cipher: &SectorCipher,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), Error> {
        let mut sector = offset / SECTOR_U64;
        let mut out = buf;
        let skip = (offset % SECTOR_U64) as usize;
        if skip != 0 || out.len() < SECTOR {
            let mut block = [0u8; SECTOR];
            self.read_sectors(cipher, sector, &mut block)?;
            let take = (SECTOR - skip).min(out.len());
            out[..take].copy_from_slice(&block[skip..skip + take]);
            out = &mut out[take..];
            sector += 1;
        }
        let whole = out.len() / SECTOR * SECTOR;
        if whole > 0 {
            // Straight into the caller's buffer, decrypted in place: no copy.
            let (middle, rest) = out.split_at_mut(whole);
            self.read_sectors(cipher, sector, middle)?;
            out = rest;
            sector += (whole / SECTOR) as u64;
        }
        if !out.is_empty() {
            let mut block = [0u8; SECTOR];
            self.read_sectors(cipher, sector, &mut block)?;
            let take = out.len();
            out.copy_from_slice(&block[..take]);
        }
        Ok(())
    }

    fn write_unaligned(
        &self,
        cipher: &SectorCipher,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Error> {
        let end = offset + data.len() as u64;
        let first = offset / SECTOR_U64;
        let last = (end - 1) / SECTOR_U64;
        let sectors = last - first + 1;
        let head = (offset % SECTOR_U64) as usize;
        let partial_head = head != 0;
        let partial_tail = end % SECTOR_U64 != 0 && !(partial_head && last == first);
        let _guard = self
            .locks
            .lock(first, sectors, partial_head || partial_tail);
        let mut buf = self.take_buffer(sectors as usize * SECTOR);
        let work = &mut buf[..sectors as usize * SECTOR];
        let result = (|| {
            if partial_head {
                self.read_sectors(cipher, first, &mut work[..SECTOR])?;
            }
            if partial_tail {
                let at = work.len() - SECTOR;
                self.read_sectors(cipher, last, &mut work[at..])?;
            }
            if partial_head || partial_tail {
                work[head..head + data.len()].copy_from_slice(data);
                cipher.encrypt_sectors(work, first, SECTOR);
            } else {
                // Whole sectors: encrypted straight from the caller's buffer.
                cipher.encrypt_sectors_to(data, work, first, SECTOR);
            }
            self.file.write_all_at(work, self.file_pos(first))
        })();
        self.return_buffer(buf);
        result
    }

    fn store_zero(&self, pos: u64, len: u64, punch: bool) -> Result<(), Error> {
        if punch {
            self.file.punch_hole(pos, len)
        } else {
            self.file.write_zero_bytes(pos, len)
        }
    }
}

/// Decrypts stored sectors in place, one cipher call per run of non-zero sectors so
/// large reads stay parallel; all-zero sectors are plaintext zeros and stay as they are.
fn decrypt_stored(cipher: &SectorCipher, first: u64, buf: &mut [u8]) {
    let sectors = buf.len() / SECTOR;
    let mut i = 0;
    while i < sectors {
        if is_zero(&buf[i * SECTOR..(i + 1) * SECTOR]) {
            i += 1;
            continue;
        }
        let run_start = i;
        while i < sectors && !is_zero(&buf[i * SECTOR..(i + 1) * SECTOR]) {
            i += 1;
        }
        cipher.decrypt_sectors(
            &mut buf[run_start * SECTOR..i * SECTOR],
            first + run_start as u64,
            SECTOR,
        );
    }
}

/// [`decrypt_stored`] from `stored` into `buf` (equal lengths): all-zero sectors
/// become zeros, every run of others one cipher call.
fn decrypt_stored_to(cipher: &SectorCipher, first: u64, stored: &[u8], buf: &mut [u8]) {
    let sectors = buf.len() / SECTOR;
    let mut i = 0;
    while i < sectors {
        if is_zero(&stored[i * SECTOR..(i + 1) * SECTOR]) {
            buf[i * SECTOR..(i + 1) * SECTOR].fill(0);
            i += 1;
            continue;
        }
        let run_start = i;
        while i < sectors && !is_zero(&stored[i * SECTOR..(i + 1) * SECTOR]) {
            i += 1;
        }
        let run = run_start * SECTOR..i * SECTOR;
        cipher.decrypt_sectors_to(
            &stored[run.clone()],
            &mut buf[run],
            first + run_start as u64,
            SECTOR,
        );
    }
}

impl Volume for EncryptedVolume {
    fn size(&self) -> u64 {
        self.located.header.size()
    }

    fn encryption_key_arn(&self) -> Option<String> {
        Some(self.key_arn())
    }

    fn block_size(&self) -> u32 {
        format::SECTOR_SIZE
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn check_attach(&self) -> Result<(), Error> {
        self.with_cipher(|_| Ok(()))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        check_range(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        self.with_cipher(|cipher| self.read_unaligned(cipher, offset, buf))
    }

    /// Whole sectors only; a read with partial sectors says `Ok(false)`.
    fn read_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool, Error> {
        check_range(offset, buf.len() as u64, self.size())?;
        if !offset.is_multiple_of(SECTOR_U64) || !buf.len().is_multiple_of(SECTOR) {
            return Ok(false);
        }
        self.with_cipher(|cipher| {
            let first = offset / SECTOR_U64;
            if let Some(stored) = self.file.cached(self.file_pos(first), buf.len()) {
                decrypt_stored_to(cipher, first, stored, buf);
                return Ok(true);
            }
            if !self.file.read_cached_at(buf, self.file_pos(first))? {
                return Ok(false);
            }
            decrypt_stored(cipher, first, buf);
            Ok(true)
        })
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.check_writable()?;
        check_range(offset, data.len() as u64, self.size())?;
        if data.is_empty() {
            return Ok(());
        }
        self.with_cipher(|cipher| self.write_unaligned(cipher, offset, data))
    }

    /// Whole sectors are encrypted in `data` itself and written from there; a write
    /// with a partial sector at either end goes the way of [`Volume::write_at`].
    fn write_in_place(&self, offset: u64, data: &mut [u8]) -> Result<(), Error> {
        self.check_writable()?;
        check_range(offset, data.len() as u64, self.size())?;
        if data.is_empty() {
            return Ok(());
        }
        if !offset.is_multiple_of(SECTOR_U64) || !data.len().is_multiple_of(SECTOR) {
            return self.with_cipher(|cipher| self.write_unaligned(cipher, offset, data));
        }
        self.with_cipher(|cipher| {
            let first = offset / SECTOR_U64;
            let _guard = self.locks.lock(first, (data.len() / SECTOR) as u64, false);
            cipher.encrypt_sectors(data, first, SECTOR);
            self.file.write_all_at(data, self.file_pos(first))
        })
    }

    fn flush(&self) -> Result<(), Error> {
        self.with_cipher(|_| self.file.sync_data())
    }

    fn trim(&self, offset: u64, length: u64) -> Result<(), Error> {
        self.zero_range(offset, length, true)
    }

    fn write_zeroes(&self, offset: u64, length: u64, may_punch: bool) -> Result<(), Error> {
        self.zero_range(offset, length, may_punch)
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>, Error> {
        check_range(offset, length, self.size())?;
        self.with_cipher(|_| {
            self.file.allocation(
                self.located.header.data_offset(),
                offset,
                length,
                SECTOR_U64,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_a_single_set_bit_anywhere() {
        let mut sector = [0u8; SECTOR];
        assert!(is_zero(&sector));
        for at in [0, 63, 64, 2048, SECTOR - 1] {
            sector[at] = 0x10;
            assert!(!is_zero(&sector), "bit at {at}");
            sector[at] = 0;
        }
    }
}
