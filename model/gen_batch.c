// gen_batch.c: batched decoding over per-conversation KV cache slots (model/gen_batch.h).
#include "model/gen_batch.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

void gen_batch_init(GenBatch *b, Vlm *m, int max_batch, int max_len, int chunk) {
    memset(b, 0, sizeof *b);
    const Kernels *k = m->k;
    const LlmConfig *c = &m->llm.cfg;
    if (max_batch < 1) fatal("batched generation for %d conversations: need at least 1", max_batch);
    gen_init(&b->pre, m, max_len, chunk);
    b->m = m;
    b->k = k;
    b->max_batch = max_batch;
    b->max_len = max_len;
    size_t ab = k->act_bytes, C = c->hidden, I = c->mlp, QD = (size_t)c->heads * c->head_dim;
    size_t KD = (size_t)c->kv_heads * c->head_dim, n = (size_t)max_batch, r = m->llm.lora.r > 0 ? m->llm.lora.r : 1;
    b->kc = xcalloc(c->layers, sizeof(act_t *));
    b->vc = xcalloc(c->layers, sizeof(act_t *));
    for (int l = 0; l < c->layers; l++) {
        b->kc[l] = k->alloc(n * max_len * KD * ab);
        b->vc[l] = k->alloc(n * max_len * KD * ab);
    }
    b->len = xcalloc(n, sizeof(int));
    b->x = k->alloc(n * C * ab);
    b->ln = k->alloc(n * C * ab);
    b->tmp = k->alloc(n * C * ab);
    b->q = k->alloc(n * QD * ab);
    b->att = k->alloc(n * QD * ab);
    b->kk = k->alloc(n * KD * ab);
    b->v = k->alloc(n * KD * ab);
    b->gate = k->alloc(n * I * ab);
    b->up = k->alloc(n * I * ab);
    b->lh = k->alloc(n * r * ab);
    b->ids = k->alloc(n * sizeof(int));
    b->pos = k->alloc(n * sizeof(int));
    b->h_ids = xmalloc(n * sizeof(int));
    b->h_pos = xmalloc(n * sizeof(int));
    b->h_logits = xmalloc(n * (size_t)c->vocab * sizeof(float));
}

void gen_batch_free(GenBatch *b) {
    if (!b->m) return;
    const Kernels *k = b->k;
    for (int l = 0; l < b->m->llm.cfg.layers; l++) {
        k->free(b->kc[l]);
        k->free(b->vc[l]);
    }
    free(b->kc);
    free(b->vc);
    void *bufs[] = {b->x, b->ln, b->tmp, b->q, b->att, b->kk, b->v, b->gate, b->up, b->lh, b->ids, b->pos};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) k->free(bufs[i]);
    free(b->len);
    free(b->h_ids);
    free(b->h_pos);
    free(b->h_logits);
    gen_free(&b->pre);
    memset(b, 0, sizeof *b);
}

// One decode step of n conversations: slot[i] gets token tok[i] at position len[slot[i]].
// Logits of row i go to b->h_logits + i * V.
static void decode_step(GenBatch *b, int n, const int *slot, const int *tok) {
    const Kernels *k = b->k;
    const Llm *llm = &b->m->llm;
    const LlmConfig *c = &llm->cfg;
    int C = c->hidden, I = c->mlp, NH = c->heads, NKV = c->kv_heads, HD = c->head_dim, V = c->vocab;
    size_t ab = k->act_bytes, KD = (size_t)NKV * HD, QD = (size_t)NH * HD, slot_rows = (size_t)b->max_len * KD;
    for (int i = 0; i < n; i++) {
        CHECK(b->len[slot[i]] < b->max_len, "decode_step: slot %d is full", slot[i]);
        b->h_ids[i] = tok[i];
        b->h_pos[i] = b->len[slot[i]];
    }
    k->upload(b->ids, b->h_ids, (size_t)n * sizeof(int));
    k->upload(b->pos, b->h_pos, (size_t)n * sizeof(int));
    k->embedding_forward(b->x, b->ids, llm->embed, n, C, V);
    for (int l = 0; l < c->layers; l++) {
        const LlmLayer *L = &llm->layer[l];
        k->rmsnorm_forward(b->ln, NULL, b->x, L->ln1, n, C, c->eps);
        llm_proj_forward(llm, &L->p[PROJ_Q], b->q, b->ln, b->lh, n, 0);
        llm_proj_forward(llm, &L->p[PROJ_K], b->kk, b->ln, b->lh, n, 0);
        llm_proj_forward(llm, &L->p[PROJ_V], b->v, b->ln, b->lh, n, 0);
        k->rope_forward(b->q, b->q, b->pos, n, NH, HD, c->rope_theta);
        k->rope_forward(b->kk, b->kk, b->pos, n, NKV, HD, c->rope_theta);
        for (int i = 0; i < n; i++) {  // each row into its own slot, at its own position
            size_t at = (size_t)slot[i] * slot_rows + (size_t)b->len[slot[i]] * KD;
            k->copy(act_at(k, b->kc[l], at), act_at(k, b->kk, (size_t)i * KD), KD * ab);
            k->copy(act_at(k, b->vc[l], at), act_at(k, b->v, (size_t)i * KD), KD * ab);
            k->attention_cached(act_at(k, b->att, (size_t)i * QD), act_at(k, b->q, (size_t)i * QD),
                                act_at(k, b->kc[l], (size_t)slot[i] * slot_rows),
                                act_at(k, b->vc[l], (size_t)slot[i] * slot_rows), 1, 1, b->len[slot[i]] + 1, b->max_len,
                                NH, NKV, HD);
        }
        llm_proj_forward(llm, &L->p[PROJ_O], b->tmp, b->att, b->lh, n, 0);
        k->add(b->x, b->x, b->tmp, (size_t)n * C);
        k->rmsnorm_forward(b->ln, NULL, b->x, L->ln2, n, C, c->eps);
        llm_proj_forward(llm, &L->p[PROJ_GATE], b->gate, b->ln, b->lh, n, 0);
        llm_proj_forward(llm, &L->p[PROJ_UP], b->up, b->ln, b->lh, n, 0);
        k->swiglu_forward(b->gate, b->gate, b->up, (size_t)n * I);
        llm_proj_forward(llm, &L->p[PROJ_DOWN], b->tmp, b->gate, b->lh, n, 0);
        k->add(b->x, b->x, b->tmp, (size_t)n * C);
    }
    for (int i = 0; i < n; i++) b->len[slot[i]]++;
    // the vocabulary projection in blocks of the LLM's logits buffer (xent_chunk_rows rows)
    k->rmsnorm_forward(b->ln, NULL, b->x, llm->norm, n, C, c->eps);
    int rows = k->xent_chunk_rows;
    for (int r0 = 0; r0 < n; r0 += rows) {
        int nr = n - r0 < rows ? n - r0 : rows;
        k->matmul_forward(llm->logits, act_at(k, b->ln, (size_t)r0 * C), llm->lm_head, NULL, nr, C, V, 1.0f, 0);
        k->download_act(b->h_logits + (size_t)r0 * V, llm->logits, (size_t)nr * V);
    }
}

void gen_batch_generate(GenBatch *b, int n, const int *const *ids, const int *n_ids, const float *const *pixels,
                        const int *image_pos, const GenOptions *o, int *const *out, int *n_out, GenStats *st) {
    const Kernels *k = b->k;
    const LlmConfig *c = &b->m->llm.cfg;
    int V = c->vocab, cap = o->max_new_tokens > 0 ? o->max_new_tokens : b->max_len;
    size_t ab = k->act_bytes, KD = (size_t)c->kv_heads * c->head_dim, slot_rows = (size_t)b->max_len * KD;
    if (n < 1 || n > b->max_batch) fatal("batched generation of %d conversations: room for 1 to %d", n, b->max_batch);
    Rng *rng = xmalloc((size_t)n * sizeof(Rng));
    int *active = xmalloc((size_t)n * sizeof(int)), *tok = xmalloc((size_t)n * sizeof(int)), n_active = 0;
    GenStats *s = xcalloc((size_t)n, sizeof(GenStats));
    // prefill one by one with the batch-1 path; each first token sampled from its own logits
    for (int i = 0; i < n; i++) {
        rng_init(&rng[i], o->seed);
        double t0 = time_now();
        const float *lg = gen_prefill(&b->pre, ids[i], n_ids[i], pixels[i], image_pos[i], NULL);
        for (int l = 0; l < c->layers; l++) {
            k->copy(act_at(k, b->kc[l], (size_t)i * slot_rows), b->pre.kc[l], (size_t)b->pre.len * KD * ab);
            k->copy(act_at(k, b->vc[l], (size_t)i * slot_rows), b->pre.vc[l], (size_t)b->pre.len * KD * ab);
        }
        b->len[i] = b->pre.len;
        s[i].n_prompt = b->pre.len;
        s[i].t_image = b->pre.t_image;
        int t = gen_sample(lg, V, o->temperature, o->top_p, &rng[i]);
        s[i].t_prefill = time_now() - t0;
        n_out[i] = 0;
        int stop = 0;
        for (int j = 0; j < o->n_stop; j++) stop |= t == o->stop_ids[j];
        if (stop) {
            s[i].stop = GEN_STOP_ID;
            continue;
        }
        out[i][n_out[i]++] = t;
        if (n_out[i] >= cap) s[i].stop = GEN_STOP_MAX_NEW;
        else if (b->len[i] >= b->max_len) s[i].stop = GEN_STOP_CACHE_FULL;
        else {
            active[n_active] = i;
            tok[n_active++] = t;
        }
    }
    // decode the unfinished ones together until each stops
    int *part = xmalloc((size_t)n * sizeof(int));
    while (n_active > 0) {
        double t0 = time_now();
        decode_step(b, n_active, active, tok);
        memcpy(part, active, (size_t)n_active * sizeof(int));
        int n_part = n_active;
        int keep = 0;
        for (int a = 0; a < n_active; a++) {
            int i = active[a];
            s[i].n_decode++;
            int t = gen_sample(b->h_logits + (size_t)a * V, V, o->temperature, o->top_p, &rng[i]);
            int stop = 0;
            for (int j = 0; j < o->n_stop; j++) stop |= t == o->stop_ids[j];
            if (stop) {
                s[i].stop = GEN_STOP_ID;
                continue;
            }
            out[i][n_out[i]++] = t;
            if (n_out[i] >= cap) s[i].stop = GEN_STOP_MAX_NEW;
            else if (b->len[i] >= b->max_len) s[i].stop = GEN_STOP_CACHE_FULL;
            else {
                active[keep] = i;
                tok[keep++] = t;
            }
        }
        k->synchronize();
        double dt = time_now() - t0;
        for (int a = 0; a < n_part; a++) s[part[a]].t_decode += dt;  // the steps each took part in
        n_active = keep;
    }
    free(part);
    for (int i = 0; i < n; i++) {
        s[i].n_new = n_out[i];
        if (st) st[i] = s[i];
    }
    free(s);
    free(tok);
    free(active);
    free(rng);
}
