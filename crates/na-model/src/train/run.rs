//! The training loop on a labelled grey-image data set (Fashion-MNIST):
//! shuffling, augmentation, AdamW with warm-up and cosine decay,
//! evaluation, checkpoints and resuming.
//!
//! A run is a pure function of its [`TrainOptions`] (seed included) and the
//! data: the shuffles and augmentations come from one [`Rng`] whose state is
//! saved at every epoch boundary, so a resumed run continues exactly where
//! the interrupted one would have gone.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::idx::Dataset;
use super::optim::{AdamW, Schedule};
use crate::backend::{Backend, Backward};
use crate::config::Config;
use crate::cpu::CpuParams;
use crate::cpu::{logits_parallel, Cpu};
use crate::error::{CheckpointError, ModelError, Result, ResumeRefusal};
use crate::model::Model;
use crate::net::{Net, Tape};
use crate::ops::Weights;
use crate::ops::{shape_err, CrossEntropy};
use crate::output::{Outputs, StagedDir};
use crate::params::ParamSet;
use crate::rng::Rng;
use crate::weights::WeightMap;

pub use crate::fashion::{
    normalize, CLASSES as FASHION_CLASSES, MEAN as FASHION_MEAN, STD as FASHION_STD,
};

/// The chosen weights in a training output folder (rewritten after every
/// epoch): those of the best validation accuracy so far. Inside a checkpoint
/// set, the same name holds the raw weights the optimiser is updating.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The optimiser's moments (`m.<name>`, `v.<name>`), inside a checkpoint set.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The moving average of the weights, inside a checkpoint set (when
/// [`TrainOptions::ema_decay`] is on).
pub const EMA_FILE: &str = "ema.safetensors";
/// The chosen weights ([`TrainState::chosen`]), inside a checkpoint set;
/// published beside it as [`WEIGHTS_FILE`].
pub const CHOSEN_FILE: &str = "chosen.safetensors";
/// The checkpoint manifest: configuration, options, progress, history, and
/// the set directory it belongs to with each file's length and CRC-32. It is
/// written last, so it always names a complete set.
pub const STATE_FILE: &str = "checkpoint.json";
/// The prefix of a checkpoint set's directory (`checkpoint-s<step>`).
pub const SET_PREFIX: &str = "checkpoint-s";

/// Hyper-parameters of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Final learning rate of the cosine.
    pub min_lr: f32,
    /// AdamW weight decay (matrices and kernels only).
    pub weight_decay: f32,
    /// Warm-up length in epochs (fractions allowed).
    pub warmup_epochs: f32,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f32,
    /// Random shift of up to this many pixels each way (zero-padded random
    /// crop); 0 disables it.
    pub shift: usize,
    /// Random horizontal flips (probability 1/2).
    pub hflip: bool,
    /// Seed of the initialisation, shuffles and augmentations.
    pub seed: u64,
    /// Stop after this many steps in all (for short checks); the schedule is
    /// still that of `epochs`, and a partial epoch is not evaluated.
    pub max_steps: Option<u64>,
    /// Evaluate on the validation split every this many epochs (and after
    /// the last).
    pub eval_every: usize,
    /// Random erasing: the probability that an image gets one rectangle
    /// (2–33% of its area, aspect ratio 0.3–3.3) set to the normalised mean
    /// (timm's `RandomErasing`, constant mode); 0 disables it. Absent from
    /// older checkpoints, where it reads as 0.
    #[serde(default)]
    pub erase_prob: f32,
    /// Decay of the exponential moving average of the weights that is
    /// validated, chosen and shipped (warmed up as `min(decay, (1 + t) /
    /// (10 + t))` at step `t`); 0 validates the raw weights.
    #[serde(default)]
    pub ema_decay: f32,
    /// Gradients whose global L2 norm exceeds this are scaled down to it
    /// before the update; 0 disables clipping.
    #[serde(default)]
    pub clip_grad_norm: f32,
    /// The last this many training images are held out as the validation
    /// split, which chooses the shipped weights; the test set is evaluated
    /// once, at the end, with the chosen weights. 0: no validation (the
    /// final weights are chosen).
    #[serde(default)]
    pub val_images: usize,
    /// Start from these weights (a safetensors file holding every parameter
    /// of the configuration, e.g. an earlier run's `model.safetensors`)
    /// instead of a random initialisation: a warm restart, whose schedule
    /// (warm-up, cosine) starts again from step 0 with fresh optimiser
    /// moments. `None`: random initialisation from `seed`. Absent from older
    /// checkpoints, where it reads as `None`.
    #[serde(default)]
    pub init: Option<PathBuf>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 50,
            batch_size: 32,
            lr: 1e-3,
            min_lr: 1e-5,
            weight_decay: 0.05,
            warmup_epochs: 1.0,
            label_smoothing: 0.1,
            shift: 2,
            hflip: true,
            seed: 0,
            max_steps: None,
            eval_every: 1,
            erase_prob: 0.25,
            ema_decay: 0.999,
            clip_grad_norm: 1.0,
            val_images: 5000,
            init: None,
        }
    }
}

impl TrainOptions {
    fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| Err(ModelError::Training { field, reason });
        if self.epochs == 0 || self.batch_size == 0 || self.eval_every == 0 {
            let positive = if self.epochs == 0 {
                "epochs"
            } else if self.batch_size == 0 {
                "batch_size"
            } else {
                "eval_every"
            };
            return bad(
                positive,
                format!(
                    "epochs ({}), batch_size ({}) and eval_every ({}) must be positive",
                    self.epochs, self.batch_size, self.eval_every
                ),
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(
                "lr",
                format!(
                    "learning rates {} (peak) and {} (final) are not 0 <= final <= peak",
                    self.lr, self.min_lr
                ),
            );
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay < 1.0) {
            return bad(
                "weight_decay",
                format!("weight_decay {} is not in [0, 1)", self.weight_decay),
            );
        }
        if !(self.warmup_epochs >= 0.0 && self.warmup_epochs.is_finite()) {
            return bad(
                "warmup_epochs",
                format!("warmup_epochs {} is negative", self.warmup_epochs),
            );
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(
                "label_smoothing",
                format!("label_smoothing {} is not in [0, 1)", self.label_smoothing),
            );
        }
        if self.shift > 8 {
            return bad("shift", format!("shift {} is above 8 pixels", self.shift));
        }
        if !(0.0..=1.0).contains(&self.erase_prob) {
            return bad(
                "erase_prob",
                format!("erase_prob {} is not in [0, 1]", self.erase_prob),
            );
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(
                "ema_decay",
                format!("ema_decay {} is not in [0, 1)", self.ema_decay),
            );
        }
        if !(self.clip_grad_norm >= 0.0 && self.clip_grad_norm.is_finite()) {
            return bad(
                "clip_grad_norm",
                format!(
                    "clip_grad_norm {} is not a finite value >= 0",
                    self.clip_grad_norm
                ),
            );
        }
        Ok(())
    }
}

/// One finished epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number (from 1).
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (on augmented images, during the epoch).
    pub train_accuracy: f64,
    /// Test accuracy, when evaluated after this epoch (runs of earlier
    /// versions, which had no validation split; now the test set is
    /// evaluated once, see [`TrainState::test`]).
    #[serde(default)]
    pub test_accuracy: Option<f64>,
    /// Validation accuracy of the evaluated weights (the moving average
    /// when on), when evaluated after this epoch.
    #[serde(default)]
    pub val_accuracy: Option<f64>,
    /// The learning rate of the epoch's last step.
    #[serde(default)]
    pub lr: f32,
    /// Training images per second over the epoch.
    #[serde(default)]
    pub images_per_s: f64,
    /// Wall time of the epoch's training steps, seconds.
    pub seconds: f64,
}

/// The weights a run has chosen so far.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chosen {
    /// The epoch after which they were taken.
    pub epoch: usize,
    /// Their validation accuracy (none without a validation split).
    pub val_accuracy: Option<f64>,
}

/// An accuracy measured after an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    /// The epoch whose weights were measured.
    pub epoch: usize,
    /// Their accuracy.
    pub accuracy: f64,
}

/// The JSON part of a checkpoint: enough, with the two safetensors files,
/// to resume exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// The model.
    pub config: Config,
    /// The run's options.
    pub options: TrainOptions,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// The generator's state after the last completed epoch.
    pub rng_state: u64,
    /// Training images (checks that a resume uses the same data).
    pub train_images: usize,
    /// The images' `[rows, cols]`: the size the model is trained for.
    pub image_size: [usize; 2],
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
    /// The chosen weights so far: the best validation accuracy (the first
    /// epoch on ties); without a validation split, the last evaluated epoch.
    #[serde(default)]
    pub chosen: Option<Chosen>,
    /// The chosen weights' accuracy on the test set, measured once when the
    /// last epoch is done.
    #[serde(default)]
    pub test: Option<Measured>,
}

/// What the loop reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A run starts (or resumes) at `step` of `total_steps`.
    Start {
        /// Steps already taken (non-zero on resume).
        step: u64,
        /// Steps of the whole run.
        total_steps: u64,
        /// Parameters of the model.
        params: usize,
    },
    /// One optimiser step finished.
    Step {
        /// Epoch (from 1).
        epoch: usize,
        /// Steps taken so far in all.
        step: u64,
        /// This batch's mean loss.
        loss: f64,
        /// This batch's accuracy.
        accuracy: f64,
        /// Running mean loss of the epoch.
        epoch_loss: f64,
        /// Running accuracy of the epoch.
        epoch_accuracy: f64,
        /// Images per second over the epoch so far.
        images_per_s: f64,
        /// The learning rate used.
        lr: f32,
    },
    /// The validation split is being evaluated.
    Validating,
    /// The chosen weights are being evaluated on the test set (once).
    Testing,
    /// An epoch finished (and its checkpoint is written).
    Epoch(EpochRecord),
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct TrainResult {
    /// The trained parameters (raw, as the optimiser left them).
    pub params: ParamSet,
    /// The chosen weights (see [`TrainState::chosen`]), laid out like
    /// `params.data`: what `model.safetensors` holds.
    pub chosen: Vec<f32>,
    /// The final state (as saved).
    pub state: TrainState,
    /// Per-step losses of this invocation (not of resumed earlier parts).
    pub losses: Vec<f64>,
}

/// Copies image `i` of `set` into `dst` (`rows·cols` values), shifted by
/// `(dy, dx)` with background filling, mirrored when `flip`, normalised.
fn augment(set: &Dataset, i: usize, dy: isize, dx: isize, flip: bool, dst: &mut [f32]) {
    let (h, w) = (set.rows as isize, set.cols as isize);
    let src = set.image(i);
    let bg = normalize(0);
    for y in 0..h {
        for x in 0..w {
            let sy = y + dy;
            let sx0 = x + dx;
            let sx = if flip { w - 1 - sx0 } else { sx0 };
            let v = if (0..h).contains(&sy) && (0..w).contains(&sx0) {
                normalize(src[(sy * w + sx) as usize])
            } else {
                bg
            };
            dst[(y * w + x) as usize] = v;
        }
    }
}

/// A batch of test images `[n, rows, cols]`, normalised, no augmentation.
pub fn batch_of(set: &Dataset, idx: &[usize]) -> Vec<f32> {
    let n = set.rows * set.cols;
    let mut out = vec![0.0; idx.len() * n];
    for (&i, dst) in idx.iter().zip(out.chunks_mut(n)) {
        for (d, &p) in dst.iter_mut().zip(set.image(i)) {
            *d = normalize(p);
        }
    }
    out
}

/// Accuracy, per-class accuracy and confusion matrix of a model on a set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Images evaluated.
    pub images: usize,
    /// Correctly classified images.
    pub correct: usize,
    /// `correct / images`.
    pub accuracy: f64,
    /// Accuracy of each class (by true label).
    pub per_class: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Wall time of the forward passes, seconds.
    pub seconds: f64,
}

/// Evaluates `model` on every image of `set`, in batches of `batch` spread
/// over the model's threads ([`logits_parallel`]).
pub fn evaluate(model: &Model<Cpu>, set: &Dataset, batch: usize) -> Result<EvalReport> {
    let k = model.config().num_classes;
    if set.is_empty() || batch == 0 || k == 0 || model.config().in_chans != 1 {
        let field = if set.is_empty() {
            "images"
        } else if batch == 0 {
            "batch"
        } else if k == 0 {
            "num_classes"
        } else {
            "in_chans"
        };
        return Err(ModelError::Training {
            field,
            reason: format!(
                "cannot evaluate: {} images, batch {batch}, {k} classes, {} input channels \
                 (grey images need 1)",
                set.len(),
                model.config().in_chans
            ),
        });
    }
    let mut confusion = vec![vec![0usize; k]; k];
    let t0 = Instant::now();
    let all: Vec<usize> = (0..set.len()).collect();
    let x = batch_of(set, &all);
    let logits = logits_parallel(model, &x, [1, set.rows, set.cols], batch)?;
    for (&i, z) in all.iter().zip(logits.chunks(k)) {
        let pred = argmax(z);
        let truth = usize::from(set.labels[i]);
        if truth < k {
            confusion[truth][pred] += 1;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let per_class = confusion
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let n: usize = row.iter().sum();
            if n == 0 {
                0.0
            } else {
                row[i] as f64 / n as f64
            }
        })
        .collect();
    Ok(EvalReport {
        images: set.len(),
        correct,
        accuracy: correct as f64 / set.len() as f64,
        per_class,
        confusion,
        seconds,
    })
}

/// Index of the largest value (the first on ties).
pub fn argmax(z: &[f32]) -> usize {
    let mut best = 0;
    for (j, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = j;
        }
    }
    best
}

fn ck_err(path: &Path, e: impl Into<CheckpointError>) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// One file of a checkpoint set, as the manifest records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetFile {
    /// The file's name inside the set directory.
    pub name: String,
    /// Its length in bytes.
    pub bytes: u64,
    /// Its CRC-32 (IEEE).
    pub crc32: u32,
}

/// `checkpoint.json`: the training state and the set it belongs to.
/// (`TrainState` refuses unknown fields; serde cannot also do it here,
/// through `flatten`.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Manifest {
    #[serde(flatten)]
    state: TrainState,
    /// The set directory, beside the manifest.
    set: String,
    /// The set's files.
    files: Vec<SetFile>,
}

fn set_file(name: &str, bytes: &[u8]) -> SetFile {
    SetFile {
        name: name.to_string(),
        bytes: bytes.len() as u64,
        crc32: crc32fast::hash(bytes),
    }
}

/// Writes a checkpoint into `dir` as one set: the raw weights, the
/// optimiser's moments, the chosen weights and the moving average go into a
/// new directory `checkpoint-s<step>` (written under a
/// temporary name, then renamed), then `model.safetensors` (the chosen
/// weights) and the manifest
/// `checkpoint.json` are published together, the manifest naming the new set;
/// the previous set is removed last. A failure or an interrupt at any point
/// leaves the previous checkpoint whole and no temporary file behind.
pub fn save_checkpoint(
    dir: &Path,
    params: &ParamSet,
    opt: &AdamW,
    weights: &Averages,
    state: &TrainState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ck_err(dir, e))?;
    let raw = params.to_weight_map().to_safetensors()?;
    let chosen = params.map_of(&weights.chosen).to_safetensors()?;
    let ema = match &weights.ema {
        Some(e) => Some(params.map_of(e).to_safetensors()?),
        None => None,
    };
    let mut moments = WeightMap::default();
    for (prefix, buf) in [("m", &opt.m), ("v", &opt.v)] {
        let map = params.map_of(buf);
        for name in map.names().map(str::to_string).collect::<Vec<_>>() {
            let t = map.get(&name).expect("listed").clone();
            moments.insert(format!("{prefix}.{name}"), t);
        }
    }
    let moments = moments.to_safetensors()?;
    let set = format!("{SET_PREFIX}{:07}", state.step);
    let staged = StagedDir::create(dir.join(&set)).map_err(|e| ck_err(dir, e))?;
    let mut files: Vec<(&str, &[u8])> = vec![
        (WEIGHTS_FILE, &raw),
        (OPTIMIZER_FILE, &moments),
        (CHOSEN_FILE, &chosen),
    ];
    if let Some(e) = &ema {
        files.push((EMA_FILE, e));
    }
    for (name, bytes) in &files {
        staged
            .write(name, bytes)
            .map_err(|e| ck_err(&staged.path().join(name), e))?;
    }
    let manifest = Manifest {
        state: state.clone(),
        set: set.clone(),
        files: files.iter().map(|(n, b)| set_file(n, b)).collect(),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| ck_err(dir, CheckpointError::Encode(e)))?;
    let mut outs = Outputs::new();
    let w = outs.output("weights file", dir.join(WEIGHTS_FILE))?;
    let m = outs.output("checkpoint manifest", dir.join(STATE_FILE))?;
    outs.stage(w, &chosen)?;
    outs.stage(m, &json)?;
    staged.commit().map_err(|e| ck_err(&dir.join(&set), e))?;
    outs.commit()?;
    // Sets the manifest no longer names (the previous one, or one left by a
    // run that was killed between its two renames).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(SET_PREFIX) && name != set {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// The training state recorded in `dir`'s `checkpoint.json` (the history of
/// every epoch, the chosen epoch, the test accuracy), without reading the
/// weights; [`load_checkpoint`] reads and checks the whole set.
pub fn read_state(dir: impl AsRef<Path>) -> Result<TrainState> {
    let dir = dir.as_ref();
    Ok(read_manifest(dir)?.1.state)
}

/// `dir`'s manifest (bounded read, parsed), with its path for messages.
fn read_manifest(dir: &Path) -> Result<(std::path::PathBuf, Manifest)> {
    let sp = dir.join(STATE_FILE);
    let text =
        crate::limits::read_file(&sp, crate::limits::MAX_JSON_BYTES).map_err(|e| ck_err(&sp, e))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| ck_err(&sp, CheckpointError::Manifest(e)))?;
    Ok((sp, manifest))
}

/// Reads a checkpoint written by [`save_checkpoint`], checking every file of
/// the set against the manifest's lengths and checksums.
pub fn load_checkpoint(
    dir: &Path,
    weight_decay: f32,
) -> Result<(ParamSet, AdamW, Averages, TrainState)> {
    let (sp, manifest) = read_manifest(dir)?;
    let state = manifest.state;
    state.config.validate()?;
    if !manifest.set.starts_with(SET_PREFIX) || manifest.set.contains(['/', '\\']) {
        return Err(ck_err(&sp, CheckpointError::SetName(manifest.set)));
    }
    let set_dir = dir.join(&manifest.set);
    let read = |name: &str| -> Result<Vec<u8>> {
        let want = manifest
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| ck_err(&sp, CheckpointError::Unlisted(name.to_string())))?;
        let p = set_dir.join(name);
        let bytes = crate::limits::read_file(&p, want.bytes).map_err(|e| ck_err(&p, e))?;
        let got = set_file(name, &bytes);
        if got != *want {
            return Err(ck_err(
                &p,
                CheckpointError::Damaged {
                    got_bytes: got.bytes,
                    got_crc32: got.crc32,
                    want_bytes: want.bytes,
                    want_crc32: want.crc32,
                },
            ));
        }
        Ok(bytes)
    };
    let weights = read(WEIGHTS_FILE)?;
    let moments = read(OPTIMIZER_FILE)?;
    let wp = set_dir.join(WEIGHTS_FILE);
    let weights = WeightMap::parse_safetensors(&weights).map_err(|r| ck_err(&wp, r))?;
    let params = ParamSet::from_weights(&state.config, &weights)?;
    // Another buffer laid out like the parameters, from a file of the set.
    let like_params = |name: &str| -> Result<Vec<f32>> {
        let p = set_dir.join(name);
        let map = WeightMap::parse_safetensors(&read(name)?).map_err(|r| ck_err(&p, r))?;
        Ok(ParamSet::from_weights(&state.config, &map)?.data)
    };
    let averages = Averages {
        chosen: like_params(CHOSEN_FILE)?,
        ema: if state.options.ema_decay > 0.0 {
            Some(like_params(EMA_FILE)?)
        } else {
            None
        },
    };
    let op = set_dir.join(OPTIMIZER_FILE);
    let moments = WeightMap::parse_safetensors(&moments).map_err(|r| ck_err(&op, r))?;
    let mut opt = AdamW::new(params.len(), weight_decay);
    opt.step = state.step;
    for (prefix, buf) in [("m", &mut opt.m), ("v", &mut opt.v)] {
        for e in &params.entries {
            let name = format!("{prefix}.{}", e.name);
            let t = moments
                .get(&name)
                .filter(|t| t.shape == e.shape)
                .ok_or_else(|| ck_err(&op, CheckpointError::Moment(name.clone())))?;
            buf[e.range.clone()].copy_from_slice(&t.data);
        }
    }
    Ok((params, opt, averages, state))
}

/// One training thread: a single-threaded rayon pool and the CPU backend
/// whose buffers it reuses from one step to the next.
pub struct Worker {
    pool: rayon::ThreadPool,
    cpu: Cpu,
}

impl Worker {
    /// `n` workers.
    pub fn spawn(n: usize) -> Result<Vec<Worker>> {
        (0..n.max(1))
            .map(|_| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .map_err(|e| shape_err(format!("cannot start the training threads: {e}")))?;
                let cpu = pool.install(Cpu::current);
                Ok(Worker { pool, cpu })
            })
            .collect()
    }
}

/// Images per micro-batch: a batch is cut into micro-batches of this size
/// (the last one smaller), each run forward and backward on one core, and
/// their gradients added in micro-batch order. The cut does not depend on the
/// number of threads, so neither do the results.
pub const MICRO_BATCH: usize = 16;

/// The mean loss and the gradient (into `grad`, overwritten) of one batch
/// `x [B, rows, cols]`, cut into [`MICRO_BATCH`]es spread over `workers`.
/// Returns the mean loss and the number of correct predictions.
#[allow(clippy::too_many_arguments)]
pub fn batch_gradient(
    net: &Net,
    params: &CpuParams,
    ce: &CrossEntropy,
    x: &[f32],
    labels: &[usize],
    [rows, cols]: [usize; 2],
    workers: &[Worker],
    grad: &mut [f32],
) -> Result<(f64, usize)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let b = labels.len();
    let cin = net.config().in_chans;
    let npx = rows * cols * cin;
    let n = params.len();
    if b == 0 || x.len() != b * npx || grad.len() != n {
        return Err(shape_err(format!(
            "batch_gradient: {} values for {b} images of {npx}, gradient of {} for {n}",
            x.len(),
            grad.len(),
        )));
    }
    let n_micro = b.div_ceil(MICRO_BATCH);
    type Part = Result<(Vec<f32>, f64, usize)>;
    let parts: Vec<Mutex<Option<Part>>> = (0..n_micro).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = |be: &Cpu, i: usize| -> Part {
        let lo = i * MICRO_BATCH;
        let hi = (lo + MICRO_BATCH).min(b);
        let xt = be.upload(&[hi - lo, rows, cols, cin], &x[lo * npx..hi * npx])?;
        let mut tape = Tape::new();
        let logits = net.forward(be, params, xt, Some(&mut tape), None)?;
        let mut out = ce.forward_backward(&logits.buf, &labels[lo..hi])?;
        // The loss is the mean over the whole batch.
        let share = (hi - lo) as f32 / b as f32;
        out.dlogits.iter_mut().for_each(|d| *d *= share);
        let dlogits = be.upload(&logits.shape, &out.dlogits)?;
        let mut g = be.zeros(&[n])?;
        net.backward(be, params, &tape, &dlogits, &mut g)?;
        tape.recycle(be);
        Ok((g.buf, out.loss * f64::from(share), out.correct))
    };
    std::thread::scope(|s| {
        for w in workers.iter().take(n_micro) {
            s.spawn(|| {
                w.pool.install(|| {
                    let be = &w.cpu;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n_micro {
                            break;
                        }
                        let r = work(be, i);
                        *parts[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                    }
                })
            });
        }
    });
    grad.fill(0.0);
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for p in parts {
        let (g, l, c) = p
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| shape_err("batch_gradient: a micro-batch was not run".into()))??;
        grad.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
        loss += l;
        correct += c;
    }
    Ok((loss, correct))
}

/// Where a run writes.
#[derive(Clone, Debug)]
pub struct RunPaths {
    /// Output folder (checkpoints).
    pub out: PathBuf,
    /// Resume from the checkpoint in `out`.
    pub resume: bool,
}

/// The weight buffers a run keeps beside the raw parameters, laid out like
/// [`ParamSet::data`].
#[derive(Clone, Debug, PartialEq)]
pub struct Averages {
    /// The chosen weights ([`TrainState::chosen`]).
    pub chosen: Vec<f32>,
    /// The exponential moving average, when [`TrainOptions::ema_decay`] is on.
    pub ema: Option<Vec<f32>>,
}

impl Averages {
    /// The weights that are validated: the moving average, or the raw ones.
    fn evaluated<'a>(&'a self, params: &'a ParamSet) -> &'a [f32] {
        self.ema.as_deref().unwrap_or(&params.data)
    }
}

/// Folds `params` into the moving average after optimiser step `t` (from
/// 1): `ema ← d·ema + (1 - d)·params` with `d = min(decay, (1 + t) / (10 +
/// t))`, so the early average does not remember the initialisation.
fn update_ema(ema: &mut [f32], params: &[f32], decay: f32, t: u64) {
    let warm = (1.0 + t as f64) / (10.0 + t as f64);
    let d = f64::from(decay).min(warm) as f32;
    for (e, &p) in ema.iter_mut().zip(params) {
        *e = d * *e + (1.0 - d) * p;
    }
}

/// Scales `grad` down to global L2 norm `max` when it is longer (`max > 0`);
/// returns the norm before clipping.
fn clip_grad(grad: &mut [f32], max: f32) -> f64 {
    let norm = grad
        .iter()
        .map(|&g| f64::from(g) * f64::from(g))
        .sum::<f64>()
        .sqrt();
    if max > 0.0 && norm > f64::from(max) {
        let s = (f64::from(max) / norm) as f32;
        grad.iter_mut().for_each(|g| *g *= s);
    }
    norm
}

/// Random erasing (timm's `RandomErasing`, constant mode, one rectangle):
/// with probability `p`, a rectangle of 2–33% of the image's area and aspect
/// ratio 0.3–3.3 (log-uniform) is set to 0, the normalised mean. Up to ten
/// draws are tried for a rectangle that fits; none may.
fn random_erase(rng: &mut Rng, p: f32, img: &mut [f32], rows: usize, cols: usize) {
    if p <= 0.0 || rng.uniform() >= p {
        return;
    }
    let area = (rows * cols) as f32;
    let (lo, hi) = (0.3f32.ln(), (1.0f32 / 0.3).ln());
    for _ in 0..10 {
        let target = area * (0.02 + (1.0 / 3.0 - 0.02) * rng.uniform());
        let ratio = (lo + (hi - lo) * rng.uniform()).exp();
        let h = (target * ratio).sqrt().round() as usize;
        let w = (target / ratio).sqrt().round() as usize;
        if h == 0 || w == 0 || h >= rows || w >= cols {
            continue;
        }
        let y0 = rng.below(rows - h + 1);
        let x0 = rng.below(cols - w + 1);
        for row in img[y0 * cols..].chunks_mut(cols).take(h) {
            row[x0..x0 + w].fill(0.0);
        }
        return;
    }
}

/// Trains `cfg` on `train`, writing a checkpoint set to `paths.out` after
/// every epoch; `on` receives progress events.
///
/// The last [`TrainOptions::val_images`] images of `train` are held out:
/// every [`TrainOptions::eval_every`] epochs the evaluated weights (the
/// moving average when on) are measured on them, and the best so far become
/// the chosen weights (`model.safetensors`). When the last epoch is done,
/// the chosen weights are evaluated on `test`, once ([`TrainState::test`]);
/// nothing is chosen with the test set.
pub fn train(
    cfg: &Config,
    opts: &TrainOptions,
    train: &Dataset,
    test: &Dataset,
    paths: &RunPaths,
    on: &mut dyn FnMut(&Event),
) -> Result<TrainResult> {
    opts.validate()?;
    if train.rows != test.rows || train.cols != test.cols {
        return Err(ModelError::Training {
            field: "images",
            reason: format!(
                "training images of {}x{}, test images of {}x{}",
                train.rows, train.cols, test.rows, test.cols
            ),
        });
    }
    if opts.val_images >= train.len() {
        return Err(ModelError::Training {
            field: "val_images",
            reason: format!(
                "a validation split of {} images (val_images, na train --val-images) leaves \
                 none of the {} training images to train on",
                opts.val_images,
                train.len()
            ),
        });
    }
    if cfg.in_chans != 1 {
        return Err(ModelError::Config {
            field: "in_chans",
            reason: format!(
                "grey images need in_chans 1, the configuration has {}",
                cfg.in_chans
            ),
        });
    }
    // The tapes of a whole batch are alive at once (one micro-batch per
    // core): refuse a configuration whose training step cannot fit.
    cfg.check_memory(
        train.rows,
        train.cols,
        opts.batch_size,
        true,
        crate::limits::max_memory_bytes(),
    )?;
    let (fit, val) = train.clone().split_last(opts.val_images);
    let steps_per_epoch = fit.len().div_ceil(opts.batch_size) as u64;
    let total = steps_per_epoch * opts.epochs as u64;
    let (mut params, mut opt, mut avg, mut state, mut rng) = if paths.resume {
        let (p, o, a, s) = load_checkpoint(&paths.out, opts.weight_decay)?;
        // max_steps may differ: a run stopped at an epoch boundary by
        // max_steps resumes to its full length.
        let same_opts = TrainOptions {
            max_steps: opts.max_steps,
            ..s.options.clone()
        } == *opts;
        if s.config != *cfg
            || !same_opts
            || s.train_images != train.len()
            || s.image_size != [train.rows, train.cols]
        {
            return Err(ModelError::Resume {
                path: paths.out.join(STATE_FILE),
                refusal: ResumeRefusal::OtherRun,
            });
        }
        if s.step != s.epochs_done as u64 * steps_per_epoch {
            return Err(ModelError::Resume {
                path: paths.out.join(STATE_FILE),
                refusal: ResumeRefusal::MidEpoch,
            });
        }
        let rng = Rng::new(s.rng_state);
        let s = TrainState {
            options: opts.clone(),
            ..s
        };
        (p, o, a, s, rng)
    } else {
        let mut rng = Rng::new(opts.seed);
        // The initialisation's draw is taken in either case, so a warm start
        // shuffles and augments exactly like a cold start of the same seed.
        let mut p = ParamSet::init(cfg, rng.next_u64())?;
        if let Some(path) = &opts.init {
            p.fill_from(WeightMap::load(path)?)?;
        }
        let o = AdamW::new(p.len(), opts.weight_decay);
        let a = Averages {
            chosen: p.data.clone(),
            ema: (opts.ema_decay > 0.0).then(|| p.data.clone()),
        };
        let s = TrainState {
            config: cfg.clone(),
            options: opts.clone(),
            epochs_done: 0,
            step: 0,
            rng_state: rng.state(),
            train_images: train.len(),
            image_size: [train.rows, train.cols],
            history: Vec::new(),
            chosen: None,
            test: None,
        };
        (p, o, a, s, rng)
    };
    let net = Net::new(&params)?;
    // The parameters as the backend's tensor, refreshed after every update.
    let mut ptensor = CpuParams::flat(params.data.clone());
    let sched = Schedule {
        base: opts.lr,
        min: opts.min_lr,
        warmup: (opts.warmup_epochs as f64 * steps_per_epoch as f64).round() as u64,
        total,
    };
    let ce = CrossEntropy {
        classes: cfg.num_classes,
        smoothing: opts.label_smoothing,
    };
    on(&Event::Start {
        step: state.step,
        total_steps: total,
        params: params.len(),
    });
    let cpu = Cpu::new(rayon::current_num_threads());
    // One single-threaded pool per worker: each micro-batch runs on one
    // core without any synchronisation inside the layers.
    let workers = Worker::spawn(rayon::current_num_threads())?;
    let (rows, cols) = (fit.rows, fit.cols);
    let npx = rows * cols;
    let mut grad = vec![0.0f32; params.len()];
    let mut losses = Vec::new();
    let stop = opts.max_steps.unwrap_or(u64::MAX);
    // The model of some weights laid out like the parameters.
    let mut scratch = params.clone();
    let mut model_of = |data: &[f32]| -> Result<Model<Cpu>> {
        scratch.data.copy_from_slice(data);
        Model::from_params(cpu.clone(), &scratch)
    };
    for epoch in state.epochs_done + 1..=opts.epochs {
        if state.step >= stop {
            break;
        }
        let mut order: Vec<usize> = (0..fit.len()).collect();
        rng.shuffle(&mut order);
        let t0 = Instant::now();
        let (mut sum_loss, mut correct, mut seen, mut lr) = (0.0f64, 0usize, 0usize, 0.0f32);
        for chunk in order.chunks(opts.batch_size) {
            if state.step >= stop {
                break;
            }
            let mut x = vec![0.0f32; chunk.len() * npx];
            let mut labels = Vec::with_capacity(chunk.len());
            for (&i, dst) in chunk.iter().zip(x.chunks_mut(npx)) {
                let s = opts.shift as isize;
                let (dy, dx) = if s > 0 {
                    (
                        rng.below(2 * opts.shift + 1) as isize - s,
                        rng.below(2 * opts.shift + 1) as isize - s,
                    )
                } else {
                    (0, 0)
                };
                let flip = opts.hflip && rng.below(2) == 1;
                augment(&fit, i, dy, dx, flip, dst);
                random_erase(&mut rng, opts.erase_prob, dst, rows, cols);
                labels.push(usize::from(fit.labels[i]));
            }
            let (loss, batch_correct) = batch_gradient(
                &net,
                &ptensor,
                &ce,
                &x,
                &labels,
                [rows, cols],
                &workers,
                &mut grad,
            )?;
            if !loss.is_finite() {
                return Err(shape_err(format!(
                    "the loss diverged ({loss}) at step {}; lower --lr",
                    state.step
                )));
            }
            clip_grad(&mut grad, opts.clip_grad_norm);
            lr = sched.lr(state.step);
            opt.update(&mut params, &grad, lr)?;
            ptensor
                .as_flat_mut()
                .ok_or_else(|| shape_err("training parameters are not one buffer".into()))?
                .copy_from_slice(&params.data);
            state.step += 1;
            if let Some(ema) = &mut avg.ema {
                update_ema(ema, &params.data, opts.ema_decay, state.step);
            }
            losses.push(loss);
            sum_loss += loss * chunk.len() as f64;
            correct += batch_correct;
            seen += chunk.len();
            on(&Event::Step {
                epoch,
                step: state.step,
                loss,
                accuracy: batch_correct as f64 / chunk.len() as f64,
                epoch_loss: sum_loss / seen as f64,
                epoch_accuracy: correct as f64 / seen as f64,
                images_per_s: seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                lr,
            });
        }
        let seconds = t0.elapsed().as_secs_f64();
        let finished = seen == fit.len();
        let last = finished && epoch == opts.epochs;
        // A partial epoch (stopped by max_steps) is not evaluated.
        let evaluate_now = finished && (epoch.is_multiple_of(opts.eval_every) || last);
        let mut val_accuracy = None;
        if evaluate_now {
            let w = avg.evaluated(&params);
            let acc = if val.is_empty() {
                None
            } else {
                on(&Event::Validating);
                Some(evaluate(&model_of(w)?, &val, 64)?.accuracy)
            };
            val_accuracy = acc;
            // Better validation accuracy (or, without a split, newer weights).
            let better = match (acc, state.chosen.and_then(|c| c.val_accuracy)) {
                (Some(a), Some(best)) => a > best,
                _ => true,
            };
            if better {
                let w = avg.ema.as_ref().unwrap_or(&params.data).clone();
                avg.chosen.copy_from_slice(&w);
                state.chosen = Some(Chosen {
                    epoch,
                    val_accuracy: acc,
                });
            }
        }
        let rec = EpochRecord {
            epoch,
            train_loss: sum_loss / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            test_accuracy: None,
            val_accuracy,
            lr,
            images_per_s: seen as f64 / seconds.max(1e-9),
            seconds,
        };
        if finished {
            state.epochs_done = epoch;
            state.rng_state = rng.state();
        }
        if last {
            on(&Event::Testing);
            let acc = evaluate(&model_of(&avg.chosen)?, test, 64)?.accuracy;
            state.test = Some(Measured {
                epoch: state.chosen.map_or(epoch, |c| c.epoch),
                accuracy: acc,
            });
        }
        state.history.push(rec.clone());
        save_checkpoint(&paths.out, &params, &opt, &avg, &state)?;
        on(&Event::Epoch(rec));
    }
    Ok(TrainResult {
        params,
        chosen: avg.chosen,
        state,
        losses,
    })
}

#[cfg(test)]
mod recipe_tests {
    use super::*;

    #[test]
    fn clipping_scales_long_gradients_to_the_bound_only() {
        let mut g = vec![3.0f32, 4.0];
        assert_eq!(clip_grad(&mut g, 1.0), 5.0);
        assert!(
            (g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6,
            "{g:?}"
        );
        let mut g = vec![0.3f32, 0.4];
        clip_grad(&mut g, 1.0);
        assert_eq!(g, [0.3, 0.4]);
        let mut g = vec![30.0f32, 40.0];
        clip_grad(&mut g, 0.0);
        assert_eq!(g, [30.0, 40.0], "0 disables clipping");
    }

    #[test]
    fn the_moving_average_warms_up_then_decays_slowly() {
        let mut e = vec![0.0f32];
        // Step 1: d = min(0.999, 2/11), so the average moves most of the way.
        update_ema(&mut e, &[1.0], 0.999, 1);
        assert!((e[0] - 9.0 / 11.0).abs() < 1e-6, "{e:?}");
        let mut e = vec![0.0f32];
        update_ema(&mut e, &[1.0], 0.999, 1_000_000);
        assert!((e[0] - 0.001).abs() < 1e-6, "{e:?}");
    }

    #[test]
    fn erasing_sets_one_rectangle_to_the_mean() {
        let (rows, cols) = (28, 28);
        let mut rng = Rng::new(7);
        let mut erased = 0;
        for _ in 0..200 {
            let mut img = vec![1.0f32; rows * cols];
            random_erase(&mut rng, 1.0, &mut img, rows, cols);
            let zeros: Vec<usize> = (0..img.len()).filter(|&i| img[i] == 0.0).collect();
            if zeros.is_empty() {
                continue;
            }
            erased += 1;
            // One axis-aligned rectangle of 2-33% of the area (rounded sides).
            let ys = zeros.iter().map(|i| i / cols);
            let xs = zeros.iter().map(|i| i % cols);
            let (y0, y1) = (ys.clone().min().unwrap(), ys.max().unwrap());
            let (x0, x1) = (xs.clone().min().unwrap(), xs.max().unwrap());
            let area = (y1 - y0 + 1) * (x1 - x0 + 1);
            assert_eq!(zeros.len(), area, "not a rectangle");
            assert!(area >= 8 && area <= rows * cols / 2, "area {area}");
        }
        assert!(erased > 150, "only {erased} of 200 images erased at p = 1");
        let mut img = vec![1.0f32; rows * cols];
        for _ in 0..100 {
            random_erase(&mut rng, 0.0, &mut img, rows, cols);
        }
        assert!(img.iter().all(|&v| v == 1.0), "p = 0 erases nothing");
    }

    #[test]
    fn a_validation_split_is_the_tail_of_the_set() {
        let set = Dataset {
            images: (0..10u8).flat_map(|i| [i; 4]).collect(),
            labels: (0..10).collect(),
            rows: 2,
            cols: 2,
        };
        let (fit, val) = set.split_last(3);
        assert_eq!((fit.len(), val.len()), (7, 3));
        assert_eq!(val.labels, [7, 8, 9]);
        assert_eq!(val.image(0), [7; 4]);
        assert_eq!(fit.image(6), [6; 4]);
    }
}
