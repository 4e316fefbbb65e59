//! The whole network for training: every parameter in one flat buffer
//! ([`ParamSet`]), a forward pass that keeps what the backward needs
//! ([`Tape`]), and the backward pass that walks it in reverse
//! ([`TrainNet::backward`]).
//!
//! The sequence of operations is [`crate::Model`]'s, layer for layer, with
//! the layers of [`super::layers`] and [`super::attention`], so a
//! [`ParamSet`] saved with [`ParamSet::to_weight_map`] loads in
//! [`crate::Model::load`] and gives the same logits.

use std::collections::HashMap;
use std::ops::Range;

use super::attention::{NaSaved, NeighborhoodAttention};
use super::layers::{
    add_scaled, add_scaled_backward, crop_hw, gelu, gelu_backward, mean_tokens,
    mean_tokens_backward, pad_hw, patch_merge, patch_merge_backward, shape_err, Bhw, Conv2d,
    LayerNorm, Linear, NormStats, ParamGrads,
};
use super::rng::Rng;
use crate::config::{Arch, Config};
use crate::error::{ModelError, Result};
use crate::model::{param_shapes, LN_EPS};
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

/// Every parameter of a classifier (`cfg.num_classes > 0`) in one flat
/// buffer, in [`crate::param_shapes`] order.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSet {
    /// The configuration.
    pub cfg: Config,
    /// The tensors, in order, with their ranges.
    pub entries: Vec<ParamEntry>,
    /// All values.
    pub data: Vec<f32>,
    index: HashMap<String, usize>,
}

impl ParamSet {
    /// Zeros for every parameter of `cfg`.
    pub fn zeros(cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        if cfg.num_classes == 0 {
            return Err(ModelError::Config(
                "training needs a classification head (num_classes > 0)".into(),
            ));
        }
        let mut entries = Vec::new();
        let mut off = 0;
        for (name, shape) in param_shapes(cfg, false) {
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
            entries,
            data: vec![0.0; off],
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
        weights.check(&param_shapes(cfg, false))?;
        for e in &p.entries {
            let t = weights
                .get(&e.name)
                .ok_or_else(|| ModelError::WeightsMismatch {
                    missing: vec![e.name.clone()],
                    unexpected: vec![],
                    mis_shaped: vec![],
                })?;
            p.data[e.range.clone()].copy_from_slice(&t.data);
        }
        Ok(p)
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
        self.data.len()
    }

    /// Whether there are no parameters (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The range of a tensor by name.
    pub fn range(&self, name: &str) -> Result<Range<usize>> {
        self.index
            .get(name)
            .map(|&i| self.entries[i].range.clone())
            .ok_or_else(|| ModelError::Config(format!("no parameter named {name}")))
    }

    /// The values of a tensor by name.
    pub fn get(&self, name: &str) -> Result<&[f32]> {
        Ok(&self.data[self.range(name)?])
    }
}

/// Mutable views of a weight's and a bias's gradients inside one flat
/// gradient buffer (the ranges are disjoint).
fn grads<'a>(g: &'a mut [f32], w: Range<usize>, b: Option<Range<usize>>) -> ParamGrads<'a> {
    match b {
        None => ParamGrads {
            w: &mut g[w],
            b: None,
        },
        Some(b) if w.end <= b.start => {
            let (lo, hi) = g.split_at_mut(b.start);
            ParamGrads {
                w: &mut lo[w],
                b: Some(&mut hi[..b.len()]),
            }
        }
        Some(b) => {
            let (lo, hi) = g.split_at_mut(w.start);
            ParamGrads {
                w: &mut hi[..w.len()],
                b: Some(&mut lo[b]),
            }
        }
    }
}

/// A linear or convolution layer's parameter ranges.
#[derive(Clone, Debug)]
struct Lin {
    w: Range<usize>,
    b: Option<Range<usize>>,
}

#[derive(Clone, Debug)]
struct BlockP {
    norm1: Lin,
    qkv: Lin,
    rpb: Range<usize>,
    proj: Lin,
    norm2: Lin,
    fc1: Lin,
    fc2: Lin,
    gamma: Option<(Range<usize>, Range<usize>)>,
    na: NeighborhoodAttention,
    c: usize,
    hid: usize,
}

#[derive(Clone, Debug)]
enum DownP {
    Conv { w: Range<usize>, norm: Lin },
    Merge { norm: Lin, reduction: Range<usize> },
}

#[derive(Clone, Debug)]
enum StemP {
    Conv2 { a: Lin, b: Lin, strides: [usize; 2] },
    Patch { proj: Lin, p: usize },
}

/// The network's structure: which ranges of a [`ParamSet`] each layer uses.
#[derive(Clone, Debug)]
pub struct TrainNet {
    cfg: Config,
    stem: StemP,
    stem_norm: Lin,
    levels: Vec<(Vec<BlockP>, Option<DownP>)>,
    norm: Lin,
    head: Lin,
}

/// What the forward of one block keeps.
#[derive(Debug)]
struct BlockTape {
    dims: Bhw,
    /// The map the attention ran on (padded when smaller than `k·d`).
    na_dims: Bhw,
    x: Vec<f32>,
    n1: NormStats,
    y1: Vec<f32>,
    na: NaSaved,
    /// The cropped attention output (input of `proj`) when padded.
    a_cropped: Option<Vec<f32>>,
    /// `proj`'s output, kept only with layer scale.
    p: Option<Vec<f32>>,
    x_mid: Vec<f32>,
    n2: NormStats,
    y2: Vec<f32>,
    h: Vec<f32>,
    g: Vec<f32>,
    /// `fc2`'s output, kept only with layer scale.
    f: Option<Vec<f32>>,
}

#[derive(Debug)]
enum DownTape {
    Conv {
        x: Vec<f32>,
        dims: Bhw,
        y: Vec<f32>,
        n: NormStats,
    },
    Merge {
        dims: Bhw,
        m: Vec<f32>,
        n: NormStats,
        y: Vec<f32>,
    },
}

#[derive(Debug)]
enum StemTape {
    Conv2 {
        x: Vec<f32>,
        dims: Bhw,
        dims0: Bhw,
        y0: Vec<f32>,
    },
    Patch {
        /// The (padded) input and its dims.
        x: Vec<f32>,
        dims: Bhw,
    },
}

/// Everything the backward pass needs from one forward pass.
#[derive(Debug)]
pub struct Tape {
    batch: usize,
    stem: StemTape,
    stem_out: Vec<f32>,
    stem_n: NormStats,
    blocks: Vec<Vec<BlockTape>>,
    downs: Vec<Option<DownTape>>,
    last: Vec<f32>,
    last_dims: Bhw,
    final_n: NormStats,
    pooled: Vec<f32>,
    /// The logits `[B, num_classes]`.
    pub logits: Vec<f32>,
}

impl TrainNet {
    /// The structure of `params`' model.
    pub fn new(params: &ParamSet) -> Result<Self> {
        let cfg = &params.cfg;
        let r = |n: &str| params.range(n);
        let lin = |p: &str, bias: bool| -> Result<Lin> {
            Ok(Lin {
                w: r(&format!("{p}.weight"))?,
                b: if bias {
                    Some(r(&format!("{p}.bias"))?)
                } else {
                    None
                },
            })
        };
        let stem = match cfg.arch {
            Arch::Nat | Arch::Dinat => StemP::Conv2 {
                a: lin("patch_embed.proj.0", true)?,
                b: lin("patch_embed.proj.1", true)?,
                strides: cfg.stem_strides(),
            },
            Arch::DinatS => StemP::Patch {
                proj: lin("patch_embed.proj", true)?,
                p: 4,
            },
            Arch::Isotropic => StemP::Patch {
                proj: lin("patch_embed.proj", true)?,
                p: 16,
            },
        };
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
                let p = crate::model::block_prefix(cfg, i, j);
                blocks.push(BlockP {
                    norm1: lin(&format!("{p}.norm1"), true)?,
                    qkv: lin(&format!("{p}.attn.qkv"), true)?,
                    rpb: r(&format!("{p}.attn.rpb"))?,
                    proj: lin(&format!("{p}.attn.proj"), true)?,
                    norm2: lin(&format!("{p}.norm2"), true)?,
                    fc1: lin(&format!("{p}.mlp.fc1"), true)?,
                    fc2: lin(&format!("{p}.mlp.fc2"), true)?,
                    gamma: if cfg.layer_scale.is_some() {
                        Some((r(&format!("{p}.gamma1"))?, r(&format!("{p}.gamma2"))?))
                    } else {
                        None
                    },
                    na: NeighborhoodAttention {
                        heads: l.heads,
                        kernel: cfg.kernel_size,
                        dilation: cfg.dilation(i, j),
                    },
                    c: l.dim,
                    hid: cfg.mlp_hidden(l.dim),
                });
            }
            let down = if i + 1 < cfg.levels() {
                let p = format!("{group}.{i}.downsample");
                Some(match cfg.arch {
                    Arch::DinatS => DownP::Merge {
                        norm: lin(&format!("{p}.norm"), true)?,
                        reduction: r(&format!("{p}.reduction.weight"))?,
                    },
                    _ => DownP::Conv {
                        w: r(&format!("{p}.reduction.weight"))?,
                        norm: lin(&format!("{p}.norm"), true)?,
                    },
                })
            } else {
                None
            };
            levels.push((blocks, down));
        }
        Ok(TrainNet {
            cfg: cfg.clone(),
            stem,
            stem_norm: lin("patch_embed.norm", true)?,
            levels,
            norm: lin("norm", true)?,
            head: lin("head", true)?,
        })
    }

    fn check(&self, params: &ParamSet) -> Result<()> {
        if params.cfg != self.cfg {
            return Err(ModelError::Config(
                "the parameters belong to another configuration".into(),
            ));
        }
        Ok(())
    }

    /// Forward pass of a batch of channels-last images `x [B, H, W,
    /// in_chans]` (for one channel the same as NCHW). Returns the tape,
    /// whose [`Tape::logits`] are the output.
    pub fn forward(&self, params: &ParamSet, x: &[f32], dims: Bhw) -> Result<Tape> {
        self.check(params)?;
        let pd = &params.data;
        let cin = self.cfg.in_chans;
        let [b, h, w] = dims;
        if b == 0 || h == 0 || w == 0 || x.len() != b * h * w * cin {
            return Err(ModelError::InputShape {
                expected: format!("[batch >= 1, H >= 1, W >= 1, {cin}]"),
                got: vec![x.len(), b, h, w],
            });
        }
        let e = self.cfg.embed_dim;
        let (stem, stem_out, mut d) = match &self.stem {
            StemP::Conv2 { a, b: bl, strides } => {
                let c0 = Conv2d {
                    cin,
                    cout: e / 2,
                    kh: 3,
                    kw: 3,
                    stride: strides[0],
                    pad: 1,
                };
                let (y0, dims0) = c0.forward(x, dims, &pd[a.w.clone()], bias(pd, &a.b))?;
                let c1 = Conv2d {
                    cin: e / 2,
                    cout: e,
                    kh: 3,
                    kw: 3,
                    stride: strides[1],
                    pad: 1,
                };
                let (y1, dims1) = c1.forward(&y0, dims0, &pd[bl.w.clone()], bias(pd, &bl.b))?;
                (
                    StemTape::Conv2 {
                        x: x.to_vec(),
                        dims,
                        dims0,
                        y0,
                    },
                    y1,
                    dims1,
                )
            }
            StemP::Patch { proj, p } => {
                let (hp, wp) = (h.next_multiple_of(*p), w.next_multiple_of(*p));
                let xp = pad_hw(x, dims, cin, hp, wp)?;
                let conv = Conv2d {
                    cin,
                    cout: e,
                    kh: *p,
                    kw: *p,
                    stride: *p,
                    pad: 0,
                };
                let pdims = [b, hp, wp];
                let (y, od) = conv.forward(&xp, pdims, &pd[proj.w.clone()], bias(pd, &proj.b))?;
                (StemTape::Patch { x: xp, dims: pdims }, y, od)
            }
        };
        let ln = LayerNorm { c: e, eps: LN_EPS };
        let (mut cur, stem_n) = ln.forward(
            &stem_out,
            &pd[self.stem_norm.w.clone()],
            &pd[self.stem_norm.b.clone().expect("norm bias")],
        )?;
        let mut blocks = Vec::new();
        let mut downs = Vec::new();
        for (lb, down) in &self.levels {
            let mut tapes = Vec::new();
            for bp in lb {
                let (y, t) = block_forward(pd, bp, cur, d)?;
                tapes.push(t);
                cur = y;
            }
            blocks.push(tapes);
            let c = lb.first().map_or(0, |bp| bp.c);
            match down {
                None => downs.push(None),
                Some(DownP::Conv { w: wr, norm }) => {
                    let conv = Conv2d {
                        cin: c,
                        cout: 2 * c,
                        kh: 3,
                        kw: 3,
                        stride: 2,
                        pad: 1,
                    };
                    let (y, od) = conv.forward(&cur, d, &pd[wr.clone()], None)?;
                    let ln = LayerNorm {
                        c: 2 * c,
                        eps: LN_EPS,
                    };
                    let (z, n) = ln.forward(&y, &pd[norm.w.clone()], bias_req(pd, &norm.b))?;
                    downs.push(Some(DownTape::Conv {
                        x: std::mem::replace(&mut cur, z),
                        dims: d,
                        y,
                        n,
                    }));
                    d = od;
                }
                Some(DownP::Merge { norm, reduction }) => {
                    let (m, od) = patch_merge(&cur, d, c)?;
                    let ln = LayerNorm {
                        c: 4 * c,
                        eps: LN_EPS,
                    };
                    let (y, n) = ln.forward(&m, &pd[norm.w.clone()], bias_req(pd, &norm.b))?;
                    let lin = Linear {
                        din: 4 * c,
                        dout: 2 * c,
                    };
                    cur = lin.forward(&y, &pd[reduction.clone()], None)?;
                    downs.push(Some(DownTape::Merge { dims: d, m, n, y }));
                    d = od;
                }
            }
        }
        let f = self.cfg.num_features();
        let ln = LayerNorm { c: f, eps: LN_EPS };
        let (pooled_in, final_n) =
            ln.forward(&cur, &pd[self.norm.w.clone()], bias_req(pd, &self.norm.b))?;
        let pooled = mean_tokens(&pooled_in, b, f)?;
        let head = Linear {
            din: f,
            dout: self.cfg.num_classes,
        };
        let logits = head.forward(&pooled, &pd[self.head.w.clone()], bias(pd, &self.head.b))?;
        Ok(Tape {
            batch: b,
            stem,
            stem_out,
            stem_n,
            blocks,
            downs,
            last: cur,
            last_dims: d,
            final_n,
            pooled,
            logits,
        })
    }

    /// Backward pass: adds the gradient of the loss with respect to every
    /// parameter into `grad` (laid out like [`ParamSet::data`]), given
    /// `dlogits`, the loss's gradient with respect to [`Tape::logits`].
    pub fn backward(
        &self,
        params: &ParamSet,
        tape: &Tape,
        dlogits: &[f32],
        grad: &mut [f32],
    ) -> Result<()> {
        self.check(params)?;
        let pd = &params.data;
        if grad.len() != pd.len() || dlogits.len() != tape.logits.len() {
            return Err(shape_err(format!(
                "backward: gradient buffer of {} values (expected {}), dlogits of {} \
                 (expected {})",
                grad.len(),
                pd.len(),
                dlogits.len(),
                tape.logits.len()
            )));
        }
        let f = self.cfg.num_features();
        let head = Linear {
            din: f,
            dout: self.cfg.num_classes,
        };
        let dpooled = head
            .backward(
                &tape.pooled,
                &pd[self.head.w.clone()],
                dlogits,
                grads(grad, self.head.w.clone(), self.head.b.clone()),
                true,
            )?
            .expect("dx requested");
        let t = tape.last_dims[1] * tape.last_dims[2];
        let dnormed = mean_tokens_backward(&dpooled, tape.batch, t, f)?;
        let ln = LayerNorm { c: f, eps: LN_EPS };
        let mut dx = ln.backward(
            &tape.last,
            &pd[self.norm.w.clone()],
            &tape.final_n,
            &dnormed,
            grads(grad, self.norm.w.clone(), self.norm.b.clone()),
        )?;
        for (li, (lb, down)) in self.levels.iter().enumerate().rev() {
            let c = lb.first().map_or(0, |bp| bp.c);
            match (down, &tape.downs[li]) {
                (None, None) => {}
                (Some(DownP::Conv { w: wr, norm }), Some(DownTape::Conv { x, dims, y, n })) => {
                    let ln = LayerNorm {
                        c: 2 * c,
                        eps: LN_EPS,
                    };
                    let dy = ln.backward(
                        y,
                        &pd[norm.w.clone()],
                        n,
                        &dx,
                        grads(grad, norm.w.clone(), norm.b.clone()),
                    )?;
                    let conv = Conv2d {
                        cin: c,
                        cout: 2 * c,
                        kh: 3,
                        kw: 3,
                        stride: 2,
                        pad: 1,
                    };
                    dx = conv
                        .backward(
                            x,
                            *dims,
                            &pd[wr.clone()],
                            &dy,
                            grads(grad, wr.clone(), None),
                            true,
                        )?
                        .expect("dx requested");
                }
                (
                    Some(DownP::Merge { norm, reduction }),
                    Some(DownTape::Merge { dims, m, n, y }),
                ) => {
                    let lin = Linear {
                        din: 4 * c,
                        dout: 2 * c,
                    };
                    let dy = lin
                        .backward(
                            y,
                            &pd[reduction.clone()],
                            &dx,
                            grads(grad, reduction.clone(), None),
                            true,
                        )?
                        .expect("dx requested");
                    let ln = LayerNorm {
                        c: 4 * c,
                        eps: LN_EPS,
                    };
                    let dm = ln.backward(
                        m,
                        &pd[norm.w.clone()],
                        n,
                        &dy,
                        grads(grad, norm.w.clone(), norm.b.clone()),
                    )?;
                    dx = patch_merge_backward(&dm, *dims, c)?;
                }
                _ => return Err(shape_err("backward: the tape is not this network's".into())),
            }
            for (bp, bt) in lb.iter().zip(&tape.blocks[li]).rev() {
                dx = block_backward(pd, bp, bt, dx, grad)?;
            }
        }
        let e = self.cfg.embed_dim;
        let ln = LayerNorm { c: e, eps: LN_EPS };
        let dstem = ln.backward(
            &tape.stem_out,
            &pd[self.stem_norm.w.clone()],
            &tape.stem_n,
            &dx,
            grads(grad, self.stem_norm.w.clone(), self.stem_norm.b.clone()),
        )?;
        let cin = self.cfg.in_chans;
        match (&self.stem, &tape.stem) {
            (
                StemP::Conv2 { a, b, strides },
                StemTape::Conv2 {
                    x,
                    dims: in_dims,
                    dims0,
                    y0,
                },
            ) => {
                let c1 = Conv2d {
                    cin: e / 2,
                    cout: e,
                    kh: 3,
                    kw: 3,
                    stride: strides[1],
                    pad: 1,
                };
                let dy0 = c1
                    .backward(
                        y0,
                        *dims0,
                        &pd[b.w.clone()],
                        &dstem,
                        grads(grad, b.w.clone(), b.b.clone()),
                        true,
                    )?
                    .expect("dx requested");
                let c0 = Conv2d {
                    cin,
                    cout: e / 2,
                    kh: 3,
                    kw: 3,
                    stride: strides[0],
                    pad: 1,
                };
                c0.backward(
                    x,
                    *in_dims,
                    &pd[a.w.clone()],
                    &dy0,
                    grads(grad, a.w.clone(), a.b.clone()),
                    false,
                )?;
            }
            (StemP::Patch { proj, p }, StemTape::Patch { x, dims }) => {
                let conv = Conv2d {
                    cin,
                    cout: e,
                    kh: *p,
                    kw: *p,
                    stride: *p,
                    pad: 0,
                };
                conv.backward(
                    x,
                    *dims,
                    &pd[proj.w.clone()],
                    &dstem,
                    grads(grad, proj.w.clone(), proj.b.clone()),
                    false,
                )?;
            }
            _ => return Err(shape_err("backward: the tape is not this network's".into())),
        }
        Ok(())
    }
}

fn bias<'a>(pd: &'a [f32], r: &Option<Range<usize>>) -> Option<&'a [f32]> {
    r.as_ref().map(|r| &pd[r.clone()])
}

fn bias_req<'a>(pd: &'a [f32], r: &Option<Range<usize>>) -> &'a [f32] {
    r.as_ref().map_or(&[], |r| &pd[r.clone()])
}

/// `x + γ1 ⊙ proj(NA(qkv(norm1(x))))`, then `x + γ2 ⊙ fc2(gelu(fc1(norm2(x))))`
/// (padding maps smaller than `k·d` as [`crate::Model`] does).
fn block_forward(pd: &[f32], bp: &BlockP, x: Vec<f32>, dims: Bhw) -> Result<(Vec<f32>, BlockTape)> {
    let c = bp.c;
    let [b, h, w] = dims;
    let kd = bp.na.kernel * bp.na.dilation;
    let padded = h < kd || w < kd;
    let na_dims = [b, h.max(kd), w.max(kd)];
    let ln = LayerNorm { c, eps: LN_EPS };
    let (y1, n1) = ln.forward(&x, &pd[bp.norm1.w.clone()], bias_req(pd, &bp.norm1.b))?;
    let y1 = if padded {
        pad_hw(&y1, dims, c, na_dims[1], na_dims[2])?
    } else {
        y1
    };
    let qkv = Linear {
        din: c,
        dout: 3 * c,
    }
    .forward(&y1, &pd[bp.qkv.w.clone()], bias(pd, &bp.qkv.b))?;
    let na = bp.na.forward(&qkv, na_dims, &pd[bp.rpb.clone()])?;
    drop(qkv);
    let a_cropped = if padded {
        Some(crop_hw(&na.out, na_dims, c, h, w)?)
    } else {
        None
    };
    let a = a_cropped.as_deref().unwrap_or(&na.out);
    let p = Linear { din: c, dout: c }.forward(a, &pd[bp.proj.w.clone()], bias(pd, &bp.proj.b))?;
    let mut x_mid = x.clone();
    let g1 = bp.gamma.as_ref().map(|(g1, _)| &pd[g1.clone()]);
    add_scaled(&mut x_mid, &p, g1, c)?;
    let (y2, n2) = ln.forward(&x_mid, &pd[bp.norm2.w.clone()], bias_req(pd, &bp.norm2.b))?;
    let hh = Linear {
        din: c,
        dout: bp.hid,
    }
    .forward(&y2, &pd[bp.fc1.w.clone()], bias(pd, &bp.fc1.b))?;
    let g = gelu(&hh);
    let f = Linear {
        din: bp.hid,
        dout: c,
    }
    .forward(&g, &pd[bp.fc2.w.clone()], bias(pd, &bp.fc2.b))?;
    let mut out = x_mid.clone();
    let g2 = bp.gamma.as_ref().map(|(_, g2)| &pd[g2.clone()]);
    add_scaled(&mut out, &f, g2, c)?;
    let ls = bp.gamma.is_some();
    Ok((
        out,
        BlockTape {
            dims,
            na_dims,
            x,
            n1,
            y1,
            na,
            a_cropped,
            p: ls.then_some(p),
            x_mid,
            n2,
            y2,
            h: hh,
            g,
            f: ls.then_some(f),
        },
    ))
}

fn block_backward(
    pd: &[f32],
    bp: &BlockP,
    t: &BlockTape,
    dout: Vec<f32>,
    grad: &mut [f32],
) -> Result<Vec<f32>> {
    let c = bp.c;
    let ln = LayerNorm { c, eps: LN_EPS };
    // Second residual: out = x_mid + γ2 ⊙ f.
    let df = match (&bp.gamma, &t.f) {
        (Some((_, g2)), Some(f)) => add_scaled_backward(
            f,
            &dout,
            Some(&pd[g2.clone()]),
            Some(&mut grad[g2.clone()]),
            c,
        )?,
        _ => dout.clone(),
    };
    let fc2 = Linear {
        din: bp.hid,
        dout: c,
    };
    let mut dg = fc2
        .backward(
            &t.g,
            &pd[bp.fc2.w.clone()],
            &df,
            grads(grad, bp.fc2.w.clone(), bp.fc2.b.clone()),
            true,
        )?
        .expect("dx requested");
    drop(df);
    gelu_backward(&t.h, &mut dg)?;
    let fc1 = Linear {
        din: c,
        dout: bp.hid,
    };
    let dy2 = fc1
        .backward(
            &t.y2,
            &pd[bp.fc1.w.clone()],
            &dg,
            grads(grad, bp.fc1.w.clone(), bp.fc1.b.clone()),
            true,
        )?
        .expect("dx requested");
    drop(dg);
    let dn2 = ln.backward(
        &t.x_mid,
        &pd[bp.norm2.w.clone()],
        &t.n2,
        &dy2,
        grads(grad, bp.norm2.w.clone(), bp.norm2.b.clone()),
    )?;
    let mut dmid = dout;
    dmid.iter_mut().zip(&dn2).for_each(|(a, b)| *a += b);
    drop(dn2);
    // First residual: x_mid = x + γ1 ⊙ p.
    let dp = match (&bp.gamma, &t.p) {
        (Some((g1, _)), Some(p)) => add_scaled_backward(
            p,
            &dmid,
            Some(&pd[g1.clone()]),
            Some(&mut grad[g1.clone()]),
            c,
        )?,
        _ => dmid.clone(),
    };
    let a = t.a_cropped.as_deref().unwrap_or(&t.na.out);
    let proj = Linear { din: c, dout: c };
    let da = proj
        .backward(
            a,
            &pd[bp.proj.w.clone()],
            &dp,
            grads(grad, bp.proj.w.clone(), bp.proj.b.clone()),
            true,
        )?
        .expect("dx requested");
    let da = if t.a_cropped.is_some() {
        pad_hw(&da, t.dims, c, t.na_dims[1], t.na_dims[2])?
    } else {
        da
    };
    let dqkv = bp
        .na
        .backward(&t.na, &pd[bp.rpb.clone()], &da, &mut grad[bp.rpb.clone()])?;
    let qkv = Linear {
        din: c,
        dout: 3 * c,
    };
    let dy1 = qkv
        .backward(
            &t.y1,
            &pd[bp.qkv.w.clone()],
            &dqkv,
            grads(grad, bp.qkv.w.clone(), bp.qkv.b.clone()),
            true,
        )?
        .expect("dx requested");
    let dy1 = if t.a_cropped.is_some() {
        crop_hw(&dy1, t.na_dims, c, t.dims[1], t.dims[2])?
    } else {
        dy1
    };
    let dn1 = ln.backward(
        &t.x,
        &pd[bp.norm1.w.clone()],
        &t.n1,
        &dy1,
        grads(grad, bp.norm1.w.clone(), bp.norm1.b.clone()),
    )?;
    dmid.iter_mut().zip(&dn1).for_each(|(a, b)| *a += b);
    Ok(dmid)
}
