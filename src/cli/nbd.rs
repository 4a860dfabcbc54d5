//! `atrest nbd serve` and `atrest serve`.

use clap::{Args, Subcommand};

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum NbdCommand {}

#[derive(Debug, Args)]
pub struct ServeArgs {}

pub fn run(cmd: NbdCommand, _globals: &Globals) -> anyhow::Result<()> {
    match cmd {}
}

pub fn serve_default(_args: ServeArgs, _globals: &Globals) -> anyhow::Result<()> {
    anyhow::bail!("atrest serve is not built yet")
}
