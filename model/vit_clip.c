// vit_clip.c: the CLIP vision tower family (transformers CLIPVisionModel, or the vision half of a
// CLIPModel): class token, patch conv without bias, learned positions, pre_layrnorm, pre-LN
// blocks with separate q/k/v, quick_gelu (OpenAI) or gelu; post_layernorm is never used by LLaVA
// and is not loaded. Images: CLIPImageProcessor (data/image_prep.h, clip).
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "model/vit.h"

static const VitModelType clip_model_types[] = {
    // CLIPVisionConfig's defaults
    {"clip_vision_model", 768, 3072, 12, 12, 224, 32, 1e-5, "quick_gelu", IMAGE_PREP_CLIP, NULL},
    {"clip", 768, 3072, 12, 12, 224, 32, 1e-5, "quick_gelu", IMAGE_PREP_CLIP, NULL},
    {NULL, 0, 0, 0, 0, 0, 0, 0, NULL, IMAGE_PREP_CLIP, NULL},
};

// CLIP and SigLIP name their layers alike: encoder.layers.<l>.{layer_norm1, self_attn.*, ...};
// dims 0 mean "not a dimension"
void vit_declare_clip_layers(ParamSet *w, const VitConfig *c, int n_layers) {
    int C = c->hidden, I = c->mlp;
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

static void clip_declare(ParamSet *w, const VitConfig *c, int n_layers) {
    int C = c->hidden, P = c->patch;
    params_add(w, 4, (int64_t[]){C, 3, P, P}, "embeddings.patch_embedding.weight");
    params_add(w, 1, (int64_t[]){C}, "embeddings.class_embedding");
    params_add(w, 2, (int64_t[]){vit_seq_len(c), C}, "embeddings.position_embedding.weight");
    params_add(w, 1, (int64_t[]){C}, "pre_layrnorm.weight");
    params_add(w, 1, (int64_t[]){C}, "pre_layrnorm.bias");
    vit_declare_clip_layers(w, c, n_layers);
}

void vit_bind_clip_layers(Vit *v) {
    for (int l = 0; l < v->n_run; l++) {
        VitLayer *L = &v->layer[l];
        L->ln1_w = vit_weight(v, "encoder.layers.%d.layer_norm1.weight", l);
        L->ln1_b = vit_weight(v, "encoder.layers.%d.layer_norm1.bias", l);
        L->q_w = vit_weight(v, "encoder.layers.%d.self_attn.q_proj.weight", l);
        L->q_b = vit_weight(v, "encoder.layers.%d.self_attn.q_proj.bias", l);
        L->k_w = vit_weight(v, "encoder.layers.%d.self_attn.k_proj.weight", l);
        L->k_b = vit_weight(v, "encoder.layers.%d.self_attn.k_proj.bias", l);
        L->v_w = vit_weight(v, "encoder.layers.%d.self_attn.v_proj.weight", l);
        L->v_b = vit_weight(v, "encoder.layers.%d.self_attn.v_proj.bias", l);
        L->o_w = vit_weight(v, "encoder.layers.%d.self_attn.out_proj.weight", l);
        L->o_b = vit_weight(v, "encoder.layers.%d.self_attn.out_proj.bias", l);
        L->ln2_w = vit_weight(v, "encoder.layers.%d.layer_norm2.weight", l);
        L->ln2_b = vit_weight(v, "encoder.layers.%d.layer_norm2.bias", l);
        L->fc1_w = vit_weight(v, "encoder.layers.%d.mlp.fc1.weight", l);
        L->fc1_b = vit_weight(v, "encoder.layers.%d.mlp.fc1.bias", l);
        L->fc2_w = vit_weight(v, "encoder.layers.%d.mlp.fc2.weight", l);
        L->fc2_b = vit_weight(v, "encoder.layers.%d.mlp.fc2.bias", l);
    }
}

static void clip_bind(Vit *v) {
    v->patch_w = vit_weight(v, "embeddings.patch_embedding.weight");
    v->cls = vit_weight(v, "embeddings.class_embedding");
    v->pos = vit_weight(v, "embeddings.position_embedding.weight");
    v->pre_w = vit_weight(v, "pre_layrnorm.weight");
    v->pre_b = vit_weight(v, "pre_layrnorm.bias");
    vit_bind_clip_layers(v);
}

static const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

static void clip_hf_config(cJSON *j, const VitConfig *c) {
    cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "architectures"), cJSON_CreateString("CLIPVisionModel"));
    cJSON_AddStringToObject(j, "model_type", "clip_vision_model");
    cJSON_AddStringToObject(j, "hidden_act", vit_act_name(c->act));
    cJSON_AddNumberToObject(j, "projection_dim", c->hidden);
}

static void clip_hf_preprocessor(cJSON *j, int size) {
    cJSON *crop = cJSON_AddObjectToObject(j, "crop_size");
    cJSON_AddNumberToObject(crop, "height", size);
    cJSON_AddNumberToObject(crop, "width", size);
    const char *flags[5] = {"do_center_crop", "do_convert_rgb", "do_normalize", "do_rescale", "do_resize"};
    for (int i = 0; i < 5; i++) cJSON_AddBoolToObject(j, flags[i], 1);
    cJSON_AddItemToObject(j, "image_mean", cJSON_CreateFloatArray(CLIP_MEAN, 3));
    cJSON_AddStringToObject(j, "image_processor_type", "CLIPImageProcessor");
    cJSON_AddItemToObject(j, "image_std", cJSON_CreateFloatArray(CLIP_STD, 3));
    cJSON_AddNumberToObject(j, "resample", 3);
    cJSON_AddNumberToObject(j, "rescale_factor", 1.0 / 255.0);
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(j, "size"), "shortest_edge", size);
}

const VitFamily vit_family_clip = {
    .name = "clip",
    .title = "CLIP",
    .flags = {.cls = 1, .patch_bias = 0, .pre_norm = 1, .post_norm = 0},
    .model_types = clip_model_types,
    .anchor = "embeddings.patch_embedding.weight",
    .declare = clip_declare,
    .bind = clip_bind,
    .hf_config = clip_hf_config,
    .unused_final_norm = "post_layernorm",
    .hf_preprocessor = clip_hf_preprocessor,
};
