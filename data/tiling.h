// tiling.h: dynamic tiling of one image into several tiles of the tower's input size, bit-exact
// with the models' own preprocessing, and the grid an image gets, computed from its size alone
// (./prepare computes it from the image header; the loader cuts the tiles).
//
//   internvl  InternVL / Vintern's dynamic_preprocess (min_num 1, max_num = max_tiles, image_size
//             S, use_thumbnail True) and transformers' GotOcr2ImageProcessorPil crop_to_patches
//             (min_patches 1, max_patches = max_tiles): the grid (cols, rows) with cols * rows <=
//             max_tiles whose aspect cols / rows is closest to w / h, ties going to the later grid
//             in area order while w * h > 0.5 * S * S * cols * rows; Image.resize((S * cols,
//             S * rows), BICUBIC), tiles cut row-major, then, when there is more than one tile,
//             the thumbnail Image.resize((S, S)) of the whole image; each tile through the
//             family's normalisation (build_transform: its Resize(S) of an S x S tile is a copy).
//             The two codes differ only in the order of grids of equal area (the remote code
//             sorts a Python set); scripts/make_tiling_fixtures.py checks that the order never
//             decides for images up to 1200 x 1200 and max_tiles up to 40, so svlm uses the
//             native list (width-major, stably sorted by area).
//   idefics3  Idefics3ImageProcessorPil / SmolVLMImageProcessorPil with do_image_splitting:
//             longest edge to size["longest_edge"] (image_idefics3_resize_size), then
//             resize_for_vision_encoder: the longer side up to a multiple of M =
//             max_image_size["longest_edge"], the other int(that / aspect) also rounded up to a
//             multiple of M; when the result is larger than M x M it is cut into (H / M) x (W / M)
//             tiles row-major plus the global image (the W x H image resized to M x M); LANCZOS
//             every time, uint8 in between. An image that comes out M x M is one tile.
//
// A grid is rows x cols tiles plus a thumbnail (InternVL's thumbnail, Idefics3's global image)
// when rows * cols > 1; 1 x 1 without a thumbnail is the one-tile preprocessing of
// data/image_prep.c, which is also what every other family (and max_tiles = 1) gets.
#pragma once
#include <stdint.h>

#include "data/image_prep.h"

typedef struct {
    int rows, cols;  // tiles of S x S, row-major
    int thumb;       // 1: one more tile after them (thumbnail / global image)
} ImageGrid;

static inline int image_grid_tiles(ImageGrid g) { return g.rows * g.cols + g.thumb; }

// 1 when p (with p->max_tiles > 1) cuts images into tiles: the internvl and idefics3 families
int image_prep_tiles(const ImagePrep *p);

// The grid of a w x h image under p (p->max_tiles; 1 x 1 when not tiling).
ImageGrid image_grid(const ImagePrep *p, int w, int h);

// The most tiles one image can get under p (thumbnail included): InternVL max_tiles + 1;
// Idefics3 ceil(L / M)^2 + 1 with L = longest_edge, M = S. 1 when not tiling.
int image_tiles_max(const ImagePrep *p);

// The most rows (or columns) a grid can have under p: InternVL max_tiles, Idefics3 ceil(L / M); 1
// when not tiling
int image_grid_max_side(const ImagePrep *p);

// InternVL's grid choice (exposed for tests): *cols x *rows of max_tiles at tile size S
void image_internvl_grid(int w, int h, int S, int max_tiles, int *cols, int *rows);
// Idefics3's resize_for_vision_encoder size (exposed for tests): w1 x h1 -> *W x *H, multiples of M
void image_idefics3_split_size(int w1, int h1, int M, int *W, int *H);

// img (decoded by image_prep_decode) -> out (image_grid_tiles(g), 3, S, S): the tiles of grid g
// (which must be image_grid(p, img->w, img->h)) row-major, then the thumbnail. Memory: Idefics3
// holds its two resized images (each at most ~4.6k x 4.6k).
void image_preprocess_tiles(const Image *img, const ImagePrep *p, ImageGrid g, float *out);
