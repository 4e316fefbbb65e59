//! Benchmark timing with CUDA events (BENCHMARKS.md): what `na bench
//! --device cuda` calls.

use na_core::{bf16, f16, DType, Element, Problem};

use crate::context::{CudaContext, DeviceGrads, DeviceInputs, DeviceSaved, DeviceTensor};
use crate::CudaError;

/// What to time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchConfig {
    /// Untimed runs first (they also compile the kernels).
    pub warmup: usize,
    /// Timed runs (fewer if `max_seconds` runs out first, at least 3).
    pub iters: usize,
    /// Time budget for the timed runs, in seconds: the first timed run's
    /// length decides how many more fit.
    pub max_seconds: f64,
    /// Time forward + backward instead of forward alone.
    pub backward: bool,
    /// Give the problem a bias (and compute its gradient).
    pub rpb: bool,
}

/// One case of the GPU suite: (id, batch, spatial, heads, head_dim, kernel,
/// stride, dilation), as in `bench/gpu_baselines.py`.
pub type Case = (
    &'static str,
    usize,
    &'static [usize],
    usize,
    usize,
    &'static [usize],
    &'static [usize],
    &'static [usize],
);

/// The GPU operator suite of BENCHMARKS.md (`na bench --device cuda`'s
/// default and the `bench` example's).
pub const SUITE: &[Case] = &[
    ("nat-l0", 1, &[56, 56], 2, 32, &[7, 7], &[1], &[1]),
    ("nat-l0-b64", 64, &[56, 56], 2, 32, &[7, 7], &[1], &[1]),
    ("dinat-l0", 1, &[56, 56], 2, 32, &[7, 7], &[1], &[8]),
    ("nat-l2", 1, &[14, 14], 8, 32, &[7, 7], &[1], &[1]),
    ("hires", 1, &[128, 128], 4, 32, &[13, 13], &[1], &[1]),
    ("seq-1d", 1, &[32768], 1, 128, &[2048], &[1], &[1]),
    (
        "seq-1d-blocked",
        1,
        &[32768],
        1,
        128,
        &[2048],
        &[2048],
        &[1],
    ),
    (
        "vol-3d",
        1,
        &[30, 48, 80],
        24,
        128,
        &[18, 24, 24],
        &[1],
        &[1],
    ),
    ("flux-2d", 1, &[256, 256], 24, 128, &[80, 80], &[1], &[1]),
    (
        "flux-2d-s16",
        1,
        &[256, 256],
        24,
        128,
        &[80, 80],
        &[16],
        &[1],
    ),
];

/// Deterministic inputs in `[-1, 1)` (a 64-bit LCG), generated on the host.
fn pseudo_random<T: Element>(n: usize, seed: u64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            T::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

fn upload_random(
    ctx: &CudaContext,
    dtype: DType,
    n: usize,
    seed: u64,
) -> Result<DeviceTensor, CudaError> {
    match dtype {
        DType::F32 => ctx.upload(&pseudo_random::<f32>(n, seed)),
        DType::F16 => ctx.upload(&pseudo_random::<f16>(n, seed)),
        DType::BF16 => ctx.upload(&pseudo_random::<bf16>(n, seed)),
    }
}

/// Times `p` on the device in storage type `dtype`: inputs stay on the
/// device, every run is bracketed by CUDA events on the context's stream,
/// and the clock is read after the stream finished. Returns the seconds of
/// each timed run.
pub fn time_problem(
    ctx: &CudaContext,
    p: &Problem,
    dtype: DType,
    cfg: &BenchConfig,
) -> Result<Vec<f64>, CudaError> {
    let q = upload_random(ctx, dtype, p.qk_len(), 1)?;
    let k = upload_random(ctx, dtype, p.qk_len(), 2)?;
    let v = upload_random(ctx, dtype, p.v_len(), 3)?;
    let rpb = if cfg.rpb {
        Some(upload_random(ctx, dtype, p.rpb_len(), 4)?)
    } else {
        None
    };
    let d_out = upload_random(ctx, dtype, p.v_len(), 5)?;
    let mut out = ctx.zeros(dtype, p.v_len())?;
    let mut lse = ctx.zeros(DType::F32, p.lse_len())?;
    let mut dq = ctx.zeros(dtype, p.qk_len())?;
    let mut dk = ctx.zeros(dtype, p.qk_len())?;
    let mut dv = ctx.zeros(dtype, p.v_len())?;
    let mut drpb = ctx.zeros(dtype, if cfg.rpb { p.rpb_len() } else { 0 })?;
    ctx.prepare(p, dtype, cfg.rpb)?;
    let x = DeviceInputs {
        query: &q,
        key: &k,
        value: &v,
        rpb: rpb.as_ref(),
    };
    let mut run = || {
        ctx.forward(p, x, &mut out, Some(&mut lse))?;
        if cfg.backward {
            ctx.backward(
                p,
                x,
                DeviceSaved {
                    out: &out,
                    lse: &lse,
                    d_out: &d_out,
                },
                DeviceGrads {
                    d_query: &mut dq,
                    d_key: &mut dk,
                    d_value: &mut dv,
                    d_rpb: if cfg.rpb { Some(&mut drpb) } else { None },
                },
            )?;
        }
        Ok(())
    };
    let mut ms = ctx.time_ms(cfg.warmup, 1, &mut run)?;
    let more = runs_within(cfg.iters, ms[0] / 1e3, cfg.max_seconds) - 1;
    ms.extend(ctx.time_ms(0, more, &mut run)?);
    Ok(ms.into_iter().map(|t| t / 1e3).collect())
}

/// How many timed runs fit in `max_seconds` when one takes `first_s`: at
/// most `iters`, at least 3 (or `iters` when that is fewer), never 0.
fn runs_within(iters: usize, first_s: f64, max_seconds: f64) -> usize {
    let iters = iters.max(1);
    let fit = if first_s > 0.0 && max_seconds.is_finite() {
        (max_seconds / first_s).floor().min(usize::MAX as f64) as usize
    } else {
        iters
    };
    fit.clamp(3.min(iters), iters)
}

#[cfg(test)]
mod tests {
    use super::runs_within;

    #[test]
    fn the_budget_caps_the_runs_but_keeps_three() {
        assert_eq!(runs_within(20, 0.001, 10.0), 20);
        assert_eq!(runs_within(20, 1.0, 10.0), 10);
        assert_eq!(runs_within(20, 5.0, 10.0), 3);
        assert_eq!(runs_within(2, 5.0, 10.0), 2);
        assert_eq!(runs_within(0, 0.5, 10.0), 1);
        assert_eq!(runs_within(20, 0.0, 10.0), 20);
    }
}
