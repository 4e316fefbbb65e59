//! 2D convolutions of channels-last maps: im2col, then the fused product of
//! [`super::gemm`].

use core::ops::Range;

use rayon::prelude::*;

use super::gemm::{add_col_sums, matmul, matmul_wt_fused, Mat, Threads};
use super::{check_len, check_slot, numel, shape_err, two_mut, Bhw, Weights};
use crate::error::Result;

/// A 2D convolution of `[B, H, W, cin]` with a PyTorch-layout weight
/// `[cout, cin, kh, kw]` (at `w` in the parameter buffer), zero padding
/// `pad` on every side and stride `stride`: output `[B, Ho, Wo, cout]`,
/// `Ho = (H + 2 pad - kh) / stride + 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// The weight's range in the parameter buffer.
    pub w: Range<usize>,
    /// The bias's range, when the layer has one.
    pub b: Option<Range<usize>>,
}

impl Conv2d {
    /// Values per im2col row: `cin · kh · kw`.
    pub fn kk(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// The output's `[B, Ho, Wo]` for an input of `[B, H, W]`.
    pub fn out_dims(&self, [b, h, w]: Bhw) -> Result<Bhw> {
        if self.stride == 0 || self.kh == 0 || self.kw == 0 || self.cin == 0 {
            return Err(shape_err(format!("conv2d: invalid layer {self:?}")));
        }
        if h + 2 * self.pad < self.kh || w + 2 * self.pad < self.kw {
            return Err(shape_err(format!(
                "conv2d: input {h}x{w} (padding {}) is smaller than the {}x{} kernel",
                self.pad, self.kh, self.kw
            )));
        }
        Ok([
            b,
            (h + 2 * self.pad - self.kh) / self.stride + 1,
            (w + 2 * self.pad - self.kw) / self.stride + 1,
        ])
    }

    /// Checks the input and the slots; the output dims.
    pub fn check(&self, x_len: usize, dims: Bhw, p: &(impl Weights + ?Sized)) -> Result<Bhw> {
        let what = "conv2d";
        let od = self.out_dims(dims)?;
        check_len(
            what,
            "input",
            x_len,
            numel(what, &[dims[0], dims[1], dims[2], self.cin])?,
        )?;
        check_slot(
            what,
            "weight",
            &self.w,
            numel(what, &[self.cout, self.kk()])?,
            p,
        )?;
        if let Some(b) = &self.b {
            check_slot(what, "bias", b, self.cout, p)?;
        }
        numel(what, &[od[0], od[1], od[2], self.kk().max(self.cout)])?;
        Ok(od)
    }

    /// The kernel taps of output pixel `(oy, ox)` that fall inside an
    /// `h × w` map: `(ky, kx, iy, ix)`.
    fn taps(
        &self,
        oy: usize,
        ox: usize,
        h: usize,
        w: usize,
    ) -> impl Iterator<Item = [usize; 4]> + '_ {
        (0..self.kh).flat_map(move |ky| {
            let iy = (oy * self.stride + ky).wrapping_sub(self.pad);
            (0..self.kw).filter_map(move |kx| {
                let ix = (ox * self.stride + kx).wrapping_sub(self.pad);
                (iy < h && ix < w).then_some([ky, kx, iy, ix])
            })
        })
    }

    /// The im2col matrix `[B·Ho·Wo, cin·kh·kw]` in the weight's
    /// `(cin, ky, kx)` order (zero where the window leaves the map), into
    /// `cols`.
    fn im2col(&self, x: &[f32], [_, h, w]: Bhw, [_, ho, wo]: Bhw, cols: &mut [f32]) {
        let (kk, cin) = (self.kk(), self.cin);
        cols.par_chunks_mut(kk).enumerate().for_each(|(r, row)| {
            row.fill(0.0);
            let (bi, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
            for [ky, kx, iy, ix] in self.taps(oy, ox, h, w) {
                let src = &x[((bi * h + iy) * w + ix) * cin..][..cin];
                for (ci, &v) in src.iter().enumerate() {
                    row[(ci * self.kh + ky) * self.kw + kx] = v;
                }
            }
        });
    }

    /// Forward into `y [B, Ho, Wo, cout]`, with `cols` (`B·Ho·Wo·kk`
    /// values) as the im2col scratch; returns `[B, Ho, Wo]`.
    pub fn forward(
        &self,
        p: &(impl Weights + ?Sized),
        x: &[f32],
        dims: Bhw,
        y: &mut [f32],
        cols: &mut [f32],
    ) -> Result<Bhw> {
        let od = self.check(x.len(), dims, p)?;
        let rows = od[0] * od[1] * od[2];
        let (kk, n) = (self.kk(), self.cout);
        check_len("conv2d", "output", y.len(), rows * n)?;
        check_len("conv2d", "im2col scratch", cols.len(), rows * kk)?;
        self.im2col(x, dims, od, cols);
        let b = self.b.clone().map(|r| p.get(&r));
        matmul_wt_fused(cols, p.get(&self.w), y, None, [rows, n, kk], |_, blk, _| {
            if let Some(b) = b {
                for row in blk.chunks_exact_mut(n) {
                    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
            }
        });
        Ok(od)
    }

    /// Backward: adds `dW` and `db` to `grads` (the parameters' layout);
    /// returns `dx [B, H, W, cin]` when `need_dx`. The im2col matrix is
    /// rebuilt from `x` rather than kept from the forward.
    pub fn backward(
        &self,
        p: &(impl Weights + ?Sized),
        x: &[f32],
        dims: Bhw,
        dy: &[f32],
        grads: &mut [f32],
        need_dx: bool,
    ) -> Result<Option<Vec<f32>>> {
        let od = self.check(x.len(), dims, p)?;
        let rows = od[0] * od[1] * od[2];
        let kk = self.kk();
        check_len("conv2d", "dy", dy.len(), rows * self.cout)?;
        check_len("conv2d", "gradient buffer", grads.len(), p.len())?;
        let dym = Mat::rm(dy, rows, self.cout);
        let mut cols = vec![0.0; rows * kk];
        self.im2col(x, dims, od, &mut cols);
        // (cout, kk) += (cout, rows) · (rows, kk)
        let colm = Mat::rm(&cols, rows, kk);
        match &self.b {
            Some(b) => {
                let (gw, gb) = two_mut(grads, self.w.clone(), b.clone())?;
                matmul(gw, dym.t(), colm, true, Threads::Pool);
                add_col_sums(gb, dy, self.cout);
            }
            None => matmul(
                &mut grads[self.w.clone()],
                dym.t(),
                colm,
                true,
                Threads::Pool,
            ),
        }
        if !need_dx {
            return Ok(None);
        }
        // (rows, kk) = (rows, cout) · (cout, kk), reusing the buffer.
        let mut dcols = cols;
        let wm = Mat::rm(p.get(&self.w), self.cout, kk);
        matmul(&mut dcols, dym, wm, false, Threads::Pool);
        let [_, h, wd] = dims;
        let (ho, wo, cin) = (od[1], od[2], self.cin);
        let mut dx = vec![0.0; x.len()];
        if !dx.is_empty() {
            // col2im, one batch element per task (no shared writes).
            dx.par_chunks_mut(h * wd * cin)
                .enumerate()
                .for_each(|(bi, dxb)| {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let row = &dcols[((bi * ho + oy) * wo + ox) * kk..][..kk];
                            for [ky, kx, iy, ix] in self.taps(oy, ox, h, wd) {
                                let dst = &mut dxb[(iy * wd + ix) * cin..][..cin];
                                for (ci, d) in dst.iter_mut().enumerate() {
                                    *d += row[(ci * self.kh + ky) * self.kw + kx];
                                }
                            }
                        }
                    }
                });
        }
        Ok(Some(dx))
    }
}
