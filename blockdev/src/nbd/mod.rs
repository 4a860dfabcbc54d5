//! The NBD protocol and server.
//!
//! - [`proto`]: the wire format as pure functions over bytes (fuzzable, never panics).
//! - the server: [`Server`] serves an [`ExportTable`] of [`Export`]s until its
//!   [`ShutdownHandle`] (or [`stop_on_signals`]) stops it; [`errno`] is the one
//!   mapping from [`crate::Error`] to NBD error values.

pub mod proto;
mod server;

pub use server::{
    errno, stop_on_signals, Export, ExportTable, Server, ShutdownHandle, DEFAULT_EXPORT,
};
