//! The tile loops of the fused kernels, generic over the arithmetic (`A`),
//! the lane count (`L`) and the storage type (`T`), and the per-ISA
//! trampolines that instantiate them.
//!
//! Naming: a *chunk* is a run of positions `[a, a + len)` on the last axis of
//! one line `(b, x0, x1)` (1D and 2D problems are padded in front to 3D with
//! unit axes); a *tile* is up to `L` positions of one dilation group inside a
//! chunk; a *line* is one combination of leading-axis coordinates of the keys
//! (forward, pass 1) or queries (pass 2) the tile sees.

// Lane loops index several `[f32; L]` arrays with the same `l`: that is the
// SIMD lane, and writing it as an index is what lets them vectorise.
#![allow(clippy::needless_range_loop)]

use super::kernels::{
    diag_axpy, diag_axpy_masked, diag_dot, exp, lanes_times_rows, lanes_times_rows_masked,
    rows_dot_lanes, Arith, DIAG_PAD,
};
use super::simd::{Generic, Simd};
use super::Isa;
use crate::problem::MAX_AXES;
use crate::tensors::{Inputs, Saved};
use crate::window::{Axis, Window};
use crate::{Element, Problem};

/// The widest lane count of any ISA (AVX-512), used to size scratch.
pub(crate) const LMAX: usize = 16;

/// Zero padding after transposed keys and values: the sliding-window
/// kernels read up to `DIAG_PAD + LMAX` slots past a group's last position.
pub(crate) const T_PAD: usize = DIAG_PAD + LMAX;

/// Positions per chunk along the last axis, per unit of dilation.
const SEG: usize = 64;

/// Problem geometry resolved once per call.
pub(crate) struct Geo {
    axes: [Axis; MAX_AXES],
    ext: [usize; MAX_AXES],
    rext: [usize; MAX_AXES],
    /// Bias entries per head.
    rph: usize,
    tokens: usize,
    heads: usize,
    dk: usize,
    dv: usize,
    scale: f32,
    /// Chunk length on the last axis, and chunks per line.
    seg: usize,
    segs: usize,
    /// Number of lines: `batch * ext[0] * ext[1]`.
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    lines: usize,
}

/// One chunk: positions `[a, a + len)` of the last axis of line `(b, x0, x1)`.
#[derive(Clone, Copy)]
pub(crate) struct Chunk {
    b: usize,
    x0: usize,
    x1: usize,
    a: usize,
    pub(crate) len: usize,
}

impl Geo {
    pub(crate) fn new(p: &Problem) -> Self {
        let axes = *p.axes3();
        let ext = axes.map(|a| a.len());
        let seg = (SEG * axes[2].dilation()).min(ext[2]);
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
            segs: ext[2].div_ceil(seg),
            lines: p.batch() * ext[0] * ext[1],
        }
    }

    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    pub(crate) fn chunks(&self) -> usize {
        self.lines * self.segs
    }

    pub(crate) fn chunk(&self, ci: usize) -> Chunk {
        let (line, s) = (ci / self.segs, ci % self.segs);
        let a = s * self.seg;
        Chunk {
            b: line / (self.ext[0] * self.ext[1]),
            x0: (line / self.ext[1]) % self.ext[0],
            x1: line % self.ext[1],
            a,
            len: self.seg.min(self.ext[2] - a),
        }
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

    /// Chunks of one batch element.
    pub(crate) fn chunks_per_batch(&self) -> usize {
        self.lines_per_batch() * self.segs
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
    fn gstart(&self, grp: usize) -> usize {
        let (e, d) = (self.ext[2], self.axes[2].dilation());
        grp * (e / d) + grp.min(e % d)
    }

    /// Length of dilation group `grp` of the last axis.
    #[inline(always)]
    fn glen(&self, grp: usize) -> usize {
        let (e, d) = (self.ext[2], self.axes[2].dilation());
        e / d + usize::from(grp < e % d)
    }

    /// Offset in a transposed buffer (of row width `width`) of channel 0,
    /// group index 0 of group `grp`, head `h`, line `(t0, t1)`: channels are
    /// `glen(grp)` apart, group indices adjacent.
    #[inline(always)]
    fn t_offset(&self, width: usize, t0: usize, t1: usize, h: usize, grp: usize) -> usize {
        ((t0 * self.ext[1] + t1) * self.heads + h) * width * self.ext[2] + width * self.gstart(grp)
    }

    /// Row (index into `lse`; times the head dim into q/k/v) of head `h` at
    /// position `(t0, t1, t2)` of batch `b`.
    #[inline(always)]
    fn row(&self, b: usize, t0: usize, t1: usize, t2: usize, h: usize) -> usize {
        (b * self.tokens + (t0 * self.ext[1] + t1) * self.ext[2] + t2) * self.heads + h
    }

    /// The bias entries of head `h` for leading offsets `(r0, r1)`: one
    /// entry per last-axis offset.
    #[inline(always)]
    fn bias_row<'a, T>(&self, rpb: &'a [T], h: usize, r0: usize, r1: usize) -> &'a [T] {
        &rpb[h * self.rph + (r0 * self.rext[1] + r1) * self.rext[2]..][..self.rext[2]]
    }
}

/// Largest union of a tile's windows (forward, pass 1): `L + k + s`.
fn union_fwd(p: &Problem, l: usize) -> usize {
    let a = p.axes3()[2];
    l + a.kernel() + a.stride()
}

/// Largest union of a key tile's inverse neighbourhoods (pass 2): `L + 2k`.
fn union_inv(p: &Problem, l: usize) -> usize {
    l + 2 * p.axes3()[2].kernel()
}

pub(crate) fn fwd_work_len(p: &Problem, l: usize) -> usize {
    let (dk, dv, u) = (p.head_dim(), p.head_dim_v(), union_fwd(p, l));
    (dk + dv) * l + (u.max(SC_SLOTS) + u) * l + u * (dk + dv)
}

pub(crate) fn bwd_work_len(p: &Problem, l: usize) -> usize {
    let (dk, dv) = (p.head_dim(), p.head_dim_v());
    let u1 = union_fwd(p, l);
    let pass1 = (2 * dk + dv) * l + 3 * u1 * l + u1 * (dk + dv);
    let u2 = union_inv(p, l);
    let pass2 = 2 * (dk + dv) * l + 3 * u2 * l + u2 * (dk + dv) + 2 * u2;
    pass1.max(pass2)
}

/// Splits `n` floats off the front of `s`.
#[inline(always)]
fn take<'a>(s: &mut &'a mut [f32], n: usize) -> &'a mut [f32] {
    let (a, b) = core::mem::take(s).split_at_mut(n);
    *s = b;
    a
}

/// Splits `n` lane vectors off the front of `s`.
#[inline(always)]
fn take_lanes<'a, const L: usize>(s: &mut &'a mut [f32], n: usize) -> &'a mut [[f32; L]] {
    take(s, n * L).as_chunks_mut::<L>().0
}

/// Group indices `ii` with `g + d * ii` in `[a, e)`.
#[inline(always)]
fn group_range(a: usize, e: usize, g: usize, d: usize) -> (usize, usize) {
    (
        a.saturating_sub(g).div_ceil(d),
        e.saturating_sub(g).div_ceil(d),
    )
}

/// Per-lane facts of one tile.
struct Lanes<const L: usize> {
    /// Active lanes (the rest are padding).
    n: usize,
    /// First group index of the union.
    lo: usize,
    /// Union length.
    u: usize,
    /// Per lane, the union slots `[first, last)` it attends (or is attended by).
    first: [usize; L],
    last: [usize; L],
}

impl<const L: usize> Lanes<L> {
    /// Builds lane facts from per-lane group-index ranges `[start, end)`.
    #[inline(always)]
    fn new(n: usize, start: [usize; L], end: [usize; L]) -> Self {
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
    fn mask(&self, mask: &mut [[f32; L]]) {
        for (j, m) in mask[..self.u].iter_mut().enumerate() {
            for l in 0..L {
                let on = l < self.n && j >= self.first[l] && j < self.last[l];
                m[l] = if on { 1.0 } else { 0.0 };
            }
        }
    }
}

// Masking. A tile computes some (slot, lane) pairs outside the lane's window:
// the union of the windows on the general path, the slots past a short
// window on ragged sliding runs. Their keys, values, queries, `lse` and
// `delta` may hold anything, infinities and NaN included, and must change
// nothing (SPEC.md, "Non-finite values"). So masked slots are removed by
// selection, never by arithmetic (adding `-inf` to an infinite logit, or
// multiplying a zero weight by an infinite value, gives NaN):
//
// - logits that go through a running maximum (forward) are replaced by
//   `-inf` ([`mask_logits`]), so their weights are exactly zero;
// - weights computed from saved statistics (backward: probabilities and
//   `d_logit`) are replaced by zero after they are computed
//   ([`mask_weights`]);
// - the products of a zero weight with a masked row add `+-0` when the row
//   is finite, and NaN otherwise. So the fast accumulation runs first, and
//   a tile whose accumulator comes out non-finite in an active lane
//   ([`lanes_finite`]) is redone with the accumulations that select the
//   rows too (`*_masked` in `kernels.rs`), which agree with the fast ones bit
//   for bit on finite rows. The check is once per tile, the redo only runs
//   on inputs with infinities or NaN, and tiles without masked slots (the
//   common sliding-window case) need neither.

/// Masked logits become `-inf` (`mask`: `1` where the slot is attended).
#[inline(always)]
fn mask_logits<const L: usize>(s: &mut [[f32; L]], mask: &[[f32; L]]) {
    for (sj, mj) in s.iter_mut().zip(mask) {
        for l in 0..L {
            sj[l] = if mj[l] != 0.0 {
                sj[l]
            } else {
                f32::NEG_INFINITY
            };
        }
    }
}

/// Masked weights become `0` (`mask`: `1` where the slot is attended).
#[inline(always)]
fn mask_weights<const L: usize>(s: &mut [[f32; L]], mask: &[[f32; L]]) {
    for (sj, mj) in s.iter_mut().zip(mask) {
        for l in 0..L {
            sj[l] = if mj[l] != 0.0 { sj[l] } else { 0.0 };
        }
    }
}

/// Whether every element of the first `n` lanes of `acc` is finite.
///
/// Branch-free over the whole tile so that it vectorises (`x * 0` is `+-0`
/// for a finite `x`, NaN for an infinity or a NaN, and NaN sticks in the
/// sum); one test per lane at the end.
#[inline(always)]
fn lanes_finite<const L: usize>(acc: &[[f32; L]], n: usize) -> bool {
    let mut z = [0.0f32; L];
    for a in acc {
        for l in 0..L {
            z[l] += a[l] * 0.0;
        }
    }
    z[..n].iter().all(|&x| x == 0.0)
}

/// `u` rows of `width` elements starting at row `r0` of `src`, `step` rows
/// apart, as `(slice, stride)`: read in place for `f32` storage, widened into
/// `pack` otherwise.
#[inline(always)]
fn rows_of<'a, T: Element>(
    src: &'a [T],
    r0: usize,
    step: usize,
    u: usize,
    width: usize,
    pack: &'a mut [f32],
) -> (&'a [f32], usize) {
    if let Some(s) = T::as_f32(src) {
        return (&s[r0 * width..], step * width);
    }
    for j in 0..u {
        T::widen_slice(
            &src[(r0 + j * step) * width..][..width],
            &mut pack[j * width..][..width],
        );
    }
    (&pack[..u * width], width)
}

/// Loads one row per active lane, transposed: `dst[c][l] = src_row(l)[c] * mul`.
#[inline(always)]
fn load_lanes<T: Element, const L: usize>(
    dst: &mut [[f32; L]],
    src: &[T],
    rows: &[usize],
    width: usize,
    mul: f32,
    tmp: &mut [f32],
) {
    for v in dst.iter_mut() {
        *v = [0.0; L];
    }
    for (l, &r) in rows.iter().enumerate() {
        let row: &[f32] = match T::as_f32(src) {
            Some(s) => &s[r * width..][..width],
            None => {
                T::widen_slice(&src[r * width..][..width], &mut tmp[..width]);
                &tmp[..width]
            }
        };
        for (d, v) in dst.iter_mut().zip(row) {
            d[l] = v * mul;
        }
    }
}

/// The row step of a full tile of `f32` rows (`rows[l] = rows[0] + l * step`),
/// when SIMD transposes can move it in place: `L` active lanes and `width` a
/// multiple of 8.
#[inline(always)]
fn tile_step<const L: usize>(rows: &[usize], width: usize) -> Option<usize> {
    if rows.len() != L || !width.is_multiple_of(8) || !L.is_multiple_of(8) {
        return None;
    }
    let step = rows[1].checked_sub(rows[0])?;
    (0..L)
        .all(|l| rows[l] == rows[0] + l * step)
        .then_some(step)
}

/// [`load_lanes`] through 8x8 SIMD transposes: in place for full tiles of
/// `f32` rows, else from rows copied (widened) into `tmp` (`L * width`
/// floats, zeros for inactive lanes). `width` must be a multiple of 8 for
/// the transposes; other widths take [`load_lanes`].
#[inline(always)]
fn load_tile<S: Simd, T: Element, const L: usize>(
    vx: S,
    dst: &mut [[f32; L]],
    src: &[T],
    rows: &[usize],
    width: usize,
    mul: f32,
    tmp: &mut [f32],
) {
    if !width.is_multiple_of(8) || !L.is_multiple_of(8) {
        return load_lanes(dst, src, rows, width, mul, tmp);
    }
    let (s, base, ss): (&[f32], usize, usize) = match (T::as_f32(src), tile_step::<L>(rows, width))
    {
        (Some(s), Some(step)) => (s, rows[0] * width, step * width),
        _ => {
            let t = &mut tmp[..L * width];
            for (l, row) in t.chunks_exact_mut(width).enumerate() {
                match rows.get(l) {
                    Some(&r) => T::widen_slice(&src[r * width..][..width], row),
                    None => row.fill(0.0),
                }
            }
            (&tmp[..L * width], 0, width)
        }
    };
    let d = dst[..width].as_flattened_mut();
    for lb in (0..L).step_by(8) {
        for cb in (0..width).step_by(8) {
            vx.transpose8(&s[base + lb * ss + cb..], ss, &mut d[cb * L + lb..], L);
        }
    }
    if mul != 1.0 {
        for v in d.iter_mut() {
            *v *= mul;
        }
    }
}

/// Writes `acc[c][l] * mul[l]` (or `acc[c][l]`) to row `rows[l]` of `dst`
/// (rows of `width`) for every active lane, through 8x8 SIMD transposes
/// (in place for full tiles of `f32` rows, else through `tmp`, `L * width`
/// floats); `acc` is scaled in place.
#[inline(always)]
fn store_tile<S: Simd, T: Element, const L: usize>(
    vx: S,
    dst: &mut [T],
    rows: &[usize],
    width: usize,
    acc: &mut [[f32; L]],
    mul: Option<&[f32; L]>,
    tmp: &mut [f32],
) {
    if let Some(mul) = mul {
        for a in acc[..width].iter_mut() {
            for l in 0..L {
                a[l] *= mul[l];
            }
        }
    }
    if !width.is_multiple_of(8) || !L.is_multiple_of(8) {
        for (l, &r) in rows.iter().enumerate() {
            for (c, o) in dst[r * width..][..width].iter_mut().enumerate() {
                *o = T::from_f32(acc[c][l]);
            }
        }
        return;
    }
    let a = acc[..width].as_flattened();
    if let Some(step) = tile_step::<L>(rows, width) {
        if let Some(d) = T::as_f32_mut(dst) {
            let (r0, ds) = (rows[0] * width, step * width);
            for lb in (0..L).step_by(8) {
                for cb in (0..width).step_by(8) {
                    vx.transpose8(&a[cb * L + lb..], L, &mut d[r0 + lb * ds + cb..], ds);
                }
            }
            return;
        }
    }
    let t = &mut tmp[..L * width];
    for lb in (0..L).step_by(8) {
        for cb in (0..width).step_by(8) {
            vx.transpose8(&a[cb * L + lb..], L, &mut t[lb * width + cb..], width);
        }
    }
    for (l, &r) in rows.iter().enumerate() {
        T::narrow_slice(&t[l * width..][..width], &mut dst[r * width..][..width]);
    }
}

/// Transposes line `line` (`t0 * ext[1] + t1`) of batch element `b` of
/// `src` (rows of `width`) into `dst` (that line's `heads * width * ext[2]`
/// floats): per head and dilation group, channel-major with the group's
/// positions adjacent, so that consecutive positions of a channel are one
/// vector for the sliding-window kernels. Blocks of 8 positions x 8
/// channels go through [`Simd::transpose8`].
#[inline(always)]
fn transpose_line_k<S: Simd, const L: usize, T: Element>(
    vx: S,
    g: &Geo,
    src: &[T],
    width: usize,
    b: usize,
    line: usize,
    dst: &mut [f32],
) {
    let (t0, t1) = (line / g.ext[1], line % g.ext[1]);
    let d2 = g.axes[2].dilation();
    let ss = d2 * g.heads * width;
    let mut tmp = [0.0f32; 64];
    for h in 0..g.heads {
        for grp in 0..d2.min(g.ext[2]) {
            let (lg, base) = (g.glen(grp), g.t_offset(width, 0, 0, h, grp));
            let r0 = g.row(b, t0, t1, grp, h) * width;
            let (full_i, full_c) = (lg - lg % 8, width - width % 8);
            for ii0 in (0..full_i).step_by(8) {
                for c0 in (0..full_c).step_by(8) {
                    let at = r0 + ii0 * ss + c0;
                    let d = &mut dst[base + c0 * lg + ii0..];
                    match T::as_f32(src) {
                        Some(s) => vx.transpose8(&s[at..], ss, d, lg),
                        None => {
                            for i in 0..8 {
                                let row = &src[at + i * ss..][..8];
                                T::widen_slice(row, &mut tmp[i * 8..][..8]);
                            }
                            vx.transpose8(&tmp, 8, d, lg);
                        }
                    }
                }
            }
            // Edges: the last positions (fewer than 8) and channels.
            for ii in 0..lg {
                let c_from = if ii < full_i { full_c } else { 0 };
                let row = &src[r0 + ii * ss..][..width];
                for c in c_from..width {
                    dst[base + c * lg + ii] = row[c].to_f32();
                }
            }
        }
    }
}

/// Keys and values of line `line` of batch element `b`, transposed (see
/// [`transpose_line`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn transpose_kv_line<T: Element>(
    isa: Isa,
    g: &Geo,
    x: &Inputs<'_, T>,
    b: usize,
    line: usize,
    kt: &mut [f32],
    vt: &mut [f32],
) {
    transpose_line(isa, g, x.key, g.dk, b, line, kt);
    transpose_line(isa, g, x.value, g.dv, b, line, vt);
}

/// What backward pass 2's sliding-window path reads, transposed per batch
/// element like the keys (see [`transpose_line`]).
#[derive(Clone, Copy)]
pub(crate) struct QueriesT<'a> {
    /// Queries, width `dk`.
    pub(crate) q: &'a [f32],
    /// `d_out`, width `dv`.
    pub(crate) d_out: &'a [f32],
    /// `lse`, width 1.
    pub(crate) lse: &'a [f32],
    /// `delta`, width 1.
    pub(crate) delta: &'a [f32],
}

/// One online-softmax step over a line's logits `sc` (made probabilities in
/// place): raise the running maximum `m`, rescale the running sum `lsum` and
/// the output accumulator `ot` to it.
#[inline(always)]
fn softmax_step<A: Arith, const L: usize>(
    sc: &mut [[f32; L]],
    m: &mut [f32; L],
    lsum: &mut [f32; L],
    ot: &mut [[f32; L]],
) {
    let mut mx = *m;
    for sj in sc.iter() {
        for l in 0..L {
            mx[l] = if sj[l] > mx[l] { sj[l] } else { mx[l] };
        }
    }
    let mut corr = [0.0f32; L];
    let mut rs = [0.0f32; L];
    for l in 0..L {
        corr[l] = exp::<A>(m[l] - mx[l]);
    }
    *m = mx;
    for sj in sc.iter_mut() {
        for l in 0..L {
            sj[l] = exp::<A>(sj[l] - m[l]);
            rs[l] += sj[l];
        }
    }
    for l in 0..L {
        lsum[l] = lsum[l] * corr[l] + rs[l];
    }
    for o in ot.iter_mut() {
        for l in 0..L {
            o[l] *= corr[l];
        }
    }
}

/// Logit slots a forward tile gathers before one online-softmax step: whole
/// windows of small kernels (7x7, 13x13, 3x7x7) in one step.
const SC_SLOTS: usize = 512;

/// The sliding-window shape of one tile on the transposed path: lane `l`'s
/// window (or inverse neighbourhood) is the `cnt[l]` group positions from
/// `st0 + idx[l]`, where either `idx[l] = l` for every lane (an interior
/// run) or `idx[l] = 0` (a border run or a short dilation group: the
/// kernels then broadcast the keys). Tiles are cut so that one of the two
/// holds (see [`slide_run`]).
struct Slide<const L: usize> {
    st0: usize,
    idx: [u32; L],
    cnt: [usize; L],
    /// The longest window: the slots every lane computes.
    kmax: usize,
    /// Every lane's window starts at `st0` (else at `st0 + l`).
    bcast: bool,
    /// Some active lane has fewer than `kmax` slots: mask the rest.
    ragged: bool,
}

/// The lanes of a tile on the transposed path: the longest prefix of the
/// `n` candidate lanes whose window starts `st` are all equal or all
/// consecutive.
#[inline(always)]
fn slide_run<const L: usize>(st: &[usize; L], n: usize) -> usize {
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
    fn new(n: usize, st: &[usize; L], en: &[usize; L]) -> Option<Self> {
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
    fn mask(&self, n: usize, mask: &mut [[f32; L]]) {
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
    fn query_bias_start(&self, l: usize, k: usize, ii0: usize) -> usize {
        self.st0 + self.idx[l] as usize + k - 1 - (ii0 + l)
    }
}

/// Adds one key line's bias row `brow` to the logits `s` of a query tile
/// (`n` active lanes, lane 0 at group index `ii0`): per lane on broadcast
/// runs, one broadcast value per slot on sliding runs (where every lane's
/// slot `o` has the same bias index).
#[inline(always)]
fn add_query_bias<T: Element, const L: usize, const BC: bool>(
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

/// `v[l] = x[l]`, or `x[0]` in every lane when `BC`.
#[inline(always)]
fn lanes_of<const L: usize, const BC: bool>(x: &[f32]) -> [f32; L] {
    let x = &x[..L];
    let mut v = [0.0f32; L];
    for l in 0..L {
        v[l] = if BC { x[0] } else { x[l] };
    }
    v
}

/// The queries attending key `t` on axis `ax`, as one window (they form an
/// interval of the key's dilation group).
#[inline(always)]
fn inverse_window(ax: &Axis, t: usize) -> Window {
    let mut inv = ax.inverse(t);
    match inv.next() {
        Some(first) => {
            let last = inv.last().unwrap_or(first);
            Window {
                start: first,
                count: (last - first) / ax.dilation() + 1,
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
fn line_of(w0: &Window, w1: &Window, li: usize) -> (usize, usize) {
    (
        w0.start + (li / w1.count) * w0.step,
        w1.start + (li % w1.count) * w1.step,
    )
}

/// What one tile of the forward pass works on.
struct FwdTile<'a, const L: usize> {
    /// Chunk, head, dilation group, group index of lane 0, active lanes.
    ch: Chunk,
    h: usize,
    grp: usize,
    ii0: usize,
    n: usize,
    /// Scaled queries, transposed (`(dk, L)`).
    qt: &'a [[f32; L]],
}

/// The running softmax state of a forward tile: maximum, sum and output
/// accumulator per lane.
type FwdAcc<'a, const L: usize> = (&'a mut [f32; L], &'a mut [f32; L], &'a mut [[f32; L]]);

/// Resets a forward tile's running state (before a tile is redone).
#[inline(always)]
fn reset_fwd<const L: usize>((m, lsum, ot): FwdAcc<'_, L>) {
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
fn forward_slide<S: Simd, const L: usize, T: Element, const BC: bool>(
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
type UnionBufs<'a, const L: usize> = (
    &'a mut [[f32; L]],
    &'a [[f32; L]],
    &'a mut [f32],
    &'a mut [f32],
);

/// Per-slot buffers of backward pass 1's general path: probabilities,
/// `d_logit`, the mask, packed keys and values of one line.
type QueryUnionBufs<'a, const L: usize> = (
    &'a mut [[f32; L]],
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
fn forward_union<S: Simd, const L: usize, T: Element>(
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
fn forward<S: Simd, const L: usize, T: Element>(
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

/// Three lane buffers of a backward tile: probabilities, `dP`, mask.
type Three<'a, const L: usize> = (&'a mut [[f32; L]], &'a mut [[f32; L]], &'a mut [[f32; L]]);

/// What one tile of backward pass 1 works on.
struct BwdQTile<'a, const L: usize> {
    ch: Chunk,
    h: usize,
    grp: usize,
    ii0: usize,
    n: usize,
    /// Scaled queries and `d_out`, transposed.
    qt: &'a [[f32; L]],
    dot: &'a [[f32; L]],
    /// Per lane: `lse` and `delta`.
    lse: [f32; L],
    dlt: [f32; L],
}

/// Backward pass 1 of one tile on the transposed path: `d_query` into `dqt`
/// and, when given, `d_rpb`. Ragged runs mask `d_logit` past each lane's
/// window; `safe` selects the keys too (see "Masking" above).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_query_slide<S: Simd, const L: usize, T: Element, const BC: bool>(
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
    let (w0, w1) = (g.axes[0].window(t.ch.x0), g.axes[1].window(t.ch.x1));
    let (lg, km) = (g.glen(t.grp), sl.kmax);
    if sl.ragged {
        sl.mask(t.n, mask);
    }
    let (sc, dp, mask) = (&mut sc[..km], &mut dp[..km], &mask[..km]);
    for li in 0..w0.count * w1.count {
        let (t0, t1) = line_of(&w0, &w1, li);
        let r0 = g.axes[0].rpb_index_unchecked(t.ch.x0, t0);
        let r1 = g.axes[1].rpb_index_unchecked(t.ch.x1, t1);
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
fn backward_query_union<S: Simd, const L: usize, T: Element>(
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
    let (w0, w1) = (g.axes[0].window(t.ch.x0), g.axes[1].window(t.ch.x1));
    let (sc, dp, mask) = (&mut sc[..u], &mut dp[..u], &mask[..u]);
    for t0 in w0.iter() {
        let r0 = g.axes[0].rpb_index_unchecked(t.ch.x0, t0);
        for t1 in w1.iter() {
            let r1 = g.axes[1].rpb_index_unchecked(t.ch.x1, t1);
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

/// Backward pass 1 for one chunk of queries: `dq` (`(len, heads, dk)`),
/// `delta = <d_out, out>` (`(len, heads)`), and every `d_logit` added into
/// `drpb` (the whole bias table) when given.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_query<S: Simd, const L: usize, T: Element>(
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
    let ch = g.chunk(ci);
    let (dk, dv, hn) = (g.dk, g.dv, g.heads);
    let ax = g.axes[2];
    let (d2, k2) = (ax.dilation(), ax.kernel());
    let umax = L + k2 + ax.stride();
    let mut s = scratch;
    let qt = take_lanes::<L>(&mut s, dk); // (dk, L): scaled queries
    let dot = take_lanes::<L>(&mut s, dv); // (dv, L): d_out, transposed
    let dqt = take_lanes::<L>(&mut s, dk); // (dk, L): d_query accumulator
    let sc = take_lanes::<L>(&mut s, umax); // (U, L): probabilities
    let dp = take_lanes::<L>(&mut s, umax); // (U, L): dP, then d_logit
    let mask = take_lanes::<L>(&mut s, umax); // (U, L): window mask, 1 = attended
    let kp = take(&mut s, umax * dk); // (U, dk)
    let vp = take(&mut s, umax * dv); // (U, dv)
    for h in 0..hn {
        for grp in 0..d2 {
            let (ia, ie) = group_range(ch.a, ch.a + ch.len, grp, d2);
            let mut ii0 = ia;
            while ii0 < ie {
                let n = (ie - ii0).min(L);
                let (mut x2, mut st, mut en, mut rows) = ([0; L], [0; L], [0; L], [0; L]);
                let (mut lse, mut dlt) = ([0.0f32; L], [0.0f32; L]);
                for l in 0..n {
                    x2[l] = grp + d2 * (ii0 + l);
                    let w = ax.window(x2[l]);
                    st[l] = w.start / d2;
                    en[l] = st[l] + w.count;
                }
                let n = if kvt.is_some() { slide_run(&st, n) } else { n };
                for l in 0..n {
                    let r = g.row(ch.b, ch.x0, ch.x1, x2[l], h);
                    rows[l] = r;
                    lse[l] = sv.lse[r];
                    let (o, d) = (&sv.out[r * dv..][..dv], &sv.d_out[r * dv..][..dv]);
                    dlt[l] = o.iter().zip(d).map(|(a, b)| a.to_f32() * b.to_f32()).sum();
                    delta[(x2[l] - ch.a) * hn + h] = dlt[l];
                }
                load_tile::<S, T, L>(vx, qt, x.query, &rows[..n], dk, g.scale, kp);
                load_tile::<S, T, L>(vx, dot, sv.d_out, &rows[..n], dv, 1.0, vp);
                for v in dqt.iter_mut() {
                    *v = [0.0; L];
                }
                let t = BwdQTile {
                    ch,
                    h,
                    grp,
                    ii0,
                    n,
                    qt,
                    dot,
                    lse,
                    dlt,
                };
                let slide = kvt.and_then(|_| Slide::<L>::new(n, &st, &en));
                // A redo (`safe`) adds nothing to d_rpb: d_logit is the same
                // in both runs, and the first one has added it.
                if let (Some(kv), Some(sl)) = (kvt, slide) {
                    for safe in [false, true] {
                        let bufs = (&mut *sc, &mut *dp, &mut *mask);
                        let d = if safe { None } else { drpb.as_deref_mut() };
                        if !sl.bcast {
                            backward_query_slide::<S, L, T, false>(
                                vx, g, x, kv, &t, &sl, safe, bufs, dqt, d,
                            );
                        } else {
                            backward_query_slide::<S, L, T, true>(
                                vx, g, x, kv, &t, &sl, safe, bufs, dqt, d,
                            );
                        }
                        if safe || !sl.ragged || lanes_finite(dqt, n) {
                            break;
                        }
                        for v in dqt.iter_mut() {
                            *v = [0.0; L];
                        }
                    }
                } else {
                    let ln = Lanes::new(n, st, en);
                    ln.mask(mask);
                    for safe in [false, true] {
                        let bufs = (&mut *sc, &mut *dp, &*mask, &mut *kp, &mut *vp);
                        let d = if safe { None } else { drpb.as_deref_mut() };
                        backward_query_union::<S, L, T>(vx, g, x, &t, &ln, safe, bufs, dqt, d);
                        if safe || lanes_finite(dqt, n) {
                            break;
                        }
                        for v in dqt.iter_mut() {
                            *v = [0.0; L];
                        }
                    }
                }
                let mut orow = [0usize; L];
                for l in 0..n {
                    orow[l] = (x2[l] - ch.a) * hn + h;
                }
                let scale = [g.scale; L];
                store_tile::<S, T, L>(vx, dq, &orow[..n], dk, dqt, Some(&scale), kp);
                ii0 += n;
            }
        }
    }
}

/// What one tile of backward pass 2 works on.
struct BwdKTile<'a, const L: usize> {
    ch: Chunk,
    h: usize,
    grp: usize,
    jj0: usize,
    n: usize,
    /// Scaled keys and values, transposed.
    kt: &'a [[f32; L]],
    vt: &'a [[f32; L]],
}

/// Backward pass 2 of one key tile on the transposed path: `d_key` and
/// `d_value` into `dkt` and `dvt`, over each key's inverse neighbourhood.
/// Ragged runs mask the probabilities and `d_logit` past each lane's
/// neighbourhood; `safe` selects the queries and `d_out` too (see "Masking"
/// above).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_key_slide<S: Simd, const L: usize, T: Element, const BC: bool>(
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
    let (i0, i1) = (inverse_window(&a0, t.ch.x0), inverse_window(&a1, t.ch.x1));
    for q0 in i0.iter() {
        let r0 = a0.rpb_index_unchecked(q0, t.ch.x0);
        for q1 in i1.iter() {
            let r1 = a1.rpb_index_unchecked(q1, t.ch.x1);
            let qo = g.t_offset(dk, q0, q1, t.h, t.grp) + sl.st0;
            let oo = g.t_offset(dv, q0, q1, t.h, t.grp) + sl.st0;
            let so = g.t_offset(1, q0, q1, t.h, t.grp) + sl.st0;
            diag_dot::<S, L, BC>(vx, &tq.q[qo..], lg, dk, t.kt, sc);
            if let Some(rpb) = x.rpb {
                // Lane l, slot o: key jj0 + l, query st0 + idx[l] + o.
                let brow = g.bias_row(rpb, t.h, r0, r1);
                let b0 = |l: usize| t.jj0 + l + k2 - 1 - sl.st0 - sl.idx[l] as usize;
                if BC {
                    for l in 0..t.n {
                        let b0 = b0(l);
                        for (o, sj) in sc[..sl.cnt[l]].iter_mut().enumerate() {
                            sj[l] += brow[b0 - o].to_f32();
                        }
                    }
                } else {
                    let b0 = b0(0);
                    for (o, sj) in sc.iter_mut().enumerate() {
                        let b = brow[b0 - o].to_f32();
                        for v in sj.iter_mut() {
                            *v += b;
                        }
                    }
                }
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
type KeyUnionBufs<'a, const L: usize> = (
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
fn backward_key_union<S: Simd, const L: usize, T: Element>(
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
        for q1 in a1.inverse(t.ch.x1) {
            let r1 = a1.rpb_index_unchecked(q1, t.ch.x1);
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

/// Backward pass 2 for one chunk of keys: `dk` (`(len, heads, dk)`) and `dv`
/// (`(len, heads, dv)`), gathered over each key's inverse neighbourhood.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_key<S: Simd, const L: usize, T: Element>(
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
    let (d2, k2) = (ax.dilation(), ax.kernel());
    let umax = L + 2 * k2;
    let mut s = scratch;
    let kt = take_lanes::<L>(&mut s, dk); // (dk, L): scaled keys
    let vt = take_lanes::<L>(&mut s, dv); // (dv, L): values
    let dkt = take_lanes::<L>(&mut s, dk); // (dk, L): d_key accumulator
    let dvt = take_lanes::<L>(&mut s, dv); // (dv, L): d_value accumulator
    let sc = take_lanes::<L>(&mut s, umax); // (U, L): probabilities
    let dp = take_lanes::<L>(&mut s, umax); // (U, L): dP, then d_logit
    let mask = take_lanes::<L>(&mut s, umax); // (U, L): inverse mask, 1 = attending
    let qp = take(&mut s, umax * dk); // (U, dk): packed queries of one line
    let dop = take(&mut s, umax * dv); // (U, dv): packed d_out of one line
    let lse_u = take(&mut s, umax); // (U,)
    let dlt_u = take(&mut s, umax); // (U,)
    for h in 0..hn {
        for grp in 0..d2 {
            let (ja, je) = group_range(ch.a, ch.a + ch.len, grp, d2);
            let mut jj0 = ja;
            while jj0 < je {
                let n = (je - jj0).min(L);
                let (mut x2, mut st, mut en, mut rows) = ([0; L], [0; L], [0; L], [0; L]);
                for l in 0..n {
                    x2[l] = grp + d2 * (jj0 + l);
                    // The queries attending a key form one interval of its group.
                    let inv = inverse_window(&ax, x2[l]);
                    st[l] = inv.start / d2;
                    en[l] = st[l] + inv.count;
                    rows[l] = g.row(ch.b, ch.x0, ch.x1, x2[l], h);
                }
                let n = if qdt.is_some() { slide_run(&st, n) } else { n };
                load_tile::<S, T, L>(vx, kt, x.key, &rows[..n], dk, g.scale, qp);
                load_tile::<S, T, L>(vx, vt, x.value, &rows[..n], dv, 1.0, dop);
                for v in dkt.iter_mut().chain(dvt.iter_mut()) {
                    *v = [0.0; L];
                }
                let t = BwdKTile {
                    ch,
                    h,
                    grp,
                    jj0,
                    n,
                    kt,
                    vt,
                };
                let slide = qdt.and_then(|_| Slide::<L>::new(n, &st, &en));
                if let (Some(tq), Some(sl)) = (qdt, slide) {
                    for safe in [false, true] {
                        let bufs = (&mut *sc, &mut *dp, &mut *mask);
                        let acc = (&mut *dkt, &mut *dvt);
                        if !sl.bcast {
                            backward_key_slide::<S, L, T, false>(
                                vx, g, x, &tq, &t, &sl, safe, bufs, acc,
                            );
                        } else {
                            backward_key_slide::<S, L, T, true>(
                                vx, g, x, &tq, &t, &sl, safe, bufs, acc,
                            );
                        }
                        if safe || !sl.ragged || (lanes_finite(dkt, n) && lanes_finite(dvt, n)) {
                            break;
                        }
                        for v in dkt.iter_mut().chain(dvt.iter_mut()) {
                            *v = [0.0; L];
                        }
                    }
                } else {
                    let ln = Lanes::new(n, st, en);
                    ln.mask(mask);
                    for safe in [false, true] {
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
                        backward_key_union::<S, L, T>(
                            vx, g, x, sv, delta, &t, &ln, safe, bufs, acc,
                        );
                        if safe || (lanes_finite(dkt, n) && lanes_finite(dvt, n)) {
                            break;
                        }
                        for v in dkt.iter_mut().chain(dvt.iter_mut()) {
                            *v = [0.0; L];
                        }
                    }
                }
                let mut orow = [0usize; L];
                for l in 0..n {
                    orow[l] = (x2[l] - ch.a) * hn + h;
                }
                let scale = [g.scale; L];
                store_tile::<S, T, L>(vx, dk_out, &orow[..n], dk, dkt, Some(&scale), qp);
                store_tile::<S, T, L>(vx, dv_out, &orow[..n], dv, dvt, None, dop);
                jj0 += n;
            }
        }
    }
}

/// Instantiates one chunk function per ISA behind `#[target_feature]`
/// trampolines, plus a safe dispatcher.
macro_rules! dispatch {
    ($name:ident, $generic:ident, ($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name<T: Element>(isa: Isa, $($arg: $ty),*) {
            match isa {
                Isa::Generic => $generic::<Generic, 8, T>(Generic::new(), $($arg),*),
                #[cfg(all(feature = "std", target_arch = "x86_64"))]
                Isa::Avx2 => {
                    #[target_feature(enable = "avx2,fma")]
                    #[allow(clippy::too_many_arguments)]
                    fn run<T: Element>($($arg: $ty),*) {
                        // SAFETY: this function only runs with AVX2 and FMA enabled.
                        let vx = unsafe { super::simd::Avx2::new() };
                        $generic::<super::simd::Avx2, 8, T>(vx, $($arg),*)
                    }
                    // SAFETY: every public entry point checks `isa.is_available()`
                    // (run-time detection of AVX2 and FMA) before dispatching here.
                    unsafe { run::<T>($($arg),*) }
                }
                #[cfg(all(feature = "std", target_arch = "x86_64"))]
                Isa::Avx512 => {
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    #[allow(clippy::too_many_arguments)]
                    fn run<T: Element>($($arg: $ty),*) {
                        // SAFETY: this function only runs with AVX-512F enabled.
                        let vx = unsafe { super::simd::Avx512::new() };
                        $generic::<super::simd::Avx512, 16, T>(vx, $($arg),*)
                    }
                    // SAFETY: every public entry point checks `isa.is_available()`
                    // (run-time detection of AVX-512F, AVX2 and FMA) first.
                    unsafe { run::<T>($($arg),*) }
                }
                #[cfg(all(feature = "std", target_arch = "aarch64"))]
                Isa::Neon => {
                    #[target_feature(enable = "neon")]
                    #[allow(clippy::too_many_arguments)]
                    fn run<T: Element>($($arg: $ty),*) {
                        let vx = super::simd::Lanes8::<super::kernels::Fused>::new();
                        $generic::<super::simd::Lanes8<super::kernels::Fused>, 8, T>(vx, $($arg),*)
                    }
                    // SAFETY: every public entry point checks `isa.is_available()`
                    // (run-time detection of NEON) first.
                    unsafe { run::<T>($($arg),*) }
                }
            }
        }
    };
}

dispatch!(transpose_line, transpose_line_k, (g: &Geo, src: &[T], width: usize, b: usize, line: usize, dst: &mut [f32]));
dispatch!(forward_chunk, forward, (g: &Geo, x: &Inputs<'_, T>, kvt: Option<(&[f32], &[f32])>, ci: usize, out: &mut [T], lse: Option<&mut [f32]>, scratch: &mut [f32]));
dispatch!(backward_query_chunk, backward_query, (g: &Geo, x: &Inputs<'_, T>, sv: &Saved<'_, T>, kvt: Option<(&[f32], &[f32])>, ci: usize, dq: &mut [T], delta: &mut [f32], drpb: Option<&mut [f32]>, scratch: &mut [f32]));
dispatch!(backward_key_chunk, backward_key, (g: &Geo, x: &Inputs<'_, T>, sv: &Saved<'_, T>, delta: &[f32], qdt: Option<QueriesT<'_>>, ci: usize, dk_out: &mut [T], dv_out: &mut [T], scratch: &mut [f32]));
