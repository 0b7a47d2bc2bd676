// tile.c: the small GEMM the CPU attention is built from, C (M, N) += A (M, K) . B (K, N), all
// row-major with leading dimensions, for tiles of up to a few hundred in each dimension.
// OpenBLAS is not used for these: its threads would be called from inside the attention's own
// parallel region (oversubscription, or hand-offs per tile), and at 64 x 64 x 64 its packing
// costs as much as the product.
//
// Register blocking: 6 rows x 16 columns of C stay in registers (6 AVX-512 registers, 12 AVX2:
// tile_gemm_avx2) while k runs, then blocks of 4, 2 and 1 rows for the rest (64 = 10 x 6 + 4); the
// columns past the last multiple of 16 take the same per-element path. Every element of C is C + sum over k in increasing order,
// one (fused, where the clone has FMA) multiply-add per k, so a row's result does not depend on
// which block computed it nor on M: attention_cached's rows equal attention_forward's bit for bit.
#include "kernels/cpu/blas_core.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/simd.h"

#define MR 6

#define ROWS_BLOCK(R)                                                                         \
    do {                                                                                      \
        for (int n = 0; n < n16; n += 16) {                                                   \
            vf16 c[R];                                                                        \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                               \
                c[r] = acc ? *(const vf16 *)(C + (size_t)(m + r) * ldc + n) : (vf16){0};      \
            for (int k = 0; k < K; k++) {                                                     \
                vf16 b = *(const vf16 *)(B + (size_t)k * ldb + n);                            \
                _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) c[r] += A[(size_t)(m + r) * lda + k] * b;         \
            }                                                                                 \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) *(vf16 *)(C + (size_t)(m + r) * ldc + n) = c[r];      \
        }                                                                                     \
        for (int r = 0; r < R; r++)                                                           \
            for (int n = n16; n < N; n++) {                                                   \
                float s = acc ? C[(size_t)(m + r) * ldc + n] : 0.0f;                           \
                for (int k = 0; k < K; k++) s += A[(size_t)(m + r) * lda + k] * B[(size_t)k * ldb + n]; \
                C[(size_t)(m + r) * ldc + n] = s;                                             \
            }                                                                                 \
    } while (0)

// the clones of the 16-float kernel: AVX-512 (one register per vf16), baseline
CPU_HOT_EXPLICIT static void tile_gemm_vf16(float *C, size_t ldc, const float *A, size_t lda, const float *B, size_t ldb,
                                            int M, int N, int K, int acc) {
    int n16 = N / 16 * 16;
    int m = 0;
    for (; m + MR <= M; m += MR) ROWS_BLOCK(MR);
    for (; m + 4 <= M; m += 4) ROWS_BLOCK(4);  // 64 rows = 10 x 6 + 4
    for (; m + 2 <= M; m += 2) ROWS_BLOCK(2);
    for (; m < M; m++) ROWS_BLOCK(1);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
// AVX2: GCC lowers a 64-byte vector through the stack when the target's registers are 32 bytes
// (the v3 clone of the kernel above ran at a few GFLOP/s, 35% of a mid-preset step on an AVX2
// EPYC), so this one holds the 6 x 16 block as 12 explicit 8-float vectors (BLIS's Haswell shape:
// 12 accumulators, 2 for B, 1 broadcast of 16 ymm). The same arithmetic per element as the other
// clones (c = fma(a, b, c) in k order, whichever block computes it).

#define ROWS_BLOCK8(R)                                                                        \
    do {                                                                                      \
        for (int n = 0; n < n16; n += 16) {                                                   \
            vf8 c0[R], c1[R];                                                                 \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                             \
                c0[r] = acc ? *(const vf8 *)(C + (size_t)(m + r) * ldc + n) : (vf8){0};       \
                c1[r] = acc ? *(const vf8 *)(C + (size_t)(m + r) * ldc + n + 8) : (vf8){0};   \
            }                                                                                 \
            for (int k = 0; k < K; k++) {                                                     \
                vf8 b0 = *(const vf8 *)(B + (size_t)k * ldb + n), b1 = *(const vf8 *)(B + (size_t)k * ldb + n + 8); \
                _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                         \
                    float a = A[(size_t)(m + r) * lda + k];                                   \
                    c0[r] += a * b0;                                                          \
                    c1[r] += a * b1;                                                          \
                }                                                                             \
            }                                                                                 \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                             \
                *(vf8 *)(C + (size_t)(m + r) * ldc + n) = c0[r];                              \
                *(vf8 *)(C + (size_t)(m + r) * ldc + n + 8) = c1[r];                          \
            }                                                                                 \
        }                                                                                     \
        for (int r = 0; r < R; r++)                                                           \
            for (int n = n16; n < N; n++) {                                                   \
                float s = acc ? C[(size_t)(m + r) * ldc + n] : 0.0f;                           \
                for (int k = 0; k < K; k++) s += A[(size_t)(m + r) * lda + k] * B[(size_t)k * ldb + n]; \
                C[(size_t)(m + r) * ldc + n] = s;                                             \
            }                                                                                 \
    } while (0)

__attribute__((target("arch=x86-64-v3"), optimize("fp-contract=fast", "no-tree-vectorize"))) static void
tile_gemm_avx2(float *C, size_t ldc, const float *A, size_t lda, const float *B, size_t ldb, int M, int N, int K,
               int acc) {
    int n16 = N / 16 * 16;
    int m = 0;
    for (; m + MR <= M; m += MR) ROWS_BLOCK8(MR);
    for (; m + 4 <= M; m += 4) ROWS_BLOCK8(4);
    for (; m + 2 <= M; m += 2) ROWS_BLOCK8(2);
    for (; m < M; m++) ROWS_BLOCK8(1);
}

void tile_gemm(float *C, size_t ldc, const float *A, size_t lda, const float *B, size_t ldb, int M, int N, int K,
               int acc) {
    // the CPU's best ISA, once (every thread computes the same value)
    static int isa = -1;
    int i = __atomic_load_n(&isa, __ATOMIC_RELAXED);
    if (i < 0) {
        i = (int)cpu_isa();
        __atomic_store_n(&isa, i, __ATOMIC_RELAXED);
    }
    if (i == CPU_ISA_AVX2) tile_gemm_avx2(C, ldc, A, lda, B, ldb, M, N, K, acc);
    else tile_gemm_vf16(C, ldc, A, lda, B, ldb, M, N, K, acc);  // AVX-512: its v4 clone
}
#else
void tile_gemm(float *C, size_t ldc, const float *A, size_t lda, const float *B, size_t ldb, int M, int N, int K,
               int acc) {
    tile_gemm_vf16(C, ldc, A, lda, B, ldb, M, N, K, acc);
}
#endif
