// test_chat_formats.c: the whole-model chat formats of data/template.c (hermes2, internvl2_5,
// idefics3, llava_hf, internvl_hf: ChatML as transformers' InternVL writes it)
// against the models' own renderers (scripts/make_chat_format_fixtures.py: InternVL's conversation
// templates, transformers' apply_chat_template with SmolVLM's, InternVL's and llava-hf's chat
// templates) on English, Vietnamese and Korean conversations: token ids, loss mask and image slot
// of every training sample and generation prompt; and template_recognize on the models'
// chat_template texts.
// test_tiled: whole samples with tiled images (scripts/make_tiled_format_fixtures.py: transformers'
// InternVLProcessor, Idefics3Processor and LlavaProcessor on the rendered chat template and real
// images: 1 tile, several, 1x4 / 4x1, two images per sample) against the chain ./prepare and the
// loader run: template_encode_images -> image_grid (data/tiling.c) -> image_slots_insert
// (data/image_slot.c): ids, loss mask, feature rows and each image's grid.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/util.h"
#include "data/image_slot.h"
#include "data/shards.h"
#include "data/template.h"
#include "data/tiling.h"
#include "data/tokenizer.h"
#include "tests/testlib.h"

static void test_formats(void **state) {
    cJSON *root = fixture_json("chat_formats/expected.json");
    Tokenizer *tok = tokenizer_load(fixture_path("chat_formats/tokenizer.json"));
    const cJSON *cases = fixture_item(root, "cases");
    enum { N_FORMATS = 5 };
    int n_cases = 0, per_format[N_FORMATS] = {0};
    const char *formats[N_FORMATS] = {"hermes2", "internvl2_5", "internvl_hf", "smolvlm", "llava_hf"};
    for (const cJSON *c = cases->child; c; c = c->next) {
        const char *fmt = fixture_item(c, "format")->valuestring, *lang = fixture_item(c, "lang")->valuestring;
        const cJSON *sys = fixture_item(c, "system");
        int prompt = cJSON_IsTrue(fixture_item(c, "prompt"));
        Template *t = template_new(template_parse(fixture_item(c, "kind")->valuestring), tok,
                                   cJSON_IsString(sys) ? sys->valuestring : NULL, -1);
        const cJSON *jt = fixture_item(c, "turns");
        int nt = cJSON_GetArraySize(jt);
        Turn *turns = xcalloc(nt ? nt : 1, sizeof *turns);
        for (int i = 0; i < nt; i++) {
            const cJSON *e = cJSON_GetArrayItem(jt, i);
            turns[i] = (Turn){cJSON_GetArrayItem(e, 0)->valuestring, cJSON_GetArrayItem(e, 1)->valuestring};
        }
        int *ids = NULL, image_pos = -2;
        uint8_t *mask = NULL;
        char err[256] = "";
        int n = prompt ? template_encode_prompt(t, turns, nt, &ids, &image_pos, err, sizeof err)
                       : template_encode(t, turns, nt, &ids, &mask, &image_pos, err, sizeof err);
        if (n < 0) fail_msg("%s/%s%s: refused (%d): %s", fmt, lang, prompt ? " prompt" : "", n, err);
        const cJSON *want = fixture_item(c, "ids");
        const char *want_mask = fixture_item(c, "mask")->valuestring;
        if (n != cJSON_GetArraySize(want))
            fail_msg("%s/%s%s: %d ids, the model's renderer gives %d", fmt, lang, prompt ? " prompt" : "", n,
                     cJSON_GetArraySize(want));
        for (int i = 0; i < n; i++) {
            if (ids[i] != cJSON_GetArrayItem(want, i)->valueint)
                fail_msg("%s/%s%s: id %d is %d, want %d", fmt, lang, prompt ? " prompt" : "", i, ids[i],
                         cJSON_GetArrayItem(want, i)->valueint);
            if (!prompt && mask[i] != (uint8_t)(want_mask[i] - '0'))
                fail_msg("%s/%s: mask %d is %d, want %c", fmt, lang, i, mask[i], want_mask[i]);
        }
        assert_int_equal(image_pos, fixture_item(c, "image_pos")->valueint);
        for (int f = 0; f < N_FORMATS; f++) per_format[f] += !strcmp(fmt, formats[f]);
        free(ids);
        free(mask);
        free(turns);
        template_free(t);
        n_cases++;
    }
    printf("    %d conversations (ids, mask, image slot) equal to the models' own renderers\n", n_cases);
    for (int f = 0; f < N_FORMATS; f++) assert_int_equal(per_format[f], 8);  // en, vi, ko, text-only; sample and prompt
    tokenizer_free(tok);
    cJSON_Delete(root);
}

// the stop token and default system prompt of each new kind
static void test_kind_facts(void **state) {
    Tokenizer *tok = tokenizer_load(fixture_path("chat_formats/tokenizer.json"));
    Template *t = template_new(TEMPLATE_IDEFICS3, tok, NULL, -1);
    assert_int_equal(template_stop_id(t), tokenizer_token_id(tok, "<end_of_utterance>"));
    assert_string_equal(template_system_text(t), "");
    template_free(t);
    t = template_new(TEMPLATE_LLAVA_HF, tok, NULL, -1);  // no end token in its template: the tokenizer's eos
    assert_int_equal(template_stop_id(t), tokenizer_token_id(tok, "<|endoftext|>"));
    assert_string_equal(template_system_text(t), "");
    template_free(t);
    assert_int_equal(template_parse("llava_hf"), TEMPLATE_LLAVA_HF);
    t = template_new(TEMPLATE_INTERNVL_HF, tok, NULL, -1);  // ChatML's end token, no default system prompt
    assert_int_equal(template_stop_id(t), tokenizer_token_id(tok, "<|im_end|>"));
    assert_string_equal(template_system_text(t), "");
    template_free(t);
    assert_string_equal(template_name(template_parse("internvl_hf")), "internvl_hf");
    t = template_new(TEMPLATE_HERMES2, tok, NULL, -1);
    assert_int_equal(template_stop_id(t), tokenizer_token_id(tok, "<|im_end|>"));
    assert_non_null(strstr(template_system_text(t), "InternVL"));
    template_free(t);
    assert_int_equal(template_parse("internvl2_5"), TEMPLATE_INTERNVL2_5);
    assert_string_equal(template_name(TEMPLATE_IDEFICS3), "idefics3");
    tokenizer_free(tok);
}

static void test_recognize(void **state) {
    cJSON *root = fixture_json("chat_formats/expected.json");
    const cJSON *rec = fixture_item(root, "recognize");
    int n = 0;
    for (const cJSON *r = rec->child; r; r = r->next, n++) {
        const char *name = fixture_item(r, "name")->valuestring;
        const cJSON *want = fixture_item(r, "kind"), *sys = fixture_item(r, "system");
        TemplateKind kind;
        const char *system = "unset";
        int ok = template_recognize(fixture_item(r, "jinja")->valuestring, &kind, &system);
        if (cJSON_IsNull(want)) {
            if (ok) fail_msg("%s: recognised as %s, but it is none of svlm's formats", name, template_name(kind));
            continue;
        }
        if (!ok) fail_msg("%s: not recognised (want %s)", name, want->valuestring);
        assert_string_equal(template_name(kind), want->valuestring);
        if (cJSON_IsNull(sys)) assert_null(system);
        else assert_string_equal(system, sys->valuestring);
    }
    assert_int_equal(n, 7);
    assert_false(template_recognize("", &(TemplateKind){0}, &(const char *){NULL}));
    cJSON_Delete(root);
}

static void test_tiled(void **state) {
    cJSON *root = fixture_json("chat_formats/tiled.json");
    const char *tok_path = fixture_path("chat_formats/tokenizer.json");
    Tokenizer *tok = tokenizer_load(tok_path);
    int n_cases = 0, per_format[3] = {0}, n_multi = 0, n_tiled = 0;
    const char *formats[3] = {"internvl_hf", "smolvlm", "llava_hf"};
    for (const cJSON *c = fixture_item(root, "cases")->child; c; c = c->next) {
        const char *fmt = fixture_item(c, "format")->valuestring, *lang = fixture_item(c, "lang")->valuestring;
        const int prompt = cJSON_IsTrue(fixture_item(c, "prompt"));
        const cJSON *jp = fixture_item(c, "prep"), *sys = fixture_item(c, "system");
        const char *family = fixture_item(jp, "family")->valuestring;
        const int idefics3 = !strcmp(family, "idefics3"), llava = !strcmp(family, "clip");
        ImagePrep prep;
        image_prep_preset(&prep, image_prep_family_parse(family), fixture_item(jp, "size")->valueint);
        prep.max_tiles = fixture_item(jp, "max_tiles")->valueint;
        if (idefics3) prep.longest_edge = fixture_item(jp, "longest_edge")->valueint;
        ImageSlot slot;
        image_slot_init(&slot, idefics3 ? IMAGE_FORMAT_IDEFICS3 : llava ? IMAGE_FORMAT_LLAVA : IMAGE_FORMAT_INTERNVL,
                        fixture_item(jp, "tokens")->valueint, image_grid_max_side(&prep), tok, tok_path);
        Template *t = template_new(template_parse(fixture_item(c, "kind")->valuestring), tok,
                                   cJSON_IsString(sys) ? sys->valuestring : NULL, -1);
        const cJSON *jt = fixture_item(c, "turns");
        int nt = cJSON_GetArraySize(jt);
        Turn *turns = xcalloc(nt, sizeof *turns);
        for (int i = 0; i < nt; i++) {
            const cJSON *e = cJSON_GetArrayItem(jt, i);
            turns[i] = (Turn){cJSON_GetArrayItem(e, 0)->valuestring, cJSON_GetArrayItem(e, 1)->valuestring};
        }
        int *ids = NULL, pos[SHARDS_MAX_IMAGES], n_images = -1;
        uint8_t *mask = NULL;
        char err[256] = "";
        int n = prompt ? template_encode_prompt_images(t, turns, nt, &ids, pos, SHARDS_MAX_IMAGES, &n_images, err, sizeof err)
                       : template_encode_images(t, turns, nt, &ids, &mask, pos, SHARDS_MAX_IMAGES, &n_images, err, sizeof err);
        if (n < 0) fail_msg("%s/%s%s: refused (%d): %s", fmt, lang, prompt ? " prompt" : "", n, err);
        const cJSON *jimg = fixture_item(c, "images"), *jgrid = fixture_item(c, "grids");
        if (n_images != cJSON_GetArraySize(jimg))
            fail_msg("%s/%s%s: %d image slots for %d images", fmt, lang, prompt ? " prompt" : "", n_images,
                     cJSON_GetArraySize(jimg));
        // each image's grid from its size alone, as ./prepare computes it
        ImageGrid grids[SHARDS_MAX_IMAGES];
        int n_tiles = 0;
        for (int k = 0; k < n_images; k++) {
            const cJSON *wh = cJSON_GetArrayItem(jimg, k), *g = cJSON_GetArrayItem(jgrid, k);
            const int w = cJSON_GetArrayItem(wh, 0)->valueint, h = cJSON_GetArrayItem(wh, 1)->valueint;
            grids[k] = image_grid(&prep, w, h);
            ImageGrid want = {cJSON_GetArrayItem(g, 0)->valueint, cJSON_GetArrayItem(g, 1)->valueint,
                              cJSON_GetArrayItem(g, 2)->valueint};
            if (grids[k].rows != want.rows || grids[k].cols != want.cols || grids[k].thumb != want.thumb)
                fail_msg("%s/%s: image %d (%dx%d): grid %dx%d+%d, the processor's %dx%d+%d", fmt, lang, k, w, h,
                         grids[k].rows, grids[k].cols, grids[k].thumb, want.rows, want.cols, want.thumb);
            n_tiles += image_grid_tiles(grids[k]);
            n_tiled += image_grid_tiles(grids[k]) > 1;
        }
        // the expanded sample, through the loader's own composition
        int len = n;
        for (int k = 0; k < n_images; k++) len += image_slot_len(&slot, grids[k]);
        int *full = xmalloc((size_t)len * sizeof(int)), *tile_start = xmalloc((size_t)(n_tiles + 1) * sizeof(int));
        uint8_t *full_mask = xmalloc((size_t)len);
        assert_int_equal(image_slots_insert(&slot, ids, mask, n, pos, grids, n_images, full, full_mask, tile_start), len);
        // feature rows: each tile's tokens from its tile_start, in order, never overlapping
        uint8_t *feat = xcalloc((size_t)len, 1);
        for (int k = 0; k < n_tiles; k++) {
            assert_true(k == 0 || tile_start[k] >= tile_start[k - 1] + slot.tokens);
            for (int j = 0; j < slot.tokens; j++) feat[tile_start[k] + j] = 1;
        }
        // the processor's ids: its image token exactly at svlm's feature rows (llava writes 0 there,
        // the model never looks them up), every other id and the mask equal
        const int image_id = tokenizer_token_id(tok, idefics3 || llava ? "<image>" : "<IMG_CONTEXT>");
        const cJSON *want = fixture_item(c, "ids");
        const char *want_mask = fixture_item(c, "mask")->valuestring;
        if (len != cJSON_GetArraySize(want))
            fail_msg("%s/%s%s: %d ids, the processor gives %d", fmt, lang, prompt ? " prompt" : "", len,
                     cJSON_GetArraySize(want));
        for (int i = 0; i < len; i++) {
            const int w = cJSON_GetArrayItem(want, i)->valueint;
            if ((w == image_id) != feat[i])
                fail_msg("%s/%s%s: position %d: the processor's id %d, svlm's feature row flag %d", fmt, lang,
                         prompt ? " prompt" : "", i, w, feat[i]);
            if (!(llava && feat[i]) && full[i] != w)
                fail_msg("%s/%s%s: id %d is %d, the processor's %d", fmt, lang, prompt ? " prompt" : "", i, full[i], w);
            if (full_mask[i] != (uint8_t)(want_mask[i] - '0'))
                fail_msg("%s/%s%s: mask %d is %d, want %c", fmt, lang, prompt ? " prompt" : "", i, full_mask[i], want_mask[i]);
        }
        free(feat);
        n_cases++;
        for (int f = 0; f < 3; f++) per_format[f] += !strcmp(fmt, formats[f]);
        n_multi += n_images > 1;
        free(full), free(full_mask), free(tile_start), free(ids), free(mask), free(turns);
        template_free(t);
        image_slot_free(&slot);
    }
    printf("    %d samples (%d internvl_hf, %d smolvlm, %d llava_hf; %d with 2 images, %d tiled images) equal to the "
           "processors'\n", n_cases, per_format[0], per_format[1], per_format[2], n_multi, n_tiled);
    assert_int_equal(n_cases, 50);
    assert_int_equal(n_multi, 13);
    assert_true(n_tiled >= 30);
    tokenizer_free(tok);
    cJSON_Delete(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_kind_facts),
        cmocka_unit_test(test_recognize),
        cmocka_unit_test(test_tiled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
