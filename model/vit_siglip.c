// vit_siglip.c: the SigLIP vision tower family: transformers SiglipVisionModel (the vision half of
// SigLIP and of SigLIP2's fixed-resolution checkpoints, model_type siglip_vision_model) and the
// Idefics3 / SmolVLM vision model (idefics3_vision, smolvlm_vision: the same tensors). No class
// token, patch conv with bias, learned positions, no pre-norm, CLIP's encoder layers with
// gelu_pytorch_tanh, a final post_layernorm (Idefics3 feeds its connector with it). The MAP
// pooling head of SiglipVisionModel is not used by any VLM and is not loaded. Images:
// SiglipImageProcessor (siglip_vision_model), Idefics3ImageProcessor at one tile (the others).
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "model/vit.h"

static const VitModelType siglip_model_types[] = {
    // SiglipVisionConfig's defaults, Idefics3VisionConfig's and SmolVLMVisionConfig's
    {"siglip_vision_model", 768, 3072, 12, 12, 224, 16, 1e-6, "gelu_pytorch_tanh", IMAGE_PREP_SIGLIP},
    {"idefics3_vision", 1152, 3072, 12, 16, 224, 32, 1e-6, "gelu_pytorch_tanh", IMAGE_PREP_IDEFICS3},
    {"smolvlm_vision", 1152, 3072, 12, 16, 224, 32, 1e-6, "gelu_pytorch_tanh", IMAGE_PREP_IDEFICS3},
    {NULL, 0, 0, 0, 0, 0, 0, 0, NULL, IMAGE_PREP_SIGLIP},
};

static void siglip_declare(ParamSet *w, const VitConfig *c, int n_layers) {
    int C = c->hidden, P = c->patch;
    params_add(w, 4, (int64_t[]){C, 3, P, P}, "embeddings.patch_embedding.weight");
    params_add(w, 1, (int64_t[]){C}, "embeddings.patch_embedding.bias");
    params_add(w, 2, (int64_t[]){c->n_patches, C}, "embeddings.position_embedding.weight");
    vit_declare_clip_layers(w, c, n_layers);
    params_add(w, 1, (int64_t[]){C}, "post_layernorm.weight");
    params_add(w, 1, (int64_t[]){C}, "post_layernorm.bias");
}

static void siglip_bind(Vit *v) {
    v->patch_w = vit_weight(v, "embeddings.patch_embedding.weight");
    v->patch_b = vit_weight(v, "embeddings.patch_embedding.bias");
    v->pos = vit_weight(v, "embeddings.position_embedding.weight");
    v->post_w = vit_weight(v, "post_layernorm.weight");
    v->post_b = vit_weight(v, "post_layernorm.bias");
    vit_bind_clip_layers(v);
}

static void siglip_hf_config(cJSON *j, const VitConfig *c) {
    cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "architectures"), cJSON_CreateString("SiglipVisionModel"));
    cJSON_AddStringToObject(j, "model_type", "siglip_vision_model");
    cJSON_AddStringToObject(j, "hidden_act", vit_act_name(c->act));
}

static void siglip_hf_preprocessor(cJSON *j, int size) {
    const char *flags[4] = {"do_convert_rgb", "do_normalize", "do_rescale", "do_resize"};
    for (int i = 0; i < 4; i++) cJSON_AddBoolToObject(j, flags[i], 1);
    const float half[3] = {0.5f, 0.5f, 0.5f};
    cJSON_AddItemToObject(j, "image_mean", cJSON_CreateFloatArray(half, 3));
    cJSON_AddStringToObject(j, "image_processor_type", "SiglipImageProcessor");
    cJSON_AddItemToObject(j, "image_std", cJSON_CreateFloatArray(half, 3));
    cJSON_AddNumberToObject(j, "resample", 3);
    cJSON_AddNumberToObject(j, "rescale_factor", 1.0 / 255.0);
    cJSON *s = cJSON_AddObjectToObject(j, "size");
    cJSON_AddNumberToObject(s, "height", size);
    cJSON_AddNumberToObject(s, "width", size);
}

const VitFamily vit_family_siglip = {
    .name = "siglip",
    .title = "SigLIP",
    .flags = {.cls = 0, .patch_bias = 1, .pre_norm = 0, .post_norm = 1},
    .model_types = siglip_model_types,
    .anchor = "embeddings.patch_embedding.weight",
    .declare = siglip_declare,
    .bind = siglip_bind,
    .hf_config = siglip_hf_config,
    .hf_preprocessor = siglip_hf_preprocessor,
};
