//! [`ObjectReader`]: the decrypting body of a GET. Reads a window of segments at a
//! time, opens them in parallel, and serves the requested bytes; memory stays at one
//! window whatever the object's size.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::aead::{SegmentCipher, SEALED_SEG};
use crate::format::{sealed_len, segment_count, Summary, SEGMENT_SIZE};
use crate::Error;

/// Segments sealed or opened per batch: bounds the memory of one upload or download
/// (about twice this many 64 KiB segments) while giving every core work.
pub(crate) const WINDOW_SEGMENTS: usize = 32;

const SEG: u64 = SEGMENT_SIZE as u64;

/// The plaintext of one object, or of one range of it. Every byte it returns has
/// been authenticated; a tampered or truncated file gives [`Error::Corrupted`]
/// (through `Read`: an `io::Error` of kind `InvalidData` wrapping it).
pub struct ObjectReader {
    file: File,
    path: PathBuf,
    cipher: SegmentCipher,
    header_len: u64,
    summary: Summary,
    /// Next plaintext byte to return, and the end of the range (exclusive).
    pos: u64,
    end: u64,
    /// Segments still to load: `next_segment..=last_segment`.
    next_segment: u64,
    last_segment: u64,
    /// Opened segments `window_first..window_first + window_segments`, each at a
    /// multiple of `SEALED_SEG`.
    window: Vec<u8>,
    window_first: u64,
    window_segments: u64,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// A reader of plaintext bytes `start..end`. With `start == end` (only a whole
    /// empty object) it still authenticates the one empty segment.
    pub(crate) fn new(
        file: File,
        path: PathBuf,
        cipher: SegmentCipher,
        header_len: u64,
        summary: Summary,
        start: u64,
        end: u64,
    ) -> ObjectReader {
        let first = start / SEG;
        let last = if end > start { (end - 1) / SEG } else { first };
        ObjectReader {
            file,
            path,
            cipher,
            header_len,
            summary,
            pos: start,
            end,
            next_segment: first,
            last_segment: last,
            window: Vec::new(),
            window_first: 0,
            window_segments: 0,
        }
    }

    /// Bytes left to return.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    fn corrupted(&self, what: &str) -> Error {
        Error::Corrupted {
            path: self.path.clone(),
            what: what.to_owned(),
        }
    }

    /// Where in `window` the next bytes are; an empty range at the end.
    fn next_bytes(&mut self) -> Result<Range<usize>, Error> {
        loop {
            if self.pos < self.end {
                let segment = self.pos / SEG;
                if segment >= self.window_first
                    && segment < self.window_first + self.window_segments
                {
                    let base = ((segment - self.window_first) as usize) * SEALED_SEG;
                    let within = (self.pos - segment * SEG) as usize;
                    let stop = (self.end.min((segment + 1) * SEG) - segment * SEG) as usize;
                    return Ok(base + within..base + stop);
                }
            } else if self.next_segment > self.last_segment {
                return Ok(0..0);
            }
            self.load()?;
        }
    }

    /// Reads and opens the next window of segments.
    fn load(&mut self) -> Result<(), Error> {
        if self.next_segment > self.last_segment {
            return Err(self.corrupted("read past the last segment"));
        }
        let size = self.summary.plaintext_len;
        let count = (self.last_segment - self.next_segment + 1).min(WINDOW_SEGMENTS as u64);
        let last = self.next_segment + count - 1;
        let from = self.next_segment * SEALED_SEG as u64;
        let to = ((last + 1) * SEALED_SEG as u64).min(sealed_len(size));
        self.window.resize((to - from) as usize, 0);
        self.file
            .read_exact_at(&mut self.window, self.header_len + from)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    self.corrupted("the file was cut short")
                } else {
                    Error::Io {
                        context: format!("read {}", self.path.display()),
                        source: e,
                    }
                }
            })?;
        let is_final = last + 1 == segment_count(size);
        let summary = self.summary;
        self.cipher
            .open_batch(
                self.next_segment,
                &mut self.window,
                is_final.then_some(&summary),
            )
            .map_err(|_| self.corrupted("a segment failed authentication"))?;
        self.window_first = self.next_segment;
        self.window_segments = count;
        self.next_segment = last + 1;
        Ok(())
    }

    /// Writes the rest of the plaintext to `out`; returns the bytes written.
    pub fn write_to(mut self, out: &mut dyn Write) -> Result<u64, Error> {
        let mut written = 0u64;
        loop {
            let range = self.next_bytes()?;
            if range.is_empty() {
                return Ok(written);
            }
            let n = range.len();
            out.write_all(&self.window[range])
                .map_err(|source| Error::Io {
                    context: "write the object body".into(),
                    source,
                })?;
            self.pos += n as u64;
            written += n as u64;
        }
    }
}

fn to_io(err: Error) -> io::Error {
    let kind = match err {
        Error::Corrupted { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, err)
}

impl BufRead for ObjectReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let range = self.next_bytes().map_err(to_io)?;
        Ok(&self.window[range])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt as u64).min(self.end);
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}
