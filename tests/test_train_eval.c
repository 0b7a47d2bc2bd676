// test_train_eval.c: eval_data during training (trainer/run_bench.c) on ./synth's tiny models:
//   - the benchmark is scored at the start, at every eval_every and at the end, each score in the
//     metrics.jsonl record of the validation loss at that step, and nowhere else;
//   - the score at the last step equals ./evaluate's on the run's final checkpoint (the same
//     scoring code on the same weights): multiple choice by likelihood, and VQA with batched
//     greedy answers;
//   - a run resumed from its step-2 checkpoint writes the same metrics.jsonl (eval records
//     included, the start's not repeated) and weights as the uninterrupted run;
//   - a bad eval_data file (an answer letter outside the options; a missing file) stops ./train at
//     startup with one line naming the file (and line), before any data is prepared.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fs_safe.h"
#include "common/json.h"
#include "common/util.h"
#include "tests/testlib.h"

static char root[512], synth_dir[600];

static int setup(void **state) {
    make_temp_dir(root, sizeof root, "train_eval");
    snprintf(synth_dir, sizeof synth_dir, "%s/synth", root);
    return test_synth(root, synth_dir, 6);
}

// ./train (stage 2, 4 steps, validation) into root/NAME with the extra key=value pairs;
// returns the exit status, stdout/stderr in root/NAME.out / .err
static int train(const char *name, const char *const *kv) {
    char conf[700], out_kv[700], o[700], e[700];
    snprintf(conf, sizeof conf, "%s/%s.conf", root, name);
    char cache[760], extra[760];
    snprintf(cache, sizeof cache, "%s/cache_%s", root, name);
    snprintf(extra, sizeof extra, "val_data = %s/data/stage2_val.json\neval_every = 2\n", synth_dir);
    test_write_stage2_conf(conf, synth_dir, cache, "ldp", 96, 4, extra);
    snprintf(out_kv, sizeof out_kv, "out_dir=%s/%s", root, name);
    char *argv[16] = {"./train", conf, out_kv};
    int n = 3;
    for (int i = 0; kv && kv[i]; i++) argv[n++] = (char *)kv[i];
    argv[n] = NULL;
    snprintf(o, sizeof o, "%s/%s.out", root, name);
    snprintf(e, sizeof e, "%s/%s.err", root, name);
    return test_spawn(argv, o, e);
}

// ./evaluate on the run's final checkpoint; returns summary.json's scores (caller frees the root in *sum)
static const cJSON *evaluate_run(const char *name, const char *data, const char *const *args, cJSON **sum) {
    char run[700], out[700], o[760], e[760];
    snprintf(run, sizeof run, "%s/%s", root, name);
    snprintf(out, sizeof out, "%s/%s_eval", root, name);
    char *argv[20] = {"./evaluate", run, (char *)data, "--out", out};
    int n = 5;
    for (int i = 0; args && args[i]; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    snprintf(o, sizeof o, "%s.out", out);
    snprintf(e, sizeof e, "%s.err", out);
    if (test_spawn(argv, o, e) != 0) fail_msg("./evaluate failed, see %s", e);
    char p[800];
    snprintf(p, sizeof p, "%s/summary.json", out);
    *sum = json_load_file(p);
    return fixture_item(*sum, "scores");
}

// metrics.jsonl's records that hold key: their steps into steps (room for 16), values into v;
// also checks that each such record holds val_loss (the score sits next to the validation loss)
static int records_with(const char *name, const char *key, int64_t *steps, double *v) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s/metrics.jsonl", root, name);
    char *s = test_slurp(p, NULL), *save = NULL;
    int n = 0;
    for (char *line = strtok_r(s, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        if (!j) fail_msg("%s: not JSON: %s", p, line);
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
        if (x) {
            if (n >= 16) fail_msg("%s: too many records with %s", p, key);
            if (!cJSON_IsNumber(x)) fail_msg("%s: %s is not a number: %s", p, key, line);
            if (!cJSON_GetObjectItemCaseSensitive(j, "val_loss")) fail_msg("%s: %s without val_loss: %s", p, key, line);
            steps[n] = (int64_t)fixture_item(j, "step")->valuedouble;
            v[n++] = x->valuedouble;
        }
        cJSON_Delete(j);
    }
    free(s);
    return n;
}

static void expect_steps(const char *name, const char *key, const int64_t *steps, int n) {
    const int64_t want[] = {0, 2, 4};
    if (n != 3) fail_msg("%s: %d records with %s, want 3 (steps 0, 2, 4)", name, n, key);
    for (int i = 0; i < 3; i++)
        if (steps[i] != want[i]) fail_msg("%s: record %d of %s is at step %lld, want %lld", name, i, key, (long long)steps[i],
                                          (long long)want[i]);
}

static void test_mc_likelihood_scores(void **state) {
    char data[700], kv[760];
    snprintf(data, sizeof data, "%s/data/bench_mc.jsonl", synth_dir);
    snprintf(kv, sizeof kv, "eval_data=%s", data);
    const char *kvs[] = {kv, "eval_mc_score=likelihood", NULL};
    if (train("mc", kvs) != 0) fail_msg("./train with eval_data failed, see %s/mc.err", root);
    int64_t steps[16];
    double acc[16];
    int n = records_with("mc", "eval_accuracy", steps, acc);
    expect_steps("mc", "eval_accuracy", steps, n);
    int64_t s2[16];
    double items[16];
    assert_int_equal(records_with("mc", "eval_items", s2, items), 3);
    assert_int_equal((int)items[2], 6);
    cJSON *sum;
    const char *args[] = {"--mc-score", "likelihood", NULL};
    const cJSON *sc = evaluate_run("mc", data, args, &sum);
    double want = fixture_item(sc, "accuracy")->valuedouble;
    printf("    eval_accuracy at steps 0, 2, 4: %.4f %.4f %.4f; ./evaluate on step 4: %.4f\n", acc[0], acc[1], acc[2], want);
    assert_true(fabs(acc[2] - want) < 1e-9);
    cJSON_Delete(sum);
    char log[700];
    snprintf(log, sizeof log, "%s/mc.out", root);
    char *out = test_slurp(log, NULL);
    assert_non_null(strstr(out, "| eval mc accuracy "));
    free(out);
}

static void test_vqa_batched_scores(void **state) {
    char data[700], kv[760];
    snprintf(data, sizeof data, "%s/data/bench_vqa.jsonl", synth_dir);
    snprintf(kv, sizeof kv, "eval_data=%s", data);
    const char *kvs[] = {kv, "eval_batch_size=4", "eval_max_new_tokens=6", NULL};
    if (train("vqa", kvs) != 0) fail_msg("./train with eval_data failed, see %s/vqa.err", root);
    int64_t steps[16];
    double v[16], anls[16];
    int n = records_with("vqa", "eval_vqa_accuracy", steps, v);
    expect_steps("vqa", "eval_vqa_accuracy", steps, n);
    assert_int_equal(records_with("vqa", "eval_anls", steps, anls), 3);
    cJSON *sum;
    const char *args[] = {"--max-new-tokens", "6", NULL};  // batch 1: the answers do not depend on the batch
    const cJSON *sc = evaluate_run("vqa", data, args, &sum);
    printf("    eval_vqa_accuracy at step 4: %.4f, ANLS %.4f; ./evaluate: %.4f, %.4f\n", v[2], anls[2],
           fixture_item(sc, "vqa_accuracy")->valuedouble, fixture_item(sc, "anls")->valuedouble);
    assert_true(fabs(v[2] - fixture_item(sc, "vqa_accuracy")->valuedouble) < 1e-9);
    assert_true(fabs(anls[2] - fixture_item(sc, "anls")->valuedouble) < 1e-9);
    cJSON_Delete(sum);

    // A tiny model's answers score 0 against the real references, which would let any answer
    // pass: so the references become ./evaluate's own answers on step 4, and the same run again
    // (same seed: the same weights at step 4) must give them back exactly in training.
    char pred[700], self[700];
    snprintf(pred, sizeof pred, "%s/vqa_eval/predictions.jsonl", root);
    snprintf(self, sizeof self, "%s/data/bench_vqa_self.jsonl", synth_dir);
    char *text = test_slurp(pred, NULL), *bench = test_slurp(data, NULL), *sp = NULL, *sb = NULL;
    FILE *f = fopen(self, "w");
    int kept = 0;
    char *lp = strtok_r(text, "\n", &sp), *lb = strtok_r(bench, "\n", &sb);
    for (; lp && lb; lp = strtok_r(NULL, "\n", &sp), lb = strtok_r(NULL, "\n", &sb)) {
        cJSON *jp = cJSON_Parse(lp), *jb = cJSON_Parse(lb);
        const char *answer = fixture_item(jp, "prediction")->valuestring;
        if (answer[0] && strcspn(answer, " \t\n") != 0) {  // a reference must not be empty
            cJSON_DeleteItemFromObject(jb, "answers");
            cJSON_AddItemToObject(jb, "answers", cJSON_CreateStringArray(&answer, 1));
            char *line = cJSON_PrintUnformatted(jb);
            fprintf(f, "%s\n", line);
            free(line);
            kept++;
        }
        cJSON_Delete(jp);
        cJSON_Delete(jb);
    }
    fclose(f);
    free(text);
    free(bench);
    assert_true(kept >= 3);
    snprintf(kv, sizeof kv, "eval_data=%s", self);
    if (train("vqa_self", kvs) != 0) fail_msg("./train with eval_data failed, see %s/vqa_self.err", root);
    double em[16];
    n = records_with("vqa_self", "eval_exact_match", steps, em);
    expect_steps("vqa_self", "eval_exact_match", steps, n);
    assert_int_equal(records_with("vqa_self", "eval_anls", steps, anls), 3);
    printf("    against ./evaluate's own %d answers: exact match at steps 0, 2, 4: %.4f %.4f %.4f (ANLS at 4: %.4f)\n", kept,
           em[0], em[1], em[2], anls[2]);
    assert_true(em[2] == 1.0);
    assert_true(anls[2] == 1.0);
    assert_true(em[0] < 1.0);  // the untrained model answers otherwise: the score follows the weights
}

// ./train with eval_data = path must exit 1 with one line on stderr holding needle, and
// prepare no data
static void expect_startup_error(const char *name, const char *path, const char *needle) {
    char kv[760], p[700];
    snprintf(kv, sizeof kv, "eval_data=%s", path);
    const char *kvs[] = {kv, NULL};
    assert_int_equal(train(name, kvs), 1);
    snprintf(p, sizeof p, "%s/%s.err", root, name);
    char *e = test_slurp(p, NULL);
    char *nl = strchr(e, '\n');
    if (!nl || nl[1]) fail_msg("%s: want exactly one line, got: %s", p, e);
    if (!strstr(e, needle)) fail_msg("%s: \"%s\" not in: %s", p, needle, e);
    printf("    %s\n", e);
    free(e);
    snprintf(p, sizeof p, "%s/cache_%s", root, name);
    if (dir_exists(p)) fail_msg("%s: data was prepared before the eval_data error", p);
}

static void test_bad_eval_data(void **state) {
    char p[700];
    snprintf(p, sizeof p, "%s/bad.jsonl", root);
    test_write_file(p, "{\"id\": \"a\", \"question\": \"Q?\", \"options\": [\"x\", \"y\"], \"answer\": \"A\"}\n"
                  "{\"id\": \"b\", \"question\": \"Q?\", \"options\": [\"x\", \"y\"], \"answer\": \"C\"}\n");
    expect_startup_error("bad", p, "bad.jsonl:2: item 2 (id \"b\"): \"answer\" is \"C\"");
    snprintf(p, sizeof p, "%s/none.jsonl", root);
    expect_startup_error("none", p, "eval_data");
}

static void test_resume_keeps_eval_records(void **state) {
    char data[700], kv[760], p[800];
    snprintf(data, sizeof data, "%s/data/bench_mc.jsonl", synth_dir);
    snprintf(kv, sizeof kv, "eval_data=%s", data);
    const char *kvs[] = {kv, "eval_mc_score=likelihood", "save_every=2", NULL};
    if (train("resume", kvs) != 0) fail_msg("./train failed, see %s/resume.err", root);
    snprintf(p, sizeof p, "%s/resume/metrics.jsonl", root);
    char *m1 = test_slurp(p, NULL);
    snprintf(p, sizeof p, "%s/resume/step_00000004/trainable.safetensors", root);
    size_t n1;
    char *t1 = test_slurp(p, &n1);
    // as if killed after step 2's checkpoint: step 4 never happened
    snprintf(p, sizeof p, "%s/resume/step_00000004", root);
    assert_int_equal(fs_remove(p), 0);
    if (train("resume", kvs) != 0) fail_msg("the resumed ./train failed, see %s/resume.err", root);
    snprintf(p, sizeof p, "%s/resume.out", root);
    char *out = test_slurp(p, NULL);
    assert_non_null(strstr(out, "resume: "));
    assert_null(strstr(out, "step 0/4 |"));  // the start's evaluation is not repeated
    assert_non_null(strstr(out, "step 4/4 | validation loss"));
    snprintf(p, sizeof p, "%s/resume/metrics.jsonl", root);
    char *m2 = test_slurp(p, NULL);
    assert_string_equal(m1, m2);
    snprintf(p, sizeof p, "%s/resume/step_00000004/trainable.safetensors", root);
    size_t n2;
    char *t2 = test_slurp(p, &n2);
    assert_true(n1 == n2 && memcmp(t1, t2, n1) == 0);
    int64_t steps[16];
    double acc[16];
    expect_steps("resume", "eval_accuracy", steps, records_with("resume", "eval_accuracy", steps, acc));
    printf("    resumed at step 2: metrics.jsonl (eval records at 0, 2, 4) and step 4's weights as uninterrupted\n");
    free(m1);
    free(m2);
    free(t1);
    free(t2);
    free(out);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_eval_data),
        cmocka_unit_test(test_mc_likelihood_scores),
        cmocka_unit_test(test_vqa_batched_scores),
        cmocka_unit_test(test_resume_keeps_eval_records),
    };
    struct CMUnitTest chosen[sizeof tests / sizeof tests[0]];
    size_t n = test_select(chosen, tests, sizeof tests / sizeof tests[0], argc > 1 ? argv[1] : NULL);
    return _cmocka_run_group_tests("tests", chosen, n, setup, NULL);
}
