// grad_buckets.c: gradient buckets reduced while the backward runs (see grad_buckets.h).
#include "trainer/grad_buckets.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static void add_bucket(GradBuckets *g, size_t begin, size_t end, int groups) {
    g->b = xrealloc(g->b, (size_t)(g->n + 1) * sizeof *g->b);
    g->group_size = xrealloc(g->group_size, (size_t)(g->n + 1) * sizeof(int));
    g->b[g->n] = (GradBucket){begin, end, groups};
    g->group_size[g->n++] = groups;
}

static int cmp_range(const void *x, const void *y) {
    const size_t *a = x, *b = y;
    return (a[0] > b[0]) - (a[0] < b[0]);
}

void grad_buckets_init(GradBuckets *g, Dist *d, const ParamSet *P, const int *first, const int *count, int n_groups,
                       double bucket_mb, size_t slice) {
    memset(g, 0, sizeof *g);
    g->d = d;
    g->grad = P->grad;
    g->k = P->k;
    g->slice = slice;
    g->n_groups = n_groups;
    g->bucket_of = xmalloc((size_t)(P->n ? P->n : 1) * sizeof(int));
    for (int i = 0; i < P->n; i++) g->bucket_of[i] = -1;
    // ZeRO-1 sums the padded span (its slices), ZeRO-0 the tensors
    size_t all = slice ? P->span : P->numel;
    size_t cap = (size_t)(bucket_mb * 1048576.0 / sizeof(float));
    // a group's extent runs to where the next tensor starts, so that adjacent groups tile the span
    size_t *done = xmalloc(2 * (size_t)(n_groups + 1) * sizeof(size_t));
    int n_done = 0;
    if (bucket_mb > 0) {
        for (int k = 0; k < n_groups; k++) {
            int f = first[k], e = first[k] + count[k];
            CHECK(count[k] > 0 && f >= 0 && e <= P->n, "gradient group %d: tensors %d + %d of %d", k, f, count[k], P->n);
            size_t a = P->p[f].offset, b = e < P->n ? P->p[e].offset : all;
            GradBucket *last = g->n ? &g->b[g->n - 1] : NULL;
            int join = last && last->end - last->begin < cap && (b == last->begin || a == last->end);
            if (join) {
                if (b == last->begin) last->begin = a;
                else last->end = b;
                last->pending++;
                g->group_size[g->n - 1]++;
            } else {
                add_bucket(g, a, b, 1);
            }
            g->bucket_of[f] = g->n - 1;
        }
        for (int i = 0; i < g->n; i++) {
            done[2 * n_done] = g->b[i].begin;
            done[2 * n_done++ + 1] = g->b[i].end;
        }
    }
    // what no group covers (everything when bucket_mb is 0) is summed at the end
    qsort(done, (size_t)n_done, 2 * sizeof(size_t), cmp_range);
    size_t at = 0;
    for (int i = 0; i <= n_done; i++) {
        size_t next = i < n_done ? done[2 * i] : all;
        if (next > at) add_bucket(g, at, next, -1);
        if (i < n_done && done[2 * i + 1] > at) at = done[2 * i + 1];
    }
    free(done);
}

void grad_buckets_free(GradBuckets *g) {
    free(g->b);
    free(g->bucket_of);
    free(g->group_size);
    memset(g, 0, sizeof *g);
}

void grad_buckets_begin(GradBuckets *g) {
    g->next = 0;
    for (int i = 0; i < g->n; i++) g->b[i].pending = g->group_size[i];
}

static void start_ready(GradBuckets *g) {
    while (g->next < g->n && g->b[g->next].pending == 0) {
        const GradBucket *b = &g->b[g->next++];
        g->k->grad_settle(g->grad + b->begin, b->end - b->begin);  // a tensor of it the batch did not reach
        dist_reduce_start(g->d, g->grad, b->begin, b->end, g->slice);
    }
}

static void on_ready(void *ctx, int first, int n) {
    GradBuckets *g = ctx;
    int k = g->bucket_of[first];
    CHECK(k >= 0 && g->b[k].pending > 0, "gradients of tensors %d + %d reported final out of turn", first, n);
    g->b[k].pending--;
    start_ready(g);
}

GradsReady grad_buckets_hook(GradBuckets *g) {
    return g->n_groups && g->b[0].pending >= 0 ? (GradsReady){on_ready, g} : (GradsReady){0};
}

void grad_buckets_finish(GradBuckets *g) {
    for (int i = g->next; i < g->n; i++) g->b[i].pending = 0;
    start_ready(g);
    dist_reduce_wait(g->d);
}
