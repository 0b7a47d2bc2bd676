// bench_run.c: a benchmark's requests, the model's answers and their scores (see bench_run.h).
#include "eval/bench_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "eval/caption_metrics.h"
#include "eval/mc.h"
#include "eval/text.h"
#include "eval/vqa_metrics.h"

static double log_softmax_at(const float *logits, int V, int id) {
    double mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - mx);
    return (double)logits[id] - mx - log(sum);
}

// the prompt of request q of item it
static char *request_prompt(const BenchRun *r, const BenchItem *it, const BenchRequest *q) {
    const BenchOptions *o = &r->o;
    if (r->b->task == TASK_MC) {
        if (!o->likelihood) return mc_prompt(it->hint, it->question, it->options, q->order, it->n_options, MC_INSTRUCTION);
        size_t len = (it->hint ? strlen(it->hint) + 1 : 0) + strlen(it->question) + 1;
        char *p = xmalloc(len);
        snprintf(p, len, "%s%s%s", it->hint ? it->hint : "", it->hint ? "\n" : "", it->question);
        return p;
    }
    if (r->b->task == TASK_VQA) {
        size_t len = strlen(it->question) + strlen(o->vqa_prompt) + 2;
        char *p = xmalloc(len);
        snprintf(p, len, "%s%s%s", it->question, o->vqa_prompt[0] ? "\n" : "", o->vqa_prompt);
        return p;
    }
    return xstrdup(it->question ? it->question : o->caption_prompt);
}

void bench_run_init(BenchRun *r, GenModel *gm, const BenchSet *b, const BenchOptions *opt) {
    memset(r, 0, sizeof *r);
    r->b = b;
    r->gm = gm;
    r->o = *opt;
    BenchOptions *o = &r->o;
    if (!o->max_new) o->max_new = 64;
    if (!o->batch) o->batch = 1;
    if (!o->vqa_prompt) o->vqa_prompt = BENCH_VQA_PROMPT;
    if (!o->caption_prompt) o->caption_prompt = BENCH_CAPTION_PROMPT;
    if (o->circular && o->likelihood)
        fatal("circular evaluation with likelihood scoring: likelihood scoring does not show the options, so their "
              "order cannot change the answer; circular evaluation needs generated answers");
    if ((o->circular || o->likelihood) && b->task != TASK_MC)
        fatal("%s: circular evaluation and likelihood scoring apply to multiple-choice items; this file is %s", b->path,
              eval_task_name(b->task));
    const Vlm *m = gm->m;
    int max_pos = m->llm.cfg.max_pos;
    for (int i = 0; i < b->n; i++) r->n_req += b->task == TASK_MC && o->circular ? b->items[i].n_options : 1;
    int n = r->n_req;
    r->req = xcalloc((size_t)n + 1, sizeof(BenchRequest));
    r->ids = xcalloc((size_t)n + 1, sizeof(int *));
    r->n_ids = xcalloc((size_t)n + 1, sizeof(int));
    r->tile_start = xcalloc((size_t)n + 1, sizeof(int *));
    r->n_tiles = xcalloc((size_t)n + 1, sizeof(int));
    r->opt_ids = xcalloc((size_t)n + 1, sizeof(int **));
    r->n_opt_ids = xcalloc((size_t)n + 1, sizeof(int *));
    int longest = 1, q_i = 0;
    for (int i = 0; i < b->n; i++) {
        const BenchItem *it = &b->items[i];
        int rots = b->task == TASK_MC && o->circular ? it->n_options : 1;
        for (int rot = 0; rot < rots; rot++, q_i++) {
            BenchRequest *q = &r->req[q_i];
            q->item = i;
            q->rotation = rot;
            q->chosen = -1;
            if (b->task == TASK_MC) mc_rotation(q->order, it->n_options, rot);
            q->prompt = request_prompt(r, it, q);
            if (it->skip) continue;
            // the image's slot as the model marks and tiles it (read here for its grid)
            r->n_ids[q_i] = gen_model_prompt_tiles(gm, q->prompt, it->image, &r->ids[q_i], NULL, &r->tile_start[q_i],
                                                   &r->n_tiles[q_i]);
            int need = r->n_ids[q_i], ni = r->n_tiles[q_i] * m->n_img_tokens;
            if (need >= max_pos)
                fatal("%s:%lld: item %d (id \"%s\"): the prompt takes %d positions (%d tokens%s), the model's context "
                      "holds %d (max_position_embeddings)", b->path, (long long)it->line, i + 1, it->id, need,
                      need - ni, it->image ? " + the image" : "", max_pos);
            if (b->task == TASK_MC && o->likelihood) {
                r->opt_ids[q_i] = xcalloc((size_t)it->n_options, sizeof(int *));
                r->n_opt_ids[q_i] = xcalloc((size_t)it->n_options, sizeof(int));
                int most = 0;
                for (int j = 0; j < it->n_options; j++) {
                    int no = tokenizer_encode(gm->tok, it->options[j], strlen(it->options[j]), 0, &r->opt_ids[q_i][j]);
                    if (no == 0)
                        fatal("%s:%lld: item %d (id \"%s\"): option %c encodes to no token", b->path, (long long)it->line,
                              i + 1, it->id, 'A' + j);
                    r->n_opt_ids[q_i][j] = no;
                    if (no > most) most = no;
                }
                need += most;
                if (need > max_pos)
                    fatal("%s:%lld: item %d (id \"%s\"): prompt and longest option take %d positions, the model's "
                          "context holds %d", b->path, (long long)it->line, i + 1, it->id, need, max_pos);
            } else {
                need += o->max_new;
            }
            if (need > longest) longest = need;
        }
    }
    r->max_len = longest < max_pos ? longest : max_pos;
    // batched decoding for generated answers; likelihood scoring runs one question at a time
    r->use_batch = o->batch > 1 && !(b->task == TASK_MC && o->likelihood);
    if (r->use_batch) gen_batch_init(&r->gb, gm->m, o->batch, r->max_len, 0);
    else gen_init(&r->g, gm->m, r->max_len, 0);
    speed_init(&r->sp);
}

void bench_run_free(BenchRun *r) {
    for (int i = 0; i < r->n_req; i++) {
        free(r->req[i].prompt);
        free(r->req[i].prediction);
        free(r->ids[i]);
        free(r->tile_start[i]);
        if (r->opt_ids[i]) {
            for (int j = 0; j < r->b->items[r->req[i].item].n_options; j++) free(r->opt_ids[i][j]);
            free(r->opt_ids[i]);
            free(r->n_opt_ids[i]);
        }
    }
    free(r->req);
    free(r->ids);
    free(r->n_ids);
    free(r->tile_start);
    free(r->n_tiles);
    free(r->opt_ids);
    free(r->n_opt_ids);
    if (r->use_batch) gen_batch_free(&r->gb);
    else gen_free(&r->g);
    speed_free(&r->sp);
    memset(r, 0, sizeof *r);
}

// fills the request's scores from its prediction; returns what the running score adds
static double score_request(BenchRequest *q, const BenchItem *it, EvalTask task) {
    if (task == TASK_MC) {
        q->correct = q->chosen >= 0 && q->order[q->chosen] == it->answer;
        return q->correct;
    }
    if (task == TASK_VQA) {
        const char *const *refs = (const char *const *)it->refs;
        q->vqa = vqa_accuracy(q->prediction, refs, it->n_refs);
        q->anls = anls(q->prediction, refs, it->n_refs, 0.5);
        q->em = exact_match(q->prediction, refs, it->n_refs);
        return q->vqa;
    }
    return 0;  // captions are scored as a corpus at the end
}

static void progress(int done, int total, double t0, const char *score_name, double score, int final) {
    static double last;
    double now = time_now(), el = now - t0;
    int tty = isatty(2);
    if (!final && now - last < (tty ? 0.2 : 10.0)) return;
    last = now;
    double eta = done > 0 ? el / done * (total - done) : 0;
    fprintf(stderr, "%s[%d/%d] %5.1f%% %.1f s elapsed, ETA %.0f s, %s so far %.4f%s", tty ? "\r" : "", done, total,
            total ? 100.0 * done / total : 100.0, el, eta, score_name, score, tty && !final ? "" : "\n");
    fflush(stderr);
}

int bench_option_logprobs(Generator *g, const GenPrompt *p, const int *const *opt, const int *n_opt, int n_options,
                          float *all, float *base, double *logp, double *ttft) {
    int V = g->m->llm.cfg.vocab;
    double t0 = time_now();
    const float *lg = gen_prefill_prompt(g, p, NULL);
    memcpy(base, lg, (size_t)V * sizeof(float));
    int P = g->len;
    if (ttft) *ttft = time_now() - t0;  // the prompt's logits: what a first token would need
    for (int j = 0; j < n_options; j++) {
        // the first token's from the prompt's logits; the others' from the option's own positions
        double lp = log_softmax_at(base, V, opt[j][0]);
        if (n_opt[j] > 1) {
            gen_truncate(g, P);
            gen_extend(g, opt[j], n_opt[j] - 1, all);
            for (int t = 1; t < n_opt[j]; t++) lp += log_softmax_at(all + (size_t)(t - 1) * V, V, opt[j][t]);
        }
        logp[j] = lp;
    }
    return P;
}

// every option's log-likelihood (bench_option_logprobs); the likeliest is the answer
static void likelihood_request(BenchRun *r, int qi, const GenPrompt *p, float *all, float *base) {
    Generator *g = &r->g;
    BenchRequest *q = &r->req[qi];
    const BenchItem *it = &r->b->items[q->item];
    double t0 = time_now(), ttft;
    int P = bench_option_logprobs(g, p, (const int *const *)r->opt_ids[qi], r->n_opt_ids[qi], it->n_options, all, base,
                                  q->logp, &ttft);
    int64_t extra = 0;
    int best = -1;
    for (int j = 0; j < it->n_options; j++) {
        extra += r->n_opt_ids[qi][j] - 1;
        if (best < 0 || q->logp[j] > q->logp[best]) best = j;  // ties: the first option
    }
    r->gm->m->k->synchronize();
    speed_add(&r->sp, P + extra, time_now() - t0, g->t_image, ttft, 0, 0,
              it->image != NULL);
    q->chosen = best;
    q->prediction = xstrdup(it->options[best]);
}

void bench_run_go(BenchRun *r, int show) {
    const BenchSet *b = r->b;
    GenModel *gm = r->gm;
    Vlm *m = gm->m;
    const BenchOptions *o = &r->o;
    int V = m->llm.cfg.vocab, n_req = r->n_req;
    vlm_set_training(m, 0, 0);  // no LoRA dropout
    speed_free(&r->sp);
    speed_init(&r->sp);
    for (int i = 0; i < n_req; i++) {
        BenchRequest *q = &r->req[i];
        free(q->prediction);
        q->prediction = NULL;
        q->chosen = -1;
        q->correct = 0;
        q->vqa = q->anls = q->em = q->cider = q->rouge = 0;
    }
    int nb = r->use_batch ? o->batch : 1;
    int *bm = xcalloc((size_t)nb, sizeof(int)), *b_nout = xcalloc((size_t)nb, sizeof(int));
    int **b_out = xcalloc((size_t)nb, sizeof(int *));
    float **b_px = xcalloc((size_t)nb, sizeof(float *));
    GenPrompt *bp = xcalloc((size_t)nb, sizeof(GenPrompt));
    GenStats *b_st = xcalloc((size_t)nb, sizeof(GenStats));
    for (int j = 0; j < nb; j++) b_out[j] = xmalloc((size_t)o->max_new * sizeof(int));
    int max_opt = 1;
    for (int i = 0; i < n_req; i++)
        for (int j = 0; r->n_opt_ids[i] && j < b->items[r->req[i].item].n_options; j++)
            if (r->n_opt_ids[i][j] > max_opt) max_opt = r->n_opt_ids[i][j];
    float *all = NULL, *base = NULL;
    if (o->likelihood) {
        all = xmalloc((size_t)max_opt * V * sizeof(float));
        base = xmalloc((size_t)V * sizeof(float));
    }
    GenOptions go = {.max_new_tokens = o->max_new, .stop_ids = gm->stop_ids, .n_stop = gm->n_stop};
    double t_run = time_now(), running = 0;
    int scored = 0, last_item_pixels = -1;
    const char *score_name = b->task == TASK_MC ? "accuracy" : b->task == TASK_VQA ? "VQA accuracy" : "captions";
    for (int qi = 0; qi < n_req;) {
        // the next block: up to nb requests that are not skipped (skipped ones pass by)
        int nm = 0, end = qi;
        while (end < n_req && nm < nb) {
            const BenchItem *it = &b->items[r->req[end].item];
            if (!it->skip) {
                bm[nm] = end;
                // circular requests of one item follow each other: its tiles cut once at batch 1
                if (!(nb == 1 && last_item_pixels == r->req[end].item && b_px[0])) {
                    free(b_px[nm]);
                    int nt = 0;
                    b_px[nm] = it->image ? gen_model_image_tiles(gm, it->image, &nt) : NULL;
                    CHECK(nt == r->n_tiles[end], "%s: %d tiles, %d when tokenised", it->image, nt, r->n_tiles[end]);
                }
                last_item_pixels = r->req[end].item;
                bp[nm] = (GenPrompt){.ids = r->ids[end], .n = r->n_ids[end], .pixels = b_px[nm], .n_tiles = r->n_tiles[end],
                                     .tile_start = r->tile_start[end]};
                nm++;
            }
            end++;
        }
        if (nm > 0 && o->likelihood) {
            likelihood_request(r, bm[0], &bp[0], all, base);
        } else if (nm > 0 && !r->use_batch) {
            BenchRequest *q = &r->req[bm[0]];
            GenStats st;
            int n = gen_generate_prompt(&r->g, &bp[0], &go, b_out[0], &st);
            speed_add(&r->sp, st.n_prompt, st.t_prefill, st.t_image, st.t_prefill, st.n_decode, st.t_decode, b_px[0] != NULL);
            q->prediction = tokenizer_decode(gm->tok, b_out[0], n, 1, NULL);
        } else if (nm > 0) {
            gen_batch_generate(&r->gb, nm, bp, &go, b_out, b_nout, b_st);
            double before = 0, t_dec = 0;  // prefills run one after another, then the decode steps
            for (int j = 0; j < nm; j++) {
                before += b_st[j].t_prefill;
                if (b_st[j].t_decode > t_dec) t_dec = b_st[j].t_decode;
                speed_add(&r->sp, b_st[j].n_prompt, b_st[j].t_prefill, b_st[j].t_image, before, b_st[j].n_decode, 0,
                          b_px[j] != NULL);
                r->req[bm[j]].prediction = tokenizer_decode(gm->tok, b_out[j], b_nout[j], 1, NULL);
            }
            r->sp.t_decode += t_dec;  // the block's decode steps, shared by its conversations
        }
        for (int j = 0; j < nm; j++) {
            BenchRequest *q = &r->req[bm[j]];
            const BenchItem *it = &b->items[q->item];
            if (b->task == TASK_MC && !o->likelihood) q->chosen = mc_parse_answer(q->prediction, it->options, q->order, it->n_options);
            running += score_request(q, it, b->task);
            scored++;
        }
        qi = end;
        if (show)
            progress(qi, n_req, t_run, score_name, b->task == TASK_CAPTION ? scored : scored ? running / scored : 0.0,
                     qi == n_req);
    }
    r->t_total = time_now() - t_run;
    for (int j = 0; j < nb; j++) free(b_out[j]);
    free(b_out);
    free(bm);
    free(b_nout);
    for (int j = 0; j < nb; j++) free(b_px[j]);
    free(b_px);
    free(bp);
    free(b_st);
    free(all);
    free(base);
}

static void category_add(BenchScores *s, const char *name, double score) {
    if (!name) return;
    for (int i = 0; i < s->n_cats; i++)
        if (!strcmp(s->cats[i].name, name)) {
            s->cats[i].n++;
            s->cats[i].sum += score;
            return;
        }
    s->cats = xrealloc(s->cats, (size_t)(s->n_cats + 1) * sizeof(BenchCategory));
    s->cats[s->n_cats++] = (BenchCategory){xstrdup(name), 1, score};
}

static void scores_mc(BenchRun *r, BenchScores *s) {
    const BenchSet *b = r->b;
    int *item_correct = xcalloc((size_t)b->n + 1, sizeof(int)), first_right = 0;
    for (int i = 0; i < b->n; i++) item_correct[i] = 1;
    for (int i = 0; i < r->n_req; i++) {
        const BenchRequest *q = &r->req[i];
        item_correct[q->item] &= q->correct;
        if (q->rotation == 0) first_right += q->correct;
        s->unparsed += !b->items[q->item].skip && q->chosen < 0;
    }
    double n_opt = 0;
    for (int i = 0; i < b->n; i++)
        if (!b->items[i].skip) {
            s->right += item_correct[i];
            category_add(s, b->items[i].category, item_correct[i]);
            n_opt += 1.0 / b->items[i].n_options;
        }
    int n = s->n_scored;
    s->accuracy = n ? (double)s->right / n : 0;
    s->accuracy_first = n ? (double)first_right / n : 0;
    s->chance = n ? n_opt / n : 0;
    free(item_correct);
}

static void scores_caption(BenchRun *r, BenchScores *s) {
    const BenchSet *b = r->b;
    // tokenised hypotheses and references of the scored requests
    char **hyp = xcalloc((size_t)r->n_req + 1, sizeof(char *));
    char ***refs = xcalloc((size_t)r->n_req + 1, sizeof(char **));
    int *n_refs = xcalloc((size_t)r->n_req + 1, sizeof(int)), *which = xcalloc((size_t)r->n_req + 1, sizeof(int)), n = 0;
    for (int i = 0; i < r->n_req; i++) {
        const BenchItem *it = &b->items[r->req[i].item];
        if (it->skip) continue;
        hyp[n] = text_tokenize(r->req[i].prediction, NULL);
        refs[n] = xcalloc((size_t)it->n_refs, sizeof(char *));
        for (int j = 0; j < it->n_refs; j++) refs[n][j] = text_tokenize(it->refs[j], NULL);
        n_refs[n] = it->n_refs;
        which[n++] = i;
    }
    CaptionSet cs = {.n = n, .hyp = (const char *const *)hyp, .refs = (const char *const *const *)refs, .n_refs = n_refs};
    double *cider = xcalloc((size_t)n + 1, sizeof(double)), *rouge = xcalloc((size_t)n + 1, sizeof(double));
    if (n > 0) {
        caption_bleu(&cs, s->bleu);
        s->cider = caption_cider_d(&cs, cider);
        s->rouge = caption_rouge_l(&cs, rouge);
    }
    for (int i = 0; i < n; i++) {
        r->req[which[i]].cider = cider[i];
        r->req[which[i]].rouge = rouge[i];
        for (int j = 0; j < n_refs[i]; j++) free(refs[i][j]);
        free(refs[i]);
        free(hyp[i]);
    }
    free(hyp);
    free(refs);
    free(n_refs);
    free(which);
    free(cider);
    free(rouge);
}

void bench_run_scores(BenchRun *r, BenchScores *s) {
    memset(s, 0, sizeof *s);
    const BenchSet *b = r->b;
    s->n_scored = b->n - b->n_skipped;
    if (b->task == TASK_MC) {
        scores_mc(r, s);
    } else if (b->task == TASK_VQA) {
        for (int i = 0; i < r->n_req; i++)
            if (!b->items[r->req[i].item].skip) {
                s->vqa += r->req[i].vqa;
                s->anls += r->req[i].anls;
                s->em += r->req[i].em;
                category_add(s, b->items[r->req[i].item].category, r->req[i].vqa);
            }
        double d = s->n_scored ? s->n_scored : 1;
        s->vqa /= d;
        s->anls /= d;
        s->em /= d;
    } else {
        scores_caption(r, s);
    }
}

void bench_scores_free(BenchScores *s) {
    for (int i = 0; i < s->n_cats; i++) free(s->cats[i].name);
    free(s->cats);
    memset(s, 0, sizeof *s);
}

double bench_scores_main(const BenchScores *s, EvalTask task, const char **name) {
    if (task == TASK_MC) {
        *name = "accuracy";
        return s->accuracy;
    }
    if (task == TASK_VQA) {
        *name = "vqa_accuracy";
        return s->vqa;
    }
    *name = "cider_d";
    return s->cider;
}
