//! The backward tile loops: pass 1 gathers `d_query` (and `d_rpb`) over each
//! query tile's window; pass 2 gathers `d_key` and `d_value` over each key
//! tile's inverse neighbourhood, with lanes = keys.

// Lane loops index several `[f32; L]` arrays with the same `l`: that is the
// SIMD lane, and writing it as an index is what lets them vectorise.
#![allow(clippy::needless_range_loop)]

use super::io::{load_tile, rows_of, store_tile, QueriesT};
use super::rows::{axpy_rows, dot_rows, rows_of_line};
use super::shape::{
    add_key_bias, add_query_bias, lanes_of, slide_run, take, take_lanes, BiasRows, BiasTable,
    Lanes, Slide,
};
use crate::fused::geo::{
    group_range, inverse_window, key_slots, line_of, Chunk, Geo, FWD_ROWS, KEY_ROWS,
};
use crate::fused::mask::{lanes_finite, mask_weights};
use crate::fused::micro::{
    diag_axpy, diag_axpy_masked, diag_dot, lanes_times_rows, lanes_times_rows_masked,
    rows_dot_lanes, rows_per_tile, wide,
};
use crate::fused::simd::{Simd, WithSimd};
use crate::fused::softmax::exp;
use crate::tensors::{Inputs, Saved};
use crate::Element;

/// Per-slot buffers of backward pass 1's general path: probabilities,
/// `d_logit`, the mask, packed keys and values of one line.
pub(crate) type QueryUnionBufs<'a, const L: usize> = (
    &'a mut [[f32; L]],
    &'a mut [[f32; L]],
    &'a [[f32; L]],
    &'a mut [f32],
    &'a mut [f32],
);

/// Three lane buffers of a backward tile: probabilities, `dP`, mask.
pub(crate) type Three<'a, const L: usize> =
    (&'a mut [[f32; L]], &'a mut [[f32; L]], &'a mut [[f32; L]]);

/// What one tile of backward pass 1 works on.
pub(crate) struct BwdQTile<'a, const L: usize> {
    pub(crate) ch: Chunk,
    /// The query row (position on axis 1).
    pub(crate) x1: usize,
    pub(crate) h: usize,
    pub(crate) grp: usize,
    pub(crate) ii0: usize,
    pub(crate) n: usize,
    /// Scaled queries and `d_out`, transposed.
    pub(crate) qt: &'a [[f32; L]],
    pub(crate) dot: &'a [[f32; L]],
    /// Per lane: `lse` and `delta`.
    pub(crate) lse: [f32; L],
    pub(crate) dlt: [f32; L],
}

/// The arguments of a multi-row [`backward_query_slide_rows`] (rows
/// per tile: [`rows_per_tile`]), run through [`Simd::vectorize`].
struct BwdRows<'a, 'b, const L: usize> {
    g: &'a Geo,
    bias: Option<&'a dyn BiasRows<L>>,
    kv: (&'a [f32], &'a [f32]),
    ts: [&'a BwdQTile<'a, L>; FWD_ROWS],
    sl: &'a Slide<L>,
    bufs: Three<'a, L>,
    dqts: &'a mut [&'b mut [[f32; L]]; FWD_ROWS],
    drpb: Option<&'a mut [f32]>,
}

impl<const L: usize> WithSimd for BwdRows<'_, '_, L> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, vx: S) {
        let BwdRows {
            g,
            bias,
            kv,
            ts,
            sl,
            bufs,
            dqts,
            drpb: d,
        } = self;
        let [a, b, c] = dqts;
        // One row count per ISA, chosen at compile time.
        if const { !wide::<S>() } {
            let ts = [ts[0], ts[1]];
            let mut o = [&mut **a, &mut **b];
            if sl.bcast {
                backward_query_slide_rows::<S, L, true, 2>(
                    vx, g, bias, kv, ts, sl, bufs, &mut o, d,
                );
            } else {
                backward_query_slide_rows::<S, L, false, 2>(
                    vx, g, bias, kv, ts, sl, bufs, &mut o, d,
                );
            }
        } else {
            let mut o = [&mut **a, &mut **b, &mut **c];
            if sl.bcast {
                backward_query_slide_rows::<S, L, true, 3>(
                    vx, g, bias, kv, ts, sl, bufs, &mut o, d,
                );
            } else {
                backward_query_slide_rows::<S, L, false, 3>(
                    vx, g, bias, kv, ts, sl, bufs, &mut o, d,
                );
            }
        }
    }
}

/// Backward pass 1 of one tile on the transposed path: `d_query` into `dqt`
/// and, when given, `d_rpb`. Ragged runs mask `d_logit` past each lane's
/// window; `safe` selects the keys too (see "Masking" above).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_query_slide<S: Simd, const L: usize, T: Element, const BC: bool>(
    vx: S,
    g: &Geo,
    x: &Inputs<'_, T>,
    (kt, vt): (&[f32], &[f32]),
    t: &BwdQTile<'_, L>,
    sl: &Slide<L>,
    safe: bool,
    (sc, dp, mask): Three<'_, L>,
    dqt: &mut [[f32; L]],
    mut drpb: Option<&mut [f32]>,
) {
    let (dk, dv, k2) = (g.dk, g.dv, g.axes[2].kernel());
    let (w0, w1) = (g.axes[0].window(t.ch.x0), g.axes[1].window(t.x1));
    let (lg, km) = (g.glen(t.grp), sl.kmax);
    if sl.ragged {
        sl.mask(t.n, mask);
    }
    let (sc, dp, mask) = (&mut sc[..km], &mut dp[..km], &mask[..km]);
    for li in 0..w0.count * w1.count {
        let (t0, t1) = line_of(&w0, &w1, li);
        let r0 = g.axes[0].rpb_index_unchecked(t.ch.x0, t0);
        let r1 = g.axes[1].rpb_index_unchecked(t.x1, t1);
        let ko = g.t_offset(dk, t0, t1, t.h, t.grp) + sl.st0;
        let vo = g.t_offset(dv, t0, t1, t.h, t.grp) + sl.st0;
        diag_dot::<S, L, BC>(vx, &kt[ko..], lg, dk, t.qt, sc);
        let brow = x.rpb.map(|rpb| g.bias_row(rpb, t.h, r0, r1));
        let b0 = |l: usize| sl.query_bias_start(l, k2, t.ii0);
        if let Some(brow) = brow {
            add_query_bias::<T, L, BC>(sc, brow, sl, k2, t.ii0, t.n);
        }
        for sj in sc.iter_mut() {
            for l in 0..L {
                sj[l] = exp::<S::A>(sj[l] - t.lse[l]);
            }
        }
        diag_dot::<S, L, BC>(vx, &vt[vo..], lg, dv, t.dot, dp);
        for (pj, sj) in dp.iter_mut().zip(sc.iter()) {
            for l in 0..L {
                pj[l] = sj[l] * (pj[l] - t.dlt[l]);
            }
        }
        if sl.ragged {
            mask_weights(dp, mask);
        }
        if safe {
            diag_axpy_masked::<S::A, L, BC>(dp, mask, &kt[ko..], lg, dqt);
        } else {
            diag_axpy::<S, L, BC>(vx, dp, &kt[ko..], lg, dqt);
        }
        if let (Some(d), true) = (drpb.as_deref_mut(), brow.is_some()) {
            let off = t.h * g.rph + (r0 * g.rext[1] + r1) * g.rext[2];
            if BC {
                for l in 0..t.n {
                    let d = &mut d[off + b0(l)..];
                    for (dr, pj) in d.iter_mut().zip(&dp[..sl.cnt[l]]) {
                        *dr += pj[l];
                    }
                }
            } else {
                for (dr, pj) in d[off + b0(0)..].iter_mut().zip(dp.iter()) {
                    *dr += pj[..t.n].iter().sum::<f32>();
                }
            }
        }
    }
}

/// Backward pass 1 of one tile on the general path: per key line, the
/// union of the tile's windows, `d_logit` masked to each lane's window, into
/// `dqt` ([`lanes_times_rows_masked`] when `safe`) and, when given, `d_rpb`.
/// `mask` must hold [`Lanes::mask`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_query_union<S: Simd, const L: usize, T: Element>(
    vx: S,
    g: &Geo,
    x: &Inputs<'_, T>,
    t: &BwdQTile<'_, L>,
    ln: &Lanes<L>,
    safe: bool,
    (sc, dp, mask, kp, vp): QueryUnionBufs<'_, L>,
    dqt: &mut [[f32; L]],
    mut drpb: Option<&mut [f32]>,
) {
    let (dk, dv, hn) = (g.dk, g.dv, g.heads);
    let ax = g.axes[2];
    let (d2, k2, u) = (ax.dilation(), ax.kernel(), ln.u);
    let (w0, w1) = (g.axes[0].window(t.ch.x0), g.axes[1].window(t.x1));
    let (sc, dp, mask) = (&mut sc[..u], &mut dp[..u], &mask[..u]);
    for t0 in w0.iter() {
        let r0 = g.axes[0].rpb_index_unchecked(t.ch.x0, t0);
        for t1 in w1.iter() {
            let r1 = g.axes[1].rpb_index_unchecked(t.x1, t1);
            let r = g.row(t.ch.b, t0, t1, t.grp + d2 * ln.lo, t.h);
            let (keys, ks) = rows_of(x.key, r, d2 * hn, u, dk, kp);
            let (vals, vs) = rows_of(x.value, r, d2 * hn, u, dv, vp);
            rows_dot_lanes::<S, L>(vx, keys, ks, dk, t.qt, sc);
            let brow = x.rpb.map(|rpb| g.bias_row(rpb, t.h, r0, r1));
            if let Some(brow) = brow {
                for l in 0..t.n {
                    // Bias index of slot j: (lo + j) - (ii0 + l) + k - 1.
                    let b0 = (ln.lo + ln.first[l] + k2 - 1) - (t.ii0 + l);
                    for (j, b) in (ln.first[l]..ln.last[l]).zip(&brow[b0..]) {
                        sc[j][l] += b.to_f32();
                    }
                }
            }
            for sj in sc.iter_mut() {
                for l in 0..L {
                    sj[l] = exp::<S::A>(sj[l] - t.lse[l]);
                }
            }
            rows_dot_lanes::<S, L>(vx, vals, vs, dv, t.dot, dp);
            for (pj, sj) in dp.iter_mut().zip(sc.iter()) {
                for l in 0..L {
                    pj[l] = sj[l] * (pj[l] - t.dlt[l]);
                }
            }
            mask_weights(dp, mask);
            if safe {
                lanes_times_rows_masked::<S::A, L>(dp, mask, keys, ks, dqt);
            } else {
                lanes_times_rows::<S, L>(vx, dp, keys, ks, dqt);
            }
            if let (Some(d), true) = (drpb.as_deref_mut(), brow.is_some()) {
                let off = t.h * g.rph + (r0 * g.rext[1] + r1) * g.rext[2];
                for l in 0..t.n {
                    let b0 = off + (ln.lo + ln.first[l] + k2 - 1) - (t.ii0 + l);
                    for (j, dr) in (ln.first[l]..ln.last[l]).zip(&mut d[b0..]) {
                        *dr += dp[j][l];
                    }
                }
            }
        }
    }
}

/// Backward pass 1 of a multi-row tile on the transposed path: the rows
/// `t[r]` (consecutive rows of one axis-1 dilation group, same columns, so
/// one [`Slide`]). Every key and value line of the union of their windows is
/// read once for all rows that see it ([`dot_rows`], [`axpy_rows`]); per row
/// the arithmetic is that of [`backward_query_slide`] with `safe = false`,
/// in the same order. `d_rpb` gets every row's `d_logit`; the caller redoes
/// (without `d_rpb`) a row whose ragged tile came out non-finite.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_query_slide_rows<S: Simd, const L: usize, const BC: bool, const R: usize>(
    vx: S,
    g: &Geo,
    bias: Option<&dyn BiasRows<L>>,
    (kt, vt): (&[f32], &[f32]),
    t: [&BwdQTile<'_, L>; R],
    sl: &Slide<L>,
    (sc, dp, mask): Three<'_, L>,
    dqt: &mut [&mut [[f32; L]]; R],
    mut drpb: Option<&mut [f32]>,
) {
    let (dk, dv, k2) = (g.dk, g.dv, g.axes[2].kernel());
    let (t00, d1) = (t[0], g.axes[1].dilation());
    let (h, grp, x0, n) = (t00.h, t00.grp, t00.ch.x0, t00.n);
    let w0 = g.axes[0].window(x0);
    let w1 = t.map(|tr| g.axes[1].window(tr.x1));
    let (lg, km) = (g.glen(grp), sl.kmax);
    if sl.ragged {
        sl.mask(n, mask);
    }
    let mask = &mask[..km];
    let (q, dot) = (t.map(|tr| tr.qt), t.map(|tr| tr.dot));
    // Row r's probabilities and d_logit of the current line: km slots at r * km.
    let mut base = [0usize; R];
    for r in 0..R {
        base[r] = r * km;
    }
    let (u_lo, u_hi) = (w1[0].start, w1[R - 1].start + w1[R - 1].count * d1);
    let b0 = |l: usize| sl.query_bias_start(l, k2, t00.ii0);
    for t0 in w0.iter() {
        let r0 = g.axes[0].rpb_index_unchecked(x0, t0);
        let mut t1 = u_lo;
        while t1 < u_hi {
            let ko = g.t_offset(dk, t0, t1, h, grp) + sl.st0;
            let vo = g.t_offset(dv, t0, t1, h, grp) + sl.st0;
            let (ra, rb, _) = rows_of_line(&w1, d1, t1, 0, &base, km);
            let off = base;
            dot_rows::<S, L, BC, R>(vx, &kt[ko..], lg, dk, km, &q, ra, rb, sc, &off);
            for r in ra..rb {
                let s = &mut sc[off[r]..][..km];
                if let Some(b) = bias {
                    let r1 = g.axes[1].rpb_index_unchecked(t[r].x1, t1);
                    b.add_row(g, (h, r0, r1), s, sl, k2, t00.ii0, n, BC);
                }
                let lse = &t[r].lse;
                for sj in s.iter_mut() {
                    for l in 0..L {
                        sj[l] = exp::<S::A>(sj[l] - lse[l]);
                    }
                }
            }
            dot_rows::<S, L, BC, R>(vx, &vt[vo..], lg, dv, km, &dot, ra, rb, dp, &off);
            for r in ra..rb {
                let (p, s) = (&mut dp[off[r]..][..km], &sc[off[r]..][..km]);
                let dlt = &t[r].dlt;
                for (pj, sj) in p.iter_mut().zip(s) {
                    for l in 0..L {
                        pj[l] = sj[l] * (pj[l] - dlt[l]);
                    }
                }
                if sl.ragged {
                    mask_weights(p, mask);
                }
            }
            axpy_rows::<S, L, BC, R>(vx, dp, &off, km, &kt[ko..], lg, dqt, ra, rb);
            if let (Some(d), true) = (drpb.as_deref_mut(), bias.is_some()) {
                for r in ra..rb {
                    let r1 = g.axes[1].rpb_index_unchecked(t[r].x1, t1);
                    let off_b = h * g.rph + (r0 * g.rext[1] + r1) * g.rext[2];
                    let p = &dp[off[r]..][..km];
                    if BC {
                        for l in 0..n {
                            let d = &mut d[off_b + b0(l)..];
                            for (dr, pj) in d.iter_mut().zip(&p[..sl.cnt[l]]) {
                                *dr += pj[l];
                            }
                        }
                    } else {
                        for (dr, pj) in d[off_b + b0(0)..].iter_mut().zip(p.iter()) {
                            *dr += pj[..n].iter().sum::<f32>();
                        }
                    }
                }
            }
            t1 += d1;
        }
    }
}

/// Backward pass 1 for one chunk of queries ([`Geo::fchunk`]): `dq`
/// (`(rows * cols, heads, dk)`), `delta` (`(rows * cols, heads)`), and
/// `drpb` (the whole bias table) when given.
///
/// As in the forward pass, up to [`rows_per_tile`] rows of one axis-1
/// dilation group go through [`backward_query_slide_rows`] together on the
/// transposed path.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_query<S: Simd, const L: usize, T: Element>(
    vx: S,
    g: &Geo,
    x: &Inputs<'_, T>,
    sv: &Saved<'_, T>,
    kvt: Option<(&[f32], &[f32])>,
    ci: usize,
    dq: &mut [T],
    delta: &mut [f32],
    mut drpb: Option<&mut [f32]>,
    scratch: &mut [f32],
) {
    let ch = g.fchunk(ci);
    let (dk, dv, hn) = (g.dk, g.dv, g.heads);
    let ax = g.axes[2];
    let (d2, k2, d1) = (ax.dilation(), ax.kernel(), g.axes[1].dilation());
    let umax = L + k2 + ax.stride();
    let rmax = rows_per_tile::<S>().min(FWD_ROWS);
    let mut s = scratch;
    let mut qts: [&mut [[f32; L]]; FWD_ROWS] = Default::default();
    let mut dots: [&mut [[f32; L]]; FWD_ROWS] = Default::default();
    let mut dqts: [&mut [[f32; L]]; FWD_ROWS] = Default::default();
    for r in 0..FWD_ROWS {
        qts[r] = take_lanes::<L>(&mut s, dk); // (dk, L): scaled queries
        dots[r] = take_lanes::<L>(&mut s, dv); // (dv, L): d_out, transposed
        dqts[r] = take_lanes::<L>(&mut s, dk); // (dk, L): d_query accumulator
    }
    // Probabilities and dP (then d_logit): one union of windows (general
    // path, one row) or one key line of every row of a multi-row tile.
    let slots = umax.max(FWD_ROWS * k2);
    let sc = take_lanes::<L>(&mut s, slots); // (U, L) or (R, k, L): probabilities
    let dp = take_lanes::<L>(&mut s, slots); // (U, L) or (R, k, L): dP, then d_logit
    let mask = take_lanes::<L>(&mut s, umax); // (U, L): window mask
    let kp = take(&mut s, umax * dk); // (U, dk)
    let vp = take(&mut s, umax * dv); // (U, dv)
    for h in 0..hn {
        for grp in 0..d2 {
            let (ia, ie) = group_range(ch.a, ch.a + ch.cols, grp, d2);
            let mut ii0 = ia;
            while ii0 < ie {
                let n = (ie - ii0).min(L);
                let (mut x2, mut st, mut en) = ([0; L], [0; L], [0; L]);
                for l in 0..n {
                    x2[l] = grp + d2 * (ii0 + l);
                    let w = ax.window(x2[l]);
                    st[l] = w.start / d2;
                    en[l] = st[l] + w.count;
                }
                let n = if kvt.is_some() { slide_run(&st, n) } else { n };
                let slide = kvt.and_then(|_| Slide::<L>::new(n, &st, &en));
                for g1 in 0..d1.min(ch.rows) {
                    let mut x1 = ch.x1 + g1;
                    while x1 < ch.x1 + ch.rows {
                        let mut run = 0;
                        while run < rmax && x1 + run * d1 < ch.x1 + ch.rows {
                            run += 1;
                        }
                        let (mut lse, mut dlt) = ([[0.0f32; L]; FWD_ROWS], [[0.0f32; L]; FWD_ROWS]);
                        for r in 0..run {
                            let x1r = x1 + r * d1;
                            let mut rows = [0; L];
                            for l in 0..n {
                                let row = g.row(ch.b, ch.x0, x1r, x2[l], h);
                                rows[l] = row;
                                lse[r][l] = sv.lse[row];
                                let o = &sv.out[row * dv..][..dv];
                                let d = &sv.d_out[row * dv..][..dv];
                                dlt[r][l] =
                                    o.iter().zip(d).map(|(a, b)| a.to_f32() * b.to_f32()).sum();
                                delta[ch.pos(x1r, x2[l]) * hn + h] = dlt[r][l];
                            }
                            load_tile::<S, T, L>(vx, qts[r], x.query, &rows[..n], dk, g.scale, kp);
                            load_tile::<S, T, L>(vx, dots[r], sv.d_out, &rows[..n], dv, 1.0, vp);
                            for v in dqts[r].iter_mut() {
                                *v = [0.0; L];
                            }
                        }
                        let tile = |r: usize| BwdQTile {
                            ch,
                            x1: x1 + r * d1,
                            h,
                            grp,
                            ii0,
                            n,
                            qt: &*qts[r],
                            dot: &*dots[r],
                            lse: lse[r],
                            dlt: dlt[r],
                        };
                        // As in the forward pass: tiles of exactly `rmax` rows.
                        let multi = run == rmax && run > 1 && slide.is_some();
                        let mut redo = [!multi; FWD_ROWS];
                        if let (true, Some(kv), Some(sl)) = (multi, kvt, slide.as_ref()) {
                            // Compiled once per ISA, not per storage type.
                            let table = x.rpb.map(BiasTable);
                            vx.vectorize(BwdRows {
                                g,
                                bias: table.as_ref().map(|b| b as &dyn BiasRows<L>),
                                kv,
                                ts: [&tile(0), &tile(1), &tile(2)],
                                sl,
                                bufs: (&mut *sc, &mut *dp, &mut *mask),
                                dqts: &mut dqts,
                                drpb: drpb.as_deref_mut(),
                            });
                            for r in 0..run {
                                if sl.ragged && !lanes_finite(dqts[r], n) {
                                    redo[r] = true;
                                    for v in dqts[r].iter_mut() {
                                        *v = [0.0; L];
                                    }
                                }
                            }
                        }
                        for r in (0..run).filter(|&r| redo[r]) {
                            let tr = tile(r);
                            let bufs = (
                                &mut sc[..umax],
                                &mut dp[..umax],
                                &mut *mask,
                                &mut *kp,
                                &mut *vp,
                            );
                            // A redo after a multi-row pass is safe at once and
                            // adds nothing to d_rpb (the fast pass did).
                            let d = if multi { None } else { drpb.as_deref_mut() };
                            query_one_row::<S, L, T>(
                                vx,
                                g,
                                x,
                                kvt,
                                &tr,
                                &st,
                                &en,
                                slide.as_ref(),
                                multi,
                                bufs,
                                dqts[r],
                                d,
                            );
                        }
                        for r in 0..run {
                            let x1r = x1 + r * d1;
                            let mut orow = [0usize; L];
                            for l in 0..n {
                                orow[l] = ch.pos(x1r, x2[l]) * hn + h;
                            }
                            let scale = [g.scale; L];
                            store_tile::<S, T, L>(
                                vx,
                                dq,
                                &orow[..n],
                                dk,
                                dqts[r],
                                Some(&scale),
                                kp,
                            );
                        }
                        x1 += run * d1;
                    }
                }
                ii0 += n;
            }
        }
    }
}

/// The buffers of [`query_one_row`]: probabilities, `dP`, mask, packed keys
/// and values.
type QueryRowBufs<'a, const L: usize> = (
    &'a mut [[f32; L]],
    &'a mut [[f32; L]],
    &'a mut [[f32; L]],
    &'a mut [f32],
    &'a mut [f32],
);

/// Backward pass 1 of one row's tile on its own: the sliding-window path
/// when `slide` is given, else the general path; a fast pass that comes out
/// non-finite where masked slots could be the cause is redone safely (see
/// "Masking" in `mask.rs`), adding nothing more to `d_rpb`. `safe_first`
/// skips the fast pass.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn query_one_row<S: Simd, const L: usize, T: Element>(
    vx: S,
    g: &Geo,
    x: &Inputs<'_, T>,
    kvt: Option<(&[f32], &[f32])>,
    t: &BwdQTile<'_, L>,
    st: &[usize; L],
    en: &[usize; L],
    slide: Option<&Slide<L>>,
    safe_first: bool,
    (sc, dp, mask, kp, vp): QueryRowBufs<'_, L>,
    dqt: &mut [[f32; L]],
    mut drpb: Option<&mut [f32]>,
) {
    let n = t.n;
    let passes: &[bool] = if safe_first { &[true] } else { &[false, true] };
    if let (Some(kv), Some(sl)) = (kvt, slide) {
        for &safe in passes {
            let bufs = (&mut *sc, &mut *dp, &mut *mask);
            let d = if safe { None } else { drpb.as_deref_mut() };
            if !sl.bcast {
                backward_query_slide::<S, L, T, false>(vx, g, x, kv, t, sl, safe, bufs, dqt, d);
            } else {
                backward_query_slide::<S, L, T, true>(vx, g, x, kv, t, sl, safe, bufs, dqt, d);
            }
            if safe || !sl.ragged || lanes_finite(dqt, n) {
                break;
            }
            for v in dqt.iter_mut() {
                *v = [0.0; L];
            }
        }
    } else {
        let ln = Lanes::new(n, *st, *en);
        ln.mask(mask);
        for &safe in passes {
            let bufs = (&mut *sc, &mut *dp, &*mask, &mut *kp, &mut *vp);
            let d = if safe { None } else { drpb.as_deref_mut() };
            backward_query_union::<S, L, T>(vx, g, x, t, &ln, safe, bufs, dqt, d);
            if safe || lanes_finite(dqt, n) {
                break;
            }
            for v in dqt.iter_mut() {
                *v = [0.0; L];
            }
        }
    }
}

/// What one tile of backward pass 2 works on.
pub(crate) struct BwdKTile<'a, const L: usize> {
    pub(crate) ch: Chunk,
    /// The key row (position on axis 1).
    pub(crate) x1: usize,
    pub(crate) h: usize,
    pub(crate) grp: usize,
    pub(crate) jj0: usize,
    pub(crate) n: usize,
    /// Scaled keys and values, transposed.
    pub(crate) kt: &'a [[f32; L]],
    pub(crate) vt: &'a [[f32; L]],
}

/// Backward pass 2 of one key tile on the transposed path: `d_key` and
/// `d_value` into `dkt` and `dvt`, over each key's inverse neighbourhood.
/// Ragged runs mask the probabilities and `d_logit` past each lane's
/// neighbourhood; `safe` selects the queries and `d_out` too (see "Masking"
/// above).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_key_slide<S: Simd, const L: usize, T: Element, const BC: bool>(
    vx: S,
    g: &Geo,
    x: &Inputs<'_, T>,
    tq: &QueriesT<'_>,
    t: &BwdKTile<'_, L>,
    sl: &Slide<L>,
    safe: bool,
    (sc, dp, mask): Three<'_, L>,
    (dkt, dvt): (&mut [[f32; L]], &mut [[f32; L]]),
) {
    let (dk, dv, k2) = (g.dk, g.dv, g.axes[2].kernel());
    let (a0, a1) = (g.axes[0], g.axes[1]);
    let (lg, km) = (g.glen(t.grp), sl.kmax);
    if sl.ragged {
        sl.mask(t.n, mask);
    }
    let (sc, dp, mask) = (&mut sc[..km], &mut dp[..km], &mask[..km]);
    let (i0, i1) = (inverse_window(&a0, t.ch.x0), inverse_window(&a1, t.x1));
    for q0 in i0.iter() {
        let r0 = a0.rpb_index_unchecked(q0, t.ch.x0);
        for q1 in i1.iter() {
            let r1 = a1.rpb_index_unchecked(q1, t.x1);
            let qo = g.t_offset(dk, q0, q1, t.h, t.grp) + sl.st0;
            let oo = g.t_offset(dv, q0, q1, t.h, t.grp) + sl.st0;
            let so = g.t_offset(1, q0, q1, t.h, t.grp) + sl.st0;
            diag_dot::<S, L, BC>(vx, &tq.q[qo..], lg, dk, t.kt, sc);
            if let Some(rpb) = x.rpb {
                let brow = g.bias_row(rpb, t.h, r0, r1);
                add_key_bias::<T, L, BC>(sc, brow, sl, k2, t.jj0, t.n);
            }
            for (o, sj) in sc.iter_mut().enumerate() {
                let lv = lanes_of::<L, BC>(&tq.lse[so + o..]);
                for l in 0..L {
                    sj[l] = exp::<S::A>(sj[l] - lv[l]);
                }
            }
            diag_dot::<S, L, BC>(vx, &tq.d_out[oo..], lg, dv, t.vt, dp);
            for (o, (pj, sj)) in dp.iter_mut().zip(sc.iter()).enumerate() {
                let dl = lanes_of::<L, BC>(&tq.delta[so + o..]);
                for l in 0..L {
                    pj[l] = sj[l] * (pj[l] - dl[l]);
                }
            }
            if sl.ragged {
                mask_weights(sc, mask);
                mask_weights(dp, mask);
            }
            if safe {
                diag_axpy_masked::<S::A, L, BC>(sc, mask, &tq.d_out[oo..], lg, dvt);
                diag_axpy_masked::<S::A, L, BC>(dp, mask, &tq.q[qo..], lg, dkt);
            } else {
                diag_axpy::<S, L, BC>(vx, sc, &tq.d_out[oo..], lg, dvt);
                diag_axpy::<S, L, BC>(vx, dp, &tq.q[qo..], lg, dkt);
            }
        }
    }
}

/// Per-slot buffers of backward pass 2's general path: probabilities,
/// `d_logit`, the mask, packed queries and `d_out`, and the queries' `lse`
/// and `delta`.
pub(crate) type KeyUnionBufs<'a, const L: usize> = (
    &'a mut [[f32; L]],
    &'a mut [[f32; L]],
    &'a [[f32; L]],
    &'a mut [f32],
    &'a mut [f32],
    &'a mut [f32],
    &'a mut [f32],
);

/// Backward pass 2 of one key tile on the general path: per query line, the
/// union of the tile's inverse neighbourhoods, probabilities and `d_logit`
/// masked to each lane's neighbourhood, into `dkt` and `dvt`
/// ([`lanes_times_rows_masked`] when `safe`). `mask` must hold
/// [`Lanes::mask`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_key_union<S: Simd, const L: usize, T: Element>(
    vx: S,
    g: &Geo,
    x: &Inputs<'_, T>,
    sv: &Saved<'_, T>,
    delta: &[f32],
    t: &BwdKTile<'_, L>,
    ln: &Lanes<L>,
    safe: bool,
    (sc, dp, mask, qp, dop, lse_u, dlt_u): KeyUnionBufs<'_, L>,
    (dkt, dvt): (&mut [[f32; L]], &mut [[f32; L]]),
) {
    let (dk, dv, hn) = (g.dk, g.dv, g.heads);
    let ax = g.axes[2];
    let (d2, k2, u) = (ax.dilation(), ax.kernel(), ln.u);
    let (a0, a1) = (g.axes[0], g.axes[1]);
    let (sc, dp, mask) = (&mut sc[..u], &mut dp[..u], &mask[..u]);
    for q0 in a0.inverse(t.ch.x0) {
        let r0 = a0.rpb_index_unchecked(q0, t.ch.x0);
        for q1 in a1.inverse(t.x1) {
            let r1 = a1.rpb_index_unchecked(q1, t.x1);
            let r = g.row(t.ch.b, q0, q1, t.grp + d2 * ln.lo, t.h);
            for i in 0..u {
                lse_u[i] = sv.lse[r + i * d2 * hn];
                dlt_u[i] = delta[r + i * d2 * hn];
            }
            let (qs, qst) = rows_of(x.query, r, d2 * hn, u, dk, qp);
            let (dos, dost) = rows_of(sv.d_out, r, d2 * hn, u, dv, dop);
            rows_dot_lanes::<S, L>(vx, qs, qst, dk, t.kt, sc);
            if let Some(rpb) = x.rpb {
                let brow = g.bias_row(rpb, t.h, r0, r1);
                for l in 0..t.n {
                    // Bias index: key group index - query group index + k - 1.
                    let base = t.jj0 + l + k2 - 1 - ln.lo;
                    for i in ln.first[l]..ln.last[l] {
                        sc[i][l] += brow[base - i].to_f32();
                    }
                }
            }
            for (i, si) in sc.iter_mut().enumerate() {
                for l in 0..L {
                    si[l] = exp::<S::A>(si[l] - lse_u[i]);
                }
            }
            rows_dot_lanes::<S, L>(vx, dos, dost, dv, t.vt, dp);
            for (i, (pi, si)) in dp.iter_mut().zip(sc.iter()).enumerate() {
                for l in 0..L {
                    pi[l] = si[l] * (pi[l] - dlt_u[i]);
                }
            }
            mask_weights(sc, mask);
            mask_weights(dp, mask);
            if safe {
                lanes_times_rows_masked::<S::A, L>(sc, mask, dos, dost, dvt);
                lanes_times_rows_masked::<S::A, L>(dp, mask, qs, qst, dkt);
            } else {
                lanes_times_rows::<S, L>(vx, sc, dos, dost, dvt);
                lanes_times_rows::<S, L>(vx, dp, qs, qst, dkt);
            }
        }
    }
}

/// Backward pass 2 of a two-row key tile on the transposed path: the key
/// rows `t[r]` (consecutive rows of one axis-1 dilation group, same
/// columns, so one [`Slide`]). Every query (and `d_out`) line of the union
/// of their inverse neighbourhoods is read once for both rows that it
/// attends ([`dot_rows`], [`axpy_rows`]); per row the arithmetic is that of
/// [`backward_key_slide`] with `safe = false`, in the same order. The
/// caller redoes a row whose ragged tile came out non-finite.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_key_slide_rows<S: Simd, const L: usize, const BC: bool, const R: usize>(
    vx: S,
    g: &Geo,
    bias: Option<&dyn BiasRows<L>>,
    tq: &QueriesT<'_>,
    t: [&BwdKTile<'_, L>; R],
    sl: &Slide<L>,
    (sc, dp, mask): Three<'_, L>,
    dkt: &mut [&mut [[f32; L]]; R],
    dvt: &mut [&mut [[f32; L]]; R],
) {
    let (dk, dv, k2) = (g.dk, g.dv, g.axes[2].kernel());
    let (a0, a1) = (g.axes[0], g.axes[1]);
    let (t00, d1) = (t[0], a1.dilation());
    let (h, grp, x0, n, jj0) = (t00.h, t00.grp, t00.ch.x0, t00.n, t00.jj0);
    let (lg, km) = (g.glen(grp), sl.kmax);
    if sl.ragged {
        sl.mask(n, mask);
    }
    let mask = &mask[..km];
    let (kts, vts) = (t.map(|tr| tr.kt), t.map(|tr| tr.vt));
    let i0 = inverse_window(&a0, x0);
    let i1 = t.map(|tr| inverse_window(&a1, tr.x1));
    // Row r's probabilities and d_logit of the current line: km slots at r * km.
    let mut off = [0usize; R];
    for r in 0..R {
        off[r] = r * km;
    }
    // The union of the rows' inverse neighbourhoods on axis 1 (in steps of
    // the dilation; a row may have none).
    let (mut u_lo, mut u_hi) = (usize::MAX, 0);
    for w in i1.iter().filter(|w| w.count > 0) {
        u_lo = u_lo.min(w.start);
        u_hi = u_hi.max(w.start + w.count * d1);
    }
    for q0 in i0.iter() {
        let r0 = a0.rpb_index_unchecked(q0, x0);
        let mut q1 = u_lo;
        while q1 < u_hi {
            let (ra, rb, _) = rows_of_line(&i1, d1, q1, 0, &off, km);
            if ra < rb {
                let qo = g.t_offset(dk, q0, q1, h, grp) + sl.st0;
                let oo = g.t_offset(dv, q0, q1, h, grp) + sl.st0;
                let so = g.t_offset(1, q0, q1, h, grp) + sl.st0;
                dot_rows::<S, L, BC, R>(vx, &tq.q[qo..], lg, dk, km, &kts, ra, rb, sc, &off);
                for r in ra..rb {
                    let s = &mut sc[off[r]..][..km];
                    if let Some(b) = bias {
                        let r1 = a1.rpb_index_unchecked(q1, t[r].x1);
                        b.add_key_row(g, (h, r0, r1), s, sl, k2, jj0, n, BC);
                    }
                    for (o, sj) in s.iter_mut().enumerate() {
                        let lv = lanes_of::<L, BC>(&tq.lse[so + o..]);
                        for l in 0..L {
                            sj[l] = exp::<S::A>(sj[l] - lv[l]);
                        }
                    }
                }
                dot_rows::<S, L, BC, R>(vx, &tq.d_out[oo..], lg, dv, km, &vts, ra, rb, dp, &off);
                for r in ra..rb {
                    let (p, s) = (&mut dp[off[r]..][..km], &mut sc[off[r]..][..km]);
                    for (o, (pj, sj)) in p.iter_mut().zip(s.iter()).enumerate() {
                        let dl = lanes_of::<L, BC>(&tq.delta[so + o..]);
                        for l in 0..L {
                            pj[l] = sj[l] * (pj[l] - dl[l]);
                        }
                    }
                    if sl.ragged {
                        mask_weights(s, mask);
                        mask_weights(p, mask);
                    }
                }
                axpy_rows::<S, L, BC, R>(vx, sc, &off, km, &tq.d_out[oo..], lg, dvt, ra, rb);
                axpy_rows::<S, L, BC, R>(vx, dp, &off, km, &tq.q[qo..], lg, dkt, ra, rb);
            }
            q1 += d1;
        }
    }
}

/// The arguments of a two-row [`backward_key_slide_rows`], run through
/// [`Simd::vectorize`] (compiled once per ISA, not per storage type).
struct KeyRows<'a, 'b, const L: usize> {
    g: &'a Geo,
    bias: Option<&'a dyn BiasRows<L>>,
    tq: &'a QueriesT<'a>,
    ts: [&'a BwdKTile<'a, L>; KEY_ROWS],
    sl: &'a Slide<L>,
    bufs: Three<'a, L>,
    dkts: &'a mut [&'b mut [[f32; L]]; KEY_ROWS],
    dvts: &'a mut [&'b mut [[f32; L]]; KEY_ROWS],
}

impl<const L: usize> WithSimd for KeyRows<'_, '_, L> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, vx: S) {
        let KeyRows {
            g,
            bias,
            tq,
            ts,
            sl,
            bufs,
            dkts,
            dvts,
        } = self;
        let [a, b] = dkts;
        let [c, d] = dvts;
        let (mut dk, mut dv) = ([&mut **a, &mut **b], [&mut **c, &mut **d]);
        if sl.bcast {
            backward_key_slide_rows::<S, L, true, KEY_ROWS>(
                vx, g, bias, tq, ts, sl, bufs, &mut dk, &mut dv,
            );
        } else {
            backward_key_slide_rows::<S, L, false, KEY_ROWS>(
                vx, g, bias, tq, ts, sl, bufs, &mut dk, &mut dv,
            );
        }
    }
}

/// Backward pass 2 for one chunk of keys ([`Geo::chunk`]): `dk` (`(rows *
/// cols, heads, dk)`) and `dv` (`(rows * cols, heads, dv)`), gathered over
/// each key's inverse neighbourhood.
///
/// On the transposed path, [`KEY_ROWS`] rows of one axis-1 dilation group
/// go through [`backward_key_slide_rows`] together; other rows, and the
/// general path, one row at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_key<S: Simd, const L: usize, T: Element>(
    vx: S,
    g: &Geo,
    x: &Inputs<'_, T>,
    sv: &Saved<'_, T>,
    delta: &[f32],
    qdt: Option<QueriesT<'_>>,
    ci: usize,
    dk_out: &mut [T],
    dv_out: &mut [T],
    scratch: &mut [f32],
) {
    let ch = g.chunk(ci);
    let (dk, dv, hn) = (g.dk, g.dv, g.heads);
    let ax = g.axes[2];
    let (d2, k2, d1) = (ax.dilation(), ax.kernel(), g.axes[1].dilation());
    let umax = L + 2 * k2;
    let slots = key_slots(L, k2);
    let mut s = scratch;
    let mut kts: [&mut [[f32; L]]; KEY_ROWS] = Default::default();
    let mut vts: [&mut [[f32; L]]; KEY_ROWS] = Default::default();
    let mut dkts: [&mut [[f32; L]]; KEY_ROWS] = Default::default();
    let mut dvts: [&mut [[f32; L]]; KEY_ROWS] = Default::default();
    for r in 0..KEY_ROWS {
        kts[r] = take_lanes::<L>(&mut s, dk); // (dk, L): scaled keys
        vts[r] = take_lanes::<L>(&mut s, dv); // (dv, L): values
        dkts[r] = take_lanes::<L>(&mut s, dk); // (dk, L): d_key accumulator
        dvts[r] = take_lanes::<L>(&mut s, dv); // (dv, L): d_value accumulator
    }
    let sc = take_lanes::<L>(&mut s, slots); // (U, L) or (R, km, L): probabilities
    let dp = take_lanes::<L>(&mut s, slots); // (U, L) or (R, km, L): dP, then d_logit
    let mask = take_lanes::<L>(&mut s, umax); // (U, L): inverse mask, 1 = attending
    let qp = take(&mut s, umax * dk); // (U, dk): packed queries of one line
    let dop = take(&mut s, umax * dv); // (U, dv): packed d_out of one line
    let lse_u = take(&mut s, umax); // (U,)
    let dlt_u = take(&mut s, umax); // (U,)
    for h in 0..hn {
        for grp in 0..d2 {
            let (ja, je) = group_range(ch.a, ch.a + ch.cols, grp, d2);
            let mut jj0 = ja;
            while jj0 < je {
                let n = (je - jj0).min(L);
                let (mut x2, mut st, mut en) = ([0; L], [0; L], [0; L]);
                for l in 0..n {
                    x2[l] = grp + d2 * (jj0 + l);
                    // The queries attending a key form one interval of its group.
                    let inv = inverse_window(&ax, x2[l]);
                    st[l] = inv.start / d2;
                    en[l] = st[l] + inv.count;
                }
                let n = if qdt.is_some() { slide_run(&st, n) } else { n };
                let slide = qdt.and_then(|_| Slide::<L>::new(n, &st, &en));
                for g1 in 0..d1.min(ch.rows) {
                    // The chunk's rows of axis-1 dilation group `g1`, in runs
                    // of up to KEY_ROWS rows.
                    let mut x1 = ch.x1 + g1;
                    while x1 < ch.x1 + ch.rows {
                        let mut run = 0;
                        while run < KEY_ROWS && x1 + run * d1 < ch.x1 + ch.rows {
                            run += 1;
                        }
                        for r in 0..run {
                            let mut rows = [0; L];
                            for l in 0..n {
                                rows[l] = g.row(ch.b, ch.x0, x1 + r * d1, x2[l], h);
                            }
                            load_tile::<S, T, L>(vx, kts[r], x.key, &rows[..n], dk, g.scale, qp);
                            load_tile::<S, T, L>(vx, vts[r], x.value, &rows[..n], dv, 1.0, dop);
                            for v in dkts[r].iter_mut().chain(dvts[r].iter_mut()) {
                                *v = [0.0; L];
                            }
                        }
                        let tile = |r: usize| BwdKTile {
                            ch,
                            x1: x1 + r * d1,
                            h,
                            grp,
                            jj0,
                            n,
                            kt: &*kts[r],
                            vt: &*vts[r],
                        };
                        let multi = run == KEY_ROWS && slide.is_some();
                        let mut redo = [!multi; KEY_ROWS];
                        if let (true, Some(tq), Some(sl)) = (multi, qdt.as_ref(), slide.as_ref()) {
                            let table = x.rpb.map(BiasTable);
                            let (t0, t1) = (tile(0), tile(1));
                            vx.vectorize(KeyRows {
                                g,
                                bias: table.as_ref().map(|b| b as &dyn BiasRows<L>),
                                tq,
                                ts: [&t0, &t1],
                                sl,
                                bufs: (&mut *sc, &mut *dp, &mut *mask),
                                dkts: &mut dkts,
                                dvts: &mut dvts,
                            });
                            for r in 0..run {
                                if sl.ragged
                                    && !(lanes_finite(dkts[r], n) && lanes_finite(dvts[r], n))
                                {
                                    redo[r] = true;
                                    for v in dkts[r].iter_mut().chain(dvts[r].iter_mut()) {
                                        *v = [0.0; L];
                                    }
                                }
                            }
                        }
                        for r in (0..run).filter(|&r| redo[r]) {
                            let t = tile(r);
                            let bufs = (
                                &mut sc[..umax],
                                &mut dp[..umax],
                                &mut *mask,
                                &mut *qp,
                                &mut *dop,
                                &mut *lse_u,
                                &mut *dlt_u,
                            );
                            // A row redone after a two-row pass is ragged and
                            // non-finite: safe at once.
                            key_one_row::<S, L, T>(
                                vx,
                                g,
                                (x, sv, delta),
                                qdt.as_ref(),
                                &t,
                                (&st, &en),
                                slide.as_ref(),
                                multi,
                                bufs,
                                (&mut *dkts[r], &mut *dvts[r]),
                            );
                        }
                        for r in 0..run {
                            let x1r = x1 + r * d1;
                            let mut orow = [0usize; L];
                            for l in 0..n {
                                orow[l] = ch.pos(x1r, x2[l]) * hn + h;
                            }
                            let scale = [g.scale; L];
                            store_tile::<S, T, L>(
                                vx,
                                dk_out,
                                &orow[..n],
                                dk,
                                dkts[r],
                                Some(&scale),
                                qp,
                            );
                            store_tile::<S, T, L>(vx, dv_out, &orow[..n], dv, dvts[r], None, dop);
                        }
                        x1 += run * d1;
                    }
                }
                jj0 += n;
            }
        }
    }
}

/// The buffers of [`key_one_row`]: probabilities, `dP`, mask, packed
/// queries and `d_out`, their `lse` and `delta`.
type KeyRowBufs<'a, const L: usize> = (
    &'a mut [[f32; L]],
    &'a mut [[f32; L]],
    &'a mut [[f32; L]],
    &'a mut [f32],
    &'a mut [f32],
    &'a mut [f32],
    &'a mut [f32],
);

/// Backward pass 2 of one key row's tile on its own: the sliding-window
/// path when `slide` is given, else the general path; a fast pass that
/// comes out non-finite where masked slots could be the cause is redone
/// safely (see "Masking" in `mask.rs`). `safe_first` skips the fast pass.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn key_one_row<S: Simd, const L: usize, T: Element>(
    vx: S,
    g: &Geo,
    (x, sv, delta): (&Inputs<'_, T>, &Saved<'_, T>, &[f32]),
    qdt: Option<&QueriesT<'_>>,
    t: &BwdKTile<'_, L>,
    (st, en): (&[usize; L], &[usize; L]),
    slide: Option<&Slide<L>>,
    safe_first: bool,
    (sc, dp, mask, qp, dop, lse_u, dlt_u): KeyRowBufs<'_, L>,
    (dkt, dvt): (&mut [[f32; L]], &mut [[f32; L]]),
) {
    let n = t.n;
    let passes: &[bool] = if safe_first { &[true] } else { &[false, true] };
    if let (Some(tq), Some(sl)) = (qdt, slide) {
        for &safe in passes {
            let bufs = (&mut *sc, &mut *dp, &mut *mask);
            let acc = (&mut *dkt, &mut *dvt);
            if !sl.bcast {
                backward_key_slide::<S, L, T, false>(vx, g, x, tq, t, sl, safe, bufs, acc);
            } else {
                backward_key_slide::<S, L, T, true>(vx, g, x, tq, t, sl, safe, bufs, acc);
            }
            if safe || !sl.ragged || (lanes_finite(dkt, n) && lanes_finite(dvt, n)) {
                break;
            }
            for v in dkt.iter_mut().chain(dvt.iter_mut()) {
                *v = [0.0; L];
            }
        }
    } else {
        let ln = Lanes::new(n, *st, *en);
        ln.mask(mask);
        for &safe in passes {
            let bufs = (
                &mut *sc,
                &mut *dp,
                &*mask,
                &mut *qp,
                &mut *dop,
                &mut *lse_u,
                &mut *dlt_u,
            );
            let acc = (&mut *dkt, &mut *dvt);
            backward_key_union::<S, L, T>(vx, g, x, sv, delta, t, &ln, safe, bufs, acc);
            if safe || (lanes_finite(dkt, n) && lanes_finite(dvt, n)) {
                break;
            }
            for v in dkt.iter_mut().chain(dvt.iter_mut()) {
                *v = [0.0; L];
            }
        }
    }
}
