//! The one error type of the crate. Mapping to NBD errno values lives in `nbd`.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
/// Everything that can go wrong in a volume or the NBD server.
pub enum Error {
    /// The operating system refused an I/O call on the volume file.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (`reading a request`, `writing {path}`).
        context: String,
        #[source]
        /// What the operating system said.
        source: io::Error,
    },
    /// The client asked for bytes outside the volume.
    #[error("range {offset}+{length} is outside the volume of {size} bytes")]
    OutOfRange {
        /// Where the range starts.
        offset: u64,
        /// Its length in bytes.
        length: u64,
        /// The volume's size.
        size: u64,
    },
    /// The client tried to change a read-only volume.
    #[error("the volume is read-only")]
    ReadOnly,
    /// The volume's key cannot be used now (disabled, pending deletion, deleted, denied).
    /// The reason (the key state) comes first: NBD clients show only the start of a
    /// refusal (nbd-client 3.24 prints the first 95 bytes of the server's message).
    #[error("the volume's key is unavailable, {reason}: {key_arn}")]
    KeyUnavailable {
        /// The volume's CMK.
        key_arn: String,
        /// Why (the key state, or what the key service said).
        reason: String,
    },
    /// The volume file is damaged: a header or its checksum does not match.
    #[error("{path}: corrupted volume: {what}")]
    Corrupted {
        /// The volume file.
        path: PathBuf,
        /// What does not match.
        what: String,
    },
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
        /// The volume file.
        path: PathBuf,
        /// What is wrong with, or in, the primary copy.
        primary: String,
        /// What is wrong with, or in, the backup copy.
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
        /// The volume file.
        path: PathBuf,
        /// What is wrong with, or in, the primary copy.
        primary: String,
        /// What is wrong with, or in, the backup copy.
        backup: String,
    },
    /// The path is not a regular file or a block device (a FIFO, a character device
    /// such as /dev/null, a socket, a directory): nothing is opened that could block or
    /// read as an endless or empty stream.
    #[error("{path} is a {kind}; a volume is a regular file or a block device")]
    NotAVolumeFile {
        /// The path given.
        path: PathBuf,
        /// What it is instead (`FIFO`, `directory`, ...).
        kind: &'static str,
    },
    /// Another header update (`volume rewrap`, `volume repair`) of the volume is in
    /// progress; header updates are serialised.
    #[error("{path}: another header update (`atrest volume rewrap` or `volume repair`) is in progress; try again when it is done")]
    HeaderBusy {
        /// The volume file.
        path: PathBuf,
    },
    /// The caller asked to create a volume where a file already exists.
    #[error("{path} already exists; refusing to overwrite it")]
    AlreadyExists {
        /// The path asked for.
        path: PathBuf,
    },
    /// The volume is already open for writing: by another process (an `atrest nbd
    /// serve`, an `atrest serve`) or by another export of this one. Two writers would
    /// each read-modify-write partial sectors without seeing the other's locks.
    #[error(
        "{path} is already open for writing (by another atrest process, such as a running \
         `atrest nbd serve`, or by another export of this server); stop that first, or \
         open it read-only"
    )]
    InUse {
        /// The volume file.
        path: PathBuf,
    },
    /// The caller asked for something the format cannot hold (a size that is not a
    /// whole number of sectors, an over-long key ARN).
    #[error("invalid volume parameter: {what}")]
    InvalidArgument {
        /// Which parameter, and what is wrong with it.
        what: String,
    },
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
    InvalidRequest(#[from] RequestError),
    /// The NBD client asked for more bytes in one request than the server accepts.
    #[error("request of {length} bytes is larger than the maximum of {max} bytes")]
    TooLarge {
        /// The length asked for.
        length: u64,
        /// The most the server accepts in one request.
        max: u64,
    },
    /// The NBD client asked for something the export cannot do as asked (e.g. a fast
    /// zero that would have to write data).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The NBD client broke the protocol in a way the connection cannot recover from
    /// (bad magic, unknown handshake flags); the server drops that connection.
    #[error("NBD protocol violation by the client: {0}")]
    Protocol(#[from] ProtocolError),
    /// NBD over TLS: the certificate, key or CA files are unusable (the operator's
    /// fault), or a client's TLS handshake or records failed (the client's).
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// Why an NBD request or option was rejected ([`Error::InvalidRequest`]): the client's
/// fault, and the connection goes on (except after `NBD_OPT_EXPORT_NAME`, which has
/// no error reply).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A request with a command number this server does not know.
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    /// Command flags that are not defined for the command.
    #[error("flags {flags:#x} are not valid for {command}")]
    FlagsNotValid {
        /// The offending flag bits (only those).
        flags: u16,
        /// The command's name (`read`, `write`, ...).
        command: &'static str,
    },
    /// `NBD_CMD_FLUSH` with an offset or a length (both must be zero).
    #[error("flush with a nonzero offset or length")]
    FlushWithRange,
    /// A command that needs a length sent with length zero.
    #[error("{command} of zero bytes")]
    ZeroLength {
        /// The command's name.
        command: &'static str,
    },
    /// `NBD_CMD_BLOCK_STATUS` before `base:allocation` was selected for the export.
    #[error("block status without a negotiated metadata context")]
    BlockStatusWithoutContext,
    /// A string in option data longer than the server accepts.
    #[error("{what} of {length} bytes is longer than {max}")]
    StringTooLong {
        /// Which string (`export name`, `metadata context query`).
        what: &'static str,
        /// Its length as sent.
        length: usize,
        /// The longest accepted ([`crate::nbd::proto::MAX_STRING`]).
        max: usize,
    },
    /// A string in option data that is not UTF-8.
    #[error("{what} is not UTF-8")]
    NotUtf8 {
        /// Which string.
        what: &'static str,
    },
    /// A string in option data with a NUL byte.
    #[error("{what} contains NUL")]
    ContainsNul {
        /// Which string.
        what: &'static str,
    },
    /// A string length that does not fit this machine's address space.
    #[error("{what} length {length} too large")]
    LengthTooLarge {
        /// Which string.
        what: &'static str,
        /// The length as sent.
        length: u32,
    },
    /// Option data shorter than its fields.
    #[error("option data ends early: {wanted} bytes wanted, {left} left")]
    OptionDataShort {
        /// Bytes the next field needs.
        wanted: usize,
        /// Bytes left in the option data.
        left: usize,
    },
    /// Option data with bytes after its last field.
    #[error("{0} unexpected trailing bytes in option data")]
    TrailingBytes(usize),
    /// `NBD_OPT_EXPORT_NAME` for an export that does not exist.
    #[error("no export named {0:?}")]
    UnknownExport(String),
    /// `NBD_OPT_EXPORT_NAME` in plaintext for an export served only over TLS.
    #[error("export {0:?} needs TLS; the client asked for it in plaintext")]
    ExportNeedsTls(String),
    /// `NBD_OPT_EXPORT_NAME` for an export this client may not use
    /// (`allowed_clients`).
    #[error("export {name:?} refused: {reason}")]
    ExportRefused {
        /// The export.
        name: String,
        /// Why, as logged and audited.
        reason: String,
    },
}

/// How an NBD client broke the protocol beyond recovery ([`Error::Protocol`]): the
/// server drops the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Handshake flags from the client that the server does not know (only those bits).
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    /// An option that does not start with `IHAVEOPT`.
    #[error("option magic {0:#018x}, expected IHAVEOPT")]
    OptionMagic(u64),
    /// A request that does not start with `NBD_REQUEST_MAGIC`.
    #[error("request magic {0:#010x}, expected {expected:#010x}", expected = crate::nbd::proto::REQUEST_MAGIC)]
    RequestMagic(u32),
    /// `NBD_OPT_EXPORT_NAME` with a name longer than options may be (it has no error
    /// reply, so its data cannot be skipped and refused).
    #[error("export name of {0} bytes")]
    ExportNameTooLong(u32),
    /// `NBD_OPT_EXPORT_NAME` in plaintext on a server that requires TLS.
    #[error("NBD_OPT_EXPORT_NAME before STARTTLS on a server that requires TLS")]
    ExportNameBeforeStartTls,
    /// A second `NBD_OPT_STARTTLS` accepted on one connection (never happens: the
    /// server refuses it over TLS; kept so the state cannot be ignored).
    #[error("STARTTLS accepted twice on one connection")]
    StartTlsTwice,
    /// A client refused an export this many times in one negotiation run (each refusal
    /// is audited; see `nbd::negotiation::MAX_REFUSALS_PER_NEGOTIATION`).
    #[error("{0} refused options on one connection; closed")]
    TooManyRefusals(u32),
}

/// What went wrong with NBD over TLS ([`Error::Tls`]): the certificate, key or CA files
/// (the operator's fault, at startup), or a client's TLS handshake or records (the
/// client's, on one connection).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// `--tls-key` is not a PEM private key.
    #[error("--tls-key {path}: not a PEM private key ({detail})")]
    KeyNotPem {
        /// The key file.
        path: PathBuf,
        /// The PEM parser's complaint.
        detail: String,
    },
    /// `--tls-ciphers` names a suite the server does not know (or an empty entry).
    #[error(
        "unknown TLS 1.3 cipher suite '{name}' \
         (known: aes128-gcm, aes256-gcm, chacha20-poly1305)"
    )]
    UnknownCipher {
        /// The name as given.
        name: String,
    },
    /// `--tls-ciphers` names a suite twice.
    #[error("TLS cipher suite {0} is listed twice")]
    DuplicateCipher(&'static str),
    /// rustls refused TLS 1.3 with the ring provider.
    #[error("TLS 1.3 with the ring provider: {0}")]
    Provider(String),
    /// A certificate file (`--tls-cert`, `--tls-client-ca`) is not PEM certificates.
    #[error("{flag} {path}: not PEM certificates ({detail})")]
    CertificatesNotPem {
        /// The command-line flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint.
        detail: String,
    },
    /// A certificate file holds no certificate.
    #[error("{flag} {path}: holds no certificate")]
    NoCertificate {
        /// The command-line flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A certificate in `--tls-client-ca` cannot be a trust anchor.
    #[error("--tls-client-ca {path}: not a usable CA certificate ({detail})")]
    UnusableCa {
        /// The CA file.
        path: PathBuf,
        /// rustls's complaint.
        detail: String,
    },
    /// No client-certificate verifier could be built from `--tls-client-ca`.
    #[error("--tls-client-ca {path}: {detail}")]
    ClientVerifier {
        /// The CA file.
        path: PathBuf,
        /// rustls's complaint.
        detail: String,
    },
    /// `--tls-key` is not the key of `--tls-cert`.
    #[error("--tls-cert/--tls-key: the key does not fit the certificate ({0})")]
    KeyMismatch(String),
    /// rustls could not start a session for a client.
    #[error("starting a TLS session: {0}")]
    Session(String),
    /// The client hung up in the middle of the TLS handshake.
    #[error("the client closed the connection during the TLS handshake")]
    ClosedInHandshake,
    /// The client's TLS handshake failed (no or a rejected certificate, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The handshake records could not be sent.
    #[error("finishing the TLS handshake: {0}")]
    FinishHandshake(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed reasons print what the `format!` calls they replaced printed: NBD
    /// clients see these messages in option and structured error replies.
    #[test]
    fn reasons_print_as_before() {
        let path = || PathBuf::from("/etc/atrest/x.pem");
        let cases: Vec<(Error, &str)> = vec![
            (
                ProtocolError::UnknownClientFlags(4).into(),
                "NBD protocol violation by the client: unknown client flags 0x4",
            ),
            (
                ProtocolError::OptionMagic(1).into(),
                "NBD protocol violation by the client: option magic 0x0000000000000001, \
                 expected IHAVEOPT",
            ),
            (
                ProtocolError::RequestMagic(0x2560_9512).into(),
                "NBD protocol violation by the client: request magic 0x25609512, expected \
                 0x25609513",
            ),
            (
                ProtocolError::ExportNameTooLong(5000).into(),
                "NBD protocol violation by the client: export name of 5000 bytes",
            ),
            (
                RequestError::UnknownCommand(42).into(),
                "invalid request: unknown command 42",
            ),
            (
                RequestError::FlagsNotValid {
                    flags: 0x4,
                    command: "write",
                }
                .into(),
                "invalid request: flags 0x4 are not valid for write",
            ),
            (
                RequestError::ZeroLength { command: "trim" }.into(),
                "invalid request: trim of zero bytes",
            ),
            (
                RequestError::StringTooLong {
                    what: "export name",
                    length: 5000,
                    max: 4096,
                }
                .into(),
                "invalid request: export name of 5000 bytes is longer than 4096",
            ),
            (
                RequestError::LengthTooLarge {
                    what: "export name",
                    length: 7,
                }
                .into(),
                "invalid request: export name length 7 too large",
            ),
            (
                RequestError::OptionDataShort { wanted: 2, left: 1 }.into(),
                "invalid request: option data ends early: 2 bytes wanted, 1 left",
            ),
            (
                RequestError::TrailingBytes(3).into(),
                "invalid request: 3 unexpected trailing bytes in option data",
            ),
            (
                RequestError::UnknownExport("a\"b".into()).into(),
                "invalid request: no export named \"a\\\"b\"",
            ),
            (
                RequestError::ExportRefused {
                    name: "a".into(),
                    reason: "no".into(),
                }
                .into(),
                "invalid request: export \"a\" refused: no",
            ),
            (
                TlsError::KeyNotPem {
                    path: path(),
                    detail: "bad".into(),
                }
                .into(),
                "TLS: --tls-key /etc/atrest/x.pem: not a PEM private key (bad)",
            ),
            (
                TlsError::CertificatesNotPem {
                    flag: "--tls-cert",
                    path: path(),
                    detail: "bad".into(),
                }
                .into(),
                "TLS: --tls-cert /etc/atrest/x.pem: not PEM certificates (bad)",
            ),
            (
                TlsError::NoCertificate {
                    flag: "--tls-client-ca",
                    path: path(),
                }
                .into(),
                "TLS: --tls-client-ca /etc/atrest/x.pem: holds no certificate",
            ),
            (
                TlsError::Handshake("peer sent no certificates".into()).into(),
                "TLS: TLS handshake failed: peer sent no certificates",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }
}
