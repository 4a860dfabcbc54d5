//! The `multipart/form-data` reader of a browser upload: the form read part by part
//! up to its `file` field (fields and their headers within S3's 20 KiB), then the file
//! streamed up to its closing boundary within the policy's content-length-range.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};

use http::HeaderMap;

use super::{form_error, malformed, MAX_PADDING, MAX_PRE_DATA};
use crate::error::{FormFault, GatewayError};
use crate::s3::upload::UploadBody;

/// A `multipart/form-data` body read part by part; `delimiter` is `CRLF--boundary`.
pub(super) struct Form<'r> {
    /// The request body.
    pub(super) src: &'r mut dyn BufRead,
    /// Read from `src` and not yet consumed.
    pub(super) buf: Vec<u8>,
    /// `CRLF--boundary`.
    pub(super) delimiter: Vec<u8>,
}

/// Where `needle` (non-empty) first starts in `haystack`: a scan for its first byte,
/// then a compare (the file's bytes pass through here once each).
pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
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
pub(super) struct Disposition {
    pub(super) name: String,
    pub(super) filename: Option<String>,
}

pub(super) fn parse_disposition(value: &str) -> Result<Disposition, GatewayError> {
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
    pub(super) fn fill(&mut self) -> io::Result<bool> {
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
    pub(super) fn until_delimiter(&mut self, limit: usize) -> Result<Vec<u8>, GatewayError> {
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
    pub(super) fn another_part(&mut self) -> Result<bool, GatewayError> {
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
    pub(super) fn part_headers(
        &mut self,
        budget: usize,
    ) -> Result<(Disposition, usize), GatewayError> {
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
pub(super) struct FileReader<'f, 'r> {
    pub(super) form: &'f mut Form<'r>,
    /// The policy's content-length-range, when it has one.
    pub(super) range: Option<(u64, u64)>,
    /// File bytes given out so far.
    pub(super) read: u64,
    /// The closing delimiter was found.
    pub(super) done: bool,
}

impl FileReader<'_, '_> {
    pub(super) fn emit(&mut self, out: &mut [u8], n: usize) -> io::Result<usize> {
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

/// `multipart/form-data; boundary=...`.
pub(super) fn boundary(headers: &HeaderMap) -> Result<String, GatewayError> {
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

/// Reads a form up to its `file` part: the fields before it (names lowercase) and
/// the file's name, leaving the form at the file's first byte.
pub(super) fn open_form<'r>(
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
