//! The forward tile loop: output and log-sum-exp for one chunk, on the
//! sliding-window path (stride 1 on the last axis, transposed keys and
//! values) or the general path (packed unions of windows, masked).

// Lane loops index several `[f32; L]` arrays with the same `l`: that is the
// SIMD lane, and writing it as an index is what lets them vectorise.
#![allow(clippy::needless_range_loop)]

use super::io::{load_tile, rows_of, store_tile};
use super::rows::{axpy_rows, dot_rows, rows_of_line};
use super::shape::{
    add_query_bias, slide_run, take, take_lanes, BiasRows, BiasTable, Lanes, Slide,
};
use crate::fused::geo::{group_range, line_of, Chunk, Geo, FWD_ROWS};
use crate::fused::mask::{lanes_finite, mask_logits};
use crate::fused::micro::{
    diag_axpy, diag_axpy_masked, diag_dot, lanes_times_rows, lanes_times_rows_masked,
    rows_dot_lanes, rows_per_tile, wide,
};
use crate::fused::simd::{Simd, WithSimd};
use crate::fused::softmax::softmax_step;
use crate::tensors::Inputs;
use crate::Element;

/// What one tile of the forward pass works on.
pub(crate) struct FwdTile<'a, const L: usize> {
    /// Chunk, query row (position on axis 1), head, dilation group of the
    /// last axis, group index of lane 0, active lanes.
    pub(crate) ch: Chunk,
    pub(crate) x1: usize,
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
    let (w0, w1) = (g.axes[0].window(t.ch.x0), g.axes[1].window(t.x1));
    let (lg, km) = (g.glen(t.grp), sl.kmax);
    if sl.ragged {
        sl.mask(t.n, mask);
    }
    let mask = &mask[..km];
    let nl = w0.count * w1.count;
    let lb = (g.slots / km).max(1);
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
                let r1 = g.axes[1].rpb_index_unchecked(t.x1, t1);
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
    let (w0, w1) = (g.axes[0].window(t.ch.x0), g.axes[1].window(t.x1));
    let (sc, mask) = (&mut sc[..u], &mask[..u]);
    for t0 in w0.iter() {
        let r0 = g.axes[0].rpb_index_unchecked(t.ch.x0, t0);
        for t1 in w1.iter() {
            let r1 = g.axes[1].rpb_index_unchecked(t.x1, t1);
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

/// The forward pass of a multi-row tile on the transposed path: the rows
/// `t[r]` (consecutive rows of one axis-1 dilation group, same columns, so
/// one [`Slide`]) whose windows fit one online-softmax step together
/// (`sum nl_r * kmax <= g.slots`, so each row is one step as in [`forward_slide`]). Every key (value) line of the union of
/// their windows is read once for all rows that see it ([`diag_dot_rows`],
/// [`diag_axpy_rows`]); per row, the arithmetic is that of
/// [`forward_slide`] with `safe = false`, in the same order. The caller
/// redoes a row whose ragged tile came out non-finite.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_slide_rows<S: Simd, const L: usize, const BC: bool, const R: usize>(
    vx: S,
    g: &Geo,
    bias: Option<&dyn BiasRows<L>>,
    (kt, vt): (&[f32], &[f32]),
    t: [&FwdTile<'_, L>; R],
    sl: &Slide<L>,
    (sc, mask): (&mut [[f32; L]], &mut [[f32; L]]),
    m: &mut [[f32; L]; R],
    lsum: &mut [[f32; L]; R],
    mut ot: [&mut [[f32; L]]; R],
) {
    let (dk, dv, k2) = (g.dk, g.dv, g.axes[2].kernel());
    let (t00, d1) = (t[0], g.axes[1].dilation());
    let (h, grp, x0) = (t00.h, t00.grp, t00.ch.x0);
    let w0 = g.axes[0].window(x0);
    let w1 = t.map(|tr| g.axes[1].window(tr.x1));
    let (lg, km) = (g.glen(grp), sl.kmax);
    if sl.ragged {
        sl.mask(t00.n, mask);
    }
    let mask = &mask[..km];
    // Row r's logits: sc[base[r]..], one block of km slots per line of its
    // window, lines in the order of `line_of`.
    let mut base = [0usize; R];
    for r in 1..R {
        base[r] = base[r - 1] + w0.count * w1[r - 1].count * km;
    }
    // The union of the rows' windows on axis 1 (starts and ends grow with
    // the row), in steps of the dilation.
    let (u_lo, u_hi) = (w1[0].start, w1[R - 1].start + w1[R - 1].count * d1);
    for (i0, t0) in w0.iter().enumerate() {
        let mut t1 = u_lo;
        while t1 < u_hi {
            let ko = g.t_offset(dk, t0, t1, h, grp) + sl.st0;
            let (ra, rb, off) = rows_of_line(&w1, d1, t1, i0, &base, km);
            let q = t.map(|tr| tr.qt);
            dot_rows::<S, L, BC, R>(vx, &kt[ko..], lg, dk, km, &q, ra, rb, sc, &off);
            if let Some(b) = bias {
                let r0 = g.axes[0].rpb_index_unchecked(x0, t0);
                for r in ra..rb {
                    let r1 = g.axes[1].rpb_index_unchecked(t[r].x1, t1);
                    let s = &mut sc[off[r]..][..km];
                    b.add_row(g, (h, r0, r1), s, sl, k2, t00.ii0, t00.n, BC);
                }
            }
            if sl.ragged {
                for r in ra..rb {
                    mask_logits(&mut sc[off[r]..][..km], mask);
                }
            }
            t1 += d1;
        }
    }
    for r in 0..R {
        let n = w0.count * w1[r].count * km;
        softmax_step::<S::A, L>(&mut sc[base[r]..][..n], &mut m[r], &mut lsum[r], ot[r]);
    }
    for (i0, t0) in w0.iter().enumerate() {
        let mut t1 = u_lo;
        while t1 < u_hi {
            let vo = g.t_offset(dv, t0, t1, h, grp) + sl.st0;
            let (ra, rb, off) = rows_of_line(&w1, d1, t1, i0, &base, km);
            axpy_rows::<S, L, BC, R>(vx, sc, &off, km, &vt[vo..], lg, &mut ot, ra, rb);
            t1 += d1;
        }
    }
}

/// Forward for one chunk ([`Geo::fchunk`]): `out` (`(rows * cols, heads,
/// dv)`) and `lse` (`(rows * cols, heads)`).
///
/// Query tiles are `L` positions of the last axis; on the transposed path,
/// up to [`rows_per_tile`] rows of one axis-1 dilation group go through
/// [`forward_slide_rows`] together when their windows fit one softmax step.
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
    let ch = g.fchunk(ci);
    let (dk, dv, hn) = (g.dk, g.dv, g.heads);
    let ax = g.axes[2];
    let (d2, k2, d1) = (ax.dilation(), ax.kernel(), g.axes[1].dilation());
    let umax = L + k2 + ax.stride();
    let rmax = rows_per_tile::<S>().min(FWD_ROWS);
    // The chunk was cut for this ISA's tile rows (`Isa::tile_rows`).
    debug_assert!(g.segs > 1 || g.frows == (rmax * d1).min(g.ext[1]));
    let mut s = scratch;
    let mut qts: [&mut [[f32; L]]; FWD_ROWS] = Default::default();
    let mut ots: [&mut [[f32; L]]; FWD_ROWS] = Default::default();
    for r in 0..FWD_ROWS {
        qts[r] = take_lanes::<L>(&mut s, dk); // (dk, L): scaled queries, transposed
        ots[r] = take_lanes::<L>(&mut s, dv); // (dv, L): output accumulator
    }
    let sc = take_lanes::<L>(&mut s, umax.max(g.slots)); // logits, then probabilities
    let mask = take_lanes::<L>(&mut s, umax); // (U, L): window mask
    let kp = take(&mut s, umax * dk); // (U, dk): packed keys of one line
    let vp = take(&mut s, umax * dv); // (U, dv): packed values of one line
    let nl0 = g.axes[0].window(ch.x0).count;
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
                    // The chunk's rows of axis-1 dilation group `g1`, in runs
                    // of up to `rmax` rows.
                    let mut x1 = ch.x1 + g1;
                    while x1 < ch.x1 + ch.rows {
                        let mut run = 0;
                        while run < rmax && x1 + run * d1 < ch.x1 + ch.rows {
                            run += 1;
                        }
                        let (mut m, mut lsum) =
                            ([[f32::MIN; L]; FWD_ROWS], [[0.0f32; L]; FWD_ROWS]);
                        for r in 0..run {
                            let x1r = x1 + r * d1;
                            let mut rows = [0; L];
                            for l in 0..n {
                                rows[l] = g.row(ch.b, ch.x0, x1r, x2[l], h);
                            }
                            load_tile::<S, T, L>(vx, qts[r], x.query, &rows[..n], dk, g.scale, kp);
                            reset_fwd((&mut m[r], &mut lsum[r], &mut *ots[r]));
                        }
                        let fits = slide.as_ref().is_some_and(|sl| {
                            let lines: usize = (0..run)
                                .map(|r| nl0 * g.axes[1].window(x1 + r * d1).count)
                                .sum();
                            // Multi-row tiles of exactly `rmax` rows: one row count
                            // per ISA is compiled; shorter runs go row by row.
                            run == rmax && run > 1 && lines * sl.kmax <= g.slots
                        });
                        let mut redo = [!fits; FWD_ROWS];
                        if let (true, Some(kv), Some(sl)) = (fits, kvt, slide.as_ref()) {
                            // Compiled once per ISA, not per storage type.
                            let table = x.rpb.map(BiasTable);
                            vx.vectorize(FwdRows {
                                g,
                                bias: table.as_ref().map(|b| b as &dyn BiasRows<L>),
                                kv,
                                ch,
                                h,
                                grp,
                                ii0,
                                n,
                                x1,
                                run,
                                sl,
                                qts: &qts,
                                ots: &mut ots,
                                bufs: (&mut *sc, &mut *mask),
                                m: &mut m,
                                lsum: &mut lsum,
                            });
                            for r in 0..run {
                                if sl.ragged && !lanes_finite(ots[r], n) {
                                    redo[r] = true;
                                    reset_fwd((&mut m[r], &mut lsum[r], &mut *ots[r]));
                                }
                            }
                        }
                        for r in (0..run).filter(|&r| redo[r]) {
                            let t = FwdTile {
                                ch,
                                x1: x1 + r * d1,
                                h,
                                grp,
                                ii0,
                                n,
                                qt: &*qts[r],
                            };
                            let acc = (&mut m[r], &mut lsum[r], &mut *ots[r]);
                            // A multi-row tile redone here is ragged and non-finite: safe at once.
                            let first_safe = fits;
                            one_row::<S, L, T>(
                                vx,
                                g,
                                x,
                                kvt,
                                &t,
                                &st,
                                &en,
                                slide.as_ref(),
                                first_safe,
                                (&mut *sc, &mut *mask, &mut *kp, &mut *vp),
                                acc,
                            );
                        }
                        for r in 0..run {
                            let x1r = x1 + r * d1;
                            let (mut orow, mut inv) = ([0; L], [0.0f32; L]);
                            for l in 0..n {
                                orow[l] = ch.pos(x1r, x2[l]) * hn + h;
                                inv[l] = 1.0 / lsum[r][l];
                                if let Some(ls) = lse.as_deref_mut() {
                                    ls[orow[l]] = m[r][l] + libm::logf(lsum[r][l]);
                                }
                            }
                            store_tile::<S, T, L>(vx, out, &orow[..n], dv, ots[r], Some(&inv), vp);
                        }
                        x1 += run * d1;
                    }
                }
                ii0 += n;
            }
        }
    }
}

/// The arguments of [`multi_row`], run through [`Simd::vectorize`].
struct FwdRows<'a, 'b, const L: usize> {
    g: &'a Geo,
    bias: Option<&'a dyn BiasRows<L>>,
    kv: (&'a [f32], &'a [f32]),
    ch: Chunk,
    h: usize,
    grp: usize,
    ii0: usize,
    n: usize,
    x1: usize,
    run: usize,
    sl: &'a Slide<L>,
    qts: &'a [&'b mut [[f32; L]]; FWD_ROWS],
    ots: &'a mut [&'b mut [[f32; L]]; FWD_ROWS],
    bufs: (&'a mut [[f32; L]], &'a mut [[f32; L]]),
    m: &'a mut [[f32; L]; FWD_ROWS],
    lsum: &'a mut [[f32; L]; FWD_ROWS],
}

impl<const L: usize> WithSimd for FwdRows<'_, '_, L> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, vx: S) {
        let f = self;
        multi_row::<S, L>(
            vx, f.g, f.bias, f.kv, f.ch, f.h, f.grp, f.ii0, f.n, f.x1, f.run, f.sl, f.qts, f.ots,
            f.bufs, f.m, f.lsum,
        );
    }
}

/// [`forward_slide_rows`] for `run` (2 or 3) rows from `x1`, `d1` apart.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn multi_row<S: Simd, const L: usize>(
    vx: S,
    g: &Geo,
    bias: Option<&dyn BiasRows<L>>,
    kv: (&[f32], &[f32]),
    ch: Chunk,
    h: usize,
    grp: usize,
    ii0: usize,
    n: usize,
    x1: usize,
    run: usize,
    sl: &Slide<L>,
    qts: &[&mut [[f32; L]]; FWD_ROWS],
    ots: &mut [&mut [[f32; L]]; FWD_ROWS],
    bufs: (&mut [[f32; L]], &mut [[f32; L]]),
    m: &mut [[f32; L]; FWD_ROWS],
    lsum: &mut [[f32; L]; FWD_ROWS],
) {
    let d1 = g.axes[1].dilation();
    let tile = |r: usize| FwdTile {
        ch,
        x1: x1 + r * d1,
        h,
        grp,
        ii0,
        n,
        qt: &*qts[r],
    };
    let [o0, o1, o2] = ots;
    let [m0, m1, m2] = m;
    let [l0, l1, l2] = lsum;
    debug_assert_eq!(run, rows_per_tile::<S>());
    // One row count per ISA (`rows_per_tile`), chosen at compile time: the
    // other branch is not instantiated.
    if const { !wide::<S>() } {
        let (t0, t1) = (tile(0), tile(1));
        let (mut mm, mut ll) = ([*m0, *m1], [*l0, *l1]);
        let o = [&mut **o0, &mut **o1];
        slide_rows::<S, L, 2>(vx, g, bias, kv, [&t0, &t1], sl, bufs, &mut mm, &mut ll, o);
        [*m0, *m1] = mm;
        [*l0, *l1] = ll;
    } else {
        let (t0, t1, t2) = (tile(0), tile(1), tile(2));
        let (mut mm, mut ll) = ([*m0, *m1, *m2], [*l0, *l1, *l2]);
        let o = [&mut **o0, &mut **o1, &mut **o2];
        let t = [&t0, &t1, &t2];
        slide_rows::<S, L, 3>(vx, g, bias, kv, t, sl, bufs, &mut mm, &mut ll, o);
        [*m0, *m1, *m2] = mm;
        [*l0, *l1, *l2] = ll;
    }
}

/// [`forward_slide_rows`] with the slide's broadcast flag made a constant.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn slide_rows<S: Simd, const L: usize, const R: usize>(
    vx: S,
    g: &Geo,
    bias: Option<&dyn BiasRows<L>>,
    kv: (&[f32], &[f32]),
    t: [&FwdTile<'_, L>; R],
    sl: &Slide<L>,
    bufs: (&mut [[f32; L]], &mut [[f32; L]]),
    m: &mut [[f32; L]; R],
    lsum: &mut [[f32; L]; R],
    o: [&mut [[f32; L]]; R],
) {
    if sl.bcast {
        forward_slide_rows::<S, L, true, R>(vx, g, bias, kv, t, sl, bufs, m, lsum, o);
    } else {
        forward_slide_rows::<S, L, false, R>(vx, g, bias, kv, t, sl, bufs, m, lsum, o);
    }
}

/// The buffers of [`one_row`]: logits, mask, packed keys and values.
type RowBufs<'a, const L: usize> = (
    &'a mut [[f32; L]],
    &'a mut [[f32; L]],
    &'a mut [f32],
    &'a mut [f32],
);

/// One row's tile on its own: the sliding-window path when `slide` is
/// given, else the general path; a tile whose fast pass comes out
/// non-finite where masked slots could be the cause is redone safely (see
/// "Masking" in `mask.rs`). `safe_first` skips the fast pass.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn one_row<S: Simd, const L: usize, T: Element>(
    vx: S,
    g: &Geo,
    x: &Inputs<'_, T>,
    kvt: Option<(&[f32], &[f32])>,
    t: &FwdTile<'_, L>,
    st: &[usize; L],
    en: &[usize; L],
    slide: Option<&Slide<L>>,
    safe_first: bool,
    (sc, mask, kp, vp): RowBufs<'_, L>,
    (m, lsum, ot): FwdAcc<'_, L>,
) {
    let n = t.n;
    let passes: &[bool] = if safe_first { &[true] } else { &[false, true] };
    if let (Some(kv), Some(sl)) = (kvt, slide) {
        for &safe in passes {
            let bufs = (&mut *sc, &mut *mask);
            let acc = (&mut *m, &mut *lsum, &mut *ot);
            if !sl.bcast {
                forward_slide::<S, L, T, false>(vx, g, x, kv, t, sl, safe, bufs, acc);
            } else {
                forward_slide::<S, L, T, true>(vx, g, x, kv, t, sl, safe, bufs, acc);
            }
            if safe || !sl.ragged || lanes_finite(ot, n) {
                break;
            }
            reset_fwd((&mut *m, &mut *lsum, &mut *ot));
        }
    } else {
        let ln = Lanes::new(n, *st, *en);
        ln.mask(mask);
        for &safe in passes {
            let bufs = (&mut *sc, &*mask, &mut *kp, &mut *vp);
            let acc = (&mut *m, &mut *lsum, &mut *ot);
            forward_union::<S, L, T>(vx, g, x, t, &ln, safe, bufs, acc);
            if safe || lanes_finite(ot, n) {
                break;
            }
            reset_fwd((&mut *m, &mut *lsum, &mut *ot));
        }
    }
}
