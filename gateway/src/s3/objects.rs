//! The object operations: PutObject (streamed), GetObject and HeadObject (ranges,
//! conditions, `response-*` overrides, stored checksums), DeleteObject (versions,
//! If-Match) and DeleteObjects (key by key, each checked against the bucket policy).
//! CopyObject is in [`super::copy`], the multipart operations in [`super::multipart`].

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use crypto_core::kms::EncryptionContext;
use http::{HeaderMap, HeaderValue, StatusCode};
use objstore::{Acl, ByteRange, Condition, EncryptionRequest, ObjectInfo, PutObjectOptions};
use time::OffsetDateTime;

use super::access::{authorize, request_facts};
use super::encryption::{
    bucket_key_header, customer_key, customer_key_headers, encryption_headers, parse_context,
    refuse_sse_headers_on_read,
};
use super::routing::{Call, S3Request, StreamedBody};
use super::tagging::tags_from_header;
use super::upload::store_error;
use super::xml::{XmlDocument, XmlWriter};
use super::{header, http_date, insert, S3Answer, S3Body, S3Service};
use crate::error::{GatewayError, Protocol};

pub(super) fn object_headers(headers: &mut HeaderMap, info: &ObjectInfo) {
    insert(headers, "etag", &format!("\"{}\"", info.etag));
    if let Some(id) = &info.version_id {
        insert(headers, "x-amz-version-id", id);
    }
    insert(headers, "last-modified", &http_date(info.last_modified));
    insert(headers, "content-type", &info.content_type);
    insert(headers, "accept-ranges", "bytes");
    for (name, value) in &info.system_metadata {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    encryption_headers(headers, info);
    for (name, value) in &info.user_metadata {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(format!("x-amz-meta-{name}").as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
}

impl S3Service {
    /// PutObject: the body streams into the store, encrypted as the headers or the
    /// bucket's default say.
    pub(super) fn put_object(
        &self,
        call: &Call<'_>,
        body: &mut StreamedBody<'_, '_>,
    ) -> Result<S3Answer, GatewayError> {
        let Call {
            kms,
            request,
            parts,
            ..
        } = *call;
        let headers = &parts.headers;
        let opts = put_options(headers)?;
        self.refuse_public_acl(&request.bucket, opts.acl)?;
        body.report_checksum_to(opts.checksum.clone());
        let bucket_key = bucket_key_header(headers)?;
        self.ensure_managed_key(kms, &request.bucket, &opts)?;
        let info = self
            .store
            .put_object_with_bucket_key(kms, &request.bucket, &request.key, body, &opts, bucket_key)
            .map_err(store_error)?;
        let mut answer = S3Answer::empty(StatusCode::OK);
        insert(&mut answer.headers, "etag", &format!("\"{}\"", info.etag));
        if let Some(id) = &info.version_id {
            insert(&mut answer.headers, "x-amz-version-id", id);
        }
        encryption_headers(&mut answer.headers, &info);
        if let Some((_, md5)) = customer_key(headers)? {
            customer_key_headers(&mut answer.headers, &md5);
        }
        if let Some((algorithm, value)) = body.verified_checksum() {
            insert(&mut answer.headers, algorithm.header(), value);
        }
        Ok(answer)
    }

    /// GetObject (`with_body`) or HeadObject: the headers S3 sends about the object,
    /// and for GetObject its plaintext (or a range of it), streamed.
    pub(super) fn get_object(
        &self,
        call: &Call<'_>,
        with_body: bool,
    ) -> Result<S3Answer, GatewayError> {
        let Call {
            kms,
            request,
            parts,
            ..
        } = *call;
        let range = header(&parts.headers, "range")?.and_then(ByteRange::parse);
        refuse_sse_headers_on_read(&parts.headers)?;
        let customer = customer_key(&parts.headers)?;
        let (customer, customer_md5) = match &customer {
            Some((key, md5)) => (Some(key), Some(md5.as_str())),
            None => (None, None),
        };
        let info = self
            .store
            .head_object_with_key(&request.bucket, &request.key, customer)?;
        if let Some(not_modified) = read_conditions(&parts.headers, &info)? {
            return Ok(not_modified);
        }
        let tag_count = self
            .store
            .object_tagging(&request.bucket, &request.key)?
            .len();
        let checksum = match header(&parts.headers, "x-amz-checksum-mode")? {
            Some(mode) if mode.eq_ignore_ascii_case("ENABLED") && range.is_none() => {
                self.store.object_checksum(&request.bucket, &request.key)?
            }
            _ => None,
        };
        if !with_body {
            let mut answer = S3Answer::empty(StatusCode::OK);
            object_headers(&mut answer.headers, &info);
            tagging_count(&mut answer.headers, tag_count);
            checksum_headers(&mut answer.headers, checksum.as_ref());
            if let Some(md5) = customer_md5 {
                customer_key_headers(&mut answer.headers, md5);
            }
            let length = match range {
                Some(range) => {
                    let (first, last) = range.resolve(info.size)?;
                    answer.status = StatusCode::PARTIAL_CONTENT;
                    insert(
                        &mut answer.headers,
                        "content-range",
                        &format!("bytes {first}-{last}/{}", info.size),
                    );
                    last - first + 1
                }
                None => info.size,
            };
            insert(&mut answer.headers, "content-length", &length.to_string());
            response_overrides(&mut answer.headers, request);
            return Ok(answer);
        }
        let download =
            self.store
                .get_object_with_key(kms, &request.bucket, &request.key, range, customer)?;
        let mut answer = S3Answer::empty(StatusCode::OK);
        object_headers(&mut answer.headers, &download.info);
        tagging_count(&mut answer.headers, tag_count);
        checksum_headers(&mut answer.headers, checksum.as_ref());
        if let Some(md5) = customer_md5 {
            customer_key_headers(&mut answer.headers, md5);
        }
        if let Some((first, last)) = download.range {
            answer.status = StatusCode::PARTIAL_CONTENT;
            insert(
                &mut answer.headers,
                "content-range",
                &format!("bytes {first}-{last}/{}", download.info.size),
            );
        }
        response_overrides(&mut answer.headers, request);
        answer.body = S3Body::Object(Box::new(download.body));
        Ok(answer)
    }

    /// DeleteObject: the current object (a delete marker when versioning is on) or one version; If-Match is honoured.
    pub(super) fn delete_object(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let request = call.request;
        let parts = call.parts;
        for name in ["x-amz-if-match-last-modified-time", "x-amz-if-match-size"] {
            if parts.headers.contains_key(name) {
                return Err(GatewayError::NotImplemented(format!(
                    "the conditional delete header {name} is not implemented \
                     (If-Match is)"
                )));
            }
        }
        let if_match = header(&parts.headers, "if-match")?;
        let deleted = self.store.delete_object_version(
            bucket,
            &request.key,
            if_match,
            request.param("versionId"),
        )?;
        let mut answer = S3Answer::empty(StatusCode::NO_CONTENT);
        if let Some(id) = &deleted.outcome.version_id {
            insert(&mut answer.headers, "x-amz-version-id", id);
        }
        if deleted.outcome.delete_marker {
            insert(&mut answer.headers, "x-amz-delete-marker", "true");
        }
        Ok(answer)
    }

    /// DeleteObjects: up to 1000 keys; each is reported deleted or failed, as S3.
    pub(super) fn delete_objects(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let Call {
            principal, parts, ..
        } = *call;
        let bucket = call.request.bucket.as_str();
        let info = self.store.bucket(bucket)?;
        let facts = request_facts(parts);
        let has_digest = parts.headers.contains_key("content-md5")
            || parts
                .headers
                .keys()
                .any(|name| name.as_str().starts_with("x-amz-checksum-"))
            || parts.headers.contains_key("x-amz-trailer");
        if !has_digest {
            return Err(GatewayError::InvalidRequest(
                "Missing required header for this request: Content-MD5 or x-amz-checksum-*".into(),
            ));
        }
        let doc = XmlDocument::parse(body, "Delete")?;
        if !doc.all("VersionId")?.is_empty() {
            return Err(GatewayError::NotImplemented(
                "DeleteObjects with VersionId is not implemented: delete versions one by one \
                 (DeleteObject with versionId)"
                    .into(),
            ));
        }
        let keys = doc.all("Key")?;
        if keys.is_empty() || keys.len() > objstore::MAX_KEYS {
            return Err(GatewayError::MalformedXml(format!(
                "Delete must name 1 to {} objects",
                objstore::MAX_KEYS
            )));
        }
        let quiet = doc.get("Quiet")?.as_deref() == Some("true");
        let mut w = XmlWriter::new("DeleteResult");
        for key in &keys {
            let allowed = authorize(
                &info,
                principal,
                "s3:DeleteObject",
                &objstore::object_arn(bucket, key),
                &facts,
            );
            let result = allowed
                .map_err(|err| match err {
                    GatewayError::AccessDenied(m) => {
                        objstore::Error::Kms(crypto_core::kms::KmsError::AccessDenied(m))
                    }
                    other => objstore::Error::InvalidArgument(other.message()),
                })
                .and_then(|()| self.store.delete_object(bucket, key));
            match result {
                Ok(_) if quiet => {}
                Ok(_) => {
                    w.open("Deleted").leaf("Key", key).close("Deleted");
                }
                Err(err) => {
                    let reply = GatewayError::Object(err).reply(Protocol::S3);
                    w.open("Error")
                        .leaf("Key", key)
                        .leaf("Code", &reply.code)
                        .leaf("Message", &reply.message)
                        .close("Error");
                }
            }
        }
        Ok(S3Answer::xml(w.finish("DeleteResult")))
    }
}

/// GetObject's and HeadObject's `response-*` query parameters: the answer's headers
/// as the (signed) request asks, whatever the object stores.
pub(super) fn response_overrides(headers: &mut HeaderMap, request: &S3Request) {
    for (param, name) in [
        ("response-content-type", "content-type"),
        ("response-content-language", "content-language"),
        ("response-expires", "expires"),
        ("response-cache-control", "cache-control"),
        ("response-content-disposition", "content-disposition"),
        ("response-content-encoding", "content-encoding"),
    ] {
        if let Some(value) = request.param(param) {
            insert(headers, name, value);
        }
    }
}

/// The stored checksum of a GET or HEAD with `x-amz-checksum-mode: ENABLED`.
pub(super) fn checksum_headers(headers: &mut HeaderMap, checksum: Option<&(String, String)>) {
    if let Some((name, value)) = checksum {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
            insert(headers, "x-amz-checksum-type", "FULL_OBJECT");
        }
    }
}

/// `x-amz-tagging-count` of a GET or HEAD, when the object has tags.
pub(super) fn tagging_count(headers: &mut HeaderMap, count: usize) {
    if count > 0 {
        insert(headers, "x-amz-tagging-count", &count.to_string());
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110's IMF-fixdate); `None` for anything
/// else, which RFC 9110 says to ignore.
pub(super) fn parse_http_date(text: &str) -> Option<OffsetDateTime> {
    let parts: Vec<&str> = text.split_ascii_whitespace().collect();
    let [_, day, month, year, clock, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)?;
    let month = time::Month::try_from(u8::try_from(month + 1).ok()?).ok()?;
    let mut hms = clock.split(':').map(|n| n.parse::<u8>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    let date = time::Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    let time = time::Time::from_hms(h, m, sec).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc())
}

/// The conditions of a GET or HEAD (RFC 9110 section 13.2.2, as S3 applies them):
/// PreconditionFailed for a failed `If-Match` / `If-Unmodified-Since`, a 304 answer
/// for a failed `If-None-Match` / `If-Modified-Since`, `None` to go on.
pub(super) fn read_conditions(
    headers: &HeaderMap,
    info: &ObjectInfo,
) -> Result<Option<S3Answer>, GatewayError> {
    let matches = |value: &str| {
        value.split(',').any(|one| {
            let one = one.trim();
            let one = one.strip_prefix("W/").unwrap_or(one);
            one == "*" || one.trim_matches('"') == info.etag
        })
    };
    // Last-Modified has one-second resolution on the wire.
    let modified = info.last_modified.unix_timestamp();
    let failed = || {
        GatewayError::Object(objstore::Error::PreconditionFailed(
            "the object does not meet the request's If-Match or If-Unmodified-Since".into(),
        ))
    };
    match header(headers, "if-match")? {
        Some(value) if !matches(value) => return Err(failed()),
        Some(_) => {}
        None => {
            if let Some(since) = header(headers, "if-unmodified-since")?.and_then(parse_http_date) {
                if modified > since.unix_timestamp() {
                    return Err(failed());
                }
            }
        }
    }
    let not_modified = match header(headers, "if-none-match")? {
        Some(value) => matches(value),
        None => header(headers, "if-modified-since")?
            .and_then(parse_http_date)
            .is_some_and(|since| modified <= since.unix_timestamp()),
    };
    if !not_modified {
        return Ok(None);
    }
    let mut answer = S3Answer::empty(StatusCode::NOT_MODIFIED);
    insert(&mut answer.headers, "etag", &format!("\"{}\"", info.etag));
    insert(
        &mut answer.headers,
        "last-modified",
        &http_date(info.last_modified),
    );
    Ok(Some(answer))
}

/// `If-None-Match: *` and `If-Match` of a write.
pub(super) fn write_condition(headers: &HeaderMap) -> Result<Option<Condition>, GatewayError> {
    let if_match = header(headers, "if-match")?;
    let if_none_match = header(headers, "if-none-match")?;
    match (if_match, if_none_match) {
        (None, None) => Ok(None),
        (Some(etag), None) => Ok(Some(Condition::EtagMatches(etag.to_owned()))),
        (None, Some(value)) if value.trim() == "*" => Ok(Some(Condition::Absent)),
        (None, Some(_)) => Err(GatewayError::NotImplemented(
            "A header you provided implies functionality that is not implemented: \
             If-None-Match on a write takes only *"
                .into(),
        )),
        (Some(_), Some(_)) => Err(GatewayError::NotImplemented(
            "If-Match and If-None-Match together on a write are not implemented".into(),
        )),
    }
}

/// The options of a PutObject, from its headers.
pub(super) fn put_options(headers: &HeaderMap) -> Result<PutObjectOptions, GatewayError> {
    let sse = header(headers, "x-amz-server-side-encryption")?;
    let key_id = header(headers, "x-amz-server-side-encryption-aws-kms-key-id")?;
    let context = header(headers, "x-amz-server-side-encryption-context")?;
    let customer = customer_key(headers)?;
    let encryption = match (sse, customer) {
        (Some(_), Some(_)) => {
            return Err(GatewayError::InvalidArgument(
                "Server Side Encryption with Customer provided key is incompatible with the \
                 encryption method specified"
                    .into(),
            ))
        }
        (None, Some((key, _))) => EncryptionRequest::Customer(std::sync::Arc::new(key)),
        (None, None) => EncryptionRequest::BucketDefault,
        (Some("AES256"), None) => EncryptionRequest::SseS3,
        (Some("aws:kms"), None) => EncryptionRequest::SseKms,
        (Some(other), None) => {
            return Err(GatewayError::InvalidArgument(format!(
                "x-amz-server-side-encryption must be AES256 or aws:kms, not '{}'",
                other.chars().take(32).collect::<String>()
            )))
        }
    };
    if sse != Some("aws:kms") && (key_id.is_some() || context.is_some()) {
        return Err(GatewayError::InvalidArgument(
            "Server Side Encryption with AWS KMS managed key requires HTTP header \
             x-amz-server-side-encryption : aws:kms"
                .into(),
        ));
    }
    let encryption_context = match context {
        Some(text) => parse_context(text)?,
        None => EncryptionContext::new(),
    };
    let mut user_metadata = BTreeMap::new();
    for (name, value) in headers {
        if let Some(meta) = name.as_str().strip_prefix("x-amz-meta-") {
            let value = value.to_str().map_err(|_| {
                GatewayError::InvalidArgument(format!("the header {name} is not ASCII text"))
            })?;
            user_metadata.insert(meta.to_owned(), value.to_owned());
        }
    }
    let content_md5 = content_md5(headers)?;
    let mut system_metadata = BTreeMap::new();
    for name in objstore::SYSTEM_METADATA {
        let Some(value) = header(headers, name)? else {
            continue;
        };
        // `aws-chunked` describes this request's body, not the object (S3 drops it).
        let value = if name == "content-encoding" {
            value
                .split(',')
                .map(str::trim)
                .filter(|coding| !coding.eq_ignore_ascii_case("aws-chunked") && !coding.is_empty())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            value.to_owned()
        };
        if !value.is_empty() {
            system_metadata.insert(name.to_owned(), value);
        }
    }
    Ok(PutObjectOptions {
        checksum: objstore::BodyChecksum::default(),
        system_metadata,
        tags: tags_from_header(headers)?,
        content_type: header(headers, "content-type")?.map(str::to_owned),
        user_metadata,
        kms_key_id: key_id.map(str::to_owned),
        encryption_context,
        acl: header(headers, "x-amz-acl")?
            .map(Acl::parse)
            .transpose()?
            .unwrap_or_default(),
        content_md5,
        encryption,
        condition: write_condition(headers)?,
    })
}

/// `Content-MD5`, decoded.
pub(super) fn content_md5(headers: &HeaderMap) -> Result<Option<[u8; 16]>, GatewayError> {
    header(headers, "content-md5")?
        .map(|text| {
            BASE64
                .decode(text.trim())
                .ok()
                .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
                .ok_or_else(|| {
                    GatewayError::InvalidDigest("The Content-MD5 you specified was invalid.".into())
                })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as BASE64;

    #[test]
    fn put_options_follow_s3_rules() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-server-side-encryption-aws-kms-key-id",
            HeaderValue::from_static("alias/k"),
        );
        assert_eq!(put_options(&h).unwrap_err().s3_code(), "InvalidArgument");
        h.insert(
            "x-amz-server-side-encryption",
            HeaderValue::from_static("aws:kms"),
        );
        let context = BASE64.encode(br#"{"project":"x"}"#);
        h.insert(
            "x-amz-server-side-encryption-context",
            HeaderValue::from_str(&context).unwrap(),
        );
        h.insert("x-amz-meta-color", HeaderValue::from_static("blue"));
        let opts = put_options(&h).unwrap();
        assert_eq!(opts.kms_key_id.as_deref(), Some("alias/k"));
        assert_eq!(opts.encryption_context["project"], "x");
        assert_eq!(opts.user_metadata["color"], "blue");
        h.insert(
            "x-amz-server-side-encryption-context",
            HeaderValue::from_static("!!"),
        );
        assert!(put_options(&h).is_err());
        h.remove("x-amz-server-side-encryption-context");
        h.insert("content-md5", HeaderValue::from_static("short"));
        assert_eq!(put_options(&h).unwrap_err().s3_code(), "InvalidDigest");
    }
}
