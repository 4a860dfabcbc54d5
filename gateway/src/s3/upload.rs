//! The body of an S3 request as the object store reads it: bytes arrive from the
//! connection through a bounded channel ([`ChannelReader`]), and [`UploadBody`]
//! checks them as they pass — the signed SHA-256, the aws-chunked framing and every
//! chunk signature, the declared decoded length, the `x-amz-checksum-*` value (in a
//! header or a trailer). A check that fails makes the read fail, so the object store
//! never commits the object.
//!
//! Errors travel through `std::io::Error` (the object store reads a `Read`) wrapping a
//! [`GatewayError`]; [`UploadBody::error_of`] takes it back out.

use std::io::{self, BufRead, Read};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::{Buf, Bytes};
use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::sigv4::ChunkChain;

/// Longest chunk-size line (`hex;chunk-signature=<64 hex>`), and trailer line.
const MAX_LINE: usize = 4096;
/// Most trailing headers accepted.
const MAX_TRAILERS: usize = 16;
/// Largest aws-chunked chunk accepted (clients use 8 KiB to 1 MiB).
const MAX_CHUNK: u64 = 64 << 20;

/// Reads the bytes the connection task sends, blocking the (blocking-pool) thread
/// while it waits.
#[derive(Debug)]
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, io::Error>>,
    /// Fired on the first read: the connection task starts reading the body (and
    /// so lets hyper answer `Expect: 100-continue` with 100) only then, so a request
    /// refused before its body is wanted gets its final status instead of a 100.
    wanted: Option<tokio::sync::oneshot::Sender<()>>,
    current: Bytes,
    failed: bool,
}

impl ChannelReader {
    pub(crate) fn new(
        rx: tokio::sync::mpsc::Receiver<Result<Bytes, io::Error>>,
        wanted: tokio::sync::oneshot::Sender<()>,
    ) -> ChannelReader {
        ChannelReader {
            rx,
            wanted: Some(wanted),
            current: Bytes::new(),
            failed: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                self.current.copy_to_slice(&mut buf[..n]);
                return Ok(n);
            }
            if self.failed {
                return Err(io::Error::other("the request body could not be read"));
            }
            if let Some(wanted) = self.wanted.take() {
                // The connection task is gone when this fails; the receive below
                // then ends the body.
                let _ = wanted.send(());
            }
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                None => return Ok(0),
            }
        }
    }
}

/// How the body's bytes relate to the signature.
#[derive(Debug)]
pub enum BodyAuth {
    /// Not covered (`UNSIGNED-PAYLOAD`, presigned URLs, anonymous requests).
    Unsigned,
    /// The signed `x-amz-content-sha256`: the body must hash to it.
    Sha256([u8; 32]),
    /// aws-chunked framing (`Content-Encoding: aws-chunked`): each chunk signed
    /// through `chain` (None for `STREAMING-UNSIGNED-PAYLOAD-TRAILER`), trailing
    /// headers when `trailer`.
    Chunked {
        /// The chunk signatures' chain, seeded by the request's signature.
        chain: Option<ChunkChain>,
        /// Trailing headers (a checksum) follow the last chunk.
        trailer: bool,
    },
}

/// A checksum algorithm of S3's flexible checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    /// CRC-32 (ISO-HDLC), `x-amz-checksum-crc32`.
    Crc32,
    /// CRC-32C (Castagnoli), `x-amz-checksum-crc32c`.
    Crc32c,
    /// SHA-1, `x-amz-checksum-sha1`.
    Sha1,
    /// SHA-256, `x-amz-checksum-sha256`.
    Sha256,
    /// CRC-64/NVME, `x-amz-checksum-crc64nvme`.
    Crc64Nvme,
}

impl ChecksumAlgorithm {
    /// The algorithm a `x-amz-checksum-*` header name stands for.
    pub fn from_header(name: &str) -> Result<Option<ChecksumAlgorithm>, GatewayError> {
        Ok(Some(match name {
            "x-amz-checksum-crc32" => ChecksumAlgorithm::Crc32,
            "x-amz-checksum-crc32c" => ChecksumAlgorithm::Crc32c,
            "x-amz-checksum-sha1" => ChecksumAlgorithm::Sha1,
            "x-amz-checksum-sha256" => ChecksumAlgorithm::Sha256,
            "x-amz-checksum-crc64nvme" => ChecksumAlgorithm::Crc64Nvme,
            _ => return Ok(None),
        }))
    }

    /// The `x-amz-checksum-*` header name of the algorithm.
    pub fn header(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "x-amz-checksum-crc32",
            ChecksumAlgorithm::Crc32c => "x-amz-checksum-crc32c",
            ChecksumAlgorithm::Sha1 => "x-amz-checksum-sha1",
            ChecksumAlgorithm::Sha256 => "x-amz-checksum-sha256",
            ChecksumAlgorithm::Crc64Nvme => "x-amz-checksum-crc64nvme",
        }
    }

    fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Sha1 => "SHA1",
            ChecksumAlgorithm::Sha256 => "SHA256",
            ChecksumAlgorithm::Crc64Nvme => "CRC64NVME",
        }
    }
}

/// A running checksum of the decoded body.
enum Checksum {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Sha1(sha1::Sha1),
    Sha256(Sha256),
    Crc64Nvme(u64),
}

/// CRC-64/NVME (the NVMe specification's CRC-64; S3's CRC64NVME): reflected
/// polynomial 0x9A6C9329AC4BC9B5, initial value and final XOR all ones.
const CRC64_NVME_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x9A6C_9329_AC4B_C9B5
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Continues a CRC-64/NVME over `data` (`crc` is the running, un-inverted value).
fn crc64_nvme_append(mut crc: u64, data: &[u8]) -> u64 {
    for &byte in data {
        crc = CRC64_NVME_TABLE[((crc ^ u64::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

impl Checksum {
    fn new(algorithm: ChecksumAlgorithm) -> Checksum {
        match algorithm {
            ChecksumAlgorithm::Crc32 => Checksum::Crc32(crc32fast::Hasher::new()),
            ChecksumAlgorithm::Crc32c => Checksum::Crc32c(0),
            ChecksumAlgorithm::Sha1 => Checksum::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Sha256 => Checksum::Sha256(Sha256::new()),
            ChecksumAlgorithm::Crc64Nvme => Checksum::Crc64Nvme(!0),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Checksum::Crc32(h) => h.update(data),
            Checksum::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            Checksum::Sha1(h) => h.update(data),
            Checksum::Sha256(h) => h.update(data),
            Checksum::Crc64Nvme(crc) => *crc = crc64_nvme_append(*crc, data),
        }
    }

    /// The value, base64 as in the header.
    fn finish(self) -> String {
        match self {
            Checksum::Crc32(h) => BASE64.encode(h.finalize().to_be_bytes()),
            Checksum::Crc32c(crc) => BASE64.encode(crc.to_be_bytes()),
            Checksum::Sha1(h) => BASE64.encode(h.finalize()),
            Checksum::Sha256(h) => BASE64.encode(h.finalize()),
            Checksum::Crc64Nvme(crc) => BASE64.encode((!crc).to_be_bytes()),
        }
    }
}

/// What the request says the checksum of the decoded body is.
#[derive(Debug)]
pub struct ChecksumClaim {
    /// The algorithm.
    pub algorithm: ChecksumAlgorithm,
    /// From the header; `None` when it comes in the aws-chunked trailer.
    pub value: Option<String>,
}

/// The verified decoded body of a request (see the module documentation).
pub struct UploadBody<R> {
    src: R,
    auth_sha256: Option<([u8; 32], Sha256)>,
    chunked: Option<Chunked>,
    /// `x-amz-decoded-content-length` (aws-chunked).
    decoded_len: Option<u64>,
    checksum: Option<(ChecksumClaim, Checksum)>,
    /// The checksum computed, once the body has ended and passed every check.
    verified_checksum: Option<(ChecksumAlgorithm, String)>,
    /// Where the verified checksum is also reported (the object store keeps it).
    report: Option<objstore::BodyChecksum>,
    read: u64,
    finished: bool,
}

impl<R> std::fmt::Debug for UploadBody<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadBody")
            .field("read", &self.read)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

struct Chunked {
    chain: Option<ChunkChain>,
    trailer: bool,
    /// Data bytes left in the current chunk.
    left: u64,
    /// The current chunk's signature and running hash (signed chunks).
    signature: Option<[u8; 32]>,
    hash: Sha256,
    /// Whether a chunk's data was read and its CRLF and signature are still due.
    in_chunk: bool,
}

fn fail(err: GatewayError) -> io::Error {
    io::Error::other(err)
}

fn incomplete(what: &str) -> io::Error {
    fail(GatewayError::IncompleteBody(what.to_owned()))
}

/// An object-store failure of a write that read this body: a failure of the
/// body itself (a bad chunk, a checksum mismatch, a stall) is the client's,
/// with its own S3 code; anything else is the store's.
pub(crate) fn store_error(err: objstore::Error) -> GatewayError {
    match err {
        objstore::Error::Body(io) => UploadBody::<&[u8]>::error_of(io),
        other => GatewayError::Object(other),
    }
}

impl<R: BufRead> UploadBody<R> {
    /// The body `src`, checked as `auth` says, decoding to `decoded_len` bytes when
    /// given (aws-chunked), and against `checksum` when the request claims one.
    pub fn new(
        src: R,
        auth: BodyAuth,
        decoded_len: Option<u64>,
        checksum: Option<ChecksumClaim>,
    ) -> UploadBody<R> {
        let (auth_sha256, chunked) = match auth {
            BodyAuth::Unsigned => (None, None),
            BodyAuth::Sha256(expected) => (Some((expected, Sha256::new())), None),
            BodyAuth::Chunked { chain, trailer } => (
                None,
                Some(Chunked {
                    chain,
                    trailer,
                    left: 0,
                    signature: None,
                    hash: Sha256::new(),
                    in_chunk: false,
                }),
            ),
        };
        UploadBody {
            src,
            auth_sha256,
            chunked,
            decoded_len,
            checksum: checksum.map(|claim| {
                let running = Checksum::new(claim.algorithm);
                (claim, running)
            }),
            verified_checksum: None,
            report: None,
            read: 0,
            finished: false,
        }
    }

    /// Reports the checksum, once verified, to `slot` too.
    pub(crate) fn report_checksum_to(&mut self, slot: objstore::BodyChecksum) {
        self.report = Some(slot);
    }

    /// The body's checksum (base64) once the whole body has been read and verified.
    pub(crate) fn verified_checksum(&self) -> Option<&(ChecksumAlgorithm, String)> {
        self.verified_checksum.as_ref()
    }

    /// The gateway error a failed read carries, or IncompleteBody for a plain I/O
    /// failure (the client went away).
    pub(crate) fn error_of(err: io::Error) -> GatewayError {
        if err
            .get_ref()
            .is_some_and(|inner| inner.is::<GatewayError>())
        {
            if let Some(Ok(inner)) = err.into_inner().map(|e| e.downcast::<GatewayError>()) {
                return *inner;
            }
            return GatewayError::IncompleteBody("the request body could not be read".into());
        }
        GatewayError::IncompleteBody(format!("the request body could not be read: {err}"))
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let n = (&mut self.src)
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\r\n") {
            return Err(incomplete(
                "the aws-chunked body ends early or holds a line that is too long or not \
                 ended by CRLF",
            ));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| incomplete("an aws-chunked line is not UTF-8"))
    }

    /// Starts the next chunk: reads its size line. Returns false at the final chunk
    /// (after the trailers and every check).
    fn next_chunk(&mut self) -> io::Result<bool> {
        let line = self.read_line()?;
        let (size, signature) = match line.split_once(';') {
            Some((size, ext)) => {
                let sig = ext.strip_prefix("chunk-signature=").ok_or_else(|| {
                    incomplete("an aws-chunked chunk extension is not chunk-signature")
                })?;
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(sig, &mut bytes)
                    .map_err(|_| incomplete("a chunk-signature is not 64 hex digits"))?;
                (size, Some(bytes))
            }
            None => (line.as_str(), None),
        };
        let size = u64::from_str_radix(size, 16)
            .ok()
            .filter(|s| *s <= MAX_CHUNK && !size.is_empty() && size.len() <= 16)
            .ok_or_else(|| incomplete("an aws-chunked chunk size is not a hex number"))?;
        let Some(chunked) = self.chunked.as_mut() else {
            return Err(incomplete("not an aws-chunked body"));
        };
        match (&chunked.chain, signature) {
            (Some(_), None) => {
                return Err(fail(GatewayError::InvalidSignature(
                    "an aws-chunked chunk of a signed stream lacks its chunk-signature".into(),
                )))
            }
            (None, Some(_)) => {
                return Err(incomplete(
                    "an aws-chunked chunk of an unsigned stream carries a signature",
                ))
            }
            _ => {}
        }
        chunked.left = size;
        chunked.signature = signature;
        chunked.hash = Sha256::new();
        chunked.in_chunk = true;
        if size > 0 {
            return Ok(true);
        }
        self.end_chunk()?;
        self.read_trailers()?;
        Ok(false)
    }

    /// Verifies the signature of the chunk whose data has just been read.
    fn end_chunk(&mut self) -> io::Result<()> {
        let Some(chunked) = self.chunked.as_mut() else {
            return Ok(());
        };
        chunked.in_chunk = false;
        if let (Some(chain), Some(signature)) = (chunked.chain.as_mut(), chunked.signature) {
            let hash: [u8; 32] = std::mem::take(&mut chunked.hash).finalize().into();
            chain.verify_chunk(&hash, &signature).map_err(fail)?;
        }
        Ok(())
    }

    /// After the final (empty) chunk: the trailing headers when the stream has them,
    /// then the empty line that ends the body.
    fn read_trailers(&mut self) -> io::Result<()> {
        let trailer = self.chunked.as_ref().is_some_and(|c| c.trailer);
        let mut canonical = String::new();
        let mut trailer_signature = None;
        let mut count = 0;
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            count += 1;
            if !trailer || count > MAX_TRAILERS {
                return Err(incomplete(
                    "the aws-chunked body has unexpected trailing data",
                ));
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| incomplete("an aws-chunked trailer is not name:value"))?;
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            if name == "x-amz-trailer-signature" {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(value, &mut bytes)
                    .map_err(|_| incomplete("the trailer signature is not 64 hex digits"))?;
                trailer_signature = Some(bytes);
                continue;
            }
            canonical.push_str(&name);
            canonical.push(':');
            canonical.push_str(value);
            canonical.push('\n');
            if let Some((claim, _)) = self.checksum.as_mut() {
                if name == claim.algorithm.header() {
                    claim.value = Some(value.to_owned());
                }
            }
        }
        if let Some(chain) = self.chunked.as_mut().and_then(|c| c.chain.as_mut()) {
            if trailer {
                let signature = trailer_signature.ok_or_else(|| {
                    fail(GatewayError::InvalidSignature(
                        "the signed aws-chunked trailer lacks x-amz-trailer-signature".into(),
                    ))
                })?;
                let hash: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
                chain.verify_trailer(&hash, &signature).map_err(fail)?;
            }
        }
        Ok(())
    }

    /// The body has ended: every whole-body check.
    fn finish(&mut self) -> io::Result<()> {
        self.finished = true;
        if let Some((expected, hasher)) = self.auth_sha256.take() {
            let actual: [u8; 32] = hasher.finalize().into();
            if actual != expected {
                return Err(fail(GatewayError::ContentSha256Mismatch(
                    "The provided 'x-amz-content-sha256' header does not match what was \
                     computed."
                        .into(),
                )));
            }
        }
        if let Some(declared) = self.decoded_len {
            if declared != self.read {
                return Err(incomplete(&format!(
                    "x-amz-decoded-content-length says {declared} bytes; the body decodes to {}",
                    self.read
                )));
            }
        }
        if let Some((claim, running)) = self.checksum.take() {
            let actual = running.finish();
            let Some(expected) = claim.value else {
                return Err(fail(GatewayError::InvalidRequest(format!(
                    "the {} checksum was announced but never sent",
                    claim.algorithm.name()
                ))));
            };
            if expected != actual {
                return Err(fail(GatewayError::BadDigest(format!(
                    "The {} you specified did not match the calculated checksum.",
                    claim.algorithm.name()
                ))));
            }
            if let Some(slot) = &self.report {
                slot.set(claim.algorithm.header(), &actual);
            }
            self.verified_checksum = Some((claim.algorithm, actual));
        }
        Ok(())
    }

    fn account(&mut self, data: &[u8]) {
        self.read += data.len() as u64;
        if let Some((_, hasher)) = self.auth_sha256.as_mut() {
            hasher.update(data);
        }
        if let Some((_, running)) = self.checksum.as_mut() {
            running.update(data);
        }
    }
}

impl<R: BufRead> Read for UploadBody<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished || buf.is_empty() {
            return Ok(0);
        }
        let Some(chunked) = self.chunked.as_ref() else {
            let n = self.src.read(buf)?;
            if n == 0 {
                self.finish()?;
                return Ok(0);
            }
            self.account(&buf[..n]);
            return Ok(n);
        };
        if chunked.left == 0 {
            if chunked.in_chunk {
                let mut crlf = [0u8; 2];
                self.src
                    .read_exact(&mut crlf)
                    .map_err(|_| incomplete("the aws-chunked body ends inside a chunk"))?;
                if &crlf != b"\r\n" {
                    return Err(incomplete("an aws-chunked chunk is longer than its size"));
                }
                self.end_chunk()?;
            }
            if !self.next_chunk()? {
                self.finish()?;
                return Ok(0);
            }
        }
        let left = self.chunked.as_ref().map_or(0, |c| c.left);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.src.read(&mut buf[..want])?;
        if n == 0 {
            return Err(incomplete("the aws-chunked body ends inside a chunk"));
        }
        if let Some(chunked) = self.chunked.as_mut() {
            chunked.left -= n as u64;
            if chunked.chain.is_some() {
                chunked.hash.update(&buf[..n]);
            }
        }
        self.account(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_nvme_matches_its_check_value() {
        // CRC-64/NVME's check value (the CRC of "123456789") from the CRC catalogue.
        let mut c = Checksum::new(ChecksumAlgorithm::Crc64Nvme);
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(
            c.finish(),
            BASE64.encode(0xAE8B_1486_0A79_9888u64.to_be_bytes())
        );
        let empty = Checksum::new(ChecksumAlgorithm::Crc64Nvme).finish();
        assert_eq!(empty, "AAAAAAAAAAA=");
    }

    fn read_all(body: &mut UploadBody<&[u8]>) -> Result<Vec<u8>, GatewayError> {
        let mut out = Vec::new();
        body.read_to_end(&mut out)
            .map_err(UploadBody::<&[u8]>::error_of)?;
        Ok(out)
    }

    #[test]
    fn plain_bodies_must_hash_to_the_signed_sha256() {
        let good: [u8; 32] = Sha256::digest(b"hello").into();
        let mut body = UploadBody::new(&b"hello"[..], BodyAuth::Sha256(good), None, None);
        assert_eq!(read_all(&mut body).unwrap(), b"hello");
        let mut body = UploadBody::new(&b"hellO"[..], BodyAuth::Sha256(good), None, None);
        assert_eq!(
            read_all(&mut body).unwrap_err().s3_code(),
            "XAmzContentSHA256Mismatch"
        );
    }

    #[test]
    fn unsigned_trailer_streams_decode_and_check_the_checksum() {
        let crc = BASE64.encode(crc32fast::hash(b"hello world").to_be_bytes());
        let stream =
            format!("5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n");
        let claim = || ChecksumClaim {
            algorithm: ChecksumAlgorithm::Crc32,
            value: None,
        };
        let auth = || BodyAuth::Chunked {
            chain: None,
            trailer: true,
        };
        let mut body = UploadBody::new(stream.as_bytes(), auth(), Some(11), Some(claim()));
        assert_eq!(read_all(&mut body).unwrap(), b"hello world");
        assert_eq!(body.verified_checksum().unwrap().1, crc);

        let bad = stream.replace(&crc, "AAAAAA==");
        let mut body = UploadBody::new(bad.as_bytes(), auth(), Some(11), Some(claim()));
        assert_eq!(read_all(&mut body).unwrap_err().s3_code(), "BadDigest");

        let mut body = UploadBody::new(stream.as_bytes(), auth(), Some(12), Some(claim()));
        assert_eq!(read_all(&mut body).unwrap_err().s3_code(), "IncompleteBody");

        for cut in [3, 9, 20, stream.len() - 2] {
            let mut body =
                UploadBody::new(&stream.as_bytes()[..cut], auth(), Some(11), Some(claim()));
            assert_eq!(
                read_all(&mut body).unwrap_err().s3_code(),
                "IncompleteBody",
                "cut at {cut}"
            );
        }
        for garbage in [
            "zz\r\n",
            "5\r\nhelloXX",
            "5;chunk-signature=00\r\nhello\r\n",
        ] {
            let mut body = UploadBody::new(garbage.as_bytes(), auth(), None, None);
            assert!(read_all(&mut body).is_err(), "{garbage:?}");
        }
    }
}
