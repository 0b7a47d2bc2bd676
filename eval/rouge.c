// rouge.c: ROUGE-L as pycocoevalcap's Rouge (beta 1.2); see eval/caption_metrics.h.
#include <stdlib.h>

#include "common/util.h"
#include "eval/caption_metrics.h"
#include "eval/ngram.h"

// length of the longest common subsequence, one row of the table at a time
static int lcs(const int *a, int na, const int *b, int nb) {
    int *row = xcalloc((size_t)nb + 1, sizeof(int));
    for (int i = 1; i <= na; i++) {
        int diag = 0;
        for (int j = 1; j <= nb; j++) {
            int up = row[j];
            row[j] = a[i - 1] == b[j - 1] ? diag + 1 : (row[j] > row[j - 1] ? row[j] : row[j - 1]);
            diag = up;
        }
    }
    int r = row[nb];
    free(row);
    return r;
}

double caption_rouge_l(const CaptionSet *s, double *per_image) {
    const double beta = 1.2;
    NgramIndex *ix = ngram_index_new();
    double total = 0;
    for (int i = 0; i < s->n; i++) {
        CHECK(s->n_refs[i] >= 1, "caption_rouge_l: image %d has no reference", i);
        int nc;
        int *c = ngram_words(ix, s->hyp[i], 1, &nc);
        double prec_max = 0, rec_max = 0;
        for (int j = 0; j < s->n_refs[i]; j++) {
            int nr;
            int *r = ngram_words(ix, s->refs[i][j], 1, &nr);
            int l = lcs(r, nr, c, nc);
            double p = (double)l / nc, rc = (double)l / nr;
            if (p > prec_max) prec_max = p;
            if (rc > rec_max) rec_max = rc;
            free(r);
        }
        double score = 0;
        if (prec_max != 0 && rec_max != 0)
            score = ((1 + beta * beta) * prec_max * rec_max) / (rec_max + beta * beta * prec_max);
        if (per_image) per_image[i] = score;
        total += score;
        free(c);
    }
    ngram_index_free(ix);
    return s->n > 0 ? total / s->n : 0.0;
}
