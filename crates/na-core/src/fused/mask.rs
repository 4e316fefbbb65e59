//! Masked slots: how a tile removes the (slot, lane) pairs outside a lane's
//! window without letting their values reach it.

// Lane loops index several `[f32; L]` arrays with the same `l`: that is the
// SIMD lane, and writing it as an index is what lets them vectorise.
#![allow(clippy::needless_range_loop)]

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
//   rows too (`*_masked` in `micro.rs`), which agree with the fast ones bit
//   for bit on finite rows. The check is once per tile, the redo only runs
//   on inputs with infinities or NaN, and tiles without masked slots (the
//   common sliding-window case) need neither.

/// Masked logits become `-inf` (`mask`: `1` where the slot is attended).
#[inline(always)]
pub(crate) fn mask_logits<const L: usize>(s: &mut [[f32; L]], mask: &[[f32; L]]) {
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
pub(crate) fn mask_weights<const L: usize>(s: &mut [[f32; L]], mask: &[[f32; L]]) {
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
pub(crate) fn lanes_finite<const L: usize>(acc: &[[f32; L]], n: usize) -> bool {
    let mut z = [0.0f32; L];
    for a in acc {
        for l in 0..L {
            z[l] += a[l] * 0.0;
        }
    }
    z[..n].iter().all(|&x| x == 0.0)
}
