//! The key service's time source. Deletion windows and rotation periods are days
//! long, so tests and lab walkthroughs move time instead of waiting for it.

use std::fmt;
use std::sync::Mutex;

use time::{Duration, OffsetDateTime};

use super::KmsError;

/// Where the key service reads the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock, shifted by a fixed offset (`ATREST_CLOCK_OFFSET`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock {
    offset: Duration,
}

impl SystemClock {
    /// The system time, unshifted.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that reads `offset` later than the system time (earlier if negative).
    pub fn with_offset(offset: Duration) -> Self {
        Self { offset }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc().saturating_add(self.offset)
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by` (back if negative).
    pub fn advance(&self, by: Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now = now.saturating_add(by);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: OffsetDateTime) {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Parses a clock offset: an optional sign, digits, and an optional unit `s`, `m`,
/// `h` or `d` (seconds when bare): `31d`, `-2h`, `90`.
pub fn parse_offset(text: &str) -> Result<Duration, KmsError> {
    let bad = || {
        KmsError::Validation(format!(
            "clock offset '{text}' is not a number with an optional unit s, m, h or d \
             (e.g. 31d, -2h, 90)"
        ))
    };
    let trimmed = text.trim();
    let (negative, rest) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    let (digits, unit_seconds) = match rest.char_indices().last() {
        Some((at, 's')) => (&rest[..at], 1i64),
        Some((at, 'm')) => (&rest[..at], 60),
        Some((at, 'h')) => (&rest[..at], 3600),
        Some((at, 'd')) => (&rest[..at], 86_400),
        Some(_) => (rest, 1),
        None => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let count: i64 = digits.parse().map_err(|_| bad())?;
    let seconds = count.checked_mul(unit_seconds).ok_or_else(bad)?;
    Ok(Duration::seconds(if negative { -seconds } else { seconds }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_with_units_and_signs() {
        assert_eq!(parse_offset("31d").unwrap(), Duration::days(31));
        assert_eq!(parse_offset("-2h").unwrap(), Duration::hours(-2));
        assert_eq!(parse_offset("+90m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_offset("45s").unwrap(), Duration::seconds(45));
        assert_eq!(parse_offset("120").unwrap(), Duration::seconds(120));
        for bad in [
            "",
            "d",
            "-",
            "1.5d",
            "3w",
            "abc",
            "99999999999999999999d",
            "1 d",
        ] {
            assert!(
                matches!(parse_offset(bad), Err(KmsError::Validation(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::days(7));
        assert_eq!(clock.now(), start + Duration::days(7));
        clock.set(start);
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn system_clock_offset_shifts_time() {
        let ahead = SystemClock::with_offset(Duration::days(31)).now();
        let now = SystemClock::new().now();
        assert!(ahead - now > Duration::days(30));
    }
}
