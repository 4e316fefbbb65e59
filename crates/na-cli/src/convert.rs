//! `na convert` (being written).
use clap::Args;

/// Arguments of `na convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {}

/// Runs `na convert`.
pub fn run(_args: &ConvertArgs) -> anyhow::Result<()> {
    anyhow::bail!("na convert is being written")
}
