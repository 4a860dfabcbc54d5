//! The common name of a client certificate's subject (NBD over TLS, `allowed_clients`):
//! any bytes as a DER `Name` never panic the reader, and a name it finds is text that
//! the input holds.
#![no_main]

use blockdev::nbd::common_name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    if let Some(name) = common_name(data) {
        let bytes = name.as_bytes();
        assert!(
            bytes.is_empty() || data.windows(bytes.len()).any(|w| w == bytes),
            "a common name that is not in the input"
        );
    }
});
