// connector_internvl.c: InternVL's connector (InternVL 1.5-2.5, Vintern-1B): the pixel shuffle
// (model/pixel_shuffle.c, downsample_ratio 0.5 = 2x2, ps_version v2), then mlp1: LayerNorm(4Cv)
// (eps 1e-5), Linear(4Cv, H), GELU (erf), Linear(H, H), all trainable. Two namings of the same
// math: remote code's mlp1.{0,1,3} (internvl) and transformers' native
// model.multi_modal_projector.{layer_norm, linear_1, linear_2} (internvl_hf).
#include <math.h>
#include <stdlib.h>

#include "common/util.h"
#include "model/connector.h"

#define INTERNVL_LN_EPS 1e-5f  // nn.LayerNorm's default in both namings

static void declare_named(ParamSet *ps, int in_dim, int out_dim, int scale, ConnectorParams *i, const char *prefix,
                          const char *ln, const char *l1, const char *l2) {
    int64_t Cs = (int64_t)scale * scale * in_dim;
    i->lnw = params_add(ps, 1, (int64_t[]){Cs}, "%s%s.weight", prefix, ln);
    i->lnb = params_add(ps, 1, (int64_t[]){Cs}, "%s%s.bias", prefix, ln);
    connector_mlp2_declare(ps, (int)Cs, out_dim, prefix, l1, l2, i);
}

static void internvl_declare(ParamSet *ps, int in_dim, int out_dim, int scale, ConnectorParams *i) {
    declare_named(ps, in_dim, out_dim, scale, i, "mlp1.", "0", "1", "3");
}

static void internvl_hf_declare(ParamSet *ps, int in_dim, int out_dim, int scale, ConnectorParams *i) {
    declare_named(ps, in_dim, out_dim, scale, i, "model.multi_modal_projector.", "layer_norm", "linear_1", "linear_2");
}

static int shuffled_width(const Connector *c) { return c->scale * c->scale * c->in_dim; }

static void internvl_setup(Connector *c) {
    const Kernels *k = c->k;
    connector_setup_shuffle(c);
    connector_mlp2_setup(c);
    size_t n = (size_t)c->max_images * c->n_in * c->in_dim, rows = (size_t)c->max_images * c->n_out;
    c->normed = connector_alloc(c, n);
    c->dnormed = connector_alloc(c, n);
    c->ln_mean = k->alloc(rows * sizeof(float));
    c->ln_rstd = k->alloc(rows * sizeof(float));
}

// nn.LayerNorm starts at weight 1, bias 0; the Linears as PyTorch's defaults
static void internvl_init(Connector *c, Rng *rng) {
    size_t n = c->ps->p[c->i.lnw].numel;
    float *host = xcalloc(n, sizeof(float));
    params_upload(c->ps, c->i.lnb, host);
    for (size_t j = 0; j < n; j++) host[j] = 1.0f;
    params_upload(c->ps, c->i.lnw, host);
    free(host);
    connector_mlp2_init(c, rng, shuffled_width(c));
}

static void internvl_forward(Connector *c, act_t *out, const act_t *feats, int B) {
    const Kernels *k = c->k;
    const ParamSet *ps = c->ps;
    int N = B * c->n_out, Cs = shuffled_width(c);
    // (B * n_in, Cv) rows reordered = (B * n_out, 4Cv) tokens
    k->gather_rows(c->shuffled, feats, c->shuffle, B * c->n_in, c->in_dim);
    k->layernorm_forward(c->normed, c->ln_mean, c->ln_rstd, c->shuffled, params_act(ps, c->i.lnw),
                         params_act(ps, c->i.lnb), N, Cs, INTERNVL_LN_EPS);
    connector_mlp2_forward(c, out, c->normed, N, Cs);
}

static void internvl_backward(Connector *c, const act_t *dout, const act_t *feats, int B) {
    const Kernels *k = c->k;
    const ParamSet *ps = c->ps;
    int N = B * c->n_out, Cs = shuffled_width(c);
    k->zero(c->dnormed, (size_t)N * Cs * k->act_bytes);  // matmul_backward accumulates into it
    connector_mlp2_backward(c, c->dnormed, dout, c->normed, N, Cs);
    k->layernorm_backward(NULL, params_grad(ps, c->i.lnw), params_grad(ps, c->i.lnb), c->dnormed, c->shuffled,
                          params_act(ps, c->i.lnw), c->ln_mean, c->ln_rstd, N, Cs);
}

static void internvl_flops(const Connector *c, double *forward, double *first) {
    connector_mlp2_flops(c, c->n_out, shuffled_width(c), forward, first);
}

const ConnectorFamily connector_family_internvl = {
    .name = "internvl",
    .scale = 2,  // downsample_ratio 0.5
    .scale_configurable = 1,
    .image_format = "internvl",
    .declare = internvl_declare,
    .setup = internvl_setup,
    .init = internvl_init,
    .forward = internvl_forward,
    .backward = internvl_backward,
    .flops = internvl_flops,
};

const ConnectorFamily connector_family_internvl_hf = {
    .name = "internvl_hf",
    .scale = 2,
    .scale_configurable = 1,
    .image_format = "internvl",
    .declare = internvl_hf_declare,
    .setup = internvl_setup,
    .init = internvl_init,
    .forward = internvl_forward,
    .backward = internvl_backward,
    .flops = internvl_flops,
};
