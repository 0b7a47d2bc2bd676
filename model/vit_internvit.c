// vit_internvit.c: the InternViT vision tower family (InternViT-300M-448px of InternVL2 / 2.5 and
// Vintern-1B) in its two namings: InternVL's remote code (model_type intern_vit_6b: fused attn.qkv,
// attn.proj, ls1 / ls2, norm1 / norm2, under vision_model.) and transformers' native InternVL
// (internvl_vision: attention.{q,k,v}_proj, projection_layer, lambda_1 / lambda_2,
// layernorm_before / layernorm_after, under model.vision_tower.). Class token (dropped after the
// encoder, as InternVL does), patch conv with bias, learned positions over CLS + patches, no
// pre-norm, pre-LN blocks with LayerNorm (InternViT-6B's RMSNorm and qk-normalisation are refused),
// erf GELU. The fused qkv is split by pointing q, k, v at its thirds (torch reshapes (3C) as
// (3, heads, head_dim)); the layer scales are folded into proj / fc2 rows and biases at load.
// Preprocessing: InternVL's 448 bicubic resize and ImageNet mean / std.
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "model/vit.h"

static const VitModelType internvit_model_types[] = {
    // InternVisionConfig's defaults (InternViT-6B; the 300M config.json states its own)
    {"intern_vit_6b", 3200, 12800, 48, 25, 224, 14, 1e-6, "gelu"},
    {NULL, 0, 0, 0, 0, 0, 0, 0, NULL},
};

static const VitModelType internvl_vision_model_types[] = {
    // InternVLVisionConfig's defaults (InternViT-300M-448px)
    {"internvl_vision", 1024, 4096, 24, 16, 448, 14, 1e-6, "gelu"},
    {NULL, 0, 0, 0, 0, 0, 0, 0, NULL},
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

// the embeddings of both namings: CLS (1, 1, C), conv (C, 3, P, P) + bias, positions (1, 1 + NP, C)
static void declare_embeddings(ParamSet *w, const VitConfig *c, const char *cls, const char *patch, const char *pos) {
    int C = c->hidden, P = c->patch;
    params_add(w, 3, (int64_t[]){1, 1, C}, "%s", cls);
    params_add(w, 4, (int64_t[]){C, 3, P, P}, "%s.weight", patch);
    params_add(w, 1, (int64_t[]){C}, "%s.bias", patch);
    params_add(w, 3, (int64_t[]){1, vit_seq_len(c), C}, "%s", pos);
}

static void bind_embeddings(Vit *v, const char *cls, const char *patch, const char *pos) {
    v->cls = vit_weight(v, "%s", cls);
    v->patch_w = vit_weight(v, "%s.weight", patch);
    v->patch_b = vit_weight(v, "%s.bias", patch);
    v->pos = vit_weight(v, "%s", pos);
}

// ---- remote code: vision_model.embeddings.*, encoder.layers.<l>.{norm1, attn.qkv, attn.proj, ls1, ...}

static void internvit_declare(ParamSet *w, const VitConfig *c, int n_layers) {
    int C = c->hidden, I = c->mlp;
    declare_embeddings(w, c, "embeddings.class_embedding", "embeddings.patch_embedding", "embeddings.position_embedding");
    for (int l = 0; l < n_layers; l++) {
#define L(nd, d0, d1, name) params_add(w, nd, (int64_t[]){d0, d1}, "encoder.layers.%d." name, l)
        L(1, C, 0, "norm1.weight");
        L(1, C, 0, "norm1.bias");
        L(2, 3 * C, C, "attn.qkv.weight");
        if (c->qkv_bias) L(1, 3 * C, 0, "attn.qkv.bias");
        L(2, C, C, "attn.proj.weight");
        L(1, C, 0, "attn.proj.bias");
        L(1, C, 0, "ls1");
        L(1, C, 0, "norm2.weight");
        L(1, C, 0, "norm2.bias");
        L(2, I, C, "mlp.fc1.weight");
        L(1, I, 0, "mlp.fc1.bias");
        L(2, C, I, "mlp.fc2.weight");
        L(1, C, 0, "mlp.fc2.bias");
        L(1, C, 0, "ls2");
#undef L
    }
}

static void internvit_bind(Vit *v) {
    bind_embeddings(v, "embeddings.class_embedding", "embeddings.patch_embedding", "embeddings.position_embedding");
    size_t third = (size_t)v->cfg.hidden * v->cfg.hidden * v->k->act_bytes, third_b = (size_t)v->cfg.hidden * v->k->act_bytes;
    char w[PARAM_NAME_MAX], b[PARAM_NAME_MAX], s[PARAM_NAME_MAX];
    for (int l = 0; l < v->n_run; l++) {
        VitLayer *L = &v->layer[l];
        L->ln1_w = vit_weight(v, "encoder.layers.%d.norm1.weight", l);
        L->ln1_b = vit_weight(v, "encoder.layers.%d.norm1.bias", l);
        char *qkv = vit_weight(v, "encoder.layers.%d.attn.qkv.weight", l);  // rows q, then k, then v
        L->q_w = qkv, L->k_w = qkv + third, L->v_w = qkv + 2 * third;
        if (v->cfg.qkv_bias) {
            char *qb = vit_weight(v, "encoder.layers.%d.attn.qkv.bias", l);
            L->q_b = qb, L->k_b = qb + third_b, L->v_b = qb + 2 * third_b;
        }
        snprintf(w, sizeof w, "encoder.layers.%d.attn.proj.weight", l);
        snprintf(b, sizeof b, "encoder.layers.%d.attn.proj.bias", l);
        snprintf(s, sizeof s, "encoder.layers.%d.ls1", l);
        vit_fold_scale(v, w, b, s);
        L->o_w = vit_weight(v, "%s", w);
        L->o_b = vit_weight(v, "%s", b);
        L->ln2_w = vit_weight(v, "encoder.layers.%d.norm2.weight", l);
        L->ln2_b = vit_weight(v, "encoder.layers.%d.norm2.bias", l);
        L->fc1_w = vit_weight(v, "encoder.layers.%d.mlp.fc1.weight", l);
        L->fc1_b = vit_weight(v, "encoder.layers.%d.mlp.fc1.bias", l);
        snprintf(w, sizeof w, "encoder.layers.%d.mlp.fc2.weight", l);
        snprintf(b, sizeof b, "encoder.layers.%d.mlp.fc2.bias", l);
        snprintf(s, sizeof s, "encoder.layers.%d.ls2", l);
        vit_fold_scale(v, w, b, s);
        L->fc2_w = vit_weight(v, "%s", w);
        L->fc2_b = vit_weight(v, "%s", b);
    }
}

// ---- native: embeddings.{cls_token, patch_embeddings.projection, position_embeddings},
// encoder.layer.<l>.{layernorm_before, attention.*, lambda_1, layernorm_after, mlp.*, lambda_2}

static void internvl_vision_declare(ParamSet *w, const VitConfig *c, int n_layers) {
    int C = c->hidden, I = c->mlp;
    declare_embeddings(w, c, "embeddings.cls_token", "embeddings.patch_embeddings.projection",
                       "embeddings.position_embeddings");
    for (int l = 0; l < n_layers; l++) {
#define L(nd, d0, d1, name) params_add(w, nd, (int64_t[]){d0, d1}, "encoder.layer.%d." name, l)
        L(1, C, 0, "layernorm_before.weight");
        L(1, C, 0, "layernorm_before.bias");
        L(2, C, C, "attention.q_proj.weight");
        L(2, C, C, "attention.k_proj.weight");
        L(2, C, C, "attention.v_proj.weight");
        if (c->qkv_bias) {
            L(1, C, 0, "attention.q_proj.bias");
            L(1, C, 0, "attention.k_proj.bias");
            L(1, C, 0, "attention.v_proj.bias");
        }
        L(2, C, C, "attention.projection_layer.weight");
        L(1, C, 0, "attention.projection_layer.bias");
        L(1, C, 0, "lambda_1");
        L(1, C, 0, "layernorm_after.weight");
        L(1, C, 0, "layernorm_after.bias");
        L(2, I, C, "mlp.fc1.weight");
        L(1, I, 0, "mlp.fc1.bias");
        L(2, C, I, "mlp.fc2.weight");
        L(1, C, 0, "mlp.fc2.bias");
        L(1, C, 0, "lambda_2");
#undef L
    }
}

static void internvl_vision_bind(Vit *v) {
    bind_embeddings(v, "embeddings.cls_token", "embeddings.patch_embeddings.projection", "embeddings.position_embeddings");
    char w[PARAM_NAME_MAX], b[PARAM_NAME_MAX], s[PARAM_NAME_MAX];
    for (int l = 0; l < v->n_run; l++) {
        VitLayer *L = &v->layer[l];
        L->ln1_w = vit_weight(v, "encoder.layer.%d.layernorm_before.weight", l);
        L->ln1_b = vit_weight(v, "encoder.layer.%d.layernorm_before.bias", l);
        L->q_w = vit_weight(v, "encoder.layer.%d.attention.q_proj.weight", l);
        L->k_w = vit_weight(v, "encoder.layer.%d.attention.k_proj.weight", l);
        L->v_w = vit_weight(v, "encoder.layer.%d.attention.v_proj.weight", l);
        if (v->cfg.qkv_bias) {
            L->q_b = vit_weight(v, "encoder.layer.%d.attention.q_proj.bias", l);
            L->k_b = vit_weight(v, "encoder.layer.%d.attention.k_proj.bias", l);
            L->v_b = vit_weight(v, "encoder.layer.%d.attention.v_proj.bias", l);
        }
        snprintf(w, sizeof w, "encoder.layer.%d.attention.projection_layer.weight", l);
        snprintf(b, sizeof b, "encoder.layer.%d.attention.projection_layer.bias", l);
        snprintf(s, sizeof s, "encoder.layer.%d.lambda_1", l);
        vit_fold_scale(v, w, b, s);
        L->o_w = vit_weight(v, "%s", w);
        L->o_b = vit_weight(v, "%s", b);
        L->ln2_w = vit_weight(v, "encoder.layer.%d.layernorm_after.weight", l);
        L->ln2_b = vit_weight(v, "encoder.layer.%d.layernorm_after.bias", l);
        L->fc1_w = vit_weight(v, "encoder.layer.%d.mlp.fc1.weight", l);
        L->fc1_b = vit_weight(v, "encoder.layer.%d.mlp.fc1.bias", l);
        snprintf(w, sizeof w, "encoder.layer.%d.mlp.fc2.weight", l);
        snprintf(b, sizeof b, "encoder.layer.%d.mlp.fc2.bias", l);
        snprintf(s, sizeof s, "encoder.layer.%d.lambda_2", l);
        vit_fold_scale(v, w, b, s);
        L->fc2_w = vit_weight(v, "%s", w);
        L->fc2_b = vit_weight(v, "%s", b);
    }
}

// InternVL's build_transform: RGB, bicubic resize to input_size x input_size, ImageNet mean / std.
// Its checkpoints carry no preprocessor_config.json (remote code) or a GotOcr2 / InternVL one
// (native); svlm takes the mean / std and size such a file states over the defaults.
static const float IMAGENET_MEAN[3] = {0.485f, 0.456f, 0.406f};
static const float IMAGENET_STD[3] = {0.229f, 0.224f, 0.225f};

static void internvit_preprocess(const char *dir, const char *path, int model_image_size, int *size, float mean[3],
                                 float std[3]) {
    memcpy(mean, IMAGENET_MEAN, sizeof IMAGENET_MEAN);
    memcpy(std, IMAGENET_STD, sizeof IMAGENET_STD);
    *size = model_image_size;
    if (!file_exists(path)) return;
    cJSON *root = json_load_file(path);
    json_get_float3(root, "image_mean", mean, path);
    json_get_float3(root, "image_std", std, path);
    for (int i = 0; i < 3; i++)
        if (!(std[i] > 0)) fatal("%s: image_std must be positive", path);
    const cJSON *sz = cJSON_GetObjectItemCaseSensitive(root, "size");
    int s = sz && !cJSON_IsNull(sz) ? vit_json_size(sz, "size", path) : model_image_size;
    if (s != model_image_size)
        fatal("%s: image size %d differs from the vision model's image_size %d", path, s, model_image_size);
    cJSON_Delete(root);
}

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
    .preprocess = internvit_preprocess,
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
    .preprocess = internvit_preprocess,
    .hf_config = internvl_vision_hf_config,
};
