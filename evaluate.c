// evaluate.c: ./evaluate MODEL_DIR DATA [options] (./eval of the design: a program cannot share
// the name of the eval/ folder at the root): scores a trained model on a benchmark file
// (multiple choice, VQA or captioning; eval/bench_file.h) and reports the scores and the speed.
// Progress goes to stderr, the final table to stdout; --out DIR writes predictions.jsonl and
// summary.json.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/cli.h"
#include "common/util.h"
#include "eval/bench_file.h"
#include "eval/bench_run.h"
#include "model/model_dir.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ./evaluate MODEL_DIR DATA [options]\n"
            "  MODEL_DIR               an ./export directory or a ./train run (or step) directory, as for ./generate\n"
            "  DATA                    benchmark items, JSON list or JSONL (fields: README, section ./evaluate)\n"
            "  --task mc|vqa|caption   default: from the first item's fields\n"
            "  --image-folder DIR      where the items' images are (default: DATA's folder)\n"
            "  --out DIR               writes DIR/predictions.jsonl and DIR/summary.json\n"
            "  --mc-score generate|likelihood\n"
            "                          generate (default): the letter parsed from a greedy answer to LLaVA's\n"
            "                          MMBench prompt; likelihood: the option whose text has the highest\n"
            "                          log-likelihood as the answer to the question\n"
            "  --circular              MMBench's circular evaluation (every rotation of the options must be right)\n"
            "  --vqa-prompt TEXT       line put after a VQA question (default \"" BENCH_VQA_PROMPT "\"; \"\" for none)\n"
            "  --caption-prompt TEXT   the prompt of caption items without a question (default \"" BENCH_CAPTION_PROMPT "\")\n"
            "  --system TEXT           replaces the model's system prompt\n"
            "  --max-new-tokens N      default 64\n"
            "  --limit N               the first N items only\n"
            "  --batch-size N          conversations decoded together (default 1; the answers are the same)\n"
            "  --device cpu|cuda|auto  default auto\n");
}



typedef struct {
    const char *dir, *data, *image_folder, *out, *device, *system, *vqa_prompt, *caption_prompt;
    EvalTask task;
    int likelihood, circular, max_new, limit, batch;
} Args;

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) fatal("%s: cannot write", path);
    if (fputs(text, f) < 0 || fclose(f) != 0) fatal("%s: write failed", path);
}

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    Args a = {.device = "auto", .vqa_prompt = BENCH_VQA_PROMPT, .caption_prompt = BENCH_CAPTION_PROMPT, .max_new = 64, .batch = 1};
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(s, "--task")) a.task = eval_task_parse(cli_value(argc, argv, &i, "./evaluate"));
        else if (!strcmp(s, "--image-folder")) a.image_folder = cli_value(argc, argv, &i, "./evaluate");
        else if (!strcmp(s, "--out")) a.out = cli_value(argc, argv, &i, "./evaluate");
        else if (!strcmp(s, "--device")) a.device = cli_value(argc, argv, &i, "./evaluate");
        else if (!strcmp(s, "--system")) a.system = cli_value(argc, argv, &i, "./evaluate");
        else if (!strcmp(s, "--vqa-prompt")) a.vqa_prompt = cli_value(argc, argv, &i, "./evaluate");
        else if (!strcmp(s, "--caption-prompt")) a.caption_prompt = cli_value(argc, argv, &i, "./evaluate");
        else if (!strcmp(s, "--circular")) a.circular = 1;
        else if (!strcmp(s, "--mc-score")) {
            const char *v = cli_value(argc, argv, &i, "./evaluate");
            if (!strcmp(v, "likelihood")) a.likelihood = 1;
            else if (strcmp(v, "generate")) fatal("--mc-score %s: want generate or likelihood", v);
        } else if (!strcmp(s, "--max-new-tokens")) a.max_new = (int)cli_int(s, cli_value(argc, argv, &i, "./evaluate"), 1, 1 << 20);
        else if (!strcmp(s, "--limit")) a.limit = (int)cli_int(s, cli_value(argc, argv, &i, "./evaluate"), 1, 1 << 30);
        else if (!strcmp(s, "--batch-size")) a.batch = (int)cli_int(s, cli_value(argc, argv, &i, "./evaluate"), 1, 4096);
        else if (s[0] == '-' && s[1]) fatal("unknown option %s (see ./evaluate --help)", s);
        else if (!a.dir) a.dir = s;
        else if (!a.data) a.data = s;
        else fatal("unexpected argument \"%s\": MODEL_DIR and DATA only (see ./evaluate --help)", s);
    }
    if (!a.dir || !a.data) {
        usage(stderr);
        return 2;
    }
    if (a.circular && a.likelihood)
        fatal("--circular with --mc-score likelihood: likelihood scoring does not show the options, so their "
              "order cannot change the answer; circular evaluation needs --mc-score generate");

    BenchSet b;
    bench_load(&b, a.data, a.image_folder, a.task);
    if (a.limit) bench_truncate(&b, a.limit);
    if ((a.circular || a.likelihood) && b.task != TASK_MC)
        fatal("%s: --circular and --mc-score apply to multiple-choice items; this file is %s", a.data, eval_task_name(b.task));

    const Kernels *k = kernels_choose(a.device, "--device");

    double t_load = time_now();
    GenModel gm;
    gen_model_load(&gm, k, a.dir, a.system);
    BenchOptions bo = {.likelihood = a.likelihood, .circular = a.circular, .max_new = a.max_new, .batch = a.batch,
                       .vqa_prompt = a.vqa_prompt, .caption_prompt = a.caption_prompt};
    BenchRun br;
    bench_run_init(&br, &gm, &b, &bo);
    fprintf(stderr, "eval: loaded %s (%s) on %s in %.2f s; %s: %d %s items (%d skipped), %d requests, %s\n", a.dir,
            gm.spec.is_export ? "export" : gm.spec.weights, k->name, time_now() - t_load, a.data, b.n,
            eval_task_name(b.task), b.n_skipped, br.n_req,
            b.task != TASK_MC ? "greedy" : a.likelihood ? "likelihood scoring" : a.circular ? "generate, circular" : "generate");
    bench_run_go(&br, 1);
    BenchScores sc;
    bench_run_scores(&br, &sc);
    const EvalSpeed sp = br.sp;
    double t_total = br.t_total;
    int r;

    // ---- scores
    cJSON *sum = cJSON_CreateObject(), *scores = cJSON_AddObjectToObject(sum, "scores");
    cJSON_AddStringToObject(sum, "model", a.dir);
    cJSON_AddStringToObject(sum, "data", a.data);
    cJSON_AddStringToObject(sum, "task", eval_task_name(b.task));
    if (b.task == TASK_MC) cJSON_AddStringToObject(sum, "mc_score", a.likelihood ? "likelihood" : "generate");
    cJSON_AddBoolToObject(sum, "circular", a.circular);
    cJSON_AddNumberToObject(sum, "items", b.n);
    cJSON_AddNumberToObject(sum, "skipped", b.n_skipped);
    cJSON_AddNumberToObject(sum, "scored", b.n - b.n_skipped);
    int n_scored = sc.n_scored;
    printf("\neval: %s on %s: %s, %d items scored, %d skipped (image not found)\n", a.dir, a.data, eval_task_name(b.task),
           n_scored, b.n_skipped);
    printf("  %-36s %10s\n", "score", "value");
    if (b.task == TASK_MC) {
        printf("  %-36s %10.4f  (%d/%d)\n", a.circular ? "accuracy (circular)" : "accuracy", sc.accuracy, sc.right, n_scored);
        cJSON_AddNumberToObject(scores, "accuracy", sc.accuracy);
        if (a.circular) {
            printf("  %-36s %10.4f\n", "accuracy (first rotation only)", sc.accuracy_first);
            cJSON_AddNumberToObject(scores, "accuracy_first_rotation", sc.accuracy_first);
        }
        if (!a.likelihood) {
            printf("  %-36s %10d\n", "answers naming no option", sc.unparsed);
            cJSON_AddNumberToObject(scores, "unparsed", sc.unparsed);
        }
        printf("  %-36s %10.4f\n", "chance", sc.chance);
        cJSON_AddNumberToObject(scores, "chance", sc.chance);
    } else if (b.task == TASK_VQA) {
        printf("  %-36s %10.4f\n  %-36s %10.4f\n  %-36s %10.4f\n", "VQA accuracy", sc.vqa, "ANLS", sc.anls, "exact match", sc.em);
        cJSON_AddNumberToObject(scores, "vqa_accuracy", sc.vqa);
        cJSON_AddNumberToObject(scores, "anls", sc.anls);
        cJSON_AddNumberToObject(scores, "exact_match", sc.em);
    } else {
        for (int j = 0; j < 4; j++) {
            char name[16];
            snprintf(name, sizeof name, "BLEU-%d", j + 1);
            printf("  %-36s %10.4f\n", name, sc.bleu[j]);
            snprintf(name, sizeof name, "bleu_%d", j + 1);
            cJSON_AddNumberToObject(scores, name, sc.bleu[j]);
        }
        printf("  %-36s %10.4f\n  %-36s %10.4f\n", "CIDEr-D", sc.cider, "ROUGE-L", sc.rouge);
        cJSON_AddNumberToObject(scores, "cider_d", sc.cider);
        cJSON_AddNumberToObject(scores, "rouge_l", sc.rouge);
    }
    if (sc.n_cats) {
        cJSON *cj = cJSON_AddObjectToObject(scores, "per_category");
        for (int i = 0; i < sc.n_cats; i++) {
            char name[80];
            snprintf(name, sizeof name, "  %.60s (%d)", sc.cats[i].name, sc.cats[i].n);
            printf("  %-36s %10.4f\n", name, sc.cats[i].sum / sc.cats[i].n);
            cJSON_AddNumberToObject(cj, sc.cats[i].name, sc.cats[i].sum / sc.cats[i].n);
        }
    }

    // ---- speed
    double be, rss;
    speed_peak_memory(k, &be, &rss);
    double p50 = speed_ttft_quantile(&sp, 0.5), p95 = speed_ttft_quantile(&sp, 0.95);
    double pf = sp.t_prefill > 0 ? sp.prefill_tokens / sp.t_prefill : 0, dc = sp.t_decode > 0 ? sp.decode_tokens / sp.t_decode : 0;
    double ips = t_total > 0 ? sp.images / t_total : 0;
    char b1[32], b2[32];
    printf("  %-36s %10s\n", "speed", "value");
    printf("  %-36s %10.1f  (%lld positions in %.2f s, image tokens included)\n", "prefill tokens/s", pf,
           (long long)sp.prefill_tokens, sp.t_prefill);
    printf("  %-36s %10.1f  (%lld tokens in %.2f s)\n", "decode tokens/s", dc, (long long)sp.decode_tokens, sp.t_decode);
    printf("  %-36s %10.2f  (%lld images in %.2f s)\n", "images/s", ips, (long long)sp.images, t_total);
    printf("  %-36s %10.2f  p95 %.2f ms\n", "time to first token p50 (ms)", p50 * 1e3, p95 * 1e3);
    printf("  %-36s %10s  (process RSS %s)\n", "peak memory (backend)", fmt_bytes(be, b1, sizeof b1), fmt_bytes(rss, b2, sizeof b2));
    printf("  %-36s %10.2f\n", "wall time (s)", t_total);
    cJSON *spj = cJSON_AddObjectToObject(sum, "speed");
    cJSON_AddNumberToObject(spj, "prefill_tokens", (double)sp.prefill_tokens);
    cJSON_AddNumberToObject(spj, "prefill_tokens_per_s", pf);
    cJSON_AddNumberToObject(spj, "decode_tokens", (double)sp.decode_tokens);
    cJSON_AddNumberToObject(spj, "decode_tokens_per_s", dc);
    cJSON_AddNumberToObject(spj, "images_per_s", ips);
    cJSON_AddNumberToObject(spj, "ttft_p50_s", p50);
    cJSON_AddNumberToObject(spj, "ttft_p95_s", p95);
    cJSON_AddNumberToObject(spj, "peak_backend_bytes", be);
    cJSON_AddNumberToObject(spj, "peak_rss_bytes", rss);
    cJSON_AddNumberToObject(spj, "wall_s", t_total);
    cJSON_AddStringToObject(spj, "device", k->name);
    cJSON_AddNumberToObject(spj, "batch_size", a.batch);

    // ---- outputs
    if (a.out) {
        make_dirs(a.out);
        char path[1200];
        path_join(path, sizeof path, a.out, "predictions.jsonl");
        FILE *f = fopen(path, "w");
        if (!f) fatal("%s: cannot write", path);
        for (r = 0; r < br.n_req; r++) {
            const BenchRequest *q = &br.req[r];
            const BenchItem *it = &b.items[q->item];
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "id", it->id);
            cJSON_AddStringToObject(o, "prompt", q->prompt);
            if (it->skip) {
                cJSON_AddStringToObject(o, "skipped", it->skip);
            } else {
                cJSON_AddStringToObject(o, "prediction", q->prediction);
                if (b.task == TASK_MC) {
                    if (a.circular) cJSON_AddNumberToObject(o, "rotation", q->rotation);
                    char letter[2] = {q->chosen >= 0 ? (char)('A' + q->chosen) : 0, 0};
                    char ans[2] = {0, 0};
                    for (int i = 0; i < it->n_options; i++)
                        if (q->order[i] == it->answer) ans[0] = (char)('A' + i);
                    if (q->chosen >= 0) cJSON_AddStringToObject(o, "chosen", letter);
                    else cJSON_AddNullToObject(o, "chosen");
                    cJSON_AddStringToObject(o, "answer", ans);
                    cJSON_AddBoolToObject(o, "correct", q->correct);
                    if (a.likelihood) cJSON_AddItemToObject(o, "logprobs", cJSON_CreateDoubleArray(q->logp, it->n_options));
                } else if (b.task == TASK_VQA) {
                    cJSON *qs = cJSON_AddObjectToObject(o, "score");
                    cJSON_AddNumberToObject(qs, "vqa_accuracy", q->vqa);
                    cJSON_AddNumberToObject(qs, "anls", q->anls);
                    cJSON_AddNumberToObject(qs, "exact_match", q->em);
                } else {
                    cJSON *qs = cJSON_AddObjectToObject(o, "score");
                    cJSON_AddNumberToObject(qs, "cider_d", q->cider);
                    cJSON_AddNumberToObject(qs, "rouge_l", q->rouge);
                }
                if (it->category) cJSON_AddStringToObject(o, "category", it->category);
            }
            char *line = cJSON_PrintUnformatted(o);
            fprintf(f, "%s\n", line);
            free(line);
            cJSON_Delete(o);
        }
        if (fclose(f) != 0) fatal("%s: write failed", path);
        path_join(path, sizeof path, a.out, "summary.json");
        char *text = cJSON_Print(sum);
        size_t tl = strlen(text);
        text = xrealloc(text, tl + 2);
        text[tl] = '\n';
        text[tl + 1] = 0;
        write_text(path, text);
        free(text);
        printf("  wrote %s/predictions.jsonl and %s/summary.json\n", a.out, a.out);
    }

    cJSON_Delete(sum);
    bench_scores_free(&sc);
    bench_run_free(&br);
    gen_model_free(&gm);
    bench_free(&b);
    return 0;
}
