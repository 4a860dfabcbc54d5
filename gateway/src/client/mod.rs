//! [`RemoteKms`]: a [`KeyService`] backed by any AWS-KMS-compatible endpoint (AWS KMS,
//! `atrest kms serve`, moto, LocalStack), over the KMS JSON 1.1 protocol, signed with
//! SigV4. Blocking: one HTTP request per call, on the caller's thread.
//!
//! Configured the AWS way ([`RemoteKmsConfig::from_env`]): `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or
//! `AWS_DEFAULT_REGION`), else the profile `AWS_PROFILE` (default `default`) of
//! `~/.aws/credentials` and `~/.aws/config`.
//!
//! This file is the transport (configuration, endpoint, signing, TLS, reading
//! answers); `operations` maps each `KeyService` call to its request and answer.

mod operations;
#[cfg(test)]
mod tests;

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crypto_core::kms::wire;
use crypto_core::kms::{KmsError, Operation};
use http::HeaderMap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::error::GatewayError;
use crate::sigv4::{self, Payload, Signer, SigningCredentials};

/// Largest answer read from the endpoint (a ListKeys page of 1000 keys is ~150 KiB).
const MAX_RESPONSE: u64 = 4 << 20;

/// Where the endpoint is and who we are to it.
#[derive(Debug)]
pub struct RemoteKmsConfig {
    /// `http://host:port` or `https://host[:port]`, optionally with a path.
    pub endpoint: String,
    /// The region requests are signed for (SigV4's credential scope, `AWS_REGION`).
    pub region: String,
    /// The access key requests are signed with.
    pub credentials: SigningCredentials,
    /// How long one request may take in all; connecting is capped at 10 s within it.
    pub timeout: Duration,
    /// PEM certificates to trust instead of the public roots (`AWS_CA_BUNDLE`): an
    /// `atrest kms serve --tls-cert` with a private CA.
    pub ca_bundle: Option<PathBuf>,
}

impl RemoteKmsConfig {
    /// The endpoint `endpoint` (else `AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL`, else
    /// AWS KMS of the region), with region and credentials from the environment or
    /// the AWS profile files.
    pub fn from_env(endpoint: Option<&str>) -> Result<RemoteKmsConfig, GatewayError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let profile_name = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let home = var("HOME").map(PathBuf::from);
        let credentials_file = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
        let config_file = var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));

        let region = match var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
            Some(region) => region,
            None => {
                let section = if profile_name == "default" {
                    "default".to_owned()
                } else {
                    format!("profile {profile_name}")
                };
                config_file
                    .as_deref()
                    .and_then(|path| profile_value(path, &section, "region"))
                    .ok_or_else(|| {
                        GatewayError::Config(
                            "no region for the remote key service: set AWS_REGION or a region \
                             in the AWS profile"
                                .into(),
                        )
                    })?
            }
        };
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret)) => SigningCredentials {
                access_key_id,
                secret_access_key: Zeroizing::new(secret),
                session_token: var("AWS_SESSION_TOKEN"),
            },
            (Some(_), None) | (None, Some(_)) => {
                return Err(GatewayError::Config(
                    "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither".into(),
                ))
            }
            (None, None) => {
                let path = credentials_file.ok_or_else(|| {
                    GatewayError::Config("no AWS credentials: set AWS_ACCESS_KEY_ID".into())
                })?;
                let get = |key: &str| profile_value(&path, &profile_name, key);
                match (get("aws_access_key_id"), get("aws_secret_access_key")) {
                    (Some(access_key_id), Some(secret)) => SigningCredentials {
                        access_key_id,
                        secret_access_key: Zeroizing::new(secret),
                        session_token: get("aws_session_token"),
                    },
                    _ => {
                        return Err(GatewayError::Config(format!(
                            "no AWS credentials: set AWS_ACCESS_KEY_ID and \
                             AWS_SECRET_ACCESS_KEY, or profile [{profile_name}] in {}",
                            path.display()
                        )))
                    }
                }
            }
        };
        let endpoint = endpoint
            .map(str::to_owned)
            .or_else(|| var("AWS_ENDPOINT_URL_KMS"))
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"));
        Ok(RemoteKmsConfig {
            endpoint,
            region,
            credentials,
            timeout: Duration::from_secs(30),
            ca_bundle: var("AWS_CA_BUNDLE").map(PathBuf::from),
        })
    }
}

/// One `key = value` of `[section]` in an AWS INI file.
fn profile_value(path: &std::path::Path, section: &str, key: &str) -> Option<String> {
    let text = Zeroizing::new(std::fs::read_to_string(path).ok()?);
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = name.trim() == section;
            continue;
        }
        if in_section {
            if let Some((name, value)) = line.split_once('=') {
                if name.trim() == key {
                    return Some(value.trim().to_owned());
                }
            }
        }
    }
    None
}

/// A parsed endpoint URL.
#[derive(Clone, Debug)]
struct Endpoint {
    /// The URL requests go to.
    url: String,
    /// The `Host` header (port only when not the scheme's default).
    host: String,
    /// The path requests are signed for.
    path: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, GatewayError> {
        let bad = |why: &str| {
            GatewayError::Config(format!(
                "--kms-endpoint '{url}' is not an http:// or https:// URL ({why})"
            ))
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let default_port = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || path.contains(['?', '#']) {
            return Err(bad("expected scheme://host[:port][/path]"));
        }
        let (name, port) = match authority.strip_prefix('[') {
            Some(bracketed) => {
                let (inside, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| bad("unclosed '[' in the host"))?;
                let port = match after {
                    "" => None,
                    _ => Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("junk after ']'"))?,
                    ),
                };
                (format!("[{inside}]"), port)
            }
            None => match authority.split_once(':') {
                Some((name, port)) => (name.to_owned(), Some(port)),
                None => (authority.to_owned(), None),
            },
        };
        let host = match port {
            Some(port) => {
                let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
                if port == default_port {
                    name
                } else {
                    format!("{name}:{port}")
                }
            }
            None => name,
        };
        Ok(Endpoint {
            url: format!("{scheme}://{authority}{path}"),
            host,
            path: path.to_owned(),
        })
    }
}

/// Carries one KMS request to a key service and brings its answer back: over HTTP
/// to an endpoint ([`RemoteKms::new`]), or in process through the gateway's own
/// entry point, signed as a console session's principal ([`RemoteKms::over`]).
pub trait KmsExchange: Send + Sync {
    /// Sends `body`, the JSON request of `op`, signed; gives back the answer's HTTP
    /// status and body (zeroizing: it may hold a plaintext key). `Err` only when no
    /// answer came (the service is unreachable).
    fn exchange(&self, op: Operation, body: &[u8]) -> Result<(u16, Zeroizing<Vec<u8>>), KmsError>;
    /// Where requests go, for messages (`https://host`, `the console's gateway`).
    fn destination(&self) -> String;
}

/// The HTTP exchange of an endpoint.
struct HttpExchange {
    agent: ureq::Agent,
    endpoint: Endpoint,
    region: String,
    credentials: SigningCredentials,
}

impl KmsExchange for HttpExchange {
    fn exchange(&self, op: Operation, body: &[u8]) -> Result<(u16, Zeroizing<Vec<u8>>), KmsError> {
        let now = OffsetDateTime::now_utc();
        let mut headers = HeaderMap::new();
        let target = op.target();
        let config_error = |e: GatewayError| KmsError::Internal(e.to_string());
        for (name, value) in [
            ("host", self.endpoint.host.as_str()),
            ("content-type", wire::CONTENT_TYPE),
            ("x-amz-target", target.as_str()),
        ] {
            headers.insert(
                name,
                http::HeaderValue::from_str(value)
                    .map_err(|_| KmsError::Internal(format!("'{value}' is not header text")))?,
            );
        }
        sigv4::sign_headers(
            &Signer::new(&self.credentials, &self.region, "kms", now),
            "POST",
            &self.endpoint.path,
            "",
            &mut headers,
            Payload::Body(body),
        )
        .map_err(config_error)?;
        let mut request = self.agent.post(&self.endpoint.url);
        for (name, value) in &headers {
            let value = value
                .to_str()
                .map_err(|_| KmsError::Internal("a signed header is not text".into()))?;
            request = request.set(name.as_str(), value);
        }
        let response = match request.send_bytes(body) {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(e)) => {
                return Err(KmsError::Unavailable(format!(
                    "cannot reach the key service at {}: {e}",
                    self.endpoint.url
                )))
            }
        };
        let status = response.status();
        Ok((status, read_body(response, &self.endpoint.url)?))
    }

    fn destination(&self) -> String {
        self.endpoint.url.clone()
    }
}

/// A key service reached over a [`KmsExchange`] (HTTP to an endpoint, or the
/// console's in-process one). Cheap to share between threads.
pub struct RemoteKms {
    exchange: Box<dyn KmsExchange>,
    /// The exchange's destination, for messages.
    destination: String,
}

impl std::fmt::Debug for RemoteKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKms")
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl RemoteKms {
    /// A client of `config.endpoint`; fails on an endpoint URL or CA bundle it cannot use.
    /// Nothing is sent until the first call.
    pub fn new(config: RemoteKmsConfig) -> Result<RemoteKms, GatewayError> {
        let endpoint = Endpoint::parse(&config.endpoint)?;
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10).min(config.timeout))
            .timeout(config.timeout);
        if let Some(bundle) = &config.ca_bundle {
            agent = agent.tls_config(Arc::new(trusting(bundle)?));
        }
        let agent = agent.build();
        Ok(RemoteKms::over(Box::new(HttpExchange {
            agent,
            endpoint,
            region: config.region,
            credentials: config.credentials,
        })))
    }

    /// A client whose requests go through `exchange`.
    pub fn over(exchange: Box<dyn KmsExchange>) -> RemoteKms {
        RemoteKms {
            destination: exchange.destination(),
            exchange,
        }
    }

    /// Where requests go: the endpoint's base URL, as parsed from the configuration.
    pub fn endpoint(&self) -> &str {
        &self.destination
    }

    /// Sends one request and returns the answer's body (zeroizing: it may hold a
    /// plaintext key); an answer with an error status becomes its [`KmsError`].
    fn call_raw(&self, op: Operation, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let (status, answer) = self.exchange.exchange(op, body)?;
        if !(200..300).contains(&status) {
            return Err(self.error_from(status, &answer, op));
        }
        Ok(answer)
    }

    fn error_from(&self, status: u16, body: &[u8], op: Operation) -> KmsError {
        match serde_json::from_slice::<wire::ErrorResponse>(body) {
            Ok(wire::ErrorResponse {
                kind: Some(kind),
                message,
            }) => KmsError::from_aws_name(&kind, message.unwrap_or_default()),
            _ => KmsError::Internal(format!(
                "the key service at {} answered {} with HTTP {status} and no AWS error",
                self.destination,
                op.name()
            )),
        }
    }

    /// Every page of a marker-paged list of one key's items: `next` gives a page's
    /// next marker, if it is not the last.
    fn every_page<Resp: DeserializeOwned>(
        &self,
        op: Operation,
        key_id: &str,
        limit: u32,
        next: impl Fn(&Resp) -> Option<String>,
    ) -> Result<Vec<Resp>, KmsError> {
        let mut pages = Vec::new();
        let mut marker = None;
        loop {
            let request = wire::ListRequest {
                key_id: Some(key_id.to_owned()),
                limit: Some(limit),
                marker: marker.take(),
            };
            let answer: Resp = self.call(op, &request)?;
            let following = next(&answer);
            pages.push(answer);
            match following {
                Some(next) => marker = Some(next),
                None => return Ok(pages),
            }
        }
    }

    fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: Operation,
        request: &Req,
    ) -> Result<Resp, KmsError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| KmsError::Internal(format!("cannot encode {}: {e}", op.name())))?;
        let answer = self.call_raw(op, &body)?;
        self.parse(op, &answer)
    }

    fn parse<Resp: DeserializeOwned>(&self, op: Operation, body: &[u8]) -> Result<Resp, KmsError> {
        let body = if body.is_empty() {
            b"{}".as_slice()
        } else {
            body
        };
        serde_json::from_slice(body).map_err(|e| {
            KmsError::Internal(format!(
                "the key service at {} sent an unreadable answer to {}: {e}",
                self.destination,
                op.name()
            ))
        })
    }

    fn unit<Req: Serialize>(&self, op: Operation, request: &Req) -> Result<(), KmsError> {
        self.call::<Req, serde::de::IgnoredAny>(op, request)
            .map(|_| ())
    }
}

/// A TLS client configuration that trusts exactly the certificates of `bundle`.
fn trusting(bundle: &std::path::Path) -> Result<rustls::ClientConfig, GatewayError> {
    let pem = std::fs::read(bundle)
        .map_err(|e| GatewayError::io(format!("reading the CA bundle {}", bundle.display()), e))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| {
            GatewayError::Config(format!("CA bundle {}: not PEM ({e})", bundle.display()))
        })?;
        roots.add(cert).map_err(|e| {
            GatewayError::Config(format!(
                "CA bundle {}: unusable certificate ({e})",
                bundle.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(GatewayError::Config(format!(
            "CA bundle {} holds no certificate",
            bundle.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn read_body(response: ureq::Response, url: &str) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let mut body = Zeroizing::new(Vec::with_capacity(4096));
    response
        .into_reader()
        .take(MAX_RESPONSE + 1)
        .read_to_end(&mut body)
        .map_err(|e| KmsError::Unavailable(format!("reading the answer of {url}: {e}")))?;
    if body.len() as u64 > MAX_RESPONSE {
        return Err(KmsError::Internal(format!(
            "the key service at {url} sent an answer larger than {MAX_RESPONSE} bytes"
        )));
    }
    Ok(body)
}
