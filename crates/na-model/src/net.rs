//! The one architecture walk: [`Net`] is built from a [`Config`] and the
//! parameter layout of a [`ParamSet`]; [`Net::forward`] runs inference or,
//! given a [`Tape`], records what [`Net::backward`] needs; both run on any
//! [`Backend`] (the backward on a [`Backward`] one) through the same
//! operations, so training computes exactly what inference computes.
//!
//! Sequence (NAT/DiNAT; DiNAT_s and isotropic differ in the stem and the
//! downsampler): stem convolutions → `patch_embed.norm` → per level the
//! blocks `x + γ1 ⊙ proj(NA(qkv(norm1(x))))`, `x + γ2 ⊙ fc2(GELU(fc1(norm2
//! (x))))` → downsampler (conv 3×3/2 + norm, or patch merging + norm +
//! reduction) → final norm → token mean → head. Maps smaller than `kernel ×
//! dilation` are zero-padded after `norm1` and cropped before `proj`
//! (SPEC.md's model-level rule).

use core::ops::Range;

use crate::backend::{Backend, Backward, Tensor};
use crate::config::{block_prefix, LN_EPS};
use crate::config::{Arch, Config};
use crate::error::{ModelError, Result};
use crate::ops::{shape_err, Act, Attention, Conv2d, LayerNorm, Linear};
use crate::params::ParamSet;

#[derive(Clone, Debug)]
struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    attn: Attention,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    gamma: Option<(Range<usize>, Range<usize>)>,
}

#[derive(Clone, Debug)]
enum Down {
    Conv { conv: Conv2d, norm: LayerNorm },
    Merge { norm: LayerNorm, reduction: Linear },
}

#[derive(Clone, Debug)]
enum Stem {
    /// NAT/DiNAT: two 3×3 convolutions (`proj.0`, `proj.1`).
    Conv2(Conv2d, Conv2d),
    /// DiNAT_s and isotropic: one `p`×`p` stride-`p` convolution of the
    /// input zero-padded (right, bottom) to a multiple of `p`.
    Patch(Conv2d),
}

#[derive(Clone, Debug)]
struct Level {
    blocks: Vec<Block>,
    down: Option<Down>,
    /// Backbone mode: `norm{i}` of the level's output.
    out_norm: Option<LayerNorm>,
}

/// The network's structure: which layers run in which order, and where each
/// layer's parameters lie in the flat parameter buffer.
#[derive(Clone, Debug)]
pub struct Net {
    cfg: Config,
    stem: Stem,
    stem_norm: LayerNorm,
    levels: Vec<Level>,
    /// Classifier mode: final `norm` and (when `num_classes > 0`) `head`.
    norm: Option<LayerNorm>,
    head: Option<Linear>,
    params: usize,
}

/// What the forward of one block keeps for the backward.
struct BlockTape<B: Backend> {
    x: Tensor<B>,
    n1: Tensor<B>,
    /// `norm1`'s output, padded when the map is smaller than `k·d`.
    y1: Tensor<B>,
    qkv: Tensor<B>,
    a: Tensor<B>,
    lse: Tensor<B>,
    /// The cropped attention output (input of `proj`) when padded.
    a_cropped: Option<Tensor<B>>,
    /// `proj`'s output, kept only with layer scale.
    p: Option<Tensor<B>>,
    x_mid: Tensor<B>,
    n2: Tensor<B>,
    y2: Tensor<B>,
    h: Tensor<B>,
    g: Tensor<B>,
    /// `fc2`'s output, kept only with layer scale.
    f: Option<Tensor<B>>,
}

enum DownTape<B: Backend> {
    Conv {
        x: Tensor<B>,
        y: Tensor<B>,
        n: Tensor<B>,
    },
    Merge {
        x_shape: Vec<usize>,
        m: Tensor<B>,
        n: Tensor<B>,
        y: Tensor<B>,
    },
}

enum StemTape<B: Backend> {
    Conv2 {
        x: Tensor<B>,
        y0: Tensor<B>,
    },
    /// The (padded) input.
    Patch {
        x: Tensor<B>,
    },
}

/// Everything the backward pass needs from one forward pass (recorded only
/// when [`Net::forward`] is given one).
pub struct Tape<B: Backend> {
    stem: Option<StemTape<B>>,
    stem_out: Option<Tensor<B>>,
    stem_n: Option<Tensor<B>>,
    blocks: Vec<Vec<BlockTape<B>>>,
    downs: Vec<Option<DownTape<B>>>,
    last: Option<Tensor<B>>,
    final_n: Option<Tensor<B>>,
    pooled: Option<Tensor<B>>,
}

impl<B: Backend> Default for Tape<B> {
    fn default() -> Self {
        Tape {
            stem: None,
            stem_out: None,
            stem_n: None,
            blocks: Vec::new(),
            downs: Vec::new(),
            last: None,
            final_n: None,
            pooled: None,
        }
    }
}

impl<B: Backend> Tape<B> {
    /// An empty tape, for [`Net::forward`] to fill.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands every kept tensor back to the backend.
    pub fn recycle(self, be: &B) {
        let Tape {
            stem,
            stem_out,
            stem_n,
            blocks,
            downs,
            last,
            final_n,
            pooled,
        } = self;
        let mut all: Vec<Tensor<B>> = Vec::new();
        match stem {
            Some(StemTape::Conv2 { x, y0 }) => all.extend([x, y0]),
            Some(StemTape::Patch { x }) => all.push(x),
            None => {}
        }
        all.extend(
            stem_out
                .into_iter()
                .chain(stem_n)
                .chain(last)
                .chain(final_n)
                .chain(pooled),
        );
        for t in blocks.into_iter().flatten() {
            all.extend([
                t.x, t.n1, t.y1, t.qkv, t.a, t.lse, t.x_mid, t.n2, t.y2, t.h, t.g,
            ]);
            all.extend(t.a_cropped.into_iter().chain(t.p).chain(t.f));
        }
        for d in downs.into_iter().flatten() {
            match d {
                DownTape::Conv { x, y, n } => all.extend([x, y, n]),
                DownTape::Merge { m, n, y, .. } => all.extend([m, n, y]),
            }
        }
        for t in all {
            be.recycle(t);
        }
    }
}

fn map_dims<B: Backend>(x: &Tensor<B>) -> Result<([usize; 3], usize)> {
    match x.shape[..] {
        [b, h, w, c] => Ok(([b, h, w], c)),
        _ => Err(shape_err(format!(
            "expected a [B, H, W, C] map, got {:?}",
            x.shape
        ))),
    }
}

fn missing(what: &str) -> ModelError {
    shape_err(format!(
        "backward: the tape has no {what} (record it with Net::forward)"
    ))
}

impl Net {
    /// The structure of `layout`'s model (its configuration, classifier or
    /// backbone, and the ranges of its tensors).
    pub fn new(layout: &ParamSet) -> Result<Self> {
        let cfg = &layout.cfg;
        let r = |n: &str| layout.range(n);
        let lin = |p: &str, din: usize, dout: usize, bias: bool| -> Result<Linear> {
            Ok(Linear {
                din,
                dout,
                w: r(&format!("{p}.weight"))?,
                b: if bias {
                    Some(r(&format!("{p}.bias"))?)
                } else {
                    None
                },
            })
        };
        let norm = |p: &str, c: usize| -> Result<LayerNorm> {
            Ok(LayerNorm {
                c,
                eps: LN_EPS,
                w: r(&format!("{p}.weight"))?,
                b: r(&format!("{p}.bias"))?,
            })
        };
        let conv = |p: &str,
                    cin: usize,
                    cout: usize,
                    k: usize,
                    stride: usize,
                    pad: usize,
                    bias: bool|
         -> Result<Conv2d> {
            Ok(Conv2d {
                cin,
                cout,
                kh: k,
                kw: k,
                stride,
                pad,
                w: r(&format!("{p}.weight"))?,
                b: if bias {
                    Some(r(&format!("{p}.bias"))?)
                } else {
                    None
                },
            })
        };
        let (e, cin) = (cfg.embed_dim, cfg.in_chans);
        let stem = match cfg.arch {
            Arch::Nat | Arch::Dinat => {
                let [s0, s1] = cfg.stem_strides();
                Stem::Conv2(
                    conv("patch_embed.proj.0", cin, e / 2, 3, s0, 1, true)?,
                    conv("patch_embed.proj.1", e / 2, e, 3, s1, 1, true)?,
                )
            }
            Arch::DinatS => Stem::Patch(conv("patch_embed.proj", cin, e, 4, 4, 0, true)?),
            Arch::Isotropic => Stem::Patch(conv("patch_embed.proj", cin, e, 16, 16, 0, true)?),
        };
        let group = if cfg.arch.is_nat() {
            "levels"
        } else {
            "layers"
        };
        let mut levels = Vec::new();
        for i in 0..cfg.levels() {
            let l = cfg.level(i);
            let (c, hid) = (l.dim, cfg.mlp_hidden(l.dim));
            let mut blocks = Vec::new();
            for j in 0..l.depth {
                let p = block_prefix(cfg, i, j);
                blocks.push(Block {
                    norm1: norm(&format!("{p}.norm1"), c)?,
                    qkv: lin(&format!("{p}.attn.qkv"), c, 3 * c, true)?,
                    attn: Attention {
                        heads: l.heads,
                        kernel: cfg.kernel_size,
                        dilation: cfg.dilation(i, j),
                        rpb: r(&format!("{p}.attn.rpb"))?,
                    },
                    proj: lin(&format!("{p}.attn.proj"), c, c, true)?,
                    norm2: norm(&format!("{p}.norm2"), c)?,
                    fc1: lin(&format!("{p}.mlp.fc1"), c, hid, true)?,
                    fc2: lin(&format!("{p}.mlp.fc2"), hid, c, true)?,
                    gamma: if cfg.layer_scale.is_some() {
                        Some((r(&format!("{p}.gamma1"))?, r(&format!("{p}.gamma2"))?))
                    } else {
                        None
                    },
                });
            }
            let down = if i + 1 < cfg.levels() {
                let p = format!("{group}.{i}.downsample");
                Some(match cfg.arch {
                    Arch::DinatS => Down::Merge {
                        norm: norm(&format!("{p}.norm"), 4 * c)?,
                        reduction: lin(&format!("{p}.reduction"), 4 * c, 2 * c, false)?,
                    },
                    _ => Down::Conv {
                        conv: conv(&format!("{p}.reduction"), c, 2 * c, 3, 2, 1, false)?,
                        norm: norm(&format!("{p}.norm"), 2 * c)?,
                    },
                })
            } else {
                None
            };
            let out_norm = if layout.backbone {
                Some(norm(&format!("norm{i}"), c)?)
            } else {
                None
            };
            levels.push(Level {
                blocks,
                down,
                out_norm,
            });
        }
        let (norm_f, head) = if layout.backbone {
            (None, None)
        } else {
            let f = cfg.num_features();
            let head = if cfg.num_classes > 0 {
                Some(lin("head", f, cfg.num_classes, true)?)
            } else {
                None
            };
            (Some(norm("norm", f)?), head)
        };
        Ok(Net {
            cfg: cfg.clone(),
            stem,
            stem_norm: norm("patch_embed.norm", e)?,
            levels,
            norm: norm_f,
            head,
            params: layout.len(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether this is a backbone (features, no head).
    pub fn is_backbone(&self) -> bool {
        self.norm.is_none()
    }

    /// The forward pass of channels-last images `x [B, H, W, in_chans]`.
    ///
    /// Classifier: returns the logits `[B, num_classes]` (pooled features
    /// `[B, C]` when `num_classes` is 0). Backbone: returns the last level's
    /// normalised map and pushes each level's `norm{i}` output, NCHW, into
    /// `feats`. With `tape`, everything the backward needs is kept there;
    /// without, every intermediate tensor is recycled as soon as it is used.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        p: &B::Params,
        x: Tensor<B>,
        mut tape: Option<&mut Tape<B>>,
        mut feats: Option<&mut Vec<Tensor<B>>>,
    ) -> Result<Tensor<B>> {
        if be.params_len(p) != self.params {
            return Err(shape_err(format!(
                "forward: {} parameters for a model of {}",
                be.params_len(p),
                self.params
            )));
        }
        let keep = tape.is_some();
        let (d, c) = map_dims(&x)?;
        if c != self.cfg.in_chans {
            return Err(ModelError::InputShape {
                expected: format!("[batch, H, W, {}]", self.cfg.in_chans),
                got: x.shape.clone(),
            });
        }
        // Stem.
        let (stem_out, stem_t) = match &self.stem {
            Stem::Conv2(a, b) => {
                let y0 = be.conv2d(p, a, &x)?;
                let y1 = be.conv2d(p, b, &y0)?;
                if keep {
                    (y1, Some(StemTape::Conv2 { x, y0 }))
                } else {
                    be.recycle(x);
                    be.recycle(y0);
                    (y1, None)
                }
            }
            Stem::Patch(conv) => {
                let k = conv.kh;
                let (hp, wp) = (d[1].next_multiple_of(k), d[2].next_multiple_of(k));
                let xp = if (hp, wp) != (d[1], d[2]) {
                    let t = be.pad_hw(&x, hp, wp)?;
                    be.recycle(x);
                    t
                } else {
                    x
                };
                let y = be.conv2d(p, conv, &xp)?;
                if keep {
                    (y, Some(StemTape::Patch { x: xp }))
                } else {
                    be.recycle(xp);
                    (y, None)
                }
            }
        };
        let (mut cur, n) = be.layer_norm(p, &self.stem_norm, &stem_out, keep)?;
        if let Some(t) = tape.as_deref_mut() {
            *t = Tape::new();
            t.stem = stem_t;
            t.stem_out = Some(stem_out);
            t.stem_n = n;
        } else {
            be.recycle(stem_out);
        }
        for level in &self.levels {
            let mut tapes = Vec::new();
            for b in &level.blocks {
                let (y, bt) = self.block(be, p, b, cur, keep)?;
                tapes.extend(bt);
                cur = y;
            }
            if let Some(t) = tape.as_deref_mut() {
                t.blocks.push(tapes);
            }
            if let (Some(n), Some(f)) = (&level.out_norm, feats.as_deref_mut()) {
                let (y, _) = be.layer_norm(p, n, &cur, false)?;
                f.push(be.nhwc_to_nchw(&y)?);
                be.recycle(y);
            }
            let (next, dt) = match &level.down {
                None => (cur, None),
                Some(Down::Conv { conv, norm }) => {
                    let y = be.conv2d(p, conv, &cur)?;
                    let (z, n) = be.layer_norm(p, norm, &y, keep)?;
                    match n {
                        Some(n) => (z, Some(DownTape::Conv { x: cur, y, n })),
                        None => {
                            be.recycle(cur);
                            be.recycle(y);
                            (z, None)
                        }
                    }
                }
                Some(Down::Merge { norm, reduction }) => {
                    let m = be.patch_merge(&cur)?;
                    let (y, n) = be.layer_norm(p, norm, &m, keep)?;
                    let (z, _) = be.linear(p, reduction, &y, Act::None, false)?;
                    match n {
                        Some(n) => (
                            z,
                            Some(DownTape::Merge {
                                x_shape: cur.shape.clone(),
                                m,
                                n,
                                y,
                            }),
                        ),
                        None => {
                            for t in [cur, m, y] {
                                be.recycle(t);
                            }
                            (z, None)
                        }
                    }
                }
            };
            if let Some(t) = tape.as_deref_mut() {
                t.downs.push(dt);
            }
            cur = next;
        }
        let Some(norm) = &self.norm else {
            return Ok(cur);
        };
        let (normed, n) = be.layer_norm(p, norm, &cur, keep)?;
        let pooled = be.mean_tokens(&normed)?;
        be.recycle(normed);
        let out = match &self.head {
            Some(h) => Some(be.linear(p, h, &pooled, Act::None, false)?.0),
            None => None,
        };
        match (tape, out) {
            (Some(t), out) => {
                t.last = Some(cur);
                t.final_n = n;
                match out {
                    Some(out) => {
                        t.pooled = Some(pooled);
                        Ok(out)
                    }
                    None => Ok(pooled),
                }
            }
            (None, out) => {
                be.recycle(cur);
                match out {
                    Some(out) => {
                        be.recycle(pooled);
                        Ok(out)
                    }
                    None => Ok(pooled),
                }
            }
        }
    }

    /// One transformer block on `[B, H, W, C]`.
    fn block<B: Backend>(
        &self,
        be: &B,
        p: &B::Params,
        b: &Block,
        x: Tensor<B>,
        keep: bool,
    ) -> Result<(Tensor<B>, Option<BlockTape<B>>)> {
        let (d, _) = map_dims(&x)?;
        let (h, w) = (d[1], d[2]);
        let kd = b.attn.kernel * b.attn.dilation;
        let padded = h < kd || w < kd;
        let (y, n1) = be.layer_norm(p, &b.norm1, &x, keep)?;
        let y1 = if padded {
            let t = be.pad_hw(&y, h.max(kd), w.max(kd))?;
            be.recycle(y);
            t
        } else {
            y
        };
        let (qkv, _) = be.linear(p, &b.qkv, &y1, Act::None, false)?;
        let (a, lse) = be.attention(p, &b.attn, &qkv, keep)?;
        let a_cropped = if padded {
            Some(be.crop_hw(&a, h, w)?)
        } else {
            None
        };
        let ls = b.gamma.is_some();
        // x_mid = x + γ1 ⊙ proj(a), in place on x unless x is kept.
        let (x_kept, mut x_mid) = if keep {
            let m = be.copy(&x)?;
            (Some(x), m)
        } else {
            (None, x)
        };
        let pin = a_cropped.as_ref().unwrap_or(&a);
        let g1 = b.gamma.as_ref().map(|g| &g.0);
        let pk = be.linear_residual(p, &b.proj, pin, g1, &mut x_mid, keep && ls)?;
        let (y2, n2) = be.layer_norm(p, &b.norm2, &x_mid, keep)?;
        let (g, hpre) = be.linear(p, &b.fc1, &y2, Act::Gelu, keep)?;
        let g2 = b.gamma.as_ref().map(|g| &g.1);
        if let Some(x) = x_kept {
            let mut out = be.copy(&x_mid)?;
            let fk = be.linear_residual(p, &b.fc2, &g, g2, &mut out, ls)?;
            let bt = BlockTape {
                x,
                n1: n1.ok_or_else(|| missing("norm1 statistics"))?,
                y1,
                qkv,
                a,
                lse: lse.ok_or_else(|| missing("log-sum-exp"))?,
                a_cropped,
                p: pk,
                x_mid,
                n2: n2.ok_or_else(|| missing("norm2 statistics"))?,
                y2,
                h: hpre.ok_or_else(|| missing("fc1 output"))?,
                g,
                f: fk,
            };
            return Ok((out, Some(bt)));
        }
        let mut out = x_mid;
        be.linear_residual(p, &b.fc2, &g, g2, &mut out, false)?;
        for t in [y1, qkv, a, y2, g].into_iter().chain(a_cropped) {
            be.recycle(t);
        }
        Ok((out, None))
    }

    /// The backward pass: adds the gradient of the loss with respect to
    /// every parameter into `g` (laid out like the parameters), given
    /// `dout`, the loss's gradient with respect to the forward's output
    /// (the logits, or the pooled features without a head), and the tape
    /// of that forward.
    pub fn backward<B: Backward>(
        &self,
        be: &B,
        p: &B::Params,
        tape: &Tape<B>,
        dout: &Tensor<B>,
        g: &mut Tensor<B>,
    ) -> Result<()> {
        if be.params_len(p) != self.params || g.numel() != self.params {
            return Err(shape_err(format!(
                "backward: {} parameters and a gradient buffer of {} for a model of {}",
                be.params_len(p),
                g.numel(),
                self.params
            )));
        }
        let norm = self
            .norm
            .as_ref()
            .ok_or_else(|| shape_err("backward: a backbone has no loss to differentiate".into()))?;
        let last = tape.last.as_ref().ok_or_else(|| missing("final map"))?;
        let dpooled = match &self.head {
            Some(h) => {
                let pooled = tape
                    .pooled
                    .as_ref()
                    .ok_or_else(|| missing("pooled features"))?;
                be.linear_backward(p, h, pooled, dout, g, true)?
                    .ok_or_else(|| missing("head input gradient"))?
            }
            None => be.copy(dout)?,
        };
        let dnormed = be.mean_tokens_backward(&dpooled, &last.shape)?;
        be.recycle(dpooled);
        let fin = tape
            .final_n
            .as_ref()
            .ok_or_else(|| missing("final norm statistics"))?;
        let mut dx = be.layer_norm_backward(p, norm, last, fin, &dnormed, g)?;
        be.recycle(dnormed);
        if tape.blocks.len() != self.levels.len() || tape.downs.len() != self.levels.len() {
            return Err(shape_err("backward: the tape is not this network's".into()));
        }
        for (li, level) in self.levels.iter().enumerate().rev() {
            match (&level.down, &tape.downs[li]) {
                (None, None) => {}
                (Some(Down::Conv { conv, norm }), Some(DownTape::Conv { x, y, n })) => {
                    let dy = be.layer_norm_backward(p, norm, y, n, &dx, g)?;
                    be.recycle(std::mem::replace(
                        &mut dx,
                        be.conv2d_backward(p, conv, x, &dy, g, true)?
                            .ok_or_else(|| missing("downsampler input gradient"))?,
                    ));
                    be.recycle(dy);
                }
                (
                    Some(Down::Merge { norm, reduction }),
                    Some(DownTape::Merge { x_shape, m, n, y }),
                ) => {
                    let dy = be
                        .linear_backward(p, reduction, y, &dx, g, true)?
                        .ok_or_else(|| missing("reduction input gradient"))?;
                    let dm = be.layer_norm_backward(p, norm, m, n, &dy, g)?;
                    be.recycle(dy);
                    be.recycle(std::mem::replace(
                        &mut dx,
                        be.patch_merge_backward(&dm, x_shape)?,
                    ));
                    be.recycle(dm);
                }
                _ => return Err(shape_err("backward: the tape is not this network's".into())),
            }
            if tape.blocks[li].len() != level.blocks.len() {
                return Err(shape_err("backward: the tape is not this network's".into()));
            }
            for (b, bt) in level.blocks.iter().zip(&tape.blocks[li]).rev() {
                dx = self.block_backward(be, p, b, bt, dx, g)?;
            }
        }
        let stem_out = tape
            .stem_out
            .as_ref()
            .ok_or_else(|| missing("stem output"))?;
        let stem_n = tape
            .stem_n
            .as_ref()
            .ok_or_else(|| missing("stem norm statistics"))?;
        let dstem = be.layer_norm_backward(p, &self.stem_norm, stem_out, stem_n, &dx, g)?;
        be.recycle(dx);
        match (&self.stem, &tape.stem) {
            (Stem::Conv2(a, b), Some(StemTape::Conv2 { x, y0 })) => {
                let dy0 = be
                    .conv2d_backward(p, b, y0, &dstem, g, true)?
                    .ok_or_else(|| missing("stem input gradient"))?;
                be.conv2d_backward(p, a, x, &dy0, g, false)?;
                be.recycle(dy0);
            }
            (Stem::Patch(conv), Some(StemTape::Patch { x })) => {
                be.conv2d_backward(p, conv, x, &dstem, g, false)?;
            }
            _ => return Err(shape_err("backward: the tape is not this network's".into())),
        }
        be.recycle(dstem);
        Ok(())
    }

    fn block_backward<B: Backward>(
        &self,
        be: &B,
        p: &B::Params,
        b: &Block,
        t: &BlockTape<B>,
        dout: Tensor<B>,
        g: &mut Tensor<B>,
    ) -> Result<Tensor<B>> {
        // Second residual: out = x_mid + γ2 ⊙ f.
        let df = match (&b.gamma, &t.f) {
            (Some((_, g2)), Some(f)) => be.scale_backward(p, g2, f, &dout, g)?,
            _ => be.copy(&dout)?,
        };
        let mut dg = be
            .linear_backward(p, &b.fc2, &t.g, &df, g, true)?
            .ok_or_else(|| missing("fc2 input gradient"))?;
        be.recycle(df);
        be.gelu_backward(&t.h, &mut dg)?;
        let dy2 = be
            .linear_backward(p, &b.fc1, &t.y2, &dg, g, true)?
            .ok_or_else(|| missing("fc1 input gradient"))?;
        be.recycle(dg);
        let dn2 = be.layer_norm_backward(p, &b.norm2, &t.x_mid, &t.n2, &dy2, g)?;
        be.recycle(dy2);
        let mut dmid = dout;
        be.add(&mut dmid, &dn2)?;
        be.recycle(dn2);
        // First residual: x_mid = x + γ1 ⊙ p.
        let dp = match (&b.gamma, &t.p) {
            (Some((g1, _)), Some(pk)) => be.scale_backward(p, g1, pk, &dmid, g)?,
            _ => be.copy(&dmid)?,
        };
        let pin = t.a_cropped.as_ref().unwrap_or(&t.a);
        let da = be
            .linear_backward(p, &b.proj, pin, &dp, g, true)?
            .ok_or_else(|| missing("proj input gradient"))?;
        be.recycle(dp);
        let da = if t.a_cropped.is_some() {
            let padded = be.pad_hw(&da, t.a.shape[1], t.a.shape[2])?;
            be.recycle(da);
            padded
        } else {
            da
        };
        let dqkv = be.attention_backward(p, &b.attn, &t.qkv, &t.a, &t.lse, &da, g)?;
        be.recycle(da);
        let dy1 = be
            .linear_backward(p, &b.qkv, &t.y1, &dqkv, g, true)?
            .ok_or_else(|| missing("qkv input gradient"))?;
        be.recycle(dqkv);
        let dy1 = if t.a_cropped.is_some() {
            let c = be.crop_hw(&dy1, t.x.shape[1], t.x.shape[2])?;
            be.recycle(dy1);
            c
        } else {
            dy1
        };
        let dn1 = be.layer_norm_backward(p, &b.norm1, &t.x, &t.n1, &dy1, g)?;
        be.recycle(dy1);
        be.add(&mut dmid, &dn1)?;
        be.recycle(dn1);
        Ok(dmid)
    }
}
