// dist_mpi.c: the MPI transport (Open MPI; the CPU backend's, see dist.h). Buffers are host
// memory. Sums do not use MPI's reductions, whose order depends on the algorithm Open MPI picks
// for a message size: a reduce-scatter is an all-to-all of slices followed by a sum in rank
// order (0 + 1 + 2 ...), and an all-reduce is that reduce-scatter and an all-gather (the same
// bytes on the wire as a ring all-reduce). So results are bit-identical run to run at a fixed
// world size, and ZeRO-1's reduce-scatter sums exactly as ZeRO-0's all-reduce.
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "trainer/dist.h"

typedef struct {
    float *scratch;  // world slices received by the reduce-scatter
    size_t cap;
    int *cnt, *dis;  // (world) element counts and offsets of the ranks' slices
} Mpi;

static void check(Dist *d, int rc, const char *op) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(rc, msg, &n);
    fprintf(stderr, "svlm: error: dist: rank %d: MPI %s failed (%s): a rank was lost or the network failed; stopping\n",
            d->rank, op, msg);
    _exit(1);
}

// slices [dis[r], dis[r] + cnt[r]) of n elements; equal when `equal` (then n = world x equal)
static void slices(Dist *d, Mpi *m, size_t n, size_t equal) {
    for (int r = 0; r < d->world; r++) {
        size_t a = equal ? equal * r : n * r / d->world, b = equal ? equal * (r + 1) : n * (r + 1) / d->world;
        if (b - a > INT_MAX || a > INT_MAX) fatal("dist: %zu floats is too many for one MPI message", n);
        m->dis[r] = (int)a;
        m->cnt[r] = (int)(b - a);
    }
}

// afterwards buf[dis[rank] ...] holds the rank-order sum of every rank's slice
static void reduce_scatter(Dist *d, float *buf) {
    Mpi *m = d->impl;
    int W = d->world, me = d->rank, c = m->cnt[me];
    size_t need = (size_t)W * c;
    if (need > m->cap) {
        free(m->scratch);
        m->scratch = xmalloc((need ? need : 1) * sizeof(float));
        m->cap = need;
    }
    int *rc = xmalloc(2 * (size_t)W * sizeof(int)), *rd = rc + W;
    for (int r = 0; r < W; r++) rc[r] = c, rd[r] = r * c;
    check(d, MPI_Alltoallv(buf, m->cnt, m->dis, MPI_FLOAT, m->scratch, rc, rd, MPI_FLOAT, MPI_COMM_WORLD), "all-to-all");
    free(rc);
    float *out = buf + m->dis[me];
    for (int i = 0; i < c; i++) {
        float s = m->scratch[i];
        for (int r = 1; r < W; r++) s += m->scratch[(size_t)r * c + i];
        out[i] = s;
    }
}

static void mpi_allreduce_sum_f32(Dist *d, float *buf, size_t n) {
    Mpi *m = d->impl;
    slices(d, m, n, 0);
    reduce_scatter(d, buf);
    check(d, MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, m->cnt, m->dis, MPI_FLOAT, MPI_COMM_WORLD), "all-gather");
}

static void mpi_reduce_scatter_sum_f32(Dist *d, float *buf, size_t count) {
    slices(d, d->impl, count * d->world, count);
    reduce_scatter(d, buf);
}

// a bucket of the gradients; synchronous (the CPU backend computes on the same cores), each
// element summed in rank order as in the calls above
static void mpi_reduce_start(Dist *d, float *buf, size_t begin, size_t end, size_t slice) {
    if (!slice) return mpi_allreduce_sum_f32(d, buf + begin, end - begin);
    Mpi *m = d->impl;
    for (int r = 0; r < d->world; r++) {  // rank r receives [begin, end) within its slice
        size_t a = slice * r, b = slice * (r + 1);
        if (a < begin) a = begin;
        if (b > end) b = end;
        if (a >= b) a = b = begin;
        if (end - begin > INT_MAX) fatal("dist: %zu floats is too many for one MPI message", end - begin);
        m->dis[r] = (int)(a - begin);
        m->cnt[r] = (int)(b - a);
    }
    reduce_scatter(d, buf + begin);
}

static void mpi_reduce_wait(Dist *d) {}

static void mpi_allgather_bytes(Dist *d, void *buf, size_t bytes) {
    if (bytes > INT_MAX) fatal("dist: %zu bytes is too many for one MPI all-gather", bytes);
    check(d, MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)bytes, MPI_BYTE, MPI_COMM_WORLD), "all-gather");
}

static void mpi_allgather_f32(Dist *d, float *buf, size_t count) {
    if (count > INT_MAX) fatal("dist: %zu floats is too many for one MPI message", count);
    check(d, MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)count, MPI_FLOAT, MPI_COMM_WORLD), "all-gather");
}

static void mpi_broadcast_host(Dist *d, void *buf, size_t bytes, int root) {
    for (size_t o = 0; o < bytes;) {  // MPI counts are int
        int n = bytes - o > (1u << 30) ? 1 << 30 : (int)(bytes - o);
        check(d, MPI_Bcast((char *)buf + o, n, MPI_BYTE, root, MPI_COMM_WORLD), "broadcast");
        o += (size_t)n;
    }
}

static void mpi_allgather_host(Dist *d, const void *mine, void *all, size_t bytes) {
    if (bytes > INT_MAX) fatal("dist: %zu bytes is too many for one MPI all-gather", bytes);
    check(d, MPI_Allgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, MPI_COMM_WORLD), "all-gather");
}

static void mpi_barrier(Dist *d) { check(d, MPI_Barrier(MPI_COMM_WORLD), "barrier"); }

static void mpi_close(Dist *d) {
    Mpi *m = d->impl;
    MPI_Finalize();
    free(m->scratch);
    free(m->cnt);
    free(m);
    free(d);
}

static const DistOps mpi_ops = {
    .name = "mpi",
    .allreduce_sum_f32 = mpi_allreduce_sum_f32,
    .reduce_scatter_sum_f32 = mpi_reduce_scatter_sum_f32,
    .allgather_f32 = mpi_allgather_f32,
    .broadcast = mpi_broadcast_host,  // the CPU backend's memory is host memory
    .reduce_start = mpi_reduce_start,
    .reduce_wait = mpi_reduce_wait,
    .allgather_bytes = mpi_allgather_bytes,
    .allgather_host = mpi_allgather_host,
    .broadcast_host = mpi_broadcast_host,
    .barrier = mpi_barrier,
    .close = mpi_close,
};

int dist_mpi_available(void) { return 1; }

Dist *dist_mpi_open(const DistLaunch *l) {
    int provided;
    // the loader's and the watchdog's threads never call MPI
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) fatal("dist: MPI_Init failed");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (rank != l->rank || world != l->world)
        fatal("dist: MPI says rank %d of %d, the environment (%s) said rank %d of %d", rank, world, l->launcher, l->rank, l->world);
    Dist *d = xcalloc(1, sizeof *d);
    Mpi *m = xcalloc(1, sizeof *m);
    m->cnt = xmalloc(2 * (size_t)world * sizeof(int));
    m->dis = m->cnt + world;
    d->impl = m;
    d->ops = &mpi_ops;
    d->rank = rank;
    d->world = world;
    d->local_rank = l->local_rank;
    return d;
}
