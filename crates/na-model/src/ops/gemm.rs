//! The one GEMM entry point of the workspace ([`matmul`], on the `faer`
//! crate's matrix multiplication, chosen by measurement over `gemm`: see
//! `bench/results/gemm-shapes.json`), matrix views, and the threaded
//! `x · Wᵀ` product with a fused per-block epilogue that every linear layer
//! and convolution goes through. No `unsafe`: views are built from checked
//! slices.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// A read-only view of a row-major `rows × cols` matrix, or of the
/// transpose of one.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    /// Whether `data` holds the `cols × rows` matrix this view transposes.
    trans: bool,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix (the first `rows · cols` values of
    /// `data`).
    pub fn rm(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            trans: false,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            trans: !self.trans,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The `faer` view, or `None` when `data` is too short.
    fn view(&self) -> Option<MatRef<'a, f32>> {
        let n = self.rows.checked_mul(self.cols)?;
        let d = self.data.get(..n)?;
        Some(if self.trans {
            MatRef::from_row_major_slice(d, self.cols, self.rows).transpose()
        } else {
            MatRef::from_row_major_slice(d, self.rows, self.cols)
        })
    }
}

/// How many threads a product may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only.
    One,
    /// The threads of the current rayon pool.
    Pool,
}

fn par(t: Threads) -> Par {
    match (t, rayon::current_num_threads()) {
        (Threads::One, _) | (_, 0 | 1) => Par::Seq,
        (Threads::Pool, n) => Par::rayon(n),
    }
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`), `dst` row-major
/// `a.rows × b.cols`, on the threads `threads` allows.
///
/// Panics if the shapes disagree or a view is longer than its slice: every
/// caller computes its shapes from checked arguments, so a failure here is a
/// bug, not bad input.
pub fn matmul(dst: &mut [f32], a: Mat<'_>, b: Mat<'_>, accumulate: bool, threads: Threads) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner sizes differ");
    let (av, bv) = (a.view(), b.view());
    let d = m.checked_mul(n).and_then(|mn| dst.get_mut(..mn));
    let (Some(av), Some(bv), Some(d)) = (av, bv, d) else {
        panic!("matmul: a view reaches outside its slice");
    };
    if m == 0 || n == 0 {
        return;
    }
    let dv = MatMut::from_row_major_slice_mut(d, m, n);
    let accum = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    faer::linalg::matmul::matmul(dv, accum, av, bv, 1.0f32, par(threads));
}

/// Target rows of one block of [`matmul_wt_fused`].
const BLOCK_ROWS: usize = 128;

/// Below this many rows per thread, [`matmul_wt_fused`] lets `gemm` split
/// the columns instead of cutting row blocks.
const MIN_ROWS_PER_THREAD: usize = 48;

/// `y [m, n] = x [m, k] · w [n, k]ᵀ`, then `epilogue(first_row, y_rows,
/// side_rows)` on each finished block of rows while it is still in cache
/// (`side`, when given, is a second `[m, n]` buffer cut into the same row
/// blocks: the GELU output beside its input, or the residual stream).
///
/// The rows are cut into blocks of about 128, a multiple of the pool's
/// threads, and each block is one single-threaded product followed by its
/// epilogue (bias, GELU, residual add: see [`super::linear`]), so the
/// threads split batch × tokens and nothing waits between the product and
/// the epilogue. Maps too small to give every thread 48 rows run one
/// product on all threads and then the epilogue over all rows. Each output
/// element is one dot product in `gemm`'s fixed order whatever the blocks,
/// so the values do not depend on the thread count.
pub fn matmul_wt_fused<F>(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    mut side: Option<&mut [f32]>,
    [m, n, k]: [usize; 3],
    epilogue: F,
) where
    F: Fn(usize, &mut [f32], Option<&mut [f32]>) + Sync,
{
    assert!(x.len() >= m * k && w.len() >= n * k && y.len() >= m * n);
    assert!(side.as_ref().is_none_or(|s| s.len() >= m * n));
    if m == 0 || n == 0 {
        return;
    }
    let wt = Mat::rm(w, n, k).t();
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || m < MIN_ROWS_PER_THREAD * threads {
        let t = if threads == 1 {
            Threads::One
        } else {
            Threads::Pool
        };
        matmul(&mut y[..m * n], Mat::rm(x, m, k), wt, false, t);
        // The epilogue in row blocks on the pool.
        let rb = (BLOCK_ROWS / 4).max(1);
        match side.as_deref_mut() {
            None => y[..m * n]
                .par_chunks_mut(rb * n)
                .enumerate()
                .for_each(|(i, yb)| epilogue(i * rb, yb, None)),
            Some(s) => y[..m * n]
                .par_chunks_mut(rb * n)
                .zip(s[..m * n].par_chunks_mut(rb * n))
                .enumerate()
                .for_each(|(i, (yb, sb))| epilogue(i * rb, yb, Some(sb))),
        }
        return;
    }
    let blocks = threads * (m / (threads * BLOCK_ROWS)).max(1);
    let rb = m.div_ceil(blocks);
    let run = |i: usize, yb: &mut [f32], sb: Option<&mut [f32]>| {
        let r0 = i * rb;
        let rows = yb.len() / n;
        matmul(
            yb,
            Mat::rm(&x[r0 * k..(r0 + rows) * k], rows, k),
            wt,
            false,
            Threads::One,
        );
        epilogue(r0, yb, sb);
    };
    match side {
        None => y[..m * n]
            .par_chunks_mut(rb * n)
            .enumerate()
            .for_each(|(i, yb)| run(i, yb, None)),
        Some(s) => y[..m * n]
            .par_chunks_mut(rb * n)
            .zip(s[..m * n].par_chunks_mut(rb * n))
            .enumerate()
            .for_each(|(i, (yb, sb))| run(i, yb, Some(sb))),
    }
}

/// Adds the column sums of the row-major `rows × n` matrix `x` to `out[n]`,
/// deterministically (fixed row blocks summed in parallel, then added in
/// order).
pub fn add_col_sums(out: &mut [f32], x: &[f32], n: usize) {
    const SUM_ROWS: usize = 256;
    if n == 0 {
        return;
    }
    let parts: Vec<Vec<f32>> = x
        .par_chunks(n * SUM_ROWS)
        .map(|blk| {
            let mut s = vec![0.0f32; n];
            for row in blk.chunks_exact(n) {
                for (s, v) in s.iter_mut().zip(row) {
                    *s += v;
                }
            }
            s
        })
        .collect();
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
}

/// The f32 GEMM peak of this machine on the current rayon pool: the best of
/// six `1024³` products, in GFLOP/s (`2·1024³` per product).
pub fn peak_gflops() -> f64 {
    let n = 1024;
    let a: Vec<f32> = (0..n * n)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
        .collect();
    let b: Vec<f32> = (0..n * n)
        .map(|i| ((i * 104_729) % 251) as f32 / 251.0 - 0.5)
        .collect();
    let mut c = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let t = std::time::Instant::now();
        matmul(
            &mut c,
            Mat::rm(&a, n, n),
            Mat::rm(&b, n, n),
            false,
            Threads::Pool,
        );
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&c);
    2.0 * (n * n * n) as f64 / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], [m, n, k]: [usize; 3]) -> Vec<f32> {
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
            }
        }
        y
    }

    #[test]
    fn fused_blocks_cover_every_row_once() {
        for (m, n, k) in [(1, 3, 2), (47, 5, 7), (300, 17, 9), (1000, 8, 3)] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 - 6.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 - 3.0).collect();
            let mut y = vec![f32::NAN; m * n];
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap();
            let seen = std::sync::Mutex::new(vec![0u32; m]);
            pool.install(|| {
                matmul_wt_fused(&x, &w, &mut y, None, [m, n, k], |r0, blk, _| {
                    let mut s = seen.lock().unwrap();
                    for r in r0..r0 + blk.len() / n {
                        s[r] += 1;
                    }
                    blk.iter_mut().for_each(|v| *v += 1.0);
                })
            });
            assert!(seen.into_inner().unwrap().iter().all(|&c| c == 1));
            let want = naive(&x, &w, [m, n, k]);
            for (a, b) in y.iter().zip(&want) {
                assert!(
                    (a - (b + 1.0)).abs() < 1e-3,
                    "{m}x{n}x{k}: {a} vs {}",
                    b + 1.0
                );
            }
        }
    }
}
