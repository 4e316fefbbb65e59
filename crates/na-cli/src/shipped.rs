//! The model built into `na`: `fashion_dinat` trained on Fashion-MNIST by
//! `na train` (the command, time and accuracy are in the README). Its
//! weights and configuration are `examples/fashion/`, embedded at compile
//! time, so `na classify IMAGE` needs no files.

use anyhow::{Context, Result};
use na_model::{Config, WeightMap};

/// The weights (safetensors, f32, authors' key names).
pub const WEIGHTS: &[u8] = include_bytes!("../../../examples/fashion/fashion_dinat.safetensors");

/// The configuration (JSON).
pub const CONFIG: &str = include_str!("../../../examples/fashion/fashion_dinat.json");

/// The built-in model's configuration and weights.
pub fn model() -> Result<(Config, WeightMap)> {
    let cfg = Config::from_json(CONFIG).context("the built-in model's configuration")?;
    let map = WeightMap::from_safetensors(WEIGHTS)
        .map_err(anyhow::Error::msg)
        .context("the built-in model's weights")?;
    Ok((cfg, map))
}
