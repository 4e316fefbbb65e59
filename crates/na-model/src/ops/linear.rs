//! Fully connected layers over the last axis, with the bias, GELU and
//! residual epilogues fused into the product.

use core::ops::Range;

use super::act::{gelu_into, gelu_slice};
use super::gemm::{add_col_sums, matmul, matmul_wt_fused, Mat, Threads};
use super::{check_len, check_slot, shape_err, two_mut, Weights};
use crate::error::Result;

/// The activation fused after a [`Linear`]'s bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// None: `y = x Wᵀ + b`.
    None,
    /// Exact GELU: `y = GELU(x Wᵀ + b)`.
    Gelu,
}

/// `y = x Wᵀ + b` over the last axis: `x [rows, din]`, `W [dout, din]`
/// (PyTorch's layout) at `w` in the parameter buffer, `b [dout]` at `b`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Input features.
    pub din: usize,
    /// Output features.
    pub dout: usize,
    /// The weight's range in the parameter buffer.
    pub w: Range<usize>,
    /// The bias's range, when the layer has one.
    pub b: Option<Range<usize>>,
}

impl Linear {
    /// The rows of an input of `len` values, after checking the layer's
    /// slots against the parameters `p`.
    pub fn rows(&self, len: usize, p: &(impl Weights + ?Sized)) -> Result<usize> {
        let what = "linear";
        if self.din == 0 || !len.is_multiple_of(self.din) {
            return Err(shape_err(format!(
                "{what}: input of {len} values is not rows of {}",
                self.din
            )));
        }
        check_slot(what, "weight", &self.w, self.din * self.dout, p)?;
        if let Some(b) = &self.b {
            check_slot(what, "bias", b, self.dout, p)?;
        }
        Ok(len / self.din)
    }

    /// `y [rows, dout] = act(x Wᵀ + b)`; with `pre`, the values before the
    /// activation are written there too (the GELU backward needs them).
    pub fn forward(
        &self,
        p: &(impl Weights + ?Sized),
        x: &[f32],
        act: Act,
        y: &mut [f32],
        pre: Option<&mut [f32]>,
    ) -> Result<()> {
        let m = self.rows(x.len(), p)?;
        let n = self.dout;
        check_len("linear", "output", y.len(), m * n)?;
        let w = p.get(&self.w);
        let b = self.b.clone().map(|r| p.get(&r));
        let bias = |blk: &mut [f32]| {
            if let Some(b) = b {
                {
                    for row in blk.chunks_exact_mut(n) {
                        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                    }
                }
            }
        };
        if let Some(pre) = pre.as_deref() {
            check_len("linear", "pre-activation", pre.len(), m * n)?;
        }
        match (act, pre) {
            (Act::None, pre) => {
                matmul_wt_fused(x, w, y, None, [m, n, self.din], |_, blk, _| bias(blk));
                if let Some(pre) = pre {
                    check_len("linear", "pre-activation", pre.len(), m * n)?;
                    pre.copy_from_slice(y);
                }
            }
            (Act::Gelu, None) => {
                matmul_wt_fused(x, w, y, None, [m, n, self.din], |_, blk, _| {
                    bias(blk);
                    gelu_slice(blk);
                });
            }
            (Act::Gelu, Some(pre)) => {
                check_len("linear", "pre-activation", pre.len(), m * n)?;
                matmul_wt_fused(x, w, pre, Some(y), [m, n, self.din], |_, blk, out| {
                    bias(blk);
                    if let Some(out) = out {
                        gelu_into(out, blk);
                    }
                });
            }
        }
        Ok(())
    }

    /// The residual branch's end: `resid += γ ⊙ (x Wᵀ + b)` (`γ [dout]` at
    /// `gamma`; `None`: 1), the product kept in `tmp [rows, dout]` (the
    /// layer-scale backward needs it).
    pub fn forward_residual(
        &self,
        p: &(impl Weights + ?Sized),
        x: &[f32],
        gamma: Option<&Range<usize>>,
        resid: &mut [f32],
        tmp: &mut [f32],
    ) -> Result<()> {
        let m = self.rows(x.len(), p)?;
        let n = self.dout;
        check_len("linear", "residual", resid.len(), m * n)?;
        check_len("linear", "product", tmp.len(), m * n)?;
        if let Some(g) = gamma {
            check_slot("linear", "layer scale", g, n, p)?;
        }
        let b = self.b.clone().map(|r| p.get(&r));
        let g = gamma.map(|r| p.get(r));
        let w = p.get(&self.w);
        matmul_wt_fused(x, w, tmp, Some(resid), [m, n, self.din], |_, blk, out| {
            let Some(out) = out else { return };
            {
                for (yr, orow) in blk.chunks_exact_mut(n).zip(out.chunks_exact_mut(n)) {
                    if let Some(b) = b {
                        yr.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                    }
                    match g {
                        None => orow.iter_mut().zip(&*yr).for_each(|(o, v)| *o += v),
                        Some(g) => orow
                            .iter_mut()
                            .zip(&*yr)
                            .zip(g)
                            .for_each(|((o, v), g)| *o += g * v),
                    }
                }
            }
        });
        Ok(())
    }

    /// Backward: adds `dW = dyᵀ x` and `db = Σ_rows dy` to the gradient
    /// buffer `grads` (the parameters' layout), and writes `dx = dy W` when
    /// `dx` is given.
    pub fn backward(
        &self,
        p: &(impl Weights + ?Sized),
        x: &[f32],
        dy: &[f32],
        grads: &mut [f32],
        dx: Option<&mut [f32]>,
    ) -> Result<()> {
        let m = self.rows(x.len(), p)?;
        check_len("linear", "dy", dy.len(), m * self.dout)?;
        check_len("linear", "gradient buffer", grads.len(), p.len())?;
        if let Some(dx) = dx.as_deref() {
            check_len("linear", "dx", dx.len(), x.len())?;
        }
        let dym = Mat::rm(dy, m, self.dout);
        let wm = Mat::rm(p.get(&self.w), self.dout, self.din);
        match &self.b {
            Some(b) => {
                let (gw, gb) = two_mut(grads, self.w.clone(), b.clone())?;
                matmul(gw, dym.t(), Mat::rm(x, m, self.din), true, Threads::Pool);
                add_col_sums(gb, dy, self.dout);
            }
            None => matmul(
                &mut grads[self.w.clone()],
                dym.t(),
                Mat::rm(x, m, self.din),
                true,
                Threads::Pool,
            ),
        }
        if let Some(dx) = dx {
            check_len("linear", "dx", dx.len(), x.len())?;
            matmul(dx, dym, wm, false, Threads::Pool);
        }
        Ok(())
    }
}
