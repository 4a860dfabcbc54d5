//! Routing: a request's method, path (`/`, `/BUCKET`, `/BUCKET/KEY`) and sub-resource
//! query become an [`S3Operation`] ([`S3Request::parse`]), and the operation its
//! handler ([`Handler::of`]): one `match` each, with no catch-all arm, so that every
//! operation chooses its route and its handler.

use std::io::BufRead;

use crypto_core::kms::LocalKms;
use http::Method;

use super::upload::UploadBody;
use super::{S3Answer, S3Service};
use crate::error::GatewayError;
use crate::sigv4::{self, PercentEscapeError};

/// Largest body of an operation other than PutObject (XML configurations).
const MAX_SMALL_BODY: u64 = 1 << 20;

/// The S3 operations atrest serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Operation {
    /// `GET /`.
    ListBuckets,
    /// `PUT /BUCKET`.
    CreateBucket,
    /// `HEAD /BUCKET`.
    HeadBucket,
    /// `DELETE /BUCKET`.
    DeleteBucket,
    /// `GET /BUCKET?location`.
    GetBucketLocation,
    /// `PUT /BUCKET?encryption`.
    PutBucketEncryption,
    /// `GET /BUCKET?encryption`.
    GetBucketEncryption,
    /// `DELETE /BUCKET?encryption`.
    DeleteBucketEncryption,
    /// `GET /BUCKET?list-type=2`.
    ListObjectsV2,
    /// `GET /BUCKET` (version 1).
    ListObjects,
    /// `PUT /BUCKET/KEY` (CopyObject with `x-amz-copy-source`).
    PutObject,
    /// `GET /BUCKET/KEY`.
    GetObject,
    /// `HEAD /BUCKET/KEY`.
    HeadObject,
    /// `DELETE /BUCKET/KEY`.
    DeleteObject,
    /// `POST /BUCKET?delete`.
    DeleteObjects,
    /// `PUT /BUCKET/KEY?acl`.
    PutObjectAcl,
    /// `GET /BUCKET/KEY?acl`.
    GetObjectAcl,
    /// `POST /BUCKET/KEY?uploads`.
    CreateMultipartUpload,
    /// `PUT /BUCKET/KEY?partNumber=N&uploadId=ID` (UploadPartCopy with `x-amz-copy-source`).
    UploadPart,
    /// `POST /BUCKET/KEY?uploadId=ID`.
    CompleteMultipartUpload,
    /// `DELETE /BUCKET/KEY?uploadId=ID`.
    AbortMultipartUpload,
    /// `GET /BUCKET/KEY?uploadId=ID`.
    ListParts,
    /// `GET /BUCKET?uploads`.
    ListMultipartUploads,
    /// `PUT /BUCKET/KEY?tagging`.
    PutObjectTagging,
    /// `GET /BUCKET/KEY?tagging`.
    GetObjectTagging,
    /// `DELETE /BUCKET/KEY?tagging`.
    DeleteObjectTagging,
    /// `PUT /BUCKET?tagging`.
    PutBucketTagging,
    /// `GET /BUCKET?tagging`.
    GetBucketTagging,
    /// `DELETE /BUCKET?tagging`.
    DeleteBucketTagging,
    /// `PUT /BUCKET?versioning`.
    PutBucketVersioning,
    /// `GET /BUCKET?versioning`.
    GetBucketVersioning,
    /// `GET /BUCKET?versions`.
    ListObjectVersions,
    /// `PUT /BUCKET?policy`.
    PutBucketPolicy,
    /// `GET /BUCKET?policy`.
    GetBucketPolicy,
    /// `DELETE /BUCKET?policy`.
    DeleteBucketPolicy,
    /// `PUT /BUCKET?publicAccessBlock`.
    PutPublicAccessBlock,
    /// `GET /BUCKET?publicAccessBlock`.
    GetPublicAccessBlock,
    /// `DELETE /BUCKET?publicAccessBlock`.
    DeletePublicAccessBlock,
    /// `PUT /BUCKET?lifecycle`.
    PutBucketLifecycleConfiguration,
    /// `GET /BUCKET?lifecycle`.
    GetBucketLifecycleConfiguration,
    /// `DELETE /BUCKET?lifecycle`.
    DeleteBucketLifecycle,
    /// A browser upload: `POST /BUCKET` with a signed POST policy form ([`post`]).
    PostObject,
}

impl S3Operation {
    /// The IAM action a bucket policy names this operation by (`versioned`: the
    /// request carries `versionId`).
    pub(super) fn action(self, versioned: bool) -> &'static str {
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

/// A routed S3 request: the operation, its bucket and key (decoded), and the query.
#[derive(Clone, Debug)]
pub struct S3Request {
    /// What the request asks for.
    pub operation: S3Operation,
    /// The bucket, percent-decoded; empty for `/`. Never holds a `/`.
    pub bucket: String,
    /// The object key, percent-decoded; empty for a bucket's operations.
    pub key: String,
    /// The query's name-value pairs, decoded, in request order.
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

    /// The value of query parameter `name` (the first, if repeated).
    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A path, percent-decoded once (S3 paths are encoded once); it must be UTF-8.
pub(super) fn percent_decode_path(path: &str) -> Result<String, GatewayError> {
    let bytes = sigv4::percent_decode_bytes(path).map_err(|err| {
        GatewayError::InvalidRequest(
            match err {
                PercentEscapeError::Incomplete => "the path ends in an incomplete percent escape",
                PercentEscapeError::NotHex => "the path holds an invalid percent escape",
            }
            .into(),
        )
    })?;
    String::from_utf8(bytes)
        .map_err(|_| GatewayError::InvalidRequest("the path is not UTF-8 once decoded".into()))
}

/// Reads the whole (small) body of a configuration request, through its checks.
pub(super) fn read_small(body: &mut dyn std::io::Read) -> Result<Vec<u8>, GatewayError> {
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

/// A routed, authenticated and authorized request, as an operation's handler gets it.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    /// The signer's key service (its calls are evaluated and audited as the signer).
    pub(crate) kms: &'a LocalKms,
    /// The signer's principal ARN.
    pub(crate) principal: &'a str,
    /// The operation, bucket, key and query.
    pub(crate) request: &'a S3Request,
    /// The request's method, URI, headers and extensions.
    pub(crate) parts: &'a http::request::Parts,
    /// This endpoint's region.
    pub(crate) region: &'a str,
}

/// The body a request streams in, as handlers take it.
pub(super) type StreamedBody<'b, 'r> = UploadBody<&'b mut (dyn BufRead + 'r)>;

/// An operation's handler, by how it takes the request body.
enum Handler {
    /// Reads the body as it streams in (PutObject, UploadPart), or not at all
    /// (GetObject, HeadObject).
    Streaming(
        fn(&S3Service, &Call<'_>, &mut StreamedBody<'_, '_>) -> Result<S3Answer, GatewayError>,
    ),
    /// Takes the whole body (an XML configuration), read through its checks first.
    Small(fn(&S3Service, &Call<'_>, &[u8]) -> Result<S3Answer, GatewayError>),
    /// Takes no body: the body (normally empty) is still read through its checks
    /// first (a signed body must hash to what was signed), then dropped.
    Bodiless(fn(&S3Service, &Call<'_>) -> Result<S3Answer, GatewayError>),
}

impl Handler {
    /// The handler of `operation`; `copy`: the request carries `x-amz-copy-source`
    /// (a PutObject is then a CopyObject, an UploadPart an UploadPartCopy).
    fn of(operation: S3Operation, copy: bool) -> Handler {
        use Handler::{Bodiless, Small, Streaming};
        use S3Operation as Op;
        match operation {
            Op::ListBuckets => Bodiless(S3Service::list_buckets),
            Op::CreateBucket => Small(S3Service::create_bucket),
            Op::HeadBucket => Bodiless(S3Service::head_bucket),
            Op::DeleteBucket => Bodiless(S3Service::delete_bucket),
            Op::GetBucketLocation => Bodiless(S3Service::get_bucket_location),
            Op::PutBucketEncryption => Small(S3Service::put_bucket_encryption),
            Op::GetBucketEncryption => Bodiless(S3Service::get_bucket_encryption),
            Op::DeleteBucketEncryption => Bodiless(S3Service::delete_bucket_encryption),
            Op::ListObjectsV2 => Bodiless(S3Service::list_objects_v2),
            Op::ListObjects => Bodiless(S3Service::list_objects_v1),
            Op::PutObject if copy => Bodiless(S3Service::copy_object),
            Op::PutObject => Streaming(S3Service::put_object),
            Op::GetObject => Streaming(|s3, call, _| s3.get_object(call, true)),
            Op::HeadObject => Streaming(|s3, call, _| s3.get_object(call, false)),
            Op::DeleteObject => Bodiless(S3Service::delete_object),
            Op::DeleteObjects => Small(S3Service::delete_objects),
            Op::PutObjectAcl => Small(S3Service::put_object_acl),
            Op::GetObjectAcl => Bodiless(S3Service::get_object_acl),
            Op::CreateMultipartUpload => Bodiless(S3Service::create_multipart_upload),
            Op::UploadPart if copy => Bodiless(S3Service::upload_part_copy),
            Op::UploadPart => Streaming(S3Service::upload_part),
            Op::CompleteMultipartUpload => Small(S3Service::complete_multipart_upload),
            Op::AbortMultipartUpload => Bodiless(S3Service::abort_multipart_upload),
            Op::ListParts => Bodiless(S3Service::list_parts),
            Op::ListMultipartUploads => Bodiless(S3Service::list_multipart_uploads),
            Op::PutObjectTagging => Small(S3Service::put_object_tagging),
            Op::GetObjectTagging => Bodiless(S3Service::get_object_tagging),
            Op::DeleteObjectTagging => Bodiless(S3Service::delete_object_tagging),
            Op::PutBucketTagging => Small(S3Service::put_bucket_tagging),
            Op::GetBucketTagging => Bodiless(S3Service::get_bucket_tagging),
            Op::DeleteBucketTagging => Bodiless(S3Service::delete_bucket_tagging),
            Op::PutBucketVersioning => Small(S3Service::put_bucket_versioning),
            Op::GetBucketVersioning => Bodiless(S3Service::get_bucket_versioning),
            Op::ListObjectVersions => Bodiless(S3Service::list_object_versions),
            Op::PutBucketPolicy => Small(S3Service::put_bucket_policy),
            Op::GetBucketPolicy => Bodiless(S3Service::get_bucket_policy),
            Op::DeleteBucketPolicy => Bodiless(S3Service::delete_bucket_policy),
            Op::PutPublicAccessBlock => Small(S3Service::put_public_access_block),
            Op::GetPublicAccessBlock => Bodiless(S3Service::get_public_access_block),
            Op::DeletePublicAccessBlock => Bodiless(S3Service::delete_public_access_block),
            Op::PutBucketLifecycleConfiguration => {
                Small(S3Service::put_bucket_lifecycle_configuration)
            }
            Op::GetBucketLifecycleConfiguration => {
                Bodiless(S3Service::get_bucket_lifecycle_configuration)
            }
            Op::DeleteBucketLifecycle => Bodiless(S3Service::delete_bucket_lifecycle),
            // The form is read before authentication (it carries the signature):
            // `S3Service::handle` serves it before routing reaches here.
            Op::PostObject => Small(|_, _, _| {
                Err(GatewayError::InvalidRequest(
                    "a browser upload form is served before dispatch".into(),
                ))
            }),
        }
    }
}

impl S3Service {
    /// Runs the handler of `call`'s operation with the request body.
    pub(super) fn dispatch(
        &self,
        call: &Call<'_>,
        copy: bool,
        body: &mut StreamedBody<'_, '_>,
    ) -> Result<S3Answer, GatewayError> {
        match Handler::of(call.request.operation, copy) {
            Handler::Streaming(handler) => handler(self, call, body),
            Handler::Small(handler) => {
                let small = read_small(&mut *body)?;
                handler(self, call, &small)
            }
            Handler::Bodiless(handler) => {
                read_small(&mut *body)?;
                handler(self, call)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let message = |p: &str| S3Request::parse(&Method::GET, p, "").unwrap_err().message();
        assert_eq!(
            message("/b/k%2"),
            "the path ends in an incomplete percent escape"
        );
        assert_eq!(
            message("/b/%zz"),
            "the path holds an invalid percent escape"
        );
        assert_eq!(message("/b/%ff"), "the path is not UTF-8 once decoded");
        assert_eq!(
            sigv4::percent_decode_bytes("a%2"),
            Err(PercentEscapeError::Incomplete)
        );
        assert_eq!(
            sigv4::percent_decode_bytes("%g0"),
            Err(PercentEscapeError::NotHex)
        );
        assert_eq!(sigv4::percent_decode_bytes("a%2Fb+").unwrap(), b"a/b+");
    }
}
