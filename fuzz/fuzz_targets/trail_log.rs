//! The audit trail's files: whatever `trail.jsonl` holds, `validate`, `lookup` and
//! `append` never panic, and a trail that validates takes one more record and still
//! validates with it (an interrupted final line is cut, never chained onto).
//!
//! The first input byte picks the mode: bit 0 re-chains every line (each
//! `previousHash` set to the hash of the line before, each `recordHash` recomputed as
//! docs/FORMAT.md says), so that mutations reach the field and sequence checks
//! instead of stopping at the hashes; bit 1 writes a `trail.head` that acknowledges
//! the last line. Seeds: real trails (`scripts/fuzz.sh`).
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use atrest_fuzz::scratch_dir;
use crypto_core::trail::{ApiCall, LookupFilter, Trail, HEAD_FILE, LOG_FILE};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const PREVIOUS_KEY: &[u8] = b"\"previousHash\":\"";
const RECORD_KEY: &[u8] = b"\"recordHash\":\"";
const LINE_END: &[u8] = b"\"}}";

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let scratch = scratch_dir("trail");
        let path = scratch.path().join("trail");
        (scratch, path)
    })
    .1
}

/// Where `needle` first occurs. Candidates are found by their first byte: comparing
/// every window is one intercepted `memcmp` per byte under libFuzzer, which was a
/// seventh of this target's time.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut from = 0;
    while let Some(at) = haystack.get(from..)?.iter().position(|&b| b == first) {
        let start = from + at;
        if haystack.get(start..start + needle.len())? == needle {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

/// Rewrites the hashes of every complete line so the chain holds; returns the
/// number of complete lines and the last one's hash.
fn rechain(log: &mut [u8]) -> (u64, [u8; 32]) {
    let mut previous = [0u8; 32];
    let mut lines = 0;
    let mut start = 0;
    while let Some(len) = log[start..].iter().position(|&b| b == b'\n') {
        let line = &mut log[start..start + len];
        if let Some(at) = find(line, PREVIOUS_KEY) {
            let hex_at = at + PREVIOUS_KEY.len();
            if let Some(slot) = line.get_mut(hex_at..hex_at + 64) {
                slot.copy_from_slice(hex::encode(previous).as_bytes());
            }
        }
        let suffix = RECORD_KEY.len() + 64 + LINE_END.len();
        if line.len() >= suffix
            && line.ends_with(LINE_END)
            && line[line.len() - suffix..].starts_with(RECORD_KEY)
        {
            let hash_at = line.len() - LINE_END.len() - 64;
            line[hash_at..hash_at + 64].fill(b'0');
            previous = Sha256::digest(&*line).into();
            line[hash_at..hash_at + 64].copy_from_slice(hex::encode(previous).as_bytes());
        }
        lines += 1;
        start += len + 1;
    }
    (lines, previous)
}

fn call() -> ApiCall {
    ApiCall {
        event_time: time::OffsetDateTime::UNIX_EPOCH,
        event_name: "Decrypt".into(),
        principal: "arn:aws:iam::000000000000:root".into(),
        request_parameters: serde_json::json!({"keyId": "fuzz"}),
        response_elements: None,
        error_code: None,
        error_message: None,
        read_only: true,
        resources: Vec::new(),
    }
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = dir();
    // The directory and its files are kept across inputs; only what the previous
    // input left in them goes. The head is emptied rather than removed (an empty head
    // reads as a missing one): `Trail::open` creating it cost a directory fsync.
    fs::create_dir_all(dir).expect("trail dir");
    let mut log = rest.to_vec();
    let (lines, last_hash) = if mode & 1 != 0 {
        rechain(&mut log)
    } else {
        (0, [0; 32])
    };
    fs::write(dir.join(LOG_FILE), &log).expect("write log");
    let head = if mode & 2 != 0 {
        format!(
            "atrest-trail-head 1 {lines:020} {}\n",
            hex::encode(last_hash)
        )
    } else {
        String::new()
    };
    fs::write(dir.join(HEAD_FILE), head).expect("write head");
    let Ok(trail) = Trail::open(dir, "local", "000000000000") else {
        return;
    };
    let _ = trail.lookup(&LookupFilter::default());
    let Ok(before) = trail.validate() else {
        let _ = trail.append(&call());
        return;
    };
    trail
        .append(&call())
        .expect("a trail that validates takes another record");
    let after = trail
        .validate()
        .expect("the trail still validates after an append");
    assert_eq!(after.records, before.records + 1);
    assert_eq!(after.last_sequence, before.last_sequence + 1);
    assert!(after.notes.is_empty(), "{:?}", after.notes);
});
