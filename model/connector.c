// connector.c: the connector registry and what the families share (see connector.h): names,
// scales and token counts, declaration, setup, init and the dispatch to each family's math.
#include "model/connector.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "model/pixel_shuffle.h"

// the registered families, indexed by ConnectorType: a new type is one line here and its file
static const ConnectorFamily *const connector_families[N_CONNECTOR_TYPES] = {
    [CONNECTOR_LDP] = &connector_family_ldp,
    [CONNECTOR_MLP2X_GELU] = &connector_family_mlp2x_gelu,
    [CONNECTOR_IDEFICS3] = &connector_family_idefics3,
    [CONNECTOR_INTERNVL] = &connector_family_internvl,
    [CONNECTOR_INTERNVL_HF] = &connector_family_internvl_hf,
    [CONNECTOR_NANOVLM] = &connector_family_nanovlm,
    [CONNECTOR_LLAVA_HF] = &connector_family_llava_hf,
};

const ConnectorFamily *connector_family(ConnectorType t) {
    CHECK(t >= 0 && t < N_CONNECTOR_TYPES && connector_families[t], "connector type %d", (int)t);
    return connector_families[t];
}

ConnectorType connector_type_parse(const char *name) {
    char known[256] = "";
    for (int t = 0; t < N_CONNECTOR_TYPES; t++) {
        if (strcmp(name, connector_families[t]->name) == 0) return (ConnectorType)t;
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", t ? ", " : "", connector_families[t]->name);
    }
    fatal("connector \"%s\" is not known (%s)", name, known);
}

const char *connector_type_name(ConnectorType t) { return connector_family(t)->name; }

const char *connector_image_format(ConnectorType t) {
    const char *f = connector_family(t)->image_format;
    return f ? f : "llava";
}

int connector_scale(ConnectorType type, int scale) {
    const ConnectorFamily *f = connector_family(type);
    if (scale == 0 || scale == f->scale) return f->scale;
    if (!f->scale_configurable)
        fatal("connector %s has a fixed %dx%d pooling: pixel_shuffle = %d is not for it (leave it 0)", f->name,
              f->scale, f->scale, scale);
    if (scale < 1 || scale > 64) fatal("connector %s: pixel_shuffle = %d must be in [1, 64]", f->name, scale);
    return scale;
}

void connector_check_grid(ConnectorType type, int scale, int grid) {
    const char *name = connector_type_name(type);
    int s = connector_scale(type, scale);
    if (grid % s == 0) return;
    char need[64];
    if (s == 2) snprintf(need, sizeof need, "an even patch grid");
    else snprintf(need, sizeof need, "a patch grid divisible by %d", s);
    fatal("connector %s takes %dx%d patches per token and needs %s; the vision encoder gives %dx%d", name, s, s, need,
          grid, grid);
}

int connector_tokens(ConnectorType type, int scale, int grid) {
    connector_check_grid(type, scale, grid);
    int side = grid / connector_scale(type, scale);
    return side * side;
}

void connector_declare_params(ParamSet *ps, ConnectorType type, int scale, int in_dim, int out_dim,
                              ConnectorParams *idx) {
    ConnectorParams i = {-1, -1, -1, -1, -1, -1, -1, -1};
    params_declare_group(ps, PARAM_GROUP_CONNECTOR);
    connector_family(type)->declare(ps, in_dim, out_dim, connector_scale(type, scale), &i);
    params_declare_group(ps, PARAM_GROUP_FROZEN);
    if (idx) *idx = i;
}

void connector_declare(Connector *c, ParamSet *ps, ConnectorType type, int scale, int in_dim, int out_dim, int grid,
                       int max_images) {
    memset(c, 0, sizeof *c);
    c->type = type;
    c->fam = connector_family(type);
    c->k = ps->k;
    c->ps = ps;
    c->in_dim = in_dim;
    c->out_dim = out_dim;
    c->scale = connector_scale(type, scale);
    c->grid = grid;
    c->n_in = grid * grid;
    c->n_out = connector_tokens(type, scale, grid);
    c->max_images = max_images;
    connector_declare_params(ps, type, scale, in_dim, out_dim, &c->i);
}

act_t *connector_alloc(const Connector *c, size_t n) { return c->k->alloc(n * c->k->act_bytes); }

void connector_setup_shuffle(Connector *c) {
    const Kernels *k = c->k;
    size_t rows = (size_t)c->max_images * c->n_in;
    int *idx = xmalloc(rows * sizeof(int));
    pixel_shuffle_rows(idx, c->max_images, c->grid, c->scale);
    c->shuffle = k->alloc(rows * sizeof(int));
    k->upload(c->shuffle, idx, rows * sizeof(int));
    free(idx);
    c->shuffled = connector_alloc(c, rows * c->in_dim);
}

void connector_setup(Connector *c) { c->fam->setup(c); }

void connector_free(Connector *c) {
    const Kernels *k = c->k;
    void *bufs[] = {c->h1, c->g, c->h2, c->d1, c->d2, c->pooled, c->shuffled, c->shuffle, c->normed, c->dnormed,
                    c->ln_mean, c->ln_rstd};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) k->free(bufs[i]);
    memset(c, 0, sizeof *c);
}

void connector_init_uniform(ParamSet *ps, int i, float bound, Rng *rng) {
    size_t n = ps->p[i].numel;
    float *host = xmalloc(n * sizeof(float));
    for (size_t j = 0; j < n; j++) host[j] = (2.0f * rng_uniform(rng) - 1.0f) * bound;
    params_upload(ps, i, host);
    free(host);
}

void connector_init(Connector *c, uint64_t seed) {
    Rng rng;
    rng_init(&rng, seed);
    c->fam->init(c, &rng);
}

void connector_forward(Connector *c, act_t *out, const act_t *feats, int B) {
    CHECK(B <= c->max_images, "connector_forward with %d images, planned for %d", B, c->max_images);
    c->fam->forward(c, out, feats, B);
}

void connector_backward(Connector *c, const act_t *dout, const act_t *feats, int B) {
    CHECK(B <= c->max_images, "connector_backward with %d images, planned for %d", B, c->max_images);
    c->fam->backward(c, dout, feats, B);
}
