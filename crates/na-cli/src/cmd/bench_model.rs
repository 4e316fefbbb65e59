//! `na bench --model`: whole-model latency and throughput on the CPU, with
//! the same protocol and JSON fields as the operator benchmark plus
//! `"model"`, `"batch"` and `"image_size"`.

use std::time::Duration;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use na_model::{analyze, Backend, Config, Cpu, Model, WeightMap};
use serde_json::json;

use crate::args::load_config_file;
use crate::cmd::bench::BenchArgs;
use crate::harness::{
    cpu_name, gemm_peak, git_commit, peak_rss, reset_peak_rss, stats, time_runs, write_results,
};

/// Runs the model benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    let results_file = args.results_file()?;
    let models: Vec<(String, Config)> = match &args.model_config {
        Some(p) => vec![(p.display().to_string(), load_config_file(p)?)],
        None => args
            .model
            .iter()
            .map(|n| Ok((n.clone(), Config::preset(n)?)))
            .collect::<Result<_>>()?,
    };
    if models.is_empty() {
        bail!("--model or --config is required");
    }
    if args.weights.is_some() && models.len() > 1 {
        bail!("--weights goes with a single model");
    }
    let (h, w) = match args.image_size[..] {
        [s] => (s, s),
        [h, w] => (h, w),
        _ => bail!("--image-size takes S or H,W"),
    };
    if args.batch.contains(&0) {
        bail!("--batch sizes must be positive");
    }
    let cpu = Cpu::new(args.threads);
    let threads = cpu.threads();
    let (commit, cpu_desc) = (git_commit(), cpu_name());
    let command: Vec<String> = std::env::args().collect();
    let bar = ProgressBar::new((models.len() * args.batch.len()) as u64 + 1);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("f32 GEMM peak");
    let peak = cpu.install(gemm_peak);
    bar.inc(1);
    let mut results = Vec::new();
    for (name, cfg) in &models {
        let info = analyze(cfg, h, w)?;
        reset_peak_rss();
        let weights = match &args.weights {
            Some(p) => WeightMap::load(p)?,
            None => WeightMap::random(cfg, false, 1),
        };
        let weight_bytes = 4 * weights.numel() as u64;
        let model = Model::load(cpu.clone(), cfg, weights, na_model::Head::Classifier)?;
        let load_peak = peak_rss();
        for &b in &args.batch {
            bar.set_message(format!("{name} batch {b}"));
            // The inference peak (weights resident plus activations); the
            // load's own peak is recorded apart.
            reset_peak_rss();
            let n = b * cfg.in_chans * h * w;
            let data: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
                .collect();
            let x = cpu.upload(&[b, cfg.in_chans, h, w], &data)?;
            let times = cpu.install(|| {
                time_runs(
                    args.warmup,
                    args.iters,
                    Duration::from_secs_f64(args.max_seconds),
                    || {
                        let y = model.forward(&x)?;
                        std::hint::black_box(&y);
                        Ok(())
                    },
                )
            })?;
            let (median, min, max) = stats(&times);
            let gflop = 2.0 * info.macs as f64 * b as f64 / 1e9;
            results.push(json!({
                "case": format!("{name}-b{b}"), "impl": "na-model-cpu", "model": name, "batch": b,
                "image_size": [h, w], "dtype": "f32", "pass": "forward", "threads": threads,
                "median_s": median, "min_s": min, "max_s": max, "times_s": times,
                "images_per_s": b as f64 / median, "gflop": gflop, "gflops": gflop / median,
                "gemm_peak_gflops": peak, "params": info.params, "weight_bytes": weight_bytes,
                "peak_rss_bytes": peak_rss(), "load_peak_rss_bytes": load_peak, "commit": commit, "cpu": cpu_desc,
                "command": command.join(" "),
            }));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    crate::outln!(
        "{cpu_desc}; {threads} thread(s); commit {commit}; f32 GEMM peak {peak:.1} GFLOP/s"
    )?;
    crate::outln!(
        "{:<24} {:>6} {:>11} {:>11} {:>11} {:>10} {:>9} {:>8}",
        "model",
        "batch",
        "median ms",
        "min ms",
        "max ms",
        "images/s",
        "GFLOP/s",
        "% peak"
    )?;
    for r in &results {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        crate::outln!(
            "{:<24} {:>6} {:>11.2} {:>11.2} {:>11.2} {:>10.1} {:>9.1} {:>7.1}%",
            r["model"].as_str().unwrap_or(""),
            r["batch"],
            f("median_s") * 1e3,
            f("min_s") * 1e3,
            f("max_s") * 1e3,
            f("images_per_s"),
            f("gflops"),
            100.0 * f("gflops") / peak
        )?;
    }
    for r in &results {
        if let (Some(rss), Some(wb)) = (r["peak_rss_bytes"].as_f64(), r["weight_bytes"].as_f64()) {
            let load = r["load_peak_rss_bytes"].as_f64().unwrap_or(f64::NAN);
            crate::outln!(
                "{} batch {}: peak resident memory {:.1} MiB while running ({:.2}x the f32 weights, {:.1} MiB), {:.1} MiB while loading",
                r["model"].as_str().unwrap_or(""),
                r["batch"],
                rss / (1 << 20) as f64,
                rss / wb,
                wb / (1 << 20) as f64,
                load / (1 << 20) as f64
            )?;
        }
    }
    write_results(results_file, results)
}
