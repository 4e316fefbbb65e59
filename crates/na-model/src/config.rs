//! Model configurations: a serde schema whose fields mirror the authors'
//! constructor arguments, and the named presets of MODELS.md.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The architecture family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Hierarchical NAT with overlapping convolutions (`levels.{i}`); DiNAT is
    /// this with per-block dilations.
    Nat,
    /// Alias of [`Arch::Nat`] (DiNAT is NAT with dilations).
    Dinat,
    /// Swin-like layout: 4×4 patch embedding, patch merging (`layers.{i}`).
    DinatS,
    /// One level at stride 16: 16×16 patch embedding, `layers.{i}` blocks.
    Isotropic,
}

impl Arch {
    /// Whether the model has the hierarchical NAT layout.
    pub fn is_nat(self) -> bool {
        matches!(self, Arch::Nat | Arch::Dinat)
    }
}

/// A model configuration. JSON example:
///
/// ```json
/// {"arch": "nat", "embed_dim": 64, "mlp_ratio": 3.0, "depths": [3, 4, 6, 5],
///  "num_heads": [2, 4, 8, 16], "kernel_size": 7,
///  "dilations": [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]],
///  "layer_scale": null, "num_classes": 1000, "in_chans": 3}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Architecture family.
    pub arch: Arch,
    /// Channels of the first level (`E`).
    pub embed_dim: usize,
    /// MLP hidden width as a multiple of the channels (hidden = `int(C * r)`).
    pub mlp_ratio: f64,
    /// Blocks per level (one entry for isotropic models).
    pub depths: Vec<usize>,
    /// Attention heads per level.
    pub num_heads: Vec<usize>,
    /// Neighborhood size (both axes).
    pub kernel_size: usize,
    /// Dilation of every block, per level (`None`: all 1).
    #[serde(default)]
    pub dilations: Option<Vec<Vec<usize>>>,
    /// Layer-scale initial value; `Some` means the blocks have `gamma1` and
    /// `gamma2` weights (their values come from the checkpoint).
    #[serde(default)]
    pub layer_scale: Option<f64>,
    /// Classes of the head (0: no head, the pooled features are returned).
    pub num_classes: usize,
    /// Input channels.
    #[serde(default = "three")]
    pub in_chans: usize,
    /// NAT/DiNAT only: strides of the two 3×3 stem convolutions (`None`:
    /// the authors' `[2, 2]`, a stride-4 stem). Small inputs such as 28×28
    /// use `[1, 2]`. Omitted from JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stem_strides: Option<[usize; 2]>,
}

fn three() -> usize {
    3
}

/// Shape facts of one level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelSpec {
    /// Channels.
    pub dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
}

impl Config {
    /// Parses a JSON configuration and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let c: Config =
            serde_json::from_str(text).map_err(|e| ModelError::Config(format!("JSON: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    /// Number of levels.
    pub fn levels(&self) -> usize {
        self.depths.len()
    }

    /// Strides of the two stem convolutions of a NAT/DiNAT model.
    pub fn stem_strides(&self) -> [usize; 2] {
        self.stem_strides.unwrap_or([2, 2])
    }

    /// Channels of level `i`.
    pub fn dim(&self, i: usize) -> usize {
        match self.arch {
            Arch::Isotropic => self.embed_dim,
            _ => self.embed_dim << i,
        }
    }

    /// Facts of level `i`.
    pub fn level(&self, i: usize) -> LevelSpec {
        LevelSpec {
            dim: self.dim(i),
            depth: self.depths[i],
            heads: self.num_heads[i],
        }
    }

    /// The dilation of block `j` of level `i`.
    pub fn dilation(&self, i: usize, j: usize) -> usize {
        self.dilations.as_ref().map_or(1, |d| d[i][j])
    }

    /// Channels of the final features (input of `norm` and `head`).
    pub fn num_features(&self) -> usize {
        self.dim(self.levels() - 1)
    }

    /// MLP hidden width of a level with `dim` channels: `int(dim * mlp_ratio)`.
    pub fn mlp_hidden(&self, dim: usize) -> usize {
        (dim as f64 * self.mlp_ratio) as usize
    }

    /// Checks every field; the error names the field and value.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        let levels_ok = match self.arch {
            Arch::Isotropic => self.depths.len() == 1,
            _ => (1..=4).contains(&self.depths.len()),
        };
        if !levels_ok {
            let want = if self.arch == Arch::Isotropic {
                "1"
            } else {
                "1 to 4"
            };
            return bad(format!(
                "depths has {} levels, {:?} models have {want}",
                self.depths.len(),
                self.arch
            ));
        }
        if let Some(s) = self.stem_strides {
            if !self.arch.is_nat() {
                return bad(format!(
                    "stem_strides {s:?} is given, but only NAT/DiNAT models have a \
                     convolutional stem"
                ));
            }
            if let Some(&x) = s.iter().find(|&&x| !(1..=4).contains(&x)) {
                return bad(format!("stem_strides {s:?}: stride {x} is not in 1..=4"));
            }
        }
        if self.num_heads.len() != self.depths.len() {
            return bad(format!(
                "num_heads has {} entries for {} levels",
                self.num_heads.len(),
                self.depths.len()
            ));
        }
        if self.embed_dim == 0 || self.in_chans == 0 {
            return bad(format!(
                "embed_dim ({}) and in_chans ({}) must be positive",
                self.embed_dim, self.in_chans
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0)
            || self.mlp_hidden(self.embed_dim) == 0
        {
            return bad(format!(
                "mlp_ratio {} gives no hidden units",
                self.mlp_ratio
            ));
        }
        if self.kernel_size < 2 {
            return bad(format!("kernel_size {} is below 2", self.kernel_size));
        }
        if self.embed_dim.checked_shl(self.levels() as u32).is_none() || self.embed_dim > 1 << 20 {
            return bad(format!("embed_dim {} is too large", self.embed_dim));
        }
        for i in 0..self.levels() {
            let (dim, h) = (self.dim(i), self.num_heads[i]);
            if h == 0 || dim % h != 0 {
                return bad(format!(
                    "level {i}: {dim} channels do not split into {h} heads"
                ));
            }
            if self.depths[i] > 1024 {
                return bad(format!("level {i}: depth {} is absurd", self.depths[i]));
            }
        }
        if let Some(d) = &self.dilations {
            if d.len() != self.levels() {
                return bad(format!(
                    "dilations has {} levels, depths has {}",
                    d.len(),
                    self.levels()
                ));
            }
            for (i, (di, &n)) in d.iter().zip(&self.depths).enumerate() {
                if di.len() != n {
                    return bad(format!(
                        "dilations[{i}] has {} entries for {n} blocks",
                        di.len()
                    ));
                }
                if let Some(j) = di.iter().position(|&x| x == 0 || x > 4096) {
                    return bad(format!("dilations[{i}][{j}] = {} is out of range", di[j]));
                }
            }
        }
        if let Some(ls) = self.layer_scale {
            if !ls.is_finite() {
                return bad(format!("layer_scale {ls} is not finite"));
            }
        }
        Ok(())
    }

    /// The parameter count of the model (with its head), from the shapes.
    pub fn param_count(&self) -> usize {
        param_shapes(self, false)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// A named preset (MODELS.md): `nat_mini` … `nat_base`, `dinat_mini` …
    /// `dinat_large`, `dinat_s_tiny` … `dinat_s_large`, `nat_isotropic_small`,
    /// `nat_isotropic_base`, `dinat_isotropic_small`, `dinat_isotropic_base`.
    /// All at 1000 classes with the 224-pixel dilations.
    pub fn preset(name: &str) -> Result<Self> {
        PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f())
            .ok_or_else(|| ModelError::UnknownPreset {
                name: name.to_string(),
                known: preset_names().collect::<Vec<_>>().join(", "),
            })
    }
}

/// Names of every preset.
pub fn preset_names() -> impl Iterator<Item = &'static str> {
    PRESETS.iter().map(|(n, _)| *n)
}

type Preset = (&'static str, fn() -> Config);

const PRESETS: &[Preset] = &[
    ("nat_mini", || nat([3, 4, 6, 5], 64, 3.0, None, false)),
    ("nat_tiny", || nat([3, 4, 18, 5], 64, 3.0, None, false)),
    ("nat_small", || {
        nat([3, 4, 18, 5], 96, 2.0, Some(1e-5), false)
    }),
    ("nat_base", || {
        nat([3, 4, 18, 5], 128, 2.0, Some(1e-5), false)
    }),
    ("dinat_mini", || nat([3, 4, 6, 5], 64, 3.0, None, true)),
    ("dinat_tiny", || nat([3, 4, 18, 5], 64, 3.0, None, true)),
    ("dinat_small", || nat([3, 4, 18, 5], 96, 2.0, None, true)),
    ("dinat_base", || {
        nat([3, 4, 18, 5], 128, 2.0, Some(1e-5), true)
    }),
    ("dinat_large", || nat([3, 4, 18, 5], 192, 2.0, None, true)),
    ("dinat_s_tiny", || dinat_s([2, 2, 6, 2], 96)),
    ("dinat_s_small", || dinat_s([2, 2, 18, 2], 96)),
    ("dinat_s_base", || dinat_s([2, 2, 18, 2], 128)),
    ("dinat_s_large", || dinat_s([2, 2, 18, 2], 192)),
    ("nat_isotropic_small", || isotropic(384, 12, 1)),
    ("nat_isotropic_base", || isotropic(768, 24, 1)),
    ("dinat_isotropic_small", || isotropic(384, 12, 2)),
    ("dinat_isotropic_base", || isotropic(768, 24, 2)),
    ("fashion_dinat", || fashion(true)),
    ("fashion_nat", || fashion(false)),
];

/// Heads per level: `E / 32` doubling (2,4,8,16 at E=64; 3,6,12,24 at 96 …).
fn heads(e: usize) -> Vec<usize> {
    (0..4).map(|i| (e / 32) << i).collect()
}

/// DiNAT's 224-pixel dilations: `[1,8,1…]`, `[1,4,1,4…]`, `[1,2…]`, all 1.
fn dinat_dilations(depths: &[usize], last_level: [usize; 4]) -> Vec<Vec<usize>> {
    depths
        .iter()
        .zip(last_level)
        .map(|(&n, d)| (0..n).map(|j| if j % 2 == 1 { d } else { 1 }).collect())
        .collect()
}

fn nat(depths: [usize; 4], e: usize, r: f64, ls: Option<f64>, dilated: bool) -> Config {
    Config {
        arch: if dilated { Arch::Dinat } else { Arch::Nat },
        embed_dim: e,
        mlp_ratio: r,
        depths: depths.to_vec(),
        num_heads: heads(e),
        kernel_size: 7,
        dilations: dilated.then(|| dinat_dilations(&depths, [8, 4, 2, 1])),
        layer_scale: ls,
        num_classes: 1000,
        in_chans: 3,
        stem_strides: None,
    }
}

fn dinat_s(depths: [usize; 4], e: usize) -> Config {
    Config {
        arch: Arch::DinatS,
        embed_dim: e,
        mlp_ratio: 4.0,
        depths: depths.to_vec(),
        num_heads: heads(e),
        kernel_size: 7,
        dilations: Some(dinat_dilations(&depths, [8, 4, 2, 1])),
        layer_scale: None,
        num_classes: 1000,
        in_chans: 3,
        stem_strides: None,
    }
}

/// The 28×28 grey, 10-class model trained on Fashion-MNIST (issue 7): a
/// stride-2 stem (`[1, 2]`) to 14×14 tokens, three levels (14×14, 7×7,
/// 4×4), kernel 5; the DiNAT version alternates dilation 2 on the first
/// level (the largest that fits 14 tokens: `5·2 <= 14`), the NAT version
/// has dilation 1 everywhere (same FLOPs).
fn fashion(dilated: bool) -> Config {
    let depths = vec![2, 2, 4];
    let dil = dilated.then(|| {
        depths
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                (0..n)
                    .map(|j| if i == 0 && j % 2 == 1 { 2 } else { 1 })
                    .collect()
            })
            .collect()
    });
    Config {
        arch: if dilated { Arch::Dinat } else { Arch::Nat },
        embed_dim: 32,
        mlp_ratio: 3.0,
        depths,
        num_heads: vec![1, 2, 4],
        kernel_size: 5,
        dilations: dil,
        layer_scale: None,
        num_classes: 10,
        in_chans: 1,
        stem_strides: Some([1, 2]),
    }
}

fn isotropic(e: usize, h: usize, d: usize) -> Config {
    Config {
        arch: Arch::Isotropic,
        embed_dim: e,
        mlp_ratio: 4.0,
        depths: vec![12],
        num_heads: vec![h],
        kernel_size: 7,
        dilations: Some(vec![(0..12)
            .map(|j| if j % 2 == 1 { d } else { 1 })
            .collect()]),
        layer_scale: None,
        num_classes: 1000,
        in_chans: 3,
        stem_strides: None,
    }
}

/// LayerNorm epsilon of every norm in the models.
pub const LN_EPS: f32 = 1e-5;

/// Names and shapes of every weight of `cfg` (authors' key names), with the
/// classification head, or with the backbone's `norm0..norm3` instead.
pub fn param_shapes(cfg: &Config, backbone: bool) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut push = |n: String, s: Vec<usize>| v.push((n, s));
    let (e, cin) = (cfg.embed_dim, cfg.in_chans);
    let norm = |push: &mut dyn FnMut(String, Vec<usize>), p: &str, c: usize| {
        push(format!("{p}.weight"), vec![c]);
        push(format!("{p}.bias"), vec![c]);
    };
    match cfg.arch {
        Arch::Nat | Arch::Dinat => {
            push("patch_embed.proj.0.weight".into(), vec![e / 2, cin, 3, 3]);
            push("patch_embed.proj.0.bias".into(), vec![e / 2]);
            push("patch_embed.proj.1.weight".into(), vec![e, e / 2, 3, 3]);
            push("patch_embed.proj.1.bias".into(), vec![e]);
        }
        Arch::DinatS => {
            push("patch_embed.proj.weight".into(), vec![e, cin, 4, 4]);
            push("patch_embed.proj.bias".into(), vec![e]);
        }
        Arch::Isotropic => {
            push("patch_embed.proj.weight".into(), vec![e, cin, 16, 16]);
            push("patch_embed.proj.bias".into(), vec![e]);
        }
    }
    norm(&mut push, "patch_embed.norm", e);
    let group = if cfg.arch.is_nat() {
        "levels"
    } else {
        "layers"
    };
    let k = cfg.kernel_size;
    for i in 0..cfg.levels() {
        let l = cfg.level(i);
        let c = l.dim;
        let hid = cfg.mlp_hidden(c);
        for j in 0..l.depth {
            let p = block_prefix(cfg, i, j);
            norm(&mut push, &format!("{p}.norm1"), c);
            push(format!("{p}.attn.qkv.weight"), vec![3 * c, c]);
            push(format!("{p}.attn.qkv.bias"), vec![3 * c]);
            push(format!("{p}.attn.rpb"), vec![l.heads, 2 * k - 1, 2 * k - 1]);
            push(format!("{p}.attn.proj.weight"), vec![c, c]);
            push(format!("{p}.attn.proj.bias"), vec![c]);
            norm(&mut push, &format!("{p}.norm2"), c);
            push(format!("{p}.mlp.fc1.weight"), vec![hid, c]);
            push(format!("{p}.mlp.fc1.bias"), vec![hid]);
            push(format!("{p}.mlp.fc2.weight"), vec![c, hid]);
            push(format!("{p}.mlp.fc2.bias"), vec![c]);
            if cfg.layer_scale.is_some() {
                push(format!("{p}.gamma1"), vec![c]);
                push(format!("{p}.gamma2"), vec![c]);
            }
        }
        if i + 1 < cfg.levels() {
            let p = format!("{group}.{i}.downsample");
            match cfg.arch {
                Arch::DinatS => {
                    norm(&mut push, &format!("{p}.norm"), 4 * c);
                    push(format!("{p}.reduction.weight"), vec![2 * c, 4 * c]);
                }
                _ => {
                    push(format!("{p}.reduction.weight"), vec![2 * c, c, 3, 3]);
                    norm(&mut push, &format!("{p}.norm"), 2 * c);
                }
            }
        }
        if backbone {
            norm(&mut push, &format!("norm{i}"), c);
        }
    }
    if !backbone {
        let f = cfg.num_features();
        norm(&mut push, "norm", f);
        if cfg.num_classes > 0 {
            push("head.weight".into(), vec![cfg.num_classes, f]);
            push("head.bias".into(), vec![cfg.num_classes]);
        }
    }
    v
}

/// Key prefix of block `j` of level `i`: `levels.{i}.blocks.{j}` (NAT,
/// DiNAT), `layers.{i}.blocks.{j}` (DiNAT_s), `layers.{j}` (isotropic).
pub(crate) fn block_prefix(cfg: &Config, i: usize, j: usize) -> String {
    match cfg.arch {
        Arch::Nat | Arch::Dinat => format!("levels.{i}.blocks.{j}"),
        Arch::DinatS => format!("layers.{i}.blocks.{j}"),
        Arch::Isotropic => format!("layers.{j}"),
    }
}
