//! no_std inference of NAT/DiNAT classifiers with a fixed memory plan and
//! borrowed weights.
//!
//! - A [weight blob](mod@format) holds the configuration and every tensor
//!   (f32, f16, or int8 with one scale per output channel for the linear
//!   layers; the authors' checkpoint key names), validated once by
//!   [`Blob::parse`] and then viewed in place, never copied.
//! - A [`Plan`] computes, for a configuration and an input size, the exact
//!   length of the one arena inference needs (activations, the attention
//!   operator's scratch, a weight-row buffer), the multiply-adds and the
//!   map size of every level.
//! - [`EdgeModel::logits`] runs the std model's walk (`na-model`'s
//!   `net.rs`: same function, to rounding), with attention through
//!   `na-core`'s fused operator ([`na_core::fused::forward_with_scratch`]),
//!   writing only into the caller's `&mut [f32]` arena: no allocator.
//!
//! Only hierarchical NAT and DiNAT (two 3×3 stem convolutions,
//! convolutional downsamplers) run; DiNAT_s and isotropic models are a
//! typed [`EdgeError::Unsupported`].
//!
//! # Example
//!
//! ```
//! use na_edge::{write_blob, AlignedBlob, Arch, DType, EdgeConfig, EdgeModel, Plan};
//!
//! // A tiny DiNAT: 1 input channel, E = 8, two levels of one block,
//! // kernel 3, dilation 2 on the first level, layer scale, 4 classes.
//! let cfg = EdgeConfig::new(Arch::Dinat, 1, 8, &[1, 1], &[1, 2], &[16, 32], 3, 4)?
//!     .with_dilations(0, &[2])?
//!     .with_layer_scale(true);
//!
//! // Deterministic pseudo-random weights for every tensor the config names.
//! let mut seed = 1u32;
//! let mut tensors = Vec::new();
//! cfg.for_each_tensor(|name, shape| {
//!     let values: Vec<f32> = (0..shape.numel())
//!         .map(|_| {
//!             seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
//!             (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
//!         })
//!         .collect();
//!     let dims: Vec<usize> = shape.dims().iter().map(|&d| d as usize).collect();
//!     tensors.push((name.to_string(), dims, values));
//!     Ok(())
//! })?;
//! let named: Vec<(&str, &[usize], &[f32])> = tensors
//!     .iter()
//!     .map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice()))
//!     .collect();
//! let bytes = write_blob(&cfg, &named, DType::F16)?;
//!
//! // Load at an aligned address, plan for a 16×16 image, run in one arena.
//! let blob = AlignedBlob::new(&bytes);
//! let model = EdgeModel::new(&blob)?;
//! let plan = Plan::new(model.config(), 16, 16)?;
//! let mut arena = vec![0.0f32; plan.arena_len()];
//! let image = vec![0.5f32; plan.input_len()];
//! let mut logits = [0.0f32; 4];
//! model.logits(&plan, &image, &mut arena, &mut logits)?;
//! assert!(logits.iter().all(|v| v.is_finite()));
//! println!("{} bytes of arena, {} MACs", plan.arena_bytes(), plan.macs());
//! # Ok::<(), na_edge::EdgeError>(())
//! ```
//!
//! # Cargo features
//!
//! - `std` (default): implies `alloc`; `na-core`'s `std` (run-time SIMD
//!   detection on x86-64).
//! - `alloc`: the blob writer [`write_blob`] and [`AlignedBlob`].
//!
//! With `--no-default-features` the crate is `no_std` and needs no
//! allocator: parsing, planning and inference use only the caller's slices.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod config;
pub mod error;
pub mod format;
pub mod model;
mod ops;
pub mod plan;

pub use config::{Arch, EdgeConfig, MAX_DEPTH, MAX_LEVELS};
pub use error::{EdgeError, KeyName, Shape};
#[cfg(feature = "alloc")]
pub use format::{write_blob, AlignedBlob};
pub use format::{Blob, DType, Tensor, TensorData};
pub use model::EdgeModel;
pub use plan::{LevelPlan, Plan};
