//! End-to-end tests of `atrest trail ...`: many processes using one keystore at once
//! leave a complete, valid trail; hand edits of the trail are found and named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::Value;

fn atrest(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_atrest"))
        .args(args)
        .env("ATREST_HOME", home)
        .env_remove("ATREST_PRINCIPAL")
        .env_remove("ATREST_REGION")
        .env_remove("ATREST_ACCOUNT")
        .env_remove("ATREST_ROOT_KEY_FILE")
        .env_remove("ATREST_CLOCK_OFFSET")
        .output()
        .expect("run atrest")
}

fn ok(home: &Path, args: &[&str]) -> Value {
    let out = atrest(home, args);
    assert!(
        out.status.success(),
        "atrest {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// `trail validate` must fail; returns its stderr.
fn validate_fails(home: &Path) -> String {
    let out = atrest(home, &["trail", "validate"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "validate passed a tampered trail");
    assert!(out.stdout.is_empty());
    stderr
}

fn trail_file(home: &Path) -> PathBuf {
    home.join("trail/trail.jsonl")
}

fn trail_lines(home: &Path) -> Vec<String> {
    std::fs::read_to_string(trail_file(home))
        .expect("read trail")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(home: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(trail_file(home), text).expect("write trail");
}

/// What one worker process was told.
enum Outcome {
    /// GenerateDataKey was acknowledged: the key and its wrapped form.
    Generated {
        context: String,
        plaintext: Vec<u8>,
        blob: String,
    },
    /// Refused because another process had disabled the key.
    Disabled,
}

#[test]
fn concurrent_processes_lose_nothing_and_the_trail_validates() {
    const WORKERS: usize = 4;
    const CALLS_PER_WORKER: usize = 12;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().to_path_buf();
    let arn = ok(&home, &["kms", "create-key", "--alias", "alias/MyKMSKey"])["KeyMetadata"]["Arn"]
        .as_str()
        .expect("arn")
        .to_owned();

    let workers_done = AtomicBool::new(false);
    let (outcomes, toggles): (Vec<Outcome>, usize) = std::thread::scope(|scope| {
        // Toggles for as long as the workers run, so their calls overlap with both
        // states and with the keystore updates themselves.
        let toggler = scope.spawn(|| {
            let mut toggles = 0;
            while toggles == 0 || !workers_done.load(Ordering::SeqCst) {
                ok(&home, &["kms", "disable-key", "--key-id", "alias/MyKMSKey"]);
                ok(&home, &["kms", "enable-key", "--key-id", "alias/MyKMSKey"]);
                toggles += 1;
            }
            toggles
        });
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let home = &home;
                scope.spawn(move || {
                    (0..CALLS_PER_WORKER)
                        .map(|call| {
                            // Keys in sorted order: the trail prints contexts that way.
                            let context = format!("call={call},worker={worker}");
                            let out = atrest(
                                home,
                                &[
                                    "kms",
                                    "generate-data-key",
                                    "--key-id",
                                    "alias/MyKMSKey",
                                    "--encryption-context",
                                    &context,
                                ],
                            );
                            let stderr = String::from_utf8_lossy(&out.stderr);
                            if out.status.success() {
                                let answer: Value =
                                    serde_json::from_slice(&out.stdout).expect("JSON");
                                Outcome::Generated {
                                    context,
                                    plaintext: BASE64
                                        .decode(answer["Plaintext"].as_str().expect("Plaintext"))
                                        .expect("b64"),
                                    blob: answer["CiphertextBlob"]
                                        .as_str()
                                        .expect("blob")
                                        .to_owned(),
                                }
                            } else {
                                assert_eq!(out.status.code(), Some(254), "{stderr}");
                                assert!(
                                    stderr.trim_end().starts_with("DisabledException: "),
                                    "only DisabledException is a legitimate refusal: {stderr}"
                                );
                                Outcome::Disabled
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let outcomes = workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect();
        workers_done.store(true, Ordering::SeqCst);
        (outcomes, toggler.join().expect("toggler"))
    });

    // The keystore opens and is in the state the last toggle left.
    let described = ok(&home, &["kms", "describe-key", "--key-id", &arn]);
    assert_eq!(described["KeyMetadata"]["KeyState"], "Enabled");

    // Every acknowledged call is in the trail with its context, and every
    // acknowledged data key still unwraps to what the caller was given.
    let events: Vec<Value> = ok(
        &home,
        &["trail", "lookup", "--event-name", "GenerateDataKey"],
    )["Events"]
        .as_array()
        .expect("Events")
        .iter()
        .map(|e| serde_json::from_str(e["CloudTrailEvent"].as_str().expect("s")).expect("json"))
        .collect();
    let context_of = |event: &Value| -> String {
        let context: BTreeMap<String, String> =
            serde_json::from_value(event["requestParameters"]["encryptionContext"].clone())
                .expect("context");
        context
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let recorded: BTreeMap<String, Option<String>> = events
        .iter()
        .map(|e| (context_of(e), e["errorCode"].as_str().map(str::to_owned)))
        .collect();
    assert_eq!(
        recorded.len(),
        WORKERS * CALLS_PER_WORKER,
        "one record per call"
    );
    let mut generated = 0;
    for outcome in &outcomes {
        match outcome {
            Outcome::Generated {
                context,
                plaintext,
                blob,
            } => {
                generated += 1;
                assert_eq!(
                    recorded.get(context),
                    Some(&None),
                    "{context} not recorded as a success"
                );
                let answer = ok(
                    &home,
                    &[
                        "kms",
                        "decrypt",
                        "--ciphertext-blob",
                        blob,
                        "--encryption-context",
                        context,
                    ],
                );
                let unwrapped = BASE64
                    .decode(answer["Plaintext"].as_str().expect("Plaintext"))
                    .expect("b64");
                assert_eq!(&unwrapped, plaintext, "an acknowledged data key was lost");
            }
            Outcome::Disabled => {}
        }
    }
    assert!(generated > 0, "no worker ever got a data key");
    let refused = recorded
        .values()
        .filter(|code| code.as_deref() == Some("DisabledException"))
        .count();
    assert_eq!(generated + refused, WORKERS * CALLS_PER_WORKER);
    eprintln!("{generated} data keys generated, {refused} refused as disabled, {toggles} disable/enable pairs");
    for event_name in ["DisableKey", "EnableKey"] {
        let recorded = ok(&home, &["trail", "lookup", "--event-name", event_name])["Events"]
            .as_array()
            .expect("Events")
            .len();
        assert_eq!(
            recorded, toggles,
            "every acknowledged {event_name} is in the trail"
        );
    }

    let report = ok(&home, &["trail", "validate"]);
    assert_eq!(report["Valid"], true);
    let records = report["Records"].as_u64().expect("Records");
    assert_eq!(records as usize, trail_lines(&home).len());
    assert!(records as usize >= 1 + WORKERS * CALLS_PER_WORKER + 2 * toggles);

    // A hand edit of one record in the middle: validate fails and names it.
    let mut lines = trail_lines(&home);
    let victim = lines.len() / 2;
    let edited = lines[victim].replacen("\"readOnly\":true", "\"readOnly\":false", 1);
    let edited = if edited == lines[victim] {
        lines[victim].replacen("\"readOnly\":false", "\"readOnly\":true", 1)
    } else {
        edited
    };
    assert_ne!(edited, lines[victim]);
    lines[victim] = edited;
    write_lines(&home, &lines);
    let stderr = validate_fails(&home);
    let line = victim + 1;
    assert!(
        stderr.contains(&format!("line {line} (record {line})")) && stderr.contains("altered"),
        "validate must name the edited record {line}: {stderr}"
    );
}

#[test]
fn deleted_reordered_and_inserted_records_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    ok(home, &["kms", "create-key", "--alias", "alias/t"]);
    for _ in 0..4 {
        ok(home, &["kms", "generate-data-key", "--key-id", "alias/t"]);
    }
    let original = trail_lines(home);
    assert_eq!(original.len(), 6);

    let mut deleted = original.clone();
    deleted.remove(2);
    write_lines(home, &deleted);
    let stderr = validate_fails(home);
    assert!(
        stderr.contains("line 3 (record 4)") && stderr.contains("record 3 is missing"),
        "{stderr}"
    );

    let mut reordered = original.clone();
    reordered.swap(3, 4);
    write_lines(home, &reordered);
    let stderr = validate_fails(home);
    assert!(stderr.contains("line 4 (record 5)"), "{stderr}");

    let mut inserted = original.clone();
    inserted.insert(5, original[1].clone());
    write_lines(home, &inserted);
    let stderr = validate_fails(home);
    assert!(stderr.contains("line 6 (record 2)"), "{stderr}");

    let mut cut = original.clone();
    cut.pop();
    write_lines(home, &cut);
    let stderr = validate_fails(home);
    assert!(stderr.contains("removed from the end"), "{stderr}");
    // A key-service call refuses to extend a trail with its end cut off.
    let out = atrest(home, &["kms", "describe-key", "--key-id", "alias/t"]);
    assert_eq!(out.status.code(), Some(254));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KMSInternalException"));

    write_lines(home, &original);
    assert_eq!(ok(home, &["trail", "validate"])["Records"], 6);
}

#[test]
fn a_torn_final_record_is_reported_and_then_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    ok(home, &["kms", "create-key"]);
    let lines = trail_lines(home);
    // What a crash in the middle of writing a record leaves behind.
    let mut text = std::fs::read(trail_file(home)).expect("read");
    text.extend_from_slice(&lines[0].as_bytes()[..50]);
    std::fs::write(trail_file(home), text).expect("write");

    let report = ok(home, &["trail", "validate"]);
    assert_eq!(report["Valid"], true);
    assert_eq!(report["Records"], 1);
    assert!(
        report["Notes"][0]
            .as_str()
            .is_some_and(|n| n.contains("line 2: incomplete final record")),
        "{report}"
    );
    ok(home, &["kms", "list-keys"]);
    let report = ok(home, &["trail", "validate"]);
    assert_eq!(report["Records"], 2);
    assert_eq!(report["Notes"], serde_json::json!([]));
    assert!(std::fs::read_to_string(trail_file(home))
        .expect("read")
        .ends_with("}\n"));
}

#[test]
fn trail_commands_refuse_a_home_without_a_trail() {
    let dir = tempfile::tempdir().expect("tempdir");
    for sub in ["validate", "lookup"] {
        let out = atrest(dir.path(), &["trail", sub]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no audit trail"), "{stderr}");
    }
    let out = atrest(
        dir.path(),
        &["trail", "lookup", "--start-time", "last tuesday"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
}

#[test]
fn an_anchor_from_an_earlier_validate_catches_a_rewritten_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    ok(home, &["kms", "create-key", "--alias", "alias/a"]);
    ok(home, &["kms", "generate-data-key", "--key-id", "alias/a"]);
    let report = ok(home, &["trail", "validate"]);
    let anchor = format!(
        "{}:{}",
        report["LastSequence"],
        report["LastHash"].as_str().expect("LastHash")
    );
    ok(home, &["kms", "generate-data-key", "--key-id", "alias/a"]);
    assert_eq!(
        ok(home, &["trail", "validate", "--anchor", &anchor])["Valid"],
        true
    );

    // Someone with write access replaces the whole history with a consistent one.
    std::fs::remove_dir_all(home.join("trail")).expect("rm trail");
    ok(home, &["kms", "list-keys"]);
    ok(home, &["kms", "list-keys"]);
    ok(home, &["kms", "list-keys"]);
    assert_eq!(ok(home, &["trail", "validate"])["Valid"], true);
    let stderr = {
        let out = atrest(home, &["trail", "validate", "--anchor", &anchor]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(
        stderr.contains("line 3 (record 3)") && stderr.contains("anchored"),
        "{stderr}"
    );
    let out = atrest(home, &["trail", "validate", "--anchor", "3:nothex"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed anchor is a usage error"
    );
}

#[test]
fn lookup_pages_with_next_token_like_cloudtrail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    ok(home, &["kms", "create-key", "--alias", "alias/paged"]);
    for _ in 0..5 {
        ok(
            home,
            &[
                "kms",
                "generate-data-key",
                "--key-id",
                "alias/paged",
                "--key-spec",
                "AES_256",
            ],
        );
    }
    let mut args: Vec<String> = [
        "trail",
        "lookup",
        "--event-name",
        "GenerateDataKey",
        "--max-results",
        "2",
    ]
    .map(String::from)
    .to_vec();
    let mut sequences = Vec::new();
    loop {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let page = ok(home, &argv);
        let events = page["Events"].as_array().expect("Events");
        assert!(events.len() <= 2, "{page}");
        for event in events {
            let record: Value =
                serde_json::from_str(event["CloudTrailEvent"].as_str().expect("record"))
                    .expect("JSON");
            sequences.push(
                record["atrestChain"]["sequence"]
                    .as_u64()
                    .expect("sequence"),
            );
        }
        let Some(token) = page["NextToken"].as_str() else {
            break;
        };
        args.truncate(6);
        args.extend(["--next-token".to_owned(), token.to_owned()]);
    }
    assert_eq!(sequences.len(), 5, "{sequences:?}");
    assert!(sequences.windows(2).all(|w| w[0] > w[1]), "{sequences:?}");

    let out = atrest(home, &["trail", "lookup", "--next-token", "yesterday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NextToken"));
}
