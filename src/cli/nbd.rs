//! `atrest nbd serve`, `atrest serve`, and `atrest nbd attach`, `detach`, `list`.

use std::collections::BTreeMap;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context};
use blockdev::default_volume::{self, Made, SetupError, DEFAULT_KEY_ALIAS};
use blockdev::lease::{self, LeaseConfig};
use blockdev::lifecycle::exports::{self, ExportSpec};
use blockdev::nbd::status::{ExportStatus, ServerDescription, StatusBoard};
use blockdev::nbd::{
    self, kernel, ConnectionLimits, Export, Server, TlsCiphers, TlsMode, TlsSettings,
    DEFAULT_EXPORT,
};
use blockdev::refusal_audit;
use blockdev::volume::ImageFormat;
use clap::{Args, Subcommand, ValueEnum};
use crypto_core::trail::Trail;
use gateway::keys::Keys;

use super::{harden, Globals};

const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

#[derive(Debug, Subcommand)]
pub enum NbdCommand {
    /// Serve volumes over NBD until SIGINT or SIGTERM (then flush and exit 0).
    Serve(NbdServeArgs),
    /// Attach a volume as a Linux block device /dev/nbdN through the kernel's NBD
    /// driver (`modprobe nbd`), served by this process until SIGINT or SIGTERM (then
    /// write back, flush, disconnect and exit 0) or `atrest nbd detach`. Prints the
    /// device on stdout.
    Attach(AttachArgs),
    /// Disconnect /dev/nbdN, and wait until the `atrest nbd attach` serving it has
    /// flushed the volume and exited.
    Detach(DetachArgs),
    /// The connected NBD devices (JSON): volume, key, key state, serving process.
    List,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The volume file (encrypted or unencrypted).
    volume: PathBuf,
    /// /dev/nbdN, or `auto` for the first free device.
    #[arg(value_name = "DEVICE", required_unless_present = "device_flag")]
    device: Option<String>,
    /// The same as DEVICE.
    #[arg(long = "device", value_name = "DEVICE", conflicts_with = "device")]
    device_flag: Option<String>,
    /// Attach read-only (the volume is opened read-only too).
    #[arg(long)]
    read_only: bool,
    /// The file is a raw image: every byte is data (never guessed from its bytes).
    #[arg(long)]
    raw: bool,
    /// Connections to the kernel, one per hardware queue of the device (1 to 16;
    /// default: the number of CPUs, at most 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=16))]
    connections: Option<u8>,
    /// The device's logical block size: 512, 1024, 2048 or 4096 (default: the
    /// volume's, 4096). 512 for software that needs 512-byte sectors; small writes
    /// then cost a read-modify-write of the volume's 4096-byte sector.
    #[arg(long, value_name = "BYTES")]
    block_size: Option<u32>,
    /// How long the kernel waits for a reply before it retries a request on another
    /// connection, or fails it with one connection (whole seconds; default 120s).
    #[arg(long, value_name = "DUR", value_parser = super::parse_duration)]
    timeout: Option<std::time::Duration>,
    #[command(flatten)]
    lease: super::lifecycle::LeaseArgs,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// /dev/nbdN
    device: PathBuf,
    /// How long to wait for the serving process to flush and exit (e.g. 30s).
    #[arg(long, value_name = "DUR", default_value = "60s",
          value_parser = super::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct NbdServeArgs {
    /// Address to listen on; port 0 picks a free port. The bound address is printed
    /// to stderr as `listening on ADDR`.
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    listen: String,
    /// A volume to export, as NAME=PATH (repeatable). A client asking for the empty
    /// export name gets `default`, or the only export. PATH must be an atrest volume
    /// (a regular file or block device with a valid header) unless --raw NAME says
    /// it is a raw image; the format is never guessed from the file's bytes.
    #[arg(long = "export", value_name = "NAME=PATH", value_parser = parse_export,
          required_unless_present = "exports_file")]
    exports: Vec<(String, PathBuf)>,
    /// Serve the export NAME (given with --export) as a raw image: every byte of the
    /// file is data, whatever it holds, for as long as it is served so (repeatable).
    /// In an exports file: `format = "raw"`.
    #[arg(long = "raw", value_name = "NAME", conflicts_with = "exports_file")]
    raw: Vec<String>,
    /// Read the exports from a TOML file (`[[export]]` name, path, read_only,
    /// description, allowed_clients, format = "atrest" | "raw"), reloaded on SIGHUP: an export whose path changed
    /// is swapped to the new volume (its clients are disconnected cleanly).
    #[arg(long = "exports", value_name = "FILE", conflicts_with = "exports")]
    exports_file: Option<PathBuf>,
    /// Offer every export read-only (volumes are opened read-only too).
    #[arg(long)]
    read_only: bool,
    #[command(flatten)]
    lease: super::lifecycle::LeaseArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    limits: NbdLimitArgs,
}

/// How many NBD connections the server holds open (from accept to close), and the
/// payload bytes they may have in flight together.
#[derive(Clone, Copy, Debug, Args)]
pub struct NbdLimitArgs {
    /// Most open NBD connections, all clients together; more are closed at once,
    /// before the greeting. Lowered to fit the descriptor limit (ulimit -n) when
    /// that is smaller.
    #[arg(long, default_value_t = nbd::DEFAULT_MAX_CONNECTIONS, value_name = "N",
          value_parser = parse_count)]
    max_connections: NonZeroUsize,
    /// Most open NBD connections from one IP address (IPv6: one /64); more are
    /// closed at once. Every client on this machine is 127.0.0.1.
    #[arg(long, default_value_t = nbd::DEFAULT_MAX_CONNECTIONS_PER_SOURCE, value_name = "N",
          value_parser = parse_count)]
    max_connections_per_source: NonZeroUsize,
    /// Disconnect an attached client that sends nothing for this long (e.g. 10m),
    /// counted from its last byte even while a request of its runs. Default: never,
    /// since mounted filesystems and paused VMs idle for hours.
    #[arg(long, value_name = "DUR", value_parser = super::parse_duration)]
    idle_timeout: Option<std::time::Duration>,
    /// Most payload bytes in flight, all NBD clients together (e.g. 512M, 2G): read
    /// replies waiting to be sent, write payloads being received. Beyond it,
    /// requests wait their turn; each connection may still have 1 MiB in flight.
    /// Default: a quarter of the machine's memory (or its cgroup's limit), within
    /// 64 MiB..2 GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    max_memory: Option<NonZeroU64>,
}

impl NbdLimitArgs {
    /// `server` with these limits.
    fn apply(self, server: Server) -> Server {
        let server = server.with_connection_limits(ConnectionLimits {
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
        });
        let server = match self.max_memory {
            Some(limit) => server.with_memory_limit(limit),
            None => server,
        };
        match self.idle_timeout {
            Some(timeout) => server.with_idle_timeout(timeout),
            None => server,
        }
    }
}

/// `--max-memory`: a size of at least 1 byte, with the units of volume sizes.
fn parse_memory(text: &str) -> Result<NonZeroU64, String> {
    let bytes = super::volume::parse_bytes(text)?;
    NonZeroU64::new(bytes).ok_or_else(|| format!("'{text}' is not a size of at least 1 byte"))
}

/// A count of at least 1 (worded as the gateway's `--max-connections`).
fn parse_count(text: &str) -> Result<NonZeroUsize, String> {
    text.trim()
        .parse::<NonZeroUsize>()
        .map_err(|_| format!("'{text}' is not a count of at least 1"))
}

/// NBD over TLS (`NBD_OPT_STARTTLS`, TLS 1.3 only).
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Offer TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM). An export's
    /// `allowed_clients` then lists the certificate names (CN, DNS or URI SAN) it admits.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// `require` (the default with a certificate): nothing is listed or served before
    /// STARTTLS. `optional`: plaintext clients may use exports without allowed_clients.
    #[arg(long, value_enum, value_name = "MODE", requires = "tls_cert")]
    tls: Option<TlsModeArg>,
    /// The TLS 1.3 cipher suites to accept, most preferred first, comma-separated:
    /// aes128-gcm, aes256-gcm, chacha20-poly1305. With a list the server's order
    /// decides; without one all three are accepted and the client's choice wins.
    #[arg(long, value_name = "LIST", requires = "tls_cert")]
    tls_ciphers: Option<TlsCiphers>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TlsModeArg {
    Require,
    Optional,
}

impl TlsArgs {
    /// What the status file says of TLS: the mode when offered.
    fn mode_name(&self) -> Option<String> {
        self.tls_cert.as_ref()?;
        Some(
            match self.tls.unwrap_or(TlsModeArg::Require) {
                TlsModeArg::Require => "require",
                TlsModeArg::Optional => "optional",
            }
            .to_owned(),
        )
    }

    fn settings(&self) -> anyhow::Result<Option<TlsSettings>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let mode = match self.tls.unwrap_or(TlsModeArg::Require) {
            TlsModeArg::Require => TlsMode::Require,
            TlsModeArg::Optional => TlsMode::Optional,
        };
        let ciphers = self.tls_ciphers.clone().unwrap_or_default();
        let settings =
            TlsSettings::from_pem_files(cert, key, self.tls_client_ca.as_deref(), mode, &ciphers)?;
        Ok(Some(settings))
    }
}

/// Adds TLS and, with a local key service, the audit record of refused clients.
fn secure(
    server: Server,
    tls: Option<TlsSettings>,
    kms: &Keys,
    globals: &Globals,
) -> anyhow::Result<Server> {
    let Some(tls) = tls else {
        return Ok(server);
    };
    let mut server = server.with_tls(tls);
    if let Keys::Local(local) = kms {
        let dir = globals.home()?.join("trail");
        let trail = Trail::open(&dir, local.region(), local.account())
            .with_context(|| format!("opening the audit trail {}", dir.display()))?;
        server = server.with_refusal_audit(refusal_audit::recorder(trail));
    }
    Ok(server)
}

/// `atrest serve`: zero-config. On first run it creates the key `alias/atrest-default`
/// and a 1 GiB encrypted volume `<home>/volumes/default.vol`, then serves it as the
/// export `default`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    listen: String,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    limits: NbdLimitArgs,
}

fn parse_export(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, got {text:?}"))?;
    if name.is_empty() || name.len() > 4096 || name.contains('\0') {
        return Err(format!(
            "export name {name:?} must be 1 to 4096 bytes without NUL"
        ));
    }
    if path.is_empty() {
        return Err(format!("export {name:?} has no path"));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

pub fn run(cmd: NbdCommand, globals: &Globals) -> anyhow::Result<()> {
    match cmd {
        NbdCommand::Serve(args) => serve(args, globals),
        NbdCommand::Attach(args) => attach(args, globals),
        NbdCommand::Detach(args) => detach(&args),
        NbdCommand::List => list(globals),
    }
}

fn attach(args: AttachArgs, globals: &Globals) -> anyhow::Result<()> {
    harden()?;
    let device = args
        .device
        .or(args.device_flag)
        .context("name the device: /dev/nbdN or auto")?;
    let index = match device.as_str() {
        "auto" => None,
        path => Some(kernel::device_index(Path::new(path))?),
    };
    let path = std::fs::canonicalize(&args.volume)
        .with_context(|| format!("opening {}", args.volume.display()))?;
    let backend = format!("{}{}", kernel::BACKEND_PREFIX, path.display());
    let kms = globals.keys()?;
    let spec = ExportSpec {
        name: DEFAULT_EXPORT.to_owned(),
        description: Some(path.display().to_string()),
        path: path.clone(),
        read_only: args.read_only,
        allowed_clients: Vec::new(),
        format: if args.raw {
            ImageFormat::Raw
        } else {
            ImageFormat::Atrest
        },
    };
    // The set keeps the volume (and its key lease) for as long as the device is up.
    let set = super::lifecycle::open_exports(&kms, &args.lease, args.read_only, vec![spec])?;
    let export = set
        .table()
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(DEFAULT_EXPORT)
        .cloned()
        .context("the volume was not opened")?;
    let connections = args.connections.map_or_else(
        || {
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(4)
        },
        usize::from,
    );
    let request = kernel::AttachRequest {
        index,
        connections,
        backend: &backend,
        block_size: args.block_size,
        timeout: args.timeout,
    };
    let signals = kernel::StopSignals::catch()?;
    let attachment = kernel::attach(export, &request)
        .with_context(|| format!("attaching {}", path.display()))?;
    let device = format!("/dev/nbd{}", attachment.index());
    signals.stop(attachment.stopper())?;
    eprintln!(
        "attached {} as {device} ({connections} connections); SIGINT or SIGTERM, or \
         `atrest nbd detach {device}`, detaches",
        path.display()
    );
    println!("{device}");
    attachment
        .wait()
        .with_context(|| format!("{device}: flushing {}", path.display()))?;
    eprintln!("detached {device}");
    drop(set);
    Ok(())
}

fn detach(args: &DetachArgs) -> anyhow::Result<()> {
    let index = kernel::device_index(&args.device)?;
    let device = format!("/dev/nbd{index}");
    if !kernel::status()?
        .iter()
        .any(|d| d.index == index && d.connected)
    {
        bail!("{device} is not connected (see `atrest nbd list`)");
    }
    let server = kernel::pid_of(index);
    // Writes done through the device that still sit in its page cache go first.
    if let Err(err) = std::fs::File::options()
        .write(true)
        .open(&device)
        .and_then(|d| d.sync_all())
    {
        tracing::warn!("{device}: writing back its page cache: {err}");
    }
    kernel::disconnect(index)?;
    let Some(pid) = server.filter(|_| {
        kernel::backend_of(index).is_some_and(|b| b.starts_with(kernel::BACKEND_PREFIX))
    }) else {
        eprintln!("detached {device}");
        return Ok(());
    };
    let deadline = std::time::Instant::now() + args.timeout;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    while proc_dir.exists() {
        if std::time::Instant::now() >= deadline {
            bail!(
                "{device} is disconnected, but its `atrest nbd attach` (pid {pid}) has not \
                 exited within {:?}",
                args.timeout
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!("detached {device}; atrest nbd attach (pid {pid}) has flushed and exited");
    Ok(())
}

fn list(globals: &Globals) -> anyhow::Result<()> {
    let devices = kernel::status()?;
    let mut listed = Vec::new();
    for device in devices.iter().filter(|d| d.connected) {
        let backend = kernel::backend_of(device.index);
        let volume = backend
            .as_deref()
            .and_then(|b| b.strip_prefix(kernel::BACKEND_PREFIX))
            .map(PathBuf::from);
        let key_id = volume
            .as_deref()
            .and_then(|path| volume_key(path).ok().flatten());
        let (key_state, key_state_reason) = match &key_id {
            Some(arn) => {
                let state = super::volume::key_state(globals, arn);
                (Some(state.name()), state.reason())
            }
            None => (None, None),
        };
        listed.push(serde_json::json!({
            "Device": format!("/dev/nbd{}", device.index),
            "Backend": backend,
            "Volume": volume,
            "Encrypted": volume.as_ref().map(|_| key_id.is_some()),
            "KeyId": key_id,
            "KeyState": key_state,
            "KeyStateReason": key_state_reason,
            "Pid": kernel::pid_of(device.index),
        }));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "Devices": listed }))?
    );
    Ok(())
}

/// The CMK of a volume file, `None` when it is not encrypted.
fn volume_key(path: &Path) -> anyhow::Result<Option<String>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let located = blockdev::format::read_header(&file, path)?;
    Ok(located.header.encryption().key_arn().map(str::to_owned))
}

fn serve(args: NbdServeArgs, globals: &Globals) -> anyhow::Result<()> {
    harden()?;
    let kms = globals.keys()?;
    let specs = match &args.exports_file {
        Some(file) => exports::load_exports(file)?,
        None => {
            let mut specs: Vec<ExportSpec> = Vec::new();
            for (name, path) in args.exports {
                if specs.iter().any(|s| s.name == name) {
                    bail!("export {name:?} is given twice");
                }
                let format = if args.raw.contains(&name) {
                    ImageFormat::Raw
                } else {
                    ImageFormat::Atrest
                };
                specs.push(ExportSpec {
                    description: Some(path.display().to_string()),
                    name,
                    path,
                    read_only: false,
                    allowed_clients: Vec::new(),
                    format,
                });
            }
            if let Some(name) = args
                .raw
                .iter()
                .find(|n| !specs.iter().any(|s| &s.name == *n))
            {
                bail!("--raw {name:?} names no export: give it as --export {name}=PATH");
            }
            specs
        }
    };
    if args.tls.tls_client_ca.is_none() {
        if let Some(spec) = specs.iter().find(|s| !s.allowed_clients.is_empty()) {
            bail!(
                "export {:?} has allowed_clients, which only client certificates can enforce: \
                 serve with --tls-cert, --tls-key and --tls-client-ca",
                spec.name
            );
        }
    }
    let tls = args.tls.settings()?;
    let mut set = super::lifecycle::open_exports(&kms, &args.lease, args.read_only, specs)?;
    let server = args
        .limits
        .apply(Server::bind(args.listen.as_str(), set.table())?);
    let server = secure(server, tls, &kms, globals)?;
    let board = publish_status(
        globals,
        ServerDescription {
            listen: vec![server.local_addr().to_string()],
            tls: args.tls.mode_name(),
            client_certificates: args.tls.tls_client_ca.is_some(),
            exports_file: args
                .exports_file
                .as_ref()
                .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone())),
            exports: set.status(args.read_only),
        },
    );
    let server = match &board {
        Some(board) => {
            set.publish_to(Arc::clone(board), args.read_only);
            server.with_status(Arc::clone(board))
        }
        None => server,
    };
    nbd::stop_on_signals(server.shutdown_handle())?;
    if let Some(file) = args.exports_file {
        exports::reload_on_sighup(set, file, server.shutdown_handle())?;
    }
    eprintln!("listening on {}", server.local_addr());
    // Returns once every connection has finished and every volume is flushed; the
    // volumes (and their data keys, zeroized on drop) go when the table does.
    let served = server.run();
    // The reload thread keeps the board alive: remove the file now.
    if let Some(board) = &board {
        board.retire();
    }
    served?;
    Ok(())
}

/// The status file the console's exports page reads (`<home>/run/nbd/<pid>.json`).
/// Serving does not depend on it: a failure to write it is only reported.
fn publish_status(globals: &Globals, server: ServerDescription) -> Option<Arc<StatusBoard>> {
    let dir = match globals.home() {
        Ok(home) => home.join("run").join("nbd"),
        Err(err) => {
            tracing::warn!("no status file: {err}");
            return None;
        }
    };
    match StatusBoard::publish(&dir, server) {
        Ok(board) => Some(Arc::new(board)),
        Err(err) => {
            tracing::warn!("no status file in {}: {err}", dir.display());
            None
        }
    }
}

fn open_export(kms: &Keys, path: &Path, read_only: bool) -> anyhow::Result<Export> {
    let volume = lease::open_served(
        path,
        ImageFormat::Atrest,
        kms.service(),
        kms.watch(),
        read_only,
        LeaseConfig::default(),
    )
    .with_context(|| format!("opening {}", path.display()))?;
    Ok(Export {
        volume,
        read_only,
        description: Some(path.display().to_string()),
        allowed_clients: Vec::new(),
    })
}

fn run_server(
    (listen, limits): (&str, NbdLimitArgs),
    (table, exports): (BTreeMap<String, Export>, Vec<ExportStatus>),
    tls: (Option<TlsSettings>, &TlsArgs),
    kms: &Keys,
    globals: &Globals,
) -> anyhow::Result<()> {
    let (tls, tls_args) = tls;
    let server = limits.apply(Server::bind(listen, Arc::new(RwLock::new(table)))?);
    let server = secure(server, tls, kms, globals)?;
    let board = publish_status(
        globals,
        ServerDescription {
            listen: vec![server.local_addr().to_string()],
            tls: tls_args.mode_name(),
            client_certificates: tls_args.tls_client_ca.is_some(),
            exports_file: None,
            exports,
        },
    );
    let server = match board {
        Some(board) => server.with_status(board),
        None => server,
    };
    nbd::stop_on_signals(server.shutdown_handle())?;
    eprintln!("listening on {}", server.local_addr());
    // Returns once every connection has finished and every volume is flushed; the
    // volumes (and their data keys, zeroized on drop) go when the table does.
    server.run()?;
    Ok(())
}

pub fn serve_default(args: ServeArgs, globals: &Globals) -> anyhow::Result<()> {
    harden()?;
    let tls = args.tls.settings()?;
    let home = globals.home()?;
    let kms = globals.keys()?;
    let path = default_volume::ensure(&home, &*kms, &mut print_made).map_err(|err| match err {
        // A key-service refusal stays a KmsError: its AWS name decides the exit code.
        SetupError::Key(refusal) => anyhow::Error::from(refusal),
        other => other.into(),
    })?;
    let export = open_export(&kms, &path, false)?;
    let status = ExportStatus {
        name: DEFAULT_EXPORT.to_owned(),
        path: path.clone(),
        format: "atrest".into(),
        read_only: false,
        description: export.description.clone(),
        allowed_clients: Vec::new(),
    };
    run_server(
        (&args.listen, args.limits),
        (
            BTreeMap::from([(DEFAULT_EXPORT.to_owned(), export)]),
            vec![status],
        ),
        (tls, &args.tls),
        &kms,
        globals,
    )
}

/// Tells the user what first-run setup made.
fn print_made(made: Made<'_>) {
    match made {
        Made::Key { arn } => eprintln!("created key {arn} as {DEFAULT_KEY_ALIAS}"),
        Made::Volume { path, header } => eprintln!(
            "created {} ({} bytes, encrypted under {DEFAULT_KEY_ALIAS}, volume id {})",
            path.display(),
            header.size(),
            header.volume_id()
        ),
    }
}
