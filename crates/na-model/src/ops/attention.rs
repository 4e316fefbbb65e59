//! Neighborhood attention with relative positional bias on a fused `qkv`
//! projection, forward and backward, through `na-core`'s fused kernels.

use core::ops::Range;

use na_core::{Grads, Inputs, Par, Params, Problem, Saved};
use rayon::prelude::*;

use super::{check_len, check_slot, shape_err, Bhw, Weights, ROWS_PER_TASK};
use crate::error::Result;

/// 2D neighborhood attention on a fused projection: input `qkv [B, H, W,
/// 3C]` (q | k | v, head `h` on channels `h*hd .. (h+1)*hd` of each), the
/// bias `rpb [heads, 2k-1, 2k-1]` at `rpb` in the parameter buffer, scale
/// `hd^-0.5`, output `[B, H, W, C]`.
///
/// The map must be at least `kernel × dilation` on both axes (the models
/// zero-pad smaller maps first, SPEC.md's model-level rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attention {
    /// Attention heads.
    pub heads: usize,
    /// Kernel size (both axes).
    pub kernel: usize,
    /// Dilation (both axes).
    pub dilation: usize,
    /// The bias's range in the parameter buffer.
    pub rpb: Range<usize>,
}

/// Copies `qkv [n, 3c]` into `q`, `k`, `v` (`[n, c]` each, heads-last: the
/// layout `na-core` takes).
fn split(qkv: &[f32], c: usize, q: &mut [f32], k: &mut [f32], v: &mut [f32]) {
    let rows = ROWS_PER_TASK;
    q.par_chunks_mut(c * rows)
        .zip(k.par_chunks_mut(c * rows))
        .zip(v.par_chunks_mut(c * rows))
        .zip(qkv.par_chunks(3 * c * rows))
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
}

impl Attention {
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

    /// The channels `C` of a `qkv` of `len` values on a `dims` map, and the
    /// problem (slots checked against the parameters `p`).
    pub fn check(
        &self,
        len: usize,
        dims: Bhw,
        p: &(impl Weights + ?Sized),
    ) -> Result<(usize, Problem)> {
        let n = dims[0] * dims[1] * dims[2];
        if n == 0 || !len.is_multiple_of(3 * n) {
            return Err(shape_err(format!(
                "neighborhood_attention: qkv of {len} values is not [{dims:?}, 3C]"
            )));
        }
        let c = len / (3 * n);
        let pr = self.problem(dims, c)?;
        check_slot("neighborhood_attention", "rpb", &self.rpb, pr.rpb_len(), p)?;
        Ok((c, pr))
    }

    /// Forward into `out [B, H, W, C]`, with `lse [B, H, W, heads]` kept for
    /// the backward when given; `scratch` holds the split q, k, v (`3·B·H·W·C`
    /// values).
    pub fn forward(
        &self,
        p: &(impl Weights + ?Sized),
        qkv: &[f32],
        dims: Bhw,
        out: &mut [f32],
        lse: Option<&mut [f32]>,
        scratch: &mut [f32],
    ) -> Result<()> {
        let (c, pr) = self.check(qkv.len(), dims, p)?;
        let nc = pr.qk_len();
        check_len("neighborhood_attention", "output", out.len(), nc)?;
        check_len("neighborhood_attention", "scratch", scratch.len(), 3 * nc)?;
        let (q, kv) = scratch.split_at_mut(nc);
        let (k, v) = kv.split_at_mut(nc);
        split(qkv, c, q, k, v);
        let x = Inputs {
            query: q,
            key: k,
            value: v,
            rpb: Some(p.get(&self.rpb)),
        };
        na_core::fused::forward(&pr, x, out, lse, Par::rayon(0))?;
        Ok(())
    }

    /// Backward: returns `d_qkv [B, H, W, 3C]` and adds the bias gradient
    /// into `grads` (the parameters' layout). `out`, `lse` are the forward's.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &(impl Weights + ?Sized),
        qkv: &[f32],
        dims: Bhw,
        out: &[f32],
        lse: &[f32],
        d_out: &[f32],
        grads: &mut [f32],
    ) -> Result<Vec<f32>> {
        let (c, pr) = self.check(qkv.len(), dims, p)?;
        check_len(
            "neighborhood_attention",
            "gradient buffer",
            grads.len(),
            p.len(),
        )?;
        let nc = pr.qk_len();
        let mut buf = vec![0.0; 6 * nc];
        let (x, g) = buf.split_at_mut(3 * nc);
        let (q, kv) = x.split_at_mut(nc);
        let (k, v) = kv.split_at_mut(nc);
        split(qkv, c, q, k, v);
        let (dq, dkv) = g.split_at_mut(nc);
        let (dk, dv) = dkv.split_at_mut(nc);
        let mut drpb = vec![0.0; pr.rpb_len()];
        na_core::fused::backward(
            &pr,
            Inputs {
                query: q,
                key: k,
                value: v,
                rpb: Some(p.get(&self.rpb)),
            },
            Saved { out, lse, d_out },
            Grads {
                d_query: dq,
                d_key: dk,
                d_value: dv,
                d_rpb: Some(&mut drpb),
            },
            Par::rayon(0),
        )?;
        grads[self.rpb.clone()]
            .iter_mut()
            .zip(&drpb)
            .for_each(|(o, v)| *o += v);
        let mut dqkv = vec![0.0; 3 * nc];
        if c > 0 {
            let (dq, dk, dv) = (&*dq, &*dk, &*dv);
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
