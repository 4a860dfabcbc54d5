//! How many TCP connections the NBD server holds: the limits in force, capped by the
//! descriptor limit (the counting itself, by total and by source address, and the
//! rate-limited warnings of refusals are [`crate::admission`], shared with the
//! gateway). The vocabulary is the gateway's (`gateway::server`, `--max-connections`,
//! `--max-connections-per-source`); a refused NBD client is closed before the
//! greeting rather than answered, since NBD has no "come back later" before
//! negotiation (docs/SECURITY.md, "NBD connection limits").

use std::num::NonZeroUsize;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
