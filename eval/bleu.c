// bleu.c: corpus BLEU-1..4 as pycocoevalcap's BleuScorer (option "closest"); see
// eval/caption_metrics.h.
#include <math.h>
#include <stdlib.h>

#include "common/util.h"
#include "eval/caption_metrics.h"
#include "eval/ngram.h"

void caption_bleu(const CaptionSet *s, double bleu[4]) {
    const double small = 1e-9, tiny = 1e-15;  // the scorer's smoothing constants
    NgramIndex *ix = ngram_index_new();
    double guess[4] = {0}, correct[4] = {0}, testlen_sum = 0, reflen_sum = 0;
    for (int i = 0; i < s->n; i++) {
        CHECK(s->n_refs[i] >= 1, "caption_bleu: image %d has no reference", i);
        NgramCounts h;
        ngram_count(ix, s->hyp[i], 4, &h);
        int testlen = h.words;
        // cook_refs: each n-gram's largest count in one reference; cook_test "closest": the
        // reference length nearest the hypothesis', the shorter one on a tie
        NgramCounts *r = xmalloc((size_t)s->n_refs[i] * sizeof(NgramCounts));
        int reflen = -1;
        for (int j = 0; j < s->n_refs[i]; j++) {
            ngram_count(ix, s->refs[i][j], 4, &r[j]);
            int l = r[j].words, d = abs(l - testlen), bd = abs(reflen - testlen);
            if (reflen < 0 || d < bd || (d == bd && l < reflen)) reflen = l;
        }
        for (int g = 0; g < h.n; g++) {
            int maxc = 0;
            for (int j = 0; j < s->n_refs[i]; j++) {
                int c = ngram_counts_get(&r[j], h.g[g].id);
                if (c > maxc) maxc = c;
            }
            int k = ngram_order(ix, h.g[g].id) - 1;
            correct[k] += h.g[g].count < maxc ? h.g[g].count : maxc;
        }
        for (int k = 0; k < 4; k++) guess[k] += testlen - k > 0 ? testlen - k : 0;
        testlen_sum += testlen;
        reflen_sum += reflen;
        for (int j = 0; j < s->n_refs[i]; j++) ngram_counts_free(&r[j]);
        free(r);
        ngram_counts_free(&h);
    }
    double b = 1.0;
    for (int k = 0; k < 4; k++) {
        b *= (correct[k] + tiny) / (guess[k] + small);
        bleu[k] = pow(b, 1.0 / (k + 1));
    }
    double ratio = (testlen_sum + tiny) / (reflen_sum + small);
    if (ratio < 1)
        for (int k = 0; k < 4; k++) bleu[k] *= exp(1 - 1 / ratio);
    ngram_index_free(ix);
}
