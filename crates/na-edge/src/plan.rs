//! [`Plan`]: the exact arena, the map sizes and the multiply-adds of one
//! model at one input size, computed before any work.
//!
//! # Arena layout
//!
//! The arena is `&mut [f32]` of [`Plan::arena_len`] values, cut into four
//! consecutive regions:
//!
//! 1. `wrow` ([`Plan::wrow_len`]): one weight row as f32 (a linear layer's
//!    row converted from f16, or a convolution's row reordered to
//!    `(ky, kx, cin)`); the longest input width of any layer.
//! 2. `rpb` ([`Plan::rpb_len`]): an f16 blob's relative positional bias
//!    converted to f32, `[heads, 2k-1, 2k-1]` of the widest level.
//! 3. `x` ([`Plan::x_len`]): the residual stream `[H_i · W_i, C_i]`
//!    (tokens × channels, NHWC with batch 1) of the largest level.
//! 4. `work` ([`Plan::work_len`]): the largest of
//!    - the first stem convolution's output `[H_0 · W_0, E/2]`;
//!    - per block, `Np · C` (norm1's output zero-padded to `Hp × Wp =
//!      max(H, k·d) × max(W, k·d)` tokens, then the attention output, then
//!      norm2's output) followed by the larger of `3 · Np · C +` the
//!      operator's scratch ([`na_core::fused::forward_scratch_len`]; q, k and
//!      v, `[Np, heads, C/heads]` each) and `N · hidden` (the MLP's hidden
//!      activations);
//!    - each downsampler's output `[H_{i+1} · W_{i+1}, 2 C_i]`;
//!    - the pooled features `[C_last]`.
//!
//! Every value of the arena is written before it is read, so its contents
//! on entry (NaN, garbage) never change the result.

use na_core::{Params, Problem};

use crate::config::{EdgeConfig, MAX_LEVELS};
use crate::error::EdgeError;

/// Map size and shape of one level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LevelPlan {
    /// Feature map height (tokens).
    pub height: usize,
    /// Feature map width (tokens).
    pub width: usize,
    /// Channels.
    pub channels: usize,
    /// Attention heads.
    pub heads: usize,
    /// Blocks whose map is zero-padded to `kernel × dilation`.
    pub padded_blocks: usize,
}

/// The memory plan and cost of one model at one input size.
///
/// ```
/// use na_edge::{Arch, EdgeConfig, Plan};
/// let cfg = EdgeConfig::new(Arch::Nat, 1, 8, &[1], &[2], &[16], 3, 4)?;
/// let plan = Plan::new(&cfg, 8, 8)?;
/// assert_eq!((plan.levels()[0].height, plan.levels()[0].width), (2, 2));
/// let mut arena = vec![0.0f32; plan.arena_len()];
/// assert_eq!(plan.arena_bytes(), 4 * arena.len());
/// # let _ = &mut arena;
/// # Ok::<(), na_edge::EdgeError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    cfg: EdgeConfig,
    height: usize,
    width: usize,
    stem0: (usize, usize),
    levels: [LevelPlan; MAX_LEVELS],
    wrow_len: usize,
    rpb_len: usize,
    x_len: usize,
    work_len: usize,
    attn_scratch: usize,
    macs: u64,
}

fn size_err(height: usize, width: usize) -> EdgeError {
    EdgeError::ImageSize {
        height,
        width,
        reason: "the activation sizes overflow usize",
    }
}

/// Output side of a 3×3 convolution with padding 1.
pub(crate) fn conv_out(n: usize, stride: usize) -> usize {
    (n - 1) / stride + 1
}

/// The neighborhood-attention problem of one block on a (padded) `hp × wp` map.
pub(crate) fn attn_problem(
    hp: usize,
    wp: usize,
    heads: usize,
    c: usize,
    k: usize,
    d: usize,
) -> Result<Problem, EdgeError> {
    let params = Params::new(&[k, k])?.with_dilation(&[d, d])?;
    Ok(Problem::new(
        1,
        &[hp, wp],
        heads,
        c / heads,
        c / heads,
        params,
    )?)
}

impl Plan {
    /// Plans `cfg` for one `in_chans × height × width` image.
    ///
    /// # Errors
    ///
    /// The configuration's [`EdgeConfig::validate`] errors;
    /// [`EdgeError::ImageSize`] for a zero side or sizes whose arithmetic
    /// overflows; [`EdgeError::Attention`] when the operator refuses a block.
    pub fn new(cfg: &EdgeConfig, height: usize, width: usize) -> Result<Self, EdgeError> {
        cfg.validate()?;
        if height == 0 || width == 0 {
            return Err(EdgeError::ImageSize {
                height,
                width,
                reason: "both sides must be at least 1",
            });
        }
        let ovf = || size_err(height, width);
        let mul = |v: &[usize]| -> Result<usize, EdgeError> {
            v.iter()
                .try_fold(1usize, |a, &x| a.checked_mul(x))
                .ok_or_else(ovf)
        };
        let mut macs: u64 = 0;
        let mut add = |v: &[usize]| -> Result<(), EdgeError> {
            let m = v
                .iter()
                .try_fold(1u64, |a, &x| a.checked_mul(x as u64))
                .ok_or_else(ovf)?;
            macs = macs.checked_add(m).ok_or_else(ovf)?;
            Ok(())
        };
        let (e, cin, k) = (cfg.embed_dim, cfg.in_chans, cfg.kernel_size);
        let [s0, s1] = cfg.stem_strides;
        let (h0, w0) = (conv_out(height, s0), conv_out(width, s0));
        let (mut h, mut w) = (conv_out(h0, s1), conv_out(w0, s1));
        add(&[h0, w0, e / 2, cin, 9])?;
        add(&[h, w, e, e / 2, 9])?;
        let mut wrow = (cin * 9).max(e / 2 * 9).max(cfg.num_features());
        let mut rpb = 0;
        let mut x_len = 0;
        let mut work = mul(&[h0, w0, e / 2])?.max(cfg.num_features());
        let mut attn_scratch = 0;
        let mut levels = [LevelPlan::default(); MAX_LEVELS];
        for (i, lp) in levels.iter_mut().enumerate().take(cfg.levels) {
            let (c, heads, hid) = (cfg.dim(i), cfg.num_heads[i], cfg.mlp_hidden[i]);
            let n = mul(&[h, w])?;
            x_len = x_len.max(mul(&[n, c])?);
            wrow = wrow.max(c).max(hid);
            rpb = rpb.max(mul(&[heads, 2 * k - 1, 2 * k - 1])?);
            let mut padded = 0;
            for j in 0..cfg.depths[i] {
                let kd = k * cfg.dilations[i][j];
                let (hp, wp) = (h.max(kd), w.max(kd));
                padded += usize::from((hp, wp) != (h, w));
                let np = mul(&[hp, wp])?;
                let p = attn_problem(hp, wp, heads, c, k, cfg.dilations[i][j])?;
                let scr = na_core::fused::forward_scratch_len(&p);
                attn_scratch = attn_scratch.max(scr);
                let s1 = mul(&[np, c])?;
                let s2 = mul(&[3, np, c])?
                    .checked_add(scr)
                    .ok_or_else(ovf)?
                    .max(mul(&[n, hid])?);
                work = work.max(s1.checked_add(s2).ok_or_else(ovf)?);
                add(&[np, c, 3 * c])?;
                add(&[2, np, c, k * k])?;
                add(&[n, c, c])?;
                add(&[2, n, c, hid])?;
            }
            *lp = LevelPlan {
                height: h,
                width: w,
                channels: c,
                heads,
                padded_blocks: padded,
            };
            if i + 1 < cfg.levels {
                let (h2, w2) = (conv_out(h, 2), conv_out(w, 2));
                add(&[h2, w2, 2 * c, c, 9])?;
                work = work.max(mul(&[h2, w2, 2 * c])?);
                wrow = wrow.max(mul(&[c, 9])?);
                (h, w) = (h2, w2);
            }
        }
        add(&[cfg.num_features(), cfg.num_classes])?;
        // The whole arena must be addressable in bytes.
        wrow.checked_add(rpb)
            .and_then(|t| t.checked_add(x_len))
            .and_then(|t| t.checked_add(work))
            .filter(|t| t.checked_mul(4).is_some())
            .ok_or_else(ovf)?;
        Ok(Plan {
            cfg: *cfg,
            height,
            width,
            stem0: (h0, w0),
            levels,
            wrow_len: wrow,
            rpb_len: rpb,
            x_len,
            work_len: work,
            attn_scratch,
            macs,
        })
    }

    /// The configuration this plan is for.
    pub fn config(&self) -> &EdgeConfig {
        &self.cfg
    }

    /// Input image height.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Input image width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Values of the input image: `in_chans · height · width` (layout `[in_chans, H, W]`).
    pub fn input_len(&self) -> usize {
        self.cfg.in_chans * self.height * self.width
    }

    /// Values of the output: [`EdgeConfig::output_len`].
    pub fn output_len(&self) -> usize {
        self.cfg.output_len()
    }

    /// Exact length of the arena in f32 values: the sum of the four
    /// regions of the module docs. Inference needs at least this many.
    ///
    /// The attention operator's share depends on the SIMD ISA `na-core`
    /// picks for the running machine (and its `std` feature), so make the
    /// plan on the target that runs the model.
    pub fn arena_len(&self) -> usize {
        self.wrow_len + self.rpb_len + self.x_len + self.work_len
    }

    /// [`Plan::arena_len`] in bytes.
    pub fn arena_bytes(&self) -> usize {
        4 * self.arena_len()
    }

    /// Length of the weight-row region.
    pub fn wrow_len(&self) -> usize {
        self.wrow_len
    }

    /// Length of the bias-conversion region.
    pub fn rpb_len(&self) -> usize {
        self.rpb_len
    }

    /// Length of the residual-stream region.
    pub fn x_len(&self) -> usize {
        self.x_len
    }

    /// Length of the work region.
    pub fn work_len(&self) -> usize {
        self.work_len
    }

    /// The largest scratch (f32 values) the attention operator needs in
    /// any block (part of the work region).
    pub fn attention_scratch_len(&self) -> usize {
        self.attn_scratch
    }

    /// Multiply-adds of one image: convolutions, linear layers (`qkv` on the
    /// padded map), and the two attention products `2 · Np · C · k²` per
    /// block; norms, activations and the softmax are not counted (the std
    /// model's `analyze` count).
    pub fn macs(&self) -> u64 {
        self.macs
    }

    /// Output size of the first stem convolution.
    pub fn stem_size(&self) -> (usize, usize) {
        self.stem0
    }

    /// Per-level map sizes.
    pub fn levels(&self) -> &[LevelPlan] {
        &self.levels[..self.cfg.levels]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;

    /// MACs of a one-level NAT counted by hand.
    #[test]
    fn macs_match_a_hand_count() {
        // in 1, E 4, one level of 1 block, 2 heads, hidden 8, k 3, 3 classes,
        // stem [1, 2] on an 8×8 image.
        let cfg = EdgeConfig::new(Arch::Nat, 1, 4, &[1], &[2], &[8], 3, 3)
            .unwrap()
            .with_stem_strides([1, 2])
            .unwrap();
        let plan = Plan::new(&cfg, 8, 8).unwrap();
        // conv0: 8×8 out, 2 ch, 1 in, 9 taps = 1152
        // conv1: 4×4 out, 4 ch, 2 in, 9 taps = 1152
        // qkv: 16 tokens · 4 · 12 = 768; attention: 2 · 16 · 4 · 9 = 1152
        // proj: 16 · 4 · 4 = 256; mlp: 2 · 16 · 4 · 8 = 1024; head: 4 · 3 = 12
        assert_eq!(plan.macs(), 1152 + 1152 + 768 + 1152 + 256 + 1024 + 12);
        assert_eq!(plan.levels()[0].height, 4);
        assert_eq!(plan.stem_size(), (8, 8));

        // Dilation 2 pads the 4×4 map to 6×6 (36 tokens) for qkv and attention.
        let cfg = cfg.with_dilations(0, &[2]).unwrap();
        let plan = Plan::new(&cfg, 8, 8).unwrap();
        assert_eq!(
            plan.macs(),
            1152 + 1152 + 36 * 48 + 2 * 36 * 4 * 9 + 256 + 1024 + 12
        );
        assert_eq!(plan.levels()[0].padded_blocks, 1);
    }

    #[test]
    fn zero_sides_are_refused() {
        let cfg = EdgeConfig::new(Arch::Nat, 1, 4, &[1], &[2], &[8], 3, 3).unwrap();
        assert!(matches!(
            Plan::new(&cfg, 0, 8),
            Err(EdgeError::ImageSize { height: 0, .. })
        ));
    }
}
