//! Authentication: how a request becomes a [`Caller`]. A request with neither an
//! `Authorization` header nor a presigned query is anonymous; otherwise its SigV4
//! signature (header or presigned query) names the principal, and for a signed header
//! request `x-amz-content-sha256` says how the body is covered ([`BodyAuth`]). A
//! browser form (POST policy) is signed in its fields instead ([`super::post`]); both
//! end in [`signed_kms`]. What the principal may then do is [`super::access`]'s.

use http::HeaderMap;
use objstore::Acl;

use super::routing::{S3Operation, S3Request};
use super::upload::{BodyAuth, ChecksumAlgorithm, ChecksumClaim};
use super::{header, S3Answer, S3Context, S3Service};
use crate::error::GatewayError;
use crate::sigv4::{self, Expectations, PathEncoding, Payload, RequestView, UNSIGNED_PAYLOAD};
use crypto_core::kms::LocalKms;

/// S3's message for an anonymous read of an SSE-KMS object.
const SSE_KMS_NEEDS_SIGV4: &str =
    "Requests specifying Server Side Encryption with AWS KMS managed keys require AWS \
     Signature Version 4.";
const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
const STREAMING_SIGNED_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";

/// Request extension the server sets on requests that came over TLS
/// (`aws:SecureTransport` in bucket policies).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SecureTransport;

/// Who sent a request.
#[derive(Debug)]
pub(crate) enum Caller {
    /// No `Authorization` header and no presigned query.
    Anonymous,
    /// A verified SigV4 signature (header or presigned query).
    Signed {
        /// The signer's principal ARN.
        principal: String,
        /// The principal's key service (its calls are evaluated and audited as it).
        kms: LocalKms,
    },
}

/// The key service of a signed request's principal: its calls are evaluated under
/// the key policy and audited as `principal`, through S3 (`kms:ViaService`).
pub(super) fn signed_kms(ctx: &S3Context<'_>, principal: &str) -> Result<LocalKms, GatewayError> {
    Ok(ctx
        .kms
        .as_principal(principal)?
        .through_service(&format!("s3.{}.amazonaws.com", ctx.region)))
}

/// The signature fields of a browser-upload form (SigV4 over the base64 policy).
#[derive(Clone, Copy, Debug)]
pub(super) struct FormSignature<'f> {
    /// The `policy` field, base64, as signed.
    pub(super) policy: &'f str,
    /// `x-amz-credential`: `AKID/DATE/REGION/s3/aws4_request`.
    pub(super) credential: &'f str,
    /// `x-amz-date`.
    pub(super) amz_date: &'f str,
    /// `x-amz-signature`, hex.
    pub(super) signature: &'f str,
}

/// Authenticates a browser-upload form (S3 POST policy): its signature is over the
/// policy document, not the request. Sets `ctx.verified` as header authentication
/// does, so that a later refusal names the proven caller.
pub(super) fn authenticate_form(
    ctx: &S3Context<'_>,
    form: FormSignature<'_>,
) -> Result<sigv4::Verified, GatewayError> {
    let expect = Expectations {
        service: "s3",
        region: ctx.region,
        now: ctx.now,
        path_encoding: PathEncoding::Single,
    };
    let verified = sigv4::verify_post_policy(
        form.policy,
        form.credential,
        form.amz_date,
        form.signature,
        &expect,
        ctx.secrets,
    )?;
    let _ = ctx.verified.set(verified.clone());
    Ok(verified)
}

/// Authenticates the request: anonymous, or signed (header or presigned). For a
/// signed header request, also says how the body is covered by the signature.
pub(super) fn authenticate(
    ctx: &S3Context<'_>,
    parts: &http::request::Parts,
) -> Result<(Caller, BodyAuth), GatewayError> {
    let query = parts.uri.query().unwrap_or("");
    let presigned = sigv4::query_pairs(query)?
        .iter()
        .any(|(name, _)| name == "X-Amz-Signature" || name == "X-Amz-Algorithm");
    if !parts.headers.contains_key(http::header::AUTHORIZATION) && !presigned {
        return Ok((Caller::Anonymous, BodyAuth::Unsigned));
    }
    let view = RequestView {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query,
        headers: &parts.headers,
    };
    let expect = Expectations {
        service: "s3",
        region: ctx.region,
        now: ctx.now,
        path_encoding: PathEncoding::Single,
    };
    let payload = if presigned {
        Payload::Unsigned
    } else {
        Payload::Declared
    };
    let (verified, chain) = sigv4::verify_chained(&view, payload, &expect, ctx.secrets)?;
    let _ = ctx.verified.set(verified.clone());
    let kms = signed_kms(ctx, &verified.principal)?;
    let caller = Caller::Signed {
        principal: verified.principal,
        kms,
    };
    if presigned {
        return Ok((caller, BodyAuth::Unsigned));
    }
    let declared = header(&parts.headers, "x-amz-content-sha256")?.unwrap_or_default();
    let auth = match declared {
        UNSIGNED_PAYLOAD => BodyAuth::Unsigned,
        STREAMING_SIGNED => BodyAuth::Chunked {
            chain: Some(chain),
            trailer: false,
        },
        STREAMING_SIGNED_TRAILER => BodyAuth::Chunked {
            chain: Some(chain),
            trailer: true,
        },
        STREAMING_UNSIGNED_TRAILER => BodyAuth::Chunked {
            chain: None,
            trailer: true,
        },
        hash => {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hash, &mut bytes).map_err(|_| {
                GatewayError::InvalidArgument(format!(
                    "x-amz-content-sha256 must be the SHA-256 of the body in hex, \
                     {UNSIGNED_PAYLOAD}, {STREAMING_SIGNED}, {STREAMING_SIGNED_TRAILER} or \
                     {STREAMING_UNSIGNED_TRAILER}"
                ))
            })?;
            BodyAuth::Sha256(bytes)
        }
    };
    Ok((caller, auth))
}

/// The checksum the request claims for its body, and the decoded length of an
/// aws-chunked body.
pub(super) fn body_claims(
    headers: &HeaderMap,
    auth: &BodyAuth,
) -> Result<(Option<ChecksumClaim>, Option<u64>), GatewayError> {
    let mut claim = None;
    for (name, value) in headers {
        if let Some(algorithm) = ChecksumAlgorithm::from_header(name.as_str())? {
            if claim.is_some() {
                return Err(GatewayError::InvalidRequest(
                    "Expecting a single x-amz-checksum- header. Multiple checksum Types are \
                     not allowed."
                        .into(),
                ));
            }
            let value = value
                .to_str()
                .map_err(|_| GatewayError::InvalidArgument(format!("{name} is not ASCII text")))?;
            claim = Some(ChecksumClaim {
                algorithm,
                value: Some(value.to_owned()),
            });
        }
    }
    let chunked = matches!(auth, BodyAuth::Chunked { .. });
    if let Some(trailer) = header(headers, "x-amz-trailer")? {
        let trailer = trailer.trim().to_ascii_lowercase();
        let algorithm = ChecksumAlgorithm::from_header(&trailer)?.ok_or_else(|| {
            GatewayError::InvalidRequest(format!(
                "x-amz-trailer names '{trailer}', which is not an x-amz-checksum header"
            ))
        })?;
        if claim.is_some() || !chunked {
            return Err(GatewayError::InvalidRequest(
                "x-amz-trailer needs an aws-chunked body and no x-amz-checksum header".into(),
            ));
        }
        claim = Some(ChecksumClaim {
            algorithm,
            value: None,
        });
    }
    let decoded_len = match header(headers, "x-amz-decoded-content-length")? {
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            GatewayError::InvalidArgument("x-amz-decoded-content-length is not a number".into())
        })?),
        None if chunked => {
            return Err(GatewayError::MissingContentLength(
                "an aws-chunked upload needs x-amz-decoded-content-length".into(),
            ))
        }
        None => None,
    };
    Ok((claim, decoded_len))
}

impl S3Service {
    /// Anonymous requests: only reads of public-read objects get past the ACL, and
    /// S3 then refuses them for SSE-KMS objects.
    pub(super) fn anonymous(&self, request: &S3Request) -> Result<S3Answer, GatewayError> {
        let denied = || GatewayError::AccessDenied("Access Denied".into());
        let read = matches!(
            request.operation,
            S3Operation::GetObject | S3Operation::HeadObject
        );
        if !read {
            return Err(denied());
        }
        let ignored = self
            .store
            .bucket(&request.bucket)
            .ok()
            .and_then(|b| b.public_access_block)
            .is_some_and(|b| b.ignore_public_acls);
        match self.store.head_object(&request.bucket, &request.key) {
            Ok(info) if info.acl == Acl::PublicRead && !ignored => {
                Err(GatewayError::InvalidArgument(SSE_KMS_NEEDS_SIGV4.into()))
            }
            // Neither whether the object exists nor anything else is told.
            _ => Err(denied()),
        }
    }
}
