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
    /// The reason (the key state) comes first: NBD clients show only the start of a
    /// refusal (nbd-client 3.24 prints the first 95 bytes of the server's message).
    #[error("the volume's key is unavailable, {reason}: {key_arn}")]
    KeyUnavailable { key_arn: String, reason: String },
    /// The volume file is damaged: a header or its checksum does not match.
    #[error("{path}: corrupted volume: {what}")]
    Corrupted { path: PathBuf, what: String },
    /// The file has no valid atrest header and was not declared a raw image. The
    /// format of a headerless file is never guessed: a client of a raw export controls
    /// its bytes and must not decide how the file is opened next time.
    #[error(
        "{path} has no valid atrest volume header (primary copy at offset 0: {primary}; \
         backup copy at offset 524288: {backup}); it is not served or opened as a raw \
         image unless declared one: `atrest nbd serve --export NAME={path} --raw NAME`, \
         or `format = \"raw\"` in the exports file"
    )]
    NoValidHeader {
        path: PathBuf,
        primary: String,
        backup: String,
    },
    /// Both header copies are valid but describe different volumes (or the same
    /// generation differently): a stray write of another volume's header. Never
    /// resolved automatically; `atrest volume repair --use primary|backup` does it.
    #[error(
        "{path}: the two header copies disagree (primary: {primary}; backup: {backup}); \
         nothing was rewritten. Compare them with `atrest volume repair {path} --dry-run` \
         and keep one with `atrest volume repair {path} --use primary|backup`"
    )]
    HeaderConflict {
        path: PathBuf,
        primary: String,
        backup: String,
    },
    /// The path is not a regular file or a block device (a FIFO, a character device
    /// such as /dev/null, a socket, a directory): nothing is opened that could block or
    /// read as an endless or empty stream.
    #[error("{path} is a {kind}; a volume is a regular file or a block device")]
    NotAVolumeFile { path: PathBuf, kind: &'static str },
    /// Another header update (`volume rewrap`, `volume repair`) of the volume is in
    /// progress; header updates are serialised.
    #[error("{path}: another header update (`atrest volume rewrap` or `volume repair`) is in progress; try again when it is done")]
    HeaderBusy { path: PathBuf },
    /// The caller asked to create a volume where a file already exists.
    #[error("{path} already exists; refusing to overwrite it")]
    AlreadyExists { path: PathBuf },
    /// The volume is already open for writing: by another process (an `atrest nbd
    /// serve`, an `atrest serve`) or by another export of this one. Two writers would
    /// each read-modify-write partial sectors without seeing the other's locks.
    #[error(
        "{path} is already open for writing (by another atrest process, such as a running \
         `atrest nbd serve`, or by another export of this server); stop that first, or \
         open it read-only"
    )]
    InUse { path: PathBuf },
    /// The caller asked for something the format cannot hold (a size that is not a
    /// whole number of sectors, an over-long key ARN).
    #[error("invalid volume parameter: {what}")]
    InvalidArgument { what: String },
    /// The kernel's NBD driver is missing, or refused to attach, detach or list a
    /// device (`atrest nbd attach`); the message says what to do about it.
    #[error("{0}")]
    KernelNbd(String),
    /// The key service refused or failed.
    #[error(transparent)]
    Kms(#[from] crypto_core::kms::KmsError),
    /// The NBD client sent a request or option this server rejects (unknown command,
    /// a flag not valid for the command, a zero length, malformed option data); the
    /// connection goes on.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The NBD client asked for more bytes in one request than the server accepts.
    #[error("request of {length} bytes is larger than the maximum of {max} bytes")]
    TooLarge { length: u64, max: u64 },
    /// The NBD client asked for something the export cannot do as asked (e.g. a fast
    /// zero that would have to write data).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The NBD client broke the protocol in a way the connection cannot recover from
    /// (bad magic, unknown handshake flags); the server drops that connection.
    #[error("NBD protocol violation by the client: {0}")]
    Protocol(String),
    /// NBD over TLS: the certificate, key or CA files are unusable (the operator's
    /// fault), or a client's TLS handshake or records failed (the client's).
    #[error("TLS: {0}")]
    Tls(String),
}
