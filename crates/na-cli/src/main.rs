//! The `na` command. Argument parsing and exit codes live here; the work is
//! done by the `na_cli` library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use na_cli::{console, interrupt, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = interrupt::install() {
        let _ = writeln!(std::io::stderr(), "warning: no signal handler ({e})");
    }
    let result = na_cli::run(cli).and_then(|()| Ok(console::flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`na … | head -1`): not an error.
        Err(e) if console::is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}", console::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
