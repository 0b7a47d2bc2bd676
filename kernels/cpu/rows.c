// rows.c: whole-row copies: token embedding lookup, gathering or scattering rows by index
// (image features into the token sequence, loss positions out of it), and strided row copies
// (column slices of the fused q/k/v rows).
#include <string.h>

#include "common/util.h"
#include "kernels/cpu/cpu.h"

void cpu_embedding_forward(act_t *out_, const int *ids, const act_t *table_, int N, int C, int V) {
    float *out = out_;              // (N, C)
    const float *table = table_;    // (V, C)
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        int id = ids[i];
        if (id < 0) continue;  // a placeholder row (image token) that another op fills
        CHECK(id < V, "token id %d at row %d is outside the vocabulary of %d", id, i, V);
        memcpy(out + (size_t)i * C, table + (size_t)id * C, (size_t)C * sizeof(float));
    }
}

void cpu_gather_rows(act_t *out_, const act_t *inp_, const int *idx, int M, int C) {
    float *out = out_;          // (M, C)
    const float *inp = inp_;    // (?, C)
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        if (idx[i] < 0) memset(out + (size_t)i * C, 0, (size_t)C * sizeof(float));
        else memcpy(out + (size_t)i * C, inp + (size_t)idx[i] * C, (size_t)C * sizeof(float));
    }
}

void cpu_scatter_rows(act_t *out_, const act_t *inp_, const int *idx, int M, int C) {
    float *out = out_;          // (?, C)
    const float *inp = inp_;    // (M, C)
    // idx are distinct, so the tasks write disjoint rows
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++)
        memcpy(out + (size_t)idx[i] * C, inp + (size_t)i * C, (size_t)C * sizeof(float));
}

void cpu_copy_rows(act_t *out_, const act_t *inp_, int N, int C, int ld_out, int ld_inp) {
    float *out = out_;          // (N, C), rows ld_out apart
    const float *inp = inp_;    // (N, C), rows ld_inp apart
    if (C <= 0) return;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++)
        memcpy(out + (size_t)i * ld_out, inp + (size_t)i * ld_inp, (size_t)C * sizeof(float));
}
