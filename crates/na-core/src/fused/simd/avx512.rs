//! AVX-512F: 16 lanes in one `__m512`.

use super::avx2::transpose8_avx;
use super::{Fused, Simd};
use core::arch::x86_64::*;

/// AVX-512F, 16 lanes. A token: only `unsafe fn new` makes one.
#[derive(Clone, Copy)]
pub(crate) struct Avx512(());

impl Avx512 {
    /// # Safety
    /// The CPU must support AVX-512F.
    #[inline(always)]
    pub(crate) unsafe fn new() -> Self {
        Avx512(())
    }
}

impl Simd for Avx512 {
    #[inline(always)]
    fn vectorize<Op: super::WithSimd>(self, op: Op) -> Op::Output {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn run<Op: super::WithSimd>(s: Avx512, op: Op) -> Op::Output {
            op.with_simd(s)
        }
        // SAFETY: a `Avx512` token exists only where AVX-512F, AVX2 and FMA were detected
        // (its `new` is unsafe and every caller checks the ISA first).
        unsafe { run(self, op) }
    }
    type A = Fused;
    type V = __m512;
    const REGS: usize = 32;
    #[inline(always)]
    fn zero(self) -> __m512 {
        // SAFETY: an `Avx512` token exists only on CPUs with AVX-512F.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        // SAFETY: as in `zero`.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m512 {
        let s = &s[..16];
        // SAFETY: `s` holds 16 readable f32 (checked above); AVX-512F as in `zero`.
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, v: __m512, s: &mut [f32]) {
        let s = &mut s[..16];
        // SAFETY: `s` holds 16 writable f32 (checked above); AVX-512F as in `zero`.
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: as in `zero`.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn transpose8(self, src: &[f32], ss: usize, dst: &mut [f32], ds: usize) {
        // SAFETY: an `Avx512` token exists only on CPUs with AVX-512F
        // (which implies AVX).
        unsafe { transpose8_avx(src, ss, dst, ds) }
    }
}
