// image_prep.c: each vision family's preprocessing on top of the Pillow-exact resampler
// (data/resize.c), its settings from preprocessor_config.json, and the one entry point
// image_preprocess (see image_prep.h for the pipelines reproduced).
#include "data/image_prep.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/util.h"

static const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};  // OPENAI_CLIP_MEAN
static const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};
static const float IMAGENET_MEAN[3] = {0.485f, 0.456f, 0.406f};  // IMAGENET_DEFAULT_MEAN (InternVL)
static const float IMAGENET_STD[3] = {0.229f, 0.224f, 0.225f};
#define IDEFICS3_MAX_SIDE 4096  // Idefics3's MAX_IMAGE_SIZE

static const char *FAMILY_NAMES[N_IMAGE_PREP] = {"clip", "siglip", "internvl", "idefics3", "nanovlm"};

const char *image_prep_family_name(ImagePrepFamily f) {
    return (int)f >= 0 && f < N_IMAGE_PREP ? FAMILY_NAMES[f] : "unknown";
}

int image_prep_family_parse(const char *name) {
    for (int i = 0; i < N_IMAGE_PREP; i++)
        if (name && !strcmp(name, FAMILY_NAMES[i])) return i;
    return -1;
}

void image_prep_preset(ImagePrep *p, ImagePrepFamily f, int size) {
    CHECK((int)f >= 0 && f < N_IMAGE_PREP && size > 0, "image_prep_preset: family %d, size %d", (int)f, size);
    memset(p, 0, sizeof *p);
    p->family = f;
    p->size = size;
    p->filter = IMAGE_FILTER_BICUBIC;
    p->max_tiles = 1;
    const float half[3] = {0.5f, 0.5f, 0.5f};  // IMAGENET_STANDARD_MEAN / _STD
    switch (f) {
    case IMAGE_PREP_CLIP:
        p->rule = IMAGE_RESIZE_SHORTEST_CROP;
        memcpy(p->mean, CLIP_MEAN, sizeof p->mean);
        memcpy(p->std, CLIP_STD, sizeof p->std);
        break;
    case IMAGE_PREP_SIGLIP:
        p->rule = IMAGE_RESIZE_SQUARE;
        memcpy(p->mean, half, sizeof p->mean);
        memcpy(p->std, half, sizeof p->std);
        break;
    case IMAGE_PREP_INTERNVL:
        p->rule = IMAGE_RESIZE_SQUARE;
        memcpy(p->mean, IMAGENET_MEAN, sizeof p->mean);
        memcpy(p->std, IMAGENET_STD, sizeof p->std);
        break;
    case IMAGE_PREP_NANOVLM:  // T.Resize((S, S)) + T.ToTensor: x / 255, nothing subtracted
        p->rule = IMAGE_RESIZE_SQUARE;
        p->filter = IMAGE_FILTER_BILINEAR;
        for (int c = 0; c < 3; c++) p->mean[c] = 0.0f, p->std[c] = 1.0f;
        break;
    default:  // IMAGE_PREP_IDEFICS3
        p->rule = IMAGE_RESIZE_LONGEST_SQUARE;
        p->filter = IMAGE_FILTER_LANCZOS;
        p->longest_edge = 4 * size;
        p->composite_alpha = 1;  // the processor's convert_to_rgb sees the opened image
        memcpy(p->mean, half, sizeof p->mean);
        memcpy(p->std, half, sizeof p->std);
        break;
    }
}

// ---------------------------------------------------------------- preprocessor_config.json

static int size_value(const cJSON *j, const char *key, const char *path) {
    int64_t v;
    if (!json_is_i64(j, 1, 65536, &v))
        fatal("%s: \"%s\" must be an integer in [1, 65536], got %s", path, key, cJSON_IsNumber(j) ? "another number" : json_type_name(j));
    return (int)v;
}

// a square size: an int, {"height", "width"} (equal) or, where shortest_ok, {"shortest_edge"};
// 0 when the key is absent or null
static int read_size(const cJSON *root, const char *key, int shortest_ok, const char *path) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) return 0;
    if (cJSON_IsNumber(j)) return size_value(j, key, path);
    if (cJSON_IsObject(j)) {
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(j, "height"), *w = cJSON_GetObjectItemCaseSensitive(j, "width");
        const cJSON *se = cJSON_GetObjectItemCaseSensitive(j, "shortest_edge");
        if (h || w) {
            int hv = size_value(h, key, path), wv = size_value(w, key, path);
            if (hv != wv) fatal("%s: \"%s\" is %d x %d: only square inputs are supported", path, key, hv, wv);
            return hv;
        }
        if (se && shortest_ok) return size_value(se, key, path);
    }
    fatal("%s: \"%s\" must be %s", path, key,
          shortest_ok ? "a number, {\"height\", \"width\"} or {\"shortest_edge\"}" : "a number or {\"height\", \"width\"}");
}

// {"longest_edge": N}: N, 0 when the key is absent
static int read_longest_edge(const cJSON *root, const char *key, const char *path) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) return 0;
    const cJSON *le = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, "longest_edge") : NULL;
    if (!le) fatal("%s: \"%s\" must be {\"longest_edge\": N}", path, key);
    return size_value(le, key, path);
}

// the processor classes each family reads the settings of ("Fast" / "Pil" suffixes allowed)
static int type_ok(ImagePrepFamily f, const char *type) {
    static const char *ok[N_IMAGE_PREP][3] = {
        {"CLIPImageProcessor", "CLIPFeatureExtractor", NULL},
        {"SiglipImageProcessor", NULL, NULL},
        // InternVL / Vintern repositories ship a CLIP-style file next to their chat code;
        // transformers' native InternVL uses GotOcr2ImageProcessor
        {"CLIPImageProcessor", "CLIPFeatureExtractor", "GotOcr2ImageProcessor"},
        {"Idefics3ImageProcessor", "SmolVLMImageProcessor", NULL},
        {NULL, NULL, NULL},  // nanoVLM: no file is read
    };
    for (int i = 0; i < 3 && ok[f][i]; i++) {
        size_t n = strlen(ok[f][i]);
        if (!strncmp(type, ok[f][i], n) && (!type[n] || !strcmp(type + n, "Fast") || !strcmp(type + n, "Pil"))) return 1;
    }
    return 0;
}

static void check_flag(const cJSON *root, const char *key, const char *path) {
    if (!json_get_bool_opt(root, key, 1, path)) fatal("%s: %s = false is not supported", path, key);
}

// the tree image_prep_load is reading: reachable from here while a fatal() exits midway, so
// that LeakSanitizer does not report it (image_prep_load runs at setup, on one thread)
static cJSON *volatile g_reading;  // volatile: stored though never read

void image_prep_load(ImagePrep *p, const char *dir, ImagePrepFamily f, int model_image_size) {
    image_prep_preset(p, f, model_image_size);
    char path[2048];
    path_join(path, sizeof path, dir, "preprocessor_config.json");
    if (f == IMAGE_PREP_NANOVLM) return;  // its transform is code (data/processors.py), read from no file
    if (!file_exists(path)) return;
    cJSON *root = g_reading = json_load_file(path);
    if (!cJSON_IsObject(root)) fatal("%s: must hold a JSON object", path);
    const char *type = json_get_str_opt(root, "image_processor_type",
                                        json_get_str_opt(root, "feature_extractor_type", NULL, path), path);
    if (type && !type_ok(f, type))
        fatal("%s: image processor \"%s\" is not supported for a %s vision tower", path, type, image_prep_family_name(f));
    const int native_internvl = f == IMAGE_PREP_INTERNVL && type && !strncmp(type, "GotOcr2", 7);
    if (json_get_float3(root, "image_mean", p->mean, path) | json_get_float3(root, "image_std", p->std, path))
        for (int i = 0; i < 3; i++) {
            if (!isfinite(p->mean[i])) fatal("%s: image_mean must be finite numbers", path);
            if (!(p->std[i] > 0) || !isfinite(p->std[i])) fatal("%s: image_std must be positive", path);
        }
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "resample");
    if (rs && !cJSON_IsNull(rs)) {
        int64_t v;
        if (!json_is_i64(rs, 0, 5, &v) || v == IMAGE_FILTER_NEAREST)
            fatal("%s: resample must be 1 (lanczos), 2 (bilinear), 3 (bicubic), 4 (box) or 5 (hamming)%s", path,
                  json_is_i64(rs, 0, 0, &v) ? ": nearest (0) is not supported" : "");
        p->filter = (ImageFilter)v;
    }
    check_flag(root, "do_resize", path);
    check_flag(root, "do_rescale", path);
    check_flag(root, "do_normalize", path);
    double rescale = json_get_num_opt(root, "rescale_factor", 1.0 / 255.0, path);
    if (!(fabs(rescale * 255.0 - 1.0) <= 1e-6)) fatal("%s: rescale_factor %g is not supported (1/255)", path, rescale);
    // the sizes (0: not given); the checks on them come after the tree is freed
    int crop = 0, size = 0, longest = 0, tiles = 0;
    if (f == IMAGE_PREP_CLIP || f == IMAGE_PREP_INTERNVL) {
        if (f == IMAGE_PREP_CLIP) check_flag(root, "do_center_crop", path);  // InternVL's transform never crops
        crop = read_size(root, "crop_size", 1, path);
        size = read_size(root, "size", 1, path);
        tiles = native_internvl && json_get_bool_opt(root, "crop_to_patches", 0, path);
    } else if (f == IMAGE_PREP_SIGLIP) {
        if (json_get_bool_opt(root, "do_center_crop", 0, path)) fatal("%s: do_center_crop = true is not supported for SigLIP", path);
        size = read_size(root, "size", 0, path);
    } else {
        longest = read_longest_edge(root, "size", path);
        size = read_longest_edge(root, "max_image_size", path);
        tiles = json_get_bool_opt(root, "do_image_splitting", 1, path);
    }
    cJSON_Delete(root);
    g_reading = NULL;
    if (crop && size && crop != size)
        fatal("%s: resizes to %d then crops %d; svlm's %s preprocessing resizes to the crop size (the %s configs "
              "have them equal)", path, size, crop, image_prep_family_name(f), f == IMAGE_PREP_CLIP ? "CLIP" : "InternVL");
    const int s = crop ? crop : size;
    if (s && s != model_image_size)
        fatal("%s: image size %d differs from the vision model's image_size %d", path, s, model_image_size);
    if (native_internvl) p->composite_alpha = 1;  // the native processor's convert_to_rgb sees the opened image
    if (f == IMAGE_PREP_IDEFICS3) p->longest_edge = longest ? longest : 4 * p->size;
    // tiling is max_tiles' choice (data/tiling.h), made by the caller after this
    p->proc_tiles = tiles;
}

// ---------------------------------------------------------------- sizes

void image_clip_resize_size(int w, int h, int shortest, int64_t *out_w, int64_t *out_h) {
    // transformers: short, long = (w, h) if w <= h else (h, w); new_long = int(size * long / short)
    // (Python true division of integers: correctly rounded, as the double division here; the
    // product is exact below 2^53)
    int sh = w <= h ? w : h, lo = w <= h ? h : w;
    int64_t new_long = (int64_t)((double)shortest * lo / sh);
    if (w <= h) { *out_w = shortest; *out_h = new_long; }
    else { *out_w = new_long; *out_h = shortest; }
}

// _resize_output_size_scale_below_upper_bound, then at least 1 (the values stay below 2^31:
// each is at most max(longest, the other side scaled by at most 1))
static void idefics3_cap(int *w, int *h, int max_len) {
    const double ar = (double)*w / *h;
    if (*w >= *h && *w > max_len) {
        *w = max_len;
        *h = (int)(*w / ar);
    } else if (*h > *w && *h > max_len) {
        *h = max_len;
        *w = (int)(*h * ar);
    }
    if (*h < 1) *h = 1;
    if (*w < 1) *w = 1;
}

void image_idefics3_resize_size(int w, int h, int longest, int *out_w, int *out_h) {
    // _resize_output_size_rescale_to_max_len(h, w, max_len=longest): Python float arithmetic
    const double ar = (double)w / h;
    if (w >= h) {
        w = longest;
        h = (int)(w / ar);
        if (h % 2) h++;
    } else {
        h = longest;
        w = (int)(h * ar);
        if (w % 2) w++;
    }
    if (h < 1) h = 1;
    if (w < 1) w = 1;
    idefics3_cap(&w, &h, IDEFICS3_MAX_SIDE);
    *out_w = w;
    *out_h = h;
}

// ---------------------------------------------------------------- normalisation

// lut[c][v] = float32(float32(v * (1/255) in double) - mean) / std, as transformers' rescale
// (float64 product cast to float32) followed by normalize (float32 arithmetic)
static void make_lut(const float mean[3], const float std[3], float lut[3][256]) {
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) {
            volatile float r = (float)((double)v * (1.0 / 255.0));  // volatile: no excess precision
            volatile float d = r - mean[c];
            lut[c][v] = d / std[c];
        }
}

static void rgb_to_chw(const uint8_t *rgb, size_t npix, float lut[3][256], float *out) {
    float *o0 = out, *o1 = out + npix, *o2 = out + 2 * npix;
    for (size_t i = 0; i < npix; i++) {
        o0[i] = lut[0][rgb[3 * i + 0]];
        o1[i] = lut[1][rgb[3 * i + 1]];
        o2[i] = lut[2][rgb[3 * i + 2]];
    }
}

void image_normalize_chw(const Image *img, const float mean[3], const float std[3], float *out) {
    float lut[3][256];
    make_lut(mean, std, lut);
    rgb_to_chw(img->rgb, (size_t)img->w * img->h, lut, out);
}

// ---------------------------------------------------------------- the entry points

int image_prep_decode(const ImagePrep *p, const uint8_t *bytes, size_t n, Image *out, char *err, size_t errlen) {
    ImageDecodeOptions o = {.composite_alpha = p->composite_alpha, .bg = {255, 255, 255}};
    return image_decode_ex(bytes, n, &o, out, err, errlen);
}

// Idefics3 at one tile: longest edge to p->longest_edge, then S x S, uint8 in between. pad: the
// padded square's first resize (L x L, or L x L + 1 for an odd L) without building the square.
static void idefics3_resize(const Image *img, const ImagePrep *p, const uint8_t bg[3], uint8_t *dst) {
    const int S = p->size, pad = p->pad_to_square && img->w != img->h;
    const int side = img->w > img->h ? img->w : img->h;
    int w1, h1;
    if (pad) image_idefics3_resize_size(side, side, p->longest_edge, &w1, &h1);
    else image_idefics3_resize_size(img->w, img->h, p->longest_edge, &w1, &h1);
    Image mid;
    if (pad) {
        mid = (Image){w1, h1, xmalloc((size_t)w1 * h1 * 3)};
        image_pad_resize(img, bg, w1, h1, p->filter, mid.rgb, 0);
    } else {
        image_resize(img, w1, h1, p->filter, &mid);
    }
    image_resize_window(&mid, S, S, 0, 0, S, S, p->filter, dst);
    image_free(&mid);
}

void image_preprocess(const Image *img, const ImagePrep *p, float *out) {
    CHECK(img && img->rgb && img->w > 0 && img->h > 0 && p && p->size > 0, "image_preprocess: bad image %dx%d or size %d",
          img ? img->w : 0, img ? img->h : 0, p ? p->size : 0);
    const int S = p->size;
    uint8_t *px = xmalloc((size_t)S * S * 3);  // the resized S x S image
    // LLaVA: tuple(int(x * 255) for x in image_mean)
    uint8_t bg[3];
    for (int c = 0; c < 3; c++) {
        double v = (double)p->mean[c] * 255.0;
        bg[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : (int)v);
    }
    const int pad = p->pad_to_square && img->w != img->h;
    switch (p->rule) {
    case IMAGE_RESIZE_SHORTEST_CROP:
        if (pad) {  // the square's shortest edge to S is S x S: no crop
            image_pad_resize(img, bg, S, S, p->filter, px, 0);
        } else {
            int64_t rw, rh;
            image_clip_resize_size(img->w, img->h, S, &rw, &rh);
            // centre crop: top = (h - S) // 2, left = (w - S) // 2 (both >= 0 here)
            image_resize_window(img, rw, rh, (rw - S) / 2, (rh - S) / 2, S, S, p->filter, px);
        }
        break;
    case IMAGE_RESIZE_SQUARE:
        if (pad) image_pad_resize(img, bg, S, S, p->filter, px, 0);
        else image_resize_window(img, S, S, 0, 0, S, S, p->filter, px);
        break;
    default:
        idefics3_resize(img, p, bg, px);
        break;
    }
    float lut[3][256];
    make_lut(p->mean, p->std, lut);
    rgb_to_chw(px, (size_t)S * S, lut, out);
    free(px);
}
