//! The EBS-style lifecycle of volumes: [`snapshot`], encrypted [`copy`], [`import`]
//! of a raw image, [`rewrap`] of a data key, the deliberate [`repair`] of disagreeing
//! header copies, and the swap of served volumes through an [`exports`] file.
//!
//! Every command that makes a volume builds it under `DST.partial`, fsyncs it and
//! renames it to `DST`, so an interrupted run leaves no half volume under `DST`; the
//! source is only ever opened read-only. Copies are sparse-aware: holes of the source
//! (and all-zero sectors) stay holes. Long work reports through [`Progress`], which
//! the CLI turns into a progress bar.

mod copy;
mod data_area;
pub mod exports;
pub mod repair;
mod rewrap;

pub use copy::{copy, import, snapshot, CopyReport, SnapshotReport, Target};
pub use rewrap::rewrap;

/// Receives the progress of a long copy. Implementations must be cheap: `advance` is
/// called once per chunk (a few MiB).
pub trait Progress: Send + Sync {
    /// The work is `total` bytes (the volume size).
    fn start(&self, total: u64);
    /// `bytes` more bytes are done (copied, or skipped as a hole).
    fn advance(&self, bytes: u64);
    /// The work is done (not called when it fails).
    fn finish(&self);
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}
