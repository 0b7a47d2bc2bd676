// test_eval.c: ./evaluate end to end on a tiny model (./synth's models, two steps of ./train)
// and the synthetic benchmark files, and its pieces:
//   - LLaVA's MMBench prompt, word for word; answer letters parsed from generated text;
//   - --mc-score likelihood: each option's log-likelihood equals a one-pass prefill of prompt +
//     option (no cache reuse) to 1e-4, and the chosen option is the most likely one;
//   - predictions.jsonl has one line per request with id, prompt, prediction and its score;
//     summary.json's scores are the means of those lines (mc accuracy, circular accuracy from
//     every rotation, VQA accuracy / ANLS / exact match recomputed from the predictions, caption
//     BLEU / CIDEr-D / ROUGE-L recomputed from the predictions) and it holds the speed figures;
//   - --batch-size 3 and 5 write the predictions of batch size 1, byte for byte;
//   - ./generate --batch FILE (JSONL of {id, image, prompt}) answers every request, in order, with
//     the text ./generate gives for that request alone (greedy and sampled, batch sizes 4 and 2,
//     with and without images, prompts of very different lengths); a bad line is an error naming
//     FILE:LINE;
//   - bad benchmark files (missing question, unknown answer letter, empty options, a gap in
//     the A/B/C fields, malformed JSON, wrong types, no task fields) are one-line errors naming
//     FILE:LINE; a missing image is a counted skip in the summary; unsupported option
//     combinations are one-line errors.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/json.h"
#include "common/util.h"
#include "eval/caption_metrics.h"
#include "eval/mc.h"
#include "model/model_dir.h"
#include "eval/text.h"
#include "eval/vqa_metrics.h"
#include "model/generate.h"
#include "tests/testlib.h"

static char root[512], synth_dir[600], run_dir[600];

// ./evaluate run_dir DATA args... (NULL-terminated) with --out OUT; returns the exit status
static int evaluate(const char *data, const char *out, const char *const *args) {
    char *argv[24] = {"./evaluate", run_dir, (char *)data, "--out", (char *)out};
    int n = 5;
    for (int i = 0; args && args[i]; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    char o[1024], e[1024];
    snprintf(o, sizeof o, "%s.stdout", out);
    snprintf(e, sizeof e, "%s.stderr", out);
    return test_spawn(argv, o, e);
}

// the lines of OUT/predictions.jsonl, parsed; *n gets the count
static cJSON **predictions(const char *out, int *n) {
    char p[1024];
    snprintf(p, sizeof p, "%s/predictions.jsonl", out);
    char *s = test_slurp(p, NULL);
    cJSON **lines = NULL;
    *n = 0;
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) {
        lines = xrealloc(lines, (size_t)(*n + 1) * sizeof(cJSON *));
        lines[*n] = cJSON_Parse(line);
        if (!lines[*n]) fail_msg("%s line %d is not JSON: %s", p, *n + 1, line);
        (*n)++;
    }
    free(s);
    return lines;
}

static cJSON *summary(const char *out) {
    char p[1024];
    snprintf(p, sizeof p, "%s/summary.json", out);
    return json_load_file(p);
}

static void free_lines(cJSON **l, int n) {
    for (int i = 0; i < n; i++) cJSON_Delete(l[i]);
    free(l);
}

static const cJSON *item(const cJSON *o, const char *k) { return fixture_item(o, k); }

static int setup(void **state) {
    make_temp_dir(root, sizeof root, "eval");
    snprintf(synth_dir, sizeof synth_dir, "%s/synth", root);
    if (test_synth(root, synth_dir, 12) != 0) return -1;
    char conf[700], cache[700], o[700], e[700];
    snprintf(conf, sizeof conf, "%s/stage2.conf", root);
    snprintf(cache, sizeof cache, "%s/cache", root);
    test_write_stage2_conf(conf, synth_dir, cache, "ldp", 96, 2, NULL);
    snprintf(run_dir, sizeof run_dir, "%s/run", root);
    char out_kv[700];
    snprintf(out_kv, sizeof out_kv, "out_dir=%s", run_dir);
    snprintf(o, sizeof o, "%s/train.log", root);
    snprintf(e, sizeof e, "%s/train.err", root);
    char *targv[] = {"./train", conf, out_kv, NULL};
    if (test_spawn(targv, o, e) != 0) {
        fprintf(stderr, "./train failed, see %s and %s\n", o, e);
        return -1;
    }
    return 0;
}

// ---------------------------------------------------------------- prompts and letters

static void test_mc_prompt(void **state) {
    char *opts[] = {"cat", "dog", "bird"};
    int order[3];
    mc_rotation(order, 3, 0);
    char *p = mc_prompt("A hint.", "What is it?", opts, order, 3, MC_INSTRUCTION);
    assert_string_equal(p, "A hint.\nWhat is it?\nA. cat\nB. dog\nC. bird\n"
                           "Answer with the option's letter from the given choices directly.");
    free(p);
    mc_rotation(order, 3, 1);  // rotation 1 shows dog, bird, cat
    p = mc_prompt(NULL, "Q?", opts, order, 3, NULL);
    assert_string_equal(p, "Q?\nA. dog\nB. bird\nC. cat");
    free(p);
}

static void test_mc_parse(void **state) {
    char *opts[] = {"red apple", "green pear", "blue sky", "yellow sun"};
    int order[4];
    mc_rotation(order, 4, 0);
    struct {
        const char *text;
        int want;
    } cases[] = {
        {"B", 1},           {"B.", 1},          {" (C) blue sky", 2},     {"D: yellow sun", 3},
        {"Answer: A", 0},   {"The answer is C", 2}, {"I think D is right.", 3}, {"green pear", 1},
        {"It is the blue sky.", 2}, {"A or B", -1}, {"Banana", -1},       {"", -1},
        {"E", -1},          {"nothing here", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = mc_parse_answer(cases[i].text, opts, order, 4);
        if (got != cases[i].want) fail_msg("\"%s\": parsed %d, want %d", cases[i].text, got, cases[i].want);
    }
    mc_rotation(order, 4, 2);  // the text match gives the displayed index: green pear is shown as D
    assert_int_equal(mc_parse_answer("green pear", opts, order, 4), 3);
}

// ---------------------------------------------------------------- likelihood

// Each option's log-likelihood as ./evaluate reports it equals a prefill of the whole
// prompt + option in one pass (no cache reuse, no truncation), summed over the option's tokens.
static void test_likelihood(void **state) {
    char data[700], out[700];
    snprintf(data, sizeof data, "%s/data/bench_mc.jsonl", synth_dir);
    snprintf(out, sizeof out, "%s/likelihood", root);
    const char *args[] = {"--mc-score", "likelihood", NULL};
    assert_int_equal(evaluate(data, out, args), 0);
    int n;
    cJSON **lines = predictions(out, &n);
    assert_int_equal(n, 12);

    GenModel gm;
    gen_model_load(&gm, kernels_cpu(), run_dir, NULL);
    int V = gm.vlm.llm.cfg.vocab;
    Generator g;
    gen_init(&g, &gm.vlm, 256, 0);
    float *pixels = xmalloc((size_t)3 * gm.image_size * gm.image_size * sizeof(float));
    cJSON *bench = NULL;
    char *text = test_slurp(data, NULL);
    char *save = NULL;
    double worst = 0;
    int right = 0;
    char *line = strtok_r(text, "\n", &save);
    for (int i = 0; i < n; i++, line = strtok_r(NULL, "\n", &save)) {
        bench = cJSON_Parse(line);
        char img[800];
        snprintf(img, sizeof img, "%s/data/%s", synth_dir, item(bench, "image")->valuestring);
        gen_model_image(&gm, img, pixels);
        int *ids, image_pos;
        int n_ids = gen_model_prompt(&gm, item(bench, "question")->valuestring, 1, &ids, &image_pos);
        const cJSON *lp = item(lines[i], "logprobs");
        int best = 0;
        for (int j = 0; j < 4; j++) {
            char key[2] = {(char)('A' + j), 0};
            const char *opt = item(bench, key)->valuestring;
            int *oi, no = tokenizer_encode(gm.tok, opt, strlen(opt), 0, &oi);
            int *all_ids = xmalloc((size_t)(n_ids + no) * sizeof(int));
            memcpy(all_ids, ids, (size_t)n_ids * sizeof(int));
            memcpy(all_ids + n_ids, oi, (size_t)no * sizeof(int));
            int P = n_ids + gm.vlm.n_img_tokens;
            float *logits = xmalloc((size_t)(P + no) * V * sizeof(float));
            gen_prefill(&g, all_ids, n_ids + no, pixels, image_pos, logits);
            double want = 0;
            for (int t = 0; t < no; t++) {  // logits of position P - 1 + t predict option token t
                const float *row = logits + (size_t)(P - 1 + t) * V;
                double mx = -INFINITY, s = 0;
                for (int v = 0; v < V; v++) mx = row[v] > mx ? row[v] : mx;
                for (int v = 0; v < V; v++) s += exp((double)row[v] - mx);
                want += row[oi[t]] - mx - log(s);
            }
            double got = cJSON_GetArrayItem(lp, j)->valuedouble;
            if (fabs(got - want) > worst) worst = fabs(got - want);
            if (!(fabs(got - want) < 1e-4)) fail_msg("item %d option %c: log-likelihood %.8f, one-pass prefill %.8f", i, 'A' + j, got, want);
            if (got > cJSON_GetArrayItem(lp, best)->valuedouble) best = j;
            free(logits);
            free(all_ids);
            free(oi);
        }
        char want_letter[2] = {(char)('A' + best), 0};
        assert_string_equal(item(lines[i], "chosen")->valuestring, want_letter);
        right += cJSON_IsTrue(item(lines[i], "correct"));
        free(ids);
        cJSON_Delete(bench);
    }
    printf("    12 items x 4 options: log-likelihoods equal a one-pass prefill (largest difference %.2e)\n", worst);
    cJSON *sum = summary(out);
    assert_true(fabs(item(item(sum, "scores"), "accuracy")->valuedouble - right / 12.0) < 1e-12);
    cJSON_Delete(sum);
    free(text);
    free(pixels);
    gen_free(&g);
    gen_model_free(&gm);
    free_lines(lines, n);
}

// ---------------------------------------------------------------- outputs and scores

static void test_mc_generate_and_circular(void **state) {
    char data[700], out[700];
    snprintf(data, sizeof data, "%s/data/bench_mc.jsonl", synth_dir);
    snprintf(out, sizeof out, "%s/mc", root);
    const char *args[] = {"--max-new-tokens", "8", NULL};
    assert_int_equal(evaluate(data, out, args), 0);
    int n;
    cJSON **lines = predictions(out, &n);
    assert_int_equal(n, 12);
    int right = 0;
    for (int i = 0; i < n; i++) {
        item(lines[i], "id");
        item(lines[i], "prompt");
        item(lines[i], "prediction");
        right += cJSON_IsTrue(item(lines[i], "correct"));
        assert_non_null(strstr(item(lines[i], "prompt")->valuestring, "\nA. "));
        assert_non_null(strstr(item(lines[i], "prompt")->valuestring, MC_INSTRUCTION));
    }
    cJSON *sum = summary(out);
    const cJSON *sc = item(sum, "scores"), *sp = item(sum, "speed");
    assert_true(fabs(item(sc, "accuracy")->valuedouble - right / 12.0) < 1e-12);
    assert_true(item(sc, "per_category") != NULL);
    assert_true(item(sp, "decode_tokens_per_s")->valuedouble > 0);
    assert_true(item(sp, "prefill_tokens_per_s")->valuedouble > 0);
    assert_true(item(sp, "ttft_p95_s")->valuedouble >= item(sp, "ttft_p50_s")->valuedouble);
    assert_true(item(sp, "peak_backend_bytes")->valuedouble > 0);
    assert_int_equal((int)item(sp, "images_per_s")->valuedouble > 0, 1);
    cJSON_Delete(sum);
    free_lines(lines, n);

    snprintf(out, sizeof out, "%s/mc_circular", root);
    const char *cargs[] = {"--max-new-tokens", "8", "--circular", NULL};
    assert_int_equal(evaluate(data, out, cargs), 0);
    lines = predictions(out, &n);
    assert_int_equal(n, 48);  // 12 items x 4 rotations
    int all_right = 0, first_right = 0;
    for (int i = 0; i < 12; i++) {
        int ok = 1;
        for (int r = 0; r < 4; r++) {
            const cJSON *l = lines[i * 4 + r];
            assert_int_equal(item(l, "rotation")->valueint, r);
            ok &= cJSON_IsTrue(item(l, "correct"));
            if (r == 0) first_right += cJSON_IsTrue(item(l, "correct"));
        }
        all_right += ok;
    }
    sum = summary(out);
    sc = item(sum, "scores");
    assert_true(fabs(item(sc, "accuracy")->valuedouble - all_right / 12.0) < 1e-12);
    assert_true(fabs(item(sc, "accuracy_first_rotation")->valuedouble - first_right / 12.0) < 1e-12);
    cJSON_Delete(sum);
    free_lines(lines, n);
}

static void test_vqa_scores(void **state) {
    char data[700], out[700];
    snprintf(data, sizeof data, "%s/data/bench_vqa.jsonl", synth_dir);
    snprintf(out, sizeof out, "%s/vqa", root);
    const char *args[] = {"--vqa-prompt", "", "--max-new-tokens", "12", NULL};
    assert_int_equal(evaluate(data, out, args), 0);
    int n;
    cJSON **lines = predictions(out, &n);
    assert_int_equal(n, 12);
    char *text = test_slurp(data, NULL), *save = NULL, *line = strtok_r(text, "\n", &save);
    double v = 0, a = 0, e = 0;
    for (int i = 0; i < n; i++, line = strtok_r(NULL, "\n", &save)) {
        cJSON *b = cJSON_Parse(line);
        const char *ref = cJSON_GetArrayItem(item(b, "answers"), 0)->valuestring;
        const char *pred = item(lines[i], "prediction")->valuestring;
        const cJSON *s = item(lines[i], "score");
        assert_string_equal(item(b, "question")->valuestring, item(lines[i], "prompt")->valuestring);
        assert_true(fabs(item(s, "vqa_accuracy")->valuedouble - vqa_accuracy(pred, &ref, 1)) < 1e-12);
        assert_true(fabs(item(s, "anls")->valuedouble - anls(pred, &ref, 1, 0.5)) < 1e-12);
        assert_true(fabs(item(s, "exact_match")->valuedouble - exact_match(pred, &ref, 1)) < 1e-12);
        v += item(s, "vqa_accuracy")->valuedouble;
        a += item(s, "anls")->valuedouble;
        e += item(s, "exact_match")->valuedouble;
        cJSON_Delete(b);
    }
    cJSON *sum = summary(out);
    const cJSON *sc = item(sum, "scores");
    assert_true(fabs(item(sc, "vqa_accuracy")->valuedouble - v / n) < 1e-12);
    assert_true(fabs(item(sc, "anls")->valuedouble - a / n) < 1e-12);
    assert_true(fabs(item(sc, "exact_match")->valuedouble - e / n) < 1e-12);
    cJSON_Delete(sum);
    free(text);
    free_lines(lines, n);

    // the default VQA prompt line follows the question
    snprintf(out, sizeof out, "%s/vqa_prompt", root);
    const char *args2[] = {"--max-new-tokens", "2", "--limit", "2", NULL};
    assert_int_equal(evaluate(data, out, args2), 0);
    lines = predictions(out, &n);
    assert_int_equal(n, 2);
    assert_non_null(strstr(item(lines[0], "prompt")->valuestring, "?\nAnswer the question using a single word or phrase."));
    free_lines(lines, n);
}

static void test_caption_scores(void **state) {
    // captions for the benchmark images: the scene captions of the VQA file's answers stand in
    char data[700], out[700];
    snprintf(data, sizeof data, "%s/data/bench_caption.jsonl", synth_dir);
    test_write_file(data,
               "{\"id\": \"c0\", \"image\": \"images/bench_00000.png\", \"captions\": [\"a red circle on the left\", \"one red circle\"]}\n"
               "{\"id\": \"c1\", \"image\": \"images/bench_00001.png\", \"captions\": [\"Two blue squares, at the top.\"]}\n"
               "{\"id\": \"c2\", \"image\": \"images/bench_00002.png\", \"captions\": [\"a star\", \"the yellow star in the centre\", \"star\"]}\n");
    snprintf(out, sizeof out, "%s/caption", root);
    const char *args[] = {"--max-new-tokens", "10", NULL};
    assert_int_equal(evaluate(data, out, args), 0);
    int n;
    cJSON **lines = predictions(out, &n);
    assert_int_equal(n, 3);
    const char *raw_refs[3][3] = {{"a red circle on the left", "one red circle"}, {"Two blue squares, at the top."},
                                  {"a star", "the yellow star in the centre", "star"}};
    int nr[3] = {2, 1, 3};
    char *hyp[3], *refs_store[3][3];
    const char *const *refs[3];
    const char *rp[3][3];
    for (int i = 0; i < 3; i++) {
        assert_string_equal(item(lines[i], "prompt")->valuestring, "Provide a one-sentence caption for the provided image.");
        hyp[i] = text_tokenize(item(lines[i], "prediction")->valuestring, NULL);
        for (int j = 0; j < nr[i]; j++) rp[i][j] = refs_store[i][j] = text_tokenize(raw_refs[i][j], NULL);
        refs[i] = rp[i];
    }
    CaptionSet cs = {.n = 3, .hyp = (const char *const *)hyp, .refs = refs, .n_refs = nr};
    double bleu[4], per[3];
    caption_bleu(&cs, bleu);
    double cider = caption_cider_d(&cs, per), rouge = caption_rouge_l(&cs, NULL);
    cJSON *sum = summary(out);
    const cJSON *sc = item(sum, "scores");
    assert_true(fabs(item(sc, "bleu_4")->valuedouble - bleu[3]) < 1e-12);
    assert_true(fabs(item(sc, "bleu_1")->valuedouble - bleu[0]) < 1e-12);
    assert_true(fabs(item(sc, "cider_d")->valuedouble - cider) < 1e-12);
    assert_true(fabs(item(sc, "rouge_l")->valuedouble - rouge) < 1e-12);
    for (int i = 0; i < 3; i++) assert_true(fabs(item(item(lines[i], "score"), "cider_d")->valuedouble - per[i]) < 1e-12);
    cJSON_Delete(sum);
    for (int i = 0; i < 3; i++) {
        free(hyp[i]);
        for (int j = 0; j < nr[i]; j++) free(refs_store[i][j]);
    }
    free_lines(lines, n);
}

// ---------------------------------------------------------------- bad input

// DATA holding text (written to a .jsonl, or .json when json is set); ./evaluate must exit 1
// with one stderr line holding every needle
static void expect_bad(const char *name, const char *text, const char *const *args, const char *n1, const char *n2) {
    char data[700], out[700], err[760];
    snprintf(data, sizeof data, "%s/data/%s", synth_dir, name);
    test_write_file(data, text);
    snprintf(out, sizeof out, "%s/bad_%s", root, name);
    int st = evaluate(data, out, args);
    snprintf(err, sizeof err, "%s.stderr", out);
    char *e = test_slurp(err, NULL);
    int lines = 0;
    for (char *p = e; *p; p++) lines += *p == '\n';
    if (st != 1 || lines != 1 || (n1 && !strstr(e, n1)) || (n2 && !strstr(e, n2)))
        fail_msg("%s: exit %d, want 1 with one line holding \"%s\" and \"%s\"; stderr:\n%s", name, st, n1 ? n1 : "",
                 n2 ? n2 : "", e);
    printf("    %-22s %s", name, e);
    free(e);
}

static void test_bad_files(void **state) {
    const char *ok = "{\"id\": \"a\", \"image\": \"images/bench_00000.png\", \"question\": \"Q?\", \"A\": \"x\", \"B\": \"y\", \"answer\": \"A\"}\n";
    char text[2048];
    snprintf(text, sizeof text, "%s{\"id\": \"b\", \"question\": \"Q?\", \"A\": \"x\", \"B\": \"y\", \"answer\": \"E\"}\n", ok);
    expect_bad("letter.jsonl", text, NULL, "letter.jsonl:2: item 2 (id \"b\")", "\"answer\" is \"E\"");
    snprintf(text, sizeof text, "%s\n{\"id\": \"c\", \"A\": \"x\", \"B\": \"y\", \"answer\": \"A\"}\n", ok);
    expect_bad("noquestion.jsonl", text, NULL, "noquestion.jsonl:3:", "\"question\" is missing");
    snprintf(text, sizeof text, "%s{\"id\": \"d\", \"question\": \"Q?\", \"options\": [], \"answer\": \"A\"}\n", ok);
    expect_bad("emptyopts.jsonl", text, NULL, "emptyopts.jsonl:2:", "\"options\" is an empty list");
    snprintf(text, sizeof text, "%s{\"id\": \"e\", \"question\": \"Q?\", \"A\": \"x\", \"B\": \"\", \"answer\": \"A\"}\n", ok);
    expect_bad("emptyopt.jsonl", text, NULL, "emptyopt.jsonl:2:", "option B is empty");
    snprintf(text, sizeof text, "%s{\"id\": \"f\", \"question\": \"Q?\", \"A\": \"x\", \"B\": \"y\", \"D\": \"z\", \"answer\": \"A\"}\n", ok);
    expect_bad("gap.jsonl", text, NULL, "gap.jsonl:2:", "\"D\" is given but \"C\"");
    snprintf(text, sizeof text, "%s{\"id\": \"g\", \"question\": \"Q?\", \"A\": \"x\"}\n", ok);
    expect_bad("oneopt.jsonl", text, NULL, "oneopt.jsonl:2:", "at least 2");
    snprintf(text, sizeof text, "%s{\"id\": \"h\", \"question\": \"Q?\", \"A\": \"x\",, }\n", ok);
    expect_bad("malformed.jsonl", text, NULL, "malformed.jsonl:2:", "malformed");
    {
        char many[1024];
        int o = snprintf(many, sizeof many, "{\"question\": \"Q?\", \"answer\": \"A\", \"options\": [");
        for (int i = 0; i < 27; i++) o += snprintf(many + o, sizeof many - (size_t)o, "%s\"o%d\"", i ? ", " : "", i);
        snprintf(many + o, sizeof many - (size_t)o, "]}\n");
        expect_bad("manyopts.jsonl", many, NULL, "manyopts.jsonl:1:", "at most 26");
    }
    expect_bad("vqatype.jsonl", "{\"question\": \"Q?\", \"answers\": [\"a\", 3]}\n", NULL, "vqatype.jsonl:1:",
               "\"answers\"[1] is a number");
    expect_bad("notask.jsonl", "{\"question\": \"Q?\"}\n", NULL, "notask.jsonl:1:", "no task");
    expect_bad("list.json", "[\n {\"question\": \"Q?\", \"answer\": \"x\"},\n {\"question\": 5, \"answer\": \"y\"}\n]\n", NULL,
               "list.json:3:", "\"question\" is a number");
    expect_bad("nocaptions.jsonl", "{\"captions\": \"a cat\"}\n", NULL, "nocaptions.jsonl:1:", "not a list");
    {  // a question longer than the model's 512 positions
        size_t cap = 8000;
        char *longq = xmalloc(cap);
        int o = snprintf(longq, cap, "{\"id\": \"long\", \"question\": \"");
        for (int i = 0; i < 600; i++) o += snprintf(longq + o, cap - (size_t)o, "red ");
        snprintf(longq + o, cap - (size_t)o, "?\", \"answers\": [\"x\"]}\n");
        expect_bad("long.jsonl", longq, NULL, "long.jsonl:1: item 1 (id \"long\")", "context holds 512");
        free(longq);
    }
    const char *batch[] = {"--batch-size", "0", NULL};
    expect_bad("batch.jsonl", ok, batch, "--batch-size 0", "want an integer");
    const char *circ[] = {"--circular", "--mc-score", "likelihood", NULL};
    expect_bad("circ.jsonl", ok, circ, "--circular", "likelihood");
}

// --batch-size 3 and 5 (batches of very different prompts, a last partial batch) write the same
// predictions as one conversation at a time, for VQA and for multiple choice by letter
static void test_batch_same_predictions(void **state) {
    const char *files[] = {"bench_vqa.jsonl", "bench_mc.jsonl"};
    for (int f = 0; f < 2; f++) {
        char data[700], out1[700], outb[760], p1[800], pb[800];
        snprintf(data, sizeof data, "%s/data/%s", synth_dir, files[f]);
        snprintf(out1, sizeof out1, "%s/batch1_%d", root, f);
        const char *a1[] = {"--max-new-tokens", "12", NULL};
        assert_int_equal(evaluate(data, out1, a1), 0);
        snprintf(p1, sizeof p1, "%s/predictions.jsonl", out1);
        char *want = test_slurp(p1, NULL);
        const char *sizes[] = {"3", "5"};
        for (int b = 0; b < 2; b++) {
            snprintf(outb, sizeof outb, "%s/batch%s_%d", root, sizes[b], f);
            const char *ab[] = {"--max-new-tokens", "12", "--batch-size", sizes[b], NULL};
            assert_int_equal(evaluate(data, outb, ab), 0);
            snprintf(pb, sizeof pb, "%s/predictions.jsonl", outb);
            char *got = test_slurp(pb, NULL);
            if (strcmp(got, want)) fail_msg("%s: --batch-size %s predictions differ from batch 1", files[f], sizes[b]);
            free(got);
            cJSON *sum = summary(outb);
            assert_int_equal(item(item(sum, "speed"), "batch_size")->valueint, atoi(sizes[b]));
            assert_true(item(item(sum, "speed"), "decode_tokens_per_s")->valuedouble > 0);
            cJSON_Delete(sum);
        }
        printf("    %s: --batch-size 3 and 5 give batch 1's predictions\n", files[f]);
        free(want);
    }
}

// ./generate run_dir args... (NULL-terminated), stdout to out_log; returns the exit status
static int generate(const char *const *args, const char *out_log, const char *err_log) {
    char *argv[32] = {"./generate", run_dir};
    int n = 2;
    for (int i = 0; args[i]; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return test_spawn(argv, out_log, err_log);
}

// ./generate --batch answers each request as ./generate answers it alone
static void test_generate_batch_file(void **state) {
    char data[700], file[700], out[700], err[700], img[800];
    snprintf(data, sizeof data, "%s/data", synth_dir);
    snprintf(file, sizeof file, "%s/requests.jsonl", root);
    static const char *const prompts[5] = {
        "How many triangles are there?",
        "Hi",
        "Look at the picture carefully and tell me, in as many words as you like, where the circle is, what colour "
        "every shape has, how many shapes there are in all, and whether any of them touch each other or the border.",
        "Where is the circle?",
        "What color is the shape?"};
    static const char *const images[5] = {"images/bench_00000.png", NULL, "images/bench_00001.png", NULL,
                                          "images/bench_00002.png"};
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fprintf(f, "{\"id\": \"a\", \"image\": \"%s\", \"prompt\": \"%s\"}\n", images[0], prompts[0]);
    fprintf(f, "{\"prompt\": \"%s\"}\n\n", prompts[1]);  // and a blank line
    fprintf(f, "{\"id\": 7, \"image\": \"%s\", \"prompt\": \"%s\"}\n", images[2], prompts[2]);
    fprintf(f, "{\"image\": null, \"prompt\": \"%s\"}\n", prompts[3]);
    fprintf(f, "{\"id\": \"e\", \"image\": \"%s\", \"prompt\": \"%s\"}\n", images[4], prompts[4]);
    fclose(f);
    static const char *const sizes[2] = {"4", "2"};
    static const char *const temps[2] = {"0", "1"};
    for (int t = 0; t < 2; t++) {
        char *want[5];
        for (int i = 0; i < 5; i++) {  // one request at a time
            snprintf(out, sizeof out, "%s/gen1_%d_%d.out", root, t, i);
            snprintf(err, sizeof err, "%s/gen1_%d_%d.err", root, t, i);
            snprintf(img, sizeof img, "%s/%s", data, images[i] ? images[i] : "");
            const char *a1[] = {"--device", "cpu", "--prompt", prompts[i], "--max-new-tokens", "12", "--temperature",
                                temps[t], "--seed", "5", images[i] ? "--image" : NULL, img, NULL};
            assert_int_equal(generate(a1, out, err), 0);
            want[i] = test_slurp(out, NULL);
            size_t len = strlen(want[i]);
            assert_true(len >= 1 && want[i][len - 1] == '\n');
            want[i][len - 1] = 0;  // the newline after the streamed answer
        }
        for (int b = 0; b < 2; b++) {
            snprintf(out, sizeof out, "%s/genb_%d_%d.out", root, t, b);
            snprintf(err, sizeof err, "%s/genb_%d_%d.err", root, t, b);
            const char *ab[] = {"--device", "cpu", "--batch", file, "--image-folder", data, "--batch-size", sizes[b],
                                "--max-new-tokens", "12", "--temperature", temps[t], "--seed", "5", NULL};
            assert_int_equal(generate(ab, out, err), 0);
            char *got = test_slurp(out, NULL);
            int n = 0;
            for (char *line = strtok(got, "\n"); line; line = strtok(NULL, "\n"), n++) {
                assert_true(n < 5);
                cJSON *j = cJSON_Parse(line);
                if (!j) fail_msg("%s line %d is not JSON: %s", out, n + 1, line);
                assert_string_equal(item(j, "prompt")->valuestring, prompts[n]);
                if (strcmp(item(j, "answer")->valuestring, want[n]))
                    fail_msg("--batch-size %s, temperature %s, request %d: \"%s\", alone: \"%s\"", sizes[b], temps[t], n,
                             item(j, "answer")->valuestring, want[n]);
                const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
                if (n == 0) assert_string_equal(id->valuestring, "a");
                if (n == 2) assert_int_equal(id->valueint, 7);
                if (n == 1 || n == 3) assert_null(id);
                cJSON_Delete(j);
            }
            assert_int_equal(n, 5);
            free(got);
        }
        printf("    ./generate --batch (temperature %s, batch sizes 4 and 2): every answer as alone:", temps[t]);
        for (int i = 0; i < 5; i++) printf(" \"%s\"", want[i]);
        printf("\n");
        for (int i = 0; i < 5; i++) free(want[i]);
    }
    // a request without a prompt: an error naming FILE:LINE
    snprintf(file, sizeof file, "%s/bad_requests.jsonl", root);
    test_write_file(file, "{\"prompt\": \"Hi\"}\n\n{\"image\": \"x.png\"}\n");
    snprintf(out, sizeof out, "%s/bad_gen.out", root);
    snprintf(err, sizeof err, "%s/bad_gen.err", root);
    const char *bad[] = {"--device", "cpu", "--batch", file, NULL};
    assert_int_equal(generate(bad, out, err), 1);
    char *e = test_slurp(err, NULL), want_err[800];
    snprintf(want_err, sizeof want_err, "%s:3: \"prompt\" is missing", file);
    if (!strstr(e, want_err)) fail_msg("want \"%s\" in: %s", want_err, e);
    free(e);
}

static void test_missing_image_is_counted(void **state) {
    char data[700], out[700];
    snprintf(data, sizeof data, "%s/data/missing.jsonl", synth_dir);
    test_write_file(data, "{\"id\": \"a\", \"image\": \"images/bench_00000.png\", \"question\": \"Q?\", \"answers\": [\"x\"]}\n"
                     "{\"id\": \"b\", \"image\": \"images/no_such.png\", \"question\": \"Q?\", \"answers\": [\"x\"]}\n");
    snprintf(out, sizeof out, "%s/missing", root);
    const char *args[] = {"--max-new-tokens", "2", NULL};
    assert_int_equal(evaluate(data, out, args), 0);
    cJSON *sum = summary(out);
    assert_int_equal(item(sum, "skipped")->valueint, 1);
    assert_int_equal(item(sum, "scored")->valueint, 1);
    cJSON_Delete(sum);
    int n;
    cJSON **lines = predictions(out, &n);
    assert_int_equal(n, 2);
    assert_string_equal(item(lines[1], "skipped")->valuestring, "image not found");
    free_lines(lines, n);
    char err[760];
    snprintf(err, sizeof err, "%s.stderr", out);
    char *e = test_slurp(err, NULL);
    assert_non_null(strstr(e, "missing.jsonl:2: item 2 (id \"b\"): image"));
    free(e);
    // in a batch too: the skipped item passes by, the other is answered
    snprintf(out, sizeof out, "%s/missing_batch", root);
    const char *bargs[] = {"--max-new-tokens", "2", "--batch-size", "2", NULL};
    assert_int_equal(evaluate(data, out, bargs), 0);
    sum = summary(out);
    assert_int_equal(item(sum, "skipped")->valueint, 1);
    assert_int_equal(item(sum, "scored")->valueint, 1);
    cJSON_Delete(sum);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mc_prompt),
        cmocka_unit_test(test_mc_parse),
        cmocka_unit_test(test_likelihood),
        cmocka_unit_test(test_mc_generate_and_circular),
        cmocka_unit_test(test_vqa_scores),
        cmocka_unit_test(test_caption_scores),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_batch_same_predictions),
        cmocka_unit_test(test_generate_batch_file),
        cmocka_unit_test(test_missing_image_is_counted),
    };
    struct CMUnitTest chosen[sizeof tests / sizeof tests[0]];
    size_t n = test_select(chosen, tests, sizeof tests / sizeof tests[0], argc > 1 ? argv[1] : NULL);
    return _cmocka_run_group_tests("tests", chosen, n, setup, NULL);
}
