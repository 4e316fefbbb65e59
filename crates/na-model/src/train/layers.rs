//! Forward and backward passes of the models' layers on the CPU, on plain
//! slices in the models' channels-last layout.
//!
//! Every forward computes what [`crate::Cpu`]'s operation of the same name
//! computes, with the same arithmetic (same `gemm` calls, same summation
//! order), so a model trained here runs unchanged on the inference path.
//!
//! # Conventions
//! - Activations are row-major `[B, H, W, C]` (or `[rows, C]` for layers
//!   that act on the last axis only); maps are described by
//!   [`Bhw`] `= [B, H, W]` and the channel count.
//! - A backward takes what its forward took (the layer's input, the
//!   parameters) plus `dy`, the gradient of the loss with respect to the
//!   forward's output, and **returns** the gradient with respect to the input
//!   (freshly allocated) while **adding** parameter gradients into the
//!   [`ParamGrads`] it is given, so gradients of several micro-batches can be
//!   accumulated in place.
//! - Shapes are checked; a mismatch is a [`ModelError::Backend`] naming the
//!   layer and the sizes.
//! - Threads: `gemm` and the element-wise loops use the current rayon pool;
//!   results do not depend on its size (reductions run over fixed blocks and
//!   are added in order).

use crate::cpu::erf;
use rayon::prelude::*;

use super::mat::{add_col_sums, matmul, Mat};
use crate::error::{ModelError, Result};

/// A map's leading sizes `[B, H, W]` (batch, height, width).
pub type Bhw = [usize; 3];

/// Rows per rayon task in the row-wise loops.
const ROWS_PER_TASK: usize = 64;

pub(crate) fn shape_err(reason: String) -> ModelError {
    ModelError::Backend {
        backend: "cpu (training)".into(),
        reason,
    }
}

fn check_len(layer: &str, what: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(shape_err(format!(
            "{layer}: {what} has {got} values, expected {expected}"
        )))
    }
}

fn numel(layer: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| shape_err(format!("{layer}: sizes {dims:?} overflow")))
}

/// Where a backward adds the gradients of a layer's parameters.
#[derive(Debug)]
pub struct ParamGrads<'a> {
    /// Gradient of the weight (same layout as the weight); added to.
    pub w: &'a mut [f32],
    /// Gradient of the bias, when the layer has one; added to.
    pub b: Option<&'a mut [f32]>,
}

/// A fully connected layer over the last axis: `y = x W^T + b` with
/// `x [rows, din]`, `W [dout, din]` (PyTorch's layout), `b [dout]`,
/// `y [rows, dout]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Input features.
    pub din: usize,
    /// Output features.
    pub dout: usize,
}

impl Linear {
    fn rows(&self, x: &[f32], w: &[f32], b: Option<usize>) -> Result<usize> {
        let what = "linear";
        if self.din == 0 || !x.len().is_multiple_of(self.din) {
            return Err(shape_err(format!(
                "{what}: input of {} values is not rows of {}",
                x.len(),
                self.din
            )));
        }
        check_len(
            what,
            "weight",
            w.len(),
            numel(what, &[self.dout, self.din])?,
        )?;
        if let Some(b) = b {
            check_len(what, "bias", b, self.dout)?;
        }
        Ok(x.len() / self.din)
    }

    /// `y [rows, dout] = x [rows, din] · W^T + b`.
    pub fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Result<Vec<f32>> {
        let m = self.rows(x, w, b.map(<[f32]>::len))?;
        let mut y = vec![0.0; numel("linear", &[m, self.dout])?];
        if let Some(b) = b {
            if self.dout > 0 {
                y.par_chunks_mut(self.dout)
                    .for_each(|r| r.copy_from_slice(b));
            }
        }
        matmul(
            &mut y,
            Mat::rm(x, m, self.din),
            Mat::rm(w, self.dout, self.din).t(),
            b.is_some(),
        );
        Ok(y)
    }

    /// Backward: adds `dW = dy^T x` and `db = Σ_rows dy` to `grads`, and
    /// returns `dx = dy W` when `need_dx`.
    pub fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        grads: ParamGrads<'_>,
        need_dx: bool,
    ) -> Result<Option<Vec<f32>>> {
        let m = self.rows(x, w, grads.b.as_deref().map(<[f32]>::len))?;
        check_len("linear", "dy", dy.len(), m * self.dout)?;
        check_len("linear", "weight gradient", grads.w.len(), w.len())?;
        let dym = Mat::rm(dy, m, self.dout);
        matmul(grads.w, dym.t(), Mat::rm(x, m, self.din), true);
        if let Some(db) = grads.b {
            add_col_sums(db, dy, self.dout);
        }
        Ok(if need_dx {
            let mut dx = vec![0.0; x.len()];
            matmul(&mut dx, dym, Mat::rm(w, self.dout, self.din), false);
            Some(dx)
        } else {
            None
        })
    }
}

/// A 2D convolution of a channels-last map `[B, H, W, cin]` with a
/// PyTorch-layout weight `[cout, cin, kh, kw]`, zero padding `pad` on every
/// side and stride `stride`: output `[B, Ho, Wo, cout]`,
/// `Ho = (H + 2 pad - kh) / stride + 1` (like [`crate::Backend::conv2d`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl Conv2d {
    /// The output's `[B, Ho, Wo]` for an input of `[B, H, W]`.
    pub fn out_dims(&self, [b, h, w]: Bhw) -> Result<Bhw> {
        if self.stride == 0 || self.kh == 0 || self.kw == 0 || self.cin == 0 {
            return Err(shape_err(format!("conv2d: invalid layer {self:?}")));
        }
        if h + 2 * self.pad < self.kh || w + 2 * self.pad < self.kw {
            return Err(shape_err(format!(
                "conv2d: input {h}x{w} (padding {}) is smaller than the {}x{} kernel",
                self.pad, self.kh, self.kw
            )));
        }
        Ok([
            b,
            (h + 2 * self.pad - self.kh) / self.stride + 1,
            (w + 2 * self.pad - self.kw) / self.stride + 1,
        ])
    }

    fn check(&self, x: &[f32], dims: Bhw, w: &[f32], b: Option<usize>) -> Result<Bhw> {
        let what = "conv2d";
        let od = self.out_dims(dims)?;
        check_len(
            what,
            "input",
            x.len(),
            numel(what, &[dims[0], dims[1], dims[2], self.cin])?,
        )?;
        check_len(
            what,
            "weight",
            w.len(),
            numel(what, &[self.cout, self.cin, self.kh, self.kw])?,
        )?;
        if let Some(b) = b {
            check_len(what, "bias", b, self.cout)?;
        }
        numel(what, &[od[0], od[1], od[2], self.cout.max(self.kk())])?;
        Ok(od)
    }

    fn kk(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// im2col: one row per output pixel, columns in the weight's
    /// `(cin, ky, kx)` order (zero where the window leaves the map).
    fn im2col(&self, x: &[f32], [_, h, w]: Bhw, [b, ho, wo]: Bhw) -> Vec<f32> {
        let (kk, cin) = (self.kk(), self.cin);
        let mut cols = vec![0.0; b * ho * wo * kk];
        cols.par_chunks_mut(kk).enumerate().for_each(|(r, row)| {
            let (bi, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
            for ky in 0..self.kh {
                let iy = (oy * self.stride + ky).wrapping_sub(self.pad);
                if iy >= h {
                    continue;
                }
                for kx in 0..self.kw {
                    let ix = (ox * self.stride + kx).wrapping_sub(self.pad);
                    if ix >= w {
                        continue;
                    }
                    let src = &x[((bi * h + iy) * w + ix) * cin..][..cin];
                    for (ci, &v) in src.iter().enumerate() {
                        row[(ci * self.kh + ky) * self.kw + kx] = v;
                    }
                }
            }
        });
        cols
    }

    /// Forward: `y [B, Ho, Wo, cout]` and its `[B, Ho, Wo]`.
    pub fn forward(
        &self,
        x: &[f32],
        dims: Bhw,
        w: &[f32],
        b: Option<&[f32]>,
    ) -> Result<(Vec<f32>, Bhw)> {
        let od = self.check(x, dims, w, b.map(<[f32]>::len))?;
        let rows = od[0] * od[1] * od[2];
        let cols = self.im2col(x, dims, od);
        let mut y = vec![0.0; rows * self.cout];
        if let Some(b) = b {
            if self.cout > 0 {
                y.par_chunks_mut(self.cout)
                    .for_each(|r| r.copy_from_slice(b));
            }
        }
        matmul(
            &mut y,
            Mat::rm(&cols, rows, self.kk()),
            Mat::rm(w, self.cout, self.kk()).t(),
            b.is_some(),
        );
        Ok((y, od))
    }

    /// Backward: adds `dW` and `db` to `grads`; returns `dx [B, H, W, cin]`
    /// when `need_dx`. The im2col matrix is rebuilt from `x` rather than
    /// kept from the forward.
    pub fn backward(
        &self,
        x: &[f32],
        dims: Bhw,
        w: &[f32],
        dy: &[f32],
        grads: ParamGrads<'_>,
        need_dx: bool,
    ) -> Result<Option<Vec<f32>>> {
        let od = self.check(x, dims, w, grads.b.as_deref().map(<[f32]>::len))?;
        let rows = od[0] * od[1] * od[2];
        let kk = self.kk();
        check_len("conv2d", "dy", dy.len(), rows * self.cout)?;
        check_len("conv2d", "weight gradient", grads.w.len(), w.len())?;
        let dym = Mat::rm(dy, rows, self.cout);
        let cols = self.im2col(x, dims, od);
        // (cout, kk) += (cout, rows) · (rows, kk)
        matmul(grads.w, dym.t(), Mat::rm(&cols, rows, kk), true);
        if let Some(db) = grads.b {
            add_col_sums(db, dy, self.cout);
        }
        if !need_dx {
            return Ok(None);
        }
        // (rows, kk) = (rows, cout) · (cout, kk), reusing the buffer.
        let mut dcols = cols;
        matmul(&mut dcols, dym, Mat::rm(w, self.cout, kk), false);
        let [_, h, wd] = dims;
        let (ho, wo, cin) = (od[1], od[2], self.cin);
        let mut dx = vec![0.0; x.len()];
        if !dx.is_empty() {
            // col2im, one batch element per task (no shared writes).
            dx.par_chunks_mut(h * wd * cin)
                .enumerate()
                .for_each(|(bi, dxb)| {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let row = &dcols[((bi * ho + oy) * wo + ox) * kk..][..kk];
                            for ky in 0..self.kh {
                                let iy = (oy * self.stride + ky).wrapping_sub(self.pad);
                                if iy >= h {
                                    continue;
                                }
                                for kx in 0..self.kw {
                                    let ix = (ox * self.stride + kx).wrapping_sub(self.pad);
                                    if ix >= wd {
                                        continue;
                                    }
                                    let dst = &mut dxb[(iy * wd + ix) * cin..][..cin];
                                    for (ci, d) in dst.iter_mut().enumerate() {
                                        *d += row[(ci * self.kh + ky) * self.kw + kx];
                                    }
                                }
                            }
                        }
                    }
                });
        }
        Ok(Some(dx))
    }
}

/// Per-row statistics a [`LayerNorm`] forward keeps for its backward.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NormStats {
    /// Mean of each row.
    pub mean: Vec<f32>,
    /// `1 / sqrt(var + eps)` of each row (biased variance).
    pub rstd: Vec<f32>,
}

/// LayerNorm over the last axis of `x [rows, c]` with weight `γ [c]` and bias
/// `β [c]`: `y = (x - mean) / sqrt(var + eps) · γ + β` (biased variance).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNorm {
    /// Channels (the normalised axis).
    pub c: usize,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    fn rows(&self, x: &[f32], g: &[f32], b: &[f32]) -> Result<usize> {
        if self.c == 0 || !x.len().is_multiple_of(self.c) {
            return Err(shape_err(format!(
                "layer_norm: input of {} values is not rows of {}",
                x.len(),
                self.c
            )));
        }
        check_len("layer_norm", "weight", g.len(), self.c)?;
        check_len("layer_norm", "bias", b.len(), self.c)?;
        Ok(x.len() / self.c)
    }

    /// Forward: `y` and the statistics the backward needs.
    pub fn forward(&self, x: &[f32], g: &[f32], b: &[f32]) -> Result<(Vec<f32>, NormStats)> {
        let m = self.rows(x, g, b)?;
        let c = self.c;
        let mut y = vec![0.0; x.len()];
        let mut st = NormStats {
            mean: vec![0.0; m],
            rstd: vec![0.0; m],
        };
        y.par_chunks_mut(c * ROWS_PER_TASK)
            .zip(x.par_chunks(c * ROWS_PER_TASK))
            .zip(st.mean.par_chunks_mut(ROWS_PER_TASK))
            .zip(st.rstd.par_chunks_mut(ROWS_PER_TASK))
            .for_each(|(((yb, xb), mb), rb)| {
                for (((yr, xr), mo), ro) in yb.chunks_mut(c).zip(xb.chunks(c)).zip(mb).zip(rb) {
                    // The arithmetic of `Cpu::layer_norm`, operation for operation.
                    let mean = xr.iter().sum::<f32>() / c as f32;
                    let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
                    let inv = 1.0 / (var + self.eps).sqrt();
                    for (((o, &v), &gg), &bb) in yr.iter_mut().zip(xr).zip(g).zip(b) {
                        *o = (v - mean) * inv * gg + bb;
                    }
                    (*mo, *ro) = (mean, inv);
                }
            });
        Ok((y, st))
    }

    /// Backward: adds `dγ = Σ dy·x̂` and `dβ = Σ dy` to `grads` (`grads.b` is
    /// required) and returns
    /// `dx = rstd · (dy·γ - mean(dy·γ) - x̂ · mean(dy·γ·x̂))`.
    pub fn backward(
        &self,
        x: &[f32],
        g: &[f32],
        stats: &NormStats,
        dy: &[f32],
        grads: ParamGrads<'_>,
    ) -> Result<Vec<f32>> {
        let db = grads
            .b
            .ok_or_else(|| shape_err("layer_norm: the bias gradient is required".into()))?;
        let m = self.rows(x, g, db)?;
        let c = self.c;
        check_len("layer_norm", "weight gradient", grads.w.len(), c)?;
        check_len("layer_norm", "dy", dy.len(), x.len())?;
        check_len("layer_norm", "mean", stats.mean.len(), m)?;
        check_len("layer_norm", "rstd", stats.rstd.len(), m)?;
        let mut dx = vec![0.0; x.len()];
        let parts: Vec<Vec<f32>> = dx
            .par_chunks_mut(c * ROWS_PER_TASK)
            .zip(x.par_chunks(c * ROWS_PER_TASK))
            .zip(dy.par_chunks(c * ROWS_PER_TASK))
            .zip(stats.mean.par_chunks(ROWS_PER_TASK))
            .zip(stats.rstd.par_chunks(ROWS_PER_TASK))
            .map(|((((dxb, xb), dyb), mb), rb)| {
                // Partial dγ (first c) and dβ (last c) of this block.
                let mut part = vec![0.0f32; 2 * c];
                let (pg, pb) = part.split_at_mut(c);
                for ((((dxr, xr), dyr), &mean), &rstd) in dxb
                    .chunks_mut(c)
                    .zip(xb.chunks(c))
                    .zip(dyb.chunks(c))
                    .zip(mb)
                    .zip(rb)
                {
                    let (mut s1, mut s2) = (0.0f32, 0.0f32);
                    for i in 0..c {
                        let xh = (xr[i] - mean) * rstd;
                        let gy = dyr[i] * g[i];
                        s1 += gy;
                        s2 += gy * xh;
                        pg[i] += dyr[i] * xh;
                        pb[i] += dyr[i];
                    }
                    let (s1, s2) = (s1 / c as f32, s2 / c as f32);
                    for i in 0..c {
                        let xh = (xr[i] - mean) * rstd;
                        dxr[i] = rstd * (dyr[i] * g[i] - s1 - xh * s2);
                    }
                }
                part
            })
            .collect();
        for p in parts {
            for (o, v) in grads.w.iter_mut().zip(&p[..c]) {
                *o += v;
            }
            for (o, v) in db.iter_mut().zip(&p[c..]) {
                *o += v;
            }
        }
        Ok(dx)
    }
}

/// Exact (erf) GELU, `x Φ(x) = x/2 · (1 + erf(x/√2))`, element-wise; the
/// same values as [`crate::Backend::gelu`] on [`crate::Cpu`].
pub fn gelu(x: &[f32]) -> Vec<f32> {
    const R: f32 = core::f32::consts::FRAC_1_SQRT_2;
    let mut y = x.to_vec();
    y.par_chunks_mut(4096).for_each(|c| {
        for v in c {
            *v = 0.5 * *v * (1.0 + erf(*v * R));
        }
    });
    y
}

/// GELU backward in place: `grad *= GELU'(x) = Φ(x) + x φ(x)`, with `x` the
/// forward's input.
pub fn gelu_backward(x: &[f32], grad: &mut [f32]) -> Result<()> {
    check_len("gelu", "gradient", grad.len(), x.len())?;
    const R: f32 = core::f32::consts::FRAC_1_SQRT_2;
    // 1 / sqrt(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    grad.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(g, x)| {
            for (g, &v) in g.iter_mut().zip(x) {
                let cdf = 0.5 * (1.0 + erf(v * R));
                let pdf = INV_SQRT_2PI * (-0.5 * v * v).exp();
                *g *= cdf + v * pdf;
            }
        });
    Ok(())
}

/// Residual add with optional layer scale, in place: `x += γ ⊙ y` over the
/// last axis of `[rows, c]` (`γ [c]`; `None`: 1), like
/// [`crate::Backend::add_scaled`].
pub fn add_scaled(x: &mut [f32], y: &[f32], gamma: Option<&[f32]>, c: usize) -> Result<()> {
    check_len("add_scaled", "y", y.len(), x.len())?;
    if c == 0 || !x.len().is_multiple_of(c) || gamma.is_some_and(|g| g.len() != c) {
        return Err(shape_err(format!(
            "add_scaled: {} values, {c} channels, γ of {:?}",
            x.len(),
            gamma.map(<[f32]>::len)
        )));
    }
    x.par_chunks_mut(c * ROWS_PER_TASK)
        .zip(y.par_chunks(c * ROWS_PER_TASK))
        .for_each(|(a, b)| match gamma {
            None => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
            Some(g) => {
                for (ar, br) in a.chunks_mut(c).zip(b.chunks(c)) {
                    for ((a, b), g) in ar.iter_mut().zip(br).zip(g) {
                        *a += g * b;
                    }
                }
            }
        });
    Ok(())
}

/// Backward of [`add_scaled`]: the gradient reaching `x` is `dout` itself
/// (the caller keeps using it for the residual path); this returns
/// `dy = γ ⊙ dout` and adds `dγ = Σ_rows dout ⊙ y` into `dgamma` (needed
/// exactly when `gamma` is given).
pub fn add_scaled_backward(
    y: &[f32],
    dout: &[f32],
    gamma: Option<&[f32]>,
    dgamma: Option<&mut [f32]>,
    c: usize,
) -> Result<Vec<f32>> {
    check_len("add_scaled", "dout", dout.len(), y.len())?;
    if c == 0 || !y.len().is_multiple_of(c) {
        return Err(shape_err(format!(
            "add_scaled: {} values are not rows of {c}",
            y.len()
        )));
    }
    match (gamma, dgamma) {
        (None, None) => Ok(dout.to_vec()),
        (Some(g), Some(dg)) => {
            check_len("add_scaled", "γ", g.len(), c)?;
            check_len("add_scaled", "γ gradient", dg.len(), c)?;
            let prod: Vec<f32> = dout.par_iter().zip(y).map(|(a, b)| a * b).collect();
            add_col_sums(dg, &prod, c);
            let mut dy = dout.to_vec();
            dy.par_chunks_mut(c).for_each(|r| {
                for (v, g) in r.iter_mut().zip(g) {
                    *v *= g;
                }
            });
            Ok(dy)
        }
        _ => Err(shape_err(
            "add_scaled: γ and its gradient must be given together".into(),
        )),
    }
}

/// Zero-pads `x [B, H, W, C]` at the end of H and W to `[B, hp, wp, C]`
/// (like [`crate::Backend::pad_hw`]). Its backward is [`crop_hw`] of the
/// gradient back to `H × W`.
pub fn pad_hw(x: &[f32], [b, h, w]: Bhw, c: usize, hp: usize, wp: usize) -> Result<Vec<f32>> {
    check_len("pad_hw", "input", x.len(), numel("pad_hw", &[b, h, w, c])?)?;
    if hp < h || wp < w {
        return Err(shape_err(format!(
            "pad_hw: {h}x{w} cannot be padded to {hp}x{wp}"
        )));
    }
    let mut out = vec![0.0; numel("pad_hw", &[b, hp, wp, c])?];
    for bi in 0..b {
        for y in 0..h {
            out[((bi * hp + y) * wp) * c..][..w * c]
                .copy_from_slice(&x[((bi * h + y) * w) * c..][..w * c]);
        }
    }
    Ok(out)
}

/// Keeps the first `hc × wc` rows and columns of `x [B, H, W, C]` (like
/// [`crate::Backend::crop_hw`]). Its backward is [`pad_hw`] of the gradient
/// back to `H × W`.
pub fn crop_hw(x: &[f32], [b, h, w]: Bhw, c: usize, hc: usize, wc: usize) -> Result<Vec<f32>> {
    check_len(
        "crop_hw",
        "input",
        x.len(),
        numel("crop_hw", &[b, h, w, c])?,
    )?;
    if hc > h || wc > w {
        return Err(shape_err(format!(
            "crop_hw: {h}x{w} cannot be cropped to {hc}x{wc}"
        )));
    }
    let mut out = vec![0.0; b * hc * wc * c];
    for bi in 0..b {
        for y in 0..hc {
            out[((bi * hc + y) * wc) * c..][..wc * c]
                .copy_from_slice(&x[((bi * h + y) * w) * c..][..wc * c]);
        }
    }
    Ok(out)
}

/// Quadrant order of patch merging: `(dy, dx)`.
const QUADRANTS: [(usize, usize); 4] = [(0, 0), (1, 0), (0, 1), (1, 1)];

/// Swin patch merging of `x [B, H, W, C]` (odd sizes zero-padded at the end)
/// into `[B, ceil(H/2), ceil(W/2), 4C]`, quadrants in the order
/// `x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]` (like
/// [`crate::Backend::patch_merge`]). Returns the output and its `[B, Ho, Wo]`.
pub fn patch_merge(x: &[f32], dims: Bhw, c: usize) -> Result<(Vec<f32>, Bhw)> {
    let [b, h, w] = dims;
    check_len(
        "patch_merge",
        "input",
        x.len(),
        numel("patch_merge", &[b, h, w, c])?,
    )?;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = vec![0.0; numel("patch_merge", &[b, ho, wo, 4, c])?];
    if c > 0 {
        out.par_chunks_mut(4 * c).enumerate().for_each(|(r, o)| {
            let (bi, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
            for (qi, (dy, dx)) in QUADRANTS.iter().enumerate() {
                let (y, xx) = (2 * oy + dy, 2 * ox + dx);
                if y < h && xx < w {
                    o[qi * c..][..c].copy_from_slice(&x[((bi * h + y) * w + xx) * c..][..c]);
                }
            }
        });
    }
    Ok((out, [b, ho, wo]))
}

/// Backward of [`patch_merge`]: `dy [B, ceil(H/2), ceil(W/2), 4C]` back to
/// `dx [B, H, W, C]` (`dims` is the forward's input `[B, H, W]`; the padded
/// positions' gradients are dropped).
pub fn patch_merge_backward(dy: &[f32], dims: Bhw, c: usize) -> Result<Vec<f32>> {
    let [b, h, w] = dims;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    check_len(
        "patch_merge",
        "dy",
        dy.len(),
        numel("patch_merge", &[b, ho, wo, 4, c])?,
    )?;
    let mut dx = vec![0.0; b * h * w * c];
    if c > 0 {
        dx.par_chunks_mut(c).enumerate().for_each(|(p, d)| {
            let (bi, y, xx) = (p / (h * w), (p / w) % h, p % w);
            let qi = QUADRANTS
                .iter()
                .position(|&q| q == (y % 2, xx % 2))
                .unwrap_or(0);
            let r = (bi * ho + y / 2) * wo + xx / 2;
            d.copy_from_slice(&dy[(r * 4 + qi) * c..][..c]);
        });
    }
    Ok(dx)
}

/// Mean over the middle axes: `x [B, T, C]` (any `[B, .., C]` flattened) →
/// `[B, C]`, like [`crate::Backend::mean_tokens`].
pub fn mean_tokens(x: &[f32], b: usize, c: usize) -> Result<Vec<f32>> {
    let t = tokens("mean_tokens", x.len(), b, c)?;
    let per = t * c;
    let mut out = vec![0.0f32; b * c];
    for bi in 0..b {
        let o = &mut out[bi * c..][..c];
        for row in x[bi * per..][..per].chunks(c) {
            for (o, v) in o.iter_mut().zip(row) {
                *o += v;
            }
        }
        for o in o.iter_mut() {
            *o /= t.max(1) as f32;
        }
    }
    Ok(out)
}

/// Backward of [`mean_tokens`]: `dy [B, C]` → `dx [B, T, C]`, each token
/// receiving `dy / T`.
pub fn mean_tokens_backward(dy: &[f32], b: usize, t: usize, c: usize) -> Result<Vec<f32>> {
    check_len(
        "mean_tokens",
        "dy",
        dy.len(),
        numel("mean_tokens", &[b, c])?,
    )?;
    let mut dx = vec![0.0f32; numel("mean_tokens", &[b, t, c])?];
    if c > 0 && t > 0 {
        let inv = 1.0 / t as f32;
        dx.par_chunks_mut(t * c).enumerate().for_each(|(bi, d)| {
            let g = &dy[bi * c..][..c];
            for row in d.chunks_mut(c) {
                for (o, v) in row.iter_mut().zip(g) {
                    *o = v * inv;
                }
            }
        });
    }
    Ok(dx)
}

fn tokens(layer: &str, len: usize, b: usize, c: usize) -> Result<usize> {
    let bc = numel(layer, &[b, c])?;
    if bc == 0 || !len.is_multiple_of(bc) {
        return Err(shape_err(format!(
            "{layer}: {len} values are not [{b}, T, {c}]"
        )));
    }
    Ok(len / bc)
}
