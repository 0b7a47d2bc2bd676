// norm.cu: LayerNorm (CLIP) and RMSNorm (Llama/Qwen2), forward and backward, in fp32 math on bf16
// rows. One warp per row (8 rows per block of 256): each lane walks the row with stride 32 and the
// row sums are warp reductions (a fixed shuffle tree). The saved mean/rstd are fp32, and the
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

__global__ void __launch_bounds__(256) rmsnorm_forward_kernel(bf16 *out, float *rstd, const bf16 *inp,
                                                              const bf16 *w, int N, int C, float eps) {
    int row = blockIdx.x * NORM_ROWS + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (row >= N) return;
    const bf16 *x = inp + (size_t)row * C;
    bf16 *y = out + (size_t)row * C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += WARP) {
        float v = bf2f(x[c]);
        ss += v * v;
    }
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    // w * (x * rstd), in the order of transformers' LlamaRMSNorm
    for (int c = lane; c < C; c += WARP) y[c] = f2bf(bf2f(w[c]) * (bf2f(x[c]) * r));
    if (lane == 0 && rstd) rstd[row] = r;
}

// dinp += r (w g - x r^2 mean(w g x))
__global__ void __launch_bounds__(256) rmsnorm_backward_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp,
                                                               const bf16 *w, const float *rstd, int N, int C) {
    int row = blockIdx.x * NORM_ROWS + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (row >= N) return;
    const bf16 *x = inp + (size_t)row * C, *g = dout + (size_t)row * C;
    bf16 *dx = dinp + (size_t)row * C;
    float r = rstd[row];
    float s = 0.0f;
    for (int c = lane; c < C; c += WARP) s += (bf2f(w[c]) * bf2f(g[c])) * bf2f(x[c]);
    float k = (warp_sum(s) / (float)C) * r * r;
    for (int c = lane; c < C; c += WARP) {
        float d = r * (bf2f(w[c]) * bf2f(g[c]) - bf2f(x[c]) * k);
        dx[c] = f2bf(bf2f(dx[c]) + d);
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

void cuda_rmsnorm_forward(act_t *out, float *rstd, const act_t *inp, const act_t *w, int N, int C, float eps) {
    if (N <= 0 || C <= 0) return;
    LAUNCH(ceil_div_u(N, NORM_ROWS), 256, rmsnorm_forward_kernel)((bf16 *)out, rstd, (const bf16 *)inp,
                                                                 (const bf16 *)w, N, C, eps);
    cudaCheckLaunch();
}

void cuda_rmsnorm_backward(act_t *dinp, float *dw, const act_t *dout, const act_t *inp, const act_t *w,
                           const float *rstd, int N, int C) {
    if (N <= 0 || C <= 0) return;
    if (dinp) {
        LAUNCH(ceil_div_u(N, NORM_ROWS), 256, rmsnorm_backward_kernel)((bf16 *)dinp, (const bf16 *)dout,
                                                                      (const bf16 *)inp, (const bf16 *)w, rstd,
                                                                      N, C);
        cudaCheckLaunch();
    }
    if (dw) cuda_colsum_rmsnorm(dw, (const bf16 *)dout, (const bf16 *)inp, rstd, N, C);
}
