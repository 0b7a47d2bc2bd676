// params.h: a set of named tensors living in one contiguous buffer (llm.c style), so loading,
// gradients, AdamW, all-reduce and checkpoints each see one span. Frozen sets hold act_t
// weights; the trainable set holds fp32 masters plus grads, AdamW moments and (on backends whose
// act_t is not fp32) a compute copy.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"
#include "model/hf.h"

#define PARAM_NAME_MAX 160

// What a tensor is for, tagged by the module that declares it: the optimizer gives each group
// its learning rate and the trainer counts and selects tensors by group, never by name.
typedef enum {
    PARAM_GROUP_FROZEN,     // the default: frozen weights (vision tower, LLM)
    PARAM_GROUP_CONNECTOR,  // the connector's trainable weights (lr connector_lr, else lr)
    PARAM_GROUP_LORA,       // LoRA adapters (lr)
    N_PARAM_GROUPS
} ParamGroup;

typedef struct {
    char name[PARAM_NAME_MAX];
    int ndim;
    int64_t shape[4];
    size_t numel;
    size_t offset;  // in elements from the start of the buffer
    int decay;      // AdamW weight decay applies (not to biases)
    ParamGroup group;  // set at declaration (params_declare_group)
} Param;

typedef struct {
    const Kernels *k;
    Param *p;
    int n, cap;
    size_t numel;
    int trainable;
    ParamGroup group;  // the group params_add gives the tensors it declares
    int join_next;     // params_join_next: the next tensor starts where the last one ends
    act_t *data;    // frozen: the weights. trainable: the compute copy (== master when act is fp32)
    float *master;  // trainable only: fp32 weights of elements [master_begin, master_begin + master_len)
    float *grad;    // trainable only: span long (numel, padded)
    float *m, *v;   // AdamW moments of elements [opt_begin, opt_begin + opt_len) only
    // Set before params_alloc (params_shard_optimizer); by default one shard: span = numel and
    // masters and moments cover everything. With n shards (ZeRO-1) the span is padded to a
    // multiple of n so that it splits into n equal slices, and the moments exist for one slice;
    // so do the fp32 masters where the compute copy is separate (act_t not fp32: the trainer
    // all-gathers the updated slices into the copy). On the CPU backend the masters are the
    // compute weights and stay whole.
    int opt_shards, opt_shard;
    size_t span, opt_begin, opt_len;
    size_t master_begin, master_len;
} ParamSet;

// The backward's word that the gradients of tensors [first, first + n) of the trainable set are
// final for this micro-batch: nothing later in it adds to them. A trainer that sums gradients
// across processes starts on them while the backward goes on (vlm.h says in which groups and
// order the model calls it). fn NULL: not called.
typedef struct {
    void (*fn)(void *ctx, int first, int n);
    void *ctx;
} GradsReady;

void params_init(ParamSet *ps, const Kernels *k, int trainable);
// declares a tensor; returns its index. Shapes are as Hugging Face / PyTorch store them.
int params_add(ParamSet *ps, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
// The next params_add places its tensor right after the last one declared, without the alignment
// padding, so that a run of tensors reads as one matrix (the LLM's q/k/v and gate/up weights
// stacked for one GEMM; their LoRA A's). The joined tensor may start unaligned.
void params_join_next(ParamSet *ps);
// tensor j starts where tensor i ends
int params_consecutive(const ParamSet *ps, int i, int j);
// tensors declared from now on carry group g (a set starts with PARAM_GROUP_FROZEN)
void params_declare_group(ParamSet *ps, ParamGroup g);
const char *param_group_name(ParamGroup g);
size_t params_group_numel(const ParamSet *ps, ParamGroup g);  // elements of the group's tensors
void params_alloc(ParamSet *ps);  // allocates the buffers once every tensor is declared
// trainable sets, before params_alloc: the optimizer state will be kept for slice `shard` of
// `shards` equal slices of the (padded) span only
void params_shard_optimizer(ParamSet *ps, int shards, int shard);
size_t params_bytes(const ParamSet *ps);  // what params_alloc allocates on the backend
void params_free(ParamSet *ps);
int params_find(const ParamSet *ps, const char *name);  // -1 when absent

act_t *params_act(const ParamSet *ps, int i);  // compute copy / frozen weight
float *params_master(const ParamSet *ps, int i);  // the tensor must lie in the masters' range
int params_masters_sharded(const ParamSet *ps);   // the masters cover one slice only
float *params_grad(const ParamSet *ps, int i);

// frozen sets: reads every tensor from w under prefix + name, checking shapes
void params_load_hf(ParamSet *ps, const HfWeights *w, const char *prefix);
// one renaming of params_load_hf_renamed: a name starting with `from` is read as `to` + the rest
typedef struct {
    const char *from, *to;
} ParamRename;
// frozen sets: reads every tensor from w under its name renamed by the first rule whose `from`
// starts it (a name no rule matches is read as it is), checking shapes; params_load_hf is the
// single rule {"", prefix}. A whole-VLM directory's LLM is read this way (model/llm.c).
void params_load_hf_renamed(ParamSet *ps, const HfWeights *w, const ParamRename *rules, int n_rules);
// trainable sets: refreshes the compute copy after the masters changed (where sharded: the
// masters' slice of it only)
void params_sync(ParamSet *ps);
// host copies of one tensor's master (trainable) or weight (frozen); uploading a trainable
// tensor sets what lies in the masters' range and the whole of its compute copy. Downloading
// needs the tensor in the masters' range (sharded masters are gathered by the trainer).
void params_download(const ParamSet *ps, int i, float *host);
void params_upload(ParamSet *ps, int i, const float *host);
// Loads every tensor of the safetensors file at path whose name, after removing strip_prefix
// (may be ""), names a tensor of the set; fatal() on a shape mismatch. Returns how many it
// loaded; *unmatched (if not NULL) gets the count of file tensors that matched nothing.
int params_load_file(ParamSet *ps, const char *path, const char *strip_prefix, int *unmatched);
