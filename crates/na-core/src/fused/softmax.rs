//! The online softmax of a forward tile, and the vectorisable `exp` it and
//! the backward pass use.

// Lane loops index several `[f32; L]` arrays with the same `l`: that is the
// SIMD lane, and writing it as an index is what lets them vectorise.
#![allow(clippy::needless_range_loop)]

use super::simd::Arith;

/// One online-softmax step over a line's logits `sc` (made probabilities in
/// place): raise the running maximum `m`, rescale the running sum `lsum` and
/// the output accumulator `ot` to it.
#[inline(always)]
pub(crate) fn softmax_step<A: Arith, const L: usize>(
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

/// Inputs below this give `exp(x) = 0` (the smallest normal is `exp(-87.34)`).
pub(crate) const EXP_LO: f32 = -87.336_54;
/// Inputs above this are clamped (`exp(88.38)` is near `f32::MAX`).
pub(crate) const EXP_HI: f32 = 88.376_26;

/// `exp(x)` for one lane: Cody-Waite reduction `x = n ln2 + r`, a degree-7
/// polynomial for `exp(r)` on `|r| <= ln2/2` (Cephes `expf` coefficients,
/// within 2 ulp), and `2^n` built in the exponent bits.
///
/// Written without branches or saturating casts so that a loop over lanes
/// vectorises: `n` is read from the mantissa of `x log2(e) + 1.5 * 2^23`, and
/// inputs below `EXP_LO` (including `-inf`) are zeroed with a bit mask.
///
/// A NaN input gives NaN (a NaN logit must reach the softmax sum, as in a
/// dense softmax): the mask keeps every input that is not below `EXP_LO`.
#[inline(always)]
pub(crate) fn exp<A: Arith>(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(EXP_LO, EXP_HI);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = A::fma(n, -LN2_LO, A::fma(n, -LN2_HI, xc));
    let mut p = 1.987_569_1e-4f32;
    p = A::fma(p, r, 1.398_2e-3);
    p = A::fma(p, r, 8.333_452e-3);
    p = A::fma(p, r, 4.166_579_6e-2);
    p = A::fma(p, r, 1.666_666_5e-1);
    p = A::fma(p, r, 0.5);
    let e = A::fma(p, r * r, r) + 1.0;
    // The integer n sits in the low mantissa bits of t.
    let n_int = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let pow2 = f32::from_bits(n_int.wrapping_add(127) << 23);
    // Not `x >= EXP_LO`: that is false for NaN, which must pass.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    let keep = u32::from(!(x < EXP_LO)).wrapping_neg();
    f32::from_bits((e * pow2).to_bits() & keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::simd::Plain;

    #[test]
    fn exp_is_accurate_over_the_range_that_matters() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp::<Plain>(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst:e}");
        assert_eq!(exp::<Plain>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp::<Plain>(-1000.0), 0.0);
        assert_eq!(exp::<Plain>(0.0), 1.0);
        assert!(exp::<Plain>(f32::NAN).is_nan());
    }
}
