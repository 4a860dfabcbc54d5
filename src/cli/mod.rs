//! Shared CLI plumbing: global options, the state directory, error reporting.

pub mod console;
pub mod gateway;
pub mod kms;
pub mod lifecycle;
pub mod nbd;
pub mod trail;
pub mod volume;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct Globals {
    /// State directory (keystore, trail, default volume).
    /// Default: $XDG_DATA_HOME/atrest, else ~/.local/share/atrest.
    #[arg(long, global = true, env = "ATREST_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Use this AWS-KMS-compatible endpoint (AWS KMS, `atrest kms serve`) as the key
    /// service of the kms, volume and nbd commands, signing with AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and AWS_REGION, or the AWS profile.
    #[arg(long, global = true, env = "ATREST_KMS_ENDPOINT", value_name = "URL")]
    pub kms_endpoint: Option<String>,
}

impl Globals {
    /// The state directory, per ARCHITECTURE.md's rules.
    pub fn home(&self) -> anyhow::Result<PathBuf> {
        if let Some(home) = &self.home {
            return Ok(home.clone());
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(xdg).join("atrest"));
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => Ok(PathBuf::from(home).join(".local/share/atrest")),
            None => anyhow::bail!("no state directory: set --home, ATREST_HOME or HOME"),
        }
    }
}

/// Logs go to stderr; `RUST_LOG` filters them. The default is `info`, with rustls
/// at `error`: it warns on every client that connects by IP address (an SNI
/// extension it ignores), which is how NBD and S3 clients normally connect; failed
/// handshakes are reported by the servers themselves.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Prints an error the AWS CLI way (`ErrorName: message` on stderr) and picks the
/// exit code: 254 for a service error, 1 for anything else.
pub fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("{err:#}");
    let service_error = err
        .chain()
        .any(|cause| cause.downcast_ref::<crypto_core::kms::KmsError>().is_some());
    if service_error {
        ExitCode::from(254)
    } else {
        ExitCode::from(1)
    }
}
