//! Buckets: create, delete, list, and what a bucket carries (default encryption and
//! its bucket keys, ACL, tags, policy, public access block).

use std::collections::BTreeMap;
use std::fs::{self};
use std::io;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crypto_core::kms::{
    DataKeySpec, DecryptRequest, EncryptionContext, GenerateDataKeyRequest, KeyService,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::bucket_key::{record_file_name, BucketKeyRecord, Key32};
use crate::names::validate_bucket_name;
use crate::Error;

use super::{
    bucket_context, check_text, create_dir_private, io_err, key32, lifecycle, now, random_name,
    read_if_exists, sync_dir, write_atomic, ObjectStore, Versioning, BUCKET_FILE, BUCKET_KEYS_DIR,
    MAX_BUCKET_TAGS, OBJECTS_DIR, OBJECT_EXT, TMP_DIR,
};

/// A canned ACL (the two S3 offers that atrest models).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acl {
    /// `private`: only the owner (and whom policies allow).
    #[default]
    #[serde(rename = "private")]
    Private,
    /// `public-read`: anyone may read.
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

    /// The `x-amz-acl` value.
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
    /// The `SSEAlgorithm` value.
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
    /// SSE-S3 or SSE-KMS.
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
    /// The bucket's name.
    pub name: String,
    /// The principal (ARN) that created the bucket.
    pub owner: String,
    /// When the bucket was created.
    #[serde(with = "time::serde::rfc3339")]
    pub creation_date: OffsetDateTime,
    /// PutBucketEncryption (absent: none set).
    pub encryption: Option<BucketEncryption>,
    /// The bucket's canned ACL.
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

impl ObjectStore {
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
        let Some(bytes) = read_if_exists(&path, |p| fs::read(p))? else {
            return Ok(None);
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

    pub(super) fn update_bucket(
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
    pub(super) fn current_bucket_key(
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
    pub(super) fn unwrap_bucket_key(
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
}

/// The bucket key recorded at `path` for `kms_key_id` when new objects may still use
/// it: the CMK's ARN and the wrapped key.
fn current_record(path: &Path, kms_key_id: &str) -> Result<Option<(String, Vec<u8>)>, Error> {
    let corrupted = |what: String| Error::Corrupted {
        path: path.to_path_buf(),
        what: format!("bucket key record: {what}"),
    };
    let Some(bytes) = read_if_exists(path, |p| fs::read(p))? else {
        return Ok(None);
    };
    let record: BucketKeyRecord =
        serde_json::from_slice(&bytes).map_err(|e| corrupted(e.to_string()))?;
    if !record.is_current(now()) || record.kms_key_id != kms_key_id {
        return Ok(None);
    }
    let wrapped = BASE64
        .decode(&record.wrapped_key)
        .map_err(|_| corrupted("the wrapped key is not base64".into()))?;
    Ok(Some((record.kms_key_arn, wrapped)))
}
