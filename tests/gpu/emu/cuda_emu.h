// cuda_emu.h: a small CPU emulator of the CUDA subset that kernels/cuda uses, so that the backend's
// kernels run (slowly) on machines without a GPU and tests/gpu can check them against the CPU
// backend there: `make test-gpu-emu`. Each CUDA thread of a block is a fiber (ucontext) on one OS
// thread; a fiber runs until it reaches __syncthreads / __syncwarp / a shuffle, so blocks execute
// with real barrier semantics, and a barrier that can never complete (divergent __syncthreads,
// a shuffle with an exited lane) aborts with a message. Shared memory is a function-local
// static (blocks run one after another), device memory is host memory, streams are synchronous.
// cuBLASLt is absent: the matmul runs on its fallback kernel. Not emulated: timing, occupancy and
// resource limits, real warp lockstep, memory-model races between blocks.
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
