//! Browser uploads: `POST /BUCKET` with a `multipart/form-data` body whose form fields
//! (before the `file` field) carry a base64 POST policy and its SigV4 signature.
//!
//! The form is read field by field up to `file`; the policy's signature, expiration
//! and conditions are checked, and every field must be covered by a condition (as S3
//! requires), before the file is read. The file then streams into the same put path a
//! PutObject takes (encryption defaults, SSE-S3/SSE-KMS fields, bucket policy and
//! account checks, key-service calls as the signer), with `content-length-range`
//! enforced as it streams: a file outside it, or a form cut short, stores nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};

use http::{HeaderMap, HeaderValue, StatusCode};

use super::access::{authorize, refuse_grant_headers, request_facts};
use super::auth::{authenticate_form, signed_kms, FormSignature, SecureTransport};
use super::encryption::{bucket_key_header, encryption_headers};
use super::objects::put_options;
use super::tagging::tags_from_xml;
use super::{insert, S3Answer, S3Body, S3Context, S3Service};
use crate::error::{FormFault, GatewayError};
use crate::s3::upload::{store_error, UploadBody};
use crate::s3::xml::XmlWriter;
use crate::sigv4;

/// S3's limit on the form before the file (fields and their part headers).
const MAX_PRE_DATA: usize = 20 * 1024;
/// Preamble and epilogue bytes read around the form's parts at most.
const MAX_PADDING: usize = 64 * 1024;
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Form fields stored as the PutObject header of the same name.
const HEADER_FIELDS: &[&str] = &[
    "content-type",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "expires",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-context",
    "x-amz-server-side-encryption-bucket-key-enabled",
];
/// Form fields the POST itself takes.
const FORM_FIELDS: &[&str] = &[
    "key",
    "policy",
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-signature",
    "success_action_status",
    "success_action_redirect",
    "redirect",
    "acl",
    "tagging",
];

fn form_error(fault: FormFault, message: impl Into<String>) -> GatewayError {
    GatewayError::PostForm(fault, message.into())
}

fn malformed(message: impl Into<String>) -> GatewayError {
    form_error(FormFault::Malformed, message)
}

fn policy_failed(message: impl Into<String>) -> GatewayError {
    GatewayError::AccessDenied(format!("Invalid according to Policy: {}", message.into()))
}

fn invalid_policy(message: impl Into<String>) -> GatewayError {
    form_error(
        FormFault::InvalidPolicy,
        format!("Invalid Policy: {}", message.into()),
    )
}

mod form;
mod policy;

use form::{open_form, FileReader, Form};
use policy::Policy;
#[cfg(test)]
mod tests;

/// Where the answer says the object is: `scheme://host/bucket/key`.
fn object_location(parts: &http::request::Parts, bucket: &str, key: &str) -> String {
    let scheme = if parts.extensions.get::<SecureTransport>().is_some() {
        "https"
    } else {
        "http"
    };
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!(
        "{scheme}://{host}/{}/{}",
        sigv4::uri_encode(bucket, true),
        sigv4::uri_encode(key, false)
    )
}

/// What the endpoint reads of an untrusted form without a key service or store: its
/// fields and file (`content_type` is the request's header), the policy in its
/// `policy` field checked against them (signature aside) and the file streamed
/// within the policy's content-length-range. Returns the file's bytes. The fuzz
/// target `s3_post_form` drives this.
pub fn read_form(content_type: &str, body: &[u8]) -> Result<Vec<u8>, GatewayError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .map_err(|_| malformed("the Content-Type is not header text"))?,
    );
    let mut src = body;
    let (mut form, mut fields, filename) = open_form(&headers, &mut src)?;
    let policy = Policy::parse(fields.get("policy").map_or("", String::as_str))?;
    let key = fields
        .get("key")
        .map(|key| key.replace("${filename}", &filename))
        .unwrap_or_default();
    fields.insert("key".into(), key);
    policy.check(&fields, "bucket")?;
    let mut file = FileReader {
        form: &mut form,
        range: policy.length_range(),
        read: 0,
        done: false,
    };
    let mut out = Vec::new();
    file.read_to_end(&mut out)
        .map_err(UploadBody::<&mut dyn BufRead>::error_of)?;
    Ok(out)
}

impl S3Service {
    /// `POST /BUCKET`: a browser upload (see the module docs).
    pub(super) fn post_object(
        &self,
        ctx: &S3Context<'_>,
        parts: &http::request::Parts,
        bucket: &str,
        body: &mut dyn BufRead,
    ) -> Result<S3Answer, GatewayError> {
        let (mut form, mut fields, filename) = open_form(&parts.headers, body)?;
        let result = self.post_file(ctx, parts, bucket, &mut fields, &filename, &mut form);
        if result.is_ok() {
            // Fields after the file are ignored, as S3 does; the rest of the body is
            // read (up to a limit) so that the connection can serve its next request.
            let mut left = 0usize;
            while left < MAX_PADDING && form.fill().unwrap_or(false) {
                left += form.buf.len();
                form.buf.clear();
            }
        }
        result
    }

    fn post_file(
        &self,
        ctx: &S3Context<'_>,
        parts: &http::request::Parts,
        bucket: &str,
        fields: &mut BTreeMap<String, String>,
        filename: &str,
        form: &mut Form<'_>,
    ) -> Result<S3Answer, GatewayError> {
        let given = fields.clone();
        let field = |name: &str| given.get(name).map(String::as_str);
        // A form without any signature is anonymous: atrest has no public-write
        // buckets, so it is refused as S3 refuses an anonymous write.
        if field("awsaccesskeyid").is_some() || field("signature").is_some() {
            return Err(GatewayError::NotImplemented(
                "Signature Version 2 POST forms (AWSAccessKeyId, signature) are not \
                 implemented: sign with AWS4-HMAC-SHA256 (boto3: \
                 Config(signature_version='s3v4'))"
                    .into(),
            ));
        }
        if ["policy", "x-amz-signature", "x-amz-credential"]
            .iter()
            .all(|name| field(name).is_none())
        {
            return Err(GatewayError::AccessDenied("Access Denied".into()));
        }
        let required = |name: &'static str| {
            field(name).ok_or_else(|| {
                form_error(
                    FormFault::InvalidField,
                    format!(
                        "Bucket POST must contain a field named '{name}'. If it is specified, \
                         please check the order of the fields."
                    ),
                )
            })
        };
        let policy_text = required("policy")?;
        let algorithm = required("x-amz-algorithm")?;
        let credential = required("x-amz-credential")?;
        let amz_date = required("x-amz-date")?;
        let signature = required("x-amz-signature")?;
        if field("x-amz-security-token").is_some() {
            return Err(GatewayError::UnrecognizedClient(
                "The security token included in the request is invalid.".into(),
            ));
        }
        if algorithm != ALGORITHM {
            return Err(form_error(
                FormFault::InvalidField,
                format!("x-amz-algorithm must be {ALGORITHM}"),
            ));
        }
        let verified = authenticate_form(
            ctx,
            FormSignature {
                policy: policy_text,
                credential,
                amz_date,
                signature,
            },
        )?;
        let policy = Policy::parse(policy_text)?;
        if policy.expiration < ctx.now {
            return Err(policy_failed("Policy expired."));
        }
        // The key as stored: `${filename}` is the browser's file name (its last path
        // component, as old browsers send whole paths).
        let key_field = required("key")?.to_owned();
        let base_name = filename.rsplit(['/', '\\']).next().unwrap_or_default();
        let key = key_field.replace("${filename}", base_name);
        if key.is_empty() {
            return Err(form_error(
                FormFault::InvalidField,
                "User key must have a length greater than 0.",
            ));
        }
        // Conditions are checked on the key that will be stored.
        fields.insert("key".into(), key.clone());
        policy.check(fields, bucket)?;
        for name in fields.keys() {
            // A customer key in a form would sit in the signed policy (every field
            // must be covered), in the page that carries the form: not taken.
            if name.starts_with("x-amz-server-side-encryption-customer-") {
                return Err(GatewayError::NotImplemented(format!(
                    "SSE-C in POST forms ({name}) is not implemented: upload with PutObject"
                )));
            }
            let known = FORM_FIELDS.contains(&name.as_str())
                || HEADER_FIELDS.contains(&name.as_str())
                || name.starts_with("x-amz-meta-")
                || name.starts_with("x-ignore-")
                || name.starts_with("x-amz-grant-");
            if !known {
                return Err(GatewayError::NotImplemented(format!(
                    "the POST form field '{name}' is not implemented by atrest"
                )));
            }
        }
        // The request the form stands for, as a PutObject's headers.
        let mut put = http::Request::builder()
            .method(http::Method::PUT)
            .uri(parts.uri.clone())
            .body(())
            .map_err(|_| malformed("the request URI"))?
            .into_parts()
            .0;
        if parts.extensions.get::<SecureTransport>().is_some() {
            put.extensions.insert(SecureTransport);
        }
        for (name, value) in fields.iter() {
            let header = if name == "acl" {
                "x-amz-acl"
            } else if HEADER_FIELDS.contains(&name.as_str())
                || name.starts_with("x-amz-meta-")
                || name.starts_with("x-amz-grant-")
            {
                name.as_str()
            } else {
                continue;
            };
            let name = http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| malformed(format!("the form field name '{header}'")))?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                form_error(
                    FormFault::InvalidField,
                    format!("the form field '{header}' is not header text"),
                )
            })?;
            put.headers.insert(name, value);
        }
        let principal = verified.principal;
        let kms = signed_kms(ctx, &principal)?;
        let bucket_info = self.store.bucket(bucket)?;
        authorize(
            &bucket_info,
            &principal,
            "s3:PutObject",
            &objstore::object_arn(bucket, &key),
            &request_facts(&put),
        )?;
        refuse_grant_headers(&put.headers)?;
        let mut opts = put_options(&put.headers)?;
        if let Some(tagging) = field("tagging") {
            opts.tags = tags_from_xml(tagging.as_bytes())?;
        }
        self.refuse_public_acl(bucket, opts.acl)?;
        let bucket_key = bucket_key_header(&put.headers)?;
        self.ensure_managed_key(&kms, bucket, &opts)?;
        let status = match field("success_action_status") {
            Some("200") => StatusCode::OK,
            Some("201") => StatusCode::CREATED,
            _ => StatusCode::NO_CONTENT,
        };
        let redirect = field("success_action_redirect")
            .or_else(|| field("redirect"))
            .map(str::to_owned);
        if let Some(url) = &redirect {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(form_error(
                    FormFault::InvalidField,
                    "success_action_redirect must be an http:// or https:// URL",
                ));
            }
        }
        let mut file = FileReader {
            form,
            range: policy.length_range(),
            read: 0,
            done: false,
        };
        let info = self
            .store
            .put_object_with_bucket_key(&kms, bucket, &key, &mut file, &opts, bucket_key)
            .map_err(store_error)?;
        let etag = format!("\"{}\"", info.etag);
        let location = object_location(parts, bucket, &key);
        let mut answer = S3Answer::empty(status);
        insert(&mut answer.headers, "etag", &etag);
        insert(&mut answer.headers, "location", &location);
        if let Some(id) = &info.version_id {
            insert(&mut answer.headers, "x-amz-version-id", id);
        }
        encryption_headers(&mut answer.headers, &info);
        if let Some(url) = redirect {
            let separator = if url.contains('?') { '&' } else { '?' };
            let target = format!(
                "{url}{separator}bucket={}&key={}&etag={}",
                sigv4::uri_encode(bucket, true),
                sigv4::uri_encode(&key, true),
                sigv4::uri_encode(&etag, true)
            );
            answer.status = StatusCode::SEE_OTHER;
            insert(&mut answer.headers, "location", &target);
        } else if status == StatusCode::CREATED {
            let mut w = XmlWriter::bare("PostResponse");
            w.leaf("Location", &location)
                .leaf("Bucket", bucket)
                .leaf("Key", &key)
                .leaf("ETag", &etag);
            answer.body = S3Body::Xml(w.finish("PostResponse"));
            insert(&mut answer.headers, "content-type", "application/xml");
        }
        Ok(answer)
    }
}
