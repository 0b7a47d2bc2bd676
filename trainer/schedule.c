// schedule.c: cosine decay with linear warmup, in double as transformers' lr_lambda computes it.
#include "trainer/schedule.h"

#include <math.h>

int schedule_warmup_steps(int total, double ratio) { return (int)ceil((double)total * ratio); }

double schedule_factor(int step, int total, int warmup, double min_lr_rate) {
    if (step < warmup) return (double)step / (double)(warmup > 1 ? warmup : 1);
    double progress = (double)(step - warmup) / (double)(total - warmup > 1 ? total - warmup : 1);
    double factor = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress));  // num_cycles = 0.5
    if (min_lr_rate > 0) factor = factor * (1.0 - min_lr_rate) + min_lr_rate;
    return factor > 0.0 ? factor : 0.0;
}
