//! The op set: every layer of the models with its forward and its backward
//! in one place, on host slices in the models' channels-last layout.
//!
//! The CPU backend ([`crate::Cpu`]) runs inference *and* training through
//! these functions, so "training computes what inference computes" holds by
//! construction; a device backend implements the same
//! [`crate::Backend`] operations with its own kernels.
//!
//! - [`gemm`]: the one checked `gemm::gemm` wrapper and the threaded
//!   `x · Wᵀ` with fused per-block epilogues.
//! - [`linear`]: [`Linear`] (bias, bias + GELU, bias + layer scale +
//!   residual fused into the product).
//! - [`conv`]: [`Conv2d`] (im2col + the same product).
//! - [`norm`]: LayerNorm ([`LayerNorm`]).
//! - [`act`]: exact GELU and the vectorisable `erf`.
//! - [`residual`]: `x += γ ⊙ y` and its backward.
//! - [`layout`]: padding, cropping, patch merging, token mean, NCHW ↔ NHWC.
//! - [`attention`]: [`Attention`], neighborhood attention with relative
//!   positional bias on a fused `qkv`, through `na-core`'s fused kernels.
//! - [`loss`]: [`CrossEntropy`] with label smoothing.
//!
//! # Conventions
//! - Activations are row-major `[B, H, W, C]` (or `[rows, C]`); maps are
//!   described by [`Bhw`] `= [B, H, W]` and a channel count.
//! - Parameters live in one flat buffer (a model's [`crate::ParamSet`]
//!   layout); a layer holds the [`Range`]s of its tensors
//!   in it. Parameter gradients are **added** into a buffer of the same
//!   layout, so several micro-batches accumulate in place.
//! - A backward takes what its forward kept plus `dy`, the gradient of the
//!   output, and returns (or writes) the input's gradient.
//! - Shapes are checked; a mismatch is a [`ModelError::Backend`] naming the
//!   layer and the sizes.
//! - Threads: the current rayon pool. Values do not depend on its size
//!   (reductions run over fixed blocks added in order).

use core::ops::Range;

use crate::error::{ModelError, Result};

pub mod act;
pub mod attention;
pub mod conv;
pub mod gemm;
pub mod layout;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod residual;

pub use attention::Attention;
pub use conv::Conv2d;
pub use linear::{Act, Linear};
pub use loss::{CrossEntropy, LossOutput};
pub use norm::LayerNorm;

/// A map's leading sizes `[B, H, W]` (batch, height, width).
pub type Bhw = [usize; 3];

/// Rows per rayon task in the row-wise loops.
pub(crate) const ROWS_PER_TASK: usize = 64;

pub(crate) fn shape_err(reason: String) -> ModelError {
    ModelError::Backend {
        backend: "cpu".into(),
        reason,
    }
}

pub(crate) fn check_len(layer: &str, what: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(shape_err(format!(
            "{layer}: {what} has {got} values, expected {expected}"
        )))
    }
}

pub(crate) fn numel(layer: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| shape_err(format!("{layer}: sizes {dims:?} overflow")))
}

/// A model's parameters as the CPU ops read them: one flat layout
/// ([`crate::ParamSet`]'s) addressed by range, stored as one slice or as the
/// loaded tensors themselves ([`crate::cpu::CpuParams`]).
pub trait Weights: Sync {
    /// Values in the flat layout.
    fn len(&self) -> usize;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values at `r`, or an empty slice when `r` is not stored in one
    /// piece (every op checks its ranges before it reads them).
    fn get(&self, r: &Range<usize>) -> &[f32];
}

impl Weights for [f32] {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }

    fn get(&self, r: &Range<usize>) -> &[f32] {
        <[f32]>::get(self, r.clone()).unwrap_or(&[])
    }
}

impl Weights for Vec<f32> {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }

    fn get(&self, r: &Range<usize>) -> &[f32] {
        <[f32]>::get(self, r.clone()).unwrap_or(&[])
    }
}

/// Checks that `r` holds `n` values stored in one piece of `p`.
pub(crate) fn check_slot(
    layer: &str,
    what: &str,
    r: &Range<usize>,
    n: usize,
    p: &(impl Weights + ?Sized),
) -> Result<()> {
    check_len(layer, what, r.len(), n)?;
    if r.start > r.end || p.get(r).len() != r.len() {
        return Err(shape_err(format!(
            "{layer}: {what} at {r:?} is not a tensor of the {} parameters",
            p.len()
        )));
    }
    Ok(())
}

/// Two disjoint mutable ranges of one buffer (a weight's and a bias's
/// gradients).
pub(crate) fn two_mut(
    g: &mut [f32],
    a: Range<usize>,
    b: Range<usize>,
) -> Result<(&mut [f32], &mut [f32])> {
    let disjoint = a.end <= b.start || b.end <= a.start;
    if !disjoint || a.end.max(b.end) > g.len() {
        return Err(shape_err(format!(
            "parameter slots {a:?} and {b:?} overlap or leave the {} gradients",
            g.len()
        )));
    }
    Ok(if a.end <= b.start {
        let (lo, hi) = g.split_at_mut(b.start);
        (&mut lo[a], &mut hi[..b.len()])
    } else {
        let (lo, hi) = g.split_at_mut(a.start);
        (&mut hi[..a.len()], &mut lo[b])
    })
}
