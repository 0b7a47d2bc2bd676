// test_image_slot.c: the image slots of data/image_slot.h against the processors' own strings:
// InternVLProcessor's "<img>" + "<IMG_CONTEXT>" * (tokens * tiles) + "</img>" and
// Idefics3Processor's replace_image_token (rows of <fake_token_around_image><row_i_col_j><image>...,
// "\n" after each row, "\n<fake_token_around_image><global-img>..." for the global image), each
// rendered as text here the way the processor writes it and tokenised whole (added tokens split
// out, the "\n"s between them tokenised alone, as tokenizers does): the slot's ids must be those
// ids, its feature flags the image-token positions, its tiles' starts the runs of them in order.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/json.h"
#include "common/util.h"
#include "data/image_slot.h"
#include "data/synth.h"
#include "testlib.h"

static void check_format_with(ImageFormat fmt, const char *image_token, const Tokenizer *g_tok, const char *g_tok_path);
static Tokenizer *g_tok;
static char g_tok_path[700];

static int setup(void **state) {
    (void)state;
    char dir[600];
    make_temp_dir(dir, sizeof dir, "image_slot");
    snprintf(g_tok_path, sizeof g_tok_path, "%s/tokenizer.json", dir);
    synth_write_tokenizer(g_tok_path);  // ./synth's tokenizer carries InternVL's and Idefics3's markers
    g_tok = tokenizer_load(g_tok_path);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tokenizer_free(g_tok);
    return 0;
}

// the processor's text for one image
static char *render(ImageFormat fmt, int tokens, ImageGrid g) {
    size_t cap = 1 << 16, n = 0;
    char *s = xmalloc(cap);
    s[0] = 0;
#define ADD(...) (n += (size_t)snprintf(s + n, cap - n, __VA_ARGS__))
    int tiles = image_grid_tiles(g);
    if (fmt == IMAGE_FORMAT_INTERNVL) {
        ADD("<img>");
        for (int i = 0; i < tokens * tiles; i++) ADD("<IMG_CONTEXT>");
        ADD("</img>");
    } else if (tiles == 1) {
        ADD("<fake_token_around_image><global-img>");
        for (int i = 0; i < tokens; i++) ADD("<image>");
        ADD("<fake_token_around_image>");
    } else {
        for (int r = 0; r < g.rows; r++) {
            for (int c = 0; c < g.cols; c++) {
                ADD("<fake_token_around_image><row_%d_col_%d>", r + 1, c + 1);
                for (int i = 0; i < tokens; i++) ADD("<image>");
            }
            ADD("\n");
        }
        ADD("\n<fake_token_around_image><global-img>");
        for (int i = 0; i < tokens; i++) ADD("<image>");
        ADD("<fake_token_around_image>");
    }
#undef ADD
    return s;
}

static void check_format(ImageFormat fmt, const char *image_token) {
    check_format_with(fmt, image_token, g_tok, g_tok_path);
}

static void check_format_with(ImageFormat fmt, const char *image_token, const Tokenizer *g_tok, const char *g_tok_path) {
    const int tokens = 5;
    ImageSlot slot;
    image_slot_init(&slot, fmt, tokens, 6, g_tok, g_tok_path);
    const int img = tokenizer_token_id(g_tok, image_token);
    assert_true(img >= 0);
    const ImageGrid grids[] = {{1, 1, 0}, {1, 2, 1}, {2, 1, 1}, {2, 3, 1}, {3, 3, 1}, {6, 1, 1}, {1, 6, 1}};
    for (size_t k = 0; k < sizeof grids / sizeof *grids; k++) {
        ImageGrid g = grids[k];
        char *text = render(fmt, tokens, g);
        int *want, nw = tokenizer_encode(g_tok, text, strlen(text), 1, &want);
        int len = image_slot_len(&slot, g), tiles = image_grid_tiles(g);
        int *ids = xmalloc((size_t)len * sizeof(int)), *start = xmalloc((size_t)tiles * sizeof(int));
        uint8_t *feat = xmalloc((size_t)len);
        assert_int_equal(image_slot_expand(&slot, g, ids, feat, start), len);
        if (len != nw || memcmp(ids, want, (size_t)len * sizeof(int)))
            fail_msg("%s grid %dx%d+%d: the slot's %d ids differ from the processor's %d", image_format_name(fmt), g.rows, g.cols,
                     g.thumb, len, nw);
        int t = 0, nfeat = 0;
        for (int i = 0; i < len; i++) {
            assert_int_equal(feat[i], want[i] == img);
            nfeat += feat[i];
            if (feat[i] && (i == 0 || !feat[i - 1] || fmt == IMAGE_FORMAT_INTERNVL)) {
                // a run of image tokens starts a tile (InternVL's tiles are back to back)
                if (fmt != IMAGE_FORMAT_INTERNVL || (i - start[0]) % tokens == 0) {
                    assert_true(t < tiles);
                    assert_int_equal(start[t], i);
                    t++;
                }
            }
        }
        assert_int_equal(t, tiles);
        assert_int_equal(nfeat, tokens * tiles);
        assert_true(image_slot_max_len(&slot, tiles) >= len);
        free(ids), free(start), free(feat), free(want), free(text);
    }
    image_slot_free(&slot);
}

static void test_internvl_slot(void **state) {
    (void)state;
    check_format(IMAGE_FORMAT_INTERNVL, "<IMG_CONTEXT>");
}

static void test_idefics3_slot(void **state) {
    (void)state;
    check_format(IMAGE_FORMAT_IDEFICS3, "<image>");
    // "\n\n" after the last row is one piece of text: whatever the tokenizer makes of it
    int *a, na = tokenizer_encode(g_tok, "\n\n", 2, 0, &a);
    printf("\"\\n\\n\" is %d token%s in synth's tokenizer\n", na, na == 1 ? "" : "s");
    free(a);
    // another byte-level BPE: the fixture Qwen2 tokenizer with Idefics3's markers added
    cJSON *root = json_load_file(fixture_path("tokenizer/qwen2.json"));
    cJSON *added = cJSON_GetObjectItem(root, "added_tokens");
    Tokenizer *q = tokenizer_load(fixture_path("tokenizer/qwen2.json"));
    int id = tokenizer_vocab_size(q);
    const char *marks[] = {"<fake_token_around_image>", "<global-img>", "<image>"};
    for (int i = 0; i < 3 + 36; i++) {
        char name[64];
        if (i < 3) snprintf(name, sizeof name, "%s", marks[i]);
        else snprintf(name, sizeof name, "<row_%d_col_%d>", (i - 3) / 6 + 1, (i - 3) % 6 + 1);
        if (tokenizer_token_id(q, name) >= 0) continue;
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", id++);
        cJSON_AddStringToObject(t, "content", name);
        cJSON_AddBoolToObject(t, "single_word", 0);
        cJSON_AddBoolToObject(t, "lstrip", 0);
        cJSON_AddBoolToObject(t, "rstrip", 0);
        cJSON_AddBoolToObject(t, "normalized", 0);
        cJSON_AddBoolToObject(t, "special", 1);
        cJSON_AddItemToArray(added, t);
    }
    tokenizer_free(q);
    char dir[600], path[700];
    make_temp_dir(dir, sizeof dir, "image_slot_qwen2");
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char *text = cJSON_PrintUnformatted(root);
    test_write_file(path, text);
    free(text);
    cJSON_Delete(root);
    q = tokenizer_load(path);
    na = tokenizer_encode(q, "\n\n", 2, 0, &a);
    printf("\"\\n\\n\" is %d token%s in the Qwen2 fixture's\n", na, na == 1 ? "" : "s");
    free(a);
    check_format_with(IMAGE_FORMAT_IDEFICS3, "<image>", q, path);
    tokenizer_free(q);
}

static void test_llava_slot(void **state) {
    (void)state;
    ImageSlot slot;
    image_slot_init(&slot, IMAGE_FORMAT_LLAVA, 7, 1, NULL, NULL);
    ImageGrid g = {1, 1, 0};
    int ids[7], start[1];
    uint8_t feat[7];
    assert_int_equal(image_slot_expand(&slot, g, ids, feat, start), 7);
    assert_int_equal(start[0], 0);
    for (int i = 0; i < 7; i++) assert_int_equal(feat[i], 1);
    image_slot_free(&slot);
}

static void missing_marker(void *arg) {
    (void)arg;
    Tokenizer *t = tokenizer_load(fixture_path("tokenizer/qwen2.json"));
    ImageSlot s;
    image_slot_init(&s, IMAGE_FORMAT_INTERNVL, 4, 1, t, fixture_path("tokenizer/qwen2.json"));
}

static void test_missing_marker_fatal(void **state) {
    (void)state;
    expect_fatal(missing_marker, NULL, "tokenizer/qwen2.json", "<img>", "image_format = llava");
    assert_int_equal(image_format_parse("idefics3"), IMAGE_FORMAT_IDEFICS3);
    assert_int_equal(image_format_parse("anyres"), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_internvl_slot),
        cmocka_unit_test(test_idefics3_slot),
        cmocka_unit_test(test_llava_slot),
        cmocka_unit_test(test_missing_marker_fatal),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
