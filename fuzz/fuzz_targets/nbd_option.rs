//! Handshake input: client flags, option headers and option data never panic the
//! parser, and whatever parses re-encodes to the same header.
#![no_main]

use blockdev::nbd::proto::{parse_client_flags, parse_option, OptionHeader, OPTION_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    if let Some(flags) = data.get(..4) {
        let _ = parse_client_flags([flags[0], flags[1], flags[2], flags[3]]);
    }
    let Some(head) = data.get(..OPTION_HEADER_LEN) else {
        return;
    };
    let mut bytes = [0u8; OPTION_HEADER_LEN];
    bytes.copy_from_slice(head);
    if let Ok(header) = OptionHeader::parse(&bytes) {
        assert_eq!(header.encode(), bytes);
        let _ = parse_option(header.option, &data[OPTION_HEADER_LEN..]);
    }
    // Every option code against arbitrary data, not only those with valid magic.
    for option in 0..12 {
        let _ = parse_option(option, data);
    }
});
