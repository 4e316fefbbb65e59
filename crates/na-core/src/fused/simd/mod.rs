//! One vector type per ISA behind the [`Simd`] trait: explicit `std::arch`
//! intrinsics on x86-64 (AVX2+FMA: 8 lanes in `avx2.rs`, AVX-512F: 16 in
//! `avx512.rs`) and aarch64 (NEON: 8 lanes in two registers, `neon.rs`),
//! and arrays of `f32` elsewhere (`portable.rs`, also the readable
//! specification).
//!
//! Explicit vectors matter for the sliding-window kernels: left to itself,
//! the auto-vectoriser rebuilds overlapping unaligned loads from shuffles and
//! spills accumulators, which costs several times the arithmetic.
//!
//! The x86 types are tokens: they can only be made by `unsafe fn new`, whose
//! contract is that the CPU has the features; the dispatcher
//! ([`super::isa`]) makes them only after run-time detection, inside
//! `#[target_feature]` functions.

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod avx2;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod avx512;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod neon;
mod portable;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) use avx2::Avx2;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) use avx512::Avx512;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub(crate) use neon::Neon;
pub(crate) use portable::Generic;

/// How a kernel multiplies and adds: fused (one rounding, one instruction on
/// FMA hardware) or plain (for targets without FMA, where a fused multiply-add
/// would be a slow library call).
pub(crate) trait Arith: Copy {
    /// `a * b + c`.
    fn fma(a: f32, b: f32, c: f32) -> f32;
}

/// `a * b + c` with two roundings.
#[derive(Clone, Copy)]
pub(crate) struct Plain;

impl Arith for Plain {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Fused multiply-add (`f32::mul_add`) for the x86-64 ISAs, which are
/// only chosen where the CPU has FMA (NEON has its own, `no_std` one).
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[derive(Clone, Copy)]
pub(crate) struct Fused;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
impl Arith for Fused {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// A SIMD vector of `f32` lanes and the operations the kernels need.
/// An operation generic over the ISA, run by [`Simd::vectorize`]: its
/// `with_simd` is `#[inline(always)]`, so it is compiled inside the
/// target-feature function of each ISA (a closure would not be: closures do
/// not inherit target features).
pub(crate) trait WithSimd {
    /// What the operation returns.
    type Output;
    /// Runs the operation on `s`.
    fn with_simd<S: Simd>(self, s: S) -> Self::Output;
}

pub(crate) trait Simd: Copy {
    /// Scalar arithmetic for the lane loops the compiler vectorises itself.
    type A: Arith;
    /// The vector register type.
    type V: Copy;
    /// Vector registers of the ISA: how many accumulators a register-blocked
    /// micro-kernel may keep (16 on AVX2 and in portable code, 32 on AVX-512).
    const REGS: usize = 16;
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
    /// Runs `op` with this ISA's target features enabled, in a function of
    /// its own (not inlined into the caller): code that does not depend on
    /// the storage type is then compiled once per ISA, not once per caller.
    #[inline(never)]
    fn vectorize<Op: WithSimd>(self, op: Op) -> Op::Output {
        op.with_simd(self)
    }
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
