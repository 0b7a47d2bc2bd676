// cpu_backend.c: the CPU backend's table of kernels (kernels_cpu) and its memory ops.
// Backend memory is ordinary host memory, so uploads and downloads are copies.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "kernels/cpu/blas_core.h"
#include "kernels/cpu/cpu.h"

// bytes asked of cpu_alloc, held now and at most; allocation happens on the main thread only.
// The requested size sits in a header in front of each block, so cpu_free can subtract it and
// memory() counts exactly what the memory plan's dry run counts.
static size_t g_in_use, g_peak;
#define CPU_HEADER 64  // keeps the block 64-byte aligned

static void cpu_memory(size_t *in_use, size_t *peak) {
    if (in_use) *in_use = g_in_use;
    if (peak) *peak = g_peak;
}

static void *cpu_alloc(size_t bytes) {
    // aligned_alloc wants a multiple of the alignment; 64 bytes is a cache line and an AVX-512 vector
    size_t rounded = (bytes + 63) / 64 * 64 + CPU_HEADER;
    if (rounded < bytes) fatal("out of memory allocating %zu bytes on the CPU", bytes);
    char *p = aligned_alloc(64, rounded);
    if (!p) fatal("out of memory allocating %zu bytes on the CPU", bytes);
    memset(p, 0, rounded);
    memcpy(p, &bytes, sizeof bytes);
    g_in_use += bytes;
    if (g_in_use > g_peak) g_peak = g_in_use;
    return p + CPU_HEADER;
}

static void cpu_free(void *p) {
    if (!p) return;
    char *block = (char *)p - CPU_HEADER;
    size_t bytes;
    memcpy(&bytes, block, sizeof bytes);
    g_in_use -= bytes;
    free(block);
}

// MemAvailable of /proc/meminfo (what the kernel can give without swapping), else free pages
static void cpu_available(size_t *free_bytes, size_t *total_bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t avail = (size_t)sysconf(_SC_AVPHYS_PAGES) * page, total = (size_t)sysconf(_SC_PHYS_PAGES) * page;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = (size_t)kb * 1024;
        fclose(f);
    }
    if (free_bytes) *free_bytes = avail;
    if (total_bytes) *total_bytes = total;
}

// The ops' scratch: the attention backward's dq chunk buffers for the model's largest call,
// reserved once through cpu_alloc (so memory() and the plan count it). The other temporaries are
// small (one tile per thread) and come from malloc per call.
static void *g_work;
static size_t g_work_bytes;

static size_t cpu_workspace_bytes(const KernelsWork *w) {
    if (w->attn_B <= 0) return 0;
    return cpu_attention_backward_scratch(w->attn_B, w->attn_T, w->attn_NH, w->attn_NKV, w->attn_HD);
}

static void cpu_workspace_reserve(const KernelsWork *w) {
    cpu_free(g_work);
    g_work = NULL;
    g_work_bytes = cpu_workspace_bytes(w);
    if (g_work_bytes) g_work = cpu_alloc(g_work_bytes);
}

void *cpu_workspace(size_t bytes) { return bytes <= g_work_bytes ? g_work : NULL; }

static void cpu_zero(void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
}

// copies that skip dst == src, which memcpy would not allow
static void cpu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memcpy(dst, src, bytes);
}

// backend to backend; memmove so that even overlapping spans are safe
static void cpu_copy_backend(void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memmove(dst, src, bytes);
}

static void cpu_upload(void *dst, const void *host_src, size_t bytes) { cpu_copy(dst, host_src, bytes); }
static void cpu_download(void *host_dst, const void *src, size_t bytes) { cpu_copy(host_dst, src, bytes); }
static void cpu_upload_act(act_t *dst, const float *host_src, size_t n) {
    cpu_copy(dst, host_src, n * sizeof(float));
}
static void cpu_download_act(float *host_dst, const act_t *src, size_t n) {
    cpu_copy(host_dst, src, n * sizeof(float));
}
static void cpu_cast_to_act(act_t *dst, const float *src, size_t n) { cpu_copy(dst, src, n * sizeof(float)); }
static void cpu_synchronize(void) {}
// the CPU zeroes the span up front (its ops add into fp32 gradients through BLAS either way)
static void cpu_grad_begin(float *g, size_t n) { cpu_zero(g, n * sizeof(float)); }
static void cpu_grad_settle(float *g, size_t n) { (void)g, (void)n; }
// uploads are memcpy on the CPU: nothing is ever pending on a host block
static void *cpu_host_alloc(size_t bytes) { return xmalloc(bytes ? bytes : 1); }
static void cpu_host_free(void *p) { free(p); }
static void cpu_host_ready(const void *p) { (void)p; }

// the CPU's matmul_backward_set: clear dinp, then accumulate (the same bits as the model's
// zero + matmul_backward)
static void cpu_matmul_backward_set(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                                    const act_t *w, int N, int C, int OC, float alpha) {
    cpu_matmul_backward_ld(dinp, dw, dbias, dout, inp, w, N, C, OC, alpha, 1, OC, C);
}

static const Kernels cpu_kernels = {
    .name = "cpu",
    .act_bytes = sizeof(float),
    .act_is_f32 = 1,
    // 256 rows of a 152k vocabulary is 155 MB of logits: large enough to keep every core busy
    .xent_chunk_rows = 256,
    .alloc_granule = 64 + CPU_HEADER,

    .alloc = cpu_alloc,
    .free = cpu_free,
    .zero = cpu_zero,
    .copy = cpu_copy_backend,
    .upload = cpu_upload,
    .download = cpu_download,
    .upload_act = cpu_upload_act,
    .download_act = cpu_download_act,
    .cast_to_act = cpu_cast_to_act,
    .synchronize = cpu_synchronize,
    .grad_begin = cpu_grad_begin,
    .grad_settle = cpu_grad_settle,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .host_ready = cpu_host_ready,
    .memory = cpu_memory,
    .available = cpu_available,
    .workspace_bytes = cpu_workspace_bytes,
    .workspace_reserve = cpu_workspace_reserve,

    .matmul_forward = cpu_matmul_forward,
    .matmul_backward = cpu_matmul_backward,
    .matmul_backward_set = cpu_matmul_backward_set,
    .matmul_forward_ld = cpu_matmul_forward_ld,
    .matmul_backward_ld = cpu_matmul_backward_ld,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rmsnorm_backward_set = cpu_rmsnorm_backward_set,
    .add_rmsnorm_forward = cpu_add_rmsnorm_forward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .attention_cached = cpu_attention_cached,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .quick_gelu_forward = cpu_quick_gelu_forward,
    .quick_gelu_backward = cpu_quick_gelu_backward,
    .gelu_tanh_forward = cpu_gelu_tanh_forward,
    .gelu_tanh_backward = cpu_gelu_tanh_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .add = cpu_add,
    .dropout = cpu_dropout,
    .avgpool2x2_forward = cpu_avgpool2x2_forward,
    .avgpool2x2_backward = cpu_avgpool2x2_backward,
    .dwconv3x3_forward = cpu_dwconv3x3_forward,
    .dwconv3x3_backward = cpu_dwconv3x3_backward,
    .im2col_patches = cpu_im2col_patches,
    .vit_embed = cpu_vit_embed,
    .embedding_forward = cpu_embedding_forward,
    .gather_rows = cpu_gather_rows,
    .scatter_rows = cpu_scatter_rows,
    .copy_rows = cpu_copy_rows,
    .cross_entropy = cpu_cross_entropy,
    .adamw_update = cpu_adamw_update,
    .sum_squares = cpu_sum_squares,
    .scale_f32 = cpu_scale_f32,
    .sum_f64 = cpu_sum_f64,
    .adamw_span = cpu_adamw_span,
};

const Kernels *kernels_cpu(void) {
    cpu_blas_init();
    return &cpu_kernels;
}
