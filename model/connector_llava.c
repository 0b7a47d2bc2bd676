// connector_llava.c: llava-hf's projector (LlavaMultiModalProjector): mlp2x_gelu's math, Linear(Cv,H),
// GELU (erf), Linear(H,H) with biases on every patch, under transformers' names
// model.multi_modal_projector.linear_{1,2} (transformers 4 checkpoints drop the leading "model.":
// model/vlm_dir.c reads both). `model = DIR` of a LlavaForConditionalGeneration picks it.
#include "model/connector.h"

static void llava_declare(ParamSet *ps, int in_dim, int out_dim, int scale, ConnectorParams *i) {
    (void)scale;
    connector_mlp2_declare(ps, in_dim, out_dim, "model.multi_modal_projector.", "linear_1", "linear_2", i);
}

static void llava_init(Connector *c, Rng *rng) { connector_mlp2_init(c, rng, c->in_dim); }

static void llava_forward(Connector *c, act_t *out, const act_t *feats, int B) {
    connector_mlp2_forward(c, out, feats, B * c->n_in, c->in_dim);
}

static void llava_backward(Connector *c, const act_t *dout, const act_t *feats, int B) {
    connector_mlp2_backward(c, NULL, dout, feats, B * c->n_in, c->in_dim);
}

static void llava_flops(const Connector *c, double *forward, double *first) {
    connector_mlp2_flops(c, c->n_in, c->in_dim, forward, first);
}

const ConnectorFamily connector_family_llava_hf = {
    .name = "llava_hf",
    .scale = 1,
    .declare = llava_declare,
    .setup = connector_mlp2_setup,
    .init = llava_init,
    .forward = llava_forward,
    .backward = llava_backward,
    .flops = llava_flops,
};
