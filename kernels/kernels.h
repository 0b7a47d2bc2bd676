// kernels.h: every op the model needs, forward and backward, as one table of functions per backend.
// The model is written once against this table; kernels/cpu (fp32, OpenMP, CBLAS) and
// kernels/cuda (bf16 activations, cuBLASLt, cuDNN) each fill it in.
//
// Types. `act_t` is the backend's element type for activations, frozen weights and the compute
// copies of trainable weights: float on the CPU, bf16 on CUDA. Model code never dereferences it;
// it offsets pointers with k->act_bytes (see act_at). Arguments typed `float *` are fp32 on every
// backend: trainable master weights, their gradients, AdamW moments, norm statistics, losses.
// Integer arrays (token ids, positions, segments, row indices) are int32 in backend memory.
// All pointers are backend memory except where a comment says "host".
//
// Gradients. Parameter gradients (float *dw, *db) always accumulate (+=), so micro-batches add
// up; between grad_begin and grad_settle the backend may turn the first += into each element of
// the span into = (CUDA: beta 0 instead of a memset), which gives the same values. Activation gradients are overwritten, except where an op is marked "(+=)": the matmul,
// the norms and the depthwise conv accumulate into dinp because their input feeds several
// consumers (q/k/v projections, residual stream). A NULL gradient pointer means "not needed".
// Pointwise ops (gelu, quick_gelu, gelu_tanh, swiglu, add and their backwards) allow out to alias an input.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void act_t;

#ifdef __CUDACC__
#define KERNELS_HD __host__ __device__
#else
#define KERNELS_HD
#endif

// The dropout mask as a pure function of (seed, element index), shared by every backend so
// masks agree across backends and can be regenerated in the backward instead of stored:
// element i is kept when this uniform [0, 1) draw is >= p (splitmix64 of seed and index).
static inline KERNELS_HD float dropout_uniform(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// The largest shapes a model calls the ops with, as far as they decide the backend's scratch
// memory (the memory plan): sums over rows (bias, norm and conv weight gradients) and the
// attention backward.
typedef struct {
    size_t rows;  // the most rows of any op (B*T of the LLM, images * tokens of the vision side)
    int width;    // the widest row whose column sums are taken
    int attn_B, attn_T, attn_NH, attn_NKV, attn_HD;  // attention_backward's largest call; B 0: none
} KernelsWork;

// AdamW over a span in one call (adamw_span): runs of consecutive elements that share a
// learning rate and weight decay (the trainer's parameter groups, biases without decay), as a
// small table passed by value: run r covers elements [run[r-1].end, run[r].end) of the call's span
#define ADAMW_MAX_RUNS 32
typedef struct {
    size_t end;
    double lr, weight_decay;
} AdamwRun;
typedef struct {
    int n_runs;
    AdamwRun run[ADAMW_MAX_RUNS];
    double beta1, beta2, eps;
    int t;            // AdamW's step, 1-based
    double max_norm;  // > 0: clip_grad_norm_ first (gradients times min(1, max_norm / (norm + 1e-6)))
} AdamwSpan;

typedef struct Kernels {
    const char *name;     // "cpu" or "cuda"
    int dry_run;          // the planning table (kernels_dry_run): allocates and computes nothing
    size_t act_bytes;     // sizeof one act_t element: 4 on the CPU, 2 on CUDA
    int act_is_f32;       // 1 when act_t is float, so trainable weights need no compute copy
    int xent_chunk_rows;  // rows of logits the model materialises at a time in the loss
    size_t alloc_granule; // blocks may take up to a multiple of this (the plan's slack)

    // ---- memory ----
    void *(*alloc)(size_t bytes);  // zero-filled; fatal() when it does not fit
    void (*free)(void *p);
    void (*zero)(void *p, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);          // backend to backend
    void (*upload)(void *dst, const void *host_src, size_t bytes);    // raw bytes
    void (*download)(void *host_dst, const void *src, size_t bytes);  // raw bytes
    void (*upload_act)(act_t *dst, const float *host_src, size_t n);  // host fp32 -> act_t
    void (*download_act)(float *host_dst, const act_t *src, size_t n);
    void (*cast_to_act)(act_t *dst, const float *src, size_t n);  // fp32 -> act_t, on the backend
    void (*synchronize)(void);
    // The trainable gradient span of a step: grad_begin(g, n) makes [g, g + n) zero as far as
    // the ops that add into parameter gradients go (the CPU zeroes it; CUDA does not touch it:
    // the first op that writes each part overwrites it, and parts written by an op only in part
    // are zeroed then). grad_settle(g, n) zeroes whatever in [g, g + n) no op has written since;
    // call it on a range before reading it (reductions over ranks, the norm, AdamW) or writing it
    // any other way. A new grad_begin forgets the previous span.
    void (*grad_begin)(float *g, size_t n);
    void (*grad_settle)(float *g, size_t n);
    // Host memory that uploads read in place (CUDA: pinned, no copy into the staging ring; the
    // CPU: malloc): upload and upload_act from it are asynchronous, so before the host writes a
    // block again it calls host_ready(block), which returns once the device has read everything
    // uploaded from it so far (at once where nothing is pending). Callable from any thread.
    void *(*host_alloc)(size_t bytes);  // fatal() when out of memory
    void (*host_free)(void *p);         // waits for the block's reads first
    void (*host_ready)(const void *p);  // p: a block host_alloc gave (its start or inside it)
    // bytes held now and at most so far through alloc and the backend's own scratch buffers
    void (*memory)(size_t *in_use, size_t *peak);
    // bytes this process may still allocate: free device memory on CUDA, MemAvailable on the CPU
    void (*available)(size_t *free_bytes, size_t *total_bytes);
    // scratch the ops take at most for a model of these shapes (fixed buffers such as cuBLASLt's
    // workspace included), and the same allocated now, at exactly that size, so no op allocates
    // later; both count in memory()
    size_t (*workspace_bytes)(const KernelsWork *w);
    void (*workspace_reserve)(const KernelsWork *w);

    // ---- linear layers ----
    // out (N,OC) = alpha * inp (N,C) @ w (OC,C)^T + bias (OC) [+ out when accumulate]; bias may be NULL
    void (*matmul_forward)(act_t *out, const act_t *inp, const act_t *w, const act_t *bias,
                           int N, int C, int OC, float alpha, int accumulate);
    // dinp (N,C) += alpha * dout (N,OC) @ w (OC,C); dw (OC,C) += alpha * dout^T @ inp;
    // dbias (OC) += sum over rows of dout (not scaled by alpha)
    void (*matmul_backward)(act_t *dinp, float *dw, float *dbias, const act_t *dout,
                            const act_t *inp, const act_t *w, int N, int C, int OC, float alpha);
    // the same with dinp overwritten (=), for the first writer of a gradient buffer: no memset
    // before it (CUDA: beta = 0); dw and dbias still accumulate
    void (*matmul_backward_set)(act_t *dinp, float *dw, float *dbias, const act_t *dout,
                                const act_t *inp, const act_t *w, int N, int C, int OC, float alpha);
    // The two with row strides, so that a product reads or writes a column slice of a wider
    // buffer (the parts of a fused projection, LoRA hiddens side by side): rows of out and dout lie
    // ld_out elements apart (>= OC), rows of inp and dinp ld_inp apart (>= C); the weight stays
    // dense. With ld_out = OC and ld_inp = C they are the ops above (set: matmul_backward_set).
    void (*matmul_forward_ld)(act_t *out, const act_t *inp, const act_t *w, const act_t *bias, int N,
                              int C, int OC, float alpha, int accumulate, int ld_out, int ld_inp);
    void (*matmul_backward_ld)(act_t *dinp, float *dw, float *dbias, const act_t *dout,
                               const act_t *inp, const act_t *w, int N, int C, int OC, float alpha,
                               int set, int ld_out, int ld_inp);

    // ---- normalisation ----
    // out (N,C) = (inp - mean) * rstd * w + b; mean, rstd (N) saved when not NULL
    void (*layernorm_forward)(act_t *out, float *mean, float *rstd, const act_t *inp,
                              const act_t *w, const act_t *b, int N, int C, float eps);
    // dinp (+=), dw, db may be NULL
    void (*layernorm_backward)(act_t *dinp, float *dw, float *db, const act_t *dout,
                               const act_t *inp, const act_t *w, const float *mean,
                               const float *rstd, int N, int C);
    // out (N,C) = inp * rstd * w with rstd = 1/sqrt(mean(inp^2) + eps); rstd (N) saved when not NULL
    void (*rmsnorm_forward)(act_t *out, float *rstd, const act_t *inp, const act_t *w, int N,
                            int C, float eps);
    // the residual add and the RMSNorm after it in one pass: sum (N,C) = a + b (sum may alias a
    // or b), out = rmsnorm_forward of sum (the same bits as add then rmsnorm_forward)
    void (*add_rmsnorm_forward)(act_t *sum, act_t *out, float *rstd, const act_t *a, const act_t *b,
                                const act_t *w, int N, int C, float eps);
    // dinp (+=), dw may be NULL
    void (*rmsnorm_backward)(act_t *dinp, float *dw, const act_t *dout, const act_t *inp,
                             const act_t *w, const float *rstd, int N, int C);
    // the same with dinp overwritten (=), for the first writer of a gradient buffer: no memset
    // before it (the values of zero + rmsnorm_backward)
    void (*rmsnorm_backward_set)(act_t *dinp, float *dw, const act_t *dout, const act_t *inp,
                                 const act_t *w, const float *rstd, int N, int C);

    // ---- rotary position embedding, rotate-half form (Llama/Qwen2) ----
    // inp, out (N, n_heads*head_dim), rows ld_inp and ld_out elements apart (>= n_heads*head_dim:
    // q and k are read out of the rows of the fused q/k/v projection); pos (N) int; out may alias
    // inp (with the same ld). For i < head_dim/2: angle = pos * theta^(-2i/head_dim) in fp32 as
    // transformers computes it, out[i] = x[i] cos - x[i+h/2] sin, out[i+h/2] = x[i+h/2] cos + x[i] sin
    void (*rope_forward)(act_t *out, const act_t *inp, const int *pos, int N, int n_heads,
                         int head_dim, float theta, int ld_out, int ld_inp);
    // dinp = rotation by -angle of dout (rows ld_out apart), dinp rows ld_inp apart; may alias dout
    void (*rope_backward)(act_t *dinp, const act_t *dout, const int *pos, int N, int n_heads,
                          int head_dim, float theta, int ld_out, int ld_inp);

    // ---- attention, softmax(q k^T / sqrt(HD)) v ----
    // q, out (B,T,NH*HD); k, v (B,T,NKV*HD); query head h reads kv head h / (NH/NKV).
    // Key j is visible to query i when (!causal || j <= i) and (seg == NULL || seg[b,i] == seg[b,j]);
    // seg (B,T) int keeps packed samples apart. lse (B,NH,T) logsumexp saved when not NULL.
    void (*attention_forward)(act_t *out, float *lse, const act_t *q, const act_t *k,
                              const act_t *v, const int *seg, int B, int T, int NH, int NKV,
                              int HD, int causal);
    // dq, dk, dv overwritten; lse from the forward
    void (*attention_backward)(act_t *dq, act_t *dk, act_t *dv, const act_t *dout,
                               const act_t *q, const act_t *k, const act_t *v, const act_t *out,
                               const float *lse, const int *seg, int B, int T, int NH, int NKV,
                               int HD, int causal);
    // inference over a KV cache, causal, forward only: q, out (B, Tq, NH*HD) hold the queries of
    // positions Tk-Tq .. Tk-1; kc, vc (B, Tc, NKV*HD) the keys and values of positions 0 .. Tk-1
    // (Tc >= Tk is the cache's capacity: batch b starts at row b*Tc, rows Tk.. are not read).
    // Query i sees keys 0 .. Tk-Tq+i. Prefill is Tq = Tk, decoding one token Tq = 1, a chunk of
    // a long prompt anything between. Rows equal attention_forward's (causal, seg NULL).
    void (*attention_cached)(act_t *out, const act_t *q, const act_t *kc, const act_t *vc, int B,
                             int Tq, int Tk, int Tc, int NH, int NKV, int HD);

    // ---- pointwise ----
    void (*gelu_forward)(act_t *out, const act_t *inp, size_t n);  // erf form
    void (*gelu_backward)(act_t *dinp, const act_t *dout, const act_t *inp, size_t n);
    void (*quick_gelu_forward)(act_t *out, const act_t *inp, size_t n);  // x * sigmoid(1.702 x)
    void (*quick_gelu_backward)(act_t *dinp, const act_t *dout, const act_t *inp, size_t n);
    // tanh form (torch gelu approximate="tanh", HF gelu_pytorch_tanh: SigLIP):
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    void (*gelu_tanh_forward)(act_t *out, const act_t *inp, size_t n);
    void (*gelu_tanh_backward)(act_t *dinp, const act_t *dout, const act_t *inp, size_t n);
    // out (N, W) = silu(gate) * up; gate and up (N, W) with rows ld apart (>= W): the two halves
    // of the fused gate/up projection's rows (ld = 2W, up = gate + W), or dense (ld = W)
    void (*swiglu_forward)(act_t *out, const act_t *gate, const act_t *up, int N, int W, int ld);
    // dgate, dup (rows ld apart, like gate and up; either may be NULL) from dout (N, W) dense;
    // dgate may alias gate and dup up (an element is read before it is written)
    void (*swiglu_backward)(act_t *dgate, act_t *dup, const act_t *dout, const act_t *gate,
                            const act_t *up, int N, int W, int ld);
    // out = a + b; out may alias a or b
    void (*add)(act_t *out, const act_t *a, const act_t *b, size_t n);
    // inverted dropout: out[i] = inp[i] / (1 - p) where dropout_uniform(seed, i) >= p, else 0.
    // The mask depends on (seed, i) only: the backward is the same call on the gradient.
    void (*dropout)(act_t *out, const act_t *inp, size_t n, float p, uint64_t seed);

    // ---- patch grids, token-major (B, H*W, C), token index y*W + x ----
    // out (B, (H/2)*(W/2), C) = mean of each 2x2 block; H and W even
    void (*avgpool2x2_forward)(act_t *out, const act_t *inp, int B, int H, int W, int C);
    void (*avgpool2x2_backward)(act_t *dinp, const act_t *dout, int B, int H, int W, int C);
    // depthwise 3x3 conv, stride 1, zero padding 1: out = conv(inp) + bias;
    // w (C, 3, 3) as PyTorch stores Conv2d(C, C, 3, groups=C).weight; bias (C) may be NULL
    void (*dwconv3x3_forward)(act_t *out, const act_t *inp, const act_t *w, const act_t *bias,
                              int B, int H, int W, int C);
    // dinp (+=), dw, dbias may be NULL
    void (*dwconv3x3_backward)(act_t *dinp, float *dw, float *dbias, const act_t *dout,
                               const act_t *inp, const act_t *w, int B, int H, int W, int C);

    // ---- vision embeddings ----
    // img (B, 3, S, S) -> out (B, NP, 3*P*P) with NP = (S/P)^2 patches in row-major order and
    // columns ordered (channel, ky, kx) like a PyTorch Conv2d(3, C, P, stride=P) weight
    void (*im2col_patches)(act_t *out, const act_t *img, int B, int S, int P);
    // out (B, NP+1, C): row 0 = cls + pos[0], row 1+p = patches (B,NP,C)[p] + pos[1+p]
    void (*vit_embed)(act_t *out, const act_t *patches, const act_t *cls, const act_t *pos,
                      int B, int NP, int C);

    // ---- rows ----
    // out (N,C) row i = table (V,C) row ids[i]; rows with ids[i] < 0 are left untouched
    void (*embedding_forward)(act_t *out, const int *ids, const act_t *table, int N, int C, int V);
    // out (M,C) row i = inp row idx[i], or zeros where idx[i] < 0
    void (*gather_rows)(act_t *out, const act_t *inp, const int *idx, int M, int C);
    // out row idx[i] = inp (M,C) row i; idx distinct
    void (*scatter_rows)(act_t *out, const act_t *inp, const int *idx, int M, int C);
    // out (N, C) = inp (N, C), rows ld_out and ld_inp elements apart (column slices of wider
    // buffers: v out of the fused q/k/v rows, dv into their gradient); the two must not overlap
    void (*copy_rows)(act_t *out, const act_t *inp, int N, int C, int ld_out, int ld_inp);

    // ---- loss ----
    // logits (M,V), targets (M) all in [0,V): losses (M) fp32 = logsumexp(row) - row[target];
    // when dlogits != NULL it gets dscale * (softmax(row) - onehot(target)); may alias logits
    void (*cross_entropy)(float *losses, act_t *dlogits, const act_t *logits, const int *targets,
                          int M, int V, float dscale);

    // ---- optimiser, all fp32 ----
    // torch.optim.AdamW step t (1-based): p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    // p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    void (*adamw_update)(float *p, const float *g, float *m, float *v, size_t n, double lr,
                         double beta1, double beta2, double eps, double weight_decay, int t);
    double (*sum_squares)(const float *x, size_t n);  // to the host; NaN when any x is NaN
    void (*scale_f32)(float *x, float s, size_t n);
    // *out (one double in backend memory) = [*out +] the sum of x[i], or of x[i]^2 when squares,
    // in double in a fixed order (squares: the order of sum_squares, the same value); the host
    // does not wait for it
    void (*sum_f64)(double *out, const float *x, size_t n, int squares, int accumulate);
    // adamw_update over n elements in runs of their own lr and decay (AdamwSpan), in one launch,
    // the gradient norm read on the backend: norm = sqrt(*sumsq); when it, or *loss (NULL: no
    // check), is not finite nothing changes (the trainer's skipped step); else gradients are
    // clipped (a->max_norm) as they are read, exactly as scale_f32 by the coefficient would, and
    // g is left as it was. Elementwise, so a slice [a, b) of a span (a ZeRO shard) is the call on
    // p + a ... with the runs cut to it.
    void (*adamw_span)(float *p, const float *g, float *m, float *v, const AdamwSpan *a, const double *sumsq,
                       const double *loss);
} Kernels;

const Kernels *kernels_cpu(void);
// NULL when svlm was built without CUDA or no GPU is visible
const Kernels *kernels_cuda(void);
// device "cpu", "cuda" (fatal without one) or "auto" (cuda when available); `what` names the
// option in the error ("--device", "device =")
const Kernels *kernels_choose(const char *device, const char *what);
// A table for planning memory on `target` without touching it: alloc returns addresses that
// must not be dereferenced and counts the bytes (kernels_dry_run_bytes), the other memory ops do
// nothing, and the compute ops are NULL. act_bytes and the scratch sizing are target's. Setup
// code run on it (vlm_init) reads configs and file headers but no weight data.
const Kernels *kernels_dry_run(const Kernels *target);
size_t kernels_dry_run_bytes(void);   // allocated through the dry-run table since it was made
size_t kernels_dry_run_allocs(void);  // and in how many blocks
size_t kernels_dry_run_slack(void);   // what rounding each block up to alloc_granule adds

// pointer to element i of an act_t buffer
static inline act_t *act_at(const struct Kernels *k, const act_t *p, size_t i) {
    return (act_t *)((char *)p + i * k->act_bytes);
}

#ifdef __cplusplus
}
#endif
