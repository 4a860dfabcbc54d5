//! `atrest kms serve` (the AWS KMS JSON API over HTTP(S), SigV4-authenticated) and
//! `atrest iam create-access-key` (the access keys it accepts).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use crypto_core::kms::LocalKms;
use gateway::{CredentialStore, Gateway, RunningGateway, TlsFiles};
use std::io::Write;

use serde_json::json;
use zeroize::Zeroizing;

use super::Globals;

const DEFAULT_KMS_LISTEN: &str = "127.0.0.1:4599";

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
}

/// Serves the key service of `globals`' home until SIGINT or SIGTERM.
pub fn serve_kms(args: KmsServeArgs, globals: &Globals, kms: LocalKms) -> anyhow::Result<()> {
    let home = globals.home()?;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let gateway = Gateway::new(kms, &home);
    let region = gateway.region().to_owned();
    let running = RunningGateway::start(gateway, &args.listen, tls.as_ref())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("listening on {}", running.local_addr());
    eprintln!(
        "AWS KMS endpoint {scheme}://{}, region {region}",
        running.local_addr()
    );
    running.wait_for_shutdown_signal()?;
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
