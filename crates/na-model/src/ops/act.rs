//! Exact (erf) GELU and its derivative.

use rayon::prelude::*;

use super::check_len;
use crate::error::Result;

const R: f32 = core::f32::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2π)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `GELU(x) = x/2 · (1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu1(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * R))
}

/// `GELU'(x) = Φ(x) + x φ(x)`.
#[inline(always)]
pub fn gelu_grad1(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * R));
    let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
    cdf + x * pdf
}

/// GELU in place, element-wise.
pub fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(gelu_slice);
}

/// `x = GELU(x)` on one thread, vectorised for AVX2+FMA when the CPU has
/// it (the baseline x86-64 build only has SSE2; the polynomial `erf` is most
/// of a block's element-wise work).
pub fn gelu_slice(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above), the only
        // requirement of a `target_feature` function.
        unsafe { x86::gelu_slice(x) };
        return;
    }
    x.iter_mut().for_each(|v| *v = gelu1(*v));
}

/// `out = GELU(x)` on one thread (vectorised like [`gelu_slice`]).
pub fn gelu_into(out: &mut [f32], x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { x86::gelu_into(out, x) };
        return;
    }
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = gelu1(v));
}

/// `g *= GELU'(x)` on one thread (vectorised like [`gelu_slice`]).
fn gelu_grad_slice(g: &mut [f32], x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { x86::gelu_grad(g, x) };
        return;
    }
    g.iter_mut().zip(x).for_each(|(g, &v)| *g *= gelu_grad1(v));
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// The same loops compiled with AVX2 and FMA enabled (the `#[inline(always)]`
/// scalar formulas are inlined and auto-vectorised; no intrinsics, and no
/// FMA contraction, so the values equal the baseline build's).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{gelu1, gelu_grad1};

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gelu_slice(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = gelu1(*v));
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gelu_into(out: &mut [f32], x: &[f32]) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = gelu1(v));
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gelu_grad(g: &mut [f32], x: &[f32]) {
        g.iter_mut().zip(x).for_each(|(g, &v)| *g *= gelu_grad1(v));
    }
}

/// GELU backward in place: `grad *= GELU'(x)`, with `x` the forward's input.
pub fn gelu_backward(x: &[f32], grad: &mut [f32]) -> Result<()> {
    check_len("gelu", "gradient", grad.len(), x.len())?;
    grad.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(g, x)| {
            gelu_grad_slice(g, x);
        });
    Ok(())
}

/// `erf(x)` within 5e-7 absolute, written without branches or calls so that
/// the GELU loop vectorises (`libm::erff` is exact to an ulp but scalar, and
/// cost more than a block's MLP GEMMs at level 0). Below 0.75 the Maclaurin
/// series to `x^15` (truncation below 2e-8); above it Abramowitz & Stegun
/// 7.1.28, `1 - (1 + a1 x + … + a6 x^6)^-16` (3e-7), whose f32 cancellation
/// near 0 the series avoids. Odd symmetry.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const A: [f32; 6] = [
        0.070_523_08,
        0.042_282_01,
        0.009_270_527,
        0.000_152_014_3,
        0.000_276_567_2,
        0.000_043_063_8,
    ];
    // 2/sqrt(pi) * (-1)^n / (n! (2n+1)), n = 0..7.
    const S: [f32; 8] = [
        core::f32::consts::FRAC_2_SQRT_PI,
        -0.376_126_4,
        0.112_837_92,
        -0.026_866_17,
        0.005_223_977,
        -0.000_854_832_1,
        0.000_120_553_7,
        -0.000_014_925_07,
    ];
    // Clamped (NaN stays NaN: `f32::min` would turn it into 6).
    let z = if x.abs() > 6.0 { 6.0 } else { x.abs() };
    let z2 = z * z;
    let mut s = S[7];
    for c in S[..7].iter().rev() {
        s = s * z2 + c;
    }
    let small = z * s;
    let p = 1.0 + z * (A[0] + z * (A[1] + z * (A[2] + z * (A[3] + z * (A[4] + z * A[5])))));
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    let large = 1.0 - 1.0 / (p8 * p8);
    let r = if z < 0.75 { small } else { large };
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::erf;

    #[test]
    fn erf_is_within_5e_7_of_libm() {
        let mut worst = 0.0f32;
        let mut x = -8.0f32;
        while x <= 8.0 {
            worst = worst.max((erf(x) - libm::erf(x as f64) as f32).abs());
            x += 1.0 / 1024.0;
        }
        assert!(worst < 5e-7, "{worst:e}");
        assert!(erf(f32::NAN).is_nan());
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
    }
}
