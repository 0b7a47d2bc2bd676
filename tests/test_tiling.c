// test_tiling.c: dynamic tiling (data/tiling.h) against the models' own preprocessing:
// InternVL's remote-code dynamic_preprocess + build_transform, transformers' GotOcr2 (native
// InternVL) crop_to_patches and Idefics3ImageProcessorPil's image splitting. Grids over many
// sizes (extremes 1x8 / 8x1, tiny, square, the tie rule) and the tiles' pixels, float for float
// (hashes of whole tiles plus raw values), from tests/fixtures/tiling (scripts/make_tiling_fixtures.py).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "data/tiling.h"
#include "testlib.h"

static uint64_t tile_hash(const float *t, size_t n) {
    uint64_t h = 0, pw = 1;
    for (size_t k = 0; k < n; k++) {
        uint32_t u;
        memcpy(&u, &t[k], 4);
        pw *= 1000003u;
        h += (uint64_t)u * pw;
    }
    return h;
}

static void prep_for(ImagePrep *p, const char *kind, int S, int param) {
    if (!strcmp(kind, "idefics3")) {
        image_prep_preset(p, IMAGE_PREP_IDEFICS3, S);
        p->longest_edge = param;
        p->max_tiles = 1000;  // splitting on; the processor decides the count
    } else {
        image_prep_preset(p, IMAGE_PREP_INTERNVL, S);
        p->max_tiles = param;
        p->composite_alpha = !strcmp(kind, "gotocr2");  // the native processor's convert_to_rgb
    }
}

static FILE *open_manifest(void) {
    FILE *f = fopen(fixture_path("tiling/manifest.txt"), "r");
    if (!f) fail_msg("cannot read %s (run scripts/make_tiling_fixtures.py)", fixture_path("tiling/manifest.txt"));
    return f;
}

static void test_grids_match(void **state) {
    (void)state;
    FILE *f = open_manifest();
    char line[4096], kind[32];
    int n = 0, split = 0, thumbs = 0;
    while (fgets(line, sizeof line, f)) {
        int a, b, w, h, c, r;
        if (sscanf(line, "grid %31s %d %d %d %d %d %d", kind, &a, &b, &w, &h, &c, &r) != 7) continue;
        ImagePrep p;
        ImageGrid g;
        if (!strcmp(kind, "internvl")) {
            int cc, rr;
            image_internvl_grid(w, h, a, b, &cc, &rr);
            if (cc != c || rr != r) fail_msg("internvl S %d max %d, %dx%d: grid %dx%d, reference %dx%d", a, b, w, h, cc, rr, c, r);
            prep_for(&p, "internvl", a, b);
        } else {
            prep_for(&p, "idefics3", a, b);
        }
        g = image_grid(&p, w, h);
        int want_thumb = c * r > 1;
        if (g.cols != c || g.rows != r || g.thumb != want_thumb)
            fail_msg("%s %d %d, %dx%d: grid %dx%d+%d, reference %dx%d", kind, a, b, w, h, g.cols, g.rows, g.thumb, c, r);
        assert_true(image_grid_tiles(g) <= image_tiles_max(&p));
        n++;
        split += c * r > 4;
        thumbs += want_thumb;
    }
    fclose(f);
    printf("%d grids equal the references (%d with more than 4 tiles, %d with a thumbnail)\n", n, split, thumbs);
    assert_true(n > 1000 && split > 100 && thumbs > 500);
}

static void test_tiles_match(void **state) {
    (void)state;
    FILE *f = open_manifest();
    char line[8192];
    int n = 0, multi = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "tiles ", 6)) continue;
        char kind[32], name[256];
        int S, param, nt, off;
        assert_int_equal(sscanf(line, "tiles %31s %255s %d %d %d%n", kind, name, &S, &param, &nt, &off), 5);
        ImagePrep p;
        prep_for(&p, kind, S, param);
        char rel[300];
        snprintf(rel, sizeof rel, "tiling/%s", name);
        size_t len;
        uint8_t *bytes = (uint8_t *)file_read_all(fixture_path(rel), &len);
        assert_non_null(bytes);
        Image img;
        char err[256];
        assert_int_equal(image_prep_decode(&p, bytes, len, &img, err, sizeof err), 0);
        ImageGrid g = image_grid(&p, img.w, img.h);
        if (image_grid_tiles(g) != nt)
            fail_msg("%s %s (%dx%d): %d tiles, the processor made %d", kind, name, img.w, img.h, image_grid_tiles(g), nt);
        size_t per = (size_t)3 * S * S;
        float *out = xmalloc(per * nt * sizeof(float));
        image_preprocess_tiles(&img, &p, g, out);
        const char *q = line + off;
        for (int t = 0; t < nt; t++) {
            char hex[32];
            int used;
            assert_int_equal(sscanf(q, " %31s%n", hex, &used), 1);
            q += used;
            uint64_t want = strtoull(hex, NULL, 16), got = tile_hash(out + t * per, per);
            if (got != want) {
                fail_msg("%s %s S %d param %d: tile %d of %d (grid %dx%d+%d) differs from the processor's", kind, name, S, param, t,
                         nt, g.rows, g.cols, g.thumb);
            }
        }
        const size_t at[3] = {0, (size_t)S * S + 7, 3 * (size_t)S * S - 1};
        for (int k = 0; k < 3; k++) {
            unsigned bits;
            int used;
            assert_int_equal(sscanf(q, " %x%n", &bits, &used), 1);
            q += used;
            uint32_t u;
            memcpy(&u, &out[at[k]], 4);
            assert_int_equal(u, bits);
        }
        free(out);
        image_free(&img);
        free(bytes);
        n++;
        multi += nt > 1;
    }
    fclose(f);
    printf("%d tiled images equal the processors' float for float (%d with several tiles)\n", n, multi);
    assert_true(n >= 40 && multi >= 20);
}

// not tiling: every family but internvl / idefics3, and max_tiles 1, give one tile
static void test_one_tile_otherwise(void **state) {
    (void)state;
    ImagePrep p;
    image_prep_preset(&p, IMAGE_PREP_CLIP, 336);
    p.max_tiles = 12;
    ImageGrid g = image_grid(&p, 1000, 100);
    assert_int_equal(image_grid_tiles(g), 1);
    assert_int_equal(image_tiles_max(&p), 1);
    image_prep_preset(&p, IMAGE_PREP_INTERNVL, 448);
    assert_int_equal(image_tiles_max(&p), 1);
    g = image_grid(&p, 1000, 100);
    assert_int_equal(image_grid_tiles(g), 1);
    p.max_tiles = 6;
    assert_int_equal(image_tiles_max(&p), 7);
    image_prep_preset(&p, IMAGE_PREP_IDEFICS3, 512);
    p.longest_edge = 2048;
    p.max_tiles = 2;
    assert_int_equal(image_tiles_max(&p), 17);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grids_match),
        cmocka_unit_test(test_tiles_match),
        cmocka_unit_test(test_one_tile_otherwise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
