// loss.c: softmax cross-entropy over rows of logits, with its gradient written in place.
#include <math.h>

#include "common/util.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/simd.h"

// the largest of x[0..V), 8 lanes at a time (the maximum does not depend on the order)
CPU_HOT_EXPLICIT static float row_max(const float *x, int V) {
    const vf8 ninf = (vf8){0} - INFINITY;
    vf8 m8 = ninf;
    int j = 0;
    for (; j + 8 <= V; j += 8) {
        vf8 v = *(const vf8 *)(x + j);
        m8 = vf8_select(v > m8, v, m8);
    }
    float mx = -INFINITY;
    for (int l = 0; l < 8; l++) mx = m8[l] > mx ? m8[l] : mx;
    for (; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

// d = exp(x - mx) (d may be x), 8 at a time; returns their sum in double, by lane (the lanes and
// the tail in a fixed order: not a chain of V dependent adds)
CPU_HOT_EXPLICIT static double exp_shifted(float *d, const float *x, float mx, int V) {
    vd4 s0 = {0}, s1 = {0};
    int j = 0;
    for (; j + 8 <= V; j += 8) {
        vf8 e = exp_vf8(*(const vf8 *)(x + j) - mx);
        *(vf8 *)(d + j) = e;
        s0 += vd4_load(d + j);
        s1 += vd4_load(d + j + 4);
    }
    double sum = vd4_total(s0 + s1);
    if (j < V) store8(d, (size_t)j, (size_t)(V - j), exp_vf8(load8(x, (size_t)j, (size_t)(V - j)) - mx));
    for (; j < V; j++) sum += d[j];
    return sum;
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
        float mx = row_max(x, V);
        float xt = x[t];  // read before the gradient overwrites the row when dlogits aliases logits
        // exp of max-shifted logits (each <= 1) summed in double: no overflow, no loss of the small
        // terms; kept in dlogits (each x[j] is read before d[j] is written) so exp runs once
        double sum = 0.0;
        float *d = dlogits ? dlogits + (size_t)i * V : NULL;
        if (d) {
            sum = exp_shifted(d, x, mx, V);
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
