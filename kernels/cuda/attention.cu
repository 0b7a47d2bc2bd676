// attention.cu: softmax(q k^T / sqrt(HD)) v with grouped-query heads, causal and segment masks,
// flash-attention style: nothing of size T x T is ever stored. The kernels here use plain fp32 FMA;
// attention_forward and attention_backward run on tensor cores instead (attention_tc.cu) when
// HD % 16 == 0 and HD <= 128 and the buffers are 16-byte aligned, unless the environment variable
// SVLM_ATTN=fma (read once) or cuda_attention_set_path (for the tests) asks for these kernels.
// SVLM_ATTN=cudnn tries cuDNN's fused attention first (attention_cudnn.cu), which declines shapes
// it cannot do; those then run as without it.
// Other head dims and attention_cached (decoding, memory-bound) always run here. The backward's
// row dots D and its group sum of the dk/dv partials are shared by both paths, as is the scratch.
//
// Tiling (all three kernels): a block of 4 warps owns a tile of 32 rows (query rows in the forward
// and dq kernels, key rows in the dk/dv kernel), 8 per warp, and walks the other side in tiles
// of 32 staged in shared memory. Inside a warp:
//  - scores: lane l owns column l of the 32-wide tile, so a score is one lane's private dot product
//    over HD (the warp's 8 rows are read as shared-memory broadcasts; the per-lane rows are
//    padded so that the 32 lanes hit 32 different banks);
//  - products with the tile (P V, dS K, P^T dO, dS^T Q): lane l owns dimensions l, l+32, ... of
//    the warp's 8 output rows, and walks the 32 tile rows in order with the probabilities
//    broadcast from shared memory.
// Head dims up to 128 (NDL = dims per lane, 1..4, a template parameter); any T (tiles are zero
// padded and masked); dims past HD are zero in shared memory.
//
// attention_cached (generation over a KV cache) is the forward kernel with queries offset in
// position and keys read from the cache's rows.
//
// Forward: online softmax in fp32 (running max m, rescaled sum l and accumulators), lse = m + log l.
// Backward (recomputes P = exp(S - lse)): D_i = dout_i . out_i first; then dq one block per query
// tile looping over key tiles; then per-query-head dk, dv partials (fp32) one block per (batch,
// query head, key tile) looping over all query tiles, and a last pass that adds the partials of
// the heads of each kv group in head order. Every output element is written by one thread that
// sums in a fixed order, so there are no atomics and the results are bit-reproducible.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/common.cuh"

#define AT_ROWS 32  // rows per block tile (4 warps x 8)
#define AT_COLS 32  // columns per shared tile (one per lane)
#define AT_RPW 8    // rows per warp
#define AT_THREADS 128

typedef uint16_t bfraw;  // bf16 bits, copied between global and shared memory without conversion

__device__ __forceinline__ float rawf(bfraw u) { return __uint_as_float((uint32_t)u << 16); }
__device__ __forceinline__ uint32_t raw2(const bfraw *p) { return *(const uint32_t *)p; }  // p 4-byte aligned

__device__ __forceinline__ bool at_visible(int i, int j, int T, int causal, const int *segb, int seg_i, int seg_j) {
    return i < T && j < T && (!causal || j <= i) && (!segb || seg_i == seg_j);
}

// rows [r0, r0 + AT_ROWS) of a (T, stride) bf16 matrix, dims [0, HD), into dst[AT_ROWS][DSTR];
// zeros past T and past HD up to MAXD
template <int MAXD, int DSTR>
__device__ __forceinline__ void load_tile(bfraw (*dst)[DSTR], const bfraw *src, size_t stride, int r0, int T, int HD) {
    for (int e = threadIdx.x; e < AT_ROWS * MAXD; e += AT_THREADS) {
        int r = e / MAXD, d = e % MAXD, i = r0 + r;
        dst[r][d] = (i < T && d < HD) ? src[(size_t)i * stride + d] : (bfraw)0;
    }
}

// ---------------------------------------------------------------- forward

// Queries: Tq rows per batch; keys: Tk rows per batch out of Tc rows of storage (a KV cache may
// be longer than what is filled); query i sits at position past + i, so with a causal mask it sees
// keys 0 .. past + i. attention_forward is Tq = Tk = Tc = T, past = 0.
template <int NDL>
__global__ void __launch_bounds__(AT_THREADS) attn_forward_kernel(bfraw *out, float *lse, const bfraw *q, const bfraw *k,
                                                                  const bfraw *v, const int *seg, int Tq, int Tk,
                                                                  int Tc, int past, int NH, int NKV, int HD,
                                                                  int causal, float scale) {
    constexpr int MAXD = NDL * 32;
    constexpr int KSTR = MAXD + 2;  // KSTR / 2 words per row is odd: lane rows fall in distinct banks
    __shared__ __align__(16) bfraw Qs[AT_ROWS][MAXD];
    __shared__ __align__(16) bfraw Ks[AT_COLS][KSTR];
    __shared__ __align__(16) bfraw Vs[AT_COLS][MAXD];
    __shared__ float Ps[AT_THREADS / WARP][AT_RPW][AT_COLS];

    int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * AT_ROWS;
    int g = h / (NH / NKV);
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    const bfraw *qb = q + (size_t)b * Tq * qs + (size_t)h * HD;
    const bfraw *kb = k + (size_t)b * Tc * ks + (size_t)g * HD;
    const bfraw *vb = v + (size_t)b * Tc * ks + (size_t)g * HD;
    const int *segb = seg ? seg + (size_t)b * Tq : NULL;  // seg only when Tq == Tk == Tc
    int hd2 = (HD + 1) & ~1;  // dims walked in pairs; the odd pad is zero

    load_tile<MAXD, MAXD>(Qs, qb, qs, q0, Tq, HD);

    float m[AT_RPW], l[AT_RPW], acc[AT_RPW][NDL];
    int segq[AT_RPW];
    for (int rr = 0; rr < AT_RPW; rr++) {
        int i = q0 + warp * AT_RPW + rr;
        m[rr] = -INFINITY;
        l[rr] = 0.0f;  // this lane's share of the softmax denominator
        for (int t = 0; t < NDL; t++) acc[rr][t] = 0.0f;
        segq[rr] = (segb && i < Tq) ? segb[i] : 0;
    }

    int kend = causal ? min(Tk, past + q0 + AT_ROWS) : Tk;
    for (int k0 = 0; k0 < kend; k0 += AT_COLS) {
        __syncthreads();  // the previous tile is consumed (and Qs is written, the first time)
        load_tile<MAXD, KSTR>(Ks, kb, ks, k0, Tk, HD);
        load_tile<MAXD, MAXD>(Vs, vb, ks, k0, Tk, HD);
        __syncthreads();

        int j = k0 + lane;
        int segk = (segb && j < Tk) ? segb[j] : 0;
        float s[AT_RPW];
        for (int rr = 0; rr < AT_RPW; rr++) s[rr] = 0.0f;
        for (int d = 0; d < hd2; d += 2) {
            uint32_t kw = raw2(&Ks[lane][d]);
            float k_a = __uint_as_float(kw << 16), k_b = __uint_as_float(kw & 0xffff0000u);
            for (int rr = 0; rr < AT_RPW; rr++) {
                uint32_t qw = raw2(&Qs[warp * AT_RPW + rr][d]);
                s[rr] += __uint_as_float(qw << 16) * k_a + __uint_as_float(qw & 0xffff0000u) * k_b;
            }
        }
        for (int rr = 0; rr < AT_RPW; rr++) {
            int i = q0 + warp * AT_RPW + rr;
            bool vis = i < Tq && j < Tk && (!causal || j <= past + i) && (!segb || segq[rr] == segk);
            float sc = vis ? s[rr] * scale : -INFINITY;
            float mnew = fmaxf(m[rr], warp_max(sc));  // the same in every lane
            float p = 0.0f, corr = 1.0f;
            if (mnew != -INFINITY) {
                p = vis ? expf(sc - mnew) : 0.0f;
                corr = expf(m[rr] - mnew);  // 0 while m was -inf, when l and acc are still 0
            }
            m[rr] = mnew;
            l[rr] = l[rr] * corr + p;
            for (int t = 0; t < NDL; t++) acc[rr][t] *= corr;
            Ps[warp][rr][lane] = p;
        }
        __syncwarp();
        for (int jj = 0; jj < AT_COLS; jj++) {
            float vv[NDL];
            for (int t = 0; t < NDL; t++) vv[t] = rawf(Vs[jj][lane + 32 * t]);
            for (int rr = 0; rr < AT_RPW; rr++) {
                float p = Ps[warp][rr][jj];
                for (int t = 0; t < NDL; t++) acc[rr][t] += p * vv[t];
            }
        }
        __syncwarp();  // Ps is read before the next tile overwrites it
    }

    for (int rr = 0; rr < AT_RPW; rr++) {
        int i = q0 + warp * AT_RPW + rr;
        float lt = warp_sum(l[rr]);
        if (i >= Tq) continue;
        // a row that sees no key (impossible with these masks) keeps zeros and lse = -inf
        float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
        bfraw *o = out + ((size_t)b * Tq + i) * qs + (size_t)h * HD;
        for (int t = 0; t < NDL; t++) {
            int d = lane + 32 * t;
            if (d < HD) o[d] = (bfraw)bf_bits(acc[rr][t] * inv);
        }
        if (lse && lane == 0) lse[((size_t)b * NH + h) * Tq + i] = lt > 0.0f ? m[rr] + logf(lt) : -INFINITY;
    }
}

// ---------------------------------------------------------------- backward

// D[b,h,i] = dout_i . out_i; one warp per (b, i, h), h fastest
__global__ void attn_rowdot_kernel(float *D, const bfraw *dout, const bfraw *out, int B, int T, int NH, int HD) {
    size_t r = (size_t)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (r >= (size_t)B * T * NH) return;
    const bfraw *a = dout + r * HD, *c = out + r * HD;
    float s = 0.0f;
    for (int d = lane; d < HD; d += WARP) s += rawf(a[d]) * rawf(c[d]);
    s = warp_sum(s);
    int h = (int)(r % NH);
    size_t bi = r / NH;  // b * T + i
    int i = (int)(bi % T), b = (int)(bi / T);
    if (lane == 0) D[((size_t)b * NH + h) * T + i] = s;
}

// dq_i = scale sum_j P_ij (dP_ij - D_i) k_j, with P_ij = exp(S_ij - lse_i), dP_ij = dout_i . v_j
template <int NDL>
__global__ void __launch_bounds__(AT_THREADS) attn_backward_dq_kernel(bfraw *dq, const bfraw *dout, const bfraw *q,
                                                                      const bfraw *k, const bfraw *v, const float *lse,
                                                                      const float *D, const int *seg, int T, int NH,
                                                                      int NKV, int HD, int causal, float scale) {
    constexpr int MAXD = NDL * 32;
    constexpr int KSTR = MAXD + 2;
    __shared__ __align__(16) bfraw Qs[AT_ROWS][MAXD];
    __shared__ __align__(16) bfraw dOs[AT_ROWS][MAXD];
    __shared__ __align__(16) bfraw Ks[AT_COLS][KSTR];
    __shared__ __align__(16) bfraw Vs[AT_COLS][KSTR];
    __shared__ float DSs[AT_THREADS / WARP][AT_RPW][AT_COLS];

    int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * AT_ROWS;
    int g = h / (NH / NKV);
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    size_t qoff = (size_t)b * T * qs + (size_t)h * HD, koff = (size_t)b * T * ks + (size_t)g * HD;
    const int *segb = seg ? seg + (size_t)b * T : NULL;
    int hd2 = (HD + 1) & ~1;

    load_tile<MAXD, MAXD>(Qs, q + qoff, qs, q0, T, HD);
    load_tile<MAXD, MAXD>(dOs, dout + qoff, qs, q0, T, HD);

    float L[AT_RPW], Di[AT_RPW], acc[AT_RPW][NDL];
    int segq[AT_RPW];
    for (int rr = 0; rr < AT_RPW; rr++) {
        int i = q0 + warp * AT_RPW + rr;
        size_t li = ((size_t)b * NH + h) * T + i;
        L[rr] = i < T ? lse[li] : 0.0f;
        Di[rr] = i < T ? D[li] : 0.0f;
        segq[rr] = (segb && i < T) ? segb[i] : 0;
        for (int t = 0; t < NDL; t++) acc[rr][t] = 0.0f;
    }

    int kend = causal ? min(T, q0 + AT_ROWS) : T;
    for (int k0 = 0; k0 < kend; k0 += AT_COLS) {
        __syncthreads();
        load_tile<MAXD, KSTR>(Ks, k + koff, ks, k0, T, HD);
        load_tile<MAXD, KSTR>(Vs, v + koff, ks, k0, T, HD);
        __syncthreads();

        int j = k0 + lane;
        int segk = (segb && j < T) ? segb[j] : 0;
        float s[AT_RPW], dp[AT_RPW];
        for (int rr = 0; rr < AT_RPW; rr++) s[rr] = dp[rr] = 0.0f;
        for (int d = 0; d < hd2; d += 2) {
            uint32_t kw = raw2(&Ks[lane][d]), vw = raw2(&Vs[lane][d]);
            float k_a = __uint_as_float(kw << 16), k_b = __uint_as_float(kw & 0xffff0000u);
            float v_a = __uint_as_float(vw << 16), v_b = __uint_as_float(vw & 0xffff0000u);
            for (int rr = 0; rr < AT_RPW; rr++) {
                uint32_t qw = raw2(&Qs[warp * AT_RPW + rr][d]), ow = raw2(&dOs[warp * AT_RPW + rr][d]);
                s[rr] += __uint_as_float(qw << 16) * k_a + __uint_as_float(qw & 0xffff0000u) * k_b;
                dp[rr] += __uint_as_float(ow << 16) * v_a + __uint_as_float(ow & 0xffff0000u) * v_b;
            }
        }
        for (int rr = 0; rr < AT_RPW; rr++) {
            int i = q0 + warp * AT_RPW + rr;
            bool vis = at_visible(i, j, T, causal, segb, segq[rr], segk);
            float p = vis ? expf(s[rr] * scale - L[rr]) : 0.0f;
            DSs[warp][rr][lane] = p * (dp[rr] - Di[rr]);
        }
        __syncwarp();
        for (int jj = 0; jj < AT_COLS; jj++) {
            float kv[NDL];
            for (int t = 0; t < NDL; t++) kv[t] = rawf(Ks[jj][lane + 32 * t]);
            for (int rr = 0; rr < AT_RPW; rr++) {
                float ds = DSs[warp][rr][jj];
                for (int t = 0; t < NDL; t++) acc[rr][t] += ds * kv[t];
            }
        }
        __syncwarp();
    }

    for (int rr = 0; rr < AT_RPW; rr++) {
        int i = q0 + warp * AT_RPW + rr;
        if (i >= T) continue;
        bfraw *o = dq + qoff + (size_t)i * qs;
        for (int t = 0; t < NDL; t++) {
            int d = lane + 32 * t;
            if (d < HD) o[d] = (bfraw)bf_bits(acc[rr][t] * scale);
        }
    }
}

// for one query head h: pk_j = sum_i dS_ij q_i, pv_j = sum_i P_ij dout_i, fp32 partials
// (B, T, NH, HD) that attn_group_sum_kernel adds over the heads of each group (one block per
// (batch, query head, key tile) gives the GPU group-times more blocks than one per kv head)
template <int NDL>
__global__ void __launch_bounds__(AT_THREADS) attn_backward_dkdv_kernel(float *pk, float *pv, const bfraw *dout,
                                                                        const bfraw *q, const bfraw *k, const bfraw *v,
                                                                        const float *lse, const float *D,
                                                                        const int *seg, int T, int NH, int NKV, int HD,
                                                                        int causal, float scale) {
    constexpr int MAXD = NDL * 32;
    constexpr int KSTR = MAXD + 2;
    __shared__ __align__(16) bfraw Kt[AT_ROWS][MAXD];  // this block's keys and values (broadcast reads)
    __shared__ __align__(16) bfraw Vt[AT_ROWS][MAXD];
    __shared__ __align__(16) bfraw Qs[AT_COLS][KSTR];  // a tile of queries and their dout (per-lane reads)
    __shared__ __align__(16) bfraw dOs[AT_COLS][KSTR];
    __shared__ float Ls[AT_COLS], Ds[AT_COLS];
    __shared__ float Ps[AT_THREADS / WARP][AT_RPW][AT_COLS];
    __shared__ float DSs[AT_THREADS / WARP][AT_RPW][AT_COLS];

    int b = blockIdx.z, h = blockIdx.y, k0 = blockIdx.x * AT_ROWS;
    int g = h / (NH / NKV);
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    size_t koff = (size_t)b * T * ks + (size_t)g * HD, qoff = (size_t)b * T * qs + (size_t)h * HD;
    const float *lse_h = lse + ((size_t)b * NH + h) * T, *D_h = D + ((size_t)b * NH + h) * T;
    const int *segb = seg ? seg + (size_t)b * T : NULL;
    int hd2 = (HD + 1) & ~1;

    load_tile<MAXD, MAXD>(Kt, k + koff, ks, k0, T, HD);
    load_tile<MAXD, MAXD>(Vt, v + koff, ks, k0, T, HD);

    float ak[AT_RPW][NDL], av[AT_RPW][NDL];
    int segk[AT_RPW];
    for (int rr = 0; rr < AT_RPW; rr++) {
        int j = k0 + warp * AT_RPW + rr;
        segk[rr] = (segb && j < T) ? segb[j] : 0;
        for (int t = 0; t < NDL; t++) ak[rr][t] = av[rr][t] = 0.0f;
    }

    int qstart = causal ? k0 : 0;  // with a causal mask only queries i >= j see key j
    for (int q0 = qstart; q0 < T; q0 += AT_COLS) {
        __syncthreads();  // the previous tile is consumed (and Kt, Vt are written, the first time)
        load_tile<MAXD, KSTR>(Qs, q + qoff, qs, q0, T, HD);
        load_tile<MAXD, KSTR>(dOs, dout + qoff, qs, q0, T, HD);
        if (threadIdx.x < AT_COLS) {
            int i = q0 + threadIdx.x;
            Ls[threadIdx.x] = i < T ? lse_h[i] : 0.0f;
            Ds[threadIdx.x] = i < T ? D_h[i] : 0.0f;
        }
        __syncthreads();

        int i = q0 + lane;
        int segi = (segb && i < T) ? segb[i] : 0;
        float s[AT_RPW], dp[AT_RPW];
        for (int rr = 0; rr < AT_RPW; rr++) s[rr] = dp[rr] = 0.0f;
        for (int d = 0; d < hd2; d += 2) {
            uint32_t qw = raw2(&Qs[lane][d]), ow = raw2(&dOs[lane][d]);
            float q_a = __uint_as_float(qw << 16), q_b = __uint_as_float(qw & 0xffff0000u);
            float o_a = __uint_as_float(ow << 16), o_b = __uint_as_float(ow & 0xffff0000u);
            for (int rr = 0; rr < AT_RPW; rr++) {
                uint32_t kw = raw2(&Kt[warp * AT_RPW + rr][d]), vw = raw2(&Vt[warp * AT_RPW + rr][d]);
                s[rr] += q_a * __uint_as_float(kw << 16) + q_b * __uint_as_float(kw & 0xffff0000u);
                dp[rr] += o_a * __uint_as_float(vw << 16) + o_b * __uint_as_float(vw & 0xffff0000u);
            }
        }
        for (int rr = 0; rr < AT_RPW; rr++) {
            int j = k0 + warp * AT_RPW + rr;
            bool vis = at_visible(i, j, T, causal, segb, segi, segk[rr]);
            float p = vis ? expf(s[rr] * scale - Ls[lane]) : 0.0f;
            Ps[warp][rr][lane] = p;
            DSs[warp][rr][lane] = p * (dp[rr] - Ds[lane]);
        }
        __syncwarp();
        for (int ii = 0; ii < AT_COLS; ii++) {
            float qv[NDL], ov[NDL];
            for (int t = 0; t < NDL; t++) {
                qv[t] = rawf(Qs[ii][lane + 32 * t]);
                ov[t] = rawf(dOs[ii][lane + 32 * t]);
            }
            for (int rr = 0; rr < AT_RPW; rr++) {
                float p = Ps[warp][rr][ii], ds = DSs[warp][rr][ii];
                for (int t = 0; t < NDL; t++) {
                    av[rr][t] += p * ov[t];
                    ak[rr][t] += ds * qv[t];
                }
            }
        }
        __syncwarp();
    }

    for (int rr = 0; rr < AT_RPW; rr++) {
        int j = k0 + warp * AT_RPW + rr;
        if (j >= T) continue;
        size_t o = (((size_t)b * T + j) * NH + h) * HD;
        for (int t = 0; t < NDL; t++) {
            int d = lane + 32 * t;
            if (d >= HD) continue;
            pk[o + d] = ak[rr][t];
            pv[o + d] = av[rr][t];
        }
    }
}

// dk = scale * sum over the group's heads of pk, dv = the same sum of pv, heads in order;
// one thread per element of (B, T, NKV, HD)
__global__ void attn_group_sum_kernel(bfraw *dk, bfraw *dv, const float *pk, const float *pv, size_t n, int NH,
                                      int NKV, int HD, float scale) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    int d = (int)(e % HD);
    size_t r = e / HD;  // (b * T + j) * NKV + g
    int g = (int)(r % NKV);
    size_t bj = r / NKV;
    int group = NH / NKV;
    size_t p0 = (bj * NH + (size_t)g * group) * HD + d;
    float sk = 0.0f, sv = 0.0f;
    for (int hh = 0; hh < group; hh++) {
        sk += pk[p0 + (size_t)hh * HD];
        sv += pv[p0 + (size_t)hh * HD];
    }
    if (dk) dk[e] = (bfraw)bf_bits(sk * scale);
    if (dv) dv[e] = (bfraw)bf_bits(sv);
}

// ---------------------------------------------------------------- host side

// attention_tc.cu
int attn_tc_supported(int HD);
void attn_tc_forward(act_t *out, float *lse, const act_t *q, const act_t *k, const act_t *v, const int *seg, int B,
                     int T, int NH, int NKV, int HD, int causal);
void attn_tc_backward(act_t *dq, float *pk, float *pv, const act_t *dout, const act_t *q, const act_t *k,
                      const act_t *v, const float *lse, const float *D, const int *seg, int B, int T, int NH,
                      int NKV, int HD, int causal);

// attention_cudnn.cu: 1 when cuDNN ran the call, 0 when it declines (not built, shape, engine)
int attn_cudnn_forward(act_t *out, float *lse, const act_t *q, const act_t *k, const act_t *v, const int *seg, int B,
                       int T, int NH, int NKV, int HD, int causal);
int attn_cudnn_backward(act_t *dq, act_t *dk, act_t *dv, const act_t *dout, const act_t *q, const act_t *k,
                        const act_t *v, const act_t *out, const float *lse, const int *seg, int B, int T, int NH,
                        int NKV, int HD, int causal);
size_t cuda_attention_cudnn_scratch(int B, int T, int NH, int NKV, int HD);

// which kernels run attention_forward/backward: 0 tensor cores where they apply (the default), 1
// the FMA kernels only, 2 cuDNN first; -1: not read from SVLM_ATTN yet
enum { PATH_TC, PATH_FMA, PATH_CUDNN };
static int g_path = -1;

static int attn_path(void) {
    if (g_path < 0) {
        const char *e = getenv("SVLM_ATTN");
        CHECK(!e || !*e || strcmp(e, "fma") == 0 || strcmp(e, "tc") == 0 || strcmp(e, "cudnn") == 0,
              "SVLM_ATTN=%s: expected tc (tensor cores where they apply, the default), fma (the FMA kernels only) "
              "or cudnn (cuDNN's fused attention where it applies, else tc)", e);
        g_path = !e || !*e || strcmp(e, "tc") == 0 ? PATH_TC : strcmp(e, "fma") == 0 ? PATH_FMA : PATH_CUDNN;
    }
    return g_path;
}
static int fma_only(void) { return attn_path() == PATH_FMA; }

// the tests' switch between the paths (SVLM_ATTN for a whole run): 0 = tensor cores where they
// apply, 1 = FMA kernels only, 2 = cuDNN first; returns the previous setting
extern "C" int cuda_attention_set_path(int path) {
    int old = attn_path();
    CHECK(path >= PATH_TC && path <= PATH_CUDNN, "cuda_attention_set_path(%d)", path);
    g_path = path;
    return old;
}

static int use_tc(int HD, const void *a, const void *b, const void *c, const void *d) {
    return !fma_only() && attn_tc_supported(HD) && aligned16(a) && aligned16(b) && aligned16(c) && aligned16(d);
}

static int dims_per_lane(int HD) {
    CHECK(HD > 0 && HD <= 128, "attention on CUDA supports head_dim 1..128, got %d", HD);
    return (HD + 31) / 32;
}

static void check_shape(int B, int T, int NH, int NKV) {
    CHECK(NKV > 0 && NH % NKV == 0, "attention: NH=%d is not a multiple of NKV=%d", NH, NKV);
    CHECK(NH <= 65535 && B <= 65535, "attention: B=%d or NH=%d above 65535", B, NH);
    CHECK((size_t)B * T * NH < ((size_t)1 << 31) * 8, "attention: B*T*NH = %zu rows is too many", (size_t)B * T * NH);
}

static void forward(act_t *out, float *lse, const act_t *q, const act_t *k, const act_t *v, const int *seg, int B,
                    int Tq, int Tk, int Tc, int NH, int NKV, int HD, int causal) {
    float scale = 1.0f / sqrtf((float)HD);
    dim3 grid(ceil_div_u(Tq, AT_ROWS), NH, B);
    bfraw *o = (bfraw *)out;
    const bfraw *qq = (const bfraw *)q, *kk = (const bfraw *)k, *vv = (const bfraw *)v;
    int past = Tk - Tq;
    switch (dims_per_lane(HD)) {
    case 1: LAUNCH(grid, AT_THREADS, attn_forward_kernel<1>)(o, lse, qq, kk, vv, seg, Tq, Tk, Tc, past, NH, NKV, HD, causal, scale); break;
    case 2: LAUNCH(grid, AT_THREADS, attn_forward_kernel<2>)(o, lse, qq, kk, vv, seg, Tq, Tk, Tc, past, NH, NKV, HD, causal, scale); break;
    case 3: LAUNCH(grid, AT_THREADS, attn_forward_kernel<3>)(o, lse, qq, kk, vv, seg, Tq, Tk, Tc, past, NH, NKV, HD, causal, scale); break;
    default: LAUNCH(grid, AT_THREADS, attn_forward_kernel<4>)(o, lse, qq, kk, vv, seg, Tq, Tk, Tc, past, NH, NKV, HD, causal, scale); break;
    }
    cudaCheckLaunch();
}

void cuda_attention_forward(act_t *out, float *lse, const act_t *q, const act_t *k, const act_t *v,
                            const int *seg, int B, int T, int NH, int NKV, int HD, int causal) {
    if (B <= 0 || T <= 0 || NH <= 0) return;
    check_shape(B, T, NH, NKV);
    if (attn_path() == PATH_CUDNN && attn_cudnn_forward(out, lse, q, k, v, seg, B, T, NH, NKV, HD, causal)) return;
    if (use_tc(HD, out, q, k, v)) attn_tc_forward(out, lse, q, k, v, seg, B, T, NH, NKV, HD, causal);
    else forward(out, lse, q, k, v, seg, B, T, T, T, NH, NKV, HD, causal);
}

void cuda_attention_cached(act_t *out, const act_t *q, const act_t *kc, const act_t *vc, int B, int Tq, int Tk,
                           int Tc, int NH, int NKV, int HD) {
    CHECK(Tq >= 1 && Tq <= Tk && Tk <= Tc, "attention_cached: need 1 <= Tq=%d <= Tk=%d <= Tc=%d", Tq, Tk, Tc);
    if (B <= 0 || NH <= 0) return;
    check_shape(B, Tq, NH, NKV);
    forward(out, NULL, q, kc, vc, NULL, B, Tq, Tk, Tc, NH, NKV, HD, 1);
}

size_t cuda_attention_backward_scratch(int slot, int B, int T, int NH, int NKV, int HD) {
    size_t rows = (size_t)B * T * NH;
    if (slot == SCRATCH_CUDNN) return attn_path() == PATH_CUDNN ? cuda_attention_cudnn_scratch(B, T, NH, NKV, HD) : 0;
    if (slot == SCRATCH_ATTN) return rows * sizeof(float);
    if (slot == SCRATCH_REDUCE) return 2 * rows * HD * sizeof(float);
    return 0;
}

void cuda_attention_backward(act_t *dq, act_t *dk, act_t *dv, const act_t *dout, const act_t *q,
                             const act_t *k, const act_t *v, const act_t *out, const float *lse,
                             const int *seg, int B, int T, int NH, int NKV, int HD, int causal) {
    if (B <= 0 || T <= 0 || NH <= 0) return;
    check_shape(B, T, NH, NKV);
    if (attn_path() == PATH_CUDNN &&
        attn_cudnn_backward(dq, dk, dv, dout, q, k, v, out, lse, seg, B, T, NH, NKV, HD, causal))
        return;
    int ndl = dims_per_lane(HD);
    float scale = 1.0f / sqrtf((float)HD);
    size_t rows = (size_t)B * T * NH;
    // both paths: D (B,NH,T) in SCRATCH_ATTN, the dk and dv partials (B,T,NH,HD) in SCRATCH_REDUCE
    float *D = (float *)cuda_scratch(SCRATCH_ATTN, rows * sizeof(float));
    const bfraw *dO = (const bfraw *)dout, *qq = (const bfraw *)q, *kk = (const bfraw *)k, *vv = (const bfraw *)v;
    LAUNCH(ceil_div_u(rows, 8), 256, attn_rowdot_kernel)(D, dO, (const bfraw *)out, B, T, NH, HD);
    cudaCheckLaunch();
    if (use_tc(HD, q, k, v, dout) && aligned16(dq)) {  // dq NULL is aligned
        float *a = NULL, *c = NULL;
        if (dk || dv) {
            a = (float *)cuda_scratch(SCRATCH_REDUCE, 2 * rows * HD * sizeof(float));
            c = a + rows * HD;
        }
        attn_tc_backward(dq, a, c, dout, q, k, v, lse, D, seg, B, T, NH, NKV, HD, causal);
        if (a) {
            size_t n = (size_t)B * T * NKV * HD;
            LAUNCH(ceil_div_u(n, 256), 256, attn_group_sum_kernel)((bfraw *)dk, (bfraw *)dv, a, c, n, NH, NKV, HD, scale);
            cudaCheckLaunch();
        }
        return;
    }
    if (dq) {
        dim3 grid(ceil_div_u(T, AT_ROWS), NH, B);
        bfraw *o = (bfraw *)dq;
        switch (ndl) {
        case 1: LAUNCH(grid, AT_THREADS, attn_backward_dq_kernel<1>)(o, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, scale); break;
        case 2: LAUNCH(grid, AT_THREADS, attn_backward_dq_kernel<2>)(o, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, scale); break;
        case 3: LAUNCH(grid, AT_THREADS, attn_backward_dq_kernel<3>)(o, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, scale); break;
        default: LAUNCH(grid, AT_THREADS, attn_backward_dq_kernel<4>)(o, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, scale); break;
        }
        cudaCheckLaunch();
    }
    if (dk || dv) {
        dim3 grid(ceil_div_u(T, AT_ROWS), NH, B);
        float *a = (float *)cuda_scratch(SCRATCH_REDUCE, 2 * rows * HD * sizeof(float));
        float *c = a + rows * HD;
        switch (ndl) {
        case 1: LAUNCH(grid, AT_THREADS, attn_backward_dkdv_kernel<1>)(a, c, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, scale); break;
        case 2: LAUNCH(grid, AT_THREADS, attn_backward_dkdv_kernel<2>)(a, c, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, scale); break;
        case 3: LAUNCH(grid, AT_THREADS, attn_backward_dkdv_kernel<3>)(a, c, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, scale); break;
        default: LAUNCH(grid, AT_THREADS, attn_backward_dkdv_kernel<4>)(a, c, dO, qq, kk, vv, lse, D, seg, T, NH, NKV, HD, causal, scale); break;
        }
        cudaCheckLaunch();
        size_t n = (size_t)B * T * NKV * HD;
        LAUNCH(ceil_div_u(n, 256), 256, attn_group_sum_kernel)((bfraw *)dk, (bfraw *)dv, a, c, n, NH, NKV, HD, scale);
        cudaCheckLaunch();
    }
}
