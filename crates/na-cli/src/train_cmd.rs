//! `na train` and `na eval`: training a model on Fashion-MNIST in Rust and
//! measuring it on the test set.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use na_model::output::Outputs;
use na_model::train::idx::find_fashion_mnist;
use na_model::train::run::{read_state, STATE_FILE, WEIGHTS_FILE};
use na_model::train::{evaluate, train, Event, RunPaths, TrainOptions, FASHION_CLASSES};
use na_model::{Config, Cpu, Model, WeightMap};

use crate::model_cmd::load_config_file;
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
    /// checkpoint-s<step>/ set (after every epoch).
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
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0, value_parser = crate::attn::parse_threads)]
    pub threads: usize,
    /// Also write the per-step losses of this invocation as JSON.
    #[arg(long, value_name = "FILE")]
    pub losses_json: Option<PathBuf>,
}

/// The configuration named by `--model`/`--config`, or the default preset.
fn model_config(model: &Option<String>, config: &Option<PathBuf>) -> Result<Config> {
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
pub fn run_train(args: &TrainArgs) -> Result<()> {
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

/// Arguments of `na eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The data set.
    #[command(flatten)]
    pub data: DataArgs,
    /// Weights (safetensors or .pth) [default: the model built into `na`].
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// A preset [default: the checkpoint.json beside --weights, else fashion_dinat].
    #[arg(long, conflicts_with = "config")]
    pub model: Option<String>,
    /// A JSON configuration.
    #[arg(long, value_name = "CFG.json")]
    pub config: Option<PathBuf>,
    /// Images per forward pass (each on one core).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0, value_parser = crate::attn::parse_threads)]
    pub threads: usize,
    /// Write the report as JSON to FILE (`-`: standard output, instead of the text).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the confusion matrix (with each class's accuracy) as an image: FILE.png or FILE.svg.
    #[arg(long, value_name = "FILE")]
    pub confusion: Option<PathBuf>,
}

/// The configuration and image size recorded in a training output folder's
/// checkpoint.json (the image size is absent from older files).
fn config_beside(weights: &Path) -> Option<Result<(Config, Option<[usize; 2]>)>> {
    let p = weights.with_file_name(STATE_FILE);
    if !p.is_file() {
        return None;
    }
    Some(
        (|| {
            let text = na_model::limits::read_file(&p, na_model::limits::MAX_JSON_BYTES)?;
            let v: serde_json::Value = serde_json::from_slice(&text)?;
            let cfg: Config = serde_json::from_value(v["config"].clone())?;
            cfg.validate()?;
            let size = serde_json::from_value(v["image_size"].clone()).ok();
            Ok::<_, anyhow::Error>((cfg, size))
        })()
        .with_context(|| format!("reading the configuration in {}", p.display())),
    )
}

/// Runs `na eval`.
pub fn run_eval(args: &EvalArgs) -> Result<()> {
    let mut outs = Outputs::new();
    if let Some(w) = &args.weights {
        outs.input("--weights", w);
    }
    let json_id = match &args.json {
        Some(p) if p.as_os_str() != "-" => Some(outs.output("--json", p)?),
        _ => None,
    };
    let confusion_id = match &args.confusion {
        Some(p) => Some((
            plot::Format::of("--confusion", p)?,
            outs.output("--confusion", p)?,
        )),
        None => None,
    };
    // The image size the model was trained for, where it is known.
    let (cfg, weights, trained_size) = match &args.weights {
        Some(w) => {
            let (cfg, size) = match (&args.model, &args.config, config_beside(w)) {
                (None, None, Some(c)) => c?,
                (m, c, _) => (model_config(m, c)?, None),
            };
            let map = WeightMap::load(w)?;
            (cfg, map, size)
        }
        None => {
            if args.model.is_some() || args.config.is_some() {
                bail!("--model/--config need --weights (the built-in model has its own)");
            }
            let (cfg, map) = crate::shipped::model()?;
            let side = na_model::preprocess::FASHION_SIDE;
            (cfg, map, Some([side, side]))
        }
    };
    let (_, test) = find_fashion_mnist(args.data.data.as_deref())?;
    if let Some([h, w]) = trained_size {
        if [test.rows, test.cols] != [h, w] {
            bail!(
                "the model was trained on {h}x{w} images but the test set's are {}x{}",
                test.rows,
                test.cols
            );
        }
    }
    let cpu = Cpu::new(args.threads);
    let model = Model::load(&cpu, &cfg, weights, false).context("loading the model")?;
    let rep = cpu.install(|| evaluate(&cpu, &model, &test, args.batch.max(1)))?;
    let json = serde_json::json!({
        "dataset": "fashion-mnist",
        "split": "test",
        "weights": args.weights.as_ref().map_or("built-in".into(), |p| p.display().to_string()),
        "images": rep.images,
        "correct": rep.correct,
        "accuracy": rep.accuracy,
        "per_class": FASHION_CLASSES.iter().zip(&rep.per_class)
            .map(|(n, a)| serde_json::json!({"class": n, "accuracy": a})).collect::<Vec<_>>(),
        "confusion": rep.confusion,
        "classes": FASHION_CLASSES,
        "seconds": rep.seconds,
        "images_per_s": rep.images as f64 / rep.seconds.max(1e-9),
        "threads": cpu.threads(),
    });
    if let Some(id) = json_id {
        outs.stage(id, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    if let Some((format, id)) = confusion_id {
        let who = args
            .weights
            .as_ref()
            .and_then(|p| p.file_name())
            .map_or("the built-in model".to_string(), |n| {
                n.to_string_lossy().into_owned()
            });
        let picture = plot::Confusion {
            title: format!(
                "{who} on the Fashion-MNIST test set: {:.2}% of {}",
                100.0 * rep.accuracy,
                rep.images
            ),
            classes: &FASHION_CLASSES,
            counts: &rep.confusion,
        };
        outs.stage(id, &plot::render(&picture, format)?)?;
    }
    outs.commit()?;
    if matches!(&args.json, Some(p) if p.as_os_str() == "-") {
        crate::outln!("{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    crate::outln!(
        "accuracy {:.2}% ({} of {} test images) in {:.2} s ({:.0} images/s, {} threads)",
        100.0 * rep.accuracy,
        rep.correct,
        rep.images,
        rep.seconds,
        rep.images as f64 / rep.seconds.max(1e-9),
        cpu.threads()
    )?;
    crate::outln!("per class:")?;
    for (n, a) in FASHION_CLASSES.iter().zip(&rep.per_class) {
        crate::outln!("  {n:<12} {:6.2}%", 100.0 * a)?;
    }
    crate::outln!("confusion (rows: true class, columns: predicted):")?;
    crate::out!("{:>12}", "")?;
    for i in 0..FASHION_CLASSES.len() {
        crate::out!(" {i:>5}")?;
    }
    crate::outln!()?;
    for (i, row) in rep.confusion.iter().enumerate() {
        crate::out!(
            "{:>9} {i:>2}",
            FASHION_CLASSES[i].chars().take(9).collect::<String>()
        )?;
        for v in row {
            crate::out!(" {v:>5}")?;
        }
        crate::outln!()?;
    }
    Ok(())
}
