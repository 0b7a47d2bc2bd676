// generate.h: inference for a loaded Vlm: the LLM run over a KV cache (prefill of the prompt,
// with its images' tiles' features over their slots, then one token at a time), and sampling.
//
// Every layer runs through llm_layer_forward (model/llm.h), the one the training forward uses,
// in its KV-cache mode (llm_forward_cached), on the model's own weights: the frozen ones and the
// LoRA tensors of the trainable set, unmerged. Each layer's keys (after RoPE) and values are kept
// in a cache allocated once for max_len positions, so a new token costs one row of work. The prompt runs in chunks of up to `chunk` positions (attention_cached covers
// every chunk size), and the vocabulary projection is computed only where logits are asked for.
// Batch size 1: one conversation per Generator. Its prefill is gen_prefill_run (gen_prefill.c), the
// one batched generation (model/gen_batch.h) uses too.
#pragma once
#include <stdint.h>

#include "common/rng.h"
#include "kernels/kernels.h"
#include "model/vlm.h"

// A prompt as the decoder takes it: ids (n) the whole prompt with its image slots expanded
// (data/image_slot.h: markers, several tiles and images), and n_tiles tiles (pixels (n_tiles, 3, S,
// S) host, normalised) whose n_img_tokens feature rows each replace the embeddings of positions
// tile_start[t] .. + n_img_tokens. LLaVA's unmarked single image is one tile at its position.
typedef struct {
    const int *ids;
    int n;
    const float *pixels;
    int n_tiles;
    const int *tile_start;
} GenPrompt;

// fatal() naming the problem (empty, longer than max_len, more tiles than the Vlm holds, a tile
// outside the prompt, a token outside the vocabulary); returns p->n
int gen_prompt_validate(const Vlm *m, int max_len, const GenPrompt *p);
// The prompt ids (n_ids) with one unmarked image's n_img_tokens rows before ids[image_pos] (pixels
// NULL: text only) as a GenPrompt; returns the buffer p's ids and tile start live in (free it)
int *gen_prompt_one_image(const Vlm *m, const int *ids, int n_ids, const float *pixels, int image_pos, GenPrompt *p);

// What one prefill runs with, borrowed from a Generator or a GenBatch: the cache whose slots
// 0 .. n-1 the n prompts fill from position 0, rows for blocks of up to cap positions, and host /
// backend scratch for cap ids and positions and min(cap, n) spans
typedef struct {
    Vlm *m;
    LlmKvCache *cache;
    LlmActs *rows;
    int cap;
    LlmSpan *spans;
    int *ids, *pos;      // (cap) backend
    int *h_ids, *h_pos;  // (cap) host
} GenRows;

// Called after each block ran through the decoder: rows->x holds its rows' last hidden states,
// span s covering rows (sum of the earlier spans' n) ..; t0 when the block began, t_img the
// seconds it spent in the tower
typedef void (*GenBlockFn)(void *ctx, const LlmSpan *spans, int ns, int rows, double t0, double t_img);

// The prefill of prompts p[0..n) (checked by the caller): their positions packed in order into
// blocks of up to r->cap rows (a long prompt continues in the next block), each embedded, its
// tiles' feature rows placed over their positions, and run once through the decoder
// (llm_forward_cached), span s of a block into slot spans[s].slot = its prompt. The tower runs
// the tiles of as many whole prompts as the Vlm's max_images holds at once, when the first of
// them is reached; t_image[i] (NULL: not kept) gets prompt i's tiles' share of it.
void gen_prefill_run(const GenRows *r, const GenPrompt *p, int n, GenBlockFn done, void *ctx, double *t_image);

typedef struct {
    Vlm *m;            // borrowed: vit, connector, LLM weights and the trainable set (LoRA)
    const Kernels *k;
    int max_len;       // cache capacity in positions (image tokens included)
    int chunk;         // most positions one forward call runs
    int len;           // positions in the cache
    LlmKvCache cache;  // one slot of max_len positions
    LlmActs rows;      // scratch for one chunk of rows (llm_rows_alloc)
    int *ids, *pos;    // (chunk) backend ints
    int *h_ids, *h_pos;
    float *h_logits;   // (V) host: logits of the newest position
    double t_image;    // seconds the last prefill spent in the vision encoder and connector
} Generator;

// Caches for max_len positions and scratch for chunks of up to chunk positions (0: 512).
// The Generator has its own buffers: a Vlm loaded with max_B 1, max_T 1 is enough, with
// max_images >= 1 for image prompts. The backend must have attention_cached (fatal() otherwise).
void gen_init(Generator *g, Vlm *m, int max_len, int chunk);
void gen_free(Generator *g);
void gen_reset(Generator *g);  // empties the cache (a new conversation)
// Forgets every position from len on (0 <= len <= g->len, else fatal()): the next gen_extend
// continues after position len - 1. Scores several continuations of one prefilled prompt
// (./eval's likelihood scoring) without prefilling it again.
void gen_truncate(Generator *g, int len);

// Checks a prompt as gen_prefill takes it (fatal() naming the problem: image slot out of range,
// empty, longer than max_len, a token outside the vocabulary, an image the Vlm has no room for)
// and returns its positions, image tokens included.
int gen_prompt_check(const Vlm *m, int max_len, const int *ids, int n_ids, const float *pixels, int image_pos);

// Runs the prompt from an empty cache: ids (n_ids) and, when pixels (host, (3, S, S) normalised)
// is not NULL, the image's n_img_tokens features inserted before ids[image_pos] (0 <= image_pos
// <= n_ids). Returns the logits of the last position (host, V floats, valid until the next call);
// all_logits (host, (n_prompt, V)), when not NULL, gets every prompt position's logits.
// A prompt longer than max_len, or empty, is fatal().
const float *gen_prefill(Generator *g, const int *ids, int n_ids, const float *pixels, int image_pos,
                         float *all_logits);
// The same for a prompt whose image slots are already expanded (data/image_slot.h: markers,
// several tiles and images): ids (n) is the whole prompt, and tile t's n_img_tokens feature rows
// replace the embeddings of positions tile_start[t] .. + n_img_tokens; pixels (n_tiles, 3, S, S),
// n_tiles <= the Vlm's max_images. fatal() as gen_prefill.
const float *gen_prefill_tiles(Generator *g, const int *ids, int n, const float *pixels, int n_tiles, const int *tile_start,
                               float *all_logits);
// gen_prefill_tiles of a GenPrompt (the form both take to gen_prefill_run)
const float *gen_prefill_prompt(Generator *g, const GenPrompt *p, float *all_logits);
// Appends n tokens (positions len .. len+n-1) after a prefill; same outputs as gen_prefill for
// those positions. fatal() when the cache cannot hold them.
const float *gen_extend(Generator *g, const int *ids, int n, float *all_logits);
// one token at position len: gen_extend(g, &token, 1, NULL)
const float *gen_decode(Generator *g, int token);

// Chooses the next token. temperature <= 0: greedy, the largest logit (ties: the lowest id; NaN
// never wins). Otherwise softmax(logits / temperature), restricted when 0 < top_p < 1 to the
// most likely tokens whose probabilities first reach top_p (ties in order of id), sampled with
// one rng_uniform_f64 draw. Deterministic for a given rng state.
int gen_sample(const float *logits, int V, float temperature, float top_p, Rng *rng);

typedef struct {
    int max_new_tokens;   // <= 0: until a stop id or the cache is full
    float temperature;    // 0: greedy
    float top_p;          // 1 (or 0): off
    uint64_t seed;        // for temperature > 0
    const int *stop_ids;  // generation ends at any of these (not included in the output)
    int n_stop;
    // called after each new token with all tokens so far (streaming); may be NULL
    void (*on_token)(void *ctx, const int *tokens, int n);
    void *ctx;
} GenOptions;

enum { GEN_STOP_ID = 1, GEN_STOP_MAX_NEW = 2, GEN_STOP_CACHE_FULL = 3 };

typedef struct {
    int n_prompt;       // positions prefilled (text and image tokens)
    int n_new;          // tokens returned (without the stop token)
    int n_decode;       // single-token forward passes run
    int stop;           // GEN_STOP_*
    double t_image;     // seconds in the vision encoder and connector (part of t_prefill)
    double t_prefill;   // image + prompt forward + first sample
    double t_decode;    // every later step
} GenStats;

// Prefills the prompt (as gen_prefill) and generates up to max_new_tokens tokens into out
// (capacity max_new_tokens, or max_len when max_new_tokens <= 0). Returns the count.
int gen_generate(Generator *g, const int *ids, int n_ids, const float *pixels, int image_pos,
                 const GenOptions *o, int *out, GenStats *st);
// gen_generate after gen_prefill_tiles / gen_prefill_prompt
int gen_generate_prompt(Generator *g, const GenPrompt *p, const GenOptions *o, int *out, GenStats *st);
int gen_generate_tiles(Generator *g, const int *ids, int n, const float *pixels, int n_tiles, const int *tile_start,
                       const GenOptions *o, int *out, GenStats *st);
