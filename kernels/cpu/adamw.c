// adamw.c: the AdamW step, the squared norm for gradient clipping and scaling, all on fp32 spans.
// adamw_update follows torch.optim.AdamW's single-tensor path (foreach=False) operation by
// operation: scalars in double rounded to float where torch rounds them, moments updated with
// the fused multiply-adds that torch's CPU lerp and addcmul kernels use.
#include <math.h>
#include <stdlib.h>

#include "common/util.h"
#include "kernels/cpu/cpu.h"

// AdamW on n elements; gradients read times `coef` when `clip` (scale_f32's product, not stored)
static void adamw_run(float *p, const float *g, float *m, float *v, size_t n, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int t, int clip, float coef) {
    // torch's Python scalars are doubles; each becomes a float when it meets a float tensor
    float decay = (float)(1.0 - lr * weight_decay);  // param.mul_(1 - lr * wd)
    float w1 = (float)(1.0 - beta1);                   // exp_avg.lerp_(grad, 1 - beta1)
    float w2 = (float)(1.0 - beta2);                   // addcmul_ value
    float b2 = (float)beta2, epsf = (float)eps;
    double bc1 = 1.0 - pow(beta1, (double)t);
    double bc2 = 1.0 - pow(beta2, (double)t);
    float neg_step = (float)(-(lr / bc1));
    float bc2_sqrt = (float)sqrt(bc2);
    int small_w1 = fabsf(w1) < 0.5f;
    float w1_minus_1 = w1 - 1.0f;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = clip ? g[i] * coef : g[i];
        float pi = weight_decay != 0.0 ? p[i] * decay : p[i];
        float mi = m[i];
        // torch's lerp: fma(w, end - start, start), or fma(w - 1, end - start, end) when w >= 0.5
        mi = small_w1 ? fmaf(w1, gi - mi, mi) : fmaf(w1_minus_1, gi - mi, gi);
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        float vi = fmaf(w2 * gi, gi, v[i] * b2);
        float denom = sqrtf(vi) / bc2_sqrt + epsf;
        // param.addcdiv_(exp_avg, denom, value=-step_size)
        p[i] = pi + neg_step * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

void cpu_adamw_update(float *p, const float *g, float *m, float *v, size_t n, double lr,
                      double beta1, double beta2, double eps, double weight_decay, int t) {
    adamw_run(p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, t, 0, 1.0f);
}

void cpu_adamw_span(float *p, const float *g, float *m, float *v, const AdamwSpan *a, const double *sumsq,
                    const double *loss) {
    double norm = sqrt(*sumsq);
    if (!isfinite(norm) || (loss && !isfinite(*loss))) return;
    double coef = a->max_norm > 0 ? a->max_norm / (norm + 1e-6) : 1.0;  // clip_grad_norm_'s, clamped to 1
    int clip = coef < 1.0;
    size_t begin = 0;
    for (int r = 0; r < a->n_runs; r++) {
        const AdamwRun *u = &a->run[r];
        CHECK(u->end >= begin, "adamw_span: run %d ends at %zu before it starts (%zu)", r, u->end, begin);
        adamw_run(p + begin, g + begin, m + begin, v + begin, u->end - begin, u->lr, a->beta1, a->beta2, a->eps,
                  u->weight_decay, a->t, clip, (float)coef);
        begin = u->end;
    }
}
// elements per partial sum: partials are summed in a fixed order, so the result does not depend
// on the number of threads
#define SUMSQ_CHUNK 16384

double cpu_sum_squares(const float *x, size_t n) {
    size_t nchunks = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    if (nchunks == 0) return 0.0;
    double *partial = xmalloc(nchunks * sizeof(double));
#pragma omp parallel for schedule(static)
    for (size_t ch = 0; ch < nchunks; ch++) {
        size_t i0 = ch * SUMSQ_CHUNK, i1 = i0 + SUMSQ_CHUNK < n ? i0 + SUMSQ_CHUNK : n;
        double s = 0.0;
        for (size_t i = i0; i < i1; i++) s += (double)x[i] * x[i];  // NaN stays NaN
        partial[ch] = s;
    }
    double total = 0.0;
    for (size_t ch = 0; ch < nchunks; ch++) total += partial[ch];
    free(partial);
    return total;
}

void cpu_scale_f32(float *x, float s, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

void cpu_sum_f64(double *out, const float *x, size_t n, int squares, int accumulate) {
    double s = 0.0;
    if (squares) s = cpu_sum_squares(x, n);
    else
        for (size_t i = 0; i < n; i++) s += x[i];  // in order: the sum the host took before
    *out = accumulate ? *out + s : s;
}
