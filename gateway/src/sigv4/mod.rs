//! AWS Signature Version 4: the canonical request, the string to sign, the signing
//! key, and both ways a request carries its signature — the `Authorization` header
//! and the presigned query (`X-Amz-Signature=...`). The server verifies with
//! [`verify`]; the remote key service client signs with [`sign_headers`]; presigned
//! URLs come from [`presign_query`].
//!
//! Everything that comes from the peer goes through [`parse_authorization`] or
//! [`parse_presigned`] first, which return a typed [`PresentedSignature`] or an AWS
//! error; nothing here panics on peer input.
//!
//! Here: the types, verification and the signing key; `parse.rs`: the presented
//! signature; `canonical.rs`: the canonical request and its encodings; `chunk.rs`:
//! aws-chunked signature chains; `sign.rs`: the client side.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use time::macros::format_description;
use time::{Duration, OffsetDateTime, PrimitiveDateTime};
use zeroize::Zeroizing;

use crate::error::GatewayError;

mod canonical;
mod chunk;
mod parse;
mod sign;

pub use canonical::*;
pub use chunk::*;
pub use parse::*;
pub use sign::*;

/// The signing algorithm SigV4 names (`X-Amz-Algorithm`, `Authorization`).
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The payload hash a presigned URL (and an S3 client that opts out) signs instead of
/// the body's SHA-256.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// AWS refuses requests whose date is further than this from its clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(15);
/// AWS's longest presigned URL lifetime: seven days.
pub const MAX_PRESIGN_EXPIRES: u32 = 604_800;
/// Longest `Authorization` header or signed-header list accepted.
const MAX_AUTH_LEN: usize = 8192;

type HmacSha256 = Hmac<Sha256>;

/// How the canonical URI is derived from the path. Every service encodes each path
/// segment twice, except S3, which encodes once (and keeps `//` and dot segments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathEncoding {
    /// Each path segment encoded twice (every AWS service but S3).
    Double,
    /// Each path segment encoded once, `//` and dot segments kept (S3).
    Single,
}

/// The body's part in the signature.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// The body; its SHA-256 is signed. An `x-amz-content-sha256` header, when
    /// present, must equal it.
    Body(&'a [u8]),
    /// `UNSIGNED-PAYLOAD` (presigned URLs, S3 clients that opt out).
    Unsigned,
    /// Whatever `x-amz-content-sha256` declares (required): a SHA-256 the caller
    /// checks against the body as it streams in, `UNSIGNED-PAYLOAD`, or one of the
    /// `STREAMING-*` modes of S3's aws-chunked uploads.
    Declared,
}

/// A request as it arrived: the method, the raw (still percent-encoded) path and
/// query, and the headers.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The HTTP method (`GET`, ...).
    pub method: &'a str,
    /// The path, as sent (still percent-encoded).
    pub path: &'a str,
    /// The query string, as sent, without `?`.
    pub query: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// `date/region/service/aws4_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialScope {
    /// `YYYYMMDD`.
    pub date: String,
    /// The region (`us-east-1`).
    pub region: String,
    /// The service (`kms`, `s3`).
    pub service: String,
}

impl CredentialScope {
    /// The scope of a signature made at `time` for `region` and `service`.
    pub fn new(time: OffsetDateTime, region: &str, service: &str) -> Self {
        let date = amz_date(time);
        CredentialScope {
            date: date[..8].to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
        }
    }

    fn render(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// Where the signature came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureLocation {
    /// The `Authorization` header.
    Header,
    /// A presigned URL, valid for `expires` seconds after its date.
    Query {
        /// `X-Amz-Expires`, seconds.
        expires: u32,
    },
}

/// A parsed `Authorization` header or presigned query: the claims the client makes,
/// not yet checked against any secret.
#[derive(Clone, Debug)]
pub struct PresentedSignature {
    /// The access key id the client claims.
    pub access_key_id: String,
    /// The credential scope the client claims.
    pub scope: CredentialScope,
    /// Lowercase header names, in the order the client listed them.
    pub signed_headers: Vec<String>,
    /// The signature, decoded from hex.
    pub signature: [u8; 32],
    /// `X-Amz-Date`, as the client wrote it (it is part of the string to sign).
    pub amz_date: String,
    /// `X-Amz-Date`, parsed.
    pub request_time: OffsetDateTime,
    /// Where the signature was.
    pub location: SignatureLocation,
    /// `X-Amz-Security-Token`, when the client sent one.
    pub session_token: Option<String>,
}

/// What the server expects of a request for one of its services.
#[derive(Clone, Copy, Debug)]
pub struct Expectations<'a> {
    /// The service the scope must name.
    pub service: &'a str,
    /// The region the scope must name.
    pub region: &'a str,
    /// The server's clock (skew and expiry are checked against it).
    pub now: OffsetDateTime,
    /// How the service encodes paths in the canonical request.
    pub path_encoding: PathEncoding,
}

/// The secret behind an access key id, as the verifier needs it.
pub trait SecretLookup {
    /// The secret access key and the principal ARN of `access_key_id`, or
    /// UnrecognizedClientException (unknown key) / AccessDenied (inactive key).
    fn lookup(&self, access_key_id: &str) -> Result<(Zeroizing<String>, String), GatewayError>;
}

/// Who signed a request that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The access key that signed.
    pub access_key_id: String,
    /// The principal ARN the key belongs to.
    pub principal: String,
}

/// Verifies a request's SigV4 signature, header or presigned, and returns who signed
/// it. Checks, in AWS's order: the signature is present and well formed, the access
/// key is known, the date is within [`MAX_CLOCK_SKEW`] (and a presigned URL has not
/// expired), the credential scope names this date, region and service, `host` and
/// every `x-amz-*` header are signed, and the signature matches.
pub fn verify(
    request: &RequestView<'_>,
    payload: Payload<'_>,
    expect: &Expectations<'_>,
    secrets: &dyn SecretLookup,
) -> Result<Verified, GatewayError> {
    verify_chained(request, payload, expect, secrets).map(|(verified, _)| verified)
}

/// [`verify`], also returning the [`ChunkChain`] that verifies the chunk signatures
/// of an aws-chunked body (seeded with this request's signature).
pub fn verify_chained(
    request: &RequestView<'_>,
    payload: Payload<'_>,
    expect: &Expectations<'_>,
    secrets: &dyn SecretLookup,
) -> Result<(Verified, ChunkChain), GatewayError> {
    let presented = present(request)?;
    if presented.session_token.is_some() {
        return Err(GatewayError::UnrecognizedClient(
            "The security token included in the request is invalid.".into(),
        ));
    }
    let (secret, principal) = secrets.lookup(&presented.access_key_id)?;
    check_time(&presented, expect.now)?;
    check_scope(&presented, expect)?;
    check_signed_headers(request.headers, &presented)?;
    let payload_hash = match (presented.location, payload) {
        (SignatureLocation::Query { .. }, _) => UNSIGNED_PAYLOAD.to_owned(),
        (SignatureLocation::Header, payload) => header_payload_hash(request.headers, payload)?,
    };
    let canonical = canonical_request(
        request,
        &presented.signed_headers,
        &payload_hash,
        expect.path_encoding,
        matches!(presented.location, SignatureLocation::Query { .. }),
    )?;
    let to_sign = string_to_sign(&presented.amz_date, &presented.scope, &canonical);
    let key = signing_key(secret.as_bytes(), &presented.scope);
    let mut mac = HmacSha256::new_from_slice(key.as_slice())
        .map_err(|_| GatewayError::InvalidSignature("signing key of the wrong size".into()))?;
    mac.update(to_sign.as_bytes());
    mac.verify_slice(&presented.signature)
        .map_err(|_| signature_mismatch())?;
    let chain = ChunkChain {
        key,
        amz_date: presented.amz_date,
        scope: presented.scope,
        previous: presented.signature,
    };
    Ok((
        Verified {
            access_key_id: presented.access_key_id,
            principal,
        },
        chain,
    ))
}

/// Verifies the signature of a browser upload's POST policy (S3 `POST /BUCKET`): the
/// form's `x-amz-signature` is the hex HMAC-SHA256 of the base64 `policy` field under
/// the signing key of `x-amz-credential`'s scope, whose date must be `x-amz-date`'s
/// and whose region and service must be this endpoint's. The policy's own
/// `expiration` bounds how long the form may be used (checked by the caller); a date
/// more than 15 minutes ahead of the clock is refused.
pub fn verify_post_policy(
    policy: &str,
    credential: &str,
    date: &str,
    signature: &str,
    expect: &Expectations<'_>,
    secrets: &dyn SecretLookup,
) -> Result<Verified, GatewayError> {
    let (access_key_id, scope) = parse_credential(credential)?;
    let presented = PresentedSignature {
        access_key_id,
        scope,
        signed_headers: Vec::new(),
        signature: parse_signature(signature)?,
        amz_date: date.to_owned(),
        request_time: parse_amz_date(date)?,
        location: SignatureLocation::Header,
        session_token: None,
    };
    let (secret, principal) = secrets.lookup(&presented.access_key_id)?;
    check_scope(&presented, expect)?;
    let latest = expect.now + MAX_CLOCK_SKEW;
    if presented.request_time > latest {
        return Err(GatewayError::ClockSkew(format!(
            "Signature not yet current: {} is still later than {} ({} + 15 min.)",
            presented.amz_date,
            amz_date(latest),
            amz_date(expect.now)
        )));
    }
    let key = signing_key(secret.as_bytes(), &presented.scope);
    let mut mac = HmacSha256::new_from_slice(key.as_slice())
        .map_err(|_| GatewayError::InvalidSignature("signing key of the wrong size".into()))?;
    mac.update(policy.as_bytes());
    mac.verify_slice(&presented.signature)
        .map_err(|_| signature_mismatch())?;
    Ok(Verified {
        access_key_id: presented.access_key_id,
        principal,
    })
}

/// Signs a POST policy (what a client such as boto3's `generate_presigned_post` does).
pub fn sign_post_policy(signer: &Signer<'_>, policy: &str) -> String {
    let key = signing_key(
        signer.credentials.secret_access_key.as_bytes(),
        &signer.scope,
    );
    hex::encode(hmac(key.as_slice(), policy.as_bytes()).as_slice())
}

fn signature_mismatch() -> GatewayError {
    GatewayError::InvalidSignature(
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method. Consult the service \
         documentation for details."
            .into(),
    )
}

fn check_time(presented: &PresentedSignature, now: OffsetDateTime) -> Result<(), GatewayError> {
    let at = presented.request_time;
    let earliest = now - MAX_CLOCK_SKEW;
    let latest = now + MAX_CLOCK_SKEW;
    match presented.location {
        SignatureLocation::Header if at < earliest => Err(GatewayError::ClockSkew(format!(
            "Signature expired: {} is now earlier than {} ({} - 15 min.)",
            presented.amz_date,
            amz_date(earliest),
            amz_date(now)
        ))),
        SignatureLocation::Header | SignatureLocation::Query { .. } if at > latest => {
            Err(GatewayError::ClockSkew(format!(
                "Signature not yet current: {} is still later than {} ({} + 15 min.)",
                presented.amz_date,
                amz_date(latest),
                amz_date(now)
            )))
        }
        SignatureLocation::Query { expires } if at + Duration::seconds(expires.into()) < now => {
            Err(GatewayError::PresignExpired(format!(
                "Request has expired: signed at {}, valid for {expires} seconds",
                presented.amz_date
            )))
        }
        SignatureLocation::Header | SignatureLocation::Query { .. } => Ok(()),
    }
}

fn check_scope(
    presented: &PresentedSignature,
    expect: &Expectations<'_>,
) -> Result<(), GatewayError> {
    let scope = &presented.scope;
    if !presented.amz_date.starts_with(&scope.date) {
        return Err(GatewayError::InvalidSignature(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
             from HTTP: '{}' != '{}'",
            scope.date,
            presented.amz_date.get(..8).unwrap_or_default()
        )));
    }
    if scope.region != expect.region {
        return Err(GatewayError::InvalidSignature(format!(
            "Credential should be scoped to a valid region, not '{}'; this endpoint serves '{}'.",
            printable(&scope.region),
            expect.region
        )));
    }
    if scope.service != expect.service {
        return Err(GatewayError::InvalidSignature(format!(
            "Credential should be scoped to correct service: '{}', not '{}'.",
            expect.service,
            printable(&scope.service)
        )));
    }
    Ok(())
}

/// `host` must be signed, and so must every `x-amz-*` header the request carries
/// (else a captured request could be replayed with, say, another `X-Amz-Target`).
fn check_signed_headers(
    headers: &HeaderMap,
    presented: &PresentedSignature,
) -> Result<(), GatewayError> {
    let signed = |name: &str| presented.signed_headers.iter().any(|n| n == name);
    if !signed("host") {
        return Err(GatewayError::InvalidSignature(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    for name in headers.keys() {
        let name = name.as_str();
        if name.starts_with("x-amz-") && !signed(name) {
            return Err(GatewayError::InvalidSignature(format!(
                "The header '{name}' is present but not listed in SignedHeaders"
            )));
        }
    }
    for name in &presented.signed_headers {
        if !headers.contains_key(name.as_str()) {
            return Err(GatewayError::InvalidSignature(format!(
                "The header '{name}' is listed in SignedHeaders but absent from the request"
            )));
        }
    }
    Ok(())
}

fn header_payload_hash(headers: &HeaderMap, payload: Payload<'_>) -> Result<String, GatewayError> {
    let claimed = header_text(headers, "x-amz-content-sha256")?;
    match (claimed, payload) {
        (Some(UNSIGNED_PAYLOAD), Payload::Unsigned) => Ok(UNSIGNED_PAYLOAD.to_owned()),
        (_, Payload::Unsigned) => Err(GatewayError::InvalidSignature(
            "this request must declare x-amz-content-sha256: UNSIGNED-PAYLOAD".into(),
        )),
        (Some(claimed), Payload::Declared) => Ok(claimed.to_owned()),
        (None, Payload::Declared) => Err(GatewayError::InvalidRequest(
            "Missing required header for this request: x-amz-content-sha256".into(),
        )),
        (None, Payload::Body(body)) => Ok(hex::encode(Sha256::digest(body))),
        (Some(claimed), Payload::Body(body)) => {
            let actual = hex::encode(Sha256::digest(body));
            if claimed != actual {
                return Err(GatewayError::InvalidSignature(
                    "The provided 'x-amz-content-sha256' header does not match what was computed."
                        .into(),
                ));
            }
            Ok(actual)
        }
    }
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, GatewayError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                GatewayError::IncompleteSignature(format!("header '{name}' is not ASCII text"))
            })
        })
        .transpose()
}

fn string_to_sign(amz_date: &str, scope: &CredentialScope, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        scope.render(),
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// The signing key: HMAC chain over date, region, service and `aws4_request`.
fn signing_key(secret: &[u8], scope: &CredentialScope) -> Zeroizing<[u8; 32]> {
    let mut seed = Zeroizing::new(Vec::with_capacity(secret.len() + 4));
    seed.extend_from_slice(b"AWS4");
    seed.extend_from_slice(secret);
    let k_date = hmac(&seed, scope.date.as_bytes());
    let k_region = hmac(k_date.as_slice(), scope.region.as_bytes());
    let k_service = hmac(k_region.as_slice(), scope.service.as_bytes());
    hmac(k_service.as_slice(), b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// Peer text made safe to echo in an error message (bounded, no control characters).
fn printable(text: &str) -> String {
    text.chars()
        .take(128)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
