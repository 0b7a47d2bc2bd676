// test_kernels_cpu.c: the CPU backend's own pieces at the sizes where their structure shows:
// attention over several 64 x 64 tiles (forward and backward against double-precision loops, with
// causal and segment masks crossing tile edges, GQA, head sizes off the 16-wide vectors, and the
// backward's key chunks with their dq buffers), the tile GEMM and the vectorised exp against
// double, matmuls large enough to be split among the threads, and the choice of OpenBLAS kernel.
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/cpu/blas_core.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/simd.h"
#include "kernels/kernels.h"
#include "tests/testlib.h"

static const Kernels *K;
static uint64_t seed = 0x7e57c0deULL;

// as test_kernels.c: fp32 sums of up to a few hundred terms against double
#define TOL 1e-5

// testlib.h's test_randv, drawing from this file's seed
#define randv(n, lo, hi) test_randv((n), (lo), (hi), &seed)

static int setup(void **state) {
    (void)state;
    K = kernels_cpu();
    return K ? 0 : -1;
}

// ---------------------------------------------------------------- attention, double reference

typedef struct {
    int B, T, NH, NKV, HD, causal;
    const int *seg;
} Shape;

static int visible(const Shape *s, int b, int i, int j) {
    return (!s->causal || j <= i) && (!s->seg || s->seg[b * s->T + i] == s->seg[b * s->T + j]);
}

// forward and backward in double: out, lse, and dq, dk, dv of the loss sum(dout * out)
static void ref_attention(const Shape *s, const float *q, const float *k, const float *v, const float *dout,
                          float *out, float *lse, float *dq, float *dk, float *dv) {
    int T = s->T, HD = s->HD, NH = s->NH, NKV = s->NKV;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    size_t nk = (size_t)s->B * T * ks;
    double *p = xmalloc((size_t)T * sizeof(double)), *dp = xmalloc((size_t)T * sizeof(double));
    double *gk = xcalloc(nk, sizeof(double)), *gv = xcalloc(nk, sizeof(double));
    double scale = 1.0 / sqrt((double)HD);
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < NH; h++) {
            int g = h / (NH / NKV);
            for (int i = 0; i < T; i++) {
                const float *qi = q + ((size_t)b * T + i) * qs + (size_t)h * HD;
                const float *di = dout + ((size_t)b * T + i) * qs + (size_t)h * HD;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    p[j] = -INFINITY;
                    if (!visible(s, b, i, j)) continue;
                    const float *kj = k + ((size_t)b * T + j) * ks + (size_t)g * HD;
                    double dot = 0;
                    for (int d = 0; d < HD; d++) dot += (double)qi[d] * kj[d];
                    p[j] = dot * scale;
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j < T; j++) sum += exp(p[j] - mx);
                for (int j = 0; j < T; j++) p[j] = exp(p[j] - mx) / sum;
                lse[((size_t)b * NH + h) * T + i] = (float)(mx + log(sum));
                double D = 0;
                for (int d = 0; d < HD; d++) {
                    double o = 0;
                    for (int j = 0; j < T; j++) o += p[j] * v[((size_t)b * T + j) * ks + (size_t)g * HD + d];
                    out[((size_t)b * T + i) * qs + (size_t)h * HD + d] = (float)o;
                    D += o * di[d];
                }
                for (int j = 0; j < T; j++) {
                    const float *vj = v + ((size_t)b * T + j) * ks + (size_t)g * HD;
                    double dot = 0;
                    for (int d = 0; d < HD; d++) dot += (double)di[d] * vj[d];
                    dp[j] = p[j] * (dot - D);  // dS
                }
                for (int d = 0; d < HD; d++) {
                    double acc = 0;
                    for (int j = 0; j < T; j++) acc += dp[j] * k[((size_t)b * T + j) * ks + (size_t)g * HD + d];
                    dq[((size_t)b * T + i) * qs + (size_t)h * HD + d] = (float)(acc * scale);
                }
                for (int j = 0; j < T; j++)
                    for (int d = 0; d < HD; d++) {
                        size_t ko = ((size_t)b * T + j) * ks + (size_t)g * HD + d;
                        gk[ko] += dp[j] * scale * qi[d];
                        gv[ko] += p[j] * di[d];
                    }
            }
        }
    for (size_t i = 0; i < nk; i++) {
        dk[i] = (float)gk[i];
        dv[i] = (float)gv[i];
    }
    free(p); free(dp); free(gk); free(gv);
}

static void check_attention(const Shape *s, const char *name) {
    size_t nq = (size_t)s->B * s->T * s->NH * s->HD, nk = (size_t)s->B * s->T * s->NKV * s->HD;
    size_t nl = (size_t)s->B * s->NH * s->T;
    float *q = randv(nq, -1.5f, 1.5f), *k = randv(nk, -1.5f, 1.5f), *v = randv(nk, -1, 1), *dout = randv(nq, -1, 1);
    float *out = test_nanv(nq), *lse = test_nanv(nl), *dq = test_nanv(nq), *dk = test_nanv(nk), *dv = test_nanv(nk);
    float *r_out = test_nanv(nq), *r_lse = test_nanv(nl), *r_dq = test_nanv(nq), *r_dk = test_nanv(nk), *r_dv = test_nanv(nk);
    ref_attention(s, q, k, v, dout, r_out, r_lse, r_dq, r_dk, r_dv);
    K->attention_forward(out, lse, q, k, v, s->seg, s->B, s->T, s->NH, s->NKV, s->HD, s->causal);
    K->attention_backward(dq, dk, dv, dout, q, k, v, out, lse, s->seg, s->B, s->T, s->NH, s->NKV, s->HD, s->causal);
    char what[96];
    const char *part[] = {"out", "lse", "dq", "dk", "dv"};
    const float *got[] = {out, lse, dq, dk, dv}, *want[] = {r_out, r_lse, r_dq, r_dk, r_dv};
    size_t n[] = {nq, nl, nq, nk, nk};
    for (int i = 0; i < 5; i++) {
        snprintf(what, sizeof what, "%s %s", name, part[i]);
        test_expect_close(what, got[i], want[i], n[i], TOL);
    }
    // only dk: the same bits as with all three (dq's chunk buffers are not in its path)
    float *dk_only = test_nanv(nk);
    K->attention_backward(NULL, dk_only, NULL, dout, q, k, v, out, lse, s->seg, s->B, s->T, s->NH, s->NKV, s->HD, s->causal);
    if (memcmp(dk_only, dk, nk * sizeof(float))) fail_msg("%s: dk alone differs from dk with dq and dv", name);
    free(q); free(k); free(v); free(dout); free(out); free(lse); free(dq); free(dk); free(dv);
    free(r_out); free(r_lse); free(r_dq); free(r_dk); free(r_dv); free(dk_only);
}

static void test_attention_tiles(void **state) {
    (void)state;
    int T = 150;  // tiles of 64, 64 and 22 rows
    int *seg = xmalloc(2 * (size_t)T * sizeof(int));
    // segments end at 50, 70 (across the first tile edge) and 140; the second batch row is one segment
    for (int i = 0; i < T; i++) seg[i] = i < 50 ? 0 : i < 70 ? 1 : i < 140 ? 2 : 3;
    for (int i = 0; i < T; i++) seg[T + i] = 7;
    // one kv head and B = 1: three key chunks, so dq goes through the chunk buffers
    check_attention(&(Shape){1, T, 4, 1, 32, 1, NULL}, "causal MQA HD 32, 3 dq chunks");
    check_attention(&(Shape){2, T, 6, 2, 19, 0, seg}, "full + seg GQA HD 19");
    check_attention(&(Shape){2, T, 4, 2, 64, 1, seg}, "causal + seg HD 64");
    check_attention(&(Shape){1, 64, 2, 2, 16, 1, NULL}, "causal one tile exactly");
    check_attention(&(Shape){1, 65, 3, 1, 8, 0, NULL}, "full 64 + 1");
    free(seg);
}

// the backward's results do not depend on the thread count (the chunks follow the shapes)
static void test_attention_threads(void **state) {
    (void)state;
    Shape s = {1, 200, 4, 2, 24, 1, NULL};
    size_t nq = (size_t)s.T * s.NH * s.HD, nk = (size_t)s.T * s.NKV * s.HD;
    float *q = randv(nq, -1, 1), *k = randv(nk, -1, 1), *v = randv(nk, -1, 1), *dout = randv(nq, -1, 1);
    float *out = test_nanv(nq), *lse = test_nanv((size_t)s.NH * s.T), *g[2][3];
    int threads = omp_get_max_threads();
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(r ? 3 : 1);
        K->attention_forward(out, lse, q, k, v, NULL, 1, s.T, s.NH, s.NKV, s.HD, 1);
        g[r][0] = test_nanv(nq); g[r][1] = test_nanv(nk); g[r][2] = test_nanv(nk);
        K->attention_backward(g[r][0], g[r][1], g[r][2], dout, q, k, v, out, lse, NULL, 1, s.T, s.NH, s.NKV, s.HD, 1);
    }
    omp_set_num_threads(threads);
    size_t n[3] = {nq, nk, nk};
    for (int i = 0; i < 3; i++) {
        if (memcmp(g[0][i], g[1][i], n[i] * sizeof(float))) fail_msg("attention_backward output %d differs at 1 and 3 threads", i);
        free(g[0][i]); free(g[1][i]);
    }
    free(q); free(k); free(v); free(dout); free(out); free(lse);
}

// T = 1: each query sees one key, out = v, and D = dout . out is summed exactly as dP = dout . v,
// so dS = 0 and dq, dk are exactly zero (the CUDA backend's comparison relies on it)
static void test_attention_single_key(void **state) {
    (void)state;
    int B = 2, NH = 4, NKV = 2, HD = 64;
    size_t nq = (size_t)B * NH * HD, nk = (size_t)B * NKV * HD;
    float *q = randv(nq, -1, 1), *k = randv(nk, -1, 1), *v = randv(nk, -1, 1), *dout = randv(nq, -1, 1);
    float *out = test_nanv(nq), *lse = test_nanv((size_t)B * NH), *dq = test_nanv(nq), *dk = test_nanv(nk), *dv = test_nanv(nk);
    K->attention_forward(out, lse, q, k, v, NULL, B, 1, NH, NKV, HD, 1);
    K->attention_backward(dq, dk, dv, dout, q, k, v, out, lse, NULL, B, 1, NH, NKV, HD, 1);
    for (size_t i = 0; i < nq; i++)
        if (dq[i] != 0.0f) fail_msg("T = 1: dq[%zu] = %g, not 0", i, (double)dq[i]);
    for (size_t i = 0; i < nk; i++)
        if (dk[i] != 0.0f) fail_msg("T = 1: dk[%zu] = %g, not 0", i, (double)dk[i]);
    free(q); free(k); free(v); free(dout); free(out); free(lse); free(dq); free(dk); free(dv);
}

// ---------------------------------------------------------------- tile GEMM, exp

static void test_tile_gemm(void **state) {
    (void)state;
    int dims[][3] = {{64, 64, 64}, {1, 16, 7}, {13, 37, 5}, {6, 15, 64}, {7, 33, 1}, {64, 19, 150}};
    for (size_t c = 0; c < sizeof dims / sizeof dims[0]; c++) {
        int M = dims[c][0], N = dims[c][1], Kd = dims[c][2];
        size_t lda = Kd + 3, ldb = N + 5, ldc = N + 2;  // leading dimensions wider than the matrices
        float *A = randv(M * lda, -1, 1), *B = randv(Kd * ldb, -1, 1), *C = randv(M * ldc, -1, 1);
        float *ref = xmalloc(M * ldc * sizeof(float));
        for (int m = 0; m < M; m++)
            for (size_t n = 0; n < ldc; n++) {
                double acc = C[m * ldc + n];
                if ((int)n < N)
                    for (int k = 0; k < Kd; k++) acc += (double)A[m * lda + k] * B[k * ldb + n];
                ref[m * ldc + n] = (float)acc;  // columns past N stay as they were
            }
        float *row = xmalloc(ldc * sizeof(float));
        memcpy(row, C, ldc * sizeof(float));
        tile_gemm(C, ldc, A, lda, B, ldb, M, N, Kd, 1);
        char what[64];
        snprintf(what, sizeof what, "tile_gemm %dx%dx%d", M, N, Kd);
        test_expect_close(what, C, ref, M * ldc, TOL);
        // row 0 alone gives the bits it got in a block of rows (attention_cached relies on it)
        tile_gemm(row, ldc, A, lda, B, ldb, 1, N, Kd, 1);
        if (memcmp(row, C, ldc * sizeof(float))) fail_msg("%s: row 0 alone differs from row 0 among %d", what, M);
        // acc 0 overwrites: the bits of accumulating onto zeros
        float *zero = xcalloc(M * ldc, sizeof(float)), *over = randv(M * ldc, -1, 1);
        tile_gemm(zero, ldc, A, lda, B, ldb, M, N, Kd, 1);
        tile_gemm(over, ldc, A, lda, B, ldb, M, N, Kd, 0);
        for (int mm = 0; mm < M; mm++)
            if (memcmp(zero + mm * ldc, over + mm * ldc, N * sizeof(float))) fail_msg("%s: acc 0 differs from += onto zeros", what);
        free(zero); free(over);
        free(row);
        free(A); free(B); free(C); free(ref);
    }
}

static void test_exp_vec(void **state) {
    (void)state;
    double worst = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.0f + 175.0f * i / 200000.0f;
        double e = fabs((double)exp_vec(x) - exp((double)x)) / exp((double)x);
        if (e > worst) worst = e;
    }
    print_message("    exp_vec over [-87, 88]: max rel err %.2e (float epsilon %.2e)\n", worst, (double)FLT_EPSILON);
    if (!(worst < 2.5 * FLT_EPSILON)) fail_msg("exp_vec: rel err %.3e", worst);
    if (exp_vec(0.0f) != 1.0f) fail_msg("exp_vec(0) = %.9g, not 1", (double)exp_vec(0.0f));
    if (exp_vec(-INFINITY) != 0.0f || exp_vec(-100.0f) != 0.0f) fail_msg("exp_vec: -inf and -100 must give 0");
    if (!isnan(exp_vec(NAN))) fail_msg("exp_vec(NaN) is not NaN");
}

// ---------------------------------------------------------------- matmul split among the threads

// shapes over the split threshold, split by rows (N >= OC) and by columns (OC > N), with bias
static void test_matmul_split(void **state) {
    (void)state;
    int dims[][3] = {{300, 200, 150}, {40, 300, 700}};
    for (int c = 0; c < 2; c++) {
        int N = dims[c][0], C = dims[c][1], OC = dims[c][2];
        float *inp = randv((size_t)N * C, -1, 1), *w = randv((size_t)OC * C, -1, 1), *bias = randv(OC, -1, 1);
        float *dout = randv((size_t)N * OC, -1, 1), *out = test_nanv((size_t)N * OC), *ref = xmalloc((size_t)N * OC * sizeof(float));
        float *dinp = xcalloc((size_t)N * C, sizeof(float)), *dw = xcalloc((size_t)OC * C, sizeof(float));
        float *rdinp = xmalloc((size_t)N * C * sizeof(float)), *rdw = xmalloc((size_t)OC * C * sizeof(float));
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) {
                double acc = bias[o];
                for (int i = 0; i < C; i++) acc += (double)inp[(size_t)n * C + i] * w[(size_t)o * C + i];
                ref[(size_t)n * OC + o] = (float)acc;
            }
        for (int n = 0; n < N; n++)
            for (int i = 0; i < C; i++) {
                double acc = 0;
                for (int o = 0; o < OC; o++) acc += (double)dout[(size_t)n * OC + o] * w[(size_t)o * C + i];
                rdinp[(size_t)n * C + i] = (float)acc;
            }
        for (int o = 0; o < OC; o++)
            for (int i = 0; i < C; i++) {
                double acc = 0;
                for (int n = 0; n < N; n++) acc += (double)dout[(size_t)n * OC + o] * inp[(size_t)n * C + i];
                rdw[(size_t)o * C + i] = (float)acc;
            }
        K->matmul_forward(out, inp, w, bias, N, C, OC, 1.0f, 0);
        K->matmul_backward(dinp, dw, NULL, dout, inp, w, N, C, OC, 1.0f);
        char what[64];
        snprintf(what, sizeof what, "matmul %dx%dx%d forward + bias", N, C, OC);
        test_expect_close(what, out, ref, (size_t)N * OC, TOL);
        snprintf(what, sizeof what, "matmul %dx%dx%d dinp", N, C, OC);
        test_expect_close(what, dinp, rdinp, (size_t)N * C, TOL);
        snprintf(what, sizeof what, "matmul %dx%dx%d dw", N, C, OC);
        test_expect_close(what, dw, rdw, (size_t)OC * C, TOL);
        free(inp); free(w); free(bias); free(dout); free(out); free(ref); free(dinp); free(dw); free(rdinp); free(rdw);
    }
}

// ---------------------------------------------------------------- the OpenBLAS kernel

static void test_blas_core_choice(void **state) {
    (void)state;
    struct { const char *picked; CpuIsa have; const char *want; } cases[] = {
        {"Prescott", CPU_ISA_AVX512, "SkylakeX"},  // 0.3.21 on Emerald Rapids
        {"PRESCOTT", CPU_ISA_AVX2, "Haswell"},
        {"Haswell", CPU_ISA_AVX512, "SkylakeX"},
        {"Nehalem", CPU_ISA_AVX, "Sandybridge"},
        {"SkylakeX", CPU_ISA_AVX512, NULL},
        {"Cooperlake", CPU_ISA_AVX512, NULL},
        {"Zen", CPU_ISA_AVX2, NULL},
        {"SkylakeX", CPU_ISA_AVX2, NULL},          // never down
        {"Prescott", CPU_ISA_SSE, NULL},
        {"Prescott", CPU_ISA_UNKNOWN, NULL},       // not x86-64: nothing is forced
        {"neoversen1", CPU_ISA_UNKNOWN, NULL},
        {"SomeFutureCore", CPU_ISA_AVX512, NULL},  // a name not known is left alone
        {NULL, CPU_ISA_AVX512, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *got = blas_core_upgrade(cases[i].picked, cases[i].have);
        if ((got == NULL) != (cases[i].want == NULL) || (got && strcmp(got, cases[i].want)))
            fail_msg("blas_core_upgrade(%s, %s) = %s, want %s", cases[i].picked ? cases[i].picked : "NULL",
                     cpu_isa_name(cases[i].have), got ? got : "NULL", cases[i].want ? cases[i].want : "NULL");
    }
    char line[512];
    cpu_blas_describe(line, sizeof line);
    print_message("    %s\n", line);
    if (!strstr(line, "OpenBLAS") || !strstr(line, "kernel ")) fail_msg("cpu_blas_describe: %s", line);
}

int main(int argc, char **argv) {
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_attention_tiles),
        cmocka_unit_test(test_attention_threads),
        cmocka_unit_test(test_attention_single_key),
        cmocka_unit_test(test_tile_gemm),
        cmocka_unit_test(test_exp_vec),
        cmocka_unit_test(test_matmul_split),
        cmocka_unit_test(test_blas_core_choice),
    };
    struct CMUnitTest sel[sizeof all / sizeof all[0]];
    size_t n = test_select(sel, all, sizeof all / sizeof all[0], argc > 1 ? argv[1] : NULL);
    return _cmocka_run_group_tests("kernels_cpu", sel, n, setup, NULL);
}
