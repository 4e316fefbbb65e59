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
//! - [`classify`] (feature `image`): image → tensor → logits → top-k, for
//!   the built-in Fashion-MNIST model and any classifier; [`fashion`]: the
//!   data set's facts and (feature `fashion`) the built-in model.
//!
//! A program needs only the [`prelude`]:
//!
//! ```no_run
//! use na_model::prelude::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A published checkpoint, its preset and ImageNet's pipeline.
//! let cfg = Config::preset("nat_mini")?;
//! let model = Model::load(Cpu::new(0), &cfg, WeightMap::load("nat_mini.pth")?, Head::Classifier)?;
//! let classifier = Classifier::new(model)?;
//! for p in classifier.classify_file("cat.jpg", 5)? {
//!     println!("{:5.1}% {}", 100.0 * p.probability, p.label);
//! }
//! // Or tensors in, logits out.
//! let logits = classifier.model().infer(&[1, 3, 224, 224], &vec![0.0; 3 * 224 * 224])?;
//! assert_eq!(logits.shape, [1, 1000]);
//! # Ok(()) }
//! ```
//!
//! # Cargo features
//!
//! | feature | default | what it adds | dependencies |
//! |---|---|---|---|
//! | `image` | yes | [`preprocess`] (decoding, Pillow-exact resizing), [`classify`] | `image` |
//! | `pth` | yes | [`pth`]: PyTorch `.pth` checkpoints read without Python | `zip` |
//! | `train` | yes | [`train`]: the training loop, IDX data, checkpoints | `flate2`, `crc32fast` |
//! | `fashion` | yes | the built-in Fashion-MNIST model's weights (3.9 MB) in [`fashion`] | none |
//!
//! With `default-features = false` the crate keeps the models, safetensors
//! weights and the CPU backend (inference on tensors).
//!
//! # Layouts
//! Inputs are `[B, C, H, W]` (NCHW, like PyTorch); inside the network
//! activations are channels-last `[B, H, W, C]`; backbone features are
//! returned NCHW.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
#[cfg(feature = "image")]
#[cfg_attr(docsrs, doc(cfg(feature = "image")))]
pub mod classify;
pub mod config;
pub mod cpu;
pub mod error;
pub mod fashion;
pub mod labels;
pub mod limits;
pub mod model;
pub mod net;
pub mod ops;
pub mod output;
pub mod params;
#[cfg(feature = "image")]
#[cfg_attr(docsrs, doc(cfg(feature = "image")))]
pub mod preprocess;
#[cfg(feature = "pth")]
#[cfg_attr(docsrs, doc(cfg(feature = "pth")))]
pub mod pth;
pub mod rng;
#[cfg(feature = "train")]
#[cfg_attr(docsrs, doc(cfg(feature = "train")))]
pub mod train;
pub mod weights;

pub use backend::{Backend, Backward, Tensor};
pub use config::param_shapes;
pub use config::{Arch, Config};
pub use cpu::{logits_parallel, Cpu, CpuParams};
pub use error::{CheckpointError, ModelError, Result, ResumeRefusal, WeightsError};
pub use model::{analyze, Head, Model, ModelInfo};
pub use net::{Net, Tape};
pub use params::{ParamEntry, ParamSet};
pub use weights::{HostTensor, Naming, WeightMap};

/// What a program that runs models needs, in one import:
/// `use na_model::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "image")]
    pub use crate::classify::{Classifier, ClassifyError, Pipeline, Prediction};
    #[cfg(feature = "image")]
    pub use crate::preprocess::{load_rgb, Polarity, Transform};
    pub use crate::{Backend, Config, Cpu, Head, HostTensor, Model, ModelError, WeightMap};
}
