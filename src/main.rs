//! `atrest`: command-line wiring only; the work lives in the library crates.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "atrest", version, about = "Encryption at rest on one machine")]
struct Args {
    #[command(flatten)]
    globals: cli::Globals,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Key service: customer master keys and envelope encryption (AWS KMS names).
    #[command(subcommand)]
    Kms(cli::kms::KmsCommand),
    /// Audit trail of every key use.
    #[command(subcommand)]
    Trail(cli::trail::TrailCommand),
    /// Encrypted block volumes.
    #[command(subcommand)]
    Volume(cli::volume::VolumeCommand),
    /// NBD server.
    #[command(subcommand)]
    Nbd(cli::nbd::NbdCommand),
    /// S3-compatible object storage with SSE-KMS.
    #[command(subcommand)]
    S3(cli::gateway::S3Command),
    /// One endpoint serving both the KMS and the S3 APIs.
    #[command(subcommand)]
    Gateway(cli::gateway::GatewayCommand),
    /// Access keys for the AWS-compatible endpoints (`atrest kms serve`, `atrest s3 serve`).
    #[command(subcommand)]
    Iam(cli::gateway::IamCommand),
    /// The web console (keys, buckets, objects, event history) with the KMS and S3
    /// APIs, on one listener: `atrest gateway serve --console`.
    Console(cli::console::ConsoleArgs),
    /// Zero-config main job: default key, default volume, served over NBD.
    Serve(cli::nbd::ServeArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging();
    let result = match args.command {
        Command::Kms(cmd) => cli::kms::run(cmd, &args.globals),
        Command::Trail(cmd) => cli::trail::run(cmd, &args.globals),
        Command::Volume(cmd) => cli::volume::run(cmd, &args.globals),
        Command::Nbd(cmd) => cli::nbd::run(cmd, &args.globals),
        Command::S3(cmd) => cli::gateway::run_s3(cmd, &args.globals),
        Command::Gateway(cmd) => cli::gateway::run_gateway(cmd, &args.globals),
        Command::Iam(cmd) => cli::gateway::run_iam(cmd, &args.globals),
        Command::Console(console) => cli::console::run(console, &args.globals),
        Command::Serve(serve) => cli::nbd::serve_default(serve, &args.globals),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => cli::report(&err),
    }
}
