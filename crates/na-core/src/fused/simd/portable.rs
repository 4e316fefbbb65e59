//! Portable vectors: `[f32; 8]` arrays whose lane loops the compiler
//! vectorises for the build target (SSE2 on x86-64, NEON on aarch64). Also
//! the readable specification of [`Simd`].

use super::{Arith, Plain, Simd};

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

/// The plain portable vectors used by [`crate::fused::Isa::Generic`].
pub(crate) type Generic = Lanes8<Plain>;
