//! `atrest volume create` and `atrest volume info`.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use blockdev::format::{self, CopyContent, Encryption, HeaderCopy, LocatedHeader, VolumeHeader};
use blockdev::lifecycle;
use blockdev::volume::{self, NewVolumeKey};
use blockdev::volume_key::VolumeKeyState;
use clap::{Args, Subcommand, ValueEnum};
use crypto_core::kms::EncryptionContext;
use serde::Serialize;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a sparse volume file, encrypted under a CMK (a fresh 512-bit data key) or
    /// unencrypted. Prints the volume's description as JSON.
    Create(CreateArgs),
    /// Describe a volume as JSON: id, size, encryption, key and its state, header copy.
    Info(InfoArgs),
    /// Point-in-time, read-only copy with the same encryption (a reflink clone where
    /// the filesystem can, else a sparse copy).
    Snapshot(super::lifecycle::SnapshotArgs),
    /// Copy under a fresh data key (EBS CopySnapshot): unencrypted to encrypted, or
    /// encrypted to encrypted under any CMK.
    Copy(super::lifecycle::CopyArgs),
    /// Encrypt an existing raw disk image into a new volume.
    Import(super::lifecycle::ImportArgs),
    /// Re-wrap the data key (ReEncrypt) under the CMK's newest material or another CMK.
    Rewrap(super::lifecycle::RewrapArgs),
    /// Choose between two header copies that disagree (e.g. a stray `dd` of another
    /// volume's header): --dry-run shows both, --use primary|backup keeps one and
    /// rewrites the other. Opening never makes that choice on its own.
    Repair(RepairArgs),
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The volume file.
    path: PathBuf,
    /// The header copy to keep; the other is overwritten with it.
    #[arg(
        long = "use",
        value_enum,
        value_name = "COPY",
        required_unless_present = "dry_run"
    )]
    keep: Option<CopyArg>,
    /// Show both copies (volume id, generation, key) and what would be kept; write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CopyArg {
    Primary,
    Backup,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The new volume file; it must not exist.
    path: PathBuf,
    /// Size: bytes, or with a suffix K/M/G/T (also KiB/MiB/GiB/TiB; powers of 1024) or
    /// KB/MB/GB/TB (powers of 1000). Must be a multiple of 4096.
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// The CMK that wraps the data key: key id, key ARN, alias/NAME or alias ARN.
    #[arg(
        long,
        required_unless_present = "unencrypted",
        conflicts_with = "unencrypted"
    )]
    key_id: Option<String>,
    /// Store data in the clear (the header still records id and size).
    #[arg(long)]
    unencrypted: bool,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The volume file. A file without a valid atrest header is an error naming each
    /// header copy's defect (raw images are declared when served, never detected).
    path: PathBuf,
}

pub fn run(cmd: VolumeCommand, globals: &Globals) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Create(args) => create(args, globals),
        VolumeCommand::Info(args) => info(args, globals),
        VolumeCommand::Snapshot(args) => super::lifecycle::snapshot(args, globals),
        VolumeCommand::Copy(args) => super::lifecycle::copy(args, globals),
        VolumeCommand::Import(args) => super::lifecycle::import(args, globals),
        VolumeCommand::Rewrap(args) => super::lifecycle::rewrap(args, globals),
        VolumeCommand::Repair(args) => repair(args),
    }
}

/// What `volume create` and `volume info` print (PascalCase, like AWS's DescribeVolumes).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct VolumeDescription {
    path: String,
    /// `atrest-volume-v1`.
    format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    volume_id: Option<String>,
    size: u64,
    encrypted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cipher: Option<&'static str>,
    /// The CMK's ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_state_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_context: Option<EncryptionContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sector_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_only: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    header_generation: Option<u64>,
    /// `primary` or `backup`: the header copy in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    header_copy: Option<&'static str>,
    /// Why the other header copy is not used; absent when both are sound.
    #[serde(skip_serializing_if = "Option::is_none")]
    header_warning: Option<String>,
    /// The file's length and the bytes it occupies on disk (a sparse volume shows how
    /// little of it is allocated).
    file_size: u64,
    allocated_bytes: u64,
}

impl VolumeDescription {
    fn new(path: &Path, located: &LocatedHeader) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let header = &located.header;
        let mut d = Self {
            path: path.display().to_string(),
            format: format!("atrest-volume-v{}", format::VERSION),
            volume_id: Some(header.volume_id().to_string()),
            size: header.size(),
            encrypted: false,
            cipher: Some(header.encryption().cipher_name()),
            key_id: None,
            key_state: None,
            key_state_reason: None,
            encryption_context: None,
            sector_size: Some(header.sector_size()),
            data_offset: Some(header.data_offset()),
            read_only: Some(header.is_read_only()),
            header_generation: Some(header.generation()),
            header_copy: Some(located.copy.name()),
            header_warning: located.warning.clone(),
            file_size: meta.len(),
            allocated_bytes: meta.blocks() * 512,
        };
        if let Encryption::Aes256XtsPlain64(wrapped) = header.encryption() {
            d.encrypted = true;
            d.key_id = Some(wrapped.key_arn.clone());
            d.encryption_context = Some(header.encryption_context());
        }
        Ok(d)
    }

    fn print(&self) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, self)?;
        writeln!(out).context("write to stdout")?;
        Ok(())
    }
}

fn create(args: CreateArgs, globals: &Globals) -> anyhow::Result<()> {
    let header = match &args.key_id {
        Some(key_id) => {
            let kms = globals.keys()?;
            volume::create(
                &args.path,
                args.size,
                NewVolumeKey::Kms { kms: &*kms, key_id },
            )
        }
        None => volume::create(&args.path, args.size, NewVolumeKey::Unencrypted),
    }?;
    let located = LocatedHeader {
        header,
        copy: format::HeaderCopy::Primary,
        warning: None,
    };
    VolumeDescription::new(&args.path, &located)?.print()
}

fn info(args: InfoArgs, globals: &Globals) -> anyhow::Result<()> {
    let path = &args.path;
    let file = volume::open_volume_file(path, false)?;
    let located = format::read_header(&file, path)?;
    let mut description = VolumeDescription::new(path, &located)?;
    if let Some(key_arn) = &description.key_id {
        let state = key_state(globals, key_arn);
        description.key_state = Some(state.name());
        description.key_state_reason = state.reason();
    }
    description.print()
}

/// What `volume repair` prints about one header copy.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct CopyDescription {
    copy: &'static str,
    offset: u64,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    defect: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    volume_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
}

impl CopyDescription {
    fn new(copy: HeaderCopy, content: &CopyContent) -> Self {
        let header = content.as_ref().ok();
        Self {
            copy: copy.name(),
            offset: copy.offset(),
            valid: header.is_some(),
            defect: content.as_ref().err().map(ToString::to_string),
            volume_id: header.map(|h| h.volume_id().to_string()),
            generation: header.map(VolumeHeader::generation),
            size: header.map(VolumeHeader::size),
            key_id: header.and_then(|h| h.encryption().key_arn().map(str::to_owned)),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RepairReport {
    path: String,
    primary: CopyDescription,
    backup: CopyDescription,
    /// What opening the volume does with these copies: the copy it would use, or why
    /// it refuses.
    on_open: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kept: Option<&'static str>,
    dry_run: bool,
}

fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let path = &args.path;
    let (primary, backup) = lifecycle::repair::inspect(path)?;
    let on_open = match format::choose_copy(path, primary.clone(), backup.clone()) {
        Ok(located) => format!("uses the {} copy", located.copy.name()),
        Err(err) => format!("refused: {err}"),
    };
    let keep = args.keep.map(|k| match k {
        CopyArg::Primary => HeaderCopy::Primary,
        CopyArg::Backup => HeaderCopy::Backup,
    });
    let mut report = RepairReport {
        path: path.display().to_string(),
        primary: CopyDescription::new(HeaderCopy::Primary, &primary),
        backup: CopyDescription::new(HeaderCopy::Backup, &backup),
        on_open,
        kept: None,
        dry_run: args.dry_run,
    };
    if let Some(keep) = keep {
        if !args.dry_run {
            lifecycle::repair::repair(path, keep)?;
        }
        report.kept = Some(keep.name());
    }
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &report)?;
    writeln!(out).context("write to stdout")?;
    Ok(())
}

/// The CMK's state as DescribeKey reports it (`Deleted` when the key no longer
/// exists), `Unknown` with the reason when the key service cannot be opened.
pub(super) fn key_state(globals: &Globals, key_arn: &str) -> VolumeKeyState {
    match globals.keys() {
        Ok(kms) => VolumeKeyState::describe(&*kms, key_arn),
        Err(err) => VolumeKeyState::Unknown {
            reason: format!("{err:#}"),
        },
    }
}

/// Parses `SIZE`: plain bytes, or a number with a unit. K, M, G, T, P and their
/// KiB.. forms are powers of 1024; KB, MB, GB, TB, PB are powers of 1000 (as
/// coreutils). Case-insensitive. The result must be a positive multiple of 4096.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let size = parse_bytes(text)?;
    let sector = u64::from(format::SECTOR_SIZE);
    if size == 0 || size % sector != 0 {
        return Err(format!(
            "{size} bytes is not a positive multiple of {sector} (the sector size)"
        ));
    }
    Ok(size)
}

/// Parses a number of bytes with [`parse_size`]'s units, any multiple (0 too).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(format!(
            "'{text}' is not a size: expected a number such as 4096, 512M or 10GiB"
        ));
    }
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is too large"))?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "p" | "pib" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        _ => {
            return Err(format!(
                "'{text}': unknown unit '{unit}' (use K, M, G, T, P, KiB.., KB..)"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("8k"), Ok(8192));
        assert_eq!(parse_size("4096000KB"), Ok(4_096_000_000));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse_size("1GB").unwrap_err().contains("multiple of 4096"));
        assert!(parse_size("4097").unwrap_err().contains("multiple of 4096"));
        assert!(parse_size("0").unwrap_err().contains("multiple of 4096"));
        assert!(parse_size("G").unwrap_err().contains("not a size"));
        assert!(parse_size("-4096").unwrap_err().contains("not a size"));
        assert!(parse_size("1.5G").unwrap_err().contains("unknown unit"));
        assert!(parse_size("12X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("100000P").unwrap_err().contains("too large"));
    }
}
