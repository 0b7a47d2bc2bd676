// pointwise.cu: elementwise ops on bf16 in fp32 math: GELU (erf and tanh forms), CLIP's quick_gelu, SwiGLU,
// addition, and the fp32 -> bf16 cast of trainable weights. Each thread handles 8 consecutive
// elements with one 16-byte load/store per tensor when every pointer is 16-byte aligned (and
// element by element at the tail or otherwise). An element is read before it is written by the
// same thread, so outputs may alias inputs (no __restrict__ here on purpose).
#include <math.h>

#include "kernels/cuda/common.cuh"

#define SQRT1_2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f
#define QUICK_GELU_K 1.702f
#define GELU_TANH_K 0.79788456080286535588f  // sqrt(2 / pi)
#define GELU_TANH_C 0.044715f

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

// an op on up to three inputs giving up to two outputs; NULL outputs are skipped
enum { OP_GELU_F, OP_GELU_B, OP_QGELU_F, OP_QGELU_B, OP_TGELU_F, OP_TGELU_B, OP_SWIGLU_F, OP_SWIGLU_B, OP_ADD };

template <int OP>
__device__ __forceinline__ void apply(float a, float b, float c, float *o0, float *o1) {
    if (OP == OP_GELU_F) {  // a = x
        *o0 = a * 0.5f * (1.0f + erff(a * SQRT1_2));
    } else if (OP == OP_GELU_B) {  // a = dout, b = x: Phi(x) + x phi(x)
        float cdf = 0.5f * (1.0f + erff(b * SQRT1_2));
        float pdf = expf(-0.5f * b * b) * INV_SQRT_2PI;
        *o0 = a * (cdf + b * pdf);
    } else if (OP == OP_QGELU_F) {
        *o0 = a * sigmoidf_(QUICK_GELU_K * a);
    } else if (OP == OP_QGELU_B) {  // a = dout, b = x
        float s = sigmoidf_(QUICK_GELU_K * b);
        *o0 = a * (s + b * QUICK_GELU_K * s * (1.0f - s));
    } else if (OP == OP_TGELU_F) {
        *o0 = 0.5f * a * (1.0f + tanhf(GELU_TANH_K * (a + GELU_TANH_C * a * a * a)));
    } else if (OP == OP_TGELU_B) {  // a = dout, b = x
        float x2 = b * b, t = tanhf(GELU_TANH_K * (b + GELU_TANH_C * x2 * b));
        *o0 = a * (0.5f * (1.0f + t) + 0.5f * b * (1.0f - t * t) * GELU_TANH_K * (1.0f + 3.0f * GELU_TANH_C * x2));
    } else if (OP == OP_SWIGLU_F) {  // a = gate, b = up
        *o0 = a / (1.0f + expf(-a)) * b;
    } else if (OP == OP_SWIGLU_B) {  // a = dout, b = gate, c = up
        float s = sigmoidf_(b);
        *o0 = a * c * (s * (1.0f + b * (1.0f - s)));
        *o1 = a * (b * s);
    } else {  // OP_ADD
        *o0 = a + b;
    }
}

template <int OP>
__global__ void pointwise_kernel(bf16 *out0, bf16 *out1, const bf16 *in0, const bf16 *in1, const bf16 *in2,
                                 size_t n, bool vec) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    bool v8 = vec && i + 8 <= n;
    float a[8], b[8], c[8], o0[8], o1[8];
    load8(a, in0, i, n, v8);
    if (in1) load8(b, in1, i, n, v8);
    else for (int k = 0; k < 8; k++) b[k] = 0.0f;
    if (in2) load8(c, in2, i, n, v8);
    else for (int k = 0; k < 8; k++) c[k] = 0.0f;
    for (int k = 0; k < 8; k++) {
        o1[k] = 0.0f;
        apply<OP>(a[k], b[k], c[k], &o0[k], &o1[k]);
    }
    if (out0) store8(out0, i, n, v8, o0);
    if (out1) store8(out1, i, n, v8, o1);
}

template <int OP>
static void pointwise(act_t *out0, act_t *out1, const act_t *in0, const act_t *in1, const act_t *in2, size_t n) {
    if (n == 0 || (!out0 && !out1)) return;
    bool vec = aligned16(out0) && aligned16(out1) && aligned16(in0) && aligned16(in1) && aligned16(in2);
    size_t threads = (n + 7) / 8;
    LAUNCH(ceil_div_u(threads, 256), 256, pointwise_kernel<OP>)((bf16 *)out0, (bf16 *)out1, (const bf16 *)in0,
                                                               (const bf16 *)in1, (const bf16 *)in2, n, vec);
    cudaCheckLaunch();
}

void cuda_gelu_forward(act_t *out, const act_t *inp, size_t n) { pointwise<OP_GELU_F>(out, NULL, inp, NULL, NULL, n); }
void cuda_gelu_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n) {
    pointwise<OP_GELU_B>(dinp, NULL, dout, inp, NULL, n);
}
void cuda_quick_gelu_forward(act_t *out, const act_t *inp, size_t n) {
    pointwise<OP_QGELU_F>(out, NULL, inp, NULL, NULL, n);
}
void cuda_quick_gelu_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n) {
    pointwise<OP_QGELU_B>(dinp, NULL, dout, inp, NULL, n);
}
void cuda_gelu_tanh_forward(act_t *out, const act_t *inp, size_t n) {
    pointwise<OP_TGELU_F>(out, NULL, inp, NULL, NULL, n);
}
void cuda_gelu_tanh_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n) {
    pointwise<OP_TGELU_B>(dinp, NULL, dout, inp, NULL, n);
}

// SwiGLU over rows whose gate and up lie ld apart (the halves of the fused gate/up projection's
// rows): each thread 8 consecutive columns of one row, 16-byte loads when W, ld and the pointers
// allow. Forward: out (N, W) dense; backward: dout (N, W) dense, dgate / dup rows ld apart.
template <int OP>
__global__ void swiglu_rows_kernel(bf16 *out0, bf16 *out1, const bf16 *dout, const bf16 *gate, const bf16 *up, int N,
                                   int W, int ld, bool vec) {
    size_t per_row = ((size_t)W + 7) / 8, t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (size_t)N * per_row) return;
    size_t r = t / per_row, c = (t % per_row) * 8, o = r * ld, d = r * W;
    bool v8 = vec && c + 8 <= (size_t)W;
    float a[8], b[8], cc[8], o0[8], o1[8];
    if (OP == OP_SWIGLU_F) {
        load8(a, gate + o, c, W, v8);
        load8(b, up + o, c, W, v8);
        for (int k = 0; k < 8; k++) cc[k] = 0.0f;
    } else {
        load8(a, dout + d, c, W, v8);
        load8(b, gate + o, c, W, v8);
        load8(cc, up + o, c, W, v8);
    }
    for (int k = 0; k < 8; k++) {
        o1[k] = 0.0f;
        apply<OP>(a[k], b[k], cc[k], &o0[k], &o1[k]);
    }
    if (OP == OP_SWIGLU_F) {
        store8(out0 + d, c, W, v8, o0);
    } else {
        if (out0) store8(out0 + o, c, W, v8, o0);
        if (out1) store8(out1 + o, c, W, v8, o1);
    }
}

template <int OP>
static void swiglu_rows(act_t *out0, act_t *out1, const act_t *dout, const act_t *gate, const act_t *up, int N, int W,
                        int ld) {
    if (N <= 0 || W <= 0 || (!out0 && !out1)) return;
    CHECK(ld >= W, "swiglu: row stride %d below the row's %d", ld, W);
    bool vec = W % 8 == 0 && ld % 8 == 0 && aligned16(out0) && aligned16(out1) && aligned16(dout) && aligned16(gate) &&
               aligned16(up);
    size_t threads = (size_t)N * (((size_t)W + 7) / 8);
    LAUNCH(ceil_div_u(threads, 256), 256, swiglu_rows_kernel<OP>)((bf16 *)out0, (bf16 *)out1, (const bf16 *)dout,
                                                                 (const bf16 *)gate, (const bf16 *)up, N, W, ld, vec);
    cudaCheckLaunch();
}

void cuda_swiglu_forward(act_t *out, const act_t *gate, const act_t *up, int N, int W, int ld) {
    if (ld == W) pointwise<OP_SWIGLU_F>(out, NULL, gate, up, NULL, (size_t)N * W);  // dense: one flat pass
    else swiglu_rows<OP_SWIGLU_F>(out, NULL, NULL, gate, up, N, W, ld);
}
void cuda_swiglu_backward(act_t *dgate, act_t *dup, const act_t *dout, const act_t *gate, const act_t *up, int N,
                          int W, int ld) {
    if (ld == W) pointwise<OP_SWIGLU_B>(dgate, dup, dout, gate, up, (size_t)N * W);
    else swiglu_rows<OP_SWIGLU_B>(dgate, dup, dout, gate, up, N, W, ld);
}
void cuda_add(act_t *out, const act_t *a, const act_t *b, size_t n) { pointwise<OP_ADD>(out, NULL, a, b, NULL, n); }

__global__ void dropout_kernel(bf16 *out, const bf16 *inp, size_t n, float p, float scale, uint64_t seed) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f2bf(dropout_uniform(seed, i) >= p ? bf2f(inp[i]) * scale : 0.0f);
}

void cuda_dropout(act_t *out, const act_t *inp, size_t n, float p, uint64_t seed) {
    if (n == 0) return;
    LAUNCH(ceil_div_u(n, 256), 256, dropout_kernel)((bf16 *)out, (const bf16 *)inp, n, p, 1.0f / (1.0f - p), seed);
    cudaCheckLaunch();
}

__global__ void cast_to_act_kernel(bf16 *dst, const float *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = f2bf(src[i]);
}

void cuda_cast_to_act(act_t *dst, const float *src, size_t n) {
    if (n == 0) return;
    LAUNCH(ceil_div_u(n, 256), 256, cast_to_act_kernel)((bf16 *)dst, src, n);
    cudaCheckLaunch();
}
