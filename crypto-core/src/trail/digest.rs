//! Signed digests of the trail, CloudTrail style: every flush period a digest file
//! covers the bytes appended to `trail.jsonl` since the previous digest (a segment),
//! holds the SHA-256 of the segment and of each of its lines, and the signature of
//! the previous digest, and is signed with the trail's Ed25519 key.
//!
//! The hash chain inside `trail.jsonl` already finds edits, deletions, reorderings
//! and insertions; a writer who rewrites the whole chain from some record on can
//! only be caught by something outside the file. Digests are that something: a
//! rewritten record no longer matches the line hash its digest signed, a file cut
//! short no longer covers what the last digest signed, and a removed or replaced
//! digest breaks the signature chain. Their strength is the key's: pin the public key
//! (`validate_digests(.., Some(key))`) somewhere the trail's writer cannot change it.
//!
//! Files, in the trail directory: `digest.key` (the 32-byte Ed25519 seed, hex, 0600)
//! and `digests/digest-<sequence, 20 digits>.json`. Format in `docs/FORMAT.md`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::record::claimed_sequence;
use super::{TrailError, TrailProblem, LOG_FILE};

/// The signing key's file in the trail directory.
pub const KEY_FILE: &str = "digest.key";
/// The digests' directory in the trail directory.
pub const DIGEST_DIR: &str = "digests";
const FORMAT_VERSION: u32 = 1;
/// Bound on one digest file (a segment of a million records is ~70 MiB of hashes;
/// nothing legitimate comes near).
const MAX_DIGEST_LEN: u64 = 256 << 20;

/// The trail's Ed25519 signing key. Zeroized on drop; `Debug` shows the public key
/// only.
pub struct DigestSigner {
    key: SigningKey,
}

impl std::fmt::Debug for DigestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestSigner")
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

impl DigestSigner {
    /// Loads `<trail dir>/digest.key`, creating it (0600) on first use.
    pub fn open_or_create(trail_dir: &Path) -> Result<DigestSigner, TrailError> {
        let path = trail_dir.join(KEY_FILE);
        let io = |source| TrailError::Io {
            path: path.clone(),
            source,
        };
        match File::open(&path) {
            Ok(file) => {
                let mut text = Zeroizing::new(String::new());
                file.take(256).read_to_string(&mut text).map_err(io)?;
                let mut seed = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(text.trim(), &mut *seed).map_err(|_| TrailError::Broken {
                    path: path.clone(),
                    line: None,
                    sequence: None,
                    problem: TrailProblem::BadSigningKey,
                })?;
                Ok(DigestSigner {
                    key: SigningKey::from_bytes(&seed),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = Zeroizing::new([0u8; 32]);
                crate::secret::fill_random(&mut *seed);
                let text = Zeroizing::new(hex::encode(*seed) + "\n");
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                file.write_all(text.as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok(DigestSigner {
                    key: SigningKey::from_bytes(&seed),
                })
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The public key, 64 hex digits: what to pin for [`validate_digests`].
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }
}

/// What a digest signs (every field of the file but `signature`, in this order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DigestBody {
    version: u32,
    /// 0 for the first digest, then one more per digest.
    digest_sequence: u64,
    #[serde(with = "time::serde::rfc3339")]
    digest_time: OffsetDateTime,
    log_file: String,
    /// The segment: bytes `start_offset..end_offset` of `trail.jsonl`, whole lines.
    start_offset: u64,
    end_offset: u64,
    /// Sequence numbers of the segment's first and last records (none when empty).
    first_record: Option<u64>,
    last_record: Option<u64>,
    segment_sha256: String,
    /// SHA-256 of each line of the segment (without its `\n`), in order.
    line_sha256: Vec<String>,
    /// The previous digest's `signature`; `None` for the first.
    previous_signature: Option<String>,
    /// The signer's Ed25519 public key, hex.
    public_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DigestFile {
    #[serde(flatten)]
    body: DigestBody,
    /// Ed25519 over the compact JSON of `body`, hex.
    signature: String,
}

/// What [`write_digest`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenDigest {
    /// The digest file written.
    pub path: PathBuf,
    /// Its place in the sequence of digests (0 for the first).
    pub digest_sequence: u64,
    /// Records covered by this digest.
    pub records: u64,
}

/// What [`validate_digests`] checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestReport {
    /// Digests checked.
    pub digests: u64,
    /// Records covered by the digests.
    pub records: u64,
    /// The key every digest was signed with.
    pub public_key: Option<String>,
    /// When the last digest was written: records after it are covered by the hash
    /// chain only.
    pub last_digest_time: Option<OffsetDateTime>,
}

fn broken(
    path: &Path,
    line: Option<u64>,
    sequence: Option<u64>,
    problem: TrailProblem,
) -> TrailError {
    TrailError::Broken {
        path: path.to_path_buf(),
        line,
        sequence,
        problem,
    }
}

fn digest_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(DIGEST_DIR)
        .join(format!("digest-{sequence:020}.json"))
}

/// The digests' sequence numbers, sorted; names that are not digests are ignored.
fn digest_sequences(dir: &Path) -> Result<Vec<u64>, TrailError> {
    let digests = dir.join(DIGEST_DIR);
    let entries = match fs::read_dir(&digests) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TrailError::Io {
                path: digests,
                source,
            })
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| TrailError::Io {
            path: digests.clone(),
            source,
        })?;
        let name = entry.file_name();
        let sequence = name
            .to_str()
            .and_then(|n| n.strip_prefix("digest-"))
            .and_then(|n| n.strip_suffix(".json"))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(sequence) = sequence {
            found.push(sequence);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn read_digest(path: &Path) -> Result<DigestFile, TrailError> {
    let file = File::open(path).map_err(|source| TrailError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_DIGEST_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| TrailError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_DIGEST_LEN {
        return Err(broken(path, None, None, TrailProblem::DigestTooLarge));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let detail = e.to_string();
        broken(path, None, None, TrailProblem::NotADigest { detail })
    })
}

/// The whole lines of `log` from `start` on: their bytes up to the last `\n`.
fn read_segment(log: &mut File, log_path: &Path, start: u64) -> Result<Vec<u8>, TrailError> {
    use std::io::Seek;
    let io = |source| TrailError::Io {
        path: log_path.to_path_buf(),
        source,
    };
    log.seek(std::io::SeekFrom::Start(start)).map_err(io)?;
    let mut bytes = Vec::new();
    log.read_to_end(&mut bytes).map_err(io)?;
    let whole = memchr::memrchr(b'\n', &bytes).map_or(0, |i| i + 1);
    bytes.truncate(whole);
    Ok(bytes)
}

/// The complete lines of `segment` (each without its `\n`); bytes after the last
/// `\n` are not a line. Newlines are found with `memchr` (vector compares), not byte
/// by byte: validation walks every byte of the trail several times, and under the
/// fuzzer each byte compared one at a time is also a traced comparison.
fn lines(segment: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', segment).map(move |end| {
        let line = &segment[start..end];
        start = end + 1;
        line
    })
}

fn sign_body(signer: &DigestSigner, body: &DigestBody) -> Result<String, TrailError> {
    let bytes = serde_json::to_vec(body)?;
    Ok(hex::encode(signer.key.sign(&bytes).to_bytes()))
}

/// Writes the next digest of the trail in `trail_dir`: it covers every complete
/// record appended since the previous digest (possibly none: an empty period still
/// gets its digest, so a gap in time shows). Takes a shared lock on `trail.jsonl`,
/// so it sees whole batches only.
pub fn write_digest(trail_dir: &Path, signer: &DigestSigner) -> Result<WrittenDigest, TrailError> {
    let log_path = trail_dir.join(LOG_FILE);
    let digests = trail_dir.join(DIGEST_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&digests)
        .map_err(|source| TrailError::Io {
            path: digests.clone(),
            source,
        })?;
    // One writer of digests at a time (the server's timer and the CLI).
    let lock_path = digests.join(".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| TrailError::Io {
            path: lock_path.clone(),
            source,
        })?;
    FileExt::lock_exclusive(&lock).map_err(|source| TrailError::Io {
        path: lock_path.clone(),
        source,
    })?;
    let previous = match digest_sequences(trail_dir)?.last() {
        Some(&sequence) => Some(read_digest(&digest_path(trail_dir, sequence))?),
        None => None,
    };
    let mut log = match File::open(&log_path) {
        Ok(file) => file,
        Err(source) => {
            return Err(TrailError::Io {
                path: log_path,
                source,
            })
        }
    };
    FileExt::lock_shared(&log).map_err(|source| TrailError::Io {
        path: log_path.clone(),
        source,
    })?;
    let start = previous.as_ref().map_or(0, |p| p.body.end_offset);
    let segment = read_segment(&mut log, &log_path, start)?;
    FileExt::unlock(&log).map_err(|source| TrailError::Io {
        path: log_path.clone(),
        source,
    })?;
    let line_sha256: Vec<String> = lines(&segment)
        .map(|line| hex::encode(Sha256::digest(line)))
        .collect();
    let first_record = lines(&segment).next().and_then(claimed_sequence);
    let last_record = lines(&segment).last().and_then(claimed_sequence);
    let end_offset = start
        .checked_add(segment.len() as u64)
        .ok_or_else(|| broken(&log_path, None, None, TrailProblem::TrailTooLong))?;
    let digest_sequence =
        match &previous {
            Some(p) => p.body.digest_sequence.checked_add(1).ok_or_else(|| {
                broken(&digests, None, None, TrailProblem::DigestSequenceOverflow)
            })?,
            None => 0,
        };
    let body = DigestBody {
        version: FORMAT_VERSION,
        digest_sequence,
        digest_time: OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        log_file: LOG_FILE.into(),
        start_offset: start,
        end_offset,
        first_record,
        last_record,
        segment_sha256: hex::encode(Sha256::digest(&segment)),
        line_sha256,
        previous_signature: previous.map(|p| p.signature),
        public_key: signer.public_key_hex(),
    };
    let records = body.line_sha256.len() as u64;
    let signature = sign_body(signer, &body)?;
    let file = DigestFile { body, signature };
    let path = digest_path(trail_dir, digest_sequence);
    let tmp = path.with_extension("json.partial");
    let write = || -> std::io::Result<()> {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        serde_json::to_writer(&mut out, &file)?;
        out.write_all(b"\n")?;
        out.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&digests)?.sync_all()
    };
    write().map_err(|source| TrailError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(WrittenDigest {
        path,
        digest_sequence,
        records,
    })
}

/// Walks every digest of the trail in `trail_dir` in order and names the first
/// problem: a digest missing from the sequence, damaged, signed by another key than
/// `public_key` (hex; default: the key of the first digest), with a bad signature or
/// not chained to the previous digest's signature; a record line that differs from
/// the one its digest signed (edited, deleted, inserted, reordered, even with the
/// hash chain recomputed); or a `trail.jsonl` shorter than the digests cover
/// (truncated tail).
pub fn validate_digests(
    trail_dir: &Path,
    public_key: Option<&str>,
) -> Result<DigestReport, TrailError> {
    let log_path = trail_dir.join(LOG_FILE);
    let sequences = digest_sequences(trail_dir)?;
    let mut report = DigestReport {
        digests: 0,
        records: 0,
        public_key: public_key.map(str::to_owned),
        last_digest_time: None,
    };
    if sequences.is_empty() {
        return Ok(report);
    }
    let mut log = File::open(&log_path).map_err(|source| TrailError::Io {
        path: log_path.clone(),
        source,
    })?;
    FileExt::lock_shared(&log).map_err(|source| TrailError::Io {
        path: log_path.clone(),
        source,
    })?;
    let whole = read_segment(&mut log, &log_path, 0)?;
    let mut previous: Option<DigestFile> = None;
    for (expected, sequence) in sequences.iter().copied().enumerate() {
        let path = digest_path(trail_dir, sequence);
        if sequence != expected as u64 {
            return Err(broken(
                &digest_path(trail_dir, expected as u64),
                None,
                None,
                TrailProblem::DigestMissing,
            ));
        }
        let digest = read_digest(&path)?;
        check_digest(&path, &digest, previous.as_ref(), &mut report)?;
        check_segment(&path, &log_path, &digest.body, &whole)?;
        report.digests += 1;
        report.records += digest.body.line_sha256.len() as u64;
        report.last_digest_time = Some(digest.body.digest_time);
        previous = Some(digest);
    }
    Ok(report)
}

fn check_digest(
    path: &Path,
    digest: &DigestFile,
    previous: Option<&DigestFile>,
    report: &mut DigestReport,
) -> Result<(), TrailError> {
    let body = &digest.body;
    let bad = |problem: TrailProblem| broken(path, None, None, problem);
    if body.version != FORMAT_VERSION {
        return Err(bad(TrailProblem::DigestVersion {
            version: body.version,
        }));
    }
    let key_hex = report
        .public_key
        .get_or_insert_with(|| body.public_key.clone());
    if body.public_key != *key_hex {
        return Err(bad(TrailProblem::DigestKeyMismatch {
            key: body.public_key.clone(),
            trail_key: key_hex.clone(),
        }));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(key_hex.as_str(), &mut key)
        .map_err(|_| bad(TrailProblem::DigestKeyNotHex))?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| bad(TrailProblem::DigestKeyInvalid))?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(&digest.signature, &mut signature)
        .map_err(|_| bad(TrailProblem::SignatureNotHex))?;
    let bytes = serde_json::to_vec(body)?;
    key.verify(&bytes, &Signature::from_bytes(&signature))
        .map_err(|_| bad(TrailProblem::SignatureInvalid))?;
    let (chained, start) = match previous {
        Some(p) => (
            Some(&p.signature) == body.previous_signature.as_ref(),
            p.body.end_offset,
        ),
        None => (body.previous_signature.is_none(), 0),
    };
    if !chained {
        return Err(bad(TrailProblem::DigestChainBroken));
    }
    if body.start_offset != start || body.end_offset < body.start_offset {
        return Err(bad(TrailProblem::DigestRangeMismatch {
            start: body.start_offset,
            end: body.end_offset,
            previous_end: start,
        }));
    }
    Ok(())
}

/// Compares the trail's lines in the digest's byte range with the hashes it signed.
fn check_segment(
    path: &Path,
    log_path: &Path,
    body: &DigestBody,
    whole: &[u8],
) -> Result<(), TrailError> {
    let start = usize::try_from(body.start_offset).unwrap_or(usize::MAX);
    let first_line =
        memchr::memchr_iter(b'\n', &whole[..start.min(whole.len())]).count() as u64 + 1;
    let end = usize::try_from(body.end_offset).unwrap_or(usize::MAX);
    let available = whole.get(start..).unwrap_or_default();
    let mut actual = lines(available);
    for (i, signed) in body.line_sha256.iter().enumerate() {
        let line_no = first_line + i as u64;
        let expected_sequence = body.first_record.map(|f| f + i as u64);
        match actual.next() {
            None => {
                return Err(broken(
                    log_path,
                    Some(line_no),
                    expected_sequence,
                    TrailProblem::DigestedTailTruncated {
                        digest: path.to_path_buf(),
                        records: body.line_sha256.len(),
                        last: body.last_record.unwrap_or_default(),
                    },
                ))
            }
            Some(line) if hex::encode(Sha256::digest(line)) != *signed => {
                return Err(broken(
                    log_path,
                    Some(line_no),
                    claimed_sequence(line).or(expected_sequence),
                    TrailProblem::DigestedRecordDiffers {
                        digest: path.to_path_buf(),
                    },
                ))
            }
            Some(_) => {}
        }
    }
    if whole.len() < end
        || hex::encode(Sha256::digest(
            &whole[start.min(whole.len())..end.min(whole.len())],
        )) != body.segment_sha256
    {
        return Err(broken(
            log_path,
            None,
            body.last_record,
            TrailProblem::DigestedBytesDiffer {
                start: body.start_offset,
                end: body.end_offset,
                digest: path.to_path_buf(),
            },
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `lines` was before it used `memchr`: the pieces between newlines, as
    /// many as there are newlines.
    fn lines_by_split(segment: &[u8]) -> Vec<&[u8]> {
        segment
            .split(|&b| b == b'\n')
            .take(segment.iter().filter(|&&b| b == b'\n').count())
            .collect()
    }

    #[test]
    fn lines_are_the_complete_lines() {
        for segment in [
            &b""[..],
            b"\n",
            b"\n\n",
            b"a",
            b"a\n",
            b"a\nb",
            b"a\nb\n",
            b"\na\n\nb",
            b"{\"x\":1}\n{\"y\":2}\ntorn",
        ] {
            assert_eq!(
                lines(segment).collect::<Vec<_>>(),
                lines_by_split(segment),
                "{segment:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn lines_split_any_bytes_as_before(segment in proptest::collection::vec(
            prop_oneof![Just(b'\n'), any::<u8>()], 0..200)) {
            prop_assert_eq!(lines(&segment).collect::<Vec<_>>(), lines_by_split(&segment));
        }
    }
}
