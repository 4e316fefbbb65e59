//! What the command tests share: the binary under test, fresh scratch
//! folders, output as text.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `na` under test: this build's, or `NA_TEST_BIN` (to show that a test
/// fails on another build).
pub fn bin() -> PathBuf {
    std::env::var_os("NA_TEST_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_na")), PathBuf::from)
}

/// Runs [`bin`] with `args` and waits for it.
pub fn na(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

/// A fresh, empty folder `group/test` under cargo's per-target temporary
/// folder.
pub fn tmp(group: &str, test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(group)
        .join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A process's standard error as text.
pub fn stderr(o: &Output) -> String {
    text(&o.stderr)
}

/// A path as `&str` (the tests' paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
