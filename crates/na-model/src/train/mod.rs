//! Training on the CPU: data, the optimiser, the schedule and the loop.
//!
//! - [`idx`]: a strict reader of the IDX files of (Fashion-)MNIST and
//!   [`idx::find_fashion_mnist`], which looks in the Debian package's folder.
//! - [`optim`]: [`AdamW`] over the flat parameters and [`Schedule`] (warm-up
//!   and cosine decay).
//! - [`run`]: the loop ([`train`]), evaluation and checkpoints.
//!
//! The network itself is the inference model's: [`crate::net::Net`] records
//! a [`crate::net::Tape`] in its forward pass and walks it back in
//! [`crate::net::Net::backward`], through the layers of [`crate::ops`] on the
//! [`crate::Cpu`] backend. Batches are cut into micro-batches that each run
//! on one core, and their gradients are added in a fixed order, so a fixed
//! seed reproduces a run exactly whatever the thread count.

pub mod idx;
pub mod optim;
pub mod run;

pub use crate::rng::Rng;
pub use idx::{find_fashion_mnist, DataError, Dataset};
pub use optim::{AdamW, Schedule};
pub use run::{
    evaluate, train, Averages, Chosen, EvalReport, Event, Measured, RunPaths, TrainOptions,
    TrainResult, TrainState, FASHION_CLASSES,
};
