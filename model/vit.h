// vit.h: the vision tower, frozen and forward only. One transformer encoder (vit.c) serves every
// family; a family (model/vit_<family>.c) is a VitFamily: its facts (class token, patch bias,
// pre-norm, final norm; the activation and q/k/v biases come from its config), its config.json
// model_types and defaults, its tensors under its checkpoint's names and their binding to the
// shared layer (a fused qkv split, layer scales folded into the projections at load), and its
// image processor (data/image_prep.h) by model_type. The output is the hidden state after `vision_layer` (HF
// hidden_states index, default -2), class token dropped; with post-norm on (vit_set_post_norm,
// Idefics3) the last layer's output through the family's final LayerNorm, as last_hidden_state.
// The tower states its own facts (vit_type_name, vit_has_cls, vit_seq_len, vit_feature_dim,
// vit_layers_run; image_size and grid in VitConfig): the trainer, export and memory plan ask it.
#pragma once
#include "common/json.h"
#include "data/image_prep.h"
#include "kernels/kernels.h"
#include "model/params.h"

// vision tower families, one per registered VitFamily (vit.c: vit_families); VIT_CLIP is 0 so
// that a zeroed VitConfig (presets, synth) is CLIP
typedef enum { VIT_CLIP, VIT_SIGLIP, VIT_INTERNVIT, VIT_INTERNVL_VISION, VIT_NANOVLM, N_VIT_TYPES } VitType;

// fills ids (grid * grid) with the row of the position table each patch of a full grid x grid
// image adds, patches in row-major order; a family whose ids are not simply 0..n-1 states it
typedef void (*VitPositionIds)(int *ids, int grid);

// the MLP activation (config.json hidden_act)
typedef enum { VIT_ACT_QUICK_GELU, VIT_ACT_GELU, VIT_ACT_GELU_TANH, N_VIT_ACTS } VitAct;

typedef struct {
    VitType type;  // from config.json's model_type
    int hidden, layers, heads, head_dim, mlp;
    int image_size, patch, grid, n_patches;  // grid = image_size / patch, n_patches = grid^2
    float eps;
    VitAct act;
    int qkv_bias;  // q, k and v projections have biases (InternViT configs may say not)
    ImagePrepFamily prep;  // the image processor of its model_type (IMAGE_PREP_CLIP = 0)
    VitPositionIds position_ids;  // the model_type's patch -> position-row map (NULL: 0..n-1)
} VitConfig;

// how a family's encoder differs from the shared one; the layer math is the same
typedef struct {
    int cls;          // a class token leads each image's sequence (dropped from the features)
    int patch_bias;   // the patch embedding has a bias
    int pre_norm;     // a LayerNorm on the embeddings before the first layer (CLIP's pre_layrnorm)
    int post_norm;    // a final LayerNorm exists (applied only with vit_set_post_norm)
} VitFlags;

// one config.json model_type of a family and the defaults its config class gives absent keys
typedef struct {
    const char *model_type;
    int hidden, mlp, layers, heads, image_size, patch;
    double eps;
    const char *act;       // hidden_act
    ImagePrepFamily prep;  // the image processor its checkpoints ship with
    VitPositionIds position_ids;  // NULL: patch p adds position row p
} VitModelType;

typedef struct {
    act_t *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    act_t *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} VitLayer;

typedef struct Vit Vit;

typedef struct {
    const char *name;   // svlm's name: "clip", "siglip"
    const char *title;  // as people write it: "CLIP", "SigLIP"
    VitFlags flags;
    const VitModelType *model_types;  // ends with a NULL model_type
    // optional: a config.json without model_type that has this key is the family's (its first
    // model_type row): for projects that write their own flat config (nanoVLM: vit_hidden_dim)
    const char *config_marker;
    const char *anchor;  // a tensor every checkpoint of the family has: finds the name prefix
    // optional: reads the family's own config keys into c, fatal() on what svlm does not run
    void (*config)(VitConfig *c, const cJSON *o, const char *path);
    // declares the weights of the embeddings, the first n_layers layers and (flags.post_norm) the
    // final norm under the checkpoint's names (without prefix), HF shapes
    void (*declare)(ParamSet *w, const VitConfig *c, int n_layers);
    // after loading: points v's embedding, layer and norm weights at the tensors, by name
    void (*bind)(Vit *v);
    // for random models (model/hf_random.c): the family's config.json keys beyond the shapes
    // (architectures, model_type, hidden_act, flags), a final norm its checkpoints hold that
    // svlm does not run (NULL: none), and its preprocessor_config.json for size x size inputs
    // (NULL hf_preprocessor: the family's checkpoints have none)
    void (*hf_config)(cJSON *j, const VitConfig *c);
    const char *unused_final_norm;
    void (*hf_preprocessor)(cJSON *j, int size);
} VitFamily;

struct Vit {
    VitConfig cfg;
    const VitFamily *fam;
    const Kernels *k;
    int n_run;      // transformer layers run: enough to produce hidden_states[vision_layer]
    int post_norm;  // the features go through the final norm (vit_set_post_norm)
    ParamSet w;
    act_t *patch_w, *patch_b, *cls, *pos, *pre_w, *pre_b, *post_w, *post_b;  // patch_w (C, 3*P*P)
    VitLayer *layer;
    int max_images;
    // scratch, reused by every layer (nothing is kept for a backward pass)
    act_t *cols, *x, *ln, *q, *kk, *v, *att, *h;
    int *drop_cls;  // (max_images * n_patches) rows of x that are not CLS
};

// the registered families (vit_clip.c, vit_siglip.c, ...)
extern const VitFamily vit_family_clip, vit_family_siglip, vit_family_internvit, vit_family_internvl_vision,
    vit_family_nanovlm;
const VitFamily *vit_family(VitType t);
// the family called name ("clip", "siglip", ...); fatal() listing the names otherwise
VitType vit_family_parse(const char *name);
// the activation the family's config class defaults to
VitAct vit_family_act(VitType t);
// the activation's config.json name (hidden_act)
const char *vit_act_name(VitAct act);

// reads dir/config.json (a vision model, or the vision_config of a full model); an unknown
// model_type is fatal() in one line naming the file and the key
void vit_config_load(VitConfig *c, const char *dir);
const char *vit_type_name(const VitConfig *c);  // "clip", "siglip"
int vit_has_cls(const VitConfig *c);            // the residual stream carries a class token
int vit_seq_len(const VitConfig *c);            // rows per image in the encoder: patches (+ CLS)
int vit_feature_dim(const VitConfig *c);        // width of the features handed to the connector
// ids (n_patches): the position row each patch adds (0..n-1 unless the model_type states a map);
// the load applies it once to the frozen position table, so every backend uses the same rows
void vit_position_ids(const VitConfig *c, int *ids);
// transformer layers run to produce HF's hidden_states[vision_layer]; fatal() when out of range
int vit_layers_run(const VitConfig *c, int vision_layer);
// The tower's image preprocessing (data/image_prep.h): the processor its model_type ships with
// (VitConfig.prep) with the settings of dir/preprocessor_config.json where there is one; fatal()
// naming the file on a bad value or an image size other than the tower's.
void vit_image_prep(const VitConfig *c, const char *dir, ImagePrep *p);
// declares the weights the first n_layers layers need under their checkpoint names (without
// prefix), the family's final norm included when it has one; vit_load binds them by name
void vit_declare(ParamSet *w, const VitConfig *c, int n_layers);
// loads the weights the first n_run layers need; vision_layer indexes HF's hidden_states
void vit_load(Vit *v, const Kernels *k, const char *dir, int vision_layer, int max_images);
// the features become the family's final norm of the last layer (HF last_hidden_state);
// fatal() when the family has no final norm or vision_layer did not select the last layer
void vit_set_post_norm(Vit *v, int on);
void vit_free(Vit *v);
// pixels (B, 3, S, S) normalised -> feats (B, n_patches, vit_feature_dim); B <= max_images
void vit_forward(Vit *v, act_t *feats, const act_t *pixels, int B);

// for the families' files: the tensor of v->w declared under the printf-style name; CHECK()s
// that it was declared
act_t *vit_weight(const Vit *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// CLIP's encoder layers (encoder.layers.<l>.layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2,
// mlp.fc1, mlp.fc2), which SigLIP and Idefics3 share: declared for n_layers, bound for n_run
void vit_declare_clip_layers(ParamSet *w, const VitConfig *c, int n_layers);
void vit_bind_clip_layers(Vit *v);
// v's frozen weight tensor w_name (rows, cols) and bias b_name (rows) multiplied row by row by the
// vector s_name (rows): a layer scale folded into the projection before it
void vit_fold_scale(Vit *v, const char *w_name, const char *b_name, const char *s_name);
