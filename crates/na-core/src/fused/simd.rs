//! One vector type per ISA behind the [`Simd`] trait: explicit `std::arch`
//! intrinsics on x86-64 (AVX2+FMA: 8 lanes, AVX-512F: 16), and arrays of
//! `f32` elsewhere, which are also the readable specification.
//!
//! Explicit vectors matter for the sliding-window kernels: left to itself,
//! the auto-vectoriser rebuilds overlapping unaligned loads from shuffles and
//! spills accumulators, which costs several times the arithmetic.
//!
//! The x86 types are tokens: they can only be made by `unsafe fn new`, whose
//! contract is that the CPU has the features; the dispatcher in `tile.rs`
//! makes them only after run-time detection, inside `#[target_feature]`
//! functions.

use super::kernels::{Arith, Plain};

/// A SIMD vector of `f32` lanes and the operations the kernels need.
pub(crate) trait Simd: Copy {
    /// Scalar arithmetic for the lane loops the compiler vectorises itself.
    type A: Arith;
    /// The vector register type.
    type V: Copy;
    /// All lanes zero.
    fn zero(self) -> Self::V;
    /// All lanes `x`.
    fn splat(self, x: f32) -> Self::V;
    /// Loads the first lanes of `s` (panics if `s` is shorter: every caller
    /// passes a slice of exactly one vector).
    fn load(self, s: &[f32]) -> Self::V;
    /// Stores into the first lanes of `s` (same contract).
    fn store(self, v: Self::V, s: &mut [f32]);
    /// `a * b + c`.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// An 8x8 transpose: `dst[c * ds + l] = src[l * ss + c]` for `l, c < 8`.
    #[inline(always)]
    fn transpose8(self, src: &[f32], ss: usize, dst: &mut [f32], ds: usize) {
        for l in 0..8 {
            let row = &src[l * ss..][..8];
            for (c, v) in row.iter().enumerate() {
                dst[c * ds + l] = *v;
            }
        }
    }
}

/// Portable vectors: arrays of 8 lanes with arithmetic `A`.
#[derive(Clone, Copy)]
pub(crate) struct Lanes8<A>(core::marker::PhantomData<A>);

impl<A: Arith> Lanes8<A> {
    pub(crate) fn new() -> Self {
        Lanes8(core::marker::PhantomData)
    }
}

impl<A: Arith> Simd for Lanes8<A> {
    type A = A;
    type V = [f32; 8];
    #[inline(always)]
    fn zero(self) -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    fn splat(self, x: f32) -> [f32; 8] {
        [x; 8]
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> [f32; 8] {
        let mut v = [0.0; 8];
        v.copy_from_slice(&s[..8]);
        v
    }
    #[inline(always)]
    fn store(self, v: [f32; 8], s: &mut [f32]) {
        s[..8].copy_from_slice(&v);
    }
    #[inline(always)]
    fn fma(self, a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        let mut r = [0.0; 8];
        for l in 0..8 {
            r[l] = A::fma(a[l], b[l], c[l]);
        }
        r
    }
}

/// The plain portable vectors used by [`super::Isa::Generic`].
pub(crate) type Generic = Lanes8<Plain>;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod x86 {
    use super::Simd;
    use crate::fused::kernels::Fused;
    use core::arch::x86_64::*;

    /// The 8x8 transpose of [`Simd::transpose8`] in AVX registers: eight row
    /// loads, 24 shuffles, eight column stores.
    ///
    /// # Safety
    /// The CPU must support AVX.
    #[inline(always)]
    unsafe fn transpose8_avx(src: &[f32], ss: usize, dst: &mut [f32], ds: usize) {
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
        type A = Fused;
        type V = __m512;
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
}
