//! [`EdgeModel`]: a NAT/DiNAT classifier over a borrowed, validated blob;
//! inference writes only into the caller's arena.
//!
//! The walk is the std model's (`na-model`'s `net.rs`): stem convolutions →
//! `patch_embed.norm` → per level the blocks `x + γ1 ⊙ proj(NA(qkv(norm1
//! x)))`, `x + γ2 ⊙ fc2(GELU(fc1(norm2 x)))` → convolutional downsampler +
//! norm → final norm → token mean → head. Maps smaller than `kernel ×
//! dilation` are zero-padded after `norm1` (at the end of each axis) and
//! cropped before `proj`.

use na_core::Inputs;

use crate::error::EdgeError;
use crate::format::{Blob, TensorData};
use crate::ops::{conv3x3, gelu, layer_norm, layer_norm_row, linear, mean_rows, InLayout};
use crate::plan::{attn_problem, conv_out, Plan};
use crate::EdgeConfig;

/// A NAT/DiNAT classifier whose weights are borrowed from a blob (`'w`).
#[derive(Clone, Copy, Debug)]
pub struct EdgeModel<'w> {
    blob: Blob<'w>,
}

/// Walks the blob's tensors in canonical order.
struct Cursor<'b, 'w> {
    blob: &'b Blob<'w>,
    next: usize,
}

impl<'w> Cursor<'_, 'w> {
    fn take(&mut self) -> Result<TensorData<'w>, EdgeError> {
        let t = self.blob.tensor(self.next)?;
        self.next += 1;
        Ok(t.data)
    }
}

/// The arena's regions (see [`crate::plan`]).
struct Regions<'a> {
    wrow: &'a mut [f32],
    rpb: &'a mut [f32],
    x: &'a mut [f32],
    work: &'a mut [f32],
}

impl<'w> EdgeModel<'w> {
    /// Parses and validates `bytes` ([`Blob::parse`]); the weights stay
    /// where they are.
    pub fn new(bytes: &'w [u8]) -> Result<Self, EdgeError> {
        Ok(EdgeModel {
            blob: Blob::parse(bytes)?,
        })
    }

    /// A model over an already parsed blob.
    pub fn from_blob(blob: Blob<'w>) -> Self {
        EdgeModel { blob }
    }

    /// The configuration stored in the blob.
    pub fn config(&self) -> &EdgeConfig {
        self.blob.config()
    }

    /// The blob.
    pub fn blob(&self) -> &Blob<'w> {
        &self.blob
    }

    /// The plan of this model for an `height × width` image ([`Plan::new`]).
    pub fn plan(&self, height: usize, width: usize) -> Result<Plan, EdgeError> {
        Plan::new(self.config(), height, width)
    }

    /// Classifies one image, with no allocation.
    ///
    /// # Arguments
    ///
    /// - `plan`: made for this model's configuration and the image size.
    /// - `image`: `[in_chans, height, width]` row-major (the std model's
    ///   `[1, in_chans, H, W]` input of batch 1), already normalised.
    /// - `arena`: at least [`Plan::arena_len`] f32 values; its contents on
    ///   entry do not matter and are overwritten.
    /// - `logits`: `[num_classes]` (the pooled features `[C]` when the
    ///   model has no head), [`Plan::output_len`] values.
    ///
    /// # Errors
    ///
    /// [`EdgeError::PlanMismatch`], [`EdgeError::InputLength`],
    /// [`EdgeError::OutputLength`], [`EdgeError::ArenaTooSmall`], all
    /// checked before any work.
    pub fn logits(
        &self,
        plan: &Plan,
        image: &[f32],
        arena: &mut [f32],
        logits: &mut [f32],
    ) -> Result<(), EdgeError> {
        let cfg = self.config();
        if plan.config() != cfg {
            return Err(EdgeError::PlanMismatch);
        }
        if image.len() != plan.input_len() {
            return Err(EdgeError::InputLength {
                expected: plan.input_len(),
                got: image.len(),
                chans: cfg.in_chans,
                height: plan.height(),
                width: plan.width(),
            });
        }
        if logits.len() != plan.output_len() {
            return Err(EdgeError::OutputLength {
                expected: plan.output_len(),
                got: logits.len(),
            });
        }
        let needed = plan.arena_len();
        if arena.len() < needed {
            return Err(EdgeError::ArenaTooSmall {
                needed,
                got: arena.len(),
            });
        }
        let (wrow, rest) = arena[..needed].split_at_mut(plan.wrow_len());
        let (rpb, rest) = rest.split_at_mut(plan.rpb_len());
        let (x, work) = rest.split_at_mut(plan.x_len());
        let mut r = Regions { wrow, rpb, x, work };
        let mut cur = Cursor {
            blob: &self.blob,
            next: 0,
        };
        self.run(plan, image, &mut r, &mut cur, logits)
    }

    fn run(
        &self,
        plan: &Plan,
        image: &[f32],
        r: &mut Regions<'_>,
        cur: &mut Cursor<'_, 'w>,
        logits: &mut [f32],
    ) -> Result<(), EdgeError> {
        let cfg = self.config();
        let (e, cin) = (cfg.embed_dim, cfg.in_chans);
        let [s0, s1] = cfg.stem_strides;
        let (h0, w0) = plan.stem_size();
        // Stem: conv 3×3/s0 (cin → E/2) into work, conv 3×3/s1 (→ E) into x.
        let (w, b) = (cur.take()?, cur.take()?);
        let y0 = &mut r.work[..h0 * w0 * (e / 2)];
        let dims = [plan.height(), plan.width(), cin];
        conv3x3(
            image,
            InLayout::Chw,
            dims,
            s0,
            &w,
            Some(&b),
            e / 2,
            r.wrow,
            y0,
        );
        let (w, b) = (cur.take()?, cur.take()?);
        let (mut h, mut wd) = (conv_out(h0, s1), conv_out(w0, s1));
        let dims = [h0, w0, e / 2];
        conv3x3(y0, InLayout::Hwc, dims, s1, &w, Some(&b), e, r.wrow, r.x);
        let (g, b) = (cur.take()?, cur.take()?);
        layer_norm(&mut r.x[..h * wd * e], e, &g, &b);
        for i in 0..cfg.levels {
            let c = cfg.dim(i);
            for j in 0..cfg.depths[i] {
                self.block(r, cur, [h, wd], i, cfg.dilations[i][j])?;
            }
            if i + 1 < cfg.levels {
                let wt = cur.take()?;
                let (h2, w2) = (conv_out(h, 2), conv_out(wd, 2));
                let out = &mut r.work[..h2 * w2 * 2 * c];
                conv3x3(
                    r.x,
                    InLayout::Hwc,
                    [h, wd, c],
                    2,
                    &wt,
                    None,
                    2 * c,
                    r.wrow,
                    out,
                );
                let (g, b) = (cur.take()?, cur.take()?);
                layer_norm(out, 2 * c, &g, &b);
                r.x[..out.len()].copy_from_slice(out);
                (h, wd) = (h2, w2);
            }
        }
        let f = cfg.num_features();
        let (g, b) = (cur.take()?, cur.take()?);
        let x = &mut r.x[..h * wd * f];
        layer_norm(x, f, &g, &b);
        let pooled = &mut r.work[..f];
        mean_rows(x, f, pooled);
        if cfg.num_classes == 0 {
            logits.copy_from_slice(pooled);
            return Ok(());
        }
        let (w, b) = (cur.take()?, cur.take()?);
        let nc = cfg.num_classes;
        linear(
            pooled,
            1,
            f,
            |r| r,
            &w,
            Some(&b),
            nc,
            r.wrow,
            |_, o, v| logits[o] = v,
        );
        Ok(())
    }

    /// One transformer block of level `level` on the `[h, w]` map in `r.x`.
    fn block(
        &self,
        r: &mut Regions<'_>,
        cur: &mut Cursor<'_, 'w>,
        [h, w]: [usize; 2],
        level: usize,
        dilation: usize,
    ) -> Result<(), EdgeError> {
        let cfg = self.config();
        let (c, heads, hid, k) = (
            cfg.dim(level),
            cfg.num_heads[level],
            cfg.mlp_hidden[level],
            cfg.kernel_size,
        );
        let (n1g, n1b) = (cur.take()?, cur.take()?);
        let (qkv_w, qkv_b, rpb_t) = (cur.take()?, cur.take()?, cur.take()?);
        let (proj_w, proj_b) = (cur.take()?, cur.take()?);
        let (n2g, n2b) = (cur.take()?, cur.take()?);
        let (fc1_w, fc1_b, fc2_w, fc2_b) = (cur.take()?, cur.take()?, cur.take()?, cur.take()?);
        let gammas = if cfg.layer_scale {
            Some((cur.take()?, cur.take()?))
        } else {
            None
        };
        let kd = k * dilation;
        let (hp, wp) = (h.max(kd), w.max(kd));
        let (n, np) = (h * w, hp * wp);
        let x = &mut r.x[..n * c];
        let (s1, s2) = r.work.split_at_mut(np * c);
        // norm1(x), zero-padded at the end of each axis to hp × wp: (Np, C)
        for py in 0..hp {
            for px in 0..wp {
                let row = &mut s1[(py * wp + px) * c..][..c];
                if py < h && px < w {
                    row.copy_from_slice(&x[(py * w + px) * c..][..c]);
                    layer_norm_row(row, &n1g, &n1b);
                } else {
                    row.fill(0.0);
                }
            }
        }
        // qkv: q | k | v, each (Np, heads, C/heads)
        let (q, rest) = s2.split_at_mut(np * c);
        let (kk, rest) = rest.split_at_mut(np * c);
        let (v, scratch) = rest.split_at_mut(np * c);
        linear(
            s1,
            np,
            c,
            |t| t,
            &qkv_w,
            Some(&qkv_b),
            3 * c,
            r.wrow,
            |t, o, y| {
                let (part, col) = (o / c, o % c);
                let dst = match part {
                    0 => &mut q[..],
                    1 => &mut kk[..],
                    _ => &mut v[..],
                };
                dst[t * c + col] = y;
            },
        );
        let rpb: &[f32] = match rpb_t {
            TensorData::F32(s) => s,
            TensorData::F16(_) | TensorData::I8 { .. } => {
                let len = rpb_t.len();
                rpb_t.copy_into(0, &mut r.rpb[..len]);
                &r.rpb[..len]
            }
        };
        let p = attn_problem(hp, wp, heads, c, k, dilation)?;
        let inputs = Inputs {
            query: &*q,
            key: &*kk,
            value: &*v,
            rpb: Some(rpb),
        };
        // The attention output (Np, C) replaces norm1's output.
        na_core::fused::forward_with_scratch(&p, inputs, s1, None, scratch)?;
        // x += γ1 ⊙ proj(crop(a))
        let g1 = gammas.as_ref().map(|g| &g.0);
        let crop = |t: usize| (t / w) * wp + t % w;
        linear(
            s1,
            n,
            c,
            crop,
            &proj_w,
            Some(&proj_b),
            c,
            r.wrow,
            |t, o, y| {
                x[t * c + o] += g1.map_or(y, |g| g.get(o) * y);
            },
        );
        // norm2(x): (N, C) in s1
        let y2 = &mut s1[..n * c];
        y2.copy_from_slice(x);
        layer_norm(y2, c, &n2g, &n2b);
        // GELU(fc1): (N, hidden) in s2
        let hbuf = &mut s2[..n * hid];
        linear(
            y2,
            n,
            c,
            |t| t,
            &fc1_w,
            Some(&fc1_b),
            hid,
            r.wrow,
            |t, o, y| {
                hbuf[t * hid + o] = gelu(y);
            },
        );
        // x += γ2 ⊙ fc2(h)
        let g2 = gammas.as_ref().map(|g| &g.1);
        linear(
            hbuf,
            n,
            hid,
            |t| t,
            &fc2_w,
            Some(&fc2_b),
            c,
            r.wrow,
            |t, o, y| {
                x[t * c + o] += g2.map_or(y, |g| g.get(o) * y);
            },
        );
        Ok(())
    }
}
