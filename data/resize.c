// resize.c: Pillow-exact bicubic resampling and CLIP / LLaVA preprocessing (see image.h).
//
// The resampler reproduces Pillow's ImagingResample (libImaging/Resample.c) for 8-bit images:
// separable convolution in two passes (horizontal first, unless the height shrinks by more than
// twice as many pixels as the width: Pillow 13's rule, see resize_window); bicubic kernel a = -0.5, support 2
// widened by the downscale factor; per-output-pixel coefficients computed in double, normalised
// to sum 1, converted to fixed point with 22 fractional bits (PRECISION_BITS = 32 - 8 - 2),
// accumulated in int32 from 1 << 21 (rounding), and clipped to uint8 after each pass. Every
// step is done in the same order with the same types, so the output is bit-identical.
// Only the part of the resized image that survives the centre crop is computed: each output
// pixel depends only on the input and its own coefficients, so this changes no value.
#include "data/image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define PRECISION_BITS (32 - 8 - 2)

// no FMA contraction where Pillow's doubles are reproduced: an FMA would change them, and so
// possibly a rounded coefficient, when built with a -march that has FMA (gcc contracts by default)
#if defined(__GNUC__) && !defined(__clang__)
#define NO_FMA __attribute__((optimize("fp-contract=off")))
#else
#define NO_FMA
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF  // clang contracts within an expression by default
#endif
#endif

// Pillow's bicubic_filter, same expression order (a = -0.5)
NO_FMA static inline double bicubic_filter(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * -0.5;
    return 0.0;
}

typedef struct {
    int ksize;      // coefficients per output pixel (Pillow's ksize)
    int *bounds;    // per output pixel of the window: first input index, number of taps
    int32_t *kk;    // fixed-point coefficients, ksize per output pixel of the window
} Coeffs;

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for outputs [o0, o0 + n) of an
// in_size -> out_size resize (box 0..in_size).
NO_FMA static void coeffs_make(int in_size, int out_size, int o0, int n, Coeffs *c) {
    const float in0 = 0.0f, in1 = (float)in_size;
    double scale, filterscale;
    filterscale = scale = (double)(in1 - in0) / out_size;
    if (filterscale < 1.0) filterscale = 1.0;
    const double support = 2.0 * filterscale;
    const int ksize = (int)ceil(support) * 2 + 1;
    c->ksize = ksize;
    c->bounds = xmalloc(sizeof(int) * 2 * (size_t)n);
    c->kk = xmalloc(sizeof(int32_t) * (size_t)ksize * n);
    double *k = xmalloc(sizeof(double) * (size_t)ksize);
    for (int i = 0; i < n; i++) {
        const int xx = o0 + i;
        const double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0;
        const double ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        int x;
        for (x = 0; x < xmax; x++) {
            double w = bicubic_filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        int32_t *kq = c->kk + (size_t)i * ksize;
        for (x = 0; x < ksize; x++)
            kq[x] = k[x] < 0 ? (int)(-0.5 + k[x] * (1 << PRECISION_BITS)) : (int)(0.5 + k[x] * (1 << PRECISION_BITS));
        c->bounds[2 * i] = xmin;
        c->bounds[2 * i + 1] = xmax;
    }
    free(k);
}

static void coeffs_free(Coeffs *c) {
    free(c->bounds);
    free(c->kk);
}


// The two passes are written so that the compiler vectorises them (int32 lanes: one per
// channel and row or column); on x86-64 they are also compiled for AVX2 and picked at run
// time, since baseline SSE2 has no 32-bit multiply. Integer arithmetic: every variant gives
// the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SIMD_CLONES
#endif

#define HB 16  // rows per block in the horizontal pass
#define VB 32  // bytes per register block in the vertical pass

static inline uint8_t clip_acc(int32_t a) {
    int32_t s = a >> PRECISION_BITS;
    return (uint8_t)(s < 0 ? 0 : s > 255 ? 255 : s);
}

// Horizontal pass over up to HB rows at once. The rows' pixels in [xfirst, xlast) are first
// transposed into tb (pixel x of row r at ((x - xfirst) * HB + r) * 3), so that each output
// column is a sum over contiguous vectors of HB * 3 lanes. src: pixel 0 is input column xshift.
SIMD_CLONES static void hpass_block(const uint8_t *src, size_t sstride, int nrows, int xshift, int xfirst, int xlast,
                                    const Coeffs *c, int n, uint8_t *dst, size_t dstride, uint8_t *restrict tb) {
    for (int r = 0; r < nrows; r++) {
        const uint8_t *row = src + r * sstride + (size_t)(xfirst - xshift) * 3;
        for (int x = 0; x < xlast - xfirst; x++) {
            uint8_t *t = tb + ((size_t)x * HB + r) * 3;
            t[0] = row[3 * x];
            t[1] = row[3 * x + 1];
            t[2] = row[3 * x + 2];
        }
    }
    const int ksize = c->ksize;
    for (int i = 0; i < n; i++) {
        const int xmin = c->bounds[2 * i] - xfirst, xmax = c->bounds[2 * i + 1];
        const int32_t *k = c->kk + (size_t)i * ksize;
        int32_t acc[HB * 3];
        uint8_t o[HB * 3];
#pragma omp simd
        for (int l = 0; l < HB * 3; l++) acc[l] = 1 << (PRECISION_BITS - 1);
        for (int x = 0; x < xmax; x++) {
            const uint8_t *restrict t = tb + (size_t)(xmin + x) * HB * 3;
            const int32_t kx = k[x];
#pragma omp simd
            for (int l = 0; l < HB * 3; l++) acc[l] += t[l] * kx;
        }
#pragma omp simd
        for (int l = 0; l < HB * 3; l++) o[l] = clip_acc(acc[l]);
        uint8_t *d = dst + 3 * (size_t)i;
        for (int r = 0; r < nrows; r++, d += dstride) {
            d[0] = o[3 * r];
            d[1] = o[3 * r + 1];
            d[2] = o[3 * r + 2];
        }
    }
}

// Horizontal pass of rows [0, nrows) of src (stride sstride) into dst (n pixels a row).
static void hpass(const uint8_t *src, size_t sstride, int nrows, int xshift, const Coeffs *c, int n, uint8_t *dst,
                  size_t dstride) {
    // input columns the outputs use (bounds grow with the output index)
    const int xfirst = c->bounds[0], xlast = c->bounds[2 * (n - 1)] + c->bounds[2 * (n - 1) + 1];
    uint8_t *tb = xcalloc((size_t)(xlast - xfirst) * HB * 3, 1);
    for (int r = 0; r < nrows; r += HB)
        hpass_block(src + r * sstride, sstride, nrows - r < HB ? nrows - r : HB, xshift, xfirst, xlast, c, n,
                    dst + r * dstride, dstride, tb);
    free(tb);
}

// Vertical pass for one output row: taps over rows [ymin, ymin + ymax) of base, len bytes,
// VB bytes at a time with the accumulators kept in registers.
SIMD_CLONES static void vpass_row(const uint8_t *base, size_t stride, int ymin, int ymax, const int32_t *k,
                                  uint8_t *restrict dst, int len) {
    const uint8_t *rows = base + (size_t)ymin * stride;
    int i = 0;
    for (; i + VB <= len; i += VB) {
        int32_t acc[VB];
#pragma omp simd
        for (int l = 0; l < VB; l++) acc[l] = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < ymax; y++) {
            const uint8_t *restrict row = rows + (size_t)y * stride + i;
            const int32_t ky = k[y];
#pragma omp simd
            for (int l = 0; l < VB; l++) acc[l] += row[l] * ky;
        }
#pragma omp simd
        for (int l = 0; l < VB; l++) dst[i + l] = clip_acc(acc[l]);
    }
    for (; i < len; i++) {
        int32_t a = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < ymax; y++) a += rows[(size_t)y * stride + i] * k[y];
        dst[i] = clip_acc(a);
    }
}

// The window [x0, x0 + cw) x [y0, y0 + ch) of src resized to ow x oh, into dst (cw x ch RGB).
// Pass order as Pillow 13's ImagingResampleInner: horizontal first, unless the height shrinks by
// more than twice as many pixels as the width does (Pillow <= 12: always horizontal first).
static void resize_window(const Image *src, int ow, int oh, int x0, int y0, int cw, int ch, uint8_t *dst) {
    const int need_h = ow != src->w, need_v = oh != src->h;
    const int dh = src->h - oh, dw = src->w - ow;
    const int h_first = !(dh > 0 && dh > dw * 2);
    const size_t sstride = (size_t)src->w * 3;
    Coeffs cv = {0}, chz = {0};
    if (need_v) coeffs_make(src->h, oh, y0, ch, &cv);
    if (need_h) coeffs_make(src->w, ow, x0, cw, &chz);
    uint8_t *tmp = NULL;
    if (!need_h && !need_v) {
        for (int i = 0; i < ch; i++) memcpy(dst + (size_t)i * cw * 3, src->rgb + (y0 + i) * sstride + x0 * 3, (size_t)cw * 3);
    } else if (h_first) {
        // source rows the window needs (bounds grow with the output index)
        int yfirst = y0, ylast = y0 + ch;
        if (need_v) {
            yfirst = cv.bounds[0];
            ylast = cv.bounds[2 * (ch - 1)] + cv.bounds[2 * (ch - 1) + 1];
        }
        const uint8_t *t = src->rgb + (size_t)x0 * 3;  // no horizontal pass: the source columns
        size_t tstride = sstride;
        int toff = yfirst;  // index of source row yfirst in t
        if (need_h) {
            uint8_t *out = need_v ? (tmp = xmalloc((size_t)(ylast - yfirst) * cw * 3)) : dst;
            hpass(src->rgb + yfirst * sstride, sstride, ylast - yfirst, 0, &chz, cw, out, (size_t)cw * 3);
            t = out;
            tstride = (size_t)cw * 3;
            toff = 0;
        }
        if (need_v) {
            for (int i = 0; i < ch; i++)
                vpass_row(t, tstride, cv.bounds[2 * i] - yfirst + toff, cv.bounds[2 * i + 1], cv.kk + (size_t)i * cv.ksize,
                          dst + (size_t)i * cw * 3, cw * 3);
        }
    } else {
        // vertical first (need_v is true here), over the source columns the window needs
        int xfirst = x0, xlast = x0 + cw;
        if (need_h) {
            xfirst = chz.bounds[0];
            xlast = chz.bounds[2 * (cw - 1)] + chz.bounds[2 * (cw - 1) + 1];
        }
        const int tw = xlast - xfirst;
        uint8_t *out = need_h ? (tmp = xmalloc((size_t)ch * tw * 3)) : dst;
        for (int i = 0; i < ch; i++)
            vpass_row(src->rgb + (size_t)xfirst * 3, sstride, cv.bounds[2 * i], cv.bounds[2 * i + 1],
                      cv.kk + (size_t)i * cv.ksize, out + (size_t)i * tw * 3, tw * 3);
        if (need_h) hpass(tmp, (size_t)tw * 3, ch, xfirst, &chz, cw, dst, (size_t)cw * 3);
    }
    free(tmp);
    if (need_v) coeffs_free(&cv);
    if (need_h) coeffs_free(&chz);
}

void image_resize_bicubic(const Image *src, int w, int h, Image *dst) {
    CHECK(src && src->rgb && src->w > 0 && src->h > 0 && w > 0 && h > 0, "image_resize_bicubic: bad sizes %dx%d -> %dx%d",
          src ? src->w : 0, src ? src->h : 0, w, h);
    dst->w = w;
    dst->h = h;
    dst->rgb = xmalloc((size_t)w * h * 3);
    resize_window(src, w, h, 0, 0, w, h, dst->rgb);
}

void image_clip_resize_size(int w, int h, int shortest, int *out_w, int *out_h) {
    // transformers: short, long = (w, h) if w <= h else (h, w); new_long = int(size * long / short)
    // (Python true division of integers: correctly rounded, as the double division here)
    int sh = w <= h ? w : h, lo = w <= h ? h : w;
    int new_long = (int)((double)shortest * lo / sh);
    if (w <= h) { *out_w = shortest; *out_h = new_long; }
    else { *out_w = new_long; *out_h = shortest; }
}

void image_expand2square(const Image *img, const uint8_t bg[3], Image *dst) {
    const int s = img->w > img->h ? img->w : img->h;
    // paste at ((s - w) // 2, 0) when taller, (0, (s - h) // 2) when wider
    const int ox = (s - img->w) / 2, oy = (s - img->h) / 2;
    dst->w = dst->h = s;
    dst->rgb = xmalloc((size_t)s * s * 3);
    for (int y = 0; y < s; y++) {
        uint8_t *row = dst->rgb + (size_t)y * s * 3;
        if (y >= oy && y < oy + img->h) {
            for (int x = 0; x < ox; x++) memcpy(row + 3 * x, bg, 3);
            memcpy(row + 3 * (size_t)ox, img->rgb + (size_t)(y - oy) * img->w * 3, (size_t)img->w * 3);
            for (int x = ox + img->w; x < s; x++) memcpy(row + 3 * x, bg, 3);
        } else {
            for (int x = 0; x < s; x++) memcpy(row + 3 * x, bg, 3);
        }
    }
}

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

void image_preprocess_clip(const Image *img, int size, const float mean[3], const float std[3], int pad_to_square,
                           float *out) {
    CHECK(img && img->rgb && img->w > 0 && img->h > 0 && size > 0, "image_preprocess_clip: bad image %dx%d or size %d",
          img ? img->w : 0, img ? img->h : 0, size);
    Image sq = {0};
    const Image *src = img;
    if (pad_to_square && img->w != img->h) {
        // LLaVA: tuple(int(x * 255) for x in image_mean)
        uint8_t bg[3];
        for (int c = 0; c < 3; c++) {
            double v = (double)mean[c] * 255.0;
            bg[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : (int)v);
        }
        image_expand2square(img, bg, &sq);
        src = &sq;
    }
    int rw, rh;
    image_clip_resize_size(src->w, src->h, size, &rw, &rh);
    // centre crop: top = (h - size) // 2, left = (w - size) // 2 (both >= 0 here)
    const int x0 = (rw - size) / 2, y0 = (rh - size) / 2;
    uint8_t *crop = xmalloc((size_t)size * size * 3);
    resize_window(src, rw, rh, x0, y0, size, size, crop);
    float lut[3][256];
    make_lut(mean, std, lut);
    rgb_to_chw(crop, (size_t)size * size, lut, out);
    free(crop);
    image_free(&sq);
}
