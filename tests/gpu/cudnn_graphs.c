// cudnn_graphs.c: svlm's cuDNN attention graphs (kernels/cuda/attention_cudnn.cu) judged by cuDNN
// itself without a GPU: each graph is built for a described device (an H200, sm_90, and an A100,
// sm_80: cuDNN's device-property JSON with their published limits) and cuDNN's heuristics must
// offer at least one deterministic engine for it, forward and backward, causal, with packed rows,
// GQA and MHA, head dims 64 and 128, T off the tile sizes, exact-shape and bucketed (ragged, T
// rounded up to 64, SVLM_CUDNN_BUCKET); and every backward engine offered must
// plan the workspace of cuDNN's deterministic algorithm (dS stored, no atomics). Nothing is
// compiled or run: this catches a graph the fused-attention engines do not recognise (a wrong op,
// attribute, layout or mask pattern), not wrong numbers, which test_gpu's test_attention_cudnn
// checks on a GPU.
// cuDNN's engine libraries load libcuda; without a driver `make test-cudnn-graphs` points them at
// the CUDA toolkit's stub library. Skipped (said once) when svlm was built without cuDNN.
#include <stdio.h>
#include <string.h>

#include "kernels/cuda/attention_cudnn.h"
#include "tests/testlib.h"

// the fields cuDNN 9.19 reads from a device description (CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION)
static const char *H200 =
    "{\"cudaDeviceId\":0,\"deviceName\":\"NVIDIA H200\",\"deviceVer\":900,\"driverVer\":13000,\"isTccDriver\":0,"
    "\"maxCtasPerSM\":32,\"maxRegistersPerSM\":65536,\"maxSharedMemoryPerBlock\":49152,"
    "\"maxSharedMemoryPerBlockOptin\":232448,\"maxThreadsPerBlock\":1024,\"maxThreadsPerSM\":2048,"
    "\"memClockRateKHz\":3201000,\"multiProcessorCount\":132,\"pciDeviceId\":0,\"regsPerBlock\":65536,"
    "\"reservedSharedMemoryPerBlock\":1024,\"smClockRateKHz\":1980000,\"supportCoopLaunch\":1,"
    "\"totalGlobalMem\":150754820096,\"warpSize\":32,\"l2CacheSize\":52428800,"
    "\"maxGridSize\":[2147483647,65535,65535],\"maxBlockSize\":[1024,1024,64]}";
static const char *A100 =
    "{\"cudaDeviceId\":0,\"deviceName\":\"NVIDIA A100-SXM4-80GB\",\"deviceVer\":800,\"driverVer\":13000,"
    "\"isTccDriver\":0,\"maxCtasPerSM\":32,\"maxRegistersPerSM\":65536,\"maxSharedMemoryPerBlock\":49152,"
    "\"maxSharedMemoryPerBlockOptin\":166912,\"maxThreadsPerBlock\":1024,\"maxThreadsPerSM\":2048,"
    "\"memClockRateKHz\":1593000,\"multiProcessorCount\":108,\"pciDeviceId\":0,\"regsPerBlock\":65536,"
    "\"reservedSharedMemoryPerBlock\":1024,\"smClockRateKHz\":1410000,\"supportCoopLaunch\":1,"
    "\"totalGlobalMem\":85899345920,\"warpSize\":32,\"l2CacheSize\":41943040,"
    "\"maxGridSize\":[2147483647,65535,65535],\"maxBlockSize\":[1024,1024,64]}";

typedef struct {
    int B, T, NH, NKV, HD, causal, seg, backward;
} Shape;

// the LLM's (causal; packed rows or not; Qwen2-0.5B's GQA 14/2 and MHA; HD 64 and 128), the
// ViT's (full attention, forward only), T below, at and past the tile sizes
static const Shape shapes[] = {
    {2, 100, 4, 2, 64, 1, 0, 1},   {2, 100, 4, 2, 64, 1, 1, 1},   {16, 752, 14, 2, 64, 1, 0, 1},
    {16, 752, 14, 2, 64, 1, 1, 1}, {2, 77, 4, 4, 128, 1, 0, 1},   {1, 200, 8, 2, 128, 1, 1, 1},
    {2, 37, 4, 1, 32, 1, 0, 1},    {1, 64, 2, 1, 64, 1, 1, 1},    {16, 577, 16, 16, 64, 0, 0, 0},
};

static int skipped(void) {
    char why[256];
    if (cuda_attention_cudnn_available(why, sizeof why) || strncmp(why, "not built", 9) != 0) return 0;
    printf("    cudnn_graphs: %s: skipped\n", why);
    return 1;
}

// ragged_bwd: whether the device has a deterministic bucketed (ragged) backward; cuDNN 9.19 has
// none on sm_80 ("non-atomic bprop thd is not supported with SM80 style bprop kernel"), so there
// SVLM_CUDNN_BUCKET runs the backward on the WMMA kernels
static void check_device(const char *name, const char *json, int ragged_bwd) {
    // the control: the plain causal forward. No engine for it means cuDNN's engines did not load
    // (no libcuda: see the top of the file), not a wrong graph
    char why[300];
    long long lo, hi;
    int n = cuda_attention_cudnn_engines(json, 0, 2, 128, 4, 4, 64, 1, 0, 0, 0, &lo, &hi, why, sizeof why);
    if (n == 0) fail_msg("%s: no engine even for the plain causal forward: cuDNN's engine libraries did not load "
                         "(without a driver, run through tests/gpu/cudnn_graphs.sh, which gives them the toolkit's "
                         "stub libcuda)", name);
    if (n < 0) fail_msg("%s: %s", name, why);
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const Shape *s = &shapes[i];
        for (int bucket = 0; bucket <= 64; bucket += 64)  // exact shape; ragged, T rounded up to 64
            for (int dir = 0; dir <= s->backward; dir++) {
                n = cuda_attention_cudnn_engines(json, dir, s->B, s->T, s->NH, s->NKV, s->HD, s->causal, s->seg, 0,
                                                 bucket, &lo, &hi, why, sizeof why);
                printf("    %s %s%s B%d T%d NH%d NKV%d HD%d%s%s: %d deterministic engine configs, workspace "
                       "%lld..%lld bytes%s%s\n", name, dir ? "backward" : "forward", bucket ? " bucketed" : "", s->B,
                       s->T, s->NH, s->NKV, s->HD, s->causal ? " causal" : "", s->seg ? " packed" : "", n, lo, hi,
                       n > 0 ? "" : ": ", n > 0 ? "" : why);
                if (bucket && dir && !ragged_bwd) continue;  // none expected (printed above)
                if (n <= 0) fail_msg("%s: cuDNN offers no engine for svlm's %s%s graph (shape %zu): %s", name,
                                     dir ? "backward" : "forward", bucket ? " bucketed" : "", i, why);
                // the deterministic backward (dQ written by the dS K product, no fp32 accumulator) is
                // cuDNN's "dP workspace" algorithm: dS (B, NH, T, T) in bf16 in the workspace, T rounded
                // up to 64. Every engine offered must plan that much, or it is the atomic one after all.
                long long t64 = (s->T + 63) / 64 * 64, dp = (long long)s->B * s->NH * t64 * t64 * 2;
                if (dir && lo < dp)
                    fail_msg("%s: a backward engine plans %lld bytes of workspace, less than dS's %lld: not the "
                             "deterministic algorithm", name, lo, dp);
            }
    }
    // the forward's dynamic-shape graphs (their kernel cache spares a compile per new T) must be
    // accepted too; the backward's are not in cuDNN 9.19 (attention_cudnn.cu builds them static)
    n = cuda_attention_cudnn_engines(json, 0, 2, 100, 14, 2, 64, 1, 1, 1, 0, &lo, &hi, why, sizeof why);
    printf("    %s forward, dynamic shape: %d; backward, dynamic shape: %d (static is used)\n", name, n,
           cuda_attention_cudnn_engines(json, 1, 2, 100, 14, 2, 64, 1, 1, 1, 0, &lo, &hi, why, sizeof why));
    if (n <= 0) fail_msg("%s: no engine for the dynamic-shape forward: %s", name, why);
}

static void test_graphs_sm90(void **state) {
    (void)state;
    if (!skipped()) check_device("sm_90 (H200)", H200, 1);
}

static void test_graphs_sm80(void **state) {
    (void)state;
    if (!skipped()) check_device("sm_80 (A100)", A100, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_graphs_sm90),
        cmocka_unit_test(test_graphs_sm80),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
