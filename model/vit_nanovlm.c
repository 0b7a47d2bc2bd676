// vit_nanovlm.c: nanoVLM's vision tower (github huggingface/nanoVLM, models/vision_transformer.py:
// ViT), as its checkpoints (lusxvr/nanoVLM-222M, ...) store it in the one model.safetensors of
// the whole VLM under vision_encoder.*, with the flat config.json nanoVLM writes (VLMConfig's
// vit_* keys, no model_type). The math is SigLIP's (it loads SigLIP / SigLIP2 weights): patch
// conv with bias, learned positions added to patch p in order, pre-LN blocks, tanh GELU, a final
// LayerNorm that the ViT applies to every token before the modality projector (post-norm on,
// vision_layer -1). The names are its own: patch_embedding.conv, patch_embedding.position_embedding
// (1, NP, C), blocks.<l>.ln1 / ln2, attn.qkv_proj (q, k, v fused: torch splits the 3C outputs in
// that order), attn.out_proj, mlp.fc1 / fc2, layer_norm. vit_cls_flag = true (the ViT then hands
// only the class token on, which the projector cannot shuffle) is refused. Images: nanoVLM's
// transform, Resize((S, S)) bilinear + ToTensor, no normalisation (data/image_prep.h, nanovlm).
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "model/vit.h"

static const VitModelType nanovlm_model_types[] = {
    // svlm's name for the flat config (nanoVLM writes no model_type); VLMConfig's defaults
    {"nanovlm", 768, 3072, 12, 12, 512, 16, 1e-6, "gelu_pytorch_tanh", IMAGE_PREP_NANOVLM, NULL},
    {NULL, 0, 0, 0, 0, 0, 0, 0, NULL, IMAGE_PREP_NANOVLM, NULL},
};

// VLMConfig's vit_* keys over what vit_config_load read (hidden_size ... are absent from
// nanoVLM's own files, so the defaults above stand unless the vit_* key is given)
static void nanovlm_config(VitConfig *c, const cJSON *o, const char *path) {
    c->hidden = json_get_int_opt(o, "vit_hidden_dim", c->hidden, path);
    c->mlp = json_get_int_opt(o, "vit_inter_dim", c->mlp, path);
    c->layers = json_get_int_opt(o, "vit_n_blocks", c->layers, path);
    c->heads = json_get_int_opt(o, "vit_n_heads", c->heads, path);
    c->image_size = json_get_int_opt(o, "vit_img_size", c->image_size, path);
    c->patch = json_get_int_opt(o, "vit_patch_size", c->patch, path);
    double eps = json_get_num_opt(o, "vit_ln_eps", c->eps, path);
    if (!(eps > 0 && eps < 1)) fatal("%s: key \"vit_ln_eps\" must be in (0, 1), got %g", path, eps);
    c->eps = (float)eps;
    if (json_get_bool_opt(o, "vit_cls_flag", 0, path))
        fatal("%s: vit_cls_flag = true is not supported (nanoVLM's ViT then outputs only the class token)", path);
    c->act = VIT_ACT_GELU_TANH;  // nn.GELU(approximate='tanh'), not configurable in nanoVLM
    c->qkv_bias = 1;
}

static void nanovlm_declare(ParamSet *w, const VitConfig *c, int n_layers) {
    int C = c->hidden, P = c->patch, I = c->mlp;
    params_add(w, 4, (int64_t[]){C, 3, P, P}, "patch_embedding.conv.weight");
    params_add(w, 1, (int64_t[]){C}, "patch_embedding.conv.bias");
    params_add(w, 3, (int64_t[]){1, c->n_patches, C}, "patch_embedding.position_embedding");
    const struct { const char *name; int64_t d0, d1; } t[12] = {
        {"ln1.weight", C, 0},          {"ln1.bias", C, 0},
        {"attn.qkv_proj.weight", 3 * C, C}, {"attn.qkv_proj.bias", 3 * C, 0},
        {"attn.out_proj.weight", C, C}, {"attn.out_proj.bias", C, 0},
        {"ln2.weight", C, 0},          {"ln2.bias", C, 0},
        {"mlp.fc1.weight", I, C},      {"mlp.fc1.bias", I, 0},
        {"mlp.fc2.weight", C, I},      {"mlp.fc2.bias", C, 0}};
    for (int l = 0; l < n_layers; l++)
        for (int j = 0; j < 12; j++)
            params_add(w, t[j].d1 ? 2 : 1, (int64_t[]){t[j].d0, t[j].d1}, "blocks.%d.%s", l, t[j].name);
    params_add(w, 1, (int64_t[]){C}, "layer_norm.weight");
    params_add(w, 1, (int64_t[]){C}, "layer_norm.bias");
}

static void nanovlm_bind(Vit *v) {
    v->patch_w = vit_weight(v, "patch_embedding.conv.weight");
    v->patch_b = vit_weight(v, "patch_embedding.conv.bias");
    v->pos = vit_weight(v, "patch_embedding.position_embedding");
    v->post_w = vit_weight(v, "layer_norm.weight");
    v->post_b = vit_weight(v, "layer_norm.bias");
    size_t C = v->cfg.hidden, third = C * C * v->k->act_bytes, third_b = C * v->k->act_bytes;
    for (int l = 0; l < v->n_run; l++) {
        VitLayer *L = &v->layer[l];
        L->ln1_w = vit_weight(v, "blocks.%d.ln1.weight", l);
        L->ln1_b = vit_weight(v, "blocks.%d.ln1.bias", l);
        char *w = vit_weight(v, "blocks.%d.attn.qkv_proj.weight", l), *b = vit_weight(v, "blocks.%d.attn.qkv_proj.bias", l);
        L->q_w = w, L->k_w = w + third, L->v_w = w + 2 * third;  // qkv.split(C, dim=2): q, k, v rows
        L->q_b = b, L->k_b = b + third_b, L->v_b = b + 2 * third_b;
        L->o_w = vit_weight(v, "blocks.%d.attn.out_proj.weight", l);
        L->o_b = vit_weight(v, "blocks.%d.attn.out_proj.bias", l);
        L->ln2_w = vit_weight(v, "blocks.%d.ln2.weight", l);
        L->ln2_b = vit_weight(v, "blocks.%d.ln2.bias", l);
        L->fc1_w = vit_weight(v, "blocks.%d.mlp.fc1.weight", l);
        L->fc1_b = vit_weight(v, "blocks.%d.mlp.fc1.bias", l);
        L->fc2_w = vit_weight(v, "blocks.%d.mlp.fc2.weight", l);
        L->fc2_b = vit_weight(v, "blocks.%d.mlp.fc2.bias", l);
    }
}

// the vit_* keys of VLMConfig (random towers: hf_random.c writes the generic keys first; nanoVLM's
// own VLMConfig(**config) accepts only its fields, so they are replaced)
static void nanovlm_hf_config(cJSON *j, const VitConfig *c) {
    const char *generic[] = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                             "image_size", "patch_size", "num_channels", "layer_norm_eps", "dtype"};
    for (size_t i = 0; i < sizeof generic / sizeof *generic; i++) cJSON_DeleteItemFromObjectCaseSensitive(j, generic[i]);
    cJSON_AddNumberToObject(j, "vit_hidden_dim", c->hidden);
    cJSON_AddNumberToObject(j, "vit_inter_dim", c->mlp);
    cJSON_AddNumberToObject(j, "vit_patch_size", c->patch);
    cJSON_AddNumberToObject(j, "vit_img_size", c->image_size);
    cJSON_AddNumberToObject(j, "vit_n_heads", c->heads);
    cJSON_AddNumberToObject(j, "vit_dropout", 0.0);
    cJSON_AddNumberToObject(j, "vit_n_blocks", c->layers);
    cJSON_AddNumberToObject(j, "vit_ln_eps", c->eps);
    cJSON_AddBoolToObject(j, "vit_cls_flag", 0);
}

const VitFamily vit_family_nanovlm = {
    .name = "nanovlm",
    .title = "nanoVLM ViT (SigLIP)",
    .flags = {.cls = 0, .patch_bias = 1, .pre_norm = 0, .post_norm = 1},
    .model_types = nanovlm_model_types,
    .config_marker = "vit_hidden_dim",
    .anchor = "patch_embedding.conv.weight",
    .config = nanovlm_config,
    .declare = nanovlm_declare,
    .bind = nanovlm_bind,
    .hf_config = nanovlm_hf_config,
};
