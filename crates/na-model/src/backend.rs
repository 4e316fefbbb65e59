//! What a device must provide to run the models ([`Backend`]) and to train
//! them ([`Backward`]), and the tensors it owns.
//!
//! The architecture walk ([`crate::net`]) only calls these operations, so it
//! makes no assumption about where the data lives: a tensor is a shape plus
//! the backend's own buffer, and a model's parameters are one flat tensor
//! that the layers ([`crate::ops`]'s descriptors) address by range. A GPU
//! backend keeps every activation and the parameters device-resident; only
//! [`Backend::upload`] and [`Backend::download`] cross to the host.
//! Activations are channels-last (`[B, H, W, C]`) inside the network.

use core::ops::Range;

use crate::error::Result;
use crate::ops::{Act, Attention, Conv2d, LayerNorm, Linear};

/// A tensor: a row-major shape and a device buffer of `f32`.
pub struct Tensor<B: Backend + ?Sized> {
    /// The shape, row-major.
    pub shape: Vec<usize>,
    /// The device buffer (`shape.iter().product()` elements).
    pub buf: B::Buf,
}

impl<B: Backend + ?Sized> Tensor<B> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The size of the last axis.
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
}

impl<B: Backend + ?Sized> core::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}

/// The forward operations a device provides (inference). Every method
/// validates its shapes and returns a typed error rather than panicking.
/// `p` is always the model's parameters ([`Backend::Params`]); layers
/// address their weights in them by range.
pub trait Backend: Send + Sync {
    /// The device buffer type.
    type Buf: Send + Sync;

    /// A model's parameters on the device: the flat layout of a
    /// [`crate::ParamSet`], addressed by the layers' ranges.
    type Params: Send + Sync;

    /// Moves a model's parameter tensors onto the device: `parts` are the
    /// tensors in layout order, each with its range, covering `0..len`
    /// without gaps (one part spanning everything is fine).
    fn upload_params(
        &self,
        len: usize,
        parts: Vec<(Range<usize>, Vec<f32>)>,
    ) -> Result<Self::Params>;

    /// The number of values in the flat layout of `p`.
    fn params_len(&self, p: &Self::Params) -> usize;

    /// A short name for messages (`"cpu"`, `"cuda:0"`).
    fn name(&self) -> String;

    /// Copies host data to a new tensor of shape `shape`.
    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor<Self>>;

    /// Copies a tensor back to the host.
    fn download(&self, x: &Tensor<Self>) -> Result<Vec<f32>>;

    /// Hands a tensor that is no longer needed back for reuse (a device
    /// may keep its buffer for later allocations). Dropping it is also fine.
    fn recycle(&self, x: Tensor<Self>) {
        drop(x);
    }

    /// Runs `f` in the backend's execution context (the CPU backend's
    /// thread pool); the model's entry points wrap whole passes in it.
    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// A copy of `x`.
    fn copy(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;

    /// `[B, C, H, W]` → `[B, H, W, C]`.
    fn nchw_to_nhwc(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;

    /// `[B, H, W, C]` → `[B, C, H, W]`.
    fn nhwc_to_nchw(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;

    /// [`Conv2d`] of a channels-last `[B, H, W, cin]`: `[B, Ho, Wo, cout]`.
    fn conv2d(&self, p: &Self::Params, l: &Conv2d, x: &Tensor<Self>) -> Result<Tensor<Self>>;

    /// [`Linear`] over the last axis with the activation `act` fused; with
    /// `keep_pre`, also the values before the activation (for training).
    fn linear(
        &self,
        p: &Self::Params,
        l: &Linear,
        x: &Tensor<Self>,
        act: Act,
        keep_pre: bool,
    ) -> Result<(Tensor<Self>, Option<Tensor<Self>>)>;

    /// The end of a residual branch, fused: `resid += γ ⊙ (x Wᵀ + b)` (`γ`
    /// at `gamma`; `None`: 1). With `keep`, returns `x Wᵀ + b` (the
    /// layer-scale backward needs it).
    fn linear_residual(
        &self,
        p: &Self::Params,
        l: &Linear,
        x: &Tensor<Self>,
        gamma: Option<&Range<usize>>,
        resid: &mut Tensor<Self>,
        keep: bool,
    ) -> Result<Option<Tensor<Self>>>;

    /// [`LayerNorm`] over the last axis; with `keep_stats`, each row's mean
    /// and inverse standard deviation `[rows, 2]` too.
    fn layer_norm(
        &self,
        p: &Self::Params,
        l: &LayerNorm,
        x: &Tensor<Self>,
        keep_stats: bool,
    ) -> Result<(Tensor<Self>, Option<Tensor<Self>>)>;

    /// Zero-pads `[B, H, W, C]` at the end of H and W to `(h, w)`.
    fn pad_hw(&self, x: &Tensor<Self>, h: usize, w: usize) -> Result<Tensor<Self>>;

    /// Keeps the first `(h, w)` rows and columns of `[B, H, W, C]`.
    fn crop_hw(&self, x: &Tensor<Self>, h: usize, w: usize) -> Result<Tensor<Self>>;

    /// [`Attention`] of a fused projection `qkv [B, H, W, 3C]`: output
    /// `[B, H, W, C]`; with `keep_lse`, the log-sum-exp `[B, H, W, heads]`.
    fn attention(
        &self,
        p: &Self::Params,
        l: &Attention,
        qkv: &Tensor<Self>,
        keep_lse: bool,
    ) -> Result<(Tensor<Self>, Option<Tensor<Self>>)>;

    /// Swin patch merging of `[B, H, W, C]` (odd sizes zero-padded at the
    /// end): `[B, ceil(H/2), ceil(W/2), 4C]` with the quadrants in the order
    /// `x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]`.
    fn patch_merge(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;

    /// Mean over the middle axes: `[B, .., C]` → `[B, C]`.
    fn mean_tokens(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;
}

/// The backward operations a device provides for training. Parameter
/// gradients are **added** into `g`, a tensor laid out like the parameters.
pub trait Backward: Backend {
    /// A tensor of zeros.
    fn zeros(&self, shape: &[usize]) -> Result<Tensor<Self>>;

    /// `x += y`.
    fn add(&self, x: &mut Tensor<Self>, y: &Tensor<Self>) -> Result<()>;

    /// [`Backend::conv2d`]'s backward; `dx` when `need_dx`.
    fn conv2d_backward(
        &self,
        p: &Self::Params,
        l: &Conv2d,
        x: &Tensor<Self>,
        dy: &Tensor<Self>,
        g: &mut Tensor<Self>,
        need_dx: bool,
    ) -> Result<Option<Tensor<Self>>>;

    /// [`Backend::linear`]'s backward for [`Act::None`] (`dy` is the
    /// gradient of the product; see [`Backward::gelu_backward`]); `dx` when
    /// `need_dx`.
    fn linear_backward(
        &self,
        p: &Self::Params,
        l: &Linear,
        x: &Tensor<Self>,
        dy: &Tensor<Self>,
        g: &mut Tensor<Self>,
        need_dx: bool,
    ) -> Result<Option<Tensor<Self>>>;

    /// `dy *= GELU'(pre)` in place.
    fn gelu_backward(&self, pre: &Tensor<Self>, dy: &mut Tensor<Self>) -> Result<()>;

    /// The layer-scale part of a residual `x + γ ⊙ y`: returns `γ ⊙ dout`
    /// and adds `Σ_rows dout ⊙ y` to γ's gradient.
    fn scale_backward(
        &self,
        p: &Self::Params,
        gamma: &Range<usize>,
        y: &Tensor<Self>,
        dout: &Tensor<Self>,
        g: &mut Tensor<Self>,
    ) -> Result<Tensor<Self>>;

    /// [`Backend::layer_norm`]'s backward.
    fn layer_norm_backward(
        &self,
        p: &Self::Params,
        l: &LayerNorm,
        x: &Tensor<Self>,
        stats: &Tensor<Self>,
        dy: &Tensor<Self>,
        g: &mut Tensor<Self>,
    ) -> Result<Tensor<Self>>;

    /// [`Backend::attention`]'s backward: `d_qkv`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        p: &Self::Params,
        l: &Attention,
        qkv: &Tensor<Self>,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
        d_out: &Tensor<Self>,
        g: &mut Tensor<Self>,
    ) -> Result<Tensor<Self>>;

    /// [`Backend::patch_merge`]'s backward to an input of shape `shape`.
    fn patch_merge_backward(&self, dy: &Tensor<Self>, shape: &[usize]) -> Result<Tensor<Self>>;

    /// [`Backend::mean_tokens`]'s backward to an input of shape `shape`.
    fn mean_tokens_backward(&self, dy: &Tensor<Self>, shape: &[usize]) -> Result<Tensor<Self>>;
}
