//! LayerNorm over the last axis.

use core::ops::Range;

use rayon::prelude::*;

use super::{check_len, check_slot, shape_err, two_mut, Weights, ROWS_PER_TASK};
use crate::error::Result;

/// LayerNorm over the last axis of `x [rows, c]` with weight `γ [c]` (at
/// `w`) and bias `β [c]` (at `b`): `y = (x - mean) / sqrt(var + eps) · γ +
/// β` (biased variance).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    /// Channels (the normalised axis).
    pub c: usize,
    /// Added to the variance.
    pub eps: f32,
    /// γ's range in the parameter buffer.
    pub w: Range<usize>,
    /// β's range in the parameter buffer.
    pub b: Range<usize>,
}

/// `Σ f(x_i)` in eight interleaved partial sums added pairwise at the end:
/// a fixed order (the same on every machine and thread count) that the
/// compiler can keep in SIMD registers, unlike one running sum.
#[inline(always)]
fn sum8(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut it = x.chunks_exact(8);
    for ch in &mut it {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(it.remainder()) {
        *a += f(v);
    }
    let [a, b, c, d, e, g, h, i] = acc;
    ((a + e) + (c + h)) + ((b + g) + (d + i))
}

impl LayerNorm {
    /// The rows of an input of `len` values (slots checked against a
    /// parameters `p`).
    pub fn rows(&self, len: usize, p: &(impl Weights + ?Sized)) -> Result<usize> {
        if self.c == 0 || !len.is_multiple_of(self.c) {
            return Err(shape_err(format!(
                "layer_norm: input of {len} values is not rows of {}",
                self.c
            )));
        }
        check_slot("layer_norm", "weight", &self.w, self.c, p)?;
        check_slot("layer_norm", "bias", &self.b, self.c, p)?;
        Ok(len / self.c)
    }

    /// Forward into `y`; with `stats [rows, 2]`, each row's mean and
    /// `1 / sqrt(var + eps)` are kept for the backward.
    pub fn forward(
        &self,
        p: &(impl Weights + ?Sized),
        x: &[f32],
        y: &mut [f32],
        stats: Option<&mut [f32]>,
    ) -> Result<()> {
        let m = self.rows(x.len(), p)?;
        check_len("layer_norm", "output", y.len(), x.len())?;
        let c = self.c;
        let (g, b) = (p.get(&self.w), p.get(&self.b));
        let row = |yr: &mut [f32], xr: &[f32]| -> (f32, f32) {
            let mean = sum8(xr, |v| v) / c as f32;
            let var = sum8(xr, |v| (v - mean) * (v - mean)) / c as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for (((o, &v), &gg), &bb) in yr.iter_mut().zip(xr).zip(g).zip(b) {
                *o = (v - mean) * inv * gg + bb;
            }
            (mean, inv)
        };
        let chunk = c * ROWS_PER_TASK;
        match stats {
            None => y
                .par_chunks_mut(chunk)
                .zip(x.par_chunks(chunk))
                .for_each(|(yb, xb)| {
                    for (yr, xr) in yb.chunks_mut(c).zip(xb.chunks(c)) {
                        row(yr, xr);
                    }
                }),
            Some(st) => {
                check_len("layer_norm", "statistics", st.len(), 2 * m)?;
                y.par_chunks_mut(chunk)
                    .zip(x.par_chunks(chunk))
                    .zip(st.par_chunks_mut(2 * ROWS_PER_TASK))
                    .for_each(|((yb, xb), sb)| {
                        for ((yr, xr), s) in
                            yb.chunks_mut(c).zip(xb.chunks(c)).zip(sb.chunks_mut(2))
                        {
                            (s[0], s[1]) = row(yr, xr);
                        }
                    });
            }
        }
        Ok(())
    }

    /// Backward: adds `dγ = Σ dy·x̂` and `dβ = Σ dy` to `grads` (the
    /// parameters' layout) and returns
    /// `dx = rstd · (dy·γ - mean(dy·γ) - x̂ · mean(dy·γ·x̂))`.
    pub fn backward(
        &self,
        p: &(impl Weights + ?Sized),
        x: &[f32],
        stats: &[f32],
        dy: &[f32],
        grads: &mut [f32],
    ) -> Result<Vec<f32>> {
        let m = self.rows(x.len(), p)?;
        let c = self.c;
        check_len("layer_norm", "gradient buffer", grads.len(), p.len())?;
        check_len("layer_norm", "dy", dy.len(), x.len())?;
        check_len("layer_norm", "statistics", stats.len(), 2 * m)?;
        let g = p.get(&self.w);
        let mut dx = vec![0.0; x.len()];
        let parts: Vec<Vec<f32>> = dx
            .par_chunks_mut(c * ROWS_PER_TASK)
            .zip(x.par_chunks(c * ROWS_PER_TASK))
            .zip(dy.par_chunks(c * ROWS_PER_TASK))
            .zip(stats.par_chunks(2 * ROWS_PER_TASK))
            .map(|(((dxb, xb), dyb), sb)| {
                // Partial dγ (first c) and dβ (last c) of this block.
                let mut part = vec![0.0f32; 2 * c];
                let (pg, pb) = part.split_at_mut(c);
                for (((dxr, xr), dyr), s) in dxb
                    .chunks_mut(c)
                    .zip(xb.chunks(c))
                    .zip(dyb.chunks(c))
                    .zip(sb.chunks(2))
                {
                    let (mean, rstd) = (s[0], s[1]);
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
        let (gw, gb) = two_mut(grads, self.w.clone(), self.b.clone())?;
        for p in parts {
            gw.iter_mut().zip(&p[..c]).for_each(|(o, v)| *o += v);
            gb.iter_mut().zip(&p[c..]).for_each(|(o, v)| *o += v);
        }
        Ok(dx)
    }
}
