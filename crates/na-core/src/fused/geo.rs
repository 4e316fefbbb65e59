//! Tile geometry, resolved once per call: the problem padded to three
//! spatial axes ([`Geo`]), the fixed work chunks threads take ([`Chunk`]),
//! dilation groups of the last axis, and the scratch lengths of the tile
//! loops.
//!
//! A *chunk* is a run of positions `[a, a + len)` on the last axis of one
//! line `(b, x0, x1)` (1D and 2D problems are padded in front to 3D with unit
//! axes); a *line* is one combination of leading-axis coordinates.

use super::micro::DIAG_PAD;
use crate::problem::MAX_AXES;
use crate::window::{Axis, Window};
use crate::Problem;

/// The widest lane count of any ISA (AVX-512): the zero padding of transposed
/// buffers is sized by it, so one buffer serves every ISA.
pub(crate) const LMAX: usize = 16;

/// Zero padding after transposed keys and values: the sliding-window
/// kernels read up to `DIAG_PAD + LMAX` slots past a group's last position.
pub(crate) const T_PAD: usize = DIAG_PAD + LMAX;

/// Positions per chunk along the last axis, per unit of dilation, when
/// lines must be cut for threads (fewer than [`WHOLE_ROW_LINES`] lines).
pub(crate) const SEG: usize = 64;

/// From this many lines (`ext[0] * ext[1]`) per batch element on, chunks
/// hold whole rows of the last axis: there are rows enough to share out
/// among threads, and whole rows let tiles of several rows share their
/// loads (a 128-wide map cut into 64-position segments ran one-row tiles
/// only).
pub(crate) const WHOLE_ROW_LINES: usize = 16;

/// Problem geometry resolved once per call.
pub(crate) struct Geo {
    pub(crate) axes: [Axis; MAX_AXES],
    pub(crate) ext: [usize; MAX_AXES],
    pub(crate) rext: [usize; MAX_AXES],
    /// Bias entries per head.
    pub(crate) rph: usize,
    pub(crate) tokens: usize,
    pub(crate) heads: usize,
    pub(crate) dk: usize,
    pub(crate) dv: usize,
    pub(crate) scale: f32,
    /// Chunk length on the last axis, and chunks per line.
    pub(crate) seg: usize,
    pub(crate) segs: usize,
    /// Number of lines: `batch * ext[0] * ext[1]`.
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    pub(crate) lines: usize,
    /// Rows (positions of axis 1) per forward chunk, and forward chunks
    /// along axis 1 (see [`Geo::fchunk`]).
    pub(crate) frows: usize,
    pub(crate) fblocks: usize,
    /// Rows per chunk of backward pass 2 (key chunks), and those chunks
    /// along axis 1 (see [`Geo::chunk`]).
    pub(crate) krows: usize,
    pub(crate) kblocks: usize,
    /// Logit slots per lane a forward tile gathers before one online-softmax
    /// step (see [`logit_slots`]).
    pub(crate) slots: usize,
}

/// One chunk: positions `[a, a + cols)` of the last axis of the `rows`
/// lines `(b, x0, x1 .. x1 + rows)`, stored contiguously (several rows only
/// when a chunk holds whole rows of the last axis).
#[derive(Clone, Copy)]
pub(crate) struct Chunk {
    pub(crate) b: usize,
    pub(crate) x0: usize,
    /// First row (position on axis 1).
    pub(crate) x1: usize,
    pub(crate) rows: usize,
    pub(crate) a: usize,
    pub(crate) cols: usize,
    /// Positions: `rows * cols`.
    pub(crate) len: usize,
}

impl Chunk {
    /// Index of position `(x1, x2)` of this chunk among its positions.
    #[inline(always)]
    pub(crate) fn pos(&self, x1: usize, x2: usize) -> usize {
        (x1 - self.x1) * self.cols + x2 - self.a
    }
}

/// Key rows of one multi-row tile of backward pass 2, on every ISA (its
/// tiles hold four lane buffers per row: 3 rows would not fit the 32 KiB
/// workspace at 16 lanes).
pub(crate) const KEY_ROWS: usize = 2;

/// The most query rows any ISA puts in one multi-row tile (3 on AVX-512, 2
/// elsewhere: [`crate::fused::Isa::tile_rows`]).
pub(crate) const FWD_ROWS: usize = 3;

impl Geo {
    /// The geometry of `p` for an ISA whose multi-row tiles hold
    /// `tile_rows` query rows ([`crate::fused::Isa::tile_rows`]): a forward
    /// chunk then holds exactly one multi-row tile per axis-1 dilation group
    /// (with chunks of 3 rows, AVX2's 2-row tiles left a third of the rows
    /// to one-row tiles).
    pub(crate) fn new(p: &Problem, tile_rows: usize) -> Self {
        let axes = *p.axes3();
        let ext = axes.map(|a| a.len());
        let seg = if ext[0] * ext[1] >= WHOLE_ROW_LINES {
            ext[2]
        } else {
            (SEG * axes[2].dilation()).min(ext[2])
        };
        let segs = ext[2].div_ceil(seg);
        let rows = |r: usize| {
            if segs == 1 {
                (r * axes[1].dilation()).min(ext[1])
            } else {
                1
            }
        };
        let (frows, krows) = (rows(tile_rows.clamp(1, FWD_ROWS)), rows(KEY_ROWS));
        Geo {
            axes,
            ext,
            rext: axes.map(|a| a.rpb_len()),
            rph: p.rpb_per_head(),
            tokens: p.tokens(),
            heads: p.heads(),
            dk: p.head_dim(),
            dv: p.head_dim_v(),
            scale: p.scale(),
            seg,
            segs,
            lines: p.batch() * ext[0] * ext[1],
            frows,
            fblocks: ext[1].div_ceil(frows),
            krows,
            kblocks: ext[1].div_ceil(krows),
            slots: logit_slots(p),
        }
    }

    /// Key chunks (backward pass 2) of the whole problem.
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    pub(crate) fn chunks(&self) -> usize {
        self.lines / self.lines_per_batch() * self.chunks_per_batch()
    }

    /// Chunks of backward pass 2: positions `[a, a + cols)` of the last axis
    /// of one line, or, when a chunk holds whole rows of the last axis,
    /// [`Geo::krows`] rows ([`KEY_ROWS`] per axis-1 dilation group), so that
    /// key tiles of two rows can share their query loads.
    pub(crate) fn chunk(&self, ci: usize) -> Chunk {
        self.block_chunk(ci, self.krows, self.kblocks)
    }

    /// Chunks of the forward pass and backward pass 1: like [`Geo::chunk`],
    /// with [`Geo::frows`] rows (one multi-row tile per axis-1 dilation
    /// group), so that tiles of several query rows share their key and value
    /// loads.
    pub(crate) fn fchunk(&self, ci: usize) -> Chunk {
        self.block_chunk(ci, self.frows, self.fblocks)
    }

    /// Chunk `ci` of blocks of `rows` rows (`blocks` per `(b, x0)`).
    fn block_chunk(&self, ci: usize, rows: usize, blocks: usize) -> Chunk {
        let (blk, s) = (ci / self.segs, ci % self.segs);
        let a = s * self.seg;
        let cols = self.seg.min(self.ext[2] - a);
        let x1 = (blk % blocks) * rows;
        let rows = rows.min(self.ext[1] - x1);
        Chunk {
            b: blk / (self.ext[0] * blocks),
            x0: (blk / blocks) % self.ext[0],
            x1,
            rows,
            a,
            cols,
            len: rows * cols,
        }
    }

    /// Forward chunks of the whole problem.
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    pub(crate) fn fchunks(&self) -> usize {
        self.lines / self.lines_per_batch() * self.fchunks_per_batch()
    }

    /// Forward chunks of one batch element.
    pub(crate) fn fchunks_per_batch(&self) -> usize {
        self.ext[0] * self.fblocks * self.segs
    }

    /// Whether forward tiles may take the sliding-window path (stride 1 on
    /// the last axis), which reads keys and values transposed per batch
    /// element (see [`transpose_kv_line`]).
    pub(crate) fn transposed(&self) -> bool {
        self.axes[2].stride() == 1
    }

    /// Spatial lines (`ext[0] * ext[1]`) of one batch element.
    pub(crate) fn lines_per_batch(&self) -> usize {
        self.ext[0] * self.ext[1]
    }

    /// Key chunks (backward pass 2) of one batch element.
    pub(crate) fn chunks_per_batch(&self) -> usize {
        self.ext[0] * self.kblocks * self.segs
    }

    /// Floats of the transposed keys of one batch element (values: `dv`
    /// instead of `dk`), plus [`T_PAD`] of zero padding that lanes past the
    /// end of a tile may read.
    pub(crate) fn kt_len(&self, width: usize) -> usize {
        self.tokens * self.heads * width + T_PAD
    }

    /// Floats of one line's transposed block (all heads) of row width `width`.
    pub(crate) fn line_len(&self, width: usize) -> usize {
        self.heads * width * self.ext[2]
    }

    /// Query/key head dim.
    pub(crate) fn dk(&self) -> usize {
        self.dk
    }

    /// Value head dim.
    pub(crate) fn dv(&self) -> usize {
        self.dv
    }

    /// First position of dilation group `grp` in the group-major order of the last axis.
    #[inline(always)]
    pub(crate) fn gstart(&self, grp: usize) -> usize {
        let (e, d) = (self.ext[2], self.axes[2].dilation());
        grp * (e / d) + grp.min(e % d)
    }

    /// Length of dilation group `grp` of the last axis.
    #[inline(always)]
    pub(crate) fn glen(&self, grp: usize) -> usize {
        let (e, d) = (self.ext[2], self.axes[2].dilation());
        e / d + usize::from(grp < e % d)
    }

    /// Offset in a transposed buffer (of row width `width`) of channel 0,
    /// group index 0 of group `grp`, head `h`, line `(t0, t1)`: channels are
    /// `glen(grp)` apart, group indices adjacent.
    #[inline(always)]
    pub(crate) fn t_offset(
        &self,
        width: usize,
        t0: usize,
        t1: usize,
        h: usize,
        grp: usize,
    ) -> usize {
        ((t0 * self.ext[1] + t1) * self.heads + h) * width * self.ext[2] + width * self.gstart(grp)
    }

    /// Row (index into `lse`; times the head dim into q/k/v) of head `h` at
    /// position `(t0, t1, t2)` of batch `b`.
    #[inline(always)]
    pub(crate) fn row(&self, b: usize, t0: usize, t1: usize, t2: usize, h: usize) -> usize {
        (b * self.tokens + (t0 * self.ext[1] + t1) * self.ext[2] + t2) * self.heads + h
    }

    /// The bias entries of head `h` for leading offsets `(r0, r1)`: one
    /// entry per last-axis offset.
    #[inline(always)]
    pub(crate) fn bias_row<'a, T>(&self, rpb: &'a [T], h: usize, r0: usize, r1: usize) -> &'a [T] {
        &rpb[h * self.rph + (r0 * self.rext[1] + r1) * self.rext[2]..][..self.rext[2]]
    }
}

/// Largest union of a tile's windows (forward, pass 1): `L + k + s`.
pub(crate) fn union_fwd(p: &Problem, l: usize) -> usize {
    let a = p.axes3()[2];
    l + a.kernel() + a.stride()
}

/// Largest union of a key tile's inverse neighbourhoods (pass 2): `L + 2k`.
pub(crate) fn union_inv(p: &Problem, l: usize) -> usize {
    l + 2 * p.axes3()[2].kernel()
}

/// Probability (and `d_logit`) slots per lane of backward pass 2 at `l`
/// lanes and kernel `k` on the last axis: one union of a key tile's inverse
/// neighbourhoods ([`union_inv`], `l + 2k`) or, on the
/// sliding-window path, one query line's slots for each of [`KEY_ROWS`]
/// rows (a lane's inverse neighbourhood on the last axis has at most
/// `2k + 1` queries at stride 1).
pub(crate) fn key_slots(l: usize, k: usize) -> usize {
    (l + 2 * k).max(KEY_ROWS * (2 * k + 1))
}

/// Logit slots per lane of a forward tile on the sliding-window path: the
/// whole windows of a multi-row tile (at most [`FWD_ROWS`] rows of at most
/// `k0 * k1` key lines of at most `k2` slots) when they fit [`SC_SLOTS`],
/// else `SC_SLOTS` (the tile then takes several online-softmax steps). A
/// tile's steps are the same either way: below the cap every window is one
/// step. 147 slots for a 7x7 kernel, 75 for 5x5.
pub(crate) fn logit_slots(p: &Problem) -> usize {
    let window: usize = p.axes3().iter().map(|a| a.kernel()).product();
    (FWD_ROWS * window).min(SC_SLOTS)
}

/// Floats of one forward chunk's tile workspace at `l` lanes: per row of a
/// multi-row tile ([`FWD_ROWS`]) transposed queries and an output
/// accumulator, then logits (the general path's union of windows, or
/// [`logit_slots`]), mask, and one line of packed keys and values.
pub(crate) fn fwd_work_len(p: &Problem, l: usize) -> usize {
    let (dk, dv, u) = (p.head_dim(), p.head_dim_v(), union_fwd(p, l));
    FWD_ROWS * (dk + dv) * l + (u.max(logit_slots(p)) + u) * l + u * (dk + dv)
}

pub(crate) fn bwd_work_len(p: &Problem, l: usize) -> usize {
    let (dk, dv) = (p.head_dim(), p.head_dim_v());
    let u1 = union_fwd(p, l);
    // Per row of a multi-row tile: queries, d_out and the d_query
    // accumulator; probabilities and d_logit of one union of windows (one
    // row) or of one key line of every row (`FWD_ROWS * k` slots); one mask
    // and one line of packed keys and values.
    let slots = u1.max(FWD_ROWS * p.axes3()[2].kernel());
    let pass1 = FWD_ROWS * (2 * dk + dv) * l + 2 * slots * l + u1 * l + u1 * (dk + dv);
    let u2 = union_inv(p, l);
    // Per key row of a multi-row tile: keys, values and both accumulators;
    // probabilities and d_logit of one union (one row) or of one query line
    // of every row; one mask, one line of packed queries and d_out, and
    // their lse and delta.
    let slots2 = key_slots(l, p.axes3()[2].kernel());
    let pass2 = KEY_ROWS * 2 * (dk + dv) * l + 2 * slots2 * l + u2 * l + u2 * (dk + dv) + 2 * u2;
    pass1.max(pass2)
}

/// Group indices `ii` with `g + d * ii` in `[a, e)`.
#[inline(always)]
pub(crate) fn group_range(a: usize, e: usize, g: usize, d: usize) -> (usize, usize) {
    (
        a.saturating_sub(g).div_ceil(d),
        e.saturating_sub(g).div_ceil(d),
    )
}

/// The most logit slots a forward tile gathers before one online-softmax
/// step: whole windows of small kernels (7x7, 13x13, 3x7x7) in one step.
pub(crate) const SC_SLOTS: usize = 512;

/// The queries attending key `t` on axis `ax`, as one window (they form an
/// interval of the key's dilation group, so the candidates are scanned from
/// both ends: about half the window computations of a full scan).
#[inline(always)]
pub(crate) fn inverse_window(ax: &Axis, t: usize) -> Window {
    let c = ax.inverse_candidates(t);
    let at = |j: usize| c.start + j * c.step;
    match (0..c.count).find(|&j| ax.attends(at(j), t)) {
        Some(a) => {
            let b = (a..c.count)
                .rev()
                .find(|&j| ax.attends(at(j), t))
                .unwrap_or(a);
            Window {
                start: at(a),
                count: b - a + 1,
                step: ax.dilation(),
            }
        }
        None => Window {
            start: t,
            count: 0,
            step: ax.dilation(),
        },
    }
}

/// The leading-axis key line `li` of windows `w0 x w1` (row-major).
#[inline(always)]
pub(crate) fn line_of(w0: &Window, w1: &Window, li: usize) -> (usize, usize) {
    (
        w0.start + (li / w1.count) * w0.step,
        w1.start + (li % w1.count) * w1.step,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Params;

    #[test]
    fn inverse_window_is_the_inverse_neighbourhood() {
        for len in [1, 2, 5, 7, 13, 20] {
            for k in (1..=len).step_by(2) {
                for d in 1..=3 {
                    for s in 1..=3 {
                        for causal in [false, true] {
                            let Ok(ax) = Axis::new(0, len, k, s, d, causal) else {
                                continue;
                            };
                            for t in 0..len {
                                let all: alloc::vec::Vec<usize> = ax.inverse(t).collect();
                                let w = inverse_window(&ax, t);
                                let got: alloc::vec::Vec<usize> = w.iter().collect();
                                assert_eq!(got, all, "len {len} k {k} d {d} s {s} {causal} t {t}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Per-thread tile workspace, bytes, at `l` lanes: forward and backward.
    fn work_bytes(p: &Problem, l: usize) -> (usize, usize) {
        (fwd_work_len(p, l) * 4, bwd_work_len(p, l) * 4)
    }

    #[test]
    fn tile_workspace_fits_32_kib_per_thread_for_the_target_shapes() {
        let nat_l0 = Problem::new(1, &[56, 56], 2, 32, 32, Params::new(&[7, 7]).unwrap()).unwrap();
        let k5 = || Params::new(&[5, 5]).unwrap();
        let k5d2 = || k5().with_dilation(&[2, 2]).unwrap();
        // The Fashion models' levels (head dim 32, and 20 for the 40-wide
        // variant), dilated and not.
        let fashion = [
            Problem::new(1, &[14, 14], 1, 32, 32, k5d2()).unwrap(),
            Problem::new(1, &[7, 7], 2, 32, 32, k5()).unwrap(),
            Problem::new(1, &[14, 14], 2, 20, 20, k5d2()).unwrap(),
            Problem::new(1, &[4, 4], 8, 20, 20, Params::new(&[3, 3]).unwrap()).unwrap(),
        ];
        for p in core::iter::once(&nat_l0).chain(&fashion) {
            for l in [8, 16] {
                let (f, b) = work_bytes(p, l);
                assert!(f <= 32 << 10, "forward {f} B at {l} lanes for {p:?}");
                assert!(b <= 32 << 10, "backward {b} B at {l} lanes for {p:?}");
            }
        }
        // Eight lanes take less than sixteen.
        assert!(work_bytes(&nat_l0, 8).0 < work_bytes(&nat_l0, 16).0);
    }

    #[test]
    fn logit_slots_hold_a_multi_row_tile_or_cap_at_sc_slots() {
        let p = Problem::new(1, &[56, 56], 2, 32, 32, Params::new(&[7, 7]).unwrap()).unwrap();
        assert_eq!(logit_slots(&p), FWD_ROWS * 49);
        let big = Problem::new(1, &[64, 64], 1, 8, 8, Params::new(&[21, 21]).unwrap()).unwrap();
        assert_eq!(logit_slots(&big), SC_SLOTS);
    }
}
