//! How many connections the gateway holds: the limits in force (capped by the
//! descriptor limit), the admission of each connection by total and by source, and
//! the rate-limited warnings of refusals.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::GatewayError;

/// `--body-timeout`: a request body that makes no progress for this long ends its
/// connection.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(20);
/// `--max-connections`: open connections, all clients together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// `--max-connections-per-source`: open connections from one IP address.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 128;
/// Descriptors never given to connections: the keystore, the trail, object files,
/// the listener, the runtime's own.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Repeated warnings (refused requests, accept failures, refused connections) are
/// logged at most once per interval, with the count of those not logged.
pub(super) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How many connections a gateway holds open and how long it waits for a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections, all sources together; more are answered 503 SlowDown.
    pub max_connections: usize,
    /// Open connections from one IP address; more are answered 503 SlowDown.
    pub max_per_source: usize,
    /// A request body that makes no progress for this long ends the connection
    /// (400 RequestTimeout); so does a client that reads nothing of an answer for
    /// this long.
    pub body_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

impl ConnectionLimits {
    pub(super) fn check(&self) -> Result<(), GatewayError> {
        if self.max_connections == 0 || self.max_per_source == 0 {
            return Err(GatewayError::Config(
                "--max-connections and --max-connections-per-source must be at least 1".into(),
            ));
        }
        if self.body_timeout.is_zero() {
            return Err(GatewayError::Config(
                "--body-timeout must be more than 0 seconds".into(),
            ));
        }
        Ok(())
    }

    /// The limits in force when the process may open `descriptors` files: at most
    /// half of what is left after [`RESERVED_DESCRIPTORS`] (so each connection can
    /// have a file open besides its socket), and one source at most half of that (so
    /// a single address can never take every connection).
    pub fn within(self, descriptors: Option<u64>) -> ConnectionLimits {
        let max_connections = match descriptors {
            Some(n) => {
                let room = usize::try_from(n.saturating_sub(RESERVED_DESCRIPTORS) / 2)
                    .unwrap_or(usize::MAX)
                    .max(2);
                self.max_connections.min(room)
            }
            None => self.max_connections,
        };
        let per_source_room = if max_connections > 1 {
            max_connections / 2
        } else {
            1
        };
        ConnectionLimits {
            max_connections,
            max_per_source: self.max_per_source.min(per_source_room).max(1),
            body_timeout: self.body_timeout,
        }
    }
}

/// The soft limit on open descriptors (`ulimit -n`, `prlimit --nofile`).
pub(super) fn descriptor_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// A warning that may be logged at most once per [`LOG_INTERVAL`]: a burst of bad
/// requests or failing accepts costs one line per interval, not one per event.
#[derive(Debug, Default)]
pub(super) struct RateLimitedLog {
    /// When a line was last logged, and how many were held back since.
    pub(super) state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    /// `Some(held back since the last line)` when a line may be logged now.
    pub(super) fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
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

/// Counts open connections, in total and per source address.
#[derive(Debug)]
pub(super) struct Admission {
    pub(super) limits: ConnectionLimits,
    pub(super) open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
pub(super) struct OpenConnections {
    pub(super) total: usize,
    pub(super) per_source: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Full {
    Total,
    Source,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(super) struct Permit {
    admission: Arc<Admission>,
    source: IpAddr,
}

/// The "source" a per-source limit counts: an IPv4 address (also when it reaches
/// an IPv6 socket as `::ffff:a.b.c.d`), or an IPv6 /64, the block one host or
/// subscriber is usually given (counting single IPv6 addresses would let one host
/// open connections from 2^64 of them).
pub(super) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

impl Admission {
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Full> {
        let source = source_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.limits.max_connections {
            return Err(Full::Total);
        }
        let from_source = open.per_source.entry(source).or_insert(0);
        if *from_source >= self.limits.max_per_source {
            return Err(Full::Source);
        }
        *from_source += 1;
        open.total += 1;
        Ok(Permit {
            admission: Arc::clone(self),
            source,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                open.per_source.remove(&self.source);
            }
        }
    }
}
