// adamw.cu: the AdamW step, the squared norm for gradient clipping, and scaling, on fp32 spans.
// adamw_update repeats the CPU backend's arithmetic operation by operation (torch's single-tensor
// path): the same host-side scalars, and explicit _rn intrinsics so that nvcc cannot contract a
// multiply and an add into an fma where the CPU code has none (and fmaf where it has one), so the
// two backends give the same bits. sum_squares is a fixed two-pass reduction in double.
#include <math.h>
#include <string.h>

#include "kernels/cuda/common.cuh"

typedef struct {
    float decay, w1, w1_minus_1, w2, b2, eps, neg_step, bc2_sqrt;
    int small_w1, use_decay;
} AdamScalars;

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n, AdamScalars a) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float pi = a.use_decay ? __fmul_rn(p[i], a.decay) : p[i];
    float mi = m[i];
    float diff = __fsub_rn(gi, mi);
    // torch's lerp: fma(w, end - start, start), or fma(w - 1, end - start, end) when w >= 0.5
    mi = a.small_w1 ? __fmaf_rn(a.w1, diff, mi) : __fmaf_rn(a.w1_minus_1, diff, gi);
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    float vi = __fmaf_rn(__fmul_rn(a.w2, gi), gi, __fmul_rn(v[i], a.b2));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), a.bc2_sqrt), a.eps);
    // param.addcdiv_(exp_avg, denom, value=-step_size)
    p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(a.neg_step, mi), denom));
    m[i] = mi;
    v[i] = vi;
}

// the scalars exactly as kernels/cpu/adamw.c computes them
static AdamScalars adam_scalars(double lr, double beta1, double beta2, double eps, double weight_decay, int t) {
    AdamScalars a;
    a.decay = (float)(1.0 - lr * weight_decay);
    a.w1 = (float)(1.0 - beta1);
    a.w2 = (float)(1.0 - beta2);
    a.b2 = (float)beta2;
    a.eps = (float)eps;
    double bc1 = 1.0 - pow(beta1, (double)t);
    double bc2 = 1.0 - pow(beta2, (double)t);
    a.neg_step = (float)(-(lr / bc1));
    a.bc2_sqrt = (float)sqrt(bc2);
    a.small_w1 = fabsf(a.w1) < 0.5f;
    a.w1_minus_1 = a.w1 - 1.0f;
    a.use_decay = weight_decay != 0.0;
    return a;
}

void cuda_adamw_update(float *p, const float *g, float *m, float *v, size_t n, double lr, double beta1,
                       double beta2, double eps, double weight_decay, int t) {
    if (n == 0) return;
    AdamScalars a = adam_scalars(lr, beta1, beta2, eps, weight_decay, t);
    LAUNCH(ceil_div_u(n, 256), 256, adamw_kernel)(p, g, m, v, n, a);
    cudaCheckLaunch();
}

// ---------------------------------------------------------------- AdamW over a span, one launch

// what differs between runs (AdamwSpan's), the rest shared; passed by value (about 0.6 KB)
typedef struct {
    int n_runs;
    size_t end[ADAMW_MAX_RUNS];
    float decay[ADAMW_MAX_RUNS], neg_step[ADAMW_MAX_RUNS];
    int use_decay[ADAMW_MAX_RUNS];
    AdamScalars s;   // w1, w2, b2, eps, bc2_sqrt, small_w1 (its lr-dependent fields unused)
    double max_norm;
} AdamSpanArgs;

__global__ void adamw_span_kernel(float *p, const float *g, float *m, float *v, AdamSpanArgs a, const double *sumsq,
                                  const double *loss) {
    size_t n = a.end[a.n_runs - 1];
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    // the clip coefficient as the CPU backend takes it (IEEE double sqrt and division)
    double norm = __dsqrt_rn(*sumsq);
    if (!isfinite(norm) || (loss && !isfinite(*loss))) return;  // the trainer's skipped step
    double coef = a.max_norm > 0 ? __ddiv_rn(a.max_norm, __dadd_rn(norm, 1e-6)) : 1.0;
    int lo = 0, hi = a.n_runs - 1;  // the run holding i: the first whose end is above i
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (a.end[mid] > i) hi = mid;
        else lo = mid + 1;
    }
    float gi = coef < 1.0 ? __fmul_rn(g[i], (float)coef) : g[i];
    float pi = a.use_decay[lo] ? __fmul_rn(p[i], a.decay[lo]) : p[i];
    float mi = m[i];
    float diff = __fsub_rn(gi, mi);
    mi = a.s.small_w1 ? __fmaf_rn(a.s.w1, diff, mi) : __fmaf_rn(a.s.w1_minus_1, diff, gi);
    float vi = __fmaf_rn(__fmul_rn(a.s.w2, gi), gi, __fmul_rn(v[i], a.s.b2));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), a.s.bc2_sqrt), a.s.eps);
    p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(a.neg_step[lo], mi), denom));
    m[i] = mi;
    v[i] = vi;
}

void cuda_adamw_span(float *p, const float *g, float *m, float *v, const AdamwSpan *a, const double *sumsq,
                     const double *loss) {
    CHECK(a->n_runs >= 0 && a->n_runs <= ADAMW_MAX_RUNS, "adamw_span: %d runs", a->n_runs);
    if (a->n_runs == 0 || a->run[a->n_runs - 1].end == 0) return;
    AdamSpanArgs s;
    memset(&s, 0, sizeof s);
    s.n_runs = a->n_runs;
    s.max_norm = a->max_norm;
    size_t begin = 0;
    for (int r = 0; r < a->n_runs; r++) {
        const AdamwRun *u = &a->run[r];
        CHECK(u->end >= begin, "adamw_span: run %d ends at %zu before it starts (%zu)", r, u->end, begin);
        AdamScalars sc = adam_scalars(u->lr, a->beta1, a->beta2, a->eps, u->weight_decay, a->t);
        if (r == 0) s.s = sc;
        s.end[r] = u->end;
        s.decay[r] = sc.decay;
        s.neg_step[r] = sc.neg_step;
        s.use_decay[r] = sc.use_decay;
        begin = u->end;
    }
    LAUNCH(ceil_div_u(begin, 256), 256, adamw_span_kernel)(p, g, m, v, s, sumsq, loss);
    cudaCheckLaunch();
}

// pass 1: a fixed grid walks x grid-stride, so which element lands in which partial depends on n alone
#define SUMSQ_BLOCKS 512
#define SUMSQ_THREADS 256

template <int SQUARES>
__global__ void __launch_bounds__(SUMSQ_THREADS) sum_partial_kernel(double *partial, const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double v = x[i];
        s += SQUARES ? v * v : v;  // NaN stays NaN
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void __launch_bounds__(SUMSQ_THREADS) sum_final_kernel(double *out, const double *partial, int nparts,
                                                                  int accumulate) {
    double s = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += partial[i];
    s = block_sum(s);
    if (threadIdx.x == 0) *out = accumulate ? *out + s : s;
}

size_t cuda_sum_squares_scratch(void) { return (SUMSQ_BLOCKS + 1) * sizeof(double); }

void cuda_sum_f64(double *out, const float *x, size_t n, int squares, int accumulate) {
    double *buf = (double *)cuda_scratch(SCRATCH_SUMSQ, (SUMSQ_BLOCKS + 1) * sizeof(double));
    if (squares) LAUNCH(SUMSQ_BLOCKS, SUMSQ_THREADS, sum_partial_kernel<1>)(buf + 1, x, n);
    else LAUNCH(SUMSQ_BLOCKS, SUMSQ_THREADS, sum_partial_kernel<0>)(buf + 1, x, n);
    cudaCheckLaunch();
    LAUNCH(1, SUMSQ_THREADS, sum_final_kernel)(out, buf + 1, SUMSQ_BLOCKS, accumulate);
    cudaCheckLaunch();
}

double cuda_sum_squares(const float *x, size_t n) {
    if (n == 0) return 0.0;
    double *buf = (double *)cuda_scratch(SCRATCH_SUMSQ, (SUMSQ_BLOCKS + 1) * sizeof(double));
    cuda_sum_f64(buf, x, n, 1, 0);
    double result;
    cudaCheck(cudaMemcpyAsync(&result, buf, sizeof(double), cudaMemcpyDeviceToHost, cuda_stream()));
    cudaCheck(cudaStreamSynchronize(cuda_stream()));
    return result;
}

__global__ void scale_kernel(float *x, float s, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * s;
}

void cuda_scale_f32(float *x, float s, size_t n) {
    if (n == 0) return;
    LAUNCH(ceil_div_u(n, 256), 256, scale_kernel)(x, s, n);
    cudaCheckLaunch();
}
