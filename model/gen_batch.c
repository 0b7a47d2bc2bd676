// gen_batch.c: batched prefill and decoding over the slots of one KV cache (model/gen_batch.h).
// The prefill is gen_prefill_run (model/gen_prefill.c), the one Generator uses; this file samples
// as prompts end and packs the decode steps' rows.
#include "model/gen_batch.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

void gen_batch_init(GenBatch *b, Vlm *m, int max_batch, int max_len, int chunk) {
    memset(b, 0, sizeof *b);
    const Kernels *k = m->k;
    const LlmConfig *c = &m->llm.cfg;
    if (max_batch < 1) fatal("batched generation for %d conversations: need at least 1", max_batch);
    if (max_len < 1) fatal("generation cache of %d positions: need at least 1", max_len);
    if (!k->attention_cached) fatal("the %s backend has no attention_cached kernel: generation needs it", k->name);
    CHECK(m->llm.logits && k->xent_chunk_rows >= 1, "gen_batch_init: the LLM has no logits buffer (llm_setup not run)");
    if (chunk <= 0) chunk = 512;
    b->m = m;
    b->k = k;
    b->max_batch = max_batch;
    b->max_len = max_len;
    b->rows_cap = chunk > max_batch ? chunk : max_batch;
    size_t n = (size_t)b->rows_cap;
    llm_kv_cache_alloc(&m->llm, &b->cache, max_batch, max_len);
    llm_rows_alloc(&m->llm, &b->rows, b->rows_cap);
    b->len = xcalloc((size_t)max_batch, sizeof(int));
    b->spans = xmalloc(n * sizeof(LlmSpan));
    b->ids = k->alloc(n * sizeof(int));
    b->pos = k->alloc(n * sizeof(int));
    b->idx = k->alloc(n * sizeof(int));
    b->h_ids = xmalloc(n * sizeof(int));
    b->h_pos = xmalloc(n * sizeof(int));
    b->h_idx = xmalloc(n * sizeof(int));
    b->last = k->alloc((size_t)max_batch * c->hidden * k->act_bytes);
    b->h_logits = xmalloc((size_t)max_batch * c->vocab * sizeof(float));
}

void gen_batch_free(GenBatch *b) {
    if (!b->m) return;
    const Kernels *k = b->k;
    llm_kv_cache_free(&b->m->llm, &b->cache);
    llm_rows_free(&b->m->llm, &b->rows);
    void *bufs[] = {b->ids, b->pos, b->idx, b->last};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) k->free(bufs[i]);
    free(b->len);
    free(b->spans);
    free(b->h_ids);
    free(b->h_pos);
    free(b->h_idx);
    free(b->h_logits);
    memset(b, 0, sizeof *b);
}

// the embeddings of the block's rows from h_ids
static void embed_rows(GenBatch *b, int rows) {
    const Llm *llm = &b->m->llm;
    b->k->upload(b->ids, b->h_ids, (size_t)rows * sizeof(int));
    b->k->embedding_forward(b->rows.x, b->ids, llm->embed, rows, llm->cfg.hidden, llm->cfg.vocab);
}

// logits (host, b->h_logits) of the nl block rows listed in h_idx
static void logits_of_rows(GenBatch *b, int nl) {
    const Kernels *k = b->k;
    const Llm *llm = &b->m->llm;
    k->upload(b->idx, b->h_idx, (size_t)nl * sizeof(int));
    k->gather_rows(b->last, b->rows.x, b->idx, nl, llm->cfg.hidden);
    llm_logits_rows(llm, b->h_logits, b->rows.ln1, b->last, nl);
}

// one conversation's state during a call
typedef struct {
    Rng rng;
    GenStats s;
    int total;         // prompt positions
    int tok;           // the token to decode next
} Conv;

// Records token t of conversation i; returns 1 when it goes on (t not a stop id, room for more)
static int take_token(GenBatch *b, Conv *cv, int i, int t, const GenOptions *o, int cap, int *const *out, int *n_out) {
    for (int j = 0; j < o->n_stop; j++)
        if (t == o->stop_ids[j]) {
            cv->s.stop = GEN_STOP_ID;
            return 0;
        }
    out[i][n_out[i]++] = t;
    if (n_out[i] >= cap) cv->s.stop = GEN_STOP_MAX_NEW;
    else if (b->len[i] >= b->max_len) cv->s.stop = GEN_STOP_CACHE_FULL;
    else {
        cv->tok = t;
        return 1;
    }
    return 0;
}

// what the prefill's blocks report to
typedef struct {
    GenBatch *b;
    Conv *cv;
    const GenOptions *o;
    int cap, *const *out, *n_out;
    int *active, n_active;
} Prefill;

// a prefill block ran: the first token of each prompt that ends in it, and the block's time
// (its tower time aside) shared by its spans by rows
static void prefill_block(void *ctx, const LlmSpan *spans, int ns, int rows, double t0, double t_img) {
    Prefill *f = ctx;
    GenBatch *b = f->b;
    Conv *cv = f->cv;
    int V = b->m->llm.cfg.vocab, nl = 0, row = 0;
    for (int s = 0; s < ns; s++) {
        const LlmSpan *sp = &spans[s];
        b->len[sp->slot] = sp->start + sp->n;
        if (sp->start + sp->n == cv[sp->slot].total) b->h_idx[nl++] = row + sp->n - 1;
        row += sp->n;
    }
    if (nl > 0) logits_of_rows(b, nl);
    int li = 0;
    for (int s = 0; s < ns; s++) {
        int i = spans[s].slot;
        if (spans[s].start + spans[s].n != cv[i].total) continue;
        int t = gen_sample(b->h_logits + (size_t)li++ * V, V, f->o->temperature, f->o->top_p, &cv[i].rng);
        if (take_token(b, &cv[i], i, t, f->o, f->cap, f->out, f->n_out)) f->active[f->n_active++] = i;
    }
    b->k->synchronize();
    double dt = time_now() - t0 - t_img;
    for (int s = 0; s < ns; s++) cv[spans[s].slot].s.t_prefill += dt * spans[s].n / rows;
}

void gen_batch_generate(GenBatch *b, int n, const GenPrompt *p, const GenOptions *o, int *const *out, int *n_out,
                        GenStats *st) {
    const Kernels *k = b->k;
    Vlm *m = b->m;
    int V = m->llm.cfg.vocab;
    int cap = o->max_new_tokens > 0 ? o->max_new_tokens : b->max_len;
    if (n < 1 || n > b->max_batch) fatal("batched generation of %d conversations: room for 1 to %d", n, b->max_batch);
    Conv *cv = xcalloc((size_t)n, sizeof(Conv));
    double *t_image = xcalloc((size_t)n, sizeof(double));
    for (int i = 0; i < n; i++) {
        cv[i].total = gen_prompt_validate(m, b->max_len, &p[i]);
        cv[i].s.n_prompt = cv[i].total;
        rng_init(&cv[i].rng, o->seed);
        b->len[i] = 0;
        n_out[i] = 0;
    }
    int *active = xmalloc((size_t)n * sizeof(int));

    // ---- prefill (gen_prefill_run), sampling each prompt's first token as its block ends
    GenRows r = {.m = m, .cache = &b->cache, .rows = &b->rows, .cap = b->rows_cap, .spans = b->spans, .ids = b->ids,
                 .pos = b->pos, .h_ids = b->h_ids, .h_pos = b->h_pos};
    Prefill f = {b, cv, o, cap, out, n_out, active, 0};
    gen_prefill_run(&r, p, n, prefill_block, &f, t_image);
    for (int i = 0; i < n; i++) {
        cv[i].s.t_image = t_image[i];
        cv[i].s.t_prefill += t_image[i];
    }
    int n_active = f.n_active;

    // ---- decode the unfinished ones together until each stops: one row per conversation
    int *part = xmalloc((size_t)n * sizeof(int));
    while (n_active > 0) {
        double t0 = time_now();
        for (int a = 0; a < n_active; a++) {
            int i = active[a];
            CHECK(b->len[i] < b->max_len, "decode: slot %d is full", i);
            b->spans[a] = (LlmSpan){.slot = i, .start = b->len[i], .n = 1};
            b->h_ids[a] = cv[i].tok;
            b->h_pos[a] = b->len[i];
        }
        embed_rows(b, n_active);
        k->upload(b->pos, b->h_pos, (size_t)n_active * sizeof(int));
        llm_forward_cached(&m->llm, &b->rows, &b->cache, b->spans, n_active, b->pos);
        for (int a = 0; a < n_active; a++) b->len[active[a]]++;
        llm_logits_rows(&m->llm, b->h_logits, b->rows.ln1, b->rows.x, n_active);
        memcpy(part, active, (size_t)n_active * sizeof(int));
        int n_part = n_active, keep = 0;
        for (int a = 0; a < n_part; a++) {
            int i = part[a];
            cv[i].s.n_decode++;
            int t = gen_sample(b->h_logits + (size_t)a * V, V, o->temperature, o->top_p, &cv[i].rng);
            if (take_token(b, &cv[i], i, t, o, cap, out, n_out)) active[keep++] = i;
        }
        k->synchronize();
        double dt = time_now() - t0;
        for (int a = 0; a < n_part; a++) cv[part[a]].s.t_decode += dt;  // the steps each took part in
        n_active = keep;
    }
    for (int i = 0; i < n; i++) {
        cv[i].s.n_new = n_out[i];
        if (st) st[i] = cv[i].s;
    }
    free(part);
    free(active);
    free(t_image);
    free(cv);
}
