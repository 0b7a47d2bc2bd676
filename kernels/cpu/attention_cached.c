// attention_cached.c: causal attention of new queries over a KV cache (generation), one task per
// (batch, head, query) row. The arithmetic is attention_forward's, step for step (the same dot
// product, max, exp, double sum and accumulation order), so prefill and every decoded row are
// bit-identical to the rows of a full causal attention_forward over the same keys.
#include <math.h>
#include <stdlib.h>

#include "common/util.h"
#include "kernels/cpu/cpu.h"


void cpu_attention_cached(act_t *out_, const act_t *q_, const act_t *kc_, const act_t *vc_, int B, int Tq,
                          int Tk, int Tc, int NH, int NKV, int HD) {
    float *out = out_;        // (B, Tq, NH*HD)
    const float *q = q_;      // (B, Tq, NH*HD)
    const float *kc = kc_;    // (B, Tc, NKV*HD)
    const float *vc = vc_;    // (B, Tc, NKV*HD)
    CHECK(NKV > 0 && NH % NKV == 0, "attention_cached: NH=%d is not a multiple of NKV=%d", NH, NKV);
    CHECK(Tq >= 1 && Tq <= Tk && Tk <= Tc, "attention_cached: need 1 <= Tq=%d <= Tk=%d <= Tc=%d", Tq, Tk, Tc);
    int group = NH / NKV, past = Tk - Tq;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel
    {
        float *scores = xmalloc((size_t)Tk * sizeof(float));  // one query row
#pragma omp for collapse(3) schedule(static, 1)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                for (int i = 0; i < Tq; i++) {
                    int g = h / group;
                    const float *qi = q + ((size_t)b * Tq + i) * qs + (size_t)h * HD;
                    float *oi = out + ((size_t)b * Tq + i) * qs + (size_t)h * HD;
                    const float *kb = kc + (size_t)b * Tc * ks + (size_t)g * HD;
                    const float *vb = vc + (size_t)b * Tc * ks + (size_t)g * HD;
                    int jend = past + i + 1;  // keys 0 .. past + i, at least one
                    float mx = -INFINITY;
                    for (int j = 0; j < jend; j++) {
                        scores[j] = dotf(qi, kb + (size_t)j * ks, HD) * scale;
                        if (scores[j] > mx) mx = scores[j];
                    }
                    for (int d = 0; d < HD; d++) oi[d] = 0.0f;
                    double sum = 0.0;
                    for (int j = 0; j < jend; j++) {
                        scores[j] = expf(scores[j] - mx);
                        sum += scores[j];
                    }
                    float inv = (float)(1.0 / sum);
                    for (int j = 0; j < jend; j++) {
                        const float *vj = vb + (size_t)j * ks;
                        float p = scores[j] * inv;
                        for (int d = 0; d < HD; d++) oi[d] += p * vj[d];
                    }
                }
            }
        }
        free(scores);
    }
}
