//! The reference implementation: a direct reading of SPEC.md, one query (or
//! one key) at a time, `f32` accumulation whatever the storage type.
//!
//! It is the oracle the fused kernels are tested against, so it favours
//! obviousness over speed: no tiling, no SIMD. It still never materialises
//! more than one query's window of logits, and its backward is race-free and
//! deterministic: `d_query` and `d_rpb` are gathered over each query's window,
//! `d_key` and `d_value` over each key's inverse neighbourhood (the queries
//! whose windows contain it), never scattered.
//!
//! Work is split into fixed blocks of [`BLOCK`] spatial positions. `d_rpb` is
//! summed per block and the block sums are added in block order, so results
//! are bit-identical for every [`Par`].
//!
//! Every entry point has a `*_with_scratch` form that never allocates (for
//! `no_std` without `alloc`); its scratch length comes from the matching
//! `*_scratch_len` function.

use crate::problem::MAX_AXES;
use crate::tensors::{check_backward, check_forward, check_scratch};
pub use crate::tensors::{Grads, Inputs, Saved};
use crate::window::Axis;
#[cfg(feature = "alloc")]
use crate::Par;
use crate::{Element, Error, Kernels, Problem};

/// The reference kernels as a [`Kernels`] family (the free functions of this
/// module, as methods).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Reference;

impl Kernels for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn forward_scratch_len(&self, p: &Problem) -> usize {
        forward_scratch_len(p)
    }

    fn backward_scratch_len(&self, p: &Problem) -> usize {
        backward_scratch_len(p)
    }

    fn forward_with_scratch<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        out: &mut [T],
        lse: Option<&mut [f32]>,
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        forward_with_scratch(p, x, out, lse, scratch)
    }

    fn backward_with_scratch<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        s: Saved<'_, T>,
        g: Grads<'_, T>,
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        backward_with_scratch(p, x, s, g, scratch)
    }

    #[cfg(feature = "rayon")]
    fn forward_threaded<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        out: &mut [T],
        lse: Option<&mut [f32]>,
    ) -> Result<(), Error> {
        forward_rayon(p, x, out, lse)
    }

    #[cfg(feature = "rayon")]
    fn backward_threaded<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        s: Saved<'_, T>,
        g: Grads<'_, T>,
    ) -> Result<(), Error> {
        backward_rayon(p, x, s, g)
    }
}

/// Spatial positions per work block.
pub const BLOCK: usize = 16;

/// Scratch (in `f32`) one sequential forward call needs.
pub fn forward_scratch_len(p: &Problem) -> usize {
    p.head_dim() + p.window_size() + p.head_dim_v()
}

/// Scratch (in `f32`) one sequential backward call needs.
pub fn backward_scratch_len(p: &Problem) -> usize {
    p.lse_len() + 2 * p.rpb_len() + worker_len_bwd(p)
}

fn worker_len_bwd(p: &Problem) -> usize {
    2 * (p.head_dim() + p.head_dim_v())
}

/// Everything the per-position loops need, resolved once.
struct Ctx<'a, T> {
    axes: [Axis; MAX_AXES],
    /// Extents of the (padded) spatial axes.
    ext: [usize; MAX_AXES],
    /// Extents of the (padded) bias table per head.
    rext: [usize; MAX_AXES],
    tokens: usize,
    heads: usize,
    dk: usize,
    dv: usize,
    /// Bias entries per head.
    rpb_per_head: usize,
    scale: f32,
    x: Inputs<'a, T>,
}

impl<'a, T: Element> Ctx<'a, T> {
    fn new(p: &Problem, x: Inputs<'a, T>) -> Self {
        let axes = *p.axes3();
        Ctx {
            axes,
            ext: axes.map(|a| a.len()),
            rext: axes.map(|a| a.rpb_len()),
            rpb_per_head: p.rpb_per_head(),
            tokens: p.tokens(),
            heads: p.heads(),
            dk: p.head_dim(),
            dv: p.head_dim_v(),
            scale: p.scale(),
            x,
        }
    }

    fn coords(&self, tok: usize) -> [usize; MAX_AXES] {
        let [_, e1, e2] = self.ext;
        [tok / (e1 * e2), (tok / e2) % e1, tok % e2]
    }

    fn token(&self, c: [usize; MAX_AXES]) -> usize {
        (c[0] * self.ext[1] + c[1]) * self.ext[2] + c[2]
    }

    fn rpb_offset(&self, r: [usize; MAX_AXES]) -> usize {
        (r[0] * self.rext[1] + r[1]) * self.rext[2] + r[2]
    }

    /// Calls `f(key_token, rpb_offset)` for every key in the window of the
    /// query at spatial token `tok`, in a fixed order.
    fn for_each_key(&self, tok: usize, mut f: impl FnMut(usize, usize)) {
        let q = self.coords(tok);
        let w = [0, 1, 2].map(|a| self.axes[a].window(q[a]));
        for t0 in w[0].iter() {
            let r0 = self.axes[0].rpb_index_unchecked(q[0], t0);
            for t1 in w[1].iter() {
                let r1 = self.axes[1].rpb_index_unchecked(q[1], t1);
                for t2 in w[2].iter() {
                    let r2 = self.axes[2].rpb_index_unchecked(q[2], t2);
                    f(self.token([t0, t1, t2]), self.rpb_offset([r0, r1, r2]));
                }
            }
        }
    }

    /// Calls `f(query_token, rpb_offset)` for every query whose window holds
    /// the key at spatial token `tok` (its inverse neighbourhood).
    fn for_each_query(&self, tok: usize, mut f: impl FnMut(usize, usize)) {
        let t = self.coords(tok);
        let [a0, a1, a2] = &self.axes;
        for q0 in a0.inverse(t[0]) {
            let r0 = a0.rpb_index_unchecked(q0, t[0]);
            for q1 in a1.inverse(t[1]) {
                let r1 = a1.rpb_index_unchecked(q1, t[1]);
                for q2 in a2.inverse(t[2]) {
                    let r2 = a2.rpb_index_unchecked(q2, t[2]);
                    f(self.token([q0, q1, q2]), self.rpb_offset([r0, r1, r2]));
                }
            }
        }
    }

    fn bias(&self, h: usize, roff: usize) -> f32 {
        match self.x.rpb {
            Some(rpb) => rpb[h * self.rpb_per_head + roff].to_f32(),
            None => 0.0,
        }
    }

    /// Row index (into `lse`) of head `h` at spatial token `tok` of batch `b`.
    fn row(&self, b: usize, tok: usize, h: usize) -> usize {
        (b * self.tokens + tok) * self.heads + h
    }
}

fn load<T: Element>(dst: &mut [f32], src: &[T]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

fn dot<T: Element>(a: &[f32], b: &[T]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}

fn axpy<T: Element>(acc: &mut [f32], w: f32, x: &[T]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += w * v.to_f32();
    }
}

/// Forward for the positions `pos0 ..` covered by `out` (`H*dv` per
/// position) and `lse` (`H` per position).
fn forward_block<T: Element>(
    c: &Ctx<'_, T>,
    pos0: usize,
    out: &mut [T],
    mut lse: Option<&mut [f32]>,
    scratch: &mut [f32],
) {
    let (h_n, dk, dv) = (c.heads, c.dk, c.dv);
    let (qf, rest) = scratch.split_at_mut(dk);
    let (acc, logits) = rest.split_at_mut(dv);
    for (n, out_pos) in out.chunks_exact_mut(h_n * dv).enumerate() {
        let pos = pos0 + n;
        let (b, tok) = (pos / c.tokens, pos % c.tokens);
        for h in 0..h_n {
            let row = c.row(b, tok, h);
            load(qf, &c.x.query[row * dk..][..dk]);
            // Pass 1: logits of the window and their maximum.
            let mut count = 0;
            let mut max = f32::NEG_INFINITY;
            c.for_each_key(tok, |kt, roff| {
                let krow = c.row(b, kt, h);
                let l = c.scale * dot(qf, &c.x.key[krow * dk..][..dk]) + c.bias(h, roff);
                logits[count] = l;
                max = max.max(l);
                count += 1;
            });
            // Pass 2: softmax weights and the weighted sum of values. `max`
            // ignores NaN logits (they reach the sum through `expf`); when
            // every logit is -inf, shift by 0 instead (-inf - -inf would be a
            // NaN): the sum is then 0 and lse = log(0) = -inf, as the
            // log-sum-exp of -inf logits is.
            let max = if max == f32::NEG_INFINITY { 0.0 } else { max };
            acc.fill(0.0);
            let mut sum = 0.0f32;
            let mut n_key = 0;
            c.for_each_key(tok, |kt, _| {
                let w = libm::expf(logits[n_key] - max);
                n_key += 1;
                sum += w;
                axpy(acc, w, &c.x.value[c.row(b, kt, h) * dv..][..dv]);
            });
            let inv = 1.0 / sum;
            for (o, a) in out_pos[h * dv..][..dv].iter_mut().zip(acc.iter()) {
                *o = T::from_f32(a * inv);
            }
            if let Some(l) = lse.as_deref_mut() {
                l[n * h_n + h] = max + libm::logf(sum);
            }
        }
    }
}

/// Forward pass without allocation: writes `out` (`[batch, *spatial, heads,
/// head_dim_v]`) and, if given, `lse` (`[batch, *spatial, heads]`).
///
/// `scratch` needs at least [`forward_scratch_len`] elements.
pub fn forward_with_scratch<T: Element>(
    p: &Problem,
    x: Inputs<'_, T>,
    out: &mut [T],
    mut lse: Option<&mut [f32]>,
    scratch: &mut [f32],
) -> Result<(), Error> {
    check_forward(p, &x, out, lse.as_deref())?;
    let needed = forward_scratch_len(p);
    check_scratch(scratch, needed)?;
    let c = Ctx::new(p, x);
    let row_v = p.heads() * p.head_dim_v();
    for (bi, ob) in out.chunks_mut(BLOCK * row_v).enumerate() {
        let lb = lse
            .as_deref_mut()
            .map(|l| &mut l[bi * BLOCK * p.heads()..][..ob.len() / row_v * p.heads()]);
        forward_block(&c, bi * BLOCK, ob, lb, &mut scratch[..needed]);
    }
    Ok(())
}

/// Forward pass: writes `out` (`[batch, *spatial, heads, head_dim_v]`) and,
/// if given, `lse` (`[batch, *spatial, heads]`), using the threads `par`
/// asks for.
#[cfg(feature = "alloc")]
pub fn forward<T: Element>(
    p: &Problem,
    x: Inputs<'_, T>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
    par: Par,
) -> Result<(), Error> {
    Reference.forward(p, x, out, lse, par)
}

#[cfg(feature = "rayon")]
fn forward_rayon<T: Element>(
    p: &Problem,
    x: Inputs<'_, T>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<(), Error> {
    use rayon::prelude::*;
    check_forward(p, &x, out, lse.as_deref())?;
    let c = Ctx::new(p, x);
    let len = forward_scratch_len(p);
    let init = || alloc::vec![0.0f32; len];
    let out_blocks = out
        .par_chunks_mut(BLOCK * p.heads() * p.head_dim_v())
        .enumerate();
    match lse {
        Some(l) => out_blocks
            .zip(l.par_chunks_mut(BLOCK * p.heads()))
            .for_each_init(init, |s, ((bi, ob), lb)| {
                forward_block(&c, bi * BLOCK, ob, Some(lb), s)
            }),
        None => out_blocks.for_each_init(init, |s, (bi, ob)| {
            forward_block(&c, bi * BLOCK, ob, None, s)
        }),
    }
    Ok(())
}

/// Backward pass 1 over the query positions `pos0 ..` covered by `dq`:
/// writes `d_query` and `delta = <d_out, out>` per row, and adds every
/// `d_logit` into `drpb` (when given).
#[allow(clippy::too_many_arguments)]
fn backward_query_block<T: Element>(
    c: &Ctx<'_, T>,
    s: &Saved<'_, T>,
    pos0: usize,
    dq: &mut [T],
    delta: &mut [f32],
    mut drpb: Option<&mut [f32]>,
    scratch: &mut [f32],
) {
    let (h_n, dk, dv) = (c.heads, c.dk, c.dv);
    let (qf, rest) = scratch.split_at_mut(dk);
    let (dof, rest) = rest.split_at_mut(dv);
    let acc = &mut rest[..dk];
    for (n, dq_pos) in dq.chunks_exact_mut(h_n * dk).enumerate() {
        let pos = pos0 + n;
        let (b, tok) = (pos / c.tokens, pos % c.tokens);
        for h in 0..h_n {
            let row = c.row(b, tok, h);
            load(qf, &c.x.query[row * dk..][..dk]);
            load(dof, &s.d_out[row * dv..][..dv]);
            let dlt = dot(dof, &s.out[row * dv..][..dv]);
            delta[n * h_n + h] = dlt;
            let lse = s.lse[row];
            acc.fill(0.0);
            c.for_each_key(tok, |kt, roff| {
                let krow = c.row(b, kt, h);
                let key = &c.x.key[krow * dk..][..dk];
                let l = c.scale * dot(qf, key) + c.bias(h, roff);
                let prob = libm::expf(l - lse);
                let dp = dot(dof, &c.x.value[krow * dv..][..dv]);
                let ds = prob * (dp - dlt);
                axpy(acc, ds, key);
                if let Some(d) = drpb.as_deref_mut() {
                    d[h * c.rpb_per_head + roff] += ds;
                }
            });
            for (o, a) in dq_pos[h * dk..][..dk].iter_mut().zip(acc.iter()) {
                *o = T::from_f32(a * c.scale);
            }
        }
    }
}

/// Backward pass 2 over the key positions `pos0 ..` covered by `dk_out`:
/// gathers `d_key` and `d_value` over each key's inverse neighbourhood.
fn backward_key_block<T: Element>(
    c: &Ctx<'_, T>,
    s: &Saved<'_, T>,
    delta: &[f32],
    pos0: usize,
    dk_out: &mut [T],
    dv_out: &mut [T],
    scratch: &mut [f32],
) {
    let (h_n, dk, dv) = (c.heads, c.dk, c.dv);
    let (kf, rest) = scratch.split_at_mut(dk);
    let (vf, rest) = rest.split_at_mut(dv);
    let (acc_k, rest) = rest.split_at_mut(dk);
    let acc_v = &mut rest[..dv];
    for (n, (dk_pos, dv_pos)) in dk_out
        .chunks_exact_mut(h_n * dk)
        .zip(dv_out.chunks_exact_mut(h_n * dv))
        .enumerate()
    {
        let pos = pos0 + n;
        let (b, tok) = (pos / c.tokens, pos % c.tokens);
        for h in 0..h_n {
            let krow = c.row(b, tok, h);
            load(kf, &c.x.key[krow * dk..][..dk]);
            load(vf, &c.x.value[krow * dv..][..dv]);
            acc_k.fill(0.0);
            acc_v.fill(0.0);
            c.for_each_query(tok, |qt, roff| {
                let qrow = c.row(b, qt, h);
                let query = &c.x.query[qrow * dk..][..dk];
                let d_out = &s.d_out[qrow * dv..][..dv];
                let l = c.scale * dot(kf, query) + c.bias(h, roff);
                let prob = libm::expf(l - s.lse[qrow]);
                let dp = dot(vf, d_out);
                let ds = prob * (dp - delta[qrow]);
                axpy(acc_v, prob, d_out);
                axpy(acc_k, ds, query);
            });
            for (o, a) in dk_pos[h * dk..][..dk].iter_mut().zip(acc_k.iter()) {
                *o = T::from_f32(a * c.scale);
            }
            for (o, a) in dv_pos[h * dv..][..dv].iter_mut().zip(acc_v.iter()) {
                *o = T::from_f32(*a);
            }
        }
    }
}

fn add_into(total: &mut [f32], part: &[f32]) {
    for (t, p) in total.iter_mut().zip(part) {
        *t += p;
    }
}

fn store<T: Element>(dst: &mut [T], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = T::from_f32(*s);
    }
}

/// Backward pass without allocation: writes `d_query`, `d_key`, `d_value`
/// and, when requested (and `rpb` was given), `d_rpb`.
///
/// `scratch` needs at least [`backward_scratch_len`] elements.
pub fn backward_with_scratch<T: Element>(
    p: &Problem,
    x: Inputs<'_, T>,
    s: Saved<'_, T>,
    g: Grads<'_, T>,
    scratch: &mut [f32],
) -> Result<(), Error> {
    check_backward(p, &x, &s, &g)?;
    let needed = backward_scratch_len(p);
    check_scratch(scratch, needed)?;
    let c = Ctx::new(p, x);
    let (delta, rest) = scratch.split_at_mut(p.lse_len());
    let (total, rest) = rest.split_at_mut(p.rpb_len());
    let (part, work) = rest.split_at_mut(p.rpb_len());
    let want_rpb = g.d_rpb.is_some();
    total.fill(0.0);
    let (row_k, row_v, h_n) = (
        p.heads() * p.head_dim(),
        p.heads() * p.head_dim_v(),
        p.heads(),
    );
    for (bi, dqb) in g.d_query.chunks_mut(BLOCK * row_k).enumerate() {
        let db = &mut delta[bi * BLOCK * h_n..][..dqb.len() / row_k * h_n];
        part.fill(0.0);
        let pb = if want_rpb { Some(&mut *part) } else { None };
        backward_query_block(&c, &s, bi * BLOCK, dqb, db, pb, work);
        add_into(total, part);
    }
    if let Some(d) = g.d_rpb {
        store(d, total);
    }
    for (bi, (dkb, dvb)) in g
        .d_key
        .chunks_mut(BLOCK * row_k)
        .zip(g.d_value.chunks_mut(BLOCK * row_v))
        .enumerate()
    {
        backward_key_block(&c, &s, delta, bi * BLOCK, dkb, dvb, work);
    }
    Ok(())
}

/// Backward pass: writes `d_query`, `d_key`, `d_value` and, when requested
/// (and `rpb` was given), `d_rpb`, using the threads `par` asks for.
/// Deterministic, and bit-identical for every `par`.
#[cfg(feature = "alloc")]
pub fn backward<T: Element>(
    p: &Problem,
    x: Inputs<'_, T>,
    s: Saved<'_, T>,
    g: Grads<'_, T>,
    par: Par,
) -> Result<(), Error> {
    Reference.backward(p, x, s, g, par)
}

#[cfg(feature = "rayon")]
fn backward_rayon<T: Element>(
    p: &Problem,
    x: Inputs<'_, T>,
    s: Saved<'_, T>,
    g: Grads<'_, T>,
) -> Result<(), Error> {
    use rayon::prelude::*;
    check_backward(p, &x, &s, &g)?;
    let c = Ctx::new(p, x);
    let (row_k, row_v, h_n) = (
        p.heads() * p.head_dim(),
        p.heads() * p.head_dim_v(),
        p.heads(),
    );
    let mut delta = alloc::vec![0.0f32; p.lse_len()];
    let want_rpb = g.d_rpb.is_some();
    let (work_len, rpb_len) = (worker_len_bwd(p), if want_rpb { p.rpb_len() } else { 0 });
    let parts: alloc::vec::Vec<alloc::vec::Vec<f32>> = g
        .d_query
        .par_chunks_mut(BLOCK * row_k)
        .zip(delta.par_chunks_mut(BLOCK * h_n))
        .enumerate()
        .map_init(
            || alloc::vec![0.0f32; work_len],
            |work, (bi, (dqb, db))| {
                let mut part = alloc::vec![0.0f32; rpb_len];
                let pb = if want_rpb { Some(&mut part[..]) } else { None };
                backward_query_block(&c, &s, bi * BLOCK, dqb, db, pb, work);
                part
            },
        )
        .collect();
    if let Some(d) = g.d_rpb {
        let mut total = alloc::vec![0.0f32; p.rpb_len()];
        for part in &parts {
            add_into(&mut total, part);
        }
        store(d, &total);
    }
    drop(parts);
    g.d_key
        .par_chunks_mut(BLOCK * row_k)
        .zip(g.d_value.par_chunks_mut(BLOCK * row_v))
        .enumerate()
        .for_each_init(
            || alloc::vec![0.0f32; work_len],
            |work, (bi, (dkb, dvb))| backward_key_block(&c, &s, &delta, bi * BLOCK, dkb, dvb, work),
        );
    Ok(())
}
