// test_hf_load.c: loading Hugging Face directories, and every kind of bad model input failing
// with one error line that names the file (and the tensor or key), exit status 1, no crash.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/json.h"
#include "common/safetensors.h"
#include "common/util.h"
#include "model/llm.h"
#include "model/vit.h"
#include "model/vlm.h"
#include "tests/testlib.h"

static char tmp[512];

static void sh(const char *fmt, const char *a, const char *b) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    if (system(cmd) != 0) fail_msg("command failed: %s", cmd);
}

// a fresh copy of a fixture directory under tmp; returns its path
static const char *copy_fixture(const char *name, const char *as) {
    static char path[8][1024];
    static int i;
    i = (i + 1) % 8;
    snprintf(path[i], sizeof path[i], "%s/%s", tmp, as);
    char cmd[2100];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", path[i], fixture_path(name), path[i]);
    if (system(cmd) != 0) fail_msg("copy failed");
    return path[i];
}

// rewrites dir/model.safetensors: drops tensor `drop`, stores tensor `as_int` as I32
static void rewrite_weights(const char *dir, const char *drop, const char *as_int) {
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/model.safetensors", dir);
    snprintf(dst, sizeof dst, "%s/model.tmp", dir);
    StFile f;
    st_open_or_die(&f, src);
    StWriter *w = st_writer_new();
    for (int t = 0; t < f.n; t++) {
        const StTensor *st = &f.tensors[t];
        if (drop && strcmp(st->name, drop) == 0) continue;
        StDtype dt = as_int && strcmp(st->name, as_int) == 0 ? ST_I32 : st->dtype;
        st_writer_add(w, st->name, dt, st->ndim, st->shape, st_data(&f, st));
    }
    char err[512];
    assert_int_equal(st_writer_save(w, dst, err, sizeof err), 0);
    st_writer_free(w);
    st_close(&f);
    assert_int_equal(rename(dst, src), 0);
}

// replaces the first occurrence of `from` in dir/file by `to`
static void edit_file(const char *dir, const char *file, const char *from, const char *to) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    size_t len;
    char *s = file_read_all(path, &len);
    assert_non_null(s);
    char *at = strstr(s, from);
    if (!at) fail_msg("%s lacks \"%s\"", path, from);
    FILE *f = fopen(path, "wb");
    fwrite(s, 1, at - s, f);
    fputs(to, f);
    fputs(at + strlen(from), f);
    fclose(f);
    free(s);
}

static void truncate_file(const char *dir, const char *file, long keep) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    assert_int_equal(truncate(path, keep), 0);
}

static const char *g_dir;
static void load_llm(void *arg) {
    Llm m;
    LoraConfig lora = {0};
    llm_load(&m, kernels_cpu(), g_dir, &lora, NULL);
}
static void load_vit(void *arg) {
    Vit v;
    vit_load(&v, kernels_cpu(), g_dir, arg ? *(int *)arg : -2, 1);
}

static void test_good_directories_load(void **state) {
    LlmConfig c;
    llm_config_load(&c, fixture_path("qwen2"));
    assert_string_equal(c.model_type, "qwen2");
    assert_int_equal(c.vocab, 131);
    assert_int_equal(c.head_dim, 8);
    assert_int_equal(c.kv_heads, 2);
    assert_true(c.qkv_bias && !c.o_bias);
    assert_true(c.rope_theta == 1e6f);
    llm_config_load(&c, fixture_path("llama"));
    assert_int_equal(c.head_dim, 12);  // given explicitly, not hidden / heads
    assert_true(!c.qkv_bias && c.tied == 0);
    VitConfig vc;
    vit_config_load(&vc, fixture_path("clip_full"));  // nested vision_config
    assert_int_equal(vc.hidden, 40);
    assert_int_equal(vc.grid, 6);
    assert_int_equal(vc.act, VIT_ACT_QUICK_GELU);

    // a transformers-4 style config: rope_theta at the top level
    const char *d = copy_fixture("qwen2", "qwen2_v4");
    edit_file(d, "config.json", "\"rope_parameters\": {\n    \"rope_theta\": 1000000.0,\n    \"rope_type\": \"default\"\n  },",
              "\"rope_theta\": 250000.0,");
    llm_config_load(&c, d);
    assert_true(c.rope_theta == 250000.0f);
}

typedef struct {
    const char *what;
    const char *fixture;
    void (*make)(const char *dir);
    const char *needles[3];
} BadModel;

static long data_start(const char *d) {
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", d);
    StFile f;
    st_open_or_die(&f, path);
    long at = (long)f.data_start;
    st_close(&f);
    return at;
}
static void mk_truncated(const char *d) { truncate_file(d, "model.safetensors", data_start(d) + 3000); }
static void mk_header_beyond(const char *d) { truncate_file(d, "model.safetensors", 100); }
static void mk_offsets_beyond(const char *d) {
    // shrink the data section by the last tensor's worth without touching the header
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", d);
    StFile f;
    st_open_or_die(&f, path);
    long size = (long)f.size;
    st_close(&f);
    truncate_file(d, "model.safetensors", size - 4);
}
static void mk_overlap(const char *d) {
    // move model.norm.weight's offsets onto the start of the data section
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", d);
    size_t len;
    char *s = file_read_all(path, &len);
    char *at = strstr(s + 8, "\"model.norm.weight\"");  // past the length, which holds NUL bytes
    assert_non_null(at);
    char *off = strstr(at, "\"data_offsets\":[");
    off += strlen("\"data_offsets\":[");
    char *end = strchr(off, ']');
    // same span length, begin 0: "0,192" padded with spaces to the old width keeps the header size
    char repl[64];
    snprintf(repl, sizeof repl, "0,%d", 48 * 4);
    size_t w = end - off;
    assert_true(strlen(repl) <= w);
    memset(off, ' ', w);
    memcpy(off, repl, strlen(repl));
    FILE *f = fopen(path, "wb");
    fwrite(s, 1, len, f);
    fclose(f);
    free(s);
}
static void mk_shape(const char *d) { edit_file(d, "config.json", "\"intermediate_size\": 72", "\"intermediate_size\": 70"); }
static void mk_dtype(const char *d) { rewrite_weights(d, NULL, "model.layers.1.mlp.up_proj.weight"); }
static void mk_missing(const char *d) { rewrite_weights(d, "model.layers.0.self_attn.k_proj.bias", NULL); }
static void mk_bad_json(const char *d) { edit_file(d, "config.json", "\"hidden_size\": 48,", "\"hidden_size\": 48"); }
static void mk_bad_key(const char *d) { edit_file(d, "config.json", "\"hidden_size\": 48", "\"hidden_size\": \"48\""); }
static void mk_no_key(const char *d) { edit_file(d, "config.json", "\"vocab_size\": 131", "\"vocab_sizes\": 131"); }
static void mk_bad_type(const char *d) { edit_file(d, "config.json", "\"model_type\": \"qwen2\"", "\"model_type\": \"gemma3\""); }
static void mk_rope(const char *d) { edit_file(d, "config.json", "\"rope_type\": \"default\"", "\"rope_type\": \"yarn\""); }
static void mk_no_config(const char *d) { sh("rm '%s/config.json'%s", d, ""); }
static void mk_no_weights(const char *d) { sh("rm '%s/model.safetensors'%s", d, ""); }
static void mk_missing_shard(const char *d) { sh("rm '%s/model-00003-of-00005.safetensors'%s", d, ""); }
static void mk_untied_no_head(const char *d) { edit_file(d, "config.json", "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false"); }
// numbers the model then uses: a huge or non-positive value is refused before any cast (issue 14)
static void mk_eps(const char *d) { edit_file(d, "config.json", "\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": 1e300"); }
static void mk_theta(const char *d) { edit_file(d, "config.json", "\"rope_theta\": 1000000.0", "\"rope_theta\": -1"); }
static void mk_eos(const char *d) { edit_file(d, "config.json", "\"eos_token_id\": null", "\"eos_token_id\": 1e300"); }
static void mk_gqa(const char *d) { edit_file(d, "config.json", "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 4"); }

static const BadModel bad_llm[] = {
    {"truncated weights", "qwen2", mk_truncated, {"model.safetensors", "beyond the data section"}},
    {"header length beyond the file", "qwen2", mk_header_beyond, {"model.safetensors", "header length", "exceeds the file size"}},
    {"data offsets out of range", "qwen2", mk_offsets_beyond, {"model.safetensors", "beyond the data section"}},
    {"overlapping tensors", "qwen2", mk_overlap, {"model.safetensors", "model.norm.weight", "overlaps"}},
    {"shape disagrees with config.json", "qwen2", mk_shape, {"model.safetensors", "model.layers.0.mlp.gate_proj.weight", "config.json implies [70, 48]"}},
    {"integer dtype", "qwen2", mk_dtype, {"model.safetensors", "model.layers.1.mlp.up_proj.weight", "dtype I32"}},
    {"missing tensor", "qwen2", mk_missing, {"model.safetensors", "model.layers.0.self_attn.k_proj.bias", "not found"}},
    {"malformed config.json", "qwen2", mk_bad_json, {"config.json", "malformed JSON at byte", "line"}},
    {"config value of the wrong type", "qwen2", mk_bad_key, {"config.json", "hidden_size", "must be a number"}},
    {"config key missing", "qwen2", mk_no_key, {"config.json", "missing key \"vocab_size\""}},
    {"unsupported model_type", "qwen2", mk_bad_type, {"config.json", "gemma3", "not supported"}},
    {"unsupported RoPE scaling", "qwen2", mk_rope, {"config.json", "yarn"}},
    {"no config.json", "qwen2", mk_no_config, {"config.json", "missing"}},
    {"no weights", "qwen2", mk_no_weights, {"neither model.safetensors nor model.safetensors.index.json"}},
    {"missing shard", "qwen2_sharded", mk_missing_shard, {"model.safetensors.index.json", "model-00003-of-00005.safetensors", "missing"}},
    {"untied config without lm_head", "qwen2", mk_untied_no_head, {"tie_word_embeddings is false", "lm_head.weight"}},
    {"kv heads that do not divide heads", "qwen2", mk_gqa, {"config.json", "not a multiple of num_key_value_heads"}},
    {"rms_norm_eps out of range", "qwen2", mk_eps, {"config.json", "key \"rms_norm_eps\" must be in (0, 1)"}},
    {"negative rope_theta", "qwen2", mk_theta, {"config.json", "key \"rope_theta\" must be in (0, 1e30)"}},
    {"eos id beyond int", "qwen2", mk_eos, {"config.json", "key \"eos_token_id\" must be a token id"}},
};

static void test_bad_llm_inputs(void **state) {
    for (size_t i = 0; i < sizeof bad_llm / sizeof bad_llm[0]; i++) {
        const BadModel *c = &bad_llm[i];
        char as[64];
        snprintf(as, sizeof as, "bad_llm_%zu", i);
        const char *d = copy_fixture(c->fixture, as);
        c->make(d);
        g_dir = d;
        printf("    %s\n", c->what);
        expect_fatal(load_llm, NULL, c->needles[0], c->needles[1] ? c->needles[1] : c->needles[0],
                     c->needles[2] ? c->needles[2] : c->needles[0]);
    }
    g_dir = "/nonexistent/model";
    expect_fatal(load_llm, NULL, "/nonexistent/model", "not found");
}

static void mk_nonsquare(const char *d) { edit_file(d, "config.json", "\"image_size\": 24", "\"image_size\": [24, 32]"); }
static void mk_indivisible(const char *d) { edit_file(d, "config.json", "\"image_size\": 24", "\"image_size\": 26"); }
static void mk_ln_eps(const char *d) { edit_file(d, "config.json", "\"layer_norm_eps\": 1e-05", "\"layer_norm_eps\": 0"); }
static void mk_not_clip(const char *d) { rewrite_weights(d, "embeddings.patch_embedding.weight", NULL); }

static void test_bad_vision_inputs(void **state) {
    const BadModel cases[] = {
        {"non-square image size", "clip", mk_nonsquare, {"config.json", "image_size is a list", "square"}},
        {"image size not a multiple of the patch", "clip", mk_indivisible, {"config.json", "image_size 26 is not a multiple of patch_size 4"}},
        {"no patch embedding", "clip", mk_not_clip, {"not a CLIP vision model"}},
        {"layer_norm_eps zero", "clip", mk_ln_eps, {"config.json", "key \"layer_norm_eps\" must be in (0, 1)"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char as[64];
        snprintf(as, sizeof as, "bad_vit_%zu", i);
        const char *d = copy_fixture(cases[i].fixture, as);
        cases[i].make(d);
        g_dir = d;
        printf("    %s\n", cases[i].what);
        expect_fatal(load_vit, NULL, cases[i].needles[0], cases[i].needles[1] ? cases[i].needles[1] : cases[i].needles[0]);
    }
    g_dir = fixture_path("clip");
    int layer = -5;
    expect_fatal(load_vit, &layer, "vision_layer = -5 is out of range for a 3-layer vision encoder");
    layer = 4;
    expect_fatal(load_vit, &layer, "vision_layer = 4");
}

// ldp pools 2x2, so a 7x7 patch grid is refused before anything is allocated
static void load_odd_grid(void *arg) {
    VlmSpec spec = {.vision_dir = g_dir, .vision_layer = -2, .llm_dir = fixture_path("qwen2"),
                    .connector = CONNECTOR_LDP, .max_B = 1, .max_T = 8, .max_images = 1};
    Vlm m;
    vlm_init(&m, kernels_cpu(), &spec);
}

static void test_odd_grid_for_ldp(void **state) {
    const char *d = copy_fixture("clip", "clip_odd");
    edit_file(d, "config.json", "\"image_size\": 24", "\"image_size\": 28");
    // the position table must match the 7x7 grid for the config to be consistent
    g_dir = d;
    expect_fatal(load_odd_grid, NULL, "ldp", "even patch grid", "7x7");
}

static void test_json_errors(void **state) {
    char err[256];
    const char *bad = "{\n  \"a\": 1,\n  \"b\": [1, 2,, 3]\n}";
    assert_null(json_parse(bad, strlen(bad), "x.json", err, sizeof err));
    assert_non_null(strstr(err, "x.json: malformed JSON at byte 25 (line 3, column 14)"));
    const char *trail = "{\"a\": 1} }";
    assert_null(json_parse(trail, strlen(trail), "y.json", err, sizeof err));
    assert_non_null(strstr(err, "at byte 9"));
    cJSON *ok = json_parse("{\"n\": 2.5, \"s\": \"t\", \"z\": null}", 31, "z.json", err, sizeof err);
    assert_non_null(ok);
    assert_true(json_get_num_opt(ok, "n", 0, "z.json") == 2.5);
    assert_int_equal(json_get_int_opt(ok, "z", 7, "z.json"), 7);  // null counts as absent
    assert_string_equal(json_get_str(ok, "s", "z.json"), "t");
    cJSON_Delete(ok);
}

int main(void) {
    make_temp_dir(tmp, sizeof tmp, "hf_load");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_directories_load),
        cmocka_unit_test(test_bad_llm_inputs),
        cmocka_unit_test(test_bad_vision_inputs),
        cmocka_unit_test(test_odd_grid_for_ldp),
        cmocka_unit_test(test_json_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
