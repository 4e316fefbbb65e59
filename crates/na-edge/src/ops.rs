//! The layers, on f32 activations with f32 or f16 weights borrowed from the
//! blob, writing only into caller-provided slices: 3×3 convolution,
//! LayerNorm, linear (with a per-output sink for bias, residual, layer
//! scale and GELU), exact GELU, token mean.
//!
//! Shapes are the caller's invariants (the plan computed them); these
//! functions are crate-internal.

use crate::config::LN_EPS;
use crate::format::TensorData;

/// Layout of a convolution's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InLayout {
    /// `[cin, H, W]` (the model's input image).
    Chw,
    /// `[H, W, cin]` (tokens × channels).
    Hwc,
}

/// Dot product with 8 partial sums (vectorises without `unsafe`).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Row `o` (`din` values) of a `[dout, din]` weight as an f32 slice:
/// borrowed for f32 weights, converted into `wrow` for f16.
#[inline]
fn weight_row<'a>(w: &'a TensorData<'_>, o: usize, din: usize, wrow: &'a mut [f32]) -> &'a [f32] {
    match w {
        TensorData::F32(v) => &v[o * din..][..din],
        TensorData::F16(_) | TensorData::I8 { .. } => {
            w.copy_into(o * din, &mut wrow[..din]);
            &wrow[..din]
        }
    }
}

/// A linear layer `y[r, o] = Σ_i x[row(r), i] · W[o, i] + b[o]` over `rows`
/// rows of `din` values, `W` `[dout, din]`; each result goes to
/// `sink(r, o, y)` (store, residual add, GELU …).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    x: &[f32],
    rows: usize,
    din: usize,
    row: impl Fn(usize) -> usize,
    w: &TensorData<'_>,
    b: Option<&TensorData<'_>>,
    dout: usize,
    wrow: &mut [f32],
    mut sink: impl FnMut(usize, usize, f32),
) {
    for o in 0..dout {
        let bias = b.map_or(0.0, |b| b.get(o));
        let wr = weight_row(w, o, din, wrow);
        for r in 0..rows {
            let xr = &x[row(r) * din..][..din];
            sink(r, o, dot(xr, wr) + bias);
        }
    }
}

/// A 3×3 convolution, padding 1, stride `stride`, PyTorch weight
/// `[cout, cin, 3, 3]`: input `[h, w]` with `cin` channels in `layout`,
/// output `y [ho, wo, cout]`. `wrow` holds `cin · 9` values (the weight row
/// reordered to `(ky, kx, cin)`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3x3(
    x: &[f32],
    layout: InLayout,
    [h, w, cin]: [usize; 3],
    stride: usize,
    wt: &TensorData<'_>,
    b: Option<&TensorData<'_>>,
    cout: usize,
    wrow: &mut [f32],
    y: &mut [f32],
) {
    let (ho, wo) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
    let kk = cin * 9;
    let wrow = &mut wrow[..kk];
    for o in 0..cout {
        for ci in 0..cin {
            for t in 0..9 {
                wrow[t * cin + ci] = wt.get((o * cin + ci) * 9 + t);
            }
        }
        let bias = b.map_or(0.0, |b| b.get(o));
        for oy in 0..ho {
            for ox in 0..wo {
                let mut acc = 0.0f32;
                for ky in 0..3 {
                    let iy = (oy * stride + ky).wrapping_sub(1);
                    if iy >= h {
                        continue;
                    }
                    for kx in 0..3 {
                        let ix = (ox * stride + kx).wrapping_sub(1);
                        if ix >= w {
                            continue;
                        }
                        let wr = &wrow[(ky * 3 + kx) * cin..][..cin];
                        acc += match layout {
                            InLayout::Hwc => dot(wr, &x[(iy * w + ix) * cin..][..cin]),
                            InLayout::Chw => wr
                                .iter()
                                .enumerate()
                                .map(|(ci, &wv)| wv * x[(ci * h + iy) * w + ix])
                                .sum(),
                        };
                    }
                }
                y[(oy * wo + ox) * cout + o] = acc + bias;
            }
        }
    }
}

/// LayerNorm of one row in place: `(x - mean) / sqrt(var + eps) · γ + β`,
/// biased variance (the std model's order of operations).
#[inline]
pub(crate) fn layer_norm_row(x: &mut [f32], g: &TensorData<'_>, b: &TensorData<'_>) {
    let c = x.len() as f32;
    let mean = x.iter().sum::<f32>() / c;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / c;
    let inv = 1.0 / libm::sqrtf(var + LN_EPS);
    for (i, v) in x.iter_mut().enumerate() {
        *v = (*v - mean) * inv * g.get(i) + b.get(i);
    }
}

/// LayerNorm of every `c`-wide row of `x` in place.
pub(crate) fn layer_norm(x: &mut [f32], c: usize, g: &TensorData<'_>, b: &TensorData<'_>) {
    for row in x.chunks_exact_mut(c) {
        layer_norm_row(row, g, b);
    }
}

/// Exact GELU: `x/2 · (1 + erf(x/√2))`.
#[inline]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * core::f32::consts::FRAC_1_SQRT_2))
}

/// Mean of the `c`-wide rows of `x` into `out [c]`.
pub(crate) fn mean_rows(x: &[f32], c: usize, out: &mut [f32]) {
    out.fill(0.0);
    let mut n = 0usize;
    for row in x.chunks_exact(c) {
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
        n += 1;
    }
    let n = n.max(1) as f32;
    out.iter_mut().for_each(|o| *o /= n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_known_values() {
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_3).abs() < 1e-6);
    }

    #[test]
    fn dot_handles_remainders() {
        let a: [f32; 11] = core::array::from_fn(|i| i as f32);
        let b = [1.0f32; 11];
        assert_eq!(dot(&a, &b), 55.0);
    }

    #[test]
    fn conv_layouts_agree() {
        // 2 input channels, 3×4 map, 3 output channels, stride 2.
        let (h, w, cin, cout) = (3, 4, 2, 3);
        let chw: [f32; 24] = core::array::from_fn(|i| (i as f32 * 0.37).sin());
        let mut hwc = [0.0f32; 24];
        for ci in 0..cin {
            for p in 0..h * w {
                hwc[p * cin + ci] = chw[ci * h * w + p];
            }
        }
        let wv: [f32; 54] = core::array::from_fn(|i| (i as f32 * 0.11).cos());
        let wt = TensorData::F32(&wv);
        let (mut a, mut b) = ([0.0f32; 12], [0.0f32; 12]);
        let mut wrow = [0.0f32; 18];
        conv3x3(
            &chw,
            InLayout::Chw,
            [h, w, cin],
            2,
            &wt,
            None,
            cout,
            &mut wrow,
            &mut a,
        );
        conv3x3(
            &hwc,
            InLayout::Hwc,
            [h, w, cin],
            2,
            &wt,
            None,
            cout,
            &mut wrow,
            &mut b,
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5);
        }
        // Output (0, 0), channel 0 by hand: taps (ky, kx) in 1..3 × 1..3.
        let mut want = 0.0;
        for ci in 0..cin {
            for ky in 1..3 {
                for kx in 1..3 {
                    want += wv[(ci * 3 + ky) * 3 + kx] * chw[ci * h * w + (ky - 1) * w + (kx - 1)];
                }
            }
        }
        assert!((a[0] - want).abs() < 1e-5);
    }
}
