// Forward pass: out and lse (SPEC.md, "Logits, bias, output").
//
// One block per (batch, head, query tile). The keys of the tile's union
// window are staged through shared memory in chunks of NA_KC, converted to
// f32 once; each warp owns NA_QPW queries of the tile and keeps, per query,
// a running maximum, a running sum and an f32 accumulator (online softmax,
// see softmax_step), so no window of scores ever reaches global memory.

// Stages the keys [c0, c0 + NA_KC) of the flattened span (span_len[0] x
// span_len[1] x span_len[2], row-major) into shared memory: their group
// coordinates, their key rows (NA_D) and their value rows (NA_DV), as f32.
// Slots past the span get token -1. Call between two __syncthreads.
__device__ __forceinline__ void stage_kv(const NaParams& p, const Tile& t, const int span0[3],
                                         const int span_len[3], int c0, int nkeys,
                                         const elem_t* __restrict__ src_k,
                                         const elem_t* __restrict__ src_v,
                                         float (*ks)[NA_D],       // (NA_KC, NA_D)
                                         float (*vs)[NA_DV],      // (NA_KC, NA_DV)
                                         int (*kj)[3],            // (NA_KC, 3)
                                         int* ktok) {             // (NA_KC)
    for (int s = threadIdx.x; s < NA_KC; s += NA_THREADS) {
        const int f = c0 + s;
        if (f < nkeys) {
            const int j2 = f % span_len[2];
            const int j1 = (f / span_len[2]) % span_len[1];
            const int j0 = f / (span_len[2] * span_len[1]);
            kj[s][0] = span0[0] + j0;
            kj[s][1] = span0[1] + j1;
            kj[s][2] = span0[2] + j2;
            ktok[s] = token_of(p, kj[s][0] * axis_dil(p, 0) + t.g[0],
                               kj[s][1] * axis_dil(p, 1) + t.g[1],
                               kj[s][2] * axis_dil(p, 2) + t.g[2]);
        } else {
            ktok[s] = -1;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < NA_KC * NA_D; i += NA_THREADS) {
        const int s = i / NA_D, e = i % NA_D;
        const int tok = ktok[s];
        ks[s][e] = tok >= 0 ? to_f32(src_k[row_of(p, t.b, tok, t.h) * NA_D + e]) : 0.0f;
    }
    for (int i = threadIdx.x; i < NA_KC * NA_DV; i += NA_THREADS) {
        const int s = i / NA_DV, e = i % NA_DV;
        const int tok = ktok[s];
        vs[s][e] = tok >= 0 ? to_f32(src_v[row_of(p, t.b, tok, t.h) * NA_DV + e]) : 0.0f;
    }
}

// One query's state for the forward pass (per lane: its slice of the row).
struct FwdRow {
    bool active;       // the tile slot holds a query
    int ii[3];         // group coordinates of the query
    int ws[3], we[3];  // its window [ws, we) per axis, group coordinates
    na_i64 row;        // (b, token, h) row index
    float q[NA_DPL];   // q[lane + 32 e]
    float acc[NA_DVPL];  // sum_t p_t v_t[lane + 32 e], scaled to the running max
    float m;           // running maximum logit (-FLT_MAX before any key)
    float l;           // running sum of exp(logit - m)
};

__device__ __forceinline__ bool in_window(const int ws[3], const int we[3], const int j[3]) {
    return j[0] >= ws[0] && j[0] < we[0] && j[1] >= ws[1] && j[1] < we[1] && j[2] >= ws[2] &&
           j[2] < we[2];
}

// Online softmax: folds one logit and its value row into (m, l, acc).
//
// Non-finite logits (SPEC.md, "Non-finite values"): the running maximum
// starts at -FLT_MAX, not -inf, so that a -inf logit gives pe = exp(-inf) = 0
// and corr = 1 instead of exp(-inf - -inf) = NaN, and a window of only -inf
// logits ends with l = 0 and lse = -inf, as dense attention has. fmaxf skips
// a NaN logit, which then reaches l and acc through pe = exp(NaN) = NaN.
// Keys outside the window never get here (the callers select them out).
__device__ __forceinline__ void softmax_step(FwdRow& r, float logit, const float* vrow) {
    const float m_new = fmaxf(r.m, logit);
    const float corr = expf(r.m - m_new);  // 0 when the maximum jumps far
    const float pe = expf(logit - m_new);
    r.l = r.l * corr + pe;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int e = 0; e < NA_DVPL; ++e) {
        const int c = lane + 32 * e;
        const float v = (NA_DV % 32 == 0 || c < NA_DV) ? vrow[c] : 0.0f;
        r.acc[e] = r.acc[e] * corr + pe * v;
    }
    r.m = m_new;
}

extern "C" __global__ void __launch_bounds__(NA_THREADS)
    na_fwd(const NaParams p,
           const elem_t* __restrict__ q,    // (B, *S, H, D)
           const elem_t* __restrict__ k,    // (B, *S, H, D)
           const elem_t* __restrict__ v,    // (B, *S, H, DV)
           const elem_t* __restrict__ rpb,  // (H, 2K0-1, 2K1-1, 2K2-1) or null
           elem_t* __restrict__ out,        // (B, *S, H, DV)
           float* __restrict__ lse) {       // (B, *S, H) or null
    __shared__ float ks[NA_KC][NA_D];   // (NA_KC, NA_D)
    __shared__ float vs[NA_KC][NA_DV];  // (NA_KC, NA_DV)
    __shared__ int kj[NA_KC][3];        // (NA_KC, 3) group coordinates
    __shared__ int ktok[NA_KC];         // (NA_KC) token, -1 past the span

    Tile t;
    if (!decode_tile(p, t)) {
        return;  // uniform over the block
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int span0[3], span_len[3];
    tile_key_span(p, t, span0, span_len);
    const int nkeys = span_len[0] * span_len[1] * span_len[2];

    FwdRow r[NA_QPW];
#pragma unroll
    for (int x = 0; x < NA_QPW; ++x) {
        int o[3];
        slot_offsets(x * NA_WARPS + warp, o);
        r[x].active = o[0] < t.n[0] && o[1] < t.n[1] && o[2] < t.n[2];
        int c[3];
#pragma unroll
        for (int a = 0; a < 3; ++a) {
            r[x].ii[a] = t.ii0[a] + o[a];
            const int ii = r[x].active ? r[x].ii[a] : t.ii0[a];
            group_window(ii, t.lg[a], axis_k(a), p.stride[a], axis_causal(a), r[x].ws[a],
                         r[x].we[a]);
            c[a] = ii * axis_dil(p, a) + t.g[a];
        }
        r[x].row = row_of(p, t.b, token_of(p, c[0], c[1], c[2]), t.h);
#pragma unroll
        for (int e = 0; e < NA_DPL; ++e) {
            const int col = lane + 32 * e;
            r[x].q[e] = (r[x].active && col < NA_D) ? to_f32(q[r[x].row * NA_D + col]) : 0.0f;
        }
#pragma unroll
        for (int e = 0; e < NA_DVPL; ++e) {
            r[x].acc[e] = 0.0f;
        }
        r[x].m = lowest_finite();  // not -inf: see softmax_step
        r[x].l = 0.0f;
    }

    for (int c0 = 0; c0 < nkeys; c0 += NA_KC) {
        __syncthreads();  // the previous chunk is consumed
        stage_kv(p, t, span0, span_len, c0, nkeys, k, v, ks, vs, kj, ktok);
        __syncthreads();
        const int nc = min(NA_KC, nkeys - c0);
        for (int s = 0; s < nc; ++s) {
            const int j[3] = {kj[s][0], kj[s][1], kj[s][2]};
#pragma unroll
            for (int x = 0; x < NA_QPW; ++x) {
                // Warp-uniform: every lane holds the same query.
                if (!r[x].active || !in_window(r[x].ws, r[x].we, j)) {
                    continue;
                }
                float part = 0.0f;
#pragma unroll
                for (int e = 0; e < NA_DPL; ++e) {
                    const int col = lane + 32 * e;
                    if (NA_D % 32 == 0 || col < NA_D) {
                        part += r[x].q[e] * ks[s][col];
                    }
                }
                float logit = p.scale * warp_sum(part);
#if NA_HAS_RPB
                logit += to_f32(rpb[(na_i64)t.h * NA_RPB_PER_HEAD + rpb_offset(j, r[x].ii)]);
#endif
                softmax_step(r[x], logit, vs[s]);
            }
        }
    }

#pragma unroll
    for (int x = 0; x < NA_QPW; ++x) {
        if (!r[x].active) {
            continue;
        }
        // Every query has at least one key (its own position when causal).
        const float inv = 1.0f / r[x].l;
#pragma unroll
        for (int e = 0; e < NA_DVPL; ++e) {
            const int col = lane + 32 * e;
            if (col < NA_DV) {
                out[r[x].row * NA_DV + col] = from_f32(r[x].acc[e] * inv);
            }
        }
        if (lse != nullptr && lane == 0) {
            lse[r[x].row] = r[x].m + logf(r[x].l);
        }
    }
}
