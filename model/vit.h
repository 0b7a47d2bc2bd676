// vit.h: the CLIP-style vision encoder, frozen and forward only: patch conv (no bias), CLS token,
// learned positions, pre_layrnorm, pre-LN blocks. Its output is the hidden state after
// `vision_layer` (HF hidden_states index, default -2) without post_layernorm, CLS dropped.
// The tower states its own facts (vit_type_name, vit_has_cls, vit_seq_len, vit_feature_dim,
// vit_layers_run; image_size and grid in VitConfig): the trainer, export and memory plan ask it.
#pragma once
#include "data/image_prep.h"
#include "kernels/kernels.h"
#include "model/params.h"

// vision tower families; VIT_CLIP is 0 so that a zeroed VitConfig (presets, synth) is CLIP
typedef enum { VIT_CLIP, N_VIT_TYPES } VitType;

typedef struct {
    VitType type;  // from config.json's model_type
    int hidden, layers, heads, head_dim, mlp;
    int image_size, patch, grid, n_patches;  // grid = image_size / patch, n_patches = grid^2
    float eps;
    int quick_gelu;  // 1: x*sigmoid(1.702x) (OpenAI CLIP), 0: erf GELU
} VitConfig;

typedef struct {
    act_t *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    act_t *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} VitLayer;

typedef struct {
    VitConfig cfg;
    const Kernels *k;
    int n_run;  // transformer layers run: enough to produce hidden_states[vision_layer]
    ParamSet w;
    act_t *patch_w, *cls, *pos, *pre_w, *pre_b;  // patch_w (C, 3*P*P)
    VitLayer *layer;
    int max_images;
    // scratch, reused by every layer (nothing is kept for a backward pass)
    act_t *cols, *x, *ln, *q, *kk, *v, *att, *h;
    int *drop_cls;  // (max_images * n_patches) rows of x that are not CLS
} Vit;

// reads dir/config.json (CLIPVisionModel, or the vision_config of a full CLIPModel); an
// unknown model_type is fatal() in one line naming the file and the key
void vit_config_load(VitConfig *c, const char *dir);
const char *vit_type_name(const VitConfig *c);  // "clip"
int vit_has_cls(const VitConfig *c);            // the residual stream carries a class token
int vit_seq_len(const VitConfig *c);            // rows per image in the encoder: patches (+ CLS)
int vit_feature_dim(const VitConfig *c);        // width of the features handed to the connector
// transformer layers run to produce HF's hidden_states[vision_layer]; fatal() when out of range
int vit_layers_run(const VitConfig *c, int vision_layer);
// The tower's image preprocessing (data/image_prep.h): its family's processor with the settings of
// dir/preprocessor_config.json where there is one; fatal() naming the file on a bad value or an
// image size other than the tower's.
void vit_image_prep(const VitConfig *c, const char *dir, ImagePrep *p);
// declares the weights of the embeddings and the first n_layers layers under their HF names
// (without prefix); vit_load binds them by name
void vit_declare(ParamSet *w, const VitConfig *c, int n_layers);
// loads the weights the first n_run layers need; vision_layer indexes HF's hidden_states
void vit_load(Vit *v, const Kernels *k, const char *dir, int vision_layer, int max_images);
void vit_free(Vit *v);
// pixels (B, 3, S, S) normalised -> feats (B, n_patches, vit_feature_dim); B <= max_images
void vit_forward(Vit *v, act_t *feats, const act_t *pixels, int B);
