//! aarch64 NEON: 8 lanes in two `float32x4_t`, fused multiply-add, and the
//! 8x8 transpose as four 4x4 `trn1`/`trn2` transposes.
//!
//! NEON is part of the aarch64 baseline (every aarch64 Rust target enables
//! the `neon` target feature), so this ISA is chosen at compile time: it
//! needs neither run-time detection nor `std`, and `no_std` builds for
//! aarch64 get it too. The module only exists where `target_feature =
//! "neon"` is enabled, which is what makes its intrinsics sound to call.

use super::{Arith, Simd};
use core::arch::aarch64::*;

/// Scalar fused multiply-add through a NEON vector FMA (one `fmla`, or
/// `fmadd` once the compiler folds it): `f32::mul_add` needs `std`, and this
/// ISA must also serve `no_std` builds.
#[derive(Clone, Copy)]
pub(crate) struct NeonFma;

impl Arith for NeonFma {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        // SAFETY: this module is compiled only with the `neon` target feature
        // enabled (see the `cfg` on `mod neon`), so the intrinsics exist.
        unsafe { vgetq_lane_f32::<0>(vfmaq_f32(vdupq_n_f32(c), vdupq_n_f32(a), vdupq_n_f32(b))) }
    }
}

/// NEON, 8 lanes as two 4-lane registers. Safe to make: NEON is enabled at
/// compile time wherever this type exists.
#[derive(Clone, Copy)]
pub(crate) struct Neon(());

impl Neon {
    /// The NEON token (NEON is a compile-time feature of the target).
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Neon(())
    }
}

/// A 4x4 transpose of four rows.
#[inline(always)]
fn transpose4(r: [float32x4_t; 4]) -> [float32x4_t; 4] {
    // SAFETY: NEON is enabled at compile time (see the module docs); the
    // intrinsics only move register lanes.
    unsafe {
        let a0 = vtrn1q_f32(r[0], r[1]); // r0.0 r1.0 r0.2 r1.2
        let a1 = vtrn2q_f32(r[0], r[1]); // r0.1 r1.1 r0.3 r1.3
        let a2 = vtrn1q_f32(r[2], r[3]); // r2.0 r3.0 r2.2 r3.2
        let a3 = vtrn2q_f32(r[2], r[3]); // r2.1 r3.1 r2.3 r3.3
        let (b0, b1) = (vreinterpretq_f64_f32(a0), vreinterpretq_f64_f32(a1));
        let (b2, b3) = (vreinterpretq_f64_f32(a2), vreinterpretq_f64_f32(a3));
        [
            vreinterpretq_f32_f64(vtrn1q_f64(b0, b2)),
            vreinterpretq_f32_f64(vtrn1q_f64(b1, b3)),
            vreinterpretq_f32_f64(vtrn2q_f64(b0, b2)),
            vreinterpretq_f32_f64(vtrn2q_f64(b1, b3)),
        ]
    }
}

impl Simd for Neon {
    type A = NeonFma;
    type V = float32x4x2_t;
    #[inline(always)]
    fn zero(self) -> float32x4x2_t {
        self.splat(0.0)
    }
    #[inline(always)]
    fn splat(self, x: f32) -> float32x4x2_t {
        // SAFETY: NEON is enabled at compile time (see the module docs).
        unsafe { float32x4x2_t(vdupq_n_f32(x), vdupq_n_f32(x)) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> float32x4x2_t {
        let s = &s[..8];
        // SAFETY: `s` holds 8 readable f32 (checked above); NEON as in `splat`.
        unsafe { float32x4x2_t(vld1q_f32(s.as_ptr()), vld1q_f32(s[4..].as_ptr())) }
    }
    #[inline(always)]
    fn store(self, v: float32x4x2_t, s: &mut [f32]) {
        let s = &mut s[..8];
        // SAFETY: `s` holds 8 writable f32 (checked above); NEON as in `splat`.
        unsafe {
            vst1q_f32(s.as_mut_ptr(), v.0);
            vst1q_f32(s[4..].as_mut_ptr(), v.1);
        }
    }
    #[inline(always)]
    fn fma(self, a: float32x4x2_t, b: float32x4x2_t, c: float32x4x2_t) -> float32x4x2_t {
        // SAFETY: NEON is enabled at compile time (see the module docs).
        unsafe { float32x4x2_t(vfmaq_f32(c.0, a.0, b.0), vfmaq_f32(c.1, a.1, b.1)) }
    }
    #[inline(always)]
    fn transpose8(self, src: &[f32], ss: usize, dst: &mut [f32], ds: usize) {
        // Rows 0-3 / 4-7 of `src`, columns 0-3 (`lo`) and 4-7 (`hi`).
        let mut lo = [[self.splat(0.0).0; 4]; 2];
        let mut hi = lo;
        for l in 0..8 {
            let v = self.load(&src[l * ss..]);
            lo[l / 4][l % 4] = v.0;
            hi[l / 4][l % 4] = v.1;
        }
        // Column c of `src` is row c of `dst`: its lanes 0-3 come from source
        // rows 0-3, lanes 4-7 from rows 4-7.
        let (c_lo, c_hi) = (
            [transpose4(lo[0]), transpose4(lo[1])],
            [transpose4(hi[0]), transpose4(hi[1])],
        );
        for c in 0..4 {
            self.store(float32x4x2_t(c_lo[0][c], c_lo[1][c]), &mut dst[c * ds..]);
            self.store(
                float32x4x2_t(c_hi[0][c], c_hi[1][c]),
                &mut dst[(c + 4) * ds..],
            );
        }
    }
}
