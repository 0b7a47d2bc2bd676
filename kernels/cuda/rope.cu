// rope.cu: rotary position embedding, rotate-half form, forward and backward (rotation by -angle).
// inv_freq = 1 / theta^(2i/head_dim) is computed on the host with the very expression of the CPU
// backend (fp32 powf, as transformers does) and passed by value; each thread rotates one pair
// (x[i], x[i+half]) of one head of one row: angle = float(pos) * inv_freq[i], then cosf/sinf
// (full-precision CUDA versions: within 2 ulp of libm). Each pair is read before it is written,
// so out may alias inp. Rows of out and inp lie ld_out and ld_inp elements apart (q and k read
// out of the fused q/k/v rows, their gradients written into them).
#include <math.h>

#include "kernels/cuda/common.cuh"

#define ROPE_MAX_HALF 128  // head_dim up to 256

typedef struct {
    float f[ROPE_MAX_HALF];
} InvFreq;

__global__ void rope_kernel(bf16 *out, const bf16 *inp, const int *pos, int N, int n_heads, int head_dim,
                            InvFreq inv, float sign, int ld_out, int ld_inp) {
    int half = head_dim / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t total = (size_t)N * n_heads * half;
    if (idx >= total) return;
    int i = (int)(idx % half);
    size_t nh = idx / half;  // row * n_heads + head
    int n = (int)(nh / n_heads);
    float angle = (float)pos[n] * inv.f[i];
    float c = cosf(angle), s = sign * sinf(angle);
    size_t col = (nh - (size_t)n * n_heads) * head_dim + i;
    size_t oi = (size_t)n * ld_inp + col, oo = (size_t)n * ld_out + col;
    float x1 = bf2f(inp[oi]), x2 = bf2f(inp[oi + half]);
    out[oo] = f2bf(x1 * c - x2 * s);
    out[oo + half] = f2bf(x2 * c + x1 * s);
}

static void rope(act_t *out, const act_t *inp, const int *pos, int N, int n_heads, int head_dim, float theta,
                 float sign, int ld_out, int ld_inp) {
    CHECK(head_dim % 2 == 0, "rope needs an even head_dim, got %d", head_dim);
    CHECK(head_dim / 2 <= ROPE_MAX_HALF, "rope on CUDA supports head_dim up to %d, got %d", 2 * ROPE_MAX_HALF,
          head_dim);
    CHECK(ld_out >= n_heads * head_dim && ld_inp >= n_heads * head_dim, "rope: row strides %d, %d below the row's %d",
          ld_out, ld_inp, n_heads * head_dim);
    int half = head_dim / 2;
    size_t total = (size_t)N * n_heads * half;
    if (total == 0) return;
    InvFreq inv;
    for (int i = 0; i < ROPE_MAX_HALF; i++) inv.f[i] = 0.0f;
    // torch: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), every step in float32
    for (int i = 0; i < half; i++) inv.f[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
    LAUNCH(ceil_div_u(total, 256), 256, rope_kernel)((bf16 *)out, (const bf16 *)inp, pos, N, n_heads, head_dim,
                                                     inv, sign, ld_out, ld_inp);
    cudaCheckLaunch();
}

void cuda_rope_forward(act_t *out, const act_t *inp, const int *pos, int N, int n_heads, int head_dim,
                       float theta, int ld_out, int ld_inp) {
    rope(out, inp, pos, N, n_heads, head_dim, theta, 1.0f, ld_out, ld_inp);
}

// ld_out: rows of dout, ld_inp: rows of dinp (kernels.h)
void cuda_rope_backward(act_t *dinp, const act_t *dout, const int *pos, int N, int n_heads, int head_dim,
                        float theta, int ld_out, int ld_inp) {
    rope(dinp, dout, pos, N, n_heads, head_dim, theta, -1.0f, ld_inp, ld_out);
}
