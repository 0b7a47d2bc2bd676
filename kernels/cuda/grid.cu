// grid.cu: ops on token-major patch grids (B, H*W, C), token y*W + x: 2x2 average pooling and the
// LDP connector's depthwise 3x3 conv (forward, dinp +=, deterministic dw/dbias), and the ViT
// patch embedding inputs (im2col of the image, class token plus positions). One thread per output
// element, channels fastest so that a warp touches consecutive memory; sums in the CPU's order.
#include "kernels/cuda/common.cuh"

__global__ void avgpool_forward_kernel(bf16 *out, const bf16 *inp, int B, int H, int W, int C) {
    int H2 = H / 2, W2 = W / 2;
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)B * H2 * W2 * C) return;
    int c = (int)(e % C);
    size_t t = e / C;  // b * H2 * W2 + oy * W2 + ox
    int ox = (int)(t % W2), oy = (int)(t / W2 % H2), b = (int)(t / ((size_t)W2 * H2));
    const bf16 *a = inp + ((size_t)b * H * W + (size_t)(2 * oy) * W + 2 * ox) * C + c;
    size_t right = C, down = (size_t)W * C;
    out[e] = f2bf((((bf2f(a[0]) + bf2f(a[right])) + bf2f(a[down])) + bf2f(a[down + right])) / 4.0f);
}

__global__ void avgpool_backward_kernel(bf16 *dinp, const bf16 *dout, int B, int H, int W, int C) {
    int H2 = H / 2, W2 = W / 2;
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)B * H * W * C) return;
    int c = (int)(e % C);
    size_t t = e / C;
    int x = (int)(t % W), y = (int)(t / W % H), b = (int)(t / ((size_t)W * H));
    dinp[e] = f2bf(bf2f(dout[((size_t)b * H2 * W2 + (size_t)(y / 2) * W2 + x / 2) * C + c]) / 4.0f);
}

void cuda_avgpool2x2_forward(act_t *out, const act_t *inp, int B, int H, int W, int C) {
    CHECK(H % 2 == 0 && W % 2 == 0, "avgpool2x2 needs an even grid, got %dx%d", H, W);
    size_t n = (size_t)B * (H / 2) * (W / 2) * C;
    if (n == 0) return;
    LAUNCH(ceil_div_u(n, 256), 256, avgpool_forward_kernel)((bf16 *)out, (const bf16 *)inp, B, H, W, C);
    cudaCheckLaunch();
}

void cuda_avgpool2x2_backward(act_t *dinp, const act_t *dout, int B, int H, int W, int C) {
    CHECK(H % 2 == 0 && W % 2 == 0, "avgpool2x2 needs an even grid, got %dx%d", H, W);
    size_t n = (size_t)B * H * W * C;
    if (n == 0) return;
    LAUNCH(ceil_div_u(n, 256), 256, avgpool_backward_kernel)((bf16 *)dinp, (const bf16 *)dout, B, H, W, C);
    cudaCheckLaunch();
}

// ---------------------------------------------------------------- depthwise 3x3 conv

// out[y,x,c] = sum over taps (ky, kx) in order of w[c,ky,kx] inp[y+ky-1, x+kx-1, c], then + bias
__global__ void dwconv_forward_kernel(bf16 *out, const bf16 *inp, const bf16 *w, const bf16 *bias, int B, int H,
                                      int W, int C) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)B * H * W * C) return;
    int c = (int)(e % C);
    size_t t = e / C;
    int x = (int)(t % W), y = (int)(t / W % H), b = (int)(t / ((size_t)W * H));
    float o = 0.0f;
    for (int ky = 0; ky < 3; ky++) {
        int iy = y + ky - 1;
        if (iy < 0 || iy >= H) continue;  // zero padding
        for (int kx = 0; kx < 3; kx++) {
            int ix = x + kx - 1;
            if (ix < 0 || ix >= W) continue;
            o += bf2f(w[(size_t)c * 9 + ky * 3 + kx]) * bf2f(inp[((size_t)b * H * W + (size_t)iy * W + ix) * C + c]);
        }
    }
    if (bias) o += bf2f(bias[c]);
    out[e] = f2bf(o);
}

// dinp[y,x,c] += sum over taps of w[c,ky,kx] dout[y-ky+1, x-kx+1, c]
__global__ void dwconv_backward_dinp_kernel(bf16 *dinp, const bf16 *dout, const bf16 *w, int B, int H, int W,
                                            int C) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)B * H * W * C) return;
    int c = (int)(e % C);
    size_t t = e / C;
    int x = (int)(t % W), y = (int)(t / W % H), b = (int)(t / ((size_t)W * H));
    float acc = 0.0f;
    for (int ky = 0; ky < 3; ky++) {
        int oy = y - ky + 1;
        if (oy < 0 || oy >= H) continue;
        for (int kx = 0; kx < 3; kx++) {
            int ox = x - kx + 1;
            if (ox < 0 || ox >= W) continue;
            acc += bf2f(w[(size_t)c * 9 + ky * 3 + kx]) * bf2f(dout[((size_t)b * H * W + (size_t)oy * W + ox) * C + c]);
        }
    }
    dinp[e] = f2bf(bf2f(dinp[e]) + acc);
}

// dw[c,t] and dbias[c] sums over all tokens: pass 1, block (32 channels, 8 token lanes) per chunk
// of tokens, writes partial [10][nchunks][C] (taps 0..8, then the bias)
#define DW_MAX_CHUNKS 128
__global__ void __launch_bounds__(256) dwconv_dw_partial_kernel(float *partial, const bf16 *dout, const bf16 *inp,
                                                                int B, int H, int W, int C, int chunk_tokens) {
    __shared__ float s[10][8][33];
    int tx = threadIdx.x, ty = threadIdx.y;
    int c = blockIdx.x * 32 + tx, chunk = blockIdx.y, nchunks = gridDim.y;
    int ntok = B * H * W;
    int t0 = chunk * chunk_tokens, t1 = t0 + chunk_tokens < ntok ? t0 + chunk_tokens : ntok;
    float acc[10];
    for (int k = 0; k < 10; k++) acc[k] = 0.0f;
    if (c < C) {
        for (int t = t0 + ty; t < t1; t += 8) {
            int x = t % W, y = t / W % H, b = t / (W * H);
            float g = bf2f(dout[(size_t)t * C + c]);
            acc[9] += g;
            for (int ky = 0; ky < 3; ky++) {
                int iy = y + ky - 1;
                if (iy < 0 || iy >= H) continue;
                for (int kx = 0; kx < 3; kx++) {
                    int ix = x + kx - 1;
                    if (ix < 0 || ix >= W) continue;
                    acc[ky * 3 + kx] += g * bf2f(inp[((size_t)b * H * W + (size_t)iy * W + ix) * C + c]);
                }
            }
        }
    }
    for (int k = 0; k < 10; k++) s[k][ty][tx] = acc[k];
    __syncthreads();
    if (ty == 0 && c < C) {
        for (int k = 0; k < 10; k++) {
            float v = 0.0f;
            for (int l = 0; l < 8; l++) v += s[k][l][tx];
            partial[((size_t)k * nchunks + chunk) * C + c] = v;
        }
    }
}

// dw, dbias += the chunks' sums (=: set_w, set_b, their first writer this step)
__global__ void dwconv_dw_final_kernel(float *dw, float *dbias, const float *partial, int nchunks, int C, int set_w,
                                       int set_b) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int k = 0; k < 10; k++) {
        if (k < 9 && !dw) continue;
        if (k == 9 && !dbias) continue;
        double v = 0.0;
        for (int ch = 0; ch < nchunks; ch++) v += partial[((size_t)k * nchunks + ch) * C + c];
        float *d = k < 9 ? &dw[(size_t)c * 9 + k] : &dbias[c];
        *d = (k < 9 ? set_w : set_b) ? (float)v : *d + (float)v;
    }
}

void cuda_dwconv3x3_forward(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int B, int H, int W,
                            int C) {
    size_t n = (size_t)B * H * W * C;
    if (n == 0) return;
    LAUNCH(ceil_div_u(n, 256), 256, dwconv_forward_kernel)((bf16 *)out, (const bf16 *)inp, (const bf16 *)w,
                                                           (const bf16 *)bias, B, H, W, C);
    cudaCheckLaunch();
}

// as cuda_dwconv3x3_backward sizes its partials: chunks of at least 32 tokens, at most DW_MAX_CHUNKS
size_t cuda_dwconv_scratch_max(size_t rows, int width) {
    if (rows == 0 || width <= 0) return 0;
    size_t nchunks = rows > (size_t)DW_MAX_CHUNKS * 32 ? DW_MAX_CHUNKS : (rows + 31) / 32;
    return 10 * nchunks * (size_t)width * sizeof(float);
}

void cuda_dwconv3x3_backward(act_t *dinp, float *dw, float *dbias, const act_t *dout, const act_t *inp,
                             const act_t *w, int B, int H, int W, int C) {
    size_t n = (size_t)B * H * W * C;
    if (n == 0) return;
    if (dinp) {
        LAUNCH(ceil_div_u(n, 256), 256, dwconv_backward_dinp_kernel)((bf16 *)dinp, (const bf16 *)dout,
                                                                     (const bf16 *)w, B, H, W, C);
        cudaCheckLaunch();
    }
    if (dw || dbias) {
        int ntok = B * H * W;
        int chunk_tokens = (ntok + DW_MAX_CHUNKS - 1) / DW_MAX_CHUNKS;
        if (chunk_tokens < 32) chunk_tokens = 32;
        int nchunks = (ntok + chunk_tokens - 1) / chunk_tokens;
        float *partial = (float *)cuda_scratch(SCRATCH_REDUCE, (size_t)10 * nchunks * C * sizeof(float));
        dim3 grid(ceil_div_u(C, 32), nchunks), block(32, 8);
        LAUNCH(grid, block, dwconv_dw_partial_kernel)(partial, (const bf16 *)dout, (const bf16 *)inp, B, H, W, C,
                                                      chunk_tokens);
        cudaCheckLaunch();
        int set_w = cuda_grad_first(dw, (size_t)C * 9), set_b = cuda_grad_first(dbias, (size_t)C);
        LAUNCH(ceil_div_u(C, 256), 256, dwconv_dw_final_kernel)(dw, dbias, partial, nchunks, C, set_w, set_b);
        cudaCheckLaunch();
    }
}

// ---------------------------------------------------------------- vision embeddings

// out (B, NP, 3*P*P) with columns (channel, ky, kx); one thread per output element
__global__ void im2col_kernel(bf16 *out, const bf16 *img, int B, int S, int P) {
    int G = S / P, NP = G * G, K = 3 * P * P;
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)B * NP * K) return;
    int col = (int)(e % K);
    size_t bp = e / K;
    int p = (int)(bp % NP), b = (int)(bp / NP);
    int ch = col / (P * P), ky = col / P % P, kx = col % P;
    int py = p / G, px = p % G;
    out[e] = img[(((size_t)b * 3 + ch) * S + (size_t)py * P + ky) * S + (size_t)px * P + kx];
}

__global__ void vit_embed_kernel(bf16 *out, const bf16 *patches, const bf16 *cls, const bf16 *pos, int B, int NP,
                                 int C) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)B * (NP + 1) * C) return;
    int c = (int)(e % C);
    size_t bt = e / C;
    int t = (int)(bt % (NP + 1)), b = (int)(bt / (NP + 1));
    float src = t == 0 ? bf2f(cls[c]) : bf2f(patches[((size_t)b * NP + t - 1) * C + c]);
    out[e] = f2bf(src + bf2f(pos[(size_t)t * C + c]));
}

void cuda_im2col_patches(act_t *out, const act_t *img, int B, int S, int P) {
    int G = S / P;
    size_t n = (size_t)B * G * G * 3 * P * P;
    if (n == 0) return;
    LAUNCH(ceil_div_u(n, 256), 256, im2col_kernel)((bf16 *)out, (const bf16 *)img, B, S, P);
    cudaCheckLaunch();
}

void cuda_vit_embed(act_t *out, const act_t *patches, const act_t *cls, const act_t *pos, int B, int NP, int C) {
    size_t n = (size_t)B * (NP + 1) * C;
    if (n == 0) return;
    LAUNCH(ceil_div_u(n, 256), 256, vit_embed_kernel)((bf16 *)out, (const bf16 *)patches, (const bf16 *)cls,
                                                      (const bf16 *)pos, B, NP, C);
    cudaCheckLaunch();
}
