// gen_batch.h: generation for many conversations at once. Each prompt is prefilled on its own
// (model/generate.h's gen_prefill, the batch-1 code path, its keys and values then copied into
// its slot of one batched KV cache); the decode steps then run every unfinished conversation's
// new token together: one (n, C) row block through each projection and the MLP, each row's keys
// and values written at its own position of its own slot, attention per conversation over its
// own length. Each conversation stops on its own stop id, token limit or full slot, and samples
// with its own Rng seeded as gen_generate seeds it, so with greedy decoding (and with sampling at
// the same seed) the tokens are those of gen_generate, conversation by conversation (the row
// blocks change only the matmuls' row count; tests/test_gen_batch.c checks it).
#pragma once
#include "model/generate.h"

typedef struct {
    Vlm *m;
    const Kernels *k;
    int max_batch, max_len;
    Generator pre;       // prefill: the batch-1 generator (its cache is copied into a slot)
    act_t **kc, **vc;    // per layer (max_batch, max_len, NKV*HD)
    int *len;            // (max_batch) positions in each slot
    // scratch for max_batch rows
    act_t *x, *ln, *q, *kk, *v, *att, *tmp, *gate, *up, *lh;
    int *ids, *pos, *h_ids, *h_pos;
    float *h_logits;     // (max_batch, V) host
} GenBatch;

// Slots for max_batch conversations of up to max_len positions each; chunk: the prefill's (as gen_init)
void gen_batch_init(GenBatch *b, Vlm *m, int max_batch, int max_len, int chunk);
void gen_batch_free(GenBatch *b);

// One prompt per conversation: ids[i] (n_ids[i]), pixels[i] (NULL: text only), image_pos[i], as
// gen_generate takes them; n <= max_batch. out[i] (room for o->max_new_tokens, or max_len when
// that is <= 0) gets conversation i's tokens, n_out[i] their count, st[i] (may be NULL) its
// stats: t_prefill its own prefill, t_decode the decode steps it took part in (shared steps).
// o->on_token is not called.
void gen_batch_generate(GenBatch *b, int n, const int *const *ids, const int *n_ids, const float *const *pixels,
                        const int *image_pos, const GenOptions *o, int *const *out, int *n_out, GenStats *st);
