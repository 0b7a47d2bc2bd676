// adamw.cu: the AdamW step, the squared norm for gradient clipping, and scaling, on fp32 spans.
// adamw_update repeats the CPU backend's arithmetic operation by operation (torch's single-tensor
// path): the same host-side scalars, and explicit _rn intrinsics so that nvcc cannot contract a
// multiply and an add into an fma where the CPU code has none (and fmaf where it has one), so the
// two backends give the same bits. sum_squares is a fixed two-pass reduction in double.
#include <math.h>

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

void cuda_adamw_update(float *p, const float *g, float *m, float *v, size_t n, double lr, double beta1,
                       double beta2, double eps, double weight_decay, int t) {
    if (n == 0) return;
    // the scalars exactly as kernels/cpu/adamw.c computes them
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
    LAUNCH(ceil_div_u(n, 256), 256, adamw_kernel)(p, g, m, v, n, a);
    cudaCheckLaunch();
}

// pass 1: a fixed grid walks x grid-stride, so which element lands in which partial depends on n alone
#define SUMSQ_BLOCKS 512
#define SUMSQ_THREADS 256

__global__ void __launch_bounds__(SUMSQ_THREADS) sumsq_partial_kernel(double *partial, const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double v = x[i];
        s += v * v;  // NaN stays NaN
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void __launch_bounds__(SUMSQ_THREADS) sumsq_final_kernel(double *out, const double *partial, int nparts) {
    double s = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += partial[i];
    s = block_sum(s);
    if (threadIdx.x == 0) *out = s;
}

size_t cuda_sum_squares_scratch(void) { return (SUMSQ_BLOCKS + 1) * sizeof(double); }

double cuda_sum_squares(const float *x, size_t n) {
    if (n == 0) return 0.0;
    double *buf = (double *)cuda_scratch(SCRATCH_SUMSQ, (SUMSQ_BLOCKS + 1) * sizeof(double));
    LAUNCH(SUMSQ_BLOCKS, SUMSQ_THREADS, sumsq_partial_kernel)(buf + 1, x, n);
    cudaCheckLaunch();
    LAUNCH(1, SUMSQ_THREADS, sumsq_final_kernel)(buf, buf + 1, SUMSQ_BLOCKS);
    cudaCheckLaunch();
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
