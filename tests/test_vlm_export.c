// test_vlm_export.c: the whole-model round trip: `model = DIR` (the InternVL remote-code fixture,
// Vintern's layout, transformers' native InternVL, and Idefics3 / SmolVLM), ./train stage 2 for 3 steps from the
// shipped projector with the model's own chat format (llava-hf too, with its chat_template.json), ./export back to the model's layout
// (trainer/export_whole.c), then:
//   - the export holds every tensor of DIR under its name, shape and dtype; the tower's and every
//     other untrained tensor's bytes are DIR's; the projector is the checkpoint's; the LoRA targets
//     changed (merged); config.json, tokenizer and remote-code files are DIR's, byte for byte;
//   - svlm reads the export as a whole model: its logits equal those of DIR + the checkpoint's
//     projector and (unmerged) LoRA to 1e-5 on the parity fixture's batch;
//   - adapter/ holds every LoRA tensor under the class's module names;
//   - the run saw images as the model does: its own tiling (max_tiles 0 = the model's: transformers'
//     InternVL tiles up to 12 + thumbnail, the remote-code fixture says dynamic_image_size false,
//     Idefics3 with a preprocessor_config.json splits into 3 x 3 + global), the tiles per image the
//     run saw are the grid's, svlm_export.json records it and ./generate on the export tiles a wide
//     image the same way, its prompt laid out in the model's format (token counts from the grid);
//     ./generate --batch (rows of different grids together) answers as one at a time, and
//     ./evaluate runs on the tiled export with the same predictions batched and not.
// scripts/check_export.py loads the native export in transformers and compares its logits.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/json.h"
#include "common/safetensors.h"
#include "common/util.h"
#include "data/image.h"
#include "data/tokenizer.h"
#include "model/hf.h"
#include "model/vlm.h"
#include "model/vlm_dir.h"
#include "tests/testlib.h"

static char root[512], synth_dir[600];

// the directory of model: one the test made under root (a fixture directory with a file of its
// own, e.g. preprocessor_config.json) when there is one, else the fixture
static const char *model_dir(const char *model) {
    static char made[4][800];
    static int next;
    char *p = made[next++ % 4];
    snprintf(p, sizeof made[0], "%s/%s", root, model);
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode) ? p : fixture_path(model);
}

static int setup(void **state) {
    make_temp_dir(root, sizeof root, "vlm_export");
    snprintf(synth_dir, sizeof synth_dir, "%s/synth", root);
    return test_synth(root, synth_dir, 0);
}

// ./train (stage 2, 3 steps, template auto) on model = the fixture dir, then ./export; the run
// and export directories go to run / out
static void train_and_export_with(const char *model, const char *tag, const char *extra, char *run, char *out,
                                  size_t cap) {
    char conf[700], o[700], e[700], kv[1200];
    snprintf(conf, sizeof conf, "%s/%s.conf", root, tag);
    FILE *f = fopen(conf, "w");
    if (!f) fail_msg("%s: cannot write", conf);
    fprintf(f,
            "stage = 2\nmodel = %s\ndata = %s/data/stage2_train.json\nimage_folder = %s/data/images\n"
            "data_cache = %s/cache_%s\nmax_seq_len = 320\nbatch_size = 4\nglobal_batch = 4\nmax_steps = 3\nlr = 3e-2\n"
            "lora_r = 4\nlora_alpha = 8\nsave_every = 0\nseed = 7\ndevice = cpu\nthreads = 2\n%s",
            model_dir(model), synth_dir, synth_dir, root, model, extra);
    fclose(f);
    snprintf(run, cap, "%s/run_%s", root, tag);
    snprintf(out, cap, "%s/out_%s", root, tag);
    snprintf(kv, sizeof kv, "out_dir=%s", run);
    snprintf(o, sizeof o, "%s/train_%s.log", root, tag);
    snprintf(e, sizeof e, "%s/train_%s.err", root, tag);
    char *targv[] = {"./train", conf, kv, NULL};
    if (test_spawn(targv, o, e) != 0) fail_msg("./train on %s failed, see %s", model, e);
    char *log = test_slurp(o, NULL);
    if (!strstr(log, "own projector")) fail_msg("%s: the run did not start from the shipped projector", o);
    free(log);
    snprintf(o, sizeof o, "%s/export_%s.log", root, tag);
    snprintf(e, sizeof e, "%s/export_%s.err", root, tag);
    char *eargv[] = {"./export", run, out, NULL};
    if (test_spawn(eargv, o, e) != 0) fail_msg("./export of %s failed, see %s", run, e);
}

// a model of dir (whole) for the fixture batch: its own projector, or trainable's tensors
static void open_model(Vlm *m, const VlmFixture *fx, const char *dir, const char *trainable) {
    VlmDir d;
    vlm_dir_open(&d, dir);
    VlmSpec spec = {.vision_dir = dir, .vision_layer = d.vision_layer, .llm_dir = dir, .connector = d.connector,
                    .connector_scale = d.connector_scale, .max_B = fx->B, .max_T = fx->T, .max_images = fx->n_img};
    if (trainable) spec.lora = (LoraConfig){.r = 4, .alpha = 8.0f, .targets = lora_targets_parse("all")};
    vlm_init(m, kernels_cpu(), &spec);
    if (trainable) {
        int unmatched, n = params_load_file(&m->train, trainable, "", &unmatched);
        assert_int_equal(n, m->train.n);
        assert_int_equal(unmatched, 0);
    } else {
        assert_int_equal(vlm_dir_load_connector(&d, &m->train), m->train.n);
    }
}

// the number after `key` in file path's text (-1 when absent)
static double number_after(const char *path, const char *key) {
    char *text = test_slurp(path, NULL), *at = strstr(text, key);
    double v = at ? atof(at + strlen(key)) : -1;
    free(text);
    return v;
}

// The tiling a round trip expects from the model: its max_tiles, the grid (rows x cols, plus the
// thumbnail / global image when more than one) it gives the synth set's 64 x 64 images and the
// 90 x 30 test image, and the feature rows of one tile (all grids 1 x 1 for a one-tile model)
typedef struct {
    int max_tiles;
    int square_rows, square_cols, wide_rows, wide_cols;
    int tokens;  // per tile
} Tiling;

static int grid_tiles(int rows, int cols) { return rows * cols + (rows * cols > 1); }

// the tokens an image of rows x cols tiles becomes in the prompt, in the model's layout
// (data/image_slot.h), counted from the grid: InternVL <img> + rows of every tile + </img>;
// Idefics3 per tile <fake_token_around_image><row_i_col_j> + rows, "\n" after each row but the
// last, "\n\n" after it, then <fake_token_around_image><global-img> + rows +
// <fake_token_around_image> (one tile: the global image's alone); llava the rows alone
static int slot_tokens(const char *dir, const char *format, int rows, int cols, int k) {
    int tiles = grid_tiles(rows, cols);
    if (!strcmp(format, "internvl")) return 2 + tiles * k;
    if (!strcmp(format, "llava")) return tiles * k;
    assert_string_equal(format, "idefics3");
    if (tiles == 1) return 3 + k;
    char path[1000];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    Tokenizer *tok = tokenizer_load(path);
    int *ids, nl = tokenizer_encode(tok, "\n", 1, 0, &ids);
    free(ids);
    int nlnl = tokenizer_encode(tok, "\n\n", 2, 0, &ids);
    free(ids);
    tokenizer_free(tok);
    return rows * cols * (2 + k) + (rows - 1) * nl + nlnl + 3 + k;
}

// the prompt tokens ./generate reports in err ("prefill: N tokens")
static int prefill_tokens(const char *err) {
    int n = (int)number_after(err, "prefill: ");
    if (n <= 0) fail_msg("%s: no prefill line", err);
    return n;
}

// The run took max_tiles from the model (t): its config, the tiles the data got per image (every
// synth image is 64 x 64: t's square grid), svlm_export.json, and ./generate on the export, which
// cuts the 90 x 30 image into t's wide grid (its image tokens counted from the grid) and lays the
// tiles out as the model does: a 64 x 64 image's prompt is longer than the 90 x 30 one's by the
// difference of their slots in the model's layout (the text around them is the same)
static void check_tiling(const char *model, const char *run, const char *out, Tiling t) {
    char path[1000], log[1000], img[1000];
    const int tiles = t.max_tiles;
    snprintf(path, sizeof path, "%s/config.conf", run);
    assert_int_equal((int)number_after(path, "max_tiles      = "), tiles);
    snprintf(log, sizeof log, "%s/train_%s.log", root, model);
    double per = number_after(log, " tiles, ");
    const int sq = grid_tiles(t.square_rows, t.square_cols), wide = grid_tiles(t.wide_rows, t.wide_cols);
    printf("    %-58s max_tiles %d, %.2f tiles per image\n", model, tiles, per);
    assert_true(per == sq);
    if (tiles > 1) assert_true(per > 1.0);
    snprintf(path, sizeof path, "%s/svlm_export.json", out);
    cJSON *j = json_load_file(path);
    assert_int_equal(json_get_int(j, "max_tiles", path), tiles);
    cJSON_Delete(j);
    snprintf(img, sizeof img, "%s/wide_%s.jpg", root, model);
    uint8_t rgb[90 * 30 * 3];
    for (int i = 0; i < 90 * 30 * 3; i++) rgb[i] = (uint8_t)(i * 7 + i / 270);
    image_write_jpeg(img, rgb, 90, 30, 90, 1);
    char o[1000], e[1000], sq_img[1000];
    snprintf(sq_img, sizeof sq_img, "%s/data/images/img_00000.png", synth_dir);
    int prefill[2];
    for (int i = 0; i < 2; i++) {  // the square image first, then the wide one (its answer is compared below)
        snprintf(o, sizeof o, "%s/generate_%s.log", root, model);
        snprintf(e, sizeof e, "%s/generate_%s.err", root, model);
        char *gargv[] = {"./generate", (char *)out, "--image", i ? img : sq_img, "--prompt", "What is it?",
                         "--max-new-tokens", "3", "--device", "cpu", NULL};
        if (test_spawn(gargv, o, e) != 0) fail_msg("./generate on %s failed, see %s", out, e);
        prefill[i] = prefill_tokens(e);
    }
    char *text = test_slurp(e, NULL), want[100];
    snprintf(want, sizeof want, "(%d image tokens in %d tiles;", wide * t.tokens, wide);
    if (wide > 1 && !strstr(text, want))
        fail_msg("%s: ./generate did not tile the 90 x 30 image into %d row(s) x %d + thumbnail: no \"%s\"", e, t.wide_rows,
                 t.wide_cols, want);
    if (wide == 1) {
        if (strstr(text, " tiles;")) fail_msg("%s: ./generate tiled a one-tile model's image", e);
        snprintf(want, sizeof want, "(%d image tokens;", t.tokens);
        if (!strstr(text, want)) fail_msg("%s: ./generate did not give the image one tile: no \"%s\"", e, want);
    }
    free(text);
    VlmDir d;
    vlm_dir_open(&d, out);
    const int slot_sq = slot_tokens(out, d.image_format, t.square_rows, t.square_cols, t.tokens);
    const int slot_wide = slot_tokens(out, d.image_format, t.wide_rows, t.wide_cols, t.tokens);
    printf("    %-58s ./generate: 64 x 64 %d tiles, %d prompt tokens; 90 x 30 %d tiles, %d (%s layout: %d - %d)\n", model,
           sq, prefill[0], wide, prefill[1], d.image_format, slot_sq, slot_wide);
    assert_int_equal(prefill[0] - prefill[1], slot_sq - slot_wide);
    char *alone = test_slurp(o, NULL);
    alone[strcspn(alone, "\n")] = 0;  // the streamed answer

    // --batch: rows of other grids (the wide image, a synth square, none) together answer as alone
    char file[1000];
    snprintf(file, sizeof file, "%s/requests_%s.jsonl", root, model);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fprintf(f, "{\"image\": \"%s\", \"prompt\": \"What is it?\"}\n{\"prompt\": \"Hi\"}\n"
               "{\"image\": \"%s\", \"prompt\": \"Where is the circle?\"}\n", img, sq_img);
    fclose(f);
    snprintf(o, sizeof o, "%s/generate_batch_%s.log", root, model);
    snprintf(e, sizeof e, "%s/generate_batch_%s.err", root, model);
    char *bargv[] = {"./generate", (char *)out, "--batch", file, "--batch-size", "3", "--max-new-tokens", "3", "--device",
                     "cpu", NULL};
    if (test_spawn(bargv, o, e) != 0) fail_msg("./generate --batch on %s failed, see %s", out, e);
    text = test_slurp(o, NULL);
    cJSON *first = cJSON_Parse(strtok(text, "\n"));
    assert_non_null(first);
    assert_string_equal(json_get_str(first, "answer", o), alone);
    cJSON_Delete(first);
    free(text);
    free(alone);

    // ./evaluate: VQA items on the tiled images, batched and one at a time, the same predictions
    char data[1000], ev[2][1000];
    snprintf(data, sizeof data, "%s/vqa_%s.jsonl", root, model);
    f = fopen(data, "w");
    assert_non_null(f);
    fprintf(f, "{\"id\": \"w\", \"image\": \"wide_%s.jpg\", \"question\": \"What is it?\", \"answers\": [\"x\"]}\n"
               "{\"id\": \"s\", \"image\": \"synth/data/images/img_00000.png\", \"question\": \"Where?\", \"answers\": [\"y\"]}\n"
               "{\"id\": \"t\", \"image\": \"wide_%s.jpg\", \"question\": \"Which?\", \"answers\": [\"z\"]}\n", model, model);
    fclose(f);
    static const char *const bs[2] = {"1", "3"};
    for (int b = 0; b < 2; b++) {
        snprintf(ev[b], sizeof ev[b], "%s/eval_%s_%s", root, model, bs[b]);
        snprintf(o, sizeof o, "%s/evaluate_%s_%s.log", root, model, bs[b]);
        snprintf(e, sizeof e, "%s/evaluate_%s_%s.err", root, model, bs[b]);
        char *eargv[] = {"./evaluate", (char *)out, data, "--image-folder", root, "--batch-size", (char *)bs[b],
                         "--max-new-tokens", "3", "--out", ev[b], "--device", "cpu", NULL};
        if (test_spawn(eargv, o, e) != 0) fail_msg("./evaluate on %s failed, see %s", out, e);
    }
    char pa[1100], pb[1100];
    snprintf(pa, sizeof pa, "%s/predictions.jsonl", ev[0]);
    snprintf(pb, sizeof pb, "%s/predictions.jsonl", ev[1]);
    char *ta = test_slurp(pa, NULL), *tb = test_slurp(pb, NULL);
    assert_string_equal(ta, tb);
    int answered = 0;  // every item answered (none skipped)
    for (const char *q = ta; (q = strstr(q, "\"prediction\"")); q++) answered++;
    assert_int_equal(answered, 3);
    assert_null(strstr(ta, "skipped"));
    free(ta);
    free(tb);
}

// model: the fixture directory; batch: its parity fixture (the logits' batch); n_conn: the
// projector's tensors; peft_prefix: the class's module names of the LLM
// t: the tiling the run should take from the model; extra: config lines
static void check_round_trip(const char *model, const char *batch, int n_conn, const char *peft_prefix, const char *extra,
                             Tiling t) {
    char run[800], out[800], path[1000], orig[1000];
    train_and_export_with(model, model, extra, run, out, sizeof run);
    check_tiling(model, run, out, t);
    const char *src = model_dir(model);
    char ck_path[1000];
    snprintf(ck_path, sizeof ck_path, "%s/step_00000003/trainable.safetensors", run);
    StFile ck, a, b;
    st_open_or_die(&ck, ck_path);
    snprintf(orig, sizeof orig, "%s/model.safetensors", src);
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    st_open_or_die(&a, orig);
    st_open_or_die(&b, path);
    assert_int_equal(a.n, b.n);
    int same = 0, conn = 0, merged = 0;
    for (int i = 0; i < a.n; i++) {
        const StTensor *t = &a.tensors[i], *u = st_find(&b, t->name);
        if (!u) fail_msg("%s: tensor %s missing", path, t->name);
        assert_int_equal(u->dtype, t->dtype);
        assert_int_equal(u->ndim, t->ndim);
        for (int d = 0; d < t->ndim; d++) assert_true(u->shape[d] == t->shape[d]);
        size_t bytes = (size_t)st_numel(t) * st_dtype_size(t->dtype);
        int equal = !memcmp(st_data(&a, t), st_data(&b, u), bytes);
        char mname[700];
        snprintf(mname, sizeof mname, "model.%s", t->name);
        const StTensor *c = st_find(&ck, t->name) ? st_find(&ck, t->name) : st_find(&ck, mname);
        if (c && !strstr(c->name, ".lora_")) {  // the projector: the checkpoint's values
            float *x = xmalloc(bytes), *y = xmalloc(bytes);
            st_read_f32(&ck, c, x);
            st_read_f32(&b, u, y);
            assert_memory_equal(x, y, bytes);
            free(x);
            free(y);
            conn++;
        } else if ((strstr(t->name, "language_model") || strstr(t->name, "text_model")) && strstr(t->name, "_proj.weight")) {
            if (equal) fail_msg("%s: %s unchanged by the merge", path, t->name);
            merged++;
        } else {
            if (!equal) fail_msg("%s: %s differs from %s's", path, t->name, orig);
            same++;
        }
    }
    printf("    %-58s %d same, %d merged, %d projector\n", model, same, merged, conn);
    assert_int_equal(merged, 14);  // 2 layers x 7 projections
    assert_int_equal(conn, n_conn);
    st_close(&a);
    st_close(&b);
    // the other files as they are
    const char *files[] = {"config.json", "tokenizer.json", "modeling_internvl_chat.py", "chat_template.json",
                           "preprocessor_config.json"};
    for (int i = 0; i < 5; i++) {
        snprintf(orig, sizeof orig, "%s/%s", src, files[i]);
        snprintf(path, sizeof path, "%s/%s", out, files[i]);
        if (!file_exists(orig)) continue;
        if (!test_same_file(orig, path)) fail_msg("%s differs from %s", path, orig);
    }
    // the adapter: every LoRA tensor under the class's names
    snprintf(path, sizeof path, "%s/adapter/adapter_model.safetensors", out);
    st_open_or_die(&a, path);
    int n_lora = 0;
    for (int i = 0; i < ck.n; i++) {
        const char *n = ck.tensors[i].name;
        if (!strstr(n, ".lora_")) continue;
        char want[700];
        snprintf(want, sizeof want, "base_model.model.%s%s", peft_prefix, n + strlen("model."));
        if (!st_find(&a, want)) fail_msg("%s: %s missing", path, want);
        n_lora++;
    }
    assert_int_equal(n_lora, a.n);
    st_close(&a);
    st_close(&ck);

    // svlm's merged export = the original with the checkpoint, on the parity batch
    VlmFixture fx;
    vlm_fixture_open(&fx, batch);
    size_t n = (size_t)fx.B * fx.T * fx.V;
    float *want = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float));
    Vlm m;
    open_model(&m, &fx, src, ck_path);
    vlm_logits(&m, &fx.batch, want);
    vlm_free(&m);
    open_model(&m, &fx, out, NULL);
    vlm_logits(&m, &fx.batch, got);
    vlm_free(&m);
    char what[200];
    snprintf(what, sizeof what, "%s export logits vs the run's model", model);
    test_expect_close(what, got, want, n, 1e-5);
    free(want);
    free(got);
    vlm_fixture_close(&fx);

    // the export is a model directory of its own: trained with the chat format it records
    snprintf(path, sizeof path, "%s/svlm_export.json", out);
    cJSON *j = json_load_file(path);
    snprintf(orig, sizeof orig, "%s/config.conf", run);
    char *conf = test_slurp(orig, NULL);
    char line[200];
    snprintf(line, sizeof line, "template       = %s ", json_get_str(j, "template", path));
    if (!strstr(conf, line)) fail_msg("%s: template %s is not the run's", path, json_get_str(j, "template", path));
    free(conf);
    cJSON_Delete(j);
}

// InternVL: mlp1's LayerNorm and two Linears; Idefics3: one Linear. One-tile models: every grid
// 1 x 1. The InternVL fixtures' tiles are 30 pixels, 10 x 10 patches of 3, 25 rows after
// pixel shuffle 2
static const Tiling one_tile = {1, 1, 1, 1, 1, 0};
static void test_internvl_chat(void **state) {
    Tiling t = one_tile;
    t.tokens = 25;
    check_round_trip("vlm_internvl_chat", "vlm_internvl.safetensors", 6, "language_model.model.", "", t);
}
// transformers' native InternVL: up to 12 tiles + thumbnail (its processor's max_patches default)
static void test_internvl_hf(void **state) {
    check_round_trip("vlm_internvl_hf", "vlm_internvl.safetensors", 6, "model.language_model.", "",
                     (Tiling){.max_tiles = 12, .square_rows = 3, .square_cols = 3, .wide_rows = 1, .wide_cols = 3, .tokens = 25});
}
// max_tiles = 1 over the model's own splitting (no preprocessor_config.json: the class defaults,
// which give these 12-pixel images 16 tiles + the global one): one tile an image
static void test_idefics3(void **state) {
    Tiling t = one_tile;
    t.tokens = 4;
    check_round_trip("vlm_idefics3_dir", "vlm_idefics3.safetensors", 1, "model.text_model.", "max_tiles = 1\n", t);
}
// Idefics3 / SmolVLM trained on its own splitting: the fixture directory with a
// preprocessor_config.json of its own (test_idefics3_tiled_dir: longest edge 36, 12-pixel tiles),
// so the synth set's 64 x 64 images are 3 x 3 tiles + the global image and the 90 x 30 one 3 x 1
// + global; 4 rows a tile (6 x 6 patches of 2, scale_factor 3)
static void test_idefics3_tiled(void **state) {
    char dir[800];
    snprintf(dir, sizeof dir, "%s/vlm_idefics3_tiled", root);
    test_idefics3_tiled_dir(dir);
    check_round_trip("vlm_idefics3_tiled", "vlm_idefics3.safetensors", 1, "model.text_model.", "",
                     (Tiling){.max_tiles = 9, .square_rows = 3, .square_cols = 3, .wide_rows = 1, .wide_cols = 3, .tokens = 4});
}
// llava-hf: linear_1 and linear_2 with their biases; trained with its shipped chat template
// (llava_hf); 12-pixel images, 3 x 3 patches of 4: 9 rows
static void test_llava(void **state) {
    Tiling t = one_tile;
    t.tokens = 9;
    check_round_trip("vlm_llava_dir", "vlm_llava.safetensors", 4, "model.language_model.", "", t);
}

// freeze_connector = true: the shipped projector stays as it is, bit for bit, while LoRA trains
static void test_frozen_connector(void **state) {
    char run[800], out[800], path[1000];
    train_and_export_with("vlm_internvl_chat", "frozen", "freeze_connector = true\n", run, out, sizeof run);
    snprintf(path, sizeof path, "%s/step_00000003/trainable.safetensors", run);
    StFile ck;
    st_open_or_die(&ck, path);
    HfWeights w;
    hf_weights_open(&w, fixture_path("vlm_internvl_chat"));
    int n_conn = 0, moved = 0;
    for (int i = 0; i < ck.n; i++) {
        const StTensor *t = &ck.tensors[i];
        size_t n = (size_t)st_numel(t);
        float *x = xmalloc(n * sizeof(float));
        st_read_f32(&ck, t, x);
        if (strstr(t->name, ".lora_B.")) {
            for (size_t j = 0; j < n; j++) moved |= x[j] != 0;  // B starts at zero
        } else if (!strstr(t->name, ".lora_")) {
            float *y = xmalloc(n * sizeof(float));
            hf_weights_read(&w, t->name, t->ndim, t->shape, y);
            assert_memory_equal(x, y, n * sizeof(float));
            free(y);
            n_conn++;
        }
        free(x);
    }
    assert_int_equal(n_conn, 6);
    assert_true(moved);
    hf_weights_close(&w);
    st_close(&ck);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_internvl_chat),
        cmocka_unit_test(test_internvl_hf),
        cmocka_unit_test(test_idefics3),
        cmocka_unit_test(test_idefics3_tiled),
        cmocka_unit_test(test_llava),
        cmocka_unit_test(test_frozen_connector),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
