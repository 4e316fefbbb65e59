//! Moving tiles in and out: rows read in place or widened from `f16`/`bf16`,
//! lane-major (transposed) tile loads and stores through 8x8 SIMD
//! transposes, and the per-line transposition of keys and values that the
//! sliding-window path reads.

// Lane loops index several `[f32; L]` arrays with the same `l`: that is the
// SIMD lane, and writing it as an index is what lets them vectorise.
#![allow(clippy::needless_range_loop)]

use crate::fused::geo::Geo;
use crate::fused::simd::Simd;
use crate::Element;

/// `u` rows of `width` elements starting at row `r0` of `src`, `step` rows
/// apart, as `(slice, stride)`: read in place for `f32` storage, widened into
/// `pack` otherwise.
#[inline(always)]
pub(crate) fn rows_of<'a, T: Element>(
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
pub(crate) fn load_lanes<T: Element, const L: usize>(
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
pub(crate) fn tile_step<const L: usize>(rows: &[usize], width: usize) -> Option<usize> {
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
pub(crate) fn load_tile<S: Simd, T: Element, const L: usize>(
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
pub(crate) fn store_tile<S: Simd, T: Element, const L: usize>(
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
pub(crate) fn transpose_line_k<S: Simd, const L: usize, T: Element>(
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
