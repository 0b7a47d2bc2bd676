// test_tokenizer.c: data/tokenizer.c against the Hugging Face `tokenizers` library (fixtures in
// tests/fixtures/tokenizer from scripts/make_tokenizer_fixtures.py), the Unicode helpers, thread
// safety, and clean failures on bad tokenizer.json files.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/util.h"
#include "data/tokenizer.h"
#include "data/unicode.h"
#include "tests/testlib.h"

static cJSON *g_expected;

static int setup(void **state) {
    g_expected = fixture_json("tokenizer/expected.json");
    return 0;
}

static int teardown(void **state) {
    cJSON_Delete(g_expected);
    return 0;
}

static const cJSON *tok_fixture(const char *name) {
    const cJSON *t;
    cJSON_ArrayForEach(t, fixture_item(g_expected, "tokenizers")) {
        if (strcmp(fixture_item(t, "name")->valuestring, name) == 0) return t;
    }
    fail_msg("no tokenizer %s in expected.json", name);
    return NULL;
}

static Tokenizer *load_fixture(const cJSON *tf) {
    char path[512];
    snprintf(path, sizeof path, "tokenizer/%s", fixture_item(tf, "file")->valuestring);
    return tokenizer_load(fixture_path(path));
}

static uint64_t fnv1a64(const int *ids, int n) {
    uint64_t h = 0xCBF29CE484222325ULL;
    for (int i = 0; i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int b = 0; b < 4; b++) {
            h ^= (v >> (8 * b)) & 0xFF;
            h *= 0x100000001B3ULL;
        }
    }
    return h;
}

static void print_ids(const char *what, const int *ids, int n) {
    print_error("%s (%d):", what, n);
    for (int i = 0; i < n; i++) print_error(" %d", ids[i]);
    print_error("\n");
}

// asserts the ids equal the JSON array want; shows both on failure
static void check_ids(const char *tname, const char *mode, const char *text, const int *ids, int n, const cJSON *want) {
    int m = cJSON_GetArraySize(want);
    int ok = m == n;
    for (int i = 0; ok && i < n; i++) ok = cJSON_GetArrayItem(want, i)->valueint == ids[i];
    if (!ok) {
        print_error("%s %s: ids differ for text \"%s\"\n", tname, mode, text);
        print_ids("got ", ids, n);
        int *w = malloc(sizeof(int) * (size_t)(m + 1));
        for (int i = 0; i < m; i++) w[i] = cJSON_GetArrayItem(want, i)->valueint;
        print_ids("want", w, m);
        free(w);
        fail();
    }
}

static void check_str(const char *tname, const char *what, const char *got, size_t got_len, const char *want) {
    if (got_len != strlen(want) || memcmp(got, want, got_len) != 0) {
        print_error("%s %s:\n  got  \"%s\" (%zu bytes)\n  want \"%s\" (%zu bytes)\n", tname, what, got, got_len, want, strlen(want));
        fail();
    }
}

// expected string of a decode case: "<key>_hex" (when the text holds a NUL byte, which JSON
// strings read by cJSON cannot) or "<key>"; caller frees
static char *want_str(const cJSON *c, const char *key, size_t *len) {
    char hk[64];
    snprintf(hk, sizeof hk, "%s_hex", key);
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(c, hk);
    if (!h) {
        *len = strlen(fixture_item(c, key)->valuestring);
        return xstrdup(fixture_item(c, key)->valuestring);
    }
    const char *x = h->valuestring;
    *len = strlen(x) / 2;
    char *s = xmalloc(*len + 1);
    for (size_t i = 0; i < *len; i++) {
        unsigned v;
        sscanf(x + 2 * i, "%2x", &v);
        s[i] = (char)v;
    }
    s[*len] = 0;
    return s;
}

static void check_bytes(const char *tname, const char *what, const char *got, size_t got_len, const char *want, size_t want_len) {
    if (got_len != want_len || memcmp(got, want, got_len) != 0) {
        print_error("%s %s:\n  got  \"%s\" (%zu bytes)\n  want \"%s\" (%zu bytes)\n", tname, what, got, got_len, want, want_len);
        fail();
    }
}

static int *ids_of(const cJSON *arr, int *n) {
    *n = cJSON_GetArraySize(arr);
    int *v = malloc(sizeof(int) * (size_t)(*n + 1));
    for (int i = 0; i < *n; i++) v[i] = cJSON_GetArrayItem(arr, i)->valueint;
    return v;
}

// every held-out text, random text, corpus file and decode case of one tokenizer
static void parity(const char *name) {
    const cJSON *tf = tok_fixture(name);
    Tokenizer *t = load_fixture(tf);
    int nfc = cJSON_IsTrue(fixture_item(tf, "nfc"));
    assert_int_equal(tokenizer_vocab_size(t), fixture_item(tf, "vocab_size")->valueint);
    assert_string_equal(tokenizer_post_processor(t), fixture_item(tf, "post_processor")->valuestring);

    // held-out texts
    const cJSON *texts = fixture_item(g_expected, "texts");
    const cJSON *cases = fixture_item(tf, "cases");
    assert_int_equal(cJSON_GetArraySize(texts), cJSON_GetArraySize(cases));
    for (int i = 0; i < cJSON_GetArraySize(texts); i++) {
        const char *text = cJSON_GetArrayItem(texts, i)->valuestring;
        const cJSON *c = cJSON_GetArrayItem(cases, i);
        int *ids, *plain;
        int n = tokenizer_encode(t, text, strlen(text), 1, &ids);
        check_ids(name, "encode", text, ids, n, fixture_item(c, "ids"));
        int np = tokenizer_encode(t, text, strlen(text), 0, &plain);
        check_ids(name, "encode (specials as text)", text, plain, np, fixture_item(c, "ids_plain"));
        size_t len;
        char *d = tokenizer_decode(t, ids, n, 0, &len);
        check_str(name, "decode", d, len, fixture_item(c, "decoded")->valuestring);
        free(d);
        d = tokenizer_decode(t, ids, n, 1, &len);
        check_str(name, "decode skip_special", d, len, fixture_item(c, "decoded_skip")->valuestring);
        free(d);
        if (cJSON_IsTrue(fixture_item(c, "roundtrip"))) {
            // decode(encode(text)) gives the text back, NFC'd where the tokenizer normalises
            char *want = NULL;
            size_t cap = 0, wl = strlen(text);
            if (nfc) wl = unicode_nfc(text, strlen(text), &want, &cap);
            else want = xstrdup(text);
            d = tokenizer_decode(t, ids, n, 0, &len);
            assert_int_equal(len, wl);
            assert_memory_equal(d, want, wl);
            free(d);
            d = tokenizer_decode(t, plain, np, 0, &len);
            assert_int_equal(len, wl);
            assert_memory_equal(d, want, wl);
            free(d);
            free(want);
        }
        free(ids);
        free(plain);
    }

    // random strings: counts and hashes
    const cJSON *rtexts = fixture_item(g_expected, "random_texts");
    const cJSON *rand = fixture_item(tf, "random");
    for (int i = 0; i < cJSON_GetArraySize(rtexts); i++) {
        const char *text = cJSON_GetArrayItem(rtexts, i)->valuestring;
        const cJSON *r = cJSON_GetArrayItem(rand, i);
        for (int mode = 0; mode < 2; mode++) {
            int *ids;
            int n = tokenizer_encode(t, text, strlen(text), mode == 0, &ids);
            char hex[32];
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv1a64(ids, n));
            if (n != cJSON_GetArrayItem(r, 2 * mode)->valueint || strcmp(hex, cJSON_GetArrayItem(r, 2 * mode + 1)->valuestring)) {
                print_error("%s random text %d (%s): \"%s\"\n", name, i, mode ? "specials as text" : "specials", text);
                print_ids("got", ids, n);
                fail();
            }
            free(ids);
        }
    }

    // whole corpus files
    const cJSON *cf;
    cJSON_ArrayForEach(cf, fixture_item(tf, "corpus")) {
        size_t len;
        char *text = file_read_all(fixture_item(cf, "file")->valuestring, &len);
        assert_non_null(text);
        int *ids;
        int n = tokenizer_encode(t, text, len, 1, &ids);
        char hex[32];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv1a64(ids, n));
        if (n != fixture_item(cf, "n")->valueint || strcmp(hex, fixture_item(cf, "hash")->valuestring))
            fail_msg("%s: corpus file %s: %d ids hash %s, want %d ids hash %s", name, fixture_item(cf, "file")->valuestring, n, hex,
                     fixture_item(cf, "n")->valueint, fixture_item(cf, "hash")->valuestring);
        free(ids);
        free(text);
    }

    // decode of arbitrary id sequences
    cJSON_ArrayForEach(cf, fixture_item(tf, "decode")) {
        int n;
        int *ids = ids_of(fixture_item(cf, "ids"), &n);
        size_t len, wl;
        char *d = tokenizer_decode(t, ids, n, 0, &len);
        char *w = want_str(cf, "decoded", &wl);
        check_bytes(name, "decode of ids", d, len, w, wl);
        free(d);
        free(w);
        d = tokenizer_decode(t, ids, n, 1, &len);
        w = want_str(cf, "decoded_skip", &wl);
        check_bytes(name, "decode of ids, skip_special", d, len, w, wl);
        free(d);
        free(w);
        free(ids);
    }

    // token <-> id
    cJSON_ArrayForEach(cf, fixture_item(tf, "token_ids")) {
        const char *tok = cJSON_GetArrayItem(cf, 0)->valuestring;
        int id = cJSON_GetArrayItem(cf, 1)->valueint;
        assert_int_equal(tokenizer_token_id(t, tok), id);
        if (id >= 0) assert_string_equal(tokenizer_id_to_token(t, id), tok);
    }
    cJSON_ArrayForEach(cf, fixture_item(tf, "special_ids")) assert_true(tokenizer_is_special(t, cf->valueint));
    assert_false(tokenizer_is_special(t, 0));
    assert_null(tokenizer_id_to_token(t, -1));
    assert_null(tokenizer_id_to_token(t, tokenizer_vocab_size(t)));
    for (int id = 0; id < tokenizer_vocab_size(t); id++) {
        const char *s = tokenizer_id_to_token(t, id);
        if (s) assert_int_equal(tokenizer_token_id(t, s), id);
    }
    tokenizer_free(t);
}

static void test_parity_qwen2(void **state) { parity("qwen2"); }
static void test_parity_cl100k(void **state) { parity("cl100k"); }
static void test_parity_gpt2(void **state) { parity("gpt2"); }
static void test_parity_mixed(void **state) { parity("mixed"); }

// ---------------------------------------------------------------- Unicode helpers

static void expect_nfc(const char *in, const char *want) {
    char *buf = NULL;
    size_t cap = 0;
    size_t n = unicode_nfc(in, strlen(in), &buf, &cap);
    if (n != strlen(want) || memcmp(buf, want, n)) fail_msg("NFC(\"%s\") = \"%.*s\", want \"%s\"", in, (int)n, buf, want);
    free(buf);
}

static void test_nfc(void **state) {
    expect_nfc("", "");
    expect_nfc("plain ascii", "plain ascii");
    // Hangul: L V -> LV, L V T -> LVT, LV T -> LVT; an old-Hangul L (U+1113) does not compose
    expect_nfc("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB", "\xED\x95\x9C");           // 한
    expect_nfc("\xE1\x84\x80\xE1\x85\xA1", "\xEA\xB0\x80");                       // 가
    expect_nfc("\xEA\xB0\x80\xE1\x86\xA8", "\xEA\xB0\x81");                       // 가 + ㄱ -> 각
    expect_nfc("\xE1\x84\x93\xE1\x85\xA1", "\xE1\x84\x93\xE1\x85\xA1");           // U+1113 U+1161 stays
    // Vietnamese: stacked marks in either order compose to the same letter
    expect_nfc("a\xCC\xA3\xCC\x82", "\xE1\xBA\xAD");  // a + dot below + circumflex -> ậ
    expect_nfc("a\xCC\x82\xCC\xA3", "\xE1\xBA\xAD");  // a + circumflex + dot below -> ậ
    expect_nfc("o\xCC\x9B\xCC\x83", "\xE1\xBB\xA1");  // o + horn + tilde -> ỡ
    expect_nfc("e\xCC\x81\xCC\x82", "\xC3\xA9\xCC\x82");  // é then a blocked circumflex
    // only the segments around marks change; starters below U+0300 before them are taken in
    expect_nfc("Vi\xC3\xAA\xCC\xA3t Nam", "Vi\xE1\xBB\x87t Nam");  // ê + dot below -> ệ
    expect_nfc("ab\xC3\xB9\xCC\x81" "cd", "ab\xC3\xB9\xCC\x81" "cd");  // ù + acute: nothing to compose
    expect_nfc("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB\xEA\xB5\xAD\xE1\x84\x8B\xE1\x85\xA5 ok",
               "\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4 ok");  // 한국어 from jamo and a syllable
    // singletons and exclusions decompose: Angstrom and Ohm signs
    expect_nfc("\xE2\x84\xAB", "\xC3\x85");
    expect_nfc("\xE2\x84\xA6", "\xCE\xA9");
    assert_int_equal(unicode_nfc_quick("e\xCC\x81", 3), 0);
    assert_int_equal(unicode_nfc_quick("\xE1\x84\x80\xE1\x85\xA1", 6), 0);  // conjoining jamo
    assert_int_equal(unicode_nfc_quick("\xED\x95\x9C \xE1\xBA\xAD", 7), 1);
}

static void expect_lossy_n(const char *in, size_t n, const char *want, size_t want_len) {
    size_t len;
    char *s = utf8_lossy(in, n, &len);
    assert_int_equal(len, want_len);
    assert_memory_equal(s, want, len);
    free(s);
}

static void expect_lossy(const char *in, size_t n, const char *want) {
    size_t len;
    char *s = utf8_lossy(in, n, &len);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(s, want, len);
    free(s);
}

#define FFFD "\xEF\xBF\xBD"

static void test_utf8_lossy(void **state) {
    // one U+FFFD per maximal subpart of an ill-formed sequence (Unicode 3.9, from_utf8_lossy)
    expect_lossy("ok", 2, "ok");
    expect_lossy("\xF0\x9F\x98", 3, FFFD);                        // truncated 4-byte
    expect_lossy("\xE0\x80", 2, FFFD FFFD);                        // 80 cannot follow E0
    expect_lossy("\xED\xA0\x80", 3, FFFD FFFD FFFD);               // surrogate
    expect_lossy("\xF4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD);      // above U+10FFFF
    expect_lossy("\xC0\xAF", 2, FFFD FFFD);                        // overlong
    expect_lossy("\xE2\x82" "A\xE2\x82\xAC", 6, FFFD "A\xE2\x82\xAC");
    expect_lossy("\xF1\x80\x80\xE1\x80\xC2" "A", 7, FFFD FFFD FFFD "A");
    expect_lossy_n("a\0b\x80", 4, "a\0b" FFFD, 6);  // NUL is valid and kept
    assert_int_equal(utf8_valid_prefix("ab\xC3\xA9\xFF", 5), 4);
}

// invalid UTF-8 input is encoded as its U+FFFD-replaced version
static void test_encode_invalid_utf8(void **state) {
    Tokenizer *t = load_fixture(tok_fixture("qwen2"));
    const char bad[] = "caf\xC3 \xF0\x9F\x98 ok \xFF\xFE";
    size_t clen;
    char *clean = utf8_lossy(bad, sizeof bad - 1, &clen);
    int *a, *b;
    int na = tokenizer_encode(t, bad, sizeof bad - 1, 1, &a);
    int nb = tokenizer_encode(t, clean, clen, 1, &b);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, sizeof(int) * (size_t)na);
    // text with an embedded NUL byte is encoded whole
    int *z;
    int nz = tokenizer_encode(t, "a\0b", 3, 1, &z);
    size_t dl;
    char *d = tokenizer_decode(t, z, nz, 0, &dl);
    assert_int_equal(dl, 3);
    assert_memory_equal(d, "a\0b", 3);
    // empty input
    int *e;
    assert_int_equal(tokenizer_encode(t, "", 0, 1, &e), 0);
    assert_non_null(e);
    char *de = tokenizer_decode(t, e, 0, 0, &dl);
    assert_int_equal(dl, 0);
    assert_string_equal(de, "");
    free(a); free(b); free(clean); free(z); free(d); free(e); free(de);
    tokenizer_free(t);
}

// ---------------------------------------------------------------- threads

typedef struct {
    const Tokenizer *t;
    const char *text;
    size_t len;
    uint64_t hash;
    int n;
} Job;

static void *encode_job(void *arg) {
    Job *j = arg;
    for (int rep = 0; rep < 3; rep++) {
        int *ids;
        j->n = tokenizer_encode(j->t, j->text, j->len, 1, &ids);
        j->hash = fnv1a64(ids, j->n);
        free(ids);
    }
    return NULL;
}

// several threads encoding at once (sharing the word cache) get what one thread gets
static void test_threads(void **state) {
    const cJSON *tf = tok_fixture("qwen2");
    Tokenizer *t = load_fixture(tf);
    const cJSON *cf;
    enum { NT = 6 };
    Job jobs[NT];
    char *texts[NT] = {0};
    pthread_t th[NT];
    int k = 0;
    cJSON_ArrayForEach(cf, fixture_item(tf, "corpus")) {
        if (k >= NT) break;
        size_t len;
        texts[k] = file_read_all(fixture_item(cf, "file")->valuestring, &len);
        assert_non_null(texts[k]);
        jobs[k] = (Job){t, texts[k], len, 0, 0};
        k++;
    }
    for (int i = 0; i < k; i++) pthread_create(&th[i], NULL, encode_job, &jobs[i]);
    for (int i = 0; i < k; i++) pthread_join(th[i], NULL);
    k = 0;
    cJSON_ArrayForEach(cf, fixture_item(tf, "corpus")) {
        if (k >= NT) break;
        char hex[32];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)jobs[k].hash);
        assert_int_equal(jobs[k].n, fixture_item(cf, "n")->valueint);
        assert_string_equal(hex, fixture_item(cf, "hash")->valuestring);
        free(texts[k]);
        k++;
    }
    tokenizer_free(t);
}

// ---------------------------------------------------------------- bad input

static void load_only(void *arg) { tokenizer_load((const char *)arg); }

static char g_tmp[512];

// writes content to a file in the test's temp dir; returns its path (static buffer)
static const char *write_tmp(const char *name, const char *content) {
    static char path[1024];
    if (!g_tmp[0]) make_temp_dir(g_tmp, sizeof g_tmp, "tokenizer");
    snprintf(path, sizeof path, "%s/%s", g_tmp, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
    return path;
}

#define GOOD_MODEL "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}"

static void test_bad_files(void **state) {
    expect_fatal(load_only, (void *)"build/no/such/tokenizer.json", "build/no/such/tokenizer.json", "cannot read");
    const char *p = write_tmp("truncated.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,");
    expect_fatal(load_only, (void *)p, p, "invalid JSON at byte");
    p = write_tmp("garbage.json", "{\"model\": [1, 2,, 3]}");
    expect_fatal(load_only, (void *)p, p, "invalid JSON at byte 16");
    p = write_tmp("empty.json", "");
    expect_fatal(load_only, (void *)p, p, "invalid JSON at byte 0");
    p = write_tmp("array.json", "[1, 2]");
    expect_fatal(load_only, (void *)p, p, "top level is not an object");
    p = write_tmp("nomodel.json", "{\"version\": \"1.0\"}");
    expect_fatal(load_only, (void *)p, p, "no \"model\"");
    p = write_tmp("unigram.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", -1.0]]}}");
    expect_fatal(load_only, (void *)p, p, "model type \"Unigram\" is not supported");
    p = write_tmp("wordpiece.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}");
    expect_fatal(load_only, (void *)p, p, "model type \"WordPiece\" is not supported");
    p = write_tmp("badmerge.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\",\"a c\"]}}");
    expect_fatal(load_only, (void *)p, p, "merge 2 refers to unknown token \"c\"");
    p = write_tmp("badmerge2.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[[\"a\",\"b\"]]}}");
    expect_fatal(load_only, (void *)p, p, "merge 1 refers to unknown token \"ab\"");
    p = write_tmp("badmerge3.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b c\"]}}");
    expect_fatal(load_only, (void *)p, p, "merge 1", "not two tokens");
    p = write_tmp("badmerge4.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"a\"]]}}");
    expect_fatal(load_only, (void *)p, p, "merge 1 is neither");
    p = write_tmp("badid.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-3},\"merges\":[]}}");
    expect_fatal(load_only, (void *)p, p, "non-negative integer id");
    p = write_tmp("nfkc.json", "{\"normalizer\":{\"type\":\"NFKC\"}," GOOD_MODEL "}");
    expect_fatal(load_only, (void *)p, p, "normalizer type \"NFKC\" is not supported");
    p = write_tmp("metaspace.json", "{\"pre_tokenizer\":{\"type\":\"Metaspace\"}," GOOD_MODEL "}");
    expect_fatal(load_only, (void *)p, p, "pre_tokenizer type \"Metaspace\" is not supported");
    p = write_tmp("order.json", "{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"ByteLevel\"},"
                                "{\"type\":\"Digits\"}]}," GOOD_MODEL "}");
    expect_fatal(load_only, (void *)p, p, "ByteLevel must be the last");
    p = write_tmp("badregex.json", "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},\"behavior\":\"Isolated\"}," GOOD_MODEL "}");
    expect_fatal(load_only, (void *)p, p, "regex \"(a\" does not compile");
    p = write_tmp("badbehavior.json", "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Sideways\"}," GOOD_MODEL "}");
    expect_fatal(load_only, (void *)p, p, "behavior \"Sideways\"");
    p = write_tmp("decoder.json", "{\"decoder\":{\"type\":\"WordPiece\"}," GOOD_MODEL "}");
    expect_fatal(load_only, (void *)p, p, "decoder type \"WordPiece\" is not supported");
    p = write_tmp("added.json", "{\"added_tokens\":[{\"id\":5}]," GOOD_MODEL "}");
    expect_fatal(load_only, (void *)p, p, "added token 0 has no \"content\"");
    p = write_tmp("unk.json", "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":{\"a\":0},\"merges\":[]}}");
    expect_fatal(load_only, (void *)p, p, "unk_token \"<unk>\" is not in the vocab");
    p = write_tmp("ctrl.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a \\n\"]}}");
    expect_fatal(load_only, (void *)p, p, "unknown token \"\\x0A\"");  // escaped: still one line
    // an absurd id would size the id tables (about 30 bytes per id: 60 GB here): refused, naming
    // the token; ids stay below the vocab entries + added tokens + 65536
    p = write_tmp("hugeid.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":2000000000},\"merges\":[]}}");
    expect_fatal(load_only, (void *)p, p, "vocab token \"b\" has id 2000000000", "damaged");
    p = write_tmp("capid.json", "{\"added_tokens\":[{\"id\":2,\"content\":\"<s>\"}],"
                                "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":65539},\"merges\":[]}}");
    expect_fatal(load_only, (void *)p, p, "vocab token \"b\" has id 65539", "ids up to 65538");
    p = write_tmp("maxid.json", "{\"added_tokens\":[{\"id\":2,\"content\":\"<s>\"}],"
                                "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":65538},\"merges\":[]}}");
    Tokenizer *t = tokenizer_load(p);  // the largest id allowed (sparse vocabularies load)
    assert_int_equal(tokenizer_vocab_size(t), 65539);
    assert_int_equal(tokenizer_token_id(t, "b"), 65538);
    tokenizer_free(t);
}

// a minimal file without a ByteLevel stage: chars are the symbols, unk and no decoder; the added
// token's id in the file (9) is not what tokenizers gives it: the next after the 7 vocab entries
static void minimal_load(void *arg) { tokenizer_free(tokenizer_load((const char *)arg)); }

static void test_minimal_bpe(void **state) {
    const char *p = write_tmp("minimal.json",
                              "{\"added_tokens\":[{\"id\":9,\"content\":\"<s>\",\"special\":true},{\"id\":10,\"content\":\"\"},"
                              "{\"id\":11,\"content\":\"<s>\",\"special\":true}],"
                              "\"model\":{\"vocab\":{\"<unk>\":0,\"a\":1,\"b\":2,\"ab\":3,\"c\":4,\"abc\":5,\"z\":8},"
                              "\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"merges\":[\"#version: 0.2\",\"a b\",\"ab c\"]}}");
    char err[4096];
    int st = run_child(minimal_load, (void *)p, err, sizeof err);  // to read the warning
    assert_int_equal(st, 0);
    assert_non_null(strstr(err, "1 added token(s) get other ids than the file gives"));
    assert_non_null(strstr(err, "\"<s>\" has id 9 in the file, gets 7"));
    Tokenizer *t = tokenizer_load(p);
    int *ids;
    int n = tokenizer_encode(t, "abcxxab<s>c", 11, 1, &ids);
    int want[] = {5, 0, 3, 7, 4};  // abc, fused unk for "xx", ab, <s>, c
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof want);
    size_t len;
    char *d = tokenizer_decode(t, ids, n, 0, &len);
    assert_string_equal(d, "abc <unk> ab <s> c");  // no decoder: tokens joined by spaces
    free(d);
    d = tokenizer_decode(t, ids, n, 1, &len);
    assert_string_equal(d, "abc <unk> ab c");
    free(d);
    free(ids);
    assert_int_equal(tokenizer_vocab_size(t), 9);  // ids 0-8; 6 is no token
    assert_null(tokenizer_id_to_token(t, 6));
    assert_int_equal(tokenizer_token_id(t, "<s>"), 7);
    int gap[] = {6, 1, 9};
    d = tokenizer_decode(t, gap, 3, 0, &len);
    assert_string_equal(d, "a");
    free(d);
    assert_string_equal(tokenizer_post_processor(t), "none");
    tokenizer_free(t);
}

// Without unk_token, characters outside the vocab are dropped (as tokenizers does): a word can
// encode to no id at all, and is cached as such. Found by fuzz_tokenizer (a memcpy from NULL for
// the empty id list, undefined behaviour; tests/fuzz/regressions/tokenizer keeps the input).
static void test_word_without_ids(void **state) {
    const char *p = write_tmp("no_unk.json", "{\"model\":{\"vocab\":{\"a\":0,\" \":1},\"merges\":[]},"
                                             "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},"
                                             "\"behavior\":\"Isolated\"}}");
    Tokenizer *t = tokenizer_load(p);
    for (int k = 0; k < 2; k++) {  // the second time from the cache
        int *ids;
        int n = tokenizer_encode(t, "xyz a xyz", 9, 0, &ids);
        int want[] = {1, 0, 1};  // "xyz" gives nothing, " ", "a", " "
        assert_int_equal(n, 3);
        assert_memory_equal(ids, want, sizeof want);
        free(ids);
    }
    tokenizer_free(t);
}

// The pre-tokenizer hands split pieces on in batches (4096 per batch) so that a long text's
// offsets are not all held at once: a text of many batches encodes exactly as its lines do
// one by one (each line ends in "\n", where every supported regex ends a piece).
static void test_long_text_batches(void **state) {
    Tokenizer *t = tokenizer_load(fixture_path("tokenizer/qwen2.json"));
    const char *line = "The quick brown fox, 123 jumps; over the lazy dog's back!  Xin chào.\n";
    size_t ll = strlen(line);
    int lines = 3000;  // ~20 pieces each: 60000 pieces, 15 batches
    char *text = xmalloc(ll * lines + 1);
    for (int i = 0; i < lines; i++) memcpy(text + i * ll, line, ll);
    text[ll * lines] = 0;
    int *whole, *one;
    int nw = tokenizer_encode(t, text, ll * lines, 0, &whole);
    int n1 = tokenizer_encode(t, line, ll, 0, &one);
    assert_true(nw > 4 * 4096);  // several batches of pieces (a piece holds one token or more)
    assert_int_equal(nw, n1 * lines);
    for (int i = 0; i < lines; i++) assert_memory_equal(whole + (size_t)i * n1, one, n1 * sizeof(int));
    free(whole);
    free(one);
    free(text);
    tokenizer_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity_qwen2),
        cmocka_unit_test(test_parity_cl100k),
        cmocka_unit_test(test_parity_gpt2),
        cmocka_unit_test(test_parity_mixed),
        cmocka_unit_test(test_nfc),
        cmocka_unit_test(test_utf8_lossy),
        cmocka_unit_test(test_encode_invalid_utf8),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_minimal_bpe),
        cmocka_unit_test(test_long_text_batches),
        cmocka_unit_test(test_word_without_ids),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
