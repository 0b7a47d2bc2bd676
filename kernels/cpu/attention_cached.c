// attention_cached.c: causal attention of new queries over a KV cache (generation), one task per
// (batch, head, tile of queries). It runs attention_forward's own tile (cpu_attention_rows) with
// the query rows placed at positions Tk-Tq.., so prefill and every decoded row are bit-identical
// to the rows of a full causal attention_forward over the same keys: the key tiles start at 0 in
// both, every score and product is summed in the same order, and the keys one path sees beyond
// the other's (a later query's, masked) add exact zeros.
#include <math.h>

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
    int group = NH / NKV, nqt = (Tq + ATT_BQ - 1) / ATT_BQ;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel
    {
        void *sc = cpu_attention_scratch(HD, 1, 1);
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < B * NH * nqt; task++) {
            int b = task / (NH * nqt), h = task / nqt % NH, i0 = task % nqt * ATT_BQ;
            int g = h / group;
            AttnRows a = {.q = q + (size_t)b * Tq * qs + (size_t)h * HD, .qs = qs,
                          .k = kc + (size_t)b * Tc * ks + (size_t)g * HD, .v = vc + (size_t)b * Tc * ks + (size_t)g * HD,
                          .ks = ks, .nk = Tk, .qpos0 = Tk - Tq, .causal = 1, .seg = NULL, .HD = HD, .scale = scale};
            int nq = Tq - i0 < ATT_BQ ? Tq - i0 : ATT_BQ;
            cpu_attention_rows(&a, i0, nq, out + ((size_t)b * Tq + i0) * qs + (size_t)h * HD, NULL, sc);
        }
    }
}
