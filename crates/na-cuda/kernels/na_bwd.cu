// Backward pass (SPEC.md, "Backward"), deterministic and free of atomics:
//
//   pass 1, na_bwd_q   per query tile: d_query, delta = <d_out, out> per row,
//                      and (optionally) each warp's partial sums of d_logit
//                      per bias entry, in a fixed order;
//   pass 2, na_bwd_kv  per key tile: d_key and d_value gathered over each
//                      key's inverse neighbourhood (the queries whose window
//                      holds it), as na-core's reference does;
//   na_rpb_reduce      d_rpb = the warp partials summed in a fixed order.
//
// Both passes recompute the probabilities from the saved lse; the attention
// matrix is never stored.

// One query's state for pass 1.
struct BwdQRow {
    bool active;
    int ii[3];
    int ws[3], we[3];
    na_i64 row;
    float q[NA_DPL];     // q[lane + 32 e]
    float dout[NA_DVPL]; // d_out[lane + 32 e]
    float acc[NA_DPL];   // sum_t ds_t k_t (d_query before the scale)
    float lse;
    float delta;         // <d_out, out>
};

extern "C" __global__ void __launch_bounds__(NA_THREADS)
    na_bwd_q(const NaParams p,
             const elem_t* __restrict__ q,     // (B, *S, H, D)
             const elem_t* __restrict__ k,     // (B, *S, H, D)
             const elem_t* __restrict__ v,     // (B, *S, H, DV)
             const elem_t* __restrict__ rpb,   // (H, R0, R1, R2) or null
             const elem_t* __restrict__ out,   // (B, *S, H, DV)
             const elem_t* __restrict__ dout,  // (B, *S, H, DV)
             const float* __restrict__ lse,    // (B, *S, H)
             elem_t* __restrict__ dq,          // (B, *S, H, D)
             float* __restrict__ delta,        // (B, *S, H)
             float* __restrict__ drpb_part) {  // (gridDim.x, NA_WARPS, RPB_PER_HEAD) or null
    __shared__ float ks[NA_KC][NA_D];   // (NA_KC, NA_D)
    __shared__ float vs[NA_KC][NA_DV];  // (NA_KC, NA_DV)
    __shared__ int kj[NA_KC][3];        // (NA_KC, 3)
    __shared__ int ktok[NA_KC];         // (NA_KC)

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // This warp's partial d_rpb row; zeroed even for empty tiles so that the
    // reduction can read every row.
    float* part = nullptr;
#if NA_HAS_RPB
    if (drpb_part != nullptr) {
        part = drpb_part + ((na_i64)blockIdx.x * NA_WARPS + warp) * NA_RPB_PER_HEAD;
        for (int i = lane; i < NA_RPB_PER_HEAD; i += 32) {
            part[i] = 0.0f;
        }
        __syncwarp();
    }
#endif

    Tile t;
    if (!decode_tile(p, t)) {
        return;
    }
    int span0[3], span_len[3];
    tile_key_span(p, t, span0, span_len);
    const int nkeys = span_len[0] * span_len[1] * span_len[2];

    BwdQRow r[NA_QPW];
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
        float dl = 0.0f;
#pragma unroll
        for (int e = 0; e < NA_DPL; ++e) {
            const int col = lane + 32 * e;
            r[x].q[e] = (r[x].active && col < NA_D) ? to_f32(q[r[x].row * NA_D + col]) : 0.0f;
            r[x].acc[e] = 0.0f;
        }
#pragma unroll
        for (int e = 0; e < NA_DVPL; ++e) {
            const int col = lane + 32 * e;
            const bool ok = r[x].active && col < NA_DV;
            r[x].dout[e] = ok ? to_f32(dout[r[x].row * NA_DV + col]) : 0.0f;
            dl += ok ? r[x].dout[e] * to_f32(out[r[x].row * NA_DV + col]) : 0.0f;
        }
        r[x].delta = warp_sum(dl);
        r[x].lse = r[x].active ? lse[r[x].row] : 0.0f;
    }

    for (int c0 = 0; c0 < nkeys; c0 += NA_KC) {
        __syncthreads();
        stage_kv(p, t, span0, span_len, c0, nkeys, k, v, ks, vs, kj, ktok);
        __syncthreads();
        const int nc = min(NA_KC, nkeys - c0);
        for (int s = 0; s < nc; ++s) {
            const int j[3] = {kj[s][0], kj[s][1], kj[s][2]};
#pragma unroll
            for (int x = 0; x < NA_QPW; ++x) {
                if (!r[x].active || !in_window(r[x].ws, r[x].we, j)) {
                    continue;
                }
                float qk = 0.0f, dp = 0.0f;
#pragma unroll
                for (int e = 0; e < NA_DPL; ++e) {
                    const int col = lane + 32 * e;
                    if (NA_D % 32 == 0 || col < NA_D) {
                        qk += r[x].q[e] * ks[s][col];
                    }
                }
#pragma unroll
                for (int e = 0; e < NA_DVPL; ++e) {
                    const int col = lane + 32 * e;
                    if (NA_DV % 32 == 0 || col < NA_DV) {
                        dp += r[x].dout[e] * vs[s][col];
                    }
                }
                float logit = p.scale * warp_sum(qk);
#if NA_HAS_RPB
                const int roff = rpb_offset(j, r[x].ii);
                logit += to_f32(rpb[(na_i64)t.h * NA_RPB_PER_HEAD + roff]);
#endif
                const float prob = expf(logit - r[x].lse);
                const float ds = prob * (warp_sum(dp) - r[x].delta);
#pragma unroll
                for (int e = 0; e < NA_DPL; ++e) {
                    const int col = lane + 32 * e;
                    if (NA_D % 32 == 0 || col < NA_D) {
                        r[x].acc[e] += ds * ks[s][col];
                    }
                }
#if NA_HAS_RPB
                // One lane owns the warp's partial row: a fixed order of adds.
                if (part != nullptr && lane == 0) {
                    part[roff] += ds;
                }
#endif
            }
        }
    }

#pragma unroll
    for (int x = 0; x < NA_QPW; ++x) {
        if (!r[x].active) {
            continue;
        }
#pragma unroll
        for (int e = 0; e < NA_DPL; ++e) {
            const int col = lane + 32 * e;
            if (col < NA_D) {
                dq[r[x].row * NA_D + col] = from_f32(r[x].acc[e] * p.scale);
            }
        }
        if (lane == 0) {
            delta[r[x].row] = r[x].delta;
        }
    }
}

// Stages the candidate queries [c0, c0 + NA_KC) of the flattened query span
// of a key tile: group coordinates, their windows, query rows, d_out rows,
// lse and delta.
__device__ __forceinline__ void stage_queries(const NaParams& p, const Tile& t,
                                              const int span0[3], const int span_len[3], int c0,
                                              int nq, const elem_t* __restrict__ src_q,
                                              const elem_t* __restrict__ src_do,
                                              const float* __restrict__ src_lse,
                                              const float* __restrict__ src_delta,
                                              float (*qs)[NA_D],     // (NA_KC, NA_D)
                                              float (*dos)[NA_DV],   // (NA_KC, NA_DV)
                                              int (*qi)[3],          // (NA_KC, 3)
                                              int (*qws)[3],         // (NA_KC, 3)
                                              int (*qwe)[3],         // (NA_KC, 3)
                                              int* qtok,             // (NA_KC)
                                              float* qlse,           // (NA_KC)
                                              float* qdelta) {       // (NA_KC)
    for (int s = threadIdx.x; s < NA_KC; s += NA_THREADS) {
        const int f = c0 + s;
        if (f < nq) {
            int c[3];
            const int o[3] = {f / (span_len[2] * span_len[1]), (f / span_len[2]) % span_len[1],
                              f % span_len[2]};
#pragma unroll
            for (int a = 0; a < 3; ++a) {
                qi[s][a] = span0[a] + o[a];
                group_window(qi[s][a], t.lg[a], axis_k(a), p.stride[a], axis_causal(a),
                             qws[s][a], qwe[s][a]);
                c[a] = qi[s][a] * axis_dil(p, a) + t.g[a];
            }
            const int tok = token_of(p, c[0], c[1], c[2]);
            const na_i64 row = row_of(p, t.b, tok, t.h);
            qtok[s] = tok;
            qlse[s] = src_lse[row];
            qdelta[s] = src_delta[row];
        } else {
            qtok[s] = -1;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < NA_KC * NA_D; i += NA_THREADS) {
        const int s = i / NA_D, e = i % NA_D;
        const int tok = qtok[s];
        qs[s][e] = tok >= 0 ? to_f32(src_q[row_of(p, t.b, tok, t.h) * NA_D + e]) : 0.0f;
    }
    for (int i = threadIdx.x; i < NA_KC * NA_DV; i += NA_THREADS) {
        const int s = i / NA_DV, e = i % NA_DV;
        const int tok = qtok[s];
        dos[s][e] = tok >= 0 ? to_f32(src_do[row_of(p, t.b, tok, t.h) * NA_DV + e]) : 0.0f;
    }
}

// One key's state for pass 2.
struct BwdKVRow {
    bool active;
    int jj[3];            // group coordinates of the key
    na_i64 row;
    float k[NA_DPL];      // k[lane + 32 e]
    float v[NA_DVPL];     // v[lane + 32 e]
    float dk[NA_DPL];     // sum_q ds_q q_q (d_key before the scale)
    float dv[NA_DVPL];    // sum_q p_q d_out_q
};

extern "C" __global__ void __launch_bounds__(NA_THREADS)
    na_bwd_kv(const NaParams p,
              const elem_t* __restrict__ q,      // (B, *S, H, D)
              const elem_t* __restrict__ k,      // (B, *S, H, D)
              const elem_t* __restrict__ v,      // (B, *S, H, DV)
              const elem_t* __restrict__ rpb,    // (H, R0, R1, R2) or null
              const elem_t* __restrict__ dout,   // (B, *S, H, DV)
              const float* __restrict__ lse,     // (B, *S, H)
              const float* __restrict__ delta,   // (B, *S, H), from na_bwd_q
              elem_t* __restrict__ dk,           // (B, *S, H, D)
              elem_t* __restrict__ dv) {         // (B, *S, H, DV)
    __shared__ float qs[NA_KC][NA_D];    // (NA_KC, NA_D)
    __shared__ float dos[NA_KC][NA_DV];  // (NA_KC, NA_DV)
    __shared__ int qi[NA_KC][3];         // (NA_KC, 3) group coordinates
    __shared__ int qws[NA_KC][3];        // (NA_KC, 3) window start
    __shared__ int qwe[NA_KC][3];        // (NA_KC, 3) window end
    __shared__ int qtok[NA_KC];          // (NA_KC)
    __shared__ float qlse[NA_KC];        // (NA_KC)
    __shared__ float qdelta[NA_KC];      // (NA_KC)

    Tile t;  // here a tile of keys
    if (!decode_tile(p, t)) {
        return;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int span0[3], span_len[3];
    tile_query_span(p, t, span0, span_len);
    const int nq = span_len[0] * span_len[1] * span_len[2];

    BwdKVRow r[NA_QPW];
#pragma unroll
    for (int x = 0; x < NA_QPW; ++x) {
        int o[3];
        slot_offsets(x * NA_WARPS + warp, o);
        r[x].active = o[0] < t.n[0] && o[1] < t.n[1] && o[2] < t.n[2];
        int c[3];
#pragma unroll
        for (int a = 0; a < 3; ++a) {
            r[x].jj[a] = t.ii0[a] + o[a];
            c[a] = (r[x].active ? r[x].jj[a] : t.ii0[a]) * axis_dil(p, a) + t.g[a];
        }
        r[x].row = row_of(p, t.b, token_of(p, c[0], c[1], c[2]), t.h);
#pragma unroll
        for (int e = 0; e < NA_DPL; ++e) {
            const int col = lane + 32 * e;
            r[x].k[e] = (r[x].active && col < NA_D) ? to_f32(k[r[x].row * NA_D + col]) : 0.0f;
            r[x].dk[e] = 0.0f;
        }
#pragma unroll
        for (int e = 0; e < NA_DVPL; ++e) {
            const int col = lane + 32 * e;
            r[x].v[e] = (r[x].active && col < NA_DV) ? to_f32(v[r[x].row * NA_DV + col]) : 0.0f;
            r[x].dv[e] = 0.0f;
        }
    }

    for (int c0 = 0; c0 < nq; c0 += NA_KC) {
        __syncthreads();
        stage_queries(p, t, span0, span_len, c0, nq, q, dout, lse, delta, qs, dos, qi, qws, qwe,
                      qtok, qlse, qdelta);
        __syncthreads();
        const int nc = min(NA_KC, nq - c0);
        for (int s = 0; s < nc; ++s) {
            const int ws[3] = {qws[s][0], qws[s][1], qws[s][2]};
            const int we[3] = {qwe[s][0], qwe[s][1], qwe[s][2]};
#pragma unroll
            for (int x = 0; x < NA_QPW; ++x) {
                if (!r[x].active || !in_window(ws, we, r[x].jj)) {
                    continue;
                }
                float qk = 0.0f, dp = 0.0f;
#pragma unroll
                for (int e = 0; e < NA_DPL; ++e) {
                    const int col = lane + 32 * e;
                    if (NA_D % 32 == 0 || col < NA_D) {
                        qk += r[x].k[e] * qs[s][col];
                    }
                }
#pragma unroll
                for (int e = 0; e < NA_DVPL; ++e) {
                    const int col = lane + 32 * e;
                    if (NA_DV % 32 == 0 || col < NA_DV) {
                        dp += r[x].v[e] * dos[s][col];
                    }
                }
                float logit = p.scale * warp_sum(qk);
#if NA_HAS_RPB
                const int ii[3] = {qi[s][0], qi[s][1], qi[s][2]};
                logit += to_f32(rpb[(na_i64)t.h * NA_RPB_PER_HEAD + rpb_offset(r[x].jj, ii)]);
#endif
                const float prob = expf(logit - qlse[s]);
                const float ds = prob * (warp_sum(dp) - qdelta[s]);
#pragma unroll
                for (int e = 0; e < NA_DVPL; ++e) {
                    const int col = lane + 32 * e;
                    if (NA_DV % 32 == 0 || col < NA_DV) {
                        r[x].dv[e] += prob * dos[s][col];
                    }
                }
#pragma unroll
                for (int e = 0; e < NA_DPL; ++e) {
                    const int col = lane + 32 * e;
                    if (NA_D % 32 == 0 || col < NA_D) {
                        r[x].dk[e] += ds * qs[s][col];
                    }
                }
            }
        }
    }

#pragma unroll
    for (int x = 0; x < NA_QPW; ++x) {
        if (!r[x].active) {
            continue;
        }
#pragma unroll
        for (int e = 0; e < NA_DPL; ++e) {
            const int col = lane + 32 * e;
            if (col < NA_D) {
                dk[r[x].row * NA_D + col] = from_f32(r[x].dk[e] * p.scale);
            }
        }
#pragma unroll
        for (int e = 0; e < NA_DVPL; ++e) {
            const int col = lane + 32 * e;
            if (col < NA_DV) {
                dv[r[x].row * NA_DV + col] = from_f32(r[x].dv[e]);
            }
        }
    }
}

// d_rpb[h, i] = sum over b, tile, warp (in that order) of the partial rows of
// pass 1. One thread per (h, i); `tiles` is the number of blocks of one
// (batch, head) in pass 1.
extern "C" __global__ void __launch_bounds__(256)
    na_rpb_reduce(const float* __restrict__ part,  // (B, H, tiles, NA_WARPS, RPB_PER_HEAD)
                  int batch, int heads, int tiles,
                  elem_t* __restrict__ drpb) {      // (H, RPB_PER_HEAD)
    const na_i64 id = (na_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= (na_i64)heads * NA_RPB_PER_HEAD) {
        return;
    }
    const int h = (int)(id / NA_RPB_PER_HEAD), i = (int)(id % NA_RPB_PER_HEAD);
    float sum = 0.0f;
    for (int b = 0; b < batch; ++b) {
        const na_i64 base = ((na_i64)b * heads + h) * tiles * NA_WARPS;
        for (na_i64 w = 0; w < (na_i64)tiles * NA_WARPS; ++w) {
            sum += part[(base + w) * NA_RPB_PER_HEAD + i];
        }
    }
    drpb[id] = from_f32(sum);
}
