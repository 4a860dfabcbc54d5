//! The response body: whole (zeroized when dropped, for answers that carry keys) or
//! streamed from a blocking thread with a known length.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::{Frame, SizeHint};
use zeroize::Zeroizing;

/// A response body that zeroizes its buffer when dropped (answers of
/// GenerateDataKey and Decrypt hold plaintext keys).
#[derive(Debug)]
pub struct ZeroizingBuf {
    bytes: Zeroizing<Vec<u8>>,
    position: usize,
}

impl ZeroizingBuf {
    pub(super) fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        ZeroizingBuf { bytes, position: 0 }
    }
}

impl Buf for ZeroizingBuf {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn chunk(&self) -> &[u8] {
        &self.bytes[self.position..]
    }

    fn advance(&mut self, count: usize) {
        self.position = self.position.saturating_add(count).min(self.bytes.len());
    }
}

/// One piece of a response body: a zeroizing buffer (KMS answers carry plaintext
/// keys) or bytes of an S3 answer.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes that may hold key material: wiped when the piece is dropped.
    Secret(ZeroizingBuf),
    /// Ordinary bytes (S3 object data, XML answers).
    Bytes(Bytes),
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Secret(b) => b.remaining(),
            Chunk::Bytes(b) => b.remaining(),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Secret(b) => b.chunk(),
            Chunk::Bytes(b) => b.chunk(),
        }
    }

    fn advance(&mut self, count: usize) {
        match self {
            Chunk::Secret(b) => b.advance(count),
            Chunk::Bytes(b) => b.advance(count),
        }
    }
}

/// A response body: whole, or streamed from a blocking thread with a known length.
#[derive(Debug)]
pub struct Body {
    pub(super) kind: BodyKind,
}

#[derive(Debug)]
pub(super) enum BodyKind {
    Whole(Option<Chunk>),
    Stream {
        rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
        remaining: u64,
    },
}

impl Body {
    pub(crate) fn whole(chunk: Chunk) -> Body {
        Body {
            kind: BodyKind::Whole(Some(chunk)),
        }
    }

    pub(super) fn empty() -> Body {
        Body {
            kind: BodyKind::Whole(None),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Chunk;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, std::io::Error>>> {
        match &mut self.kind {
            BodyKind::Whole(chunk) => Poll::Ready(chunk.take().map(|c| Ok(Frame::data(c)))),
            BodyKind::Stream { rx, remaining } => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    *remaining = remaining.saturating_sub(bytes.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(Chunk::Bytes(bytes)))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) if *remaining > 0 => Poll::Ready(Some(Err(
                    std::io::Error::other("the object ended before its length"),
                ))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Whole(chunk) => chunk.as_ref().is_none_or(|c| !c.has_remaining()),
            BodyKind::Stream { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Whole(chunk) => {
                SizeHint::with_exact(chunk.as_ref().map_or(0, |c| c.remaining() as u64))
            }
            BodyKind::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}
