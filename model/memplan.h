// memplan.h: the memory plan of a VLM on a backend, computed before anything is allocated by
// running the model's own setup (vlm_init) on the dry-run table (kernels_dry_run): the plan is
// exactly what vlm_init will allocate, plus the ops' scratch (workspace_bytes).
#pragma once
#include <stddef.h>

#include "kernels/kernels.h"
#include "model/vlm.h"

typedef struct {
    size_t frozen_vision, frozen_llm;  // frozen weights (act_t)
    size_t trainable;    // fp32 master, grad, AdamW m and v, and the act_t compute copy
    size_t n_trainable;  // trainable parameters
    int has_copy;        // the trainable weights have an act_t compute copy (act_t is not fp32)
    size_t activations;  // everything sized by the micro-batch: kept activations, their
                         // gradients, the logits chunk, the batch's inputs
    size_t workspace;    // the ops' scratch for the largest calls (KernelsWork)
    size_t total;        // the sum of the above: what memory() rises by through vlm_init and
                         // workspace_reserve
    size_t n_blocks;     // allocations vlm_init makes
    size_t margin;       // what allocation granularity may add at most (blocks rounded up to
                         // alloc_granule)
} MemPlan;

void vlm_plan(MemPlan *p, const Kernels *k, const VlmSpec *spec);
// vlm_init, then the ops' scratch for the model's shapes reserved (workspace_reserve): what the
// backend then holds beyond what it held before is exactly the plan's total
void vlm_init_reserved(Vlm *m, const Kernels *k, const VlmSpec *spec);
// The largest micro-batch max_B whose plan (total + margin) fits in budget bytes, with
// max_images scaled along (spec's images per row, max_images / max_B); 0 when not even 1 fits.
// Searches up to max_B_cap.
int vlm_plan_largest_batch(const Kernels *k, const VlmSpec *spec, size_t budget, int max_B_cap);
// prints the plan as ./train shows it, one line per part
void memplan_print(const MemPlan *p, const VlmSpec *spec, const char *backend, size_t budget, const char *budget_what);
