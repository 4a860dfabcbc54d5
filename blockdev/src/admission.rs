//! Admission of accepted connections, shared by the NBD server
//! ([`crate::nbd::ConnectionLimits`]) and the gateway (`gateway::server`): counting
//! open connections in total and per source address, the source rule, the warnings
//! of refusals logged at most once per interval, and the accept failures that call
//! for a pause. Each server keeps its own limits (what they are, how the descriptor
//! limit caps them, what a refused client is told); this is the counting they share.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Repeated warnings (refused connections, failing accepts) are logged at most once
/// per interval, with the count of those not logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The soft limit on open descriptors (`ulimit -n`, `prlimit --nofile`).
pub fn descriptor_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Whether `accept` failed for want of descriptors or memory, which lasts (as
/// opposed to a client that gave up on its pending connection): retrying at once
/// cannot cure it.
pub fn out_of_resources(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The "source" a per-source limit counts: an IPv4 address (also when it reaches
/// an IPv6 socket as `::ffff:a.b.c.d`), or an IPv6 /64, the block one host or
/// subscriber is usually given (counting single IPv6 addresses would let one host
/// open connections from 2^64 of them).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts open connections, in total and per source.
#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    max_per_source: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    /// Sources with at least one open connection (none with zero).
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// The total limit is reached.
    Total,
    /// The client's source has its limit open.
    Source,
}

/// One admitted connection; dropping it (when the connection ends, or it could not
/// be started) frees its place.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    /// At most `max_connections` open connections, `max_per_source` from one source.
    pub fn new(max_connections: usize, max_per_source: usize) -> Admission {
        Admission {
            max_connections,
            max_per_source,
            open: Mutex::new(OpenConnections::default()),
        }
    }

    /// A place for a connection from `ip`, if there is one.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Full> {
        let source = source_key(ip);
        let mut open = lock(&self.open);
        if open.total >= self.max_connections {
            return Err(Full::Total);
        }
        let from_source = open.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.max_per_source {
            return Err(Full::Source);
        }
        open.per_source.insert(source, from_source + 1);
        open.total += 1;
        Ok(Permit {
            admission: Arc::clone(self),
            source,
        })
    }

    /// The connections open now, and the sources they come from.
    pub fn open(&self) -> (usize, usize) {
        let open = lock(&self.open);
        (open.total, open.per_source.len())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = lock(&self.admission.open);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                open.per_source.remove(&self.source);
            }
        }
    }
}

/// A warning that may be logged at most once per [`LOG_INTERVAL`]: a flood of
/// refused connections or bad requests costs one line per interval, not one per
/// event.
#[derive(Debug, Default)]
pub struct RateLimitedLog {
    /// When a line was last logged, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    /// `Some(held back since the last line)` when a line may be logged now.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`RateLimitedLog::admit`] as of `now`.
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = lock(&self.state);
        match state.0 {
            Some(last) if now.saturating_duration_since(last) < LOG_INTERVAL => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = state.1;
                *state = (Some(now), 0);
                Some(held_back)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn admission_counts_total_and_per_source_and_frees_on_drop() {
        let admission = Arc::new(Admission::new(3, 2));
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let first = admission.admit(a).unwrap();
        let second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Full::Source);
        let third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Full::Total);
        // A place freed by `a` can go to `b`, up to `b`'s own limit.
        drop(first);
        let fourth = admission.admit(b).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Full::Total);
        drop(second);
        assert_eq!(admission.admit(b).unwrap_err(), Full::Source);
        let again = admission.admit(a).unwrap();
        drop((again, third, fourth));
        let (total, sources) = admission.open();
        assert_eq!(total, 0);
        assert_eq!(sources, 0, "no source is kept at zero");
    }

    #[test]
    fn ipv6_sources_are_counted_by_64_and_mapped_ipv4_as_ipv4() {
        let key = |text: &str| source_key(text.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(
            key("::ffff:192.0.2.7"),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
        );
    }

    #[test]
    fn only_a_lack_of_descriptors_or_memory_pauses_the_accept_loop() {
        let os = std::io::Error::from_raw_os_error;
        assert!(out_of_resources(&os(libc::EMFILE)));
        assert!(out_of_resources(&os(libc::ENFILE)));
        assert!(!out_of_resources(&os(libc::ECONNABORTED)));
        assert!(!out_of_resources(&std::io::ErrorKind::Interrupted.into()));
        assert!(!out_of_resources(&std::io::Error::other("other")));
    }

    #[test]
    fn a_burst_of_warnings_logs_one_line_and_counts_the_rest() {
        let log = RateLimitedLog::default();
        assert_eq!(log.admit(), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.admit(), None);
        }
        // As if the interval had passed: the next line tells how many were held back.
        assert_eq!(log.admit_at(Instant::now() + LOG_INTERVAL), Some(1000));
    }
}
