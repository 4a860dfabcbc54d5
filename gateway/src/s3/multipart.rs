//! Multipart uploads (CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
//! AbortMultipartUpload), which the aws CLI uses for files above its
//! `multipart_threshold`.
//!
//! Parts never touch the disk in the clear: each is an SSE-KMS object of its own in a
//! staging store (`<home>/s3/multipart/`), one bucket per upload, encrypted under the
//! upload's CMK as the part's signer. Completing the upload streams the parts'
//! plaintext, decrypted one after another, into an ordinary PutObject of the target
//! key, so the object is one atomic write with one data key, like any other; then the
//! parts are removed. The object's ETag is the MD5 of its whole content (S3 gives
//! multipart objects an MD5 of the parts' MD5s with a `-N` suffix instead).

use std::io::{self, BufRead, Read};
use std::path::PathBuf;

use crypto_core::kms::LocalKms;
use http::{HeaderMap, HeaderValue, StatusCode};
use objstore::{ListObjectsRequest, ObjectReader, ObjectStore, PutObjectOptions};
use serde::{Deserialize, Serialize};

use super::upload::UploadBody;
use super::xml::{XmlDocument, XmlWriter};
use super::{account_of, bucket_key_header, encryption_headers, insert, put_options};
use super::{S3Answer, S3Request, S3Service};
use crate::error::GatewayError;

/// S3's limit on part numbers.
const MAX_PART_NUMBER: u32 = 10_000;
/// The headers of CreateMultipartUpload that shape the final object.
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "x-amz-acl",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-context",
    "x-amz-server-side-encryption-bucket-key-enabled",
];

/// An upload in progress (`<staging>/uploads/<id>.json`).
#[derive(Debug, Serialize, Deserialize)]
struct UploadRecord {
    bucket: String,
    key: String,
    /// The account that started it; only its principals may continue it.
    account: String,
    /// The CMK every part is encrypted under (the final object's).
    kms_key_id: String,
    /// CreateMultipartUpload's headers that the final PutObject takes.
    headers: Vec<(String, String)>,
}

fn no_such_upload() -> GatewayError {
    GatewayError::NoSuchUpload(
        "The specified upload does not exist. The upload ID may be invalid, or the upload \
         may have been aborted or completed."
            .into(),
    )
}

fn part_key(number: u32) -> String {
    format!("part-{number:05}")
}

fn staging_bucket(upload_id: &str) -> String {
    format!("mpu-{upload_id}")
}

impl S3Service {
    fn staging(&self) -> Result<ObjectStore, GatewayError> {
        Ok(ObjectStore::open(&self.staging_root())?)
    }

    fn staging_root(&self) -> PathBuf {
        self.store.root().join("multipart")
    }

    fn record_path(&self, upload_id: &str) -> Result<PathBuf, GatewayError> {
        let valid = upload_id.len() == 32
            && upload_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(no_such_upload());
        }
        Ok(self
            .staging_root()
            .join("uploads")
            .join(format!("{upload_id}.json")))
    }

    /// The upload named by the request's `uploadId`, checked against its bucket, key
    /// and the caller's account.
    fn upload(
        &self,
        request: &S3Request,
        principal: &str,
    ) -> Result<(String, UploadRecord), GatewayError> {
        let id = request.param("uploadId").unwrap_or_default().to_owned();
        let path = self.record_path(&id)?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_such_upload()),
            Err(e) => return Err(GatewayError::io(format!("reading {}", path.display()), e)),
        };
        let record: UploadRecord = serde_json::from_slice(&bytes).map_err(|e| {
            GatewayError::io(
                format!("reading {}", path.display()),
                io::Error::other(e.to_string()),
            )
        })?;
        if record.bucket != request.bucket
            || record.key != request.key
            || record.account != account_of(principal)
        {
            return Err(no_such_upload());
        }
        Ok((id, record))
    }

    /// CreateMultipartUpload.
    pub(super) fn create_multipart_upload(
        &self,
        request: &S3Request,
        parts: &http::request::Parts,
        principal: &str,
    ) -> Result<S3Answer, GatewayError> {
        objstore::validate_object_key(&request.key)?;
        let opts = put_options(&parts.headers)?;
        bucket_key_header(&parts.headers)?;
        let kms_key_id = match opts.kms_key_id {
            Some(id) => id,
            None => self
                .store
                .bucket(&request.bucket)?
                .encryption
                .map(|e| e.kms_key_id)
                .ok_or_else(|| {
                    GatewayError::InvalidArgument(format!(
                        "no KMS key: name one (x-amz-server-side-encryption-aws-kms-key-id) or \
                         set the default encryption of bucket '{}'",
                        request.bucket
                    ))
                })?,
        };
        let mut headers = Vec::new();
        for (name, value) in &parts.headers {
            let keep =
                KEPT_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("x-amz-meta-");
            if keep {
                if let Ok(value) = value.to_str() {
                    headers.push((name.as_str().to_owned(), value.to_owned()));
                }
            }
        }
        let mut id = [0u8; 16];
        crypto_core::secret::fill_random(&mut id);
        let id = hex::encode(id);
        let account = account_of(principal).to_owned();
        self.staging()?.create_bucket(
            &staging_bucket(&id),
            &format!("arn:aws:iam::{account}:root"),
        )?;
        let record = UploadRecord {
            bucket: request.bucket.clone(),
            key: request.key.clone(),
            account,
            kms_key_id,
            headers,
        };
        let path = self.record_path(&id)?;
        let dir = self.staging_root().join("uploads");
        std::fs::create_dir_all(&dir)
            .map_err(|e| GatewayError::io(format!("creating {}", dir.display()), e))?;
        let json = serde_json::to_vec(&record).map_err(|e| {
            GatewayError::io("encoding an upload record", io::Error::other(e.to_string()))
        })?;
        std::fs::write(&path, json)
            .map_err(|e| GatewayError::io(format!("writing {}", path.display()), e))?;
        let mut w = XmlWriter::new("InitiateMultipartUploadResult");
        w.leaf("Bucket", &request.bucket)
            .leaf("Key", &request.key)
            .leaf("UploadId", &id);
        Ok(S3Answer::xml(w.finish("InitiateMultipartUploadResult")))
    }

    /// UploadPart: the part, encrypted under the upload's CMK, in the staging store.
    pub(super) fn upload_part(
        &self,
        kms: &LocalKms,
        request: &S3Request,
        principal: &str,
        body: &mut UploadBody<&mut dyn BufRead>,
        content_md5: Option<[u8; 16]>,
    ) -> Result<S3Answer, GatewayError> {
        let (id, record) = self.upload(request, principal)?;
        let number = request
            .param("partNumber")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
            .ok_or_else(|| {
                GatewayError::InvalidArgument(format!(
                    "Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"
                ))
            })?;
        let opts = PutObjectOptions {
            kms_key_id: Some(record.kms_key_id.clone()),
            content_md5,
            ..PutObjectOptions::default()
        };
        let info = self
            .staging()?
            .put_object(kms, &staging_bucket(&id), &part_key(number), body, &opts)
            .map_err(|err| match err {
                objstore::Error::Body(io) => UploadBody::<&mut dyn BufRead>::error_of(io),
                other => GatewayError::Object(other),
            })?;
        let mut answer = S3Answer::empty(StatusCode::OK);
        insert(&mut answer.headers, "etag", &format!("\"{}\"", info.etag));
        encryption_headers(&mut answer.headers, &info);
        if let Some((algorithm, value)) = body.verified_checksum() {
            insert(&mut answer.headers, algorithm.header(), value);
        }
        Ok(answer)
    }

    /// CompleteMultipartUpload: the named parts, in order, become the object.
    pub(super) fn complete_multipart_upload(
        &self,
        kms: &LocalKms,
        request: &S3Request,
        principal: &str,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let (id, record) = self.upload(request, principal)?;
        let doc = XmlDocument::parse(body, "CompleteMultipartUpload")?;
        let numbers = doc.all("PartNumber")?;
        let etags = doc.all("ETag")?;
        if numbers.is_empty() || numbers.len() != etags.len() {
            return Err(GatewayError::MalformedXml(
                "every Part needs its PartNumber and ETag".into(),
            ));
        }
        let staging = self.staging()?;
        let bucket = staging_bucket(&id);
        let mut previous = 0u32;
        let mut keys = Vec::with_capacity(numbers.len());
        for (number, etag) in numbers.iter().zip(&etags) {
            let number: u32 = number.trim().parse().map_err(|_| {
                GatewayError::MalformedXml(format!("PartNumber '{number}' is not a number"))
            })?;
            if number <= previous {
                return Err(GatewayError::InvalidPartOrder(
                    "The list of parts was not in ascending order. Parts must be ordered by \
                     part number."
                        .into(),
                ));
            }
            previous = number;
            let key = part_key(number);
            let invalid = || {
                GatewayError::InvalidPart(format!(
                    "One or more of the specified parts could not be found (part {number}), or \
                     its entity tag did not match."
                ))
            };
            let info = staging.head_object(&bucket, &key).map_err(|_| invalid())?;
            if etag.trim().trim_matches('"') != info.etag {
                return Err(invalid());
            }
            keys.push(key);
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &record.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let mut opts = put_options(&headers)?;
        opts.kms_key_id = Some(record.kms_key_id.clone());
        let bucket_key = bucket_key_header(&headers)?;
        let mut parts = ChainedParts {
            staging: &staging,
            kms,
            bucket: &bucket,
            keys: keys.into_iter(),
            current: None,
        };
        let info = self
            .store
            .put_object_with_bucket_key(
                kms,
                &request.bucket,
                &request.key,
                &mut parts,
                &opts,
                bucket_key,
            )
            .map_err(|err| match err {
                objstore::Error::Body(io) => UploadBody::<&mut dyn BufRead>::error_of(io),
                other => GatewayError::Object(other),
            })?;
        self.remove_upload(&staging, &id)?;
        let mut answer = S3Answer::xml({
            let mut w = XmlWriter::new("CompleteMultipartUploadResult");
            w.leaf("Location", &format!("/{}/{}", request.bucket, request.key))
                .leaf("Bucket", &request.bucket)
                .leaf("Key", &request.key)
                .leaf("ETag", &format!("\"{}\"", info.etag));
            w.finish("CompleteMultipartUploadResult")
        });
        encryption_headers(&mut answer.headers, &info);
        Ok(answer)
    }

    /// AbortMultipartUpload: the parts and the record go.
    pub(super) fn abort_multipart_upload(
        &self,
        request: &S3Request,
        principal: &str,
    ) -> Result<S3Answer, GatewayError> {
        let (id, _) = self.upload(request, principal)?;
        self.remove_upload(&self.staging()?, &id)?;
        Ok(S3Answer::empty(StatusCode::NO_CONTENT))
    }

    fn remove_upload(&self, staging: &ObjectStore, id: &str) -> Result<(), GatewayError> {
        let bucket = staging_bucket(id);
        loop {
            let page = staging.list_objects_v2(&bucket, &ListObjectsRequest::default())?;
            for object in &page.objects {
                staging.delete_object(&bucket, &object.key)?;
            }
            if !page.is_truncated() {
                break;
            }
        }
        staging.delete_bucket(&bucket)?;
        let path = self.record_path(id)?;
        std::fs::remove_file(&path)
            .map_err(|e| GatewayError::io(format!("removing {}", path.display()), e))
    }
}

/// The plaintext of the parts, one after another, each decrypted (one audited
/// Decrypt per part) as it is reached.
struct ChainedParts<'a> {
    staging: &'a ObjectStore,
    kms: &'a LocalKms,
    bucket: &'a str,
    keys: std::vec::IntoIter<String>,
    current: Option<ObjectReader>,
}

impl Read for ChainedParts<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(reader) = self.current.as_mut() {
                let n = reader.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.current = None;
            }
            let Some(key) = self.keys.next() else {
                return Ok(0);
            };
            let download = self
                .staging
                .get_object(self.kms, self.bucket, &key, None)
                .map_err(|e| io::Error::other(GatewayError::Object(e)))?;
            self.current = Some(download.body);
        }
    }
}
