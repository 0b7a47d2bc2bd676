// colsum.cu: deterministic sums over the rows of an (N, C) matrix (rows ld apart) into fp32 per-column gradients
// (+=; = for the first writer of a gradient, grad_first.cu): the matmul bias gradient and the
// LayerNorm / RMSNorm weight and bias gradients.
// Pass 1: the rows are cut into chunks whose size depends only on N; block (column tile, chunk)
// sums its rows per column (8 row lanes, then the 8 lane sums in order) into a scratch buffer.
// Pass 2: one thread per column adds the chunk sums in chunk order (in double) and adds the
// result to the gradient (or stores it there). No atomics, so the same inputs always give the same bits.
#include "kernels/cuda/common.cuh"

enum { CS_BIAS, CS_LAYERNORM, CS_RMSNORM };

#define CS_MAX_CHUNKS 256

static int chunk_rows_for(int N) {
    int rows = (N + CS_MAX_CHUNKS - 1) / CS_MAX_CHUNKS;
    return rows < 32 ? 32 : rows;
}

// block (32, 8); grid (ceil(C/32), nchunks); partial [nacc][nchunks][C]
template <int MODE>
__global__ void __launch_bounds__(256) colsum_partial_kernel(float *partial, const bf16 *dout, const bf16 *inp,
                                                             const float *mean, const float *rstd, int N, int C,
                                                             int ld, int chunk_rows) {
    __shared__ float s0[8][33], s1[8][33];
    int tx = threadIdx.x, ty = threadIdx.y;
    int c = blockIdx.x * 32 + tx, chunk = blockIdx.y, nchunks = gridDim.y;
    int r0 = chunk * chunk_rows, r1 = r0 + chunk_rows < N ? r0 + chunk_rows : N;
    float a0 = 0.0f, a1 = 0.0f;
    if (c < C) {
        for (int r = r0 + ty; r < r1; r += 8) {
            size_t o = (size_t)r * ld + c;
            float g = bf2f(dout[o]);
            if (MODE == CS_BIAS) {
                a0 += g;
            } else if (MODE == CS_LAYERNORM) {
                float xhat = (bf2f(inp[o]) - mean[r]) * rstd[r];
                a0 += g * xhat;
                a1 += g;
            } else {
                a0 += g * (bf2f(inp[o]) * rstd[r]);
            }
        }
    }
    s0[ty][tx] = a0;
    s1[ty][tx] = a1;
    __syncthreads();
    if (ty == 0 && c < C) {
        float t0 = 0.0f, t1 = 0.0f;
        for (int k = 0; k < 8; k++) {
            t0 += s0[k][tx];
            t1 += s1[k][tx];
        }
        partial[(size_t)chunk * C + c] = t0;
        if (MODE == CS_LAYERNORM) partial[((size_t)nchunks + chunk) * C + c] = t1;
    }
}

__global__ void colsum_final_kernel(float *dst0, float *dst1, const float *partial, int nchunks, int C, int set0,
                                    int set1) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    if (dst0) {
        double t = 0.0;
        for (int ch = 0; ch < nchunks; ch++) t += partial[(size_t)ch * C + c];
        dst0[c] = set0 ? (float)t : dst0[c] + (float)t;
    }
    if (dst1) {
        double t = 0.0;
        for (int ch = 0; ch < nchunks; ch++) t += partial[((size_t)nchunks + ch) * C + c];
        dst1[c] = set1 ? (float)t : dst1[c] + (float)t;
    }
}

template <int MODE>
static void colsum(float *dst0, float *dst1, const bf16 *dout, const bf16 *inp, const float *mean,
                   const float *rstd, int N, int C, int ld) {
    if (N <= 0 || C <= 0 || (!dst0 && !dst1)) return;
    int chunk_rows = chunk_rows_for(N);
    int nchunks = (N + chunk_rows - 1) / chunk_rows;
    int nacc = MODE == CS_LAYERNORM ? 2 : 1;
    float *partial = (float *)cuda_scratch(SCRATCH_REDUCE, (size_t)nacc * nchunks * C * sizeof(float));
    dim3 grid(ceil_div_u(C, 32), nchunks), block(32, 8);
    LAUNCH(grid, block, colsum_partial_kernel<MODE>)(partial, dout, inp, mean, rstd, N, C, ld, chunk_rows);
    cudaCheckLaunch();
    int set0 = cuda_grad_first(dst0, (size_t)C), set1 = cuda_grad_first(dst1, (size_t)C);
    LAUNCH(ceil_div_u(C, 256), 256, colsum_final_kernel)(dst0, dst1, partial, nchunks, C, set0, set1);
    cudaCheckLaunch();
}

// nchunks grows with N up to CS_MAX_CHUNKS; layer norms keep two sums per chunk
size_t cuda_colsum_scratch_max(size_t rows, int width) {
    if (rows == 0 || width <= 0) return 0;
    size_t nchunks = rows > (size_t)CS_MAX_CHUNKS * 32 ? CS_MAX_CHUNKS : (rows + 31) / 32;
    return 2 * nchunks * (size_t)width * sizeof(float);
}

void cuda_colsum_bias(float *dbias, const bf16 *dout, int N, int C, int ld) {
    colsum<CS_BIAS>(dbias, NULL, dout, NULL, NULL, NULL, N, C, ld);
}

void cuda_colsum_layernorm(float *dw, float *db, const bf16 *dout, const bf16 *inp, const float *mean,
                           const float *rstd, int N, int C) {
    colsum<CS_LAYERNORM>(dw, db, dout, inp, mean, rstd, N, C, C);
}

void cuda_colsum_rmsnorm(float *dw, const bf16 *dout, const bf16 *inp, const float *rstd, int N, int C) {
    colsum<CS_RMSNORM>(dw, NULL, dout, inp, NULL, rstd, N, C, C);
}
