// gen_batch.c: batched prefill and decoding over the slots of one KV cache (model/gen_batch.h).
// The layers run through llm_forward_cached (model/llm.h); this file only packs rows into blocks.
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

// The decoder over the block's rows (b->rows.x, embedded) as the n_spans spans in b->spans, at
// the positions in h_pos: each span's keys and values go into its slot
static void run_block(GenBatch *b, int rows, int n_spans) {
    b->k->upload(b->pos, b->h_pos, (size_t)rows * sizeof(int));
    llm_forward_cached(&b->m->llm, &b->rows, &b->cache, b->spans, n_spans, b->pos);
}

// the embeddings of the block's rows from h_ids
static void embed_rows(GenBatch *b, int rows) {
    const Llm *llm = &b->m->llm;
    b->k->upload(b->ids, b->h_ids, (size_t)rows * sizeof(int));
    // rows with id -1 (image slots) are left untouched, for the image features
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
    int slot0, slot1;  // image rows [slot0, slot1) of the prompt
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

void gen_batch_generate(GenBatch *b, int n, const int *const *ids, const int *n_ids, const float *const *pixels,
                        const int *image_pos, const GenOptions *o, int *const *out, int *n_out, GenStats *st) {
    const Kernels *k = b->k;
    Vlm *m = b->m;
    int V = m->llm.cfg.vocab, C = m->llm.cfg.hidden, nt = m->n_img_tokens;
    int cap = o->max_new_tokens > 0 ? o->max_new_tokens : b->max_len;
    size_t ab = k->act_bytes;
    if (n < 1 || n > b->max_batch) fatal("batched generation of %d conversations: room for 1 to %d", n, b->max_batch);
    Conv *cv = xcalloc((size_t)n, sizeof(Conv));
    for (int i = 0; i < n; i++) {
        cv[i].total = gen_prompt_check(m, b->max_len, ids[i], n_ids[i], pixels[i], image_pos[i]);
        cv[i].slot0 = pixels[i] ? image_pos[i] : cv[i].total;
        cv[i].slot1 = cv[i].slot0 + (pixels[i] ? nt : 0);
        cv[i].s.n_prompt = cv[i].total;
        rng_init(&cv[i].rng, o->seed);
        b->len[i] = 0;
        n_out[i] = 0;
    }
    int *active = xmalloc((size_t)n * sizeof(int)), n_active = 0;

    // ---- prefill: the prompts' positions packed in order into blocks of up to rows_cap rows
    int conv = 0, p = 0, img_conv = -1;  // next position to place; whose image m->img_emb holds
    while (conv < n) {
        double t0 = time_now(), t_img = 0;
        int rows = 0, ns = 0;
        while (conv < n && rows < b->rows_cap) {
            Conv *c = &cv[conv];
            int take = c->total - p < b->rows_cap - rows ? c->total - p : b->rows_cap - rows;
            b->spans[ns++] = (LlmSpan){.slot = conv, .start = p, .n = take};
            for (int j = 0; j < take; j++) {
                int q = p + j;  // -1: left for the image
                b->h_ids[rows + j] = q < c->slot0 ? ids[conv][q] : q < c->slot1 ? -1 : ids[conv][q - (c->slot1 - c->slot0)];
                b->h_pos[rows + j] = q;
            }
            rows += take;
            p += take;
            if (p == c->total) {
                conv++;
                p = 0;
            }
        }
        embed_rows(b, rows);
        int row = 0;
        for (int s = 0; s < ns; s++) {  // image rows of each span
            const LlmSpan *sp = &b->spans[s];
            Conv *c = &cv[sp->slot];
            int lo = c->slot0 > sp->start ? c->slot0 : sp->start, hi = c->slot1 < sp->start + sp->n ? c->slot1 : sp->start + sp->n;
            if (lo < hi) {
                if (img_conv != sp->slot) {  // spans come in conversation order: computed once each
                    double ti = gen_image_features(m, pixels[sp->slot]);
                    c->s.t_image += ti;
                    t_img += ti;
                    img_conv = sp->slot;
                }
                k->copy(act_at(k, b->rows.x, (size_t)(row + lo - sp->start) * C),
                        act_at(k, m->img_emb, (size_t)(lo - c->slot0) * C), (size_t)(hi - lo) * C * ab);
            }
            row += sp->n;
        }
        run_block(b, rows, ns);
        // the first token of each prompt that ends in this block
        int nl = 0;
        row = 0;
        for (int s = 0; s < ns; s++) {
            const LlmSpan *sp = &b->spans[s];
            b->len[sp->slot] = sp->start + sp->n;
            if (sp->start + sp->n == cv[sp->slot].total) b->h_idx[nl++] = row + sp->n - 1;
            row += sp->n;
        }
        if (nl > 0) logits_of_rows(b, nl);
        int li = 0;
        for (int s = 0; s < ns; s++) {
            int i = b->spans[s].slot;
            if (b->spans[s].start + b->spans[s].n != cv[i].total) continue;
            int t = gen_sample(b->h_logits + (size_t)li++ * V, V, o->temperature, o->top_p, &cv[i].rng);
            if (take_token(b, &cv[i], i, t, o, cap, out, n_out)) active[n_active++] = i;
        }
        k->synchronize();
        double dt = time_now() - t0 - t_img;  // the block's own time, shared by its spans by rows
        for (int s = 0; s < ns; s++) cv[b->spans[s].slot].s.t_prefill += dt * b->spans[s].n / rows;
    }
    for (int i = 0; i < n; i++) cv[i].s.t_prefill += cv[i].s.t_image;

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
        run_block(b, n_active, n_active);
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
    free(cv);
}
