//! Parameters and shapes of a neighborhood-attention call, validated once.

use crate::window::Axis;
use crate::Error;

/// The largest number of spatial axes (na3d).
pub const MAX_AXES: usize = 3;

/// Per-axis attention parameters (SPEC.md, "Parameters"), not yet checked
/// against a shape.
///
/// Per-axis lists accept either one value (applied to every axis) or one
/// value per axis, like NATTEN.
///
/// ```
/// use na_core::Params;
/// let p = Params::new(&[7, 7])?.with_dilation(&[2])?.with_causal(&[true, false])?;
/// assert_eq!(p.rank(), 2);
/// assert_eq!(p.dilation(), &[2, 2]);
/// # Ok::<(), na_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    rank: usize,
    kernel_size: [usize; MAX_AXES],
    stride: [usize; MAX_AXES],
    dilation: [usize; MAX_AXES],
    causal: [bool; MAX_AXES],
    scale: Option<f32>,
}

/// Expands a one-value-or-one-per-axis list to `rank` values.
fn per_axis<T: Copy + Default>(
    what: &'static str,
    values: &[T],
    rank: usize,
) -> Result<[T; MAX_AXES], Error> {
    let mut out = [T::default(); MAX_AXES];
    match values.len() {
        1 => out[..rank].fill(values[0]),
        n if n == rank => out[..rank].copy_from_slice(values),
        got => return Err(Error::AxisCountMismatch { what, got, rank }),
    }
    Ok(out)
}

impl Params {
    /// Parameters with the given kernel size (one value per spatial axis,
    /// 1 to 3 axes), stride 1, dilation 1, not causal, default scale.
    pub fn new(kernel_size: &[usize]) -> Result<Self, Error> {
        let rank = kernel_size.len();
        if !(1..=MAX_AXES).contains(&rank) {
            return Err(Error::UnsupportedRank { rank });
        }
        let mut ks = [1; MAX_AXES];
        ks[..rank].copy_from_slice(kernel_size);
        Ok(Params {
            rank,
            kernel_size: ks,
            stride: [1; MAX_AXES],
            dilation: [1; MAX_AXES],
            causal: [false; MAX_AXES],
            scale: None,
        })
    }

    /// Sets the stride (one value, or one per axis).
    pub fn with_stride(mut self, stride: &[usize]) -> Result<Self, Error> {
        self.stride = per_axis("stride", stride, self.rank)?;
        Ok(self)
    }

    /// Sets the dilation (one value, or one per axis).
    pub fn with_dilation(mut self, dilation: &[usize]) -> Result<Self, Error> {
        self.dilation = per_axis("dilation", dilation, self.rank)?;
        Ok(self)
    }

    /// Sets causal masking (one value, or one per axis).
    pub fn with_causal(mut self, causal: &[bool]) -> Result<Self, Error> {
        self.causal = per_axis("causal", causal, self.rank)?;
        Ok(self)
    }

    /// Sets the scale applied to `<q, k>` (default `head_dim^-0.5`). It must
    /// be finite; that is checked here.
    pub fn with_scale(mut self, scale: f32) -> Result<Self, Error> {
        if !scale.is_finite() {
            return Err(Error::NonFiniteScale { scale });
        }
        self.scale = Some(scale);
        Ok(self)
    }

    /// Number of spatial axes.
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// Kernel size per axis.
    pub fn kernel_size(&self) -> &[usize] {
        &self.kernel_size[..self.rank]
    }
    /// Stride per axis.
    pub fn stride(&self) -> &[usize] {
        &self.stride[..self.rank]
    }
    /// Dilation per axis.
    pub fn dilation(&self) -> &[usize] {
        &self.dilation[..self.rank]
    }
    /// Causal flag per axis.
    pub fn causal(&self) -> &[bool] {
        &self.causal[..self.rank]
    }
    /// The explicit scale, if one was set.
    pub fn scale(&self) -> Option<f32> {
        self.scale
    }
}

/// A fully validated neighborhood-attention problem: shapes plus parameters.
///
/// Tensor layouts (row-major, contiguous, heads-last), with `N` the product
/// of the spatial extents:
///
/// | tensor | shape |
/// |---|---|
/// | `query`, `key`, `d_query`, `d_key` | `[batch, *spatial, heads, head_dim]` |
/// | `value`, `out`, `d_out`, `d_value` | `[batch, *spatial, heads, head_dim_v]` |
/// | `lse` | `[batch, *spatial, heads]` (f32, natural log) |
/// | `rpb`, `d_rpb` | `[heads, 2*k_0-1, ..., 2*k_{n-1}-1]` |
///
/// Internally 1D and 2D problems are padded in front with unit axes, so that
/// every kernel is a 3D kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Problem {
    batch: usize,
    heads: usize,
    head_dim: usize,
    head_dim_v: usize,
    params: Params,
    /// The spatial axes, padded in front to three with [`Axis::unit`].
    axes: [Axis; MAX_AXES],
    scale: f32,
    tokens: usize,
}

fn mul(a: usize, b: usize) -> Result<usize, Error> {
    a.checked_mul(b).ok_or(Error::SizeOverflow)
}

const AXIS_NAMES: [&str; MAX_AXES] = ["spatial axis 0", "spatial axis 1", "spatial axis 2"];

impl Problem {
    /// Validates shapes against parameters (SPEC.md, "Parameters").
    ///
    /// `spatial` is the extent of each spatial axis, shared by query, key and
    /// value; its length must equal `params.rank()`.
    pub fn new(
        batch: usize,
        spatial: &[usize],
        heads: usize,
        head_dim: usize,
        head_dim_v: usize,
        params: Params,
    ) -> Result<Self, Error> {
        let rank = params.rank;
        if spatial.len() != rank {
            return Err(Error::RankMismatch {
                expected: rank,
                got: spatial.len(),
            });
        }
        for (what, n) in [
            ("batch", batch),
            ("heads", heads),
            ("head_dim", head_dim),
            ("head_dim_v", head_dim_v),
        ] {
            if n == 0 {
                return Err(Error::ZeroDimension { what });
            }
        }
        let mut axes = [Axis::unit(); MAX_AXES];
        let pad = MAX_AXES - rank;
        let mut tokens = 1usize;
        for (a, &len) in spatial.iter().enumerate() {
            if len == 0 {
                return Err(Error::ZeroDimension {
                    what: AXIS_NAMES[a],
                });
            }
            axes[pad + a] = Axis::new(
                a,
                len,
                params.kernel_size[a],
                params.stride[a],
                params.dilation[a],
                params.causal[a],
            )?;
            tokens = mul(tokens, len)?;
        }
        let scale = match params.scale {
            Some(s) => s,
            None => 1.0 / libm::sqrtf(head_dim as f32),
        };
        if !scale.is_finite() {
            return Err(Error::NonFiniteScale { scale });
        }
        let p = Problem {
            batch,
            heads,
            head_dim,
            head_dim_v,
            params,
            axes,
            scale,
            tokens,
        };
        // Every tensor size must fit; checking the largest products once here
        // lets the kernels index without overflow checks.
        let rows = mul(mul(batch, tokens)?, heads)?;
        mul(rows, head_dim.max(head_dim_v))?;
        mul(mul(heads, p.window_size())?, 1 << (2 * MAX_AXES))?;
        Ok(p)
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads
    }
    /// Query/key head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Value/output head dimension.
    pub fn head_dim_v(&self) -> usize {
        self.head_dim_v
    }
    /// The parameters this problem was built with.
    pub fn params(&self) -> &Params {
        &self.params
    }
    /// Number of spatial axes.
    pub fn rank(&self) -> usize {
        self.params.rank
    }
    /// The validated spatial axes (without padding).
    pub fn axes(&self) -> &[Axis] {
        &self.axes[MAX_AXES - self.params.rank..]
    }
    /// The three axes, padded in front with unit axes.
    pub(crate) fn axes3(&self) -> &[Axis; MAX_AXES] {
        &self.axes
    }
    /// The scale applied to `<q, k>`: the explicit one, or `head_dim^-0.5`.
    pub fn scale(&self) -> f32 {
        self.scale
    }
    /// Number of spatial positions `N` (product of the spatial extents).
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// Keys in a full (non-causal) window: the product of kernel sizes.
    pub fn window_size(&self) -> usize {
        self.axes.iter().map(Axis::kernel).product()
    }
    /// `batch * N * heads`: the number of (query, head) rows, and the length of `lse`.
    pub fn lse_len(&self) -> usize {
        self.batch * self.tokens * self.heads
    }
    /// Length of `query`, `key`, `d_query`, `d_key`.
    pub fn qk_len(&self) -> usize {
        self.lse_len() * self.head_dim
    }
    /// Length of `value`, `out`, `d_out`, `d_value`.
    pub fn v_len(&self) -> usize {
        self.lse_len() * self.head_dim_v
    }
    /// Length of `rpb` and `d_rpb`: `heads * prod(2k - 1)`.
    pub fn rpb_len(&self) -> usize {
        self.heads * self.rpb_per_head()
    }
    /// Bias entries per head: `prod(2k - 1)`.
    pub fn rpb_per_head(&self) -> usize {
        self.axes.iter().map(Axis::rpb_len).product()
    }
    /// The shape of `rpb`: `[heads, 2*k_0-1, ...]`, as an array and its used length.
    pub fn rpb_shape(&self) -> ([usize; MAX_AXES + 1], usize) {
        let mut s = [0; MAX_AXES + 1];
        s[0] = self.heads;
        for (o, a) in s[1..].iter_mut().zip(self.axes()) {
            *o = a.rpb_len();
        }
        (s, 1 + self.rank())
    }
    /// Forward FLOPs of one full-window pass: `4 * batch * heads * N * W * D`
    /// (BENCHMARKS.md), with `D` the mean of `head_dim` and `head_dim_v`.
    pub fn forward_flops(&self) -> f64 {
        let d = (self.head_dim + self.head_dim_v) as f64 / 2.0;
        4.0 * self.batch as f64
            * self.heads as f64
            * self.tokens as f64
            * self.window_size() as f64
            * d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_axis_lists_broadcast_or_match() {
        let p = Params::new(&[3, 5, 7]).unwrap().with_stride(&[2]).unwrap();
        assert_eq!(p.stride(), &[2, 2, 2]);
        assert_eq!(
            Params::new(&[3, 5]).unwrap().with_dilation(&[1, 2, 3]),
            Err(Error::AxisCountMismatch {
                what: "dilation",
                got: 3,
                rank: 2
            })
        );
        assert_eq!(Params::new(&[]), Err(Error::UnsupportedRank { rank: 0 }));
        assert_eq!(
            Params::new(&[3; 4]),
            Err(Error::UnsupportedRank { rank: 4 })
        );
        assert!(matches!(
            Params::new(&[3]).unwrap().with_scale(f32::NAN),
            Err(Error::NonFiniteScale { .. })
        ));
    }

    #[test]
    fn problem_validation_errors() {
        let p = Params::new(&[3, 3]).unwrap();
        assert_eq!(
            Problem::new(1, &[5], 1, 4, 4, p),
            Err(Error::RankMismatch {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            Problem::new(0, &[5, 5], 1, 4, 4, p),
            Err(Error::ZeroDimension { what: "batch" })
        );
        assert_eq!(
            Problem::new(1, &[5, 0], 1, 4, 4, p),
            Err(Error::ZeroDimension {
                what: "spatial axis 1"
            })
        );
        assert_eq!(
            Problem::new(1, &[5, 2], 1, 4, 4, p),
            Err(Error::KernelLargerThanAxis {
                axis: 1,
                kernel: 3,
                len: 2
            })
        );
        assert_eq!(
            Problem::new(usize::MAX / 2, &[5, 5], 1, 4, 4, p),
            Err(Error::SizeOverflow)
        );
        let q = Problem::new(2, &[5, 6], 3, 4, 8, p).unwrap();
        assert_eq!(q.tokens(), 30);
        assert_eq!(q.lse_len(), 180);
        assert_eq!(q.qk_len(), 720);
        assert_eq!(q.v_len(), 1440);
        assert_eq!(q.rpb_len(), 3 * 25);
        assert_eq!(q.window_size(), 9);
        assert!((q.scale() - 0.5).abs() < 1e-7);
        assert_eq!(q.rpb_shape(), ([3, 5, 5, 0], 3));
    }
}
