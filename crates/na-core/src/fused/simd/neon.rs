//! aarch64 NEON with FMA: the portable 8-lane arrays with fused
//! multiply-add, compiled inside `#[target_feature(enable = "neon")]`
//! trampolines, where each `[f32; 8]` operation becomes two 4-lane NEON
//! instructions.

use super::portable::Lanes8;
use super::Fused;

/// NEON vectors: two `float32x4_t` per 8-lane array, FMA arithmetic.
pub(crate) type Neon = Lanes8<Fused>;
