//! Standard output and error messages that never panic.
//!
//! `println!` panics when standard output is closed or full (`na … | head -1`,
//! `na … >/dev/full`). Every line the commands print goes through [`outln!`](crate::outln)
//! and [`out!`](crate::out) instead, which return the failure as a [`StdoutError`]; `main`
//! ends quietly with status 0 on a closed pipe, like other Unix tools, and
//! with one error line and status 1 on any other failure (a full disk).

use std::fmt;
use std::io::{self, Write};

/// Writing to standard output failed.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output: {0}")]
pub struct StdoutError(#[from] pub io::Error);

/// Writes formatted text to standard output.
pub fn write_out(args: fmt::Arguments<'_>) -> Result<(), StdoutError> {
    let mut s = io::stdout().lock();
    s.write_fmt(args)?;
    Ok(())
}

/// Flushes standard output (at the end of a command).
pub fn flush() -> Result<(), StdoutError> {
    io::stdout().lock().flush()?;
    Ok(())
}

/// Prints a line to standard output; evaluates to `Result<(), StdoutError>`.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::console::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints to standard output without a newline; evaluates to
/// `Result<(), StdoutError>`.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::console::write_out(format_args!($($arg)*))
    };
}

/// Whether `e` is a write to a closed pipe (the reader went away): the
/// command's output is simply not wanted any more.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StdoutError>()
            .is_some_and(|s| s.0.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// An error and its causes as one line: `context: cause: cause`, a cause
/// whose text the line already holds left out (many errors repeat their
/// source's message), line breaks inside messages replaced by `; `.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_drops_repeated_causes_and_line_breaks() {
        let inner = anyhow::anyhow!("CRC error\nin chunk IDAT");
        let e = inner
            .context("decoding a.png: CRC error\nin chunk IDAT")
            .context("classifying");
        assert_eq!(
            one_line(&e),
            "classifying: decoding a.png: CRC error; in chunk IDAT"
        );
    }

    #[test]
    fn a_broken_pipe_is_recognised_through_context() {
        let e = anyhow::Error::from(StdoutError(io::Error::from(io::ErrorKind::BrokenPipe)))
            .context("printing");
        assert!(is_closed_pipe(&e));
        let e = anyhow::Error::from(StdoutError(io::Error::from(io::ErrorKind::StorageFull)));
        assert!(!is_closed_pipe(&e));
    }
}
