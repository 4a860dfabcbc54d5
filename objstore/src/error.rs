//! The one error type of the crate, and its S3 error codes ([`Error::s3_code`]) and
//! HTTP statuses ([`Error::http_status`]): the S3 front end maps errors here, in one
//! place.

use std::borrow::Cow;
use std::io;
use std::path::PathBuf;

use crypto_core::kms::KmsError;
use thiserror::Error;

/// What went wrong in the object store; each variant's doc says whose fault it is.
/// [`Error::s3_code`] and [`Error::http_status`] put it on the wire.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller named a bucket that does not exist.
    #[error("NoSuchBucket: the bucket '{bucket}' does not exist")]
    NoSuchBucket {
        /// The bucket's name.
        bucket: String,
    },
    /// The caller named an object that does not exist.
    #[error("NoSuchKey: the key '{key}' does not exist in bucket '{bucket}'")]
    NoSuchKey {
        /// The bucket's name.
        bucket: String,
        /// The object key.
        key: String,
    },
    /// The caller asked to create a bucket it already owns.
    #[error("BucketAlreadyOwnedByYou: the bucket '{bucket}' already exists and is yours")]
    BucketAlreadyOwnedByYou {
        /// The bucket's name.
        bucket: String,
    },
    /// The caller asked to create a bucket another principal owns.
    #[error("BucketAlreadyExists: the bucket '{bucket}' is owned by another principal")]
    BucketAlreadyExists {
        /// The bucket's name.
        bucket: String,
    },
    /// The caller asked to delete a bucket that still holds objects.
    #[error("BucketNotEmpty: the bucket '{bucket}' is not empty")]
    BucketNotEmpty {
        /// The bucket's name.
        bucket: String,
    },
    /// The caller gave a bucket name that breaks S3's naming rules.
    #[error("InvalidBucketName: '{name}': {reason}")]
    InvalidBucketName {
        /// The name as the caller gave it.
        name: String,
        /// Which naming rule it breaks.
        reason: String,
    },
    /// The caller gave an object key longer than 1024 bytes.
    #[error("KeyTooLongError: the key is {len} bytes; the limit is 1024")]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
    },
    /// The caller asked for a range that does not overlap the object.
    #[error("InvalidRange: the range {range} is not satisfiable for an object of {size} bytes")]
    InvalidRange {
        /// The `Range` header as sent.
        range: String,
        /// The object's size in bytes.
        size: u64,
    },
    /// The caller gave a malformed or unsupported argument (a key with `..`
    /// segments, a bad encryption context, too much metadata, no KMS key to use).
    #[error("InvalidArgument: {0}")]
    InvalidArgument(String),
    /// The caller asked for the bucket's default encryption but none is set.
    #[error(
        "ServerSideEncryptionConfigurationNotFoundError: the bucket '{bucket}' has no default encryption"
    )]
    NoBucketEncryption {
        /// The bucket's name.
        bucket: String,
    },
    /// The upload body could not be read (the client went away or sent less).
    #[error("IncompleteBody: reading the object body failed: {0}")]
    Body(#[source] io::Error),
    /// The body's MD5 differs from the `Content-MD5` the caller sent.
    #[error("BadDigest: the Content-MD5 you specified did not match what was received")]
    BadDigest,
    /// The upload is larger than S3's 5 TiB single-object limit.
    #[error("EntityTooLarge: the object is larger than {max} bytes")]
    TooLarge {
        /// The limit in bytes.
        max: u64,
    },
    /// The caller named a multipart upload that does not exist (never created,
    /// completed, or aborted).
    #[error("NoSuchUpload: the upload '{upload_id}' does not exist; it may have been aborted or completed")]
    NoSuchUpload {
        /// The upload id as the caller gave it.
        upload_id: String,
    },
    /// A CompleteMultipartUpload names a part that was not uploaded, or with another
    /// ETag.
    #[error("InvalidPart: {0}")]
    InvalidPart(String),
    /// A CompleteMultipartUpload lists its parts out of ascending order.
    #[error("InvalidPartOrder: the list of parts was not in ascending order; parts must be ordered by part number")]
    InvalidPartOrder,
    /// A part other than the last is smaller than S3's 5 MiB minimum.
    #[error("EntityTooSmall: part {part} is {size} bytes; every part but the last must be at least {min} bytes")]
    EntityTooSmall {
        /// The part number.
        part: u32,
        /// The part's size in bytes.
        size: u64,
        /// The smallest size a part other than the last may have, in bytes.
        min: u64,
    },
    /// The key service refused or failed (key disabled, pending deletion, access
    /// denied, wrong context, unreachable): S3 reports these as `KMS.<name>`.
    #[error("KMS.{}", .0)]
    Kms(#[from] KmsError),
    /// A file of the store is damaged or was tampered with: a header that does not
    /// parse, a segment that fails authentication, a file cut short. Deliberately
    /// does not say which bytes were wrong.
    #[error("InternalError: {path}: corrupted object store file: {what}")]
    Corrupted {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A tag set S3 would refuse (too many tags, a key or value too long or with a
    /// character S3 does not allow, a duplicate or reserved key).
    #[error("InvalidTag: {0}")]
    InvalidTag(String),
    /// GetBucketTagging of a bucket without tags.
    #[error("NoSuchTagSet: The TagSet does not exist (bucket '{bucket}')")]
    NoSuchTagSet {
        /// The bucket's name.
        bucket: String,
    },
    /// A bucket policy atrest cannot evaluate faithfully, or not a policy at all.
    #[error("MalformedPolicy: {0}")]
    MalformedPolicy(String),
    /// GetBucketPolicy of a bucket without one.
    #[error("NoSuchBucketPolicy: The bucket policy does not exist (bucket '{bucket}')")]
    NoSuchBucketPolicy {
        /// The bucket's name.
        bucket: String,
    },
    /// GetBucketLifecycleConfiguration of a bucket without one.
    #[error("NoSuchLifecycleConfiguration: The lifecycle configuration does not exist (bucket '{bucket}')")]
    NoSuchLifecycleConfiguration {
        /// The bucket's name.
        bucket: String,
    },
    /// GetPublicAccessBlock of a bucket without one.
    #[error("NoSuchPublicAccessBlockConfiguration: The public access block configuration was not found (bucket '{bucket}')")]
    NoSuchPublicAccessBlock {
        /// The bucket's name.
        bucket: String,
    },
    /// A versionId that names no version of the key.
    #[error("NoSuchVersion: The specified version '{version_id}' of '{key}' does not exist")]
    NoSuchVersion {
        /// The object key.
        key: String,
        /// The version id as the caller gave it.
        version_id: String,
    },
    /// GET or HEAD of a versionId that is a delete marker.
    #[error("MethodNotAllowed: The specified method is not allowed against this resource (version '{version_id}' is a delete marker).")]
    DeleteMarker {
        /// The version id as the caller gave it.
        version_id: String,
    },
    /// The client's condition (`If-Match`, `If-None-Match`, ...) does not hold.
    #[error(
        "PreconditionFailed: At least one of the pre-conditions you specified did not hold ({0})"
    )]
    PreconditionFailed(String),
    /// The client read an SSE-C object without sending its key.
    #[error(
        "InvalidRequest: The object was stored using a form of Server Side Encryption. The \
         correct parameters must be provided to retrieve the object."
    )]
    CustomerKeyRequired,
    /// The client sent an SSE-C key that is not the object's.
    #[error("AccessDenied: The SSE-C key provided is not the key the object was encrypted with.")]
    CustomerKeyMismatch,
    /// The client sent an SSE-C key for an object that is not SSE-C.
    #[error("InvalidRequest: The encryption parameters are not applicable to this object.")]
    CustomerKeyNotApplicable,
    /// The operating system refused an I/O call on the store's files.
    #[error("InternalError: {context}: {source}")]
    Io {
        /// What the store was doing (`write PATH`, `fsync directory PATH`).
        context: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The S3 error code (`<Code>` of the XML error body); see [`Error::wire`].
    pub fn s3_code(&self) -> Cow<'static, str> {
        self.wire().0
    }

    /// The HTTP status S3 answers with; see [`Error::wire`].
    pub fn http_status(&self) -> u16 {
        self.wire().1
    }

    /// The S3 error code and HTTP status of this error: the one table of the crate's
    /// wire errors (no `_` arm, so a new variant must choose both).
    pub fn wire(&self) -> (Cow<'static, str>, u16) {
        let (code, status) = match self {
            Error::NoSuchBucket { .. } => ("NoSuchBucket", 404),
            Error::NoSuchKey { .. } => ("NoSuchKey", 404),
            Error::BucketAlreadyOwnedByYou { .. } => ("BucketAlreadyOwnedByYou", 409),
            Error::BucketAlreadyExists { .. } => ("BucketAlreadyExists", 409),
            Error::BucketNotEmpty { .. } => ("BucketNotEmpty", 409),
            Error::InvalidBucketName { .. } => ("InvalidBucketName", 400),
            Error::KeyTooLong { .. } => ("KeyTooLongError", 400),
            Error::InvalidRange { .. } => ("InvalidRange", 416),
            Error::InvalidArgument(_) => ("InvalidArgument", 400),
            Error::NoBucketEncryption { .. } => {
                ("ServerSideEncryptionConfigurationNotFoundError", 404)
            }
            Error::Body(_) => ("IncompleteBody", 400),
            Error::BadDigest => ("BadDigest", 400),
            Error::TooLarge { .. } => ("EntityTooLarge", 400),
            Error::NoSuchUpload { .. } => ("NoSuchUpload", 404),
            Error::InvalidPart(_) => ("InvalidPart", 400),
            Error::InvalidPartOrder => ("InvalidPartOrder", 400),
            Error::EntityTooSmall { .. } => ("EntityTooSmall", 400),
            Error::PreconditionFailed(_) => ("PreconditionFailed", 412),
            Error::InvalidTag(_) => ("InvalidTag", 400),
            Error::NoSuchVersion { .. } => ("NoSuchVersion", 404),
            Error::MalformedPolicy(_) => ("MalformedPolicy", 400),
            Error::NoSuchPublicAccessBlock { .. } => ("NoSuchPublicAccessBlockConfiguration", 404),
            Error::NoSuchBucketPolicy { .. } => ("NoSuchBucketPolicy", 404),
            Error::NoSuchLifecycleConfiguration { .. } => ("NoSuchLifecycleConfiguration", 404),
            Error::DeleteMarker { .. } => ("MethodNotAllowed", 405),
            Error::NoSuchTagSet { .. } => ("NoSuchTagSet", 404),
            Error::CustomerKeyRequired | Error::CustomerKeyNotApplicable => ("InvalidRequest", 400),
            Error::CustomerKeyMismatch => ("AccessDenied", 403),
            // S3 reports a KMS denial as plain AccessDenied.
            Error::Kms(KmsError::AccessDenied(_)) => ("AccessDenied", 403),
            Error::Kms(e) => {
                let status = if e.http_status() >= 500 { 503 } else { 400 };
                return (Cow::Owned(format!("KMS.{}", e.aws_name())), status);
            }
            Error::Corrupted { .. } | Error::Io { .. } => ("InternalError", 500),
        };
        (Cow::Borrowed(code), status)
    }

    /// The message without the code, for the XML `<Message>`.
    pub fn message(&self) -> String {
        let text = self.to_string();
        match text.split_once(": ") {
            Some((_, rest)) => rest.to_owned(),
            None => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_errors_keep_their_name_and_status() {
        let e = Error::from(KmsError::Disabled("key k is disabled".into()));
        assert_eq!(e.s3_code(), "KMS.DisabledException");
        assert_eq!(e.http_status(), 400);
        assert_eq!(e.to_string(), "KMS.DisabledException: key k is disabled");
        assert_eq!(e.message(), "key k is disabled");
        let e = Error::from(KmsError::InvalidState("pending deletion".into()));
        assert_eq!(e.s3_code(), "KMS.KMSInvalidStateException");
        let e = Error::from(KmsError::AccessDenied("no".into()));
        assert_eq!(
            (e.s3_code().as_ref(), e.http_status()),
            ("AccessDenied", 403)
        );
        let e = Error::from(KmsError::Unavailable("down".into()));
        assert_eq!(e.http_status(), 503);
    }

    #[test]
    fn s3_names_and_statuses() {
        let e = Error::NoSuchKey {
            bucket: "b".into(),
            key: "k".into(),
        };
        assert_eq!((e.s3_code().as_ref(), e.http_status()), ("NoSuchKey", 404));
        let e = Error::BucketNotEmpty { bucket: "b".into() };
        assert_eq!(
            (e.s3_code().as_ref(), e.http_status()),
            ("BucketNotEmpty", 409)
        );
        let e = Error::InvalidRange {
            range: "bytes=9-".into(),
            size: 3,
        };
        assert_eq!(
            (e.s3_code().as_ref(), e.http_status()),
            ("InvalidRange", 416)
        );
        assert!(e.to_string().starts_with("InvalidRange: "));
    }
}
