// rope.cu: rotary position embedding, rotate-half form, forward and backward (rotation by -angle).
// inv_freq = 1 / theta^(2i/head_dim) is computed on the host with the very expression of the CPU
// backend (fp32 powf, as transformers does) and passed by value; each thread rotates one pair
// (x[i], x[i+half]) of one head of one row: angle = float(pos) * inv_freq[i], then cosf/sinf
// (full-precision CUDA versions: within 2 ulp of libm). Each pair is read before it is written,
// so out may alias inp.
#include <math.h>

#include "kernels/cuda/common.cuh"

#define ROPE_MAX_HALF 128  // head_dim up to 256

typedef struct {
    float f[ROPE_MAX_HALF];
} InvFreq;

__global__ void rope_kernel(bf16 *out, const bf16 *inp, const int *pos, int N, int n_heads, int head_dim,
                            InvFreq inv, float sign) {
    int half = head_dim / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t total = (size_t)N * n_heads * half;
    if (idx >= total) return;
    int i = (int)(idx % half);
    size_t nh = idx / half;  // row * n_heads + head
    int n = (int)(nh / n_heads);
    float angle = (float)pos[n] * inv.f[i];
    float c = cosf(angle), s = sign * sinf(angle);
    size_t o = nh * head_dim + i;
    float x1 = bf2f(inp[o]), x2 = bf2f(inp[o + half]);
    out[o] = f2bf(x1 * c - x2 * s);
    out[o + half] = f2bf(x2 * c + x1 * s);
}

static void rope(act_t *out, const act_t *inp, const int *pos, int N, int n_heads, int head_dim, float theta,
                 float sign) {
    CHECK(head_dim % 2 == 0, "rope needs an even head_dim, got %d", head_dim);
    CHECK(head_dim / 2 <= ROPE_MAX_HALF, "rope on CUDA supports head_dim up to %d, got %d", 2 * ROPE_MAX_HALF,
          head_dim);
    int half = head_dim / 2;
    size_t total = (size_t)N * n_heads * half;
    if (total == 0) return;
    InvFreq inv;
    for (int i = 0; i < ROPE_MAX_HALF; i++) inv.f[i] = 0.0f;
    // torch: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), every step in float32
    for (int i = 0; i < half; i++) inv.f[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
    LAUNCH(ceil_div_u(total, 256), 256, rope_kernel)((bf16 *)out, (const bf16 *)inp, pos, N, n_heads, head_dim,
                                                     inv, sign);
    cudaCheckLaunch();
}

void cuda_rope_forward(act_t *out, const act_t *inp, const int *pos, int N, int n_heads, int head_dim,
                       float theta) {
    rope(out, inp, pos, N, n_heads, head_dim, theta, 1.0f);
}

void cuda_rope_backward(act_t *dinp, const act_t *dout, const int *pos, int N, int n_heads, int head_dim,
                        float theta) {
    rope(dinp, dout, pos, N, n_heads, head_dim, theta, -1.0f);
}
