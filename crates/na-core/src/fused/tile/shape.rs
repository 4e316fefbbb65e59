//! The shape of one tile: up to `L` queries (or keys, in backward pass 2) of
//! one dilation group inside a chunk, as the lanes of a vector; which union
//! slots each lane attends ([`Lanes`]), or, on the transposed path, the
//! sliding-window form ([`Slide`]); and the scratch cut into lane buffers.

// Lane loops index several `[f32; L]` arrays with the same `l`: that is the
// SIMD lane, and writing it as an index is what lets them vectorise.
#![allow(clippy::needless_range_loop)]

use crate::Element;

/// Splits `n` floats off the front of `s`.
#[inline(always)]
pub(crate) fn take<'a>(s: &mut &'a mut [f32], n: usize) -> &'a mut [f32] {
    let (a, b) = core::mem::take(s).split_at_mut(n);
    *s = b;
    a
}

/// Splits `n` lane vectors off the front of `s`.
#[inline(always)]
pub(crate) fn take_lanes<'a, const L: usize>(
    s: &mut &'a mut [f32],
    n: usize,
) -> &'a mut [[f32; L]] {
    take(s, n * L).as_chunks_mut::<L>().0
}

/// Per-lane facts of one tile.
pub(crate) struct Lanes<const L: usize> {
    /// Active lanes (the rest are padding).
    pub(crate) n: usize,
    /// First group index of the union.
    pub(crate) lo: usize,
    /// Union length.
    pub(crate) u: usize,
    /// Per lane, the union slots `[first, last)` it attends (or is attended by).
    pub(crate) first: [usize; L],
    pub(crate) last: [usize; L],
}

impl<const L: usize> Lanes<L> {
    /// Builds lane facts from per-lane group-index ranges `[start, end)`.
    #[inline(always)]
    pub(crate) fn new(n: usize, start: [usize; L], end: [usize; L]) -> Self {
        let lo = start[..n].iter().copied().min().unwrap_or(0);
        let hi = end[..n].iter().copied().max().unwrap_or(lo);
        let mut first = [0; L];
        let mut last = [0; L];
        for l in 0..n {
            first[l] = start[l] - lo;
            last[l] = end[l] - lo;
        }
        Lanes {
            n,
            lo,
            u: hi - lo,
            first,
            last,
        }
    }

    /// `1` where a lane attends a union slot, `0` elsewhere (inactive
    /// lanes attend nothing).
    #[inline(always)]
    pub(crate) fn mask(&self, mask: &mut [[f32; L]]) {
        for (j, m) in mask[..self.u].iter_mut().enumerate() {
            for l in 0..L {
                let on = l < self.n && j >= self.first[l] && j < self.last[l];
                m[l] = if on { 1.0 } else { 0.0 };
            }
        }
    }
}

/// The sliding-window shape of one tile on the transposed path: lane `l`'s
/// window (or inverse neighbourhood) is the `cnt[l]` group positions from
/// `st0 + idx[l]`, where either `idx[l] = l` for every lane (an interior
/// run) or `idx[l] = 0` (a border run or a short dilation group: the
/// kernels then broadcast the keys). Tiles are cut so that one of the two
/// holds (see [`slide_run`]).
pub(crate) struct Slide<const L: usize> {
    pub(crate) st0: usize,
    pub(crate) idx: [u32; L],
    pub(crate) cnt: [usize; L],
    /// The longest window: the slots every lane computes.
    pub(crate) kmax: usize,
    /// Every lane's window starts at `st0` (else at `st0 + l`).
    pub(crate) bcast: bool,
    /// Some active lane has fewer than `kmax` slots: mask the rest.
    pub(crate) ragged: bool,
}

/// The lanes of a tile on the transposed path: the longest prefix of the
/// `n` candidate lanes whose window starts `st` are all equal or all
/// consecutive.
#[inline(always)]
pub(crate) fn slide_run<const L: usize>(st: &[usize; L], n: usize) -> usize {
    if n <= 1 {
        return n;
    }
    let step = usize::from(st[1] != st[0]);
    1 + (1..n).take_while(|&l| st[l] == st[0] + step * l).count()
}

impl<const L: usize> Slide<L> {
    /// The shape of a tile of `n` lanes with windows `[st[l], en[l])`, or
    /// `None` unless their starts are all equal or all consecutive.
    #[inline(always)]
    pub(crate) fn new(n: usize, st: &[usize; L], en: &[usize; L]) -> Option<Self> {
        let st0 = st[0];
        let bcast = n > 1 && st[1] == st0;
        let step = usize::from(!bcast);
        let mut idx = [0u32; L];
        let mut cnt = [0usize; L];
        let mut kmax = 0;
        for l in 0..L {
            idx[l] = (l * step) as u32;
            if l < n {
                if st[l] != st0 + l * step {
                    return None;
                }
                cnt[l] = en[l] - st[l];
                kmax = kmax.max(cnt[l]);
            }
        }
        let ragged = (0..n).any(|l| cnt[l] != kmax);
        Some(Slide {
            st0,
            idx,
            cnt,
            kmax,
            bcast,
            ragged,
        })
    }

    /// `1` where an active lane has a slot, `0` past its count (inactive
    /// lanes: `1`; their results are never stored).
    #[inline(always)]
    pub(crate) fn mask(&self, n: usize, mask: &mut [[f32; L]]) {
        for (o, m) in mask[..self.kmax].iter_mut().enumerate() {
            for l in 0..L {
                let on = l >= n || o < self.cnt[l];
                m[l] = if on { 1.0 } else { 0.0 };
            }
        }
    }
}

impl<const L: usize> Slide<L> {
    /// For a query tile whose lane 0 is query `ii0`: the bias index of lane
    /// `l`'s slot 0, `(st0 + idx[l]) - (ii0 + l) + k - 1` (slot `o` adds `o`).
    #[inline(always)]
    pub(crate) fn query_bias_start(&self, l: usize, k: usize, ii0: usize) -> usize {
        self.st0 + self.idx[l] as usize + k - 1 - (ii0 + l)
    }
}

/// Adds one key line's bias row `brow` to the logits `s` of a query tile
/// (`n` active lanes, lane 0 at group index `ii0`): per lane on broadcast
/// runs, one broadcast value per slot on sliding runs (where every lane's
/// slot `o` has the same bias index).
#[inline(always)]
pub(crate) fn add_query_bias<T: Element, const L: usize, const BC: bool>(
    s: &mut [[f32; L]],
    brow: &[T],
    sl: &Slide<L>,
    k: usize,
    ii0: usize,
    n: usize,
) {
    if BC {
        for l in 0..n {
            let b0 = sl.query_bias_start(l, k, ii0);
            for (sj, b) in s[..sl.cnt[l]].iter_mut().zip(&brow[b0..]) {
                sj[l] += b.to_f32();
            }
        }
    } else {
        for (sj, b) in s.iter_mut().zip(&brow[sl.query_bias_start(0, k, ii0)..]) {
            let b = b.to_f32();
            for v in sj.iter_mut() {
                *v += b;
            }
        }
    }
}

/// Adds one query line's bias row `brow` to the logits `s` of a key tile of
/// backward pass 2 (`n` active lanes, lane 0 at key group index `jj0`; lane
/// `l`'s slot `o` is query `st0 + idx[l] + o`, whose bias index for key
/// `jj0 + l` is `jj0 + l + k - 1 - st0 - idx[l] - o`): per lane on
/// broadcast runs, one broadcast value per slot on sliding runs.
#[inline(always)]
pub(crate) fn add_key_bias<T: Element, const L: usize, const BC: bool>(
    s: &mut [[f32; L]],
    brow: &[T],
    sl: &Slide<L>,
    k: usize,
    jj0: usize,
    n: usize,
) {
    let b0 = |l: usize| jj0 + l + k - 1 - sl.st0 - sl.idx[l] as usize;
    if BC {
        for l in 0..n {
            let b0 = b0(l);
            for (o, sj) in s[..sl.cnt[l]].iter_mut().enumerate() {
                sj[l] += brow[b0 - o].to_f32();
            }
        }
    } else {
        let b0 = b0(0);
        for (o, sj) in s.iter_mut().enumerate() {
            let b = brow[b0 - o].to_f32();
            for v in sj.iter_mut() {
                *v += b;
            }
        }
    }
}

/// A bias table seen without its storage type, so that the multi-row tile
/// kernels (the largest inlined bodies) are compiled once per ISA and lane
/// count instead of once per storage type too: one dynamic call per key
/// line and row adds that line's biases ([`add_query_bias`]).
pub(crate) trait BiasRows<const L: usize> {
    /// [`add_query_bias`] with the bias row `(h, r0, r1)` of this table.
    #[allow(clippy::too_many_arguments)]
    fn add_row(
        &self,
        g: &crate::fused::geo::Geo,
        row: (usize, usize, usize),
        s: &mut [[f32; L]],
        sl: &Slide<L>,
        k: usize,
        ii0: usize,
        n: usize,
        bc: bool,
    );

    /// [`add_key_bias`] with the bias row `(h, r0, r1)` of this table.
    #[allow(clippy::too_many_arguments)]
    fn add_key_row(
        &self,
        g: &crate::fused::geo::Geo,
        row: (usize, usize, usize),
        s: &mut [[f32; L]],
        sl: &Slide<L>,
        k: usize,
        jj0: usize,
        n: usize,
        bc: bool,
    );
}

/// A bias table of storage type `T` (`[heads, 2k-1, ...]`).
pub(crate) struct BiasTable<'a, T>(pub(crate) &'a [T]);

impl<T: Element, const L: usize> BiasRows<L> for BiasTable<'_, T> {
    fn add_row(
        &self,
        g: &crate::fused::geo::Geo,
        (h, r0, r1): (usize, usize, usize),
        s: &mut [[f32; L]],
        sl: &Slide<L>,
        k: usize,
        ii0: usize,
        n: usize,
        bc: bool,
    ) {
        let brow = g.bias_row(self.0, h, r0, r1);
        if bc {
            add_query_bias::<T, L, true>(s, brow, sl, k, ii0, n);
        } else {
            add_query_bias::<T, L, false>(s, brow, sl, k, ii0, n);
        }
    }

    fn add_key_row(
        &self,
        g: &crate::fused::geo::Geo,
        (h, r0, r1): (usize, usize, usize),
        s: &mut [[f32; L]],
        sl: &Slide<L>,
        k: usize,
        jj0: usize,
        n: usize,
        bc: bool,
    ) {
        let brow = g.bias_row(self.0, h, r0, r1);
        if bc {
            add_key_bias::<T, L, true>(s, brow, sl, k, jj0, n);
        } else {
            add_key_bias::<T, L, false>(s, brow, sl, k, jj0, n);
        }
    }
}

/// `v[l] = x[l]`, or `x[0]` in every lane when `BC`.
#[inline(always)]
pub(crate) fn lanes_of<const L: usize, const BC: bool>(x: &[f32]) -> [f32; L] {
    let x = &x[..L];
    let mut v = [0.0f32; L];
    for l in 0..L {
        v[l] = if BC { x[0] } else { x[l] };
    }
    v
}
