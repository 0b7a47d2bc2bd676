// grid.c: ops on patch grids stored token-major (B, H*W, C) with token y*W + x: 2x2 average
// pooling and the depthwise 3x3 conv of the LDP connector, and the ViT patch embedding inputs
// (im2col of the image, class token plus position embeddings).
#include <stdlib.h>

#include "common/util.h"
#include "kernels/cpu/cpu.h"

void cpu_avgpool2x2_forward(act_t *out_, const act_t *inp_, int B, int H, int W, int C) {
    float *out = out_;          // (B, (H/2)*(W/2), C)
    const float *inp = inp_;    // (B, H*W, C)
    CHECK(H % 2 == 0 && W % 2 == 0, "avgpool2x2 needs an even grid, got %dx%d", H, W);
    int H2 = H / 2, W2 = W / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int oy = 0; oy < H2; oy++) {
            for (int ox = 0; ox < W2; ox++) {
                const float *a = inp + ((size_t)b * H * W + (size_t)(2 * oy) * W + 2 * ox) * C;
                const float *a_right = a + C, *a_down = a + (size_t)W * C, *a_diag = a_down + C;
                float *o = out + ((size_t)b * H2 * W2 + (size_t)oy * W2 + ox) * C;
                // summed in torch's avg_pool2d order (row by row), then divided
                for (int c = 0; c < C; c++) o[c] = (((a[c] + a_right[c]) + a_down[c]) + a_diag[c]) / 4.0f;
            }
        }
    }
}

// each input of a block gets a quarter of the block's gradient (overwrites dinp)
void cpu_avgpool2x2_backward(act_t *dinp_, const act_t *dout_, int B, int H, int W, int C) {
    float *dinp = dinp_;          // (B, H*W, C)
    const float *dout = dout_;    // (B, (H/2)*(W/2), C)
    CHECK(H % 2 == 0 && W % 2 == 0, "avgpool2x2 needs an even grid, got %dx%d", H, W);
    int H2 = H / 2, W2 = W / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int y = 0; y < H; y++) {
            for (int x = 0; x < W; x++) {
                const float *g = dout + ((size_t)b * H2 * W2 + (size_t)(y / 2) * W2 + x / 2) * C;
                float *d = dinp + ((size_t)b * H * W + (size_t)y * W + x) * C;
                for (int c = 0; c < C; c++) d[c] = g[c] / 4.0f;
            }
        }
    }
}

// w (C, 3, 3) -> (9, C) so that the inner loops over channels read contiguous weights
static float *taps_by_channel(const float *w, int C) {
    float *wt = xmalloc((size_t)9 * (C > 0 ? C : 1) * sizeof(float));
    for (int c = 0; c < C; c++)
        for (int t = 0; t < 9; t++) wt[(size_t)t * C + c] = w[(size_t)c * 9 + t];
    return wt;
}

void cpu_dwconv3x3_forward(act_t *out_, const act_t *inp_, const act_t *w_, const act_t *bias_,
                           int B, int H, int W, int C) {
    float *out = out_;          // (B, H*W, C)
    const float *inp = inp_;    // (B, H*W, C)
    const float *bias = bias_;  // (C) or NULL
    float *wt = taps_by_channel(w_, C);  // (9, C)
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int y = 0; y < H; y++) {
            for (int x = 0; x < W; x++) {
                float *o = out + ((size_t)b * H * W + (size_t)y * W + x) * C;
                for (int c = 0; c < C; c++) o[c] = 0.0f;
                for (int ky = 0; ky < 3; ky++) {
                    int iy = y + ky - 1;
                    if (iy < 0 || iy >= H) continue;  // zero padding
                    for (int kx = 0; kx < 3; kx++) {
                        int ix = x + kx - 1;
                        if (ix < 0 || ix >= W) continue;
                        const float *a = inp + ((size_t)b * H * W + (size_t)iy * W + ix) * C;
                        const float *wk = wt + (size_t)(ky * 3 + kx) * C;
                        for (int c = 0; c < C; c++) o[c] += wk[c] * a[c];
                    }
                }
                if (bias)
                    for (int c = 0; c < C; c++) o[c] += bias[c];
            }
        }
    }
    free(wt);
}

// out[y,x] = sum_t w[t] inp[y+ky-1, x+kx-1], so dinp[y,x] += sum_t w[t] dout[y-ky+1, x-kx+1]
// (one task per input row, no scatter) and dw[c,t] += sum over b,y,x of dout * the tap's input
void cpu_dwconv3x3_backward(act_t *dinp_, float *dw, float *dbias, const act_t *dout_,
                            const act_t *inp_, const act_t *w_, int B, int H, int W, int C) {
    float *dinp = dinp_;          // (B, H*W, C) +=
    const float *dout = dout_;    // (B, H*W, C)
    const float *inp = inp_;      // (B, H*W, C)
    if (dinp) {
        float *wt = taps_by_channel(w_, C);  // (9, C)
#pragma omp parallel
        {
            float *acc = xmalloc((size_t)(C > 0 ? C : 1) * sizeof(float));  // (C) one token
#pragma omp for collapse(2) schedule(static)
            for (int b = 0; b < B; b++) {
                for (int y = 0; y < H; y++) {
                    for (int x = 0; x < W; x++) {
                        for (int c = 0; c < C; c++) acc[c] = 0.0f;
                        for (int ky = 0; ky < 3; ky++) {
                            int oy = y - ky + 1;
                            if (oy < 0 || oy >= H) continue;
                            for (int kx = 0; kx < 3; kx++) {
                                int ox = x - kx + 1;
                                if (ox < 0 || ox >= W) continue;
                                const float *g = dout + ((size_t)b * H * W + (size_t)oy * W + ox) * C;
                                const float *wk = wt + (size_t)(ky * 3 + kx) * C;
                                for (int c = 0; c < C; c++) acc[c] += wk[c] * g[c];
                            }
                        }
                        float *d = dinp + ((size_t)b * H * W + (size_t)y * W + x) * C;
                        for (int c = 0; c < C; c++) d[c] += acc[c];
                    }
                }
            }
            free(acc);
        }
        free(wt);
    }
    if (dw || dbias) {
        int nblocks = (C + CPU_COL_BLOCK - 1) / CPU_COL_BLOCK;
#pragma omp parallel for schedule(static)
        for (int blk = 0; blk < nblocks; blk++) {
            int c0 = blk * CPU_COL_BLOCK;
            int c1 = c0 + CPU_COL_BLOCK < C ? c0 + CPU_COL_BLOCK : C;
            double acc_w[9][CPU_COL_BLOCK] = {{0}}, acc_b[CPU_COL_BLOCK] = {0};
            for (int b = 0; b < B; b++) {
                for (int y = 0; y < H; y++) {
                    for (int x = 0; x < W; x++) {
                        const float *g = dout + ((size_t)b * H * W + (size_t)y * W + x) * C;
                        for (int c = c0; c < c1; c++) acc_b[c - c0] += g[c];
                        for (int ky = 0; ky < 3; ky++) {
                            int iy = y + ky - 1;
                            if (iy < 0 || iy >= H) continue;
                            for (int kx = 0; kx < 3; kx++) {
                                int ix = x + kx - 1;
                                if (ix < 0 || ix >= W) continue;
                                const float *a = inp + ((size_t)b * H * W + (size_t)iy * W + ix) * C;
                                double *aw = acc_w[ky * 3 + kx];
                                for (int c = c0; c < c1; c++) aw[c - c0] += g[c] * a[c];
                            }
                        }
                    }
                }
            }
            for (int c = c0; c < c1; c++) {
                if (dw)
                    for (int t = 0; t < 9; t++) dw[(size_t)c * 9 + t] += (float)acc_w[t][c - c0];
                if (dbias) dbias[c] += (float)acc_b[c - c0];
            }
        }
    }
}

void cpu_im2col_patches(act_t *out_, const act_t *img_, int B, int S, int P) {
    float *out = out_;          // (B, NP, 3*P*P), columns (channel, ky, kx)
    const float *img = img_;    // (B, 3, S, S)
    int G = S / P;              // patches per side; a remainder is dropped as Conv2d(stride=P) does
    int NP = G * G, K = 3 * P * P;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int p = 0; p < NP; p++) {
            int py = p / G, px = p % G;
            float *o = out + ((size_t)b * NP + p) * K;
            for (int ch = 0; ch < 3; ch++)
                for (int ky = 0; ky < P; ky++) {
                    const float *src = img + (((size_t)b * 3 + ch) * S + (size_t)py * P + ky) * S + (size_t)px * P;
                    float *dst = o + (size_t)ch * P * P + (size_t)ky * P;
                    for (int kx = 0; kx < P; kx++) dst[kx] = src[kx];
                }
        }
    }
}

void cpu_vit_embed(act_t *out_, const act_t *patches_, const act_t *cls_, const act_t *pos_, int B,
                   int NP, int C) {
    float *out = out_;                  // (B, NP+1, C)
    const float *patches = patches_;    // (B, NP, C)
    const float *cls = cls_;            // (C)
    const float *pos = pos_;            // (NP+1, C)
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < NP + 1; t++) {
            const float *src = t == 0 ? cls : patches + ((size_t)b * NP + t - 1) * C;
            const float *pe = pos + (size_t)t * C;
            float *o = out + ((size_t)b * (NP + 1) + t) * C;
            for (int c = 0; c < C; c++) o[c] = src[c] + pe[c];
        }
    }
}
