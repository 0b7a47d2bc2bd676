// cpu.h: internal declarations shared by the files of the CPU backend (fp32, OpenMP, CBLAS).
// On the CPU act_t is float, so every act_t pointer of kernels.h is a float pointer here.
//
// Determinism: every op gives bit-identical results run after run at a fixed thread count (most
// at any thread count). Loops are parallel only over independent outputs (schedule(static), or
// dynamic where tasks differ in size and each task's outputs are its own), each output is summed
// in one fixed sequential order, and there are no float reductions or atomics. Sums over rows into
// one parameter gradient are parallel over channels instead.
#pragma once
#include <stddef.h>

#include "kernels/kernels.h"

// Dot product with eight partial sums combined in a fixed tree: vectorisable, and the same in
// attention and attention_cached, whose rows must agree bit for bit.
static inline float dotf(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int d = 0;
    for (; d + 8 <= n; d += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[d + l] * b[d + l];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; d < n; d++) s += a[d] * b[d];
    return s;
}


// channels handled by one task when a gradient is summed over rows: a cache-friendly run of columns
#define CPU_COL_BLOCK 64

// matmul.c
void cpu_matmul_forward(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int N,
                        int C, int OC, float alpha, int accumulate);
void cpu_matmul_backward(act_t *dinp, float *dw, float *dbias, const act_t *dout,
                         const act_t *inp, const act_t *w, int N, int C, int OC, float alpha);
void cpu_matmul_forward_ld(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int N, int C, int OC,
                           float alpha, int accumulate, int ld_out, int ld_inp);
void cpu_matmul_backward_ld(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                            const act_t *w, int N, int C, int OC, float alpha, int set, int ld_out, int ld_inp);

// norm.c
void cpu_layernorm_forward(act_t *out, float *mean, float *rstd, const act_t *inp,
                           const act_t *w, const act_t *b, int N, int C, float eps);
void cpu_layernorm_backward(act_t *dinp, float *dw, float *db, const act_t *dout,
                            const act_t *inp, const act_t *w, const float *mean,
                            const float *rstd, int N, int C);
void cpu_rmsnorm_forward(act_t *out, float *rstd, const act_t *inp, const act_t *w, int N,
                         int C, float eps);
void cpu_rmsnorm_backward(act_t *dinp, float *dw, const act_t *dout, const act_t *inp,
                          const act_t *w, const float *rstd, int N, int C);
void cpu_rmsnorm_backward_set(act_t *dinp, float *dw, const act_t *dout, const act_t *inp, const act_t *w,
                              const float *rstd, int N, int C);
void cpu_add_rmsnorm_forward(act_t *sum, act_t *out, float *rstd, const act_t *a, const act_t *b, const act_t *w,
                             int N, int C, float eps);

// rope.c
void cpu_rope_forward(act_t *out, const act_t *inp, const int *pos, int N, int n_heads,
                      int head_dim, float theta, int ld_out, int ld_inp);
void cpu_rope_backward(act_t *dinp, const act_t *dout, const int *pos, int N, int n_heads,
                       int head_dim, float theta, int ld_out, int ld_inp);

// tile.c: C (M, N) += A (M, K) . B (K, N) (acc 1) or C = A . B (acc 0), row-major with leading
// dimensions; each element summed over k in order, so a row's result does not depend on M or on
// the rows around it
void tile_gemm(float *C, size_t ldc, const float *A, size_t lda, const float *B, size_t ldb, int M, int N, int K,
               int acc);

// attention.c
// the tiles of the flash-style attention: queries x keys
#define ATT_BQ 32  // 32: on the causal diagonal half the tile's rows need half its keys
#define ATT_BK 64
// every (batch, head, query tile) task of a forward: queries (B, Tq) at positions Tk-Tq.. over the
// first Tk of Tc rows of k and v; attention_forward (Tq = Tk = Tc) and attention_cached share it
void cpu_attention_tasks(float *out, float *lse, const float *q, const float *k, const float *v, const int *seg,
                         int B, int Tq, int Tk, int Tc, int NH, int NKV, int HD, int causal);
// bytes of the backward's dq chunk buffers for this call (0 when it runs in one chunk)
size_t cpu_attention_backward_scratch(int B, int T, int NH, int NKV, int HD);

// cpu_backend.c: the scratch reserved by workspace_reserve, when it holds `bytes`; else NULL
// (the op then allocates a temporary: op tests run without a reservation)
void *cpu_workspace(size_t bytes);
void cpu_attention_forward(act_t *out, float *lse, const act_t *q, const act_t *k,
                           const act_t *v, const int *seg, int B, int T, int NH, int NKV,
                           int HD, int causal);
void cpu_attention_backward(act_t *dq, act_t *dk, act_t *dv, const act_t *dout,
                            const act_t *q, const act_t *k, const act_t *v, const act_t *out,
                            const float *lse, const int *seg, int B, int T, int NH, int NKV,
                            int HD, int causal);

// attention_cached.c
void cpu_attention_cached(act_t *out, const act_t *q, const act_t *kc, const act_t *vc, int B, int Tq,
                          int Tk, int Tc, int NH, int NKV, int HD);

// pointwise.c
void cpu_gelu_forward(act_t *out, const act_t *inp, size_t n);
void cpu_gelu_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n);
void cpu_quick_gelu_forward(act_t *out, const act_t *inp, size_t n);
void cpu_quick_gelu_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n);
void cpu_gelu_tanh_forward(act_t *out, const act_t *inp, size_t n);
void cpu_gelu_tanh_backward(act_t *dinp, const act_t *dout, const act_t *inp, size_t n);
void cpu_swiglu_forward(act_t *out, const act_t *gate, const act_t *up, int N, int W, int ld);
void cpu_swiglu_backward(act_t *dgate, act_t *dup, const act_t *dout, const act_t *gate,
                         const act_t *up, int N, int W, int ld);
void cpu_add(act_t *out, const act_t *a, const act_t *b, size_t n);
void cpu_dropout(act_t *out, const act_t *inp, size_t n, float p, uint64_t seed);

// grid.c
void cpu_avgpool2x2_forward(act_t *out, const act_t *inp, int B, int H, int W, int C);
void cpu_avgpool2x2_backward(act_t *dinp, const act_t *dout, int B, int H, int W, int C);
void cpu_dwconv3x3_forward(act_t *out, const act_t *inp, const act_t *w, const act_t *bias,
                           int B, int H, int W, int C);
void cpu_dwconv3x3_backward(act_t *dinp, float *dw, float *dbias, const act_t *dout,
                            const act_t *inp, const act_t *w, int B, int H, int W, int C);
void cpu_im2col_patches(act_t *out, const act_t *img, int B, int S, int P);
void cpu_vit_embed(act_t *out, const act_t *patches, const act_t *cls, const act_t *pos, int B,
                   int NP, int C);

// rows.c
void cpu_embedding_forward(act_t *out, const int *ids, const act_t *table, int N, int C, int V);
void cpu_gather_rows(act_t *out, const act_t *inp, const int *idx, int M, int C);
void cpu_scatter_rows(act_t *out, const act_t *inp, const int *idx, int M, int C);
void cpu_copy_rows(act_t *out, const act_t *inp, int N, int C, int ld_out, int ld_inp);

// loss.c
void cpu_cross_entropy(float *losses, act_t *dlogits, const act_t *logits, const int *targets,
                       int M, int V, float dscale);

// adamw.c
void cpu_adamw_update(float *p, const float *g, float *m, float *v, size_t n, double lr,
                      double beta1, double beta2, double eps, double weight_decay, int t);
double cpu_sum_squares(const float *x, size_t n);
void cpu_scale_f32(float *x, float s, size_t n);
void cpu_sum_f64(double *out, const float *x, size_t n, int squares, int accumulate);
void cpu_adamw_span(float *p, const float *g, float *m, float *v, const AdamwSpan *a, const double *sumsq,
                    const double *loss);
