//! atrest's object storage engine: the storage side of the S3 API (SSE-KMS, SSE-S3
//! under the AWS managed key, SSE-C; versions, tags, conditional writes), with no HTTP
//! in it.
//!
//! Every object is encrypted under its own data key (GenerateDataKey with the
//! encryption context `{"aws:s3:arn": "arn:aws:s3:::BUCKET/KEY"}` plus the caller's
//! pairs), in 64 KiB AES-256-GCM segments whose AAD binds the object's header, the
//! segment index and a final-segment flag (format in `docs/FORMAT.md`). The public map:
//!
//! - [`ObjectStore`]: buckets (create, delete, list, default encryption, ACL) and
//!   objects (streaming put, get with ranges, head, delete, ListObjectsV2, ACL).
//! - Multipart uploads ([`ObjectStore::create_multipart_upload`] and the rest):
//!   parts sealed under keys derived from the upload's key, assembled on Complete.
//! - [`ObjectReader`]: the decrypting body of a GET.
//! - [`ByteRange`], [`ListObjectsRequest`]: request parameters with S3's semantics.
//! - Bucket keys (S3 Bucket Keys): with `BucketKeyEnabled` in the bucket's default
//!   encryption (or `bucket_key_enabled` on a PUT), objects get keys derived from one
//!   data key per bucket and CMK; [`ObjectStore::with_cache_scope`] and
//!   [`CacheScope`] let a principal's requests reuse it without key-service calls.
//! - [`Error`]: one error type; [`Error::s3_code`] and [`Error::http_status`] are the
//!   mapping to S3's wire errors.
//! - [`format`]: the object file header parser (public for the fuzz target).
#![forbid(unsafe_code)]

mod aead;
mod bucket_key;
mod customer_key;
mod error;
pub mod format;
mod list;
mod names;
mod range;
mod reader;
mod store;

pub use bucket_key::{CacheScope, BUCKET_KEY_MAX_AGE, DEFAULT_CACHE_TTL};
pub use customer_key::CustomerKey;
pub use error::Error;
pub use format::Sse;
pub use list::{marker_token, ListObjectsRequest, MAX_KEYS};
pub use names::{bucket_arn, object_arn, validate_bucket_name, validate_object_key};
pub use range::ByteRange;
pub use reader::ObjectReader;
pub use store::lifecycle::{
    LifecycleConfiguration, LifecycleRule, LifecycleSweep, MAX_LIFECYCLE_RULES, MAX_RULE_ID,
};
pub use store::multipart::{
    CompletedPart, MultipartUpload, PartInfo, MAX_PART_NUMBER, MIN_PART_SIZE,
};
pub use store::versions::{DeleteOutcome, VersionEntry, Versioning, VersionsPage, NULL_VERSION};
pub use store::{
    validate_tags, Acl, BodyChecksum, BucketEncryption, BucketInfo, Condition, Deleted,
    EncryptionRequest, ListObjectsPage, ObjectDownload, ObjectInfo, ObjectStore, PublicAccessBlock,
    PutObjectOptions, SseAlgorithm, TagSet, DEFAULT_CONTENT_TYPE, MAX_BUCKET_TAGS, MAX_OBJECT_TAGS,
    MAX_USER_METADATA_BYTES, S3_ARN_CONTEXT_KEY, SSE_S3_KEY_ALIAS, SYSTEM_METADATA,
};
