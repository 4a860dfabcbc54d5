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
            GatewayError::InvalidSignature(_) => "InvalidSignatureException",
            GatewayError::PresignExpired(_) | GatewayError::InactiveAccessKey(_) => {
                "AccessDeniedException"
            }
            GatewayError::Serialization(_) => "SerializationException",
            GatewayError::UnknownOperation(_) => "UnknownOperationException",
            GatewayError::BadRequest(_) => "ValidationException",
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
            | GatewayError::Serialization(_)
            | GatewayError::UnknownOperation(_)
            | GatewayError::BadRequest(_) => 400,
            GatewayError::PresignExpired(_) | GatewayError::InactiveAccessKey(_) => 403,
            GatewayError::Kms(err) => err.http_status(),
            GatewayError::Config(_)
            | GatewayError::CredentialsFile { .. }
            | GatewayError::Io { .. } => 500,
        }
    }

    /// The message without the AWS name (the JSON protocol's `message`).
    pub fn message(&self) -> String {
        match self {
            GatewayError::MissingAuthenticationToken(m)
            | GatewayError::IncompleteSignature(m)
            | GatewayError::UnrecognizedClient(m)
            | GatewayError::InvalidSignature(m)
            | GatewayError::PresignExpired(m)
            | GatewayError::InactiveAccessKey(m)
            | GatewayError::Serialization(m)
            | GatewayError::UnknownOperation(m)
            | GatewayError::BadRequest(m)
            | GatewayError::Config(m) => m.clone(),
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
