//! Signed trail digests: every kind of tampering — an edited, deleted, inserted or
//! reordered record, even with the hash chain and `trail.head` recomputed so that the
//! chain alone verifies; a truncated tail; a deleted, altered, replaced or foreign
//! digest — is named by `validate_digests`.

use std::fs;
use std::path::{Path, PathBuf};

use crypto_core::trail::digest::{validate_digests, write_digest, DigestSigner, DIGEST_DIR};
use crypto_core::trail::{ApiCall, Trail, TrailError, TrailProblem, HEAD_FILE, LOG_FILE};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    trail: Trail,
    signer: DigestSigner,
}

fn call(n: usize) -> ApiCall {
    ApiCall {
        event_time: OffsetDateTime::from_unix_timestamp(1_800_000_000 + n as i64).unwrap(),
        event_name: if n % 2 == 0 {
            "Decrypt"
        } else {
            "GenerateDataKey"
        }
        .into(),
        principal: "arn:aws:iam::000000000000:user/alice".into(),
        request_parameters: serde_json::json!({ "keyId": format!("key-{n}") }),
        response_elements: None,
        error_code: None,
        error_message: None,
        read_only: true,
        resources: Vec::new(),
    }
}

/// A trail of 9 records under three digests (4, 3 and 2 records).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trail");
    let trail = Trail::open(&path, "local", "000000000000").unwrap();
    let signer = DigestSigner::open_or_create(&path).unwrap();
    let mut n = 0;
    for batch in [4, 3, 2] {
        for _ in 0..batch {
            n += 1;
            trail.append(&call(n)).unwrap();
        }
        write_digest(&path, &signer).unwrap();
    }
    Fixture {
        _dir: dir,
        path,
        trail,
        signer,
    }
}

fn lines(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join(LOG_FILE))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// H(n) per docs/FORMAT.md: SHA-256 of the line with its own hash zeroed.
fn record_hash(line: &str) -> String {
    let at = line.len() - 3 - 64;
    let zeroed = format!("{}{}{}", &line[..at], "0".repeat(64), &line[at + 64..]);
    hex::encode(Sha256::digest(zeroed.as_bytes()))
}

fn set_json_field(line: &str, name: &str, value: &str) -> String {
    let key = format!("\"{name}\":");
    let at = line.rfind(&key).unwrap() + key.len();
    let end = if line[at..].starts_with('"') {
        at + 1 + line[at + 1..].find('"').unwrap() + 1
    } else {
        at + line[at..].find([',', '}']).unwrap()
    };
    format!("{}{value}{}", &line[..at], &line[end..])
}

/// Rewrites the whole file from `lines` as a forger would: renumbers, re-links and
/// re-hashes every record and rewrites `trail.head`, so the hash chain verifies.
fn forge(dir: &Path, lines: &[String]) {
    let mut previous = "0".repeat(64);
    let mut out = String::new();
    let mut last = (0usize, previous.clone());
    for (i, line) in lines.iter().enumerate() {
        let line = set_json_field(line, "sequence", &(i + 1).to_string());
        let line = set_json_field(&line, "previousHash", &format!("\"{previous}\""));
        let hash = record_hash(&line);
        let at = line.len() - 3 - 64;
        let line = format!("{}{hash}{}", &line[..at], &line[at + 64..]);
        out.push_str(&line);
        out.push('\n');
        previous = hash.clone();
        last = (i + 1, hash);
    }
    fs::write(dir.join(LOG_FILE), out).unwrap();
    fs::write(
        dir.join(HEAD_FILE),
        format!("atrest-trail-head 1 {:020} {}\n", last.0, last.1),
    )
    .unwrap();
}

fn broken_at(err: TrailError) -> (Option<u64>, TrailProblem) {
    match err {
        TrailError::Broken { line, problem, .. } => (line, problem),
        other => panic!("expected a broken trail, got {other}"),
    }
}

#[test]
fn an_untouched_trail_validates_with_its_digests() {
    let f = fixture();
    let report = validate_digests(&f.path, Some(&f.signer.public_key_hex())).unwrap();
    assert_eq!(report.digests, 3);
    assert_eq!(report.records, 9);
    // An empty period still gets its digest.
    write_digest(&f.path, &f.signer).unwrap();
    let report = validate_digests(&f.path, None).unwrap();
    assert_eq!((report.digests, report.records), (4, 9));
    f.trail.append(&call(10)).unwrap();
    // Records after the last digest are the hash chain's alone.
    assert_eq!(validate_digests(&f.path, None).unwrap().records, 9);
}

#[test]
fn rewrites_that_fool_the_hash_chain_are_named_by_record() {
    type Edit = fn(&mut Vec<String>);
    let edits: [(&str, Edit, u64); 4] = [
        ("edited", |l| l[4] = l[4].replace("key-5", "key-X"), 5),
        (
            "deleted",
            |l| {
                l.remove(2);
            },
            3,
        ),
        (
            "inserted",
            |l| {
                let forged = l[1].replace("key-2", "key-Z");
                l.insert(1, forged);
            },
            2,
        ),
        ("reordered", |l| l.swap(5, 6), 6),
    ];
    for (what, edit, line) in edits {
        let f = fixture();
        let mut all = lines(&f.path);
        edit(&mut all);
        forge(&f.path, &all);
        f.trail
            .validate()
            .unwrap_or_else(|e| panic!("the forged chain ({what}) should verify alone: {e}"));
        let (at, problem) = broken_at(validate_digests(&f.path, None).unwrap_err());
        assert_eq!(at, Some(line), "{what}: {problem}");
        assert!(
            matches!(problem, TrailProblem::DigestedRecordDiffers { .. }),
            "{what}: {problem}"
        );
    }
}

#[test]
fn a_truncated_tail_is_found_even_with_the_head_rewritten() {
    let f = fixture();
    let all = lines(&f.path);
    forge(&f.path, &all[..7]);
    f.trail.validate().unwrap();
    let (at, problem) = broken_at(validate_digests(&f.path, None).unwrap_err());
    assert_eq!(at, Some(8));
    assert!(
        matches!(
            problem,
            TrailProblem::DigestedTailTruncated {
                records: 2,
                last: 9,
                ..
            }
        ),
        "{problem}"
    );
}

#[test]
fn deleted_altered_replaced_and_foreign_digests_are_found() {
    let digest = |f: &Fixture, n: u64| f.path.join(DIGEST_DIR).join(format!("digest-{n:020}.json"));

    let f = fixture();
    fs::remove_file(digest(&f, 1)).unwrap();
    match validate_digests(&f.path, None).unwrap_err() {
        TrailError::Broken {
            path,
            problem: TrailProblem::DigestMissing,
            ..
        } => assert_eq!(path, digest(&f, 1)),
        other => panic!("expected a missing digest, got {other}"),
    }

    let f = fixture();
    let text = fs::read_to_string(digest(&f, 0)).unwrap();
    fs::write(
        digest(&f, 0),
        text.replace("\"firstRecord\":1", "\"firstRecord\":2"),
    )
    .unwrap();
    let (_, problem) = broken_at(validate_digests(&f.path, None).unwrap_err());
    assert_eq!(problem, TrailProblem::SignatureInvalid);

    // The last digest re-made with another key (the forger's) after rewriting.
    let f = fixture();
    fs::remove_file(digest(&f, 2)).unwrap();
    let other = tempfile::tempdir().unwrap();
    let forger = DigestSigner::open_or_create(other.path()).unwrap();
    write_digest(&f.path, &forger).unwrap();
    let (_, problem) = broken_at(validate_digests(&f.path, None).unwrap_err());
    assert!(
        matches!(problem, TrailProblem::DigestKeyMismatch { .. }),
        "{problem}"
    );

    // Every digest re-made with the forger's key: only the pinned key catches it.
    let f = fixture();
    fs::remove_dir_all(f.path.join(DIGEST_DIR)).unwrap();
    write_digest(&f.path, &forger).unwrap();
    validate_digests(&f.path, None).unwrap();
    let err = validate_digests(&f.path, Some(&f.signer.public_key_hex())).unwrap_err();
    let (_, problem) = broken_at(err);
    assert!(
        matches!(problem, TrailProblem::DigestKeyMismatch { .. }),
        "{problem}"
    );
}

#[test]
fn the_signing_key_persists_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let again = DigestSigner::open_or_create(&f.path).unwrap();
    assert_eq!(again.public_key_hex(), f.signer.public_key_hex());
    let mode = fs::metadata(f.path.join("digest.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!format!("{again:?}").contains(
        fs::read_to_string(f.path.join("digest.key"))
            .unwrap()
            .trim()
    ));
    fs::write(f.path.join("digest.key"), "not hex\n").unwrap();
    assert!(matches!(
        DigestSigner::open_or_create(&f.path),
        Err(TrailError::Broken {
            problem: TrailProblem::BadSigningKey,
            ..
        })
    ));
}
