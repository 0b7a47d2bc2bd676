// test_image.c: PNG / JPEG decoding, Pillow's resampling filters and each vision family's
// preprocessing (data/image_prep.h) against Pillow, transformers and InternVL's transform.
// References come from scripts/make_image_fixtures.py (tests/fixtures/images/manifest.txt says
// what each one is). Bad input of every kind must give an error code and a reason, never a
// crash: those decodes run in a child process (run_child), so a signal fails the test, and the
// whole program also runs under AddressSanitizer + UBSan (build/tests/asan_test_image).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#include "common/util.h"
#include "data/image.h"
#include "data/image_prep.h"
#include "tests/testlib.h"

static const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

// ---------------------------------------------------------------- fixtures

typedef struct {
    uint8_t *bytes;
    size_t n;
} Blob;

static Blob load_file(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "images/%s", name);
    Blob b;
    b.bytes = (uint8_t *)file_read_all(fixture_path(path), &b.n);
    if (!b.bytes) {
        print_error("cannot read fixture %s (run scripts/make_image_fixtures.py)\n", fixture_path(path));
        fail();
    }
    return b;
}

typedef struct {
    int dtype, ndim;
    uint32_t dims[4];
    size_t count;
    uint8_t *raw;  // owns the whole decompressed file
    void *data;
} Ref;

// "SVRF" reference array (see scripts/make_image_fixtures.py), zstd-compressed on disk
static Ref load_ref(const char *name) {
    Blob z = load_file(name);
    unsigned long long sz = ZSTD_getFrameContentSize(z.bytes, z.n);
    assert_true(sz != ZSTD_CONTENTSIZE_ERROR && sz != ZSTD_CONTENTSIZE_UNKNOWN && sz >= 8);
    Ref r = {0};
    r.raw = xmalloc(sz);
    size_t got = ZSTD_decompress(r.raw, sz, z.bytes, z.n);
    assert_false(ZSTD_isError(got));
    assert_int_equal(got, sz);
    free(z.bytes);
    assert_memory_equal(r.raw, "SVRF", 4);
    r.dtype = r.raw[4];
    r.ndim = r.raw[5];
    assert_true(r.ndim >= 1 && r.ndim <= 4);
    r.count = 1;
    for (int i = 0; i < r.ndim; i++) {
        memcpy(&r.dims[i], r.raw + 8 + 4 * i, 4);
        r.count *= r.dims[i];
    }
    size_t esz = r.dtype == 1 ? 1 : 4;
    assert_int_equal(8 + 4 * r.ndim + r.count * esz, sz);
    r.data = r.raw + 8 + 4 * r.ndim;
    return r;
}

#define MAX_LINES 512
static char manifest_buf[1 << 16];
static char *manifest_lines[MAX_LINES];
static int manifest_n;

static void load_manifest(void) {
    if (manifest_n) return;
    Blob m = load_file("manifest.txt");
    assert_true(m.n < sizeof manifest_buf);
    memcpy(manifest_buf, m.bytes, m.n);
    manifest_buf[m.n] = 0;
    free(m.bytes);
    for (char *save = NULL, *line = strtok_r(manifest_buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || line[0] == 0) continue;
        assert_true(manifest_n < MAX_LINES);
        manifest_lines[manifest_n++] = line;
    }
}

// ---------------------------------------------------------------- decoding vs Pillow

static int decode_file(const char *name, const ImageDecodeOptions *opt, Image *img) {
    Blob b = load_file(name);
    char err[256];
    int rc = image_decode_ex(b.bytes, b.n, opt, img, err, sizeof err);
    if (rc) print_error("%s: decode failed (%d): %s\n", name, rc, err);
    free(b.bytes);
    return rc;
}

// max |a - b| over the pixels of img vs an (h, w, 3) uint8 reference; -1 on shape mismatch
static int pixel_maxdiff(const Image *img, const Ref *r, size_t *ndiff) {
    *ndiff = 0;
    if (r->dtype != 1 || r->ndim != 3 || r->dims[0] != (uint32_t)img->h || r->dims[1] != (uint32_t)img->w ||
        r->dims[2] != 3)
        return -1;
    const uint8_t *ref = r->data;
    int mx = 0;
    for (size_t i = 0; i < r->count; i++) {
        int d = abs((int)img->rgb[i] - (int)ref[i]);
        if (d) (*ndiff)++;
        if (d > mx) mx = d;
    }
    return mx;
}

static void check_decode_kind(const char *kind, const ImageDecodeOptions *opt) {
    load_manifest();
    int checked = 0, bad = 0;
    for (int i = 0; i < manifest_n; i++) {
        char k[16], file[128], ref[160];
        if (sscanf(manifest_lines[i], "%15s %127s %159s", k, file, ref) != 3 || strcmp(k, kind) != 0) continue;
        Image img;
        if (decode_file(file, opt, &img) != 0) { bad++; continue; }
        Ref r = load_ref(ref);
        size_t ndiff;
        int mx = pixel_maxdiff(&img, &r, &ndiff);
        if (mx != 0) {
            print_error("%s %s: %dx%d, max diff %d in %zu samples (-1: shape differs from %ux%u)\n", kind, file, img.w,
                        img.h, mx, ndiff, r.dims[1], r.dims[0]);
            bad++;
        }
        checked++;
        free(r.raw);
        image_free(&img);
    }
    print_message("%s: %d images equal Pillow's pixels exactly, %d differ\n", kind, checked - bad, bad);
    assert_true(checked >= 1);
    assert_int_equal(bad, 0);
}

// every PNG and JPEG fixture decodes to exactly Image.open(f).convert("RGB")
static void test_decode_matches_pillow(void **state) {
    (void)state;
    check_decode_kind("decode", NULL);
}

// images Pillow opens whatever their aspect ratio: no side limit (a side of 40000 included)
static void test_decode_sizes(void **state) {
    (void)state;
    load_manifest();
    int n = 0;
    for (int i = 0; i < manifest_n; i++) {
        char file[128];
        int w, h;
        if (sscanf(manifest_lines[i], "size %127s %d %d", file, &w, &h) != 3) continue;
        Image img;
        assert_int_equal(decode_file(file, NULL, &img), 0);
        if (img.w != w || img.h != h) fail_msg("%s: %dx%d, Pillow %dx%d", file, img.w, img.h, w, h);
        image_free(&img);
        n++;
    }
    assert_true(n >= 3);
}

// with composite_alpha on white: exactly transformers' convert_to_rgb (PIL alpha_composite)
static void test_composite_matches_transformers(void **state) {
    (void)state;
    ImageDecodeOptions o = {.composite_alpha = 1, .bg = {255, 255, 255}};
    check_decode_kind("composite", &o);
}

// image_resize equals Pillow's Image.resize(..., filter) bit for bit: BICUBIC ("resize" lines)
// and LANCZOS, BILINEAR, BOX, HAMMING ("resample" lines)
static void test_resize_matches_pillow(void **state) {
    (void)state;
    load_manifest();
    int checked = 0, bad = 0, per_filter[6] = {0};
    for (int i = 0; i < manifest_n; i++) {
        char file[128], ref[160];
        int w, h, f = IMAGE_FILTER_BICUBIC;
        if (sscanf(manifest_lines[i], "resize %127s %d %d %159s", file, &w, &h, ref) != 4 &&
            sscanf(manifest_lines[i], "resample %127s %d %d %d %159s", file, &f, &w, &h, ref) != 5)
            continue;
        assert_true(f >= 1 && f <= 5);
        Image img, out;
        assert_int_equal(decode_file(file, NULL, &img), 0);
        image_resize(&img, w, h, (ImageFilter)f, &out);
        Ref r = load_ref(ref);
        size_t ndiff;
        int mx = pixel_maxdiff(&out, &r, &ndiff);
        if (mx != 0)
            print_error("resize %s -> %dx%d (%s): max diff %d in %zu samples\n", file, w, h, image_filter_name((ImageFilter)f),
                        mx, ndiff);
        bad += mx != 0;
        free(r.raw);
        image_free(&img);
        image_free(&out);
        checked++;
        per_filter[f]++;
    }
    print_message("resize: %d cases (lanczos %d, bilinear %d, bicubic %d, box %d, hamming %d), %d equal Pillow exactly\n",
                  checked, per_filter[1], per_filter[2], per_filter[3], per_filter[4], per_filter[5], checked - bad);
    assert_int_equal(bad, 0);
    for (int f = 1; f <= 5; f++) assert_true(per_filter[f] >= 5);
}

// max |a - ref| over n floats (NaN if any value is NaN) and how many differ at all
static double float_maxdiff(const float *a, const float *ref, size_t n, size_t *ndiff) {
    double mx = 0;
    int nan = 0;
    *ndiff = 0;
    for (size_t j = 0; j < n; j++) {
        double d = fabs((double)a[j] - (double)ref[j]);
        if (isnan(d)) nan = 1;
        else if (d > mx) mx = d;
        if (!(a[j] == ref[j])) (*ndiff)++;
    }
    return nan ? NAN : mx;
}

// image_preprocess with CLIP's settings equals CLIPImageProcessorPil's pixel_values (plain and
// LLaVA pad mode)
static void test_clip_matches_processor(void **state) {
    (void)state;
    load_manifest();
    int checked = 0, bad = 0;
    double worst = 0;
    for (int i = 0; i < manifest_n; i++) {
        char file[128], ref[160];
        int size, pad;
        if (sscanf(manifest_lines[i], "clip %127s %d %d %159s", file, &size, &pad, ref) != 4) continue;
        Image img;
        assert_int_equal(decode_file(file, NULL, &img), 0);
        Ref r = load_ref(ref);
        assert_int_equal(r.dtype, 2);
        assert_int_equal(r.count, (size_t)3 * size * size);
        float *out = xmalloc(sizeof(float) * r.count);
        ImagePrep p;
        image_prep_preset(&p, IMAGE_PREP_CLIP, size);
        p.pad_to_square = pad;
        assert_true(p.mean[0] == CLIP_MEAN[0] && p.std[2] == CLIP_STD[2]);  // the preset is OpenAI CLIP's
        image_preprocess(&img, &p, out);
        size_t ndiff;
        double mx = float_maxdiff(out, r.data, r.count, &ndiff);
        if (ndiff) {
            print_error("clip %s size %d pad %d: max abs diff %g, %zu of %zu values differ\n", file, size, pad, mx,
                        ndiff, r.count);
            bad++;
        }
        if (!(mx <= worst)) worst = mx;
        if (img.w == size && img.h == size) {  // no resize, no crop: the normalisation alone
            image_normalize_chw(&img, CLIP_MEAN, CLIP_STD, out);
            float_maxdiff(out, r.data, r.count, &ndiff);
            if (ndiff) print_error("image_normalize_chw %s: %zu values differ\n", file, ndiff);
            bad += ndiff != 0;
        }
        free(out);
        free(r.raw);
        image_free(&img);
        checked++;
    }
    // measured: bit-identical (uint8 resampling exact, normalisation with the same float ops)
    print_message("clip: %d cases, max abs diff vs CLIPImageProcessorPil %g\n", checked, worst);
    assert_true(checked >= 10);
    assert_int_equal(bad, 0);
}

// output sizes and offsets of transformers / LLaVA, on known values
static void test_geometry(void **state) {
    (void)state;
    int64_t w, h;
    image_clip_resize_size(640, 480, 336, &w, &h);
    assert_true(w == 448 && h == 336);
    image_clip_resize_size(480, 640, 336, &w, &h);
    assert_true(w == 336 && h == 448);
    image_clip_resize_size(37, 23, 336, &w, &h);  // 336 * 37 / 23 = 540.52 -> int() = 540
    assert_true(w == 540 && h == 336);
    image_clip_resize_size(500, 13, 336, &w, &h);  // 12923.07
    assert_true(w == 12923 && h == 336);
    image_clip_resize_size(7, 7, 336, &w, &h);
    assert_true(w == 336 && h == 336);
    image_clip_resize_size(1001, 1000, 336, &w, &h);  // 336.336 -> 336
    assert_true(w == 336 && h == 336);
    image_clip_resize_size(1, 100000000, 336, &w, &h);  // past INT_MAX: 33,600,000,000
    assert_true(w == 336 && h == 33600000000LL);

    // expand2square: wide image pasted at (0, (w - h) // 2), tall at ((h - w) // 2, 0)
    uint8_t px[5 * 2 * 3];
    for (int i = 0; i < 30; i++) px[i] = (uint8_t)(i + 1);
    Image wide = {5, 2, px}, sq;
    const uint8_t bg[3] = {122, 116, 104};
    image_expand2square(&wide, bg, &sq);
    assert_true(sq.w == 5 && sq.h == 5);
    assert_memory_equal(sq.rgb, bg, 3);                          // row 0 is background
    assert_memory_equal(sq.rgb + 1 * 15, px, 15);                // rows 1, 2 are the image
    assert_memory_equal(sq.rgb + 2 * 15, px + 15, 15);
    assert_memory_equal(sq.rgb + 3 * 15 + 12, bg, 3);            // rows 3, 4 background
    image_free(&sq);
    Image tall = {2, 5, px};
    image_expand2square(&tall, bg, &sq);
    assert_true(sq.w == 5 && sq.h == 5);
    assert_memory_equal(sq.rgb + 0 * 15, bg, 3);                 // column 0 background
    assert_memory_equal(sq.rgb + 0 * 15 + 3, px, 6);             // columns 1, 2 image
    assert_memory_equal(sq.rgb + 4 * 15 + 3, px + 4 * 6, 6);
    assert_memory_equal(sq.rgb + 4 * 15 + 9, bg, 3);
    image_free(&sq);
}

// ---------------------------------------------------------------- the other families' processors

// image_preprocess equals each family's own processor: SiglipImageProcessorPil, InternVL's
// build_transform (and the native GotOcr2ImageProcessorPil with alpha composited),
// Idefics3ImageProcessorPil at one tile, nanoVLM's transform; odd sizes, grey, alpha, palette, 16-bit PNG, CMYK JPEG,
// LLaVA's pad mode, thin images
static void test_prep_matches_processors(void **state) {
    (void)state;
    load_manifest();
    int checked[N_IMAGE_PREP] = {0}, bad = 0, alpha = 0, pad = 0;
    for (int i = 0; i < manifest_n; i++) {
        char fam[16], file[128], ref[160];
        int size, longest, filter, comp, padded;
        if (sscanf(manifest_lines[i], "prep %15s %127s %d %d %d %d %d %159s", fam, file, &size, &longest, &filter, &comp,
                   &padded, ref) != 8)
            continue;
        int f = image_prep_family_parse(fam);
        assert_true(f >= 0);
        ImagePrep p;
        image_prep_preset(&p, (ImagePrepFamily)f, size);
        if (longest) p.longest_edge = longest;
        p.filter = (ImageFilter)filter;
        p.composite_alpha = comp;
        p.pad_to_square = padded;
        Blob b = load_file(file);
        Image img;
        char err[256];
        int rc = image_prep_decode(&p, b.bytes, b.n, &img, err, sizeof err);
        free(b.bytes);
        if (rc) fail_msg("%s: decode failed (%d): %s", file, rc, err);
        Ref r = load_ref(ref);
        assert_int_equal(r.dtype, 2);
        assert_int_equal(r.count, (size_t)3 * size * size);
        float *out = xmalloc(sizeof(float) * r.count);
        image_preprocess(&img, &p, out);
        size_t ndiff;
        double mx = float_maxdiff(out, r.data, r.count, &ndiff);
        if (ndiff) {
            print_error("prep %s %s size %d longest %d %s alpha %d pad %d: max abs diff %g, %zu of %zu values differ\n", fam,
                        file, size, longest, image_filter_name(p.filter), comp, padded, mx, ndiff, r.count);
            bad++;
        }
        free(out);
        free(r.raw);
        image_free(&img);
        checked[f]++;
        alpha += comp;
        pad += padded;
    }
    print_message("prep: siglip %d, internvl %d, idefics3 %d, nanovlm %d cases (%d compositing alpha, %d padded), %d "
                  "differ from the processors\n", checked[IMAGE_PREP_SIGLIP], checked[IMAGE_PREP_INTERNVL],
                  checked[IMAGE_PREP_IDEFICS3], checked[IMAGE_PREP_NANOVLM], alpha, pad, bad);
    assert_int_equal(bad, 0);
    for (int f = IMAGE_PREP_SIGLIP; f < N_IMAGE_PREP; f++) assert_true(checked[f] >= 8);
    assert_true(alpha >= 5 && pad >= 4);
}

// the presets are the processors' defaults
static void test_prep_presets(void **state) {
    (void)state;
    ImagePrep p;
    image_prep_preset(&p, IMAGE_PREP_SIGLIP, 384);
    assert_true(p.rule == IMAGE_RESIZE_SQUARE && p.filter == IMAGE_FILTER_BICUBIC && p.mean[1] == 0.5f && p.std[2] == 0.5f);
    assert_int_equal(p.composite_alpha, 0);
    image_prep_preset(&p, IMAGE_PREP_INTERNVL, 448);
    assert_true(p.rule == IMAGE_RESIZE_SQUARE && p.filter == IMAGE_FILTER_BICUBIC && p.mean[0] == 0.485f &&
                p.std[2] == 0.225f && p.size == 448);
    image_prep_preset(&p, IMAGE_PREP_IDEFICS3, 364);
    assert_true(p.rule == IMAGE_RESIZE_LONGEST_SQUARE && p.filter == IMAGE_FILTER_LANCZOS && p.longest_edge == 1456);
    assert_int_equal(p.composite_alpha, 1);
    image_prep_preset(&p, IMAGE_PREP_NANOVLM, 224);  // T.Resize((S, S)) + T.ToTensor: no normalisation
    assert_true(p.rule == IMAGE_RESIZE_SQUARE && p.filter == IMAGE_FILTER_BILINEAR && p.mean[0] == 0.0f && p.std[1] == 1.0f);
    assert_int_equal(p.composite_alpha, 0);
    image_prep_preset(&p, IMAGE_PREP_CLIP, 336);
    assert_true(p.rule == IMAGE_RESIZE_SHORTEST_CROP && p.mean[2] == CLIP_MEAN[2] && p.pad_to_square == 0);
    for (int f = 0; f < N_IMAGE_PREP; f++) assert_int_equal(image_prep_family_parse(image_prep_family_name(f)), f);
    assert_int_equal(image_prep_family_parse("dinov2"), -1);
    assert_string_equal(image_filter_name(IMAGE_FILTER_LANCZOS), "lanczos");
}

// Idefics3's size rule on values transformers' own functions give
static void test_idefics3_geometry(void **state) {
    (void)state;
    static const int cases[][5] = {  // w, h, longest_edge -> w', h'
        {640, 480, 1456, 1456, 1092}, {480, 640, 1456, 1092, 1456}, {37, 23, 96, 96, 60}, {13, 500, 57, 2, 57},
        {500, 13, 104, 104, 2},       {2000, 9, 96, 96, 1},         {1, 100000, 2048, 1, 2048},
        {100000, 1, 2048, 2048, 1},   {7, 7, 57, 57, 58},            {3000, 1000, 5000, 4096, 1364},
        {1000, 3000, 5001, 1366, 4096}, {45, 31, 20, 20, 14}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int w, h;
        image_idefics3_resize_size(cases[i][0], cases[i][1], cases[i][2], &w, &h);
        if (w != cases[i][3] || h != cases[i][4])
            fail_msg("%dx%d longest %d: %dx%d, transformers %dx%d", cases[i][0], cases[i][1], cases[i][2], w, h, cases[i][3],
                     cases[i][4]);
    }
}

// ---------------------------------------------------------------- preprocessor_config.json

typedef struct {
    const char *dir;
    ImagePrepFamily family;
    int size;
} PrepArg;

static void prep_load_fatal(void *arg) {
    const PrepArg *a = arg;
    ImagePrep p;
    image_prep_load(&p, a->dir, a->family, a->size);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void test_prep_config(void **state) {
    (void)state;
    char dir[512], p[1100];
    make_temp_dir(dir, sizeof dir, "image-prep");
    path_join(p, sizeof p, dir, "preprocessor_config.json");
    ImagePrep q;
    // no file: the family's defaults at the model's size
    image_prep_load(&q, dir, IMAGE_PREP_CLIP, 336);
    assert_int_equal(q.size, 336);
    assert_true(q.mean[0] == 0.48145466f && q.std[2] == 0.27577711f && q.filter == IMAGE_FILTER_BICUBIC);
    // CLIPImageProcessor as saved by transformers: dict forms
    write_text(p, "{\"crop_size\": {\"height\": 336, \"width\": 336}, \"size\": {\"shortest_edge\": 336},"
                  " \"image_mean\": [0.5, 0.25, 0.125], \"image_std\": [0.5, 0.5, 0.25], \"resample\": 3}");
    image_prep_load(&q, dir, IMAGE_PREP_CLIP, 336);
    assert_true(q.size == 336 && q.mean[0] == 0.5f && q.mean[1] == 0.25f && q.mean[2] == 0.125f && q.std[2] == 0.25f);
    // plain ints (older files), and size alone
    write_text(p, "{\"crop_size\": 224, \"size\": 224, \"image_mean\": [0.1, 0.2, 0.3], \"image_std\": [1, 1, 1]}");
    image_prep_load(&q, dir, IMAGE_PREP_CLIP, 224);
    assert_true(q.size == 224 && q.mean[2] == 0.3f && q.std[0] == 1.0f);
    write_text(p, "{\"size\": {\"shortest_edge\": 224}, \"resample\": 2}");  // another filter: now followed
    image_prep_load(&q, dir, IMAGE_PREP_CLIP, 224);
    assert_true(q.size == 224 && q.filter == IMAGE_FILTER_BILINEAR);
    // SigLIP as shipped (do_convert_rgb null), SigLIP2 fixed-resolution (BILINEAR)
    write_text(p, "{\"do_convert_rgb\": null, \"do_normalize\": true, \"do_rescale\": true, \"do_resize\": true, "
                  "\"image_mean\": [0.5, 0.5, 0.5], \"image_processor_type\": \"SiglipImageProcessor\", "
                  "\"image_std\": [0.5, 0.5, 0.5], \"processor_class\": \"SiglipProcessor\", \"resample\": 3, "
                  "\"rescale_factor\": 0.00392156862745098, \"size\": {\"height\": 384, \"width\": 384}}");
    image_prep_load(&q, dir, IMAGE_PREP_SIGLIP, 384);
    assert_true(q.size == 384 && q.rule == IMAGE_RESIZE_SQUARE && q.filter == IMAGE_FILTER_BICUBIC && q.composite_alpha == 0);
    write_text(p, "{\"image_processor_type\": \"SiglipImageProcessorFast\", \"size\": {\"height\": 224, \"width\": 224}, "
                  "\"resample\": 2}");
    image_prep_load(&q, dir, IMAGE_PREP_SIGLIP, 224);
    assert_true(q.filter == IMAGE_FILTER_BILINEAR && q.mean[0] == 0.5f);
    // InternVL's CLIP-style file (its chat code squashes to S x S whatever the file says), and
    // transformers' native GotOcr2ImageProcessor, which composites alpha
    write_text(p, "{\"crop_size\": 448, \"do_center_crop\": true, \"do_normalize\": true, \"do_resize\": true, "
                  "\"feature_extractor_type\": \"CLIPFeatureExtractor\", \"image_mean\": [0.485, 0.456, 0.406], "
                  "\"image_std\": [0.229, 0.224, 0.225], \"resample\": 3, \"size\": 448}");
    image_prep_load(&q, dir, IMAGE_PREP_INTERNVL, 448);
    assert_true(q.size == 448 && q.rule == IMAGE_RESIZE_SQUARE && q.composite_alpha == 0 && q.std[1] == 0.224f);
    write_text(p, "{\"do_center_crop\": false, \"size\": {\"height\": 448, \"width\": 448}}");  // the transform never crops
    image_prep_load(&q, dir, IMAGE_PREP_INTERNVL, 448);
    assert_true(q.size == 448 && q.rule == IMAGE_RESIZE_SQUARE);
    write_text(p, "{\"image_processor_type\": \"GotOcr2ImageProcessor\", \"crop_to_patches\": false, "
                  "\"size\": {\"height\": 448, \"width\": 448}}");
    image_prep_load(&q, dir, IMAGE_PREP_INTERNVL, 448);
    assert_true(q.composite_alpha == 1 && q.mean[0] == 0.485f);
    // Idefics3 / SmolVLM: longest_edge and max_image_size
    write_text(p, "{\"do_convert_rgb\": true, \"do_image_splitting\": false, \"image_processor_type\": "
                  "\"Idefics3ImageProcessor\", \"max_image_size\": {\"longest_edge\": 512}, \"resample\": 1, "
                  "\"size\": {\"longest_edge\": 2048}, \"image_mean\": [0.5, 0.5, 0.5], \"image_std\": [0.5, 0.5, 0.5]}");
    image_prep_load(&q, dir, IMAGE_PREP_IDEFICS3, 512);
    assert_true(q.size == 512 && q.longest_edge == 2048 && q.filter == IMAGE_FILTER_LANCZOS && q.composite_alpha == 1);
    write_text(p, "{\"image_processor_type\": \"SmolVLMImageProcessor\", \"do_image_splitting\": false, "
                  "\"max_image_size\": {\"longest_edge\": 384}}");
    image_prep_load(&q, dir, IMAGE_PREP_IDEFICS3, 384);
    assert_true(q.longest_edge == 4 * 384);

    // refused, in one line naming the file: a size the model does not take, non-square, bad
    // numbers, settings that would otherwise be ignored, another family's processor
    PrepArg a = {dir, IMAGE_PREP_CLIP, 336};
    write_text(p, "{\"crop_size\": {\"height\": 224, \"width\": 224}}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "224", "336");
    write_text(p, "{\"crop_size\": {\"height\": 336, \"width\": 448}}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "square");
    write_text(p, "{\"image_std\": [0.5, 0, 0.5]}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "image_std");
    write_text(p, "{\"image_mean\": [0.5, 0.5]}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "image_mean", "3 numbers");
    write_text(p, "{\"size\": {\"shortest_edge\": 384}, \"crop_size\": 336}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "resizes to 384 then crops 336");
    write_text(p, "{\"image_processor_type\": \"SiglipImageProcessor\"}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "SiglipImageProcessor", "not supported", "clip");
    write_text(p, "{\"resample\": 0}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "resample", "nearest");
    write_text(p, "{\"resample\": 7}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "resample must be");
    write_text(p, "{\"resample\": \"bicubic\"}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "resample must be");
    write_text(p, "{\"do_center_crop\": false}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "do_center_crop = false");
    write_text(p, "{\"do_normalize\": false}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "do_normalize = false");
    write_text(p, "{\"rescale_factor\": 0.5}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "rescale_factor");
    write_text(p, "{\"crop_size\": 0}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "crop_size", "[1, 65536]");
    write_text(p, "[1, 2]");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "object");
    a = (PrepArg){dir, IMAGE_PREP_SIGLIP, 384};
    write_text(p, "{\"size\": {\"shortest_edge\": 384}}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "\"size\"", "height");
    write_text(p, "{\"size\": {\"height\": 384, \"width\": 384}, \"do_center_crop\": true}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "do_center_crop");
    write_text(p, "{\"image_processor_type\": \"Siglip2ImageProcessor\"}");  // naflex: patches, not a square
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "Siglip2ImageProcessor", "siglip");
    write_text(p, "{\"image_mean\": [0.5, NaN, 0.5]}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json");
    a = (PrepArg){dir, IMAGE_PREP_IDEFICS3, 364};
    write_text(p, "{\"max_image_size\": {\"longest_edge\": 512}, \"do_image_splitting\": false}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "512", "364");
    write_text(p, "{\"size\": 364}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "longest_edge");
    write_text(p, "{\"image_processor_type\": \"CLIPImageProcessor\"}");
    expect_fatal(prep_load_fatal, &a, "preprocessor_config.json", "CLIPImageProcessor", "idefics3");
    remove(p);
    rmdir(dir);
}

// ---------------------------------------------------------------- LLaVA's pad mode without the square

static uint64_t g_rng = 12345;
static int rnd(int lo, int hi) { return lo + (int)(test_rand_u64(&g_rng) % (uint64_t)(hi - lo + 1)); }

// an image of random pixels, with runs of the background colour (the background's share of a
// sum is where the virtual square could go wrong)
static Image random_image(int w, int h, const uint8_t bg[3]) {
    Image img = {w, h, xmalloc((size_t)w * h * 3)};
    for (size_t i = 0; i < (size_t)w * h; i++) {
        uint64_t r = test_rand_u64(&g_rng);
        if (r % 4 == 0) memcpy(img.rgb + 3 * i, bg, 3);
        else for (int c = 0; c < 3; c++) img.rgb[3 * i + c] = (uint8_t)(r >> (8 * (c + 1)));
    }
    return img;
}

// image_pad_resize equals the square built and resized (image_expand2square + image_resize, both
// checked against Pillow), for wide, tall, thin, near-square, upscaled (side < size) and
// same-size shapes, with every filter, to square outputs and to others (Idefics3's L x L + 1 of
// an odd L, and any the horizontal-first order allows); with the default chunks and with tiny
// ones (one row or column per chunk)
static void test_pad_virtual_matches_square(void **state) {
    (void)state;
    int cases = 0, nonsquare = 0;
    for (int trial = 0; trial < 160; trial++) {
        int w, h, size;
        switch (trial % 6) {
        case 0: w = rnd(1, 60), h = rnd(1, 60), size = rnd(1, 48); break;          // small, any ratio
        case 1: w = rnd(1, 3), h = rnd(200, 2500), size = rnd(1, 40); break;       // thin and tall
        case 2: w = rnd(200, 2500), h = rnd(1, 3), size = rnd(1, 40); break;       // thin and wide
        case 3: w = rnd(100, 400), h = w + rnd(-3, 3), size = rnd(2, 60); break;   // near square
        case 4: w = rnd(5, 90), h = rnd(5, 90), size = rnd(60, 130); break;        // upscaled
        default: w = rnd(1, 40), h = rnd(1, 40), size = w > h ? w : h; break;      // side == size
        }
        if (w < 1) w = 1;
        if (h < 1) h = 1;
        if (trial == 7) w = 1, h = 2999, size = 336;  // LLaVA's size, a one-pixel strip
        if (trial == 8) w = 2999, h = 1, size = 336;
        uint8_t bg[3] = {(uint8_t)rnd(0, 255), (uint8_t)rnd(0, 255), (uint8_t)rnd(0, 255)};
        Image img = random_image(w, h, bg), sq, ref;
        image_expand2square(&img, bg, &sq);
        const ImageFilter filter = (ImageFilter)(1 + trial % 5);
        const int s = sq.w;
        int ow = size, oh = size;
        if (trial % 4 == 1) oh = size + 1;
        if (trial % 4 == 3) {  // any height the horizontal-first order allows
            oh = rnd(1, 2 * size + 2);
            while (s - oh > 0 && s - oh > 2 * (s - ow)) oh++;
        }
        nonsquare += ow != oh;
        image_resize(&sq, ow, oh, filter, &ref);
        size_t nb = (size_t)ow * oh * 3;
        uint8_t *out = xmalloc(nb);
        const size_t chunks[2] = {0, (size_t)rnd(1, 4096)};
        for (int k = 0; k < 2; k++) {
            memset(out, 0xA5, nb);
            image_pad_resize(&img, bg, ow, oh, filter, out, chunks[k]);
            if (memcmp(out, ref.rgb, nb) != 0) {
                size_t i = 0;
                while (out[i] == ref.rgb[i]) i++;
                fail_msg("%dx%d -> %dx%d (%s, chunk %zu, bg %d,%d,%d): byte %zu (pixel %zu, %zu) is %d, the square gives %d",
                         w, h, ow, oh, image_filter_name(filter), chunks[k], bg[0], bg[1], bg[2], i, i / 3 % ow, i / 3 / ow,
                         out[i], ref.rgb[i]);
            }
        }
        free(out);
        image_free(&img);
        image_free(&sq);
        image_free(&ref);
        cases++;
    }
    print_message("pad: %d shapes (%d to a non-square size), the virtual square equals the square built and resized\n",
                  cases, nonsquare);
    assert_true(nonsquare >= 40);
}

// ---------------------------------------------------------------- bad input

static int child_failures;
__attribute__((format(printf, 1, 2))) static void child_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    child_failures++;
}

// decodes and checks: want_rc 0 = any error (< 0); 1 = must succeed; other = that code exactly
static int try_decode(const char *what, const uint8_t *p, size_t n, const ImageDecodeOptions *o, int want_rc,
                      Image *out) {
    char err[256];
    memset(err, 'x', sizeof err);  // a reason must be written, NUL-terminated
    Image img;
    int rc = image_decode_ex(p, n, o, &img, err, sizeof err);
    if (rc < 0) {
        if (!memchr(err, 0, sizeof err) || strlen(err) == 0) child_fail("%s: error %d without a reason", what, rc);
        if (img.rgb || img.w || img.h) child_fail("%s: error %d but the image is not empty", what, rc);
    }
    if (want_rc == 1 && rc != 0) child_fail("%s: want success, got %d (%s)", what, rc, err);
    if (want_rc == 0 && rc >= 0) child_fail("%s: want an error, got success (%dx%d)", what, img.w, img.h);
    if (want_rc < 0 && rc != want_rc) child_fail("%s: want code %d, got %d (%s)", what, want_rc, rc, rc ? err : "");
    if (out) *out = img;
    else image_free(&img);
    return rc;
}

static void child_toolarge(void *arg) {
    (void)arg;
    load_manifest();
    int n = 0;
    for (int i = 0; i < manifest_n; i++) {
        char file[128];
        if (sscanf(manifest_lines[i], "toolarge %127s", file) != 1) continue;
        Blob b = load_file(file);
        char err[256];
        Image img;
        int rc = image_decode(b.bytes, b.n, &img, err, sizeof err);
        if (rc != IMAGE_ERR_TOO_LARGE || !strstr(err, "too large")) child_fail("%s: got %d (%s)", file, rc, err);
        free(b.bytes);
        n++;
    }
    if (n < 5) child_fail("only %d toolarge fixtures", n);
    // between Pillow's warning (1x MAX_IMAGE_PIXELS) and error (2x) limits: the size check passes
    // (what fails then is the missing data)
    n = 0;
    for (int i = 0; i < manifest_n; i++) {
        char file[128];
        if (sscanf(manifest_lines[i], "bombwarn %127s", file) != 1) continue;
        Blob b = load_file(file);
        try_decode(file, b.bytes, b.n, NULL, 0, NULL);
        char err[256];
        Image img;
        int rc = image_decode(b.bytes, b.n, &img, err, sizeof err);
        if (rc == IMAGE_ERR_TOO_LARGE) child_fail("%s: refused as too large (%s); Pillow only warns", file, err);
        free(b.bytes);
        n++;
    }
    if (n < 1) child_fail("no bombwarn fixture");
    // the limits are configurable
    Blob b = load_file("photo_640x480.jpg");
    ImageDecodeOptions o = {.max_pixels = 640 * 480 - 1};
    try_decode("max_pixels 307199", b.bytes, b.n, &o, IMAGE_ERR_TOO_LARGE, NULL);
    o = (ImageDecodeOptions){.max_pixels = 640 * 480};
    try_decode("max_pixels 307200", b.bytes, b.n, &o, 1, NULL);
    o = (ImageDecodeOptions){.max_side = 479};
    try_decode("max_side 479", b.bytes, b.n, &o, IMAGE_ERR_TOO_LARGE, NULL);
    free(b.bytes);
    b = load_file("rgb_500x13.png");
    o = (ImageDecodeOptions){.max_side = 499};
    try_decode("png max_side 499", b.bytes, b.n, &o, IMAGE_ERR_TOO_LARGE, NULL);
    free(b.bytes);
    exit(child_failures ? 1 : 0);
}

// Pillow-truncated files: an error whenever Pillow raises; where Pillow still decodes (only the
// trailing CRC / IEND missing), success must give the full image.
static void child_truncated(void *arg) {
    (void)arg;
    load_manifest();
    int n = 0, differ = 0;
    for (int i = 0; i < manifest_n; i++) {
        char file[128], verdict[16];
        size_t cut;
        if (sscanf(manifest_lines[i], "truncate %127s %zu %15s", file, &cut, verdict) != 3) continue;
        Blob b = load_file(file);
        Image full, img;
        try_decode(file, b.bytes, b.n, NULL, 1, &full);
        char what[200];
        snprintf(what, sizeof what, "%s cut at %zu of %zu (Pillow: %s)", file, cut, b.n, verdict);
        // a copy of exactly cut bytes, so that ASan sees any read past the end
        uint8_t *p = xmalloc(cut ? cut : 1);
        memcpy(p, b.bytes, cut);
        int rc = try_decode(what, p, cut, NULL, strcmp(verdict, "error") == 0 ? 0 : 2, &img);
        if (rc == 0) {
            if (img.w != full.w || img.h != full.h || memcmp(img.rgb, full.rgb, (size_t)full.w * full.h * 3))
                child_fail("%s: decoded to other pixels than the full file", what);
        }
        if ((rc == 0) != (strcmp(verdict, "ok") == 0)) {
            differ++;
            fprintf(stderr, "note: %s: svlm %s\n", what, rc == 0 ? "decodes" : "errors");
        }
        image_free(&img);
        image_free(&full);
        free(p);
        free(b.bytes);
        n++;
    }
    if (n < 20) child_fail("only %d truncate cases", n);
    fprintf(stderr, "truncated: %d cases, %d where svlm and Pillow disagree\n", n, differ);
    exit(child_failures ? 1 : 0);
}

// random bytes in the middle, zero bytes, foreign formats, a bare signature: never a crash
static void child_corrupt(void *arg) {
    (void)arg;
    static const char *files[] = {"rgb_37x23.png", "interlaced_rgb_29x27.png", "pal_trns_31x19.png",
                                  "grey16_19x13.png", "jpeg_420_37x23.jpg", "jpeg_prog_61x47.jpg",
                                  "jpeg_cmyk_33x21.jpg", "jpeg_ycck_27x19.jpg", "photo_prog_200x150.jpg",
                                  "jpeg_grey_45x29.jpg"};
    uint64_t rng = 42;
    int errors = 0, decoded = 0;
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
        Blob b = load_file(files[f]);
        uint8_t *p = xmalloc(b.n);
        for (int trial = 0; trial < 40; trial++) {
            memcpy(p, b.bytes, b.n);
            // overwrite a run of random length at a random place past the signature
            size_t at = 8 + test_rand_u64(&rng) % (b.n - 8);
            size_t len = 1 + test_rand_u64(&rng) % (trial < 20 ? 4 : 64);
            for (size_t k = at; k < at + len && k < b.n; k++) p[k] = (uint8_t)test_rand_u64(&rng);
            char what[160];
            snprintf(what, sizeof what, "%s corrupted at %zu+%zu", files[f], at, len);
            Image img;
            int rc = try_decode(what, p, b.n, NULL, 2, &img);  // 2: either outcome
            if (rc == 0) {
                decoded++;
                if (img.w <= 0 || img.h <= 0 || !img.rgb) child_fail("%s: success with an empty image", what);
            } else {
                errors++;
            }
            image_free(&img);
        }
        free(p);
        free(b.bytes);
    }
    fprintf(stderr, "corrupt: %d decoded (damaged pixels), %d rejected\n", decoded, errors);
    // the rest: exact error codes
    try_decode("zero bytes", (const uint8_t *)"", 0, NULL, IMAGE_ERR_FORMAT, NULL);
    try_decode("NULL", NULL, 0, NULL, IMAGE_ERR_FORMAT, NULL);
    try_decode("text", (const uint8_t *)"hello, world", 12, NULL, IMAGE_ERR_FORMAT, NULL);
    try_decode("gif", (const uint8_t *)"GIF89a\x01\x00\x01\x00", 10, NULL, IMAGE_ERR_UNSUPPORTED, NULL);
    try_decode("webp", (const uint8_t *)"RIFF\x10\x00\x00\x00WEBPVP8 ", 16, NULL, IMAGE_ERR_UNSUPPORTED, NULL);
    try_decode("png signature only", (const uint8_t *)"\x89PNG\r\n\x1a\n", 8, NULL, IMAGE_ERR_TRUNCATED, NULL);
    try_decode("jpeg SOI only", (const uint8_t *)"\xff\xd8\xff", 3, NULL, 0, NULL);
    try_decode("one byte", (const uint8_t *)"\x89", 1, NULL, IMAGE_ERR_FORMAT, NULL);
    // a PNG whose IHDR CRC is wrong, and one with a zero width
    Blob b = load_file("rgb_37x23.png");
    b.bytes[29] ^= 0xff;
    try_decode("png bad IHDR crc", b.bytes, b.n, NULL, IMAGE_ERR_CORRUPT, NULL);
    b.bytes[29] ^= 0xff;
    memset(b.bytes + 16, 0, 4);
    try_decode("png zero width", b.bytes, b.n, NULL, 0, NULL);
    free(b.bytes);
    // a JPEG whose SOF claims zero height (DNL style): rejected
    b = load_file("jpeg_420_37x23.jpg");
    for (size_t i = 0; i + 9 < b.n; i++)
        if (b.bytes[i] == 0xff && b.bytes[i + 1] == 0xc0) { b.bytes[i + 5] = b.bytes[i + 6] = 0; break; }
    try_decode("jpeg zero height", b.bytes, b.n, NULL, 0, NULL);
    free(b.bytes);
    exit(child_failures ? 1 : 0);
}

// the child must exit 0: not killed by a signal, no failed check, no sanitizer report
static void run_and_expect(void (*fn)(void *), void *arg, const char *name) {
    static char buf[1 << 16];
    int st = run_child(fn, arg, buf, sizeof buf);
    if (st != 0 || strstr(buf, "runtime error") || strstr(buf, "Sanitizer")) {
        print_error("%s: child %s %d; stderr:\n%s\n", name, st < 0 ? "killed by signal" : "exited with", st < 0 ? -st : st,
                    buf);
        fail();
    }
    if (buf[0]) print_message("%s", buf);
}

// a "Vm...:" line of /proc/self/status in kB, -1 when unavailable
static long proc_status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') v = strtol(line + kl + 1, NULL, 10);
    fclose(f);
    return v;
}

// What the old pad path did: a 1 x 2,000,000 image became a 2,000,000^2 square (12 TB). Now each
// thin image is preprocessed within a bounded amount of memory: the peak RSS (VmHWM, reset
// through /proc/self/clear_refs where the kernel allows) is checked when not under
// AddressSanitizer, whose quarantine holds freed memory.
static void child_thin_pad(void *arg) {
    (void)arg;
    static const int shapes[][2] = {{1, 2000000}, {2000000, 1}, {3, 700001}, {700001, 2}};
    FILE *cr = fopen("/proc/self/clear_refs", "w");
    int reset = cr && fputs("5", cr) >= 0;
    if (cr && fclose(cr) != 0) reset = 0;
    long before = proc_status_kb("VmRSS");
    float *out = xmalloc(sizeof(float) * 3 * 336 * 336);
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const uint8_t bg[3] = {122, 116, 104};
        Image img = random_image(shapes[k][0], shapes[k][1], bg);
        double t0 = time_now();
        ImagePrep p;  // CLIP's pad mode, and SigLIP's square resize of the padded square
        image_prep_preset(&p, k % 2 ? IMAGE_PREP_SIGLIP : IMAGE_PREP_CLIP, 336);
        p.pad_to_square = 1;
        image_preprocess(&img, &p, out);
        for (int i = 0; i < 3 * 336 * 336; i++)
            if (!isfinite(out[i])) {
                child_fail("%dx%d: value %d is not finite", img.w, img.h, i);
                break;
            }
        fprintf(stderr, "pad %dx%d -> 336: %.2f s\n", img.w, img.h, time_now() - t0);
        image_free(&img);
    }
    free(out);
    long peak = proc_status_kb("VmHWM");
    if (!reset || before < 0 || peak < 0) {
        fprintf(stderr, "thin images padded (peak RSS not measurable here)\n");
    } else {
        long grew_mb = (peak - before) / 1024;
        fprintf(stderr, "thin images padded: peak RSS %ld MB above the start\n", grew_mb);
#if !defined(__SANITIZE_ADDRESS__)
        if (grew_mb > 160) child_fail("peak RSS grew by %ld MB (want < 160: 6 MB images, 32 MB chunks)", grew_mb);
#endif
    }
    exit(child_failures ? 1 : 0);
}

static void test_pad_thin_images_bounded(void **state) {
    (void)state;
    run_and_expect(child_thin_pad, NULL, "thin pad");
}

static void test_huge_dimensions_rejected(void **state) {
    (void)state;
    run_and_expect(child_toolarge, NULL, "toolarge");
}

static void test_truncated_rejected(void **state) {
    (void)state;
    run_and_expect(child_truncated, NULL, "truncated");
}

static void test_corrupt_no_crash(void **state) {
    (void)state;
    run_and_expect(child_corrupt, NULL, "corrupt");
}

// a decode after failures still works (no state leaks between calls) and err may be NULL
static void test_errors_leave_no_state(void **state) {
    (void)state;
    Blob good = load_file("jpeg_420_37x23.jpg");
    Image img;
    for (int i = 0; i < 3; i++) {
        assert_true(image_decode(good.bytes, good.n / 2, &img, NULL, 0) < 0);
        assert_null(img.rgb);
        assert_int_equal(image_decode(good.bytes, good.n, &img, NULL, 0), 0);
        assert_true(img.w == 37 && img.h == 23);
        image_free(&img);
        assert_null(img.rgb);
    }
    image_free(&img);  // twice is fine
    free(good.bytes);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_matches_pillow),
        cmocka_unit_test(test_decode_sizes),
        cmocka_unit_test(test_composite_matches_transformers),
        cmocka_unit_test(test_resize_matches_pillow),
        cmocka_unit_test(test_clip_matches_processor),
        cmocka_unit_test(test_prep_matches_processors),
        cmocka_unit_test(test_prep_presets),
        cmocka_unit_test(test_idefics3_geometry),
        cmocka_unit_test(test_prep_config),
        cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_pad_virtual_matches_square),
        cmocka_unit_test(test_pad_thin_images_bounded),
        cmocka_unit_test(test_huge_dimensions_rejected),
        cmocka_unit_test(test_truncated_rejected),
        cmocka_unit_test(test_corrupt_no_crash),
        cmocka_unit_test(test_errors_leave_no_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
