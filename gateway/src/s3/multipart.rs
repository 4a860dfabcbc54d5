//! The multipart-upload operations (CreateMultipartUpload, UploadPart,
//! CompleteMultipartUpload, AbortMultipartUpload, ListParts, ListMultipartUploads)
//! over the object store's multipart uploads. UploadPart streams its body as
//! PutObject does (aws-chunked, checksums, Content-MD5); the other operations have
//! small bodies.

use http::{HeaderMap, StatusCode};
use objstore::{CompletedPart, MultipartUpload, MAX_PART_NUMBER};

use super::access::owner_xml;
use super::encryption::{bucket_key_header, customer_key, encryption_headers, sse_kms_headers};
use super::objects::{content_md5, put_options, write_condition};
use super::routing::{Call, S3Request, StreamedBody};
use super::upload::store_error;
use super::xml::{XmlDocument, XmlWriter};
use super::{insert, iso_date, S3Answer, S3Service};
use crate::error::GatewayError;

fn upload_id(request: &S3Request) -> Result<&str, GatewayError> {
    request
        .param("uploadId")
        .ok_or_else(|| GatewayError::InvalidArgument("uploadId is missing".into()))
}

/// The encryption headers of CreateMultipartUpload's answer.
fn upload_encryption_headers(headers: &mut HeaderMap, upload: &MultipartUpload) {
    if upload.sse == objstore::Sse::S3 {
        insert(headers, "x-amz-server-side-encryption", "AES256");
        return;
    }
    sse_kms_headers(headers, &upload.kms_key_arn, upload.bucket_key_enabled);
}

/// The part number and upload id of an UploadPart (or UploadPartCopy).
pub(super) fn part_target(request: &S3Request) -> Result<(u32, &str), GatewayError> {
    let part_number = request
        .param("partNumber")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
        .ok_or_else(|| {
            GatewayError::InvalidArgument(format!(
                "Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"
            ))
        })?;
    Ok((part_number, upload_id(request)?))
}

/// The parts of a CompleteMultipartUpload body, in document order.
fn completed_parts(body: &[u8]) -> Result<Vec<CompletedPart>, GatewayError> {
    let doc = XmlDocument::parse(body, "CompleteMultipartUpload")?;
    let numbers = doc.all("PartNumber")?;
    let etags = doc.all("ETag")?;
    if numbers.is_empty() || numbers.len() != etags.len() {
        return Err(GatewayError::MalformedXml(
            "every Part of CompleteMultipartUpload needs a PartNumber and an ETag".into(),
        ));
    }
    numbers
        .iter()
        .zip(etags)
        .map(|(number, etag)| {
            let part_number = number
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
                .ok_or_else(|| {
                    GatewayError::InvalidArgument(format!(
                        "Part number must be an integer between 1 and {MAX_PART_NUMBER}, \
                         inclusive"
                    ))
                })?;
            Ok(CompletedPart { part_number, etag })
        })
        .collect()
}

impl S3Service {
    /// UploadPart: the body streams into the store as PutObject's does.
    pub(super) fn upload_part(
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
        let (part_number, upload_id) = part_target(request)?;
        if customer_key(headers)?.is_some() {
            return Err(GatewayError::Object(
                objstore::Error::CustomerKeyNotApplicable,
            ));
        }
        let content_md5 = content_md5(headers)?;
        let part = self
            .store
            .upload_part(
                kms,
                &request.bucket,
                &request.key,
                upload_id,
                part_number,
                body,
                content_md5,
            )
            .map_err(store_error)?;
        let mut answer = S3Answer::empty(StatusCode::OK);
        insert(&mut answer.headers, "etag", &format!("\"{}\"", part.etag));
        if let Some((algorithm, value)) = body.verified_checksum() {
            insert(&mut answer.headers, algorithm.header(), value);
        }
        Ok(answer)
    }

    /// CreateMultipartUpload: not for SSE-C, and conditions go on CompleteMultipartUpload.
    pub(super) fn create_multipart_upload(
        &self,
        call: &Call<'_>,
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let key = call.request.key.as_str();
        let parts = call.parts;
        let principal = call.principal;
        let kms = call.kms;
        let opts = put_options(&parts.headers)?;
        if matches!(opts.encryption, objstore::EncryptionRequest::Customer(_)) {
            return Err(GatewayError::NotImplemented(
                "atrest does not take SSE-C multipart uploads: upload the object with \
                 one PutObject (up to 5 TiB)"
                    .into(),
            ));
        }
        if opts.condition.is_some() {
            return Err(GatewayError::NotImplemented(
                "conditional writes go on CompleteMultipartUpload, not on \
                 CreateMultipartUpload"
                    .into(),
            ));
        }
        let bucket_key = bucket_key_header(&parts.headers)?;
        self.refuse_public_acl(bucket, opts.acl)?;
        self.ensure_managed_key(kms, bucket, &opts)?;
        let upload = self
            .store
            .create_multipart_upload(kms, bucket, key, &opts, bucket_key, principal)?;
        let mut w = XmlWriter::new("InitiateMultipartUploadResult");
        w.leaf("Bucket", bucket)
            .leaf("Key", key)
            .leaf("UploadId", &upload.upload_id);
        let mut answer = S3Answer::xml(w.finish("InitiateMultipartUploadResult"));
        upload_encryption_headers(&mut answer.headers, &upload);
        Ok(answer)
    }

    /// CompleteMultipartUpload: the listed parts, in order, become the object (If-Match and If-None-Match honoured).
    pub(super) fn complete_multipart_upload(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let key = call.request.key.as_str();
        let request = call.request;
        let parts = call.parts;
        let kms = call.kms;
        let list = completed_parts(body)?;
        let condition = write_condition(&parts.headers)?;
        let info = self.store.complete_multipart_upload_if(
            kms,
            bucket,
            key,
            upload_id(request)?,
            &list,
            condition,
        )?;
        let mut w = XmlWriter::new("CompleteMultipartUploadResult");
        w.leaf("Location", &format!("/{bucket}/{key}"))
            .leaf("Bucket", bucket)
            .leaf("Key", key)
            .leaf("ETag", &format!("\"{}\"", info.etag));
        let mut answer = S3Answer::xml(w.finish("CompleteMultipartUploadResult"));
        encryption_headers(&mut answer.headers, &info);
        Ok(answer)
    }

    /// AbortMultipartUpload: the upload and its parts are gone.
    pub(super) fn abort_multipart_upload(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let key = call.request.key.as_str();
        let request = call.request;
        self.store
            .abort_multipart_upload(bucket, key, upload_id(request)?)?;
        Ok(S3Answer::empty(StatusCode::NO_CONTENT))
    }

    /// ListParts: every part of the upload, in one page.
    pub(super) fn list_parts(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let key = call.request.key.as_str();
        let request = call.request;
        let id = upload_id(request)?;
        let (upload, list) = self.store.list_parts(bucket, key, id)?;
        let mut w = XmlWriter::new("ListPartsResult");
        w.leaf("Bucket", bucket)
            .leaf("Key", key)
            .leaf("UploadId", id);
        initiator_xml(&mut w, &upload);
        w.leaf("StorageClass", "STANDARD")
            .leaf("PartNumberMarker", "0")
            .leaf(
                "NextPartNumberMarker",
                &list.last().map_or(0, |p| p.part_number).to_string(),
            )
            .leaf("MaxParts", &MAX_PART_NUMBER.to_string())
            .leaf("IsTruncated", "false");
        for part in &list {
            w.open("Part")
                .leaf("PartNumber", &part.part_number.to_string())
                .leaf("LastModified", &iso_date(part.last_modified))
                .leaf("ETag", &format!("\"{}\"", part.etag))
                .leaf("Size", &part.size.to_string())
                .close("Part");
        }
        Ok(S3Answer::xml(w.finish("ListPartsResult")))
    }

    /// ListMultipartUploads: the bucket's uploads under `prefix`, in one page.
    pub(super) fn list_multipart_uploads(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let request = call.request;
        let prefix = request.param("prefix").unwrap_or("");
        let mut w = XmlWriter::new("ListMultipartUploadsResult");
        w.leaf("Bucket", bucket)
            .leaf("KeyMarker", "")
            .leaf("UploadIdMarker", "")
            .leaf("Prefix", prefix)
            .leaf("MaxUploads", "1000")
            .leaf("IsTruncated", "false");
        for upload in self.store.list_multipart_uploads(bucket)? {
            if !upload.key.starts_with(prefix) {
                continue;
            }
            w.open("Upload")
                .leaf("Key", &upload.key)
                .leaf("UploadId", &upload.upload_id);
            initiator_xml(&mut w, &upload);
            w.leaf("StorageClass", "STANDARD")
                .leaf("Initiated", &iso_date(upload.initiated))
                .close("Upload");
        }
        Ok(S3Answer::xml(w.finish("ListMultipartUploadsResult")))
    }
}

fn initiator_xml(w: &mut XmlWriter, upload: &MultipartUpload) {
    w.open("Initiator")
        .leaf("ID", &upload.initiator)
        .leaf("DisplayName", &upload.initiator)
        .close("Initiator");
    owner_xml(w, &upload.initiator);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_multipart_operations() {
        let route =
            |m: http::Method, p: &str, q: &str| S3Request::parse(&m, p, q).map(|r| r.operation);
        use crate::s3::S3Operation as Op;
        use http::Method;
        assert_eq!(
            route(Method::POST, "/b/k", "uploads").unwrap(),
            Op::CreateMultipartUpload
        );
        assert_eq!(
            route(Method::PUT, "/b/k", "partNumber=1&uploadId=x").unwrap(),
            Op::UploadPart
        );
        assert_eq!(
            route(Method::POST, "/b/k", "uploadId=x").unwrap(),
            Op::CompleteMultipartUpload
        );
        assert_eq!(
            route(Method::DELETE, "/b/k", "uploadId=x").unwrap(),
            Op::AbortMultipartUpload
        );
        assert_eq!(
            route(Method::GET, "/b/k", "uploadId=x").unwrap(),
            Op::ListParts
        );
        assert_eq!(
            route(Method::GET, "/b", "uploads").unwrap(),
            Op::ListMultipartUploads
        );
    }

    #[test]
    fn complete_bodies_are_parsed_strictly() {
        let body = br#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
            <Part><ETag>&quot;aa&quot;</ETag><PartNumber>1</PartNumber></Part>
            <Part><PartNumber>2</PartNumber><ETag>"bb"</ETag></Part>
            </CompleteMultipartUpload>"#;
        let parts = completed_parts(body).unwrap();
        assert_eq!(
            parts,
            vec![
                CompletedPart {
                    part_number: 1,
                    etag: "\"aa\"".into()
                },
                CompletedPart {
                    part_number: 2,
                    etag: "\"bb\"".into()
                },
            ]
        );
        let code = |b: &[u8]| completed_parts(b).unwrap_err().s3_code();
        assert_eq!(
            code(b"<CompleteMultipartUpload></CompleteMultipartUpload>"),
            "MalformedXML"
        );
        assert_eq!(
            code(b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>"),
            "MalformedXML"
        );
        assert_eq!(
            code(b"<CompleteMultipartUpload><Part><PartNumber>0</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>"),
            "InvalidArgument"
        );
        assert_eq!(code(b"<Delete></Delete>"), "MalformedXML");
    }
}
