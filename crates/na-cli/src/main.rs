//! The `na` command. Argument parsing and exit codes live here; the work is
//! done by the `na_cli` library.

use std::process::ExitCode;

use clap::Parser;
use na_cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match na_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined with ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
