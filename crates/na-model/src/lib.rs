//! NAT, DiNAT, DiNAT_s and isotropic NAT/DiNAT vision models on
//! neighborhood attention, loading the published checkpoints' key names.
//!
//! (crate documentation is completed with the model code)
#![deny(missing_docs)]

pub mod pth;
pub mod preprocess;
pub mod labels;
