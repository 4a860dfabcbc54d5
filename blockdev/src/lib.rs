//! Encrypted block volumes and the NBD server that exports them.
//!
//! - [`format`]: the on-disk volume header (byte tables in `docs/FORMAT.md`).
//! - [`volume`]: the [`volume::Volume`] trait, [`volume::EncryptedVolume`] and [`volume::RawVolume`].
//! - [`lease`]: [`lease::DataKeyLease`], which holds a volume's plaintext data key and
//!   revokes it when the CMK stops being usable (fail closed).
//! - [`lifecycle`]: snapshot, encrypted copy, import, rewrap, and the exports file.
//! - [`nbd`]: the NBD protocol parser (pure) and the server.
//! - [`refusal_audit`]: the audit-trail record of an NBD client refused an encrypted export.
//! - [`volume_key`]: the state of a volume's CMK as `volume info` and `nbd list` show it.
//! - [`default_volume`]: first-run setup of `atrest serve` (default key and volume).
//!
//! `unsafe` is denied here and allowed only in `mapped` (the read-only file mapping),
//! where every block carries a `// SAFETY:` note.
#![deny(unsafe_code)]

pub mod admission;
pub mod default_volume;
pub mod error;
pub mod format;
pub mod lease;
pub mod lifecycle;
mod mapped;
pub mod nbd;
pub mod refusal_audit;
pub mod volume;
pub mod volume_key;
mod zero;

pub use error::{Error, ProtocolError, RequestError, TlsError};
