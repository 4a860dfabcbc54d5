//! `atrest trail ...`

use clap::Subcommand;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum TrailCommand {}

pub fn run(cmd: TrailCommand, _globals: &Globals) -> anyhow::Result<()> {
    match cmd {}
}
