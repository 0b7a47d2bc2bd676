// rope.c: rotary position embedding in the rotate-half form of Llama/Qwen2, forward and backward.
// Frequencies and angles are computed in fp32 the way transformers' default rope does:
// inv_freq = 1 / theta^(2i/head_dim) and angle = float(pos) * inv_freq, then cos and sin.
#include <math.h>
#include <stdlib.h>

#include "common/util.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/simd.h"

// every head's pairs of one row by the row's cos and sin (over contiguous columns: vectorises)
CPU_HOT static void rotate_row(float *o, const float *x, const float *cs, const float *sn, int n_heads, int head_dim) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++, x += head_dim, o += head_dim)
        for (int i = 0; i < half; i++) {
            float x1 = x[i], x2 = x[i + half];
            // transformers: x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1)
            o[i] = x1 * cs[i] - x2 * sn[i];
            o[i + half] = x2 * cs[i] + x1 * sn[i];
        }
}

// rotates each pair (x[i], x[i+half]) of every head by angle * sign; sign -1 is the inverse
// (and transposed) rotation that the backward needs. out may alias inp: a pair is read before
// it is written.
static void rope_rotate(float *out, const float *inp, const int *pos, int N, int n_heads,
                        int head_dim, float theta, float sign, int ld_out, int ld_inp) {
    CHECK(head_dim % 2 == 0, "rope needs an even head_dim, got %d", head_dim);
    int half = head_dim / 2;
    CHECK(ld_out >= n_heads * head_dim && ld_inp >= n_heads * head_dim, "rope: row strides %d, %d below the row's %d",
          ld_out, ld_inp, n_heads * head_dim);
    float *inv_freq = xmalloc((size_t)(half > 0 ? half : 1) * sizeof(float));
    // torch: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), every step in float32
    for (int i = 0; i < half; i++) inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
#pragma omp parallel
    {
        // this row's cos and sin, then every head's pairs
        float *cs = xmalloc((size_t)(half > 0 ? 2 * half : 1) * sizeof(float)), *sn = cs + half;
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            float p = (float)pos[n];
            for (int i = 0; i < half; i++) {
                float angle = p * inv_freq[i];
                cs[i] = cosf(angle);
                sn[i] = sign * sinf(angle);
            }
            rotate_row(out + (size_t)n * ld_out, inp + (size_t)n * ld_inp, cs, sn, n_heads, head_dim);
        }
        free(cs);
    }
    free(inv_freq);
}

void cpu_rope_forward(act_t *out, const act_t *inp, const int *pos, int N, int n_heads,
                      int head_dim, float theta, int ld_out, int ld_inp) {
    // out, inp (N, n_heads * head_dim), rows ld_out, ld_inp apart
    rope_rotate(out, inp, pos, N, n_heads, head_dim, theta, 1.0f, ld_out, ld_inp);
}

void cpu_rope_backward(act_t *dinp, const act_t *dout, const int *pos, int N, int n_heads,
                       int head_dim, float theta, int ld_out, int ld_inp) {
    // the rotation is orthogonal: its transpose is the rotation by -angle
    rope_rotate(dinp, dout, pos, N, n_heads, head_dim, theta, -1.0f, ld_inp, ld_out);
}
