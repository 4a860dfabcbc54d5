//! Reading objects: HeadObject and GetObject (SSE-KMS, SSE-S3 and SSE-C), the
//! object file's checks, and the object sub-resources a read returns (ACL, tags,
//! checksum).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crypto_core::kms::{DecryptRequest, EncryptionContext, KeyService};
use time::OffsetDateTime;

use crate::aead::SegmentCipher;
use crate::bucket_key::{derive_object_key, Key32};
use crate::customer_key::CustomerKey;
use crate::format::{sealed_len, ObjectHeader, Sse};
use crate::names::{bucket_arn, object_arn, validate_object_key};
use crate::range::ByteRange;
use crate::reader::ObjectReader;
use crate::Error;

use super::{
    io_err, key32, read_header, read_if_exists, Acl, ObjectStore, TagSet, CHECKSUM_EXT, PARTS_EXT,
    S3_ARN_CONTEXT_KEY, TAGS_EXT, VERSION_ID_KEY,
};

/// An object's metadata, as HEAD returns it (read without any key-service call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's bucket.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// Plaintext bytes.
    pub size: u64,
    /// MD5 of the plaintext, lower-case hex, without the quotes S3 puts around it.
    pub etag: String,
    /// `Content-Type`.
    pub content_type: String,
    /// `x-amz-meta-*` pairs (names without the prefix).
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
    /// `Last-Modified`.
    pub last_modified: OffsetDateTime,
    /// The object's canned ACL.
    pub acl: Acl,
}

/// A GET's answer: the metadata, the resolved range and the decrypting body.
#[derive(Debug)]
pub struct ObjectDownload {
    /// The object's metadata.
    pub info: ObjectInfo,
    /// First and last byte (inclusive) when a range was asked for (`Content-Range`).
    pub range: Option<(u64, u64)>,
    /// The plaintext of the range (or the whole object). Implements `Read`; use
    /// [`ObjectReader::write_to`] to keep the typed errors.
    pub body: ObjectReader,
}

impl ObjectStore {
    /// A multipart object's part count, from its sidecar when that belongs to
    /// `header`'s ETag digest.
    fn read_parts(object_path: &Path, header: &ObjectHeader) -> Result<Option<u32>, Error> {
        let path = object_path.with_extension(PARTS_EXT);
        let Some(text) = read_if_exists(&path, |p| fs::read_to_string(p))? else {
            return Ok(None);
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
    pub(super) fn read_info(
        object_path: &Path,
        header: &ObjectHeader,
    ) -> Result<ObjectInfo, Error> {
        Ok(Self::info(
            header,
            Self::read_acl(object_path)?,
            Self::read_parts(object_path, header)?,
        ))
    }

    pub(super) fn info(header: &ObjectHeader, acl: Acl, parts: Option<u32>) -> ObjectInfo {
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
        match read_if_exists(&path, |p| fs::read_to_string(p))? {
            Some(text) => Acl::parse(text.trim()).map_err(|_| Error::Corrupted {
                path,
                what: "unknown ACL".into(),
            }),
            None => Ok(Acl::Private),
        }
    }

    /// Opens the object file and checks its header: parses, names this bucket and
    /// key, and the file is exactly as long as the header says.
    pub(super) fn open_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(File, PathBuf, ObjectHeader), Error> {
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

    /// GetObjectTagging: the object's tags (empty when it has none).
    pub fn object_tagging(&self, bucket: &str, key: &str) -> Result<TagSet, Error> {
        let (_, path, _) = self.open_object(bucket, key)?;
        let tags_path = path.with_extension(TAGS_EXT);
        match read_if_exists(&tags_path, |p| fs::read(p))? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupted {
                path: tags_path,
                what: format!("tag set: {e}"),
            }),
            None => Ok(TagSet::new()),
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
        let Some(text) = read_if_exists(&sidecar, |p| fs::read_to_string(p))? else {
            return Ok(None);
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

    /// GetObjectAcl (canned).
    pub fn object_acl(&self, bucket: &str, key: &str) -> Result<Acl, Error> {
        let (_, path, _) = self.open_object(bucket, key)?;
        Self::read_acl(&path)
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
