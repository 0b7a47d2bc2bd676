// grad_first.cu: the first writer of each trainable gradient overwrites it instead of adding to a
// memset (issue 19). k->grad_begin(g, n) declares the gradient span [g, g + n) zero without
// touching it; this file keeps the parts of it no op has written since, as sorted disjoint byte
// intervals on the host. An op about to add into a parameter gradient dst[0, n) asks
// cuda_grad_first first:
//   - the whole of dst still unwritten: 1, and the op overwrites it (beta 0 in the GEMM, "=" in
//     the column sums). x + 0 and x are the same bits (but for the sign of a zero, which no later
//     sum, norm or AdamW moment can tell apart), so the step's results do not change;
//   - part of it unwritten: that part is zeroed now (the memset of old, on the stream before the
//     op) and 0 is returned: the op adds, as before;
//   - nothing unwritten, or dst outside the span: 0, the op adds.
// So whatever calls the model makes (a LoRA A's gradient from a stacked GEMM over several
// tensors, a connector run once per tile, micro-batches of gradient accumulation, which all add
// after the first write) only the first write of each element of the step overwrites.
// grad_settle zeroes what is left unwritten in a range (tensors the batch never reached, the
// span's padding), before anything reads the gradients: the reductions over ranks, the norm,
// AdamW. The decisions follow the order of the host's calls, the same every step: so do the bits.
#include <string.h>

#include "kernels/cuda/common.cuh"

typedef struct {
    uintptr_t a, b;  // [a, b) bytes
} Gap;

static Gap *g_gaps;  // unwritten parts of the span, sorted, disjoint; none when no span is open
static int g_n, g_cap;

static void gaps_insert(int i, Gap s) {
    if (g_n == g_cap) {
        g_cap = g_cap ? 2 * g_cap : 64;
        g_gaps = (Gap *)xrealloc(g_gaps, (size_t)g_cap * sizeof(Gap));
    }
    memmove(g_gaps + i + 1, g_gaps + i, (size_t)(g_n - i) * sizeof(Gap));
    g_gaps[i] = s;
    g_n++;
}

static void gaps_erase(int i) {
    memmove(g_gaps + i, g_gaps + i + 1, (size_t)(g_n - i - 1) * sizeof(Gap));
    g_n--;
}

// the first gap ending after byte a
static int gaps_find(uintptr_t a) {
    int lo = 0, hi = g_n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (g_gaps[mid].b <= a) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// takes [a, b) out of gap i, which contains it; returns the index after what is left of gap i
static int gaps_cut(int i, uintptr_t a, uintptr_t b) {
    Gap s = g_gaps[i];
    if (s.a == a && s.b == b) {
        gaps_erase(i);
        return i;
    }
    if (s.a == a) {
        g_gaps[i].a = b;
        return i;
    }
    g_gaps[i].b = a;
    if (b < s.b) gaps_insert(i + 1, (Gap){b, s.b});
    return i + 1;
}

// zeroes the unwritten parts of [a, b), from gap i on, and counts them written
static void zero_gaps(uintptr_t a, uintptr_t b, int i) {
    while (i < g_n && g_gaps[i].a < b) {
        uintptr_t lo = g_gaps[i].a > a ? g_gaps[i].a : a, hi = g_gaps[i].b < b ? g_gaps[i].b : b;
        cudaCheck(cudaMemsetAsync((void *)lo, 0, hi - lo, cuda_stream()));
        i = gaps_cut(i, lo, hi);
    }
}

void cuda_grad_begin(float *g, size_t n) {
    g_n = 0;
    if (g && n) gaps_insert(0, (Gap){(uintptr_t)g, (uintptr_t)(g + n)});
}

void cuda_grad_settle(float *g, size_t n) {
    if (!g_n || !g || !n) return;
    uintptr_t a = (uintptr_t)g, b = (uintptr_t)(g + n);
    zero_gaps(a, b, gaps_find(a));
}

int cuda_grad_first(float *dst, size_t n) {
    if (!g_n || !dst || !n) return 0;
    uintptr_t a = (uintptr_t)dst, b = (uintptr_t)(dst + n);
    int i = gaps_find(a);
    if (i < g_n && g_gaps[i].a <= a && b <= g_gaps[i].b) {
        gaps_cut(i, a, b);
        return 1;
    }
    zero_gaps(a, b, i);
    return 0;
}
