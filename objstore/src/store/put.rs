//! Writing objects: PutObject (plan, key, seal, commit under the bucket's commit lock,
//! conditional writes), DeleteObject, and the object sub-resources a write replaces
//! (ACL, tags).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crypto_core::kms::{DataKeySpec, EncryptionContext, GenerateDataKeyRequest, KeyService};
use crypto_core::secret::fill_random;
use md5::{Digest, Md5};

use crate::aead::{SegmentCipher, SEALED_SEG};
use crate::bucket_key::{derive_object_key, Key32};
use crate::customer_key::CustomerKey;
use crate::format::{
    segment_count, BoundHeader, ObjectHeader, Sse, Summary, BUCKET_KEY_SALT_LEN,
    CUSTOMER_KEY_SALT_LEN, MAX_CONTENT_TYPE_LEN, MAX_OBJECT_SIZE, NONCE_PREFIX_LEN,
};
use crate::names::{object_arn, validate_object_key};
use crate::reader::WINDOW_SEGMENTS;
use crate::Error;

use super::{
    bucket_context, check_text, check_user_metadata, fill, io_err, key32, now, object_context,
    random_name, sync_dir, validate_tags, versions, write_atomic, Acl, BucketEncryption,
    ObjectInfo, ObjectStore, SseAlgorithm, TagSet, Versioning, CHECKSUM_EXT, COMMIT_LOCK,
    DEFAULT_CONTENT_TYPE, MAX_OBJECT_TAGS, MAX_USER_METADATA_BYTES, PARTS_EXT, SEG,
    SSE_S3_KEY_ALIAS, SYSTEM_METADATA, TAGS_EXT, TMP_DIR, VERSION_ID_KEY,
};

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
    /// `x-amz-acl`: the object's canned ACL.
    pub acl: Acl,
    /// `Content-MD5` (decoded): the upload fails with BadDigest when it differs.
    pub content_md5: Option<[u8; 16]>,
    /// `x-amz-server-side-encryption` and SSE-C headers.
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
    /// The version removed or the delete marker made.
    pub outcome: versions::DeleteOutcome,
}

/// The key an upload seals with, and what the object's header records about it.
pub(super) struct UploadKey {
    pub(super) sse: Sse,
    pub(super) key: Key32,
    pub(super) key_arn: String,
    pub(super) wrapped: Vec<u8>,
    pub(super) bucket_key_salt: Option<[u8; BUCKET_KEY_SALT_LEN]>,
    pub(super) context: EncryptionContext,
}

impl ObjectStore {
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
    pub(super) fn plan_put(
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
    pub(super) fn new_upload_key(
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
    pub(super) fn seal_and_commit(
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
    pub(super) fn seal_to_temp(
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
}

/// What a PUT resolved before reading its body ([`ObjectStore::plan_put`]).
pub(super) struct PutPlan {
    /// SSE-KMS or SSE-S3 under `key_id`, or SSE-C under the customer's key.
    pub(super) sse: PlannedSse,
    pub(super) key_id: String,
    pub(super) content_type: String,
    /// The object's full encryption context.
    pub(super) context: EncryptionContext,
    pub(super) bucket_key: bool,
}

pub(super) enum PlannedSse {
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
