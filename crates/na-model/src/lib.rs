//! NAT, DiNAT, DiNAT_s and isotropic NAT/DiNAT vision models on
//! neighborhood attention, loading the published checkpoints' key names.
//!
//! - [`Config`]: the authors' constructor arguments as a serde schema, with
//!   every named preset of MODELS.md ([`Config::preset`]).
//! - [`WeightMap`]: safetensors or PyTorch `.pth` files, with the authors' or
//!   the HuggingFace port's key names (detected).
//! - [`Model`]: the network over a device-neutral [`Backend`]; [`Cpu`] runs
//!   it on `gemm` and `na-core`'s fused kernels.
//! - [`ops`]: the op set, every layer's forward and backward in one place;
//!   [`Net`]: the one architecture walk, used by inference and (with a
//!   [`Tape`]) by training ([`train`]).
//!
//! ```no_run
//! use na_model::{Backend, Config, Cpu, Model, WeightMap};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cpu = Cpu::new(0);
//! let cfg = Config::preset("nat_mini")?;
//! let weights = WeightMap::load("nat_mini.pth")?;
//! let model = Model::load(&cpu, &cfg, weights, false)?;
//! let x = cpu.upload(&[1, 3, 224, 224], &vec![0.0; 3 * 224 * 224])?;
//! let logits = cpu.download(&model.forward(&cpu, &x)?)?;
//! assert_eq!(logits.len(), 1000);
//! # Ok(()) }
//! ```
//!
//! # Layouts
//! Inputs are `[B, C, H, W]` (NCHW, like PyTorch); inside the network
//! activations are channels-last `[B, H, W, C]`; backbone features are
//! returned NCHW.
#![deny(missing_docs)]

pub mod backend;
pub mod config;
pub mod cpu;
pub mod error;
pub mod labels;
pub mod limits;
pub mod model;
pub mod net;
pub mod ops;
pub mod output;
pub mod params;
pub mod preprocess;
pub mod pth;
mod rng;
pub mod train;
pub mod weights;

pub use backend::{Backend, Backward, Tensor};
pub use config::param_shapes;
pub use config::{Arch, Config};
pub use cpu::{Cpu, CpuParams};
pub use error::{ModelError, Result};
pub use model::{analyze, Model, ModelInfo};
pub use net::{Net, Tape};
pub use params::{ParamEntry, ParamSet};
pub use weights::{HostTensor, Naming, WeightMap};
