//! The timing harness of `na bench`: warm-up and timed runs, their
//! statistics, the machine's f32 GEMM peak for comparison, the machine and
//! commit a result was measured on, peak memory, and the results file.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use na_model::output::{OutputId, Outputs};
use serde_json::Value;

/// Times `f` with warm-up; at least 3 timed runs, at most `iters`, within `budget`.
pub fn time_runs(
    warmup: usize,
    iters: usize,
    budget: Duration,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    let start = Instant::now();
    for _ in 0..warmup {
        f()?;
        if start.elapsed() > budget / 2 {
            break;
        }
    }
    let timed = Instant::now();
    let mut times = Vec::with_capacity(iters);
    while times.len() < iters.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
        if times.len() >= 3 && timed.elapsed() > budget {
            break;
        }
    }
    Ok(times)
}

/// Median, minimum and maximum of `times`.
pub fn stats(times: &[f64]) -> (f64, f64, f64) {
    let mut s = times.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    };
    (median, s[0], s[n - 1])
}

/// f32 GEMM peak of this machine on the current rayon pool: the best of
/// several 1024^3 products through the models' GEMM wrapper
/// ([`na_model::ops::gemm::peak_gflops`]).
pub fn gemm_peak() -> f64 {
    na_model::ops::gemm::peak_gflops()
}

/// `git rev-parse --short HEAD` of the working directory (with `-dirty`), or `unknown`.
pub fn git_commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => match run(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{c}-dirty"),
            _ => c,
        },
        None => "unknown".into(),
    }
}

/// The CPU model name and logical core count, from /proc/cpuinfo where it exists.
pub fn cpu_name() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model} ({cores} logical cores)")
}

/// Writes `results` as a JSON list to `path` (if given), through a
/// temporary file and a rename.
pub fn write_results(plan: ResultsFile, results: Vec<Value>) -> Result<()> {
    let Some((mut outs, id)) = plan.0 else {
        return Ok(());
    };
    let text = serde_json::to_string_pretty(&Value::Array(results))? + "\n";
    let path = outs.path(id).to_path_buf();
    outs.stage(id, text.as_bytes())?;
    outs.commit()?;
    crate::outln!("wrote {}", path.display())?;
    Ok(())
}

/// Where `--json` goes, checked before any timing (see `na_model::output`).
pub struct ResultsFile(Option<(Outputs, OutputId)>);

impl ResultsFile {
    /// Plans the results file `json` (`--json`), registering `inputs`
    /// (`(flag, path)`) as files it must not replace.
    pub fn plan(json: Option<&Path>, inputs: &[(&str, Option<&Path>)]) -> Result<Self> {
        let Some(path) = json else {
            return Ok(ResultsFile(None));
        };
        let mut outs = Outputs::new();
        for &(flag, p) in inputs {
            if let Some(p) = p {
                outs.input(flag, p);
            }
        }
        let id = outs.output("--json", path)?;
        Ok(ResultsFile(Some((outs, id))))
    }
}

/// Peak resident memory of this process (`VmHWM`), in bytes, where Linux tells it.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak resident memory (`VmHWM`) where Linux allows it.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
