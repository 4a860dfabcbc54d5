//! A request's presented signature, parsed (`Authorization` header or presigned
//! query): the claims a client makes, before any is checked.

use super::*;

/// The access key id a request claims (from `Authorization: ... Credential=ID/...`
/// or a presigned `X-Amz-Credential=ID/...`), read leniently and without checking
/// anything, for the trail record of a refused request. `None` when there is none.
pub fn claimed_access_key_id(request: &RequestView<'_>) -> Option<String> {
    let from_header = request
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (_, credential) = value.split_once("Credential=")?;
            credential.split([',', ' ']).next()
        })
        .map(str::to_owned);
    let credential = from_header.or_else(|| {
        query_pairs(request.query)
            .ok()?
            .into_iter()
            .find(|(name, _)| name == "X-Amz-Credential")
            .map(|(_, value)| value)
    })?;
    let id = credential.split('/').next().unwrap_or_default().trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// The signature a request carries, from its `Authorization` header or its query.
pub fn present(request: &RequestView<'_>) -> Result<PresentedSignature, GatewayError> {
    let has_query_signature = query_pairs(request.query)?
        .iter()
        .any(|(name, _)| name == "X-Amz-Signature" || name == "X-Amz-Algorithm");
    match request.headers.get(http::header::AUTHORIZATION) {
        Some(_) if has_query_signature => Err(GatewayError::InvalidSignature(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or \
             the Authorization header should be specified"
                .into(),
        )),
        Some(value) => {
            let value = value.to_str().map_err(|_| {
                GatewayError::IncompleteSignature(
                    "the Authorization header is not ASCII text".into(),
                )
            })?;
            let mut presented = parse_authorization(value)?;
            let date = header_text(request.headers, "x-amz-date")?.ok_or_else(|| {
                GatewayError::IncompleteSignature(
                    "Authorization header requires existence of a 'X-Amz-Date' header \
                     (atrest does not accept the 'Date' header)."
                        .into(),
                )
            })?;
            presented.request_time = parse_amz_date(date)?;
            presented.amz_date = date.to_owned();
            presented.session_token =
                header_text(request.headers, "x-amz-security-token")?.map(str::to_owned);
            Ok(presented)
        }
        None if has_query_signature => parse_presigned(request.query),
        None => Err(GatewayError::MissingAuthenticationToken(
            "Request is missing Authentication Token".into(),
        )),
    }
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=HEX`. The date is filled in by the caller from
/// `X-Amz-Date`.
pub fn parse_authorization(value: &str) -> Result<PresentedSignature, GatewayError> {
    let incomplete = |what: &str| GatewayError::IncompleteSignature(what.to_owned());
    if value.len() > MAX_AUTH_LEN {
        return Err(incomplete("the Authorization header is too long"));
    }
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|rest| rest.starts_with(' '))
        .ok_or_else(|| {
            incomplete("Authorization header must start with 'AWS4-HMAC-SHA256 ' (SigV4 only)")
        })?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        let (name, value) = part.split_once('=').ok_or_else(|| {
            GatewayError::IncompleteSignature(format!(
                "Authorization header requires each component to be name=value, got '{}'",
                printable(part)
            ))
        })?;
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            other => {
                return Err(GatewayError::IncompleteSignature(format!(
                    "Authorization header has an unknown component '{}'",
                    printable(other)
                )))
            }
        };
        if slot.replace(value).is_some() {
            return Err(GatewayError::IncompleteSignature(format!(
                "Authorization header names '{name}' twice"
            )));
        }
    }
    let missing = |name: &str| {
        GatewayError::IncompleteSignature(format!(
            "Authorization header requires '{name}' parameter. Authorization={ALGORITHM} ..."
        ))
    };
    let (access_key_id, scope) =
        parse_credential(credential.ok_or_else(|| missing("Credential"))?)?;
    Ok(PresentedSignature {
        access_key_id,
        scope,
        signed_headers: parse_signed_headers(
            signed_headers.ok_or_else(|| missing("SignedHeaders"))?,
        )?,
        signature: parse_signature(signature.ok_or_else(|| missing("Signature"))?)?,
        amz_date: String::new(),
        request_time: OffsetDateTime::UNIX_EPOCH,
        location: SignatureLocation::Header,
        session_token: None,
    })
}

/// Parses a presigned query: `X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`,
/// `X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Signature`, and the optional
/// `X-Amz-Security-Token`.
pub fn parse_presigned(query: &str) -> Result<PresentedSignature, GatewayError> {
    let pairs = query_pairs(query)?;
    let get = |name: &str| -> Result<&str, GatewayError> {
        let mut found = pairs.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        match (found.next(), found.next()) {
            (Some(value), None) => Ok(value.as_str()),
            (Some(_), Some(_)) => Err(GatewayError::IncompleteSignature(format!(
                "the presigned query names '{name}' twice"
            ))),
            (None, _) => Err(GatewayError::IncompleteSignature(format!(
                "the presigned query lacks '{name}'"
            ))),
        }
    };
    let algorithm = get("X-Amz-Algorithm")?;
    if algorithm != ALGORITHM {
        return Err(GatewayError::IncompleteSignature(format!(
            "X-Amz-Algorithm must be {ALGORITHM}, got '{}'",
            printable(algorithm)
        )));
    }
    let (access_key_id, scope) = parse_credential(get("X-Amz-Credential")?)?;
    let amz_date = get("X-Amz-Date")?;
    let expires_text = get("X-Amz-Expires")?;
    let expires = expires_text
        .parse::<u32>()
        .ok()
        .filter(|e| (1..=MAX_PRESIGN_EXPIRES).contains(e))
        .ok_or_else(|| {
            GatewayError::IncompleteSignature(format!(
                "X-Amz-Expires must be 1 to {MAX_PRESIGN_EXPIRES} seconds, got '{}'",
                printable(expires_text)
            ))
        })?;
    let session_token = pairs
        .iter()
        .find(|(n, _)| n == "X-Amz-Security-Token")
        .map(|(_, token)| token.clone());
    Ok(PresentedSignature {
        access_key_id,
        scope,
        signed_headers: parse_signed_headers(get("X-Amz-SignedHeaders")?)?,
        signature: parse_signature(get("X-Amz-Signature")?)?,
        amz_date: amz_date.to_owned(),
        request_time: parse_amz_date(amz_date)?,
        location: SignatureLocation::Query { expires },
        session_token,
    })
}

pub(super) fn parse_credential(text: &str) -> Result<(String, CredentialScope), GatewayError> {
    let parts: Vec<&str> = text.split('/').collect();
    let [akid, date, region, service, terminator] = parts.as_slice() else {
        return Err(GatewayError::IncompleteSignature(format!(
            "Credential must have the form ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request, \
             got '{}'",
            printable(text)
        )));
    };
    if akid.is_empty() || akid.len() > 128 || !akid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(GatewayError::UnrecognizedClient(
            "The security token included in the request is invalid.".into(),
        ));
    }
    if *terminator != "aws4_request" {
        return Err(GatewayError::InvalidSignature(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'.",
            printable(terminator)
        )));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GatewayError::InvalidSignature(format!(
            "Credential should be scoped to a valid date (YYYYMMDD), not '{}'.",
            printable(date)
        )));
    }
    Ok((
        (*akid).to_owned(),
        CredentialScope {
            date: (*date).to_owned(),
            region: (*region).to_owned(),
            service: (*service).to_owned(),
        },
    ))
}

pub(super) fn parse_signed_headers(text: &str) -> Result<Vec<String>, GatewayError> {
    if text.is_empty() || text.len() > MAX_AUTH_LEN {
        return Err(GatewayError::IncompleteSignature(
            "SignedHeaders must list at least 'host'".into(),
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for name in text.split(';') {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            return Err(GatewayError::IncompleteSignature(format!(
                "SignedHeaders holds an invalid header name '{}' (lowercase names separated by ';')",
                printable(name)
            )));
        }
        if names.iter().any(|n| n == name) {
            return Err(GatewayError::IncompleteSignature(format!(
                "SignedHeaders names '{name}' twice"
            )));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

pub(super) fn parse_signature(text: &str) -> Result<[u8; 32], GatewayError> {
    let mut signature = [0u8; 32];
    hex::decode_to_slice(text, &mut signature).map_err(|_| {
        GatewayError::IncompleteSignature(
            "Signature must be 64 lowercase hexadecimal digits".into(),
        )
    })?;
    Ok(signature)
}

/// Parses `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(text: &str) -> Result<OffsetDateTime, GatewayError> {
    PrimitiveDateTime::parse(
        text,
        format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .map(PrimitiveDateTime::assume_utc)
    .map_err(|_| {
        GatewayError::IncompleteSignature(format!(
            "X-Amz-Date must have the form YYYYMMDDTHHMMSSZ, got '{}'",
            printable(text)
        ))
    })
}

/// Formats `YYYYMMDDTHHMMSSZ`.
pub fn amz_date(time: OffsetDateTime) -> String {
    let time = time.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}
