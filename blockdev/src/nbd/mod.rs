//! The NBD protocol and server.
//!
//! - [`proto`]: the wire format as pure functions over bytes (fuzzable, never panics).
//! - the server, in three rooms: listening and signals (`server`: [`Server`],
//!   [`ShutdownHandle`], [`stop_on_signals`]), the handshake (`negotiation`: option
//!   haggling and the one export admission check) and the transmission phase
//!   (`transmission`: requests, replies, [`errno`]), shared by TCP clients and the
//!   kernel's client. [`Server`] serves an [`ExportTable`] of [`Export`]s until its
//!   [`ShutdownHandle`] (or [`stop_on_signals`]) stops it; [`errno`] is the one
//!   mapping from [`crate::Error`] to NBD error values.
//! - connection limits (`limits`): [`Server::with_connection_limits`] takes the
//!   [`ConnectionLimits`], total and per source address, that the accept loop
//!   enforces before a connection gets a thread or a byte.
//! - the memory budget (`budget`): [`Server::with_memory_limit`] bounds the payload
//!   bytes in flight of all connections together, beyond a reserve each
//!   ([`CONNECTION_RESERVE`]); [`Server::memory_gauge`] reads them.
//! - [`kernel`]: the Linux kernel's NBD client over generic netlink (`atrest nbd
//!   attach`): `/dev/nbdN` served from this process over socket pairs.
//! - TLS: [`Server::with_tls`] takes [`TlsSettings`] (`NBD_OPT_STARTTLS`, client
//!   certificates); [`Export::allowed_clients`] names the [`ClientIdentity`]s an export
//!   admits, and [`Server::with_refusal_audit`] learns of every [`Refusal`].
//! - [`status`]: the status file a running server keeps under `$ATREST_HOME/run/nbd/`
//!   (exports, connected clients) for the console; [`Server::with_status`] feeds it.

mod budget;
pub mod kernel;
mod limits;
mod negotiation;
pub mod proto;
mod server;
pub mod status;
mod tls;
mod transmission;

pub use budget::{default_memory_limit, usable_memory, MemoryGauge, CONNECTION_RESERVE};
pub use limits::{ConnectionLimits, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_SOURCE};
pub use negotiation::MAX_REFUSALS_PER_NEGOTIATION;
pub use server::{
    stop_on_signals, Export, ExportTable, Refusal, RefusalAudit, Server, ShutdownHandle,
    DEFAULT_EXPORT, DEFAULT_HANDSHAKE_DEADLINE, MIN_TIMEOUT,
};
pub use tls::{
    check_record_opener, common_name, ClientIdentity, TlsCipher, TlsCiphers, TlsMode, TlsSettings,
};
pub use transmission::errno;
