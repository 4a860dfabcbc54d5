//! The one error type of the crate. Mapping to NBD errno values lives in `nbd`.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused an I/O call on the volume file.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The client asked for bytes outside the volume.
    #[error("range {offset}+{length} is outside the volume of {size} bytes")]
    OutOfRange { offset: u64, length: u64, size: u64 },
    /// The client tried to change a read-only volume.
    #[error("the volume is read-only")]
    ReadOnly,
    /// The volume's key cannot be used now (disabled, pending deletion, deleted, denied).
    #[error("the volume's key {key_arn} is unavailable: {reason}")]
    KeyUnavailable { key_arn: String, reason: String },
    /// The volume file is damaged: a header or its checksum does not match.
    #[error("{path}: corrupted volume: {what}")]
    Corrupted { path: PathBuf, what: String },
    /// The key service refused or failed.
    #[error(transparent)]
    Kms(#[from] crypto_core::kms::KmsError),
}
