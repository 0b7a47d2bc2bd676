// trainer.c: the training run (see trainer.h): its parts in order (trainer/run.h): setup, then
// per optimizer step the step itself, logging, validation when due, a checkpoint when due or
// when a rank was asked to stop; every rank runs this same sequence.
#include "trainer/trainer.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "trainer/run.h"

// the validation loss and the eval_data scores of the model as it is at step, in one record
static void run_evaluations(Run *r, int64_t step) {
    int64_t vt = 0;
    if (r->val) r->last_val = run_evaluate(r, &vt);
    BenchScores bs;
    if (r->bench) {
        run_bench(r, &bs);
        const char *name;
        r->last_bench = bench_scores_main(&bs, run_bench_task(r), &name);
    }
    run_log_eval(r, step, r->last_val, vt, r->bench ? &bs : NULL);
    if (r->bench) bench_scores_free(&bs);
}

int trainer_run(const TrainConfig *c) {
    Run run, *r = &run;
    run_setup(r, c, time_now());
    if ((r->val || r->bench) && !r->resumed) {  // where validation starts, so the curve has its origin
        run_evaluations(r, 0);
        r->first_val = r->last_val;
        r->first_bench = r->last_bench;
    }
    r->t_loop = r->t_window = time_now();
    StepResult s = {0};
    int stopped = 0;
    while (r->st.step < r->total && !stopped) {
        run_step(r, &s);
        run_log_step(r, &s);
        int64_t step = r->st.step;
        int last = step == r->total;
        // A preempted job saves first: its grace period may be shorter than a validation pass.
        // Not at the last step: its checkpoint ends the run, and must hold the final validation
        // (a stop there that outlives the grace period redoes the last step, as a kill would).
        if ((r->val || r->bench) && (!s.stop || last) && ((c->eval_every && step % c->eval_every == 0) || last))
            run_evaluations(r, step);
        if ((c->save_every && step % c->save_every == 0) || last || s.stop) run_save(r);
        if (s.stop) {
            // a rank that was not signalled itself stops too: the ranks agreed at this boundary
            const char *sig = run_stop_signal == SIGINT ? "SIGINT" : run_stop_signal ? "SIGTERM" : "a stop signal (on another rank)";
            if (r->rank == 0)
                printf("received %s: checkpoint step_%08" PRId64 " saved in %s; run %s to resume\n", sig, step, c->out_dir,
                       strcmp(c->resume, "auto") ? "the same command with resume=auto" : "the same command");
            stopped = 1;
        }
    }
    if (r->st.step == r->total && !stopped) run_log_done(r);
    free(s.samples);
    fflush(stdout);
    run_teardown(r);
    return 0;
}
