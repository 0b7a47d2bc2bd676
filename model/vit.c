// vit.c: the shared vision encoder (see vit.h): the family registry, config.json reading, weight
// loading, and the one forward every family runs, layer by layer with shared scratch buffers.
#include "model/vit.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

// the registered families, indexed by VitType: a new family is one line here and its file
static const VitFamily *const vit_families[N_VIT_TYPES] = {
    [VIT_CLIP] = &vit_family_clip,
    [VIT_SIGLIP] = &vit_family_siglip,
    [VIT_INTERNVIT] = &vit_family_internvit,
    [VIT_INTERNVL_VISION] = &vit_family_internvl_vision,
    [VIT_NANOVLM] = &vit_family_nanovlm,
};

static const char *const vit_act_names[N_VIT_ACTS] = {
    [VIT_ACT_QUICK_GELU] = "quick_gelu", [VIT_ACT_GELU] = "gelu", [VIT_ACT_GELU_TANH] = "gelu_pytorch_tanh"};

const VitFamily *vit_family(VitType t) {
    CHECK(t >= 0 && t < N_VIT_TYPES && vit_families[t], "vision type %d", (int)t);
    return vit_families[t];
}

VitType vit_family_parse(const char *name) {
    char known[256] = "";
    for (int t = 0; t < N_VIT_TYPES; t++) {
        if (strcmp(name, vit_families[t]->name) == 0) return (VitType)t;
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", t ? ", " : "", vit_families[t]->name);
    }
    fatal("vision tower family \"%s\" is not known (%s)", name, known);
}

VitAct vit_family_act(VitType t) {
    const char *a = vit_family(t)->model_types[0].act;
    for (int i = 0; i < N_VIT_ACTS; i++)
        if (strcmp(a, vit_act_names[i]) == 0) return (VitAct)i;
    CHECK(0, "family %s: activation %s", vit_family(t)->name, a);
}

const char *vit_act_name(VitAct act) {
    CHECK(act >= 0 && act < N_VIT_ACTS, "activation %d", (int)act);
    return vit_act_names[act];
}

// the family and defaults of a config.json model_type; fatal() listing the known ones
static const VitModelType *vit_model_type(const char *mt, const char *path, const char *key, VitType *type) {
    char known[512] = "";
    for (int t = 0; t < N_VIT_TYPES; t++)
        for (const VitModelType *m = vit_families[t]->model_types; m->model_type; m++) {
            if (strcmp(mt, m->model_type) == 0) {
                *type = (VitType)t;
                return m;
            }
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", known[0] ? ", " : "", m->model_type);
        }
    fatal("%s: %s \"%s\" is not a vision tower svlm knows (%s)", path, key, mt, known);
}

const char *vit_type_name(const VitConfig *c) { return vit_family(c->type)->name; }
int vit_has_cls(const VitConfig *c) { return vit_family(c->type)->flags.cls; }
int vit_seq_len(const VitConfig *c) { return c->n_patches + vit_has_cls(c); }
int vit_feature_dim(const VitConfig *c) { return c->hidden; }

void vit_position_ids(const VitConfig *c, int *ids) {
    if (c->position_ids) c->position_ids(ids, c->grid);
    else
        for (int p = 0; p < c->n_patches; p++) ids[p] = p;
}

// a model_type whose patches do not add rows 0..n-1 in order: the frozen position table is
// rewritten once so that row p is the one patch p adds, and the forward stays one add
static void vit_apply_position_ids(Vit *v) {
    const VitConfig *c = &v->cfg;
    if (!c->position_ids) return;
    int NP = c->n_patches, C = c->hidden, cls = vit_has_cls(c), same = 1;
    int *ids = xmalloc((size_t)NP * sizeof(int));
    vit_position_ids(c, ids);
    for (int p = 0; p < NP; p++) same &= ids[p] == p;
    if (!same) {
        int i = 0;  // the tensor the family bound as the positions
        while (i < v->w.n && params_act(&v->w, i) != v->pos) i++;
        CHECK(i < v->w.n && v->w.p[i].numel == (size_t)(cls + NP) * C, "vision positions: not a declared (%d, %d) tensor",
              cls + NP, C);
        // zeroed: the dry-run backend downloads nothing
        float *old = xcalloc((size_t)(cls + NP) * C, sizeof(float)), *pos = xmalloc((size_t)(cls + NP) * C * sizeof(float));
        params_download(&v->w, i, old);
        memcpy(pos, old, (size_t)cls * C * sizeof(float));
        for (int p = 0; p < NP; p++) memcpy(pos + (size_t)(cls + p) * C, old + (size_t)(cls + ids[p]) * C, C * sizeof(float));
        params_upload(&v->w, i, pos);
        free(old);
        free(pos);
    }
    free(ids);
}

int vit_layers_run(const VitConfig *c, int vision_layer) {
    // hidden_states has layers + 1 entries: [0] is the embeddings (after pre-norm, if any)
    int hs = vision_layer < 0 ? c->layers + 1 + vision_layer : vision_layer;
    if (hs < 0 || hs > c->layers)
        fatal("vision_layer = %d is out of range for a %d-layer vision encoder (-%d..%d)", vision_layer, c->layers,
              c->layers + 1, c->layers);
    return hs;
}

void vit_config_load(VitConfig *c, const char *dir) {
    char path[2048];
    path_join(path, sizeof path, dir, "config.json");
    if (!dir_exists(dir)) fatal("%s: vision model directory not found", dir);
    if (!file_exists(path)) fatal("%s: missing (vision model directory needs a config.json)", path);
    cJSON *root = json_load_file(path);
    const cJSON *vc = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
    if (vc && !cJSON_IsObject(vc)) fatal("%s: \"vision_config\" is not an object", path);
    const cJSON *o = vc ? vc : root;
    memset(c, 0, sizeof *c);
    const char *key = vc ? "vision_config.model_type" : "model_type";
    // absent: the family whose own flat config this is (config_marker), else CLIP, as svlm has
    // always read it
    const char *absent = "clip_vision_model";
    for (int t = 0; t < N_VIT_TYPES; t++)
        if (vit_families[t]->config_marker && cJSON_GetObjectItemCaseSensitive(o, vit_families[t]->config_marker))
            absent = vit_families[t]->model_types[0].model_type;
    const char *mt = json_get_str_opt(o, "model_type", absent, path);
    const VitModelType *d = vit_model_type(mt, path, key, &c->type);
    const char *sq[2] = {"image_size", "patch_size"};
    int sq_val[2] = {0, 0};  // a [h, w] list (internvl_vision) must be square
    for (int i = 0; i < 2; i++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, sq[i]);
        if (!cJSON_IsArray(j)) continue;
        const cJSON *h = cJSON_GetArrayItem(j, 0), *w = cJSON_GetArrayItem(j, 1);
        int64_t hv, wv;
        if (cJSON_GetArraySize(j) != 2 || !json_is_i64(h, 1, 65536, &hv) || !json_is_i64(w, 1, 65536, &wv) || hv != wv)
            fatal("%s: %s is a list that is not [n, n]: only square images and patches are supported", path, sq[i]);
        sq_val[i] = (int)hv;
    }
    // absent keys take the family config class's defaults, as transformers does
    c->hidden = json_get_int_opt(o, "hidden_size", d->hidden, path);
    c->mlp = json_get_int_opt(o, "intermediate_size", d->mlp, path);
    c->layers = json_get_int_opt(o, "num_hidden_layers", d->layers, path);
    c->heads = json_get_int_opt(o, "num_attention_heads", d->heads, path);
    c->image_size = sq_val[0] ? sq_val[0] : json_get_int_opt(o, "image_size", d->image_size, path);
    c->patch = sq_val[1] ? sq_val[1] : json_get_int_opt(o, "patch_size", d->patch, path);
    double eps = json_get_num_opt(o, "layer_norm_eps", d->eps, path);
    if (!(eps > 0 && eps < 1)) fatal("%s: key \"layer_norm_eps\" must be in (0, 1), got %g", path, eps);
    c->eps = (float)eps;
    int ch = json_get_int_opt(o, "num_channels", 3, path);
    const char *act = json_get_str_opt(o, "hidden_act", d->act, path);
    if (ch != 3) fatal("%s: num_channels = %d (only RGB, 3, is supported)", path, ch);
    int a = 0;
    while (a < N_VIT_ACTS && strcmp(act, vit_act_names[a]) != 0) a++;
    if (a == N_VIT_ACTS) fatal("%s: hidden_act \"%s\" is not supported (quick_gelu, gelu or gelu_pytorch_tanh)", path, act);
    c->act = (VitAct)a;
    c->qkv_bias = 1;
    c->prep = d->prep;
    c->position_ids = d->position_ids;
    const VitFamily *fam = vit_family(c->type);
    if (fam->config) fam->config(c, o, path);
    if (c->hidden <= 0 || c->heads <= 0 || c->hidden % c->heads)
        fatal("%s: hidden_size %d is not a multiple of num_attention_heads %d", path, c->hidden, c->heads);
    if (c->patch <= 0 || c->image_size <= 0 || c->image_size % c->patch)
        fatal("%s: image_size %d is not a multiple of patch_size %d", path, c->image_size, c->patch);
    if (c->layers <= 0 || c->mlp <= 0) fatal("%s: num_hidden_layers and intermediate_size must be positive", path);
    c->head_dim = c->hidden / c->heads;
    c->grid = c->image_size / c->patch;
    c->n_patches = c->grid * c->grid;
    cJSON_Delete(root);
}

void vit_image_prep(const VitConfig *c, const char *dir, ImagePrep *p) {
    CHECK(c->prep >= 0 && c->prep < N_IMAGE_PREP, "vision tower %s states no image preprocessing", vit_type_name(c));
    image_prep_load(p, dir, c->prep, c->image_size);
}

void vit_declare(ParamSet *w, const VitConfig *c, int n_layers) { vit_family(c->type)->declare(w, c, n_layers); }

act_t *vit_weight(const Vit *v, const char *fmt, ...) {
    char full[PARAM_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(full, sizeof full, fmt, ap);
    va_end(ap);
    int i = params_find(&v->w, full);
    CHECK(i >= 0, "vision weight %s was not declared", full);
    return params_act(&v->w, i);
}

void vit_fold_scale(Vit *v, const char *w_name, const char *b_name, const char *s_name) {
    ParamSet *w = &v->w;
    int iw = params_find(w, w_name), ib = params_find(w, b_name), is = params_find(w, s_name);
    CHECK(iw >= 0 && ib >= 0 && is >= 0, "vit_fold_scale: %s, %s or %s not declared", w_name, b_name, s_name);
    size_t rows = w->p[is].numel, cols = w->p[iw].numel / rows;
    CHECK(w->p[ib].numel == rows && cols * rows == w->p[iw].numel, "vit_fold_scale: %s shapes", w_name);
    // zeroed: the dry-run backend downloads nothing
    float *W = xcalloc(rows * cols, sizeof(float)), *b = xcalloc(rows, sizeof(float)), *s = xcalloc(rows, sizeof(float));
    params_download(w, iw, W);
    params_download(w, ib, b);
    params_download(w, is, s);
    for (size_t r = 0; r < rows; r++) {  // x + s * (W x + b) = x + (s W) x + s b
        for (size_t j = 0; j < cols; j++) W[r * cols + j] *= s[r];
        b[r] *= s[r];
    }
    params_upload(w, iw, W);
    params_upload(w, ib, b);
    free(W);
    free(b);
    free(s);
}

void vit_load(Vit *v, const Kernels *k, const char *dir, int vision_layer, int max_images) {
    memset(v, 0, sizeof *v);
    v->k = k;
    vit_config_load(&v->cfg, dir);
    const VitConfig *c = &v->cfg;
    v->fam = vit_family(c->type);
    v->n_run = vit_layers_run(c, vision_layer);
    v->max_images = max_images;

    HfWeights hw;
    hf_weights_open(&hw, dir);
    const char *anchor_name = v->fam->anchor;
    const char *anchor = hf_weights_find_suffix(&hw, anchor_name);
    if (!anchor) fatal("%s: no tensor ending in %s: not a %s vision model", dir, anchor_name, v->fam->title);
    char prefix[256];
    size_t plen = strlen(anchor) - strlen(anchor_name);
    if (plen >= sizeof prefix) fatal("%s: tensor name prefix too long", dir);
    memcpy(prefix, anchor, plen);
    prefix[plen] = 0;

    ParamSet *w = &v->w;
    params_init(w, k, 0);
    vit_declare(w, c, v->n_run);
    params_alloc(w);
    params_load_hf(w, &hw, prefix);
    hf_weights_close(&hw);
    v->layer = xcalloc(v->n_run ? v->n_run : 1, sizeof(VitLayer));
    v->fam->bind(v);  // by name: the declaration's order is free to change
    vit_apply_position_ids(v);

    // row indices that drop CLS: image b's patch p sits at row b*T + cls + p of the residual stream
    int C = c->hidden, P = c->patch, I = c->mlp, NP = c->n_patches, T1 = vit_seq_len(c), cls = vit_has_cls(c);
    int *idx = xmalloc((size_t)max_images * NP * sizeof(int));
    for (int b = 0; b < max_images; b++)
        for (int p = 0; p < NP; p++) idx[b * NP + p] = b * T1 + cls + p;
    v->drop_cls = k->alloc((size_t)max_images * NP * sizeof(int));
    k->upload(v->drop_cls, idx, (size_t)max_images * NP * sizeof(int));
    free(idx);

    size_t T = (size_t)T1, B = max_images;
    v->cols = k->alloc(B * c->n_patches * 3 * P * P * k->act_bytes);
    v->x = k->alloc(B * T * C * k->act_bytes);
    v->ln = k->alloc(B * T * C * k->act_bytes);
    v->q = k->alloc(B * T * C * k->act_bytes);
    v->kk = k->alloc(B * T * C * k->act_bytes);
    v->v = k->alloc(B * T * C * k->act_bytes);
    v->att = k->alloc(B * T * C * k->act_bytes);
    v->h = k->alloc(B * T * I * k->act_bytes);
}

void vit_set_post_norm(Vit *v, int on) {
    if (on && !v->fam->flags.post_norm)
        fatal("the %s vision tower has no final norm to apply to its features", v->fam->name);
    if (on && v->n_run != v->cfg.layers)
        fatal("the final norm of the %s vision tower applies to its last layer: set vision_layer = -1 (it selects "
              "hidden_states[%d] of %d layers)", v->fam->name, v->n_run, v->cfg.layers);
    v->post_norm = on;
}

void vit_free(Vit *v) {
    const Kernels *k = v->k;
    void *bufs[] = {v->cols, v->x, v->ln, v->q, v->kk, v->v, v->att, v->h, v->drop_cls};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) k->free(bufs[i]);
    params_free(&v->w);
    free(v->layer);
    memset(v, 0, sizeof *v);
}

static void vit_activation(const Kernels *k, VitAct act, act_t *h, size_t n) {
    switch (act) {
    case VIT_ACT_QUICK_GELU: k->quick_gelu_forward(h, h, n); break;
    case VIT_ACT_GELU: k->gelu_forward(h, h, n); break;
    case VIT_ACT_GELU_TANH: k->gelu_tanh_forward(h, h, n); break;
    default: CHECK(0, "vision activation %d", (int)act);
    }
}

// the embeddings into the residual stream x (B, T, C): patches (conv as im2col + matmul), class
// token, positions, pre-norm, as the family's flags say
static void vit_embed_images(Vit *v, const act_t *pixels, int B) {
    const Kernels *k = v->k;
    const VitConfig *c = &v->cfg;
    const VitFlags *f = &v->fam->flags;
    int C = c->hidden, P = c->patch, NP = c->n_patches, N = B * vit_seq_len(c);
    k->im2col_patches(v->cols, pixels, B, c->image_size, P);
    // (B*NP, 3*P*P) @ (C, 3*P*P)^T; the ln buffer holds the result
    k->matmul_forward(v->ln, v->cols, v->patch_w, f->patch_bias ? v->patch_b : NULL, B * NP, 3 * P * P, C, 1.0f, 0);
    act_t *emb = f->pre_norm ? v->att : v->x;
    if (f->cls) {
        k->vit_embed(emb, v->ln, v->cls, v->pos, B, NP, C);  // (B, 1 + NP, C)
    } else {
        size_t img = (size_t)NP * C;
        for (int b = 0; b < B; b++) {
            size_t off = b * img * k->act_bytes;
            k->add((char *)emb + off, (char *)v->ln + off, v->pos, img);  // (NP, C) positions per image
        }
    }
    if (f->pre_norm) k->layernorm_forward(v->x, NULL, NULL, v->att, v->pre_w, v->pre_b, N, C, c->eps);
}

void vit_forward(Vit *v, act_t *feats, const act_t *pixels, int B) {
    const Kernels *k = v->k;
    const VitConfig *c = &v->cfg;
    CHECK(B <= v->max_images, "vit_forward with %d images, planned for %d", B, v->max_images);
    int C = c->hidden, NP = c->n_patches, T = vit_seq_len(c), I = c->mlp;
    int N = B * T;
    vit_embed_images(v, pixels, B);
    for (int l = 0; l < v->n_run; l++) {  // pre-LN blocks
        const VitLayer *L = &v->layer[l];
        k->layernorm_forward(v->ln, NULL, NULL, v->x, L->ln1_w, L->ln1_b, N, C, c->eps);
        k->matmul_forward(v->q, v->ln, L->q_w, L->q_b, N, C, C, 1.0f, 0);
        k->matmul_forward(v->kk, v->ln, L->k_w, L->k_b, N, C, C, 1.0f, 0);
        k->matmul_forward(v->v, v->ln, L->v_w, L->v_b, N, C, C, 1.0f, 0);
        k->attention_forward(v->att, NULL, v->q, v->kk, v->v, NULL, B, T, c->heads, c->heads, c->head_dim, 0);
        k->matmul_forward(v->x, v->att, L->o_w, L->o_b, N, C, C, 1.0f, 1);  // x += attn @ Wo^T + bo
        k->layernorm_forward(v->ln, NULL, NULL, v->x, L->ln2_w, L->ln2_b, N, C, c->eps);
        k->matmul_forward(v->h, v->ln, L->fc1_w, L->fc1_b, N, C, I, 1.0f, 0);
        vit_activation(k, c->act, v->h, (size_t)N * I);
        k->matmul_forward(v->x, v->h, L->fc2_w, L->fc2_b, N, I, C, 1.0f, 1);
    }
    const act_t *out = v->x;
    if (v->post_norm) {  // last_hidden_state
        k->layernorm_forward(v->ln, NULL, NULL, v->x, v->post_w, v->post_b, N, C, c->eps);
        out = v->ln;
    }
    k->gather_rows(feats, out, v->drop_cls, B * NP, C);  // (B, NP, C): CLS dropped
}
