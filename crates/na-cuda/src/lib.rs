//! Exact neighborhood attention (NA / DiNA) on NVIDIA GPUs, with na-core's
//! semantics (the project's `SPEC.md`): forward (`out`, `lse`) and backward
//! (`d_query`, `d_key`, `d_value`, `d_rpb`) for 1D, 2D and 3D, every
//! parameter (kernel size odd or even, stride, dilation, causal, relative
//! positional bias, `head_dim_v != head_dim`), storage in f32, f16 or bf16,
//! arithmetic in f32.
//!
//! # Design
//!
//! - **No link-time CUDA.** The driver (`libcuda`) and NVRTC (`libnvrtc`)
//!   are loaded at run time through `cudarc`'s dynamic loading; on a machine
//!   without them every entry point returns [`CudaError::NoCuda`] (or
//!   [`CudaError::NoDevice`]) and the crate builds and tests everywhere.
//! - **Kernels in CUDA C** (`kernels/*.cu`, embedded with `include_str!`),
//!   compiled by NVRTC at first use for the device's exact architecture
//!   (a cubin for `sm_XY`), specialised with `#define`s on rank, kernel size,
//!   causal flags, dilated axes, head dims, storage type and bias
//!   ([`KernelSpec`]); cached in memory per context and on disk
//!   ([`cache`]), keyed by source hash, options, architecture, driver and
//!   NVRTC versions, with a checksummed header.
//! - **Flash-style passes.** A block owns a tile of queries of one (batch,
//!   head) that share a dilation group; their union key window is staged
//!   through shared memory and every query keeps an online softmax in
//!   registers, so no `N x window` score tensor exists in global memory.
//!   The backward is deterministic: `d_query` per query tile, `d_key` and
//!   `d_value` gathered per key tile over the inverse neighbourhood, `d_rpb`
//!   from per-warp partial sums reduced in a fixed order (no atomics).
//!
//! # Status
//!
//! The kernels compile with NVRTC for sm_80 and sm_90 (checked in CI), and
//! their exact source runs on the CPU under a host emulation of the CUDA
//! built-ins (with AddressSanitizer) and matches na-core's reference
//! (`tests/emulate.rs`). On a GPU (an NVIDIA H200, driver 580 / CUDA 13.0,
//! 2026-12-04) the GPU tests (`tests/gpu.rs`, which skip without a device),
//! NATTEN's golden fixtures and compute-sanitizer's memcheck and racecheck
//! passed; the figures are in `bench/results/gpu-h200-2026-12-04/` of the
//! repository. The kernels use CUDA cores only (no tensor cores yet).
//!
//! # Example
//!
//! ```no_run
//! use na_core::{Inputs, Params, Problem};
//! use na_cuda::{forward_host, CudaContext};
//!
//! let ctx = CudaContext::new(0)?;
//! let p = Problem::new(1, &[56, 56], 2, 32, 32, Params::new(&[7, 7])?)?;
//! let q = vec![0.1f32; p.qk_len()];
//! let (k, v) = (q.clone(), vec![1.0f32; p.v_len()]);
//! let mut out = vec![0.0f32; p.v_len()];
//! let x = Inputs { query: &q, key: &k, value: &v, rpb: None };
//! forward_host(&ctx, &p, x, &mut out, None)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Cargo features
//!
//! None. CUDA is always loaded at run time; there is nothing to turn off.
#![deny(missing_docs)]

pub mod bench;
pub mod cache;
mod context;
mod device;
mod error;
mod host;
pub mod nvrtc;
pub mod spec;

pub use context::{
    device_count, driver_present, CudaContext, DeviceGrads, DeviceInfo, DeviceInputs, DeviceSaved,
    DeviceTensor,
};
pub use device::{Device, DeviceSpec};
pub use error::CudaError;
pub use host::{backward_host, forward_host};
pub use spec::KernelSpec;
