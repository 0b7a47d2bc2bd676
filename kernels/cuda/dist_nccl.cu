// dist_nccl.cu: the NCCL transport of trainer/dist.h (CUDA builds), and the choice of GPU.
// It lives with the CUDA backend because it needs its stream (cuda_stream()) and nvcc's build,
// but only the trainer calls it (trainer/dist.c), never the model.
//
// Every collective is enqueued on the backend's stream, so it follows the backward that made
// its input and precedes the optimizer that reads its output. The call then waits for the
// stream while polling NCCL's asynchronous error state and the clock: a lost peer (a failed
// communicator) or dist_timeout without progress aborts the communicator and stops this rank
// with one line, instead of a hang. The gradient buckets (reduce_start) are the exception: they
// go on a second stream, which first waits (an event) for what the backend's stream holds when
// the bucket is started, so NCCL sums a bucket while the backward of the layers below it runs;
// reduce_wait makes the backend's stream wait for that stream (before the optimizer) and then
// waits as above. Sums are NCCL's (ring or tree order, deterministic for a
// fixed topology and world size, not the MPI transport's rank order).
// Host-memory calls go through MPI when the launcher was mpirun (`host`), else through NCCL
// with a small device staging buffer.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "kernels/cuda/common.cuh"
#include "trainer/dist.h"

#ifdef SVLM_CUDA_EMU
// The CPU emulator of the CUDA kernels (tests/gpu/emu) has no NCCL, but its device memory is host
// memory and its streams are synchronous: there the MPI transport serves the CUDA code path, so
// ./train on the emulated kernels runs data-parallel under mpirun (the bf16 compute copy and
// ZeRO-1's sharded masters included; tests/test_dist.c).

extern "C" int dist_nccl_available(void) { return 1; }
extern "C" size_t dist_nccl_id_bytes(void) { return 128; }
extern "C" int dist_nccl_make_id(void *id) {
    memset(id, 0, 128);
    return 0;
}
extern "C" Dist *dist_nccl_open(const DistLaunch *l, const void *id, Dist *host) {
    if (!host) fatal("dist: the CUDA emulator's ranks talk through MPI: launch them with mpirun");
    return host;
}
extern "C" void dist_cuda_select_device(int local_rank, char *name, size_t cap) {
    snprintf(name, cap, "GPU %d (emulated)", local_rank);
}

#else

#include <nccl.h>

typedef struct {
    ncclComm_t comm;
    Dist *host;          // MPI's Dist for host-memory calls, or NULL
    char *stage;         // device staging for host-memory calls without MPI
    size_t stage_bytes;
    cudaStream_t side;   // the gradient buckets' stream
    cudaEvent_t ready, done;  // backend stream -> side stream, side stream -> backend stream
} Nccl;

static void nccl_fail(Dist *d, const char *op, const char *why) {
    Nccl *n = (Nccl *)d->impl;
    fprintf(stderr, "svlm: error: dist: rank %d: NCCL %s failed (%s): a rank was lost or the network failed; stopping\n",
            d->rank, op, why);
    fflush(stderr);
    ncclCommAbort(n->comm);
    _exit(1);
}

static void nccl_check(Dist *d, ncclResult_t r, const char *op) {
    if (r != ncclSuccess && r != ncclInProgress) nccl_fail(d, op, ncclGetErrorString(r));
}

// waits for the stream, watching NCCL's error state and dist_timeout
static void nccl_wait(Dist *d, const char *op) {
    Nccl *n = (Nccl *)d->impl;
    double t0 = time_now();
    for (;;) {
        cudaError_t e = cudaStreamQuery(cuda_stream());
        if (e == cudaSuccess) return;
        if (e != cudaErrorNotReady) nccl_fail(d, op, cudaGetErrorString(e));
        ncclResult_t async;
        ncclCommGetAsyncError(n->comm, &async);
        if (async != ncclSuccess && async != ncclInProgress) nccl_fail(d, op, ncclGetErrorString(async));
        if (time_now() - t0 > d->timeout_s) {
            char why[128];
            snprintf(why, sizeof why, "no answer from the other ranks within dist_timeout %.0f s", d->timeout_s);
            nccl_fail(d, op, why);
        }
        usleep(100);
    }
}

static void n_allreduce(Dist *d, float *buf, size_t count) {
    Nccl *n = (Nccl *)d->impl;
    nccl_check(d, ncclAllReduce(buf, buf, count, ncclFloat, ncclSum, n->comm, cuda_stream()), "all-reduce");
    nccl_wait(d, "all-reduce");
}

static void n_reduce_scatter(Dist *d, float *buf, size_t count) {
    Nccl *n = (Nccl *)d->impl;
    nccl_check(d, ncclReduceScatter(buf, buf + count * d->rank, count, ncclFloat, ncclSum, n->comm, cuda_stream()), "reduce-scatter");
    nccl_wait(d, "reduce-scatter");
}

static void n_allgather(Dist *d, float *buf, size_t count) {
    Nccl *n = (Nccl *)d->impl;
    nccl_check(d, ncclAllGather(buf + count * d->rank, buf, count, ncclFloat, n->comm, cuda_stream()), "all-gather");
    nccl_wait(d, "all-gather");
}

static void n_broadcast(Dist *d, void *buf, size_t bytes, int root) {
    Nccl *n = (Nccl *)d->impl;
    nccl_check(d, ncclBroadcast(buf, buf, bytes, ncclChar, root, n->comm, cuda_stream()), "broadcast");
    nccl_wait(d, "broadcast");
}

// a bucket: on the side stream, after the backward enqueued so far (which wrote its gradients)
static void n_reduce_start(Dist *d, float *buf, size_t begin, size_t end, size_t slice) {
    Nccl *n = (Nccl *)d->impl;
    cudaCheck(cudaEventRecord(n->ready, cuda_stream()));
    cudaCheck(cudaStreamWaitEvent(n->side, n->ready, 0));
    if (!slice) {
        nccl_check(d, ncclAllReduce(buf + begin, buf + begin, end - begin, ncclFloat, ncclSum, n->comm, n->side), "all-reduce");
        return;
    }
    // ZeRO-1: the range's part in each rank's slice is summed onto that rank (a reduce-scatter
    // whose pieces follow the slices, not the range)
    nccl_check(d, ncclGroupStart(), "group start");
    for (int r = 0; r < d->world; r++) {
        size_t a = slice * r > begin ? slice * r : begin, b = slice * (r + 1) < end ? slice * (r + 1) : end;
        if (a < b) nccl_check(d, ncclReduce(buf + a, buf + a, b - a, ncclFloat, ncclSum, r, n->comm, n->side), "reduce");
    }
    nccl_check(d, ncclGroupEnd(), "group end");
}

static void n_reduce_wait(Dist *d) {
    Nccl *n = (Nccl *)d->impl;
    cudaCheck(cudaEventRecord(n->done, n->side));
    cudaCheck(cudaStreamWaitEvent(cuda_stream(), n->done, 0));
    nccl_wait(d, "gradient reduction");
}

static void n_allgather_bytes(Dist *d, void *buf, size_t bytes) {
    Nccl *n = (Nccl *)d->impl;
    char *b = (char *)buf;
    nccl_check(d, ncclAllGather(b + bytes * d->rank, b, bytes, ncclChar, n->comm, cuda_stream()), "all-gather");
    nccl_wait(d, "all-gather");
}

static char *stage(Dist *d, size_t bytes) {
    Nccl *n = (Nccl *)d->impl;
    if (bytes > n->stage_bytes) {
        if (n->stage) cudaCheck(cudaFree(n->stage));
        cudaCheck(cudaMalloc((void **)&n->stage, bytes));
        n->stage_bytes = bytes;
    }
    return n->stage;
}

static void n_allgather_host(Dist *d, const void *mine, void *all, size_t bytes) {
    Nccl *n = (Nccl *)d->impl;
    if (n->host) return n->host->ops->allgather_host(n->host, mine, all, bytes);
    char *s = stage(d, bytes * d->world);
    cudaCheck(cudaMemcpy(s + bytes * d->rank, mine, bytes, cudaMemcpyHostToDevice));
    nccl_check(d, ncclAllGather(s + bytes * d->rank, s, bytes, ncclChar, n->comm, cuda_stream()), "all-gather");
    nccl_wait(d, "all-gather");
    cudaCheck(cudaMemcpy(all, s, bytes * d->world, cudaMemcpyDeviceToHost));
}

static void n_broadcast_host(Dist *d, void *buf, size_t bytes, int root) {
    Nccl *n = (Nccl *)d->impl;
    if (n->host) return n->host->ops->broadcast_host(n->host, buf, bytes, root);
    char *s = stage(d, bytes ? bytes : 1);
    cudaCheck(cudaMemcpy(s, buf, bytes, cudaMemcpyHostToDevice));
    n_broadcast(d, s, bytes, root);
    cudaCheck(cudaMemcpy(buf, s, bytes, cudaMemcpyDeviceToHost));
}

static void n_barrier(Dist *d) {
    Nccl *n = (Nccl *)d->impl;
    if (n->host) return n->host->ops->barrier(n->host);
    float *s = (float *)stage(d, sizeof(float));
    n_allreduce(d, s, 1);
}

static void n_close(Dist *d) {
    Nccl *n = (Nccl *)d->impl;
    ncclCommDestroy(n->comm);
    cudaEventDestroy(n->ready);
    cudaEventDestroy(n->done);
    cudaStreamDestroy(n->side);
    if (n->stage) cudaFree(n->stage);
    if (n->host) n->host->ops->close(n->host);
    free(n);
    free(d);
}

static const DistOps nccl_ops = {
    "nccl", n_allreduce, n_reduce_scatter, n_allgather, n_broadcast, n_reduce_start, n_reduce_wait, n_allgather_bytes,
    n_allgather_host, n_broadcast_host, n_barrier, n_close,
};

extern "C" int dist_nccl_available(void) { return 1; }
extern "C" size_t dist_nccl_id_bytes(void) { return sizeof(ncclUniqueId); }

extern "C" int dist_nccl_make_id(void *id) {
    ncclUniqueId u;
    if (ncclGetUniqueId(&u) != ncclSuccess) return -1;
    memcpy(id, &u, sizeof u);
    return 0;
}

extern "C" Dist *dist_nccl_open(const DistLaunch *l, const void *id, Dist *host) {
    if (!kernels_cuda()) fatal("dist: NCCL needs the CUDA backend, which found no device");
    Dist *d = (Dist *)xcalloc(1, sizeof *d);
    Nccl *n = (Nccl *)xcalloc(1, sizeof *n);
    d->impl = n;
    d->ops = &nccl_ops;
    d->rank = l->rank;
    d->world = l->world;
    d->local_rank = l->local_rank;
    n->host = host;
    cudaCheck(cudaStreamCreateWithFlags(&n->side, cudaStreamNonBlocking));
    cudaCheck(cudaEventCreateWithFlags(&n->ready, cudaEventDisableTiming));
    cudaCheck(cudaEventCreateWithFlags(&n->done, cudaEventDisableTiming));
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    ncclResult_t r = ncclCommInitRank(&n->comm, l->world, u, l->rank);
    if (r != ncclSuccess)
        fatal("dist: rank %d: NCCL could not join the %d ranks: %s (%s)", l->rank, l->world, ncclGetErrorString(r),
              ncclGetLastError(NULL));
    return d;
}

extern "C" void dist_cuda_select_device(int local_rank, char *name, size_t cap) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        cudaGetLastError();
        snprintf(name, cap, "no GPU visible");
        return;
    }
    if (local_rank >= count)
        fatal("local rank %d needs GPU %d, but this node shows %d (CUDA_VISIBLE_DEVICES=%s): launch one process per GPU",
              local_rank, local_rank, count, getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "unset");
    cudaCheck(cudaSetDevice(local_rank));  // before the backend's setup, which takes the current device
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, local_rank));
    snprintf(name, cap, "GPU %d (%s)", local_rank, prop.name);
}

#endif
