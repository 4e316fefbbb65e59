// Neighborhood attention on NVIDIA GPUs: what every pass shares.
//
// Compiled by NVRTC, never by nvcc: no system headers, so the f16/bf16
// conversions are written out (PTX `cvt` for f16, bit arithmetic for bf16)
// and the few math helpers come from NVRTC's built-ins.
//
// The host (`src/spec.rs`) prepends the specialisation as `#define`s:
//   NA_RANK            number of spatial axes of the problem (1, 2, 3)
//   NA_K0, NA_K1, NA_K2 kernel size per (padded) axis; padding axes have 1
//   NA_CAUSAL0..2      causal flag per padded axis (0/1)
//   NA_DILATED0..2     whether the axis may have dilation > 1 (0: d == 1)
//   NA_D, NA_DV        head_dim and head_dim_v
//   NA_DTYPE           0 f32, 1 f16, 2 bf16 (storage type of q/k/v/out/rpb)
//   NA_HAS_RPB         whether a bias table is read
//   NA_TQ0..2          query (or key) tile extent per padded axis, in
//                      dilation-group coordinates
//   NA_WARPS           warps per block
//   NA_KC              keys (or queries) staged in shared memory per chunk
//
// Axes are always three: 1D and 2D problems are padded in front with unit
// axes (length 1, kernel 1), exactly as na-core's `Problem` does.
//
// Layouts (row-major, heads-last, as na-core):
//   q, k, dq, dk     (batch, *spatial, heads, NA_D)
//   v, out, do, dv   (batch, *spatial, heads, NA_DV)
//   lse, delta       (batch, *spatial, heads)            f32
//   rpb, drpb        (heads, 2*K0-1, 2*K1-1, 2*K2-1)

#ifndef NA_COMMON_CUH
#define NA_COMMON_CUH

typedef long long na_i64;

// ---------------------------------------------------------------- storage types

#if NA_DTYPE == 0
typedef float elem_t;
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float from_f32(float x) { return x; }
#elif NA_DTYPE == 1 && defined(NA_EMULATION)
// IEEE binary16 on the host emulation (tests/emulate.rs): the compiler's
// _Float16, which rounds to nearest even like the PTX conversion below.
typedef unsigned short elem_t;
inline float to_f32(unsigned short h) {
    _Float16 x;
    memcpy(&x, &h, 2);
    return (float)x;
}
inline unsigned short from_f32(float f) {
    _Float16 x = (_Float16)f;
    unsigned short h;
    memcpy(&h, &x, 2);
    return h;
}
#elif NA_DTYPE == 1
// IEEE binary16, stored as its bits.
typedef unsigned short elem_t;
__device__ __forceinline__ float to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short from_f32(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#elif NA_DTYPE == 2
// bfloat16, stored as its bits; round to nearest even like half::bf16::from_f32.
typedef unsigned short elem_t;
__device__ __forceinline__ float to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}
__device__ __forceinline__ unsigned short from_f32(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x0040u);  // quiet NaN
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
#else
#error "NA_DTYPE must be 0 (f32), 1 (f16) or 2 (bf16)"
#endif

// ---------------------------------------------------------------- traits

#define NA_THREADS (NA_WARPS * 32)
#define NA_TQ (NA_TQ0 * NA_TQ1 * NA_TQ2)
// Queries (pass 1, forward) or keys (pass 2) each warp owns in a tile.
#define NA_QPW (NA_TQ / NA_WARPS)
// Elements of a head_dim row each lane holds: lane, lane + 32, ...
#define NA_DPL ((NA_D + 31) / 32)
#define NA_DVPL ((NA_DV + 31) / 32)
// Bias entries per head: prod(2k - 1).
#define NA_R0 (2 * NA_K0 - 1)
#define NA_R1 (2 * NA_K1 - 1)
#define NA_R2 (2 * NA_K2 - 1)
#define NA_RPB_PER_HEAD (NA_R0 * NA_R1 * NA_R2)

static_assert(NA_TQ % NA_WARPS == 0, "a tile splits evenly over the warps");
static_assert(NA_QPW >= 1 && NA_QPW <= 16, "1..16 rows per warp");
static_assert(NA_D >= 1 && NA_D <= 256 && NA_DV >= 1 && NA_DV <= 256, "head_dim in 1..=256");
static_assert(NA_KC >= 1 && NA_KC * (NA_D + NA_DV) * 4 <= 32768, "staged chunk fits 32 KiB");
static_assert(NA_K0 >= 1 && NA_K1 >= 1 && NA_K2 >= 1, "kernel sizes");

// Kernel size and tile extent of (padded) axis a; constant-folded in unrolled loops.
__device__ __forceinline__ int axis_k(int a) { return a == 0 ? NA_K0 : (a == 1 ? NA_K1 : NA_K2); }
__device__ __forceinline__ int axis_tile(int a) {
    return a == 0 ? NA_TQ0 : (a == 1 ? NA_TQ1 : NA_TQ2);
}

// ---------------------------------------------------------------- parameters

// Mirrored by `NaParams` in src/spec.rs (#[repr(C)]); keep the two in sync.
struct NaParams {
    int len[3];              // axis lengths (padded front with 1)
    int dil[3];              // dilation per axis (1 on padding axes)
    int stride[3];           // stride per axis (1 on padding axes)
    int tiles_per_group[3];  // ceil(ceil(len / dil) / tile) per axis
    int batch;               // batch size
    int heads;               // number of heads
    int tokens;              // len[0] * len[1] * len[2]
    float scale;             // multiplies <q, k>; never the bias
};

__device__ __forceinline__ bool axis_causal(int a) {
    return a == 0 ? NA_CAUSAL0 : (a == 1 ? NA_CAUSAL1 : NA_CAUSAL2);
}

__device__ __forceinline__ int axis_dil(const NaParams& p, int a) {
    const bool dilated = a == 0 ? NA_DILATED0 : (a == 1 ? NA_DILATED1 : NA_DILATED2);
    return dilated ? p.dil[a] : 1;
}

// ---------------------------------------------------------------- window math
// A line-by-line copy of na-core's `window::Axis` (SPEC.md, "The window of
// one query on one axis"). Everything is in dilation-group coordinates: the
// full coordinate is `ii * d + g`.

// Length of dilation group g of an axis of length L with dilation d.
__device__ __forceinline__ int group_len(int L, int d, int g) {
    return L / d + (g < L % d ? 1 : 0);
}

// The window [start, end) of the query with group index ii in a group of
// length lg (ii < lg, k <= lg).
__device__ __forceinline__ void group_window(int ii, int lg, int k, int s, bool causal,
                                             int& start, int& end) {
    if (causal) {
        const int lead = min((ii / s) * s + s - 1, lg - 1);
        start = max(lead - (k - 1), 0);
        end = min(ii + 1, lg);
    } else {
        const int left = k / 2;
        const int right = k / 2 + k % 2 - 1;
        const int lead = min((ii / s) * s + s / 2, lg - 1);
        start = max(lead - left, 0);
        if (lead + right >= lg) {
            start = lg - k;  // the window ends at the group's last key
        }
        end = start + k;
    }
}

// ---------------------------------------------------------------- tiles
// A block owns one (batch, head) and one tile of NA_TQ0 x NA_TQ1 x NA_TQ2
// positions that share a dilation group on every axis; consecutive group
// indices have overlapping windows, so their keys are staged once.

struct Tile {
    int b, h;
    int g[3];    // dilation group per axis
    int ii0[3];  // first group index of the tile per axis
    int lg[3];   // length of the group per axis
    int n[3];    // positions of the tile inside the group per axis (<= tile)
};

// Decodes blockIdx.x = (((b * heads + h) * NT0 + t0) * NT1 + t1) * NT2 + t2
// with NT_a = dil_a * tiles_per_group_a. Returns false when the tile holds
// no position (a short dilation group): the whole block then exits.
__device__ __forceinline__ bool decode_tile(const NaParams& p, Tile& t) {
    na_i64 rest = blockIdx.x;
    int tt[3];
    for (int a = 2; a >= 0; --a) {
        const int nt = axis_dil(p, a) * p.tiles_per_group[a];
        tt[a] = (int)(rest % nt);
        rest /= nt;
    }
    t.h = (int)(rest % p.heads);
    t.b = (int)(rest / p.heads);
    bool any = true;
    for (int a = 0; a < 3; ++a) {
        const int d = axis_dil(p, a);
        t.g[a] = tt[a] / p.tiles_per_group[a];
        t.ii0[a] = (tt[a] % p.tiles_per_group[a]) * axis_tile(a);
        t.lg[a] = group_len(p.len[a], d, t.g[a]);
        t.n[a] = min(axis_tile(a), t.lg[a] - t.ii0[a]);
        any = any && t.n[a] > 0;
    }
    return any;
}

// Spatial token of full coordinates (c0, c1, c2).
__device__ __forceinline__ int token_of(const NaParams& p, int c0, int c1, int c2) {
    return (c0 * p.len[1] + c1) * p.len[2] + c2;
}

// Row index into lse / delta (and, times the head dim, into q/k/v) of
// (batch b, token tok, head h).
__device__ __forceinline__ na_i64 row_of(const NaParams& p, int b, int tok, int h) {
    return ((na_i64)b * p.tokens + tok) * p.heads + h;
}

// Tile slot -> offset inside the tile per axis (slot = (o0 * T1 + o1) * T2 + o2).
__device__ __forceinline__ void slot_offsets(int slot, int o[3]) {
    o[2] = slot % NA_TQ2;
    o[1] = (slot / NA_TQ2) % NA_TQ1;
    o[0] = slot / (NA_TQ2 * NA_TQ1);
}

// Flat bias offset of group-coordinate key j for query ii (per head).
__device__ __forceinline__ int rpb_offset(const int j[3], const int ii[3]) {
    const int r0 = j[0] - ii[0] + NA_K0 - 1;
    const int r1 = j[1] - ii[1] + NA_K1 - 1;
    const int r2 = j[2] - ii[2] + NA_K2 - 1;
    return (r0 * NA_R1 + r1) * NA_R2 + r2;
}

// ---------------------------------------------------------------- warp math

// Butterfly all-reduce: every lane ends with the same (bit-identical) sum,
// since each step adds the same two values on both partner lanes.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) {
        x += __shfl_xor_sync(0xffffffffu, x, o);
    }
    return x;
}

// The union of the windows of the tile's queries on every axis, in group
// coordinates: [span0, span0 + span_len). Windows start and end
// non-decreasingly with the query, so the first and last query bound it.
__device__ __forceinline__ void tile_key_span(const NaParams& p, const Tile& t, int span0[3],
                                              int span_len[3]) {
#pragma unroll
    for (int a = 0; a < 3; ++a) {
        int s0, e0, s1, e1;
        group_window(t.ii0[a], t.lg[a], axis_k(a), p.stride[a], axis_causal(a), s0, e0);
        group_window(t.ii0[a] + t.n[a] - 1, t.lg[a], axis_k(a), p.stride[a], axis_causal(a), s1,
                     e1);
        span0[a] = s0;
        span_len[a] = e1 - s0;
    }
}

// The queries that may attend a key tile (pass 2), in group coordinates:
// every query attending key jj lies within k - 1 + s group positions of it
// (na-core's `Axis::inverse_candidates`); members are filtered per pair.
__device__ __forceinline__ void tile_query_span(const NaParams& p, const Tile& t, int span0[3],
                                                int span_len[3]) {
#pragma unroll
    for (int a = 0; a < 3; ++a) {
        const int reach = axis_k(a) - 1 + p.stride[a];
        const int lo = max(t.ii0[a] - reach, 0);
        const int hi = min(t.ii0[a] + t.n[a] - 1 + reach + 1, t.lg[a]);
        span0[a] = lo;
        span_len[a] = hi - lo;
    }
}

// -FLT_MAX, the lowest finite float (no <cfloat> under NVRTC).
__device__ __forceinline__ float lowest_finite() { return __int_as_float(0xff7fffff); }

#endif  // NA_COMMON_CUH
