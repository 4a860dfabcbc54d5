//! AES-256-XTS sector cipher (IEEE 1619), tweak = little-endian sector number
//! (dm-crypt `aes-xts-plain64`).

use thiserror::Error;

/// Which implementation runs the AES rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// 256-bit VAES + VPCLMULQDQ (AVX2).
    Vaes,
    /// 128-bit AES-NI, eight blocks interleaved.
    AesNi,
    /// The `aes` crate, batched; runs everywhere.
    Portable,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum XtsError {
    /// The caller gave a key whose two AES-256 halves are equal (IEEE 1619-2018 5.1).
    #[error("the two halves of the XTS key are equal")]
    EqualKeyHalves,
    /// The caller asked for a backend this CPU cannot run.
    #[error("this CPU does not support the {0:?} backend")]
    Unsupported(Backend),
}

/// AES-256-XTS over whole sectors.
pub struct SectorCipher {
    backend: Backend,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SectorCipher").field("backend", &self.backend).finish_non_exhaustive()
    }
}

impl SectorCipher {
    /// The fastest backend this CPU supports.
    pub fn new(_key: &[u8; 64]) -> Result<Self, XtsError> {
        Ok(Self { backend: Backend::Portable })
    }

    pub fn with_backend(_key: &[u8; 64], backend: Backend) -> Result<Self, XtsError> {
        Ok(Self { backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Encrypts `buf` in place: `buf.len() / sector_size` consecutive sectors, the first
    /// numbered `first_sector`. Panics if `buf.len()` is not a multiple of `sector_size`
    /// or `sector_size` is not a multiple of 16 (>= 16).
    pub fn encrypt_sectors(&self, _buf: &mut [u8], _first_sector: u64, _sector_size: usize) {}

    pub fn decrypt_sectors(&self, _buf: &mut [u8], _first_sector: u64, _sector_size: usize) {}
}
