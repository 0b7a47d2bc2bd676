// dry_run.c: the planning table (kernels_dry_run): the model's setup code runs on it unchanged and
// the bytes it would allocate on the real backend are counted, so the memory plan is computed by
// the same code that later allocates, and cannot drift from it.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/kernels.h"

static Kernels g_dry;
static size_t g_bytes, g_count, g_slack;
static uintptr_t g_next;

// distinct, aligned, never-dereferenced addresses: offsets inside an allocation stay inside it
static void *dry_alloc(size_t bytes) {
    void *p = (void *)g_next;
    g_bytes += bytes;
    g_count++;
    size_t gr = g_dry.alloc_granule ? g_dry.alloc_granule : 1;
    g_slack += (bytes + gr - 1) / gr * gr - bytes;
    g_next += (bytes + 511) / 256 * 256;
    return p;
}

static void dry_free(void *p) { (void)p; }
static void dry_zero(void *p, size_t bytes) { (void)p, (void)bytes; }
static void dry_copy(void *dst, const void *src, size_t bytes) { (void)dst, (void)src, (void)bytes; }
static void dry_upload_act(act_t *dst, const float *src, size_t n) { (void)dst, (void)src, (void)n; }
static void dry_download_act(float *dst, const act_t *src, size_t n) { (void)dst, (void)src, (void)n; }
static void dry_cast(act_t *dst, const float *src, size_t n) { (void)dst, (void)src, (void)n; }
static void dry_sync(void) {}
static void dry_grad(float *g, size_t n) { (void)g, (void)n; }
static void *dry_host_alloc(size_t bytes) { return xmalloc(bytes ? bytes : 1); }
static void dry_host_ready(const void *p) { (void)p; }

static void dry_memory(size_t *in_use, size_t *peak) {
    if (in_use) *in_use = g_bytes;
    if (peak) *peak = g_bytes;
}

const Kernels *kernels_dry_run(const Kernels *target) {
    memset(&g_dry, 0, sizeof g_dry);
    g_dry.name = target->name;
    g_dry.dry_run = 1;
    g_dry.act_bytes = target->act_bytes;
    g_dry.act_is_f32 = target->act_is_f32;
    g_dry.xent_chunk_rows = target->xent_chunk_rows;
    g_dry.alloc = dry_alloc;
    g_dry.free = dry_free;
    g_dry.zero = dry_zero;
    g_dry.copy = dry_copy;
    g_dry.upload = dry_copy;
    g_dry.download = dry_copy;
    g_dry.upload_act = dry_upload_act;
    g_dry.download_act = dry_download_act;
    g_dry.cast_to_act = dry_cast;
    g_dry.synchronize = dry_sync;
    g_dry.grad_begin = dry_grad;
    g_dry.grad_settle = dry_grad;
    g_dry.host_alloc = dry_host_alloc;  // host memory is not the plan's, and nothing reads it
    g_dry.host_free = free;
    g_dry.host_ready = dry_host_ready;
    g_dry.memory = dry_memory;
    g_dry.available = target->available;
    g_dry.workspace_bytes = target->workspace_bytes;
    g_dry.alloc_granule = target->alloc_granule;
    g_bytes = g_count = g_slack = 0;
    g_next = (uintptr_t)1 << 40;
    return &g_dry;
}

size_t kernels_dry_run_bytes(void) { return g_bytes; }
size_t kernels_dry_run_allocs(void) { return g_count; }
size_t kernels_dry_run_slack(void) { return g_slack; }
