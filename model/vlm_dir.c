// vlm_dir.c: whole-VLM Hugging Face directories (see vlm_dir.h): the layout table, config.json's
// keys per layout, the text sub-config for the LLM loader and the shipped connector's weights.
#include "model/vlm_dir.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/util.h"
#include "model/hf.h"

// one row per layout: the names config.json may carry and its text sub-config
typedef struct {
    const char *name;
    const char *archs[3];    // architectures[0] values (NULL-ended)
    const char *types[3];    // model_type values
    const char *text_key;    // the LLM's sub-config
    const char *text_type;   // the model_type its config class assumes when the sub-config has none
} LayoutRow;

static const LayoutRow layouts[N_VLM_LAYOUTS] = {
    [VLM_LAYOUT_INTERNVL_CHAT] = {"internvl_chat", {"InternVLChatModel", NULL}, {"internvl_chat", NULL}, "llm_config", NULL},
    [VLM_LAYOUT_INTERNVL_HF] = {"internvl_hf", {"InternVLForConditionalGeneration", NULL}, {"internvl", NULL}, "text_config", "qwen2"},
    [VLM_LAYOUT_IDEFICS3] = {"idefics3", {"Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration", NULL},
                             {"idefics3", "smolvlm", NULL}, "text_config", "llama"},
    [VLM_LAYOUT_LLAVA] = {"llava", {"LlavaForConditionalGeneration", NULL}, {"llava", NULL}, "text_config", "llama"},
};

const char *vlm_layout_name(VlmLayout l) {
    CHECK(l >= 0 && l < N_VLM_LAYOUTS, "layout %d", (int)l);
    return layouts[l].name;
}

static int in_list(const char *const *list, const char *s) {
    for (int i = 0; s && list[i]; i++)
        if (!strcmp(list[i], s)) return 1;
    return 0;
}

// the layout of a config.json root: by architectures[0], else (no architectures) model_type; -1: none
static int layout_of(const cJSON *root) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *a0 = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, 0) : NULL;
    const char *arch = cJSON_IsString(a0) ? a0->valuestring : NULL;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const char *type = cJSON_IsString(mt) ? mt->valuestring : NULL;
    for (int l = 0; l < N_VLM_LAYOUTS; l++)
        if (in_list(layouts[l].archs, arch)) return l;
    if (arch) return -1;  // the class transformers would build decides; model_type only when it is silent
    for (int l = 0; l < N_VLM_LAYOUTS; l++)
        if (in_list(layouts[l].types, type)) return l;
    return -1;
}

int vlm_dir_is(const char *dir) {
    char path[2048];
    path_join(path, sizeof path, dir, "config.json");
    if (!dir_exists(dir) || !file_exists(path)) return 0;
    cJSON *root = json_load_file(path);
    int l = layout_of(root);
    // a layout's config with its LLM part (a tower's own config.json may carry InternVL's
    // architectures without one: the internvit fixture), or any config with a vision and a text
    // part, so that vlm_dir_open refuses an unknown one by name instead of a loader misreading it
    int whole = (l >= 0 && cJSON_GetObjectItemCaseSensitive(root, layouts[l].text_key)) ||
                (cJSON_GetObjectItemCaseSensitive(root, "vision_config") &&
                 (cJSON_GetObjectItemCaseSensitive(root, "text_config") || cJSON_GetObjectItemCaseSensitive(root, "llm_config")));
    cJSON_Delete(root);
    return whole;
}

const cJSON *vlm_dir_text_config(const cJSON *root, const char *path, int *tied, const char **def_type) {
    int l = layout_of(root);
    if (l < 0) return NULL;
    const LayoutRow *r = &layouts[l];
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, r->text_key);
    if (!cJSON_IsObject(t)) fatal("%s: key \"%s\" (the language model's config) is missing or not an object", path, r->text_key);
    *def_type = r->text_type;
    switch ((VlmLayout)l) {
    case VLM_LAYOUT_INTERNVL_CHAT:  // the remote code builds the LLM class from llm_config alone
        *tied = json_get_bool_opt(t, "tie_word_embeddings", -1, path);
        break;
    case VLM_LAYOUT_INTERNVL_HF: *tied = json_get_bool_opt(root, "tie_word_embeddings", 1, path); break;
    case VLM_LAYOUT_IDEFICS3: *tied = json_get_bool_opt(root, "tie_word_embeddings", 0, path); break;
    case VLM_LAYOUT_LLAVA:  // LlavaConfig takes text_config's when its own is false
        *tied = json_get_bool_opt(root, "tie_word_embeddings", 0, path) || json_get_bool_opt(t, "tie_word_embeddings", 0, path);
        break;
    default: CHECK(0, "layout %d", l);
    }
    return t;
}

// an integer feature layer (a list selects several layers: refused)
static int feature_layer(const cJSON *root, const char *key, int def, const char *path) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsArray(j)) fatal("%s: %s is a list: svlm feeds the connector one layer", path, key);
    return json_get_int_opt(root, key, def, path);
}

static void need_default_strategy(const cJSON *root, const char *path) {
    const char *s = json_get_str_opt(root, "vision_feature_select_strategy", "default", path);
    if (strcmp(s, "default") != 0)
        fatal("%s: vision_feature_select_strategy \"%s\" is not supported (default: the class token dropped)", path, s);
}

static void need_gelu(const cJSON *root, const char *path) {
    const char *a = json_get_str_opt(root, "projector_hidden_act", "gelu", path);
    if (strcmp(a, "gelu") != 0) fatal("%s: projector_hidden_act \"%s\" is not supported (gelu)", path, a);
}

// 1 / downsample_ratio as an integer side
static int downsample_side(const cJSON *root, const char *path) {
    double r = json_get_num_opt(root, "downsample_ratio", 0.5, path);
    double side = r > 0 ? 1.0 / r : 0;
    if (!(r > 0 && r <= 1) || fabs(side - floor(side + 0.5)) > 1e-6)
        fatal("%s: downsample_ratio %g is not 1/n for an integer n (the pixel shuffle's side)", path, r);
    return (int)floor(side + 0.5);
}

// ---------------------------------------------------------------- the model's own tiling

// the config.json and preprocessor_config.json trees vlm_dir_open is reading: reachable from here
// while a fatal() exits midway, so that LeakSanitizer does not report them (as image_prep_load's)
static cJSON *volatile g_reading, *volatile g_reading_pre;  // volatile: stored though never read

// InternVL's remote code (InternVLChatConfig: dynamic_image_size false, use_thumbnail false,
// min_dynamic_patch 1, max_dynamic_patch 6, pad2square false): its dataset and chat code tile with
// dynamic_preprocess(min_num, max_num, use_thumbnail) when dynamic_image_size is true, else resize
// (or pad2square, then resize) to one tile. dynamic_preprocess resizes to the grid, so pad2square
// pads only one-tile models.
static void internvl_chat_tiling(VlmDir *d, const cJSON *root, const char *path) {
    int dynamic = json_get_bool_opt(root, "dynamic_image_size", 0, path);
    int lo = json_get_int_opt(root, "min_dynamic_patch", 1, path);
    int hi = json_get_int_opt(root, "max_dynamic_patch", 6, path);
    int thumb = json_get_bool_opt(root, "use_thumbnail", 0, path);
    d->pad_to_square = !dynamic && json_get_bool_opt(root, "pad2square", 0, path);
    if (!dynamic) return;
    if (lo != 1) fatal("%s: min_dynamic_patch %d is not supported (1: svlm's grids start at one tile)", path, lo);
    if (hi < 1 || hi > 64) fatal("%s: max_dynamic_patch %d must be in 1..64", path, hi);
    if (!thumb && hi > 1)
        fatal("%s: use_thumbnail = false is not supported with dynamic_image_size (svlm's tiling adds InternVL's thumbnail)", path);
    d->max_tiles = d->split_tiles = hi;
}

// transformers' native InternVL: InternVLProcessor calls its GotOcr2ImageProcessor with
// crop_to_patches=True (its images_kwargs, over the file's crop_to_patches, which it ignores), so
// the model tiles up to preprocessor_config.json's max_patches (12) from min_patches (1), with the
// thumbnail (crop_image_to_patches' use_thumbnail default)
static void internvl_hf_tiling(VlmDir *d) {
    char path[2048];
    path_join(path, sizeof path, d->dir, "preprocessor_config.json");
    int lo = 1, hi = 12;
    if (file_exists(path)) {
        cJSON *root = g_reading_pre = json_load_file(path);
        lo = json_get_int_opt(root, "min_patches", 1, path);
        hi = json_get_int_opt(root, "max_patches", 12, path);
        cJSON_Delete(root);
        g_reading_pre = NULL;
    }
    if (lo != 1) fatal("%s: min_patches %d is not supported (1: svlm's grids start at one tile)", path, lo);
    if (hi < 1 || hi > 64) fatal("%s: max_patches %d must be in 1..64", path, hi);
    d->max_tiles = d->split_tiles = hi;
}

// {"longest_edge": N} under key (def when absent)
static int longest_edge(const cJSON *root, const char *key, int def, const char *path) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) return def;
    if (!cJSON_IsObject(j)) fatal("%s: \"%s\" must be {\"longest_edge\": N}", path, key);
    return (int)json_get_i64_opt(j, "longest_edge", def, 1, 65536, path);
}

// Idefics3 / SmolVLM: preprocessor_config.json's do_image_splitting (true) cuts the image, its
// longest edge resized to size.longest_edge (4 x 364), into tiles of max_image_size.longest_edge
// (364) plus the global image: n = ceil(min(longest, 4096) / max) tiles a side at most
// (data/tiling.h), so n x n tiles
static void idefics3_tiling(VlmDir *d, const cJSON *vc, const char *cfg_path) {
    char path[2048];
    path_join(path, sizeof path, d->dir, "preprocessor_config.json");
    int M = json_get_int_opt(vc, "image_size", 224, cfg_path), L = 4 * M, split = 1;
    if (file_exists(path)) {
        cJSON *root = g_reading_pre = json_load_file(path);
        split = json_get_bool_opt(root, "do_image_splitting", 1, path);
        M = longest_edge(root, "max_image_size", M, path);
        L = longest_edge(root, "size", 4 * M, path);
        cJSON_Delete(root);
        g_reading_pre = NULL;
    }
    if (M < 1) fatal("%s: vision_config.image_size must be positive", cfg_path);
    int n = ((L < 4096 ? L : 4096) + M - 1) / M;
    if (n * n > 64)
        fatal("%s: size.longest_edge %d over max_image_size %d splits images into %d x %d tiles, more than svlm's 64", path, L, M, n, n);
    d->split_tiles = n * n;
    d->max_tiles = split ? n * n : 1;
}

void vlm_dir_open(VlmDir *d, const char *dir) {
    memset(d, 0, sizeof *d);
    char path[2048];
    if (!dir_exists(dir)) fatal("%s: model directory not found", dir);
    if (strlen(dir) >= sizeof d->dir) fatal("%s: path too long", dir);
    snprintf(d->dir, sizeof d->dir, "%s", dir);
    path_join(path, sizeof path, dir, "config.json");
    if (!file_exists(path)) fatal("%s: missing (a whole-model directory needs its config.json)", path);
    cJSON *root = g_reading = json_load_file(path);
    int l = layout_of(root);
    if (l < 0) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "architectures");
        const cJSON *a0 = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, 0) : NULL;
        fatal("%s: architectures \"%s\" (model_type \"%s\") is not a whole vision-language model svlm reads "
              "(InternVLChatModel, InternVLForConditionalGeneration, Idefics3ForConditionalGeneration, "
              "SmolVLMForConditionalGeneration, LlavaForConditionalGeneration)", path,
              cJSON_IsString(a0) ? a0->valuestring : "?", json_get_str_opt(root, "model_type", "?", path));
    }
    d->layout = (VlmLayout)l;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *a0 = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, 0) : NULL;
    snprintf(d->arch, sizeof d->arch, "%s", cJSON_IsString(a0) ? a0->valuestring : layouts[l].archs[0]);
    if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "vision_config")))
        fatal("%s: key \"vision_config\" (the vision tower's config) is missing or not an object", path);
    int tied;
    const char *def_type;
    vlm_dir_text_config(root, path, &tied, &def_type);  // fatal() when the LLM's sub-config is missing
    d->image_token_id = -1;
    d->max_tiles = d->split_tiles = 1;
    switch (d->layout) {
    case VLM_LAYOUT_INTERNVL_CHAT: {
        d->connector = CONNECTOR_INTERNVL;
        d->connector_scale = downsample_side(root, path);
        d->vision_layer = json_get_int_opt(root, "select_layer", -1, path);
        // InternVLChatConfig's default is v1, whose shuffle leaves the grid transposed
        const char *ps = json_get_str_opt(root, "ps_version", "v1", path);
        if (strcmp(ps, "v2") != 0)
            fatal("%s: ps_version \"%s\" is not supported (v2: svlm's pixel shuffle is InternVL's v2 order)", path, ps);
        const cJSON *fi = cJSON_GetObjectItemCaseSensitive(root, "force_image_size");
        if (fi && !cJSON_IsNull(fi)) {
            const cJSON *vc = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
            int64_t v;
            if (!json_is_i64(fi, 1, 65536, &v) || v != json_get_int_opt(vc, "image_size", (int)v, path))
                fatal("%s: force_image_size must equal vision_config.image_size (svlm runs the tower at its own size)", path);
        }
        snprintf(d->template_name, sizeof d->template_name, "%s", json_get_str_opt(root, "template", "", path));
        internvl_chat_tiling(d, root, path);
        snprintf(d->image_token, sizeof d->image_token, "<IMG_CONTEXT>");
        break;
    }
    case VLM_LAYOUT_INTERNVL_HF:
        d->connector = CONNECTOR_INTERNVL_HF;
        d->connector_scale = downsample_side(root, path);
        d->vision_layer = feature_layer(root, "vision_feature_layer", -1, path);
        need_default_strategy(root, path);
        need_gelu(root, path);
        d->image_token_id = (int)json_get_i64_opt(root, "image_token_id", 151667, 0, INT32_MAX, path);
        snprintf(d->image_token, sizeof d->image_token, "<IMG_CONTEXT>");
        internvl_hf_tiling(d);
        break;
    case VLM_LAYOUT_IDEFICS3:
        d->connector = CONNECTOR_IDEFICS3;
        d->connector_scale = json_get_int_opt(root, "scale_factor", 2, path);
        if (d->connector_scale < 1 || d->connector_scale > 64) fatal("%s: scale_factor %d must be in [1, 64]", path, d->connector_scale);
        d->vision_layer = -1;  // last_hidden_state (the connector asks for the final norm)
        d->image_token_id = (int)json_get_i64_opt(root, "image_token_id", 128257, 0, INT32_MAX, path);
        snprintf(d->image_token, sizeof d->image_token, "<image>");
        idefics3_tiling(d, cJSON_GetObjectItemCaseSensitive(root, "vision_config"), path);
        break;
    case VLM_LAYOUT_LLAVA: {
        d->connector = CONNECTOR_LLAVA_HF;
        d->vision_layer = feature_layer(root, "vision_feature_layer", -2, path);
        need_default_strategy(root, path);
        need_gelu(root, path);
        if (!json_get_bool_opt(root, "multimodal_projector_bias", 1, path))
            fatal("%s: multimodal_projector_bias = false is not supported (the projector has biases)", path);
        int64_t def = json_get_i64_opt(root, "image_token_index", 32000, 0, INT32_MAX, path);
        d->image_token_id = (int)json_get_i64_opt(root, "image_token_id", def, 0, INT32_MAX, path);
        snprintf(d->image_token, sizeof d->image_token, "<image>");
        break;
    }
    default: CHECK(0, "layout %d", l);
    }
    // the slot its processor writes is its projector family's (model/connector.h)
    snprintf(d->image_format, sizeof d->image_format, "%s", connector_image_format(d->connector));
    cJSON_Delete(root);
    g_reading = NULL;
}

void vlm_dir_check_image_token(const VlmDir *d, const Tokenizer *tok) {
    if (d->image_token_id < 0) return;  // InternVL's remote code looks <IMG_CONTEXT> up by name
    int id = tokenizer_token_id(tok, d->image_token);
    if (id != d->image_token_id) {
        char path[2048];
        path_join(path, sizeof path, d->dir, "config.json");
        if (id < 0)
            fatal("%s: image_token_id is %d, but the directory's tokenizer.json has no %s token", path, d->image_token_id, d->image_token);
        fatal("%s: image_token_id is %d, but the directory's tokenizer.json gives %s the id %d", path, d->image_token_id,
              d->image_token, id);
    }
}

// The name the directory stores connector tensor `name` under: as declared, or without its
// leading "model." (the on-disk names of InternVLForConditionalGeneration and llava-hf: transformers
// 5 loads them through its conversion mapping and saves them back the same way)
static void connector_name(const HfWeights *w, const char *name, char *out, size_t cap) {
    if (!hf_weights_find(w, name, NULL) && !strncmp(name, "model.", 6) && hf_weights_find(w, name + 6, NULL)) name += 6;
    snprintf(out, cap, "%s", name);
}

void vlm_dir_connector_name(const VlmDir *d, const char *name, char *out, size_t cap) {
    HfWeights w;
    hf_weights_open(&w, d->dir);
    connector_name(&w, name, out, cap);
    hf_weights_close(&w);
}

int vlm_dir_load_connector(const VlmDir *d, ParamSet *train) {
    HfWeights w;
    hf_weights_open(&w, d->dir);
    int n = 0;
    for (int i = 0; i < train->n; i++) {
        const Param *p = &train->p[i];
        if (p->group != PARAM_GROUP_CONNECTOR) continue;
        char name[PARAM_NAME_MAX + 16];
        connector_name(&w, p->name, name, sizeof name);
        float *host = train->k->dry_run ? NULL : xmalloc(p->numel * sizeof(float));
        hf_weights_read(&w, name, p->ndim, p->shape, host);  // fatal() naming the file when missing
        if (host) params_upload(train, i, host);
        free(host);
        n++;
    }
    hf_weights_close(&w);
    return n;
}

TemplateKind vlm_dir_template(const VlmDir *d, const char **system) {
    char path[2048];
    *system = NULL;
    if (d->layout == VLM_LAYOUT_INTERNVL_CHAT) {  // model.chat() renders with get_conv_template(config.template)
        path_join(path, sizeof path, d->dir, "config.json");
        if (!d->template_name[0]) fatal("%s: key \"template\" (InternVL's conversation template) is missing", path);
        if (!strcmp(d->template_name, "Hermes-2")) return TEMPLATE_HERMES2;
        if (!strcmp(d->template_name, "internvl2_5")) return TEMPLATE_INTERNVL2_5;
        fatal("%s: template \"%s\" is not a chat format svlm writes (Hermes-2, internvl2_5): set template = explicitly",
              path, d->template_name);
    }
    // chat_template.jinja (the raw text, as transformers 5 saves it), chat_template.json
    // (processors), else tokenizer_config.json
    path_join(path, sizeof path, d->dir, "chat_template.jinja");
    if (file_exists(path)) {
        size_t n;
        char *text = file_read_all(path, &n);
        if (!text) fatal("%s: cannot read", path);
        TemplateKind k;
        int ok = template_recognize(text, &k, system);
        free(text);
        if (!ok)
            fatal("%s: this chat template is none of the formats svlm writes (chatml, hermes2, internvl2_5, idefics3, llava_hf, internvl_hf): "
                  "set template = explicitly", path);
        return k;
    }
    const char *files[2] = {"chat_template.json", "tokenizer_config.json"};
    for (int f = 0; f < 2; f++) {
        path_join(path, sizeof path, d->dir, files[f]);
        if (!file_exists(path)) continue;
        cJSON *root = json_load_file(path);
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
        if (!ct) {
            cJSON_Delete(root);
            continue;
        }
        if (cJSON_IsArray(ct)) {  // named templates: the default one
            const cJSON *pick = NULL;
            for (const cJSON *e = ct->child; e; e = e->next)
                if (!strcmp(json_get_str_opt(e, "name", "", path), "default")) pick = cJSON_GetObjectItemCaseSensitive(e, "template");
            ct = pick;
        }
        if (!cJSON_IsString(ct)) fatal("%s: chat_template is not a string (or a list holding a \"default\" one)", path);
        TemplateKind k;
        if (!template_recognize(ct->valuestring, &k, system))
            fatal("%s: its chat_template is none of the formats svlm writes (chatml, hermes2, internvl2_5, idefics3, llava_hf, internvl_hf): "
                  "set template = explicitly", path);
        cJSON_Delete(root);
        return k;
    }
    fatal("%s: no chat template (chat_template.json or tokenizer_config.json's chat_template): set template = explicitly",
          d->dir);
}

const char *vlm_dir_peft_prefix(const VlmDir *d) {
    switch (d->layout) {
    case VLM_LAYOUT_INTERNVL_CHAT: return "language_model.model.";
    case VLM_LAYOUT_IDEFICS3: return "model.text_model.";
    default: return "model.language_model.";
    }
}
