//! S3 multipart uploads: CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
//! AbortMultipartUpload, ListParts and ListMultipartUploads (layout in
//! `docs/FORMAT.md`, "Multipart uploads").
//!
//! An upload lives in `<bucket>/uploads/<UPLOAD-ID>/`: `upload.json` (what the
//! CreateMultipartUpload said, and the upload's wrapped key) and one encrypted file
//! per part. The upload key is made once, like an object's (GenerateDataKey under the
//! object's encryption context, or derived from the bucket key); each part is sealed
//! in the object format under a key derived from it with a fresh random salt, so no
//! two files share a key. Complete streams the parts, decrypting each, into a new
//! object sealed under a fresh key of its own, through the same atomic path as a
//! PutObject: plaintext never reaches the disk and memory stays bounded.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use crypto_core::kms::{DecryptRequest, EncryptionContext, KeyService};
use crypto_core::secret::fill_random;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::put::{PlannedSse, PutPlan};
use super::{
    create_dir_private, headers_in, io_err, key32, now, random_name, read_header, read_if_exists,
    sync_dir, write_atomic, Condition, EncryptionRequest, ObjectStore, PutObjectOptions,
};
use crate::aead::SegmentCipher;
use crate::bucket_key::{derive_object_key, Key32};
use crate::format::{BoundHeader, ObjectHeader, Sse, BUCKET_KEY_SALT_LEN, NONCE_PREFIX_LEN};
use crate::names::{object_arn, validate_object_key};
use crate::reader::ObjectReader;
use crate::{Acl, Error, ObjectInfo};

/// S3's smallest part, for every part but the last.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part number.
pub const MAX_PART_NUMBER: u32 = 10_000;

const UPLOADS_DIR: &str = "uploads";
const UPLOAD_FILE: &str = "upload.json";
const PART_EXT: &str = "part";

/// A multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipartUpload {
    /// The bucket the object will land in.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// The upload's id (`UploadId`).
    pub upload_id: String,
    /// The principal (ARN) that created the upload.
    pub initiator: String,
    /// When CreateMultipartUpload ran.
    pub initiated: OffsetDateTime,
    /// ARN of the CMK the upload's key is wrapped under.
    pub kms_key_arn: String,
    /// The upload key's encryption context (`aws:s3:arn` included).
    pub encryption_context: EncryptionContext,
    /// Whether the parts' keys derive from a bucket key.
    pub bucket_key_enabled: bool,
    /// SSE-KMS or SSE-S3 (`x-amz-server-side-encryption` of the final object).
    pub sse: Sse,
}

/// One uploaded part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    /// The part's number (1 to 10,000).
    pub part_number: u32,
    /// MD5 of the part's plaintext, lower-case hex, without quotes.
    pub etag: String,
    /// The part's plaintext size in bytes.
    pub size: u64,
    /// When the part was uploaded.
    pub last_modified: OffsetDateTime,
}

/// One entry of a CompleteMultipartUpload's part list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedPart {
    /// The part's number (1 to 10,000).
    pub part_number: u32,
    /// The part's ETag as UploadPart answered it (quotes allowed).
    pub etag: String,
}

/// `upload.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct UploadRecord {
    key: String,
    initiator: String,
    #[serde(with = "time::serde::rfc3339")]
    initiated: OffsetDateTime,
    content_type: String,
    user_metadata: BTreeMap<String, String>,
    acl: Acl,
    /// The caller's own encryption-context pairs (for the final object).
    user_context: EncryptionContext,
    /// The CMK as the request or the bucket default named it (for the final object).
    kms_key_id: String,
    bucket_key: bool,
    /// SSE-S3 (the final object's `x-amz-server-side-encryption: AES256`); absent in
    /// records written before SSE-S3.
    #[serde(default)]
    sse_s3: bool,
    /// The stored HTTP headers for the final object (absent in older records).
    #[serde(default)]
    system_metadata: BTreeMap<String, String>,
    /// `x-amz-tagging` of the final object (absent in older records).
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// The upload key: ARN of its CMK, wrapped key (base64), bucket-key salt (hex)
    /// when derived from a bucket key, and its encryption context.
    key_arn: String,
    wrapped_key: String,
    bucket_key_salt: Option<String>,
    context: EncryptionContext,
}

impl UploadRecord {
    fn wrapped(&self, path: &Path) -> Result<(Vec<u8>, Option<[u8; BUCKET_KEY_SALT_LEN]>), Error> {
        let corrupted = |what: &str| Error::Corrupted {
            path: path.to_path_buf(),
            what: format!("upload record: {what}"),
        };
        let wrapped = BASE64
            .decode(&self.wrapped_key)
            .map_err(|_| corrupted("the wrapped key is not base64"))?;
        let salt = self
            .bucket_key_salt
            .as_ref()
            .map(|text| {
                let mut salt = [0u8; BUCKET_KEY_SALT_LEN];
                hex::decode_to_slice(text, &mut salt)
                    .map(|()| salt)
                    .map_err(|_| corrupted("the bucket key salt is not 32 bytes of hex"))
            })
            .transpose()?;
        Ok((wrapped, salt))
    }
}

/// Upload ids are 32 lower-case hex digits (128 random bits).
fn valid_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn part_file_name(part_number: u32) -> String {
    format!("{part_number:05}.{PART_EXT}")
}

/// Strips the quotes S3 clients put around ETags.
fn bare_etag(etag: &str) -> &str {
    let etag = etag.trim();
    etag.strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(etag)
}

fn ms_to_time(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn part_info(part_number: u32, header: &ObjectHeader) -> PartInfo {
    PartInfo {
        part_number,
        etag: hex::encode(header.summary.etag),
        size: header.summary.plaintext_len,
        last_modified: ms_to_time(header.summary.last_modified_ms),
    }
}

impl ObjectStore {
    fn upload_dir(&self, bucket: &str, upload_id: &str) -> PathBuf {
        self.bucket_dir(bucket).join(UPLOADS_DIR).join(upload_id)
    }

    /// The upload's record and directory; NoSuchUpload unless it exists for `key`.
    fn open_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(UploadRecord, PathBuf), Error> {
        validate_object_key(key)?;
        self.bucket(bucket)?;
        let missing = || Error::NoSuchUpload {
            upload_id: upload_id.chars().take(64).collect(),
        };
        if !valid_upload_id(upload_id) {
            return Err(missing());
        }
        let dir = self.upload_dir(bucket, upload_id);
        let record = Self::read_record(&dir)?.ok_or_else(missing)?;
        if record.key != key {
            return Err(missing());
        }
        Ok((record, dir))
    }

    fn read_record(dir: &Path) -> Result<Option<UploadRecord>, Error> {
        let path = dir.join(UPLOAD_FILE);
        let Some(bytes) = read_if_exists(&path, |p| fs::read(p))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupted {
                path,
                what: format!("upload record: {e}"),
            })
    }

    fn upload_of(bucket: &str, upload_id: &str, record: &UploadRecord) -> MultipartUpload {
        MultipartUpload {
            bucket: bucket.to_owned(),
            key: record.key.clone(),
            upload_id: upload_id.to_owned(),
            initiator: record.initiator.clone(),
            initiated: record.initiated,
            kms_key_arn: record.key_arn.clone(),
            encryption_context: record.context.clone(),
            bucket_key_enabled: record.bucket_key_salt.is_some(),
            sse: if record.sse_s3 { Sse::S3 } else { Sse::Kms },
        }
    }

    /// The plaintext upload key: one Decrypt of its wrapped key (or of the bucket
    /// key, which this scope may hold unwrapped already).
    fn upload_key(
        &self,
        kms: &dyn KeyService,
        bucket: &str,
        record: &UploadRecord,
        path: &Path,
    ) -> Result<Key32, Error> {
        let (wrapped, salt) = record.wrapped(path)?;
        let arn = object_arn(bucket, &record.key);
        match salt {
            Some(salt) => {
                let bucket_key =
                    self.unwrap_bucket_key(kms, &wrapped, record.context.clone(), &record.key_arn)?;
                Ok(derive_object_key(&bucket_key, &salt, &arn))
            }
            None => {
                let data_key = kms.decrypt(&DecryptRequest {
                    ciphertext_blob: wrapped,
                    encryption_context: record.context.clone(),
                    key_id: Some(record.key_arn.clone()),
                })?;
                key32(data_key.plaintext.expose()).ok_or_else(|| Error::Corrupted {
                    path: path.to_path_buf(),
                    what: "the upload key is not 32 bytes".into(),
                })
            }
        }
    }

    /// CreateMultipartUpload: checks the options as PutObject does and makes the
    /// upload's key (one GenerateDataKey under the object's encryption context, or
    /// the bucket key). `initiator` is the caller's principal ARN.
    pub fn create_multipart_upload(
        &self,
        kms: &dyn KeyService,
        bucket: &str,
        key: &str,
        opts: &PutObjectOptions,
        bucket_key_enabled: Option<bool>,
        initiator: &str,
    ) -> Result<MultipartUpload, Error> {
        let plan = self.plan_put(bucket, key, opts, bucket_key_enabled)?;
        let sse_s3 = match plan.sse {
            PlannedSse::Kms => false,
            PlannedSse::S3 => true,
            PlannedSse::Customer(_) => {
                return Err(Error::InvalidArgument(
                    "atrest does not take SSE-C multipart uploads: upload the object with one \
                     PutObject (up to 5 TiB)"
                        .into(),
                ))
            }
        };
        let upload_key = self.new_upload_key(kms, bucket, key, &plan)?;
        let PutPlan {
            key_id,
            content_type,
            bucket_key,
            ..
        } = plan;
        let record = UploadRecord {
            key: key.to_owned(),
            initiator: initiator.to_owned(),
            initiated: now(),
            content_type,
            user_metadata: opts.user_metadata.clone(),
            acl: opts.acl,
            user_context: opts.encryption_context.clone(),
            kms_key_id: key_id,
            bucket_key,
            sse_s3,
            system_metadata: opts.system_metadata.clone(),
            tags: opts.tags.clone(),
            key_arn: upload_key.key_arn.clone(),
            wrapped_key: BASE64.encode(&upload_key.wrapped),
            bucket_key_salt: upload_key.bucket_key_salt.map(hex::encode),
            context: upload_key.context.clone(),
        };
        let mut id = [0u8; 16];
        fill_random(&mut id);
        let upload_id = hex::encode(id);
        let uploads = self.bucket_dir(bucket).join(UPLOADS_DIR);
        let dir = uploads.join(&upload_id);
        create_dir_private(&dir)?;
        let json = serde_json::to_vec_pretty(&record).map_err(|e| Error::Io {
            context: "encode upload record".into(),
            source: io::Error::other(e),
        })?;
        write_atomic(&dir.join(UPLOAD_FILE), &json)?;
        sync_dir(&uploads)?;
        Ok(Self::upload_of(bucket, &upload_id, &record))
    }

    /// UploadPart: seals `body` (streamed, bounded memory) under a key derived from
    /// the upload key and replaces part `part_number` atomically. One Decrypt of the
    /// upload key (none for a bucket key this scope holds).
    #[allow(clippy::too_many_arguments)]
    pub fn upload_part(
        &self,
        kms: &dyn KeyService,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: &mut dyn Read,
        content_md5: Option<[u8; 16]>,
    ) -> Result<PartInfo, Error> {
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(Error::InvalidArgument(format!(
                "Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"
            )));
        }
        let (record, dir) = self.open_upload(bucket, key, upload_id)?;
        let upload_key = self.upload_key(kms, bucket, &record, &dir.join(UPLOAD_FILE))?;
        let (wrapped, _) = record.wrapped(&dir.join(UPLOAD_FILE))?;
        let mut salt = [0u8; BUCKET_KEY_SALT_LEN];
        fill_random(&mut salt);
        let part_key = derive_object_key(&upload_key, &salt, &object_arn(bucket, key));
        drop(upload_key);
        let bound = BoundHeader {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            key_arn: record.key_arn.clone(),
            wrapped_key: wrapped,
            bucket_key_salt: Some(salt),
            content_type: record.content_type.clone(),
            encryption_context: record.context.clone(),
            user_metadata: BTreeMap::new(),
            system_metadata: BTreeMap::new(),
            nonce_prefix: [0; NONCE_PREFIX_LEN],
            sse: if record.sse_s3 { Sse::S3 } else { Sse::Kms },
        };
        let (file, tmp_path, header) =
            self.seal_to_temp(bound, &part_key, body, content_md5, None)?;
        drop(part_key);
        let target = dir.join(part_file_name(part_number));
        let result = file
            .sync_all()
            .map_err(io_err(format!("fsync {}", tmp_path.display())))
            .and_then(|()| match fs::rename(&tmp_path, &target) {
                Ok(()) => sync_dir(&dir),
                // Aborted (or completed) while the part was streaming in.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NoSuchUpload {
                    upload_id: upload_id.to_owned(),
                }),
                Err(source) => Err(Error::Io {
                    context: format!("rename into {}", target.display()),
                    source,
                }),
            });
        if result.is_err() {
            let _ = fs::remove_file(&tmp_path);
        }
        result.map(|()| part_info(part_number, &header))
    }

    /// The parts uploaded so far, by part number.
    fn parts_of(dir: &Path) -> Result<Vec<(u32, PathBuf, ObjectHeader)>, Error> {
        let mut parts = headers_in(dir, |path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".part"))
                .and_then(|n| n.parse::<u32>().ok())
        })?;
        parts.sort_by_key(|p| p.0);
        Ok(parts)
    }

    /// ListParts: the upload and its parts, by part number (no key-service call).
    pub fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(MultipartUpload, Vec<PartInfo>), Error> {
        let (record, dir) = self.open_upload(bucket, key, upload_id)?;
        let parts = Self::parts_of(&dir)?
            .iter()
            .map(|(n, _, header)| part_info(*n, header))
            .collect();
        Ok((Self::upload_of(bucket, upload_id, &record), parts))
    }

    /// ListMultipartUploads: the bucket's uploads in progress, by key then
    /// initiation time.
    pub fn list_multipart_uploads(&self, bucket: &str) -> Result<Vec<MultipartUpload>, Error> {
        self.bucket(bucket)?;
        let dir = self.bucket_dir(bucket).join(UPLOADS_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("list {}", dir.display()),
                    source,
                })
            }
        };
        let mut uploads = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !valid_upload_id(&id) {
                continue;
            }
            if let Some(record) = Self::read_record(&entry.path())? {
                uploads.push(Self::upload_of(bucket, &id, &record));
            }
        }
        uploads.sort_by(|a, b| (&a.key, a.initiated).cmp(&(&b.key, b.initiated)));
        Ok(uploads)
    }

    /// AbortMultipartUpload: removes the upload and every part (no key-service call).
    /// A part still streaming in fails with NoSuchUpload.
    pub fn abort_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), Error> {
        let (_, dir) = self.open_upload(bucket, key, upload_id)?;
        self.remove_upload(&dir, upload_id)
    }

    /// Moves the upload's directory out of the namespace (so that it is gone at
    /// once), then deletes it.
    fn remove_upload(&self, dir: &Path, upload_id: &str) -> Result<(), Error> {
        let doomed = self.staging_dir().join(random_name(".upload"));
        match fs::rename(dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NoSuchUpload {
                    upload_id: upload_id.to_owned(),
                })
            }
            Err(source) => {
                return Err(Error::Io {
                    context: format!("remove upload {}", dir.display()),
                    source,
                })
            }
        }
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        fs::remove_dir_all(&doomed).map_err(io_err(format!("remove {}", doomed.display())))
    }

    /// CompleteMultipartUpload: checks the part list (ascending, every part uploaded
    /// with that ETag, all but the last at least [`MIN_PART_SIZE`]), then streams the
    /// parts' plaintext into the object, sealed under a fresh key (GenerateDataKey, or
    /// the bucket key) and committed atomically as a PutObject is; then removes the
    /// upload. The ETag is S3's: MD5 of the parts' MD5s, `-N`.
    pub fn complete_multipart_upload(
        &self,
        kms: &dyn KeyService,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<ObjectInfo, Error> {
        self.complete_multipart_upload_if(kms, bucket, key, upload_id, parts, None)
    }

    /// CompleteMultipartUpload with a conditional write (`If-None-Match: *`,
    /// `If-Match`), checked when the object is put in place; a failed condition
    /// leaves the upload as it was.
    pub fn complete_multipart_upload_if(
        &self,
        kms: &dyn KeyService,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        condition: Option<Condition>,
    ) -> Result<ObjectInfo, Error> {
        let (record, dir) = match self.open_upload(bucket, key, upload_id) {
            Ok(found) => found,
            // A retry whose first answer was lost: S3 answers it with the object.
            Err(Error::NoSuchUpload { .. }) => match self.completed_object(bucket, key, parts)? {
                Some(info) => return Ok(info),
                None => {
                    return Err(Error::NoSuchUpload {
                        upload_id: upload_id.to_owned(),
                    })
                }
            },
            Err(err) => return Err(err),
        };
        if parts.is_empty() {
            return Err(Error::InvalidArgument(
                "You must specify at least one part".into(),
            ));
        }
        if parts
            .windows(2)
            .any(|w| w[0].part_number >= w[1].part_number)
        {
            return Err(Error::InvalidPartOrder);
        }
        let uploaded: BTreeMap<u32, (PathBuf, ObjectHeader)> = Self::parts_of(&dir)?
            .into_iter()
            .map(|(n, path, header)| (n, (path, header)))
            .collect();
        let mut chosen = Vec::with_capacity(parts.len());
        let mut md5 = Md5::new();
        for (i, part) in parts.iter().enumerate() {
            let (path, header) = uploaded
                .get(&part.part_number)
                .filter(|(_, h)| hex::encode(h.summary.etag) == bare_etag(&part.etag))
                .ok_or_else(|| {
                    Error::InvalidPart(format!(
                        "part {} was not uploaded or its ETag is not {}",
                        part.part_number,
                        part.etag.chars().take(40).collect::<String>()
                    ))
                })?;
            let size = header.summary.plaintext_len;
            if i + 1 < parts.len() && size < MIN_PART_SIZE {
                return Err(Error::EntityTooSmall {
                    part: part.part_number,
                    size,
                    min: MIN_PART_SIZE,
                });
            }
            md5.update(header.summary.etag);
            chosen.push((path.clone(), header.summary.etag));
        }
        let etag: [u8; 16] = md5.finalize().into();
        let record_path = dir.join(UPLOAD_FILE);
        let mut body = PartsReader {
            upload_key: self.upload_key(kms, bucket, &record, &record_path)?,
            object_arn: object_arn(bucket, key),
            parts: chosen.into_iter(),
            current: None,
            failure: None,
        };
        let plan = PutPlan {
            sse: if record.sse_s3 {
                PlannedSse::S3
            } else {
                PlannedSse::Kms
            },
            key_id: record.kms_key_id.clone(),
            content_type: record.content_type.clone(),
            context: super::object_context(bucket, key, &record.user_context)?,
            bucket_key: record.bucket_key,
        };
        let opts = PutObjectOptions {
            content_type: Some(record.content_type.clone()),
            user_metadata: record.user_metadata.clone(),
            kms_key_id: Some(record.kms_key_id.clone()),
            encryption_context: record.user_context.clone(),
            acl: record.acl,
            content_md5: None,
            encryption: EncryptionRequest::BucketDefault,
            system_metadata: record.system_metadata.clone(),
            tags: record.tags.clone(),
            checksum: Default::default(),
            condition,
        };
        let object_key = self.new_upload_key(kms, bucket, key, &plan)?;
        let count = parts.len() as u32;
        let info = self
            .seal_and_commit(
                bucket,
                key,
                object_key,
                plan.content_type,
                &mut body,
                &opts,
                Some((etag, count)),
            )
            .map_err(|err| match (err, body.failure.take()) {
                (Error::Body(_), Some(failure)) => failure,
                (err, _) => err,
            })?;
        // The object is in place; a concurrent abort may have removed the upload.
        match self.remove_upload(&dir, upload_id) {
            Ok(()) | Err(Error::NoSuchUpload { .. }) => Ok(info),
            Err(err) => Err(err),
        }
    }
}

impl ObjectStore {
    /// The object a CompleteMultipartUpload with this part list made, if it is still
    /// the object under `key`: its ETag is the one the list gives (MD5 of the parts'
    /// MD5s, `-N`).
    fn completed_object(
        &self,
        bucket: &str,
        key: &str,
        parts: &[CompletedPart],
    ) -> Result<Option<ObjectInfo>, Error> {
        let mut md5 = Md5::new();
        for part in parts {
            let mut digest = [0u8; 16];
            if hex::decode_to_slice(bare_etag(&part.etag), &mut digest).is_err() {
                return Ok(None);
            }
            md5.update(digest);
        }
        let etag = format!("{}-{}", hex::encode(md5.finalize()), parts.len());
        match self.head_object(bucket, key) {
            Ok(info) if !parts.is_empty() && info.etag == etag => Ok(Some(info)),
            Ok(_) | Err(Error::NoSuchKey { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// The plaintext of the chosen parts, one after the other, each decrypted and
/// authenticated as it is read.
struct PartsReader {
    upload_key: Key32,
    object_arn: String,
    /// Each part's file and the ETag digest it was checked with.
    parts: std::vec::IntoIter<(PathBuf, [u8; 16])>,
    current: Option<ObjectReader>,
    /// The typed error behind an `io::Error` handed to the sealer.
    failure: Option<Error>,
}

impl PartsReader {
    fn open(&self, path: PathBuf, etag: [u8; 16]) -> Result<ObjectReader, Error> {
        let file = File::open(&path).map_err(io_err(format!("open {}", path.display())))?;
        let header = read_header(&file, &path)?;
        // The part was replaced (UploadPart again) since the list was checked.
        if header.summary.etag != etag {
            return Err(Error::InvalidPart(
                "a part was uploaded again while the upload was completing".into(),
            ));
        }
        let corrupted = |what: String| Error::Corrupted {
            path: path.clone(),
            what,
        };
        let salt = header
            .bound
            .bucket_key_salt
            .ok_or_else(|| corrupted("a part without its key salt".into()))?;
        let key = derive_object_key(&self.upload_key, &salt, &self.object_arn);
        let digest = ObjectHeader::bound_digest(&header.bound).map_err(|e| corrupted(e.0))?;
        let cipher = SegmentCipher::new(&key[..], header.bound.nonce_prefix, digest)
            .map_err(|_| corrupted("the part key could not be made into a cipher".into()))?;
        let header_len =
            ObjectHeader::encoded_len(&header.bound).map_err(|e| corrupted(e.0))? as u64;
        let len = header.summary.plaintext_len;
        Ok(ObjectReader::new(
            file,
            path,
            cipher,
            header_len,
            header.summary,
            0,
            len,
        ))
    }
}

impl Read for PartsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(reader) = &mut self.current {
                match reader.read(buf) {
                    Ok(0) if !buf.is_empty() => self.current = None,
                    Ok(n) => return Ok(n),
                    // A part that fails authentication is the store's fault, not
                    // the client's: keep it from reading as an incomplete body.
                    Err(e) => {
                        self.failure = Some(Error::Io {
                            context: "read a part of the upload".into(),
                            source: io::Error::new(e.kind(), e.to_string()),
                        });
                        return Err(e);
                    }
                }
            }
            let Some((path, etag)) = self.parts.next() else {
                return Ok(0);
            };
            match self.open(path, etag) {
                Ok(reader) => self.current = Some(reader),
                Err(err) => {
                    let io = io::Error::other(err.to_string());
                    self.failure = Some(err);
                    return Err(io);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_and_etags() {
        assert!(valid_upload_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_upload_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!valid_upload_id("../../../etc/passwd"));
        assert!(!valid_upload_id(""));
        assert_eq!(bare_etag("\"abc\""), "abc");
        assert_eq!(bare_etag("abc"), "abc");
        assert_eq!(part_file_name(7), "00007.part");
    }
}
