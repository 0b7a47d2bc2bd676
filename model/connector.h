// connector.h: the trainable bridge from vision features to LLM embeddings.
//   ldp        (MobileVLM-V2 LDPv2): Linear(Cv,H), GELU, Linear(H,H), 2x2 average pool on the
//              patch grid, depthwise 3x3 conv with bias + residual: grid^2/4 tokens per image
//   mlp2x_gelu (LLaVA-1.5): Linear(Cv,H), GELU, Linear(H,H): grid^2 tokens per image
// Tensor names follow the checkpoints of those projects (model.mm_projector.*). The connector
// states its own facts (name, tokens per image for a patch grid, its tensors, declared in
// PARAM_GROUP_CONNECTOR: trainable at connector_lr): the trainer, export and memory plan ask it.
// A new type is one ConnectorType value, one row of the table in connector.c, and its math.
#pragma once
#include <stdint.h>

#include "kernels/kernels.h"
#include "model/params.h"

typedef enum { CONNECTOR_LDP, CONNECTOR_MLP2X_GELU, N_CONNECTOR_TYPES } ConnectorType;

// the indices of a connector's tensors in its ParamSet (-1: the type has no such tensor)
typedef struct {
    int w1, b1, w2, b2, cw, cb;
} ConnectorParams;

typedef struct {
    ConnectorType type;
    const Kernels *k;
    int in_dim, out_dim;  // Cv, H
    int grid, n_in, n_out;  // input patch grid side, grid^2 tokens in, tokens out per image
    int max_images;
    ParamSet *ps;  // the trainable set the weights live in
    ConnectorParams i;  // their indices in ps (conv ones -1 for mlp2x_gelu)
    // activations kept for the backward, (max_images, n_in, H) unless noted
    act_t *h1;      // first linear, before GELU
    act_t *g;       // GELU(h1)
    act_t *h2;      // second linear
    act_t *pooled;  // (max_images, n_out, H), ldp only
    act_t *d1, *d2; // backward scratch
} Connector;

// "ldp" or "mlp2x_gelu"; fatal() naming the value and the known names otherwise
ConnectorType connector_type_parse(const char *name);
const char *connector_type_name(ConnectorType t);  // the config's name of every type
// fatal() when the vision encoder's patch grid does not suit the connector type
void connector_check_grid(ConnectorType type, int grid);
// tokens per image out of the connector for a grid x grid patch input (the image slot length);
// fatal() when the grid does not suit the type
int connector_tokens(ConnectorType type, int grid);
// declares the type's tensors (HF shapes and names) in ps, tagged PARAM_GROUP_CONNECTOR, for
// in_dim vision features into an out_dim LLM; *idx (may be NULL) gets their indices. Export
// uses it alone, on a set never allocated, to know which checkpoint tensors are the connector.
void connector_declare_params(ParamSet *ps, ConnectorType type, int in_dim, int out_dim, ConnectorParams *idx);
// declares the weights in ps (before params_alloc); fatal() when the grid does not suit the type
void connector_declare(Connector *c, ParamSet *ps, ConnectorType type, int in_dim, int out_dim, int grid,
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
