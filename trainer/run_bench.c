// run_bench.c: eval_data during training (see run.h): the benchmark file is read and checked at
// setup (a bad file stops the run before any data is prepared), its requests are tokenised once
// with the run's template, and at every validation point the model being trained answers them
// through eval/bench_run.h, the code ./evaluate runs. Every rank scores the whole benchmark (the
// same greedy answers, so no rank waits in a collective while rank 0 alone works, which the
// watchdog would take for a lost rank); rank 0 logs the scores.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "eval/bench_run.h"
#include "trainer/run.h"

struct RunBench {
    BenchSet set;
    GenModel gm;     // tokenizer, template and image settings; the model is the run's
    BenchRun run;
};

void run_bench_open(Run *r) {
    const TrainConfig *c = r->c;
    if (!c->eval_data[0]) return;
    RunBench *b = xcalloc(1, sizeof *b);
    EvalTask task = strcmp(c->eval_task, "auto") ? eval_task_parse(c->eval_task) : TASK_NONE;
    bench_load(&b->set, c->eval_data, c->eval_image_folder[0] ? c->eval_image_folder : NULL, task);
    if (c->eval_limit) bench_truncate(&b->set, c->eval_limit);
    if (!strcmp(c->eval_mc_score, "likelihood") && b->set.task != TASK_MC)
        fatal("config: eval_mc_score = likelihood applies to multiple-choice items; %s is %s", c->eval_data,
              eval_task_name(b->set.task));
    r->bench = b;
}

void run_bench_init(Run *r) {
    RunBench *b = r->bench;
    if (!b) return;
    const TrainConfig *c = r->c;
    ModelDirSpec spec;
    memset(&spec, 0, sizeof spec);
    snprintf(spec.dir, sizeof spec.dir, "%s", c->out_dir);
    model_dir_spec_from_config(&spec, c, ".", "config");
    gen_model_borrow(&b->gm, &r->m, &spec, NULL);
    BenchOptions o = {.likelihood = !strcmp(c->eval_mc_score, "likelihood"), .max_new = c->eval_max_new_tokens,
                      .batch = c->eval_batch_size};
    size_t before, after;
    r->k->memory(&before, NULL);
    bench_run_init(&b->run, &b->gm, &b->set, &o);
    r->k->memory(&after, NULL);
    char mb[32];
    printf("eval_data: %s: %d %s items (%d skipped: image not found), %d requests, %s; generation cache %s on %s\n",
           c->eval_data, b->set.n, eval_task_name(b->set.task), b->set.n_skipped, b->run.n_req,
           o.likelihood ? "likelihood scoring" : "greedy answers", fmt_bytes((double)(after - before), mb, sizeof mb),
           r->k->name);
}

void run_bench(Run *r, BenchScores *s) {
    RunBench *b = r->bench;
    bench_run_go(&b->run, 0);
    bench_run_scores(&b->run, s);
}

EvalTask run_bench_task(const Run *r) { return r->bench->set.task; }

void run_bench_close(Run *r) {
    RunBench *b = r->bench;
    if (!b) return;
    bench_run_free(&b->run);
    gen_model_free(&b->gm);
    bench_free(&b->set);
    free(b);
    r->bench = NULL;
}
