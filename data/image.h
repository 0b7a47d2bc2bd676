// image.h: decoding PNG and JPEG from memory into 8-bit RGB, and resampling it exactly as Pillow
// does. The vision towers' preprocessing built on these is data/image_prep.h.
//
// Decoding follows Pillow's convert("RGB") by default:
//   - alpha is dropped, not composited (RGBA, grey+alpha, palette tRNS, grey/RGB tRNS);
//   - 16-bit RGB / RGBA / grey+alpha samples keep their high byte; 16-bit grey is clipped
//     (v > 255 -> 255), as Pillow's I;16 -> RGB conversion does;
//   - 1/2/4-bit grey is scaled to 8 bits (x255, x85, x17); out-of-range palette indices are black;
//   - gamma, sRGB, iCCP and EXIF orientation are ignored (convert() applies none of them);
//   - JPEG: libjpeg-turbo default decode (islow IDCT, fancy upsampling), so pixels equal Pillow's;
//     4-component JPEGs are read as Adobe (inverted) CMYK / YCCK and converted with Pillow's
//     integer CMYK -> RGB formula.
// Optionally (ImageDecodeOptions.composite_alpha) transparency is composited onto a background
// colour with Pillow's alpha_composite arithmetic: this is what transformers 5.x's
// convert_to_rgb does (onto white) when an image with alpha reaches the processor directly.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int w, h;
    uint8_t *rgb;  // h rows of w pixels, 3 bytes each (R, G, B), no padding
} Image;

// image_decode return codes (0 is success); err always holds a short reason on failure
enum {
    IMAGE_ERR_FORMAT = -1,       // empty input or not a PNG/JPEG (the reason names what it looks like)
    IMAGE_ERR_CORRUPT = -2,      // libpng / libjpeg rejected the data
    IMAGE_ERR_TRUNCATED = -3,    // the data ends before the image does
    IMAGE_ERR_TOO_LARGE = -4,    // dimensions over the configured limits (checked before allocating)
    IMAGE_ERR_UNSUPPORTED = -5,  // valid but unsupported (GIF, WebP, BMP, 12-bit JPEG, ...)
    IMAGE_ERR_NOMEM = -6,        // allocation failed
};

// Pillow's Image.open: above Image.MAX_IMAGE_PIXELS (89,478,485) pixels it only warns, above twice
// that it raises DecompressionBombError. The default refuses what Pillow refuses and nothing else.
#define IMAGE_MAX_PIXELS_DEFAULT (2 * 89478485LL)

// Limits are checked from the header, before anything proportional to the image is allocated.
typedef struct {
    int64_t max_pixels;   // w * h above this is rejected; 0 = IMAGE_MAX_PIXELS_DEFAULT
    int max_side;         // w or h above this is rejected; 0 = no side limit (Pillow has none)
    int composite_alpha;  // 0: drop alpha (Pillow convert("RGB"), LLaVA); 1: composite onto bg
    uint8_t bg[3];        // background for composite_alpha (transformers uses 255, 255, 255)
} ImageDecodeOptions;

// Decodes a PNG or JPEG held in memory (format from the magic bytes) with default options.
// Returns 0 and fills *out (free with image_free), or a negative IMAGE_ERR_* code with a short
// reason in err (out is then {0, 0, NULL}). Never exits, never prints.
int image_decode(const uint8_t *bytes, size_t n, Image *out, char *err, size_t errlen);
int image_decode_ex(const uint8_t *bytes, size_t n, const ImageDecodeOptions *opt, Image *out,
                    char *err, size_t errlen);
void image_free(Image *img);

// Writes rgb (h rows of w RGB pixels) as a baseline JPEG with libjpeg's defaults at `quality`;
// full_chroma keeps colour at full resolution (4:4:4) instead of 4:2:0. fatal() naming path on
// any failure (synthetic data and benchmarks write images; training only reads them).
void image_write_jpeg(const char *path, const uint8_t *rgb, int w, int h, int quality, int full_chroma);

// ---- resampling (data/resize.c) ----

// Pillow's resampling filters, numbered as PIL.Image.Resampling (preprocessor_config.json's
// "resample"). NEAREST is listed for its number only: it is not a convolution and image_resize
// refuses it.
typedef enum {
    IMAGE_FILTER_NEAREST = 0,
    IMAGE_FILTER_LANCZOS = 1,
    IMAGE_FILTER_BILINEAR = 2,
    IMAGE_FILTER_BICUBIC = 3,
    IMAGE_FILTER_BOX = 4,
    IMAGE_FILTER_HAMMING = 5,
} ImageFilter;

const char *image_filter_name(ImageFilter f);  // "bicubic", ...; "unknown" out of range

// Resizes as Pillow's Image.resize((w, h), filter) (no box, no reducing_gap): bit-exact with
// Pillow 13's 8-bit output. Pillow 13 runs the vertical pass first when the height shrinks by
// more than twice as many pixels as the width, Pillow <= 12 always ran the horizontal pass
// first: for those sizes the two versions differ by a few levels, and svlm follows 13. dst is
// allocated (image_free); w, h >= 1.
void image_resize(const Image *src, int w, int h, ImageFilter filter, Image *dst);

// The window [x0, x0 + cw) x [y0, y0 + ch) of src resized to ow x oh, into dst (ch rows of cw RGB
// pixels): the same bytes as that crop of image_resize's output, computing only the window.
// ow, oh, x0, y0 are 64-bit: a very thin image's resized long side may pass INT_MAX.
void image_resize_window(const Image *src, int64_t ow, int64_t oh, int64_t x0, int64_t y0, int cw, int ch,
                         ImageFilter filter, uint8_t *dst);

// image_expand2square(img, bg) resized to ow x oh with filter, as image_resize of the square
// would (bit-exact), into dst (oh * ow * 3 bytes), without building the square: memory stays
// bounded for any aspect ratio. The height may not shrink by more than twice as much as the width
// (CHECK; Pillow would resize vertically first). chunk_bytes: scratch per chunk of work (0:
// 32 MB; a smaller value only cuts the work into more chunks, same output).
void image_pad_resize(const Image *img, const uint8_t bg[3], int ow, int oh, ImageFilter filter, uint8_t *dst,
                      size_t chunk_bytes);

// LLaVA's expand2square: a new max(w, h) square filled with bg, img pasted centred at
// ((s - w) // 2, (s - h) // 2). dst allocated.
void image_expand2square(const Image *img, const uint8_t bg[3], Image *dst);

#ifdef __cplusplus
}
#endif
