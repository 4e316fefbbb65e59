//! Training on the CPU: data, and the forward and backward pass of every
//! layer the models use (groundwork for `na train`, issue 7).
//!
//! - [`idx`]: a strict reader of the IDX files of (Fashion-)MNIST and
//!   [`idx::find_fashion_mnist`], which looks in the Debian package's folder.
//! - [`layers`]: [`Linear`], [`Conv2d`], [`LayerNorm`], [`gelu`], the
//!   residual [`add_scaled`], [`pad_hw`] / [`crop_hw`], [`patch_merge`] and
//!   [`mean_tokens`], each with its backward.
//! - [`attention`]: [`NeighborhoodAttention`] on a fused `qkv` with relative
//!   positional bias, through `na_core::fused::{forward, backward}`.
//! - [`loss`]: [`CrossEntropy`] with label smoothing.
//!
//! Every forward gives the values [`crate::Cpu`] gives for the same
//! operation; every backward is checked against central differences in
//! `tests/train_grad.rs`.
//!
//! # Conventions
//! Activations are plain `Vec<f32>` in the models' channels-last layout
//! `[B, H, W, C]`, described by [`Bhw`] `= [B, H, W]` and a channel count.
//! A backward receives the forward's input (and whatever small state the
//! forward returned, e.g. [`NormStats`], [`NaSaved`]) plus the output's
//! gradient; it **returns** the input's gradient and **adds** parameter
//! gradients into caller-owned slices ([`ParamGrads`]), so one flat gradient
//! buffer can collect a whole model and several micro-batches.
//!
//! # Plan for the model-level backward (next step of issue 7)
//! 1. **Parameters as one flat buffer.** A `ParamSet` built from
//!    [`crate::param_shapes`] keeps every tensor of the model at an offset of
//!    one `Vec<f32>` (and the gradients at the same offsets of another), with
//!    a per-tensor flag "decay or not" (no weight decay on norms, biases,
//!    `rpb`, `gamma`). AdamW then runs over flat slices, and saving is one
//!    walk producing safetensors with the authors' key names, so the result
//!    loads with [`crate::Model::load`] for inference.
//! 2. **A tape per block.** `TrainModel::forward(params, images) -> Tape`
//!    runs the same sequence as `model.rs` (stem convolutions, stem norm,
//!    blocks, downsamplers, final norm, mean, head) with these layers and
//!    keeps, per layer, its input and its small state: for a block,
//!    `x`, `norm1` stats, the (padded) normed input of `qkv`, [`NaSaved`],
//!    the cropped attention output (input of `proj`), `x` after the first
//!    residual, `norm2` stats and input of `fc1`, the `fc1` output (the
//!    GELU input) and the GELU output (input of `fc2`).
//! 3. **Backward in reverse.** `TrainModel::backward(params, &tape, dlogits,
//!    grads)` walks the tape backwards; a residual `x + γ ⊙ f(x)` sends the
//!    incoming gradient both straight through and into
//!    [`add_scaled_backward`] → `f`'s backward, and adds the two; a padded
//!    block sends its gradient through [`pad_hw`] (the backward of the crop)
//!    and [`crop_hw`] (the backward of the pad).
//! 4. **Batches across threads.** Layers already use rayon inside (gemm,
//!    row loops, the attention kernels); reductions over the batch are done
//!    in fixed blocks added in order, so a fixed seed reproduces a run
//!    exactly whatever the thread count.
//! 5. **Check.** One full training step of a tiny model against a PyTorch
//!    implementation (fixture under `tools/`), and a 100-step run that
//!    lowers the loss in CI.

mod mat;

pub mod attention;
pub mod idx;
pub mod layers;
pub mod loss;
pub mod net;
pub mod optim;
pub mod rng;
pub mod run;

pub use attention::{NaSaved, NeighborhoodAttention};
pub use idx::{find_fashion_mnist, DataError, Dataset};
pub use layers::{
    add_scaled, add_scaled_backward, crop_hw, gelu, gelu_backward, mean_tokens,
    mean_tokens_backward, pad_hw, patch_merge, patch_merge_backward, Bhw, Conv2d, LayerNorm,
    Linear, NormStats, ParamGrads,
};
pub use loss::{CrossEntropy, LossOutput};
pub use net::{ParamEntry, ParamSet, Tape, TrainNet};
pub use optim::{AdamW, Schedule};
pub use rng::Rng;
pub use run::{
    evaluate, train, EvalReport, Event, RunPaths, TrainOptions, TrainResult, TrainState,
    FASHION_CLASSES,
};
