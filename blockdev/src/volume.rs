//! Volumes: what the NBD server reads and writes.

use crate::Error;

/// A run of bytes with one allocation status (NBD `base:allocation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
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
/// call from many threads at once.
pub trait Volume: Send + Sync + std::fmt::Debug {
    /// Bytes visible to clients.
    fn size(&self) -> u64;
    /// The natural block size (4096 for encrypted volumes): the preferred I/O size.
    fn block_size(&self) -> u32;
    fn is_read_only(&self) -> bool;
    /// Whether a new client may attach now; the error explains a refusal (e.g. key disabled).
    fn check_attach(&self) -> Result<(), Error> {
        Ok(())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error>;
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Error>;
    /// Makes every completed write durable (fdatasync).
    fn flush(&self) -> Result<(), Error>;
    /// Deallocates the range where whole sectors allow; it then reads as zeros.
    fn trim(&self, offset: u64, length: u64) -> Result<(), Error>;
    /// Zeroes the range; deallocates it (punch hole) when `may_punch` is true.
    fn write_zeroes(&self, offset: u64, length: u64, may_punch: bool) -> Result<(), Error>;
    /// Allocation status of the range, in order, covering at least one byte.
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>, Error>;
}
