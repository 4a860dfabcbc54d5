//! [`TrailError`]: what went wrong with the trail, and [`TrailProblem`]: why a
//! stored trail does not verify. The messages are what `atrest trail validate`
//! prints; callers and tests match the variants.

use std::path::PathBuf;

use thiserror::Error;

pub use super::head::HeadDefect;

/// A failure of the audit trail: the host's (I/O), the stored files' (they do not
/// verify) or the caller's (a record that cannot be encoded).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrailError {
    /// The trail's files could not be created, read or written (the host's fault).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The stored trail does not verify: a record was altered, removed, reordered or
    /// inserted, or a file is damaged. Names the first bad place found.
    #[error("{}{}: {problem}", path.display(), locate(*line, *sequence))]
    Broken {
        /// The file that does not verify (`trail.jsonl`, `trail.head`, a digest).
        path: PathBuf,
        /// 1-based line of `trail.jsonl`, when the problem is on one line.
        line: Option<u64>,
        /// The sequence number of the record concerned, when known.
        sequence: Option<u64>,
        /// What is wrong there.
        problem: TrailProblem,
    },
    /// A record could not be encoded (the caller's request parameters were not
    /// serialisable JSON).
    #[error("cannot encode a trail record: {0}")]
    Encode(#[from] serde_json::Error),
}

impl TrailError {
    /// The same failure, reported to another caller of the same failed batch.
    pub(super) fn for_another_caller(&self) -> TrailError {
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

/// Why a stored trail (its log, its head or its signed digests) does not verify.
/// The text is what `atrest trail validate` prints after the place
/// ([`TrailError::Broken`] names the file, line and record).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TrailProblem {
    // ---- one record (trail/record.rs) ----
    /// The line is not JSON (`detail`: the parser's message).
    #[error("not a JSON record ({detail})")]
    NotJson {
        /// The JSON parser's message.
        detail: String,
    },
    /// The line is JSON without an `atrestChain` object.
    #[error("no atrestChain field: not a trail record")]
    NoChain,
    /// `atrestChain.sequence` is missing, zero, negative or not an integer.
    #[error("atrestChain.sequence is not a positive integer")]
    BadSequence,
    /// `atrestChain.previousHash` is not 64 lowercase hex digits.
    #[error("atrestChain.previousHash is not 64 hex digits")]
    BadPreviousHash,
    /// `atrestChain.recordHash` is missing.
    #[error("atrestChain.recordHash is missing")]
    MissingRecordHash,
    /// `atrestChain.recordHash` is not 64 lowercase hex digits.
    #[error("atrestChain.recordHash is not 64 hex digits")]
    BadRecordHash,
    /// The line does not end with its `recordHash` field, where the hash is checked.
    #[error("the record does not end with its atrestChain.recordHash")]
    HashNotLast,
    /// The line's bytes do not hash to its `recordHash`: the record was edited.
    #[error("the record was altered: its bytes do not match its recordHash")]
    HashMismatch,

    // ---- the chain (trail/validate.rs) ----
    /// Records `expected` to `found - 1` are missing before record `found`.
    #[error("{} missing before this line (deleted or moved)", missing(*expected, *found))]
    SequenceGap {
        /// The sequence number the line should have had.
        expected: u64,
        /// The sequence number it has.
        found: u64,
    },
    /// The line's sequence number is lower than `expected`.
    #[error("record {expected} was expected here: records were reordered, duplicated or inserted")]
    OutOfOrder {
        /// The sequence number the line should have had.
        expected: u64,
    },
    /// The record's `previousHash` is not the hash of record `previous`.
    #[error(
        "does not chain to the record before it: record {previous} was altered and \
         rehashed, or this record was forged"
    )]
    ChainMismatch {
        /// The record before it.
        previous: u64,
    },
    /// The record differs from the anchor given to `validate_against`.
    #[error(
        "differs from the anchored record: the trail was rewritten from here or earlier, \
         with every hash recomputed"
    )]
    AnchorMismatch,
    /// The anchored record is past the end of the trail.
    #[error("the anchored record is gone: the trail ends at record {last}")]
    AnchorGone {
        /// The trail's last record.
        last: u64,
    },

    // ---- the head (trail/head.rs) ----
    /// The head names a record past the end of the log.
    #[error(
        "the trail ends at record {last} but record {acknowledged} was acknowledged: \
         records were removed from the end"
    )]
    RecordsRemoved {
        /// The log's last record.
        last: u64,
        /// The record the head acknowledged.
        acknowledged: u64,
    },
    /// The record the head names has another hash than the head says.
    #[error(
        "record {acknowledged} differs from the one acknowledged: the trail was rewritten \
         from there or earlier"
    )]
    HeadMismatch {
        /// The record the head acknowledged.
        acknowledged: u64,
    },
    /// What an append sees of [`TrailProblem::HeadMismatch`]: the head disagrees with
    /// one of the last two records.
    #[error(
        "record {acknowledged} differs from the one acknowledged: the end of the trail was \
         rewritten"
    )]
    TailRewritten {
        /// The record the head acknowledged.
        acknowledged: u64,
    },
    /// `trail.head` cannot be read as a head.
    #[error("head file is damaged ({0})")]
    HeadDamaged(HeadDefect),

    // ---- an append (trail/append.rs) ----
    /// The last record does not verify, so nothing is chained onto it.
    #[error("last record does not verify, refusing to append: {0}")]
    LastRecordUnverified(Box<TrailProblem>),
    /// The head disagrees with the end of the log, so nothing is appended.
    #[error("refusing to append: {0}")]
    AppendRefused(Box<TrailProblem>),
    /// The last record's sequence number is `u64::MAX`.
    #[error("the last record's sequence number cannot grow")]
    SequenceExhausted,

    // ---- signed digests (trail/digest.rs) ----
    /// `digest.key` does not hold a hex Ed25519 seed.
    #[error("not a 64-hex-digit Ed25519 seed")]
    BadSigningKey,
    /// A digest file is larger than any digest.
    #[error("the digest file is too large")]
    DigestTooLarge,
    /// A digest file is not a digest (`detail`: the parser's message).
    #[error("not a digest file ({detail})")]
    NotADigest {
        /// The JSON parser's message.
        detail: String,
    },
    /// The trail's length does not fit a digest's offsets.
    #[error("the trail is too long")]
    TrailTooLong,
    /// The digest sequence number cannot grow.
    #[error("the digest sequence overflowed")]
    DigestSequenceOverflow,
    /// A digest is missing from the sequence.
    #[error("this digest is missing (deleted)")]
    DigestMissing,
    /// The digest's format version is not one this build reads.
    #[error("digest format version {version} is unknown")]
    DigestVersion {
        /// The version the digest says.
        version: u32,
    },
    /// The digest was signed by another key than the trail's first digest.
    #[error("signed by key {key}, not the trail's key {trail_key}")]
    DigestKeyMismatch {
        /// The digest's public key (hex).
        key: String,
        /// The trail's public key (hex).
        trail_key: String,
    },
    /// The digest's public key is not 64 hex digits.
    #[error("the public key is not 64 hex digits")]
    DigestKeyNotHex,
    /// The digest's public key is not an Ed25519 point.
    #[error("not an Ed25519 key")]
    DigestKeyInvalid,
    /// The digest's signature is not 128 hex digits.
    #[error("the signature is not 128 hex digits")]
    SignatureNotHex,
    /// The signature does not verify over the digest.
    #[error("the signature does not verify: the digest was altered")]
    SignatureInvalid,
    /// The digest's `previousSignature` is not the previous digest's signature.
    #[error("previousSignature is not the previous digest's signature: a digest was replaced")]
    DigestChainBroken,
    /// The digest's byte range does not start where the previous one ended.
    #[error(
        "covers bytes {start}..{end} of the trail, but the previous digest ended at \
         {previous_end}"
    )]
    DigestRangeMismatch {
        /// First byte covered.
        start: u64,
        /// End (exclusive) of the bytes covered.
        end: u64,
        /// Where the previous digest ended.
        previous_end: u64,
    },
    /// The log ends before the records a digest signed.
    #[error(
        "the trail ends here, but digest {} signed {records} records up to sequence \
         {last}: the tail was truncated",
        digest.display()
    )]
    DigestedTailTruncated {
        /// The digest file.
        digest: PathBuf,
        /// Records the digest signed.
        records: usize,
        /// The last record it signed.
        last: u64,
    },
    /// A line differs from the one a digest signed.
    #[error(
        "this record differs from the one digest {} signed (edited, deleted, inserted or \
         reordered)",
        digest.display()
    )]
    DigestedRecordDiffers {
        /// The digest file.
        digest: PathBuf,
    },
    /// The log's bytes in a digest's range differ from what it signed.
    #[error(
        "bytes {start}..{end} differ from what digest {} signed",
        digest.display()
    )]
    DigestedBytesDiffer {
        /// First byte covered.
        start: u64,
        /// End (exclusive) of the bytes covered.
        end: u64,
        /// The digest file.
        digest: PathBuf,
    },
}

/// "record N is" or "records N to M are", for [`TrailProblem::SequenceGap`].
fn missing(expected: u64, found: u64) -> String {
    if found == expected + 1 {
        format!("record {expected} is")
    } else {
        format!("records {expected} to {} are", found - 1)
    }
}
