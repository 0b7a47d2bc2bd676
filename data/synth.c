// synth.c: the synthetic dataset, tokenizer and tiny models of synth.h.
#include "data/synth.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <png.h>

#include "common/rng.h"
#include "common/util.h"
#include "data/image.h"
#include "data/tokenizer.h"
#include "model/hf_random.h"

#define S SYNTH_IMAGE_SIZE

const char *const synth_shape_names[SYNTH_N_SHAPES] = {"circle", "square", "triangle", "star", "cross"};
const char *const synth_shape_plurals[SYNTH_N_SHAPES] = {"circles", "squares", "triangles", "stars", "crosses"};
const char *const synth_colour_names[SYNTH_N_COLOURS] = {"red",    "green",  "blue",  "yellow",
                                                         "purple", "orange", "white", "black"};
const uint8_t synth_colour_rgb[SYNTH_N_COLOURS][3] = {
    {220, 40, 40}, {40, 170, 60}, {40, 80, 225}, {240, 215, 40}, {145, 60, 185}, {245, 140, 30}, {245, 245, 245}, {15, 15, 15}};
const char *const synth_position_phrases[SYNTH_N_POSITIONS] = {"on the left", "on the right", "at the top",
                                                               "at the bottom", "in the centre"};
static const char *const COUNT_WORDS[4] = {"no", "one", "two", "three"};

// Every word any synthetic text uses. Punctuation ("." "?" "," "\n") is single bytes already.
static const char *const WORDS[] = {
    // captions
    "a", "an", "one", "two", "three", "no",
    "red", "green", "blue", "yellow", "purple", "orange", "white", "black",
    "circle", "square", "triangle", "star", "cross", "circles", "squares", "triangles", "stars", "crosses",
    "on", "the", "left", "right", "at", "top", "bottom", "in", "centre",
    // questions and answers
    "What", "colour", "is", "are", "How", "many", "there", "Where", "shape", "object", "objects",
    "It", "They", "Describe", "image", "shows", "The", "There",
    // text-only conversations
    "sides", "does", "have", "has", "four", "five", "points", "Is", "Yes", "No", "corners", "Does", "A",
    // chatml: roles and the default system prompt "You are a helpful assistant."
    "system", "user", "assistant", "You", "helpful",
};
#define N_WORDS ((int)(sizeof WORDS / sizeof *WORDS))

const char *const *synth_words(int *n) {
    *n = N_WORDS;
    return WORDS;
}

// ---------------------------------------------------------------------------------------------
// scenes

enum { PURPOSE_SCENE, PURPOSE_CONV, PURPOSE_TEXT };

static void stream(Rng *r, uint64_t seed, int split, int index, int purpose) {
    rng_init(r, seed * 0x9E3779B97F4A7C15ULL ^ ((uint64_t)split << 56) ^ ((uint64_t)purpose << 48) ^ (uint64_t)(uint32_t)index);
}

static uint8_t clamp_u8(int v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

void synth_scene(SynthScene *s, uint64_t seed, int split, int index) {
    Rng r;
    stream(&r, seed, split, index, PURPOSE_SCENE);
    memset(s, 0, sizeof *s);
    s->shape = (int)rng_below(&r, SYNTH_N_SHAPES);
    s->colour = (int)rng_below(&r, SYNTH_N_COLOURS);
    uint32_t u = rng_below(&r, 10);
    s->count = u < 4 ? 1 : u < 7 ? 2 : 3;
    s->position = (int)rng_below(&r, SYNTH_N_POSITIONS);
    int grey = 100 + (int)rng_below(&r, 61);
    for (int c = 0; c < 3; c++) s->bg[c] = clamp_u8(grey + (int)rng_below(&r, 17) - 8);
    for (int c = 0; c < 3; c++) s->rgb[c] = clamp_u8(synth_colour_rgb[s->colour][c] + (int)rng_below(&r, 25) - 12);

    float jx = 4.0f * rng_uniform(&r) - 2.0f, jy = 4.0f * rng_uniform(&r) - 2.0f;
    float u01 = rng_uniform(&r);
    static const float ANCHOR[SYNTH_N_POSITIONS][2] = {{16, 32}, {48, 32}, {32, 16}, {32, 48}, {32, 32}};
    float ax = ANCHOR[s->position][0] + jx, ay = ANCHOR[s->position][1] + jy;
    if (s->count == 1) {
        s->radius = 8.0f + 3.0f * u01;
        s->cx[0] = ax;
        s->cy[0] = ay;
        return;
    }
    s->radius = s->count == 2 ? 7.0f + 1.5f * u01 : 6.0f + 1.0f * u01;
    static const float OFF2[2] = {-12, 12}, OFF3[3] = {-20, 0, 20};
    for (int k = 0; k < s->count; k++) {
        float off = s->count == 2 ? OFF2[k] : OFF3[k];
        switch (s->position) {
        case POS_LEFT:
        case POS_RIGHT: s->cx[k] = ax, s->cy[k] = 32 + jy + off; break;
        case POS_TOP:
        case POS_BOTTOM: s->cx[k] = 32 + jx + off, s->cy[k] = ay; break;
        default:  // centre: side by side, or a triangle
            if (s->count == 2) s->cx[k] = 32 + jx + (k ? 10 : -10), s->cy[k] = ay;
            else {
                static const float TRI[3][2] = {{0, -11}, {-11, 8}, {11, 8}};
                s->cx[k] = ax + TRI[k][0], s->cy[k] = ay + TRI[k][1];
            }
        }
    }
}

int synth_shape_contains(int shape, float dx, float dy, float r) {
    switch (shape) {
    case SHAPE_CIRCLE: return dx * dx + dy * dy <= r * r;
    case SHAPE_SQUARE: return fabsf(dx) <= 0.85f * r && fabsf(dy) <= 0.85f * r;
    case SHAPE_CROSS: {
        float s = 0.95f * r, w = 0.38f * r;
        return (fabsf(dx) <= w && fabsf(dy) <= s) || (fabsf(dy) <= w && fabsf(dx) <= s);
    }
    case SHAPE_TRIANGLE: {  // equilateral, pointing up, circumradius 1.2 r, centred on its centroid
        float R = 1.2f * r;
        if (dy > 0.5f * R) return 0;
        // the two slanted edges: |dx| <= (dy + R) / sqrt(3)
        return fabsf(dx) <= (dy + R) * 0.57735027f;
    }
    default: {  // five-pointed star, outer radius 1.2 r, inner 0.45 of that, a point upwards
        float R = 1.2f * r, vx[10], vy[10];
        for (int i = 0; i < 10; i++) {
            float a = (float)M_PI * (float)i / 5.0f, rr = i % 2 ? 0.45f * R : R;
            vx[i] = rr * sinf(a);
            vy[i] = -rr * cosf(a);
        }
        int in = 0;  // crossing number
        for (int i = 0, j = 9; i < 10; j = i++)
            if ((vy[i] > dy) != (vy[j] > dy) && dx < (vx[j] - vx[i]) * (dy - vy[i]) / (vy[j] - vy[i]) + vx[i]) in = !in;
        return in;
    }
    }
}

void synth_render(const SynthScene *s, uint8_t *rgb) {
    enum { SS = 4 };
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            int hits = 0;
            for (int k = 0; k < s->count; k++) {
                float R = 1.25f * s->radius + 1.0f;  // bounding box of every shape
                if (fabsf(x + 0.5f - s->cx[k]) > R || fabsf(y + 0.5f - s->cy[k]) > R) continue;
                for (int sy = 0; sy < SS; sy++)
                    for (int sx = 0; sx < SS; sx++) {
                        float px = x + (sx + 0.5f) / SS, py = y + (sy + 0.5f) / SS;
                        hits += synth_shape_contains(s->shape, px - s->cx[k], py - s->cy[k], s->radius);
                    }
            }
            uint8_t *p = rgb + 3 * (y * S + x);
            for (int c = 0; c < 3; c++) {
                int v = (s->bg[c] * (SS * SS - hits) + s->rgb[c] * hits + SS * SS / 2) / (SS * SS);
                p[c] = (uint8_t)v;
            }
        }
}

// ---------------------------------------------------------------------------------------------
// texts

static const char *article(int colour) { return colour == COL_ORANGE ? "an" : "a"; }

void synth_caption(const SynthScene *s, char *buf, size_t cap) {
    const char *colour = synth_colour_names[s->colour];
    const char *pos = synth_position_phrases[s->position];
    if (s->count == 1) snprintf(buf, cap, "%s %s %s %s", article(s->colour), colour, synth_shape_names[s->shape], pos);
    else snprintf(buf, cap, "%s %s %s %s", COUNT_WORDS[s->count], colour, synth_shape_plurals[s->shape], pos);
}

#define TEXT_MAX 192
#define MAX_TURNS 4

typedef struct {
    int n;  // turns: human, gpt, human, gpt
    char text[MAX_TURNS][TEXT_MAX + 16];
} Conv;

enum { Q_COLOUR, Q_COUNT, Q_WHERE, Q_SHAPE, Q_DESCRIBE, N_QKINDS };

static int pick_kind(Rng *r) {
    uint32_t u = rng_below(r, 20);  // colour 25%, count 25%, where 20%, shape 15%, describe 15%
    return u < 5 ? Q_COLOUR : u < 10 ? Q_COUNT : u < 14 ? Q_WHERE : u < 17 ? Q_SHAPE : Q_DESCRIBE;
}

static void question(const SynthScene *s, int kind, Rng *r, char *q, char *a) {
    int one = s->count == 1;
    const char *sh = one ? synth_shape_names[s->shape] : synth_shape_plurals[s->shape];
    const char *is = one ? "is" : "are";
    const char *colour = synth_colour_names[s->colour];
    switch (kind) {
    case Q_COLOUR:
        snprintf(q, TEXT_MAX, "What colour %s the %s?", is, sh);
        snprintf(a, TEXT_MAX, "The %s %s %s.", sh, is, colour);
        break;
    case Q_COUNT:
        if (rng_below(r, 4) == 0) {  // a shape that is not there
            int other = (s->shape + 1 + (int)rng_below(r, SYNTH_N_SHAPES - 1)) % SYNTH_N_SHAPES;
            snprintf(q, TEXT_MAX, "How many %s are there?", synth_shape_plurals[other]);
            snprintf(a, TEXT_MAX, "There are no %s.", synth_shape_plurals[other]);
        } else {
            snprintf(q, TEXT_MAX, "How many %s are there?", synth_shape_plurals[s->shape]);
            snprintf(a, TEXT_MAX, "There %s %s %s.", is, COUNT_WORDS[s->count], sh);
        }
        break;
    case Q_WHERE:
        snprintf(q, TEXT_MAX, "Where %s the %s?", is, sh);
        snprintf(a, TEXT_MAX, "The %s %s %s.", sh, is, synth_position_phrases[s->position]);
        break;
    case Q_SHAPE:
        snprintf(q, TEXT_MAX, "What shape %s the %s %s?", is, colour, one ? "object" : "objects");
        if (one) snprintf(a, TEXT_MAX, "It is a %s.", sh);
        else snprintf(a, TEXT_MAX, "They are %s.", sh);
        break;
    default: {
        char cap[128];
        synth_caption(s, cap, sizeof cap);
        snprintf(q, TEXT_MAX, "Describe the image.");
        snprintf(a, TEXT_MAX, "The image shows %s.", cap);
    }
    }
}

// a conversation about an image: one round, or two with different kinds of question
static void image_conversation(const SynthScene *s, Rng *r, Conv *c) {
    int k1 = pick_kind(r);
    char q[TEXT_MAX];
    question(s, k1, r, q, c->text[1]);
    snprintf(c->text[0], sizeof c->text[0], "<image>\n%s", q);
    c->n = 2;
    if (rng_below(r, 10) < 4) {
        int k2;
        do k2 = pick_kind(r);
        while (k2 == k1);
        question(s, k2, r, c->text[2], c->text[3]);
        c->n = 4;
    }
}

static void text_conversation(Rng *r, Conv *c) {
    c->n = 2;
    switch (rng_below(r, 5)) {
    case 0: {
        int sq = (int)rng_below(r, 2);
        snprintf(c->text[0], TEXT_MAX, "How many sides does a %s have?", sq ? "square" : "triangle");
        snprintf(c->text[1], TEXT_MAX, "A %s has %s sides.", sq ? "square" : "triangle", sq ? "four" : "three");
        break;
    }
    case 1:
        snprintf(c->text[0], TEXT_MAX, "How many points does a star have?");
        snprintf(c->text[1], TEXT_MAX, "A star has five points.");
        break;
    case 2: {
        const char *col = synth_colour_names[rng_below(r, SYNTH_N_COLOURS)];
        snprintf(c->text[0], TEXT_MAX, "Is %s a colour?", col);
        snprintf(c->text[1], TEXT_MAX, "Yes, %s is a colour.", col);
        break;
    }
    case 3: {
        const char *sh = synth_shape_names[rng_below(r, SYNTH_N_SHAPES)];
        snprintf(c->text[0], TEXT_MAX, "Is a %s a colour?", sh);
        snprintf(c->text[1], TEXT_MAX, "No, a %s is a shape.", sh);
        break;
    }
    default:
        snprintf(c->text[0], TEXT_MAX, "Does a circle have corners?");
        snprintf(c->text[1], TEXT_MAX, "No, a circle has no corners.");
    }
}

// ---------------------------------------------------------------------------------------------
// tokenizer: byte-level BPE trained on the word list until every word is one token

typedef struct {
    char **tok;  // byte-level strings (GPT-2's byte-to-unicode alphabet), id = index
    int n, cap;
    int (*merge)[2];
    int n_merges;
} Bpe;

static void bytes_to_unicode(int cp[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp[b] = printable ? b : 256 + n++;
    }
}

static int utf8_put(char *out, int cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;  // every code point here is below 0x800
}

static int bpe_add(Bpe *b, char *s) {
    for (int i = 0; i < b->n; i++)
        if (strcmp(b->tok[i], s) == 0) {
            free(s);
            return i;
        }
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 512;
        b->tok = xrealloc(b->tok, (size_t)b->cap * sizeof *b->tok);
    }
    b->tok[b->n] = s;
    return b->n++;
}

static int cmp_pair(const void *a, const void *b) {
    const int *x = a, *y = b;
    return x[0] != y[0] ? (x[0] < y[0] ? -1 : 1) : x[1] != y[1] ? (x[1] < y[1] ? -1 : 1) : 0;
}

static void bpe_train(Bpe *b) {
    memset(b, 0, sizeof *b);
    int cp[256];
    bytes_to_unicode(cp);
    for (int i = 0; i < 256; i++) {
        char *s = xcalloc(4, 1);
        utf8_put(s, cp[i]);
        bpe_add(b, s);
    }
    // the words, as sequences of ids, each with and without a leading space
    int nw = 2 * N_WORDS, *len = xcalloc((size_t)nw, sizeof(int)), **seq = xcalloc((size_t)nw, sizeof(int *));
    int total = 0;
    for (int w = 0; w < nw; w++) {
        char text[64];
        snprintf(text, sizeof text, "%s%s", w % 2 ? " " : "", WORDS[w / 2]);
        len[w] = (int)strlen(text);
        seq[w] = xmalloc((size_t)len[w] * sizeof(int));
        for (int i = 0; i < len[w]; i++) seq[w][i] = (unsigned char)text[i];
        total += len[w];
    }
    int (*pairs)[2] = xmalloc((size_t)total * sizeof *pairs);
    for (;;) {
        int np = 0;
        for (int w = 0; w < nw; w++)
            for (int i = 0; i + 1 < len[w]; i++) pairs[np][0] = seq[w][i], pairs[np][1] = seq[w][i + 1], np++;
        if (np == 0) break;
        qsort(pairs, (size_t)np, sizeof *pairs, cmp_pair);
        int best = 0, best_n = 0;  // most frequent pair; ties: the smallest ids
        for (int i = 0; i < np;) {
            int j = i;
            while (j < np && pairs[j][0] == pairs[i][0] && pairs[j][1] == pairs[i][1]) j++;
            if (j - i > best_n) best_n = j - i, best = i;
            i = j;
        }
        int a = pairs[best][0], c = pairs[best][1];
        size_t la = strlen(b->tok[a]), lc = strlen(b->tok[c]);
        char *s = xmalloc(la + lc + 1);
        memcpy(s, b->tok[a], la);
        memcpy(s + la, b->tok[c], lc + 1);
        int id = bpe_add(b, s);
        b->merge = xrealloc(b->merge, (size_t)(b->n_merges + 1) * sizeof *b->merge);
        b->merge[b->n_merges][0] = a;
        b->merge[b->n_merges][1] = c;
        b->n_merges++;
        for (int w = 0; w < nw; w++) {
            int o = 0;
            for (int i = 0; i < len[w]; i++) {
                if (i + 1 < len[w] && seq[w][i] == a && seq[w][i + 1] == c) {
                    seq[w][o++] = id;
                    i++;
                } else seq[w][o++] = seq[w][i];
            }
            len[w] = o;
        }
    }
    for (int w = 0; w < nw; w++) free(seq[w]);
    free(seq);
    free(len);
    free(pairs);
}

static void bpe_free(Bpe *b) {
    for (int i = 0; i < b->n; i++) free(b->tok[i]);
    free(b->tok);
    free(b->merge);
}

// JSON string (the strings here are UTF-8 without control characters except in byte tokens)
static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static FILE *open_w(const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) fatal("%s: cannot create: %s", path, strerror(errno));
    return f;
}

static void close_w(FILE *f, const char *path) {
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) fatal("%s: write failed: %s", path, strerror(errno));
}

// the image slots' markers (data/image_slot.h: InternVL's, Idefics3's with its <row_i_col_j> up to
// 6 x 6, as SmolVLM's tokenizer has them), so that every image format runs, then ChatML's last
static const char *const SPECIALS[] = {
    "<img>", "</img>", "<IMG_CONTEXT>", "<fake_token_around_image>", "<global-img>", "<image>",
#define RC(i) "<row_" #i "_col_1>", "<row_" #i "_col_2>", "<row_" #i "_col_3>", "<row_" #i "_col_4>", "<row_" #i "_col_5>", "<row_" #i "_col_6>"
    RC(1), RC(2), RC(3), RC(4), RC(5), RC(6),
#undef RC
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
};
#define N_SPECIALS ((int)(sizeof SPECIALS / sizeof *SPECIALS))

int synth_write_tokenizer(const char *path) {
    Bpe b;
    bpe_train(&b);
    FILE *f = open_w(path);
    fputs("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [\n", f);
    for (int i = 0; i < N_SPECIALS; i++)
        fprintf(f,
                "    {\"id\": %d, \"content\": \"%s\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, "
                "\"normalized\": false, \"special\": true}%s\n",
                b.n + i, SPECIALS[i], i + 1 < N_SPECIALS ? "," : "");
    fputs("  ],\n  \"normalizer\": {\"type\": \"NFC\"},\n"
          "  \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, "
          "\"use_regex\": true},\n"
          "  \"post_processor\": null,\n"
          "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, "
          "\"use_regex\": true},\n"
          "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n"
          "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": false,\n"
          "    \"byte_fallback\": false,\n    \"ignore_merges\": false,\n    \"vocab\": {\n",
          f);
    for (int i = 0; i < b.n; i++) {
        fputs("      ", f);
        json_str(f, b.tok[i]);
        fprintf(f, ": %d%s\n", i, i + 1 < b.n ? "," : "");
    }
    fputs("    },\n    \"merges\": [\n", f);
    for (int i = 0; i < b.n_merges; i++) {
        char m[256];
        snprintf(m, sizeof m, "%s %s", b.tok[b.merge[i][0]], b.tok[b.merge[i][1]]);
        fputs("      ", f);
        json_str(f, m);
        fputs(i + 1 < b.n_merges ? ",\n" : "\n", f);
    }
    fputs("    ]\n  }\n}\n", f);
    close_w(f, path);
    int vocab = b.n + N_SPECIALS;
    bpe_free(&b);
    return vocab;
}

// ---------------------------------------------------------------------------------------------
// image files

static void png_error_fn(png_structp p, png_const_charp msg) {
    fatal("%s: libpng: %s", (const char *)png_get_error_ptr(p), msg);
}

static void write_png(const char *path, const uint8_t *rgb) {
    FILE *f = open_w(path);
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, (png_voidp)path, png_error_fn, NULL);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    if (!info) fatal("%s: libpng: out of memory", path);
    png_init_io(p, f);
    png_set_IHDR(p, info, S, S, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(p, info);
    for (int y = 0; y < S; y++) png_write_row(p, (png_const_bytep)(rgb + 3 * S * y));
    png_write_end(p, NULL);
    png_destroy_write_struct(&p, &info);
    close_w(f, path);
}

// 4:4:4 so that tiny shapes keep their colour edges
static void write_jpeg(const char *path, const uint8_t *rgb) { image_write_jpeg(path, rgb, S, S, 92, 1); }

// ---------------------------------------------------------------------------------------------
// models

void synth_model_configs(VitConfig *v, LlmConfig *l, int vocab) {
    memset(v, 0, sizeof *v);
    v->hidden = 128;
    v->layers = 2;  // hidden_states[-2]: the first layer's output is what svlm uses
    v->heads = 4;
    v->head_dim = 32;
    v->mlp = 512;
    v->image_size = S;
    v->patch = 8;
    v->grid = S / 8;
    v->n_patches = v->grid * v->grid;
    v->eps = 1e-5f;
    v->act = VIT_ACT_QUICK_GELU;

    memset(l, 0, sizeof *l);
    snprintf(l->model_type, sizeof l->model_type, "qwen2");
    l->vocab = vocab;
    l->hidden = 128;
    l->layers = 2;
    l->heads = 4;
    l->kv_heads = 2;
    l->head_dim = 32;
    l->mlp = 384;
    l->max_pos = 512;
    l->eps = 1e-6f;
    l->rope_theta = 10000.0f;
    l->qkv_bias = 1;
    l->tied = 1;
    l->bos_id = vocab - 3;  // <|endoftext|>, as Qwen2 (the templates add no bos)
    l->eos_id = vocab - 1;  // <|im_end|>: ends captions (plain) and turns (chatml)
}

void synth_vision_family(VitConfig *v, VitType type) {
    v->type = type;
    v->act = vit_family_act(type);
    v->qkv_bias = 1;
    v->prep = vit_family(type)->model_types[0].prep;
}

float synth_llm_init_std(const LlmConfig *l) { return 1.0f / sqrtf((float)l->hidden); }

static int64_t llm_params(const LlmConfig *l) {
    int64_t C = l->hidden, q = (int64_t)l->heads * l->head_dim, kv = (int64_t)l->kv_heads * l->head_dim;
    int64_t per_layer = C * q + q + 2 * (C * kv + kv) + q * C + 3 * C * l->mlp + 2 * C;
    return (int64_t)l->vocab * C + C + l->layers * per_layer + (l->tied ? 0 : (int64_t)l->vocab * C);
}

static const char *CHAT_TEMPLATE =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

static void write_models(const char *models_dir, const char *vision, int vocab, uint64_t seed, SynthSummary *sum) {
    VitConfig v;
    LlmConfig l;
    synth_model_configs(&v, &l, vocab);
    synth_vision_family(&v, vit_family_parse(vision ? vision : "clip"));
    char vdir[2048], ldir[2048], path[2100];
    path_join(vdir, sizeof vdir, models_dir, "vision");
    path_join(ldir, sizeof ldir, models_dir, "llm");
    sum->vision_params = hf_random_vision(vdir, &v, seed ^ 0x7669730ULL);  // with its preprocessor_config.json
    sum->vision_title = vit_family(v.type)->title;
    hf_random_llm(ldir, &l, synth_llm_init_std(&l), seed ^ 0x6c6c6dULL);
    FILE *f;
    path_join(path, sizeof path, ldir, "tokenizer_config.json");
    f = open_w(path);
    fputs("{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n  \"bos_token\": null,\n"
          "  \"eos_token\": \"<|im_end|>\",\n  \"pad_token\": \"<|endoftext|>\",\n  \"unk_token\": null,\n"
          "  \"add_prefix_space\": false,\n  \"clean_up_tokenization_spaces\": false,\n"
          "  \"model_max_length\": 512,\n  \"chat_template\": ",
          f);
    json_str(f, CHAT_TEMPLATE);
    fputs("\n}\n", f);
    close_w(f, path);
    sum->llm_params = llm_params(&l);
}

// ---------------------------------------------------------------------------------------------
// the dataset

static void write_sample(FILE *f, int *first, const char *id, const char *image, const Conv *c) {
    fputs(*first ? "  {\"id\": " : ",\n  {\"id\": ", f);
    *first = 0;
    json_str(f, id);
    if (image) {
        fputs(", \"image\": ", f);
        json_str(f, image);
    }
    fputs(", \"conversations\": [", f);
    for (int i = 0; i < c->n; i++) {
        fprintf(f, "%s{\"from\": \"%s\", \"value\": ", i ? ", " : "", i % 2 ? "gpt" : "human");
        json_str(f, c->text[i]);
        fputc('}', f);
    }
    fputs("]}", f);
}

// one split: its images and both stages' samples
static void write_split(const char *data_dir, const char *img_dir, int split, int n, uint64_t seed,
                        SynthSummary *sum) {
    const char *name = split == SYNTH_SPLIT_TRAIN ? "train" : "val";
    const char *prefix = split == SYNTH_SPLIT_TRAIN ? "img" : "val";
    char p1[2100], p2[2100], fname[64], path[2200], id[64];
    snprintf(fname, sizeof fname, "stage1_%s.json", name);
    path_join(p1, sizeof p1, data_dir, fname);
    snprintf(fname, sizeof fname, "stage2_%s.json", name);
    path_join(p2, sizeof p2, data_dir, fname);
    FILE *f1 = open_w(p1), *f2 = open_w(p2);
    fputs("[\n", f1);
    fputs("[\n", f2);
    int first1 = 1, first2 = 1, n_text = 0;
    uint8_t *rgb = xmalloc(S * S * 3);
    for (int i = 0; i < n; i++) {
        SynthScene sc;
        synth_scene(&sc, seed, split, i);
        synth_render(&sc, rgb);
        int jpeg = i % 4 == 3;
        snprintf(fname, sizeof fname, "%s_%05d.%s", prefix, i, jpeg ? "jpg" : "png");
        path_join(path, sizeof path, img_dir, fname);
        if (jpeg) write_jpeg(path, rgb);
        else write_png(path, rgb);
        sum->n_jpeg += jpeg;

        Conv c = {.n = 2};
        snprintf(c.text[0], TEXT_MAX, "<image>");
        synth_caption(&sc, c.text[1], TEXT_MAX);
        snprintf(id, sizeof id, "s1_%s_%05d", name, i);
        write_sample(f1, &first1, id, fname, &c);

        Rng r;
        stream(&r, seed, split, i, PURPOSE_CONV);
        image_conversation(&sc, &r, &c);
        snprintf(id, sizeof id, "s2_%s_%05d", name, i);
        write_sample(f2, &first2, id, fname, &c);
        if (i % 20 == 19) {  // a text-only conversation after every 20 image ones
            stream(&r, seed, split, i, PURPOSE_TEXT);
            text_conversation(&r, &c);
            snprintf(id, sizeof id, "s2_%s_text_%05d", name, i);
            write_sample(f2, &first2, id, NULL, &c);
            n_text++;
        }
    }
    free(rgb);
    fputs("\n]\n", f1);
    fputs("\n]\n", f2);
    close_w(f1, p1);
    close_w(f2, p2);
    sum->n_stage2_text_only += n_text;
}

static void write_heldout(const char *data_dir, int n, uint64_t seed) {
    char path[2200], fname[64];
    path_join(path, sizeof path, data_dir, "heldout.json");
    FILE *f = open_w(path);
    fputs("[\n", f);
    uint8_t *rgb = xmalloc(S * S * 3);
    for (int i = 0; i < n; i++) {
        SynthScene sc;
        synth_scene(&sc, seed, SYNTH_SPLIT_HELDOUT, i);
        synth_render(&sc, rgb);
        snprintf(fname, sizeof fname, "heldout_%d.png", i);
        char ipath[2200];
        path_join(ipath, sizeof ipath, data_dir, fname);
        write_png(ipath, rgb);
        char cap[TEXT_MAX], q[TEXT_MAX], a[TEXT_MAX];
        synth_caption(&sc, cap, sizeof cap);
        fputs("  {\"image\": ", f);
        json_str(f, fname);
        fputs(", \"caption\": ", f);
        json_str(f, cap);
        fprintf(f, ", \"shape\": \"%s\", \"colour\": \"%s\", \"count\": %d, \"position\": \"%s\", \"qa\": [",
                synth_shape_names[sc.shape], synth_colour_names[sc.colour], sc.count,
                synth_position_phrases[sc.position]);
        Rng r;  // the count question asks about the shape that is there
        rng_init(&r, 0);
        for (int k = 0; k < N_QKINDS; k++) {
            if (k == Q_COUNT) {
                const char *sh = sc.count == 1 ? synth_shape_names[sc.shape] : synth_shape_plurals[sc.shape];
                snprintf(q, sizeof q, "How many %s are there?", synth_shape_plurals[sc.shape]);
                snprintf(a, sizeof a, "There %s %s %s.", sc.count == 1 ? "is" : "are", COUNT_WORDS[sc.count], sh);
            } else question(&sc, k, &r, q, a);
            fputs(k ? ", {\"prompt\": " : "{\"prompt\": ", f);
            json_str(f, q);
            fputs(", \"answer\": ", f);
            json_str(f, a);
            fputc('}', f);
        }
        fprintf(f, "]}%s\n", i + 1 < n ? "," : "");
    }
    free(rgb);
    fputs("]\n", f);
    close_w(f, path);
}

// ---------------------------------------------------------------------------------------------
// held-out benchmarks for ./evaluate

enum { BENCH_COLOUR, BENCH_COUNT, BENCH_WHERE, BENCH_SHAPE, N_BENCH_KINDS };
static const char *const BENCH_KIND_NAMES[N_BENCH_KINDS] = {"colour", "count", "position", "shape"};
static const int BENCH_VALUES[N_BENCH_KINDS] = {SYNTH_N_COLOURS, 4, SYNTH_N_POSITIONS, SYNTH_N_SHAPES};

// the question of a kind about scene s, and the answer sentence for value v of that kind (v = the
// scene's own value: the true answer); the wording of the training conversations
static void bench_text(const SynthScene *s, int kind, int v, char *q, char *a) {
    int one = s->count == 1;
    const char *sh = one ? synth_shape_names[s->shape] : synth_shape_plurals[s->shape];
    const char *is = one ? "is" : "are";
    switch (kind) {
    case BENCH_COLOUR:
        snprintf(q, TEXT_MAX, "What colour %s the %s?", is, sh);
        snprintf(a, TEXT_MAX, "The %s %s %s.", sh, is, synth_colour_names[v]);
        break;
    case BENCH_COUNT:
        snprintf(q, TEXT_MAX, "How many %s are there?", synth_shape_plurals[s->shape]);
        if (v == 0) snprintf(a, TEXT_MAX, "There are no %s.", synth_shape_plurals[s->shape]);
        else snprintf(a, TEXT_MAX, "There %s %s %s.", v == 1 ? "is" : "are", COUNT_WORDS[v],
                      v == 1 ? synth_shape_names[s->shape] : synth_shape_plurals[s->shape]);
        break;
    case BENCH_WHERE:
        snprintf(q, TEXT_MAX, "Where %s the %s?", is, sh);
        snprintf(a, TEXT_MAX, "The %s %s %s.", sh, is, synth_position_phrases[v]);
        break;
    default:
        snprintf(q, TEXT_MAX, "What shape %s the %s %s?", is, synth_colour_names[s->colour], one ? "object" : "objects");
        if (one) snprintf(a, TEXT_MAX, "It is a %s.", synth_shape_names[v]);
        else snprintf(a, TEXT_MAX, "They are %s.", synth_shape_plurals[v]);
    }
}

static int bench_truth(const SynthScene *s, int kind) {
    return kind == BENCH_COLOUR ? s->colour : kind == BENCH_COUNT ? s->count : kind == BENCH_WHERE ? s->position : s->shape;
}

// n images; image i gets the multiple-choice question of kind i mod 4 (the truth and three other
// values of that kind as options, in random order) and the VQA question of kind (i + 1) mod 4
static void write_bench(const char *data_dir, const char *img_dir, int n, uint64_t seed) {
    char p1[2200], p2[2200], fname[64], ipath[2200], q[TEXT_MAX], a[TEXT_MAX];
    path_join(p1, sizeof p1, data_dir, "bench_mc.jsonl");
    path_join(p2, sizeof p2, data_dir, "bench_vqa.jsonl");
    FILE *f1 = open_w(p1), *f2 = open_w(p2);
    uint8_t *rgb = xmalloc(S * S * 3);
    for (int i = 0; i < n; i++) {
        SynthScene sc;
        synth_scene(&sc, seed, SYNTH_SPLIT_BENCH, i);
        synth_render(&sc, rgb);
        snprintf(fname, sizeof fname, "bench_%05d.png", i);
        path_join(ipath, sizeof ipath, img_dir, fname);
        snprintf(fname, sizeof fname, "images/bench_%05d.png", i);  // relative to the JSONL's folder
        write_png(ipath, rgb);
        Rng r;
        stream(&r, seed, SYNTH_SPLIT_BENCH, i, PURPOSE_CONV);
        int kind = i % N_BENCH_KINDS, truth = bench_truth(&sc, kind), vals[4] = {truth, -1, -1, -1};
        for (int j = 1; j < 4; j++) {  // three other values, distinct
            int v, dup;
            do {
                v = (int)rng_below(&r, (uint32_t)BENCH_VALUES[kind]);
                dup = 0;
                for (int t = 0; t < j; t++) dup |= vals[t] == v;
            } while (dup);
            vals[j] = v;
        }
        for (int j = 3; j > 0; j--) {  // Fisher-Yates
            int t = (int)rng_below(&r, (uint32_t)(j + 1)), x = vals[j];
            vals[j] = vals[t];
            vals[t] = x;
        }
        fprintf(f1, "{\"id\": \"mc_%05d\", \"image\": ", i);
        json_str(f1, fname);
        char answer = 'A';
        for (int j = 0; j < 4; j++) {
            bench_text(&sc, kind, vals[j], q, a);
            fprintf(f1, ", \"%c\": ", 'A' + j);
            json_str(f1, a);
            if (vals[j] == truth) answer = (char)('A' + j);
        }
        fputs(", \"question\": ", f1);
        json_str(f1, q);
        fprintf(f1, ", \"answer\": \"%c\", \"category\": \"%s\"}\n", answer, BENCH_KIND_NAMES[kind]);
        int vkind = (kind + 1) % N_BENCH_KINDS;
        bench_text(&sc, vkind, bench_truth(&sc, vkind), q, a);
        fprintf(f2, "{\"id\": \"vqa_%05d\", \"image\": ", i);
        json_str(f2, fname);
        fputs(", \"question\": ", f2);
        json_str(f2, q);
        fputs(", \"answers\": [", f2);
        json_str(f2, a);
        fprintf(f2, "], \"category\": \"%s\"}\n", BENCH_KIND_NAMES[vkind]);
    }
    free(rgb);
    close_w(f1, p1);
    close_w(f2, p2);
}

void synth_spec_defaults(SynthSpec *s) {
    memset(s, 0, sizeof *s);
    s->out_dir = "demo";
    s->seed = 3;
    s->n_train = 4000;
    s->n_val = 200;
    s->n_heldout = 4;
    s->n_bench = 200;
}

// every word with and without its leading space must be one token of the written tokenizer
static void check_tokenizer(const char *path, int vocab) {
    Tokenizer *t = tokenizer_load(path);
    CHECK(tokenizer_vocab_size(t) == vocab, "tokenizer size %d, wrote %d", tokenizer_vocab_size(t), vocab);
    for (int w = 0; w < 2 * N_WORDS; w++) {
        char text[64];
        snprintf(text, sizeof text, "%s%s", w % 2 ? " " : "", WORDS[w / 2]);
        int *ids, n = tokenizer_encode(t, text, strlen(text), 0, &ids);
        CHECK(n == 1, "\"%s\" encodes to %d tokens", text, n);
        free(ids);
    }
    tokenizer_free(t);
}

void synth_run(const SynthSpec *spec, SynthSummary *sum) {
    double t0 = time_now();
    memset(sum, 0, sizeof *sum);
    if (spec->n_train < 1 || spec->n_val < 1 || spec->n_heldout < 0 || spec->n_bench < 0)
        fatal("synth: need at least 1 training and 1 validation sample (got %d and %d)", spec->n_train, spec->n_val);
    char data[2048], images[2100], models[2048], llm[2100], path[2200];
    path_join(data, sizeof data, spec->out_dir, "data");
    path_join(images, sizeof images, data, "images");
    path_join(models, sizeof models, spec->out_dir, "models");
    path_join(llm, sizeof llm, models, "llm");
    make_dirs(spec->out_dir);
    make_dirs(data);
    make_dirs(images);
    make_dirs(models);
    make_dirs(llm);

    path_join(path, sizeof path, llm, "tokenizer.json");
    sum->vocab = synth_write_tokenizer(path);
    sum->n_words = N_WORDS;
    check_tokenizer(path, sum->vocab);

    write_split(data, images, SYNTH_SPLIT_TRAIN, spec->n_train, spec->seed, sum);
    write_split(data, images, SYNTH_SPLIT_VAL, spec->n_val, spec->seed, sum);
    write_heldout(data, spec->n_heldout, spec->seed);
    if (spec->n_bench > 0) write_bench(data, images, spec->n_bench, spec->seed);
    sum->n_bench = spec->n_bench;
    sum->n_train = spec->n_train;
    sum->n_val = spec->n_val;
    sum->n_heldout = spec->n_heldout;

    write_models(models, spec->vision, sum->vocab, spec->seed, sum);
    sum->seconds = time_now() - t0;
}
