//! AVX2 with FMA: 8 lanes in one `__m256`, and the 8x8 transpose in AVX
//! registers that [`super::Avx512`] shares.

use super::{Fused, Simd};
use core::arch::x86_64::*;

/// The 8x8 transpose of [`Simd::transpose8`] in AVX registers: eight row
/// loads, 24 shuffles, eight column stores.
///
/// # Safety
/// The CPU must support AVX.
#[inline(always)]
pub(super) unsafe fn transpose8_avx(src: &[f32], ss: usize, dst: &mut [f32], ds: usize) {
    let mut r: [&[f32]; 8] = [&[]; 8];
    for (l, rl) in r.iter_mut().enumerate() {
        *rl = &src[l * ss..][..8];
    }
    // SAFETY (whole block): each `r[l]` holds 8 readable f32 (sliced
    // above), each destination row is sliced to 8 writable f32 below, and
    // the caller guarantees AVX.
    unsafe {
        let mut v = [_mm256_setzero_ps(); 8];
        for (vl, rl) in v.iter_mut().zip(r) {
            *vl = _mm256_loadu_ps(rl.as_ptr());
        }
        let t0 = _mm256_unpacklo_ps(v[0], v[1]);
        let t1 = _mm256_unpackhi_ps(v[0], v[1]);
        let t2 = _mm256_unpacklo_ps(v[2], v[3]);
        let t3 = _mm256_unpackhi_ps(v[2], v[3]);
        let t4 = _mm256_unpacklo_ps(v[4], v[5]);
        let t5 = _mm256_unpackhi_ps(v[4], v[5]);
        let t6 = _mm256_unpacklo_ps(v[6], v[7]);
        let t7 = _mm256_unpackhi_ps(v[6], v[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let c = [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ];
        for (i, ci) in c.into_iter().enumerate() {
            let d = &mut dst[i * ds..][..8];
            _mm256_storeu_ps(d.as_mut_ptr(), ci);
        }
    }
}

/// AVX2 + FMA, 8 lanes. A token: only `unsafe fn new` makes one.
#[derive(Clone, Copy)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline(always)]
    pub(crate) unsafe fn new() -> Self {
        Avx2(())
    }
}

impl Simd for Avx2 {
    #[inline(always)]
    fn vectorize<Op: super::WithSimd>(self, op: Op) -> Op::Output {
        #[target_feature(enable = "avx2,fma")]
        fn run<Op: super::WithSimd>(s: Avx2, op: Op) -> Op::Output {
            op.with_simd(s)
        }
        // SAFETY: a `Avx2` token exists only where AVX2 and FMA were detected
        // (its `new` is unsafe and every caller checks the ISA first).
        unsafe { run(self, op) }
    }
    type A = Fused;
    type V = __m256;
    #[inline(always)]
    fn zero(self) -> __m256 {
        // SAFETY: an `Avx2` token exists only on CPUs with AVX2 (see `new`).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        // SAFETY: as in `zero`.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m256 {
        let s = &s[..8];
        // SAFETY: `s` holds 8 readable f32 (checked above); AVX2 as in `zero`.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, v: __m256, s: &mut [f32]) {
        let s = &mut s[..8];
        // SAFETY: `s` holds 8 writable f32 (checked above); AVX2 as in `zero`.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: an `Avx2` token exists only on CPUs with FMA (see `new`).
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn transpose8(self, src: &[f32], ss: usize, dst: &mut [f32], ds: usize) {
        // SAFETY: an `Avx2` token exists only on CPUs with AVX2 (so AVX).
        unsafe { transpose8_avx(src, ss, dst, ds) }
    }
}
