// memplan.c: the memory plan (see memplan.h): a dry run of vlm_init, the scratch of the ops, and
// the largest micro-batch that fits a budget.
#include "model/memplan.h"

#include <stdio.h>

#include "common/util.h"

// scratch blocks a backend reserves at most (the CUDA backend's scratch slots)
#define N_WORKSPACE_BLOCKS 4

static int max_i(int a, int b) { return a > b ? a : b; }

// the shapes that decide the ops' scratch for this model
static void vlm_work(const Vlm *m, KernelsWork *w) {
    const LlmConfig *lc = &m->llm.cfg;
    const VitConfig *vc = &m->vit.cfg;
    size_t llm_rows = (size_t)m->max_B * m->max_T;
    size_t vit_rows = (size_t)m->max_images * vit_seq_len(vc);  // the tower says whether a CLS row is there
    size_t conn_rows = (size_t)m->max_images * m->conn.n_in;
    w->rows = llm_rows > vit_rows ? llm_rows : vit_rows;
    if (conn_rows > w->rows) w->rows = conn_rows;
    w->width = max_i(max_i(max_i(lc->hidden, lc->mlp), max_i(lc->heads * lc->head_dim, lc->kv_heads * lc->head_dim)),
                     max_i(max_i(vit_feature_dim(vc), vc->mlp), max_i(m->conn.in_dim, m->conn.out_dim)));
    // a pixel-shuffle connector's tokens are scale^2 features wide (internvl's LayerNorm over them)
    if (m->conn.shuffled) w->width = max_i(w->width, m->conn.scale * m->conn.scale * m->conn.in_dim);
    // the vision encoder runs forward only: the LLM's attention is the one with a backward
    w->attn_B = m->max_B;
    w->attn_T = m->max_T;
    w->attn_NH = lc->heads;
    w->attn_NKV = lc->kv_heads;
    w->attn_HD = lc->head_dim;
}

void vlm_plan(MemPlan *p, const Kernels *k, const VlmSpec *spec) {
    const Kernels *dry = kernels_dry_run(k);
    Vlm m;
    vlm_init(&m, dry, spec);
    p->frozen_vision = params_bytes(&m.vit.w);
    p->frozen_llm = params_bytes(&m.llm.w);
    p->trainable = params_bytes(&m.train);
    p->n_trainable = 0;
    p->has_copy = !k->act_is_f32;
    for (int i = 0; i < m.train.n; i++) p->n_trainable += m.train.p[i].numel;
    size_t all = kernels_dry_run_bytes();
    p->activations = all - p->frozen_vision - p->frozen_llm - p->trainable;
    KernelsWork w;
    vlm_work(&m, &w);
    p->workspace = k->workspace_bytes(&w);
    p->total = all + p->workspace;
    p->n_blocks = kernels_dry_run_allocs();
    p->margin = kernels_dry_run_slack() + N_WORKSPACE_BLOCKS * k->alloc_granule;
    vlm_free(&m);
}

void vlm_init_reserved(Vlm *m, const Kernels *k, const VlmSpec *spec) {
    vlm_init(m, k, spec);
    KernelsWork w;
    vlm_work(m, &w);
    k->workspace_reserve(&w);
}

static int fits(const Kernels *k, const VlmSpec *spec, int B, size_t budget) {
    VlmSpec s = *spec;
    int per_row = spec->max_B > 0 ? spec->max_images / spec->max_B : 1;
    s.max_B = B;
    s.max_images = B * per_row;
    MemPlan p;
    vlm_plan(&p, k, &s);
    return p.total + p.margin <= budget;
}

int vlm_plan_largest_batch(const Kernels *k, const VlmSpec *spec, size_t budget, int max_B_cap) {
    if (max_B_cap < 1 || !fits(k, spec, 1, budget)) return 0;
    int lo = 1, hi = 2;  // lo fits; find an hi that does not (or the cap), then bisect
    while (hi <= max_B_cap && fits(k, spec, hi, budget)) {
        lo = hi;
        hi *= 2;
    }
    if (hi > max_B_cap) {
        if (fits(k, spec, max_B_cap, budget)) return max_B_cap;
        hi = max_B_cap;
    }
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (fits(k, spec, mid, budget)) lo = mid;
        else hi = mid;
    }
    return lo;
}

void memplan_print(const MemPlan *p, const VlmSpec *spec, const char *backend, size_t budget, const char *budget_what) {
    char b[6][32];
    printf("memory plan on %s: %s of %s (%s)\n", backend, fmt_bytes(p->total, b[0], 32), fmt_bytes(budget, b[1], 32), budget_what);
    printf("  frozen weights    %12s  vision %s + LLM %s\n", fmt_bytes(p->frozen_vision + p->frozen_llm, b[0], 32),
           fmt_bytes(p->frozen_vision, b[1], 32), fmt_bytes(p->frozen_llm, b[2], 32));
    if (spec->opt_shards > 1 && p->has_copy)  // ZeRO-1 with a compute copy: the fp32 masters are sharded too
        printf("  trainable state   %12s  %zu parameters: gradients and compute copy, fp32 weights and AdamW m and v "
               "for 1/%d of them (ZeRO-1, this rank's share)\n",
               fmt_bytes(p->trainable, b[0], 32), p->n_trainable, spec->opt_shards);
    else if (spec->opt_shards > 1)  // ZeRO-1 on the CPU: the fp32 weights are the compute weights
        printf("  trainable state   %12s  %zu parameters: fp32 weights, gradients, AdamW m and v for 1/%d of them "
               "(ZeRO-1, this rank's share)\n",
               fmt_bytes(p->trainable, b[0], 32), p->n_trainable, spec->opt_shards);
    else
        printf("  trainable state   %12s  %zu parameters: fp32 weights, gradients, AdamW m and v%s\n",
               fmt_bytes(p->trainable, b[0], 32), p->n_trainable, p->has_copy ? ", compute copy" : "");
    printf("  activations       %12s  micro-batch %d x %d tokens, %d images\n", fmt_bytes(p->activations, b[0], 32),
           spec->max_B, spec->max_T, spec->max_images);
    printf("  workspace         %12s  the ops' scratch\n", fmt_bytes(p->workspace, b[0], 32));
    printf("  allocation slack  %12s  at most, over %zu blocks\n", fmt_bytes(p->margin, b[0], 32), p->n_blocks + N_WORKSPACE_BLOCKS);
}
