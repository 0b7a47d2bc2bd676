// model_dir.c: export and run directories for generation (see model_dir.h).
#include "model/model_dir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/safetensors.h"
#include "common/util.h"
#include "data/image_prep.h"
#include "model/vlm_dir.h"
#include "trainer/export.h"
#include "trainer/train_config.h"


static void copy_str(char *dst, size_t cap, const char *src, const char *what) {
    if (strlen(src) >= cap) fatal("%s: path too long (%zu bytes)", what, strlen(src));
    memcpy(dst, src, strlen(src) + 1);
}

// a directory named in file: absolute as is; relative: under base first, then the current directory
static void resolve_dir(char *out, size_t cap, const char *base, const char *p, const char *key, const char *file) {
    if (!p[0]) fatal("%s: %s is empty", file, key);
    char tmp[2 * MODEL_DIR_PATH];
    if (p[0] != '/') {
        path_join(tmp, sizeof tmp, base, p);
        if (dir_exists(tmp)) {
            copy_str(out, cap, tmp, file);
            return;
        }
    }
    if (dir_exists(p)) {
        copy_str(out, cap, p, file);
        return;
    }
    if (p[0] == '/') fatal("%s: %s directory %s not found", file, key, p);
    fatal("%s: %s directory \"%s\" not found (neither under %s nor in the current directory)", file, key, p, base);
}

static void resolve_export(ModelDirSpec *s, const char *dir) {
    char path[2 * MODEL_DIR_PATH];
    path_join(path, sizeof path, dir, "svlm.json");
    cJSON *root = json_load_file(path);
    s->is_export = 1;
    resolve_dir(s->vision_dir, sizeof s->vision_dir, dir, json_get_str(root, "vision", path), "vision", path);
    s->vision_layer = json_get_int_opt(root, "vision_layer", -2, path);
    s->connector = connector_type_parse(json_get_str_opt(root, "connector", "ldp", path));
    s->connector_scale = json_get_int_opt(root, "pixel_shuffle", 0, path);
    s->template_kind = template_parse(json_get_str_opt(root, "template", "chatml", path));
    const cJSON *sys = cJSON_GetObjectItemCaseSensitive(root, "system");
    if (sys && !cJSON_IsNull(sys)) {
        if (!cJSON_IsString(sys)) fatal("%s: \"system\" must be a string or null", path);
        copy_str(s->system, sizeof s->system, sys->valuestring, path);
        s->has_system = 1;
    }
    s->image_size = json_get_int_opt(root, "image_size", 0, path);
    int hm = json_get_float3(root, "image_mean", s->image_mean, path), hs = json_get_float3(root, "image_std", s->image_std, path);
    if (hm != hs) fatal("%s: image_mean and image_std go together", path);
    s->has_image_norm = hm;
    for (int i = 0; hs && i < 3; i++)
        if (!(s->image_std[i] > 0)) fatal("%s: image_std must be positive", path);
    s->pad_to_square = json_get_bool_opt(root, "pad_to_square", 1, path);
    s->image_tokens = json_get_int_opt(root, "image_tokens", 0, path);
    s->max_tiles = json_get_int_opt(root, "max_tiles", 1, path);
    if (s->max_tiles < 1 || s->max_tiles > 64) fatal("%s: max_tiles must be in 1..64", path);
    copy_str(s->image_format, sizeof s->image_format, json_get_str_opt(root, "image_format", "", path), path);
    if (s->image_format[0] && image_format_parse(s->image_format) < 0) fatal("%s: image_format must be llava, internvl or idefics3", path);
    const char *llm = json_get_str_opt(root, "llm", "llm", path);
    char llm_path[2 * MODEL_DIR_PATH];
    path_join(llm_path, sizeof llm_path, dir, llm);
    if (llm[0] != '/' && !dir_exists(llm_path))
        fatal("%s: missing (an export directory holds the LoRA-merged LLM there)", llm_path);
    resolve_dir(s->llm_dir, sizeof s->llm_dir, dir, llm, "llm", path);
    cJSON_Delete(root);
    path_join(s->weights, sizeof s->weights, dir, "connector.safetensors");
    if (!file_exists(s->weights)) fatal("%s: missing (an export directory holds the connector there)", s->weights);
}

void model_dir_spec_from_config(ModelDirSpec *s, const TrainConfig *tc, const char *base, const char *conf) {
    resolve_dir(s->vision_dir, sizeof s->vision_dir, base, tc->vision, "vision", conf);
    resolve_dir(s->llm_dir, sizeof s->llm_dir, base, tc->llm, "llm", conf);
    s->vision_layer = tc->vision_layer;
    s->connector = connector_type_parse(tc->connector);
    s->connector_scale = tc->pixel_shuffle;
    s->template_kind = template_parse(tc->template_);
    if (strcmp(tc->system, "default") != 0) {
        copy_str(s->system, sizeof s->system, tc->system, conf);
        s->has_system = 1;
    }
    s->pad_to_square = strcmp(tc->image_aspect, "pad") == 0;
    s->max_tiles = tc->max_tiles;
    copy_str(s->image_format, sizeof s->image_format, tc->image_format, conf);
    if (tc->stage == 2) {
        s->lora.r = tc->lora_r;
        s->lora.alpha = (float)tc->lora_alpha;
        s->lora.rslora = tc->rslora;
        s->lora.targets = lora_targets_parse(tc->lora_targets);
    }
}

static void resolve_run(ModelDirSpec *s, const char *dir) {
    char run_dir[2 * MODEL_DIR_PATH], step[2 * MODEL_DIR_PATH], conf[2 * MODEL_DIR_PATH + 16];
    export_resolve(dir, step, run_dir, sizeof step);  // the newest complete checkpoint, as ./export takes it
    path_join(conf, sizeof conf, run_dir, "config.conf");
    TrainConfig *tc = xcalloc(1, sizeof *tc);
    train_config_load(tc, conf, 0, NULL);
    s->is_export = 0;
    model_dir_spec_from_config(s, tc, run_dir, conf);
    free(tc);
    path_join(s->weights, sizeof s->weights, step, "trainable.safetensors");
    if (!file_exists(s->weights)) fatal("%s: missing (a checkpoint holds the connector and LoRA weights there)", s->weights);
}

// a whole VLM: everything from its own files (and svlm_export.json's chat format, when ./export wrote it)
static void resolve_whole(ModelDirSpec *s, const char *dir) {
    VlmDir d;
    vlm_dir_open(&d, dir);
    s->is_whole = 1;
    copy_str(s->vision_dir, sizeof s->vision_dir, dir, dir);
    copy_str(s->llm_dir, sizeof s->llm_dir, dir, dir);
    s->vision_layer = d.vision_layer;
    s->connector = d.connector;
    s->connector_scale = d.connector_scale;
    s->pad_to_square = d.pad_to_square;  // InternVL's pad2square; the others' processors resize
    s->max_tiles = d.max_tiles;          // the model's own tiling and slot (model/vlm_dir.h)
    copy_str(s->image_format, sizeof s->image_format, d.image_format, dir);
    snprintf(s->weights, sizeof s->weights, "whole %s model", vlm_layout_name(d.layout));  // no file: said in messages
    char path[2 * MODEL_DIR_PATH];
    path_join(path, sizeof path, dir, "svlm_export.json");
    const char *system = NULL;
    cJSON *root = NULL;
    if (file_exists(path)) {
        root = json_load_file(path);
        s->template_kind = template_parse(json_get_str(root, "template", path));
        s->pad_to_square = json_get_bool_opt(root, "pad_to_square", s->pad_to_square, path);
        s->max_tiles = json_get_int_opt(root, "max_tiles", s->max_tiles, path);  // what the run trained with
        if (s->max_tiles < 1 || s->max_tiles > 64) fatal("%s: max_tiles must be in 1..64", path);
        const cJSON *sys = cJSON_GetObjectItemCaseSensitive(root, "system");
        if (sys && !cJSON_IsNull(sys)) {
            if (!cJSON_IsString(sys)) fatal("%s: \"system\" must be a string or null", path);
            system = sys->valuestring;
        }
    } else {
        s->template_kind = vlm_dir_template(&d, &system);
    }
    if (system) {
        copy_str(s->system, sizeof s->system, system, dir);
        s->has_system = 1;
    }
    if (root) cJSON_Delete(root);
}

void model_dir_resolve(ModelDirSpec *s, const char *dir) {
    memset(s, 0, sizeof *s);
    if (!dir_exists(dir)) fatal("%s: model directory not found", dir);
    copy_str(s->dir, sizeof s->dir, dir, dir);
    if (vlm_dir_is(dir)) {
        resolve_whole(s, dir);
        return;
    }
    char p[2 * MODEL_DIR_PATH], q[2 * MODEL_DIR_PATH];
    path_join(p, sizeof p, dir, "svlm.json");
    if (file_exists(p)) {
        resolve_export(s, dir);
        return;
    }
    path_join(p, sizeof p, dir, "config.conf");
    path_join(q, sizeof q, dir, "state.json");
    if (!file_exists(p) && !file_exists(q))
        fatal("%s: not a model directory (an export has svlm.json, a run directory config.conf and step_NNNNNNNN/, a whole "
              "model a config.json of a vision-language model)", dir);
    resolve_run(s, dir);
}

// every trainable tensor of the model in the file, and nothing else
static void check_weights_file(const ParamSet *train, const char *path) {
    StFile f;
    st_open_or_die(&f, path);
    for (int i = 0; i < train->n; i++)
        if (!st_find(&f, train->p[i].name))
            fatal("%s: tensor %s missing (the model directory's settings do not match its weights)", path, train->p[i].name);
    for (int t = 0; t < f.n; t++)
        if (params_find(train, f.tensors[t].name) < 0)
            fatal("%s: tensor %s is not part of the model (the model directory's settings do not match its weights)",
                  path, f.tensors[t].name);
    st_close(&f);
}

static void tokenizer_path(const ModelDirSpec *s, char *tok_path, size_t cap) {
    path_join(tok_path, cap, s->llm_dir, "tokenizer.json");
    if (!file_exists(tok_path)) fatal("%s: missing (the language model directory needs its tokenizer)", tok_path);
}

// what generation needs beside the weights: image settings, tokenizer, template, stop ids
static void gen_model_text(GenModel *g, const char *system) {
    const ModelDirSpec *s = &g->spec;
    char tok_path[2 * MODEL_DIR_PATH];
    tokenizer_path(s, tok_path, sizeof tok_path);
    const VitConfig *vc = &g->m->vit.cfg;
    vit_image_prep(vc, s->vision_dir, &g->prep);
    g->image_size = g->prep.size;
    if (s->image_size && s->image_size != vc->image_size)
        fatal("%s/svlm.json: image_size is %d but the vision model takes %d", s->dir, s->image_size, vc->image_size);
    if (s->has_image_norm) {
        memcpy(g->prep.mean, s->image_mean, sizeof g->prep.mean);
        memcpy(g->prep.std, s->image_std, sizeof g->prep.std);
    }
    g->prep.pad_to_square = s->pad_to_square;
    g->prep.max_tiles = s->max_tiles > 0 ? s->max_tiles : 1;

    g->tok = tokenizer_load(tok_path);
    if (vlm_dir_is(s->llm_dir)) {  // a whole model (or a run of one): its image token is its tokenizer's
        VlmDir d;
        vlm_dir_open(&d, s->llm_dir);
        vlm_dir_check_image_token(&d, g->tok);
    }
    const char *fmt = s->image_format[0] ? s->image_format : connector_image_format(s->connector);
    image_slot_init(&g->slot, (ImageFormat)image_format_parse(fmt), g->m->n_img_tokens, image_grid_max_side(&g->prep), g->tok,
                    tok_path);
    const LlmConfig *lc = &g->m->llm.cfg;
    if (tokenizer_vocab_size(g->tok) > lc->vocab)
        fatal("%s: %d tokens but the language model has only %d embeddings", tok_path, tokenizer_vocab_size(g->tok), lc->vocab);
    const char *sys = system ? system : s->has_system ? s->system : NULL;
    g->tpl = template_new(s->template_kind, g->tok, sys, lc->eos_id);
    g->stop_ids[g->n_stop++] = template_stop_id(g->tpl);
    if (lc->eos_id >= 0 && lc->eos_id != g->stop_ids[0]) g->stop_ids[g->n_stop++] = lc->eos_id;
}

void gen_model_load(GenModel *g, const Kernels *k, const char *dir, const char *system) {
    memset(g, 0, sizeof *g);
    ModelDirSpec *s = &g->spec;
    model_dir_resolve(s, dir);
    char tok_path[2 * MODEL_DIR_PATH];
    tokenizer_path(s, tok_path, sizeof tok_path);  // before the weights: a quick failure

    VitConfig vc;  // the tiles of one image at most: the tower runs them together
    vit_config_load(&vc, s->vision_dir);
    ImagePrep prep;
    vit_image_prep(&vc, s->vision_dir, &prep);
    prep.max_tiles = s->max_tiles > 0 ? s->max_tiles : 1;
    VlmSpec vs = {.vision_dir = s->vision_dir, .vision_layer = s->vision_layer, .llm_dir = s->llm_dir,
                  .connector = s->connector, .connector_scale = s->connector_scale, .lora = s->lora, .max_B = 1,
                  .max_T = 1, .max_images = image_tiles_max(&prep)};
    vlm_init(&g->vlm, k, &vs);
    g->m = &g->vlm;
    if (s->is_whole) {
        VlmDir d;
        vlm_dir_open(&d, s->dir);
        vlm_dir_load_connector(&d, &g->vlm.train);  // its own projector; LoRA, if any, is merged
    } else {
        check_weights_file(&g->vlm.train, s->weights);
        params_load_file(&g->vlm.train, s->weights, "", NULL);
    }
    if (s->image_tokens && s->image_tokens != g->vlm.n_img_tokens)
        fatal("%s/svlm.json: image_tokens is %d but the %s connector on this vision model gives %d", s->dir,
              s->image_tokens, connector_type_name(s->connector), g->vlm.n_img_tokens);
    gen_model_text(g, system);
}

void gen_model_borrow(GenModel *g, Vlm *m, const ModelDirSpec *spec, const char *system) {
    memset(g, 0, sizeof *g);
    g->spec = *spec;
    g->m = m;
    gen_model_text(g, system);
}

void gen_model_free(GenModel *g) {
    image_slot_free(&g->slot);
    if (g->tpl) template_free(g->tpl);
    if (g->tok) tokenizer_free(g->tok);
    if (g->m == &g->vlm) vlm_free(&g->vlm);
    memset(g, 0, sizeof *g);
}

static void read_image(const GenModel *g, const char *path, Image *out);

// the tiles of grid g of img, preprocessed: (image_grid_tiles(g), 3, S, S) malloc'd
static float *tiles_of(const GenModel *g, const Image *img, ImageGrid grid) {
    int S = g->prep.size;
    float *px = xmalloc((size_t)image_grid_tiles(grid) * 3 * S * S * sizeof(float));
    image_preprocess_tiles(img, &g->prep, grid, px);
    return px;
}

void gen_model_image(const GenModel *g, const char *path, float *pixels) {
    Image img;
    read_image(g, path, &img);
    image_preprocess(&img, &g->prep, pixels);
    image_free(&img);
}

int gen_model_prompt_tiles(const GenModel *g, const char *text, const char *image, int **ids, float **pixels,
                           int **tile_start, int *n_tiles) {
    int *raw, pos, n = gen_model_prompt(g, text, image != NULL, &raw, &pos);
    if (pixels) *pixels = NULL;
    *tile_start = NULL;
    *n_tiles = 0;
    if (!image) {
        *ids = raw;
        return n;
    }
    Image img;
    read_image(g, image, &img);
    ImageGrid grid = image_grid(&g->prep, img.w, img.h);
    int nt = image_grid_tiles(grid), len = image_slot_len(&g->slot, grid);
    if (pixels) *pixels = tiles_of(g, &img, grid);
    image_free(&img);
    int *out = xmalloc((size_t)(n + len) * sizeof(int));
    *tile_start = xmalloc((size_t)nt * sizeof(int));
    image_slots_insert(&g->slot, raw, NULL, n, &pos, &grid, 1, out, NULL, *tile_start);
    free(raw);
    *ids = out;
    *n_tiles = nt;
    return n + len;
}

float *gen_model_image_tiles(const GenModel *g, const char *path, int *n_tiles) {
    Image img;
    read_image(g, path, &img);
    ImageGrid grid = image_grid(&g->prep, img.w, img.h);
    float *px = tiles_of(g, &img, grid);
    image_free(&img);
    *n_tiles = image_grid_tiles(grid);
    return px;
}

static void read_image(const GenModel *g, const char *path, Image *out) {
    if (dir_exists(path)) fatal("%s: is a directory, not an image", path);
    size_t len;
    char *bytes = file_read_all(path, &len);
    if (!bytes) fatal("%s: cannot read image: %s", path, strerror(errno));
    Image img;
    char err[256];
    int rc = image_prep_decode(&g->prep, (const uint8_t *)bytes, len, &img, err, sizeof err);
    free(bytes);
    switch (rc) {
    case 0: break;
    case IMAGE_ERR_CORRUPT:
    case IMAGE_ERR_TRUNCATED: fatal("%s: corrupt image: %s", path, err);
    case IMAGE_ERR_FORMAT: fatal("%s: bad image: %s", path, err);
    case IMAGE_ERR_TOO_LARGE: fatal("%s: image too large: %s", path, err);
    default: fatal("%s: cannot decode image: %s", path, err);
    }
    *out = img;
}

int gen_model_prompt(const GenModel *g, const char *text, int with_image, int **ids, int *image_pos) {
    int has_tag = strstr(text, "<image>") != NULL;
    if (!with_image && has_tag) fatal("the prompt holds <image> but no image was given");
    char *full = NULL;
    if (with_image && !has_tag) {
        size_t n = strlen(text) + 9;
        full = xmalloc(n);
        snprintf(full, n, "<image>\n%s", text);
    }
    Turn t = {"human", full ? full : text};
    char err[256];
    int n = template_encode_prompt(g->tpl, &t, 1, ids, image_pos, err, sizeof err);
    free(full);
    if (n < 0) fatal("prompt cannot be encoded with the %s template: %s", template_name(g->spec.template_kind), err);
    CHECK(!with_image || *image_pos >= 0, "gen_model_prompt: the image slot was lost");
    return n;
}
