// vit.c: CLIP vision encoder forward (see vit.h). Layer-by-layer with shared scratch buffers.
#include "model/vit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/util.h"

// one row per model_type svlm reads; the type's facts are in the functions below
static const struct {
    const char *model_type;
    VitType type;
} vit_model_types[] = {
    {"clip_vision_model", VIT_CLIP},
    {"clip", VIT_CLIP},
};
#define N_VIT_MODEL_TYPES (int)(sizeof vit_model_types / sizeof vit_model_types[0])

static VitType vit_type_parse(const char *mt, const char *path, const char *key) {
    char known[256] = "";
    for (int i = 0; i < N_VIT_MODEL_TYPES; i++) {
        if (strcmp(mt, vit_model_types[i].model_type) == 0) return vit_model_types[i].type;
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "", vit_model_types[i].model_type);
    }
    fatal("%s: %s \"%s\" is not a vision tower svlm knows (%s)", path, key, mt, known);
}

const char *vit_type_name(const VitConfig *c) {
    static const char *const names[N_VIT_TYPES] = {[VIT_CLIP] = "clip"};
    CHECK(c->type >= 0 && c->type < N_VIT_TYPES, "vision type %d", (int)c->type);
    return names[c->type];
}

int vit_has_cls(const VitConfig *c) { return c->type == VIT_CLIP; }
int vit_seq_len(const VitConfig *c) { return c->n_patches + vit_has_cls(c); }
int vit_feature_dim(const VitConfig *c) { return c->hidden; }

int vit_layers_run(const VitConfig *c, int vision_layer) {
    // hidden_states has layers + 1 entries: [0] is the pre_layrnorm output
    int hs = vision_layer < 0 ? c->layers + 1 + vision_layer : vision_layer;
    if (hs < 0 || hs > c->layers)
        fatal("vision_layer = %d is out of range for a %d-layer vision encoder (-%d..%d)", vision_layer, c->layers,
              c->layers + 1, c->layers);
    return hs;
}

void vit_config_load(VitConfig *c, const char *dir) {
    char path[2048];
    path_join(path, sizeof path, dir, "config.json");
    if (!dir_exists(dir)) fatal("%s: vision model directory not found", dir);
    if (!file_exists(path)) fatal("%s: missing (vision model directory needs a config.json)", path);
    cJSON *root = json_load_file(path);
    const cJSON *vc = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
    if (vc && !cJSON_IsObject(vc)) fatal("%s: \"vision_config\" is not an object", path);
    const cJSON *o = vc ? vc : root;
    memset(c, 0, sizeof *c);
    const char *key = vc ? "vision_config.model_type" : "model_type";
    const char *mt = json_get_str_opt(o, "model_type", NULL, path);
    if (mt) c->type = vit_type_parse(mt, path, key);  // absent: CLIP, as svlm has always read it
    const char *sq[2] = {"image_size", "patch_size"};
    for (int i = 0; i < 2; i++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, sq[i]);
        if (cJSON_IsArray(j)) fatal("%s: %s is a list: only square images and patches (a single number) are supported", path, sq[i]);
    }
    // absent keys take CLIPVisionConfig's defaults, as transformers does
    c->hidden = json_get_int_opt(o, "hidden_size", 768, path);
    c->mlp = json_get_int_opt(o, "intermediate_size", 3072, path);
    c->layers = json_get_int_opt(o, "num_hidden_layers", 12, path);
    c->heads = json_get_int_opt(o, "num_attention_heads", 12, path);
    c->image_size = json_get_int_opt(o, "image_size", 224, path);
    c->patch = json_get_int_opt(o, "patch_size", 32, path);
    double eps = json_get_num_opt(o, "layer_norm_eps", 1e-5, path);
    if (!(eps > 0 && eps < 1)) fatal("%s: key \"layer_norm_eps\" must be in (0, 1), got %g", path, eps);
    c->eps = (float)eps;
    int ch = json_get_int_opt(o, "num_channels", 3, path);
    const char *act = json_get_str_opt(o, "hidden_act", "quick_gelu", path);
    if (ch != 3) fatal("%s: num_channels = %d (only RGB, 3, is supported)", path, ch);
    if (strcmp(act, "quick_gelu") == 0) c->quick_gelu = 1;
    else if (strcmp(act, "gelu") == 0) c->quick_gelu = 0;
    else fatal("%s: hidden_act \"%s\" is not supported (quick_gelu or gelu)", path, act);
    if (c->hidden <= 0 || c->heads <= 0 || c->hidden % c->heads)
        fatal("%s: hidden_size %d is not a multiple of num_attention_heads %d", path, c->hidden, c->heads);
    if (c->patch <= 0 || c->image_size <= 0 || c->image_size % c->patch)
        fatal("%s: image_size %d is not a multiple of patch_size %d", path, c->image_size, c->patch);
    if (c->layers <= 0 || c->mlp <= 0) fatal("%s: num_hidden_layers and intermediate_size must be positive", path);
    c->head_dim = c->hidden / c->heads;
    c->grid = c->image_size / c->patch;
    c->n_patches = c->grid * c->grid;
    cJSON_Delete(root);
}


void vit_image_prep(const VitConfig *c, const char *dir, ImagePrep *p) {
    // the image processor each tower's checkpoints ship with; no default case: -Wswitch names a
    // tower that states none
    int f = -1;
    switch (c->type) {
    case VIT_CLIP: f = IMAGE_PREP_CLIP; break;
    case N_VIT_TYPES: break;
    }
    CHECK(f >= 0, "vision tower type %d states no image preprocessing", (int)c->type);
    image_prep_load(p, dir, (ImagePrepFamily)f, c->image_size);
}

void vit_declare(ParamSet *w, const VitConfig *c, int n_layers) {
    int C = c->hidden, P = c->patch, I = c->mlp;
    params_add(w, 4, (int64_t[]){C, 3, P, P}, "embeddings.patch_embedding.weight");
    params_add(w, 1, (int64_t[]){C}, "embeddings.class_embedding");
    params_add(w, 2, (int64_t[]){vit_seq_len(c), C}, "embeddings.position_embedding.weight");
    params_add(w, 1, (int64_t[]){C}, "pre_layrnorm.weight");
    params_add(w, 1, (int64_t[]){C}, "pre_layrnorm.bias");
    // per layer; dims 0 mean "not a dimension"
    const struct { const char *name; int64_t d0, d1; } t[16] = {
        {"layer_norm1.weight", C, 0},    {"layer_norm1.bias", C, 0},
        {"self_attn.q_proj.weight", C, C}, {"self_attn.q_proj.bias", C, 0},
        {"self_attn.k_proj.weight", C, C}, {"self_attn.k_proj.bias", C, 0},
        {"self_attn.v_proj.weight", C, C}, {"self_attn.v_proj.bias", C, 0},
        {"self_attn.out_proj.weight", C, C}, {"self_attn.out_proj.bias", C, 0},
        {"layer_norm2.weight", C, 0},    {"layer_norm2.bias", C, 0},
        {"mlp.fc1.weight", I, C},        {"mlp.fc1.bias", I, 0},
        {"mlp.fc2.weight", C, I},        {"mlp.fc2.bias", C, 0}};
    for (int l = 0; l < n_layers; l++)
        for (int j = 0; j < 16; j++)
            params_add(w, t[j].d1 ? 2 : 1, (int64_t[]){t[j].d0, t[j].d1}, "encoder.layers.%d.%s", l, t[j].name);
}

// the weight declared as name (layer < 0) or encoder.layers.<layer>.name
static act_t *vit_weight(const ParamSet *w, int layer, const char *name) {
    char full[PARAM_NAME_MAX];
    if (layer < 0) snprintf(full, sizeof full, "%s", name);
    else snprintf(full, sizeof full, "encoder.layers.%d.%s", layer, name);
    int i = params_find(w, full);
    CHECK(i >= 0, "vision weight %s was not declared", full);
    return params_act(w, i);
}

void vit_load(Vit *v, const Kernels *k, const char *dir, int vision_layer, int max_images) {
    memset(v, 0, sizeof *v);
    v->k = k;
    vit_config_load(&v->cfg, dir);
    const VitConfig *c = &v->cfg;
    v->n_run = vit_layers_run(c, vision_layer);
    v->max_images = max_images;

    HfWeights hw;
    hf_weights_open(&hw, dir);
    const char *anchor = hf_weights_find_suffix(&hw, "embeddings.patch_embedding.weight");
    if (!anchor) fatal("%s: no tensor ending in embeddings.patch_embedding.weight: not a CLIP vision model", dir);
    char prefix[256];
    size_t plen = strlen(anchor) - strlen("embeddings.patch_embedding.weight");
    if (plen >= sizeof prefix) fatal("%s: tensor name prefix too long", dir);
    memcpy(prefix, anchor, plen);
    prefix[plen] = 0;

    ParamSet *w = &v->w;
    params_init(w, k, 0);
    vit_declare(w, c, v->n_run);
    params_alloc(w);
    params_load_hf(w, &hw, prefix);
    hf_weights_close(&hw);

    // bound by name: the declaration's order is free to change
    v->patch_w = vit_weight(w, -1, "embeddings.patch_embedding.weight");
    v->cls = vit_weight(w, -1, "embeddings.class_embedding");
    v->pos = vit_weight(w, -1, "embeddings.position_embedding.weight");
    v->pre_w = vit_weight(w, -1, "pre_layrnorm.weight");
    v->pre_b = vit_weight(w, -1, "pre_layrnorm.bias");
    v->layer = xcalloc(v->n_run ? v->n_run : 1, sizeof(VitLayer));
    for (int l = 0; l < v->n_run; l++) {
        VitLayer *L = &v->layer[l];
        L->ln1_w = vit_weight(w, l, "layer_norm1.weight");
        L->ln1_b = vit_weight(w, l, "layer_norm1.bias");
        L->q_w = vit_weight(w, l, "self_attn.q_proj.weight");
        L->q_b = vit_weight(w, l, "self_attn.q_proj.bias");
        L->k_w = vit_weight(w, l, "self_attn.k_proj.weight");
        L->k_b = vit_weight(w, l, "self_attn.k_proj.bias");
        L->v_w = vit_weight(w, l, "self_attn.v_proj.weight");
        L->v_b = vit_weight(w, l, "self_attn.v_proj.bias");
        L->o_w = vit_weight(w, l, "self_attn.out_proj.weight");
        L->o_b = vit_weight(w, l, "self_attn.out_proj.bias");
        L->ln2_w = vit_weight(w, l, "layer_norm2.weight");
        L->ln2_b = vit_weight(w, l, "layer_norm2.bias");
        L->fc1_w = vit_weight(w, l, "mlp.fc1.weight");
        L->fc1_b = vit_weight(w, l, "mlp.fc1.bias");
        L->fc2_w = vit_weight(w, l, "mlp.fc2.weight");
        L->fc2_b = vit_weight(w, l, "mlp.fc2.bias");
    }
    // row indices that drop CLS: image b's patch p sits at row b*T + cls + p of the residual stream
    int C = c->hidden, P = c->patch, I = c->mlp, NP = c->n_patches, T1 = vit_seq_len(c), cls = vit_has_cls(c);
    int *idx = xmalloc((size_t)max_images * NP * sizeof(int));
    for (int b = 0; b < max_images; b++)
        for (int p = 0; p < NP; p++) idx[b * NP + p] = b * T1 + cls + p;
    v->drop_cls = k->alloc((size_t)max_images * NP * sizeof(int));
    k->upload(v->drop_cls, idx, (size_t)max_images * NP * sizeof(int));
    free(idx);

    size_t T = (size_t)T1, B = max_images;
    v->cols = k->alloc(B * c->n_patches * 3 * P * P * k->act_bytes);
    v->x = k->alloc(B * T * C * k->act_bytes);
    v->ln = k->alloc(B * T * C * k->act_bytes);
    v->q = k->alloc(B * T * C * k->act_bytes);
    v->kk = k->alloc(B * T * C * k->act_bytes);
    v->v = k->alloc(B * T * C * k->act_bytes);
    v->att = k->alloc(B * T * C * k->act_bytes);
    v->h = k->alloc(B * T * I * k->act_bytes);
}

void vit_free(Vit *v) {
    const Kernels *k = v->k;
    void *bufs[] = {v->cols, v->x, v->ln, v->q, v->kk, v->v, v->att, v->h, v->drop_cls};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) k->free(bufs[i]);
    params_free(&v->w);
    free(v->layer);
    memset(v, 0, sizeof *v);
}

void vit_forward(Vit *v, act_t *feats, const act_t *pixels, int B) {
    const Kernels *k = v->k;
    const VitConfig *c = &v->cfg;
    CHECK(B <= v->max_images, "vit_forward with %d images, planned for %d", B, v->max_images);
    int C = c->hidden, P = c->patch, NP = c->n_patches, T = vit_seq_len(c), I = c->mlp;
    int N = B * T;
    // patch conv as im2col + matmul: (B*NP, 3*P*P) @ (C, 3*P*P)^T; the ln buffer holds the result
    k->im2col_patches(v->cols, pixels, B, c->image_size, P);
    k->matmul_forward(v->ln, v->cols, v->patch_w, NULL, B * NP, 3 * P * P, C, 1.0f, 0);
    k->vit_embed(v->att, v->ln, v->cls, v->pos, B, NP, C);                     // (B, T, C)
    k->layernorm_forward(v->x, NULL, NULL, v->att, v->pre_w, v->pre_b, N, C, c->eps);  // residual stream
    for (int l = 0; l < v->n_run; l++) {
        const VitLayer *L = &v->layer[l];
        k->layernorm_forward(v->ln, NULL, NULL, v->x, L->ln1_w, L->ln1_b, N, C, c->eps);
        k->matmul_forward(v->q, v->ln, L->q_w, L->q_b, N, C, C, 1.0f, 0);
        k->matmul_forward(v->kk, v->ln, L->k_w, L->k_b, N, C, C, 1.0f, 0);
        k->matmul_forward(v->v, v->ln, L->v_w, L->v_b, N, C, C, 1.0f, 0);
        k->attention_forward(v->att, NULL, v->q, v->kk, v->v, NULL, B, T, c->heads, c->heads, c->head_dim, 0);
        k->matmul_forward(v->x, v->att, L->o_w, L->o_b, N, C, C, 1.0f, 1);  // x += attn @ Wo^T + bo
        k->layernorm_forward(v->ln, NULL, NULL, v->x, L->ln2_w, L->ln2_b, N, C, c->eps);
        k->matmul_forward(v->h, v->ln, L->fc1_w, L->fc1_b, N, C, I, 1.0f, 0);
        if (c->quick_gelu) k->quick_gelu_forward(v->h, v->h, (size_t)N * I);
        else k->gelu_forward(v->h, v->h, (size_t)N * I);
        k->matmul_forward(v->x, v->h, L->fc2_w, L->fc2_b, N, I, C, 1.0f, 1);
    }
    k->gather_rows(feats, v->x, v->drop_cls, B * NP, C);  // (B, NP, C): CLS dropped
}
