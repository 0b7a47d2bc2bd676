// test_pixel_shuffle.c: the pixel-shuffle index (model/pixel_shuffle.c) against InternVL's
// pixel_shuffle (ps_version v2), Idefics3's and nanoVLM's, replayed op by op: a torch view / reshape is a
// new shape over the same row-major data, a permute a copy in the new order.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/kernels.h"
#include "model/pixel_shuffle.h"
#include "tests/testlib.h"

typedef struct {
    int shape[4];
    float *x;  // row-major, contiguous
} T4;

static size_t numel(const int *s) { return (size_t)s[0] * s[1] * s[2] * s[3]; }

// view / reshape: the same data under another shape of equal size
static void view(T4 *t, int a, int b, int c, int d) {
    int s[4] = {a, b, c, d};
    assert_int_equal(numel(s), numel(t->shape));
    memcpy(t->shape, s, sizeof s);
}

// permute(0, 2, 1, 3) followed by contiguous()
static void permute_0213(T4 *t) {
    int A = t->shape[0], B = t->shape[1], C = t->shape[2], D = t->shape[3];
    float *y = xmalloc(numel(t->shape) * sizeof(float));
    for (int a = 0; a < A; a++)
        for (int b = 0; b < B; b++)
            for (int c = 0; c < C; c++)
                for (int d = 0; d < D; d++)
                    y[(((size_t)a * C + c) * B + b) * D + d] = t->x[(((size_t)a * B + b) * C + c) * D + d];
    free(t->x);
    t->x = y;
    view(t, A, C, B, D);
}

// InternVL: extract_feature's reshape(B, h, w, -1), then pixel_shuffle(x, 0.5) with ps_version
// v2, whose code names the dims (n, w, h, c); then reshape(B, -1, C')
static void internvl(T4 *t, int n, int grid, int C) {
    view(t, n, grid, grid, C);
    int w = grid, h = grid;  // n, w, h, c = x.size()
    view(t, n, w, h / 2, C * 2);
    permute_0213(t);
    view(t, n, h / 2, w / 2, C * 4);
    permute_0213(t);
    view(t, n, (h / 2) * (w / 2), C * 4, 1);
}

// Idefics3Connector.pixel_shuffle(x, scale_factor) on x (bsz, seq, embed_dim)
static void idefics3(T4 *t, int bsz, int grid, int C, int s) {
    int seq = grid * grid, height = grid, width = grid;
    view(t, bsz, height, width, C);
    view(t, bsz, height, width / s, C * s);
    permute_0213(t);
    view(t, bsz, width / s, height / s, C * s * s);
    permute_0213(t);
    view(t, bsz, seq / (s * s), C * s * s, 1);
}

// nanoVLM's ModalityProjector.pixel_shuffle(x) on x (bsz, seq, embed_dim): view (bsz, h, w, C),
// reshape (bsz, h/s, s, w/s, s, C), permute(0, 1, 3, 2, 4, 5), reshape (bsz, h/s * w/s, C*s*s).
// That permute swaps the two middle dims of (bsz*h/s, s, w/s, s*C): permute_0213 on that view.
static void nanovlm(T4 *t, int bsz, int grid, int C, int s) {
    int h = grid, w = grid;
    view(t, bsz, h, w, C);
    view(t, bsz * (h / s), s, w / s, s * C);
    permute_0213(t);
    view(t, bsz, (h / s) * (w / s), C * s * s, 1);
}

enum { INTERNVL, IDEFICS3, NANOVLM };

static void check(const char *what, int n, int grid, int C, int s, int intern) {
    const Kernels *k = kernels_cpu();
    size_t N = (size_t)n * grid * grid * C;
    float *feats = xmalloc(N * sizeof(float)), *got = xmalloc(N * sizeof(float));
    uint64_t seed = 16 + grid + s;
    test_fill_uniform(feats, N, -1, 1, &seed);
    T4 t = {{n, grid * grid, C, 1}, xmalloc(N * sizeof(float))};
    memcpy(t.x, feats, N * sizeof(float));
    if (intern == INTERNVL) internvl(&t, n, grid, C);
    else if (intern == IDEFICS3) idefics3(&t, n, grid, C, s);
    else nanovlm(&t, n, grid, C, s);
    assert_int_equal(t.shape[1], pixel_shuffle_tokens(grid, s));
    assert_int_equal(t.shape[2], C * s * s);
    int rows = n * grid * grid;
    int *idx = xmalloc(rows * sizeof(int));
    pixel_shuffle_rows(idx, n, grid, s);
    k->gather_rows(got, feats, idx, rows, C);  // the CPU backend's act_t is fp32
    printf("    %-9s %d image(s), %dx%d grid of %d, s %d -> %d tokens of %d\n", what, n, grid, grid, C, s,
           t.shape[1], t.shape[2]);
    assert_memory_equal(got, t.x, N * sizeof(float));
    free(feats);
    free(got);
    free(t.x);
    free(idx);
}

static void test_internvl_v2(void **state) {
    check("InternVL", 1, 4, 3, 2, INTERNVL);
    check("InternVL", 2, 6, 5, 2, INTERNVL);
    check("InternVL", 1, 32, 8, 2, INTERNVL);  // InternViT-300M-448px: 32x32 patches -> 256 tokens
}

static void test_idefics3(void **state) {
    check("Idefics3", 1, 4, 3, 2, IDEFICS3);
    check("Idefics3", 2, 6, 5, 3, IDEFICS3);   // odd factor, odd width
    check("Idefics3", 1, 12, 7, 4, IDEFICS3);  // SmolVLM's scale_factor 4 on a small grid
    check("Idefics3", 3, 5, 2, 1, IDEFICS3);   // s = 1 leaves the features as they are
}

// nanoVLM's reshape / permute orders a token's pieces as Idefics3 does: one index serves both
static void test_nanovlm(void **state) {
    check("nanoVLM", 1, 4, 3, 2, NANOVLM);
    check("nanoVLM", 2, 6, 5, 3, NANOVLM);
    check("nanoVLM", 2, 14, 3, 2, NANOVLM);  // nanoVLM-222M: SigLIP-B/16 at 224, 14x14 by 2 -> 49 tokens
    check("nanoVLM", 1, 8, 7, 4, NANOVLM);   // VLMConfig's default factor 4
}

static void bad_factor(void *arg) { pixel_shuffle_tokens(7, 2); }

static void test_factor_must_divide_grid(void **state) {
    expect_fatal(bad_factor, NULL, "pixel shuffle by 2", "7x7");
}

int main(int argc, char **argv) {
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_internvl_v2),
        cmocka_unit_test(test_idefics3),
        cmocka_unit_test(test_nanovlm),
        cmocka_unit_test(test_factor_must_divide_grid),
    };
    struct CMUnitTest sel[sizeof all / sizeof all[0]];
    size_t n = test_select(sel, all, sizeof all / sizeof all[0], argc > 1 ? argv[1] : NULL);
    return _cmocka_run_group_tests("test_pixel_shuffle", sel, n, NULL, NULL);
}
