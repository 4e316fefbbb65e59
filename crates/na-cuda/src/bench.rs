//! Benchmark timing with CUDA events (BENCHMARKS.md): what `na bench
//! --device cuda` calls.

use na_core::{bf16, f16, DType, Element, Problem};

use crate::context::{CudaContext, DeviceGrads, DeviceInputs, DeviceSaved, DeviceTensor};
use crate::CudaError;

/// What to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    /// Untimed runs first (they also compile the kernels).
    pub warmup: usize,
    /// Timed runs.
    pub iters: usize,
    /// Time forward + backward instead of forward alone.
    pub backward: bool,
    /// Give the problem a bias (and compute its gradient).
    pub rpb: bool,
}

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
    let ms = ctx.time_ms(cfg.warmup, cfg.iters, || {
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
    })?;
    Ok(ms.into_iter().map(|t| t / 1e3).collect())
}
