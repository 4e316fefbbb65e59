//! SIGINT, SIGTERM and SIGHUP: remove every temporary file, then exit.
//!
//! Outputs are written to temporary files and renamed into place (see
//! `na_model::output`); an interrupted run must leave neither a half-written
//! output nor its temporary file. The handler runs on its own thread, waits
//! for a commit in progress to finish (so the outputs are either all
//! published or none), removes the temporaries and exits with status
//! 128 + the signal number, as a shell reports a killed command.

use std::io::Write;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Installs the handler (once, at the start of `main`).
pub fn install() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("na-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                na_model::output::remove_temporaries();
                let _ = writeln!(
                    std::io::stderr(),
                    "na: interrupted by signal {sig}; no partial output left"
                );
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}
