//! Signing in: the access key is checked the way the API checks it, then a session
//! opens; a refused sign-in is recorded in the trail and throttled per address.

use super::{json_reply, parse, read_json, session_cookie, session_view, Console, Refusal};
use crate::server::{Body, Gateway, RequestBody};
use crate::sigv4::{self, Expectations, PathEncoding, Payload, SigningCredentials};
use crypto_core::trail::{ApiCall, EventSource, RefusedCaller, RefusedRequest};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Why a sign-in did not open a session.
enum SignInFailure {
    /// The access key did not verify (recorded as a refused `ConsoleLogin`).
    Refused(crate::GatewayError),
    /// It verified, but the trail could not record the sign-in.
    Unrecorded(crypto_core::kms::KmsError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignIn {
    access_key_id: String,
    /// Moved into a [`Zeroizing`] as soon as parsed.
    secret_access_key: String,
}

/// Checks the access key the way the API does (a request signed with it must
/// verify against the gateway's access keys), then opens a session. Both outcomes
/// are in the trail: a successful `ConsoleLogin` by the principal (before the
/// session opens), or a refused one with the claimed key.
pub(super) async fn sign_in(
    gateway: &Arc<Gateway>,
    console: &Console,
    body: impl RequestBody,
    peer: SocketAddr,
    secure: bool,
) -> Result<Response<Body>, Refusal> {
    let bytes = read_json(body).await?;
    let SignIn {
        access_key_id,
        secret_access_key,
    } = parse(&bytes)?;
    let secret_access_key = Zeroizing::new(secret_access_key);
    if !console.sessions.may_try(peer.ip()) {
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyFailedSignIns",
            "too many failed sign-ins from this address: wait a few minutes",
        ));
    }
    let credentials = SigningCredentials {
        access_key_id: access_key_id.trim().to_owned(),
        secret_access_key: Zeroizing::new(secret_access_key.trim().to_owned()),
        session_token: None,
    };
    let checked = {
        let gateway = Arc::clone(gateway);
        tokio::task::spawn_blocking(move || -> Result<_, SignInFailure> {
            let verified = verify_credentials(&gateway, &credentials);
            if let Err(err) = &verified {
                gateway.record_refusal(RefusedRequest {
                    event_time: gateway.now(),
                    event_source: EventSource::Kms,
                    event_name: "ConsoleLogin".into(),
                    caller: RefusedCaller::Unknown,
                    error_code: err.aws_name().to_owned(),
                    error_message: format!("Failed authentication: {}", err.message()),
                    request_parameters: Value::Null,
                    read_only: true,
                    source: crypto_core::trail::RequestSource::remote(
                        peer.ip(),
                        Some(b"atrest-console"),
                        Some(&credentials.access_key_id),
                    ),
                });
            }
            let principal = verified.map_err(SignInFailure::Refused)?;
            // A sign-in counts only once the trail holds it, as every KMS call.
            gateway
                .record_event(
                    &ApiCall {
                        event_time: gateway.now(),
                        event_name: "ConsoleLogin".into(),
                        principal: principal.clone(),
                        request_parameters: Value::Null,
                        response_elements: Some(json!({ "ConsoleLogin": "Success" })),
                        error_code: None,
                        error_message: None,
                        read_only: false,
                        resources: Vec::new(),
                    },
                    &crypto_core::trail::RequestSource::remote(
                        peer.ip(),
                        Some(b"atrest-console"),
                        Some(&credentials.access_key_id),
                    ),
                )
                .map_err(SignInFailure::Unrecorded)?;
            Ok((credentials, principal))
        })
        .await
        .map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                e.to_string(),
            )
        })?
    };
    match checked {
        Ok((credentials, principal)) => {
            let (token, session) = console.sessions.open(credentials, principal);
            let mut response = json_reply(StatusCode::OK, &session_view(&session, console));
            response.headers_mut().insert(
                http::header::SET_COOKIE,
                session_cookie(&token, secure, None),
            );
            Ok(response)
        }
        Err(SignInFailure::Unrecorded(err)) => {
            tracing::error!("a console sign-in could not be recorded: {err}");
            Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "InternalFailure",
                "the sign-in could not be recorded in the audit trail",
            ))
        }
        Err(SignInFailure::Refused(err)) => {
            console.sessions.failed(peer.ip());
            tracing::info!(source = %peer.ip(), "refused console sign-in: {}", err.aws_name());
            Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "SignInRefused",
                "the access key id or secret is wrong, or the key is inactive",
            ))
        }
    }
}

/// The principal of `credentials` when a request signed with them verifies.
fn verify_credentials(
    gateway: &Gateway,
    credentials: &SigningCredentials,
) -> Result<String, crate::GatewayError> {
    let now = gateway.now();
    let signer = sigv4::Signer::new(credentials, gateway.region(), "kms", now);
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("console"));
    sigv4::sign_headers(&signer, "POST", "/", "", &mut headers, Payload::Body(b""))?;
    let view = sigv4::RequestView {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
    };
    let expect = Expectations {
        service: "kms",
        region: gateway.region(),
        now,
        path_encoding: PathEncoding::Double,
    };
    sigv4::verify(&view, Payload::Body(b""), &expect, gateway.credentials())
        .map(|verified| verified.principal)
}
