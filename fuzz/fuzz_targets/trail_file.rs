//! The audit trail as found on disk, whatever someone wrote there: validate, lookup
//! and append never panic; an append either refuses or leaves a trail one record
//! longer; and an append onto a trail that validates leaves one that validates.
//! Input: first byte = length of the `trail.head` bytes, then those, then
//! `trail.jsonl`. Seed with a real trail: `printf '\x6b'; cat trail.head trail.jsonl`.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use atrest_fuzz::scratch_dir;
use crypto_core::trail::{ApiCall, LookupFilter, Trail, HEAD_FILE, LOG_FILE};
use libfuzzer_sys::fuzz_target;

/// One trail directory for every input (on tmpfs, see `scratch_dir`): both files
/// are rewritten whole by each input, so none sees what the one before left.
/// Creating and removing a directory per input was most of a short input's time.
fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| scratch_dir("trail-file")).path()
}

fn call() -> ApiCall {
    ApiCall {
        event_time: time::OffsetDateTime::UNIX_EPOCH,
        event_name: "Decrypt".into(),
        principal: "arn:aws:iam::000000000000:root".into(),
        request_parameters: serde_json::json!({"keyId": "alias/fuzz"}),
        response_elements: None,
        error_code: None,
        error_message: None,
        read_only: true,
        resources: vec!["arn:aws:kms:local:000000000000:key/fuzz".into()],
    }
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let Some((&head_len, rest)) = data.split_first() else {
        return;
    };
    let (head, log) = rest.split_at(usize::from(head_len).min(rest.len()));
    let dir = dir();
    std::fs::write(dir.join(HEAD_FILE), head).expect("write head");
    std::fs::write(dir.join(LOG_FILE), log).expect("write log");
    let trail = Trail::open(dir, "local", "000000000000").expect("open");
    let before = trail.validate();
    let filter = LookupFilter {
        key_id: Some("alias/fuzz".into()),
        max_results: Some(3),
        ..LookupFilter::default()
    };
    let _ = trail.lookup(&filter);
    if trail.append(&call()).is_ok() {
        if let Ok(before) = before {
            let after = trail
                .validate()
                .expect("an append onto a valid trail keeps it valid");
            assert_eq!(after.last_sequence, before.last_sequence + 1);
        }
    }
});
