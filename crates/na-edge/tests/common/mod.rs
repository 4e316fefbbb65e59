//! Helpers shared by the integration tests: std configs and weight maps
//! turned into edge configs and blobs.
#![allow(dead_code)]

use std::collections::BTreeMap;

use na_edge::{write_blob, Arch, DType, EdgeConfig, EdgeError};
use na_model::{Config, HostTensor, WeightMap};

/// The edge configuration of a std NAT/DiNAT configuration.
pub fn edge_config(cfg: &Config) -> Result<EdgeConfig, EdgeError> {
    let arch = match cfg.arch {
        na_model::Arch::Nat => Arch::Nat,
        na_model::Arch::Dinat => Arch::Dinat,
        na_model::Arch::DinatS => Arch::DinatS,
        na_model::Arch::Isotropic => Arch::Isotropic,
    };
    let hidden: Vec<usize> = (0..cfg.levels())
        .map(|i| cfg.mlp_hidden(cfg.dim(i)))
        .collect();
    let mut e = EdgeConfig::new(
        arch,
        cfg.in_chans,
        cfg.embed_dim,
        &cfg.depths,
        &cfg.num_heads,
        &hidden,
        cfg.kernel_size,
        cfg.num_classes,
    )?
    .with_layer_scale(cfg.layer_scale.is_some())
    .with_stem_strides(cfg.stem_strides())?;
    for i in 0..cfg.levels() {
        let d: Vec<usize> = (0..cfg.depths[i]).map(|j| cfg.dilation(i, j)).collect();
        e = e.with_dilations(i, &d)?;
    }
    Ok(e)
}

/// A blob of `wm`'s tensors for `cfg`, stored as `dtype`.
pub fn blob(cfg: &EdgeConfig, wm: &WeightMap, dtype: DType) -> Vec<u8> {
    let named: Vec<(&str, &[usize], &[f32])> = wm
        .names()
        .map(|n| {
            let t = wm.get(n).unwrap();
            (n, t.shape.as_slice(), t.data.as_slice())
        })
        .collect();
    write_blob(cfg, &named, dtype).unwrap()
}

/// The std crate's generator (SplitMix64), for test data.
pub use na_model::rng::Rng;

/// Uniform in (-1, 1).
pub fn signed(rng: &mut Rng) -> f32 {
    2.0 * rng.uniform() - 1.0
}

/// Random weights for every tensor of `cfg`: uniform ±`scale`, norms'
/// weights 1 ± 0.2, gammas ±1 (so every parameter matters).
pub fn random_weights(cfg: &Config, seed: u64) -> WeightMap {
    let mut rng = Rng::new(seed);
    let mut map = BTreeMap::new();
    for (name, shape) in na_model::param_shapes(cfg, false) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.contains("norm") && name.ends_with(".weight") {
            (0..n).map(|_| 1.0 + 0.2 * signed(&mut rng)).collect()
        } else if name.ends_with("gamma1") || name.ends_with("gamma2") {
            (0..n).map(|_| signed(&mut rng)).collect()
        } else {
            let fan_in = shape[1..].iter().product::<usize>().max(1) as f32;
            let s = if shape.len() > 1 && !name.ends_with("rpb") {
                1.5 / fan_in.sqrt()
            } else {
                0.5
            };
            (0..n).map(|_| s * signed(&mut rng)).collect()
        };
        map.insert(name, HostTensor { shape, data });
    }
    WeightMap::from_map(map)
}

/// Max of `|a - b| / max(1, |b|)`.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// Max of `|a - b|`.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}
