// emu_runtime.cpp: the fiber scheduler and runtime API of the CUDA emulator (see cuda_emu.h).
#include <sys/mman.h>
#include <ucontext.h>

#include <mutex>
#include <unordered_map>

#include <vector>

#include "tests/gpu/emu/cuda_emu.h"

// Race detection (EMU_TSAN=1 builds the kernels under ThreadSanitizer): each CUDA thread is a
// TSan fiber, switches carry no ordering, and the only happens-before edges are the ones CUDA
// promises: launch -> every thread, __syncthreads, warp barriers (__syncwarp, shuffles, wmma
// collectives), thread end -> the host. So two threads of a block touching the same shared or
// global word, one of them writing, without a barrier between them is reported as a data race,
// whatever order the fibers happened to run in. Blocks are ordered one after another (their
// __shared__ arrays are the same static memory here), so races between blocks are not seen by TSan.
//
// Order: a GPU runs a grid's blocks in any order, and a block's warps in any interleaving. So that a
// kernel which depends on one (a block reading what another block of the same launch writes, two
// blocks writing one element, a thread reading a neighbour's write without a barrier) gives wrong
// or differing results here too, each launch visits its blocks in a different order (an affine
// permutation of the block indices chosen from the launch count) and runs the threads of a block
// forwards or backwards. Deterministic from one process to the next, different from one launch to
// the next: the tests that run an op or a model step twice and compare bytes compare two orders.
// SVLM_EMU_ORDER=linear restores the plain order (blocks x-fastest, threads 0 up), for debugging.
#ifdef SVLM_EMU_TSAN
#include <sanitizer/tsan_interface.h>
#define TSAN(x) x
#else
#define TSAN(x)
#endif

enum { F_RUN, F_BAR, F_WBAR, F_DONE };

// Context switch. swapcontext saves and restores the signal mask, a system call each way, and a
// kernel switches fibers at every barrier and shuffle, so on x86-64 a fiber switch is six pushes,
// a stack swap and six pops (the System V callee-saved registers; the kernels never change the
// floating-point control words). Under AddressSanitizer, which must see stack switches, and on other
// processors, ucontext does it.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define EMU_OWN_SWITCH 1
// saves the callee-saved registers on the current stack and the stack pointer in *save_sp, then
// continues on to_sp where an earlier emu_switch (or fiber_prepare) left the same layout
extern "C" void emu_switch(void **save_sp, void *to_sp);
__asm__(".text\n"
        ".globl emu_switch\n"
        ".type emu_switch, @function\n"
        "emu_switch:\n"
        "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n    pushq %r13\n    pushq %r14\n    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n    popq %r14\n    popq %r13\n    popq %r12\n    popq %rbx\n    popq %rbp\n"
        "    ret\n"
        ".size emu_switch, .-emu_switch\n"
        ".section .note.GNU-stack,\"\",@progbits\n"
        ".text\n");
#endif

struct EmuFiber {
#ifdef EMU_OWN_SWITCH
    void *sp;
#else
    ucontext_t ctx;
#endif
    uint3 tid;
    int linear, state;
    char *stack;
    void *tsan;  // the TSan fiber (EMU_TSAN)
};

EmuFiber *emu_cur;
uint3 emu_block_idx;
dim3 emu_block_dim, emu_grid_dim;

#ifdef EMU_OWN_SWITCH
static void *g_sched_sp;
#else
static ucontext_t g_sched;
#endif
static std::vector<EmuFiber> g_fibers;
static const std::function<void()> *g_body;
static size_t g_nthreads;  // of the block that runs
static uint64_t g_slots[32][32];  // [warp][lane] shuffle values
// [warp][lane] which warp barrier the lane waits at: a plain __syncwarp, a shuffle, or the token of
// a wmma collective (whose other lanes must wait at the same one)
static uint64_t g_site[32][32];
enum { SITE_SYNCWARP = 1, SITE_SHUFFLE = 2 };
static float g_warp_buf[32][256];  // per-warp buffer of the wmma emulation
static cudaError_t g_last_error;
static const size_t STACK_BYTES = 256 << 10;
static char *g_stacks[1024];  // kept for the life of the process (a plain array: LeakSanitizer sees them)
// happens-before objects of the race detection: the barriers alternate between two per
// generation, so a thread that has passed a barrier and reached the next one does not hand its
// new writes to a thread still waking from the first
#ifdef SVLM_EMU_TSAN
static char g_launch_sync, g_end_sync, g_bar_sync[2], g_warp_sync[32][2];
static void *g_sched_tsan;
#endif
static unsigned g_bar_gen, g_warp_gen[32];

uint3 &emu_thread_idx(void) { return emu_cur->tid; }
int emu_lane(void) { return emu_cur->linear % 32; }

// the scheduler runs fiber f until it yields
static void switch_to_fiber(EmuFiber *f) {
    emu_cur = f;
    TSAN(__tsan_switch_to_fiber(f->tsan, __tsan_switch_to_fiber_no_sync));
#ifdef EMU_OWN_SWITCH
    emu_switch(&g_sched_sp, f->sp);
#else
    swapcontext(&g_sched, &f->ctx);
#endif
}
// the running fiber hands control back to the scheduler
static void switch_to_scheduler(void) {
    TSAN(__tsan_switch_to_fiber(g_sched_tsan, __tsan_switch_to_fiber_no_sync));
#ifdef EMU_OWN_SWITCH
    emu_switch(&emu_cur->sp, g_sched_sp);
#else
    swapcontext(&emu_cur->ctx, &g_sched);
#endif
}

static void yield_to_scheduler(int state) {
    emu_cur->state = state;
#ifdef SVLM_EMU_TSAN
    int warp = emu_cur->linear / 32;
    char *sync = state == F_BAR ? &g_bar_sync[g_bar_gen & 1] : &g_warp_sync[warp][g_warp_gen[warp] & 1];
    __tsan_release(sync);
    switch_to_scheduler();
    __tsan_acquire(sync);
#else
    switch_to_scheduler();
#endif
}

void __syncthreads(void) { yield_to_scheduler(F_BAR); }
void __syncwarp(unsigned mask) {
    (void)mask;
    g_site[emu_cur->linear / 32][emu_cur->linear % 32] = SITE_SYNCWARP;
    yield_to_scheduler(F_WBAR);
}

uint64_t emu_warp_exchange(uint64_t v, int src) {
    int lane = emu_cur->linear % 32, warp = emu_cur->linear / 32;
    g_slots[warp][lane] = v;
    g_site[warp][lane] = SITE_SHUFFLE;
    yield_to_scheduler(F_WBAR);
    int src_linear = warp * 32 + src;
    if (src_linear >= (int)g_fibers.size() || g_fibers[src_linear].state == F_DONE) {
        fprintf(stderr, "cuda-emu: thread %d shuffles with lane %d, which has exited or does not exist\n",
                emu_cur->linear, src);
        abort();
    }
    uint64_t r = g_slots[warp][src];
    yield_to_scheduler(F_WBAR);  // every lane reads before any lane writes its slot again
    return r;
}

void emu_warp_collective_begin(uint64_t token, const char *what) {
    int lane = emu_cur->linear % 32, warp = emu_cur->linear / 32;
    if ((size_t)(warp + 1) * 32 > g_nthreads) {
        fprintf(stderr, "cuda-emu: wmma %s in a warp of fewer than 32 threads (block of %zu)\n", what, g_nthreads);
        abort();
    }
    g_site[warp][lane] = token;
    yield_to_scheduler(F_WBAR);
    for (int l = 0; l < 32; l++) {
        const EmuFiber *f = &g_fibers[warp * 32 + l];
        if (f->state == F_DONE || g_site[warp][l] != token) {
            fprintf(stderr, "cuda-emu: wmma %s by thread %d is not warp-uniform: lane %d %s\n", what, emu_cur->linear,
                    l, f->state == F_DONE ? "has exited" : "waits at another warp barrier or with other arguments");
            abort();
        }
    }
}
void emu_warp_collective_end(void) {
    yield_to_scheduler(F_WBAR);  // the site stays: lanes still checking read it
}
float *emu_warp_buffer(void) { return g_warp_buf[emu_cur->linear / 32]; }

static void fiber_entry(void) {
    TSAN(__tsan_acquire(&g_launch_sync));
    (*g_body)();
    emu_cur->state = F_DONE;
    TSAN(__tsan_release(&g_end_sync));
    switch_to_scheduler();  // never resumed: the next block starts the fiber afresh
    abort();
}

// the fiber's first switch_to_fiber starts fiber_entry at the top of its stack
static void fiber_prepare(EmuFiber *f) {
#ifdef EMU_OWN_SWITCH
    // from the top: a zero return address for fiber_entry (entered with rsp % 16 == 8, as after a
    // call), the address emu_switch's ret jumps to, six zero registers for its pops
    uintptr_t top = ((uintptr_t)f->stack + STACK_BYTES) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = NULL;
    *--sp = (void *)fiber_entry;
    for (int i = 0; i < 6; i++) *--sp = NULL;
    f->sp = sp;
#else
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack;
    f->ctx.uc_stack.ss_size = STACK_BYTES;
    f->ctx.uc_link = NULL;  // fiber_entry never returns
    makecontext(&f->ctx, fiber_entry, 0);
#endif
}

// the order of one launch's blocks: first, first + stride, ... (mod nblocks), stride coprime to
// nblocks so that every block comes once
struct LaunchOrder {
    size_t nblocks, first, stride;
    int threads_backwards;
};
static uint64_t g_launches;
static size_t gcd_size(size_t a, size_t b) {
    while (b) {
        size_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}
static LaunchOrder launch_order(size_t nblocks) {
    static int linear = -1;
    if (linear < 0) {
        const char *e = getenv("SVLM_EMU_ORDER");
        linear = e && strcmp(e, "linear") == 0;
    }
    LaunchOrder o = {nblocks, 0, 1, 0};
    uint64_t n = g_launches++;
    if (linear) return o;
    // splitmix64 of the launch count: launches in a row get unrelated orders
    uint64_t h = (n + 1) * 0x9e3779b97f4a7c15ULL;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    h ^= h >> 31;
    o.threads_backwards = (int)(h & 1);
    o.first = (size_t)(h >> 1) % nblocks;
    // the plain order and its reverse come often (stride 1 and nblocks - 1): the two a careless
    // kernel is most likely to get away with on a GPU, where low block indices tend to run first
    size_t s = (h >> 33) % 4 == 0 ? 1 : (h >> 33) % 4 == 1 ? nblocks - 1 : 1 + (size_t)(h >> 35) % nblocks;
    while (nblocks > 1 && gcd_size(s % nblocks, nblocks) != 1) s++;
    o.stride = nblocks > 1 ? s % nblocks : 1;
    return o;
}

EmuCounters emu_counters;
int emu_count_only;

void emu_run(dim3 grid, dim3 block, const std::function<void()> &body) {
    size_t nthreads = (size_t)block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
        grid.z > 65535 || block.z > 64) {
        emu_set_error(cudaErrorInvalidConfiguration);
        return;
    }
    emu_counters.launches++;
    if (emu_count_only) return;
    if (g_fibers.size() < 1024) {
        g_fibers.resize(1024);
        for (size_t i = 0; i < 1024; i++) {
            if (!g_stacks[i]) g_stacks[i] = (char *)malloc(STACK_BYTES);
            g_fibers[i].stack = g_stacks[i];
            TSAN(g_fibers[i].tsan = __tsan_create_fiber(0));
        }
    }
    g_body = &body;
    g_nthreads = nthreads;
    emu_grid_dim = grid;
    emu_block_dim = block;
    std::vector<EmuFiber *> fs(nthreads);
    TSAN(g_sched_tsan = __tsan_get_current_fiber());
    LaunchOrder order = launch_order((size_t)grid.x * grid.y * grid.z);
    size_t lin = order.first;
    for (size_t nb = 0; nb < order.nblocks; nb++, lin = (lin + order.stride) % order.nblocks) {
        unsigned bx = (unsigned)(lin % grid.x), by = (unsigned)(lin / grid.x % grid.y),
                 bz = (unsigned)(lin / ((size_t)grid.x * grid.y));
        emu_block_idx = uint3{bx, by, bz};
        for (size_t t = 0; t < nthreads; t++) {
            EmuFiber *f = &g_fibers[t];
            f->linear = (int)t;
            f->tid = uint3{(unsigned)(t % block.x), (unsigned)(t / block.x % block.y),
                           (unsigned)(t / ((size_t)block.x * block.y))};
            f->state = F_RUN;
            fiber_prepare(f);
            fs[t] = f;
        }
        g_bar_gen = 0;
        memset(g_warp_gen, 0, sizeof g_warp_gen);
        TSAN(__tsan_release(&g_launch_sync));
        for (;;) {
            for (size_t k = 0; k < nthreads; k++) {
                size_t t = order.threads_backwards ? nthreads - 1 - k : k;
                if (fs[t]->state != F_RUN) continue;
                switch_to_fiber(fs[t]);
            }
            // every thread waits at a barrier or is done: release what can be released
            int released = 0, alive = 0, at_bar = 0;
            for (size_t w = 0; w * 32 < nthreads; w++) {
                size_t t1 = (w + 1) * 32 < nthreads ? (w + 1) * 32 : nthreads;
                int wbar = 0, other = 0;
                for (size_t t = w * 32; t < t1; t++) {
                    if (fs[t]->state == F_WBAR) wbar++;
                    else if (fs[t]->state != F_DONE) other++;
                }
                if (wbar && !other) {
                    for (size_t t = w * 32; t < t1; t++)
                        if (fs[t]->state == F_WBAR) fs[t]->state = F_RUN;
                    g_warp_gen[w]++;
                    released = 1;
                }
            }
            if (released) continue;
            for (size_t t = 0; t < nthreads; t++) {
                if (fs[t]->state != F_DONE) alive++;
                if (fs[t]->state == F_BAR) at_bar++;
            }
            if (alive == 0) break;
            if (at_bar == alive) {
                for (size_t t = 0; t < nthreads; t++)
                    if (fs[t]->state == F_BAR) fs[t]->state = F_RUN;
                g_bar_gen++;
                continue;
            }
            fprintf(stderr, "cuda-emu: deadlock in block (%u,%u,%u): %d threads alive, %d at "
                    "__syncthreads, the rest at warp barriers that part of their warp never reaches\n",
                    bx, by, bz, alive, at_bar);
            abort();
        }
        TSAN(__tsan_acquire(&g_end_sync));
    }
    emu_cur = NULL;
}

// ---------------------------------------------------------------- runtime API

cudaError_t emu_set_error(cudaError_t e) {
    if (g_last_error == cudaSuccess) g_last_error = e;
    return e;
}
cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}
const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    default: return "cudaErrorUnknown";
    }
}
const char *cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
cudaError_t cudaGetDeviceCount(int *n) {
    const char *off = getenv("SVLM_EMU_NO_DEVICE");  // to test the no-device path
    *n = off && *off ? 0 : 1;
    return *n ? cudaSuccess : cudaErrorNoDevice;
}
cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
    (void)d;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "svlm CUDA emulator");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 4;
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) {
    *s = NULL;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    (void)s;
    emu_counters.syncs++;
    return cudaSuccess;
}
// count-only mode: blocks mapped without reserving memory (never touched: nothing executes)
static std::unordered_map<void *, size_t> g_mapped;
static std::mutex g_mapped_lock;
// exactly n bytes (16-byte aligned, as malloc gives), so that AddressSanitizer sees a kernel that
// reads or writes past the end of a buffer (build with EMU_SAN=1)
cudaError_t cudaMalloc(void **p, size_t n) {
    if (emu_count_only) {
        void *q = mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (q == MAP_FAILED) return emu_set_error(cudaErrorMemoryAllocation);
        std::lock_guard<std::mutex> g(g_mapped_lock);
        g_mapped[q] = n ? n : 1;
        *p = q;
        return cudaSuccess;
    }
    *p = malloc(n ? n : 1);
    if (!*p) return emu_set_error(cudaErrorMemoryAllocation);
    memset(*p, 0xA5, n);  // garbage, as cudaMalloc gives
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    {
        std::lock_guard<std::mutex> g(g_mapped_lock);
        auto it = g_mapped.find(p);
        if (it != g_mapped.end()) {
            munmap(p, it->second);
            g_mapped.erase(it);
            return cudaSuccess;
        }
    }
    free(p);
    return cudaSuccess;
}
// host memory the host writes: never the count-only mapping's lazily-zero pages (they would
// work, but malloc keeps ASan's view of the bounds)
cudaError_t cudaMallocHost(void **p, size_t n) {
    *p = malloc(n ? n : 1);
    return *p ? cudaSuccess : emu_set_error(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) {
    (void)s;
    emu_counters.memset_bytes += n;
    if (!emu_count_only) memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind, cudaStream_t s) {
    (void)s;
    if (kind == cudaMemcpyHostToDevice) emu_counters.h2d_bytes += n;
    else if (kind == cudaMemcpyDeviceToHost) emu_counters.d2h_bytes += n;
    else if (kind == cudaMemcpyDeviceToDevice) emu_counters.d2d_bytes += n;
    if (!emu_count_only) memmove(dst, src, n);
    else if (kind == cudaMemcpyDeviceToHost) memset(dst, 0, n);  // the host reads zeros
    return cudaSuccess;
}
// streams are synchronous here: an event is complete once recorded
struct EmuEvent {
    int recorded;
};
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
    (void)flags;
    *e = (cudaEvent_t)calloc(1, sizeof(EmuEvent));
    return *e ? cudaSuccess : emu_set_error(cudaErrorMemoryAllocation);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    free(e);
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    (void)s;
    e->recorded = 1;
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
    (void)e;
    return cudaSuccess;  // done: the work before it ran when it was enqueued
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    (void)e;
    emu_counters.syncs++;
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total) {
    *free_b = (size_t)1 << 30;
    *total = (size_t)1 << 34;
    return cudaSuccess;
}
