// matmul.cu: the linear layer on cuBLASLt: bf16 inputs, fp32 accumulation (CUBLAS_COMPUTE_32F),
// bf16 output for activations and fp32 output for weight gradients (+=, beta = 1; beta = 0 for the
// first writer of a gradient in the step, grad_first.cu).
//
// Row-major <-> column-major: cuBLAS sees a row-major (R, C) matrix as a column-major (C, R) one,
// so each product is written for the transposes (llm.c's trick):
//   forward  out (N,OC) = inp @ w^T    ->  D (OC,N) = op_T(w: C x OC) * (inp: C x N)
//   dinp     (N,C)   += dout @ w       ->  D (C,N)  = (w: C x OC) * (dout: OC x N)
//   dw       (OC,C)  += dout^T @ inp   ->  D (C,OC) = (inp: C x N) * op_T(dout: OC x N)
// The bias rides in the epilogue (CUBLASLT_EPILOGUE_BIAS adds bias[m] to row m of the
// column-major D, i.e. to each column of out); dbias is a deterministic column sum (colsum.cu).
//
// Each distinct problem (shape, transposes, types, pointer alignment, epilogue) gets its
// cuBLASLt descriptors and the heuristic's first algorithm once; the plan is cached, so a run
// always uses the same algorithm for the same shape (determinism, and resume gives the same
// bits). Split-K is excluded (CUBLASLT_REDUCTION_SCHEME_NONE) unless SVLM_CUBLASLT_SPLITK=1.
// Where cuBLASLt has no algorithm (odd leading dimensions such as LoRA rank 3), or with
// SVLM_MATMUL_FALLBACK=1, a simple tiled kernel computes the same column-major GEMM.
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/common.cuh"

#ifdef SVLM_CUDA_EMU
#include "tests/gpu/emu/cublaslt_emu.h"  // the emulator's cuBLASLt: this file's cuBLASLt path runs there too
#else
#include <cublasLt.h>
#endif

// one GEMM in cuBLAS (column-major) terms: D (m,n) = alpha op(A) op(B) + beta D + bias[m]
typedef struct {
    int transa, transb, m, n, k;
    const bf16 *A;
    int lda;
    const bf16 *B;
    int ldb;
    void *D;
    int ldd;
    int d_f32;        // D is fp32 (weight gradients), else bf16
    const bf16 *bias; // (m) or NULL
    float alpha, beta;
    int batch;            // > 1: a strided batch (split-K's slices), members sa, sb, sd elements apart
    int64_t sa, sb, sd;
} Gemm;

// ---------------------------------------------------------------- reference kernel (fallback)

#define FB_T 32
// block (32, 8): thread (tx, ty) computes D[m0 + tx, n0 + ty + 8r] for r < 4, summing k in order
template <typename OutT>
__global__ void __launch_bounds__(256) gemm_fallback_kernel(Gemm g) {
    __shared__ float As[FB_T][FB_T + 1];  // [kk][i]
    __shared__ float Bs[FB_T][FB_T + 1];  // [kk][j]
    int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 32 + tx;
    int m0 = blockIdx.x * FB_T, n0 = blockIdx.y * FB_T;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k0 = 0; k0 < g.k; k0 += FB_T) {
        for (int e = tid; e < FB_T * FB_T; e += 256) {
            int a = e % FB_T, b = e / FB_T;
            // A: element (row i, col kk) of op(A); load with the contiguous index fastest
            int i = g.transa ? m0 + b : m0 + a, kk = g.transa ? k0 + a : k0 + b;
            float va = 0.0f;
            if (i < g.m && kk < g.k)
                va = bf2f(g.transa ? g.A[(size_t)i * g.lda + kk] : g.A[(size_t)kk * g.lda + i]);
            As[kk - k0][i - m0] = va;
            int j = g.transb ? n0 + a : n0 + b, kb = g.transb ? k0 + b : k0 + a;
            float vb = 0.0f;
            if (j < g.n && kb < g.k)
                vb = bf2f(g.transb ? g.B[(size_t)kb * g.ldb + j] : g.B[(size_t)j * g.ldb + kb]);
            Bs[kb - k0][j - n0] = vb;
        }
        __syncthreads();
        for (int kk = 0; kk < FB_T; kk++) {
            float a = As[kk][tx];
            for (int r = 0; r < 4; r++) acc[r] += a * Bs[kk][ty + 8 * r];
        }
        __syncthreads();
    }
    int i = m0 + tx;
    if (i >= g.m) return;
    for (int r = 0; r < 4; r++) {
        int j = n0 + ty + 8 * r;
        if (j >= g.n) continue;
        OutT *d = (OutT *)g.D + (size_t)j * g.ldd + i;
        float v = g.alpha * acc[r];
        if (g.beta != 0.0f) {
            float old;
            if constexpr (sizeof(OutT) == 4) old = *(const float *)d;
            else old = bf2f(*(const bf16 *)d);
            v += g.beta * old;
        }
        if (g.bias) v += bf2f(g.bias[i]);
        if constexpr (sizeof(OutT) == 4) *(float *)d = v;
        else *(bf16 *)d = f2bf(v);
    }
}

static void gemm_fallback(const Gemm *g) {
    dim3 grid(ceil_div_u(g->m, FB_T), ceil_div_u(g->n, FB_T)), block(32, 8);
    CHECK(grid.y <= 65535, "fallback GEMM with n = %d is too large", g->n);
    if (g->d_f32) LAUNCH(grid, block, gemm_fallback_kernel<float>)(*g);
    else LAUNCH(grid, block, gemm_fallback_kernel<bf16>)(*g);
    cudaCheckLaunch();
}

// out (rows, cols), rows ld apart, += bias (cols), for a bias the epilogue could not take
__global__ void add_bias_kernel(bf16 *out, const bf16 *bias, int rows, int cols, int ld) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * cols) return;
    size_t o = i / cols * ld + i % cols;
    out[o] = f2bf(bf2f(out[o]) + bf2f(bias[i % cols]));
}

// ---------------------------------------------------------------- cuBLASLt

static int g_force_fallback;
static int g_splitk_off;  // SVLM_MATMUL_SPLITK=0
static long g_n_splitk;
static long g_n_cublaslt, g_n_fallback;  // GEMMs run by each path (cuda_matmul_counts)

static cublasLtHandle_t g_lt;
static void *g_workspace;
static const size_t WORKSPACE_BYTES = (size_t)32 << 20;  // what cuBLAS recommends for Hopper
static uint32_t g_reduction_mask = CUBLASLT_REDUCTION_SCHEME_NONE;

static void cublas_check_fail(cublasStatus_t s, const char *file, int line, const char *expr) {
    check_fail(file, line, expr,
               "cuBLAS error %d (%s). Set SVLM_MATMUL_FALLBACK=1 to run every matmul on svlm's own "
               "kernel and see whether cuBLASLt is the cause",
               (int)s, cublasGetStatusString(s));
}
#define cublasCheck(call)                                                       \
    do {                                                                        \
        cublasStatus_t s_ = (call);                                             \
        if (s_ != CUBLAS_STATUS_SUCCESS) cublas_check_fail(s_, __FILE__, __LINE__, #call); \
    } while (0)

typedef struct {
    int transa, transb, m, n, k, lda, ldb, ldd, d_f32, bias, batch;
    uint32_t align_a, align_b, align_d;
    int64_t sa, sb, sd;
} PlanKey;

typedef struct {
    PlanKey key;
    int ok;  // 0: cuBLASLt has no algorithm, use the fallback
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} Plan;

// Plans by shape in an open-addressing table. Batches padded to their longest row give a new N
// for most steps, so the table fills up in long runs: it is then emptied and refilled (planning
// a shape costs one heuristic query, tens of microseconds).
#define MAX_PLANS 512
#define PLAN_SLOTS 1024  // a power of two, twice MAX_PLANS so probes stay short
static Plan *g_plans;
static int g_n_plans;
static int16_t *g_slot;  // (PLAN_SLOTS) index into g_plans, -1 when empty

static uint32_t key_hash(const PlanKey *k) {
    const unsigned char *b = (const unsigned char *)k;
    uint32_t h = 2166136261u;  // FNV-1a
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ b[i]) * 16777619u;
    return h;
}

static void plans_clear(void) {
    for (int i = 0; i < g_n_plans; i++) {
        Plan *p = &g_plans[i];
        cublasCheck(cublasLtMatrixLayoutDestroy(p->a));
        cublasCheck(cublasLtMatrixLayoutDestroy(p->b));
        cublasCheck(cublasLtMatrixLayoutDestroy(p->d));
        cublasCheck(cublasLtMatmulDescDestroy(p->desc));
    }
    g_n_plans = 0;
    for (int i = 0; i < PLAN_SLOTS; i++) g_slot[i] = -1;
}

// largest power of two dividing the address, at most 256 (what the heuristic may assume)
static uint32_t alignment_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && (a & (al - 1))) al >>= 1;
    return al;
}

static Plan *plan_for(const Gemm *g) {
    PlanKey key;
    memset(&key, 0, sizeof key);  // padding too, so memcmp compares keys
    key.transa = g->transa; key.transb = g->transb;
    key.m = g->m; key.n = g->n; key.k = g->k;
    key.lda = g->lda; key.ldb = g->ldb; key.ldd = g->ldd;
    key.d_f32 = g->d_f32;
    key.bias = g->bias != NULL;
    key.batch = g->batch > 1 ? g->batch : 1;
    if (key.batch > 1) {
        key.sa = g->sa;
        key.sb = g->sb;
        key.sd = g->sd;
    }
    key.align_a = alignment_of(g->A);
    key.align_b = alignment_of(g->B);
    key.align_d = alignment_of(g->D);
    uint32_t h = key_hash(&key) & (PLAN_SLOTS - 1);
    for (; g_slot[h] >= 0; h = (h + 1) & (PLAN_SLOTS - 1))
        if (memcmp(&g_plans[g_slot[h]].key, &key, sizeof key) == 0) return &g_plans[g_slot[h]];
    if (g_n_plans == MAX_PLANS) {  // full: start over (the queued matmuls hold no reference to a plan)
        plans_clear();
        h = key_hash(&key) & (PLAN_SLOTS - 1);
    }
    g_slot[h] = (int16_t)g_n_plans;
    Plan *p = &g_plans[g_n_plans++];
    memset(p, 0, sizeof *p);
    p->key = key;

    cublasOperation_t ta = g->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g->transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cudaDataType_t dt = g->d_f32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasCheck(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (g->bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bt = CUDA_R_16BF;
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias,
                                                   sizeof g->bias));
    }
    // stored shapes, before op(): A is (k, m) when transposed, B is (n, k) when transposed
    cublasCheck(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, g->transa ? g->k : g->m, g->transa ? g->m : g->k, g->lda));
    cublasCheck(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, g->transb ? g->n : g->k, g->transb ? g->k : g->n, g->ldb));
    cublasCheck(cublasLtMatrixLayoutCreate(&p->d, dt, g->m, g->n, g->ldd));
    if (key.batch > 1) {
        int32_t bc = key.batch;
        cublasLtMatrixLayout_t ls[3] = {p->a, p->b, p->d};
        int64_t st[3] = {key.sa, key.sb, key.sd};
        for (int i = 0; i < 3; i++) {
            cublasCheck(cublasLtMatrixLayoutSetAttribute(ls[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
            cublasCheck(cublasLtMatrixLayoutSetAttribute(ls[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st[i],
                                                         sizeof st[i]));
        }
    }

    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = WORKSPACE_BYTES;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                     &g_reduction_mask, sizeof g_reduction_mask));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_a, sizeof key.align_a));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_b, sizeof key.align_b));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_d, sizeof key.align_d));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_d, sizeof key.align_d));
    cublasLtMatmulHeuristicResult_t res;
    memset(&res, 0, sizeof res);
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g_lt, p->desc, p->a, p->b, p->d, p->d, pref, 1, &res, &found);
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    p->ok = st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS &&
            res.workspaceSize <= WORKSPACE_BYTES;
    if (p->ok) p->algo = res.algo;
    if (getenv("SVLM_MATMUL_VERBOSE"))
        fprintf(stderr, "svlm: matmul plan m=%d n=%d k=%d op=%c%c ld=%d,%d,%d %s%s align=%u,%u,%u: %s\n", g->m,
                g->n, g->k, g->transa ? 'T' : 'N', g->transb ? 'T' : 'N', g->lda, g->ldb, g->ldd,
                g->d_f32 ? "f32" : "bf16", g->bias ? " bias" : "", key.align_a, key.align_b, key.align_d,
                p->ok ? "cuBLASLt" : "fallback kernel");
    return p;
}

void cuda_matmul_init(void) {
    const char *f = getenv("SVLM_MATMUL_FALLBACK");
    g_force_fallback = f && *f && strcmp(f, "0") != 0;
    cublasCheck(cublasLtCreate(&g_lt));
    cudaCheck(cudaMalloc(&g_workspace, WORKSPACE_BYTES));
    cuda_track(g_workspace, WORKSPACE_BYTES);
    g_plans = (Plan *)xcalloc(MAX_PLANS, sizeof(Plan));
    g_slot = (int16_t *)xmalloc(PLAN_SLOTS * sizeof(int16_t));
    for (int i = 0; i < PLAN_SLOTS; i++) g_slot[i] = -1;
    const char *sk = getenv("SVLM_MATMUL_SPLITK");
    g_splitk_off = sk && !strcmp(sk, "0");
    const char *s = getenv("SVLM_CUBLASLT_SPLITK");
    if (s && *s && strcmp(s, "0") != 0) g_reduction_mask = CUBLASLT_REDUCTION_SCHEME_MASK;
}

// which path the GEMMs took so far: the tests check that aligned shapes reach cuBLASLt (a silent
// fallback would be correct but slow)
extern "C" void cuda_matmul_counts(long *cublaslt, long *fallback) {
    *cublaslt = g_n_cublaslt;
    *fallback = g_n_fallback;
}

// ---------------------------------------------------------------- split-K

// A long-K product with a small output (LoRA weight gradients: K = every position of the batch;
// the vocabulary chunk's input gradient: K = the vocabulary) is a few output tiles: one GEMM leaves
// most SMs idle. It runs instead as a strided batch of S GEMMs over equal K slices (a multiple of 8
// long, so every slice stays 16-byte aligned) into fp32 partials in scratch, the few K left over as
// one more GEMM, then a kernel adds the partials in slice order into D. S depends only on the shape
// and the number of SMs, and nothing is atomic: the same bits every run. SVLM_MATMUL_SPLITK=0 turns it off.
#define SPLITK_MIN_K 2048
#define SPLITK_MAX 8
#define SPLITK_MAX_OUT ((size_t)1 << 19)  // m*n of the largest output split (LoRA's: r 64 x 4864)

size_t cuda_splitk_scratch(void) { return (size_t)(SPLITK_MAX + 1) * SPLITK_MAX_OUT * sizeof(float); }

extern "C" long cuda_matmul_splitk_calls(void) { return g_n_splitk; }

static int splitk_slices(const Gemm *g) {
    if (g_splitk_off || g_force_fallback || g->bias || g->batch > 1 || g->k < SPLITK_MIN_K) return 1;
    if ((size_t)g->m * g->n > SPLITK_MAX_OUT) return 1;
    size_t tiles = (size_t)ceil_div_u(g->m, 128) * ceil_div_u(g->n, 128), sms = (size_t)cuda_num_sms();
    if (tiles * 2 > sms) return 1;  // already half a wave or more
    size_t s = sms / tiles, by_k = (size_t)g->k / (SPLITK_MIN_K / 2);
    if (s > by_k) s = by_k;
    if (s > SPLITK_MAX) s = SPLITK_MAX;
    return s >= 2 ? (int)s : 1;
}

// D = alpha sum_s P_s + beta D over the (m, n) output at ldd; P_s (m, n) dense, s < S
template <typename OutT>
__global__ void splitk_reduce_kernel(OutT *d, const float *part, int S, int m, int n, int ldd, float beta) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, mn = (size_t)m * n;
    if (i >= mn) return;
    float s = 0.0f;
    for (int k = 0; k < S; k++) s += part[(size_t)k * mn + i];  // in slice order
    size_t o = (size_t)(i / m) * ldd + i % m;
    if (beta != 0.0f) {
        float old;
        if constexpr (sizeof(OutT) == 4) old = *(const float *)&d[o];
        else old = bf2f(*(const bf16 *)&d[o]);
        s += beta * old;
    }
    if constexpr (sizeof(OutT) == 4) *(float *)&d[o] = s;
    else *(bf16 *)&d[o] = f2bf(s);
}

static void gemm(const Gemm *g);

// 1 when done, 0 when cuBLASLt has no batched algorithm for it (nothing written: run it whole)
static int gemm_splitk(const Gemm *g, int S) {
    int kc = (g->k / S) & ~7, tail = g->k - S * kc;
    size_t mn = (size_t)g->m * g->n;
    float *part = (float *)cuda_scratch(SCRATCH_SPLITK, cuda_splitk_scratch());
    Gemm b = *g;
    b.k = kc;
    b.D = part;
    b.ldd = g->m;
    b.d_f32 = 1;
    b.beta = 0.0f;
    b.batch = S;
    // a K slice further on: down the rows of a stored (k, .) operand, across the columns of a (., k) one
    b.sa = g->transa ? kc : (int64_t)kc * g->lda;
    b.sb = g->transb ? (int64_t)kc * g->ldb : kc;
    b.sd = (int64_t)mn;
    Plan *p = plan_for(&b);
    if (!p->ok) return 0;
    cublasStatus_t st = cublasLtMatmul(g_lt, p->desc, &b.alpha, b.A, p->a, b.B, p->b, &b.beta, b.D, p->d, b.D, p->d,
                                       &p->algo, g_workspace, WORKSPACE_BYTES, cuda_stream());
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE) {
        p->ok = 0;
        return 0;
    }
    cublasCheck(st);
    if (tail > 0) {  // the K left over, into one partial more
        Gemm t = *g;
        t.k = tail;
        t.A = g->A + (size_t)S * b.sa;
        t.B = g->B + (size_t)S * b.sb;
        t.D = part + (size_t)S * mn;
        t.ldd = g->m;
        t.d_f32 = 1;
        t.beta = 0.0f;
        t.batch = 1;
        gemm(&t);
    }
    int np = S + (tail > 0);
    if (g->d_f32)
        LAUNCH(ceil_div_u(mn, 256), 256, splitk_reduce_kernel<float>)((float *)g->D, part, np, g->m, g->n, g->ldd, g->beta);
    else
        LAUNCH(ceil_div_u(mn, 256), 256, splitk_reduce_kernel<bf16>)((bf16 *)g->D, part, np, g->m, g->n, g->ldd, g->beta);
    cudaCheckLaunch();
    g_n_splitk++;
    g_n_cublaslt++;
    return 1;
}

static void gemm(const Gemm *g) {
    if (g->m <= 0 || g->n <= 0) return;
    int S = splitk_slices(g);
    if (S > 1 && gemm_splitk(g, S)) return;
    if (g->k <= 0 || g_force_fallback) {
        g_n_fallback++;
        gemm_fallback(g);
        return;
    }
    Gemm gg = *g;
    // the epilogue takes only a bias as aligned as the matrices; otherwise a kernel adds it
    const bf16 *late_bias = NULL;
    if (gg.bias && ((uintptr_t)gg.bias & 15)) {
        late_bias = gg.bias;
        gg.bias = NULL;
    }
    Plan *p = plan_for(&gg);
    if (!p->ok) {
        g_n_fallback++;
        gemm_fallback(g);
        return;
    }
    if (gg.bias)
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &gg.bias, sizeof gg.bias));
    cublasStatus_t st = cublasLtMatmul(g_lt, p->desc, &gg.alpha, gg.A, p->a, gg.B, p->b, &gg.beta, gg.D, p->d, gg.D,
                                       p->d, &p->algo, g_workspace, WORKSPACE_BYTES, cuda_stream());
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE) {
        // an algorithm the heuristic offered but that refuses the call: this shape runs on the
        // fallback kernel from now on (nothing was written, so running it now is exact)
        warn("cuBLASLt refused a matmul (m=%d n=%d k=%d, %s); using svlm's own kernel for this shape", gg.m, gg.n,
             gg.k, cublasGetStatusString(st));
        p->ok = 0;
        g_n_fallback++;
        gemm_fallback(g);
        return;
    }
    cublasCheck(st);
    g_n_cublaslt++;
    if (late_bias) {
        size_t total = (size_t)gg.m * gg.n;
        LAUNCH(ceil_div_u(total, 256), 256, add_bias_kernel)((bf16 *)gg.D, late_bias, gg.n, gg.m, gg.ldd);
        cudaCheckLaunch();
    }
}

// Row strides (the _ld ops): in cuBLAS terms a row-major matrix with rows ld apart is a
// column-major one with leading dimension ld, so a column slice of a wider buffer is just a
// pointer and an ld; the plan table keys on the lds.
void cuda_matmul_forward_ld(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int N, int C, int OC,
                            float alpha, int accumulate, int ld_out, int ld_inp) {
    if (N <= 0 || OC <= 0) return;
    CHECK(ld_out >= OC && ld_inp >= C, "matmul_forward_ld: row strides %d, %d below %d, %d", ld_out, ld_inp, OC, C);
    Gemm g = {1, 0, OC, N, C, (const bf16 *)w, C, (const bf16 *)inp, ld_inp, out, ld_out, 0, (const bf16 *)bias,
              alpha, accumulate ? 1.0f : 0.0f, 1, 0, 0, 0};
    if (C <= 0) g.lda = g.ldb = 1;
    gemm(&g);
}

void cuda_matmul_forward(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int N, int C,
                         int OC, float alpha, int accumulate) {
    cuda_matmul_forward_ld(out, inp, w, bias, N, C, OC, alpha, accumulate, OC, C);
}

// dinp accumulates (beta 1) or, for the first writer of a gradient buffer, is overwritten (beta 0:
// no memset before it, one read of dinp less)
void cuda_matmul_backward_ld(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                             const act_t *w, int N, int C, int OC, float alpha, int set, int ld_out, int ld_inp) {
    if (N <= 0) return;
    CHECK(ld_out >= OC && ld_inp >= C, "matmul_backward_ld: row strides %d, %d below %d, %d", ld_out, ld_inp, OC, C);
    float beta = set ? 0.0f : 1.0f;
    if (OC <= 0) {  // an empty product: dinp = 0 when overwritten
        if (dinp && C > 0 && set) {
            CHECK(ld_inp == C, "matmul_backward_ld: an empty product into strided rows");
            cudaCheck(cudaMemsetAsync(dinp, 0, (size_t)N * C * sizeof(bf16), cuda_stream()));
        }
        return;
    }
    if (dinp && C > 0) {
        Gemm g = {0, 0, C, N, OC, (const bf16 *)w, C, (const bf16 *)dout, ld_out, dinp, ld_inp, 0, NULL, alpha, beta,
                  1, 0, 0, 0};
        gemm(&g);
    }
    if (dw && C > 0) {
        float wbeta = cuda_grad_first(dw, (size_t)OC * C) ? 0.0f : 1.0f;
        Gemm g = {0, 1, C, OC, N, (const bf16 *)inp, ld_inp, (const bf16 *)dout, ld_out, dw, C, 1, NULL, alpha, wbeta,
                  1, 0, 0, 0};
        gemm(&g);
    }
    if (dbias) cuda_colsum_bias(dbias, (const bf16 *)dout, N, OC, ld_out);
}

void cuda_matmul_backward(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                          const act_t *w, int N, int C, int OC, float alpha) {
    cuda_matmul_backward_ld(dinp, dw, dbias, dout, inp, w, N, C, OC, alpha, 0, OC, C);
}

void cuda_matmul_backward_set(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                              const act_t *w, int N, int C, int OC, float alpha) {
    cuda_matmul_backward_ld(dinp, dw, dbias, dout, inp, w, N, C, OC, alpha, 1, OC, C);
}
