//! Object-file headers (objstore): decoding never panics, and a header that decodes is
//! the one canonical encoding of its value. Seed with the first bytes of any object
//! file under `<home>/s3/buckets/*/objects/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use objstore::format::{ObjectHeader, MAGIC, MAX_HEADER_LEN};
use sha2::{Digest, Sha256};

/// Where the header-length field sits (after magic, version and cipher).
const LEN_AT: usize = 12;

fn check(bytes: &[u8]) {
    if let Ok(header) = ObjectHeader::decode(bytes) {
        assert_eq!(header.encode().expect("a decoded header re-encodes"), bytes);
    }
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    check(data);
    // The same bytes with the right magic, length and checksum, so mutations reach the
    // field checks instead of stopping at the SHA-256.
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(&[0u8; 32]);
    if bytes.len() < LEN_AT + 4 || bytes.len() > MAX_HEADER_LEN as usize {
        return;
    }
    let total = bytes.len() as u32;
    bytes[LEN_AT..LEN_AT + 4].copy_from_slice(&total.to_le_bytes());
    let body = bytes.len() - 32;
    let checksum = Sha256::digest(&bytes[..body]);
    bytes[body..].copy_from_slice(&checksum);
    check(&bytes);
});
