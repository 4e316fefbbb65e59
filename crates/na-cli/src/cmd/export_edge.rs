//! `na export-edge`: a NAT/DiNAT classifier as an [`na_edge`] weight blob
//! (f16 or f32) for the `no_std` inference path, and optionally images
//! prepared as that model's inputs (as `na classify` prepares them), raw
//! little-endian f32 laid end to end, for firmware that embeds both.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use na_edge::{write_blob, AlignedBlob, EdgeConfig, EdgeModel};
use na_model::output::Outputs;
use na_model::{Config, Cpu, Head, Model, WeightMap};

use crate::args::{load_config_file, InvertArg};

/// Arguments of `na export-edge`.
#[derive(Debug, Args)]
pub struct ExportEdgeArgs {
    /// The weight blob to write (replaced if it exists).
    #[arg(value_name = "OUTPUT.naedge")]
    pub output: PathBuf,
    /// A named preset (needs --weights) [default: the built-in Fashion-MNIST model].
    #[arg(long, conflicts_with = "config", requires = "weights")]
    pub model: Option<String>,
    /// A JSON configuration (needs --weights).
    #[arg(long, value_name = "CFG.json", requires = "weights")]
    pub config: Option<PathBuf>,
    /// Weights: safetensors or a PyTorch .pth checkpoint (needs --model or --config).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Element type of the weights in the blob.
    #[arg(long, value_enum, default_value = "f16")]
    pub dtype: EdgeDType,
    /// Also write these images, prepared as the model's inputs, to --inputs.
    #[arg(long, value_name = "IMAGE", num_args = 1.., requires = "inputs")]
    pub images: Vec<PathBuf>,
    /// Where --images go: `[n, channels, height, width]` little-endian f32, no header.
    #[arg(long, value_name = "INPUTS.f32", requires = "images")]
    pub inputs: Option<PathBuf>,
    /// Grey models: invert grey images (as `na classify --invert`).
    #[arg(long, value_enum, default_value = "auto")]
    pub invert: InvertArg,
}

/// Element type of the blob's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EdgeDType {
    /// IEEE half precision (half the bytes; logits within about 1e-3 of f32).
    F16,
    /// IEEE single precision (the same function as the std model, to rounding).
    F32,
    /// The linear layers' weights as int8 with one f32 scale per output channel, the
    /// other tensors f16 (about a quarter of f32's bytes).
    I8,
}

impl EdgeDType {
    fn name(self) -> &'static str {
        match self {
            EdgeDType::F16 => "f16",
            EdgeDType::F32 => "f32",
            EdgeDType::I8 => "int8",
        }
    }
}

/// The [`EdgeConfig`] of a std configuration (NAT and DiNAT; the others are
/// refused by [`EdgeConfig::new`] with a typed error).
pub fn edge_config(cfg: &Config) -> Result<EdgeConfig> {
    let arch = match cfg.arch {
        na_model::Arch::Nat => na_edge::Arch::Nat,
        na_model::Arch::Dinat => na_edge::Arch::Dinat,
        na_model::Arch::DinatS => na_edge::Arch::DinatS,
        na_model::Arch::Isotropic => na_edge::Arch::Isotropic,
    };
    let hidden: Vec<usize> = (0..cfg.levels())
        .map(|i| cfg.mlp_hidden(cfg.dim(i)))
        .collect();
    let mut e = EdgeConfig::new(
        arch,
        cfg.in_chans,
        cfg.embed_dim,
        &cfg.depths,
        &cfg.num_heads,
        &hidden,
        cfg.kernel_size,
        cfg.num_classes,
    )?
    .with_layer_scale(cfg.layer_scale.is_some())
    .with_stem_strides(cfg.stem_strides())?;
    for i in 0..cfg.levels() {
        let d: Vec<usize> = (0..cfg.depths[i]).map(|j| cfg.dilation(i, j)).collect();
        e = e.with_dilations(i, &d)?;
    }
    Ok(e)
}

/// Runs `na export-edge`.
pub fn run(args: &ExportEdgeArgs) -> Result<()> {
    use na_model::classify::Classifier;
    use na_model::preprocess::Polarity;
    let builtin = args.model.is_none() && args.config.is_none();
    if builtin && args.weights.is_some() {
        bail!("--weights needs --model or --config (without them the built-in model is used)");
    }
    let mut outs = Outputs::new();
    let blob_id = outs.output("OUTPUT.naedge", &args.output)?;
    let inputs_id = match &args.inputs {
        Some(p) => Some(outs.output("--inputs", p)?),
        None => None,
    };
    let (cfg, weights, name) = if builtin {
        let (c, w) = na_model::fashion::builtin().context("the built-in model")?;
        (c, w, "the built-in Fashion-MNIST model".to_string())
    } else {
        let cfg = match (&args.model, &args.config) {
            (Some(name), _) => Config::preset(name)?,
            (None, Some(p)) => load_config_file(p)?,
            (None, None) => unreachable!("checked above"),
        };
        let w = args.weights.as_ref().expect("clap requires --weights");
        outs.input("--weights", w);
        let map = WeightMap::load(w).with_context(|| format!("loading {}", w.display()))?;
        (cfg, map, w.display().to_string())
    };
    let ecfg = edge_config(&cfg).context("this model cannot run on the edge path")?;
    // The std model checks the weights against the configuration (names,
    // shapes, unexpected keys) with its own messages, and prepares images.
    let model = Model::load(Cpu::new(1), &cfg, weights.clone(), Head::Classifier)
        .with_context(|| format!("loading {name}"))?;
    let named: Vec<(&str, &[usize], &[f32])> = weights
        .names()
        .map(|n| {
            let t = weights.get(n).expect("a listed name");
            (n, t.shape.as_slice(), t.data.as_slice())
        })
        .collect();
    let dtype = match args.dtype {
        EdgeDType::F16 => na_edge::DType::F16,
        EdgeDType::F32 => na_edge::DType::F32,
        EdgeDType::I8 => na_edge::DType::I8,
    };
    let bytes = write_blob(&ecfg, &named, dtype).context("writing the edge blob")?;

    let classifier = Classifier::new(model)?.with_polarity(match args.invert {
        InvertArg::Auto => Polarity::Auto,
        InvertArg::Always => Polarity::Invert,
        InvertArg::Never => Polarity::Keep,
    });
    let [_, h, w] = classifier.pipeline().dims();
    // The blob as the firmware will read it, planned at the input size.
    let aligned = AlignedBlob::new(&bytes);
    let edge = EdgeModel::new(&aligned).context("reading back the blob just written")?;
    let plan = edge.plan(h, w)?;
    if let Some(id) = inputs_id {
        let mut raw = Vec::with_capacity(args.images.len() * plan.input_len() * 4);
        for p in &args.images {
            let x = classifier
                .load(p)
                .with_context(|| format!("preparing {}", p.display()))?;
            raw.extend(x.iter().flat_map(|v| v.to_le_bytes()));
        }
        outs.stage(id, &raw)?;
    }
    outs.stage(blob_id, &bytes)?;
    outs.commit()?;
    crate::outln!(
        "na export-edge: {name} ({:?}, {} weights), wrote {} ({}); at {h}x{w}: arena {} bytes, {} multiply-adds per image{}",
        cfg.arch,
        args.dtype.name(),
        args.output.display(),
        na_model::limits::human(bytes.len() as u128),
        plan.arena_bytes(),
        plan.macs(),
        match &args.inputs {
            Some(p) => format!("; {} images to {}", args.images.len(), p.display()),
            None => String::new(),
        }
    )?;
    Ok(())
}
