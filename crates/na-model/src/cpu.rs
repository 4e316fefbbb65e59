//! The CPU backend: `gemm` for convolutions (im2col) and linear layers,
//! `na-core`'s fused kernels for neighborhood attention, rayon for the rest.

use std::sync::{Arc, Mutex};

use na_core::{Inputs, Par, Params, Problem};
use rayon::prelude::*;

use crate::backend::{Backend, NaSpec, Tensor};
use crate::error::{ModelError, Result};

/// Rows per rayon task in the element-wise loops.
const ROWS_PER_TASK: usize = 64;

/// Buffers kept for reuse at most.
const POOL_MAX: usize = 48;

/// The CPU backend. Tensors live in `Vec<f32>`.
///
/// Buffers handed back with [`Backend::recycle`] are kept (up to
/// `POOL_MAX`) and reused by later operations, so a forward pass does not
/// map, fault in and zero fresh pages for every activation.
#[derive(Clone, Debug)]
pub struct Cpu {
    threads: usize,
    pool: Arc<Mutex<Vec<Vec<f32>>>>,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new(0)
    }
}

impl Cpu {
    /// A CPU backend using `threads` threads (0: one per logical core).
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        Cpu {
            threads,
            pool: Arc::default(),
        }
    }

    /// A zeroed buffer of `n` values, reusing a recycled one when one is
    /// large enough (the smallest such).
    fn alloc(&self, n: usize) -> Vec<f32> {
        let mut v = self.alloc_dirty(n);
        v.fill(0.0);
        v
    }

    /// A buffer of `n` values for an output that is written in full: a
    /// recycled buffer keeps its old (initialised) values, only a grown
    /// tail is zeroed.
    fn alloc_dirty(&self, n: usize) -> Vec<f32> {
        let reused = self.pool.lock().ok().and_then(|mut pool| {
            let i = (0..pool.len())
                .filter(|&i| pool[i].capacity() >= n)
                .min_by_key(|&i| pool[i].capacity())?;
            Some(pool.swap_remove(i))
        });
        match reused {
            Some(mut v) => {
                v.truncate(n);
                v.resize(n, 0.0);
                v
            }
            None => vec![0.0; n],
        }
    }

    /// Threads used by GEMM and attention.
    pub fn threads(&self) -> usize {
        self.threads
    }

    fn err(&self, reason: String) -> ModelError {
        ModelError::Backend {
            backend: self.name(),
            reason,
        }
    }

    fn par(&self) -> Par {
        Par::rayon(self.threads)
    }

    /// Runs `f` on a rayon pool of `self.threads` threads (the global pool
    /// when it has that size).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if rayon::current_num_threads() == self.threads {
            return f();
        }
        match rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .build()
        {
            Ok(pool) => pool.install(f),
            Err(_) => f(),
        }
    }

    /// `out[m, n] = a[m, k] · w[n, k]^T (+ bias[n])`, all row-major.
    #[allow(clippy::too_many_arguments)]
    fn matmul_wt(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) {
        assert!(a.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
        if m == 0 || n == 0 {
            return;
        }
        if let Some(b) = bias {
            out[..m * n]
                .par_chunks_mut(n)
                .for_each(|r| r.copy_from_slice(&b[..n]));
        }
        if k == 0 {
            if bias.is_none() {
                out[..m * n].fill(0.0);
            }
            return;
        }
        let par = if self.threads > 1 {
            gemm::Parallelism::Rayon(self.threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: `out` holds m*n elements (row stride n, column stride 1),
        // `a` m*k (row stride k), and `w` n*k read as the k×n matrix w^T
        // (row stride 1, column stride k): every index stays in bounds
        // (asserted above); `out` does not alias `a` or `w` (distinct borrows).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                bias.is_some(),
                a.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }

    fn shape4(&self, x: &Tensor<Self>, what: &str) -> Result<[usize; 4]> {
        match x.shape[..] {
            [a, b, c, d] => Ok([a, b, c, d]),
            _ => Err(self.err(format!("{what}: expected a 4-d tensor, got {:?}", x.shape))),
        }
    }
}

fn tensor(shape: Vec<usize>, buf: Vec<f32>) -> Tensor<Cpu> {
    debug_assert_eq!(shape.iter().product::<usize>(), buf.len());
    Tensor { shape, buf }
}

impl Backend for Cpu {
    type Buf = Vec<f32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor<Self>> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(self.err(format!(
                "upload: shape {shape:?} does not hold {} elements",
                data.len()
            )));
        }
        Ok(tensor(shape.to_vec(), data.to_vec()))
    }

    fn download(&self, x: &Tensor<Self>) -> Result<Vec<f32>> {
        Ok(x.buf.clone())
    }

    fn recycle(&self, x: Tensor<Self>) {
        if x.buf.capacity() < 1024 {
            return;
        }
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < POOL_MAX {
                pool.push(x.buf);
            } else if let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].capacity()) {
                // Keep the larger buffers.
                if pool[i].capacity() < x.buf.capacity() {
                    pool[i] = x.buf;
                }
            }
        }
    }

    fn nchw_to_nhwc(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let [b, c, h, w] = self.shape4(x, "nchw_to_nhwc")?;
        let mut out = self.alloc_dirty(x.numel());
        let hw = h * w;
        if hw > 0 && c > 0 {
            out.par_chunks_mut(hw * c).enumerate().for_each(|(bi, o)| {
                let src = &x.buf[bi * c * hw..][..c * hw];
                for (p, row) in o.chunks_mut(c).enumerate() {
                    for (ci, v) in row.iter_mut().enumerate() {
                        *v = src[ci * hw + p];
                    }
                }
            });
        }
        Ok(tensor(vec![b, h, w, c], out))
    }

    fn nhwc_to_nchw(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let [b, h, w, c] = self.shape4(x, "nhwc_to_nchw")?;
        let mut out = self.alloc_dirty(x.numel());
        let hw = h * w;
        if hw > 0 && c > 0 {
            out.par_chunks_mut(hw * c).enumerate().for_each(|(bi, o)| {
                let src = &x.buf[bi * c * hw..][..c * hw];
                for (ci, plane) in o.chunks_mut(hw).enumerate() {
                    for (p, v) in plane.iter_mut().enumerate() {
                        *v = src[p * c + ci];
                    }
                }
            });
        }
        Ok(tensor(vec![b, c, h, w], out))
    }

    fn conv2d(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        stride: usize,
        pad: usize,
    ) -> Result<Tensor<Self>> {
        let [bn, h, wd, cin] = self.shape4(x, "conv2d input")?;
        let [cout, wcin, kh, kw] = self.shape4(w, "conv2d weight")?;
        if wcin != cin || stride == 0 || kh == 0 || kw == 0 {
            return Err(self.err(format!(
                "conv2d: input {:?} and weight {:?} (stride {stride}) do not fit",
                x.shape, w.shape
            )));
        }
        if let Some(b) = b {
            if b.shape != [cout] {
                return Err(self.err(format!("conv2d: bias {:?} for {cout} outputs", b.shape)));
            }
        }
        if h + 2 * pad < kh || wd + 2 * pad < kw {
            return Err(self.err(format!(
                "conv2d: input {h}x{wd} (padding {pad}) is smaller than the {kh}x{kw} kernel"
            )));
        }
        let ho = (h + 2 * pad - kh) / stride + 1;
        let wo = (wd + 2 * pad - kw) / stride + 1;
        let kk = cin * kh * kw;
        let rows = bn * ho * wo;
        // im2col: one row per output pixel, columns in the weight's
        // (cin, ky, kx) order so that the weight is used as stored.
        let mut cols = self.alloc(rows * kk);
        let xs = &x.buf;
        if kk > 0 {
            cols.par_chunks_mut(kk).enumerate().for_each(|(r, row)| {
                let (bi, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
                for ky in 0..kh {
                    let iy = (oy * stride + ky).wrapping_sub(pad);
                    if iy >= h {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = (ox * stride + kx).wrapping_sub(pad);
                        if ix >= wd {
                            continue;
                        }
                        let src = &xs[((bi * h + iy) * wd + ix) * cin..][..cin];
                        for (ci, &v) in src.iter().enumerate() {
                            row[(ci * kh + ky) * kw + kx] = v;
                        }
                    }
                }
            });
        }
        let mut out = self.alloc_dirty(rows * cout);
        self.matmul_wt(
            rows,
            cout,
            kk,
            &cols,
            &w.buf,
            b.map(|b| &b.buf[..]),
            &mut out,
        );
        Ok(tensor(vec![bn, ho, wo, cout], out))
    }

    fn linear(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
    ) -> Result<Tensor<Self>> {
        let k = x.last_dim();
        let (n, wk) = match w.shape[..] {
            [n, wk] => (n, wk),
            _ => return Err(self.err(format!("linear: weight shape {:?}", w.shape))),
        };
        if wk != k || x.shape.is_empty() {
            return Err(self.err(format!(
                "linear: input {:?} does not fit weight {:?}",
                x.shape, w.shape
            )));
        }
        if let Some(b) = b {
            if b.shape != [n] {
                return Err(self.err(format!("linear: bias {:?} for {n} outputs", b.shape)));
            }
        }
        let m = x.numel() / k.max(1);
        let mut out = self.alloc_dirty(m * n);
        self.matmul_wt(m, n, k, &x.buf, &w.buf, b.map(|b| &b.buf[..]), &mut out);
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("non-empty") = n;
        Ok(tensor(shape, out))
    }

    fn layer_norm(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: &Tensor<Self>,
        eps: f32,
    ) -> Result<Tensor<Self>> {
        let c = x.last_dim();
        if w.shape != [c] || b.shape != [c] || c == 0 {
            return Err(self.err(format!(
                "layer_norm: input {:?}, weight {:?}, bias {:?}",
                x.shape, w.shape, b.shape
            )));
        }
        let mut out = self.alloc_dirty(x.numel());
        let (ws, bs) = (&w.buf[..], &b.buf[..]);
        out.par_chunks_mut(c * ROWS_PER_TASK)
            .zip(x.buf.par_chunks(c * ROWS_PER_TASK))
            .for_each(|(o, xi)| {
                for (or, xr) in o.chunks_mut(c).zip(xi.chunks(c)) {
                    let mean = xr.iter().sum::<f32>() / c as f32;
                    let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
                    let inv = 1.0 / (var + eps).sqrt();
                    for (((o, &v), &g), &bb) in or.iter_mut().zip(xr).zip(ws).zip(bs) {
                        *o = (v - mean) * inv * g + bb;
                    }
                }
            });
        Ok(tensor(x.shape.clone(), out))
    }

    fn gelu(&self, x: &mut Tensor<Self>) -> Result<()> {
        const R: f32 = core::f32::consts::FRAC_1_SQRT_2;
        x.buf.par_chunks_mut(4096).for_each(|c| {
            for v in c {
                *v = 0.5 * *v * (1.0 + erf(*v * R));
            }
        });
        Ok(())
    }

    fn add_scaled(
        &self,
        x: &mut Tensor<Self>,
        y: &Tensor<Self>,
        gamma: Option<&Tensor<Self>>,
    ) -> Result<()> {
        let c = x.last_dim();
        if x.shape != y.shape || gamma.is_some_and(|g| g.shape != [c]) || c == 0 {
            return Err(self.err(format!(
                "add_scaled: {:?} + {:?} ⊙ {:?}",
                x.shape,
                gamma.map(|g| g.shape.clone()),
                y.shape
            )));
        }
        let chunk = c * ROWS_PER_TASK;
        match gamma {
            None => x
                .buf
                .par_chunks_mut(chunk)
                .zip(y.buf.par_chunks(chunk))
                .for_each(|(a, b)| {
                    for (a, b) in a.iter_mut().zip(b) {
                        *a += b;
                    }
                }),
            Some(g) => x
                .buf
                .par_chunks_mut(chunk)
                .zip(y.buf.par_chunks(chunk))
                .for_each(|(a, b)| {
                    for (ar, br) in a.chunks_mut(c).zip(b.chunks(c)) {
                        for ((a, b), g) in ar.iter_mut().zip(br).zip(&g.buf) {
                            *a += g * b;
                        }
                    }
                }),
        }
        Ok(())
    }

    fn pad_hw(&self, x: &Tensor<Self>, hp: usize, wp: usize) -> Result<Tensor<Self>> {
        let [b, h, w, c] = self.shape4(x, "pad_hw")?;
        if hp < h || wp < w {
            return Err(self.err(format!("pad_hw: {h}x{w} cannot be padded to {hp}x{wp}")));
        }
        let mut out = self.alloc(b * hp * wp * c);
        for bi in 0..b {
            for y in 0..h {
                let src = &x.buf[((bi * h + y) * w) * c..][..w * c];
                out[((bi * hp + y) * wp) * c..][..w * c].copy_from_slice(src);
            }
        }
        Ok(tensor(vec![b, hp, wp, c], out))
    }

    fn crop_hw(&self, x: &Tensor<Self>, hc: usize, wc: usize) -> Result<Tensor<Self>> {
        let [b, h, w, c] = self.shape4(x, "crop_hw")?;
        if hc > h || wc > w {
            return Err(self.err(format!("crop_hw: {h}x{w} cannot be cropped to {hc}x{wc}")));
        }
        let mut out = self.alloc_dirty(b * hc * wc * c);
        for bi in 0..b {
            for y in 0..hc {
                let src = &x.buf[((bi * h + y) * w) * c..][..wc * c];
                out[((bi * hc + y) * wc) * c..][..wc * c].copy_from_slice(src);
            }
        }
        Ok(tensor(vec![b, hc, wc, c], out))
    }

    fn neighborhood_attention(
        &self,
        qkv: &Tensor<Self>,
        rpb: &Tensor<Self>,
        spec: NaSpec,
    ) -> Result<Tensor<Self>> {
        let [b, h, w, c3] = self.shape4(qkv, "neighborhood_attention")?;
        let NaSpec {
            heads,
            kernel,
            dilation,
        } = spec;
        if c3 % 3 != 0 || heads == 0 || (c3 / 3) % heads != 0 {
            return Err(self.err(format!(
                "neighborhood_attention: {c3} fused channels do not split into q, k, v of {heads} heads"
            )));
        }
        let c = c3 / 3;
        let hd = c / heads;
        let params = Params::new(&[kernel, kernel])?.with_dilation(&[dilation, dilation])?;
        let p = Problem::new(b, &[h, w], heads, hd, hd, params)?;
        let rpb_len = p.rpb_len();
        if rpb.numel() != rpb_len {
            return Err(self.err(format!(
                "neighborhood_attention: rpb {:?} for {heads} heads and kernel {kernel} (expected {rpb_len} values)",
                rpb.shape
            )));
        }
        let n = b * h * w;
        let (mut q, mut k, mut v) = (
            self.alloc_dirty(n * c),
            self.alloc_dirty(n * c),
            self.alloc_dirty(n * c),
        );
        let rows = ROWS_PER_TASK;
        q.par_chunks_mut(c * rows)
            .zip(k.par_chunks_mut(c * rows))
            .zip(v.par_chunks_mut(c * rows))
            .zip(qkv.buf.par_chunks(c3 * rows))
            .for_each(|(((q, k), v), s)| {
                for (((q, k), v), s) in q
                    .chunks_mut(c)
                    .zip(k.chunks_mut(c))
                    .zip(v.chunks_mut(c))
                    .zip(s.chunks(c3))
                {
                    q.copy_from_slice(&s[..c]);
                    k.copy_from_slice(&s[c..2 * c]);
                    v.copy_from_slice(&s[2 * c..]);
                }
            });
        let mut out = self.alloc_dirty(n * c);
        let x = Inputs {
            query: &q,
            key: &k,
            value: &v,
            rpb: Some(&rpb.buf),
        };
        na_core::fused::forward(&p, x, &mut out, None, self.par())?;
        for buf in [q, k, v] {
            self.recycle(tensor(vec![buf.len()], buf));
        }
        Ok(tensor(vec![b, h, w, c], out))
    }

    fn patch_merge(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let [b, h, w, c] = self.shape4(x, "patch_merge")?;
        let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
        let mut out = self.alloc(b * ho * wo * 4 * c);
        // Quadrant order: (dy, dx) = (0,0), (1,0), (0,1), (1,1).
        const Q: [(usize, usize); 4] = [(0, 0), (1, 0), (0, 1), (1, 1)];
        if c > 0 {
            out.par_chunks_mut(4 * c).enumerate().for_each(|(r, o)| {
                let (bi, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
                for (qi, (dy, dx)) in Q.iter().enumerate() {
                    let (y, xx) = (2 * oy + dy, 2 * ox + dx);
                    if y < h && xx < w {
                        o[qi * c..][..c]
                            .copy_from_slice(&x.buf[((bi * h + y) * w + xx) * c..][..c]);
                    }
                }
            });
        }
        Ok(tensor(vec![b, ho, wo, 4 * c], out))
    }

    fn mean_tokens(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        if x.shape.len() < 2 {
            return Err(self.err(format!("mean_tokens: shape {:?}", x.shape)));
        }
        let (b, c) = (x.shape[0], x.last_dim());
        let per = x.numel() / b.max(1);
        let t = per / c.max(1);
        let mut out = self.alloc(b * c);
        for bi in 0..b {
            let o = &mut out[bi * c..][..c];
            for row in x.buf[bi * per..][..per].chunks(c) {
                for (o, v) in o.iter_mut().zip(row) {
                    *o += v;
                }
            }
            for o in o.iter_mut() {
                *o /= t.max(1) as f32;
            }
        }
        Ok(tensor(vec![b, c], out))
    }
}

/// `erf(x)` within 5e-7 absolute, written without branches or calls so that
/// the GELU loop vectorises (`libm::erff` is exact to an ulp but scalar, and
/// cost more than a block's MLP GEMMs at level 0). Below 0.75 the Maclaurin
/// series to `x^15` (truncation below 2e-8); above it Abramowitz & Stegun
/// 7.1.28, `1 - (1 + a1 x + … + a6 x^6)^-16` (3e-7), whose f32 cancellation
/// near 0 the series avoids. Odd symmetry.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const A: [f32; 6] = [
        0.070_523_08,
        0.042_282_01,
        0.009_270_527,
        0.000_152_014_3,
        0.000_276_567_2,
        0.000_043_063_8,
    ];
    // 2/sqrt(pi) * (-1)^n / (n! (2n+1)), n = 0..7.
    const S: [f32; 8] = [
        core::f32::consts::FRAC_2_SQRT_PI,
        -0.376_126_4,
        0.112_837_92,
        -0.026_866_17,
        0.005_223_977,
        -0.000_854_832_1,
        0.000_120_553_7,
        -0.000_014_925_07,
    ];
    // Clamped (NaN stays NaN: `f32::min` would turn it into 6).
    let z = if x.abs() > 6.0 { 6.0 } else { x.abs() };
    let z2 = z * z;
    let mut s = S[7];
    for c in S[..7].iter().rev() {
        s = s * z2 + c;
    }
    let small = z * s;
    let p = 1.0 + z * (A[0] + z * (A[1] + z * (A[2] + z * (A[3] + z * (A[4] + z * A[5])))));
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    let large = 1.0 - 1.0 / (p8 * p8);
    let r = if z < 0.75 { small } else { large };
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::erf;

    #[test]
    fn erf_is_within_5e_7_of_libm() {
        let mut worst = 0.0f32;
        let mut x = -8.0f32;
        while x <= 8.0 {
            worst = worst.max((erf(x) - libm::erf(x as f64) as f32).abs());
            x += 1.0 / 1024.0;
        }
        assert!(worst < 5e-7, "{worst:e}");
        assert!(erf(f32::NAN).is_nan());
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
    }
}
