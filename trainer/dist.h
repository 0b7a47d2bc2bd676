// dist.h: data parallelism's one interface: the processes of a run (ranks), who they are, and
// the collectives the trainer needs. Used by the trainer only, never by the model.
//
// Transports: "solo" (one process, no launcher: every collective is a copy or nothing), "mpi"
// (Open MPI; the CPU backend's transport, what CI tests) and "nccl" (CUDA: NCCL on the backend's
// stream; its unique id travels through MPI when the launcher is mpirun, else through a file in
// dist_init_dir; in the CUDA emulator, whose device memory is host memory, MPI stands in). Float
// buffers live in the memory of the backend the trainer runs on (host memory on the CPU, device
// memory with NCCL); *_host calls take host memory. Gradient buckets (reduce_start) may run
// while the backward goes on (NCCL: on a second stream).
//
// Determinism: the MPI transport sums in rank order (0 + 1 + 2 ...) whatever the message sizes,
// so a run is bit-reproducible at a fixed world size, and ZeRO-1 (reduce-scatter + all-gather)
// sums exactly as ZeRO-0 (all-reduce) does.
//
// Faults: every collective runs under a watchdog thread. A rank whose peer process is gone (on
// the same node) or that waits longer than the timeout prints one line naming the lost rank(s)
// and exits 1, so a dead rank never leaves the others hanging.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

#ifdef __cplusplus
extern "C" {  // the NCCL transport is compiled by nvcc
#endif

// what the launcher's environment says about this process
typedef struct {
    int rank, world, local_rank;
    char launcher[48];  // "Open MPI", "Slurm", "torchrun-style (RANK/WORLD_SIZE)" or "none"
} DistLaunch;

typedef struct Dist Dist;

typedef struct {
    const char *name;
    // sum over ranks, in place; n floats
    void (*allreduce_sum_f32)(Dist *d, float *buf, size_t n);
    // buf holds world x count floats; afterwards buf[rank*count, (rank+1)*count) holds the sum over
    // ranks of that slice (the rest of buf is left undefined)
    void (*reduce_scatter_sum_f32)(Dist *d, float *buf, size_t count);
    // buf holds world x count floats, this rank's slice at rank*count; afterwards all slices
    void (*allgather_f32)(Dist *d, float *buf, size_t count);
    void (*broadcast)(Dist *d, void *buf, size_t bytes, int root);
    // Starts summing elements [begin, end) of buf over ranks. slice 0: every rank receives the
    // sums (an all-reduce of the range); else rank r receives those inside its slice
    // [r * slice, (r + 1) * slice) and the rest of the range is left undefined (ZeRO-1). It may
    // return before the sums are there (NCCL: enqueued on a stream of its own, behind what the
    // backend's stream holds so far, so the backward goes on meanwhile); reduce_wait returns
    // when every started sum is there for the backend's stream. Every rank starts the same
    // ranges in the same order.
    void (*reduce_start)(Dist *d, float *buf, size_t begin, size_t end, size_t slice);
    void (*reduce_wait)(Dist *d);
    // buf holds world x bytes, this rank's part at rank * bytes; afterwards every part (the
    // ZeRO-1 update's weights, in the compute copy's type)
    void (*allgather_bytes)(Dist *d, void *buf, size_t bytes);
    // host memory: all[r*bytes ...] receives rank r's `mine`
    void (*allgather_host)(Dist *d, const void *mine, void *all, size_t bytes);
    void (*broadcast_host)(Dist *d, void *buf, size_t bytes, int root);
    void (*barrier)(Dist *d);
    void (*close)(Dist *d);
} DistOps;

typedef struct {
    int pid;
    char node[64];
} DistPeer;

struct Dist {
    int rank, world, local_rank;
    DistLaunch launch;
    char node[64];
    const DistOps *ops;
    void *impl;
    double timeout_s;  // a collective waiting longer than this stops the run
    DistPeer *peers;   // (world) every rank's pid and node, for the watchdog
    void *watch;       // watchdog state (dist.c)
    int reducing;      // reductions started and not yet waited for: any other collective waits first
};

// Reads the launcher's environment: Open MPI (OMPI_COMM_WORLD_*), Slurm (SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID) or torchrun-style (RANK, WORLD_SIZE, LOCAL_RANK); world 1 and
// launcher "none" when there is none. A malformed value is a fatal() naming the variable.
DistLaunch dist_detect(void);

// Opens the run's communicator. device_cuda: the trainer runs on the CUDA backend (NCCL), else
// on the CPU (MPI). World 1 without a launcher needs neither. timeout_s: dist_timeout;
// init_dir: dist_init_dir (NCCL without MPI). fatal() naming what is missing otherwise.
Dist *dist_open(const DistLaunch *l, int device_cuda, double timeout_s, const char *init_dir);
void dist_close(Dist *d);

// the collectives, under the watchdog (see DistOps for their contracts)
void dist_allreduce_sum_f32(Dist *d, float *buf, size_t n);
void dist_reduce_scatter_sum_f32(Dist *d, float *buf, size_t count);
void dist_allgather_f32(Dist *d, float *buf, size_t count);
void dist_broadcast(Dist *d, void *buf, size_t bytes, int root);
void dist_reduce_start(Dist *d, float *buf, size_t begin, size_t end, size_t slice);
void dist_reduce_wait(Dist *d);
void dist_allgather_bytes(Dist *d, void *buf, size_t bytes);
void dist_allgather_host(Dist *d, const void *mine, void *all, size_t bytes);
void dist_broadcast_host(Dist *d, void *buf, size_t bytes, int root);
// untimed: waits as long as rank 0 needs (data preparation), still stopping when a peer dies
void dist_barrier(Dist *d, int timed);
// sum over ranks of n host doubles, in rank order (bit-identical on every rank)
void dist_sum_f64(Dist *d, double *v, int n);

// One line about this process: "rank 3 of 16 (Slurm), node gpu017, local rank 3, pid 123, <device>"
void dist_describe(const Dist *d, const char *device, char *out, size_t cap);

// Refuses ranks that disagree: every rank passes its text for `what` (the resolved config, the
// program's fingerprint, the data's description); when any differs from rank 0's, rank 0 prints
// one line naming the first rank and line that differ and every rank exits 1.
void dist_check_same(Dist *d, const char *what, const char *text);

// 64-bit FNV-1a of bytes (fingerprints)
uint64_t dist_hash(const void *p, size_t n, uint64_t h);

// transports (dist_mpi.c, kernels/cuda/dist_nccl.cu or its stub)
Dist *dist_mpi_open(const DistLaunch *l);
int dist_mpi_available(void);
// NCCL: the unique id (128 bytes) made on rank 0 and handed to every rank; `host` carries the
// host-memory calls (MPI's Dist, or NULL: then they go through NCCL itself)
int dist_nccl_available(void);  // 0 in builds without nvcc / NCCL
size_t dist_nccl_id_bytes(void);
int dist_nccl_make_id(void *id);  // 0, or -1 when NCCL is not in this build
Dist *dist_nccl_open(const DistLaunch *l, const void *id, Dist *host);
// selects GPU local_rank (of the visible ones) before the CUDA backend starts; fills name
void dist_cuda_select_device(int local_rank, char *name, size_t cap);

#ifdef __cplusplus
}
#endif
