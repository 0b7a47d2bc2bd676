// vit_siglip.c: the SigLIP vision tower family: transformers SiglipVisionModel (the vision half of
// SigLIP and of SigLIP2's fixed-resolution checkpoints, model_type siglip_vision_model) and the
// Idefics3 / SmolVLM vision model (idefics3_vision, smolvlm_vision: the same tensors). No class
// token, patch conv with bias, learned positions, no pre-norm, CLIP's encoder layers with
// gelu_pytorch_tanh, a final post_layernorm (Idefics3 feeds its connector with it). The MAP
// pooling head of SiglipVisionModel is not used by any VLM and is not loaded.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "model/vit.h"

static const VitModelType siglip_model_types[] = {
    // SiglipVisionConfig's defaults, Idefics3VisionConfig's and SmolVLMVisionConfig's
    {"siglip_vision_model", 768, 3072, 12, 12, 224, 16, 1e-6, "gelu_pytorch_tanh"},
    {"idefics3_vision", 1152, 3072, 12, 16, 224, 32, 1e-6, "gelu_pytorch_tanh"},
    {"smolvlm_vision", 1152, 3072, 12, 16, 224, 32, 1e-6, "gelu_pytorch_tanh"},
    {NULL, 0, 0, 0, 0, 0, 0, 0, NULL},
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

// SiglipImageProcessor: resize to size x size (bicubic), rescale 1/255, normalise (0.5 by
// default); Idefics3ImageProcessor at one tile: max_image_size's longest edge
static void siglip_preprocess(const char *dir, const char *path, int model_image_size, int *size, float mean[3],
                              float std[3]) {
    for (int i = 0; i < 3; i++) mean[i] = std[i] = 0.5f;
    *size = model_image_size;
    if (!file_exists(path)) return;
    cJSON *root = json_load_file(path);
    json_get_float3(root, "image_mean", mean, path);
    json_get_float3(root, "image_std", std, path);
    for (int i = 0; i < 3; i++)
        if (!(std[i] > 0)) fatal("%s: image_std must be positive", path);
    const char *type = json_get_str_opt(root, "image_processor_type", NULL, path);
    int s = model_image_size;
    if (type && (strcmp(type, "Idefics3ImageProcessor") == 0 || strcmp(type, "SmolVLMImageProcessor") == 0)) {
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(root, "max_image_size");
        const cJSON *le = cJSON_IsObject(mx) ? cJSON_GetObjectItemCaseSensitive(mx, "longest_edge") : NULL;
        if (le) s = vit_json_size(le, "max_image_size.longest_edge", path);
    } else if (!type || strcmp(type, "SiglipImageProcessor") == 0) {
        const cJSON *sz = cJSON_GetObjectItemCaseSensitive(root, "size");
        if (sz && !cJSON_IsNull(sz)) s = vit_json_size(sz, "size", path);
    } else {
        fatal("%s: image processor \"%s\" is not supported for a SigLIP tower (SiglipImageProcessor, "
              "Idefics3ImageProcessor)", path, type);
    }
    const char *flags[3] = {"do_resize", "do_rescale", "do_normalize"};
    for (int i = 0; i < 3; i++)
        if (!json_get_bool_opt(root, flags[i], 1, path)) fatal("%s: %s = false is not supported", path, flags[i]);
    double rescale = json_get_num_opt(root, "rescale_factor", 1.0 / 255.0, path);
    if (fabs(rescale * 255.0 - 1.0) > 1e-6) fatal("%s: rescale_factor %g is not supported (1/255)", path, rescale);
    if (s != model_image_size)
        fatal("%s: image size %d differs from the vision model's image_size %d", path, s, model_image_size);
    *size = s;
    cJSON_Delete(root);
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
    .preprocess = siglip_preprocess,
    .hf_config = siglip_hf_config,
    .hf_preprocessor = siglip_hf_preprocessor,
};
