//! Answering one request: reading its body (whole for KMS, streamed for S3, both
//! within the body timeout), running it on a blocking thread, and writing the KMS
//! JSON or S3 XML answer or error, recording S3 refusals.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use crypto_core::kms::wire;
use crypto_core::trail::RequestSource;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use zeroize::Zeroizing;

use super::body::BodyKind;
use super::{is_s3_refusal, request_source, Body, Chunk, Gateway, Route, S3Parts, ZeroizingBuf};
use crate::error::{GatewayError, Protocol};
use crate::s3::upload::ChannelReader;
use crate::s3::{self, S3Answer, S3Body};

/// Largest request body read. KMS's largest input is a 32 KiB key policy; base64
/// and JSON framing stay well under this.
const MAX_BODY: usize = 256 * 1024;
/// The first buffer of a KMS body; it grows as bytes arrive.
const INITIAL_BODY_BUFFER: usize = 16 * 1024;
/// Bytes in flight between a connection and the thread serving its S3 request, in
/// each direction (the queue depth of the bounded channels).
const STREAM_QUEUE: usize = 8;
/// Size of the pieces an object is sent in.
const SEND_PIECE: usize = 256 * 1024;

/// What [`respond`] can read a request body from: a connection's
/// ([`Incoming`](hyper::body::Incoming)), or one the console built ([`crate::console`]).
pub(crate) trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: std::fmt::Display + Send> + Send + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<Data = Bytes, Error: std::fmt::Display + Send> + Send + Unpin + 'static
{
}

/// The one entry point of every request: the console's pages, then KMS or S3 by the
/// request's shape.
pub(crate) async fn respond(
    gateway: Arc<Gateway>,
    request: Request<impl RequestBody>,
    peer: SocketAddr,
) -> Response<Body> {
    if gateway.console.is_some() && crate::console::owns(request.uri().path()) {
        return crate::console::respond(gateway, request, peer).await;
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = request.into_parts();
    let source = request_source(&parts, peer).with_request_id(&request_id);
    match Route::of(&parts, gateway.services()) {
        Ok(Route::S3) => return respond_s3(gateway, parts, body, request_id, source).await,
        Ok(Route::Kms(_)) => {}
        Err(err) if !gateway.services().kms => {
            return s3_error(&err, parts.uri.path(), &request_id);
        }
        Err(_) => {}
    }
    let body = read_body(body, MAX_BODY, gateway.limits.body_timeout).await;
    let stalled = matches!(body, Err(GatewayError::RequestTimeout(_)));
    let answer = tokio::task::spawn_blocking(move || match body {
        Ok(body) => gateway.answer(&parts, &body, source),
        Err(err) => Err(gateway.refuse_kms(&parts, err, source)),
    })
    .await
    .unwrap_or_else(|e| {
        Err(GatewayError::io(
            "the request handler failed",
            std::io::Error::other(e.to_string()),
        ))
    });
    let mut response = match answer {
        Ok(answer) => build(
            StatusCode::OK,
            answer.content_type,
            answer.body,
            &request_id,
        ),
        Err(err) => {
            let reply = err.reply(Protocol::Json);
            if reply.status >= 500 {
                tracing::warn!(request_id, "{err}");
            } else {
                tracing::debug!(request_id, "{err}");
            }
            let body = serde_json::to_vec(&wire::ErrorResponse {
                kind: Some(reply.code.to_string()),
                message: Some(reply.message.clone()),
            })
            .unwrap_or_default();
            let body = Zeroizing::new(body);
            let status =
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            build(status, wire::CONTENT_TYPE, body, &request_id)
        }
    };
    if stalled {
        close_after(&mut response);
    }
    response
}

/// Marks `response` as the connection's last: hyper closes it once sent.
fn close_after(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
}

fn stalled_body(timeout: Duration) -> GatewayError {
    GatewayError::RequestTimeout(format!(
        "Your socket connection to the server was not read from or written to within the \
         timeout period: no part of the request body arrived for {} s.",
        timeout.as_secs_f64()
    ))
}

/// Reads a whole request body of at most `limit` bytes, failing when no part of it
/// arrives for `stall`. The buffer is zeroized when dropped (KMS bodies carry
/// plaintexts).
async fn read_body(
    mut body: impl RequestBody,
    limit: usize,
    stall: Duration,
) -> Result<Zeroizing<Vec<u8>>, GatewayError> {
    let expected = hyper::body::Body::size_hint(&body).lower();
    if expected > limit as u64 {
        return Err(GatewayError::BadRequest(format!(
            "the request body ({expected} bytes) exceeds {limit} bytes"
        )));
    }
    // What a client announces is not reserved in full before it arrives: a stalled
    // connection holds at most what it sent.
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        usize::try_from(expected)
            .unwrap_or(limit)
            .min(INITIAL_BODY_BUFFER),
    ));
    loop {
        match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return Err(stalled_body(stall)),
            Ok(None) => return Ok(bytes),
            Ok(Some(Err(e))) => {
                return Err(GatewayError::BadRequest(format!(
                    "the request body could not be read ({e})"
                )))
            }
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if bytes.len() + data.len() > limit {
                    return Err(GatewayError::BadRequest(format!(
                        "the request body exceeds {limit} bytes"
                    )));
                }
                if bytes.len() + data.len() > bytes.capacity() {
                    // Grow into a new zeroizing buffer so no copy is left behind.
                    let mut grown = Zeroizing::new(Vec::with_capacity(
                        (bytes.len() + data.len())
                            .max(bytes.capacity() * 2)
                            .min(limit),
                    ));
                    grown.extend_from_slice(&bytes);
                    bytes = grown;
                }
                bytes.extend_from_slice(&data);
            }
        }
    }
}

/// Forwards the request body's bytes into a bounded channel until it ends, fails,
/// stalls for `stall` (returns `true`), or the reader goes away (at once, even while
/// waiting for the client). Waiting for the reader to take a piece is not a stall:
/// only the client's silence is.
///
/// The body is not touched before the reader first asks for it (`wanted`): hyper
/// sends `100 Continue` to an `Expect: 100-continue` request when its body is first
/// polled, and a request refused before that (signature, access, missing bucket)
/// must get its refusal instead, its body never sent.
async fn forward_body(
    mut body: impl RequestBody,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    wanted: tokio::sync::oneshot::Receiver<()>,
    stall: Duration,
) -> bool {
    tokio::select! {
        () = tx.closed() => return false,
        asked = wanted => {
            if asked.is_err() {
                return false;
            }
        }
    }
    loop {
        let frame = tokio::select! {
            // The handler answered without the rest of the body (a refusal): stop
            // reading, so the answer goes out now, not at the body timeout.
            () = tx.closed() => return false,
            frame = tokio::time::timeout(stall, body.frame()) => frame,
        };
        match frame {
            Err(_) => {
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body stalled",
                    )))
                    .await;
                return true;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() && tx.send(Ok(data)).await.is_err() {
                        return false;
                    }
                }
            }
            Ok(Some(Err(e))) => {
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "reading the request body: {e}"
                    ))))
                    .await;
                return false;
            }
            Ok(None) => return false,
        }
    }
}

async fn respond_s3(
    gateway: Arc<Gateway>,
    parts: http::request::Parts,
    body: impl RequestBody,
    request_id: String,
    source: RequestSource,
) -> Response<Body> {
    let resource = parts.uri.path().to_owned();
    let head = parts.method == http::Method::HEAD;
    let refusal_parts = S3Parts::of(&parts);
    let verified = Arc::new(OnceLock::new());
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
    let (wanted_tx, wanted_rx) = tokio::sync::oneshot::channel();
    let stall = gateway.limits.body_timeout;
    let handler = {
        let gateway = Arc::clone(&gateway);
        let verified = Arc::clone(&verified);
        let source = source.clone();
        tokio::task::spawn_blocking(move || {
            gateway.answer_s3(&parts, ChannelReader::new(rx, wanted_tx), source, &verified)
        })
    };
    let (answer, stalled) = tokio::join!(handler, forward_body(body, tx, wanted_rx, stall));
    let answer = match answer {
        _ if stalled => Err(stalled_body(stall)),
        Ok(answer) => answer,
        Err(e) => Err(GatewayError::io(
            "the request handler failed",
            std::io::Error::other(e.to_string()),
        )),
    };
    match answer {
        Ok(answer) => s3_response(answer, head, &request_id),
        Err(err) => {
            if is_s3_refusal(&err) {
                let reply = err.reply(Protocol::S3);
                let error = (reply.code.into_owned(), reply.message);
                let recorded = tokio::task::spawn_blocking({
                    let gateway = Arc::clone(&gateway);
                    move || gateway.refuse_s3(&refusal_parts, error, source, verified.get())
                })
                .await;
                if let Err(e) = recorded {
                    tracing::error!("recording a refused S3 request failed: {e}");
                }
            }
            let mut response = s3_error(&err, &resource, &request_id);
            if stalled {
                close_after(&mut response);
            }
            response
        }
    }
}

fn s3_error(err: &GatewayError, resource: &str, request_id: &str) -> Response<Body> {
    let reply = err.reply(Protocol::S3);
    if reply.status >= 500 && reply.status != 501 {
        tracing::warn!(request_id, "{err}");
    } else {
        tracing::debug!(request_id, "{err}");
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let document = s3::error_document(&reply, resource, request_id);
    let mut response = Response::new(Body::whole(Chunk::Bytes(Bytes::from(document))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    request_id_headers(headers, request_id);
    response
}

fn request_id_headers(headers: &mut http::HeaderMap, request_id: &str) {
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amz-request-id", id.clone());
        headers.insert("x-amz-id-2", id);
    }
}

fn s3_response(answer: S3Answer, head: bool, request_id: &str) -> Response<Body> {
    let body = match answer.body {
        S3Body::Empty => Body::empty(),
        S3Body::Xml(document) => Body::whole(Chunk::Bytes(Bytes::from(document))),
        S3Body::Object(reader) if head => {
            drop(reader);
            Body::empty()
        }
        S3Body::Object(reader) => stream_object(reader),
    };
    let mut response = Response::new(body);
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    request_id_headers(response.headers_mut(), request_id);
    response
}

/// Streams an object's plaintext from a blocking thread, a few pieces ahead of the
/// connection.
fn stream_object(mut reader: Box<objstore::ObjectReader>) -> Body {
    let remaining = reader.remaining();
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
    tokio::task::spawn_blocking(move || loop {
        let want = usize::try_from(reader.remaining())
            .unwrap_or(usize::MAX)
            .min(SEND_PIECE);
        if want == 0 {
            return;
        }
        let mut piece = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match reader.read(&mut piece[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("an object could not be read: {e}");
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        if filled == 0 {
            return;
        }
        piece.truncate(filled);
        if tx.blocking_send(Ok(Bytes::from(piece))).is_err() {
            return;
        }
    });
    Body {
        kind: BodyKind::Stream { rx, remaining },
    }
}

fn build(
    status: StatusCode,
    content_type: &'static str,
    body: Zeroizing<Vec<u8>>,
    request_id: &str,
) -> Response<Body> {
    let mut response = Response::new(Body::whole(Chunk::Secret(ZeroizingBuf::new(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}
