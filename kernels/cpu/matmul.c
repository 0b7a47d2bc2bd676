// matmul.c: the linear layer, forward and backward, on the BLAS's sgemm (row-major).
// One thread pool: the BLAS runs single-threaded (cpu_blas_init) and each GEMM's output is split
// in blocks of rows or columns among the OpenMP threads, each block one sgemm call. So OpenMP and
// the BLAS never wait for each other's threads (no spinning BLAS workers taking the cores from
// OpenMP's, no hand-off between two pools), and the split is a pure function of the shape and
// the thread count: the same bits run after run. The bias gradient is summed here per column in
// row order, so it is independent of the thread count.
#include <omp.h>
#include <string.h>

#include "kernels/cpu/blas.h"

#include "kernels/cpu/cpu.h"

// BLAS rejects a leading dimension of 0 even when the matrix is empty
static int ld(int n) { return n > 0 ? n : 1; }

// below this many multiply-adds a GEMM runs on the calling thread: waking the others costs more
#define SPLIT_MIN_MACS (1 << 20)
// blocks start at multiples of this (a cache line of floats)
#define SPLIT_ALIGN 16

// rows r0..r1, columns c0..c1 of C (stride ldc) += bias (N) by column
static void add_bias(float *C, int ldc, const float *bias, int r0, int r1, int c0, int c1) {
    for (int r = r0; r < r1; r++) {
        float *row = C + (size_t)r * ldc;
        for (int c = c0; c < c1; c++) row[c] += bias[c];
    }
}

// rows r0..r1, columns c0..c1 of C (rows ldc apart) = alpha op(A) op(B) + beta C (+ bias (its
// columns c0..c1) on every row when not NULL), op(A) and op(B) already at that block. Without
// accumulation the bias is written first and the product added onto it (beta 1): the BLAS then
// skips its pass that clears C, and no second pass adds the bias.
static void sgemm_bias(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc, const float *bias, int r0, int r1, int c0,
                       int c1) {
    int M = r1 - r0, N = c1 - c0;
    float *Cb = C + (size_t)r0 * ldc + c0;
    if (bias && beta == 0.0f) {
        for (int r = r0; r < r1; r++) memcpy(C + (size_t)r * ldc + c0, bias + c0, (size_t)N * sizeof(float));
        cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, 1.0f, Cb, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, Cb, ldc);
    if (bias) add_bias(C, ldc, bias, r0, r1, c0, c1);
}

// C (M, N) = alpha op(A) op(B) + beta C (+ bias (N) on every row when not NULL), row-major, the
// output split among the threads along its longer side; each thread does the bias of its block
static void sgemm_split(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc,
                        const float *bias) {
    if ((double)M * N * K < SPLIT_MIN_MACS || omp_get_max_threads() == 1 || omp_in_parallel()) {
        sgemm_bias(ta, tb, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, 0, M, 0, N);
        return;
    }
    int by_rows = M >= N, len = by_rows ? M : N, units = (len + SPLIT_ALIGN - 1) / SPLIT_ALIGN;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int s = (int)((long)units * t / nt) * SPLIT_ALIGN, e = (int)((long)units * (t + 1) / nt) * SPLIT_ALIGN;
        if (e > len) e = len;
        if (e > s) {
            if (by_rows) {  // rows s..e of op(A) and of C
                sgemm_bias(ta, tb, K, alpha, A + (ta == CblasNoTrans ? (size_t)s * lda : (size_t)s), lda, B, ldb, beta, C,
                           ldc, bias, s, e, 0, N);
            } else {  // columns s..e of op(B) and of C
                sgemm_bias(ta, tb, K, alpha, A, lda, B + (tb == CblasNoTrans ? (size_t)s : (size_t)s * ldb), ldb, beta, C,
                           ldc, bias, 0, M, s, e);
            }
        }
    }
}

void cpu_matmul_forward_ld(act_t *out_, const act_t *inp_, const act_t *w_, const act_t *bias_, int N, int C, int OC,
                           float alpha, int accumulate, int ld_out, int ld_inp) {
    float *out = out_;                // (N, OC), rows ld_out apart
    const float *inp = inp_;          // (N, C), rows ld_inp apart
    const float *w = w_;              // (OC, C)
    const float *bias = bias_;        // (OC) or NULL
    if (N <= 0 || OC <= 0) return;
    // beta = 0 makes BLAS ignore whatever out held, NaN included
    sgemm_split(CblasNoTrans, CblasTrans, N, OC, C, alpha, inp, ld(ld_inp), w, ld(C), accumulate ? 1.0f : 0.0f, out,
                ld_out, bias);
}

void cpu_matmul_forward(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int N, int C, int OC,
                        float alpha, int accumulate) {
    cpu_matmul_forward_ld(out, inp, w, bias, N, C, OC, alpha, accumulate, OC, C);
}

void cpu_matmul_backward_ld(act_t *dinp_, float *dw, float *dbias, const act_t *dout_, const act_t *inp_,
                            const act_t *w_, int N, int C, int OC, float alpha, int set, int ld_out, int ld_inp) {
    float *dinp = dinp_;              // (N, C) +=, or = with set; rows ld_inp apart
    const float *dout = dout_;        // (N, OC), rows ld_out apart
    const float *inp = inp_;          // (N, C), rows ld_inp apart
    const float *w = w_;              // (OC, C)
    // set: cleared, then accumulated: the same bits as the model's zero + matmul_backward
    if (set && dinp && N > 0 && C > 0) {
        if (ld_inp == C) memset(dinp, 0, (size_t)N * C * sizeof(float));
        else
            for (int n = 0; n < N; n++) memset(dinp + (size_t)n * ld_inp, 0, (size_t)C * sizeof(float));
    }
    if (N <= 0 || OC <= 0) return;
    if (dinp && C > 0)
        sgemm_split(CblasNoTrans, CblasNoTrans, N, C, OC, alpha, dout, ld_out, w, ld(C), 1.0f, dinp, ld(ld_inp), NULL);
    if (dw && C > 0)
        sgemm_split(CblasTrans, CblasNoTrans, OC, C, N, alpha, dout, ld_out, inp, ld(ld_inp), 1.0f, dw, ld(C), NULL);
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
                const float *row = dout + (size_t)n * ld_out;
                for (int o = o0; o < o1; o++) acc[o - o0] += row[o];
            }
            for (int o = o0; o < o1; o++) dbias[o] += (float)acc[o - o0];
        }
    }
}

void cpu_matmul_backward(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp, const act_t *w,
                         int N, int C, int OC, float alpha) {
    cpu_matmul_backward_ld(dinp, dw, dbias, dout, inp, w, N, C, OC, alpha, 0, OC, C);
}
