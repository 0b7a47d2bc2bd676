// run_log.c: what a run reports (see run.h), on rank 0 only: the progress line, metrics.jsonl
// (deterministic values only, so an interrupted-and-resumed run's file equals an uninterrupted
// one's byte for byte) and timing.jsonl (speed).
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fs_safe.h"
#include "common/util.h"
#include "trainer/run.h"

static void fmt_duration(double s, char *buf, size_t cap) {
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%ldh%02ldm%02lds", t / 3600, t / 60 % 60, t % 60);
    else if (t >= 60) snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, cap, "%lds", t);
}

// a JSON number, or null where the value is not finite (JSON has no NaN)
static const char *jnum(double v, char *buf) {
    if (!isfinite(v)) return "null";
    snprintf(buf, 32, "%.9g", v);
    return buf;
}

// keep_bytes < 0: a fresh file; otherwise the file cut to keep_bytes (a resumed run logs again
// what was logged after its checkpoint) or, with INT64_MAX, kept whole. A fresh or cut file is
// written anew and renamed over the old one (common/fs_safe.h), so a symbolic link planted there
// is replaced as an entry and what it points to is never truncated; appending refuses links.
FILE *run_open_log(const char *out_dir, const char *name, int64_t keep_bytes) {
    char path[CFG_PATH + 32];
    snprintf(path, sizeof path, "%s/%s", out_dir, name);
    struct stat sb;
    int present = lstat(path, &sb) == 0, regular = present && S_ISREG(sb.st_mode);
    if (keep_bytes != INT64_MAX || (present && !regular)) {
        char *keep = NULL;
        size_t n = 0;
        if (present && !regular)
            warn("%s is not a regular file (a symbolic link?): replaced by one; what it pointed to is left as it was%s",
                 path, keep_bytes > 0 ? ", and the records before the checkpoint are not carried over" : "");
        else if (keep_bytes > 0 && present) {
            keep = fs_read_nofollow(path, (size_t)keep_bytes, &n);
            if (!keep) fatal("%s: cannot read: %s", path, strerror(errno));
            if ((int64_t)n < keep_bytes)  // lost lines are not made up: keep what is there
                warn("%s: shorter (%zu bytes) than at the checkpoint (%lld): earlier records are missing", path, n,
                     (long long)keep_bytes);
        }
        if (fs_replace(path, keep ? keep : "", n) != 0) fatal("%s: cannot write: %s", path, strerror(errno));
        free(keep);
    }
    FILE *f = fs_open_append(path);
    if (!f) fatal("%s: cannot open: %s", path, strerror(errno));
    return f;
}

void run_log_step(Run *r, const StepResult *s) {
    const TrainState *st = &r->st;
    r->tokens_window += s->n_tok;
    int last = st->step == r->total;
    if (r->rank != 0 || (st->step % r->c->log_every != 0 && !last)) return;
    double now = time_now(), tps = r->tokens_window / (now - r->t_window + 1e-9);
    double rate = (st->step - r->first_step) / (now - r->t_loop + 1e-9);
    char el[32], eta[32];
    fmt_duration(now - r->t_start, el, sizeof el);
    fmt_duration((r->total - st->step) / (rate > 0 ? rate : 1e-9), eta, sizeof eta);
    printf("step %" PRId64 "/%" PRId64 " | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | %s elapsed | ETA %s\n", st->step,
           r->total, s->loss, r->c->lr * s->factor, s->norm, tps, el, eta);
    fflush(stdout);
    char b1[32], b2[32];
    fprintf(r->metrics, "{\"step\": %" PRId64 ", \"epoch\": %" PRId64 ", \"loss\": %s, \"lr\": %.9g, \"connector_lr\": %.9g, "
            "\"grad_norm\": %s, \"labelled\": %" PRId64 ", \"skipped_steps\": %" PRId64,
            st->step, s->epoch, jnum(s->loss, b1), r->c->lr * s->factor, r->conn_lr * s->factor, jnum(s->norm, b2), s->n_lab,
            st->skipped_steps);
    if (s->samples) {
        fprintf(r->metrics, ", \"samples\": [");
        for (int i = 0; i < s->n_samples; i++) fprintf(r->metrics, "%s%" PRId64, i ? ", " : "", s->samples[i]);
        fprintf(r->metrics, "]");
    }
    fprintf(r->metrics, "}\n");
    fprintf(r->timing, "{\"step\": %" PRId64 ", \"tokens_per_s\": %.1f, \"elapsed_s\": %.3f}\n", st->step, tps, now - r->t_start);
    fflush(r->metrics);
    fflush(r->timing);
    r->tokens_window = 0;
    r->t_window = now;
}

void run_log_eval(Run *r, int64_t step, double loss, int64_t tokens, const BenchScores *bs) {
    if (r->rank != 0) return;
    char nb[32];
    printf("step %" PRId64 "/%" PRId64, step, r->total);
    fprintf(r->metrics, "{\"step\": %" PRId64, step);
    if (r->val) {
        printf(" | validation loss %.4f over %" PRId64 " tokens", loss, tokens);
        fprintf(r->metrics, ", \"val_loss\": %s, \"val_tokens\": %" PRId64, jnum(loss, nb), tokens);
    }
    if (bs) {
        // the task's scores as ./evaluate's summary.json names them, prefixed eval_
        EvalTask t = run_bench_task(r);
        const char *names[8];
        double v[8];
        int n = 0;
        if (t == TASK_MC) names[n] = "accuracy", v[n++] = bs->accuracy;
        else if (t == TASK_VQA) {
            names[n] = "vqa_accuracy", v[n++] = bs->vqa;
            names[n] = "anls", v[n++] = bs->anls;
            names[n] = "exact_match", v[n++] = bs->em;
        } else {
            names[n] = "cider_d", v[n++] = bs->cider;
            names[n] = "bleu_4", v[n++] = bs->bleu[3];
            names[n] = "rouge_l", v[n++] = bs->rouge;
        }
        printf(" | eval %s", eval_task_name(t));
        for (int i = 0; i < n; i++) {
            printf(" %s %.4f", names[i], v[i]);
            fprintf(r->metrics, ", \"eval_%s\": %s", names[i], jnum(v[i], nb));
        }
        printf(" (%d items)", bs->n_scored);
        fprintf(r->metrics, ", \"eval_items\": %d", bs->n_scored);
    }
    printf("\n");
    fflush(stdout);
    fprintf(r->metrics, "}\n");
    fflush(r->metrics);
}

void run_log_done(Run *r) {
    if (r->rank != 0) return;
    char el[32];
    fmt_duration(time_now() - r->t_start, el, sizeof el);
    printf("done: %" PRId64 " steps in %s", r->total, el);
    if (!isnan(r->first_val)) printf(", validation loss %.4f -> %.4f", r->first_val, r->last_val);
    if (r->bench && !isnan(r->first_bench)) printf(", eval score %.4f -> %.4f", r->first_bench, r->last_bench);
    printf("; checkpoint %s/step_%08" PRId64 "\n", r->c->out_dir, r->st.step);
}
