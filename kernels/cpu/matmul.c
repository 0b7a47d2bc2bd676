// matmul.c: the linear layer, forward and backward, on OpenBLAS sgemm (row-major).
// OpenBLAS gives the same bits run after run at a fixed thread count; the bias gradient is
// summed here per column in row order, so it is independent of the thread count.
#include "kernels/cpu/blas.h"

#include "kernels/cpu/cpu.h"

// BLAS rejects a leading dimension of 0 even when the matrix is empty
static int ld(int n) { return n > 0 ? n : 1; }

void cpu_matmul_forward(act_t *out_, const act_t *inp_, const act_t *w_, const act_t *bias_, int N,
                        int C, int OC, float alpha, int accumulate) {
    float *out = out_;                // (N, OC)
    const float *inp = inp_;          // (N, C)
    const float *w = w_;              // (OC, C)
    const float *bias = bias_;        // (OC) or NULL
    if (N <= 0 || OC <= 0) return;
    // beta = 0 makes BLAS ignore whatever out held, NaN included
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, alpha, inp, ld(C), w, ld(C),
                accumulate ? 1.0f : 0.0f, out, OC);
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            float *row = out + (size_t)n * OC;
            for (int o = 0; o < OC; o++) row[o] += bias[o];
        }
    }
}

void cpu_matmul_backward(act_t *dinp_, float *dw, float *dbias, const act_t *dout_,
                         const act_t *inp_, const act_t *w_, int N, int C, int OC, float alpha) {
    float *dinp = dinp_;              // (N, C) +=
    const float *dout = dout_;        // (N, OC)
    const float *inp = inp_;          // (N, C)
    const float *w = w_;              // (OC, C)
    if (N <= 0 || OC <= 0) return;
    if (dinp && C > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, alpha, dout, OC, w, ld(C),
                    1.0f, dinp, ld(C));
    if (dw && C > 0)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, alpha, dout, OC, inp, ld(C),
                    1.0f, dw, ld(C));
    if (dbias) {
        int nblocks = (OC + CPU_COL_BLOCK - 1) / CPU_COL_BLOCK;
        // one task per block of columns walks the rows in order: contiguous reads, a fixed
        // summation order per column, and no two tasks touch the same output
#pragma omp parallel for schedule(static)
        for (int blk = 0; blk < nblocks; blk++) {
            int o0 = blk * CPU_COL_BLOCK;
            int o1 = o0 + CPU_COL_BLOCK < OC ? o0 + CPU_COL_BLOCK : OC;
            double acc[CPU_COL_BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const float *row = dout + (size_t)n * OC;
                for (int o = o0; o < o1; o++) acc[o - o0] += row[o];
            }
            for (int o = o0; o < o1; o++) dbias[o] += (float)acc[o - o0];
        }
    }
}
