//! The gateway's one error type, and the one place that maps each error to its AWS
//! error name and HTTP status.

use crypto_core::kms::KmsError;
use thiserror::Error;

/// Everything that can go wrong in the gateway. The variant docs say who is at fault.
/// Messages never contain a secret (access key secrets, signatures' keys, plaintexts).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The client sent no `Authorization` header and no presigned query.
    #[error("MissingAuthenticationTokenException: {0}")]
    MissingAuthenticationToken(String),
    /// The client's `Authorization` header or presigned query is malformed or lacks a
    /// required part (credential, signed headers, signature, date).
    #[error("IncompleteSignatureException: {0}")]
    IncompleteSignature(String),
    /// The client used an access key id this gateway does not know (or a session token
    /// it did not issue).
    #[error("UnrecognizedClientException: {0}")]
    UnrecognizedClient(String),
    /// The client's signature does not match, its credential scope is wrong, or its
    /// request date is more than 15 minutes away from the gateway's clock.
    #[error("InvalidSignatureException: {0}")]
    InvalidSignature(String),
    /// The client's request date is more than 15 minutes away from the gateway's
    /// clock (S3: RequestTimeTooSkewed).
    #[error("InvalidSignatureException: {0}")]
    ClockSkew(String),
    /// The client's presigned URL has expired (S3 answers AccessDenied).
    #[error("AccessDeniedException: {0}")]
    PresignExpired(String),
    /// The client's access key exists but was deactivated.
    #[error("AccessDeniedException: {0}")]
    InactiveAccessKey(String),
    /// The client sent a body that is not the JSON the operation takes (bad syntax or
    /// bad base64).
    #[error("SerializationException: {0}")]
    Serialization(String),
    /// The client asked for an operation (`X-Amz-Target`) the service does not have.
    #[error("UnknownOperationException: {0}")]
    UnknownOperation(String),
    /// The client sent a request the gateway cannot route or read (wrong method, body
    /// too large, ...).
    #[error("ValidationException: {0}")]
    BadRequest(String),
    /// The client sent an S3 request that is malformed or lacks a required part (a
    /// header, a query parameter).
    #[error("InvalidRequest: {0}")]
    InvalidRequest(String),
    /// The client gave an S3 argument (header, query parameter) a value it cannot
    /// take.
    #[error("InvalidArgument: {0}")]
    InvalidArgument(String),
    /// The client (anonymous, or a principal without the right) may not do this.
    #[error("AccessDenied: {0}")]
    AccessDenied(String),
    /// The client sent an XML body that does not parse or lacks a required element.
    #[error("MalformedXML: {0}")]
    MalformedXml(String),
    /// The client's body does not hash to the `x-amz-content-sha256` it signed.
    #[error("XAmzContentSHA256Mismatch: {0}")]
    ContentSha256Mismatch(String),
    /// The client's body does not match the checksum (`Content-MD5`,
    /// `x-amz-checksum-*`) it sent.
    #[error("BadDigest: {0}")]
    BadDigest(String),
    /// The client's body ended early, ran long, or its aws-chunked framing is broken.
    #[error("IncompleteBody: {0}")]
    IncompleteBody(String),
    /// The client sent a `Content-MD5` that is not the base64 of 16 bytes.
    #[error("InvalidDigest: {0}")]
    InvalidDigest(String),
    /// The client sent an upload without the length S3 needs.
    #[error("MissingContentLength: {0}")]
    MissingContentLength(String),
    /// The client asked to create a bucket in another region than this endpoint's.
    #[error("InvalidLocationConstraint: {0}")]
    InvalidLocationConstraint(String),
    /// The client sent a request body and then stopped: nothing arrived for the
    /// body timeout (`--body-timeout`). The connection is closed after the answer.
    #[error("RequestTimeout: {0}")]
    RequestTimeout(String),
    /// The client used an HTTP method the resource does not take.
    #[error("MethodNotAllowed: {0}")]
    MethodNotAllowed(String),
    /// The client asked for an S3 feature atrest does not have (multipart uploads,
    /// versioning, ...).
    #[error("NotImplemented: {0}")]
    NotImplemented(String),
    /// The client's browser-upload form (S3 POST policy) is malformed, its policy
    /// document is invalid, or its file is outside the policy's content-length-range:
    /// S3's error code (400) and message.
    #[error("{0}: {1}")]
    PostForm(&'static str, String),
    /// The object store refused or failed the S3 operation (its own S3 error code).
    #[error(transparent)]
    Object(#[from] objstore::Error),
    /// The key service refused or failed the call (its own AWS error name).
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The operator gave a bad setting (listen address, TLS files, endpoint URL,
    /// credentials, principal).
    #[error("{0}")]
    Config(String),
    /// The credentials file could not be read or written, or is damaged.
    #[error("credentials file {path}: {message}")]
    CredentialsFile { path: String, message: String },
    /// A socket or file operation of the server failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl GatewayError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        GatewayError::Io {
            context: context.into(),
            source,
        }
    }

    /// The AWS error name sent as the JSON protocol's `__type`.
    pub fn aws_name(&self) -> &'static str {
        match self {
            GatewayError::MissingAuthenticationToken(_) => "MissingAuthenticationTokenException",
            GatewayError::IncompleteSignature(_) => "IncompleteSignatureException",
            GatewayError::UnrecognizedClient(_) => "UnrecognizedClientException",
            GatewayError::InvalidSignature(_) | GatewayError::ClockSkew(_) => {
                "InvalidSignatureException"
            }
            GatewayError::PresignExpired(_) | GatewayError::InactiveAccessKey(_) => {
                "AccessDeniedException"
            }
            GatewayError::Serialization(_) => "SerializationException",
            GatewayError::UnknownOperation(_) => "UnknownOperationException",
            GatewayError::BadRequest(_)
            | GatewayError::InvalidRequest(_)
            | GatewayError::InvalidArgument(_)
            | GatewayError::MalformedXml(_)
            | GatewayError::ContentSha256Mismatch(_)
            | GatewayError::BadDigest(_)
            | GatewayError::IncompleteBody(_)
            | GatewayError::InvalidDigest(_)
            | GatewayError::MissingContentLength(_)
            | GatewayError::InvalidLocationConstraint(_)
            | GatewayError::PostForm(..) => "ValidationException",
            GatewayError::RequestTimeout(_) => "RequestTimeoutException",
            GatewayError::AccessDenied(_) => "AccessDeniedException",
            GatewayError::MethodNotAllowed(_) | GatewayError::NotImplemented(_) => {
                "UnknownOperationException"
            }
            GatewayError::Object(_) => "InternalFailure",
            GatewayError::Kms(err) => err.aws_name(),
            GatewayError::Config(_)
            | GatewayError::CredentialsFile { .. }
            | GatewayError::Io { .. } => "InternalFailure",
        }
    }

    /// The HTTP status AWS answers with for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            GatewayError::MissingAuthenticationToken(_)
            | GatewayError::IncompleteSignature(_)
            | GatewayError::UnrecognizedClient(_)
            | GatewayError::InvalidSignature(_)
            | GatewayError::ClockSkew(_)
            | GatewayError::Serialization(_)
            | GatewayError::UnknownOperation(_)
            | GatewayError::BadRequest(_)
            | GatewayError::InvalidRequest(_)
            | GatewayError::InvalidArgument(_)
            | GatewayError::MalformedXml(_)
            | GatewayError::ContentSha256Mismatch(_)
            | GatewayError::BadDigest(_)
            | GatewayError::IncompleteBody(_)
            | GatewayError::InvalidDigest(_)
            | GatewayError::MissingContentLength(_)
            | GatewayError::InvalidLocationConstraint(_)
            | GatewayError::RequestTimeout(_)
            | GatewayError::MethodNotAllowed(_)
            | GatewayError::NotImplemented(_)
            | GatewayError::PostForm(..) => 400,
            GatewayError::PresignExpired(_)
            | GatewayError::InactiveAccessKey(_)
            | GatewayError::AccessDenied(_) => 403,
            GatewayError::Object(err) => err.http_status(),
            GatewayError::Kms(err) => err.http_status(),
            GatewayError::Config(_)
            | GatewayError::CredentialsFile { .. }
            | GatewayError::Io { .. } => 500,
        }
    }

    /// The S3 error code (`<Code>` of S3's XML error body).
    pub fn s3_code(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow;
        Cow::Borrowed(match self {
            GatewayError::MissingAuthenticationToken(_)
            | GatewayError::PresignExpired(_)
            | GatewayError::AccessDenied(_) => "AccessDenied",
            GatewayError::IncompleteSignature(_) => "AuthorizationHeaderMalformed",
            GatewayError::UnrecognizedClient(_) | GatewayError::InactiveAccessKey(_) => {
                "InvalidAccessKeyId"
            }
            GatewayError::InvalidSignature(_) => "SignatureDoesNotMatch",
            GatewayError::ClockSkew(_) => "RequestTimeTooSkewed",
            GatewayError::Serialization(_) | GatewayError::BadRequest(_) => "InvalidRequest",
            GatewayError::InvalidRequest(_) => "InvalidRequest",
            GatewayError::InvalidArgument(_) => "InvalidArgument",
            GatewayError::MalformedXml(_) => "MalformedXML",
            GatewayError::ContentSha256Mismatch(_) => "XAmzContentSHA256Mismatch",
            GatewayError::BadDigest(_) => "BadDigest",
            GatewayError::IncompleteBody(_) => "IncompleteBody",
            GatewayError::InvalidDigest(_) => "InvalidDigest",
            GatewayError::MissingContentLength(_) => "MissingContentLength",
            GatewayError::InvalidLocationConstraint(_) => "InvalidLocationConstraint",
            GatewayError::MethodNotAllowed(_) => "MethodNotAllowed",
            GatewayError::RequestTimeout(_) => "RequestTimeout",
            GatewayError::PostForm(code, _) => code,
            GatewayError::UnknownOperation(_) | GatewayError::NotImplemented(_) => "NotImplemented",
            GatewayError::Object(err) => return err.s3_code(),
            // S3 names key-service failures `KMS.<name>`, except a denial.
            GatewayError::Kms(crypto_core::kms::KmsError::AccessDenied(_)) => "AccessDenied",
            GatewayError::Kms(err) => return Cow::Owned(format!("KMS.{}", err.aws_name())),
            GatewayError::Config(_)
            | GatewayError::CredentialsFile { .. }
            | GatewayError::Io { .. } => "InternalError",
        })
    }

    /// The HTTP status S3 answers this error with.
    pub fn s3_status(&self) -> u16 {
        match self {
            GatewayError::MissingAuthenticationToken(_)
            | GatewayError::PresignExpired(_)
            | GatewayError::AccessDenied(_)
            | GatewayError::UnrecognizedClient(_)
            | GatewayError::InactiveAccessKey(_)
            | GatewayError::InvalidSignature(_)
            | GatewayError::ClockSkew(_) => 403,
            GatewayError::MethodNotAllowed(_) => 405,
            GatewayError::MissingContentLength(_) => 411,
            GatewayError::UnknownOperation(_) | GatewayError::NotImplemented(_) => 501,
            GatewayError::Object(err) => err.http_status(),
            GatewayError::Kms(crypto_core::kms::KmsError::AccessDenied(_)) => 403,
            GatewayError::Kms(err) if err.http_status() >= 500 => 503,
            GatewayError::Kms(_) => 400,
            other => other.http_status(),
        }
    }

    /// The message without the AWS name (the JSON protocol's `message`).
    pub fn message(&self) -> String {
        match self {
            GatewayError::MissingAuthenticationToken(m)
            | GatewayError::IncompleteSignature(m)
            | GatewayError::UnrecognizedClient(m)
            | GatewayError::InvalidSignature(m)
            | GatewayError::ClockSkew(m)
            | GatewayError::PresignExpired(m)
            | GatewayError::InactiveAccessKey(m)
            | GatewayError::Serialization(m)
            | GatewayError::UnknownOperation(m)
            | GatewayError::BadRequest(m)
            | GatewayError::InvalidRequest(m)
            | GatewayError::InvalidArgument(m)
            | GatewayError::AccessDenied(m)
            | GatewayError::MalformedXml(m)
            | GatewayError::ContentSha256Mismatch(m)
            | GatewayError::BadDigest(m)
            | GatewayError::IncompleteBody(m)
            | GatewayError::InvalidDigest(m)
            | GatewayError::MissingContentLength(m)
            | GatewayError::InvalidLocationConstraint(m)
            | GatewayError::RequestTimeout(m)
            | GatewayError::MethodNotAllowed(m)
            | GatewayError::NotImplemented(m)
            | GatewayError::PostForm(_, m)
            | GatewayError::Config(m) => m.clone(),
            GatewayError::Object(err) => match err {
                // The operator sees the path in the server log; the client does not.
                objstore::Error::Corrupted { .. } | objstore::Error::Io { .. } => {
                    "We encountered an internal error. Please try again.".to_owned()
                }
                other => other.message(),
            },
            GatewayError::Kms(err) => err.message().to_owned(),
            GatewayError::CredentialsFile { .. } | GatewayError::Io { .. } => {
                // The operator sees the details in the server log; the client only
                // learns that the server failed.
                "the gateway could not complete the request".to_owned()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_errors_carry_aws_names_and_400() {
        let cases = [
            (
                GatewayError::MissingAuthenticationToken("m".into()),
                "MissingAuthenticationTokenException",
            ),
            (
                GatewayError::IncompleteSignature("m".into()),
                "IncompleteSignatureException",
            ),
            (
                GatewayError::UnrecognizedClient("m".into()),
                "UnrecognizedClientException",
            ),
            (
                GatewayError::InvalidSignature("m".into()),
                "InvalidSignatureException",
            ),
        ];
        for (err, name) in cases {
            assert_eq!(err.aws_name(), name);
            assert_eq!(err.http_status(), 400);
            assert_eq!(err.message(), "m");
            assert_eq!(err.to_string(), format!("{name}: m"));
        }
    }

    #[test]
    fn kms_errors_keep_their_names_and_internal_details_stay_private() {
        let err = GatewayError::from(KmsError::Disabled("key is disabled".into()));
        assert_eq!(err.aws_name(), "DisabledException");
        assert_eq!(err.http_status(), 400);
        let io = GatewayError::io(
            "reading /secret/path",
            std::io::Error::other("disk on fire"),
        );
        assert_eq!(io.http_status(), 500);
        assert!(!io.message().contains("/secret/path"));
    }
}
