//! The canonical request of SigV4 and its encodings: the URI (once or twice
//! encoded), the sorted query, the canonical headers, percent decoding.

use super::*;

/// The canonical request of SigV4, built from the request as it arrived.
pub(super) fn canonical_request(
    request: &RequestView<'_>,
    signed_headers: &[String],
    payload_hash: &str,
    path_encoding: PathEncoding,
    presigned: bool,
) -> Result<String, GatewayError> {
    let mut out = String::with_capacity(512);
    out.push_str(request.method);
    out.push('\n');
    out.push_str(&canonical_uri(request.path, path_encoding)?);
    out.push('\n');
    let mut pairs = query_pairs(request.query)?;
    if presigned {
        pairs.retain(|(name, _)| name != "X-Amz-Signature");
    }
    out.push_str(&canonical_query(&pairs));
    out.push('\n');
    for name in signed_headers {
        let mut values = Vec::new();
        for value in request.headers.get_all(name.as_str()) {
            let value = value.to_str().map_err(|_| {
                GatewayError::IncompleteSignature(format!("header '{name}' is not ASCII text"))
            })?;
            values.push(canonical_header_value(value));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// Trims the value and folds runs of spaces into one, as SigV4 requires.
pub(super) fn canonical_header_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(super) fn canonical_uri(
    raw_path: &str,
    encoding: PathEncoding,
) -> Result<String, GatewayError> {
    if raw_path.is_empty() || raw_path == "/" {
        return Ok("/".to_owned());
    }
    let decoded = String::from_utf8(percent_decode(raw_path)?).map_err(|_| {
        GatewayError::BadRequest("the request path is not UTF-8 once decoded".into())
    })?;
    let once = match encoding {
        PathEncoding::Single => uri_encode(&decoded, false),
        PathEncoding::Double => uri_encode(&remove_dot_segments(&decoded), false),
    };
    Ok(match encoding {
        PathEncoding::Single => once,
        PathEncoding::Double => uri_encode(&once, false),
    })
}

/// RFC 3986 dot-segment removal, keeping a trailing slash.
pub(super) fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = format!("/{}", segments.join("/"));
    if path.ends_with('/') && out.len() > 1 {
        out.push('/');
    }
    out
}

/// The decoded `name=value` pairs of a raw query, in order.
pub fn query_pairs(raw: &str) -> Result<Vec<(String, String)>, GatewayError> {
    let mut pairs = Vec::new();
    for item in raw.split('&').filter(|item| !item.is_empty()) {
        let (name, value) = item.split_once('=').unwrap_or((item, ""));
        let decode = |text: &str| {
            percent_decode(text).and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| {
                    GatewayError::BadRequest("a query parameter is not UTF-8 once decoded".into())
                })
            })
        };
        pairs.push((decode(name)?, decode(value)?));
    }
    Ok(pairs)
}

pub(super) fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(name, value)| (uri_encode(name, true), uri_encode(value, true)))
        .collect();
    encoded.sort();
    let mut out = String::new();
    for (i, (name, value)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// SigV4's URI encoding: unreserved characters stay, everything else is `%XX`
/// (uppercase); `/` stays only when `encode_slash` is false.
pub fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || (byte == b'/' && !encode_slash);
        if keep {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// What is wrong with a percent-encoded text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PercentEscapeError {
    /// A `%` without two characters after it.
    Incomplete,
    /// A `%` followed by something other than two hex digits.
    NotHex,
}

/// The bytes of a percent-encoded text (`+` stays `+`), each escape decoded once.
pub(crate) fn percent_decode_bytes(text: &str) -> Result<Vec<u8>, PercentEscapeError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex_pair = bytes
                .get(i + 1..i + 3)
                .ok_or(PercentEscapeError::Incomplete)?;
            let mut byte = [0u8; 1];
            hex::decode_to_slice(hex_pair, &mut byte).map_err(|_| PercentEscapeError::NotHex)?;
            out.push(byte[0]);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

pub(super) fn percent_decode(text: &str) -> Result<Vec<u8>, GatewayError> {
    percent_decode_bytes(text).map_err(|err| {
        let what = match err {
            PercentEscapeError::Incomplete => "ends in an incomplete percent escape",
            PercentEscapeError::NotHex => "holds an invalid percent escape",
        };
        GatewayError::BadRequest(format!("'{}' {what}", printable(text)))
    })
}
