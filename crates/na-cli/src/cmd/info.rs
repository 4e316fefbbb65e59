//! `na info`: parameters, multiply-adds and per-level shapes of a preset
//! or a configuration.

use std::path::Path;

use anyhow::{bail, Result};
use clap::Args;
use na_model::{analyze, Config};

use crate::args::load_config_file;

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
pub fn run(args: &InfoArgs) -> Result<()> {
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
