//! Kernel specialisation, launch geometry and the parameter block: the host
//! logic of a launch, pure and testable without a GPU.
//!
//! A [`KernelSpec`] is everything that is compiled into a module as a
//! `#define` (rank, kernel size, causal flags, which axes are dilated,
//! head dims, storage type, whether a bias is read, tile shape); the rest of
//! a problem (axis lengths, dilations, strides, batch, heads, scale) travels
//! at run time in [`NaParams`].

use na_core::{DType, Problem, MAX_AXES};

use crate::CudaError;

/// Warps per block of every attention kernel.
pub const WARPS: u32 = 4;
/// The largest `head_dim` / `head_dim_v` the kernels are built for.
pub const MAX_HEAD_DIM: usize = 256;
/// Threads per block of the `d_rpb` reduction.
pub const REDUCE_THREADS: u32 = 256;
/// The largest `d_rpb` partial-sum buffer (in `f32`) a backward call may use.
pub const MAX_RPB_PARTIAL: usize = 1 << 30;

/// The CUDA sources, embedded at build time.
const COMMON: &str = include_str!("../kernels/na_common.cuh");
const FWD: &str = include_str!("../kernels/na_fwd.cu");
const BWD: &str = include_str!("../kernels/na_bwd.cu");

/// Entry points of every module.
pub const ENTRY_FORWARD: &str = "na_fwd";
/// Backward pass 1: `d_query`, `delta`, partial `d_rpb`.
pub const ENTRY_BACKWARD_Q: &str = "na_bwd_q";
/// Backward pass 2: `d_key`, `d_value`.
pub const ENTRY_BACKWARD_KV: &str = "na_bwd_kv";
/// The fixed-order `d_rpb` reduction.
pub const ENTRY_RPB_REDUCE: &str = "na_rpb_reduce";

/// One compiled specialisation of the kernels. Two problems with equal
/// specs share a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelSpec {
    /// Spatial axes of the problem (1, 2, 3).
    pub rank: u8,
    /// Kernel size per padded axis (padding axes, in front, have 1).
    pub kernel: [u32; MAX_AXES],
    /// Causal flag per padded axis.
    pub causal: [bool; MAX_AXES],
    /// Whether the axis has dilation > 1 (the dilation itself is a run-time
    /// parameter; undilated axes fold `d = 1` into the code).
    pub dilated: [bool; MAX_AXES],
    /// Query/key head dimension.
    pub head_dim: u32,
    /// Value head dimension.
    pub head_dim_v: u32,
    /// Storage type of every tensor but `lse`.
    pub dtype: DType,
    /// Whether a bias table is read.
    pub rpb: bool,
    /// Tile extent per padded axis, in dilation-group coordinates.
    pub tile: [u32; MAX_AXES],
    /// Warps per block.
    pub warps: u32,
    /// Rows (keys or queries) staged in shared memory per chunk.
    pub chunk: u32,
}

/// The problem's axes padded in front to three: (len, kernel, stride,
/// dilation, causal) per axis.
pub(crate) fn padded_axes(p: &Problem) -> [(usize, usize, usize, usize, bool); MAX_AXES] {
    let mut out = [(1, 1, 1, 1, false); MAX_AXES];
    let pad = MAX_AXES - p.rank();
    for (o, a) in out[pad..].iter_mut().zip(p.axes()) {
        *o = (a.len(), a.kernel(), a.stride(), a.dilation(), a.causal());
    }
    out
}

/// Rows per warp for these head dims: as many as keep about 128 registers
/// of per-row state (12 for coordinates and windows, two f32 slices of the
/// head dims per lane), a power of two in `1..=16`. (ptxas, sm_90, d = 32:
/// 168 registers, no spill in the forward, 36 bytes in backward pass 1.)
pub fn rows_per_warp(head_dim: usize, head_dim_v: usize) -> u32 {
    let per_lane = head_dim.div_ceil(32) + head_dim_v.div_ceil(32);
    let fit = (128 / (12 + 2 * per_lane)).clamp(1, 16) as u32;
    1 << fit.ilog2()
}

/// The tile shape for `rank` axes and `tq` (a power of two) positions:
/// its factors of two dealt out from the last axis backwards.
pub fn tile_shape(rank: usize, tq: u32) -> [u32; MAX_AXES] {
    let mut tile = [1u32; MAX_AXES];
    let mut bits = tq.ilog2();
    let mut a = MAX_AXES - 1;
    while bits > 0 {
        tile[a] *= 2;
        bits -= 1;
        a = if a == MAX_AXES - rank {
            MAX_AXES - 1
        } else {
            a - 1
        };
    }
    tile
}

/// Rows staged per chunk: at most 32 KiB of f32 rows, at most 64.
pub fn chunk_rows(head_dim: usize, head_dim_v: usize) -> u32 {
    (8192 / (head_dim + head_dim_v)).clamp(1, 64) as u32
}

impl KernelSpec {
    /// The specialisation for `p` with storage `dtype`, reading a bias iff
    /// `rpb`. Fails for head dims above [`MAX_HEAD_DIM`].
    pub fn new(p: &Problem, dtype: DType, rpb: bool) -> Result<Self, CudaError> {
        for (what, d) in [("head_dim", p.head_dim()), ("head_dim_v", p.head_dim_v())] {
            if d > MAX_HEAD_DIM {
                return Err(CudaError::Unsupported {
                    what: format!("{what} {d} (the CUDA kernels take at most {MAX_HEAD_DIM})"),
                });
            }
        }
        let axes = padded_axes(p);
        let qpw = rows_per_warp(p.head_dim(), p.head_dim_v());
        Ok(KernelSpec {
            rank: p.rank() as u8,
            kernel: axes.map(|a| a.1 as u32),
            causal: axes.map(|a| a.4),
            dilated: axes.map(|a| a.3 > 1),
            head_dim: p.head_dim() as u32,
            head_dim_v: p.head_dim_v() as u32,
            dtype,
            rpb,
            tile: tile_shape(p.rank(), WARPS * qpw),
            warps: WARPS,
            chunk: chunk_rows(p.head_dim(), p.head_dim_v()),
        })
    }

    /// Threads per block of the attention kernels.
    pub fn threads(&self) -> u32 {
        self.warps * 32
    }

    /// The `#define` block that specialises the sources.
    pub fn defines(&self) -> String {
        let dtype = match self.dtype {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
        };
        let mut s = format!(
            "// specialisation: {self:?}\n#define NA_RANK {}\n",
            self.rank
        );
        for a in 0..MAX_AXES {
            s += &format!(
                "#define NA_K{a} {}\n#define NA_CAUSAL{a} {}\n#define NA_DILATED{a} {}\n#define NA_TQ{a} {}\n",
                self.kernel[a],
                self.causal[a] as u8,
                self.dilated[a] as u8,
                self.tile[a]
            );
        }
        s += &format!(
            "#define NA_D {}\n#define NA_DV {}\n#define NA_DTYPE {dtype}\n#define NA_HAS_RPB {}\n#define NA_WARPS {}\n#define NA_KC {}\n",
            self.head_dim, self.head_dim_v, self.rpb as u8, self.warps, self.chunk
        );
        s
    }

    /// The complete CUDA source of this specialisation: defines, then the
    /// embedded `na_common.cuh`, `na_fwd.cu`, `na_bwd.cu`.
    pub fn source(&self) -> String {
        let mut s = self.defines();
        for (name, text) in [
            ("na_common.cuh", COMMON),
            ("na_fwd.cu", FWD),
            ("na_bwd.cu", BWD),
        ] {
            s += &format!("\n// ---- {name}\n#line 1 \"{name}\"\n");
            s += text;
        }
        s
    }

    /// A short, stable, human-readable program name.
    pub fn name(&self) -> String {
        let k = &self.kernel[MAX_AXES - self.rank as usize..];
        let k: Vec<String> = k.iter().map(u32::to_string).collect();
        format!(
            "na{}d_k{}_{}{}{}_d{}x{}_{}.cu",
            self.rank,
            k.join("x"),
            if self.causal.iter().any(|&c| c) {
                "causal_"
            } else {
                ""
            },
            if self.dilated.iter().any(|&d| d) {
                "dil_"
            } else {
                ""
            },
            if self.rpb { "rpb" } else { "norpb" },
            self.head_dim,
            self.head_dim_v,
            self.dtype
        )
    }
}

/// How a problem is cut into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Tiles per dilation group, per padded axis: `ceil(ceil(L/d) / tile)`.
    pub tiles_per_group: [u32; MAX_AXES],
    /// Blocks of one (batch, head): `prod(d * tiles_per_group)`.
    pub tiles: u32,
    /// Blocks of a launch: `batch * heads * tiles` (the same for the
    /// forward and both backward passes).
    pub blocks: u32,
    /// Threads per block.
    pub threads: u32,
}

fn too_big(what: &str) -> CudaError {
    CudaError::Unsupported {
        what: format!("{what} exceeds the 32-bit launch limits"),
    }
}

/// The launch geometry of `p` under `spec`. Fails when the grid would not
/// fit one launch (more than `2^31 - 1` blocks).
pub fn geometry(p: &Problem, spec: &KernelSpec) -> Result<Geometry, CudaError> {
    let axes = padded_axes(p);
    let mut tpg = [1u32; MAX_AXES];
    let mut tiles: u64 = 1;
    for a in 0..MAX_AXES {
        let (len, _, _, d, _) = axes[a];
        let group = len.div_ceil(d) as u64;
        let t = group.div_ceil(spec.tile[a] as u64);
        tpg[a] = u32::try_from(t).map_err(|_| too_big("tiles per axis"))?;
        tiles = tiles
            .checked_mul(t * d as u64)
            .ok_or_else(|| too_big("tiles"))?;
    }
    let blocks = tiles
        .checked_mul(p.batch() as u64)
        .and_then(|x| x.checked_mul(p.heads() as u64))
        .filter(|&x| x <= i32::MAX as u64)
        .ok_or_else(|| too_big("blocks"))?;
    Ok(Geometry {
        tiles_per_group: tpg,
        tiles: tiles as u32,
        blocks: blocks as u32,
        threads: spec.threads(),
    })
}

/// The run-time parameter block, passed by value to every attention kernel.
/// Mirrors `struct NaParams` in `kernels/na_common.cuh` field by field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NaParams {
    /// Axis lengths (padded front with 1).
    pub len: [i32; MAX_AXES],
    /// Dilation per axis.
    pub dil: [i32; MAX_AXES],
    /// Stride per axis.
    pub stride: [i32; MAX_AXES],
    /// Tiles per dilation group per axis.
    pub tiles_per_group: [i32; MAX_AXES],
    /// Batch size.
    pub batch: i32,
    /// Number of heads.
    pub heads: i32,
    /// Spatial positions `N`.
    pub tokens: i32,
    /// Scale of `<q, k>`.
    pub scale: f32,
}

// SAFETY: NaParams is #[repr(C)], made of i32/f32 only (no padding, no
// pointers), and matches the CUDA struct's layout field by field, so the
// driver may copy its bytes as a kernel argument.
unsafe impl cudarc::driver::DeviceRepr for NaParams {}

fn i32_of(what: &str, x: usize) -> Result<i32, CudaError> {
    i32::try_from(x).map_err(|_| too_big(what))
}

impl NaParams {
    /// The parameters of `p` cut by `g`.
    pub fn new(p: &Problem, g: &Geometry) -> Result<Self, CudaError> {
        let axes = padded_axes(p);
        let mut len = [1; MAX_AXES];
        let mut dil = [1; MAX_AXES];
        let mut stride = [1; MAX_AXES];
        for a in 0..MAX_AXES {
            len[a] = i32_of("axis length", axes[a].0)?;
            stride[a] = i32_of("stride", axes[a].2)?;
            dil[a] = i32_of("dilation", axes[a].3)?;
        }
        Ok(NaParams {
            len,
            dil,
            stride,
            tiles_per_group: g.tiles_per_group.map(|t| t as i32),
            batch: i32_of("batch", p.batch())?,
            heads: i32_of("heads", p.heads())?,
            tokens: i32_of("spatial positions", p.tokens())?,
            scale: p.scale(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use na_core::Params;

    fn problem(spatial: &[usize], k: &[usize], d: usize, dv: usize) -> Problem {
        Problem::new(2, spatial, 3, d, dv, Params::new(k).unwrap()).unwrap()
    }

    #[test]
    fn tile_shapes_deal_factors_from_the_last_axis() {
        assert_eq!(tile_shape(1, 64), [1, 1, 64]);
        assert_eq!(tile_shape(2, 64), [1, 8, 8]);
        assert_eq!(tile_shape(2, 32), [1, 4, 8]);
        assert_eq!(tile_shape(3, 64), [4, 4, 4]);
        assert_eq!(tile_shape(3, 32), [2, 4, 4]);
        assert_eq!(tile_shape(3, 8), [2, 2, 2]);
        assert_eq!(tile_shape(2, 4), [1, 2, 2]);
    }

    #[test]
    fn rows_per_warp_and_chunks_follow_head_dims() {
        assert_eq!(rows_per_warp(8, 8), 8);
        assert_eq!(rows_per_warp(32, 32), 8);
        assert_eq!(rows_per_warp(64, 64), 4);
        assert_eq!(rows_per_warp(128, 128), 4);
        assert_eq!(rows_per_warp(256, 256), 2);
        assert_eq!(rows_per_warp(64, 32), 4); // 128 / 18 = 7 -> 4
        assert_eq!(chunk_rows(32, 32), 64);
        assert_eq!(chunk_rows(128, 128), 32);
        assert_eq!(chunk_rows(256, 256), 16);
        // The static_assert of na_common.cuh: chunk * (d + dv) * 4 <= 32 KiB.
        for d in [1, 5, 8, 32, 64, 100, 128, 200, 256] {
            for dv in [1, 8, 64, 256] {
                assert!(chunk_rows(d, dv) as usize * (d + dv) * 4 <= 32768);
                let q = rows_per_warp(d, dv);
                assert!(q.is_power_of_two() && (1..=16).contains(&q));
            }
        }
    }

    #[test]
    fn specs_pad_axes_in_front_and_key_on_what_is_compiled() {
        let p = Problem::new(
            1,
            &[9, 20],
            2,
            32,
            16,
            Params::new(&[3, 4])
                .unwrap()
                .with_dilation(&[1, 3])
                .unwrap()
                .with_causal(&[true, false])
                .unwrap()
                .with_stride(&[2])
                .unwrap(),
        )
        .unwrap();
        let s = KernelSpec::new(&p, DType::F16, true).unwrap();
        assert_eq!(s.rank, 2);
        assert_eq!(s.kernel, [1, 3, 4]);
        assert_eq!(s.causal, [false, true, false]);
        assert_eq!(s.dilated, [false, false, true]);
        assert_eq!(s.tile, [1, 4, 8]);
        assert_eq!(s.threads(), 128);
        assert_eq!(s.name(), "na2d_k3x4_causal_dil_rpb_d32x16_f16.cu");
        let d = s.defines();
        for line in [
            "#define NA_K0 1\n",
            "#define NA_K1 3\n",
            "#define NA_K2 4\n",
            "#define NA_CAUSAL1 1\n",
            "#define NA_DILATED2 1\n",
            "#define NA_DTYPE 1\n",
            "#define NA_HAS_RPB 1\n",
            "#define NA_D 32\n",
            "#define NA_DV 16\n",
        ] {
            assert!(d.contains(line), "{line:?} missing from\n{d}");
        }
        // Stride and the dilation's value are run-time: same spec.
        let q = Problem::new(
            4,
            &[9, 21],
            2,
            32,
            16,
            Params::new(&[3, 4])
                .unwrap()
                .with_dilation(&[1, 2])
                .unwrap()
                .with_causal(&[true, false])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(KernelSpec::new(&q, DType::F16, true).unwrap(), s);
        assert_ne!(KernelSpec::new(&q, DType::BF16, true).unwrap(), s);
        assert_ne!(KernelSpec::new(&q, DType::F16, false).unwrap(), s);
        let src = s.source();
        assert!(src.starts_with("// specialisation"));
        for entry in [
            ENTRY_FORWARD,
            ENTRY_BACKWARD_Q,
            ENTRY_BACKWARD_KV,
            ENTRY_RPB_REDUCE,
        ] {
            assert!(src.contains(&format!("{entry}(")), "{entry}");
        }
    }

    #[test]
    fn head_dims_above_the_limit_are_typed_errors() {
        let p = problem(&[8], &[3], 257, 8);
        assert!(matches!(
            KernelSpec::new(&p, DType::F32, false),
            Err(CudaError::Unsupported { what }) if what.contains("head_dim 257")
        ));
        let p = problem(&[8], &[3], 8, 300);
        assert!(KernelSpec::new(&p, DType::F32, false).is_err());
        assert!(KernelSpec::new(&problem(&[8], &[3], 256, 256), DType::F32, false).is_ok());
    }

    #[test]
    fn geometry_covers_every_dilation_group() {
        // L = 14, d = 3: groups of 5, 5, 4 positions; 1D tile of 32.
        let p = Problem::new(
            2,
            &[14],
            3,
            8,
            8,
            Params::new(&[3]).unwrap().with_dilation(&[3]).unwrap(),
        )
        .unwrap();
        let s = KernelSpec::new(&p, DType::F32, false).unwrap();
        let g = geometry(&p, &s).unwrap();
        assert_eq!(g.tiles_per_group, [1, 1, 1]);
        assert_eq!(g.tiles, 3);
        assert_eq!(g.blocks, 2 * 3 * 3);
        // 2D 56x56, tile 4x8, no dilation: 14 x 7 tiles.
        let p = problem(&[56, 56], &[7, 7], 32, 32);
        let s = KernelSpec::new(&p, DType::F16, false).unwrap();
        assert_eq!(s.tile, [1, 4, 8]);
        let g = geometry(&p, &s).unwrap();
        assert_eq!(
            (g.tiles_per_group, g.tiles, g.blocks),
            ([1, 14, 7], 98, 2 * 3 * 98)
        );
        // Every position is in exactly one tile: sum over groups and tiles.
        for (len, d, t) in [
            (14usize, 3usize, 4usize),
            (17, 2, 8),
            (9, 4, 2),
            (100, 8, 64),
        ] {
            let tpg = len.div_ceil(d).div_ceil(t);
            let mut seen = vec![0; len];
            for tile in 0..d * tpg {
                let (g, ii0) = (tile / tpg, (tile % tpg) * t);
                let lg = len / d + usize::from(g < len % d);
                for ii in ii0..(ii0 + t).min(lg) {
                    seen[ii * d + g] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{len} {d} {t}");
        }
    }

    #[test]
    fn params_mirror_the_problem() {
        let p = Problem::new(
            2,
            &[10, 12],
            4,
            16,
            16,
            Params::new(&[3, 5])
                .unwrap()
                .with_stride(&[1, 2])
                .unwrap()
                .with_dilation(&[3, 2])
                .unwrap()
                .with_scale(0.5)
                .unwrap(),
        )
        .unwrap();
        let s = KernelSpec::new(&p, DType::F32, false).unwrap();
        let g = geometry(&p, &s).unwrap();
        let np = NaParams::new(&p, &g).unwrap();
        assert_eq!(np.len, [1, 10, 12]);
        assert_eq!(np.dil, [1, 3, 2]);
        assert_eq!(np.stride, [1, 1, 2]);
        assert_eq!((np.batch, np.heads, np.tokens, np.scale), (2, 4, 120, 0.5));
        // The CUDA struct is 15 ints and a float, no padding.
        assert_eq!(std::mem::size_of::<NaParams>(), 16 * 4);
    }
}
