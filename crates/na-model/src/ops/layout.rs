//! Moves without arithmetic (padding, cropping, patch merging, layout
//! changes) and the token mean, each with its backward. Outputs are written
//! in full into caller-provided slices.

use rayon::prelude::*;

use super::{check_len, numel, shape_err, Bhw};
use crate::error::Result;

/// Zero-pads `x [B, H, W, C]` at the end of H and W into `out [B, hp, wp,
/// C]`. Its backward is [`crop_hw`] of the gradient back to `H × W`.
pub fn pad_hw(
    x: &[f32],
    [b, h, w]: Bhw,
    c: usize,
    [hp, wp]: [usize; 2],
    out: &mut [f32],
) -> Result<()> {
    check_len("pad_hw", "input", x.len(), numel("pad_hw", &[b, h, w, c])?)?;
    if hp < h || wp < w {
        return Err(shape_err(format!(
            "pad_hw: {h}x{w} cannot be padded to {hp}x{wp}"
        )));
    }
    check_len(
        "pad_hw",
        "output",
        out.len(),
        numel("pad_hw", &[b, hp, wp, c])?,
    )?;
    if out.is_empty() {
        return Ok(());
    }
    out.par_chunks_mut(wp * c).enumerate().for_each(|(r, o)| {
        let (bi, y) = (r / hp, r % hp);
        if y < h {
            o[..w * c].copy_from_slice(&x[((bi * h + y) * w) * c..][..w * c]);
            o[w * c..].fill(0.0);
        } else {
            o.fill(0.0);
        }
    });
    Ok(())
}

/// Keeps the first `hc × wc` rows and columns of `x [B, H, W, C]` in `out`.
/// Its backward is [`pad_hw`] of the gradient back to `H × W`.
pub fn crop_hw(
    x: &[f32],
    [b, h, w]: Bhw,
    c: usize,
    [hc, wc]: [usize; 2],
    out: &mut [f32],
) -> Result<()> {
    check_len(
        "crop_hw",
        "input",
        x.len(),
        numel("crop_hw", &[b, h, w, c])?,
    )?;
    if hc > h || wc > w {
        return Err(shape_err(format!(
            "crop_hw: {h}x{w} cannot be cropped to {hc}x{wc}"
        )));
    }
    check_len("crop_hw", "output", out.len(), b * hc * wc * c)?;
    if out.is_empty() {
        return Ok(());
    }
    out.par_chunks_mut(wc * c).enumerate().for_each(|(r, o)| {
        let (bi, y) = (r / hc, r % hc);
        o.copy_from_slice(&x[((bi * h + y) * w) * c..][..wc * c]);
    });
    Ok(())
}

/// Quadrant order of patch merging: `(dy, dx)`.
const QUADRANTS: [(usize, usize); 4] = [(0, 0), (1, 0), (0, 1), (1, 1)];

/// Swin patch merging of `x [B, H, W, C]` (odd sizes zero-padded at the end)
/// into `out [B, ceil(H/2), ceil(W/2), 4C]`, quadrants in the order
/// `x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]`. Returns
/// the output's `[B, Ho, Wo]`.
pub fn patch_merge(x: &[f32], [b, h, w]: Bhw, c: usize, out: &mut [f32]) -> Result<Bhw> {
    check_len(
        "patch_merge",
        "input",
        x.len(),
        numel("patch_merge", &[b, h, w, c])?,
    )?;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    check_len(
        "patch_merge",
        "output",
        out.len(),
        numel("patch_merge", &[b, ho, wo, 4, c])?,
    )?;
    if c > 0 {
        out.par_chunks_mut(4 * c).enumerate().for_each(|(r, o)| {
            let (bi, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
            for (qi, (dy, dx)) in QUADRANTS.iter().enumerate() {
                let (y, xx) = (2 * oy + dy, 2 * ox + dx);
                let o = &mut o[qi * c..][..c];
                if y < h && xx < w {
                    o.copy_from_slice(&x[((bi * h + y) * w + xx) * c..][..c]);
                } else {
                    o.fill(0.0);
                }
            }
        });
    }
    Ok([b, ho, wo])
}

/// Backward of [`patch_merge`]: `dy [B, ceil(H/2), ceil(W/2), 4C]` back to
/// `dx [B, H, W, C]` (`dims` is the forward's input `[B, H, W]`; the padded
/// positions' gradients are dropped).
pub fn patch_merge_backward(dy: &[f32], [b, h, w]: Bhw, c: usize) -> Result<Vec<f32>> {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    check_len(
        "patch_merge",
        "dy",
        dy.len(),
        numel("patch_merge", &[b, ho, wo, 4, c])?,
    )?;
    let mut dx = vec![0.0; b * h * w * c];
    if c > 0 {
        dx.par_chunks_mut(c).enumerate().for_each(|(p, d)| {
            let (bi, y, xx) = (p / (h * w), (p / w) % h, p % w);
            let qi = QUADRANTS
                .iter()
                .position(|&q| q == (y % 2, xx % 2))
                .unwrap_or(0);
            let r = (bi * ho + y / 2) * wo + xx / 2;
            d.copy_from_slice(&dy[(r * 4 + qi) * c..][..c]);
        });
    }
    Ok(dx)
}

fn tokens(layer: &str, len: usize, b: usize, c: usize) -> Result<usize> {
    let bc = numel(layer, &[b, c])?;
    if bc == 0 || !len.is_multiple_of(bc) {
        return Err(shape_err(format!(
            "{layer}: {len} values are not [{b}, T, {c}]"
        )));
    }
    Ok(len / bc)
}

/// Mean over the middle axes: `x [B, T, C]` (any `[B, .., C]` flattened) →
/// `out [B, C]`.
pub fn mean_tokens(x: &[f32], b: usize, c: usize, out: &mut [f32]) -> Result<()> {
    let t = tokens("mean_tokens", x.len(), b, c)?;
    check_len("mean_tokens", "output", out.len(), b * c)?;
    let per = t * c;
    out.par_chunks_mut(c).enumerate().for_each(|(bi, o)| {
        o.fill(0.0);
        for row in x[bi * per..][..per].chunks(c) {
            o.iter_mut().zip(row).for_each(|(o, v)| *o += v);
        }
        o.iter_mut().for_each(|o| *o /= t.max(1) as f32);
    });
    Ok(())
}

/// Backward of [`mean_tokens`]: `dy [B, C]` → `dx [B, T, C]`, each token
/// receiving `dy / T`.
pub fn mean_tokens_backward(dy: &[f32], b: usize, t: usize, c: usize) -> Result<Vec<f32>> {
    check_len(
        "mean_tokens",
        "dy",
        dy.len(),
        numel("mean_tokens", &[b, c])?,
    )?;
    let mut dx = vec![0.0f32; numel("mean_tokens", &[b, t, c])?];
    if c > 0 && t > 0 {
        let inv = 1.0 / t as f32;
        dx.par_chunks_mut(t * c).enumerate().for_each(|(bi, d)| {
            let g = &dy[bi * c..][..c];
            for row in d.chunks_mut(c) {
                row.iter_mut().zip(g).for_each(|(o, v)| *o = v * inv);
            }
        });
    }
    Ok(dx)
}

/// `[B, C, H, W]` → `[B, H, W, C]` into `out`.
pub fn nchw_to_nhwc(x: &[f32], [b, c, h, w]: [usize; 4], out: &mut [f32]) -> Result<()> {
    let n = numel("nchw_to_nhwc", &[b, c, h, w])?;
    check_len("nchw_to_nhwc", "input", x.len(), n)?;
    check_len("nchw_to_nhwc", "output", out.len(), n)?;
    let hw = h * w;
    if hw > 0 && c > 0 {
        out.par_chunks_mut(hw * c).enumerate().for_each(|(bi, o)| {
            let src = &x[bi * c * hw..][..c * hw];
            for (p, row) in o.chunks_mut(c).enumerate() {
                for (ci, v) in row.iter_mut().enumerate() {
                    *v = src[ci * hw + p];
                }
            }
        });
    }
    Ok(())
}

/// `[B, H, W, C]` → `[B, C, H, W]` into `out`.
pub fn nhwc_to_nchw(x: &[f32], [b, h, w, c]: [usize; 4], out: &mut [f32]) -> Result<()> {
    let n = numel("nhwc_to_nchw", &[b, h, w, c])?;
    check_len("nhwc_to_nchw", "input", x.len(), n)?;
    check_len("nhwc_to_nchw", "output", out.len(), n)?;
    let hw = h * w;
    if hw > 0 && c > 0 {
        out.par_chunks_mut(hw * c).enumerate().for_each(|(bi, o)| {
            let src = &x[bi * c * hw..][..c * hw];
            for (ci, plane) in o.chunks_mut(hw).enumerate() {
                for (p, v) in plane.iter_mut().enumerate() {
                    *v = src[p * c + ci];
                }
            }
        });
    }
    Ok(())
}
