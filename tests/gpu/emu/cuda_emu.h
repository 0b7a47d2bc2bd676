// cuda_emu.h: a small CPU emulator of the CUDA subset that kernels/cuda uses, so that the backend's
// kernels run (slowly) on machines without a GPU and tests/gpu can check them against the CPU
// backend there: `make test-gpu-emu`. Each CUDA thread of a block is a fiber on one OS thread
// (emu_runtime.cpp; under EMU_TSAN=1 also a ThreadSanitizer fiber, for races within a block); a
// fiber runs until it reaches __syncthreads / __syncwarp / a shuffle, so blocks execute with real
// barrier semantics, and a barrier that can never complete (divergent __syncthreads,
// a shuffle with an exited lane) aborts with a message. Shared memory is a function-local
// static (blocks run one after another, in an order that changes from launch to launch, see
// emu_runtime.cpp), device memory is host memory, streams are synchronous.
// Tensor cores: the WMMA subset of nvcuda::wmma the attention uses (bf16 16x16x16, fp32 accumulate),
// with each lane holding the whole tile (see the WMMA section). cuBLASLt: the subset matmul.cu
// calls, on the host, by the library's documented semantics (cublaslt_emu.h). Not emulated:
// timing, occupancy and resource limits, real warp lockstep, blocks running at the same time,
// the hardware's layout of fragments.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <utility>

// ---------------------------------------------------------------- language

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};
struct uint4 {
    unsigned x, y, z, w;
};

struct EmuFiber;
extern EmuFiber *emu_cur;
extern uint3 emu_block_idx;
extern dim3 emu_block_dim, emu_grid_dim;
uint3 &emu_thread_idx(void);
#define threadIdx (emu_thread_idx())
#define blockIdx (emu_block_idx)
#define blockDim (emu_block_dim)
#define gridDim (emu_grid_dim)

void __syncthreads(void);
void __syncwarp(unsigned mask = 0xffffffffu);
// the calling thread's lane publishes v, waits for its warp, reads the value of lane src
uint64_t emu_warp_exchange(uint64_t v, int src);
int emu_lane(void);

template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    (void)mask;
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof(T));
    uint64_t r = emu_warp_exchange(u, emu_lane() ^ lane_mask);
    T out;
    memcpy(&out, &r, sizeof(T));
    return out;
}
template <typename T>
static inline T __shfl_sync(unsigned mask, T v, int src) {
    (void)mask;
    uint64_t u = 0;
    memcpy(&u, &v, sizeof(T));
    uint64_t r = emu_warp_exchange(u, src & 31);
    T out;
    memcpy(&out, &r, sizeof(T));
    return out;
}

static inline float __uint_as_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t __float_as_uint(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
// compiled with -ffp-contract=off: each is one IEEE operation, as the _rn intrinsics are
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __dsqrt_rn(double a) { return sqrt(a); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

// bf16 as a struct of its bits
struct emu_bf16 {
    uint16_t bits;
};
extern "C" uint16_t f32_to_bf16(float f);
extern "C" float bf16_to_f32(uint16_t h);
static inline float emu_bf16_to_f32(emu_bf16 x) { return bf16_to_f32(x.bits); }
static inline emu_bf16 emu_f32_to_bf16(float f) {
    emu_bf16 b;
    b.bits = f32_to_bf16(f);
    return b;
}

// ---------------------------------------------------------------- WMMA (tensor cores)

// nvcuda::wmma, the subset the kernels use: 16x16x16 tiles, bf16 operands (matrix_a, matrix_b,
// row- or column-major), fp32 accumulators. Real fragments spread a tile over the warp's lanes in
// an unspecified layout; here every lane keeps the whole tile, under a name other than x[] so
// that kernel code which touches fragment elements (layout-dependent on hardware) does not
// compile. load/store/mma are warp collectives: all 32 lanes of a full warp must make the same
// call (same operation, pointer, ldm, layout) or the emulator aborts, and the alignment rules of
// the hardware are checked (pointer 32-byte aligned, ldm a multiple of 16 bytes).
// Memory order: a load reads the tile before its rendezvous, a store writes only the calling
// lane's 1/32 share of the tile after its rendezvous, so a missing __syncwarp between lanes'
// shared-memory writes and a load, or between a store and lanes reading what it wrote, gives wrong
// values (fibers run one after another). Not caught: a lane overwriting what another lane of its
// warp has yet to load (on hardware that needs a __syncwarp too). mma_sync adds the k products of
// each element in order in fp32 (bf16 products are exact in fp32); the hardware's summation order
// differs in the last bits.
typedef emu_bf16 __nv_bfloat16;

// the warp rendezvous of a collective: publishes token, waits for the warp, aborts unless all 32
// lanes are there with the same token; emu_warp_collective_end waits once more so that no lane
// starts the next collective (or reuses the per-warp buffer) before every lane is done with this one
void emu_warp_collective_begin(uint64_t token, const char *what);
void emu_warp_collective_end(void);
float *emu_warp_buffer(void);  // 256 floats per warp, for mma_sync's shares

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator has 16x16x16 fragments only");
    T emu_tile[16][16];  // [row][column] of the operand as the product sees it: A m x k, B k x n, C m x n
};

static inline float emu_val(float x) { return x; }
static inline float emu_val(emu_bf16 x) { return __uint_as_float((uint32_t)x.bits << 16); }
static inline void emu_set(float &d, float x) { d = x; }
static inline void emu_set(emu_bf16 &d, float x) { d = emu_f32_to_bf16(x); }

static inline uint64_t emu_token(int op, const void *p, unsigned ldm, int layout) {
    uint64_t h = 0xcbf29ce484222325ULL;
    uint64_t w[4] = {(uint64_t)op, (uint64_t)(uintptr_t)p, ldm, (uint64_t)layout};
    for (int i = 0; i < 4; i++) h = (h ^ w[i]) * 0x100000001b3ULL;
    return h | (1ULL << 63);  // never one of the plain barriers' tokens
}
template <typename T>
static inline void emu_check_ptr(const T *p, unsigned ldm, const char *what) {
    if ((uintptr_t)p % 32 != 0 || ldm % (16 / sizeof(T)) != 0) {
        fprintf(stderr, "cuda-emu: wmma %s with pointer %p (needs 32-byte alignment) and ldm %u (needs a multiple of %d)\n",
                what, (const void *)p, ldm, (int)(16 / sizeof(T)));
        abort();
    }
}
template <typename Layout>
static inline int emu_is_col(void);
template <>
inline int emu_is_col<row_major>(void) { return 0; }
template <>
inline int emu_is_col<col_major>(void) { return 1; }

template <typename Use, typename T, typename L, typename V>
static inline void fill_fragment(fragment<Use, 16, 16, 16, T, L> &f, const V &v) {
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) emu_set(f.emu_tile[r][c], (float)v);
}

// matrix_a / matrix_b: element (r, c) at p[r*ldm + c] (row_major) or p[r + c*ldm] (col_major)
template <typename Use, typename T, typename L>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ldm) {
    int col = emu_is_col<L>();
    emu_check_ptr(p, ldm, "load_matrix_sync");
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.emu_tile[r][c] = col ? p[r + (size_t)c * ldm] : p[(size_t)r * ldm + c];
    emu_warp_collective_begin(emu_token(1 + col, p, ldm, 0), "load_matrix_sync");
    emu_warp_collective_end();
}
static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm,
                                    layout_t layout) {
    int col = layout == mem_col_major;
    emu_check_ptr(p, ldm, "load_matrix_sync");
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.emu_tile[r][c] = col ? p[r + (size_t)c * ldm] : p[(size_t)r * ldm + c];
    emu_warp_collective_begin(emu_token(3, p, ldm, layout), "load_matrix_sync");
    emu_warp_collective_end();
}
static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm,
                                     layout_t layout) {
    int col = layout == mem_col_major;
    emu_check_ptr(p, ldm, "store_matrix_sync");
    emu_warp_collective_begin(emu_token(4, p, ldm, layout), "store_matrix_sync");
    emu_warp_collective_end();
    for (int e = emu_lane(); e < 256; e += 32) {  // after the rendezvous: other lanes' shares come later
        int r = e / 16, c = e % 16;
        if (col) p[r + (size_t)c * ldm] = f.emu_tile[r][c];
        else p[(size_t)r * ldm + c] = f.emu_tile[r][c];
    }
}
// d = a b + c in fp32; d may be c
template <typename LA, typename LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                            const fragment<matrix_a, 16, 16, 16, emu_bf16, LA> &a,
                            const fragment<matrix_b, 16, 16, 16, emu_bf16, LB> &b,
                            const fragment<accumulator, 16, 16, 16, float> &c) {
    float *share = emu_warp_buffer();  // each lane computes 8 of the 256 elements
    for (int e = emu_lane(); e < 256; e += 32) {
        int r = e / 16, col = e % 16;
        float s = c.emu_tile[r][col];
        for (int k = 0; k < 16; k++) s += emu_val(a.emu_tile[r][k]) * emu_val(b.emu_tile[k][col]);
        share[e] = s;
    }
    emu_warp_collective_begin(emu_token(5, NULL, 0, 0), "mma_sync");
    for (int e = 0; e < 256; e++) d.emu_tile[e / 16][e % 16] = share[e];
    emu_warp_collective_end();
}
}  // namespace wmma
}  // namespace nvcuda

// ---------------------------------------------------------------- launches

void emu_run(dim3 grid, dim3 block, const std::function<void()> &body);

template <typename... P>
struct EmuLauncher {
    dim3 grid, block;
    void (*kernel)(P...);
    template <typename... A>
    void operator()(A &&...a) {
        std::tuple<P...> args(std::forward<A>(a)...);  // converted once, as the launch does
        void (*k)(P...) = kernel;
        emu_run(grid, block, [&args, k]() { std::apply(k, args); });
    }
};
template <typename... P>
static inline EmuLauncher<P...> emu_launcher(dim3 grid, dim3 block, void (*kernel)(P...)) {
    return EmuLauncher<P...>{grid, block, kernel};
}

// ---------------------------------------------------------------- runtime API

typedef int cudaError_t;
enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorNoDevice = 100,
    cudaErrorNotReady = 600,
};
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
typedef struct EmuStream *cudaStream_t;
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
};

cudaError_t emu_set_error(cudaError_t e);
cudaError_t cudaGetLastError(void);
const char *cudaGetErrorName(cudaError_t e);
const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaMalloc(void **p, size_t n);
template <typename T>
static inline cudaError_t cudaMalloc(T **p, size_t n) {
    return cudaMalloc((void **)p, n);
}
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t n);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind, cudaStream_t s);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total);
typedef struct EmuEvent *cudaEvent_t;
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
#define cudaEventDisableTiming 2

// ---------------------------------------------------------------- counters

// What the backend asked of the device since the last reset: kernel launches (cuBLASLt calls
// count one each), host synchronisations (stream and event waits), bytes set by cudaMemsetAsync and
// bytes copied by direction. Count-only mode (bench_step --counts) executes nothing: launches
// return at once, cuBLASLt computes nothing, copies and memsets move no bytes (a copy to the host
// writes zeros), and cudaMalloc reserves address space without touching it, so the reference
// model's step can be counted on a machine without its memory or the time to run it.
struct EmuCounters {
    long launches, syncs;
    size_t memset_bytes, h2d_bytes, d2h_bytes, d2d_bytes;
    size_t staged_bytes;  // counted by the backend (cuda_backend.cu): host bytes memcpy'd into its staging ring
};
extern EmuCounters emu_counters;
extern int emu_count_only;
