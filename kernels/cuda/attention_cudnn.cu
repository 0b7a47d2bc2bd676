// attention_cudnn.cu: attention_forward and attention_backward as cuDNN fused flash attention
// (SVLM_ATTN=cudnn; attention.cu dispatches here first and runs the WMMA kernels of
// attention_tc.cu for whatever this file declines). Written against cuDNN's backend (graph) API in
// C, without the cudnn-frontend C++ headers: the backend's SDPA-specific operations
// (CUDNN_BACKEND_OPERATION_SDPA_FWD/BWD_DESCRIPTOR, cuDNN 9.19) take no causal mask, so the graphs
// here are the ones the frontend lowers its SDPA node to on this cuDNN version, built from generic
// operations, which the runtime fusion engine compiles into its flash-attention kernels:
//
//   forward   S = Q K^T (matmul, fp32), S *= 1/sqrt(HD) (pointwise, scalar by value), masks
//             (GEN_INDEX + compare -> boolean, BINARY_SELECT with the lowest float), softmax as
//             max / sub / exp / sum / div reductions and pointwise ops with lse = max + log(sum)
//             written as the stats output (B, NH, T, 1) fp32, P (bf16) V -> O
//   backward  Dsum = rowsum(dO * O) (an fp32 workspace tensor), S recomputed, P = exp(S - lse) under
//             the same masks, dV = P^T dO, dS = P * (dO V^T - Dsum) * scale, dK = dS^T Q,
//             dQ = dS K; with GQA (NKV < NH) dK and dV are per-query-head products reduced over
//             each kv group (a reduction ADD into the NKV-head output)
//
// Layouts: svlm's (B, T, heads * HD) rows are 4-d (B, heads, T, HD) tensors with strides
// (T*heads*HD, HD, heads*HD, 1): no copies. K^T and V^T are the same memory with the last two
// dims and strides swapped. lse (B, NH, T) is the stats tensor (B, NH, T, 1) as it is.
//
// Masks. Causal: key j visible to query i when j <= i (GEN_INDEX along axis 2 >= GEN_INDEX along
// axis 3). Packed rows (seg != NULL): the loader's segments are contiguous runs of one id (the
// padding tail one more run of -1), so "same segment and j <= i" is "j <= i <= end(j)" with end(j)
// the last position of j's run: a per-key upper bound on the query, compared with GEN_INDEX along
// axis 2 as a (B, 1, 1, T) int32 tensor broadcast over heads and queries (the padding mask's form,
// with a per-key instead of a per-batch bound). Per key rather than the equivalent per-query
// lower bound (start(i) <= j) because cuDNN's sm_80 backward takes at most two per-query
// vectors, and lse and rowsum(dO * O) are those two (tests/gpu/cudnn_graphs.c found it). end comes
// from seg by a small kernel here (attn_seg_end_kernel, one block per row: a min-scan). Non-causal
// packed rows are not expressible with one bound and go to the WMMA kernels.
//
// Determinism. cuDNN's fused backward accumulates dQ with fp32 atomics into a workspace tensor
// when the graph has one (the frontend's default graph: dS K -> fp32 dQ_accum -> identity -> dQ);
// a graph that writes dQ straight from the dS K matmul makes the engine use its "dP workspace"
// algorithm instead: dS materialised in the workspace (B * NH * T_64 * T_64 * 2 bytes, T_64 = T
// rounded up to 64), no atomics. That is what the frontend does for is_deterministic_algorithm on
// Hopper, and cuDNN's support matrix lists deterministic bprop for sm_80 and sm_90; the graph here
// is that one. The engines' numerical notes do not tell the two apart (both report only
// TENSOR_CORE for an sm_90 description, checked without a GPU), so skipping engines noted
// NONDETERMINISTIC is only a guard; the workspace tells them apart (tests/gpu/cudnn_graphs.c
// requires every backward engine offered to plan at least dS's bytes), and test_gpu checks that two
// runs give the same bytes.
//
// Plans: one per (direction, B, T, NH, NKV, HD, causal, segments, lse or not), built on first use
// (heuristics mode A, then the fallback list; the first deterministic engine config that
// finalizes) and kept in a table of CUDNN_CACHE (512) entries, the oldest replaced when full. A
// shape cuDNN cannot do is remembered as such, said once on stderr, and runs on the WMMA kernels.
// The runtime fusion engine compiles a kernel per plan, and padded batches bring a new T most
// steps: forward graphs are marked dynamic-shape and share a kernel cache per topology, so a new T
// reuses the compiled kernel (see KernelCache below; cuDNN 9.19 has no dynamic-shape backward).
// SVLM_CUDNN_BUCKET=64 (opt-in until a GPU session compares it) bounds the backward's compiles
// too: a call runs on the graph of T rounded up to the bucket with ragged tensors (each batch
// entry located by an offset, so the rows stay the call's) and a padding mask at T; the stats go
// through a scratch copy in the graph's (B, NH, T_bucket) layout. cuDNN 9.19 offers it on sm_90;
// on sm_80 its deterministic ragged backward does not exist, and the backward then runs on WMMA.
// Workspace: the plan's, plus the fp32 Dsum of the backward, the int32 segment ends and, when
// bucketing, the stats copy, offsets and lengths (scratch_layout), in scratch slot SCRATCH_CUDNN;
// cuda_attention_cudnn_scratch gives the memory plan the largest any engine config would take,
// from the heuristics alone. At the reference stage-2 shape (B 16, T 752,
// NH 14, NKV 2, HD 64) cuDNN plans 307,364,096 bytes for the deterministic backward (dS in bf16 at
// T 768, 264 MB, plus an fp32 (B, NH, T, HD) buffer) where the atomic one takes 43-86 MB, and
// 0-256 bytes for the forward (tests/gpu/cudnn_graphs.c prints these for an H200 description).
//
// Without cuDNN at build time (no -DSVLM_HAVE_CUDNN from scripts/install_deps.sh) or in the CPU
// emulator, the path is compiled out: attn_cudnn_* decline and cuda_attention_cudnn_available says
// "not built". The segment-end kernel is built everywhere, so the emulator tests it.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/common.cuh"

// ---------------------------------------------------------------- segment ends (every build)

#define SEG_THREADS 1024

// one block per row: each thread takes a run of ceil(T / 1024) positions and finds the first
// segment end in it (t == T-1 or seg[t] != seg[t+1]); a Hillis-Steele min-scan from the right over
// the threads gives each run the first end after it, and the run is then filled right to left
__global__ void __launch_bounds__(SEG_THREADS) attn_seg_end_kernel(int *end, const int *seg, int T, int out_stride) {
    __shared__ int carry[SEG_THREADS];
    const int *s = seg + (size_t)blockIdx.x * T;
    int *o = end + (size_t)blockIdx.x * out_stride;
    int per = (T + SEG_THREADS - 1) / SEG_THREADS, me = (int)threadIdx.x;
    int t0 = me * per, t1 = min(T, t0 + per);
    int first = T;  // none in this run
    for (int t = t1 - 1; t >= t0; t--)
        if (t == T - 1 || s[t] != s[t + 1]) first = t;
    carry[me] = first;
    __syncthreads();
    for (int off = 1; off < SEG_THREADS; off <<= 1) {
        int v = me + off < SEG_THREADS ? carry[me + off] : T;
        __syncthreads();
        if (v < carry[me]) carry[me] = v;
        __syncthreads();
    }
    int cur = me + 1 < SEG_THREADS ? carry[me + 1] : T;  // the first end after t1 - 1
    for (int t = t1 - 1; t >= t0; t--) {
        if (t == T - 1 || s[t] != s[t + 1]) cur = t;
        o[t] = cur;
    }
}

// rows of out_stride >= T positions (the bucketed graphs' padded rows; the rest is not written)
static void segment_ends(int *end, const int *seg, int B, int T, int out_stride) {
    if (B <= 0 || T <= 0) return;
    LAUNCH(B, SEG_THREADS, attn_seg_end_kernel)(end, seg, T, out_stride);
    cudaCheckLaunch();
}

extern "C" void cuda_attention_segment_ends(int *end, const int *seg, int B, int T) { segment_ends(end, seg, B, T, T); }

#if defined(SVLM_HAVE_CUDNN) && !defined(SVLM_CUDA_EMU)

#include <cudnn.h>

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

static long g_ran, g_declined;

// ---------------------------------------------------------------- graph building

enum { DIR_FWD, DIR_BWD };

// T is the graph's: the call's T, or with bucketing (ragged) T rounded up to the bucket
typedef struct {
    int dir, B, T, NH, NKV, HD, causal, seg, lse, ragged;
} AttnKey;

#define MAX_DESC 160  // descriptors of one graph (the backward with both masks uses ~110)
#define MAX_OPS 64

// a graph under construction: every descriptor made is kept to be destroyed with the plan
typedef struct {
    cudnnBackendDescriptor_t d[MAX_DESC];
    int nd;
    cudnnBackendDescriptor_t ops[MAX_OPS];
    int nops;
    int64_t next_uid;       // virtual tensors' ids
    cudnnBackendDescriptor_t offq, offk, seqlen;  // ragged graphs: row offsets, sequence lengths
    cudnnStatus_t status;   // first failure
    int line;               // where
} Build;

// variant-pack ids of the non-virtual tensors
enum { U_Q = 1, U_K, U_V, U_O, U_STATS, U_END, U_SCALE, U_NEG, U_ONE, U_DO, U_DQ, U_DK, U_DV, U_DSUM, U_OFFQ, U_OFFK,
       U_SEQ };

#define BTRY(b, call)                                            \
    do {                                                         \
        if ((b)->status == CUDNN_STATUS_SUCCESS) {               \
            cudnnStatus_t st_ = (call);                          \
            if (st_ != CUDNN_STATUS_SUCCESS) {                   \
                (b)->status = st_;                               \
                (b)->line = __LINE__;                            \
            }                                                    \
        }                                                        \
    } while (0)

static cudnnBackendDescriptor_t make(Build *b, cudnnBackendDescriptorType_t type) {
    cudnnBackendDescriptor_t d = NULL;
    if (b->status != CUDNN_STATUS_SUCCESS) return NULL;
    if (b->nd == MAX_DESC) {
        b->status = CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED;
        b->line = __LINE__;
        return NULL;
    }
    BTRY(b, cudnnBackendCreateDescriptor(type, &d));
    if (d) b->d[b->nd++] = d;
    return d;
}

static void set(Build *b, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t t,
                int64_t n, const void *v) {
    if (d) BTRY(b, cudnnBackendSetAttribute(d, a, t, n, v));
}

static void fin(Build *b, cudnnBackendDescriptor_t d) {
    if (d) BTRY(b, cudnnBackendFinalize(d));
}

// a 4-d tensor; uid 0 = a new virtual tensor; ragged: the tensor of its batch entries' offsets
static cudnnBackendDescriptor_t tensor_r(Build *b, cudnnDataType_t type, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                                         int64_t s0, int64_t s1, int64_t s2, int64_t s3, int64_t uid, int by_value,
                                         cudnnBackendDescriptor_t ragged) {
    cudnnBackendDescriptor_t t = make(b, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    int64_t dims[4] = {d0, d1, d2, d3}, strides[4] = {s0, s1, s2, s3}, align = 16;
    bool virt = uid == 0, byv = by_value != 0;
    if (virt) uid = b->next_uid++;
    set(b, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    set(b, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
    set(b, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
    set(b, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set(b, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    set(b, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt);
    if (byv) set(b, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &byv);
    if (ragged) set(b, t, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ragged);
    fin(b, t);
    return t;
}

static cudnnBackendDescriptor_t tensor(Build *b, cudnnDataType_t type, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                                       int64_t s0, int64_t s1, int64_t s2, int64_t s3, int64_t uid, int by_value) {
    return tensor_r(b, type, d0, d1, d2, d3, s0, s1, s2, s3, uid, by_value, NULL);
}

// a scalar passed by value in the variant pack (host memory)
static cudnnBackendDescriptor_t scalar(Build *b, int64_t uid) {
    return tensor(b, CUDNN_DATA_FLOAT, 1, 1, 1, 1, 1, 1, 1, 1, uid, 1);
}

static void add_op(Build *b, cudnnBackendDescriptor_t op) {
    fin(b, op);
    if (b->status != CUDNN_STATUS_SUCCESS) return;
    if (b->nops == MAX_OPS) {
        b->status = CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED;
        b->line = __LINE__;
        return;
    }
    b->ops[b->nops++] = op;
}

// y = mode(x [, x2 [, t]]); prec the math precision; axis for GEN_INDEX (-1: none)
static void pw(Build *b, cudnnPointwiseMode_t mode, cudnnDataType_t prec, cudnnBackendDescriptor_t x,
               cudnnBackendDescriptor_t x2, cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, int64_t axis) {
    cudnnBackendDescriptor_t desc = make(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    set(b, desc, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    set(b, desc, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    if (axis >= 0) set(b, desc, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    fin(b, desc);
    cudnnBackendDescriptor_t op = make(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &desc);
    set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (x2) set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x2);
    if (t) set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
    set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    add_op(b, op);
}

enum { OV_M = 1, OV_N = 2, OV_K = 4 };

// c = a @ b batched over the first two dims (GQA: b's fewer heads each serve a group of a's),
// fp32 compute; in a ragged graph the GEMM sizes named in `ov` are the sequence lengths, per batch
static void mm(Build *b, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t bb, cudnnBackendDescriptor_t c, int ov) {
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t desc = make(b, CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    set(b, desc, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    fin(b, desc);
    cudnnBackendDescriptor_t op = make(b, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bb);
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &desc);
    if (b->seqlen && (ov & OV_M))
        set(b, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b->seqlen);
    if (b->seqlen && (ov & OV_N))
        set(b, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b->seqlen);
    if (b->seqlen && (ov & OV_K))
        set(b, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b->seqlen);
    add_op(b, op);
}

// y = reduction of x over the dims where y has extent 1 (ADD or MAX), fp32
static void red(Build *b, cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t desc = make(b, CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    set(b, desc, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
    set(b, desc, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    fin(b, desc);
    cudnnBackendDescriptor_t op = make(b, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &desc);
    add_op(b, op);
}

// y = x viewed with y's dims and strides (a transpose of the last two dims here)
static void reshape(Build *b, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t op = make(b, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    set(b, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    set(b, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    add_op(b, op);
}

// a virtual tensor shaped like the scores (B, NH, T, T), row-major per head
static cudnnBackendDescriptor_t full(Build *b, const AttnKey *k, cudnnDataType_t type) {
    int64_t T = k->T;
    return tensor(b, type, k->B, k->NH, T, T, (int64_t)k->NH * T * T, T * T, T, 1, 0, 0);
}

// the score tensor (B, NH, T, T) fp32
static cudnnBackendDescriptor_t scores(Build *b, const AttnKey *k) { return full(b, k, CUDNN_DATA_FLOAT); }

// the masks on a score tensor s: packed rows first (i <= end(j)), then causal (j <= i); both
// select the lowest float where a key is hidden (exp of it minus a finite max is 0)
static cudnnBackendDescriptor_t masks(Build *b, const AttnKey *k, cudnnBackendDescriptor_t s,
                                      cudnnBackendDescriptor_t neg) {
    int64_t B = k->B, T = k->T;
    if (k->ragged) {  // the padding mask: row and column below the batch entry's length
        cudnnBackendDescriptor_t row = full(b, k, CUDNN_DATA_INT32);
        cudnnBackendDescriptor_t col = full(b, k, CUDNN_DATA_INT32);
        pw(b, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, s, NULL, NULL, row, 2);
        pw(b, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, s, NULL, NULL, col, 3);
        cudnnBackendDescriptor_t rk = full(b, k, CUDNN_DATA_BOOLEAN);
        cudnnBackendDescriptor_t ck = full(b, k, CUDNN_DATA_BOOLEAN);
        cudnnBackendDescriptor_t keep = full(b, k, CUDNN_DATA_BOOLEAN);
        pw(b, CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, row, b->seqlen, NULL, rk, -1);
        pw(b, CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, col, b->seqlen, NULL, ck, -1);
        pw(b, CUDNN_POINTWISE_LOGICAL_AND, CUDNN_DATA_BOOLEAN, rk, ck, NULL, keep, -1);
        cudnnBackendDescriptor_t out = scores(b, k);
        pw(b, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, neg, keep, out, -1);
        s = out;
    }
    if (k->seg) {
        cudnnBackendDescriptor_t row = full(b, k, CUDNN_DATA_INT32);
        pw(b, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, s, NULL, NULL, row, 2);
        // end (B, 1, 1, T): one bound per key, broadcast over heads and queries
        cudnnBackendDescriptor_t end = tensor(b, CUDNN_DATA_INT32, B, 1, 1, T, T, T, T, 1, U_END, 0);
        cudnnBackendDescriptor_t keep = full(b, k, CUDNN_DATA_BOOLEAN);
        pw(b, CUDNN_POINTWISE_CMP_LE, CUDNN_DATA_BOOLEAN, row, end, NULL, keep, -1);
        cudnnBackendDescriptor_t out = scores(b, k);
        pw(b, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, neg, keep, out, -1);
        s = out;
    }
    if (k->causal) {
        cudnnBackendDescriptor_t row = full(b, k, CUDNN_DATA_INT32);
        cudnnBackendDescriptor_t col = full(b, k, CUDNN_DATA_INT32);
        pw(b, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, NULL, NULL, row, 2);
        pw(b, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, NULL, NULL, col, 3);
        cudnnBackendDescriptor_t keep = full(b, k, CUDNN_DATA_BOOLEAN);
        pw(b, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, NULL, keep, -1);
        cudnnBackendDescriptor_t out = scores(b, k);
        pw(b, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, neg, keep, out, -1);
        s = out;
    }
    return s;
}

// Q-like (B, T, heads*HD) rows as (B, heads, T, HD); transposed: (B, heads, HD, T)
// (ragged: the batch stride is the graph's, but each batch entry starts where its offset says:
// b * T_call * heads * HD elements, so the rows are the call's, unpadded)
static cudnnBackendDescriptor_t rows4(Build *b, const AttnKey *k, int heads, int64_t uid, int transposed) {
    int64_t T = k->T, HD = k->HD, H = heads;
    cudnnBackendDescriptor_t off = !k->ragged ? NULL : heads == k->NH ? b->offq : b->offk;
    if (transposed) return tensor_r(b, CUDNN_DATA_BFLOAT16, k->B, H, HD, T, T * H * HD, HD, 1, H * HD, uid, 0, off);
    return tensor_r(b, CUDNN_DATA_BFLOAT16, k->B, H, T, HD, T * H * HD, HD, H * HD, 1, uid, 0, off);
}

// a ragged graph's row offsets (B+1) of Q-like and K-like tensors and sequence lengths (B), int32
static void ragged_inputs(Build *b, const AttnKey *k) {
    if (!k->ragged) return;
    b->offq = tensor(b, CUDNN_DATA_INT32, k->B + 1, 1, 1, 1, 1, 1, 1, 1, U_OFFQ, 0);
    b->offk = tensor(b, CUDNN_DATA_INT32, k->B + 1, 1, 1, 1, 1, 1, 1, 1, U_OFFK, 0);
    b->seqlen = tensor(b, CUDNN_DATA_INT32, k->B, 1, 1, 1, 1, 1, 1, 1, U_SEQ, 0);
}

// per-row statistics (B, NH, T, 1) fp32
static cudnnBackendDescriptor_t rowstat(Build *b, const AttnKey *k, int64_t uid) {
    int64_t NH = k->NH, T = k->T;
    return tensor(b, CUDNN_DATA_FLOAT, k->B, NH, T, 1, NH * T, T, 1, 1, uid, 0);
}

static void build_forward(Build *b, const AttnKey *k) {
    ragged_inputs(b, k);
    cudnnBackendDescriptor_t q = rows4(b, k, k->NH, U_Q, 0), kt = rows4(b, k, k->NKV, U_K, 1);
    cudnnBackendDescriptor_t v = rows4(b, k, k->NKV, U_V, 0), o = rows4(b, k, k->NH, U_O, 0);
    cudnnBackendDescriptor_t scale = scalar(b, U_SCALE), neg = scalar(b, U_NEG);
    cudnnBackendDescriptor_t s = scores(b, k), ss = scores(b, k);
    mm(b, q, kt, s, OV_M | OV_N);
    pw(b, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, s, scale, NULL, ss, -1);
    s = masks(b, k, ss, neg);
    // softmax, with lse = max + log(sum exp(s - max)) as the stats output
    cudnnBackendDescriptor_t mx = rowstat(b, k, 0), sum = rowstat(b, k, 0), lg = rowstat(b, k, 0);
    cudnnBackendDescriptor_t stats = rowstat(b, k, k->lse ? U_STATS : 0);
    cudnnBackendDescriptor_t sub = scores(b, k), e = scores(b, k);
    red(b, CUDNN_REDUCE_TENSOR_MAX, s, mx);
    pw(b, CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, s, mx, NULL, sub, -1);
    pw(b, CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, sub, NULL, NULL, e, -1);
    red(b, CUDNN_REDUCE_TENSOR_ADD, e, sum);
    pw(b, CUDNN_POINTWISE_LOG, CUDNN_DATA_FLOAT, sum, NULL, NULL, lg, -1);
    pw(b, CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, mx, lg, NULL, stats, -1);
    // P in bf16: the second matmul's A operand takes the I/O type
    int64_t NH = k->NH, T = k->T;
    cudnnBackendDescriptor_t p = tensor(b, CUDNN_DATA_BFLOAT16, k->B, NH, T, T, NH * T * T, T * T, T, 1, 0, 0);
    pw(b, CUDNN_POINTWISE_DIV, CUDNN_DATA_FLOAT, e, sum, NULL, p, -1);
    mm(b, p, v, o, OV_M | OV_K);
}

static void build_backward(Build *b, const AttnKey *k) {
    int64_t B = k->B, NH = k->NH, NKV = k->NKV, T = k->T, HD = k->HD;
    ragged_inputs(b, k);
    cudnnBackendDescriptor_t q = rows4(b, k, NH, U_Q, 0), kt = rows4(b, k, NKV, U_K, 1);
    cudnnBackendDescriptor_t vt = rows4(b, k, NKV, U_V, 1), o = rows4(b, k, NH, U_O, 0);
    cudnnBackendDescriptor_t dO = rows4(b, k, NH, U_DO, 0), dq = rows4(b, k, NH, U_DQ, 0);
    cudnnBackendDescriptor_t dk = rows4(b, k, NKV, U_DK, 0), dv = rows4(b, k, NKV, U_DV, 0);
    cudnnBackendDescriptor_t stats = rowstat(b, k, U_STATS), dsum = rowstat(b, k, U_DSUM);
    cudnnBackendDescriptor_t scale = scalar(b, U_SCALE), neg = scalar(b, U_NEG), one = scalar(b, U_ONE);

    // Dsum = rowsum(dO * O), a non-virtual fp32 tensor in the workspace
    cudnnBackendDescriptor_t prod = tensor(b, CUDNN_DATA_FLOAT, B, NH, T, HD, NH * T * HD, T * HD, NH * HD, 1, 0, 0);
    cudnnBackendDescriptor_t rsum = rowstat(b, k, 0);
    pw(b, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dO, o, NULL, prod, -1);
    red(b, CUDNN_REDUCE_TENSOR_ADD, prod, rsum);
    pw(b, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, rsum, one, NULL, dsum, -1);

    // P = exp(S * scale - lse) under the masks
    cudnnBackendDescriptor_t s = scores(b, k), ss = scores(b, k), sm = scores(b, k), e = scores(b, k);
    mm(b, q, kt, s, OV_M | OV_N);
    pw(b, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, s, scale, NULL, ss, -1);
    pw(b, CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, ss, stats, NULL, sm, -1);
    cudnnBackendDescriptor_t masked = masks(b, k, sm, neg);
    pw(b, CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, masked, NULL, NULL, e, -1);

    // dV = P^T dO (per query head, then summed over each kv group)
    cudnnBackendDescriptor_t pt = tensor(b, CUDNN_DATA_BFLOAT16, B, NH, T, T, NH * T * T, T * T, 1, T, 0, 0);
    reshape(b, e, pt);
    if (NH == NKV) {
        mm(b, pt, dO, dv, OV_M | OV_K);
    } else {
        cudnnBackendDescriptor_t full = tensor(b, CUDNN_DATA_BFLOAT16, B, NH, T, HD, NH * T * HD, T * HD, HD, 1, 0, 0);
        mm(b, pt, dO, full, OV_M | OV_K);
        red(b, CUDNN_REDUCE_TENSOR_ADD, full, dv);
    }

    // dS = P * (dO V^T - Dsum) * scale
    cudnnBackendDescriptor_t dp = scores(b, k), dp2 = scores(b, k), dp3 = scores(b, k), ds = scores(b, k);
    mm(b, dO, vt, dp, OV_M | OV_N);
    pw(b, CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, dp, dsum, NULL, dp2, -1);
    pw(b, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dp2, e, NULL, dp3, -1);
    pw(b, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dp3, scale, NULL, ds, -1);

    // dK = dS^T Q (per query head, then summed over each kv group)
    cudnnBackendDescriptor_t dst = tensor(b, CUDNN_DATA_BFLOAT16, B, NH, T, T, NH * T * T, T * T, 1, T, 0, 0);
    reshape(b, ds, dst);
    if (NH == NKV) {
        mm(b, dst, q, dk, OV_M | OV_K);
    } else {
        cudnnBackendDescriptor_t full = tensor(b, CUDNN_DATA_BFLOAT16, B, NH, T, HD, NH * T * HD, T * HD, HD, 1, 0, 0);
        mm(b, dst, q, full, OV_M | OV_K);
        red(b, CUDNN_REDUCE_TENSOR_ADD, full, dk);
    }

    // dQ = dS K, written straight to dq: the deterministic (dP workspace) algorithm, no fp32
    // dQ accumulator updated by atomics
    cudnnBackendDescriptor_t kk = tensor_r(b, CUDNN_DATA_BFLOAT16, B, NKV, T, HD, T * NKV * HD, HD, NKV * HD, 1, 0, 0,
                                           k->ragged ? b->offk : NULL);
    reshape(b, kt, kk);
    mm(b, ds, kk, dq, OV_M | OV_K);
}

// ---------------------------------------------------------------- plans

static cudnnHandle_t g_handle;
static int g_state;  // 0 not tried, 1 ready, -1 unavailable (g_why)
static int g_sm;     // the device's compute capability, 10 * major + minor
static char g_why[256];

// CUDNN_ATTR_OPERATIONGRAPH_HANDLE and CUDNN_ATTR_EXECUTION_PLAN_HANDLE are marked deprecated in
// cuDNN 9 but still read; their values, so that the build stays free of deprecation warnings
#define ATTR_GRAPH_HANDLE ((cudnnBackendAttributeName_t)800)
#define ATTR_PLAN_HANDLE ((cudnnBackendAttributeName_t)400)

typedef struct {
    int used;
    AttnKey key;
    int ok;                       // 0: cuDNN cannot do this shape (remembered), run elsewhere
    cudnnBackendDescriptor_t plan;
    int64_t ws;                   // the plan's workspace bytes
    Build *build;                 // every descriptor of the graph (freed with the entry)
    int pinned;                   // its graph made a kernel cache: never replaced
} Plan;

// Kernel caches: the runtime fusion engine compiles a kernel for each new plan, which takes
// long, and padded batches bring a new T most steps. A graph marked dynamic-shape
// (CUDNN_ATTR_OPERATIONGRAPH_IS_DYNAMIC_SHAPE_ENABLED) whose plan is given a kernel cache reuses
// the kernel compiled for an earlier graph of the same topology (same ops and masks, other sizes)
// instead. One cache per topology, made from the first graph of it (kept for good); when cuDNN
// refuses the dynamic graph, that topology is built static from then on
// (SVLM_CUDNN_DYNAMIC=0: always static). Forward graphs only: cuDNN 9.19's heuristics offer no
// engine for the dynamic-shape backward graph (found by building these graphs for an sm_90
// device description without a GPU, as tests/gpu/cudnn_graphs.c does), where the static one
// gets two; each new T then compiles a backward kernel (1-2.5 s of NVRTC on this project's CI
// machine).
typedef struct {
    int used, dir, causal, seg, lse, gqa, HD, ragged;
    cudnnBackendDescriptor_t cache;
    int failed;  // dynamic plans refused: static ones for this topology
} KernelCache;
#define N_KCACHE 32
static KernelCache g_kc[N_KCACHE];
static int g_dynamic = -1;

// padded batches bring a new T most steps and the backward has no kernel cache: room for every T
// of a run (a plan holds its descriptors and compiled kernel, some hundred KB)
#define CUDNN_CACHE 512
static Plan g_plans[CUDNN_CACHE];
static int g_next_evict;
static int g_said_fallback;  // bit per kind of call already reported
static long g_plans_built;
static double g_build_seconds;

// at exit, when SVLM_ATTN=cudnn was used: what ran where and what the plans cost (a GPU session's
// logs then say whether cuDNN did the work)
static void report_at_exit(void) {
    if (g_ran + g_declined == 0) return;
    fprintf(stderr, "svlm: cuDNN attention: %ld calls ran on cuDNN, %ld declined (run on WMMA); %ld plans built in "
            "%.1f s\n", g_ran, g_declined, g_plans_built, g_build_seconds);
}

static int setup(void) {
    if (g_state) return g_state > 0;
    g_state = -1;
    atexit(report_at_exit);
    size_t v = cudnnGetVersion();
    if (v < 90000) {
        snprintf(g_why, sizeof g_why, "cuDNN %zu loaded, 9.0 or newer needed", v);
        return 0;
    }
    int dev = 0;
    cudaDeviceProp prop;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        cudaGetLastError();
        snprintf(g_why, sizeof g_why, "no CUDA device");
        return 0;
    }
    g_sm = 10 * prop.major + prop.minor;
    if (prop.major < 8) {
        snprintf(g_why, sizeof g_why, "cuDNN fused attention needs sm_80 or newer, device is sm_%d%d", prop.major, prop.minor);
        return 0;
    }
    cudnnStatus_t st = cudnnCreate(&g_handle);
    if (st != CUDNN_STATUS_SUCCESS) {
        snprintf(g_why, sizeof g_why, "cudnnCreate failed: %s", cudnnGetErrorString(st));
        return 0;
    }
    g_state = 1;
    return 1;
}

static void build_free(Build *b) {
    if (!b) return;
    for (int i = b->nd - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(b->d[i]);
    free(b);
}

static void plan_clear(Plan *p) {
    if (p->plan) cudnnBackendDestroyDescriptor(p->plan);
    build_free(p->build);
    memset(p, 0, sizeof *p);
}

static int engine_deterministic(cudnnBackendDescriptor_t cfg) {
    cudnnBackendDescriptor_t eng = NULL;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng) != CUDNN_STATUS_SUCCESS) return 0;
    int64_t n = 0;
    int ok = 1;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &eng) ==
        CUDNN_STATUS_SUCCESS) {
        cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
        int64_t nn = 0;
        if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                     CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &nn, notes) == CUDNN_STATUS_SUCCESS) {
            for (int64_t i = 0; i < nn; i++)
                if (notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) ok = 0;
        }
    }
    cudnnBackendDestroyDescriptor(eng);
    return ok;
}

// the first engine config of `mode`'s list that is deterministic and finalizes into a plan
static cudnnBackendDescriptor_t plan_from_heuristics(cudnnBackendDescriptor_t graph, cudnnBackendHeurMode_t mode,
                                                     cudnnBackendDescriptor_t kcache, int64_t *ws) {
    cudnnBackendDescriptor_t heur = NULL, found = NULL;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur) != CUDNN_STATUS_SUCCESS) return NULL;
    enum { MAXCFG = 16 };
    cudnnBackendDescriptor_t cfg[MAXCFG];
    int ncfg = 0;
    int64_t n = 0;
    if (cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph) !=
            CUDNN_STATUS_SUCCESS ||
        cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode) != CUDNN_STATUS_SUCCESS ||
        cudnnBackendFinalize(heur) != CUDNN_STATUS_SUCCESS)
        goto done;
    for (; ncfg < MAXCFG; ncfg++)
        if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfg[ncfg]) != CUDNN_STATUS_SUCCESS) break;
    if (cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, ncfg, &n, cfg) !=
        CUDNN_STATUS_SUCCESS)
        n = 0;
    for (int64_t i = 0; i < n && i < ncfg && !found; i++) {
        if (!engine_deterministic(cfg[i])) continue;
        cudnnBackendDescriptor_t plan = NULL;
        int64_t got = 0;
        if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) != CUDNN_STATUS_SUCCESS) continue;
        if (cudnnBackendSetAttribute(plan, ATTR_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_handle) == CUDNN_STATUS_SUCCESS &&
            cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                     &cfg[i]) == CUDNN_STATUS_SUCCESS &&
            (!kcache || cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_KERNEL_CACHE,
                                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &kcache) == CUDNN_STATUS_SUCCESS) &&
            cudnnBackendFinalize(plan) == CUDNN_STATUS_SUCCESS &&
            cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &got, ws) ==
                CUDNN_STATUS_SUCCESS) {
            found = plan;
        } else {
            cudnnBackendDestroyDescriptor(plan);
        }
    }
done:
    for (int i = 0; i < ncfg; i++) cudnnBackendDestroyDescriptor(cfg[i]);
    cudnnBackendDestroyDescriptor(heur);
    return found;
}

static int key_eq(const AttnKey *a, const AttnKey *b) { return memcmp(a, b, sizeof *a) == 0; }

static const char *shape_str(const AttnKey *k, char *buf, size_t cap) {
    snprintf(buf, cap, "%s B%d T%d%s NH%d NKV%d HD%d%s%s", k->dir == DIR_FWD ? "forward" : "backward", k->B, k->T,
             k->ragged ? " (bucket)" : "", k->NH, k->NKV, k->HD, k->causal ? " causal" : "", k->seg ? " packed" : "");
    return buf;
}

static KernelCache *kcache_of(const AttnKey *k) {
    if (g_dynamic < 0) {
        const char *e = getenv("SVLM_CUDNN_DYNAMIC");
        g_dynamic = !(e && strcmp(e, "0") == 0);
    }
    if (!g_dynamic || k->dir != DIR_FWD) return NULL;
    KernelCache want = {1, k->dir, k->causal, k->seg, k->lse, k->NH != k->NKV, k->HD, k->ragged, NULL, 0};
    for (int i = 0; i < N_KCACHE; i++) {
        KernelCache *c = &g_kc[i];
        if (c->used && c->dir == want.dir && c->causal == want.causal && c->seg == want.seg && c->lse == want.lse &&
            c->gqa == want.gqa && c->HD == want.HD && c->ragged == want.ragged)
            return c->failed ? NULL : c;
    }
    for (int i = 0; i < N_KCACHE; i++)
        if (!g_kc[i].used) {
            g_kc[i] = want;
            return &g_kc[i];
        }
    return NULL;  // more topologies than slots: static plans
}

// builds p's graph and plan (dynamic with kernel cache kc, or static when kc is NULL); 0 with
// `why` on failure, p->build then holding what was made
static int plan_build(Plan *p, const AttnKey *k, KernelCache *kc, char *why, size_t cap) {
    Build *b = (Build *)xcalloc(1, sizeof(Build));
    b->next_uid = 1000;
    p->build = b;
    if (k->dir == DIR_FWD) build_forward(b, k);
    else build_backward(b, k);
    cudnnBackendDescriptor_t graph = make(b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set(b, graph, ATTR_GRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_handle);
    set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, b->nops, b->ops);
    bool dyn = true;
    if (kc) set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_IS_DYNAMIC_SHAPE_ENABLED, CUDNN_TYPE_BOOLEAN, 1, &dyn);
    fin(b, graph);
    if (b->status != CUDNN_STATUS_SUCCESS) {
        char last[128] = "";
        cudnnGetLastErrorString(last, sizeof last);
        snprintf(why, cap, "graph not accepted (%s at attention_cudnn.cu:%d%s%s)", cudnnGetErrorString(b->status),
                 b->line, *last ? ": " : "", last);
        return 0;
    }
    int made_cache = 0;
    if (kc && !kc->cache) {
        cudnnBackendDescriptor_t c = NULL;
        if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_KERNEL_CACHE_DESCRIPTOR, &c) == CUDNN_STATUS_SUCCESS &&
            cudnnBackendSetAttribute(c, CUDNN_ATTR_KERNEL_CACHE_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                     &graph) == CUDNN_STATUS_SUCCESS &&
            cudnnBackendFinalize(c) == CUDNN_STATUS_SUCCESS) {
            kc->cache = c;
            made_cache = 1;
        } else {
            if (c) cudnnBackendDestroyDescriptor(c);
            snprintf(why, cap, "no kernel cache");
            return 0;
        }
    }
    cudnnBackendDescriptor_t cache = kc ? kc->cache : NULL;
    p->plan = plan_from_heuristics(graph, CUDNN_HEUR_MODE_A, cache, &p->ws);
    if (!p->plan) p->plan = plan_from_heuristics(graph, CUDNN_HEUR_MODE_FALLBACK, cache, &p->ws);
    if (!p->plan) {
        if (made_cache) {
            cudnnBackendDestroyDescriptor(kc->cache);
            kc->cache = NULL;
        }
        snprintf(why, cap, "no deterministic engine finalizes for it");
        return 0;
    }
    p->pinned = made_cache;  // the cache was made from this graph: keep it
    return 1;
}

// the plan of a shape, built on first use; NULL when cuDNN cannot do it (said once)
static Plan *plan_get(const AttnKey *k) {
    for (int i = 0; i < CUDNN_CACHE; i++)
        if (g_plans[i].used && key_eq(&g_plans[i].key, k)) return g_plans[i].ok ? &g_plans[i] : NULL;
    int slot = -1;
    for (int i = 0; i < CUDNN_CACHE && slot < 0; i++)
        if (!g_plans[i].used) slot = i;
    for (int tries = 0; slot < 0 && tries < CUDNN_CACHE; tries++) {
        // full: replace the oldest unpinned one, after the work queued with it (its kernels live
        // with the plan)
        int i = g_next_evict;
        g_next_evict = (g_next_evict + 1) % CUDNN_CACHE;
        if (!g_plans[i].pinned) {
            cudaCheck(cudaStreamSynchronize(cuda_stream()));
            plan_clear(&g_plans[i]);
            slot = i;
        }
    }
    CHECK(slot >= 0, "cuDNN attention: every plan slot holds a kernel cache's graph");
    Plan *p = &g_plans[slot];
    p->used = 1;
    p->key = *k;
    char why[200] = "", sh[96];
    double t0 = time_now();
    KernelCache *kc = kcache_of(k);
    int ok = plan_build(p, k, kc, why, sizeof why);
    if (!ok && kc) {  // refused as a dynamic graph: static from now on
        kc->failed = 1;
        build_free(p->build);
        p->build = NULL;
        ok = plan_build(p, k, NULL, why, sizeof why);
    }
    p->ok = ok;
    g_plans_built++;
    g_build_seconds += time_now() - t0;
    // said once per kind of call (direction, masks, lse), not per shape: padded batches bring many
    int kind = k->dir * 8 + k->causal * 4 + k->seg * 2 + k->lse;
    if (!p->ok && !(g_said_fallback & (1 << kind))) {
        g_said_fallback |= 1 << kind;
        fprintf(stderr, "svlm: SVLM_ATTN=cudnn: attention %s: %s; calls like it run on the WMMA kernels "
                "(said once)\n", shape_str(k, sh, sizeof sh), why);
    }
    return p->ok ? p : NULL;
}

// The scratch of a call, in this order: the plan's workspace; the backward's Dsum (B, NH, Tg); the
// segment ends (B, Tg); with bucketing, the stats (B, NH, Tg) in the graph's layout (lse is
// (B, NH, T)), the row offsets of Q-like and K-like tensors (B+1 each) and the lengths (B).
typedef struct {
    float *dsum, *stats;
    int *end, *offq, *offk, *seqlen;
    size_t bytes;
} CallScratch;

static CallScratch scratch_layout(char *base, size_t ws, const AttnKey *k) {
    CallScratch c;
    memset(&c, 0, sizeof c);
    size_t at = align256(ws), rows = (size_t)k->B * k->NH * k->T;
    if (k->dir == DIR_BWD) {
        c.dsum = (float *)(base + at);
        at += align256(rows * sizeof(float));
    }
    if (k->seg) {
        c.end = (int *)(base + at);
        at += align256((size_t)k->B * k->T * sizeof(int));
    }
    if (k->ragged) {
        c.stats = (float *)(base + at);
        at += align256(rows * sizeof(float));
        c.offq = (int *)(base + at);
        at += align256((size_t)(k->B + 1) * sizeof(int));
        c.offk = (int *)(base + at);
        at += align256((size_t)(k->B + 1) * sizeof(int));
        c.seqlen = (int *)(base + at);
        at += align256((size_t)k->B * sizeof(int));
    }
    c.bytes = at;
    return c;
}

static size_t call_scratch(const Plan *p, const AttnKey *k) { return scratch_layout(NULL, (size_t)p->ws, k).bytes; }

static void execute(Plan *p, const int64_t *uids, void **ptrs, int n, void *ws) {
    cudnnBackendDescriptor_t vp = NULL;
    CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp) == CUDNN_STATUS_SUCCESS,
          "cuDNN: variant pack");
    cudnnStatus_t st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(vp);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnSetStream(g_handle, cuda_stream());
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendExecute(g_handle, p->plan, vp);
    cudnnBackendDestroyDescriptor(vp);
    if (st != CUDNN_STATUS_SUCCESS) {
        char last[256] = "", sh[96];
        cudnnGetLastErrorString(last, sizeof last);
        fatal("cuDNN attention %s failed: %s %s", shape_str(&p->key, sh, sizeof sh), cudnnGetErrorString(st), last);
    }
}

// a bucketed call's offsets and lengths: entry b of a Q-like tensor starts at element b * T * qrow
__global__ void attn_ragged_setup_kernel(int *offq, int *offk, int *seqlen, int B, int T, int qrow, int krow) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= B) {
        offq[i] = i * T * qrow;
        offk[i] = i * T * krow;
    }
    if (i < B) seqlen[i] = T;
}

// rows of n floats from src (row stride ss) to dst (row stride ds): lse <-> the graph's stats
__global__ void attn_copy_rows_kernel(float *dst, int ds, const float *src, int ss, int rows, int n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * n) return;
    size_t r = i / n, c = i % n;
    dst[r * ds + c] = src[r * ss + c];
}

static void copy_rows(float *dst, int ds, const float *src, int ss, int rows, int n) {
    size_t total = (size_t)rows * n;
    LAUNCH(ceil_div_u(total, 256), 256, attn_copy_rows_kernel)(dst, ds, src, ss, rows, n);
    cudaCheckLaunch();
}

// Bucketing (SVLM_CUDNN_BUCKET=64, or cuda_attention_cudnn_set_bucket): a call of T rows runs on
// the graph of T rounded up to a multiple of the bucket, its tensors ragged (each batch entry's
// rows located by an offset, b * T * heads * HD elements) with a padding mask at the sequence
// length T, so every T of a bucket shares one plan: padded batches then compile a kernel per
// bucket instead of per T (the backward has no kernel cache). 0: graphs of the exact shape.
static int g_bucket = -1;

static int bucket(void) {
    if (g_bucket < 0) {
        const char *e = getenv("SVLM_CUDNN_BUCKET");
        g_bucket = e && *e ? atoi(e) : 0;
        CHECK(g_bucket >= 0 && g_bucket <= 4096, "SVLM_CUDNN_BUCKET=%s: expected 0 (exact shapes) or a bucket of rows "
              "such as 64", e);
    }
    return g_bucket;
}

extern "C" int cuda_attention_cudnn_set_bucket(int rows) {
    int old = bucket();
    g_bucket = rows > 0 ? rows : 0;
    return old;
}

// the key of a call: the graph's T, ragged when bucketing
static AttnKey call_key(int dir, int B, int T, int NH, int NKV, int HD, int causal, int seg, int lse) {
    int bk = bucket();
    AttnKey k = {dir, B, bk ? (T + bk - 1) / bk * bk : T, NH, NKV, HD, causal != 0, seg != 0, lse != 0, bk != 0};
    return k;
}

// which shapes go to cuDNN at all: every buffer 16-byte aligned (the tensors' declared alignment;
// a layer's lse inside a larger buffer may not be), head dims the fused kernels take
// (multiples of 8 up to 128 for the backward on sm_80, 256 on sm_90; svlm's other kernels stop at
// 128 anyway), packed rows only under the causal mask (see the top of the file), int32 offsets
static int shape_ok(const AttnKey *k, int T, const void *const *ptrs, int n) {
    if (k->HD % 8 != 0 || k->HD > 128 || (k->seg && !k->causal)) return 0;
    if (k->ragged && (double)k->B * T * k->NH * k->HD >= 2147483647.0) return 0;
    for (int i = 0; i < n; i++)
        if (ptrs[i] && !aligned16(ptrs[i])) return 0;
    return 1;
}

// what both directions do before the graph runs: segment ends, and with bucketing the offsets
static void prepare(const AttnKey *k, const CallScratch *c, const int *seg, int T) {
    if (k->seg) segment_ends(c->end, seg, k->B, T, k->T);
    if (k->ragged) {
        LAUNCH(ceil_div_u(k->B + 1, 128), 128, attn_ragged_setup_kernel)(c->offq, c->offk, c->seqlen, k->B, T,
                                                                          k->NH * k->HD, k->NKV * k->HD);
        cudaCheckLaunch();
    }
}

// the variant-pack entries of the ragged inputs
static int ragged_pack(const AttnKey *k, const CallScratch *c, int64_t *uids, void **ptrs, int n) {
    if (!k->ragged) return n;
    uids[n] = U_OFFQ; ptrs[n++] = c->offq;
    uids[n] = U_OFFK; ptrs[n++] = c->offk;
    uids[n] = U_SEQ; ptrs[n++] = c->seqlen;
    return n;
}

int attn_cudnn_forward(act_t *out, float *lse, const act_t *q, const act_t *k, const act_t *v, const int *seg, int B,
                       int T, int NH, int NKV, int HD, int causal) {
    AttnKey key = call_key(DIR_FWD, B, T, NH, NKV, HD, causal, seg != NULL, lse != NULL);
    const void *al[] = {out, q, k, v, lse};
    Plan *p = setup() && shape_ok(&key, T, al, 5) ? plan_get(&key) : NULL;
    if (!p) {
        g_declined++;
        return 0;
    }
    g_ran++;
    char *ws = (char *)cuda_scratch(SCRATCH_CUDNN, call_scratch(p, &key));
    CallScratch c = scratch_layout(ws, (size_t)p->ws, &key);
    prepare(&key, &c, seg, T);
    float scale = 1.0f / sqrtf((float)HD), neg = -3.402823466e38f;  // the lowest float
    int64_t uids[16] = {U_Q, U_K, U_V, U_O, U_SCALE, U_NEG};
    void *ptrs[16] = {(void *)q, (void *)k, (void *)v, out, &scale, &neg};
    int n = 6;
    if (lse) { uids[n] = U_STATS; ptrs[n++] = key.ragged ? (void *)c.stats : (void *)lse; }
    if (seg) { uids[n] = U_END; ptrs[n++] = c.end; }
    n = ragged_pack(&key, &c, uids, ptrs, n);
    execute(p, uids, ptrs, n, ws);
    if (lse && key.ragged) copy_rows(lse, T, c.stats, key.T, B * NH, T);
    return 1;
}

int attn_cudnn_backward(act_t *dq, act_t *dk, act_t *dv, const act_t *dout, const act_t *q, const act_t *k,
                        const act_t *v, const act_t *out, const float *lse, const int *seg, int B, int T, int NH,
                        int NKV, int HD, int causal) {
    AttnKey key = call_key(DIR_BWD, B, T, NH, NKV, HD, causal, seg != NULL, 1);
    const void *al[] = {dq, dk, dv, dout, q, k, v, out, lse};
    // every gradient is written by the graph: a NULL one (not needed) goes the WMMA way
    Plan *p = dq && dk && dv && lse && setup() && shape_ok(&key, T, al, 9) ? plan_get(&key) : NULL;
    if (!p) {
        g_declined++;
        return 0;
    }
    g_ran++;
    char *ws = (char *)cuda_scratch(SCRATCH_CUDNN, call_scratch(p, &key));
    CallScratch c = scratch_layout(ws, (size_t)p->ws, &key);
    prepare(&key, &c, seg, T);
    if (key.ragged) copy_rows(c.stats, key.T, lse, T, B * NH, T);
    float scale = 1.0f / sqrtf((float)HD), neg = -3.402823466e38f, one = 1.0f;
    int64_t uids[20] = {U_Q, U_K, U_V, U_O, U_DO, U_STATS, U_DQ, U_DK, U_DV, U_DSUM, U_SCALE, U_NEG, U_ONE};
    void *ptrs[20] = {(void *)q, (void *)k, (void *)v, (void *)out, (void *)dout,
                      key.ragged ? (void *)c.stats : (void *)lse, dq, dk, dv, c.dsum, &scale, &neg, &one};
    int n = 13;
    if (seg) { uids[n] = U_END; ptrs[n++] = c.end; }
    n = ragged_pack(&key, &c, uids, ptrs, n);
    execute(p, uids, ptrs, n, ws);
    return 1;
}

extern "C" int cuda_attention_cudnn_available(char *why, size_t cap) {
    int ok = setup();
    if (!ok && why && cap) snprintf(why, cap, "%s", g_why);
    if (ok && why && cap) snprintf(why, cap, "cuDNN %zu on sm_%d", cudnnGetVersion(), g_sm);
    return ok ? g_sm : 0;
}

// ---------------------------------------------------------------- judging a graph, no plan

// Builds the graph of k (dynamic-shape or not) and asks the heuristics (mode A and the fallback
// list) for engine configs, compiling nothing: the number of deterministic ones and the least and
// most workspace among them (CUDNN_ATTR_ENGINECFG_WORKSPACE_SIZE), or -1 with `why` when the graph
// is refused. For the device of the handle (dp NULL) or the one dp describes (no GPU needed).
static int judge(const AttnKey *k, int dynamic, cudnnBackendDescriptor_t dp, int64_t *min_ws, int64_t *max_ws,
                 char *why, size_t cap) {
    if (why && cap) *why = 0;
    *min_ws = *max_ws = 0;
    Build *b = (Build *)xcalloc(1, sizeof(Build));
    b->next_uid = 1000;
    if (k->dir == DIR_FWD) build_forward(b, k);
    else build_backward(b, k);
    cudnnBackendDescriptor_t graph = make(b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    if (!dp) set(b, graph, ATTR_GRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_handle);
    set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, b->nops, b->ops);
    bool dyn = true;
    if (dynamic) set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_IS_DYNAMIC_SHAPE_ENABLED, CUDNN_TYPE_BOOLEAN, 1, &dyn);
    fin(b, graph);
    int found = -1;
    if (b->status != CUDNN_STATUS_SUCCESS) {
        char last[256] = "";
        cudnnGetLastErrorString(last, sizeof last);
        if (why) snprintf(why, cap, "graph refused: %s at attention_cudnn.cu:%d %s", cudnnGetErrorString(b->status), b->line, last);
    } else {
        found = 0;
        cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
        for (int m = 0; m < 2; m++) {  // both lists: a plan may come from either
            cudnnBackendDescriptor_t heur = NULL, cfg[16];
            int ncfg = 0;
            int64_t n = 0;
            if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur) != CUDNN_STATUS_SUCCESS) break;
            if (cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                         &graph) == CUDNN_STATUS_SUCCESS &&
                cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &modes[m]) ==
                    CUDNN_STATUS_SUCCESS &&
                (!dp || cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                                 1, &dp) == CUDNN_STATUS_SUCCESS) &&
                cudnnBackendFinalize(heur) == CUDNN_STATUS_SUCCESS) {
                for (; ncfg < 16; ncfg++)
                    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfg[ncfg]) != CUDNN_STATUS_SUCCESS)
                        break;
                if (cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, ncfg, &n,
                                             cfg) != CUDNN_STATUS_SUCCESS)
                    n = 0;
                for (int64_t i = 0; i < n && i < ncfg; i++) {  // the configs plan_from_heuristics may take
                    int64_t ws = 0, got = 0;
                    if (!engine_deterministic(cfg[i]) ||
                        cudnnBackendGetAttribute(cfg[i], CUDNN_ATTR_ENGINECFG_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &got,
                                                 &ws) != CUDNN_STATUS_SUCCESS)
                        continue;
                    if (!found || ws < *min_ws) *min_ws = ws;
                    if (!found || ws > *max_ws) *max_ws = ws;
                    found++;
                }
                for (int i = 0; i < ncfg; i++) cudnnBackendDestroyDescriptor(cfg[i]);
            }
            cudnnBackendDestroyDescriptor(heur);
        }
        if (!found && why) snprintf(why, cap, "no deterministic engine offered");
    }
    build_free(b);
    return found;
}

// the memory plan: the most scratch the cuDNN path takes for a model whose largest attention
// backward is this shape (causal; with and without packed rows, forward and backward): the largest
// workspace among the engine configs a plan may pick, plus the rowsum and the segment ends, asked
// of the heuristics without building a plan (no kernel compiled: the planner's bisection over
// batch sizes asks for many shapes). A plan's own workspace is one of those, so it never grows
// the buffer this reserves.
size_t cuda_attention_cudnn_scratch(int B, int T, int NH, int NKV, int HD) {
    if (!setup() || HD % 8 != 0 || HD > 128) return 0;
    size_t most = 0;
    for (int dir = DIR_FWD; dir <= DIR_BWD; dir++)
        for (int seg = 0; seg < 2; seg++)
            for (int dyn = 0; dyn <= (dir == DIR_FWD); dyn++) {
                AttnKey key = call_key(dir, B, T, NH, NKV, HD, 1, seg, 1);
                int64_t lo, hi;
                if (judge(&key, dyn, NULL, &lo, &hi, NULL, 0) <= 0) continue;
                size_t n = scratch_layout(NULL, (size_t)hi, &key).bytes;
                if (n > most) most = n;
            }
    return most;
}

// Without a GPU (tests/gpu/cudnn_graphs.c): judge() for the device that `device_json` describes
// (cuDNN's device-property JSON, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION), no handle. cuDNN's
// engine libraries need libcuda to load, for which the toolkit's stub library is enough.
extern "C" int cuda_attention_cudnn_engines(const char *device_json, int dir, int B, int T, int NH, int NKV, int HD,
                                            int causal, int seg, int dynamic, int bucket_rows, long long *min_ws,
                                            long long *max_ws, char *why, size_t cap) {
    int Tg = bucket_rows > 0 ? (T + bucket_rows - 1) / bucket_rows * bucket_rows : T;
    AttnKey k = {dir ? DIR_BWD : DIR_FWD, B, Tg, NH, NKV, HD, causal != 0, seg != 0, 1, bucket_rows > 0};
    cudnnBackendDescriptor_t dp = NULL;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, &dp);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(dp, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR,
                                      (int64_t)strlen(device_json) + 1, device_json);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(dp);
    if (st != CUDNN_STATUS_SUCCESS) {
        char last[256] = "";
        cudnnGetLastErrorString(last, sizeof last);
        if (why) snprintf(why, cap, "device description refused: %s %s", cudnnGetErrorString(st), last);
        if (dp) cudnnBackendDestroyDescriptor(dp);
        return -1;
    }
    int64_t lo = 0, hi = 0;
    int n = judge(&k, dynamic, dp, &lo, &hi, why, cap);
    if (min_ws) *min_ws = lo;
    if (max_ws) *max_ws = hi;
    cudnnBackendDestroyDescriptor(dp);
    return n;
}

#else  // no cuDNN in this build (or the CPU emulator): the path declines every call

static long g_ran, g_declined, g_plans_built;
static double g_build_seconds;

int attn_cudnn_forward(act_t *out, float *lse, const act_t *q, const act_t *k, const act_t *v, const int *seg, int B,
                       int T, int NH, int NKV, int HD, int causal) {
    g_declined++;
    return 0;
}

int attn_cudnn_backward(act_t *dq, act_t *dk, act_t *dv, const act_t *dout, const act_t *q, const act_t *k,
                        const act_t *v, const act_t *out, const float *lse, const int *seg, int B, int T, int NH,
                        int NKV, int HD, int causal) {
    g_declined++;
    return 0;
}

size_t cuda_attention_cudnn_scratch(int B, int T, int NH, int NKV, int HD) { return 0; }

extern "C" int cuda_attention_cudnn_engines(const char *device_json, int dir, int B, int T, int NH, int NKV, int HD,
                                            int causal, int seg, int dynamic, int bucket_rows, long long *min_ws,
                                            long long *max_ws, char *why, size_t cap) {
    cuda_attention_cudnn_available(why, cap);
    return -1;
}

extern "C" int cuda_attention_cudnn_set_bucket(int rows) { return 0; }

extern "C" int cuda_attention_cudnn_available(char *why, size_t cap) {
    if (why && cap)
        snprintf(why, cap,
#ifdef SVLM_CUDA_EMU
                 "not built: the CPU emulator has no cuDNN"
#else
                 "not built: scripts/install_deps.sh found no cuDNN (cudnn.h + libcudnn) when svlm was configured"
#endif
        );
    return 0;
}

#endif

extern "C" void cuda_attention_cudnn_counts(long *ran, long *declined) {
    if (ran) *ran = g_ran;
    if (declined) *declined = g_declined;
}

extern "C" void cuda_attention_cudnn_build_stats(long *plans, double *seconds) {
    if (plans) *plans = g_plans_built;
    if (seconds) *seconds = g_build_seconds;
}
