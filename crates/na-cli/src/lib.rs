//! The library behind the `na` command-line tool: one module per command
//! (its arguments and its work), [`console`] for output, [`interrupt`] for
//! signals. [`Cli`] is the parsed command line and [`run()`] dispatches it.
#![deny(missing_docs)]

pub mod args;
pub mod cmd;
pub mod console;
pub mod harness;
pub mod interrupt;
pub mod plot;

use cmd::{
    attn, bench, bench_model, classify, completions, convert, eval, export_edge, info, run, train,
};

use clap::{Parser, Subcommand};

/// `na`: neighborhood attention (NA / DiNA) with NATTEN's exact semantics.
#[derive(Debug, Parser)]
#[command(
    name = "na",
    version,
    about = "Neighborhood attention (NA/DiNA) with NATTEN's semantics, and the NAT/DiNAT models: \
             classify images (a Fashion-MNIST DiNAT is built in), train, evaluate, run the \
             operator or a model on .npy tensors, convert checkpoints, benchmark",
    long_about = None
)]
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
    /// Write a NAT/DiNAT classifier as a weight blob for na-edge's no_std path (and images as its inputs).
    ExportEdge(export_edge::ExportEdgeArgs),
    /// Run a NAT/DiNAT model on a .npy batch of images: logits or backbone features.
    Run(run::RunArgs),
    /// Classify images: the built-in Fashion-MNIST DiNAT, or a NAT/DiNAT with its weights (top-k).
    Classify(classify::ClassifyArgs),
    /// Parameters, multiply-adds and per-level shapes of a preset or configuration.
    Info(info::InfoArgs),
    /// Train a model on Fashion-MNIST (AdamW, warm-up + cosine, augmentation, checkpoints).
    Train(train::TrainArgs),
    /// Accuracy, per-class accuracy and confusion matrix on the Fashion-MNIST test set.
    Eval(eval::EvalArgs),
    /// Print a completion script for a shell (e.g. `na completions bash > /etc/bash_completion.d/na`).
    Completions(completions::CompletionsArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Attn(args) => attn::run(&args),
        Command::Bench(args) if args.is_model_run() => bench_model::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::ExportEdge(args) => export_edge::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Classify(args) => classify::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Completions(args) => completions::run(&args),
    }
}
