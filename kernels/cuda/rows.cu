// rows.cu: whole-row copies: token embedding lookup (rows with a negative id are left untouched:
// image slots that scatter_rows fills), gather and scatter of rows by index. One block-row of
// threads per output row, copying 16 bytes at a time when rows and pointers allow it.
#include "kernels/cuda/common.cuh"

// dst row di = src row si for each i with si >= 0; rows of C bf16. mode 0: embedding (si =
// ids[i], skipped when < 0 or >= V), 1: gather (si = idx[i], di = i), 2: scatter (si = i, di = idx[i])
__global__ void copy_rows_kernel(bf16 *dst, const bf16 *src, const int *idx, int M, int C, int V, int mode,
                                 bool vec) {
    int i = blockIdx.x;
    if (i >= M) return;
    int si = i, di = i;
    if (mode == 0) {
        si = idx[i];
        if (si < 0 || si >= V) return;  // the host checks ids against V before they get here
    } else if (mode == 1) {
        si = idx[i];
    } else {
        di = idx[i];
    }
    const bf16 *s = src + (size_t)si * C;
    bf16 *d = dst + (size_t)di * C;
    if (vec) {  // C % 8 == 0 and both base pointers 16-byte aligned
        const uint4 *s4 = (const uint4 *)s;
        uint4 *d4 = (uint4 *)d;
        for (int c = threadIdx.x; c < C / 8; c += blockDim.x) d4[c] = s4[c];
    } else {
        for (int c = threadIdx.x; c < C; c += blockDim.x) d[c] = s[c];
    }
}

static void copy_rows(act_t *dst, const act_t *src, const int *idx, int M, int C, int V, int mode) {
    if (M <= 0 || C <= 0) return;
    bool vec = C % 8 == 0 && aligned16(dst) && aligned16(src);
    int threads = C / (vec ? 8 : 1);
    threads = threads >= 256 ? 256 : (threads + 31) / 32 * 32;
    LAUNCH(M, threads, copy_rows_kernel)((bf16 *)dst, (const bf16 *)src, idx, M, C, V, mode, vec);
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
