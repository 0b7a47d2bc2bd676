// generate.c: KV-cached LLM forward over one conversation (its prefill is gen_prefill.c's), sampling
// (see generate.h).
#include "model/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

void gen_init(Generator *g, Vlm *m, int max_len, int chunk) {
    memset(g, 0, sizeof *g);
    const Kernels *k = m->k;
    const LlmConfig *c = &m->llm.cfg;
    if (max_len < 1) fatal("generation cache of %d positions: need at least 1", max_len);
    if (!k->attention_cached) fatal("the %s backend has no attention_cached kernel: generation needs it", k->name);
    if (chunk <= 0) chunk = 512;
    if (chunk > max_len) chunk = max_len;
    g->m = m;
    g->k = k;
    g->max_len = max_len;
    g->chunk = chunk;
    size_t n = (size_t)chunk;
    llm_kv_cache_alloc(&m->llm, &g->cache, 1, max_len);
    llm_rows_alloc(&m->llm, &g->rows, chunk);
    g->ids = k->alloc(n * sizeof(int));
    g->pos = k->alloc(n * sizeof(int));
    g->h_ids = xmalloc(n * sizeof(int));
    g->h_pos = xmalloc(n * sizeof(int));
    // llm_logits_rows computes the logits in the LLM's loss buffer (unused at inference)
    CHECK(m->llm.logits && k->xent_chunk_rows >= 1, "gen_init: the LLM has no logits buffer (llm_setup not run)");
    g->h_logits = xmalloc((size_t)c->vocab * sizeof(float));
}

void gen_free(Generator *g) {
    if (!g->m) return;
    const Kernels *k = g->k;
    llm_kv_cache_free(&g->m->llm, &g->cache);
    llm_rows_free(&g->m->llm, &g->rows);
    k->free(g->ids);
    k->free(g->pos);
    free(g->h_ids);
    free(g->h_pos);
    free(g->h_logits);
    memset(g, 0, sizeof *g);
}

void gen_reset(Generator *g) { g->len = 0; }

void gen_truncate(Generator *g, int len) {
    if (len < 0 || len > g->len) fatal("gen_truncate to %d positions: the cache holds %d", len, g->len);
    g->len = len;  // rows from len on are overwritten by the next forward
}

// Logits of rows (g->rows.x, positions start .. start+n-1, just run): of the last to g->h_logits;
// of every row to all_logits (host, (n, V)) when it is not NULL
static void chunk_logits(Generator *g, int n, float *all_logits) {
    const Kernels *k = g->k;
    const Llm *llm = &g->m->llm;
    int C = llm->cfg.hidden, V = llm->cfg.vocab;
    if (all_logits) {
        llm_logits_rows(llm, all_logits, g->rows.ln1, g->rows.x, n);
        memcpy(g->h_logits, all_logits + (size_t)(n - 1) * V, (size_t)V * sizeof(float));
    } else {  // the vocabulary projection of the last row only
        llm_logits_rows(llm, g->h_logits, g->rows.ln1, act_at(k, g->rows.x, (size_t)(n - 1) * C), 1);
    }
}

// Runs the n rows of g->rows.x (embeddings of positions len .. len+n-1) through the decoder,
// appending their keys and values to the cache, then chunk_logits
static void forward_chunk(Generator *g, int n, float *all_logits) {
    const Kernels *k = g->k;
    CHECK(n >= 1 && n <= g->chunk && g->len + n <= g->max_len, "forward_chunk: %d rows at %d (chunk %d, cache %d)", n,
          g->len, g->chunk, g->max_len);
    for (int i = 0; i < n; i++) g->h_pos[i] = g->len + i;
    k->upload(g->pos, g->h_pos, (size_t)n * sizeof(int));
    LlmSpan span = {.slot = 0, .start = g->len, .n = n};
    llm_forward_cached(&g->m->llm, &g->rows, &g->cache, &span, 1, g->pos);
    g->len += n;
    chunk_logits(g, n, all_logits);
}

int gen_prompt_check(const Vlm *m, int max_len, const int *ids, int n_ids, const float *pixels, int image_pos) {
    int nt = pixels ? m->n_img_tokens : 0, total = n_ids + nt;
    if (pixels && (image_pos < 0 || image_pos > n_ids))
        fatal("image slot before token %d of a %d-token prompt is out of range", image_pos, n_ids);
    if (total < 1) fatal("empty prompt: no token and no image");
    if (total > max_len)
        fatal("prompt of %d positions (%d tokens + %d image tokens) does not fit the generation cache of %d positions",
              total, n_ids, nt, max_len);
    int V = m->llm.cfg.vocab;
    for (int i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= V) fatal("token id %d at prompt position %d is outside the vocabulary (%d)", ids[i], i, V);
    CHECK(!pixels || m->max_images >= 1, "a prompt with an image: the Vlm was loaded with max_images = 0");
    return total;
}

typedef struct {
    Generator *g;
    float *all_logits;
} PrefillOut;

// a prefill block of the one prompt ran: its logits
static void prefill_block(void *ctx, const LlmSpan *spans, int ns, int rows, double t0, double t_img) {
    PrefillOut *o = ctx;
    Generator *g = o->g;
    CHECK(ns == 1 && spans[0].start == g->len, "prefill_block: %d spans at %d", ns, spans[0].start);
    g->len += rows;
    chunk_logits(g, rows, o->all_logits ? o->all_logits + (size_t)spans[0].start * g->m->llm.cfg.vocab : NULL);
}

const float *gen_prefill_prompt(Generator *g, const GenPrompt *p, float *all_logits) {
    gen_prompt_validate(g->m, g->max_len, p);
    gen_reset(g);
    g->t_image = 0;
    LlmSpan span;
    GenRows r = {.m = g->m, .cache = &g->cache, .rows = &g->rows, .cap = g->chunk, .spans = &span, .ids = g->ids,
                 .pos = g->pos, .h_ids = g->h_ids, .h_pos = g->h_pos};
    PrefillOut o = {g, all_logits};
    gen_prefill_run(&r, p, 1, prefill_block, &o, &g->t_image);
    return g->h_logits;
}

const float *gen_prefill(Generator *g, const int *ids, int n_ids, const float *pixels, int image_pos,
                         float *all_logits) {
    gen_prompt_check(g->m, g->max_len, ids, n_ids, pixels, image_pos);  // its messages name the image tokens
    GenPrompt p;
    int *buf = gen_prompt_one_image(g->m, ids, n_ids, pixels, image_pos, &p);
    gen_prefill_prompt(g, &p, all_logits);
    free(buf);
    return g->h_logits;
}

const float *gen_prefill_tiles(Generator *g, const int *ids, int n, const float *pixels, int n_tiles, const int *tile_start,
                               float *all_logits) {
    GenPrompt p = {.ids = ids, .n = n, .pixels = pixels, .n_tiles = n_tiles, .tile_start = tile_start};
    return gen_prefill_prompt(g, &p, all_logits);
}

const float *gen_extend(Generator *g, const int *ids, int n, float *all_logits) {
    const Vlm *m = g->m;
    int C = m->llm.cfg.hidden, V = m->llm.cfg.vocab;
    CHECK(g->len >= 1, "gen_extend before gen_prefill");
    if (n < 1) return g->h_logits;
    if (g->len + n > g->max_len)
        fatal("generation cache of %d positions is full (%d used, %d more asked)", g->max_len, g->len, n);
    int V_ = g->m->llm.cfg.vocab;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V_) fatal("token id %d at prompt position %d is outside the vocabulary (%d)", ids[i], i, V_);
    for (int s = 0; s < n; s += g->chunk) {
        int c = n - s < g->chunk ? n - s : g->chunk;
        g->k->upload(g->ids, ids + s, (size_t)c * sizeof(int));
        g->k->embedding_forward(g->rows.x, g->ids, m->llm.embed, c, C, V);
        forward_chunk(g, c, all_logits ? all_logits + (size_t)s * V : NULL);
    }
    return g->h_logits;
}

const float *gen_decode(Generator *g, int token) { return gen_extend(g, &token, 1, NULL); }

// ---- sampling ----

typedef struct {
    double p;
    int id;
} Cand;

static int cand_cmp(const void *a, const void *b) {
    const Cand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

int gen_sample(const float *logits, int V, float temperature, float top_p, Rng *rng) {
    int best = -1;
    for (int i = 0; i < V; i++)
        if (!isnan(logits[i]) && (best < 0 || logits[i] > logits[best])) best = i;
    if (best < 0) return 0;  // every logit NaN: nothing to choose from
    if (!(temperature > 0) || logits[best] == INFINITY) return best;
    // softmax(logits / T) in double; -inf and NaN logits get probability 0
    double mx = logits[best], total = 0;
    Cand *c = xmalloc((size_t)V * sizeof(Cand));
    int n = 0;
    for (int i = 0; i < V; i++) {
        if (isnan(logits[i]) || logits[i] == -INFINITY) continue;
        double p = exp(((double)logits[i] - mx) / temperature);
        if (p <= 0) continue;
        c[n++] = (Cand){p, i};
        total += p;
    }
    if (n == 0) {  // every logit -inf: no distribution to sample, the first candidate it is
        free(c);
        return best;
    }
    if (top_p > 0 && top_p < 1) {  // nucleus: the most likely tokens whose mass first reaches top_p
        qsort(c, n, sizeof(Cand), cand_cmp);
        double need = top_p * total, acc = 0;
        int keep = 0;
        while (keep < n && acc < need) acc += c[keep++].p;
        n = keep > 0 ? keep : 1;
        total = 0;
        for (int i = 0; i < n; i++) total += c[i].p;
    }
    double u = rng_uniform_f64(rng) * total, acc = 0;
    int pick = c[n - 1].id;  // rounding can leave u just above the last partial sum
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (u < acc) {
            pick = c[i].id;
            break;
        }
    }
    free(c);
    return pick;
}

// the sampling loop after a prefill that began at t0 and left logits
static int generate_after(Generator *g, const float *logits, double t0, const GenOptions *o, int *out, GenStats *st) {
    const Kernels *k = g->k;
    int V = g->m->llm.cfg.vocab;
    GenStats s = {0};
    Rng rng;
    rng_init(&rng, o->seed);
    s.n_prompt = g->len;
    s.t_image = g->t_image;
    int cap = o->max_new_tokens > 0 ? o->max_new_tokens : g->max_len;
    int n = 0;
    double t1 = 0;
    for (;;) {
        int tok = gen_sample(logits, V, o->temperature, o->top_p, &rng);
        if (n == 0) {
            s.t_prefill = time_now() - t0;
            t1 = time_now();
        }
        int stop = 0;
        for (int i = 0; i < o->n_stop; i++) stop |= tok == o->stop_ids[i];
        if (stop) {
            s.stop = GEN_STOP_ID;
            break;
        }
        out[n++] = tok;
        if (o->on_token) o->on_token(o->ctx, out, n);
        if (n >= cap) {
            s.stop = GEN_STOP_MAX_NEW;
            break;
        }
        if (g->len >= g->max_len) {
            s.stop = GEN_STOP_CACHE_FULL;
            break;
        }
        logits = gen_decode(g, tok);
        s.n_decode++;
    }
    k->synchronize();
    s.t_decode = time_now() - t1;
    s.n_new = n;
    if (st) *st = s;
    return n;
}

int gen_generate(Generator *g, const int *ids, int n_ids, const float *pixels, int image_pos,
                 const GenOptions *o, int *out, GenStats *st) {
    double t0 = time_now();
    const float *logits = gen_prefill(g, ids, n_ids, pixels, image_pos, NULL);
    return generate_after(g, logits, t0, o, out, st);
}

int gen_generate_tiles(Generator *g, const int *ids, int n, const float *pixels, int n_tiles, const int *tile_start,
                       const GenOptions *o, int *out, GenStats *st) {
    GenPrompt p = {.ids = ids, .n = n, .pixels = pixels, .n_tiles = n_tiles, .tile_start = tile_start};
    return gen_generate_prompt(g, &p, o, out, st);
}

int gen_generate_prompt(Generator *g, const GenPrompt *p, const GenOptions *o, int *out, GenStats *st) {
    double t0 = time_now();
    const float *logits = gen_prefill_prompt(g, p, NULL);
    return generate_after(g, logits, t0, o, out, st);
}
