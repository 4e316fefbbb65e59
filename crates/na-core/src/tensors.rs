//! The argument bundles shared by every kernel family, and their checks.

use crate::{Error, Problem};

/// The read-only tensors of a call. Layouts are those of [`Problem`].
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a, T> {
    /// `[batch, *spatial, heads, head_dim]`.
    pub query: &'a [T],
    /// `[batch, *spatial, heads, head_dim]`.
    pub key: &'a [T],
    /// `[batch, *spatial, heads, head_dim_v]`.
    pub value: &'a [T],
    /// Optional relative positional bias `[heads, 2*k_0-1, ...]`.
    pub rpb: Option<&'a [T]>,
}

/// The gradients a backward call writes. Layouts are those of [`Problem`].
#[derive(Debug)]
pub struct Grads<'a, T> {
    /// `[batch, *spatial, heads, head_dim]`.
    pub d_query: &'a mut [T],
    /// `[batch, *spatial, heads, head_dim]`.
    pub d_key: &'a mut [T],
    /// `[batch, *spatial, heads, head_dim_v]`.
    pub d_value: &'a mut [T],
    /// `[heads, 2*k_0-1, ...]`; only with `rpb`.
    pub d_rpb: Option<&'a mut [T]>,
}

pub(crate) fn check_len(tensor: &'static str, got: usize, expected: usize) -> Result<(), Error> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            tensor,
            expected,
            got,
        })
    }
}

impl<T> Inputs<'_, T> {
    pub(crate) fn check(&self, p: &Problem) -> Result<(), Error> {
        check_len("query", self.query.len(), p.qk_len())?;
        check_len("key", self.key.len(), p.qk_len())?;
        check_len("value", self.value.len(), p.v_len())?;
        if let Some(rpb) = self.rpb {
            check_len("rpb", rpb.len(), p.rpb_len())?;
        }
        Ok(())
    }
}

/// The tensors a backward call reads besides [`Inputs`].
#[derive(Clone, Copy, Debug)]
pub struct Saved<'a, T> {
    /// The forward output, `[batch, *spatial, heads, head_dim_v]`.
    pub out: &'a [T],
    /// The forward log-sum-exp, `[batch, *spatial, heads]`.
    pub lse: &'a [f32],
    /// The gradient of the loss with respect to `out`.
    pub d_out: &'a [T],
}

pub(crate) fn check_backward<T>(
    p: &Problem,
    x: &Inputs<'_, T>,
    s: &Saved<'_, T>,
    g: &Grads<'_, T>,
) -> Result<(), Error> {
    x.check(p)?;
    check_len("out", s.out.len(), p.v_len())?;
    check_len("lse", s.lse.len(), p.lse_len())?;
    check_len("d_out", s.d_out.len(), p.v_len())?;
    check_len("d_query", g.d_query.len(), p.qk_len())?;
    check_len("d_key", g.d_key.len(), p.qk_len())?;
    check_len("d_value", g.d_value.len(), p.v_len())?;
    if let Some(d) = g.d_rpb.as_deref() {
        if x.rpb.is_none() {
            return Err(Error::GradRpbWithoutRpb);
        }
        check_len("d_rpb", d.len(), p.rpb_len())?;
    }
    Ok(())
}

/// Checks the inputs, `out` and (if given) `lse` of a forward call.
pub(crate) fn check_forward<T>(
    p: &Problem,
    x: &Inputs<'_, T>,
    out: &[T],
    lse: Option<&[f32]>,
) -> Result<(), Error> {
    x.check(p)?;
    check_len("out", out.len(), p.v_len())?;
    if let Some(l) = lse {
        check_len("lse", l.len(), p.lse_len())?;
    }
    Ok(())
}

/// Checks that a caller-provided scratch buffer holds `needed` floats.
pub(crate) fn check_scratch(scratch: &[f32], needed: usize) -> Result<(), Error> {
    if scratch.len() < needed {
        return Err(Error::ScratchTooSmall {
            needed,
            got: scratch.len(),
        });
    }
    Ok(())
}
