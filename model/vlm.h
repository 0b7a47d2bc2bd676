// vlm.h: the vision-language model: frozen vision encoder -> trainable connector -> LLM with
// LoRA. Image features replace the embeddings of the image slot in each sample's tokens; the
// loss is the mean over labelled positions: vlm_forward_backward returns the sum of the
// per-position losses and their count, and the trainer divides the accumulated gradients by the
// labelled count of the whole optimizer step, so micro-batches and accumulation add up exactly.
#pragma once
#include <stdint.h>

#include "kernels/kernels.h"
#include "model/connector.h"
#include "model/llm.h"
#include "model/params.h"
#include "model/vit.h"

typedef struct {
    const char *vision_dir;
    int vision_layer;  // index into HF hidden_states, default -2
    const char *llm_dir;
    ConnectorType connector;
    int connector_scale;  // patches per token side (pixel shuffle factor); 0: the connector's default
    LoraConfig lora;  // r = 0: no LoRA (stage 1)
    int max_B, max_T, max_images;
    int opt_shards, opt_shard;  // ZeRO-1: optimizer state for this slice only (params_shard_optimizer); 0: all
} VlmSpec;

typedef struct {
    int B, T;
    const int *ids;      // (B, T) token ids; entries inside image slots are ignored
    const int *targets;  // (B, T) the token each position predicts (the next one), -1 for no loss
    const int *pos;      // (B, T) RoPE positions, NULL for 0..T-1 in every row
    const int *seg;      // (B, T) packed-sample ids (attention stays inside one), NULL for none
    int n_img;
    const float *pixels;                // (n_img, 3, S, S) normalised
    const uint16_t *pixels_bf16;        // the same rounded to bf16, or NULL: uploaded as they are
                                        // where act_t is bf16 (the loader's threads rounded them)
    const int *img_row, *img_start;     // (n_img): the row and first position of each image slot
} VlmBatch;

// The stages of vlm_forward_backward, in order: a stage hook (Vlm.stage_hook) is called at the
// end of each, so bench_step can time the model's own step stage by stage
enum { VLM_STAGE_UPLOAD, VLM_STAGE_EMBED, VLM_STAGE_VISION, VLM_STAGE_CONNECTOR_F, VLM_STAGE_LLM_F, VLM_STAGE_LOSS,
       VLM_STAGE_LLM_B, VLM_STAGE_CONNECTOR_B, N_VLM_STAGES };
extern const char *const vlm_stage_names[N_VLM_STAGES];

// the step's sums in Vlm.stats: the loss over labelled positions, the gradients' squared norm
enum { VLM_STAT_LOSS, VLM_STAT_SUMSQ, VLM_N_STATS };

typedef struct {
    const Kernels *k;
    Vit vit;
    Connector conn;
    Llm llm;
    ParamSet train;    // connector + LoRA: everything the optimizer sees
    int n_img_tokens;  // slot length per image
    int max_B, max_T, max_images;
    // backend buffers
    act_t *pixels, *feats, *img_emb, *dimg;
    int *ids, *pos, *seg, *lab_idx, *lab_tgt, *img_idx;
    int *pad_idx, *row_idx;  // LlmAttend.pad, .rows of the compact rows
    int *keep_pos, *pad_keep, *row_keep;  // LlmAttend's kept rows (the labelled ones; keep = lab_idx)
    LlmAttend at;            // the micro-batch's attention layout (upload_batch)
    int n_rows;              // the LLM rows it runs: at.B * at.T, or fewer when compact
    double *stats;  // (VLM_N_STATS) the step's sums kept on the backend until the step ends
    // host scratch: the ids, positions, labels and image rows as uploaded, in two sets of the
    // backend's host memory (k->host_alloc: uploaded in place), used in turn, so that a
    // micro-batch is written while the one before may still be copied
    int *h_ids, *h_pos, *h_idx, *h_tgt, *h_seg, *h_pad, *h_row, *h_keep_pos, *h_pad_keep, *h_row_keep,
        *h_img_idx;  // the set in use
    int *h_set[2];
    int h_cur;
    char *h_slot;  // (N) 1 where a position belongs to an image slot
    int *h_len;    // (max_B) the positions each row runs (upload_batch)
    // called with VLM_STAGE_* as each stage of vlm_forward_backward ends (NULL: not called)
    void (*stage_hook)(void *ctx, int stage);
    void *stage_ctx;
    // called by the backward as the gradients of a group of trainable tensors become final (see
    // vlm_grad_groups); the trainer sets it for the last micro-batch of a step
    GradsReady grads_ready;
    int conn_first, conn_n;  // the connector's tensors in train
} Vlm;

void vlm_init(Vlm *m, const Kernels *k, const VlmSpec *spec);
void vlm_free(Vlm *m);
// random init of the trainable part as LLaVA/peft start it: connector as PyTorch's defaults,
// LoRA A kaiming-uniform and B zero
void vlm_init_trainable(Vlm *m, uint64_t seed);
// training switches LoRA dropout on (when lora.dropout > 0) with masks derived from seed: the
// trainer gives each micro-batch its own seed, a function of the step, so resume replays them
void vlm_set_training(Vlm *m, int training, uint64_t seed);
// Forward (and backward when grad_scale != 0): returns the sum of the per-position losses and
// their count in *n_labelled; gradients (+=) scaled by grad_scale go to m->train.grad.
// Batches that break the model's limits (token ids, slot positions, sizes) are fatal().
double vlm_forward_backward(Vlm *m, const VlmBatch *b, float grad_scale, int *n_labelled);
// The groups of trainable tensors whose gradients vlm_forward_backward's backward finishes one
// after another, in that order: each LLM layer's LoRA tensors from the top layer down, then the
// connector's. Group g is tensors [first[g], first[g] + n[g]); returns the count (at most cap).
// The backward calls m->grads_ready once per group it runs, in this order (none when the batch
// has no labelled token, no connector group when it has no image).
int vlm_grad_groups(const Vlm *m, int *first, int *n, int cap);
// The same without waiting for the device: the loss sum is written (accumulate: added) to
// *loss_sum, one double in backend memory (m->stats + VLM_STAT_LOSS for a trainer), in stream order.
void vlm_forward_backward_acc(Vlm *m, const VlmBatch *b, float grad_scale, double *loss_sum, int accumulate,
                              int *n_labelled);
// forward only, then logits (B, T, V) to the host
void vlm_logits(Vlm *m, const VlmBatch *b, float *logits);
