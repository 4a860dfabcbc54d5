//! Transmission input: a request header and the export it is checked against. Parsing
//! and validation never panic, and an accepted request lies inside the export.
#![no_main]

use blockdev::nbd::proto::{Command, RequestHeader, SessionLimits, REQUEST_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let Some(head) = data.get(..REQUEST_HEADER_LEN) else {
        return;
    };
    let mut bytes = [0u8; REQUEST_HEADER_LEN];
    bytes.copy_from_slice(head);
    let Ok(header) = RequestHeader::parse(&bytes) else {
        return;
    };
    assert_eq!(header.encode(), bytes);
    let rest = &data[REQUEST_HEADER_LEN..];
    let size = rest.get(..8).map_or(1 << 30, |b| {
        u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
    });
    let switches = rest.get(8).copied().unwrap_or(0);
    let limits = SessionLimits {
        size,
        read_only: switches & 1 != 0,
        structured: switches & 2 != 0,
        block_status: switches & 4 != 0,
    };
    let range = match header.validate(&limits) {
        Ok(
            Command::Read { offset, length }
            | Command::Write { offset, length, .. }
            | Command::Trim { offset, length, .. }
            | Command::Cache { offset, length }
            | Command::WriteZeroes { offset, length, .. }
            | Command::BlockStatus { offset, length, .. },
        ) => Some((offset, length)),
        Ok(Command::Disconnect | Command::Flush) | Err(_) => None,
    };
    if let Some((offset, length)) = range {
        assert!(length > 0);
        assert!(offset
            .checked_add(u64::from(length))
            .is_some_and(|end| end <= size));
    }
});
