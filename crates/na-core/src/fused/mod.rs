//! Fused CPU kernels: forward (output and log-sum-exp) and backward
//! (`d_query`, `d_key`, `d_value`, `d_rpb`) for every SPEC.md feature, with
//! SIMD and threads. Same arguments and results as [`crate::reference`],
//! which stays the oracle they are tested against.
//!
//! ```
//! use na_core::{fused, reference, Grads, Inputs, Par, Params, Problem, Saved};
//!
//! // A 12x10 map, 2 heads of 8 channels, a 3x5 window, dilation 2 on rows.
//! let p = Problem::new(1, &[12, 10], 2, 8, 8, Params::new(&[3, 5])?.with_dilation(&[2, 1])?)?;
//! let val = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 50.0;
//! let q: Vec<f32> = (0..p.qk_len()).map(val).collect();
//! let k: Vec<f32> = (0..p.qk_len()).map(|i| val(i + 7)).collect();
//! let v: Vec<f32> = (0..p.v_len()).map(|i| val(i + 13)).collect();
//! let x = Inputs { query: &q, key: &k, value: &v, rpb: None };
//!
//! // Forward with threads, and again with caller-owned scratch, no allocation.
//! let (mut out, mut lse) = (vec![0.0f32; p.v_len()], vec![0.0f32; p.lse_len()]);
//! fused::forward(&p, x, &mut out, Some(&mut lse), Par::rayon(0))?;
//! let mut scratch = vec![0.0f32; fused::forward_scratch_len(&p)];
//! let mut out2 = vec![0.0f32; p.v_len()];
//! fused::forward_with_scratch(&p, x, &mut out2, None, &mut scratch)?;
//! assert_eq!(out, out2); // bit-identical whatever the threads
//!
//! // The reference kernels agree to rounding.
//! let mut want = vec![0.0f32; p.v_len()];
//! reference::forward(&p, x, &mut want, None, Par::Seq)?;
//! assert!(out.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
//!
//! // Backward from the saved output and log-sum-exp.
//! let d_out = vec![1.0f32; p.v_len()];
//! let (mut dq, mut dk, mut dv) = (vec![0.0; p.qk_len()], vec![0.0; p.qk_len()], vec![0.0; p.v_len()]);
//! let s = Saved { out: &out, lse: &lse, d_out: &d_out };
//! let g = Grads { d_query: &mut dq, d_key: &mut dk, d_value: &mut dv, d_rpb: None };
//! fused::backward(&p, x, s, g, Par::rayon(0))?;
//! // With d_out all ones, each value's gradient is the attention it receives:
//! // every query hands out a total weight of 1 per head.
//! let total: f32 = dv.iter().sum();
//! assert!((total - (p.lse_len() * 8) as f32).abs() < 1e-2);
//! # Ok::<(), na_core::Error>(())
//! ```
//!
//! # How they work
//!
//! Queries are processed in **tiles** of up to `L` lanes (the SIMD width: 8
//! on AVX2 and NEON, 16 on AVX-512): consecutive queries of one dilation
//! group along the last spatial axis, with the same leading coordinates. In
//! 2D/3D they therefore share their window on the leading axes, which is a
//! set of key *lines*.
//!
//! With stride 1 on the last axis (the common case) keys and values are
//! first transposed per batch element (channel-major, a group's positions
//! adjacent, 8x8 SIMD transposes), and tiles are cut into runs whose
//! windows either start one slot apart (interior queries) or all start
//! together (queries clamped at a border, or every query of a dilation
//! group no longer than the kernel). For every key line the logits of the
//! whole tile are then one sliding-window product: per channel and window
//! slot, one unaligned vector load of consecutive keys (or one broadcast
//! load) and one FMA, no key outside a lane's window. The logits of all
//! lines of the window (up to 512 slots) go through one online-softmax
//! step, then the same sliding form accumulates `P V`. Other strides take a
//! general path that packs the union of the tile's windows (at most
//! `L + k + s` keys per line) and masks each lane's keys. No `N x window`
//! score tensor exists; scratch is a few kilobytes per thread.
//!
//! On the sliding-window path, tiles of up to 3 query rows (2 on AVX2 and
//! NEON) of one dilation group of the second-to-last axis share their
//! columns: each key and value line in the union of the rows' windows is
//! loaded once and multiplied into every row that sees it, so one unaligned
//! load feeds up to 3 FMAs (forward and backward pass 1; see
//! `tile/rows.rs`). Backward pass 2 does the same with key tiles of 2 rows
//! on every ISA, each query and `d_out` line loaded once for both rows. Per
//! row, results are bit-identical to one-row tiles.
//! Each ISA compiles one row count, and these kernels do not depend on the
//! storage type: they run through `Simd::vectorize` (a `WithSimd`
//! operation inside the ISA's target-feature function), once per ISA.
//!
//! The backward pass recomputes probabilities from the saved `lse`. Pass 1
//! gathers `d_query` (and `d_rpb`) over each query tile's window. Pass 2
//! gathers `d_key` and `d_value` over each key tile's **inverse
//! neighbourhood** (the queries whose windows contain the key), with lanes =
//! keys. Nothing is scattered, so threads never write to shared memory.
//!
//! Work is cut into fixed chunks (whole rows of the last axis, a few rows
//! at a time, on maps of 16 lines or more; else runs of at most
//! `64 * dilation` positions of one line); `d_rpb` is summed per chunk and the chunk
//! sums are added in chunk order, so results are bit-identical for every
//! [`Par`]. They may differ in the last bits between ISAs (FMA or not, and
//! the chunks, which follow the ISA's tile rows, order the `d_rpb` sums).
//!
//! # ISA dispatch
//!
//! On x86-64 under `std`, the best [`Isa`] is detected once at run time
//! (AVX-512F, else AVX2+FMA) and the kernels run inside `#[target_feature]`
//! trampolines. NEON (with FMA) is part of the aarch64 baseline, so it is
//! chosen at compile time, with or without `std`. Elsewhere, and on x86-64
//! without `std`, the kernels run the portable [`Isa::Generic`] code.
//!
//! # Layout of this module
//!
//! From the entry points down: `mod.rs` ([`Fused`], the [`Kernels`]
//! family, with its checks, scratch and threads; the allocating entry
//! points come with the trait) →
//! `tile/` (the tile loops: `forward.rs`, `backward.rs`, `io.rs` for loads,
//! stores and transposes, `shape.rs` for a tile's lanes) → `geo.rs` (tile
//! geometry, work and scratch lengths), `softmax.rs`, `mask.rs`, `micro.rs`
//! (register-blocked micro-kernels) → `simd/` (the `Simd` trait and
//! one file per ISA) and `isa.rs` (`Isa`, detection, dispatch).

mod geo;
mod isa;
mod mask;
mod micro;
mod simd;
mod softmax;
mod tile;

pub use isa::Isa;

use crate::tensors::{check_backward, check_forward, check_scratch, Grads, Inputs, Saved};
#[cfg(feature = "alloc")]
use crate::Par;
use crate::{Element, Error, Kernels, Problem};
use geo::Geo;
use isa::check_isa;

/// The fused kernels as a [`Kernels`] family: on one chosen [`Isa`], or on
/// the one [`Isa::best_for`] picks per problem (what the free functions
/// without `_on` do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fused {
    isa: Option<Isa>,
}

impl Fused {
    /// On the ISA [`Isa::best_for`] picks for each problem.
    pub fn best() -> Self {
        Fused { isa: None }
    }

    /// On `isa` (calls fail with [`Error::UnsupportedIsa`] where this CPU
    /// lacks it).
    pub fn on(isa: Isa) -> Self {
        Fused { isa: Some(isa) }
    }

    /// The ISA a call for `p` runs on.
    pub fn isa_for(&self, p: &Problem) -> Isa {
        self.isa.unwrap_or_else(|| Isa::best_for(p))
    }
}

impl Kernels for Fused {
    fn name(&self) -> &'static str {
        "fused"
    }

    fn forward_scratch_len(&self, p: &Problem) -> usize {
        forward_scratch_len_on(self.isa_for(p), p)
    }

    fn backward_scratch_len(&self, p: &Problem) -> usize {
        backward_scratch_len_on(self.isa_for(p), p)
    }

    fn forward_with_scratch<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        out: &mut [T],
        lse: Option<&mut [f32]>,
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        forward_with_scratch_on(self.isa_for(p), p, x, out, lse, scratch)
    }

    fn backward_with_scratch<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        s: Saved<'_, T>,
        g: Grads<'_, T>,
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        backward_with_scratch_on(self.isa_for(p), p, x, s, g, scratch)
    }

    #[cfg(feature = "rayon")]
    fn forward_threaded<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        out: &mut [T],
        lse: Option<&mut [f32]>,
    ) -> Result<(), Error> {
        forward_rayon(self.isa_for(p), p, x, out, lse)
    }

    #[cfg(feature = "rayon")]
    fn backward_threaded<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        s: Saved<'_, T>,
        g: Grads<'_, T>,
    ) -> Result<(), Error> {
        backward_rayon(self.isa_for(p), p, x, s, g)
    }
}

/// Scratch (in `f32`) one sequential forward call on the default ISA
/// ([`Isa::best_for`], what [`forward_with_scratch`] runs on) needs: see
/// [`forward_scratch_len_on`].
pub fn forward_scratch_len(p: &Problem) -> usize {
    forward_scratch_len_on(Isa::best_for(p), p)
}

/// Scratch (in `f32`) one sequential forward call on `isa` needs: the tile
/// workspace, sized by the ISA's lanes ([`Isa::lanes`]) and the window, plus,
/// with stride 1 on the last axis, transposed keys and values of one batch
/// element.
pub fn forward_scratch_len_on(isa: Isa, p: &Problem) -> usize {
    let g = Geo::new(p, isa.tile_rows());
    geo::fwd_work_len(p, isa.lanes()) + transposed_len(&g)
}

fn transposed_len(g: &Geo) -> usize {
    if g.transposed() {
        g.kt_len(g.dk()) + g.kt_len(g.dv())
    } else {
        0
    }
}

/// Scratch (in `f32`) one sequential backward call on the default ISA
/// ([`Isa::best_for`], what [`backward_with_scratch`] runs on) needs: see
/// [`backward_scratch_len_on`].
pub fn backward_scratch_len(p: &Problem) -> usize {
    backward_scratch_len_on(Isa::best_for(p), p)
}

/// Scratch (in `f32`) one sequential backward call on `isa` needs: `delta`
/// (one per `lse` entry), two bias-gradient accumulators, the tile workspace
/// sized by the ISA's lanes ([`Isa::lanes`]), plus, with stride 1 on the last
/// axis, transposed keys, values, queries, `d_out`, `lse` and `delta` of one
/// batch element.
pub fn backward_scratch_len_on(isa: Isa, p: &Problem) -> usize {
    let work = geo::bwd_work_len(p, isa.lanes());
    p.lse_len() + 2 * p.rpb_len() + work + bwd_transposed_len(&Geo::new(p, isa.tile_rows()))
}

/// Forward pass without allocation, on the calling thread: writes `out`
/// (`[batch, *spatial, heads, head_dim_v]`) and, if given, `lse`
/// (`[batch, *spatial, heads]`). `scratch` needs [`forward_scratch_len`].
pub fn forward_with_scratch<T: Element>(
    p: &Problem,
    x: Inputs<'_, T>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
    scratch: &mut [f32],
) -> Result<(), Error> {
    forward_with_scratch_on(Isa::best_for(p), p, x, out, lse, scratch)
}

/// [`forward_with_scratch`] on a chosen ISA (for tests and benchmarks):
/// `scratch` needs [`forward_scratch_len_on`] for the same ISA.
pub fn forward_with_scratch_on<T: Element>(
    isa: Isa,
    p: &Problem,
    x: Inputs<'_, T>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
    scratch: &mut [f32],
) -> Result<(), Error> {
    check_isa(isa)?;
    check_forward(p, &x, out, lse.as_deref())?;
    let needed = forward_scratch_len_on(isa, p);
    check_scratch(scratch, needed)?;
    let g = Geo::new(p, isa.tile_rows());
    let (kt, vt, work) = split_transposed(&g, scratch);
    let (wv, h) = (p.heads() * p.head_dim_v(), p.heads());
    let (mut out, mut lse_rest) = (out, lse);
    for b in 0..p.batch() {
        let kvt = if g.transposed() {
            transpose_kv(isa, &g, &x, b, kt, vt);
            Some((&kt[..], &vt[..]))
        } else {
            None
        };
        for ci in b * g.fchunks_per_batch()..(b + 1) * g.fchunks_per_batch() {
            let n = g.fchunk(ci).len;
            let (o, rest) = core::mem::take(&mut out).split_at_mut(n * wv);
            out = rest;
            let l = match lse_rest.take() {
                Some(l) => {
                    let (a, b) = l.split_at_mut(n * h);
                    lse_rest = Some(b);
                    Some(a)
                }
                None => None,
            };
            tile::forward_chunk(isa, &g, &x, kvt, ci, o, l, work);
        }
    }
    Ok(())
}

/// Cuts the transposed keys and values (empty unless [`Geo::transposed`])
/// off the front of `scratch`, zeroing the padding that lanes past a tile's
/// end may read.
fn split_transposed<'a>(
    g: &Geo,
    scratch: &'a mut [f32],
) -> (&'a mut [f32], &'a mut [f32], &'a mut [f32]) {
    let (nk, nv) = if g.transposed() {
        (g.kt_len(g.dk()), g.kt_len(g.dv()))
    } else {
        (0, 0)
    };
    let (kt, rest) = scratch.split_at_mut(nk);
    let (vt, work) = rest.split_at_mut(nv);
    for t in [&mut *kt, &mut *vt] {
        let n = t.len();
        t[n.saturating_sub(geo::T_PAD)..].fill(0.0);
    }
    (kt, vt, work)
}

/// Transposes keys and values of batch element `b` into `kt` and `vt` (one
/// line after another; see [`tile::transpose_line`]).
fn transpose_kv<T: Element>(
    isa: Isa,
    g: &Geo,
    x: &Inputs<'_, T>,
    b: usize,
    kt: &mut [f32],
    vt: &mut [f32],
) {
    let (kl, vl) = (g.line_len(g.dk()), g.line_len(g.dv()));
    for line in 0..g.lines_per_batch() {
        tile::transpose_kv_line(
            isa,
            g,
            x,
            b,
            line,
            &mut kt[line * kl..][..kl],
            &mut vt[line * vl..][..vl],
        );
    }
}

/// [`transpose_kv`] with one rayon task per line.
#[cfg(feature = "rayon")]
fn par_transpose_kv<T: Element>(
    isa: Isa,
    g: &Geo,
    x: &Inputs<'_, T>,
    b: usize,
    kt: &mut [f32],
    vt: &mut [f32],
) {
    use rayon::prelude::*;
    let (kl, vl, lines) = (g.line_len(g.dk()), g.line_len(g.dv()), g.lines_per_batch());
    kt[..lines * kl]
        .par_chunks_mut(kl)
        .zip(vt[..lines * vl].par_chunks_mut(vl))
        .enumerate()
        .for_each(|(line, (k, v))| tile::transpose_kv_line(isa, g, x, b, line, k, v));
}

/// Floats of the per-batch-element transposed tensors of the backward pass:
/// keys, values, queries, `d_out`, `lse` and `delta`.
fn bwd_transposed_len(g: &Geo) -> usize {
    if g.transposed() {
        2 * (g.kt_len(g.dk()) + g.kt_len(g.dv()) + g.kt_len(1))
    } else {
        0
    }
}

/// The backward pass's transposed buffers, cut off the front of `scratch`
/// (all empty unless [`Geo::transposed`]), padding zeroed.
struct BwdT<'a> {
    kt: &'a mut [f32],
    vt: &'a mut [f32],
    qt: &'a mut [f32],
    dot: &'a mut [f32],
    lse: &'a mut [f32],
    delta: &'a mut [f32],
}

fn split_bwd_transposed<'a>(g: &Geo, scratch: &'a mut [f32]) -> (BwdT<'a>, &'a mut [f32]) {
    let on = g.transposed();
    let len = |w: usize| if on { g.kt_len(w) } else { 0 };
    let mut rest = scratch;
    let mut cut = |n: usize| {
        let (a, b) = core::mem::take(&mut rest).split_at_mut(n);
        rest = b;
        let m = a.len();
        a[m.saturating_sub(geo::T_PAD)..].fill(0.0);
        a
    };
    let t = BwdT {
        kt: cut(len(g.dk())),
        vt: cut(len(g.dv())),
        qt: cut(len(g.dk())),
        dot: cut(len(g.dv())),
        lse: cut(len(1)),
        delta: cut(len(1)),
    };
    (t, rest)
}

impl BwdT<'_> {
    /// Transposes keys and values of batch element `b` (pass 1's needs).
    fn keys<T: Element>(&mut self, isa: Isa, g: &Geo, x: &Inputs<'_, T>, b: usize) {
        transpose_kv(isa, g, x, b, self.kt, self.vt);
    }

    /// Transposes queries, `d_out`, `lse` and `delta` of batch element `b`
    /// (pass 2's needs).
    fn queries<T: Element>(
        &mut self,
        isa: Isa,
        g: &Geo,
        x: &Inputs<'_, T>,
        s: &Saved<'_, T>,
        delta: &[f32],
        b: usize,
    ) {
        for line in 0..g.lines_per_batch() {
            let (kl, vl, one) = (g.line_len(g.dk()), g.line_len(g.dv()), g.line_len(1));
            tile::transpose_line(
                isa,
                g,
                x.query,
                g.dk(),
                b,
                line,
                &mut self.qt[line * kl..][..kl],
            );
            tile::transpose_line(
                isa,
                g,
                s.d_out,
                g.dv(),
                b,
                line,
                &mut self.dot[line * vl..][..vl],
            );
            tile::transpose_line(
                isa,
                g,
                s.lse,
                1,
                b,
                line,
                &mut self.lse[line * one..][..one],
            );
            tile::transpose_line(
                isa,
                g,
                delta,
                1,
                b,
                line,
                &mut self.delta[line * one..][..one],
            );
        }
    }

    fn kv(&self, g: &Geo) -> Option<(&[f32], &[f32])> {
        g.transposed().then_some((&self.kt[..], &self.vt[..]))
    }

    fn qd(&self, g: &Geo) -> Option<tile::QueriesT<'_>> {
        g.transposed().then_some(tile::QueriesT {
            q: self.qt,
            d_out: self.dot,
            lse: self.lse,
            delta: self.delta,
        })
    }
}

/// Forward pass: writes `out` (`[batch, *spatial, heads, head_dim_v]`) and,
/// if given, `lse` (`[batch, *spatial, heads]`), with the threads `par` asks
/// for, on the ISA [`Isa::best_for`] picks.
#[cfg(feature = "alloc")]
pub fn forward<T: Element>(
    p: &Problem,
    x: Inputs<'_, T>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
    par: Par,
) -> Result<(), Error> {
    forward_on(Isa::best_for(p), p, x, out, lse, par)
}

/// [`forward`] on a chosen ISA (for tests and benchmarks).
#[cfg(feature = "alloc")]
pub fn forward_on<T: Element>(
    isa: Isa,
    p: &Problem,
    x: Inputs<'_, T>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
    par: Par,
) -> Result<(), Error> {
    Fused::on(isa).forward(p, x, out, lse, par)
}

/// Cuts `s` into one slice per chunk (forward chunks when `fwd`, see
/// [`Geo::fchunk`]), `per_pos` elements per position.
#[cfg(feature = "rayon")]
fn split_chunks<'a, T>(
    g: &Geo,
    fwd: bool,
    mut s: &'a mut [T],
    per_pos: usize,
) -> alloc::vec::Vec<&'a mut [T]> {
    let n = if fwd { g.fchunks() } else { g.chunks() };
    let mut v = alloc::vec::Vec::with_capacity(n);
    for ci in 0..n {
        let len = if fwd {
            g.fchunk(ci).len
        } else {
            g.chunk(ci).len
        };
        let (a, b) = core::mem::take(&mut s).split_at_mut(len * per_pos);
        v.push(a);
        s = b;
    }
    v
}

/// A large scratch buffer (the transposed tensors) kept between threaded
/// calls: a fresh allocation of a few megabytes costs a page fault per 4 KiB
/// on first touch, which is a large part of a millisecond kernel. Every
/// element the kernels read is written first (the transposition covers the
/// buffer; [`split_transposed`] zeroes the padding), so stale contents are
/// harmless. Concurrent calls each get their own buffer (one of them a new
/// allocation); the largest is kept when they are returned.
#[cfg(feature = "rayon")]
struct Recycled(alloc::vec::Vec<f32>);

#[cfg(feature = "rayon")]
static RECYCLED: std::sync::Mutex<alloc::vec::Vec<f32>> =
    std::sync::Mutex::new(alloc::vec::Vec::new());

#[cfg(feature = "rayon")]
impl Recycled {
    /// A buffer of `len` floats (contents unspecified).
    fn take(len: usize) -> Self {
        let mut v = RECYCLED
            .lock()
            .map(|mut g| core::mem::take(&mut *g))
            .unwrap_or_default();
        v.resize(len, 0.0);
        Recycled(v)
    }
}

#[cfg(feature = "rayon")]
impl core::ops::Deref for Recycled {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

#[cfg(feature = "rayon")]
impl core::ops::DerefMut for Recycled {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

#[cfg(feature = "rayon")]
impl Drop for Recycled {
    fn drop(&mut self) {
        let v = core::mem::take(&mut self.0);
        // Keep at most 256 MiB between calls.
        if v.capacity() > (64 << 20) {
            return;
        }
        if let Ok(mut g) = RECYCLED.lock() {
            if v.capacity() > g.capacity() {
                *g = v;
            }
        }
    }
}

#[cfg(feature = "rayon")]
fn forward_rayon<T: Element>(
    isa: Isa,
    p: &Problem,
    x: Inputs<'_, T>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<(), Error> {
    use rayon::prelude::*;
    check_isa(isa)?;
    check_forward(p, &x, out, lse.as_deref())?;
    let g = Geo::new(p, isa.tile_rows());
    let len = geo::fwd_work_len(p, isa.lanes());
    let mut kv = Recycled::take(transposed_len(&g));
    let (kt, vt, _) = split_transposed(&g, &mut kv);
    let cpb = g.fchunks_per_batch();
    let mut outs = split_chunks(&g, true, out, p.heads() * p.head_dim_v()).into_iter();
    let mut lses = lse.map(|l| split_chunks(&g, true, l, p.heads()).into_iter());
    let init = || alloc::vec![0.0f32; len];
    for b in 0..p.batch() {
        if g.transposed() {
            par_transpose_kv(isa, &g, &x, b, kt, vt);
        }
        let kvt = g.transposed().then_some((&kt[..], &vt[..]));
        let o: alloc::vec::Vec<_> = outs.by_ref().take(cpb).collect();
        let first = b * cpb;
        match lses.as_mut() {
            Some(ls) => {
                let l: alloc::vec::Vec<_> = ls.by_ref().take(cpb).collect();
                o.into_par_iter()
                    .zip(l)
                    .enumerate()
                    .for_each_init(init, |s, (i, (o, l))| {
                        tile::forward_chunk(isa, &g, &x, kvt, first + i, o, Some(l), s)
                    })
            }
            None => o
                .into_par_iter()
                .enumerate()
                .for_each_init(init, |s, (i, o)| {
                    tile::forward_chunk(isa, &g, &x, kvt, first + i, o, None, s)
                }),
        }
    }
    Ok(())
}

/// Backward pass without allocation, on the calling thread: writes
/// `d_query`, `d_key`, `d_value` and, when requested (and `rpb` was given),
/// `d_rpb`. `scratch` needs [`backward_scratch_len`].
pub fn backward_with_scratch<T: Element>(
    p: &Problem,
    x: Inputs<'_, T>,
    s: Saved<'_, T>,
    g: Grads<'_, T>,
    scratch: &mut [f32],
) -> Result<(), Error> {
    backward_with_scratch_on(Isa::best_for(p), p, x, s, g, scratch)
}

/// [`backward_with_scratch`] on a chosen ISA (for tests and benchmarks):
/// `scratch` needs [`backward_scratch_len_on`] for the same ISA.
pub fn backward_with_scratch_on<T: Element>(
    isa: Isa,
    p: &Problem,
    x: Inputs<'_, T>,
    s: Saved<'_, T>,
    gr: Grads<'_, T>,
    scratch: &mut [f32],
) -> Result<(), Error> {
    check_isa(isa)?;
    check_backward(p, &x, &s, &gr)?;
    let needed = backward_scratch_len_on(isa, p);
    check_scratch(scratch, needed)?;
    let g = Geo::new(p, isa.tile_rows());
    let (delta, rest) = scratch.split_at_mut(p.lse_len());
    let (total, rest) = rest.split_at_mut(p.rpb_len());
    let (part, rest) = rest.split_at_mut(p.rpb_len());
    let (mut tb, work) = split_bwd_transposed(&g, rest);
    let want_rpb = gr.d_rpb.is_some();
    total.fill(0.0);
    let (wk, wv, h) = (
        p.heads() * p.head_dim(),
        p.heads() * p.head_dim_v(),
        p.heads(),
    );
    let cpb = g.chunks_per_batch();
    let (mut dq, mut dk, mut dv) = (gr.d_query, gr.d_key, gr.d_value);
    let mut pos = 0;
    for b in 0..p.batch() {
        if g.transposed() {
            tb.keys(isa, &g, &x, b);
        }
        // Pass 1: d_query, delta and d_rpb over this batch element's
        // (forward-shaped) chunks.
        let fpb = g.fchunks_per_batch();
        for ci in b * fpb..(b + 1) * fpb {
            let n = g.fchunk(ci).len;
            let (a, rest) = core::mem::take(&mut dq).split_at_mut(n * wk);
            dq = rest;
            part.fill(0.0);
            let pb = if want_rpb { Some(&mut *part) } else { None };
            let dl = &mut delta[pos * h..][..n * h];
            tile::backward_query_chunk(isa, &g, &x, &s, tb.kv(&g), ci, a, dl, pb, work);
            for (t, v) in total.iter_mut().zip(part.iter()) {
                *t += v;
            }
            pos += n;
        }
        // Pass 2: d_key and d_value, reading this element's queries.
        if g.transposed() {
            tb.queries(isa, &g, &x, &s, delta, b);
        }
        for ci in b * cpb..(b + 1) * cpb {
            let n = g.chunk(ci).len;
            let (a, rest) = core::mem::take(&mut dk).split_at_mut(n * wk);
            dk = rest;
            let (c, rest) = core::mem::take(&mut dv).split_at_mut(n * wv);
            dv = rest;
            tile::backward_key_chunk(isa, &g, &x, &s, delta, tb.qd(&g), ci, a, c, work);
        }
    }
    if let Some(d) = gr.d_rpb {
        for (o, v) in d.iter_mut().zip(total.iter()) {
            *o = T::from_f32(*v);
        }
    }
    Ok(())
}

/// Backward pass: writes `d_query`, `d_key`, `d_value` and, when requested
/// (and `rpb` was given), `d_rpb`, with the threads `par` asks for, on the
/// ISA [`Isa::best_for`] picks. Deterministic, and bit-identical for every `par`.
#[cfg(feature = "alloc")]
pub fn backward<T: Element>(
    p: &Problem,
    x: Inputs<'_, T>,
    s: Saved<'_, T>,
    g: Grads<'_, T>,
    par: Par,
) -> Result<(), Error> {
    backward_on(Isa::best_for(p), p, x, s, g, par)
}

/// [`backward`] on a chosen ISA (for tests and benchmarks).
#[cfg(feature = "alloc")]
pub fn backward_on<T: Element>(
    isa: Isa,
    p: &Problem,
    x: Inputs<'_, T>,
    s: Saved<'_, T>,
    g: Grads<'_, T>,
    par: Par,
) -> Result<(), Error> {
    Fused::on(isa).backward(p, x, s, g, par)
}

#[cfg(feature = "rayon")]
fn backward_rayon<T: Element>(
    isa: Isa,
    p: &Problem,
    x: Inputs<'_, T>,
    s: Saved<'_, T>,
    gr: Grads<'_, T>,
) -> Result<(), Error> {
    use rayon::prelude::*;
    check_isa(isa)?;
    check_backward(p, &x, &s, &gr)?;
    let g = Geo::new(p, isa.tile_rows());
    let (wk, wv, h) = (
        p.heads() * p.head_dim(),
        p.heads() * p.head_dim_v(),
        p.heads(),
    );
    let mut delta = alloc::vec![0.0f32; p.lse_len()];
    let want_rpb = gr.d_rpb.is_some();
    let work_len = geo::bwd_work_len(p, isa.lanes());
    let rpb_len = if want_rpb { p.rpb_len() } else { 0 };
    let mut tbuf = Recycled::take(bwd_transposed_len(&g));
    let (tb, _) = split_bwd_transposed(&g, &mut tbuf);
    let cpb = g.chunks_per_batch();
    let per_b = p.tokens() * h;
    let mut dqs = split_chunks(&g, true, gr.d_query, wk).into_iter();
    let mut dks = split_chunks(&g, false, gr.d_key, wk).into_iter();
    let mut dvs = split_chunks(&g, false, gr.d_value, wv).into_iter();
    let mut parts: alloc::vec::Vec<alloc::vec::Vec<f32>> =
        alloc::vec::Vec::with_capacity(g.fchunks());
    let (kl, vl, one, lines) = (
        g.line_len(g.dk()),
        g.line_len(g.dv()),
        g.line_len(1),
        g.lines_per_batch(),
    );
    for b in 0..p.batch() {
        if g.transposed() {
            par_transpose_kv(isa, &g, &x, b, tb.kt, tb.vt);
        }
        let kvt = g.transposed().then_some((&tb.kt[..], &tb.vt[..]));
        let first = b * cpb;
        // Pass 1 over this batch element's (forward-shaped) chunks.
        let (fpb, ffirst) = (g.fchunks_per_batch(), b * g.fchunks_per_batch());
        let dq_b: alloc::vec::Vec<_> = dqs.by_ref().take(fpb).collect();
        let mut delta_b = &mut delta[b * per_b..][..per_b];
        let mut dl_b = alloc::vec::Vec::with_capacity(fpb);
        for ci in ffirst..ffirst + fpb {
            let (a, rest) = core::mem::take(&mut delta_b).split_at_mut(g.fchunk(ci).len * h);
            dl_b.push(a);
            delta_b = rest;
        }
        let part_b: alloc::vec::Vec<alloc::vec::Vec<f32>> = dq_b
            .into_par_iter()
            .zip(dl_b)
            .enumerate()
            .map_init(
                || alloc::vec![0.0f32; work_len],
                |work, (i, (dq, dl))| {
                    let mut part = alloc::vec![0.0f32; rpb_len];
                    let pb = if want_rpb { Some(&mut part[..]) } else { None };
                    tile::backward_query_chunk(isa, &g, &x, &s, kvt, ffirst + i, dq, dl, pb, work);
                    part
                },
            )
            .collect();
        parts.extend(part_b);
        // Pass 2, reading this element's queries, d_out, lse and delta.
        let delta_ro = &delta[..];
        if g.transposed() {
            tb.qt[..lines * kl]
                .par_chunks_mut(kl)
                .zip(tb.dot[..lines * vl].par_chunks_mut(vl))
                .zip(
                    tb.lse[..lines * one]
                        .par_chunks_mut(one)
                        .zip(tb.delta[..lines * one].par_chunks_mut(one)),
                )
                .enumerate()
                .for_each(|(line, ((q, o), (l, d)))| {
                    tile::transpose_line(isa, &g, x.query, g.dk(), b, line, q);
                    tile::transpose_line(isa, &g, s.d_out, g.dv(), b, line, o);
                    tile::transpose_line(isa, &g, s.lse, 1, b, line, l);
                    tile::transpose_line(isa, &g, delta_ro, 1, b, line, d);
                });
        }
        let qdt = g.transposed().then_some(tile::QueriesT {
            q: tb.qt,
            d_out: tb.dot,
            lse: tb.lse,
            delta: tb.delta,
        });
        let dk_b: alloc::vec::Vec<_> = dks.by_ref().take(cpb).collect();
        let dv_b: alloc::vec::Vec<_> = dvs.by_ref().take(cpb).collect();
        dk_b.into_par_iter().zip(dv_b).enumerate().for_each_init(
            || alloc::vec![0.0f32; work_len],
            |work, (i, (dk, dv))| {
                tile::backward_key_chunk(isa, &g, &x, &s, delta_ro, qdt, first + i, dk, dv, work)
            },
        );
    }
    if let Some(d) = gr.d_rpb {
        let mut total = alloc::vec![0.0f32; p.rpb_len()];
        for part in &parts {
            for (t, v) in total.iter_mut().zip(part) {
                *t += v;
            }
        }
        for (o, v) in d.iter_mut().zip(&total) {
            *o = T::from_f32(*v);
        }
    }
    Ok(())
}
