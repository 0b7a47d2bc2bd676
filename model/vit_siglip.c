// vit_siglip.c: the SigLIP vision tower family: transformers SiglipVisionModel (the vision half of
// SigLIP and of SigLIP2's fixed-resolution checkpoints, model_type siglip_vision_model) and the
// Idefics3 / SmolVLM vision model (idefics3_vision, smolvlm_vision: the same tensors). No class
// token, patch conv with bias, learned positions, no pre-norm, CLIP's encoder layers with
// gelu_pytorch_tanh, a final post_layernorm (Idefics3 feeds its connector with it). The MAP
// pooling head of SiglipVisionModel is not used by any VLM and is not loaded. Images:
// SiglipImageProcessor (siglip_vision_model), Idefics3ImageProcessor at one tile (the others).
// Positions: SiglipVisionModel adds row p to patch p; Idefics3 / SmolVLM bucketize each patch's
// fractional coordinate, which at some grids (19, 25, 29, 31, 38, ...) maps two patches to one row
// and skips another (idefics3_position_ids).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "model/vit.h"

// Idefics3VisionEmbeddings / SmolVLMVisionEmbeddings (transformers 5, run on the CPU) for a full
// n x n image: boundaries = torch.arange(1/n, 1.0, 1/n) in float32, a coordinate k / n is
// float32(k) * (1.0f / n) clamped to float32(1 - 1e-6), its bucket (bucketize, right=True) the
// number of boundaries <= it, and patch (i, j) adds row bucket(i) * n + bucket(j). The float32
// roundings decide the buckets, so they are done as torch does them: its CPU arange computes
// element i in double as start + i * step, but in vectorised blocks (AVX2: 8 floats, taken two
// blocks at a time, the tail element by element) a block starts from its first element rounded
// to float32, and adds j * step to that. transformers 4.x computed the coordinates with a second
// arange and gets other rows at some grids; CUDA's arange (float32 arithmetic) may too: svlm
// follows transformers 5 on the CPU, the fixtures' reference. tests/test_modules.c checks every
// grid 2..64 against the module (tests/fixtures/idefics3_position_ids.txt).
static float torch_cpu_arange_f32(double start, double step, long i) {
    enum { VEC = 8 };
    long size = (long)ceil((1.0 - start) / step);  // arange's length for end = 1.0
    if (i < size / (2 * VEC) * (2 * VEC)) {
        float base = (float)(start + step * (double)(i - i % VEC));
        return (float)((double)base + (double)(i % VEC) * step);
    }
    return (float)(start + step * (double)i);
}

static void idefics3_position_ids(int *ids, int n) {
    double bstep = 1.0 / n;
    long nb = (long)ceil((1.0 - bstep) / bstep);  // boundaries, n - 1 or n
    CHECK(nb >= 0 && nb <= n, "idefics3 positions: %ld boundaries for a grid of %d", nb, n);
    float *bound = xmalloc((size_t)(nb + 1) * sizeof(float));
    int *bucket = xmalloc((size_t)n * sizeof(int));
    for (long i = 0; i < nb; i++) bound[i] = torch_cpu_arange_f32(bstep, bstep, i);
    const float step = 1.0f / (float)n, cap = (float)(1.0 - 1e-6);
    for (int k = 0; k < n; k++) {
        float x = (float)k * step;
        if (x > cap) x = cap;
        int b = 0;
        while (b < nb && bound[b] <= x) b++;  // sorted: right=True's index
        bucket[k] = b;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            ids[i * n + j] = bucket[i] * n + bucket[j];
            CHECK(ids[i * n + j] < n * n, "idefics3 positions: row %d of %d", ids[i * n + j], n * n);
        }
    free(bound);
    free(bucket);
}

static const VitModelType siglip_model_types[] = {
    // SiglipVisionConfig's defaults, Idefics3VisionConfig's and SmolVLMVisionConfig's
    {"siglip_vision_model", 768, 3072, 12, 12, 224, 16, 1e-6, "gelu_pytorch_tanh", IMAGE_PREP_SIGLIP, NULL},
    {"idefics3_vision", 1152, 3072, 12, 16, 224, 32, 1e-6, "gelu_pytorch_tanh", IMAGE_PREP_IDEFICS3, idefics3_position_ids},
    {"smolvlm_vision", 1152, 3072, 12, 16, 224, 32, 1e-6, "gelu_pytorch_tanh", IMAGE_PREP_IDEFICS3, idefics3_position_ids},
    {NULL, 0, 0, 0, 0, 0, 0, 0, NULL, IMAGE_PREP_SIGLIP, NULL},
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
