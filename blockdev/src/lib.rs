//! Encrypted block volumes and the NBD server that exports them.
//!
//! - [`format`]: the on-disk volume header (byte tables in `docs/FORMAT.md`).
//! - [`volume`]: the [`volume::Volume`] trait, [`volume::EncryptedVolume`] and [`volume::RawVolume`].
//! - [`lease`]: [`lease::DataKeyLease`], which holds a volume's plaintext data key and
//!   revokes it when the CMK stops being usable (fail closed).
//! - [`lifecycle`]: snapshot, encrypted copy, import, rewrap, and the exports file.
//! - [`nbd`]: the NBD protocol parser (pure) and the server.
#![deny(unsafe_code)]

pub mod error;
pub mod format;
pub mod lease;
pub mod lifecycle;
mod mapped;
pub mod nbd;
pub mod volume;

pub use error::Error;
