//! `na bench`: the BENCHMARKS.md operator suite (or one case, or a custom
//! shape), forward or forward+backward, with an f32 GEMM peak measured in the
//! same run with the same threads.
//!
//! Timing protocol (BENCHMARKS.md): warm-up runs, then timed runs; median,
//! min and max of the raw per-run times, all of which go to `--json`.
//! Effective throughput counts forward FLOPs as `4 * B * heads * N * W * D`
//! and forward+backward as 3.5 times that.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use na_core::fused::{self, Isa};
use na_core::{bf16, f16, reference, Element, Grads, Inputs, Par, Params, Problem, Saved};
use serde_json::{json, Value};

use crate::args::{parse_bool, parse_device, DTypeArg, DeviceArg};
use crate::harness::{
    cpu_name, gemm_peak, git_commit, stats, time_runs, write_results, ResultsFile,
};

/// An implementation `na bench` can time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImplArg {
    /// The fused SIMD kernels (`na_core::fused`).
    Fused,
    /// The reference kernels (`na_core::reference`).
    Reference,
}

impl ImplArg {
    fn name(self) -> &'static str {
        match self {
            ImplArg::Fused => "na-fused",
            ImplArg::Reference => "na-reference",
        }
    }
}

/// Arguments of `na bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Cases to run (see --list); default: the whole suite of the device
    /// (BENCHMARKS.md's CPU suite, or its GPU suite with `--device cuda`).
    #[arg(long, value_delimiter = ',')]
    pub case: Vec<String>,
    /// List the suite's cases (of `--device`) and exit.
    #[arg(long)]
    pub list: bool,
    /// A custom case: the query shape `batch,*spatial,heads,head_dim` (with
    /// --kernel-size and the other operator flags).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "B,S..,H,D",
        conflicts_with = "case",
        action = clap::ArgAction::Set
    )]
    pub shape: Vec<usize>,
    /// Custom case: value head dim [default: head_dim].
    #[arg(long, requires = "shape")]
    pub head_dim_v: Option<usize>,
    /// Custom case: kernel size, one value or one per axis.
    #[arg(long, value_delimiter = ',', requires = "shape", action = clap::ArgAction::Set)]
    pub kernel_size: Vec<usize>,
    /// Custom case: stride [default: 1].
    #[arg(long, value_delimiter = ',', requires = "shape", action = clap::ArgAction::Set)]
    pub stride: Vec<usize>,
    /// Custom case: dilation [default: 1].
    #[arg(long, value_delimiter = ',', requires = "shape", action = clap::ArgAction::Set)]
    pub dilation: Vec<usize>,
    /// Custom case: causal per axis (true/false/1/0).
    #[arg(long, value_delimiter = ',', value_parser = parse_bool, requires = "shape", action = clap::ArgAction::Set)]
    pub causal: Vec<bool>,
    /// Custom case: add a relative positional bias.
    #[arg(long, requires = "shape")]
    pub rpb: bool,
    /// Time forward+backward instead of forward.
    #[arg(long)]
    pub backward: bool,
    /// Implementations to time.
    #[arg(
        long = "impl",
        value_enum,
        value_delimiter = ',',
        default_value = "fused"
    )]
    pub imps: Vec<ImplArg>,
    /// Storage type.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0, value_parser = crate::args::parse_threads)]
    pub threads: usize,
    /// Where to run the operator: cpu, cuda or cuda:N (timed with CUDA events).
    #[arg(long, value_name = "DEV", default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceArg,
    /// Fused kernels' instruction set: generic, avx2, avx512, neon [default: per case, the best of this CPU for the shape (AVX2 rather than AVX-512 on last axes with groups under 64)].
    #[arg(long)]
    pub isa: Option<String>,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed runs per case (fewer if --max-seconds runs out first, at least 3).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Time budget per case and implementation, in seconds.
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    pub max_seconds: f64,
    /// Write every result (with raw times) to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Time whole models (preset names, comma separated) instead of the operator suite.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["case", "shape", "model_config"])]
    pub model: Vec<String>,
    /// Time a whole model from a JSON configuration.
    #[arg(long = "config", value_name = "CFG.json", conflicts_with_all = ["case", "shape"])]
    pub model_config: Option<PathBuf>,
    /// Model weights [default: random weights of the right shapes].
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Model batch sizes (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Model input size: `S` or `H,W`.
    #[arg(long, value_delimiter = ',', default_value = "224", action = clap::ArgAction::Set)]
    pub image_size: Vec<usize>,
}

/// One benchmark problem.
#[derive(Clone, Debug)]
struct Case {
    id: String,
    batch: usize,
    spatial: Vec<usize>,
    heads: usize,
    head_dim: usize,
    head_dim_v: usize,
    kernel: Vec<usize>,
    stride: Vec<usize>,
    dilation: Vec<usize>,
    causal: Vec<bool>,
    rpb: bool,
}

impl Case {
    #[allow(clippy::too_many_arguments)]
    fn suite(
        id: &str,
        batch: usize,
        spatial: &[usize],
        heads: usize,
        dim: usize,
        kernel: &[usize],
        stride: &[usize],
        dilation: &[usize],
    ) -> Self {
        Case {
            id: id.into(),
            batch,
            spatial: spatial.to_vec(),
            heads,
            head_dim: dim,
            head_dim_v: dim,
            kernel: kernel.to_vec(),
            stride: stride.to_vec(),
            dilation: dilation.to_vec(),
            causal: vec![false],
            rpb: false,
        }
    }

    fn problem(&self) -> Result<Problem> {
        let params = Params::new(&self.kernel)?
            .with_stride(&self.stride)
            .context("stride")?
            .with_dilation(&self.dilation)
            .context("dilation")?
            .with_causal(&self.causal)
            .context("causal")?;
        Ok(Problem::new(
            self.batch,
            &self.spatial,
            self.heads,
            self.head_dim,
            self.head_dim_v,
            params,
        )?)
    }
}

/// The CPU operator suite of BENCHMARKS.md.
fn suite() -> Vec<Case> {
    vec![
        Case::suite("nat-l0", 1, &[56, 56], 2, 32, &[7, 7], &[1], &[1]),
        Case::suite("nat-l0-b64", 64, &[56, 56], 2, 32, &[7, 7], &[1], &[1]),
        Case::suite("dinat-l0", 1, &[56, 56], 2, 32, &[7, 7], &[1], &[8]),
        Case::suite("nat-l2", 1, &[14, 14], 8, 32, &[7, 7], &[1], &[1]),
        Case::suite("hires", 1, &[128, 128], 4, 32, &[13, 13], &[1], &[1]),
        Case::suite("seq-1d", 1, &[4096], 4, 64, &[255], &[1], &[1]),
        Case::suite("seq-1d-blocked", 1, &[4096], 4, 64, &[256], &[256], &[1]),
        Case::suite("vol-3d", 1, &[8, 16, 16], 4, 32, &[3, 7, 7], &[1], &[1]),
    ]
}

/// The GPU operator suite of BENCHMARKS.md (`na_cuda::bench::SUITE`): the
/// default of `--device cuda`.
fn gpu_suite() -> Vec<Case> {
    na_cuda::bench::SUITE
        .iter()
        .map(|&(id, b, s, h, d, k, st, dil)| Case::suite(id, b, s, h, d, k, st, dil))
        .collect()
}

/// The suite of the device the arguments name.
fn suite_for(device: &DeviceArg) -> Vec<Case> {
    match device {
        DeviceArg::Cpu => suite(),
        DeviceArg::Cuda(_) => gpu_suite(),
    }
}

/// Deterministic standard-normal data (SplitMix64 + Box-Muller).
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (((z ^ (z >> 31)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (next(), next());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// Buffers of one case in storage type `T`.
struct Buffers<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    rpb: Option<Vec<T>>,
    d_out: Vec<T>,
    out: Vec<T>,
    lse: Vec<f32>,
    dq: Vec<T>,
    dk: Vec<T>,
    dv: Vec<T>,
    drpb: Vec<T>,
}

/// The bytes [`Buffers::new`] allocates for a problem (plus the f32 copies
/// the random inputs are made from), without overflow.
fn planned_bytes(p: &Problem, rpb: bool, args: &BenchArgs) -> u128 {
    let elem: u128 = match args.dtype {
        DTypeArg::F32 => 4,
        DTypeArg::F16 | DTypeArg::Bf16 => 2,
    };
    let (qk, v, lse) = (p.qk_len() as u128, p.v_len() as u128, p.lse_len() as u128);
    let r = if rpb { p.rpb_len() as u128 } else { 0 };
    // q, k, dq, dk; v, d_out, out, dv; rpb and drpb; the f32 staging copy.
    (4 * qk + 4 * v + 2 * r) * elem + 4 * lse + 4 * qk.max(v)
}

impl<T: Element> Buffers<T> {
    fn new(p: &Problem, rpb: bool) -> Self {
        let conv = |x: Vec<f32>| x.into_iter().map(T::from_f32).collect::<Vec<T>>();
        Buffers {
            q: conv(normal(p.qk_len(), 1)),
            k: conv(normal(p.qk_len(), 2)),
            v: conv(normal(p.v_len(), 3)),
            rpb: rpb.then(|| conv(normal(p.rpb_len(), 4))),
            d_out: conv(normal(p.v_len(), 5)),
            out: vec![T::default(); p.v_len()],
            lse: vec![0.0; p.lse_len()],
            dq: vec![T::default(); p.qk_len()],
            dk: vec![T::default(); p.qk_len()],
            dv: vec![T::default(); p.v_len()],
            drpb: vec![T::default(); if rpb { p.rpb_len() } else { 0 }],
        }
    }

    /// One timed unit of work.
    fn run(&mut self, p: &Problem, imp: ImplArg, isa: Isa, backward: bool, par: Par) -> Result<()> {
        let x = Inputs {
            query: &self.q,
            key: &self.k,
            value: &self.v,
            rpb: self.rpb.as_deref(),
        };
        match imp {
            ImplArg::Fused => {
                fused::forward_on(isa, p, x, &mut self.out, Some(&mut self.lse), par)?
            }
            ImplArg::Reference => {
                reference::forward(p, x, &mut self.out, Some(&mut self.lse), par)?
            }
        }
        if backward {
            let s = Saved {
                out: &self.out,
                lse: &self.lse,
                d_out: &self.d_out,
            };
            let has_rpb = self.rpb.is_some();
            let g = Grads {
                d_query: &mut self.dq,
                d_key: &mut self.dk,
                d_value: &mut self.dv,
                d_rpb: has_rpb.then_some(&mut self.drpb[..]),
            };
            match imp {
                ImplArg::Fused => fused::backward_on(isa, p, x, s, g, par)?,
                ImplArg::Reference => reference::backward(p, x, s, g, par)?,
            }
        }
        Ok(())
    }
}

/// The ISA `--isa` names, or `None` (each case then gets [`Isa::best_for`]).
fn choose_isa(name: Option<&str>) -> Result<Option<Isa>> {
    let Some(name) = name else {
        return Ok(None);
    };
    let names: Vec<&str> = Isa::available().map(Isa::name).collect();
    match Isa::available().find(|i| i.name() == name) {
        Some(i) => Ok(Some(i)),
        None => bail!(
            "--isa {name} is not available on this CPU (available: {})",
            names.join(", ")
        ),
    }
}

fn cases(args: &BenchArgs) -> Result<Vec<Case>> {
    if !args.shape.is_empty() {
        let s = &args.shape;
        if !(4..=6).contains(&s.len()) {
            bail!("--shape needs batch, 1 to 3 spatial extents, heads and head_dim (4 to 6 values), got {}", s.len());
        }
        if args.kernel_size.is_empty() {
            bail!("--shape needs --kernel-size");
        }
        let n = s.len();
        let one = |v: &Vec<usize>| if v.is_empty() { vec![1] } else { v.clone() };
        // One kernel size stands for every spatial axis, as the help says.
        let kernel = match args.kernel_size[..] {
            [k] => vec![k; n - 3],
            _ => args.kernel_size.clone(),
        };
        return Ok(vec![Case {
            id: "custom".into(),
            batch: s[0],
            spatial: s[1..n - 2].to_vec(),
            heads: s[n - 2],
            head_dim: s[n - 1],
            head_dim_v: args.head_dim_v.unwrap_or(s[n - 1]),
            kernel,
            stride: one(&args.stride),
            dilation: one(&args.dilation),
            causal: if args.causal.is_empty() {
                vec![false]
            } else {
                args.causal.clone()
            },
            rpb: args.rpb,
        }]);
    }
    let all = suite_for(&args.device);
    if args.case.is_empty() {
        return Ok(all);
    }
    args.case
        .iter()
        .map(|id| {
            all.iter().find(|c| &c.id == id).cloned().with_context(|| {
                let ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
                format!("unknown --case '{id}' (known: {})", ids.join(", "))
            })
        })
        .collect()
}

fn bench_case<T: Element>(
    c: &Case,
    p: &Problem,
    imp: ImplArg,
    isa: Isa,
    args: &BenchArgs,
    par: Par,
) -> Result<Vec<f64>> {
    let mut b = Buffers::<T>::new(p, c.rpb);
    time_runs(
        args.warmup,
        args.iters,
        Duration::from_secs_f64(args.max_seconds),
        || b.run(p, imp, isa, args.backward, par),
    )
}

impl BenchArgs {
    /// Whether these arguments ask for a model benchmark.
    pub fn is_model_run(&self) -> bool {
        !self.model.is_empty() || self.model_config.is_some()
    }
}

impl BenchArgs {
    /// Plans `--json`, which must not replace `--weights` or `--config`.
    pub fn results_file(&self) -> Result<ResultsFile> {
        ResultsFile::plan(
            self.json.as_deref(),
            &[
                ("--weights", self.weights.as_deref()),
                ("--config", self.model_config.as_deref()),
            ],
        )
    }
}

/// Runs `na bench` for the operator (`bench_model::run` takes the model
/// runs, chosen in `lib.rs` by [`BenchArgs::is_model_run`]).
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.list {
        crate::outln!(
            "{:<16} {:>5} {:<14} {:>9} {:<10} {:<10} {:<8}",
            "case",
            "batch",
            "spatial",
            "heads x D",
            "window",
            "dilation",
            "stride"
        )?;
        for c in suite_for(&args.device) {
            crate::outln!(
                "{:<16} {:>5} {:<14} {:>9} {:<10} {:<10} {:<8}",
                c.id,
                c.batch,
                format!("{:?}", c.spatial),
                format!("{}x{}", c.heads, c.head_dim),
                format!("{:?}", c.kernel),
                format!("{:?}", c.dilation),
                format!("{:?}", c.stride)
            )?;
        }
        return Ok(());
    }
    if !(args.max_seconds.is_finite() && args.max_seconds > 0.0) {
        bail!(
            "--max-seconds {} is not a positive number of seconds",
            args.max_seconds
        );
    }
    let results_file = args.results_file()?;
    let cases = cases(args)?;
    let problems: Vec<Problem> = cases
        .iter()
        .map(|c| c.problem().with_context(|| format!("case {}", c.id)))
        .collect::<Result<_>>()?;
    for (c, p) in cases.iter().zip(&problems) {
        na_model::limits::check_memory(&format!("case {}", c.id), planned_bytes(p, c.rpb, args))
            .map_err(anyhow::Error::msg)?;
    }
    if let DeviceArg::Cuda(_) = args.device {
        return run_cuda(args, &cases, &problems, results_file);
    }
    let isa_arg = choose_isa(args.isa.as_deref())?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("starting the thread pool")?;
    let threads = pool.current_num_threads();
    let par = Par::rayon(threads);
    let (commit, cpu) = (git_commit(), cpu_name());
    let command: Vec<String> = std::env::args().collect();

    let bar = ProgressBar::new((cases.len() * args.imps.len()) as u64 + 1);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("f32 GEMM peak");
    let peak = pool.install(gemm_peak);
    bar.inc(1);

    let pass = if args.backward {
        "forward+backward"
    } else {
        "forward"
    };
    let mut results: Vec<Value> = vec![];
    for (c, p) in cases.iter().zip(&problems) {
        let isa = isa_arg.unwrap_or_else(|| Isa::best_for(p));
        for &imp in &args.imps {
            bar.set_message(format!("{} {}", c.id, imp.name()));
            let times = pool.install(|| match args.dtype {
                DTypeArg::F32 => bench_case::<f32>(c, p, imp, isa, args, par),
                DTypeArg::F16 => bench_case::<f16>(c, p, imp, isa, args, par),
                DTypeArg::Bf16 => bench_case::<bf16>(c, p, imp, isa, args, par),
            })?;
            let (median, min, max) = stats(&times);
            let gflop = p.forward_flops() / 1e9 * if args.backward { 3.5 } else { 1.0 };
            results.push(json!({
                "case": c.id, "impl": imp.name(), "isa": if imp == ImplArg::Fused { isa.name() } else { "scalar" },
                "dims": c.spatial.len(), "batch": c.batch, "shape": c.spatial, "heads": c.heads, "head_dim": c.head_dim,
                "head_dim_v": c.head_dim_v, "kernel_size": p.params().kernel_size(), "dilation": p.params().dilation(),
                "stride": p.params().stride(), "causal": p.params().causal(), "rpb": c.rpb, "dtype": args.dtype.name(),
                "pass": pass, "threads": threads, "median_s": median, "min_s": min, "max_s": max, "times_s": times,
                "gflop": gflop, "gflops": gflop / median, "gemm_peak_gflops": peak, "commit": commit, "cpu": cpu,
                "command": command.join(" "),
            }));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let isa = match isa_arg {
        Some(i) => i.name().to_string(),
        None => format!("per case ({} available)", Isa::best()),
    };
    crate::outln!("{cpu}; {threads} thread(s); fused ISA {isa}; commit {commit}; f32 GEMM peak {peak:.1} GFLOP/s")?;
    crate::outln!(
        "{:<16} {:<13} {:<16} {:>11} {:>11} {:>11} {:>9} {:>8}",
        "case",
        "impl",
        "pass",
        "median ms",
        "min ms",
        "max ms",
        "GFLOP/s",
        "% peak"
    )?;
    for r in &results {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        crate::outln!(
            "{:<16} {:<13} {:<16} {:>11.3} {:>11.3} {:>11.3} {:>9.2} {:>7.1}%",
            r["case"].as_str().unwrap_or(""),
            r["impl"].as_str().unwrap_or(""),
            pass,
            f("median_s") * 1e3,
            f("min_s") * 1e3,
            f("max_s") * 1e3,
            f("gflops"),
            100.0 * f("gflops") / peak
        )?;
    }
    write_results(results_file, results)
}

/// `na bench --device cuda`: the same cases on a GPU through `na-cuda`, timed
/// with CUDA events; the JSON adds `"gpu"` and `"driver"`.
fn run_cuda(
    args: &BenchArgs,
    cases: &[Case],
    problems: &[Problem],
    results_file: ResultsFile,
) -> Result<()> {
    let ctx = match args.device {
        DeviceArg::Cuda(n) => {
            na_cuda::CudaContext::new(n).with_context(|| format!("--device cuda:{n}"))?
        }
        DeviceArg::Cpu => anyhow::bail!("--device cpu has no CUDA context"),
    };
    let info = ctx.info().clone();
    let dtype = match args.dtype {
        DTypeArg::F32 => na_core::DType::F32,
        DTypeArg::F16 => na_core::DType::F16,
        DTypeArg::Bf16 => na_core::DType::BF16,
    };
    let (commit, cpu) = (git_commit(), cpu_name());
    let command: Vec<String> = std::env::args().collect();
    let pass = if args.backward {
        "forward+backward"
    } else {
        "forward"
    };
    let mut results: Vec<Value> = vec![];
    for (c, p) in cases.iter().zip(problems) {
        let cfg = na_cuda::bench::BenchConfig {
            warmup: args.warmup,
            iters: args.iters.max(1),
            backward: args.backward,
            rpb: c.rpb,
            max_seconds: args.max_seconds,
        };
        let times = na_cuda::bench::time_problem(&ctx, p, dtype, &cfg)
            .with_context(|| format!("case {}", c.id))?;
        let (median, min, max) = stats(&times);
        let gflop = p.forward_flops() / 1e9 * if args.backward { 3.5 } else { 1.0 };
        results.push(json!({
            "case": c.id, "impl": "na-cuda", "isa": format!("sm_{}", info.arch),
            "dims": c.spatial.len(), "batch": c.batch, "shape": c.spatial, "heads": c.heads, "head_dim": c.head_dim,
            "head_dim_v": c.head_dim_v, "kernel_size": p.params().kernel_size(), "dilation": p.params().dilation(),
            "stride": p.params().stride(), "causal": p.params().causal(), "rpb": c.rpb, "dtype": args.dtype.name(),
            "pass": pass, "threads": Value::Null, "median_s": median, "min_s": min, "max_s": max, "times_s": times,
            "gflop": gflop, "gflops": gflop / median, "gemm_peak_gflops": Value::Null, "commit": commit, "cpu": cpu,
            "gpu": info.name, "driver": info.driver(), "command": command.join(" "),
        }));
        crate::outln!(
            "{:<16} na-cuda {:<16} median {:>9.3} ms  min {:>9.3}  max {:>9.3}  {:>9.1} GFLOP/s",
            c.id,
            pass,
            median * 1e3,
            min * 1e3,
            max * 1e3,
            gflop / median
        )?;
    }
    crate::outln!(
        "{} (sm_{}), driver {}; commit {commit}",
        info.name,
        info.arch,
        info.driver()
    )?;
    write_results(results_file, results)
}
