//! AWS Signature Version 4: the canonical request, the string to sign, the signing
//! key, and both ways a request carries its signature — the `Authorization` header
//! and the presigned query (`X-Amz-Signature=...`). The server verifies with
//! [`verify`]; the remote key service client signs with [`sign_headers`]; presigned
//! URLs come from [`presign_query`].
//!
//! Everything that comes from the peer goes through [`parse_authorization`] or
//! [`parse_presigned`] first, which return a typed [`PresentedSignature`] or an AWS
//! error; nothing here panics on peer input.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use time::macros::format_description;
use time::{Duration, OffsetDateTime, PrimitiveDateTime};
use zeroize::Zeroizing;

use crate::error::GatewayError;

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

/// The chain of signatures of an aws-chunked body (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`):
/// each chunk's signature covers its data and the previous signature, starting from
/// the request's own, so chunks cannot be dropped, reordered or replaced.
pub struct ChunkChain {
    key: Zeroizing<[u8; 32]>,
    amz_date: String,
    scope: CredentialScope,
    previous: [u8; 32],
}

impl std::fmt::Debug for ChunkChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkChain")
            .field("amz_date", &self.amz_date)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of the empty string, part of every chunk's string to sign.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

impl ChunkChain {
    /// The chain a client continues after signing a request as `signer` with
    /// `seed_signature` (hex, from its `Authorization` header).
    pub fn for_client(
        signer: &Signer<'_>,
        seed_signature: &str,
    ) -> Result<ChunkChain, GatewayError> {
        Ok(ChunkChain {
            key: signing_key(
                signer.credentials.secret_access_key.as_bytes(),
                &signer.scope,
            ),
            amz_date: amz_date(signer.time),
            scope: signer.scope.clone(),
            previous: parse_signature(seed_signature)?,
        })
    }

    fn expected(&self, kind: &str, data_hash: &[u8; 32]) -> [u8; 32] {
        let to_sign = format!(
            "{kind}\n{}\n{}\n{}\n{}{}",
            self.amz_date,
            self.scope.render(),
            hex::encode(self.previous),
            if kind == CHUNK_ALGORITHM {
                format!("{EMPTY_SHA256}\n")
            } else {
                String::new()
            },
            hex::encode(data_hash)
        );
        *hmac(self.key.as_slice(), to_sign.as_bytes())
    }

    fn advance(
        &mut self,
        kind: &str,
        data_hash: &[u8; 32],
        presented: &[u8; 32],
    ) -> Result<(), GatewayError> {
        let expected = self.expected(kind, data_hash);
        let mut mac = HmacSha256::new_from_slice(&expected)
            .map_err(|_| GatewayError::InvalidSignature("signature of the wrong size".into()))?;
        // Compared through an HMAC of both sides, so the time taken says nothing about
        // where they differ.
        mac.update(b"chunk");
        let want = mac.finalize().into_bytes();
        let mut mac = HmacSha256::new_from_slice(presented)
            .map_err(|_| GatewayError::InvalidSignature("signature of the wrong size".into()))?;
        mac.update(b"chunk");
        mac.verify_slice(&want).map_err(|_| signature_mismatch())?;
        self.previous = *presented;
        Ok(())
    }

    /// Checks the signature of the next chunk, whose data hashes to `data_hash`.
    pub fn verify_chunk(
        &mut self,
        data_hash: &[u8; 32],
        signature: &[u8; 32],
    ) -> Result<(), GatewayError> {
        self.advance(CHUNK_ALGORITHM, data_hash, signature)
    }

    /// Checks the signature of the trailing headers (canonical text `name:value\n`...).
    pub fn verify_trailer(
        &mut self,
        trailer_hash: &[u8; 32],
        signature: &[u8; 32],
    ) -> Result<(), GatewayError> {
        self.advance(TRAILER_ALGORITHM, trailer_hash, signature)
    }

    /// Signs the next chunk (clients, tests), hex.
    pub fn sign_chunk(&mut self, data: &[u8]) -> String {
        let signature = self.expected(CHUNK_ALGORITHM, &Sha256::digest(data).into());
        self.previous = signature;
        hex::encode(signature)
    }

    /// Signs the trailing headers' canonical text (clients, tests), hex.
    pub fn sign_trailer(&mut self, canonical_trailer: &[u8]) -> String {
        let signature = self.expected(TRAILER_ALGORITHM, &Sha256::digest(canonical_trailer).into());
        self.previous = signature;
        hex::encode(signature)
    }
}

/// The string-to-sign algorithm names of aws-chunked chunks and trailers.
const CHUNK_ALGORITHM: &str = "AWS4-HMAC-SHA256-PAYLOAD";
const TRAILER_ALGORITHM: &str = "AWS4-HMAC-SHA256-TRAILER";

/// The access key id a request claims (from `Authorization: ... Credential=ID/...`
/// or a presigned `X-Amz-Credential=ID/...`), read leniently and without checking
/// anything, for the trail record of a refused request. `None` when there is none.
pub fn claimed_access_key_id(request: &RequestView<'_>) -> Option<String> {
    let from_header = request
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (_, credential) = value.split_once("Credential=")?;
            credential.split([',', ' ']).next()
        })
        .map(str::to_owned);
    let credential = from_header.or_else(|| {
        query_pairs(request.query)
            .ok()?
            .into_iter()
            .find(|(name, _)| name == "X-Amz-Credential")
            .map(|(_, value)| value)
    })?;
    let id = credential.split('/').next().unwrap_or_default().trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// The signature a request carries, from its `Authorization` header or its query.
pub fn present(request: &RequestView<'_>) -> Result<PresentedSignature, GatewayError> {
    let has_query_signature = query_pairs(request.query)?
        .iter()
        .any(|(name, _)| name == "X-Amz-Signature" || name == "X-Amz-Algorithm");
    match request.headers.get(http::header::AUTHORIZATION) {
        Some(_) if has_query_signature => Err(GatewayError::InvalidSignature(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or \
             the Authorization header should be specified"
                .into(),
        )),
        Some(value) => {
            let value = value.to_str().map_err(|_| {
                GatewayError::IncompleteSignature(
                    "the Authorization header is not ASCII text".into(),
                )
            })?;
            let mut presented = parse_authorization(value)?;
            let date = header_text(request.headers, "x-amz-date")?.ok_or_else(|| {
                GatewayError::IncompleteSignature(
                    "Authorization header requires existence of a 'X-Amz-Date' header \
                     (atrest does not accept the 'Date' header)."
                        .into(),
                )
            })?;
            presented.request_time = parse_amz_date(date)?;
            presented.amz_date = date.to_owned();
            presented.session_token =
                header_text(request.headers, "x-amz-security-token")?.map(str::to_owned);
            Ok(presented)
        }
        None if has_query_signature => parse_presigned(request.query),
        None => Err(GatewayError::MissingAuthenticationToken(
            "Request is missing Authentication Token".into(),
        )),
    }
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=HEX`. The date is filled in by the caller from
/// `X-Amz-Date`.
pub fn parse_authorization(value: &str) -> Result<PresentedSignature, GatewayError> {
    let incomplete = |what: &str| GatewayError::IncompleteSignature(what.to_owned());
    if value.len() > MAX_AUTH_LEN {
        return Err(incomplete("the Authorization header is too long"));
    }
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|rest| rest.starts_with(' '))
        .ok_or_else(|| {
            incomplete("Authorization header must start with 'AWS4-HMAC-SHA256 ' (SigV4 only)")
        })?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        let (name, value) = part.split_once('=').ok_or_else(|| {
            GatewayError::IncompleteSignature(format!(
                "Authorization header requires each component to be name=value, got '{}'",
                printable(part)
            ))
        })?;
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            other => {
                return Err(GatewayError::IncompleteSignature(format!(
                    "Authorization header has an unknown component '{}'",
                    printable(other)
                )))
            }
        };
        if slot.replace(value).is_some() {
            return Err(GatewayError::IncompleteSignature(format!(
                "Authorization header names '{name}' twice"
            )));
        }
    }
    let missing = |name: &str| {
        GatewayError::IncompleteSignature(format!(
            "Authorization header requires '{name}' parameter. Authorization={ALGORITHM} ..."
        ))
    };
    let (access_key_id, scope) =
        parse_credential(credential.ok_or_else(|| missing("Credential"))?)?;
    Ok(PresentedSignature {
        access_key_id,
        scope,
        signed_headers: parse_signed_headers(
            signed_headers.ok_or_else(|| missing("SignedHeaders"))?,
        )?,
        signature: parse_signature(signature.ok_or_else(|| missing("Signature"))?)?,
        amz_date: String::new(),
        request_time: OffsetDateTime::UNIX_EPOCH,
        location: SignatureLocation::Header,
        session_token: None,
    })
}

/// Parses a presigned query: `X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`,
/// `X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Signature`, and the optional
/// `X-Amz-Security-Token`.
pub fn parse_presigned(query: &str) -> Result<PresentedSignature, GatewayError> {
    let pairs = query_pairs(query)?;
    let get = |name: &str| -> Result<&str, GatewayError> {
        let mut found = pairs.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        match (found.next(), found.next()) {
            (Some(value), None) => Ok(value.as_str()),
            (Some(_), Some(_)) => Err(GatewayError::IncompleteSignature(format!(
                "the presigned query names '{name}' twice"
            ))),
            (None, _) => Err(GatewayError::IncompleteSignature(format!(
                "the presigned query lacks '{name}'"
            ))),
        }
    };
    let algorithm = get("X-Amz-Algorithm")?;
    if algorithm != ALGORITHM {
        return Err(GatewayError::IncompleteSignature(format!(
            "X-Amz-Algorithm must be {ALGORITHM}, got '{}'",
            printable(algorithm)
        )));
    }
    let (access_key_id, scope) = parse_credential(get("X-Amz-Credential")?)?;
    let amz_date = get("X-Amz-Date")?;
    let expires_text = get("X-Amz-Expires")?;
    let expires = expires_text
        .parse::<u32>()
        .ok()
        .filter(|e| (1..=MAX_PRESIGN_EXPIRES).contains(e))
        .ok_or_else(|| {
            GatewayError::IncompleteSignature(format!(
                "X-Amz-Expires must be 1 to {MAX_PRESIGN_EXPIRES} seconds, got '{}'",
                printable(expires_text)
            ))
        })?;
    let session_token = pairs
        .iter()
        .find(|(n, _)| n == "X-Amz-Security-Token")
        .map(|(_, token)| token.clone());
    Ok(PresentedSignature {
        access_key_id,
        scope,
        signed_headers: parse_signed_headers(get("X-Amz-SignedHeaders")?)?,
        signature: parse_signature(get("X-Amz-Signature")?)?,
        amz_date: amz_date.to_owned(),
        request_time: parse_amz_date(amz_date)?,
        location: SignatureLocation::Query { expires },
        session_token,
    })
}

fn parse_credential(text: &str) -> Result<(String, CredentialScope), GatewayError> {
    let parts: Vec<&str> = text.split('/').collect();
    let [akid, date, region, service, terminator] = parts.as_slice() else {
        return Err(GatewayError::IncompleteSignature(format!(
            "Credential must have the form ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request, \
             got '{}'",
            printable(text)
        )));
    };
    if akid.is_empty() || akid.len() > 128 || !akid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(GatewayError::UnrecognizedClient(
            "The security token included in the request is invalid.".into(),
        ));
    }
    if *terminator != "aws4_request" {
        return Err(GatewayError::InvalidSignature(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'.",
            printable(terminator)
        )));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GatewayError::InvalidSignature(format!(
            "Credential should be scoped to a valid date (YYYYMMDD), not '{}'.",
            printable(date)
        )));
    }
    Ok((
        (*akid).to_owned(),
        CredentialScope {
            date: (*date).to_owned(),
            region: (*region).to_owned(),
            service: (*service).to_owned(),
        },
    ))
}

fn parse_signed_headers(text: &str) -> Result<Vec<String>, GatewayError> {
    if text.is_empty() || text.len() > MAX_AUTH_LEN {
        return Err(GatewayError::IncompleteSignature(
            "SignedHeaders must list at least 'host'".into(),
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for name in text.split(';') {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            return Err(GatewayError::IncompleteSignature(format!(
                "SignedHeaders holds an invalid header name '{}' (lowercase names separated by ';')",
                printable(name)
            )));
        }
        if names.iter().any(|n| n == name) {
            return Err(GatewayError::IncompleteSignature(format!(
                "SignedHeaders names '{name}' twice"
            )));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

fn parse_signature(text: &str) -> Result<[u8; 32], GatewayError> {
    let mut signature = [0u8; 32];
    hex::decode_to_slice(text, &mut signature).map_err(|_| {
        GatewayError::IncompleteSignature(
            "Signature must be 64 lowercase hexadecimal digits".into(),
        )
    })?;
    Ok(signature)
}

/// Parses `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(text: &str) -> Result<OffsetDateTime, GatewayError> {
    PrimitiveDateTime::parse(
        text,
        format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .map(PrimitiveDateTime::assume_utc)
    .map_err(|_| {
        GatewayError::IncompleteSignature(format!(
            "X-Amz-Date must have the form YYYYMMDDTHHMMSSZ, got '{}'",
            printable(text)
        ))
    })
}

/// Formats `YYYYMMDDTHHMMSSZ`.
pub fn amz_date(time: OffsetDateTime) -> String {
    let time = time.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
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

/// The canonical request of SigV4, built from the request as it arrived.
fn canonical_request(
    request: &RequestView<'_>,
    signed_headers: &[String],
    payload_hash: &str,
    path_encoding: PathEncoding,
    presigned: bool,
) -> Result<String, GatewayError> {
    let mut out = String::with_capacity(512);
    out.push_str(request.method);
    out.push('\n');
    out.push_str(&canonical_uri(request.path, path_encoding)?);
    out.push('\n');
    let mut pairs = query_pairs(request.query)?;
    if presigned {
        pairs.retain(|(name, _)| name != "X-Amz-Signature");
    }
    out.push_str(&canonical_query(&pairs));
    out.push('\n');
    for name in signed_headers {
        let mut values = Vec::new();
        for value in request.headers.get_all(name.as_str()) {
            let value = value.to_str().map_err(|_| {
                GatewayError::IncompleteSignature(format!("header '{name}' is not ASCII text"))
            })?;
            values.push(canonical_header_value(value));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// Trims the value and folds runs of spaces into one, as SigV4 requires.
fn canonical_header_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn canonical_uri(raw_path: &str, encoding: PathEncoding) -> Result<String, GatewayError> {
    if raw_path.is_empty() || raw_path == "/" {
        return Ok("/".to_owned());
    }
    let decoded = String::from_utf8(percent_decode(raw_path)?).map_err(|_| {
        GatewayError::BadRequest("the request path is not UTF-8 once decoded".into())
    })?;
    let once = match encoding {
        PathEncoding::Single => uri_encode(&decoded, false),
        PathEncoding::Double => uri_encode(&remove_dot_segments(&decoded), false),
    };
    Ok(match encoding {
        PathEncoding::Single => once,
        PathEncoding::Double => uri_encode(&once, false),
    })
}

/// RFC 3986 dot-segment removal, keeping a trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = format!("/{}", segments.join("/"));
    if path.ends_with('/') && out.len() > 1 {
        out.push('/');
    }
    out
}

/// The decoded `name=value` pairs of a raw query, in order.
pub fn query_pairs(raw: &str) -> Result<Vec<(String, String)>, GatewayError> {
    let mut pairs = Vec::new();
    for item in raw.split('&').filter(|item| !item.is_empty()) {
        let (name, value) = item.split_once('=').unwrap_or((item, ""));
        let decode = |text: &str| {
            percent_decode(text).and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| {
                    GatewayError::BadRequest("a query parameter is not UTF-8 once decoded".into())
                })
            })
        };
        pairs.push((decode(name)?, decode(value)?));
    }
    Ok(pairs)
}

fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(name, value)| (uri_encode(name, true), uri_encode(value, true)))
        .collect();
    encoded.sort();
    let mut out = String::new();
    for (i, (name, value)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// SigV4's URI encoding: unreserved characters stay, everything else is `%XX`
/// (uppercase); `/` stays only when `encode_slash` is false.
pub fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || (byte == b'/' && !encode_slash);
        if keep {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// What is wrong with a percent-encoded text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PercentEscapeError {
    /// A `%` without two characters after it.
    Incomplete,
    /// A `%` followed by something other than two hex digits.
    NotHex,
}

/// The bytes of a percent-encoded text (`+` stays `+`), each escape decoded once.
pub(crate) fn percent_decode_bytes(text: &str) -> Result<Vec<u8>, PercentEscapeError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex_pair = bytes
                .get(i + 1..i + 3)
                .ok_or(PercentEscapeError::Incomplete)?;
            let mut byte = [0u8; 1];
            hex::decode_to_slice(hex_pair, &mut byte).map_err(|_| PercentEscapeError::NotHex)?;
            out.push(byte[0]);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn percent_decode(text: &str) -> Result<Vec<u8>, GatewayError> {
    percent_decode_bytes(text).map_err(|err| {
        let what = match err {
            PercentEscapeError::Incomplete => "ends in an incomplete percent escape",
            PercentEscapeError::NotHex => "holds an invalid percent escape",
        };
        GatewayError::BadRequest(format!("'{}' {what}", printable(text)))
    })
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

/// The credentials a client signs with.
pub struct SigningCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key (never formatted or logged).
    pub secret_access_key: Zeroizing<String>,
    /// A session token (`X-Amz-Security-Token`), when the credentials are temporary.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for SigningCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Who signs, for which region and service, and when.
#[derive(Debug)]
pub struct Signer<'a> {
    /// Whose keys sign.
    pub credentials: &'a SigningCredentials,
    /// The scope signed for.
    pub scope: CredentialScope,
    /// The signature's time (`X-Amz-Date`).
    pub time: OffsetDateTime,
}

impl<'a> Signer<'a> {
    /// A signer for `region` and `service` at `time`.
    pub fn new(
        credentials: &'a SigningCredentials,
        region: &str,
        service: &str,
        time: OffsetDateTime,
    ) -> Signer<'a> {
        Signer {
            credentials,
            scope: CredentialScope::new(time, region, service),
            time,
        }
    }
}

/// Signs a request in the header style. `headers` must already hold `host` and every
/// header to be signed (lowercase names); this adds `x-amz-date`,
/// `x-amz-security-token` (when there is a session token) and `authorization`.
pub fn sign_headers(
    signer: &Signer<'_>,
    method: &str,
    path: &str,
    query: &str,
    headers: &mut HeaderMap,
    payload: Payload<'_>,
) -> Result<(), GatewayError> {
    let hash = match payload {
        Payload::Body(body) => hex::encode(Sha256::digest(body)),
        Payload::Unsigned => UNSIGNED_PAYLOAD.to_owned(),
        Payload::Declared => header_text(headers, "x-amz-content-sha256")?
            .ok_or_else(|| {
                GatewayError::Config(
                    "Payload::Declared needs an x-amz-content-sha256 header".into(),
                )
            })?
            .to_owned(),
    };
    sign_headers_as(
        signer,
        method,
        path,
        query,
        headers,
        &hash,
        PathEncoding::Double,
    )
    .map(|_| ())
}

/// [`sign_headers`] with the payload hash given (a SHA-256 in hex, `UNSIGNED-PAYLOAD`
/// or a `STREAMING-*` mode) and the service's path encoding (S3: `Single`). Returns
/// the signature (hex), the seed of an aws-chunked body's [`ChunkChain`].
pub fn sign_headers_as(
    signer: &Signer<'_>,
    method: &str,
    path: &str,
    query: &str,
    headers: &mut HeaderMap,
    payload_hash: &str,
    encoding: PathEncoding,
) -> Result<String, GatewayError> {
    let (credentials, scope) = (signer.credentials, &signer.scope);
    let date = amz_date(signer.time);
    insert_header(headers, "x-amz-date", &date)?;
    if let Some(token) = &credentials.session_token {
        insert_header(headers, "x-amz-security-token", token)?;
    }
    let mut signed: Vec<String> = headers.keys().map(|n| n.as_str().to_owned()).collect();
    signed.sort();
    signed.dedup();
    let view = RequestView {
        method,
        path,
        query,
        headers,
    };
    let canonical = canonical_request(&view, &signed, payload_hash, encoding, false)?;
    let signature = sign(&credentials.secret_access_key, scope, &date, &canonical);
    let authorization = format!(
        "{ALGORITHM} Credential={}/{}, SignedHeaders={}, Signature={signature}",
        credentials.access_key_id,
        scope.render(),
        signed.join(";")
    );
    insert_header(headers, "authorization", &authorization)?;
    Ok(signature)
}

/// The query of a presigned URL (everything after `?`), for `method` on `path` with
/// the extra query parameters `query` (already decoded) and the signed `host`.
pub fn presign_query(
    signer: &Signer<'_>,
    method: &str,
    host: &str,
    path: &str,
    query: &[(String, String)],
    expires: u32,
    encoding: PathEncoding,
) -> Result<String, GatewayError> {
    let (credentials, scope) = (signer.credentials, &signer.scope);
    let date = amz_date(signer.time);
    let mut pairs: Vec<(String, String)> = query.to_vec();
    pairs.push(("X-Amz-Algorithm".into(), ALGORITHM.into()));
    pairs.push((
        "X-Amz-Credential".into(),
        format!("{}/{}", credentials.access_key_id, scope.render()),
    ));
    pairs.push(("X-Amz-Date".into(), date.clone()));
    pairs.push(("X-Amz-Expires".into(), expires.to_string()));
    if let Some(token) = &credentials.session_token {
        pairs.push(("X-Amz-Security-Token".into(), token.clone()));
    }
    pairs.push(("X-Amz-SignedHeaders".into(), "host".into()));
    let raw_query = canonical_query(&pairs);
    let mut headers = HeaderMap::new();
    insert_header(&mut headers, "host", host)?;
    let view = RequestView {
        method,
        path,
        query: &raw_query,
        headers: &headers,
    };
    let canonical = canonical_request(
        &view,
        &["host".to_owned()],
        UNSIGNED_PAYLOAD,
        encoding,
        true,
    )?;
    let signature = sign(&credentials.secret_access_key, scope, &date, &canonical);
    Ok(format!("{raw_query}&X-Amz-Signature={signature}"))
}

fn sign(secret: &str, scope: &CredentialScope, amz_date: &str, canonical: &str) -> String {
    let key = signing_key(secret.as_bytes(), scope);
    hex::encode(*hmac(
        key.as_slice(),
        string_to_sign(amz_date, scope, canonical).as_bytes(),
    ))
}

fn insert_header(headers: &mut HeaderMap, name: &str, value: &str) -> Result<(), GatewayError> {
    let name = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| GatewayError::Config(format!("'{}' is not a header name", printable(name))))?;
    let value = http::HeaderValue::from_str(value).map_err(|_| {
        GatewayError::Config(format!("the value of header '{name}' is not header text"))
    })?;
    headers.insert(name, value);
    Ok(())
}

/// Peer text made safe to echo in an error message (bounded, no control characters).
fn printable(text: &str) -> String {
    text.chars()
        .take(128)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_encoding_keeps_only_unreserved() {
        assert_eq!(uri_encode("a-b_c.d~e", true), "a-b_c.d~e");
        assert_eq!(uri_encode("a b/c", true), "a%20b%2Fc");
        assert_eq!(uri_encode("a b/c", false), "a%20b/c");
        assert_eq!(uri_encode("é", true), "%C3%A9");
    }

    #[test]
    fn canonical_uris() {
        assert_eq!(canonical_uri("", PathEncoding::Double).unwrap(), "/");
        assert_eq!(
            canonical_uri("/a%20b/./c/../d", PathEncoding::Double).unwrap(),
            "/a%2520b/d"
        );
        assert_eq!(
            canonical_uri("/bucket/my%20key//x", PathEncoding::Single).unwrap(),
            "/bucket/my%20key//x"
        );
        assert!(canonical_uri("/bad%zz", PathEncoding::Single).is_err());
        assert!(canonical_uri("/bad%2", PathEncoding::Single).is_err());
    }

    #[test]
    fn authorization_header_parses_and_rejects_garbage() {
        let header =
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
                      SignedHeaders=content-type;host;x-amz-date, \
                      Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        let parsed = parse_authorization(header).unwrap();
        assert_eq!(parsed.access_key_id, "AKIDEXAMPLE");
        assert_eq!(parsed.scope.service, "iam");
        assert_eq!(
            parsed.signed_headers,
            ["content-type", "host", "x-amz-date"]
        );
        for bad in [
            "",
            "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=zz",
            "AWS4-HMAC-SHA256 Credential=AKID/2015/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request, SignedHeaders=Host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request, Credential=x, SignedHeaders=host",
            "AWS4-HMAC-SHA256 Nonsense",
        ] {
            assert!(parse_authorization(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn amz_dates_round_trip_and_reject_garbage() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(amz_date(t), "20150830T123600Z");
        for bad in [
            "",
            "20150830",
            "20151330T123600Z",
            "20150830T123600",
            "2015-08-30T12:36:00Z",
        ] {
            assert!(parse_amz_date(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn query_pairs_decode_and_canonicalise() {
        let pairs = query_pairs("b=2&a=x%20y&c").unwrap();
        assert_eq!(canonical_query(&pairs), "a=x%20y&b=2&c=");
        assert!(query_pairs("a=%G0").is_err());
    }

    #[test]
    fn the_claimed_access_key_is_read_from_malformed_requests_too() {
        let claimed = |auth: Option<&str>, query: &str| {
            let mut headers = http::HeaderMap::new();
            if let Some(auth) = auth {
                headers.insert(
                    http::header::AUTHORIZATION,
                    http::HeaderValue::from_str(auth).unwrap(),
                );
            }
            claimed_access_key_id(&RequestView {
                method: "GET",
                path: "/",
                query,
                headers: &headers,
            })
        };
        let header =
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261206/us-east-1/kms/aws4_request, \
                      SignedHeaders=host, Signature=zz";
        assert_eq!(claimed(Some(header), "").as_deref(), Some("AKIDEXAMPLE"));
        assert_eq!(
            claimed(Some("AWS4-HMAC-SHA256 Credential=AKIDONLY"), "").as_deref(),
            Some("AKIDONLY")
        );
        assert_eq!(
            claimed(
                None,
                "X-Amz-Credential=AKIDQ%2F20261206%2Fx%2Fs3%2Faws4_request"
            )
            .as_deref(),
            Some("AKIDQ")
        );
        assert_eq!(claimed(Some("Basic dXNlcjpwYXNz"), ""), None);
        assert_eq!(claimed(Some("AWS4-HMAC-SHA256 Credential=/x"), ""), None);
        assert_eq!(claimed(None, "a=%zz"), None);
    }

    struct OneKey;

    impl SecretLookup for OneKey {
        fn lookup(&self, id: &str) -> Result<(Zeroizing<String>, String), GatewayError> {
            match id {
                "AKIDPOST" => Ok((
                    Zeroizing::new("secret".to_owned()),
                    "arn:aws:iam::000000000000:user/u".to_owned(),
                )),
                _ => Err(GatewayError::UnrecognizedClient("unknown".into())),
            }
        }
    }

    #[test]
    fn post_policies_verify_under_their_credential_scope() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let credentials = SigningCredentials {
            access_key_id: "AKIDPOST".into(),
            secret_access_key: Zeroizing::new("secret".into()),
            session_token: None,
        };
        let signer = Signer::new(&credentials, "us-east-1", "s3", now);
        let signature = sign_post_policy(&signer, "cG9saWN5");
        let credential = format!("AKIDPOST/{}/us-east-1/s3/aws4_request", signer.scope.date);
        let date = amz_date(now);
        let expect = Expectations {
            service: "s3",
            region: "us-east-1",
            now,
            path_encoding: PathEncoding::Single,
        };
        let verify = |policy: &str, credential: &str, date: &str, expect: &Expectations<'_>| {
            verify_post_policy(policy, credential, date, &signature, expect, &OneKey)
        };
        let verified = verify("cG9saWN5", &credential, &date, &expect).unwrap();
        assert_eq!(verified.principal, "arn:aws:iam::000000000000:user/u");
        // Another policy, another region or service, a date outside the scope's day,
        // a date well ahead of the clock, an unknown key: refused.
        let mismatch = verify("cG9saWN6", &credential, &date, &expect).unwrap_err();
        assert_eq!(mismatch.s3_code(), "SignatureDoesNotMatch");
        let elsewhere = credential.replace("us-east-1", "eu-west-1");
        assert!(verify("cG9saWN5", &elsewhere, &date, &expect).is_err());
        let kms = credential.replace("/s3/", "/kms/");
        assert!(verify("cG9saWN5", &kms, &date, &expect).is_err());
        let later = amz_date(now + Duration::days(1));
        assert!(verify("cG9saWN5", &credential, &later, &expect).is_err());
        let earlier = Expectations {
            now: now - Duration::hours(1),
            ..expect
        };
        let skew = verify("cG9saWN5", &credential, &date, &earlier).unwrap_err();
        assert_eq!(skew.s3_code(), "RequestTimeTooSkewed");
        let unknown = credential.replace("AKIDPOST", "AKIDOTHER");
        assert!(verify("cG9saWN5", &unknown, &date, &expect).is_err());
    }
}
