//! The listings: ListObjectsV2, ListObjects (version 1) and ListObjectVersions, with
//! their shared limits (`max-keys`), entries and `encoding-type=url` text.

use objstore::ListObjectsRequest;

use super::access::owner_xml;
use super::routing::{Call, S3Request};
use super::xml::XmlWriter;
use super::{iso_date, S3Answer, S3Service};
use crate::error::GatewayError;
use crate::sigv4;

impl S3Service {
    /// ListObjectVersions: every version and delete marker, by key, newest first.
    pub(super) fn list_object_versions(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let request = call.request;
        if request.param("delimiter").is_some_and(|d| !d.is_empty()) {
            return Err(GatewayError::NotImplemented(
                "ListObjectVersions with a delimiter is not implemented".into(),
            ));
        }
        let url = encoding_type(request)?;
        let prefix = request.param("prefix").unwrap_or_default();
        let key_marker = request.param("key-marker").filter(|m| !m.is_empty());
        let version_marker = request.param("version-id-marker").filter(|m| !m.is_empty());
        let max = max_keys(request)?.unwrap_or(objstore::MAX_KEYS);
        let objstore::VersionsPage { entries, next } = self.store.list_object_versions(
            &request.bucket,
            prefix,
            key_marker,
            version_marker,
            max,
        )?;
        let owner = self.store.bucket(&request.bucket)?.owner;
        let enc = |text: &str| listing_text(url, text);
        let mut w = XmlWriter::new("ListVersionsResult");
        w.leaf("Name", &request.bucket)
            .leaf("Prefix", &enc(prefix))
            .leaf("KeyMarker", &enc(key_marker.unwrap_or_default()))
            .leaf("VersionIdMarker", version_marker.unwrap_or_default())
            .leaf("MaxKeys", &max.min(objstore::MAX_KEYS).to_string())
            .leaf("IsTruncated", if next.is_some() { "true" } else { "false" });
        if let Some((key, version)) = &next {
            w.leaf("NextKeyMarker", &enc(key))
                .leaf("NextVersionIdMarker", version);
        }
        if url {
            w.leaf("EncodingType", "url");
        }
        for entry in &entries {
            let tag = if entry.object.is_some() {
                "Version"
            } else {
                "DeleteMarker"
            };
            w.open(tag)
                .leaf("Key", &enc(&entry.key))
                .leaf("VersionId", &entry.version_id)
                .leaf("IsLatest", if entry.is_latest { "true" } else { "false" })
                .leaf("LastModified", &iso_date(entry.last_modified));
            if let Some(object) = &entry.object {
                w.leaf("ETag", &format!("\"{}\"", object.etag))
                    .leaf("Size", &object.size.to_string())
                    .leaf("StorageClass", "STANDARD");
            }
            owner_xml(&mut w, &owner);
            w.close(tag);
        }
        Ok(S3Answer::xml(w.finish("ListVersionsResult")))
    }

    /// ListObjects (version 1, rclone's and s3fs's default): `marker` instead of
    /// continuation tokens, `NextMarker` on a truncated page, owners always shown.
    pub(super) fn list_objects_v1(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let request = call.request;
        let url = encoding_type(request)?;
        let prefix = request.param("prefix").unwrap_or_default().to_owned();
        let delimiter = request.param("delimiter").unwrap_or_default().to_owned();
        let marker = request.param("marker").filter(|m| !m.is_empty());
        let req = ListObjectsRequest {
            continuation_token: marker.map(|m| objstore::marker_token(m, &prefix, &delimiter)),
            prefix,
            delimiter,
            max_keys: max_keys(request)?,
            start_after: None,
        };
        let page = self.store.list_objects_v2(&request.bucket, &req)?;
        let owner = self.store.bucket(&request.bucket)?.owner;
        let enc = |text: &str| listing_text(url, text);
        let mut w = XmlWriter::new("ListBucketResult");
        w.leaf("Name", &request.bucket)
            .leaf("Prefix", &enc(&req.prefix))
            .leaf("Marker", &enc(marker.unwrap_or_default()));
        listing_limits(&mut w, &req, &page, &enc);
        if page.is_truncated() {
            // The page's last entry, key or common prefix, whichever sorts later.
            let last_key = page.objects.last().map(|o| o.key.as_str());
            let last_prefix = page.common_prefixes.last().map(String::as_str);
            if let Some(next) = last_key.max(last_prefix) {
                w.leaf("NextMarker", &enc(next));
            }
        }
        if url {
            w.leaf("EncodingType", "url");
        }
        listing_entries(&mut w, &page, Some(owner.as_str()), &enc);
        Ok(S3Answer::xml(w.finish("ListBucketResult")))
    }

    /// ListObjectsV2: continuation tokens, `start-after`, owners with `fetch-owner`.
    pub(super) fn list_objects_v2(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let request = call.request;
        let url = encoding_type(request)?;
        let req = ListObjectsRequest {
            prefix: request.param("prefix").unwrap_or_default().to_owned(),
            delimiter: request.param("delimiter").unwrap_or_default().to_owned(),
            max_keys: max_keys(request)?,
            continuation_token: request.param("continuation-token").map(str::to_owned),
            start_after: request.param("start-after").map(str::to_owned),
        };
        let page = self.store.list_objects_v2(&request.bucket, &req)?;
        let fetch_owner = request.param("fetch-owner") == Some("true");
        let owner = if fetch_owner {
            Some(self.store.bucket(&request.bucket)?.owner)
        } else {
            None
        };
        let enc = |text: &str| listing_text(url, text);
        let mut w = XmlWriter::new("ListBucketResult");
        w.leaf("Name", &request.bucket)
            .leaf("Prefix", &enc(&req.prefix))
            .leaf("KeyCount", &page.key_count().to_string());
        listing_limits(&mut w, &req, &page, &enc);
        if url {
            w.leaf("EncodingType", "url");
        }
        if let Some(token) = &req.continuation_token {
            w.leaf("ContinuationToken", token);
        }
        if let Some(token) = &page.next_continuation_token {
            w.leaf("NextContinuationToken", token);
        }
        if let Some(after) = &req.start_after {
            w.leaf("StartAfter", &enc(after));
        }
        listing_entries(&mut w, &page, owner.as_deref(), &enc);
        Ok(S3Answer::xml(w.finish("ListBucketResult")))
    }
}

/// `encoding-type` of a listing: `url` or nothing.
pub(super) fn encoding_type(request: &S3Request) -> Result<bool, GatewayError> {
    match request.param("encoding-type") {
        None => Ok(false),
        Some("url") => Ok(true),
        Some(_) => Err(GatewayError::InvalidArgument(
            "Invalid Encoding Method specified in Request".into(),
        )),
    }
}

/// A key or prefix as a listing shows it: URL-encoded with `encoding-type=url`.
pub(super) fn listing_text(url: bool, text: &str) -> String {
    if url {
        sigv4::uri_encode(text, false)
    } else {
        text.to_owned()
    }
}

/// MaxKeys, Delimiter and IsTruncated of a ListObjects (v1 or v2) answer.
pub(super) fn listing_limits(
    w: &mut XmlWriter,
    req: &ListObjectsRequest,
    page: &objstore::ListObjectsPage,
    enc: &dyn Fn(&str) -> String,
) {
    w.leaf(
        "MaxKeys",
        &req.max_keys
            .unwrap_or(objstore::MAX_KEYS)
            .min(objstore::MAX_KEYS)
            .to_string(),
    );
    if !req.delimiter.is_empty() {
        w.leaf("Delimiter", &enc(&req.delimiter));
    }
    w.leaf(
        "IsTruncated",
        if page.is_truncated() { "true" } else { "false" },
    );
}

/// The Contents (with the owner where given) and CommonPrefixes of a ListObjects
/// (v1 or v2) answer.
pub(super) fn listing_entries(
    w: &mut XmlWriter,
    page: &objstore::ListObjectsPage,
    owner: Option<&str>,
    enc: &dyn Fn(&str) -> String,
) {
    for object in &page.objects {
        w.open("Contents")
            .leaf("Key", &enc(&object.key))
            .leaf("LastModified", &iso_date(object.last_modified))
            .leaf("ETag", &format!("\"{}\"", object.etag))
            .leaf("Size", &object.size.to_string());
        if let Some(owner) = owner {
            owner_xml(w, owner);
        }
        w.leaf("StorageClass", "STANDARD").close("Contents");
    }
    for prefix in &page.common_prefixes {
        w.open("CommonPrefixes")
            .leaf("Prefix", &enc(prefix))
            .close("CommonPrefixes");
    }
}

/// `max-keys` of a listing.
pub(super) fn max_keys(request: &S3Request) -> Result<Option<usize>, GatewayError> {
    request
        .param("max-keys")
        .map(|text| {
            text.parse::<usize>().map_err(|_| {
                GatewayError::InvalidArgument(
                    "Provided max-keys not an integer or within integer range".into(),
                )
            })
        })
        .transpose()
}
