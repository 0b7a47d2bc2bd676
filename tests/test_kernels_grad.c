// test_kernels_grad.c: finite-difference gradient checks of every CPU op with a backward, plus the
// gradient semantics of kernels.h: "+=" where the interface says so (a second call adds the same
// amount again on top of what the buffer held), overwrite everywhere else (a buffer full of NaN
// must not leak into the result), and a NULL gradient pointer skips that gradient.
//
// Method: L = sum(out * R) with a fixed random R, accumulated in double. The backward gets
// dout = R; central differences (L(x + h e_i) - L(x - h e_i)) / (actual step) are taken on every
// input element. The forward runs in fp32, so L carries rounding noise of about 1e-7 * sum|out*R|,
// which the division by 2h = 2e-2 turns into at most ~1e-5 of noise on each difference; the
// truncation error is h^2 f''' / 6 ~ 2e-5 for these smooth ops. The measure
// max|analytic - fd| / max|fd| comes out at 4e-7..4e-5 for a correct backward (the test prints
// it); we allow 1e-3, well clear of that noise, while a wrong or missing term gives 1e-2..1.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/kernels.h"
#include "tests/testlib.h"

static const Kernels *K;
static uint64_t seed = 0x9a7d5eedULL;

#define FD_TOL 1e-3
#define FD_H 1e-2

// testlib.h's test_randv, drawing from this file's seed
#define randv(n, lo, hi) test_randv((n), (lo), (hi), &seed)

static int setup(void **state) {
    (void)state;
    K = kernels_cpu();
    return K ? 0 : -1;
}

// ---------------------------------------------------------------- the checker

// An op under test: forward() computes out (out_n) from the inputs in[]; the loss is sum(out * R).
typedef struct Problem Problem;
struct Problem {
    void (*forward)(Problem *p);
    int n_in;
    float *in[4];
    size_t in_n[4];
    const char *in_name[4];
    float *out, *R;
    size_t out_n;
    // op arguments
    int B, T, NH, NKV, HD, N, C, OC, H, W, causal, accumulate;
    int ld_out, ld_inp, off_out, off_inp;  // the _ld ops: row strides and the slices' first columns
    float alpha, eps, theta, dscale;
    const int *ints;  // positions, segments or targets
    float *aux;       // scratch the forward may use (statistics, lse)
};

static double loss_of(Problem *p) {
    p->forward(p);
    double L = 0;
    for (size_t i = 0; i < p->out_n; i++) L += (double)p->out[i] * p->R[i];
    return L;
}

// compares analytic, the gradient of L with respect to input `which`, with central differences
// on every element
static void check_grad(const char *op, Problem *p, int which, const float *analytic) {
    float *x = p->in[which];
    size_t n = p->in_n[which];
    double max_diff = 0, max_fd = 0;
    for (size_t i = 0; i < n; i++) {
        float orig = x[i];
        float up = (float)(orig + FD_H), down = (float)(orig - FD_H);
        x[i] = up;
        double lp = loss_of(p);
        x[i] = down;
        double lm = loss_of(p);
        x[i] = orig;
        // the step actually taken in fp32, not the nominal 2h
        double fd = (lp - lm) / ((double)up - (double)down);
        double diff = fabs(fd - analytic[i]);
        if (diff > max_diff) max_diff = diff;
        if (fabs(fd) > max_fd) max_fd = fabs(fd);
    }
    double e = max_fd > 0 ? max_diff / max_fd : max_diff;
    print_message("    %-32s d%-6s fd rel err %.2e (tol %.0e, %zu elements)\n", op, p->in_name[which], e, FD_TOL, n);
    if (!(e <= FD_TOL)) fail_msg("%s: gradient of %s differs from finite differences: %.3e", op, p->in_name[which], e);
    if (max_fd == 0) fail_msg("%s: gradient of %s is identically zero, the check proves nothing", op, p->in_name[which]);
}

static void expect_close(const char *what, const float *a, const float *ref, size_t n, double tol) {
    double e = rel_err(a, ref, n);
    if (!(e <= tol)) fail_msg("%s: rel err %.3e > %.1e", what, e, tol);
}

// base + 2 * g, computed in double and rounded: what two "+=" calls should leave behind
static void expect_accumulated_twice(const char *what, const float *got, const float *base, const float *g, size_t n) {
    float *want = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) want[i] = (float)((double)base[i] + 2.0 * g[i]);
    // the two calls round differently from the double reference; 1e-6 of the largest value
    expect_close(what, got, want, n, 1e-6);
    free(want);
}

// ---------------------------------------------------------------- matmul

static void fwd_matmul(Problem *p) {
    // accumulate: out starts from a fixed value (aux), which must not change the gradients
    if (p->accumulate) memcpy(p->out, p->aux, p->out_n * sizeof(float));
    K->matmul_forward(p->out, p->in[0], p->in[1], p->n_in > 2 ? p->in[2] : NULL, p->N, p->C, p->OC, p->alpha,
                      p->accumulate);
}

static void test_grad_matmul(void **state) {
    (void)state;
    for (int variant = 0; variant < 2; variant++) {
        Problem p = {.forward = fwd_matmul, .N = 5, .C = 7, .OC = 3};
        p.alpha = variant ? 0.7f : 1.0f;
        p.accumulate = variant;
        p.n_in = variant ? 3 : 2;  // with bias only in the second variant
        size_t sz[3] = {(size_t)p.N * p.C, (size_t)p.OC * p.C, (size_t)p.OC};
        const char *names[3] = {"inp", "w", "bias"};
        for (int i = 0; i < p.n_in; i++) { p.in[i] = randv(sz[i], -1, 1); p.in_n[i] = sz[i]; p.in_name[i] = names[i]; }
        p.out_n = (size_t)p.N * p.OC;
        p.out = test_zerov(p.out_n);
        p.R = randv(p.out_n, -1, 1);
        p.aux = randv(p.out_n, -1, 1);
        float *base[3], *g[3];
        for (int i = 0; i < 3; i++) { base[i] = randv(sz[i], -1, 1); g[i] = test_zerov(sz[i]); }
        K->matmul_backward(g[0], g[1], variant ? g[2] : NULL, p.R, p.in[0], p.in[1], p.N, p.C, p.OC, p.alpha);
        const char *op = variant ? "matmul alpha bias accumulate" : "matmul";
        for (int i = 0; i < p.n_in; i++) check_grad(op, &p, i, g[i]);
        // every gradient of the matmul accumulates, dbias without alpha
        float *acc[3];
        for (int i = 0; i < 3; i++) acc[i] = test_copyv(base[i], sz[i]);
        for (int r = 0; r < 2; r++)
            K->matmul_backward(acc[0], acc[1], variant ? acc[2] : NULL, p.R, p.in[0], p.in[1], p.N, p.C, p.OC, p.alpha);
        expect_accumulated_twice("matmul dinp +=", acc[0], base[0], g[0], sz[0]);
        expect_accumulated_twice("matmul dw +=", acc[1], base[1], g[1], sz[1]);
        if (variant) expect_accumulated_twice("matmul dbias +=", acc[2], base[2], g[2], sz[2]);
        else test_expect_same_bits("matmul dbias NULL untouched", acc[2], base[2], sz[2]);
        // dbias is the plain column sum of dout
        if (variant)
            for (int o = 0; o < p.OC; o++) {
                double s = 0;
                for (int n = 0; n < p.N; n++) s += p.R[n * p.OC + o];
                assert_true(fabs(g[2][o] - s) <= 1e-6);
            }
        // NULL dinp and dw leave their gradients alone and still give the others
        float *dw_only = test_zerov(sz[1]);
        K->matmul_backward(NULL, dw_only, NULL, p.R, p.in[0], p.in[1], p.N, p.C, p.OC, p.alpha);
        test_expect_same_bits("matmul dw alone", dw_only, g[1], sz[1]);
        for (int i = 0; i < 3; i++) { free(base[i]); free(g[i]); free(acc[i]); }
        for (int i = 0; i < p.n_in; i++) free(p.in[i]);
        free(dw_only); free(p.out); free(p.R); free(p.aux);
    }
}

// matmul_forward_ld: the input a column slice of rows ld_inp wide, the output written into a
// column slice of rows ld_out wide whose other columns hold fixed values (aux); accumulate on
static void fwd_matmul_ld(Problem *p) {
    memcpy(p->out, p->aux, p->out_n * sizeof(float));
    K->matmul_forward_ld(p->out + p->off_out, p->in[0] + p->off_inp, p->in[1], p->in[2], p->N, p->C, p->OC, p->alpha,
                         1, p->ld_out, p->ld_inp);
}

// the strided ops the fused projections use: gradients by finite differences over the whole wide
// input (zero outside its slice), dinp overwritten (set) or accumulated only in its slice
static void test_grad_matmul_ld(void **state) {
    (void)state;
    Problem p = {.forward = fwd_matmul_ld, .N = 5, .C = 7, .OC = 3, .n_in = 3, .alpha = 0.6f};
    p.off_inp = 2, p.ld_inp = p.C + 4, p.off_out = 3, p.ld_out = p.OC + 5;
    size_t sz[3] = {(size_t)p.N * p.ld_inp, (size_t)p.OC * p.C, (size_t)p.OC};
    const char *names[3] = {"inp", "w", "bias"};
    for (int i = 0; i < 3; i++) { p.in[i] = randv(sz[i], -1, 1); p.in_n[i] = sz[i]; p.in_name[i] = names[i]; }
    p.out_n = (size_t)p.N * p.ld_out;
    p.out = test_zerov(p.out_n);
    p.R = randv(p.out_n, -1, 1);
    p.aux = randv(p.out_n, -1, 1);
    float *g[3];
    g[0] = randv(sz[0], -1, 1);  // set: the slice overwritten; the columns outside must stay as they were
    float *g0 = test_copyv(g[0], sz[0]);
    g[1] = test_zerov(sz[1]);
    g[2] = test_zerov(sz[2]);
    K->matmul_backward_ld(g[0] + p.off_inp, g[1], g[2], p.R + p.off_out, p.in[0] + p.off_inp, p.in[1], p.N, p.C, p.OC,
                          p.alpha, 1, p.ld_out, p.ld_inp);
    for (int n = 0; n < p.N; n++)
        for (int c = 0; c < p.ld_inp; c++)
            if (c < p.off_inp || c >= p.off_inp + p.C) {
                size_t i = (size_t)n * p.ld_inp + c;
                if (memcmp(&g[0][i], &g0[i], sizeof(float))) fail_msg("matmul_backward_ld wrote outside its slice at %zu", i);
                g[0][i] = 0.0f;  // the true gradient there, for the check below
            }
    for (int i = 0; i < 3; i++) check_grad("matmul_ld", &p, i, g[i]);
    // without set dinp accumulates: twice from g0's slice
    float *acc = test_copyv(g0, sz[0]);
    for (int r = 0; r < 2; r++)
        K->matmul_backward_ld(acc + p.off_inp, NULL, NULL, p.R + p.off_out, p.in[0] + p.off_inp, p.in[1], p.N, p.C, p.OC,
                              p.alpha, 0, p.ld_out, p.ld_inp);
    for (int n = 0; n < p.N; n++)
        for (int c = 0; c < p.ld_inp; c++) {
            size_t i = (size_t)n * p.ld_inp + c;
            int in_slice = c >= p.off_inp && c < p.off_inp + p.C;
            double want = in_slice ? (double)g0[i] + 2.0 * g[0][i] : g0[i];
            if (fabs(acc[i] - want) > 1e-5) fail_msg("matmul_backward_ld += at %zu: %g, want %g", i, acc[i], want);
        }
    for (int i = 0; i < 3; i++) { free(p.in[i]); free(g[i]); }
    free(g0); free(acc); free(p.out); free(p.R); free(p.aux);
}

// ---------------------------------------------------------------- norms

static void fwd_layernorm(Problem *p) {
    K->layernorm_forward(p->out, NULL, NULL, p->in[0], p->in[1], p->in[2], p->N, p->C, p->eps);
}

static void test_grad_layernorm(void **state) {
    (void)state;
    Problem p = {.forward = fwd_layernorm, .N = 6, .C = 13, .eps = 1e-5f, .n_in = 3};
    size_t sz[3] = {(size_t)p.N * p.C, (size_t)p.C, (size_t)p.C};
    const char *names[3] = {"inp", "w", "b"};
    for (int i = 0; i < 3; i++) { p.in[i] = randv(sz[i], -1, 1); p.in_n[i] = sz[i]; p.in_name[i] = names[i]; }
    p.out_n = sz[0];
    p.out = test_zerov(p.out_n);
    p.R = randv(p.out_n, -1, 1);
    float *mean = test_zerov(p.N), *rstd = test_zerov(p.N);
    K->layernorm_forward(p.out, mean, rstd, p.in[0], p.in[1], p.in[2], p.N, p.C, p.eps);
    float *g[3], *base[3], *acc[3];
    for (int i = 0; i < 3; i++) { g[i] = test_zerov(sz[i]); base[i] = randv(sz[i], -1, 1); acc[i] = test_copyv(base[i], sz[i]); }
    K->layernorm_backward(g[0], g[1], g[2], p.R, p.in[0], p.in[1], mean, rstd, p.N, p.C);
    for (int i = 0; i < 3; i++) check_grad("layernorm", &p, i, g[i]);
    for (int r = 0; r < 2; r++) K->layernorm_backward(acc[0], acc[1], acc[2], p.R, p.in[0], p.in[1], mean, rstd, p.N, p.C);
    expect_accumulated_twice("layernorm dinp +=", acc[0], base[0], g[0], sz[0]);
    expect_accumulated_twice("layernorm dw +=", acc[1], base[1], g[1], sz[1]);
    expect_accumulated_twice("layernorm db +=", acc[2], base[2], g[2], sz[2]);
    float *dinp_only = test_zerov(sz[0]);
    K->layernorm_backward(dinp_only, NULL, NULL, p.R, p.in[0], p.in[1], mean, rstd, p.N, p.C);
    test_expect_same_bits("layernorm dinp alone", dinp_only, g[0], sz[0]);
    for (int i = 0; i < 3; i++) { free(p.in[i]); free(g[i]); free(base[i]); free(acc[i]); }
    free(p.out); free(p.R); free(mean); free(rstd); free(dinp_only);
}

static void fwd_rmsnorm(Problem *p) { K->rmsnorm_forward(p->out, NULL, p->in[0], p->in[1], p->N, p->C, p->eps); }

static void test_grad_rmsnorm(void **state) {
    (void)state;
    Problem p = {.forward = fwd_rmsnorm, .N = 6, .C = 13, .eps = 1e-6f, .n_in = 2};
    size_t sz[2] = {(size_t)p.N * p.C, (size_t)p.C};
    const char *names[2] = {"inp", "w"};
    for (int i = 0; i < 2; i++) { p.in[i] = randv(sz[i], -1, 1); p.in_n[i] = sz[i]; p.in_name[i] = names[i]; }
    p.out_n = sz[0];
    p.out = test_zerov(p.out_n);
    p.R = randv(p.out_n, -1, 1);
    float *rstd = test_zerov(p.N);
    K->rmsnorm_forward(p.out, rstd, p.in[0], p.in[1], p.N, p.C, p.eps);
    float *g[2], *base[2], *acc[2];
    for (int i = 0; i < 2; i++) { g[i] = test_zerov(sz[i]); base[i] = randv(sz[i], -1, 1); acc[i] = test_copyv(base[i], sz[i]); }
    K->rmsnorm_backward(g[0], g[1], p.R, p.in[0], p.in[1], rstd, p.N, p.C);
    for (int i = 0; i < 2; i++) check_grad("rmsnorm", &p, i, g[i]);
    for (int r = 0; r < 2; r++) K->rmsnorm_backward(acc[0], acc[1], p.R, p.in[0], p.in[1], rstd, p.N, p.C);
    expect_accumulated_twice("rmsnorm dinp +=", acc[0], base[0], g[0], sz[0]);
    expect_accumulated_twice("rmsnorm dw +=", acc[1], base[1], g[1], sz[1]);
    float *dw_only = test_zerov(sz[1]);
    K->rmsnorm_backward(NULL, dw_only, p.R, p.in[0], p.in[1], rstd, p.N, p.C);
    test_expect_same_bits("rmsnorm dw alone", dw_only, g[1], sz[1]);
    for (int i = 0; i < 2; i++) { free(p.in[i]); free(g[i]); free(base[i]); free(acc[i]); }
    free(p.out); free(p.R); free(rstd); free(dw_only);
}

// ---------------------------------------------------------------- rope

static void fwd_rope(Problem *p) {
    int w = p->NH * p->HD;
    K->rope_forward(p->out, p->in[0], p->ints, p->N, p->NH, p->HD, p->theta, w, w);
}
// strided: the heads are a column slice (from column off_inp) of input rows ld_inp wide, into
// dense rows, as the LLM reads q and k out of the fused q/k/v rows
static void fwd_rope_ld(Problem *p) {
    K->rope_forward(p->out, p->in[0] + p->off_inp, p->ints, p->N, p->NH, p->HD, p->theta, p->NH * p->HD, p->ld_inp);
}

static void test_grad_rope(void **state) {
    (void)state;
    int pos[5] = {0, 3, 17, 1000, 5};
    Problem p = {.forward = fwd_rope, .N = 5, .NH = 3, .HD = 6, .theta = 10000.0f, .ints = pos, .n_in = 1};
    p.in_n[0] = p.out_n = (size_t)p.N * p.NH * p.HD;
    p.in[0] = randv(p.in_n[0], -1, 1);
    p.in_name[0] = "inp";
    p.out = test_zerov(p.out_n);
    p.R = randv(p.out_n, -1, 1);
    float *g = test_nanv(p.out_n);  // overwritten
    int w = p.NH * p.HD;
    K->rope_backward(g, p.R, pos, p.N, p.NH, p.HD, p.theta, w, w);
    check_grad("rope", &p, 0, g);
    float *inplace = test_copyv(p.R, p.out_n);
    K->rope_backward(inplace, inplace, pos, p.N, p.NH, p.HD, p.theta, w, w);
    test_expect_same_bits("rope_backward in place", inplace, g, p.out_n);
    // row strides: dinp written into its column slice of wider rows, the other columns untouched
    Problem s = p;
    s.forward = fwd_rope_ld;
    s.off_inp = 4;
    s.ld_inp = w + 9;
    s.in_n[0] = (size_t)s.N * s.ld_inp;
    s.in[0] = randv(s.in_n[0], -1, 1);
    float *gs = test_zerov(s.in_n[0]);
    K->rope_backward(gs + s.off_inp, s.R, pos, s.N, s.NH, s.HD, s.theta, w, s.ld_inp);
    check_grad("rope strided", &s, 0, gs);
    free(p.in[0]); free(s.in[0]); free(p.out); free(p.R); free(g); free(gs); free(inplace);
}

// ---------------------------------------------------------------- attention

static void fwd_attention(Problem *p) {
    K->attention_forward(p->out, NULL, p->in[0], p->in[1], p->in[2], p->ints, p->B, p->T, p->NH, p->NKV, p->HD,
                         p->causal);
}

static void test_grad_attention(void **state) {
    (void)state;
    int seg[14] = {0, 0, 0, 1, 1, 2, 2, 5, 5, 5, 5, 5, 9, 9};
    // GQA with 3 query heads per kv head; HD 11 runs the 8-wide dot product and its tail
    struct { int causal; const int *seg; int HD; const char *name; } modes[] = {
        {1, NULL, 8, "attention causal"}, {0, NULL, 8, "attention full"}, {1, seg, 8, "attention causal+seg"},
        {0, seg, 11, "attention full+seg HD=11"}};
    for (int m = 0; m < 4; m++) {
        Problem p = {.forward = fwd_attention, .B = 2, .T = 7, .NH = 6, .NKV = 2, .HD = modes[m].HD, .n_in = 3};
        p.causal = modes[m].causal;
        p.ints = modes[m].seg;
        size_t nq = (size_t)p.B * p.T * p.NH * p.HD, nk = (size_t)p.B * p.T * p.NKV * p.HD;
        size_t sz[3] = {nq, nk, nk};
        const char *names[3] = {"q", "k", "v"};
        for (int i = 0; i < 3; i++) { p.in[i] = randv(sz[i], -1.5f, 1.5f); p.in_n[i] = sz[i]; p.in_name[i] = names[i]; }
        p.out_n = nq;
        p.out = test_zerov(nq);
        p.R = randv(nq, -1, 1);
        float *lse = test_zerov((size_t)p.B * p.NH * p.T);
        K->attention_forward(p.out, lse, p.in[0], p.in[1], p.in[2], p.ints, p.B, p.T, p.NH, p.NKV, p.HD, p.causal);
        float *out = test_copyv(p.out, nq);
        // NaN-filled: dq, dk, dv are overwritten as a whole
        float *g[3] = {test_nanv(nq), test_nanv(nk), test_nanv(nk)};
        K->attention_backward(g[0], g[1], g[2], p.R, p.in[0], p.in[1], p.in[2], out, lse, p.ints, p.B, p.T, p.NH,
                              p.NKV, p.HD, p.causal);
        for (int i = 0; i < 3; i++) check_grad(modes[m].name, &p, i, g[i]);
        // a NULL gradient skips that output and leaves the others as they were
        float *dv_only = test_nanv(nk);
        K->attention_backward(NULL, NULL, dv_only, p.R, p.in[0], p.in[1], p.in[2], out, lse, p.ints, p.B, p.T, p.NH,
                              p.NKV, p.HD, p.causal);
        test_expect_same_bits("attention dv alone", dv_only, g[2], nk);
        for (int i = 0; i < 3; i++) { free(p.in[i]); free(g[i]); }
        free(p.out); free(p.R); free(lse); free(out); free(dv_only);
    }
}

// over tiles: 70 rows are a full 64-row tile and a partial one, the segment from 50 to 70 crosses
// the edge, and with one kv head and B = 1 the backward splits the keys in two chunks (dq summed
// from two buffers)
static void test_grad_attention_tiles(void **state) {
    (void)state;
    int T = 70, seg[70];
    for (int i = 0; i < T; i++) seg[i] = i < 25 ? 0 : i < 50 ? 1 : 2;
    Problem p = {.forward = fwd_attention, .B = 1, .T = T, .NH = 2, .NKV = 1, .HD = 4, .n_in = 3, .causal = 1, .ints = seg};
    size_t nq = (size_t)T * p.NH * p.HD, nk = (size_t)T * p.NKV * p.HD;
    size_t sz[3] = {nq, nk, nk};
    const char *names[3] = {"q", "k", "v"};
    for (int i = 0; i < 3; i++) { p.in[i] = randv(sz[i], -1.5f, 1.5f); p.in_n[i] = sz[i]; p.in_name[i] = names[i]; }
    p.out_n = nq;
    p.out = test_zerov(nq);
    p.R = randv(nq, -1, 1);
    float *lse = test_zerov((size_t)p.NH * T);
    K->attention_forward(p.out, lse, p.in[0], p.in[1], p.in[2], seg, 1, T, p.NH, p.NKV, p.HD, 1);
    float *out = test_copyv(p.out, nq);
    float *g[3] = {test_nanv(nq), test_nanv(nk), test_nanv(nk)};
    K->attention_backward(g[0], g[1], g[2], p.R, p.in[0], p.in[1], p.in[2], out, lse, seg, 1, T, p.NH, p.NKV, p.HD, 1);
    for (int i = 0; i < 3; i++) check_grad("attention 2 tiles causal+seg", &p, i, g[i]);
    for (int i = 0; i < 3; i++) { free(p.in[i]); free(g[i]); }
    free(p.out); free(p.R); free(lse); free(out);
}

// ---------------------------------------------------------------- pointwise

static void fwd_gelu(Problem *p) { K->gelu_forward(p->out, p->in[0], p->out_n); }
static void fwd_quick_gelu(Problem *p) { K->quick_gelu_forward(p->out, p->in[0], p->out_n); }
static void fwd_gelu_tanh(Problem *p) { K->gelu_tanh_forward(p->out, p->in[0], p->out_n); }
static void fwd_swiglu(Problem *p) { K->swiglu_forward(p->out, p->in[0], p->in[1], 1, (int)p->out_n, (int)p->out_n); }
// the fused layout: each row of in[0] (N, 2C) holds gate | up
static void fwd_swiglu_rows(Problem *p) { K->swiglu_forward(p->out, p->in[0], p->in[0] + p->C, p->N, p->C, 2 * p->C); }

static void test_grad_pointwise(void **state) {
    (void)state;
    size_t n = 301;
    void (*fwd[3])(Problem *) = {fwd_gelu, fwd_quick_gelu, fwd_gelu_tanh};
    const char *names1[3] = {"gelu", "quick_gelu", "gelu_tanh"};
    for (int which = 0; which < 3; which++) {
        Problem p = {.forward = fwd[which], .n_in = 1, .out_n = n};
        p.in[0] = randv(n, -5, 5);
        p.in_n[0] = n;
        p.in_name[0] = "inp";
        p.out = test_zerov(n);
        p.R = randv(n, -1, 1);
        float *g = test_nanv(n);
        if (which == 2) K->gelu_tanh_backward(g, p.R, p.in[0], n);
        else if (which) K->quick_gelu_backward(g, p.R, p.in[0], n);
        else K->gelu_backward(g, p.R, p.in[0], n);
        check_grad(names1[which], &p, 0, g);
        free(p.in[0]); free(p.out); free(p.R); free(g);
    }
    Problem p = {.forward = fwd_swiglu, .n_in = 2, .out_n = n};
    const char *names[2] = {"gate", "up"};
    for (int i = 0; i < 2; i++) { p.in[i] = randv(n, -5, 5); p.in_n[i] = n; p.in_name[i] = names[i]; }
    p.out = test_zerov(n);
    p.R = randv(n, -1, 1);
    float *g[2] = {test_nanv(n), test_nanv(n)};
    K->swiglu_backward(g[0], g[1], p.R, p.in[0], p.in[1], 1, (int)n, (int)n);
    for (int i = 0; i < 2; i++) check_grad("swiglu", &p, i, g[i]);
    float *dup_only = test_nanv(n);
    K->swiglu_backward(NULL, dup_only, p.R, p.in[0], p.in[1], 1, (int)n, (int)n);
    test_expect_same_bits("swiglu dup alone", dup_only, g[1], n);
    for (int i = 0; i < 2; i++) { free(p.in[i]); free(g[i]); }
    free(p.out); free(p.R); free(dup_only);

    // rows of gate | up (the fused gate/up projection's output): d(gate | up) in the same layout
    Problem r = {.forward = fwd_swiglu_rows, .n_in = 1, .N = 7, .C = 19};
    r.out_n = (size_t)r.N * r.C;
    r.in_n[0] = 2 * r.out_n;
    r.in[0] = randv(r.in_n[0], -5, 5);
    r.in_name[0] = "gate|up";
    r.out = test_zerov(r.out_n);
    r.R = randv(r.out_n, -1, 1);
    float *gr = test_nanv(r.in_n[0]);  // both halves overwritten
    K->swiglu_backward(gr, gr + r.C, r.R, r.in[0], r.in[0] + r.C, r.N, r.C, 2 * r.C);
    check_grad("swiglu rows", &r, 0, gr);
    free(r.in[0]); free(r.out); free(r.R); free(gr);
}

// ---------------------------------------------------------------- grids

static void fwd_avgpool(Problem *p) { K->avgpool2x2_forward(p->out, p->in[0], p->B, p->H, p->W, p->C); }

static void test_grad_avgpool(void **state) {
    (void)state;
    Problem p = {.forward = fwd_avgpool, .B = 2, .H = 6, .W = 4, .C = 5, .n_in = 1};
    p.in_n[0] = (size_t)p.B * p.H * p.W * p.C;
    p.in[0] = randv(p.in_n[0], -1, 1);
    p.in_name[0] = "inp";
    p.out_n = p.in_n[0] / 4;
    p.out = test_zerov(p.out_n);
    p.R = randv(p.out_n, -1, 1);
    float *g = test_nanv(p.in_n[0]);  // overwritten
    K->avgpool2x2_backward(g, p.R, p.B, p.H, p.W, p.C);
    check_grad("avgpool2x2", &p, 0, g);
    free(p.in[0]); free(p.out); free(p.R); free(g);
}

static void fwd_dwconv(Problem *p) {
    K->dwconv3x3_forward(p->out, p->in[0], p->in[1], p->in[2], p->B, p->H, p->W, p->C);
}

static void test_grad_dwconv(void **state) {
    (void)state;
    int dims[][4] = {{2, 6, 5, 7}, {1, 1, 2, 3}};
    for (int s = 0; s < 2; s++) {
        Problem p = {.forward = fwd_dwconv, .B = dims[s][0], .H = dims[s][1], .W = dims[s][2], .C = dims[s][3], .n_in = 3};
        size_t n = (size_t)p.B * p.H * p.W * p.C;
        size_t sz[3] = {n, (size_t)p.C * 9, (size_t)p.C};
        const char *names[3] = {"inp", "w", "bias"};
        for (int i = 0; i < 3; i++) { p.in[i] = randv(sz[i], -1, 1); p.in_n[i] = sz[i]; p.in_name[i] = names[i]; }
        p.out_n = n;
        p.out = test_zerov(n);
        p.R = randv(n, -1, 1);
        float *g[3], *base[3], *acc[3];
        for (int i = 0; i < 3; i++) { g[i] = test_zerov(sz[i]); base[i] = randv(sz[i], -1, 1); acc[i] = test_copyv(base[i], sz[i]); }
        K->dwconv3x3_backward(g[0], g[1], g[2], p.R, p.in[0], p.in[1], p.B, p.H, p.W, p.C);
        for (int i = 0; i < 3; i++) check_grad(s ? "dwconv3x3 1x2 grid" : "dwconv3x3", &p, i, g[i]);
        for (int r = 0; r < 2; r++) K->dwconv3x3_backward(acc[0], acc[1], acc[2], p.R, p.in[0], p.in[1], p.B, p.H, p.W, p.C);
        expect_accumulated_twice("dwconv dinp +=", acc[0], base[0], g[0], sz[0]);
        expect_accumulated_twice("dwconv dw +=", acc[1], base[1], g[1], sz[1]);
        expect_accumulated_twice("dwconv dbias +=", acc[2], base[2], g[2], sz[2]);
        float *dw_only = test_zerov(sz[1]);
        K->dwconv3x3_backward(NULL, dw_only, NULL, p.R, p.in[0], p.in[1], p.B, p.H, p.W, p.C);
        test_expect_same_bits("dwconv dw alone", dw_only, g[1], sz[1]);
        for (int i = 0; i < 3; i++) { free(p.in[i]); free(g[i]); free(base[i]); free(acc[i]); }
        free(p.out); free(p.R); free(dw_only);
    }
}

// ---------------------------------------------------------------- loss

static void fwd_xent(Problem *p) { K->cross_entropy(p->out, NULL, p->in[0], p->ints, p->N, p->C, p->dscale); }

static void test_grad_cross_entropy(void **state) {
    (void)state;
    int targets[4] = {0, 10, 4, 4};
    Problem p = {.forward = fwd_xent, .N = 4, .C = 11, .dscale = 0.37f, .ints = targets, .n_in = 1};
    p.in_n[0] = (size_t)p.N * p.C;
    p.in[0] = randv(p.in_n[0], -3, 3);
    p.in_name[0] = "logits";
    p.out_n = p.N;
    p.out = test_zerov(p.N);
    // dlogits is dscale times the gradient of the summed losses: R = dscale everywhere
    p.R = xmalloc(p.N * sizeof(float));
    for (int i = 0; i < p.N; i++) p.R[i] = p.dscale;
    float *g = test_nanv(p.in_n[0]);
    K->cross_entropy(p.out, g, p.in[0], targets, p.N, p.C, p.dscale);
    check_grad("cross_entropy", &p, 0, g);
    // each row of the gradient sums to zero
    for (int i = 0; i < p.N; i++) {
        double s = 0;
        for (int j = 0; j < p.C; j++) s += g[i * p.C + j];
        assert_true(fabs(s) < 1e-6);
    }
    free(p.in[0]); free(p.out); free(p.R); free(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_matmul),      cmocka_unit_test(test_grad_matmul_ld),
        cmocka_unit_test(test_grad_layernorm),
        cmocka_unit_test(test_grad_rmsnorm),     cmocka_unit_test(test_grad_rope),
        cmocka_unit_test(test_grad_attention), cmocka_unit_test(test_grad_attention_tiles),   cmocka_unit_test(test_grad_pointwise),
        cmocka_unit_test(test_grad_avgpool),     cmocka_unit_test(test_grad_dwconv),
        cmocka_unit_test(test_grad_cross_entropy),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
