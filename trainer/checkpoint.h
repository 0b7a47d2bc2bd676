// checkpoint.h: run checkpoints, written atomically so that a kill at any instant leaves the
// previous one usable: out_dir/step_NNNNNNNN/ holds
//   trainable.safetensors   connector and LoRA masters, fp32, svlm names
//   optimizer.safetensors   AdamW moments as exp_avg.<name> and exp_avg_sq.<name>
//   state.json              step, data position, RNG, world size, metrics length, model signature
// It is written as step_NNNNNNNN.tmp/, every file fsynced, then renamed; the newest keep_last
// complete checkpoints are kept. A checkpoint is a real directory: an entry that is a symbolic
// link is never listed, loaded, pruned or set aside, and .tmp leftovers are removed without
// following links (common/fs_safe.h).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common/rng.h"
#include "data/loader.h"
#include "model/params.h"

typedef struct {
    int64_t step;           // optimizer steps completed
    int64_t total_steps;
    LoaderPos data;         // where the next step starts in the epoch's global order (world-size independent)
    Rng rng;
    int world;
    int64_t metrics_bytes;  // length of metrics.jsonl at this step (resume truncates to it)
    int64_t skipped_steps;  // steps dropped by nan_policy = skip
    int64_t tokens;         // labelled tokens trained on so far
    char data_desc[256];    // the settings that order the data (seed, batch sizes...), compared on resume
} TrainState;

// Writes a checkpoint of step st->step. signature: one-line JSON describing the model shapes
// (compared on resume). On any I/O failure the temporary directory is removed, the previous
// checkpoints are left as they were, and the reason is returned in err (returns -1).
// w_host, m_host, v_host: the whole masters and AdamW moments in host memory (numel each) where
// the set holds only a slice of them (ZeRO-1); NULL: the set's own.
int checkpoint_save(const char *out_dir, const TrainState *st, const ParamSet *train, const float *w_host,
                    const float *m_host, const float *v_host, const char *signature, int keep_last, char *err, size_t errlen);
// path of the newest complete checkpoint in out_dir; 0 when there is none
int checkpoint_latest(const char *out_dir, char *path, size_t cap);
// Renames the complete checkpoints after `step` to abandoned_step_N_K (kept, never listed):
// a run resumed from an older checkpoint replaces the history that followed it. Returns how many.
int checkpoint_set_aside_after(const char *out_dir, int64_t step);
// removes step_*.tmp leftovers of killed runs
void checkpoint_clean_tmp(const char *out_dir);
// state.json: checkpoint_state_text returns it (malloc'd); checkpoint_read_state reads dir's,
// compares its model description with signature and range-checks every number (step within
// [0, total_steps] and equal to the directory's step_N, counts non-negative, world_size >= 1, at
// most 2^53 where JSON numbers stay exact), fatal() with one line naming the file and key
// otherwise. It acts on nothing: resume moves and truncates files only after it returned.
char *checkpoint_state_text(const TrainState *st, const char *signature);
void checkpoint_read_state(const char *dir, TrainState *st, const char *signature);
// Restores masters, moments (the set's slice of them) and state from dir. A checkpoint whose signature differs from
// signature is refused with a message naming what differs; a damaged file is a fatal() naming it.
void checkpoint_load(const char *dir, TrainState *st, ParamSet *train, const char *signature);
// Loads only the connector tensors (model.mm_projector.*) of a stage-1 run directory, a
// checkpoint directory, an export directory or a .safetensors file; every connector tensor of
// train must be found with the same shape. Returns the file it read.
const char *checkpoint_load_connector(const char *from, ParamSet *train, char *used, size_t cap);
