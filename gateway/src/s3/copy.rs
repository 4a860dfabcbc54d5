//! CopyObject and UploadPartCopy: the source is read (decrypted as the caller, with
//! its SSE-C key when it has one) and streamed into the destination, which is
//! encrypted as a PutObject's body would be: under the request's encryption headers
//! or the destination bucket's default, with a fresh data key. A copy is therefore
//! also the way to re-encrypt an object under another key or mode.

use crypto_core::kms::LocalKms;
use http::HeaderMap;
use objstore::{ByteRange, CustomerKey, ObjectDownload, ObjectInfo};

use super::access::{authorize, request_facts};
use super::encryption::{
    bucket_key_header, customer_key, customer_key_headers, encryption_headers, SSE_C_HEADERS,
};
use super::multipart::part_target;
use super::objects::{put_options, read_conditions};
use super::policy::RequestFacts;
use super::routing::{percent_decode_path, Call};
use super::xml::XmlWriter;
use super::{header, iso_date, S3Answer, S3Service};
use crate::error::GatewayError;

const COPY_SOURCE_SSE_C: [&str; 3] = [
    "x-amz-copy-source-server-side-encryption-customer-algorithm",
    "x-amz-copy-source-server-side-encryption-customer-key",
    "x-amz-copy-source-server-side-encryption-customer-key-md5",
];

/// `x-amz-copy-source`: `[/]BUCKET/KEY[?versionId=ID]`, percent-encoded.
fn copy_source(headers: &HeaderMap) -> Result<(String, String, Option<String>), GatewayError> {
    let raw = header(headers, "x-amz-copy-source")?.unwrap_or_default();
    let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
    let version = match query {
        "" => None,
        _ => match query.strip_prefix("versionId=") {
            Some(id) if !id.is_empty() && !id.contains('&') => Some(id.to_owned()),
            _ => {
                return Err(GatewayError::InvalidArgument(
                    "x-amz-copy-source may carry only ?versionId=ID".into(),
                ))
            }
        },
    };
    let decoded = percent_decode_path(path)?;
    let trimmed = decoded.strip_prefix('/').unwrap_or(&decoded);
    match trimmed.split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
            Ok((bucket.to_owned(), key.to_owned(), version))
        }
        _ => Err(GatewayError::InvalidArgument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey".into(),
        )),
    }
}

/// The source's SSE-C key (`x-amz-copy-source-server-side-encryption-customer-*`),
/// parsed by the same rules as a request's own SSE-C headers.
fn source_customer_key(headers: &HeaderMap) -> Result<Option<CustomerKey>, GatewayError> {
    let mut renamed = HeaderMap::new();
    for (from, to) in COPY_SOURCE_SSE_C.iter().zip(SSE_C_HEADERS) {
        if let Some(value) = headers.get(*from) {
            renamed.insert(to, value.clone());
        }
    }
    Ok(customer_key(&renamed)?.map(|(key, _)| key))
}

/// `x-amz-copy-source-if-*`: every failed one is PreconditionFailed, as on S3.
fn source_conditions(headers: &HeaderMap, info: &ObjectInfo) -> Result<(), GatewayError> {
    let mut renamed = HeaderMap::new();
    for (from, to) in [
        ("x-amz-copy-source-if-match", "if-match"),
        ("x-amz-copy-source-if-none-match", "if-none-match"),
        ("x-amz-copy-source-if-modified-since", "if-modified-since"),
        (
            "x-amz-copy-source-if-unmodified-since",
            "if-unmodified-since",
        ),
    ] {
        if let Some(value) = headers.get(from) {
            renamed.insert(to, value.clone());
        }
    }
    match read_conditions(&renamed, info)? {
        None => Ok(()),
        Some(_) => Err(GatewayError::Object(objstore::Error::PreconditionFailed(
            "the copy source does not meet x-amz-copy-source-if-none-match or \
             x-amz-copy-source-if-modified-since"
                .into(),
        ))),
    }
}

/// An error met while reading the source, with its own code rather than as a broken
/// request body.
fn source_error(err: objstore::Error) -> GatewayError {
    match err {
        objstore::Error::Body(io) => match io.into_inner().map(|e| e.downcast::<objstore::Error>())
        {
            Some(Ok(inner)) => GatewayError::Object(*inner),
            _ => GatewayError::Object(objstore::Error::InvalidArgument(
                "the copy source could not be read".into(),
            )),
        },
        other => GatewayError::Object(other),
    }
}

impl S3Service {
    /// Opens the copy source for the caller: same account as the caller, its SSE-C
    /// key when it has one, its `x-amz-copy-source-if-*` conditions.
    fn open_copy_source(
        &self,
        kms: &LocalKms,
        principal: &str,
        headers: &HeaderMap,
        facts: &RequestFacts,
        range: Option<ByteRange>,
    ) -> Result<(ObjectDownload, objstore::TagSet), GatewayError> {
        let (bucket, key, version) = copy_source(headers)?;
        let info = self.store.bucket(&bucket)?;
        let action = if version.is_some() {
            "s3:GetObjectVersion"
        } else {
            "s3:GetObject"
        };
        authorize(
            &info,
            principal,
            action,
            &objstore::object_arn(&bucket, &key),
            facts,
        )?;
        let store = match &version {
            Some(id) => self.store.at_version(id),
            None => self.store.clone(),
        };
        let customer = source_customer_key(headers)?;
        let info = store.head_object_with_key(&bucket, &key, customer.as_ref())?;
        source_conditions(headers, &info)?;
        let download = store.get_object_with_key(kms, &bucket, &key, range, customer.as_ref())?;
        let tags = store.object_tagging(&bucket, &key)?;
        Ok((download, tags))
    }

    /// CopyObject (PUT with `x-amz-copy-source`).
    pub(super) fn copy_object(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let Call {
            kms,
            principal,
            request,
            parts,
            ..
        } = *call;
        let headers = &parts.headers;
        let replace_tags = match header(headers, "x-amz-tagging-directive")? {
            None | Some("COPY") => false,
            Some("REPLACE") => true,
            Some(_) => {
                return Err(GatewayError::InvalidArgument(
                    "Unknown tagging directive: x-amz-tagging-directive is COPY or REPLACE".into(),
                ))
            }
        };
        let replace = match header(headers, "x-amz-metadata-directive")? {
            None | Some("COPY") => false,
            Some("REPLACE") => true,
            Some(_) => {
                return Err(GatewayError::InvalidArgument(
                    "Unknown metadata directive: x-amz-metadata-directive is COPY or REPLACE"
                        .into(),
                ))
            }
        };
        let mut opts = put_options(headers)?;
        self.refuse_public_acl(&request.bucket, opts.acl)?;
        let (src_bucket, src_key, src_version) = copy_source(headers)?;
        let changes_encryption = headers.keys().any(|name| {
            name.as_str().starts_with("x-amz-server-side-encryption")
                && !name
                    .as_str()
                    .starts_with("x-amz-server-side-encryption-customer-key-md5")
        });
        if src_bucket == request.bucket
            && src_key == request.key
            && src_version.is_none()
            && !replace
            && !changes_encryption
        {
            return Err(GatewayError::InvalidRequest(
                "This copy request is illegal because it is trying to copy an object to itself \
                 without changing the object's metadata, storage class, website redirect \
                 location or encryption attributes."
                    .into(),
            ));
        }
        let facts = request_facts(parts);
        let (mut download, source_tags) =
            self.open_copy_source(kms, principal, headers, &facts, None)?;
        if !replace_tags {
            opts.tags = source_tags;
        }
        if !replace {
            opts.content_type = Some(download.info.content_type.clone());
            opts.user_metadata = download.info.user_metadata.clone();
            opts.system_metadata = download.info.system_metadata.clone();
        }
        let bucket_key = bucket_key_header(headers)?;
        self.ensure_managed_key(kms, &request.bucket, &opts)?;
        let info = self
            .store
            .put_object_with_bucket_key(
                kms,
                &request.bucket,
                &request.key,
                &mut download.body,
                &opts,
                bucket_key,
            )
            .map_err(source_error)?;
        let mut w = XmlWriter::new("CopyObjectResult");
        w.leaf("LastModified", &iso_date(info.last_modified))
            .leaf("ETag", &format!("\"{}\"", info.etag));
        let mut answer = S3Answer::xml(w.finish("CopyObjectResult"));
        encryption_headers(&mut answer.headers, &info);
        if let Some(id) = &info.version_id {
            super::insert(&mut answer.headers, "x-amz-version-id", id);
        }
        if let Some(id) = &src_version {
            super::insert(&mut answer.headers, "x-amz-copy-source-version-id", id);
        }
        if let Some((_, md5)) = customer_key(headers)? {
            customer_key_headers(&mut answer.headers, &md5);
        }
        Ok(answer)
    }

    /// UploadPartCopy (UploadPart with `x-amz-copy-source`, optionally
    /// `x-amz-copy-source-range: bytes=FIRST-LAST`).
    pub(super) fn upload_part_copy(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let Call {
            kms,
            principal,
            request,
            parts,
            ..
        } = *call;
        let (part_number, upload_id) = part_target(request)?;
        let headers = &parts.headers;
        let range = match header(headers, "x-amz-copy-source-range")? {
            None => None,
            Some(text) => {
                let range = ByteRange::parse(text).filter(|_| {
                    // S3 takes only `bytes=FIRST-LAST` here, no suffix or open range.
                    text.trim_start_matches("bytes=")
                        .split_once('-')
                        .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
                });
                Some(range.ok_or_else(|| {
                    GatewayError::InvalidArgument(
                        "The x-amz-copy-source-range value must be of the form bytes=first-last \
                         where first and last are the zero-based offsets of the first and last \
                         bytes to copy"
                            .into(),
                    )
                })?)
            }
        };
        let facts = request_facts(parts);
        let (mut download, _) = self.open_copy_source(kms, principal, headers, &facts, range)?;
        let part = self
            .store
            .upload_part(
                kms,
                &request.bucket,
                &request.key,
                upload_id,
                part_number,
                &mut download.body,
                None,
            )
            .map_err(source_error)?;
        let mut w = XmlWriter::new("CopyPartResult");
        w.leaf("LastModified", &iso_date(part.last_modified))
            .leaf("ETag", &format!("\"{}\"", part.etag));
        Ok(S3Answer::xml(w.finish("CopyPartResult")))
    }
}
