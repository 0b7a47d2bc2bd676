// pointwise.c: elementwise activations (GELU erf and tanh forms, CLIP's quick_gelu, SwiGLU) and
// addition.
// Each element is read before it is written, so an output may alias an input of the same op.
// The sigmoids, tanh and the erf GELU's normal cdf run on exp_vf8 (simd.h) over 8 elements at a time,
// the tail of a span through a zero-padded block: every element gets the same arithmetic wherever
// it falls.
#include <math.h>
#include <omp.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/simd.h"

// this thread's share [*i0, *i1) of n elements, in blocks of 16 (a cache line)
static void thread_span(size_t n, size_t *i0, size_t *i1) {
    size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads(), blocks = (n + 15) / 16;
    *i0 = blocks * t / nt * 16;
    *i1 = blocks * (t + 1) / nt * 16;
    if (*i1 > n) *i1 = n;
    if (*i0 > *i1) *i0 = *i1;
}

#define SQRT1_2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f
#define QUICK_GELU_K 1.702f
#define GELU_TANH_K 0.79788456080286535588f  // sqrt(2 / pi)
#define GELU_TANH_C 0.044715f

__attribute__((always_inline)) static inline vf8 sigmoid8(vf8 x) { return 1.0f / (1.0f + exp_vf8(-x)); }

// CLIP's quick_gelu: x * sigmoid(1.702 x)
__attribute__((always_inline)) static inline vf8 quick_gelu8(vf8 x) { return x * sigmoid8(QUICK_GELU_K * x); }
__attribute__((always_inline)) static inline vf8 quick_gelu_grad8(vf8 x, vf8 d) {
    vf8 s = sigmoid8(QUICK_GELU_K * x);
    return d * (s + x * QUICK_GELU_K * s * (1.0f - s));
}

// the normal cdf Phi(x) = erfc(-x / sqrt 2) / 2 by Numerical Recipes' erfcc (erfc(z) = t exp(-z^2 +
// P(t)), t = 1 / (1 + z/2), a Chebyshev fit with fractional error below 1.2e-7 for every z >= 0):
// relative to Phi itself for x < 0 (where GELU's 1 + erf(x) is small), 1 - erfc/2 for x >= 0.
// Not libm's erff, which left the GELU loops scalar; the same arithmetic for every element.
__attribute__((always_inline)) static inline vf8 normal_cdf8(vf8 x) {
    vf8 z = x * -SQRT1_2;
    z = vf8_select(z < 0.0f, -z, z);  // |x| / sqrt 2
    vf8 t = 1.0f / (1.0f + 0.5f * z);
    vf8 p = 0.17087277f * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    vf8 half_erfc = 0.5f * t * exp_vf8(p - z * z);
    return vf8_select(x < 0.0f, half_erfc, 1.0f - half_erfc);
}

// torch.nn.GELU(): x * 0.5 * (1 + erf(x / sqrt(2))) = x Phi(x)
__attribute__((always_inline)) static inline vf8 gelu8(vf8 x) { return x * normal_cdf8(x); }
// d/dx = Phi(x) + x phi(x), with phi the normal density
__attribute__((always_inline)) static inline vf8 gelu_grad8(vf8 x, vf8 d) { return d * (normal_cdf8(x) + x * (exp_vf8(-0.5f * x * x) * INV_SQRT_2PI)); }

// tanh(u) = 1 - 2 / (1 + e^(2u)) (exp_vf8 clamps: +-1 at the ends), to about an ulp of 1: what
// GELU's 1 + tanh and 1 - tanh^2 need
__attribute__((always_inline)) static inline vf8 tanh8(vf8 u) { return 1.0f - 2.0f / (1.0f + exp_vf8(2.0f * u)); }

// torch's gelu(approximate="tanh"): 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi)
__attribute__((always_inline)) static inline vf8 gelu_tanh8(vf8 x) { return 0.5f * x * (1.0f + tanh8(GELU_TANH_K * (x + GELU_TANH_C * x * x * x))); }

// d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2), t = tanh(k (x + c x^3)), as torch writes it
// (1 - t^2 as 4 e / (1 + e)^2, e = e^(2u): no cancellation where t is near +-1)
__attribute__((always_inline)) static inline vf8 gelu_tanh_grad8(vf8 x, vf8 d) {
    vf8 x2 = x * x;
    vf8 e = exp_vf8(2.0f * GELU_TANH_K * (x + GELU_TANH_C * x2 * x)), r = 1.0f / (1.0f + e);
    vf8 t = 1.0f - 2.0f * r, sech2 = (4.0f * r) * (e * r);
    vf8 dt = 0.5f * x * sech2 * GELU_TANH_K * (1.0f + 3.0f * GELU_TANH_C * x2);
    return d * (0.5f * (1.0f + t) + dt);
}

// the elementwise activations of a vision tower or connector, one span walker and one parallel
// region for all of them (the kind is the same for every element: a branch that always goes one way)
typedef enum { ACT_GELU, ACT_GELU_TANH, ACT_QUICK_GELU } Act;

__attribute__((always_inline)) static inline vf8 act8(Act a, vf8 x) {
    if (a == ACT_GELU) return gelu8(x);
    if (a == ACT_GELU_TANH) return gelu_tanh8(x);
    return quick_gelu8(x);
}

__attribute__((always_inline)) static inline vf8 act_grad8(Act a, vf8 x, vf8 d) {
    if (a == ACT_GELU) return gelu_grad8(x, d);
    if (a == ACT_GELU_TANH) return gelu_tanh_grad8(x, d);
    return quick_gelu_grad8(x, d);
}

// out = act(inp) (dout NULL) or dinp = act'(inp) dout, elements i0 .. i1-1
CPU_HOT_EXPLICIT static void act_span(Act a, float *out, const float *dout, const float *inp, size_t i0, size_t i1) {
    size_t i = i0;
    if (!dout) {
        for (; i + 8 <= i1; i += 8) *(vf8 *)(out + i) = act8(a, *(const vf8 *)(inp + i));
        if (i < i1) store8(out, i, i1 - i, act8(a, load8(inp, i, i1 - i)));
    } else {
        for (; i + 8 <= i1; i += 8) *(vf8 *)(out + i) = act_grad8(a, *(const vf8 *)(inp + i), *(const vf8 *)(dout + i));
        if (i < i1) store8(out, i, i1 - i, act_grad8(a, load8(inp, i, i1 - i), load8(dout, i, i1 - i)));
    }
}

static void act_run(Act a, float *out, const float *dout, const float *inp, size_t n) {
#pragma omp parallel
    {
        size_t i0, i1;
        thread_span(n, &i0, &i1);
        act_span(a, out, dout, inp, i0, i1);
    }
}

void cpu_gelu_forward(act_t *out, const act_t *inp, size_t n) { act_run(ACT_GELU, out, NULL, inp, n); }
void cpu_gelu_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n) {
    act_run(ACT_GELU, dinp, dout, inp, n);
}
void cpu_gelu_tanh_forward(act_t *out, const act_t *inp, size_t n) { act_run(ACT_GELU_TANH, out, NULL, inp, n); }
void cpu_gelu_tanh_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n) {
    act_run(ACT_GELU_TANH, dinp, dout, inp, n);
}
void cpu_quick_gelu_forward(act_t *out, const act_t *inp, size_t n) { act_run(ACT_QUICK_GELU, out, NULL, inp, n); }
void cpu_quick_gelu_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n) {
    act_run(ACT_QUICK_GELU, dinp, dout, inp, n);
}

// out = silu(gate) * up, silu(x) = x / (1 + exp(-x)) as torch computes it
__attribute__((always_inline)) static inline vf8 swiglu8(vf8 g, vf8 u) { return g / (1.0f + exp_vf8(-g)) * u; }

CPU_HOT_EXPLICIT static void swiglu_span(float *out, const float *gate, const float *up, size_t i0, size_t i1) {
    size_t i = i0;
    for (; i + 8 <= i1; i += 8) *(vf8 *)(out + i) = swiglu8(*(const vf8 *)(gate + i), *(const vf8 *)(up + i));
    if (i < i1) store8(out, i, i1 - i, swiglu8(load8(gate, i, i1 - i), load8(up, i, i1 - i)));
}

// this thread's rows of N: consecutive, as even as can be
static void thread_rows(int N, int *r0, int *r1) {
    long t = omp_get_thread_num(), nt = omp_get_num_threads();
    *r0 = (int)(N * t / nt);
    *r1 = (int)(N * (t + 1) / nt);
}

void cpu_swiglu_forward(act_t *out_, const act_t *gate_, const act_t *up_, int N, int W, int ld) {
    float *out = out_;                      // (N, W)
    const float *gate = gate_, *up = up_;   // (N, W), rows ld apart
    if (N <= 0 || W <= 0) return;
    if (ld == W) {  // dense: one span of N*W elements
        size_t n = (size_t)N * W;
#pragma omp parallel
        {
            size_t i0, i1;
            thread_span(n, &i0, &i1);
            swiglu_span(out, gate, up, i0, i1);
        }
        return;
    }
#pragma omp parallel
    {
        int r0, r1;
        thread_rows(N, &r0, &r1);
        for (int r = r0; r < r1; r++)
            swiglu_span(out + (size_t)r * W, gate + (size_t)r * ld, up + (size_t)r * ld, 0, (size_t)W);
    }
}

// dgate = dout * up * silu'(gate) with silu'(x) = s (1 + x (1 - s)); dup = dout * silu(gate)
static inline void swiglu_grad8(vf8 g, vf8 u, vf8 d, vf8 *dg, vf8 *du) {
    vf8 s = sigmoid8(g);
    *dg = d * u * (s * (1.0f + g * (1.0f - s)));
    *du = d * (g * s);
}

CPU_HOT_EXPLICIT static void swiglu_grad_span(float *dgate, float *dup, const float *dout, const float *gate,
                                              const float *up, size_t i0, size_t i1) {
    size_t i = i0;
    vf8 dg, du;
    for (; i + 8 <= i1; i += 8) {
        swiglu_grad8(*(const vf8 *)(gate + i), *(const vf8 *)(up + i), *(const vf8 *)(dout + i), &dg, &du);
        if (dgate) *(vf8 *)(dgate + i) = dg;
        if (dup) *(vf8 *)(dup + i) = du;
    }
    if (i < i1) {
        size_t n = i1 - i;
        swiglu_grad8(load8(gate, i, n), load8(up, i, n), load8(dout, i, n), &dg, &du);
        if (dgate) store8(dgate, i, n, dg);
        if (dup) store8(dup, i, n, du);
    }
}

void cpu_swiglu_backward(act_t *dgate_, act_t *dup_, const act_t *dout_, const act_t *gate_, const act_t *up_, int N,
                         int W, int ld) {
    float *dgate = dgate_, *dup = dup_;     // (N, W), rows ld apart, or NULL
    const float *dout = dout_;              // (N, W)
    const float *gate = gate_, *up = up_;   // (N, W), rows ld apart
    if (N <= 0 || W <= 0) return;
    if (ld == W) {
        size_t n = (size_t)N * W;
#pragma omp parallel
        {
            size_t i0, i1;
            thread_span(n, &i0, &i1);
            swiglu_grad_span(dgate, dup, dout, gate, up, i0, i1);
        }
        return;
    }
#pragma omp parallel
    {
        int r0, r1;
        thread_rows(N, &r0, &r1);
        for (int r = r0; r < r1; r++) {
            size_t o = (size_t)r * ld;
            swiglu_grad_span(dgate ? dgate + o : NULL, dup ? dup + o : NULL, dout + (size_t)r * W, gate + o, up + o, 0,
                             (size_t)W);
        }
    }
}

void cpu_add(act_t *out_, const act_t *a_, const act_t *b_, size_t n) {
    float *out = out_;
    const float *a = a_, *b = b_;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void cpu_dropout(act_t *out_, const act_t *inp_, size_t n, float p, uint64_t seed) {
    float *out = out_;
    const float *inp = inp_;
    float scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = dropout_uniform(seed, i) >= p ? inp[i] * scale : 0.0f;
}
