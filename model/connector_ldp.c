// connector_ldp.c: MobileVLM-V2's LDPv2 connector: the two-layer MLP of connector_mlp.c
// (model.mm_projector.mlp.mlp.{0,2}), a 2x2 average pool on the patch grid, then a depthwise 3x3
// conv with bias added back as a residual (model.mm_projector.peg.peg.0): (grid/2)^2 tokens.
#include "model/connector.h"

static void ldp_declare(ParamSet *ps, int in_dim, int out_dim, int scale, ConnectorParams *i) {
    int64_t H = out_dim;
    connector_mlp2_declare(ps, in_dim, out_dim, "model.mm_projector.mlp.mlp.", "0", "2", i);
    i->cw = params_add(ps, 4, (int64_t[]){H, 1, 3, 3}, "model.mm_projector.peg.peg.0.weight");
    i->cb = params_add(ps, 1, (int64_t[]){H}, "model.mm_projector.peg.peg.0.bias");
}

static void ldp_setup(Connector *c) {
    connector_mlp2_setup(c);
    c->pooled = connector_alloc(c, (size_t)c->max_images * c->n_out * c->out_dim);
}

static void ldp_init(Connector *c, Rng *rng) {
    connector_mlp2_init(c, rng, c->in_dim);
    connector_init_uniform(c->ps, c->i.cw, 1.0f / 3.0f, rng);  // depthwise 3x3: fan_in = 9
    connector_init_uniform(c->ps, c->i.cb, 1.0f / 3.0f, rng);
}

static void ldp_forward(Connector *c, act_t *out, const act_t *feats, int B) {
    const Kernels *k = c->k;
    const ParamSet *ps = c->ps;
    int H = c->out_dim, g2 = c->grid / 2;
    connector_mlp2_forward(c, c->h2, feats, B * c->n_in, c->in_dim);     // (B, n_in, H)
    k->avgpool2x2_forward(c->pooled, c->h2, B, c->grid, c->grid, H);     // (B, n_out, H)
    k->dwconv3x3_forward(out, c->pooled, params_act(ps, c->i.cw), params_act(ps, c->i.cb), B, g2, g2, H);
    k->add(out, out, c->pooled, (size_t)B * c->n_out * H);  // positional injection is residual
}

static void ldp_backward(Connector *c, const act_t *dout, const act_t *feats, int B) {
    const Kernels *k = c->k;
    const ParamSet *ps = c->ps;
    int H = c->out_dim, g2 = c->grid / 2;
    size_t nout = (size_t)B * c->n_out * H;
    // d(pooled) = dout (residual) + conv^T dout; d1 holds it, (B, n_out, H)
    k->copy(c->d1, dout, nout * k->act_bytes);
    k->dwconv3x3_backward(c->d1, params_grad(ps, c->i.cw), params_grad(ps, c->i.cb), dout, c->pooled,
                          params_act(ps, c->i.cw), B, g2, g2, H);
    k->avgpool2x2_backward(c->d2, c->d1, B, c->grid, c->grid, H);  // (B, n_in, H)
    connector_mlp2_backward(c, NULL, c->d2, feats, B * c->n_in, c->in_dim);
}

static void ldp_flops(const Connector *c, double *forward, double *first) {
    connector_mlp2_flops(c, c->n_in, c->in_dim, forward, first);
    *forward += 2.0 * c->n_out * 9 * c->out_dim;  // the depthwise 3x3
}

const ConnectorFamily connector_family_ldp = {
    .name = "ldp",
    .scale = 2,
    .declare = ldp_declare,
    .setup = ldp_setup,
    .init = ldp_init,
    .forward = ldp_forward,
    .backward = ldp_backward,
    .flops = ldp_flops,
};
