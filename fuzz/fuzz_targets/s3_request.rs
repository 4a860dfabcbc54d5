//! What an S3 client controls before any object is touched: the route of a request
//! (method, path, query), an aws-chunked or plain body through every check of
//! `UploadBody` (framing, chunk and trailer signatures, decoded length, checksums),
//! and the XML bodies of configuration requests. Nothing panics; a body that passes
//! its checks decodes to exactly the length it declared.
//!
//! Input: one mode byte, then the bytes of the mode. Seed with the body of an
//! `aws s3 cp` upload (mode 0: unsigned chunks with a CRC32 trailer).
#![no_main]

use std::io::Read;

use gateway::s3::upload::{BodyAuth, ChecksumAlgorithm, ChecksumClaim, UploadBody};
use gateway::s3::xml::XmlDocument;
use gateway::s3::S3Request;
use gateway::sigv4::{ChunkChain, Signer, SigningCredentials};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

fn drain(mut body: UploadBody<&[u8]>, declared: Option<u64>) {
    let mut out = Vec::new();
    if body.read_to_end(&mut out).is_ok() {
        if let Some(declared) = declared {
            assert_eq!(
                out.len() as u64,
                declared,
                "a verified body has its declared length"
            );
        }
    }
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The decoded length the body claims: its first two bytes (little-endian).
    let declared = rest
        .get(..2)
        .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])));
    let body = rest.get(2..).unwrap_or_default();
    match mode % 6 {
        0 => drain(
            UploadBody::new(
                body,
                BodyAuth::Chunked {
                    chain: None,
                    trailer: true,
                },
                declared,
                Some(ChecksumClaim {
                    algorithm: ChecksumAlgorithm::Crc32,
                    value: None,
                }),
            ),
            declared,
        ),
        1 => {
            let credentials = SigningCredentials {
                access_key_id: "AKIAFUZZ".into(),
                secret_access_key: Zeroizing::new("fuzz".into()),
                session_token: None,
            };
            let signer = Signer::new(
                &credentials,
                "us-east-1",
                "s3",
                time::OffsetDateTime::UNIX_EPOCH,
            );
            let Ok(chain) = ChunkChain::for_client(&signer, &"0".repeat(64)) else {
                return;
            };
            drain(
                UploadBody::new(
                    body,
                    BodyAuth::Chunked {
                        chain: Some(chain),
                        trailer: mode & 0x40 != 0,
                    },
                    declared,
                    None,
                ),
                declared,
            );
        }
        2 => drain(
            UploadBody::new(
                body,
                BodyAuth::Sha256([0u8; 32]),
                None,
                Some(ChecksumClaim {
                    algorithm: ChecksumAlgorithm::Sha1,
                    value: Some(
                        String::from_utf8_lossy(rest.get(..2).unwrap_or_default()).into_owned(),
                    ),
                }),
            ),
            None,
        ),
        3 => {
            for root in [
                "ServerSideEncryptionConfiguration",
                "CreateBucketConfiguration",
                "AccessControlPolicy",
                "CompleteMultipartUpload",
                "Delete",
            ] {
                if let Ok(doc) = XmlDocument::parse(rest, root) {
                    for tag in [
                        "SSEAlgorithm",
                        "KMSMasterKeyID",
                        "LocationConstraint",
                        "URI",
                        "Permission",
                        "PartNumber",
                        "ETag",
                        "Key",
                    ] {
                        let _ = doc.get(tag);
                        let _ = doc.all(tag);
                    }
                }
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let (path, query) = text.split_once('?').unwrap_or((&text, ""));
            for method in [
                http::Method::GET,
                http::Method::PUT,
                http::Method::HEAD,
                http::Method::DELETE,
                http::Method::POST,
            ] {
                if let Ok(request) = S3Request::parse(&method, path, query) {
                    assert!(
                        !request.bucket.contains('/'),
                        "a bucket name never holds '/'"
                    );
                }
            }
        }
    }
});
