//! [`Trail::validate`]: every record, the chain between them, the head and an
//! optional anchor.

use std::path::PathBuf;

use super::record::{self, ChainLink, GENESIS_HASH};
use super::{for_each_line, FlockGuard, Trail, TrailError, TrailProblem, HEAD_FILE};

/// What `validate` found when the trail verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationReport {
    /// `trail.jsonl`.
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
    /// The record's sequence number.
    pub sequence: u64,
    /// The record's `recordHash`.
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

impl Trail {
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
            let link = record::verify(line)
                .map_err(|rejected| broken(rejected.claimed_sequence, rejected.problem))?;
            let expected = last.map_or(1, |l| l.sequence.saturating_add(1));
            let expected_previous = last.map_or(GENESIS_HASH, |l| l.record_hash);
            if link.sequence > expected {
                return Err(broken(
                    Some(link.sequence),
                    TrailProblem::SequenceGap {
                        expected,
                        found: link.sequence,
                    },
                ));
            }
            if link.sequence < expected {
                return Err(broken(
                    Some(link.sequence),
                    TrailProblem::OutOfOrder { expected },
                ));
            }
            if link.previous_hash != expected_previous {
                return Err(broken(
                    Some(link.sequence),
                    TrailProblem::ChainMismatch {
                        previous: link.sequence - 1,
                    },
                ));
            }
            if let Some(anchor) = anchor.filter(|a| a.sequence == link.sequence) {
                if anchor.record_hash != link.record_hash {
                    return Err(broken(Some(link.sequence), TrailProblem::AnchorMismatch));
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
                problem: TrailProblem::AnchorGone {
                    last: last_sequence,
                },
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
            None => Some(TrailProblem::RecordsRemoved {
                last: last_sequence,
                acknowledged: head.sequence,
            }),
            Some(hash) if hash != head.hash => Some(TrailProblem::HeadMismatch {
                acknowledged: head.sequence,
            }),
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
}
