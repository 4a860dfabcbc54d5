//! The S3 REST API, path-style (`/BUCKET/KEY`), over the object store. A request goes
//! through [`S3Service::handle`]: routing ([`routing`]: method, path and sub-resource
//! to an operation, the operation to its handler), authentication ([`auth`]: SigV4
//! header or presigned query, anonymous, or a browser form's POST policy), the bucket
//! policy ([`access`]), then the operation's handler, which runs on a blocking thread
//! and reads the body as it streams in ([`upload`]).
//!
//! The handlers, by operation group: [`buckets`] (and versioning), [`objects`]
//! (Put/Get/Head/Delete), [`copy`], [`multipart`], [`listing`], [`access`] (ACL,
//! bucket policy, public access block), [`encryption`] (bucket default, SSE headers,
//! SSE-C), [`tagging`], [`lifecycle`], [`post`] (browser uploads).
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

mod access;
mod auth;
mod buckets;
mod copy;
mod encryption;
mod lifecycle;
mod listing;
mod multipart;
mod objects;
pub mod policy;
pub mod post;
mod routing;
mod tagging;
pub mod upload;
pub mod xml;

use std::io::BufRead;

use crypto_core::kms::LocalKms;
use http::{HeaderMap, HeaderValue, StatusCode};
use objstore::{ObjectReader, ObjectStore};
use time::OffsetDateTime;

use crate::error::{ErrorReply, GatewayError};
use crate::sigv4;
use access::{authorize, refuse_grant_headers, request_facts};
use auth::Caller;
pub(crate) use auth::SecureTransport;
use encryption::refuse_customer_key_in_clear;
use routing::Call;
pub use routing::{S3Operation, S3Request};
use upload::UploadBody;
use xml::XmlWriter;

#[derive(Debug)]
pub(crate) struct S3Answer {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// The answer's headers (the server adds the request id ones).
    pub(crate) headers: HeaderMap,
    /// The answer's body.
    pub(crate) body: S3Body,
}

/// The body of an [`S3Answer`].
#[derive(Debug)]
pub(crate) enum S3Body {
    /// No body.
    Empty,
    /// A whole document (XML, or a bucket policy's JSON).
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
pub(crate) fn error_document(reply: &ErrorReply, resource: &str, request_id: &str) -> Vec<u8> {
    let mut w = XmlWriter::bare("Error");
    w.leaf("Code", &reply.code)
        .leaf("Message", &reply.message)
        .leaf("Resource", resource)
        .leaf("RequestId", request_id);
    w.finish("Error")
}

/// The S3 side of the gateway: the object store and what authentication needs.
#[derive(Debug)]
pub(crate) struct S3Service {
    store: ObjectStore,
}

/// What the server hands an S3 operation.
pub(crate) struct S3Context<'a> {
    /// The key service (authentication turns it into the signer's).
    pub(crate) kms: &'a LocalKms,
    /// The access keys signatures are checked against.
    pub(crate) secrets: &'a dyn sigv4::SecretLookup,
    /// This endpoint's region.
    pub(crate) region: &'a str,
    /// The request's arrival time (signature dates, presigned expiry, POST policies).
    pub(crate) now: OffsetDateTime,
    /// Set by authentication once the request's signature verifies, so that the
    /// server can name the proven caller in the trail record of a later refusal.
    pub(crate) verified: &'a std::sync::OnceLock<sigv4::Verified>,
}

impl std::fmt::Debug for S3Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Context")
            .field("region", &self.region)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

pub(super) fn header<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h str>, GatewayError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                GatewayError::InvalidArgument(format!("the header {name} is not ASCII text"))
            })
        })
        .transpose()
}

pub(super) fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    // Values come from checked metadata; one that is not header text is left out
    // rather than failing the whole answer.
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// `Wed, 12 Oct 2009 17:50:00 GMT`.
pub(crate) fn http_date(time: OffsetDateTime) -> String {
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
pub(super) fn iso_date(time: OffsetDateTime) -> String {
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
    pub(crate) fn apply_lifecycle(&self, now: time::OffsetDateTime, day: std::time::Duration) {
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

    /// The S3 side over `store`.
    pub(crate) fn new(store: ObjectStore) -> S3Service {
        S3Service { store }
    }

    /// Runs one request. `body` streams the request body from the connection.
    pub(crate) fn handle(
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
        let (caller, auth) = auth::authenticate(ctx, parts)?;
        let (checksum, decoded_len) = auth::body_claims(&parts.headers, &auth)?;
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
        let call = Call {
            kms: &kms,
            principal: &principal,
            request: &request,
            parts,
            region: ctx.region,
        };
        this.dispatch(&call, copy, &mut body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_have_s3_shapes() {
        let t = OffsetDateTime::from_unix_timestamp(1_255_369_830).unwrap();
        assert_eq!(http_date(t), "Mon, 12 Oct 2009 17:50:30 GMT");
        assert_eq!(iso_date(t), "2009-10-12T17:50:30.000Z");
    }
}
