//! [`ObjectStore`]: buckets and objects under `<home>/s3/` (layout in
//! `docs/FORMAT.md`).
//!
//! Every write goes to a temporary file that is fsynced and then renamed into place,
//! so a crash leaves either the old state or the new one, never a partial object.
//! Temporary uploads hold an exclusive `flock` while they run; [`ObjectStore::open`]
//! removes the ones nobody holds (left by a crashed upload).
//!
//! This file holds the store itself, its on-disk names and the helpers every part
//! shares (atomic writes, header reads); each S3 operation group has its own file:
//! `buckets` (bucket lifecycle, default encryption and bucket keys, bucket
//! sub-resources), `put` (PutObject, DeleteObject and what they replace), `get`
//! (HeadObject, GetObject, object sub-resources), `list` (ListObjectsV2),
//! `multipart`, `versions` and `lifecycle`. [`crate::reader::ObjectReader`] (a GET's
//! body) depends on nothing here.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crypto_core::kms::EncryptionContext;
use crypto_core::secret::fill_random;
use time::OffsetDateTime;

use crate::bucket_key::{BucketKeyCache, CacheScope, Key32, DEFAULT_CACHE_TTL};
use crate::format::{ObjectHeader, SEGMENT_SIZE};
use crate::names::{bucket_arn, object_arn, object_file_name};
use crate::Error;

mod buckets;
mod get;
pub(crate) mod lifecycle;
mod list;
pub(crate) mod multipart;
mod put;
pub(crate) mod versions;

pub use buckets::{
    validate_tags, Acl, BucketEncryption, BucketInfo, PublicAccessBlock, SseAlgorithm, TagSet,
};
pub use get::{ObjectDownload, ObjectInfo};
pub use list::ListObjectsPage;
pub use put::{BodyChecksum, Condition, Deleted, EncryptionRequest, PutObjectOptions};
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
/// S3's limit on tags per bucket.
pub const MAX_BUCKET_TAGS: usize = 50;
/// Sidecar of a multipart object: its part count, for the `-N` of its ETag.
const PARTS_EXT: &str = "parts";
/// Held (flock) while an object of the bucket is replaced or deleted, so that a
/// conditional write's check and its rename are one step for every other writer.
const COMMIT_LOCK: &str = "commit.lock";

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

/// What `read` (`fs::read` or `fs::read_to_string`) makes of `path`, or `None` when
/// there is no such file (an optional sidecar or record).
fn read_if_exists<T>(
    path: &Path,
    read: impl FnOnce(&Path) -> io::Result<T>,
) -> Result<Option<T>, Error> {
    match read(path) {
        Ok(contents) => Ok(Some(contents)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            context: format!("read {}", path.display()),
            source,
        }),
    }
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
