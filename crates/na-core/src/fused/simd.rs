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
        core::array::from_fn(|l| A::fma(a[l], b[l], c[l]))
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
    }
}
