//! The on-disk volume header, version 1 (byte tables in `docs/FORMAT.md`).
//!
//! A volume file is a 4096-byte header block at offset 0, an identical backup copy at
//! [`BACKUP_HEADER_OFFSET`], zeros up to the data offset (1 MiB), then the data area.
//! [`VolumeHeader::decode`] is the one parser of header bytes: it never panics and
//! names the first thing that is wrong. [`read_header`] decides between the two
//! copies; [`write_header`] updates both in the order that keeps an interrupted update
//! recoverable.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Error;

/// First bytes of both header copies.
pub const MAGIC: [u8; 8] = *b"ATRESTVL";
/// The header version this code writes and reads.
pub const VERSION: u16 = 1;
/// Size of one header block (each copy).
pub const HEADER_SIZE: usize = 4096;
/// Where the primary copy starts.
pub const PRIMARY_HEADER_OFFSET: u64 = 0;
/// Where the backup copy starts: the middle of the first MiB, far enough from the
/// primary that a clobbered start of the file (a stray `dd`, `wipefs`, a partition
/// table written by mistake) leaves it intact.
pub const BACKUP_HEADER_OFFSET: u64 = 512 * 1024;
/// Encryption unit and tweak unit of the data area.
pub const SECTOR_SIZE: u32 = 4096;
/// The data area starts on a multiple of this (and at least this far into the file,
/// so both header copies fit before it).
pub const DATA_ALIGNMENT: u64 = 1024 * 1024;
/// The encryption-context key that binds a wrapped data key to its volume.
pub const VOLUME_ID_CONTEXT_KEY: &str = "atrest:volume-id";
/// Longest CMK ARN the header holds (AWS's limit for key identifiers).
pub const MAX_KEY_ARN_LEN: usize = 2048;
/// Longest wrapped data key the header holds.
pub const MAX_WRAPPED_KEY_LEN: usize = 1024;
/// Flag bit: the volume is a read-only snapshot; it is always opened read-only.
pub const FLAG_READ_ONLY: u32 = 1;

const KNOWN_FLAGS: u32 = FLAG_READ_ONLY;
const CIPHER_NONE: u16 = 0;
const CIPHER_AES_256_XTS_PLAIN64: u16 = 1;

// Byte offsets inside a header block; each is the previous one plus its size.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = OFF_MAGIC + 8;
const OFF_HEADER_SIZE: usize = OFF_VERSION + 2;
const OFF_FLAGS: usize = OFF_HEADER_SIZE + 2;
const OFF_VOLUME_ID: usize = OFF_FLAGS + 4;
const OFF_GENERATION: usize = OFF_VOLUME_ID + 16;
const OFF_SIZE: usize = OFF_GENERATION + 8;
const OFF_DATA_OFFSET: usize = OFF_SIZE + 8;
const OFF_SECTOR_SIZE: usize = OFF_DATA_OFFSET + 8;
const OFF_CIPHER: usize = OFF_SECTOR_SIZE + 4;
const OFF_KEY_ARN_LEN: usize = OFF_CIPHER + 2;
const OFF_WRAPPED_KEY_LEN: usize = OFF_KEY_ARN_LEN + 2;
const OFF_VARIABLE: usize = OFF_WRAPPED_KEY_LEN + 2;
const OFF_CHECKSUM: usize = HEADER_SIZE - 32;

/// The CMK-wrapped data key of an encrypted volume.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedDataKey {
    /// ARN of the CMK that wrapped the key (what Decrypt is asked to use).
    pub key_arn: String,
    /// The key service's ciphertext blob of the 64-byte XTS key.
    pub blob: Vec<u8>,
}

impl fmt::Debug for WrappedDataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedDataKey")
            .field("key_arn", &self.key_arn)
            .field("blob_len", &self.blob.len())
            .finish()
    }
}

/// How the data area is encrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// Plaintext data area (`volume create --unencrypted`).
    None,
    /// AES-256-XTS, tweak = little-endian index of the 4096-byte data sector
    /// (dm-crypt `aes-xts-plain64` with 4096-byte sectors and large-sector IVs).
    Aes256XtsPlain64(WrappedDataKey),
}

impl Encryption {
    /// The ARN of the CMK that wraps the data key, `None` for a plaintext volume.
    pub fn key_arn(&self) -> Option<&str> {
        match self {
            Encryption::None => None,
            Encryption::Aes256XtsPlain64(wrapped) => Some(&wrapped.key_arn),
        }
    }

    /// The cipher's name as dm-crypt spells it, or `none`.
    pub fn cipher_name(&self) -> &'static str {
        match self {
            Encryption::None => "none",
            Encryption::Aes256XtsPlain64(_) => "aes-xts-plain64",
        }
    }
}

/// A decoded, valid version-1 header. Fields are private so that every value of this
/// type satisfies the invariants [`VolumeHeader::decode`] checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeHeader {
    volume_id: Uuid,
    /// Raised by one on every header update; picks the newer copy after a crash.
    generation: u64,
    /// Bytes of the data area visible to clients: > 0, a multiple of [`SECTOR_SIZE`].
    size: u64,
    /// A non-zero multiple of [`DATA_ALIGNMENT`]; `data_offset + size` fits in an `i64`.
    data_offset: u64,
    flags: u32,
    encryption: Encryption,
}

/// What is wrong with a header block. Turned into [`Error::Corrupted`] with the file's
/// path by [`read_header`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderDefect {
    /// The block does not start with [`MAGIC`]: not an atrest header at all.
    NoMagic,
    /// Fewer than [`HEADER_SIZE`] bytes were available.
    Truncated {
        /// The bytes there were.
        len: usize,
    },
    /// More than [`HEADER_SIZE`] bytes were given.
    TrailingBytes {
        /// The bytes given.
        len: usize,
    },
    /// The header checksum does not match its bytes.
    ChecksumMismatch,
    /// A format version this build does not read.
    UnsupportedVersion(u16),
    /// A field holds a value the format does not allow.
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong with its value.
        why: String,
    },
}

impl fmt::Display for HeaderDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderDefect::NoMagic => write!(f, "no atrest volume magic"),
            HeaderDefect::Truncated { len } => {
                write!(f, "header truncated: {len} of {HEADER_SIZE} bytes")
            }
            HeaderDefect::TrailingBytes { len } => {
                write!(f, "header block is {len} bytes, expected {HEADER_SIZE}")
            }
            HeaderDefect::ChecksumMismatch => write!(f, "header checksum (SHA-256) mismatch"),
            HeaderDefect::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported header version {v} (this build reads {VERSION})"
                )
            }
            HeaderDefect::BadField { field, why } => write!(f, "header field {field}: {why}"),
        }
    }
}

fn bad(field: &'static str, why: impl Into<String>) -> HeaderDefect {
    HeaderDefect::BadField {
        field,
        why: why.into(),
    }
}

impl VolumeHeader {
    /// A first-generation header with the data area at [`DATA_ALIGNMENT`].
    pub fn new(volume_id: Uuid, size: u64, encryption: Encryption) -> Result<Self, Error> {
        let header = Self {
            volume_id,
            generation: 1,
            size,
            data_offset: DATA_ALIGNMENT,
            flags: 0,
            encryption,
        };
        header.check().map_err(|defect| Error::InvalidArgument {
            what: defect.to_string(),
        })?;
        Ok(header)
    }

    /// The same volume with another encryption record (a re-wrapped data key) and the
    /// next generation, for an in-place header update.
    pub fn with_encryption(&self, encryption: Encryption) -> Result<Self, Error> {
        let generation = self
            .generation
            .checked_add(1)
            .ok_or_else(|| Error::InvalidArgument {
                what: "header generation exhausted".into(),
            })?;
        let header = Self {
            generation,
            encryption,
            ..self.clone()
        };
        header.check().map_err(|defect| Error::InvalidArgument {
            what: defect.to_string(),
        })?;
        Ok(header)
    }

    /// The same header with `flags` set (e.g. [`FLAG_READ_ONLY`] for a snapshot).
    pub fn with_flags(&self, flags: u32) -> Result<Self, Error> {
        let header = Self {
            flags,
            ..self.clone()
        };
        header.check().map_err(|defect| Error::InvalidArgument {
            what: defect.to_string(),
        })?;
        Ok(header)
    }

    /// The volume's id, the same in every copy and snapshot of the header.
    pub fn volume_id(&self) -> Uuid {
        self.volume_id
    }

    /// Counts header rewrites (rewrap, repair); the higher copy is newer.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes visible to clients.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// File offset of data sector 0.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The encryption sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        SECTOR_SIZE
    }

    /// The header's flag bits (docs/FORMAT.md).
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// The volume was created read-only (flag bit 0).
    pub fn is_read_only(&self) -> bool {
        self.flags & FLAG_READ_ONLY != 0
    }

    /// The cipher and wrapped data key.
    pub fn encryption(&self) -> &Encryption {
        &self.encryption
    }

    /// File length of a complete volume: the data area is sized up front so that a
    /// shorter file is known to be truncated.
    pub fn file_len(&self) -> u64 {
        self.data_offset + self.size
    }

    /// The encryption context the data key is wrapped under.
    pub fn encryption_context(&self) -> crypto_core::kms::EncryptionContext {
        let mut context = crypto_core::kms::EncryptionContext::new();
        context.insert(
            VOLUME_ID_CONTEXT_KEY.to_string(),
            self.volume_id.to_string(),
        );
        context
    }

    fn check(&self) -> Result<(), HeaderDefect> {
        if self.generation == 0 {
            return Err(bad("generation", "must be at least 1"));
        }
        if self.size == 0 || self.size % u64::from(SECTOR_SIZE) != 0 {
            return Err(bad(
                "size",
                format!("{} is not a positive multiple of {SECTOR_SIZE}", self.size),
            ));
        }
        if self.data_offset == 0 || self.data_offset % DATA_ALIGNMENT != 0 {
            return Err(bad(
                "data_offset",
                format!(
                    "{} is not a positive multiple of {DATA_ALIGNMENT}",
                    self.data_offset
                ),
            ));
        }
        match self.data_offset.checked_add(self.size) {
            Some(end) if end <= i64::MAX as u64 => {}
            _ => {
                return Err(bad(
                    "size",
                    format!(
                        "data offset {} + size {} exceeds the largest file",
                        self.data_offset, self.size
                    ),
                ))
            }
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(bad(
                "flags",
                format!("unknown flag bits {:#x}", self.flags & !KNOWN_FLAGS),
            ));
        }
        if let Encryption::Aes256XtsPlain64(wrapped) = &self.encryption {
            if wrapped.key_arn.is_empty() || wrapped.key_arn.len() > MAX_KEY_ARN_LEN {
                return Err(bad(
                    "key_arn",
                    format!(
                        "length {} is not within 1..={MAX_KEY_ARN_LEN}",
                        wrapped.key_arn.len()
                    ),
                ));
            }
            if wrapped.blob.is_empty() || wrapped.blob.len() > MAX_WRAPPED_KEY_LEN {
                return Err(bad(
                    "wrapped_key",
                    format!(
                        "length {} is not within 1..={MAX_WRAPPED_KEY_LEN}",
                        wrapped.blob.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The header block, [`HEADER_SIZE`] bytes, checksum included.
    pub fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; HEADER_SIZE];
        block[OFF_MAGIC..OFF_VERSION].copy_from_slice(&MAGIC);
        block[OFF_VERSION..OFF_HEADER_SIZE].copy_from_slice(&VERSION.to_le_bytes());
        block[OFF_HEADER_SIZE..OFF_FLAGS].copy_from_slice(&(HEADER_SIZE as u16).to_le_bytes());
        block[OFF_FLAGS..OFF_VOLUME_ID].copy_from_slice(&self.flags.to_le_bytes());
        block[OFF_VOLUME_ID..OFF_GENERATION].copy_from_slice(self.volume_id.as_bytes());
        block[OFF_GENERATION..OFF_SIZE].copy_from_slice(&self.generation.to_le_bytes());
        block[OFF_SIZE..OFF_DATA_OFFSET].copy_from_slice(&self.size.to_le_bytes());
        block[OFF_DATA_OFFSET..OFF_SECTOR_SIZE].copy_from_slice(&self.data_offset.to_le_bytes());
        block[OFF_SECTOR_SIZE..OFF_CIPHER].copy_from_slice(&SECTOR_SIZE.to_le_bytes());
        let (cipher, arn, blob): (u16, &[u8], &[u8]) = match &self.encryption {
            Encryption::None => (CIPHER_NONE, &[], &[]),
            Encryption::Aes256XtsPlain64(w) => {
                (CIPHER_AES_256_XTS_PLAIN64, w.key_arn.as_bytes(), &w.blob)
            }
        };
        block[OFF_CIPHER..OFF_KEY_ARN_LEN].copy_from_slice(&cipher.to_le_bytes());
        // `check` bounds both lengths far below u16::MAX and the block's free space.
        block[OFF_KEY_ARN_LEN..OFF_WRAPPED_KEY_LEN]
            .copy_from_slice(&(arn.len() as u16).to_le_bytes());
        block[OFF_WRAPPED_KEY_LEN..OFF_VARIABLE]
            .copy_from_slice(&(blob.len() as u16).to_le_bytes());
        let arn_end = OFF_VARIABLE + arn.len();
        block[OFF_VARIABLE..arn_end].copy_from_slice(arn);
        block[arn_end..arn_end + blob.len()].copy_from_slice(blob);
        let checksum = Sha256::digest(&block[..OFF_CHECKSUM]);
        block[OFF_CHECKSUM..].copy_from_slice(&checksum);
        block
    }

    /// Parses one header block of exactly [`HEADER_SIZE`] bytes.
    pub fn decode(block: &[u8]) -> Result<Self, HeaderDefect> {
        if block.len() < OFF_VERSION || block[OFF_MAGIC..OFF_VERSION] != MAGIC {
            return Err(HeaderDefect::NoMagic);
        }
        if block.len() < HEADER_SIZE {
            return Err(HeaderDefect::Truncated { len: block.len() });
        }
        if block.len() > HEADER_SIZE {
            return Err(HeaderDefect::TrailingBytes { len: block.len() });
        }
        if Sha256::digest(&block[..OFF_CHECKSUM])[..] != block[OFF_CHECKSUM..] {
            return Err(HeaderDefect::ChecksumMismatch);
        }
        let version = u16_at(block, OFF_VERSION);
        if version != VERSION {
            return Err(HeaderDefect::UnsupportedVersion(version));
        }
        let header_size = u16_at(block, OFF_HEADER_SIZE);
        if usize::from(header_size) != HEADER_SIZE {
            return Err(bad(
                "header_size",
                format!("{header_size}, expected {HEADER_SIZE}"),
            ));
        }
        let sector_size = u32_at(block, OFF_SECTOR_SIZE);
        if sector_size != SECTOR_SIZE {
            return Err(bad(
                "sector_size",
                format!("{sector_size}, expected {SECTOR_SIZE}"),
            ));
        }
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&block[OFF_VOLUME_ID..OFF_GENERATION]);
        let arn_len = usize::from(u16_at(block, OFF_KEY_ARN_LEN));
        let blob_len = usize::from(u16_at(block, OFF_WRAPPED_KEY_LEN));
        if arn_len > MAX_KEY_ARN_LEN {
            return Err(bad(
                "key_arn_len",
                format!("{arn_len} exceeds {MAX_KEY_ARN_LEN}"),
            ));
        }
        if blob_len > MAX_WRAPPED_KEY_LEN {
            return Err(bad(
                "wrapped_key_len",
                format!("{blob_len} exceeds {MAX_WRAPPED_KEY_LEN}"),
            ));
        }
        let arn_end = OFF_VARIABLE + arn_len;
        let blob_end = arn_end + blob_len;
        let arn = &block[OFF_VARIABLE..arn_end];
        let blob = &block[arn_end..blob_end];
        if block[blob_end..OFF_CHECKSUM].iter().any(|&b| b != 0) {
            return Err(bad("padding", "bytes after the wrapped key are not zero"));
        }
        let encryption = match u16_at(block, OFF_CIPHER) {
            CIPHER_NONE => {
                if arn_len != 0 || blob_len != 0 {
                    return Err(bad("cipher", "an unencrypted volume carries a key"));
                }
                Encryption::None
            }
            CIPHER_AES_256_XTS_PLAIN64 => {
                let key_arn = std::str::from_utf8(arn)
                    .map_err(|_| bad("key_arn", "not UTF-8"))?
                    .to_string();
                Encryption::Aes256XtsPlain64(WrappedDataKey {
                    key_arn,
                    blob: blob.to_vec(),
                })
            }
            other => return Err(bad("cipher", format!("unknown cipher id {other}"))),
        };
        let header = Self {
            volume_id: Uuid::from_bytes(volume_id),
            generation: u64_at(block, OFF_GENERATION),
            size: u64_at(block, OFF_SIZE),
            data_offset: u64_at(block, OFF_DATA_OFFSET),
            flags: u32_at(block, OFF_FLAGS),
            encryption,
        };
        header.check()?;
        Ok(header)
    }
}

// The readers below are only called with offsets of fixed fields inside a block whose
// length was checked to be HEADER_SIZE, so the slices are always in bounds.
fn u16_at(block: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([block[at], block[at + 1]])
}

fn u32_at(block: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&block[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn u64_at(block: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&block[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Which header copy a volume was opened from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderCopy {
    /// The copy at offset 0.
    Primary,
    /// The copy at the backup offset.
    Backup,
}

impl HeaderCopy {
    /// `primary` or `backup`, as messages and `volume repair --use` name it.
    pub fn name(self) -> &'static str {
        match self {
            HeaderCopy::Primary => "primary",
            HeaderCopy::Backup => "backup",
        }
    }

    /// Where the copy lives in the volume file.
    pub fn offset(self) -> u64 {
        match self {
            HeaderCopy::Primary => PRIMARY_HEADER_OFFSET,
            HeaderCopy::Backup => BACKUP_HEADER_OFFSET,
        }
    }
}

/// A header read from a file, with which copy it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocatedHeader {
    /// The header read.
    pub header: VolumeHeader,
    /// The copy it was read from.
    pub copy: HeaderCopy,
    /// Set when the other copy is damaged or stale; the volume still opens.
    pub warning: Option<String>,
}

/// What one header copy of a file holds: a valid header or what is wrong with it.
pub type CopyContent = Result<VolumeHeader, HeaderDefect>;

/// One line about a header copy for messages: its volume id, generation and key, or
/// its defect.
pub fn describe_copy(copy: &CopyContent) -> String {
    match copy {
        Ok(header) => {
            let key = match header.encryption() {
                Encryption::Aes256XtsPlain64(wrapped) => format!("key {}", wrapped.key_arn),
                Encryption::None => "unencrypted".to_owned(),
            };
            format!(
                "volume {} generation {}, {key}",
                header.volume_id(),
                header.generation()
            )
        }
        Err(defect) => defect.to_string(),
    }
}

/// Reads both header copies of `file` as they are, without choosing (for `volume
/// repair`, which shows them).
pub fn read_copies(file: &File, path: &Path) -> Result<(CopyContent, CopyContent), Error> {
    Ok((
        read_copy(file, path, HeaderCopy::Primary)?,
        read_copy(file, path, HeaderCopy::Backup)?,
    ))
}

/// Reads and checks both header copies of `file` and picks the one to use.
///
/// A file is a volume only when at least one copy is valid; otherwise the result is
/// [`Error::NoValidHeader`] naming what is wrong with each copy (a headerless file is
/// never taken for a raw image here: raw images are declared, not detected). When
/// both are valid, the newer generation of the same volume wins (an interrupted
/// update). Two valid copies of different volumes, or of one generation that differ,
/// are [`Error::HeaderConflict`]: a stray write of a foreign header that no automatic
/// choice can be trusted with (see `docs/FORMAT.md`, "Choosing a header copy").
pub fn read_header(file: &File, path: &Path) -> Result<LocatedHeader, Error> {
    let (primary, backup) = read_copies(file, path)?;
    let located = choose_copy(path, primary, backup)?;
    if let Some(warning) = &located.warning {
        tracing::warn!(path = %path.display(), "{warning}");
    }
    let file_len = crate::volume::file_len(file, path)?;
    if file_len < located.header.file_len() {
        return Err(Error::Corrupted {
            path: path.to_path_buf(),
            what: format!(
                "file truncated: {file_len} bytes, but the header's data area ends at byte {}",
                located.header.file_len()
            ),
        });
    }
    Ok(located)
}

/// The header copy to use, by the rules of [`read_header`].
pub fn choose_copy(
    path: &Path,
    primary: CopyContent,
    backup: CopyContent,
) -> Result<LocatedHeader, Error> {
    Ok(match (primary, backup) {
        (Ok(p), Ok(b)) => {
            let conflict = p.volume_id != b.volume_id || (p.generation == b.generation && p != b);
            if conflict {
                return Err(Error::HeaderConflict {
                    path: path.to_path_buf(),
                    primary: describe_copy(&Ok(p)),
                    backup: describe_copy(&Ok(b)),
                });
            }
            if b.generation > p.generation {
                LocatedHeader {
                    warning: Some(format!(
                        "primary header is older (generation {}) than the backup ({}); \
                         an update was interrupted, using the backup",
                        p.generation, b.generation
                    )),
                    header: b,
                    copy: HeaderCopy::Backup,
                }
            } else {
                let warning = (p != b).then(|| {
                    format!(
                        "backup header is older (generation {}) than the primary ({}); \
                         an update was interrupted, using the primary",
                        b.generation, p.generation
                    )
                });
                LocatedHeader {
                    header: p,
                    copy: HeaderCopy::Primary,
                    warning,
                }
            }
        }
        (Ok(p), Err(defect)) => LocatedHeader {
            header: p,
            copy: HeaderCopy::Primary,
            warning: Some(format!(
                "backup header at offset {BACKUP_HEADER_OFFSET} is damaged: {defect}"
            )),
        },
        (Err(defect), Ok(b)) => LocatedHeader {
            header: b,
            copy: HeaderCopy::Backup,
            warning: Some(format!(
                "primary header at offset {PRIMARY_HEADER_OFFSET} is damaged ({defect}); \
                 opened from the backup"
            )),
        },
        (Err(p), Err(b)) => {
            return Err(Error::NoValidHeader {
                path: path.to_path_buf(),
                primary: p.to_string(),
                backup: b.to_string(),
            })
        }
    })
}

fn read_copy(
    file: &File,
    path: &Path,
    copy: HeaderCopy,
) -> Result<Result<VolumeHeader, HeaderDefect>, Error> {
    let mut block = vec![0u8; HEADER_SIZE];
    let mut filled = 0;
    while filled < HEADER_SIZE {
        let n = file
            .read_at(&mut block[filled..], copy.offset() + filled as u64)
            .map_err(|source| Error::Io {
                context: format!("read the {} header of {}", copy.name(), path.display()),
                source,
            })?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(match VolumeHeader::decode(&block[..filled]) {
        // The file ends inside (or before) this copy: say so rather than "no magic".
        Err(HeaderDefect::NoMagic) if filled < HEADER_SIZE => {
            Err(HeaderDefect::Truncated { len: filled })
        }
        decoded => decoded,
    })
}

/// Writes `header` into one copy only, synced (for `volume repair`, which rewrites the
/// copy it did not choose).
pub fn write_copy(
    file: &File,
    path: &Path,
    header: &VolumeHeader,
    copy: HeaderCopy,
) -> Result<(), Error> {
    file.write_all_at(&header.encode(), copy.offset())
        .map_err(|source| Error::Io {
            context: format!("write the {} header of {}", copy.name(), path.display()),
            source,
        })?;
    file.sync_data().map_err(|source| Error::Io {
        context: format!("sync the {} header of {}", copy.name(), path.display()),
        source,
    })
}

/// Writes both header copies: the backup first, synced, then the primary, synced. An
/// update interrupted at any point leaves one valid copy holding either the old or the
/// new header, and [`read_header`] prefers the higher generation.
pub fn write_header(file: &File, path: &Path, header: &VolumeHeader) -> Result<(), Error> {
    let block = header.encode();
    for copy in [HeaderCopy::Backup, HeaderCopy::Primary] {
        file.write_all_at(&block, copy.offset())
            .map_err(|source| Error::Io {
                context: format!("write the {} header of {}", copy.name(), path.display()),
                source,
            })?;
        file.sync_data().map_err(|source| Error::Io {
            context: format!("sync the {} header of {}", copy.name(), path.display()),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypted() -> VolumeHeader {
        VolumeHeader::new(
            Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            1 << 30,
            Encryption::Aes256XtsPlain64(WrappedDataKey {
                key_arn: "arn:aws:kms:local:000000000000:key/abc".into(),
                blob: vec![7; 180],
            }),
        )
        .expect("valid header")
    }

    #[test]
    fn encode_puts_fields_at_the_documented_offsets() {
        let block = encrypted().encode();
        assert_eq!(block.len(), 4096);
        assert_eq!(&block[0..8], b"ATRESTVL");
        assert_eq!(&block[8..10], &[1, 0]);
        assert_eq!(&block[10..12], &[0, 0x10]);
        assert_eq!(
            &block[16..32],
            &0x0123_4567_89ab_cdef_0123_4567_89ab_cdef_u128.to_be_bytes()
        );
        assert_eq!(&block[32..40], &1u64.to_le_bytes());
        assert_eq!(&block[40..48], &(1u64 << 30).to_le_bytes());
        assert_eq!(&block[48..56], &(1u64 << 20).to_le_bytes());
        assert_eq!(&block[56..60], &4096u32.to_le_bytes());
        assert_eq!(&block[60..62], &[1, 0]);
        assert_eq!(&block[62..64], &38u16.to_le_bytes());
        assert_eq!(&block[64..66], &180u16.to_le_bytes());
        assert_eq!(&block[66..104], b"arn:aws:kms:local:000000000000:key/abc");
        assert_eq!(&block[104..284], &[7u8; 180][..]);
        assert!(block[284..4064].iter().all(|&b| b == 0));
        assert_eq!(&block[4064..], &Sha256::digest(&block[..4064])[..]);
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        for header in [
            encrypted(),
            VolumeHeader::new(Uuid::nil(), 4096, Encryption::None).expect("valid"),
        ] {
            let block = header.encode();
            for at in 0..block.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut damaged = block.clone();
                    damaged[at] ^= flip;
                    assert!(
                        VolumeHeader::decode(&damaged).is_err(),
                        "byte {at} ^ {flip:#x} went unnoticed"
                    );
                }
            }
        }
    }

    #[test]
    fn truncated_and_oversized_blocks_are_named() {
        let block = encrypted().encode();
        assert_eq!(
            VolumeHeader::decode(&block[..4000]),
            Err(HeaderDefect::Truncated { len: 4000 })
        );
        assert_eq!(
            VolumeHeader::decode(&block[..3]),
            Err(HeaderDefect::NoMagic)
        );
        let mut longer = block.clone();
        longer.push(0);
        assert_eq!(
            VolumeHeader::decode(&longer),
            Err(HeaderDefect::TrailingBytes { len: 4097 })
        );
        assert_eq!(
            VolumeHeader::decode(&[0u8; 4096]),
            Err(HeaderDefect::NoMagic)
        );
    }

    #[test]
    fn a_valid_checksum_does_not_excuse_a_bad_field() {
        let mut block = encrypted().encode();
        block[56..60].copy_from_slice(&512u32.to_le_bytes());
        let checksum = Sha256::digest(&block[..4064]);
        block[4064..].copy_from_slice(&checksum);
        assert_eq!(
            VolumeHeader::decode(&block),
            Err(HeaderDefect::BadField {
                field: "sector_size",
                why: "512, expected 4096".into()
            })
        );
    }

    #[test]
    fn new_rejects_sizes_that_are_not_whole_sectors() {
        assert!(VolumeHeader::new(Uuid::nil(), 4097, Encryption::None).is_err());
        assert!(VolumeHeader::new(Uuid::nil(), 0, Encryption::None).is_err());
        assert!(VolumeHeader::new(Uuid::nil(), u64::MAX - 4095, Encryption::None).is_err());
    }

    #[test]
    fn only_an_older_copy_of_the_same_volume_is_chosen_over_automatically() {
        let path = Path::new("v.vol");
        let a = encrypted();
        let a2 = a.with_encryption(a.encryption().clone()).unwrap();
        let other = VolumeHeader::new(Uuid::from_u128(7), 1 << 30, a.encryption().clone()).unwrap();
        let chosen =
            |p: &VolumeHeader, b: &VolumeHeader| choose_copy(path, Ok(p.clone()), Ok(b.clone()));
        assert_eq!(chosen(&a, &a).unwrap().warning, None);
        assert_eq!(chosen(&a, &a2).unwrap().copy, HeaderCopy::Backup);
        assert_eq!(chosen(&a2, &a).unwrap().copy, HeaderCopy::Primary);
        // Another volume's header, at any generation, in either copy.
        let other2 = other.with_encryption(other.encryption().clone()).unwrap();
        for (p, b) in [(&a, &other), (&other, &a), (&a, &other2), (&other2, &a)] {
            let err = chosen(p, b).unwrap_err();
            assert!(matches!(err, Error::HeaderConflict { .. }), "{err:?}");
            assert!(
                err.to_string().contains(&a.volume_id().to_string()),
                "{err}"
            );
            assert!(
                err.to_string().contains(&other.volume_id().to_string()),
                "{err}"
            );
        }
        // Same volume and generation, different contents (e.g. another wrapped key).
        let rekeyed = VolumeHeader {
            encryption: Encryption::Aes256XtsPlain64(WrappedDataKey {
                key_arn: "arn:aws:kms:local:000000000000:key/other".into(),
                blob: vec![9; 180],
            }),
            ..a.clone()
        };
        assert!(matches!(
            chosen(&a, &rekeyed).unwrap_err(),
            Error::HeaderConflict { .. }
        ));
        // No valid copy: never a raw image.
        let err =
            choose_copy(path, Err(HeaderDefect::NoMagic), Err(HeaderDefect::NoMagic)).unwrap_err();
        assert!(matches!(err, Error::NoValidHeader { .. }), "{err:?}");
    }

    #[test]
    fn debug_of_a_wrapped_key_shows_only_its_length() {
        let shown = format!("{:?}", encrypted());
        assert!(shown.contains("blob_len: 180") && !shown.contains("7, 7"));
    }
}
