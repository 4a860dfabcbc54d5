//! Server-side encryption as the requests and answers carry it: the bucket's default
//! (PutBucketEncryption, GetBucketEncryption, DeleteBucketEncryption), the SSE-S3 and
//! SSE-KMS headers of a write and of the answer, the AWS managed key `alias/aws/s3`,
//! and SSE-C customer keys (only over TLS; never logged or echoed, only their MD5).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use crypto_core::kms::{EncryptionContext, LocalKms};
use http::{HeaderMap, StatusCode};
use objstore::{
    BucketEncryption, CustomerKey, EncryptionRequest, ObjectInfo, PutObjectOptions, Sse,
    SseAlgorithm,
};

use super::auth::SecureTransport;
use super::routing::Call;
use super::xml::{XmlDocument, XmlWriter};
use super::{header, insert, S3Answer, S3Service};
use crate::error::GatewayError;

/// The SSE-KMS headers of an answer: the algorithm, the key's ARN and, when it is
/// on, the bucket key.
pub(super) fn sse_kms_headers(headers: &mut HeaderMap, key_arn: &str, bucket_key_enabled: bool) {
    insert(headers, "x-amz-server-side-encryption", "aws:kms");
    insert(
        headers,
        "x-amz-server-side-encryption-aws-kms-key-id",
        key_arn,
    );
    if bucket_key_enabled {
        insert(
            headers,
            "x-amz-server-side-encryption-bucket-key-enabled",
            "true",
        );
    }
}

/// The headers S3 sends about an object (GET, HEAD, and PUT's encryption ones).
pub(super) fn encryption_headers(headers: &mut HeaderMap, info: &ObjectInfo) {
    match info.sse {
        Sse::Kms => {}
        Sse::S3 => {
            insert(headers, "x-amz-server-side-encryption", "AES256");
            if info.bucket_key_enabled {
                insert(
                    headers,
                    "x-amz-server-side-encryption-bucket-key-enabled",
                    "true",
                );
            }
            return;
        }
        // The request's key MD5 is added by the caller, which has the key.
        Sse::Customer { .. } => {
            insert(
                headers,
                "x-amz-server-side-encryption-customer-algorithm",
                "AES256",
            );
            return;
        }
    }
    sse_kms_headers(headers, &info.kms_key_arn, info.bucket_key_enabled);
    if let Ok(json) = serde_json::to_vec(&info.encryption_context) {
        insert(
            headers,
            "x-amz-server-side-encryption-context",
            &BASE64.encode(json),
        );
    }
}

const SSE_C_ALGORITHM: &str = "x-amz-server-side-encryption-customer-algorithm";
const SSE_C_KEY: &str = "x-amz-server-side-encryption-customer-key";
const SSE_C_KEY_MD5: &str = "x-amz-server-side-encryption-customer-key-md5";
pub(super) const SSE_C_HEADERS: [&str; 3] = [SSE_C_ALGORITHM, SSE_C_KEY, SSE_C_KEY_MD5];

/// Refuses a request that carries any SSE-C header (the object's or a copy
/// source's) over plain HTTP, as S3 does: the key has crossed the network in the
/// clear, and using it would encourage doing so again. Only a connection the server
/// itself terminated with TLS is marked [`SecureTransport`]; no request header can
/// claim it.
pub(super) fn refuse_customer_key_in_clear(
    parts: &http::request::Parts,
) -> Result<(), GatewayError> {
    if parts.extensions.get::<SecureTransport>().is_some() {
        return Ok(());
    }
    let carries_key = parts.headers.keys().any(|name| {
        let name = name.as_str();
        name.starts_with("x-amz-server-side-encryption-customer-")
            || name.starts_with("x-amz-copy-source-server-side-encryption-customer-")
    });
    if carries_key {
        return Err(GatewayError::InvalidRequest(
            "Requests specifying Server Side Encryption with Customer provided keys must be \
             made over a secure connection."
                .into(),
        ));
    }
    Ok(())
}

/// The SSE-C headers of a request: none, or all three, consistent (AES256, a 256-bit
/// key, its MD5). The key is never logged or echoed; only its MD5 is.
pub(super) fn customer_key(
    headers: &HeaderMap,
) -> Result<Option<(CustomerKey, String)>, GatewayError> {
    let algorithm = header(headers, SSE_C_ALGORITHM)?;
    let key = header(headers, SSE_C_KEY)?;
    let md5 = header(headers, SSE_C_KEY_MD5)?;
    let (algorithm, key, md5) = match (algorithm, key, md5) {
        (None, None, None) => return Ok(None),
        (Some(a), Some(k), Some(m)) => (a, k, m),
        (None, _, _) => {
            return Err(GatewayError::InvalidArgument(
                "Requests specifying Server Side Encryption with Customer provided keys must \
                 provide a valid encryption algorithm."
                    .into(),
            ))
        }
        (Some(_), None, _) => {
            return Err(GatewayError::InvalidArgument(
                "Requests specifying Server Side Encryption with Customer provided keys must \
                 provide an appropriate secret key."
                    .into(),
            ))
        }
        (Some(_), Some(_), None) => {
            return Err(GatewayError::InvalidArgument(
                "Requests specifying Server Side Encryption with Customer provided keys must \
                 provide the client calculated MD5 of the secret key."
                    .into(),
            ))
        }
    };
    if algorithm != "AES256" {
        return Err(GatewayError::InvalidArgument(
            "The encryption algorithm specified is not valid: SSE-C takes AES256".into(),
        ));
    }
    let bytes = zeroize::Zeroizing::new(BASE64.decode(key.trim()).map_err(|_| {
        GatewayError::InvalidArgument(
            "The secret key was invalid for the specified algorithm.".into(),
        )
    })?);
    let key = CustomerKey::new(&bytes).map_err(|_| {
        GatewayError::InvalidArgument(
            "The secret key was invalid for the specified algorithm.".into(),
        )
    })?;
    let claimed = BASE64.decode(md5.trim()).ok();
    if claimed.as_deref() != Some(&key.md5()[..]) {
        return Err(GatewayError::InvalidArgument(
            "The calculated MD5 hash of the key did not match the hash that was provided.".into(),
        ));
    }
    let md5 = BASE64.encode(key.md5());
    Ok(Some((key, md5)))
}

/// The response headers of an SSE-C request.
pub(super) fn customer_key_headers(headers: &mut HeaderMap, key_md5: &str) {
    insert(headers, SSE_C_ALGORITHM, "AES256");
    insert(headers, SSE_C_KEY_MD5, key_md5);
}

/// S3 refuses SSE-KMS headers on a read: the object says how it is encrypted.
pub(super) fn refuse_sse_headers_on_read(headers: &HeaderMap) -> Result<(), GatewayError> {
    for name in [
        "x-amz-server-side-encryption",
        "x-amz-server-side-encryption-aws-kms-key-id",
        "x-amz-server-side-encryption-context",
        "x-amz-server-side-encryption-bucket-key-enabled",
    ] {
        if headers.contains_key(name) {
            return Err(GatewayError::InvalidArgument(format!(
                "the {name} header is not allowed on GET or HEAD requests"
            )));
        }
    }
    Ok(())
}

/// `x-amz-server-side-encryption-bucket-key-enabled`.
pub(super) fn bucket_key_header(headers: &HeaderMap) -> Result<Option<bool>, GatewayError> {
    match header(headers, "x-amz-server-side-encryption-bucket-key-enabled")? {
        None => Ok(None),
        Some(text) if text.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(text) if text.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(GatewayError::InvalidArgument(
            "x-amz-server-side-encryption-bucket-key-enabled must be true or false".into(),
        )),
    }
}

/// `x-amz-server-side-encryption-context`: base64 of a JSON object of strings.
pub(super) fn parse_context(text: &str) -> Result<EncryptionContext, GatewayError> {
    let invalid = || {
        GatewayError::InvalidArgument(
            "The header 'x-amz-server-side-encryption-context' shall be Base64-encoded UTF-8 \
             string holding JSON which represents a string-string map"
                .into(),
        )
    };
    let json = BASE64.decode(text.trim()).map_err(|_| invalid())?;
    serde_json::from_slice::<EncryptionContext>(&json).map_err(|_| invalid())
}

impl S3Service {
    /// Creates the AWS managed key `alias/aws/s3` on first use, when the PUT's
    /// encryption may resolve to it (SSE-S3, or SSE-KMS without a key anywhere).
    pub(super) fn ensure_managed_key(
        &self,
        kms: &LocalKms,
        bucket: &str,
        opts: &PutObjectOptions,
    ) -> Result<(), GatewayError> {
        if opts.kms_key_id.is_some() || matches!(opts.encryption, EncryptionRequest::Customer(_)) {
            return Ok(());
        }
        let default_key = matches!(
            self.store.bucket(bucket)?.encryption,
            Some(BucketEncryption {
                algorithm: SseAlgorithm::AwsKms,
                kms_key_id: Some(_),
                ..
            })
        );
        if !default_key || matches!(opts.encryption, EncryptionRequest::SseS3) {
            kms.aws_managed_key(objstore::SSE_S3_KEY_ALIAS)?;
        }
        Ok(())
    }

    /// PutBucketEncryption: the bucket's default SSE-S3 or SSE-KMS (and key).
    pub(super) fn put_bucket_encryption(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let doc = XmlDocument::parse(body, "ServerSideEncryptionConfiguration")?;
        let algorithm = doc
            .get("SSEAlgorithm")?
            .ok_or_else(|| GatewayError::MalformedXml("the rule lacks its SSEAlgorithm".into()))?;
        let algorithm = match algorithm.as_str() {
            "AES256" => SseAlgorithm::Aes256,
            "aws:kms" => SseAlgorithm::AwsKms,
            other => {
                return Err(GatewayError::MalformedXml(format!(
                    "SSEAlgorithm must be AES256 or aws:kms, not '{}'",
                    other.chars().take(32).collect::<String>()
                )))
            }
        };
        let kms_key_id = doc.get("KMSMasterKeyID")?;
        let bucket_key_enabled = match doc.get("BucketKeyEnabled")?.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(GatewayError::MalformedXml(
                    "BucketKeyEnabled must be true or false".into(),
                ))
            }
        };
        self.store.put_bucket_encryption(
            bucket,
            Some(BucketEncryption {
                algorithm,
                kms_key_id,
                bucket_key_enabled,
            }),
        )?;
        Ok(S3Answer::empty(StatusCode::OK))
    }

    /// GetBucketEncryption: SSE-S3 for a bucket never configured, as S3 reports.
    pub(super) fn get_bucket_encryption(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        // Every bucket without a configuration encrypts with SSE-S3, and S3
        // reports that default.
        let encryption = self
            .store
            .bucket(bucket)?
            .encryption
            .unwrap_or(BucketEncryption {
                algorithm: SseAlgorithm::Aes256,
                kms_key_id: None,
                bucket_key_enabled: false,
            });
        let mut w = XmlWriter::new("ServerSideEncryptionConfiguration");
        w.open("Rule")
            .open("ApplyServerSideEncryptionByDefault")
            .leaf("SSEAlgorithm", encryption.algorithm.as_str());
        if let Some(id) = &encryption.kms_key_id {
            w.leaf("KMSMasterKeyID", id);
        }
        w.close("ApplyServerSideEncryptionByDefault")
            .leaf(
                "BucketKeyEnabled",
                if encryption.bucket_key_enabled {
                    "true"
                } else {
                    "false"
                },
            )
            .close("Rule");
        Ok(S3Answer::xml(w.finish("ServerSideEncryptionConfiguration")))
    }

    /// DeleteBucketEncryption: back to the SSE-S3 default.
    pub(super) fn delete_bucket_encryption(
        &self,
        call: &Call<'_>,
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        self.store.put_bucket_encryption(bucket, None)?;
        Ok(S3Answer::empty(StatusCode::NO_CONTENT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Protocol;
    use http::Method;

    #[test]
    fn customer_keys_are_refused_in_the_clear_and_taken_over_tls() {
        let request = |header: &str, tls: bool| {
            let mut request = http::Request::builder()
                .method(Method::PUT)
                .uri("/b/k")
                .header(header, "AES256")
                .body(())
                .unwrap();
            if tls {
                request.extensions_mut().insert(SecureTransport);
            }
            request.into_parts().0
        };
        for header in [
            SSE_C_ALGORITHM,
            SSE_C_KEY_MD5,
            "x-amz-copy-source-server-side-encryption-customer-key",
        ] {
            let err = refuse_customer_key_in_clear(&request(header, false)).unwrap_err();
            let reply = err.reply(Protocol::S3);
            assert_eq!((reply.status, &*reply.code), (400, "InvalidRequest"));
            assert!(err.message().contains("secure connection"), "{err}");
            refuse_customer_key_in_clear(&request(header, true)).unwrap();
        }
        refuse_customer_key_in_clear(&request("x-amz-server-side-encryption", false)).unwrap();
    }
}
