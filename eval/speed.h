// speed.h: the speed figures ./eval reports: prefill and decode tokens/s, images/s, time to
// first token (p50, p95) and peak memory (the backend's allocations and the process's RSS).
#pragma once
#include <stdint.h>

#include "kernels/kernels.h"

typedef struct {
    int64_t prefill_tokens, decode_tokens;  // positions prefilled (image tokens included), decode steps
    double t_prefill, t_decode, t_image;    // seconds
    int64_t images;
    double *ttft;                           // (n_ttft) seconds from the start of a request to its first token
    int n_ttft, cap;
    double t_start;
} EvalSpeed;

void speed_init(EvalSpeed *s);
void speed_free(EvalSpeed *s);
// one request: prefill of n_prompt positions in t_prefill seconds, of which t_image in the
// vision encoder; ttft: seconds from its start to the first token (the prompt's logits when
// scoring likelihoods); n_decode decode steps in t_decode seconds
void speed_add(EvalSpeed *s, int64_t n_prompt, double t_prefill, double t_image, double ttft, int64_t n_decode,
               double t_decode, int has_image);
// q-quantile (0..1) of the times to first token, linear interpolation between order statistics
// (numpy.percentile's default); 0 when there are none
double speed_ttft_quantile(const EvalSpeed *s, double q);
// peak bytes: the backend's (k->memory) and the process's resident set (getrusage)
void speed_peak_memory(const Kernels *k, double *backend_bytes, double *rss_bytes);
