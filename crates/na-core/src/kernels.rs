//! One interface for every family of neighbourhood-attention kernels:
//! [`Kernels`], implemented by the reference ([`crate::reference::Reference`])
//! and the fused SIMD kernels ([`crate::fused::Fused`]).
//!
//! A family provides four things: the forward and backward passes on the
//! calling thread into a caller-owned scratch buffer, the scratch lengths
//! they need, and (under `rayon`) the passes on every thread of the current
//! pool. The allocating entry points, [`Kernels::forward`] and
//! [`Kernels::backward`], are written once here on top of them: one scratch
//! allocation for [`Par::Seq`], a pool of the requested size for
//! [`Par::Rayon`].
//!
//! ```
//! use na_core::{fused::Fused, reference::Reference, Inputs, Kernels, Par, Params, Problem};
//!
//! /// Any family, any thread count: the output of `x` attending to itself.
//! fn attend<K: Kernels>(k: K, p: &Problem, x: &[f32], par: Par) -> Result<Vec<f32>, na_core::Error> {
//!     let mut out = vec![0.0f32; p.v_len()];
//!     let inputs = Inputs { query: x, key: x, value: x, rpb: None };
//!     k.forward(p, inputs, &mut out, None, par)?;
//!     Ok(out)
//! }
//!
//! let p = Problem::new(1, &[6, 6], 1, 4, 4, Params::new(&[3, 3])?)?;
//! let x: Vec<f32> = (0..p.qk_len()).map(|i| (i % 7) as f32 / 7.0).collect();
//! let a = attend(Reference, &p, &x, Par::Seq)?;
//! let b = attend(Fused::best(), &p, &x, Par::Seq)?;
//! assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-5));
//! # Ok::<(), na_core::Error>(())
//! ```

use crate::tensors::{Grads, Inputs, Saved};
#[cfg(feature = "alloc")]
use crate::Par;
use crate::{Element, Error, Problem};

/// A family of neighbourhood-attention kernels (forward: output and
/// log-sum-exp; backward: `d_query`, `d_key`, `d_value`, `d_rpb`) with the
/// arguments and results of SPEC.md.
///
/// Implementors write the passes with scratch (and the threaded passes);
/// the allocating [`Kernels::forward`] and [`Kernels::backward`] come with
/// the trait.
pub trait Kernels: Copy + Send + Sync {
    /// A short name for reports (`reference`, `fused`).
    fn name(&self) -> &'static str;

    /// Scratch (in `f32`) one call of [`Kernels::forward_with_scratch`]
    /// needs for `p`.
    fn forward_scratch_len(&self, p: &Problem) -> usize;

    /// Scratch (in `f32`) one call of [`Kernels::backward_with_scratch`]
    /// needs for `p`.
    fn backward_scratch_len(&self, p: &Problem) -> usize;

    /// Forward pass on the calling thread without allocation: writes `out`
    /// (`[batch, *spatial, heads, head_dim_v]`) and, if given, `lse`
    /// (`[batch, *spatial, heads]`). `scratch` needs
    /// [`Kernels::forward_scratch_len`] elements.
    fn forward_with_scratch<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        out: &mut [T],
        lse: Option<&mut [f32]>,
        scratch: &mut [f32],
    ) -> Result<(), Error>;

    /// Backward pass on the calling thread without allocation: writes
    /// `d_query`, `d_key`, `d_value` and, when requested (and `rpb` was
    /// given), `d_rpb`. `scratch` needs [`Kernels::backward_scratch_len`]
    /// elements.
    fn backward_with_scratch<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        s: Saved<'_, T>,
        g: Grads<'_, T>,
        scratch: &mut [f32],
    ) -> Result<(), Error>;

    /// Forward pass on every thread of the current rayon pool (bit-identical
    /// to [`Kernels::forward_with_scratch`]).
    #[cfg(feature = "rayon")]
    fn forward_threaded<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        out: &mut [T],
        lse: Option<&mut [f32]>,
    ) -> Result<(), Error>;

    /// Backward pass on every thread of the current rayon pool
    /// (bit-identical to [`Kernels::backward_with_scratch`]).
    #[cfg(feature = "rayon")]
    fn backward_threaded<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        s: Saved<'_, T>,
        g: Grads<'_, T>,
    ) -> Result<(), Error>;

    /// Forward pass with the threads `par` asks for: the scratch is allocated
    /// here ([`Par::Seq`]) or per worker thread ([`Par::Rayon`]). Results do
    /// not depend on `par`.
    #[cfg(feature = "alloc")]
    fn forward<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        out: &mut [T],
        lse: Option<&mut [f32]>,
        par: Par,
    ) -> Result<(), Error> {
        match par {
            Par::Seq => {
                let mut scratch = alloc::vec![0.0; self.forward_scratch_len(p)];
                self.forward_with_scratch(p, x, out, lse, &mut scratch)
            }
            #[cfg(feature = "rayon")]
            Par::Rayon(n) => Par::install(n, || self.forward_threaded(p, x, out, lse)),
        }
    }

    /// Backward pass with the threads `par` asks for (see
    /// [`Kernels::forward`]). Deterministic, and bit-identical for every `par`.
    #[cfg(feature = "alloc")]
    fn backward<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        s: Saved<'_, T>,
        g: Grads<'_, T>,
        par: Par,
    ) -> Result<(), Error> {
        match par {
            Par::Seq => {
                let mut scratch = alloc::vec![0.0; self.backward_scratch_len(p)];
                self.backward_with_scratch(p, x, s, g, &mut scratch)
            }
            #[cfg(feature = "rayon")]
            Par::Rayon(n) => Par::install(n, || self.backward_threaded(p, x, s, g)),
        }
    }
}
