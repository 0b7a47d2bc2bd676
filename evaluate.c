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
#include "eval/caption_metrics.h"
#include "eval/mc.h"
#include "eval/model_dir.h"
#include "eval/speed.h"
#include "eval/text.h"
#include "eval/vqa_metrics.h"
#include "model/gen_batch.h"
#include "model/generate.h"

#define VQA_PROMPT "Answer the question using a single word or phrase."
#define CAPTION_PROMPT "Provide a one-sentence caption for the provided image."

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
            "  --vqa-prompt TEXT       line put after a VQA question (default \"" VQA_PROMPT "\"; \"\" for none)\n"
            "  --caption-prompt TEXT   the prompt of caption items without a question (default \"" CAPTION_PROMPT "\")\n"
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

// one model request: an item asked once (rotation r of its options for mc)
typedef struct {
    int item, rotation;
    int order[26];        // mc: displayed order of the options
    char *prompt;
    char *prediction;     // generated text (likelihood: the chosen option's text)
    int chosen;           // mc: displayed index chosen, -1 none
    int correct;          // mc
    double vqa, anls, em; // vqa
    double logp[26];      // mc likelihood: log-likelihood of each displayed option
} Request;

static double log_softmax_at(const float *logits, int V, int id) {
    double mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - mx);
    return (double)logits[id] - mx - log(sum);
}

// fills the request's scores from its prediction; returns what the running score adds
static double score_request(Request *q, const BenchItem *it, EvalTask task) {
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

// mean of a score per category (items in it, sum of scores)
typedef struct {
    char *name;
    int n;
    double sum;
} Category;

static void category_add(Category **cats, int *n, const char *name, double score) {
    if (!name) return;
    for (int i = 0; i < *n; i++)
        if (!strcmp((*cats)[i].name, name)) {
            (*cats)[i].n++;
            (*cats)[i].sum += score;
            return;
        }
    *cats = xrealloc(*cats, (size_t)(*n + 1) * sizeof(Category));
    (*cats)[*n] = (Category){xstrdup(name), 1, score};
    (*n)++;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) fatal("%s: cannot write", path);
    if (fputs(text, f) < 0 || fclose(f) != 0) fatal("%s: write failed", path);
}

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    Args a = {.device = "auto", .vqa_prompt = VQA_PROMPT, .caption_prompt = CAPTION_PROMPT, .max_new = 64, .batch = 1};
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
    const Vlm *m = &gm.vlm;
    int V = m->llm.cfg.vocab;

    // the requests, their prompts and token ids; the longest sets the cache size
    int n_req = 0;
    for (int i = 0; i < b.n; i++) n_req += b.task == TASK_MC && a.circular ? b.items[i].n_options : 1;
    Request *req = xcalloc((size_t)n_req, sizeof(Request));
    int **ids = xcalloc((size_t)n_req, sizeof(int *)), *n_ids = xcalloc((size_t)n_req, sizeof(int));
    int *img_pos = xcalloc((size_t)n_req, sizeof(int));
    int ***opt_ids = xcalloc((size_t)n_req, sizeof(int **)), **n_opt_ids = xcalloc((size_t)n_req, sizeof(int *));
    int longest = 1, r = 0;
    for (int i = 0; i < b.n; i++) {
        const BenchItem *it = &b.items[i];
        int rots = b.task == TASK_MC && a.circular ? it->n_options : 1;
        for (int rot = 0; rot < rots; rot++, r++) {
            Request *q = &req[r];
            q->item = i;
            q->rotation = rot;
            q->chosen = -1;
            if (b.task == TASK_MC) {
                mc_rotation(q->order, it->n_options, rot);
                if (a.likelihood) {
                    size_t len = (it->hint ? strlen(it->hint) + 1 : 0) + strlen(it->question) + 1;
                    q->prompt = xmalloc(len);
                    snprintf(q->prompt, len, "%s%s%s", it->hint ? it->hint : "", it->hint ? "\n" : "", it->question);
                } else {
                    q->prompt = mc_prompt(it->hint, it->question, it->options, q->order, it->n_options, MC_INSTRUCTION);
                }
            } else if (b.task == TASK_VQA) {
                size_t len = strlen(it->question) + strlen(a.vqa_prompt) + 2;
                q->prompt = xmalloc(len);
                snprintf(q->prompt, len, "%s%s%s", it->question, a.vqa_prompt[0] ? "\n" : "", a.vqa_prompt);
            } else {
                q->prompt = xstrdup(it->question ? it->question : a.caption_prompt);
            }
            if (it->skip) continue;
            n_ids[r] = gen_model_prompt(&gm, q->prompt, it->image != NULL, &ids[r], &img_pos[r]);
            int need = n_ids[r] + (it->image ? m->n_img_tokens : 0);
            if (need >= m->llm.cfg.max_pos)
                fatal("%s:%lld: item %d (id \"%s\"): the prompt takes %d positions (%d tokens%s), the model's context "
                      "holds %d (max_position_embeddings)", a.data, (long long)it->line, i + 1, it->id, need, n_ids[r],
                      it->image ? " + the image" : "", m->llm.cfg.max_pos);
            if (b.task == TASK_MC && a.likelihood) {
                opt_ids[r] = xcalloc((size_t)it->n_options, sizeof(int *));
                n_opt_ids[r] = xcalloc((size_t)it->n_options, sizeof(int));
                int most = 0;
                for (int j = 0; j < it->n_options; j++) {
                    n_opt_ids[r][j] = tokenizer_encode(gm.tok, it->options[j], strlen(it->options[j]), 0, &opt_ids[r][j]);
                    if (n_opt_ids[r][j] == 0)
                        fatal("%s:%lld: item %d (id \"%s\"): option %c encodes to no token", a.data, (long long)it->line,
                              i + 1, it->id, 'A' + j);
                    if (n_opt_ids[r][j] > most) most = n_opt_ids[r][j];
                }
                need += most;
                if (need > m->llm.cfg.max_pos)
                    fatal("%s:%lld: item %d (id \"%s\"): prompt and longest option take %d positions, the model's "
                          "context holds %d", a.data, (long long)it->line, i + 1, it->id, need, m->llm.cfg.max_pos);
            } else {
                need += a.max_new;
            }
            if (need > longest) longest = need;
        }
    }
    int max_pos = m->llm.cfg.max_pos, max_len = longest < max_pos ? longest : max_pos;
    Generator g;  // one conversation at a time (with --batch-size > 1 the GenBatch has its own)
    memset(&g, 0, sizeof g);
    fprintf(stderr, "eval: loaded %s (%s) on %s in %.2f s; %s: %d %s items (%d skipped), %d requests, %s\n", a.dir,
            gm.spec.is_export ? "export" : gm.spec.weights, k->name, time_now() - t_load, a.data, b.n,
            eval_task_name(b.task), b.n_skipped, n_req,
            b.task != TASK_MC ? "greedy" : a.likelihood ? "likelihood scoring" : a.circular ? "generate, circular" : "generate");

    // ---- run
    EvalSpeed sp;
    speed_init(&sp);
    // --batch-size > 1 decodes the answers of a.batch conversations together (model/gen_batch.h:
    // the same tokens as one at a time); likelihood scoring runs one question at a time
    int use_batch = a.batch > 1 && !(b.task == TASK_MC && a.likelihood);
    int nb = use_batch ? a.batch : 1;
    GenBatch gb;
    memset(&gb, 0, sizeof gb);
    if (use_batch) gen_batch_init(&gb, (Vlm *)m, a.batch, max_len, 0);
    else gen_init(&g, (Vlm *)m, max_len, 0);
    int *bm = xcalloc((size_t)nb, sizeof(int)), *b_n = xcalloc((size_t)nb, sizeof(int)), *b_pos = xcalloc((size_t)nb, sizeof(int));
    int *b_nout = xcalloc((size_t)nb, sizeof(int)), **b_ids = xcalloc((size_t)nb, sizeof(int *)), **b_out = xcalloc((size_t)nb, sizeof(int *));
    float **b_px = xcalloc((size_t)nb, sizeof(float *));
    GenStats *b_st = xcalloc((size_t)nb, sizeof(GenStats));
    for (int j = 0; j < nb; j++) b_out[j] = xmalloc((size_t)a.max_new * sizeof(int));
    float *pixels = xmalloc((size_t)nb * 3 * gm.image_size * gm.image_size * sizeof(float));
    int *out = xmalloc((size_t)a.max_new * sizeof(int));
    int max_opt = 1;
    for (int i = 0; i < n_req; i++)
        for (int j = 0; n_opt_ids[i] && j < b.items[req[i].item].n_options; j++)
            if (n_opt_ids[i][j] > max_opt) max_opt = n_opt_ids[i][j];
    float *all = xmalloc((size_t)max_opt * V * sizeof(float)), *base = xmalloc((size_t)V * sizeof(float));
    double t_run = time_now(), running = 0;
    int done = 0, scored = 0, last_item_pixels = -1;
    const char *score_name = b.task == TASK_MC ? "accuracy" : b.task == TASK_VQA ? "VQA accuracy" : "captions";
    size_t px_size = (size_t)3 * gm.image_size * gm.image_size;
    for (r = 0; r < n_req;) {
        if (use_batch) {
            // the next batch: up to a.batch requests that are not skipped (skipped ones pass by)
            int nm = 0, r_end = r;
            while (r_end < n_req && nm < a.batch) {
                if (!b.items[req[r_end].item].skip) {
                    const BenchItem *it = &b.items[req[r_end].item];
                    bm[nm] = r_end;
                    b_ids[nm] = ids[r_end];
                    b_n[nm] = n_ids[r_end];
                    b_pos[nm] = img_pos[r_end];
                    b_px[nm] = NULL;
                    if (it->image) {
                        gen_model_image(&gm, it->image, pixels + (size_t)nm * px_size);
                        b_px[nm] = pixels + (size_t)nm * px_size;
                    }
                    nm++;
                }
                r_end++;
            }
            if (nm > 0) {
                GenOptions o = {.max_new_tokens = a.max_new, .stop_ids = gm.stop_ids, .n_stop = gm.n_stop};
                gen_batch_generate(&gb, nm, (const int *const *)b_ids, b_n, (const float *const *)b_px, b_pos, &o, b_out,
                                   b_nout, b_st);
                double before = 0, t_dec = 0;  // prefills run one after another, then the decode steps
                for (int j = 0; j < nm; j++) {
                    Request *q = &req[bm[j]];
                    const BenchItem *it = &b.items[q->item];
                    before += b_st[j].t_prefill;
                    if (b_st[j].t_decode > t_dec) t_dec = b_st[j].t_decode;
                    speed_add(&sp, b_st[j].n_prompt, b_st[j].t_prefill, b_st[j].t_image, before, b_st[j].n_decode, 0,
                              it->image != NULL);
                    q->prediction = tokenizer_decode(gm.tok, b_out[j], b_nout[j], 1, NULL);
                    if (b.task == TASK_MC) q->chosen = mc_parse_answer(q->prediction, it->options, q->order, it->n_options);
                    running += score_request(q, it, b.task);
                    scored++;
                }
                sp.t_decode += t_dec;  // the batch's decode steps, shared by its conversations
            }
            done = r_end;
            r = r_end;
            progress(done, n_req, t_run, score_name, b.task == TASK_CAPTION ? scored : scored ? running / scored : 0.0,
                     done == n_req);
            continue;
        }
        Request *q = &req[r];
        const BenchItem *it = &b.items[q->item];
        if (!it->skip) {
            if (it->image && last_item_pixels != q->item) {
                gen_model_image(&gm, it->image, pixels);
                last_item_pixels = q->item;
            }
            const float *px = it->image ? pixels : NULL;
            if (b.task == TASK_MC && a.likelihood) {
                double t0 = time_now();
                const float *lg = gen_prefill(&g, ids[r], n_ids[r], px, img_pos[r], NULL);
                memcpy(base, lg, (size_t)V * sizeof(float));
                int P = g.len;
                double ttft = time_now() - t0;  // the prompt's logits: what a first token would need
                int64_t extra = 0, best = -1;
                for (int j = 0; j < it->n_options; j++) {
                    const int *oi = opt_ids[r][j];
                    int no = n_opt_ids[r][j];
                    double lp = log_softmax_at(base, V, oi[0]);
                    if (no > 1) {
                        gen_truncate(&g, P);
                        gen_extend(&g, oi, no - 1, all);
                        for (int t = 1; t < no; t++) lp += log_softmax_at(all + (size_t)(t - 1) * V, V, oi[t]);
                        extra += no - 1;
                    }
                    q->logp[j] = lp;
                    if (best < 0 || lp > q->logp[best]) best = j;  // ties: the first option
                }
                k->synchronize();
                speed_add(&sp, P + extra, time_now() - t0, g.t_image, ttft, 0, 0, it->image != NULL);
                q->chosen = (int)best;
                q->prediction = xstrdup(it->options[best]);
            } else {
                GenOptions o = {.max_new_tokens = a.max_new, .stop_ids = gm.stop_ids, .n_stop = gm.n_stop};
                GenStats st;
                int n = gen_generate(&g, ids[r], n_ids[r], px, img_pos[r], &o, out, &st);
                speed_add(&sp, st.n_prompt, st.t_prefill, st.t_image, st.t_prefill, st.n_decode, st.t_decode, it->image != NULL);
                q->prediction = tokenizer_decode(gm.tok, out, n, 1, NULL);
                if (b.task == TASK_MC) q->chosen = mc_parse_answer(q->prediction, it->options, q->order, it->n_options);
            }
            running += score_request(q, it, b.task);
            scored++;
        }
        done++;
        r++;
        progress(done, n_req, t_run, score_name, b.task == TASK_CAPTION ? scored : scored ? running / scored : 0.0,
                 done == n_req);
    }
    double t_total = time_now() - t_run;

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
    int n_scored = b.n - b.n_skipped;
    printf("\neval: %s on %s: %s, %d items scored, %d skipped (image not found)\n", a.dir, a.data, eval_task_name(b.task),
           n_scored, b.n_skipped);
    printf("  %-36s %10s\n", "score", "value");
    Category *cats = NULL;
    int n_cats = 0;
    double *caption_cider = NULL, *caption_rouge = NULL;
    int *item_correct = xcalloc((size_t)b.n, sizeof(int));
    if (b.task == TASK_MC) {
        int right = 0, first_right = 0, unparsed = 0;
        for (int i = 0; i < b.n; i++) item_correct[i] = 1;
        for (r = 0; r < n_req; r++) {
            item_correct[req[r].item] &= req[r].correct;
            if (req[r].rotation == 0) first_right += req[r].correct;
            unparsed += !b.items[req[r].item].skip && req[r].chosen < 0;
        }
        for (int i = 0; i < b.n; i++)
            if (!b.items[i].skip) {
                right += item_correct[i];
                category_add(&cats, &n_cats, b.items[i].category, item_correct[i]);
            }
        double acc = n_scored ? (double)right / n_scored : 0;
        printf("  %-36s %10.4f  (%d/%d)\n", a.circular ? "accuracy (circular)" : "accuracy", acc, right, n_scored);
        cJSON_AddNumberToObject(scores, "accuracy", acc);
        if (a.circular) {
            double a0 = n_scored ? (double)first_right / n_scored : 0;
            printf("  %-36s %10.4f\n", "accuracy (first rotation only)", a0);
            cJSON_AddNumberToObject(scores, "accuracy_first_rotation", a0);
        }
        if (!a.likelihood) {
            printf("  %-36s %10d\n", "answers naming no option", unparsed);
            cJSON_AddNumberToObject(scores, "unparsed", unparsed);
        }
        double n_opt = 0;
        for (int i = 0; i < b.n; i++) n_opt += b.items[i].skip ? 0 : 1.0 / b.items[i].n_options;
        printf("  %-36s %10.4f\n", "chance", n_scored ? n_opt / n_scored : 0);
        cJSON_AddNumberToObject(scores, "chance", n_scored ? n_opt / n_scored : 0);
    } else if (b.task == TASK_VQA) {
        double v = 0, an = 0, em = 0;
        for (r = 0; r < n_req; r++)
            if (!b.items[req[r].item].skip) {
                v += req[r].vqa;
                an += req[r].anls;
                em += req[r].em;
                category_add(&cats, &n_cats, b.items[req[r].item].category, req[r].vqa);
            }
        double d = n_scored ? n_scored : 1;
        printf("  %-36s %10.4f\n  %-36s %10.4f\n  %-36s %10.4f\n", "VQA accuracy", v / d, "ANLS", an / d, "exact match", em / d);
        cJSON_AddNumberToObject(scores, "vqa_accuracy", v / d);
        cJSON_AddNumberToObject(scores, "anls", an / d);
        cJSON_AddNumberToObject(scores, "exact_match", em / d);
    } else {
        // tokenised hypotheses and references of the scored items
        char **hyp = xcalloc((size_t)b.n + 1, sizeof(char *));
        char ***refs = xcalloc((size_t)b.n + 1, sizeof(char **));
        int *n_refs = xcalloc((size_t)b.n + 1, sizeof(int)), n = 0;
        for (r = 0; r < n_req; r++) {
            const BenchItem *it = &b.items[req[r].item];
            if (it->skip) continue;
            hyp[n] = text_tokenize(req[r].prediction, NULL);
            refs[n] = xcalloc((size_t)it->n_refs, sizeof(char *));
            for (int j = 0; j < it->n_refs; j++) refs[n][j] = text_tokenize(it->refs[j], NULL);
            n_refs[n++] = it->n_refs;
        }
        CaptionSet cs = {.n = n, .hyp = (const char *const *)hyp, .refs = (const char *const *const *)refs, .n_refs = n_refs};
        double bleu[4] = {0};
        caption_cider = xcalloc((size_t)n + 1, sizeof(double));
        caption_rouge = xcalloc((size_t)n + 1, sizeof(double));
        double cider = 0, rouge = 0;
        if (n > 0) {
            caption_bleu(&cs, bleu);
            cider = caption_cider_d(&cs, caption_cider);
            rouge = caption_rouge_l(&cs, caption_rouge);
        }
        for (int j = 0; j < 4; j++) {
            char name[16];
            snprintf(name, sizeof name, "BLEU-%d", j + 1);
            printf("  %-36s %10.4f\n", name, bleu[j]);
            snprintf(name, sizeof name, "bleu_%d", j + 1);
            cJSON_AddNumberToObject(scores, name, bleu[j]);
        }
        printf("  %-36s %10.4f\n  %-36s %10.4f\n", "CIDEr-D", cider, "ROUGE-L", rouge);
        cJSON_AddNumberToObject(scores, "cider_d", cider);
        cJSON_AddNumberToObject(scores, "rouge_l", rouge);
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n_refs[i]; j++) free(refs[i][j]);
            free(refs[i]);
            free(hyp[i]);
        }
        free(hyp);
        free(refs);
        free(n_refs);
    }
    if (n_cats) {
        cJSON *cj = cJSON_AddObjectToObject(scores, "per_category");
        for (int i = 0; i < n_cats; i++) {
            char name[80];
            snprintf(name, sizeof name, "  %.60s (%d)", cats[i].name, cats[i].n);
            printf("  %-36s %10.4f\n", name, cats[i].sum / cats[i].n);
            cJSON_AddNumberToObject(cj, cats[i].name, cats[i].sum / cats[i].n);
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
        int ci = 0;
        for (r = 0; r < n_req; r++) {
            const Request *q = &req[r];
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
                    cJSON *sc = cJSON_AddObjectToObject(o, "score");
                    cJSON_AddNumberToObject(sc, "vqa_accuracy", q->vqa);
                    cJSON_AddNumberToObject(sc, "anls", q->anls);
                    cJSON_AddNumberToObject(sc, "exact_match", q->em);
                } else {
                    cJSON *sc = cJSON_AddObjectToObject(o, "score");
                    cJSON_AddNumberToObject(sc, "cider_d", caption_cider[ci]);
                    cJSON_AddNumberToObject(sc, "rouge_l", caption_rouge[ci]);
                    ci++;
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

    for (int i = 0; i < n_cats; i++) free(cats[i].name);
    free(cats);
    free(caption_cider);
    free(caption_rouge);
    free(item_correct);
    cJSON_Delete(sum);
    for (r = 0; r < n_req; r++) {
        free(req[r].prompt);
        free(req[r].prediction);
        free(ids[r]);
        if (opt_ids[r]) {
            for (int j = 0; j < b.items[req[r].item].n_options; j++) free(opt_ids[r][j]);
            free(opt_ids[r]);
            free(n_opt_ids[r]);
        }
    }
    free(req);
    free(ids);
    free(n_ids);
    free(img_pos);
    free(opt_ids);
    free(n_opt_ids);
    free(all);
    free(base);
    free(out);
    free(pixels);
    for (int j = 0; j < nb; j++) free(b_out[j]);
    free(b_out);
    free(bm);
    free(b_n);
    free(b_pos);
    free(b_nout);
    free(b_ids);
    free(b_px);
    free(b_st);
    if (use_batch) gen_batch_free(&gb);
    speed_free(&sp);
    gen_free(&g);
    gen_model_free(&gm);
    bench_free(&b);
    return 0;
}
