// simd.h: what the CPU backend's hot loops share: CPU_HOT (one binary compiled for several
// instruction sets, the best picked at load time), a 16-float vector type, and an expf that
// vectorises.
//
// CPU_HOT on x86-64 with GCC makes target clones of a function for x86-64-v4 (AVX-512), v3 (AVX2 +
// FMA) and the baseline (SSE2); the loader's ifunc resolver picks the one the CPU and the OS
// support. On aarch64 NEON is the baseline, so one build serves. In those functions a * b + c may
// become one fused multiply-add (the rest of svlm builds with -ffp-contract=off): the results
// then differ in the last bits between CPUs with and without FMA, but never between runs or
// thread counts on one machine, which is what resume relies on.
#pragma once
// GCC warns that passing a 64-byte vector changes the ABI without AVX-512: the vf16 helpers
// below are static inline in the clones that use them, so no call crosses an ABI boundary
#pragma GCC diagnostic ignored "-Wpsabi"
#include <stdint.h>
#include <string.h>

// CPU_HOT_EXPLICIT: the same clones with the auto-vectoriser off, for code written on vf16: its
// scalar loops then stay scalar in every copy, so an element gets the same arithmetic whichever
// block of the loop nest computes it (tile_gemm's rows must not depend on their neighbours).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define CPU_CLONES target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"),
#else
#define CPU_CLONES
#endif
#if defined(__GNUC__) && !defined(__clang__)
#define CPU_HOT __attribute__((CPU_CLONES optimize("fp-contract=fast", "vect-cost-model=dynamic")))
#define CPU_HOT_EXPLICIT __attribute__((CPU_CLONES optimize("fp-contract=fast", "no-tree-vectorize")))
#else
#define CPU_HOT
#define CPU_HOT_EXPLICIT
#endif

// 16 floats, one AVX-512 register (two AVX2, four SSE / NEON); aligned(4): loads and stores
// through it may be unaligned
typedef float vf16 __attribute__((vector_size(64), aligned(4), may_alias));

// e^x to about 1 ulp, branch-free so that loops over it vectorise: x = n ln2 + r with |r| <= ln2/2,
// e^r by Cephes' degree-6 polynomial, 2^n put into the exponent bits. x below -87.3 (and -inf)
// gives exactly 0, which masks; x above 88 is clamped (attention and the activations never
// get there: their arguments are <= 0 or bounded by the caller).
static inline float exp_vec(float x) {
    float xc = x < -87.33654f ? -87.33654f : x;
    xc = xc > 88.0f ? 88.0f : xc;
    float n = xc * 1.44269504088896341f + 12582912.0f;  // + 1.5 * 2^23: rounds to an integer
    n = n - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    float y = p * two_n;
    return x < -87.33654f ? 0.0f : y;
}

// exp_vec on 16 lanes, the same operations lane by lane, written on vector types: GCC's
// auto-vectoriser leaves loops over exp_vec scalar whenever it cannot prove the output apart from
// the inputs (an activation computed in place), so the activations use this instead
typedef int32_t vi16 __attribute__((vector_size(64), aligned(4), may_alias));

static inline vf16 vf16_select(vi16 mask, vf16 a, vf16 b) { return (vf16)((mask & (vi16)a) | (~mask & (vi16)b)); }

__attribute__((always_inline)) static inline vf16 exp_vf16(vf16 x) {
    const vf16 lo = (vf16){0} - 87.33654f, hi = (vf16){0} + 88.0f;
    vi16 under = x < lo;
    vf16 xc = vf16_select(under, lo, x);
    xc = vf16_select(xc > hi, hi, xc);
    vf16 n = xc * 1.44269504088896341f + 12582912.0f;
    n = n - 12582912.0f;
    vf16 r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf16 p = (vf16){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    vi16 bits = (__builtin_convertvector(n, vi16) + 127) << 23;
    vf16 y = p * (vf16)bits;
    return vf16_select(under, (vf16){0}, y);
}

// the last partial block of a span (n < 16 floats at p + i), zero-padded, and back; through
// copies, so an output may alias an input
static inline vf16 load16(const float *p, size_t i, size_t n) {
    vf16 v = {0};
    memcpy(&v, p + i, n * sizeof(float));
    return v;
}

static inline void store16(float *p, size_t i, size_t n, vf16 v) { memcpy(p + i, &v, n * sizeof(float)); }
