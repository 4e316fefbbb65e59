//! What a device must provide to run the models, and the tensors it owns.
//!
//! Model code only calls these operations, so it makes no assumption about
//! where the data lives: a tensor is a shape plus the backend's own buffer.
//! Activations are channels-last (`[B, H, W, C]`) inside the network.

use crate::error::Result;

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

/// Neighborhood-attention settings of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NaSpec {
    /// Attention heads.
    pub heads: usize,
    /// Kernel size (both axes).
    pub kernel: usize,
    /// Dilation (both axes).
    pub dilation: usize,
}

/// The operations a device provides. Every method validates its shapes and
/// returns a typed error rather than panicking.
pub trait Backend: Send + Sync {
    /// The device buffer type.
    type Buf: Send + Sync;

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

    /// `[B, C, H, W]` → `[B, H, W, C]`.
    fn nchw_to_nhwc(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;

    /// `[B, H, W, C]` → `[B, C, H, W]`.
    fn nhwc_to_nchw(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;

    /// 2D convolution of a channels-last input `[B, H, W, Cin]` with a
    /// PyTorch-layout weight `[Cout, Cin, kh, kw]`, zero padding `pad` on every
    /// side, stride `stride`; output `[B, Ho, Wo, Cout]` with
    /// `Ho = (H + 2 pad - kh) / stride + 1`.
    fn conv2d(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        stride: usize,
        pad: usize,
    ) -> Result<Tensor<Self>>;

    /// `y = x W^T + b` over the last axis: `x [.., in]`, `w [out, in]`, `b [out]`.
    fn linear(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
    ) -> Result<Tensor<Self>>;

    /// LayerNorm over the last axis with weight and bias `[C]`.
    fn layer_norm(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: &Tensor<Self>,
        eps: f32,
    ) -> Result<Tensor<Self>>;

    /// Exact (erf) GELU, in place.
    fn gelu(&self, x: &mut Tensor<Self>) -> Result<()>;

    /// `x += gamma ⊙ y` (gamma `[C]` broadcast over the last axis; `None`: 1).
    fn add_scaled(
        &self,
        x: &mut Tensor<Self>,
        y: &Tensor<Self>,
        gamma: Option<&Tensor<Self>>,
    ) -> Result<()>;

    /// Zero-pads `[B, H, W, C]` at the end of H and W to `(h, w)`.
    fn pad_hw(&self, x: &Tensor<Self>, h: usize, w: usize) -> Result<Tensor<Self>>;

    /// Keeps the first `(h, w)` rows and columns of `[B, H, W, C]`.
    fn crop_hw(&self, x: &Tensor<Self>, h: usize, w: usize) -> Result<Tensor<Self>>;

    /// Neighborhood attention of a fused projection `qkv [B, H, W, 3C]`
    /// (q | k | v, head `h` on channels `h*hd .. (h+1)*hd` of each), with
    /// relative positional bias `rpb [heads, 2k-1, 2k-1]` and scale
    /// `hd^-0.5`; output `[B, H, W, C]`.
    fn neighborhood_attention(
        &self,
        qkv: &Tensor<Self>,
        rpb: &Tensor<Self>,
        spec: NaSpec,
    ) -> Result<Tensor<Self>>;

    /// Swin patch merging of `[B, H, W, C]` (odd sizes zero-padded at the
    /// end): `[B, ceil(H/2), ceil(W/2), 4C]` with the quadrants in the order
    /// `x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]`.
    fn patch_merge(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;

    /// Mean over the middle axes: `[B, .., C]` → `[B, C]`.
    fn mean_tokens(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;
}
