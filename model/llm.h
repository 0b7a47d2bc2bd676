// llm.h: the Llama-family decoder (Llama, Qwen2, Mistral layouts: RMSNorm, RoPE, GQA, SwiGLU,
// optional q/k/v/o/MLP biases, tied or untied embeddings; every size from config.json) with
// LoRA on any subset of q,k,v,o,gate,up,down. The base weights are frozen: the backward yields
// LoRA gradients and the gradient at the input embeddings, never a frozen weight's gradient.
#pragma once
#include <stdint.h>

#include "kernels/kernels.h"
#include "model/params.h"

enum { PROJ_Q, PROJ_K, PROJ_V, PROJ_O, PROJ_GATE, PROJ_UP, PROJ_DOWN, N_PROJ };
extern const char *const proj_names[N_PROJ];  // "q_proj", ... "down_proj"

typedef struct {
    char model_type[32];
    int vocab, hidden, layers, heads, kv_heads, head_dim, mlp, max_pos;
    float eps, rope_theta;
    int qkv_bias, o_bias, mlp_bias;
    int tied;  // lm_head shares embed_tokens (-1 after llm_config_load when config.json is silent)
    int bos_id, eos_id;  // -1 when config.json has none (eos: the first when it is a list)
    int sliding_window;  // Mistral: attention window; 0 when none (svlm attends to everything)
    int rope_dynamic;    // rope_type "dynamic" (NTK, InternVL2.5's Qwen2.5): the default rotary embedding
                         // up to max_pos positions, so sequences and caches are held to max_pos
} LlmConfig;

typedef struct {
    int r;
    float alpha;
    int rslora;        // scaling alpha/sqrt(r) instead of alpha/r
    unsigned targets;  // bit PROJ_* set: that projection carries LoRA
    float dropout;
} LoraConfig;

float lora_scaling(const LoraConfig *l);
// "q,k,v,o,gate,up,down", peft-style "q_proj,v_proj", or "all"; fatal() naming a bad entry
unsigned lora_targets_parse(const char *list);
// reads r, lora_alpha, use_rslora, lora_dropout and target_modules of a peft adapter directory
void lora_config_load_peft(LoraConfig *l, const char *dir);

// Projections that read the same input run as one GEMM over their weights stacked: q/k/v (the
// input norm's rows) and gate/up (the post-attention norm's rows); o and down alone. The group's
// output rows hold its members' outputs side by side: q | k | v, gate | up.
enum { GRP_QKV, GRP_O, GRP_GU, GRP_DOWN, N_GROUPS };

typedef struct {
    act_t *w, *b;   // frozen (out, in) weight and (out) bias or NULL
    int out, in;
    int col;        // its first column in the rows of its group's output
    int a, bb;      // LoRA A (r, in) and B (out, r) in the trainable set; -1 without LoRA
    int hcol;       // with LoRA: its first column in the rows of the group's LoRA hidden
} LlmProj;

typedef struct {
    act_t *w, *b;   // the members' weights stacked (out, in) (consecutive in the frozen set), and
                    // their biases (out) likewise, or NULL
    int first, n;   // members: projections first .. first + n - 1 (PROJ_*)
    int out, in;    // out: the members' outs summed, the width of the group's output rows
    int lora_n;     // members with LoRA; their A's lie consecutively in the trainable set from
    int a_first;    // a_first (-1 without LoRA), so x @ [A_1; A_2; ..]^T is one GEMM
} LlmGroup;

typedef struct {
    act_t *ln1, *ln2;
    LlmProj p[N_PROJ];
    LlmGroup g[N_GROUPS];
} LlmLayer;

typedef struct {  // what one layer keeps for the backward, planned for max_B x max_T rows
    act_t *x;           // (N, C) residual stream entering the layer
    act_t *ln1;         // (N, C)
    float *rstd1;       // (N)
    act_t *qkv;         // (N, NH*HD + 2*NKV*HD) the fused q/k/v rows before RoPE: scratch (training
                        // shares one buffer among the layers)
    act_t *q, *k, *v;   // (N, NH*HD), (N, NKV*HD) x2, after RoPE
    act_t *att;         // (N, NH*HD)
    float *lse;         // (B, NH, T)
    act_t *xmid;        // (N, C) residual after attention
    act_t *ln2;         // (N, C)
    float *rstd2;       // (N)
    act_t *gu;          // (N, 2I) gate | up, the fused projection's rows; the backward overwrites it
                        // with their gradient
    act_t *act;         // (N, I) silu(gate) * up, the down projection's input (kept per layer for the backward)
    act_t *lora_h[N_GROUPS];  // (N, lora_n * r): input @ [A_1; A_2; ..]^T of the group, kept for dB
} LlmActs;

// Keys (after RoPE) and values of earlier positions, for generation: per layer (slots, cap,
// NKV*HD); slot s starts at row s * cap.
typedef struct {
    act_t **k, **v;
    int layers, slots, cap;
} LlmKvCache;

// The rows of one conversation inside a block of rows given to llm_forward_cached: the next n
// rows of the block (spans follow each other) are positions start .. start+n-1 of cache slot
// `slot`; they attend to positions 0 .. start+n-1 of that slot.
typedef struct {
    int slot, start, n;
} LlmSpan;

// Where a layer's attention finds its keys: cache NULL, the block's own rows, B sequences of T
// rows (training, validation) with seg (B, T) or NULL; otherwise the KV cache, the block's rows
// being the spans (n_spans, host), whose keys and values the layer writes into it first.
// Training may run fewer rows than B x T (the positions past each sequence's last labelled one
// change no loss: causal attention): then the layer's N rows are compact, pad (B*T) gives the
// compact row of each attention position (-1: none, a zero row there) and rows (N) the attention
// position of each compact row; only q/k/v, attention and its output live in the B x T layout.
typedef struct {
    int B, T;
    const int *seg;
    const int *pad, *rows;  // backend ints, both NULL when the N rows are the B x T positions
    // Training, the last layer only: after its attention only the n_keep rows `keep` (of the N)
    // continue, the labelled ones (no other row reaches the loss); keep_pos their attention
    // positions, pad_keep (B*T) the kept row of each attention position and row_keep (N) of each
    // row (-1: none). Backend ints; keep NULL: every row continues.
    const int *keep, *keep_pos, *pad_keep, *row_keep;
    int n_keep;
    const LlmKvCache *cache;
    const LlmSpan *spans;
    int n_spans;
} LlmAttend;

typedef struct {
    LlmConfig cfg;
    LoraConfig lora;  // r == 0: no LoRA
    float lora_scale;
    const Kernels *k;
    ParamSet w;       // frozen weights, HF names
    ParamSet *train;  // the trainable set holding the LoRA tensors (shared with the connector)
    act_t *embed, *norm, *lm_head;
    LlmLayer *layer;
    int max_B, max_T;
    // training activations (allocated by llm_setup)
    LlmActs *acts;      // one per layer
    act_t *x_out;       // (N, C) residual after the last layer
    act_t *lnf;         // (N, C) final norm output
    float *rstdf;       // (N)
    // backward and loss scratch
    act_t *dx, *dln, *dq, *dk, *dv, *datt, *dh;  // dh (N, 3r): a group's LoRA hidden gradient
    // one scratch buffer (N, max(QD + 2KD, I)) under two names: qkv, every layer's fused q/k/v rows
    // in the forward and their gradient in the backward; dact, the gradient at the SwiGLU product
    act_t *qkv, *dact;
    // with compact rows (LlmAttend.pad): the fused q/k/v rows (forward) or their gradient
    // (backward) at the attention's B x T positions, and the attention output gathered into compact
    // rows (o_proj's input) or, in the backward, d(attention output) at the B x T positions
    act_t *qkv_pad, *att_rows;  // (N, QD + 2KD), (N, QD)
    // with kept rows (LlmAttend.keep): their residual entering the last layer (forward), then
    // d(last layer input) at every row (backward), when it trades places with dx
    act_t *x_keep;  // (N, C)
    int kept;       // rows the last layer ran after its attention (0: all N): llm_loss's rows
    act_t *hid, *dhid, *logits;  // (N, C), (N, C), (xent_chunk_rows, V)
    float *losses;               // (N)
    // LoRA dropout: on only while training; masks come from dropout_seed (kernels.h dropout)
    int training;
    uint64_t dropout_seed;
    act_t *xdrop, *dxdrop;       // (N, widest projection input), allocated when lora.dropout > 0
    GradsReady grads_ready;      // llm_backward calls it for each layer's LoRA tensors, top layer first
} Llm;

void llm_config_load(LlmConfig *c, const char *dir);
// Declares the frozen weights under their HF names: embed_tokens (index 0), norm (1), lm_head
// (returned; -1 when tied), then per layer LLM_LAYER_TENSORS indices into idx: the two norms,
// then weight and bias (-1 when absent) of each projection in PROJ_* order. c->tied must be 0 or 1.
#define LLM_LAYER_TENSORS (2 + 2 * N_PROJ)
int llm_declare(ParamSet *w, const LlmConfig *c, int *idx);
// Loads the frozen weights of dir and, when lora && lora->r > 0, declares the LoRA tensors in
// train (peft names: model.layers.L.self_attn.q_proj.lora_A.weight ...). Call params_alloc(train)
// afterwards and then llm_setup.
void llm_load(Llm *m, const Kernels *k, const char *dir, const LoraConfig *lora, ParamSet *train);
// allocates activations for micro-batches up to max_B x max_T
void llm_setup(Llm *m, int max_B, int max_T);
void llm_free(Llm *m);
// peft's init: A kaiming-uniform (bound 1/sqrt(in)), B zero
void llm_lora_init(Llm *m, uint64_t seed);

// x0 (N, C) row i = embedding of ids[i]; rows with ids[i] < 0 untouched (image slots)
void llm_embed(Llm *m, act_t *x0, const int *ids, int N);
// THE decoder layer l, the only place its math is written: out (N, C) = layer(a->x (N, C)),
// through a's buffers (norm -> q/k/v (+LoRA) -> RoPE at pos (N) -> attention as `at` says ->
// o_proj -> residual -> norm -> SwiGLU MLP -> residual). out may alias a->x (generation reuses
// one scratch block for every layer); a->rstd1/rstd2/lse may be NULL when nothing is kept.
void llm_layer_forward(const Llm *m, int l, LlmActs *a, act_t *out, int N, const int *pos, const LlmAttend *at);
// runs the decoder on m->acts[0].x (N, C), filled by the caller: N = at->B * at->T rows, or
// compact rows as at->pad says; pos (at->B * at->T) backend ints, the attention positions' RoPE
// positions (pad rows: any)
void llm_forward(Llm *m, const LlmAttend *at, int N, const int *pos);

// ---- generation: the same layers over a KV cache ----
// Scratch for blocks of up to N rows, one set shared by every layer (ln2 = ln1, act = qkv,
// one LoRA hidden for all groups, no norm statistics kept).
void llm_rows_alloc(const Llm *m, LlmActs *a, int N);
void llm_rows_free(const Llm *m, LlmActs *a);
void llm_kv_cache_alloc(const Llm *m, LlmKvCache *c, int slots, int cap);
void llm_kv_cache_free(const Llm *m, LlmKvCache *c);
// Runs the rows of a->x (the embeddings of the spans' positions, in span order; N = the sum of
// their n) through every layer with llm_layer_forward, each layer appending the spans' keys and
// values to the cache; leaves the last layer's output in a->x. pos (N) backend ints: the rows'
// positions. Inference only (LoRA dropout must be off). The caller advances its lengths.
void llm_forward_cached(const Llm *m, LlmActs *a, const LlmKvCache *c, const LlmSpan *spans, int n_spans,
                        const int *pos);
// logits_host (n, V) = lm_head(final norm(x (n, C))), n any count: the vocabulary projection
// runs in blocks of the LLM's logits buffer (xent_chunk_rows); ln (n, C) is scratch
void llm_logits_rows(const Llm *m, float *logits_host, act_t *ln, const act_t *x, int n);
// Loss at M labelled rows idx (into the N rows of llm_forward) with targets: per-row losses into
// m->losses (fp32, backend; callers download them). With backward, d(sum of losses)*grad_scale
// with respect to the last layer's output is left in m->dx, where llm_backward starts.
void llm_loss(Llm *m, int N, const int *idx, const int *targets, int M, float grad_scale, int backward);
// from m->dx = d(final residual): LoRA gradients (+=) into train->grad, and d(x0) left in m->dx;
// as each layer is done, m->grads_ready hears that its LoRA gradients are final
void llm_backward(Llm *m, const LlmAttend *at, int N, const int *pos);
// layer l's LoRA tensors, declared together: returns their count (0 without LoRA there), *first
// the index of the first in the trainable set
int llm_lora_range(const Llm *m, int l, int *first);
// logits (N, V) of every row after llm_forward (tests, evaluation)
void llm_logits(Llm *m, act_t *out, int N);
