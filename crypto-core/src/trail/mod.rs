//! The audit trail: one CloudTrail-shaped, hash-chained record per key-service call.
//!
//! The key service builds an [`ApiCall`] for every call, successful or not, and hands
//! it to [`Trail::append`] before it answers. The trail lives in one directory:
//!
//! - `trail.jsonl`: one JSON record per line, in order. Each record carries its
//!   sequence number, the hash of the record before it and its own hash, so
//!   [`Trail::validate`] finds any edited, deleted, reordered or inserted record.
//! - `trail.head`: the sequence number and hash of the last acknowledged record, so
//!   that removing records from the end is found too. It is written after the
//!   record is synced but not synced itself, so after a power loss it may lag.
//!
//! Appends from any number of threads and processes are serialised by an exclusive
//! `flock` on `trail.jsonl` (and a mutex inside the process, because `flock` does not
//! exclude two users of one file description). A record is on disk (`fdatasync`)
//! before `append` returns, so a call is never acknowledged without its record.
//! Concurrent appends of one process share one write and one sync (group commit).
//!
//! A crash in the middle of an append can leave an incomplete final line. It was
//! never acknowledged (the process had not yet synced it), so the next append cuts
//! it off and chains onto the last complete record; until then `validate` reports it
//! as a note. An append refuses to chain onto a last record that does not verify or
//! that disagrees with `trail.head`: the key service then fails closed rather than
//! audit calls on top of a damaged trail. The format is in `docs/FORMAT.md`.

pub mod digest;
mod head;
mod record;
pub mod timer;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use thiserror::Error;
use time::OffsetDateTime;

use head::Head;
use record::{ChainLink, Event, RecordHash, TrailOrigin, GENESIS_HASH};

/// The records, one per line.
pub const LOG_FILE: &str = "trail.jsonl";
/// The last acknowledged record's sequence number and hash.
pub const HEAD_FILE: &str = "trail.head";

/// What the key service reports about one call, successful or not.
/// Never holds key material (plaintext keys, CMK material, ciphertext blobs).
#[derive(Clone, Debug)]
pub struct ApiCall {
    /// From the key service's clock (injectable in tests).
    pub event_time: time::OffsetDateTime,
    /// AWS operation name, e.g. `GenerateDataKey`.
    pub event_name: String,
    /// ARN of the caller.
    pub principal: String,
    /// `keyId`, `keySpec`, `numberOfBytes`, `encryptionContext`, ... (AWS camelCase).
    pub request_parameters: serde_json::Value,
    /// Non-secret response fields (`keyId` ARN, `keyState`, ...), `None` on error.
    pub response_elements: Option<serde_json::Value>,
    /// AWS error name (`DisabledException`) when the call failed.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub read_only: bool,
    /// ARNs of the keys the call touched.
    pub resources: Vec<String>,
}

/// Longest `userAgent` kept; a longer one is cut (at a character boundary) and ends
/// in `...`. Unauthenticated clients choose this text, so it is bounded.
pub const MAX_USER_AGENT_CHARS: usize = 1024;
/// Longest claimed access key id kept (AWS ids are 16-128 characters).
pub const MAX_ACCESS_KEY_ID_CHARS: usize = 128;

/// Where a call came from and the credentials it presented, as the endpoint saw
/// them: CloudTrail's `sourceIPAddress`, `userAgent` and `userIdentity.accessKeyId`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSource {
    /// The peer's IP address (without port), `localhost` for calls made on this
    /// machine through the CLI, `AWS Internal` for the key service's own work.
    pub ip_address: String,
    /// The client's `User-Agent`, bounded and with control characters replaced.
    pub user_agent: String,
    /// The access key id the request was signed with (for a refused request: the
    /// one it claimed, unproven).
    pub access_key_id: Option<String>,
    /// The request id the client was answered with (`x-amzn-RequestId`,
    /// `x-amz-request-id`), recorded as `requestID` so a client's error report can be
    /// matched to its record; a fresh UUID per record when `None`.
    pub request_id: Option<String>,
}

impl RequestSource {
    /// A call made in this process (the CLI, a library user): `localhost` and
    /// atrest's own user agent, no access key.
    pub fn local() -> RequestSource {
        RequestSource {
            ip_address: "localhost".into(),
            user_agent: format!(
                "atrest/{} (pid {})",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
            access_key_id: None,
            request_id: None,
        }
    }

    /// What the key service does on its own (scheduled deletion and rotation):
    /// CloudTrail's `AWS Internal`.
    pub fn internal() -> RequestSource {
        RequestSource {
            ip_address: "AWS Internal".into(),
            user_agent: "AWS Internal".into(),
            access_key_id: None,
            request_id: None,
        }
    }

    /// A request from the network: the peer's address, its `User-Agent` header (raw
    /// bytes, any content) and the access key id it presented. Both client-chosen
    /// texts are bounded and their control characters replaced, so a record stays
    /// one readable line whatever a client sends.
    pub fn remote(
        peer: std::net::IpAddr,
        user_agent: Option<&[u8]>,
        access_key_id: Option<&str>,
    ) -> RequestSource {
        RequestSource {
            ip_address: peer.to_canonical().to_string(),
            user_agent: user_agent
                .map(|ua| bounded_text(&String::from_utf8_lossy(ua), MAX_USER_AGENT_CHARS))
                .unwrap_or_default(),
            access_key_id: access_key_id
                .filter(|id| !id.is_empty())
                .map(|id| bounded_text(id, MAX_ACCESS_KEY_ID_CHARS)),
            request_id: None,
        }
    }

    /// The same source, its records carrying `request_id` as `requestID`.
    pub fn with_request_id(self, request_id: &str) -> RequestSource {
        RequestSource {
            request_id: Some(bounded_text(request_id, 64)),
            ..self
        }
    }
}

/// `text` with control characters replaced by U+FFFD and cut to `max` characters
/// (the last three then `...`).
fn bounded_text(text: &str, max: usize) -> String {
    let clean = text
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c });
    if text.chars().count() <= max {
        return clean.collect();
    }
    let mut cut: String = clean.take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

/// Which endpoint refused a request (its `eventSource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventSource {
    /// `kms.amazonaws.com`: a management event.
    Kms,
    /// `s3.amazonaws.com`: a data event.
    S3,
}

/// Who a refused request was from, as far as it was proven.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusedCaller {
    /// The signature did not verify (or was malformed): nobody was proven.
    /// `userIdentity` is `{"type": "Unknown"}` plus the claimed `accessKeyId`.
    Unknown,
    /// No credentials at all (an S3 request without signature): CloudTrail's
    /// anonymous `{"type": "AWSAccount", "principalId": "", "accountId": "anonymous"}`.
    Anonymous,
    /// The signature verified as this principal ARN, and the request was refused
    /// after that (access denied).
    Principal(String),
}

/// A request an endpoint refused before it reached the key service (bad or missing
/// signature, expired presigned URL, unreadable request, access denied). Recorded
/// like an [`ApiCall`] with its `errorCode` and `errorMessage`.
#[derive(Clone, Debug)]
pub struct RefusedRequest {
    pub event_time: time::OffsetDateTime,
    pub event_source: EventSource,
    /// The operation asked for (`GenerateDataKey`, `GetObject`), or `Unknown` when
    /// the request did not name one the endpoint knows.
    pub event_name: String,
    pub caller: RefusedCaller,
    /// AWS error name as the client was answered (`InvalidSignatureException`,
    /// `SignatureDoesNotMatch`, ...).
    pub error_code: String,
    pub error_message: String,
    /// What the request asked for, when known without trusting it (S3: `bucketName`,
    /// `key`); `null` otherwise.
    pub request_parameters: serde_json::Value,
    pub read_only: bool,
    pub source: RequestSource,
}

/// One record waiting to be written.
#[derive(Clone, Debug)]
enum Entry {
    Call(ApiCall, RequestSource),
    Refused(RefusedRequest),
}

impl Entry {
    fn event(&self) -> Event<'_> {
        match self {
            Entry::Call(call, source) => Event::of_call(call, source),
            Entry::Refused(refused) => Event::of_refusal(refused),
        }
    }
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrailError {
    /// The trail's files could not be created, read or written (the host's fault).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The stored trail does not verify: a record was altered, removed, reordered or
    /// inserted, or a file is damaged. Names the first bad place found.
    #[error("{}{}: {problem}", path.display(), locate(*line, *sequence))]
    Broken {
        path: PathBuf,
        /// 1-based line of `trail.jsonl`, when the problem is on one line.
        line: Option<u64>,
        /// The sequence number of the record concerned, when known.
        sequence: Option<u64>,
        problem: String,
    },
    /// A record could not be encoded (the caller's request parameters were not
    /// serialisable JSON).
    #[error("cannot encode a trail record: {0}")]
    Encode(#[from] serde_json::Error),
}

impl TrailError {
    /// The same failure, reported to another caller of the same failed batch.
    fn for_another_caller(&self) -> TrailError {
        match self {
            TrailError::Io { path, source } => TrailError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            TrailError::Broken {
                path,
                line,
                sequence,
                problem,
            } => TrailError::Broken {
                path: path.clone(),
                line: *line,
                sequence: *sequence,
                problem: problem.clone(),
            },
            TrailError::Encode(err) => TrailError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(err.to_string()),
            },
        }
    }
}

fn locate(line: Option<u64>, sequence: Option<u64>) -> String {
    match (line, sequence) {
        (Some(line), Some(sequence)) => format!(" line {line} (record {sequence})"),
        (Some(line), None) => format!(" line {line}"),
        (None, Some(sequence)) => format!(" (record {sequence})"),
        (None, None) => String::new(),
    }
}

/// What `validate` found when the trail verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationReport {
    pub path: PathBuf,
    /// Records checked.
    pub records: u64,
    /// Sequence number of the last record (0 for an empty trail).
    pub last_sequence: u64,
    /// Hex SHA-256 of the last record. Kept somewhere else, it anchors the trail:
    /// a later `validate` whose chain passes through this hash proves that nothing
    /// up to here was rewritten.
    pub last_hash: String,
    /// Things that are not tampering but worth knowing (crash leftovers).
    pub notes: Vec<String>,
}

/// A record's sequence number and hash, as `validate` reported them at some point
/// (`SEQUENCE:HASH` in text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub sequence: u64,
    pub record_hash: [u8; 32],
}

impl std::str::FromStr for Anchor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (sequence, hash) = text
            .split_once(':')
            .ok_or_else(|| format!("'{text}' is not SEQUENCE:HASH"))?;
        let sequence = sequence
            .parse::<u64>()
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| format!("'{sequence}' is not a record sequence number"))?;
        let record_hash = record::parse_hash(hash)
            .ok_or_else(|| format!("'{hash}' is not 64 lowercase hex digits"))?;
        Ok(Anchor {
            sequence,
            record_hash,
        })
    }
}

/// Which records `lookup` returns. Every field that is set must match.
#[derive(Clone, Debug, Default)]
pub struct LookupFilter {
    /// Exact `eventName`, e.g. `Decrypt`.
    pub event_name: Option<String>,
    /// A key id, key ARN, alias name or alias ARN. An alias matches the records
    /// that name it and every key it was seen resolving to in the trail.
    pub key_id: Option<String>,
    /// The caller: principal ARN, user name, principal id or access key id (which
    /// also finds refused requests that only claimed that key).
    pub principal: Option<String>,
    /// Inclusive bounds on `eventTime`.
    pub start_time: Option<OffsetDateTime>,
    pub end_time: Option<OffsetDateTime>,
    /// At most this many records (the most recent ones).
    pub max_results: Option<usize>,
    /// Only records older than this sequence number: where the previous page of a
    /// paged lookup ended ([`LookupPage::next_before`]).
    pub before_sequence: Option<u64>,
}

/// One page of a [`Trail::lookup_page`].
#[derive(Clone, Debug, PartialEq)]
pub struct LookupPage {
    /// The matching records, most recent first.
    pub records: Vec<FoundRecord>,
    /// When older records also match: the `before_sequence` of the next page.
    pub next_before: Option<u64>,
}

/// One record found by [`Trail::lookup`].
#[derive(Clone, Debug, PartialEq)]
pub struct FoundRecord {
    /// The record's line exactly as stored (it hashes to its `recordHash`).
    pub line: String,
    pub event: serde_json::Value,
}

/// The trail stored in one directory.
#[derive(Debug)]
pub struct Trail {
    log_path: PathBuf,
    head_path: PathBuf,
    origin: TrailOrigin,
    files: Mutex<TrailFiles>,
    batch: Mutex<Batch>,
    batch_written: Condvar,
}

/// Appends of this process waiting to be written together.
#[derive(Debug, Default)]
struct Batch {
    next_ticket: u64,
    queue: Vec<(u64, Entry)>,
    /// A thread is writing a batch: the others wait for it.
    writing: bool,
    /// Outcomes not yet collected by their callers.
    done: HashMap<u64, Result<(), TrailError>>,
}

#[derive(Debug)]
struct TrailFiles {
    /// Opened for append: every write lands at the end whatever the offset.
    log: File,
    head: File,
}

impl Trail {
    /// Opens the trail in `dir` (created 0700, files 0600), recording events for
    /// `region` and `account`.
    pub fn open(dir: &Path, region: &str, account: &str) -> Result<Self, TrailError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TrailError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let log_path = dir.join(LOG_FILE);
        let head_path = dir.join(HEAD_FILE);
        let mut created = false;
        let log = open_or_create(&log_path, true, &mut created).map_err(io(&log_path))?;
        let head = open_or_create(&head_path, false, &mut created).map_err(io(&head_path))?;
        if created {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(Self {
            log_path,
            head_path,
            origin: TrailOrigin {
                region: region.to_owned(),
                account: account.to_owned(),
            },
            files: Mutex::new(TrailFiles { log, head }),
            batch: Mutex::new(Batch::default()),
            batch_written: Condvar::new(),
        })
    }

    /// Path of `trail.jsonl`.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Appends one record durably; the call it describes is not acknowledged before.
    ///
    /// Threads of one process that append at the same time share one write and one
    /// `fdatasync` (group commit): the first becomes the writer of everything queued,
    /// the others wait for their outcome.
    pub fn append(&self, call: &ApiCall) -> Result<(), TrailError> {
        self.append_from(call, &RequestSource::local())
    }

    /// [`Trail::append`] for a call that came from `source` (a network client).
    pub fn append_from(&self, call: &ApiCall, source: &RequestSource) -> Result<(), TrailError> {
        self.enqueue(Entry::Call(call.clone(), source.clone()))
    }

    /// Appends the record of a request refused before it reached the key service,
    /// durably, like [`Trail::append`].
    pub fn append_refusal(&self, refused: &RefusedRequest) -> Result<(), TrailError> {
        self.enqueue(Entry::Refused(refused.clone()))
    }

    fn enqueue(&self, entry: Entry) -> Result<(), TrailError> {
        let mut batch = self.batch();
        let ticket = batch.next_ticket;
        batch.next_ticket += 1;
        batch.queue.push((ticket, entry));
        loop {
            if let Some(outcome) = batch.done.remove(&ticket) {
                return outcome;
            }
            if batch.writing {
                batch = self
                    .batch_written
                    .wait(batch)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            batch.writing = true;
            let calls = std::mem::take(&mut batch.queue);
            drop(batch);
            let outcomes = self.write_batch(&calls);
            batch = self.batch();
            batch.writing = false;
            batch.done.extend(outcomes);
            self.batch_written.notify_all();
        }
    }

    /// Writes `calls` as consecutive records with one write and one sync, and says
    /// for each ticket whether its record is durable.
    fn write_batch(&self, calls: &[(u64, Entry)]) -> Vec<(u64, Result<(), TrailError>)> {
        let mut outcomes = Vec::with_capacity(calls.len());
        if let Err(err) = self.try_write_batch(calls, &mut outcomes) {
            // Nothing of the batch is known to be durable: every caller fails.
            outcomes.clear();
            outcomes.extend(
                calls
                    .iter()
                    .map(|(ticket, _)| (*ticket, Err(err.for_another_caller()))),
            );
        }
        outcomes
    }

    fn try_write_batch(
        &self,
        calls: &[(u64, Entry)],
        outcomes: &mut Vec<(u64, Result<(), TrailError>)>,
    ) -> Result<(), TrailError> {
        let files = self.files();
        let _lock = FlockGuard::exclusive(&files.log, &self.log_path)?;
        let tail = read_tail(&files.log).map_err(|source| self.log_io(source))?;
        let last = match &tail.last_line {
            None => None,
            Some(line) => Some(
                record::verify(line)
                    .map_err(|problem| TrailError::Broken {
                        path: self.log_path.clone(),
                        line: None,
                        sequence: record::claimed_sequence(line),
                        problem: format!(
                            "last record does not verify, refusing to append: {problem}"
                        ),
                    })?
                    .0,
            ),
        };
        let head = self.read_head(&files.head)?;
        check_head_at_tail(head, last.as_ref()).map_err(|problem| TrailError::Broken {
            path: self.head_path.clone(),
            line: None,
            sequence: Some(head.sequence),
            problem: format!("refusing to append: {problem}"),
        })?;
        if tail.torn_len > 0 {
            tracing::warn!(
                bytes = tail.torn_len,
                "cutting an incomplete final trail record left by an interrupted write"
            );
            files
                .log
                .set_len(tail.complete_len)
                .map_err(|source| self.log_io(source))?;
        }
        let mut newest = match last {
            Some(link) => Head {
                sequence: link.sequence,
                hash: link.record_hash,
            },
            None => Head::EMPTY,
        };
        let mut lines = Vec::new();
        for (ticket, call) in calls {
            let sequence = newest
                .sequence
                .checked_add(1)
                .ok_or_else(|| TrailError::Broken {
                    path: self.log_path.clone(),
                    line: None,
                    sequence: Some(newest.sequence),
                    problem: "the last record's sequence number cannot grow".into(),
                })?;
            match record::encode(&call.event(), &self.origin, sequence, &newest.hash) {
                Ok((line, hash)) => {
                    lines.extend_from_slice(&line);
                    lines.push(b'\n');
                    newest = Head { sequence, hash };
                    outcomes.push((*ticket, Ok(())));
                }
                Err(err) => outcomes.push((*ticket, Err(TrailError::Encode(err)))),
            }
        }
        if lines.is_empty() {
            return Ok(());
        }
        (&files.log)
            .write_all(&lines)
            .and_then(|()| files.log.sync_data())
            .map_err(|source| self.log_io(source))?;
        newest.write(&files.head).map_err(|source| TrailError::Io {
            path: self.head_path.clone(),
            source,
        })
    }

    /// Checks every record and the head; the error names the first bad record.
    pub fn validate(&self) -> Result<ValidationReport, TrailError> {
        self.validate_against(None)
    }

    /// [`Trail::validate`], and also checks that the trail still holds the record an
    /// earlier validation reported as its last (kept where this machine cannot write
    /// it). That catches a rewrite from an earlier point with every hash recomputed,
    /// which the chain alone cannot.
    pub fn validate_against(
        &self,
        anchor: Option<&Anchor>,
    ) -> Result<ValidationReport, TrailError> {
        let files = self.files();
        let _lock = FlockGuard::shared(&files.log, &self.log_path)?;
        let head = self.read_head(&files.head)?;
        let mut hash_at_head = (head.sequence == 0).then_some(GENESIS_HASH);
        let mut notes = Vec::new();
        let mut last: Option<ChainLink> = None;
        let mut line_no = 0u64;
        let mut records = 0u64;
        let torn = for_each_line(&self.log_path, |line| {
            line_no += 1;
            let broken = |sequence, problem| TrailError::Broken {
                path: self.log_path.clone(),
                line: Some(line_no),
                sequence,
                problem,
            };
            let (link, _) = record::verify(line)
                .map_err(|problem| broken(record::claimed_sequence(line), problem))?;
            let expected = last.map_or(1, |l| l.sequence.saturating_add(1));
            let expected_previous = last.map_or(GENESIS_HASH, |l| l.record_hash);
            if link.sequence > expected {
                let missing = if link.sequence == expected + 1 {
                    format!("record {expected} is")
                } else {
                    format!("records {expected} to {} are", link.sequence - 1)
                };
                return Err(broken(
                    Some(link.sequence),
                    format!("{missing} missing before this line (deleted or moved)"),
                ));
            }
            if link.sequence < expected {
                return Err(broken(
                    Some(link.sequence),
                    format!("record {expected} was expected here: records were reordered, duplicated or inserted"),
                ));
            }
            if link.previous_hash != expected_previous {
                return Err(broken(
                    Some(link.sequence),
                    format!(
                        "does not chain to the record before it: record {} was altered and rehashed, or this record was forged",
                        link.sequence - 1
                    ),
                ));
            }
            if let Some(anchor) = anchor.filter(|a| a.sequence == link.sequence) {
                if anchor.record_hash != link.record_hash {
                    return Err(broken(
                        Some(link.sequence),
                        "differs from the anchored record: the trail was rewritten from here \
                         or earlier, with every hash recomputed"
                            .into(),
                    ));
                }
            }
            if link.sequence == head.sequence {
                hash_at_head = Some(link.record_hash);
            }
            last = Some(link);
            records += 1;
            Ok(())
        })?;
        let last_sequence = last.map_or(0, |l| l.sequence);
        if let Some(anchor) = anchor.filter(|a| a.sequence > last_sequence) {
            return Err(TrailError::Broken {
                path: self.log_path.clone(),
                line: None,
                sequence: Some(anchor.sequence),
                problem: format!(
                    "the anchored record is gone: the trail ends at record {last_sequence}"
                ),
            });
        }
        if torn > 0 {
            notes.push(format!(
                "line {}: incomplete final record ({torn} bytes) from an interrupted write; \
                 it was never acknowledged and the next append removes it",
                line_no + 1
            ));
        }
        let head_problem = match hash_at_head {
            None => Some(format!(
                "the trail ends at record {last_sequence} but record {} was acknowledged: \
                 records were removed from the end",
                head.sequence
            )),
            Some(hash) if hash != head.hash => Some(format!(
                "record {} differs from the one acknowledged: the trail was rewritten from \
                 there or earlier",
                head.sequence
            )),
            Some(_) => None,
        };
        if let Some(problem) = head_problem {
            return Err(TrailError::Broken {
                path: self.head_path.clone(),
                line: None,
                sequence: Some(head.sequence),
                problem,
            });
        }
        if head.sequence < last_sequence {
            let unheaded = if head.sequence + 1 == last_sequence {
                format!("record {last_sequence} was")
            } else {
                format!("records {} to {last_sequence} were", head.sequence + 1)
            };
            notes.push(format!(
                "{unheaded} stored but {HEAD_FILE} was not updated, as after a crash or \
                 power loss"
            ));
        }
        Ok(ValidationReport {
            path: self.log_path.clone(),
            records,
            last_sequence,
            last_hash: hex::encode(last.map_or(GENESIS_HASH, |l| l.record_hash)),
            notes,
        })
    }

    /// The records that match `filter`, most recent first. Lines that are not JSON
    /// (an interrupted write) are skipped; `validate` is what judges the trail.
    pub fn lookup(&self, filter: &LookupFilter) -> Result<Vec<FoundRecord>, TrailError> {
        self.lookup_page(filter).map(|page| page.records)
    }

    /// Like [`Trail::lookup`], and says where the next page starts when
    /// `max_results` cut older matching records off.
    pub fn lookup_page(&self, filter: &LookupFilter) -> Result<LookupPage, TrailError> {
        let files = self.files();
        let _lock = FlockGuard::shared(&files.log, &self.log_path)?;
        let alias_keys = match filter.key_id.as_deref() {
            Some(alias) if alias.starts_with("alias/") || alias.contains(":alias/") => {
                self.keys_named_by(alias)?
            }
            _ => BTreeSet::new(),
        };
        let limit = filter.max_results.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(LookupPage {
                records: Vec::new(),
                next_before: None,
            });
        }
        let mut found: VecDeque<FoundRecord> = VecDeque::new();
        let mut cut_off = false;
        for_each_line(&self.log_path, |line| {
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(line) else {
                return Ok(());
            };
            let older = match (filter.before_sequence, event_sequence(&event)) {
                (None, _) => true,
                (Some(before), Some(sequence)) => sequence < before,
                (Some(_), None) => false,
            };
            if older && matches(&event, filter, &alias_keys) {
                if found.len() == limit {
                    found.pop_front();
                    cut_off = true;
                }
                found.push_back(FoundRecord {
                    line: String::from_utf8_lossy(line).into_owned(),
                    event,
                });
            }
            Ok(())
        })?;
        let next_before = if cut_off {
            found
                .front()
                .and_then(|oldest| event_sequence(&oldest.event))
        } else {
            None
        };
        Ok(LookupPage {
            records: found.into_iter().rev().collect(),
            next_before,
        })
    }

    /// ARNs of the keys that records naming `alias` touched.
    fn keys_named_by(&self, alias: &str) -> Result<BTreeSet<String>, TrailError> {
        let alias_name = alias.rsplit_once(":").map_or(alias, |(_, name)| name);
        let mut keys = BTreeSet::new();
        for_each_line(&self.log_path, |line| {
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(line) else {
                return Ok(());
            };
            let params = &event["requestParameters"];
            let names_alias = ["keyId", "aliasName", "destinationKeyId", "sourceKeyId"]
                .iter()
                .any(|field| {
                    params[field]
                        .as_str()
                        .is_some_and(|v| v == alias || v == alias_name)
                });
            if names_alias {
                keys.extend(resource_arns(&event).map(str::to_owned));
            }
            Ok(())
        })?;
        Ok(keys)
    }

    fn batch(&self) -> MutexGuard<'_, Batch> {
        self.batch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn files(&self) -> MutexGuard<'_, TrailFiles> {
        // A thread that panicked while holding the lock left nothing half-done in
        // memory: the files are the state, and append re-reads them every time.
        self.files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_head(&self, head: &File) -> Result<Head, TrailError> {
        Head::read(head)
            .map_err(|source| TrailError::Io {
                path: self.head_path.clone(),
                source,
            })?
            .map_err(|problem| TrailError::Broken {
                path: self.head_path.clone(),
                line: None,
                sequence: None,
                problem: format!("head file is damaged ({problem})"),
            })
    }

    fn log_io(&self, source: std::io::Error) -> TrailError {
        TrailError::Io {
            path: self.log_path.clone(),
            source,
        }
    }
}

fn open_or_create(path: &Path, append: bool, created: &mut bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).mode(0o600);
    if append {
        options.append(true);
    } else {
        options.write(true);
    }
    match options.clone().create_new(true).open(path) {
        Ok(file) => {
            *created = true;
            Ok(file)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => options.open(path),
        Err(err) => Err(err),
    }
}

/// The check an append can make from the end of the log alone: the head (which may
/// lag after a crash, never lead) must not name a record past the end, and must
/// agree with the last two records when it names one of them. `validate` checks the
/// head against whichever record it names.
fn check_head_at_tail(head: Head, last: Option<&ChainLink>) -> Result<(), String> {
    let (sequence, hash, previous): (u64, RecordHash, RecordHash) = match last {
        Some(link) => (link.sequence, link.record_hash, link.previous_hash),
        None => (0, GENESIS_HASH, GENESIS_HASH),
    };
    if head.sequence > sequence {
        return Err(format!(
            "the trail ends at record {sequence} but record {} was acknowledged: records \
             were removed from the end",
            head.sequence
        ));
    }
    let disagrees = (head.sequence == sequence && head.hash != hash)
        || (head.sequence.checked_add(1) == Some(sequence) && head.hash != previous);
    if disagrees {
        return Err(format!(
            "record {} differs from the one acknowledged: the end of the trail was rewritten",
            head.sequence
        ));
    }
    Ok(())
}

fn resource_arns(event: &serde_json::Value) -> impl Iterator<Item = &str> {
    event["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|resource| resource["ARN"].as_str())
}

/// The `atrestChain.sequence` of a record.
fn event_sequence(event: &serde_json::Value) -> Option<u64> {
    event.get("atrestChain")?.get("sequence")?.as_u64()
}

fn matches(
    event: &serde_json::Value,
    filter: &LookupFilter,
    alias_keys: &BTreeSet<String>,
) -> bool {
    if let Some(name) = &filter.event_name {
        if event["eventName"].as_str() != Some(name) {
            return false;
        }
    }
    if let Some(principal) = &filter.principal {
        let identity = &event["userIdentity"];
        let is_caller = ["arn", "userName", "principalId", "accessKeyId"]
            .iter()
            .any(|field| identity[field].as_str() == Some(principal));
        if !is_caller {
            return false;
        }
    }
    if filter.start_time.is_some() || filter.end_time.is_some() {
        let Some(at) = event["eventTime"]
            .as_str()
            .and_then(record::parse_event_time)
        else {
            return false;
        };
        if filter.start_time.is_some_and(|start| at < start)
            || filter.end_time.is_some_and(|end| at > end)
        {
            return false;
        }
    }
    if let Some(key) = &filter.key_id {
        let by_resource = resource_arns(event).any(|arn| {
            arn == key
                || alias_keys.contains(arn)
                || arn.rsplit_once("key/").is_some_and(|(_, id)| id == key)
        });
        let params = &event["requestParameters"];
        let by_parameter = [
            "keyId",
            "targetKeyId",
            "destinationKeyId",
            "sourceKeyId",
            "aliasName",
        ]
        .iter()
        .any(|field| params[field].as_str() == Some(key));
        if !by_resource && !by_parameter {
            return false;
        }
    }
    true
}

/// The end of `trail.jsonl` as an append needs it.
struct Tail {
    /// Bytes up to and including the last newline.
    complete_len: u64,
    /// The last complete line, without its newline.
    last_line: Option<Vec<u8>>,
    /// Bytes after the last newline: an interrupted write.
    torn_len: u64,
}

/// Reads backwards from the end, in growing windows, until the last complete line
/// is in view.
fn read_tail(file: &File) -> std::io::Result<Tail> {
    let len = file.metadata()?.len();
    let mut window = 16 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        let mut bytes = vec![0u8; usize::try_from(len - start).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut bytes, start)?;
        let last_newline = bytes.iter().rposition(|&b| b == b'\n');
        match last_newline {
            None if start == 0 => {
                return Ok(Tail {
                    complete_len: 0,
                    last_line: None,
                    torn_len: len,
                })
            }
            None => {}
            Some(end) => {
                let line_start = bytes[..end].iter().rposition(|&b| b == b'\n');
                if line_start.is_some() || start == 0 {
                    let from = line_start.map_or(0, |p| p + 1);
                    return Ok(Tail {
                        complete_len: start + end as u64 + 1,
                        last_line: Some(bytes[from..end].to_vec()),
                        torn_len: len - (start + end as u64 + 1),
                    });
                }
            }
        }
        window = window.saturating_mul(4);
    }
}

/// Calls `each` with every complete line of `path` (without its newline) and
/// returns the length of an incomplete final line (0 if there is none).
fn for_each_line(
    path: &Path,
    mut each: impl FnMut(&[u8]) -> Result<(), TrailError>,
) -> Result<u64, TrailError> {
    let io = |source| TrailError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path).map_err(io)?);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(io)?;
        if read == 0 {
            return Ok(0);
        }
        match line.strip_suffix(b"\n") {
            Some(complete) => each(complete)?,
            None => return Ok(line.len() as u64),
        }
    }
}

/// An `flock` held for the guard's lifetime.
struct FlockGuard<'a>(&'a File);

impl<'a> FlockGuard<'a> {
    fn exclusive(file: &'a File, path: &Path) -> Result<Self, TrailError> {
        fs4::fs_std::FileExt::lock_exclusive(file).map_err(|source| TrailError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self(file))
    }

    fn shared(file: &'a File, path: &Path) -> Result<Self, TrailError> {
        fs4::fs_std::FileExt::lock_shared(file).map_err(|source| TrailError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self(file))
    }
}

impl Drop for FlockGuard<'_> {
    fn drop(&mut self) {
        // flock(LOCK_UN) on a valid descriptor cannot fail in practice; if it did, the
        // lock would still end when the Trail (and its descriptor) is dropped.
        if let Err(err) = fs4::fs_std::FileExt::unlock(self.0) {
            tracing::warn!(%err, "could not release the trail lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn broken_at(trail: &Trail) -> (Option<u64>, Option<u64>, String) {
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
        assert!(problem.contains("altered"), "{problem}");
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
        assert!(problem.contains("record 2 was altered"), "{problem}");
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
        assert!(problem.contains("record 2 is missing"), "{problem}");

        let mut swapped = original.clone();
        swapped.swap(2, 3);
        rewrite(&trail, &swapped);
        let (line, _, _) = broken_at(&trail);
        assert_eq!(line, Some(3));

        let mut duplicated = original.clone();
        duplicated.insert(2, original[1].clone());
        rewrite(&trail, &duplicated);
        let (line, sequence, problem) = broken_at(&trail);
        assert_eq!((line, sequence), (Some(3), Some(2)));
        assert!(problem.contains("record 3 was expected"), "{problem}");

        let mut garbage = original.clone();
        garbage.insert(4, "{\"eventName\":\"Decrypt\"}".into());
        rewrite(&trail, &garbage);
        let (line, _, problem) = broken_at(&trail);
        assert_eq!(line, Some(5));
        assert!(problem.contains("atrestChain"), "{problem}");

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
                    ..
                }
            ),
            "{err}"
        );
        let beyond = Anchor {
            sequence: 9,
            record_hash: anchor.record_hash,
        };
        assert!(forged.validate_against(Some(&beyond)).is_err());
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
        assert!(problem.contains("removed from the end"), "{problem}");
        let err = trail
            .append(&call("Decrypt", KEY_A, KEY_A, 9))
            .expect_err("appending onto a cut trail would hide the cut");
        assert!(err.to_string().contains("refusing to append"), "{err}");
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
}
