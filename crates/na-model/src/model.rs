//! The architectures: hierarchical NAT/DiNAT, DiNAT_s and isotropic NAT/DiNAT,
//! built from a [`Config`] and weights under the authors' key names.
//!
//! [`param_shapes`] is the one list of every weight's name and shape; loading
//! checks a file against it before anything is built, so a wrong file gives
//! one error listing every problem.

use crate::backend::{Backend, NaSpec, Tensor};
use crate::config::{Arch, Config};
use crate::error::{ModelError, Result};
use crate::weights::WeightMap;

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

struct Linear<B: Backend> {
    w: Tensor<B>,
    b: Option<Tensor<B>>,
}

struct Norm<B: Backend> {
    w: Tensor<B>,
    b: Tensor<B>,
}

struct Block<B: Backend> {
    norm1: Norm<B>,
    qkv: Linear<B>,
    rpb: Tensor<B>,
    proj: Linear<B>,
    norm2: Norm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    gamma1: Option<Tensor<B>>,
    gamma2: Option<Tensor<B>>,
    spec: NaSpec,
}

enum Down<B: Backend> {
    /// NAT: 3×3 stride-2 convolution (no bias), then LayerNorm.
    Conv { w: Tensor<B>, norm: Norm<B> },
    /// DiNAT_s: patch merging, LayerNorm(4C), Linear(4C → 2C, no bias).
    Merge { norm: Norm<B>, reduction: Linear<B> },
}

struct Level<B: Backend> {
    blocks: Vec<Block<B>>,
    down: Option<Down<B>>,
    /// Backbone mode: the LayerNorm of this level's output (`norm{i}`).
    out_norm: Option<Norm<B>>,
}

enum Stem<B: Backend> {
    /// NAT: two 3×3 stride-2 convolutions (`proj.0`, `proj.1`).
    Conv2(Linear<B>, Linear<B>),
    /// DiNAT_s and isotropic: one `p`×`p` stride-`p` convolution of the
    /// input zero-padded (right, bottom) to a multiple of `p`.
    Patch {
        proj: Linear<B>,
        p: usize,
        pad: bool,
    },
}

/// A loaded model on backend `B`.
pub struct Model<B: Backend> {
    cfg: Config,
    stem: Stem<B>,
    stem_norm: Norm<B>,
    levels: Vec<Level<B>>,
    /// Classifier mode: final `norm` and (when `num_classes > 0`) `head`.
    norm: Option<Norm<B>>,
    head: Option<Linear<B>>,
}

/// Takes tensors out of a checked weight map onto the backend.
struct Take<'a, B: Backend> {
    be: &'a B,
    w: WeightMap,
}

impl<B: Backend> Take<'_, B> {
    fn t(&mut self, name: &str) -> Result<Tensor<B>> {
        let t = self
            .w
            .take(name)
            .ok_or_else(|| ModelError::WeightsMismatch {
                missing: vec![name.to_string()],
                unexpected: vec![],
                mis_shaped: vec![],
            })?;
        self.be.upload(&t.shape, &t.data)
    }

    fn linear(&mut self, p: &str, bias: bool) -> Result<Linear<B>> {
        Ok(Linear {
            w: self.t(&format!("{p}.weight"))?,
            b: if bias {
                Some(self.t(&format!("{p}.bias"))?)
            } else {
                None
            },
        })
    }

    fn norm(&mut self, p: &str) -> Result<Norm<B>> {
        Ok(Norm {
            w: self.t(&format!("{p}.weight"))?,
            b: self.t(&format!("{p}.bias"))?,
        })
    }
}

impl<B: Backend> Model<B> {
    /// Builds the model of `cfg` from `weights` (authors' names; see
    /// [`WeightMap`]) on backend `be`. With `backbone`, the weights hold
    /// `norm0..norm3` instead of `norm` and `head`, and [`Model::features`]
    /// returns the four normalised feature maps.
    pub fn load(be: &B, cfg: &Config, weights: WeightMap, backbone: bool) -> Result<Self> {
        cfg.validate()?;
        if backbone && cfg.arch == Arch::Isotropic {
            return Err(ModelError::Config(
                "isotropic models have no multi-level backbone mode".into(),
            ));
        }
        weights.check(&param_shapes(cfg, backbone))?;
        let mut tk = Take { be, w: weights };
        let stem = match cfg.arch {
            Arch::Nat | Arch::Dinat => Stem::Conv2(
                tk.linear("patch_embed.proj.0", true)?,
                tk.linear("patch_embed.proj.1", true)?,
            ),
            Arch::DinatS => Stem::Patch {
                proj: tk.linear("patch_embed.proj", true)?,
                p: 4,
                pad: true,
            },
            Arch::Isotropic => Stem::Patch {
                proj: tk.linear("patch_embed.proj", true)?,
                p: 16,
                pad: true,
            },
        };
        let stem_norm = tk.norm("patch_embed.norm")?;
        let group = if cfg.arch.is_nat() {
            "levels"
        } else {
            "layers"
        };
        let mut levels = Vec::new();
        for i in 0..cfg.levels() {
            let l = cfg.level(i);
            let mut blocks = Vec::new();
            for j in 0..l.depth {
                let p = block_prefix(cfg, i, j);
                let ls = cfg.layer_scale.is_some();
                blocks.push(Block {
                    norm1: tk.norm(&format!("{p}.norm1"))?,
                    qkv: tk.linear(&format!("{p}.attn.qkv"), true)?,
                    rpb: tk.t(&format!("{p}.attn.rpb"))?,
                    proj: tk.linear(&format!("{p}.attn.proj"), true)?,
                    norm2: tk.norm(&format!("{p}.norm2"))?,
                    fc1: tk.linear(&format!("{p}.mlp.fc1"), true)?,
                    fc2: tk.linear(&format!("{p}.mlp.fc2"), true)?,
                    gamma1: if ls {
                        Some(tk.t(&format!("{p}.gamma1"))?)
                    } else {
                        None
                    },
                    gamma2: if ls {
                        Some(tk.t(&format!("{p}.gamma2"))?)
                    } else {
                        None
                    },
                    spec: NaSpec {
                        heads: l.heads,
                        kernel: cfg.kernel_size,
                        dilation: cfg.dilation(i, j),
                    },
                });
            }
            let down = if i + 1 < cfg.levels() {
                let p = format!("{group}.{i}.downsample");
                Some(match cfg.arch {
                    Arch::DinatS => Down::Merge {
                        norm: tk.norm(&format!("{p}.norm"))?,
                        reduction: tk.linear(&format!("{p}.reduction"), false)?,
                    },
                    _ => Down::Conv {
                        w: tk.t(&format!("{p}.reduction.weight"))?,
                        norm: tk.norm(&format!("{p}.norm"))?,
                    },
                })
            } else {
                None
            };
            let out_norm = if backbone {
                Some(tk.norm(&format!("norm{i}"))?)
            } else {
                None
            };
            levels.push(Level {
                blocks,
                down,
                out_norm,
            });
        }
        let (norm, head) = if backbone {
            (None, None)
        } else {
            let norm = tk.norm("norm")?;
            let head = if cfg.num_classes > 0 {
                Some(tk.linear("head", true)?)
            } else {
                None
            };
            (Some(norm), head)
        };
        Ok(Model {
            cfg: cfg.clone(),
            stem,
            stem_norm,
            levels,
            norm,
            head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether the model was loaded in backbone mode.
    pub fn is_backbone(&self) -> bool {
        self.norm.is_none()
    }

    /// Checks an input `[B, in_chans, H, W]`.
    fn check_input(&self, x: &Tensor<B>) -> Result<()> {
        let min = 1;
        let ok = match x.shape[..] {
            [b, c, h, w] => {
                b > 0
                    && c == self.cfg.in_chans
                    && h >= min
                    && w >= min
                    && h <= 1 << 15
                    && w <= 1 << 15
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(ModelError::InputShape {
                expected: format!(
                    "[batch >= 1, {}, H, W] with {min} <= H, W <= 32768",
                    self.cfg.in_chans
                ),
                got: x.shape.clone(),
            })
        }
    }

    /// The classifier: input `[B, in_chans, H, W]`, output logits
    /// `[B, num_classes]` (pooled features `[B, C]` when `num_classes` is 0).
    pub fn forward(&self, be: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
        let norm = self.norm.as_ref().ok_or_else(|| {
            ModelError::Config("this model was loaded as a backbone; use features()".into())
        })?;
        let mut x = self.embed(be, x)?;
        for level in &self.levels {
            x = self.run_level(be, level, x, &mut |_| Ok(()))?;
        }
        let x = be.layer_norm(&x, &norm.w, &norm.b, LN_EPS)?;
        let x = be.mean_tokens(&x)?;
        match &self.head {
            Some(h) => be.linear(&x, &h.w, h.b.as_ref()),
            None => Ok(x),
        }
    }

    /// Backbone mode: the four levels' outputs (before each downsample), each
    /// through its LayerNorm `norm{i}`, as `[B, C_i, H_i, W_i]`.
    pub fn features(&self, be: &B, x: &Tensor<B>) -> Result<Vec<Tensor<B>>> {
        if !self.is_backbone() {
            return Err(ModelError::Config(
                "this model was loaded as a classifier; load it with backbone = true".into(),
            ));
        }
        let mut x = self.embed(be, x)?;
        let mut feats = Vec::new();
        for level in &self.levels {
            x = self.run_level(be, level, x, &mut |f| {
                feats.push(f);
                Ok(())
            })?;
        }
        Ok(feats)
    }

    fn embed(&self, be: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.check_input(x)?;
        let mut x = be.nchw_to_nhwc(x)?;
        match &self.stem {
            Stem::Conv2(a, b) => {
                let [s0, s1] = self.cfg.stem_strides();
                x = be.conv2d(&x, &a.w, a.b.as_ref(), s0, 1)?;
                x = be.conv2d(&x, &b.w, b.b.as_ref(), s1, 1)?;
            }
            Stem::Patch { proj, p, pad } => {
                let (h, w) = (x.shape[1], x.shape[2]);
                if *pad && (h % p != 0 || w % p != 0) {
                    x = be.pad_hw(&x, h.next_multiple_of(*p), w.next_multiple_of(*p))?;
                }
                x = be.conv2d(&x, &proj.w, proj.b.as_ref(), *p, 0)?;
            }
        }
        be.layer_norm(&x, &self.stem_norm.w, &self.stem_norm.b, LN_EPS)
    }

    fn run_level(
        &self,
        be: &B,
        level: &Level<B>,
        mut x: Tensor<B>,
        out: &mut dyn FnMut(Tensor<B>) -> Result<()>,
    ) -> Result<Tensor<B>> {
        for b in &level.blocks {
            x = block(be, b, x)?;
        }
        if let Some(n) = &level.out_norm {
            let f = be.layer_norm(&x, &n.w, &n.b, LN_EPS)?;
            out(be.nhwc_to_nchw(&f)?)?;
        }
        match &level.down {
            None => Ok(x),
            Some(Down::Conv { w, norm }) => {
                let y = be.conv2d(&x, w, None, 2, 1)?;
                be.layer_norm(&y, &norm.w, &norm.b, LN_EPS)
            }
            Some(Down::Merge { norm, reduction }) => {
                let y = be.patch_merge(&x)?;
                let y = be.layer_norm(&y, &norm.w, &norm.b, LN_EPS)?;
                be.linear(&y, &reduction.w, None)
            }
        }
    }
}

/// One transformer block on `[B, H, W, C]`:
/// `x + γ1 ⊙ proj(NA(qkv(norm1(x))))`, then `x + γ2 ⊙ fc2(gelu(fc1(norm2(x))))`.
/// Maps smaller than `kernel × dilation` are zero-padded after `norm1` and
/// cropped before `proj` (SPEC.md, model-level rules).
fn block<B: Backend>(be: &B, b: &Block<B>, mut x: Tensor<B>) -> Result<Tensor<B>> {
    let (h, w) = (x.shape[1], x.shape[2]);
    let kd = b.spec.kernel * b.spec.dilation;
    let y = be.layer_norm(&x, &b.norm1.w, &b.norm1.b, LN_EPS)?;
    let padded = h < kd || w < kd;
    let y = if padded {
        let p = be.pad_hw(&y, h.max(kd), w.max(kd))?;
        be.recycle(y);
        p
    } else {
        y
    };
    let qkv = be.linear(&y, &b.qkv.w, b.qkv.b.as_ref())?;
    be.recycle(y);
    let a = be.neighborhood_attention(&qkv, &b.rpb, b.spec)?;
    be.recycle(qkv);
    let a = if padded {
        let c = be.crop_hw(&a, h, w)?;
        be.recycle(a);
        c
    } else {
        a
    };
    let p = be.linear(&a, &b.proj.w, b.proj.b.as_ref())?;
    be.recycle(a);
    be.add_scaled(&mut x, &p, b.gamma1.as_ref())?;
    be.recycle(p);
    let y = be.layer_norm(&x, &b.norm2.w, &b.norm2.b, LN_EPS)?;
    let mut hid = be.linear(&y, &b.fc1.w, b.fc1.b.as_ref())?;
    be.recycle(y);
    be.gelu(&mut hid)?;
    let y = be.linear(&hid, &b.fc2.w, b.fc2.b.as_ref())?;
    be.recycle(hid);
    be.add_scaled(&mut x, &y, b.gamma2.as_ref())?;
    be.recycle(y);
    Ok(x)
}

/// Shapes of one level at a given input size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelInfo {
    /// Feature map height and width.
    pub height: usize,
    /// Feature map width.
    pub width: usize,
    /// Channels.
    pub channels: usize,
    /// Attention heads.
    pub heads: usize,
    /// Dilation of each block.
    pub dilations: Vec<usize>,
    /// Blocks whose map is zero-padded to `kernel × dilation`.
    pub padded_blocks: usize,
}

/// Size and cost of a model at one input size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// Parameters (classifier mode).
    pub params: usize,
    /// Multiply-adds of one image (convolutions, linear layers, and the two
    /// attention products `2·N·C·k²` per block; norms and activations are
    /// not counted). FLOPs are twice this.
    pub macs: u64,
    /// Per-level shapes.
    pub levels: Vec<LevelInfo>,
}

/// Parameters, multiply-adds and per-level shapes of `cfg` for an
/// `height × width` input.
pub fn analyze(cfg: &Config, height: usize, width: usize) -> Result<ModelInfo> {
    cfg.validate()?;
    if height == 0 || width == 0 {
        return Err(ModelError::InputShape {
            expected: "H, W >= 1".into(),
            got: vec![height, width],
        });
    }
    let conv_out = |n: usize, k: usize, s: usize, p: usize| (n + 2 * p - k) / s + 1;
    let (e, cin) = (cfg.embed_dim as u64, cfg.in_chans as u64);
    let mut macs: u64 = 0;
    let (mut h, mut w) = match cfg.arch {
        Arch::Nat | Arch::Dinat => {
            let [s0, s1] = cfg.stem_strides();
            let (h0, w0) = (conv_out(height, 3, s0, 1), conv_out(width, 3, s0, 1));
            macs += (h0 * w0) as u64 * (e / 2) * cin * 9;
            let (h1, w1) = (conv_out(h0, 3, s1, 1), conv_out(w0, 3, s1, 1));
            macs += (h1 * w1) as u64 * e * (e / 2) * 9;
            (h1, w1)
        }
        Arch::DinatS => {
            let (h1, w1) = (height.div_ceil(4), width.div_ceil(4));
            macs += (h1 * w1) as u64 * e * cin * 16;
            (h1, w1)
        }
        Arch::Isotropic => {
            let (h1, w1) = (height.div_ceil(16), width.div_ceil(16));
            macs += (h1 * w1) as u64 * e * cin * 256;
            (h1, w1)
        }
    };
    let k = cfg.kernel_size;
    let mut levels = Vec::new();
    for i in 0..cfg.levels() {
        let l = cfg.level(i);
        let c = l.dim as u64;
        let hid = cfg.mlp_hidden(l.dim) as u64;
        let mut dil = Vec::new();
        let mut padded = 0;
        for j in 0..l.depth {
            let d = cfg.dilation(i, j);
            dil.push(d);
            let (hp, wp) = (h.max(k * d), w.max(k * d));
            padded += usize::from(hp != h || wp != w);
            let (n, np) = ((h * w) as u64, (hp * wp) as u64);
            macs += np * c * 3 * c + 2 * np * c * (k * k) as u64 + n * c * c + 2 * n * c * hid;
        }
        levels.push(LevelInfo {
            height: h,
            width: w,
            channels: l.dim,
            heads: l.heads,
            dilations: dil,
            padded_blocks: padded,
        });
        if i + 1 < cfg.levels() {
            let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
            macs += match cfg.arch {
                Arch::DinatS => (h2 * w2) as u64 * 4 * c * 2 * c,
                _ => (h2 * w2) as u64 * 2 * c * c * 9,
            };
            (h, w) = (h2, w2);
        }
    }
    macs += (cfg.num_features() * cfg.num_classes) as u64;
    Ok(ModelInfo {
        params: cfg.param_count(),
        macs,
        levels,
    })
}
