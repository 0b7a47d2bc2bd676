// test_vlm_dir.c: whole-VLM directories (`model = DIR`, model/vlm_dir.h) against transformers +
// peft (scripts/make_vlm_dir_fixtures.py): InternVLForConditionalGeneration, the same weights in
// InternVL's remote-code layout (InternVLChatModel), Idefics3ForConditionalGeneration and
// LlavaForConditionalGeneration, each loaded from its one directory with its shipped projector:
// logits and loss to 1e-5, LoRA and projector gradients to 1e-3 (fp32, CPU) on batches of two
// images a row, each of 3 to 5 tiles (llava-hf: one tile, it does not tile), every tile one of
// VlmBatch's images at its slot's position as the loader lays them out; and the config.json
// problems that stop with one line naming the file and the key.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "data/tokenizer.h"
#include "model/vlm.h"
#include "model/vlm_dir.h"
#include "trainer/train_config.h"
#include "tests/testlib.h"

static char tmp[512];

// the directory's model planned for the fixture's batch, with the fixture's LoRA (r 4, alpha 8)
static void open_dir_model(Vlm *m, const VlmFixture *fx, const char *dir, VlmDir *d) {
    static char path[1024];
    snprintf(path, sizeof path, "%s", fixture_path(dir));
    vlm_dir_open(d, path);
    VlmSpec spec = {.vision_dir = path, .vision_layer = d->vision_layer, .llm_dir = path, .connector = d->connector,
                    .connector_scale = d->connector_scale,
                    .lora = {.r = 4, .alpha = 8.0f, .targets = lora_targets_parse("all")}, .max_B = fx->B,
                    .max_T = fx->T, .max_images = fx->n_img};
    vlm_init(m, kernels_cpu(), &spec);
    int n_conn = vlm_dir_load_connector(d, &m->train);
    assert_int_equal(n_conn, m->conn_n);
    assert_true(n_conn > 0);
    int n_lora = 0;
    for (int i = 0; i < m->train.n; i++) {
        if (m->train.p[i].group != PARAM_GROUP_LORA) continue;
        char name[PARAM_NAME_MAX + 8];
        snprintf(name, sizeof name, "lora.%s", m->train.p[i].name);
        size_t n;
        float *w = fixture_f32(&fx->f, name, &n);
        assert_int_equal(n, m->train.p[i].numel);
        params_upload(&m->train, i, w);
        free(w);
        n_lora++;
    }
    assert_int_equal(n_lora, 28);
}

// The batch the issue asks for: two images in every row, each of at least min_tiles tiles (one
// image's tiles in one row, in order), and the tiles' slots are exactly the ids' image tokens (the
// directory's image_token_id), so that svlm puts each tile's rows where transformers put them.
static void check_layout(const VlmFixture *fx, int image_id, int n_tok, int min_tiles) {
    const StTensor *it = st_find(&fx->f, "image_tiles");
    if (!it) fail_msg("%s: image_tiles missing", fx->f.path);
    int n_images = (int)st_numel(it), *tiles = fixture_i32(&fx->f, "image_tiles"), t = 0;
    int *per_row = xcalloc(fx->B, sizeof(int));
    for (int i = 0; i < n_images; i++) {
        assert_true(tiles[i] >= min_tiles);
        assert_true(t + tiles[i] <= fx->n_img);
        int row = fx->img_row[t];
        per_row[row]++;
        for (int k = 0; k < tiles[i]; k++, t++) {
            assert_int_equal(fx->img_row[t], row);
            if (k > 0) assert_true(fx->img_start[t] >= fx->img_start[t - 1] + n_tok);
            for (int p = fx->img_start[t]; p < fx->img_start[t] + n_tok; p++)
                assert_int_equal(fx->ids[row * fx->T + p], image_id);
        }
    }
    assert_int_equal(t, fx->n_img);
    int n_ids = 0;
    for (int i = 0; i < fx->B * fx->T; i++) n_ids += fx->ids[i] == image_id;
    assert_int_equal(n_ids, fx->n_img * n_tok);
    for (int r = 0; r < fx->B; r++) assert_int_equal(per_row[r], 2);
    printf("    %-58s %d rows x 2 images, %d tiles, %d image tokens\n", "batch", fx->B, fx->n_img, n_ids);
    free(per_row);
    free(tiles);
}

// the id of the directory's image token: its tokenizer.json's, which the config's image_token_id
// (image_token_index for llava; InternVL's remote-code config has none) must equal, as in the
// models that ship
static int dir_image_token_id(const char *dir, const VlmDir *d) {
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer.json", fixture_path(dir));
    if (!file_exists(path)) fail_msg("%s: no tokenizer.json", dir);
    Tokenizer *tok = tokenizer_load(path);
    int id = tokenizer_token_id(tok, d->image_token);
    tokenizer_free(tok);
    assert_true(id >= 0);
    if (d->image_token_id >= 0 && d->image_token_id != id)
        fail_msg("%s: config.json's image_token_id %d, tokenizer.json's %s %d", dir, d->image_token_id, d->image_token, id);
    return id;
}

// The markers around each image's tiles are the directory's tokenizer's own tokens, where its
// processor writes them: Idefics3 <fake_token_around_image> <row_i_col_j> before each grid tile (row
// major from <row_1_col_1>), <fake_token_around_image> <global-img> before the last (global) tile and
// <fake_token_around_image> after it; InternVL <img> before the first tile, </img> after the last.
// Every directory has a tokenizer, all of whose ids are inside the model's vocabulary.
static void check_markers(const VlmFixture *fx, const char *dir, VlmLayout layout, int n_tok) {
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer.json", fixture_path(dir));
    Tokenizer *tok = tokenizer_load(path);
    // every id the tokenizer writes has an embedding row (the row/col tokens end at 1046)
    if (tokenizer_vocab_size(tok) > fx->V)
        fail_msg("%s: %d tokens, the model's vocabulary %d", path, tokenizer_vocab_size(tok), fx->V);
    int *tiles = fixture_i32(&fx->f, "image_tiles"), n_images = (int)st_numel(st_find(&fx->f, "image_tiles")), t = 0;
    int fake = tokenizer_token_id(tok, "<fake_token_around_image>"), glob = tokenizer_token_id(tok, "<global-img>");
    int img = tokenizer_token_id(tok, "<img>"), end = tokenizer_token_id(tok, "</img>"), n_marked = 0;
    for (int i = 0; i < n_images; t += tiles[i], i++) {
        const int *row = fx->ids + fx->img_row[t] * fx->T;
        int first = fx->img_start[t], last = fx->img_start[t + tiles[i] - 1];
        if (layout == VLM_LAYOUT_IDEFICS3) {
            int r = 1, c = 0;
            for (int k = 0; k < tiles[i] - 1; k++) {
                int p = fx->img_start[t + k], ri, ci;
                assert_int_equal(row[p - 2], fake);
                const char *name = tokenizer_id_to_token(tok, row[p - 1]);
                if (!name || sscanf(name, "<row_%d_col_%d>", &ri, &ci) != 2)
                    fail_msg("%s: image %d tile %d: id %d before it is not a <row_i_col_j>", fx->f.path, i, k, row[p - 1]);
                if (ri == r && ci == c + 1) c++;
                else if (ri == r + 1 && ci == 1) r++, c = 1;
                else fail_msg("%s: image %d: <row_%d_col_%d> after <row_%d_col_%d>", fx->f.path, i, ri, ci, r, c);
                n_marked++;
            }
            assert_int_equal(row[last - 2], fake);
            assert_int_equal(row[last - 1], glob);
            assert_int_equal(row[last + n_tok], fake);
        } else if (layout == VLM_LAYOUT_INTERNVL_HF || layout == VLM_LAYOUT_INTERNVL_CHAT) {
            assert_int_equal(row[first - 1], img);
            assert_int_equal(row[last + n_tok], end);
        }
    }
    if (layout == VLM_LAYOUT_IDEFICS3) {
        assert_true(n_marked >= 2 * n_images);
        printf("    %-58s %d <row_i_col_j> (ids %d..%d), %d <global-img>\n", "markers", n_marked,
               tokenizer_token_id(tok, "<row_1_col_1>"), tokenizer_token_id(tok, "<row_6_col_6>"), n_images);
    }
    free(tiles);
    tokenizer_free(tok);
}

static void check_dir(const char *dir, const char *fixture, VlmLayout layout, int image_tokens, int min_tiles) {
    VlmFixture fx;
    vlm_fixture_open(&fx, fixture);
    Vlm m;
    VlmDir d;
    open_dir_model(&m, &fx, dir, &d);
    assert_int_equal(d.layout, layout);
    assert_int_equal(m.n_img_tokens, image_tokens);
    check_layout(&fx, dir_image_token_id(dir, &d), image_tokens, min_tiles);
    check_markers(&fx, dir, layout, image_tokens);
    const Kernels *k = m.k;
    char what[256];
    size_t n = (size_t)fx.B * fx.T * fx.V;
    float *want, *got = xmalloc(n * sizeof(float));
    vlm_logits(&m, &fx.batch, got);
    snprintf(what, sizeof what, "%s logits (%d of %d columns)", dir, fx.n_cols ? fx.n_cols : fx.V, fx.V);
    vlm_fixture_expect_logits(&fx, got, what, 1e-5);
    free(got);

    k->zero(m.train.grad, m.train.numel * sizeof(float));
    int M = 0, counted;
    for (int i = 0; i < fx.B * fx.T; i++) M += fx.targets[i] >= 0;
    double sum = vlm_forward_backward(&m, &fx.batch, 1.0f / M, &counted);
    assert_int_equal(counted, M);
    float loss = (float)(sum / M), *want_loss = fixture_f32(&fx.f, "loss", NULL);
    snprintf(what, sizeof what, "%s loss (%.6f vs %.6f)", dir, loss, want_loss[0]);
    test_expect_close(what, &loss, want_loss, 1, 1e-5);
    free(want_loss);
    // every trainable tensor (LoRA and the projector under this layout's names) has its gradient
    double worst = 0;
    int worst_i = 0;
    for (int i = 0; i < m.train.n; i++) {
        char name[PARAM_NAME_MAX + 8];
        snprintf(name, sizeof name, "grad.%s", m.train.p[i].name);
        want = fixture_f32(&fx.f, name, &n);
        assert_int_equal(n, m.train.p[i].numel);
        got = xmalloc(n * sizeof(float));
        k->download(got, params_grad(&m.train, i), n * sizeof(float));
        double e = rel_err(got, want, n);
        if (!(e < 1e-3)) fail_msg("%s: gradient %s relative error %.3e above 1e-3", dir, m.train.p[i].name, e);
        if (e > worst) worst = e, worst_i = i;
        free(want);
        free(got);
    }
    printf("    %-58s all %d within 1e-3 (worst %.2e, %s)\n", "gradients", m.train.n, worst, m.train.p[worst_i].name);
    vlm_free(&m);
    vlm_fixture_close(&fx);
}

static void test_internvl_hf(void **state) { check_dir("vlm_internvl_hf", "vlm_internvl.safetensors", VLM_LAYOUT_INTERNVL_HF, 25, 3); }
static void test_internvl_chat(void **state) {
    check_dir("vlm_internvl_chat", "vlm_internvl.safetensors", VLM_LAYOUT_INTERNVL_CHAT, 25, 3);
    VlmDir d;
    vlm_dir_open(&d, fixture_path("vlm_internvl_chat"));
    assert_string_equal(d.template_name, "Hermes-2");
    assert_string_equal(d.image_token, "<IMG_CONTEXT>");
    assert_int_equal(d.connector, CONNECTOR_INTERNVL);
}
static void test_idefics3(void **state) { check_dir("vlm_idefics3_dir", "vlm_idefics3.safetensors", VLM_LAYOUT_IDEFICS3, 4, 3); }
static void test_llava(void **state) { check_dir("vlm_llava_dir", "vlm_llava.safetensors", VLM_LAYOUT_LLAVA, 9, 1); }

// the plain LLM and vision directories are not whole models; the whole ones are
static void test_detect(void **state) {
    assert_true(vlm_dir_is(fixture_path("vlm_internvl_chat")));
    assert_true(vlm_dir_is(fixture_path("vlm_internvl_hf")));
    assert_true(vlm_dir_is(fixture_path("vlm_idefics3_dir")));
    assert_true(vlm_dir_is(fixture_path("vlm_llava_dir")));
    assert_false(vlm_dir_is(fixture_path("qwen2")));
    assert_false(vlm_dir_is(fixture_path("clip")));
    assert_false(vlm_dir_is(fixture_path("internvit")));  // a tower's internvl_chat-style config without llm_config
}

// a copy of fixture `name`'s (or, given a path, that directory's) config.json with `from` replaced by `to` (once) in tmp/<as>
static const char *edited(const char *name, const char *as, const char *from, const char *to) {
    static char dir[8][1024];
    static int slot;
    slot = (slot + 1) % 8;
    snprintf(dir[slot], sizeof dir[slot], "%s/%s", tmp, as);
    make_dirs(dir[slot]);
    char src[1100], dst[1100];
    snprintf(src, sizeof src, "%s/config.json", strchr(name, '/') ? name : fixture_path(name));  // a fixture, or an edited copy
    snprintf(dst, sizeof dst, "%s/config.json", dir[slot]);
    size_t n;
    char *text = test_slurp(src, &n);
    char *at = strstr(text, from);
    if (!at) fail_msg("%s: no \"%s\" to edit", src, from);
    char *out = xmalloc(n + strlen(to) + 1);
    size_t pre = (size_t)(at - text);
    memcpy(out, text, pre);
    strcpy(out + pre, to);
    strcat(out, at + strlen(from));
    test_write_file(dst, out);
    free(text);
    free(out);
    return dir[slot];
}

// writes text as file `name` into directory dir (an edited() copy)
static const char *with_file(const char *dir, const char *name, const char *text) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    test_write_file(p, text);
    return dir;
}

static void open_dir(void *arg) {
    VlmDir d;
    vlm_dir_open(&d, arg);
}

static void load_llm_config(void *arg) {
    LlmConfig c;
    llm_config_load(&c, arg);
}

// InternVL2.5's Qwen2.5 llm_config says rope_type "dynamic" (the fixture too): the default
// embedding within max_position_embeddings (512 here), refused past it
static void plan_too_long(void *arg) {
    VlmDir d;
    vlm_dir_open(&d, arg);
    VlmSpec spec = {.vision_dir = arg, .vision_layer = d.vision_layer, .llm_dir = arg, .connector = d.connector,
                    .connector_scale = d.connector_scale, .max_B = 1, .max_T = 600, .max_images = 1};
    Vlm m;
    vlm_init(&m, kernels_cpu(), &spec);
}

static void test_refusals(void **state) {
    expect_fatal(plan_too_long, (void *)fixture_path("vlm_internvl_chat"), "max_seq_len 600",
                 "max_position_embeddings 512", "dynamic RoPE");
    expect_fatal(open_dir, (void *)edited("vlm_internvl_chat", "arch", "\"InternVLChatModel\"", "\"Qwen2VLForConditionalGeneration\""),
                 "config.json", "Qwen2VLForConditionalGeneration", "not a whole vision-language model");
    expect_fatal(open_dir, (void *)edited("vlm_internvl_chat", "ps", "\"ps_version\": \"v2\"", "\"ps_version\": \"v1\""),
                 "config.json", "ps_version \"v1\"");
    expect_fatal(open_dir, (void *)edited("vlm_internvl_chat", "ratio", "\"downsample_ratio\": 0.5", "\"downsample_ratio\": 0.4"),
                 "config.json", "downsample_ratio 0.4");
    expect_fatal(open_dir, (void *)edited("vlm_internvl_chat", "nollm", "\"llm_config\"", "\"llm_cfg\""),
                 "config.json", "\"llm_config\"", "missing");
    expect_fatal(load_llm_config, (void *)edited("vlm_internvl_chat", "nollm2", "\"llm_config\"", "\"llm_cfg\""),
                 "config.json", "\"llm_config\"", "missing");
    expect_fatal(open_dir, (void *)edited("vlm_internvl_hf", "novis", "\"vision_config\"", "\"vision_cfg\""),
                 "config.json", "\"vision_config\"", "missing");
    expect_fatal(open_dir, (void *)edited("vlm_internvl_hf", "full", "\"vision_feature_select_strategy\": \"default\"",
                                          "\"vision_feature_select_strategy\": \"full\""),
                 "config.json", "vision_feature_select_strategy \"full\"");
    expect_fatal(open_dir, (void *)edited("vlm_llava_dir", "layers", "\"vision_feature_layer\": -2", "\"vision_feature_layer\": [-2, -1]"),
                 "config.json", "vision_feature_layer is a list");
}

// model = DIR in ./train's config: the keys it implies, and the ones it refuses
static void load_conf(void *arg) {
    char path[700];
    snprintf(path, sizeof path, "%s/t.conf", tmp);
    test_write_file(path, arg);
    TrainConfig *c = xcalloc(1, sizeof *c);
    train_config_load(c, path, 0, NULL);
    free(c);
}

static void test_train_config(void **state) {
    char text[2048], path[700];
    snprintf(text, sizeof text, "stage = 2\nmodel = %s\ndata = x.json\n", fixture_path("vlm_internvl_chat"));
    snprintf(path, sizeof path, "%s/t.conf", tmp);
    test_write_file(path, text);
    TrainConfig *c = xcalloc(1, sizeof *c);
    train_config_load(c, path, 0, NULL);
    assert_string_equal(c->connector, "internvl");
    assert_int_equal(c->pixel_shuffle, 2);
    assert_int_equal(c->vision_layer, -1);
    assert_string_equal(c->template_, "hermes2");  // config.json's "template": "Hermes-2"
    assert_string_equal(c->image_aspect, "crop");  // no pad2square: InternVL's resize
    assert_string_equal(c->vision, c->model);
    assert_string_equal(c->llm, c->model);
    // transformers' InternVL: its chat_template is ChatML without a system prompt, the image "<IMG_CONTEXT>\n"
    snprintf(text, sizeof text, "stage = 2\nmodel = %s\ndata = x.json\n", fixture_path("vlm_internvl_hf"));
    test_write_file(path, text);
    train_config_load(c, path, 0, NULL);
    assert_string_equal(c->template_, "internvl_hf");
    assert_string_equal(c->system, "");
    assert_string_equal(c->connector, "internvl_hf");
    snprintf(text, sizeof text, "stage = 2\nmodel = %s\ndata = x.json\n", fixture_path("vlm_idefics3_dir"));
    test_write_file(path, text);
    train_config_load(c, path, 0, NULL);
    assert_string_equal(c->template_, "idefics3");
    assert_int_equal(c->pixel_shuffle, 3);
    // llava-hf: its shipped chat_template.json is the llava_hf format
    snprintf(text, sizeof text, "stage = 2\nmodel = %s\ndata = x.json\n", fixture_path("vlm_llava_dir"));
    test_write_file(path, text);
    train_config_load(c, path, 0, NULL);
    assert_string_equal(c->template_, "llava_hf");
    assert_string_equal(c->connector, "llava_hf");
    free(c);

    static char bad[4][2048];
    snprintf(bad[0], sizeof bad[0], "model = %s\nvision = %s\ndata = x.json\n", fixture_path("vlm_internvl_chat"),
             fixture_path("clip"));
    expect_fatal(load_conf, bad[0], "model", "leave vision and llm out");
    snprintf(bad[1], sizeof bad[1], "model = %s\nconnector = mlp2x_gelu\ndata = x.json\n", fixture_path("vlm_internvl_chat"));
    expect_fatal(load_conf, bad[1], "connector = mlp2x_gelu", "the internvl projector");
    // a chat template that is none of svlm's formats: refused, never guessed
    snprintf(bad[2], sizeof bad[2], "model = %s\ndata = x.json\n", edited("vlm_llava_dir", "llava_nofmt", "\"llava\"", "\"llava\""));
    char ct[700];
    snprintf(ct, sizeof ct, "%s/llava_nofmt/chat_template.json", tmp);
    test_write_file(ct, "{\"chat_template\": \"{% for message in messages %}{{ message['role'].upper() + ': ' }}{% endfor %}\"}");
    char mv[1400];
    snprintf(mv, sizeof mv, "cp '%s/model.safetensors' '%s/llava_nofmt/'", fixture_path("vlm_llava_dir"), tmp);
    assert_int_equal(system(mv), 0);
    expect_fatal(load_conf, bad[2], "chat_template.json", "none of the formats svlm writes");
    // chat_template.jinja (transformers 5 saves the raw text) is read first
    char jin[700];
    snprintf(jin, sizeof jin, "%s/llava_nofmt/chat_template.jinja", tmp);
    test_write_file(jin, "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == "
                         "'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == "
                         "'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
                         "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}");
    char nofmt[700];
    snprintf(nofmt, sizeof nofmt, "%s/llava_nofmt", tmp);
    VlmDir d;
    vlm_dir_open(&d, nofmt);
    const char *sys = "unset";
    assert_int_equal(vlm_dir_template(&d, &sys), TEMPLATE_IDEFICS3);
    assert_null(sys);
    // no chat template at all (the llava directory without its chat_template.json and tokenizer.json)
    snprintf(bad[3], sizeof bad[3], "model = %s\ndata = x.json\n", edited("vlm_llava_dir", "llava_notmpl", "\"llava\"", "\"llava\""));
    snprintf(mv, sizeof mv, "cp '%s/model.safetensors' '%s/llava_notmpl/'", fixture_path("vlm_llava_dir"), tmp);
    assert_int_equal(system(mv), 0);
    expect_fatal(load_conf, bad[3], "no chat template", "set template");
}

// the image token check: config.json's image_token_id against the directory's tokenizer
static void check_token(void *arg) {
    VlmDir d;
    vlm_dir_open(&d, arg);
    char tp[1024];
    snprintf(tp, sizeof tp, "%s/tokenizer.json", fixture_path("vlm_internvl_hf"));
    Tokenizer *tok = tokenizer_load(tp);
    vlm_dir_check_image_token(&d, tok);
    tokenizer_free(tok);
}

// The way each model sees images, from its own files (model/vlm_dir.h): the slot format, the
// tiling (max_tiles 0 = the model's own) and the aspect, as ./train resolves them; an explicit
// value that contradicts the model, and the settings svlm cannot reproduce, stop in one line
static void test_tiling(void **state) {
    VlmDir d;
    vlm_dir_open(&d, fixture_path("vlm_internvl_chat"));  // dynamic_image_size false
    assert_int_equal(d.max_tiles, 1);
    assert_string_equal(d.image_format, "internvl");
    vlm_dir_open(&d, fixture_path("vlm_internvl_hf"));  // InternVLProcessor crops, max_patches 12 (default)
    assert_int_equal(d.max_tiles, 12);
    assert_string_equal(d.image_format, "internvl");
    vlm_dir_open(&d, fixture_path("vlm_idefics3_dir"));  // splitting on: 4 * 12 / 12 = 4 tiles a side
    assert_int_equal(d.max_tiles, 16);
    assert_string_equal(d.image_format, "idefics3");
    vlm_dir_open(&d, fixture_path("vlm_llava_dir"));
    assert_int_equal(d.max_tiles, 1);
    assert_string_equal(d.image_format, "llava");
    // Vintern / InternVL2's shipped settings: dynamic, 12 tiles + thumbnail
    const char *dyn = edited("vlm_internvl_chat", "dyn", "\"dynamic_image_size\": false,",
                             "\"dynamic_image_size\": true, \"use_thumbnail\": true, \"pad2square\": true,");
    dyn = edited(dyn, "dyn12", "\"max_dynamic_patch\": 1", "\"max_dynamic_patch\": 12");
    vlm_dir_open(&d, dyn);
    assert_int_equal(d.max_tiles, 12);
    assert_int_equal(d.pad_to_square, 0);  // dynamic_preprocess resizes: pad2square never pads a tile
    const char *pad = edited("vlm_internvl_chat", "pad", "\"dynamic_image_size\": false,",
                             "\"dynamic_image_size\": false, \"pad2square\": true,");
    vlm_dir_open(&d, pad);
    assert_int_equal(d.pad_to_square, 1);
    assert_int_equal(d.max_tiles, 1);
    // transformers' InternVL with its preprocessor_config.json
    const char *hf6 = with_file(edited("vlm_internvl_hf", "hf6", "\"internvl\"", "\"internvl\""), "preprocessor_config.json",
                                "{\"image_processor_type\": \"GotOcr2ImageProcessor\", \"crop_to_patches\": false, "
                                "\"max_patches\": 6, \"min_patches\": 1}");
    vlm_dir_open(&d, hf6);
    assert_int_equal(d.max_tiles, 6);
    // SmolVLM with splitting off: one tile (its splitting would still give 16)
    const char *nosplit = with_file(edited("vlm_idefics3_dir", "nosplit", "\"idefics3\"", "\"idefics3\""),
                                    "preprocessor_config.json",
                                    "{\"image_processor_type\": \"Idefics3ImageProcessor\", \"do_image_splitting\": false, "
                                    "\"size\": {\"longest_edge\": 36}, \"max_image_size\": {\"longest_edge\": 12}}");
    vlm_dir_open(&d, nosplit);
    assert_int_equal(d.max_tiles, 1);
    assert_int_equal(d.split_tiles, 9);

    // ./train's resolution: max_tiles 0 (the default) is the model's, another value stands
    char text[2048], path[700];
    snprintf(path, sizeof path, "%s/t.conf", tmp);
    TrainConfig *c = xcalloc(1, sizeof *c);
    snprintf(text, sizeof text, "stage = 2\nmodel = %s\ndata = x.json\n", dyn);
    test_write_file(path, text);
    train_config_load(c, path, 0, NULL);
    assert_int_equal(c->max_tiles, 12);
    assert_string_equal(c->image_format, "internvl");
    assert_string_equal(c->image_aspect, "crop");
    snprintf(text, sizeof text, "stage = 2\nmodel = %s\ndata = x.json\nmax_tiles = 4\n", dyn);
    test_write_file(path, text);
    train_config_load(c, path, 0, NULL);
    assert_int_equal(c->max_tiles, 4);  // fewer tiles to save memory
    snprintf(text, sizeof text, "stage = 2\nmodel = %s\ndata = x.json\n", pad);
    test_write_file(path, text);
    train_config_load(c, path, 0, NULL);
    assert_int_equal(c->max_tiles, 1);
    assert_string_equal(c->image_aspect, "pad");  // pad2square at one tile
    snprintf(text, sizeof text, "stage = 2\nmodel = %s\ndata = x.json\n", fixture_path("vlm_internvl_hf"));
    test_write_file(path, text);
    train_config_load(c, path, 0, NULL);
    assert_int_equal(c->max_tiles, 12);
    snprintf(text, sizeof text, "stage = 2\nmodel = %s\ndata = x.json\n", fixture_path("vlm_idefics3_dir"));
    test_write_file(path, text);
    train_config_load(c, path, 0, NULL);
    assert_int_equal(c->max_tiles, 16);
    assert_string_equal(c->image_format, "idefics3");
    // the separate vision / llm form: 0 means one tile
    snprintf(text, sizeof text, "vision = %s\nllm = %s\ndata = x.json\n", fixture_path("clip"), fixture_path("qwen2"));
    test_write_file(path, text);
    train_config_load(c, path, 0, NULL);
    assert_int_equal(c->max_tiles, 1);
    free(c);

    static char bad[6][2048];
    snprintf(bad[0], sizeof bad[0], "model = %s\ndata = x.json\nimage_format = llava\n", fixture_path("vlm_internvl_hf"));
    expect_fatal(load_conf, bad[0], "image_format = llava", "the internvl slot");
    snprintf(bad[1], sizeof bad[1], "model = %s\ndata = x.json\nimage_aspect = pad\n", fixture_path("vlm_internvl_hf"));
    expect_fatal(load_conf, bad[1], "image_aspect = pad", "does not pad its images");
    snprintf(bad[2], sizeof bad[2], "model = %s\ndata = x.json\nimage_aspect = pad\nmax_tiles = 4\n", pad);
    expect_fatal(load_conf, bad[2], "image_aspect = pad", "pads only one-tile images");
    snprintf(bad[3], sizeof bad[3], "model = %s\ndata = x.json\nmax_tiles = 4\n", fixture_path("vlm_idefics3_dir"));
    expect_fatal(load_conf, bad[3], "max_tiles = 4", "image splitting cuts up to 16 tiles", "at least 16");
    snprintf(bad[4], sizeof bad[4], "model = %s\ndata = x.json\nmax_tiles = -1\n", fixture_path("vlm_internvl_hf"));
    expect_fatal(load_conf, bad[4], "max_tiles", "0..64");
    // what svlm's tiling cannot reproduce
    expect_fatal(open_dir, (void *)edited(dyn, "nothumb", "\"use_thumbnail\": true", "\"use_thumbnail\": false"),
                 "config.json", "use_thumbnail = false");
    expect_fatal(open_dir, (void *)edited(dyn, "min2", "\"min_dynamic_patch\": 1", "\"min_dynamic_patch\": 2"),
                 "config.json", "min_dynamic_patch 2");
    expect_fatal(open_dir,
                 (void *)with_file(edited("vlm_internvl_hf", "hfmin", "\"internvl\"", "\"internvl\""), "preprocessor_config.json",
                                   "{\"image_processor_type\": \"GotOcr2ImageProcessor\", \"min_patches\": 2}"),
                 "preprocessor_config.json", "min_patches 2");
    // image_token_id must be the tokenizer's id of <IMG_CONTEXT> (1006 in the fixture's tokenizer)
    check_token((void *)fixture_path("vlm_internvl_hf"));
    expect_fatal(check_token, (void *)edited("vlm_internvl_hf", "tok", "\"image_token_id\": 1006", "\"image_token_id\": 1023"),
                 "config.json", "image_token_id is 1023", "<IMG_CONTEXT> the id 1006");
}

int main(void) {
    make_temp_dir(tmp, sizeof tmp, "vlm_dir");
    const struct CMUnitTest tests[] = {
        // the refusals first: their forked children must not inherit the CPU kernels' per-thread
        // scratch, which LeakSanitizer (asan_test_vlm_dir) would report at the child's exit
        cmocka_unit_test(test_detect),      cmocka_unit_test(test_refusals),      cmocka_unit_test(test_train_config),
        cmocka_unit_test(test_tiling),
        cmocka_unit_test(test_internvl_hf), cmocka_unit_test(test_internvl_chat), cmocka_unit_test(test_idefics3),
        cmocka_unit_test(test_llava),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
