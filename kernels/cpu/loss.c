// loss.c: softmax cross-entropy over rows of logits, with its gradient written in place.
#include <math.h>

#include "common/util.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/simd.h"

// d = exp(x - mx) (d may be x), 8 at a time
CPU_HOT_EXPLICIT static void exp_shifted(float *d, const float *x, float mx, int V) {
    int j = 0;
    for (; j + 8 <= V; j += 8) *(vf8 *)(d + j) = exp_vf8(*(const vf8 *)(x + j) - mx);
    if (j < V) store8(d, (size_t)j, (size_t)(V - j), exp_vf8(load8(x, (size_t)j, (size_t)(V - j)) - mx));
}

void cpu_cross_entropy(float *losses, act_t *dlogits_, const act_t *logits_, const int *targets,
                       int M, int V, float dscale) {
    float *dlogits = dlogits_;          // (M, V), may alias logits
    const float *logits = logits_;      // (M, V)
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        const float *x = logits + (size_t)i * V;
        int t = targets[i];
        CHECK(t >= 0 && t < V, "cross_entropy target %d at row %d is outside [0, %d)", t, i, V);
        float mx = -INFINITY;
        for (int j = 0; j < V; j++) mx = x[j] > mx ? x[j] : mx;
        float xt = x[t];  // read before the gradient overwrites the row when dlogits aliases logits
        // exp of max-shifted logits (each <= 1) summed in double: no overflow, no loss of the small
        // terms; kept in dlogits (each x[j] is read before d[j] is written) so exp runs once
        double sum = 0.0;
        float *d = dlogits ? dlogits + (size_t)i * V : NULL;
        if (d) {
            exp_shifted(d, x, mx, V);
            for (int j = 0; j < V; j++) sum += d[j];
        } else {
            for (int j = 0; j < V; j++) sum += expf(x[j] - mx);
        }
        double lse = (double)mx + log(sum);
        if (losses) losses[i] = (float)(lse - (double)xt);
        if (d) {
            float inv = (float)(1.0 / sum);
            float et = d[t];
            for (int j = 0; j < V; j++) d[j] = dscale * (d[j] * inv);
            d[t] = dscale * (et * inv - 1.0f);
        }
    }
}
