// vqa_accuracy.c: VQA accuracy over annotator subsets and exact match (eval/vqa_metrics.h).
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "eval/text.h"
#include "eval/vqa_metrics.h"

double vqa_accuracy(const char *prediction, const char *const *refs, int n) {
    CHECK(n >= 1, "vqa_accuracy: no reference answer");
    char *p = vqa_normalize(prediction);
    int *eq = xmalloc((size_t)n * sizeof(int)), total = 0;
    for (int i = 0; i < n; i++) {
        char *r = vqa_normalize(refs[i]);
        eq[i] = !strcmp(p, r);
        total += eq[i];
        free(r);
    }
    double acc = 0;
    if (n == 1) {
        acc = eq[0];
    } else {
        // leave annotator i out: the matches among the other n - 1
        for (int i = 0; i < n; i++) {
            double m = total - eq[i];
            acc += m / 3 < 1 ? m / 3 : 1;
        }
        acc /= n;
    }
    free(eq);
    free(p);
    return acc;
}

char *answer_compact(const char *s) {
    int n, m;
    uint32_t *cp = text_decode(s, strlen(s), &n);
    uint32_t *lo = text_lower(cp, n, &m);
    uint32_t *out = xmalloc(((size_t)m + 1) * sizeof(uint32_t));
    int k = 0;
    for (int i = 0; i < m;) {
        if (text_class(lo[i]) == TEXT_SPACE) {
            i++;
            continue;
        }
        if (k > 0) out[k++] = ' ';
        while (i < m && text_class(lo[i]) != TEXT_SPACE) out[k++] = lo[i++];
    }
    char *r = text_encode(out, k);
    free(out);
    free(lo);
    free(cp);
    return r;
}

double exact_match(const char *prediction, const char *const *refs, int n) {
    char *p = answer_compact(prediction);
    int hit = 0;
    for (int i = 0; i < n && !hit; i++) {
        char *r = answer_compact(refs[i]);
        hit = !strcmp(p, r);
        free(r);
    }
    free(p);
    return hit;
}
