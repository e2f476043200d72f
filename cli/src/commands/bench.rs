use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {}
}
