//! Tags: of objects (PutObjectTagging, GetObjectTagging, DeleteObjectTagging, and
//! `x-amz-tagging` on a write) and of buckets (Put-, Get-, DeleteBucketTagging).

use http::{HeaderMap, StatusCode};

use super::routing::Call;
use super::xml::{XmlDocument, XmlWriter};
use super::{header, S3Answer, S3Service};
use crate::error::GatewayError;
use crate::sigv4;

/// A `<Tagging><TagSet><Tag><Key/><Value/></Tag>...</TagSet></Tagging>` body.
pub(super) fn tags_from_xml(body: &[u8]) -> Result<objstore::TagSet, GatewayError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| GatewayError::MalformedXml("the tag set is not UTF-8".into()))?
        .replace("<Value/>", "<Value></Value>")
        .replace("<Value />", "<Value></Value>");
    let doc = XmlDocument::parse(text.as_bytes(), "Tagging")?;
    let keys = doc.all("Key")?;
    let values = doc.all("Value")?;
    if keys.len() != values.len() || keys.len() != text.matches("<Tag>").count() {
        return Err(GatewayError::MalformedXml(
            "every Tag of the TagSet needs one Key and one Value".into(),
        ));
    }
    let mut tags = objstore::TagSet::new();
    for (key, value) in keys.into_iter().zip(values) {
        if tags.insert(key, value).is_some() {
            return Err(GatewayError::Object(objstore::Error::InvalidTag(
                "Cannot provide multiple Tags with the same key".into(),
            )));
        }
    }
    Ok(tags)
}

/// `x-amz-tagging` (a URL query string: `k1=v1&k2=v2`).
pub(super) fn tags_from_header(headers: &HeaderMap) -> Result<objstore::TagSet, GatewayError> {
    let mut tags = objstore::TagSet::new();
    if let Some(text) = header(headers, "x-amz-tagging")? {
        for (key, value) in sigv4::query_pairs(text)? {
            if tags.insert(key, value).is_some() {
                return Err(GatewayError::Object(objstore::Error::InvalidTag(
                    "Cannot provide multiple Tags with the same key".into(),
                )));
            }
        }
    }
    Ok(tags)
}

/// GetObjectTagging's and GetBucketTagging's document.
pub(super) fn tagging_document(tags: &objstore::TagSet) -> Vec<u8> {
    let mut w = XmlWriter::new("Tagging");
    w.open("TagSet");
    for (key, value) in tags {
        w.open("Tag")
            .leaf("Key", key)
            .leaf("Value", value)
            .close("Tag");
    }
    w.close("TagSet");
    w.finish("Tagging")
}

impl S3Service {
    /// PutObjectTagging: replaces the object's tag set.
    pub(super) fn put_object_tagging(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let request = call.request;
        let tags = tags_from_xml(body)?;
        self.store.put_object_tagging(bucket, &request.key, &tags)?;
        Ok(S3Answer::empty(StatusCode::OK))
    }

    /// GetObjectTagging.
    pub(super) fn get_object_tagging(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let request = call.request;
        let tags = self.store.object_tagging(bucket, &request.key)?;
        Ok(S3Answer::xml(tagging_document(&tags)))
    }

    /// DeleteObjectTagging: an empty tag set.
    pub(super) fn delete_object_tagging(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let request = call.request;
        self.store
            .put_object_tagging(bucket, &request.key, &objstore::TagSet::new())?;
        Ok(S3Answer::empty(StatusCode::NO_CONTENT))
    }

    /// PutBucketTagging: replaces the bucket's tag set.
    pub(super) fn put_bucket_tagging(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let tags = tags_from_xml(body)?;
        self.store.put_bucket_tagging(bucket, Some(tags))?;
        Ok(S3Answer::empty(StatusCode::NO_CONTENT))
    }

    /// GetBucketTagging (NoSuchTagSet when the bucket has none).
    pub(super) fn get_bucket_tagging(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let tags = self.store.bucket_tagging(bucket)?;
        Ok(S3Answer::xml(tagging_document(&tags)))
    }

    /// DeleteBucketTagging.
    pub(super) fn delete_bucket_tagging(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        self.store.put_bucket_tagging(bucket, None)?;
        Ok(S3Answer::empty(StatusCode::NO_CONTENT))
    }
}
