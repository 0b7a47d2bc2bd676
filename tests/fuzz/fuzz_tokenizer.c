// fuzz_tokenizer.c: libFuzzer harness for data/tokenizer.c. The first byte chooses:
//   even: the rest is text, encoded with the fixtures' Qwen2 and cl100k tokenizers (special
//         tokens allowed on odd second bytes), then decoded again;
//   odd:  the rest is a tokenizer.json, loaded and used to encode a fixed multilingual text.
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

static Tokenizer *g_tok[2];
static const uint8_t *g_data;
static size_t g_n;
static const char *g_path;

static void load_fixed(void *arg) {
    (void)arg;
    g_tok[0] = tokenizer_load(fuzz_fixture("tokenizer/qwen2.json"));
    g_tok[1] = tokenizer_load(fuzz_fixture("tokenizer/cl100k.json"));
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (fuzz_guard(load_fixed, NULL)) abort();  // the fixtures must load
    return 0;
}

static void encode_text(void *arg) {
    (void)arg;
    int special = g_n > 0 && (g_data[0] & 1);
    for (int k = 0; k < 2; k++) {
        int *ids;
        char err[256];
        int n = tokenizer_encode_checked(g_tok[k], (const char *)g_data, g_n, special, &ids, err, sizeof err);
        if (n < 0) continue;
        size_t len;
        char *back = tokenizer_decode(g_tok[k], ids, n, 0, &len);
        free(back);
        free(ids);
    }
}

static void load_json(void *arg) {
    (void)arg;
    static const char text[] = "Hello, world! 안녕하세요 Xin chào 123 4567 \n\n  tabs\t<|im_start|>é́ 😀";
    Tokenizer *t = tokenizer_load(g_path);
    int *ids;
    char err[256];
    int n = tokenizer_encode_checked(t, text, sizeof text - 1, 1, &ids, err, sizeof err);
    if (n >= 0) {
        free(tokenizer_decode(t, ids, n, 1, NULL));
        free(ids);
    }
    tokenizer_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n == 0) return 0;
    g_data = data + 1;
    g_n = n - 1;
    if (!(data[0] & 1)) {
        fuzz_guard(encode_text, NULL);
    } else {
        g_path = fuzz_file("tokenizer.json", g_data, g_n);
        fuzz_guard(load_json, NULL);
    }
    return 0;
}
