//! Neighborhood attention of a fused `qkv` projection, forward and
//! backward, through `na-core`'s fused kernels.

use na_core::{Grads, Inputs, Par, Params, Problem, Saved};
use rayon::prelude::*;

use super::layers::{shape_err, Bhw};
use crate::error::Result;

/// Rows per rayon task when splitting and merging `qkv`.
const ROWS_PER_TASK: usize = 64;

/// 2D neighborhood attention with relative positional bias on a fused
/// projection, as [`crate::Backend::neighborhood_attention`] computes it:
/// input `qkv [B, H, W, 3C]` (q | k | v, head `h` on channels
/// `h*hd .. (h+1)*hd` of each), `rpb [heads, 2k-1, 2k-1]`, scale `hd^-0.5`,
/// output `[B, H, W, C]`.
///
/// The map must be at least `kernel × dilation` on both axes (the models
/// zero-pad smaller maps first: [`super::layers::pad_hw`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighborhoodAttention {
    /// Attention heads.
    pub heads: usize,
    /// Kernel size (both axes).
    pub kernel: usize,
    /// Dilation (both axes).
    pub dilation: usize,
}

/// What a [`NeighborhoodAttention`] forward keeps for its backward.
#[derive(Clone, Debug)]
pub struct NaSaved {
    /// The validated problem.
    pub problem: Problem,
    /// Queries `[B, H, W, heads, hd]` (split from `qkv`).
    pub q: Vec<f32>,
    /// Keys `[B, H, W, heads, hd]`.
    pub k: Vec<f32>,
    /// Values `[B, H, W, heads, hd]`.
    pub v: Vec<f32>,
    /// The output `[B, H, W, C]` (`C = heads · hd`): the layer's result.
    pub out: Vec<f32>,
    /// Log-sum-exp of each query's logits, `[B, H, W, heads]`.
    pub lse: Vec<f32>,
}

impl NeighborhoodAttention {
    /// The `na-core` problem for a `[B, H, W]` map of `c` channels (q, k and
    /// v each).
    pub fn problem(&self, [b, h, w]: Bhw, c: usize) -> Result<Problem> {
        if self.heads == 0 || !c.is_multiple_of(self.heads) {
            return Err(shape_err(format!(
                "neighborhood_attention: {c} channels do not split into {} heads",
                self.heads
            )));
        }
        let hd = c / self.heads;
        let params = Params::new(&[self.kernel, self.kernel])?
            .with_dilation(&[self.dilation, self.dilation])?;
        Ok(Problem::new(b, &[h, w], self.heads, hd, hd, params)?)
    }

    /// Forward: splits `qkv [B, H, W, 3C]` and runs the fused kernel, keeping
    /// `lse`. The output is [`NaSaved::out`].
    pub fn forward(&self, qkv: &[f32], dims: Bhw, rpb: &[f32]) -> Result<NaSaved> {
        let n = dims[0] * dims[1] * dims[2];
        if n == 0 || !qkv.len().is_multiple_of(3 * n) {
            return Err(shape_err(format!(
                "neighborhood_attention: qkv of {} values is not [{dims:?}, 3C]",
                qkv.len()
            )));
        }
        let c = qkv.len() / (3 * n);
        let p = self.problem(dims, c)?;
        if rpb.len() != p.rpb_len() {
            return Err(shape_err(format!(
                "neighborhood_attention: rpb of {} values for {} heads and kernel {} \
                 (expected {})",
                rpb.len(),
                self.heads,
                self.kernel,
                p.rpb_len()
            )));
        }
        let (mut q, mut k, mut v) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n * c]);
        q.par_chunks_mut(c * ROWS_PER_TASK)
            .zip(k.par_chunks_mut(c * ROWS_PER_TASK))
            .zip(v.par_chunks_mut(c * ROWS_PER_TASK))
            .zip(qkv.par_chunks(3 * c * ROWS_PER_TASK))
            .for_each(|(((q, k), v), s)| {
                for (((q, k), v), s) in q
                    .chunks_mut(c)
                    .zip(k.chunks_mut(c))
                    .zip(v.chunks_mut(c))
                    .zip(s.chunks(3 * c))
                {
                    q.copy_from_slice(&s[..c]);
                    k.copy_from_slice(&s[c..2 * c]);
                    v.copy_from_slice(&s[2 * c..]);
                }
            });
        let mut out = vec![0.0; n * c];
        let mut lse = vec![0.0; p.lse_len()];
        let x = Inputs {
            query: &q,
            key: &k,
            value: &v,
            rpb: Some(rpb),
        };
        na_core::fused::forward(&p, x, &mut out, Some(&mut lse), Par::rayon(0))?;
        Ok(NaSaved {
            problem: p,
            q,
            k,
            v,
            out,
            lse,
        })
    }

    /// Backward: returns `d_qkv [B, H, W, 3C]` and adds the bias gradient
    /// into `d_rpb` (`[heads, 2k-1, 2k-1]`). `d_out` is `[B, H, W, C]`.
    pub fn backward(
        &self,
        saved: &NaSaved,
        rpb: &[f32],
        d_out: &[f32],
        d_rpb: &mut [f32],
    ) -> Result<Vec<f32>> {
        let p = &saved.problem;
        if d_out.len() != saved.out.len() || d_rpb.len() != p.rpb_len() {
            return Err(shape_err(format!(
                "neighborhood_attention: d_out of {} values (expected {}), d_rpb of {} \
                 (expected {})",
                d_out.len(),
                saved.out.len(),
                d_rpb.len(),
                p.rpb_len()
            )));
        }
        let nc = saved.q.len();
        let (mut dq, mut dk, mut dv) = (vec![0.0; nc], vec![0.0; nc], vec![0.0; nc]);
        let mut drpb = vec![0.0; p.rpb_len()];
        na_core::fused::backward(
            p,
            Inputs {
                query: &saved.q,
                key: &saved.k,
                value: &saved.v,
                rpb: Some(rpb),
            },
            Saved {
                out: &saved.out,
                lse: &saved.lse,
                d_out,
            },
            Grads {
                d_query: &mut dq,
                d_key: &mut dk,
                d_value: &mut dv,
                d_rpb: Some(&mut drpb),
            },
            Par::rayon(0),
        )?;
        for (o, v) in d_rpb.iter_mut().zip(&drpb) {
            *o += v;
        }
        let c = p.heads() * p.head_dim();
        let mut dqkv = vec![0.0; 3 * nc];
        if c > 0 {
            dqkv.par_chunks_mut(3 * c * ROWS_PER_TASK)
                .zip(dq.par_chunks(c * ROWS_PER_TASK))
                .zip(dk.par_chunks(c * ROWS_PER_TASK))
                .zip(dv.par_chunks(c * ROWS_PER_TASK))
                .for_each(|(((d, q), k), v)| {
                    for (((d, q), k), v) in d
                        .chunks_mut(3 * c)
                        .zip(q.chunks(c))
                        .zip(k.chunks(c))
                        .zip(v.chunks(c))
                    {
                        d[..c].copy_from_slice(q);
                        d[c..2 * c].copy_from_slice(k);
                        d[2 * c..].copy_from_slice(v);
                    }
                });
        }
        Ok(dqkv)
    }
}
