// test_gpu.c: the CUDA backend against the CPU backend, op by op, then the whole VLM against the
// Hugging Face fixtures. Run on a machine with a GPU: `make test-gpu` (exits 77, "skipped", when
// kernels_cuda() finds no device). `make test-gpu-emu` runs the same program on the CPU emulator of
// tests/gpu/emu (small shapes only), which checks the kernels' logic without a GPU.
//
// Part 1, ops: fresh random inputs, rounded to bf16 first so that both backends see the same
// values, go to the CPU op (fp32) and the CUDA op (bf16 activations); the measure is
// rel err = max|cuda - cpu| / max|cpu|. Outputs stored as bf16 must be within 1e-2 (bf16 has 8
// bits of mantissa: one rounding is 2e-3 relative); fp32 outputs computed from bf16 inputs
// (weight gradients, norm statistics, lse, losses) within 1e-3 (only summation order differs);
// the fp32 optimizer ops (AdamW, sum_squares, scale) within 1e-4. Shapes: odd small ones like the
// CPU tests, plus realistic ones (LLM and ViT sizes) that are skipped on the emulator. Every
// backward op also runs twice and must give the same bytes (determinism). Attention is checked on
// both of the backend's paths (tensor cores, FMA kernels) wherever the head dim allows both.
//
// Part 2, model: the fixtures of tests/test_model_parity.c through vlm_* with kernels_cuda(), and
// through a bf16 model of the CPU backend (every act output rounded to bf16) that shows how far
// bf16 rounding alone drifts from the fp32 references on each fixture. First estimates of the
// tolerances, to be confirmed on a GPU: loss 2e-2, logits, vision features and connector output
// 3e-2, each trainable gradient 5e-2, or 3x the bf16 model's error where that is larger.
// Generation on the CUDA backend: batched generation (model/gen_batch.h: prompts of very
// different lengths prefilled together, decode steps batched) gives, conversation by
// conversation, the greedy tokens of batch-1 generation (model/generate.h) on the same backend.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/safetensors.h"
#include "common/util.h"
#include "kernels/cuda/attention_cudnn.h"
#include "kernels/kernels.h"
#include "model/gen_batch.h"
#include "model/memplan.h"
#include "model/vlm.h"
#include "tests/testlib.h"

static const Kernels *G;  // the CUDA backend (or its emulation)
static const Kernels *C;  // the CPU reference
static int emu;           // running on the emulator: realistic shapes are skipped
static uint64_t seed = 0x6b0d5eedULL;

#define TOL_BF16 1e-2
#define TOL_F32_FROM_BF16 1e-3
#define TOL_F32 1e-4

// ---------------------------------------------------------------- helpers

static float bfr(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// random values in [lo, hi), rounded to bf16
static float *rnd(size_t n, float lo, float hi) {
    float *x = xmalloc((n ? n : 1) * sizeof(float));
    test_fill_uniform(x, n, lo, hi, &seed);
    for (size_t i = 0; i < n; i++) x[i] = bfr(x[i]);
    return x;
}
// random fp32 values (for the fp32 ops)
static float *rnd32(size_t n, float lo, float hi) {
    float *x = xmalloc((n ? n : 1) * sizeof(float));
    test_fill_uniform(x, n, lo, hi, &seed);
    return x;
}
static float *dup(const float *x, size_t n) {
    float *y = xmalloc((n ? n : 1) * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}
static float *zeros(size_t n) { return xcalloc(n ? n : 1, sizeof(float)); }
static int *rnd_int(size_t n, int lo, int hi) {  // [lo, hi]
    int *x = xmalloc((n ? n : 1) * sizeof(int));
    for (size_t i = 0; i < n; i++) x[i] = lo + (int)(test_rand_u64(&seed) % (uint64_t)(hi - lo + 1));
    return x;
}

// device copies: act (bf16 on CUDA), fp32 and int
static void *up_act(const float *h, size_t n) {
    void *d = G->alloc((n ? n : 1) * G->act_bytes);
    G->upload_act(d, h, n);
    return d;
}
static float *up_f32(const float *h, size_t n) {
    float *d = G->alloc((n ? n : 1) * sizeof(float));
    G->upload(d, h, n * sizeof(float));
    return d;
}
static int *up_int(const int *h, size_t n) {
    int *d = G->alloc((n ? n : 1) * sizeof(int));
    G->upload(d, h, n * sizeof(int));
    return d;
}
static float *down_act(const void *d, size_t n) {
    float *h = xmalloc((n ? n : 1) * sizeof(float));
    G->download_act(h, d, n);
    return h;
}
static float *down_f32(const float *d, size_t n) {
    float *h = xmalloc((n ? n : 1) * sizeof(float));
    G->download(h, d, n * sizeof(float));
    return h;
}
// raw bytes of a device buffer, for the determinism checks
static void *down_raw(const void *d, size_t bytes) {
    void *h = xmalloc(bytes ? bytes : 1);
    G->download(h, d, bytes);
    return h;
}

static void expect_close(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double e = rel_err(got, ref, n);
    printf("    %-60s rel err %.2e (tol %.0e)\n", what, e, tol);
    if (!(e <= tol)) fail_msg("%s: relative error %.3e above %.0e", what, e, tol);
}
// a device act buffer against a host reference
static void expect_act(const char *what, const void *d, const float *ref, size_t n, double tol) {
    float *h = down_act(d, n);
    expect_close(what, h, ref, n, tol);
    free(h);
}
static void expect_f32(const char *what, const float *d, const float *ref, size_t n, double tol) {
    float *h = down_f32(d, n);
    expect_close(what, h, ref, n, tol);
    free(h);
}
static void expect_same_bytes(const char *what, const void *a, const void *b, size_t bytes) {
    int same = memcmp(a, b, bytes) == 0;
    printf("    %-60s %s\n", what, same ? "bit-identical" : "DIFFERENT");
    if (!same) fail_msg("%s: the bytes differ", what);
}

static int setup(void **state) {
    (void)state;
    C = kernels_cpu();
    G = kernels_cuda();
    if (!G) return -1;
    emu = strcmp(G->name, "cuda-emu") == 0;
    return 0;
}

// ---------------------------------------------------------------- memory

static void test_table_and_memory(void **state) {
    (void)state;
    assert_true(strcmp(G->name, "cuda") == 0 || emu);
    assert_int_equal(G->act_bytes, 2);
    assert_int_equal(G->act_is_f32, 0);
    assert_true(G->xent_chunk_rows > 0);
    // every slot of the table is filled (the struct is the header fields, then function pointers)
    const char *first = (const char *)&G->alloc, *end = (const char *)(G + 1);
    for (const char *p = first; p + sizeof(void (*)(void)) <= end; p += sizeof(void (*)(void))) {
        void (*fn)(void);
        memcpy(&fn, p, sizeof fn);
        if (!fn) fail_msg("slot %d of the CUDA table is NULL", (int)((p - first) / sizeof fn));
    }
    size_t sizes[] = {0, 1, 3, 4099};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char *d = G->alloc(sizes[i]);
        assert_non_null(d);
        unsigned char *h = down_raw(d, sizes[i]);
        for (size_t j = 0; j < sizes[i]; j++) assert_int_equal(h[j], 0);
        free(h);
        G->free(d);
    }
    size_t n = 1037;
    float *x = rnd32(n, -3, 3);
    float *d = up_f32(x, n), *d2 = G->alloc(n * sizeof(float));
    float *back = down_f32(d, n);
    expect_same_bytes("upload/download", back, x, n * sizeof(float));
    free(back);
    G->copy(d2, d, n * sizeof(float));
    back = down_f32(d2, n);
    expect_same_bytes("copy", back, x, n * sizeof(float));
    free(back);
    G->zero(d2, n * sizeof(float));
    back = down_f32(d2, n);
    for (size_t i = 0; i < n; i++) assert_true(back[i] == 0.0f);
    free(back);
    // act round trip rounds to bf16 (nearest even) exactly as common/util.c does
    float *r = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) r[i] = bfr(x[i]);
    void *a = up_act(x, n);
    back = down_act(a, n);
    expect_same_bytes("upload_act/download_act round to bf16", back, r, n * sizeof(float));
    free(back);
    void *a2 = G->alloc(n * 2);
    G->cast_to_act(a2, d, n);
    back = down_act(a2, n);
    expect_same_bytes("cast_to_act rounds to bf16", back, r, n * sizeof(float));
    free(back);
    G->synchronize();
    G->free(d);
    G->free(d2);
    G->free(a);
    G->free(a2);
    free(x);
    free(r);
}

// ---------------------------------------------------------------- matmul

typedef struct {
    int N, C, OC, big;
} MmShape;

static const MmShape mm_shapes[] = {
    {1, 1, 1, 0},   {7, 13, 5, 0},  {37, 40, 48, 0}, {33, 48, 131, 0}, {69, 48, 4, 0}, {69, 4, 48, 0},
    {23, 3, 40, 0}, {64, 64, 64, 0}, {130, 72, 48, 0}, {2048, 896, 4864, 1}, {1024, 896, 151936, 1},
};

static void test_matmul_forward(void **state) {
    (void)state;
    for (size_t s = 0; s < sizeof mm_shapes / sizeof *mm_shapes; s++) {
        const MmShape *sh = &mm_shapes[s];
        if (sh->big && emu) continue;
        int N = sh->N, Cc = sh->C, OC = sh->OC;
        size_t ni = (size_t)N * Cc, nw = (size_t)OC * Cc, no = (size_t)N * OC;
        float *inp = rnd(ni, -1, 1), *w = rnd(nw, -1, 1), *bias = rnd(OC, -1, 1), *out0 = rnd(no, -2, 2);
        void *di = up_act(inp, ni), *dw = up_act(w, nw), *db = up_act(bias, OC), *dout = up_act(out0, no);
        float *ref = dup(out0, no);
        char what[128];
        for (int acc = 0; acc < 2; acc++)
            for (int withb = 0; withb < 2; withb++) {
                float alpha = withb ? 1.0f : 2.5f;
                memcpy(ref, out0, no * sizeof(float));
                C->matmul_forward(ref, inp, w, withb ? bias : NULL, N, Cc, OC, alpha, acc);
                G->upload_act(dout, out0, no);
                G->matmul_forward(dout, di, dw, withb ? db : NULL, N, Cc, OC, alpha, acc);
                snprintf(what, sizeof what, "matmul_forward %dx%dx%d%s%s", N, Cc, OC, withb ? " bias" : "",
                         acc ? " accumulate" : "");
                expect_act(what, dout, ref, no, TOL_BF16);
            }
        free(inp); free(w); free(bias); free(out0); free(ref);
        G->free(di); G->free(dw); G->free(db); G->free(dout);
    }
    // pointers that are not 16-byte aligned (offsets into a parameter buffer), and a bias at an
    // odd element: the cuBLASLt plans take the real alignment, the bias goes to a kernel
    int N = 21, Cc = 40, OC = 24;
    float *inp = rnd((size_t)N * Cc + 1, -1, 1), *w = rnd((size_t)OC * Cc + 3, -1, 1), *bias = rnd(OC + 1, -1, 1);
    void *di = up_act(inp, (size_t)N * Cc + 1), *dw = up_act(w, (size_t)OC * Cc + 3), *db = up_act(bias, OC + 1);
    void *dout = G->alloc(((size_t)N * OC + 1) * 2);
    float *ref = zeros((size_t)N * OC);
    C->matmul_forward(ref, inp + 1, w + 3, bias + 1, N, Cc, OC, 1.0f, 0);
    G->matmul_forward(act_at(G, dout, 1), act_at(G, di, 1), act_at(G, dw, 3), act_at(G, db, 1), N, Cc, OC, 1.0f, 0);
    float *got = down_act(act_at(G, dout, 1), (size_t)N * OC);
    expect_close("matmul_forward misaligned pointers", got, ref, (size_t)N * OC, TOL_BF16);
    free(got); free(inp); free(w); free(bias); free(ref);
    G->free(di); G->free(dw); G->free(db); G->free(dout);
}

// split-K (matmul.cu): long-K products with few output tiles, a LoRA weight gradient (K = rows)
// and a vocabulary-like input gradient (K = OC), K not a multiple of the slices (a tail GEMM);
// against the CPU, twice bit-identical, and the path checked to be taken (on the emulator's 4 SMs
// and on a GPU's many)
long cuda_matmul_splitk_calls(void);
static void test_matmul_splitk(void **state) {
    (void)state;
    const int shapes[][3] = {{3001, 40, 16}, {24, 32, 5008}, {12032, 64, 896}};  // N, C, OC
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int N = shapes[s][0], Cc = shapes[s][1], OC = shapes[s][2];
        if (s == 2 && emu) continue;  // the reference LoRA B shape: GPU only
        size_t ni = (size_t)N * Cc, nw = (size_t)OC * Cc, no = (size_t)N * OC;
        float *inp = rnd(ni, -1, 1), *w = rnd(nw, -1, 1), *dout = rnd(no, -1, 1);
        float *dinp0 = rnd(ni, -1, 1), *dw0 = rnd32(nw, -1, 1);
        float *rdinp = dup(dinp0, ni), *rdw = dup(dw0, nw);
        C->matmul_backward(rdinp, rdw, NULL, dout, inp, w, N, Cc, OC, 0.5f);
        void *gi = up_act(inp, ni), *gw = up_act(w, nw), *go = up_act(dout, no), *gdi = up_act(dinp0, ni);
        float *gdw = up_f32(dw0, nw);
        long before = cuda_matmul_splitk_calls();
        G->matmul_backward(gdi, gdw, NULL, go, gi, gw, N, Cc, OC, 0.5f);
        long used = cuda_matmul_splitk_calls() - before;
        char what[160];
        snprintf(what, sizeof what, "matmul_backward %dx%dx%d dinp (+=), %ld split-K GEMMs", N, Cc, OC, used);
        expect_act(what, gdi, rdinp, ni, TOL_BF16);
        snprintf(what, sizeof what, "matmul_backward %dx%dx%d dw (fp32 +=)", N, Cc, OC);
        expect_f32(what, gdw, rdw, nw, TOL_F32_FROM_BF16);
        if (used < 1) fail_msg("matmul_backward %dx%dx%d: no GEMM took split-K", N, Cc, OC);
        void *a1 = down_raw(gdi, ni * 2), *a2 = down_raw(gdw, nw * 4);
        G->upload_act(gdi, dinp0, ni);
        G->upload(gdw, dw0, nw * 4);
        G->matmul_backward(gdi, gdw, NULL, go, gi, gw, N, Cc, OC, 0.5f);
        void *b1 = down_raw(gdi, ni * 2), *b2 = down_raw(gdw, nw * 4);
        snprintf(what, sizeof what, "matmul_backward split-K %dx%dx%d twice", N, Cc, OC);
        expect_same_bytes(what, a1, b1, ni * 2);
        expect_same_bytes(what, a2, b2, nw * 4);
        free(a1); free(a2); free(b1); free(b2);
        free(inp); free(w); free(dout); free(dinp0); free(dw0); free(rdinp); free(rdw);
        G->free(gi); G->free(gw); G->free(go); G->free(gdi); G->free(gdw);
    }
}

static void test_matmul_backward(void **state) {
    (void)state;
    for (size_t s = 0; s < sizeof mm_shapes / sizeof *mm_shapes; s++) {
        const MmShape *sh = &mm_shapes[s];
        if (sh->big && emu) continue;
        if (sh->OC > 100000) continue;  // the vocabulary shape is checked in the forward only
        int N = sh->N, Cc = sh->C, OC = sh->OC;
        size_t ni = (size_t)N * Cc, nw = (size_t)OC * Cc, no = (size_t)N * OC;
        float *inp = rnd(ni, -1, 1), *w = rnd(nw, -1, 1), *dout = rnd(no, -1, 1);
        float *dinp0 = rnd(ni, -1, 1), *dw0 = rnd32(nw, -1, 1), *db0 = rnd32(OC, -1, 1);
        float *rdinp = dup(dinp0, ni), *rdw = dup(dw0, nw), *rdb = dup(db0, OC);
        float alpha = 0.75f;
        C->matmul_backward(rdinp, rdw, rdb, dout, inp, w, N, Cc, OC, alpha);
        void *gi = up_act(inp, ni), *gw = up_act(w, nw), *go = up_act(dout, no), *gdi = up_act(dinp0, ni);
        float *gdw = up_f32(dw0, nw), *gdb = up_f32(db0, OC);
        G->matmul_backward(gdi, gdw, gdb, go, gi, gw, N, Cc, OC, alpha);
        char what[128];
        snprintf(what, sizeof what, "matmul_backward %dx%dx%d dinp (+=)", N, Cc, OC);
        expect_act(what, gdi, rdinp, ni, TOL_BF16);
        snprintf(what, sizeof what, "matmul_backward %dx%dx%d dw (fp32 +=)", N, Cc, OC);
        expect_f32(what, gdw, rdw, nw, TOL_F32_FROM_BF16);
        snprintf(what, sizeof what, "matmul_backward %dx%dx%d dbias (fp32 +=)", N, Cc, OC);
        expect_f32(what, gdb, rdb, OC, TOL_F32_FROM_BF16);
        // NULL gradients are skipped: only dw this time, dinp and dbias stay
        void *bi = down_raw(gdi, ni * 2), *bb = down_raw(gdb, OC * 4);
        G->matmul_backward(NULL, gdw, NULL, go, gi, gw, N, Cc, OC, alpha);
        void *bi2 = down_raw(gdi, ni * 2), *bb2 = down_raw(gdb, OC * 4);
        assert_memory_equal(bi, bi2, ni * 2);
        assert_memory_equal(bb, bb2, OC * 4);
        free(bi); free(bb); free(bi2); free(bb2);
        // matmul_backward_set: dinp overwritten (beta 0) whatever it held (garbage here), dw and
        // dbias accumulating as before
        {
            float *sdinp = zeros(ni), *sdw = dup(dw0, nw), *sdb = dup(db0, OC);
            C->matmul_backward(sdinp, sdw, sdb, dout, inp, w, N, Cc, OC, alpha);
            G->upload_act(gdi, dinp0, ni);
            G->upload(gdw, dw0, nw * 4);
            G->upload(gdb, db0, OC * 4);
            G->matmul_backward_set(gdi, gdw, gdb, go, gi, gw, N, Cc, OC, alpha);
            snprintf(what, sizeof what, "matmul_backward_set %dx%dx%d dinp (=)", N, Cc, OC);
            expect_act(what, gdi, sdinp, ni, TOL_BF16);
            snprintf(what, sizeof what, "matmul_backward_set %dx%dx%d dw (fp32 +=)", N, Cc, OC);
            expect_f32(what, gdw, sdw, nw, TOL_F32_FROM_BF16);
            expect_f32("matmul_backward_set dbias (fp32 +=)", gdb, sdb, OC, TOL_F32_FROM_BF16);
            free(sdinp); free(sdw); free(sdb);
        }
        // determinism: the same call on the same state twice
        if (N * (size_t)OC >= 1000) {
            G->upload_act(gdi, dinp0, ni);
            G->upload(gdw, dw0, nw * 4);
            G->upload(gdb, db0, OC * 4);
            G->matmul_backward(gdi, gdw, gdb, go, gi, gw, N, Cc, OC, alpha);
            void *a1 = down_raw(gdi, ni * 2), *a2 = down_raw(gdw, nw * 4), *a3 = down_raw(gdb, OC * 4);
            G->upload_act(gdi, dinp0, ni);
            G->upload(gdw, dw0, nw * 4);
            G->upload(gdb, db0, OC * 4);
            G->matmul_backward(gdi, gdw, gdb, go, gi, gw, N, Cc, OC, alpha);
            void *b1 = down_raw(gdi, ni * 2), *b2 = down_raw(gdw, nw * 4), *b3 = down_raw(gdb, OC * 4);
            snprintf(what, sizeof what, "matmul_backward %dx%dx%d twice", N, Cc, OC);
            expect_same_bytes(what, a1, b1, ni * 2);
            expect_same_bytes(what, a2, b2, nw * 4);
            expect_same_bytes(what, a3, b3, OC * 4);
            free(a1); free(a2); free(a3); free(b1); free(b2); free(b3);
        }
        free(inp); free(w); free(dout); free(dinp0); free(dw0); free(db0); free(rdinp); free(rdw); free(rdb);
        G->free(gi); G->free(gw); G->free(go); G->free(gdi); G->free(gdw); G->free(gdb);
    }
}

// ---------------------------------------------------------------- norms

static const int norm_shapes[][3] = {{11, 13, 0}, {23, 48, 0}, {74, 40, 0}, {1154, 1024, 1}, {2048, 896, 1}};

static void test_layernorm(void **state) {
    (void)state;
    for (size_t s = 0; s < sizeof norm_shapes / sizeof *norm_shapes; s++) {
        int N = norm_shapes[s][0], Cc = norm_shapes[s][1];
        if (norm_shapes[s][2] && emu) continue;
        size_t n = (size_t)N * Cc;
        float eps = 1e-5f;
        float *inp = rnd(n, 2, 6), *w = rnd(Cc, 0.5f, 1.5f), *b = rnd(Cc, -1, 1);
        float *out = zeros(n), *mean = zeros(N), *rstd = zeros(N);
        C->layernorm_forward(out, mean, rstd, inp, w, b, N, Cc, eps);
        void *gi = up_act(inp, n), *gw = up_act(w, Cc), *gb = up_act(b, Cc), *go = G->alloc(n * 2);
        float *gm = G->alloc(N * 4), *gr = G->alloc(N * 4);
        G->layernorm_forward(go, gm, gr, gi, gw, gb, N, Cc, eps);
        char what[128];
        snprintf(what, sizeof what, "layernorm_forward %dx%d out", N, Cc);
        expect_act(what, go, out, n, TOL_BF16);
        snprintf(what, sizeof what, "layernorm_forward %dx%d mean", N, Cc);
        expect_f32(what, gm, mean, N, TOL_F32_FROM_BF16);
        snprintf(what, sizeof what, "layernorm_forward %dx%d rstd", N, Cc);
        expect_f32(what, gr, rstd, N, TOL_F32_FROM_BF16);

        // backward from the CPU's statistics, so that only the backward is measured
        float *dout = rnd(n, -1, 1), *dinp0 = rnd(n, -1, 1), *dw0 = rnd32(Cc, -1, 1), *db0 = rnd32(Cc, -1, 1);
        float *rdi = dup(dinp0, n), *rdw = dup(dw0, Cc), *rdb = dup(db0, Cc);
        C->layernorm_backward(rdi, rdw, rdb, dout, inp, w, mean, rstd, N, Cc);
        void *gdo = up_act(dout, n), *gdi = up_act(dinp0, n);
        float *gdw = up_f32(dw0, Cc), *gdb = up_f32(db0, Cc);
        G->upload(gm, mean, N * 4);
        G->upload(gr, rstd, N * 4);
        G->layernorm_backward(gdi, gdw, gdb, gdo, gi, gw, gm, gr, N, Cc);
        snprintf(what, sizeof what, "layernorm_backward %dx%d dinp (+=)", N, Cc);
        expect_act(what, gdi, rdi, n, TOL_BF16);
        snprintf(what, sizeof what, "layernorm_backward %dx%d dw", N, Cc);
        expect_f32(what, gdw, rdw, Cc, TOL_F32_FROM_BF16);
        snprintf(what, sizeof what, "layernorm_backward %dx%d db", N, Cc);
        expect_f32(what, gdb, rdb, Cc, TOL_F32_FROM_BF16);
        // twice from the same state
        void *r[2][3];
        for (int k = 0; k < 2; k++) {
            G->upload_act(gdi, dinp0, n);
            G->upload(gdw, dw0, Cc * 4);
            G->upload(gdb, db0, Cc * 4);
            G->layernorm_backward(gdi, gdw, gdb, gdo, gi, gw, gm, gr, N, Cc);
            r[k][0] = down_raw(gdi, n * 2);
            r[k][1] = down_raw(gdw, Cc * 4);
            r[k][2] = down_raw(gdb, Cc * 4);
        }
        snprintf(what, sizeof what, "layernorm_backward %dx%d twice", N, Cc);
        expect_same_bytes(what, r[0][0], r[1][0], n * 2);
        expect_same_bytes(what, r[0][1], r[1][1], Cc * 4);
        expect_same_bytes(what, r[0][2], r[1][2], Cc * 4);
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < 3; j++) free(r[k][j]);
        free(inp); free(w); free(b); free(out); free(mean); free(rstd);
        free(dout); free(dinp0); free(dw0); free(db0); free(rdi); free(rdw); free(rdb);
        G->free(gi); G->free(gw); G->free(gb); G->free(go); G->free(gm); G->free(gr);
        G->free(gdo); G->free(gdi); G->free(gdw); G->free(gdb);
    }
}

static void test_rmsnorm(void **state) {
    (void)state;
    for (size_t s = 0; s < sizeof norm_shapes / sizeof *norm_shapes; s++) {
        int N = norm_shapes[s][0], Cc = norm_shapes[s][1];
        if (norm_shapes[s][2] && emu) continue;
        size_t n = (size_t)N * Cc;
        float eps = 1e-6f;
        float *inp = rnd(n, -2, 2), *w = rnd(Cc, 0.5f, 1.5f);
        float *out = zeros(n), *rstd = zeros(N);
        C->rmsnorm_forward(out, rstd, inp, w, N, Cc, eps);
        void *gi = up_act(inp, n), *gw = up_act(w, Cc), *go = G->alloc(n * 2);
        float *gr = G->alloc(N * 4);
        G->rmsnorm_forward(go, gr, gi, gw, N, Cc, eps);
        char what[128];
        snprintf(what, sizeof what, "rmsnorm_forward %dx%d out", N, Cc);
        expect_act(what, go, out, n, TOL_BF16);
        snprintf(what, sizeof what, "rmsnorm_forward %dx%d rstd", N, Cc);
        expect_f32(what, gr, rstd, N, TOL_F32_FROM_BF16);
        {
            // add_rmsnorm_forward: against the CPU's, and the very bits of add + rmsnorm_forward here,
            // in place (sum = a) as the layer calls it
            // the reference normalises the sum as the device holds it, rounded to bf16
            float *inp2 = rnd(n, -2, 2), *sum = zeros(n), *out2 = zeros(n), *rstd2 = zeros(N);
            C->add(sum, inp, inp2, n);
            for (size_t i = 0; i < n; i++) sum[i] = bf16_to_f32(f32_to_bf16(sum[i]));
            C->rmsnorm_forward(out2, rstd2, sum, w, N, Cc, eps);
            void *ga = up_act(inp, n), *gb = up_act(inp2, n), *go2 = G->alloc(n * 2), *go3 = G->alloc(n * 2);
            float *gr2 = G->alloc(N * 4), *gr3 = G->alloc(N * 4);
            void *gs = G->alloc(n * 2);
            G->add(gs, ga, gb, n);
            G->rmsnorm_forward(go3, gr3, gs, gw, N, Cc, eps);
            G->add_rmsnorm_forward(ga, go2, gr2, ga, gb, gw, N, Cc, eps);
            snprintf(what, sizeof what, "add_rmsnorm_forward %dx%d sum", N, Cc);
            expect_act(what, ga, sum, n, TOL_BF16);
            snprintf(what, sizeof what, "add_rmsnorm_forward %dx%d out", N, Cc);
            expect_act(what, go2, out2, n, TOL_BF16);
            expect_f32("add_rmsnorm_forward rstd", gr2, rstd2, N, TOL_F32_FROM_BF16);
            void *x1 = down_raw(gs, n * 2), *x2 = down_raw(ga, n * 2), *y1 = down_raw(go3, n * 2), *y2 = down_raw(go2, n * 2);
            void *z1 = down_raw(gr3, N * 4), *z2 = down_raw(gr2, N * 4);
            snprintf(what, sizeof what, "add_rmsnorm_forward %dx%d vs add + rmsnorm_forward", N, Cc);
            expect_same_bytes(what, x1, x2, n * 2);
            expect_same_bytes(what, y1, y2, n * 2);
            expect_same_bytes(what, z1, z2, N * 4);
            free(x1); free(x2); free(y1); free(y2); free(z1); free(z2);
            free(inp2); free(sum); free(out2); free(rstd2);
            G->free(ga); G->free(gb); G->free(go2); G->free(go3); G->free(gr2); G->free(gr3); G->free(gs);
        }

        float *dout = rnd(n, -1, 1), *dinp0 = rnd(n, -1, 1), *dw0 = rnd32(Cc, -1, 1);
        float *rdi = dup(dinp0, n), *rdw = dup(dw0, Cc);
        C->rmsnorm_backward(rdi, rdw, dout, inp, w, rstd, N, Cc);
        void *gdo = up_act(dout, n), *gdi = up_act(dinp0, n);
        float *gdw = up_f32(dw0, Cc);
        G->upload(gr, rstd, N * 4);
        G->rmsnorm_backward(gdi, gdw, gdo, gi, gw, gr, N, Cc);
        snprintf(what, sizeof what, "rmsnorm_backward %dx%d dinp (+=)", N, Cc);
        expect_act(what, gdi, rdi, n, TOL_BF16);
        snprintf(what, sizeof what, "rmsnorm_backward %dx%d dw", N, Cc);
        expect_f32(what, gdw, rdw, Cc, TOL_F32_FROM_BF16);
        void *r[2][2];
        for (int k = 0; k < 2; k++) {
            G->upload_act(gdi, dinp0, n);
            G->upload(gdw, dw0, Cc * 4);
            G->rmsnorm_backward(gdi, gdw, gdo, gi, gw, gr, N, Cc);
            r[k][0] = down_raw(gdi, n * 2);
            r[k][1] = down_raw(gdw, Cc * 4);
        }
        snprintf(what, sizeof what, "rmsnorm_backward %dx%d twice", N, Cc);
        expect_same_bytes(what, r[0][0], r[1][0], n * 2);
        expect_same_bytes(what, r[0][1], r[1][1], Cc * 4);
        for (int k = 0; k < 2; k++) free(r[k][0]), free(r[k][1]);
        // set: dinp overwritten (its old contents ignored), the values of zero + rmsnorm_backward
        G->zero(gdi, n * 2);
        G->rmsnorm_backward(gdi, NULL, gdo, gi, gw, gr, N, Cc);
        void *want_set = down_raw(gdi, n * 2);
        G->upload_act(gdi, dinp0, n);
        G->upload(gdw, dw0, Cc * 4);
        G->rmsnorm_backward_set(gdi, gdw, gdo, gi, gw, gr, N, Cc);
        void *got_set = down_raw(gdi, n * 2);
        for (size_t i = 0; i < n; i++) {  // bf16 values equal (a zero's sign aside: 0 + -0 is +0)
            float a = bf16_to_f32(((uint16_t *)got_set)[i]), b = bf16_to_f32(((uint16_t *)want_set)[i]);
            if (!(a == b)) fail_msg("rmsnorm_backward_set %dx%d: element %zu is %g, zero + rmsnorm_backward gives %g", N, Cc, i, a, b);
        }
        snprintf(what, sizeof what, "rmsnorm_backward_set %dx%d dw (+=)", N, Cc);
        expect_f32(what, gdw, rdw, Cc, TOL_F32_FROM_BF16);
        free(want_set); free(got_set);
        free(inp); free(w); free(out); free(rstd); free(dout); free(dinp0); free(dw0); free(rdi); free(rdw);
        G->free(gi); G->free(gw); G->free(go); G->free(gr); G->free(gdo); G->free(gdi); G->free(gdw);
    }
}

// ---------------------------------------------------------------- rope

static void test_rope(void **state) {
    (void)state;
    const int shapes[][4] = {{9, 3, 10, 0}, {23, 6, 8, 0}, {7, 2, 12, 0}, {2048, 14, 64, 1}, {512, 8, 128, 1}};
    float thetas[] = {10000.0f, 1000000.0f};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int N = shapes[s][0], NH = shapes[s][1], HD = shapes[s][2];
        if (shapes[s][3] && emu) continue;
        size_t n = (size_t)N * NH * HD;
        int *pos = rnd_int(N, 0, 32767);
        pos[0] = 0;
        float *inp = rnd(n, -1, 1);
        void *gi = up_act(inp, n), *go = G->alloc(n * 2);
        int *gp = up_int(pos, N);
        for (int t = 0; t < 2; t++) {
            float *ref = zeros(n), *back = zeros(n);
            C->rope_forward(ref, inp, pos, N, NH, HD, thetas[t], NH * HD, NH * HD);
            C->rope_backward(back, inp, pos, N, NH, HD, thetas[t], NH * HD, NH * HD);
            char what[128];
            snprintf(what, sizeof what, "rope_forward %dx%dx%d theta %g", N, NH, HD, thetas[t]);
            G->rope_forward(go, gi, gp, N, NH, HD, thetas[t], NH * HD, NH * HD);
            expect_act(what, go, ref, n, TOL_BF16);
            snprintf(what, sizeof what, "rope_backward %dx%dx%d theta %g", N, NH, HD, thetas[t]);
            G->rope_backward(go, gi, gp, N, NH, HD, thetas[t], NH * HD, NH * HD);
            expect_act(what, go, back, n, TOL_BF16);
            // in place
            G->upload_act(go, inp, n);
            G->rope_forward(go, go, gp, N, NH, HD, thetas[t], NH * HD, NH * HD);
            snprintf(what, sizeof what, "rope_forward %dx%dx%d in place", N, NH, HD);
            expect_act(what, go, ref, n, TOL_BF16);
            // row strides, as the fused q/k/v rows are read and their gradient written: the heads
            // at column off of rows ld wide, forward into dense rows, backward back into the slice
            {
                int w = NH * HD, ld = 2 * w + 8 * (t + 1) + t, off = w + t;
                size_t nw = (size_t)N * ld;
                float *wide = rnd(nw, -1, 1), *rs = zeros(n), *rb = dup(wide, nw);
                C->rope_forward(rs, wide + off, pos, N, NH, HD, thetas[t], w, ld);
                C->rope_backward(rb + off, rs, pos, N, NH, HD, thetas[t], w, ld);
                void *gw = up_act(wide, nw), *gs = G->alloc(n * 2);
                G->rope_forward(gs, act_at(G, gw, off), gp, N, NH, HD, thetas[t], w, ld);
                snprintf(what, sizeof what, "rope_forward %dx%dx%d strided input ld %d", N, NH, HD, ld);
                expect_act(what, gs, rs, n, TOL_BF16);
                G->upload_act(gs, rs, n);
                G->rope_backward(act_at(G, gw, off), gs, gp, N, NH, HD, thetas[t], w, ld);
                snprintf(what, sizeof what, "rope_backward %dx%dx%d into strided rows (whole rows)", N, NH, HD);
                expect_act(what, gw, rb, nw, TOL_BF16);
                free(wide); free(rs); free(rb);
                G->free(gw); G->free(gs);
            }
            free(ref);
            free(back);
        }
        free(pos); free(inp);
        G->free(gi); G->free(go); G->free(gp);
    }
}

// ---------------------------------------------------------------- attention

// kernels/cuda/attention.cu: which kernels attention_forward/backward run on. 1 = the FMA kernels
// only (what SVLM_ATTN=fma does for a whole run), 0 = tensor cores where the head dim allows
// (HD % 16 == 0, HD <= 128), 2 = cuDNN first (SVLM_ATTN=cudnn); returns the previous setting
int cuda_attention_set_path(int fma);

typedef struct {
    int B, T, NH, NKV, HD, causal, seg, big, backward;
} AttShape;

// the tensor-core path works in 64-row blocks, 16 rows per warp, and key tiles of 64 (HD <= 64) or
// 32 (HD up to 128): T below, at and past those sizes; HD 16..128 (48 and 80 leave fragments of
// the widest tile unused); HD not a multiple of 16 runs on the FMA kernels only
static const AttShape att_shapes[] = {
    {2, 7, 4, 2, 8, 1, 0, 0, 1},       {1, 33, 3, 1, 12, 0, 0, 0, 1},    {2, 40, 6, 2, 8, 1, 1, 0, 1},
    {1, 65, 2, 2, 40, 0, 1, 0, 1},     {2, 37, 4, 1, 96, 1, 0, 0, 1},    {1, 37, 2, 2, 128, 0, 0, 0, 1},
    {3, 23, 6, 2, 8, 1, 0, 0, 1},      {2, 37, 5, 5, 8, 0, 0, 0, 1},     {1, 70, 4, 2, 64, 1, 1, 0, 1},
    {1, 1, 2, 1, 16, 1, 0, 0, 1},      {2, 1, 4, 4, 64, 0, 0, 0, 1},     {1, 130, 14, 2, 64, 1, 1, 0, 1},
    {2, 77, 4, 4, 16, 0, 1, 0, 1},     {1, 128, 2, 1, 64, 1, 0, 0, 1},   {1, 100, 4, 2, 128, 1, 1, 0, 1},
    {1, 50, 2, 1, 48, 1, 0, 0, 1},     {2, 45, 3, 3, 80, 0, 0, 0, 1},    {1, 66, 14, 2, 32, 0, 0, 0, 1},
    {2, 1024, 14, 2, 64, 1, 0, 1, 1},  {2, 577, 16, 16, 64, 0, 0, 1, 0}, {1, 2048, 14, 2, 64, 1, 1, 1, 1},
    {2, 768, 14, 2, 128, 1, 1, 1, 1},
};

static int att_has_tc(int HD) { return HD % 16 == 0 && HD <= 128; }

static void test_attention(void **state) {
    (void)state;
    for (size_t s = 0; s < sizeof att_shapes / sizeof *att_shapes; s++) {
        const AttShape *a = &att_shapes[s];
        if (a->big && emu) continue;
        int B = a->B, T = a->T, NH = a->NH, NKV = a->NKV, HD = a->HD;
        size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * T * NKV * HD, nl = (size_t)B * NH * T;
        float *q = rnd(nq, -1.5f, 1.5f), *k = rnd(nk, -1.5f, 1.5f), *v = rnd(nk, -1, 1);
        int *seg = NULL;
        if (a->seg) {  // three packed samples per row at random cut points
            seg = xmalloc((size_t)B * T * sizeof(int));
            for (int b = 0; b < B; b++) {
                int c1 = 1 + (int)(test_rand_u64(&seed) % (uint64_t)(T - 1)), c2 = c1 + (T - c1) / 2;
                for (int t = 0; t < T; t++) seg[b * T + t] = t < c1 ? 0 : t < c2 ? 1 : 2;
            }
        }
        float *out = zeros(nq), *lse = zeros(nl);
        C->attention_forward(out, lse, q, k, v, seg, B, T, NH, NKV, HD, a->causal);
        // the backward's reference: both backends get the same out (rounded to bf16) and lse, from
        // the CPU forward
        float *outr = NULL, *dout = NULL, *dq = NULL, *dk = NULL, *dv = NULL;
        if (a->backward) {
            outr = xmalloc(nq * sizeof(float));
            for (size_t i = 0; i < nq; i++) outr[i] = bfr(out[i]);
            dout = rnd(nq, -1, 1);
            dq = zeros(nq), dk = zeros(nk), dv = zeros(nk);
            C->attention_backward(dq, dk, dv, dout, q, k, v, outr, lse, seg, B, T, NH, NKV, HD, a->causal);
        }
        void *gq = up_act(q, nq), *gk = up_act(k, nk), *gv = up_act(v, nk), *go = G->alloc(nq * 2);
        float *gl = G->alloc(nl * 4);
        int *gs = seg ? up_int(seg, (size_t)B * T) : NULL;

        // every shape on the FMA kernels, and on tensor cores where the head dim allows
        void *tc_out = NULL;  // the tensor-core forward's bytes
        for (int path = att_has_tc(HD) ? 0 : 1; path < 2; path++) {
            int prev = cuda_attention_set_path(path);
            const char *pn = path ? "fma" : "tc";
            char what[160];
            G->attention_forward(go, gl, gq, gk, gv, gs, B, T, NH, NKV, HD, a->causal);
            if (!path) tc_out = down_raw(go, nq * 2);
            // the paths round differently (P is bf16 on tensor cores), so with enough keys their
            // bytes differ: identical bytes would mean the switch did not take
            if (path && tc_out && T >= 16) {
                void *fma_out = down_raw(go, nq * 2);
                if (memcmp(tc_out, fma_out, nq * 2) == 0) fail_msg("attention: tc and fma paths gave the same bytes");
                free(fma_out);
            }
            snprintf(what, sizeof what, "attention_forward %s B%d T%d NH%d NKV%d HD%d%s%s out", pn, B, T, NH, NKV, HD,
                     a->causal ? " causal" : "", seg ? " seg" : "");
            expect_act(what, go, out, nq, TOL_BF16);
            snprintf(what, sizeof what, "attention_forward %s B%d T%d NH%d NKV%d HD%d lse", pn, B, T, NH, NKV, HD);
            expect_f32(what, gl, lse, nl, TOL_F32_FROM_BF16);
            // lse NULL is allowed
            G->attention_forward(go, NULL, gq, gk, gv, gs, B, T, NH, NKV, HD, a->causal);
            snprintf(what, sizeof what, "attention_forward %s without lse", pn);
            expect_act(what, go, out, nq, TOL_BF16);

            if (a->backward) {
                void *gdo = up_act(dout, nq), *gout = up_act(outr, nq);
                void *gdq = G->alloc(nq * 2), *gdk = G->alloc(nk * 2), *gdv = G->alloc(nk * 2);
                G->upload(gl, lse, nl * 4);
                void *r[2][3];
                for (int rep = 0; rep < 2; rep++) {
                    G->zero(gdq, nq * 2);  // overwritten, whatever they held
                    G->attention_backward(gdq, gdk, gdv, gdo, gq, gk, gv, gout, gl, gs, B, T, NH, NKV, HD, a->causal);
                    r[rep][0] = down_raw(gdq, nq * 2);
                    r[rep][1] = down_raw(gdk, nk * 2);
                    r[rep][2] = down_raw(gdv, nk * 2);
                }
                snprintf(what, sizeof what, "attention_backward %s B%d T%d NH%d NKV%d HD%d dq", pn, B, T, NH, NKV, HD);
                expect_act(what, gdq, dq, nq, TOL_BF16);
                snprintf(what, sizeof what, "attention_backward %s B%d T%d NH%d NKV%d HD%d dk", pn, B, T, NH, NKV, HD);
                expect_act(what, gdk, dk, nk, TOL_BF16);
                snprintf(what, sizeof what, "attention_backward %s B%d T%d NH%d NKV%d HD%d dv", pn, B, T, NH, NKV, HD);
                expect_act(what, gdv, dv, nk, TOL_BF16);
                snprintf(what, sizeof what, "attention_backward %s B%d T%d NH%d NKV%d HD%d twice", pn, B, T, NH, NKV, HD);
                expect_same_bytes(what, r[0][0], r[1][0], nq * 2);
                expect_same_bytes(what, r[0][1], r[1][1], nk * 2);
                expect_same_bytes(what, r[0][2], r[1][2], nk * 2);
                for (int rep = 0; rep < 2; rep++)
                    for (int j = 0; j < 3; j++) free(r[rep][j]);
                G->free(gdo); G->free(gout); G->free(gdq); G->free(gdk); G->free(gdv);
            }
            cuda_attention_set_path(prev);
        }
        free(q); free(k); free(v); free(seg); free(out); free(lse);
        free(outr); free(dout); free(dq); free(dk); free(dv); free(tc_out);
        G->free(gq); G->free(gk); G->free(gv); G->free(go); G->free(gl);
        if (gs) G->free(gs);
    }
}

static void test_attention_cached(void **state) {
    (void)state;
    // B, Tq, Tk, Tc, NH, NKV, HD
    const int shapes[][8] = {{2, 3, 10, 12, 4, 2, 8, 0}, {1, 1, 37, 40, 6, 2, 16, 0}, {2, 5, 31, 40, 6, 2, 16, 0},
                             {1, 33, 33, 50, 3, 1, 12, 0}, {2, 1, 1500, 2048, 14, 2, 64, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const int *a = shapes[s];
        if (a[7] && emu) continue;
        int B = a[0], Tq = a[1], Tk = a[2], Tc = a[3], NH = a[4], NKV = a[5], HD = a[6];
        size_t nq = (size_t)B * Tq * NH * HD, nc = (size_t)B * Tc * NKV * HD;
        float *q = rnd(nq, -1.5f, 1.5f), *kc = rnd(nc, -1.5f, 1.5f), *vc = rnd(nc, -1, 1), *out = zeros(nq);
        C->attention_cached(out, q, kc, vc, B, Tq, Tk, Tc, NH, NKV, HD);
        void *gq = up_act(q, nq), *gk = up_act(kc, nc), *gv = up_act(vc, nc), *go = G->alloc(nq * 2);
        G->attention_cached(go, gq, gk, gv, B, Tq, Tk, Tc, NH, NKV, HD);
        char what[128];
        snprintf(what, sizeof what, "attention_cached B%d Tq%d Tk%d Tc%d NH%d NKV%d HD%d", B, Tq, Tk, Tc, NH, NKV, HD);
        expect_act(what, go, out, nq, TOL_BF16);
        free(q); free(kc); free(vc); free(out);
        G->free(gq); G->free(gk); G->free(gv); G->free(go);
    }
}

// ---------------------------------------------------------------- attention on cuDNN (SVLM_ATTN=cudnn)

// contiguous runs of segment ids as the loader packs rows: 1 to 4 samples at random cut points,
// then (half the rows) a padding tail of -1
static int *packed_segments(int B, int T) {
    int *seg = xmalloc((size_t)B * T * sizeof(int));
    for (int b = 0; b < B; b++) {
        int tail = b % 2 && T > 2 ? T - 1 - (int)(test_rand_u64(&seed) % (uint64_t)(T / 2)) : T;
        int n = 1 + (int)(test_rand_u64(&seed) % 4), id = 0;
        int step = 2 * tail / n > 1 ? 2 * tail / n : 1;
        int next = n > 1 ? 1 + (int)(test_rand_u64(&seed) % (uint64_t)step) : T;
        for (int t = 0; t < T; t++) {
            if (t == next && id < n - 1) {
                id++;
                next = t + 1 + (int)(test_rand_u64(&seed) % (uint64_t)step);
            }
            seg[b * T + t] = t < tail ? id : -1;
        }
    }
    return seg;
}

// attention_cudnn.cu's segment ends (the packed-rows bound of the cuDNN masks), on the emulator too
static void test_attention_segment_ends(void **state) {
    (void)state;
    const int shapes[][2] = {{1, 1}, {3, 5}, {2, 1023}, {2, 1024}, {3, 1025}, {2, 2500}, {16, 768}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int B = shapes[s][0], T = shapes[s][1];
        if (emu && (size_t)B * T > 8000) continue;
        int *seg = packed_segments(B, T), *want = xmalloc((size_t)B * T * sizeof(int));
        if (s == 2)  // a segment per position
            for (int i = 0; i < B * T; i++) seg[i] = i % T;
        for (int b = 0; b < B; b++)
            for (int t = T - 1; t >= 0; t--) {
                int i = b * T + t;
                want[i] = t == T - 1 || seg[i] != seg[i + 1] ? t : want[i + 1];
            }
        int *gs = up_int(seg, (size_t)B * T), *ge = G->alloc((size_t)B * T * sizeof(int));
        cuda_attention_segment_ends(ge, gs, B, T);
        int *got = down_raw(ge, (size_t)B * T * sizeof(int));
        for (int i = 0; i < B * T; i++)
            if (got[i] != want[i]) fail_msg("segment ends B%d T%d: position %d: %d, expected %d", B, T, i, got[i], want[i]);
        free(seg); free(want); free(got);
        G->free(gs); G->free(ge);
    }
}

// attention_forward/backward with SVLM_ATTN=cudnn against the CPU reference (the bf16 tolerances
// of test_attention), twice with the same bytes, and against the WMMA kernels, on the graphs of the
// exact shape and bucketed ones (SVLM_CUDNN_BUCKET=64: ragged, T rounded up); every call must
// have run on cuDNN (cuda_attention_cudnn_counts), not fallen back. Without cuDNN in the build
// (always on the emulator) it says why and passes, unless SVLM_REQUIRE_CUDNN=1
// (scripts/gpu_session.sh check sets it).
// one shape on cuDNN (bucket 0: the graph of the exact shape; else bucketed, ragged): see below
// a bucketed graph covers T rounded up to 64 rows per batch entry and must write only the call's
// rows: outputs get 64 rows more than the op writes, filled with a pattern that must survive
#define CANARY_ROWS 64
static void canary_set(void *d, size_t used, size_t extra) {
    unsigned char *h = xmalloc(extra);
    memset(h, 0xa5, extra);
    G->upload((char *)d + used, h, extra);
    free(h);
}
static void canary_check(const char *what, const void *d, size_t used, size_t extra) {
    unsigned char *h = down_raw((const char *)d + used, extra);
    for (size_t i = 0; i < extra; i++)
        if (h[i] != 0xa5) fail_msg("%s: byte %zu past the output was written", what, i);
    free(h);
}

// the CPU reference of one shape (inputs rounded to bf16; the backward's from the CPU forward's
// out, rounded, and lse, as test_attention does)
typedef struct {
    float *q, *k, *v, *out, *lse, *outr, *dout, *dq, *dk, *dv;
    int *seg;
} AttRef;

static AttRef att_ref(const AttShape *a) {
    int B = a->B, T = a->T, NH = a->NH, NKV = a->NKV, HD = a->HD;
    size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * T * NKV * HD, nl = (size_t)B * NH * T;
    AttRef r;
    memset(&r, 0, sizeof r);
    r.q = rnd(nq, -1.5f, 1.5f), r.k = rnd(nk, -1.5f, 1.5f), r.v = rnd(nk, -1, 1);
    r.seg = a->seg ? packed_segments(B, T) : NULL;
    r.out = zeros(nq), r.lse = zeros(nl);
    C->attention_forward(r.out, r.lse, r.q, r.k, r.v, r.seg, B, T, NH, NKV, HD, a->causal);
    if (a->backward) {
        r.outr = xmalloc(nq * sizeof(float)), r.dout = rnd(nq, -1, 1);
        for (size_t i = 0; i < nq; i++) r.outr[i] = bfr(r.out[i]);
        r.dq = zeros(nq), r.dk = zeros(nk), r.dv = zeros(nk);
        C->attention_backward(r.dq, r.dk, r.dv, r.dout, r.q, r.k, r.v, r.outr, r.lse, r.seg, B, T, NH, NKV, HD, a->causal);
    }
    return r;
}

static void att_ref_free(AttRef *r) {
    free(r->q); free(r->k); free(r->v); free(r->out); free(r->lse); free(r->outr); free(r->dout);
    free(r->dq); free(r->dk); free(r->dv); free(r->seg);
}

// one shape on cuDNN (bucket 0: the graph of the exact shape; else bucketed, ragged): see below
static void cudnn_case(const AttShape *a, const AttRef *ref, int bucket, int sm) {
    int prev_bucket = cuda_attention_cudnn_set_bucket(bucket);
    int B = a->B, T = a->T, NH = a->NH, NKV = a->NKV, HD = a->HD;
    size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * T * NKV * HD, nl = (size_t)B * NH * T;
    const float *q = ref->q, *k = ref->k, *v = ref->v, *out = ref->out, *lse = ref->lse;
    const int *seg = ref->seg;
    char what[200], shape[120];
    snprintf(shape, sizeof shape, "B%d T%d NH%d NKV%d HD%d%s%s%s", B, T, NH, NKV, HD, a->causal ? " causal" : "",
             seg ? " packed" : "", bucket ? " bucketed" : "");
    size_t xq = (size_t)CANARY_ROWS * NH * HD * 2, xk = (size_t)CANARY_ROWS * NKV * HD * 2;
    void *gq = up_act(q, nq), *gk = up_act(k, nk), *gv = up_act(v, nk), *go = G->alloc(nq * 2 + xq);
    canary_set(go, nq * 2, xq);
    float *gl = G->alloc(nl * 4);
    int *gs = seg ? up_int(seg, (size_t)B * T) : NULL;
    long ran0, ran1, dec0, dec1;

    // forward: cuDNN, twice, against the CPU, then the WMMA kernels on the same inputs
    int prev = cuda_attention_set_path(2);
    cuda_attention_cudnn_counts(&ran0, &dec0);
    G->attention_forward(go, gl, gq, gk, gv, gs, B, T, NH, NKV, HD, a->causal);
    void *f1 = down_raw(go, nq * 2);
    G->attention_forward(go, gl, gq, gk, gv, gs, B, T, NH, NKV, HD, a->causal);
    void *f2 = down_raw(go, nq * 2);
    cuda_attention_cudnn_counts(&ran1, &dec1);
    if (ran1 - ran0 != 2) fail_msg("attention_forward cudnn %s: cuDNN declined the call (see the message above)", shape);
    snprintf(what, sizeof what, "attention_forward cudnn %s out", shape);
    expect_act(what, go, out, nq, TOL_BF16);
    snprintf(what, sizeof what, "attention_forward cudnn %s lse", shape);
    expect_f32(what, gl, lse, nl, TOL_F32_FROM_BF16);
    snprintf(what, sizeof what, "attention_forward cudnn %s twice", shape);
    expect_same_bytes(what, f1, f2, nq * 2);
    snprintf(what, sizeof what, "attention_forward cudnn %s out", shape);
    canary_check(what, go, nq * 2, xq);
    cuda_attention_set_path(0);
    G->attention_forward(go, gl, gq, gk, gv, gs, B, T, NH, NKV, HD, a->causal);
    float *wmma = down_act(go, nq), *f1f = xmalloc(nq * sizeof(float));
    for (size_t i = 0; i < nq; i++) f1f[i] = bf16_to_f32(((uint16_t *)f1)[i]);
    void *gf1 = up_act(f1f, nq);
    snprintf(what, sizeof what, "attention_forward cudnn vs wmma %s", shape);
    expect_act(what, gf1, wmma, nq, TOL_BF16);
    G->free(gf1); free(wmma); free(f1f); free(f1); free(f2);

    if (a->backward) {
        const float *outr = ref->outr, *dout = ref->dout, *dq = ref->dq, *dk = ref->dk, *dv = ref->dv;
        void *gdo = up_act(dout, nq), *gout = up_act(outr, nq);
        void *gdq = G->alloc(nq * 2 + xq), *gdk = G->alloc(nk * 2 + xk), *gdv = G->alloc(nk * 2 + xk);
        canary_set(gdq, nq * 2, xq);
        canary_set(gdk, nk * 2, xk);
        canary_set(gdv, nk * 2, xk);
        G->upload(gl, lse, nl * 4);
        void *r[3][3];
        for (int rep = 0; rep < 3; rep++) {  // cuDNN twice, then the WMMA kernels
            cuda_attention_set_path(rep < 2 ? 2 : 0);
            G->zero(gdq, nq * 2);
            G->zero(gdk, nk * 2);
            cuda_attention_cudnn_counts(&ran0, NULL);
            G->attention_backward(gdq, gdk, gdv, gdo, gq, gk, gv, gout, gl, gs, B, T, NH, NKV, HD, a->causal);
            cuda_attention_cudnn_counts(&ran1, NULL);
            // cuDNN 9.19 has no deterministic bucketed (ragged) backward on sm_80: WMMA runs it there
            if (rep < 2 && ran1 - ran0 != 1 && !(bucket && sm < 90))
                fail_msg("attention_backward cudnn %s: cuDNN declined the call (see the message above)", shape);
            r[rep][0] = down_raw(gdq, nq * 2);
            r[rep][1] = down_raw(gdk, nk * 2);
            r[rep][2] = down_raw(gdv, nk * 2);
            if (rep == 0) {
                snprintf(what, sizeof what, "attention_backward cudnn %s dq", shape);
                expect_act(what, gdq, dq, nq, TOL_BF16);
                snprintf(what, sizeof what, "attention_backward cudnn %s dk", shape);
                expect_act(what, gdk, dk, nk, TOL_BF16);
                snprintf(what, sizeof what, "attention_backward cudnn %s dv", shape);
                expect_act(what, gdv, dv, nk, TOL_BF16);
            }
        }
        snprintf(what, sizeof what, "attention_backward %s: dq, dk, dv", shape);
        canary_check(what, gdq, nq * 2, xq);
        canary_check(what, gdk, nk * 2, xk);
        canary_check(what, gdv, nk * 2, xk);
        snprintf(what, sizeof what, "attention_backward cudnn %s twice", shape);
        expect_same_bytes(what, r[0][0], r[1][0], nq * 2);
        expect_same_bytes(what, r[0][1], r[1][1], nk * 2);
        expect_same_bytes(what, r[0][2], r[1][2], nk * 2);
        // cuDNN against the WMMA kernels, gradient by gradient
        size_t ns[3] = {nq, nk, nk};
        const char *names[3] = {"dq", "dk", "dv"};
        for (int j = 0; j < 3; j++) {
            float *ref = xmalloc(ns[j] * sizeof(float)), *got = xmalloc(ns[j] * sizeof(float));
            for (size_t i = 0; i < ns[j]; i++) {
                ref[i] = bf16_to_f32(((uint16_t *)r[2][j])[i]);
                got[i] = bf16_to_f32(((uint16_t *)r[0][j])[i]);
            }
            void *gg = up_act(got, ns[j]);
            snprintf(what, sizeof what, "attention_backward cudnn vs wmma %s %s", shape, names[j]);
            expect_act(what, gg, ref, ns[j], TOL_BF16);
            G->free(gg); free(ref); free(got);
        }
        for (int rep = 0; rep < 3; rep++)
            for (int j = 0; j < 3; j++) free(r[rep][j]);
        G->free(gdo); G->free(gout); G->free(gdq); G->free(gdk); G->free(gdv);
    }
    cuda_attention_set_path(prev);
    G->free(gq); G->free(gk); G->free(gv); G->free(go); G->free(gl);
    if (gs) G->free(gs);
    cuda_attention_cudnn_set_bucket(prev_bucket);
}

static void test_attention_cudnn(void **state) {
    (void)state;
    char why[256];
    int sm = cuda_attention_cudnn_available(why, sizeof why);
    if (!sm) {
        const char *req = getenv("SVLM_REQUIRE_CUDNN");
        if (req && strcmp(req, "1") == 0) fail_msg("SVLM_REQUIRE_CUDNN=1 but the cuDNN attention is unavailable: %s", why);
        printf("    cuDNN attention: %s: skipped\n", why);
        return;
    }
    printf("    cuDNN attention: %s\n", why);
    // GQA and MHA, HD 64 and 128 (and 32), padded (seg NULL: the padding rows are causal rows like
    // the others) and packed rows, T not a multiple of 64, the ViT's full attention (forward only),
    // and the reference stage-2 shapes
    static const AttShape shapes[] = {
        {2, 100, 4, 2, 64, 1, 0, 0, 1},  {2, 100, 4, 2, 64, 1, 1, 0, 1},  {1, 130, 14, 2, 64, 1, 1, 0, 1},
        {2, 77, 4, 4, 128, 1, 0, 0, 1},  {1, 200, 8, 2, 128, 1, 1, 0, 1}, {2, 37, 4, 1, 32, 1, 0, 0, 1},
        {1, 64, 2, 1, 64, 1, 1, 0, 1},   {2, 577, 16, 16, 64, 0, 0, 1, 0}, {16, 768, 14, 2, 64, 1, 0, 1, 1},
        {4, 752, 14, 2, 64, 1, 1, 1, 1}, {2, 768, 14, 2, 128, 1, 1, 1, 1},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        AttRef ref = att_ref(&shapes[s]);
        for (int bucket = 0; bucket <= 64; bucket += 64) cudnn_case(&shapes[s], &ref, bucket, sm);
        att_ref_free(&ref);
    }
}

// ---------------------------------------------------------------- pointwise

static void test_pointwise(void **state) {
    (void)state;
    size_t sizes[] = {1, 7, 8, 1000, 4099, 8 * 1000003};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        size_t n = sizes[s];
        if (n > 100000 && emu) continue;
        for (int off = 0; off < 2; off++) {  // off = 1: pointers not 16-byte aligned
            float *a = rnd(n, -4, 4), *b = rnd(n, -4, 4), *c = rnd(n, -4, 4);
            float *r0 = zeros(n), *r1 = zeros(n);
            void *ga = G->alloc((n + 1) * 2), *gb = G->alloc((n + 1) * 2), *gc = G->alloc((n + 1) * 2);
            void *g0 = G->alloc((n + 1) * 2), *g1 = G->alloc((n + 1) * 2);
            void *pa = act_at(G, ga, off), *pb = act_at(G, gb, off), *pc = act_at(G, gc, off);
            void *p0 = act_at(G, g0, off), *p1 = act_at(G, g1, off);
            G->upload_act(pa, a, n);
            G->upload_act(pb, b, n);
            G->upload_act(pc, c, n);
            char what[128];
#define ONE(name, cpu_call, gpu_call, ref, dev)                                               \
    do {                                                                                      \
        cpu_call;                                                                             \
        gpu_call;                                                                             \
        snprintf(what, sizeof what, "%s n=%zu%s", name, n, off ? " misaligned" : "");         \
        expect_act(what, dev, ref, n, TOL_BF16);                                              \
    } while (0)
            ONE("gelu_forward", C->gelu_forward(r0, a, n), G->gelu_forward(p0, pa, n), r0, p0);
            ONE("gelu_backward", C->gelu_backward(r0, b, a, n), G->gelu_backward(p0, pb, pa, n), r0, p0);
            ONE("quick_gelu_forward", C->quick_gelu_forward(r0, a, n), G->quick_gelu_forward(p0, pa, n), r0, p0);
            ONE("quick_gelu_backward", C->quick_gelu_backward(r0, b, a, n), G->quick_gelu_backward(p0, pb, pa, n), r0, p0);
            ONE("gelu_tanh_forward", C->gelu_tanh_forward(r0, a, n), G->gelu_tanh_forward(p0, pa, n), r0, p0);
            ONE("gelu_tanh_backward", C->gelu_tanh_backward(r0, b, a, n), G->gelu_tanh_backward(p0, pb, pa, n), r0, p0);
            ONE("gelu_tanh_forward in place", C->gelu_tanh_forward(r0, a, n),
                (G->upload_act(p0, a, n), G->gelu_tanh_forward(p0, p0, n)), r0, p0);
            ONE("swiglu_forward", C->swiglu_forward(r0, a, b, 1, (int)n, (int)n), G->swiglu_forward(p0, pa, pb, 1, (int)n, (int)n), r0, p0);
            ONE("swiglu_backward dgate", C->swiglu_backward(r0, r1, c, a, b, 1, (int)n, (int)n),
                G->swiglu_backward(p0, p1, pc, pa, pb, 1, (int)n, (int)n), r0, p0);
            snprintf(what, sizeof what, "swiglu_backward dup n=%zu", n);
            expect_act(what, p1, r1, n, TOL_BF16);
            ONE("add", C->add(r0, a, b, n), G->add(p0, pa, pb, n), r0, p0);
            ONE("dropout p=0.3", C->dropout(r0, a, n, 0.3f, 12345), G->dropout(p0, pa, n, 0.3f, 12345), r0, p0);
            ONE("dropout in place", C->dropout(r0, a, n, 0.1f, 7), (G->upload_act(p0, a, n), G->dropout(p0, p0, n, 0.1f, 7)), r0, p0);
            // aliasing, as the model uses it: out = first input
            ONE("gelu_forward in place", C->gelu_forward(r0, a, n), (G->upload_act(p0, a, n), G->gelu_forward(p0, p0, n)), r0, p0);
            ONE("add in place", C->add(r0, a, b, n), (G->upload_act(p0, a, n), G->add(p0, p0, pb, n)), r0, p0);
            ONE("swiglu_backward in place", C->swiglu_backward(r0, r1, c, a, b, 1, (int)n, (int)n),
                (G->upload_act(p0, c, n), G->swiglu_backward(p0, p1, p0, pa, pb, 1, (int)n, (int)n)), r0, p0);
            expect_act("swiglu_backward in place dup", p1, r1, n, TOL_BF16);
            ONE("swiglu_backward dgate only", C->swiglu_backward(r0, NULL, c, a, b, 1, (int)n, (int)n),
                G->swiglu_backward(p0, NULL, pc, pa, pb, 1, (int)n, (int)n), r0, p0);
#undef ONE
            free(a); free(b); free(c); free(r0); free(r1);
            G->free(ga); G->free(gb); G->free(gc); G->free(g0); G->free(g1);
        }
    }
}

// SwiGLU over gate | up rows (the fused gate/up projection's output, ld = 2W): W a multiple of 8
// (16-byte loads) or not, forward and the in-place backward the LLM runs, against the CPU
static void test_swiglu_rows(void **state) {
    (void)state;
    const int shapes[][2] = {{5, 8}, {7, 19}, {33, 64}, {3, 1000}, {64, 4864}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int N = shapes[s][0], W = shapes[s][1];
        if (W > 1000 && emu) continue;
        size_t nw = (size_t)N * 2 * W, n = (size_t)N * W;
        float *gu = rnd(nw, -4, 4), *d = rnd(n, -1, 1), *out = zeros(n), *dgu = dup(gu, nw);
        C->swiglu_forward(out, gu, gu + W, N, W, 2 * W);
        C->swiglu_backward(dgu, dgu + W, d, dgu, dgu + W, N, W, 2 * W);
        void *ggu = up_act(gu, nw), *gd = up_act(d, n), *go = G->alloc(n * 2);
        char what[128];
        G->swiglu_forward(go, ggu, act_at(G, ggu, W), N, W, 2 * W);
        snprintf(what, sizeof what, "swiglu_forward rows %dx%d ld %d", N, W, 2 * W);
        expect_act(what, go, out, n, TOL_BF16);
        G->swiglu_backward(ggu, act_at(G, ggu, W), gd, ggu, act_at(G, ggu, W), N, W, 2 * W);
        snprintf(what, sizeof what, "swiglu_backward rows %dx%d in place", N, W);
        expect_act(what, ggu, dgu, nw, TOL_BF16);
        free(gu); free(d); free(out); free(dgu);
        G->free(ggu); G->free(gd); G->free(go);
    }
}

// matmul_forward_ld / matmul_backward_ld on column slices of wider rows, as the fused projections
// and their LoRA use them (an output slice written with beta 1, dh slices overwritten), against
// the CPU's _ld ops over the whole wide buffers (so a write outside the slice shows too)
static void test_matmul_ld(void **state) {
    (void)state;
    // N, C, OC, ld_inp, off_inp, ld_out, off_out
    const int shapes[][7] = {{37, 40, 24, 40, 0, 56, 32}, {37, 8, 40, 24, 8, 56, 16}, {21, 16, 8, 48, 16, 24, 8},
                             {19, 13, 5, 20, 3, 11, 5}, {300, 64, 128, 192, 64, 192, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int N = shapes[s][0], Cc = shapes[s][1], OC = shapes[s][2], li = shapes[s][3], oi = shapes[s][4];
        int lo = shapes[s][5], oo = shapes[s][6];
        size_t nI = (size_t)N * li, nO = (size_t)N * lo, nw = (size_t)OC * Cc;
        float *inp = rnd(nI, -1, 1), *w = rnd(nw, -1, 1), *bias = rnd(OC, -1, 1), *out0 = rnd(nO, -2, 2);
        float *ref = dup(out0, nO);
        C->matmul_forward_ld(ref + oo, inp + oi, w, bias, N, Cc, OC, 0.5f, 1, lo, li);
        void *gi = up_act(inp, nI), *gw = up_act(w, nw), *gb = up_act(bias, OC), *go = up_act(out0, nO);
        G->matmul_forward_ld(act_at(G, go, oo), act_at(G, gi, oi), gw, gb, N, Cc, OC, 0.5f, 1, lo, li);
        char what[128];
        snprintf(what, sizeof what, "matmul_forward_ld %dx%dx%d ld %d/%d (whole rows)", N, Cc, OC, lo, li);
        expect_act(what, go, ref, nO, TOL_BF16);
        // backward: dout from the wide rows, dinp (set, then +=) into the wide input rows
        float *dinp0 = rnd(nI, -1, 1), *rdi = dup(dinp0, nI), *dw0 = rnd32(nw, -1, 1), *rdw = dup(dw0, nw);
        float *db0 = rnd32(OC, -1, 1), *rdb = dup(db0, OC);
        C->matmul_backward_ld(rdi + oi, rdw, rdb, out0 + oo, inp + oi, w, N, Cc, OC, 0.75f, 1, lo, li);
        C->matmul_backward_ld(rdi + oi, NULL, NULL, out0 + oo, inp + oi, w, N, Cc, OC, 0.25f, 0, lo, li);
        void *gdi = up_act(dinp0, nI), *gdo = up_act(out0, nO);
        float *gdw = up_f32(dw0, nw), *gdb = up_f32(db0, OC);
        G->matmul_backward_ld(act_at(G, gdi, oi), gdw, gdb, act_at(G, gdo, oo), act_at(G, gi, oi), gw, N, Cc, OC, 0.75f,
                              1, lo, li);
        G->matmul_backward_ld(act_at(G, gdi, oi), NULL, NULL, act_at(G, gdo, oo), act_at(G, gi, oi), gw, N, Cc, OC,
                              0.25f, 0, lo, li);
        snprintf(what, sizeof what, "matmul_backward_ld %dx%dx%d dinp set then += (whole rows)", N, Cc, OC);
        expect_act(what, gdi, rdi, nI, TOL_BF16);
        snprintf(what, sizeof what, "matmul_backward_ld %dx%dx%d dw (fp32 +=)", N, Cc, OC);
        expect_f32(what, gdw, rdw, nw, TOL_F32_FROM_BF16);
        snprintf(what, sizeof what, "matmul_backward_ld %dx%dx%d dbias (fp32 +=)", N, Cc, OC);
        expect_f32(what, gdb, rdb, OC, TOL_F32_FROM_BF16);
        free(inp); free(w); free(bias); free(out0); free(ref); free(dinp0); free(rdi); free(dw0); free(rdw); free(db0);
        free(rdb);
        G->free(gi); G->free(gw); G->free(gb); G->free(go); G->free(gdi); G->free(gdo); G->free(gdw); G->free(gdb);
    }
}

// ---------------------------------------------------------------- grids

static void test_grid_ops(void **state) {
    (void)state;
    const int shapes[][5] = {{2, 6, 4, 5, 0}, {1, 2, 2, 1, 0}, {2, 6, 6, 48, 0}, {3, 4, 10, 33, 0}, {16, 24, 24, 896, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int B = shapes[s][0], H = shapes[s][1], W = shapes[s][2], Cc = shapes[s][3];
        if (shapes[s][4] && emu) continue;
        size_t n = (size_t)B * H * W * Cc, np = n / 4;
        char what[128];
        // avgpool
        float *x = rnd(n, -2, 2), *ref = zeros(np), *gp = rnd(np, -1, 1), *rb = zeros(n);
        C->avgpool2x2_forward(ref, x, B, H, W, Cc);
        C->avgpool2x2_backward(rb, gp, B, H, W, Cc);
        void *gx = up_act(x, n), *go = G->alloc(np * 2), *ggp = up_act(gp, np), *gb = G->alloc(n * 2);
        G->avgpool2x2_forward(go, gx, B, H, W, Cc);
        snprintf(what, sizeof what, "avgpool2x2_forward B%d %dx%d C%d", B, H, W, Cc);
        expect_act(what, go, ref, np, TOL_BF16);
        G->avgpool2x2_backward(gb, ggp, B, H, W, Cc);
        snprintf(what, sizeof what, "avgpool2x2_backward B%d %dx%d C%d", B, H, W, Cc);
        expect_act(what, gb, rb, n, TOL_BF16);
        free(ref); free(gp); free(rb);
        G->free(go); G->free(ggp); G->free(gb);

        // depthwise conv
        float *w = rnd((size_t)Cc * 9, -1, 1), *bias = rnd(Cc, -1, 1), *out = zeros(n);
        void *gw = up_act(w, (size_t)Cc * 9), *gbias = up_act(bias, Cc), *gout = G->alloc(n * 2);
        for (int withb = 0; withb < 2; withb++) {
            C->dwconv3x3_forward(out, x, w, withb ? bias : NULL, B, H, W, Cc);
            G->dwconv3x3_forward(gout, gx, gw, withb ? gbias : NULL, B, H, W, Cc);
            snprintf(what, sizeof what, "dwconv3x3_forward B%d %dx%d C%d%s", B, H, W, Cc, withb ? " bias" : "");
            expect_act(what, gout, out, n, TOL_BF16);
        }
        float *dout = rnd(n, -1, 1), *dinp0 = rnd(n, -1, 1), *dw0 = rnd32((size_t)Cc * 9, -1, 1), *db0 = rnd32(Cc, -1, 1);
        float *rdi = dup(dinp0, n), *rdw = dup(dw0, (size_t)Cc * 9), *rdb = dup(db0, Cc);
        C->dwconv3x3_backward(rdi, rdw, rdb, dout, x, w, B, H, W, Cc);
        void *gdo = up_act(dout, n), *gdi = up_act(dinp0, n);
        float *gdw = up_f32(dw0, (size_t)Cc * 9), *gdb = up_f32(db0, Cc);
        G->dwconv3x3_backward(gdi, gdw, gdb, gdo, gx, gw, B, H, W, Cc);
        snprintf(what, sizeof what, "dwconv3x3_backward B%d %dx%d C%d dinp (+=)", B, H, W, Cc);
        expect_act(what, gdi, rdi, n, TOL_BF16);
        snprintf(what, sizeof what, "dwconv3x3_backward B%d %dx%d C%d dw", B, H, W, Cc);
        expect_f32(what, gdw, rdw, (size_t)Cc * 9, TOL_F32_FROM_BF16);
        snprintf(what, sizeof what, "dwconv3x3_backward B%d %dx%d C%d dbias", B, H, W, Cc);
        expect_f32(what, gdb, rdb, Cc, TOL_F32_FROM_BF16);
        void *r[2][3];
        for (int k = 0; k < 2; k++) {
            G->upload_act(gdi, dinp0, n);
            G->upload(gdw, dw0, (size_t)Cc * 9 * 4);
            G->upload(gdb, db0, Cc * 4);
            G->dwconv3x3_backward(gdi, gdw, gdb, gdo, gx, gw, B, H, W, Cc);
            r[k][0] = down_raw(gdi, n * 2);
            r[k][1] = down_raw(gdw, (size_t)Cc * 9 * 4);
            r[k][2] = down_raw(gdb, Cc * 4);
        }
        snprintf(what, sizeof what, "dwconv3x3_backward B%d %dx%d C%d twice", B, H, W, Cc);
        expect_same_bytes(what, r[0][0], r[1][0], n * 2);
        expect_same_bytes(what, r[0][1], r[1][1], (size_t)Cc * 9 * 4);
        expect_same_bytes(what, r[0][2], r[1][2], Cc * 4);
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < 3; j++) free(r[k][j]);
        free(x); free(w); free(bias); free(out); free(dout); free(dinp0); free(dw0); free(db0);
        free(rdi); free(rdw); free(rdb);
        G->free(gx); G->free(gw); G->free(gbias); G->free(gout); G->free(gdo); G->free(gdi); G->free(gdw); G->free(gdb);
    }

    // im2col and vit_embed
    const int ims[][4] = {{2, 24, 4, 0}, {1, 14, 4, 0}, {3, 9, 3, 0}, {4, 336, 14, 1}};
    for (size_t s = 0; s < sizeof ims / sizeof *ims; s++) {
        int B = ims[s][0], S = ims[s][1], P = ims[s][2];
        if (ims[s][3] && emu) continue;
        int Gd = S / P, NP = Gd * Gd, K = 3 * P * P;
        size_t ni = (size_t)B * 3 * S * S, no = (size_t)B * NP * K;
        float *img = rnd(ni, -2, 2), *ref = zeros(no);
        C->im2col_patches(ref, img, B, S, P);
        void *gi = up_act(img, ni), *go = G->alloc(no * 2);
        G->im2col_patches(go, gi, B, S, P);
        char what[128];
        snprintf(what, sizeof what, "im2col_patches B%d S%d P%d (exact)", B, S, P);
        expect_act(what, go, ref, no, 0.0);
        free(img); free(ref);
        G->free(gi); G->free(go);
    }
    const int ves[][4] = {{2, 9, 5, 0}, {1, 36, 40, 0}, {16, 576, 1024, 1}};
    for (size_t s = 0; s < sizeof ves / sizeof *ves; s++) {
        int B = ves[s][0], NP = ves[s][1], Cc = ves[s][2];
        if (ves[s][3] && emu) continue;
        size_t np = (size_t)B * NP * Cc, no = (size_t)B * (NP + 1) * Cc;
        float *patches = rnd(np, -1, 1), *cls = rnd(Cc, -1, 1), *pos = rnd((size_t)(NP + 1) * Cc, -1, 1), *ref = zeros(no);
        C->vit_embed(ref, patches, cls, pos, B, NP, Cc);
        void *gp = up_act(patches, np), *gc = up_act(cls, Cc), *gpos = up_act(pos, (size_t)(NP + 1) * Cc), *go = G->alloc(no * 2);
        G->vit_embed(go, gp, gc, gpos, B, NP, Cc);
        char what[128];
        snprintf(what, sizeof what, "vit_embed B%d NP%d C%d", B, NP, Cc);
        expect_act(what, go, ref, no, TOL_BF16);
        free(patches); free(cls); free(pos); free(ref);
        G->free(gp); G->free(gc); G->free(gpos); G->free(go);
    }
}

// ---------------------------------------------------------------- rows

static void test_rows(void **state) {
    (void)state;
    const int shapes[][3] = {{9, 5, 11}, {23, 48, 131}, {40, 64, 1000}};  // N, C, V
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int N = shapes[s][0], Cc = shapes[s][1], V = shapes[s][2];
        size_t no = (size_t)N * Cc;
        float *table = rnd((size_t)V * Cc, -1, 1), *out0 = rnd(no, -1, 1), *ref = dup(out0, no);
        int *ids = rnd_int(N, 0, V - 1);
        ids[1] = ids[N - 1] = -1;  // image slots: left as they were
        C->embedding_forward(ref, ids, table, N, Cc, V);
        void *gt = up_act(table, (size_t)V * Cc), *go = up_act(out0, no);
        int *gid = up_int(ids, N);
        G->embedding_forward(go, gid, gt, N, Cc, V);
        char what[128];
        snprintf(what, sizeof what, "embedding_forward N%d C%d V%d (exact)", N, Cc, V);
        expect_act(what, go, ref, no, 0.0);

        // gather M rows of an (N, C) matrix, scatter them back into a zeroed one
        int M = N / 2;
        int *idx = xmalloc(N * sizeof(int));
        for (int i = 0; i < N; i++) idx[i] = i;
        for (int i = N - 1; i > 0; i--) {  // a random permutation: distinct rows
            int j = (int)(test_rand_u64(&seed) % (uint64_t)(i + 1)), t = idx[i];
            idx[i] = idx[j];
            idx[j] = t;
        }
        float *rg = zeros((size_t)M * Cc), *rs = zeros(no);
        C->gather_rows(rg, out0, idx, M, Cc);
        C->scatter_rows(rs, rg, idx, M, Cc);
        void *gin = up_act(out0, no), *gg = G->alloc((size_t)M * Cc * 2), *gsc = G->alloc(no * 2);
        int *gidx = up_int(idx, M);
        G->gather_rows(gg, gin, gidx, M, Cc);
        snprintf(what, sizeof what, "gather_rows M%d C%d (exact)", M, Cc);
        expect_act(what, gg, rg, (size_t)M * Cc, 0.0);
        G->scatter_rows(gsc, gg, gidx, M, Cc);
        snprintf(what, sizeof what, "scatter_rows M%d C%d (exact)", M, Cc);
        expect_act(what, gsc, rs, no, 0.0);
        idx[0] = idx[M - 1] = -1;  // negative indices: zero rows (the LLM's padded attention layout)
        C->gather_rows(rg, out0, idx, M, Cc);
        G->upload(gidx, idx, (size_t)M * sizeof(int));
        G->gather_rows(gg, gin, gidx, M, Cc);
        snprintf(what, sizeof what, "gather_rows M%d C%d with zero rows (exact)", M, Cc);
        expect_act(what, gg, rg, (size_t)M * Cc, 0.0);
        free(table); free(out0); free(ref); free(ids); free(idx); free(rg); free(rs);
        G->free(gt); G->free(go); G->free(gid); G->free(gin); G->free(gg); G->free(gsc); G->free(gidx);
    }
    // copy_rows between column slices (v out of the fused q/k/v rows and dv back): exact, nothing
    // written outside the slice; aligned for 16-byte copies and not
    const int cs[][5] = {{9, 16, 48, 32, 0}, {7, 5, 13, 3, 8}, {40, 128, 1152, 1024, 0}};  // N, C, ld, off, vec-breaker
    for (size_t s = 0; s < sizeof cs / sizeof *cs; s++) {
        int N = cs[s][0], Cc = cs[s][1], ld = cs[s][2], off = cs[s][3];
        size_t nw = (size_t)N * ld, n = (size_t)N * Cc;
        float *wide = rnd(nw, -1, 1), *x = rnd(n, -1, 1), *rw = dup(wide, nw), *rx = zeros(n);
        C->copy_rows(rw + off, x, N, Cc, ld, Cc);
        C->copy_rows(rx, wide + off, N, Cc, Cc, ld);
        void *gwd = up_act(wide, nw), *gx = up_act(x, n), *gy = G->alloc(n * 2);
        G->copy_rows(gy, act_at(G, gwd, off), N, Cc, Cc, ld);
        char what[128];
        snprintf(what, sizeof what, "copy_rows out of rows %dx%d ld %d (exact)", N, Cc, ld);
        expect_act(what, gy, rx, n, 0.0);
        G->copy_rows(act_at(G, gwd, off), gx, N, Cc, ld, Cc);
        snprintf(what, sizeof what, "copy_rows into rows %dx%d ld %d (exact, whole rows)", N, Cc, ld);
        expect_act(what, gwd, rw, nw, 0.0);
        free(wide); free(x); free(rw); free(rx);
        G->free(gwd); G->free(gx); G->free(gy);
    }
}

// ---------------------------------------------------------------- loss

static void test_cross_entropy(void **state) {
    (void)state;
    const int shapes[][3] = {{5, 131, 0}, {3, 1001, 0}, {7, 1000, 0}, {1, 8, 0}, {64, 151936, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], V = shapes[s][1];
        if (shapes[s][2] && emu) continue;
        size_t n = (size_t)M * V;
        float *logits = rnd(n, -8, 8);
        int *tgt = rnd_int(M, 0, V - 1);
        float dscale = 1.0f / 37.0f;
        float *loss = zeros(M), *dl = zeros(n);
        C->cross_entropy(loss, dl, logits, tgt, M, V, dscale);
        void *gl = up_act(logits, n), *gd = G->alloc(n * 2);
        float *gloss = G->alloc(M * 4);
        int *gt = up_int(tgt, M);
        G->cross_entropy(gloss, gd, gl, gt, M, V, dscale);
        char what[128];
        snprintf(what, sizeof what, "cross_entropy M%d V%d losses", M, V);
        expect_f32(what, gloss, loss, M, TOL_F32_FROM_BF16);
        snprintf(what, sizeof what, "cross_entropy M%d V%d dlogits", M, V);
        expect_act(what, gd, dl, n, TOL_BF16);
        // in place, as the model calls it, twice: the same bytes
        void *r[2][2];
        for (int k = 0; k < 2; k++) {
            G->upload_act(gd, logits, n);
            G->cross_entropy(gloss, gd, gd, gt, M, V, dscale);
            r[k][0] = down_raw(gd, n * 2);
            r[k][1] = down_raw(gloss, M * 4);
        }
        snprintf(what, sizeof what, "cross_entropy M%d V%d in place dlogits", M, V);
        expect_act(what, gd, dl, n, TOL_BF16);
        expect_same_bytes("cross_entropy twice", r[0][0], r[1][0], n * 2);
        expect_same_bytes("cross_entropy twice (losses)", r[0][1], r[1][1], M * 4);
        for (int k = 0; k < 2; k++) free(r[k][0]), free(r[k][1]);
        // losses only
        G->cross_entropy(gloss, NULL, gl, gt, M, V, dscale);
        expect_f32("cross_entropy without gradient", gloss, loss, M, TOL_F32_FROM_BF16);
        free(logits); free(tgt); free(loss); free(dl);
        G->free(gl); G->free(gd); G->free(gloss); G->free(gt);
    }
}

// ---------------------------------------------------------------- optimizer

static void test_adamw(void **state) {
    (void)state;
    size_t sizes[] = {1, 1000, 100003};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        size_t n = sizes[s];
        for (int cfg = 0; cfg < 3; cfg++) {
            double lr = cfg == 2 ? 1e-3 : 2e-4, wd = cfg == 1 ? 0.1 : 0.0, b1 = 0.9, b2 = cfg == 2 ? 0.95 : 0.999;
            int t = cfg == 0 ? 1 : 7;
            float *p = rnd32(n, -1, 1), *g = rnd32(n, -1, 1), *m = rnd32(n, -0.1f, 0.1f), *v = rnd32(n, 0, 0.01f);
            float *gp = up_f32(p, n), *gg = up_f32(g, n), *gm = up_f32(m, n), *gv = up_f32(v, n);
            C->adamw_update(p, g, m, v, n, lr, b1, b2, 1e-8, wd, t);
            G->adamw_update(gp, gg, gm, gv, n, lr, b1, b2, 1e-8, wd, t);
            char what[128];
            snprintf(what, sizeof what, "adamw_update n=%zu lr %g wd %g t %d: p", n, lr, wd, t);
            expect_f32(what, gp, p, n, TOL_F32);
            expect_f32("adamw_update m", gm, m, n, TOL_F32);
            expect_f32("adamw_update v", gv, v, n, TOL_F32);
            float *hp = down_f32(gp, n);
            int same = memcmp(hp, p, n * sizeof(float)) == 0;
            printf("    %-60s %s\n", "adamw_update p bitwise vs CPU", same ? "identical" : "differs (within tolerance)");
            free(hp);
            free(p); free(g); free(m); free(v);
            G->free(gp); G->free(gg); G->free(gm); G->free(gv);
        }
    }
}

// AdamW over a span in one launch: runs of their own lr and decay, the clip coefficient and the
// skip read from the device; against the CPU backend's adamw_span (the same arithmetic: bitwise
// expected, checked within TOL_F32), and a non-finite norm or loss leaving everything unchanged
static void test_adamw_span(void **state) {
    (void)state;
    size_t n = emu ? 20011 : 3000017;
    AdamwSpan a = {.n_runs = 3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .t = 5, .max_norm = 1.0};
    a.run[0] = (AdamwRun){.end = n / 3, .lr = 2e-4, .weight_decay = 0.1};
    a.run[1] = (AdamwRun){.end = n / 3 + 7, .lr = 2e-5, .weight_decay = 0.0};  // a bias
    a.run[2] = (AdamwRun){.end = n, .lr = 2e-4, .weight_decay = 0.1};
    for (int clip = 0; clip < 2; clip++) {
        a.max_norm = clip ? 1.0 : 0.0;
        float *p = rnd32(n, -1, 1), *g = rnd32(n, -1, 1), *m = rnd32(n, -0.1f, 0.1f), *v = rnd32(n, 0, 0.01f);
        float *gp = up_f32(p, n), *gg = up_f32(g, n), *gm = up_f32(m, n), *gv = up_f32(v, n);
        double sq = C->sum_squares(g, n), loss = 3.5;  // norm ~ sqrt(n / 3): clipping on when max_norm 1
        double *dev = G->alloc(2 * sizeof(double));
        G->sum_f64(dev, gg, n, 1, 0);
        G->upload(dev + 1, &loss, sizeof loss);
        C->adamw_span(p, g, m, v, &a, &sq, &loss);
        G->adamw_span(gp, gg, gm, gv, &a, dev, dev + 1);
        char what[128];
        snprintf(what, sizeof what, "adamw_span n=%zu 3 runs %s: p", n, clip ? "clipped" : "no clip");
        expect_f32(what, gp, p, n, TOL_F32);
        expect_f32("adamw_span m", gm, m, n, TOL_F32);
        expect_f32("adamw_span v", gv, v, n, TOL_F32);
        expect_f32("adamw_span leaves g", gg, g, n, 0.0);
        float *hp = down_f32(gp, n);
        printf("    %-60s %s\n", "adamw_span p bitwise vs CPU", memcmp(hp, p, n * sizeof(float)) ? "differs (within tolerance)" : "identical");
        // non-finite norm, then non-finite loss: nothing moves
        double nan_v = NAN, inf_v = INFINITY;
        G->upload(dev, &nan_v, sizeof nan_v);
        G->adamw_span(gp, gg, gm, gv, &a, dev, NULL);
        G->sum_f64(dev, gg, n, 1, 0);
        G->upload(dev + 1, &inf_v, sizeof inf_v);
        G->adamw_span(gp, gg, gm, gv, &a, dev, dev + 1);
        float *hp2 = down_f32(gp, n);
        if (memcmp(hp, hp2, n * sizeof(float))) fail_msg("adamw_span changed p with a non-finite norm or loss");
        free(hp); free(hp2);
        free(p); free(g); free(m); free(v);
        G->free(gp); G->free(gg); G->free(gm); G->free(gv); G->free(dev);
    }
}

// sums to a double on the device: plain (the loss) and squares (the norm), written and accumulated
static void test_sum_f64(void **state) {
    (void)state;
    size_t sizes[] = {0, 1, 2306, 100003};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        size_t n = sizes[s];
        float *x = rnd32(n, -2, 2);
        float *gx = up_f32(x, n);
        double *dev = G->alloc(2 * sizeof(double));
        for (int sq = 0; sq < 2; sq++) {
            double ref, ref2, got[2], again;
            C->sum_f64(&ref, x, n, sq, 0);
            ref2 = ref;
            C->sum_f64(&ref2, x, n, sq, 1);
            G->sum_f64(dev, gx, n, sq, 0);
            G->sum_f64(dev + 1, gx, n, sq, 0);
            G->sum_f64(dev + 1, gx, n, sq, 1);
            G->download(got, dev, sizeof got);
            G->sum_f64(dev, gx, n, sq, 0);
            G->download(&again, dev, sizeof again);
            double e = ref != 0 ? fabs(got[0] - ref) / fabs(ref) : fabs(got[0]);
            double e2 = ref2 != 0 ? fabs(got[1] - ref2) / fabs(ref2) : fabs(got[1]);
            printf("    sum_f64 %s n=%-7zu %.17g vs %.17g rel err %.2e, accumulated %.2e\n", sq ? "squares" : "plain  ", n,
                   got[0], ref, e, e2);
            if (!(e <= 1e-12) || !(e2 <= 1e-12)) fail_msg("sum_f64 n=%zu squares %d: %g vs %g", n, sq, got[0], ref);
            if (memcmp(&got[0], &again, sizeof again)) fail_msg("sum_f64 n=%zu differs between two calls", n);
            if (sq && n) {  // squares: the very value sum_squares gives
                double h = G->sum_squares(gx, n);
                if (memcmp(&h, &got[0], sizeof h)) fail_msg("sum_f64 squares n=%zu differs from sum_squares", n);
            }
        }
        free(x);
        G->free(gx); G->free(dev);
    }
}

static void test_sum_squares_and_scale(void **state) {
    (void)state;
    size_t sizes[] = {0, 1, 1000, 1000003, 50000017};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        size_t n = sizes[s];
        if (n > 2000000 && emu) continue;
        float *x = rnd32(n, -2, 2);
        float *gx = up_f32(x, n);
        double ref = C->sum_squares(x, n), got = G->sum_squares(gx, n), again = G->sum_squares(gx, n);
        double e = ref != 0 ? fabs(got - ref) / fabs(ref) : fabs(got);
        printf("    sum_squares n=%-10zu %.17g vs %.17g rel err %.2e\n", n, got, ref, e);
        if (!(e <= TOL_F32)) fail_msg("sum_squares n=%zu: %g vs %g", n, got, ref);
        if (memcmp(&got, &again, sizeof got) != 0) fail_msg("sum_squares n=%zu differs between two calls", n);
        if (n) {
            float nanv = NAN;
            G->upload(gx + n / 2, &nanv, sizeof nanv);
            if (!isnan(G->sum_squares(gx, n))) fail_msg("sum_squares n=%zu: a NaN element does not give NaN", n);
            G->upload(gx, x, n * sizeof(float));
            C->scale_f32(x, 0.37f, n);
            G->scale_f32(gx, 0.37f, n);
            expect_f32("scale_f32", gx, x, n, TOL_F32);
        }
        free(x);
        G->free(gx);
    }
}

// ---------------------------------------------------------------- a bf16 model of the CPU backend

// The CPU backend with every act_t output rounded to bf16 (and weights rounded when uploaded): the
// precision of the CUDA backend with ops known to be right. The model part runs the fixtures on it
// too; its distance to the fp32 HF references says how much a bf16 pipeline drifts on that
// fixture, so that a CUDA result far beyond it points at a bug rather than at rounding.
static Kernels sim;

static void round_bf16(const void *p, size_t n) {
    float *x = (float *)p;
    for (size_t i = 0; i < n; i++) x[i] = bfr(x[i]);
}
static void sim_upload_act(act_t *dst, const float *src, size_t n) { C->upload_act(dst, src, n); round_bf16(dst, n); }
static void sim_cast_to_act(act_t *dst, const float *src, size_t n) { C->cast_to_act(dst, src, n); round_bf16(dst, n); }
static void sim_matmul_forward(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int N, int Cc, int OC,
                               float alpha, int accumulate) {
    C->matmul_forward(out, inp, w, bias, N, Cc, OC, alpha, accumulate);
    round_bf16(out, (size_t)N * OC);
}
static void sim_matmul_backward(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                                const act_t *w, int N, int Cc, int OC, float alpha) {
    C->matmul_backward(dinp, dw, dbias, dout, inp, w, N, Cc, OC, alpha);
    if (dinp) round_bf16(dinp, (size_t)N * Cc);
}
static void sim_matmul_backward_set(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                                    const act_t *w, int N, int Cc, int OC, float alpha) {
    C->matmul_backward_set(dinp, dw, dbias, dout, inp, w, N, Cc, OC, alpha);
    if (dinp) round_bf16(dinp, (size_t)N * Cc);
}
static void sim_rmsnorm_forward(act_t *out, float *rstd, const act_t *inp, const act_t *w, int N, int Cc, float eps);
static void sim_add_rmsnorm_forward(act_t *sum, act_t *out, float *rstd, const act_t *a, const act_t *b,
                                    const act_t *w, int N, int Cc, float eps) {
    C->add(sum, a, b, (size_t)N * Cc);
    round_bf16(sum, (size_t)N * Cc);
    sim_rmsnorm_forward(out, rstd, sum, w, N, Cc, eps);
}
static void sim_layernorm_forward(act_t *out, float *mean, float *rstd, const act_t *inp, const act_t *w,
                                  const act_t *b, int N, int Cc, float eps) {
    C->layernorm_forward(out, mean, rstd, inp, w, b, N, Cc, eps);
    round_bf16(out, (size_t)N * Cc);
}
static void sim_layernorm_backward(act_t *dinp, float *dw, float *db, const act_t *dout, const act_t *inp,
                                   const act_t *w, const float *mean, const float *rstd, int N, int Cc) {
    C->layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, Cc);
    if (dinp) round_bf16(dinp, (size_t)N * Cc);
}
static void sim_rmsnorm_forward(act_t *out, float *rstd, const act_t *inp, const act_t *w, int N, int Cc, float eps) {
    C->rmsnorm_forward(out, rstd, inp, w, N, Cc, eps);
    round_bf16(out, (size_t)N * Cc);
}
static void sim_rmsnorm_backward(act_t *dinp, float *dw, const act_t *dout, const act_t *inp, const act_t *w,
                                 const float *rstd, int N, int Cc) {
    C->rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, Cc);
    if (dinp) round_bf16(dinp, (size_t)N * Cc);
}
static void sim_rmsnorm_backward_set(act_t *dinp, float *dw, const act_t *dout, const act_t *inp, const act_t *w,
                                     const float *rstd, int N, int Cc) {
    C->rmsnorm_backward_set(dinp, dw, dout, inp, w, rstd, N, Cc);
    if (dinp) round_bf16(dinp, (size_t)N * Cc);
}
// N rows of n elements, ld apart
static void round_bf16_rows(const void *p, int N, int n, int ld) {
    for (int r = 0; r < N; r++) round_bf16((const float *)p + (size_t)r * ld, (size_t)n);
}
static void sim_matmul_forward_ld(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int N, int Cc, int OC,
                                  float alpha, int accumulate, int ld_out, int ld_inp) {
    C->matmul_forward_ld(out, inp, w, bias, N, Cc, OC, alpha, accumulate, ld_out, ld_inp);
    round_bf16_rows(out, N, OC, ld_out);
}
static void sim_matmul_backward_ld(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                                   const act_t *w, int N, int Cc, int OC, float alpha, int set, int ld_out, int ld_inp) {
    C->matmul_backward_ld(dinp, dw, dbias, dout, inp, w, N, Cc, OC, alpha, set, ld_out, ld_inp);
    if (dinp) round_bf16_rows(dinp, N, Cc, ld_inp);
}
static void sim_rope_forward(act_t *out, const act_t *inp, const int *pos, int N, int NH, int HD, float theta,
                             int ld_out, int ld_inp) {
    C->rope_forward(out, inp, pos, N, NH, HD, theta, ld_out, ld_inp);
    round_bf16_rows(out, N, NH * HD, ld_out);
}
static void sim_rope_backward(act_t *dinp, const act_t *dout, const int *pos, int N, int NH, int HD, float theta,
                              int ld_out, int ld_inp) {
    C->rope_backward(dinp, dout, pos, N, NH, HD, theta, ld_out, ld_inp);
    round_bf16_rows(dinp, N, NH * HD, ld_inp);
}
static void sim_swiglu_forward(act_t *out, const act_t *gate, const act_t *up, int N, int W, int ld) {
    C->swiglu_forward(out, gate, up, N, W, ld);
    round_bf16(out, (size_t)N * W);
}
static void sim_attention_forward(act_t *out, float *lse, const act_t *q, const act_t *k, const act_t *v,
                                  const int *seg, int B, int T, int NH, int NKV, int HD, int causal) {
    C->attention_forward(out, lse, q, k, v, seg, B, T, NH, NKV, HD, causal);
    round_bf16(out, (size_t)B * T * NH * HD);
}
static void sim_attention_backward(act_t *dq, act_t *dk, act_t *dv, const act_t *dout, const act_t *q, const act_t *k,
                                   const act_t *v, const act_t *out, const float *lse, const int *seg, int B, int T,
                                   int NH, int NKV, int HD, int causal) {
    C->attention_backward(dq, dk, dv, dout, q, k, v, out, lse, seg, B, T, NH, NKV, HD, causal);
    if (dq) round_bf16(dq, (size_t)B * T * NH * HD);
    if (dk) round_bf16(dk, (size_t)B * T * NKV * HD);
    if (dv) round_bf16(dv, (size_t)B * T * NKV * HD);
}
#define SIM_UNARY(name)                                                         \
    static void sim_##name(act_t *out, const act_t *inp, size_t n) {            \
        C->name(out, inp, n);                                                   \
        round_bf16(out, n);                                                     \
    }
#define SIM_BINARY(name)                                                        \
    static void sim_##name(act_t *out, const act_t *a, const act_t *b, size_t n) { \
        C->name(out, a, b, n);                                                  \
        round_bf16(out, n);                                                     \
    }
SIM_UNARY(gelu_forward)
SIM_UNARY(quick_gelu_forward)
SIM_BINARY(gelu_backward)
SIM_BINARY(quick_gelu_backward)
SIM_UNARY(gelu_tanh_forward)
SIM_BINARY(gelu_tanh_backward)
SIM_BINARY(add)
static void sim_dropout(act_t *out, const act_t *inp, size_t n, float p, uint64_t seed) {
    C->dropout(out, inp, n, p, seed);
    round_bf16(out, n);
}
static void sim_swiglu_backward(act_t *dgate, act_t *dup, const act_t *dout, const act_t *gate, const act_t *up, int N,
                                int W, int ld) {
    C->swiglu_backward(dgate, dup, dout, gate, up, N, W, ld);
    if (dgate) round_bf16_rows(dgate, N, W, ld);
    if (dup) round_bf16_rows(dup, N, W, ld);
}
static void sim_avgpool2x2_forward(act_t *out, const act_t *inp, int B, int H, int W, int Cc) {
    C->avgpool2x2_forward(out, inp, B, H, W, Cc);
    round_bf16(out, (size_t)B * (H / 2) * (W / 2) * Cc);
}
static void sim_avgpool2x2_backward(act_t *dinp, const act_t *dout, int B, int H, int W, int Cc) {
    C->avgpool2x2_backward(dinp, dout, B, H, W, Cc);
    round_bf16(dinp, (size_t)B * H * W * Cc);
}
static void sim_dwconv3x3_forward(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int B, int H, int W,
                                  int Cc) {
    C->dwconv3x3_forward(out, inp, w, bias, B, H, W, Cc);
    round_bf16(out, (size_t)B * H * W * Cc);
}
static void sim_dwconv3x3_backward(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                                   const act_t *w, int B, int H, int W, int Cc) {
    C->dwconv3x3_backward(dinp, dw, dbias, dout, inp, w, B, H, W, Cc);
    if (dinp) round_bf16(dinp, (size_t)B * H * W * Cc);
}
static void sim_vit_embed(act_t *out, const act_t *patches, const act_t *cls, const act_t *pos, int B, int NP, int Cc) {
    C->vit_embed(out, patches, cls, pos, B, NP, Cc);
    round_bf16(out, (size_t)B * (NP + 1) * Cc);
}
static void sim_cross_entropy(float *losses, act_t *dlogits, const act_t *logits, const int *targets, int M, int V,
                              float dscale) {
    C->cross_entropy(losses, dlogits, logits, targets, M, V, dscale);
    if (dlogits) round_bf16(dlogits, (size_t)M * V);
}

static const Kernels *bf16_sim(void) {
    sim = *C;
    sim.name = "cpu-bf16-sim";
    sim.act_is_f32 = 0;  // trainable weights get a compute copy, rounded by cast_to_act, as on CUDA
    sim.upload_act = sim_upload_act;
    sim.cast_to_act = sim_cast_to_act;
    sim.matmul_forward = sim_matmul_forward;
    sim.matmul_backward = sim_matmul_backward;
    sim.matmul_backward_set = sim_matmul_backward_set;
    sim.matmul_forward_ld = sim_matmul_forward_ld;
    sim.matmul_backward_ld = sim_matmul_backward_ld;
    sim.add_rmsnorm_forward = sim_add_rmsnorm_forward;
    sim.layernorm_forward = sim_layernorm_forward;
    sim.layernorm_backward = sim_layernorm_backward;
    sim.rmsnorm_forward = sim_rmsnorm_forward;
    sim.rmsnorm_backward = sim_rmsnorm_backward;
    sim.rmsnorm_backward_set = sim_rmsnorm_backward_set;
    sim.rope_forward = sim_rope_forward;
    sim.rope_backward = sim_rope_backward;
    sim.attention_forward = sim_attention_forward;
    sim.attention_backward = sim_attention_backward;
    sim.gelu_forward = sim_gelu_forward;
    sim.gelu_backward = sim_gelu_backward;
    sim.quick_gelu_forward = sim_quick_gelu_forward;
    sim.gelu_tanh_forward = sim_gelu_tanh_forward;
    sim.gelu_tanh_backward = sim_gelu_tanh_backward;
    sim.quick_gelu_backward = sim_quick_gelu_backward;
    sim.swiglu_forward = sim_swiglu_forward;
    sim.swiglu_backward = sim_swiglu_backward;
    sim.add = sim_add;
    sim.dropout = sim_dropout;
    sim.avgpool2x2_forward = sim_avgpool2x2_forward;
    sim.avgpool2x2_backward = sim_avgpool2x2_backward;
    sim.dwconv3x3_forward = sim_dwconv3x3_forward;
    sim.dwconv3x3_backward = sim_dwconv3x3_backward;
    sim.vit_embed = sim_vit_embed;
    sim.cross_entropy = sim_cross_entropy;
    return &sim;
}

// ---------------------------------------------------------------- part 2: the whole model

// the tower of the model tests: NULL is the clip fixture; else this fixture directory read at
// vision_layer with the connector's pixel-shuffle scale (the SigLIP / InternViT families)
static const char *g_tower;
static int g_tower_layer, g_scale;

static void model_open(Vlm *m, const Kernels *k, const VlmFixture *fx, const char *llm, ConnectorType ct,
                       const char *conn_file, const char *lora_dir) {
    VlmSpec spec = fixture_vlm_spec(llm, ct, lora_dir, fx->B, fx->T, fx->n_img, 0.0f);
    char vdir[1024];
    if (g_tower) {
        snprintf(vdir, sizeof vdir, "%s", fixture_path(g_tower));
        spec.vision_dir = vdir;
        spec.vision_layer = g_tower_layer;
        spec.connector_scale = g_scale;
    }
    fixture_model_load(m, k, &spec, conn_file, lora_dir);
}

// first estimates, to be confirmed on a GPU; a check passes when the CUDA error is within this or
// within SIM_FACTOR times the error of the bf16 model of the CPU backend, whichever is larger
#define TOL_MODEL_LOSS 2e-2
#define TOL_MODEL_ACT 3e-2
#define TOL_MODEL_GRAD 5e-2
#define SIM_FACTOR 3.0
#define MAX_GRADS 64

typedef struct {
    double feats, logits, conn, loss;
    float loss_value;
    int n_grads;
    double grad[MAX_GRADS];
    const char *grad_name[MAX_GRADS];
    int deterministic;
} ModelErr;

// errors of one backend's model against the fixture's fp32 references
static void run_vlm(ModelErr *e, const Kernels *k, VlmFixture *fx, const char *llm, ConnectorType ct,
                    const char *conn_file, const char *lora_dir) {
    memset(e, 0, sizeof *e);
    Vlm m;
    model_open(&m, k, fx, llm, ct, conn_file, lora_dir);
    size_t n;
    float *want = fixture_f32(&fx->f, "vision_features", &n);
    float *got = xmalloc(n * sizeof(float));
    Vit *v = &m.vit;
    k->upload_act(m.pixels, fx->pixels, (size_t)fx->n_img * 3 * v->cfg.image_size * v->cfg.image_size);
    vit_forward(v, m.feats, m.pixels, fx->n_img);
    k->download_act(got, m.feats, n);
    e->feats = rel_err(got, want, n);
    free(want); free(got);

    want = fixture_f32(&fx->f, "logits", &n);
    got = xmalloc(n * sizeof(float));
    vlm_logits(&m, &fx->batch, got);
    e->logits = rel_err(got, want, n);
    free(want); free(got);

    want = fixture_f32(&fx->f, "connector_out", &n);
    got = xmalloc(n * sizeof(float));
    k->download_act(got, m.img_emb, n);
    e->conn = rel_err(got, want, n);
    free(want); free(got);

    int M = 0;
    for (int i = 0; i < fx->B * fx->T; i++) M += fx->targets[i] >= 0;
    size_t ng = m.train.numel;
    float *grads[3];
    double sums[3];
    // three times: after a memset of the gradients, then twice as run_step does it (grad_begin:
    // on CUDA the first writer of each gradient overwrites it, no memset); the two the same
    // bytes, and the same values as the first (x + 0 may differ from x only in a zero's sign)
    for (int rep = 0; rep < 3; rep++) {
        if (rep == 0) k->zero(m.train.grad, ng * sizeof(float));
        else k->grad_begin(m.train.grad, ng);
        int counted;
        sums[rep] = vlm_forward_backward(&m, &fx->batch, 1.0f / M, &counted);
        assert_int_equal(counted, M);
        if (rep > 0) k->grad_settle(m.train.grad, ng);
        grads[rep] = xmalloc(ng * sizeof(float));
        k->download(grads[rep], m.train.grad, ng * sizeof(float));
    }
    e->deterministic = memcmp(&sums[1], &sums[2], sizeof(double)) == 0 && memcmp(grads[1], grads[2], ng * sizeof(float)) == 0;
    e->deterministic &= memcmp(&sums[0], &sums[1], sizeof(double)) == 0;
    for (size_t i = 0; i < ng; i++) e->deterministic &= grads[0][i] == grads[1][i];
    e->loss_value = (float)(sums[0] / M);
    float *want_loss = fixture_f32(&fx->f, "loss", NULL);
    e->loss = rel_err(&e->loss_value, want_loss, 1);
    free(want_loss);
    for (int t = 0; t < fx->f.n; t++) {
        const char *name = fx->f.tensors[t].name;
        if (strncmp(name, "grad.", 5) != 0) continue;
        int i = params_find(&m.train, name + 5);
        if (i < 0) fail_msg("%s: the model has no trainable tensor %s", fx->f.path, name + 5);
        CHECK(e->n_grads < MAX_GRADS, "more than %d gradients", MAX_GRADS);
        want = fixture_f32(&fx->f, name, &n);
        assert_int_equal(n, m.train.p[i].numel);
        e->grad[e->n_grads] = rel_err(grads[0] + m.train.p[i].offset, want, n);
        e->grad_name[e->n_grads] = name + 5;  // lives as long as the fixture
        e->n_grads++;
        free(want);
    }
    assert_int_equal(e->n_grads, m.train.n);
    for (int rep = 0; rep < 3; rep++) free(grads[rep]);
    vlm_free(&m);
}

static int model_check(const char *fixture, const char *what, double cuda, double simv, double tol) {
    double limit = tol > SIM_FACTOR * simv ? tol : SIM_FACTOR * simv;
    int ok = cuda <= limit;
    printf("    %-34s %-34s cuda %.2e  bf16-sim %.2e  limit %.1e %s\n", fixture, what, cuda, simv, limit,
           ok ? "" : "FAIL");
    return ok;
}

static void check_vlm(const char *fixture, const char *llm, ConnectorType ct, const char *conn_file, const char *lora_dir) {
    VlmFixture fx;
    vlm_fixture_open(&fx, fixture);
    ModelErr eg, es;
    run_vlm(&es, bf16_sim(), &fx, llm, ct, conn_file, lora_dir);
    run_vlm(&eg, G, &fx, llm, ct, conn_file, lora_dir);
    int ok = 1;
    ok &= model_check(fixture, "vision features", eg.feats, es.feats, TOL_MODEL_ACT);
    ok &= model_check(fixture, "logits", eg.logits, es.logits, TOL_MODEL_ACT);
    ok &= model_check(fixture, "connector output", eg.conn, es.conn, TOL_MODEL_ACT);
    char what[128];
    snprintf(what, sizeof what, "loss (%.5f)", eg.loss_value);
    ok &= model_check(fixture, what, eg.loss, es.loss, TOL_MODEL_LOSS);
    for (int i = 0; i < eg.n_grads; i++) {
        assert_string_equal(eg.grad_name[i], es.grad_name[i]);
        snprintf(what, sizeof what, "grad %s", eg.grad_name[i]);
        size_t len = strlen(what);
        if (len > 34) memmove(what + 5, what + len - 29, 30);  // keep the informative tail
        ok &= model_check(fixture, what, eg.grad[i], es.grad[i], TOL_MODEL_GRAD);
    }
    printf("    %-34s %-34s %s\n", fixture, "forward+backward 3x (memset, not)", eg.deterministic ? "bit-identical" : "DIFFERENT FAIL");
    ok &= eg.deterministic;
    vlm_fixture_close(&fx);
    if (!ok) fail_msg("%s: the CUDA model is outside its tolerances (see the lines marked FAIL)", fixture);
}

static void test_model_qwen2_ldp_lora(void **state) {
    (void)state;
    check_vlm("vlm_qwen2_ldp.safetensors", "qwen2", CONNECTOR_LDP, "ldp_qwen2.safetensors", "qwen2_lora");
}
static void test_model_qwen2_ldp_stage1(void **state) {
    (void)state;
    check_vlm("vlm_qwen2_ldp_stage1.safetensors", "qwen2", CONNECTOR_LDP, "ldp_qwen2.safetensors", NULL);
}
static void test_model_llama_mlp2x_rslora(void **state) {
    (void)state;
    check_vlm("vlm_llama_mlp2x.safetensors", "llama", CONNECTOR_MLP2X_GELU, "mlp2x_llama.safetensors", "llama_lora");
}
// SigLIP-style tower (Idefics3 vision, gelu_tanh, post-norm) + Idefics3 pixel shuffle 3 + llama
static void test_model_llama_idefics3_lora(void **state) {
    (void)state;
    g_tower = "idefics3_vision", g_tower_layer = -1, g_scale = 3;
    check_vlm("vlm_llama_idefics3.safetensors", "llama", CONNECTOR_IDEFICS3, "idefics3_llama.safetensors", "llama_lora");
    g_tower = NULL;
}
// InternViT (fused qkv, folded layer scale) + InternVL mlp1 + qwen2
static void test_model_qwen2_internvl_lora(void **state) {
    (void)state;
    g_tower = "internvit", g_tower_layer = -1, g_scale = 0;
    check_vlm("vlm_qwen2_internvl.safetensors", "qwen2", CONNECTOR_INTERNVL, "internvl_qwen2.safetensors", "qwen2_lora");
    g_tower = NULL;
}

// a tower alone (post-norm, vision_layer -1) on backend k: its features' error against the
// fixture's fp32 ones
static double tower_err(const Kernels *k, const char *dir, const char *file) {
    StFile f;
    st_open_or_die(&f, fixture_path(file));
    size_t n, np;
    float *pix = fixture_f32(&f, "pixel_values", &np), *want = fixture_f32(&f, "vision_features", &n);
    Vit v;
    vit_load(&v, k, fixture_path(dir), -1, 2);
    vit_set_post_norm(&v, 1);
    assert_int_equal(n, (size_t)2 * v.cfg.n_patches * v.cfg.hidden);
    act_t *img = k->alloc(np * k->act_bytes), *feats = k->alloc(n * k->act_bytes);
    k->upload_act(img, pix, np);
    vit_forward(&v, feats, img, 2);
    float *got = xmalloc(n * sizeof(float));
    k->download_act(got, feats, n);
    double e = rel_err(got, want, n);
    k->free(img);
    k->free(feats);
    vit_free(&v);
    free(got);
    free(pix);
    free(want);
    st_close(&f);
    return e;
}

// Idefics3's bucketized position ids at a 25x25 grid (the load permutes the position table, so
// the CUDA backend reads the rows the CPU does) and nanoVLM's names (fused qkv_proj split by
// pointer on bf16 weights)
static void test_model_towers(void **state) {
    (void)state;
    const char *cases[2][2] = {{"idefics3_vision_g25", "idefics3_g25_features.safetensors"},
                               {"nanovlm", "vlm_llama_idefics3.safetensors"}};
    int ok = 1;
    for (int i = 0; i < 2; i++)
        ok &= model_check(cases[i][0], "vision features", tower_err(G, cases[i][0], cases[i][1]),
                          tower_err(bf16_sim(), cases[i][0], cases[i][1]), TOL_MODEL_ACT);
    if (!ok) fail_msg("a tower's CUDA features are outside their tolerance (see the lines marked FAIL)");
}

// ---------------------------------------------------------------- batched generation

#define GB_N 4

// Greedy batched generation equals batch 1, token for token, on the CUDA backend: prompts of 3
// to 80 tokens (two with an image, one of them ending with it), prefill blocks of 512 rows (all
// prompts in one) and of 16 (prompts and image slots cut across blocks).
static void check_gen_batch(const char *llm, ConnectorType ct, const char *conn_file, const char *lora_dir) {
    Vlm m;
    fixture_model_open(&m, G, llm, ct, conn_file, lora_dir, 1, 1, 1, 0.0f);
    int V = m.llm.cfg.vocab, S = m.vit.cfg.image_size, new_tokens = 8;
    static const int lens[GB_N] = {3, 45, 9, 80};
    int *ids[GB_N], image_pos[GB_N], longest = 0;
    const float *pixels[GB_N];
    uint64_t rs = 0x9e11ULL;
    float *px = xmalloc((size_t)2 * 3 * S * S * sizeof(float));
    for (size_t i = 0; i < (size_t)2 * 3 * S * S; i++) px[i] = (float)(test_rand_u64(&rs) % 2001) / 1000.0f - 1.0f;
    for (int i = 0; i < GB_N; i++) {
        ids[i] = xmalloc((size_t)lens[i] * sizeof(int));
        for (int t = 0; t < lens[i]; t++) ids[i][t] = (int)(test_rand_u64(&rs) % (uint64_t)V);
        pixels[i] = i == 1 ? px : i == 2 ? px + (size_t)3 * S * S : NULL;
        image_pos[i] = i == 1 ? 4 : i == 2 ? lens[i] : -1;
        int np = lens[i] + (pixels[i] ? m.n_img_tokens : 0);
        if (np > longest) longest = np;
    }
    int max_len = longest + new_tokens;
    GenOptions o = {.max_new_tokens = new_tokens};
    int *want[GB_N], n_want[GB_N], *got[GB_N], n_got[GB_N];
    GenStats sw[GB_N], sg[GB_N];
    Generator g;
    gen_init(&g, &m, max_len, 0);
    for (int i = 0; i < GB_N; i++) {
        want[i] = xmalloc((size_t)new_tokens * sizeof(int));
        got[i] = xmalloc((size_t)new_tokens * sizeof(int));
        n_want[i] = gen_generate(&g, ids[i], lens[i], pixels[i], image_pos[i], &o, want[i], &sw[i]);
    }
    gen_free(&g);
    const int chunks[2] = {0, 16};
    for (int c = 0; c < 2; c++) {
        GenBatch b;
        gen_batch_init(&b, &m, GB_N, max_len, chunks[c]);
        GenPrompt gp[GB_N];
        int *gbuf[GB_N];
        for (int i = 0; i < GB_N; i++) gbuf[i] = gen_prompt_one_image(&m, ids[i], lens[i], pixels[i], image_pos[i], &gp[i]);
        gen_batch_generate(&b, GB_N, gp, &o, got, n_got, sg);
        for (int i = 0; i < GB_N; i++) free(gbuf[i]);
        printf("    %-6s on %s, prefill blocks of %d rows:", llm, G->name, b.rows_cap);
        for (int i = 0; i < GB_N; i++) {
            printf(" [%d: %d tok]", sg[i].n_prompt, n_got[i]);
            assert_int_equal(n_got[i], n_want[i]);
            assert_int_equal(sg[i].stop, sw[i].stop);
            assert_int_equal(sg[i].n_prompt, sw[i].n_prompt);
            assert_memory_equal(got[i], want[i], (size_t)n_want[i] * sizeof(int));
        }
        printf(" tokens equal batch 1's\n");
        gen_batch_free(&b);
    }
    for (int i = 0; i < GB_N; i++) {
        free(ids[i]);
        free(want[i]);
        free(got[i]);
    }
    free(px);
    vlm_free(&m);
}

static void test_gen_batch_qwen2_ldp_lora(void **state) {
    (void)state;
    check_gen_batch("qwen2", CONNECTOR_LDP, "ldp_qwen2.safetensors", "qwen2_lora");
}
static void test_gen_batch_llama_mlp2x_rslora(void **state) {
    (void)state;
    check_gen_batch("llama", CONNECTOR_MLP2X_GELU, "mlp2x_llama.safetensors", "llama_lora");
}

// ---------------------------------------------------------------- timings (`test_gpu bench`)

// mean milliseconds of one call of `call` over enough repetitions to fill ~0.3 s, after a warm-up
#define TIME_MS(ms, call)                                              \
    do {                                                               \
        call;                                                          \
        G->synchronize();                                              \
        int reps_ = 0;                                                 \
        double t0_ = time_now(), t_;                                   \
        do {                                                           \
            call;                                                      \
            reps_++;                                                   \
            G->synchronize();                                          \
            t_ = time_now() - t0_;                                     \
        } while (t_ < 0.3 && reps_ < 1000);                            \
        ms = 1e3 * t_ / reps_;                                         \
    } while (0)

static void bench(void) {
    printf("timings on %s (mean of repeated calls, synchronised)\n", G->name);
    double ms;
    // matmuls of Qwen2-0.5B with 2048 tokens
    const int mm[][3] = {{2048, 896, 4864}, {2048, 4864, 896}, {2048, 896, 896}, {2048, 896, 128}, {2048, 896, 64}, {1024, 896, 151936}};
    for (size_t s = 0; s < sizeof mm / sizeof *mm; s++) {
        int N = mm[s][0], Cc = mm[s][1], OC = mm[s][2];
        size_t ni = (size_t)N * Cc, nw = (size_t)OC * Cc, no = (size_t)N * OC;
        void *inp = G->alloc(ni * 2), *w = G->alloc(nw * 2), *out = G->alloc(no * 2), *dinp = G->alloc(ni * 2);
        float *dw = G->alloc(nw * 4);
        double flop = 2.0 * N * Cc * OC;
        TIME_MS(ms, G->matmul_forward(out, inp, w, NULL, N, Cc, OC, 1.0f, 0));
        printf("  matmul_forward  %5dx%5dx%6d  %8.3f ms  %6.1f TFLOP/s\n", N, Cc, OC, ms, flop / ms / 1e9);
        TIME_MS(ms, G->matmul_backward(dinp, NULL, NULL, out, inp, w, N, Cc, OC, 1.0f));
        printf("  matmul dinp     %5dx%5dx%6d  %8.3f ms  %6.1f TFLOP/s\n", N, Cc, OC, ms, flop / ms / 1e9);
        if (OC < 100000) {
            TIME_MS(ms, G->matmul_backward(NULL, dw, NULL, out, inp, w, N, Cc, OC, 1.0f));
            printf("  matmul dw       %5dx%5dx%6d  %8.3f ms  %6.1f TFLOP/s\n", N, Cc, OC, ms, flop / ms / 1e9);
        }
        G->free(inp); G->free(w); G->free(out); G->free(dinp); G->free(dw);
    }
    // attention: the LLM (Qwen2-0.5B: causal, GQA 14/2; micro-batch 16 x 768 and longer rows) and
    // the ViT (CLIP-L/14-336: 577 tokens, full, forward only), on tensor cores ("tc"), on the
    // FMA kernels ("fma", as SVLM_ATTN=fma) and on cuDNN ("cudnn", as SVLM_ATTN=cudnn) when built. FLOPs count the 4 T^2 HD per head of the forward's two
    // products (half of it under a causal mask) and 2.5x that for the backward's five.
    const AttShape at[] = {{16, 768, 14, 2, 64, 1, 0, 1, 1},
                           {2, 1024, 14, 2, 64, 1, 0, 1, 1},
                           {1, 4096, 14, 2, 64, 1, 0, 1, 1},
                           {16, 577, 16, 16, 64, 0, 0, 1, 0}};
    for (size_t s = 0; s < sizeof at / sizeof *at; s++) {
        const AttShape *a = &at[s];
        size_t nq = (size_t)a->B * a->T * a->NH * a->HD, nk = (size_t)a->B * a->T * a->NKV * a->HD;
        float *qh = rnd(nq, -1, 1);
        void *q = up_act(qh, nq), *k = G->alloc(nk * 2), *v = G->alloc(nk * 2), *o = G->alloc(nq * 2);
        void *dq = G->alloc(nq * 2), *dk = G->alloc(nk * 2), *dv = G->alloc(nk * 2);
        G->copy(k, q, nk * 2);
        G->copy(v, q, nk * 2);
        float *lse = G->alloc((size_t)a->B * a->NH * a->T * 4);
        double flop = 4.0 * a->B * a->NH * (double)a->T * a->T * a->HD * (a->causal ? 0.5 : 1.0);
        // 3: cuDNN with bucketed graphs (SVLM_CUDNN_BUCKET=64)
        int npath = cuda_attention_cudnn_available(NULL, 0) ? 4 : 2;
        for (int path = 0; path < npath; path++) {
            int prev = cuda_attention_set_path(path < 3 ? path : 2);
            int prev_bucket = cuda_attention_cudnn_set_bucket(path == 3 ? 64 : 0);
            const char *pn = path == 3 ? "cudnn64" : path == 2 ? "cudnn  " : path ? "fma    " : "tc     ";
            if (path >= 2) {  // the plans' build time (graph, heuristics, kernel compilation), first calls
                long p0, p1;
                double s0, s1;
                cuda_attention_cudnn_build_stats(&p0, &s0);
                G->attention_forward(o, lse, q, k, v, NULL, a->B, a->T, a->NH, a->NKV, a->HD, a->causal);
                if (a->backward)
                    G->attention_backward(dq, dk, dv, o, q, k, v, o, lse, NULL, a->B, a->T, a->NH, a->NKV, a->HD,
                                          a->causal);
                G->synchronize();
                cuda_attention_cudnn_build_stats(&p1, &s1);
                printf("  attention %s B%-2d T%-5d: %ld plans built in %.2f s\n", pn, a->B, a->T, p1 - p0, s1 - s0);
            }
            TIME_MS(ms, G->attention_forward(o, lse, q, k, v, NULL, a->B, a->T, a->NH, a->NKV, a->HD, a->causal));
            printf("  attention fwd %s B%-2d T%-5d NH%-2d NKV%-2d HD%d%s  %8.3f ms  %6.1f TFLOP/s\n", pn, a->B, a->T,
                   a->NH, a->NKV, a->HD, a->causal ? " causal" : "", ms, flop / ms / 1e9);
            if (a->backward) {
                TIME_MS(ms, G->attention_backward(dq, dk, dv, o, q, k, v, o, lse, NULL, a->B, a->T, a->NH, a->NKV, a->HD,
                                                  a->causal));
                printf("  attention bwd %s B%-2d T%-5d NH%-2d NKV%-2d HD%d%s  %8.3f ms  %6.1f TFLOP/s\n", pn, a->B, a->T,
                       a->NH, a->NKV, a->HD, a->causal ? " causal" : "", ms, 2.5 * flop / ms / 1e9);
            }
            cuda_attention_cudnn_set_bucket(prev_bucket);
            cuda_attention_set_path(prev);
        }
        free(qh);
        G->free(q); G->free(k); G->free(v); G->free(o); G->free(dq); G->free(dk); G->free(dv); G->free(lse);
    }
    // memory-bound ops
    {
        int N = 2048, Cc = 896, I = 4864, M = 1024, V = 151936;
        void *x = G->alloc((size_t)N * I * 2), *y = G->alloc((size_t)N * I * 2), *z = G->alloc((size_t)N * I * 2);
        void *w = G->alloc((size_t)Cc * 2), *lg = G->alloc((size_t)M * V * 2);
        float *rs = G->alloc((size_t)N * 4), *dw = G->alloc((size_t)Cc * 4), *loss = G->alloc((size_t)M * 4);
        int *tg = G->alloc((size_t)M * 4);
        TIME_MS(ms, G->rmsnorm_forward(y, rs, x, w, N, Cc, 1e-6f));
        printf("  rmsnorm_forward 2048x896           %8.3f ms\n", ms);
        TIME_MS(ms, G->rmsnorm_backward(z, dw, y, x, w, rs, N, Cc));
        printf("  rmsnorm_backward 2048x896 (+dw)    %8.3f ms\n", ms);
        TIME_MS(ms, G->swiglu_forward(z, x, y, N, I, I));
        printf("  swiglu_forward 2048x4864           %8.3f ms  %6.0f GB/s\n", ms, 3.0 * N * I * 2 / ms / 1e6);
        TIME_MS(ms, G->swiglu_backward(x, y, z, x, y, N, I, I));
        printf("  swiglu_backward 2048x4864          %8.3f ms  %6.0f GB/s\n", ms, 5.0 * N * I * 2 / ms / 1e6);
        // the fused layout: gate | up halves of rows I wide
        TIME_MS(ms, G->swiglu_forward(z, x, act_at(G, x, I / 2), N, I / 2, I));
        printf("  swiglu_forward rows 2048x2432 ld 4864 %5.3f ms  %6.0f GB/s\n", ms, 1.5 * N * I * 2 / ms / 1e6);
        TIME_MS(ms, G->swiglu_backward(x, act_at(G, x, I / 2), z, x, act_at(G, x, I / 2), N, I / 2, I));
        printf("  swiglu_backward rows 2048x2432 ld 4864 %4.3f ms  %6.0f GB/s\n", ms, 2.5 * N * I * 2 / ms / 1e6);
        TIME_MS(ms, G->cross_entropy(loss, lg, lg, tg, M, V, 1.0f));
        printf("  cross_entropy 1024x151936          %8.3f ms  %6.0f GB/s\n", ms, 2.0 * M * V * 2 / ms / 1e6);
        size_t np = 500u * 1000 * 1000 / 4;
        float *p = G->alloc(np * 4), *g = G->alloc(np * 4), *m = G->alloc(np * 4), *vv = G->alloc(np * 4);
        TIME_MS(ms, G->adamw_update(p, g, m, vv, np, 1e-4, 0.9, 0.999, 1e-8, 0.0, 1));
        printf("  adamw_update 125M params           %8.3f ms  %6.0f GB/s\n", ms, 7.0 * np * 4 / ms / 1e6);
        TIME_MS(ms, (void)G->sum_squares(g, np));
        printf("  sum_squares 125M                   %8.3f ms  %6.0f GB/s\n", ms, 1.0 * np * 4 / ms / 1e6);
        G->free(x); G->free(y); G->free(z); G->free(w); G->free(lg); G->free(rs); G->free(dw); G->free(loss);
        G->free(tg); G->free(p); G->free(g); G->free(m); G->free(vv);
    }
}

// ---------------------------------------------------------------- memory plan and plan cache

// The memory plan on the CUDA backend (bf16 buffers, the ops' scratch): vlm_init_reserved holds
// exactly the plan, and training steps allocate nothing more (a scratch
// buffer that had to grow would show as a rise of in_use).
// the plan is what setup and two steps hold on the device, for the fixture's VLM (spec with
// NULL vision: the clip fixture; else that tower fixture at vision_layer -1)
static void check_memory_plan(const char *fixture, const char *llm, ConnectorType ct, const char *vision) {
    KernelsWork none;
    memset(&none, 0, sizeof none);
    G->workspace_reserve(&none);  // drops the scratch the op tests grew
    VlmFixture fx;
    vlm_fixture_open(&fx, fixture);
    VlmSpec spec = fixture_vlm_spec(llm, ct, "qwen2_lora", fx.B, fx.T, fx.n_img, 0.0f);
    char vdir[1024];
    if (vision) {
        snprintf(vdir, sizeof vdir, "%s", fixture_path(vision));
        spec.vision_dir = vdir;
        spec.vision_layer = -1;
    }
    size_t base, after;
    G->memory(&base, NULL);
    base -= G->workspace_bytes(&none);  // the fixed scratch (sum_squares) stays reserved: it is in the plan
    MemPlan plan;
    vlm_plan(&plan, G, &spec);
    G->memory(&after, NULL);
    assert_int_equal(after, base + G->workspace_bytes(&none));
    Vlm m;
    vlm_init_reserved(&m, G, &spec);
    G->memory(&after, NULL);
    printf("    %s: plan %zu bytes (workspace %zu), held after setup %zu\n", fixture, plan.total, plan.workspace,
           after - base);
    assert_int_equal(after - base, plan.total);
    vlm_init_trainable(&m, 5);
    for (int rep = 0; rep < 2; rep++) {
        vlm_forward_backward(&m, &fx.batch, 1.0f, NULL);
        double ss = G->sum_squares(m.train.grad, m.train.numel);
        assert_true(isfinite(ss));
    }
    G->synchronize();
    G->memory(&after, NULL);
    printf("    %s: held after 2 forward+backward steps %zu\n", fixture, after - base);
    assert_int_equal(after - base, plan.total);
    size_t whole = plan.trainable, span = m.train.span;
    vlm_free(&m);
    // ZeRO-1 on 2 ranks (rank 1): the fp32 masters and moments of one slice, the plan still exact
    spec.opt_shards = 2;
    spec.opt_shard = 1;
    MemPlan sharded;
    vlm_plan(&sharded, G, &spec);
    vlm_init_reserved(&m, G, &spec);
    G->memory(&after, NULL);
    assert_int_equal(after - base, sharded.total);
    assert_true(params_masters_sharded(&m.train));
    size_t len = m.train.span / 2;  // the span padded to 2 slices: grads and copy span long
    assert_int_equal(sharded.trainable, (m.train.span + 3 * len) * sizeof(float) + m.train.span * G->act_bytes);
    printf("    ZeRO-1 of 2 ranks: trainable state %zu bytes instead of %zu (span %zu), held = plan\n", sharded.trainable,
           whole, span);
    assert_true(sharded.trainable < whole);
    vlm_free(&m);
    vlm_fixture_close(&fx);
}

static void test_memory_plan(void **state) {
    (void)state;
    check_memory_plan("vlm_qwen2_ldp.safetensors", "qwen2", CONNECTOR_LDP, NULL);
    // InternViT + mlp1: the LayerNorm over 4Cv-wide pixel-shuffled tokens needs its scratch planned
    check_memory_plan("vlm_qwen2_internvl.safetensors", "qwen2", CONNECTOR_INTERNVL, "internvit");
}

// ---------------------------------------------------------------- data parallelism in one process

// gradient buckets started by the backward on the CUDA stream sum exactly as one reduction
// after it; ZeRO-1's sharded fp32 masters (the compute copy is bf16 here) update exactly as a
// whole set (tests/testlib.c; on the CPU: tests/test_zero.c)
static void test_grad_buckets(void **state) {
    (void)state;
    check_grad_buckets(G);
}
static void test_sharded_masters(void **state) {
    (void)state;
    check_sharded_masters(G);
}

// kernels/cuda/matmul.cu: how many GEMMs ran on cuBLASLt and on svlm's fallback kernel so far
void cuda_matmul_counts(long *cublaslt, long *fallback);

// More distinct matmul shapes than the cuBLASLt plan table holds (batches padded to their
// longest row give a new N most steps): the table empties and refills, results stay right, and
// every one of these aligned shapes ran on cuBLASLt (the emulator's too: tests/gpu/emu)
static void test_matmul_many_shapes(void **state) {
    (void)state;
    int Cc = 24, OC = 40, nshapes = 700;
    long lt0, fb0, lt1, fb1;
    cuda_matmul_counts(&lt0, &fb0);
    float *inp = rnd((size_t)nshapes * Cc, -1, 1), *w = rnd((size_t)OC * Cc, -1, 1), *bias = rnd(OC, -1, 1);
    void *di = up_act(inp, (size_t)nshapes * Cc), *dw = up_act(w, (size_t)OC * Cc), *db = up_act(bias, OC);
    void *dout = G->alloc((size_t)nshapes * OC * G->act_bytes);
    float *ref = zeros((size_t)nshapes * OC);
    double worst = 0;
    for (int N = 1; N <= nshapes; N++) {
        C->matmul_forward(ref, inp, w, bias, N, Cc, OC, 1.0f, 0);
        G->matmul_forward(dout, di, dw, db, N, Cc, OC, 1.0f, 0);
        if (N % 50 == 0 || N == nshapes) {
            float *got = down_act(dout, (size_t)N * OC);
            double e = rel_err(got, ref, (size_t)N * OC);
            if (e > worst) worst = e;
            free(got);
        }
    }
    char what[96];
    snprintf(what, sizeof what, "matmul_forward N=1..%d (%d shapes)", nshapes, nshapes);
    printf("    %-60s rel err %.2e (tol %.0e)\n", what, worst, TOL_BF16);
    assert_true(worst <= TOL_BF16);
    cuda_matmul_counts(&lt1, &fb1);
    const char *forced = getenv("SVLM_MATMUL_FALLBACK");
    printf("    %d shapes: %ld GEMMs on cuBLASLt, %ld on the fallback kernel\n", nshapes, lt1 - lt0, fb1 - fb0);
    if (!(forced && *forced && strcmp(forced, "0")))
        assert_int_equal(lt1 - lt0, nshapes);
    free(inp); free(w); free(bias); free(ref);
    G->free(di); G->free(dw); G->free(db); G->free(dout);
}

int main(int argc, char **argv) {
    if (!kernels_cuda()) {
        printf("test_gpu: no CUDA device (kernels_cuda() returned NULL): skipped\n");
        return 77;
    }
    // "model" or "ops" as the first argument runs one part (the model part first on a new GPU),
    // and a second argument runs only the tests whose names match it (a shell pattern), or with a
    // leading "!" those whose names do not; "bench" prints timings of the main ops at Qwen2-0.5B /
    // CLIP-L sizes instead of testing
    const char *part = argc > 1 ? argv[1] : "all";
    const char *pattern = argc > 2 ? argv[2] : NULL;
    if (strcmp(part, "bench") == 0) {
        C = kernels_cpu();
        G = kernels_cuda();
        emu = strcmp(G->name, "cuda-emu") == 0;
        if (emu) {
            printf("test_gpu bench: timings on the emulator mean nothing\n");
            return 0;
        }
        bench();
        return 0;
    }
    const struct CMUnitTest model[] = {
        cmocka_unit_test(test_model_qwen2_ldp_lora),
        cmocka_unit_test(test_model_qwen2_ldp_stage1),
        cmocka_unit_test(test_model_llama_mlp2x_rslora),
        cmocka_unit_test(test_model_llama_idefics3_lora),
        cmocka_unit_test(test_model_qwen2_internvl_lora),
        cmocka_unit_test(test_model_towers),
        cmocka_unit_test(test_memory_plan),
        cmocka_unit_test(test_grad_buckets),
        cmocka_unit_test(test_sharded_masters),
        cmocka_unit_test(test_gen_batch_qwen2_ldp_lora),
        cmocka_unit_test(test_gen_batch_llama_mlp2x_rslora),
    };
    const struct CMUnitTest ops[] = {
        cmocka_unit_test(test_table_and_memory),
        cmocka_unit_test(test_matmul_forward),
        cmocka_unit_test(test_matmul_backward),
        cmocka_unit_test(test_matmul_ld),
        cmocka_unit_test(test_swiglu_rows),
        cmocka_unit_test(test_matmul_splitk),
        cmocka_unit_test(test_matmul_many_shapes),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_cached),
        cmocka_unit_test(test_attention_segment_ends),
        cmocka_unit_test(test_attention_cudnn),
        cmocka_unit_test(test_pointwise),
        cmocka_unit_test(test_grid_ops),
        cmocka_unit_test(test_rows),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_sum_squares_and_scale),
        cmocka_unit_test(test_adamw_span),
        cmocka_unit_test(test_sum_f64),
    };
    struct CMUnitTest chosen[sizeof ops / sizeof ops[0] + sizeof model / sizeof model[0]];
    int failed = 0;
    size_t n;
    if (strcmp(part, "ops") != 0 && (n = test_select(chosen, model, sizeof model / sizeof model[0], pattern)))
        failed += _cmocka_run_group_tests("model", chosen, n, setup, NULL);
    if (strcmp(part, "model") != 0 && (n = test_select(chosen, ops, sizeof ops / sizeof ops[0], pattern)))
        failed += _cmocka_run_group_tests("ops", chosen, n, setup, NULL);
    return failed ? 1 : 0;
}
