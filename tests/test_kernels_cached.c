// test_kernels_cached.c: the CPU attention_cached op (attention over a KV cache, for generation)
// against the CPU attention_forward op, which test_kernels.c checks against a double reference.
// The two share their arithmetic, so every comparison here is bit for bit: prefill (Tq = Tk)
// equals the causal attention_forward, decoding one query (Tq = 1) at every length equals the
// corresponding row, prompt chunks (1 < Tq < Tk) equal their rows; cache rows past Tk (NaN here)
// are never read; results do not depend on the thread count.
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/kernels.h"
#include "tests/testlib.h"

static const Kernels *K;
static uint64_t seed = 0xcac4ed5eedULL;

typedef struct {
    int B, T, Tc, NH, NKV, HD;
    float *q, *k, *v;    // (B, T, NH*HD), (B, T, NKV*HD) x2
    float *kc, *vc;      // (B, Tc, NKV*HD): k, v with NaN in rows T .. Tc-1
    float *full;         // (B, T, NH*HD): causal attention_forward
} Case;

static void case_init(Case *c, int B, int T, int Tc, int NH, int NKV, int HD) {
    *c = (Case){.B = B, .T = T, .Tc = Tc, .NH = NH, .NKV = NKV, .HD = HD};
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    c->q = xmalloc(B * T * qs * sizeof(float));
    c->k = xmalloc(B * T * ks * sizeof(float));
    c->v = xmalloc(B * T * ks * sizeof(float));
    // scores of order 1-3: softmax far from uniform, so a wrong key range shows
    test_fill_uniform(c->q, B * T * qs, -1.5f, 1.5f, &seed);
    test_fill_uniform(c->k, B * T * ks, -1.5f, 1.5f, &seed);
    test_fill_uniform(c->v, B * T * ks, -1.0f, 1.0f, &seed);
    c->kc = xmalloc(B * Tc * ks * sizeof(float));
    c->vc = xmalloc(B * Tc * ks * sizeof(float));
    for (size_t i = 0; i < B * Tc * ks; i++) c->kc[i] = c->vc[i] = NAN;
    for (int b = 0; b < B; b++) {
        memcpy(c->kc + (size_t)b * Tc * ks, c->k + (size_t)b * T * ks, T * ks * sizeof(float));
        memcpy(c->vc + (size_t)b * Tc * ks, c->v + (size_t)b * T * ks, T * ks * sizeof(float));
    }
    c->full = xmalloc(B * T * qs * sizeof(float));
    K->attention_forward(c->full, NULL, c->q, c->k, c->v, NULL, B, T, NH, NKV, HD, 1);
}

static void case_free(Case *c) {
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->kc);
    free(c->vc);
    free(c->full);
}

// queries of positions t0 .. t0+n-1 over the keys 0 .. t0+n-1 of the cache; compared with rows
// t0 .. t0+n-1 of the full attention, bitwise
static void check_rows(const Case *c, int t0, int n, const char *what) {
    size_t qs = (size_t)c->NH * c->HD;
    float *q = xmalloc(c->B * n * qs * sizeof(float)), *out = xmalloc(c->B * n * qs * sizeof(float));
    float *want = xmalloc(c->B * n * qs * sizeof(float));
    for (int b = 0; b < c->B; b++) {
        memcpy(q + (size_t)b * n * qs, c->q + ((size_t)b * c->T + t0) * qs, n * qs * sizeof(float));
        memcpy(want + (size_t)b * n * qs, c->full + ((size_t)b * c->T + t0) * qs, n * qs * sizeof(float));
    }
    for (size_t i = 0; i < c->B * n * qs; i++) out[i] = NAN;
    K->attention_cached(out, q, c->kc, c->vc, c->B, n, t0 + n, c->Tc, c->NH, c->NKV, c->HD);
    for (size_t i = 0; i < c->B * n * qs; i++)
        if (!isfinite(out[i])) fail_msg("%s: non-finite output at %zu (a cache row past Tk was read?)", what, i);
    if (memcmp(out, want, c->B * n * qs * sizeof(float)) != 0)
        fail_msg("%s (NH %d NKV %d HD %d, rows %d..%d): differs from attention_forward, rel err %.3e", what, c->NH,
                 c->NKV, c->HD, t0, t0 + n - 1, rel_err(out, want, c->B * n * qs));
    free(q);
    free(out);
    free(want);
}

static const int shapes[][3] = {{6, 2, 8}, {4, 4, 5}, {3, 1, 19}, {14, 2, 64}};

static void test_prefill_equals_attention_forward(void **state) {
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        Case c;
        case_init(&c, 2, 13, 17, shapes[s][0], shapes[s][1], shapes[s][2]);
        check_rows(&c, 0, c.T, "prefill Tq = Tk");
        case_free(&c);
        case_init(&c, 1, 9, 9, shapes[s][0], shapes[s][1], shapes[s][2]);  // Tc == Tk
        check_rows(&c, 0, c.T, "prefill Tq = Tk = Tc");
        case_free(&c);
    }
    // over tiles of 64 keys and 64 queries: 150 rows (64 + 64 + 22), the cache larger
    Case c;
    case_init(&c, 2, 150, 160, 4, 2, 32);
    check_rows(&c, 0, c.T, "prefill Tq = Tk over 3 tiles");
    check_rows(&c, 0, 100, "prefill of 100 rows");
    check_rows(&c, 100, 50, "chunk 100..149");
    check_rows(&c, 63, 3, "chunk across the tile edge");
    for (int t = 60; t < 70; t++) check_rows(&c, t, 1, "decode at the tile edge");
    check_rows(&c, c.T - 1, 1, "decode the last row");
    case_free(&c);
    print_message("    prefill: bit-identical to causal attention_forward for %d shapes\n", (int)(sizeof shapes / sizeof shapes[0]));
}

static void test_decode_equals_rows(void **state) {
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        Case c;
        case_init(&c, 2, 13, 20, shapes[s][0], shapes[s][1], shapes[s][2]);
        for (int t = 0; t < c.T; t++) check_rows(&c, t, 1, "decode Tq = 1");  // the last: row T-1
        case_free(&c);
    }
    print_message("    decode: every row bit-identical, including the last\n");
}

static void test_chunks_equal_rows(void **state) {
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        Case c;
        case_init(&c, 3, 23, 30, shapes[s][0], shapes[s][1], shapes[s][2]);
        const int cuts[] = {0, 4, 5, 12, 23};  // chunks of 4, 1, 7, 11 rows
        for (int i = 0; i + 1 < 5; i++) check_rows(&c, cuts[i], cuts[i + 1] - cuts[i], "prefill chunk");
        check_rows(&c, c.T - 4, 4, "last rows");
        case_free(&c);
    }
}

static void test_threads_and_repeats(void **state) {
    Case c;
    case_init(&c, 2, 31, 40, 6, 2, 16);
    size_t qs = 6 * 16, n = 2 * 5 * qs;
    float *q = xmalloc(n * sizeof(float)), *a = xmalloc(n * sizeof(float)), *b = xmalloc(n * sizeof(float));
    for (int bb = 0; bb < 2; bb++) memcpy(q + bb * 5 * qs, c.q + ((size_t)bb * 31 + 26) * qs, 5 * qs * sizeof(float));
    int def = omp_get_max_threads();
    K->attention_cached(a, q, c.kc, c.vc, 2, 5, 31, 40, 6, 2, 16);
    for (int threads = 1; threads <= 4; threads++) {
        omp_set_num_threads(threads);
        K->attention_cached(b, q, c.kc, c.vc, 2, 5, 31, 40, 6, 2, 16);
        if (memcmp(a, b, n * sizeof(float)) != 0) fail_msg("attention_cached differs at %d threads", threads);
    }
    omp_set_num_threads(def);
    free(q);
    free(a);
    free(b);
    case_free(&c);
}

int main(void) {
    K = kernels_cpu();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_equals_attention_forward),
        cmocka_unit_test(test_decode_equals_rows),
        cmocka_unit_test(test_chunks_equal_rows),
        cmocka_unit_test(test_threads_and_repeats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
