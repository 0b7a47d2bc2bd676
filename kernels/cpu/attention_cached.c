// attention_cached.c: causal attention of new queries over a KV cache (generation), one task per
// (batch, head, tile of queries). It runs attention_forward's own tasks (cpu_attention_tasks) with
// the query rows placed at positions Tk-Tq.., so prefill and every decoded row are bit-identical
// to the rows of a full causal attention_forward over the same keys: the key tiles start at 0 in
// both, every score and product is summed in the same order, and the keys one path sees beyond
// the other's (a later query's, masked) add exact zeros.
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
    cpu_attention_tasks(out, NULL, q, kc, vc, NULL, B, Tq, Tk, Tc, NH, NKV, HD, 1);
}
