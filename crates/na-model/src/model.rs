//! The architectures: hierarchical NAT/DiNAT, DiNAT_s and isotropic NAT/DiNAT,
//! built from a [`Config`] and weights under the authors' key names.
//!
//! [`param_shapes`] is the one list of every weight's name and shape; loading
//! checks a file against it before anything is built, so a wrong file gives
//! one error listing every problem.

use crate::backend::{Backend, Tensor};
use crate::config::{Arch, Config};
use crate::error::{ModelError, Result};
use crate::net::Net;
use crate::params::ParamSet;
use crate::weights::WeightMap;

pub use crate::config::{param_shapes, LN_EPS};

/// A loaded model on backend `B`: its structure ([`Net`]) and its
/// parameters, one flat tensor on the device.
pub struct Model<B: Backend> {
    net: Net,
    params: B::Params,
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
        // The layout only: the tensors move from the map to the backend
        // without a flat copy (weights are never resident twice).
        let layout = ParamSet::layout_for(cfg, backbone)?;
        let net = Net::new(&layout)?;
        let parts = layout.take_parts(weights)?;
        let params = be.upload_params(layout.len(), parts)?;
        Ok(Model { net, params })
    }

    /// The model of a [`ParamSet`] (e.g. one being trained).
    pub fn from_params(be: &B, ps: &ParamSet) -> Result<Self> {
        let net = Net::new(ps)?;
        let params = be.upload_params(ps.len(), vec![(0..ps.len(), ps.data.clone())])?;
        Ok(Model { net, params })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.net.config()
    }

    /// The architecture walk.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The parameters, in [`ParamSet`]'s layout.
    pub fn params(&self) -> &B::Params {
        &self.params
    }

    /// Whether the model was loaded in backbone mode.
    pub fn is_backbone(&self) -> bool {
        self.net.is_backbone()
    }

    /// Checks an input `[B, in_chans, H, W]`.
    fn check_input(&self, x: &Tensor<B>) -> Result<()> {
        let cfg = self.config();
        let ok = match x.shape[..] {
            [b, c, h, w] => {
                b > 0 && c == cfg.in_chans && h >= 1 && w >= 1 && h <= 1 << 15 && w <= 1 << 15
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(ModelError::InputShape {
                expected: format!(
                    "[batch >= 1, {}, H, W] with 1 <= H, W <= 32768",
                    cfg.in_chans
                ),
                got: x.shape.clone(),
            })
        }
    }

    /// The classifier: input `[B, in_chans, H, W]`, output logits
    /// `[B, num_classes]` (pooled features `[B, C]` when `num_classes` is 0).
    pub fn forward(&self, be: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
        if self.is_backbone() {
            return Err(ModelError::Config(
                "this model was loaded as a backbone; use features()".into(),
            ));
        }
        self.check_input(x)?;
        be.install(|| {
            let x = be.nchw_to_nhwc(x)?;
            self.net.forward(be, &self.params, x, None, None)
        })
    }

    /// Backbone mode: the four levels' outputs (before each downsample), each
    /// through its LayerNorm `norm{i}`, as `[B, C_i, H_i, W_i]`.
    pub fn features(&self, be: &B, x: &Tensor<B>) -> Result<Vec<Tensor<B>>> {
        if !self.is_backbone() {
            return Err(ModelError::Config(
                "this model was loaded as a classifier; load it with backbone = true".into(),
            ));
        }
        self.check_input(x)?;
        be.install(|| {
            let x = be.nchw_to_nhwc(x)?;
            let mut feats = Vec::new();
            let last = self
                .net
                .forward(be, &self.params, x, None, Some(&mut feats))?;
            be.recycle(last);
            Ok(feats)
        })
    }
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
