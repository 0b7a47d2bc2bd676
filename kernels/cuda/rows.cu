// rows.cu: whole-row copies: token embedding lookup (rows with a negative id are left untouched:
// image slots that scatter_rows fills), gather and scatter of rows by index, and strided row
// copies (column slices of the fused q/k/v rows). One block-row of threads per output row,
// copying 16 bytes at a time when rows, strides and pointers allow it.
#include "kernels/cuda/common.cuh"

// dst row di = src row si for each i with si >= 0; rows of C bf16. mode 0: embedding (si =
// ids[i], skipped when < 0 or >= V), 1: gather (si = idx[i], di = i; a zero row when si < 0), 2:
// scatter (si = i, di = idx[i]),
// 3: strided (si = di = i); rows lds and ldd elements apart in src and dst
__global__ void copy_rows_kernel(bf16 *dst, const bf16 *src, const int *idx, int M, int C, int V, int mode,
                                 int lds, int ldd, bool vec) {
    int i = blockIdx.x;
    if (i >= M) return;
    int si = i, di = i;
    if (mode == 0) {
        si = idx[i];
        if (si < 0 || si >= V) return;  // the host checks ids against V before they get here
    } else if (mode == 1) {
        si = idx[i];
        if (si < 0) {
            bf16 *d = dst + (size_t)di * ldd;
            for (int c = threadIdx.x; c < C; c += blockDim.x) d[c] = f2bf(0.0f);
            return;
        }
    } else if (mode == 2) {
        di = idx[i];
    }
    const bf16 *s = src + (size_t)si * lds;
    bf16 *d = dst + (size_t)di * ldd;
    if (vec) {  // C, lds and ldd multiples of 8 and both base pointers 16-byte aligned
        const uint4 *s4 = (const uint4 *)s;
        uint4 *d4 = (uint4 *)d;
        for (int c = threadIdx.x; c < C / 8; c += blockDim.x) d4[c] = s4[c];
    } else {
        for (int c = threadIdx.x; c < C; c += blockDim.x) d[c] = s[c];
    }
}

static void copy_rows(act_t *dst, const act_t *src, const int *idx, int M, int C, int V, int mode, int lds = -1,
                      int ldd = -1) {
    if (M <= 0 || C <= 0) return;
    if (lds < 0) lds = C;
    if (ldd < 0) ldd = C;
    bool vec = C % 8 == 0 && lds % 8 == 0 && ldd % 8 == 0 && aligned16(dst) && aligned16(src);
    int threads = C / (vec ? 8 : 1);
    threads = threads >= 256 ? 256 : (threads + 31) / 32 * 32;
    LAUNCH(M, threads, copy_rows_kernel)((bf16 *)dst, (const bf16 *)src, idx, M, C, V, mode, lds, ldd, vec);
    cudaCheckLaunch();
}

void cuda_embedding_forward(act_t *out, const int *ids, const act_t *table, int N, int C, int V) {
    copy_rows(out, table, ids, N, C, V, 0);
}

void cuda_gather_rows(act_t *out, const act_t *inp, const int *idx, int M, int C) {
    copy_rows(out, inp, idx, M, C, 0, 1);
}

void cuda_scatter_rows(act_t *out, const act_t *inp, const int *idx, int M, int C) {
    copy_rows(out, inp, idx, M, C, 0, 2);
}

void cuda_copy_rows(act_t *out, const act_t *inp, int N, int C, int ld_out, int ld_inp) {
    CHECK(ld_out >= C && ld_inp >= C, "copy_rows: row strides %d, %d below the row's %d", ld_out, ld_inp, C);
    copy_rows(out, inp, NULL, N, C, 0, 3, ld_inp, ld_out);
}
