//! The GPU operator suite of BENCHMARKS.md on na-cuda, timed with CUDA events.
//!
//! ```sh
//! cargo run --release -p na-cuda --example bench -- [--dtype f16|bf16|f32] [--backward]
//!     [--case id,id] [--warmup N] [--iters N] [--max-seconds S] [--json FILE] [--list]
//! ```
//!
//! Writes the fields of `na bench --json` plus `"gpu"` and `"driver"`, with
//! `"impl": "na-cuda"`; `bench/gpu_baselines.py` writes the same for PyTorch
//! SDPA and FlexAttention.

use na_core::{DType, Params, Problem};
use na_cuda::bench::{time_problem, BenchConfig, Case, SUITE};
use na_cuda::CudaContext;
use serde_json::{json, Value};

fn problem(c: &Case) -> Problem {
    let params = Params::new(c.5)
        .and_then(|p| p.with_stride(c.6))
        .and_then(|p| p.with_dilation(c.7))
        .unwrap();
    Problem::new(c.1, c.2, c.3, c.4, c.4, params).unwrap()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if flag("--list") {
        for c in SUITE {
            let p = problem(c);
            println!(
                "{:<16} batch {:>3} {:?} {}x{} window {:?} stride {:?} dilation {:?} {:.3} GFLOP",
                c.0,
                c.1,
                c.2,
                c.3,
                c.4,
                c.5,
                c.6,
                c.7,
                p.forward_flops() / 1e9
            );
        }
        return Ok(());
    }
    let dtype = match value("--dtype").as_deref().unwrap_or("f16") {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => return Err(format!("unknown dtype {other}").into()),
    };
    let wanted: Vec<String> = value("--case")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let cfg = BenchConfig {
        warmup: value("--warmup").map_or(Ok(3), |s| s.parse())?,
        iters: value("--iters").map_or(Ok(20), |s| s.parse())?,
        backward: flag("--backward"),
        rpb: false,
        max_seconds: value("--max-seconds").map_or(Ok(10.0), |s| s.parse())?,
    };
    let ctx = CudaContext::new(0)?;
    let info = ctx.info().clone();
    let pass = if cfg.backward {
        "forward+backward"
    } else {
        "forward"
    };
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |s| s.trim().to_string());
    let mut results: Vec<Value> = vec![];
    for c in SUITE
        .iter()
        .filter(|c| wanted.is_empty() || wanted.iter().any(|w| w == c.0))
    {
        let p = problem(c);
        let gflop = p.forward_flops() / 1e9 * if cfg.backward { 3.5 } else { 1.0 };
        let mut r = json!({
            "case": c.0, "impl": "na-cuda", "isa": format!("sm_{}", info.arch),
            "dims": c.2.len(), "batch": c.1, "shape": c.2, "heads": c.3, "head_dim": c.4,
            "head_dim_v": c.4, "kernel_size": p.params().kernel_size(),
            "dilation": p.params().dilation(), "stride": p.params().stride(),
            "causal": p.params().causal(), "rpb": cfg.rpb, "dtype": dtype.name(), "pass": pass,
            "threads": null, "gpu": info.name, "driver": info.driver(), "commit": commit,
            "command": args.join(" "), "gflop": gflop,
        });
        match time_problem(&ctx, &p, dtype, &cfg) {
            Ok(mut t) => {
                let times = t.clone();
                t.sort_by(f64::total_cmp);
                let median = t[t.len() / 2];
                println!(
                    "{:<16} {pass:<16} median {:10.3} ms (min {:.3}, max {:.3}) {:10.1} GFLOP/s",
                    c.0,
                    median * 1e3,
                    t[0] * 1e3,
                    t[t.len() - 1] * 1e3,
                    gflop / median
                );
                r["median_s"] = json!(median);
                r["min_s"] = json!(t[0]);
                r["max_s"] = json!(t[t.len() - 1]);
                r["times_s"] = json!(times);
                r["gflops"] = json!(gflop / median);
            }
            Err(e) => {
                println!("{:<16} skipped: {e}", c.0);
                r["skipped"] = json!(e.to_string());
            }
        }
        results.push(r);
    }
    println!(
        "{} (sm_{}), driver {}, {dtype}, commit {commit}",
        info.name,
        info.arch,
        info.driver()
    );
    if let Some(path) = value("--json") {
        std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
        println!("wrote {path}");
    }
    Ok(())
}
