// run.h: the parts of one training run (trainer.c calls them in order), each with one job:
//   run_setup.c    backend, ranks, data, model, loaders, resume or initialisation
//   run_step.c     one optimizer step across the ranks (micro-batches, reductions, ZeRO, AdamW)
//   run_eval.c     validation loss over every rank's slice of the validation set
//   run_bench.c    eval_data: the benchmark scored with the model being trained
//   run_save.c     a checkpoint of the whole state (rank 0 writes it)
//   run_log.c      progress lines, metrics.jsonl and timing.jsonl (rank 0)
#pragma once
#include <stdint.h>
#include <stdio.h>

#include "data/loader.h"
#include "eval/bench_run.h"
#include "model/vlm.h"
#include "trainer/checkpoint.h"
#include "trainer/dist.h"
#include "trainer/grad_buckets.h"
#include "trainer/train_config.h"

typedef struct RunBench RunBench;

typedef struct {
    const TrainConfig *c;
    Dist *dist;
    int rank, world, zero;  // zero: the ZeRO stage in use (0 or 1)
    const Kernels *k;
    Vlm m;
    GradBuckets buckets;    // the step's gradient reduction (ZeRO-0: all-reduce; ZeRO-1: to each slice's rank)
    Loader *train, *val;
    ImageSlot slot;         // the image slot's format, which the loaders expand
    RunBench *bench;        // eval_data; NULL: none
    int accum;              // micro-batches per rank per step
    int warmup;
    int64_t total, steps_per_epoch;
    double conn_lr;
    TrainState st;          // st.data: the next step's place in the epoch's global order
    char *signature;
    int resumed;
    FILE *metrics, *timing; // rank 0 only
    double t_start, t_loop, t_window, first_val, last_val, first_bench, last_bench;
    int64_t first_step, tokens_window;
} Run;

// what one step did, summed over the ranks
typedef struct {
    double loss, norm, factor;
    int64_t n_lab, n_tok, epoch;
    int stop;          // some rank received SIGTERM / SIGINT: every rank saves and stops after this step
    int64_t *samples;  // log_samples: the step's sample indices, sorted (rank 0), n_samples of them
    int n_samples;
} StepResult;

extern volatile int run_stop_signal;  // the signal that asked this process to stop, 0 if none

// sets up everything up to the first step; returns with r ready or fatal()
void run_setup(Run *r, const TrainConfig *c, double t_start);
void run_teardown(Run *r);

void run_step(Run *r, StepResult *out);
// ZeRO-1, after each rank updated its slice: every rank's compute weights are the updated ones
// (the sharded masters' slices all-gathered into the compute copy; else the masters themselves)
void run_share_weights(Run *r);
// mean validation loss over all ranks' slices; *tokens gets the labelled count
double run_evaluate(Run *r, int64_t *tokens);
// eval_data (nothing when it is empty): open reads and checks the file (fatal() on a bad one),
// init tokenises the requests and allocates the generator once the model exists, run_bench
// scores the model as it is now
void run_bench_open(Run *r);
void run_bench_init(Run *r);
void run_bench(Run *r, BenchScores *s);
EvalTask run_bench_task(const Run *r);
void run_bench_close(Run *r);
// checkpoint of r->st.step (every rank calls it; rank 0 writes); fatal() on failure
void run_save(Run *r);

// keep_bytes < 0: a fresh file; otherwise cut to keep_bytes (INT64_MAX: kept whole)
FILE *run_open_log(const char *out_dir, const char *name, int64_t keep_bytes);
void run_log_step(Run *r, const StepResult *s);
// one record of the evaluations at step: the validation loss (when r->val) and the eval_data
// scores (when bs is not NULL)
void run_log_eval(Run *r, int64_t step, double loss, int64_t tokens, const BenchScores *bs);
void run_log_done(Run *r);
