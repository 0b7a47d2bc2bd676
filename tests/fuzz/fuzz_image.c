// fuzz_image.c: libFuzzer harness for PNG/JPEG decoding (data/image.c) and CLIP preprocessing
// (data/resize.c). The first byte picks the options (alpha compositing, pad or crop, the output
// size); the rest is the image file. Decoding limits are kept small so that a fuzzed header
// cannot make each run allocate gigabytes (those limits are tested in tests/test_image.c).
#include <stdlib.h>

#include "data/image.h"
#include "tests/fuzz/fuzz_common.h"

static const uint8_t *g_data;
static size_t g_n;
static int g_opt;

static void run(void *arg) {
    (void)arg;
    ImageDecodeOptions o = {.max_pixels = 1 << 22, .max_side = 1 << 14, .composite_alpha = g_opt & 1,
                            .bg = {255, 255, 255}};
    Image im;
    char err[256];
    if (image_decode_ex(g_data, g_n, &o, &im, err, sizeof err) != 0) return;
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}, std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    int size = 8 + ((g_opt >> 2) & 31);
    float *out = malloc(3 * (size_t)size * size * sizeof *out);
    image_preprocess_clip(&im, size, mean, std, (g_opt >> 1) & 1, out);
    free(out);
    image_free(&im);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n == 0) return 0;
    g_opt = data[0];
    g_data = data + 1;
    g_n = n - 1;
    fuzz_guard(run, NULL);
    return 0;
}
