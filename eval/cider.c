// cider.c: CIDEr-D as pycocoevalcap's CiderScorer (n 4, sigma 6); see eval/caption_metrics.h.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "eval/caption_metrics.h"
#include "eval/ngram.h"

#define CIDER_N 4
#define CIDER_SIGMA 6.0

// a sentence as tf-idf weights per n-gram (counts2vec)
typedef struct {
    NgramCounts c;
    double *w;            // (c.n) weight of each n-gram
    double norm[CIDER_N]; // sqrt of the sum of squared weights per order
    int length;           // the scorer's "length": its count of bigrams (n == 1 in its 0-based order)
} TfIdf;

static void tfidf(TfIdf *v, const NgramIndex *ix, const double *df, double ref_len) {
    v->w = xmalloc(((size_t)v->c.n + 1) * sizeof(double));
    double sq[CIDER_N] = {0};
    v->length = 0;
    for (int g = 0; g < v->c.n; g++) {
        int id = v->c.g[g].id, k = ngram_order(ix, id) - 1;
        double d = log(df[id] > 1.0 ? df[id] : 1.0);
        v->w[g] = (double)v->c.g[g].count * (ref_len - d);
        sq[k] += v->w[g] * v->w[g];
        if (k == 1) v->length += v->c.g[g].count;
    }
    for (int k = 0; k < CIDER_N; k++) v->norm[k] = sqrt(sq[k]);
}

// weight of id in v, 0 when absent
static double weight(const TfIdf *v, int id) {
    int lo = 0, hi = v->c.n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (v->c.g[mid].id < id) lo = mid + 1;
        else if (v->c.g[mid].id > id) hi = mid - 1;
        else return v->w[mid];
    }
    return 0;
}

double caption_cider_d(const CaptionSet *s, double *per_image) {
    NgramIndex *ix = ngram_index_new();
    NgramCounts *hyp = xmalloc(((size_t)s->n + 1) * sizeof(NgramCounts));
    NgramCounts **refs = xmalloc(((size_t)s->n + 1) * sizeof(NgramCounts *));
    for (int i = 0; i < s->n; i++) {
        CHECK(s->n_refs[i] >= 1, "caption_cider_d: image %d has no reference", i);
        ngram_count(ix, s->hyp[i], CIDER_N, &hyp[i]);
        refs[i] = xmalloc((size_t)s->n_refs[i] * sizeof(NgramCounts));
        for (int j = 0; j < s->n_refs[i]; j++) ngram_count(ix, s->refs[i][j], CIDER_N, &refs[i][j]);
    }
    // document frequency: in how many images' reference sets each n-gram occurs
    int n_ids = ngram_index_size(ix);
    double *df = xcalloc((size_t)n_ids + 1, sizeof(double));
    int *seen = xmalloc(((size_t)n_ids + 1) * sizeof(int));
    for (int i = 0; i < n_ids; i++) seen[i] = -1;
    for (int i = 0; i < s->n; i++)
        for (int j = 0; j < s->n_refs[i]; j++)
            for (int g = 0; g < refs[i][j].n; g++) {
                int id = refs[i][j].g[g].id;
                if (seen[id] != i) {
                    seen[id] = i;
                    df[id] += 1;
                }
            }
    double ref_len = log((double)s->n), total = 0;
    for (int i = 0; i < s->n; i++) {
        TfIdf h = {.c = hyp[i]};
        tfidf(&h, ix, df, ref_len);
        double score[CIDER_N] = {0};
        for (int j = 0; j < s->n_refs[i]; j++) {
            TfIdf r = {.c = refs[i][j]};
            tfidf(&r, ix, df, ref_len);
            double delta = (double)(h.length - r.length), val[CIDER_N] = {0};
            for (int g = 0; g < h.c.n; g++) {
                int id = h.c.g[g].id, k = ngram_order(ix, id) - 1;
                double wr = weight(&r, id);
                val[k] += (h.w[g] < wr ? h.w[g] : wr) * wr;
            }
            for (int k = 0; k < CIDER_N; k++) {
                if (h.norm[k] != 0 && r.norm[k] != 0) val[k] /= h.norm[k] * r.norm[k];
                val[k] *= exp(-(delta * delta) / (2 * CIDER_SIGMA * CIDER_SIGMA));
                score[k] += val[k];
            }
            free(r.w);
        }
        double avg = (score[0] + score[1] + score[2] + score[3]) / CIDER_N;
        avg = avg / s->n_refs[i] * 10.0;
        if (per_image) per_image[i] = avg;
        total += avg;
        free(h.w);
    }
    for (int i = 0; i < s->n; i++) {
        for (int j = 0; j < s->n_refs[i]; j++) ngram_counts_free(&refs[i][j]);
        free(refs[i]);
        ngram_counts_free(&hyp[i]);
    }
    free(refs);
    free(hyp);
    free(seen);
    free(df);
    ngram_index_free(ix);
    return s->n > 0 ? total / s->n : 0.0;
}
