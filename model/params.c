// params.c: named tensors in one buffer per set (see params.h).
#include "model/params.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

void params_init(ParamSet *ps, const Kernels *k, int trainable) {
    memset(ps, 0, sizeof *ps);
    ps->k = k;
    ps->trainable = trainable;
}

int params_add(ParamSet *ps, int ndim, const int64_t *shape, const char *fmt, ...) {
    CHECK(ps->data == NULL && ps->master == NULL, "params_add after params_alloc");
    CHECK(ndim >= 1 && ndim <= 4, "ndim %d", ndim);
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? 2 * ps->cap : 64;
        ps->p = xrealloc(ps->p, ps->cap * sizeof(Param));
    }
    Param *p = &ps->p[ps->n];
    memset(p, 0, sizeof *p);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    CHECK(len > 0 && len < PARAM_NAME_MAX, "parameter name too long");
    p->ndim = ndim;
    p->group = ps->group;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        CHECK(shape[i] > 0, "tensor %s: dimension %d is %lld", p->name, i, (long long)shape[i]);
        p->shape[i] = shape[i];
        p->numel *= (size_t)shape[i];
    }
    size_t nl = strlen(p->name);
    p->decay = !(nl >= 5 && strcmp(p->name + nl - 5, ".bias") == 0);
    // every tensor starts 16-byte aligned (8 elements of bf16), which cuBLASLt's fast kernels
    // require; the few padding elements are zero and stay zero (no gradient reaches them)
    // (unless joined to the tensor before it: params_join_next)
    p->offset = ps->join_next ? ps->numel : (ps->numel + 7) & ~(size_t)7;
    ps->join_next = 0;
    ps->numel = p->offset + p->numel;
    return ps->n++;
}

void params_join_next(ParamSet *ps) {
    CHECK(ps->n > 0, "params_join_next before any tensor");
    ps->join_next = 1;
}

int params_consecutive(const ParamSet *ps, int i, int j) {
    return i >= 0 && j >= 0 && ps->p[i].offset + ps->p[i].numel == ps->p[j].offset;
}

void params_declare_group(ParamSet *ps, ParamGroup g) {
    CHECK(g >= 0 && g < N_PARAM_GROUPS, "parameter group %d", (int)g);
    ps->group = g;
}

const char *param_group_name(ParamGroup g) {
    static const char *const names[N_PARAM_GROUPS] = {"frozen", "connector", "lora"};
    CHECK(g >= 0 && g < N_PARAM_GROUPS, "parameter group %d", (int)g);
    return names[g];
}

size_t params_group_numel(const ParamSet *ps, ParamGroup g) {
    size_t n = 0;
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].group == g) n += ps->p[i].numel;
    return n;
}

void params_shard_optimizer(ParamSet *ps, int shards, int shard) {
    CHECK(ps->trainable && !ps->master && shards >= 1 && shard >= 0 && shard < shards, "params_shard_optimizer %d of %d", shard, shards);
    ps->opt_shards = shards;
    ps->opt_shard = shard;
}

// span and moment slice from the declared tensors and the sharding (1 shard by default)
static void layout_spans(ParamSet *ps) {
    size_t n = ps->numel ? ps->numel : 1, s = ps->opt_shards > 0 ? (size_t)ps->opt_shards : 1;
    size_t slice = (n + s - 1) / s;
    ps->span = slice * s;
    ps->opt_begin = slice * (size_t)ps->opt_shard;
    ps->opt_len = s == 1 ? n : slice;
    int sharded = s > 1 && !ps->k->act_is_f32;  // the CPU's masters are its compute weights
    ps->master_begin = sharded ? ps->opt_begin : 0;
    ps->master_len = sharded ? slice : ps->span;
}

// elements of the compute copy: the span where slices of it are all-gathered, else the tensors
static size_t copy_len(const ParamSet *ps) {
    return ps->master_len < ps->span ? ps->span : ps->numel ? ps->numel : 1;
}

int params_masters_sharded(const ParamSet *ps) { return ps->master_len < ps->span; }

size_t params_bytes(const ParamSet *ps) {
    size_t n = ps->numel ? ps->numel : 1;
    if (!ps->trainable) return n * ps->k->act_bytes;
    ParamSet t = *ps;
    layout_spans(&t);
    return (t.span + t.master_len + 2 * t.opt_len) * sizeof(float) + (ps->k->act_is_f32 ? 0 : copy_len(&t) * ps->k->act_bytes);
}

void params_alloc(ParamSet *ps) {
    const Kernels *k = ps->k;
    size_t n = ps->numel ? ps->numel : 1;
    if (ps->trainable) {
        layout_spans(ps);
        ps->master = k->alloc(ps->master_len * sizeof(float));
        ps->grad = k->alloc(ps->span * sizeof(float));
        ps->m = k->alloc(ps->opt_len * sizeof(float));
        ps->v = k->alloc(ps->opt_len * sizeof(float));
        ps->data = k->act_is_f32 ? (act_t *)ps->master : k->alloc(copy_len(ps) * k->act_bytes);
    } else {
        ps->data = k->alloc(n * k->act_bytes);
    }
}

void params_free(ParamSet *ps) {
    const Kernels *k = ps->k;
    if (ps->trainable) {
        if (ps->data != (act_t *)ps->master) k->free(ps->data);
        k->free(ps->master);
        k->free(ps->grad);
        k->free(ps->m);
        k->free(ps->v);
    } else if (ps->data) {
        k->free(ps->data);
    }
    free(ps->p);
    memset(ps, 0, sizeof *ps);
}

int params_find(const ParamSet *ps, const char *name) {
    for (int i = 0; i < ps->n; i++)
        if (strcmp(ps->p[i].name, name) == 0) return i;
    return -1;
}

act_t *params_act(const ParamSet *ps, int i) { return act_at(ps->k, ps->data, ps->p[i].offset); }
// the tensor lies inside the masters' range
static int in_masters(const ParamSet *ps, int i) {
    const Param *p = &ps->p[i];
    return p->offset >= ps->master_begin && p->offset + p->numel <= ps->master_begin + ps->master_len;
}

float *params_master(const ParamSet *ps, int i) {
    CHECK(in_masters(ps, i), "tensor %s is outside this rank's slice of the masters", ps->p[i].name);
    return ps->master + (ps->p[i].offset - ps->master_begin);
}
float *params_grad(const ParamSet *ps, int i) { return ps->grad + ps->p[i].offset; }

void params_load_hf_renamed(ParamSet *ps, const HfWeights *w, const ParamRename *rules, int n_rules) {
    size_t biggest = 1;
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].numel > biggest) biggest = ps->p[i].numel;
    // a dry run (the memory plan) checks names and shapes but reads no data
    float *host = ps->k->dry_run ? NULL : xmalloc(biggest * sizeof(float));
    char name[PARAM_NAME_MAX + 256];
    for (int i = 0; i < ps->n; i++) {
        const char *own = ps->p[i].name;
        int r = 0;
        while (r < n_rules && strncmp(own, rules[r].from, strlen(rules[r].from)) != 0) r++;
        if (r < n_rules) snprintf(name, sizeof name, "%s%s", rules[r].to, own + strlen(rules[r].from));
        else snprintf(name, sizeof name, "%s", own);
        hf_weights_read(w, name, ps->p[i].ndim, ps->p[i].shape, host);
        if (host) params_upload(ps, i, host);
    }
    free(host);
}

void params_load_hf(ParamSet *ps, const HfWeights *w, const char *prefix) {
    ParamRename all = {"", prefix};
    params_load_hf_renamed(ps, w, &all, 1);
}

void params_sync(ParamSet *ps) {
    if (!ps->trainable || ps->data == (act_t *)ps->master) return;
    size_t a = ps->master_begin, b = a + ps->master_len < ps->numel ? a + ps->master_len : ps->numel;
    if (a < b) ps->k->cast_to_act(act_at(ps->k, ps->data, a), ps->master, b - a);
}

void params_download(const ParamSet *ps, int i, float *host) {
    if (ps->trainable) ps->k->download(host, params_master(ps, i), ps->p[i].numel * sizeof(float));
    else ps->k->download_act(host, params_act(ps, i), ps->p[i].numel);
}

void params_upload(ParamSet *ps, int i, const float *host) {
    const Param *p = &ps->p[i];
    if (ps->trainable && !in_masters(ps, i)) {  // sharded masters: their part of it, and the whole copy
        size_t a = p->offset > ps->master_begin ? p->offset : ps->master_begin;
        size_t b = p->offset + p->numel < ps->master_begin + ps->master_len ? p->offset + p->numel : ps->master_begin + ps->master_len;
        if (a < b) ps->k->upload(ps->master + (a - ps->master_begin), host + (a - p->offset), (b - a) * sizeof(float));
        ps->k->upload_act(params_act(ps, i), host, p->numel);
    } else if (ps->trainable) {
        ps->k->upload(params_master(ps, i), host, ps->p[i].numel * sizeof(float));
        if (ps->data != (act_t *)ps->master) ps->k->cast_to_act(params_act(ps, i), params_master(ps, i), ps->p[i].numel);
    } else {
        ps->k->upload_act(params_act(ps, i), host, ps->p[i].numel);
    }
}

int params_load_file(ParamSet *ps, const char *path, const char *strip_prefix, int *unmatched) {
    StFile f;
    st_open_or_die(&f, path);
    size_t plen = strlen(strip_prefix);
    int loaded = 0, missed = 0;
    for (int t = 0; t < f.n; t++) {
        const StTensor *st = &f.tensors[t];
        const char *name = st->name;
        if (plen && strncmp(name, strip_prefix, plen) == 0) name += plen;
        int i = params_find(ps, name);
        if (i < 0) { missed++; continue; }
        const Param *p = &ps->p[i];
        int same = st->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++) same = st->shape[d] == p->shape[d];
        if (!same) {
            char a[128], b[128];
            fatal("%s: tensor %s has shape %s but the model expects %s", path, st->name,
                  st_shape_str(st->ndim, st->shape, a, sizeof a), st_shape_str(p->ndim, p->shape, b, sizeof b));
        }
        float *host = xmalloc(p->numel * sizeof(float));
        st_read_f32(&f, st, host);
        params_upload(ps, i, host);
        free(host);
        loaded++;
    }
    st_close(&f);
    if (unmatched) *unmatched = missed;
    return loaded;
}
