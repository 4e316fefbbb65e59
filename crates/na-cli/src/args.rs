//! What several commands parse alike: storage types, devices, thread
//! counts, flags, and which model (a preset or a JSON configuration).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use na_model::Config;

/// Storage type used for the computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl DTypeArg {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DTypeArg::F32 => "f32",
            DTypeArg::F16 => "f16",
            DTypeArg::Bf16 => "bf16",
        }
    }
}

/// Where the operator runs: `cpu`, `cuda` (device 0) or `cuda:N`
/// ([`na_cuda::DeviceSpec`]).
pub type DeviceArg = na_cuda::DeviceSpec;

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> std::result::Result<DeviceArg, String> {
    s.parse()
}

/// Parses `--threads`: 0 (one per core) up to the limit of
/// `na_model::limits::max_threads`.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of threads"))?;
    na_model::limits::check_threads(n)
}

/// Parses `true`/`false`/`1`/`0` (case-insensitive).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!(
            "'{s}' is not a causal flag (expected true, false, 1 or 0)"
        )),
    }
}

/// Which model: a preset name or a JSON configuration.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A named preset (nat_mini … dinat_large, dinat_s_*, *_isotropic_*).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pub model: Option<String>,
    /// A JSON configuration (fields of the authors' constructors; see na-model's `Config`).
    #[arg(long, value_name = "CFG.json")]
    pub config: Option<PathBuf>,
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0, value_parser = crate::args::parse_threads)]
    pub threads: usize,
}

impl ModelArgs {
    /// The configuration these arguments name.
    pub fn config(&self) -> Result<Config> {
        match (&self.model, &self.config) {
            (Some(name), _) => Ok(Config::preset(name)?),
            (None, Some(path)) => load_config_file(path),
            (None, None) => bail!("give --model NAME or --config CFG.json"),
        }
    }
}

/// Reads and validates a JSON configuration file.
pub fn load_config_file(path: &Path) -> Result<Config> {
    let bytes = na_model::limits::read_file(path, na_model::limits::MAX_JSON_BYTES)
        .with_context(|| format!("reading the configuration {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("the configuration {} is not UTF-8 text", path.display()))?;
    Config::from_json(&text).with_context(|| format!("configuration {}", path.display()))
}

/// How `na classify` treats the polarity of grey images (built-in model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InvertArg {
    /// Invert images with a light border (dark object on a light background).
    Auto,
    /// Always invert.
    Always,
    /// Never invert.
    Never,
}
