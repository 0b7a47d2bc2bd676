// connector_idefics3.c: Idefics3 / SmolVLM's connector: the pixel shuffle (model/pixel_shuffle.c)
// by scale_factor s, then modality_projection, one Linear(s*s*Cv, H) without bias
// (model.connector.modality_projection.proj.weight). It reads the tower's last_hidden_state,
// post_layernorm applied, as Idefics3Model does.
// nanoVLM's ModalityProjector (models/modality_projector.py) is the same math: its pixel_shuffle
// (reshape (h/s, s, w/s, s, C), permute to (h/s, w/s, s, s, C)) orders a token's pieces dy, dx,
// channel as Idefics3's does (tests/test_pixel_shuffle.c replays both), then proj, a Linear
// without bias, fed the ViT's output after its final LayerNorm. Only the name differs:
// MP.proj.weight, as nanoVLM's VisionLanguageModel stores it (connector nanovlm).
#include <math.h>

#include "model/connector.h"

static void idefics3_declare(ParamSet *ps, int in_dim, int out_dim, int scale, ConnectorParams *i) {
    i->w1 = params_add(ps, 2, (int64_t[]){out_dim, (int64_t)scale * scale * in_dim},
                       "model.connector.modality_projection.proj.weight");
}

static void nanovlm_declare(ParamSet *ps, int in_dim, int out_dim, int scale, ConnectorParams *i) {
    i->w1 = params_add(ps, 2, (int64_t[]){out_dim, (int64_t)scale * scale * in_dim}, "MP.proj.weight");
}

static void idefics3_setup(Connector *c) { connector_setup_shuffle(c); }

static void idefics3_init(Connector *c, Rng *rng) {
    connector_init_uniform(c->ps, c->i.w1, 1.0f / sqrtf((float)c->scale * c->scale * c->in_dim), rng);
}

static void idefics3_forward(Connector *c, act_t *out, const act_t *feats, int B) {
    const Kernels *k = c->k;
    int Cs = c->scale * c->scale * c->in_dim;
    // (B * n_in, Cv) rows reordered = (B * n_out, s*s*Cv) tokens
    k->gather_rows(c->shuffled, feats, c->shuffle, B * c->n_in, c->in_dim);
    k->matmul_forward(out, c->shuffled, params_act(c->ps, c->i.w1), NULL, B * c->n_out, Cs, c->out_dim, 1.0f, 0);
}

static void idefics3_backward(Connector *c, const act_t *dout, const act_t *feats, int B) {
    int Cs = c->scale * c->scale * c->in_dim;
    c->k->matmul_backward(NULL, params_grad(c->ps, c->i.w1), NULL, dout, c->shuffled, params_act(c->ps, c->i.w1),
                          B * c->n_out, Cs, c->out_dim, 1.0f);
}

static void idefics3_flops(const Connector *c, double *forward, double *first) {
    *first = *forward = 2.0 * c->n_out * c->scale * c->scale * c->in_dim * c->out_dim;
}

const ConnectorFamily connector_family_idefics3 = {
    .name = "idefics3",
    .scale = 2,  // Idefics3Config's scale_factor default; SmolVLM uses 3 or 4
    .scale_configurable = 1,
    .vision_post_norm = 1,
    .image_format = "idefics3",
    .declare = idefics3_declare,
    .setup = idefics3_setup,
    .init = idefics3_init,
    .forward = idefics3_forward,
    .backward = idefics3_backward,
    .flops = idefics3_flops,
};

const ConnectorFamily connector_family_nanovlm = {
    .name = "nanovlm",
    .scale = 4,  // VLMConfig's mp_pixel_shuffle_factor default (nanoVLM-222M: 2)
    .scale_configurable = 1,
    .vision_post_norm = 1,
    .declare = nanovlm_declare,
    .setup = idefics3_setup,
    .init = idefics3_init,
    .forward = idefics3_forward,
    .backward = idefics3_backward,
    .flops = idefics3_flops,
};
