//! Every parameter of a model in one flat buffer ([`ParamSet`]): the
//! layout the layers address by range, with the authors' key names.

use std::collections::HashMap;
use std::ops::Range;

use crate::config::param_shapes;
use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::rng::Rng;
use crate::weights::{HostTensor, WeightMap};

/// One named tensor inside a [`ParamSet`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamEntry {
    /// The authors' key name (see [`crate::param_shapes`]).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Where it lies in [`ParamSet::data`].
    pub range: Range<usize>,
    /// Whether AdamW's weight decay applies: matrices and convolution
    /// kernels yes; norms, biases, layer-scale gammas and `rpb` no.
    pub decay: bool,
}

/// Every parameter of a model in one flat buffer, in
/// [`crate::param_shapes`] order: the layout that the layers of
/// [`crate::net::Net`] address by range, and that the optimiser, the
/// gradients and checkpoints share.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSet {
    /// The configuration.
    pub cfg: Config,
    /// Whether this is the backbone's set (`norm0..norm3`, no head).
    pub backbone: bool,
    /// The tensors, in order, with their ranges.
    pub entries: Vec<ParamEntry>,
    /// All values (empty for a bare layout, [`ParamSet::layout_for`]).
    pub data: Vec<f32>,
    len: usize,
    index: HashMap<String, usize>,
}

impl ParamSet {
    /// Zeros for every parameter of the classifier `cfg` (training needs a
    /// head: `num_classes > 0`).
    pub fn zeros(cfg: &Config) -> Result<Self> {
        if cfg.num_classes == 0 {
            return Err(ModelError::Config {
                field: "num_classes",
                reason: "training needs a classification head (num_classes > 0)".into(),
            });
        }
        Self::zeros_for(cfg, false)
    }

    /// Zeros for every parameter of `cfg`, as a classifier or (`backbone`)
    /// with `norm0..norm3` instead of the final norm and head.
    pub fn zeros_for(cfg: &Config, backbone: bool) -> Result<Self> {
        let mut p = Self::layout_for(cfg, backbone)?;
        p.data = vec![0.0; p.len];
        Ok(p)
    }

    /// The layout of `cfg`'s parameters (names, shapes, ranges) without
    /// values: [`ParamSet::data`] is empty.
    pub fn layout_for(cfg: &Config, backbone: bool) -> Result<Self> {
        cfg.validate()?;
        let mut entries = Vec::new();
        let mut off = 0;
        for (name, shape) in param_shapes(cfg, backbone) {
            let n: usize = shape.iter().product();
            let decay = shape.len() >= 2 && !name.ends_with(".rpb");
            entries.push(ParamEntry {
                name,
                shape,
                range: off..off + n,
                decay,
            });
            off += n;
        }
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(ParamSet {
            cfg: cfg.clone(),
            backbone,
            entries,
            data: Vec::new(),
            len: off,
            index,
        })
    }

    /// The initialisation of the authors' training code (timm's): linear
    /// weights and `rpb` from a normal of std 0.02 truncated to ±2 std;
    /// convolutions PyTorch's default, uniform in `±1/sqrt(fan_in)` for
    /// weights and biases; linear biases 0; norms 1 and 0; gammas at
    /// `layer_scale`. Deterministic in `seed`.
    pub fn init(cfg: &Config, seed: u64) -> Result<Self> {
        let mut p = ParamSet::zeros(cfg)?;
        let mut rng = Rng::new(seed);
        let conv_fan_in: HashMap<String, usize> = p
            .entries
            .iter()
            .filter(|e| e.shape.len() == 4)
            .map(|e| {
                (
                    e.name.trim_end_matches(".weight").to_string(),
                    e.shape[1..].iter().product(),
                )
            })
            .collect();
        for e in &p.entries {
            let v = &mut p.data[e.range.clone()];
            let stem = e.name.rsplit_once('.').map_or("", |(s, _)| s);
            if e.name.ends_with("gamma1") || e.name.ends_with("gamma2") {
                v.fill(cfg.layer_scale.unwrap_or(1.0) as f32);
            } else if let Some(&fan_in) = conv_fan_in.get(stem) {
                let bound = 1.0 / (fan_in as f32).sqrt();
                v.iter_mut()
                    .for_each(|x| *x = bound * (2.0 * rng.uniform() - 1.0));
            } else if e.shape.len() >= 2 || e.name.ends_with(".rpb") {
                v.iter_mut().for_each(|x| *x = 0.02 * rng.trunc_normal());
            } else if e.name.contains("norm") && e.name.ends_with(".weight") {
                v.fill(1.0);
            }
        }
        Ok(p)
    }

    /// The parameters of `cfg` from `weights` (checked against the expected
    /// names and shapes first).
    pub fn from_weights(cfg: &Config, weights: &WeightMap) -> Result<Self> {
        let mut p = ParamSet::zeros(cfg)?;
        p.fill_from(weights.clone())?;
        Ok(p)
    }

    /// Moves every tensor of `weights` (checked against the expected names
    /// and shapes first) into place, dropping each as it is copied.
    pub fn fill_from(&mut self, mut weights: WeightMap) -> Result<()> {
        let p = self;
        weights.check(&param_shapes(&p.cfg, p.backbone))?;
        p.data.resize(p.len, 0.0);
        for e in &p.entries {
            let t = take(&mut weights, &e.name)?;
            p.data[e.range.clone()].copy_from_slice(&t.data);
        }
        Ok(())
    }

    /// The tensors under their names (for [`crate::Model::load`] and
    /// [`WeightMap::save_safetensors`]).
    pub fn to_weight_map(&self) -> WeightMap {
        self.map_of(&self.data)
    }

    /// Any buffer laid out like [`ParamSet::data`] (e.g. an optimiser's
    /// moments) as named tensors.
    pub fn map_of(&self, buf: &[f32]) -> WeightMap {
        WeightMap::from_map(
            self.entries
                .iter()
                .map(|e| {
                    (
                        e.name.clone(),
                        HostTensor {
                            shape: e.shape.clone(),
                            data: buf[e.range.clone()].to_vec(),
                        },
                    )
                })
                .collect(),
        )
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no parameters (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves the tensors of `weights` (checked against the expected names
    /// and shapes first) out of the map, in layout order, each with its
    /// range: the parts of [`crate::Backend::upload_params`].
    pub fn take_parts(&self, mut weights: WeightMap) -> Result<Vec<(Range<usize>, Vec<f32>)>> {
        weights.check(&param_shapes(&self.cfg, self.backbone))?;
        self.entries
            .iter()
            .map(|e| {
                let t = take(&mut weights, &e.name)?;
                Ok((e.range.clone(), t.data))
            })
            .collect()
    }

    /// The range of a tensor by name.
    pub fn range(&self, name: &str) -> Result<Range<usize>> {
        self.index
            .get(name)
            .map(|&i| self.entries[i].range.clone())
            .ok_or_else(|| ModelError::UnknownParameter {
                name: name.to_string(),
            })
    }

    /// The values of a tensor by name.
    pub fn get(&self, name: &str) -> Result<&[f32]> {
        Ok(&self.data[self.range(name)?])
    }
}

/// Moves tensor `name` out of `weights` (checked beforehand, so a missing
/// one is a mismatch listing it).
fn take(weights: &mut WeightMap, name: &str) -> Result<HostTensor> {
    weights
        .take(name)
        .ok_or_else(|| ModelError::WeightsMismatch {
            missing: vec![name.to_string()],
            unexpected: vec![],
            mis_shaped: vec![],
        })
}
