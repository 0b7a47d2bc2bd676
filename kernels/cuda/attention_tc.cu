// attention_tc.cu: the tensor-core path of attention_forward and attention_backward (attention.cu
// dispatches here when HD % 16 == 0 and HD <= 128, unless SVLM_ATTN=fma). The same algorithm as
// the FMA kernels of attention.cu (flash-attention style, nothing T x T stored, online softmax in
// fp32, the backward recomputing P from lse), with every product of a tile on tensor cores through
// the WMMA API: bf16 16x16x16 fragments, fp32 accumulation. WMMA rather than raw mma.sync PTX so
// that the CPU emulator (tests/gpu/emu) runs these kernels too.
//
// Tiling. A block is 4 warps and owns 64 rows (query rows in the forward and the dq kernel, key
// rows in the dk/dv kernel), 16 per warp: one fragment row. The block walks the other side in
// tiles of BK rows (64 when HD <= 64, 32 up to HD 128, so that static shared memory stays under
// 48 KB) staged in shared memory and shared by its 4 warps. Per tile, each warp:
//  1. multiplies its 16 rows (held in fragments, loaded once) by the tile: S = Q K^T (16 x BK),
//     stored to a per-warp fp32 buffer;
//  2. does the softmax arithmetic there with a fixed layout, lane = (row r = lane % 16, half of the
//     columns = lane / 16): masks, running max and sum, exp; writes P (or dS) back as bf16 into
//     the same buffer, row by row over the fp32 values it has read;
//  3. loads P as A fragments and multiplies by the tile again (P V, dS K, P^T dO, dS^T Q).
// Why the detour through shared memory: which lane holds which element of a fragment is not
// specified by WMMA, so row-wise work (the max, the per-row rescaling of the output) cannot be
// done on fragments. The forward therefore keeps its output rows in registers in the lane layout
// above and adds each tile's P V (staged through the buffer, BK / 16 fragments at a time) after
// rescaling them; the backward's accumulators (dq; dk and dv) need no rescaling and stay in
// fragments for the whole loop, leaving through the buffer once at the end.
// Row strides are padded (bf16 tiles by 16 bytes, the fp32 buffer by 4 floats) so that the rows a
// fragment load touches, and the lanes of the softmax step, fall in different banks.
// Static shared memory per block: 35-36 KB in every kernel (the walked K and V, or Q and dO,
// tiles; one region that first stages the block's own 64 rows for the fragments and then holds the
// four warps' score buffers). Registers: 159-250 per thread on sm_80/sm_90, no spills.
//
// Causal masking: a block stops at the tile holding its last row's diagonal, and inside a tile
// each warp skips the 16-key subtiles (16-query in the dk/dv kernel) that none of its rows can
// see, which also skips the padding past T. Forward and dq blocks run in reverse order of their
// query tile, so that the longest ones start first. Segment masks are applied element by element.
//
// Determinism: as in attention.cu, every output element is produced by one warp in a fixed order
// of tiles (and the hardware's fixed order inside an mma); dk and dv are per-query-head fp32
// partials that attention.cu's group sum adds over the heads of each kv group in head order.
// No atomics.
#ifndef SVLM_CUDA_EMU
#include <mma.h>
#endif
#include <math.h>

#include "kernels/cuda/common.cuh"

using namespace nvcuda;

#define TC_THREADS 128  // 4 warps
#define TC_WARPS 4
#define TC_ROWS 64      // rows per block, 16 per warp
#define TC_LOG2E 1.4426950408889634f
#define TC_LN2 0.6931471805599453f

#ifdef SVLM_CUDA_EMU
#define TC_UNROLL
#else
#define TC_UNROLL _Pragma("unroll")
#endif

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;   // A[m][k] = p[m*ldm + k]
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragBr;  // B[k][n] = p[k*ldm + n]
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBt;  // B[k][n] = p[n*ldm + k]: tile^T
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

// S[:, 16 n .. 16 n + 15] (16 rows, fp32, row stride SSTR) = a (the warp's 16 rows of nf x 16
// dims, as fragments) times the transpose of tile rows 16 n .. 16 n + 15 (row stride DSTR), for
// the 16-column subtiles n in [n0, n1): scores, and dP against V or dout, all take this form
template <int NF, int DSTR, int SSTR>
__device__ __forceinline__ void tc_rows_by_tile_t(float *S, const FragA *a, const bf16 *tile, int n0, int n1, int nf) {
    for (int n = n0; n < n1; n++) {
        FragC acc;
        wmma::fill_fragment(acc, 0.0f);
        TC_UNROLL for (int f = 0; f < NF; f++) {
            if (f >= nf) break;
            FragBt bt;
            wmma::load_matrix_sync(bt, tile + n * 16 * DSTR + f * 16, DSTR);
            wmma::mma_sync(acc, a[f], bt, acc);
        }
        wmma::store_matrix_sync(S + n * 16, acc, SSTR, wmma::mem_row_major);
    }
}

// Shapes by the largest head dim of an instantiation: MAXD 64 or 128.
template <int MAXD>
struct TcCfg {
    static constexpr int BK = MAXD <= 64 ? 64 : 32;  // rows of the walked tiles
    static constexpr int NF = MAXD / 16;             // fragments across the head dim
    static constexpr int NSUB = BK / 16;             // 16-row subtiles of a walked tile
    static constexpr int HC = BK / 2;                // columns of the score buffer per lane
    static constexpr int DSTR = MAXD + 8;            // bf16 row stride of staged tiles
    static constexpr int SSTR = BK + 4;              // fp32 row stride of a warp's score buffer
    static constexpr int PSTR = 2 * SSTR;            // the same rows read as bf16
    static constexpr int STAGE_BYTES = TC_ROWS * DSTR * 2;   // a block's own 64 rows, staged once
    static constexpr int SBUF_BYTES = TC_WARPS * 16 * SSTR * 4;
    static constexpr int UNION_BYTES = STAGE_BYTES > SBUF_BYTES ? STAGE_BYTES : SBUF_BYTES;
};

// rows [r0, r0 + ROWS) of a (T, stride) bf16 matrix, dims [0, HD), into dst (row stride STR),
// 16 bytes at a time. Rows past T become zeros: they meet P = 0 in the products, and 0 times
// garbage can be NaN. Dims past HD are not touched (never loaded into fragments).
template <int ROWS, int STR>
__device__ __forceinline__ void tc_stage(bf16 *dst, const bf16 *src, size_t stride, int r0, int T, int HD) {
    int cpr = HD / 8;  // 16-byte chunks per row
    for (int e = threadIdx.x; e < ROWS * cpr; e += TC_THREADS) {
        int r = e / cpr, c = (e % cpr) * 8, i = r0 + r;
        uint4 u = {0u, 0u, 0u, 0u};
        if (i < T) u = *(const uint4 *)(src + (size_t)i * stride + c);
        *(uint4 *)(dst + r * STR + c) = u;
    }
}

// 4 floats of shared memory (16-byte aligned) as one access
__device__ __forceinline__ void tc_ld4(float *d, const float *p) {
    uint4 u = *(const uint4 *)p;
    d[0] = __uint_as_float(u.x); d[1] = __uint_as_float(u.y); d[2] = __uint_as_float(u.z); d[3] = __uint_as_float(u.w);
}
// 8 floats -> 8 bf16 (16-byte aligned) as one access
__device__ __forceinline__ void tc_st8_bf16(bf16 *p, const float *v) {
    uint4 u;
    u.x = bf_pack2(v[0], v[1]); u.y = bf_pack2(v[2], v[3]); u.z = bf_pack2(v[4], v[5]); u.w = bf_pack2(v[6], v[7]);
    *(uint4 *)p = u;
}

// number of 16-row subtiles, from the start of a tile at t0 (of NSUB), that hold an index <= last
__device__ __forceinline__ int tc_subtiles_upto(int last, int t0, int nsub) {
    return last < t0 ? 0 : min(nsub, (last - t0) / 16 + 1);
}

// ---------------------------------------------------------------- forward

// one block per (64 query rows, query head, batch); out (B,T,NH*HD) bf16, lse (B,NH,T) or NULL
template <int MAXD>
__global__ void __launch_bounds__(TC_THREADS) attn_tc_forward_kernel(bf16 *out, float *lse, const bf16 *q,
                                                                     const bf16 *k, const bf16 *v, const int *seg,
                                                                     int T, int NH, int NKV, int HD, int causal,
                                                                     float sl2) {
    typedef TcCfg<MAXD> C;
    constexpr int BK = C::BK, NF = C::NF, NSUB = C::NSUB, HC = C::HC, DSTR = C::DSTR, SSTR = C::SSTR, PSTR = C::PSTR;
    __shared__ __align__(128) bf16 Ks[BK * DSTR];  // the current tile of keys (BK, HD)
    __shared__ __align__(128) bf16 Vs[BK * DSTR];  // ... and values
    __shared__ __align__(128) unsigned char U[C::UNION_BYTES];  // the block's queries, then the warps' score buffers
    __shared__ int segk[BK];

    int b = blockIdx.z, h = blockIdx.y, q0 = (gridDim.x - 1 - blockIdx.x) * TC_ROWS;
    int grp = h / (NH / NKV);
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    int r = lane % 16, hf = lane / 16;  // this lane's row of the warp's 16 and its half of the columns
    int nf = HD / 16;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    const bf16 *kb = k + (size_t)b * T * ks + (size_t)grp * HD;
    const bf16 *vb = v + (size_t)b * T * ks + (size_t)grp * HD;
    const int *segb = seg ? seg + (size_t)b * T : NULL;
    float *S = (float *)U + warp * 16 * SSTR;  // this warp's scores (16, BK), fp32
    bf16 *P = (bf16 *)S;                       // ... overwritten row by row with P (16, BK), bf16

    tc_stage<TC_ROWS, DSTR>((bf16 *)U, q + (size_t)b * T * qs + (size_t)h * HD, qs, q0, T, HD);
    __syncthreads();
    FragA qa[NF];  // the warp's 16 query rows
    TC_UNROLL for (int f = 0; f < NF; f++)
        if (f < nf) wmma::load_matrix_sync(qa[f], (bf16 *)U + warp * 16 * DSTR + f * 16, DSTR);

    int w0 = q0 + warp * 16, i = w0 + r;  // the warp's first row, this lane's row
    int segi = (segb && i < T) ? segb[i] : 0;
    float m = -INFINITY, l = 0.0f;  // running max of the row (log2 units) and this lane's share of the sum
    float o[NF][8];                 // row i, dims f*16 + hf*8 + 0..7, unnormalised
    TC_UNROLL for (int f = 0; f < NF; f++)
        TC_UNROLL for (int e = 0; e < 8; e++) o[f][e] = 0.0f;

    int kend = causal ? min(T, q0 + TC_ROWS) : T;
    // the last key a row of this warp can see (by position), -1 when the warp is all padding
    int klast = w0 >= T ? -1 : causal ? min(w0 + 15, T - 1) : T - 1;
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();  // the previous tile is consumed (the first time: every warp has its queries)
        tc_stage<BK, DSTR>(Ks, kb, ks, k0, T, HD);
        tc_stage<BK, DSTR>(Vs, vb, ks, k0, T, HD);
        if (threadIdx.x < BK) segk[threadIdx.x] = (segb && k0 + (int)threadIdx.x < T) ? segb[k0 + threadIdx.x] : 0;
        __syncthreads();
        int ns = tc_subtiles_upto(klast, k0, NSUB);  // subtiles past ns are masked for every row here

        // S = Q K^T, 16 keys at a time
        tc_rows_by_tile_t<NF, DSTR, SSTR>(S, qa, Ks, 0, ns, nf);
        __syncwarp();

        // online softmax over this lane's HC columns of row i (columns past ns hold stale values,
        // masked like every invisible key)
        float p[HC], mx = -INFINITY;
        TC_UNROLL for (int c = 0; c < HC; c += 4) tc_ld4(p + c, S + r * SSTR + hf * HC + c);
        TC_UNROLL for (int c = 0; c < HC; c++) {
            int col = hf * HC + c, j = k0 + col;
            bool vis = i < T && j < T && (!causal || j <= i) && (!segb || segk[col] == segi);
            p[c] = vis ? p[c] * sl2 : -INFINITY;
            mx = fmaxf(mx, p[c]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));  // the other half of the row
        float mnew = fmaxf(m, mx), corr = 1.0f, sum = 0.0f;
        if (mnew != -INFINITY) {
            corr = exp2f(m - mnew);  // 0 while m was -inf, when l and o are still 0
            TC_UNROLL for (int c = 0; c < HC; c++) {
                p[c] = exp2f(p[c] - mnew);  // 0 where masked
                sum += p[c];
            }
        } else {
            TC_UNROLL for (int c = 0; c < HC; c++) p[c] = 0.0f;
        }
        m = mnew;
        l = l * corr + sum;
        __syncwarp();  // every lane has read its scores before P overwrites them
        TC_UNROLL for (int c = 0; c < HC; c += 8) tc_st8_bf16(P + r * PSTR + hf * HC + c, p + c);
        __syncwarp();
        FragA pa[NSUB];
        TC_UNROLL for (int n = 0; n < NSUB; n++)
            if (n < ns) wmma::load_matrix_sync(pa[n], P + n * 16, PSTR);
        __syncwarp();  // P is in fragments: the buffer is free

        // o = o * corr + P V, NSUB fragments of 16 dims at a time through the buffer
        TC_UNROLL for (int f0 = 0; f0 < NF; f0 += NSUB) {
            if (f0 >= nf) break;
            TC_UNROLL for (int t = 0; t < NSUB; t++) {
                int f = f0 + t;
                if (f >= nf) break;
                FragC acc;
                wmma::fill_fragment(acc, 0.0f);
                TC_UNROLL for (int n = 0; n < NSUB; n++) {
                    if (n >= ns) break;
                    FragBr vf;
                    wmma::load_matrix_sync(vf, Vs + n * 16 * DSTR + f * 16, DSTR);
                    wmma::mma_sync(acc, pa[n], vf, acc);
                }
                wmma::store_matrix_sync(S + t * 16, acc, SSTR, wmma::mem_row_major);
            }
            __syncwarp();
            TC_UNROLL for (int t = 0; t < NSUB; t++) {
                int f = f0 + t;
                if (f >= NF || f >= nf) break;
                float pv[8];
                tc_ld4(pv, S + r * SSTR + t * 16 + hf * 8);
                tc_ld4(pv + 4, S + r * SSTR + t * 16 + hf * 8 + 4);
                TC_UNROLL for (int e = 0; e < 8; e++) o[f][e] = o[f][e] * corr + pv[e];
            }
            __syncwarp();
        }
    }

    l += __shfl_xor_sync(0xffffffffu, l, 16);
    if (i < T) {
        // a row that sees no key (impossible with these masks) keeps zeros and lse = -inf
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        bf16 *orow = out + ((size_t)b * T + i) * qs + (size_t)h * HD;
        TC_UNROLL for (int f = 0; f < NF; f++) {
            if (f >= nf) break;
            float ov[8];
            TC_UNROLL for (int e = 0; e < 8; e++) ov[e] = o[f][e] * inv;
            tc_st8_bf16(orow + f * 16 + hf * 8, ov);
        }
        if (lse && hf == 0) lse[((size_t)b * NH + h) * T + i] = l > 0.0f ? (m + log2f(l)) * TC_LN2 : -INFINITY;
    }
}

// ---------------------------------------------------------------- backward

// dq_i = scale sum_j P_ij (dP_ij - D_i) k_j with P_ij = exp(S_ij - lse_i), dP_ij = dout_i . v_j;
// one block per (64 query rows, query head, batch)
template <int MAXD>
__global__ void __launch_bounds__(TC_THREADS) attn_tc_dq_kernel(bf16 *dq, const bf16 *dout, const bf16 *q,
                                                                const bf16 *k, const bf16 *v, const float *lse,
                                                                const float *D, const int *seg, int T, int NH,
                                                                int NKV, int HD, int causal, float sl2, float scale) {
    typedef TcCfg<MAXD> C;
    constexpr int BK = C::BK, NF = C::NF, NSUB = C::NSUB, HC = C::HC, DSTR = C::DSTR, SSTR = C::SSTR, PSTR = C::PSTR;
    __shared__ __align__(128) bf16 Ks[BK * DSTR];
    __shared__ __align__(128) bf16 Vs[BK * DSTR];
    __shared__ __align__(128) unsigned char U[C::UNION_BYTES];  // queries, then dout, then score buffers
    __shared__ int segk[BK];

    int b = blockIdx.z, h = blockIdx.y, q0 = (gridDim.x - 1 - blockIdx.x) * TC_ROWS;
    int grp = h / (NH / NKV);
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    int r = lane % 16, hf = lane / 16;
    int nf = HD / 16;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    size_t qoff = (size_t)b * T * qs + (size_t)h * HD, koff = (size_t)b * T * ks + (size_t)grp * HD;
    const int *segb = seg ? seg + (size_t)b * T : NULL;
    float *S = (float *)U + warp * 16 * SSTR;  // scores, then dP, then dS (bf16)
    bf16 *P = (bf16 *)S;

    FragA qa[NF], oa[NF];  // the warp's 16 rows of q and dout
    tc_stage<TC_ROWS, DSTR>((bf16 *)U, q + qoff, qs, q0, T, HD);
    __syncthreads();
    TC_UNROLL for (int f = 0; f < NF; f++)
        if (f < nf) wmma::load_matrix_sync(qa[f], (bf16 *)U + warp * 16 * DSTR + f * 16, DSTR);
    __syncthreads();
    tc_stage<TC_ROWS, DSTR>((bf16 *)U, dout + qoff, qs, q0, T, HD);
    __syncthreads();
    TC_UNROLL for (int f = 0; f < NF; f++)
        if (f < nf) wmma::load_matrix_sync(oa[f], (bf16 *)U + warp * 16 * DSTR + f * 16, DSTR);

    int w0 = q0 + warp * 16, i = w0 + r;
    size_t li = ((size_t)b * NH + h) * T + i;
    float L2 = i < T ? lse[li] * TC_LOG2E : 0.0f, Di = i < T ? D[li] : 0.0f;
    int segi = (segb && i < T) ? segb[i] : 0;
    FragC dqa[NF];
    TC_UNROLL for (int f = 0; f < NF; f++) wmma::fill_fragment(dqa[f], 0.0f);

    int kend = causal ? min(T, q0 + TC_ROWS) : T;
    int klast = w0 >= T ? -1 : causal ? min(w0 + 15, T - 1) : T - 1;
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        tc_stage<BK, DSTR>(Ks, k + koff, ks, k0, T, HD);
        tc_stage<BK, DSTR>(Vs, v + koff, ks, k0, T, HD);
        if (threadIdx.x < BK) segk[threadIdx.x] = (segb && k0 + (int)threadIdx.x < T) ? segb[k0 + threadIdx.x] : 0;
        __syncthreads();
        int ns = tc_subtiles_upto(klast, k0, NSUB);

        tc_rows_by_tile_t<NF, DSTR, SSTR>(S, qa, Ks, 0, ns, nf);  // S = Q K^T
        __syncwarp();
        float p[HC];
        TC_UNROLL for (int c = 0; c < HC; c += 4) tc_ld4(p + c, S + r * SSTR + hf * HC + c);
        unsigned visbits = 0;  // bit c: key hf*HC + c of the tile is visible to row i
        TC_UNROLL for (int c = 0; c < HC; c++) {
            int col = hf * HC + c, j = k0 + col;
            bool vis = i < T && j < T && (!causal || j <= i) && (!segb || segk[col] == segi);
            visbits |= (unsigned)vis << c;
            p[c] = vis ? exp2f(p[c] * sl2 - L2) : 0.0f;
        }
        __syncwarp();  // scores read: the buffer takes dP
        tc_rows_by_tile_t<NF, DSTR, SSTR>(S, oa, Vs, 0, ns, nf);  // dP = dout V^T
        __syncwarp();
        float dp[HC];
        TC_UNROLL for (int c = 0; c < HC; c += 4) tc_ld4(dp + c, S + r * SSTR + hf * HC + c);
        TC_UNROLL for (int c = 0; c < HC; c++) p[c] = (visbits >> c & 1u) ? p[c] * (dp[c] - Di) : 0.0f;  // dS
        __syncwarp();
        TC_UNROLL for (int c = 0; c < HC; c += 8) tc_st8_bf16(P + r * PSTR + hf * HC + c, p + c);
        __syncwarp();
        for (int n = 0; n < ns; n++) {  // dq += dS K
            FragA dsa;
            wmma::load_matrix_sync(dsa, P + n * 16, PSTR);
            TC_UNROLL for (int f = 0; f < NF; f++) {
                if (f >= nf) break;
                FragBr kf;
                wmma::load_matrix_sync(kf, Ks + n * 16 * DSTR + f * 16, DSTR);
                wmma::mma_sync(dqa[f], dsa, kf, dqa[f]);
            }
        }
    }

    // dq = scale * the accumulators, through the buffer NSUB fragments at a time
    TC_UNROLL for (int f0 = 0; f0 < NF; f0 += NSUB) {
        if (f0 >= nf) break;
        __syncwarp();  // the buffer's previous contents are read (dS by the fragments, or the last group)
        TC_UNROLL for (int t = 0; t < NSUB; t++)
            if (f0 + t < NF && f0 + t < nf) wmma::store_matrix_sync(S + t * 16, dqa[f0 + t], SSTR, wmma::mem_row_major);
        __syncwarp();
        if (i < T) {
            bf16 *drow = dq + qoff + (size_t)i * qs;
            TC_UNROLL for (int t = 0; t < NSUB; t++) {
                if (f0 + t >= nf) break;
                float x[8];
                tc_ld4(x, S + r * SSTR + t * 16 + hf * 8);
                tc_ld4(x + 4, S + r * SSTR + t * 16 + hf * 8 + 4);
                TC_UNROLL for (int e = 0; e < 8; e++) x[e] *= scale;
                tc_st8_bf16(drow + (f0 + t) * 16 + hf * 8, x);
            }
        }
    }
}

// for one query head h: pk_j = sum_i dS_ij q_i, pv_j = sum_i P_ij dout_i, fp32 partials (B,T,NH,HD)
// that attention.cu's group sum adds over the heads of each kv group; one block per (64 key rows,
// query head, batch), walking the query tiles. The warp's products are transposed (S^T = K Q^T,
// 16 keys x BK queries) so that its 16 key rows are the fragment rows.
template <int MAXD>
__global__ void __launch_bounds__(TC_THREADS) attn_tc_dkdv_kernel(float *pk, float *pv, const bf16 *dout,
                                                                  const bf16 *q, const bf16 *k, const bf16 *v,
                                                                  const float *lse, const float *D, const int *seg,
                                                                  int T, int NH, int NKV, int HD, int causal,
                                                                  float sl2) {
    typedef TcCfg<MAXD> C;
    constexpr int BQ = C::BK, NF = C::NF, NSUB = C::NSUB, HC = C::HC, DSTR = C::DSTR, SSTR = C::SSTR, PSTR = C::PSTR;
    __shared__ __align__(128) bf16 Qs[BQ * DSTR];   // the current tile of queries (BQ, HD)
    __shared__ __align__(128) bf16 dOs[BQ * DSTR];  // ... and their dout
    __shared__ __align__(128) unsigned char U[C::UNION_BYTES];  // keys, then values, then score buffers
    __shared__ float Ls[BQ], Ds[BQ];  // lse (log2 units) and D of the tile's queries
    __shared__ int segq[BQ];

    int b = blockIdx.z, h = blockIdx.y, k0 = blockIdx.x * TC_ROWS;  // in order: with a causal mask the first are the longest
    int grp = h / (NH / NKV);
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    int r = lane % 16, hf = lane / 16;  // this lane's key row of the warp's 16 and its half of the queries
    int nf = HD / 16;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    size_t qoff = (size_t)b * T * qs + (size_t)h * HD, koff = (size_t)b * T * ks + (size_t)grp * HD;
    const float *lse_h = lse + ((size_t)b * NH + h) * T, *D_h = D + ((size_t)b * NH + h) * T;
    const int *segb = seg ? seg + (size_t)b * T : NULL;
    float *S = (float *)U + warp * 16 * SSTR;  // S^T, then dP^T; then P^T (bf16 columns 0..BQ) and dS^T (BQ..2BQ)
    bf16 *P = (bf16 *)S;

    FragA ka[NF], va[NF];  // the warp's 16 key and value rows
    tc_stage<TC_ROWS, DSTR>((bf16 *)U, k + koff, ks, k0, T, HD);
    __syncthreads();
    TC_UNROLL for (int f = 0; f < NF; f++)
        if (f < nf) wmma::load_matrix_sync(ka[f], (bf16 *)U + warp * 16 * DSTR + f * 16, DSTR);
    __syncthreads();
    tc_stage<TC_ROWS, DSTR>((bf16 *)U, v + koff, ks, k0, T, HD);
    __syncthreads();
    TC_UNROLL for (int f = 0; f < NF; f++)
        if (f < nf) wmma::load_matrix_sync(va[f], (bf16 *)U + warp * 16 * DSTR + f * 16, DSTR);

    int w0 = k0 + warp * 16, j = w0 + r;  // the warp's first key, this lane's key
    int segj = (segb && j < T) ? segb[j] : 0;
    FragC dka[NF], dva[NF];
    TC_UNROLL for (int f = 0; f < NF; f++) {
        wmma::fill_fragment(dka[f], 0.0f);
        wmma::fill_fragment(dva[f], 0.0f);
    }

    int qstart = causal ? k0 / BQ * BQ : 0;  // with a causal mask only queries i >= j see key j
    for (int q0 = qstart; q0 < T; q0 += BQ) {
        __syncthreads();  // the previous tile is consumed (the first time: every warp has its keys, values)
        tc_stage<BQ, DSTR>(Qs, q + qoff, qs, q0, T, HD);
        tc_stage<BQ, DSTR>(dOs, dout + qoff, qs, q0, T, HD);
        if (threadIdx.x < BQ) {
            int ii = q0 + threadIdx.x;
            Ls[threadIdx.x] = ii < T ? lse_h[ii] * TC_LOG2E : 0.0f;
            Ds[threadIdx.x] = ii < T ? D_h[ii] : 0.0f;
            segq[threadIdx.x] = (segb && ii < T) ? segb[ii] : 0;
        }
        __syncthreads();
        // query subtiles [ms, me) can see a key of this warp: causal needs query >= key, and
        // subtiles past T are padding
        int ms = 0, me = w0 >= T ? 0 : tc_subtiles_upto(T - 1, q0, NSUB);
        if (causal && w0 > q0 + 15) ms = min(me, (w0 - q0 - 15 + 15) / 16);

        tc_rows_by_tile_t<NF, DSTR, SSTR>(S, ka, Qs, ms, me, nf);  // S^T = K Q^T
        __syncwarp();
        float p[HC];
        TC_UNROLL for (int c = 0; c < HC; c += 4) tc_ld4(p + c, S + r * SSTR + hf * HC + c);
        unsigned visbits = 0;  // bit c: query hf*HC + c of the tile sees key j
        TC_UNROLL for (int c = 0; c < HC; c++) {
            int col = hf * HC + c, ii = q0 + col;
            bool vis = ii < T && j < T && (!causal || j <= ii) && (!segb || segq[col] == segj);
            visbits |= (unsigned)vis << c;
            p[c] = vis ? exp2f(p[c] * sl2 - Ls[col]) : 0.0f;
        }
        __syncwarp();
        tc_rows_by_tile_t<NF, DSTR, SSTR>(S, va, dOs, ms, me, nf);  // dP^T = V dout^T
        __syncwarp();
        float ds[HC];
        TC_UNROLL for (int c = 0; c < HC; c += 4) tc_ld4(ds + c, S + r * SSTR + hf * HC + c);
        TC_UNROLL for (int c = 0; c < HC; c++) ds[c] = (visbits >> c & 1u) ? p[c] * (ds[c] - Ds[hf * HC + c]) : 0.0f;
        __syncwarp();
        TC_UNROLL for (int c = 0; c < HC; c += 8) {
            tc_st8_bf16(P + r * PSTR + hf * HC + c, p + c);
            tc_st8_bf16(P + r * PSTR + BQ + hf * HC + c, ds + c);
        }
        __syncwarp();
        for (int n = ms; n < me; n++) {  // dv += P^T dout, dk += dS^T q
            FragA pa, dsa;
            wmma::load_matrix_sync(pa, P + n * 16, PSTR);
            wmma::load_matrix_sync(dsa, P + BQ + n * 16, PSTR);
            TC_UNROLL for (int f = 0; f < NF; f++) {
                if (f >= nf) break;
                FragBr of, qf;
                wmma::load_matrix_sync(of, dOs + n * 16 * DSTR + f * 16, DSTR);
                wmma::mma_sync(dva[f], pa, of, dva[f]);
                wmma::load_matrix_sync(qf, Qs + n * 16 * DSTR + f * 16, DSTR);
                wmma::mma_sync(dka[f], dsa, qf, dka[f]);
            }
        }
    }

    // the partials of key j, through the buffer NSUB fragments at a time
    float *pkr = pk + (((size_t)b * T + j) * NH + h) * HD, *pvr = pv + (((size_t)b * T + j) * NH + h) * HD;
    TC_UNROLL for (int which = 0; which < 2; which++) {
        TC_UNROLL for (int f0 = 0; f0 < NF; f0 += NSUB) {
            if (f0 >= nf) break;
            __syncwarp();
            TC_UNROLL for (int t = 0; t < NSUB; t++)
                if (f0 + t < NF && f0 + t < nf)
                    wmma::store_matrix_sync(S + t * 16, which ? dva[f0 + t] : dka[f0 + t], SSTR, wmma::mem_row_major);
            __syncwarp();
            if (j < T) {
                float *dst = which ? pvr : pkr;
                TC_UNROLL for (int t = 0; t < NSUB; t++) {
                    if (f0 + t >= nf) break;
                    const float *src = S + r * SSTR + t * 16 + hf * 8;
                    *(uint4 *)(dst + (f0 + t) * 16 + hf * 8) = *(const uint4 *)src;
                    *(uint4 *)(dst + (f0 + t) * 16 + hf * 8 + 4) = *(const uint4 *)(src + 4);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- host side (attention.cu calls these)

int attn_tc_supported(int HD) { return HD >= 16 && HD <= 128 && HD % 16 == 0; }

void attn_tc_forward(act_t *out, float *lse, const act_t *q, const act_t *k, const act_t *v, const int *seg, int B,
                     int T, int NH, int NKV, int HD, int causal) {
    float sl2 = TC_LOG2E / sqrtf((float)HD);
    dim3 grid(ceil_div_u(T, TC_ROWS), NH, B);
    bf16 *o = (bf16 *)out;
    const bf16 *qq = (const bf16 *)q, *kk = (const bf16 *)k, *vv = (const bf16 *)v;
    if (HD <= 64) LAUNCH(grid, TC_THREADS, attn_tc_forward_kernel<64>)(o, lse, qq, kk, vv, seg, T, NH, NKV, HD, causal, sl2);
    else LAUNCH(grid, TC_THREADS, attn_tc_forward_kernel<128>)(o, lse, qq, kk, vv, seg, T, NH, NKV, HD, causal, sl2);
    cudaCheckLaunch();
}

// dq (when not NULL) and the per-head partials pk, pv (B,T,NH,HD) fp32 (when not NULL); D (B,NH,T)
void attn_tc_backward(act_t *dq, float *pk, float *pv, const act_t *dout, const act_t *q, const act_t *k,
                      const act_t *v, const float *lse, const float *D, const int *seg, int B, int T, int NH,
                      int NKV, int HD, int causal) {
    float scale = 1.0f / sqrtf((float)HD), sl2 = TC_LOG2E * scale;
    dim3 grid(ceil_div_u(T, TC_ROWS), NH, B);
    const bf16 *dO = (const bf16 *)dout, *qq = (const bf16 *)q, *kk = (const bf16 *)k, *vv = (const bf16 *)v;
    if (dq) {
        bf16 *o = (bf16 *)dq;
        if (HD <= 64) LAUNCH(grid, TC_THREADS, attn_tc_dq_kernel<64>)(o, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, sl2, scale);
        else LAUNCH(grid, TC_THREADS, attn_tc_dq_kernel<128>)(o, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, sl2, scale);
        cudaCheckLaunch();
    }
    if (pk) {
        if (HD <= 64) LAUNCH(grid, TC_THREADS, attn_tc_dkdv_kernel<64>)(pk, pv, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, sl2);
        else LAUNCH(grid, TC_THREADS, attn_tc_dkdv_kernel<128>)(pk, pv, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, sl2);
        cudaCheckLaunch();
    }
}
