// test_synth.c: the built-in synthetic dataset and tiny models (data/synth.h): two runs write
// identical bytes; the JSON parses and every sample encodes with its template; every image
// decodes and shows what its caption says (colour, count, shape and position, measured on the
// pixels); every word is one token and every text round-trips through the tokenizer; the model
// directories load and give a sane loss; the held-out benchmarks (bench_mc.jsonl, bench_vqa.jsonl)
// ask about their own scenes, with the true answer where the answer letter says and nowhere else.
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/json.h"
#include "common/util.h"
#include "data/image.h"
#include "data/llava_json.h"
#include "data/synth.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "kernels/kernels.h"
#include "model/vlm.h"
#include "tests/testlib.h"

#define N_TRAIN 240
#define N_VAL 40
#define N_HELDOUT 4
#define N_BENCH 40

static char g_dir[512], g_dir2[512];
static SynthSummary g_sum;

static int setup(void **state) {
    make_temp_dir(g_dir, sizeof g_dir, "synth_a");
    make_temp_dir(g_dir2, sizeof g_dir2, "synth_b");
    SynthSpec s;
    synth_spec_defaults(&s);
    s.n_train = N_TRAIN;
    s.n_val = N_VAL;
    s.n_heldout = N_HELDOUT;
    s.n_bench = N_BENCH;
    s.quiet = 1;
    s.out_dir = g_dir;
    synth_run(&s, &g_sum);
    s.out_dir = g_dir2;
    SynthSummary again;
    synth_run(&s, &again);
    return 0;
}

static void path2(char *out, size_t cap, const char *a, const char *b) {
    if ((size_t)snprintf(out, cap, "%s/%s", a, b) >= cap) fail_msg("path %s/%s too long", a, b);
}

static char *read_all(const char *path, size_t *n) {
    char *t = file_read_all(path, n);
    if (!t) fail_msg("cannot read %s", path);
    return t;
}

// ---------------------------------------------------------------------------------------------
// determinism: every file of both runs, byte for byte

static int compare_tree(const char *a, const char *b) {
    DIR *d = opendir(a);
    if (!d) fail_msg("cannot open %s", a);
    int files = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char pa[1100], pb[1100];
        path2(pa, sizeof pa, a, e->d_name);
        path2(pb, sizeof pb, b, e->d_name);
        if (dir_exists(pa)) {
            assert_true(dir_exists(pb));
            files += compare_tree(pa, pb);
            continue;
        }
        size_t na, nb;
        char *ta = read_all(pa, &na), *tb = read_all(pb, &nb);
        if (na != nb || memcmp(ta, tb, na) != 0) fail_msg("%s and %s differ", pa, pb);
        free(ta);
        free(tb);
        files++;
    }
    closedir(d);
    return files;
}

static void test_deterministic(void **state) {
    int files = compare_tree(g_dir, g_dir2);
    // images + 4 JSON + heldout images and JSON + benchmark images and 2 JSONL + 3 vision files + 4 llm files
    assert_int_equal(files, N_TRAIN + N_VAL + 4 + N_HELDOUT + 1 + N_BENCH + 2 + 3 + 4);
    assert_int_equal(g_sum.n_train, N_TRAIN);
    assert_int_equal(g_sum.n_val, N_VAL);
    assert_int_equal(g_sum.n_jpeg, N_TRAIN / 4 + N_VAL / 4);
    assert_int_equal(g_sum.n_stage2_text_only, N_TRAIN / 20 + N_VAL / 20);
    // a different seed gives different data
    char d3[512];
    make_temp_dir(d3, sizeof d3, "synth_c");
    SynthSpec s;
    synth_spec_defaults(&s);
    s.n_train = 8, s.n_val = 4, s.n_heldout = 0, s.quiet = 1, s.seed = 12345, s.out_dir = d3;
    SynthSummary sum;
    synth_run(&s, &sum);
    char pa[1024], pb[1024];
    snprintf(pa, sizeof pa, "%s/data/images/img_00000.png", g_dir);
    snprintf(pb, sizeof pb, "%s/data/images/img_00000.png", d3);
    size_t na, nb;
    char *ta = read_all(pa, &na), *tb = read_all(pb, &nb);
    assert_true(na != nb || memcmp(ta, tb, na) != 0);
    free(ta);
    free(tb);
}

// ---------------------------------------------------------------------------------------------
// reading an image: blobs of the caption's colour

typedef struct {
    int n;                 // pixels
    int x0, y0, x1, y1;    // bounding box (inclusive)
    double cx, cy;         // centroid
} Blob;

static int near_colour(const uint8_t *p, const uint8_t *c, int tol) {
    int d = 0;
    for (int k = 0; k < 3; k++) d += (p[k] - c[k]) * (p[k] - c[k]);
    return d <= tol * tol;
}

static int dist2(const uint8_t *p, const uint8_t *c) {
    int d = 0;
    for (int k = 0; k < 3; k++) d += (p[k] - c[k]) * (p[k] - c[k]);
    return d;
}

// a pixel of the object: nearer its colour than the background's (over half covered), and
// within tol of it
static int is_object(const uint8_t *p, const uint8_t *rgb, const uint8_t *bg, int tol) {
    return dist2(p, rgb) < dist2(p, bg) && dist2(p, rgb) <= tol * tol;
}

// 4-connected components of object pixels (bg: the background colour), ignoring specks under 6
// pixels
static int find_blobs(const Image *im, const uint8_t *rgb, const uint8_t *bg, int tol, Blob *out, int max,
                      uint8_t *mask) {
    int W = im->w, H = im->h, nb = 0;
    int *lab = calloc((size_t)W * H, sizeof(int)), *stack = malloc((size_t)W * H * sizeof(int));
    for (int i = 0; i < W * H; i++) mask[i] = (uint8_t)is_object(im->rgb + 3 * i, rgb, bg, tol);
    for (int start = 0; start < W * H; start++) {
        if (lab[start] || !is_object(im->rgb + 3 * start, rgb, bg, tol)) continue;
        Blob b = {0, W, H, -1, -1, 0, 0};
        int sp = 0;
        stack[sp++] = start;
        lab[start] = 1;
        while (sp) {
            int i = stack[--sp], x = i % W, y = i / W;
            b.n++, b.cx += x + 0.5, b.cy += y + 0.5;
            if (x < b.x0) b.x0 = x;
            if (x > b.x1) b.x1 = x;
            if (y < b.y0) b.y0 = y;
            if (y > b.y1) b.y1 = y;
            const int nx[4] = {x - 1, x + 1, x, x}, ny[4] = {y, y, y - 1, y + 1};
            for (int k = 0; k < 4; k++) {
                if (nx[k] < 0 || ny[k] < 0 || nx[k] >= W || ny[k] >= H) continue;
                int j = ny[k] * W + nx[k];
                if (!lab[j] && is_object(im->rgb + 3 * j, rgb, bg, tol)) lab[j] = 1, stack[sp++] = j;
            }
        }
        if (b.n < 6) continue;
        b.cx /= b.n, b.cy /= b.n;
        if (nb < max) out[nb] = b;
        nb++;
    }
    free(lab);
    free(stack);
    return nb;
}

static int index_of(const char *w, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (strcmp(w, names[i]) == 0) return i;
    return -1;
}

// what the caption says, parsed from its words
typedef struct {
    int count, colour, shape, position;
} Said;

static Said parse_caption(const char *cap) {
    char buf[256], *w[8];
    snprintf(buf, sizeof buf, "%s", cap);
    int n = 0;
    for (char *t = strtok(buf, " "); t && n < 8; t = strtok(NULL, " ")) w[n++] = t;
    if (n < 5) fail_msg("caption \"%s\" is too short", cap);
    Said s;
    s.count = strcmp(w[0], "a") == 0 || strcmp(w[0], "an") == 0 ? 1 : strcmp(w[0], "two") == 0 ? 2
              : strcmp(w[0], "three") == 0                       ? 3
                                                                 : -1;
    s.colour = index_of(w[1], synth_colour_names, SYNTH_N_COLOURS);
    s.shape = index_of(w[2], s.count == 1 ? synth_shape_names : synth_shape_plurals, SYNTH_N_SHAPES);
    char pos[64];
    snprintf(pos, sizeof pos, "%s %s %s", w[3], w[4], n > 5 ? w[5] : "");
    s.position = index_of(pos, synth_position_phrases, SYNTH_N_POSITIONS);
    if (s.count < 0 || s.colour < 0 || s.shape < 0 || s.position < 0 || n != 6)
        fail_msg("caption \"%s\" does not parse", cap);
    if (strcmp(w[0], "an") == 0) assert_int_equal(s.colour, COL_ORANGE);
    return s;
}

// the shape an object looks like: the one whose outline (synth_shape_contains, centred on the
// object's centroid, best radius) overlaps the object's pixels most (intersection over union)
static int shape_read(const uint8_t *mask, int W, const Blob *b, double *best_iou) {
    int best = -1;
    *best_iou = 0;
    for (int sh = 0; sh < SYNTH_N_SHAPES; sh++)
        for (float r = 4.0f; r <= 13.0f; r += 0.5f) {
            int inter = 0, uni = 0;
            for (int y = b->y0 - 3; y <= b->y1 + 3; y++)
                for (int x = b->x0 - 3; x <= b->x1 + 3; x++) {
                    int in_img = x >= 0 && y >= 0 && x < W && y < W && mask[y * W + x];
                    int in_shape = synth_shape_contains(sh, (float)(x + 0.5 - b->cx), (float)(y + 0.5 - b->cy), r);
                    inter += in_img && in_shape;
                    uni += in_img || in_shape;
                }
            double iou = uni ? (double)inter / uni : 0;
            if (iou > *best_iou) *best_iou = iou, best = sh;
        }
    return best;
}

// asserts that the image at path shows the caption
static void check_image_shows(const char *path, const char *caption) {
    size_t n;
    uint8_t *bytes = (uint8_t *)read_all(path, &n);
    Image im;
    char err[200];
    if (image_decode(bytes, n, &im, err, sizeof err) != 0) fail_msg("%s: %s", path, err);
    free(bytes);
    assert_int_equal(im.w, SYNTH_IMAGE_SIZE);
    assert_int_equal(im.h, SYNTH_IMAGE_SIZE);
    Said s = parse_caption(caption);
    const uint8_t *want = synth_colour_rgb[s.colour];
    Blob b[8];
    // the top-left corner is background in every layout
    uint8_t mask[SYNTH_IMAGE_SIZE * SYNTH_IMAGE_SIZE];
    int nb = find_blobs(&im, want, im.rgb, 90, b, 8, mask);
    int jpeg = strstr(path, ".jpg") != NULL;
    if (nb != s.count) fail_msg("%s: \"%s\" but %d blobs of that colour", path, caption, nb);
    double gx = 0, gy = 0;
    for (int i = 0; i < nb; i++) {
        gx += b[i].cx / nb, gy += b[i].cy / nb;
        // the centre pixel has the colour (every shape covers its centre)
        int x = (int)b[i].cx, y = (int)b[i].cy;
        if (!near_colour(im.rgb + 3 * (y * im.w + x), want, jpeg ? 60 : 40))
            fail_msg("%s: centre pixel (%d,%d) of object %d is not %s", path, x, y, i, synth_colour_names[s.colour]);
        double iou;
        int read = shape_read(mask, im.w, &b[i], &iou);
        if (read != s.shape)
            fail_msg("%s: \"%s\" but object %d looks like a %s (IoU %.3f)", path, caption, i,
                     synth_shape_names[read], iou);
    }
    int pos = gx < 24 ? POS_LEFT : gx > 40 ? POS_RIGHT : gy < 24 ? POS_TOP : gy > 40 ? POS_BOTTOM : POS_CENTRE;
    if (pos == POS_CENTRE && (fabs(gx - 32) > 6 || fabs(gy - 32) > 6)) pos = -1;
    if (pos != s.position)
        fail_msg("%s: \"%s\" but the objects' centre is at (%.1f, %.1f)", path, caption, gx, gy);
    image_free(&im);
}

// ---------------------------------------------------------------------------------------------
// JSON + templates

typedef struct {
    Tokenizer *tok;
    Template *plain, *chat;
    int eos;
} Tok;

static Tok load_tok(void) {
    char p[1024], llm[1024];
    snprintf(llm, sizeof llm, "%s/models/llm", g_dir);
    path2(p, sizeof p, llm, "tokenizer.json");
    Tok t;
    t.tok = tokenizer_load(p);
    LlmConfig c;
    llm_config_load(&c, llm);
    t.eos = c.eos_id;
    t.plain = template_new(TEMPLATE_PLAIN, t.tok, NULL, c.eos_id);
    t.chat = template_new(TEMPLATE_CHATML, t.tok, NULL, -1);
    return t;
}

static void free_tok(Tok *t) {
    template_free(t->plain);
    template_free(t->chat);
    tokenizer_free(t->tok);
}

// number of pre-tokens of an ASCII text as the GPT-2 pattern splits it here: a letter run with
// its leading space, each punctuation character (with a leading space if any), each newline
static int count_pieces(const char *s) {
    int n = 0;
    for (const char *p = s; *p;) {
        if (*p == ' ' && p[1] && p[1] != ' ' && p[1] != '\n') p++;
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) {
            while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) p++;
        } else p++;
        n++;
    }
    return n;
}

// every text: one token per word, and decode(encode(text)) == text
static void check_text(const Tokenizer *tok, const char *text) {
    int *ids, n = tokenizer_encode(tok, text, strlen(text), 0, &ids);
    if (n != count_pieces(text)) fail_msg("\"%s\": %d tokens for %d words and marks", text, n, count_pieces(text));
    char *back = tokenizer_decode(tok, ids, n, 0, NULL);
    assert_string_equal(back, text);
    free(back);
    free(ids);
}

static void check_file(Tok *t, const char *name, int stage, int want_samples, int *text_only) {
    char data[1024], path[1024], images[1024];
    snprintf(data, sizeof data, "%s/data", g_dir);
    snprintf(images, sizeof images, "%s/data/images", g_dir);
    path2(path, sizeof path, data, name);
    LlavaReader *r = llava_open(path);
    LlavaSample s;
    int n = 0;
    while (llava_next(r, &s)) {
        assert_int_equal(s.skip, LLAVA_OK);
        int *ids, img_pos;
        uint8_t *mask;
        char err[256];
        int len = template_encode(stage == 1 ? t->plain : t->chat, s.turns, s.n_turns, &ids, &mask, &img_pos, err,
                                  sizeof err);
        if (len <= 0) fail_msg("%s sample %s: template refused it: %s", name, s.id, err);
        int labelled = 0;
        for (int i = 0; i < len; i++) labelled += mask[i];
        assert_true(labelled >= 2);
        int last = len - 1;  // the last labelled token ends the answer (chatml writes a "\n" after it)
        while (last > 0 && !mask[last]) last--;
        assert_int_equal(ids[last], stage == 1 ? t->eos : template_stop_id(t->chat));
        // longest: a 16-token image slot and two rounds of chatml
        assert_true(len + (img_pos >= 0 ? 16 : 0) <= 96);
        free(ids);
        free(mask);
        for (int i = 0; i < s.n_turns; i++) {
            const char *txt = s.turns[i].text;
            if (strncmp(txt, "<image>", 7) == 0) txt += 7;
            if (*txt) check_text(t->tok, txt);
        }
        if (s.image) {
            assert_int_equal(img_pos >= 0, 1);
            assert_non_null(strstr(s.turns[0].text, "<image>"));
            if (stage == 1) {
                path2(path, sizeof path, images, s.image);
                check_image_shows(path, s.turns[1].text);
            }
        } else {
            assert_int_equal(img_pos, -1);
            (*text_only)++;
        }
        n++;
        llava_sample_free(&s);
    }
    llava_close(r);
    assert_int_equal(n, want_samples);
}

static void test_json_templates_and_images(void **state) {
    Tok t = load_tok();
    int text_only = 0;
    check_file(&t, "stage1_train.json", 1, N_TRAIN, &text_only);
    check_file(&t, "stage1_val.json", 1, N_VAL, &text_only);
    assert_int_equal(text_only, 0);
    check_file(&t, "stage2_train.json", 2, N_TRAIN + N_TRAIN / 20, &text_only);
    check_file(&t, "stage2_val.json", 2, N_VAL + N_VAL / 20, &text_only);
    assert_int_equal(text_only, N_TRAIN / 20 + N_VAL / 20);
    free_tok(&t);
}

// validation images are not training images (different scenes, different files)
static void test_splits_disjoint(void **state) {
    char a[1024], b[1024];
    int same = 0;
    for (int i = 0; i < N_VAL; i++) {
        const char *ext = i % 4 == 3 ? "jpg" : "png";
        snprintf(a, sizeof a, "%s/data/images/val_%05d.%s", g_dir, i, ext);
        assert_true(file_exists(a));
        for (int j = 0; j < N_TRAIN; j++) {
            if (j % 4 != i % 4) continue;
            snprintf(b, sizeof b, "%s/data/images/img_%05d.%s", g_dir, j, ext);
            size_t na, nb;
            char *ta = read_all(a, &na), *tb = read_all(b, &nb);
            same += na == nb && memcmp(ta, tb, na) == 0;
            free(ta);
            free(tb);
        }
    }
    assert_int_equal(same, 0);
}

static void test_heldout(void **state) {
    char path[1024];
    snprintf(path, sizeof path, "%s/data/heldout.json", g_dir);
    cJSON *root = json_load_file(path);
    assert_int_equal(cJSON_GetArraySize(root), N_HELDOUT);
    Tok t = load_tok();
    for (int i = 0; i < N_HELDOUT; i++) {
        const cJSON *h = cJSON_GetArrayItem(root, i);
        const char *image = json_get_str(h, "image", path), *cap = json_get_str(h, "caption", path);
        char ip[1024], want[32];
        snprintf(want, sizeof want, "heldout_%d.png", i);
        assert_string_equal(image, want);
        snprintf(ip, sizeof ip, "%s/data/%s", g_dir, image);
        check_image_shows(ip, cap);
        Said s = parse_caption(cap);
        assert_string_equal(json_get_str(h, "colour", path), synth_colour_names[s.colour]);
        assert_int_equal(json_get_int(h, "count", path), s.count);
        const cJSON *qa = cJSON_GetObjectItemCaseSensitive(h, "qa");
        assert_int_equal(cJSON_GetArraySize(qa), 5);
        for (const cJSON *q = qa->child; q; q = q->next) {
            const char *prompt = json_get_str(q, "prompt", path), *answer = json_get_str(q, "answer", path);
            check_text(t.tok, prompt);
            check_text(t.tok, answer);
            // the prompt is a chatml prompt with the image, as generate builds it
            char first[256];
            snprintf(first, sizeof first, "<image>\n%s", prompt);
            Turn turn = {"human", first};
            int *ids, img_pos;
            char err[200];
            assert_true(template_encode_prompt(t.chat, &turn, 1, &ids, &img_pos, err, sizeof err) > 0);
            assert_true(img_pos >= 0);
            free(ids);
        }
        // the colour question's answer names the true colour
        const char *a0 = json_get_str(cJSON_GetArrayItem(qa, 0), "answer", path);
        assert_non_null(strstr(a0, synth_colour_names[s.colour]));
    }
    free_tok(&t);
    cJSON_Delete(root);
}

// ---------------------------------------------------------------------------------------------
// tokenizer

static void test_words_are_single_tokens(void **state) {
    Tok t = load_tok();
    int n;
    const char *const *w = synth_words(&n);
    assert_true(n > 50);
    for (int i = 0; i < n; i++)
        for (int sp = 0; sp < 2; sp++) {
            char text[64];
            snprintf(text, sizeof text, "%s%s", sp ? " " : "", w[i]);
            int *ids, k = tokenizer_encode(t.tok, text, strlen(text), 0, &ids);
            if (k != 1) fail_msg("\"%s\" is %d tokens", text, k);
            char *back = tokenizer_decode(t.tok, ids, 1, 0, NULL);
            assert_string_equal(back, text);
            free(back);
            free(ids);
        }
    // the special tokens follow the model vocabulary; eos = <|im_end|>, the chatml stop token
    int V = tokenizer_vocab_size(t.tok);
    assert_int_equal(V, g_sum.vocab);
    assert_int_equal(tokenizer_token_id(t.tok, "<|endoftext|>"), V - 3);
    assert_int_equal(tokenizer_token_id(t.tok, "<|im_start|>"), V - 2);
    assert_int_equal(tokenizer_token_id(t.tok, "<|im_end|>"), V - 1);
    for (int i = V - 3; i < V; i++) assert_true(tokenizer_is_special(t.tok, i));
    assert_int_equal(t.eos, V - 1);
    assert_int_equal(template_stop_id(t.chat), V - 1);
    assert_int_equal(template_stop_id(t.plain), V - 1);
    // the chatml system prompt and roles are single tokens too
    check_text(t.tok, "You are a helpful assistant.");
    check_text(t.tok, "system\nuser\nassistant\n");
    free_tok(&t);
}

// ---------------------------------------------------------------------------------------------
// models

static void test_models_load(void **state) {
    char vdir[1024], ldir[1024], p[1100];
    snprintf(vdir, sizeof vdir, "%s/models/vision", g_dir);
    snprintf(ldir, sizeof ldir, "%s/models/llm", g_dir);
    VitConfig vc;
    vit_config_load(&vc, vdir);
    assert_int_equal(vc.image_size, SYNTH_IMAGE_SIZE);
    assert_int_equal(vc.grid, 8);
    connector_check_grid(CONNECTOR_LDP, 0, vc.grid);
    LlmConfig lc;
    llm_config_load(&lc, ldir);
    assert_string_equal(lc.model_type, "qwen2");
    assert_int_equal(lc.vocab, g_sum.vocab);
    assert_int_equal(lc.tied, 1);
    assert_int_equal(lc.qkv_bias, 1);
    assert_int_equal(lc.eos_id, g_sum.vocab - 1);

    path2(p, sizeof p, vdir, "preprocessor_config.json");
    cJSON *pp = json_load_file(p);
    const cJSON *mean = cJSON_GetObjectItemCaseSensitive(pp, "image_mean");
    assert_int_equal(cJSON_GetArraySize(mean), 3);
    assert_float_equal(cJSON_GetArrayItem(mean, 0)->valuedouble, 0.48145466, 1e-9);
    cJSON_Delete(pp);

    Vit v;
    vit_load(&v, kernels_cpu(), vdir, -2, 2);
    vit_free(&v);
    Llm l;
    LoraConfig lora = {0};
    llm_load(&l, kernels_cpu(), ldir, &lora, NULL);
    llm_free(&l);

    // the whole VLM on one stage-1 sample: a finite loss near ln(vocab) from random weights
    VlmSpec spec = {.vision_dir = vdir, .vision_layer = -2, .llm_dir = ldir, .connector = CONNECTOR_LDP,
                    .max_B = 1, .max_T = 64, .max_images = 1};
    Vlm m;
    vlm_init(&m, kernels_cpu(), &spec);
    vlm_init_trainable(&m, 1);
    assert_int_equal(m.n_img_tokens, 16);
    Tok t = load_tok();
    char img[1024];
    snprintf(img, sizeof img, "%s/data/images/img_00000.png", g_dir);
    SynthSpec defaults;
    synth_spec_defaults(&defaults);
    SynthScene sc;
    synth_scene(&sc, defaults.seed, SYNTH_SPLIT_TRAIN, 0);
    char cap[128];
    synth_caption(&sc, cap, sizeof cap);
    Turn turns[2] = {{"human", "<image>"}, {"gpt", cap}};
    int *ids, img_pos;
    uint8_t *mask;
    char err[200];
    int n = template_encode(t.plain, turns, 2, &ids, &mask, &img_pos, err, sizeof err);
    assert_true(n > 0);
    assert_int_equal(img_pos, 0);
    int T = n + 16, tid[64], tgt[64];
    for (int i = 0; i < T; i++) tid[i] = i < 16 ? 0 : ids[i - 16];
    for (int i = 0; i < T; i++) tgt[i] = i + 1 < T && (i + 1 < 16 ? 0 : mask[i + 1 - 16]) ? tid[i + 1] : -1;
    size_t len;
    uint8_t *bytes = (uint8_t *)read_all(img, &len);
    Image im;
    assert_int_equal(image_decode(bytes, len, &im, err, sizeof err), 0);
    float *pix = malloc(3 * SYNTH_IMAGE_SIZE * SYNTH_IMAGE_SIZE * sizeof(float));
    ImagePrep prep;  // CLIP's, with OpenAI CLIP's mean / std: the synth tower's preprocessor_config.json
    image_prep_preset(&prep, IMAGE_PREP_CLIP, SYNTH_IMAGE_SIZE);
    image_preprocess(&im, &prep, pix);
    int row = 0, start = 0, lab;
    VlmBatch b = {.B = 1, .T = T, .ids = tid, .targets = tgt, .n_img = 1, .pixels = pix, .img_row = &row,
                  .img_start = &start};
    double loss = vlm_forward_backward(&m, &b, 0.0f, &lab);
    assert_int_equal(lab, n);
    double mean_loss = loss / lab;
    print_message("random VLM loss %.3f (ln vocab %.3f)\n", mean_loss, log((double)g_sum.vocab));
    assert_true(isfinite(mean_loss));
    assert_true(fabs(mean_loss - log((double)g_sum.vocab)) < 2.0);
    free(pix);
    free(bytes);
    image_free(&im);
    free(ids);
    free(mask);
    free_tok(&t);
    vlm_free(&m);
}

// ---------------------------------------------------------------------------------------------
// bad input

static void run_bad(void *arg) {
    SynthSpec s;
    synth_spec_defaults(&s);
    s.out_dir = "build/tmp";
    s.n_train = 0;
    s.quiet = 1;
    SynthSummary sum;
    synth_run(&s, &sum);
}

static void run_unwritable(void *arg) {
    SynthSpec s;
    synth_spec_defaults(&s);
    s.out_dir = "/proc/synth-cannot-write-here";
    s.quiet = 1;
    SynthSummary sum;
    synth_run(&s, &sum);
}

static void test_bad_input(void **state) {
    expect_fatal(run_bad, NULL, "at least 1 training");
    expect_fatal(run_unwritable, NULL, "/proc/synth-cannot-write-here", "cannot create directory");
}

// ---------------------------------------------------------------------------------------------
// the held-out benchmarks for ./evaluate

// 1 when the sentence has word (whole words, '.' ends the sentence)
static int has_word(const char *sentence, const char *word) {
    size_t n = strlen(word);
    for (const char *p = sentence; (p = strstr(p, word)) != NULL; p++)
        if ((p == sentence || p[-1] == ' ') && (p[n] == ' ' || p[n] == '.' || p[n] == 0)) return 1;
    return 0;
}

static void test_bench_files(void **state) {
    SynthSpec defaults;  // setup's seed
    synth_spec_defaults(&defaults);
    uint64_t g_seed = defaults.seed;
    static const char *const counts[4] = {"no", "one", "two", "three"};
    static const char *const kinds[4] = {"colour", "count", "position", "shape"};
    char path[1100];
    path2(path, sizeof path, g_dir, "data/bench_mc.jsonl");
    size_t n;
    char *mc = read_all(path, &n), *save = NULL;
    int i = 0, letters[4] = {0};
    for (char *line = strtok_r(mc, "\n", &save); line; line = strtok_r(NULL, "\n", &save), i++) {
        cJSON *o = cJSON_Parse(line);
        assert_non_null(o);
        SynthScene sc;
        synth_scene(&sc, g_seed, SYNTH_SPLIT_BENCH, i);
        int kind = i % 4;
        assert_string_equal(cJSON_GetObjectItem(o, "category")->valuestring, kinds[kind]);
        char img[32];
        snprintf(img, sizeof img, "images/bench_%05d.png", i);
        assert_string_equal(cJSON_GetObjectItem(o, "image")->valuestring, img);
        const char *truth = kind == 0 ? synth_colour_names[sc.colour] : kind == 1 ? counts[sc.count]
                          : kind == 2 ? synth_position_phrases[sc.position]
                          : sc.count == 1 ? synth_shape_names[sc.shape] : synth_shape_plurals[sc.shape];
        int answer = cJSON_GetObjectItem(o, "answer")->valuestring[0] - 'A';
        assert_true(answer >= 0 && answer < 4);
        letters[answer]++;
        for (int j = 0; j < 4; j++) {
            char key[2] = {(char)('A' + j), 0};
            const char *opt = cJSON_GetObjectItem(o, key)->valuestring;
            for (int t = 0; t < j; t++) {  // distinct options
                char k2[2] = {(char)('A' + t), 0};
                assert_string_not_equal(opt, cJSON_GetObjectItem(o, k2)->valuestring);
            }
            int says = kind == 2 ? strstr(opt, truth) != NULL : has_word(opt, truth);
            if (says != (j == answer)) fail_msg("bench_mc item %d option %c \"%s\": truth \"%s\", answer %c", i, 'A' + j, opt, truth, 'A' + answer);
        }
        cJSON_Delete(o);
    }
    assert_int_equal(i, N_BENCH);
    for (int j = 0; j < 4; j++) assert_true(letters[j] > 0);  // the right answer is not always at one letter
    free(mc);
    path2(path, sizeof path, g_dir, "data/bench_vqa.jsonl");
    char *vqa = read_all(path, &n);
    save = NULL;
    i = 0;
    for (char *line = strtok_r(vqa, "\n", &save); line; line = strtok_r(NULL, "\n", &save), i++) {
        cJSON *o = cJSON_Parse(line);
        SynthScene sc;
        synth_scene(&sc, g_seed, SYNTH_SPLIT_BENCH, i);
        int kind = (i + 1) % 4;
        const char *truth = kind == 0 ? synth_colour_names[sc.colour] : kind == 1 ? counts[sc.count]
                          : kind == 2 ? synth_position_phrases[sc.position]
                          : sc.count == 1 ? synth_shape_names[sc.shape] : synth_shape_plurals[sc.shape];
        assert_string_equal(cJSON_GetObjectItem(o, "category")->valuestring, kinds[kind]);
        const char *ans = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "answers"), 0)->valuestring;
        assert_true(kind == 2 ? strstr(ans, truth) != NULL : has_word(ans, truth));
        cJSON_Delete(o);
    }
    assert_int_equal(i, N_BENCH);
    free(vqa);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_input),  // first: its forked children must not inherit OpenMP threads
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_json_templates_and_images),
        cmocka_unit_test(test_splits_disjoint),
        cmocka_unit_test(test_heldout),
        cmocka_unit_test(test_bench_files),
        cmocka_unit_test(test_words_are_single_tokens),
        cmocka_unit_test(test_models_load),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
