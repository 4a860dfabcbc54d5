//! `trail.head`: the sequence number and hash of the last acknowledged record.
//!
//! Without it, deleting the last records of the trail would leave a shorter chain
//! that is still valid. The head is one fixed-size line, rewritten in place after
//! every append (one sub-sector write, so it is either the old or the new line).
//!
//! The head is not synced: the record itself is (that is what makes a call
//! durable), and a second sync per call would halve the key service's throughput.
//! After a power loss the head may therefore lag behind the log; it never gets
//! ahead, because it is written after the record is synced.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::record::{parse_hash, RecordHash, GENESIS_HASH};

const MAGIC: &str = "atrest-trail-head 1";
/// `MAGIC`, space, 20-digit sequence, space, 64 hex digits, newline.
const HEAD_LEN: usize = MAGIC.len() + 1 + 20 + 1 + 64 + 1;

/// Why `trail.head` could not be read as a head ([`super::TrailProblem::HeadDamaged`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadDefect {
    /// The bytes are not UTF-8.
    #[error("not text")]
    NotText,
    /// The file is not one head line long.
    #[error("{len} bytes, expected {HEAD_LEN}")]
    WrongLength {
        /// The file's length in bytes (up to one more than a head).
        len: usize,
    },
    /// The line does not start with this format's magic.
    #[error("unknown head format")]
    UnknownFormat,
    /// The sequence number field is not a number.
    #[error("bad sequence number")]
    BadSequence,
    /// The hash field is not 64 lowercase hex digits.
    #[error("bad hash")]
    BadHash,
}

/// What the head file says about the end of the trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    /// 0 when no record has been acknowledged.
    pub sequence: u64,
    pub hash: RecordHash,
}

impl Head {
    pub(crate) const EMPTY: Head = Head {
        sequence: 0,
        hash: GENESIS_HASH,
    };

    fn encode(&self) -> String {
        format!("{MAGIC} {:020} {}\n", self.sequence, hex::encode(self.hash))
    }

    /// Parses the file's bytes; an empty file is a trail nothing was appended to.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Head, HeadDefect> {
        if bytes.is_empty() {
            return Ok(Head::EMPTY);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| HeadDefect::NotText)?;
        let body = text
            .strip_suffix('\n')
            .filter(|_| text.len() == HEAD_LEN)
            .ok_or(HeadDefect::WrongLength { len: text.len() })?;
        let mut fields = body.rsplitn(3, ' ');
        let (hash, sequence, magic) = (fields.next(), fields.next(), fields.next());
        if magic != Some(MAGIC) {
            return Err(HeadDefect::UnknownFormat);
        }
        let sequence = sequence
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(HeadDefect::BadSequence)?;
        let hash = hash.and_then(parse_hash).ok_or(HeadDefect::BadHash)?;
        Ok(Head { sequence, hash })
    }

    pub(crate) fn read(file: &File) -> std::io::Result<Result<Head, HeadDefect>> {
        let mut bytes = vec![0u8; HEAD_LEN + 1];
        let mut filled = 0;
        while filled < bytes.len() {
            match file.read_at(&mut bytes[filled..], filled as u64)? {
                0 => break,
                n => filled += n,
            }
        }
        bytes.truncate(filled);
        Ok(Head::decode(&bytes))
    }

    /// Overwrites the head (in the page cache; see the module notes).
    pub(crate) fn write(&self, file: &File) -> std::io::Result<()> {
        file.write_all_at(self.encode().as_bytes(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_round_trips_and_has_a_fixed_size() {
        for head in [
            Head::EMPTY,
            Head {
                sequence: u64::MAX,
                hash: [0xfe; 32],
            },
        ] {
            let text = head.encode();
            assert_eq!(text.len(), HEAD_LEN);
            assert_eq!(Head::decode(text.as_bytes()), Ok(head));
        }
    }

    #[test]
    fn damaged_heads_are_rejected_not_misread() {
        let good = Head {
            sequence: 42,
            hash: [1; 32],
        }
        .encode();
        assert_eq!(
            Head::decode(&good.as_bytes()[..HEAD_LEN - 1]),
            Err(HeadDefect::WrongLength { len: HEAD_LEN - 1 })
        );
        assert_eq!(
            Head::decode(good.replace("head 1", "head 2").as_bytes()),
            Err(HeadDefect::UnknownFormat)
        );
        assert_eq!(
            Head::decode(good.replace("42", "4x").as_bytes()),
            Err(HeadDefect::BadSequence)
        );
        assert_eq!(Head::decode(b"\xff\xfe"), Err(HeadDefect::NotText));
        assert_eq!(Head::decode(b""), Ok(Head::EMPTY));
    }
}
