//! The gateway's one error type, and the one place that maps each error to its AWS
//! error name and HTTP status.

use std::borrow::Cow;

use crypto_core::kms::KmsError;
use thiserror::Error;

/// What is wrong with a browser-upload form (S3 POST), each with S3's error code
/// (all answered 400). The client is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormFault {
    /// The body is not well-formed `multipart/form-data` (MalformedPOSTRequest).
    Malformed,
    /// The request is not `multipart/form-data` at all (PreconditionFailed).
    NotMultipart,
    /// The fields before the file exceed S3's 20 KiB (MaxPostPreDataLengthExceeded).
    PreDataTooLong,
    /// A field is missing, repeated, or has a value it cannot take; or the form has no
    /// file (InvalidArgument).
    InvalidField,
    /// The policy document does not decode or does not follow S3's grammar
    /// (InvalidPolicyDocument).
    InvalidPolicy,
    /// The file is larger than the policy's content-length-range (EntityTooLarge).
    FileTooLarge,
    /// The file is smaller than the policy's content-length-range (EntityTooSmall).
    FileTooSmall,
}

impl FormFault {
    /// S3's error code.
    pub fn code(self) -> &'static str {
        match self {
            FormFault::Malformed => "MalformedPOSTRequest",
            FormFault::NotMultipart => "PreconditionFailed",
            FormFault::PreDataTooLong => "MaxPostPreDataLengthExceeded",
            FormFault::InvalidField => "InvalidArgument",
            FormFault::InvalidPolicy => "InvalidPolicyDocument",
            FormFault::FileTooLarge => "EntityTooLarge",
            FormFault::FileTooSmall => "EntityTooSmall",
        }
    }
}

/// The protocol an error answer is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The KMS JSON 1.1 protocol: `{"__type": ..., "message": ...}`.
    Json,
    /// The S3 REST protocol: an XML `<Error>` body (none for HEAD).
    S3,
}

/// An error as it goes on the wire ([`GatewayError::reply`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// The AWS error name (JSON `__type`) or S3 error code (`<Code>`).
    pub code: Cow<'static, str>,
    /// The HTTP status.
    pub status: u16,
    /// The message the client reads (never a secret or a server path).
    pub message: String,
}

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
    /// The client (with others, or from one address) holds more connections than the
    /// server takes: retry with back-off.
    #[error("SlowDown: {0}")]
    SlowDown(String),
    /// The client used an HTTP method the resource does not take.
    #[error("MethodNotAllowed: {0}")]
    MethodNotAllowed(String),
    /// The client asked for an S3 feature atrest does not have (multipart uploads,
    /// versioning, ...).
    #[error("NotImplemented: {0}")]
    NotImplemented(String),
    /// The client's browser-upload form (S3 POST policy) is malformed, its policy
    /// document is invalid, or its file is outside the policy's content-length-range:
    /// what is wrong ([`FormFault`], S3's error code) and the message.
    #[error("{code}: {1}", code = .0.code())]
    PostForm(FormFault, String),
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
    CredentialsFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A socket or file operation of the server failed.
    #[error("{context}: {source}")]
    Io {
        /// What the server was doing.
        context: String,
        /// The failure.
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

    /// The one map from an error to the wire: its error code, HTTP status and
    /// message as `protocol` sends them. Every writer of an error answer (the KMS
    /// JSON body, S3's XML error body, a HEAD answer without a body, DeleteObjects'
    /// per-key errors, the trail's record of a refusal) goes through here; the match
    /// has no catch-all arm, so every new variant chooses its codes.
    pub fn reply(&self, protocol: Protocol) -> ErrorReply {
        let (json, json_status, s3, s3_status) = self.codes();
        let (code, status) = match protocol {
            Protocol::Json => (Cow::Borrowed(json), json_status),
            Protocol::S3 => (s3, s3_status),
        };
        ErrorReply {
            code,
            status,
            message: self.message(),
        }
    }

    /// The AWS error name sent as the JSON protocol's `__type` (of [`Self::reply`]).
    pub fn aws_name(&self) -> &'static str {
        self.codes().0
    }

    /// The S3 error code, `<Code>` of S3's XML error body (of [`Self::reply`]).
    pub fn s3_code(&self) -> Cow<'static, str> {
        self.reply(Protocol::S3).code
    }

    /// The one table: (JSON `__type`, JSON status, S3 `<Code>`, S3 status) of each
    /// variant.
    fn codes(&self) -> (&'static str, u16, Cow<'static, str>, u16) {
        use GatewayError as E;
        match self {
            E::MissingAuthenticationToken(_) => (
                "MissingAuthenticationTokenException",
                400,
                "AccessDenied".into(),
                403,
            ),
            E::IncompleteSignature(_) => (
                "IncompleteSignatureException",
                400,
                "AuthorizationHeaderMalformed".into(),
                400,
            ),
            E::UnrecognizedClient(_) => (
                "UnrecognizedClientException",
                400,
                "InvalidAccessKeyId".into(),
                403,
            ),
            E::InvalidSignature(_) => (
                "InvalidSignatureException",
                400,
                "SignatureDoesNotMatch".into(),
                403,
            ),
            E::ClockSkew(_) => (
                "InvalidSignatureException",
                400,
                "RequestTimeTooSkewed".into(),
                403,
            ),
            E::PresignExpired(_) => ("AccessDeniedException", 403, "AccessDenied".into(), 403),
            E::InactiveAccessKey(_) => (
                "AccessDeniedException",
                403,
                "InvalidAccessKeyId".into(),
                403,
            ),
            E::Serialization(_) => ("SerializationException", 400, "InvalidRequest".into(), 400),
            E::UnknownOperation(_) => (
                "UnknownOperationException",
                400,
                "NotImplemented".into(),
                501,
            ),
            E::BadRequest(_) | E::InvalidRequest(_) => {
                ("ValidationException", 400, "InvalidRequest".into(), 400)
            }
            E::InvalidArgument(_) => ("ValidationException", 400, "InvalidArgument".into(), 400),
            E::AccessDenied(_) => ("AccessDeniedException", 403, "AccessDenied".into(), 403),
            E::MalformedXml(_) => ("ValidationException", 400, "MalformedXML".into(), 400),
            E::ContentSha256Mismatch(_) => (
                "ValidationException",
                400,
                "XAmzContentSHA256Mismatch".into(),
                400,
            ),
            E::BadDigest(_) => ("ValidationException", 400, "BadDigest".into(), 400),
            E::IncompleteBody(_) => ("ValidationException", 400, "IncompleteBody".into(), 400),
            E::InvalidDigest(_) => ("ValidationException", 400, "InvalidDigest".into(), 400),
            E::MissingContentLength(_) => (
                "ValidationException",
                400,
                "MissingContentLength".into(),
                411,
            ),
            E::InvalidLocationConstraint(_) => (
                "ValidationException",
                400,
                "InvalidLocationConstraint".into(),
                400,
            ),
            E::RequestTimeout(_) => ("RequestTimeoutException", 400, "RequestTimeout".into(), 400),
            E::SlowDown(_) => ("ThrottlingException", 503, "SlowDown".into(), 503),
            E::MethodNotAllowed(_) => (
                "UnknownOperationException",
                400,
                "MethodNotAllowed".into(),
                405,
            ),
            E::NotImplemented(_) => (
                "UnknownOperationException",
                400,
                "NotImplemented".into(),
                501,
            ),
            E::PostForm(fault, _) => ("ValidationException", 400, fault.code().into(), 400),
            E::Object(err) => (
                "InternalFailure",
                err.http_status(),
                err.s3_code(),
                err.http_status(),
            ),
            // S3 names key-service failures `KMS.<name>`, except a denial, and answers
            // a failure of the key service itself with 503.
            E::Kms(err @ KmsError::AccessDenied(_)) => (
                err.aws_name(),
                err.http_status(),
                "AccessDenied".into(),
                403,
            ),
            E::Kms(err) => (
                err.aws_name(),
                err.http_status(),
                format!("KMS.{}", err.aws_name()).into(),
                if err.http_status() >= 500 { 503 } else { 400 },
            ),
            E::Config(_) | E::CredentialsFile { .. } | E::Io { .. } => {
                ("InternalFailure", 500, "InternalError".into(), 500)
            }
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
            | GatewayError::SlowDown(m)
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
            let reply = err.reply(Protocol::Json);
            assert_eq!((&*reply.code, reply.status), (name, 400));
            assert_eq!(err.aws_name(), name);
            assert_eq!(reply.message, "m");
            assert_eq!(err.to_string(), format!("{name}: m"));
        }
    }

    #[test]
    fn kms_errors_keep_their_names_and_internal_details_stay_private() {
        let err = GatewayError::from(KmsError::Disabled("key is disabled".into()));
        assert_eq!(err.aws_name(), "DisabledException");
        assert_eq!(err.reply(Protocol::Json).status, 400);
        let io = GatewayError::io(
            "reading /secret/path",
            std::io::Error::other("disk on fire"),
        );
        assert_eq!(io.reply(Protocol::Json).status, 500);
        assert_eq!(io.reply(Protocol::S3).status, 500);
        assert!(!io.message().contains("/secret/path"));
    }

    #[test]
    fn s3_codes_and_statuses_follow_s3() {
        let m = || "m".to_owned();
        let cases = [
            (
                GatewayError::MissingAuthenticationToken(m()),
                "AccessDenied",
                403,
            ),
            (
                GatewayError::IncompleteSignature(m()),
                "AuthorizationHeaderMalformed",
                400,
            ),
            (
                GatewayError::UnrecognizedClient(m()),
                "InvalidAccessKeyId",
                403,
            ),
            (
                GatewayError::InvalidSignature(m()),
                "SignatureDoesNotMatch",
                403,
            ),
            (GatewayError::ClockSkew(m()), "RequestTimeTooSkewed", 403),
            (GatewayError::PresignExpired(m()), "AccessDenied", 403),
            (
                GatewayError::InactiveAccessKey(m()),
                "InvalidAccessKeyId",
                403,
            ),
            (
                GatewayError::MissingContentLength(m()),
                "MissingContentLength",
                411,
            ),
            (GatewayError::MethodNotAllowed(m()), "MethodNotAllowed", 405),
            (GatewayError::SlowDown(m()), "SlowDown", 503),
            (GatewayError::NotImplemented(m()), "NotImplemented", 501),
            (
                GatewayError::PostForm(FormFault::FileTooLarge, m()),
                "EntityTooLarge",
                400,
            ),
            (
                GatewayError::Kms(KmsError::AccessDenied(m())),
                "AccessDenied",
                403,
            ),
            (
                GatewayError::Kms(KmsError::Disabled(m())),
                "KMS.DisabledException",
                400,
            ),
            (
                GatewayError::Kms(KmsError::Unavailable(m())),
                "KMS.DependencyTimeoutException",
                503,
            ),
        ];
        for (err, code, status) in cases {
            let reply = err.reply(Protocol::S3);
            assert_eq!((&*reply.code, reply.status), (code, status), "{err}");
            assert_eq!(err.s3_code(), code);
            assert_eq!(reply.message, "m");
        }
        let form = GatewayError::PostForm(FormFault::InvalidPolicy, "Invalid Policy: x".into());
        assert_eq!(form.to_string(), "InvalidPolicyDocument: Invalid Policy: x");
        assert_eq!(form.aws_name(), "ValidationException");
    }
}
