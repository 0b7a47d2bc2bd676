// test_train_optim.c: the trainer's schedule, clipping and AdamW against torch + transformers
// over 300 steps (scripts/make_train_fixtures.py): two parameter groups (LoRA with weight decay,
// a connector bias without), cosine with warmup and its min-lr variant.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/safetensors.h"
#include "common/util.h"
#include "model/params.h"
#include "tests/testlib.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"

static StFile fx;

static float *get(const char *tag, const char *name, size_t *n) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", tag, name);
    const StTensor *t = st_find(&fx, full);
    if (!t) fail_msg("fixture lacks %s", full);
    float *x = xmalloc(st_numel(t) * sizeof(float));
    if (t->dtype == ST_F64) {
        const double *d = st_data(&fx, t);
        for (int64_t i = 0; i < st_numel(t); i++) x[i] = (float)d[i];
    } else {
        st_read_f32(&fx, t, x);
    }
    if (n) *n = (size_t)st_numel(t);
    return x;
}

static const double *get_f64(const char *tag, const char *name) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", tag, name);
    const StTensor *t = st_find(&fx, full);
    if (!t || t->dtype != ST_F64) fail_msg("fixture lacks F64 %s", full);
    return st_data(&fx, t);
}

static void run_case(const char *tag, double min_lr_rate) {
    const int STEPS = 300, N0 = 37, N1 = 23;
    TrainConfig c;
    memset(&c, 0, sizeof c);
    c.lr = 1e-3;
    c.connector_lr = 2e-4;
    c.min_lr = min_lr_rate * c.lr;
    c.weight_decay = 0.05;
    c.grad_clip = 1.0;
    c.adam_beta1 = 0.9;
    c.adam_beta2 = 0.999;
    c.adam_eps = 1e-8;
    ParamSet P;
    params_init(&P, kernels_cpu(), 1);
    params_declare_group(&P, PARAM_GROUP_LORA);  // the group decides the learning rate
    int i0 = params_add(&P, 1, (int64_t[]){N0}, "model.layers.0.mlp.up_proj.lora_A.weight");  // lr 1e-3, decay
    params_declare_group(&P, PARAM_GROUP_CONNECTOR);
    int i1 = params_add(&P, 1, (int64_t[]){N1}, "model.mm_projector.2.bias");                // lr 2e-4, no decay
    params_alloc(&P);
    // the same steps through optimizer_update_span (one adamw_span call, the norm read from where
    // the backend keeps it), on the whole span (Q[0]) and in two slices cut inside tensor 0 (Q[1]),
    // as ZeRO-1 shards update: both must equal optimizer_step bit for bit
    ParamSet Q[2];
    for (int q = 0; q < 2; q++) {
        params_init(&Q[q], kernels_cpu(), 1);
        params_declare_group(&Q[q], PARAM_GROUP_LORA);
        params_add(&Q[q], 1, (int64_t[]){N0}, "model.layers.0.mlp.up_proj.lora_A.weight");
        params_declare_group(&Q[q], PARAM_GROUP_CONNECTOR);
        params_add(&Q[q], 1, (int64_t[]){N1}, "model.mm_projector.2.bias");
        params_alloc(&Q[q]);
    }
    float *init0 = get(tag, "init0", NULL), *init1 = get(tag, "init1", NULL);
    params_upload(&P, i0, init0);
    params_upload(&P, i1, init1);
    for (int q = 0; q < 2; q++) {
        params_upload(&Q[q], i0, init0);
        params_upload(&Q[q], i1, init1);
    }
    float *g0 = get(tag, "grads0", NULL), *g1 = get(tag, "grads1", NULL);
    const double *lrs = get_f64(tag, "lrs"), *norms = get_f64(tag, "norms");
    int warmup = schedule_warmup_steps(STEPS, 0.03);
    assert_int_equal(warmup, 9);
    double worst_lr = 0, worst_norm = 0;
    for (int s = 0; s < STEPS; s++) {
        double lr0 = optimizer_lr(&c, &P.p[i0], s, STEPS, warmup), lr1 = optimizer_lr(&c, &P.p[i1], s, STEPS, warmup);
        double e0 = fabs(lr0 - lrs[2 * s]) / 1e-3, e1 = fabs(lr1 - lrs[2 * s + 1]) / 2e-4;
        if (e0 > worst_lr) worst_lr = e0;
        if (e1 > worst_lr) worst_lr = e1;
        memcpy(params_grad(&P, i0), g0 + (size_t)s * N0, N0 * sizeof(float));
        memcpy(params_grad(&P, i1), g1 + (size_t)s * N1, N1 * sizeof(float));
        for (int q = 0; q < 2; q++) {
            memcpy(params_grad(&Q[q], i0), g0 + (size_t)s * N0, N0 * sizeof(float));
            memcpy(params_grad(&Q[q], i1), g1 + (size_t)s * N1, N1 * sizeof(float));
        }
        double norm;
        assert_int_equal(optimizer_step(&P, &c, s, STEPS, warmup, s + 1, &norm), 0);
        for (int q = 0; q < 2; q++) {
            double sq, loss = 1.0;
            Q[q].k->sum_f64(&sq, Q[q].grad, Q[q].numel, 1, 0);
            assert_true(sqrt(sq) == norm);
            if (q == 0) {
                optimizer_update_span(&Q[q], &c, s, STEPS, warmup, s + 1, 0, Q[q].numel, &sq, &loss);
            } else {
                optimizer_update_span(&Q[q], &c, s, STEPS, warmup, s + 1, 20, Q[q].numel, &sq, &loss);
                optimizer_update_span(&Q[q], &c, s, STEPS, warmup, s + 1, 0, 20, &sq, NULL);
            }
            if (memcmp(Q[q].master, P.master, P.numel * sizeof(float)) || memcmp(Q[q].m, P.m, P.numel * sizeof(float)) ||
                memcmp(Q[q].v, P.v, P.numel * sizeof(float)))
                fail_msg("%s step %d: optimizer_update_span (%s) differs from optimizer_step", tag, s + 1,
                         q ? "two slices" : "whole span");
        }
        double en = fabs(norm - norms[s]) / norms[s];
        if (en > worst_norm) worst_norm = en;
    }
    printf("    %-6s learning rates: worst error %.1e of the peak; gradient norms: %.1e relative\n", tag, worst_lr, worst_norm);
    assert_true(worst_lr < 1e-12);
    assert_true(worst_norm < 1e-6);  // torch sums in fp32, svlm in double
    const char *names[6] = {"final0", "final1", "m0", "m1", "v0", "v1"};
    const float *got[6] = {params_master(&P, i0), params_master(&P, i1), P.m + P.p[i0].offset, P.m + P.p[i1].offset,
                           P.v + P.p[i0].offset, P.v + P.p[i1].offset};
    for (int j = 0; j < 6; j++) {
        size_t n;
        float *want = get(tag, names[j], &n);
        double e = rel_err(got[j], want, n);
        printf("    %-6s %-7s after 300 steps: rel err %.2e\n", tag, names[j], e);
        if (!(e < 1e-5)) fail_msg("%s %s: relative error %.3e", tag, names[j], e);
        free(want);
    }
    // a non-finite norm or loss: nothing changes (the trainer's skipped step)
    float *before = xmalloc(P.numel * sizeof(float));
    memcpy(before, Q[0].master, P.numel * sizeof(float));
    double bad[2] = {NAN, INFINITY}, one = 1.0, fine = 1.0;
    for (int b = 0; b < 2; b++) {
        optimizer_update_span(&Q[0], &c, 0, STEPS, warmup, 1, 0, Q[0].numel, &bad[b], &one);
        optimizer_update_span(&Q[0], &c, 0, STEPS, warmup, 1, 0, Q[0].numel, &fine, &bad[b]);
    }
    assert_memory_equal(before, Q[0].master, P.numel * sizeof(float));
    free(before);
    printf("    %-6s optimizer_update_span (whole span, two slices) = optimizer_step bit for bit over %d steps\n", tag, STEPS);
    for (int q = 0; q < 2; q++) params_free(&Q[q]);
    free(init0);
    free(init1);
    free(g0);
    free(g1);
    params_free(&P);
}

static void test_cosine_schedule_and_adamw(void **state) { run_case("cos", 0.0); }
static void test_min_lr_schedule_and_adamw(void **state) { run_case("minlr", 0.1); }

static void test_schedule_edges(void **state) {
    assert_int_equal(schedule_warmup_steps(100, 0.0), 0);
    assert_int_equal(schedule_warmup_steps(101, 0.03), 4);  // ceil(3.03)
    assert_true(schedule_factor(0, 10, 0, 0) == 1.0);        // no warmup: full lr at once
    assert_true(schedule_factor(0, 10, 2, 0) == 0.0);        // warmup starts at 0, as in transformers
    assert_true(fabs(schedule_factor(10, 10, 2, 0)) < 1e-15);
    assert_true(fabs(schedule_factor(10, 10, 2, 0.1) - 0.1) < 1e-15);
    assert_true(schedule_factor(1, 1, 1, 0) >= 0.0);
}

int main(void) {
    st_open_or_die(&fx, fixture_path("train/adamw_schedule.safetensors"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cosine_schedule_and_adamw),
        cmocka_unit_test(test_min_lr_schedule_and_adamw),
        cmocka_unit_test(test_schedule_edges),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    st_close(&fx);
    return rc;
}
