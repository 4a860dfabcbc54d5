//! [`Trail::append`]: records written in group commits, each chained onto the last
//! complete record after checking it and the head.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::MutexGuard;

use super::head::Head;
use super::record::{self, ChainLink, Event, RecordHash, GENESIS_HASH};
use super::{ApiCall, FlockGuard, RefusedRequest, RequestSource, Trail, TrailError, TrailProblem};

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
/// Appends of this process waiting to be written together.
#[derive(Debug, Default)]
pub(super) struct Batch {
    next_ticket: u64,
    queue: Vec<(u64, Entry)>,
    /// A thread is writing a batch: the others wait for it.
    writing: bool,
    /// Outcomes not yet collected by their callers.
    done: HashMap<u64, Result<(), TrailError>>,
}

/// The check an append can make from the end of the log alone: the head (which may
/// lag after a crash, never lead) must not name a record past the end, and must
/// agree with the last two records when it names one of them. `validate` checks the
/// head against whichever record it names.
fn check_head_at_tail(head: Head, last: Option<&ChainLink>) -> Result<(), TrailProblem> {
    let (sequence, hash, previous): (u64, RecordHash, RecordHash) = match last {
        Some(link) => (link.sequence, link.record_hash, link.previous_hash),
        None => (0, GENESIS_HASH, GENESIS_HASH),
    };
    if head.sequence > sequence {
        return Err(TrailProblem::RecordsRemoved {
            last: sequence,
            acknowledged: head.sequence,
        });
    }
    let disagrees = (head.sequence == sequence && head.hash != hash)
        || (head.sequence.checked_add(1) == Some(sequence) && head.hash != previous);
    if disagrees {
        return Err(TrailProblem::TailRewritten {
            acknowledged: head.sequence,
        });
    }
    Ok(())
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

/// The last record a [`Trail`] wrote, remembered so that the next append of the same
/// handle need not verify it again: while `trail.jsonl` still ends with exactly these
/// bytes at exactly this length, `record::verify` of its last line would return
/// `link` (the line is what `record::encode` made for `link`). Anything else (another
/// writer's record, a truncation, a rewrite) is verified as before.
#[derive(Debug)]
pub(super) struct WrittenRecord {
    /// Length of `trail.jsonl` just after the record (its newline included).
    end: u64,
    /// The record's line, without its newline.
    line: Vec<u8>,
    link: ChainLink,
}

impl WrittenRecord {
    /// The record's link if `tail` ends with it, as this handle wrote it.
    fn link_if_last(&self, tail: &Tail) -> Option<ChainLink> {
        let unchanged = tail.torn_len == 0
            && tail.complete_len == self.end
            && tail.last_line.as_deref() == Some(self.line.as_slice());
        unchanged.then_some(self.link)
    }
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

impl Trail {
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
        let mut guard = self.files();
        let files = &mut *guard;
        let written_before = files.last_written.take();
        let _lock = FlockGuard::exclusive(&files.log, &self.log_path)?;
        let tail = read_tail(&files.log).map_err(|source| self.log_io(source))?;
        let ours = written_before.and_then(|written| written.link_if_last(&tail));
        let last = match (&tail.last_line, ours) {
            (None, _) => None,
            (Some(_), Some(link)) => Some(link),
            (Some(line), None) => {
                Some(record::verify(line).map_err(|rejected| TrailError::Broken {
                    path: self.log_path.clone(),
                    line: None,
                    sequence: rejected.claimed_sequence,
                    problem: TrailProblem::LastRecordUnverified(Box::new(rejected.problem)),
                })?)
            }
        };
        let head = self.read_head(&files.head)?;
        check_head_at_tail(head, last.as_ref()).map_err(|problem| TrailError::Broken {
            path: self.head_path.clone(),
            line: None,
            sequence: Some(head.sequence),
            problem: TrailProblem::AppendRefused(Box::new(problem)),
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
        let mut newest_link = None;
        for (ticket, call) in calls {
            let sequence = newest
                .sequence
                .checked_add(1)
                .ok_or_else(|| TrailError::Broken {
                    path: self.log_path.clone(),
                    line: None,
                    sequence: Some(newest.sequence),
                    problem: TrailProblem::SequenceExhausted,
                })?;
            match record::encode(&call.event(), &self.origin, sequence, &newest.hash) {
                Ok((line, hash)) => {
                    lines.extend_from_slice(&line);
                    lines.push(b'\n');
                    newest_link = Some((
                        line,
                        ChainLink {
                            sequence,
                            previous_hash: newest.hash,
                            record_hash: hash,
                        },
                    ));
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
        files.last_written = newest_link.map(|(line, link)| WrittenRecord {
            end: tail.complete_len.saturating_add(lines.len() as u64),
            line,
            link,
        });
        newest.write(&files.head).map_err(|source| TrailError::Io {
            path: self.head_path.clone(),
            source,
        })
    }

    fn batch(&self) -> MutexGuard<'_, Batch> {
        self.batch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
