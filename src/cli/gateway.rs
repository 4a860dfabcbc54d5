//! `atrest kms serve` (the AWS KMS JSON API over HTTP(S), SigV4-authenticated),
//! `atrest s3 serve` (the S3 REST API with SSE-KMS), `atrest gateway serve` (both on one
//! listener), and `atrest iam create-access-key` (the access keys they accept).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use crypto_core::kms::{LocalKms, LocalKmsConfig};
use crypto_core::trail::digest::DigestSigner;
use crypto_core::trail::timer::DigestTimer;
use gateway::server::ConnectionLimits;
use gateway::{CredentialStore, Gateway, RunningGateway, Services, TlsFiles};
use objstore::ObjectStore;
use serde_json::json;
use zeroize::Zeroizing;

use super::Globals;

const DEFAULT_KMS_LISTEN: &str = "127.0.0.1:4599";
const DEFAULT_S3_LISTEN: &str = "127.0.0.1:4598";

/// Connection limits and the body timeout of the KMS and S3 endpoints.
#[derive(Clone, Copy, Debug, Args)]
pub struct LimitArgs {
    /// End a connection whose request body makes no progress for this long
    /// (answered 400 RequestTimeout), or whose client reads nothing of an answer
    /// for this long: e.g. 20s, 1m.
    #[arg(long, default_value = "20s", value_name = "DUR", value_parser = super::parse_duration)]
    body_timeout: Duration,
    /// Most open connections, all clients together; more are answered 503 SlowDown.
    /// Lowered to fit the descriptor limit (ulimit -n) when that is smaller.
    #[arg(long, default_value_t = gateway::server::DEFAULT_MAX_CONNECTIONS, value_name = "N",
          value_parser = parse_count)]
    max_connections: usize,
    /// Most open connections from one IP address (at most half of
    /// --max-connections); more are answered 503 SlowDown.
    #[arg(long, default_value_t = gateway::server::DEFAULT_MAX_CONNECTIONS_PER_SOURCE, value_name = "N",
          value_parser = parse_count)]
    max_connections_per_source: usize,
}

/// A count of at least 1.
fn parse_count(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| format!("'{text}' is not a count of at least 1"))
}

impl From<LimitArgs> for ConnectionLimits {
    fn from(args: LimitArgs) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: args.max_connections,
            max_per_source: args.max_connections_per_source,
            body_timeout: args.body_timeout,
        }
    }
}

#[derive(Debug, Args)]
pub struct KmsServeArgs {
    /// Address to listen on; port 0 picks a free port. The bound address is printed
    /// to stderr as `listening on ADDR`.
    #[arg(long, default_value = DEFAULT_KMS_LISTEN, value_name = "ADDR")]
    listen: String,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Write a signed trail digest this often (and once at shutdown): e.g. 1h, 5m.
    #[arg(long, default_value = "1h", value_name = "DUR", value_parser = super::parse_duration)]
    digest_interval: Duration,
    #[command(flatten)]
    limits: LimitArgs,
    /// The web console's idle timeout, when it is served.
    #[arg(skip)]
    console: Option<Duration>,
    /// More directories whose volumes the console lists.
    #[arg(skip)]
    console_volumes: Vec<PathBuf>,
}

/// Test-only: the length of a lifecycle day in seconds, so tests can expire objects
/// without waiting days. Not a user setting (it is neither a flag nor in the help).
const LIFECYCLE_DAY_ENV: &str = "ATREST_TEST_LIFECYCLE_DAY_SECONDS";

fn lifecycle_schedule(interval: Duration) -> anyhow::Result<gateway::s3::LifecycleSchedule> {
    let day = match std::env::var(LIFECYCLE_DAY_ENV) {
        Ok(text) => match text.parse::<u64>() {
            Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
            _ => anyhow::bail!("{LIFECYCLE_DAY_ENV} must be a positive number of seconds"),
        },
        Err(_) => gateway::s3::LifecycleSchedule::DAY,
    };
    if interval.is_zero() {
        anyhow::bail!("--lifecycle-interval must be longer than 0");
    }
    Ok(gateway::s3::LifecycleSchedule { interval, day })
}

/// Serves the key service of `globals`' home until SIGINT or SIGTERM.
pub fn serve_kms(args: KmsServeArgs, globals: &Globals, kms: LocalKms) -> anyhow::Result<()> {
    serve(
        args,
        globals,
        kms,
        Services {
            kms: true,
            s3: false,
        },
        None,
    )
}

#[derive(Debug, Subcommand)]
pub enum S3Command {
    /// Serve the S3 REST API (path-style, SSE-KMS, SigV4 and presigned URLs) over
    /// the object store of the home.
    Serve(S3ServeArgs),
}

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Serve both the AWS KMS JSON API and the S3 REST API on one listener.
    Serve(S3ServeArgs),
}

#[derive(Debug, Args)]
pub struct S3ServeArgs {
    /// Address to listen on; port 0 picks a free port. The bound address is printed
    /// to stderr as `listening on ADDR`.
    #[arg(long, default_value = DEFAULT_S3_LISTEN, value_name = "ADDR")]
    listen: String,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Write a signed trail digest this often (and once at shutdown): e.g. 1h, 5m.
    #[arg(long, default_value = "1h", value_name = "DUR", value_parser = super::parse_duration)]
    digest_interval: Duration,
    /// Apply the buckets' lifecycle rules (Expiration, AbortIncompleteMultipartUpload)
    /// at start and then this often: e.g. 1h, 10m.
    #[arg(long, default_value = "1h", value_name = "DUR", value_parser = super::parse_duration)]
    lifecycle_interval: Duration,
    #[command(flatten)]
    limits: LimitArgs,
    /// Also serve the web console at /console/ (`atrest console` does); it then
    /// owns that path, so a bucket named `console` is not reachable path-style.
    #[arg(long)]
    console: bool,
    /// End a console session after this long without a request: e.g. 15m, 30s.
    #[arg(long, default_value = "15m", value_name = "DUR", value_parser = super::parse_duration)]
    console_idle_timeout: Duration,
    /// A directory whose `*.vol` volumes the console lists, besides HOME/volumes
    /// (repeatable).
    #[arg(long = "console-volumes", value_name = "DIR")]
    console_volumes: Vec<PathBuf>,
}

/// `atrest console`: `atrest gateway serve --console`.
pub fn run_console(mut args: S3ServeArgs, globals: &Globals) -> anyhow::Result<()> {
    args.console = true;
    run_gateway(GatewayCommand::Serve(args), globals)
}

pub fn run_s3(cmd: S3Command, globals: &Globals) -> anyhow::Result<()> {
    match cmd {
        S3Command::Serve(args) => {
            if args.console {
                anyhow::bail!(
                    "the console needs the KMS API too: use `atrest gateway serve --console`"
                );
            }
            let lifecycle = lifecycle_schedule(args.lifecycle_interval)?;
            serve(
                args.into(),
                globals,
                local_kms(globals)?,
                Services {
                    kms: false,
                    s3: true,
                },
                Some(lifecycle),
            )
        }
    }
}

pub fn run_gateway(cmd: GatewayCommand, globals: &Globals) -> anyhow::Result<()> {
    match cmd {
        GatewayCommand::Serve(args) => {
            let lifecycle = lifecycle_schedule(args.lifecycle_interval)?;
            serve(
                args.into(),
                globals,
                local_kms(globals)?,
                Services {
                    kms: true,
                    s3: true,
                },
                Some(lifecycle),
            )
        }
    }
}

impl From<S3ServeArgs> for KmsServeArgs {
    fn from(args: S3ServeArgs) -> KmsServeArgs {
        KmsServeArgs {
            listen: args.listen,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            digest_interval: args.digest_interval,
            limits: args.limits,
            console: args.console.then_some(args.console_idle_timeout),
            console_volumes: args.console_volumes,
        }
    }
}

fn local_kms(globals: &Globals) -> anyhow::Result<LocalKms> {
    if globals.kms_endpoint.is_some() {
        anyhow::bail!(
            "the S3 endpoint uses the local key service (it acts as each signer under the \
             key policy); --kms-endpoint does not apply"
        );
    }
    Ok(LocalKms::open(
        &globals.home()?,
        LocalKmsConfig::from_env()?,
    )?)
}

/// Serves the chosen APIs over the home's key service (and object store) until
/// SIGINT or SIGTERM.
fn serve(
    args: KmsServeArgs,
    globals: &Globals,
    kms: LocalKms,
    services: Services,
    lifecycle: Option<gateway::s3::LifecycleSchedule>,
) -> anyhow::Result<()> {
    super::harden()?;
    let home = globals.home()?;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    if CredentialStore::open(&home).access_keys()?.is_empty() {
        eprintln!(
            "no access keys yet: every signed request will be refused until one is made \
             with `atrest iam create-access-key --principal ARN`"
        );
    }
    let mut gateway = Gateway::new(kms, &home).with_limits(args.limits.into());
    if services.s3 {
        gateway = gateway.with_s3(ObjectStore::open(&home)?);
    }
    if let Some(schedule) = lifecycle {
        gateway = gateway.with_lifecycle(schedule);
    }
    if !services.kms {
        gateway = gateway.without_kms_api();
    }
    if let Some(idle) = args.console {
        gateway = gateway.with_console(
            gateway::Console::new(&home, idle).with_volume_dirs(&args.console_volumes),
        );
    }
    let region = gateway.region().to_owned();
    let running = RunningGateway::start(gateway, &args.listen, tls.as_ref())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("listening on {}", running.local_addr());
    if services.kms {
        eprintln!(
            "AWS KMS endpoint {scheme}://{}, region {region}",
            running.local_addr()
        );
    }
    if services.s3 {
        eprintln!(
            "S3 endpoint {scheme}://{} (path-style), region {region}",
            running.local_addr()
        );
    }
    if args.console.is_some() {
        eprintln!("console {scheme}://{}/console/", running.local_addr());
    }
    let trail_dir = home.join("trail");
    let signer = DigestSigner::open_or_create(&trail_dir)?;
    eprintln!(
        "trail digests every {:?}, signed by Ed25519 key {}",
        args.digest_interval,
        signer.public_key_hex()
    );
    let digests = DigestTimer::start(trail_dir, signer, args.digest_interval)?;
    running.wait_for_shutdown_signal()?;
    digests.stop();
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum IamCommand {
    /// Create an access key (id and secret) for a principal; `atrest kms serve`
    /// accepts requests signed with it as that principal.
    CreateAccessKey {
        /// The principal ARN, e.g. arn:aws:iam::000000000000:user/alice.
        #[arg(long, value_name = "ARN")]
        principal: String,
    },
}

pub fn run_iam(cmd: IamCommand, globals: &Globals) -> anyhow::Result<()> {
    match cmd {
        IamCommand::CreateAccessKey { principal } => {
            let store = CredentialStore::open(&globals.home()?);
            let key = store.create_access_key(&principal)?;
            let created = key
                .create_date
                .format(&time::format_description::well_known::Rfc3339)?;
            let mut fields = vec![("AccessKeyId", json!(key.access_key_id).to_string())];
            if let Some(user) = &key.user_name {
                fields.push(("UserName", json!(user).to_string()));
            }
            fields.push(("Status", json!("Active").to_string()));
            fields.push(("CreateDate", json!(created).to_string()));
            print_access_key(&fields, &key.secret_access_key)
        }
    }
}

/// Prints `{"AccessKey": {...}}` with the secret after the id, building the text in
/// one zeroizing buffer sized up front. `fields` hold JSON-encoded values; the secret
/// is base64 characters, which need no escaping.
fn print_access_key(fields: &[(&str, String)], secret: &str) -> anyhow::Result<()> {
    let capacity = fields
        .iter()
        .map(|(k, v)| k.len() + v.len() + 16)
        .sum::<usize>()
        + secret.len()
        + 64;
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    out.extend_from_slice(b"{\n  \"AccessKey\": {\n");
    for (i, (name, value)) in fields.iter().enumerate() {
        out.extend_from_slice(format!("    \"{name}\": {value},\n").as_bytes());
        if i == 0 {
            out.extend_from_slice(b"    \"SecretAccessKey\": \"");
            out.extend_from_slice(secret.as_bytes());
            out.extend_from_slice(b"\",\n");
        }
    }
    // Drop the comma after the last field.
    let without_comma = out.len() - 2;
    out.truncate(without_comma);
    out.extend_from_slice(b"\n  }\n}\n");
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(())
}
