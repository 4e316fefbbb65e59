//! Strided matrix views and the one checked wrapper around `gemm::gemm` that
//! every layer's forward and backward products go through.

/// A read-only strided matrix view: element `(i, j)` is
/// `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn rm(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        in_bounds(self.data.len(), self.rows, self.cols, self.rs, self.cs)
    }
}

fn in_bounds(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)));
    matches!(last, Some(l) if l < len && l <= isize::MAX as usize)
}

/// The threads `gemm` may use: those of the current rayon pool.
fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`), `dst` row-major
/// `a.rows × b.cols`.
///
/// Panics if the shapes disagree or a view reaches outside its slice: the
/// callers in this module compute every shape from checked arguments, so a
/// failure here is a bug, not bad input.
pub(crate) fn matmul(dst: &mut [f32], a: Mat<'_>, b: Mat<'_>, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner sizes differ");
    assert!(
        a.in_bounds() && b.in_bounds() && in_bounds(dst.len(), m, n, n, 1),
        "matmul: a view reaches outside its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: every index gemm forms is `i * rs + j * cs` for `i < rows`,
    // `j < cols` of one of the three views, which `in_bounds` checked to be
    // below the slice's length (and to fit an isize); `dst` is a distinct
    // `&mut` borrow, so it aliases neither `a` nor `b`. With `read_dst`
    // false gemm does not read `dst`, so its old values do not matter.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
    }
}

/// Adds the column sums of the row-major `rows × n` matrix `x` to `out[n]`,
/// deterministically (fixed row blocks summed in parallel, then added in
/// order).
pub(crate) fn add_col_sums(out: &mut [f32], x: &[f32], n: usize) {
    use rayon::prelude::*;
    const BLOCK_ROWS: usize = 256;
    if n == 0 {
        return;
    }
    let parts: Vec<Vec<f32>> = x
        .par_chunks(n * BLOCK_ROWS)
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
