//! The residual add with optional layer scale, `x += γ ⊙ y`, and its
//! backward.

use rayon::prelude::*;

use super::gemm::add_col_sums;
use super::{check_len, shape_err, ROWS_PER_TASK};
use crate::error::Result;

/// `x += γ ⊙ y` over the last axis of `[rows, c]` (`γ [c]`; `None`: 1).
pub fn add_scaled(x: &mut [f32], y: &[f32], gamma: Option<&[f32]>, c: usize) -> Result<()> {
    check_len("add_scaled", "y", y.len(), x.len())?;
    if c == 0 || !x.len().is_multiple_of(c) || gamma.is_some_and(|g| g.len() != c) {
        return Err(shape_err(format!(
            "add_scaled: {} values, {c} channels, γ of {:?}",
            x.len(),
            gamma.map(<[f32]>::len)
        )));
    }
    x.par_chunks_mut(c * ROWS_PER_TASK)
        .zip(y.par_chunks(c * ROWS_PER_TASK))
        .for_each(|(a, b)| match gamma {
            None => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
            Some(g) => {
                for (ar, br) in a.chunks_mut(c).zip(b.chunks(c)) {
                    for ((a, b), g) in ar.iter_mut().zip(br).zip(g) {
                        *a += g * b;
                    }
                }
            }
        });
    Ok(())
}

/// Backward of [`add_scaled`]: the gradient reaching `x` is `dout` itself
/// (the caller keeps using it for the residual path); this returns
/// `dy = γ ⊙ dout` and adds `dγ = Σ_rows dout ⊙ y` into `dgamma` (needed
/// exactly when `gamma` is given).
pub fn add_scaled_backward(
    y: &[f32],
    dout: &[f32],
    gamma: Option<&[f32]>,
    dgamma: Option<&mut [f32]>,
    c: usize,
) -> Result<Vec<f32>> {
    check_len("add_scaled", "dout", dout.len(), y.len())?;
    if c == 0 || !y.len().is_multiple_of(c) {
        return Err(shape_err(format!(
            "add_scaled: {} values are not rows of {c}",
            y.len()
        )));
    }
    match (gamma, dgamma) {
        (None, None) => Ok(dout.to_vec()),
        (Some(g), Some(dg)) => {
            check_len("add_scaled", "γ", g.len(), c)?;
            check_len("add_scaled", "γ gradient", dg.len(), c)?;
            let prod: Vec<f32> = dout.par_iter().zip(y).map(|(a, b)| a * b).collect();
            add_col_sums(dg, &prod, c);
            let mut dy = dout.to_vec();
            dy.par_chunks_mut(c).for_each(|r| {
                for (v, g) in r.iter_mut().zip(g) {
                    *v *= g;
                }
            });
            Ok(dy)
        }
        _ => Err(shape_err(
            "add_scaled: γ and its gradient must be given together".into(),
        )),
    }
}

/// `x += y`, element-wise (gradients of a residual's two paths).
pub fn add(x: &mut [f32], y: &[f32]) -> Result<()> {
    check_len("add", "y", y.len(), x.len())?;
    x.par_chunks_mut(4096)
        .zip(y.par_chunks(4096))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
    Ok(())
}
