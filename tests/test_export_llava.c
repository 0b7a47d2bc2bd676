// test_export_llava.c: ./export's self-contained layout and its LlavaForConditionalGeneration
// checkpoint (trainer/export_llava.c), on ./synth's tiny models with the mlp2x_gelu connector:
//   - vision/ is a copy of the tower's files (byte for byte), svlm.json names it relatively, and
//     ./generate answers the same with the training run's tower moved away; --link makes vision/ a
//     symbolic link to the tower instead;
//   - llava/model.safetensors holds the tower under vision_tower.vision_model.*, the connector as
//     multi_modal_projector.linear_1/2.*, every tensor of llm/ under language_model.*, with the
//     same bytes; the embedding gains one zero row for "<image>" (the synthetic vocabulary has no
//     spare row; its own "<image>", an Idefics3 marker, is renamed first so that the export adds
//     one), whose id is config.json's image_token_index and the tokenizer's;
//   - config.json, processor and generation files carry the values transformers needs.
// scripts/check_export.py loads the same export in transformers and compares greedy answers.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fs_safe.h"
#include "common/json.h"
#include "common/safetensors.h"
#include "common/util.h"
#include "data/tokenizer.h"
#include "tests/testlib.h"

static char root[512], synth_dir[600], run_dir[700], out_dir[700];

static int setup(void **state) {
    make_temp_dir(root, sizeof root, "export_llava");
    snprintf(synth_dir, sizeof synth_dir, "%s/synth", root);
    if (test_synth(root, synth_dir, 2) != 0) return -1;
    {  // the synthetic tokenizer carries "<image>" (data/image_slot.h's Idefics3 marker): renamed,
       // so that this export takes the path of a vocabulary without it
        char tp[700];
        snprintf(tp, sizeof tp, "%s/models/llm/tokenizer.json", synth_dir);
        size_t n;
        char *text = test_slurp(tp, &n), *at = strstr(text, "\"<image>\"");
        assert_non_null(at);
        char *fixed = xmalloc(n + 16);
        snprintf(fixed, n + 16, "%.*s\"<unused_image>\"%s", (int)(at - text), text, at + strlen("\"<image>\""));
        test_write_file(tp, fixed);
        free(fixed);
        free(text);
    }
    char conf[700], cache[700], o[700], e[700];
    snprintf(conf, sizeof conf, "%s/s2.conf", root);
    snprintf(cache, sizeof cache, "%s/cache", root);
    test_write_stage2_conf(conf, synth_dir, cache, "mlp2x_gelu", 160, 2, NULL);
    snprintf(run_dir, sizeof run_dir, "%s/run", root);
    char kv[760];
    snprintf(kv, sizeof kv, "out_dir=%s", run_dir);
    snprintf(o, sizeof o, "%s/train.log", root);
    snprintf(e, sizeof e, "%s/train.err", root);
    char *targv[] = {"./train", conf, kv, NULL};
    if (test_spawn(targv, o, e) != 0) return -1;
    snprintf(out_dir, sizeof out_dir, "%s/export", root);
    snprintf(o, sizeof o, "%s/export.log", root);
    snprintf(e, sizeof e, "%s/export.err", root);
    char *eargv[] = {"./export", run_dir, out_dir, NULL};
    return test_spawn(eargv, o, e) == 0 ? 0 : -1;
}

// ./generate's greedy answer on dir (8 tokens, one fixed image and prompt)
static char *answer(const char *dir) {
    char img[700], o[800], e[800];
    snprintf(img, sizeof img, "%s/data/images/bench_00000.png", synth_dir);
    snprintf(o, sizeof o, "%s/gen.out", root);
    snprintf(e, sizeof e, "%s/gen.err", root);
    char *argv[] = {"./generate", (char *)dir, "--image", img, "--prompt", "Where is the cross?", "--max-new-tokens", "8",
                    "--device", "cpu", NULL};
    if (test_spawn(argv, o, e) != 0) fail_msg("./generate %s failed, see %s", dir, e);
    return test_slurp(o, NULL);
}

static void test_vision_copied_and_linked(void **state) {
    char a[800], b[800];
    const char *files[] = {"config.json", "preprocessor_config.json", "model.safetensors"};
    for (int i = 0; i < 3; i++) {
        snprintf(a, sizeof a, "%s/vision/%s", out_dir, files[i]);
        snprintf(b, sizeof b, "%s/models/vision/%s", synth_dir, files[i]);
        assert_true(fs_is_file_nofollow(a));
        if (!test_same_file(a, b)) fail_msg("%s differs from %s", a, b);
    }
    snprintf(a, sizeof a, "%s/svlm.json", out_dir);
    cJSON *j = json_load_file(a);
    assert_string_equal(json_get_str(j, "vision", a), "vision");
    cJSON_Delete(j);
    // self-contained: the same answer with the run's tower gone
    char *before = answer(out_dir);
    snprintf(a, sizeof a, "%s/models/vision", synth_dir);
    snprintf(b, sizeof b, "%s/models/vision.away", synth_dir);
    assert_int_equal(rename(a, b), 0);
    char *after = answer(out_dir);
    assert_int_equal(rename(b, a), 0);
    printf("    ./generate with the tower moved away: \"%s\"\n", after);
    assert_true(strlen(before) > 0);
    assert_string_equal(before, after);
    // --link: a symbolic link to the tower
    char out2[760], o[800], e[800];
    snprintf(out2, sizeof out2, "%s/export_link", root);
    snprintf(o, sizeof o, "%s/export_link.log", root);
    snprintf(e, sizeof e, "%s/export_link.err", root);
    char *eargv[] = {"./export", run_dir, out2, "--link", NULL};
    assert_int_equal(test_spawn(eargv, o, e), 0);
    snprintf(b, sizeof b, "%s/vision", out2);
    struct stat st;
    assert_int_equal(lstat(b, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    char target[800], real[800];
    ssize_t n = readlink(b, target, sizeof target - 1);
    assert_true(n > 0);
    target[n] = 0;
    assert_non_null(realpath(a, real));
    assert_string_equal(target, real);
    char *linked = answer(out2);
    assert_string_equal(before, linked);
    free(before);
    free(after);
    free(linked);
}

static void expect_same_bytes(const StFile *a, const char *name_a, const StFile *b, const char *name_b) {
    const StTensor *x = st_find(a, name_a), *y = st_find(b, name_b);
    if (!x) fail_msg("%s: no %s", a->path, name_a);
    if (!y) fail_msg("%s: no %s", b->path, name_b);
    if (x->dtype != y->dtype || x->ndim != y->ndim || memcmp(x->shape, y->shape, sizeof(int64_t) * x->ndim) ||
        memcmp(st_data(a, x), st_data(b, y), x->end - x->begin))
        fail_msg("%s in %s differs from %s in %s", name_a, a->path, name_b, b->path);
}

static void test_llava_tensors(void **state) {
    char p[800];
    StFile lv, vis, conn, llm;
    snprintf(p, sizeof p, "%s/llava/model.safetensors", out_dir);
    st_open_or_die(&lv, p);
    snprintf(p, sizeof p, "%s/vision/model.safetensors", out_dir);
    st_open_or_die(&vis, p);
    snprintf(p, sizeof p, "%s/connector.safetensors", out_dir);
    st_open_or_die(&conn, p);
    snprintf(p, sizeof p, "%s/llm/model.safetensors", out_dir);
    st_open_or_die(&llm, p);
    char name[700];
    for (int i = 0; i < vis.n; i++) {  // the synthetic tower is saved without the vision_model. prefix
        snprintf(name, sizeof name, "vision_tower.vision_model.%s", vis.tensors[i].name);
        expect_same_bytes(&lv, name, &vis, vis.tensors[i].name);
    }
    expect_same_bytes(&lv, "multi_modal_projector.linear_1.weight", &conn, "model.mm_projector.0.weight");
    expect_same_bytes(&lv, "multi_modal_projector.linear_1.bias", &conn, "model.mm_projector.0.bias");
    expect_same_bytes(&lv, "multi_modal_projector.linear_2.weight", &conn, "model.mm_projector.2.weight");
    expect_same_bytes(&lv, "multi_modal_projector.linear_2.bias", &conn, "model.mm_projector.2.bias");
    int64_t vocab = 0, hidden = 0;
    for (int i = 0; i < llm.n; i++) {
        const StTensor *t = &llm.tensors[i];
        snprintf(name, sizeof name, "language_model.%s", t->name);
        if (strcmp(t->name, "model.embed_tokens.weight")) {
            expect_same_bytes(&lv, name, &llm, t->name);
            continue;
        }
        // one zero row more, for <image>
        vocab = t->shape[0];
        hidden = t->shape[1];
        const StTensor *e = st_find(&lv, name);
        assert_non_null(e);
        assert_int_equal(e->shape[0], vocab + 1);
        assert_int_equal(e->shape[1], hidden);
        size_t n = t->end - t->begin, row = n / (size_t)vocab;
        assert_memory_equal(st_data(&lv, e), st_data(&llm, t), n);
        const uint8_t *last = (const uint8_t *)st_data(&lv, e) + n;
        for (size_t j = 0; j < row; j++) assert_int_equal(last[j], 0);
    }
    assert_true(vocab > 0);
    assert_int_equal(lv.n, vis.n + 4 + llm.n);  // nothing else (tied embeddings: no lm_head)
    printf("    llava/model.safetensors: %d tensors = %d vision + 4 projector + %d LLM; embedding %lld -> %lld rows\n", lv.n,
           vis.n, llm.n, (long long)vocab, (long long)vocab + 1);

    // config.json, the tokenizer's <image>, processor files
    snprintf(p, sizeof p, "%s/llava/config.json", out_dir);
    cJSON *c = json_load_file(p);
    assert_string_equal(json_get_str(c, "model_type", p), "llava");
    assert_string_equal(fixture_item(c, "architectures")->child->valuestring, "LlavaForConditionalGeneration");
    int image_id = json_get_int(c, "image_token_index", p);
    assert_int_equal(image_id, vocab);
    assert_int_equal(json_get_int(c, "image_seq_length", p), 64);  // (64 / 8)^2 patches
    assert_int_equal(json_get_int(c, "vision_feature_layer", p), -2);
    assert_string_equal(json_get_str(c, "vision_feature_select_strategy", p), "default");
    assert_string_equal(json_get_str(c, "projector_hidden_act", p), "gelu");
    const cJSON *tc = fixture_item(c, "text_config"), *vc = fixture_item(c, "vision_config");
    assert_int_equal(json_get_int(tc, "vocab_size", p), vocab + 1);
    assert_int_equal(json_get_int(tc, "hidden_size", p), hidden);
    assert_string_equal(json_get_str(vc, "model_type", p), "clip_vision_model");
    assert_int_equal(json_get_int(vc, "patch_size", p), 8);
    cJSON_Delete(c);
    snprintf(p, sizeof p, "%s/llava/tokenizer.json", out_dir);
    Tokenizer *tok = tokenizer_load(p);
    assert_int_equal(tokenizer_token_id(tok, "<image>"), image_id);
    assert_true(tokenizer_is_special(tok, image_id));
    tokenizer_free(tok);
    snprintf(p, sizeof p, "%s/llava/processor_config.json", out_dir);
    c = json_load_file(p);
    assert_string_equal(json_get_str(c, "processor_class", p), "LlavaProcessor");
    assert_int_equal(json_get_int(c, "patch_size", p), 8);
    assert_int_equal(json_get_int(c, "num_additional_image_tokens", p), 1);
    cJSON_Delete(c);
    snprintf(p, sizeof p, "%s/llava/preprocessor_config.json", out_dir);
    c = json_load_file(p);
    assert_string_equal(json_get_str(c, "image_processor_type", p), "LlavaImageProcessor");
    assert_true(json_get_bool_opt(c, "do_pad", 0, p));  // image_aspect = pad
    assert_int_equal(json_get_int(fixture_item(c, "crop_size"), "height", p), 64);
    cJSON_Delete(c);
    snprintf(p, sizeof p, "%s/llava/generation_config.json", out_dir);
    c = json_load_file(p);
    assert_int_equal(fixture_item(c, "suppress_tokens")->child->valueint, image_id);
    assert_true(cJSON_GetArraySize(fixture_item(c, "eos_token_id")) >= 1);
    cJSON_Delete(c);
    snprintf(p, sizeof p, "%s/llava/chat_template.jinja", out_dir);
    char *jt = test_slurp(p, NULL);
    assert_non_null(strstr(jt, "You are a helpful assistant."));
    assert_non_null(strstr(jt, "'<|im_start|>assistant\\n'"));
    free(jt);
    st_close(&lv);
    st_close(&vis);
    st_close(&conn);
    st_close(&llm);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vision_copied_and_linked),
        cmocka_unit_test(test_llava_tensors),
    };
    struct CMUnitTest chosen[sizeof tests / sizeof tests[0]];
    size_t n = test_select(chosen, tests, sizeof tests / sizeof tests[0], argc > 1 ? argv[1] : NULL);
    return _cmocka_run_group_tests("tests", chosen, n, setup, NULL);
}
