// generate.c: ./generate MODEL_DIR [--image PATH] --prompt TEXT [options]: answers one prompt with
// a trained model (an ./export directory or a ./train run directory, see model/model_dir.h). The
// answer is streamed to stdout; loading and speed lines go to stderr. With --batch FILE it answers
// every request of a JSONL file (eval/prompt_file.h), --batch-size at a time through batched
// generation (model/gen_batch.h: the same tokens as one at a time), one JSON line per request,
// in the file's order.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/cli.h"
#include "common/util.h"
#include "model/model_dir.h"
#include "eval/prompt_file.h"
#include "model/gen_batch.h"
#include "model/generate.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ./generate MODEL_DIR [--image PATH] --prompt TEXT [options]\n"
            "       ./generate MODEL_DIR --batch FILE [--batch-size N] [--image-folder DIR] [--out PATH] [options]\n"
            "  MODEL_DIR               an ./export directory (svlm.json) or a ./train run directory\n"
            "                          (its newest checkpoint) or one step_NNNNNNNN/ of it\n"
            "  --image PATH            PNG or JPEG; without it the prompt is text only\n"
            "  --prompt TEXT           the question (\"<image>\\n\" is put before it when there is an image)\n"
            "  --system TEXT           replaces the model's system prompt (\"\" for none)\n"
            "  --max-new-tokens N      default 256\n"
            "  --temperature T         default 0: greedy; > 0 samples from softmax(logits / T)\n"
            "  --top-p P               nucleus sampling with temperature > 0 (default 1: off)\n"
            "  --seed S                sampling seed (default 0)\n"
            "  --max-len N             KV cache positions (default: prompt + max-new-tokens, at most\n"
            "                          the LLM's max_position_embeddings)\n"
            "  --device cpu|cuda|auto  default auto: cuda when available\n"
            "  --batch FILE            JSONL, one request a line: {\"prompt\": TEXT, \"image\": PATH (optional),\n"
            "                          \"id\": any (optional)}; writes one line per request, in order:\n"
            "                          {\"id\": ..., \"prompt\": ..., \"answer\": ...}\n"
            "  --batch-size N          requests generated together with --batch (default 8; the answers\n"
            "                          are those of one at a time)\n"
            "  --image-folder DIR      relative image paths of --batch FILE are under DIR\n"
            "  --out PATH              --batch's answers to PATH instead of stdout\n");
}




// streams the answer: prints what the decoded text adds, holding back an incomplete UTF-8
// character (decoded as U+FFFD until its last byte arrives)
typedef struct {
    const Tokenizer *tok;
    size_t printed;
} Stream;

static void stream_flush(Stream *s, const int *toks, int n, int final) {
    size_t len;
    char *text = tokenizer_decode(s->tok, toks, n, 1, &len);
    size_t end = len;
    if (!final && end >= 3 && memcmp(text + end - 3, "\xEF\xBF\xBD", 3) == 0) end -= 3;
    if (end > s->printed) {
        fwrite(text + s->printed, 1, end - s->printed, stdout);
        fflush(stdout);
        s->printed = end;
    }
    free(text);
}

static void on_token(void *ctx, const int *toks, int n) { stream_flush(ctx, toks, n, 0); }

typedef struct {
    const char *file, *image_folder, *out;
    int batch, max_new, max_len;
    GenOptions o;  // sampling settings; stop ids filled in here
} BatchArgs;

// --batch FILE: every request, a.batch at a time, answers as JSON lines in the file's order
static void run_batch(const Kernels *k, const char *dir, const char *system, BatchArgs *a) {
    PromptFile pf;
    prompt_file_load(&pf, a->file, a->image_folder);
    double t0 = time_now();
    GenModel gm;
    gen_model_load(&gm, k, dir, system);
    Vlm *m = &gm.vlm;
    // every prompt tokenised first, its image slot expanded as the model marks and tiles it (the
    // image read for its grid): the cache slots are sized for the longest
    int n = pf.n, max_pos = m->llm.cfg.max_pos, longest = 0;
    int **ids = xmalloc((size_t)n * sizeof(int *)), *n_ids = xmalloc((size_t)n * sizeof(int));
    int **tile_start = xmalloc((size_t)n * sizeof(int *)), *n_tiles = xmalloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) {
        const PromptItem *it = &pf.items[i];
        n_ids[i] = gen_model_prompt_tiles(&gm, it->prompt, it->image, &ids[i], NULL, &tile_start[i], &n_tiles[i]);
        int np = n_ids[i], ni = n_tiles[i] * m->n_img_tokens;
        int limit = a->max_len ? a->max_len : max_pos;
        if (np > limit)
            fatal("%s:%d: prompt of %d positions (%d tokens + %d image tokens) is longer than %s %d", a->file, it->line,
                  np, np - ni, ni, a->max_len ? "--max-len" : "the model's context (max_position_embeddings)", limit);
        if (np > longest) longest = np;
    }
    int max_len = a->max_len ? a->max_len : (longest + a->max_new < max_pos ? longest + a->max_new : max_pos);
    int nb = a->batch < n ? a->batch : n;
    GenBatch gb;
    gen_batch_init(&gb, m, nb, max_len, 0);
    fprintf(stderr, "loaded %s (%s, %s template) on %s in %.2f s; %d requests from %s, %d at a time\n", dir,
            gm.spec.is_export ? "export" : gm.spec.weights, template_name(gm.spec.template_kind), k->name,
            time_now() - t0, n, a->file, nb);
    FILE *out = stdout;
    if (a->out && !(out = fopen(a->out, "w"))) fatal("%s: cannot create", a->out);
    a->o.stop_ids = gm.stop_ids;
    a->o.n_stop = gm.n_stop;
    GenPrompt *bp = xcalloc((size_t)nb, sizeof(GenPrompt));
    float **b_px = xcalloc((size_t)nb, sizeof(float *));
    int **b_out = xmalloc((size_t)nb * sizeof(int *)), *b_n = xmalloc((size_t)nb * sizeof(int));
    GenStats *st = xmalloc((size_t)nb * sizeof(GenStats));
    for (int j = 0; j < nb; j++) b_out[j] = xmalloc((size_t)a->max_new * sizeof(int));
    long long n_prompt = 0, n_dec = 0, n_new = 0;
    double t_prefill = 0, t_decode = 0, t_run = time_now();
    for (int i0 = 0; i0 < n; i0 += nb) {
        int c = n - i0 < nb ? n - i0 : nb;
        for (int j = 0; j < c; j++) {  // the block's tiles: every row its own grid and slot
            const PromptItem *it = &pf.items[i0 + j];
            int nt = 0;
            b_px[j] = it->image ? gen_model_image_tiles(&gm, it->image, &nt) : NULL;
            CHECK(nt == n_tiles[i0 + j], "%s: %d tiles, %d when tokenised", it->image, nt, n_tiles[i0 + j]);
            bp[j] = (GenPrompt){.ids = ids[i0 + j], .n = n_ids[i0 + j], .pixels = b_px[j], .n_tiles = nt,
                                .tile_start = tile_start[i0 + j]};
        }
        gen_batch_generate(&gb, c, bp, &a->o, b_out, b_n, st);
        for (int j = 0; j < c; j++) {
            free(b_px[j]);
            b_px[j] = NULL;
        }
        double t_dec = 0;  // the batch's decode steps, shared: the longest conversation took part in all
        for (int j = 0; j < c; j++) {
            const PromptItem *it = &pf.items[i0 + j];
            char *text = tokenizer_decode(gm.tok, b_out[j], b_n[j], 1, NULL);
            cJSON *o = cJSON_CreateObject();
            if (it->id) cJSON_AddItemToObject(o, "id", cJSON_Parse(it->id));
            cJSON_AddStringToObject(o, "prompt", it->prompt);
            cJSON_AddStringToObject(o, "answer", text);
            char *line = cJSON_PrintUnformatted(o);
            if (fprintf(out, "%s\n", line) < 0) fatal("%s: write failed", a->out ? a->out : "stdout");
            free(line);
            cJSON_Delete(o);
            free(text);
            n_prompt += st[j].n_prompt;
            n_dec += st[j].n_decode;
            n_new += st[j].n_new;
            t_prefill += st[j].t_prefill;
            if (st[j].t_decode > t_dec) t_dec = st[j].t_decode;
        }
        t_decode += t_dec;
        fflush(out);
    }
    if (out != stdout && fclose(out) != 0) fatal("%s: write failed", a->out);
    fprintf(stderr, "%d requests in %.2f s | prefill: %lld positions in %.3f s, %.1f tok/s | decode: %lld new tokens, "
            "%lld decoded in %.3f s, %.1f tok/s\n", n, time_now() - t_run, n_prompt, t_prefill,
            t_prefill > 0 ? n_prompt / t_prefill : 0.0, n_new, n_dec, t_decode, t_decode > 0 ? n_dec / t_decode : 0.0);
    for (int j = 0; j < nb; j++) free(b_out[j]);
    for (int i = 0; i < n; i++) free(ids[i]), free(tile_start[i]);
    free(b_out);
    free(b_n);
    free(st);
    free(b_px);
    free(bp);
    free(ids);
    free(n_ids);
    free(tile_start);
    free(n_tiles);
    gen_batch_free(&gb);
    gen_model_free(&gm);
    prompt_file_free(&pf);
}

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    const char *dir = NULL, *image = NULL, *prompt = NULL, *system = NULL, *device = "auto";
    int max_new = 256, max_len = 0;
    float temperature = 0, top_p = 1;
    uint64_t seed = 0;
    BatchArgs ba = {.batch = 8};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--image")) image = cli_value(argc, argv, &i, "./generate");
        else if (!strcmp(a, "--prompt")) prompt = cli_value(argc, argv, &i, "./generate");
        else if (!strcmp(a, "--system")) system = cli_value(argc, argv, &i, "./generate");
        else if (!strcmp(a, "--device")) device = cli_value(argc, argv, &i, "./generate");
        else if (!strcmp(a, "--batch")) ba.file = cli_value(argc, argv, &i, "./generate");
        else if (!strcmp(a, "--batch-size")) ba.batch = (int)cli_int(a, cli_value(argc, argv, &i, "./generate"), 1, 4096);
        else if (!strcmp(a, "--image-folder")) ba.image_folder = cli_value(argc, argv, &i, "./generate");
        else if (!strcmp(a, "--out")) ba.out = cli_value(argc, argv, &i, "./generate");
        else if (!strcmp(a, "--max-new-tokens")) max_new = (int)cli_int(a, cli_value(argc, argv, &i, "./generate"), 1, 1 << 24);
        else if (!strcmp(a, "--max-len")) max_len = (int)cli_int(a, cli_value(argc, argv, &i, "./generate"), 1, 1 << 24);
        else if (!strcmp(a, "--temperature")) temperature = (float)cli_num(a, cli_value(argc, argv, &i, "./generate"), 0, 1e6);
        else if (!strcmp(a, "--top-p")) top_p = (float)cli_num(a, cli_value(argc, argv, &i, "./generate"), 0, 1);
        else if (!strcmp(a, "--seed")) seed = (uint64_t)cli_int(a, cli_value(argc, argv, &i, "./generate"), 0, 0x7fffffffffffffffL);
        else if (a[0] == '-' && a[1]) fatal("unknown option %s (see ./generate --help)", a);
        else if (!dir) dir = a;
        else fatal("unexpected argument \"%s\": one MODEL_DIR only (see ./generate --help)", a);
    }
    if (ba.file && (prompt || image)) fatal("--batch FILE takes the prompts and images from FILE: no --prompt or --image");
    if (!ba.file && (ba.image_folder || ba.out)) fatal("--image-folder and --out go with --batch FILE");
    if (!dir || (!prompt && !ba.file)) {
        usage(stderr);
        return 2;
    }

    const Kernels *k = kernels_choose(device, "--device");

    if (ba.file) {
        ba.max_new = max_new;
        ba.max_len = max_len;
        ba.o = (GenOptions){.max_new_tokens = max_new, .temperature = temperature, .top_p = top_p, .seed = seed};
        run_batch(k, dir, system, &ba);
        return 0;
    }
    double t0 = time_now();
    GenModel gm;
    gen_model_load(&gm, k, dir, system);
    const Vlm *m = &gm.vlm;
    // the image slot expanded in the ids as the model marks and tiles it (data/image_slot.h; llava:
    // one unmarked tile), the same prompt --batch and ./evaluate run
    float *pixels = NULL;
    int *ids, *tile_start = NULL, n_tiles = 0;
    int n_prompt = gen_model_prompt_tiles(&gm, prompt, image, &ids, &pixels, &tile_start, &n_tiles);
    int n_ids = n_prompt - n_tiles * m->n_img_tokens;  // for the messages: text and marker tokens
    int max_pos = m->llm.cfg.max_pos;
    if (!max_len) {
        if (n_prompt > max_pos)
            fatal("prompt of %d positions (%d tokens + %d image tokens) is longer than the model's context "
                  "(max_position_embeddings %d in %s/config.json)",
                  n_prompt, n_ids, n_prompt - n_ids, max_pos, gm.spec.llm_dir);
        max_len = n_prompt + max_new < max_pos ? n_prompt + max_new : max_pos;
    } else if (n_prompt > max_len) {
        fatal("prompt of %d positions (%d tokens + %d image tokens) does not fit --max-len %d", n_prompt, n_ids,
              n_prompt - n_ids, max_len);
    }
    Generator g;
    gen_init(&g, (Vlm *)m, max_len, 0);
    fprintf(stderr, "loaded %s (%s, %s template) on %s in %.2f s\n", dir,
            gm.spec.is_export ? "export" : gm.spec.weights, template_name(gm.spec.template_kind), k->name, time_now() - t0);

    Stream stream = {gm.tok, 0};
    GenOptions o = {.max_new_tokens = max_new, .temperature = temperature, .top_p = top_p, .seed = seed,
                    .stop_ids = gm.stop_ids, .n_stop = gm.n_stop, .on_token = on_token, .ctx = &stream};
    int *out = xmalloc((size_t)max_new * sizeof(int));
    GenStats st;
    GenPrompt gp = {.ids = ids, .n = n_prompt, .pixels = pixels, .n_tiles = n_tiles, .tile_start = tile_start};
    int n = gen_generate_prompt(&g, &gp, &o, out, &st);
    stream_flush(&stream, out, n, 1);
    printf("\n");
    fflush(stdout);
    const char *why = st.stop == GEN_STOP_ID ? "stop token" : st.stop == GEN_STOP_MAX_NEW ? "max-new-tokens" : "cache full";
    char img[96] = "";
    if (image && n_tiles > 1)
        snprintf(img, sizeof img, " (%d image tokens in %d tiles; vision encoder + connector %.3f s)", n_tiles * m->n_img_tokens,
                 n_tiles, st.t_image);
    else if (image)
        snprintf(img, sizeof img, " (%d image tokens; vision encoder + connector %.3f s)", m->n_img_tokens, st.t_image);
    fprintf(stderr, "prefill: %d tokens%s in %.3f s, %.1f tok/s | decode: %d new tokens, %d steps in %.3f s, %.1f tok/s | stopped by %s\n",
            st.n_prompt, img, st.t_prefill, st.t_prefill > 0 ? st.n_prompt / st.t_prefill : 0.0, st.n_new, st.n_decode,
            st.t_decode, st.t_decode > 0 ? st.n_decode / st.t_decode : 0.0, why);
    free(out);
    free(ids);
    free(pixels);
    free(tile_start);
    gen_free(&g);
    gen_model_free(&gm);
    return 0;
}
