//! The TLS 1.3 record opener of NBD over TLS (`blockdev::nbd::tls::record`): any
//! bytes from a client, raw or sealed into records of any size and inner content,
//! are opened or refused, never a panic, and an opened record's plaintext lies inside
//! it and holds at most 2^14 bytes.
#![no_main]

use blockdev::nbd::check_record_opener;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| check_record_opener(data));
