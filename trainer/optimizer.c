// optimizer.c: gradient clipping and AdamW over the trainable set (see optimizer.h).
#include "trainer/optimizer.h"

#include <math.h>

#include "trainer/schedule.h"

double optimizer_lr(const TrainConfig *c, const Param *p, int64_t step, int64_t total, int warmup) {
    // the group, tagged where the connector declares its tensors, decides; the name does not
    double peak = p->group == PARAM_GROUP_CONNECTOR && c->connector_lr > 0 ? c->connector_lr : c->lr;
    if (p->group == PARAM_GROUP_CONNECTOR && c->freeze_connector) peak = 0;  // kept as loaded (stage 2)
    return peak * schedule_factor((int)step, (int)total, warmup, c->min_lr / c->lr);
}

double optimizer_clip_coef(const TrainConfig *c, double norm) {
    if (c->grad_clip <= 0) return 1.0;
    double coef = c->grad_clip / (norm + 1e-6);  // clip_grad_norm_'s coefficient, clamped to 1
    return coef < 1.0 ? coef : 1.0;
}

void optimizer_update_range(ParamSet *P, const TrainConfig *c, int64_t step, int64_t total, int warmup, int t,
                            size_t begin, size_t end) {
    const Kernels *k = P->k;
    for (int i = 0; i < P->n; i++) {
        const Param *p = &P->p[i];
        // AdamW is elementwise: a tensor cut by the slice's edges updates exactly as a whole one
        size_t a = p->offset > begin ? p->offset : begin, b = p->offset + p->numel < end ? p->offset + p->numel : end;
        if (a >= b) continue;
        k->adamw_update(P->master + (a - P->master_begin), P->grad + a, P->m + (a - P->opt_begin), P->v + (a - P->opt_begin), b - a,
                        optimizer_lr(c, p, step, total, warmup), c->adam_beta1, c->adam_beta2, c->adam_eps,
                        p->decay ? c->weight_decay : 0.0, t);
    }
}

int optimizer_step(ParamSet *P, const TrainConfig *c, int64_t step, int64_t total, int warmup, int t, double *norm) {
    const Kernels *k = P->k;
    *norm = sqrt(k->sum_squares(P->grad, P->numel));
    if (!isfinite(*norm)) return -1;
    double coef = optimizer_clip_coef(c, *norm);
    if (coef < 1.0) k->scale_f32(P->grad, (float)coef, P->numel);
    optimizer_update_range(P, c, step, total, warmup, t, 0, P->numel);
    params_sync(P);
    return 0;
}

// The runs of [begin, end): consecutive tensors with the same lr and decay share one, and the
// padding between tensors joins the run before it (its gradients and moments are zero, so AdamW
// keeps it zero). More runs than ADAMW_MAX_RUNS: one adamw_span call per ADAMW_MAX_RUNS.
void optimizer_update_span(ParamSet *P, const TrainConfig *c, int64_t step, int64_t total, int warmup, int t,
                           size_t begin, size_t end, const double *sumsq, const double *loss) {
    const Kernels *k = P->k;
    AdamwSpan a = {.beta1 = c->adam_beta1, .beta2 = c->adam_beta2, .eps = c->adam_eps, .t = t,
                   .max_norm = c->grad_clip};
    size_t at = begin;  // where the table being filled starts in the span
    for (int i = 0; i < P->n && begin < end; i++) {
        const Param *p = &P->p[i];
        // the tensor and the padding up to the next one (the last: up to end)
        size_t b = i + 1 < P->n && P->p[i + 1].offset < end ? P->p[i + 1].offset : end;
        if (b <= begin) continue;
        double lr = optimizer_lr(c, p, step, total, warmup), wd = p->decay ? c->weight_decay : 0.0;
        AdamwRun *last = a.n_runs ? &a.run[a.n_runs - 1] : NULL;
        if (last && last->lr == lr && last->weight_decay == wd) {
            last->end = b - at;
        } else {
            if (a.n_runs == ADAMW_MAX_RUNS) {  // the table is full: update its part, start the next
                size_t o = at - P->opt_begin;
                k->adamw_span(P->master + (at - P->master_begin), P->grad + at, P->m + o, P->v + o, &a, sumsq, loss);
                at += a.run[a.n_runs - 1].end;
                a.n_runs = 0;
            }
            a.run[a.n_runs++] = (AdamwRun){.end = b - at, .lr = lr, .weight_decay = wd};
        }
        begin = b;
    }
    if (a.n_runs) {
        size_t o = at - P->opt_begin;
        k->adamw_span(P->master + (at - P->master_begin), P->grad + at, P->m + o, P->v + o, &a, sumsq, loss);
    }
}
