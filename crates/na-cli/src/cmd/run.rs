//! `na run`: a model on a `.npy` batch of images, logits or backbone
//! features to `.npy`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use na_core::npy::{encode_npy_f32, read_npy, DEFAULT_MAX_ELEMENTS};
use na_model::output::Outputs;
use na_model::{Backend, Config, Cpu, Head, Model, WeightMap};

use crate::args::ModelArgs;

/// Loads weights and builds the model on the CPU.
fn load_model(cpu: Cpu, cfg: &Config, weights: &Path, head: Head) -> Result<Model<Cpu>> {
    let w = WeightMap::load(weights)?;
    Model::load(cpu, cfg, w, head).with_context(|| format!("loading {}", weights.display()))
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
    let head = if args.features {
        Head::Backbone
    } else {
        Head::Classifier
    };
    let model = load_model(cpu.clone(), &cfg, &args.weights, head)?;
    let xt = cpu.upload(&x.shape, &x.data)?;
    let ctx = || format!("running the model on {}", args.input.display());
    let results = match head {
        Head::Backbone => model.features(&xt).with_context(ctx)?,
        Head::Classifier => vec![model.forward(&xt).with_context(ctx)?],
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
