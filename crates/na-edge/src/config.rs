//! [`EdgeConfig`]: the shape of a NAT/DiNAT classifier, in fixed-size
//! arrays so that it needs no allocator, and the canonical walk of its
//! checkpoint keys.

use core::fmt::Write;

/// Bytes of a key name field in the weight blob's tensor table: every key
/// the configuration walk produces fits it.
pub const NAME_LEN: usize = 64;

use crate::error::{EdgeError, Shape};

/// Most levels of a model (the published models have 4).
pub const MAX_LEVELS: usize = 4;
/// Most blocks in one level (the published models have at most 18).
pub const MAX_DEPTH: usize = 32;
/// Largest channel count of any level, and of the MLP hidden width.
pub const MAX_CHANNELS: usize = 1 << 16;
/// Largest kernel size.
pub const MAX_KERNEL_SIZE: usize = 255;
/// Largest dilation.
pub const MAX_DILATION: usize = 4096;
/// Largest number of input channels.
pub const MAX_IN_CHANS: usize = 1024;
/// Largest number of classes.
pub const MAX_NUM_CLASSES: usize = 1 << 24;
/// LayerNorm epsilon of every norm (the std model's `LN_EPS`).
pub const LN_EPS: f32 = 1e-5;

/// The architecture family. Only [`Arch::Nat`] and [`Arch::Dinat`] run here;
/// the others exist so that a blob or a conversion naming them gets a typed
/// [`EdgeError::Unsupported`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Hierarchical NAT: two 3×3 stem convolutions, convolutional downsampler.
    Nat,
    /// DiNAT: NAT with per-block dilations.
    Dinat,
    /// DiNAT_s (patch embedding, patch merging): unsupported.
    DinatS,
    /// Isotropic NAT/DiNAT: unsupported.
    Isotropic,
}

impl Arch {
    /// The code stored in a blob.
    pub fn code(self) -> u32 {
        match self {
            Arch::Nat => 0,
            Arch::Dinat => 1,
            Arch::DinatS => 2,
            Arch::Isotropic => 3,
        }
    }

    /// The architecture of a blob code.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Arch::Nat,
            1 => Arch::Dinat,
            2 => Arch::DinatS,
            3 => Arch::Isotropic,
            _ => return None,
        })
    }
}

/// The shape of a NAT/DiNAT classifier, with no allocation: per-level
/// values in arrays of [`MAX_LEVELS`], dilations in `[MAX_LEVELS][MAX_DEPTH]`.
///
/// Level `i` has `embed_dim << i` channels. Build one with
/// [`EdgeConfig::new`] and the `with_*` methods; [`EdgeConfig::validate`]
/// checks every field (the constructors call it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeConfig {
    /// Architecture family (only NAT and DiNAT run).
    pub arch: Arch,
    /// Input channels.
    pub in_chans: usize,
    /// Channels of the first level (`E`; the first stem convolution has `E / 2`).
    pub embed_dim: usize,
    /// Number of levels, `1..=MAX_LEVELS`.
    pub levels: usize,
    /// Blocks per level (entries past `levels` are 0).
    pub depths: [usize; MAX_LEVELS],
    /// Attention heads per level.
    pub num_heads: [usize; MAX_LEVELS],
    /// MLP hidden width per level (`int(C · mlp_ratio)` in the std model).
    pub mlp_hidden: [usize; MAX_LEVELS],
    /// Neighborhood size (both axes).
    pub kernel_size: usize,
    /// Dilation of block `j` of level `i` at `[i][j]` (1 where unused).
    pub dilations: [[usize; MAX_DEPTH]; MAX_LEVELS],
    /// Whether blocks have layer-scale weights `gamma1`, `gamma2`.
    pub layer_scale: bool,
    /// Classes of the head; 0 means no head (the pooled features are the output).
    pub num_classes: usize,
    /// Strides of the two 3×3 stem convolutions (`[2, 2]` for the published models).
    pub stem_strides: [usize; 2],
}

impl EdgeConfig {
    /// A configuration with dilation 1 everywhere, no layer scale and the
    /// authors' `[2, 2]` stem, validated.
    ///
    /// `depths`, `num_heads` and `mlp_hidden` have one entry per level.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        arch: Arch,
        in_chans: usize,
        embed_dim: usize,
        depths: &[usize],
        num_heads: &[usize],
        mlp_hidden: &[usize],
        kernel_size: usize,
        num_classes: usize,
    ) -> Result<Self, EdgeError> {
        let levels = depths.len();
        if !(1..=MAX_LEVELS).contains(&levels) {
            return Err(EdgeError::Unsupported {
                field: "levels",
                value: levels as u64,
                reason: "NAT/DiNAT models have 1 to 4 levels",
            });
        }
        for (field, v) in [("num_heads", num_heads), ("mlp_hidden", mlp_hidden)] {
            if v.len() != levels {
                return Err(EdgeError::Unsupported {
                    field,
                    value: v.len() as u64,
                    reason: "needs one entry per level (the length of depths)",
                });
            }
        }
        let mut c = EdgeConfig {
            arch,
            in_chans,
            embed_dim,
            levels,
            depths: [0; MAX_LEVELS],
            num_heads: [0; MAX_LEVELS],
            mlp_hidden: [0; MAX_LEVELS],
            kernel_size,
            dilations: [[1; MAX_DEPTH]; MAX_LEVELS],
            layer_scale: false,
            num_classes,
            stem_strides: [2, 2],
        };
        c.depths[..levels].copy_from_slice(depths);
        c.num_heads[..levels].copy_from_slice(num_heads);
        c.mlp_hidden[..levels].copy_from_slice(mlp_hidden);
        c.validate()?;
        Ok(c)
    }

    /// Sets the dilations of level `level` (one per block), validated.
    pub fn with_dilations(mut self, level: usize, dilations: &[usize]) -> Result<Self, EdgeError> {
        if level >= self.levels || dilations.len() != self.depths[level] {
            return Err(EdgeError::Unsupported {
                field: "dilations",
                value: dilations.len() as u64,
                reason: "needs an existing level and one dilation per block of it",
            });
        }
        self.dilations[level][..dilations.len()].copy_from_slice(dilations);
        self.validate()?;
        Ok(self)
    }

    /// Sets whether blocks have layer-scale weights.
    pub fn with_layer_scale(mut self, layer_scale: bool) -> Self {
        self.layer_scale = layer_scale;
        self
    }

    /// Sets the strides of the two stem convolutions, validated.
    pub fn with_stem_strides(mut self, strides: [usize; 2]) -> Result<Self, EdgeError> {
        self.stem_strides = strides;
        self.validate()?;
        Ok(self)
    }

    /// Channels of level `i`.
    pub fn dim(&self, i: usize) -> usize {
        self.embed_dim << i
    }

    /// Channels of the final features (input of `norm` and `head`).
    pub fn num_features(&self) -> usize {
        self.dim(self.levels - 1)
    }

    /// Values the model writes per image: `num_classes`, or the pooled
    /// features' width when there is no head.
    pub fn output_len(&self) -> usize {
        if self.num_classes > 0 {
            self.num_classes
        } else {
            self.num_features()
        }
    }

    /// Checks every field against its range and the fields against each
    /// other. DiNAT_s and isotropic models are [`EdgeError::Unsupported`].
    pub fn validate(&self) -> Result<(), EdgeError> {
        let bad = |field: &'static str, value: usize, reason: &'static str| {
            Err(EdgeError::Unsupported {
                field,
                value: value as u64,
                reason,
            })
        };
        match self.arch {
            Arch::Nat | Arch::Dinat => {}
            Arch::DinatS => {
                return bad(
                    "arch",
                    2,
                    "DiNAT_s (patch embedding and patch merging) is not supported",
                )
            }
            Arch::Isotropic => return bad("arch", 3, "isotropic models are not supported"),
        }
        if !(1..=MAX_LEVELS).contains(&self.levels) {
            return bad("levels", self.levels, "NAT/DiNAT models have 1 to 4 levels");
        }
        if !(1..=MAX_IN_CHANS).contains(&self.in_chans) {
            return bad("in_chans", self.in_chans, "must be in 1..=1024");
        }
        if self.embed_dim < 2 || (self.embed_dim << (self.levels - 1)) > MAX_CHANNELS {
            return bad(
                "embed_dim",
                self.embed_dim,
                "must be at least 2, and embed_dim << (levels - 1) at most 65536",
            );
        }
        if !(2..=MAX_KERNEL_SIZE).contains(&self.kernel_size) {
            return bad("kernel_size", self.kernel_size, "must be in 2..=255");
        }
        if self.num_classes > MAX_NUM_CLASSES {
            return bad("num_classes", self.num_classes, "must be at most 2^24");
        }
        if let Some(&s) = self.stem_strides.iter().find(|&&s| !(1..=4).contains(&s)) {
            return bad("stem_strides", s, "each stride must be in 1..=4");
        }
        for i in 0..MAX_LEVELS {
            let used = i < self.levels;
            let (d, h, m) = (self.depths[i], self.num_heads[i], self.mlp_hidden[i]);
            if !used {
                if d != 0 || h != 0 || m != 0 {
                    return bad("depths", i, "entries past `levels` must be 0");
                }
                continue;
            }
            if d > MAX_DEPTH {
                return bad("depths", d, "at most 32 blocks per level");
            }
            let c = self.dim(i);
            if h == 0 || !c.is_multiple_of(h) {
                return bad("num_heads", h, "heads must divide the level's channels");
            }
            if !(1..=MAX_CHANNELS).contains(&m) {
                return bad("mlp_hidden", m, "must be in 1..=65536");
            }
            for j in 0..d {
                let dl = self.dilations[i][j];
                if !(1..=MAX_DILATION).contains(&dl) {
                    return bad("dilations", dl, "each dilation must be in 1..=4096");
                }
            }
        }
        Ok(())
    }

    /// Number of tensors of the model (the length of its canonical walk).
    pub fn tensor_count(&self) -> usize {
        let mut n = 0;
        self.for_each_tensor(|_, _| {
            n += 1;
            Ok(())
        })
        .ok();
        n
    }

    /// Calls `f(key, shape)` for every tensor of the model, in the
    /// canonical order of [`crate::format`] (the std model's
    /// `param_shapes` order), stopping at the first error.
    pub fn for_each_tensor(
        &self,
        mut f: impl FnMut(&str, Shape) -> Result<(), EdgeError>,
    ) -> Result<(), EdgeError> {
        let mut key = KeyBuf::new();
        let mut emit = |key: &KeyBuf, dims: &[usize]| f(key.as_str(), Shape::new(dims));
        let (e, cin, k) = (self.embed_dim, self.in_chans, self.kernel_size);
        let r = 2 * k - 1;
        key.set(format_args!("patch_embed.proj.0.weight"));
        emit(&key, &[e / 2, cin, 3, 3])?;
        key.set(format_args!("patch_embed.proj.0.bias"));
        emit(&key, &[e / 2])?;
        key.set(format_args!("patch_embed.proj.1.weight"));
        emit(&key, &[e, e / 2, 3, 3])?;
        key.set(format_args!("patch_embed.proj.1.bias"));
        emit(&key, &[e])?;
        key.set(format_args!("patch_embed.norm.weight"));
        emit(&key, &[e])?;
        key.set(format_args!("patch_embed.norm.bias"));
        emit(&key, &[e])?;
        for i in 0..self.levels {
            let (c, heads, hid) = (self.dim(i), self.num_heads[i], self.mlp_hidden[i]);
            for j in 0..self.depths[i] {
                let p = (i, j);
                let items: [(&str, [usize; 3], usize); 13] = [
                    ("norm1.weight", [c, 0, 0], 1),
                    ("norm1.bias", [c, 0, 0], 1),
                    ("attn.qkv.weight", [3 * c, c, 0], 2),
                    ("attn.qkv.bias", [3 * c, 0, 0], 1),
                    ("attn.rpb", [heads, r, r], 3),
                    ("attn.proj.weight", [c, c, 0], 2),
                    ("attn.proj.bias", [c, 0, 0], 1),
                    ("norm2.weight", [c, 0, 0], 1),
                    ("norm2.bias", [c, 0, 0], 1),
                    ("mlp.fc1.weight", [hid, c, 0], 2),
                    ("mlp.fc1.bias", [hid, 0, 0], 1),
                    ("mlp.fc2.weight", [c, hid, 0], 2),
                    ("mlp.fc2.bias", [c, 0, 0], 1),
                ];
                for (name, dims, rank) in items {
                    key.set(format_args!("levels.{}.blocks.{}.{name}", p.0, p.1));
                    emit(&key, &dims[..rank])?;
                }
                if self.layer_scale {
                    for g in ["gamma1", "gamma2"] {
                        key.set(format_args!("levels.{i}.blocks.{j}.{g}"));
                        emit(&key, &[c])?;
                    }
                }
            }
            if i + 1 < self.levels {
                key.set(format_args!("levels.{i}.downsample.reduction.weight"));
                emit(&key, &[2 * c, c, 3, 3])?;
                key.set(format_args!("levels.{i}.downsample.norm.weight"));
                emit(&key, &[2 * c])?;
                key.set(format_args!("levels.{i}.downsample.norm.bias"));
                emit(&key, &[2 * c])?;
            }
        }
        let f = self.num_features();
        key.set(format_args!("norm.weight"));
        emit(&key, &[f])?;
        key.set(format_args!("norm.bias"));
        emit(&key, &[f])?;
        if self.num_classes > 0 {
            key.set(format_args!("head.weight"));
            emit(&key, &[self.num_classes, f])?;
            key.set(format_args!("head.bias"));
            emit(&key, &[self.num_classes])?;
        }
        Ok(())
    }
}

/// A key name formatted on the stack.
pub(crate) struct KeyBuf {
    buf: [u8; NAME_LEN],
    len: usize,
}

impl KeyBuf {
    fn new() -> Self {
        KeyBuf {
            buf: [0; NAME_LEN],
            len: 0,
        }
    }

    fn set(&mut self, args: core::fmt::Arguments<'_>) {
        self.len = 0;
        // Keys of valid configurations are far below NAME_LEN bytes; a
        // longer one is cut, and then fails the name comparison.
        let _ = self.write_fmt(args);
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Write for KeyBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(core::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
