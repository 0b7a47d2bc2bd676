// connector_mlp.c: LLaVA-1.5's mlp2x_gelu connector, Linear(Cv,H), GELU, Linear(H,H) on every patch
// (model.mm_projector.{0,2}), and that two-layer MLP's math for the connectors built on it (ldp).
#include <math.h>

#include "model/connector.h"

void connector_mlp2_declare(ParamSet *ps, int in_dim, int out_dim, const char *prefix, const char *l1,
                            const char *l2, ConnectorParams *i) {
    int64_t H = out_dim;
    i->w1 = params_add(ps, 2, (int64_t[]){H, in_dim}, "%s%s.weight", prefix, l1);
    i->b1 = params_add(ps, 1, (int64_t[]){H}, "%s%s.bias", prefix, l1);
    i->w2 = params_add(ps, 2, (int64_t[]){H, H}, "%s%s.weight", prefix, l2);
    i->b2 = params_add(ps, 1, (int64_t[]){H}, "%s%s.bias", prefix, l2);
}

void connector_mlp2_setup(Connector *c) {
    size_t n = (size_t)c->max_images * c->n_in * c->out_dim;
    c->h1 = connector_alloc(c, n);
    c->g = connector_alloc(c, n);
    c->h2 = connector_alloc(c, n);
    c->d1 = connector_alloc(c, n);
    c->d2 = connector_alloc(c, n);
}

void connector_mlp2_init(Connector *c, Rng *rng, int Cin) {
    float b1 = 1.0f / sqrtf((float)Cin), b2 = 1.0f / sqrtf((float)c->out_dim);
    connector_init_uniform(c->ps, c->i.w1, b1, rng);
    connector_init_uniform(c->ps, c->i.b1, b1, rng);
    connector_init_uniform(c->ps, c->i.w2, b2, rng);
    connector_init_uniform(c->ps, c->i.b2, b2, rng);
}

// x (N, Cin) -> out (N, H); h1 and g kept for the backward
void connector_mlp2_forward(Connector *c, act_t *out, const act_t *x, int N, int Cin) {
    const Kernels *k = c->k;
    const ParamSet *ps = c->ps;
    int H = c->out_dim;
    k->matmul_forward(c->h1, x, params_act(ps, c->i.w1), params_act(ps, c->i.b1), N, Cin, H, 1.0f, 0);
    k->gelu_forward(c->g, c->h1, (size_t)N * H);
    k->matmul_forward(out, c->g, params_act(ps, c->i.w2), params_act(ps, c->i.b2), N, H, H, 1.0f, 0);
}

// dout (N, H) -> weight gradients (+=) and dx (+=, when not NULL); x the forward's input; d1 is scratch
void connector_mlp2_backward(Connector *c, act_t *dx, const act_t *dout, const act_t *x, int N, int Cin) {
    const Kernels *k = c->k;
    const ParamSet *ps = c->ps;
    int H = c->out_dim;
    // second linear: weight grads, and d(g) into d1, its first writer (overwritten: no memset)
    k->matmul_backward_set(c->d1, params_grad(ps, c->i.w2), params_grad(ps, c->i.b2), dout, c->g,
                           params_act(ps, c->i.w2), N, H, H, 1.0f);
    k->gelu_backward(c->d1, c->d1, c->h1, (size_t)N * H);
    // first linear: d(x) only when something trainable comes before it (the tower is frozen)
    k->matmul_backward(dx, params_grad(ps, c->i.w1), params_grad(ps, c->i.b1), c->d1, x,
                       params_act(ps, c->i.w1), N, Cin, H, 1.0f);
}

void connector_mlp2_flops(const Connector *c, int rows, int Cin, double *forward, double *first) {
    double H = c->out_dim;
    *first = 2.0 * rows * Cin * H;
    *forward = *first + 2.0 * rows * H * H;
}

static void mlp2x_flops(const Connector *c, double *forward, double *first) {
    connector_mlp2_flops(c, c->n_in, c->in_dim, forward, first);
}

static void mlp2x_declare(ParamSet *ps, int in_dim, int out_dim, int scale, ConnectorParams *i) {
    connector_mlp2_declare(ps, in_dim, out_dim, "model.mm_projector.", "0", "2", i);
}

static void mlp2x_init(Connector *c, Rng *rng) { connector_mlp2_init(c, rng, c->in_dim); }

static void mlp2x_forward(Connector *c, act_t *out, const act_t *feats, int B) {
    connector_mlp2_forward(c, out, feats, B * c->n_in, c->in_dim);
}

static void mlp2x_backward(Connector *c, const act_t *dout, const act_t *feats, int B) {
    connector_mlp2_backward(c, NULL, dout, feats, B * c->n_in, c->in_dim);
}

const ConnectorFamily connector_family_mlp2x_gelu = {
    .name = "mlp2x_gelu",
    .scale = 1,
    .declare = mlp2x_declare,
    .setup = connector_mlp2_setup,
    .init = mlp2x_init,
    .forward = mlp2x_forward,
    .backward = mlp2x_backward,
    .flops = mlp2x_flops,
};
