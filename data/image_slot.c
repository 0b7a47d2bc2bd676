// image_slot.c: expanding an image's grid into its slot of marker tokens and feature positions
// (see image_slot.h for the formats).
#include "data/image_slot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static const char *NAMES[N_IMAGE_FORMATS] = {"llava", "internvl", "idefics3"};

const char *image_format_name(ImageFormat f) { return (int)f >= 0 && f < N_IMAGE_FORMATS ? NAMES[f] : "unknown"; }

int image_format_parse(const char *name) {
    for (int i = 0; i < N_IMAGE_FORMATS; i++)
        if (name && !strcmp(name, NAMES[i])) return i;
    return -1;
}

static int lookup(const Tokenizer *tok, const char *path, const char *token, ImageFormat fmt) {
    int id = tokenizer_token_id(tok, token);
    if (id < 0)
        fatal("%s: has no token %s, which the %s image format needs (image_format = llava uses no marker tokens)",
              path ? path : "tokenizer.json", token, image_format_name(fmt));
    return id;
}

static int encode_small(const Tokenizer *tok, const char *text, int *out, int cap, const char *path) {
    int *ids, n = tokenizer_encode(tok, text, strlen(text), 0, &ids);
    if (n < 1 || n > cap) fatal("%s: encodes a newline as %d tokens", path ? path : "tokenizer.json", n);
    memcpy(out, ids, (size_t)n * sizeof(int));
    free(ids);
    return n;
}

void image_slot_init(ImageSlot *s, ImageFormat fmt, int tokens, int max_side, const Tokenizer *tok, const char *tok_path) {
    memset(s, 0, sizeof *s);
    CHECK((int)fmt >= 0 && fmt < N_IMAGE_FORMATS && tokens > 0, "image_slot_init: format %d, %d tokens", (int)fmt, tokens);
    s->fmt = fmt;
    s->tokens = tokens;
    if (fmt == IMAGE_FORMAT_INTERNVL) {
        s->img_start = lookup(tok, tok_path, "<img>", fmt);
        s->img_end = lookup(tok, tok_path, "</img>", fmt);
        s->img_ctx = lookup(tok, tok_path, "<IMG_CONTEXT>", fmt);
    } else if (fmt == IMAGE_FORMAT_IDEFICS3) {
        s->fake = lookup(tok, tok_path, "<fake_token_around_image>", fmt);
        s->global = lookup(tok, tok_path, "<global-img>", fmt);
        s->image = lookup(tok, tok_path, "<image>", fmt);
        s->max_side = max_side > 1 ? max_side : 0;
        if (s->max_side) {
            s->row_col = xmalloc((size_t)s->max_side * s->max_side * sizeof(int));
            for (int i = 0; i < s->max_side; i++)
                for (int j = 0; j < s->max_side; j++) {
                    char name[64];
                    snprintf(name, sizeof name, "<row_%d_col_%d>", i + 1, j + 1);
                    s->row_col[i * s->max_side + j] = lookup(tok, tok_path, name, fmt);
                }
            s->n_nl = encode_small(tok, "\n", s->nl, 8, tok_path);
            s->n_nlnl = encode_small(tok, "\n\n", s->nlnl, 8, tok_path);
        }
    }
}

void image_slot_free(ImageSlot *s) {
    free(s->row_col);
    memset(s, 0, sizeof *s);
}

// the writer: ids / feat may be NULL (counting only)
typedef struct {
    int *ids;
    uint8_t *feat;
    int n;
} Out;

static void put(Out *o, int id, int f) {
    if (o->ids) o->ids[o->n] = id;
    if (o->feat) o->feat[o->n] = (uint8_t)f;
    o->n++;
}

static void put_tile(Out *o, const ImageSlot *s, int id, int *tile_start, int t) {
    if (tile_start) tile_start[t] = o->n;
    for (int k = 0; k < s->tokens; k++) put(o, id, 1);
}

static int expand(const ImageSlot *s, ImageGrid g, int *ids, uint8_t *feat, int *tile_start) {
    Out o = {ids, feat, 0};
    const int nt = image_grid_tiles(g);
    CHECK(g.rows >= 1 && g.cols >= 1 && nt >= 1, "image slot: grid %dx%d+%d", g.rows, g.cols, g.thumb);
    switch (s->fmt) {
    case IMAGE_FORMAT_LLAVA:
        for (int t = 0; t < nt; t++) put_tile(&o, s, 0, tile_start, t);
        break;
    case IMAGE_FORMAT_INTERNVL:
        put(&o, s->img_start, 0);
        for (int t = 0; t < nt; t++) put_tile(&o, s, s->img_ctx, tile_start, t);
        put(&o, s->img_end, 0);
        break;
    default:  // IMAGE_FORMAT_IDEFICS3
        if (nt > 1) {
            CHECK(g.rows <= s->max_side && g.cols <= s->max_side, "image slot: grid %dx%d over the %d looked up", g.rows,
                  g.cols, s->max_side);
            for (int r = 0; r < g.rows; r++) {
                for (int c = 0; c < g.cols; c++) {
                    put(&o, s->fake, 0);
                    put(&o, s->row_col[r * s->max_side + c], 0);
                    put_tile(&o, s, s->image, tile_start, r * g.cols + c);
                }
                const int last = r == g.rows - 1;  // "\n" then the global image's "\n": one text "\n\n"
                for (int k = 0; k < (last ? s->n_nlnl : s->n_nl); k++) put(&o, last ? s->nlnl[k] : s->nl[k], 0);
            }
        }
        put(&o, s->fake, 0);
        put(&o, s->global, 0);
        put_tile(&o, s, s->image, tile_start, nt - 1);
        put(&o, s->fake, 0);
        break;
    }
    return o.n;
}

int image_slot_len(const ImageSlot *s, ImageGrid g) { return expand(s, g, NULL, NULL, NULL); }

int image_slot_expand(const ImageSlot *s, ImageGrid g, int *ids, uint8_t *feat, int *tile_start) {
    return expand(s, g, ids, feat, tile_start);
}

int image_slots_insert(const ImageSlot *s, const int *ids, const uint8_t *mask, int n, const int *pos,
                       const ImageGrid *grids, int n_images, int *out_ids, uint8_t *out_mask, int *tile_start) {
    int at = 0, from = 0, tile = 0;
    for (int i = 0; i <= n_images; i++) {
        const int upto = i < n_images ? pos[i] : n;
        CHECK(upto >= from && upto <= n, "image_slots_insert: image %d at %d (after %d, of %d)", i, upto, from, n);
        memcpy(out_ids + at, ids + from, (size_t)(upto - from) * sizeof(int));
        if (out_mask) {
            if (mask) memcpy(out_mask + at, mask + from, (size_t)(upto - from));
            else memset(out_mask + at, 0, (size_t)(upto - from));
        }
        at += upto - from;
        from = upto;
        if (i == n_images) break;
        const int nt = image_grid_tiles(grids[i]);
        const int len = expand(s, grids[i], out_ids + at, NULL, tile_start + tile);
        for (int j = 0; j < nt; j++) tile_start[tile + j] += at;
        if (out_mask) memset(out_mask + at, 0, (size_t)len);
        at += len;
        tile += nt;
    }
    return at;
}

int image_slot_max_len(const ImageSlot *s, int max_tiles) {
    int best = image_slot_len(s, (ImageGrid){1, 1, 0});
    // every grid of rows x cols <= max_tiles - 1 plus a thumbnail (the markers grow with the rows)
    for (int r = 1; r < max_tiles; r++)
        for (int c = 1; r * c <= max_tiles - 1; c++) {
            if (r * c < 2) continue;
            if (s->fmt == IMAGE_FORMAT_IDEFICS3 && (r > s->max_side || c > s->max_side)) continue;
            int n = image_slot_len(s, (ImageGrid){r, c, 1});
            if (n > best) best = n;
        }
    return best;
}
