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

// The documented range of every field. Each bound is far above any published
// model and low enough that the arithmetic of the parameter count, the
// multiply-adds and the shapes cannot overflow 64 bits (it is checked all the
// same); [`Config::validate`] refuses values outside them with
// [`ModelError::OutOfRange`] naming the field and the value.

/// Largest `kernel_size` (the published models use 7; NATTEN's kernels go to 63).
pub const MAX_KERNEL_SIZE: usize = 255;
/// Largest dilation of a block (`dilations[i][j]`).
pub const MAX_DILATION: usize = 4096;
/// Largest number of blocks in one level (`depths[i]`).
pub const MAX_DEPTH: usize = 1024;
/// Largest number of channels of any level (`embed_dim` doubles per level
/// in hierarchical models, so `embed_dim << (levels - 1)` is bounded). Heads
/// divide a level's channels, so they are bounded by it too.
pub const MAX_CHANNELS: usize = 1 << 16;
/// Largest number of input channels (`in_chans`).
pub const MAX_IN_CHANS: usize = 1024;
/// Largest number of classes (`num_classes`; ImageNet-21k has 21,841).
pub const MAX_NUM_CLASSES: usize = 1 << 24;
/// Largest `mlp_ratio` (it must also be finite and give at least one hidden unit).
pub const MAX_MLP_RATIO: f64 = 64.0;
/// Largest `|layer_scale|` (the authors use 1e-5 to 1; it must be finite).
pub const MAX_LAYER_SCALE: f64 = 1e6;
/// Largest parameter count of a model (2^32 parameters: 16 GiB of f32, the
/// largest weights file [`crate::WeightMap::load`] reads).
pub const MAX_PARAMS: u64 = 1 << 32;
/// Largest input height or width (the same bound as [`crate::Model::forward`]'s).
pub const MAX_IMAGE_SIDE: usize = 1 << 15;

/// Bytes of one activation value (f32).
const ACT_BYTES: u128 = 4;

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
    /// Parses a JSON configuration (the fields of [`Config`], as
    /// `serde_json` writes them) and validates it.
    ///
    /// ```
    /// use na_model::{Config, ModelError};
    /// let cfg = Config::preset("nat_mini")?;
    /// let json = serde_json::to_string(&cfg).unwrap();
    /// assert_eq!(Config::from_json(&json)?, cfg);
    ///
    /// // A configuration that contradicts itself names the field at fault.
    /// let bad = json.replace("\"num_heads\":[2,4,8,16]", "\"num_heads\":[2,4]");
    /// match Config::from_json(&bad) {
    ///     Err(ModelError::Config { field, reason }) => {
    ///         assert_eq!(field, "num_heads");
    ///         assert!(reason.contains("2 entries for 4 levels"), "{reason}");
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// assert!(matches!(Config::from_json("{"), Err(ModelError::ConfigJson(_))));
    /// # Ok::<(), ModelError>(())
    /// ```
    pub fn from_json(text: &str) -> Result<Self> {
        let c: Config = serde_json::from_str(text).map_err(ModelError::ConfigJson)?;
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

    /// Checks every field against its documented range (the `MAX_*`
    /// constants of this module) and the fields against each other, then
    /// that the parameter count stays under [`MAX_PARAMS`]; the error names
    /// the field and value.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| Err(ModelError::Config { field, reason });
        let range = |field: &str, value: String, range: String| {
            Err(ModelError::OutOfRange {
                field: field.to_string(),
                value,
                range,
            })
        };
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
            return bad(
                "depths",
                format!(
                    "depths has {} levels, {:?} models have {want}",
                    self.depths.len(),
                    self.arch
                ),
            );
        }
        if let Some(s) = self.stem_strides {
            if !self.arch.is_nat() {
                return bad(
                    "stem_strides",
                    format!(
                        "stem_strides {s:?} is given, but only NAT/DiNAT models have a \
                     convolutional stem"
                    ),
                );
            }
            if let Some(&x) = s.iter().find(|&&x| !(1..=4).contains(&x)) {
                return bad(
                    "stem_strides",
                    format!("stem_strides {s:?}: stride {x} is not in 1..=4"),
                );
            }
        }
        if self.num_heads.len() != self.depths.len() {
            return bad(
                "num_heads",
                format!(
                    "num_heads has {} entries for {} levels",
                    self.num_heads.len(),
                    self.depths.len()
                ),
            );
        }
        // NAT's stem has embed_dim / 2 channels after its first convolution.
        let min_embed = if self.arch.is_nat() { 2 } else { 1 };
        if !(min_embed..=MAX_CHANNELS).contains(&self.embed_dim) {
            return range(
                "embed_dim",
                self.embed_dim.to_string(),
                format!("{min_embed}..={MAX_CHANNELS}, MAX_CHANNELS"),
            );
        }
        let last = self.levels() - 1;
        let widest = match self.arch {
            Arch::Isotropic => Some(self.embed_dim),
            _ => self.embed_dim.checked_mul(1 << last),
        };
        if widest.is_none_or(|c| c > MAX_CHANNELS) {
            return range(
                "embed_dim",
                self.embed_dim.to_string(),
                format!(
                    "1..={} for {} levels: level {last} has embed_dim << {last} channels, \
                     at most MAX_CHANNELS = {MAX_CHANNELS}",
                    MAX_CHANNELS >> last,
                    self.levels()
                ),
            );
        }
        if !(1..=MAX_IN_CHANS).contains(&self.in_chans) {
            return range(
                "in_chans",
                self.in_chans.to_string(),
                format!("1..={MAX_IN_CHANS}, MAX_IN_CHANS"),
            );
        }
        if self.num_classes > MAX_NUM_CLASSES {
            return range(
                "num_classes",
                self.num_classes.to_string(),
                format!("0..={MAX_NUM_CLASSES}, MAX_NUM_CLASSES"),
            );
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0 && self.mlp_ratio <= MAX_MLP_RATIO)
        {
            return range(
                "mlp_ratio",
                format!("{:?}", self.mlp_ratio),
                format!("a finite number in (0, {MAX_MLP_RATIO}], MAX_MLP_RATIO"),
            );
        }
        if self.mlp_hidden(self.embed_dim) == 0 {
            return bad(
                "mlp_ratio",
                format!(
                    "mlp_ratio {} gives no hidden units for {} channels",
                    self.mlp_ratio, self.embed_dim
                ),
            );
        }
        if !(2..=MAX_KERNEL_SIZE).contains(&self.kernel_size) {
            return range(
                "kernel_size",
                self.kernel_size.to_string(),
                format!("2..={MAX_KERNEL_SIZE}, MAX_KERNEL_SIZE"),
            );
        }
        for i in 0..self.levels() {
            let (dim, h) = (self.dim(i), self.num_heads[i]);
            if h == 0 || dim % h != 0 {
                return bad(
                    "num_heads",
                    format!(
                    "level {i}: {dim} channels do not split into {h} heads (num_heads[{i}] = {h})"
                ),
                );
            }
            if self.depths[i] > MAX_DEPTH {
                return range(
                    &format!("depths[{i}]"),
                    self.depths[i].to_string(),
                    format!("0..={MAX_DEPTH}, MAX_DEPTH"),
                );
            }
        }
        if let Some(d) = &self.dilations {
            if d.len() != self.levels() {
                return bad(
                    "dilations",
                    format!(
                        "dilations has {} levels, depths has {}",
                        d.len(),
                        self.levels()
                    ),
                );
            }
            for (i, (di, &n)) in d.iter().zip(&self.depths).enumerate() {
                if di.len() != n {
                    return bad(
                        "dilations",
                        format!("dilations[{i}] has {} entries for {n} blocks", di.len()),
                    );
                }
                if let Some(j) = di.iter().position(|&x| !(1..=MAX_DILATION).contains(&x)) {
                    return range(
                        &format!("dilations[{i}][{j}]"),
                        di[j].to_string(),
                        format!("1..={MAX_DILATION}, MAX_DILATION"),
                    );
                }
            }
        }
        if let Some(ls) = self.layer_scale {
            if !(ls.is_finite() && ls.abs() <= MAX_LAYER_SCALE) {
                return range(
                    "layer_scale",
                    format!("{ls:?}"),
                    format!(
                        "a finite number of magnitude at most {MAX_LAYER_SCALE:e}, MAX_LAYER_SCALE"
                    ),
                );
            }
        }
        let params = self.count_params()?;
        if params > u128::from(MAX_PARAMS) {
            return bad(
                "params",
                format!(
                "the model has {params} parameters, over the limit of {MAX_PARAMS} (MAX_PARAMS)"
            ),
            );
        }
        Ok(())
    }

    /// The parameter count of the model (with its head), in checked
    /// arithmetic; `param_shapes` lists the same weights by name.
    ///
    /// # Errors
    ///
    /// The configuration's own [`Config::validate`] errors (a valid
    /// configuration has at most [`MAX_PARAMS`] parameters).
    pub fn param_count(&self) -> Result<u64> {
        self.validate()?;
        // validate() has checked count_params() <= MAX_PARAMS.
        u64::try_from(self.count_params()?).map_err(|_| overflow("the parameter count"))
    }

    /// The parameter count of a configuration whose fields are in range, in
    /// 128-bit checked arithmetic (the same weights as [`param_shapes`]).
    fn count_params(&self) -> Result<u128> {
        let mut n = Count::default();
        let (e, cin) = (self.embed_dim as u128, self.in_chans as u128);
        match self.arch {
            Arch::Nat | Arch::Dinat => {
                n.add(&[e / 2, cin, 3, 3])?;
                n.add(&[e / 2])?;
                n.add(&[e, e / 2, 3, 3])?;
                n.add(&[e])?;
            }
            Arch::DinatS => {
                n.add(&[e, cin, 4, 4])?.add(&[e])?;
            }
            Arch::Isotropic => {
                n.add(&[e, cin, 16, 16])?.add(&[e])?;
            }
        }
        n.add(&[2, e])?;
        let k = self.kernel_size as u128;
        let rpb = k
            .checked_mul(2)
            .and_then(|x| x.checked_sub(1))
            .ok_or_else(|| overflow("2 * kernel_size - 1"))?;
        for i in 0..self.levels() {
            let l = self.level(i);
            let c = l.dim as u128;
            let hid = self.mlp_hidden(l.dim) as u128;
            let mut block = Count::default();
            block
                .add(&[2, c])?
                .add(&[3 * c, c])?
                .add(&[3 * c])?
                .add(&[l.heads as u128, rpb, rpb])?
                .add(&[c, c])?
                .add(&[c])?
                .add(&[2, c])?
                .add(&[hid, c])?
                .add(&[hid])?
                .add(&[c, hid])?
                .add(&[c])?;
            if self.layer_scale.is_some() {
                block.add(&[2, c])?;
            }
            n.add(&[block.0, l.depth as u128])?;
            if i + 1 < self.levels() {
                match self.arch {
                    Arch::DinatS => n.add(&[2, 4 * c])?.add(&[2 * c, 4 * c])?,
                    _ => n.add(&[2 * c, c, 3, 3])?.add(&[2, 2 * c])?,
                };
            }
        }
        let f = self.num_features() as u128;
        n.add(&[2, f])?;
        if self.num_classes > 0 {
            let k = self.num_classes as u128;
            n.add(&[k, f])?.add(&[k])?;
        }
        Ok(n.0)
    }

    /// Checks an input size against [`MAX_IMAGE_SIDE`].
    pub(crate) fn check_image_size(height: usize, width: usize) -> Result<()> {
        if (1..=MAX_IMAGE_SIDE).contains(&height) && (1..=MAX_IMAGE_SIDE).contains(&width) {
            Ok(())
        } else {
            Err(ModelError::InputShape {
                expected: format!("an image of 1 <= H, W <= {MAX_IMAGE_SIDE} (MAX_IMAGE_SIDE)"),
                got: vec![height, width],
            })
        }
    }

    /// The activation memory, in bytes, of one inference forward pass of a
    /// `batch` of `height × width` images: the input, and the largest set of
    /// f32 tensors alive at once in any stage (the stem; per block the
    /// input, `norm1`'s output padded to `kernel × dilation`, `qkv`, the
    /// attention output and its crop, `norm2`'s output and the MLP's hidden
    /// layer; a downsampler's input and outputs). It is an estimate made
    /// before anything is allocated, in checked arithmetic, so that
    /// [`crate::Model::forward`] can refuse a forward pass over its limit
    /// ([`crate::limits::max_memory_bytes`] unless set) instead of trying it.
    ///
    /// # Errors
    ///
    /// [`Config::validate`]'s errors, an input side of 0 or above
    /// [`MAX_IMAGE_SIDE`], a batch of 0, or [`ModelError::Overflow`].
    pub fn plan_bytes(&self, height: usize, width: usize, batch: usize) -> Result<u64> {
        self.plan(height, width, batch, false)
    }

    /// The activation memory of one training step (forward with the tape
    /// the backward reads, then the backward) of a `batch` of `height ×
    /// width` images: [`Config::plan_bytes`] plus what the tape keeps of
    /// every block (about ten tensors of the block's size each, two of them
    /// padded, and the MLP's hidden layer twice). Errors as
    /// [`Config::plan_bytes`].
    pub fn plan_training_bytes(&self, height: usize, width: usize, batch: usize) -> Result<u64> {
        self.plan(height, width, batch, true)
    }

    fn plan(&self, height: usize, width: usize, batch: usize, training: bool) -> Result<u64> {
        self.validate()?;
        Self::check_image_size(height, width)?;
        if batch == 0 {
            return Err(ModelError::InputShape {
                expected: "a batch of at least 1 image".into(),
                got: vec![batch, self.in_chans, height, width],
            });
        }
        let ovf = || overflow("the activation memory plan");
        let m = |a: u128, b: u128| a.checked_mul(b).ok_or_else(ovf);
        let sum = |v: &[u128]| {
            v.iter()
                .try_fold(0u128, |a, &x| a.checked_add(x))
                .ok_or_else(ovf)
        };
        let (hw, cin) = (height as u128 * width as u128, self.in_chans as u128);
        // Values per image: the NCHW input stays alive for the whole pass.
        let input = m(hw, cin)?;
        let mut peak = 0u128;
        let mut tape = 0u128;
        let e = self.embed_dim as u128;
        let (mut h, mut w) = match self.arch {
            Arch::Nat | Arch::Dinat => {
                let [s0, s1] = self.stem_strides();
                let (h0, w0) = (conv_out(height, s0), conv_out(width, s0));
                let (h1, w1) = (conv_out(h0, s1), conv_out(w0, s1));
                let y0 = m(h0 as u128 * w0 as u128, e / 2)?;
                let y1 = m(h1 as u128 * w1 as u128, e)?;
                // NHWC copy of the input, both stem outputs, and the norm's.
                peak = peak.max(sum(&[input, y0, y1, y1])?);
                tape = sum(&[tape, input, y0, y1, y1])?;
                (h1, w1)
            }
            Arch::DinatS | Arch::Isotropic => {
                let p = if self.arch == Arch::DinatS { 4 } else { 16 };
                let (hp, wp) = (height.div_ceil(p), width.div_ceil(p));
                let padded = m((hp * p) as u128 * (wp * p) as u128, cin)?;
                let y = m(hp as u128 * wp as u128, e)?;
                peak = peak.max(sum(&[input, padded, y, y])?);
                tape = sum(&[tape, padded, y, y])?;
                (hp, wp)
            }
        };
        let k = self.kernel_size;
        for i in 0..self.levels() {
            let l = self.level(i);
            let c = l.dim as u128;
            let hid = self.mlp_hidden(l.dim) as u128;
            let n = h as u128 * w as u128;
            for j in 0..l.depth {
                let kd = k * self.dilation(i, j);
                let np = h.max(kd) as u128 * w.max(kd) as u128;
                let (x, xp, nh) = (m(n, c)?, m(np, c)?, m(n, hid)?);
                // x, norm1's output and its padded copy, qkv (3C), the
                // attention output and its crop, norm2's output, the MLP's
                // hidden layer and the block's output.
                let live = sum(&[x, x, xp, m(xp, 3)?, xp, x, x, nh, x])?;
                peak = peak.max(sum(&[input, live])?);
                // The tape: x, y1 (padded), qkv, a, lse, a_cropped, x_mid,
                // y2, fc1's input and output, GELU's output, the output.
                let kept = sum(&[x, xp, m(xp, 3)?, xp, np, x, x, x, nh, nh, x])?;
                tape = sum(&[tape, kept])?;
            }
            if i + 1 < self.levels() {
                let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
                let n2 = h2 as u128 * w2 as u128;
                let x = m(n, c)?;
                let down = match self.arch {
                    // Merged patches (4C), their norm, the reduction (2C).
                    Arch::DinatS => sum(&[x, m(n2, 4 * c)?, m(n2, 4 * c)?, m(n2, 2 * c)?])?,
                    // The convolution (2C) and its norm.
                    _ => sum(&[x, m(n2, 2 * c)?, m(n2, 2 * c)?])?,
                };
                peak = peak.max(sum(&[input, down])?);
                tape = sum(&[tape, down])?;
                (h, w) = (h2, w2);
            }
        }
        let per_image = if training { sum(&[peak, tape])? } else { peak };
        let bytes = m(m(per_image, batch as u128)?, ACT_BYTES)?;
        u64::try_from(bytes).map_err(|_| ovf())
    }

    /// Refuses a forward pass whose [`Config::plan_bytes`] (or, with
    /// `training`, [`Config::plan_training_bytes`]) exceeds `limit` bytes,
    /// with [`ModelError::MemoryLimit`] naming both; returns the plan.
    pub fn check_memory(
        &self,
        height: usize,
        width: usize,
        batch: usize,
        training: bool,
        limit: u64,
    ) -> Result<u64> {
        let needed = self.plan(height, width, batch, training)?;
        if needed > limit {
            return Err(ModelError::MemoryLimit {
                what: format!(
                    "{} at {height}x{width}, batch {batch}",
                    if training { "training" } else { "the model" }
                ),
                needed,
                limit,
            });
        }
        Ok(needed)
    }

    /// A named preset (MODELS.md): `nat_mini` … `nat_base`, `dinat_mini` …
    /// `dinat_large`, `dinat_s_tiny` … `dinat_s_large`, `nat_isotropic_small`,
    /// `nat_isotropic_base`, `dinat_isotropic_small`, `dinat_isotropic_base`.
    /// All at 1000 classes with the 224-pixel dilations.
    ///
    /// ```
    /// use na_model::{Arch, Config};
    /// let cfg = Config::preset("dinat_tiny")?;
    /// assert_eq!((cfg.arch, cfg.depths.clone()), (Arch::Dinat, vec![3, 4, 18, 5]));
    /// assert!(Config::preset("dinat_huge").is_err()); // the error lists the known names
    /// # Ok::<(), na_model::ModelError>(())
    /// ```
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

/// Output side of the NAT stem's 3×3 convolutions (padding 1) at `stride`.
pub(crate) fn conv_out(n: usize, stride: usize) -> usize {
    (n + 2 - 3) / stride + 1
}

fn overflow(what: &str) -> ModelError {
    ModelError::Overflow {
        what: what.to_string(),
    }
}

/// A running parameter count in checked 128-bit arithmetic.
#[derive(Default)]
struct Count(u128);

impl Count {
    /// Adds the product of `shape`.
    fn add(&mut self, shape: &[u128]) -> Result<&mut Self> {
        let n = shape
            .iter()
            .try_fold(1u128, |a, &d| a.checked_mul(d))
            .and_then(|n| self.0.checked_add(n))
            .ok_or_else(|| overflow("the parameter count"))?;
        self.0 = n;
        Ok(self)
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

/// The 28×28 grey, 10-class model trained on Fashion-MNIST (issue 7, widened
/// in issue 17: embed 40, depths 2-4-2, heads 2-4-8, 965,486 parameters,
/// 35 M multiply-adds): a stride-2 stem (`[1, 2]`) to 14×14 tokens, three
/// levels (14×14, 7×7, 4×4), kernel 5; the DiNAT version alternates dilation 2 on the first
/// level (the largest that fits 14 tokens: `5·2 <= 14`), the NAT version
/// has dilation 1 everywhere (same FLOPs).
fn fashion(dilated: bool) -> Config {
    let depths = vec![2, 4, 2];
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
        embed_dim: 40,
        mlp_ratio: 3.0,
        depths,
        num_heads: vec![2, 4, 8],
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::analyze;

    fn fashion_json(edit: &str) -> String {
        let mut v = serde_json::to_value(Config::preset("fashion_dinat").unwrap()).unwrap();
        let patch: serde_json::Value = serde_json::from_str(edit).unwrap();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string()
    }

    fn out_of_range(edit: &str) -> (String, String, String) {
        match Config::from_json(&fashion_json(edit)) {
            Err(ModelError::OutOfRange {
                field,
                value,
                range,
            }) => (field, value, range),
            other => panic!("{edit}: expected OutOfRange, got {other:?}"),
        }
    }

    #[test]
    fn every_field_is_range_checked() {
        for (edit, field, value, max) in [
            (
                r#"{"kernel_size": 1099511627776}"#,
                "kernel_size",
                "1099511627776",
                "MAX_KERNEL_SIZE",
            ),
            (
                r#"{"kernel_size": 9223372036854775809}"#,
                "kernel_size",
                "9223372036854775809",
                "MAX_KERNEL_SIZE",
            ),
            (
                r#"{"kernel_size": 1}"#,
                "kernel_size",
                "1",
                "MAX_KERNEL_SIZE",
            ),
            (
                r#"{"num_classes": 18446744073709551615}"#,
                "num_classes",
                "18446744073709551615",
                "MAX_NUM_CLASSES",
            ),
            (
                r#"{"mlp_ratio": 1e300}"#,
                "mlp_ratio",
                "1e300",
                "MAX_MLP_RATIO",
            ),
            (
                r#"{"mlp_ratio": -1.0}"#,
                "mlp_ratio",
                "-1.0",
                "MAX_MLP_RATIO",
            ),
            (
                r#"{"embed_dim": 65536}"#,
                "embed_dim",
                "65536",
                "MAX_CHANNELS",
            ),
            (r#"{"embed_dim": 0}"#, "embed_dim", "0", "MAX_CHANNELS"),
            (r#"{"in_chans": 5000}"#, "in_chans", "5000", "MAX_IN_CHANS"),
            (
                r#"{"layer_scale": 1e300}"#,
                "layer_scale",
                "1e300",
                "MAX_LAYER_SCALE",
            ),
            (
                r#"{"depths": [2, 2, 2000], "dilations": null}"#,
                "depths[2]",
                "2000",
                "MAX_DEPTH",
            ),
            (
                r#"{"dilations": [[1, 4097], [1, 1], [1, 1, 1, 1]]}"#,
                "dilations[0][1]",
                "4097",
                "MAX_DILATION",
            ),
            (
                r#"{"dilations": [[1, 0], [1, 1], [1, 1, 1, 1]]}"#,
                "dilations[0][1]",
                "0",
                "MAX_DILATION",
            ),
        ] {
            let (f, v, r) = out_of_range(edit);
            assert_eq!((f.as_str(), v.as_str()), (field, value), "{edit}");
            assert!(r.contains(max), "{edit}: {r}");
            let msg = Config::from_json(&fashion_json(edit))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(field) && msg.contains(value), "{msg}");
        }
        // The sane maxima themselves are accepted.
        for edit in [
            r#"{"kernel_size": 255}"#,
            r#"{"num_classes": 16777216}"#,
            r#"{"mlp_ratio": 64.0}"#,
            r#"{"embed_dim": 1024, "num_heads": [1, 1, 1]}"#,
        ] {
            Config::from_json(&fashion_json(edit)).unwrap_or_else(|e| panic!("{edit}: {e}"));
        }
        // Too many parameters in all.
        let e = Config::from_json(&fashion_json(
            r#"{"embed_dim": 16384, "num_heads": [1, 1, 1]}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("MAX_PARAMS"), "{e}");
    }

    #[test]
    fn param_count_is_the_sum_of_the_shapes() {
        for name in preset_names() {
            let cfg = Config::preset(name).unwrap();
            let want: usize = param_shapes(&cfg, false)
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            assert_eq!(cfg.param_count().unwrap(), want as u64, "{name}");
        }
    }

    #[test]
    fn analyze_checks_the_input_size_and_overflow() {
        let cfg = Config::preset("fashion_dinat").unwrap();
        for (h, w) in [(4294967296, 4294967296), (0, 28), (28, 32769)] {
            let e = analyze(&cfg, h, w).unwrap_err();
            assert!(matches!(e, ModelError::InputShape { .. }), "{e}");
            assert!(e.to_string().contains("MAX_IMAGE_SIDE"), "{e}");
        }
        // The largest model at the largest size still fits in u64 FLOPs.
        let mut big = Config::preset("dinat_large").unwrap();
        big.num_classes = 100_000;
        let info = analyze(&big, MAX_IMAGE_SIDE, MAX_IMAGE_SIDE).unwrap();
        assert!(
            info.macs > 1 << 45 && info.flops() == 2 * info.macs,
            "{}",
            info.macs
        );
    }

    #[test]
    fn activation_plan_refuses_huge_dilations() {
        let mut cfg = Config::preset("fashion_dinat").unwrap();
        let small = cfg.plan_bytes(28, 28, 1).unwrap();
        assert!(small < 16 << 20, "{small}");
        assert!(cfg.plan_training_bytes(28, 28, 128).unwrap() > 128 * small);
        assert_eq!(cfg.plan_bytes(28, 28, 4).unwrap(), 4 * small);
        cfg.dilations.as_mut().unwrap()[0][1] = MAX_DILATION;
        // 5 × 4096 = 20480: the 14×14 map of level 0 is padded to 20480².
        let needed = cfg.plan_bytes(28, 28, 1).unwrap();
        assert!(needed > 20480 * 20480 * 32 * 4, "{needed}");
        let e = cfg.check_memory(28, 28, 1, false, 8 << 30).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ModelError::MemoryLimit { .. }), "{msg}");
        assert!(
            msg.contains("GiB of activations, over the 8.0 GiB limit"),
            "{msg}"
        );
        assert!(cfg.plan_bytes(28, 28, 0).is_err());
        assert!(cfg.plan_bytes(0, 28, 1).is_err());
    }
}
