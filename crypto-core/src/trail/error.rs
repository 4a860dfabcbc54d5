//! [`TrailError`]: what went wrong with the trail.

use std::path::PathBuf;

use thiserror::Error;

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
