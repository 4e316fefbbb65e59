//! Every backward of the op set ([`na_model::ops`]) against central
//! differences, and every forward against an independent implementation
//! written here (a loop nest, a formula, or `na-core`'s reference kernel).
//!
//! # Method
//! Each layer `y = f(x, θ)` is reduced to the scalar `L = Σ_i y_i r_i` with a
//! fixed random `r` (so `dL/dy = r`), accumulated in f64. For a sample of
//! coordinates `t` of each input and parameter tensor, the central
//! difference `(L(t + h) - L(t - h)) / (t⁺ - t⁻)` — divided by the step as
//! actually represented in f32, `t⁺ - t⁻`, not by `2h` — is compared with
//! the analytic gradient. The reported error of a tensor is
//! `max_t |fd_t - g_t| / max_t |g_t|` over its sampled coordinates.
//! Parameters live in one flat buffer, as in the models; a test packs its
//! tensors into one and perturbs coordinates of the packed buffer.
//!
//! # Bounds
//! - Layers linear in the perturbed tensor (linear, convolution, pad, crop,
//!   patch merging, mean, the residual add, LayerNorm's γ and β): the
//!   central difference is exact in exact arithmetic for any `h`, so a large
//!   step (`h = 0.5`) leaves only the f32 rounding of the forward,
//!   `~ 6e-8 · Σ|y_i r_i|` in `L`, about 1e-7 relative: bound **1e-5**.
//! - Smooth nonlinear layers (LayerNorm's input, GELU, cross-entropy):
//!   `h = 1e-2` makes the truncation error `h² |f'''| / 6 ≈ 2e-5` relative
//!   for O(1) derivatives, and the rounding `≈ 6e-8 · |L| / h` a few 1e-6
//!   relative at these sizes: bound **5e-4**.
//! - Attention (alone, and composed with pad, the qkv projection and crop):
//!   the same, plus the fused f32 kernel's own rounding (online softmax,
//!   polynomial `exp`, FMA or not depending on the ISA): bound **1e-3**.
//!
//! Run with `--nocapture` to see the measured errors. Seeds are fixed.

use std::ops::Range;

use na_core::{Inputs, Par, Problem};
use na_model::ops::act::{erf, gelu, gelu_backward};
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

/// Coordinates to check: all of a small range, else `max` random ones.
fn sample(rng: &mut Rng, r: &Range<usize>, max: usize) -> Vec<usize> {
    if r.len() <= max {
        r.clone().collect()
    } else {
        (0..max).map(|_| r.start + rng.below(r.len())).collect()
    }
}

/// Central differences of `loss` with respect to `t[range]` on sampled
/// coordinates, compared with `grad[range]`; returns `max |fd - g| / max |g|`.
fn fd_error(
    rng: &mut Rng,
    t: &mut [f32],
    range: Range<usize>,
    grad: &[f32],
    h: f32,
    mut loss: impl FnMut(&[f32]) -> f64,
) -> f64 {
    assert_eq!(t.len(), grad.len());
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

/// Whole-tensor central differences (`range` = everything).
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

/// Packs tensors into one flat parameter buffer; their ranges.
fn pack(parts: &[&[f32]]) -> (Vec<f32>, Vec<Range<usize>>) {
    let mut p = Vec::new();
    let mut r = Vec::new();
    for t in parts {
        r.push(p.len()..p.len() + t.len());
        p.extend_from_slice(t);
    }
    (p, r)
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

fn gelu_ref(v: f32) -> f32 {
    (0.5 * f64::from(v) * (1.0 + libm::erf(f64::from(v) / std::f64::consts::SQRT_2))) as f32
}

fn linear_fwd(l: &Linear, p: &[f32], x: &[f32], act: Act) -> Vec<f32> {
    let mut y = vec![0.0; x.len() / l.din * l.dout];
    l.forward(p, x, act, &mut y, None).unwrap();
    y
}

#[test]
fn linear() {
    let mut rng = Rng(1);
    let (din, dout, rows) = (7, 6, 70);
    let (x0, w, b) = (
        rng.vec(rows * din, 1.0),
        rng.vec(dout * din, 0.5),
        rng.vec(dout, 0.5),
    );
    let (mut p, r) = pack(&[&w, &b]);
    let l = Linear {
        din,
        dout,
        w: r[0].clone(),
        b: Some(r[1].clone()),
    };
    // Forward against a loop nest.
    let y = linear_fwd(&l, &p, &x0, Act::None);
    let mut want = vec![0.0f32; rows * dout];
    for i in 0..rows {
        for j in 0..dout {
            want[i * dout + j] = b[j]
                + (0..din)
                    .map(|t| x0[i * din + t] * w[j * din + t])
                    .sum::<f32>();
        }
    }
    assert!(max_diff(&y, &want) < 1e-5, "linear forward");
    // Fused GELU = linear then GELU; with `pre`, the pre-activation too.
    let mut g = vec![0.0; y.len()];
    let mut pre = vec![0.0; y.len()];
    l.forward(&p, &x0, Act::Gelu, &mut g, Some(&mut pre))
        .unwrap();
    assert_eq!(pre, y);
    let mut gy = y.clone();
    gelu(&mut gy);
    assert_eq!(g, gy);
    assert_eq!(linear_fwd(&l, &p, &x0, Act::Gelu), gy);
    // Residual epilogue: resid += γ ⊙ (x Wᵀ + b), with and without γ.
    let gamma = rng.vec(dout, 1.0);
    let (pg, rg) = pack(&[&w, &b, &gamma]);
    let lg = Linear {
        din,
        dout,
        w: rg[0].clone(),
        b: Some(rg[1].clone()),
    };
    let resid0 = rng.vec(rows * dout, 1.0);
    for gm in [None, Some(&rg[2])] {
        let mut resid = resid0.clone();
        let mut tmp = vec![0.0; resid.len()];
        lg.forward_residual(&pg, &x0, gm, &mut resid, &mut tmp)
            .unwrap();
        assert_eq!(tmp, y);
        let mut want = resid0.clone();
        add_scaled(&mut want, &y, gm.map(|r| &pg[r.clone()]), dout).unwrap();
        assert_eq!(resid, want);
    }
    // Backward.
    let rr = rng.vec(rows * dout, 1.0);
    let mut grads = vec![0.0; p.len()];
    let mut dx = vec![0.0; x0.len()];
    l.backward(&p, &x0, &rr, &mut grads, Some(&mut dx)).unwrap();
    let name = "linear 70x7 -> 6";
    let mut x = x0.clone();
    let p0 = p.clone();
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&linear_fwd(&l, &p0, x, Act::None), &rr)
    });
    expect(name, "x", e, LINEAR_BOUND);
    for (i, t) in ["W", "b"].iter().enumerate() {
        let e = fd_error(&mut rng, &mut p, r[i].clone(), &grads, LINEAR_H, |p| {
            dot(&linear_fwd(&l, p, &x0, Act::None), &rr)
        });
        expect(name, t, e, LINEAR_BOUND);
    }
    // Accumulation: a second backward doubles the parameter gradients.
    let mut g2 = grads.clone();
    l.backward(&p, &x0, &rr, &mut g2, None).unwrap();
    let doubled: Vec<f32> = grads.iter().map(|v| 2.0 * v).collect();
    assert!(max_diff(&g2, &doubled) < 1e-4);
    // Shape errors are errors, never panics.
    let mut y8 = vec![0.0; 8];
    assert!(l.forward(&p, &x0[..8], Act::None, &mut y8, None).is_err());
    assert!(l
        .forward(&p[..40], &x0, Act::None, &mut vec![0.0; rows * dout], None)
        .is_err());
    assert!(l.forward(&p, &x0, Act::None, &mut y8, None).is_err());
}

fn conv_fwd(c: &Conv2d, p: &[f32], x: &[f32], dims: Bhw) -> Vec<f32> {
    let od = c.out_dims(dims).unwrap();
    let rows = od[0] * od[1] * od[2];
    let mut y = vec![0.0; rows * c.cout];
    let mut cols = vec![0.0; rows * c.kk()];
    c.forward(p, x, dims, &mut y, &mut cols).unwrap();
    y
}

#[allow(clippy::too_many_arguments)]
fn check_conv(
    seed: u64,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dims: Bhw,
    bias: bool,
) {
    let mut rng = Rng(seed);
    let [b, h, w] = dims;
    let x0 = rng.vec(b * h * w * cin, 1.0);
    let wt = rng.vec(cout * cin * k * k, 0.4);
    let bs = rng.vec(cout, 0.5);
    let (mut p, r) = if bias {
        pack(&[&wt, &bs])
    } else {
        pack(&[&wt])
    };
    let c = Conv2d {
        cin,
        cout,
        kh: k,
        kw: k,
        stride,
        pad,
        w: r[0].clone(),
        b: bias.then(|| r[1].clone()),
    };
    let od = c.out_dims(dims).unwrap();
    let y = conv_fwd(&c, &p, &x0, dims);
    // Forward against the direct convolution.
    let mut want = vec![0.0f32; y.len()];
    for bi in 0..b {
        for oy in 0..od[1] {
            for ox in 0..od[2] {
                for co in 0..cout {
                    let mut s = if bias { bs[co] } else { 0.0 };
                    for ci in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    s += x0[((bi * h + iy as usize) * w + ix as usize) * cin + ci]
                                        * wt[((co * cin + ci) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                    want[((bi * od[1] + oy) * od[2] + ox) * cout + co] = s;
                }
            }
        }
    }
    assert!(max_diff(&y, &want) < 1e-4, "conv forward");
    let rr = rng.vec(y.len(), 1.0);
    let mut grads = vec![0.0; p.len()];
    let dx = c
        .backward(&p, &x0, dims, &rr, &mut grads, true)
        .unwrap()
        .unwrap();
    let name = format!("conv {cin}->{cout} k{k} s{stride} p{pad} on {h}x{w}");
    let p0 = p.clone();
    let mut x = x0.clone();
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&conv_fwd(&c, &p0, x, dims), &rr)
    });
    expect(&name, "x", e, LINEAR_BOUND);
    for (i, rg) in r.iter().enumerate() {
        let e = fd_error(&mut rng, &mut p, rg.clone(), &grads, LINEAR_H, |p| {
            dot(&conv_fwd(&c, p, &x0, dims), &rr)
        });
        expect(&name, ["W", "b"][i], e, LINEAR_BOUND);
    }
}

#[test]
fn conv2d() {
    check_conv(2, 3, 4, 3, 2, 1, [2, 7, 6], true);
    check_conv(3, 2, 5, 3, 1, 1, [1, 5, 5], false);
    check_conv(4, 3, 4, 4, 4, 0, [1, 8, 8], true);
    let c = Conv2d {
        cin: 2,
        cout: 2,
        kh: 5,
        kw: 5,
        stride: 1,
        pad: 0,
        w: 0..100,
        b: None,
    };
    assert!(c.out_dims([1, 3, 8]).is_err(), "map below the kernel");
}

fn ln_fwd(l: &LayerNorm, p: &[f32], x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    l.forward(p, x, &mut y, None).unwrap();
    y
}

#[test]
fn layer_norm() {
    let mut rng = Rng(5);
    let (rows, c) = (9, 13);
    let x0: Vec<f32> = rng.vec(rows * c, 2.0).iter().map(|v| v + 0.7).collect();
    let (g, b) = (rng.vec(c, 1.0), rng.vec(c, 1.0));
    let (mut p, r) = pack(&[&g, &b]);
    let l = LayerNorm {
        c,
        eps: 1e-5,
        w: r[0].clone(),
        b: r[1].clone(),
    };
    let mut y = vec![0.0; x0.len()];
    let mut st = vec![0.0; 2 * rows];
    l.forward(&p, &x0, &mut y, Some(&mut st)).unwrap();
    // Forward against the formula in f64.
    for (i, xr) in x0.chunks(c).enumerate() {
        let mean = xr.iter().map(|&v| f64::from(v)).sum::<f64>() / c as f64;
        let var = xr
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / c as f64;
        let rstd = 1.0 / (var + 1e-5).sqrt();
        assert!((f64::from(st[2 * i]) - mean).abs() < 1e-5);
        assert!((f64::from(st[2 * i + 1]) - rstd).abs() < 1e-4 * rstd);
        for j in 0..c {
            let want = (f64::from(xr[j]) - mean) * rstd * f64::from(g[j]) + f64::from(b[j]);
            assert!(
                (f64::from(y[i * c + j]) - want).abs() < 1e-4,
                "layer norm forward"
            );
        }
    }
    let rr = rng.vec(y.len(), 1.0);
    let mut grads = vec![0.0; p.len()];
    let dx = l.backward(&p, &x0, &st, &rr, &mut grads).unwrap();
    let name = "layer norm 9x13";
    let p0 = p.clone();
    let mut x = x0.clone();
    let e = fd_all(&mut rng, &mut x, &dx, SMOOTH_H, |x| {
        dot(&ln_fwd(&l, &p0, x), &rr)
    });
    expect(name, "x", e, SMOOTH_BOUND);
    for (i, t) in ["γ", "β"].iter().enumerate() {
        let e = fd_error(&mut rng, &mut p, r[i].clone(), &grads, LINEAR_H, |p| {
            dot(&ln_fwd(&l, p, &x0), &rr)
        });
        expect(name, t, e, LINEAR_BOUND);
    }
    assert!(l.forward(&p[..20], &x0, &mut y, None).is_err());
}

#[test]
fn gelu_exact() {
    let mut rng = Rng(6);
    let mut x: Vec<f32> = rng.vec(300, 2.5);
    x.extend([0.0, 0.74, 0.76, -0.75, 5.9, -7.0, 9.0]);
    let mut y = x.clone();
    gelu(&mut y);
    for (&v, &g) in x.iter().zip(&y) {
        assert!(
            (g - gelu_ref(v)).abs() < 2e-6 * (1.0 + v.abs()),
            "GELU({v}) = {g}"
        );
        assert!((erf(v) as f64 - libm::erf(f64::from(v))).abs() < 5e-7);
    }
    let rr = rng.vec(x.len(), 1.0);
    let mut d = rr.clone();
    gelu_backward(&x, &mut d).unwrap();
    let e = fd_all(&mut rng, &mut x, &d, SMOOTH_H, |x| {
        let mut y = x.to_vec();
        gelu(&mut y);
        dot(&y, &rr)
    });
    expect("GELU", "x", e, SMOOTH_BOUND);
    assert!(gelu_backward(&x[..3], &mut d).is_err());
}

#[test]
fn residual_with_layer_scale() {
    let mut rng = Rng(7);
    let (rows, c) = (6, 5);
    let x0 = rng.vec(rows * c, 1.0);
    let mut y = rng.vec(rows * c, 1.0);
    let mut gamma = rng.vec(c, 1.0);
    let rr = rng.vec(rows * c, 1.0);
    let mut dgamma = vec![0.0; c];
    let dy = add_scaled_backward(&y, &rr, Some(&gamma), Some(&mut dgamma), c).unwrap();
    let fwd = |y: &[f32], g: &[f32]| {
        let mut x = x0.clone();
        add_scaled(&mut x, y, Some(g), c).unwrap();
        dot(&x, &rr)
    };
    let g0 = gamma.clone();
    let e = fd_all(&mut rng, &mut y, &dy, LINEAR_H, |y| fwd(y, &g0));
    expect("x + γ ⊙ y", "y", e, LINEAR_BOUND);
    let y0 = y.clone();
    let e = fd_all(&mut rng, &mut gamma, &dgamma, LINEAR_H, |g| fwd(&y0, g));
    expect("x + γ ⊙ y", "γ", e, LINEAR_BOUND);
    // Without γ the gradient passes unchanged.
    assert_eq!(add_scaled_backward(&y, &rr, None, None, c).unwrap(), rr);
    assert!(add_scaled_backward(&y, &rr, Some(&gamma), None, c).is_err());
}

#[test]
fn pad_crop_merge_mean() {
    let mut rng = Rng(8);
    let c = 3;
    // pad 3x4 -> 5x6; its backward is the crop of the gradient.
    let dims = [2, 3, 4];
    let mut x = rng.vec(2 * 3 * 4 * c, 1.0);
    let rr = rng.vec(2 * 5 * 6 * c, 1.0);
    let pad = |x: &[f32]| {
        let mut o = vec![f32::NAN; 2 * 5 * 6 * c];
        pad_hw(x, dims, c, [5, 6], &mut o).unwrap();
        o
    };
    assert!(pad(&x).iter().all(|v| v.is_finite()), "padding is written");
    let mut dx = vec![0.0; x.len()];
    crop_hw(&rr, [2, 5, 6], c, [3, 4], &mut dx).unwrap();
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| dot(&pad(x), &rr));
    expect("pad 3x4 -> 5x6", "x", e, LINEAR_BOUND);
    // crop 5x6 -> 3x4; its backward is the pad of the gradient.
    let mut x = rng.vec(2 * 5 * 6 * c, 1.0);
    let rr = rng.vec(2 * 3 * 4 * c, 1.0);
    let crop = |x: &[f32]| {
        let mut o = vec![0.0; 2 * 3 * 4 * c];
        crop_hw(x, [2, 5, 6], c, [3, 4], &mut o).unwrap();
        o
    };
    let mut dx = vec![0.0; x.len()];
    pad_hw(&rr, dims, c, [5, 6], &mut dx).unwrap();
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| dot(&crop(x), &rr));
    expect("crop 5x6 -> 3x4", "x", e, LINEAR_BOUND);
    // Patch merging of an odd map, quadrant order (0,0), (1,0), (0,1), (1,1).
    let md = [1, 3, 5];
    let mut x = rng.vec(3 * 5 * c, 1.0);
    let merge = |x: &[f32]| {
        let mut o = vec![f32::NAN; 2 * 3 * 4 * c];
        patch_merge(x, md, c, &mut o).unwrap();
        o
    };
    let m = merge(&x);
    assert_eq!(
        &m[c..2 * c],
        &x[5 * c..6 * c],
        "second quadrant is row 1, col 0"
    );
    assert!(
        m[(5 * 4 + 1) * c..].iter().all(|&v| v == 0.0),
        "padded quadrants are zero"
    );
    let rr = rng.vec(m.len(), 1.0);
    let dx = patch_merge_backward(&rr, md, c).unwrap();
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| dot(&merge(x), &rr));
    expect("patch merge 3x5", "x", e, LINEAR_BOUND);
    // Mean over 15 tokens.
    let mut x = rng.vec(2 * 15 * c, 1.0);
    let rr = rng.vec(2 * c, 1.0);
    let mean = |x: &[f32]| {
        let mut o = vec![0.0; 2 * c];
        mean_tokens(x, 2, c, &mut o).unwrap();
        o
    };
    let dx = mean_tokens_backward(&rr, 2, 15, c).unwrap();
    let e = fd_all(&mut rng, &mut x, &dx, LINEAR_H, |x| dot(&mean(x), &rr));
    expect("mean over 15 tokens", "x", e, LINEAR_BOUND);
    assert!(pad_hw(&x, [2, 3, 4], c, [2, 6], &mut vec![0.0; 72]).is_err());
}

/// Splits `qkv [n, 3c]` into q, k, v.
fn split(qkv: &[f32], c: usize) -> [Vec<f32>; 3] {
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for row in qkv.chunks(3 * c) {
        for (i, o) in out.iter_mut().enumerate() {
            o.extend_from_slice(&row[i * c..(i + 1) * c]);
        }
    }
    out
}

fn na_fwd(a: &Attention, p: &[f32], qkv: &[f32], dims: Bhw) -> (Vec<f32>, Vec<f32>) {
    let n = dims[0] * dims[1] * dims[2];
    let c = qkv.len() / (3 * n);
    let mut out = vec![0.0; n * c];
    let mut lse = vec![0.0; n * a.heads];
    let mut scratch = vec![0.0; 3 * n * c];
    a.forward(p, qkv, dims, &mut out, Some(&mut lse), &mut scratch)
        .unwrap();
    (out, lse)
}

fn check_attention(seed: u64, heads: usize, kernel: usize, dilation: usize, dims: Bhw, c: usize) {
    let mut rng = Rng(seed);
    let n = dims[0] * dims[1] * dims[2];
    let mut qkv = rng.vec(n * 3 * c, 1.0);
    let rl = heads * (2 * kernel - 1) * (2 * kernel - 1);
    let (mut p, r) = pack(&[&rng.vec(rl, 0.5)]);
    let a = Attention {
        heads,
        kernel,
        dilation,
        rpb: r[0].clone(),
    };
    let (out, lse) = na_fwd(&a, &p, &qkv, dims);
    // Forward against na-core's reference kernel on the split q, k, v.
    let pr: Problem = a.problem(dims, c).unwrap();
    let [q, k, v] = split(&qkv, c);
    let mut want = vec![0.0; out.len()];
    na_core::reference::forward(
        &pr,
        Inputs {
            query: &q,
            key: &k,
            value: &v,
            rpb: Some(&p),
        },
        &mut want,
        None,
        Par::Seq,
    )
    .unwrap();
    assert!(max_diff(&out, &want) < 1e-5, "attention forward");
    let rr = rng.vec(out.len(), 1.0);
    let mut grads = vec![0.0; p.len()];
    let dqkv = a
        .backward(&p, &qkv, dims, &out, &lse, &rr, &mut grads)
        .unwrap();
    let name = format!(
        "NA k{kernel} d{dilation} {heads}h on {}x{}x{c}",
        dims[1], dims[2]
    );
    let p0 = p.clone();
    let e = fd_all(&mut rng, &mut qkv, &dqkv, SMOOTH_H, |q| {
        dot(&na_fwd(&a, &p0, q, dims).0, &rr)
    });
    expect(&name, "qkv", e, ATTN_BOUND);
    let q0 = qkv.clone();
    let e = fd_error(&mut rng, &mut p, r[0].clone(), &grads, SMOOTH_H, |p| {
        dot(&na_fwd(&a, p, &q0, dims).0, &rr)
    });
    expect(&name, "rpb", e, ATTN_BOUND);
}

#[test]
fn neighborhood_attention() {
    check_attention(11, 2, 3, 1, [2, 5, 6], 8);
    check_attention(12, 2, 3, 2, [1, 7, 9], 8);
    check_attention(13, 1, 5, 1, [1, 6, 5], 4);
    let a = |heads, kernel, dilation| Attention {
        heads,
        kernel,
        dilation,
        rpb: 0..0,
    };
    assert!(
        a(3, 3, 1).problem([1, 5, 5], 8).is_err(),
        "8 channels, 3 heads"
    );
    assert!(a(2, 3, 2).problem([1, 5, 5], 8).is_err(), "map below k·d");
    // An rpb slot outside the parameters is an error, not a panic.
    let qkv = vec![0.0; 25 * 24];
    let (mut o, mut s) = (vec![0.0; 25 * 8], vec![0.0; 25 * 24]);
    let bad = Attention {
        heads: 2,
        kernel: 3,
        dilation: 1,
        rpb: 0..50,
    };
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
    let (heads, kernel, dilation) = (2, 3, 2);
    let kd = kernel * dilation;
    let (wq, bq, rpb) = (
        rng.vec(3 * c * c, 0.5),
        rng.vec(3 * c, 0.5),
        rng.vec(heads * 25, 0.5),
    );
    let (mut p, r) = pack(&[&wq, &bq, &rpb]);
    let lin = Linear {
        din: c,
        dout: 3 * c,
        w: r[0].clone(),
        b: Some(r[1].clone()),
    };
    let a = Attention {
        heads,
        kernel,
        dilation,
        rpb: r[2].clone(),
    };
    let fwd = |y: &[f32], p: &[f32]| {
        let mut padded = vec![0.0; b * kd * kd * c];
        pad_hw(y, [b, h, w], c, [kd, kd], &mut padded).unwrap();
        let qkv = linear_fwd(&lin, p, &padded, Act::None);
        let (out, lse) = na_fwd(&a, p, &qkv, [b, kd, kd]);
        (padded, qkv, out, lse)
    };
    let loss = |y: &[f32], p: &[f32], rr: &[f32]| {
        let (_, _, out, _) = fwd(y, p);
        let mut cropped = vec![0.0; b * h * w * c];
        crop_hw(&out, [b, kd, kd], c, [h, w], &mut cropped).unwrap();
        dot(&cropped, rr)
    };
    let mut y = rng.vec(b * h * w * c, 1.0);
    let (padded, qkv, out, lse) = fwd(&y, &p);
    let rr = rng.vec(b * h * w * c, 1.0);
    // Backward: crop → NA → linear → pad, in reverse.
    let mut d_out = vec![0.0; out.len()];
    pad_hw(&rr, [b, h, w], c, [kd, kd], &mut d_out).unwrap();
    let mut grads = vec![0.0; p.len()];
    let dqkv = a
        .backward(&p, &qkv, [b, kd, kd], &out, &lse, &d_out, &mut grads)
        .unwrap();
    let mut dp = vec![0.0; padded.len()];
    lin.backward(&p, &padded, &dqkv, &mut grads, Some(&mut dp))
        .unwrap();
    let mut dy = vec![0.0; y.len()];
    crop_hw(&dp, [b, kd, kd], c, [h, w], &mut dy).unwrap();
    let name = "pad 3x5 -> 6x6, qkv, NA k3 d2, crop";
    let p0 = p.clone();
    let e = fd_all(&mut rng, &mut y, &dy, SMOOTH_H, |y| loss(y, &p0, &rr));
    expect(name, "y", e, ATTN_BOUND);
    let y0 = y.clone();
    for (i, t) in ["Wqkv", "bqkv", "rpb"].iter().enumerate() {
        let e = fd_error(&mut rng, &mut p, r[i].clone(), &grads, SMOOTH_H, |p| {
            loss(&y0, p, &rr)
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

/// Forward and backward results do not depend on the number of threads (a
/// fixed seed must reproduce a training run on any machine).
#[test]
fn results_are_identical_for_every_thread_count() {
    let run = || {
        let mut rng = Rng(16);
        let (x, w) = (rng.vec(8 * 28 * 28 * 16, 1.0), rng.vec(32 * 16 * 9, 0.3));
        let (p, r) = pack(&[&w]);
        let conv = Conv2d {
            cin: 16,
            cout: 32,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: 1,
            w: r[0].clone(),
            b: None,
        };
        // Large enough for the products to split their work across threads.
        let dims = [8, 28, 28];
        let y = conv_fwd(&conv, &p, &x, dims);
        let mut gw = vec![0.0; p.len()];
        let dx = conv
            .backward(&p, &x, dims, &y, &mut gw, true)
            .unwrap()
            .unwrap();
        let (lw, lr) = pack(&[&rng.vec(16 * 64, 0.3), &rng.vec(64, 0.3)]);
        let lin = Linear {
            din: 16,
            dout: 64,
            w: lr[0].clone(),
            b: Some(lr[1].clone()),
        };
        let mut h = vec![0.0; x.len() / 16 * 64];
        let mut pre = vec![0.0; h.len()];
        lin.forward(&lw, &x, Act::Gelu, &mut h, Some(&mut pre))
            .unwrap();
        let mut gl = vec![0.0; lw.len()];
        let mut dxl = vec![0.0; x.len()];
        lin.backward(&lw, &x, &h, &mut gl, Some(&mut dxl)).unwrap();
        let (np, nr) = pack(&[&rng.vec(16, 1.0), &rng.vec(16, 1.0)]);
        let ln = LayerNorm {
            c: 16,
            eps: 1e-5,
            w: nr[0].clone(),
            b: nr[1].clone(),
        };
        let mut z = vec![0.0; x.len()];
        let mut st = vec![0.0; x.len() / 16 * 2];
        ln.forward(&np, &x, &mut z, Some(&mut st)).unwrap();
        let mut gn = vec![0.0; np.len()];
        let dxn = ln.backward(&np, &x, &st, &z, &mut gn).unwrap();
        let (ap, ar) = pack(&[&rng.vec(2 * 25, 0.5)]);
        let a = Attention {
            heads: 2,
            kernel: 3,
            dilation: 2,
            rpb: ar[0].clone(),
        };
        let qkv = rng.vec(3 * 13 * 11 * 24, 1.0);
        let (out, lse) = na_fwd(&a, &ap, &qkv, [3, 13, 11]);
        let mut ga = vec![0.0; ap.len()];
        let dqkv = a
            .backward(&ap, &qkv, [3, 13, 11], &out, &lse, &out, &mut ga)
            .unwrap();
        [y, dx, gw, h, pre, gl, dxl, z, gn, dxn, out, dqkv, ga]
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
        assert!(one == on(n), "{n} threads differ from 1");
    }
}
