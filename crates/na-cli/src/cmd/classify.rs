//! `na classify`: images to their most likely classes, with the built-in
//! Fashion-MNIST model or any classifier and its weights
//! ([`na_model::classify::Classifier`] does the work).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use na_model::{Config, Cpu, Head, Model, WeightMap};

use crate::args::{load_config_file, InvertArg};

/// Arguments of `na classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Images (PNG, JPEG, BMP, GIF, WebP, TIFF).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// A named preset (needs --weights) [default: the built-in Fashion-MNIST model].
    #[arg(long, conflicts_with = "config", requires = "weights")]
    pub model: Option<String>,
    /// A JSON configuration (needs --weights).
    #[arg(long, value_name = "CFG.json", requires = "weights")]
    pub config: Option<PathBuf>,
    /// Weights: safetensors or a PyTorch .pth checkpoint (needs --model or --config).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0, value_parser = crate::args::parse_threads)]
    pub threads: usize,
    /// Classes to print per image.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Class names, one per line [default: ImageNet-1k for 1000-class models].
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Images per forward pass [default: 64 per core for the built-in model, whose passes
    /// run one per core; 8 with all cores for other models].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Grey models (the built-in one, or a trained in_chans-1 model): invert grey images
    /// (they expect a light object on a dark background).
    #[arg(long, value_enum, default_value = "auto")]
    pub invert: InvertArg,
    /// Print JSON (an array of {image, top: [{class, label, probability}]}) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Largest decoded image, in MiB (8-bit RGB: 3 bytes per pixel; 16-bit RGBA: 8).
    #[arg(long, value_name = "MIB", default_value_t = na_model::limits::DEFAULT_MAX_IMAGE_BYTES >> 20,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub max_image_mib: u64,
}

/// Runs `na classify`.
pub fn run(args: &ClassifyArgs) -> Result<()> {
    use na_model::classify::Classifier;
    use na_model::{labels, preprocess::Polarity};
    let builtin = args.model.is_none() && args.config.is_none();
    if builtin && args.weights.is_some() {
        bail!("--weights needs --model or --config (without them the built-in model is used)");
    }
    let cpu = Cpu::new(args.threads);
    let model = if builtin {
        na_model::fashion::builtin_model(cpu).context("the built-in model")?
    } else {
        let cfg = match (&args.model, &args.config) {
            (Some(name), _) => Config::preset(name)?,
            (None, Some(p)) => load_config_file(p)?,
            (None, None) => unreachable!("checked above"),
        };
        let w = args.weights.as_ref().expect("clap requires --weights");
        let map = WeightMap::load(w).with_context(|| format!("loading {}", w.display()))?;
        Model::load(cpu, &cfg, map, Head::Classifier).context("loading the model")?
    };
    let mut classifier = Classifier::new(model)?
        .with_polarity(match args.invert {
            InvertArg::Auto => Polarity::Auto,
            InvertArg::Always => Polarity::Invert,
            InvertArg::Never => Polarity::Keep,
        })
        .with_max_image_bytes(args.max_image_mib << 20);
    if let Some(b) = args.batch {
        classifier = classifier.with_batch(b);
    }
    if let Some(p) = &args.labels {
        let names = labels::read_labels(p).with_context(|| format!("reading {}", p.display()))?;
        classifier = classifier
            .with_labels(names)
            .with_context(|| format!("the class names of {}", p.display()))?;
    }
    let ranked = classifier.classify_files(&args.images, args.top_k)?;
    let mut out = String::new();
    if args.json {
        let items: Vec<_> = args
            .images
            .iter()
            .zip(&ranked)
            .map(|(p, top)| {
                serde_json::json!({
                    "image": p.display().to_string(),
                    "top": top.iter().map(|t| serde_json::json!({
                        "class": t.class, "label": t.label, "probability": t.probability,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        out = serde_json::to_string_pretty(&items)?;
        out.push('\n');
    } else {
        for (p, top) in args.images.iter().zip(&ranked) {
            let top: Vec<String> = top
                .iter()
                .map(|t| format!("{} {:.1}%", t.label, 100.0 * t.probability))
                .collect();
            out.push_str(&format!("{}: {}\n", p.display(), top.join(", ")));
        }
    }
    crate::out!("{out}")?;
    Ok(())
}
