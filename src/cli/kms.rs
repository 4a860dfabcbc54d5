//! `atrest kms ...`

use clap::Subcommand;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum KmsCommand {}

pub fn run(cmd: KmsCommand, _globals: &Globals) -> anyhow::Result<()> {
    match cmd {}
}
