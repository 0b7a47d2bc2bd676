// optimizer.h: one optimizer update of the trainable set, as the HF Trainer does it:
// torch.nn.utils.clip_grad_norm_ on the global norm, then torch.optim.AdamW per tensor with its
// group's learning rate (Param.group: connector or LoRA) times the cosine-with-warmup factor, weight decay on
// everything but biases.
#pragma once
#include <stdint.h>

#include "model/params.h"
#include "trainer/train_config.h"

// learning rate of tensor p at optimizer step `step` (0-based)
double optimizer_lr(const TrainConfig *c, const Param *p, int64_t step, int64_t total, int warmup);
// Clips the gradients in P->grad (norm before clipping returned in *norm) and applies AdamW
// step t (1-based), then refreshes the compute copies. Returns 0, or -1 without touching the
// weights when the gradient norm is not finite.
int optimizer_step(ParamSet *P, const TrainConfig *c, int64_t step, int64_t total, int warmup, int t, double *norm);
// The two halves of optimizer_step for a slice of the trainable span (ZeRO-1 updates one slice
// per rank): the clip coefficient for a global norm, and AdamW on elements [begin, end) of the
// span whose moments live at P->m/v[i - P->opt_begin] and masters at P->master[i - P->master_begin]
// (the caller then refreshes the copies).
double optimizer_clip_coef(const TrainConfig *c, double norm);
void optimizer_update_range(ParamSet *P, const TrainConfig *c, int64_t step, int64_t total, int warmup, int t,
                            size_t begin, size_t end);
// AdamW on elements [begin, end) of the span as optimizer_update_range, in one adamw_span call
// (the tensors' learning rates as a table of runs), clipping by the norm sqrt(*sumsq) that the
// backend holds: nothing waits for the device. When that norm, or *loss (NULL: not checked), is
// not finite the backend updates nothing (the trainer then counts the step as skipped).
void optimizer_update_span(ParamSet *P, const TrainConfig *c, int64_t step, int64_t total, int warmup, int t,
                           size_t begin, size_t end, const double *sumsq, const double *loss);
