//! `na attn`: the operator on `.npy` files, computed by the fused kernels
//! (`na_core::fused`) on the best instruction set of this CPU.
//!
//! Arrays are heads-last, `[batch, *spatial, heads, dim]`; the number of
//! spatial axes is the array rank minus 3. Inputs may be `<f2`, `<f4` or
//! `<f8`; outputs are written as `<f4`. Every output is first written to a
//! temporary file beside its target and renamed into place only once every
//! output has been computed and written, so a failed run leaves no output.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use na_core::npy::{self, NpyArray};
use na_core::{bf16, f16, Element, Par, Params, Problem};
use na_core::{Grads, Inputs, Saved};
use na_model::output::{OutputId, Outputs};

use crate::args::{parse_bool, parse_device, DTypeArg, DeviceArg};

/// Arguments of `na attn`.
#[derive(Debug, Args)]
pub struct AttnArgs {
    /// Query, `[batch, *spatial, heads, head_dim]`.
    #[arg(long, value_name = "Q.npy")]
    pub query: PathBuf,
    /// Key, same shape as the query.
    #[arg(long, value_name = "K.npy")]
    pub key: PathBuf,
    /// Value, `[batch, *spatial, heads, head_dim_v]`.
    #[arg(long, value_name = "V.npy")]
    pub value: PathBuf,
    /// Kernel size: one value for every spatial axis, or one per axis.
    #[arg(long, value_name = "K[,K..]", value_delimiter = ',', required = true, action = clap::ArgAction::Set)]
    pub kernel_size: Vec<usize>,
    /// Stride: one value, or one per axis [default: 1].
    #[arg(long, value_name = "S[,..]", value_delimiter = ',', action = clap::ArgAction::Set)]
    pub stride: Vec<usize>,
    /// Dilation: one value, or one per axis [default: 1].
    #[arg(long, value_name = "D[,..]", value_delimiter = ',', action = clap::ArgAction::Set)]
    pub dilation: Vec<usize>,
    /// Causal masking per axis: true/false/1/0 [default: false].
    #[arg(long, value_name = "C[,..]", value_delimiter = ',', value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub causal: Vec<bool>,
    /// Scale applied to <q, k> [default: head_dim^-0.5].
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub scale: Option<f32>,
    /// Relative positional bias, `[heads, 2*k_0-1, ...]`.
    #[arg(long, value_name = "RPB.npy")]
    pub rpb: Option<PathBuf>,
    /// Storage type of the computation (inputs are converted to it).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// Threads (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = crate::args::parse_threads)]
    pub threads: usize,
    /// Where to run: cpu, cuda or cuda:N (the CUDA driver and NVRTC are loaded at run time).
    #[arg(long, value_name = "DEV", default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceArg,
    /// Output, `[batch, *spatial, heads, head_dim_v]`, written as <f4.
    #[arg(long, value_name = "OUT.npy")]
    pub out: PathBuf,
    /// Log-sum-exp of the logits, `[batch, *spatial, heads]`.
    #[arg(long, value_name = "LSE.npy")]
    pub lse: Option<PathBuf>,
    /// Gradient of the loss with respect to the output (runs the backward pass).
    #[arg(long, value_name = "DOUT.npy", requires_all = ["grad_query", "grad_key", "grad_value"])]
    pub grad_out: Option<PathBuf>,
    /// Where to write d_query.
    #[arg(long, value_name = "DQ.npy", requires = "grad_out")]
    pub grad_query: Option<PathBuf>,
    /// Where to write d_key.
    #[arg(long, value_name = "DK.npy", requires = "grad_out")]
    pub grad_key: Option<PathBuf>,
    /// Where to write d_value.
    #[arg(long, value_name = "DV.npy", requires = "grad_out")]
    pub grad_value: Option<PathBuf>,
    /// Where to write d_rpb (needs --rpb).
    #[arg(long, value_name = "DRPB.npy", requires_all = ["grad_out", "rpb"])]
    pub grad_rpb: Option<PathBuf>,
}

fn shape_str(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("[{}]", parts.join(", "))
}

fn load(what: &str, path: &Path) -> Result<NpyArray> {
    npy::read_npy(path, npy::DEFAULT_MAX_ELEMENTS)
        .with_context(|| format!("--{what} {}", path.display()))
}

/// The shapes of query, key and value, checked against each other.
fn problem_from(args: &AttnArgs, q: &NpyArray, k: &NpyArray, v: &NpyArray) -> Result<Problem> {
    let rank = q.shape.len();
    if !(4..=6).contains(&rank) {
        bail!(
            "query has shape {} (rank {rank}); expected [batch, *spatial, heads, head_dim] with 1 to 3 spatial axes (rank 4 to 6)",
            shape_str(&q.shape)
        );
    }
    if k.shape != q.shape {
        bail!(
            "key has shape {} but query has shape {}; they must match",
            shape_str(&k.shape),
            shape_str(&q.shape)
        );
    }
    if v.shape.len() != rank || v.shape[..rank - 1] != q.shape[..rank - 1] {
        bail!(
            "value has shape {} but query has shape {}; all but the last dimension must match",
            shape_str(&v.shape),
            shape_str(&q.shape)
        );
    }
    let spatial = &q.shape[1..rank - 2];
    let n_axes = spatial.len();
    let kernel = if args.kernel_size.len() == 1 {
        vec![args.kernel_size[0]; n_axes]
    } else {
        args.kernel_size.clone()
    };
    if kernel.len() != n_axes {
        bail!(
            "--kernel-size has {} values but the arrays have {n_axes} spatial axes (shape {}); give one value or {n_axes}",
            kernel.len(),
            shape_str(&q.shape)
        );
    }
    let mut params = Params::new(&kernel)?;
    if !args.stride.is_empty() {
        params = params.with_stride(&args.stride).context("--stride")?;
    }
    if !args.dilation.is_empty() {
        params = params.with_dilation(&args.dilation).context("--dilation")?;
    }
    if !args.causal.is_empty() {
        params = params.with_causal(&args.causal).context("--causal")?;
    }
    if let Some(s) = args.scale {
        params = params.with_scale(s).context("--scale")?;
    }
    let (heads, dk, dv) = (q.shape[rank - 2], q.shape[rank - 1], v.shape[rank - 1]);
    Ok(Problem::new(q.shape[0], spatial, heads, dk, dv, params)?)
}

/// Everything `na attn` computes, in f32.
struct Results {
    out: Vec<f32>,
    lse: Vec<f32>,
    grads: Option<GradOutputs>,
}

/// The gradients `na attn` computes, in f32.
struct GradOutputs {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    drpb: Option<Vec<f32>>,
}

fn convert<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

fn widen<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

#[allow(clippy::too_many_arguments)]
fn compute<T: Element>(
    p: &Problem,
    arrays: [&NpyArray; 3],
    rpb: Option<&NpyArray>,
    d_out: Option<&NpyArray>,
    want_drpb: bool,
    device: &na_cuda::Device,
) -> Result<Results> {
    let [q, k, v] = arrays.map(|a| convert::<T>(&a.data));
    let rpb = rpb.map(|r| convert::<T>(&r.data));
    let x = Inputs {
        query: &q,
        key: &k,
        value: &v,
        rpb: rpb.as_deref(),
    };
    let mut out = vec![T::default(); p.v_len()];
    let mut lse = vec![0.0f32; p.lse_len()];
    device.forward(p, x, &mut out, Some(&mut lse))?;
    let grads = match d_out {
        None => None,
        Some(d) => {
            let d_out = convert::<T>(&d.data);
            let (mut dq, mut dk, mut dv) = (
                vec![T::default(); p.qk_len()],
                vec![T::default(); p.qk_len()],
                vec![T::default(); p.v_len()],
            );
            let mut drpb = vec![T::default(); if want_drpb { p.rpb_len() } else { 0 }];
            let g = Grads {
                d_query: &mut dq,
                d_key: &mut dk,
                d_value: &mut dv,
                d_rpb: want_drpb.then_some(&mut drpb[..]),
            };
            let s = Saved {
                out: &out,
                lse: &lse,
                d_out: &d_out,
            };
            device.backward(p, x, s, g)?;
            Some(GradOutputs {
                dq: widen(&dq),
                dk: widen(&dk),
                dv: widen(&dv),
                drpb: want_drpb.then(|| widen(&drpb)),
            })
        }
    };
    Ok(Results {
        out: widen(&out),
        lse,
        grads,
    })
}

/// Runs `na attn`.
pub fn run(args: &AttnArgs) -> Result<()> {
    // Every output is checked (kind, aliases, a writable directory) before
    // any work; they are published together at the end or not at all.
    let mut outs = Outputs::new();
    for (flag, path) in [
        ("--query", Some(&args.query)),
        ("--key", Some(&args.key)),
        ("--value", Some(&args.value)),
        ("--rpb", args.rpb.as_ref()),
        ("--grad-out", args.grad_out.as_ref()),
    ] {
        if let Some(p) = path {
            outs.input(flag, p);
        }
    }
    let out_id = outs.output("--out", &args.out)?;
    let mut plan = |flag: &str, path: &Option<PathBuf>| -> Result<Option<OutputId>> {
        Ok(match path {
            Some(p) => Some(outs.output(flag, p)?),
            None => None,
        })
    };
    let lse_id = plan("--lse", &args.lse)?;
    let dq_id = plan("--grad-query", &args.grad_query)?;
    let dk_id = plan("--grad-key", &args.grad_key)?;
    let dv_id = plan("--grad-value", &args.grad_value)?;
    let drpb_id = plan("--grad-rpb", &args.grad_rpb)?;

    let q = load("query", &args.query)?;
    let k = load("key", &args.key)?;
    let v = load("value", &args.value)?;
    let p = problem_from(args, &q, &k, &v)?;
    let rpb = match &args.rpb {
        None => None,
        Some(path) => {
            let r = load("rpb", path)?;
            let (shape, n) = p.rpb_shape();
            if r.shape != shape[..n] {
                bail!(
                    "rpb has shape {} but heads {} and kernel size {:?} need {}",
                    shape_str(&r.shape),
                    p.heads(),
                    p.params().kernel_size(),
                    shape_str(&shape[..n])
                );
            }
            Some(r)
        }
    };
    let d_out = match &args.grad_out {
        None => None,
        Some(path) => {
            let d = load("grad-out", path)?;
            if d.shape != v.shape {
                bail!(
                    "grad-out has shape {} but the output has shape {}",
                    shape_str(&d.shape),
                    shape_str(&v.shape)
                );
            }
            Some(d)
        }
    };

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("starting the thread pool")?;
    let par = Par::rayon(pool.current_num_threads());
    let start = Instant::now();
    let arrays = [&q, &k, &v];
    let want_drpb = args.grad_rpb.is_some();
    let device = na_cuda::Device::open(args.device, par)
        .with_context(|| format!("--device {}", args.device))?;
    let (rpb, d_out) = (rpb.as_ref(), d_out.as_ref());
    let res = pool.install(|| match args.dtype {
        DTypeArg::F32 => compute::<f32>(&p, arrays, rpb, d_out, want_drpb, &device),
        DTypeArg::F16 => compute::<f16>(&p, arrays, rpb, d_out, want_drpb, &device),
        DTypeArg::Bf16 => compute::<bf16>(&p, arrays, rpb, d_out, want_drpb, &device),
    })?;
    let elapsed = start.elapsed();

    let out_shape = v.shape.clone();
    let lse_shape = &q.shape[..q.shape.len() - 1];
    let mut stage = |id: Option<OutputId>, shape: &[usize], data: &[f32]| -> Result<()> {
        if let Some(id) = id {
            outs.stage(id, &npy::encode_npy_f32(shape, data)?)?;
        }
        Ok(())
    };
    stage(Some(out_id), &out_shape, &res.out)?;
    stage(lse_id, lse_shape, &res.lse)?;
    if let Some(GradOutputs { dq, dk, dv, drpb }) = &res.grads {
        stage(dq_id, &q.shape, dq)?;
        stage(dk_id, &k.shape, dk)?;
        stage(dv_id, &v.shape, dv)?;
        if let Some(drpb) = drpb {
            let (shape, n) = p.rpb_shape();
            stage(drpb_id, &shape[..n], drpb)?;
        }
    }
    outs.commit()?;
    crate::outln!(
        "na attn: {}D, shape {}, kernel {:?}, dtype {}, {} in {:.3} ms on {}",
        p.rank(),
        shape_str(&q.shape),
        p.params().kernel_size(),
        args.dtype.name(),
        if res.grads.is_some() {
            "forward+backward"
        } else {
            "forward"
        },
        elapsed.as_secs_f64() * 1e3,
        device.describe()
    )?;
    Ok(())
}
