// cublaslt_emu.cpp: the emulated cuBLASLt of cublaslt_emu.h. Device memory is host memory here, so
// a matmul is a host loop: fp32 sums over k in order (the library's order differs in the last
// bits), alpha and beta in fp32, the bias added last, D rounded to its type.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/gpu/emu/cublaslt_emu.h"
#include "tests/gpu/emu/cuda_emu.h"  // the counters

extern "C" uint16_t f32_to_bf16(float f);
extern "C" float bf16_to_f32(uint16_t h);

struct EmuLtHandle {
    int unused;
};
struct EmuLtDesc {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    int transa, transb;
    cublasLtEpilogue_t epilogue;
    const void *bias;
    int bias_type;  // -1: unset, the type of D
};
struct EmuLtLayout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
    int32_t batch;    // members of a strided batch (1: none)
    int64_t stride;   // elements from one member to the next
};
struct EmuLtPref {
    uint64_t workspace;
    uint32_t reduction_mask;
    uint32_t align[4];  // A, B, C, D
};

static long g_calls;
long emu_cublaslt_calls(void) { return g_calls; }

const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

// a wrong call is the caller's bug: say which one, then return the library's status
static cublasStatus_t bad(cublasStatus_t s, const char *what) {
    if (getenv("SVLM_MATMUL_VERBOSE")) fprintf(stderr, "cuda-emu: cuBLASLt: %s (%s)\n", what, cublasGetStatusString(s));
    return s;
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    *h = (cublasLtHandle_t)calloc(1, sizeof(EmuLtHandle));
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute, cudaDataType_t scale) {
    if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return bad(CUBLAS_STATUS_NOT_SUPPORTED, "compute type");
    EmuLtDesc *p = (EmuLtDesc *)calloc(1, sizeof *p);
    p->compute = compute;
    p->scale = scale;
    p->epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    p->bias_type = -1;
    *d = p;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    free(d);
    return CUBLAS_STATUS_SUCCESS;
}

template <typename T>
static bool get_attr(T *dst, const void *buf, size_t size) {
    if (size != sizeof(T)) return false;
    memcpy(dst, buf, sizeof(T));
    return true;
}

// a cublasOperation_t attribute as "transposed"
static bool get_op(int *trans, const void *buf, size_t size) {
    cublasOperation_t op;
    if (!get_attr(&op, buf, size) || (op != CUBLAS_OP_N && op != CUBLAS_OP_T)) return false;
    *trans = op == CUBLAS_OP_T;
    return true;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t size) {
    bool ok = false;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: ok = get_op(&d->transa, buf, size); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: ok = get_op(&d->transb, buf, size); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
        ok = get_attr(&d->epilogue, buf, size) &&
             (d->epilogue == CUBLASLT_EPILOGUE_DEFAULT || d->epilogue == CUBLASLT_EPILOGUE_BIAS);
        break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: ok = get_attr(&d->bias, buf, size); break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: {
        cudaDataType_t t;
        ok = get_attr(&t, buf, size) && (t == CUDA_R_16BF || t == CUDA_R_32F);
        if (ok) d->bias_type = t;
        break;
    }
    }
    return ok ? CUBLAS_STATUS_SUCCESS : bad(CUBLAS_STATUS_INVALID_VALUE, "matmul descriptor attribute or its size");
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType_t type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    if (type != CUDA_R_16BF && type != CUDA_R_32F) return bad(CUBLAS_STATUS_NOT_SUPPORTED, "layout type");
    if (ld < 1 || (uint64_t)ld < rows) return bad(CUBLAS_STATUS_INVALID_VALUE, "layout with ld < rows");
    EmuLtLayout *p = (EmuLtLayout *)calloc(1, sizeof *p);
    *p = EmuLtLayout{type, rows, cols, ld, 1, 0};
    *l = p;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t size) {
    bool ok = false;
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: ok = get_attr(&l->batch, buf, size) && l->batch >= 1; break;
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: ok = get_attr(&l->stride, buf, size); break;
    }
    return ok ? CUBLAS_STATUS_SUCCESS : bad(CUBLAS_STATUS_INVALID_VALUE, "layout attribute or its size");
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    free(l);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
    EmuLtPref *q = (EmuLtPref *)calloc(1, sizeof *q);
    q->reduction_mask = CUBLASLT_REDUCTION_SCHEME_MASK;
    for (int i = 0; i < 4; i++) q->align[i] = 256;
    *p = q;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    free(p);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t size) {
    bool ok = false;
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: ok = get_attr(&p->workspace, buf, size); break;
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: ok = get_attr(&p->reduction_mask, buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: ok = get_attr(&p->align[0], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: ok = get_attr(&p->align[1], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: ok = get_attr(&p->align[2], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: ok = get_attr(&p->align[3], buf, size); break;
    }
    return ok ? CUBLAS_STATUS_SUCCESS : bad(CUBLAS_STATUS_INVALID_VALUE, "preference attribute or its size");
}

static size_t type_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

// the shapes of a problem: op(A) (m, k), op(B) (k, n), C and D (m, n), with the types allowed
static cublasStatus_t check_problem(const EmuLtDesc *desc, const EmuLtLayout *a, const EmuLtLayout *b,
                                    const EmuLtLayout *c, const EmuLtLayout *d, uint64_t *m, uint64_t *n,
                                    uint64_t *k) {
    *m = desc->transa ? a->cols : a->rows;
    *k = desc->transa ? a->rows : a->cols;
    uint64_t kb = desc->transb ? b->cols : b->rows;
    *n = desc->transb ? b->rows : b->cols;
    if (kb != *k || c->rows != *m || c->cols != *n || d->rows != *m || d->cols != *n)
        return bad(CUBLAS_STATUS_INVALID_VALUE, "layouts of inconsistent shapes");
    if (a->type != CUDA_R_16BF || b->type != CUDA_R_16BF || c->type != d->type)
        return bad(CUBLAS_STATUS_NOT_SUPPORTED, "type combination");
    if (c->ld != d->ld) return bad(CUBLAS_STATUS_NOT_SUPPORTED, "C and D in place with different ld");
    if (a->batch != d->batch || b->batch != d->batch || c->batch != d->batch || c->stride != d->stride)
        return bad(CUBLAS_STATUS_INVALID_VALUE, "layouts of different batch counts or C/D strides");
    if (desc->epilogue == CUBLASLT_EPILOGUE_BIAS) {
        int bt = desc->bias_type < 0 ? (int)d->type : desc->bias_type;
        if (bt != (int)d->type) return bad(CUBLAS_STATUS_NOT_SUPPORTED, "bias of another type than D");
    }
    return CUBLAS_STATUS_SUCCESS;
}

static uint32_t alignment_of(const void *p) {
    uint32_t al = 256;
    while (al > 1 && ((uintptr_t)p & (al - 1))) al >>= 1;
    return al;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t *results, int *found) {
    *found = 0;
    if (!h || requested < 1) return bad(CUBLAS_STATUS_INVALID_VALUE, "heuristic request");
    uint64_t m, n, k;
    cublasStatus_t st = check_problem(desc, a, b, c, d, &m, &n, &k);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    // the emulator's rule (see the header): leading dimensions of whole 16-byte units only
    const EmuLtLayout *ls[3] = {a, b, d};
    for (int i = 0; i < 3; i++)
        if ((ls[i]->ld * type_bytes(ls[i]->type)) % 16 != 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    memset(&results[0], 0, sizeof results[0]);
    results[0].algo.data[0] = 0x5356'4c4d;  // a tag
    for (int i = 0; i < 4; i++) results[0].algo.data[1 + i] = pref->align[i];
    results[0].workspaceSize = 0;
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *found = 1;
    return CUBLAS_STATUS_SUCCESS;
}

static float load(const void *p, cudaDataType_t t, size_t i) {
    return t == CUDA_R_32F ? ((const float *)p)[i] : bf16_to_f32(((const uint16_t *)p)[i]);
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t desc, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t a, const void *B, cublasLtMatrixLayout_t b, const void *beta,
                              const void *C, cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspace_bytes,
                              struct EmuStream *stream) {
    (void)workspace;
    (void)workspace_bytes;
    (void)stream;
    if (!h || !algo || algo->data[0] != 0x5356'4c4d) return bad(CUBLAS_STATUS_INVALID_VALUE, "handle or algorithm");
    uint64_t m, n, k;
    cublasStatus_t st = check_problem(desc, a, b, c, d, &m, &n, &k);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    // an algorithm chosen for some alignment refuses pointers with less
    const void *ptr[4] = {A, B, C, D};
    for (int i = 0; i < 4; i++)
        if (alignment_of(ptr[i]) < algo->data[1 + i])
            return bad(CUBLAS_STATUS_NOT_SUPPORTED, "a pointer less aligned than the algorithm was chosen for");
    if (desc->epilogue == CUBLASLT_EPILOGUE_BIAS && !desc->bias) return bad(CUBLAS_STATUS_INVALID_VALUE, "bias epilogue without a pointer");
    emu_counters.launches++;  // the library's kernels, as one launch
    if (emu_count_only) {
        g_calls++;
        return CUBLAS_STATUS_SUCCESS;
    }
    float al, be;
    memcpy(&al, alpha, 4);
    memcpy(&be, beta, 4);
    cudaDataType_t bias_t = desc->bias_type < 0 ? d->type : (cudaDataType_t)desc->bias_type;
    for (int32_t bi = 0; bi < d->batch; bi++)  // members of a strided batch, one after another
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) {
            size_t oa = (size_t)(bi * a->stride), ob = (size_t)(bi * b->stride), od = (size_t)(bi * d->stride);
            float s = 0.0f;
            for (uint64_t kk = 0; kk < k; kk++) {
                size_t ia = oa + (desc->transa ? i * a->ld + kk : kk * a->ld + i);
                size_t ib = ob + (desc->transb ? kk * b->ld + j : j * b->ld + kk);
                s += load(A, a->type, ia) * load(B, b->type, ib);
            }
            size_t id = od + j * d->ld + i;
            float v = al * s;
            if (be != 0.0f) v += be * load(C, c->type, od + j * c->ld + i);
            if (desc->epilogue == CUBLASLT_EPILOGUE_BIAS) v += load(desc->bias, bias_t, i);
            if (d->type == CUDA_R_32F) ((float *)D)[id] = v;
            else ((uint16_t *)D)[id] = f32_to_bf16(v);
        }
    g_calls++;
    return CUBLAS_STATUS_SUCCESS;
}
