//! Signing, for clients (the remote key service client, tests): headers, presigned
//! URLs.

use super::*;

/// The credentials a client signs with.
pub struct SigningCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key (never formatted or logged).
    pub secret_access_key: Zeroizing<String>,
    /// A session token (`X-Amz-Security-Token`), when the credentials are temporary.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for SigningCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Who signs, for which region and service, and when.
#[derive(Debug)]
pub struct Signer<'a> {
    /// Whose keys sign.
    pub credentials: &'a SigningCredentials,
    /// The scope signed for.
    pub scope: CredentialScope,
    /// The signature's time (`X-Amz-Date`).
    pub time: OffsetDateTime,
}

impl<'a> Signer<'a> {
    /// A signer for `region` and `service` at `time`.
    pub fn new(
        credentials: &'a SigningCredentials,
        region: &str,
        service: &str,
        time: OffsetDateTime,
    ) -> Signer<'a> {
        Signer {
            credentials,
            scope: CredentialScope::new(time, region, service),
            time,
        }
    }
}

/// Signs a request in the header style. `headers` must already hold `host` and every
/// header to be signed (lowercase names); this adds `x-amz-date`,
/// `x-amz-security-token` (when there is a session token) and `authorization`.
pub fn sign_headers(
    signer: &Signer<'_>,
    method: &str,
    path: &str,
    query: &str,
    headers: &mut HeaderMap,
    payload: Payload<'_>,
) -> Result<(), GatewayError> {
    let hash = match payload {
        Payload::Body(body) => hex::encode(Sha256::digest(body)),
        Payload::Unsigned => UNSIGNED_PAYLOAD.to_owned(),
        Payload::Declared => header_text(headers, "x-amz-content-sha256")?
            .ok_or_else(|| {
                GatewayError::Config(
                    "Payload::Declared needs an x-amz-content-sha256 header".into(),
                )
            })?
            .to_owned(),
    };
    sign_headers_as(
        signer,
        method,
        path,
        query,
        headers,
        &hash,
        PathEncoding::Double,
    )
    .map(|_| ())
}

/// [`sign_headers`] with the payload hash given (a SHA-256 in hex, `UNSIGNED-PAYLOAD`
/// or a `STREAMING-*` mode) and the service's path encoding (S3: `Single`). Returns
/// the signature (hex), the seed of an aws-chunked body's [`ChunkChain`].
pub fn sign_headers_as(
    signer: &Signer<'_>,
    method: &str,
    path: &str,
    query: &str,
    headers: &mut HeaderMap,
    payload_hash: &str,
    encoding: PathEncoding,
) -> Result<String, GatewayError> {
    let (credentials, scope) = (signer.credentials, &signer.scope);
    let date = amz_date(signer.time);
    insert_header(headers, "x-amz-date", &date)?;
    if let Some(token) = &credentials.session_token {
        insert_header(headers, "x-amz-security-token", token)?;
    }
    let mut signed: Vec<String> = headers.keys().map(|n| n.as_str().to_owned()).collect();
    signed.sort();
    signed.dedup();
    let view = RequestView {
        method,
        path,
        query,
        headers,
    };
    let canonical = canonical_request(&view, &signed, payload_hash, encoding, false)?;
    let signature = sign(&credentials.secret_access_key, scope, &date, &canonical);
    let authorization = format!(
        "{ALGORITHM} Credential={}/{}, SignedHeaders={}, Signature={signature}",
        credentials.access_key_id,
        scope.render(),
        signed.join(";")
    );
    insert_header(headers, "authorization", &authorization)?;
    Ok(signature)
}

/// The query of a presigned URL (everything after `?`), for `method` on `path` with
/// the extra query parameters `query` (already decoded) and the signed `host`.
pub fn presign_query(
    signer: &Signer<'_>,
    method: &str,
    host: &str,
    path: &str,
    query: &[(String, String)],
    expires: u32,
    encoding: PathEncoding,
) -> Result<String, GatewayError> {
    let (credentials, scope) = (signer.credentials, &signer.scope);
    let date = amz_date(signer.time);
    let mut pairs: Vec<(String, String)> = query.to_vec();
    pairs.push(("X-Amz-Algorithm".into(), ALGORITHM.into()));
    pairs.push((
        "X-Amz-Credential".into(),
        format!("{}/{}", credentials.access_key_id, scope.render()),
    ));
    pairs.push(("X-Amz-Date".into(), date.clone()));
    pairs.push(("X-Amz-Expires".into(), expires.to_string()));
    if let Some(token) = &credentials.session_token {
        pairs.push(("X-Amz-Security-Token".into(), token.clone()));
    }
    pairs.push(("X-Amz-SignedHeaders".into(), "host".into()));
    let raw_query = canonical_query(&pairs);
    let mut headers = HeaderMap::new();
    insert_header(&mut headers, "host", host)?;
    let view = RequestView {
        method,
        path,
        query: &raw_query,
        headers: &headers,
    };
    let canonical = canonical_request(
        &view,
        &["host".to_owned()],
        UNSIGNED_PAYLOAD,
        encoding,
        true,
    )?;
    let signature = sign(&credentials.secret_access_key, scope, &date, &canonical);
    Ok(format!("{raw_query}&X-Amz-Signature={signature}"))
}

pub(super) fn sign(
    secret: &str,
    scope: &CredentialScope,
    amz_date: &str,
    canonical: &str,
) -> String {
    let key = signing_key(secret.as_bytes(), scope);
    hex::encode(*hmac(
        key.as_slice(),
        string_to_sign(amz_date, scope, canonical).as_bytes(),
    ))
}

pub(super) fn insert_header(
    headers: &mut HeaderMap,
    name: &str,
    value: &str,
) -> Result<(), GatewayError> {
    let name = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| GatewayError::Config(format!("'{}' is not a header name", printable(name))))?;
    let value = http::HeaderValue::from_str(value).map_err(|_| {
        GatewayError::Config(format!("the value of header '{name}' is not header text"))
    })?;
    headers.insert(name, value);
    Ok(())
}
