//! How many TCP connections the NBD server holds: the limits in force (capped by the
//! descriptor limit), the admission of each accepted connection by total and by
//! source address, and the warnings of refusals, logged at most once per interval.
//! The vocabulary is the gateway's (`gateway::server`, `--max-connections`,
//! `--max-connections-per-source`); a refused NBD client is closed before the
//! greeting rather than answered, since NBD has no "come back later" before
//! negotiation (docs/SECURITY.md, "NBD connection limits").

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::server::lock;

/// `--max-connections`: open NBD connections, all clients together.
pub const DEFAULT_MAX_CONNECTIONS: NonZeroUsize = NonZeroUsize::new(128).unwrap();
/// `--max-connections-per-source`: open NBD connections from one IP address (or
/// IPv6 /64).
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: NonZeroUsize = NonZeroUsize::new(32).unwrap();
/// Descriptors never given to connections: volume files, the trail, the status
/// file, the listener, the signal pipe.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Descriptors one connection may hold: its socket and the clones its reader,
/// writer and the shutdown table keep.
const DESCRIPTORS_PER_CONNECTION: u64 = 4;
/// Repeated warnings (refused connections, failing accepts) are logged at most once
/// per interval, with the count of those not logged.
pub(super) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How many TCP connections an NBD server holds open, counted from accept to close,
/// handshake and transmission alike, TLS or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections, all sources together; more are closed at once.
    pub max_connections: NonZeroUsize,
    /// Open connections from one source (an IPv4 address, or an IPv6 /64); more
    /// are closed at once.
    pub max_per_source: NonZeroUsize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        }
    }
}

impl ConnectionLimits {
    /// The limits in force when the process may open `descriptors` files: at most
    /// a quarter of what is left after 64 kept for files and the listener (each
    /// connection holds up to 4 descriptors), at least one; one source never more
    /// than all of them. Unlike the gateway, one source may take every
    /// connection: the NBD server listens on the loopback by default, where every
    /// client is the same source, and an operator who sets `--max-connections 4`
    /// for one `nbdcopy` means it.
    pub fn within(self, descriptors: Option<u64>) -> ConnectionLimits {
        let max_connections = match descriptors {
            Some(n) => {
                let room = usize::try_from(
                    n.saturating_sub(RESERVED_DESCRIPTORS) / DESCRIPTORS_PER_CONNECTION,
                )
                .unwrap_or(usize::MAX);
                NonZeroUsize::new(self.max_connections.get().min(room)).unwrap_or(NonZeroUsize::MIN)
            }
            None => self.max_connections,
        };
        ConnectionLimits {
            max_connections,
            max_per_source: self.max_per_source.min(max_connections),
        }
    }
}

/// The soft limit on open descriptors (`ulimit -n`, `prlimit --nofile`).
pub(super) fn descriptor_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Whether `accept` failed for want of descriptors or memory, which lasts (as
/// opposed to a client that gave up on its pending connection).
pub(super) fn out_of_resources(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The "source" the per-source limit counts: an IPv4 address (also when it reaches
/// an IPv6 socket as `::ffff:a.b.c.d`), or an IPv6 /64, the block one host or
/// subscriber is usually given (counting single IPv6 addresses would let one host
/// open connections from 2^64 of them).
pub(super) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// Counts open connections, in total and per source.
#[derive(Debug)]
pub(super) struct Admission {
    limits: ConnectionLimits,
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
pub(super) enum Full {
    /// [`ConnectionLimits::max_connections`] are open.
    Total,
    /// [`ConnectionLimits::max_per_source`] are open from the client's source.
    Source,
}

/// One admitted connection; dropping it (when the connection's thread ends, or it
/// could not be started) frees its place.
#[derive(Debug)]
pub(super) struct Permit {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    pub(super) fn new(limits: ConnectionLimits) -> Admission {
        Admission {
            limits,
            open: Mutex::new(OpenConnections::default()),
        }
    }

    /// A place for a connection from `ip`, if there is one.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Full> {
        let source = source_key(ip);
        let mut open = lock(&self.open);
        if open.total >= self.limits.max_connections.get() {
            return Err(Full::Total);
        }
        let from_source = open.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.max_per_source.get() {
            return Err(Full::Source);
        }
        open.per_source.insert(source, from_source + 1);
        open.total += 1;
        Ok(Permit {
            admission: Arc::clone(self),
            source,
        })
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
/// refused connections or failing accepts costs one line per interval, not one per
/// event.
#[derive(Debug, Default)]
pub(super) struct RateLimitedLog {
    /// When a line was last logged, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    /// `Some(held back since the last line)` when a line may be logged now.
    pub(super) fn admit(&self) -> Option<u64> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
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

    fn limits(total: usize, per_source: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: NonZeroUsize::new(total).unwrap(),
            max_per_source: NonZeroUsize::new(per_source).unwrap(),
        }
    }

    #[test]
    fn limits_fit_the_descriptor_limit() {
        let defaults = ConnectionLimits::default();
        assert_eq!(defaults.within(None), defaults);
        assert_eq!(defaults.within(Some(1 << 20)), defaults);
        // ulimit -n 256: (256 - 64) / 4 = 48 connections, one source all of them.
        assert_eq!(defaults.within(Some(256)), limits(48, 32));
        assert_eq!(limits(100, 100).within(Some(256)), limits(48, 48));
        // Never below one connection.
        assert_eq!(defaults.within(Some(10)), limits(1, 1));
        // An operator's small limits are kept as given.
        assert_eq!(limits(4, 4).within(Some(1024)), limits(4, 4));
    }

    #[test]
    fn admission_counts_total_and_per_source_and_frees_on_drop() {
        let admission = Arc::new(Admission::new(limits(3, 2)));
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
        let open = lock(&admission.open);
        assert_eq!(open.total, 0);
        assert!(open.per_source.is_empty(), "no source is kept at zero");
    }

    #[test]
    fn ipv6_sources_are_counted_by_64_and_mapped_ipv4_as_ipv4() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(one), source_key(same_64));
        assert_ne!(source_key(one), source_key(other_64));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    }

    #[test]
    fn only_a_lack_of_descriptors_or_memory_pauses_the_accept_loop() {
        let os = std::io::Error::from_raw_os_error;
        assert!(out_of_resources(&os(libc::EMFILE)));
        assert!(out_of_resources(&os(libc::ENFILE)));
        assert!(!out_of_resources(&os(libc::ECONNABORTED)));
        assert!(!out_of_resources(&std::io::ErrorKind::Interrupted.into()));
    }

    #[test]
    fn a_burst_of_warnings_logs_one_line_and_counts_the_rest() {
        let log = RateLimitedLog::default();
        assert_eq!(log.admit(), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.admit(), None);
        }
        // As if the interval had passed: the next line tells how many were held back.
        lock(&log.state).0 = Instant::now().checked_sub(LOG_INTERVAL);
        assert_eq!(log.admit(), Some(1000));
    }
}
