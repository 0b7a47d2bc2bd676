// tiling.c: InternVL's and Idefics3's dynamic tiling on top of the Pillow-exact resampler (see
// tiling.h for the pipelines reproduced).
#include "data/tiling.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

int image_prep_tiles(const ImagePrep *p) {
    return p->max_tiles > 1 && (p->family == IMAGE_PREP_INTERNVL || p->family == IMAGE_PREP_IDEFICS3);
}

// ---------------------------------------------------------------- grids

void image_internvl_grid(int w, int h, int S, int max_tiles, int *cols, int *rows) {
    // get_all_supported_aspect_ratios(1, max): (c, r) width-major, stably sorted by area, is the
    // same as visiting areas in increasing order and, within one, c increasing
    const double aspect = (double)w / h, area = (double)w * h;
    double best_diff = 1.0 / 0.0;
    int bc = 1, br = 1;
    for (int a = 1; a <= max_tiles; a++)
        for (int c = 1; c <= a; c++) {
            if (a % c) continue;
            int r = a / c;
            double diff = aspect - (double)c / r;
            if (diff < 0) diff = -diff;
            if (diff < best_diff) {
                best_diff = diff;
                bc = c, br = r;
            } else if (diff == best_diff && area > 0.5 * S * S * c * r) {  // Python's int > float: exact here
                bc = c, br = r;
            }
        }
    *cols = bc;
    *rows = br;
}

static int ceil_mult(int v, int m) { return (v + m - 1) / m * m; }

void image_idefics3_split_size(int w1, int h1, int M, int *W, int *H) {
    // resize_for_vision_encoder: math.ceil(x / M) * M of a positive int is the integer ceiling
    const double ar = (double)w1 / h1;
    if (w1 >= h1) {
        *W = ceil_mult(w1, M);
        *H = ceil_mult((int)(*W / ar), M);
    } else {
        *H = ceil_mult(h1, M);
        *W = ceil_mult((int)(*H * ar), M);
    }
    // int(x / aspect) is at least the shorter side, so never 0 in practice; a 0 would make the
    // processor fail, svlm keeps one tile's size instead
    if (*W < M) *W = M;
    if (*H < M) *H = M;
}

ImageGrid image_grid(const ImagePrep *p, int w, int h) {
    ImageGrid g = {1, 1, 0};
    if (!image_prep_tiles(p)) return g;
    CHECK(w > 0 && h > 0, "image_grid: image %dx%d", w, h);
    if (p->family == IMAGE_PREP_INTERNVL) {
        image_internvl_grid(w, h, p->size, p->max_tiles, &g.cols, &g.rows);
    } else {
        int w1, h1, W, H;
        image_idefics3_resize_size(w, h, p->longest_edge, &w1, &h1);
        image_idefics3_split_size(w1, h1, p->size, &W, &H);
        g.cols = W / p->size;
        g.rows = H / p->size;
    }
    g.thumb = g.rows * g.cols > 1;
    return g;
}

int image_grid_max_side(const ImagePrep *p) {
    if (!image_prep_tiles(p)) return 1;
    if (p->family == IMAGE_PREP_INTERNVL) return p->max_tiles;
    int L = p->longest_edge < 4096 ? p->longest_edge : 4096;
    return (L + p->size - 1) / p->size;
}

int image_tiles_max(const ImagePrep *p) {
    if (!image_prep_tiles(p)) return 1;
    if (p->family == IMAGE_PREP_INTERNVL) return p->max_tiles + 1;
    // the longer side becomes at most longest_edge (capped at 4096), rounded up to a multiple
    // of M; the shorter side's multiple is at most the longer one's
    int L = p->longest_edge < 4096 ? p->longest_edge : 4096, n = (L + p->size - 1) / p->size;
    return n * n + 1;
}

// ---------------------------------------------------------------- pixels

static void tile_to_chw(const uint8_t *rgb, size_t npix, const ImagePrep *p, float *out) {
    Image t = {(int)npix, 1, (uint8_t *)rgb};  // one row: the normalisation is per pixel
    image_normalize_chw(&t, p->mean, p->std, out);
}

// the S x S window at (x0, y0) of the w x h RGB image src, into dst
static void crop(const Image *src, int x0, int y0, int S, uint8_t *dst) {
    for (int y = 0; y < S; y++) memcpy(dst + (size_t)y * S * 3, src->rgb + ((size_t)(y0 + y) * src->w + x0) * 3, (size_t)S * 3);
}

void image_preprocess_tiles(const Image *img, const ImagePrep *p, ImageGrid g, float *out) {
    CHECK(img && img->rgb && img->w > 0 && img->h > 0 && p->size > 0, "image_preprocess_tiles: bad image");
    const int S = p->size;
    const size_t per = (size_t)3 * S * S;
    if (image_grid_tiles(g) == 1) {  // one tile: the family's own pipeline
        image_preprocess(img, p, out);
        return;
    }
    CHECK(!p->pad_to_square, "image_preprocess_tiles: pad_to_square with tiling");
    uint8_t *px = xmalloc((size_t)S * S * 3);
    if (p->family == IMAGE_PREP_INTERNVL) {
        // each tile is the window of the (S * cols) x (S * rows) resize, as its crop would be
        for (int r = 0; r < g.rows; r++)
            for (int c = 0; c < g.cols; c++) {
                image_resize_window(img, (int64_t)S * g.cols, (int64_t)S * g.rows, (int64_t)c * S, (int64_t)r * S, S, S,
                                    p->filter, px);
                tile_to_chw(px, (size_t)S * S, p, out + (size_t)(r * g.cols + c) * per);
            }
        if (g.thumb) {
            image_resize_window(img, S, S, 0, 0, S, S, p->filter, px);
            tile_to_chw(px, (size_t)S * S, p, out + (size_t)g.rows * g.cols * per);
        }
    } else {
        int w1, h1;
        image_idefics3_resize_size(img->w, img->h, p->longest_edge, &w1, &h1);
        Image mid, big;
        image_resize(img, w1, h1, p->filter, &mid);
        image_resize(&mid, g.cols * S, g.rows * S, p->filter, &big);
        image_free(&mid);
        for (int r = 0; r < g.rows; r++)
            for (int c = 0; c < g.cols; c++) {
                crop(&big, c * S, r * S, S, px);
                tile_to_chw(px, (size_t)S * S, p, out + (size_t)(r * g.cols + c) * per);
            }
        if (g.thumb) {
            image_resize_window(&big, S, S, 0, 0, S, S, p->filter, px);
            tile_to_chw(px, (size_t)S * S, p, out + (size_t)g.rows * g.cols * per);
        }
        image_free(&big);
    }
    free(px);
}
