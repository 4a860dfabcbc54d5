//! [`RemoteKms`]: a [`KeyService`] backed by any AWS-KMS-compatible endpoint (AWS KMS,
//! `atrest kms serve`, moto, LocalStack), over the KMS JSON 1.1 protocol, signed with
//! SigV4. Blocking: one HTTP request per call, on the caller's thread.
//!
//! Configured the AWS way ([`RemoteKmsConfig::from_env`]): `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or
//! `AWS_DEFAULT_REGION`), else the profile `AWS_PROFILE` (default `default`) of
//! `~/.aws/credentials` and `~/.aws/config`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crypto_core::kms::wire::{
    self, decode_blob, encode_blob, encode_secret, CiphertextResponse, KeyIdResponse,
    KeyMetadataResponse, KeyPolicyResponse, ListAliasesResponse, ListKeyPoliciesResponse,
    ListKeyRotationsResponse, ListKeysResponse, ListResourceTagsResponse, PlaintextResponse,
    ReEncryptResponse, RotationStatusResponse, ScheduleKeyDeletionResponse, WireAlias,
    WireKeyMetadata, WireRotation,
};
use crypto_core::kms::{
    AliasListEntry, CreateKeyRequest, DataKeySpec, DecryptRequest, DecryptedData,
    EncryptionContext, GenerateDataKeyRequest, GeneratedDataKey, KeyListEntry, KeyMetadata,
    KeyService, KmsError, ListRequest, Operation, Page, ReEncryptRequest, ReEncrypted,
    RotationEntry, RotationStatus, ScheduledDeletion, Tag, WrappedData,
};
use crypto_core::secret::SecretBytes;
use http::HeaderMap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;
use zeroize::{Zeroize, Zeroizing};

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

/// A key service reached over HTTP. Cheap to share between threads.
pub struct RemoteKms {
    agent: ureq::Agent,
    endpoint: Endpoint,
    region: String,
    credentials: SigningCredentials,
}

impl std::fmt::Debug for RemoteKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKms")
            .field("endpoint", &self.endpoint.url)
            .field("region", &self.region)
            .field("access_key_id", &self.credentials.access_key_id)
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
        Ok(RemoteKms {
            agent,
            endpoint,
            region: config.region,
            credentials: config.credentials,
        })
    }

    /// The endpoint's base URL, as parsed from the configuration.
    pub fn endpoint(&self) -> &str {
        &self.endpoint.url
    }

    /// Sends one signed request and returns the answer's body (zeroizing: it may hold
    /// a plaintext key).
    fn call_raw(&self, op: Operation, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
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
            Err(ureq::Error::Status(_, response)) => {
                let status = response.status();
                let text = read_body(response, &self.endpoint.url)?;
                return Err(self.error_from(status, &text, op));
            }
            Err(ureq::Error::Transport(e)) => {
                return Err(KmsError::Unavailable(format!(
                    "cannot reach the key service at {}: {e}",
                    self.endpoint.url
                )))
            }
        };
        read_body(response, &self.endpoint.url)
    }

    fn error_from(&self, status: u16, body: &[u8], op: Operation) -> KmsError {
        match serde_json::from_slice::<wire::ErrorResponse>(body) {
            Ok(wire::ErrorResponse {
                kind: Some(kind),
                message,
            }) => KmsError::from_aws_name(&kind, message.unwrap_or_default()),
            _ => KmsError::Internal(format!(
                "the key service at {} answered {} with HTTP {status} and no AWS error",
                self.endpoint.url,
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
                self.endpoint.url,
                op.name()
            ))
        })
    }

    fn unit<Req: Serialize>(&self, op: Operation, request: &Req) -> Result<(), KmsError> {
        self.call::<Req, serde::de::IgnoredAny>(op, request)
            .map(|_| ())
    }

    fn data_key_request(req: &GenerateDataKeyRequest) -> Result<wire::DataKeyRequest, KmsError> {
        req.spec.byte_len()?;
        let (key_spec, number_of_bytes) = match req.spec {
            DataKeySpec::Aes256 => (Some("AES_256".to_owned()), None),
            DataKeySpec::Aes128 => (Some("AES_128".to_owned()), None),
            DataKeySpec::Bytes(n) => (None, Some(u32::from(n))),
        };
        Ok(wire::DataKeyRequest {
            key_id: req.key_id.clone(),
            key_spec,
            number_of_bytes,
            encryption_context: context(&req.encryption_context),
            dry_run: None,
        })
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

fn context(context: &EncryptionContext) -> Option<EncryptionContext> {
    (!context.is_empty()).then(|| context.clone())
}

fn blob(field: &str, text: &str) -> Result<Vec<u8>, KmsError> {
    decode_blob(field, text)
        .map(|bytes| bytes.to_vec())
        .map_err(|e| KmsError::Internal(format!("the key service sent {e}")))
}

/// A plaintext field decoded straight into a secret; the base64 text is wiped.
fn secret(mut text: String) -> Result<SecretBytes, KmsError> {
    let decoded = decode_blob("Plaintext", &text);
    text.zeroize();
    decoded
        .map(SecretBytes::from_zeroizing)
        .map_err(|e| KmsError::Internal(format!("the key service sent {e}")))
}

/// CreateKey's and DescribeKey's key, as atrest models it.
fn metadata(answer: KeyMetadataResponse<WireKeyMetadata>) -> Result<KeyMetadata, KmsError> {
    answer.key_metadata.into_metadata()
}

/// A plaintext answer's key id, which every answer but GenerateRandom's carries.
fn answer_key_id(answer: &mut PlaintextResponse) -> Result<String, KmsError> {
    answer
        .key_id
        .take()
        .ok_or_else(|| KmsError::Internal("the key service sent no KeyId".into()))
}

fn list(req: &ListRequest, key_id: Option<&str>) -> wire::ListRequest {
    wire::ListRequest {
        key_id: key_id.map(str::to_owned),
        limit: req.limit,
        marker: req.marker.clone(),
    }
}

impl KeyService for RemoteKms {
    fn describe_key(&self, key_id: &str) -> Result<KeyMetadata, KmsError> {
        let request = wire::KeyIdRequest {
            key_id: key_id.to_owned(),
        };
        metadata(self.call(Operation::DescribeKey, &request)?)
    }

    fn generate_data_key(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<GeneratedDataKey, KmsError> {
        let op = Operation::GenerateDataKey;
        let body = serde_json::to_vec(&Self::data_key_request(req)?)
            .map_err(|e| KmsError::Internal(format!("cannot encode {}: {e}", op.name())))?;
        let mut answer: PlaintextResponse = self.parse(op, &self.call_raw(op, &body)?)?;
        let key_id = answer_key_id(&mut answer)?;
        let ciphertext = answer
            .ciphertext_blob
            .as_deref()
            .ok_or_else(|| KmsError::Internal("the key service sent no CiphertextBlob".into()))?;
        Ok(GeneratedDataKey {
            ciphertext_blob: blob("CiphertextBlob", ciphertext)?,
            key_id,
            plaintext: secret(answer.plaintext)?,
        })
    }

    fn generate_data_key_without_plaintext(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<WrappedData, KmsError> {
        let answer: CiphertextResponse = self.call(
            Operation::GenerateDataKeyWithoutPlaintext,
            &Self::data_key_request(req)?,
        )?;
        Ok(WrappedData {
            ciphertext_blob: blob("CiphertextBlob", &answer.ciphertext_blob)?,
            key_id: answer.key_id,
        })
    }

    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        encryption_context: &EncryptionContext,
    ) -> Result<WrappedData, KmsError> {
        let op = Operation::Encrypt;
        let request = wire::EncryptRequest {
            key_id: key_id.to_owned(),
            plaintext: encode_secret(plaintext),
            encryption_context: context(encryption_context),
            encryption_algorithm: None,
            dry_run: None,
        };
        // The request holds the plaintext: encode it into a buffer that is wiped.
        let mut body = Zeroizing::new(Vec::with_capacity(request.plaintext.len() + 512));
        serde_json::to_writer(&mut *body, &request)
            .map_err(|e| KmsError::Internal(format!("cannot encode {}: {e}", op.name())))?;
        let answer: CiphertextResponse = self.parse(op, &self.call_raw(op, &body)?)?;
        Ok(WrappedData {
            ciphertext_blob: blob("CiphertextBlob", &answer.ciphertext_blob)?,
            key_id: answer.key_id,
        })
    }

    fn decrypt(&self, req: &DecryptRequest) -> Result<DecryptedData, KmsError> {
        let op = Operation::Decrypt;
        let request = wire::DecryptRequest {
            ciphertext_blob: encode_blob(&req.ciphertext_blob),
            encryption_context: context(&req.encryption_context),
            key_id: req.key_id.clone(),
            encryption_algorithm: None,
            dry_run: None,
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| KmsError::Internal(format!("cannot encode {}: {e}", op.name())))?;
        let mut answer: PlaintextResponse = self.parse(op, &self.call_raw(op, &body)?)?;
        Ok(DecryptedData {
            key_id: answer_key_id(&mut answer)?,
            plaintext: secret(answer.plaintext)?,
            key_material_id: answer.key_material_id,
        })
    }

    fn re_encrypt(&self, req: &ReEncryptRequest) -> Result<ReEncrypted, KmsError> {
        let request = wire::ReEncryptRequest {
            ciphertext_blob: encode_blob(&req.ciphertext_blob),
            source_encryption_context: context(&req.source_encryption_context),
            source_key_id: req.source_key_id.clone(),
            destination_key_id: req.destination_key_id.clone(),
            destination_encryption_context: context(&req.destination_encryption_context),
            source_encryption_algorithm: None,
            destination_encryption_algorithm: None,
            dry_run: None,
        };
        let answer: ReEncryptResponse = self.call(Operation::ReEncrypt, &request)?;
        Ok(ReEncrypted {
            source_key_id: answer.source_key_id,
            key_id: answer.key_id,
            ciphertext_blob: blob("CiphertextBlob", &answer.ciphertext_blob)?,
            source_key_material_id: answer.source_key_material_id,
            destination_key_material_id: answer.destination_key_material_id,
        })
    }

    fn create_key(&self, req: &CreateKeyRequest) -> Result<KeyMetadata, KmsError> {
        let request = wire::CreateKeyRequest {
            description: Some(req.description.clone()),
            policy: req.policy.clone(),
            bypass_policy_lockout_safety_check: req
                .bypass_policy_lockout_safety_check
                .then_some(true),
            key_spec: req.key_spec.clone(),
            key_usage: req.key_usage.clone(),
            ..wire::CreateKeyRequest::default()
        };
        metadata(self.call(Operation::CreateKey, &request)?)
    }

    fn list_keys(&self, req: &ListRequest) -> Result<Page<KeyListEntry>, KmsError> {
        let answer: ListKeysResponse<KeyListEntry> =
            self.call(Operation::ListKeys, &list(req, None))?;
        Ok(Page {
            next_marker: answer.next_page(),
            items: answer.keys,
        })
    }

    fn update_key_description(&self, key_id: &str, description: &str) -> Result<(), KmsError> {
        self.unit(
            Operation::UpdateKeyDescription,
            &wire::UpdateKeyDescriptionRequest {
                key_id: key_id.to_owned(),
                description: description.to_owned(),
            },
        )
    }

    fn enable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.unit(Operation::EnableKey, &key_request(key_id))
    }

    fn disable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.unit(Operation::DisableKey, &key_request(key_id))
    }

    fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_window_in_days: Option<u32>,
    ) -> Result<ScheduledDeletion, KmsError> {
        let answer: ScheduleKeyDeletionResponse = self.call(
            Operation::ScheduleKeyDeletion,
            &wire::ScheduleKeyDeletionRequest {
                key_id: key_id.to_owned(),
                pending_window_in_days,
            },
        )?;
        let key_state = match answer.key_state.as_deref() {
            Some(text) => wire::parse_key_state(text)?,
            None => crypto_core::kms::KeyState::PendingDeletion,
        };
        Ok(ScheduledDeletion {
            key_id: answer.key_id,
            deletion_date: answer
                .deletion_date
                .ok_or_else(|| KmsError::Internal("the key service sent no DeletionDate".into()))?,
            key_state,
            pending_window_in_days: answer
                .pending_window_in_days
                .or(pending_window_in_days)
                .unwrap_or(30),
        })
    }

    fn cancel_key_deletion(&self, key_id: &str) -> Result<String, KmsError> {
        let answer: KeyIdResponse =
            self.call(Operation::CancelKeyDeletion, &key_request(key_id))?;
        Ok(answer.key_id)
    }

    fn list_aliases(
        &self,
        key_id: Option<&str>,
        req: &ListRequest,
    ) -> Result<Page<AliasListEntry>, KmsError> {
        let answer: ListAliasesResponse<WireAlias> =
            self.call(Operation::ListAliases, &list(req, key_id))?;
        let next_marker = answer.next_page();
        // Aliases without a target (AWS-managed ones never used) name no key to list.
        let items = answer
            .aliases
            .into_iter()
            .filter_map(|alias| {
                let target_key_id = alias.target_key_id?;
                let created = alias.creation_date.unwrap_or(OffsetDateTime::UNIX_EPOCH);
                Some(AliasListEntry {
                    alias_name: alias.alias_name,
                    alias_arn: alias.alias_arn,
                    target_key_id,
                    creation_date: created,
                    last_updated_date: alias.last_updated_date.unwrap_or(created),
                })
            })
            .collect();
        Ok(Page { items, next_marker })
    }

    fn create_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError> {
        self.unit(
            Operation::CreateAlias,
            &wire::AliasRequest {
                alias_name: alias_name.to_owned(),
                target_key_id: target_key_id.to_owned(),
            },
        )
    }

    fn update_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError> {
        self.unit(
            Operation::UpdateAlias,
            &wire::AliasRequest {
                alias_name: alias_name.to_owned(),
                target_key_id: target_key_id.to_owned(),
            },
        )
    }

    fn delete_alias(&self, alias_name: &str) -> Result<(), KmsError> {
        self.unit(
            Operation::DeleteAlias,
            &wire::DeleteAliasRequest {
                alias_name: alias_name.to_owned(),
            },
        )
    }

    fn enable_key_rotation(
        &self,
        key_id: &str,
        rotation_period_in_days: Option<u32>,
    ) -> Result<(), KmsError> {
        self.unit(
            Operation::EnableKeyRotation,
            &wire::EnableKeyRotationRequest {
                key_id: key_id.to_owned(),
                rotation_period_in_days,
            },
        )
    }

    fn disable_key_rotation(&self, key_id: &str) -> Result<(), KmsError> {
        self.unit(Operation::DisableKeyRotation, &key_request(key_id))
    }

    fn get_key_rotation_status(&self, key_id: &str) -> Result<RotationStatus, KmsError> {
        let answer: RotationStatusResponse =
            self.call(Operation::GetKeyRotationStatus, &key_request(key_id))?;
        Ok(RotationStatus {
            key_id: answer.key_id.unwrap_or_else(|| key_id.to_owned()),
            key_rotation_enabled: answer.key_rotation_enabled,
            rotation_period_in_days: answer.rotation_period_in_days,
            next_rotation_date: answer.next_rotation_date,
            on_demand_rotation_start_date: answer.on_demand_rotation_start_date,
        })
    }

    fn rotate_key_on_demand(&self, key_id: &str) -> Result<String, KmsError> {
        let answer: KeyIdResponse =
            self.call(Operation::RotateKeyOnDemand, &key_request(key_id))?;
        Ok(answer.key_id)
    }

    fn list_key_rotations(&self, key_id: &str) -> Result<Vec<RotationEntry>, KmsError> {
        let answers = self.every_page(
            Operation::ListKeyRotations,
            key_id,
            1000,
            ListKeyRotationsResponse::<WireRotation>::next_page,
        )?;
        let mut rotations = Vec::new();
        for rotation in answers.into_iter().flat_map(|answer| answer.rotations) {
            rotations.push(RotationEntry {
                key_id: rotation.key_id,
                rotation_date: rotation.rotation_date.ok_or_else(|| {
                    KmsError::Internal("the key service sent a rotation without a date".into())
                })?,
                rotation_type: rotation.rotation_type,
                key_material_id: rotation.key_material_id,
            });
        }
        Ok(rotations)
    }

    fn get_key_policy(&self, key_id: &str, policy_name: &str) -> Result<String, KmsError> {
        let answer: KeyPolicyResponse = self.call(
            Operation::GetKeyPolicy,
            &wire::KeyPolicyRequest {
                key_id: key_id.to_owned(),
                policy_name: Some(policy_name.to_owned()),
                ..wire::KeyPolicyRequest::default()
            },
        )?;
        Ok(answer.policy)
    }

    fn put_key_policy(
        &self,
        key_id: &str,
        policy_name: &str,
        policy: &str,
        bypass_policy_lockout_safety_check: bool,
    ) -> Result<(), KmsError> {
        self.unit(
            Operation::PutKeyPolicy,
            &wire::KeyPolicyRequest {
                key_id: key_id.to_owned(),
                policy_name: Some(policy_name.to_owned()),
                policy: Some(policy.to_owned()),
                bypass_policy_lockout_safety_check: bypass_policy_lockout_safety_check
                    .then_some(true),
            },
        )
    }

    fn tag_resource(&self, key_id: &str, tags: &[Tag]) -> Result<(), KmsError> {
        self.unit(
            Operation::TagResource,
            &wire::TagResourceRequest {
                key_id: key_id.to_owned(),
                tags: tags.to_vec(),
            },
        )
    }

    fn untag_resource(&self, key_id: &str, tag_keys: &[String]) -> Result<(), KmsError> {
        self.unit(
            Operation::UntagResource,
            &wire::UntagResourceRequest {
                key_id: key_id.to_owned(),
                tag_keys: tag_keys.to_vec(),
            },
        )
    }

    fn list_resource_tags(&self, key_id: &str) -> Result<Vec<Tag>, KmsError> {
        let answers = self.every_page(
            Operation::ListResourceTags,
            key_id,
            50,
            ListResourceTagsResponse::<Tag>::next_page,
        )?;
        Ok(answers.into_iter().flat_map(|answer| answer.tags).collect())
    }

    fn generate_random(&self, number_of_bytes: Option<u32>) -> Result<SecretBytes, KmsError> {
        let op = Operation::GenerateRandom;
        let request = wire::GenerateRandomRequest {
            number_of_bytes,
            ..Default::default()
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| KmsError::Internal(format!("cannot encode {}: {e}", op.name())))?;
        let answer: PlaintextResponse = self.parse(op, &self.call_raw(op, &body)?)?;
        secret(answer.plaintext)
    }

    fn list_key_policies(&self, key_id: &str) -> Result<Vec<String>, KmsError> {
        let answers = self.every_page(
            Operation::ListKeyPolicies,
            key_id,
            1000,
            ListKeyPoliciesResponse::<String>::next_page,
        )?;
        Ok(answers
            .into_iter()
            .flat_map(|answer| answer.policy_names)
            .collect())
    }
}

fn key_request(key_id: &str) -> wire::KeyIdRequest {
    wire::KeyIdRequest {
        key_id: key_id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_host_headers() {
        let e = Endpoint::parse("http://127.0.0.1:4599").unwrap();
        assert_eq!(e.host, "127.0.0.1:4599");
        assert_eq!(e.path, "/");
        let e = Endpoint::parse("https://kms.us-east-1.amazonaws.com:443/").unwrap();
        assert_eq!(e.host, "kms.us-east-1.amazonaws.com");
        let e = Endpoint::parse("http://[::1]:8080/kms").unwrap();
        assert_eq!(e.host, "[::1]:8080");
        assert_eq!(e.path, "/kms");
        for bad in [
            "",
            "ftp://x",
            "127.0.0.1:4599",
            "http://",
            "http://u@h/",
            "http://h:x/",
            "http://h/?q",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn profiles_are_read_from_ini_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id = A\n# comment\n[profile p]\nregion=eu-west-1\n[other]\naws_access_key_id=B\n",
        )
        .unwrap();
        assert_eq!(
            profile_value(&path, "default", "aws_access_key_id").as_deref(),
            Some("A")
        );
        assert_eq!(
            profile_value(&path, "other", "aws_access_key_id").as_deref(),
            Some("B")
        );
        assert_eq!(
            profile_value(&path, "profile p", "region").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(profile_value(&path, "missing", "region"), None);
    }
}
