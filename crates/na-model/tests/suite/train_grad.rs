//! Every backward of the op set ([`na_model::ops`]) against central
//! differences, and every forward against a naive independent implementation
//! written here (a loop nest or a formula, in f64).
//!
//! # Method
//! Each layer `y = f(x, θ)` is reduced to the scalar `L = Σ_i y_i r_i` with a
//! fixed random `r` (so `dL/dy = r`), accumulated in f64. For a sample of
//! coordinates `t` of each input and parameter tensor, the central
//! difference `(L(t + h) - L(t - h)) / (t⁺ - t⁻)` — divided by the step as
//! actually represented in f32, `t⁺ - t⁻`, not by `2h` — is compared with
//! the analytic gradient. The reported error of a tensor is
//! `max_t |fd_t - g_t| / max_t |g_t|` over its sampled coordinates.
//!
//! Parameters live in one flat buffer, as in the models: a test packs its
//! tensors into one ([`pack`]), the layer holds their ranges, the backward
//! adds the parameter gradients into a flat buffer of the same layout, and
//! the central differences perturb one coordinate of the packed buffer at a
//! time (within the range of the tensor being checked).
//!
//! A forward is checked against the naive implementation by
//! `max_i |y_i - want_i| / max(1, max_i |want_i|)`, bound **1e-5** (f32
//! rounding of sums of a few dozen O(1) terms; measured at most 2e-7), and
//! exactly for the moves without arithmetic (pad, crop, patch merging).
//!
//! # Bounds
//! - Layers linear in the perturbed tensor (linear, convolution, pad, crop,
//!   patch merging, mean, the residual add, LayerNorm's γ and β): the
//!   central difference is exact in exact arithmetic for any `h`, so a large
//!   step (`h = 0.5`) leaves only the f32 rounding of the forward,
//!   `~ 6e-8 · Σ|y_i r_i|` in `L`, about 1e-7 relative: bound **1e-5**
//!   (measured at most 7e-7).
//! - Smooth nonlinear layers (LayerNorm's input, GELU, cross-entropy, the
//!   linear layer with fused GELU): `h = 1e-2` makes the truncation error
//!   `h² |f'''| / 6 ≈ 2e-5` relative for O(1) derivatives, and the rounding
//!   `≈ 6e-8 · |L| / h` a few 1e-6 relative at these sizes: bound **5e-4**
//!   (measured at most 4e-5).
//! - Attention (alone, and composed with pad, the qkv projection and crop):
//!   the same, plus the fused f32 kernel's own rounding (online softmax,
//!   polynomial `exp`, FMA or not depending on the ISA): bound **1e-3**
//!   (measured at most 6e-5).
//!
//! Run with `--nocapture` to see the measured errors. Seeds are fixed.

use std::ops::Range;

use na_model::ops::act::{gelu, gelu1, gelu_backward};
use na_model::ops::layout::{
    crop_hw, mean_tokens, mean_tokens_backward, pad_hw, patch_merge, patch_merge_backward,
};
use na_model::ops::residual::{add_scaled, add_scaled_backward};
use na_model::ops::{Act, Attention, Bhw, Conv2d, CrossEntropy, LayerNorm, Linear};

/// SplitMix64, with Box-Muller normals.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
}

/// `Σ y_i r_i` in f64.
fn dot(y: &[f32], r: &[f32]) -> f64 {
    assert_eq!(y.len(), r.len());
    y.iter()
        .zip(r)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum()
}

/// Coordinates to check in `range`: all of a small tensor, else `max`
/// random ones.
fn sample(rng: &mut Rng, range: &Range<usize>, max: usize) -> Vec<usize> {
    if range.len() <= max {
        range.clone().collect()
    } else {
        (0..max)
            .map(|_| range.start + rng.below(range.len()))
            .collect()
    }
}

/// Central differences of `loss` with respect to the coordinates `range` of
/// the flat buffer `t` (an input, or the packed parameters), on sampled
/// coordinates, compared with `grad` (the same layout as `t`); returns the
/// error `max |fd - g| / max |g|`.
fn fd_error(
    rng: &mut Rng,
    t: &mut [f32],
    range: Range<usize>,
    grad: &[f32],
    h: f32,
    mut loss: impl FnMut(&[f32]) -> f64,
) -> f64 {
    assert_eq!(t.len(), grad.len());
    assert!(range.end <= t.len());
    let (mut worst, mut scale) = (0.0f64, 0.0f64);
    for i in sample(rng, &range, 48) {
        let x0 = t[i];
        let (xp, xm) = (x0 + h, x0 - h);
        t[i] = xp;
        let lp = loss(t);
        t[i] = xm;
        let lm = loss(t);
        t[i] = x0;
        let fd = (lp - lm) / f64::from(xp - xm);
        worst = worst.max((fd - f64::from(grad[i])).abs());
        scale = scale.max(f64::from(grad[i]).abs());
    }
    assert!(scale > 0.0, "all sampled gradients are zero");
    worst / scale
}

/// [`fd_error`] over the whole of `t` (an input tensor).
fn fd_all(
    rng: &mut Rng,
    t: &mut [f32],
    grad: &[f32],
    h: f32,
    loss: impl FnMut(&[f32]) -> f64,
) -> f64 {
    let n = t.len();
    fd_error(rng, t, 0..n, grad, h, loss)
}

/// Checks and reports one tensor's error.
fn expect(layer: &str, tensor: &str, err: f64, bound: f64) {
    eprintln!("{layer:<40} {tensor:<6} rel. error {err:.2e} (bound {bound:.0e})");
    assert!(
        err <= bound,
        "{layer}: d{tensor} error {err:e} above {bound:e}"
    );
}

/// Checks and reports a forward against its naive implementation:
/// `max |y - want| / max(1, max |want|)`, bound [`FWD_BOUND`].
fn expect_fwd(layer: &str, y: &[f32], want: &[f64]) {
    expect_fwd_within(layer, y, want, FWD_BOUND);
}

/// [`expect_fwd`] with another bound (0: moves without arithmetic).
fn expect_fwd_within(layer: &str, y: &[f32], want: &[f64], bound: f64) {
    assert_eq!(y.len(), want.len(), "{layer}: output size");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let err = y
        .iter()
        .zip(want)
        .map(|(&a, b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max)
        / scale;
    eprintln!(
        "{layer:<40} {:<6} rel. error {err:.2e} (bound {bound:.0e})",
        "fwd"
    );
    assert!(
        err <= bound,
        "{layer}: forward error {err:e} above {bound:e}"
    );
}

/// Packs tensors into one flat parameter buffer; their ranges in it.
fn pack(parts: &[&[f32]]) -> (Vec<f32>, Vec<Range<usize>>) {
    let mut p = Vec::new();
    let mut ranges = Vec::new();
    for t in parts {
        ranges.push(p.len()..p.len() + t.len());
        p.extend_from_slice(t);
    }
    (p, ranges)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const LINEAR_H: f32 = 0.5;
const LINEAR_BOUND: f64 = 1e-5;
const SMOOTH_H: f32 = 1e-2;
const SMOOTH_BOUND: f64 = 5e-4;
const ATTN_BOUND: f64 = 1e-3;
const FWD_BOUND: f64 = 1e-5;

/// `Linear::forward` into a new vector.
fn linear_fwd(l: &Linear, p: &[f32], x: &[f32], act: Act) -> Vec<f32> {
    let mut y = vec![f32::NAN; x.len() / l.din * l.dout];
    l.forward(p, x, act, &mut y, None).unwrap();
    y
}

/// `y = x Wᵀ + b` as a triple loop in f64.
fn naive_linear(x: &[f32], w: &[f32], b: Option<&[f32]>, din: usize, dout: usize) -> Vec<f64> {
    let rows = x.len() / din;
    let mut y = vec![0.0f64; rows * dout];
    for i in 0..rows {
        for j in 0..dout {
            let mut acc = b.map_or(0.0, |b| f64::from(b[j]));
            for t in 0..din {
                acc += f64::from(x[i * din + t]) * f64::from(w[j * din + t]);
            }
            y[i * dout + j] = acc;
        }
    }
    y
}

#[test]
fn linear() {
    let mut rng = Rng(1);
    let (rows, din, dout) = (5, 7, 6);
    let (mut x, w, b) = (
        rng.vec(rows * din, 1.0),
        rng.vec(dout * din, 0.5),
        rng.vec(dout, 0.5),
    );
    let r = rng.vec(rows * dout, 1.0);
    let (mut p, s) = pack(&[&w, &b]);
    let l = Linear {
        din,
        dout,
        w: s[0].clone(),
        b: Some(s[1].clone()),
    };
    let name = "linear 5x7 -> 6";
    let y = linear_fwd(&l, &p, &x, Act::None);
    expect_fwd(name, &y, &naive_linear(&x, &w, Some(&b), din, dout));
    let mut grads = vec![0.0; p.len()];
    let mut dx = vec![f32::NAN; x.len()];
    l.backward(&p, &x, &r, &mut grads, Some(&mut dx)).unwrap();
    let p0 = p.clone();
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&linear_fwd(&l, &p0, x, Act::None), &r)
    });
    expect(name, "x", e, LINEAR_BOUND);
    let x0 = x.clone();
    for (t, range) in ["W", "b"].into_iter().zip(&s) {
        let e = fd_error(&mut rng, &mut p, range.clone(), &grads, LINEAR_H, |p| {
            dot(&linear_fwd(&l, p, &x0, Act::None), &r)
        });
        expect(name, t, e, LINEAR_BOUND);
    }
    // Accumulation: a second backward (without dx) doubles the parameter
    // gradients.
    let mut g2 = grads.clone();
    l.backward(&p0, &x0, &r, &mut g2, None).unwrap();
    let doubled: Vec<f32> = grads.iter().map(|v| 2.0 * v).collect();
    assert!(max_diff(&g2, &doubled) < 1e-5);
    // Shape errors are errors.
    let mut y8 = vec![0.0; 8];
    let mut yf = vec![0.0; rows * dout];
    assert!(l.forward(&p0, &x0[..8], Act::None, &mut y8, None).is_err());
    assert!(l.forward(&p0[..40], &x0, Act::None, &mut yf, None).is_err());
    assert!(l.forward(&p0, &x0, Act::None, &mut y8, None).is_err());
    assert!(l.backward(&p0, &x0, &r, &mut [0.0; 40], None).is_err());
}

/// The fused epilogues of one [`Linear`] on `rows` rows, on a pool of
/// `threads` threads: `Act::Gelu` is the layer then the GELU op (its `pre`
/// the plain output), `forward_residual` is the manual residual add
/// `resid + γ ⊙ (x Wᵀ + b)` (its `tmp` the plain output), without and with γ.
fn check_epilogues(rng: &mut Rng, rows: usize, bias: bool, threads: usize) {
    let (din, dout) = (7, 6);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let x = rng.vec(rows * din, 1.0);
        let w = rng.vec(dout * din, 0.5);
        let b = rng.vec(dout, 0.5);
        let gamma = rng.vec(dout, 1.0);
        let resid0 = rng.vec(rows * dout, 1.0);
        let (p, s) = pack(&[&w, &b, &gamma]);
        let l = Linear {
            din,
            dout,
            w: s[0].clone(),
            b: bias.then(|| s[1].clone()),
        };
        let name = format!(
            "linear {rows}x{din} -> {dout}{}, {threads} thr.",
            if bias { " +b" } else { "" }
        );
        let y = linear_fwd(&l, &p, &x, Act::None);
        expect_fwd(
            &name,
            &y,
            &naive_linear(&x, &w, bias.then_some(b.as_slice()), din, dout),
        );
        // `pre` with no activation is a copy of the output.
        let (mut y2, mut pre) = (vec![f32::NAN; y.len()], vec![f32::NAN; y.len()]);
        l.forward(&p, &x, Act::None, &mut y2, Some(&mut pre))
            .unwrap();
        assert_eq!((&y2, &pre), (&y, &y), "{name}: Act::None with pre");
        // Fused GELU = the layer, then the GELU op; elementwise `gelu1`.
        let mut want = y.clone();
        gelu(&mut want);
        assert!(want.iter().zip(&y).all(|(&g, &v)| g == gelu1(v)));
        let (mut yg, mut pre) = (vec![f32::NAN; y.len()], vec![f32::NAN; y.len()]);
        l.forward(&p, &x, Act::Gelu, &mut yg, Some(&mut pre))
            .unwrap();
        assert_eq!(pre, y, "{name}: Act::Gelu's pre-activation");
        assert_eq!(yg, want, "{name}: Act::Gelu with pre");
        assert_eq!(
            linear_fwd(&l, &p, &x, Act::Gelu),
            want,
            "{name}: Act::Gelu without pre"
        );
        // The residual epilogue, without and with γ.
        for g in [None, Some(&s[2])] {
            let mut resid = resid0.clone();
            let mut tmp = vec![f32::NAN; y.len()];
            l.forward_residual(&p, &x, g, &mut resid, &mut tmp).unwrap();
            assert_eq!(tmp, y, "{name}: forward_residual's product");
            let manual: Vec<f32> = resid0
                .iter()
                .zip(&y)
                .enumerate()
                .map(|(i, (&r, &v))| match g {
                    None => r + v,
                    Some(_) => r + gamma[i % dout] * v,
                })
                .collect();
            assert_eq!(resid, manual, "{name}: forward_residual, γ {:?}", g);
        }
        let mut short = vec![0.0; dout];
        assert!(l
            .forward_residual(&p, &x, Some(&s[2]), &mut short, &mut vec![0.0; y.len()])
            .is_err());
        assert!(l
            .forward_residual(&p, &x, Some(&(0..dout - 1)), &mut resid0.clone(), &mut y2)
            .is_err());
    });
}

/// The fused epilogues of [`Linear`] (see [`check_epilogues`]), with and
/// without bias, on a map small enough for one product and on one cut into
/// row blocks (with 3 threads), then the gradients of both compositions,
/// built from `gelu_backward`, `add_scaled_backward` and the linear
/// backward.
#[test]
fn linear_fused_gelu_and_residual() {
    let mut rng = Rng(17);
    for threads in [1, 3] {
        for rows in [5, 300] {
            for bias in [true, false] {
                check_epilogues(&mut rng, rows, bias, threads);
            }
        }
    }
    let (din, dout) = (7, 6);

    // Gradients of `GELU(x Wᵀ + b)`: gelu_backward on the kept
    // pre-activation, then the linear backward.
    let (rows, name) = (5, "linear 5x7 -> 6, fused GELU");
    let mut x = rng.vec(rows * din, 1.0);
    let (w, b) = (rng.vec(dout * din, 0.5), rng.vec(dout, 0.5));
    let r = rng.vec(rows * dout, 1.0);
    let (mut p, s) = pack(&[&w, &b]);
    let l = Linear {
        din,
        dout,
        w: s[0].clone(),
        b: Some(s[1].clone()),
    };
    let (mut y, mut pre) = (vec![0.0; rows * dout], vec![0.0; rows * dout]);
    l.forward(&p, &x, Act::Gelu, &mut y, Some(&mut pre))
        .unwrap();
    let mut d = r.clone();
    gelu_backward(&pre, &mut d).unwrap();
    let mut grads = vec![0.0; p.len()];
    let mut dx = vec![0.0; x.len()];
    l.backward(&p, &x, &d, &mut grads, Some(&mut dx)).unwrap();
    let p0 = p.clone();
    let e = fd_all(&mut rng, &mut x, &dx, SMOOTH_H, |x| {
        dot(&linear_fwd(&l, &p0, x, Act::Gelu), &r)
    });
    expect(name, "x", e, SMOOTH_BOUND);
    let x0 = x.clone();
    for (t, range) in ["W", "b"].into_iter().zip(&s) {
        let e = fd_error(&mut rng, &mut p, range.clone(), &grads, SMOOTH_H, |p| {
            dot(&linear_fwd(&l, p, &x0, Act::Gelu), &r)
        });
        expect(name, t, e, SMOOTH_BOUND);
    }

    // Gradients of `resid + γ ⊙ (x Wᵀ + b)`: add_scaled_backward on the kept
    // product, then the linear backward (dresid is `r` itself).
    let name = "resid + γ ⊙ linear 5x7 -> 6";
    let mut x = rng.vec(rows * din, 1.0);
    let w = rng.vec(dout * din, 0.5);
    let b = rng.vec(dout, 0.5);
    let gamma = rng.vec(dout, 1.0);
    let resid0 = rng.vec(rows * dout, 1.0);
    let r = rng.vec(rows * dout, 1.0);
    let (mut p, s) = pack(&[&w, &b, &gamma]);
    let l = Linear {
        din,
        dout,
        w: s[0].clone(),
        b: Some(s[1].clone()),
    };
    let fwd = |p: &[f32], x: &[f32]| {
        let mut resid = resid0.clone();
        let mut tmp = vec![0.0; resid.len()];
        l.forward_residual(p, x, Some(&s[2]), &mut resid, &mut tmp)
            .unwrap();
        (resid, tmp)
    };
    let (_, tmp) = fwd(&p, &x);
    let mut grads = vec![0.0; p.len()];
    let dy = add_scaled_backward(
        &tmp,
        &r,
        Some(&p[s[2].clone()]),
        Some(&mut grads[s[2].clone()]),
        dout,
    )
    .unwrap();
    let mut dx = vec![0.0; x.len()];
    l.backward(&p, &x, &dy, &mut grads, Some(&mut dx)).unwrap();
    let p0 = p.clone();
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| dot(&fwd(&p0, x).0, &r));
    expect(name, "x", e, LINEAR_BOUND);
    let x0 = x.clone();
    for (t, range) in ["W", "b", "γ"].into_iter().zip(&s) {
        let e = fd_error(&mut rng, &mut p, range.clone(), &grads, LINEAR_H, |p| {
            dot(&fwd(p, &x0).0, &r)
        });
        expect(name, t, e, LINEAR_BOUND);
    }
}

/// A [`Conv2d`] shape with no parameter slots yet.
fn conv(cin: usize, cout: usize, kh: usize, kw: usize, stride: usize, pad: usize) -> Conv2d {
    Conv2d {
        cin,
        cout,
        kh,
        kw,
        stride,
        pad,
        w: 0..0,
        b: None,
    }
}

/// `Conv2d::forward` into a new vector.
fn conv_fwd(c: &Conv2d, p: &[f32], x: &[f32], dims: Bhw) -> Vec<f32> {
    let od = c.out_dims(dims).unwrap();
    let rows = od[0] * od[1] * od[2];
    let mut y = vec![f32::NAN; rows * c.cout];
    let mut cols = vec![f32::NAN; rows * c.kk()];
    assert_eq!(c.forward(p, x, dims, &mut y, &mut cols).unwrap(), od);
    y
}

/// The direct convolution loop in f64 (channels-last input and output,
/// PyTorch weight layout, zero padding).
fn naive_conv(c: &Conv2d, x: &[f32], [bn, h, wd]: Bhw, w: &[f32], b: Option<&[f32]>) -> Vec<f64> {
    let ho = (h + 2 * c.pad - c.kh) / c.stride + 1;
    let wo = (wd + 2 * c.pad - c.kw) / c.stride + 1;
    let mut y = vec![0.0f64; bn * ho * wo * c.cout];
    for bi in 0..bn {
        for oy in 0..ho {
            for ox in 0..wo {
                for co in 0..c.cout {
                    let mut acc = b.map_or(0.0, |b| f64::from(b[co]));
                    for ci in 0..c.cin {
                        for ky in 0..c.kh {
                            for kx in 0..c.kw {
                                let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                                let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                                    continue;
                                }
                                let (iy, ix) = (iy as usize, ix as usize);
                                let xv = x[((bi * h + iy) * wd + ix) * c.cin + ci];
                                let wv = w[((co * c.cin + ci) * c.kh + ky) * c.kw + kx];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    y[((bi * ho + oy) * wo + ox) * c.cout + co] = acc;
                }
            }
        }
    }
    y
}

fn check_conv(seed: u64, conv: Conv2d, dims: Bhw, bias: bool) {
    let mut rng = Rng(seed);
    let [bn, h, wd] = dims;
    let mut x = rng.vec(bn * h * wd * conv.cin, 1.0);
    let w = rng.vec(conv.cout * conv.cin * conv.kh * conv.kw, 0.3);
    let b = rng.vec(conv.cout, 0.3);
    let (mut p, s) = if bias { pack(&[&w, &b]) } else { pack(&[&w]) };
    let conv = Conv2d {
        w: s[0].clone(),
        b: bias.then(|| s[1].clone()),
        ..conv
    };
    let name = format!(
        "conv {}x{} s{} p{} on {h}x{wd}x{}{}",
        conv.kh,
        conv.kw,
        conv.stride,
        conv.pad,
        conv.cin,
        if bias { " +b" } else { "" }
    );
    let y = conv_fwd(&conv, &p, &x, dims);
    expect_fwd(
        &name,
        &y,
        &naive_conv(&conv, &x, dims, &w, bias.then_some(b.as_slice())),
    );
    let r = rng.vec(y.len(), 1.0);
    let mut grads = vec![0.0; p.len()];
    let dx = conv
        .backward(&p, &x, dims, &r, &mut grads, true)
        .unwrap()
        .unwrap();
    let p0 = p.clone();
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&conv_fwd(&conv, &p0, x, dims), &r)
    });
    expect(&name, "x", e, LINEAR_BOUND);
    let x0 = x.clone();
    for (t, range) in ["W", "b"].into_iter().zip(&s) {
        let e = fd_error(&mut rng, &mut p, range.clone(), &grads, LINEAR_H, |p| {
            dot(&conv_fwd(&conv, p, &x0, dims), &r)
        });
        expect(&name, t, e, LINEAR_BOUND);
    }
    // Accumulation, and no dx when it is not needed.
    let mut g2 = grads.clone();
    let none = conv.backward(&p0, &x0, dims, &r, &mut g2, false).unwrap();
    assert!(none.is_none());
    let doubled: Vec<f32> = grads.iter().map(|v| 2.0 * v).collect();
    assert!(max_diff(&g2, &doubled) < 1e-5);
}

#[test]
fn conv2d() {
    let c = |cin, cout, k, stride, pad| conv(cin, cout, k, k, stride, pad);
    // The NAT stem and downsampler: 3x3, stride 2, padding 1, odd sizes.
    check_conv(2, c(3, 4, 3, 2, 1), [2, 7, 6], true);
    check_conv(3, c(2, 5, 3, 2, 1), [1, 5, 5], false);
    // A patch embedding: 4x4 stride 4 on a map padded to a multiple.
    check_conv(4, c(1, 3, 4, 4, 0), [2, 8, 8], true);
    // Stride 1, padding 1; a non-square kernel.
    check_conv(5, c(3, 2, 3, 1, 1), [1, 4, 5], true);
    check_conv(6, conv(2, 3, 2, 3, 2, 1), [1, 5, 6], true);
    assert!(c(3, 4, 3, 2, 0).out_dims([1, 2, 2]).is_err());
    // Slots that do not fit the parameters are errors.
    let bad = Conv2d {
        w: 0..3 * 4 * 9,
        ..c(3, 4, 3, 2, 1)
    };
    let (mut y, mut cols) = (vec![0.0; 2 * 4 * 4 * 4], vec![0.0; 2 * 4 * 4 * 27]);
    let x = vec![0.0; 2 * 7 * 6 * 3];
    assert!(bad
        .forward(&[0.0; 100][..], &x, [2, 7, 6], &mut y, &mut cols)
        .is_err());
}

/// `LayerNorm::forward` into new vectors `(y, stats)`.
fn ln_fwd(l: &LayerNorm, p: &[f32], x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![f32::NAN; x.len()];
    let mut st = vec![f32::NAN; 2 * x.len() / l.c];
    l.forward(p, x, &mut y, Some(&mut st)).unwrap();
    (y, st)
}

#[test]
fn layer_norm() {
    let mut rng = Rng(7);
    let (rows, c) = (6, 8);
    let eps = 1e-5;
    let mut x: Vec<f32> = rng.vec(rows * c, 1.5).iter().map(|v| v + 0.7).collect();
    let (g, b) = (
        rng.vec(c, 0.5).iter().map(|v| v + 1.0).collect::<Vec<_>>(),
        rng.vec(c, 0.5),
    );
    let (mut p, s) = pack(&[&g, &b]);
    let ln = LayerNorm {
        c,
        eps,
        w: s[0].clone(),
        b: s[1].clone(),
    };
    let name = "layer_norm 6x8";
    let (y, st) = ln_fwd(&ln, &p, &x);
    // The formula in f64: biased variance, eps inside the root.
    let (mut want, mut want_st) = (Vec::new(), Vec::new());
    for row in x.chunks(c) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / c as f64;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / c as f64;
        let rstd = 1.0 / (var + f64::from(eps)).sqrt();
        want_st.extend([mean, rstd]);
        for ((&v, &gj), &bj) in row.iter().zip(&g).zip(&b) {
            want.push((f64::from(v) - mean) * rstd * f64::from(gj) + f64::from(bj));
        }
    }
    expect_fwd(name, &y, &want);
    expect_fwd("layer_norm 6x8 (mean, rstd)", &st, &want_st);
    // Without statistics: the same output.
    let mut y2 = vec![f32::NAN; y.len()];
    ln.forward(&p, &x, &mut y2, None).unwrap();
    assert_eq!(y2, y);
    let r = rng.vec(y.len(), 1.0);
    let mut grads = vec![0.0; p.len()];
    let dx = ln.backward(&p, &x, &st, &r, &mut grads).unwrap();
    let p0 = p.clone();
    let e = fd_all(&mut rng, &mut x, &dx, SMOOTH_H, |x| {
        dot(&ln_fwd(&ln, &p0, x).0, &r)
    });
    expect(name, "x", e, SMOOTH_BOUND);
    let x0 = x.clone();
    for (t, range) in ["γ", "β"].into_iter().zip(&s) {
        let e = fd_error(&mut rng, &mut p, range.clone(), &grads, LINEAR_H, |p| {
            dot(&ln_fwd(&ln, p, &x0).0, &r)
        });
        expect(name, t, e, LINEAR_BOUND);
    }
    assert!(ln.forward(&p0[..12], &x0, &mut y2, None).is_err());
    assert!(ln.forward(&p0, &x0, &mut y2, Some(&mut [0.0; 6])).is_err());
    assert!(ln.backward(&p0, &x0, &st[..6], &r, &mut grads).is_err());
}

#[test]
fn gelu_exact() {
    let mut rng = Rng(8);
    // Spread over [-4, 4], including the erf approximation's switch at
    // |x|/√2 = 0.75.
    let mut x: Vec<f32> = (0..96)
        .map(|i| -4.0 + 8.0 * i as f32 / 95.0 + 0.01 * rng.normal())
        .collect();
    let gelu_vec = |x: &[f32]| {
        let mut y = x.to_vec();
        gelu(&mut y);
        y
    };
    let y = gelu_vec(&x);
    let (sqrt2, inv_sqrt_2pi) = (
        std::f64::consts::SQRT_2,
        0.5 * std::f64::consts::FRAC_2_SQRT_PI / std::f64::consts::SQRT_2,
    );
    // Against the exact function (and derivative) in f64; the vectorised
    // slice equals the scalar `gelu1`.
    let mut ones = vec![1.0; x.len()];
    gelu_backward(&x, &mut ones).unwrap();
    for ((&v, &g), &d) in x.iter().zip(&y).zip(&ones) {
        assert_eq!(g, gelu1(v), "gelu({v}) differs from gelu1");
        let v = f64::from(v);
        let cdf = 0.5 * (1.0 + libm::erf(v / sqrt2));
        let exact = v * cdf;
        assert!((exact - f64::from(g)).abs() < 1e-6, "gelu({v}) = {g}");
        let exact_d = cdf + v * inv_sqrt_2pi * (-0.5 * v * v).exp();
        assert!(
            (exact_d - f64::from(d)).abs() < 1e-6,
            "gelu'({v}) = {d}, not {exact_d}"
        );
    }
    let r = rng.vec(x.len(), 1.0);
    let mut dx = r.clone();
    gelu_backward(&x, &mut dx).unwrap();
    let e = fd_all(&mut rng, &mut x, &dx, SMOOTH_H, |x| dot(&gelu_vec(x), &r));
    expect("gelu (erf) on [-4, 4]", "x", e, SMOOTH_BOUND);
    assert!(gelu_backward(&x[..3], &mut dx).is_err());
}

#[test]
fn residual_with_layer_scale() {
    let mut rng = Rng(9);
    let c = 5;
    let (x, mut y, mut g) = (rng.vec(4 * c, 1.0), rng.vec(4 * c, 1.0), rng.vec(c, 1.0));
    let f = |y: &[f32], g: &[f32]| {
        let mut o = x.clone();
        add_scaled(&mut o, y, Some(g), c).unwrap();
        o
    };
    // The manual add, element by element.
    let want: Vec<f32> = (0..x.len()).map(|i| x[i] + g[i % c] * y[i]).collect();
    assert_eq!(f(&y, &g), want, "x + γ ⊙ y");
    let mut plain = x.clone();
    add_scaled(&mut plain, &y, None, c).unwrap();
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    assert_eq!(plain, want, "x + y");
    let r = rng.vec(x.len(), 1.0);
    let mut dg = vec![0.0; c];
    let dy = add_scaled_backward(&y, &r, Some(&g), Some(&mut dg), c).unwrap();
    let g0 = g.clone();
    let e = fd_all(&mut rng, &mut y, &dy, LINEAR_H, |y| dot(&f(y, &g0), &r));
    expect("x + γ ⊙ y", "y", e, LINEAR_BOUND);
    let y0 = y.clone();
    let e = fd_all(&mut rng, &mut g, &dg, LINEAR_H, |g| dot(&f(&y0, g), &r));
    expect("x + γ ⊙ y", "γ", e, LINEAR_BOUND);
    assert_eq!(
        add_scaled_backward(&y0, &r, None, None, c).unwrap(),
        r,
        "without γ the gradient passes through"
    );
    assert!(add_scaled_backward(&y0, &r, Some(&g0), None, c).is_err());
    assert!(add_scaled(&mut x.clone(), &y0, Some(&g0[..4]), c).is_err());
}

#[test]
fn pad_crop_merge_mean() {
    let mut rng = Rng(10);
    let (dims, c) = ([2, 5, 3], 3);
    let n = 2 * 5 * 3 * c;
    // Element `(b, y, x, ch)` of a `[B, h, w, C]` map.
    let at = |t: &[f32], [h, w]: [usize; 2], b: usize, y: usize, x: usize, ch: usize| {
        t[((b * h + y) * w + x) * c + ch]
    };
    let pad = |x: &[f32], [b, h, w]: Bhw, hw: [usize; 2]| {
        let mut o = vec![f32::NAN; b * hw[0] * hw[1] * c];
        pad_hw(x, [b, h, w], c, hw, &mut o).unwrap();
        o
    };
    let crop = |x: &[f32], [b, h, w]: Bhw, hw: [usize; 2]| {
        let mut o = vec![f32::NAN; b * hw[0] * hw[1] * c];
        crop_hw(x, [b, h, w], c, hw, &mut o).unwrap();
        o
    };

    let mut x = rng.vec(n, 1.0);
    let p = pad(&x, dims, [7, 6]);
    let mut want = Vec::new();
    for b in 0..2 {
        for yy in 0..7 {
            for xx in 0..6 {
                for ch in 0..c {
                    want.push(if yy < 5 && xx < 3 {
                        f64::from(at(&x, [5, 3], b, yy, xx, ch))
                    } else {
                        0.0
                    });
                }
            }
        }
    }
    expect_fwd_within("pad 5x3 -> 7x6", &p, &want, 0.0);
    let r = rng.vec(p.len(), 1.0);
    let dx = crop(&r, [2, 7, 6], [5, 3]);
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&pad(x, dims, [7, 6]), &r)
    });
    expect("pad 5x3 -> 7x6", "x", e, LINEAR_BOUND);

    let cr = crop(&x, dims, [4, 2]);
    let mut want = Vec::new();
    for b in 0..2 {
        for yy in 0..4 {
            for xx in 0..2 {
                for ch in 0..c {
                    want.push(f64::from(at(&x, [5, 3], b, yy, xx, ch)));
                }
            }
        }
    }
    expect_fwd_within("crop 5x3 -> 4x2", &cr, &want, 0.0);
    let r = rng.vec(cr.len(), 1.0);
    let dx = pad(&r, [2, 4, 2], [5, 3]);
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&crop(x, dims, [4, 2]), &r)
    });
    expect("crop 5x3 -> 4x2", "x", e, LINEAR_BOUND);

    let merge = |x: &[f32]| {
        let mut o = vec![f32::NAN; 2 * 3 * 2 * 4 * c];
        let od = patch_merge(x, dims, c, &mut o).unwrap();
        (o, od)
    };
    let (m, od) = merge(&x);
    assert_eq!(od, [2, 3, 2]);
    // Swin's order: x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
    // x[1::2, 1::2] (rows, columns), zero past the odd edge.
    let mut want = Vec::new();
    for b in 0..2 {
        for oy in 0..3 {
            for ox in 0..2 {
                for (dy, dx) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let (yy, xx) = (2 * oy + dy, 2 * ox + dx);
                    for ch in 0..c {
                        want.push(if yy < 5 && xx < 3 {
                            f64::from(at(&x, [5, 3], b, yy, xx, ch))
                        } else {
                            0.0
                        });
                    }
                }
            }
        }
    }
    expect_fwd_within("patch merge 5x3 (odd)", &m, &want, 0.0);
    let r = rng.vec(m.len(), 1.0);
    let dx = patch_merge_backward(&r, dims, c).unwrap();
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| dot(&merge(x).0, &r));
    expect("patch merge 5x3 (odd)", "x", e, LINEAR_BOUND);

    let mean = |x: &[f32]| {
        let mut o = vec![f32::NAN; 2 * c];
        mean_tokens(x, 2, c, &mut o).unwrap();
        o
    };
    let mt = mean(&x);
    let want: Vec<f64> = (0..2 * c)
        .map(|i| {
            let (b, ch) = (i / c, i % c);
            (0..15)
                .map(|t| f64::from(x[(b * 15 + t) * c + ch]))
                .sum::<f64>()
                / 15.0
        })
        .collect();
    expect_fwd("mean over 15 tokens", &mt, &want);
    let r = rng.vec(mt.len(), 1.0);
    let dx = mean_tokens_backward(&r, 2, 15, c).unwrap();
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| dot(&mean(x), &r));
    expect("mean over 15 tokens", "x", e, LINEAR_BOUND);

    // Shape errors.
    let mut o = vec![0.0; n];
    assert!(pad_hw(&x, dims, c, [4, 6], &mut o).is_err(), "pad below");
    assert!(crop_hw(&x, dims, c, [6, 3], &mut o).is_err(), "crop above");
    assert!(patch_merge(&x, dims, c, &mut o).is_err(), "merge output");
    assert!(mean_tokens(&x[..n - 1], 2, c, &mut o[..2 * c]).is_err());
}

/// `Attention::forward` into new vectors `(out, lse)`.
fn na_fwd(a: &Attention, p: &[f32], qkv: &[f32], dims: Bhw) -> (Vec<f32>, Vec<f32>) {
    let n = dims[0] * dims[1] * dims[2];
    let c = qkv.len() / (3 * n);
    let mut out = vec![f32::NAN; n * c];
    let mut lse = vec![f32::NAN; n * a.heads];
    let mut scratch = vec![f32::NAN; 3 * n * c];
    a.forward(p, qkv, dims, &mut out, Some(&mut lse), &mut scratch)
        .unwrap();
    (out, lse)
}

/// The keys of query `i` on an axis of length `len` (NATTEN's window, odd
/// kernel): the query's dilation group `i mod d`, in which the `k` keys are
/// centred on the query and shifted (not shrunk) to stay inside the group.
fn window(i: usize, len: usize, k: usize, d: usize) -> Vec<usize> {
    assert!(k % 2 == 1, "this oracle only knows odd kernels");
    let g = i % d;
    let group_len = len / d + usize::from(g < len % d);
    let start = (i / d).saturating_sub(k / 2).min(group_len - k);
    (start..start + k).map(|t| t * d + g).collect()
}

/// Neighborhood attention written out in f64: `qkv [B, H, W, 3C]`, head `h`
/// on channels `h·hd .. (h+1)·hd` of q, k and v, logits `q·k / √hd +
/// rpb[h, k-1 + (ky-qy)/d, k-1 + (kx-qx)/d]`, softmax over the `k²`
/// neighbours. Returns `out [B, H, W, C]` and `lse [B, H, W, heads]` (the
/// natural log-sum-exp of the logits).
fn naive_attention(a: &Attention, qkv: &[f32], [b, h, w]: Bhw, rpb: &[f32]) -> [Vec<f64>; 2] {
    let c = qkv.len() / (3 * b * h * w);
    let (k, d, hd) = (a.kernel, a.dilation, c / a.heads);
    let rl = 2 * k - 1;
    let scale = 1.0 / (hd as f64).sqrt();
    let tok = |bi: usize, y: usize, x: usize| &qkv[((bi * h + y) * w + x) * 3 * c..][..3 * c];
    let (mut out, mut lse) = (
        vec![0.0f64; b * h * w * c],
        vec![0.0f64; b * h * w * a.heads],
    );
    for bi in 0..b {
        for qy in 0..h {
            for qx in 0..w {
                let q = tok(bi, qy, qx);
                let row = (bi * h + qy) * w + qx;
                for head in 0..a.heads {
                    let ch = head * hd..(head + 1) * hd;
                    let mut logits = Vec::new();
                    for &ky in &window(qy, h, k, d) {
                        for &kx in &window(qx, w, k, d) {
                            let key = tok(bi, ky, kx);
                            let s: f64 = ch
                                .clone()
                                .map(|j| f64::from(q[j]) * f64::from(key[c + j]))
                                .sum();
                            let by = (k - 1 + ky / d) - qy / d;
                            let bx = (k - 1 + kx / d) - qx / d;
                            let bias = f64::from(rpb[(head * rl + by) * rl + bx]);
                            logits.push((s * scale + bias, key));
                        }
                    }
                    let m = logits.iter().map(|l| l.0).fold(f64::MIN, f64::max);
                    let l = m + logits.iter().map(|l| (l.0 - m).exp()).sum::<f64>().ln();
                    lse[row * a.heads + head] = l;
                    for (s, key) in &logits {
                        let pr = (s - l).exp();
                        for j in ch.clone() {
                            out[row * c + j] += pr * f64::from(key[2 * c + j]);
                        }
                    }
                }
            }
        }
    }
    [out, lse]
}

/// An [`Attention`] shape with no bias slot yet.
fn na(heads: usize, kernel: usize, dilation: usize) -> Attention {
    Attention {
        heads,
        kernel,
        dilation,
        rpb: 0..0,
    }
}

fn check_attention(seed: u64, na: Attention, dims: Bhw, c: usize) {
    let mut rng = Rng(seed);
    let n = dims[0] * dims[1] * dims[2];
    let mut qkv = rng.vec(n * 3 * c, 1.0);
    let rl = na.heads * (2 * na.kernel - 1) * (2 * na.kernel - 1);
    let rpb = rng.vec(rl, 0.5);
    let (mut p, s) = pack(&[&rpb]);
    let na = Attention {
        rpb: s[0].clone(),
        ..na
    };
    let name = format!(
        "NA k{} d{} {}h on {}x{}x{c}",
        na.kernel, na.dilation, na.heads, dims[1], dims[2]
    );
    let (out, lse) = na_fwd(&na, &p, &qkv, dims);
    let [want, want_lse] = naive_attention(&na, &qkv, dims, &rpb);
    expect_fwd(&name, &out, &want);
    expect_fwd(&format!("{name} (lse)"), &lse, &want_lse);
    let r = rng.vec(out.len(), 1.0);
    let mut grads = vec![0.0; p.len()];
    let dqkv = na
        .backward(&p, &qkv, dims, &out, &lse, &r, &mut grads)
        .unwrap();
    let p0 = p.clone();
    let e = fd_all(&mut rng, &mut qkv, &dqkv, SMOOTH_H, |q| {
        dot(&na_fwd(&na, &p0, q, dims).0, &r)
    });
    expect(&name, "qkv", e, ATTN_BOUND);
    let qkv0 = qkv.clone();
    let e = fd_error(&mut rng, &mut p, s[0].clone(), &grads, SMOOTH_H, |p| {
        dot(&na_fwd(&na, p, &qkv0, dims).0, &r)
    });
    expect(&name, "rpb", e, ATTN_BOUND);
}

#[test]
fn neighborhood_attention() {
    check_attention(11, na(2, 3, 1), [2, 5, 6], 8);
    check_attention(12, na(2, 3, 2), [1, 7, 9], 8);
    check_attention(13, na(1, 5, 1), [1, 6, 5], 4);
    assert!(
        na(3, 3, 1).problem([1, 5, 5], 8).is_err(),
        "8 channels, 3 heads"
    );
    assert!(na(2, 3, 2).problem([1, 5, 5], 8).is_err(), "map below k·d");
    // A bias slot outside the parameters is an error, not a panic.
    let bad = Attention {
        rpb: 0..50,
        ..na(2, 3, 1)
    };
    let qkv = vec![0.0; 25 * 24];
    let (mut o, mut s) = (vec![0.0; 25 * 8], vec![0.0; 25 * 24]);
    assert!(bad
        .forward(&[0.0; 10][..], &qkv, [1, 5, 5], &mut o, None, &mut s)
        .is_err());
}

/// The models' padded block: `pad(y) → qkv linear → NA → crop` on a map
/// smaller than `kernel × dilation`, composed from the layers' backwards.
#[test]
fn attention_on_a_map_padded_to_kernel_times_dilation() {
    let mut rng = Rng(14);
    let (b, h, w, c) = (1, 3, 5, 4);
    let na = na(2, 3, 2);
    let kd = na.kernel * na.dilation;
    let mut y = rng.vec(b * h * w * c, 1.0);
    let wq = rng.vec(3 * c * c, 0.5);
    let bq = rng.vec(3 * c, 0.5);
    let rpb = rng.vec(na.heads * 25, 0.5);
    let (mut p, s) = pack(&[&wq, &bq, &rpb]);
    let lin = Linear {
        din: c,
        dout: 3 * c,
        w: s[0].clone(),
        b: Some(s[1].clone()),
    };
    let na = Attention {
        rpb: s[2].clone(),
        ..na
    };
    let fwd = |y: &[f32], p: &[f32]| {
        let mut padded = vec![f32::NAN; b * kd * kd * c];
        pad_hw(y, [b, h, w], c, [kd, kd], &mut padded).unwrap();
        let qkv = linear_fwd(&lin, p, &padded, Act::None);
        let (out, lse) = na_fwd(&na, p, &qkv, [b, kd, kd]);
        (padded, qkv, out, lse)
    };
    let loss = |y: &[f32], p: &[f32], r: &[f32]| {
        let out = fwd(y, p).2;
        let mut cropped = vec![f32::NAN; b * h * w * c];
        crop_hw(&out, [b, kd, kd], c, [h, w], &mut cropped).unwrap();
        dot(&cropped, r)
    };
    let (padded, qkv, out, lse) = fwd(&y, &p);
    let r = rng.vec(b * h * w * c, 1.0);
    // Backward: crop → NA → linear → pad, in reverse.
    let mut d_out = vec![f32::NAN; out.len()];
    pad_hw(&r, [b, h, w], c, [kd, kd], &mut d_out).unwrap();
    let mut grads = vec![0.0; p.len()];
    let dqkv = na
        .backward(&p, &qkv, [b, kd, kd], &out, &lse, &d_out, &mut grads)
        .unwrap();
    let mut dp = vec![f32::NAN; padded.len()];
    lin.backward(&p, &padded, &dqkv, &mut grads, Some(&mut dp))
        .unwrap();
    let mut dy = vec![f32::NAN; y.len()];
    crop_hw(&dp, [b, kd, kd], c, [h, w], &mut dy).unwrap();
    let name = "pad 3x5 -> 6x6, qkv, NA k3 d2, crop";
    let p0 = p.clone();
    let e = fd_all(&mut rng, &mut y, &dy, SMOOTH_H, |y| loss(y, &p0, &r));
    expect(name, "y", e, ATTN_BOUND);
    let y0 = y.clone();
    for (t, range) in ["Wqkv", "bqkv", "rpb"].into_iter().zip(&s) {
        let e = fd_error(&mut rng, &mut p, range.clone(), &grads, SMOOTH_H, |p| {
            loss(&y0, p, &r)
        });
        expect(name, t, e, ATTN_BOUND);
    }
}

#[test]
fn cross_entropy_with_label_smoothing() {
    let mut rng = Rng(15);
    let (b, k) = (4, 5);
    let labels = [0usize, 3, 4, 3];
    let mut z = rng.vec(b * k, 2.0);
    for eps in [0.0f32, 0.1] {
        let ce = CrossEntropy {
            classes: k,
            smoothing: eps,
        };
        let out = ce.forward_backward(&z, &labels).unwrap();
        // PyTorch's definition, written out in f64.
        let mut want = 0.0f64;
        for (row, &y) in z.chunks(k).zip(&labels) {
            let lse = row.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
            let nll = lse - f64::from(row[y]);
            let smooth = row.iter().map(|&v| lse - f64::from(v)).sum::<f64>() / k as f64;
            want += (1.0 - f64::from(eps)) * nll + f64::from(eps) * smooth;
        }
        want /= b as f64;
        assert!((out.loss - want).abs() < 1e-12, "{} vs {want}", out.loss);
        let argmax_hits = z
            .chunks(k)
            .zip(&labels)
            .filter(|(row, &y)| row.iter().all(|&v| v <= row[y]))
            .count();
        assert_eq!(out.correct, argmax_hits);
        let d = out.dlogits.clone();
        let e = fd_all(&mut rng, &mut z, &d, SMOOTH_H, |z| {
            ce.forward_backward(z, &labels).unwrap().loss
        });
        expect(&format!("cross-entropy ε={eps}"), "z", e, SMOOTH_BOUND);
    }
    let ce = CrossEntropy {
        classes: k,
        smoothing: 0.1,
    };
    assert!(ce.forward_backward(&z, &[0, 1, 5, 2]).is_err(), "label 5");
    assert!(ce.forward_backward(&z[..19], &labels).is_err());
}

/// Backward results (and the forwards they start from) do not depend on the
/// number of threads (a fixed seed must reproduce a training run on any
/// machine).
#[test]
fn backwards_are_identical_for_every_thread_count() {
    let run = || {
        let mut rng = Rng(16);
        // Large enough for the products to split their work across threads.
        let dims = [8, 28, 28];
        let x = rng.vec(8 * 28 * 28 * 16, 1.0);
        let w = rng.vec(32 * 16 * 9, 0.3);
        let (pc, sc) = pack(&[&w]);
        let conv = Conv2d {
            w: sc[0].clone(),
            ..conv(16, 32, 3, 3, 2, 1)
        };
        let y = conv_fwd(&conv, &pc, &x, dims);
        let mut dw = vec![0.0; pc.len()];
        let dx = conv
            .backward(&pc, &x, dims, &y, &mut dw, true)
            .unwrap()
            .unwrap();
        let g = rng.vec(16, 1.0);
        let (pn, sn) = pack(&[&g, &g]);
        let ln = LayerNorm {
            c: 16,
            eps: 1e-5,
            w: sn[0].clone(),
            b: sn[1].clone(),
        };
        let (z, st) = ln_fwd(&ln, &pn, &x);
        let mut dln = vec![0.0; pn.len()];
        let dxl = ln.backward(&pn, &x, &st, &z, &mut dln).unwrap();
        let (pa, sa) = pack(&[&rng.vec(2 * 25, 0.5)]);
        let na = Attention {
            rpb: sa[0].clone(),
            ..na(2, 3, 2)
        };
        let qkv = rng.vec(3 * 13 * 11 * 24, 1.0);
        let (out, lse) = na_fwd(&na, &pa, &qkv, [3, 13, 11]);
        let mut drpb = vec![0.0; pa.len()];
        let dqkv = na
            .backward(&pa, &qkv, [3, 13, 11], &out, &lse, &out, &mut drpb)
            .unwrap();
        // The MLP's fused epilogues: GELU, then the residual with γ.
        let (pl, sl) = pack(&[
            &rng.vec(64 * 16, 0.3),
            &rng.vec(64, 0.3),
            &rng.vec(16 * 64, 0.3),
            &rng.vec(16, 0.3),
            &rng.vec(16, 1.0),
        ]);
        let fc1 = Linear {
            din: 16,
            dout: 64,
            w: sl[0].clone(),
            b: Some(sl[1].clone()),
        };
        let fc2 = Linear {
            din: 64,
            dout: 16,
            w: sl[2].clone(),
            b: Some(sl[3].clone()),
        };
        let (mut hid, mut pre) = (vec![0.0; x.len() * 4], vec![0.0; x.len() * 4]);
        fc1.forward(&pl, &x, Act::Gelu, &mut hid, Some(&mut pre))
            .unwrap();
        let (mut resid, mut tmp) = (x.clone(), vec![0.0; x.len()]);
        fc2.forward_residual(&pl, &hid, Some(&sl[4]), &mut resid, &mut tmp)
            .unwrap();
        let mut dl = vec![0.0; pl.len()];
        let dtmp = add_scaled_backward(
            &tmp,
            &resid,
            Some(&pl[sl[4].clone()]),
            Some(&mut dl[sl[4].clone()]),
            16,
        )
        .unwrap();
        let mut dhid = vec![0.0; hid.len()];
        fc2.backward(&pl, &hid, &dtmp, &mut dl, Some(&mut dhid))
            .unwrap();
        gelu_backward(&pre, &mut dhid).unwrap();
        let mut dxm = vec![0.0; x.len()];
        fc1.backward(&pl, &x, &dhid, &mut dl, Some(&mut dxm))
            .unwrap();
        [
            y, dx, dw, z, st, dxl, dln, out, lse, dqkv, drpb, hid, resid, dl, dxm,
        ]
    };
    let on = |n: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
            .install(run)
    };
    let one = on(1);
    for n in [2, 3] {
        let other = on(n);
        for (i, (a, b)) in one.iter().zip(&other).enumerate() {
            // Bitwise, NaN-free (a NaN would compare unequal to itself).
            assert!(
                a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits()),
                "{n} threads differ from 1 in result {i} (max diff {:e})",
                max_diff(a, b)
            );
        }
    }
}
