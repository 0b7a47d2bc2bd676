// image_slot.h: the tokens an image becomes in the LLM's input, as a fact of the VLM's format:
// marker tokens around and between its tiles, and the positions whose embeddings are replaced by
// the connector's feature rows (tiles row-major, the thumbnail / global image last, the order both
// InternVL and Idefics3 stack pixel_values in). One tile gives `tokens` feature rows.
//
//   llava     the feature rows alone: tokens x tiles (LLaVA, MobileVLM: one tile)
//   internvl  <img> <IMG_CONTEXT> x (tokens x tiles) </img>  (InternVL's chat code and
//             transformers' InternVLProcessor: the tiles' rows back to back)
//   idefics3  Idefics3Processor / SmolVLMProcessor: per tile of row i, column j (from 1)
//             <fake_token_around_image><row_i_col_j> <image> x tokens, "\n" after each row, then
//             "\n<fake_token_around_image><global-img>" <image> x tokens <fake_token_around_image>;
//             one tile (no splitting): <fake_token_around_image><global-img> <image> x tokens
//             <fake_token_around_image>. The markers are added tokens, so the text between them
//             is tokenised alone: "\n" between rows, "\n\n" after the last row (the tokenizer's
//             own ids for those two strings are used)
//
// The markers are looked up in the tokenizer by their strings (fatal() naming tokenizer.json
// when one is missing). The ids at feature positions are the format's image token (0 for llava):
// the model never looks them up.
#pragma once
#include <stdint.h>

#include "data/tiling.h"
#include "data/tokenizer.h"

typedef enum { IMAGE_FORMAT_LLAVA, IMAGE_FORMAT_INTERNVL, IMAGE_FORMAT_IDEFICS3, N_IMAGE_FORMATS } ImageFormat;

const char *image_format_name(ImageFormat f);  // "llava", "internvl", "idefics3"
int image_format_parse(const char *name);      // -1 when unknown

typedef struct {
    ImageFormat fmt;
    int tokens;     // feature rows per tile
    int max_side;   // idefics3: rows and columns up to which the <row_i_col_j> were looked up
    int img_start, img_end, img_ctx;  // internvl: <img>, </img>, <IMG_CONTEXT>
    int fake, global, image;          // idefics3: <fake_token_around_image>, <global-img>, <image>
    int *row_col;                     // (max_side, max_side): <row_{i+1}_col_{j+1}>
    int nl[8], n_nl, nlnl[8], n_nlnl; // "\n" and "\n\n" as the tokenizer encodes them
} ImageSlot;

// tok: the LLM's tokenizer (tok_path names it in errors; NULL allowed for llava). max_side: the
// most rows or columns a grid can have (idefics3).
void image_slot_init(ImageSlot *s, ImageFormat fmt, int tokens, int max_side, const Tokenizer *tok, const char *tok_path);
void image_slot_free(ImageSlot *s);

// positions the image of grid g takes
int image_slot_len(const ImageSlot *s, ImageGrid g);
// Writes the slot of grid g: ids[len], feat[len] (1: a feature row goes here) and
// tile_start[image_grid_tiles(g)] (each tile's first feature position; a tile's rows are
// consecutive). Returns len. fatal() for a grid over max_side (a caller's bug: CHECK).
int image_slot_expand(const ImageSlot *s, ImageGrid g, int *ids, uint8_t *feat, int *tile_start);

// A sample's text with its images' slots put in: the one composition ./prepare's records (text
// ids + mask, per image its position and grid), the loader and generate's prompts go through.
// ids/mask (n tokens; mask NULL for a prompt) hold no slot; image k's slot goes before ids[pos[k]]
// (pos ascending, each in 0..n) for grid grids[k]. Writes out_ids / out_mask (out_mask may be
// NULL; 0 over every slot: no loss there) of n + the slots' lengths and tile_start (every image's
// tiles in order: the position of each tile's first feature row in out_ids). Returns the length.
int image_slots_insert(const ImageSlot *s, const int *ids, const uint8_t *mask, int n, const int *pos,
                       const ImageGrid *grids, int n_images, int *out_ids, uint8_t *out_mask, int *tile_start);

// The largest image_slot_len over the grids of at most max_tiles tiles (thumbnail included) that
// a tiled image can get: for sizing (max_seq_len checks, plans).
int image_slot_max_len(const ImageSlot *s, int max_tiles);
