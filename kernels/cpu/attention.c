// attention.c: scaled dot-product attention with grouped-query heads, causal and segment masks.
// The forward is one task per query row. The backward recomputes the probabilities from the saved
// logsumexp (flash-attention style) in two passes: dq one task per query row, then dk and dv one
// task per key row summing over the group's heads and queries, so every output has one owner
// and a fixed summation order (bit-identical at any thread count), with B*NKV*T tasks to share.
#include <math.h>
#include <stdlib.h>

#include "common/util.h"
#include "kernels/cpu/cpu.h"


static inline int visible(const int *seg_b, int causal, int i, int j) {
    return (!causal || j <= i) && (!seg_b || seg_b[i] == seg_b[j]);
}

void cpu_attention_forward(act_t *out_, float *lse, const act_t *q_, const act_t *k_,
                           const act_t *v_, const int *seg, int B, int T, int NH, int NKV,
                           int HD, int causal) {
    float *out = out_;          // (B, T, NH*HD)
    const float *q = q_;        // (B, T, NH*HD)
    const float *k = k_;        // (B, T, NKV*HD)
    const float *v = v_;        // (B, T, NKV*HD)
    // lse (B, NH, T), seg (B, T)
    CHECK(NKV > 0 && NH % NKV == 0, "attention: NH=%d is not a multiple of NKV=%d", NH, NKV);
    int group = NH / NKV;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel
    {
        float *scores = xmalloc((size_t)(T > 0 ? T : 1) * sizeof(float));  // (T) one query row
#pragma omp for collapse(3) schedule(static, 1)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                for (int i = 0; i < T; i++) {
                    int g = h / group;
                    const int *seg_b = seg ? seg + (size_t)b * T : NULL;
                    const float *qi = q + ((size_t)b * T + i) * qs + (size_t)h * HD;
                    float *oi = out + ((size_t)b * T + i) * qs + (size_t)h * HD;
                    int jend = causal ? i + 1 : T;
                    float mx = -INFINITY;
                    for (int j = 0; j < jend; j++) {
                        if (!visible(seg_b, causal, i, j)) continue;
                        const float *kj = k + ((size_t)b * T + j) * ks + (size_t)g * HD;
                        scores[j] = dotf(qi, kj, HD) * scale;
                        if (scores[j] > mx) mx = scores[j];
                    }
                    for (int d = 0; d < HD; d++) oi[d] = 0.0f;
                    float row_lse = -INFINITY;
                    if (mx > -INFINITY) {  // a row that sees no key keeps zeros and lse = -inf
                        double sum = 0.0;
                        for (int j = 0; j < jend; j++) {
                            if (!visible(seg_b, causal, i, j)) continue;
                            scores[j] = expf(scores[j] - mx);
                            sum += scores[j];
                        }
                        float inv = (float)(1.0 / sum);
                        for (int j = 0; j < jend; j++) {
                            if (!visible(seg_b, causal, i, j)) continue;
                            const float *vj = v + ((size_t)b * T + j) * ks + (size_t)g * HD;
                            float p = scores[j] * inv;
                            for (int d = 0; d < HD; d++) oi[d] += p * vj[d];
                        }
                        row_lse = mx + (float)log(sum);
                    }
                    if (lse) lse[((size_t)b * NH + h) * T + i] = row_lse;
                }
            }
        }
        free(scores);
    }
}

// P_ij = exp(S_ij - lse_i), dP_ij = dout_i . v_j, D_i = sum_j P_ij dP_ij = dout_i . out_i,
// dS_ij = P_ij (dP_ij - D_i); dq_i = scale sum_j dS_ij k_j, dk_j = scale sum_i dS_ij q_i,
// dv_j = sum_i P_ij dout_i
void cpu_attention_backward(act_t *dq_, act_t *dk_, act_t *dv_, const act_t *dout_,
                            const act_t *q_, const act_t *k_, const act_t *v_, const act_t *out_,
                            const float *lse, const int *seg, int B, int T, int NH, int NKV,
                            int HD, int causal) {
    float *dq = dq_;                // (B, T, NH*HD)
    float *dk = dk_;                // (B, T, NKV*HD)
    float *dv = dv_;                // (B, T, NKV*HD)
    const float *dout = dout_;      // (B, T, NH*HD)
    const float *q = q_;            // (B, T, NH*HD)
    const float *k = k_;            // (B, T, NKV*HD)
    const float *v = v_;            // (B, T, NKV*HD)
    const float *out = out_;        // (B, T, NH*HD)
    CHECK(NKV > 0 && NH % NKV == 0, "attention: NH=%d is not a multiple of NKV=%d", NH, NKV);
    int group = NH / NKV;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    float scale = 1.0f / sqrtf((float)HD);
    float *Drow = xmalloc(((size_t)B * NH * T + 1) * sizeof(float));  // (B, NH, T)

    // pass 1: D_i, and dq_i from all keys the query sees
#pragma omp parallel
    {
        float *acc = xmalloc((size_t)(HD > 0 ? HD : 1) * sizeof(float));
#pragma omp for collapse(3) schedule(static, 1)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                for (int i = 0; i < T; i++) {
                    int g = h / group;
                    const int *seg_b = seg ? seg + (size_t)b * T : NULL;
                    size_t qo = ((size_t)b * T + i) * qs + (size_t)h * HD;
                    const float *qi = q + qo, *doi = dout + qo;
                    float L = lse[((size_t)b * NH + h) * T + i];
                    float D = dotf(doi, out + qo, HD);
                    Drow[((size_t)b * NH + h) * T + i] = D;
                    if (!dq) continue;
                    for (int d = 0; d < HD; d++) acc[d] = 0.0f;
                    int jend = causal ? i + 1 : T;
                    for (int j = 0; j < jend; j++) {
                        if (!visible(seg_b, causal, i, j)) continue;
                        const float *kj = k + ((size_t)b * T + j) * ks + (size_t)g * HD;
                        const float *vj = v + ((size_t)b * T + j) * ks + (size_t)g * HD;
                        float p = expf(dotf(qi, kj, HD) * scale - L);
                        float ds = p * (dotf(doi, vj, HD) - D);
                        for (int d = 0; d < HD; d++) acc[d] += ds * kj[d];
                    }
                    for (int d = 0; d < HD; d++) dq[qo + d] = acc[d] * scale;
                }
            }
        }
        free(acc);
    }

    // pass 2: dk_j and dv_j from every query of every head in the group that sees key j
    if (dk || dv) {
#pragma omp parallel
        {
            float *acc_k = xmalloc((size_t)(HD > 0 ? HD : 1) * 2 * sizeof(float));
            float *acc_v = acc_k + (HD > 0 ? HD : 1);
#pragma omp for collapse(3) schedule(static, 1)
            for (int b = 0; b < B; b++) {
                for (int g = 0; g < NKV; g++) {
                    for (int j = 0; j < T; j++) {
                        const int *seg_b = seg ? seg + (size_t)b * T : NULL;
                        size_t ko = ((size_t)b * T + j) * ks + (size_t)g * HD;
                        const float *kj = k + ko, *vj = v + ko;
                        for (int d = 0; d < HD; d++) acc_k[d] = acc_v[d] = 0.0f;
                        for (int h = g * group; h < (g + 1) * group; h++) {
                            const float *L = lse + ((size_t)b * NH + h) * T;
                            const float *Dh = Drow + ((size_t)b * NH + h) * T;
                            for (int i = causal ? j : 0; i < T; i++) {
                                if (!visible(seg_b, causal, i, j)) continue;
                                size_t qo = ((size_t)b * T + i) * qs + (size_t)h * HD;
                                const float *qi = q + qo, *doi = dout + qo;
                                float p = expf(dotf(qi, kj, HD) * scale - L[i]);
                                float ds = p * (dotf(doi, vj, HD) - Dh[i]);
                                for (int d = 0; d < HD; d++) {
                                    acc_v[d] += p * doi[d];
                                    acc_k[d] += ds * qi[d];
                                }
                            }
                        }
                        if (dk)
                            for (int d = 0; d < HD; d++) dk[ko + d] = acc_k[d] * scale;
                        if (dv)
                            for (int d = 0; d < HD; d++) dv[ko + d] = acc_v[d];
                    }
                }
            }
            free(acc_k);
        }
    }
    free(Drow);
}
