// grad_buckets.h: the step's sum of the trainable gradients over the ranks, in buckets started
// while the backward still runs. The model names the groups of tensors its backward finishes
// one after another (vlm_grad_groups: each LLM layer's LoRA from the top down, then the
// connector) and calls a GradsReady hook as each is final; consecutive groups that lie next to
// each other in the span form buckets of about grad_bucket_mb, and a bucket's reduction starts
// (dist_reduce_start) once all its groups are final. Buckets start in one fixed order on every
// rank, whatever each rank's batch did (a rank whose last micro-batch ran no backward starts
// them all at the end), so the ranks' collectives always match. Each element is summed exactly
// as one reduction of the whole span sums it, so bucketing changes no bit on the MPI transport.
#pragma once
#include <stddef.h>

#include "model/params.h"
#include "trainer/dist.h"

typedef struct {
    size_t begin, end;  // elements of the gradient span
    int pending;        // groups of it not final yet this step; -1: starts only at the end
} GradBucket;

typedef struct {
    Dist *d;
    float *grad;
    const Kernels *k;  // the span's backend: a bucket's unwritten gradients are zeroed before its sum
    size_t slice;      // ZeRO-1: elements per rank's slice; 0: every rank gets every sum
    GradBucket *b;
    int n, next;       // the buckets, and the next one to start (they start in order)
    int n_groups;
    int *bucket_of;    // (tensors of the set) the bucket of the group that starts at that tensor, else -1
    int *group_size;   // (n buckets) groups in each
} GradBuckets;

// Buckets for the set P (its grad span) from the groups (first[g], count[g]) in the order the
// backward finishes them. bucket_mb 0: no overlap, one reduction of the whole span at the end.
// slice as for dist_reduce_start. Tensors in no group are summed at the end too.
void grad_buckets_init(GradBuckets *g, Dist *d, const ParamSet *P, const int *first, const int *count, int n_groups,
                       double bucket_mb, size_t slice);
void grad_buckets_free(GradBuckets *g);
// a new step: no group final yet
void grad_buckets_begin(GradBuckets *g);
// the hook for the model's last micro-batch of the step ({NULL} when bucket_mb is 0)
GradsReady grad_buckets_hook(GradBuckets *g);
// starts the buckets not started yet, in order, and waits until every sum is there
void grad_buckets_finish(GradBuckets *g);
