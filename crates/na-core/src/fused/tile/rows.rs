//! Helpers of multi-row tiles (up to 3 query rows of one axis-1 dilation
//! group that share their columns): which rows see a key line, and the
//! multi-row micro-kernels called for a run of them.

use crate::fused::micro::{diag_axpy_rows, diag_dot_rows};
use crate::fused::simd::Simd;
use crate::window::Window;

/// The rows `ra..rb` of a multi-row tile whose windows (`w1`, on axis 1)
/// hold key line `t1` (a contiguous run: window starts and ends grow with
/// the row), and where each such row keeps that line's logits in `sc`
/// (`off[r]`; row `r`'s block starts at `base[r]`, lines in the order of
/// [`line_of`], `i0` the line's index on axis 0).
#[inline(always)]
pub(crate) fn rows_of_line<const R: usize>(
    w1: &[Window; R],
    d1: usize,
    t1: usize,
    i0: usize,
    base: &[usize; R],
    km: usize,
) -> (usize, usize, [usize; R]) {
    let (mut ra, mut rb, mut off) = (R, 0, [0; R]);
    for r in 0..R {
        let w = &w1[r];
        if t1 >= w.start && t1 < w.start + w.count * d1 {
            ra = ra.min(r);
            rb = r + 1;
            off[r] = base[r] + (i0 * w.count + (t1 - w.start) / d1) * km;
        }
    }
    (ra, rb, off)
}

/// [`diag_dot_rows`] for rows `ra..rb` (at most 3) of a multi-row tile with
/// lane operands `q[r]` (transposed queries or `d_out`), row `r`'s results
/// at `sc[off[r]..][..km]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dot_rows<S: Simd, const L: usize, const BC: bool, const R: usize>(
    vx: S,
    kt: &[f32],
    lg: usize,
    dk: usize,
    km: usize,
    q: &[&[[f32; L]]; R],
    ra: usize,
    rb: usize,
    sc: &mut [[f32; L]],
    off: &[usize; R],
) {
    // `const { R >= n } && ..`: arms for more rows than `R` are not compiled.
    let n = rb.saturating_sub(ra);
    if const { R >= 3 } && n >= 3 {
        let (a, b, c) = three(sc, [off[ra], off[ra + 1], off[ra + 2]], km);
        let q = [q[ra], q[ra + 1], q[ra + 2]];
        diag_dot_rows::<S, L, BC, 3>(vx, kt, lg, dk, km, &q, &mut [a, b, c]);
    } else if const { R >= 2 } && n == 2 {
        let (a, b) = two(sc, off[ra], off[ra + 1], km);
        let q = [q[ra], q[ra + 1]];
        diag_dot_rows::<S, L, BC, 2>(vx, kt, lg, dk, km, &q, &mut [a, b]);
    } else if n == 1 {
        let a = &mut sc[off[ra]..][..km];
        diag_dot_rows::<S, L, BC, 1>(vx, kt, lg, dk, km, &[q[ra]], &mut [a]);
    }
}

/// [`diag_axpy_rows`] for rows `ra..rb` (at most 3), row `r`'s weights at
/// `sc[off[r]..][..km]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn axpy_rows<S: Simd, const L: usize, const BC: bool, const R: usize>(
    vx: S,
    sc: &[[f32; L]],
    off: &[usize; R],
    km: usize,
    vt: &[f32],
    lg: usize,
    ot: &mut [&mut [[f32; L]]; R],
    ra: usize,
    rb: usize,
) {
    let n = rb.saturating_sub(ra);
    if const { R >= 3 } && n >= 3 {
        let (a, rest) = ot[ra..].split_at_mut(1);
        let (b, c) = rest.split_at_mut(1);
        let p = [
            &sc[off[ra]..][..km],
            &sc[off[ra + 1]..][..km],
            &sc[off[ra + 2]..][..km],
        ];
        let mut o = [&mut *a[0], &mut *b[0], &mut *c[0]];
        diag_axpy_rows::<S, L, BC, 3>(vx, &p, km, vt, lg, &mut o);
    } else if const { R >= 2 } && n == 2 {
        let (a, b) = ot[ra..].split_at_mut(1);
        let p = [&sc[off[ra]..][..km], &sc[off[ra + 1]..][..km]];
        diag_axpy_rows::<S, L, BC, 2>(vx, &p, km, vt, lg, &mut [&mut *a[0], &mut *b[0]]);
    } else if n == 1 {
        let p = [&sc[off[ra]..][..km]];
        diag_axpy_rows::<S, L, BC, 1>(vx, &p, km, vt, lg, &mut [&mut *ot[ra]]);
    }
}

/// Two disjoint `n`-slot windows of `s`, at `i < j`.
#[inline(always)]
fn two<const L: usize>(
    s: &mut [[f32; L]],
    i: usize,
    j: usize,
    n: usize,
) -> (&mut [[f32; L]], &mut [[f32; L]]) {
    let (a, b) = s.split_at_mut(j);
    (&mut a[i..][..n], &mut b[..n])
}

/// Three disjoint slot windows of one buffer.
type Slots3<'a, const L: usize> = (&'a mut [[f32; L]], &'a mut [[f32; L]], &'a mut [[f32; L]]);

/// Three disjoint `n`-slot windows of `s`, at increasing offsets.
#[inline(always)]
fn three<const L: usize>(s: &mut [[f32; L]], at: [usize; 3], n: usize) -> Slots3<'_, L> {
    let (a, rest) = s.split_at_mut(at[1]);
    let (b, c) = rest.split_at_mut(at[2] - at[1]);
    (&mut a[at[0]..][..n], &mut b[..n], &mut c[..n])
}
