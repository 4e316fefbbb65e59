//! The library behind the `na` command-line tool.
//!
//! `na attn` runs the neighborhood-attention operator on `.npy` tensors; see
//! [`attn::AttnArgs`] for the interface.
#![deny(missing_docs)]

pub mod attn;
pub mod bench;
pub mod console;
pub mod convert;
pub mod interrupt;
pub mod model_bench;
pub mod model_cmd;
pub mod plot;
pub mod shipped;
pub mod train_cmd;

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
    /// Run a NAT/DiNAT model on a .npy batch of images: logits or backbone features.
    Run(model_cmd::RunArgs),
    /// Classify images: the built-in Fashion-MNIST DiNAT, or a NAT/DiNAT with its weights (top-k).
    Classify(model_cmd::ClassifyArgs),
    /// Parameters, multiply-adds and per-level shapes of a preset or configuration.
    Info(model_cmd::InfoArgs),
    /// Train a model on Fashion-MNIST (AdamW, warm-up + cosine, augmentation, checkpoints).
    Train(train_cmd::TrainArgs),
    /// Accuracy, per-class accuracy and confusion matrix on the Fashion-MNIST test set.
    Eval(train_cmd::EvalArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Attn(args) => attn::run(&args),
        Command::Bench(args) if args.is_model_run() => model_bench::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Run(args) => model_cmd::run(&args),
        Command::Classify(args) => model_cmd::classify(&args),
        Command::Info(args) => model_cmd::info(&args),
        Command::Train(args) => train_cmd::run_train(&args),
        Command::Eval(args) => train_cmd::run_eval(&args),
    }
}
