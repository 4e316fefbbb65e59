//! The window math of one spatial axis (SPEC.md, "The window of one query on
//! one axis").
//!
//! Dilation `d` splits an axis of length `L` into `d` interleaved groups; a
//! query only sees keys of its own group. Inside a group, a non-causal window
//! holds exactly `k` keys, centred on the query's stride group and shifted (not
//! shrunk) at the borders; a causal window ends at the query and starts `k - 1`
//! keys before the last query of its stride group.
//!
//! In 2D and 3D a key is attended iff it lies in the window on every axis, so
//! everything here is per axis and the kernels take products.

use crate::Error;

/// One spatial axis of a neighborhood-attention problem, validated.
///
/// All coordinates are *full* coordinates along the axis (`0..len`), not
/// indices inside a dilation group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Axis {
    len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    causal: bool,
}

/// The keys one query attends to along one axis: `count` full coordinates
/// `start, start + step, ...` (`step` is the dilation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    /// Full coordinate of the first key.
    pub start: usize,
    /// Number of keys (exactly `kernel` unless causal; zero only for an
    /// out-of-range query).
    pub count: usize,
    /// Distance between consecutive keys: the dilation.
    pub step: usize,
}

impl Window {
    /// The full coordinates of the keys, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + Clone {
        let (start, step) = (self.start, self.step);
        (0..self.count).map(move |n| start + n * step)
    }

    /// Whether full coordinate `t` is one of the keys.
    pub fn contains(&self, t: usize) -> bool {
        t >= self.start
            && (t - self.start).is_multiple_of(self.step)
            && (t - self.start) / self.step < self.count
    }
}

impl Axis {
    /// Validates one axis of length `len` against SPEC.md's parameter rules:
    /// `2 <= kernel <= len`, `1 <= stride <= kernel`, `dilation >= 1` and
    /// `kernel * dilation <= len`. `axis` is only used to name the axis in
    /// the error.
    pub fn new(
        axis: usize,
        len: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
        causal: bool,
    ) -> Result<Self, Error> {
        if kernel < 2 {
            return Err(Error::KernelTooSmall { axis, kernel });
        }
        if kernel > len {
            return Err(Error::KernelLargerThanAxis { axis, kernel, len });
        }
        if stride == 0 || stride > kernel {
            return Err(Error::StrideOutOfRange {
                axis,
                stride,
                kernel,
            });
        }
        if dilation == 0 {
            return Err(Error::ZeroDilation { axis });
        }
        if kernel.checked_mul(dilation).is_none_or(|span| span > len) {
            return Err(Error::DilatedKernelLargerThanAxis {
                axis,
                kernel,
                dilation,
                len,
            });
        }
        Ok(Axis {
            len,
            kernel,
            stride,
            dilation,
            causal,
        })
    }

    /// A degenerate axis of length 1 with a window of 1, used to pad 1D and
    /// 2D problems to three axes. Its only window is `{0}` and its bias
    /// index is always 0.
    pub(crate) const fn unit() -> Self {
        Axis {
            len: 1,
            kernel: 1,
            stride: 1,
            dilation: 1,
            causal: false,
        }
    }

    /// Axis length `L`.
    pub const fn len(&self) -> usize {
        self.len
    }
    /// Always false: a validated axis has at least `kernel >= 2` positions
    /// (the unit padding axis has one).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Kernel size `k`.
    pub const fn kernel(&self) -> usize {
        self.kernel
    }
    /// Stride `s`.
    pub const fn stride(&self) -> usize {
        self.stride
    }
    /// Dilation `d`.
    pub const fn dilation(&self) -> usize {
        self.dilation
    }
    /// Whether the axis is causal.
    pub const fn causal(&self) -> bool {
        self.causal
    }
    /// Extent of the bias table along this axis: `2k - 1`.
    pub const fn rpb_len(&self) -> usize {
        2 * self.kernel - 1
    }

    /// Length of dilation group `g` (`g < dilation`).
    const fn group_len(&self, g: usize) -> usize {
        self.len / self.dilation + if g < self.len % self.dilation { 1 } else { 0 }
    }

    /// The window of query `i` (a full coordinate). A query outside the axis
    /// gets an empty window.
    pub fn window(&self, i: usize) -> Window {
        let d = self.dilation;
        if i >= self.len {
            return Window {
                start: 0,
                count: 0,
                step: d,
            };
        }
        let (g, ii) = (i % d, i / d);
        let (start, end) = self.group_window(ii, self.group_len(g));
        Window {
            start: start * d + g,
            count: end - start,
            step: d,
        }
    }

    /// The window `[start, end)` in group indices of the query with group
    /// index `ii` in a group of length `lg` (`ii < lg`, `kernel <= lg`).
    fn group_window(&self, ii: usize, lg: usize) -> (usize, usize) {
        let (k, s) = (self.kernel, self.stride);
        if self.causal {
            let lead = ((ii / s) * s + s - 1).min(lg - 1);
            let start = lead.saturating_sub(k - 1);
            (start, (ii + 1).min(lg))
        } else {
            let left = k / 2;
            let right = k / 2 + k % 2 - 1;
            let lead = ((ii / s) * s + s / 2).min(lg - 1);
            let mut start = lead.saturating_sub(left);
            if lead + right >= lg {
                // Shift left so the window ends at the group's last key:
                // start = lead - left + (lg - right - lead - 1) = lg - k.
                start = lg - k;
            }
            (start, start + k)
        }
    }

    /// Whether query `i` attends key `t` on this axis.
    pub fn attends(&self, i: usize, t: usize) -> bool {
        self.window(i).contains(t)
    }

    /// The bias-table index of key `t` for query `i` along this axis:
    /// `(t div d - i div d) + k - 1`, which lies in `[0, 2k - 2]` whenever
    /// [`Axis::attends`]`(i, t)`. Returns `None` when it does not.
    pub fn rpb_index(&self, i: usize, t: usize) -> Option<usize> {
        if !self.attends(i, t) {
            return None;
        }
        Some(self.rpb_index_unchecked(i, t))
    }

    /// [`Axis::rpb_index`] without the membership test; only meaningful
    /// when `attends(i, t)` (then it is always `< 2k - 1`).
    #[inline(always)]
    pub(crate) fn rpb_index_unchecked(&self, i: usize, t: usize) -> usize {
        let d = self.dilation;
        (t / d + self.kernel - 1) - i / d
    }

    /// The queries that may attend key `t`: a superset of the inverse
    /// neighbourhood, as a [`Window`] over `t`'s dilation group. Filter it
    /// with [`Axis::attends`]. Every attending query lies within
    /// `k - 1 + s` group positions of the key, so the superset has at most
    /// `2(k + s) - 1` members.
    pub fn inverse_candidates(&self, t: usize) -> Window {
        let d = self.dilation;
        if t >= self.len {
            return Window {
                start: 0,
                count: 0,
                step: d,
            };
        }
        let (g, jj) = (t % d, t / d);
        let lg = self.group_len(g);
        let reach = self.kernel - 1 + self.stride;
        let lo = jj.saturating_sub(reach);
        let hi = (jj + reach + 1).min(lg);
        Window {
            start: lo * d + g,
            count: hi - lo,
            step: d,
        }
    }

    /// The queries that attend key `t` on this axis, in increasing order.
    pub fn inverse(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        self.inverse_candidates(t)
            .iter()
            .filter(move |&i| self.attends(i, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centred_window_away_from_borders() {
        let a = Axis::new(0, 20, 5, 1, 1, false).unwrap();
        assert_eq!(a.window(10).iter().collect::<Vec<_>>(), [8, 9, 10, 11, 12]);
        assert_eq!(a.window(0).iter().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(
            a.window(19).iter().collect::<Vec<_>>(),
            [15, 16, 17, 18, 19]
        );
    }

    #[test]
    fn even_kernel_has_one_fewer_on_the_right() {
        let a = Axis::new(0, 20, 4, 1, 1, false).unwrap();
        assert_eq!(a.window(10).iter().collect::<Vec<_>>(), [8, 9, 10, 11]);
    }

    #[test]
    fn dilation_groups_of_unequal_length() {
        // L = 7, d = 3: groups {0,3,6}, {1,4}, {2,5}.
        let a = Axis::new(0, 7, 2, 1, 3, false).unwrap();
        assert_eq!(a.window(6).iter().collect::<Vec<_>>(), [3, 6]);
        assert_eq!(a.window(4).iter().collect::<Vec<_>>(), [1, 4]);
        assert_eq!(a.window(0).iter().collect::<Vec<_>>(), [0, 3]);
    }

    #[test]
    fn causal_window_shrinks_at_start() {
        let a = Axis::new(0, 10, 3, 1, 1, true).unwrap();
        assert_eq!(a.window(0).iter().collect::<Vec<_>>(), [0]);
        assert_eq!(a.window(1).iter().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(a.window(7).iter().collect::<Vec<_>>(), [5, 6, 7]);
    }

    #[test]
    fn stride_equal_kernel_is_blocked() {
        let a = Axis::new(0, 9, 3, 3, 1, false).unwrap();
        for i in 0..9 {
            let b = i / 3 * 3;
            assert_eq!(a.window(i).iter().collect::<Vec<_>>(), [b, b + 1, b + 2]);
        }
    }

    #[test]
    fn invalid_parameters_name_axis_and_values() {
        assert_eq!(
            Axis::new(1, 5, 1, 1, 1, false),
            Err(Error::KernelTooSmall { axis: 1, kernel: 1 })
        );
        assert_eq!(
            Axis::new(2, 5, 6, 1, 1, false),
            Err(Error::KernelLargerThanAxis {
                axis: 2,
                kernel: 6,
                len: 5
            })
        );
        assert_eq!(
            Axis::new(0, 5, 3, 4, 1, false),
            Err(Error::StrideOutOfRange {
                axis: 0,
                stride: 4,
                kernel: 3
            })
        );
        assert_eq!(
            Axis::new(0, 5, 3, 0, 1, false),
            Err(Error::StrideOutOfRange {
                axis: 0,
                stride: 0,
                kernel: 3
            })
        );
        assert_eq!(
            Axis::new(0, 5, 3, 1, 0, false),
            Err(Error::ZeroDilation { axis: 0 })
        );
        assert_eq!(
            Axis::new(0, 5, 3, 1, 2, false),
            Err(Error::DilatedKernelLargerThanAxis {
                axis: 0,
                kernel: 3,
                dilation: 2,
                len: 5
            })
        );
        assert_eq!(
            Axis::new(0, 5, 3, 1, usize::MAX, false),
            Err(Error::DilatedKernelLargerThanAxis {
                axis: 0,
                kernel: 3,
                dilation: usize::MAX,
                len: 5
            })
        );
    }

    #[test]
    fn out_of_range_queries_get_empty_windows() {
        let a = Axis::new(0, 5, 3, 1, 1, false).unwrap();
        assert_eq!(a.window(5).count, 0);
        assert_eq!(a.inverse_candidates(7).count, 0);
        assert_eq!(a.rpb_index(9, 0), None);
    }
}
