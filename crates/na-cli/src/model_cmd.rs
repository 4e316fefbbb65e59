//! `na run`, `na info` and `na classify`: the models of `na-model` from the
//! command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use na_core::npy::{encode_npy_f32, read_npy, DEFAULT_MAX_ELEMENTS};
use na_model::output::Outputs;
use na_model::{analyze, Backend, Config, Cpu, Model, WeightMap};

/// Which model: a preset name or a JSON configuration.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A named preset (nat_mini … dinat_large, dinat_s_*, *_isotropic_*).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pub model: Option<String>,
    /// A JSON configuration (fields of the authors' constructors; see na-model's `Config`).
    #[arg(long, value_name = "CFG.json")]
    pub config: Option<PathBuf>,
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0, value_parser = crate::attn::parse_threads)]
    pub threads: usize,
}

impl ModelArgs {
    /// The configuration these arguments name.
    pub fn config(&self) -> Result<Config> {
        match (&self.model, &self.config) {
            (Some(name), _) => Ok(Config::preset(name)?),
            (None, Some(path)) => load_config_file(path),
            (None, None) => bail!("give --model NAME or --config CFG.json"),
        }
    }
}

/// Reads and validates a JSON configuration file.
pub fn load_config_file(path: &Path) -> Result<Config> {
    let bytes = na_model::limits::read_file(path, na_model::limits::MAX_JSON_BYTES)
        .with_context(|| format!("reading the configuration {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("the configuration {} is not UTF-8 text", path.display()))?;
    Config::from_json(&text).with_context(|| format!("configuration {}", path.display()))
}

/// Loads weights and builds the model on the CPU.
fn load_model(cpu: &Cpu, cfg: &Config, weights: &Path, backbone: bool) -> Result<Model<Cpu>> {
    let w = WeightMap::load(weights)?;
    Model::load(cpu, cfg, w, backbone).with_context(|| format!("loading {}", weights.display()))
}

/// Arguments of `na run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Which model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weights: safetensors (authors' or HuggingFace names) or a PyTorch .pth checkpoint.
    #[arg(long)]
    pub weights: PathBuf,
    /// Input images `[B, in_chans, H, W]` (.npy, f32/f64/f16).
    #[arg(long)]
    pub input: PathBuf,
    /// Output: logits `[B, classes]` (.npy, f32); with --features the four
    /// maps go to OUT with `.0.npy` … `.3.npy` in place of `.npy`.
    #[arg(long)]
    pub out: PathBuf,
    /// Backbone mode: the weights hold `norm0..norm3`; write the four
    /// normalised feature maps `[B, C_i, H_i, W_i]`.
    #[arg(long)]
    pub features: bool,
}

/// Runs `na run`.
pub fn run(args: &RunArgs) -> Result<()> {
    let cfg = args.model.config()?;
    // The outputs are checked (kind, aliases, a writable directory) first.
    let mut outs = Outputs::new();
    for (flag, p) in [("--input", &args.input), ("--weights", &args.weights)] {
        outs.input(flag, p);
    }
    let targets: Vec<PathBuf> = if args.features {
        let stem = args.out.with_extension("");
        (0..cfg.depths.len())
            .map(|i| PathBuf::from(format!("{}.{i}.npy", stem.display())))
            .collect()
    } else {
        vec![args.out.clone()]
    };
    let ids = targets
        .iter()
        .map(|t| outs.output("--out", t))
        .collect::<Result<Vec<_>, _>>()?;
    let cpu = Cpu::new(args.model.threads);
    let x = read_npy(&args.input, DEFAULT_MAX_ELEMENTS)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let model = load_model(&cpu, &cfg, &args.weights, args.features)?;
    let xt = cpu.upload(&x.shape, &x.data)?;
    let ctx = || format!("running the model on {}", args.input.display());
    let results = if args.features {
        cpu.install(|| model.features(&cpu, &xt))
            .with_context(ctx)?
    } else {
        vec![cpu.install(|| model.forward(&cpu, &xt)).with_context(ctx)?]
    };
    if results.len() != ids.len() {
        bail!(
            "the model gave {} outputs, {} were planned",
            results.len(),
            ids.len()
        );
    }
    for (&id, y) in ids.iter().zip(&results) {
        outs.stage(id, &encode_npy_f32(&y.shape, &cpu.download(y)?)?)?;
    }
    outs.commit()?;
    for (t, y) in targets.iter().zip(&results) {
        crate::outln!("wrote {} {:?}", t.display(), y.shape)?;
    }
    Ok(())
}

/// Arguments of `na info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// A preset name or a JSON configuration file.
    pub model: String,
    /// Input size: `S` or `H,W`.
    #[arg(long, value_delimiter = ',', default_value = "224", action = clap::ArgAction::Set)]
    pub size: Vec<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `na info`.
pub fn info(args: &InfoArgs) -> Result<()> {
    let cfg = if args.model.ends_with(".json") || Path::new(&args.model).is_file() {
        load_config_file(Path::new(&args.model))?
    } else {
        Config::preset(&args.model)?
    };
    let (h, w) = match args.size[..] {
        [s] => (s, s),
        [h, w] => (h, w),
        _ => bail!("--size takes S or H,W, got {} values", args.size.len()),
    };
    let info = analyze(&cfg, h, w)?;
    if args.json {
        let levels: Vec<_> = info
            .levels
            .iter()
            .map(|l| {
                serde_json::json!({"height": l.height, "width": l.width, "channels": l.channels,
                    "heads": l.heads, "dilations": l.dilations, "padded_blocks": l.padded_blocks})
            })
            .collect();
        let v = serde_json::json!({"model": args.model, "config": cfg, "input": [h, w],
            "params": info.params, "macs": info.macs, "flops": info.flops(), "levels": levels});
        crate::outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    crate::outln!(
        "{}: {:?}, {} classes",
        args.model,
        cfg.arch,
        cfg.num_classes
    )?;
    crate::outln!(
        "parameters: {} ({:.2} M)",
        info.params,
        info.params as f64 / 1e6
    )?;
    crate::outln!(
        "at {h}x{w}: {:.3} G multiply-adds, {:.3} GFLOP",
        info.macs as f64 / 1e9,
        info.flops() as f64 / 1e9
    )?;
    crate::outln!("level  map        channels  heads  dilations")?;
    for (i, l) in info.levels.iter().enumerate() {
        let pad = if l.padded_blocks > 0 {
            format!(
                "  ({} block(s) padded to kernel x dilation)",
                l.padded_blocks
            )
        } else {
            String::new()
        };
        crate::outln!(
            "{i:<6} {:<10} {:<9} {:<6} {:?}{pad}",
            format!("{}x{}", l.height, l.width),
            l.channels,
            l.heads,
            l.dilations
        )?;
    }
    Ok(())
}

/// How `na classify` treats the polarity of grey images (built-in model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InvertArg {
    /// Invert images with a light border (dark object on a light background).
    Auto,
    /// Always invert.
    Always,
    /// Never invert.
    Never,
}

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
    #[arg(long, default_value_t = 0, value_parser = crate::attn::parse_threads)]
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
    /// Largest decoded image, in MiB (8-bit RGB: 3 bytes per pixel; 16-bit RGBA: 8).
    #[arg(long, value_name = "MIB", default_value_t = na_model::limits::DEFAULT_MAX_IMAGE_BYTES >> 20,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub max_image_mib: u64,
}

/// Runs `na classify`.
pub fn classify(args: &ClassifyArgs) -> Result<()> {
    use na_model::{labels, preprocess};
    let builtin = args.model.is_none() && args.config.is_none();
    if builtin && args.weights.is_some() {
        bail!("--weights needs --model or --config (without them the built-in model is used)");
    }
    let (cfg, weights) = if builtin {
        crate::shipped::model()?
    } else {
        let cfg = match (&args.model, &args.config) {
            (Some(name), _) => Config::preset(name)?,
            (None, Some(p)) => load_config_file(p)?,
            (None, None) => unreachable!("checked above"),
        };
        let w = args.weights.as_ref().expect("clap requires --weights");
        let map = WeightMap::load(w).with_context(|| format!("loading {}", w.display()))?;
        (cfg, map)
    };
    // Grey (in_chans 1) models take Fashion-MNIST's 28x28 pipeline, as the
    // built-in one does; RGB models take ImageNet's.
    let grey = cfg.in_chans == 1;
    if cfg.num_classes == 0 || !(cfg.in_chans == 3 || grey) {
        bail!(
            "na classify needs an RGB (in_chans 3) or grey (in_chans 1) classifier; this configuration has in_chans {} and num_classes {}",
            cfg.in_chans,
            cfg.num_classes
        );
    }
    let names: Vec<String> = match &args.labels {
        Some(p) => {
            let l = labels::read_labels(p).with_context(|| format!("reading {}", p.display()))?;
            if l.len() != cfg.num_classes {
                bail!(
                    "{} has {} names for a {}-class model",
                    p.display(),
                    l.len(),
                    cfg.num_classes
                );
            }
            l
        }
        None if builtin || (grey && cfg.num_classes == na_model::train::FASHION_CLASSES.len()) => {
            na_model::train::FASHION_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect()
        }
        None if cfg.num_classes == 1000 => labels::imagenet_classes()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        None => (0..cfg.num_classes).map(|i| format!("class {i}")).collect(),
    };
    // Decode everything first: a bad image is reported before any work.
    let (side, chans) = if grey {
        (preprocess::FASHION_SIDE, 1)
    } else {
        (preprocess::Transform::imagenet().crop, 3)
    };
    let tf = preprocess::Transform::imagenet();
    let polarity = match args.invert {
        InvertArg::Auto => preprocess::Polarity::Auto,
        InvertArg::Always => preprocess::Polarity::Invert,
        InvertArg::Never => preprocess::Polarity::Keep,
    };
    // Decoded on every core; the first bad image (in argument order) is reported.
    let cpu = Cpu::new(args.threads);
    let decoded: Vec<Result<Vec<f32>, preprocess::PreprocessError>> = cpu.install(|| {
        use rayon::prelude::*;
        args.images
            .par_iter()
            .map(|p| {
                let img = preprocess::load_rgb_within(p, args.max_image_mib << 20)?;
                Ok(if grey {
                    preprocess::to_fashion_mnist(&img, polarity)
                        .into_iter()
                        .map(na_model::train::run::normalize)
                        .collect()
                } else {
                    tf.apply(&img)
                })
            })
            .collect()
    });
    let inputs = decoded.into_iter().collect::<Result<Vec<_>, _>>()?;
    let model = Model::load(&cpu, &cfg, weights, false).context("loading the model")?;
    let data: Vec<f32> = inputs.concat();
    let logits = if grey {
        let batch = args.batch.unwrap_or(64).max(1);
        na_model::train::run::logits_parallel(&cpu, &model, &data, [chans, side, side], batch)?
    } else {
        let per = chans * side * side;
        let batch = args.batch.unwrap_or(8).max(1);
        let mut all = Vec::new();
        for chunk in data.chunks(batch * per) {
            let x = cpu.upload(&[chunk.len() / per, chans, side, side], chunk)?;
            let y = cpu.install(|| model.forward(&cpu, &x))?;
            all.extend(cpu.download(&y)?);
        }
        all
    };
    // Non-finite logits (NaN or Inf weights, an overflow) have no ranking.
    for (p, l) in args.images.iter().zip(logits.chunks(cfg.num_classes)) {
        if let Some(i) = l.iter().position(|v| !v.is_finite()) {
            bail!(
                "the model's logit {i} for {} is {}: the weights or the image give no valid classification",
                p.display(),
                l[i]
            );
        }
    }
    let mut out = String::new();
    for (p, l) in args.images.iter().zip(logits.chunks(cfg.num_classes)) {
        let top: Vec<String> = labels::top_k(l, args.top_k)
            .into_iter()
            .map(|(i, prob)| format!("{} {:.1}%", names[i], 100.0 * prob))
            .collect();
        out.push_str(&format!("{}: {}\n", p.display(), top.join(", ")));
    }
    crate::out!("{out}")?;
    Ok(())
}
