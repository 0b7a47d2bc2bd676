// norm.c: LayerNorm (CLIP) and RMSNorm (Llama/Qwen2), forward and backward.
// Row statistics are summed in double, one row per task. The weight and bias gradients sum over
// rows, so they are parallel over blocks of channels, each walking the rows in order.
#include <math.h>

#include "kernels/cpu/cpu.h"

void cpu_layernorm_forward(act_t *out_, float *mean, float *rstd, const act_t *inp_,
                           const act_t *w_, const act_t *b_, int N, int C, float eps) {
    float *out = out_;          // (N, C)
    const float *inp = inp_;    // (N, C)
    const float *w = w_;        // (C)
    const float *b = b_;        // (C)
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        double s = 0.0;
        for (int c = 0; c < C; c++) s += x[c];
        double mu = s / C;
        // two passes: the variance of activations with a large mean stays accurate
        double ss = 0.0;
        for (int c = 0; c < C; c++) {
            double d = x[c] - mu;
            ss += d * d;
        }
        float m = (float)mu;
        float r = (float)(1.0 / sqrt(ss / C + (double)eps));
        // the backward sees only the saved fp32 mean and rstd, so the output uses the same values
        for (int c = 0; c < C; c++) y[c] = (x[c] - m) * r * w[c] + b[c];
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = r;
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
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            const float *g = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            float m = mean[n], r = rstd[n];
            double sum_wg = 0.0, sum_wg_xhat = 0.0;
            for (int c = 0; c < C; c++) {
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

void cpu_rmsnorm_forward(act_t *out_, float *rstd, const act_t *inp_, const act_t *w_, int N,
                         int C, float eps) {
    float *out = out_;          // (N, C)
    const float *inp = inp_;    // (N, C)
    const float *w = w_;        // (C)
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / C + (double)eps));
        // w * (x * rstd), in the order of transformers' LlamaRMSNorm
        for (int c = 0; c < C; c++) y[c] = w[c] * (x[c] * r);
        if (rstd) rstd[n] = r;
    }
}

// y_c = w_c x_c r with r = (mean(x^2) + eps)^(-1/2), so
// dx_j = r (w_j g_j - x_j r^2 mean_c(w_c g_c x_c)) and dw_c = sum_rows g_c x_c r
void cpu_rmsnorm_backward(act_t *dinp_, float *dw, const act_t *dout_, const act_t *inp_,
                          const act_t *w_, const float *rstd, int N, int C) {
    float *dinp = dinp_;          // (N, C) +=
    const float *dout = dout_;    // (N, C)
    const float *inp = inp_;      // (N, C)
    const float *w = w_;          // (C)
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            const float *g = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            float r = rstd[n];
            double s = 0.0;
            for (int c = 0; c < C; c++) s += (double)(w[c] * g[c]) * x[c];
            float k = (float)(s / C) * r * r;
            for (int c = 0; c < C; c++) dx[c] += r * (w[c] * g[c] - x[c] * k);
        }
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
