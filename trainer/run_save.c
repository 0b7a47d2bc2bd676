// run_save.c: a checkpoint of the run (see run.h). It holds the whole, unsharded state, so any
// world size can resume it: with ZeRO-1 the moments' slices are first all-gathered (through
// the gradient buffer, free between steps) into host copies on rank 0. Only rank 0 writes;
// the others learn whether it succeeded, so a failed write stops every rank with one message.
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "trainer/run.h"

// the whole of a sharded buffer (this rank's slice of it: moments, sharded masters) on rank
// 0's host, numel floats
static float *gather_slice(Run *r, const float *slice) {
    ParamSet *P = &r->m.train;
    const Kernels *k = P->k;
    size_t len = P->span / r->world;
    k->copy(P->grad + len * r->rank, slice, len * sizeof(float));
    dist_allgather_f32(r->dist, P->grad, len);
    if (r->rank) return NULL;
    float *host = xmalloc((P->numel ? P->numel : 1) * sizeof(float));
    k->download(host, P->grad, P->numel * sizeof(float));
    return host;
}

void run_save(Run *r) {
    const TrainConfig *c = r->c;
    ParamSet *P = &r->m.train;
    float *wh = NULL, *mh = NULL, *vh = NULL;
    if (r->zero) {
        mh = gather_slice(r, P->m);
        vh = gather_slice(r, P->v);
    }
    if (params_masters_sharded(P)) wh = gather_slice(r, P->master);
    int rc = 0;
    char err[2300] = "";
    if (r->rank == 0) {
        FILE *metrics = r->metrics;
        if (fflush(metrics) != 0 || ferror(metrics) || fsync(fileno(metrics)) != 0)
            fatal("%s/metrics.jsonl: write failed: %s; the previous checkpoint is intact", c->out_dir, strerror(errno));
        r->st.metrics_bytes = ftell(metrics);
        rc = checkpoint_save(c->out_dir, &r->st, P, wh, mh, vh, r->signature, c->keep_last, err, sizeof err);
    }
    free(wh);
    free(mh);
    free(vh);
    dist_broadcast_host(r->dist, &rc, sizeof rc, 0);
    if (rc == 0) return;
    if (r->rank != 0) exit(1);  // rank 0 says why
    char prev[CFG_PATH + 32];
    int have = checkpoint_latest(c->out_dir, prev, sizeof prev);
    fatal("checkpoint of step %" PRId64 " failed: %s; %s", r->st.step, err,
          have ? "the previous checkpoint is intact" : "no earlier checkpoint exists");
}
