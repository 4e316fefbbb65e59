//! `na train`: a model trained on Fashion-MNIST in Rust, with its
//! checkpoints and learning curves.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use na_model::output::Outputs;
use na_model::train::idx::find_fashion_mnist;
use na_model::train::run::{read_state, STATE_FILE, WEIGHTS_FILE};
use na_model::train::{train, Event, RunPaths, TrainOptions, FASHION_CLASSES};
use na_model::{Config, Cpu};

use crate::args::load_config_file;
use crate::plot::{self, Curves};

/// The data sets `na train` and `na eval` know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatasetName {
    /// Fashion-MNIST (28×28 grey, 10 classes): Debian's `dataset-fashion-mnist`.
    FashionMnist,
}

/// Where the data set is.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// The data set.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub dataset: DatasetName,
    /// A folder with the four IDX files (plain or .gz) [default: the Debian package's folder].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

/// Arguments of `na train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The data set.
    #[command(flatten)]
    pub data: DataArgs,
    /// A preset [default: fashion_dinat, the shipped model's configuration].
    #[arg(long, conflicts_with = "config")]
    pub model: Option<String>,
    /// A JSON configuration (in_chans 1, num_classes 10).
    #[arg(long, value_name = "CFG.json")]
    pub config: Option<PathBuf>,
    /// Output folder: model.safetensors (the chosen weights), checkpoint.json and the
    /// `checkpoint-s<step>/` set (after every epoch).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run whose checkpoint is in --out (same configuration and options).
    #[arg(long)]
    pub resume: bool,
    /// Epochs.
    #[arg(long, default_value_t = TrainOptions::default().epochs)]
    pub epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = TrainOptions::default().batch_size)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = TrainOptions::default().lr)]
    pub lr: f32,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = TrainOptions::default().min_lr)]
    pub min_lr: f32,
    /// Weight decay (not on norms, biases, rpb).
    #[arg(long, default_value_t = TrainOptions::default().weight_decay)]
    pub weight_decay: f32,
    /// Linear warm-up, in epochs.
    #[arg(long, default_value_t = TrainOptions::default().warmup_epochs)]
    pub warmup_epochs: f32,
    /// Label smoothing.
    #[arg(long, default_value_t = TrainOptions::default().label_smoothing)]
    pub label_smoothing: f32,
    /// Random shift (zero-padded crop) of up to this many pixels; 0 disables it.
    #[arg(long, default_value_t = TrainOptions::default().shift)]
    pub shift: usize,
    /// Disable random horizontal flips.
    #[arg(long)]
    pub no_flip: bool,
    /// Seed (initialisation, shuffles, augmentation).
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    pub seed: u64,
    /// Stop after this many steps (the schedule stays that of --epochs).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_steps: Option<u64>,
    /// Evaluate on the validation split every N epochs (and after the last).
    #[arg(long, default_value_t = TrainOptions::default().eval_every)]
    pub eval_every: usize,
    /// Random erasing probability per image (one rectangle of 2-33% of the area); 0 disables it.
    #[arg(long, default_value_t = TrainOptions::default().erase_prob)]
    pub erase_prob: f32,
    /// Decay of the weights' moving average that is validated and shipped; 0: the raw weights.
    #[arg(long, default_value_t = TrainOptions::default().ema_decay)]
    pub ema_decay: f32,
    /// Clip the gradient's global L2 norm to this; 0 disables clipping.
    #[arg(long, default_value_t = TrainOptions::default().clip_grad_norm)]
    pub clip_grad_norm: f32,
    /// Hold out the last N training images as the validation split that chooses the weights
    /// (the test set is evaluated once, at the end); 0: the final weights are chosen.
    #[arg(long, default_value_t = TrainOptions::default().val_images)]
    pub val_images: usize,
    /// Start from these weights (a safetensors file of the same configuration, e.g. an earlier
    /// run's model.safetensors) instead of a random initialisation: a warm restart with a new
    /// schedule and fresh optimiser moments.
    #[arg(long, value_name = "WEIGHTS.safetensors")]
    pub init: Option<PathBuf>,
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0, value_parser = crate::args::parse_threads)]
    pub threads: usize,
    /// Also write the per-step losses of this invocation as JSON.
    #[arg(long, value_name = "FILE")]
    pub losses_json: Option<PathBuf>,
}

/// The configuration named by `--model`/`--config`, or the default preset.
pub fn model_config(model: &Option<String>, config: &Option<PathBuf>) -> Result<Config> {
    let cfg = match (model, config) {
        (Some(name), _) => Config::preset(name)?,
        (None, Some(p)) => load_config_file(p)?,
        (None, None) => Config::preset("fashion_dinat")?,
    };
    if cfg.in_chans != 1 || cfg.num_classes != FASHION_CLASSES.len() {
        bail!(
            "Fashion-MNIST needs in_chans 1 and num_classes 10; the configuration has {} and {}",
            cfg.in_chans,
            cfg.num_classes
        );
    }
    Ok(cfg)
}

/// Runs `na train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let cfg = model_config(&args.model, &args.config)?;
    let opts = TrainOptions {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        min_lr: args.min_lr,
        weight_decay: args.weight_decay,
        warmup_epochs: args.warmup_epochs,
        label_smoothing: args.label_smoothing,
        shift: args.shift,
        hflip: !args.no_flip,
        seed: args.seed,
        max_steps: args.max_steps,
        eval_every: args.eval_every,
        erase_prob: args.erase_prob,
        ema_decay: args.ema_decay,
        clip_grad_norm: args.clip_grad_norm,
        val_images: args.val_images,
        init: args.init.clone(),
    };
    // Every output is checked before the data is read or a step is taken.
    match std::fs::metadata(&args.out) {
        Ok(m) if !m.is_dir() => bail!(
            "--out {} is not a directory; name a directory (it is created if missing)",
            args.out.display()
        ),
        Ok(_) if !args.resume && args.out.join(STATE_FILE).exists() => bail!(
            "--out {} holds a checkpoint already; pass --resume to continue it or choose another --out",
            args.out.display()
        ),
        Ok(_) => {}
        Err(_) if args.resume => bail!(
            "--resume: --out {} does not exist; there is no checkpoint to continue",
            args.out.display()
        ),
        Err(_) => std::fs::create_dir_all(&args.out)
            .with_context(|| format!("--out {}: cannot create the directory", args.out.display()))?,
    }
    let mut outs = Outputs::new();
    let losses_id = match &args.losses_json {
        Some(p) => Some(outs.output("--losses-json", p)?),
        None => None,
    };
    let (train_set, test_set) = find_fashion_mnist(args.data.data.as_deref())?;
    let paths = RunPaths {
        out: args.out.clone(),
        resume: args.resume,
    };
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps (eta {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let t0 = Instant::now();
    // Without a terminal the bar is hidden; its lines go to stderr plainly.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let mut on = |e: &Event| match e {
        Event::Start {
            step,
            total_steps,
            params,
        } => {
            bar.set_length(*total_steps);
            bar.set_position(*step);
            say(format!(
                "training {params} parameters, {total_steps} steps of {} images",
                opts.batch_size
            ));
        }
        Event::Step {
            epoch,
            step,
            epoch_loss,
            epoch_accuracy,
            images_per_s,
            lr,
            ..
        } => {
            bar.set_position(*step);
            bar.set_message(format!(
                "epoch {epoch} loss {epoch_loss:.4} acc {:.2}% {images_per_s:.0} img/s lr {lr:.2e}",
                100.0 * epoch_accuracy
            ));
        }
        Event::Validating => bar.set_message("evaluating on the validation split"),
        Event::Testing => bar.set_message("evaluating the chosen weights on the test set"),
        Event::Epoch(r) => {
            let val = r.val_accuracy.map_or(String::new(), |a| {
                format!(", validation accuracy {:.2}%", 100.0 * a)
            });
            say(format!(
                "epoch {}: loss {:.4}, train accuracy {:.2}%{val}, lr {:.2e}, {:.0} img/s ({:.0} s)",
                r.epoch,
                r.train_loss,
                100.0 * r.train_accuracy,
                r.lr,
                r.images_per_s,
                r.seconds
            ));
            // The pictures are a view of the checkpoint just saved; failing to
            // draw them does not stop the training.
            if let Err(e) = write_curves(&args.out) {
                say(format!(
                    "warning: the learning curves were not written: {e:#}"
                ));
            }
        }
    };
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let res = Cpu::new(threads)
        .install(|| train(&cfg, &opts, &train_set, &test_set, &paths, &mut on))
        .with_context(|| format!("training into {}", args.out.display()))?;
    bar.finish_and_clear();
    if let Some(id) = losses_id {
        let v = serde_json::json!({"losses": res.losses, "options": opts});
        outs.stage(id, &serde_json::to_vec(&v)?)?;
    }
    outs.commit()?;
    if res.losses.is_empty() {
        crate::outln!(
            "nothing to do: the run in {} has finished its {} epochs ({} steps)",
            args.out.display(),
            res.state.epochs_done,
            res.state.step
        )?;
        return Ok(());
    }
    let chosen = res.state.chosen.map_or(String::new(), |c| {
        let val = c.val_accuracy.map_or(String::new(), |a| {
            format!(", validation accuracy {:.2}%", 100.0 * a)
        });
        format!(" (epoch {}{val})", c.epoch)
    });
    crate::outln!(
        "done in {:.1} min: {} steps; chosen weights{chosen} in {}; test accuracy {}",
        t0.elapsed().as_secs_f64() / 60.0,
        res.state.step,
        args.out.join(WEIGHTS_FILE).display(),
        res.state.test.map_or(
            "not measured (the run is not finished)".into(),
            |t| format!("{:.2}%", 100.0 * t.accuracy)
        ),
    )?;
    Ok(())
}

/// The learning curves' file names in a training output folder.
pub const CURVES_FILES: [&str; 2] = ["curves.png", "curves.svg"];

/// Draws the learning curves of the checkpoint in `out` as
/// [`CURVES_FILES`] beside it (both replaced together, or neither).
pub fn write_curves(out: &Path) -> Result<()> {
    let state = read_state(out)?;
    let params = state.config.param_count().unwrap_or(0);
    let curves = Curves {
        title: format!(
            "{} ({} parameters) on Fashion-MNIST: {} of {} epochs",
            arch_name(&state.config),
            if params >= 100_000 {
                format!("{:.2} M", params as f64 / 1e6)
            } else {
                params.to_string()
            },
            state.epochs_done,
            state.options.epochs
        ),
        history: &state.history,
        chosen: state.chosen.map(|c| c.epoch),
        test: state.test,
    };
    let mut outs = Outputs::new();
    for name in CURVES_FILES {
        let path = out.join(name);
        let bytes = plot::render(&curves, plot::Format::of("learning curves", &path)?)?;
        let id = outs.output("learning curves", &path)?;
        outs.stage(id, &bytes)?;
    }
    Ok(outs.commit()?)
}

/// "DiNAT", "NAT" or "isotropic NAT/DiNAT".
fn arch_name(cfg: &Config) -> String {
    let dilated = cfg
        .dilations
        .as_ref()
        .is_some_and(|d| d.iter().flatten().any(|&x| x > 1));
    let base = if dilated { "DiNAT" } else { "NAT" };
    match cfg.arch {
        na_model::Arch::Isotropic => format!("isotropic {base}"),
        _ => base.to_string(),
    }
}
