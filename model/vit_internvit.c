// vit_internvit.c: the InternViT vision tower family (InternViT-300M-448px of InternVL2 / 2.5 and
// Vintern-1B) in its two namings: InternVL's remote code (model_type intern_vit_6b: fused attn.qkv,
// attn.proj, ls1 / ls2, norm1 / norm2, under vision_model.) and transformers' native InternVL
// (internvl_vision: attention.{q,k,v}_proj, projection_layer, lambda_1 / lambda_2,
// layernorm_before / layernorm_after, under model.vision_tower.). Class token (dropped after the
// encoder, as InternVL does), patch conv with bias, learned positions over CLS + patches, no
// pre-norm, pre-LN blocks with LayerNorm (InternViT-6B's RMSNorm and qk-normalisation are refused),
// erf GELU. The fused qkv is split by pointing q, k, v at its thirds (torch reshapes (3C) as
// (3, heads, head_dim)); the layer scales are folded into proj / fc2 rows and biases at load.
// Images: InternVL's transform (448 bicubic resize, ImageNet mean / std; data/image_prep.h).
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "model/vit.h"

static const VitModelType internvit_model_types[] = {
    // InternVisionConfig's defaults (InternViT-6B; the 300M config.json states its own)
    {"intern_vit_6b", 3200, 12800, 48, 25, 224, 14, 1e-6, "gelu", IMAGE_PREP_INTERNVL, NULL},
    {NULL, 0, 0, 0, 0, 0, 0, 0, NULL, IMAGE_PREP_INTERNVL, NULL},
};

static const VitModelType internvl_vision_model_types[] = {
    // InternVLVisionConfig's defaults (InternViT-300M-448px)
    {"internvl_vision", 1024, 4096, 24, 16, 448, 14, 1e-6, "gelu", IMAGE_PREP_INTERNVL, NULL},
    {NULL, 0, 0, 0, 0, 0, 0, 0, NULL, IMAGE_PREP_INTERNVL, NULL},
};

static void refuse_norm(const cJSON *o, const char *path, const char *def) {
    const char *norm = json_get_str_opt(o, "norm_type", def, path);
    if (strcmp(norm, "layer_norm") != 0)
        fatal("%s: norm_type \"%s\" is not supported (layer_norm: InternViT-300M)", path, norm);
}

static void internvit_config(VitConfig *c, const cJSON *o, const char *path) {
    refuse_norm(o, path, "rms_norm");
    if (json_get_bool_opt(o, "qk_normalization", 1, path))
        fatal("%s: qk_normalization = true is not supported (InternViT-300M has none)", path);
    c->qkv_bias = json_get_bool_opt(o, "qkv_bias", 0, path);
}

static void internvl_vision_config(VitConfig *c, const cJSON *o, const char *path) {
    refuse_norm(o, path, "layer_norm");
    if (json_get_bool_opt(o, "use_qk_norm", 0, path)) fatal("%s: use_qk_norm = true is not supported", path);
    if (!json_get_bool_opt(o, "use_mean_pooling", 1, path))
        fatal("%s: use_mean_pooling = false (a final layernorm) is not supported", path);
    if (!json_get_bool_opt(o, "use_absolute_position_embeddings", 1, path))
        fatal("%s: use_absolute_position_embeddings = false is not supported", path);
    c->qkv_bias = json_get_bool_opt(o, "attention_bias", 0, path);
}

// the two namings of one InternViT: embeddings, the layer prefix, and each layer tensor's name
typedef struct {
    const char *cls, *patch, *pos;  // CLS (1, 1, C), conv (C, 3, P, P) + bias, positions (1, 1 + NP, C)
    const char *layer;              // printf format of a layer's prefix
    const char *qkv;                // the fused (3C, C) q/k/v projection, or NULL: q, k, v apart
    const char *q, *k, *v, *o, *ls1, *ln1, *ln2, *ls2;
} InternVitNames;

static const InternVitNames REMOTE_NAMES = {
    "embeddings.class_embedding", "embeddings.patch_embedding", "embeddings.position_embedding",
    "encoder.layers.%d.", "attn.qkv", NULL, NULL, NULL, "attn.proj", "ls1", "norm1", "norm2", "ls2"};
static const InternVitNames NATIVE_NAMES = {
    "embeddings.cls_token", "embeddings.patch_embeddings.projection", "embeddings.position_embeddings",
    "encoder.layer.%d.", NULL, "attention.q_proj", "attention.k_proj", "attention.v_proj",
    "attention.projection_layer", "lambda_1", "layernorm_before", "layernorm_after", "lambda_2"};

// a linear's weight (rows, cols) and bias (rows, when bias) under prefix + name
static void add_linear(ParamSet *w, const char *pre, const char *name, int64_t rows, int64_t cols, int bias) {
    params_add(w, 2, (int64_t[]){rows, cols}, "%s%s.weight", pre, name);
    if (bias) params_add(w, 1, (int64_t[]){rows}, "%s%s.bias", pre, name);
}

static void add_vector(ParamSet *w, const char *pre, const char *name, const char *suffix, int64_t n) {
    params_add(w, 1, (int64_t[]){n}, "%s%s%s", pre, name, suffix);
}

static void declare_named(ParamSet *w, const VitConfig *c, int n_layers, const InternVitNames *n) {
    int C = c->hidden, P = c->patch, I = c->mlp;
    params_add(w, 3, (int64_t[]){1, 1, C}, "%s", n->cls);
    params_add(w, 4, (int64_t[]){C, 3, P, P}, "%s.weight", n->patch);
    params_add(w, 1, (int64_t[]){C}, "%s.bias", n->patch);
    params_add(w, 3, (int64_t[]){1, vit_seq_len(c), C}, "%s", n->pos);
    for (int l = 0; l < n_layers; l++) {
        char pre[64];
        snprintf(pre, sizeof pre, n->layer, l);
        add_vector(w, pre, n->ln1, ".weight", C);
        add_vector(w, pre, n->ln1, ".bias", C);
        if (n->qkv) {
            add_linear(w, pre, n->qkv, 3 * C, C, c->qkv_bias);
        } else {
            add_linear(w, pre, n->q, C, C, c->qkv_bias);
            add_linear(w, pre, n->k, C, C, c->qkv_bias);
            add_linear(w, pre, n->v, C, C, c->qkv_bias);
        }
        add_linear(w, pre, n->o, C, C, 1);
        add_vector(w, pre, n->ls1, "", C);
        add_vector(w, pre, n->ln2, ".weight", C);
        add_vector(w, pre, n->ln2, ".bias", C);
        add_linear(w, pre, "mlp.fc1", I, C, 1);
        add_linear(w, pre, "mlp.fc2", C, I, 1);
        add_vector(w, pre, n->ls2, "", C);
    }
}

// layer scale s: x + s * (W h + b) is x + (s W) h + s b, so W and b absorb it; *w, *b get them
static void bind_scaled(Vit *v, const char *pre, const char *lin, const char *scale, act_t **w, act_t **b) {
    char wn[PARAM_NAME_MAX], bn[PARAM_NAME_MAX], sn[PARAM_NAME_MAX];
    snprintf(wn, sizeof wn, "%s%s.weight", pre, lin);
    snprintf(bn, sizeof bn, "%s%s.bias", pre, lin);
    snprintf(sn, sizeof sn, "%s%s", pre, scale);
    vit_fold_scale(v, wn, bn, sn);
    *w = vit_weight(v, "%s", wn);
    *b = vit_weight(v, "%s", bn);
}

static void bind_named(Vit *v, const InternVitNames *n) {
    v->cls = vit_weight(v, "%s", n->cls);
    v->patch_w = vit_weight(v, "%s.weight", n->patch);
    v->patch_b = vit_weight(v, "%s.bias", n->patch);
    v->pos = vit_weight(v, "%s", n->pos);
    int bias = v->cfg.qkv_bias;
    size_t third = (size_t)v->cfg.hidden * v->cfg.hidden * v->k->act_bytes, third_b = (size_t)v->cfg.hidden * v->k->act_bytes;
    for (int l = 0; l < v->n_run; l++) {
        VitLayer *L = &v->layer[l];
        char pre[64];
        snprintf(pre, sizeof pre, n->layer, l);
        L->ln1_w = vit_weight(v, "%s%s.weight", pre, n->ln1);
        L->ln1_b = vit_weight(v, "%s%s.bias", pre, n->ln1);
        if (n->qkv) {  // torch reads the fused output as (3, heads, head_dim): rows q, then k, then v
            char *w = vit_weight(v, "%s%s.weight", pre, n->qkv);
            L->q_w = w, L->k_w = w + third, L->v_w = w + 2 * third;
            if (bias) {
                char *b = vit_weight(v, "%s%s.bias", pre, n->qkv);
                L->q_b = b, L->k_b = b + third_b, L->v_b = b + 2 * third_b;
            }
        } else {
            L->q_w = vit_weight(v, "%s%s.weight", pre, n->q);
            L->k_w = vit_weight(v, "%s%s.weight", pre, n->k);
            L->v_w = vit_weight(v, "%s%s.weight", pre, n->v);
            if (bias) {
                L->q_b = vit_weight(v, "%s%s.bias", pre, n->q);
                L->k_b = vit_weight(v, "%s%s.bias", pre, n->k);
                L->v_b = vit_weight(v, "%s%s.bias", pre, n->v);
            }
        }
        bind_scaled(v, pre, n->o, n->ls1, &L->o_w, &L->o_b);
        L->ln2_w = vit_weight(v, "%s%s.weight", pre, n->ln2);
        L->ln2_b = vit_weight(v, "%s%s.bias", pre, n->ln2);
        L->fc1_w = vit_weight(v, "%smlp.fc1.weight", pre);
        L->fc1_b = vit_weight(v, "%smlp.fc1.bias", pre);
        bind_scaled(v, pre, "mlp.fc2", n->ls2, &L->fc2_w, &L->fc2_b);
    }
}

static void internvit_declare(ParamSet *w, const VitConfig *c, int n) { declare_named(w, c, n, &REMOTE_NAMES); }
static void internvit_bind(Vit *v) { bind_named(v, &REMOTE_NAMES); }
static void internvl_vision_declare(ParamSet *w, const VitConfig *c, int n) { declare_named(w, c, n, &NATIVE_NAMES); }
static void internvl_vision_bind(Vit *v) { bind_named(v, &NATIVE_NAMES); }

// InternViT-300M's own config.json keys (remote code), LayerNorm and no qk-normalisation
static void internvit_hf_config(cJSON *j, const VitConfig *c) {
    cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "architectures"), cJSON_CreateString("InternVisionModel"));
    cJSON_AddStringToObject(j, "model_type", "intern_vit_6b");
    cJSON_AddStringToObject(j, "hidden_act", vit_act_name(c->act));
    cJSON_AddStringToObject(j, "norm_type", "layer_norm");
    cJSON_AddBoolToObject(j, "qkv_bias", c->qkv_bias);
    cJSON_AddBoolToObject(j, "qk_normalization", 0);
}

static void internvl_vision_hf_config(cJSON *j, const VitConfig *c) {
    cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "architectures"), cJSON_CreateString("InternVLVisionModel"));
    cJSON_AddStringToObject(j, "model_type", "internvl_vision");
    cJSON_AddStringToObject(j, "hidden_act", vit_act_name(c->act));
    cJSON_AddStringToObject(j, "norm_type", "layer_norm");
    cJSON_AddBoolToObject(j, "attention_bias", c->qkv_bias);
    cJSON_AddBoolToObject(j, "use_mean_pooling", 1);
}

const VitFamily vit_family_internvit = {
    .name = "internvit",
    .title = "InternViT (InternVL remote code)",
    .flags = {.cls = 1, .patch_bias = 1, .pre_norm = 0, .post_norm = 0},
    .model_types = internvit_model_types,
    .anchor = "embeddings.patch_embedding.weight",
    .config = internvit_config,
    .declare = internvit_declare,
    .bind = internvit_bind,
    .hf_config = internvit_hf_config,
};

const VitFamily vit_family_internvl_vision = {
    .name = "internvl_vision",
    .title = "InternViT (transformers InternVL)",
    .flags = {.cls = 1, .patch_bias = 1, .pre_norm = 0, .post_norm = 0},
    .model_types = internvl_vision_model_types,
    .anchor = "embeddings.patch_embeddings.projection.weight",
    .config = internvl_vision_config,
    .declare = internvl_vision_declare,
    .bind = internvl_vision_bind,
    .hf_config = internvl_vision_hf_config,
};
