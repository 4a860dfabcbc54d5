//! Byte ranges of a GET, with S3's (RFC 9110's) semantics.

use std::fmt;

use crate::Error;

/// One byte range, as in `Range: bytes=...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=start-end` (`end` inclusive) or `bytes=start-`.
    From {
        /// First byte.
        start: u64,
        /// Last byte (inclusive); `None`: to the end.
        end: Option<u64>,
    },
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header value. `None` means "serve the whole object", which is
    /// what S3 does with a header it does not understand: another unit, several
    /// ranges, junk, or `end < start`.
    pub fn parse(header: &str) -> Option<ByteRange> {
        let spec = header.trim().strip_prefix("bytes=")?.trim();
        let (first, last) = spec.split_once('-')?;
        let number = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        if first.is_empty() {
            return number(last).map(ByteRange::Suffix);
        }
        let start = number(first)?;
        if last.is_empty() {
            return Some(ByteRange::From { start, end: None });
        }
        let end = number(last)?;
        (end >= start).then_some(ByteRange::From {
            start,
            end: Some(end),
        })
    }

    /// The first and last byte (inclusive) this range selects in an object of `size`
    /// bytes, or [`Error::InvalidRange`] when it selects none.
    pub fn resolve(self, size: u64) -> Result<(u64, u64), Error> {
        let unsatisfiable = || Error::InvalidRange {
            range: self.to_string(),
            size,
        };
        match self {
            ByteRange::From { start, end } => {
                if start >= size {
                    return Err(unsatisfiable());
                }
                let last = end.map_or(size - 1, |e| e.min(size - 1));
                if last < start {
                    return Err(unsatisfiable());
                }
                Ok((start, last))
            }
            ByteRange::Suffix(n) => {
                if n == 0 || size == 0 {
                    return Err(unsatisfiable());
                }
                Ok((size - n.min(size), size - 1))
            }
        }
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ByteRange::From { start, end: None } => write!(f, "bytes={start}-"),
            ByteRange::From {
                start,
                end: Some(end),
            } => write!(f, "bytes={start}-{end}"),
            ByteRange::Suffix(n) => write!(f, "bytes=-{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_forms() {
        assert_eq!(
            ByteRange::parse("bytes=0-99"),
            Some(ByteRange::From {
                start: 0,
                end: Some(99)
            })
        );
        assert_eq!(
            ByteRange::parse("bytes=5-"),
            Some(ByteRange::From {
                start: 5,
                end: None
            })
        );
        assert_eq!(ByteRange::parse("bytes=-7"), Some(ByteRange::Suffix(7)));
        for ignored in [
            "bytes=5-4",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(ByteRange::parse(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn resolve_like_s3() {
        let r = |s: &str| ByteRange::parse(s).unwrap();
        assert_eq!(r("bytes=0-99").resolve(10).unwrap(), (0, 9));
        assert_eq!(r("bytes=3-").resolve(10).unwrap(), (3, 9));
        assert_eq!(r("bytes=-3").resolve(10).unwrap(), (7, 9));
        assert_eq!(r("bytes=-30").resolve(10).unwrap(), (0, 9));
        assert_eq!(r("bytes=9-9").resolve(10).unwrap(), (9, 9));
        for (range, size) in [
            ("bytes=10-", 10),
            ("bytes=0-", 0),
            ("bytes=-0", 10),
            ("bytes=-1", 0),
        ] {
            let err = r(range).resolve(size).unwrap_err();
            assert_eq!(err.http_status(), 416, "{range} of {size}");
        }
    }

    proptest! {
        #[test]
        fn prop_display_parses_back(start in any::<u64>(), len in any::<u64>(), n in any::<u64>()) {
            let end = start.saturating_add(len);
            for range in [
                ByteRange::From { start, end: Some(end) },
                ByteRange::From { start, end: None },
                ByteRange::Suffix(n),
            ] {
                prop_assert_eq!(ByteRange::parse(&range.to_string()), Some(range));
            }
        }

        #[test]
        fn prop_resolved_ranges_lie_inside(header in "bytes=[0-9]{0,4}-[0-9]{0,4}", size in 0u64..5000) {
            if let Some(range) = ByteRange::parse(&header) {
                if let Ok((first, last)) = range.resolve(size) {
                    prop_assert!(first <= last && last < size);
                }
            }
        }
    }
}
