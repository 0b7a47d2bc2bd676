// common.cuh: what every file of the CUDA backend shares: the CUDA headers (or, when built with
// -DSVLM_CUDA_EMU, the CPU emulator of tests/gpu/emu that runs these same kernels on the CPU),
// error checks, the backend's stream, bf16 <-> fp32 helpers, warp and block reductions, and the
// declarations of the ops each .cu file defines for the table in cuda_backend.cu.
//
// Conventions of the backend:
// - act_t is bf16 (type bf16 here); float * arguments are fp32; int arrays are int32.
// - Every op is enqueued on one stream (cuda_stream()); nothing synchronises except the memory
//   ops that hand data to the host, sum_squares and synchronize.
// - Determinism: no float atomics anywhere. Every output element is produced by one thread in a
//   fixed order; sums over many rows (parameter gradients) are two-pass: per-chunk partial sums
//   into a scratch buffer, then one thread per output sums the chunks in order. The number of
//   chunks depends only on the shape, so a run repeated gives the same bits.
// - Kernels are launched through LAUNCH(grid, block, kernel)(args...), which the emulator can
//   redefine, and use only static shared memory.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef SVLM_CUDA_EMU
#include "tests/gpu/emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include "common/util.h"
#include "kernels/kernels.h"

#ifdef SVLM_CUDA_EMU
typedef emu_bf16 bf16;
#else
typedef __nv_bfloat16 bf16;
#endif

// ---------------------------------------------------------------- errors

void cuda_check_fail(int err, const char *file, int line, const char *expr);
#define cudaCheck(call)                                                               \
    do {                                                                              \
        cudaError_t err_ = (call);                                                    \
        if (err_ != cudaSuccess) cuda_check_fail((int)err_, __FILE__, __LINE__, #call); \
    } while (0)
// after every launch: a bad configuration shows here, an error inside a kernel at the next sync
#define cudaCheckLaunch() cudaCheck(cudaGetLastError())

// ---------------------------------------------------------------- backend state

cudaStream_t cuda_stream(void);
int cuda_num_sms(void);
// a device scratch buffer of at least `bytes`, one per slot, grown on demand and kept; the
// contents are undefined. Ops use it within one call only (stream order keeps users apart).
enum { SCRATCH_REDUCE, SCRATCH_REDUCE2, SCRATCH_ATTN, SCRATCH_SUMSQ, SCRATCH_SPLITK, SCRATCH_CUDNN, N_SCRATCH };
void *cuda_scratch(int slot, size_t bytes);
// counts a block allocated outside cuda_alloc (cuBLASLt's workspace) in memory()
void cuda_track(void *p, size_t bytes);
// the most each scratch user asks for at these shapes (the memory plan): column sums over `rows`
// rows of `width` columns, the depthwise conv's weight gradient, sum_squares
size_t cuda_colsum_scratch_max(size_t rows, int width);
size_t cuda_dwconv_scratch_max(size_t rows, int width);
size_t cuda_sum_squares_scratch(void);
size_t cuda_splitk_scratch(void);  // matmul.cu's split-K partials, a fixed size
// what cuda_attention_backward asks of scratch slot `slot` at this shape (the memory plan); keep
// it equal to the cuda_scratch calls there
size_t cuda_attention_backward_scratch(int slot, int B, int T, int NH, int NKV, int HD);

#ifdef SVLM_CUDA_EMU
#define LAUNCH(grid, block, ...) emu_launcher(grid, block, __VA_ARGS__)
#else
#define LAUNCH(grid, block, ...) __VA_ARGS__<<<(grid), (block), 0, cuda_stream()>>>
#endif

static inline unsigned ceil_div_u(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

// grad_first.cu: whether the gradient dst[0, n) is written for the first time since grad_begin
// (1: the caller overwrites it; 0: it adds, any unwritten part of it having been zeroed)
int cuda_grad_first(float *dst, size_t n);
void cuda_grad_begin(float *g, size_t n);
void cuda_grad_settle(float *g, size_t n);

// ---------------------------------------------------------------- bf16

#ifdef SVLM_CUDA_EMU
__device__ __forceinline__ float bf2f(bf16 x) { return emu_bf16_to_f32(x); }
__device__ __forceinline__ bf16 f2bf(float x) { return emu_f32_to_bf16(x); }
#else
__device__ __forceinline__ float bf2f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 f2bf(float x) { return __float2bfloat16_rn(x); }
#endif

// two bf16 packed in a 32-bit word (the lower address in the low half), as uint4 loads see them
__device__ __forceinline__ float bf_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }
#ifdef SVLM_CUDA_EMU
__device__ __forceinline__ uint32_t bf_bits(float x) { return emu_f32_to_bf16(x).bits; }
#else
__device__ __forceinline__ uint32_t bf_bits(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
#endif
__device__ __forceinline__ uint32_t bf_pack2(float lo, float hi) { return bf_bits(lo) | (bf_bits(hi) << 16); }

// 8 consecutive bf16 <-> 8 floats; vec selects one 16-byte access (p + i 16-byte aligned and
// i + 8 <= n), otherwise elements are touched one by one up to n
__device__ __forceinline__ void load8(float v[8], const bf16 *p, size_t i, size_t n, bool vec) {
    if (vec) {
        uint4 u = *(const uint4 *)(p + i);
        v[0] = bf_lo(u.x); v[1] = bf_hi(u.x); v[2] = bf_lo(u.y); v[3] = bf_hi(u.y);
        v[4] = bf_lo(u.z); v[5] = bf_hi(u.z); v[6] = bf_lo(u.w); v[7] = bf_hi(u.w);
    } else {
        for (int k = 0; k < 8; k++) v[k] = i + k < n ? bf2f(p[i + k]) : 0.0f;
    }
}
__device__ __forceinline__ void store8(bf16 *p, size_t i, size_t n, bool vec, const float v[8]) {
    if (vec) {
        uint4 u;
        u.x = bf_pack2(v[0], v[1]); u.y = bf_pack2(v[2], v[3]);
        u.z = bf_pack2(v[4], v[5]); u.w = bf_pack2(v[6], v[7]);
        *(uint4 *)(p + i) = u;
    } else {
        for (int k = 0; k < 8; k++)
            if (i + k < n) p[i + k] = f2bf(v[k]);
    }
}

static inline int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// ---------------------------------------------------------------- reductions

#define WARP 32

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// sum over the block (blockDim.x a multiple of 32, at most 1024), the same value returned to every
// thread; every thread must call it. Fixed tree: deterministic.
template <typename T>
__device__ T block_sum(T v) {
    __shared__ T part[32];
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, nwarps = blockDim.x / WARP;
    v = warp_sum(v);
    __syncthreads();  // part may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    T t = lane < nwarps ? part[lane] : (T)0;
    return warp_sum(t);
}
__device__ __forceinline__ float block_max(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, nwarps = blockDim.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? part[lane] : -INFINITY;
    return warp_max(t);
}

// ---------------------------------------------------------------- ops (one .cu file each group)

// matmul.cu
void cuda_matmul_init(void);
void cuda_matmul_forward(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int N, int C,
                         int OC, float alpha, int accumulate);
void cuda_matmul_backward(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                          const act_t *w, int N, int C, int OC, float alpha);
void cuda_matmul_backward_set(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                              const act_t *w, int N, int C, int OC, float alpha);
void cuda_matmul_forward_ld(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int N, int C, int OC,
                            float alpha, int accumulate, int ld_out, int ld_inp);
void cuda_matmul_backward_ld(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                             const act_t *w, int N, int C, int OC, float alpha, int set, int ld_out, int ld_inp);
// norm.cu
void cuda_layernorm_forward(act_t *out, float *mean, float *rstd, const act_t *inp, const act_t *w,
                            const act_t *b, int N, int C, float eps);
void cuda_layernorm_backward(act_t *dinp, float *dw, float *db, const act_t *dout, const act_t *inp,
                             const act_t *w, const float *mean, const float *rstd, int N, int C);
void cuda_rmsnorm_forward(act_t *out, float *rstd, const act_t *inp, const act_t *w, int N, int C, float eps);
void cuda_add_rmsnorm_forward(act_t *sum, act_t *out, float *rstd, const act_t *a, const act_t *b, const act_t *w,
                              int N, int C, float eps);
void cuda_rmsnorm_backward_set(act_t *dinp, float *dw, const act_t *dout, const act_t *inp, const act_t *w,
                               const float *rstd, int N, int C);
void cuda_rmsnorm_backward(act_t *dinp, float *dw, const act_t *dout, const act_t *inp, const act_t *w,
                           const float *rstd, int N, int C);
// rope.cu
void cuda_rope_forward(act_t *out, const act_t *inp, const int *pos, int N, int n_heads, int head_dim,
                       float theta, int ld_out, int ld_inp);
void cuda_rope_backward(act_t *dinp, const act_t *dout, const int *pos, int N, int n_heads, int head_dim,
                        float theta, int ld_out, int ld_inp);
// attention.cu
void cuda_attention_forward(act_t *out, float *lse, const act_t *q, const act_t *k, const act_t *v,
                            const int *seg, int B, int T, int NH, int NKV, int HD, int causal);
void cuda_attention_backward(act_t *dq, act_t *dk, act_t *dv, const act_t *dout, const act_t *q,
                             const act_t *k, const act_t *v, const act_t *out, const float *lse,
                             const int *seg, int B, int T, int NH, int NKV, int HD, int causal);
void cuda_attention_cached(act_t *out, const act_t *q, const act_t *kc, const act_t *vc, int B, int Tq, int Tk,
                           int Tc, int NH, int NKV, int HD);
// pointwise.cu
void cuda_gelu_forward(act_t *out, const act_t *inp, size_t n);
void cuda_gelu_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n);
void cuda_quick_gelu_forward(act_t *out, const act_t *inp, size_t n);
void cuda_quick_gelu_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n);
void cuda_gelu_tanh_forward(act_t *out, const act_t *inp, size_t n);
void cuda_gelu_tanh_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n);
void cuda_swiglu_forward(act_t *out, const act_t *gate, const act_t *up, int N, int W, int ld);
void cuda_swiglu_backward(act_t *dgate, act_t *dup, const act_t *dout, const act_t *gate, const act_t *up, int N,
                          int W, int ld);
void cuda_add(act_t *out, const act_t *a, const act_t *b, size_t n);
void cuda_dropout(act_t *out, const act_t *inp, size_t n, float p, uint64_t seed);
void cuda_cast_to_act(act_t *dst, const float *src, size_t n);
// grid.cu
void cuda_avgpool2x2_forward(act_t *out, const act_t *inp, int B, int H, int W, int C);
void cuda_avgpool2x2_backward(act_t *dinp, const act_t *dout, int B, int H, int W, int C);
void cuda_dwconv3x3_forward(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int B, int H,
                            int W, int C);
void cuda_dwconv3x3_backward(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                             const act_t *w, int B, int H, int W, int C);
void cuda_im2col_patches(act_t *out, const act_t *img, int B, int S, int P);
void cuda_vit_embed(act_t *out, const act_t *patches, const act_t *cls, const act_t *pos, int B, int NP,
                    int C);
// rows.cu
void cuda_embedding_forward(act_t *out, const int *ids, const act_t *table, int N, int C, int V);
void cuda_gather_rows(act_t *out, const act_t *inp, const int *idx, int M, int C);
void cuda_scatter_rows(act_t *out, const act_t *inp, const int *idx, int M, int C);
void cuda_copy_rows(act_t *out, const act_t *inp, int N, int C, int ld_out, int ld_inp);
// loss.cu
void cuda_cross_entropy(float *losses, act_t *dlogits, const act_t *logits, const int *targets, int M,
                        int V, float dscale);
// adamw.cu
void cuda_adamw_update(float *p, const float *g, float *m, float *v, size_t n, double lr, double beta1,
                       double beta2, double eps, double weight_decay, int t);
double cuda_sum_squares(const float *x, size_t n);
void cuda_scale_f32(float *x, float s, size_t n);
void cuda_sum_f64(double *out, const float *x, size_t n, int squares, int accumulate);
void cuda_adamw_span(float *p, const float *g, float *m, float *v, const AdamwSpan *a, const double *sumsq,
                     const double *loss);
// colsum.cu: deterministic sums over rows, shared by the bias, norm and conv gradients
void cuda_colsum_bias(float *dbias, const bf16 *dout, int N, int C, int ld);  // dout rows ld apart
void cuda_colsum_layernorm(float *dw, float *db, const bf16 *dout, const bf16 *inp, const float *mean,
                           const float *rstd, int N, int C);
void cuda_colsum_rmsnorm(float *dw, const bf16 *dout, const bf16 *inp, const float *rstd, int N, int C);
