// llm_cached.c: the decoder over a KV cache (generation): its buffers, the layer loop that runs
// llm_layer_forward in cache mode, and the vocabulary projection of chosen rows (see llm.h).
// No layer math here: every layer goes through llm_layer_forward, as training does.
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "model/llm.h"

void llm_rows_alloc(const Llm *m, LlmActs *a, int N) {
    const Kernels *k = m->k;
    const LlmConfig *c = &m->cfg;
    memset(a, 0, sizeof *a);
    size_t n = (size_t)N, ab = k->act_bytes, C = c->hidden, I = c->mlp, QD = (size_t)c->heads * c->head_dim;
    size_t KD = (size_t)c->kv_heads * c->head_dim, r = m->lora.r > 0 ? m->lora.r : 1;
    a->x = k->alloc(n * C * ab);
    a->ln1 = k->alloc(n * C * ab);
    a->ln2 = a->ln1;  // ln1 is dead once q, k, v are computed
    size_t QKV = QD + 2 * KD;
    a->qkv = k->alloc(n * (QKV > I ? QKV : I) * ab);
    a->q = k->alloc(n * QD * ab);
    a->k = k->alloc(n * KD * ab);
    a->v = k->alloc(n * KD * ab);
    a->att = k->alloc(n * QD * ab);
    a->xmid = k->alloc(n * C * ab);
    a->gu = k->alloc(n * 2 * I * ab);
    a->act = a->qkv;  // the fused q/k/v rows are dead once k and v are in the cache
    act_t *h = k->alloc(n * 3 * r * ab);  // the LoRA hiddens of a group, dead after it
    for (int g = 0; g < N_GROUPS; g++) a->lora_h[g] = h;
}

void llm_rows_free(const Llm *m, LlmActs *a) {
    const Kernels *k = m->k;
    void *bufs[] = {a->x, a->ln1, a->qkv, a->q, a->k, a->v, a->att, a->xmid, a->gu, a->lora_h[0]};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) k->free(bufs[i]);
    memset(a, 0, sizeof *a);
}

void llm_kv_cache_alloc(const Llm *m, LlmKvCache *c, int slots, int cap) {
    if (m->cfg.rope_dynamic && cap > m->cfg.max_pos)  // see llm_setup
        fatal("a %d-position cache is longer than max_position_embeddings %d, past which this model's dynamic RoPE "
              "rescales its frequencies: generate shorter", cap, m->cfg.max_pos);
    const Kernels *k = m->k;
    const LlmConfig *cf = &m->cfg;
    memset(c, 0, sizeof *c);
    size_t bytes = (size_t)slots * cap * cf->kv_heads * cf->head_dim * k->act_bytes;
    c->layers = cf->layers;
    c->slots = slots;
    c->cap = cap;
    c->k = xcalloc(cf->layers, sizeof(act_t *));
    c->v = xcalloc(cf->layers, sizeof(act_t *));
    for (int l = 0; l < cf->layers; l++) {
        c->k[l] = k->alloc(bytes);
        c->v[l] = k->alloc(bytes);
    }
}

void llm_kv_cache_free(const Llm *m, LlmKvCache *c) {
    for (int l = 0; l < c->layers; l++) {
        m->k->free(c->k[l]);
        m->k->free(c->v[l]);
    }
    free(c->k);
    free(c->v);
    memset(c, 0, sizeof *c);
}

void llm_forward_cached(const Llm *m, LlmActs *a, const LlmKvCache *c, const LlmSpan *spans, int n_spans,
                        const int *pos) {
    CHECK(!(m->training && m->lora.dropout > 0), "llm_forward_cached: LoRA dropout is on (the model is training)");
    int N = 0;
    for (int s = 0; s < n_spans; s++) N += spans[s].n;
    LlmAttend at = {.cache = c, .spans = spans, .n_spans = n_spans};
    for (int l = 0; l < m->cfg.layers; l++) llm_layer_forward(m, l, a, a->x, N, pos, &at);
}

void llm_logits_rows(const Llm *m, float *logits_host, act_t *ln, const act_t *x, int n) {
    const Kernels *k = m->k;
    const LlmConfig *c = &m->cfg;
    int C = c->hidden, V = c->vocab, rows = k->xent_chunk_rows;
    k->rmsnorm_forward(ln, NULL, x, m->norm, n, C, c->eps);
    for (int r0 = 0; r0 < n; r0 += rows) {
        int nr = n - r0 < rows ? n - r0 : rows;
        k->matmul_forward(m->logits, act_at(k, ln, (size_t)r0 * C), m->lm_head, NULL, nr, C, V, 1.0f, 0);
        k->download_act(logits_host + (size_t)r0 * V, m->logits, (size_t)nr * V);
    }
}
