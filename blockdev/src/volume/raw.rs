//! [`RawVolume`]: plaintext bytes in a file, either a plain raw image (no header, the
//! whole file is the volume) or an atrest volume created `--unencrypted` (the data
//! area after its header).

use std::path::Path;

use super::file::VolumeFile;
use super::{check_range, Extent, Volume};
use crate::format::LocatedHeader;
use crate::Error;

/// A plaintext volume. Bytes go straight to the file, so no sector locking is needed.
#[derive(Debug)]
pub struct RawVolume {
    file: VolumeFile,
    /// File offset of volume byte 0.
    base: u64,
    size: u64,
    read_only: bool,
    /// `None` for a plain raw image.
    header: Option<LocatedHeader>,
}

impl RawVolume {
    /// A plain raw image: the whole file, as long as it is now.
    pub(crate) fn image(file: VolumeFile, read_only: bool) -> Result<Self, Error> {
        let size = file.len()?;
        Ok(Self {
            file,
            base: 0,
            size,
            read_only,
            header: None,
        })
    }

    /// The data area of an unencrypted atrest volume.
    pub(crate) fn with_header(file: VolumeFile, located: LocatedHeader, read_only: bool) -> Self {
        Self {
            file,
            base: located.header.data_offset(),
            size: located.header.size(),
            read_only: read_only || located.header.is_read_only(),
            header: Some(located),
        }
    }

    /// The header of an unencrypted atrest volume; `None` for a plain raw image.
    pub fn header(&self) -> Option<&LocatedHeader> {
        self.header.as_ref()
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    fn check_writable(&self, offset: u64, length: u64) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        check_range(offset, length, self.size)
    }
}

impl Volume for RawVolume {
    fn size(&self) -> u64 {
        self.size
    }

    /// 4096, or the largest smaller power of two that divides an odd-sized raw image.
    fn block_size(&self) -> u32 {
        let mut block = 4096u32;
        while block > 1 && self.size % u64::from(block) != 0 {
            block /= 2;
        }
        block
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_exact_at(buf, self.base + offset)
    }

    fn read_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool, Error> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_cached_at(buf, self.base + offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.check_writable(offset, data.len() as u64)?;
        self.file.write_all_at(data, self.base + offset)
    }

    fn flush(&self) -> Result<(), Error> {
        self.file.sync_data()
    }

    fn trim(&self, offset: u64, length: u64) -> Result<(), Error> {
        self.write_zeroes(offset, length, true)
    }

    fn write_zeroes(&self, offset: u64, length: u64, may_punch: bool) -> Result<(), Error> {
        self.check_writable(offset, length)?;
        if length == 0 {
            return Ok(());
        }
        if may_punch {
            // The kernel zeroes partial filesystem blocks at the edges itself.
            self.file.punch_hole(self.base + offset, length)
        } else {
            self.file.write_zero_bytes(self.base + offset, length)
        }
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>, Error> {
        check_range(offset, length, self.size)?;
        self.file.allocation(self.base, offset, length, 1)
    }
}
