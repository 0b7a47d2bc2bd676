// tile.c: the small GEMM the CPU attention is built from, C (M, N) += A (M, K) . B (K, N), all
// row-major with leading dimensions, for tiles of up to a few hundred in each dimension.
// OpenBLAS is not used for these: its threads would be called from inside the attention's own
// parallel region (oversubscription, or hand-offs per tile), and at 64 x 64 x 64 its packing
// costs as much as the product.
//
// Register blocking: 6 rows x 16 columns of C stay in registers (6 AVX-512 registers, 12 AVX2)
// while k runs; the columns past the last multiple of 16 and the rows past the last multiple of
// 6 take the same per-element path. Every element of C is C + sum over k in increasing order,
// one (fused, where the clone has FMA) multiply-add per k, so a row's result does not depend on
// which block computed it nor on M: attention_cached's rows equal attention_forward's bit for bit.
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

CPU_HOT_EXPLICIT void tile_gemm(float *C, size_t ldc, const float *A, size_t lda, const float *B, size_t ldb, int M, int N,
                       int K, int acc) {
    int n16 = N / 16 * 16;
    int m = 0;
    for (; m + MR <= M; m += MR) ROWS_BLOCK(MR);
    for (; m < M; m++) ROWS_BLOCK(1);
}
