// norm.c: LayerNorm (CLIP) and RMSNorm (Llama/Qwen2), forward and backward.
// Row statistics are summed in double, one row per task, in 8 lanes (two of 4 doubles) over blocks
// of 8 columns, then the lanes and the tail in a fixed order: a sequential double sum is a chain of
// dependent adds (4 cycles a column, most of a norm's time); the lanes keep the order a function
// of C alone, so a row gets the same bits at any thread count and in any position. The weight and
// bias gradients sum over rows, so they are parallel over blocks of channels, each walking the
// rows in order.
#include <math.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/simd.h"

// sum_c x_c and sum_c (x_c - mu)^2, in double
static inline double row_sum(const float *x, int C) {
    int c8 = C & ~7;
    vd4 a0 = {0}, a1 = {0};
    for (int c = 0; c < c8; c += 8) {
        a0 += vd4_load(x + c);
        a1 += vd4_load(x + c + 4);
    }
    double s = vd4_total(a0 + a1);
    for (int c = c8; c < C; c++) s += x[c];
    return s;
}

static inline double row_sum_sq(const float *x, int C, double mu) {
    int c8 = C & ~7;
    vd4 a0 = {0}, a1 = {0};
    for (int c = 0; c < c8; c += 8) {
        vd4 d0 = vd4_load(x + c) - mu, d1 = vd4_load(x + c + 4) - mu;
        a0 += d0 * d0;
        a1 += d1 * d1;
    }
    double s = vd4_total(a0 + a1);
    for (int c = c8; c < C; c++) {
        double d = x[c] - mu;
        s += d * d;
    }
    return s;
}

// sum_c float(a_c b_c) c_c, in double
static inline double row_dot3(const float *a, const float *b, const float *c, int C) {
    int c8 = C & ~7;
    vd4 a0 = {0}, a1 = {0};
    for (int j = 0; j < c8; j += 8) {
        a0 += __builtin_convertvector(*(const vf4 *)(a + j) * *(const vf4 *)(b + j), vd4) * vd4_load(c + j);
        a1 += __builtin_convertvector(*(const vf4 *)(a + j + 4) * *(const vf4 *)(b + j + 4), vd4) * vd4_load(c + j + 4);
    }
    double s = vd4_total(a0 + a1);
    for (int j = c8; j < C; j++) s += (double)(a[j] * b[j]) * c[j];
    return s;
}

CPU_HOT static void layernorm_row(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b,
                                  int C, float eps) {
    double mu = row_sum(x, C) / C;
    // two passes: the variance of activations with a large mean stays accurate
    double ss = row_sum_sq(x, C, mu);
    float m = (float)mu;
    float r = (float)(1.0 / sqrt(ss / C + (double)eps));
    // the backward sees only the saved fp32 mean and rstd, so the output uses the same values
    for (int c = 0; c < C; c++) y[c] = (x[c] - m) * r * w[c] + b[c];
    if (mean) *mean = m;
    if (rstd) *rstd = r;
}

void cpu_layernorm_forward(act_t *out_, float *mean, float *rstd, const act_t *inp_,
                           const act_t *w_, const act_t *b_, int N, int C, float eps) {
    float *out = out_;          // (N, C)
    const float *inp = inp_;    // (N, C)
    const float *w = w_;        // (C)
    const float *b = b_;        // (C)
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        layernorm_row(out + (size_t)n * C, mean ? mean + n : NULL, rstd ? rstd + n : NULL, inp + (size_t)n * C, w, b, C,
                      eps);
    }
}

CPU_HOT static void layernorm_backward_row(float *dx, const float *g, const float *x, const float *w, float m, float r,
                                           int C) {
    int c8 = C & ~7;
    vd4 a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
    for (int c = 0; c < c8; c += 8) {
        vf4 wg0 = *(const vf4 *)(w + c) * *(const vf4 *)(g + c), wg1 = *(const vf4 *)(w + c + 4) * *(const vf4 *)(g + c + 4);
        vf4 xh0 = (*(const vf4 *)(x + c) - m) * r, xh1 = (*(const vf4 *)(x + c + 4) - m) * r;
        vd4 d0 = __builtin_convertvector(wg0, vd4), d1 = __builtin_convertvector(wg1, vd4);
        a0 += d0;
        a1 += d1;
        b0 += d0 * __builtin_convertvector(xh0, vd4);
        b1 += d1 * __builtin_convertvector(xh1, vd4);
    }
    double sum_wg = vd4_total(a0 + a1), sum_wg_xhat = vd4_total(b0 + b1);
    for (int c = c8; c < C; c++) {
        float wg = w[c] * g[c];
        sum_wg += wg;
        sum_wg_xhat += (double)wg * ((x[c] - m) * r);
    }
    float mean_wg = (float)(sum_wg / C);
    float mean_wg_xhat = (float)(sum_wg_xhat / C);
    for (int c = 0; c < C; c++) {
        float xhat = (x[c] - m) * r;
        dx[c] += r * (w[c] * g[c] - mean_wg - xhat * mean_wg_xhat);
    }
}

void cpu_layernorm_backward(act_t *dinp_, float *dw, float *db, const act_t *dout_,
                            const act_t *inp_, const act_t *w_, const float *mean,
                            const float *rstd, int N, int C) {
    float *dinp = dinp_;          // (N, C) +=
    const float *dout = dout_;    // (N, C)
    const float *inp = inp_;      // (N, C)
    const float *w = w_;          // (C)
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++)
            layernorm_backward_row(dinp + (size_t)n * C, dout + (size_t)n * C, inp + (size_t)n * C, w, mean[n], rstd[n], C);
    }
    if (dw || db) {
        int nblocks = (C + CPU_COL_BLOCK - 1) / CPU_COL_BLOCK;
#pragma omp parallel for schedule(static)
        for (int blk = 0; blk < nblocks; blk++) {
            int c0 = blk * CPU_COL_BLOCK;
            int c1 = c0 + CPU_COL_BLOCK < C ? c0 + CPU_COL_BLOCK : C;
            double acc_w[CPU_COL_BLOCK] = {0}, acc_b[CPU_COL_BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * C;
                const float *g = dout + (size_t)n * C;
                float m = mean[n], r = rstd[n];
                for (int c = c0; c < c1; c++) {
                    acc_w[c - c0] += (double)g[c] * ((x[c] - m) * r);
                    acc_b[c - c0] += g[c];
                }
            }
            for (int c = c0; c < c1; c++) {
                if (dw) dw[c] += (float)acc_w[c - c0];
                if (db) db[c] += (float)acc_b[c - c0];
            }
        }
    }
}

// sum = a + b first when a is not NULL (x = sum then), y = w * (x * rstd) in the order of
// transformers' LlamaRMSNorm
CPU_HOT static void rmsnorm_row(float *y, float *rstd, float *sum, const float *a, const float *b, const float *x,
                                const float *w, int C, float eps) {
    if (a) {
        for (int c = 0; c < C; c++) sum[c] = a[c] + b[c];
        x = sum;
    }
    float r = (float)(1.0 / sqrt(row_sum_sq(x, C, 0.0) / C + (double)eps));
    for (int c = 0; c < C; c++) y[c] = w[c] * (x[c] * r);
    if (rstd) *rstd = r;
}

void cpu_add_rmsnorm_forward(act_t *sum_, act_t *out_, float *rstd, const act_t *a_, const act_t *b_, const act_t *w_,
                             int N, int C, float eps) {
    float *sum = sum_, *out = out_;       // (N, C) each; sum = a + b may be a or b
    const float *a = a_, *b = b_, *w = w_;  // (N, C), (N, C), (C)
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        rmsnorm_row(out + (size_t)n * C, rstd ? rstd + n : NULL, sum + (size_t)n * C, a + (size_t)n * C,
                    b + (size_t)n * C, NULL, w, C, eps);
}

void cpu_rmsnorm_forward(act_t *out_, float *rstd, const act_t *inp_, const act_t *w_, int N,
                         int C, float eps) {
    float *out = out_;          // (N, C)
    const float *inp = inp_;    // (N, C)
    const float *w = w_;        // (C)
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        rmsnorm_row(out + (size_t)n * C, rstd ? rstd + n : NULL, NULL, NULL, NULL, inp + (size_t)n * C, w, C, eps);
    }
}

// dx = (set ? 0 : dx) + r (w g - x k): set writes without reading (the same bits as clearing first)
CPU_HOT static void rmsnorm_backward_row(float *dx, const float *g, const float *x, const float *w, float r, int C,
                                         int set) {
    float k = (float)(row_dot3(w, g, x, C) / C) * r * r;
    if (set)
        for (int c = 0; c < C; c++) dx[c] = 0.0f + r * (w[c] * g[c] - x[c] * k);
    else
        for (int c = 0; c < C; c++) dx[c] += r * (w[c] * g[c] - x[c] * k);
}

// y_c = w_c x_c r with r = (mean(x^2) + eps)^(-1/2), so
// dx_j = r (w_j g_j - x_j r^2 mean_c(w_c g_c x_c)) and dw_c = sum_rows g_c x_c r
static void rmsnorm_backward_rows(act_t *dinp_, float *dw, const act_t *dout_, const act_t *inp_, const act_t *w_,
                                  const float *rstd, int N, int C, int set) {
    float *dinp = dinp_;          // (N, C) +=, or = with set
    const float *dout = dout_;    // (N, C)
    const float *inp = inp_;      // (N, C)
    const float *w = w_;          // (C)
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++)
            rmsnorm_backward_row(dinp + (size_t)n * C, dout + (size_t)n * C, inp + (size_t)n * C, w, rstd[n], C, set);
    }
    if (dw) {
        int nblocks = (C + CPU_COL_BLOCK - 1) / CPU_COL_BLOCK;
#pragma omp parallel for schedule(static)
        for (int blk = 0; blk < nblocks; blk++) {
            int c0 = blk * CPU_COL_BLOCK;
            int c1 = c0 + CPU_COL_BLOCK < C ? c0 + CPU_COL_BLOCK : C;
            double acc[CPU_COL_BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * C;
                const float *g = dout + (size_t)n * C;
                float r = rstd[n];
                for (int c = c0; c < c1; c++) acc[c - c0] += (double)g[c] * (x[c] * r);
            }
            for (int c = c0; c < c1; c++) dw[c] += (float)acc[c - c0];
        }
    }
}

void cpu_rmsnorm_backward(act_t *dinp, float *dw, const act_t *dout, const act_t *inp, const act_t *w, const float *rstd,
                          int N, int C) {
    rmsnorm_backward_rows(dinp, dw, dout, inp, w, rstd, N, C, 0);
}

// dinp = the gradient (not added): no clearing pass first
void cpu_rmsnorm_backward_set(act_t *dinp, float *dw, const act_t *dout, const act_t *inp, const act_t *w,
                              const float *rstd, int N, int C) {
    rmsnorm_backward_rows(dinp, dw, dout, inp, w, rstd, N, C, 1);
}
