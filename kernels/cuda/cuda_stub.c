// cuda_stub.c: stands in for the CUDA backend in builds without nvcc and in the CPU-only tests.
#include "kernels/kernels.h"

const Kernels *kernels_cuda(void) { return NULL; }

// the NCCL transport of trainer/dist.h (kernels/cuda/dist_nccl.cu) is absent too
#include <stdio.h>

#include "trainer/dist.h"

int dist_nccl_available(void) { return 0; }
size_t dist_nccl_id_bytes(void) { return 128; }
int dist_nccl_make_id(void *id) { return -1; }
Dist *dist_nccl_open(const DistLaunch *l, const void *id, Dist *host) { return NULL; }
void dist_cuda_select_device(int local_rank, char *name, size_t cap) { snprintf(name, cap, "no CUDA in this build"); }

// no counters without CUDA (kernels/cuda/counters.h)
#include "kernels/cuda/counters.h"

int cuda_counters_read(CudaCounters *c) { return 0; }
void cuda_counters_reset(void) {}
int cuda_count_only(void) { return 0; }

// nor the cuDNN attention (kernels/cuda/attention_cudnn.h)
#include "kernels/cuda/attention_cudnn.h"

int cuda_attention_cudnn_available(char *why, size_t cap) {
    if (why && cap) snprintf(why, cap, "not built: no CUDA in this build");
    return 0;
}
void cuda_attention_cudnn_counts(long *ran, long *declined) {
    if (ran) *ran = 0;
    if (declined) *declined = 0;
}
void cuda_attention_segment_ends(int *end, const int *seg, int B, int T) {}
void cuda_attention_cudnn_build_stats(long *plans, double *seconds) {
    if (plans) *plans = 0;
    if (seconds) *seconds = 0;
}
int cuda_attention_cudnn_engines(const char *device_json, int dir, int B, int T, int NH, int NKV, int HD, int causal,
                                 int seg, int dynamic, int bucket_rows, long long *min_ws, long long *max_ws, char *why,
                                 size_t cap) {
    cuda_attention_cudnn_available(why, cap);
    return -1;
}
int cuda_attention_cudnn_set_bucket(int rows) { return 0; }
