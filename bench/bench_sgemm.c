// bench_sgemm.c: the GEMMs of a CPU training step timed two ways on the same cores: svlm's own split
// (kernels/cpu/matmul.c: the BLAS single-threaded, each GEMM's output cut in blocks among the
// OpenMP threads) and one BLAS call with the BLAS's own threads (openblas_set_num_threads). Run it
// against Debian's pthreads OpenBLAS and, through LD_LIBRARY_PATH, against its OpenMP build (whose
// threads are libgomp's, the pool svlm's OpenMP uses) to decide which threads the GEMMs.
//
//   build/bench_sgemm [reps]      (OMP_NUM_THREADS threads; prints one line per shape)
//
// The shapes are the mid preset's LLM and vision GEMMs at B=4 (1068 LLM rows, 1028 vision rows)
// after the fused q/k/v and gate/up projections, forward (NT), input gradient (NN) and LoRA
// weight gradient (TN, K = rows).
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/util.h"
#include "kernels/cpu/blas.h"
#include "kernels/kernels.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

typedef struct {
    const char *what;
    char op;      // 'f' forward out = inp @ w^T, 'd' dinp += dout @ w, 'w' dw += dout^T @ inp
    int N, C, OC;
} Shape;

static const Shape shapes[] = {
    {"llm q|k|v fwd", 'f', 1068, 512, 768},    {"llm o fwd", 'f', 1068, 512, 512},
    {"llm gate|up fwd", 'f', 1068, 512, 3072}, {"llm down fwd", 'f', 1068, 1536, 512},
    {"llm q|k|v dinp", 'd', 1068, 512, 768},   {"llm gate|up dinp", 'd', 1068, 512, 3072},
    {"llm down dinp", 'd', 1068, 1536, 512},   {"llm lora A x3 fwd", 'f', 1068, 512, 48},
    {"llm lora B fwd", 'f', 1068, 16, 512},    {"llm lora dA x3", 'w', 1068, 512, 48},
    {"llm lora dB", 'w', 1068, 16, 512},       {"vocab fwd", 'f', 330, 512, 16000},
    {"vocab dinp", 'd', 330, 512, 16000},      {"vit qkv fwd", 'f', 1028, 384, 384},
    {"vit fc1 fwd", 'f', 1028, 384, 1536},     {"vit fc2 fwd", 'f', 1028, 1536, 384},
};

// one BLAS call, the library's threads
static void blas_call(const Shape *s, float *inp, float *w, float *out) {
    if (s->op == 'f')
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->N, s->OC, s->C, 1.0f, inp, s->C, w, s->C, 0.0f, out, s->OC);
    else if (s->op == 'd')
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->N, s->C, s->OC, 1.0f, out, s->OC, w, s->C, 1.0f, inp, s->C);
    else
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->OC, s->C, s->N, 1.0f, out, s->OC, inp, s->C, 1.0f, w, s->C);
}

static void svlm_call(const Kernels *k, const Shape *s, float *inp, float *w, float *out) {
    if (s->op == 'f') k->matmul_forward(out, inp, w, NULL, s->N, s->C, s->OC, 1.0f, 0);
    else if (s->op == 'd') k->matmul_backward(inp, NULL, NULL, out, NULL, w, s->N, s->C, s->OC, 1.0f);
    else k->matmul_backward(NULL, w, NULL, out, inp, NULL, s->N, s->C, s->OC, 1.0f);
}

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);  // the programs' thread policy (and OPENBLAS_CORETYPE), as bench_step
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    int nt = omp_get_max_threads();
    // sets the BLAS single-threaded: in OpenBLAS's OpenMP build that is omp_set_num_threads(1),
    // svlm's own thread count too (its calls inside a parallel region run single-threaded anyway)
    const Kernels *k = kernels_cpu();
    int omp_build = openblas_get_parallel() == 2;
    printf("%s; %s build, core %s, %d threads, min of %d runs\n", openblas_get_config(),
           omp_build ? "OpenMP" : openblas_get_parallel() == 1 ? "pthreads" : "sequential",
           openblas_get_corename(), nt, reps);
    printf("%-20s %5s %5s %6s  %12s %12s\n", "shape", "N", "C", "OC", "svlm split", "BLAS threads");
    double tot[2] = {0, 0};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const Shape *s = &shapes[i];
        size_t ni = (size_t)s->N * s->C, nw = (size_t)s->OC * s->C, no = (size_t)s->N * s->OC;
        float *inp = xmalloc(ni * 4), *w = xmalloc(nw * 4), *out = xmalloc(no * 4);
        for (size_t j = 0; j < ni; j++) inp[j] = (float)(j % 7) * 0.01f;
        for (size_t j = 0; j < nw; j++) w[j] = (float)(j % 5) * 0.01f;
        for (size_t j = 0; j < no; j++) out[j] = (float)(j % 3) * 0.01f;
        double best[2] = {1e30, 1e30};
        for (int mode = 0; mode < 2; mode++) {
            // svlm's split: the BLAS on one thread per call (the OpenMP build: nt OpenMP threads,
            // its calls inside svlm's parallel regions sequential); BLAS threads: nt for one call
            openblas_set_num_threads(mode || omp_build ? nt : 1);
            omp_set_num_threads(nt);
            for (int r = 0; r < reps + 2; r++) {
                double t0 = now();
                if (mode) blas_call(s, inp, w, out);
                else svlm_call(k, s, inp, w, out);
                double t = now() - t0;
                if (r >= 2 && t < best[mode]) best[mode] = t;  // two warm-up calls
            }
        }
        double gf = 2.0 * s->N * s->C * s->OC / 1e9;
        printf("%-20s %5d %5d %6d  %7.1f GF/s %7.1f GF/s\n", s->what, s->N, s->C, s->OC, gf / best[0], gf / best[1]);
        tot[0] += best[0];
        tot[1] += best[1];
        free(inp);
        free(w);
        free(out);
    }
    printf("%-20s %19s  %9.2f ms %9.2f ms\n", "sum of the minima", "", 1e3 * tot[0], 1e3 * tot[1]);
    return 0;
}
