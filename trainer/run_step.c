// run_step.c: one optimizer step across the ranks (see run.h).
//
// Each rank runs `accum` micro-batches of its slice of the step's global batch, summing losses
// and gradients. The gradients are summed over the ranks in buckets started during the last
// micro-batch's backward (grad_buckets.h; ZeRO-0: every rank gets the sums; ZeRO-1: each rank
// those of its 1/world slice). Then, once per step: the loss sum, the labelled-token count and
// the stop flags are summed over ranks, and the gradients scaled by 1 / (labelled tokens of the
// whole step), so the update is the gradient of the mean over the global batch however it was
// split. The gradient norm is the global one, summed from the same world slices in both ZeRO
// modes, so ZeRO-1 clips and updates exactly as ZeRO-0 does; ZeRO-1 then updates its slice of
// the masters with its slice of the moments and all-gathers the updated weights.
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "trainer/optimizer.h"
#include "trainer/run.h"
#include "trainer/schedule.h"

static VlmBatch to_vlm_batch(const LoaderBatch *b) {
    return (VlmBatch){.B = b->B, .T = b->T, .ids = b->ids, .targets = b->targets, .pos = b->pos, .seg = b->seg,
                      .n_img = b->n_img, .pixels = b->pixels, .pixels_bf16 = b->pixels_bf16, .img_row = b->img_row,
                      .img_start = b->img_start};
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

// the world slices of the span: slice s is [s * len, min((s + 1) * len, numel))
static size_t slice_len(const ParamSet *P, int world) { return (P->numel + world - 1) / world; }

// squared norm of slice s of the gradients (0 for an empty slice)
static double slice_sq(const ParamSet *P, int world, int s) {
    size_t len = slice_len(P, world), a = len * s, b = a + len < P->numel ? a + len : P->numel;
    return a < b ? P->k->sum_squares(P->grad + a, b - a) : 0.0;
}

// Scales the gradients summed over the ranks (this rank's part of P->grad: all of it for
// ZeRO-0, its slice for ZeRO-1) and leaves the squared global gradient norm in *sq (backend
// memory; NaN when not finite).
static void scale_gradients(Run *r, ParamSet *P, double scale, double *sq) {
    const Kernels *k = P->k;
    int W = r->world;
    if (r->zero) {
        size_t len = P->span / W;  // the span is padded to W equal slices
        k->scale_f32(P->grad + len * r->rank, (float)scale, len);
        double *part = xcalloc((size_t)W, sizeof(double)), host = 0;
        part[r->rank] = slice_sq(P, W, r->rank);
        dist_sum_f64(r->dist, part, W);  // the others are 0 here: each entry is one rank's slice
        for (int s = 0; s < W; s++) host += part[s];
        free(part);
        k->upload(sq, &host, sizeof host);
    } else {
        k->scale_f32(P->grad, (float)scale, P->numel);
        size_t len = slice_len(P, W);
        for (int s = 0; s < W; s++) {  // the order ZeRO-1 sums in, on the backend
            size_t a = len * s < P->numel ? len * s : P->numel, b = a + len < P->numel ? a + len : P->numel;
            k->sum_f64(sq, P->grad + a, b - a, 1, s > 0);
        }
    }
}

// clipping and AdamW on this rank's part (one launch; the backend skips it when the norm from
// *sq, or *loss when not NULL, is not finite), then the full masters everywhere
static void update(Run *r, ParamSet *P, const double *sq, const double *loss, int t) {
    const TrainConfig *c = r->c;
    int64_t step = r->st.step;
    if (r->zero) {
        size_t len = P->span / r->world, a = len * r->rank;
        size_t b = a + len < P->numel ? a + len : P->numel;
        if (a < b) optimizer_update_span(P, c, step, r->total, r->warmup, t, a, b, sq, loss);
        run_share_weights(r);
    } else {
        optimizer_update_span(P, c, step, r->total, r->warmup, t, 0, P->numel, sq, loss);
        params_sync(P);
    }
}

void run_share_weights(Run *r) {
    ParamSet *P = &r->m.train;
    size_t len = P->span / r->world;
    if (params_masters_sharded(P)) {  // the slice into the compute copy, then every slice of it
        params_sync(P);
        dist_allgather_bytes(r->dist, P->data, len * P->k->act_bytes);
    } else {
        dist_allgather_f32(r->dist, P->master, len);
        params_sync(P);
    }
}

// the step's sample indices of every rank, sorted, on rank 0 (log_samples)
static void gather_samples(Run *r, const int64_t *mine, int n_mine, StepResult *out) {
    int per = r->c->batch_size * r->accum, W = r->world;
    int64_t *pad = xmalloc((size_t)per * sizeof(int64_t)), *all = xmalloc((size_t)per * W * sizeof(int64_t));
    for (int i = 0; i < per; i++) pad[i] = i < n_mine ? mine[i] : -1;
    dist_allgather_host(r->dist, pad, all, (size_t)per * sizeof(int64_t));
    int n = 0;
    for (int i = 0; i < per * W; i++)
        if (all[i] >= 0) all[n++] = all[i];
    qsort(all, (size_t)n, sizeof *all, cmp_i64);
    free(out->samples);
    out->samples = all;
    out->n_samples = n;
    free(pad);
}

void run_step(Run *r, StepResult *out) {
    const TrainConfig *c = r->c;
    Vlm *m = &r->m;
    ParamSet *P = &m->train;
    const Kernels *k = m->k;
    int64_t step = r->st.step;
    // no memset: the first op writing each gradient this step overwrites it (grad_settle below
    // zeroes what none wrote)
    k->grad_begin(P->grad, P->span);
    grad_buckets_begin(&r->buckets);
    double loss_sum = 0;
    int64_t n_lab = 0, n_tok = 0, epoch = 0;
    int per = c->batch_size * r->accum, n_mine = 0;
    int64_t *mine = c->log_samples ? xmalloc((size_t)per * sizeof(int64_t)) : NULL;
    LoaderBatch lb;
    for (int a = 0; a < r->accum; a++) {
        epoch = loader_next(r->train, &lb);
        if (mine)
            for (int i = 0; i < lb.n_planned && n_mine < per; i++) mine[n_mine++] = lb.planned[i];
        // LoRA dropout's masks follow the micro-batch's place in the global batch, not the rank
        int64_t g = (int64_t)r->rank * r->accum + a;
        vlm_set_training(m, 1, c->seed * 0x9e3779b97f4a7c15ULL + (uint64_t)step * 4096 + (uint64_t)g);
        VlmBatch vb = to_vlm_batch(&lb);
        int lab;
        // on the last micro-batch each group's gradients are final as the backward leaves it:
        // their sum over the ranks starts while the backward goes on below
        if (a == r->accum - 1) m->grads_ready = grad_buckets_hook(&r->buckets);
        vlm_forward_backward_acc(m, &vb, 1.0f, m->stats + VLM_STAT_LOSS, a > 0, &lab);
        m->grads_ready = (GradsReady){0};
        n_lab += lab;
        n_tok += (int64_t)lb.B * lb.T;
    }
    k->grad_settle(P->grad, P->span);  // tensors no micro-batch reached, the span's padding
    grad_buckets_finish(&r->buckets);  // every bucket started, in the same order on every rank, and summed
    // one exchange of the step's scalars; the stop flags ride along, so every rank sees the same
    // decision at the same step boundary. With one rank the loss sum stays on the backend until
    // the step ends: the step's one wait for the device is the download of the stats at its end.
    double *stats = m->stats;
    if (r->world > 1) k->download(&loss_sum, stats + VLM_STAT_LOSS, sizeof loss_sum);
    double s[4] = {loss_sum, (double)n_lab, (double)n_tok, run_stop_signal ? 1.0 : 0.0};
    dist_sum_f64(r->dist, s, 4);
    loss_sum = s[0];
    n_lab = (int64_t)s[1];
    out->n_tok = (int64_t)s[2];
    out->stop = s[3] > 0;
    if (mine) gather_samples(r, mine, n_mine, out);
    free(mine);
    if (r->c->freeze_connector && r->m.conn_n > 0) {  // a frozen connector: no gradient, in the norm either
        const Param *first = &P->p[r->m.conn_first], *last = &P->p[r->m.conn_first + r->m.conn_n - 1];
        P->k->zero(P->grad + first->offset, (last->offset + last->numel - first->offset) * sizeof(float));
    }
    // every micro-batch contributed its summed loss: dividing by the step's labelled count
    // makes the update the gradient of the mean, however the batch was split
    scale_gradients(r, P, n_lab ? 1.0 / n_lab : 1.0, stats + VLM_STAT_SUMSQ);
    out->factor = schedule_factor((int)step, (int)r->total, r->warmup, c->min_lr / c->lr);
    int t = (int)(step - r->st.skipped_steps + 1);  // AdamW's own step count skips dropped updates
    // the loss is checked on the backend with one rank, on the host (exchanged) with several
    if (n_lab && (r->world == 1 || isfinite(loss_sum)))
        update(r, P, stats + VLM_STAT_SUMSQ, r->world == 1 ? stats + VLM_STAT_LOSS : NULL, t);
    double st[VLM_N_STATS];
    k->download(st, stats, sizeof st);
    if (r->world == 1) loss_sum = st[VLM_STAT_LOSS];
    double loss = n_lab ? loss_sum / n_lab : NAN, norm = sqrt(st[VLM_STAT_SUMSQ]);
    if (!isfinite(loss) || !isfinite(norm)) {  // the update did not happen (the backend's own check)
        if (!strcmp(c->nan_policy, "stop"))
            fatal("step %" PRId64 ": %s (loss %g, gradient norm %g); stopping. The last checkpoint is intact; "
                  "lower lr, or set nan_policy = skip to skip such steps",
                  step + 1, n_lab ? "non-finite loss or gradient" : "no labelled token in the batch", loss, norm);
        r->st.skipped_steps++;
        if (r->rank == 0)
            warn("step %" PRId64 ": non-finite loss or gradient (loss %g, norm %g): update skipped (%" PRId64 " so far)",
                 step + 1, loss, norm, r->st.skipped_steps);
    } else {
        r->st.tokens += n_lab;
    }
    r->st.step = step + 1;
    LoaderPos p = loader_tell(r->train);  // this rank's place; the global one is world times it
    r->st.data = (LoaderPos){p.epoch, p.index * r->world};
    out->loss = loss;
    out->norm = norm;
    out->n_lab = n_lab;
    out->epoch = epoch;
}
