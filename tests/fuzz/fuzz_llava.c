// fuzz_llava.c: libFuzzer harness for LLaVA data (data/llava_json.c) and the chat templates
// (data/template.c). The first byte chooses JSONL (even) or a JSON list (odd) and the template
// (every kind); the rest is the data file. Every sample read is rendered with the template on the
// chat-format fixtures' tokenizer (the template fixtures' with the whole-model formats' special
// tokens), as ./prepare would.
#include <stdlib.h>

#include "data/llava_json.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

#define MAX_SAMPLES 64

static Tokenizer *g_tok;
static Template *g_tmpl[N_TEMPLATE_KINDS];
static const char *g_path;
static LlavaSample g_s[MAX_SAMPLES];
static int g_n;

static void init(void *arg) {
    (void)arg;
    g_tok = tokenizer_load(fuzz_fixture("chat_formats/tokenizer.json"));
    for (int k = 0; k < N_TEMPLATE_KINDS; k++) g_tmpl[k] = template_new((TemplateKind)k, g_tok, NULL, -1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (fuzz_guard(init, NULL)) abort();
    return 0;
}

// reading alone in one guard: a fatal() (malformed JSON list) releases the reader and samples
static void read_all(void *arg) {
    (void)arg;
    LlavaReader *r = llava_open(g_path);
    g_n = 0;
    while (g_n < MAX_SAMPLES && llava_next(r, &g_s[g_n])) g_n++;
    llava_bytes_read(r);
    llava_close(r);
    llava_count_samples(g_path);
}

static int g_kind;

static void render(void *arg) {
    (void)arg;
    for (int i = 0; i < g_n; i++) {
        if (g_s[i].skip) continue;
        int *ids = NULL, image_pos;
        uint8_t *mask = NULL;
        char err[256];
        int n = template_encode(g_tmpl[g_kind], g_s[i].turns, g_s[i].n_turns, &ids, &mask, &image_pos, err, sizeof err);
        if (n > 0) {
            free(ids);
            free(mask);
        }
        n = template_encode_prompt(g_tmpl[g_kind], g_s[i].turns, g_s[i].n_turns, &ids, &image_pos, err, sizeof err);
        if (n >= 0) free(ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n == 0) return 0;
    g_path = fuzz_file((data[0] & 1) ? "data.json" : "data.jsonl", data + 1, n - 1);
    g_kind = (data[0] >> 1) % N_TEMPLATE_KINDS;
    g_n = 0;
    if (fuzz_guard(read_all, NULL)) return 0;  // refused: everything it held is released
    fuzz_guard(render, NULL);
    for (int i = 0; i < g_n; i++) llava_sample_free(&g_s[i]);
    return 0;
}
