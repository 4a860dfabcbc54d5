//! How many connections the gateway holds: the limits in force, capped by the
//! descriptor limit (the counting by total and by source, and the rate-limited
//! warnings of refusals, are `blockdev::admission`, shared with the NBD server).

use std::time::Duration;

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
