// speed.c: speed and memory figures for ./eval (eval/speed.h).
#include "eval/speed.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common/util.h"

void speed_init(EvalSpeed *s) {
    memset(s, 0, sizeof *s);
    s->t_start = time_now();
}

void speed_free(EvalSpeed *s) {
    free(s->ttft);
    memset(s, 0, sizeof *s);
}

void speed_add(EvalSpeed *s, int64_t n_prompt, double t_prefill, double t_image, double ttft, int64_t n_decode,
               double t_decode, int has_image) {
    s->prefill_tokens += n_prompt;
    s->decode_tokens += n_decode;
    s->t_prefill += t_prefill;
    s->t_decode += t_decode;
    s->t_image += t_image;
    s->images += has_image;
    if (s->n_ttft == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->ttft = xrealloc(s->ttft, (size_t)s->cap * sizeof(double));
    }
    s->ttft[s->n_ttft++] = ttft;
}

static int dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double speed_ttft_quantile(const EvalSpeed *s, double q) {
    if (s->n_ttft == 0) return 0;
    double *v = xmalloc((size_t)s->n_ttft * sizeof(double));
    memcpy(v, s->ttft, (size_t)s->n_ttft * sizeof(double));
    qsort(v, (size_t)s->n_ttft, sizeof(double), dbl_cmp);
    double pos = q * (s->n_ttft - 1);
    int i = (int)pos;
    double r = i + 1 < s->n_ttft ? v[i] + (pos - i) * (v[i + 1] - v[i]) : v[i];
    free(v);
    return r;
}

void speed_peak_memory(const Kernels *k, double *backend_bytes, double *rss_bytes) {
    size_t in_use = 0, peak = 0;
    if (k->memory) k->memory(&in_use, &peak);
    *backend_bytes = (double)peak;
    struct rusage ru;
    *rss_bytes = getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss * 1024.0 : 0;  // Linux: KiB
}
