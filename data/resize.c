// resize.c: Pillow-exact resampling (box, bilinear, hamming, bicubic, lanczos) of 8-bit RGB
// images, and LLaVA's pad-to-square resize without the square (see image.h).
//
// The resampler reproduces Pillow's ImagingResample (libImaging/Resample.c) for 8-bit images:
// separable convolution in two passes (horizontal first, unless the height shrinks by more than
// twice as many pixels as the width: Pillow 13's rule, see image_resize_window); the filter's
// support widened by the downscale factor; per-output-pixel coefficients computed in double,
// normalised to sum 1, converted to fixed point with 22 fractional bits (PRECISION_BITS =
// 32 - 8 - 2), accumulated in int32 from 1 << 21 (rounding), and clipped to uint8 after each
// pass. Every step is done in the same order with the same types, so the output is bit-identical.
// image_resize_window computes only a window of the resized image (CLIP's centre crop): each
// output pixel depends only on the input and its own coefficients, so this changes no value.
// LLaVA's pad mode resizes its square without building it (image_pad_resize): the background's
// share of each sum is added in one product, integer arithmetic that gives the same bits.
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

// Pillow's filters (libImaging/Resample.c), same expressions and order; support in input pixels
// at scale 1. sin / cos come from the C library Pillow also links (glibc): same values.
NO_FMA static double box_filter(double x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }

NO_FMA static double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

NO_FMA static double hamming_filter(double x) {
    if (x < 0.0) x = -x;
    if (x == 0.0) return 1.0;
    if (x >= 1.0) return 0.0;
    x = x * M_PI;
    return sin(x) / x * (0.54f + 0.46f * cos(x));  // float constants, as Pillow writes them
}

// a = -0.5
NO_FMA static double bicubic_filter(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * -0.5;
    return 0.0;
}

NO_FMA static double sinc_filter(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

// truncated sinc, support 3
NO_FMA static double lanczos_filter(double x) {
    if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
    return 0.0;
}

typedef struct {
    double (*fn)(double);
    double support;
} Filter;

static Filter filter_of(ImageFilter f) {
    switch (f) {
    case IMAGE_FILTER_BOX: return (Filter){box_filter, 0.5};
    case IMAGE_FILTER_BILINEAR: return (Filter){bilinear_filter, 1.0};
    case IMAGE_FILTER_HAMMING: return (Filter){hamming_filter, 1.0};
    case IMAGE_FILTER_BICUBIC: return (Filter){bicubic_filter, 2.0};
    case IMAGE_FILTER_LANCZOS: return (Filter){lanczos_filter, 3.0};
    default: fatal("image resize: filter %d has no convolution kernel (nearest is not supported)", (int)f);
    }
}

const char *image_filter_name(ImageFilter f) {
    static const char *names[] = {"nearest", "lanczos", "bilinear", "bicubic", "box", "hamming"};
    return (int)f >= 0 && (int)f < 6 ? names[f] : "unknown";
}

typedef struct {
    int ksize;      // coefficients per output pixel (Pillow's ksize); the stride of kk when off is NULL
    int *bounds;    // per output pixel of the window: first input index, number of taps
    int32_t *kk;    // fixed-point coefficients
    size_t *off;    // NULL: output i's taps at kk + i * ksize; else at kk + off[i] (packed tables)
} Coeffs;

static inline const int32_t *coeffs_of(const Coeffs *c, int i) {
    return c->kk + (c->off ? c->off[i] : (size_t)i * c->ksize);
}

// One in_size -> out_size resize (box 0..in_size) as Pillow's precompute_coeffs sets it up.
typedef struct {
    int in_size;
    int64_t out_size;
    double scale, filterscale, support;
    int ksize;
    Filter f;
} Resampler;

NO_FMA static void resampler_init(Resampler *r, int in_size, int64_t out_size, ImageFilter filter) {
    r->f = filter_of(filter);
    const float in0 = 0.0f, in1 = (float)in_size;  // Pillow's box is float
    r->in_size = in_size;
    r->out_size = out_size;
    r->filterscale = r->scale = (double)(in1 - in0) / (double)out_size;
    if (r->filterscale < 1.0) r->filterscale = 1.0;
    r->support = r->f.support * r->filterscale;
    r->ksize = (int)ceil(r->support) * 2 + 1;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for output xx: the window's first input
// index in *xmin, its fixed-point coefficients in kq (ksize of them, zero past the window),
// k a scratch of ksize doubles. Returns the number of taps (Pillow's xmax).
NO_FMA static int coeff_one(const Resampler *r, int64_t xx, double *k, int32_t *kq, int *xmin_out) {
    const float in0 = 0.0f;
    const double center = in0 + ((double)xx + 0.5) * r->scale;
    double ww = 0.0;
    const double ss = 1.0 / r->filterscale;
    int xmin = (int)(center - r->support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + r->support + 0.5);
    if (xmax > r->in_size) xmax = r->in_size;
    xmax -= xmin;
    int x;
    for (x = 0; x < xmax; x++) {
        double w = r->f.fn((x + xmin - center + 0.5) * ss);
        k[x] = w;
        ww += w;
    }
    for (x = 0; x < xmax; x++)
        if (ww != 0.0) k[x] /= ww;
    for (; x < r->ksize; x++) k[x] = 0;
    for (x = 0; x < r->ksize; x++)
        kq[x] = k[x] < 0 ? (int)(-0.5 + k[x] * (1 << PRECISION_BITS)) : (int)(0.5 + k[x] * (1 << PRECISION_BITS));
    *xmin_out = xmin;
    return xmax;
}

// The coefficients of outputs [o0, o0 + n), ksize per output.
static void coeffs_make(const Resampler *r, int64_t o0, int n, Coeffs *c) {
    c->ksize = r->ksize;
    c->off = NULL;
    c->bounds = xmalloc(sizeof(int) * 2 * (size_t)n);
    c->kk = xmalloc(sizeof(int32_t) * (size_t)r->ksize * n);
    double *k = xmalloc(sizeof(double) * (size_t)r->ksize);
    for (int i = 0; i < n; i++)
        c->bounds[2 * i + 1] = coeff_one(r, o0 + i, k, c->kk + (size_t)i * r->ksize, &c->bounds[2 * i]);
    free(k);
}

// The coefficients of all outputs restricted to the input band [a, b): per output the taps inside
// the band (bounds clipped to it, packed: memory ~ the band's taps, not the window's), ksum[i] the
// sum of all its taps and kbg[i] the sum of those outside the band. The window of every output is
// computed tap by tap (Pillow normalises each over all of them).
static void coeffs_band(const Resampler *r, int a, int b, Coeffs *c, int32_t *ksum, int32_t *kbg) {
    const int n = (int)r->out_size;
    c->ksize = 0;
    c->bounds = xmalloc(sizeof(int) * 2 * (size_t)n);
    c->off = xmalloc(sizeof(size_t) * (size_t)n);
    size_t cap = 1024, used = 0;
    c->kk = xmalloc(sizeof(int32_t) * cap);
    double *k = xmalloc(sizeof(double) * (size_t)r->ksize);
    int32_t *kq = xmalloc(sizeof(int32_t) * (size_t)r->ksize);
    for (int i = 0; i < n; i++) {
        int xmin, cnt = coeff_one(r, i, k, kq, &xmin);
        int lo = xmin > a ? xmin : a, hi = xmin + cnt < b ? xmin + cnt : b;
        if (lo > b) lo = b;
        if (hi < lo) hi = lo;
        int32_t all = 0, band = 0;
        for (int x = 0; x < cnt; x++) all += kq[x];
        if (used + (size_t)(hi - lo) > cap) {
            while (used + (size_t)(hi - lo) > cap) cap *= 2;
            c->kk = xrealloc(c->kk, sizeof(int32_t) * cap);
        }
        for (int x = lo; x < hi; x++) band += c->kk[used + (size_t)(x - lo)] = kq[x - xmin];
        c->bounds[2 * i] = lo;
        c->bounds[2 * i + 1] = hi - lo;
        c->off[i] = used;
        used += (size_t)(hi - lo);
        if (hi - lo > c->ksize) c->ksize = hi - lo;
        ksum[i] = all;
        kbg[i] = all - band;
    }
    free(k);
    free(kq);
}

static void coeffs_free(Coeffs *c) {
    free(c->bounds);
    free(c->kk);
    free(c->off);
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
// init: NULL (Pillow's rounding term 1 << 21), or per output column and channel the value the
// sum starts from (the rounding term plus the background taps' share, see pad_resize).
SIMD_CLONES static void hpass_block(const uint8_t *src, size_t sstride, int nrows, int xshift, int xfirst, int xlast,
                                    const Coeffs *c, int n, const int32_t *init, uint8_t *dst, size_t dstride,
                                    uint8_t *restrict tb) {
    for (int r = 0; r < nrows; r++) {
        const uint8_t *row = src + r * sstride + (size_t)(xfirst - xshift) * 3;
        for (int x = 0; x < xlast - xfirst; x++) {
            uint8_t *t = tb + ((size_t)x * HB + r) * 3;
            t[0] = row[3 * x];
            t[1] = row[3 * x + 1];
            t[2] = row[3 * x + 2];
        }
    }
    int32_t start[HB * 3];
    for (int l = 0; l < HB * 3; l++) start[l] = 1 << (PRECISION_BITS - 1);
    for (int i = 0; i < n; i++) {
        const int xmin = c->bounds[2 * i] - xfirst, xmax = c->bounds[2 * i + 1];
        const int32_t *k = coeffs_of(c, i);
        int32_t acc[HB * 3];
        uint8_t o[HB * 3];
        if (init)
            for (int l = 0; l < HB * 3; l++) start[l] = init[3 * i + l % 3];
#pragma omp simd
        for (int l = 0; l < HB * 3; l++) acc[l] = start[l];
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
static void hpass(const uint8_t *src, size_t sstride, int nrows, int xshift, const Coeffs *c, int n, const int32_t *init,
                  uint8_t *dst, size_t dstride) {
    // input columns the outputs use (bounds grow with the output index)
    const int xfirst = c->bounds[0], xlast = c->bounds[2 * (n - 1)] + c->bounds[2 * (n - 1) + 1];
    uint8_t *tb = xcalloc((size_t)(xlast - xfirst) * HB * 3 + 1, 1);
    for (int r = 0; r < nrows; r += HB)
        hpass_block(src + r * sstride, sstride, nrows - r < HB ? nrows - r : HB, xshift, xfirst, xlast, c, n, init,
                    dst + r * dstride, dstride, tb);
    free(tb);
}

// Vertical pass for one output row: taps over rows [ymin, ymin + ymax) of base, len bytes,
// VB bytes at a time with the accumulators kept in registers. init: NULL (1 << 21), or the
// value each of the len sums starts from.
SIMD_CLONES static void vpass_row(const uint8_t *base, size_t stride, int ymin, int ymax, const int32_t *k,
                                  const int32_t *init, uint8_t *restrict dst, int len) {
    const uint8_t *rows = base + (size_t)ymin * stride;
    int i = 0;
    for (; i + VB <= len; i += VB) {
        int32_t acc[VB];
        if (init) {
#pragma omp simd
            for (int l = 0; l < VB; l++) acc[l] = init[i + l];
        } else {
#pragma omp simd
            for (int l = 0; l < VB; l++) acc[l] = 1 << (PRECISION_BITS - 1);
        }
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
        int32_t a = init ? init[i] : 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < ymax; y++) a += rows[(size_t)y * stride + i] * k[y];
        dst[i] = clip_acc(a);
    }
}

// The window [x0, x0 + cw) x [y0, y0 + ch) of src resized to ow x oh, into dst (cw x ch RGB).
// Pass order as Pillow 13's ImagingResampleInner: horizontal first, unless the height shrinks by
// more than twice as many pixels as the width does (Pillow <= 12: always horizontal first).
// ow, oh, x0, y0 are 64-bit: a very thin image's resized long side may pass INT_MAX.
void image_resize_window(const Image *src, int64_t ow, int64_t oh, int64_t x0, int64_t y0, int cw, int ch,
                         ImageFilter filter, uint8_t *dst) {
    CHECK(src && src->rgb && src->w > 0 && src->h > 0 && ow > 0 && oh > 0 && cw > 0 && ch > 0 && x0 >= 0 && y0 >= 0 &&
              x0 + cw <= ow && y0 + ch <= oh,
          "image_resize_window: bad window %dx%d at (%lld, %lld) of %lldx%lld", cw, ch, (long long)x0, (long long)y0,
          (long long)ow, (long long)oh);
    const int need_h = ow != src->w, need_v = oh != src->h;
    const int64_t dh = src->h - oh, dw = src->w - ow;
    const int h_first = !(dh > 0 && dh > dw * 2);
    const size_t sstride = (size_t)src->w * 3;
    Coeffs cv = {0}, chz = {0};
    Resampler rv, rh;
    if (need_v) {
        resampler_init(&rv, src->h, oh, filter);
        coeffs_make(&rv, y0, ch, &cv);
    }
    if (need_h) {
        resampler_init(&rh, src->w, ow, filter);
        coeffs_make(&rh, x0, cw, &chz);
    }
    uint8_t *tmp = NULL;
    if (!need_h && !need_v) {
        for (int i = 0; i < ch; i++)
            memcpy(dst + (size_t)i * cw * 3, src->rgb + (size_t)(y0 + i) * sstride + (size_t)x0 * 3, (size_t)cw * 3);
    } else if (h_first) {
        // source rows the window needs (bounds grow with the output index)
        int yfirst = (int)y0, ylast = (int)y0 + ch;  // no vertical pass: y0 + ch <= src->h
        if (need_v) {
            yfirst = cv.bounds[0];
            ylast = cv.bounds[2 * (ch - 1)] + cv.bounds[2 * (ch - 1) + 1];
        }
        const uint8_t *t = src->rgb + (need_h ? 0 : (size_t)x0 * 3);  // no horizontal pass: the source columns
        size_t tstride = sstride;
        int toff = yfirst;  // index of source row yfirst in t
        if (need_h) {
            uint8_t *out = need_v ? (tmp = xmalloc((size_t)(ylast - yfirst) * cw * 3)) : dst;
            hpass(src->rgb + yfirst * sstride, sstride, ylast - yfirst, 0, &chz, cw, NULL, out, (size_t)cw * 3);
            t = out;
            tstride = (size_t)cw * 3;
            toff = 0;
        }
        if (need_v) {
            for (int i = 0; i < ch; i++)
                vpass_row(t, tstride, cv.bounds[2 * i] - yfirst + toff, cv.bounds[2 * i + 1], coeffs_of(&cv, i), NULL,
                          dst + (size_t)i * cw * 3, cw * 3);
        }
    } else {
        // vertical first (need_v is true here), over the source columns the window needs
        int xfirst = (int)x0, xlast = (int)x0 + cw;  // no horizontal pass: x0 + cw <= src->w
        if (need_h) {
            xfirst = chz.bounds[0];
            xlast = chz.bounds[2 * (cw - 1)] + chz.bounds[2 * (cw - 1) + 1];
        }
        const int tw = xlast - xfirst;
        uint8_t *out = need_h ? (tmp = xmalloc((size_t)ch * tw * 3)) : dst;
        for (int i = 0; i < ch; i++)
            vpass_row(src->rgb + (size_t)xfirst * 3, sstride, cv.bounds[2 * i], cv.bounds[2 * i + 1], coeffs_of(&cv, i), NULL,
                      out + (size_t)i * tw * 3, tw * 3);
        if (need_h) hpass(tmp, (size_t)tw * 3, ch, xfirst, &chz, cw, NULL, dst, (size_t)cw * 3);
    }
    free(tmp);
    if (need_v) coeffs_free(&cv);
    if (need_h) coeffs_free(&chz);
}

// the sum of each output's fixed-point taps, outputs [0, r->out_size)
static void coeffs_sums(const Resampler *r, int32_t *ksum) {
    double *k = xmalloc(sizeof(double) * (size_t)r->ksize);
    int32_t *kq = xmalloc(sizeof(int32_t) * (size_t)r->ksize);
    for (int64_t i = 0; i < r->out_size; i++) {
        int xmin, cnt = coeff_one(r, i, k, kq, &xmin);
        int32_t all = 0;
        for (int x = 0; x < cnt; x++) all += kq[x];
        ksum[i] = all;
    }
    free(k);
    free(kq);
}

// LLaVA's expand2square(img, bg) resized to ow x oh, into dst (oh rows of ow pixels), without
// building the square. The square (side s) is resized horizontally by an s -> ow resampler and
// vertically by an s -> oh one, horizontal pass first: Pillow 13's order unless the height
// shrinks by more than twice as much as the width (checked: the callers' sizes never do; Pillow
// <= 12 always went horizontal first).
// The image covers input band [q, q + m0) of the short direction and the whole long one; the
// rest is background, constant. A background pixel's share of a sum is bg * its coefficient,
// so the background taps of an output add bg * kbg (kbg: the sum of their fixed-point
// coefficients) to the start value: integer sums, exactly what Pillow's tap-by-tap loop gives
// (no partial sum comes near int32's range). Hence, with ksum the sum of all of an output's taps:
//   - a background row's first pass is hbg[j] = clip(2^21 + bg * ksum_h[j]), one row for all;
//   - wide (w >= h): first pass over the h image rows only; an output row's background rows
//     enter through 2^21 + hbg * kbg_v[i];
//   - tall: the first pass gives hbg[j] in every row for the columns whose window misses the
//     image ("pure" columns), so those outputs are clip(2^21 + hbg[j] * ksum_v[i]); the others
//     are computed from the image columns with 2^21 + bg * kbg_h[j] as start value.
// Memory: the short direction's band coefficients (~5 per image pixel of a line) and chunks of
// bounded size (chunk_bytes of first-pass rows, chunk_bytes / 32 of the long direction's
// coefficients), whatever the aspect ratio (a 1 x 10^8 image pads to a 10^8-sided square).
static void pad_resize(const Image *img, const uint8_t bg[3], int ow, int oh, ImageFilter filter, uint8_t *dst,
                       size_t chunk_bytes) {
    if (chunk_bytes == 0) chunk_bytes = (size_t)32 << 20;
    const double rows_budget = (double)chunk_bytes;
    const int coef_budget = chunk_bytes / 32 > (1u << 30) ? 1 << 30 : (int)(chunk_bytes / 32);
    const int w = img->w, h = img->h, wide = w >= h;
    const int s = wide ? w : h;
    const int ox = (s - w) / 2, oy = (s - h) / 2;  // paste offset, as image_expand2square
    const int64_t dh = (int64_t)s - oh, dw = (int64_t)s - ow;
    CHECK(!(dh > 0 && dh > dw * 2), "image_pad_resize: %d -> %dx%d would resize vertically first", s, ow, oh);
    const size_t rowb = (size_t)ow * 3;
    if (s == ow && s == oh) {  // no resampling: the square itself
        for (int y = 0; y < oh; y++) {
            uint8_t *row = dst + (size_t)y * rowb;
            for (int x = 0; x < ow; x++) memcpy(row + 3 * x, bg, 3);
            if (y >= oy && y < oy + h) memcpy(row + 3 * (size_t)ox, img->rgb + (size_t)(y - oy) * w * 3, (size_t)w * 3);
        }
        return;
    }
    Resampler Rh, Rv;
    resampler_init(&Rh, s, ow, filter);
    resampler_init(&Rv, s, oh, filter);
    const Resampler *Rs = wide ? &Rv : &Rh, *Rl = wide ? &Rh : &Rv;  // short and long direction
    const int q = wide ? oy : ox, m0 = wide ? h : w;  // the short direction's image band
    const int ns = wide ? oh : ow;                    // outputs of the short direction
    int32_t *ksum_s = xmalloc(sizeof(int32_t) * (size_t)ns), *kbg = xmalloc(sizeof(int32_t) * (size_t)ns);
    Coeffs sb;  // short direction, band taps only
    coeffs_band(Rs, q, q + m0, &sb, ksum_s, kbg);
    int32_t *ksum_h = ksum_s;  // the horizontal taps' sums: the band's already when tall
    if (wide) {
        ksum_h = xmalloc(sizeof(int32_t) * (size_t)ow);
        coeffs_sums(&Rh, ksum_h);
    }
    int32_t *hbg = xmalloc(sizeof(int32_t) * rowb);  // first pass of a background row
    for (int j = 0; j < ow; j++)
        for (int c = 0; c < 3; c++) hbg[3 * j + c] = clip_acc((1 << (PRECISION_BITS - 1)) + bg[c] * ksum_h[j]);
    int32_t *init = xmalloc(sizeof(int32_t) * rowb);
    if (wide) {
        // first pass: the image rows, all columns (long direction: its coefficients in chunks)
        uint8_t *H = xmalloc((size_t)h * rowb);
        int nc = coef_budget / Rl->ksize;
        nc = nc < 1 ? 1 : nc > ow ? ow : nc;
        for (int j0 = 0; j0 < ow; j0 += nc) {
            int n = ow - j0 < nc ? ow - j0 : nc;
            Coeffs hc;
            coeffs_make(Rl, j0, n, &hc);
            hpass(img->rgb, (size_t)w * 3, h, 0, &hc, n, NULL, H + (size_t)j0 * 3, rowb);
            coeffs_free(&hc);
        }
        // second pass: the image rows' taps, the background rows' share in the start value
        for (int i = 0; i < oh; i++) {
            for (size_t l = 0; l < rowb; l++) init[l] = (1 << (PRECISION_BITS - 1)) + hbg[l] * kbg[i];
            vpass_row(H, rowb, sb.bounds[2 * i] - oy, sb.bounds[2 * i + 1], coeffs_of(&sb, i), init, dst + (size_t)i * rowb,
                      (int)rowb);
        }
        free(H);
        free(ksum_h);
    } else {
        // columns [jl, jh) have image columns in their window, the others are pure background
        int jl = 0, jh = ow;
        while (jl < ow && sb.bounds[2 * jl + 1] == 0) jl++;
        while (jh > jl && sb.bounds[2 * (jh - 1) + 1] == 0) jh--;
        const int m = jh - jl;
        Coeffs view = {sb.ksize, sb.bounds + 2 * jl, sb.kk, sb.off + jl};
        for (int j = jl; j < jh; j++)
            for (int c = 0; c < 3; c++) init[3 * (j - jl) + c] = (1 << (PRECISION_BITS - 1)) + bg[c] * kbg[j];
        // output rows in chunks: the long direction's coefficients and the first-pass rows they
        // need (about n * scale + ksize of them) stay within the budgets
        int n_max = coef_budget / Rl->ksize;
        double per_row = Rl->scale > 1 ? Rl->scale : 1;
        double fit = (rows_budget / ((double)(m > 0 ? m : 1) * 3) - Rl->ksize) / per_row;
        if (fit < n_max) n_max = fit < 1 ? 1 : (int)fit;
        if (n_max < 1) n_max = 1;
        if (n_max > oh) n_max = oh;
        uint8_t *H = NULL;
        size_t hcap = 0;
        for (int i0 = 0; i0 < oh; i0 += n_max) {
            int n = oh - i0 < n_max ? oh - i0 : n_max;
            Coeffs vc;
            coeffs_make(Rl, i0, n, &vc);
            const int ya = vc.bounds[0], yb = vc.bounds[2 * (n - 1)] + vc.bounds[2 * (n - 1) + 1];
            size_t need = (size_t)(yb - ya) * m * 3;
            if (m > 0) {
                if (need > hcap) {
                    free(H);
                    H = xmalloc(need);
                    hcap = need;
                }
                hpass(img->rgb + (size_t)ya * w * 3, (size_t)w * 3, yb - ya, ox, &view, m, init, H, (size_t)m * 3);
            }
            for (int i = 0; i < n; i++) {
                uint8_t *row = dst + (size_t)(i0 + i) * rowb;
                const int32_t *kv = coeffs_of(&vc, i);  // output row i0 + i: every tap is an image row
                int32_t kvsum = 0;
                for (int y = 0; y < vc.bounds[2 * i + 1]; y++) kvsum += kv[y];
                for (int j = 0; j < ow; j++) {
                    if (j == jl && m > 0) {
                        j = jh - 1;
                        continue;
                    }
                    for (int c = 0; c < 3; c++) row[3 * j + c] = clip_acc((1 << (PRECISION_BITS - 1)) + hbg[3 * j + c] * kvsum);
                }
                if (m > 0)
                    vpass_row(H, (size_t)m * 3, vc.bounds[2 * i] - ya, vc.bounds[2 * i + 1], kv, NULL, row + (size_t)jl * 3,
                              m * 3);
            }
            coeffs_free(&vc);
        }
        free(H);
    }
    free(init);
    free(hbg);
    free(ksum_s);
    free(kbg);
    coeffs_free(&sb);
}

void image_pad_resize(const Image *img, const uint8_t bg[3], int ow, int oh, ImageFilter filter, uint8_t *dst,
                      size_t chunk_bytes) {
    CHECK(img && img->rgb && img->w > 0 && img->h > 0 && ow > 0 && oh > 0, "image_pad_resize: bad image %dx%d or size %dx%d",
          img ? img->w : 0, img ? img->h : 0, ow, oh);
    pad_resize(img, bg, ow, oh, filter, dst, chunk_bytes);
}

void image_resize(const Image *src, int w, int h, ImageFilter filter, Image *dst) {
    CHECK(src && src->rgb && src->w > 0 && src->h > 0 && w > 0 && h > 0, "image_resize: bad sizes %dx%d -> %dx%d",
          src ? src->w : 0, src ? src->h : 0, w, h);
    dst->w = w;
    dst->h = h;
    dst->rgb = xmalloc((size_t)w * h * 3);
    image_resize_window(src, w, h, 0, 0, w, h, filter, dst->rgb);
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
