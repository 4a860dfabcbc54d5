//! `atrest volume ...`

use clap::Subcommand;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {}

pub fn run(cmd: VolumeCommand, _globals: &Globals) -> anyhow::Result<()> {
    match cmd {}
}
