//! [`ObjectStore`]: buckets and objects under `<home>/s3/` (layout in
//! `docs/FORMAT.md`).
//!
//! Every write goes to a temporary file that is fsynced and then renamed into place,
//! so a crash leaves either the old state or the new one, never a partial object.
//! Temporary uploads hold an exclusive `flock` while they run; [`ObjectStore::open`]
//! removes the ones nobody holds (left by a crashed upload).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crypto_core::kms::{
    DataKeySpec, DecryptRequest, EncryptionContext, GenerateDataKeyRequest, KeyService,
};
use crypto_core::secret::fill_random;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::aead::{SegmentCipher, SEALED_SEG};
use crate::bucket_key::{
    derive_object_key, record_file_name, BucketKeyCache, BucketKeyRecord, CacheScope, Key32,
    DEFAULT_CACHE_TTL,
};
use crate::customer_key::CustomerKey;
use crate::format::{
    sealed_len, segment_count, BoundHeader, ObjectHeader, Sse, Summary, BUCKET_KEY_SALT_LEN,
    CUSTOMER_KEY_SALT_LEN, MAX_CONTENT_TYPE_LEN, MAX_OBJECT_SIZE, NONCE_PREFIX_LEN, SEGMENT_SIZE,
};
use crate::list::{plan_page, ListObjectsRequest};
use crate::names::{
    bucket_arn, object_arn, object_file_name, validate_bucket_name, validate_object_key,
};
use crate::range::ByteRange;
use crate::reader::ObjectReader;
use crate::Error;

pub(crate) mod lifecycle;
pub(crate) mod multipart;
pub(crate) mod versions;

use versions::{Versioning, VERSION_ID_KEY};

/// The encryption-context pair S3 adds to every SSE-KMS object.
pub const S3_ARN_CONTEXT_KEY: &str = "aws:s3:arn";
/// The AWS managed key SSE-S3 objects are encrypted under (created on first use by
/// the S3 front end: `LocalKms::aws_managed_key`).
pub const SSE_S3_KEY_ALIAS: &str = crypto_core::kms::AWS_MANAGED_S3_ALIAS;
/// The HTTP headers a PUT may store with an object (names as the header map has
/// them), returned on GET and HEAD.
pub const SYSTEM_METADATA: [&str; 5] = [
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
];
/// S3's content type for an object uploaded without one.
pub const DEFAULT_CONTENT_TYPE: &str = "binary/octet-stream";
/// S3's limit on user-defined metadata: names plus values, in bytes.
pub const MAX_USER_METADATA_BYTES: usize = 2048;
/// Segments sealed or opened per batch: bounds the memory of one upload or download
/// (about twice this many 64 KiB segments) while giving every core work.
pub(crate) const WINDOW_SEGMENTS: usize = 32;
/// Bucket-creation leftovers older than this are removed by [`ObjectStore::open`].
const STALE_STAGING: std::time::Duration = std::time::Duration::from_secs(600);

const SEG: usize = SEGMENT_SIZE as usize;
const BUCKET_FILE: &str = "bucket.json";
const OBJECTS_DIR: &str = "objects";
const BUCKET_KEYS_DIR: &str = "bucket-keys";
const TMP_DIR: &str = "tmp";
const OBJECT_EXT: &str = "obj";
const ACL_EXT: &str = "acl";
/// Sidecar of an object uploaded with a checksum: `HEADER VALUE ETAG`.
const CHECKSUM_EXT: &str = "checksum";
/// Sidecar of a tagged object: its tag set (JSON object).
const TAGS_EXT: &str = "tags";
/// S3's limits: tags per object and per bucket.
pub const MAX_OBJECT_TAGS: usize = 10;
pub const MAX_BUCKET_TAGS: usize = 50;
/// Sidecar of a multipart object: its part count, for the `-N` of its ETag.
const PARTS_EXT: &str = "parts";
/// Held (flock) while an object of the bucket is replaced or deleted, so that a
/// conditional write's check and its rename are one step for every other writer.
const COMMIT_LOCK: &str = "commit.lock";

/// A canned ACL (the two S3 offers that atrest models).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acl {
    #[default]
    #[serde(rename = "private")]
    Private,
    #[serde(rename = "public-read")]
    PublicRead,
}

impl Acl {
    /// Parses S3's `x-amz-acl` value.
    pub fn parse(canned: &str) -> Result<Acl, Error> {
        match canned {
            "private" => Ok(Acl::Private),
            "public-read" => Ok(Acl::PublicRead),
            other => Err(Error::InvalidArgument(format!(
                "unsupported canned ACL '{}' (private or public-read)",
                other.chars().take(64).collect::<String>()
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Acl::Private => "private",
            Acl::PublicRead => "public-read",
        }
    }
}

/// `SSEAlgorithm` of a bucket's default encryption.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SseAlgorithm {
    /// SSE-S3: the AWS managed key [`SSE_S3_KEY_ALIAS`].
    #[serde(rename = "AES256")]
    Aes256,
    /// SSE-KMS: `kms_key_id`, or the AWS managed key when it is unset.
    #[default]
    #[serde(rename = "aws:kms")]
    AwsKms,
}

impl SseAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SseAlgorithm::Aes256 => "AES256",
            SseAlgorithm::AwsKms => "aws:kms",
        }
    }
}

/// A bucket's default encryption (PutBucketEncryption). Buckets written before
/// SSE-S3 existed read as `aws:kms` with their key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketEncryption {
    #[serde(default)]
    pub algorithm: SseAlgorithm,
    /// Key id, key ARN, alias name or alias ARN of the CMK (`aws:kms` only).
    pub kms_key_id: Option<String>,
    /// S3 Bucket Keys (`BucketKeyEnabled`): new objects get a key derived from the
    /// bucket's data key instead of a data key of their own, unless a PUT says
    /// otherwise (`x-amz-server-side-encryption-bucket-key-enabled: false`).
    pub bucket_key_enabled: bool,
}

/// An object's or a bucket's tags (key to value).
pub type TagSet = BTreeMap<String, String>;

/// Checks a tag set against S3's rules: at most `max` tags; keys of 1-128 and values
/// of 0-256 Unicode characters made of letters, digits, spaces and `+ - = . _ : / @`;
/// no key in the reserved `aws:` namespace.
pub fn validate_tags(tags: &TagSet, max: usize) -> Result<(), Error> {
    if tags.len() > max {
        return Err(Error::InvalidTag(format!(
            "Object tags cannot be greater than {max}"
        )));
    }
    let allowed = |c: char| c.is_alphanumeric() || c.is_whitespace() || "+-=._:/@".contains(c);
    for (key, value) in tags {
        let shown: String = key.chars().take(64).collect();
        if key.is_empty() || key.chars().count() > 128 {
            return Err(Error::InvalidTag(format!(
                "The TagKey '{shown}' you have provided is too long or empty (1 to 128)"
            )));
        }
        if value.chars().count() > 256 {
            return Err(Error::InvalidTag(format!(
                "The TagValue of '{shown}' is longer than 256 characters"
            )));
        }
        if !key.chars().all(allowed) || !value.chars().all(allowed) {
            return Err(Error::InvalidTag(format!(
                "The tag '{shown}' holds a character S3 does not allow in tags"
            )));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(Error::InvalidTag(
                "Your TagKey cannot be prefixed with aws:".into(),
            ));
        }
    }
    Ok(())
}

/// PutPublicAccessBlock's four switches (all off when unset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicAccessBlock {
    /// Refuse requests that set a public-read ACL.
    pub block_public_acls: bool,
    /// Treat public-read objects as private for anonymous callers.
    pub ignore_public_acls: bool,
    /// Refuse bucket policies that allow anyone (`Principal: "*"`).
    pub block_public_policy: bool,
    /// With a public bucket policy, only the owner's account gets in.
    pub restrict_public_buckets: bool,
}

/// A bucket's metadata (`bucket.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketInfo {
    pub name: String,
    /// The principal (ARN) that created the bucket.
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub creation_date: OffsetDateTime,
    pub encryption: Option<BucketEncryption>,
    pub acl: Acl,
    /// PutBucketTagging (absent in files written before tagging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagSet>,
    /// PutBucketPolicy: the policy document as put (checked by the S3 front end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// PutPublicAccessBlock (absent: never set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_access_block: Option<PublicAccessBlock>,
    /// PutBucketVersioning (absent: never configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versioning: Option<Versioning>,
    /// PutBucketLifecycleConfiguration (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<lifecycle::LifecycleConfiguration>,
}

/// What a PUT says about server-side encryption (`x-amz-server-side-encryption*`).
#[derive(Clone, Debug, Default)]
pub enum EncryptionRequest {
    /// No header: `kms_key_id` when set, else the bucket's default encryption, else
    /// SSE-S3 (S3 encrypts every object since 2023).
    #[default]
    BucketDefault,
    /// `AES256`: SSE-S3.
    SseS3,
    /// `aws:kms`: `kms_key_id`, else the bucket default's KMS key, else the AWS
    /// managed key.
    SseKms,
    /// SSE-C: the customer's key (never stored).
    Customer(Arc<CustomerKey>),
}

/// The checksum of a PUT's body (`x-amz-checksum-*` header name and base64 value),
/// filled in by the front end once the whole body has been read and verified, and
/// stored with the object when it is committed. Clones share the slot.
#[derive(Clone, Debug, Default)]
pub struct BodyChecksum(Arc<std::sync::Mutex<Option<(String, String)>>>);

impl BodyChecksum {
    /// Records the verified checksum.
    pub fn set(&self, header: &str, value: &str) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some((header.to_owned(), value.to_owned()));
        }
    }

    fn get(&self) -> Option<(String, String)> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

/// A conditional write (`If-None-Match: *`, `If-Match: ETAG`): checked against the
/// object as it is when the new one replaces it, not only when the request arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Only if no object has the key (`If-None-Match: *`).
    Absent,
    /// Only if the object's ETag is this one (`If-Match`; quotes allowed, `*` any).
    EtagMatches(String),
}

/// What a PutObject may say besides the body.
#[derive(Clone, Debug, Default)]
pub struct PutObjectOptions {
    /// `Content-Type`; `None` gives [`DEFAULT_CONTENT_TYPE`].
    pub content_type: Option<String>,
    /// `x-amz-meta-*` pairs (names without the prefix).
    pub user_metadata: BTreeMap<String, String>,
    /// `x-amz-server-side-encryption-aws-kms-key-id`; `None` uses the bucket default.
    pub kms_key_id: Option<String>,
    /// `x-amz-server-side-encryption-context` (decoded); `aws:s3:arn` is added.
    /// An object with pairs of its own always gets its own data key (the pairs must
    /// reach the key service), even when a bucket key is asked for.
    pub encryption_context: EncryptionContext,
    pub acl: Acl,
    /// `Content-MD5` (decoded): the upload fails with BadDigest when it differs.
    pub content_md5: Option<[u8; 16]>,
    pub encryption: EncryptionRequest,
    /// Stored HTTP headers, names lower-case: `cache-control`, `content-disposition`,
    /// `content-encoding`, `content-language`, `expires` ([`SYSTEM_METADATA`]).
    pub system_metadata: BTreeMap<String, String>,
    /// `x-amz-tagging`: the object's tags (none when empty).
    pub tags: TagSet,
    /// The body's verified checksum, returned by GET and HEAD with ChecksumMode.
    pub checksum: BodyChecksum,
    /// PreconditionFailed (or NoSuchKey for `If-Match` on no object) unless it holds
    /// when the object is replaced.
    pub condition: Option<Condition>,
}

/// What a DeleteObject did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    /// Whether an object (or a version, or a marker) was removed or a marker made.
    pub removed: bool,
    pub outcome: versions::DeleteOutcome,
}

/// An object's metadata, as HEAD returns it (read without any key-service call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub bucket: String,
    pub key: String,
    /// Plaintext bytes.
    pub size: u64,
    /// MD5 of the plaintext, lower-case hex, without the quotes S3 puts around it.
    pub etag: String,
    pub content_type: String,
    pub user_metadata: BTreeMap<String, String>,
    /// The stored HTTP headers ([`SYSTEM_METADATA`]).
    pub system_metadata: BTreeMap<String, String>,
    /// The object's version (`x-amz-version-id`), when written with versioning
    /// enabled; `None` is S3's `null` version.
    pub version_id: Option<String>,
    /// ARN of the CMK that wrapped the object's data key
    /// (`x-amz-server-side-encryption-aws-kms-key-id`).
    pub kms_key_arn: String,
    /// The full encryption context, `aws:s3:arn` included
    /// (`x-amz-server-side-encryption-context`). For a bucket-key object it is the
    /// bucket key's: `aws:s3:arn` names the bucket.
    pub encryption_context: EncryptionContext,
    /// Whether the object's key is derived from a bucket key
    /// (`x-amz-server-side-encryption-bucket-key-enabled: true` on GET, HEAD and PUT).
    pub bucket_key_enabled: bool,
    /// SSE-KMS, SSE-S3 or SSE-C. For SSE-C, `kms_key_arn` and `encryption_context`
    /// are empty.
    pub sse: Sse,
    pub last_modified: OffsetDateTime,
    pub acl: Acl,
}

/// One page of ListObjectsV2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListObjectsPage {
    pub objects: Vec<ObjectInfo>,
    pub common_prefixes: Vec<String>,
    /// Set exactly when the listing is truncated (`IsTruncated`).
    pub next_continuation_token: Option<String>,
}

impl ListObjectsPage {
    /// `KeyCount`: keys plus common prefixes.
    pub fn key_count(&self) -> usize {
        self.objects.len() + self.common_prefixes.len()
    }

    pub fn is_truncated(&self) -> bool {
        self.next_continuation_token.is_some()
    }
}

/// A GET's answer: the metadata, the resolved range and the decrypting body.
#[derive(Debug)]
pub struct ObjectDownload {
    pub info: ObjectInfo,
    /// First and last byte (inclusive) when a range was asked for (`Content-Range`).
    pub range: Option<(u64, u64)>,
    /// The plaintext of the range (or the whole object). Implements `Read`; use
    /// [`ObjectReader::write_to`] to keep the typed errors.
    pub body: ObjectReader,
}

/// The object store under `<home>/s3/`. Cheap to clone; safe to share between threads.
///
/// Calls that use a key take the key service as an argument, so that the S3 front end
/// can act as each request's principal (the trail then names the signer). A store
/// handle made with [`ObjectStore::with_cache_scope`] for that principal also reuses
/// unwrapped bucket keys between its requests (`bucket_key` module).
#[derive(Clone, Debug)]
pub struct ObjectStore {
    root: PathBuf,
    bucket_keys: Arc<BucketKeyCache>,
    scope: Option<CacheScope>,
    /// Reads (and object sub-resources) address this version, not the current one.
    version: Option<String>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The encryption context of a bucket key.
fn bucket_context(bucket: &str) -> EncryptionContext {
    EncryptionContext::from([(S3_ARN_CONTEXT_KEY.to_owned(), bucket_arn(bucket))])
}

/// A 32-byte key out of the key service's answer.
fn key32(plaintext: &[u8]) -> Option<Key32> {
    let mut key = Key32::new([0u8; 32]);
    if plaintext.len() != 32 {
        return None;
    }
    key.copy_from_slice(plaintext);
    Some(key)
}

/// The key an upload seals with, and what the object's header records about it.
pub(crate) struct UploadKey {
    sse: Sse,
    key: Key32,
    key_arn: String,
    wrapped: Vec<u8>,
    bucket_key_salt: Option<[u8; BUCKET_KEY_SALT_LEN]>,
    context: EncryptionContext,
}

fn random_name(suffix: &str) -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    format!("{}{suffix}", hex::encode(bytes))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("fsync directory {}", dir.display())))
}

fn create_dir_private(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("create directory {}", dir.display())))
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsync,
/// rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(random_name(".tmp"));
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all_at(bytes, 0)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Io {
            context: format!("write {}", path.display()),
            source,
        });
    }
    sync_dir(dir)
}

/// Whether a leftover of an interrupted write is old enough that no running
/// operation can still own it.
fn is_stale(entry: &fs::DirEntry) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_STAGING)
}

/// Reads until `buf` is full or the body ends; returns the bytes read.
fn fill(body: &mut dyn Read, buf: &mut [u8]) -> Result<usize, Error> {
    let mut n = 0;
    while n < buf.len() {
        match body.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Body(e)),
        }
    }
    Ok(n)
}

fn check_text(what: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{what} is {} bytes, more than {max}",
            value.len()
        )));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Error::InvalidArgument(format!(
            "{what} contains a control character"
        )));
    }
    Ok(())
}

fn check_user_metadata(meta: &BTreeMap<String, String>) -> Result<(), Error> {
    let mut total = 0usize;
    for (name, value) in meta {
        let token = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(Error::InvalidArgument(format!(
                "user metadata name '{}' is not an HTTP token",
                name.chars().take(64).collect::<String>()
            )));
        }
        check_text("a user metadata value", value, MAX_USER_METADATA_BYTES)?;
        total += name.len() + value.len();
    }
    if total > MAX_USER_METADATA_BYTES {
        return Err(Error::InvalidArgument(format!(
            "user metadata is {total} bytes; the limit is {MAX_USER_METADATA_BYTES}"
        )));
    }
    Ok(())
}

/// The full encryption context of an object: the caller's pairs plus `aws:s3:arn`.
fn object_context(
    bucket: &str,
    key: &str,
    user: &EncryptionContext,
) -> Result<EncryptionContext, Error> {
    let arn = object_arn(bucket, key);
    let mut context = user.clone();
    for (name, value) in user {
        if name.is_empty() || value.is_empty() {
            return Err(Error::InvalidArgument(
                "encryption context names and values must not be empty".into(),
            ));
        }
        if name.starts_with("aws:") && !(name == S3_ARN_CONTEXT_KEY && *value == arn) {
            return Err(Error::InvalidArgument(format!(
                "the encryption context may not set the reserved name '{name}'"
            )));
        }
    }
    context.insert(S3_ARN_CONTEXT_KEY.to_owned(), arn);
    Ok(context)
}

impl ObjectStore {
    /// Opens (creating if needed) the store in `<home>/s3/` and removes what crashed
    /// uploads and bucket creations left behind.
    pub fn open(home: &Path) -> Result<ObjectStore, Error> {
        let store = ObjectStore {
            root: home.join("s3"),
            bucket_keys: Arc::new(BucketKeyCache::new(DEFAULT_CACHE_TTL)),
            scope: None,
            version: None,
        };
        create_dir_private(&store.buckets_dir())?;
        create_dir_private(&store.staging_dir())?;
        store.clean_leftovers()?;
        Ok(store)
    }

    /// A handle on the same store (sharing its bucket-key cache) whose requests act
    /// as `scope`'s principal: bucket keys it unwraps are reused by later requests of
    /// the same principal while the key store is unchanged. Pass, with each call, a key
    /// service acting as that same principal; take a fresh [`CacheScope::of`] per
    /// request. Without a scope every bucket-key object costs one key-service call.
    pub fn with_cache_scope(&self, scope: CacheScope) -> ObjectStore {
        ObjectStore {
            scope: Some(scope),
            ..self.clone()
        }
    }

    /// A handle on the same store whose reads, HEADs, tagging, ACL and checksum calls
    /// address version `version_id` of the object (`?versionId=`): the current
    /// object when it is that version, else the noncurrent one.
    pub fn at_version(&self, version_id: &str) -> ObjectStore {
        ObjectStore {
            version: Some(version_id.to_owned()),
            ..self.clone()
        }
    }

    /// This store with its own bucket-key cache keeping unwrapped keys for `ttl`
    /// (zero: never keep them).
    pub fn with_bucket_key_cache_ttl(mut self, ttl: Duration) -> ObjectStore {
        self.bucket_keys = Arc::new(BucketKeyCache::new(ttl));
        self
    }

    /// `<home>/s3/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn buckets_dir(&self) -> PathBuf {
        self.root.join("buckets")
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.buckets_dir().join(bucket)
    }

    /// Where `key`'s object file lives (whether or not it exists). For tests and
    /// tools that inspect the files.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.bucket_dir(bucket)
            .join(OBJECTS_DIR)
            .join(object_file_name(key))
    }

    fn acl_path(object_path: &Path) -> PathBuf {
        object_path.with_extension(ACL_EXT)
    }

    fn clean_leftovers(&self) -> Result<(), Error> {
        let staging = self.staging_dir();
        for entry in
            fs::read_dir(&staging).map_err(io_err(format!("list {}", staging.display())))?
        {
            let Ok(entry) = entry else { continue };
            if is_stale(&entry) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let buckets = self.buckets_dir();
        for bucket in
            fs::read_dir(&buckets).map_err(io_err(format!("list {}", buckets.display())))?
        {
            let Ok(bucket) = bucket else { continue };
            // Metadata, ACL and bucket-key files interrupted between write and rename.
            for dir in [
                bucket.path(),
                bucket.path().join(OBJECTS_DIR),
                bucket.path().join(BUCKET_KEYS_DIR),
            ] {
                let Ok(entries) = fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    if entry.path().extension().is_some_and(|x| x == "tmp") && is_stale(&entry) {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
            let tmp = bucket.path().join(TMP_DIR);
            let Ok(entries) = fs::read_dir(&tmp) else {
                continue;
            };
            for entry in entries.flatten() {
                // An upload in progress (in this or another process) holds the lock.
                let unheld = File::open(entry.path()).is_ok_and(|f| f.try_lock().is_ok());
                if unheld {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    // ---- buckets -------------------------------------------------------------

    /// CreateBucket. `owner` is the caller's principal ARN.
    pub fn create_bucket(&self, name: &str, owner: &str) -> Result<BucketInfo, Error> {
        validate_bucket_name(name)?;
        if let Some(existing) = self.try_bucket(name)? {
            return Err(Self::exists_error(&existing, owner));
        }
        let info = BucketInfo {
            name: name.to_owned(),
            owner: owner.to_owned(),
            creation_date: now(),
            encryption: None,
            acl: Acl::Private,
            tags: None,
            policy: None,
            public_access_block: None,
            versioning: None,
            lifecycle: None,
        };
        let staged = self.staging_dir().join(random_name(".bucket"));
        create_dir_private(&staged.join(OBJECTS_DIR))?;
        create_dir_private(&staged.join(TMP_DIR))?;
        write_atomic(&staged.join(BUCKET_FILE), &Self::bucket_json(&info)?)?;
        let target = self.bucket_dir(name);
        if let Err(source) = fs::rename(&staged, &target) {
            let _ = fs::remove_dir_all(&staged);
            // Another creator won the race.
            if let Some(existing) = self.try_bucket(name)? {
                return Err(Self::exists_error(&existing, owner));
            }
            return Err(Error::Io {
                context: format!("create bucket directory {}", target.display()),
                source,
            });
        }
        sync_dir(&self.buckets_dir())?;
        Ok(info)
    }

    fn exists_error(existing: &BucketInfo, owner: &str) -> Error {
        if existing.owner == owner {
            Error::BucketAlreadyOwnedByYou {
                bucket: existing.name.clone(),
            }
        } else {
            Error::BucketAlreadyExists {
                bucket: existing.name.clone(),
            }
        }
    }

    fn bucket_json(info: &BucketInfo) -> Result<Vec<u8>, Error> {
        serde_json::to_vec_pretty(info).map_err(|e| Error::Io {
            context: "encode bucket metadata".into(),
            source: io::Error::other(e),
        })
    }

    /// The bucket's metadata, or `None` when no such bucket exists.
    fn try_bucket(&self, name: &str) -> Result<Option<BucketInfo>, Error> {
        if validate_bucket_name(name).is_err() {
            return Ok(None);
        }
        let path = self.bucket_dir(name).join(BUCKET_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("read {}", path.display()),
                    source,
                })
            }
        };
        let info: BucketInfo = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupted {
            path: path.clone(),
            what: format!("bucket metadata: {e}"),
        })?;
        if info.name != name {
            return Err(Error::Corrupted {
                path,
                what: format!("bucket metadata names bucket '{}'", info.name),
            });
        }
        Ok(Some(info))
    }

    /// HeadBucket: the bucket's metadata.
    pub fn bucket(&self, name: &str) -> Result<BucketInfo, Error> {
        self.try_bucket(name)?.ok_or_else(|| Error::NoSuchBucket {
            bucket: name.chars().take(80).collect(),
        })
    }

    fn update_bucket(
        &self,
        name: &str,
        f: impl FnOnce(&mut BucketInfo),
    ) -> Result<BucketInfo, Error> {
        let mut info = self.bucket(name)?;
        f(&mut info);
        write_atomic(
            &self.bucket_dir(name).join(BUCKET_FILE),
            &Self::bucket_json(&info)?,
        )?;
        Ok(info)
    }

    /// ListBuckets, by name.
    pub fn list_buckets(&self) -> Result<Vec<BucketInfo>, Error> {
        let dir = self.buckets_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
            if let Some(info) = entry
                .file_name()
                .to_str()
                .map(|name| self.try_bucket(name))
                .transpose()?
                .flatten()
            {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// DeleteBucket: only an empty bucket.
    pub fn delete_bucket(&self, name: &str) -> Result<(), Error> {
        self.bucket(name)?;
        let objects = self.bucket_dir(name).join(OBJECTS_DIR);
        let mut entries =
            fs::read_dir(&objects).map_err(io_err(format!("list {}", objects.display())))?;
        let has_object =
            entries.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == OBJECT_EXT)));
        if has_object || self.has_versions(name)? {
            return Err(Error::BucketNotEmpty {
                bucket: name.to_owned(),
            });
        }
        // Move it out of the namespace first so that the name is free at once and a
        // crash halfway through leaves only staging leftovers.
        let doomed = self.staging_dir().join(random_name(".deleted"));
        fs::rename(self.bucket_dir(name), &doomed)
            .map_err(io_err(format!("remove bucket {name}")))?;
        sync_dir(&self.buckets_dir())?;
        fs::remove_dir_all(&doomed).map_err(io_err(format!("remove {}", doomed.display())))
    }

    /// PutBucketEncryption (`Some`) or DeleteBucketEncryption (`None`).
    pub fn put_bucket_encryption(
        &self,
        name: &str,
        encryption: Option<BucketEncryption>,
    ) -> Result<BucketInfo, Error> {
        if let Some(e) = &encryption {
            match (e.algorithm, &e.kms_key_id) {
                (SseAlgorithm::Aes256, Some(_)) => {
                    return Err(Error::InvalidArgument(
                        "a KMSMasterKeyID goes only with the SSEAlgorithm aws:kms".into(),
                    ))
                }
                (_, Some(id)) if id.is_empty() => {
                    return Err(Error::InvalidArgument("the KMS key id is empty".into()))
                }
                (_, Some(id)) => check_text("the KMS key id", id, 2048)?,
                (_, None) => {}
            }
        }
        let before = self.bucket(name)?.encryption;
        let info = self.update_bucket(name, |info| info.encryption = encryption)?;
        if info.encryption != before {
            self.rotate_bucket_keys(name)?;
        }
        Ok(info)
    }

    /// Retires the bucket's current bucket keys: the next bucket-key PUT generates a
    /// fresh one (GenerateDataKey). Objects made under the old ones stay readable:
    /// each header holds the wrapped bucket key it was derived from. Returns how many
    /// were retired. PutBucketEncryption with a changed configuration does this too.
    pub fn rotate_bucket_keys(&self, name: &str) -> Result<usize, Error> {
        self.bucket(name)?;
        let dir = self.bucket_dir(name).join(BUCKET_KEYS_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("list {}", dir.display()),
                    source,
                })
            }
        };
        let mut retired = 0;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
            if entry.path().extension().is_some_and(|x| x == "json")
                && Self::remove_if_exists(&entry.path())?
            {
                retired += 1;
            }
        }
        sync_dir(&dir)?;
        Ok(retired)
    }

    /// The bucket's current bucket key for `kms_key_id`: the recorded one while it is
    /// young enough (one Decrypt, or none when this scope holds it unwrapped), else a
    /// fresh one (GenerateDataKey), recorded for the next uploads.
    fn current_bucket_key(
        &self,
        kms: &dyn KeyService,
        bucket: &str,
        kms_key_id: &str,
    ) -> Result<(Key32, String, Vec<u8>), Error> {
        let dir = self.bucket_dir(bucket).join(BUCKET_KEYS_DIR);
        let path = dir.join(record_file_name(kms_key_id));
        let context = bucket_context(bucket);
        if let Some((arn, wrapped)) = current_record(&path, kms_key_id)? {
            let key = self.unwrap_bucket_key(kms, &wrapped, context, &arn)?;
            return Ok((key, arn, wrapped));
        }
        // Concurrent first uploads would each make a bucket key: one makes it, the
        // others wait and use it.
        let _making = self.bucket_keys.lock_creation();
        if let Some((arn, wrapped)) = current_record(&path, kms_key_id)? {
            let key = self.unwrap_bucket_key(kms, &wrapped, context, &arn)?;
            return Ok((key, arn, wrapped));
        }
        let generated = kms.generate_data_key(&GenerateDataKeyRequest {
            key_id: kms_key_id.to_owned(),
            spec: DataKeySpec::Aes256,
            encryption_context: context,
        })?;
        let key = key32(generated.plaintext.expose()).ok_or_else(|| {
            Error::InvalidArgument(
                "the key service returned a data key that is not 32 bytes".into(),
            )
        })?;
        let record = BucketKeyRecord {
            kms_key_id: kms_key_id.to_owned(),
            kms_key_arn: generated.key_id.clone(),
            wrapped_key: BASE64.encode(&generated.ciphertext_blob),
            created: now(),
        };
        create_dir_private(&dir)?;
        let json = serde_json::to_vec_pretty(&record).map_err(|e| Error::Io {
            context: "encode bucket key record".into(),
            source: io::Error::other(e),
        })?;
        write_atomic(&path, &json)?;
        if let Some(scope) = &self.scope {
            self.bucket_keys
                .insert(scope, &generated.ciphertext_blob, &key);
        }
        Ok((key, generated.key_id, generated.ciphertext_blob))
    }

    /// The plaintext of a wrapped bucket key: from this scope's cache, or one Decrypt
    /// (kept in the cache for the scope).
    fn unwrap_bucket_key(
        &self,
        kms: &dyn KeyService,
        wrapped: &[u8],
        context: EncryptionContext,
        key_arn: &str,
    ) -> Result<Key32, Error> {
        if let Some(key) = self
            .scope
            .as_ref()
            .and_then(|s| self.bucket_keys.get(s, wrapped))
        {
            return Ok(key);
        }
        let data = kms.decrypt(&DecryptRequest {
            ciphertext_blob: wrapped.to_vec(),
            encryption_context: context,
            key_id: Some(key_arn.to_owned()),
        })?;
        let key = key32(data.plaintext.expose()).ok_or_else(|| {
            Error::InvalidArgument(
                "the key service returned a bucket key that is not 32 bytes".into(),
            )
        })?;
        if let Some(scope) = &self.scope {
            self.bucket_keys.insert(scope, wrapped, &key);
        }
        Ok(key)
    }

    /// GetBucketEncryption; ServerSideEncryptionConfigurationNotFoundError when unset.
    pub fn bucket_encryption(&self, name: &str) -> Result<BucketEncryption, Error> {
        self.bucket(name)?
            .encryption
            .ok_or_else(|| Error::NoBucketEncryption {
                bucket: name.to_owned(),
            })
    }

    /// PutBucketAcl (canned).
    pub fn put_bucket_acl(&self, name: &str, acl: Acl) -> Result<BucketInfo, Error> {
        self.update_bucket(name, |info| info.acl = acl)
    }

    // ---- objects -------------------------------------------------------------

    /// PutObject: reads `body` to its end, encrypting it under a fresh data key
    /// (GenerateDataKey under the named or the bucket's default CMK), and replaces
    /// the object atomically. Memory stays bounded whatever the body's size.
    pub fn put_object(
        &self,
        kms: &dyn KeyService,
        bucket: &str,
        key: &str,
        body: &mut dyn Read,
        opts: &PutObjectOptions,
    ) -> Result<ObjectInfo, Error> {
        self.put_object_with_bucket_key(kms, bucket, key, body, opts, None)
    }

    /// PutObject with S3's `x-amz-server-side-encryption-bucket-key-enabled` header:
    /// `Some(true)` derives the object's key from the bucket key, `Some(false)` gives
    /// it a data key of its own, `None` follows the bucket's default encryption.
    pub fn put_object_with_bucket_key(
        &self,
        kms: &dyn KeyService,
        bucket: &str,
        key: &str,
        body: &mut dyn Read,
        opts: &PutObjectOptions,
        bucket_key_enabled: Option<bool>,
    ) -> Result<ObjectInfo, Error> {
        let plan = self.plan_put(bucket, key, opts, bucket_key_enabled)?;
        let upload_key = self.new_upload_key(kms, bucket, key, &plan)?;
        self.seal_and_commit(bucket, key, upload_key, plan.content_type, body, opts, None)
    }

    /// Checks what a PUT says about the object (before any key-service call) and
    /// resolves its CMK and whether it uses a bucket key.
    fn plan_put(
        &self,
        bucket: &str,
        key: &str,
        opts: &PutObjectOptions,
        bucket_key_enabled: Option<bool>,
    ) -> Result<PutPlan, Error> {
        validate_object_key(key)?;
        let info = self.bucket(bucket)?;
        let default_kms_key = || match &info.encryption {
            Some(BucketEncryption {
                algorithm: SseAlgorithm::AwsKms,
                kms_key_id: Some(id),
                ..
            }) => id.clone(),
            _ => SSE_S3_KEY_ALIAS.to_owned(),
        };
        let (sse, key_id) = match (&opts.encryption, &opts.kms_key_id) {
            (EncryptionRequest::Customer(customer), None) => {
                (PlannedSse::Customer(Arc::clone(customer)), String::new())
            }
            (EncryptionRequest::Customer(_), Some(_)) | (EncryptionRequest::SseS3, Some(_)) => {
                return Err(Error::InvalidArgument(
                    "a KMS key id goes only with x-amz-server-side-encryption: aws:kms".into(),
                ))
            }
            (EncryptionRequest::SseS3, None) => (PlannedSse::S3, SSE_S3_KEY_ALIAS.to_owned()),
            (EncryptionRequest::SseKms | EncryptionRequest::BucketDefault, Some(id)) => {
                (PlannedSse::Kms, id.clone())
            }
            (EncryptionRequest::SseKms, None) => (PlannedSse::Kms, default_kms_key()),
            (EncryptionRequest::BucketDefault, None) => match &info.encryption {
                Some(e) if e.algorithm == SseAlgorithm::AwsKms => {
                    (PlannedSse::Kms, default_kms_key())
                }
                _ => (PlannedSse::S3, SSE_S3_KEY_ALIAS.to_owned()),
            },
        };
        let content_type = opts
            .content_type
            .clone()
            .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
        check_text("the content type", &content_type, MAX_CONTENT_TYPE_LEN)?;
        check_user_metadata(&opts.user_metadata)?;
        validate_tags(&opts.tags, MAX_OBJECT_TAGS)?;
        for (name, value) in &opts.system_metadata {
            if !SYSTEM_METADATA.contains(&name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "'{}' is not a header atrest stores",
                    name.chars().take(64).collect::<String>()
                )));
            }
            check_text(name, value, MAX_USER_METADATA_BYTES)?;
        }
        let context = object_context(bucket, key, &opts.encryption_context)?;
        let customer = matches!(sse, PlannedSse::Customer(_));
        if customer && !opts.encryption_context.is_empty() {
            return Err(Error::InvalidArgument(
                "an encryption context goes only with SSE-KMS".into(),
            ));
        }
        let bucket_key = bucket_key_enabled.unwrap_or_else(|| {
            info.encryption
                .as_ref()
                .is_some_and(|e| e.bucket_key_enabled)
        }) && opts.encryption_context.is_empty()
            && !customer;
        Ok(PutPlan {
            sse,
            key_id,
            content_type,
            context,
            bucket_key,
        })
    }

    /// A fresh key for a new object: derived from the bucket key, or a data key of
    /// its own (GenerateDataKey under the object's encryption context).
    fn new_upload_key(
        &self,
        kms: &dyn KeyService,
        bucket: &str,
        key: &str,
        plan: &PutPlan,
    ) -> Result<UploadKey, Error> {
        let key_id = plan.key_id.clone();
        let context = plan.context.clone();
        let sse = match &plan.sse {
            PlannedSse::Kms => Sse::Kms,
            PlannedSse::S3 => Sse::S3,
            PlannedSse::Customer(customer) => {
                let mut salt = [0u8; CUSTOMER_KEY_SALT_LEN];
                fill_random(&mut salt);
                return Ok(UploadKey {
                    sse: Sse::Customer {
                        salt,
                        key_check: customer.key_check(&salt),
                    },
                    key: customer.object_key(&salt, &object_arn(bucket, key)),
                    key_arn: String::new(),
                    wrapped: Vec::new(),
                    bucket_key_salt: None,
                    context: EncryptionContext::new(),
                });
            }
        };
        Ok(if plan.bucket_key {
            let (bucket_key, key_arn, wrapped) = self.current_bucket_key(kms, bucket, &key_id)?;
            let mut salt = [0u8; BUCKET_KEY_SALT_LEN];
            fill_random(&mut salt);
            UploadKey {
                sse,
                key: derive_object_key(&bucket_key, &salt, &object_arn(bucket, key)),
                key_arn,
                wrapped,
                bucket_key_salt: Some(salt),
                context: bucket_context(bucket),
            }
        } else {
            let data_key = kms.generate_data_key(&GenerateDataKeyRequest {
                key_id,
                spec: DataKeySpec::Aes256,
                encryption_context: context.clone(),
            })?;
            UploadKey {
                sse,
                key: key32(data_key.plaintext.expose()).ok_or_else(|| {
                    Error::InvalidArgument(
                        "the key service returned a data key that is not 32 bytes".into(),
                    )
                })?,
                key_arn: data_key.key_id.clone(),
                wrapped: data_key.ciphertext_blob.clone(),
                bucket_key_salt: None,
                context,
            }
        })
    }

    /// Seals `body` under `upload_key` into a new object file and makes it the object.
    /// `multipart` is the ETag digest and part count of a completed multipart upload.
    #[allow(clippy::too_many_arguments)]
    fn seal_and_commit(
        &self,
        bucket: &str,
        key: &str,
        upload_key: UploadKey,
        content_type: String,
        body: &mut dyn Read,
        opts: &PutObjectOptions,
        multipart: Option<([u8; 16], u32)>,
    ) -> Result<ObjectInfo, Error> {
        let bound = BoundHeader {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            key_arn: upload_key.key_arn.clone(),
            wrapped_key: upload_key.wrapped.clone(),
            bucket_key_salt: upload_key.bucket_key_salt,
            content_type,
            encryption_context: upload_key.context.clone(),
            user_metadata: opts.user_metadata.clone(),
            system_metadata: opts.system_metadata.clone(),
            nonce_prefix: [0; NONCE_PREFIX_LEN],
            sse: upload_key.sse,
        };
        let mut bound = bound;
        if self.bucket(bucket)?.versioning == Some(Versioning::Enabled) {
            bound
                .system_metadata
                .insert(VERSION_ID_KEY.to_owned(), versions::new_version_id());
        }
        // An SSE-C object's ETag is not the MD5 of its plaintext (as on S3): the MD5
        // would let anyone holding the file confirm a guess of its content.
        let etag = match (upload_key.sse, multipart) {
            (_, Some((etag, _))) => Some(etag),
            (Sse::Customer { .. }, None) => {
                let mut random = [0u8; 16];
                fill_random(&mut random);
                Some(random)
            }
            (_, None) => None,
        };
        let (file, tmp_path, header) =
            self.seal_to_temp(bound, &upload_key.key, body, opts.content_md5, etag)?;
        drop(upload_key);
        let result = self.commit(
            &file,
            &tmp_path,
            bucket,
            key,
            header,
            opts.acl,
            multipart.map(|m| m.1),
            opts.condition.as_ref(),
            &opts.tags,
            &opts.checksum,
        );
        if result.is_err() {
            let _ = fs::remove_file(&tmp_path);
        }
        result
    }

    /// Seals `body` under `key` (with a fresh nonce prefix) into a new, locked
    /// temporary file of `bound`'s bucket; the file is not yet fsynced. `etag`
    /// replaces the body's MD5 in the summary (a multipart object's ETag digest).
    fn seal_to_temp(
        &self,
        mut bound: BoundHeader,
        key: &Key32,
        body: &mut dyn Read,
        content_md5: Option<[u8; 16]>,
        etag: Option<[u8; 16]>,
    ) -> Result<(File, PathBuf, ObjectHeader), Error> {
        fill_random(&mut bound.nonce_prefix);
        let nonce_prefix = bound.nonce_prefix;
        let header_len = ObjectHeader::encoded_len(&bound)
            .map_err(|e| Error::InvalidArgument(format!("object metadata: {e}")))?;
        let digest = ObjectHeader::bound_digest(&bound)
            .map_err(|e| Error::InvalidArgument(format!("object metadata: {e}")))?;
        let cipher = SegmentCipher::new(&key[..], nonce_prefix, digest).map_err(|_| {
            Error::InvalidArgument("the object key could not be made into a cipher".into())
        })?;
        let tmp_path = self
            .bucket_dir(&bound.bucket)
            .join(TMP_DIR)
            .join(random_name(".part"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp_path)
            .map_err(io_err(format!("create {}", tmp_path.display())))?;
        let upload = Upload {
            file: &file,
            path: &tmp_path,
            cipher: &cipher,
            header_len: header_len as u64,
            content_md5,
            etag,
        };
        let result = file
            .try_lock()
            .map_err(|e| Error::Io {
                context: format!("lock {}", tmp_path.display()),
                source: io::Error::other(e.to_string()),
            })
            .and_then(|()| upload.run(body, bound));
        match result {
            Ok(header) => Ok((file, tmp_path, header)),
            Err(err) => {
                let _ = fs::remove_file(&tmp_path);
                Err(err)
            }
        }
    }

    /// Makes an uploaded temporary file the object: fsync, then (fail-closed order for
    /// the ACL) rename. `parts` is a multipart object's part count.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        file: &File,
        tmp_path: &Path,
        bucket: &str,
        key: &str,
        header: ObjectHeader,
        acl: Acl,
        parts: Option<u32>,
        condition: Option<&Condition>,
        tags: &TagSet,
        checksum: &BodyChecksum,
    ) -> Result<ObjectInfo, Error> {
        file.sync_all()
            .map_err(io_err(format!("fsync {}", tmp_path.display())))?;
        let _commit = self.lock_commits(bucket)?;
        self.check_condition(bucket, key, condition)?;
        if let Some(status) = self.bucket(bucket)?.versioning {
            self.demote_current(bucket, key, status)?;
        }
        let path = self.object_path(bucket, key);
        let acl_path = Self::acl_path(&path);
        // A private object must never be readable under an old public ACL: drop the
        // ACL before the object appears. A public one is made public only after.
        if acl == Acl::Private {
            Self::remove_if_exists(&acl_path)?;
        }
        // Nor show the tags of the object it replaces.
        let tags_path = path.with_extension(TAGS_EXT);
        Self::remove_if_exists(&tags_path)?;
        // Like the part count, the checksum names the ETag it belongs to.
        let checksum_path = path.with_extension(CHECKSUM_EXT);
        match checksum.get() {
            Some((name, value)) => {
                let line = format!("{name} {value} {}\n", hex::encode(header.summary.etag));
                write_atomic(&checksum_path, line.as_bytes())?;
            }
            None => {
                Self::remove_if_exists(&checksum_path)?;
            }
        }
        // The sidecar names the ETag digest it belongs to, so a stale one (a crash
        // before the rename, or left by an older object) is ignored.
        let parts_path = path.with_extension(PARTS_EXT);
        if let Some(n) = parts {
            let line = format!("{n} {}\n", hex::encode(header.summary.etag));
            write_atomic(&parts_path, line.as_bytes())?;
        }
        fs::rename(tmp_path, &path).map_err(io_err(format!("rename into {}", path.display())))?;
        if parts.is_none() {
            Self::remove_if_exists(&parts_path)?;
        }
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        if acl == Acl::PublicRead {
            write_atomic(&acl_path, Acl::PublicRead.as_str().as_bytes())?;
        }
        if !tags.is_empty() {
            write_atomic(&tags_path, &Self::tags_json(tags)?)?;
        }
        Ok(Self::info(&header, acl, parts))
    }

    /// The bucket's commit lock (held until the guard drops).
    fn lock_commits(&self, bucket: &str) -> Result<File, Error> {
        let path = self.bucket_dir(bucket).join(COMMIT_LOCK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        file.lock()
            .map_err(io_err(format!("lock {}", path.display())))?;
        Ok(file)
    }

    /// Checks a conditional write against the object as it is now (the caller holds
    /// the commit lock).
    fn check_condition(
        &self,
        bucket: &str,
        key: &str,
        condition: Option<&Condition>,
    ) -> Result<(), Error> {
        let Some(condition) = condition else {
            return Ok(());
        };
        let current = match self.head_object(bucket, key) {
            Ok(info) => Some(info.etag),
            Err(Error::NoSuchKey { .. }) => None,
            Err(err) => return Err(err),
        };
        match (condition, current) {
            (Condition::Absent, None) => Ok(()),
            (Condition::Absent, Some(_)) => Err(Error::PreconditionFailed(
                "If-None-Match: an object with this key exists".into(),
            )),
            (Condition::EtagMatches(_), None) => Err(Error::NoSuchKey {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            }),
            (Condition::EtagMatches(wanted), Some(etag)) if etag_matches(wanted, &etag) => Ok(()),
            (Condition::EtagMatches(_), Some(_)) => Err(Error::PreconditionFailed(
                "If-Match: the object's ETag is another".into(),
            )),
        }
    }

    /// A multipart object's part count, from its sidecar when that belongs to
    /// `header`'s ETag digest.
    fn read_parts(object_path: &Path, header: &ObjectHeader) -> Result<Option<u32>, Error> {
        let path = object_path.with_extension(PARTS_EXT);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("read {}", path.display()),
                    source,
                })
            }
        };
        let parsed = text
            .trim()
            .split_once(' ')
            .and_then(|(n, etag)| Some((n.parse::<u32>().ok()?, etag)));
        let Some((n, etag)) = parsed else {
            return Err(Error::Corrupted {
                path,
                what: "unreadable part count".into(),
            });
        };
        Ok((etag == hex::encode(header.summary.etag)).then_some(n))
    }

    /// The object's metadata with its ACL and (multipart) part count.
    fn read_info(object_path: &Path, header: &ObjectHeader) -> Result<ObjectInfo, Error> {
        Ok(Self::info(
            header,
            Self::read_acl(object_path)?,
            Self::read_parts(object_path, header)?,
        ))
    }

    fn remove_if_exists(path: &Path) -> Result<bool, Error> {
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Io {
                context: format!("remove {}", path.display()),
                source,
            }),
        }
    }

    fn info(header: &ObjectHeader, acl: Acl, parts: Option<u32>) -> ObjectInfo {
        let b = &header.bound;
        let s = &header.summary;
        let etag = match parts {
            Some(n) => format!("{}-{n}", hex::encode(s.etag)),
            None => hex::encode(s.etag),
        };
        let mut system_metadata = b.system_metadata.clone();
        let version_id = system_metadata.remove(VERSION_ID_KEY);
        ObjectInfo {
            bucket: b.bucket.clone(),
            key: b.key.clone(),
            size: s.plaintext_len,
            etag,
            content_type: b.content_type.clone(),
            user_metadata: b.user_metadata.clone(),
            system_metadata,
            version_id,
            kms_key_arn: b.key_arn.clone(),
            encryption_context: b.encryption_context.clone(),
            bucket_key_enabled: b.bucket_key_salt.is_some(),
            sse: b.sse,
            last_modified: OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(s.last_modified_ms) * 1_000_000,
            )
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            acl,
        }
    }

    fn read_acl(object_path: &Path) -> Result<Acl, Error> {
        let path = Self::acl_path(object_path);
        match fs::read_to_string(&path) {
            Ok(text) => Acl::parse(text.trim()).map_err(|_| Error::Corrupted {
                path,
                what: "unknown ACL".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Acl::Private),
            Err(source) => Err(Error::Io {
                context: format!("read {}", path.display()),
                source,
            }),
        }
    }

    /// Opens the object file and checks its header: parses, names this bucket and
    /// key, and the file is exactly as long as the header says.
    fn open_object(&self, bucket: &str, key: &str) -> Result<(File, PathBuf, ObjectHeader), Error> {
        validate_object_key(key)?;
        self.bucket(bucket)?;
        let path = match &self.version {
            None => self.object_path(bucket, key),
            Some(id) => self.version_path(bucket, key, id)?,
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NoSuchKey {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                })
            }
            Err(source) => {
                return Err(Error::Io {
                    context: format!("open {}", path.display()),
                    source,
                })
            }
        };
        let header = read_header(&file, &path)?;
        let corrupted = |what: String| Error::Corrupted {
            path: path.clone(),
            what,
        };
        if header.bound.bucket != bucket || header.bound.key != key {
            return Err(corrupted(
                "the file belongs to another bucket or key".into(),
            ));
        }
        let header_len =
            ObjectHeader::encoded_len(&header.bound).map_err(|e| corrupted(e.0))? as u64;
        let expected = header_len + sealed_len(header.summary.plaintext_len);
        let actual = file
            .metadata()
            .map_err(io_err(format!("stat {}", path.display())))?
            .len();
        if actual != expected {
            return Err(corrupted(format!(
                "the file is {actual} bytes; its header promises {expected}"
            )));
        }
        Ok((file, path, header))
    }

    /// HeadObject: metadata only, no key-service call.
    pub fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectInfo, Error> {
        let (_, path, header) = self.open_object(bucket, key)?;
        Self::read_info(&path, &header)
    }

    /// GetObject, optionally of one range: unwraps the object's data key with one
    /// (audited) Decrypt under the object's encryption context, and returns a reader
    /// that decrypts and authenticates only the segments the range touches.
    pub fn get_object(
        &self,
        kms: &dyn KeyService,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<ObjectDownload, Error> {
        self.get_object_with_key(kms, bucket, key, range, None)
    }

    /// HeadObject with S3's SSE-C rule: an SSE-C object's metadata only for the
    /// request that sends its key; SSE-C headers on another object are refused.
    pub fn head_object_with_key(
        &self,
        bucket: &str,
        key: &str,
        customer: Option<&CustomerKey>,
    ) -> Result<ObjectInfo, Error> {
        let (_, path, header) = self.open_object(bucket, key)?;
        check_customer_key(&header, customer)?;
        Self::read_info(&path, &header)
    }

    /// GetObject that also serves SSE-C objects: `customer` must be the object's key
    /// (checked against the header's key check before anything is decrypted).
    pub fn get_object_with_key(
        &self,
        kms: &dyn KeyService,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        customer: Option<&CustomerKey>,
    ) -> Result<ObjectDownload, Error> {
        let (file, path, header) = self.open_object(bucket, key)?;
        check_customer_key(&header, customer)?;
        let info = Self::read_info(&path, &header)?;
        let size = header.summary.plaintext_len;
        let resolved = range.map(|r| r.resolve(size)).transpose()?;
        if let (Sse::Customer { salt, .. }, Some(customer)) = (header.bound.sse, customer) {
            let object_key = customer.object_key(&salt, &object_arn(bucket, key));
            return Self::download(file, path, header, info, &object_key, resolved);
        }
        let expected_arn = match header.bound.bucket_key_salt {
            Some(_) => bucket_arn(bucket),
            None => object_arn(bucket, key),
        };
        if header.bound.encryption_context.get(S3_ARN_CONTEXT_KEY) != Some(&expected_arn) {
            return Err(Error::Corrupted {
                path,
                what: "the encryption context names another object or bucket".into(),
            });
        }
        let object_key = match &header.bound.bucket_key_salt {
            Some(salt) => {
                let bucket_key = self.unwrap_bucket_key(
                    kms,
                    &header.bound.wrapped_key,
                    header.bound.encryption_context.clone(),
                    &header.bound.key_arn,
                )?;
                derive_object_key(&bucket_key, salt, &object_arn(bucket, key))
            }
            None => {
                let data_key = kms.decrypt(&DecryptRequest {
                    ciphertext_blob: header.bound.wrapped_key.clone(),
                    encryption_context: header.bound.encryption_context.clone(),
                    key_id: Some(header.bound.key_arn.clone()),
                })?;
                key32(data_key.plaintext.expose()).ok_or_else(|| Error::Corrupted {
                    path: path.clone(),
                    what: "the data key is not 32 bytes".into(),
                })?
            }
        };
        Self::download(file, path, header, info, &object_key, resolved)
    }

    /// The decrypting reader of an opened object under its key.
    fn download(
        file: File,
        path: PathBuf,
        header: ObjectHeader,
        info: ObjectInfo,
        object_key: &Key32,
        resolved: Option<(u64, u64)>,
    ) -> Result<ObjectDownload, Error> {
        let size = header.summary.plaintext_len;
        let digest = ObjectHeader::bound_digest(&header.bound).map_err(|e| Error::Corrupted {
            path: path.clone(),
            what: e.0,
        })?;
        let cipher = SegmentCipher::new(&object_key[..], header.bound.nonce_prefix, digest)
            .map_err(|_| Error::Corrupted {
                path: path.clone(),
                what: "the object key could not be made into a cipher".into(),
            })?;
        let header_len = ObjectHeader::encoded_len(&header.bound).map_err(|e| Error::Corrupted {
            path: path.clone(),
            what: e.0,
        })? as u64;
        let (start, end) = match resolved {
            Some((first, last)) => (first, last + 1),
            None => (0, size),
        };
        let body = ObjectReader::new(file, path, cipher, header_len, header.summary, start, end);
        Ok(ObjectDownload {
            info,
            range: resolved,
            body,
        })
    }

    /// DeleteObject. Deleting a key that does not exist succeeds, as on S3; the
    /// answer says whether an object was removed.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<bool, Error> {
        self.delete_object_if(bucket, key, None)
    }

    /// DeleteObject with `If-Match` (`Some(etag)`): deletes only the object with
    /// that ETag (PreconditionFailed otherwise, NoSuchKey when there is none), checked
    /// under the commit lock so that no write slips between check and removal.
    pub fn delete_object_if(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&str>,
    ) -> Result<bool, Error> {
        Ok(self
            .delete_object_version(bucket, key, if_match, None)?
            .removed)
    }

    /// DeleteObject with S3's versioning: in a bucket with versioning configured,
    /// without `version_id` a delete marker is made; with one, that version is
    /// removed for good. `if_match` is checked against the current object.
    pub fn delete_object_version(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&str>,
        version_id: Option<&str>,
    ) -> Result<Deleted, Error> {
        validate_object_key(key)?;
        let info = self.bucket(bucket)?;
        let _commit = self.lock_commits(bucket)?;
        if let Some(etag) = if_match {
            self.check_condition(bucket, key, Some(&Condition::EtagMatches(etag.to_owned())))?;
        }
        if let Some(status) = info.versioning {
            let outcome = self.delete_versioned(bucket, key, status, version_id)?;
            return Ok(Deleted {
                removed: true,
                outcome,
            });
        }
        if let Some(id) = version_id {
            // Without versioning every object is the null version.
            if id != versions::NULL_VERSION {
                return Err(Error::NoSuchVersion {
                    key: key.to_owned(),
                    version_id: id.chars().take(64).collect(),
                });
            }
        }
        let path = self.object_path(bucket, key);
        let removed = Self::remove_if_exists(&path)?;
        Self::remove_if_exists(&Self::acl_path(&path))?;
        Self::remove_if_exists(&path.with_extension(PARTS_EXT))?;
        Self::remove_if_exists(&path.with_extension(TAGS_EXT))?;
        Self::remove_if_exists(&path.with_extension(CHECKSUM_EXT))?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(Deleted {
            removed,
            outcome: versions::DeleteOutcome {
                version_id: None,
                delete_marker: false,
            },
        })
    }

    /// PutObjectAcl (canned).
    pub fn put_object_acl(&self, bucket: &str, key: &str, acl: Acl) -> Result<(), Error> {
        let (_, path, _) = self.open_object(bucket, key)?;
        let acl_path = Self::acl_path(&path);
        match acl {
            Acl::Private => {
                Self::remove_if_exists(&acl_path)?;
                sync_dir(path.parent().unwrap_or(Path::new(".")))
            }
            Acl::PublicRead => write_atomic(&acl_path, acl.as_str().as_bytes()),
        }
    }

    fn tags_json(tags: &TagSet) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(tags).map_err(|e| Error::Io {
            context: "encode tags".into(),
            source: io::Error::other(e),
        })
    }

    /// PutObjectTagging (replaces the tag set; an empty one removes it), under the
    /// commit lock: the tags land on the object that exists when they are written, and
    /// a PUT that replaces it afterwards also replaces them.
    pub fn put_object_tagging(&self, bucket: &str, key: &str, tags: &TagSet) -> Result<(), Error> {
        validate_tags(tags, MAX_OBJECT_TAGS)?;
        validate_object_key(key)?;
        self.bucket(bucket)?;
        let _commit = self.lock_commits(bucket)?;
        let (_, path, _) = self.open_object(bucket, key)?;
        let tags_path = path.with_extension(TAGS_EXT);
        if tags.is_empty() {
            Self::remove_if_exists(&tags_path)?;
            return sync_dir(path.parent().unwrap_or(Path::new(".")));
        }
        write_atomic(&tags_path, &Self::tags_json(tags)?)
    }

    /// GetObjectTagging: the object's tags (empty when it has none).
    pub fn object_tagging(&self, bucket: &str, key: &str) -> Result<TagSet, Error> {
        let (_, path, _) = self.open_object(bucket, key)?;
        let tags_path = path.with_extension(TAGS_EXT);
        match fs::read(&tags_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupted {
                path: tags_path,
                what: format!("tag set: {e}"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TagSet::new()),
            Err(source) => Err(Error::Io {
                context: format!("read {}", tags_path.display()),
                source,
            }),
        }
    }

    /// The checksum the object was uploaded with (`x-amz-checksum-*` header name and
    /// value), when its sidecar belongs to the object's ETag.
    pub fn object_checksum(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(String, String)>, Error> {
        let (_, path, header) = self.open_object(bucket, key)?;
        let sidecar = path.with_extension(CHECKSUM_EXT);
        let text = match fs::read_to_string(&sidecar) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("read {}", sidecar.display()),
                    source,
                })
            }
        };
        let mut fields = text.split_ascii_whitespace();
        match (fields.next(), fields.next(), fields.next(), fields.next()) {
            (Some(name), Some(value), Some(etag), None) => Ok((etag
                == hex::encode(header.summary.etag))
            .then(|| (name.to_owned(), value.to_owned()))),
            _ => Err(Error::Corrupted {
                path: sidecar,
                what: "unreadable checksum".into(),
            }),
        }
    }

    /// PutBucketTagging (`Some`) or DeleteBucketTagging (`None`).
    pub fn put_bucket_tagging(&self, name: &str, tags: Option<TagSet>) -> Result<(), Error> {
        if let Some(tags) = &tags {
            validate_tags(tags, MAX_BUCKET_TAGS)?;
        }
        self.update_bucket(name, |info| info.tags = tags)?;
        Ok(())
    }

    /// PutBucketPolicy (`Some`, already validated by the caller) or
    /// DeleteBucketPolicy (`None`).
    pub fn put_bucket_policy(&self, name: &str, policy: Option<String>) -> Result<(), Error> {
        self.update_bucket(name, |info| info.policy = policy)?;
        Ok(())
    }

    /// PutPublicAccessBlock (`Some`) or DeletePublicAccessBlock (`None`).
    pub fn put_public_access_block(
        &self,
        name: &str,
        block: Option<PublicAccessBlock>,
    ) -> Result<(), Error> {
        self.update_bucket(name, |info| info.public_access_block = block)?;
        Ok(())
    }

    /// GetBucketPolicy; NoSuchBucketPolicy when the bucket has none.
    pub fn bucket_policy(&self, name: &str) -> Result<String, Error> {
        self.bucket(name)?
            .policy
            .ok_or_else(|| Error::NoSuchBucketPolicy {
                bucket: name.to_owned(),
            })
    }

    /// GetBucketTagging; NoSuchTagSet when the bucket has none.
    pub fn bucket_tagging(&self, name: &str) -> Result<TagSet, Error> {
        self.bucket(name)?.tags.ok_or_else(|| Error::NoSuchTagSet {
            bucket: name.to_owned(),
        })
    }

    /// GetObjectAcl (canned).
    pub fn object_acl(&self, bucket: &str, key: &str) -> Result<Acl, Error> {
        let (_, path, _) = self.open_object(bucket, key)?;
        Self::read_acl(&path)
    }

    /// ListObjectsV2. Reads every object header of the bucket (no key-service call):
    /// cost grows with the bucket, which suits one machine's buckets.
    pub fn list_objects_v2(
        &self,
        bucket: &str,
        req: &ListObjectsRequest,
    ) -> Result<ListObjectsPage, Error> {
        self.bucket(bucket)?;
        let dir = self.bucket_dir(bucket).join(OBJECTS_DIR);
        let mut all: Vec<(String, PathBuf, ObjectHeader)> = headers_in(&dir, |path| {
            path.extension()
                .is_some_and(|x| x == OBJECT_EXT)
                .then_some(())
        })?
        .into_iter()
        .map(|((), path, header)| (header.bound.key.clone(), path, header))
        .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let keys: Vec<String> = all.iter().map(|(k, _, _)| k.clone()).collect();
        let plan = plan_page(&keys, req)?;
        let objects = plan
            .keys
            .iter()
            .map(|&i| {
                let (_, path, header) = &all[i];
                Self::read_info(path, header)
            })
            .collect::<Result<_, Error>>()?;
        Ok(ListObjectsPage {
            objects,
            common_prefixes: plan.common_prefixes,
            next_continuation_token: plan.next_continuation_token,
        })
    }
}

/// S3's SSE-C rules for reading an object: its key is required for an SSE-C object
/// and refused for any other.
fn check_customer_key(header: &ObjectHeader, customer: Option<&CustomerKey>) -> Result<(), Error> {
    match (header.bound.sse, customer) {
        (Sse::Customer { salt, key_check }, Some(customer)) => {
            if customer.matches(&salt, &key_check) {
                Ok(())
            } else {
                Err(Error::CustomerKeyMismatch)
            }
        }
        (Sse::Customer { .. }, None) => Err(Error::CustomerKeyRequired),
        (Sse::Kms | Sse::S3, Some(_)) => Err(Error::CustomerKeyNotApplicable),
        (Sse::Kms | Sse::S3, None) => Ok(()),
    }
}

/// The bucket key recorded at `path` for `kms_key_id` when new objects may still use
/// it: the CMK's ARN and the wrapped key.
fn current_record(path: &Path, kms_key_id: &str) -> Result<Option<(String, Vec<u8>)>, Error> {
    let corrupted = |what: String| Error::Corrupted {
        path: path.to_path_buf(),
        what: format!("bucket key record: {what}"),
    };
    let record: BucketKeyRecord = match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupted(e.to_string()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                context: format!("read {}", path.display()),
                source,
            })
        }
    };
    if !record.is_current(now()) || record.kms_key_id != kms_key_id {
        return Ok(None);
    }
    let wrapped = BASE64
        .decode(&record.wrapped_key)
        .map_err(|_| corrupted("the wrapped key is not base64".into()))?;
    Ok(Some((record.kms_key_arn, wrapped)))
}

/// The headers of the files in `dir` that `pick` accepts, with what `pick` made of
/// each path. A file removed between the listing and the open is skipped.
fn headers_in<T>(
    dir: &Path,
    pick: impl Fn(&Path) -> Option<T>,
) -> Result<Vec<(T, PathBuf, ObjectHeader)>, Error> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))? {
        let path = entry
            .map_err(io_err(format!("list {}", dir.display())))?
            .path();
        let Some(picked) = pick(&path) else { continue };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Io {
                    context: format!("open {}", path.display()),
                    source,
                })
            }
        };
        let header = read_header(&file, &path)?;
        found.push((picked, path, header));
    }
    Ok(found)
}

/// Reads and decodes the header at the start of an object file.
fn read_header(file: &File, path: &Path) -> Result<ObjectHeader, Error> {
    let corrupted = |what: String| Error::Corrupted {
        path: path.to_path_buf(),
        what,
    };
    let read = |buf: &mut [u8]| {
        file.read_exact_at(buf, 0).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                corrupted("the file is shorter than its header".into())
            } else {
                Error::Io {
                    context: format!("read {}", path.display()),
                    source: e,
                }
            }
        })
    };
    let mut fixed = [0u8; ObjectHeader::FIXED_LEN];
    read(&mut fixed)?;
    let len = ObjectHeader::peek_len(&fixed).map_err(|e| corrupted(e.0))?;
    let mut bytes = vec![0u8; len as usize];
    read(&mut bytes)?;
    ObjectHeader::decode(&bytes).map_err(|e| corrupted(e.0))
}

/// What a PUT resolved before reading its body ([`ObjectStore::plan_put`]).
struct PutPlan {
    /// SSE-KMS or SSE-S3 under `key_id`, or SSE-C under the customer's key.
    sse: PlannedSse,
    key_id: String,
    content_type: String,
    /// The object's full encryption context.
    context: EncryptionContext,
    bucket_key: bool,
}

enum PlannedSse {
    Kms,
    S3,
    Customer(Arc<CustomerKey>),
}

/// Whether `etag` (as a client sends it: quoted or not, or `*`) names `current`.
fn etag_matches(wanted: &str, current: &str) -> bool {
    wanted.split(',').any(|one| {
        let one = one.trim();
        let one = one.strip_prefix("W/").unwrap_or(one);
        one == "*" || one.trim_matches('"') == current
    })
}

/// One upload in progress into a temporary file.
struct Upload<'a> {
    file: &'a File,
    path: &'a Path,
    cipher: &'a SegmentCipher,
    header_len: u64,
    /// `Content-MD5`: the upload fails with BadDigest when the body's MD5 differs.
    content_md5: Option<[u8; 16]>,
    /// Recorded instead of the body's MD5 (a multipart object's ETag digest).
    etag: Option<[u8; 16]>,
}

impl Upload<'_> {
    /// Seals the body batch by batch after the (not yet written) header, then writes
    /// the header with its summary. Returns the header.
    fn run(&self, body: &mut dyn Read, bound: BoundHeader) -> Result<ObjectHeader, Error> {
        let mut plain = vec![0u8; WINDOW_SEGMENTS * SEG];
        let mut sealed = Vec::with_capacity(WINDOW_SEGMENTS * SEALED_SEG);
        let mut md5 = Md5::new();
        let mut carry: Option<u8> = None;
        let mut total: u64 = 0;
        let mut index: u64 = 0;
        let mut offset = self.header_len;
        loop {
            let start = match carry.take() {
                Some(b) => {
                    plain[0] = b;
                    1
                }
                None => 0,
            };
            let n = start + fill(body, &mut plain[start..])?;
            // A full window may be the last one: look one byte ahead to know.
            let is_final = if n == plain.len() {
                let mut one = [0u8; 1];
                if fill(body, &mut one)? == 1 {
                    carry = Some(one[0]);
                    false
                } else {
                    true
                }
            } else {
                true
            };
            total = total
                .checked_add(n as u64)
                .filter(|&t| t <= MAX_OBJECT_SIZE)
                .ok_or(Error::TooLarge {
                    max: MAX_OBJECT_SIZE,
                })?;
            let batch = &plain[..n];
            let unsealable = |_| Error::Io {
                context: format!("seal segments of {}", self.path.display()),
                source: io::Error::other("AES-GCM refused to seal a segment"),
            };
            if is_final {
                md5.update(batch);
                let md5: [u8; 16] = md5.finalize().into();
                if self.content_md5.is_some_and(|want| want != md5) {
                    return Err(Error::BadDigest);
                }
                let etag = self.etag.unwrap_or(md5);
                let summary = Summary {
                    plaintext_len: total,
                    etag,
                    last_modified_ms: (now().unix_timestamp_nanos() / 1_000_000) as i64,
                };
                self.cipher
                    .seal_batch(index, batch, Some(&summary), &mut sealed)
                    .map_err(unsealable)?;
                self.write(&sealed, offset)?;
                let header = ObjectHeader { bound, summary };
                let bytes = header
                    .encode()
                    .map_err(|e| Error::InvalidArgument(format!("object metadata: {e}")))?;
                self.write(&bytes, 0)?;
                debug_assert_eq!(index + segment_count(n as u64), segment_count(total));
                return Ok(header);
            }
            // The MD5 runs on one core while the segments are sealed on the others.
            let (_, sealed_result) = rayon::join(
                || md5.update(batch),
                || self.cipher.seal_batch(index, batch, None, &mut sealed),
            );
            sealed_result.map_err(unsealable)?;
            self.write(&sealed, offset)?;
            offset += sealed.len() as u64;
            index += WINDOW_SEGMENTS as u64;
        }
    }

    fn write(&self, bytes: &[u8], at: u64) -> Result<(), Error> {
        self.file
            .write_all_at(bytes, at)
            .map_err(io_err(format!("write {}", self.path.display())))
    }
}
