// anls.c: average normalised Levenshtein similarity of one answer (eval/vqa_metrics.h).
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "eval/text.h"
#include "eval/vqa_metrics.h"

// Levenshtein distance of two code point strings, one row of the table at a time
static int levenshtein(const uint32_t *a, int na, const uint32_t *b, int nb) {
    int *row = xmalloc(((size_t)na + 1) * sizeof(int));
    for (int i = 0; i <= na; i++) row[i] = i;
    for (int j = 1; j <= nb; j++) {
        int diag = row[0];
        row[0] = j;
        for (int i = 1; i <= na; i++) {
            int up = row[i];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[i - 1] + 1 < best) best = row[i - 1] + 1;
            row[i] = best;
            diag = up;
        }
    }
    int d = row[na];
    free(row);
    return d;
}

static int upper_len(const uint32_t *s, int n) {
    int len = 0;
    for (int i = 0; i < n; i++) len += text_upper_len(s[i]);
    return len;
}

double anls(const char *prediction, const char *const *refs, int n, double threshold) {
    CHECK(n >= 1, "anls: no reference answer");
    char *p = answer_compact(prediction);
    int np;
    uint32_t *pc = text_decode(p, strlen(p), &np);
    double best = 0;
    for (int i = 0; i < n; i++) {
        char *r = answer_compact(refs[i]);
        int nr;
        uint32_t *rc = text_decode(r, strlen(r), &nr);
        int lp = upper_len(pc, np), lr = upper_len(rc, nr), len = lp > lr ? lp : lr;
        double nl = len == 0 ? 0.0 : (double)levenshtein(pc, np, rc, nr) / len;
        double s = nl < threshold ? 1 - nl : 0.0;
        if (s > best) best = s;
        free(rc);
        free(r);
    }
    free(pc);
    free(p);
    return best;
}
