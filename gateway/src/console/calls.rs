//! The console's one door into the gateway: each page action becomes the AWS API
//! request it stands for, SigV4-signed with the signed-in session's access key, and
//! handed to the gateway's request entry point ([`server::respond`]) in this process,
//! from the browser's address. Key policies, bucket policies, error codes and trail
//! records are therefore exactly the API's. Nothing else in the console reaches into
//! the KMS or S3 code.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use zeroize::Zeroizing;

use super::session::Session;
use crate::error::GatewayError;
use crate::server::{self, Body, Gateway, RequestBody};
use crate::sigv4::{self, PathEncoding, Payload, Signer};
use crypto_core::kms::wire;

/// Largest gateway answer the console reads whole (a page of a listing is far less).
const MAX_ANSWER: usize = 8 << 20;
/// Room first made for a KMS answer holding a data key (a few hundred bytes).
const SECRET_ANSWER: usize = 16 * 1024;

/// Who is asking, from where: the session signs, the browser's address and user
/// agent go into the trail.
pub(crate) struct Caller<'a> {
    pub(crate) gateway: &'a Arc<Gateway>,
    pub(crate) session: &'a Session,
    pub(crate) peer: SocketAddr,
    /// The `Host` the browser used: presigned URLs must be signed for it.
    pub(crate) host: String,
    pub(crate) user_agent: String,
}

/// An answer read whole.
pub(crate) struct Answer {
    pub(crate) status: http::StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Caller<'_> {
    fn signer(&self, service: &str) -> Signer<'_> {
        Signer::new(
            &self.session.credentials,
            self.gateway.region(),
            service,
            self.gateway.now(),
        )
    }

    fn base_headers(&self) -> Result<HeaderMap, GatewayError> {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, header_value(&self.host)?);
        headers.insert(
            http::header::USER_AGENT,
            header_value(&format!("atrest-console ({})", self.user_agent))?,
        );
        Ok(headers)
    }

    /// KMS `operation` (`TrentService.<operation>`) with the JSON `input`.
    pub(crate) async fn kms(&self, operation: &str, input: Bytes) -> Result<Answer, GatewayError> {
        read_whole(self.kms_response(operation, input).await?).await
    }

    /// [`Caller::kms`] for the console's volume actions, whose answers may hold a
    /// plaintext data key (GenerateDataKey, Decrypt): the body is read into memory
    /// that is wiped when dropped, and never reaches a page.
    pub(crate) async fn kms_secret(
        &self,
        operation: &str,
        input: Bytes,
    ) -> Result<(http::StatusCode, Zeroizing<Vec<u8>>), GatewayError> {
        let response = self.kms_response(operation, input).await?;
        let (parts, mut body) = response.into_parts();
        let mut answer = Zeroizing::new(Vec::with_capacity(SECRET_ANSWER));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                GatewayError::io(
                    "reading the gateway's answer",
                    std::io::Error::other(e.to_string()),
                )
            })?;
            if let Ok(mut data) = frame.into_data() {
                let length = data.remaining();
                if answer.len() + length > answer.capacity() {
                    // Never let the vector reallocate: the old buffer would not be wiped.
                    if answer.len() + length > MAX_ANSWER {
                        return Err(GatewayError::io(
                            "reading the gateway's answer",
                            std::io::Error::other("the key service's answer is too large"),
                        ));
                    }
                    let mut grown = Zeroizing::new(Vec::with_capacity(
                        (answer.len() + length).max(answer.capacity() * 2),
                    ));
                    grown.extend_from_slice(&answer);
                    answer = grown;
                }
                while data.has_remaining() {
                    let chunk = data.chunk();
                    answer.extend_from_slice(chunk);
                    let read = chunk.len();
                    data.advance(read);
                }
            }
        }
        Ok((parts.status, answer))
    }

    async fn kms_response(
        &self,
        operation: &str,
        input: Bytes,
    ) -> Result<Response<Body>, GatewayError> {
        let mut headers = self.base_headers()?;
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(wire::CONTENT_TYPE),
        );
        headers.insert(
            "x-amz-target",
            header_value(&format!("TrentService.{operation}"))?,
        );
        sigv4::sign_headers(
            &self.signer("kms"),
            "POST",
            "/",
            "",
            &mut headers,
            Payload::Body(&input),
        )?;
        self.send("POST", "/", "", headers, Full::new(input)).await
    }

    /// An S3 request: `path` and `query` already URI-encoded; `headers` the
    /// request's own (content type, SSE, ACL, length). A small `body` is signed
    /// and checksummed; a streamed one (an upload) goes as `UNSIGNED-PAYLOAD`.
    pub(crate) async fn s3(
        &self,
        method: &str,
        path: &str,
        query: &str,
        extra: HeaderMap,
        body: S3Payload<impl RequestBody>,
    ) -> Result<Response<Body>, GatewayError> {
        let mut headers = self.base_headers()?;
        headers.extend(extra);
        let (hash, body) = match body {
            S3Payload::Small(bytes) => {
                use base64::Engine;
                use sha2::{Digest, Sha256};
                let digest = Sha256::digest(&bytes);
                if !bytes.is_empty() {
                    headers.insert(
                        "x-amz-checksum-sha256",
                        header_value(&base64::engine::general_purpose::STANDARD.encode(digest))?,
                    );
                    headers.insert(http::header::CONTENT_LENGTH, bytes.len().into());
                }
                (hex::encode(digest), Either::Small(Full::new(bytes)))
            }
            S3Payload::Stream(stream) => ("UNSIGNED-PAYLOAD".to_owned(), Either::Stream(stream)),
        };
        headers.insert("x-amz-content-sha256", header_value(&hash)?);
        sigv4::sign_headers_as(
            &self.signer("s3"),
            method,
            path,
            query,
            &mut headers,
            &hash,
            PathEncoding::Single,
        )?;
        match body {
            Either::Small(body) => self.send(method, path, query, headers, body).await,
            Either::Stream(body) => self.send(method, path, query, headers, body).await,
        }
    }

    /// A presigned GET URL (path and query) for `path`, valid `expires` seconds.
    pub(crate) fn presign_get(&self, path: &str, expires: u32) -> Result<String, GatewayError> {
        let query = sigv4::presign_query(
            &self.signer("s3"),
            "GET",
            &self.host,
            path,
            &[],
            expires,
            PathEncoding::Single,
        )?;
        Ok(format!("{path}?{query}"))
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: HeaderMap,
        body: impl RequestBody,
    ) -> Result<Response<Body>, GatewayError> {
        let uri = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .map_err(|e| GatewayError::BadRequest(format!("cannot build the request: {e}")))?;
        *request.headers_mut() = headers;
        Ok(server::respond(Arc::clone(self.gateway), request, self.peer).await)
    }
}

/// The body of an S3 request the console makes.
pub(crate) enum S3Payload<B> {
    Small(Bytes),
    Stream(B),
}

enum Either<B> {
    Small(Full<Bytes>),
    Stream(B),
}

/// Reads a gateway answer whole (the console only reads small ones: KMS answers
/// without plaintext, S3 XML documents).
pub(crate) async fn read_whole(response: Response<Body>) -> Result<Answer, GatewayError> {
    let (parts, body) = response.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_ANSWER);
    let body = limited
        .collect()
        .await
        .map_err(|e| {
            GatewayError::io(
                "reading the gateway's answer",
                std::io::Error::other(e.to_string()),
            )
        })?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

fn header_value(text: &str) -> Result<HeaderValue, GatewayError> {
    HeaderValue::from_str(text)
        .map_err(|_| GatewayError::BadRequest(format!("'{text}' cannot be sent as a header")))
}
