//! `na eval`: accuracy, per-class accuracy and the confusion matrix of a
//! model on the Fashion-MNIST test set (text, JSON, PNG or SVG).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use na_model::output::Outputs;
use na_model::train::idx::find_fashion_mnist;
use na_model::train::run::STATE_FILE;
use na_model::train::{evaluate, FASHION_CLASSES};
use na_model::{Config, Cpu, Model, WeightMap};

use crate::cmd::train::{model_config, DataArgs};
use crate::plot;

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
    #[arg(long, default_value_t = 0, value_parser = crate::args::parse_threads)]
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
pub fn run(args: &EvalArgs) -> Result<()> {
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
            let (cfg, map) = na_model::fashion::builtin().context("the built-in model")?;
            let side = na_model::fashion::SIDE;
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
    let model = Model::load(cpu.clone(), &cfg, weights, na_model::Head::Classifier)
        .context("loading the model")?;
    let rep = cpu.install(|| evaluate(&model, &test, args.batch.max(1)))?;
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
