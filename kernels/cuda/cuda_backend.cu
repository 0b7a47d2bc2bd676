// cuda_backend.cu: the CUDA backend's table (kernels_cuda), its one-time setup (device, stream,
// cuBLASLt), error reporting, scratch buffers and the memory ops. Returns NULL, and never
// crashes, on a machine without a CUDA driver or device.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <mutex>
#include <unordered_map>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/counters.h"

static cudaStream_t g_stream;
static int g_device, g_num_sms;
static void *g_scratch[N_SCRATCH];
static size_t g_scratch_bytes[N_SCRATCH];

cudaStream_t cuda_stream(void) { return g_stream; }
int cuda_num_sms(void) { return g_num_sms; }

void cuda_check_fail(int err, const char *file, int line, const char *expr) {
    cudaError_t e = (cudaError_t)err;
    check_fail(file, line, expr,
               "CUDA error %d (%s: %s). Errors inside a kernel surface at a later call: rerun with "
               "CUDA_LAUNCH_BLOCKING=1 to find the kernel, and compute-sanitizer for bad accesses",
               err, cudaGetErrorName(e), cudaGetErrorString(e));
}

// bytes held through cuda_alloc and the scratch slots (allocation is single-threaded)
static std::unordered_map<void *, size_t> g_sizes;
static size_t g_in_use, g_peak;

void cuda_track(void *p, size_t bytes) {
    g_sizes[p] = bytes;
    g_in_use += bytes;
    if (g_in_use > g_peak) g_peak = g_in_use;
}

static void untrack(void *p) {
    auto it = g_sizes.find(p);
    if (it == g_sizes.end()) return;
    g_in_use -= it->second;
    g_sizes.erase(it);
}

static void cuda_memory(size_t *in_use, size_t *peak) {
    if (in_use) *in_use = g_in_use;
    if (peak) *peak = g_peak;
}

void *cuda_scratch(int slot, size_t bytes) {
    CHECK(slot >= 0 && slot < N_SCRATCH, "scratch slot %d", slot);
    if (bytes > g_scratch_bytes[slot]) {
        // kernels still queued may use the old buffer
        cudaCheck(cudaStreamSynchronize(g_stream));
        if (g_scratch[slot]) {
            untrack(g_scratch[slot]);
            cudaCheck(cudaFree(g_scratch[slot]));
        }
        size_t want = bytes + bytes / 4 + 256;
        if (cudaMalloc(&g_scratch[slot], want) != cudaSuccess) {
            size_t free_b = 0, total = 0;
            cudaGetLastError();
            cudaMemGetInfo(&free_b, &total);
            fatal("out of GPU memory: a scratch buffer of %zu bytes does not fit (%zu of %zu bytes free); "
                  "lower batch_size", want, free_b, total);
        }
        g_scratch_bytes[slot] = want;
        cuda_track(g_scratch[slot], want);
    }
    return g_scratch[slot];
}

// ---------------------------------------------------------------- memory plan

// The scratch each slot needs for a model of shapes w: the maximum over the ops that use it.
static void scratch_plan(const KernelsWork *w, size_t need[N_SCRATCH]) {
    for (int s = 0; s < N_SCRATCH; s++) need[s] = 0;
    size_t sums = cuda_colsum_scratch_max(w->rows, w->width), conv = cuda_dwconv_scratch_max(w->rows, w->width);
    need[SCRATCH_REDUCE] = sums > conv ? sums : conv;
    if (w->attn_B > 0) {
        for (int s = 0; s < N_SCRATCH; s++) {
            size_t a = cuda_attention_backward_scratch(s, w->attn_B, w->attn_T, w->attn_NH, w->attn_NKV, w->attn_HD);
            if (a > need[s]) need[s] = a;
        }
    }
    need[SCRATCH_SUMSQ] = cuda_sum_squares_scratch();
    need[SCRATCH_SPLITK] = cuda_splitk_scratch();
}

static size_t cuda_workspace_bytes(const KernelsWork *w) {
    size_t need[N_SCRATCH], total = 0;
    scratch_plan(w, need);
    for (int s = 0; s < N_SCRATCH; s++) total += need[s];
    return total;
}

static void cuda_workspace_reserve(const KernelsWork *w) {
    size_t need[N_SCRATCH];
    scratch_plan(w, need);
    cudaCheck(cudaStreamSynchronize(g_stream));  // queued kernels may still use the old buffers
    for (int s = 0; s < N_SCRATCH; s++) {
        if (g_scratch[s]) {
            untrack(g_scratch[s]);
            cudaCheck(cudaFree(g_scratch[s]));
            g_scratch[s] = NULL;
            g_scratch_bytes[s] = 0;
        }
        if (need[s] == 0) continue;
        if (cudaMalloc(&g_scratch[s], need[s]) != cudaSuccess) {
            size_t free_b = 0, total = 0;
            cudaGetLastError();
            cudaMemGetInfo(&free_b, &total);
            fatal("out of GPU memory: the ops' scratch of %zu bytes does not fit (%zu of %zu bytes free); "
                  "lower batch_size", need[s], free_b, total);
        }
        g_scratch_bytes[s] = need[s];
        cuda_track(g_scratch[s], need[s]);
    }
}

static void cuda_available(size_t *free_bytes, size_t *total_bytes) {
    size_t f = 0, t = 0;
    cudaCheck(cudaMemGetInfo(&f, &t));
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
}

// ---------------------------------------------------------------- memory

static void *cuda_alloc(size_t bytes) {
    size_t want = bytes ? bytes : 256;  // a unique, freeable pointer even for 0 bytes
    void *p = NULL;
    if (cudaMalloc(&p, want) != cudaSuccess) {
        size_t free_b = 0, total = 0;
        cudaGetLastError();  // clear the error so later calls do not report it
        cudaMemGetInfo(&free_b, &total);
        fatal("out of GPU memory: asked for %zu bytes, %zu of %zu bytes free; lower batch_size (or max_seq_len)",
              bytes, free_b, total);
    }
    cudaCheck(cudaMemsetAsync(p, 0, want, g_stream));
    cuda_track(p, bytes);  // what was asked, as the memory plan counts it
    return p;
}

static void cuda_free(void *p) {
    if (!p) return;
    untrack(p);
    cudaCheck(cudaFree(p));
}

static void cuda_zero(void *p, size_t bytes) {
    if (bytes) cudaCheck(cudaMemsetAsync(p, 0, bytes, g_stream));
}

static void cuda_copy(void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    CHECK(d + bytes <= s || s + bytes <= d, "copy between overlapping spans is not supported on CUDA");
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_stream));
}

// Uploads go through a pinned staging ring of two halves: the bytes are copied into the current
// half (the caller's buffer is free again at return, as before) and the device reads them from
// there asynchronously, so the host waits only when it is a whole half ahead of the device (the
// half it moves to still being read). fp32 activations (pixels, weights at load) are converted to
// bf16 by a kernel reading the pinned fp32 directly (zero-copy: pinned memory is mapped into the
// device's address space under unified addressing), not on the host while the device waits.
#define RING_HALF ((size_t)16 << 20)
static char *g_ring;       // 2 * RING_HALF, pinned (NULL: not available, the synchronous path)
static cudaEvent_t g_ring_read[2];  // recorded after the last reader of each half
static int g_ring_half;
static size_t g_ring_fill;

static char *ring_take(size_t bytes) {
    bytes = (bytes + 255) & ~(size_t)255;
    if (g_ring_fill + bytes > RING_HALF) {
        g_ring_half ^= 1;
        g_ring_fill = 0;
        cudaError_t q = cudaEventQuery(g_ring_read[g_ring_half]);
        if (q == cudaErrorNotReady) cudaCheck(cudaEventSynchronize(g_ring_read[g_ring_half]));
        else cudaCheck(q);
    }
    char *p = g_ring + g_ring_half * RING_HALF + g_ring_fill;
    g_ring_fill += bytes;
    return p;
}

// after the work that reads what ring_take gave
static void ring_read_enqueued(void) { cudaCheck(cudaEventRecord(g_ring_read[g_ring_half], g_stream)); }

// ---- the caller's own pinned buffers (host_alloc): read by the copies in place, no staging

// Each block has an event recorded after the last work enqueued that reads it; host_ready waits
// for it. The loader's image threads call host_ready while the training thread uploads from other
// blocks, so the table takes a lock (the CUDA calls themselves are thread-safe).
typedef struct {
    char *p;
    size_t bytes;
    int pinned;       // cudaMallocHost; 0: pageable (pinning failed), uploads of it take the ring
    int pending;      // an upload read it since the last host_ready
    cudaEvent_t read;
} HostBlock;
static std::map<uintptr_t, HostBlock> g_host;  // by address
static std::mutex g_host_mu;

// the pinned block holding [p, p + bytes), else NULL; with g_host_mu held
static HostBlock *host_block(const void *p, size_t bytes) {
    uintptr_t a = (uintptr_t)p;
    auto it = g_host.upper_bound(a);
    if (it == g_host.begin()) return NULL;
    --it;
    HostBlock *b = &it->second;
    return b->pinned && a + bytes <= (uintptr_t)b->p + b->bytes ? b : NULL;
}

static void *cuda_host_alloc(size_t bytes) {
    HostBlock b = {NULL, bytes ? bytes : 1, 1, 0, NULL};
    if (cudaMallocHost((void **)&b.p, b.bytes) != cudaSuccess) {
        cudaGetLastError();
        b.p = (char *)xmalloc(b.bytes);  // works, through the staging ring
        b.pinned = 0;
    } else {
        cudaCheck(cudaEventCreateWithFlags(&b.read, cudaEventDisableTiming));
    }
    std::lock_guard<std::mutex> lk(g_host_mu);
    g_host[(uintptr_t)b.p] = b;
    return b.p;
}

// waits for the device's reads of a block, from its event; a wait (counted) only when there is one
static void host_event_wait(cudaEvent_t e) {
    cudaError_t q = cudaEventQuery(e);
    if (q == cudaErrorNotReady) cudaCheck(cudaEventSynchronize(e));
    else cudaCheck(q);
}

// The wait happens outside the lock, so the training thread's uploads from other blocks go on
// meanwhile; nothing re-records this block's event then (its owner is about to write it).
static void cuda_host_ready(const void *p) {
    if (!p) return;
    cudaEvent_t e = NULL;
    {
        std::lock_guard<std::mutex> lk(g_host_mu);
        HostBlock *b = host_block(p, 1);
        if (!b || !b->pending) return;
        b->pending = 0;
        e = b->read;
    }
    host_event_wait(e);
}

static void cuda_host_free(void *p) {
    if (!p) return;
    std::lock_guard<std::mutex> lk(g_host_mu);
    auto it = g_host.find((uintptr_t)p);
    CHECK(it != g_host.end(), "host_free of memory host_alloc did not give");
    HostBlock *b = &it->second;
    if (b->pinned) {
        if (b->pending) host_event_wait(b->read);
        cudaCheck(cudaEventDestroy(b->read));
        cudaCheck(cudaFreeHost(b->p));
    } else {
        free(b->p);
    }
    g_host.erase(it);
}

// an upload from a pinned block: 1 and its reads enqueued, the block marked as being read
static int upload_pinned(void *dst, const void *host_src, size_t bytes, int cast) {
    std::lock_guard<std::mutex> lk(g_host_mu);
    HostBlock *b = host_block(host_src, bytes);
    if (!b) return 0;
    if (cast) {
        cuda_cast_to_act(dst, (const float *)host_src, bytes / sizeof(float));  // reads the mapped pinned fp32
#ifdef SVLM_CUDA_EMU
        emu_counters.h2d_bytes += bytes;
#endif
    } else {
        cudaCheck(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, g_stream));
    }
    cudaCheck(cudaEventRecord(b->read, g_stream));
    b->pending = 1;
    return 1;
}

static void cuda_upload(void *dst, const void *host_src, size_t bytes) {
    if (!bytes) return;
    if (g_ring && upload_pinned(dst, host_src, bytes, 0)) return;
    if (!g_ring) {
        cudaCheck(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, g_stream));
        cudaCheck(cudaStreamSynchronize(g_stream));  // the host buffer may change once we return
        return;
    }
    for (size_t o = 0; o < bytes; o += RING_HALF) {
        size_t m = bytes - o < RING_HALF ? bytes - o : RING_HALF;
        char *p = ring_take(m);
        memcpy(p, (const char *)host_src + o, m);
#ifdef SVLM_CUDA_EMU
        emu_counters.staged_bytes += m;
#endif
        cudaCheck(cudaMemcpyAsync((char *)dst + o, p, m, cudaMemcpyHostToDevice, g_stream));
        ring_read_enqueued();
    }
}

static void cuda_download(void *host_dst, const void *src, size_t bytes) {
    if (!bytes) return;
    cudaCheck(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, g_stream));
    cudaCheck(cudaStreamSynchronize(g_stream));
}

// fp32 host <-> bf16 device; without the pinned ring through a pinned (or pageable) staging
// buffer, converted on the host with the same rounding as common/util.c (nearest even, NaN kept)
#define STAGE_ELEMS ((size_t)1 << 22)  // 8 MB of bf16
static uint16_t *g_stage;

static void cuda_upload_act(act_t *dst, const float *host_src, size_t n) {
    uint16_t *d = (uint16_t *)dst;
    if (g_ring && n && upload_pinned(dst, host_src, n * sizeof(float), 1)) return;
    if (g_ring) {
        const size_t chunk = RING_HALF / sizeof(float);
        for (size_t i0 = 0; i0 < n; i0 += chunk) {
            size_t m = n - i0 < chunk ? n - i0 : chunk;
            float *p = (float *)ring_take(m * sizeof(float));
            memcpy(p, host_src + i0, m * sizeof(float));
            cuda_cast_to_act(d + i0, p, m);  // reads the pinned fp32 over the bus, once
            ring_read_enqueued();
#ifdef SVLM_CUDA_EMU
            emu_counters.h2d_bytes += m * sizeof(float);  // a kernel's reads: no copy for the emulator to see
            emu_counters.staged_bytes += m * sizeof(float);
#endif
        }
        return;
    }
    for (size_t i0 = 0; i0 < n; i0 += STAGE_ELEMS) {
        size_t m = n - i0 < STAGE_ELEMS ? n - i0 : STAGE_ELEMS;
        for (size_t i = 0; i < m; i++) g_stage[i] = f32_to_bf16(host_src[i0 + i]);
        cudaCheck(cudaMemcpyAsync(d + i0, g_stage, m * sizeof(uint16_t), cudaMemcpyHostToDevice, g_stream));
        cudaCheck(cudaStreamSynchronize(g_stream));  // before the staging buffer is refilled
    }
}

static void cuda_download_act(float *host_dst, const act_t *src, size_t n) {
    const uint16_t *s = (const uint16_t *)src;
    for (size_t i0 = 0; i0 < n; i0 += STAGE_ELEMS) {
        size_t m = n - i0 < STAGE_ELEMS ? n - i0 : STAGE_ELEMS;
        cudaCheck(cudaMemcpyAsync(g_stage, s + i0, m * sizeof(uint16_t), cudaMemcpyDeviceToHost, g_stream));
        cudaCheck(cudaStreamSynchronize(g_stream));
        for (size_t i = 0; i < m; i++) host_dst[i0 + i] = bf16_to_f32(g_stage[i]);
    }
}

static void cuda_synchronize(void) { cudaCheck(cudaStreamSynchronize(g_stream)); }

// ---------------------------------------------------------------- setup

__global__ void probe_kernel(int *p) { p[threadIdx.x] = (int)threadIdx.x; }

static Kernels g_kernels = {
    .name = "cuda",
    .dry_run = 0,
    .act_bytes = 2,
    .act_is_f32 = 0,
    // 2048 rows x 151936 vocabulary x 2 bytes = 622 MB of logits per chunk: the reference stage-2
    // batch's ~2300 labelled rows in 2 chunks instead of 3 (fewer, fuller vocabulary GEMMs)
    .xent_chunk_rows = 2048,
    .alloc_granule = (size_t)2 << 20,  // cudaMalloc rounds large blocks up to 2 MiB pages

    .alloc = cuda_alloc,
    .free = cuda_free,
    .zero = cuda_zero,
    .copy = cuda_copy,
    .upload = cuda_upload,
    .download = cuda_download,
    .upload_act = cuda_upload_act,
    .download_act = cuda_download_act,
    .cast_to_act = cuda_cast_to_act,
    .synchronize = cuda_synchronize,
    .grad_begin = cuda_grad_begin,
    .grad_settle = cuda_grad_settle,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .host_ready = cuda_host_ready,
    .memory = cuda_memory,
    .available = cuda_available,
    .workspace_bytes = cuda_workspace_bytes,
    .workspace_reserve = cuda_workspace_reserve,

    .matmul_forward = cuda_matmul_forward,
    .matmul_backward = cuda_matmul_backward,
    .matmul_backward_set = cuda_matmul_backward_set,
    .matmul_forward_ld = cuda_matmul_forward_ld,
    .matmul_backward_ld = cuda_matmul_backward_ld,
    .layernorm_forward = cuda_layernorm_forward,
    .layernorm_backward = cuda_layernorm_backward,
    .rmsnorm_forward = cuda_rmsnorm_forward,
    .add_rmsnorm_forward = cuda_add_rmsnorm_forward,
    .rmsnorm_backward = cuda_rmsnorm_backward,
    .rmsnorm_backward_set = cuda_rmsnorm_backward_set,
    .rope_forward = cuda_rope_forward,
    .rope_backward = cuda_rope_backward,
    .attention_forward = cuda_attention_forward,
    .attention_backward = cuda_attention_backward,
    .attention_cached = cuda_attention_cached,
    .gelu_forward = cuda_gelu_forward,
    .gelu_backward = cuda_gelu_backward,
    .quick_gelu_forward = cuda_quick_gelu_forward,
    .quick_gelu_backward = cuda_quick_gelu_backward,
    .gelu_tanh_forward = cuda_gelu_tanh_forward,
    .gelu_tanh_backward = cuda_gelu_tanh_backward,
    .swiglu_forward = cuda_swiglu_forward,
    .swiglu_backward = cuda_swiglu_backward,
    .add = cuda_add,
    .dropout = cuda_dropout,
    .avgpool2x2_forward = cuda_avgpool2x2_forward,
    .avgpool2x2_backward = cuda_avgpool2x2_backward,
    .dwconv3x3_forward = cuda_dwconv3x3_forward,
    .dwconv3x3_backward = cuda_dwconv3x3_backward,
    .im2col_patches = cuda_im2col_patches,
    .vit_embed = cuda_vit_embed,
    .embedding_forward = cuda_embedding_forward,
    .gather_rows = cuda_gather_rows,
    .scatter_rows = cuda_scatter_rows,
    .copy_rows = cuda_copy_rows,
    .cross_entropy = cuda_cross_entropy,
    .adamw_update = cuda_adamw_update,
    .sum_squares = cuda_sum_squares,
    .scale_f32 = cuda_scale_f32,
    .sum_f64 = cuda_sum_f64,
    .adamw_span = cuda_adamw_span,
};

static void setup(void) {
    cudaCheck(cudaGetDevice(&g_device));  // the current device: cudaSetDevice before the first call picks another
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, g_device));
    if (prop.major < 8)
        fatal("CUDA device %d (%s) has compute capability %d.%d: svlm needs 8.0 or newer (bf16)", g_device,
              prop.name, prop.major, prop.minor);
    g_num_sms = prop.multiProcessorCount;
    cudaCheck(cudaStreamCreate(&g_stream));
    // a kernel launch proves the binary carries code for this GPU
    int *probe;
    cudaCheck(cudaMalloc(&probe, 32 * sizeof(int)));
    LAUNCH(1, 32, probe_kernel)(probe);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaStreamSynchronize(g_stream);
    if (e != cudaSuccess)
        fatal("CUDA device %d (%s, sm_%d%d) cannot run svlm's kernels: %s. svlm was built for the "
              "architectures in CUDA_ARCH (Makefile); rebuild with e.g. CUDA_ARCH=\"-gencode arch=compute_%d%d,code=sm_%d%d\"",
              g_device, prop.name, prop.major, prop.minor, cudaGetErrorString(e), prop.major, prop.minor,
              prop.major, prop.minor);
    cudaCheck(cudaFree(probe));
    if (cudaMallocHost((void **)&g_stage, STAGE_ELEMS * sizeof(uint16_t)) != cudaSuccess) {
        cudaGetLastError();
        g_stage = (uint16_t *)xmalloc(STAGE_ELEMS * sizeof(uint16_t));  // pageable works too, slower
    }
    if (cudaMallocHost((void **)&g_ring, 2 * RING_HALF) != cudaSuccess) {
        cudaGetLastError();
        g_ring = NULL;  // uploads then wait for their copies (pageable memory is not mapped)
    } else {
        for (int h = 0; h < 2; h++) cudaCheck(cudaEventCreateWithFlags(&g_ring_read[h], cudaEventDisableTiming));
    }
    cuda_matmul_init();
#ifdef SVLM_CUDA_EMU
    g_kernels.name = "cuda-emu";
#endif
}

// ---------------------------------------------------------------- counters (counters.h)

extern "C" void cuda_matmul_counts(long *cublaslt, long *fallback);
static long g_gemms_at_reset;

static long gemms_so_far(void) {
    long lt, fb;
    cuda_matmul_counts(&lt, &fb);
    return lt + fb;
}

extern "C" void cuda_counters_reset(void) {
#ifdef SVLM_CUDA_EMU
    memset(&emu_counters, 0, sizeof emu_counters);
#endif
    g_gemms_at_reset = gemms_so_far();
}

extern "C" int cuda_counters_read(CudaCounters *c) {
    memset(c, 0, sizeof *c);
#ifdef SVLM_CUDA_EMU
    c->launches = emu_counters.launches;
    c->syncs = emu_counters.syncs;
    c->memset_bytes = emu_counters.memset_bytes;
    c->h2d_bytes = emu_counters.h2d_bytes;
    c->d2h_bytes = emu_counters.d2h_bytes;
    c->d2d_bytes = emu_counters.d2d_bytes;
    c->staged_bytes = emu_counters.staged_bytes;
    c->gemms = gemms_so_far() - g_gemms_at_reset;
    return 1;
#else
    c->gemms = gemms_so_far() - g_gemms_at_reset;  // the only count kept on a GPU
    return 0;
#endif
}

extern "C" int cuda_count_only(void) {
#ifdef SVLM_CUDA_EMU
    emu_count_only = 1;
    return 1;
#else
    return 0;
#endif
}

extern "C" const Kernels *kernels_cuda(void) {
    static int state;  // 0 not tried, 1 ready, -1 no device
    if (state == 0) {
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess || n <= 0) {
            cudaGetLastError();  // no driver or no device: not an error, just no CUDA backend
            state = -1;
        } else {
            setup();
            state = 1;
        }
    }
    return state == 1 ? &g_kernels : NULL;
}
