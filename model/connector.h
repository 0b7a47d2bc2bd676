// connector.h: the trainable bridge from vision features to LLM embeddings. Each type is a
// ConnectorFamily in its own file (model/connector_<type>.c): its facts, tensors, init, forward
// and backward; connector.c registers them and holds what they share.
//   ldp        (MobileVLM-V2 LDPv2): Linear(Cv,H), GELU, Linear(H,H), 2x2 average pool on the
//              patch grid, depthwise 3x3 conv with bias + residual: (grid/2)^2 tokens per image
//   mlp2x_gelu (LLaVA-1.5): Linear(Cv,H), GELU, Linear(H,H): grid^2 tokens per image
//   idefics3   (Idefics3 / SmolVLM): pixel shuffle by s (scale_factor), then one Linear(s*s*Cv, H)
//              without bias: (grid/s)^2 tokens per image; fed the tower's last layer after its
//              final norm (last_hidden_state)
//   internvl   (InternVL 1.5-2.5, Vintern): pixel shuffle by 2 (downsample_ratio 0.5, ps_version
//              v2), then mlp1: LayerNorm(4Cv), Linear(4Cv,H), GELU, Linear(H,H); internvl_hf is
//              the same under transformers' native names (model.multi_modal_projector.*)
//   nanovlm    (nanoVLM's ModalityProjector) idefics3's math, its weight named MP.proj.weight;
//              pixel shuffle default 4 (VLMConfig's mp_pixel_shuffle_factor)
//   llava_hf   (llava-hf LlavaForConditionalGeneration): mlp2x_gelu under model.multi_modal_projector.linear_{1,2}
// Tensor names follow the checkpoints of those projects (model.mm_projector.*,
// model.connector.modality_projection.proj.weight, mlp1.*). The connector states its own facts (name,
// tokens per image for a patch grid, its tensors, declared in PARAM_GROUP_CONNECTOR: trainable
// at connector_lr): the trainer, export and memory plan ask it.
#pragma once
#include <stdint.h>

#include "common/rng.h"
#include "kernels/kernels.h"
#include "model/params.h"

// one value per registered family (connector.c: connector_families)
typedef enum {
    CONNECTOR_LDP,
    CONNECTOR_MLP2X_GELU,
    CONNECTOR_IDEFICS3,
    CONNECTOR_INTERNVL,
    CONNECTOR_INTERNVL_HF,
    CONNECTOR_NANOVLM,
    CONNECTOR_LLAVA_HF,
    N_CONNECTOR_TYPES
} ConnectorType;

// the indices of a connector's tensors in its ParamSet (-1: the type has no such tensor)
typedef struct {
    int w1, b1, w2, b2, cw, cb, lnw, lnb;
} ConnectorParams;

typedef struct Connector Connector;

typedef struct {
    const char *name;       // the config's name
    int scale;              // side of the square of patches that becomes one token: fixed, or the
                            // default of a configurable pixel shuffle
    int scale_configurable; // pixel_shuffle in the training config may set it
    int vision_post_norm;   // takes the tower's last layer through its final norm
    const char *image_format;  // the image slot its models use (data/image_slot.h): "llava" (NULL),
                               // "internvl", "idefics3"; the config's image_format overrides it
    // declares the tensors (HF shapes and names) for in_dim vision features into an out_dim LLM
    void (*declare)(ParamSet *ps, int in_dim, int out_dim, int scale, ConnectorParams *idx);
    void (*setup)(Connector *c);               // after params_alloc: its activations
    void (*init)(Connector *c, Rng *rng);      // PyTorch's default init of its layers
    // feats (B, n_in, Cv) -> out (B, n_out, H)
    void (*forward)(Connector *c, act_t *out, const act_t *feats, int B);
    // dout (B, n_out, H) -> weight gradients (+=) in ps->grad (the tower is frozen: no d(feats))
    void (*backward)(Connector *c, const act_t *dout, const act_t *feats, int B);
    // matmul / conv FLOPs of one image's forward (2*M*N*K), and of its first layer alone (the
    // backward has weight gradients for all and input gradients for all but the first)
    void (*flops)(const Connector *c, double *forward, double *first);
} ConnectorFamily;

struct Connector {
    ConnectorType type;
    const ConnectorFamily *fam;
    const Kernels *k;
    int in_dim, out_dim;  // Cv, H
    int scale;            // patches per token side (pooling or pixel-shuffle factor)
    int grid, n_in, n_out;  // input patch grid side, grid^2 tokens in, tokens out per image
    int max_images;
    ParamSet *ps;  // the trainable set the weights live in
    ConnectorParams i;  // their indices in ps
    // activations kept for the backward, (max_images, n_in, H) unless noted; each family
    // allocates what it uses, NULL otherwise
    act_t *h1;      // first linear, before GELU
    act_t *g;       // GELU(h1)
    act_t *h2;      // second linear
    act_t *pooled;  // (max_images, n_out, H), ldp only
    act_t *d1, *d2; // backward scratch
    act_t *shuffled;  // (max_images, n_in, Cv) pixel-shuffled features
    act_t *normed, *dnormed;  // (max_images, n_in, Cv) their LayerNorm and its gradient (internvl)
    float *ln_mean, *ln_rstd;  // (max_images * n_out) that LayerNorm's statistics
    int *shuffle;     // (max_images * n_in) their rows in feats (pixel_shuffle_rows)
};

extern const ConnectorFamily connector_family_ldp, connector_family_mlp2x_gelu, connector_family_idefics3,
    connector_family_internvl, connector_family_internvl_hf, connector_family_nanovlm, connector_family_llava_hf;
const ConnectorFamily *connector_family(ConnectorType t);
// the image slot format its models use: the family's image_format, "llava" when it names none
const char *connector_image_format(ConnectorType t);

// "ldp", "mlp2x_gelu", "idefics3"; fatal() naming the value and the known names otherwise
ConnectorType connector_type_parse(const char *name);
const char *connector_type_name(ConnectorType t);  // the config's name of every type
// the patches-per-token side the type uses: scale 0 is its default; a scale other than the
// default is fatal() for types with a fixed one
int connector_scale(ConnectorType type, int scale);
// fatal() when the vision encoder's patch grid does not suit the connector type and scale
void connector_check_grid(ConnectorType type, int scale, int grid);
// tokens per image out of the connector for a grid x grid patch input (the image slot length);
// fatal() when the grid does not suit the type
int connector_tokens(ConnectorType type, int scale, int grid);
// declares the type's tensors (HF shapes and names) in ps, tagged PARAM_GROUP_CONNECTOR, for
// in_dim vision features into an out_dim LLM; *idx (may be NULL) gets their indices. Export
// uses it alone, on a set never allocated, to know which checkpoint tensors are the connector.
void connector_declare_params(ParamSet *ps, ConnectorType type, int scale, int in_dim, int out_dim,
                              ConnectorParams *idx);
// declares the weights in ps (before params_alloc); fatal() when the grid does not suit the type
void connector_declare(Connector *c, ParamSet *ps, ConnectorType type, int scale, int in_dim, int out_dim, int grid,
                       int max_images);
// after params_alloc: allocates activations
void connector_setup(Connector *c);
void connector_free(Connector *c);
// PyTorch's default init (kaiming-uniform Linear and Conv2d weights, uniform biases), seeded
void connector_init(Connector *c, uint64_t seed);
// feats (B, n_in, Cv) -> out (B, n_out, H)
void connector_forward(Connector *c, act_t *out, const act_t *feats, int B);
// dout (B, n_out, H) -> weight gradients (+=) in ps->grad
void connector_backward(Connector *c, const act_t *dout, const act_t *feats, int B);

// for the families' files: U(-bound, bound) into tensor i of ps, as
// torch.nn.init.kaiming_uniform_(a=sqrt(5)) gives bound = 1/sqrt(fan_in) for weights (and biases)
void connector_init_uniform(ParamSet *ps, int i, float bound, Rng *rng);
// the two-layer MLP Linear(Cin,H), GELU, Linear(H,H) (connector_mlp.c) that mlp2x_gelu, ldp and
// internvl share: its tensors prefix + l1 / l2, buffers h1, g, h2, d1, d2, init, and the math over
// N rows of width Cin; the backward gives d(x) (+=) when dx is not NULL
void connector_mlp2_declare(ParamSet *ps, int in_dim, int out_dim, const char *prefix, const char *l1,
                            const char *l2, ConnectorParams *i);
void connector_mlp2_setup(Connector *c);
void connector_mlp2_init(Connector *c, Rng *rng, int Cin);
void connector_mlp2_forward(Connector *c, act_t *out, const act_t *x, int N, int Cin);
void connector_mlp2_backward(Connector *c, act_t *dx, const act_t *dout, const act_t *x, int N, int Cin);
void connector_mlp2_flops(const Connector *c, int rows, int Cin, double *forward, double *first);
// an act_t buffer of n elements on c's backend
act_t *connector_alloc(const Connector *c, size_t n);
// the pixel-shuffle rows of c (max_images images, c->grid, c->scale) on the backend, and the
// buffer they are gathered into
void connector_setup_shuffle(Connector *c);
