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
//!
//! The work is split by what a reader looks for: [`Trail::append`] in `append`,
//! [`Trail::validate`] in `validate`, [`Trail::lookup`] in `lookup`, one record's
//! bytes in `record`, the head in `head`, signed digests in [`digest`], and
//! [`TrailError`] with its reasons ([`TrailProblem`]) in `error`.

mod append;
pub mod digest;
mod error;
mod head;
mod lookup;
mod record;
pub mod timer;
mod validate;

use append::Batch;
pub use error::{HeadDefect, TrailError, TrailProblem};
pub use lookup::{FoundRecord, LookupFilter, LookupPage};
pub use validate::{Anchor, ValidationReport};

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use head::Head;
use record::TrailOrigin;

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
    /// AWS error message when the call failed.
    pub error_message: Option<String>,
    /// Whether the call only reads (CloudTrail's `readOnly`).
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
    /// When the request was refused.
    pub event_time: time::OffsetDateTime,
    /// The endpoint that refused it.
    pub event_source: EventSource,
    /// The operation asked for (`GenerateDataKey`, `GetObject`), or `Unknown` when
    /// the request did not name one the endpoint knows.
    pub event_name: String,
    /// Who the request was from, as far as it was proven.
    pub caller: RefusedCaller,
    /// AWS error name as the client was answered (`InvalidSignatureException`,
    /// `SignatureDoesNotMatch`, ...).
    pub error_code: String,
    /// The error message the client was answered with.
    pub error_message: String,
    /// What the request asked for, when known without trusting it (S3: `bucketName`,
    /// `key`); `null` otherwise.
    pub request_parameters: serde_json::Value,
    /// Whether the operation asked for only reads (CloudTrail's `readOnly`).
    pub read_only: bool,
    /// Where the request came from.
    pub source: RequestSource,
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

#[derive(Debug)]
struct TrailFiles {
    /// Opened for append: every write lands at the end whatever the offset.
    log: File,
    head: File,
    /// The last record this handle wrote, if its write and sync succeeded.
    last_written: Option<append::WrittenRecord>,
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
    let file = File::open(path).map_err(io)?;
    // Read in 256 KiB blocks, but never allocate more than the file needs: a 256 KiB
    // buffer for a short trail cost an mmap, page faults and an munmap per call.
    let len = file.metadata().map_err(io)?.len();
    let capacity = usize::try_from(len.saturating_add(1))
        .unwrap_or(usize::MAX)
        .clamp(4 * 1024, 256 * 1024);
    let mut reader = BufReader::with_capacity(capacity, file);
    // A line that lies whole in the buffer is handed over from there; only one split
    // across two reads is gathered in `partial`. Lines are found with `memchr` (vector
    // compares): `read_until` copied every line and, under a fuzzer, traced the
    // comparison of every byte.
    let mut partial = Vec::new();
    loop {
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(io(err)),
        };
        if buffer.is_empty() {
            return Ok(partial.len() as u64);
        }
        let mut start = 0;
        while let Some(len) = memchr::memchr(b'\n', &buffer[start..]) {
            let line = &buffer[start..start + len];
            if partial.is_empty() {
                each(line)?;
            } else {
                partial.extend_from_slice(line);
                each(&partial)?;
                partial.clear();
            }
            start += len + 1;
        }
        partial.extend_from_slice(&buffer[start..]);
        let read = buffer.len();
        reader.consume(read);
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
            files: Mutex::new(TrailFiles {
                log,
                head,
                last_written: None,
            }),
            batch: Mutex::new(Batch::default()),
            batch_written: Condvar::new(),
        })
    }

    /// Path of `trail.jsonl`.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn files(&self) -> MutexGuard<'_, TrailFiles> {
        // A thread that panicked while holding the lock left nothing half-done in
        // memory: the files are the state, and append re-reads them every time
        // (`last_written` is cleared before a write and set only after it).
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
                problem: TrailProblem::HeadDamaged(problem),
            })
    }

    fn log_io(&self, source: std::io::Error) -> TrailError {
        TrailError::Io {
            path: self.log_path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
