//! `atrest console`: the web console (keys, buckets and objects, the event history)
//! with the KMS and S3 APIs it drives, on one listener, over the home's embedded key
//! service; the same as `atrest gateway serve --console`.

use clap::Args;

use super::gateway::S3ServeArgs;
use super::Globals;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    serve: S3ServeArgs,
}

/// Serves the console (at `/console/`) and the APIs until SIGINT or SIGTERM.
pub fn run(args: ConsoleArgs, globals: &Globals) -> anyhow::Result<()> {
    super::gateway::run_console(args.serve, globals)
}
