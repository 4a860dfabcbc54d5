//! Volume header blocks: decoding never panics, and a block that decodes is the one
//! canonical encoding of its header. Seed with the first 4096 bytes of any volume.
#![no_main]

use blockdev::format::{VolumeHeader, HEADER_SIZE, MAGIC};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const CHECKSUM_AT: usize = HEADER_SIZE - 32;

fn check(block: &[u8]) {
    if let Ok(header) = VolumeHeader::decode(block) {
        assert_eq!(header.encode(), block);
    }
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    check(data);
    // The same bytes as the fields of a block whose magic and checksum are right, so
    // mutations reach the field checks instead of stopping at the SHA-256.
    let mut block = vec![0u8; HEADER_SIZE];
    block[..MAGIC.len()].copy_from_slice(&MAGIC);
    let fields = data.len().min(CHECKSUM_AT - MAGIC.len());
    block[MAGIC.len()..MAGIC.len() + fields].copy_from_slice(&data[..fields]);
    let checksum = Sha256::digest(&block[..CHECKSUM_AT]);
    block[CHECKSUM_AT..].copy_from_slice(&checksum);
    check(&block);
});
