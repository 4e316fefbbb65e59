//! `na completions SHELL`: a completion script for the shell.

use crate::Cli;

/// Arguments of `na completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs `na completions`: the script on standard output.
pub fn run(args: &CompletionsArgs) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "na", &mut script);
    crate::out!("{}", String::from_utf8_lossy(&script))?;
    Ok(())
}
