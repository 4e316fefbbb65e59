//! The error type of every fallible operation in this crate.

/// Everything that can be wrong with a neighborhood-attention call.
///
/// Every variant names the offending axis, tensor and values, so that the
/// message alone tells the caller what to fix.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The number of spatial axes is not 1, 2 or 3.
    #[error("expected 1, 2 or 3 spatial axes, got {rank}")]
    UnsupportedRank {
        /// The number of spatial axes that was given.
        rank: usize,
    },
    /// A per-axis parameter list has neither one value nor one per axis.
    #[error("{what} has {got} values for {rank} spatial axes (give one value, or one per axis)")]
    AxisCountMismatch {
        /// Which parameter (`"stride"`, `"dilation"`, `"causal"`).
        what: &'static str,
        /// How many values were given.
        got: usize,
        /// The number of spatial axes (the length of `kernel_size`).
        rank: usize,
    },
    /// The tensor's spatial rank differs from the number of kernel axes.
    #[error("the tensors have {got} spatial axes but kernel_size has {expected}")]
    RankMismatch {
        /// The number of kernel axes.
        expected: usize,
        /// The number of spatial axes of the tensors.
        got: usize,
    },
    /// A kernel size below 2.
    #[error("axis {axis}: kernel size {kernel} is below the minimum of 2")]
    KernelTooSmall {
        /// The spatial axis (0-based).
        axis: usize,
        /// The kernel size given for it.
        kernel: usize,
    },
    /// A kernel size larger than the axis it slides over.
    #[error("axis {axis}: kernel size {kernel} is larger than the axis length {len}")]
    KernelLargerThanAxis {
        /// The spatial axis (0-based).
        axis: usize,
        /// The kernel size given for it.
        kernel: usize,
        /// The length of the axis.
        len: usize,
    },
    /// A stride outside `1..=kernel`.
    #[error("axis {axis}: stride {stride} is outside 1..={kernel} (it must be at least 1 and at most the kernel size {kernel})")]
    StrideOutOfRange {
        /// The spatial axis (0-based).
        axis: usize,
        /// The stride given for it.
        stride: usize,
        /// The kernel size of that axis.
        kernel: usize,
    },
    /// A dilation of zero.
    #[error("axis {axis}: dilation must be at least 1, got 0")]
    ZeroDilation {
        /// The spatial axis (0-based).
        axis: usize,
    },
    /// `kernel * dilation` exceeds the axis length.
    #[error(
        "axis {axis}: kernel size {kernel} x dilation {dilation} exceeds the axis length {len}"
    )]
    DilatedKernelLargerThanAxis {
        /// The spatial axis (0-based).
        axis: usize,
        /// The kernel size of that axis.
        kernel: usize,
        /// The dilation given for it.
        dilation: usize,
        /// The length of the axis.
        len: usize,
    },
    /// A scale that is NaN or infinite.
    #[error("scale must be a finite number, got {scale}")]
    NonFiniteScale {
        /// The scale given.
        scale: f32,
    },
    /// A dimension (batch, an axis, heads, head_dim) of size zero.
    #[error("{what} must be at least 1, got 0")]
    ZeroDimension {
        /// Which dimension (`"batch"`, `"spatial axis 1"`, `"heads"`, ...).
        what: &'static str,
    },
    /// A buffer whose length does not match the problem's shape.
    #[error("{tensor} has {got} elements, expected {expected}")]
    LengthMismatch {
        /// Which tensor (`"query"`, `"d_value"`, ...).
        tensor: &'static str,
        /// The length the problem requires.
        expected: usize,
        /// The length that was given.
        got: usize,
    },
    /// `d_rpb` was requested for a call without `rpb`.
    #[error("d_rpb was requested but no rpb was given")]
    GradRpbWithoutRpb,
    /// A caller-provided scratch buffer that is too short.
    #[error("scratch buffer has {got} elements, needs at least {needed}")]
    ScratchTooSmall {
        /// The required length (see the `*_scratch_len` functions).
        needed: usize,
        /// The length that was given.
        got: usize,
    },
    /// A kernel was asked to run on an instruction set this CPU lacks.
    #[error("this CPU cannot run the {isa} kernels")]
    UnsupportedIsa {
        /// The instruction set's name (`avx2`, `avx512`, `neon`).
        isa: &'static str,
    },
    /// The element count of a tensor does not fit in `usize`.
    #[error("tensor sizes overflow the address space")]
    SizeOverflow,
}
