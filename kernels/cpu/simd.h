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
// GCC warns that passing a 32-byte vector changes the ABI without AVX: every helper that takes or
// returns a vector is always_inline (here and in the files that use them), so no such call
// exists, least of all one from a v3 clone into a helper compiled for the baseline (which passes
// vectors differently: wrong values, silently; a GELU gradient did that once)
#pragma GCC diagnostic ignored "-Wpsabi"
#include <stdint.h>
#include <string.h>

// CPU_HOT_EXPLICIT: the same clones with the auto-vectoriser off, for code written on vector types: its
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

// e^x on 8 lanes to about 1 ulp, branch-free: x = n ln2 + r with |r| <= ln2/2, e^r by Cephes'
// degree-6 polynomial, 2^n put into the exponent bits. x below -87.3 (and -inf) gives exactly 0,
// which masks; x above 88 is clamped (attention and the activations never get there: their
// arguments are <= 0 or bounded by the caller). Written on vector types because GCC's
// auto-vectoriser left loops over a scalar exp scalar (whenever it could not prove the output
// apart from the inputs, and in its AVX2 clones); 8 lanes, one AVX2 register, because it lowers
// 16-float vectors of integer masks and conversions through the stack on AVX2 (as tile.c says
// of its kernel).
typedef float vf8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t vi8 __attribute__((vector_size(32), aligned(4), may_alias));

// 4 floats and 4 doubles: row statistics summed in double, 4 lanes at a time (an AVX2 register)
typedef float vf4 __attribute__((vector_size(16), aligned(4), may_alias));
typedef double vd4 __attribute__((vector_size(32), aligned(8), may_alias));

// floats p[0..3] widened
__attribute__((always_inline)) static inline vd4 vd4_load(const float *p) { return __builtin_convertvector(*(const vf4 *)p, vd4); }
// the lanes summed in a fixed order
__attribute__((always_inline)) static inline double vd4_total(vd4 a) { return (a[0] + a[1]) + (a[2] + a[3]); }

__attribute__((always_inline)) static inline vf8 vf8_select(vi8 mask, vf8 a, vf8 b) { return (vf8)((mask & (vi8)a) | (~mask & (vi8)b)); }

__attribute__((always_inline)) static inline vf8 exp_vf8(vf8 x) {
    const vf8 lo = (vf8){0} - 87.33654f, hi = (vf8){0} + 88.0f;
    vi8 under = x < lo;
    vf8 xc = vf8_select(under, lo, x);
    xc = vf8_select(xc > hi, hi, xc);
    vf8 n = xc * 1.44269504088896341f + 12582912.0f;  // + 1.5 * 2^23: rounds to an integer
    n = n - 12582912.0f;
    vf8 r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf8 p = (vf8){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    vi8 bits = (__builtin_convertvector(n, vi8) + 127) << 23;
    vf8 y = p * (vf8)bits;
    return vf8_select(under, (vf8){0}, y);
}

// one value: lane 0 of exp_vf8
__attribute__((always_inline)) static inline float exp_vec(float x) { return exp_vf8((vf8){0} + x)[0]; }

// the last partial block of a span (n < 8 floats at p + i), zero-padded, and back; through
// copies, so an output may alias an input
__attribute__((always_inline)) static inline vf8 load8(const float *p, size_t i, size_t n) {
    vf8 v = {0};
    memcpy(&v, p + i, n * sizeof(float));
    return v;
}

__attribute__((always_inline)) static inline void store8(float *p, size_t i, size_t n, vf8 v) { memcpy(p + i, &v, n * sizeof(float)); }
