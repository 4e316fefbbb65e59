//! Every backward of `na_model::train` against central differences, and
//! every forward against the inference backend ([`Cpu`]).
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
//! # Bounds
//! - Layers linear in the perturbed tensor (linear, convolution, pad, crop,
//!   patch merging, mean, the residual add, LayerNorm's γ and β): the
//!   central difference is exact in exact arithmetic for any `h`, so a large
//!   step (`h = 0.5`) leaves only the f32 rounding of the forward,
//!   `~ 6e-8 · Σ|y_i r_i|` in `L`, about 1e-7 relative: bound **1e-5**
//!   (measured at most 4e-7).
//! - Smooth nonlinear layers (LayerNorm's input, GELU, cross-entropy):
//!   `h = 1e-2` makes the truncation error `h² |f'''| / 6 ≈ 2e-5` relative
//!   for O(1) derivatives, and the rounding `≈ 6e-8 · |L| / h` a few 1e-6
//!   relative at these sizes: bound **5e-4** (measured at most 5e-5).
//! - Attention (alone, and composed with pad, the qkv projection and crop):
//!   the same, plus the fused f32 kernel's own rounding (online softmax,
//!   polynomial `exp`, FMA or not depending on the ISA): bound **1e-3**
//!   (measured at most 6e-5).
//!
//! Run with `--nocapture` to see the measured errors. Seeds are fixed.

use na_model::train::{
    add_scaled, add_scaled_backward, crop_hw, gelu, gelu_backward, mean_tokens,
    mean_tokens_backward, pad_hw, patch_merge, patch_merge_backward, Bhw, Conv2d, CrossEntropy,
    LayerNorm, Linear, NeighborhoodAttention, ParamGrads,
};
use na_model::{Backend, Cpu, NaSpec};

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

/// Coordinates to check: all of a small tensor, else `max` random ones.
fn sample(rng: &mut Rng, n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        (0..n).collect()
    } else {
        (0..max).map(|_| rng.below(n)).collect()
    }
}

/// Central differences of `loss` with respect to `t` on sampled coordinates,
/// compared with `grad`; returns the error `max |fd - g| / max |g|`.
fn fd_error(
    rng: &mut Rng,
    t: &mut [f32],
    grad: &[f32],
    h: f32,
    mut loss: impl FnMut(&[f32]) -> f64,
) -> f64 {
    assert_eq!(t.len(), grad.len());
    let (mut worst, mut scale) = (0.0f64, 0.0f64);
    for i in sample(rng, t.len(), 48) {
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

/// Checks and reports one tensor's error.
fn expect(layer: &str, tensor: &str, err: f64, bound: f64) {
    eprintln!("{layer:<40} {tensor:<6} rel. error {err:.2e} (bound {bound:.0e})");
    assert!(
        err <= bound,
        "{layer}: d{tensor} error {err:e} above {bound:e}"
    );
}

const LINEAR_H: f32 = 0.5;
const LINEAR_BOUND: f64 = 1e-5;
const SMOOTH_H: f32 = 1e-2;
const SMOOTH_BOUND: f64 = 5e-4;
const ATTN_BOUND: f64 = 1e-3;

fn cpu() -> Cpu {
    Cpu::new(0)
}

fn up(shape: &[usize], data: &[f32]) -> na_model::Tensor<Cpu> {
    cpu().upload(shape, data).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn linear() {
    let mut rng = Rng(1);
    let l = Linear { din: 7, dout: 6 };
    let rows = 5;
    let (mut x, mut w, mut b) = (rng.vec(rows * 7, 1.0), rng.vec(42, 0.5), rng.vec(6, 0.5));
    let r = rng.vec(rows * 6, 1.0);
    let y = l.forward(&x, &w, Some(&b)).unwrap();
    let be = cpu();
    let want = be
        .linear(&up(&[rows, 7], &x), &up(&[6, 7], &w), Some(&up(&[6], &b)))
        .unwrap();
    assert_eq!(y, want.buf, "forward differs from Cpu::linear");
    let (mut dw, mut db) = (vec![0.0; 42], vec![0.0; 6]);
    let dx = l
        .backward(
            &x,
            &w,
            &r,
            ParamGrads {
                w: &mut dw,
                b: Some(&mut db),
            },
            true,
        )
        .unwrap()
        .unwrap();
    let name = "linear 5x7 -> 6";
    let (w0, b0) = (w.clone(), b.clone());
    let e = fd_error(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&l.forward(x, &w0, Some(&b0)).unwrap(), &r)
    });
    expect(name, "x", e, LINEAR_BOUND);
    let x0 = x.clone();
    let e = fd_error(&mut rng, &mut w, &dw, LINEAR_H, |w| {
        dot(&l.forward(&x0, w, Some(&b0)).unwrap(), &r)
    });
    expect(name, "W", e, LINEAR_BOUND);
    let e = fd_error(&mut rng, &mut b, &db, LINEAR_H, |b| {
        dot(&l.forward(&x0, &w0, Some(b)).unwrap(), &r)
    });
    expect(name, "b", e, LINEAR_BOUND);
    // Accumulation: a second backward doubles the parameter gradients.
    let (mut dw2, mut db2) = (dw.clone(), db.clone());
    l.backward(
        &x0,
        &w0,
        &r,
        ParamGrads {
            w: &mut dw2,
            b: Some(&mut db2),
        },
        false,
    )
    .unwrap();
    assert!(max_diff(&dw2, &dw.iter().map(|v| 2.0 * v).collect::<Vec<_>>()) < 1e-5);
    // Shape errors are errors.
    assert!(l.forward(&x0[..8], &w0, None).is_err());
    assert!(l.forward(&x0, &w0[..40], None).is_err());
}

fn check_conv(seed: u64, conv: Conv2d, dims: Bhw, bias: bool) {
    let mut rng = Rng(seed);
    let [bn, h, wd] = dims;
    let mut x = rng.vec(bn * h * wd * conv.cin, 1.0);
    let mut w = rng.vec(conv.cout * conv.cin * conv.kh * conv.kw, 0.3);
    let mut b = rng.vec(conv.cout, 0.3);
    let bo = |b: &[f32]| if bias { Some(b.to_vec()) } else { None };
    let (y, od) = conv.forward(&x, dims, &w, bo(&b).as_deref()).unwrap();
    let be = cpu();
    let want = be
        .conv2d(
            &up(&[bn, h, wd, conv.cin], &x),
            &up(&[conv.cout, conv.cin, conv.kh, conv.kw], &w),
            bo(&b).map(|b| up(&[conv.cout], &b)).as_ref(),
            conv.stride,
            conv.pad,
        )
        .unwrap();
    assert_eq!(want.shape, [od[0], od[1], od[2], conv.cout]);
    assert_eq!(y, want.buf, "forward differs from Cpu::conv2d");
    let r = rng.vec(y.len(), 1.0);
    let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; conv.cout]);
    let dx = conv
        .backward(
            &x,
            dims,
            &w,
            &r,
            ParamGrads {
                w: &mut dw,
                b: if bias { Some(&mut db) } else { None },
            },
            true,
        )
        .unwrap()
        .unwrap();
    let name = format!(
        "conv {}x{} s{} p{} on {h}x{wd}x{}{}",
        conv.kh,
        conv.kw,
        conv.stride,
        conv.pad,
        conv.cin,
        if bias { " +b" } else { "" }
    );
    let (w0, b0) = (w.clone(), bo(&b));
    let e = fd_error(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&conv.forward(x, dims, &w0, b0.as_deref()).unwrap().0, &r)
    });
    expect(&name, "x", e, LINEAR_BOUND);
    let x0 = x.clone();
    let e = fd_error(&mut rng, &mut w, &dw, LINEAR_H, |w| {
        dot(&conv.forward(&x0, dims, w, b0.as_deref()).unwrap().0, &r)
    });
    expect(&name, "W", e, LINEAR_BOUND);
    if bias {
        let e = fd_error(&mut rng, &mut b, &db, LINEAR_H, |b| {
            dot(&conv.forward(&x0, dims, &w0, Some(b)).unwrap().0, &r)
        });
        expect(&name, "b", e, LINEAR_BOUND);
    }
}

#[test]
fn conv2d() {
    let c = |cin, cout, k, stride, pad| Conv2d {
        cin,
        cout,
        kh: k,
        kw: k,
        stride,
        pad,
    };
    // The NAT stem and downsampler: 3x3, stride 2, padding 1, odd sizes.
    check_conv(2, c(3, 4, 3, 2, 1), [2, 7, 6], true);
    check_conv(3, c(2, 5, 3, 2, 1), [1, 5, 5], false);
    // A patch embedding: 4x4 stride 4 on a map padded to a multiple.
    check_conv(4, c(1, 3, 4, 4, 0), [2, 8, 8], true);
    // Stride 1, padding 1; a non-square kernel.
    check_conv(5, c(3, 2, 3, 1, 1), [1, 4, 5], true);
    check_conv(
        6,
        Conv2d {
            cin: 2,
            cout: 3,
            kh: 2,
            kw: 3,
            stride: 2,
            pad: 1,
        },
        [1, 5, 6],
        true,
    );
    assert!(c(3, 4, 3, 2, 0).out_dims([1, 2, 2]).is_err());
}

#[test]
fn layer_norm() {
    let mut rng = Rng(7);
    let (rows, c) = (6, 8);
    let ln = LayerNorm { c, eps: 1e-5 };
    let mut x: Vec<f32> = rng.vec(rows * c, 1.5).iter().map(|v| v + 0.7).collect();
    let (mut g, mut b) = (
        rng.vec(c, 0.5).iter().map(|v| v + 1.0).collect::<Vec<_>>(),
        rng.vec(c, 0.5),
    );
    let (y, st) = ln.forward(&x, &g, &b).unwrap();
    let want = cpu()
        .layer_norm(&up(&[rows, c], &x), &up(&[c], &g), &up(&[c], &b), 1e-5)
        .unwrap();
    assert_eq!(y, want.buf, "forward differs from Cpu::layer_norm");
    let r = rng.vec(y.len(), 1.0);
    let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
    let dx = ln
        .backward(
            &x,
            &g,
            &st,
            &r,
            ParamGrads {
                w: &mut dg,
                b: Some(&mut db),
            },
        )
        .unwrap();
    let name = "layer_norm 6x8";
    let (g0, b0) = (g.clone(), b.clone());
    let e = fd_error(&mut rng, &mut x, &dx, SMOOTH_H, |x| {
        dot(&ln.forward(x, &g0, &b0).unwrap().0, &r)
    });
    expect(name, "x", e, SMOOTH_BOUND);
    let x0 = x.clone();
    let e = fd_error(&mut rng, &mut g, &dg, LINEAR_H, |g| {
        dot(&ln.forward(&x0, g, &b0).unwrap().0, &r)
    });
    expect(name, "γ", e, LINEAR_BOUND);
    let e = fd_error(&mut rng, &mut b, &db, LINEAR_H, |b| {
        dot(&ln.forward(&x0, &g0, b).unwrap().0, &r)
    });
    expect(name, "β", e, LINEAR_BOUND);
}

#[test]
fn gelu_exact() {
    let mut rng = Rng(8);
    // Spread over [-4, 4], including the erf approximation's switch at
    // |x|/√2 = 0.75.
    let mut x: Vec<f32> = (0..96)
        .map(|i| -4.0 + 8.0 * i as f32 / 95.0 + 0.01 * rng.normal())
        .collect();
    let y = gelu(&x);
    let mut want = up(&[x.len()], &x);
    cpu().gelu(&mut want).unwrap();
    assert_eq!(y, want.buf, "forward differs from Cpu::gelu");
    // Against the exact function in f64.
    for (&v, &g) in x.iter().zip(&y) {
        let v = f64::from(v);
        let exact = 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
        assert!((exact - f64::from(g)).abs() < 1e-6, "gelu({v}) = {g}");
    }
    let r = rng.vec(x.len(), 1.0);
    let mut dx = r.clone();
    gelu_backward(&x, &mut dx).unwrap();
    let e = fd_error(&mut rng, &mut x, &dx, SMOOTH_H, |x| dot(&gelu(x), &r));
    expect("gelu (erf) on [-4, 4]", "x", e, SMOOTH_BOUND);
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
    let mut want = up(&[4, c], &x);
    cpu()
        .add_scaled(&mut want, &up(&[4, c], &y), Some(&up(&[c], &g)))
        .unwrap();
    assert_eq!(f(&y, &g), want.buf, "forward differs from Cpu::add_scaled");
    let r = rng.vec(x.len(), 1.0);
    let mut dg = vec![0.0; c];
    let dy = add_scaled_backward(&y, &r, Some(&g), Some(&mut dg), c).unwrap();
    let g0 = g.clone();
    let e = fd_error(&mut rng, &mut y, &dy, LINEAR_H, |y| dot(&f(y, &g0), &r));
    expect("x + γ ⊙ y", "y", e, LINEAR_BOUND);
    let y0 = y.clone();
    let e = fd_error(&mut rng, &mut g, &dg, LINEAR_H, |g| dot(&f(&y0, g), &r));
    expect("x + γ ⊙ y", "γ", e, LINEAR_BOUND);
    assert_eq!(
        add_scaled_backward(&y0, &r, None, None, c).unwrap(),
        r,
        "without γ the gradient passes through"
    );
}

#[test]
fn pad_crop_merge_mean() {
    let mut rng = Rng(10);
    let (dims, c) = ([2, 5, 3], 3);
    let n = 2 * 5 * 3 * c;
    let be = cpu();
    let xt = |x: &[f32]| up(&[2, 5, 3, c], x);

    let mut x = rng.vec(n, 1.0);
    let p = pad_hw(&x, dims, c, 7, 6).unwrap();
    assert_eq!(p, be.pad_hw(&xt(&x), 7, 6).unwrap().buf);
    let r = rng.vec(p.len(), 1.0);
    let dx = crop_hw(&r, [2, 7, 6], c, 5, 3).unwrap();
    let e = fd_error(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&pad_hw(x, dims, c, 7, 6).unwrap(), &r)
    });
    expect("pad 5x3 -> 7x6", "x", e, LINEAR_BOUND);

    let cr = crop_hw(&x, dims, c, 4, 2).unwrap();
    assert_eq!(cr, be.crop_hw(&xt(&x), 4, 2).unwrap().buf);
    let r = rng.vec(cr.len(), 1.0);
    let dx = pad_hw(&r, [2, 4, 2], c, 5, 3).unwrap();
    let e = fd_error(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&crop_hw(x, dims, c, 4, 2).unwrap(), &r)
    });
    expect("crop 5x3 -> 4x2", "x", e, LINEAR_BOUND);

    let (m, od) = patch_merge(&x, dims, c).unwrap();
    assert_eq!(od, [2, 3, 2]);
    assert_eq!(m, be.patch_merge(&xt(&x)).unwrap().buf);
    let r = rng.vec(m.len(), 1.0);
    let dx = patch_merge_backward(&r, dims, c).unwrap();
    let e = fd_error(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&patch_merge(x, dims, c).unwrap().0, &r)
    });
    expect("patch merge 5x3 (odd)", "x", e, LINEAR_BOUND);

    let mt = mean_tokens(&x, 2, c).unwrap();
    assert_eq!(mt, be.mean_tokens(&xt(&x)).unwrap().buf);
    let r = rng.vec(mt.len(), 1.0);
    let dx = mean_tokens_backward(&r, 2, 15, c).unwrap();
    let e = fd_error(&mut rng, &mut x, &dx, LINEAR_H, |x| {
        dot(&mean_tokens(x, 2, c).unwrap(), &r)
    });
    expect("mean over 15 tokens", "x", e, LINEAR_BOUND);
}

fn check_attention(seed: u64, na: NeighborhoodAttention, dims: Bhw, c: usize) {
    let mut rng = Rng(seed);
    let n = dims[0] * dims[1] * dims[2];
    let mut qkv = rng.vec(n * 3 * c, 1.0);
    let rl = na.heads * (2 * na.kernel - 1) * (2 * na.kernel - 1);
    let mut rpb = rng.vec(rl, 0.5);
    let saved = na.forward(&qkv, dims, &rpb).unwrap();
    let want = cpu()
        .neighborhood_attention(
            &up(&[dims[0], dims[1], dims[2], 3 * c], &qkv),
            &up(&[na.heads, 2 * na.kernel - 1, 2 * na.kernel - 1], &rpb),
            NaSpec {
                heads: na.heads,
                kernel: na.kernel,
                dilation: na.dilation,
            },
        )
        .unwrap();
    assert_eq!(
        saved.out, want.buf,
        "forward differs from Cpu::neighborhood_attention"
    );
    let r = rng.vec(saved.out.len(), 1.0);
    let mut drpb = vec![0.0; rl];
    let dqkv = na.backward(&saved, &rpb, &r, &mut drpb).unwrap();
    let name = format!(
        "NA k{} d{} {}h on {}x{}x{c}",
        na.kernel, na.dilation, na.heads, dims[1], dims[2]
    );
    let rpb0 = rpb.clone();
    let e = fd_error(&mut rng, &mut qkv, &dqkv, SMOOTH_H, |q| {
        dot(&na.forward(q, dims, &rpb0).unwrap().out, &r)
    });
    expect(&name, "qkv", e, ATTN_BOUND);
    let qkv0 = qkv.clone();
    let e = fd_error(&mut rng, &mut rpb, &drpb, SMOOTH_H, |b| {
        dot(&na.forward(&qkv0, dims, b).unwrap().out, &r)
    });
    expect(&name, "rpb", e, ATTN_BOUND);
}

#[test]
fn neighborhood_attention() {
    let na = |heads, kernel, dilation| NeighborhoodAttention {
        heads,
        kernel,
        dilation,
    };
    check_attention(11, na(2, 3, 1), [2, 5, 6], 8);
    check_attention(12, na(2, 3, 2), [1, 7, 9], 8);
    check_attention(13, na(1, 5, 1), [1, 6, 5], 4);
    assert!(
        na(3, 3, 1).problem([1, 5, 5], 8).is_err(),
        "8 channels, 3 heads"
    );
    assert!(na(2, 3, 2).problem([1, 5, 5], 8).is_err(), "map below k·d");
}

/// The models' padded block: `pad(y) → qkv linear → NA → crop` on a map
/// smaller than `kernel × dilation`, composed from the layers' backwards.
#[test]
fn attention_on_a_map_padded_to_kernel_times_dilation() {
    let mut rng = Rng(14);
    let (b, h, w, c) = (1, 3, 5, 4);
    let na = NeighborhoodAttention {
        heads: 2,
        kernel: 3,
        dilation: 2,
    };
    let kd = na.kernel * na.dilation;
    let lin = Linear {
        din: c,
        dout: 3 * c,
    };
    let mut y = rng.vec(b * h * w * c, 1.0);
    let mut wq = rng.vec(3 * c * c, 0.5);
    let mut bq = rng.vec(3 * c, 0.5);
    let mut rpb = rng.vec(na.heads * 25, 0.5);
    let fwd = |y: &[f32], wq: &[f32], bq: &[f32], rpb: &[f32]| {
        let p = pad_hw(y, [b, h, w], c, kd, kd).unwrap();
        let qkv = lin.forward(&p, wq, Some(bq)).unwrap();
        let s = na.forward(&qkv, [b, kd, kd], rpb).unwrap();
        (p, s)
    };
    let loss = |y: &[f32], wq: &[f32], bq: &[f32], rpb: &[f32], r: &[f32]| {
        let (_, s) = fwd(y, wq, bq, rpb);
        dot(&crop_hw(&s.out, [b, kd, kd], c, h, w).unwrap(), r)
    };
    let (p, s) = fwd(&y, &wq, &bq, &rpb);
    let r = rng.vec(b * h * w * c, 1.0);
    // Backward: crop → NA → linear → pad, in reverse.
    let d_out = pad_hw(&r, [b, h, w], c, kd, kd).unwrap();
    let mut drpb = vec![0.0; rpb.len()];
    let dqkv = na.backward(&s, &rpb, &d_out, &mut drpb).unwrap();
    let (mut dwq, mut dbq) = (vec![0.0; wq.len()], vec![0.0; bq.len()]);
    let dp = lin
        .backward(
            &p,
            &wq,
            &dqkv,
            ParamGrads {
                w: &mut dwq,
                b: Some(&mut dbq),
            },
            true,
        )
        .unwrap()
        .unwrap();
    let dy = crop_hw(&dp, [b, kd, kd], c, h, w).unwrap();
    let name = "pad 3x5 -> 6x6, qkv, NA k3 d2, crop";
    let (wq0, bq0, rpb0, y0) = (wq.clone(), bq.clone(), rpb.clone(), y.clone());
    let e = fd_error(&mut rng, &mut y, &dy, SMOOTH_H, |y| {
        loss(y, &wq0, &bq0, &rpb0, &r)
    });
    expect(name, "y", e, ATTN_BOUND);
    let e = fd_error(&mut rng, &mut wq, &dwq, SMOOTH_H, |wq| {
        loss(&y0, wq, &bq0, &rpb0, &r)
    });
    expect(name, "Wqkv", e, ATTN_BOUND);
    let e = fd_error(&mut rng, &mut bq, &dbq, SMOOTH_H, |bq| {
        loss(&y0, &wq0, bq, &rpb0, &r)
    });
    expect(name, "bqkv", e, ATTN_BOUND);
    let e = fd_error(&mut rng, &mut rpb, &drpb, SMOOTH_H, |rpb| {
        loss(&y0, &wq0, &bq0, rpb, &r)
    });
    expect(name, "rpb", e, ATTN_BOUND);
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
        let e = fd_error(&mut rng, &mut z, &d, SMOOTH_H, |z| {
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

/// Backward results do not depend on the number of threads (a fixed seed
/// must reproduce a training run on any machine).
#[test]
fn backwards_are_identical_for_every_thread_count() {
    let run = || {
        let mut rng = Rng(16);
        let conv = Conv2d {
            cin: 16,
            cout: 32,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: 1,
        };
        // Large enough for gemm to split its work across threads.
        let dims = [8, 28, 28];
        let x = rng.vec(8 * 28 * 28 * 16, 1.0);
        let w = rng.vec(32 * 16 * 9, 0.3);
        let (y, _) = conv.forward(&x, dims, &w, None).unwrap();
        let mut dw = vec![0.0; w.len()];
        let dx = conv
            .backward(
                &x,
                dims,
                &w,
                &y,
                ParamGrads {
                    w: &mut dw,
                    b: None,
                },
                true,
            )
            .unwrap()
            .unwrap();
        let ln = LayerNorm { c: 16, eps: 1e-5 };
        let g = rng.vec(16, 1.0);
        let (z, st) = ln.forward(&x, &g, &g).unwrap();
        let (mut dg, mut db) = (vec![0.0; 16], vec![0.0; 16]);
        let dxl = ln
            .backward(
                &x,
                &g,
                &st,
                &z,
                ParamGrads {
                    w: &mut dg,
                    b: Some(&mut db),
                },
            )
            .unwrap();
        let na = NeighborhoodAttention {
            heads: 2,
            kernel: 3,
            dilation: 2,
        };
        let qkv = rng.vec(3 * 13 * 11 * 24, 1.0);
        let rpb = rng.vec(2 * 25, 0.5);
        let s = na.forward(&qkv, [3, 13, 11], &rpb).unwrap();
        let mut drpb = vec![0.0; rpb.len()];
        let dqkv = na.backward(&s, &rpb, &s.out, &mut drpb).unwrap();
        [dx, dw, dxl, dg, db, dqkv, drpb]
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
