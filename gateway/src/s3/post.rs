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
use std::io::{self, BufRead, Read};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::access::{authorize, refuse_grant_headers, request_facts};
use super::auth::{signed_kms, SecureTransport};
use super::encryption::{bucket_key_header, encryption_headers};
use super::objects::put_options;
use super::tagging::tags_from_xml;
use super::{insert, S3Answer, S3Body, S3Context, S3Service};
use crate::error::{FormFault, GatewayError};
use crate::s3::upload::UploadBody;
use crate::s3::xml::XmlWriter;
use crate::sigv4::{self, Expectations, PathEncoding};

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

/// A `multipart/form-data` body read part by part; `delimiter` is `CRLF--boundary`.
struct Form<'r> {
    src: &'r mut dyn BufRead,
    buf: Vec<u8>,
    delimiter: Vec<u8>,
}

/// Where `needle` (non-empty) first starts in `haystack`: a scan for its first byte,
/// then a compare (the file's bytes pass through here once each).
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(at) = haystack[from..].iter().position(|&b| b == first) {
        let start = from + at;
        match haystack.get(start..start + needle.len()) {
            Some(candidate) if candidate == needle => return Some(start),
            Some(_) => from = start + 1,
            None => return None,
        }
    }
    None
}

/// A part's `Content-Disposition: form-data; name="..."; filename="..."`.
struct Disposition {
    name: String,
    filename: Option<String>,
}

fn parse_disposition(value: &str) -> Result<Disposition, GatewayError> {
    let bad = || malformed("a part's Content-Disposition is not form-data with a name");
    let (kind, mut rest) = value.split_once(';').ok_or_else(bad)?;
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(bad());
    }
    let mut params = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            break;
        }
        let (name, after) = rest.split_once('=').ok_or_else(bad)?;
        let name = name.trim().to_ascii_lowercase();
        let (text, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut text = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => text.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => text.push(c),
                }
            }
            (text, &quoted[end.ok_or_else(bad)?..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(name, text);
        rest = after;
    }
    Ok(Disposition {
        name: params.remove("name").ok_or_else(bad)?,
        filename: params.remove("filename"),
    })
}

impl Form<'_> {
    /// Reads more of the body; false at its end.
    fn fill(&mut self) -> io::Result<bool> {
        let chunk = self.src.fill_buf()?;
        if chunk.is_empty() {
            return Ok(false);
        }
        let n = chunk.len();
        self.buf.extend_from_slice(chunk);
        self.src.consume(n);
        Ok(true)
    }

    /// Reads up to and past the next delimiter, returning what came before it
    /// (at most `limit` bytes).
    fn until_delimiter(&mut self, limit: usize) -> Result<Vec<u8>, GatewayError> {
        loop {
            if let Some(at) = find(&self.buf, &self.delimiter) {
                if at > limit {
                    break;
                }
                let value = self.buf[..at].to_vec();
                self.buf.drain(..at + self.delimiter.len());
                return Ok(value);
            }
            if self.buf.len() > limit + self.delimiter.len() {
                break;
            }
            if !self
                .fill()
                .map_err(UploadBody::<&mut dyn BufRead>::error_of)?
            {
                return Err(GatewayError::IncompleteBody(
                    "the form ended before its closing boundary".into(),
                ));
            }
        }
        Err(form_error(
            FormFault::PreDataTooLong,
            "Your POST request fields preceeding the upload file was too large.",
        ))
    }

    /// After a delimiter: true when another part follows, false at the closing one.
    fn another_part(&mut self) -> Result<bool, GatewayError> {
        while self.buf.len() < 2 {
            if !self
                .fill()
                .map_err(UploadBody::<&mut dyn BufRead>::error_of)?
            {
                return Err(GatewayError::IncompleteBody(
                    "the form ended after a boundary".into(),
                ));
            }
        }
        let next = [self.buf[0], self.buf[1]];
        self.buf.drain(..2);
        match &next {
            b"\r\n" => Ok(true),
            b"--" => Ok(false),
            _ => Err(malformed(
                "a form boundary is followed by neither CRLF nor --",
            )),
        }
    }

    /// A part's headers: its disposition and how many bytes they took.
    fn part_headers(&mut self, budget: usize) -> Result<(Disposition, usize), GatewayError> {
        let end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if self.buf.len() > budget {
                return Err(form_error(
                    FormFault::PreDataTooLong,
                    "Your POST request fields preceeding the upload file was too large.",
                ));
            }
            if !self
                .fill()
                .map_err(UploadBody::<&mut dyn BufRead>::error_of)?
            {
                return Err(GatewayError::IncompleteBody(
                    "the form ended inside a part's headers".into(),
                ));
            }
        };
        let text = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| malformed("a part's headers are not UTF-8"))?;
        let mut disposition = None;
        for line in text.split("\r\n") {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| malformed("a part's header line has no colon"))?;
            if name.trim().eq_ignore_ascii_case("content-disposition") {
                disposition = Some(parse_disposition(value.trim())?);
            }
        }
        let disposition =
            disposition.ok_or_else(|| malformed("a part has no Content-Disposition"))?;
        self.buf.drain(..end + 4);
        Ok((disposition, end + 4))
    }
}

/// The `file` field's content, streamed: ends at the next delimiter, counted against
/// the policy's content-length-range.
struct FileReader<'f, 'r> {
    form: &'f mut Form<'r>,
    range: Option<(u64, u64)>,
    read: u64,
    done: bool,
}

impl FileReader<'_, '_> {
    fn emit(&mut self, out: &mut [u8], n: usize) -> io::Result<usize> {
        let n = n.min(out.len());
        out[..n].copy_from_slice(&self.form.buf[..n]);
        self.form.buf.drain(..n);
        self.read += n as u64;
        if let Some((_, max)) = self.range {
            if self.read > max {
                return Err(io::Error::other(form_error(
                    FormFault::FileTooLarge,
                    format!(
                        "Your proposed upload exceeds the maximum allowed size: the policy's \
                         content-length-range allows at most {max} bytes"
                    ),
                )));
            }
        }
        Ok(n)
    }
}

impl Read for FileReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done {
                return Ok(0);
            }
            let delimiter = self.form.delimiter.len();
            if let Some(at) = find(&self.form.buf, &self.form.delimiter) {
                if at > 0 {
                    return self.emit(out, at);
                }
                self.form.buf.drain(..delimiter);
                self.done = true;
                if let Some((min, _)) = self.range {
                    if self.read < min {
                        return Err(io::Error::other(form_error(
                            FormFault::FileTooSmall,
                            format!(
                                "Your proposed upload is smaller than the minimum allowed \
                                 size: the policy's content-length-range needs at least {min} \
                                 bytes"
                            ),
                        )));
                    }
                }
                return Ok(0);
            }
            let safe = self.form.buf.len().saturating_sub(delimiter - 1);
            if safe > 0 {
                return self.emit(out, safe);
            }
            if !self.form.fill()? {
                return Err(io::Error::other(GatewayError::IncompleteBody(
                    "the form ended inside the file field (no closing boundary)".into(),
                )));
            }
        }
    }
}

/// A condition of the policy's `conditions`.
#[derive(Debug, PartialEq)]
enum Rule {
    Eq(String, String),
    StartsWith(String, String),
    Length(u64, u64),
}

impl Rule {
    fn describe(&self) -> String {
        match self {
            Rule::Eq(field, value) => format!("[\"eq\", \"${field}\", \"{value}\"]"),
            Rule::StartsWith(field, prefix) => {
                format!("[\"starts-with\", \"${field}\", \"{prefix}\"]")
            }
            Rule::Length(min, max) => format!("[\"content-length-range\", {min}, {max}]"),
        }
    }
}

/// The decoded policy: its expiration and conditions.
#[derive(Debug)]
struct Policy {
    expiration: OffsetDateTime,
    rules: Vec<Rule>,
}

fn number(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn field_name(value: &serde_json::Value) -> Result<String, GatewayError> {
    value
        .as_str()
        .and_then(|name| name.strip_prefix('$'))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| invalid_policy("a condition names its field as \"$field\""))
}

impl Policy {
    fn parse(base64_policy: &str) -> Result<Policy, GatewayError> {
        let json = BASE64
            .decode(base64_policy.trim())
            .map_err(|_| invalid_policy("the policy is not base64"))?;
        let doc: serde_json::Value = serde_json::from_slice(&json)
            .map_err(|_| invalid_policy("the policy is not a JSON document"))?;
        let object = doc
            .as_object()
            .ok_or_else(|| invalid_policy("the policy is not a JSON object"))?;
        if let Some(extra) = object
            .keys()
            .find(|k| *k != "expiration" && *k != "conditions")
        {
            return Err(invalid_policy(format!(
                "Unexpected field '{extra}' in the policy document"
            )));
        }
        let expiration = object
            .get("expiration")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| invalid_policy("Policy missing expiration."))?;
        let expiration = OffsetDateTime::parse(expiration, &Rfc3339)
            .map_err(|_| invalid_policy("Invalid 'expiration' value: an ISO 8601 UTC time"))?;
        let conditions = object
            .get("conditions")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| invalid_policy("Policy missing conditions."))?;
        let mut rules = Vec::new();
        for condition in conditions {
            let rule = match condition {
                serde_json::Value::Object(pair) if pair.len() == 1 => {
                    let (name, value) = pair.iter().next().unwrap_or_else(|| unreachable!());
                    let value = value.as_str().ok_or_else(|| {
                        invalid_policy(format!("the condition on '{name}' is not a string"))
                    })?;
                    Rule::Eq(name.to_ascii_lowercase(), value.to_owned())
                }
                serde_json::Value::Array(items) if items.len() == 3 => {
                    let op = items[0].as_str().unwrap_or_default().to_ascii_lowercase();
                    match op.as_str() {
                        "eq" | "starts-with" => {
                            let field = field_name(&items[1])?;
                            let value = items[2].as_str().ok_or_else(|| {
                                invalid_policy(format!("the {op} condition's value is a string"))
                            })?;
                            if op == "eq" {
                                Rule::Eq(field, value.to_owned())
                            } else {
                                Rule::StartsWith(field, value.to_owned())
                            }
                        }
                        "content-length-range" => match (number(&items[1]), number(&items[2])) {
                            (Some(min), Some(max)) if min <= max => Rule::Length(min, max),
                            _ => {
                                return Err(invalid_policy(
                                    "content-length-range takes two numbers, min <= max",
                                ))
                            }
                        },
                        _ => {
                            return Err(invalid_policy(format!(
                                "Invalid condition operator '{}'",
                                op.chars().take(32).collect::<String>()
                            )))
                        }
                    }
                }
                _ => {
                    return Err(invalid_policy(
                        "a condition is an object of one field or a 3-element array",
                    ))
                }
            };
            rules.push(rule);
        }
        Ok(Policy { expiration, rules })
    }

    /// Checks every condition against the form (`fields`, names lowercase; the key
    /// with `${filename}` substituted) and that every field is covered by one.
    fn check(&self, fields: &BTreeMap<String, String>, bucket: &str) -> Result<(), GatewayError> {
        let value_of = |name: &str| -> Option<&str> {
            if name == "bucket" {
                Some(bucket)
            } else {
                fields.get(name).map(String::as_str)
            }
        };
        for rule in &self.rules {
            let ok = match rule {
                Rule::Eq(field, expected) => value_of(field) == Some(expected.as_str()),
                Rule::StartsWith(field, prefix) => {
                    value_of(field).is_some_and(|v| v.starts_with(prefix.as_str()))
                }
                Rule::Length(..) => true,
            };
            if !ok {
                return Err(policy_failed(format!(
                    "Policy Condition failed: {}",
                    rule.describe()
                )));
            }
        }
        for name in fields.keys() {
            let exempt = matches!(name.as_str(), "x-amz-signature" | "file" | "policy")
                || name.starts_with("x-ignore-");
            let covered = self.rules.iter().any(|rule| match rule {
                Rule::Eq(field, _) | Rule::StartsWith(field, _) => field == name,
                Rule::Length(..) => false,
            });
            if !exempt && !covered {
                return Err(policy_failed(format!("Extra input fields: {name}")));
            }
        }
        Ok(())
    }

    fn length_range(&self) -> Option<(u64, u64)> {
        self.rules.iter().fold(None, |acc, rule| match rule {
            Rule::Length(min, max) => Some(match acc {
                None => (*min, *max),
                Some((lo, hi)) => (lo.max(*min), hi.min(*max)),
            }),
            _ => acc,
        })
    }
}

/// `multipart/form-data; boundary=...`.
fn boundary(headers: &HeaderMap) -> Result<String, GatewayError> {
    let enclosure = || {
        form_error(
            FormFault::NotMultipart,
            "Bucket POST must be of the enclosure-type multipart/form-data",
        )
    };
    let value = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(enclosure)?;
    let mut params = value.split(';');
    if !params
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("multipart/form-data"))
    {
        return Err(enclosure());
    }
    let boundary = params
        .filter_map(|p| p.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .ok_or_else(|| malformed("the multipart/form-data Content-Type has no boundary"))?;
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(malformed("the form's boundary must be 1 to 70 characters"));
    }
    Ok(boundary)
}

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

/// Reads a form up to its `file` part: the fields before it (names lowercase) and
/// the file's name, leaving the form at the file's first byte.
fn open_form<'r>(
    headers: &HeaderMap,
    body: &'r mut dyn BufRead,
) -> Result<(Form<'r>, BTreeMap<String, String>, String), GatewayError> {
    let boundary = boundary(headers)?;
    let mut form = Form {
        src: body,
        // The body's first delimiter has no CRLF before it.
        buf: b"\r\n".to_vec(),
        delimiter: format!("\r\n--{boundary}").into_bytes(),
    };
    form.until_delimiter(MAX_PADDING)?;
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut used = 0usize;
    let filename = loop {
        if !form.another_part()? {
            return Err(form_error(
                FormFault::InvalidField,
                "POST requires exactly one file upload per request.",
            ));
        }
        let budget = MAX_PRE_DATA.saturating_sub(used);
        let (disposition, took) = form.part_headers(budget)?;
        used += took;
        let name = disposition.name.to_ascii_lowercase();
        if name == "file" {
            break disposition.filename.unwrap_or_default();
        }
        let value = form.until_delimiter(MAX_PRE_DATA.saturating_sub(used))?;
        used += value.len();
        let value = String::from_utf8(value)
            .map_err(|_| malformed(format!("the form field '{name}' is not UTF-8")))?;
        if fields.insert(name.clone(), value).is_some() {
            return Err(form_error(
                FormFault::InvalidField,
                format!("the form field '{name}' is given more than once"),
            ));
        }
    };
    Ok((form, fields, filename))
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
        let expect = Expectations {
            service: "s3",
            region: ctx.region,
            now: ctx.now,
            path_encoding: PathEncoding::Single,
        };
        let verified = sigv4::verify_post_policy(
            policy_text,
            credential,
            amz_date,
            signature,
            &expect,
            ctx.secrets,
        )?;
        let _ = ctx.verified.set(verified.clone());
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
            .map_err(|err| match err {
                objstore::Error::Body(io) => UploadBody::<&mut dyn BufRead>::error_of(io),
                other => GatewayError::Object(other),
            })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(json: &str) -> String {
        BASE64.encode(json)
    }

    #[test]
    fn policies_parse_and_check_conditions_and_coverage() {
        let policy = Policy::parse(&encode(
            r#"{"expiration":"2030-01-01T00:00:00.000Z","conditions":[{"bucket":"b"},
            ["starts-with","$key","up/"],["eq","$x-amz-algorithm","AWS4-HMAC-SHA256"],
            ["content-length-range",1,"10"]]}"#,
        ))
        .unwrap();
        assert_eq!(policy.length_range(), Some((1, 10)));
        let mut fields = BTreeMap::new();
        fields.insert("key".to_owned(), "up/a".to_owned());
        fields.insert("x-amz-algorithm".to_owned(), "AWS4-HMAC-SHA256".to_owned());
        fields.insert("policy".to_owned(), "p".to_owned());
        fields.insert("x-ignore-me".to_owned(), "p".to_owned());
        policy.check(&fields, "b").unwrap();
        assert!(policy.check(&fields, "c").is_err());
        fields.insert("key".to_owned(), "other/a".to_owned());
        let err = policy.check(&fields, "b").unwrap_err();
        assert_eq!(err.s3_code(), "AccessDenied");
        assert!(err.message().contains("starts-with"), "{}", err.message());
        fields.insert("key".to_owned(), "up/a".to_owned());
        fields.insert("acl".to_owned(), "public-read".to_owned());
        let err = policy.check(&fields, "b").unwrap_err();
        assert_eq!(
            err.message(),
            "Invalid according to Policy: Extra input fields: acl"
        );
    }

    #[test]
    fn bad_policies_are_invalid_documents() {
        for bad in [
            "not base64!",
            &encode("[]"),
            &encode(r#"{"conditions":[]}"#),
            &encode(r#"{"expiration":"tomorrow","conditions":[]}"#),
            &encode(r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[["in","$key","x"]]}"#),
            &encode(r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[{"a":"1","b":"2"}]}"#),
            &encode(
                r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[["content-length-range",9,1]]}"#,
            ),
        ] {
            let err = Policy::parse(bad).unwrap_err();
            assert_eq!(err.s3_code(), "InvalidPolicyDocument", "{bad}");
        }
    }

    #[test]
    fn find_locates_the_first_whole_needle() {
        assert_eq!(find(b"ab\r\n-\r\n--B", b"\r\n--B"), Some(5));
        assert_eq!(find(b"ab\r\n--", b"\r\n--B"), None);
        assert_eq!(find(b"", b"\r\n"), None);
        assert_eq!(find(b"\r\n", b"\r\n"), Some(0));
    }

    #[test]
    fn forms_read_fields_then_the_file_within_the_policy() {
        let policy = encode(
            r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[["starts-with","$key","a/"],
            ["content-length-range",1,5]]}"#,
        );
        let body = |file: &str| {
            format!(
                "preamble\r\n--B\r\nContent-Disposition: form-data; name=\"Key\"\r\n\r\n\
                 a/${{filename}}\r\n--B\r\nContent-Disposition: form-data; name=\"policy\"\r\n\
                 \r\n{policy}\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; \
                 filename=\"f\"\r\nContent-Type: text/plain\r\n\r\n{file}\r\n--B--\r\n"
            )
        };
        let read = |file: &str| read_form("multipart/form-data; boundary=B", body(file).as_bytes());
        assert_eq!(read("hello").unwrap(), b"hello");
        assert_eq!(read("toolong").unwrap_err().s3_code(), "EntityTooLarge");
        assert_eq!(read("").unwrap_err().s3_code(), "EntityTooSmall");
        let err = read_form("multipart/form-data; boundary=C", body("x").as_bytes());
        assert_eq!(err.unwrap_err().s3_code(), "IncompleteBody");
        let err = read_form("application/x-www-form-urlencoded", b"key=x");
        assert_eq!(err.unwrap_err().s3_code(), "PreconditionFailed");
        let twice = body("x").replacen("name=\"policy\"", "name=\"key\"", 1);
        let err = read_form("multipart/form-data; boundary=B", twice.as_bytes()).unwrap_err();
        assert!(
            err.message().contains("more than once"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn dispositions_parse_quoted_names() {
        let d = parse_disposition(r#"form-data; name="file"; filename="a;b \"c\".txt""#).unwrap();
        assert_eq!(d.name, "file");
        assert_eq!(d.filename.as_deref(), Some(r#"a;b "c".txt"#));
        assert!(parse_disposition("attachment; name=x").is_err());
        assert!(parse_disposition("form-data; filename=x").is_err());
    }

    #[test]
    fn the_file_streams_up_to_its_boundary_within_its_range() {
        let body = b"data\r\n--XyZ\r\nmore\r\n--XyZ--\r\n".to_vec();
        let read = |range| {
            let mut src: &[u8] = &body;
            let mut form = Form {
                src: &mut src,
                buf: Vec::new(),
                delimiter: b"\r\n--XyZ".to_vec(),
            };
            let mut out = Vec::new();
            let mut file = FileReader {
                form: &mut form,
                range,
                read: 0,
                done: false,
            };
            file.read_to_end(&mut out).map(|_| out)
        };
        assert_eq!(read(None).unwrap(), b"data");
        assert_eq!(read(Some((4, 4))).unwrap(), b"data");
        let err = UploadBody::<&mut dyn BufRead>::error_of(read(Some((0, 3))).unwrap_err());
        assert_eq!(err.s3_code(), "EntityTooLarge");
        let err = UploadBody::<&mut dyn BufRead>::error_of(read(Some((5, 9))).unwrap_err());
        assert_eq!(err.s3_code(), "EntityTooSmall");
        let mut src: &[u8] = b"data without an end";
        let mut form = Form {
            src: &mut src,
            buf: Vec::new(),
            delimiter: b"\r\n--XyZ".to_vec(),
        };
        let mut file = FileReader {
            form: &mut form,
            range: None,
            read: 0,
            done: false,
        };
        let err = file.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(
            UploadBody::<&mut dyn BufRead>::error_of(err).s3_code(),
            "IncompleteBody"
        );
    }
}
