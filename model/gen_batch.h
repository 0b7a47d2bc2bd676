// gen_batch.h: generation for many conversations at once, over one KV cache of max_batch slots.
// The prompts are prefilled together by gen_prefill_run (model/generate.h, the prefill a
// Generator runs too): their positions (image slots and tiles included) are packed, one prompt
// after another, into blocks of up to `chunk` rows (a long prompt continues in the next block),
// and each block runs once through the decoder (llm_forward_cached: the layer of model/llm.h,
// each prompt's rows a span attending over its own slot). Then every decode step runs
// the unfinished conversations' new tokens together as one row block, each row a span of one
// position in its own slot. Each conversation stops on its own stop id, token limit or full slot,
// and samples with its own Rng seeded as gen_generate seeds it, so with greedy decoding (and with
// sampling at the same seed) the tokens are those of gen_generate, conversation by conversation
// (row blocks change only the matmuls' row counts; tests/test_gen_batch.c checks it).
#pragma once
#include "model/generate.h"

typedef struct {
    Vlm *m;
    const Kernels *k;
    int max_batch, max_len;
    int rows_cap;        // rows of one forward block: max(chunk, max_batch)
    LlmKvCache cache;    // max_batch slots of max_len positions
    int *len;            // (max_batch) positions in each slot
    LlmActs rows;        // scratch for rows_cap rows (llm_rows_alloc)
    LlmSpan *spans;      // (rows_cap) host: the block's spans
    int *ids, *pos, *idx;        // (rows_cap) backend ints
    int *h_ids, *h_pos, *h_idx;  // host
    act_t *last;         // (max_batch, C): rows whose logits are wanted, gathered
    float *h_logits;     // (max_batch, V) host
} GenBatch;

// Slots for max_batch conversations of up to max_len positions each; chunk: the most prompt
// positions one prefill block runs (0: 512)
void gen_batch_init(GenBatch *b, Vlm *m, int max_batch, int max_len, int chunk);
void gen_batch_free(GenBatch *b);

// One prompt per conversation: p[i] (model/generate.h: slots expanded, tiles at their positions;
// gen_prompt_one_image makes one of an unmarked single image), n <= max_batch. out[i] (room for
// o->max_new_tokens, or max_len when that is <= 0) gets conversation i's tokens, n_out[i] their
// count, st[i] (may be NULL) its stats: t_image its tiles' share of the tower (which runs the
// tiles of as many prompts as the Vlm's max_images holds at once), t_prefill that plus its share
// (by rows) of the prefill blocks it took part in, so the shares add up to the prefill's time;
// t_decode the decode steps it took part in (shared steps).
// o->on_token is not called.
void gen_batch_generate(GenBatch *b, int n, const GenPrompt *p, const GenOptions *o, int *const *out, int *n_out,
                        GenStats *st);
