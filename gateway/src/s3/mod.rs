//! The S3 REST API, path-style (`/BUCKET/KEY`), over the object store: routing of a
//! request to its operation ([`S3Request::parse`]), authentication (SigV4 header or
//! presigned query, or anonymous), and the operations themselves, which run on a
//! blocking thread and read the body as it streams in ([`upload`]).
//!
//! Access: a signed request acts as its signer; key-service calls made for it
//! (GenerateDataKey on PUT, Decrypt on GET) are evaluated under the key policy and
//! audited as that principal. Buckets belong to the signer's account: principals of
//! another account are refused. An anonymous request may only read a public-read
//! object, and atrest refuses even that with S3's SSE-KMS message (S3 would serve a
//! public SSE-S3 object; atrest makes no key-service call for anonymous callers).
//!
//! Encryption: SSE-S3 (the default, under `alias/aws/s3`), SSE-KMS and SSE-C; copies
//! ([`copy`]) re-encrypt. Conditional requests, tagging, versioning, stored headers
//! and checksums follow S3 (the table is `docs/S3.md`).

mod copy;
mod lifecycle;
mod multipart;
pub mod policy;
pub mod post;
pub mod upload;
pub mod xml;

use std::collections::BTreeMap;
use std::io::BufRead;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use crypto_core::kms::{EncryptionContext, LocalKms};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use objstore::{
    Acl, BucketEncryption, ByteRange, Condition, CustomerKey, EncryptionRequest,
    ListObjectsRequest, ObjectInfo, ObjectReader, ObjectStore, PutObjectOptions, Sse, SseAlgorithm,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::GatewayError;
use crate::sigv4::{self, Expectations, PathEncoding, Payload, RequestView, UNSIGNED_PAYLOAD};
use upload::{BodyAuth, ChecksumAlgorithm, ChecksumClaim, UploadBody};
use xml::{XmlDocument, XmlWriter};

/// Largest body of an operation other than PutObject (XML configurations).
const MAX_SMALL_BODY: u64 = 1 << 20;
/// S3's message for an anonymous read of an SSE-KMS object.
const SSE_KMS_NEEDS_SIGV4: &str =
    "Requests specifying Server Side Encryption with AWS KMS managed keys require AWS \
     Signature Version 4.";
const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
const STREAMING_SIGNED_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";

/// The S3 operations atrest serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Operation {
    ListBuckets,
    CreateBucket,
    HeadBucket,
    DeleteBucket,
    GetBucketLocation,
    PutBucketEncryption,
    GetBucketEncryption,
    DeleteBucketEncryption,
    ListObjectsV2,
    ListObjects,
    PutObject,
    GetObject,
    HeadObject,
    DeleteObject,
    DeleteObjects,
    PutObjectAcl,
    GetObjectAcl,
    CreateMultipartUpload,
    UploadPart,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListParts,
    ListMultipartUploads,
    PutObjectTagging,
    GetObjectTagging,
    DeleteObjectTagging,
    PutBucketTagging,
    GetBucketTagging,
    DeleteBucketTagging,
    PutBucketVersioning,
    GetBucketVersioning,
    ListObjectVersions,
    PutBucketPolicy,
    GetBucketPolicy,
    DeleteBucketPolicy,
    PutPublicAccessBlock,
    GetPublicAccessBlock,
    DeletePublicAccessBlock,
    PutBucketLifecycleConfiguration,
    GetBucketLifecycleConfiguration,
    DeleteBucketLifecycle,
    /// A browser upload: `POST /BUCKET` with a signed POST policy form ([`post`]).
    PostObject,
}

impl S3Operation {
    /// The IAM action a bucket policy names this operation by (`versioned`: the
    /// request carries `versionId`).
    fn action(self, versioned: bool) -> &'static str {
        use S3Operation as Op;
        match self {
            Op::ListBuckets => "s3:ListAllMyBuckets",
            Op::CreateBucket => "s3:CreateBucket",
            Op::HeadBucket | Op::ListObjectsV2 | Op::ListObjects => "s3:ListBucket",
            Op::DeleteBucket => "s3:DeleteBucket",
            Op::GetBucketLocation => "s3:GetBucketLocation",
            Op::PutBucketEncryption | Op::DeleteBucketEncryption => "s3:PutEncryptionConfiguration",
            Op::GetBucketEncryption => "s3:GetEncryptionConfiguration",
            Op::PutObject
            | Op::CreateMultipartUpload
            | Op::UploadPart
            | Op::CompleteMultipartUpload
            | Op::PostObject => "s3:PutObject",
            Op::GetObject | Op::HeadObject if versioned => "s3:GetObjectVersion",
            Op::GetObject | Op::HeadObject => "s3:GetObject",
            Op::DeleteObject if versioned => "s3:DeleteObjectVersion",
            Op::DeleteObject | Op::DeleteObjects => "s3:DeleteObject",
            Op::PutObjectAcl => "s3:PutObjectAcl",
            Op::GetObjectAcl => "s3:GetObjectAcl",
            Op::AbortMultipartUpload => "s3:AbortMultipartUpload",
            Op::ListParts => "s3:ListMultipartUploadParts",
            Op::ListMultipartUploads => "s3:ListBucketMultipartUploads",
            Op::PutObjectTagging => "s3:PutObjectTagging",
            Op::GetObjectTagging => "s3:GetObjectTagging",
            Op::DeleteObjectTagging => "s3:DeleteObjectTagging",
            Op::PutBucketTagging | Op::DeleteBucketTagging => "s3:PutBucketTagging",
            Op::GetBucketTagging => "s3:GetBucketTagging",
            Op::PutBucketVersioning => "s3:PutBucketVersioning",
            Op::GetBucketVersioning => "s3:GetBucketVersioning",
            Op::ListObjectVersions => "s3:ListBucketVersions",
            Op::PutBucketPolicy => "s3:PutBucketPolicy",
            Op::GetBucketPolicy => "s3:GetBucketPolicy",
            Op::DeleteBucketPolicy => "s3:DeleteBucketPolicy",
            Op::PutPublicAccessBlock | Op::DeletePublicAccessBlock => {
                "s3:PutBucketPublicAccessBlock"
            }
            Op::GetPublicAccessBlock => "s3:GetBucketPublicAccessBlock",
            Op::PutBucketLifecycleConfiguration | Op::DeleteBucketLifecycle => {
                "s3:PutLifecycleConfiguration"
            }
            Op::GetBucketLifecycleConfiguration => "s3:GetLifecycleConfiguration",
        }
    }
}

/// Request extension the server sets on requests that came over TLS
/// (`aws:SecureTransport` in bucket policies).
#[derive(Clone, Copy, Debug)]
pub struct SecureTransport;

/// A routed S3 request: the operation, its bucket and key (decoded), and the query.
#[derive(Clone, Debug)]
pub struct S3Request {
    pub operation: S3Operation,
    pub bucket: String,
    pub key: String,
    pub query: Vec<(String, String)>,
}

/// Query parameters that name a sub-resource (and so another operation) on S3.
const SUBRESOURCES: &[&str] = &[
    "accelerate",
    "acl",
    "analytics",
    "attributes",
    "cors",
    "delete",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "legal-hold",
    "lifecycle",
    "list-type",
    "location",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "partNumber",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "restore",
    "retention",
    "select",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versioning",
    "versions",
    "website",
];

impl S3Request {
    /// Routes by method, path (`/`, `/BUCKET`, `/BUCKET/KEY`) and sub-resource.
    pub fn parse(method: &Method, path: &str, query: &str) -> Result<S3Request, GatewayError> {
        let query = sigv4::query_pairs(query)?;
        let decoded = percent_decode_path(path)?;
        let trimmed = decoded.strip_prefix('/').unwrap_or(&decoded);
        let (bucket, key) = match trimmed.split_once('/') {
            Some((bucket, key)) => (bucket.to_owned(), key.to_owned()),
            None => (trimmed.to_owned(), String::new()),
        };
        let sub: Vec<&str> = query
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| SUBRESOURCES.contains(name))
            .collect();
        let only = |name: &str| sub.len() == 1 && sub[0] == name;
        let part = sub.len() == 2 && sub.contains(&"partNumber") && sub.contains(&"uploadId");
        let unsupported = |what: &str| {
            Err(GatewayError::NotImplemented(format!(
                "A header or query you provided requested a function that is not implemented \
                 ({what} {}{})",
                if sub.is_empty() { "" } else { "?" },
                sub.join("&")
            )))
        };
        use S3Operation as Op;
        let operation = if bucket.is_empty() {
            match *method {
                Method::GET if sub.is_empty() => Op::ListBuckets,
                Method::GET => return unsupported("GET /"),
                _ => {
                    return Err(GatewayError::MethodNotAllowed(
                        "The specified method is not allowed against this resource.".into(),
                    ))
                }
            }
        } else if key.is_empty() {
            match *method {
                Method::PUT if sub.is_empty() => Op::CreateBucket,
                Method::PUT if only("encryption") => Op::PutBucketEncryption,
                Method::GET if only("encryption") => Op::GetBucketEncryption,
                Method::DELETE if only("encryption") => Op::DeleteBucketEncryption,
                Method::GET if only("location") => Op::GetBucketLocation,
                Method::PUT if only("publicAccessBlock") => Op::PutPublicAccessBlock,
                Method::GET if only("publicAccessBlock") => Op::GetPublicAccessBlock,
                Method::DELETE if only("publicAccessBlock") => Op::DeletePublicAccessBlock,
                Method::PUT if only("policy") => Op::PutBucketPolicy,
                Method::GET if only("policy") => Op::GetBucketPolicy,
                Method::DELETE if only("policy") => Op::DeleteBucketPolicy,
                Method::PUT if only("versioning") => Op::PutBucketVersioning,
                Method::GET if only("versioning") => Op::GetBucketVersioning,
                Method::GET if only("versions") => Op::ListObjectVersions,
                Method::PUT if only("tagging") => Op::PutBucketTagging,
                Method::GET if only("tagging") => Op::GetBucketTagging,
                Method::DELETE if only("tagging") => Op::DeleteBucketTagging,
                Method::PUT if only("lifecycle") => Op::PutBucketLifecycleConfiguration,
                Method::GET if only("lifecycle") => Op::GetBucketLifecycleConfiguration,
                Method::DELETE if only("lifecycle") => Op::DeleteBucketLifecycle,
                Method::GET if only("list-type") => {
                    if query.iter().any(|(n, v)| n == "list-type" && v != "2") {
                        return Err(GatewayError::InvalidArgument(
                            "list-type must be 2 (ListObjectsV2)".into(),
                        ));
                    }
                    Op::ListObjectsV2
                }
                Method::GET if sub.is_empty() => Op::ListObjects,
                Method::HEAD if sub.is_empty() => Op::HeadBucket,
                Method::POST if only("delete") => Op::DeleteObjects,
                Method::POST if sub.is_empty() => Op::PostObject,
                Method::GET if only("uploads") => Op::ListMultipartUploads,
                Method::DELETE if sub.is_empty() => Op::DeleteBucket,
                _ => return unsupported(method.as_str()),
            }
        } else {
            match *method {
                Method::PUT if sub.is_empty() => Op::PutObject,
                Method::PUT if only("acl") => Op::PutObjectAcl,
                Method::PUT if only("tagging") => Op::PutObjectTagging,
                Method::GET if only("tagging") => Op::GetObjectTagging,
                Method::DELETE if only("tagging") => Op::DeleteObjectTagging,
                Method::GET if only("acl") => Op::GetObjectAcl,
                Method::GET if sub.is_empty() => Op::GetObject,
                Method::HEAD if sub.is_empty() => Op::HeadObject,
                Method::DELETE if sub.is_empty() => Op::DeleteObject,
                Method::POST if only("uploads") => Op::CreateMultipartUpload,
                Method::PUT if part => Op::UploadPart,
                Method::POST if only("uploadId") => Op::CompleteMultipartUpload,
                Method::DELETE if only("uploadId") => Op::AbortMultipartUpload,
                Method::GET if only("uploadId") => Op::ListParts,
                _ => return unsupported(method.as_str()),
            }
        };
        Ok(S3Request {
            operation,
            bucket,
            key,
            query,
        })
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn percent_decode_path(path: &str) -> Result<String, GatewayError> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let pair = bytes.get(i + 1..i + 3).ok_or_else(|| {
                GatewayError::InvalidRequest("the path ends in an incomplete percent escape".into())
            })?;
            let mut byte = [0u8; 1];
            hex::decode_to_slice(pair, &mut byte).map_err(|_| {
                GatewayError::InvalidRequest("the path holds an invalid percent escape".into())
            })?;
            out.push(byte[0]);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| GatewayError::InvalidRequest("the path is not UTF-8 once decoded".into()))
}

/// Who sent a request.
#[derive(Debug)]
pub enum Caller {
    Anonymous,
    Signed {
        principal: String,
        /// The principal's key service (its calls are evaluated and audited as it).
        kms: LocalKms,
    },
}

/// An S3 answer before it becomes an HTTP response.
#[derive(Debug)]
pub struct S3Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: S3Body,
}

#[derive(Debug)]
pub enum S3Body {
    Empty,
    Xml(Vec<u8>),
    /// An object's (or a range's) plaintext, streamed.
    Object(Box<ObjectReader>),
}

impl S3Answer {
    fn empty(status: StatusCode) -> S3Answer {
        S3Answer {
            status,
            headers: HeaderMap::new(),
            body: S3Body::Empty,
        }
    }

    fn xml(document: Vec<u8>) -> S3Answer {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        S3Answer {
            status: StatusCode::OK,
            headers,
            body: S3Body::Xml(document),
        }
    }
}

/// S3's XML error body.
pub fn error_document(err: &GatewayError, resource: &str, request_id: &str) -> Vec<u8> {
    let mut w = XmlWriter::bare("Error");
    w.leaf("Code", &err.s3_code())
        .leaf("Message", &err.message())
        .leaf("Resource", resource)
        .leaf("RequestId", request_id);
    w.finish("Error")
}

/// The S3 side of the gateway: the object store and what authentication needs.
#[derive(Debug)]
pub struct S3Service {
    store: ObjectStore,
}

/// What the server hands an S3 operation.
pub struct S3Context<'a> {
    pub kms: &'a LocalKms,
    pub secrets: &'a dyn sigv4::SecretLookup,
    pub region: &'a str,
    pub now: OffsetDateTime,
    /// Set by authentication once the request's signature verifies, so that the
    /// server can name the proven caller in the trail record of a later refusal.
    pub verified: &'a std::sync::OnceLock<sigv4::Verified>,
}

impl std::fmt::Debug for S3Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Context")
            .field("region", &self.region)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, GatewayError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                GatewayError::InvalidArgument(format!("the header {name} is not ASCII text"))
            })
        })
        .transpose()
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    // Values come from checked metadata; one that is not header text is left out
    // rather than failing the whole answer.
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// `Wed, 12 Oct 2009 17:50:00 GMT`.
pub fn http_date(time: OffsetDateTime) -> String {
    let t = time.to_offset(time::UtcOffset::UTC);
    let weekday = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        [usize::from(t.weekday().number_days_from_monday())];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][usize::from(u8::from(t.month()) - 1)];
    format!(
        "{weekday}, {:02} {month} {:04} {:02}:{:02}:{:02} GMT",
        t.day(),
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `2009-10-12T17:50:30.000Z`.
fn iso_date(time: OffsetDateTime) -> String {
    let t = time.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The account of a principal ARN (`arn:aws:iam::ACCOUNT:...`).
fn account_of(arn: &str) -> &str {
    arn.split(':').nth(4).unwrap_or_default()
}

/// S3's canonical user id of an account: 64 hex digits.
fn canonical_id(account: &str) -> String {
    hex::encode(Sha256::digest(
        format!("atrest-s3-owner:{account}").as_bytes(),
    ))
}

fn owner_xml(w: &mut XmlWriter, owner_arn: &str) {
    let account = account_of(owner_arn);
    w.open("Owner")
        .leaf("ID", &canonical_id(account))
        .leaf("DisplayName", account)
        .close("Owner");
}

/// The headers S3 sends about an object (GET, HEAD, and PUT's encryption ones).
fn encryption_headers(headers: &mut HeaderMap, info: &ObjectInfo) {
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
    insert(headers, "x-amz-server-side-encryption", "aws:kms");
    insert(
        headers,
        "x-amz-server-side-encryption-aws-kms-key-id",
        &info.kms_key_arn,
    );
    if info.bucket_key_enabled {
        insert(
            headers,
            "x-amz-server-side-encryption-bucket-key-enabled",
            "true",
        );
    }
    if let Ok(json) = serde_json::to_vec(&info.encryption_context) {
        insert(
            headers,
            "x-amz-server-side-encryption-context",
            &BASE64.encode(json),
        );
    }
}

fn object_headers(headers: &mut HeaderMap, info: &ObjectInfo) {
    insert(headers, "etag", &format!("\"{}\"", info.etag));
    if let Some(id) = &info.version_id {
        insert(headers, "x-amz-version-id", id);
    }
    insert(headers, "last-modified", &http_date(info.last_modified));
    insert(headers, "content-type", &info.content_type);
    insert(headers, "accept-ranges", "bytes");
    for (name, value) in &info.system_metadata {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    encryption_headers(headers, info);
    for (name, value) in &info.user_metadata {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(format!("x-amz-meta-{name}").as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
}

/// When the lifecycle sweep runs and how long its day is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifecycleSchedule {
    /// Time between two sweeps (the first runs when the server starts).
    pub interval: std::time::Duration,
    /// The length of a lifecycle day: 24 h, shorter only in tests.
    pub day: std::time::Duration,
}

impl LifecycleSchedule {
    /// A real day.
    pub const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);
}

impl S3Service {
    /// Runs one lifecycle sweep over every bucket as of `now` and logs what it did:
    /// each expired object and aborted upload at INFO, each bucket it could not
    /// finish at WARN (the others are still swept).
    pub fn apply_lifecycle(&self, now: time::OffsetDateTime, day: std::time::Duration) {
        let sweep = self.store.apply_lifecycle(now, day);
        for (bucket, key) in &sweep.expired {
            tracing::info!(bucket, key, "lifecycle: expired the object");
        }
        for (bucket, key, upload_id) in &sweep.aborted {
            tracing::info!(
                bucket,
                key,
                upload_id,
                "lifecycle: aborted the multipart upload"
            );
        }
        for (bucket, err) in &sweep.failed {
            tracing::warn!(bucket, "lifecycle: the sweep of the bucket stopped: {err}");
        }
    }

    pub fn new(store: ObjectStore) -> S3Service {
        S3Service { store }
    }

    /// Authenticates the request: anonymous, or signed (header or presigned). For a
    /// signed header request, also says how the body is covered by the signature.
    fn authenticate(
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
        let kms = ctx
            .kms
            .as_principal(&verified.principal)?
            .through_service(&format!("s3.{}.amazonaws.com", ctx.region));
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
    fn body_claims(
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
                let value = value.to_str().map_err(|_| {
                    GatewayError::InvalidArgument(format!("{name} is not ASCII text"))
                })?;
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

    /// Runs one request. `body` streams the request body from the connection.
    pub fn handle(
        &self,
        ctx: &S3Context<'_>,
        parts: &http::request::Parts,
        body: &mut dyn BufRead,
    ) -> Result<S3Answer, GatewayError> {
        let request = S3Request::parse(
            &parts.method,
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
        )?;
        if request.operation == S3Operation::PostObject {
            // The form carries its own signature (POST policy), not the headers.
            return self.post_object(ctx, parts, &request.bucket, body);
        }
        refuse_customer_key_in_clear(parts)?;
        let (caller, auth) = Self::authenticate(ctx, parts)?;
        let (checksum, decoded_len) = Self::body_claims(&parts.headers, &auth)?;
        let mut body = UploadBody::new(body, auth, decoded_len, checksum);
        let (principal, kms) = match caller {
            Caller::Anonymous => return self.anonymous(&request),
            Caller::Signed { principal, kms } => (principal, kms),
        };
        use S3Operation as Op;
        if request.operation != Op::ListBuckets && request.operation != Op::CreateBucket {
            let bucket = self.store.bucket(&request.bucket)?;
            // DeleteObjects is checked key by key.
            if request.operation != Op::DeleteObjects {
                let action = request
                    .operation
                    .action(request.param("versionId").is_some());
                let resource = match request.key.as_str() {
                    "" => objstore::bucket_arn(&bucket.name),
                    key => objstore::object_arn(&bucket.name, key),
                };
                authorize(
                    &bucket,
                    &principal,
                    action,
                    &resource,
                    &request_facts(parts),
                )?;
            }
        }
        refuse_grant_headers(&parts.headers)?;
        let copy = parts.headers.contains_key("x-amz-copy-source");
        // `?versionId=` addresses one version of the object on reads, deletes and
        // the object's sub-resources.
        let versioned = match (request.param("versionId"), request.operation) {
            (
                Some(id),
                Op::GetObject
                | Op::HeadObject
                | Op::DeleteObject
                | Op::GetObjectTagging
                | Op::PutObjectTagging
                | Op::DeleteObjectTagging
                | Op::GetObjectAcl
                | Op::PutObjectAcl,
            ) => Some(S3Service::new(self.store.at_version(id))),
            (Some(_), _) => {
                return Err(GatewayError::InvalidArgument(
                    "versionId is not taken by this operation".into(),
                ))
            }
            (None, _) => None,
        };
        let this = versioned.as_ref().unwrap_or(self);
        this.dispatch(ctx, &kms, &principal, &request, parts, &mut body, copy)
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        ctx: &S3Context<'_>,
        kms: &LocalKms,
        principal: &str,
        request: &S3Request,
        parts: &http::request::Parts,
        body: &mut UploadBody<&mut dyn BufRead>,
        copy: bool,
    ) -> Result<S3Answer, GatewayError> {
        use S3Operation as Op;
        match request.operation {
            Op::PutObject if copy => {
                read_small(&mut *body)?;
                self.copy_object(kms, principal, request, parts)
            }
            Op::UploadPart if copy => {
                read_small(&mut *body)?;
                let (part_number, upload_id) = multipart::part_target(request)?;
                self.upload_part_copy(kms, principal, request, parts, part_number, upload_id)
            }
            Op::PutObject => self.put_object(kms, request, parts, body),
            Op::GetObject => self.get_object(kms, request, parts, true),
            Op::HeadObject => self.get_object(kms, request, parts, false),
            Op::UploadPart => self.upload_part(kms, request, parts, body),
            Op::CreateMultipartUpload
            | Op::CompleteMultipartUpload
            | Op::AbortMultipartUpload
            | Op::ListParts
            | Op::ListMultipartUploads => {
                let small = read_small(&mut *body)?;
                self.multipart_operation(kms, request, parts, principal, &small)
            }
            other => {
                let small = read_small(&mut *body)?;
                self.small_operation(other, request, parts, principal, ctx.region, &small)
            }
        }
    }

    /// Anonymous requests: only reads of public-read objects get past the ACL, and
    /// S3 then refuses them for SSE-KMS objects.
    fn anonymous(&self, request: &S3Request) -> Result<S3Answer, GatewayError> {
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

    /// BlockPublicAcls: a request that would make something public-read is refused.
    fn refuse_public_acl(&self, bucket: &str, acl: Acl) -> Result<(), GatewayError> {
        let blocked = self
            .store
            .bucket(bucket)?
            .public_access_block
            .is_some_and(|b| b.block_public_acls);
        if blocked && acl == Acl::PublicRead {
            return Err(GatewayError::AccessDenied(
                "Access Denied: the bucket's BlockPublicAcls refuses a public-read ACL".into(),
            ));
        }
        Ok(())
    }

    /// Creates the AWS managed key `alias/aws/s3` on first use, when the PUT's
    /// encryption may resolve to it (SSE-S3, or SSE-KMS without a key anywhere).
    fn ensure_managed_key(
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

    fn put_object(
        &self,
        kms: &LocalKms,
        request: &S3Request,
        parts: &http::request::Parts,
        body: &mut UploadBody<&mut dyn BufRead>,
    ) -> Result<S3Answer, GatewayError> {
        let headers = &parts.headers;
        let opts = put_options(headers)?;
        self.refuse_public_acl(&request.bucket, opts.acl)?;
        body.report_checksum_to(opts.checksum.clone());
        let bucket_key = bucket_key_header(headers)?;
        self.ensure_managed_key(kms, &request.bucket, &opts)?;
        let info = self
            .store
            .put_object_with_bucket_key(kms, &request.bucket, &request.key, body, &opts, bucket_key)
            .map_err(|err| match err {
                objstore::Error::Body(io) => UploadBody::<&mut dyn BufRead>::error_of(io),
                other => GatewayError::Object(other),
            })?;
        let mut answer = S3Answer::empty(StatusCode::OK);
        insert(&mut answer.headers, "etag", &format!("\"{}\"", info.etag));
        if let Some(id) = &info.version_id {
            insert(&mut answer.headers, "x-amz-version-id", id);
        }
        encryption_headers(&mut answer.headers, &info);
        if let Some((_, md5)) = customer_key(headers)? {
            customer_key_headers(&mut answer.headers, &md5);
        }
        if let Some((algorithm, value)) = body.verified_checksum() {
            insert(&mut answer.headers, algorithm.header(), value);
        }
        Ok(answer)
    }

    fn get_object(
        &self,
        kms: &LocalKms,
        request: &S3Request,
        parts: &http::request::Parts,
        with_body: bool,
    ) -> Result<S3Answer, GatewayError> {
        let range = header(&parts.headers, "range")?.and_then(ByteRange::parse);
        refuse_sse_headers_on_read(&parts.headers)?;
        let customer = customer_key(&parts.headers)?;
        let (customer, customer_md5) = match &customer {
            Some((key, md5)) => (Some(key), Some(md5.as_str())),
            None => (None, None),
        };
        let info = self
            .store
            .head_object_with_key(&request.bucket, &request.key, customer)?;
        if let Some(not_modified) = read_conditions(&parts.headers, &info)? {
            return Ok(not_modified);
        }
        let tag_count = self
            .store
            .object_tagging(&request.bucket, &request.key)?
            .len();
        let checksum = match header(&parts.headers, "x-amz-checksum-mode")? {
            Some(mode) if mode.eq_ignore_ascii_case("ENABLED") && range.is_none() => {
                self.store.object_checksum(&request.bucket, &request.key)?
            }
            _ => None,
        };
        if !with_body {
            let mut answer = S3Answer::empty(StatusCode::OK);
            object_headers(&mut answer.headers, &info);
            tagging_count(&mut answer.headers, tag_count);
            checksum_headers(&mut answer.headers, checksum.as_ref());
            if let Some(md5) = customer_md5 {
                customer_key_headers(&mut answer.headers, md5);
            }
            let length = match range {
                Some(range) => {
                    let (first, last) = range.resolve(info.size)?;
                    answer.status = StatusCode::PARTIAL_CONTENT;
                    insert(
                        &mut answer.headers,
                        "content-range",
                        &format!("bytes {first}-{last}/{}", info.size),
                    );
                    last - first + 1
                }
                None => info.size,
            };
            insert(&mut answer.headers, "content-length", &length.to_string());
            response_overrides(&mut answer.headers, request);
            return Ok(answer);
        }
        let download =
            self.store
                .get_object_with_key(kms, &request.bucket, &request.key, range, customer)?;
        let mut answer = S3Answer::empty(StatusCode::OK);
        object_headers(&mut answer.headers, &download.info);
        tagging_count(&mut answer.headers, tag_count);
        checksum_headers(&mut answer.headers, checksum.as_ref());
        if let Some(md5) = customer_md5 {
            customer_key_headers(&mut answer.headers, md5);
        }
        if let Some((first, last)) = download.range {
            answer.status = StatusCode::PARTIAL_CONTENT;
            insert(
                &mut answer.headers,
                "content-range",
                &format!("bytes {first}-{last}/{}", download.info.size),
            );
        }
        response_overrides(&mut answer.headers, request);
        answer.body = S3Body::Object(Box::new(download.body));
        Ok(answer)
    }

    fn small_operation(
        &self,
        operation: S3Operation,
        request: &S3Request,
        parts: &http::request::Parts,
        principal: &str,
        region: &str,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        use S3Operation as Op;
        let bucket = request.bucket.as_str();
        match operation {
            Op::ListBuckets => {
                let mut w = XmlWriter::new("ListAllMyBucketsResult");
                owner_xml(&mut w, principal);
                w.open("Buckets");
                for info in self.store.list_buckets()? {
                    if account_of(&info.owner) != account_of(principal) {
                        continue;
                    }
                    w.open("Bucket")
                        .leaf("Name", &info.name)
                        .leaf("CreationDate", &iso_date(info.creation_date))
                        .close("Bucket");
                }
                w.close("Buckets");
                Ok(S3Answer::xml(w.finish("ListAllMyBucketsResult")))
            }
            Op::CreateBucket => {
                if !body.is_empty() {
                    let doc = XmlDocument::parse(body, "CreateBucketConfiguration")?;
                    if let Some(location) = doc.get("LocationConstraint")? {
                        if !location.is_empty() && location != region {
                            return Err(GatewayError::InvalidLocationConstraint(format!(
                                "The {location} location constraint is incompatible for the \
                                 region specific endpoint this request was sent to ({region})."
                            )));
                        }
                    }
                }
                let acl = header(&parts.headers, "x-amz-acl")?
                    .map(Acl::parse)
                    .transpose()?;
                // S3 buckets belong to the account, not to the IAM identity that made
                // them.
                let owner = format!("arn:aws:iam::{}:root", account_of(principal));
                self.store.create_bucket(bucket, &owner)?;
                if let Some(acl) = acl {
                    self.store.put_bucket_acl(bucket, acl)?;
                }
                let mut answer = S3Answer::empty(StatusCode::OK);
                insert(&mut answer.headers, "location", &format!("/{bucket}"));
                Ok(answer)
            }
            Op::HeadBucket => {
                let mut answer = S3Answer::empty(StatusCode::OK);
                insert(&mut answer.headers, "x-amz-bucket-region", region);
                Ok(answer)
            }
            Op::DeleteBucket => {
                self.store.delete_bucket(bucket)?;
                Ok(S3Answer::empty(StatusCode::NO_CONTENT))
            }
            Op::GetBucketLocation => {
                // us-east-1 is S3's empty location constraint.
                let mut w = XmlWriter::new("LocationConstraint");
                w.text(if region == "us-east-1" { "" } else { region });
                Ok(S3Answer::xml(w.finish("LocationConstraint")))
            }
            Op::PutBucketEncryption => {
                let doc = XmlDocument::parse(body, "ServerSideEncryptionConfiguration")?;
                let algorithm = doc.get("SSEAlgorithm")?.ok_or_else(|| {
                    GatewayError::MalformedXml("the rule lacks its SSEAlgorithm".into())
                })?;
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
            Op::GetBucketEncryption => {
                // Every bucket without a configuration encrypts with SSE-S3, and S3
                // reports that default.
                let encryption =
                    self.store
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
            Op::DeleteBucketEncryption => {
                self.store.put_bucket_encryption(bucket, None)?;
                Ok(S3Answer::empty(StatusCode::NO_CONTENT))
            }
            Op::ListObjectsV2 => self.list_objects_v2(request),
            Op::ListObjects => self.list_objects_v1(request),
            Op::PutObjectAcl => {
                let acl = match header(&parts.headers, "x-amz-acl")? {
                    Some(canned) => Acl::parse(canned)?,
                    None if !body.is_empty() => acl_from_policy(body)?,
                    None => {
                        return Err(GatewayError::InvalidRequest(
                            "PutObjectAcl needs an x-amz-acl header or an AccessControlPolicy \
                             body"
                                .into(),
                        ))
                    }
                };
                self.refuse_public_acl(bucket, acl)?;
                self.store.put_object_acl(bucket, &request.key, acl)?;
                Ok(S3Answer::empty(StatusCode::OK))
            }
            Op::DeleteObject => {
                for name in ["x-amz-if-match-last-modified-time", "x-amz-if-match-size"] {
                    if parts.headers.contains_key(name) {
                        return Err(GatewayError::NotImplemented(format!(
                            "the conditional delete header {name} is not implemented \
                             (If-Match is)"
                        )));
                    }
                }
                let if_match = header(&parts.headers, "if-match")?;
                let deleted = self.store.delete_object_version(
                    bucket,
                    &request.key,
                    if_match,
                    request.param("versionId"),
                )?;
                let mut answer = S3Answer::empty(StatusCode::NO_CONTENT);
                if let Some(id) = &deleted.outcome.version_id {
                    insert(&mut answer.headers, "x-amz-version-id", id);
                }
                if deleted.outcome.delete_marker {
                    insert(&mut answer.headers, "x-amz-delete-marker", "true");
                }
                Ok(answer)
            }
            Op::DeleteObjects => self.delete_objects(bucket, principal, parts, body),
            Op::PutBucketPolicy => {
                let text = std::str::from_utf8(body).map_err(|_| {
                    GatewayError::Object(objstore::Error::MalformedPolicy(
                        "the policy is not UTF-8".into(),
                    ))
                })?;
                let parsed = policy::BucketPolicy::parse(text, bucket)?;
                let block = self.store.bucket(bucket)?.public_access_block;
                if parsed.is_public() && block.is_some_and(|b| b.block_public_policy) {
                    return Err(GatewayError::AccessDenied(
                        "Access Denied: the bucket's BlockPublicPolicy refuses a policy that \
                         allows anyone"
                            .into(),
                    ));
                }
                self.store
                    .put_bucket_policy(bucket, Some(text.to_owned()))?;
                Ok(S3Answer::empty(StatusCode::NO_CONTENT))
            }
            Op::GetBucketPolicy => {
                let text = self.store.bucket_policy(bucket)?;
                let mut answer = S3Answer::xml(text.into_bytes());
                insert(&mut answer.headers, "content-type", "application/json");
                Ok(answer)
            }
            Op::DeleteBucketPolicy => {
                self.store.put_bucket_policy(bucket, None)?;
                Ok(S3Answer::empty(StatusCode::NO_CONTENT))
            }
            Op::PutPublicAccessBlock => {
                let doc = XmlDocument::parse(body, "PublicAccessBlockConfiguration")?;
                let flag = |name: &str| -> Result<bool, GatewayError> {
                    match doc.get(name)?.as_deref() {
                        None | Some("false") => Ok(false),
                        Some("true") => Ok(true),
                        Some(_) => Err(GatewayError::MalformedXml(format!(
                            "{name} must be true or false"
                        ))),
                    }
                };
                let block = objstore::PublicAccessBlock {
                    block_public_acls: flag("BlockPublicAcls")?,
                    ignore_public_acls: flag("IgnorePublicAcls")?,
                    block_public_policy: flag("BlockPublicPolicy")?,
                    restrict_public_buckets: flag("RestrictPublicBuckets")?,
                };
                self.store.put_public_access_block(bucket, Some(block))?;
                Ok(S3Answer::empty(StatusCode::OK))
            }
            Op::GetPublicAccessBlock => {
                let block = self
                    .store
                    .bucket(bucket)?
                    .public_access_block
                    .ok_or_else(|| {
                        GatewayError::Object(objstore::Error::NoSuchPublicAccessBlock {
                            bucket: bucket.to_owned(),
                        })
                    })?;
                let text = |b: bool| if b { "true" } else { "false" };
                let mut w = XmlWriter::new("PublicAccessBlockConfiguration");
                w.leaf("BlockPublicAcls", text(block.block_public_acls))
                    .leaf("IgnorePublicAcls", text(block.ignore_public_acls))
                    .leaf("BlockPublicPolicy", text(block.block_public_policy))
                    .leaf("RestrictPublicBuckets", text(block.restrict_public_buckets));
                Ok(S3Answer::xml(w.finish("PublicAccessBlockConfiguration")))
            }
            Op::DeletePublicAccessBlock => {
                self.store.put_public_access_block(bucket, None)?;
                Ok(S3Answer::empty(StatusCode::NO_CONTENT))
            }
            Op::PutObjectTagging => {
                let tags = tags_from_xml(body)?;
                self.store.put_object_tagging(bucket, &request.key, &tags)?;
                Ok(S3Answer::empty(StatusCode::OK))
            }
            Op::GetObjectTagging => {
                let tags = self.store.object_tagging(bucket, &request.key)?;
                Ok(S3Answer::xml(tagging_document(&tags)))
            }
            Op::DeleteObjectTagging => {
                self.store
                    .put_object_tagging(bucket, &request.key, &objstore::TagSet::new())?;
                Ok(S3Answer::empty(StatusCode::NO_CONTENT))
            }
            Op::PutBucketVersioning => {
                let doc = XmlDocument::parse(body, "VersioningConfiguration")?;
                if doc.get("MfaDelete")?.as_deref() == Some("Enabled") {
                    return Err(GatewayError::NotImplemented(
                        "MFA delete is not implemented".into(),
                    ));
                }
                let status = match doc.get("Status")?.as_deref() {
                    Some("Enabled") => objstore::Versioning::Enabled,
                    Some("Suspended") => objstore::Versioning::Suspended,
                    _ => {
                        return Err(GatewayError::MalformedXml(
                            "VersioningConfiguration's Status must be Enabled or Suspended".into(),
                        ))
                    }
                };
                self.store.put_bucket_versioning(bucket, status)?;
                Ok(S3Answer::empty(StatusCode::OK))
            }
            Op::GetBucketVersioning => {
                let mut w = XmlWriter::new("VersioningConfiguration");
                if let Some(status) = self.store.bucket_versioning(bucket)? {
                    w.leaf("Status", status.as_str());
                }
                Ok(S3Answer::xml(w.finish("VersioningConfiguration")))
            }
            Op::ListObjectVersions => self.list_object_versions(request),
            Op::PutBucketTagging => {
                let tags = tags_from_xml(body)?;
                self.store.put_bucket_tagging(bucket, Some(tags))?;
                Ok(S3Answer::empty(StatusCode::NO_CONTENT))
            }
            Op::GetBucketTagging => {
                let tags = self.store.bucket_tagging(bucket)?;
                Ok(S3Answer::xml(tagging_document(&tags)))
            }
            Op::DeleteBucketTagging => {
                self.store.put_bucket_tagging(bucket, None)?;
                Ok(S3Answer::empty(StatusCode::NO_CONTENT))
            }
            Op::PutBucketLifecycleConfiguration => {
                let config = lifecycle::from_xml(body)?;
                self.store.put_bucket_lifecycle(bucket, Some(config))?;
                Ok(S3Answer::empty(StatusCode::OK))
            }
            Op::GetBucketLifecycleConfiguration => {
                let config = self.store.bucket_lifecycle(bucket)?;
                Ok(S3Answer::xml(lifecycle::document(&config)))
            }
            Op::DeleteBucketLifecycle => {
                self.store.put_bucket_lifecycle(bucket, None)?;
                Ok(S3Answer::empty(StatusCode::NO_CONTENT))
            }
            Op::GetObjectAcl => {
                let acl = self.store.object_acl(bucket, &request.key)?;
                let owner = self.store.bucket(bucket)?.owner;
                Ok(S3Answer::xml(acl_document(&owner, acl)))
            }
            Op::PutObject
            | Op::GetObject
            | Op::HeadObject
            | Op::CreateMultipartUpload
            | Op::UploadPart
            | Op::CompleteMultipartUpload
            | Op::AbortMultipartUpload
            | Op::ListParts
            | Op::ListMultipartUploads
            | Op::PostObject => Err(GatewayError::InvalidRequest(
                "internal routing error".into(),
            )),
        }
    }

    /// DeleteObjects: up to 1000 keys; each is reported deleted or failed, as S3.
    fn delete_objects(
        &self,
        bucket: &str,
        principal: &str,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let info = self.store.bucket(bucket)?;
        let facts = request_facts(parts);
        let has_digest = parts.headers.contains_key("content-md5")
            || parts
                .headers
                .keys()
                .any(|name| name.as_str().starts_with("x-amz-checksum-"))
            || parts.headers.contains_key("x-amz-trailer");
        if !has_digest {
            return Err(GatewayError::InvalidRequest(
                "Missing required header for this request: Content-MD5 or x-amz-checksum-*".into(),
            ));
        }
        let doc = XmlDocument::parse(body, "Delete")?;
        if !doc.all("VersionId")?.is_empty() {
            return Err(GatewayError::NotImplemented(
                "DeleteObjects with VersionId is not implemented: delete versions one by one \
                 (DeleteObject with versionId)"
                    .into(),
            ));
        }
        let keys = doc.all("Key")?;
        if keys.is_empty() || keys.len() > objstore::MAX_KEYS {
            return Err(GatewayError::MalformedXml(format!(
                "Delete must name 1 to {} objects",
                objstore::MAX_KEYS
            )));
        }
        let quiet = doc.get("Quiet")?.as_deref() == Some("true");
        let mut w = XmlWriter::new("DeleteResult");
        for key in &keys {
            let allowed = authorize(
                &info,
                principal,
                "s3:DeleteObject",
                &objstore::object_arn(bucket, key),
                &facts,
            );
            let result = allowed
                .map_err(|err| match err {
                    GatewayError::AccessDenied(m) => {
                        objstore::Error::Kms(crypto_core::kms::KmsError::AccessDenied(m))
                    }
                    other => objstore::Error::InvalidArgument(other.message()),
                })
                .and_then(|()| self.store.delete_object(bucket, key));
            match result {
                Ok(_) if quiet => {}
                Ok(_) => {
                    w.open("Deleted").leaf("Key", key).close("Deleted");
                }
                Err(err) => {
                    let err = GatewayError::Object(err);
                    w.open("Error")
                        .leaf("Key", key)
                        .leaf("Code", &err.s3_code())
                        .leaf("Message", &err.message())
                        .close("Error");
                }
            }
        }
        Ok(S3Answer::xml(w.finish("DeleteResult")))
    }

    /// ListObjectVersions: every version and delete marker, by key, newest first.
    fn list_object_versions(&self, request: &S3Request) -> Result<S3Answer, GatewayError> {
        if request.param("delimiter").is_some_and(|d| !d.is_empty()) {
            return Err(GatewayError::NotImplemented(
                "ListObjectVersions with a delimiter is not implemented".into(),
            ));
        }
        let url = encoding_type(request)?;
        let prefix = request.param("prefix").unwrap_or_default();
        let key_marker = request.param("key-marker").filter(|m| !m.is_empty());
        let version_marker = request.param("version-id-marker").filter(|m| !m.is_empty());
        let max = max_keys(request)?.unwrap_or(objstore::MAX_KEYS);
        let objstore::VersionsPage { entries, next } = self.store.list_object_versions(
            &request.bucket,
            prefix,
            key_marker,
            version_marker,
            max,
        )?;
        let owner = self.store.bucket(&request.bucket)?.owner;
        let enc = |text: &str| listing_text(url, text);
        let mut w = XmlWriter::new("ListVersionsResult");
        w.leaf("Name", &request.bucket)
            .leaf("Prefix", &enc(prefix))
            .leaf("KeyMarker", &enc(key_marker.unwrap_or_default()))
            .leaf("VersionIdMarker", version_marker.unwrap_or_default())
            .leaf("MaxKeys", &max.min(objstore::MAX_KEYS).to_string())
            .leaf("IsTruncated", if next.is_some() { "true" } else { "false" });
        if let Some((key, version)) = &next {
            w.leaf("NextKeyMarker", &enc(key))
                .leaf("NextVersionIdMarker", version);
        }
        if url {
            w.leaf("EncodingType", "url");
        }
        for entry in &entries {
            let tag = if entry.object.is_some() {
                "Version"
            } else {
                "DeleteMarker"
            };
            w.open(tag)
                .leaf("Key", &enc(&entry.key))
                .leaf("VersionId", &entry.version_id)
                .leaf("IsLatest", if entry.is_latest { "true" } else { "false" })
                .leaf("LastModified", &iso_date(entry.last_modified));
            if let Some(object) = &entry.object {
                w.leaf("ETag", &format!("\"{}\"", object.etag))
                    .leaf("Size", &object.size.to_string())
                    .leaf("StorageClass", "STANDARD");
            }
            owner_xml(&mut w, &owner);
            w.close(tag);
        }
        Ok(S3Answer::xml(w.finish("ListVersionsResult")))
    }

    /// ListObjects (version 1, rclone's and s3fs's default): `marker` instead of
    /// continuation tokens, `NextMarker` on a truncated page, owners always shown.
    fn list_objects_v1(&self, request: &S3Request) -> Result<S3Answer, GatewayError> {
        let url = encoding_type(request)?;
        let prefix = request.param("prefix").unwrap_or_default().to_owned();
        let delimiter = request.param("delimiter").unwrap_or_default().to_owned();
        let marker = request.param("marker").filter(|m| !m.is_empty());
        let req = ListObjectsRequest {
            continuation_token: marker.map(|m| objstore::marker_token(m, &prefix, &delimiter)),
            prefix,
            delimiter,
            max_keys: max_keys(request)?,
            start_after: None,
        };
        let page = self.store.list_objects_v2(&request.bucket, &req)?;
        let owner = self.store.bucket(&request.bucket)?.owner;
        let enc = |text: &str| listing_text(url, text);
        let mut w = XmlWriter::new("ListBucketResult");
        w.leaf("Name", &request.bucket)
            .leaf("Prefix", &enc(&req.prefix))
            .leaf("Marker", &enc(marker.unwrap_or_default()));
        listing_limits(&mut w, &req, &page, &enc);
        if page.is_truncated() {
            // The page's last entry, key or common prefix, whichever sorts later.
            let last_key = page.objects.last().map(|o| o.key.as_str());
            let last_prefix = page.common_prefixes.last().map(String::as_str);
            if let Some(next) = last_key.max(last_prefix) {
                w.leaf("NextMarker", &enc(next));
            }
        }
        if url {
            w.leaf("EncodingType", "url");
        }
        listing_entries(&mut w, &page, Some(owner.as_str()), &enc);
        Ok(S3Answer::xml(w.finish("ListBucketResult")))
    }

    fn list_objects_v2(&self, request: &S3Request) -> Result<S3Answer, GatewayError> {
        let url = encoding_type(request)?;
        let req = ListObjectsRequest {
            prefix: request.param("prefix").unwrap_or_default().to_owned(),
            delimiter: request.param("delimiter").unwrap_or_default().to_owned(),
            max_keys: max_keys(request)?,
            continuation_token: request.param("continuation-token").map(str::to_owned),
            start_after: request.param("start-after").map(str::to_owned),
        };
        let page = self.store.list_objects_v2(&request.bucket, &req)?;
        let fetch_owner = request.param("fetch-owner") == Some("true");
        let owner = if fetch_owner {
            Some(self.store.bucket(&request.bucket)?.owner)
        } else {
            None
        };
        let enc = |text: &str| listing_text(url, text);
        let mut w = XmlWriter::new("ListBucketResult");
        w.leaf("Name", &request.bucket)
            .leaf("Prefix", &enc(&req.prefix))
            .leaf("KeyCount", &page.key_count().to_string());
        listing_limits(&mut w, &req, &page, &enc);
        if url {
            w.leaf("EncodingType", "url");
        }
        if let Some(token) = &req.continuation_token {
            w.leaf("ContinuationToken", token);
        }
        if let Some(token) = &page.next_continuation_token {
            w.leaf("NextContinuationToken", token);
        }
        if let Some(after) = &req.start_after {
            w.leaf("StartAfter", &enc(after));
        }
        listing_entries(&mut w, &page, owner.as_deref(), &enc);
        Ok(S3Answer::xml(w.finish("ListBucketResult")))
    }
}

/// A `<Tagging><TagSet><Tag><Key/><Value/></Tag>...</TagSet></Tagging>` body.
fn tags_from_xml(body: &[u8]) -> Result<objstore::TagSet, GatewayError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| GatewayError::MalformedXml("the tag set is not UTF-8".into()))?
        .replace("<Value/>", "<Value></Value>")
        .replace("<Value />", "<Value></Value>");
    let doc = XmlDocument::parse(text.as_bytes(), "Tagging")?;
    let keys = doc.all("Key")?;
    let values = doc.all("Value")?;
    if keys.len() != values.len() || keys.len() != text.matches("<Tag>").count() {
        return Err(GatewayError::MalformedXml(
            "every Tag of the TagSet needs one Key and one Value".into(),
        ));
    }
    let mut tags = objstore::TagSet::new();
    for (key, value) in keys.into_iter().zip(values) {
        if tags.insert(key, value).is_some() {
            return Err(GatewayError::Object(objstore::Error::InvalidTag(
                "Cannot provide multiple Tags with the same key".into(),
            )));
        }
    }
    Ok(tags)
}

/// `x-amz-tagging` (a URL query string: `k1=v1&k2=v2`).
fn tags_from_header(headers: &HeaderMap) -> Result<objstore::TagSet, GatewayError> {
    let mut tags = objstore::TagSet::new();
    if let Some(text) = header(headers, "x-amz-tagging")? {
        for (key, value) in sigv4::query_pairs(text)? {
            if tags.insert(key, value).is_some() {
                return Err(GatewayError::Object(objstore::Error::InvalidTag(
                    "Cannot provide multiple Tags with the same key".into(),
                )));
            }
        }
    }
    Ok(tags)
}

/// GetObjectTagging's and GetBucketTagging's document.
fn tagging_document(tags: &objstore::TagSet) -> Vec<u8> {
    let mut w = XmlWriter::new("Tagging");
    w.open("TagSet");
    for (key, value) in tags {
        w.open("Tag")
            .leaf("Key", key)
            .leaf("Value", value)
            .close("Tag");
    }
    w.close("TagSet");
    w.finish("Tagging")
}

/// GetObject's and HeadObject's `response-*` query parameters: the answer's headers
/// as the (signed) request asks, whatever the object stores.
fn response_overrides(headers: &mut HeaderMap, request: &S3Request) {
    for (param, name) in [
        ("response-content-type", "content-type"),
        ("response-content-language", "content-language"),
        ("response-expires", "expires"),
        ("response-cache-control", "cache-control"),
        ("response-content-disposition", "content-disposition"),
        ("response-content-encoding", "content-encoding"),
    ] {
        if let Some(value) = request.param(param) {
            insert(headers, name, value);
        }
    }
}

/// What a bucket policy's conditions look at in a request.
fn request_facts(parts: &http::request::Parts) -> policy::RequestFacts {
    let text = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    policy::RequestFacts {
        secure_transport: parts.extensions.get::<SecureTransport>().is_some(),
        sse: text("x-amz-server-side-encryption"),
        sse_kms_key_id: text("x-amz-server-side-encryption-aws-kms-key-id"),
    }
}

/// Whether `principal` may do `action` on `resource` of `bucket`: an explicit Deny of
/// the bucket policy refuses; principals of the owner's account need no Allow,
/// others do. The owner's account may always manage the policy itself, so that a
/// policy cannot lock the owner out.
fn authorize(
    bucket: &objstore::BucketInfo,
    principal: &str,
    action: &str,
    resource: &str,
    facts: &policy::RequestFacts,
) -> Result<(), GatewayError> {
    let denied = || GatewayError::AccessDenied("Access Denied".into());
    let same_account = account_of(&bucket.owner) == account_of(principal);
    let managing = matches!(
        action,
        "s3:PutBucketPolicy" | "s3:GetBucketPolicy" | "s3:DeleteBucketPolicy"
    );
    if managing {
        return if same_account { Ok(()) } else { Err(denied()) };
    }
    let Some(text) = &bucket.policy else {
        return if same_account { Ok(()) } else { Err(denied()) };
    };
    let policy = policy::BucketPolicy::parse(text, &bucket.name)?;
    let restricted = bucket
        .public_access_block
        .is_some_and(|b| b.restrict_public_buckets)
        && policy.is_public();
    if restricted && !same_account {
        return Err(denied());
    }
    match policy.evaluate(principal, action, resource, facts) {
        policy::Decision::Deny => Err(denied()),
        policy::Decision::Allow => Ok(()),
        policy::Decision::NotMentioned if same_account => Ok(()),
        policy::Decision::NotMentioned => Err(denied()),
    }
}

/// `x-amz-grant-*` (explicit ACL grants): atrest models the canned ACLs private and
/// public-read only, so a grant is refused rather than stored nowhere.
fn refuse_grant_headers(headers: &HeaderMap) -> Result<(), GatewayError> {
    match headers
        .keys()
        .find(|name| name.as_str().starts_with("x-amz-grant-"))
    {
        Some(name) => Err(GatewayError::NotImplemented(format!(
            "ACL grants ({name}) are not implemented: atrest models the canned ACLs private \
             and public-read only (x-amz-acl)"
        ))),
        None => Ok(()),
    }
}

/// The stored checksum of a GET or HEAD with `x-amz-checksum-mode: ENABLED`.
fn checksum_headers(headers: &mut HeaderMap, checksum: Option<&(String, String)>) {
    if let Some((name, value)) = checksum {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
            insert(headers, "x-amz-checksum-type", "FULL_OBJECT");
        }
    }
}

/// `x-amz-tagging-count` of a GET or HEAD, when the object has tags.
fn tagging_count(headers: &mut HeaderMap, count: usize) {
    if count > 0 {
        insert(headers, "x-amz-tagging-count", &count.to_string());
    }
}

/// `encoding-type` of a listing: `url` or nothing.
fn encoding_type(request: &S3Request) -> Result<bool, GatewayError> {
    match request.param("encoding-type") {
        None => Ok(false),
        Some("url") => Ok(true),
        Some(_) => Err(GatewayError::InvalidArgument(
            "Invalid Encoding Method specified in Request".into(),
        )),
    }
}

/// A key or prefix as a listing shows it: URL-encoded with `encoding-type=url`.
fn listing_text(url: bool, text: &str) -> String {
    if url {
        sigv4::uri_encode(text, false)
    } else {
        text.to_owned()
    }
}

/// MaxKeys, Delimiter and IsTruncated of a ListObjects (v1 or v2) answer.
fn listing_limits(
    w: &mut XmlWriter,
    req: &ListObjectsRequest,
    page: &objstore::ListObjectsPage,
    enc: &dyn Fn(&str) -> String,
) {
    w.leaf(
        "MaxKeys",
        &req.max_keys
            .unwrap_or(objstore::MAX_KEYS)
            .min(objstore::MAX_KEYS)
            .to_string(),
    );
    if !req.delimiter.is_empty() {
        w.leaf("Delimiter", &enc(&req.delimiter));
    }
    w.leaf(
        "IsTruncated",
        if page.is_truncated() { "true" } else { "false" },
    );
}

/// The Contents (with the owner where given) and CommonPrefixes of a ListObjects
/// (v1 or v2) answer.
fn listing_entries(
    w: &mut XmlWriter,
    page: &objstore::ListObjectsPage,
    owner: Option<&str>,
    enc: &dyn Fn(&str) -> String,
) {
    for object in &page.objects {
        w.open("Contents")
            .leaf("Key", &enc(&object.key))
            .leaf("LastModified", &iso_date(object.last_modified))
            .leaf("ETag", &format!("\"{}\"", object.etag))
            .leaf("Size", &object.size.to_string());
        if let Some(owner) = owner {
            owner_xml(w, owner);
        }
        w.leaf("StorageClass", "STANDARD").close("Contents");
    }
    for prefix in &page.common_prefixes {
        w.open("CommonPrefixes")
            .leaf("Prefix", &enc(prefix))
            .close("CommonPrefixes");
    }
}

/// `max-keys` of a listing.
fn max_keys(request: &S3Request) -> Result<Option<usize>, GatewayError> {
    request
        .param("max-keys")
        .map(|text| {
            text.parse::<usize>().map_err(|_| {
                GatewayError::InvalidArgument(
                    "Provided max-keys not an integer or within integer range".into(),
                )
            })
        })
        .transpose()
}

/// Reads the whole (small) body of a configuration request, through its checks.
fn read_small(body: &mut dyn std::io::Read) -> Result<Vec<u8>, GatewayError> {
    let mut out = Vec::new();
    let mut limited = std::io::Read::take(body, MAX_SMALL_BODY + 1);
    std::io::Read::read_to_end(&mut limited, &mut out)
        .map_err(UploadBody::<&mut dyn BufRead>::error_of)?;
    if out.len() as u64 > MAX_SMALL_BODY {
        return Err(GatewayError::InvalidRequest(format!(
            "the request body is larger than {MAX_SMALL_BODY} bytes"
        )));
    }
    Ok(out)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110's IMF-fixdate); `None` for anything
/// else, which RFC 9110 says to ignore.
fn parse_http_date(text: &str) -> Option<OffsetDateTime> {
    let parts: Vec<&str> = text.split_ascii_whitespace().collect();
    let [_, day, month, year, clock, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)?;
    let month = time::Month::try_from(u8::try_from(month + 1).ok()?).ok()?;
    let mut hms = clock.split(':').map(|n| n.parse::<u8>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    let date = time::Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    let time = time::Time::from_hms(h, m, sec).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc())
}

/// The conditions of a GET or HEAD (RFC 9110 section 13.2.2, as S3 applies them):
/// PreconditionFailed for a failed `If-Match` / `If-Unmodified-Since`, a 304 answer
/// for a failed `If-None-Match` / `If-Modified-Since`, `None` to go on.
fn read_conditions(
    headers: &HeaderMap,
    info: &ObjectInfo,
) -> Result<Option<S3Answer>, GatewayError> {
    let matches = |value: &str| {
        value.split(',').any(|one| {
            let one = one.trim();
            let one = one.strip_prefix("W/").unwrap_or(one);
            one == "*" || one.trim_matches('"') == info.etag
        })
    };
    // Last-Modified has one-second resolution on the wire.
    let modified = info.last_modified.unix_timestamp();
    let failed = || {
        GatewayError::Object(objstore::Error::PreconditionFailed(
            "the object does not meet the request's If-Match or If-Unmodified-Since".into(),
        ))
    };
    match header(headers, "if-match")? {
        Some(value) if !matches(value) => return Err(failed()),
        Some(_) => {}
        None => {
            if let Some(since) = header(headers, "if-unmodified-since")?.and_then(parse_http_date) {
                if modified > since.unix_timestamp() {
                    return Err(failed());
                }
            }
        }
    }
    let not_modified = match header(headers, "if-none-match")? {
        Some(value) => matches(value),
        None => header(headers, "if-modified-since")?
            .and_then(parse_http_date)
            .is_some_and(|since| modified <= since.unix_timestamp()),
    };
    if !not_modified {
        return Ok(None);
    }
    let mut answer = S3Answer::empty(StatusCode::NOT_MODIFIED);
    insert(&mut answer.headers, "etag", &format!("\"{}\"", info.etag));
    insert(
        &mut answer.headers,
        "last-modified",
        &http_date(info.last_modified),
    );
    Ok(Some(answer))
}

const SSE_C_ALGORITHM: &str = "x-amz-server-side-encryption-customer-algorithm";
const SSE_C_KEY: &str = "x-amz-server-side-encryption-customer-key";
const SSE_C_KEY_MD5: &str = "x-amz-server-side-encryption-customer-key-md5";
const SSE_C_HEADERS: [&str; 3] = [SSE_C_ALGORITHM, SSE_C_KEY, SSE_C_KEY_MD5];

/// Refuses a request that carries any SSE-C header (the object's or a copy
/// source's) over plain HTTP, as S3 does: the key has crossed the network in the
/// clear, and using it would encourage doing so again. Only a connection the server
/// itself terminated with TLS is marked [`SecureTransport`]; no request header can
/// claim it.
fn refuse_customer_key_in_clear(parts: &http::request::Parts) -> Result<(), GatewayError> {
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
fn customer_key(headers: &HeaderMap) -> Result<Option<(CustomerKey, String)>, GatewayError> {
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
fn customer_key_headers(headers: &mut HeaderMap, key_md5: &str) {
    insert(headers, SSE_C_ALGORITHM, "AES256");
    insert(headers, SSE_C_KEY_MD5, key_md5);
}

/// S3 refuses SSE-KMS headers on a read: the object says how it is encrypted.
fn refuse_sse_headers_on_read(headers: &HeaderMap) -> Result<(), GatewayError> {
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

/// `If-None-Match: *` and `If-Match` of a write.
fn write_condition(headers: &HeaderMap) -> Result<Option<Condition>, GatewayError> {
    let if_match = header(headers, "if-match")?;
    let if_none_match = header(headers, "if-none-match")?;
    match (if_match, if_none_match) {
        (None, None) => Ok(None),
        (Some(etag), None) => Ok(Some(Condition::EtagMatches(etag.to_owned()))),
        (None, Some(value)) if value.trim() == "*" => Ok(Some(Condition::Absent)),
        (None, Some(_)) => Err(GatewayError::NotImplemented(
            "A header you provided implies functionality that is not implemented: \
             If-None-Match on a write takes only *"
                .into(),
        )),
        (Some(_), Some(_)) => Err(GatewayError::NotImplemented(
            "If-Match and If-None-Match together on a write are not implemented".into(),
        )),
    }
}

/// The options of a PutObject, from its headers.
fn put_options(headers: &HeaderMap) -> Result<PutObjectOptions, GatewayError> {
    let sse = header(headers, "x-amz-server-side-encryption")?;
    let key_id = header(headers, "x-amz-server-side-encryption-aws-kms-key-id")?;
    let context = header(headers, "x-amz-server-side-encryption-context")?;
    let customer = customer_key(headers)?;
    let encryption = match (sse, customer) {
        (Some(_), Some(_)) => {
            return Err(GatewayError::InvalidArgument(
                "Server Side Encryption with Customer provided key is incompatible with the \
                 encryption method specified"
                    .into(),
            ))
        }
        (None, Some((key, _))) => EncryptionRequest::Customer(std::sync::Arc::new(key)),
        (None, None) => EncryptionRequest::BucketDefault,
        (Some("AES256"), None) => EncryptionRequest::SseS3,
        (Some("aws:kms"), None) => EncryptionRequest::SseKms,
        (Some(other), None) => {
            return Err(GatewayError::InvalidArgument(format!(
                "x-amz-server-side-encryption must be AES256 or aws:kms, not '{}'",
                other.chars().take(32).collect::<String>()
            )))
        }
    };
    if sse != Some("aws:kms") && (key_id.is_some() || context.is_some()) {
        return Err(GatewayError::InvalidArgument(
            "Server Side Encryption with AWS KMS managed key requires HTTP header \
             x-amz-server-side-encryption : aws:kms"
                .into(),
        ));
    }
    let encryption_context = match context {
        Some(text) => parse_context(text)?,
        None => EncryptionContext::new(),
    };
    let mut user_metadata = BTreeMap::new();
    for (name, value) in headers {
        if let Some(meta) = name.as_str().strip_prefix("x-amz-meta-") {
            let value = value.to_str().map_err(|_| {
                GatewayError::InvalidArgument(format!("the header {name} is not ASCII text"))
            })?;
            user_metadata.insert(meta.to_owned(), value.to_owned());
        }
    }
    let content_md5 = content_md5(headers)?;
    let mut system_metadata = BTreeMap::new();
    for name in objstore::SYSTEM_METADATA {
        let Some(value) = header(headers, name)? else {
            continue;
        };
        // `aws-chunked` describes this request's body, not the object (S3 drops it).
        let value = if name == "content-encoding" {
            value
                .split(',')
                .map(str::trim)
                .filter(|coding| !coding.eq_ignore_ascii_case("aws-chunked") && !coding.is_empty())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            value.to_owned()
        };
        if !value.is_empty() {
            system_metadata.insert(name.to_owned(), value);
        }
    }
    Ok(PutObjectOptions {
        checksum: objstore::BodyChecksum::default(),
        system_metadata,
        tags: tags_from_header(headers)?,
        content_type: header(headers, "content-type")?.map(str::to_owned),
        user_metadata,
        kms_key_id: key_id.map(str::to_owned),
        encryption_context,
        acl: header(headers, "x-amz-acl")?
            .map(Acl::parse)
            .transpose()?
            .unwrap_or_default(),
        content_md5,
        encryption,
        condition: write_condition(headers)?,
    })
}

/// `x-amz-server-side-encryption-bucket-key-enabled`.
fn bucket_key_header(headers: &HeaderMap) -> Result<Option<bool>, GatewayError> {
    match header(headers, "x-amz-server-side-encryption-bucket-key-enabled")? {
        None => Ok(None),
        Some(text) if text.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(text) if text.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(GatewayError::InvalidArgument(
            "x-amz-server-side-encryption-bucket-key-enabled must be true or false".into(),
        )),
    }
}

/// `Content-MD5`, decoded.
fn content_md5(headers: &HeaderMap) -> Result<Option<[u8; 16]>, GatewayError> {
    header(headers, "content-md5")?
        .map(|text| {
            BASE64
                .decode(text.trim())
                .ok()
                .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
                .ok_or_else(|| {
                    GatewayError::InvalidDigest("The Content-MD5 you specified was invalid.".into())
                })
        })
        .transpose()
}

/// `x-amz-server-side-encryption-context`: base64 of a JSON object of strings.
fn parse_context(text: &str) -> Result<EncryptionContext, GatewayError> {
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

/// A canned ACL from an AccessControlPolicy body: READ for AllUsers makes it
/// public-read; owner-only grants make it private; anything else is not modelled.
fn acl_from_policy(body: &[u8]) -> Result<Acl, GatewayError> {
    let doc = XmlDocument::parse(body, "AccessControlPolicy")?;
    let uris = doc.all("URI")?;
    let permissions = doc.all("Permission")?;
    let public = uris.iter().any(|u| u == ALL_USERS);
    let other_groups = uris.iter().any(|u| u != ALL_USERS);
    if other_groups {
        return Err(GatewayError::NotImplemented(
            "atrest models the canned ACLs private and public-read only".into(),
        ));
    }
    if public && !permissions.iter().any(|p| p == "READ") {
        return Err(GatewayError::NotImplemented(
            "atrest models the canned ACLs private and public-read only".into(),
        ));
    }
    Ok(if public {
        Acl::PublicRead
    } else {
        Acl::Private
    })
}

/// GetObjectAcl's AccessControlPolicy for a canned ACL.
fn acl_document(owner_arn: &str, acl: Acl) -> Vec<u8> {
    const XSI: &str = "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"";
    let account = account_of(owner_arn);
    let mut w = XmlWriter::new("AccessControlPolicy");
    owner_xml(&mut w, owner_arn);
    w.open("AccessControlList")
        .open("Grant")
        .open_with("Grantee", &format!("{XSI} xsi:type=\"CanonicalUser\""))
        .leaf("ID", &canonical_id(account))
        .leaf("DisplayName", account)
        .close("Grantee")
        .leaf("Permission", "FULL_CONTROL")
        .close("Grant");
    if acl == Acl::PublicRead {
        w.open("Grant")
            .open_with("Grantee", &format!("{XSI} xsi:type=\"Group\""))
            .leaf("URI", ALL_USERS)
            .close("Grantee")
            .leaf("Permission", "READ")
            .close("Grant");
    }
    w.close("AccessControlList");
    w.finish("AccessControlPolicy")
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!((err.s3_status(), &*err.s3_code()), (400, "InvalidRequest"));
            assert!(err.message().contains("secure connection"), "{err}");
            refuse_customer_key_in_clear(&request(header, true)).unwrap();
        }
        refuse_customer_key_in_clear(&request("x-amz-server-side-encryption", false)).unwrap();
    }

    #[test]
    fn routes_by_method_path_and_subresource() {
        let route = |m: Method, p: &str, q: &str| S3Request::parse(&m, p, q).map(|r| r.operation);
        use S3Operation as Op;
        assert_eq!(route(Method::GET, "/", "").unwrap(), Op::ListBuckets);
        assert_eq!(route(Method::PUT, "/b", "").unwrap(), Op::CreateBucket);
        assert_eq!(route(Method::PUT, "/b/", "").unwrap(), Op::CreateBucket);
        assert_eq!(
            route(Method::GET, "/b", "list-type=2&prefix=a").unwrap(),
            Op::ListObjectsV2
        );
        assert_eq!(
            route(Method::PUT, "/b", "encryption").unwrap(),
            Op::PutBucketEncryption
        );
        assert_eq!(
            route(Method::GET, "/b/k/x%20y", "X-Amz-Signature=00").unwrap(),
            Op::GetObject
        );
        assert_eq!(route(Method::PUT, "/b/k", "acl").unwrap(), Op::PutObjectAcl);
        let r = S3Request::parse(&Method::GET, "/b/a%2Fb/c%20d", "").unwrap();
        assert_eq!((r.bucket.as_str(), r.key.as_str()), ("b", "a/b/c d"));
        assert_eq!(
            route(Method::POST, "/b/k", "tagging")
                .unwrap_err()
                .s3_code(),
            "NotImplemented"
        );
        assert_eq!(route(Method::POST, "/b", "").unwrap(), Op::PostObject);
        assert_eq!(
            route(Method::POST, "/", "").unwrap_err().s3_code(),
            "MethodNotAllowed"
        );
        assert!(route(Method::GET, "/b/%zz", "").is_err());
        assert!(route(Method::GET, "/b/%ff", "").is_err());
    }

    #[test]
    fn dates_have_s3_shapes() {
        let t = OffsetDateTime::from_unix_timestamp(1_255_369_830).unwrap();
        assert_eq!(http_date(t), "Mon, 12 Oct 2009 17:50:30 GMT");
        assert_eq!(iso_date(t), "2009-10-12T17:50:30.000Z");
    }

    #[test]
    fn put_options_follow_s3_rules() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-server-side-encryption-aws-kms-key-id",
            HeaderValue::from_static("alias/k"),
        );
        assert_eq!(put_options(&h).unwrap_err().s3_code(), "InvalidArgument");
        h.insert(
            "x-amz-server-side-encryption",
            HeaderValue::from_static("aws:kms"),
        );
        let context = BASE64.encode(br#"{"project":"x"}"#);
        h.insert(
            "x-amz-server-side-encryption-context",
            HeaderValue::from_str(&context).unwrap(),
        );
        h.insert("x-amz-meta-color", HeaderValue::from_static("blue"));
        let opts = put_options(&h).unwrap();
        assert_eq!(opts.kms_key_id.as_deref(), Some("alias/k"));
        assert_eq!(opts.encryption_context["project"], "x");
        assert_eq!(opts.user_metadata["color"], "blue");
        h.insert(
            "x-amz-server-side-encryption-context",
            HeaderValue::from_static("!!"),
        );
        assert!(put_options(&h).is_err());
        h.remove("x-amz-server-side-encryption-context");
        h.insert("content-md5", HeaderValue::from_static("short"));
        assert_eq!(put_options(&h).unwrap_err().s3_code(), "InvalidDigest");
    }

    #[test]
    fn acl_policies_map_to_canned_acls() {
        let public = acl_document("arn:aws:iam::000000000000:root", Acl::PublicRead);
        assert_eq!(acl_from_policy(&public).unwrap(), Acl::PublicRead);
        let private = acl_document("arn:aws:iam::000000000000:root", Acl::Private);
        assert_eq!(acl_from_policy(&private).unwrap(), Acl::Private);
        assert!(acl_from_policy(b"<Other/>").is_err());
    }
}
