// counters.h: what the CUDA backend asked of the device, per training step if reset at its start:
// counted by the emulator (tests/gpu/emu), which sees every launch, wait and copy, so that
// `bench_step --counts` measures the step's launches, stalls and traffic on a machine without
// a GPU. On a real GPU (and in builds without CUDA) only the reader says "not counted".
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    long launches;        // kernel launches, a cuBLASLt call counted as one
    long gemms;           // matmul GEMMs (cuBLASLt or svlm's fallback kernel)
    long syncs;           // the host waiting for the device (stream or event synchronisation)
    size_t memset_bytes;  // bytes cleared with cudaMemsetAsync
    size_t h2d_bytes, d2h_bytes, d2d_bytes;  // bytes copied by direction
    size_t staged_bytes;  // of h2d, bytes the host first copied into the pinned staging ring (the
                          // rest was read from the caller's own pinned memory: Kernels.host_alloc)
} CudaCounters;

// 1 and the counts since the last reset where they are counted (the emulator), else 0
int cuda_counters_read(CudaCounters *c);
void cuda_counters_reset(void);
// The emulator from now on counts without executing (no kernel, GEMM or copy runs; a copy to
// the host gives zeros; device memory is address space only): for counting a step of a model too
// large to run there. Returns 1, or 0 where not supported (a real GPU, no CUDA).
int cuda_count_only(void);

#ifdef __cplusplus
}
#endif
