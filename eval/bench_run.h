// bench_run.h: scoring a benchmark with a model in memory, the one copy that ./evaluate and
// ./train's eval_data use. The requests (one per item; one per rotation of the options with
// circular multiple choice), their prompts and token ids are made once (bench_run_init, which
// also sizes and allocates the generator for the longest); bench_run_go asks the model (greedy
// answers, batch_size conversations at a time through model/gen_batch.h, or one prefill per
// question and each option's log-likelihood for likelihood scoring) and can run again on
// changed weights (./train scores the same requests at every eval_every); bench_run_scores
// turns the answers into the task's scores.
#pragma once
#include <stdint.h>

#include "eval/bench_file.h"
#include "eval/speed.h"
#include "model/gen_batch.h"
#include "model/model_dir.h"

#define BENCH_VQA_PROMPT "Answer the question using a single word or phrase."
#define BENCH_CAPTION_PROMPT "Provide a one-sentence caption for the provided image."

typedef struct {
    int likelihood;              // mc: the option with the highest log-likelihood (else a generated letter)
    int circular;                // mc: MMBench's circular evaluation (generate only)
    int max_new;                 // tokens per answer (0: 64)
    int batch;                   // conversations decoded together (0: 1)
    const char *vqa_prompt;      // NULL: BENCH_VQA_PROMPT; "": none
    const char *caption_prompt;  // NULL: BENCH_CAPTION_PROMPT
} BenchOptions;

// one model request: an item asked once (rotation `rotation` of its options for mc)
typedef struct {
    int item, rotation;
    int order[26];         // mc: displayed order of the options
    char *prompt;
    char *prediction;      // generated text (likelihood: the chosen option's text); NULL: not run
    int chosen;            // mc: displayed index chosen, -1 none
    int correct;           // mc
    double vqa, anls, em;  // vqa
    double logp[26];       // mc likelihood: log-likelihood of each displayed option
    double cider, rouge;   // caption (bench_run_scores)
} BenchRequest;

typedef struct {
    char *name;
    int n;
    double sum;
} BenchCategory;

typedef struct {
    int n_scored;                      // items scored (not skipped)
    double accuracy, accuracy_first;   // mc (circular: every rotation right; first rotation only)
    int right, unparsed;               // mc
    double chance;                     // mc: mean of 1 / options
    double vqa, anls, em;              // vqa
    double bleu[4], cider, rouge;      // caption
    BenchCategory *cats;               // per category (mc accuracy, VQA accuracy)
    int n_cats;
} BenchScores;

typedef struct {
    const BenchSet *b;
    BenchOptions o;
    GenModel *gm;                  // borrowed
    int n_req;
    BenchRequest *req;             // (n_req)
    int **ids, *n_ids;             // (n_req) prompt positions, the image's slot expanded (gen_model_prompt_tiles)
    int **tile_start, *n_tiles;    // (n_req) its tiles' places
    int ***opt_ids, **n_opt_ids;   // likelihood: each option's tokens
    int max_len;                   // cache positions per conversation
    int use_batch;
    Generator g;                   // batch 1 (and likelihood scoring)
    GenBatch gb;                   // batch > 1
    EvalSpeed sp;                  // the last bench_run_go's speed
    double t_total;                // its seconds
} BenchRun;

// The requests of b, tokenised with gm's template; fatal() naming FILE:LINE when a prompt
// cannot fit the model's context. Allocates the generator (backend memory for the KV cache).
void bench_run_init(BenchRun *r, GenModel *gm, const BenchSet *b, const BenchOptions *o);
void bench_run_free(BenchRun *r);
// Asks the model every request (skipped items pass by), with the model in inference mode;
// progress: print a progress line with ETA to stderr. Scores each request (mc, vqa).
void bench_run_go(BenchRun *r, int progress);
// the task's scores from the answers (captions: BLEU, CIDEr-D and ROUGE-L over the corpus,
// each request's CIDEr-D and ROUGE-L into its BenchRequest)
void bench_run_scores(BenchRun *r, BenchScores *s);
void bench_scores_free(BenchScores *s);
// The log-likelihood of each of n_options token sequences opt[j] (n_opt[j] >= 1 tokens)
// continuing a prompt, as likelihood scoring computes it: one prefill of the prompt p (model/
// generate.h: its image slots expanded, tiles at their places), then per option gen_truncate back
// to the prompt and gen_extend over its tokens but the last; logp[j] the sum over the option's
// tokens of log-softmax(logits)[token], in double. all: room for (longest option - 1) x V floats,
// base: V floats; *ttft (when not NULL) the prefill's seconds. Returns the prompt's positions.
int bench_option_logprobs(Generator *g, const GenPrompt *p, const int *const *opt, const int *n_opt, int n_options,
                          float *all, float *base, double *logp, double *ttft);
// the headline score: mc accuracy, VQA accuracy, CIDEr-D
double bench_scores_main(const BenchScores *s, EvalTask task, const char **name);
