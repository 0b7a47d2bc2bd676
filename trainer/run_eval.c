// run_eval.c: validation loss (see run.h). Each rank evaluates its contiguous part of the
// validation set (split_all: every sample once, whatever the number of ranks); the summed
// losses and labelled counts of all ranks give the mean over the whole set.
#include <math.h>

#include "trainer/run.h"

double run_evaluate(Run *r, int64_t *tokens) {
    Vlm *m = &r->m;
    Loader *val = r->val;
    vlm_set_training(m, 0, 0);
    loader_seek(val, (LoaderPos){0, 0});
    int64_t n = loader_samples_per_rank(val), done = 0, count = 0;
    double sum = 0;
    LoaderBatch b;
    while (done < n) {
        loader_next(val, &b);
        done += b.n_samples + b.n_skipped;
        VlmBatch vb = {.B = b.B, .T = b.T, .ids = b.ids, .targets = b.targets, .pos = b.pos, .seg = b.seg,
                       .n_img = b.n_img, .pixels = b.pixels, .img_row = b.img_row, .img_start = b.img_start};
        int lab;
        sum += vlm_forward_backward(m, &vb, 0.0f, &lab);
        count += lab;
    }
    double s[2] = {sum, (double)count};
    dist_sum_f64(r->dist, s, 2);
    *tokens = (int64_t)s[1];
    return s[1] > 0 ? s[0] / s[1] : NAN;
}
