// generate.c: ./generate MODEL_DIR [--image PATH] --prompt TEXT [options]: answers one prompt with
// a trained model (an ./export directory or a ./train run directory, see eval/model_dir.h). The
// answer is streamed to stdout; loading and speed lines go to stderr.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "eval/model_dir.h"
#include "model/generate.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ./generate MODEL_DIR [--image PATH] --prompt TEXT [options]\n"
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
            "  --device cpu|cuda|auto  default auto: cuda when available\n");
}

static const char *need_arg(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) fatal("%s needs a value (see ./generate --help)", argv[*i]);
    return argv[++*i];
}

static long parse_int(const char *opt, const char *s, long lo, long hi) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) fatal("%s %s: want an integer in [%ld, %ld]", opt, s, lo, hi);
    return v;
}

static double parse_num(const char *opt, const char *s, double lo, double hi) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi)) fatal("%s %s: want a number in [%g, %g]", opt, s, lo, hi);
    return v;
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

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    const char *dir = NULL, *image = NULL, *prompt = NULL, *system = NULL, *device = "auto";
    int max_new = 256, max_len = 0;
    float temperature = 0, top_p = 1;
    uint64_t seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--image")) image = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--prompt")) prompt = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--system")) system = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--device")) device = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--max-new-tokens")) max_new = (int)parse_int(a, need_arg(argc, argv, &i), 1, 1 << 24);
        else if (!strcmp(a, "--max-len")) max_len = (int)parse_int(a, need_arg(argc, argv, &i), 1, 1 << 24);
        else if (!strcmp(a, "--temperature")) temperature = (float)parse_num(a, need_arg(argc, argv, &i), 0, 1e6);
        else if (!strcmp(a, "--top-p")) top_p = (float)parse_num(a, need_arg(argc, argv, &i), 0, 1);
        else if (!strcmp(a, "--seed")) seed = (uint64_t)parse_int(a, need_arg(argc, argv, &i), 0, 0x7fffffffffffffffL);
        else if (a[0] == '-' && a[1]) fatal("unknown option %s (see ./generate --help)", a);
        else if (!dir) dir = a;
        else fatal("unexpected argument \"%s\": one MODEL_DIR only (see ./generate --help)", a);
    }
    if (!dir || !prompt) {
        usage(stderr);
        return 2;
    }

    const Kernels *k;
    if (!strcmp(device, "cpu")) {
        k = kernels_cpu();
    } else if (!strcmp(device, "cuda") || !strcmp(device, "auto")) {
        k = kernels_cuda();
        if (!k && !strcmp(device, "cuda")) fatal("--device cuda: no CUDA device is available (or svlm was built without nvcc)");
        if (!k) k = kernels_cpu();
    } else {
        fatal("--device %s: want cpu, cuda or auto", device);
    }

    double t0 = time_now();
    GenModel gm;
    gen_model_load(&gm, k, dir, system);
    const Vlm *m = &gm.vlm;
    float *pixels = NULL;
    if (image) {
        pixels = xmalloc((size_t)3 * gm.image_size * gm.image_size * sizeof(float));
        gen_model_image(&gm, image, pixels);
    }
    int *ids, image_pos;
    int n_ids = gen_model_prompt(&gm, prompt, image != NULL, &ids, &image_pos);
    int n_prompt = n_ids + (image ? m->n_img_tokens : 0);
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
    int n = gen_generate(&g, ids, n_ids, pixels, image_pos, &o, out, &st);
    stream_flush(&stream, out, n, 1);
    printf("\n");
    fflush(stdout);
    const char *why = st.stop == GEN_STOP_ID ? "stop token" : st.stop == GEN_STOP_MAX_NEW ? "max-new-tokens" : "cache full";
    char img[96] = "";
    if (image) snprintf(img, sizeof img, " (%d image tokens; vision encoder + connector %.3f s)", m->n_img_tokens, st.t_image);
    fprintf(stderr, "prefill: %d tokens%s in %.3f s, %.1f tok/s | decode: %d new tokens, %d steps in %.3f s, %.1f tok/s | stopped by %s\n",
            st.n_prompt, img, st.t_prefill, st.t_prefill > 0 ? st.n_prompt / st.t_prefill : 0.0, st.n_new, st.n_decode,
            st.t_decode, st.t_decode > 0 ? st.n_decode / st.t_decode : 0.0, why);
    free(out);
    free(ids);
    free(pixels);
    gen_free(&g);
    gen_model_free(&gm);
    return 0;
}
