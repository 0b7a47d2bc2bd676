// norm.cu: LayerNorm (CLIP) and RMSNorm (Llama/Qwen2), forward and backward, in fp32 math on bf16
// rows. One warp per row (8 rows per block of 256): each lane walks the row with stride 32 (RMSNorm
// with C % 8 == 0 and 16-byte aligned rows: 16-byte loads of 8 elements, stride 256) and the
// row sums are warp reductions (a fixed shuffle tree). RMSNorm's forward also comes fused with
// the residual add before it (add_rmsnorm_forward). The saved mean/rstd are fp32, and the
// output uses exactly the saved values, as the CPU backend does. Weight and bias gradients (fp32,
// +=) are deterministic two-pass column sums (colsum.cu).
#include "kernels/cuda/common.cuh"

#define NORM_ROWS 8  // rows (warps) per block

__global__ void __launch_bounds__(256) layernorm_forward_kernel(bf16 *out, float *mean, float *rstd,
                                                                const bf16 *inp, const bf16 *w, const bf16 *b,
                                                                int N, int C, float eps) {
    int row = blockIdx.x * NORM_ROWS + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (row >= N) return;  // the whole warp leaves; no block-wide barrier follows
    const bf16 *x = inp + (size_t)row * C;
    bf16 *y = out + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += WARP) s += bf2f(x[c]);
    float m = warp_sum(s) / (float)C;
    // two passes: the variance of rows with a large mean stays accurate
    float ss = 0.0f;
    for (int c = lane; c < C; c += WARP) {
        float d = bf2f(x[c]) - m;
        ss += d * d;
    }
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    for (int c = lane; c < C; c += WARP) y[c] = f2bf((bf2f(x[c]) - m) * r * bf2f(w[c]) + bf2f(b[c]));
    if (lane == 0) {
        if (mean) mean[row] = m;
        if (rstd) rstd[row] = r;
    }
}

// dinp += r (w g - mean(w g) - xhat mean(w g xhat)), xhat = (x - mean) r
__global__ void __launch_bounds__(256) layernorm_backward_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp,
                                                                 const bf16 *w, const float *mean,
                                                                 const float *rstd, int N, int C) {
    int row = blockIdx.x * NORM_ROWS + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (row >= N) return;
    const bf16 *x = inp + (size_t)row * C, *g = dout + (size_t)row * C;
    bf16 *dx = dinp + (size_t)row * C;
    float m = mean[row], r = rstd[row];
    float s_wg = 0.0f, s_wgx = 0.0f;
    for (int c = lane; c < C; c += WARP) {
        float wg = bf2f(w[c]) * bf2f(g[c]);
        s_wg += wg;
        s_wgx += wg * ((bf2f(x[c]) - m) * r);
    }
    float mean_wg = warp_sum(s_wg) / (float)C;
    float mean_wgx = warp_sum(s_wgx) / (float)C;
    for (int c = lane; c < C; c += WARP) {
        float xhat = (bf2f(x[c]) - m) * r;
        float d = r * (bf2f(w[c]) * bf2f(g[c]) - mean_wg - xhat * mean_wgx);
        dx[c] = f2bf(bf2f(dx[c]) + d);
    }
}

// RMSNorm of one row per warp, optionally after a residual add (A: x = bf16(a + b), written to
// sum, and normalised as rounded). VEC: 16-byte loads of 8 bf16 (C % 8 == 0, rows aligned), lane
// l taking elements 8l.. of every 256; otherwise element by element with stride 32. The add is
// the same rounding as cuda_add, and each path sums in one fixed order whether A or not, so the
// fused op gives the bits of add followed by rmsnorm_forward.
template <bool A, bool VEC>
__global__ void __launch_bounds__(256) rmsnorm_forward_kernel(bf16 *sum, bf16 *out, float *rstd, const bf16 *inp,
                                                              const bf16 *inp2, const bf16 *w, int N, int C,
                                                              float eps) {
    int row = blockIdx.x * NORM_ROWS + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (row >= N) return;
    size_t o = (size_t)row * C;
    const bf16 *x = (A ? sum : inp) + o;  // what is normalised (the sum once written)
    bf16 *y = out + o;
    float ss = 0.0f;
    if (VEC) {
        for (int c = lane * 8; c < C; c += WARP * 8) {
            float v[8];
            load8(v, inp + o, c, C, true);
            if (A) {
                float u[8];
                load8(u, inp2 + o, c, C, true);
                for (int j = 0; j < 8; j++) v[j] = bf2f(f2bf(v[j] + u[j]));
                store8(sum + o, c, C, true, v);
            }
            for (int j = 0; j < 8; j++) ss += v[j] * v[j];
        }
    } else {
        for (int c = lane; c < C; c += WARP) {
            float v = bf2f(inp[o + c]);
            if (A) {
                v = bf2f(f2bf(v + bf2f(inp2[o + c])));
                sum[o + c] = f2bf(v);
            }
            ss += v * v;
        }
    }
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    // w * (x * rstd), in the order of transformers' LlamaRMSNorm; each lane reads back only what it wrote
    if (VEC) {
        for (int c = lane * 8; c < C; c += WARP * 8) {
            float v[8], g[8];
            load8(v, x, c, C, true);
            load8(g, w, c, C, true);
            for (int j = 0; j < 8; j++) v[j] = g[j] * (v[j] * r);
            store8(y, c, C, true, v);
        }
    } else {
        for (int c = lane; c < C; c += WARP) y[c] = f2bf(bf2f(w[c]) * (bf2f(x[c]) * r));
    }
    if (lane == 0 && rstd) rstd[row] = r;
}

// dinp += r (w g - x r^2 mean(w g x)), or = when set (dinp not read); VEC as in the forward
template <bool VEC>
__global__ void __launch_bounds__(256) rmsnorm_backward_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp,
                                                               const bf16 *w, const float *rstd, int N, int C,
                                                               int set) {
    int row = blockIdx.x * NORM_ROWS + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (row >= N) return;
    const bf16 *x = inp + (size_t)row * C, *g = dout + (size_t)row * C;
    bf16 *dx = dinp + (size_t)row * C;
    float r = rstd[row];
    float s = 0.0f;
    if (VEC) {
        for (int c = lane * 8; c < C; c += WARP * 8) {
            float xv[8], gv[8], wv[8];
            load8(xv, x, c, C, true);
            load8(gv, g, c, C, true);
            load8(wv, w, c, C, true);
            for (int j = 0; j < 8; j++) s += (wv[j] * gv[j]) * xv[j];
        }
    } else {
        for (int c = lane; c < C; c += WARP) s += (bf2f(w[c]) * bf2f(g[c])) * bf2f(x[c]);
    }
    float k = (warp_sum(s) / (float)C) * r * r;
    if (VEC) {
        for (int c = lane * 8; c < C; c += WARP * 8) {
            float xv[8], gv[8], wv[8], dv[8];
            load8(xv, x, c, C, true);
            load8(gv, g, c, C, true);
            load8(wv, w, c, C, true);
            if (set)
                for (int j = 0; j < 8; j++) dv[j] = r * (wv[j] * gv[j] - xv[j] * k);
            else {
                load8(dv, dx, c, C, true);
                for (int j = 0; j < 8; j++) dv[j] = dv[j] + r * (wv[j] * gv[j] - xv[j] * k);
            }
            store8(dx, c, C, true, dv);
        }
    } else {
        for (int c = lane; c < C; c += WARP) {
            float d = r * (bf2f(w[c]) * bf2f(g[c]) - bf2f(x[c]) * k);
            dx[c] = f2bf(set ? d : bf2f(dx[c]) + d);
        }
    }
}

void cuda_layernorm_forward(act_t *out, float *mean, float *rstd, const act_t *inp, const act_t *w,
                            const act_t *b, int N, int C, float eps) {
    if (N <= 0 || C <= 0) return;
    LAUNCH(ceil_div_u(N, NORM_ROWS), 256, layernorm_forward_kernel)((bf16 *)out, mean, rstd, (const bf16 *)inp,
                                                                   (const bf16 *)w, (const bf16 *)b, N, C, eps);
    cudaCheckLaunch();
}

void cuda_layernorm_backward(act_t *dinp, float *dw, float *db, const act_t *dout, const act_t *inp,
                             const act_t *w, const float *mean, const float *rstd, int N, int C) {
    if (N <= 0 || C <= 0) return;
    if (dinp) {
        LAUNCH(ceil_div_u(N, NORM_ROWS), 256, layernorm_backward_kernel)((bf16 *)dinp, (const bf16 *)dout,
                                                                        (const bf16 *)inp, (const bf16 *)w, mean,
                                                                        rstd, N, C);
        cudaCheckLaunch();
    }
    if (dw || db) cuda_colsum_layernorm(dw, db, (const bf16 *)dout, (const bf16 *)inp, mean, rstd, N, C);
}

static bool rows_vec(const void *a, const void *b, const void *c, const void *d, int C) {
    return C % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(c) && aligned16(d);
}

void cuda_rmsnorm_forward(act_t *out, float *rstd, const act_t *inp, const act_t *w, int N, int C, float eps) {
    if (N <= 0 || C <= 0) return;
    if (rows_vec(out, inp, w, w, C))
        LAUNCH(ceil_div_u(N, NORM_ROWS), 256, rmsnorm_forward_kernel<false, true>)(
            (bf16 *)NULL, (bf16 *)out, rstd, (const bf16 *)inp, (const bf16 *)NULL, (const bf16 *)w, N, C, eps);
    else
        LAUNCH(ceil_div_u(N, NORM_ROWS), 256, rmsnorm_forward_kernel<false, false>)(
            (bf16 *)NULL, (bf16 *)out, rstd, (const bf16 *)inp, (const bf16 *)NULL, (const bf16 *)w, N, C, eps);
    cudaCheckLaunch();
}

void cuda_add_rmsnorm_forward(act_t *sum, act_t *out, float *rstd, const act_t *a, const act_t *b, const act_t *w,
                              int N, int C, float eps) {
    if (N <= 0 || C <= 0) return;
    // the vector path only when the plain rmsnorm_forward of the sum would take it too (same bits)
    if (rows_vec(out, sum, w, w, C) && aligned16(a) && aligned16(b))
        LAUNCH(ceil_div_u(N, NORM_ROWS), 256, rmsnorm_forward_kernel<true, true>)(
            (bf16 *)sum, (bf16 *)out, rstd, (const bf16 *)a, (const bf16 *)b, (const bf16 *)w, N, C, eps);
    else if (!rows_vec(out, sum, w, w, C))
        LAUNCH(ceil_div_u(N, NORM_ROWS), 256, rmsnorm_forward_kernel<true, false>)(
            (bf16 *)sum, (bf16 *)out, rstd, (const bf16 *)a, (const bf16 *)b, (const bf16 *)w, N, C, eps);
    else {  // inputs misaligned but the sum aligned: the two ops
        cuda_add(sum, a, b, (size_t)N * C);
        cuda_rmsnorm_forward(out, rstd, sum, w, N, C, eps);
        return;
    }
    cudaCheckLaunch();
}

static void rmsnorm_backward(act_t *dinp, float *dw, const act_t *dout, const act_t *inp, const act_t *w,
                             const float *rstd, int N, int C, int set) {
    if (N <= 0 || C <= 0) return;
    if (dinp) {
        if (rows_vec(dinp, dout, inp, w, C))
            LAUNCH(ceil_div_u(N, NORM_ROWS), 256, rmsnorm_backward_kernel<true>)(
                (bf16 *)dinp, (const bf16 *)dout, (const bf16 *)inp, (const bf16 *)w, rstd, N, C, set);
        else
            LAUNCH(ceil_div_u(N, NORM_ROWS), 256, rmsnorm_backward_kernel<false>)(
                (bf16 *)dinp, (const bf16 *)dout, (const bf16 *)inp, (const bf16 *)w, rstd, N, C, set);
        cudaCheckLaunch();
    }
    if (dw) cuda_colsum_rmsnorm(dw, (const bf16 *)dout, (const bf16 *)inp, rstd, N, C);
}

void cuda_rmsnorm_backward(act_t *dinp, float *dw, const act_t *dout, const act_t *inp, const act_t *w,
                           const float *rstd, int N, int C) {
    rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C, 0);
}

// dinp overwritten, for its first writer: one read of dinp and its memset less
void cuda_rmsnorm_backward_set(act_t *dinp, float *dw, const act_t *dout, const act_t *inp, const act_t *w,
                               const float *rstd, int N, int C) {
    rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C, 1);
}
