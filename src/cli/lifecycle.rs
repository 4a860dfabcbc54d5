//! `atrest volume snapshot | copy | import | rewrap`, and what `atrest nbd serve` needs
//! to serve volumes under a data-key lease (`--on-key-disable`,
//! `--key-check-interval`, the exports file).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use blockdev::format::VolumeHeader;
use blockdev::lease::{self, LeaseConfig, OnKeyDisable};
use blockdev::lifecycle::exports::{self, ExportSpec};
use blockdev::lifecycle::{self, Progress, Target};
use blockdev::volume::ImageFormat;
use clap::{Args, ValueEnum};
use crypto_core::kms::{KeyService, KeystoreGeneration};
use gateway::keys::Keys;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::Globals;

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The volume to snapshot; only read.
    src: PathBuf,
    /// The snapshot to create.
    dst: PathBuf,
    /// SRC is a raw image (no atrest header): copy it as it is and make the copy
    /// read-only by its mode. Without it SRC must be an atrest volume.
    #[arg(long)]
    raw: bool,
    /// Replace DST if it exists (refused while a server has DST open for writing).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The volume to copy; only read.
    src: PathBuf,
    /// The copy to create.
    dst: PathBuf,
    /// The CMK of the copy (default: the source's CMK). Key id, ARN or alias.
    #[arg(long, conflicts_with = "unencrypted")]
    key_id: Option<String>,
    /// Make an unencrypted copy (refused for an encrypted source, as EBS refuses it).
    #[arg(long)]
    unencrypted: bool,
    /// Replace DST if it exists (refused while a server has DST open for writing).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The raw disk image to encrypt; only read.
    raw: PathBuf,
    /// The volume to create.
    dst: PathBuf,
    /// The CMK that wraps the new data key. Key id, ARN or alias.
    #[arg(long)]
    key_id: String,
    /// Replace DST if it exists (refused while a server has DST open for writing).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// The encrypted volume whose data key to re-wrap (its data is not touched).
    path: PathBuf,
    /// The CMK to wrap the data key under (default: the current CMK, newest material).
    #[arg(long)]
    key_id: Option<String>,
}

/// What `atrest nbd serve` does when a volume's CMK becomes unusable.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OnKeyDisableArg {
    /// Zeroize the data key: I/O fails (EIO) until the key is enabled again.
    Revoke,
    /// Keep serving attached clients (AWS's behaviour); refuse new attaches.
    KeepAttached,
}

#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// When a volume's CMK is disabled, pending deletion, deleted or denied.
    #[arg(long, value_enum, default_value = "revoke")]
    on_key_disable: OnKeyDisableArg,
    /// How often the CMK is re-checked (e.g. 1s, 250ms, 2m); the local keystore is
    /// also watched, so a change is seen within about 50 ms.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = super::parse_duration)]
    key_check_interval: Duration,
}

impl LeaseArgs {
    fn config(&self) -> LeaseConfig {
        LeaseConfig {
            on_key_disable: match self.on_key_disable {
                OnKeyDisableArg::Revoke => OnKeyDisable::Revoke,
                OnKeyDisableArg::KeepAttached => OnKeyDisable::KeepAttached,
            },
            check_interval: self.key_check_interval,
        }
    }
}

/// A progress bar on a terminal's stderr; nothing when stderr is piped.
struct Bar(ProgressBar);

impl Bar {
    fn new(what: &str) -> Bar {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        Bar(bar)
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// What the lifecycle commands print (PascalCase, like `volume info`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Made {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    volume_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    encrypted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    header_generation: Option<u64>,
    /// snapshot: the filesystem shared the source's blocks (FICLONE).
    #[serde(skip_serializing_if = "Option::is_none")]
    reflinked: Option<bool>,
    /// copy/import: bytes that held data and were re-encrypted.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_bytes: Option<u64>,
    /// copy/import: bytes skipped as holes or zeros (holes in the new volume).
    #[serde(skip_serializing_if = "Option::is_none")]
    hole_bytes: Option<u64>,
}

impl Made {
    fn new(path: &Path, header: Option<&VolumeHeader>) -> Made {
        let key_id = header.and_then(|h| h.encryption().key_arn().map(str::to_owned));
        Made {
            path: path.display().to_string(),
            volume_id: header.map(|h| h.volume_id().to_string()),
            size: header.map(VolumeHeader::size),
            encrypted: key_id.is_some(),
            key_id,
            read_only: header.is_some_and(VolumeHeader::is_read_only),
            header_generation: header.map(VolumeHeader::generation),
            reflinked: None,
            data_bytes: None,
            hole_bytes: None,
        }
    }

    fn print(&self) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, self)?;
        writeln!(out).context("write to stdout")?;
        Ok(())
    }
}

pub fn snapshot(args: SnapshotArgs, _globals: &Globals) -> anyhow::Result<()> {
    let bar = Bar::new("snapshot");
    let format = if args.raw {
        ImageFormat::Raw
    } else {
        ImageFormat::Atrest
    };
    let report = lifecycle::snapshot(&args.src, format, &args.dst, args.force, &bar)?;
    let mut made = Made::new(&args.dst, report.header.as_ref());
    made.read_only = true;
    made.reflinked = Some(report.reflinked);
    made.print()
}

pub fn copy(args: CopyArgs, globals: &Globals) -> anyhow::Result<()> {
    let kms = globals.keys()?;
    let target = match (&args.key_id, args.unencrypted) {
        (Some(key_id), _) => Target::Key(key_id),
        (None, true) => Target::Unencrypted,
        (None, false) => Target::SourceKey,
    };
    let bar = Bar::new("copy");
    let report = lifecycle::copy(&args.src, &args.dst, &*kms, target, args.force, &bar)?;
    let mut made = Made::new(&args.dst, Some(&report.header));
    made.data_bytes = Some(report.data_bytes);
    made.hole_bytes = Some(report.hole_bytes);
    made.print()
}

pub fn import(args: ImportArgs, globals: &Globals) -> anyhow::Result<()> {
    let kms = globals.keys()?;
    let bar = Bar::new("import");
    let report = lifecycle::import(&args.raw, &args.dst, &*kms, &args.key_id, args.force, &bar)?;
    let mut made = Made::new(&args.dst, Some(&report.header));
    made.data_bytes = Some(report.data_bytes);
    made.hole_bytes = Some(report.hole_bytes);
    made.print()
}

pub fn rewrap(args: RewrapArgs, globals: &Globals) -> anyhow::Result<()> {
    let kms = globals.keys()?;
    let header = lifecycle::rewrap(&args.path, &*kms, args.key_id.as_deref())?;
    Made::new(&args.path, Some(&header)).print()
}

/// Opens exports for `nbd serve`: encrypted volumes under a data-key lease that
/// watches the local keystore, the rest as they are. `read_only` forces every export
/// read-only.
pub fn open_exports(
    kms: &Keys,
    lease_args: &LeaseArgs,
    read_only: bool,
    specs: Vec<ExportSpec>,
) -> anyhow::Result<exports::ExportSet> {
    let config = lease_args.config();
    let service: Arc<dyn KeyService> = kms.service();
    let watch: Option<Arc<dyn KeystoreGeneration>> = kms.watch();
    let opener = move |spec: &ExportSpec| {
        lease::open_served(
            &spec.path,
            spec.format,
            Arc::clone(&service),
            watch.clone(),
            read_only || spec.read_only,
            config,
        )
    };
    Ok(exports::ExportSet::open(specs, Box::new(opener))?)
}
