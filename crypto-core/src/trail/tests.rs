use super::*;
use std::collections::BTreeSet;
use std::io::Write;

use serde_json::json;

const KEY_A: &str = "arn:aws:kms:local:000000000000:key/aaaaaaaa-0000-4000-8000-000000000001";
const KEY_B: &str = "arn:aws:kms:local:000000000000:key/bbbbbbbb-0000-4000-8000-000000000002";

fn call(name: &str, key_id: &str, resource: &str, minute: u8) -> ApiCall {
    ApiCall {
        event_time: time::macros::datetime!(2026-11-28 10:00 UTC)
            + time::Duration::minutes(i64::from(minute)),
        event_name: name.into(),
        principal: "arn:aws:iam::000000000000:user/alice".into(),
        request_parameters: json!({"keyId": key_id, "encryptionContext": {"app": "test"}}),
        response_elements: None,
        error_code: None,
        error_message: None,
        read_only: true,
        resources: vec![resource.into()],
    }
}

/// A trail with records 1..=n (GenerateDataKey on KEY_A, minute = sequence).
fn trail_with(n: u8) -> (tempfile::TempDir, Trail) {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = Trail::open(dir.path(), "local", "000000000000").expect("open");
    for i in 1..=n {
        trail
            .append(&call("GenerateDataKey", KEY_A, KEY_A, i))
            .expect("append");
    }
    (dir, trail)
}

fn lines(trail: &Trail) -> Vec<String> {
    std::fs::read_to_string(trail.log_path())
        .expect("read trail")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn rewrite(trail: &Trail, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(trail.log_path(), text).expect("rewrite trail");
}

fn broken_at(trail: &Trail) -> (Option<u64>, Option<u64>, TrailProblem) {
    match trail.validate() {
        Err(TrailError::Broken {
            line,
            sequence,
            problem,
            ..
        }) => (line, sequence, problem),
        other => panic!("expected a broken trail, got {other:?}"),
    }
}

#[test]
fn appended_records_validate_and_chain() {
    let (_dir, trail) = trail_with(5);
    let report = trail.validate().expect("valid");
    assert_eq!((report.records, report.last_sequence), (5, 5));
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    let records = lines(&trail);
    let last: serde_json::Value = serde_json::from_str(&records[4]).expect("json");
    assert_eq!(last["atrestChain"]["recordHash"], report.last_hash.as_str());
    let first: serde_json::Value = serde_json::from_str(&records[0]).expect("json");
    assert_eq!(first["atrestChain"]["previousHash"], "0".repeat(64));
}

#[test]
fn an_edited_record_is_named() {
    let (_dir, trail) = trail_with(5);
    let mut records = lines(&trail);
    records[2] = records[2].replace("GenerateDataKey", "Encrypt");
    rewrite(&trail, &records);
    let (line, sequence, problem) = broken_at(&trail);
    assert_eq!((line, sequence), (Some(3), Some(3)));
    assert_eq!(problem, TrailProblem::HashMismatch);
}

#[test]
fn an_edited_and_rehashed_record_breaks_the_next_link() {
    let (_dir, trail) = trail_with(5);
    let mut records = lines(&trail);
    let edited = records[1].replace("\"app\":\"test\"", "\"app\":\"evil\"");
    let mut bytes = edited.into_bytes();
    let hash = hex::encode(record::hash_of_line(&bytes));
    let at = bytes.len() - 3 - 64;
    bytes[at..at + 64].copy_from_slice(hash.as_bytes());
    records[1] = String::from_utf8(bytes).expect("utf-8");
    rewrite(&trail, &records);
    let (line, sequence, problem) = broken_at(&trail);
    assert_eq!((line, sequence), (Some(3), Some(3)));
    assert_eq!(problem, TrailProblem::ChainMismatch { previous: 2 });
}

#[test]
fn deleted_reordered_and_inserted_records_are_found() {
    let (_dir, trail) = trail_with(5);
    let original = lines(&trail);

    let mut deleted = original.clone();
    deleted.remove(1);
    rewrite(&trail, &deleted);
    let (line, sequence, problem) = broken_at(&trail);
    assert_eq!((line, sequence), (Some(2), Some(3)));
    assert_eq!(
        problem,
        TrailProblem::SequenceGap {
            expected: 2,
            found: 3
        }
    );

    let mut swapped = original.clone();
    swapped.swap(2, 3);
    rewrite(&trail, &swapped);
    let (line, _, problem) = broken_at(&trail);
    assert_eq!(line, Some(3));
    assert_eq!(
        problem,
        TrailProblem::SequenceGap {
            expected: 3,
            found: 4
        }
    );

    let mut duplicated = original.clone();
    duplicated.insert(2, original[1].clone());
    rewrite(&trail, &duplicated);
    let (line, sequence, problem) = broken_at(&trail);
    assert_eq!((line, sequence), (Some(3), Some(2)));
    assert_eq!(problem, TrailProblem::OutOfOrder { expected: 3 });

    let mut garbage = original.clone();
    garbage.insert(4, "{\"eventName\":\"Decrypt\"}".into());
    rewrite(&trail, &garbage);
    let (line, _, problem) = broken_at(&trail);
    assert_eq!(line, Some(5));
    assert_eq!(problem, TrailProblem::NoChain);

    rewrite(&trail, &original);
    assert_eq!(trail.validate().expect("restored").records, 5);
}

#[test]
fn an_anchor_catches_a_fully_rehashed_rewrite() {
    let (dir, trail) = trail_with(3);
    let report = trail.validate().expect("valid");
    let anchor: Anchor = format!("{}:{}", report.last_sequence, report.last_hash)
        .parse()
        .expect("anchor");
    trail
        .append(&call("Decrypt", KEY_A, KEY_A, 9))
        .expect("append");
    assert_eq!(
        trail
            .validate_against(Some(&anchor))
            .expect("valid")
            .records,
        4
    );

    // Rebuild the same history with record 2 changed: every hash is recomputed,
    // so the chain alone cannot tell.
    drop(trail);
    std::fs::remove_file(dir.path().join(LOG_FILE)).expect("rm");
    std::fs::remove_file(dir.path().join(HEAD_FILE)).expect("rm");
    let forged = Trail::open(dir.path(), "local", "000000000000").expect("open");
    for i in 1..=4 {
        let name = if i == 2 { "Encrypt" } else { "GenerateDataKey" };
        forged.append(&call(name, KEY_A, KEY_A, i)).expect("append");
    }
    assert!(forged.validate().is_ok());
    let err = forged.validate_against(Some(&anchor)).expect_err("anchor");
    assert!(
        matches!(
            err,
            TrailError::Broken {
                line: Some(3),
                sequence: Some(3),
                problem: TrailProblem::AnchorMismatch,
                ..
            }
        ),
        "{err}"
    );
    let beyond = Anchor {
        sequence: 9,
        record_hash: anchor.record_hash,
    };
    let err = forged
        .validate_against(Some(&beyond))
        .expect_err("anchor gone");
    assert!(
        matches!(
            err,
            TrailError::Broken {
                sequence: Some(9),
                problem: TrailProblem::AnchorGone { last: 4 },
                ..
            }
        ),
        "{err}"
    );
    assert!("3:xyz".parse::<Anchor>().is_err());
    assert!("0:".parse::<Anchor>().is_err());
}

#[test]
fn removing_records_from_the_end_is_found_and_blocks_appends() {
    let (_dir, trail) = trail_with(4);
    let mut records = lines(&trail);
    records.truncate(2);
    rewrite(&trail, &records);
    let (_, sequence, problem) = broken_at(&trail);
    assert_eq!(sequence, Some(4));
    assert_eq!(
        problem,
        TrailProblem::RecordsRemoved {
            last: 2,
            acknowledged: 4
        }
    );
    let err = trail
        .append(&call("Decrypt", KEY_A, KEY_A, 9))
        .expect_err("appending onto a cut trail would hide the cut");
    match err {
        TrailError::Broken {
            problem: TrailProblem::AppendRefused(why),
            ..
        } => assert_eq!(
            *why,
            TrailProblem::RecordsRemoved {
                last: 2,
                acknowledged: 4
            }
        ),
        other => panic!("expected a refused append, got {other}"),
    }
}

#[test]
fn a_torn_final_line_is_reported_then_cut_by_the_next_append() {
    let (_dir, trail) = trail_with(3);
    let records = lines(&trail);
    let mut file = OpenOptions::new()
        .append(true)
        .open(trail.log_path())
        .expect("open");
    file.write_all(&records[2].as_bytes()[..40]).expect("write");
    let report = trail
        .validate()
        .expect("a torn unacknowledged line is not tampering");
    assert_eq!(report.records, 3);
    assert!(
        report.notes[0].contains("line 4: incomplete final record"),
        "{:?}",
        report.notes
    );

    trail
        .append(&call("Decrypt", KEY_A, KEY_A, 9))
        .expect("append after a crash");
    let report = trail.validate().expect("valid");
    assert_eq!((report.records, report.last_sequence), (4, 4));
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    assert_eq!(lines(&trail).len(), 4);
}

#[test]
fn a_record_stored_without_its_head_update_is_a_note_not_an_error() {
    let (_dir, trail) = trail_with(2);
    let head_before = std::fs::read(&trail.head_path).expect("head");
    trail
        .append(&call("Decrypt", KEY_A, KEY_A, 3))
        .expect("append");
    std::fs::write(&trail.head_path, head_before).expect("roll head back");
    let report = trail.validate().expect("crash between record and head");
    assert!(
        report.notes[0].contains("record 3 was stored but trail.head was not updated"),
        "{:?}",
        report.notes
    );
    trail
        .append(&call("Decrypt", KEY_A, KEY_A, 4))
        .expect("append repairs the head");
    assert!(trail.validate().expect("valid").notes.is_empty());
}

#[test]
fn a_head_lagging_several_records_is_accepted_but_must_match_its_record() {
    let (_dir, trail) = trail_with(2);
    let head_at_2 = std::fs::read(&trail.head_path).expect("head");
    for i in 3..=5 {
        trail
            .append(&call("Decrypt", KEY_A, KEY_A, i))
            .expect("append");
    }
    std::fs::write(&trail.head_path, &head_at_2).expect("roll head back");
    let report = trail
        .validate()
        .expect("a lagging head is a crash, not tampering");
    assert!(
        report.notes[0].contains("records 3 to 5 were stored"),
        "{:?}",
        report.notes
    );
    trail
        .append(&call("Decrypt", KEY_A, KEY_A, 6))
        .expect("append");
    assert!(trail.validate().expect("valid").notes.is_empty());

    let mut records = lines(&trail);
    std::fs::write(&trail.head_path, &head_at_2).expect("roll head back");
    records[1] = records[1].replace("alice", "mallory");
    rewrite(&trail, &records);
    assert!(trail.validate().is_err());
}

#[test]
fn appends_refuse_to_chain_onto_a_damaged_last_record() {
    let (_dir, trail) = trail_with(2);
    let mut records = lines(&trail);
    records[1] = records[1].replace("alice", "mallory");
    rewrite(&trail, &records);
    let err = trail
        .append(&call("Decrypt", KEY_A, KEY_A, 3))
        .expect_err("chaining onto an altered record");
    match err {
        TrailError::Broken {
            sequence: Some(2),
            problem: TrailProblem::LastRecordUnverified(why),
            ..
        } => assert_eq!(*why, TrailProblem::HashMismatch),
        other => panic!("expected an unverified last record, got {other}"),
    }
}

#[test]
fn an_append_rechecks_its_own_last_record_once_it_is_altered_even_at_the_same_length() {
    let (_dir, trail) = trail_with(2);
    let mut records = lines(&trail);
    let before = std::fs::metadata(trail.log_path()).expect("stat").len();
    records[1] = records[1].replace("alice", "carol");
    rewrite(&trail, &records);
    assert_eq!(
        std::fs::metadata(trail.log_path()).expect("stat").len(),
        before
    );
    match trail.append(&call("Decrypt", KEY_A, KEY_A, 3)) {
        Err(TrailError::Broken {
            sequence: Some(2),
            problem: TrailProblem::LastRecordUnverified(why),
            ..
        }) => assert_eq!(*why, TrailProblem::HashMismatch),
        other => panic!("expected an unverified last record, got {other:?}"),
    }
}

#[test]
fn an_append_chains_onto_records_another_handle_wrote_since_its_own() {
    let (dir, mine) = trail_with(2);
    let other = Trail::open(dir.path(), "local", "000000000000").expect("open");
    other
        .append(&call("Encrypt", KEY_B, KEY_B, 3))
        .expect("append");
    mine.append(&call("Decrypt", KEY_A, KEY_A, 4))
        .expect("append");
    mine.validate().expect("one chain");
    let records = lines(&mine);
    assert_eq!(records.len(), 4);
    assert!(records[2].contains("\"Encrypt\""), "{}", records[2]);
    assert!(records[3].contains("\"sequence\":4"), "{}", records[3]);
}

#[test]
fn concurrent_appenders_never_lose_or_interleave_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || {
                // One Trail per thread (like separate processes) plus a shared one.
                let trail = Trail::open(&path, "local", "000000000000").expect("open");
                for i in 0..25 {
                    trail
                        .append(&call("Encrypt", &format!("t{t}-{i}"), KEY_A, 0))
                        .expect("append");
                }
            })
        })
        .collect();
    let shared =
        std::sync::Arc::new(Trail::open(dir.path(), "local", "000000000000").expect("open"));
    let shared_threads: Vec<_> = (0..2)
        .map(|t| {
            let trail = shared.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    trail
                        .append(&call("Encrypt", &format!("s{t}-{i}"), KEY_A, 0))
                        .expect("append");
                }
            })
        })
        .collect();
    for handle in threads.into_iter().chain(shared_threads) {
        handle.join().expect("appender thread");
    }
    let report = shared.validate().expect("valid");
    assert_eq!(report.records, 150);
    let ids: BTreeSet<String> = shared
        .lookup(&LookupFilter::default())
        .expect("lookup")
        .iter()
        .map(|r| {
            r.event["requestParameters"]["keyId"]
                .as_str()
                .expect("keyId")
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 150);
}

#[test]
fn every_caller_of_a_failed_batch_is_told() {
    let (_dir, trail) = trail_with(2);
    let mut records = lines(&trail);
    records[1] = records[1].replace("alice", "mallory");
    rewrite(&trail, &records);
    let trail = &trail;
    let failures: Vec<TrailError> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|i| scope.spawn(move || trail.append(&call("Decrypt", KEY_A, KEY_A, i))))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("appender").err())
            .collect()
    });
    assert_eq!(failures.len(), 6);
    for err in failures {
        assert!(
            matches!(
                err,
                TrailError::Broken {
                    sequence: Some(2),
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(
        lines(trail).len(),
        2,
        "nothing was written after the bad record"
    );
}

#[test]
fn lookup_filters_by_name_key_alias_principal_and_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = Trail::open(dir.path(), "local", "000000000000").expect("open");
    trail
        .append(&call("CreateKey", "", KEY_A, 1))
        .expect("append");
    trail
        .append(&call("GenerateDataKey", "alias/MyKMSKey", KEY_A, 2))
        .expect("append");
    let mut failed = call("Decrypt", KEY_B, KEY_B, 3);
    failed.error_code = Some("DisabledException".into());
    failed.principal = "arn:aws:iam::000000000000:user/bob".into();
    trail.append(&failed).expect("append");
    trail
        .append(&call("Decrypt", KEY_A, KEY_A, 4))
        .expect("append");

    let names = |filter: LookupFilter| -> Vec<String> {
        trail
            .lookup(&filter)
            .expect("lookup")
            .iter()
            .map(|r| r.event["eventName"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(
        names(LookupFilter::default()),
        ["Decrypt", "Decrypt", "GenerateDataKey", "CreateKey"]
    );
    let decrypts = LookupFilter {
        event_name: Some("Decrypt".into()),
        ..LookupFilter::default()
    };
    assert_eq!(names(decrypts).len(), 2);
    let by_uuid = LookupFilter {
        key_id: Some("bbbbbbbb-0000-4000-8000-000000000002".into()),
        ..LookupFilter::default()
    };
    assert_eq!(names(by_uuid), ["Decrypt"]);
    let by_alias = LookupFilter {
        key_id: Some("alias/MyKMSKey".into()),
        ..LookupFilter::default()
    };
    assert_eq!(names(by_alias), ["Decrypt", "GenerateDataKey", "CreateKey"]);
    let by_bob = LookupFilter {
        principal: Some("bob".into()),
        ..LookupFilter::default()
    };
    assert_eq!(names(by_bob), ["Decrypt"]);
    let window = LookupFilter {
        start_time: Some(time::macros::datetime!(2026-11-28 10:02 UTC)),
        end_time: Some(time::macros::datetime!(2026-11-28 10:03 UTC)),
        ..LookupFilter::default()
    };
    assert_eq!(names(window), ["Decrypt", "GenerateDataKey"]);
    let newest = LookupFilter {
        max_results: Some(1),
        ..LookupFilter::default()
    };
    assert_eq!(names(newest), ["Decrypt"]);
}

#[test]
fn lookup_by_alias_reads_escaped_json_strings_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = Trail::open(dir.path(), "local", "000000000000").expect("open");
    trail
        .append(&call("CreateKey", "", KEY_B, 1))
        .expect("append");
    trail
        .append(&call("GenerateDataKey", "alias/Escaped", KEY_B, 2))
        .expect("append");
    trail
        .append(&call("Decrypt", "alias/Plain", KEY_A, 3))
        .expect("append");
    // The same record written by another JSON encoder, which escapes `/` or spells
    // letters as `\u` escapes: the alias it names is the same string.
    let mut records = lines(&trail);
    records[1] = records[1].replace("alias/Escaped", "alias\\/Escaped");
    records[2] = records[2].replace("alias/Plain", "\\u0061lias/Pl\\u0061in");
    rewrite(&trail, &records);
    let names = |alias: &str| -> Vec<String> {
        let filter = LookupFilter {
            key_id: Some(alias.into()),
            ..LookupFilter::default()
        };
        trail
            .lookup(&filter)
            .expect("lookup")
            .iter()
            .map(|r| r.event["eventName"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(names("alias/Escaped"), ["GenerateDataKey", "CreateKey"]);
    assert_eq!(
        names("arn:aws:kms:local:000000000000:alias/Plain"),
        ["Decrypt"]
    );
    assert!(names("alias/Other").is_empty());
}

#[test]
fn paged_lookup_visits_every_match_once_newest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = Trail::open(dir.path(), "local", "000000000000").expect("open");
    for minute in 0..7 {
        let name = if minute % 3 == 0 {
            "Encrypt"
        } else {
            "Decrypt"
        };
        trail
            .append(&call(name, KEY_A, KEY_A, minute))
            .expect("append");
    }
    let mut filter = LookupFilter {
        event_name: Some("Decrypt".into()),
        max_results: Some(2),
        ..LookupFilter::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = trail.lookup_page(&filter).expect("lookup");
        pages += 1;
        assert!(page.records.len() <= 2);
        seen.extend(
            page.records
                .iter()
                .map(|r| r.event["atrestChain"]["sequence"].as_u64().expect("seq")),
        );
        match page.next_before {
            Some(before) => filter.before_sequence = Some(before),
            None => break,
        }
    }
    // Decrypts are records 2, 3, 5, 6 (minutes 1, 2, 4, 5): two full pages, no
    // empty third one.
    assert_eq!(seen, [6, 5, 3, 2]);
    assert_eq!(pages, 2);
}

#[test]
fn trail_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let trail_dir = dir.path().join("state/trail");
    let trail = Trail::open(&trail_dir, "local", "000000000000").expect("open");
    trail
        .append(&call("CreateKey", "", KEY_A, 1))
        .expect("append");
    for path in [trail.log_path(), trail.head_path.as_path()] {
        let mode = std::fs::metadata(path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let mode = std::fs::metadata(&trail_dir)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// `atrest trail validate` prints these texts; the reasons became variants and the
/// words must not change.
#[test]
fn problems_read_as_trail_validate_printed_them() {
    let cases = [
        (
            TrailProblem::SequenceGap {
                expected: 2,
                found: 3,
            },
            "record 2 is missing before this line (deleted or moved)",
        ),
        (
            TrailProblem::SequenceGap {
                expected: 2,
                found: 5,
            },
            "records 2 to 4 are missing before this line (deleted or moved)",
        ),
        (
            TrailProblem::OutOfOrder { expected: 3 },
            "record 3 was expected here: records were reordered, duplicated or inserted",
        ),
        (
            TrailProblem::ChainMismatch { previous: 2 },
            "does not chain to the record before it: record 2 was altered and rehashed, or \
             this record was forged",
        ),
        (
            TrailProblem::AnchorMismatch,
            "differs from the anchored record: the trail was rewritten from here or earlier, \
             with every hash recomputed",
        ),
        (
            TrailProblem::AppendRefused(Box::new(TrailProblem::RecordsRemoved {
                last: 2,
                acknowledged: 4,
            })),
            "refusing to append: the trail ends at record 2 but record 4 was acknowledged: \
             records were removed from the end",
        ),
        (
            TrailProblem::HeadMismatch { acknowledged: 4 },
            "record 4 differs from the one acknowledged: the trail was rewritten from there \
             or earlier",
        ),
        (
            TrailProblem::LastRecordUnverified(Box::new(TrailProblem::TailRewritten {
                acknowledged: 4,
            })),
            "last record does not verify, refusing to append: record 4 differs from the one \
             acknowledged: the end of the trail was rewritten",
        ),
        (
            TrailProblem::HeadDamaged(HeadDefect::WrongLength { len: 7 }),
            "head file is damaged (7 bytes, expected 106)",
        ),
        (
            TrailProblem::DigestedTailTruncated {
                digest: "d.json".into(),
                records: 2,
                last: 9,
            },
            "the trail ends here, but digest d.json signed 2 records up to sequence 9: the \
             tail was truncated",
        ),
    ];
    for (problem, text) in cases {
        assert_eq!(problem.to_string(), text);
    }
    let err = TrailError::Broken {
        path: "t/trail.jsonl".into(),
        line: Some(3),
        sequence: Some(4),
        problem: TrailProblem::HashMismatch,
    };
    assert_eq!(
        err.to_string(),
        "t/trail.jsonl line 3 (record 4): the record was altered: its bytes do not match its \
         recordHash"
    );
}

#[test]
fn lines_are_read_whole_across_read_buffers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lines");
    let read = |text: &[u8]| {
        std::fs::write(&path, text).expect("write");
        let mut seen = Vec::new();
        let torn = for_each_line(&path, |line| {
            seen.push(line.to_vec());
            Ok(())
        })
        .expect("read");
        (seen, torn)
    };
    // Lengths around the smallest read buffer (4 KiB) and the largest (256 KiB), so
    // that lines end at, just before and just after a buffer's end, and span several.
    let lengths = [
        0, 1, 4095, 4096, 4097, 0, 70_000, 262_143, 262_144, 300_000, 5,
    ];
    let mut text = Vec::new();
    let mut expected = Vec::new();
    for (i, &len) in lengths.iter().enumerate() {
        let line = vec![b'a' + u8::try_from(i).expect("few"); len];
        text.extend_from_slice(&line);
        text.push(b'\n');
        expected.push(line);
    }
    assert_eq!(read(&text), (expected.clone(), 0));
    text.extend_from_slice(&[b'z'; 5000]);
    assert_eq!(read(&text), (expected, 5000));
    assert_eq!(read(b""), (Vec::new(), 0));
    assert_eq!(read(b"\n\nx"), (vec![Vec::new(), Vec::new()], 1));
    let mut calls = 0;
    std::fs::write(&path, b"a\nb\nc\n").expect("write");
    let stopped = for_each_line(&path, |_| {
        calls += 1;
        Err(TrailError::Io {
            path: path.clone(),
            source: std::io::Error::other("stop"),
        })
    });
    assert!(stopped.is_err());
    assert_eq!(calls, 1);
}
