// attention_cudnn.h: what the rest of svlm may ask of the cuDNN attention path
// (kernels/cuda/attention_cudnn.cu), from C. Builds without CUDA link kernels/cuda/cuda_stub.c's
// versions ("no CUDA in this build").
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// The device's compute capability (10 * major + minor, e.g. 90) when SVLM_ATTN=cudnn can run here
// (svlm was built with cuDNN, the library loads, the device is sm_80+); else 0 and `why` (may be
// NULL) says what is missing: "not built ...", "no device", ...
int cuda_attention_cudnn_available(char *why, size_t cap);

// calls cuDNN ran and calls it declined (then run by the WMMA or FMA kernels) since the start:
// the tests check that SVLM_ATTN=cudnn really ran cuDNN
void cuda_attention_cudnn_counts(long *ran, long *declined);
// plans built so far (graph, heuristics, kernel compilation) and the seconds that took
void cuda_attention_cudnn_build_stats(long *plans, double *seconds);

// Without a GPU: the number of deterministic engine configs cuDNN offers for the graph of this
// attention call (dir 0 forward, 1 backward; dynamic: marked dynamic-shape) on the device that
// device_json describes (cuDNN's device-property JSON), and the least and most workspace bytes among
// them; -1 with `why` when the graph is refused or cuDNN is not built. For tests/gpu/cudnn_graphs.c.
int cuda_attention_cudnn_engines(const char *device_json, int dir, int B, int T, int NH, int NKV, int HD, int causal,
                                 int seg, int dynamic, int bucket_rows, long long *min_ws, long long *max_ws, char *why,
                                 size_t cap);

// SVLM_CUDNN_BUCKET for the tests: graphs of T rounded up to a multiple of `rows`, ragged with a
// padding mask (0: the exact shape); returns the previous setting
int cuda_attention_cudnn_set_bucket(int rows);

// Device helper of the packed-rows mask, exported for the tests: end (B,T) int32 = the last
// position of the segment that position t of row b belongs to (seg (B,T) holds contiguous runs of
// equal ids, as the loader packs them). Both pointers are device memory; runs on the stream.
void cuda_attention_segment_ends(int *end, const int *seg, int B, int T);

#ifdef __cplusplus
}
#endif
