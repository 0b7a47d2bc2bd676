// connector.c: ldp and mlp2x_gelu connectors, forward and backward (see connector.h).
#include "model/connector.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "common/util.h"

// one row per type, indexed by ConnectorType: its config name and the side of the square of
// patches that becomes one token (ldp pools 2x2)
static const struct {
    const char *name;
    int pool;
} connector_types[N_CONNECTOR_TYPES] = {
    [CONNECTOR_LDP] = {"ldp", 2},
    [CONNECTOR_MLP2X_GELU] = {"mlp2x_gelu", 1},
};

ConnectorType connector_type_parse(const char *name) {
    char known[256] = "";
    for (int t = 0; t < N_CONNECTOR_TYPES; t++) {
        if (strcmp(name, connector_types[t].name) == 0) return (ConnectorType)t;
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", t ? ", " : "", connector_types[t].name);
    }
    fatal("connector \"%s\" is not known (%s)", name, known);
}

const char *connector_type_name(ConnectorType t) {
    CHECK(t >= 0 && t < N_CONNECTOR_TYPES, "connector type %d", (int)t);
    return connector_types[t].name;
}

void connector_check_grid(ConnectorType type, int grid) {
    const char *name = connector_type_name(type);
    int pool = connector_types[type].pool;
    if (grid % pool == 0) return;
    char need[64];
    if (pool == 2) snprintf(need, sizeof need, "an even patch grid");
    else snprintf(need, sizeof need, "a patch grid divisible by %d", pool);
    fatal("connector %s pools %dx%d and needs %s; the vision encoder gives %dx%d", name, pool, pool, need, grid, grid);
}

int connector_tokens(ConnectorType type, int grid) {
    connector_check_grid(type, grid);
    int side = grid / connector_types[type].pool;
    return side * side;
}

void connector_declare_params(ParamSet *ps, ConnectorType type, int in_dim, int out_dim, ConnectorParams *idx) {
    int64_t H = out_dim;
    ConnectorParams i = {-1, -1, -1, -1, -1, -1};
    params_declare_group(ps, PARAM_GROUP_CONNECTOR);
    if (type == CONNECTOR_LDP) {
        i.w1 = params_add(ps, 2, (int64_t[]){H, in_dim}, "model.mm_projector.mlp.mlp.0.weight");
        i.b1 = params_add(ps, 1, (int64_t[]){H}, "model.mm_projector.mlp.mlp.0.bias");
        i.w2 = params_add(ps, 2, (int64_t[]){H, H}, "model.mm_projector.mlp.mlp.2.weight");
        i.b2 = params_add(ps, 1, (int64_t[]){H}, "model.mm_projector.mlp.mlp.2.bias");
        i.cw = params_add(ps, 4, (int64_t[]){H, 1, 3, 3}, "model.mm_projector.peg.peg.0.weight");
        i.cb = params_add(ps, 1, (int64_t[]){H}, "model.mm_projector.peg.peg.0.bias");
    } else {
        i.w1 = params_add(ps, 2, (int64_t[]){H, in_dim}, "model.mm_projector.0.weight");
        i.b1 = params_add(ps, 1, (int64_t[]){H}, "model.mm_projector.0.bias");
        i.w2 = params_add(ps, 2, (int64_t[]){H, H}, "model.mm_projector.2.weight");
        i.b2 = params_add(ps, 1, (int64_t[]){H}, "model.mm_projector.2.bias");
    }
    params_declare_group(ps, PARAM_GROUP_FROZEN);
    if (idx) *idx = i;
}

void connector_declare(Connector *c, ParamSet *ps, ConnectorType type, int in_dim, int out_dim, int grid,
                       int max_images) {
    memset(c, 0, sizeof *c);
    c->type = type;
    c->k = ps->k;
    c->ps = ps;
    c->in_dim = in_dim;
    c->out_dim = out_dim;
    c->grid = grid;
    c->n_in = grid * grid;
    c->n_out = connector_tokens(type, grid);
    c->max_images = max_images;
    connector_declare_params(ps, type, in_dim, out_dim, &c->i);
}

void connector_setup(Connector *c) {
    const Kernels *k = c->k;
    size_t n = (size_t)c->max_images * c->n_in * c->out_dim * k->act_bytes;
    c->h1 = k->alloc(n);
    c->g = k->alloc(n);
    c->h2 = k->alloc(n);
    c->d1 = k->alloc(n);
    c->d2 = k->alloc(n);
    if (c->type == CONNECTOR_LDP) c->pooled = k->alloc((size_t)c->max_images * c->n_out * c->out_dim * k->act_bytes);
}

void connector_free(Connector *c) {
    const Kernels *k = c->k;
    void *bufs[] = {c->h1, c->g, c->h2, c->d1, c->d2, c->pooled};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) k->free(bufs[i]);
    memset(c, 0, sizeof *c);
}

// U(-bound, bound) into tensor i of the set, as torch.nn.init.kaiming_uniform_(a=sqrt(5)) gives
// bound = 1/sqrt(fan_in) for weights and the same bound for biases
static void init_uniform(ParamSet *ps, int i, float bound, Rng *rng) {
    size_t n = ps->p[i].numel;
    float *host = xmalloc(n * sizeof(float));
    for (size_t j = 0; j < n; j++) host[j] = (2.0f * rng_uniform(rng) - 1.0f) * bound;
    params_upload(ps, i, host);
    free(host);
}

void connector_init(Connector *c, uint64_t seed) {
    Rng rng;
    rng_init(&rng, seed);
    float b1 = 1.0f / sqrtf((float)c->in_dim), b2 = 1.0f / sqrtf((float)c->out_dim);
    init_uniform(c->ps, c->i.w1, b1, &rng);
    init_uniform(c->ps, c->i.b1, b1, &rng);
    init_uniform(c->ps, c->i.w2, b2, &rng);
    init_uniform(c->ps, c->i.b2, b2, &rng);
    if (c->type == CONNECTOR_LDP) {  // depthwise 3x3: fan_in = 9
        init_uniform(c->ps, c->i.cw, 1.0f / 3.0f, &rng);
        init_uniform(c->ps, c->i.cb, 1.0f / 3.0f, &rng);
    }
}

void connector_forward(Connector *c, act_t *out, const act_t *feats, int B) {
    const Kernels *k = c->k;
    const ParamSet *ps = c->ps;
    CHECK(B <= c->max_images, "connector_forward with %d images, planned for %d", B, c->max_images);
    int N = B * c->n_in, H = c->out_dim;
    k->matmul_forward(c->h1, feats, params_act(ps, c->i.w1), params_act(ps, c->i.b1), N, c->in_dim, H, 1.0f, 0);
    k->gelu_forward(c->g, c->h1, (size_t)N * H);
    act_t *h2 = c->type == CONNECTOR_LDP ? c->h2 : out;
    k->matmul_forward(h2, c->g, params_act(ps, c->i.w2), params_act(ps, c->i.b2), N, H, H, 1.0f, 0);
    if (c->type == CONNECTOR_LDP) {
        k->avgpool2x2_forward(c->pooled, c->h2, B, c->grid, c->grid, H);  // (B, n_out, H)
        int g2 = c->grid / 2;
        k->dwconv3x3_forward(out, c->pooled, params_act(ps, c->i.cw), params_act(ps, c->i.cb), B, g2, g2, H);
        k->add(out, out, c->pooled, (size_t)B * c->n_out * H);  // positional injection is residual
    }
}

void connector_backward(Connector *c, const act_t *dout, const act_t *feats, int B) {
    const Kernels *k = c->k;
    const ParamSet *ps = c->ps;
    int N = B * c->n_in, H = c->out_dim;
    size_t nout = (size_t)B * c->n_out * H;
    const act_t *dh2 = dout;
    if (c->type == CONNECTOR_LDP) {
        int g2 = c->grid / 2;
        // d(pooled) = dout (residual) + conv^T dout; d1 holds it, (B, n_out, H)
        k->copy(c->d1, dout, nout * k->act_bytes);
        k->dwconv3x3_backward(c->d1, params_grad(ps, c->i.cw), params_grad(ps, c->i.cb), dout, c->pooled,
                              params_act(ps, c->i.cw), B, g2, g2, H);
        k->avgpool2x2_backward(c->d2, c->d1, B, c->grid, c->grid, H);  // (B, n_in, H)
        dh2 = c->d2;
    }
    // second linear: weight grads, and d(g) into d1 (zeroed: matmul_backward accumulates)
    k->zero(c->d1, (size_t)N * H * k->act_bytes);
    k->matmul_backward(c->d1, params_grad(ps, c->i.w2), params_grad(ps, c->i.b2), dh2, c->g,
                       params_act(ps, c->i.w2), N, H, H, 1.0f);
    k->gelu_backward(c->d1, c->d1, c->h1, (size_t)N * H);
    // first linear: the vision tower is frozen, so no gradient for feats
    k->matmul_backward(NULL, params_grad(ps, c->i.w1), params_grad(ps, c->i.b1), c->d1, feats,
                       params_act(ps, c->i.w1), N, c->in_dim, H, 1.0f);
}
