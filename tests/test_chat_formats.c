// test_chat_formats.c: the whole-model chat formats of data/template.c (hermes2, internvl2_5,
// idefics3, and chatml without a system prompt as transformers' InternVL writes it) against the
// models' own renderers (scripts/make_chat_format_fixtures.py: InternVL's conversation templates,
// transformers' apply_chat_template with SmolVLM's and InternVL's chat templates) on English,
// Vietnamese and Korean conversations: token ids, loss mask and image slot of every training
// sample and generation prompt; and template_recognize on the models' chat_template texts.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/util.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "tests/testlib.h"

static void test_formats(void **state) {
    cJSON *root = fixture_json("chat_formats/expected.json");
    Tokenizer *tok = tokenizer_load(fixture_path("chat_formats/tokenizer.json"));
    const cJSON *cases = fixture_item(root, "cases");
    int n_cases = 0, per_format[4] = {0};
    const char *formats[4] = {"hermes2", "internvl2_5", "internvl_hf", "smolvlm"};
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
        for (int f = 0; f < 4; f++) per_format[f] += !strcmp(fmt, formats[f]);
        free(ids);
        free(mask);
        free(turns);
        template_free(t);
        n_cases++;
    }
    printf("    %d conversations (ids, mask, image slot) equal to the models' own renderers\n", n_cases);
    for (int f = 0; f < 4; f++) assert_int_equal(per_format[f], 8);  // en, vi, ko, text-only; sample and prompt
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
    assert_int_equal(n, 6);
    assert_false(template_recognize("", &(TemplateKind){0}, &(const char *){NULL}));
    cJSON_Delete(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_kind_facts),
        cmocka_unit_test(test_recognize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
