// attention.c: scaled dot-product attention with grouped-query heads, causal and segment masks,
// flash-attention style on tiles of 32 queries x 64 keys (nothing T x T is stored; under the causal
// mask a query tile computes only the key columns its last row sees):
//   forward: per (batch, head, query tile), S = Q K^T one key tile at a time (tile_gemm), online
//     softmax (running max m and sum l per row, O rescaled when m grows), O += P V; lse saved.
//   backward: per (batch, kv head, chunk of key tiles): for each key tile, each head of the group
//     and each query tile that sees it, P = exp(S - lse) is computed once and gives dV += P^T dO,
//     dS = P (dO V^T - D), dK += dS^T Q and dQ += dS K. The task owns its key rows' dk and dv, and
//     its chunk's dq (chunk 0 writes dq, chunks 1.. their own buffers, added in chunk order after),
//     so there are no atomics and every sum has one fixed order: the results are the same at any
//     thread count (the number of chunks depends on the shapes only).
// The forward tile is shared with attention_cached.c, whose rows must equal these bit for bit.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/simd.h"

// backward tasks aimed at: enough to share among the cores, few enough to keep dq's chunk buffers small
#define ATT_BWD_TASKS 32

static int imin(int a, int b) { return a < b ? a : b; }

// the columns of a key tile of nkt keys that are computed: nkt up to a multiple of 16 (tile_gemm's
// vectors) or of 8 (the row loops); the rest of the tile's row is never read (a partial last tile,
// 1 of 64 keys for CLIP's 257 rows, costs a quarter of a full one instead of a whole)
static int cols16(int nkt) { return (nkt + 15) & ~15; }
static int cols8(int nkt) { return (nkt + 7) & ~7; }

// one (batch, head)'s rows for the forward tile (cpu_attention_tasks: attention_forward and attention_cached)
typedef struct {
    const float *q;         // query row 0; rows qs apart
    const float *k, *v;     // key / value row 0 of the head's kv head; rows ks apart
    size_t qs, ks;
    int nk;                 // keys 0 .. nk-1 exist
    int qpos0;              // position of query row 0: under the causal mask row i sees keys <= qpos0 + i
    int causal;
    const int *seg;         // segment id per row (queries and keys alike), or NULL
    int HD;
    float scale;
} AttnRows;

// per-thread scratch, in one block; sized for head_dim HD and `group` heads over T rows
typedef struct {
    float *kts;         // (tiles of T, HD, ATT_BK) the forward's key tiles transposed, packed once per
    const float *kts_of;  // (batch, kv head) a thread meets in a call: the keys they are of, and
    int kts_n;          // how many of their tiles are packed
    float *kt, *vt;     // (HD, ATT_BK) key / value tile transposed, columns past the tile zero
    float *s, *dp;      // (ATT_BQ, ATT_BK) scores, then P; dP, then dS
    float *tt;          // (ATT_BK, ATT_BQ) P or dS transposed
    float *o;           // (ATT_BQ, HD) output accumulator
    float *dk, *dv;     // (ATT_BK, HD) one key tile's gradients
    float *m, *l;       // (ATT_BQ) running max and sum
    float *D;           // (group, T) dout . out per query row
    int *segt;          // (ATT_BK) the key tile's segment ids
    void *block;
} Scratch;

static Scratch scratch_alloc(int HD, int group, int T) {
    size_t hd = (size_t)(HD > 0 ? HD : 1), t = (size_t)(T > 0 ? T : 1);
    size_t tiles = (t + ATT_BK - 1) / ATT_BK;
    size_t sizes[] = {tiles * hd * ATT_BK, hd * ATT_BK, hd * ATT_BK, ATT_BQ * ATT_BK, ATT_BQ * ATT_BK, ATT_BK * ATT_BQ,
                      ATT_BQ * hd, ATT_BK * hd, ATT_BK * hd, ATT_BQ, ATT_BQ, (size_t)group * t, ATT_BK};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) total += (sizes[i] + 15) / 16 * 16;
    Scratch s;
    s.block = xmalloc(total * sizeof(float));
    float *p = s.block;
    s.kts_of = NULL;
    s.kts_n = 0;
    float **slots[] = {&s.kts, &s.kt, &s.vt, &s.s, &s.dp, &s.tt, &s.o, &s.dk, &s.dv, &s.m, &s.l, &s.D};
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++) {
        *slots[i] = p;
        p += (sizes[i] + 15) / 16 * 16;
    }
    s.segt = (int *)p;
    return s;
}

// rows j0 .. j0+n-1 of x (stride xs, HD wide) into xt (HD, ATT_BK), zero past n
static void pack_transposed(float *xt, const float *x, size_t xs, int n, int HD) {
    for (int d = 0; d < HD; d++) {
        float *row = xt + (size_t)d * ATT_BK;
        for (int jj = 0; jj < n; jj++) row[jj] = x[(size_t)jj * xs + d];
        for (int jj = n; jj < ATT_BK; jj++) row[jj] = 0.0f;
    }
}

// the key tile's segment ids (0 for all without segments); keys past the tile never show
static void pack_segments(int *segt, const int *seg, int j0, int n) {
    for (int jj = 0; jj < ATT_BK; jj++) segt[jj] = seg && jj < n ? seg[j0 + jj] : 0;
}

// (n, ATT_BK) -> (ATT_BK, ATT_BQ), the first nkt rows of the result
static void transpose_tile(float *dst, const float *src, int n, int nkt) {
    for (int jj = 0; jj < nkt; jj++)
        for (int ii = 0; ii < n; ii++) dst[(size_t)jj * ATT_BQ + ii] = src[(size_t)ii * ATT_BK + jj];
}

// which of keys j .. j+7 of a key tile one query row sees (lanes all ones): inside the tile's nkt
// keys, not after the query (jlimit: its position in the tile), in its segment
__attribute__((always_inline)) static inline vi8 visible8(int j, int nkt, int jlimit, const int *segt, int segi) {
    const vi8 jj = (vi8){0, 1, 2, 3, 4, 5, 6, 7} + j;
    return (jj < nkt) & (jj <= jlimit) & (*(const vi8 *)(segt + j) == segi);
}

// scores of one query row against a key tile: scaled where visible, -inf elsewhere; returns the max
CPU_HOT_EXPLICIT static float mask_scale_row(float *si, const int *segt, int segi, int nkt, int jlimit, float scale) {
    const vf8 ninf = (vf8){0} - INFINITY;
    vf8 mx = ninf;
    for (int j = 0; j < cols8(nkt); j += 8) {
        vi8 vis = visible8(j, nkt, jlimit, segt, segi);
        vf8 v = vf8_select(vis, *(vf8 *)(si + j) * scale, ninf);
        *(vf8 *)(si + j) = v;
        mx = vf8_select(v > mx, v, mx);
    }
    float m = mx[0];
    for (int l = 1; l < 8; l++) m = mx[l] > m ? mx[l] : m;
    return m;
}

// si = exp(si - m) (masked entries -inf give 0); returns their sum: per lane of 8, then the
// lanes in order (exp_vf8: GCC's v3 clone of the exp_vec loop came out scalar)
CPU_HOT_EXPLICIT static float exp_row(float *si, float m, int nkt) {
    vf8 sum = {0};
    for (int j = 0; j < cols8(nkt); j += 8) {
        vf8 e = exp_vf8(*(vf8 *)(si + j) - m);
        *(vf8 *)(si + j) = e;
        sum += e;
    }
    float s = 0.0f;
    for (int l = 0; l < 8; l++) s += sum[l];
    return s;
}

CPU_HOT static void scale_row(float *x, float s, int n) {
    for (int d = 0; d < n; d++) x[d] *= s;
}

// key tile t (nkt keys) of a's kv head, transposed: packed the first time one of this thread's
// tasks in this call needs it (a task walks the tiles from 0), then shared by the thread's other
// query tiles and heads of those keys
static const float *key_tile(Scratch *sc, const AttnRows *a, int t) {
    if (sc->kts_of != a->k) {
        sc->kts_of = a->k;
        sc->kts_n = 0;
    }
    for (; sc->kts_n <= t; sc->kts_n++) {
        int j0 = sc->kts_n * ATT_BK;
        pack_transposed(sc->kts + (size_t)sc->kts_n * a->HD * ATT_BK, a->k + (size_t)j0 * a->ks, a->ks,
                        imin(ATT_BK, a->nk - j0), a->HD);
    }
    return sc->kts + (size_t)t * a->HD * ATT_BK;
}

// query rows i0 .. i0+nq-1 (nq <= ATT_BQ): out rows (qs apart), lse (consecutive) when not NULL.
// Only from cpu_attention_tasks' region, which marks the thread's packed key tiles stale first.
static void attention_rows(const AttnRows *a, int i0, int nq, float *out, float *lse, Scratch *sc) {
    int HD = a->HD;
    memset(sc->o, 0, (size_t)nq * HD * sizeof(float));
    for (int ii = 0; ii < nq; ii++) {
        sc->m[ii] = -INFINITY;
        sc->l[ii] = 0.0f;
    }
    int kend = a->causal ? imin(a->nk, a->qpos0 + i0 + nq) : a->nk;
    for (int j0 = 0; j0 < kend; j0 += ATT_BK) {
        // the tile's keys, and those the tile's last query may see (causal: on the diagonal, the
        // first half of the query rows needs half the columns)
        int nkt = imin(ATT_BK, a->nk - j0), nkv = a->causal ? imin(nkt, a->qpos0 + i0 + nq - j0) : nkt;
        const float *kt = key_tile(sc, a, j0 / ATT_BK);
        pack_segments(sc->segt, a->seg, j0, nkt);
        tile_gemm(sc->s, ATT_BK, a->q + (size_t)i0 * a->qs, a->qs, kt, ATT_BK, nq, cols16(nkv), HD, 0);  // S = Q K^T
        for (int ii = 0; ii < nq; ii++) {
            int i = i0 + ii;
            float *si = sc->s + (size_t)ii * ATT_BK;
            int jlimit = a->causal ? a->qpos0 + i - j0 : ATT_BK;
            float mx = mask_scale_row(si, sc->segt, a->seg ? a->seg[i] : 0, nkv, jlimit, a->scale);
            float m_new = mx > sc->m[ii] ? mx : sc->m[ii];
            if (m_new == -INFINITY) {  // nothing visible yet: P's row is zero
                memset(si, 0, ATT_BK * sizeof(float));
                continue;
            }
            if (m_new > sc->m[ii]) {  // rescale what was summed under the old max (0 before the first key)
                float corr = exp_vec(sc->m[ii] - m_new);
                scale_row(sc->o + (size_t)ii * HD, corr, HD);
                sc->l[ii] *= corr;
                sc->m[ii] = m_new;
            }
            sc->l[ii] += exp_row(si, m_new, nkv);
        }
        tile_gemm(sc->o, HD, sc->s, ATT_BK, a->v + (size_t)j0 * a->ks, a->ks, nq, HD, nkv, 1);  // O += P V
    }
    for (int ii = 0; ii < nq; ii++) {
        float *oi = out + (size_t)ii * a->qs;
        float l = sc->l[ii];
        if (l > 0.0f) {  // a row that sees no key keeps zeros and lse = -inf
            float inv = 1.0f / l;
            for (int d = 0; d < HD; d++) oi[d] = sc->o[(size_t)ii * HD + d] * inv;
        } else {
            for (int d = 0; d < HD; d++) oi[d] = 0.0f;
        }
        if (lse) lse[ii] = l > 0.0f ? sc->m[ii] + logf(l) : -INFINITY;
    }
}

// per thread, kept from call to call (OpenMP's threads persist): no allocation, and so no page
// faults, per call; grown when a call needs more
static __thread Scratch tl_scratch;
static __thread int tl_hd, tl_group, tl_t;

// this thread's scratch for head_dim HD and D of `group` heads over T rows (the forward: key tiles
// of T keys), kept for the thread's later calls
static Scratch *attention_scratch(int HD, int group, int T) {
    if (HD < 1) HD = 1;
    if (group < 1) group = 1;
    if (T < 1) T = 1;
    if (!tl_scratch.block || HD > tl_hd || group > tl_group || T > tl_t) {
        free(tl_scratch.block);
        tl_hd = HD > tl_hd ? HD : tl_hd;
        tl_group = group > tl_group ? group : tl_group;
        tl_t = T > tl_t ? T : tl_t;
        tl_scratch = scratch_alloc(tl_hd, tl_group, tl_t);
    }
    return &tl_scratch;
}

void cpu_attention_tasks(float *out, float *lse, const float *q, const float *k, const float *v, const int *seg,
                         int B, int Tq, int Tk, int Tc, int NH, int NKV, int HD, int causal) {
    // out (B, Tq, NH*HD), q (B, Tq, NH*HD), k and v (B, Tc, NKV*HD) of which the first Tk rows are
    // used, lse (B, NH, Tq), seg (B, Tq): the queries sit at positions Tk-Tq .. Tk-1
    int group = NH / NKV, nqt = (Tq + ATT_BQ - 1) / ATT_BQ;
    size_t qs = (size_t)NH * HD, ks = (size_t)NKV * HD;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel
    {
        Scratch *sc = attention_scratch(HD, 1, Tk);
        sc->kts_of = NULL;  // the buffers' contents changed since the last call
        // tasks have different sizes under the causal mask: dynamic, which changes no result
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < B * NH * nqt; task++) {
            int b = task / (NH * nqt), h = task / nqt % NH, i0 = task % nqt * ATT_BQ;
            int g = h / group;
            AttnRows a = {.q = q + (size_t)b * Tq * qs + (size_t)h * HD, .qs = qs,
                          .k = k + (size_t)b * Tc * ks + (size_t)g * HD, .v = v + (size_t)b * Tc * ks + (size_t)g * HD,
                          .ks = ks, .nk = Tk, .qpos0 = Tk - Tq, .causal = causal,
                          .seg = seg ? seg + (size_t)b * Tq : NULL, .HD = HD, .scale = scale};
            attention_rows(&a, i0, imin(ATT_BQ, Tq - i0), out + ((size_t)b * Tq + i0) * qs + (size_t)h * HD,
                               lse ? lse + ((size_t)b * NH + h) * Tq + i0 : NULL, sc);
        }
    }
}

void cpu_attention_forward(act_t *out_, float *lse, const act_t *q_, const act_t *k_,
                           const act_t *v_, const int *seg, int B, int T, int NH, int NKV,
                           int HD, int causal) {
    float *out = out_;          // (B, T, NH*HD)
    const float *q = q_;        // (B, T, NH*HD)
    const float *k = k_;        // (B, T, NKV*HD)
    const float *v = v_;        // (B, T, NKV*HD)
    // lse (B, NH, T), seg (B, T)
    CHECK(NKV > 0 && NH % NKV == 0, "attention: NH=%d is not a multiple of NKV=%d", NH, NKV);
    if (B <= 0 || T <= 0) return;
    cpu_attention_tasks(out, lse, q, k, v, seg, B, T, T, T, NH, NKV, HD, causal);
}

// P = exp(S - lse) of one query tile against the key tile in sc (kt, segt); returns the visible count
CPU_HOT_EXPLICIT static int probabilities(Scratch *sc, const float *L, const int *seg, int i0, int nq, int j0, int nkt,
                                          int causal, float scale) {
    vi8 count = {0};
    for (int ii = 0; ii < nq; ii++) {
        float *si = sc->s + (size_t)ii * ATT_BK;
        int i = i0 + ii, segi = seg ? seg[i] : 0, jlimit = causal ? i - j0 : ATT_BK;
        float Li = L[i];
        if (!(Li > -INFINITY)) {  // a row that saw no key in the forward: P's row is zero
            memset(si, 0, ATT_BK * sizeof(float));
            continue;
        }
        for (int j = 0; j < cols8(nkt); j += 8) {
            vi8 vis = visible8(j, nkt, jlimit, sc->segt, segi);
            vf8 p = exp_vf8(*(vf8 *)(si + j) * scale - Li);
            *(vf8 *)(si + j) = vf8_select(vis, p, (vf8){0});
            count -= vis;
        }
    }
    int c = 0;
    for (int l = 0; l < 8; l++) c += count[l];
    return c;
}

// dS = P (dP - D) scale, into dp
CPU_HOT static void score_grads(Scratch *sc, const float *D, int i0, int nq, int nkt, float scale) {
    for (int ii = 0; ii < nq; ii++) {
        const float *pi = sc->s + (size_t)ii * ATT_BK;
        float *di = sc->dp + (size_t)ii * ATT_BK, Di = D[i0 + ii];
        for (int jj = 0; jj < cols8(nkt); jj++) di[jj] = pi[jj] * (di[jj] - Di) * scale;
    }
}

typedef struct {
    float *dq, *dk, *dv;                            // dq: this chunk's target (dq or a chunk buffer)
    const float *dout, *q, *k, *v, *out, *lse;
    const int *seg;
    int B, T, NH, NKV, HD, causal, chunks;
    float scale;
} Bwd;

static void backward_task(const Bwd *w, int b, int g, int c, Scratch *sc) {
    int T = w->T, NH = w->NH, HD = w->HD, group = NH / w->NKV;
    size_t qs = (size_t)NH * HD, ks = (size_t)w->NKV * HD;
    const int *seg = w->seg ? w->seg + (size_t)b * T : NULL;
    if (w->dq)
        for (int i = 0; i < T; i++) memset(w->dq + ((size_t)b * T + i) * qs + (size_t)g * group * HD, 0, (size_t)group * HD * sizeof(float));
    for (int hh = 0; hh < group; hh++)
        for (int i = 0; i < T; i++) {
            size_t qo = ((size_t)b * T + i) * qs + (size_t)(g * group + hh) * HD;
            // tile_gemm's own sum (a 1 x 1 product): D is then summed exactly as dP, so a key
            // whose value equals the output (a row that sees one key) gets dS = 0 exactly
            tile_gemm(sc->D + (size_t)hh * T + i, 1, w->dout + qo, HD, w->out + qo, 1, 1, 1, HD, 0);
        }
    int ntiles = (T + ATT_BK - 1) / ATT_BK;
    for (int t = c; t < ntiles; t += w->chunks) {
        int j0 = t * ATT_BK, nkt = imin(ATT_BK, T - j0);
        const float *kj = w->k + ((size_t)b * T + j0) * ks + (size_t)g * HD;
        const float *vj = w->v + ((size_t)b * T + j0) * ks + (size_t)g * HD;
        pack_transposed(sc->kt, kj, ks, nkt, HD);
        pack_transposed(sc->vt, vj, ks, nkt, HD);
        pack_segments(sc->segt, seg, j0, nkt);
        memset(sc->dk, 0, (size_t)ATT_BK * HD * sizeof(float));
        memset(sc->dv, 0, (size_t)ATT_BK * HD * sizeof(float));
        for (int hh = 0; hh < group; hh++) {
            int h = g * group + hh;
            const float *L = w->lse + ((size_t)b * NH + h) * T;
            for (int i0 = w->causal ? j0 / ATT_BQ * ATT_BQ : 0; i0 < T; i0 += ATT_BQ) {
                // the keys this query tile may see (causal: fewer on the diagonal), as in the forward
                int nq = imin(ATT_BQ, T - i0), nkv = w->causal ? imin(nkt, i0 + nq - j0) : nkt;
                size_t qo = ((size_t)b * T + i0) * qs + (size_t)h * HD;
                tile_gemm(sc->s, ATT_BK, w->q + qo, qs, sc->kt, ATT_BK, nq, cols16(nkv), HD, 0);  // S = Q K^T
                if (!probabilities(sc, L, seg, i0, nq, j0, nkv, w->causal, w->scale)) continue;
                if (w->dv) {  // dV += P^T dO
                    transpose_tile(sc->tt, sc->s, nq, nkv);
                    tile_gemm(sc->dv, HD, sc->tt, ATT_BQ, w->dout + qo, qs, nkv, HD, nq, 1);
                }
                if (!w->dk && !w->dq) continue;
                tile_gemm(sc->dp, ATT_BK, w->dout + qo, qs, sc->vt, ATT_BK, nq, cols16(nkv), HD, 0);  // dP = dO V^T
                score_grads(sc, sc->D + (size_t)hh * T, i0, nq, nkv, w->scale);
                if (w->dk) {  // dK += dS^T Q
                    transpose_tile(sc->tt, sc->dp, nq, nkv);
                    tile_gemm(sc->dk, HD, sc->tt, ATT_BQ, w->q + qo, qs, nkv, HD, nq, 1);
                }
                if (w->dq) tile_gemm(w->dq + qo, qs, sc->dp, ATT_BK, kj, ks, nq, HD, nkv, 1);  // dQ += dS K
            }
        }
        for (int jj = 0; jj < nkt; jj++) {
            size_t ko = ((size_t)b * T + j0 + jj) * ks + (size_t)g * HD;
            if (w->dk) memcpy(w->dk + ko, sc->dk + (size_t)jj * HD, (size_t)HD * sizeof(float));
            if (w->dv) memcpy(w->dv + ko, sc->dv + (size_t)jj * HD, (size_t)HD * sizeof(float));
        }
    }
}

// key chunks of the backward: about ATT_BWD_TASKS tasks with the (batch, kv head) pairs, at most
// one chunk per key tile; a function of the shapes only, so the results are the same at any
// thread count
static int backward_chunks(int B, int T, int NKV) {
    int ntiles = (T + ATT_BK - 1) / ATT_BK, pairs = B * NKV > 0 ? B * NKV : 1;
    int chunks = (ATT_BWD_TASKS + pairs - 1) / pairs;
    return chunks < ntiles ? chunks : ntiles > 0 ? ntiles : 1;
}

size_t cpu_attention_backward_scratch(int B, int T, int NH, int NKV, int HD) {
    if (B <= 0 || T <= 0) return 0;
    return (size_t)(backward_chunks(B, T, NKV) - 1) * B * T * NH * HD * sizeof(float);
}

// P_ij = exp(S_ij - lse_i), dP_ij = dout_i . v_j, D_i = sum_j P_ij dP_ij = dout_i . out_i,
// dS_ij = P_ij (dP_ij - D_i); dq_i = scale sum_j dS_ij k_j, dk_j = scale sum_i dS_ij q_i,
// dv_j = sum_i P_ij dout_i
void cpu_attention_backward(act_t *dq_, act_t *dk_, act_t *dv_, const act_t *dout_,
                            const act_t *q_, const act_t *k_, const act_t *v_, const act_t *out_,
                            const float *lse, const int *seg, int B, int T, int NH, int NKV,
                            int HD, int causal) {
    float *dq = dq_;                // (B, T, NH*HD)
    // dout, q, out (B, T, NH*HD); dk, dv, k, v (B, T, NKV*HD); lse (B, NH, T)
    CHECK(NKV > 0 && NH % NKV == 0, "attention: NH=%d is not a multiple of NKV=%d", NH, NKV);
    if (B <= 0 || T <= 0 || (!dq && !dk_ && !dv_)) return;
    int pairs = B * NKV, chunks = backward_chunks(B, T, NKV);
    size_t nq = (size_t)B * T * NH * HD, part_bytes = (size_t)(chunks - 1) * nq * sizeof(float);
    // (chunks-1, B, T, NH*HD): the backend's reserved scratch when it is large enough (training:
    // the memory plan reserved it for the model's largest call), else a temporary
    float *parts = NULL, *own = NULL;
    if (dq && chunks > 1) {
        parts = cpu_workspace(part_bytes);
        if (!parts) parts = own = xmalloc(part_bytes);
    }
    Bwd w = {.dk = dk_, .dv = dv_, .dout = dout_, .q = q_, .k = k_, .v = v_, .out = out_, .lse = lse, .seg = seg,
             .B = B, .T = T, .NH = NH, .NKV = NKV, .HD = HD, .causal = causal, .chunks = chunks,
             .scale = 1.0f / sqrtf((float)HD)};
#pragma omp parallel
    {
        Scratch *sc = attention_scratch(HD, NH / NKV, T);
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < pairs * chunks; task++) {
            int c = task / pairs, b = task % pairs / NKV, g = task % NKV;
            Bwd wt = w;
            wt.dq = !dq ? NULL : c == 0 ? dq : parts + (size_t)(c - 1) * nq;
            backward_task(&wt, b, g, c, sc);
        }
        if (parts) {  // dq = chunk 0 + chunk 1 + ... in that order
#pragma omp for schedule(static)
            for (size_t r = 0; r < (size_t)B * T; r++) {
                float *d = dq + r * NH * HD;
                for (int c = 1; c < chunks; c++) {
                    const float *p = parts + (size_t)(c - 1) * nq + r * NH * HD;
                    for (int x = 0; x < NH * HD; x++) d[x] += p[x];
                }
            }
        }
    }
    free(own);
}
