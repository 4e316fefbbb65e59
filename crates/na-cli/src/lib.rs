//! The library behind the `na` command-line tool.
//!
//! `na attn` runs the neighborhood-attention operator on `.npy` tensors; see
//! [`attn::AttnArgs`] for the interface.
#![deny(missing_docs)]

pub mod attn;
pub mod bench;
pub mod convert;

use clap::{Parser, Subcommand};

/// `na`: neighborhood attention (NA / DiNA) with NATTEN's exact semantics.
#[derive(Debug, Parser)]
#[command(name = "na", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `na`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run neighborhood attention (forward, and backward with --grad-out) on .npy arrays.
    Attn(attn::AttnArgs),
    /// Time the operator (BENCHMARKS.md suite, one case, or a custom shape).
    Bench(bench::BenchArgs),
    /// Convert a PyTorch checkpoint (.pth) to safetensors, keeping names, shapes and dtypes.
    Convert(convert::ConvertArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Attn(args) => attn::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Convert(args) => convert::run(&args),
    }
}
