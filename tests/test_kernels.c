// test_kernels.c: the CPU backend's forward ops, memory ops and optimizer against independent
// double-precision references written here with plain loops, on small odd shapes; aliasing and
// "+=" semantics; and bit-identical results from repeated runs and from different thread counts.
// Finite-difference gradient checks live in test_kernels_grad.c.
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/kernels.h"
#include "tests/testlib.h"

static const Kernels *K;
static uint64_t seed = 0x5eed1234abcdULL;

// fp32 kernels against double references: 1e-5 leaves room for the float rounding of sums of up
// to a few dozen terms and of exp/erf, while an indexing or formula mistake gives errors near 1
#define TOL 1e-5

// testlib.h's test_randv, drawing from this file's seed
#define randv(n, lo, hi) test_randv((n), (lo), (hi), &seed)

static int setup(void **state) {
    (void)state;
    int threads = omp_get_max_threads();
    K = kernels_cpu();
    // making the BLAS single-threaded must not change OpenMP's count (OpenBLAS's OpenMP build)
    if (omp_get_max_threads() != threads) {
        print_error("kernels_cpu changed the OpenMP thread count from %d to %d\n", threads, omp_get_max_threads());
        return -1;
    }
    return K ? 0 : -1;
}

// ---------------------------------------------------------------- memory

static void test_table_and_memory(void **state) {
    (void)state;
    assert_string_equal(K->name, "cpu");
    assert_int_equal(K->act_bytes, 4);
    assert_int_equal(K->act_is_f32, 1);
    assert_true(K->xent_chunk_rows > 0);
    // every slot filled
#define SLOT(f) assert_non_null(K->f)
    SLOT(alloc); SLOT(free); SLOT(zero); SLOT(copy); SLOT(upload); SLOT(download); SLOT(upload_act);
    SLOT(download_act); SLOT(cast_to_act); SLOT(synchronize); SLOT(memory); SLOT(matmul_forward);
    SLOT(matmul_backward); SLOT(layernorm_forward); SLOT(layernorm_backward); SLOT(rmsnorm_forward);
    SLOT(rmsnorm_backward); SLOT(rope_forward); SLOT(rope_backward); SLOT(attention_forward);
    SLOT(attention_backward); SLOT(gelu_forward); SLOT(gelu_backward); SLOT(quick_gelu_forward);
    SLOT(quick_gelu_backward); SLOT(gelu_tanh_forward); SLOT(gelu_tanh_backward); SLOT(swiglu_forward); SLOT(swiglu_backward); SLOT(add);
    SLOT(avgpool2x2_forward); SLOT(avgpool2x2_backward); SLOT(dwconv3x3_forward);
    SLOT(dwconv3x3_backward); SLOT(im2col_patches); SLOT(vit_embed); SLOT(embedding_forward);
    SLOT(gather_rows); SLOT(scatter_rows); SLOT(cross_entropy); SLOT(adamw_update);
    SLOT(sum_squares); SLOT(scale_f32); SLOT(dropout); SLOT(attention_cached); SLOT(sum_f64); SLOT(adamw_span); SLOT(matmul_backward_set);
    SLOT(add_rmsnorm_forward); SLOT(matmul_forward_ld); SLOT(matmul_backward_ld); SLOT(copy_rows); SLOT(rmsnorm_backward_set);
    SLOT(grad_begin); SLOT(grad_settle); SLOT(host_alloc); SLOT(host_free); SLOT(host_ready);
#undef SLOT

    size_t used0, peak0, used1, peak1;
    K->memory(&used0, &peak0);
    void *big = K->alloc(1 << 20);
    K->memory(&used1, &peak1);
    assert_true(used1 >= used0 + (1 << 20) && peak1 >= used1);  // accounted while held
    K->free(big);
    K->memory(&used1, NULL);
    assert_int_equal(used1, used0);  // and given back

    size_t sizes[] = {1, 3, 64, 1000, 4099};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char *p = K->alloc(sizes[i]);
        assert_true(((uintptr_t)p & 63) == 0);
        for (size_t j = 0; j < sizes[i]; j++) assert_int_equal(p[j], 0);
        K->free(p);
    }
    size_t n = 37;
    float *host = randv(n, -3, 3), *back = test_nanv(n);
    float *dev = K->alloc(n * sizeof(float));
    K->upload(dev, host, n * sizeof(float));
    K->download(back, dev, n * sizeof(float));
    test_expect_same_bits("upload/download", back, host, n);
    K->zero(dev, n * sizeof(float));
    for (size_t i = 0; i < n; i++) assert_true(dev[i] == 0.0f);
    K->upload_act(dev, host, n);
    memset(back, 0, n * sizeof(float));
    K->download_act(back, dev, n);
    test_expect_same_bits("upload_act/download_act", back, host, n);
    float *dev2 = K->alloc(n * sizeof(float));
    K->copy(dev2, dev, n * sizeof(float));
    test_expect_same_bits("copy", dev2, host, n);
    K->zero(dev2, n * sizeof(float));
    K->cast_to_act(dev2, dev, n);
    test_expect_same_bits("cast_to_act", dev2, host, n);
    K->cast_to_act(dev2, dev2, n);  // dst == src is a no-op
    test_expect_same_bits("cast_to_act in place", dev2, host, n);
    K->synchronize();
    K->free(dev);
    K->free(dev2);
    free(host);
    free(back);
}

// ---------------------------------------------------------------- matmul

static void ref_matmul(float *out, const float *inp, const float *w, const float *bias,
                       const float *out0, int N, int C, int OC, float alpha) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = 0;
            for (int c = 0; c < C; c++) s += (double)inp[n * C + c] * w[o * C + c];
            s = alpha * s + (bias ? bias[o] : 0.0) + (out0 ? out0[n * OC + o] : 0.0);
            out[n * OC + o] = (float)s;
        }
}

// matmul_backward_set: dinp overwritten whatever it held, the same bits as clearing it first and
// accumulating (what the model did before); dw, dbias still accumulate
static void test_matmul_backward_set(void **state) {
    (void)state;
    int N = 37, C = 29, OC = 23;
    float *inp = randv((size_t)N * C, -1, 1), *w = randv((size_t)OC * C, -1, 1), *dout = randv((size_t)N * OC, -1, 1);
    float *di_set = randv((size_t)N * C, -9, 9), *di_ref = test_zerov((size_t)N * C);
    float *dw0 = randv((size_t)OC * C, -1, 1), *dw1 = test_copyv(dw0, (size_t)OC * C), *db0 = randv(OC, -1, 1), *db1 = test_copyv(db0, OC);
    K->matmul_backward_set(di_set, dw0, db0, dout, inp, w, N, C, OC, 0.5f);
    K->matmul_backward(di_ref, dw1, db1, dout, inp, w, N, C, OC, 0.5f);
    assert_memory_equal(di_set, di_ref, (size_t)N * C * sizeof(float));
    assert_memory_equal(dw0, dw1, (size_t)OC * C * sizeof(float));
    assert_memory_equal(db0, db1, OC * sizeof(float));
    free(inp); free(w); free(dout); free(di_set); free(di_ref); free(dw0); free(dw1); free(db0); free(db1);
}

static void test_matmul_forward(void **state) {
    (void)state;
    int shapes[][3] = {{11, 13, 9}, {1, 7, 5}, {5, 1, 3}, {4, 6, 1}, {70, 33, 65}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int N = shapes[s][0], C = shapes[s][1], OC = shapes[s][2];
        float *inp = randv((size_t)N * C, -1, 1), *w = randv((size_t)OC * C, -1, 1);
        float *bias = randv(OC, -1, 1), *out0 = randv((size_t)N * OC, -1, 1);
        float *ref = test_zerov((size_t)N * OC), *out = test_nanv((size_t)N * OC);
        // accumulate = 0 must ignore what out held, NaN included
        K->matmul_forward(out, inp, w, bias, N, C, OC, 0.7f, 0);
        ref_matmul(ref, inp, w, bias, NULL, N, C, OC, 0.7f);
        test_expect_close("matmul_forward bias", out, ref, (size_t)N * OC, TOL);
        K->matmul_forward(out, inp, w, NULL, N, C, OC, 1.0f, 0);
        ref_matmul(ref, inp, w, NULL, NULL, N, C, OC, 1.0f);
        test_expect_close("matmul_forward no bias", out, ref, (size_t)N * OC, TOL);
        memcpy(out, out0, (size_t)N * OC * sizeof(float));
        K->matmul_forward(out, inp, w, bias, N, C, OC, -1.3f, 1);
        ref_matmul(ref, inp, w, bias, out0, N, C, OC, -1.3f);
        test_expect_close("matmul_forward accumulate", out, ref, (size_t)N * OC, TOL);
        free(inp); free(w); free(bias); free(out0); free(ref); free(out);
    }
}

// ---------------------------------------------------------------- strided rows (fused projections)

// (N, C) block at column off of rows ld wide <-> dense
static float *slice_of(const float *wide, int N, int C, int ld, int off) {
    float *d = xmalloc((size_t)N * C * sizeof(float));
    for (int n = 0; n < N; n++) memcpy(d + (size_t)n * C, wide + (size_t)n * ld + off, (size_t)C * sizeof(float));
    return d;
}

// the columns of wide outside [off, off + C) have the bits of before
static void expect_outside_same(const char *what, const float *wide, const float *before, int N, int C, int ld, int off) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < ld; c++) {
            size_t i = (size_t)n * ld + c;
            if ((c < off || c >= off + C) && memcmp(&wide[i], &before[i], sizeof(float)))
                fail_msg("%s: wrote outside its columns at row %d column %d", what, n, c);
        }
}

// matmul_forward_ld / matmul_backward_ld on column slices against the double reference and the
// dense ops, at sizes that take the threaded split (SPLIT_MIN_MACS) and at small ones
static void test_matmul_ld(void **state) {
    (void)state;
    int shapes[][3] = {{37, 29, 23}, {300, 70, 130}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int N = shapes[s][0], C = shapes[s][1], OC = shapes[s][2];
        int li = C + 11, oi = 5, lo = 2 * OC + 3, oo = OC;  // input at column 5, output in the second half
        float *inpw = randv((size_t)N * li, -1, 1), *w = randv((size_t)OC * C, -1, 1), *bias = randv(OC, -1, 1);
        float *outw = randv((size_t)N * lo, -1, 1), *outw0 = test_copyv(outw, (size_t)N * lo);
        float *inp = slice_of(inpw, N, C, li, oi), *out0 = slice_of(outw, N, OC, lo, oo);
        float *ref = test_zerov((size_t)N * OC);
        K->matmul_forward_ld(outw + oo, inpw + oi, w, bias, N, C, OC, 0.7f, 1, lo, li);
        ref_matmul(ref, inp, w, bias, out0, N, C, OC, 0.7f);
        float *got = slice_of(outw, N, OC, lo, oo);
        test_expect_close("matmul_forward_ld accumulate", got, ref, (size_t)N * OC, TOL);
        expect_outside_same("matmul_forward_ld", outw, outw0, N, OC, lo, oo);
        free(got);
        K->matmul_forward_ld(outw + oo, inpw + oi, w, NULL, N, C, OC, 1.0f, 0, lo, li);
        ref_matmul(ref, inp, w, NULL, NULL, N, C, OC, 1.0f);
        got = slice_of(outw, N, OC, lo, oo);
        test_expect_close("matmul_forward_ld", got, ref, (size_t)N * OC, TOL);
        free(got);

        // backward: the dense op on the slices' copies is the reference (test_kernels_grad checks it)
        float *doutw = randv((size_t)N * lo, -1, 1), *dout = slice_of(doutw, N, OC, lo, oo);
        float *dinpw = randv((size_t)N * li, -1, 1), *dinpw0 = test_copyv(dinpw, (size_t)N * li);
        float *dinp = slice_of(dinpw, N, C, li, oi);
        float *dw = test_zerov((size_t)OC * C), *dw_ref = test_zerov((size_t)OC * C);
        float *db = test_zerov(OC), *db_ref = test_zerov(OC);
        for (int set = 0; set < 2; set++) {
            memcpy(dinpw, dinpw0, (size_t)N * li * sizeof(float));
            free(dinp);
            dinp = slice_of(dinpw, N, C, li, oi);
            K->matmul_backward_ld(dinpw + oi, dw, db, doutw + oo, inpw + oi, w, N, C, OC, 0.5f, set, lo, li);
            (set ? K->matmul_backward_set : K->matmul_backward)(dinp, dw_ref, db_ref, dout, inp, w, N, C, OC, 0.5f);
            got = slice_of(dinpw, N, C, li, oi);
            test_expect_close(set ? "matmul_backward_ld set dinp" : "matmul_backward_ld dinp", got, dinp, (size_t)N * C,
                              TOL);
            expect_outside_same("matmul_backward_ld", dinpw, dinpw0, N, C, li, oi);
            free(got);
        }
        test_expect_close("matmul_backward_ld dw", dw, dw_ref, (size_t)OC * C, TOL);
        test_expect_close("matmul_backward_ld dbias", db, db_ref, OC, TOL);
        free(inpw); free(w); free(bias); free(outw); free(outw0); free(inp); free(out0); free(ref);
        free(doutw); free(dout); free(dinpw); free(dinpw0); free(dinp); free(dw); free(dw_ref); free(db); free(db_ref);
    }
}

// swiglu over gate | up rows, rope out of and into column slices, copy_rows: the dense ops' values
// and nothing written outside the slices
static void test_rows_strided(void **state) {
    (void)state;
    int N = 13, W = 21;
    float *gu = randv((size_t)N * 2 * W, -4, 4), *gate = slice_of(gu, N, W, 2 * W, 0), *up = slice_of(gu, N, W, 2 * W, W);
    float *out = test_nanv((size_t)N * W), *ref = test_nanv((size_t)N * W), *d = randv((size_t)N * W, -1, 1);
    K->swiglu_forward(out, gu, gu + W, N, W, 2 * W);
    K->swiglu_forward(ref, gate, up, N, W, W);
    test_expect_close("swiglu_forward rows", out, ref, (size_t)N * W, TOL);
    float *dg = test_nanv((size_t)N * W), *du = test_nanv((size_t)N * W);
    K->swiglu_backward(dg, du, d, gate, up, N, W, W);
    K->swiglu_backward(gu, gu + W, d, gu, gu + W, N, W, 2 * W);  // in place, as the LLM's backward runs it
    float *dg2 = slice_of(gu, N, W, 2 * W, 0), *du2 = slice_of(gu, N, W, 2 * W, W);
    test_expect_close("swiglu_backward rows dgate", dg2, dg, (size_t)N * W, TOL);
    test_expect_close("swiglu_backward rows dup", du2, du, (size_t)N * W, TOL);
    free(gu); free(gate); free(up); free(out); free(ref); free(d); free(dg); free(du); free(dg2); free(du2);

    int NH = 3, HD = 8, w = NH * HD, ld = 2 * w + 6, off = w;
    int pos[13] = {0, 1, 2, 3, 9, 40, 41, 500, 7, 7, 8, 1000, 4095};
    float *wide = randv((size_t)N * ld, -1, 1), *wide0 = test_copyv(wide, (size_t)N * ld);
    float *x = slice_of(wide, N, w, ld, off), *y = test_nanv((size_t)N * w), *yref = test_nanv((size_t)N * w);
    K->rope_forward(y, wide + off, pos, N, NH, HD, 10000.0f, w, ld);
    K->rope_forward(yref, x, pos, N, NH, HD, 10000.0f, w, w);
    test_expect_close("rope_forward strided input", y, yref, (size_t)N * w, TOL);
    K->rope_backward(wide + off, y, pos, N, NH, HD, 10000.0f, w, ld);  // back into the slice: x again
    float *back = slice_of(wide, N, w, ld, off);
    test_expect_close("rope_backward into strided rows", back, x, (size_t)N * w, TOL);
    expect_outside_same("rope_backward", wide, wide0, N, w, ld, off);
    memcpy(wide, wide0, (size_t)N * ld * sizeof(float));
    K->copy_rows(wide + 2, yref, N, w, ld, w);
    float *cp = slice_of(wide, N, w, ld, 2);
    test_expect_same_bits("copy_rows", cp, yref, (size_t)N * w);
    expect_outside_same("copy_rows", wide, wide0, N, w, ld, 2);
    K->copy_rows(y, wide + 2, N, w, w, ld);
    test_expect_same_bits("copy_rows out of rows", y, yref, (size_t)N * w);
    free(wide); free(wide0); free(x); free(y); free(yref); free(back); free(cp);
}

// ---------------------------------------------------------------- norms

static void test_layernorm_forward(void **state) {
    (void)state;
    int N = 11, C = 13;
    float eps = 1e-5f;
    // an offset mean checks that the variance does not come from E[x^2] - E[x]^2
    float *inp = randv((size_t)N * C, 2, 6), *w = randv(C, 0.5f, 1.5f), *b = randv(C, -1, 1);
    float *out = test_nanv((size_t)N * C), *mean = test_nanv(N), *rstd = test_nanv(N);
    float *ref = test_zerov((size_t)N * C), *ref_mean = test_zerov(N), *ref_rstd = test_zerov(N);
    for (int n = 0; n < N; n++) {
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += inp[n * C + c];
        m /= C;
        for (int c = 0; c < C; c++) v += (inp[n * C + c] - m) * (inp[n * C + c] - m);
        v /= C;
        double r = 1.0 / sqrt(v + eps);
        for (int c = 0; c < C; c++) ref[n * C + c] = (float)((inp[n * C + c] - m) * r * w[c] + b[c]);
        ref_mean[n] = (float)m;
        ref_rstd[n] = (float)r;
    }
    K->layernorm_forward(out, mean, rstd, inp, w, b, N, C, eps);
    test_expect_close("layernorm_forward out", out, ref, (size_t)N * C, TOL);
    test_expect_close("layernorm_forward mean", mean, ref_mean, N, TOL);
    test_expect_close("layernorm_forward rstd", rstd, ref_rstd, N, TOL);
    float *out2 = test_nanv((size_t)N * C);
    K->layernorm_forward(out2, NULL, NULL, inp, w, b, N, C, eps);  // statistics not wanted
    test_expect_same_bits("layernorm_forward without stats", out2, out, (size_t)N * C);
    free(inp); free(w); free(b); free(out); free(mean); free(rstd);
    free(ref); free(ref_mean); free(ref_rstd); free(out2);
}

static void test_rmsnorm_forward(void **state) {
    (void)state;
    int N = 11, C = 13;
    float eps = 1e-6f;
    float *inp = randv((size_t)N * C, -2, 2), *w = randv(C, 0.5f, 1.5f);
    float *out = test_nanv((size_t)N * C), *rstd = test_nanv(N);
    float *ref = test_zerov((size_t)N * C), *ref_rstd = test_zerov(N);
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)inp[n * C + c] * inp[n * C + c];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) ref[n * C + c] = (float)(inp[n * C + c] * r * w[c]);
        ref_rstd[n] = (float)r;
    }
    K->rmsnorm_forward(out, rstd, inp, w, N, C, eps);
    test_expect_close("rmsnorm_forward out", out, ref, (size_t)N * C, TOL);
    test_expect_close("rmsnorm_forward rstd", rstd, ref_rstd, N, TOL);
    free(inp); free(w); free(out); free(rstd); free(ref); free(ref_rstd);
}

// ---------------------------------------------------------------- rope

// the angle in fp32 exactly as the interface specifies (it is what transformers computes), the
// rotation in double from the rotate-half formula
static void ref_rope(float *out, const float *inp, const int *pos, int N, int NH, int HD, float theta) {
    int half = HD / 2;
    for (int n = 0; n < N; n++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < half; i++) {
                float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)HD);
                float angle = (float)pos[n] * inv_freq;
                double c = cos((double)angle), s = sin((double)angle);
                const float *x = inp + (size_t)n * NH * HD + h * HD;
                float *y = out + (size_t)n * NH * HD + h * HD;
                y[i] = (float)(x[i] * c - x[i + half] * s);
                y[i + half] = (float)(x[i + half] * c + x[i] * s);
            }
}

static void test_rope_forward(void **state) {
    (void)state;
    int N = 9, NH = 3, HD = 10;
    int pos[9] = {0, 1, 2, 7, 100, 513, 4095, 32767, 3};
    float thetas[] = {10000.0f, 1000000.0f};
    size_t n = (size_t)N * NH * HD;
    float *inp = randv(n, -1, 1), *out = test_nanv(n), *ref = test_zerov(n);
    for (int t = 0; t < 2; t++) {
        ref_rope(ref, inp, pos, N, NH, HD, thetas[t]);
        K->rope_forward(out, inp, pos, N, NH, HD, thetas[t], NH * HD, NH * HD);
        test_expect_close("rope_forward", out, ref, n, TOL);
        float *io = test_copyv(inp, n);
        K->rope_forward(io, io, pos, N, NH, HD, thetas[t], NH * HD, NH * HD);
        test_expect_same_bits("rope_forward in place", io, out, n);
        // backward is the inverse rotation: it brings out back to inp
        K->rope_backward(io, io, pos, N, NH, HD, thetas[t], NH * HD, NH * HD);
        test_expect_close("rope_backward inverts rope_forward", io, inp, n, TOL);
        free(io);
    }
    // position 0 is the identity
    int zeros[9] = {0};
    K->rope_forward(out, inp, zeros, N, NH, HD, 10000.0f, NH * HD, NH * HD);
    test_expect_same_bits("rope_forward at position 0", out, inp, n);
    free(inp); free(out); free(ref);
}

// ---------------------------------------------------------------- attention

static void ref_attention(float *out, float *lse, const float *q, const float *k, const float *v,
                          const int *seg, int B, int T, int NH, int NKV, int HD, int causal) {
    double *p = xmalloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            int g = h / (NH / NKV);
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY;
                for (int j = 0; j < T; j++) {
                    int vis = (!causal || j <= i) && (!seg || seg[b * T + i] == seg[b * T + j]);
                    p[j] = -INFINITY;
                    if (!vis) continue;
                    double s = 0;
                    for (int d = 0; d < HD; d++)
                        s += (double)q[((size_t)(b * T + i) * NH + h) * HD + d] * k[((size_t)(b * T + j) * NKV + g) * HD + d];
                    p[j] = s / sqrt((double)HD);
                    if (p[j] > mx) mx = p[j];
                }
                double sum = 0;
                for (int j = 0; j < T; j++) sum += exp(p[j] - mx);  // exp(-inf) = 0 masks
                for (int d = 0; d < HD; d++) {
                    double o = 0;
                    for (int j = 0; j < T; j++) o += exp(p[j] - mx) / sum * v[((size_t)(b * T + j) * NKV + g) * HD + d];
                    out[((size_t)(b * T + i) * NH + h) * HD + d] = (float)o;
                }
                lse[((size_t)b * NH + h) * T + i] = (float)(mx + log(sum));
            }
        }
    free(p);
}

static void test_attention_forward(void **state) {
    (void)state;
    int B = 2, T = 7;
    // GQA, MHA, MQA; head sizes that exercise the 8-wide dot product, its tail, and both
    int heads[][3] = {{6, 2, 8}, {3, 3, 5}, {4, 1, 19}};
    int seg[14] = {0, 0, 0, 1, 1, 2, 2, 5, 5, 5, 5, 5, 9, 9};
    for (int hc = 0; hc < 3; hc++) {
        int NH = heads[hc][0], NKV = heads[hc][1], HD = heads[hc][2];
        size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * T * NKV * HD, nl = (size_t)B * NH * T;
        float *q = randv(nq, -2, 2), *k = randv(nk, -2, 2), *v = randv(nk, -1, 1);
        float *out = test_nanv(nq), *lse = test_nanv(nl), *ref = test_zerov(nq), *ref_lse = test_zerov(nl);
        for (int mode = 0; mode < 4; mode++) {
            int causal = mode & 1;
            const int *sg = (mode & 2) ? seg : NULL;
            ref_attention(ref, ref_lse, q, k, v, sg, B, T, NH, NKV, HD, causal);
            K->attention_forward(out, lse, q, k, v, sg, B, T, NH, NKV, HD, causal);
            char what[64];
            snprintf(what, sizeof what, "attention_forward %d/%d/%d causal=%d seg=%d", NH, NKV, HD, causal, sg != NULL);
            test_expect_close(what, out, ref, nq, TOL);
            test_expect_close("attention_forward lse", lse, ref_lse, nl, TOL);
        }
        free(q); free(k); free(v); free(out); free(lse); free(ref); free(ref_lse);
    }
    // the first query of a causal row sees only itself: out = v of key 0
    int NH = 2, NKV = 1, HD = 8;
    float *q = randv((size_t)T * NH * HD, -1, 1), *k = randv((size_t)T * HD, -1, 1), *v = randv((size_t)T * HD, -1, 1);
    float *out = test_nanv((size_t)T * NH * HD);
    K->attention_forward(out, NULL, q, k, v, NULL, 1, T, NH, NKV, HD, 1);
    test_expect_same_bits("attention_forward first causal row", out, v, HD);
    free(q); free(k); free(v); free(out);
}

// ---------------------------------------------------------------- pointwise

static void test_pointwise_forward(void **state) {
    (void)state;
    size_t n = 1001;
    float *x = randv(n, -6, 6), *y = randv(n, -3, 3), *out = test_nanv(n), *ref = test_zerov(n);
    x[0] = 0.0f; x[1] = -20.0f; x[2] = 20.0f; x[3] = -100.0f;  // tails: no NaN from exp overflow

    for (size_t i = 0; i < n; i++) ref[i] = (float)(0.5 * x[i] * (1.0 + erf(x[i] / sqrt(2.0))));
    K->gelu_forward(out, x, n);
    test_expect_close("gelu_forward", out, ref, n, TOL);

    for (size_t i = 0; i < n; i++) ref[i] = (float)(x[i] / (1.0 + exp(-1.702 * x[i])));
    K->quick_gelu_forward(out, x, n);
    test_expect_close("quick_gelu_forward", out, ref, n, TOL);

    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        ref[i] = (float)(0.5 * v * (1.0 + tanh(0.79788456080286535588 * (v + 0.044715 * v * v * v))));
    }
    K->gelu_tanh_forward(out, x, n);
    test_expect_close("gelu_tanh_forward", out, ref, n, TOL);

    for (size_t i = 0; i < n; i++) ref[i] = (float)(x[i] / (1.0 + exp(-(double)x[i])) * y[i]);
    K->swiglu_forward(out, x, y, 1, (int)n, (int)n);
    test_expect_close("swiglu_forward", out, ref, n, TOL);
    for (size_t i = 0; i < n; i++) assert_false(isnan(out[i]));

    // every pointwise op may write over an input
    float *io = test_copyv(x, n), *d = randv(n, -1, 1), *dref = test_zerov(n), *d2 = test_zerov(n);
    K->gelu_forward(out, x, n);
    K->gelu_forward(io, io, n);
    test_expect_same_bits("gelu_forward in place", io, out, n);
    memcpy(io, x, n * sizeof(float));
    K->quick_gelu_forward(out, x, n);
    K->quick_gelu_forward(io, io, n);
    test_expect_same_bits("quick_gelu_forward in place", io, out, n);
    memcpy(io, x, n * sizeof(float));
    K->gelu_tanh_forward(out, x, n);
    K->gelu_tanh_forward(io, io, n);
    test_expect_same_bits("gelu_tanh_forward in place", io, out, n);
    memcpy(io, x, n * sizeof(float));
    K->swiglu_forward(out, x, y, 1, (int)n, (int)n);
    K->swiglu_forward(io, io, y, 1, (int)n, (int)n);
    test_expect_same_bits("swiglu_forward in place", io, out, n);
    K->gelu_backward(dref, d, x, n);
    memcpy(io, d, n * sizeof(float));
    K->gelu_backward(io, io, x, n);
    test_expect_same_bits("gelu_backward in place", io, dref, n);
    K->quick_gelu_backward(dref, d, x, n);
    memcpy(io, d, n * sizeof(float));
    K->quick_gelu_backward(io, io, x, n);
    test_expect_same_bits("quick_gelu_backward in place", io, dref, n);
    K->gelu_tanh_backward(dref, d, x, n);
    memcpy(io, d, n * sizeof(float));
    K->gelu_tanh_backward(io, io, x, n);
    test_expect_same_bits("gelu_tanh_backward in place", io, dref, n);
    // swiglu_backward with dgate over gate and dup over up, as a model reusing buffers would
    float *gate = test_copyv(x, n), *up = test_copyv(y, n);
    K->swiglu_backward(dref, d2, d, x, y, 1, (int)n, (int)n);
    K->swiglu_backward(gate, up, d, gate, up, 1, (int)n, (int)n);
    test_expect_same_bits("swiglu_backward in place dgate", gate, dref, n);
    test_expect_same_bits("swiglu_backward in place dup", up, d2, n);
    free(io); free(d); free(dref); free(d2); free(gate); free(up);

    for (size_t i = 0; i < n; i++) ref[i] = x[i] + y[i];
    K->add(out, x, y, n);
    test_expect_same_bits("add", out, ref, n);
    float *a = test_copyv(x, n);
    K->add(a, a, y, n);
    test_expect_same_bits("add in place", a, ref, n);
    free(x); free(y); free(out); free(ref); free(a);
}

// ---------------------------------------------------------------- grids

// inverted dropout: the kept fraction, the scaling, a mask that is a function of (seed, index),
// in-place use, and the backward being the same call on the gradient
static void test_dropout(void **state) {
    size_t n = 200003;
    float *x = randv(n, 0.5f, 2.0f), *y = test_zerov(n), *y2 = test_zerov(n), *g = randv(n, -1, 1), *dg = test_zerov(n);
    float p = 0.3f, scale = 1.0f / (1.0f - p);
    K->dropout(y, x, n, p, 42);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        int keep = dropout_uniform(42, i) >= p;
        kept += keep;
        assert_true(y[i] == (keep ? x[i] * scale : 0.0f));
    }
    double frac = (double)kept / n;
    printf("    kept %.4f (want %.2f)\n", frac, 1 - p);
    assert_true(fabs(frac - (1 - p)) < 0.005);  // 0.005 is about 5 standard deviations at this n
    K->dropout(y2, x, n, p, 43);
    assert_true(memcmp(y, y2, n * sizeof(float)) != 0);  // another seed, another mask
    memcpy(y2, x, n * sizeof(float));
    K->dropout(y2, y2, n, p, 42);
    assert_memory_equal(y, y2, n * sizeof(float));
    // L = sum(dropout(x) * g): dL/dx = dropout(g)
    K->dropout(dg, g, n, p, 42);
    for (size_t i = 0; i < n; i++) assert_true(dg[i] == (y[i] != 0.0f ? g[i] * scale : 0.0f));
    K->dropout(y2, x, n, 0.0f, 42);
    assert_memory_equal(y2, x, n * sizeof(float));  // p = 0: identity
    free(x), free(y), free(y2), free(g), free(dg);
}

static void test_avgpool_forward(void **state) {
    (void)state;
    int B = 2, H = 6, W = 4, C = 13;
    size_t ni = (size_t)B * H * W * C, no = (size_t)B * (H / 2) * (W / 2) * C;
    float *inp = randv(ni, -1, 1), *out = test_nanv(no), *ref = test_zerov(no);
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H / 2; y++)
            for (int x = 0; x < W / 2; x++)
                for (int c = 0; c < C; c++) {
                    double s = 0;
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++) s += inp[((size_t)(b * H + 2 * y + dy) * W + 2 * x + dx) * C + c];
                    ref[((size_t)(b * (H / 2) + y) * (W / 2) + x) * C + c] = (float)(s / 4);
                }
    K->avgpool2x2_forward(out, inp, B, H, W, C);
    test_expect_close("avgpool2x2_forward", out, ref, no, TOL);
    free(inp); free(out); free(ref);
}

// reference conv written as PyTorch defines it, on an NCHW copy of the token-major input
static void ref_dwconv(float *out, const float *inp, const float *w, const float *bias, int B, int H, int W, int C) {
    double *nchw = xmalloc((size_t)B * C * H * W * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < H * W; t++)
            for (int c = 0; c < C; c++) nchw[((size_t)b * C + c) * H * W + t] = inp[((size_t)b * H * W + t) * C + c];
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    double s = bias ? bias[c] : 0.0;
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) {
                            int iy = y - 1 + ky, ix = x - 1 + kx;
                            if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                s += w[c * 9 + ky * 3 + kx] * nchw[((size_t)b * C + c) * H * W + iy * W + ix];
                        }
                    out[((size_t)b * H * W + y * W + x) * C + c] = (float)s;
                }
    free(nchw);
}

static void test_dwconv_forward(void **state) {
    (void)state;
    int dims[][4] = {{2, 6, 6, 13}, {1, 1, 1, 3}, {1, 5, 3, 70}, {2, 2, 7, 1}};
    for (int s = 0; s < 4; s++) {
        int B = dims[s][0], H = dims[s][1], W = dims[s][2], C = dims[s][3];
        size_t n = (size_t)B * H * W * C;
        float *inp = randv(n, -1, 1), *w = randv((size_t)C * 9, -1, 1), *bias = randv(C, -1, 1);
        float *out = test_nanv(n), *ref = test_zerov(n);
        ref_dwconv(ref, inp, w, bias, B, H, W, C);
        K->dwconv3x3_forward(out, inp, w, bias, B, H, W, C);
        test_expect_close("dwconv3x3_forward", out, ref, n, TOL);
        ref_dwconv(ref, inp, w, NULL, B, H, W, C);
        K->dwconv3x3_forward(out, inp, w, NULL, B, H, W, C);
        test_expect_close("dwconv3x3_forward no bias", out, ref, n, TOL);
        free(inp); free(w); free(bias); free(out); free(ref);
    }
}

static void test_im2col_and_vit_embed(void **state) {
    (void)state;
    int cases[][3] = {{2, 9, 3}, {1, 10, 3}, {1, 14, 14}};  // B, S, P: 10 = 3*3 + 1 drops a border
    for (int cs = 0; cs < 3; cs++) {
        int B = cases[cs][0], S = cases[cs][1], P = cases[cs][2];
        int G = S / P, NP = G * G, KK = 3 * P * P;
        size_t no = (size_t)B * NP * KK;
        float *img = randv((size_t)B * 3 * S * S, -1, 1), *out = test_nanv(no), *ref = test_nanv(no);
        // scatter each image pixel to its patch and column, the reverse of the kernel's gather
        for (int b = 0; b < B; b++)
            for (int ch = 0; ch < 3; ch++)
                for (int y = 0; y < G * P; y++)
                    for (int x = 0; x < G * P; x++)
                        ref[((size_t)b * NP + (y / P) * G + x / P) * KK + ch * P * P + (y % P) * P + x % P] =
                            img[(((size_t)b * 3 + ch) * S + y) * S + x];
        K->im2col_patches(out, img, B, S, P);
        test_expect_same_bits("im2col_patches", out, ref, no);
        free(img); free(out); free(ref);
    }
    int B = 2, NP = 9, C = 13;
    float *patches = randv((size_t)B * NP * C, -1, 1), *cls = randv(C, -1, 1), *pos = randv((size_t)(NP + 1) * C, -1, 1);
    size_t no = (size_t)B * (NP + 1) * C;
    float *out = test_nanv(no), *ref = test_zerov(no);
    for (int b = 0; b < B; b++)
        for (int t = 0; t <= NP; t++)
            for (int c = 0; c < C; c++)
                ref[((size_t)b * (NP + 1) + t) * C + c] = (t == 0 ? cls[c] : patches[((size_t)b * NP + t - 1) * C + c]) + pos[t * C + c];
    K->vit_embed(out, patches, cls, pos, B, NP, C);
    test_expect_same_bits("vit_embed", out, ref, no);
    free(patches); free(cls); free(pos); free(out); free(ref);
}

// ---------------------------------------------------------------- rows

static void test_rows(void **state) {
    (void)state;
    int N = 7, C = 13, V = 17;
    int ids[7] = {3, -1, 16, 0, 3, -5, 9};
    float *table = randv((size_t)V * C, -1, 1), *out = randv((size_t)N * C, 5, 6);
    float *before = test_copyv(out, (size_t)N * C);
    K->embedding_forward(out, ids, table, N, C, V);
    for (int i = 0; i < N; i++) {
        const float *want = ids[i] < 0 ? before + (size_t)i * C : table + (size_t)ids[i] * C;
        test_expect_same_bits("embedding_forward row", out + (size_t)i * C, want, C);
    }
    int idx[4] = {5, 0, 2, 6};
    float *g = test_nanv(4 * (size_t)C);
    K->gather_rows(g, out, idx, 4, C);
    for (int i = 0; i < 4; i++) test_expect_same_bits("gather_rows row", g + (size_t)i * C, out + (size_t)idx[i] * C, C);
    int idx_pad[3] = {3, -1, 1};  // a negative index gives a zero row (the LLM's padded layout)
    float *gp = test_nanv(3 * (size_t)C);
    K->gather_rows(gp, out, idx_pad, 3, C);
    test_expect_same_bits("gather_rows row 0", gp, out + 3 * (size_t)C, C);
    test_expect_same_bits("gather_rows row 2", gp + 2 * (size_t)C, out + (size_t)C, C);
    for (int c = 0; c < C; c++) assert_true(gp[C + c] == 0.0f && !signbit(gp[C + c]));
    free(gp);
    float *dst = randv((size_t)N * C, 5, 6), *dst_before = test_copyv(dst, (size_t)N * C);
    K->scatter_rows(dst, g, idx, 4, C);
    for (int r = 0; r < N; r++) {
        const float *want = dst_before + (size_t)r * C;
        for (int i = 0; i < 4; i++)
            if (idx[i] == r) want = g + (size_t)i * C;
        test_expect_same_bits("scatter_rows row", dst + (size_t)r * C, want, C);
    }
    free(table); free(out); free(before); free(g); free(dst); free(dst_before);
}

// an id or target outside the vocabulary is a bug upstream: an internal check stops the program.
// The checks run in a forked child, where libgomp's worker threads no longer exist: one thread.
static void embed_bad_id(void *arg) {
    (void)arg;
    omp_set_num_threads(1);
    int ids[2] = {1, 17};
    float table[17 * 2] = {0}, out[4];
    K->embedding_forward(out, ids, table, 2, 2, 17);
}
static void xent_bad_target(void *arg) {
    (void)arg;
    omp_set_num_threads(1);
    int targets[1] = {5};
    float logits[5] = {0}, losses[1];
    K->cross_entropy(losses, NULL, logits, targets, 1, 5, 1.0f);
}

static void test_out_of_range_ids(void **state) {
    (void)state;
    char buf[4096];
    assert_int_equal(run_child(embed_bad_id, NULL, buf, sizeof buf), 2);
    assert_non_null(strstr(buf, "vocabulary"));
    assert_int_equal(run_child(xent_bad_target, NULL, buf, sizeof buf), 2);
    assert_non_null(strstr(buf, "target"));
}

// ---------------------------------------------------------------- loss

static void test_cross_entropy(void **state) {
    (void)state;
    int M = 5, V = 37;
    float dscale = 0.37f;
    int targets[5] = {0, 36, 5, 5, 17};
    float *logits = randv((size_t)M * V, -8, 8);
    for (int j = 0; j < V; j++) logits[2 * V + j] += 1000.0f;  // large logits: stable logsumexp
    float *losses = test_nanv(M), *dl = test_nanv((size_t)M * V), *ref_l = test_zerov(M), *ref_d = test_zerov((size_t)M * V);
    for (int i = 0; i < M; i++) {
        const float *x = logits + (size_t)i * V;
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < V; j++) mx = x[j] > mx ? x[j] : mx;
        for (int j = 0; j < V; j++) s += exp(x[j] - mx);
        double lse = mx + log(s);
        ref_l[i] = (float)(lse - x[targets[i]]);
        for (int j = 0; j < V; j++) ref_d[(size_t)i * V + j] = (float)(dscale * (exp(x[j] - lse) - (j == targets[i])));
    }
    K->cross_entropy(losses, dl, logits, targets, M, V, dscale);
    test_expect_close("cross_entropy losses", losses, ref_l, M, TOL);
    test_expect_close("cross_entropy dlogits", dl, ref_d, (size_t)M * V, TOL);
    float *losses2 = test_nanv(M);
    K->cross_entropy(losses2, NULL, logits, targets, M, V, dscale);
    test_expect_same_bits("cross_entropy without dlogits", losses2, losses, M);
    float *inplace = test_copyv(logits, (size_t)M * V);
    K->cross_entropy(losses2, inplace, inplace, targets, M, V, dscale);
    test_expect_same_bits("cross_entropy in place losses", losses2, losses, M);
    test_expect_same_bits("cross_entropy in place dlogits", inplace, dl, (size_t)M * V);
    free(logits); free(losses); free(dl); free(ref_l); free(ref_d); free(losses2); free(inplace);
}

// ---------------------------------------------------------------- optimizer

// torch.optim.AdamW's formula in double (a throwaway script confirmed it against torch itself)
static void ref_adamw(double *p, const double *g, double *m, double *v, size_t n, double lr, double b1,
                      double b2, double eps, double wd, int t) {
    double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    for (size_t i = 0; i < n; i++) {
        p[i] *= 1 - lr * wd;
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        p[i] -= lr / bc1 * m[i] / (sqrt(v[i]) / sqrt(bc2) + eps);
    }
}

static void run_adamw_case(const char *what, float lr, float b1, float b2, float eps, float wd, int steps) {
    size_t n = 257;
    float *p = randv(n, -1, 1), *m = test_zerov(n), *v = test_zerov(n), *g = test_zerov(n);
    double *pd = xmalloc(n * sizeof(double)), *md = xcalloc(n, sizeof(double));
    double *vd = xcalloc(n, sizeof(double)), *gd = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) pd[i] = p[i];
    for (int t = 1; t <= steps; t++) {
        // gradients of varied scale, some tiny so that eps matters
        test_fill_uniform(g, n, -1, 1, &seed);
        for (size_t i = 0; i < n; i++) {
            if (i % 7 == 0) g[i] *= 1e-6f;
            gd[i] = g[i];
        }
        K->adamw_update(p, g, m, v, n, lr, b1, b2, eps, wd, t);
        ref_adamw(pd, gd, md, vd, n, lr, b1, b2, eps, wd, t);
    }
    float *pf = test_zerov(n), *mf = test_zerov(n), *vf = test_zerov(n);
    for (size_t i = 0; i < n; i++) { pf[i] = (float)pd[i]; mf[i] = (float)md[i]; vf[i] = (float)vd[i]; }
    char buf[96];
    // 100 fp32 steps against double: rounding accumulates over the steps, hence 1e-5 not 1e-6
    snprintf(buf, sizeof buf, "adamw %s p", what);
    test_expect_close(buf, p, pf, n, 1e-5);
    snprintf(buf, sizeof buf, "adamw %s m", what);
    test_expect_close(buf, m, mf, n, 1e-5);
    snprintf(buf, sizeof buf, "adamw %s v", what);
    test_expect_close(buf, v, vf, n, 1e-5);
    free(p); free(m); free(v); free(g); free(pd); free(md); free(vd); free(gd); free(pf); free(mf); free(vf);
}

static void test_adamw(void **state) {
    (void)state;
    run_adamw_case("wd=0.1", 1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 100);
    run_adamw_case("wd=0", 1e-3f, 0.9f, 0.95f, 1e-6f, 0.0f, 100);
    run_adamw_case("beta1=0.3", 2e-2f, 0.3f, 0.99f, 1e-8f, 0.05f, 100);  // torch's other lerp branch
}

static void test_sum_squares_and_scale(void **state) {
    (void)state;
    size_t n = 100003;  // several partial-sum chunks and a ragged end
    float *x = randv(n, -2, 2);
    double ref = 0;
    for (size_t i = 0; i < n; i++) ref += (double)x[i] * x[i];
    double got = K->sum_squares(x, n);
    print_message("    %-44s rel err %.2e (tol 1e-12)\n", "sum_squares", fabs(got - ref) / ref);
    assert_true(fabs(got - ref) <= 1e-12 * ref);
    assert_true(K->sum_squares(x, 0) == 0.0);
    int default_threads = omp_get_max_threads();
    omp_set_num_threads(3);
    double got3 = K->sum_squares(x, n);
    omp_set_num_threads(default_threads);
    assert_true(memcmp(&got, &got3, sizeof got) == 0);  // independent of the thread count
    x[n - 2] = NAN;
    assert_true(isnan(K->sum_squares(x, n)));
    x[n - 2] = 1.0f;

    // sum_f64: squares the value of sum_squares; plain the sum in order (the loss the host took);
    // accumulate adds to what is there
    double s2, s1, s1a = 0.5, plain = 0, sq = K->sum_squares(x, n);
    K->sum_f64(&s2, x, n, 1, 0);
    assert_memory_equal(&s2, &sq, sizeof sq);
    for (size_t i = 0; i < n; i++) plain += x[i];
    K->sum_f64(&s1, x, n, 0, 0);
    assert_memory_equal(&s1, &plain, sizeof plain);
    K->sum_f64(&s1a, x, n, 0, 1);
    assert_true(s1a == 0.5 + plain);

    float *y = test_copyv(x, n);
    K->scale_f32(y, -0.3f, n);
    for (size_t i = 0; i < n; i++) assert_true(y[i] == x[i] * -0.3f);
    free(x); free(y);
}

// ---------------------------------------------------------------- determinism

typedef struct {
    int B, T, NH, NKV, HD, N, C, OC, H, W;
    const int *seg;
    const float *q, *k, *v, *out, *lse, *dout, *inp, *w, *mean, *rstd;
} DetCase;

// each fills outs[] (zeroed buffers) with one op's gradients
static void det_attention(const DetCase *c, float **o) {
    K->attention_backward(o[0], o[1], o[2], c->dout, c->q, c->k, c->v, c->out, c->lse, c->seg, c->B, c->T,
                          c->NH, c->NKV, c->HD, 1);
}
static void det_matmul(const DetCase *c, float **o) {
    K->matmul_backward(o[0], o[1], o[2], c->dout, c->inp, c->w, c->N, c->C, c->OC, 0.5f);
}
static void det_dwconv(const DetCase *c, float **o) {
    K->dwconv3x3_backward(o[0], o[1], o[2], c->dout, c->inp, c->w, c->B, c->H, c->W, c->C);
}
static void det_layernorm(const DetCase *c, float **o) {
    K->layernorm_backward(o[0], o[1], o[2], c->dout, c->inp, c->w, c->mean, c->rstd, c->N, c->C);
}

// runs an op twice at the default thread count, and when other_threads also at 3 threads, and
// wants the same bits every time: resumed training must reproduce the uninterrupted run
static void expect_repeatable(const char *what, void (*run)(const DetCase *, float **), const DetCase *c,
                              const size_t sizes[3], int other_threads) {
    float *first[3], *again[3];
    for (int i = 0; i < 3; i++) first[i] = test_zerov(sizes[i]);
    run(c, first);
    int default_threads = omp_get_max_threads();
    for (int r = 0; r < 1 + other_threads; r++) {
        for (int i = 0; i < 3; i++) again[i] = test_zerov(sizes[i]);
        if (r == 1) omp_set_num_threads(3);
        run(c, again);
        omp_set_num_threads(default_threads);
        for (int i = 0; i < 3; i++) {
            char buf[96];
            snprintf(buf, sizeof buf, "%s output %d %s", what, i, r ? "at 3 threads" : "repeated");
            test_expect_same_bits(buf, again[i], first[i], sizes[i]);
            free(again[i]);
        }
    }
    for (int i = 0; i < 3; i++) free(first[i]);
}

static void test_determinism(void **state) {
    (void)state;
    DetCase c = {.B = 2, .T = 67, .NH = 6, .NKV = 2, .HD = 16};
    size_t nq = (size_t)c.B * c.T * c.NH * c.HD, nk = (size_t)c.B * c.T * c.NKV * c.HD;
    int *seg = xmalloc((size_t)c.B * c.T * sizeof(int));
    for (int i = 0; i < c.B * c.T; i++) seg[i] = (i % c.T) / 20;
    float *q = randv(nq, -1, 1), *k = randv(nk, -1, 1), *v = randv(nk, -1, 1), *dout = randv(nq, -1, 1);
    float *out = test_zerov(nq), *lse = test_zerov((size_t)c.B * c.NH * c.T);
    K->attention_forward(out, lse, q, k, v, seg, c.B, c.T, c.NH, c.NKV, c.HD, 1);
    c.seg = seg; c.q = q; c.k = k; c.v = v; c.out = out; c.lse = lse; c.dout = dout;
    expect_repeatable("attention_backward", det_attention, &c, (size_t[3]){nq, nk, nk}, 1);
    free(seg); free(q); free(k); free(v); free(dout); free(out); free(lse);

    // OpenBLAS promises repeatability only at a fixed thread count
    c = (DetCase){.N = 301, .C = 203, .OC = 151};
    float *inp = randv((size_t)c.N * c.C, -1, 1), *w = randv((size_t)c.OC * c.C, -1, 1);
    float *d = randv((size_t)c.N * c.OC, -1, 1);
    c.inp = inp; c.w = w; c.dout = d;
    expect_repeatable("matmul_backward", det_matmul, &c, (size_t[3]){(size_t)c.N * c.C, (size_t)c.OC * c.C, c.OC}, 0);
    free(inp); free(w); free(d);

    c = (DetCase){.B = 2, .H = 12, .W = 10, .C = 150};
    size_t n = (size_t)c.B * c.H * c.W * c.C;
    inp = randv(n, -1, 1); w = randv((size_t)c.C * 9, -1, 1); d = randv(n, -1, 1);
    c.inp = inp; c.w = w; c.dout = d;
    expect_repeatable("dwconv3x3_backward", det_dwconv, &c, (size_t[3]){n, (size_t)c.C * 9, c.C}, 1);
    free(inp); free(w); free(d);

    c = (DetCase){.N = 257, .C = 131};
    n = (size_t)c.N * c.C;
    inp = randv(n, -1, 1); w = randv(c.C, -1, 1); d = randv(n, -1, 1);
    float *b = randv(c.C, -1, 1), *y = test_zerov(n), *mean = test_zerov(c.N), *rstd = test_zerov(c.N);
    K->layernorm_forward(y, mean, rstd, inp, w, b, c.N, c.C, 1e-5f);
    c.inp = inp; c.w = w; c.dout = d; c.mean = mean; c.rstd = rstd;
    expect_repeatable("layernorm_backward", det_layernorm, &c, (size_t[3]){n, c.C, c.C}, 1);
    free(inp); free(w); free(d); free(b); free(y); free(mean); free(rstd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_and_memory),
        cmocka_unit_test(test_matmul_forward), cmocka_unit_test(test_matmul_ld), cmocka_unit_test(test_rows_strided),
        cmocka_unit_test(test_matmul_backward_set),
        cmocka_unit_test(test_layernorm_forward),
        cmocka_unit_test(test_rmsnorm_forward),
        cmocka_unit_test(test_rope_forward),
        cmocka_unit_test(test_attention_forward),
        cmocka_unit_test(test_pointwise_forward),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_avgpool_forward),
        cmocka_unit_test(test_dwconv_forward),
        cmocka_unit_test(test_im2col_and_vit_embed),
        cmocka_unit_test(test_rows),
        cmocka_unit_test(test_out_of_range_ids),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_sum_squares_and_scale),
        cmocka_unit_test(test_determinism),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
