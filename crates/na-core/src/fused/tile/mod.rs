//! The tile loops of the fused kernels, generic over the vector type (`S`),
//! the lane count (`L`) and the storage type (`T`), and their per-ISA
//! instances (see [`super::isa::dispatch`]).
//!
//! A *tile* is up to `L` positions of one dilation group inside a chunk
//! ([`super::geo::Chunk`]); a *line* is one combination of leading-axis
//! coordinates of the keys (forward, pass 1) or queries (pass 2) the tile
//! sees.

mod backward;
mod forward;
mod io;
mod rows;
mod shape;

use super::geo::Geo;
use super::isa::dispatch;
use crate::fused::isa::Isa;
use crate::tensors::{Inputs, Saved};
use crate::Element;
use backward::{backward_key, backward_query};
use forward::forward;
use io::transpose_line_k;
pub(crate) use io::QueriesT;

dispatch!(transpose_line, transpose_line_k, (g: &Geo, src: &[T], width: usize, b: usize, line: usize, dst: &mut [f32]));
dispatch!(forward_chunk, forward, (g: &Geo, x: &Inputs<'_, T>, kvt: Option<(&[f32], &[f32])>, ci: usize, out: &mut [T], lse: Option<&mut [f32]>, scratch: &mut [f32]));
dispatch!(backward_query_chunk, backward_query, (g: &Geo, x: &Inputs<'_, T>, sv: &Saved<'_, T>, kvt: Option<(&[f32], &[f32])>, ci: usize, dq: &mut [T], delta: &mut [f32], drpb: Option<&mut [f32]>, scratch: &mut [f32]));
dispatch!(backward_key_chunk, backward_key, (g: &Geo, x: &Inputs<'_, T>, sv: &Saved<'_, T>, delta: &[f32], qdt: Option<QueriesT<'_>>, ci: usize, dk_out: &mut [T], dv_out: &mut [T], scratch: &mut [f32]));

/// Keys and values of line `line` of batch element `b`, transposed (see
/// [`transpose_line`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn transpose_kv_line<T: Element>(
    isa: Isa,
    g: &Geo,
    x: &Inputs<'_, T>,
    b: usize,
    line: usize,
    kt: &mut [f32],
    vt: &mut [f32],
) {
    transpose_line(isa, g, x.key, g.dk(), b, line, kt);
    transpose_line(isa, g, x.value, g.dv(), b, line, vt);
}
