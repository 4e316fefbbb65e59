//! Exact neighborhood attention (NA) and dilated neighborhood attention (DiNA)
//! with NATTEN's semantics: the index math, and CPU kernels.
//!
//! The contract is the project's `SPEC.md`: for each query, a window of
//! `kernel_size` keys per spatial axis that shifts (rather than shrinks) at the
//! borders, with stride groups, dilation groups, per-axis causal masking and an
//! optional relative positional bias (RPB).
//!
//! Two kernel families share one API: [`fused`] (tiled, SIMD with run-time
//! ISA dispatch, multithreaded; the one to use) and [`reference`](mod@reference) (a direct
//! reading of the contract, kept as the oracle the fused kernels are tested
//! against).
//!
//! # Layout
//!
//! Tensors are row-major, contiguous and **heads-last**:
//! `query`/`key` are `[batch, *spatial, heads, head_dim]`, `value` and the
//! output `[batch, *spatial, heads, head_dim_v]`, `lse` `[batch, *spatial,
//! heads]` (always `f32`), `rpb` `[heads, 2*k_0-1, ..., 2*k_{n-1}-1]`, with 1,
//! 2 or 3 spatial axes. Storage may be `f32`, [`half::f16`] or [`half::bf16`];
//! arithmetic is always `f32`.
//!
//! # Example
//!
//! ```
//! use na_core::{reference, Par, Params, Problem};
//!
//! // One image of 8x8 tokens, 2 heads of 4 channels, a 3x3 window with dilation 2.
//! let params = Params::new(&[3, 3])?.with_dilation(&[2])?;
//! let p = Problem::new(1, &[8, 8], 2, 4, 4, params)?;
//! let q = vec![0.1f32; p.qk_len()];
//! let (k, v) = (q.clone(), vec![1.0f32; p.v_len()]);
//! let mut out = vec![0.0f32; p.v_len()];
//! let mut lse = vec![0.0f32; p.lse_len()];
//! let x = reference::Inputs { query: &q, key: &k, value: &v, rpb: None };
//! reference::forward(&p, x, &mut out, Some(&mut lse), Par::Seq)?;
//! assert!(out.iter().all(|&o| (o - 1.0).abs() < 1e-6));
//! # Ok::<(), na_core::Error>(())
//! ```
//!
//! # Cargo features
//!
//! - `std` (default): implies `alloc`; enables [`npy`] and the `rayon` feature's
//!   prerequisites.
//! - `rayon` (default): [`Par::Rayon`], multithreaded kernels.
//! - `alloc`: the allocating entry points ([`fused::forward`],
//!   [`fused::backward`], [`reference::forward`], [`reference::backward`]).
//!
//! With `--no-default-features` the crate is `no_std` and allocation-free:
//! use the `*_with_scratch` entry points with caller-provided buffers.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

/// The README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "std"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod dtype;
mod error;
pub mod fused;
mod kernels;
mod par;
mod problem;
pub mod reference;
mod tensors;
pub mod window;

#[cfg(feature = "std")]
pub mod npy;

pub use dtype::{DType, Element};
pub use error::Error;
pub use half::{bf16, f16};
pub use kernels::Kernels;
pub use par::Par;
pub use problem::{Params, Problem, MAX_AXES};
pub use tensors::{Grads, Inputs, Saved};
