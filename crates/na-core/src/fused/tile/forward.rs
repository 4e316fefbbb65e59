//! The forward tile loop: output and log-sum-exp for one chunk, on the
//! sliding-window path (stride 1 on the last axis, transposed keys and
//! values) or the general path (packed unions of windows, masked).

// Lane loops index several `[f32; L]` arrays with the same `l`: that is the
// SIMD lane, and writing it as an index is what lets them vectorise.
#![allow(clippy::needless_range_loop)]

use super::io::{load_tile, rows_of, store_tile};
use super::shape::{add_query_bias, slide_run, take, take_lanes, Lanes, Slide};
use crate::fused::geo::{group_range, line_of, Chunk, Geo, SC_SLOTS};
use crate::fused::mask::{lanes_finite, mask_logits};
use crate::fused::micro::{
    diag_axpy, diag_axpy_masked, diag_dot, lanes_times_rows, lanes_times_rows_masked,
    rows_dot_lanes,
};
use crate::fused::simd::Simd;
use crate::fused::softmax::softmax_step;
use crate::tensors::Inputs;
use crate::Element;

/// What one tile of the forward pass works on.
pub(crate) struct FwdTile<'a, const L: usize> {
    /// Chunk, head, dilation group, group index of lane 0, active lanes.
    pub(crate) ch: Chunk,
    pub(crate) h: usize,
    pub(crate) grp: usize,
    pub(crate) ii0: usize,
    pub(crate) n: usize,
    /// Scaled queries, transposed (`(dk, L)`).
    pub(crate) qt: &'a [[f32; L]],
}

/// The running softmax state of a forward tile: maximum, sum and output
/// accumulator per lane.
pub(crate) type FwdAcc<'a, const L: usize> =
    (&'a mut [f32; L], &'a mut [f32; L], &'a mut [[f32; L]]);

/// Resets a forward tile's running state (before a tile is redone).
#[inline(always)]
pub(crate) fn reset_fwd<const L: usize>((m, lsum, ot): FwdAcc<'_, L>) {
    *m = [f32::MIN; L];
    *lsum = [0.0; L];
    for v in ot.iter_mut() {
        *v = [0.0; L];
    }
}

/// The forward pass of one tile on the transposed path: every key line of
/// the window through [`diag_dot`], blocks of lines through one online
/// softmax step, then [`diag_axpy`] into `ot` ([`diag_axpy_masked`] when
/// `safe`; see "Masking" above). Ragged runs mask the slots past each
/// lane's window.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_slide<S: Simd, const L: usize, T: Element, const BC: bool>(
    vx: S,
    g: &Geo,
    x: &Inputs<'_, T>,
    (kt, vt): (&[f32], &[f32]),
    t: &FwdTile<'_, L>,
    sl: &Slide<L>,
    safe: bool,
    (sc, mask): (&mut [[f32; L]], &mut [[f32; L]]),
    (m, lsum, ot): FwdAcc<'_, L>,
) {
    let (dk, dv, k2) = (g.dk, g.dv, g.axes[2].kernel());
    let (w0, w1) = (g.axes[0].window(t.ch.x0), g.axes[1].window(t.ch.x1));
    let (lg, km) = (g.glen(t.grp), sl.kmax);
    if sl.ragged {
        sl.mask(t.n, mask);
    }
    let mask = &mask[..km];
    let nl = w0.count * w1.count;
    let lb = (SC_SLOTS / km).max(1);
    let mut l0 = 0;
    while l0 < nl {
        let nb = (nl - l0).min(lb);
        for li in 0..nb {
            let (t0, t1) = line_of(&w0, &w1, l0 + li);
            let s = &mut sc[li * km..][..km];
            let ko = g.t_offset(dk, t0, t1, t.h, t.grp) + sl.st0;
            diag_dot::<S, L, BC>(vx, &kt[ko..], lg, dk, t.qt, s);
            if let Some(rpb) = x.rpb {
                let r0 = g.axes[0].rpb_index_unchecked(t.ch.x0, t0);
                let r1 = g.axes[1].rpb_index_unchecked(t.ch.x1, t1);
                let brow = g.bias_row(rpb, t.h, r0, r1);
                add_query_bias::<T, L, BC>(s, brow, sl, k2, t.ii0, t.n);
            }
            if sl.ragged {
                mask_logits(s, mask);
            }
        }
        softmax_step::<S::A, L>(&mut sc[..nb * km], m, lsum, ot);
        for li in 0..nb {
            let (t0, t1) = line_of(&w0, &w1, l0 + li);
            let vo = g.t_offset(dv, t0, t1, t.h, t.grp) + sl.st0;
            let p = &sc[li * km..][..km];
            if safe {
                diag_axpy_masked::<S::A, L, BC>(p, mask, &vt[vo..], lg, ot);
            } else {
                diag_axpy::<S, L, BC>(vx, p, &vt[vo..], lg, ot);
            }
        }
        l0 += nb;
    }
}

/// Per-slot buffers of the forward's general path: logits (then
/// probabilities), the mask, packed keys and values of one line.
pub(crate) type UnionBufs<'a, const L: usize> = (
    &'a mut [[f32; L]],
    &'a [[f32; L]],
    &'a mut [f32],
    &'a mut [f32],
);

/// The forward pass of one tile on the general path: per key line, the
/// union of the tile's windows (`u` keys, packed or read in place) through
/// [`rows_dot_lanes`], masked to each lane's window, one online softmax
/// step, then [`lanes_times_rows`] into `ot` ([`lanes_times_rows_masked`]
/// when `safe`; see "Masking" above). `mask` must hold [`Lanes::mask`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_union<S: Simd, const L: usize, T: Element>(
    vx: S,
    g: &Geo,
    x: &Inputs<'_, T>,
    t: &FwdTile<'_, L>,
    ln: &Lanes<L>,
    safe: bool,
    (sc, mask, kp, vp): UnionBufs<'_, L>,
    (m, lsum, ot): FwdAcc<'_, L>,
) {
    let (dk, dv, hn) = (g.dk, g.dv, g.heads);
    let ax = g.axes[2];
    let (d2, k2, u) = (ax.dilation(), ax.kernel(), ln.u);
    let (w0, w1) = (g.axes[0].window(t.ch.x0), g.axes[1].window(t.ch.x1));
    let (sc, mask) = (&mut sc[..u], &mask[..u]);
    for t0 in w0.iter() {
        let r0 = g.axes[0].rpb_index_unchecked(t.ch.x0, t0);
        for t1 in w1.iter() {
            let r1 = g.axes[1].rpb_index_unchecked(t.ch.x1, t1);
            let r = g.row(t.ch.b, t0, t1, t.grp + d2 * ln.lo, t.h);
            let (keys, ks) = rows_of(x.key, r, d2 * hn, u, dk, kp);
            let (vals, vs) = rows_of(x.value, r, d2 * hn, u, dv, vp);
            rows_dot_lanes::<S, L>(vx, keys, ks, dk, t.qt, sc);
            if let Some(rpb) = x.rpb {
                let brow = g.bias_row(rpb, t.h, r0, r1);
                for l in 0..t.n {
                    // Bias index of slot j: (lo + j) - (ii0 + l) + k - 1.
                    let b0 = (ln.lo + ln.first[l] + k2 - 1) - (t.ii0 + l);
                    for (j, b) in (ln.first[l]..ln.last[l]).zip(&brow[b0..]) {
                        sc[j][l] += b.to_f32();
                    }
                }
            }
            mask_logits(sc, mask);
            softmax_step::<S::A, L>(sc, m, lsum, ot);
            if safe {
                lanes_times_rows_masked::<S::A, L>(sc, mask, vals, vs, ot);
            } else {
                lanes_times_rows::<S, L>(vx, sc, vals, vs, ot);
            }
        }
    }
}

/// Forward for one chunk: `out` (`(len, heads, dv)`) and `lse` (`(len, heads)`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<S: Simd, const L: usize, T: Element>(
    vx: S,
    g: &Geo,
    x: &Inputs<'_, T>,
    kvt: Option<(&[f32], &[f32])>,
    ci: usize,
    out: &mut [T],
    mut lse: Option<&mut [f32]>,
    scratch: &mut [f32],
) {
    let ch = g.chunk(ci);
    let (dk, dv, hn) = (g.dk, g.dv, g.heads);
    let ax = g.axes[2];
    let (d2, k2) = (ax.dilation(), ax.kernel());
    let umax = L + k2 + ax.stride();
    let mut s = scratch;
    let qt = take_lanes::<L>(&mut s, dk); // (dk, L): scaled queries, transposed
    let ot = take_lanes::<L>(&mut s, dv); // (dv, L): output accumulator
    let sc = take_lanes::<L>(&mut s, umax.max(SC_SLOTS)); // logits, then probabilities
    let mask = take_lanes::<L>(&mut s, umax); // (U, L): window mask, 1 = attended
    let kp = take(&mut s, umax * dk); // (U, dk): packed keys of one line
    let vp = take(&mut s, umax * dv); // (U, dv): packed values of one line
    for h in 0..hn {
        for grp in 0..d2 {
            let (ia, ie) = group_range(ch.a, ch.a + ch.len, grp, d2);
            let mut ii0 = ia;
            while ii0 < ie {
                let n = (ie - ii0).min(L);
                let (mut x2, mut st, mut en, mut rows) = ([0; L], [0; L], [0; L], [0; L]);
                for l in 0..n {
                    x2[l] = grp + d2 * (ii0 + l);
                    let w = ax.window(x2[l]);
                    st[l] = w.start / d2;
                    en[l] = st[l] + w.count;
                    rows[l] = g.row(ch.b, ch.x0, ch.x1, x2[l], h);
                }
                let n = if kvt.is_some() { slide_run(&st, n) } else { n };
                load_tile::<S, T, L>(vx, qt, x.query, &rows[..n], dk, g.scale, kp);
                let mut m = [f32::MIN; L];
                let mut lsum = [0.0f32; L];
                reset_fwd((&mut m, &mut lsum, &mut *ot));
                let t = FwdTile {
                    ch,
                    h,
                    grp,
                    ii0,
                    n,
                    qt,
                };
                let slide = kvt.and_then(|_| Slide::<L>::new(n, &st, &en));
                if let (Some(kv), Some(sl)) = (kvt, slide) {
                    for safe in [false, true] {
                        let bufs = (&mut *sc, &mut *mask);
                        let acc = (&mut m, &mut lsum, &mut *ot);
                        if !sl.bcast {
                            forward_slide::<S, L, T, false>(vx, g, x, kv, &t, &sl, safe, bufs, acc);
                        } else {
                            forward_slide::<S, L, T, true>(vx, g, x, kv, &t, &sl, safe, bufs, acc);
                        }
                        if safe || !sl.ragged || lanes_finite(ot, n) {
                            break;
                        }
                        reset_fwd((&mut m, &mut lsum, &mut *ot));
                    }
                } else {
                    let ln = Lanes::new(n, st, en);
                    ln.mask(mask);
                    for safe in [false, true] {
                        let bufs = (&mut *sc, &*mask, &mut *kp, &mut *vp);
                        let acc = (&mut m, &mut lsum, &mut *ot);
                        forward_union::<S, L, T>(vx, g, x, &t, &ln, safe, bufs, acc);
                        if safe || lanes_finite(ot, n) {
                            break;
                        }
                        reset_fwd((&mut m, &mut lsum, &mut *ot));
                    }
                }
                let (mut orow, mut inv) = ([0; L], [0.0f32; L]);
                for l in 0..n {
                    orow[l] = (x2[l] - ch.a) * hn + h;
                    inv[l] = 1.0 / lsum[l];
                    if let Some(ls) = lse.as_deref_mut() {
                        ls[orow[l]] = m[l] + libm::logf(lsum[l]);
                    }
                }
                store_tile::<S, T, L>(vx, out, &orow[..n], dv, ot, Some(&inv), vp);
                ii0 += n;
            }
        }
    }
}
