// fuzz_image.c: libFuzzer harness for PNG/JPEG decoding (data/image.c) and the towers'
// preprocessing (data/image_prep.c, data/resize.c). The first two bytes pick the options (alpha
// compositing, pad, the output size, the family); the rest is the image file. Decoding limits are kept small so that a fuzzed header
// cannot make each run allocate gigabytes (those limits are tested in tests/test_image.c).
#include <stdlib.h>

#include "data/image_prep.h"
#include "tests/fuzz/fuzz_common.h"

static const uint8_t *g_data;
static size_t g_n;
static int g_opt, g_family;

static void run(void *arg) {
    (void)arg;
    ImageDecodeOptions o = {.max_pixels = 1 << 22, .max_side = 1 << 14, .composite_alpha = g_opt & 1,
                            .bg = {255, 255, 255}};
    Image im;
    char err[256];
    if (image_decode_ex(g_data, g_n, &o, &im, err, sizeof err) != 0) return;
    int size = 8 + ((g_opt >> 2) & 31);
    ImagePrep p;
    image_prep_preset(&p, (ImagePrepFamily)(g_family % N_IMAGE_PREP), size);
    p.pad_to_square = (g_opt >> 1) & 1;
    p.filter = (ImageFilter)(1 + (g_family / N_IMAGE_PREP) % 5);  // every convolution filter
    if (p.rule == IMAGE_RESIZE_LONGEST_SQUARE) p.longest_edge = size + (g_opt >> 7) * 7;  // odd and even
    float *out = malloc(3 * (size_t)size * size * sizeof *out);
    image_preprocess(&im, &p, out);
    free(out);
    image_free(&im);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 2) return 0;
    g_opt = data[0];
    g_family = data[1];
    g_data = data + 2;
    g_n = n - 2;
    fuzz_guard(run, NULL);
    return 0;
}
