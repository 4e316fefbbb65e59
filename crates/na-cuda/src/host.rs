//! Host-slice convenience: copy in, run, copy out. What `na attn --device
//! cuda` calls; benchmarks should keep tensors on the device instead
//! ([`CudaContext::forward`], [`CudaContext::backward`]).

use na_core::{Element, Error, Grads, Inputs, Problem, Saved};

use crate::context::{CudaContext, DeviceGrads, DeviceInputs, DeviceSaved};
use crate::CudaError;

fn check_len(tensor: &'static str, got: usize, expected: usize) -> Result<(), CudaError> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            tensor,
            expected,
            got,
        }
        .into())
    }
}

fn check_inputs<T>(p: &Problem, x: &Inputs<'_, T>) -> Result<(), CudaError> {
    check_len("query", x.query.len(), p.qk_len())?;
    check_len("key", x.key.len(), p.qk_len())?;
    check_len("value", x.value.len(), p.v_len())?;
    if let Some(r) = x.rpb {
        check_len("rpb", r.len(), p.rpb_len())?;
    }
    Ok(())
}

/// Forward pass on host slices, like `na_core::reference::forward`: writes
/// `out` (`[batch, *spatial, heads, head_dim_v]`) and, if given, `lse`
/// (`[batch, *spatial, heads]`). Every length is checked before any copy.
pub fn forward_host<T: Element>(
    ctx: &CudaContext,
    p: &Problem,
    x: Inputs<'_, T>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<(), CudaError> {
    check_inputs(p, &x)?;
    check_len("out", out.len(), p.v_len())?;
    if let Some(l) = lse.as_deref() {
        check_len("lse", l.len(), p.lse_len())?;
    }
    let q = ctx.upload(x.query)?;
    let k = ctx.upload(x.key)?;
    let v = ctx.upload(x.value)?;
    let rpb = x.rpb.map(|r| ctx.upload(r)).transpose()?;
    let mut o = ctx.zeros(T::DTYPE, p.v_len())?;
    let mut l = match lse {
        Some(_) => Some(ctx.zeros(na_core::DType::F32, p.lse_len())?),
        None => None,
    };
    let xi = DeviceInputs {
        query: &q,
        key: &k,
        value: &v,
        rpb: rpb.as_ref(),
    };
    ctx.forward(p, xi, &mut o, l.as_mut())?;
    ctx.download(&o, out)?;
    if let (Some(dst), Some(src)) = (lse, l.as_ref()) {
        ctx.download(src, dst)?;
    }
    Ok(())
}

/// Backward pass on host slices, like `na_core::reference::backward`: writes
/// `d_query`, `d_key`, `d_value` and, when requested (and `rpb` was given),
/// `d_rpb`. Every length is checked before any copy.
pub fn backward_host<T: Element>(
    ctx: &CudaContext,
    p: &Problem,
    x: Inputs<'_, T>,
    s: Saved<'_, T>,
    g: Grads<'_, T>,
) -> Result<(), CudaError> {
    check_inputs(p, &x)?;
    check_len("out", s.out.len(), p.v_len())?;
    check_len("lse", s.lse.len(), p.lse_len())?;
    check_len("d_out", s.d_out.len(), p.v_len())?;
    check_len("d_query", g.d_query.len(), p.qk_len())?;
    check_len("d_key", g.d_key.len(), p.qk_len())?;
    check_len("d_value", g.d_value.len(), p.v_len())?;
    if let Some(d) = g.d_rpb.as_deref() {
        if x.rpb.is_none() {
            return Err(Error::GradRpbWithoutRpb.into());
        }
        check_len("d_rpb", d.len(), p.rpb_len())?;
    }
    let q = ctx.upload(x.query)?;
    let k = ctx.upload(x.key)?;
    let v = ctx.upload(x.value)?;
    let rpb = x.rpb.map(|r| ctx.upload(r)).transpose()?;
    let out = ctx.upload(s.out)?;
    let lse = ctx.upload(s.lse)?;
    let d_out = ctx.upload(s.d_out)?;
    let mut dq = ctx.zeros(T::DTYPE, p.qk_len())?;
    let mut dk = ctx.zeros(T::DTYPE, p.qk_len())?;
    let mut dv = ctx.zeros(T::DTYPE, p.v_len())?;
    let mut drpb = match g.d_rpb {
        Some(_) => Some(ctx.zeros(T::DTYPE, p.rpb_len())?),
        None => None,
    };
    ctx.backward(
        p,
        DeviceInputs {
            query: &q,
            key: &k,
            value: &v,
            rpb: rpb.as_ref(),
        },
        DeviceSaved {
            out: &out,
            lse: &lse,
            d_out: &d_out,
        },
        DeviceGrads {
            d_query: &mut dq,
            d_key: &mut dk,
            d_value: &mut dv,
            d_rpb: drpb.as_mut(),
        },
    )?;
    ctx.download(&dq, g.d_query)?;
    ctx.download(&dk, g.d_key)?;
    ctx.download(&dv, g.d_value)?;
    if let (Some(dst), Some(src)) = (g.d_rpb, drpb.as_ref()) {
        ctx.download(src, dst)?;
    }
    Ok(())
}
