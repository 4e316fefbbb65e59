//! The architectures: hierarchical NAT/DiNAT, DiNAT_s and isotropic NAT/DiNAT,
//! built from a [`Config`] and weights under the authors' key names.
//!
//! [`param_shapes`] is the one list of every weight's name and shape; loading
//! checks a file against it before anything is built, so a wrong file gives
//! one error listing every problem.

use crate::backend::{Backend, Tensor};
use crate::config::{conv_out, Arch, Config, MAX_IMAGE_SIDE};
use crate::error::{ModelError, Result};
use crate::net::Net;
use crate::params::ParamSet;
use crate::weights::{HostTensor, WeightMap};

pub use crate::config::{param_shapes, LN_EPS};

/// What a loaded model returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Head {
    /// The classifier: `norm` and `head` weights, [`Model::forward`] gives
    /// logits.
    #[default]
    Classifier,
    /// The backbone of the detection and segmentation checkpoints:
    /// `norm0..norm3` weights instead of `norm` and `head`,
    /// [`Model::features`] gives the four normalised feature maps.
    Backbone,
}

/// A loaded model on backend `B`: the backend it runs on, its structure
/// ([`Net`]) and its parameters, one flat tensor on the device.
///
/// ```no_run
/// use na_model::{Backend, Config, Cpu, Head, Model, WeightMap};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = Config::preset("nat_mini")?;
/// let model = Model::load(Cpu::new(0), &cfg, WeightMap::load("nat_mini.pth")?, Head::Classifier)?;
/// let logits = model.infer(&[1, 3, 224, 224], &vec![0.0; 3 * 224 * 224])?;
/// assert_eq!(logits.shape, [1, 1000]);
/// # Ok(()) }
/// ```
pub struct Model<B: Backend> {
    be: B,
    net: Net,
    params: B::Params,
    /// Largest activation memory a forward pass may plan (bytes).
    memory_limit: u64,
}

impl<B: Backend> Model<B> {
    /// Builds the model of `cfg` from `weights` (authors' names; see
    /// [`WeightMap`]) on backend `be`, which it keeps. With
    /// [`Head::Backbone`], the weights hold `norm0..norm3` instead of `norm`
    /// and `head`, and [`Model::features`] returns the four normalised
    /// feature maps.
    pub fn load(be: B, cfg: &Config, weights: WeightMap, head: Head) -> Result<Self> {
        let backbone = head == Head::Backbone;
        cfg.validate()?;
        if backbone && cfg.arch == Arch::Isotropic {
            return Err(ModelError::Config {
                field: "arch",
                reason: "isotropic models have no multi-level backbone mode".into(),
            });
        }
        // The layout only: the tensors move from the map to the backend
        // without a flat copy (weights are never resident twice).
        let layout = ParamSet::layout_for(cfg, backbone)?;
        let net = Net::new(&layout)?;
        let parts = layout.take_parts(weights)?;
        let params = be.upload_params(layout.len(), parts)?;
        Ok(Model {
            be,
            net,
            params,
            memory_limit: crate::limits::max_memory_bytes(),
        })
    }

    /// The model of a [`ParamSet`] (e.g. one being trained) on `be`.
    pub fn from_params(be: B, ps: &ParamSet) -> Result<Self> {
        let net = Net::new(ps)?;
        let params = be.upload_params(ps.len(), vec![(0..ps.len(), ps.data.clone())])?;
        Ok(Model {
            be,
            net,
            params,
            memory_limit: crate::limits::max_memory_bytes(),
        })
    }

    /// Sets the largest activation memory, in bytes, that a forward pass
    /// may need ([`Config::plan_bytes`]); larger ones are refused with
    /// [`ModelError::MemoryLimit`] before anything is allocated. The default
    /// is [`crate::limits::max_memory_bytes`] (16 GiB, or `NA_MAX_MEMORY_GIB`).
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// The activation memory limit in force (bytes).
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.be
    }

    /// What the model returns: logits or backbone features.
    pub fn head(&self) -> Head {
        if self.is_backbone() {
            Head::Backbone
        } else {
            Head::Classifier
        }
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
        let side = 1..=MAX_IMAGE_SIDE;
        let ok = match x.shape[..] {
            [b, c, h, w] => b > 0 && c == cfg.in_chans && side.contains(&h) && side.contains(&w),
            _ => false,
        };
        if ok {
            // The shape is checked: plan the activations before any work.
            cfg.check_memory(x.shape[2], x.shape[3], x.shape[0], false, self.memory_limit)?;
            Ok(())
        } else {
            Err(ModelError::InputShape {
                expected: format!(
                    "[batch >= 1, {}, H, W] with 1 <= H, W <= {MAX_IMAGE_SIDE}",
                    cfg.in_chans
                ),
                got: x.shape.clone(),
            })
        }
    }

    /// The classifier: input `[B, in_chans, H, W]`, output logits
    /// `[B, num_classes]` (pooled features `[B, C]` when `num_classes` is 0).
    pub fn forward(&self, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.forward_with(&self.be, x)
    }

    /// [`Model::forward`] for host data: uploads `data` of `shape`
    /// (`[B, in_chans, H, W]`), runs [`Model::forward`] and downloads the
    /// logits.
    pub fn infer(&self, shape: &[usize], data: &[f32]) -> Result<HostTensor> {
        let x = self.be.upload(shape, data)?;
        let y = self.forward(&x)?;
        Ok(HostTensor {
            shape: y.shape.clone(),
            data: self.be.download(&y)?,
        })
    }

    /// [`Model::forward`] on another instance of the backend, one that can
    /// read this model's parameters (e.g. a single-threaded [`crate::Cpu`]
    /// per worker thread).
    pub fn forward_with(&self, be: &B, x: &Tensor<B>) -> Result<Tensor<B>> {
        if self.is_backbone() {
            return Err(ModelError::NotAClassifier);
        }
        self.check_input(x)?;
        be.install(|| {
            let x = be.nchw_to_nhwc(x)?;
            self.net.forward(be, &self.params, x, None, None)
        })
    }

    /// Backbone mode: the four levels' outputs (before each downsample), each
    /// through its LayerNorm `norm{i}`, as `[B, C_i, H_i, W_i]`.
    pub fn features(&self, x: &Tensor<B>) -> Result<Vec<Tensor<B>>> {
        self.features_with(&self.be, x)
    }

    /// [`Model::features`] on another instance of the backend (see
    /// [`Model::forward_with`]).
    pub fn features_with(&self, be: &B, x: &Tensor<B>) -> Result<Vec<Tensor<B>>> {
        if !self.is_backbone() {
            return Err(ModelError::NotABackbone);
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
    pub params: u64,
    /// Multiply-adds of one image (convolutions, linear layers, and the two
    /// attention products `2·N·C·k²` per block; norms and activations are
    /// not counted). FLOPs are twice this ([`ModelInfo::flops`]).
    pub macs: u64,
    /// Per-level shapes.
    pub levels: Vec<LevelInfo>,
}

impl ModelInfo {
    /// FLOPs of one image: `2 · macs` ([`analyze`] refuses sizes where that
    /// would overflow).
    pub fn flops(&self) -> u64 {
        2 * self.macs
    }
}

/// Parameters, multiply-adds and per-level shapes of `cfg` for an
/// `height × width` input, in checked arithmetic.
///
/// # Errors
///
/// [`Config::validate`]'s errors; [`ModelError::InputShape`] for a side of 0
/// or above [`crate::config::MAX_IMAGE_SIDE`]; [`ModelError::Overflow`] when
/// the FLOPs do not fit in a `u64`.
///
/// ```
/// let cfg = na_model::Config::preset("nat_mini")?;
/// let info = na_model::analyze(&cfg, 224, 224)?;
/// assert_eq!(info.params, 19_984_174);
/// assert_eq!(info.levels[0].height, 56); // the stem downsamples by 4
/// # Ok::<(), na_model::ModelError>(())
/// ```
pub fn analyze(cfg: &Config, height: usize, width: usize) -> Result<ModelInfo> {
    cfg.validate()?;
    Config::check_image_size(height, width)?;
    let params = cfg.param_count()?;
    let ovf = || ModelError::Overflow {
        what: format!("the multiply-adds at {height}x{width}"),
    };
    // Every product in u128 (the fields' ranges keep each term far below
    // 2^128), each one checked all the same.
    let m = |v: &[u128]| -> Result<u128> {
        v.iter()
            .try_fold(1u128, |a, &x| a.checked_mul(x))
            .ok_or_else(ovf)
    };
    let mut macs: u128 = 0;
    let mut add = |x: u128| -> Result<()> {
        macs = macs.checked_add(x).ok_or_else(ovf)?;
        Ok(())
    };
    let (e, cin) = (cfg.embed_dim as u128, cfg.in_chans as u128);
    let area = |h: usize, w: usize| h as u128 * w as u128;
    let (mut h, mut w) = match cfg.arch {
        Arch::Nat | Arch::Dinat => {
            let [s0, s1] = cfg.stem_strides();
            let (h0, w0) = (conv_out(height, s0), conv_out(width, s0));
            add(m(&[area(h0, w0), e / 2, cin, 9])?)?;
            let (h1, w1) = (conv_out(h0, s1), conv_out(w0, s1));
            add(m(&[area(h1, w1), e, e / 2, 9])?)?;
            (h1, w1)
        }
        Arch::DinatS => {
            let (h1, w1) = (height.div_ceil(4), width.div_ceil(4));
            add(m(&[area(h1, w1), e, cin, 16])?)?;
            (h1, w1)
        }
        Arch::Isotropic => {
            let (h1, w1) = (height.div_ceil(16), width.div_ceil(16));
            add(m(&[area(h1, w1), e, cin, 256])?)?;
            (h1, w1)
        }
    };
    let k = cfg.kernel_size;
    let mut levels = Vec::new();
    for i in 0..cfg.levels() {
        let l = cfg.level(i);
        let c = l.dim as u128;
        let hid = cfg.mlp_hidden(l.dim) as u128;
        let mut dil = Vec::new();
        let mut padded = 0;
        for j in 0..l.depth {
            let d = cfg.dilation(i, j);
            dil.push(d);
            // kernel_size and dilation are range-checked: k·d <= 255·4096.
            let kd = k * d;
            let (hp, wp) = (h.max(kd), w.max(kd));
            padded += usize::from(hp != h || wp != w);
            let (n, np) = (area(h, w), area(hp, wp));
            add(m(&[np, c, 3 * c])?)?;
            add(m(&[2, np, c, (k * k) as u128])?)?;
            add(m(&[n, c, c])?)?;
            add(m(&[2, n, c, hid])?)?;
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
            add(match cfg.arch {
                Arch::DinatS => m(&[area(h2, w2), 4 * c, 2 * c])?,
                _ => m(&[area(h2, w2), 2 * c, c, 9])?,
            })?;
            (h, w) = (h2, w2);
        }
    }
    add(m(&[cfg.num_features() as u128, cfg.num_classes as u128])?)?;
    // FLOPs (2 · macs) must fit too.
    let macs = u64::try_from(macs)
        .ok()
        .filter(|&x| x <= u64::MAX / 2)
        .ok_or_else(ovf)?;
    Ok(ModelInfo {
        params,
        macs,
        levels,
    })
}
