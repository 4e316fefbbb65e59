//! Micro-kernels over `L` lanes, generic over the vector type ([`Simd`]):
//! lane data lives in `[f32; L]` arrays and is loaded into registers with
//! explicit vector loads, so one source serves every ISA.
//!
//! Two shapes cover forward and backward:
//! - [`rows_dot_lanes`]: `out[j][l] = sum_c rows[j][c] * lanes[c][l]`, a row
//!   operand broadcast against a lane-major (transposed) tile;
//! - [`lanes_times_rows`]: `acc[c][l] += sum_j p[j][l] * rows[j][c]`.
//!
//! Both keep a block of accumulators in registers for the whole reduction,
//! as do their sliding-window forms [`diag_dot`] and [`diag_axpy`].

// Lane loops index several `[f32; L]` arrays with the same `l`: that is the
// SIMD lane, and writing it as an index is what lets them vectorise.
#![allow(clippy::needless_range_loop)]

use super::simd::{Arith, Simd};

/// `out[j] = sum_c rows[j * stride + c] * lanes[c]` for `j < out.len()`.
///
/// `rows`: `out.len()` rows of `width`, `stride` apart; `lanes`: `(width, L)`.
#[inline(always)]
pub(crate) fn rows_dot_lanes<S: Simd, const L: usize>(
    s: S,
    rows: &[f32],
    stride: usize,
    width: usize,
    lanes: &[[f32; L]],
    out: &mut [[f32; L]],
) {
    let n = out.len();
    let lanes = &lanes[..width];
    let mut j = 0;
    while j + 8 <= n {
        dot_block::<S, L, 8>(
            s,
            &rows[j * stride..],
            stride,
            width,
            lanes,
            &mut out[j..j + 8],
        );
        j += 8;
    }
    if j + 4 <= n {
        dot_block::<S, L, 4>(
            s,
            &rows[j * stride..],
            stride,
            width,
            lanes,
            &mut out[j..j + 4],
        );
        j += 4;
    }
    if j < n && n >= 4 {
        // A last block of 4 that overlaps the previous one: recomputing up to
        // three rows beats a latency-bound chain of one-row blocks.
        let j = n - 4;
        dot_block::<S, L, 4>(s, &rows[j * stride..], stride, width, lanes, &mut out[j..n]);
        return;
    }
    while j < n {
        dot_block::<S, L, 1>(
            s,
            &rows[j * stride..],
            stride,
            width,
            lanes,
            &mut out[j..j + 1],
        );
        j += 1;
    }
}

#[inline(always)]
fn dot_block<S: Simd, const L: usize, const J: usize>(
    s: S,
    rows: &[f32],
    stride: usize,
    width: usize,
    lanes: &[[f32; L]],
    out: &mut [[f32; L]],
) {
    // (J, width) rows, each sliced to exactly `width` so indexing is unchecked.
    // Plain loops rather than `array::from_fn`: a call that is not inlined
    // would run outside the caller's `#[target_feature]` context.
    let mut r: [&[f32]; J] = [&[]; J];
    for (jj, rj) in r.iter_mut().enumerate() {
        *rj = &rows[jj * stride..][..width];
    }
    let mut acc = [s.zero(); J];
    for (c, lc) in lanes[..width].iter().enumerate() {
        let v = s.load(lc);
        for jj in 0..J {
            acc[jj] = s.fma(s.splat(r[jj][c]), v, acc[jj]);
        }
    }
    for (o, a) in out[..J].iter_mut().zip(acc) {
        s.store(a, o);
    }
}

/// `acc[c] += sum_j p[j] * rows[j * stride + c]` for `c < acc.len() = width`.
///
/// `p`: `(n, L)`; `rows`: `n` rows of `width`, `stride` apart; `acc`: `(width, L)`.
#[inline(always)]
pub(crate) fn lanes_times_rows<S: Simd, const L: usize>(
    s: S,
    p: &[[f32; L]],
    rows: &[f32],
    stride: usize,
    acc: &mut [[f32; L]],
) {
    let width = acc.len();
    let mut c = 0;
    while c + 8 <= width {
        axpy_block::<S, L, 8>(s, p, rows, stride, c, &mut acc[c..c + 8]);
        c += 8;
    }
    while c + 4 <= width {
        axpy_block::<S, L, 4>(s, p, rows, stride, c, &mut acc[c..c + 4]);
        c += 4;
    }
    while c < width {
        axpy_block::<S, L, 1>(s, p, rows, stride, c, &mut acc[c..c + 1]);
        c += 1;
    }
}

#[inline(always)]
fn axpy_block<S: Simd, const L: usize, const C: usize>(
    s: S,
    p: &[[f32; L]],
    rows: &[f32],
    stride: usize,
    c0: usize,
    io: &mut [[f32; L]],
) {
    let mut acc = [s.zero(); C];
    for (a, v) in acc.iter_mut().zip(io.iter()) {
        *a = s.load(v);
    }
    for (j, pj) in p.iter().enumerate() {
        let pv = s.load(pj);
        let r = &rows[j * stride + c0..][..C];
        for cc in 0..C {
            acc[cc] = s.fma(s.splat(r[cc]), pv, acc[cc]);
        }
    }
    for (o, a) in io[..C].iter_mut().zip(acc) {
        s.store(a, o);
    }
}

/// One vector from the front of `x`, or `x[0]` in every lane when `BC`.
#[inline(always)]
fn load_bc<S: Simd, const BC: bool>(s: S, x: &[f32]) -> S::V {
    if BC {
        s.splat(x[0])
    } else {
        s.load(x)
    }
}

/// The sliding-window ("diagonal") product of a tile whose lane `l` has its
/// window start `idx[l]` slots after the tile's first window start:
/// `out[o][l] = sum_c lanes[c][l] * kt[c * ld + o + idx[l]]` for
/// `o < out.len()`. Without `BC`, `idx[l] = l` (an interior tile: each
/// lane's window one slot after the previous one); with `BC`, `idx[l] = 0`
/// (a border run or a short dilation group, where the windows share their
/// start: the keys are broadcast).
///
/// `kt`: a transposed block (`width` channels, `ld` slots apart), offset to
/// the tile's first window start. Offsets go in blocks of 8 (8 independent
/// accumulators keep both FMA pipes busy) and one last block of the rest, so
/// rows are read up to `L - 1` slots past the last offset (callers pad for
/// `DIAG_PAD + L`).
/// Each term is one unaligned vector load (with `BC`, one broadcast load) and
/// one FMA: no work is wasted on keys outside a lane's window.
#[inline(always)]
pub(crate) fn diag_dot<S: Simd, const L: usize, const BC: bool>(
    s: S,
    kt: &[f32],
    ld: usize,
    width: usize,
    lanes: &[[f32; L]],
    out: &mut [[f32; L]],
) {
    let k = out.len();
    let lanes = &lanes[..width];
    let mut o = 0;
    while o + DIAG_PAD <= k {
        diag_dot_block::<S, L, BC, DIAG_PAD>(s, &kt[o..], ld, lanes, &mut out[o..]);
        o += DIAG_PAD;
    }
    // The last slots in one block of exactly their number: no wasted FMAs
    // for kernels that are not a multiple of 8 (7, 13, ...).
    let (kt, out) = (&kt[o..], &mut out[o..]);
    match k - o {
        0 => {}
        1 => diag_dot_block::<S, L, BC, 1>(s, kt, ld, lanes, out),
        2 => diag_dot_block::<S, L, BC, 2>(s, kt, ld, lanes, out),
        3 => diag_dot_block::<S, L, BC, 3>(s, kt, ld, lanes, out),
        4 => diag_dot_block::<S, L, BC, 4>(s, kt, ld, lanes, out),
        5 => diag_dot_block::<S, L, BC, 5>(s, kt, ld, lanes, out),
        6 => diag_dot_block::<S, L, BC, 6>(s, kt, ld, lanes, out),
        _ => diag_dot_block::<S, L, BC, 7>(s, kt, ld, lanes, out),
    }
}

/// `N` consecutive slots of [`diag_dot`], `N` accumulators in registers.
#[inline(always)]
fn diag_dot_block<S: Simd, const L: usize, const BC: bool, const N: usize>(
    s: S,
    kt: &[f32],
    ld: usize,
    lanes: &[[f32; L]],
    out: &mut [[f32; L]],
) {
    let mut acc = [s.zero(); N];
    for (c, lc) in lanes.iter().enumerate() {
        let v = s.load(lc);
        let row = &kt[c * ld..][..N + L - 1];
        for (jj, a) in acc.iter_mut().enumerate() {
            *a = s.fma(v, load_bc::<S, BC>(s, &row[jj..jj + L]), *a);
        }
    }
    for (dst, a) in out[..N].iter_mut().zip(acc) {
        s.store(a, dst);
    }
}

/// Query rows a multi-row tile may hold on `S`: each key load of
/// [`diag_dot_rows`] and [`diag_axpy_rows`] then feeds this many FMAs, and
/// their accumulators (rows x a block of 8 offsets or channels, plus one
/// operand per row) still fit the register file.
#[inline(always)]
pub(crate) fn rows_per_tile<S: Simd>() -> usize {
    if wide::<S>() {
        3
    } else {
        2
    }
}

/// Whether `S` has the register file for 3-row tiles and 8-wide blocks (a
/// `const fn`, so `if const { wide::<S>() }` compiles one branch only).
pub(crate) const fn wide<S: Simd>() -> bool {
    S::REGS >= 32
}

/// [`diag_dot`] for the `R` query rows of a multi-row tile that share one
/// key line: `out[r][o][l] = sum_c lanes[r][c][l] * kt[c * ld + o + idx[l]]`
/// for `o < k`. Each key vector is loaded once and multiplied into every
/// row, so a load (an unaligned one, which mostly straddles two cache lines)
/// serves `R` FMAs instead of one. Per row and element, the same products
/// are summed in the same order as by [`diag_dot`]: the results are
/// bit-identical.
///
/// No closures here or in the blocks: a closure does not inherit the
/// caller's `#[target_feature]`s, so intrinsics inside one are not inlined.
#[inline(always)]
pub(crate) fn diag_dot_rows<S: Simd, const L: usize, const BC: bool, const R: usize>(
    s: S,
    kt: &[f32],
    ld: usize,
    width: usize,
    k: usize,
    lanes: &[&[[f32; L]]; R],
    out: &mut [&mut [[f32; L]]; R],
) {
    // Blocks of offsets sized to the register file: R x N accumulators,
    // R query vectors and one key vector.
    let nb = if wide::<S>() { 8 } else { 4 };
    let mut o = 0;
    while o + nb <= k {
        if const { wide::<S>() } {
            diag_dot_rows_block::<S, L, BC, R, 8>(s, kt, ld, width, lanes, out, o);
        } else {
            diag_dot_rows_block::<S, L, BC, R, 4>(s, kt, ld, width, lanes, out, o);
        }
        o += nb;
    }
    // The last offsets in blocks of 4, 2 and 1 (each output's sum is the
    // same whatever block holds it): three block sizes instead of seven.
    if nb == 8 && k - o >= 4 {
        diag_dot_rows_block::<S, L, BC, R, 4>(s, kt, ld, width, lanes, out, o);
        o += 4;
    }
    if k - o >= 2 {
        diag_dot_rows_block::<S, L, BC, R, 2>(s, kt, ld, width, lanes, out, o);
        o += 2;
    }
    if k - o == 1 {
        diag_dot_rows_block::<S, L, BC, R, 1>(s, kt, ld, width, lanes, out, o);
    }
}

/// Offsets `o0 .. o0 + N` of [`diag_dot_rows`]: `R x N` accumulators.
#[inline(always)]
fn diag_dot_rows_block<S: Simd, const L: usize, const BC: bool, const R: usize, const N: usize>(
    s: S,
    kt: &[f32],
    ld: usize,
    width: usize,
    lanes: &[&[[f32; L]]; R],
    out: &mut [&mut [[f32; L]]; R],
    o0: usize,
) {
    let mut acc = [[s.zero(); N]; R];
    let mut q = [s.zero(); R];
    for c in 0..width {
        for r in 0..R {
            q[r] = s.load(&lanes[r][c]);
        }
        let row = &kt[c * ld + o0..][..N + L - 1];
        for jj in 0..N {
            let kv = load_bc::<S, BC>(s, &row[jj..jj + L]);
            for r in 0..R {
                acc[r][jj] = s.fma(q[r], kv, acc[r][jj]);
            }
        }
    }
    for r in 0..R {
        for jj in 0..N {
            s.store(acc[r][jj], &mut out[r][o0 + jj]);
        }
    }
}

/// [`diag_axpy`] for the `R` query rows of a multi-row tile that share one
/// value line: `acc[r][c][l] += sum_o p[r][o][l] * vt[c * ld + o + idx[l]]`
/// for `o < k`. Each value vector is loaded once for all rows; per row the
/// sums run in the order of [`diag_axpy`] (bit-identical results).
#[inline(always)]
pub(crate) fn diag_axpy_rows<S: Simd, const L: usize, const BC: bool, const R: usize>(
    s: S,
    p: &[&[[f32; L]]; R],
    k: usize,
    vt: &[f32],
    ld: usize,
    acc: &mut [&mut [[f32; L]]; R],
) {
    let width = acc[0].len();
    let cb = if wide::<S>() { 8 } else { 4 };
    let mut c = 0;
    while c + cb <= width {
        if const { wide::<S>() } {
            diag_axpy_rows_block::<S, L, BC, R, 8>(s, p, k, vt, ld, acc, c);
        } else {
            diag_axpy_rows_block::<S, L, BC, R, 4>(s, p, k, vt, ld, acc, c);
        }
        c += cb;
    }
    while c < width {
        diag_axpy_rows_block::<S, L, BC, R, 1>(s, p, k, vt, ld, acc, c);
        c += 1;
    }
}

/// Channels `c0 .. c0 + C` of [`diag_axpy_rows`]: `R x C` accumulators.
#[inline(always)]
fn diag_axpy_rows_block<S: Simd, const L: usize, const BC: bool, const R: usize, const C: usize>(
    s: S,
    p: &[&[[f32; L]]; R],
    k: usize,
    vt: &[f32],
    ld: usize,
    io: &mut [&mut [[f32; L]]; R],
    c0: usize,
) {
    let mut rows: [&[f32]; C] = [&[]; C];
    for (cc, r) in rows.iter_mut().enumerate() {
        *r = &vt[(c0 + cc) * ld..][..k + L - 1];
    }
    let mut acc = [[s.zero(); C]; R];
    for r in 0..R {
        for cc in 0..C {
            acc[r][cc] = s.load(&io[r][c0 + cc]);
        }
    }
    let mut pv = [s.zero(); R];
    for o in 0..k {
        for r in 0..R {
            pv[r] = s.load(&p[r][o]);
        }
        for cc in 0..C {
            let x = load_bc::<S, BC>(s, &rows[cc][o..o + L]);
            for r in 0..R {
                acc[r][cc] = s.fma(pv[r], x, acc[r][cc]);
            }
        }
    }
    for r in 0..R {
        for cc in 0..C {
            s.store(acc[r][cc], &mut io[r][c0 + cc]);
        }
    }
}

/// The block of offsets [`diag_dot`] keeps in registers, and the padding
/// (with the lane count) callers leave after transposed rows.
pub(crate) const DIAG_PAD: usize = 8;

/// The sliding-window counterpart of [`lanes_times_rows`]:
/// `acc[c][l] += sum_o p[o][l] * vt[c * ld + o + idx[l]]` (`idx` as in
/// [`diag_dot`]).
#[inline(always)]
pub(crate) fn diag_axpy<S: Simd, const L: usize, const BC: bool>(
    s: S,
    p: &[[f32; L]],
    vt: &[f32],
    ld: usize,
    acc: &mut [[f32; L]],
) {
    let width = acc.len();
    let mut c = 0;
    while c + 8 <= width {
        diag_axpy_block::<S, L, 8, BC>(s, p, &vt[c * ld..], ld, &mut acc[c..c + 8]);
        c += 8;
    }
    while c + 4 <= width {
        diag_axpy_block::<S, L, 4, BC>(s, p, &vt[c * ld..], ld, &mut acc[c..c + 4]);
        c += 4;
    }
    while c < width {
        diag_axpy_block::<S, L, 1, BC>(s, p, &vt[c * ld..], ld, &mut acc[c..c + 1]);
        c += 1;
    }
}

#[inline(always)]
fn diag_axpy_block<S: Simd, const L: usize, const C: usize, const BC: bool>(
    s: S,
    p: &[[f32; L]],
    vt: &[f32],
    ld: usize,
    io: &mut [[f32; L]],
) {
    let k = p.len();
    let mut rows: [&[f32]; C] = [&[]; C];
    for (cc, r) in rows.iter_mut().enumerate() {
        *r = &vt[cc * ld..][..k + L - 1];
    }
    let mut acc = [s.zero(); C];
    for (a, v) in acc.iter_mut().zip(io.iter()) {
        *a = s.load(v);
    }
    for (o, po) in p.iter().enumerate() {
        let pv = s.load(po);
        for cc in 0..C {
            let x = load_bc::<S, BC>(s, &rows[cc][o..o + L]);
            acc[cc] = s.fma(pv, x, acc[cc]);
        }
    }
    for (o, a) in io[..C].iter_mut().zip(acc) {
        s.store(a, o);
    }
}

/// [`lanes_times_rows`] for tiles with masked slots: row `j` enters lane
/// `l`'s sum only where `mask[j][l]` is set; elsewhere the row element is
/// replaced by zero before the multiply. This is selection, not arithmetic:
/// a masked row may hold an infinity or a NaN (`0 * inf` is NaN), and must
/// not reach a lane whose window does not hold it.
///
/// Each lane accumulates in the same order and with the same multiply-add as
/// [`lanes_times_rows`], and masked slots carry a zero weight (`+0`, by the
/// callers' own selection), so the two agree bit for bit wherever the fast
/// form is finite: there a masked term is `fma(+0, r, acc)`, here
/// `fma(+0, 0, acc)`, and both return `acc` unchanged except that an
/// accumulator that is exactly `-0` may come out `+0` (an exact zero, which
/// the next nonzero term or the final scaling leaves equal in value). Plain
/// lane loops: this form only redoes the rare tiles whose fast result came
/// out non-finite.
///
/// `p`, `mask`: `(n, L)`; `rows`: `n` rows of `width`, `stride` apart; `acc`: `(width, L)`.
#[inline(always)]
pub(crate) fn lanes_times_rows_masked<A: Arith, const L: usize>(
    p: &[[f32; L]],
    mask: &[[f32; L]],
    rows: &[f32],
    stride: usize,
    acc: &mut [[f32; L]],
) {
    for (c, ac) in acc.iter_mut().enumerate() {
        for (j, (pj, mj)) in p.iter().zip(mask).enumerate() {
            let r = rows[j * stride + c];
            for l in 0..L {
                let x = if mj[l] != 0.0 { r } else { 0.0 };
                ac[l] = A::fma(pj[l], x, ac[l]);
            }
        }
    }
}

/// [`diag_axpy`] for tiles with masked slots: slot `o` enters lane `l`'s
/// sum only where `mask[o][l]` is set, by selection, as in
/// [`lanes_times_rows_masked`] (and with the same agreement with
/// [`diag_axpy`]: bit for bit wherever that is finite, up to the sign of an
/// exact-zero accumulator).
#[inline(always)]
pub(crate) fn diag_axpy_masked<A: Arith, const L: usize, const BC: bool>(
    p: &[[f32; L]],
    mask: &[[f32; L]],
    vt: &[f32],
    ld: usize,
    acc: &mut [[f32; L]],
) {
    let k = p.len();
    for (c, ac) in acc.iter_mut().enumerate() {
        let row = &vt[c * ld..][..k + L - 1];
        for (o, (po, mo)) in p.iter().zip(mask).enumerate() {
            for l in 0..L {
                let x = row[o + if BC { 0 } else { l }];
                let x = if mo[l] != 0.0 { x } else { 0.0 };
                ac[l] = A::fma(po[l], x, ac[l]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::simd::{Generic, Plain};

    #[test]
    fn kernels_match_naive_loops() {
        const L: usize = 8;
        let (n, w) = (11, 13);
        let rows: Vec<f32> = (0..n * w).map(|i| (i % 7) as f32 - 3.0).collect();
        let lanes: Vec<[f32; L]> = (0..w)
            .map(|c| core::array::from_fn(|l| (c * L + l) as f32 * 0.25))
            .collect();
        let mut out = vec![[0.0; L]; n];
        rows_dot_lanes::<Generic, L>(Generic::new(), &rows, w, w, &lanes, &mut out);
        for j in 0..n {
            for l in 0..L {
                let want: f32 = (0..w).map(|c| rows[j * w + c] * lanes[c][l]).sum();
                assert_eq!(out[j][l], want);
            }
        }
        // Diagonal forms: lane l's rows start at slot l.
        let (k, ld) = (5, 16);
        let kt: Vec<f32> = (0..w * ld + L)
            .map(|i| ((i * 7) % 11) as f32 - 5.0)
            .collect();
        let mut dd = vec![[0.0; L]; k];
        let vx = Generic::new();
        diag_dot::<Generic, L, false>(vx, &kt, ld, w, &lanes, &mut dd);
        for o in 0..k {
            for l in 0..L {
                let want: f32 = (0..w).map(|c| lanes[c][l] * kt[c * ld + o + l]).sum();
                assert_eq!(dd[o][l], want);
            }
        }
        let mut da = vec![[0.5; L]; w];
        diag_axpy::<Generic, L, false>(vx, &dd, &kt, ld, &mut da);
        for c in 0..w {
            for l in 0..L {
                let want: f32 = 0.5 + (0..k).map(|o| dd[o][l] * kt[c * ld + o + l]).sum::<f32>();
                assert!((da[c][l] - want).abs() <= 1e-3 * want.abs().max(1.0));
            }
        }
        let mut acc = vec![[1.0; L]; w];
        lanes_times_rows::<Generic, L>(Generic::new(), &out, &rows, w, &mut acc);
        for c in 0..w {
            for l in 0..L {
                let want: f32 = 1.0 + (0..n).map(|j| out[j][l] * rows[j * w + c]).sum::<f32>();
                assert!((acc[c][l] - want).abs() <= 1e-3 * want.abs().max(1.0));
            }
        }
    }

    #[test]
    fn masked_kernels_select_rows_and_agree_with_the_fast_ones() {
        const L: usize = 8;
        let vx = Generic::new();
        let (n, w, ld) = (9, 11, 24);
        // Weights and a mask as the tiles make them: masked slots weigh +0.
        let mask: Vec<[f32; L]> = (0..n)
            .map(|j| core::array::from_fn(|l| f32::from(u8::from(j >= l / 2 && j < l / 2 + 5))))
            .collect();
        let p: Vec<[f32; L]> = (0..n)
            .map(|j| core::array::from_fn(|l| mask[j][l] * ((j * 3 + l) % 7) as f32 * 0.125))
            .collect();
        let rows: Vec<f32> = (0..n * w).map(|i| ((i * 5) % 9) as f32 - 4.0).collect();
        let vt: Vec<f32> = (0..w * ld + L)
            .map(|i| ((i * 7) % 11) as f32 - 5.0)
            .collect();
        // Finite rows: bit for bit the fast forms.
        let (mut fast, mut slow) = (vec![[0.5; L]; w], vec![[0.5; L]; w]);
        lanes_times_rows::<Generic, L>(vx, &p, &rows, w, &mut fast);
        lanes_times_rows_masked::<Plain, L>(&p, &mask, &rows, w, &mut slow);
        assert_eq!(fast, slow);
        let (mut fast, mut slow) = (vec![[0.5; L]; w], vec![[0.5; L]; w]);
        diag_axpy::<Generic, L, false>(vx, &p, &vt, ld, &mut fast);
        diag_axpy_masked::<Plain, L, false>(&p, &mask, &vt, ld, &mut slow);
        assert_eq!(fast, slow);
        // A non-finite element in slot 0 reaches only the lanes that attend
        // slot 0 (lanes 0 and 1); the others keep their finite results.
        for poison in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            let mut bad = rows.clone();
            bad[..w].fill(poison);
            let mut acc = vec![[0.5; L]; w];
            lanes_times_rows_masked::<Plain, L>(&p, &mask, &bad, w, &mut acc);
            for (a, f) in acc.iter().zip(&fast) {
                assert!(a[2..].iter().all(|x| x.is_finite()), "{poison}: {a:?}");
                assert!(f[2..].iter().all(|x| x.is_finite()));
            }
            let mut bad = vt.clone();
            for c in 0..w {
                bad[c * ld] = poison; // slot 0 of lane 0 only (no broadcast)
            }
            let mut acc = vec![[0.5; L]; w];
            diag_axpy_masked::<Plain, L, false>(&p, &mask, &bad, ld, &mut acc);
            let mut want = vec![[0.5; L]; w];
            diag_axpy_masked::<Plain, L, false>(&p, &mask, &vt, ld, &mut want);
            for (a, f) in acc.iter().zip(&want) {
                assert_eq!(a[1..], f[1..], "{poison}");
            }
        }
    }

    #[test]
    fn broadcast_diagonal_kernels_match_naive_loops() {
        const L: usize = 8;
        let vx = Generic::new();
        let (w, k, ld) = (5, 7, 24);
        // A border run: every lane's window starts at the same slot.
        let idx = [0u32; L];
        let kt: Vec<f32> = (0..w * ld + 2 * L)
            .map(|i| ((i * 5) % 13) as f32 - 6.0)
            .collect();
        let lanes: Vec<[f32; L]> = (0..w)
            .map(|c| core::array::from_fn(|l| (c + 2 * l) as f32 * 0.5 - 1.0))
            .collect();
        let mut dd = vec![[0.0; L]; k];
        diag_dot::<Generic, L, true>(vx, &kt, ld, w, &lanes, &mut dd);
        for o in 0..k {
            for l in 0..L {
                let at = |c: usize| kt[c * ld + o + idx[l] as usize];
                let want: f32 = (0..w).map(|c| lanes[c][l] * at(c)).sum();
                assert_eq!(dd[o][l], want, "slot {o} lane {l}");
            }
        }
        let mut da = vec![[0.25; L]; w];
        diag_axpy::<Generic, L, true>(vx, &dd, &kt, ld, &mut da);
        for c in 0..w {
            for l in 0..L {
                let terms = (0..k).map(|o| dd[o][l] * kt[c * ld + o + idx[l] as usize]);
                let want: f32 = 0.25 + terms.sum::<f32>();
                assert!((da[c][l] - want).abs() <= 1e-4 * want.abs().max(1.0));
            }
        }
    }
}
