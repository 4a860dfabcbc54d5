//! Shared CLI plumbing: global options, the state directory and key service they
//! choose, the duration parser of several commands, process hardening, error
//! reporting.
//!
//! The command modules depend one way (none imports a module that imports it):
//! `trail` -> `kms` -> `gateway`; `nbd` -> `volume` -> `lifecycle`; all of them use
//! this module only for what is shared.

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
use std::time::Duration;

use ::gateway::keys::Keys;
use anyhow::Context;
use clap::Args;
use crypto_core::kms::KmsError;

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
    /// The state directory: `--home`, else `ATREST_HOME`, else `$XDG_DATA_HOME/atrest`,
    /// else `~/.local/share/atrest` (docs/ARCHITECTURE.md, "State directory").
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

    /// The key service of the kms, volume and nbd commands: the endpoint of
    /// `--kms-endpoint`, else the local keystore of the home.
    pub fn keys(&self) -> anyhow::Result<Keys> {
        match &self.kms_endpoint {
            Some(endpoint) => Ok(Keys::remote(endpoint)?),
            None => Ok(Keys::local(&self.home()?)?),
        }
    }
}

/// Parses `DUR`: a number with `ms`, `s`, `m` or `h` (plain numbers are seconds);
/// positive, at most a day.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: expected e.g. 1s, 250ms, 2m"))?;
    let millis = match unit {
        "ms" => Some(number),
        "" | "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "'{text}': unknown unit '{unit}' (use ms, s, m or h)"
            ))
        }
    };
    match millis {
        Some(ms) if (1..=86_400_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err(format!("'{text}' must be between 1ms and 24h")),
    }
}

/// A server holds unwrapped data keys: no core dump may write them to disk.
pub fn harden() -> anyhow::Result<()> {
    crypto_core::hardening::disable_core_dumps()
        .context("marking the process non-dumpable (prctl PR_SET_DUMPABLE)")
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
/// exit code: 254 for a key-service refusal anywhere in the chain, 1 for anything
/// else.
pub fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("{}", render(err));
    if key_service_refusal(err).is_some() {
        ExitCode::from(254)
    } else {
        ExitCode::from(1)
    }
}

/// The key service's refusal behind `err`, wherever it is in the chain: a
/// `KmsError` itself, or one that a volume, object-store or gateway error wraps
/// (transparently, so the chain alone does not show it).
pub(crate) fn key_service_refusal(err: &anyhow::Error) -> Option<&KmsError> {
    err.chain().find_map(|cause| {
        if let Some(kms) = cause.downcast_ref::<KmsError>() {
            Some(kms)
        } else if let Some(blockdev::Error::Kms(kms)) = cause.downcast_ref() {
            Some(kms)
        } else if let Some(objstore::Error::Kms(kms)) = cause.downcast_ref() {
            Some(kms)
        } else if let Some(::gateway::GatewayError::Kms(kms)) = cause.downcast_ref() {
            Some(kms)
        } else {
            None
        }
    })
}

/// `err` and its causes joined by `: ` (anyhow's `{:#}`), except a cause whose text
/// its parent already ends with (an error whose message includes its source).
fn render(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if !text.is_empty() {
            if !part.is_empty() && text.ends_with(&part) {
                continue;
            }
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("25h").is_err());
        assert!(parse_duration("1.5s").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn wrapped_key_service_refusals_are_found_and_printed_once() {
        let denied = || KmsError::AccessDenied("no".into());
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        for err in [
            anyhow::Error::from(denied()),
            anyhow::Error::from(blockdev::Error::Kms(denied())).context("opening the volume"),
            anyhow::Error::from(objstore::Error::Kms(denied())),
            anyhow::Error::from(::gateway::GatewayError::Kms(denied())),
        ] {
            let found = key_service_refusal(&err).map(KmsError::aws_name);
            assert_eq!(found, Some("AccessDeniedException"), "{err:#}");
            assert_eq!(render(&err).matches("AccessDeniedException: no").count(), 1);
        }
        let plain = anyhow::Error::from(blockdev::Error::Io {
            context: "reading /v".into(),
            source: io(),
        });
        assert!(key_service_refusal(&plain).is_none());
        assert_eq!(render(&plain), "reading /v: gone");
        let chained = anyhow::Error::from(io()).context("reading /v");
        assert_eq!(render(&chained), format!("{chained:#}"));
    }
}
