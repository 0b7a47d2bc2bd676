// loss.cu: softmax cross-entropy over rows of bf16 logits, one block of 512 threads per row, fp32
// math: the row max, then the sum of exp(x - max) (per-thread partials, then a fixed block tree),
// loss = max + log(sum) - x[target] in fp32, and when asked the gradient
// dscale * (softmax - onehot) written as bf16, in place when dlogits aliases logits (every thread
// reads x[target] and its own elements before it writes any, and all reads of the row happen
// before the barrier that ends the sum).
#include <math.h>

#include "kernels/cuda/common.cuh"

#define XENT_THREADS 512

__global__ void __launch_bounds__(XENT_THREADS) cross_entropy_kernel(float *losses, bf16 *dlogits,
                                                                     const bf16 *logits, const int *targets, int V,
                                                                     float dscale, bool vec) {
    int row = blockIdx.x;
    const bf16 *x = logits + (size_t)row * V;
    int t = targets[row];
    bool tok = t >= 0 && t < V;
    float xt = tok ? bf2f(x[t]) : NAN;
    size_t nV = (size_t)V;

    float mx = -INFINITY;
    for (size_t i = (size_t)threadIdx.x * 8; i < nV; i += (size_t)blockDim.x * 8) {
        float v[8];
        load8(v, x, i, nV, vec && i + 8 <= nV);
        for (int k = 0; k < 8; k++)
            if (i + k < nV) mx = fmaxf(mx, v[k]);
    }
    mx = block_max(mx);

    float sum = 0.0f;
    for (size_t i = (size_t)threadIdx.x * 8; i < nV; i += (size_t)blockDim.x * 8) {
        float v[8];
        load8(v, x, i, nV, vec && i + 8 <= nV);
        for (int k = 0; k < 8; k++)
            if (i + k < nV) sum += expf(v[k] - mx);
    }
    sum = block_sum(sum);  // ends with barriers: from here on the row may be overwritten

    if (threadIdx.x == 0 && losses) losses[row] = (mx + logf(sum)) - xt;
    if (!dlogits) return;
    bf16 *d = dlogits + (size_t)row * V;
    float inv = 1.0f / sum;
    for (size_t i = (size_t)threadIdx.x * 8; i < nV; i += (size_t)blockDim.x * 8) {
        bool v8 = vec && i + 8 <= nV;
        float v[8];
        load8(v, x, i, nV, v8);
        for (int k = 0; k < 8; k++) {
            float p = expf(v[k] - mx) * inv;
            v[k] = dscale * (i + k == (size_t)t ? p - 1.0f : p);
        }
        store8(d, i, nV, v8, v);
    }
}

void cuda_cross_entropy(float *losses, act_t *dlogits, const act_t *logits, const int *targets, int M, int V,
                        float dscale) {
    if (M <= 0 || V <= 0) return;
    // rows start 16-byte aligned when V % 8 == 0 and the bases are
    bool vec = V % 8 == 0 && aligned16(logits) && aligned16(dlogits);
    LAUNCH(M, XENT_THREADS, cross_entropy_kernel)(losses, (bf16 *)dlogits, (const bf16 *)logits, targets, V,
                                                  dscale, vec);
    cudaCheckLaunch();
}
