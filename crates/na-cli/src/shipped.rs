//! The model built into `na` (temporary: filled in once trained).

use anyhow::{bail, Result};
use na_model::{Config, WeightMap};

/// The built-in model's configuration and weights.
pub fn model() -> Result<(Config, WeightMap)> {
    bail!("no built-in model yet")
}
