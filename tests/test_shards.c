// test_shards.c: the data pipeline from LLaVA JSON to training batches: the streaming JSON/JSONL
// reader, ./prepare's library (counts, records equal to template_encode, byte-identical output
// for any thread count, every kind of bad sample counted), the shard format's checks (truncated
// or missing shards, index damage, record checksum), and the loader (layout checked by hand,
// permutations, ranks, packing, determinism across thread counts, tell/seek).
// Also built with AddressSanitizer + UBSan (build/tests/asan_test_shards).
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/util.h"
#include "data/image.h"
#include "data/llava_json.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "data/synth.h"
#include "data/template.h"
#include "data/tiling.h"
#include "data/tokenizer.h"
#include "tests/testlib.h"

#define FIX "tests/fixtures/data"
#define IT 4  // image tokens used by these tests

// ---------------------------------------------------------------- helpers

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    uint8_t *b = (uint8_t *)file_read_all(path, n);
    if (!b) fail_msg("cannot read %s", path);
    return b;
}

static int files_equal(const char *a, const char *b) {
    size_t na, nb;
    uint8_t *x = read_bytes(a, &na), *y = read_bytes(b, &nb);
    int eq = na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return eq;
}

static void spec_for(PrepareSpec *s, const char *data, const char *out) {
    prepare_spec_defaults(s);
    s->data = data;
    s->image_folder = FIX "/images";
    s->llm_dir = FIX "/llm";
    s->template_name = "chatml";
    s->out_dir = out;
    s->max_seq_len = 256;
    s->image_tokens = IT;
    s->threads = 2;
    s->quiet = 1;
}

static void run_prepare(const char *data, const char *out, int threads, PrepareSummary *sum) {
    PrepareSpec s;
    spec_for(&s, data, out);
    s.threads = threads;
    prepare_run(&s, sum);
}

static int64_t meta_int(const char *dir, const char *key, const char *sub) {
    char p[1024];
    snprintf(p, sizeof p, "%s/meta.json", dir);
    size_t n;
    char *t = (char *)read_bytes(p, &n);
    cJSON *m = cJSON_Parse(t);
    free(t);
    assert_non_null(m);
    const cJSON *o = sub ? cJSON_GetObjectItemCaseSensitive(m, sub) : m;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) fail_msg("meta.json lacks %s", key);
    int64_t x = (int64_t)v->valuedouble;
    cJSON_Delete(m);
    return x;
}

// no "<out>.tmp-*" or "<out>.old-*" directory left behind
static void assert_no_leftovers(const char *out) {
    char parent[1024];
    snprintf(parent, sizeof parent, "%s", out);
    char *slash = strrchr(parent, '/');
    assert_non_null(slash);
    *slash = 0;
    const char *base = slash + 1;
    DIR *d = opendir(parent);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, base, strlen(base)) && (strstr(e->d_name, ".tmp-") || strstr(e->d_name, ".old-")))
            fail_msg("unfinished output left behind: %s/%s", parent, e->d_name);
    closedir(d);
}

// nothing at all: no <out> and no leftovers
static void assert_no_output(const char *out) {
    assert_false(dir_exists(out));
    assert_no_leftovers(out);
}

static Tokenizer *g_tok;
static Template *g_tmpl;
static char g_json_out[600], g_jsonl_out[600];  // fixtures prepared once (threads 2)
static PrepareSummary g_json_sum, g_jsonl_sum;

static int setup(void **state) {
    g_tok = tokenizer_load(FIX "/llm/tokenizer.json");
    g_tmpl = template_new(TEMPLATE_CHATML, g_tok, NULL, 1002);
    char d[512];
    make_temp_dir(d, sizeof d, "shards-fixture");
    snprintf(g_json_out, sizeof g_json_out, "%s/json", d);
    snprintf(g_jsonl_out, sizeof g_jsonl_out, "%s/jsonl", d);
    run_prepare(FIX "/train.json", g_json_out, 2, &g_json_sum);
    run_prepare(FIX "/train.jsonl", g_jsonl_out, 2, &g_jsonl_sum);
    return 0;
}

static int teardown(void **state) {
    template_free(g_tmpl);
    tokenizer_free(g_tok);
    return 0;
}

static LoaderSpec loader_spec(const char *dir) {
    LoaderSpec s;
    memset(&s, 0, sizeof s);
    s.shard_dir = dir;
    s.batch_size = 4;
    s.max_seq_len = 256;
    s.image_tokens = IT;
    image_prep_preset(&s.prep, IMAGE_PREP_CLIP, 14);
    for (int c = 0; c < 3; c++) s.prep.mean[c] = 0.5f, s.prep.std[c] = 0.25f;
    s.seed = 1234;
    s.world = 1;
    s.threads = 2;
    s.prefetch = 2;
    s.shuffle = 1;
    return s;
}

// ---------------------------------------------------------------- the JSON reader

static void test_reader_tricky_json(void **state) {
    char d[512], p[600];
    make_temp_dir(d, sizeof d, "reader");
    snprintf(p, sizeof p, "%s/t.json", d);
    // brackets and quotes inside strings, escapes, nested unknown fields, a number id, a BOM
    write_text(p, "\xEF\xBB\xBF  [\n"
                  "{\"id\": \"a]\\\"}{[\", \"x\": [[{}], {\"y\": \"]]\"}], \"conversations\": [{\"from\": \"human\", \"value\": \"q \\\\\"}, "
                  "{\"from\": \"gpt\", \"value\": \"a\\n\\u00e9\"}]}\r\n,\t{\"id\": 7, \"image\": null, \"conversations\": []} ,"
                  "{\"id\": \"t\", \"conversations\": {\"from\": \"human\"}}, 5, \"str\",\n"
                  "{\"id\": \"img\", \"image\": [\"x.jpg\"], \"conversations\": [{\"role\": \"user\", \"content\": \"<image>\"}]},"
                  "{\"id\": \"badimg\", \"image\": 3, \"conversations\": []}]\n  ");
    LlavaReader *r = llava_open(p);
    LlavaSample s;
    assert_int_equal(llava_next(r, &s), 1);
    assert_int_equal(s.skip, 0);
    assert_string_equal(s.id, "a]\"}{[");
    assert_int_equal(s.n_turns, 2);
    assert_string_equal(s.turns[0].text, "q \\");
    assert_string_equal(s.turns[1].role, "gpt");
    assert_string_equal(s.turns[1].text, "a\n\xc3\xa9");
    assert_null(s.image);
    assert_int_equal(s.line, 2);
    llava_sample_free(&s);
    assert_int_equal(llava_next(r, &s), 1);
    assert_string_equal(s.id, "7");
    assert_int_equal(s.skip, 0);
    assert_int_equal(s.n_turns, 0);
    llava_sample_free(&s);
    assert_int_equal(llava_next(r, &s), 1);
    assert_int_equal(s.skip, LLAVA_SKIP_BAD_CONVERSATIONS);
    llava_sample_free(&s);
    assert_int_equal(llava_next(r, &s), 1);
    assert_int_equal(s.skip, LLAVA_SKIP_NOT_OBJECT);
    llava_sample_free(&s);
    assert_int_equal(llava_next(r, &s), 1);
    assert_int_equal(s.skip, LLAVA_SKIP_NOT_OBJECT);
    llava_sample_free(&s);
    assert_int_equal(llava_next(r, &s), 1);
    assert_int_equal(s.skip, 0);
    assert_string_equal(s.image, "x.jpg");
    assert_string_equal(s.turns[0].role, "user");
    assert_int_equal(s.line, 4);
    llava_sample_free(&s);
    assert_int_equal(llava_next(r, &s), 1);
    assert_int_equal(s.skip, LLAVA_SKIP_BAD_IMAGE);
    llava_sample_free(&s);
    assert_int_equal(llava_next(r, &s), 0);
    assert_int_equal(llava_next(r, &s), 0);
    llava_close(r);
}

// valid JSON that a C string cannot hold: lone surrogates (Python's json reads them) and NULs in
// the fields used are counted skips naming the byte; a NUL elsewhere, and surrogate pairs, are fine
static void test_reader_bad_strings(void **state) {
    char d[512], p[600];
    make_temp_dir(d, sizeof d, "badstr");
#define TURNS(q, a) "\"conversations\": [{\"from\": \"human\", \"value\": \"" q "\"}, {\"from\": \"gpt\", \"value\": \"" a "\"}]"
    static const char *elems[] = {
        "{\"id\": \"lone\", " TURNS("a \\ud800 b", "x") "}",                  // lone high surrogate
        "{\"id\": \"pair\", " TURNS("\\ud83d\\ude00", "x") "}",             // a pair: U+1F600
        "{\"id\": \"lowfirst\", " TURNS("\\udc00\\ud800", "x") "}",          // low then high: two lone ones
        "{\"id\": \"esc\", " TURNS("\\\\ud800", "x") "}",                    // an escaped backslash, then text
        "{\"id\": \"nul\", " TURNS("before\\u0000after", "x") "}",           // NUL in a turn's text
        "{\"id\": \"nulkey\", \"conversations\": [{\"from\\u0000\": \"human\", \"from\": \"human\", \"value\": \"q\"}, "
        "{\"from\": \"gpt\", \"value\": \"a\"}]}",                           // NUL in a key, the same value either way
        "{\"id\": \"nulother\", \"note\": \"x\\u0000y\", " TURNS("q", "a") "}",  // NUL in an unused field
        "{\"id\": \"i\\u0000d\", " TURNS("q", "a") "}",                       // NUL in the id
        "{\"id\": \"nulrole\", \"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, "
        "{\"from\": \"gpt\\u0000\", \"value\": \"a\"}]}",                 // NUL in a role
        "{\"id\": \"nulkey2\", \"conversations\": [{\"from\\u0000\": \"robot\", \"from\": \"human\", \"value\": \"q\"}, "
        "{\"from\": \"gpt\", \"value\": \"a\"}]}",                           // NUL in a key: cut, it names "from"
    };
    // skip reason (0: kept) and the text that follows the reported byte offset
    static const struct { int skip; const char *at; } want[] = {
        {LLAVA_SKIP_BAD_STRING, "\\ud800 b"}, {0, NULL}, {LLAVA_SKIP_BAD_STRING, "\\udc00"}, {0, NULL},
        {LLAVA_SKIP_BAD_STRING, "\\u0000after"}, {0, NULL}, {0, NULL}, {LLAVA_SKIP_BAD_STRING, "\\u0000d"},
        {LLAVA_SKIP_BAD_STRING, "\\u0000\", \"value\": \"a\""}, {LLAVA_SKIP_BAD_STRING, "\\u0000\": \"robot"},
    };
    const int n = (int)(sizeof elems / sizeof *elems);
    for (int jsonl = 0; jsonl < 2; jsonl++) {
        char *text = xmalloc(1 << 14), *q = text;
        size_t start[16];
        if (!jsonl) q += sprintf(q, "[\n");
        for (int i = 0; i < n; i++) {
            start[i] = (size_t)(q - text);
            q += sprintf(q, "%s%s\n", elems[i], !jsonl && i + 1 < n ? "," : "");
        }
        if (!jsonl) q += sprintf(q, "]\n");
        snprintf(p, sizeof p, "%s/t.%s", d, jsonl ? "jsonl" : "json");
        write_text(p, text);
        LlavaReader *r = llava_open(p);
        LlavaSample smp;
        for (int i = 0; i < n; i++) {
            assert_int_equal(llava_next(r, &smp), 1);
            if (smp.skip != want[i].skip) fail_msg("%s element %d: skip %d (%s), want %d", p, i, smp.skip, smp.why, want[i].skip);
            if (want[i].at) {
                size_t off = (size_t)(strstr(text + start[i], want[i].at) - text);
                char b[48];
                snprintf(b, sizeof b, "at byte %zu", off);
                if (!strstr(smp.why, b)) fail_msg("%s element %d: reason \"%s\" lacks \"%s\"", p, i, smp.why, b);
            }
            if (i == 1) assert_string_equal(smp.turns[0].text, "\xf0\x9f\x98\x80");
            if (i == 3) assert_string_equal(smp.turns[0].text, "\\ud800");
            if (i == 5) assert_string_equal(smp.turns[0].role, "human");
            llava_sample_free(&smp);
        }
        assert_int_equal(llava_next(r, &smp), 0);
        llava_close(r);
        free(text);
    }
    // the skip reason reaches prepare's counts
    char out[600];
    snprintf(p, sizeof p, "%s/t.json", d);
    snprintf(out, sizeof out, "%s/out", d);
    PrepareSpec sp;
    spec_for(&sp, p, out);
    PrepareSummary sum;
    prepare_run(&sp, &sum);
    assert_int_equal(sum.skipped[PREPARE_SKIP_BAD_STRING], 6);
    assert_int_equal(meta_int(out, "bad_string", "skipped"), 6);
    assert_int_equal(sum.samples, 4);
#undef TURNS
}

typedef struct {
    const char *path;
} PathArg;

static void read_all_fn(void *arg) {
    LlavaReader *r = llava_open(((PathArg *)arg)->path);
    LlavaSample s;
    while (llava_next(r, &s)) llava_sample_free(&s);
    llava_close(r);
}

// each malformed file: the one error line names the file and the byte offset of the fault
static void test_reader_malformed_offsets(void **state) {
    static const struct {
        const char *text, *at;  // at: the text where the error is reported (its first occurrence)
        const char *line;
    } cases[] = {
        {"[{\"id\": \"a\", \"conversations\": []},\n {\"id\": \"b\" \"conversations\": []}]", "\"conversations\": []}]", "line 2"},
        {"[{\"id\": \"a\"}\n {\"id\": \"b\"}]", "{\"id\": \"b\"}", "line 2"},         // missing ','
        {"[{\"id\": \"a\"},\n]", "]", "line 2"},                                        // trailing ','
        {"[{\"id\": \"a\"}] x", "x", "line 1"},                                          // data after the list
        {"[{\"id\": \"a\"}, {\"id\": \"b\", \"c\": [1, 2}]", "}]", "line 1"},            // mismatched bracket
        {"[{\"id\": \"a\"},\n{\"id\": \"b\", \"c\": \"unterminated}]\n", NULL, "line 3"},  // ends inside a sample
        {"[{\"id\": tru}]", "tru}]", "line 1"},                                       // at the bad value
        {"[{\"id\": \"\\ud800\", \"x\" 1}]", "1}]", "line 1"},                         // a lone surrogate and a fault
    };
    char d[512], p[600];
    make_temp_dir(d, sizeof d, "malformed");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(p, sizeof p, "%s/bad%zu.json", d, i);
        write_text(p, cases[i].text);
        size_t off = cases[i].at ? (size_t)(strstr(cases[i].text, cases[i].at) - cases[i].text) : strlen(cases[i].text);
        char byte[64];
        snprintf(byte, sizeof byte, "malformed JSON at byte %zu ", off);
        PathArg a = {p};
        expect_fatal(read_all_fn, &a, p, byte, cases[i].line);
    }
    snprintf(p, sizeof p, "%s/obj.json", d);
    write_text(p, "{\"id\": \"a\"}\n");
    PathArg a = {p};
    expect_fatal(read_all_fn, &a, p, "expected a JSON list", ".jsonl");
}

typedef struct {
    PrepareSpec spec;
} SpecArg;

static void prepare_fn(void *arg) {
    PrepareSummary s;
    prepare_run(&((SpecArg *)arg)->spec, &s);
}

// malformed JSON in the middle of a run: one fatal line with the byte offset, no output left
static void test_prepare_malformed_json_fatal(void **state) {
    char d[512], p[600], out[600];
    make_temp_dir(d, sizeof d, "prep-malformed");
    snprintf(p, sizeof p, "%s/bad.json", d);
    snprintf(out, sizeof out, "%s/out", d);
    // 40 good samples, so the workers have written shards before the reader meets the fault
    char *text = xmalloc(1 << 16), *q = text;
    q += sprintf(q, "[\n");
    for (int i = 0; i < 40; i++)
        q += sprintf(q, "{\"id\": \"s%d\", \"conversations\": [{\"from\": \"human\", \"value\": \"Hi %d\"}, "
                        "{\"from\": \"gpt\", \"value\": \"Hello %d.\"}]},\n", i, i, i);
    size_t off = (size_t)(q - text) + strlen("{\"id\": \"bad\", ");
    q += sprintf(q, "{\"id\": \"bad\", \"conversations\" []}\n]\n");
    write_text(p, text);
    free(text);
    SpecArg a;
    spec_for(&a.spec, p, out);
    char byte[64];
    snprintf(byte, sizeof byte, "at byte %zu ", off + strlen("\"conversations\" "));
    expect_fatal(prepare_fn, &a, "bad.json", byte, "line 42");
    assert_no_output(out);
}

// JSONL: a malformed line is a counted skip, the rest is kept
static void test_jsonl_malformed_line_skipped(void **state) {
    assert_int_equal(g_jsonl_sum.samples_read, 21);
    assert_int_equal(g_jsonl_sum.skipped[PREPARE_SKIP_MALFORMED_LINE], 1);
    assert_int_equal(g_jsonl_sum.samples, 15);
    assert_int_equal(meta_int(g_jsonl_out, "malformed_line", "skipped"), 1);
    // the same records as the JSON list: shard files are identical
    char a[1024], b[1024];
    shards_shard_name(a, sizeof a, g_json_out, 0);
    shards_shard_name(b, sizeof b, g_jsonl_out, 0);
    assert_true(files_equal(a, b));
    char d[512], p[600];
    make_temp_dir(d, sizeof d, "jsonl-count");
    snprintf(p, sizeof p, "%s/x.jsonl", d);
    write_text(p, "{}\n\n  \n{}\r\n{}");
    assert_int_equal(llava_count_samples(p), 3);
}

// ---------------------------------------------------------------- prepare

static void test_prepare_counts(void **state) {
    const PrepareSummary *s = &g_json_sum;
    assert_int_equal(s->samples_read, 20);
    assert_int_equal(s->samples, 15);
    assert_int_equal(s->skipped_total, 5);
    assert_int_equal(s->skipped[PREPARE_SKIP_NO_GPT], 1);
    assert_int_equal(s->skipped[PREPARE_SKIP_IMAGE_MISSING], 1);
    assert_int_equal(s->skipped[PREPARE_SKIP_IMAGE_CORRUPT], 2);
    assert_int_equal(s->skipped[PREPARE_SKIP_BAD_CONVERSATIONS], 1);
    assert_int_equal(s->images, 7);
    assert_int_equal(s->truncated, 0);
    assert_int_equal(s->eos_id, 1002);
    assert_true(s->tokens > 0 && s->labelled > 0 && s->labelled < s->tokens);
    const char *o = g_json_out;
    assert_int_equal(meta_int(o, "samples", NULL), 15);
    assert_int_equal(meta_int(o, "images", NULL), 7);
    assert_int_equal(meta_int(o, "tokens", NULL), s->tokens);
    assert_int_equal(meta_int(o, "labelled_tokens", NULL), s->labelled);
    assert_int_equal(meta_int(o, "image_bytes", NULL), s->image_bytes);
    assert_int_equal(meta_int(o, "no_gpt_turn", "skipped"), 1);
    assert_int_equal(meta_int(o, "image_missing", "skipped"), 1);
    assert_int_equal(meta_int(o, "image_corrupt", "skipped"), 2);
    assert_int_equal(meta_int(o, "bad_conversations", "skipped"), 1);
    assert_int_equal(meta_int(o, "skipped_total", NULL), 5);
    assert_int_equal(meta_int(o, "max_seq_len", NULL), 256);
    assert_int_equal(meta_int(o, "image_tokens", NULL), IT);
    assert_int_equal(meta_int(o, "eos_id", NULL), 1002);
    assert_int_equal(meta_int(o, "samples_read", "source"), 20);
    // the index agrees with the summary
    Shards *sh = shards_open(o);
    assert_int_equal(shards_count(sh), 15);
    int64_t tok = 0, lab = 0, img = 0;
    for (int64_t i = 0; i < 15; i++) {
        const ShardEntry *e = shards_entry(sh, i);
        tok += e->n_tokens, lab += e->n_labelled, img += (e->flags & SHARDS_FLAG_IMAGE) != 0;
    }
    assert_int_equal(tok, s->tokens);
    assert_int_equal(lab, s->labelled);
    assert_int_equal(img, 7);
    shards_close(sh);
}

// every record equals template_encode of its source sample, image bytes included
static void test_prepare_records_match_template(void **state) {
    size_t n;
    char *text = (char *)read_bytes(FIX "/train.json", &n);
    cJSON *all = cJSON_Parse(text);
    free(text);
    assert_non_null(all);
    Shards *sh = shards_open(g_json_out);
    ShardReadBuf rb = {0};
    int matched = 0;
    for (int64_t i = 0; i < shards_count(sh); i++) {
        ShardRecord r;
        char err[512];
        assert_int_equal(shards_read(sh, i, &rb, &r, err, sizeof err), 0);
        char id[128];
        snprintf(id, sizeof id, "%.*s", (int)r.id_len, r.id);
        const cJSON *smp = NULL, *x;
        cJSON_ArrayForEach(x, all) {
            const cJSON *j = cJSON_GetObjectItem(x, "id");
            char jid[128];
            if (cJSON_IsString(j)) snprintf(jid, sizeof jid, "%s", j->valuestring);
            else snprintf(jid, sizeof jid, "%d", j->valueint);
            if (!strcmp(jid, id)) smp = x;
        }
        if (!smp) fail_msg("record %lld has id \"%s\", not in the data", (long long)i, id);
        const cJSON *conv = cJSON_GetObjectItem(smp, "conversations");
        Turn turns[8];
        int nt = 0;
        cJSON_ArrayForEach(x, conv) {
            const cJSON *f = cJSON_GetObjectItem(x, "from"), *v = cJSON_GetObjectItem(x, "value");
            if (!f) f = cJSON_GetObjectItem(x, "role"), v = cJSON_GetObjectItem(x, "content");
            turns[nt++] = (Turn){f->valuestring, v->valuestring};
        }
        int *ids, ipos;
        uint8_t *mask;
        int nn = template_encode(g_tmpl, turns, nt, &ids, &mask, &ipos, err, sizeof err);
        assert_int_equal(nn, r.n_tokens);
        assert_int_equal(ipos, r.n_images ? r.images[0].pos : -1);
        assert_memory_equal(ids, r.ids, (size_t)nn * 4);
        assert_memory_equal(mask, r.mask, (size_t)nn);
        free(ids);
        free(mask);
        const cJSON *img = cJSON_GetObjectItem(smp, "image");
        if (cJSON_IsArray(img)) img = cJSON_GetArrayItem(img, 0);
        if (img) {
            char p[512];
            snprintf(p, sizeof p, FIX "/images/%s", img->valuestring);
            size_t in;
            uint8_t *bytes = read_bytes(p, &in);
            assert_int_equal(r.n_images, 1);
            assert_int_equal(in, r.images[0].len);
            assert_memory_equal(bytes, r.images[0].bytes, in);
            free(bytes);
            assert_int_equal(strlen(img->valuestring), r.images[0].name_len);
            assert_memory_equal(img->valuestring, r.images[0].name, r.images[0].name_len);
            assert_true(r.images[0].rows == 1 && r.images[0].cols == 1 && !r.images[0].thumb);  // no tiling
        } else {
            assert_int_equal(r.n_images, 0);
        }
        matched++;
    }
    assert_int_equal(matched, 15);
    shard_readbuf_free(&rb);
    shards_close(sh);
    cJSON_Delete(all);
}

// the output does not depend on the thread count (several shards: a small shard size)
static void test_prepare_threads_identical(void **state) {
    char d[512], o1[600], o4[600], a[1024], b[1024];
    make_temp_dir(d, sizeof d, "threads");
    snprintf(o1, sizeof o1, "%s/t1", d);
    snprintf(o4, sizeof o4, "%s/t4", d);
    PrepareSpec s;
    PrepareSummary s1, s4;
    spec_for(&s, FIX "/train.json", o1);
    s.threads = 1;
    s.shard_bytes = 2000;
    prepare_run(&s, &s1);
    s.out_dir = o4;
    s.threads = 4;
    prepare_run(&s, &s4);
    assert_true(s1.shards >= 3);
    assert_int_equal(s1.shards, s4.shards);
    assert_int_equal(s1.samples, 15);
    const char *names[] = {"meta.json", "index.bin"};
    for (int i = 0; i < 2; i++) {
        path_join(a, sizeof a, o1, names[i]);
        path_join(b, sizeof b, o4, names[i]);
        assert_true(files_equal(a, b));
    }
    for (int i = 0; i < s1.shards; i++) {
        shards_shard_name(a, sizeof a, o1, (uint32_t)i);
        shards_shard_name(b, sizeof b, o4, (uint32_t)i);
        assert_true(files_equal(a, b));
    }
    // running again over an existing prepared directory replaces it
    s.threads = 3;
    prepare_run(&s, &s4);
    path_join(a, sizeof a, o1, "index.bin");
    path_join(b, sizeof b, o4, "index.bin");
    assert_true(files_equal(a, b));
    assert_no_leftovers(o4);
}

// the ./prepare program (built by make test) writes what the library writes, and prints the summary
static void test_prepare_program(void **state) {
    if (!file_exists("prepare")) {
        fprintf(stderr, "./prepare not built: program test skipped\n");
        skip();
    }
    char d[512], out[600], cmd[2048], a[1024], b[1024];
    make_temp_dir(d, sizeof d, "program");
    snprintf(out, sizeof out, "%s/out", d);
    snprintf(cmd, sizeof cmd,
             "./prepare --data " FIX "/train.json --image-folder " FIX "/images --llm " FIX "/llm --template chatml "
             "--out %s --max-seq-len 256 --image-tokens %d --threads 4 --quiet > %s/stdout.txt",
             out, IT, d);
    assert_int_equal(system(cmd), 0);
    snprintf(a, sizeof a, "%s/stdout.txt", d);
    size_t n;
    char *text = (char *)read_bytes(a, &n);
    assert_non_null(strstr(text, "wrote 15 of 20 samples"));
    assert_non_null(strstr(text, "no_gpt_turn 1"));
    assert_non_null(strstr(text, "image_corrupt 2"));
    free(text);
    const char *names[] = {"meta.json", "index.bin", "shard-00000.zst"};
    for (int i = 0; i < 3; i++) {
        path_join(a, sizeof a, out, names[i]);
        path_join(b, sizeof b, g_json_out, names[i]);
        assert_true(files_equal(a, b));
    }
    snprintf(cmd, sizeof cmd, "./prepare --data x.json --llm y --template chatml --out %s/o2 --overlong maybe 2> %s/err.txt", d, d);
    assert_int_not_equal(system(cmd), 0);
    snprintf(a, sizeof a, "%s/err.txt", d);
    text = (char *)read_bytes(a, &n);
    assert_non_null(strstr(text, "--overlong"));
    free(text);
}

static void test_prepare_is_current(void **state) {
    char d[512], data[600], out[600], why[256];
    make_temp_dir(d, sizeof d, "current");
    snprintf(data, sizeof data, "%s/train.json", d);
    snprintf(out, sizeof out, "%s/out", d);
    size_t n;
    char *text = (char *)read_bytes(FIX "/train.json", &n);
    write_text(data, text);
    PrepareSpec s;
    PrepareSummary sum;
    spec_for(&s, data, out);
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 0);
    prepare_run(&s, &sum);
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 1);
    s.max_seq_len = 512;
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 0);
    assert_non_null(strstr(why, "max_seq_len"));
    s.max_seq_len = 256;
    s.image_tokens = 8;
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 0);
    s.image_tokens = IT;
    s.system = "Be brief.";
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 0);
    s.system = NULL;
    s.template_name = "hyperclovax";
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 0);
    s.template_name = "chatml";
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 1);
    struct timespec ts[2] = {{0, UTIME_OMIT}, {12345, 0}};  // same bytes, another mtime
    assert_int_equal(utimensat(AT_FDCWD, data, ts, 0), 0);
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 0);
    assert_non_null(strstr(why, "changed"));
    prepare_run(&s, &sum);
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 1);
    text[n - 1] = ' ';  // another size
    FILE *f = fopen(data, "ab");
    fputs(" ", f);
    fclose(f);
    free(text);
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 0);
}

// one small data file per case: its own count of the reason
static PrepareSummary prepare_text(const char *tag, const char *json, int max_seq_len, int overlong_skip, char *out, size_t cap) {
    char d[512], p[600];
    make_temp_dir(d, sizeof d, tag);
    snprintf(p, sizeof p, "%s/data.json", d);
    snprintf(out, cap, "%s/out", d);
    write_text(p, json);
    PrepareSpec s;
    spec_for(&s, p, out);
    s.max_seq_len = max_seq_len;
    s.overlong_skip = overlong_skip;
    PrepareSummary sum;
    prepare_run(&s, &sum);
    return sum;
}

#define GOOD_SAMPLE "{\"id\": \"ok\", \"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Hello.\"}]}"

static void test_skip_no_gpt(void **state) {
    char out[600];
    PrepareSummary s = prepare_text("no-gpt", "[" GOOD_SAMPLE ", {\"id\": \"x\", \"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}]}]",
                                    256, 0, out, sizeof out);
    assert_int_equal(s.samples, 1);
    assert_int_equal(s.skipped[PREPARE_SKIP_NO_GPT], 1);
    assert_int_equal(s.skipped_total, 1);
    assert_int_equal(meta_int(out, "no_gpt_turn", "skipped"), 1);
}

static void test_skip_missing_image(void **state) {
    char out[600];
    PrepareSummary s = prepare_text("missing-img",
                                    "[" GOOD_SAMPLE ", {\"id\": \"x\", \"image\": \"gone/none.png\", \"conversations\": "
                                    "[{\"from\": \"human\", \"value\": \"<image>\\nHi\"}, {\"from\": \"gpt\", \"value\": \"Hi.\"}]}]",
                                    256, 0, out, sizeof out);
    assert_int_equal(s.samples, 1);
    assert_int_equal(s.skipped[PREPARE_SKIP_IMAGE_MISSING], 1);
    assert_int_equal(s.skipped_total, 1);
    assert_int_equal(meta_int(out, "image_missing", "skipped"), 1);
}

static void test_skip_corrupt_image(void **state) {
    char out[600];
    PrepareSummary s = prepare_text("corrupt-img",
                                    "[" GOOD_SAMPLE ", {\"id\": \"x\", \"image\": \"corrupt.jpg\", \"conversations\": "
                                    "[{\"from\": \"human\", \"value\": \"<image>\\nHi\"}, {\"from\": \"gpt\", \"value\": \"Hi.\"}]},"
                                    "{\"id\": \"y\", \"image\": \"notimage.png\", \"conversations\": "
                                    "[{\"from\": \"human\", \"value\": \"<image>\\nHi\"}, {\"from\": \"gpt\", \"value\": \"Hi.\"}]},"
                                    "{\"id\": \"z\", \"image\": \"sub\", \"conversations\": "
                                    "[{\"from\": \"human\", \"value\": \"<image>\\nHi\"}, {\"from\": \"gpt\", \"value\": \"Hi.\"}]}]",
                                    256, 0, out, sizeof out);
    assert_int_equal(s.samples, 1);
    assert_int_equal(s.skipped[PREPARE_SKIP_IMAGE_CORRUPT], 2);
    assert_int_equal(s.skipped[PREPARE_SKIP_IMAGE_UNREADABLE], 1);  // a directory
    assert_int_equal(meta_int(out, "image_corrupt", "skipped"), 2);
}

static void test_skip_placeholder_mismatch(void **state) {
    char out[600];
    PrepareSummary s = prepare_text("placeholder",
                                    "[" GOOD_SAMPLE ", {\"id\": \"x\", \"image\": \"a.jpg\", \"conversations\": "
                                    "[{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Hi.\"}]},"
                                    "{\"id\": \"y\", \"conversations\": "
                                    "[{\"from\": \"human\", \"value\": \"<image>\\nHi\"}, {\"from\": \"gpt\", \"value\": \"Hi.\"}]},"
                                    "{\"id\": \"z\", \"image\": \"a.jpg\", \"conversations\": "
                                    "[{\"from\": \"human\", \"value\": \"<image><image>\\nHi\"}, {\"from\": \"gpt\", \"value\": \"Hi.\"}]},"
                                    "{\"id\": \"w\", \"conversations\": [{\"from\": \"robot\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Hi.\"}]}]",
                                    256, 0, out, sizeof out);
    assert_int_equal(s.samples, 1);
    assert_int_equal(s.skipped[PREPARE_SKIP_IMAGE_NO_PLACEHOLDER], 1);
    // y (a placeholder, no image) and z (two placeholders, one image): each image needs its own
    assert_int_equal(s.skipped[PREPARE_SKIP_PLACEHOLDER_NO_IMAGE], 2);
    assert_int_equal(s.skipped[PREPARE_SKIP_BAD_ROLE], 1);
}


// Tiles and several images per sample through prepare and the loader: a sample with two images
// (a 2x1 grid + thumbnail, then one tile) and one with a single tiled image, InternVL's slots.
// Each tile's pixels equal image_preprocess_tiles of its image, each tile's start points at its
// <IMG_CONTEXT> run between <img> and </img>, and no slot position carries loss.
static void test_tiled_multi_image(void **state) {
    (void)state;
    char dir[600], p[800], llm[700], imgs[700], out[700];
    make_temp_dir(dir, sizeof dir, "tiled");
    snprintf(llm, sizeof llm, "%s/llm", dir);
    snprintf(imgs, sizeof imgs, "%s/images", dir);
    mkdir(llm, 0755);
    mkdir(imgs, 0755);
    snprintf(p, sizeof p, "%s/tokenizer.json", llm);
    synth_write_tokenizer(p);  // has the markers, ChatML's tokens and <|endoftext|>
    Tokenizer *tok = tokenizer_load(p);
    const int S = 28, sizes[2][2] = {{56, 28}, {28, 28}};
    for (int i = 0; i < 2; i++) {
        int w = sizes[i][0], h = sizes[i][1];
        uint8_t *rgb = xmalloc((size_t)w * h * 3);
        for (int k = 0; k < w * h * 3; k++) rgb[k] = (uint8_t)(k * 7 + i * 50);
        snprintf(p, sizeof p, "%s/im%d.jpg", imgs, i);
        image_write_jpeg(p, rgb, w, h, 90, 1);
        free(rgb);
    }
    snprintf(p, sizeof p, "%s/data.json", dir);
    test_write_file(p, "[{\"id\": \"two\", \"image\": [\"im0.jpg\", \"im1.jpg\"], \"conversations\": [{\"from\": \"human\", "
                       "\"value\": \"First <image> then <image> now?\"}, {\"from\": \"gpt\", \"value\": \"Both.\"}]},"
                       " {\"id\": \"one\", \"image\": \"im0.jpg\", \"conversations\": [{\"from\": \"human\", \"value\": \"<image>\\nWhat?\"},"
                       " {\"from\": \"gpt\", \"value\": \"Wide.\"}]},"
                       " {\"id\": \"three\", \"image\": [\"im0.jpg\", \"im1.jpg\", \"im1.jpg\"], \"conversations\": [{\"from\": \"human\", "
                       "\"value\": \"<image><image><image>\"}, {\"from\": \"gpt\", \"value\": \"Too many.\"}]}]");
    ImagePrep prep;
    image_prep_preset(&prep, IMAGE_PREP_INTERNVL, S);
    prep.max_tiles = 4;
    ImageGrid g0 = image_grid(&prep, 56, 28);
    assert_true(g0.rows == 1 && g0.cols == 2 && g0.thumb == 1);
    PrepareSpec ps;
    prepare_spec_defaults(&ps);
    ps.data = p;
    ps.image_folder = imgs;
    ps.llm_dir = llm;
    ps.template_name = "chatml";
    snprintf(out, sizeof out, "%s/shards", dir);
    ps.out_dir = out;
    ps.max_seq_len = 64;
    ps.image_tokens = 3;
    ps.image_format = "internvl";
    ps.max_images = 2;
    ps.prep = &prep;
    ps.quiet = 1;
    PrepareSummary sum;
    prepare_run(&ps, &sum);
    assert_int_equal(sum.samples, 2);
    assert_int_equal(sum.images, 3);
    assert_int_equal(sum.skipped[PREPARE_SKIP_MULTIPLE_IMAGES], 1);  // three images, max_images 2
    char why[256];
    assert_int_equal(prepare_is_current(out, &ps, why, sizeof why), 1);
    prep.max_tiles = 6;
    assert_int_equal(prepare_is_current(out, &ps, why, sizeof why), 0);  // other tiling: prepared again
    prep.max_tiles = 4;

    ImageSlot slot;
    image_slot_init(&slot, IMAGE_FORMAT_INTERNVL, 3, 4, tok, "tokenizer.json");
    LoaderSpec ls = {.shard_dir = out, .batch_size = 2, .max_seq_len = 64, .image_tokens = 3, .slot = &slot, .prep = prep,
                     .seed = 1, .world = 1, .threads = 2, .prefetch = 1, .shuffle = 0};
    Loader *l = loader_open(&ls);
    LoaderBatch b;
    loader_next(l, &b);
    assert_int_equal(b.n_samples, 2);
    assert_int_equal(b.n_img, 3 + 1 + 3);
    const int img_s = tokenizer_token_id(tok, "<img>"), img_e = tokenizer_token_id(tok, "</img>"),
              ctx = tokenizer_token_id(tok, "<IMG_CONTEXT>");
    // the tiles in order: sample 0 image 0 (3 tiles), image 1 (1), sample 1 image 0 (3)
    const int img_of[7] = {0, 0, 0, 1, 0, 0, 0}, first[7] = {1, 0, 0, 1, 1, 0, 0}, last[7] = {0, 0, 1, 1, 0, 0, 1};
    const int row_of[7] = {0, 0, 0, 0, 1, 1, 1};
    size_t per = (size_t)3 * S * S;
    float *want = xmalloc(3 * per * sizeof(float));
    for (int t = 0; t < 7; t++) {
        int r = b.img_row[t], st = b.img_start[t];
        assert_int_equal(r, row_of[t]);
        const int *ids = b.ids + (size_t)r * b.T;
        if (first[t]) assert_int_equal(ids[st - 1], img_s);
        if (last[t]) assert_int_equal(ids[st + 3], img_e);
        for (int j = 0; j < 3; j++) {
            assert_int_equal(ids[st + j], ctx);
            assert_int_equal(b.targets[(size_t)r * b.T + st + j - 1], -1);  // no loss inside the slot
        }
        if (t > 0 && !first[t]) assert_int_equal(st, b.img_start[t - 1] + 3);  // tiles back to back
        // pixels: the image's tiles as image_preprocess_tiles cuts them
        snprintf(p, sizeof p, "%s/im%d.jpg", imgs, img_of[t]);
        size_t n;
        uint8_t *bytes = (uint8_t *)file_read_all(p, &n);
        Image im;
        char err[200];
        assert_int_equal(image_prep_decode(&prep, bytes, n, &im, err, sizeof err), 0);
        ImageGrid g = image_grid(&prep, im.w, im.h);
        image_preprocess_tiles(&im, &prep, g, want);
        int k = t < 3 ? t : t == 3 ? 0 : t - 4;
        test_expect_same_bits("tile", b.pixels + (size_t)t * per, want + (size_t)k * per, per);
        image_free(&im);
        free(bytes);
    }
    free(want);
    loader_close(l);
    image_slot_free(&slot);
    tokenizer_free(tok);
}

// Idefics3's splitting and slots through prepare and the loader: a 56 x 28 image at tile 28 and
// longest edge 56 is 1 x 2 tiles + the global image, each tile after its
// <fake_token_around_image><row_1_col_j>, the global one after <global-img>
static void test_tiled_idefics3(void **state) {
    (void)state;
    char dir[600], p[800], llm[700], imgs[700], out[700];
    make_temp_dir(dir, sizeof dir, "tiled3");
    snprintf(llm, sizeof llm, "%s/llm", dir);
    snprintf(imgs, sizeof imgs, "%s/images", dir);
    mkdir(llm, 0755);
    mkdir(imgs, 0755);
    snprintf(p, sizeof p, "%s/tokenizer.json", llm);
    synth_write_tokenizer(p);
    Tokenizer *tok = tokenizer_load(p);
    uint8_t *rgb = xmalloc(56 * 28 * 3);
    for (int k = 0; k < 56 * 28 * 3; k++) rgb[k] = (uint8_t)(k * 13);
    snprintf(p, sizeof p, "%s/wide.jpg", imgs);
    image_write_jpeg(p, rgb, 56, 28, 90, 1);
    free(rgb);
    snprintf(p, sizeof p, "%s/data.json", dir);
    test_write_file(p, "[{\"id\": \"a\", \"image\": \"wide.jpg\", \"conversations\": [{\"from\": \"human\", "
                       "\"value\": \"<image>\\nWhat?\"}, {\"from\": \"gpt\", \"value\": \"Wide.\"}]}]");
    ImagePrep prep;
    image_prep_preset(&prep, IMAGE_PREP_IDEFICS3, 28);
    prep.longest_edge = 56;
    prep.max_tiles = 2;  // splitting on
    assert_int_equal(image_tiles_max(&prep), 5);
    PrepareSpec ps;
    prepare_spec_defaults(&ps);
    ps.data = p;
    ps.image_folder = imgs;
    ps.llm_dir = llm;
    ps.template_name = "chatml";
    snprintf(out, sizeof out, "%s/shards", dir);
    ps.out_dir = out;
    ps.max_seq_len = 64;
    ps.image_tokens = 2;
    ps.image_format = "idefics3";
    ps.prep = &prep;
    ps.quiet = 1;
    PrepareSummary sum;
    prepare_run(&ps, &sum);
    assert_int_equal(sum.samples, 1);
    ImageSlot slot;
    image_slot_init(&slot, IMAGE_FORMAT_IDEFICS3, 2, image_grid_max_side(&prep), tok, "tokenizer.json");
    LoaderSpec ls = {.shard_dir = out, .batch_size = 1, .max_seq_len = 64, .image_tokens = 2, .slot = &slot, .prep = prep,
                     .seed = 1, .world = 1, .threads = 1, .prefetch = 1, .shuffle = 0};
    Loader *l = loader_open(&ls);
    LoaderBatch b;
    loader_next(l, &b);
    assert_int_equal(b.n_img, 3);
    const int fake = tokenizer_token_id(tok, "<fake_token_around_image>"), glob = tokenizer_token_id(tok, "<global-img>"),
              image = tokenizer_token_id(tok, "<image>");
    for (int t = 0; t < 3; t++) {
        int st = b.img_start[t];
        assert_int_equal(b.ids[st], image);
        assert_int_equal(b.ids[st + 1], image);
        if (t < 2) {
            char rc[32];
            snprintf(rc, sizeof rc, "<row_1_col_%d>", t + 1);
            assert_int_equal(b.ids[st - 1], tokenizer_token_id(tok, rc));
            assert_int_equal(b.ids[st - 2], fake);
        } else {
            assert_int_equal(b.ids[st - 1], glob);
            assert_int_equal(b.ids[st + 2], fake);
        }
    }
    // the tiles' pixels: image_preprocess_tiles of the image
    size_t n, per = (size_t)3 * 28 * 28;
    snprintf(p, sizeof p, "%s/wide.jpg", imgs);
    uint8_t *bytes = (uint8_t *)file_read_all(p, &n);
    Image im;
    char err[200];
    assert_int_equal(image_prep_decode(&prep, bytes, n, &im, err, sizeof err), 0);
    float *want = xmalloc(3 * per * sizeof(float));
    image_preprocess_tiles(&im, &prep, image_grid(&prep, im.w, im.h), want);
    test_expect_same_bits("idefics3 tiles", b.pixels, want, 3 * per);
    free(want), free(bytes);
    image_free(&im);
    loader_close(l);
    image_slot_free(&slot);
    tokenizer_free(tok);
}

#define LONG_ANSWER "The sea is wide and deep. It changes colour with the sky, from grey to blue to green. " \
                    "Ships cross it every day, and fish live in it. People have always told stories about it."
#define OVERLONG_DATA                                                                                                   \
    "[{\"id\": \"long-img\", \"image\": \"a.jpg\", \"conversations\": [{\"from\": \"human\", \"value\": \"<image>\\nTell me.\"}," \
    " {\"from\": \"gpt\", \"value\": \"" LONG_ANSWER "\"}]},"                                                          \
    " {\"id\": \"long-q\", \"conversations\": [{\"from\": \"human\", \"value\": \"" LONG_ANSWER " " LONG_ANSWER "\"},"    \
    " {\"from\": \"gpt\", \"value\": \"Yes.\"}]}, " GOOD_SAMPLE "]"

// over max_seq_len: cut at the end (never inside the slot) or skipped; counted both ways
static void test_overlong(void **state) {
    char out[600];
    const int msl = 48;
    PrepareSummary s = prepare_text("overlong-cut", OVERLONG_DATA, msl, 0, out, sizeof out);
    // long-img is cut to msl with its slot; long-q has nothing labelled left: skipped as overlong
    assert_int_equal(s.samples, 2);
    assert_int_equal(s.truncated, 1);
    assert_int_equal(s.skipped[PREPARE_SKIP_OVERLONG], 1);
    assert_int_equal(meta_int(out, "truncated", NULL), 1);
    assert_int_equal(meta_int(out, "overlong", "skipped"), 1);
    Shards *sh = shards_open(out);
    const ShardEntry *e = shards_entry(sh, 0);
    assert_int_equal(e->n_tokens + IT, msl);
    assert_true(SHARDS_ENTRY_IMAGES(e) == 1 && e->n_slot == IT);
    assert_true(e->n_labelled > 0);
    ShardReadBuf rb = {0};
    ShardRecord r;
    char err[256];
    assert_int_equal(shards_read(sh, 0, &rb, &r, err, sizeof err), 0);
    // the kept tokens are the first ones of the full encoding
    Turn t[2] = {{"human", "<image>\nTell me."}, {"gpt", LONG_ANSWER}};
    int *ids, ip;
    uint8_t *mask;
    int n = template_encode(g_tmpl, t, 2, &ids, &mask, &ip, err, sizeof err);
    assert_true(n + IT > msl);
    assert_memory_equal(ids, r.ids, (size_t)r.n_tokens * 4);
    assert_memory_equal(mask, r.mask, (size_t)r.n_tokens);
    free(ids);
    free(mask);
    shard_readbuf_free(&rb);
    shards_close(sh);

    s = prepare_text("overlong-skip", OVERLONG_DATA, msl, 1, out, sizeof out);
    assert_int_equal(s.samples, 1);
    assert_int_equal(s.truncated, 0);
    assert_int_equal(s.skipped[PREPARE_SKIP_OVERLONG], 2);
    assert_int_equal(meta_int(out, "overlong", "skipped"), 2);
}

static void test_prepare_bad_inputs_fatal(void **state) {
    char d[512], p[600], out[600];
    make_temp_dir(d, sizeof d, "prep-fatal");
    snprintf(out, sizeof out, "%s/out", d);
    SpecArg a;
    spec_for(&a.spec, FIX "/nothere.json", out);
    expect_fatal(prepare_fn, &a, "nothere.json", "cannot open");
    snprintf(p, sizeof p, "%s/empty.json", d);
    write_text(p, "[]");
    spec_for(&a.spec, p, out);
    expect_fatal(prepare_fn, &a, "empty.json", "no usable sample");
    assert_no_output(out);
    spec_for(&a.spec, FIX "/train.json", out);
    a.spec.template_name = "alpaca";
    expect_fatal(prepare_fn, &a, "alpaca");
    spec_for(&a.spec, FIX "/train.json", out);
    a.spec.llm_dir = FIX "/images";
    expect_fatal(prepare_fn, &a, "tokenizer.json");
    // an existing directory that is not prepare's output is never replaced
    spec_for(&a.spec, FIX "/train.json", FIX "/images");
    expect_fatal(prepare_fn, &a, "not a prepared data directory");
}

// Data with images and no --image-folder: one fatal line from the reading thread, naming the data
// file and the first such sample, whatever the thread count. (It used to come from every worker at
// once: exit() from several threads, a crash in most runs with 16 threads.) Run many times, so
// that a crash or a second error line would show.
static void test_prepare_images_without_folder_fatal(void **state) {
    char d[512], p[600], out[600];
    make_temp_dir(d, sizeof d, "no-folder");
    snprintf(p, sizeof p, "%s/img.json", d);
    snprintf(out, sizeof out, "%s/out", d);
    char *text = xmalloc(1 << 20), *q = text;
    q += sprintf(q, "[\n" GOOD_SAMPLE ",\n");
    for (int i = 0; i < 600; i++)
        q += sprintf(q, "{\"id\": \"s%d\", \"image\": \"a.jpg\", \"conversations\": [{\"from\": \"human\", \"value\": "
                        "\"<image>\\nHi\"}, {\"from\": \"gpt\", \"value\": \"Hello.\"}]}%s\n", i, i + 1 < 600 ? "," : "");
    q += sprintf(q, "]\n");
    write_text(p, text);
    free(text);
    SpecArg a;
    spec_for(&a.spec, p, out);
    a.spec.image_folder = NULL;
    a.spec.threads = 16;
    for (int run = 0; run < 12; run++) expect_fatal(prepare_fn, &a, "img.json", "sample 1 (line 3)", "a.jpg", "--image-folder");
    assert_no_output(out);
    // text-only data needs no folder
    PrepareSummary sum;
    snprintf(p, sizeof p, "%s/text.json", d);
    write_text(p, "[" GOOD_SAMPLE "]");
    spec_for(&a.spec, p, out);
    a.spec.image_folder = NULL;
    prepare_run(&a.spec, &sum);
    assert_int_equal(sum.samples, 1);
}

// an id over SHARDS_MAX_ID_BYTES (which the reader refuses) is a counted skip; one at the limit
// is written and reads back
static void test_prepare_id_limit(void **state) {
    char d[512], p[600], out[600];
    make_temp_dir(d, sizeof d, "idlimit");
    snprintf(p, sizeof p, "%s/ids.jsonl", d);
    snprintf(out, sizeof out, "%s/out", d);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    for (int k = 0; k < 2; k++) {
        fputs("{\"id\": \"", f);
        for (uint32_t i = 0; i < SHARDS_MAX_ID_BYTES + (uint32_t)k; i++) fputc('a' + i % 26, f);
        fputs("\", \"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Hello.\"}]}\n", f);
    }
    fclose(f);
    PrepareSpec sp;
    spec_for(&sp, p, out);
    PrepareSummary sum;
    prepare_run(&sp, &sum);
    assert_int_equal(sum.samples, 1);
    assert_int_equal(sum.skipped[PREPARE_SKIP_ID_TOO_LONG], 1);
    assert_int_equal(meta_int(out, "id_too_long", "skipped"), 1);
    Shards *sh = shards_open(out);
    ShardReadBuf rb = {0};
    ShardRecord r;
    char err[256];
    assert_int_equal(shards_read(sh, 0, &rb, &r, err, sizeof err), 0);
    assert_int_equal(r.id_len, SHARDS_MAX_ID_BYTES);
    shard_readbuf_free(&rb);
    shards_close(sh);
    // the parser's limits are the header's
    uint8_t ids[4] = {0}, mask[1] = {1};
    char *big = xmalloc(SHARDS_MAX_ID_BYTES + 1);
    memset(big, 'x', SHARDS_MAX_ID_BYTES + 1);
    for (int which = 0; which < 2; which++)
        for (uint32_t extra = 0; extra < 2; extra++) {
            uint32_t len = (which ? SHARDS_MAX_NAME_BYTES : SHARDS_MAX_ID_BYTES) + extra;
            ShardRecord w = {.n_tokens = 1, .n_images = which, .ids = (const int32_t *)ids, .mask = mask, .id = big,
                             .id_len = which ? 1 : len};
            w.images[0] = (ShardImage){.pos = 0, .rows = 1, .cols = 1, .name = big, .name_len = len, .bytes = mask, .len = 1};
            size_t n;
            uint8_t *raw = shards_record_pack(&w, &n);
            assert_int_equal(shards_record_parse(raw, n, &r, err, sizeof err), extra ? -1 : 0);
            free(raw);
        }
    free(big);
}

// dead runs' "<out>.tmp-HOST-PID" / "<out>.old-HOST-PID" of this host are removed; another host's
// (shared storage: its run may be alive, kill() cannot tell) and live runs' are kept
static void test_prepare_stale_tmp_by_host(void **state) {
    char d[512], out[600], host[80], p[1024];
    make_temp_dir(d, sizeof d, "stale");
    snprintf(out, sizeof out, "%s/out", d);
    prepare_host_tag(host, sizeof host);
    assert_true(host[0] != 0);
    for (const char *c = host; *c; c++) assert_non_null(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", *c));
    pid_t dead = fork();  // a pid that no process has any more
    if (dead == 0) _exit(0);
    assert_true(dead > 0);
    waitpid(dead, NULL, 0);
    char other[100];
    snprintf(other, sizeof other, "not-%s", host);
    const struct { const char *kind, *host; int pid; int removed; } dirs[] = {
        {"tmp", host, (int)dead, 1}, {"old", host, (int)dead, 1}, {"tmp", other, (int)dead, 0},
        {"old", other, (int)dead, 0}, {"tmp", host, (int)getppid(), 0},
    };
    const int nd = (int)(sizeof dirs / sizeof *dirs);
    for (int i = 0; i < nd; i++) {
        snprintf(p, sizeof p, "%s.%s-%s-%d", out, dirs[i].kind, dirs[i].host, dirs[i].pid);
        assert_int_equal(mkdir(p, 0755), 0);
        strcat(p, "/meta.json");
        write_text(p, "{}");
    }
    PrepareSummary sum;
    run_prepare(FIX "/train.json", out, 2, &sum);
    for (int i = 0; i < nd; i++) {
        snprintf(p, sizeof p, "%s.%s-%s-%d", out, dirs[i].kind, dirs[i].host, dirs[i].pid);
        if (dir_exists(p) == dirs[i].removed) fail_msg("%s: %s", p, dirs[i].removed ? "not removed" : "removed");
        if (!dirs[i].removed) {
            char m[1100];
            snprintf(m, sizeof m, "%s/meta.json", p);
            unlink(m);
            rmdir(p);
        }
    }
    assert_no_leftovers(out);
}

static void disk_full_fn(void *arg) {
    struct rlimit rl = {3000, 3000};  // files may not grow past 3000 bytes: writes fail with EFBIG
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &rl);
    prepare_fn(arg);
}

// a failed write (here a file size limit; a full disk the same) is one line, output removed
static void test_prepare_write_failure(void **state) {
    char d[512], out[600];
    make_temp_dir(d, sizeof d, "diskfull");
    snprintf(out, sizeof out, "%s/out", d);
    SpecArg a;
    spec_for(&a.spec, FIX "/train.json", out);
    expect_fatal(disk_full_fn, &a, "shard-00000.zst", "write failed", "removed");
    assert_no_output(out);
}

// ---------------------------------------------------------------- shard damage

static void copy_dir(const char *src, const char *dst) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", dst, src, dst);
    assert_int_equal(system(cmd), 0);
}

static void open_fn(void *arg) {
    LoaderSpec s = loader_spec((const char *)arg);
    Loader *l = loader_open(&s);
    loader_close(l);
}

static void open_prep_unset_fn(void *arg) {
    LoaderSpec s = loader_spec((const char *)arg);
    memset(&s.prep, 0, sizeof s.prep);  // never set up: filter 0 (nearest) is no resampler
    s.prep.size = 14;
    for (int c = 0; c < 3; c++) s.prep.std[c] = 1;
    loader_open(&s);
}

// a LoaderSpec whose ImagePrep was never set up is refused when the loader opens, not by a worker
// at the first image
static void test_loader_prep_unset(void **state) {
    expect_fatal(open_prep_unset_fn, g_json_out, "loader", "image preprocessing not set up");
}

static void test_truncated_shard_fatal(void **state) {
    char d[512], dir[600], p[1024];
    make_temp_dir(d, sizeof d, "trunc");
    snprintf(dir, sizeof dir, "%s/s", d);
    copy_dir(g_json_out, dir);
    shards_shard_name(p, sizeof p, dir, 0);
    struct stat st;
    stat(p, &st);
    assert_int_equal(truncate(p, st.st_size - 7), 0);
    expect_fatal(open_fn, dir, "shard-00000.zst", "truncated", "re-run ./prepare");
    assert_int_equal(unlink(p), 0);
    expect_fatal(open_fn, dir, "shard-00000.zst", "missing", "re-run ./prepare");
    path_join(p, sizeof p, dir, "meta.json");
    unlink(p);
    expect_fatal(open_fn, dir, "meta.json", "prepare");
}

// meta.json with `key` set to the raw JSON text val (cJSON keeps it verbatim)
static void rewrite_meta(const char *dir, const char *key, const char *val) {
    char p[1024];
    path_join(p, sizeof p, dir, "meta.json");
    size_t n;
    char *t = (char *)read_bytes(p, &n);
    cJSON *m = cJSON_Parse(t);
    free(t);
    assert_non_null(m);
    cJSON_ReplaceItemInObjectCaseSensitive(m, key, cJSON_CreateRaw(val));
    char *out = cJSON_Print(m);
    write_text(p, out);
    free(out);
    cJSON_Delete(m);
}

// meta.json's counts were cast to int64 unchecked: 1e300 (undefined), -1, 2.5 (cut to 2)
static void test_meta_numbers_range_checked(void **state) {
    char d[512], dir[600];
    make_temp_dir(d, sizeof d, "metanum");
    snprintf(dir, sizeof dir, "%s/s", d);
    const char *bad[] = {"1e300", "-1", "2.5", "1e999", "-1e300"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        copy_dir(g_json_out, dir);
        rewrite_meta(dir, "samples", bad[i]);
        expect_fatal(open_fn, dir, "meta.json", "key \"samples\" must be an integer in [0, ");
        copy_dir(g_json_out, dir);
        rewrite_meta(dir, "shards", bad[i]);
        expect_fatal(open_fn, dir, "meta.json", "key \"shards\" must be an integer in [1, ");
    }
    copy_dir(g_json_out, dir);  // the loader's own reads of meta.json
    rewrite_meta(dir, "image_tokens", "1e300");
    expect_fatal(open_fn, dir, "meta.json", "key \"image_tokens\" must be an integer in [1, 65536]");
    copy_dir(g_json_out, dir);
    rewrite_meta(dir, "max_seq_len", "256.5");
    expect_fatal(open_fn, dir, "meta.json", "key \"max_seq_len\" must be an integer");
}

static void rewrite_index(const char *dir, int64_t entry, uint64_t new_offset, int fix_hash) {
    char p[1024];
    path_join(p, sizeof p, dir, "index.bin");
    size_t n;
    uint8_t *b = read_bytes(p, &n);
    uint32_t ns;
    memcpy(&ns, b + 12, 4);
    uint8_t *e = b + SHARDS_INDEX_HEADER_BYTES + 8 * ns + SHARDS_ENTRY_BYTES * entry;
    memcpy(e + 8, &new_offset, 8);
    if (fix_hash) {
        uint64_t h = shards_fnv1a64(b, n - 8, SHARDS_FNV_INIT);
        memcpy(b + n - 8, &h, 8);
    }
    FILE *f = fopen(p, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
    free(b);
}

static void test_index_damage_fatal(void **state) {
    char d[512], dir[600], p[1024];
    make_temp_dir(d, sizeof d, "index");
    snprintf(dir, sizeof dir, "%s/s", d);
    copy_dir(g_json_out, dir);
    shards_shard_name(p, sizeof p, dir, 0);
    struct stat st;
    stat(p, &st);
    rewrite_index(dir, 3, (uint64_t)st.st_size - 10, 1);
    expect_fatal(open_fn, dir, "index.bin", "entry 3", "beyond the end of", "shard-00000.zst", "re-run ./prepare");
    rewrite_index(dir, 3, 100, 0);  // the hash no longer matches
    expect_fatal(open_fn, dir, "index.bin", "checksum", "re-run ./prepare");
    path_join(p, sizeof p, dir, "index.bin");
    stat(p, &st);
    assert_int_equal(truncate(p, st.st_size - 1), 0);
    expect_fatal(open_fn, dir, "index.bin", "truncated");
}

typedef struct {
    const char *dir;
    int64_t bad;  // the damaged sample
} EpochArg;

// child: reads two epochs; exits 0 when every sample but the damaged one arrived each epoch
static void epoch_counts_fn(void *arg) {
    EpochArg *a = arg;
    LoaderSpec s = loader_spec(a->dir);
    s.shuffle = 0;
    s.batch_size = 3;
    Loader *l = loader_open(&s);
    int64_t per = loader_samples_per_rank(l);
    for (int ep = 0; ep < 2; ep++) {
        int64_t got = 0, skipped = 0;
        while (got + skipped < per) {
            LoaderBatch b;
            int64_t e = loader_next(l, &b);
            if (e != ep) exit(10);
            got += b.n_samples, skipped += b.n_skipped;
            for (int i = 0; i < b.B * b.T; i++)
                if (b.ids[i] < 0 || b.ids[i] >= 1004) exit(11);  // never garbage tokens
        }
        if (skipped != 1 || got != per - 1) exit(12);
    }
    loader_close(l);
    exit(0);
}

// a damaged record fails its checksum: counted, warned once (shard and sample named), no crash
static void test_corrupt_record_skipped(void **state) {
    char d[512], dir[600], p[1024];
    make_temp_dir(d, sizeof d, "corrupt-rec");
    snprintf(dir, sizeof dir, "%s/s", d);
    copy_dir(g_json_out, dir);
    Shards *sh = shards_open(dir);
    int64_t big = 0;
    for (int64_t i = 0; i < shards_count(sh); i++)
        if (shards_entry(sh, i)->csize > shards_entry(sh, big)->csize) big = i;
    ShardEntry e = *shards_entry(sh, big);
    shards_close(sh);
    shards_shard_name(p, sizeof p, dir, e.shard);
    FILE *f = fopen(p, "r+b");
    fseek(f, (long)(e.offset + e.csize / 2), SEEK_SET);
    int c = fgetc(f);
    fseek(f, (long)(e.offset + e.csize / 2), SEEK_SET);
    fputc(c ^ 0x20, f);
    fclose(f);
    // shards_read reports it
    sh = shards_open(dir);
    ShardReadBuf rb = {0};
    ShardRecord r;
    char err[512];
    assert_int_equal(shards_read(sh, big, &rb, &r, err, sizeof err), -1);
    assert_non_null(strstr(err, "shard-00000.zst"));
    char want[64];
    snprintf(want, sizeof want, "sample %lld", (long long)big);
    assert_non_null(strstr(err, want));
    for (int64_t i = 0; i < shards_count(sh); i++)
        if (i != big) assert_int_equal(shards_read(sh, i, &rb, &r, err, sizeof err), 0);
    shard_readbuf_free(&rb);
    shards_close(sh);
    // the loader skips it, two epochs, one warning
    static char buf[1 << 14];
    EpochArg a = {dir, big};
    int st = run_child(epoch_counts_fn, &a, buf, sizeof buf);
    if (st != 0) fail_msg("loader child exited %d: %s", st, buf);
    const char *w = strstr(buf, "svlm: warning:");
    assert_non_null(w);
    assert_non_null(strstr(buf, want));
    assert_non_null(strstr(buf, "shard-00000.zst"));
    assert_null(strstr(w + 1, "svlm: warning:"));  // once per sample
}

// ---------------------------------------------------------------- hand-made shards

typedef struct {
    int n;
    int ids[16];
    uint8_t mask[16];
    int image_pos;
    const char *image;  // file under FIX/images, or "!bad" for bytes that do not decode
} HandRec;

// writes a shard directory with these records (meta.json with just what the loader reads)
static void write_hand_shards(const char *dir, const HandRec *recs, int n, int image_tokens, int max_seq_len, int64_t shard_bytes) {
    mkdir(dir, 0755);
    ShardWriter *w = shard_writer_open(dir, shard_bytes);
    void *cctx = shards_cctx_new(3);
    for (int i = 0; i < n; i++) {
        const HandRec *h = &recs[i];
        uint8_t *img = NULL;
        size_t img_len = 0;
        if (h->image && !strcmp(h->image, "!bad")) {
            img = (uint8_t *)xstrdup("\x89PNG\r\n\x1a\n garbage");
            img_len = 16;
        } else if (h->image) {
            char p[512];
            snprintf(p, sizeof p, FIX "/images/%s", h->image);
            img = read_bytes(p, &img_len);
        }
        char id[32];
        snprintf(id, sizeof id, "h%d", i);
        ShardRecord r = {.n_tokens = h->n, .n_images = h->image != NULL, .ids = (const int32_t *)h->ids, .mask = h->mask,
                         .id = id, .id_len = (uint32_t)strlen(id)};
        if (h->image)
            r.images[0] = (ShardImage){.pos = h->image_pos, .rows = 1, .cols = 1, .name = h->image,
                                       .name_len = (uint32_t)strlen(h->image), .bytes = img, .len = (uint32_t)img_len};
        size_t rl, fl;
        uint8_t *raw = shards_record_pack(&r, &rl);
        uint8_t *frame = shards_compress(cctx, raw, rl, &fl);
        ShardEntry e = {.flags = h->image ? SHARDS_FLAG_IMAGE | 1u << 8 : 0, .n_tokens = (uint32_t)h->n,
                        .n_slot = h->image ? (uint32_t)image_tokens : 0};
        int lab = 0;
        for (int t = 0; t < h->n; t++) lab += h->mask[t] && (t > 0 || h->image_pos == 0);
        e.n_labelled = (uint32_t)lab;
        shard_writer_add(w, frame, fl, &e);
        free(raw);
        free(frame);
        free(img);
    }
    shards_cctx_free(cctx);
    uint32_t ns = shard_writer_finish(w, NULL);
    char p[1024], meta[512];
    path_join(p, sizeof p, dir, "meta.json");
    snprintf(meta, sizeof meta,
             "{\"format\": \"svlm-shards\", \"version\": %d, \"samples\": %d, \"shards\": %u, \"image_tokens\": %d, "
             "\"max_seq_len\": %d}\n",
             SHARDS_VERSION, n, ns, image_tokens, max_seq_len);
    write_text(p, meta);
}

static const HandRec HAND3[3] = {
    {4, {10, 11, 12, 13}, {0, 0, 1, 1}, -1, NULL},
    {3, {20, 21, 22}, {0, 1, 1}, 1, "a.jpg"},
    {2, {30, 31}, {0, 1}, -1, NULL},
};

static void expect_row(const LoaderBatch *b, int r, const int *ids, const int *tg, const int *pos, const int *seg) {
    for (int t = 0; t < b->T; t++) {
        size_t i = (size_t)r * b->T + t;
        if (b->ids[i] != ids[t] || b->targets[i] != tg[t] || b->pos[i] != pos[t] || (seg && b->seg[i] != seg[t]))
            fail_msg("row %d position %d: id %d target %d pos %d seg %d, want %d %d %d %d", r, t, b->ids[i], b->targets[i],
                     b->pos[i], b->seg ? b->seg[i] : 0, ids[t], tg[t], pos[t], seg ? seg[t] : 0);
    }
}

// HAND3's shards in a new temp dir (its path in dir) and a loader spec over them: 3-token image
// slots of 10-pixel images, rows up to 12 tokens
static LoaderSpec hand3_spec(char *dir, size_t cap, const char *tag) {
    char d[512];
    make_temp_dir(d, sizeof d, tag);
    snprintf(dir, cap, "%s/s", d);
    write_hand_shards(dir, HAND3, 3, 3, 8, 0);
    LoaderSpec s = loader_spec(dir);
    s.image_tokens = 3;
    s.max_seq_len = 12;
    s.prep.size = 10;
    return s;
}

// the layout by hand: padding, targets, positions, the image slot, pixels
static void test_loader_layout_by_hand(void **state) {
    char dir[600];
    LoaderSpec s = hand3_spec(dir, sizeof dir, "hand");
    s.batch_size = 3;
    s.shuffle = 0;
    Loader *l = loader_open(&s);
    assert_int_equal(loader_samples(l), 3);
    LoaderBatch b;
    assert_int_equal(loader_next(l, &b), 0);
    assert_int_equal(b.B, 3);
    assert_int_equal(b.T, 6);
    assert_null(b.seg);
    assert_int_equal(b.n_samples, 3);
    assert_int_equal(b.n_skipped, 0);
    assert_int_equal(b.n_labelled, 5);
    expect_row(&b, 0, (int[]){10, 11, 12, 13, 0, 0}, (int[]){-1, 12, 13, -1, -1, -1}, (int[]){0, 1, 2, 3, 4, 5}, NULL);
    expect_row(&b, 1, (int[]){20, 0, 0, 0, 21, 22}, (int[]){-1, -1, -1, 21, 22, -1}, (int[]){0, 1, 2, 3, 4, 5}, NULL);
    expect_row(&b, 2, (int[]){30, 31, 0, 0, 0, 0}, (int[]){31, -1, -1, -1, -1, -1}, (int[]){0, 1, 2, 3, 4, 5}, NULL);
    assert_int_equal(b.n_img, 1);
    assert_int_equal(b.img_row[0], 1);
    assert_int_equal(b.img_start[0], 1);
    size_t n;
    uint8_t *bytes = read_bytes(FIX "/images/a.jpg", &n);
    Image im;
    char err[128];
    assert_int_equal(image_decode(bytes, n, &im, err, sizeof err), 0);
    float *want = xmalloc(3 * 10 * 10 * sizeof(float));
    image_preprocess(&im, &s.prep, want);
    assert_memory_equal(want, b.pixels, 3 * 10 * 10 * sizeof(float));
    LoaderPos p = loader_tell(l);
    assert_int_equal(p.epoch, 1);
    assert_int_equal(p.index, 0);
    loader_close(l);

    // packing: all three in one row of 12, then (max 11) two rows
    s.packing = 1;
    s.prep.pad_to_square = 1;
    l = loader_open(&s);
    assert_int_equal(loader_next(l, &b), 0);
    assert_int_equal(b.B, 1);
    assert_int_equal(b.T, 12);
    assert_non_null(b.seg);
    expect_row(&b, 0, (int[]){10, 11, 12, 13, 20, 0, 0, 0, 21, 22, 30, 31},
               (int[]){-1, 12, 13, -1, -1, -1, -1, 21, 22, -1, 31, -1}, (int[]){0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 1},
               (int[]){0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2});
    assert_int_equal(b.img_row[0], 0);
    assert_int_equal(b.img_start[0], 5);
    assert_int_equal(b.n_labelled, 5);
    image_preprocess(&im, &s.prep, want);
    assert_memory_equal(want, b.pixels, 3 * 10 * 10 * sizeof(float));
    loader_close(l);
    s.max_seq_len = 11;
    l = loader_open(&s);
    assert_int_equal(loader_next(l, &b), 0);
    assert_int_equal(b.B, 2);
    assert_int_equal(b.T, 10);
    expect_row(&b, 1, (int[]){30, 31, 0, 0, 0, 0, 0, 0, 0, 0}, (int[]){31, -1, -1, -1, -1, -1, -1, -1, -1, -1},
               (int[]){0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, (int[]){0, 0, -1, -1, -1, -1, -1, -1, -1, -1});
    loader_close(l);
    image_free(&im);
    free(want);
    free(bytes);
}

// ---- LoaderSpec.host_alloc: a backend's host memory, uploaded from in place (issue 19)

// a stand-in for Kernels.host_alloc / host_ready: each block is "being read" (pending) from the
// test's upload of the batch until host_ready says the device is done with it
#define HOST_BLOCKS 32
static struct {
    pthread_mutex_t mu;
    char *p[HOST_BLOCKS];
    size_t bytes[HOST_BLOCKS];
    int pending[HOST_BLOCKS], n, readies;
} hb = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int hb_find(const void *p) {  // with hb.mu held
    for (int i = 0; i < hb.n; i++)
        if (hb.p[i] && (const char *)p >= hb.p[i] && (const char *)p < hb.p[i] + hb.bytes[i]) return i;
    return -1;
}
static void *hb_alloc(size_t bytes) {
    pthread_mutex_lock(&hb.mu);
    CHECK(hb.n < HOST_BLOCKS, "test: too many host blocks");
    int i = hb.n++;
    hb.p[i] = xmalloc(bytes ? bytes : 1);
    hb.bytes[i] = bytes ? bytes : 1;
    hb.pending[i] = 0;
    pthread_mutex_unlock(&hb.mu);
    return hb.p[i];
}
static void hb_ready(const void *p) {
    pthread_mutex_lock(&hb.mu);
    int i = hb_find(p);
    CHECK(i >= 0, "test: host_ready of memory host_alloc did not give");
    hb.pending[i] = 0;
    hb.readies++;
    pthread_mutex_unlock(&hb.mu);
}
static void hb_free(void *p) {
    pthread_mutex_lock(&hb.mu);
    int i = hb_find(p);
    CHECK(i >= 0 && hb.p[i] == p, "test: host_free of memory host_alloc did not give");
    free(hb.p[i]);
    hb.p[i] = NULL;
    pthread_mutex_unlock(&hb.mu);
}
// the batch's array p lies in a block, which is not being read any more; it is from now on
static void hb_upload(const void *p, size_t bytes) {
    pthread_mutex_lock(&hb.mu);
    int i = hb_find(p);
    if (i < 0) fail_msg("a batch array uploaded in place is not in the backend's host memory");
    assert_true((const char *)p + bytes <= hb.p[i] + hb.bytes[i]);
    if (hb.pending[i]) fail_msg("a slot was refilled without host_ready: the device may still be copying it");
    hb.pending[i] = 1;
    pthread_mutex_unlock(&hb.mu);
}

// bf16 pixels and segments in the caller's host memory: host_ready on a slot's arrays before
// every refill, the same batches as with malloc, every block given back at close
static void test_loader_host_memory(void **state) {
    char dir[600];
    LoaderSpec s = hand3_spec(dir, sizeof dir, "hostmem");
    s.batch_size = 1;
    s.packing = 1;
    s.pixels_bf16 = 1;
    Loader *plain = loader_open(&s);
    s.host_alloc = hb_alloc;
    s.host_free = hb_free;
    s.host_ready = hb_ready;
    Loader *l = loader_open(&s);
    int with_image = 0;
    for (int step = 0; step < 12; step++) {  // 4 epochs of 3 batches through prefetch + 1 = 3 slots
        LoaderBatch a, b;
        assert_int_equal(loader_next(plain, &a), loader_next(l, &b));
        assert_int_equal(a.B * a.T, b.B * b.T);
        assert_memory_equal(a.ids, b.ids, (size_t)a.B * a.T * sizeof(int));
        assert_memory_equal(a.seg, b.seg, (size_t)a.B * a.T * sizeof(int));
        hb_upload(b.seg, (size_t)b.B * b.T * sizeof(int));
        assert_int_equal(a.n_img, b.n_img);
        if (b.n_img) {
            size_t np = (size_t)b.n_img * 3 * 10 * 10;
            assert_memory_equal(a.pixels_bf16, b.pixels_bf16, np * sizeof(uint16_t));
            hb_upload(b.pixels_bf16, np * sizeof(uint16_t));
            with_image++;
        }
    }
    assert_int_equal(with_image, 4);
    loader_seek(l, (LoaderPos){0, 1});  // the drained slots are refilled after host_ready too
    for (int step = 0; step < 4; step++) {
        LoaderBatch b;
        loader_next(l, &b);
        hb_upload(b.seg, (size_t)b.B * b.T * sizeof(int));
    }
    pthread_mutex_lock(&hb.mu);
    int n = hb.n, readies = hb.readies;
    pthread_mutex_unlock(&hb.mu);
    assert_int_equal(n, 2 * 3);  // pixels and segments of each slot
    assert_true(readies >= 2 * 16);
    loader_close(l);
    loader_close(plain);
    for (int i = 0; i < n; i++) assert_null(hb.p[i]);
}

// a record whose image does not decode is dropped from its batch, the rest laid out as usual
static void test_loader_bad_image_dropped(void **state) {
    char d[512], dir[600];
    make_temp_dir(d, sizeof d, "badimg");
    snprintf(dir, sizeof dir, "%s/s", d);
    HandRec r[4] = {HAND3[0], HAND3[1], HAND3[1], HAND3[2]};
    r[1].image = "!bad";
    write_hand_shards(dir, r, 4, 3, 8, 0);
    LoaderSpec s = loader_spec(dir);
    s.image_tokens = 3;
    s.max_seq_len = 12;
    s.batch_size = 4;
    s.shuffle = 0;
    s.prep.size = 10;
    Loader *l = loader_open(&s);
    LoaderBatch b;
    fflush(stderr);
    loader_next(l, &b);
    assert_int_equal(b.n_samples, 3);
    assert_int_equal(b.n_skipped, 1);
    assert_int_equal(b.B, 3);
    assert_int_equal(b.n_img, 1);
    assert_int_equal(b.img_row[0], 1);
    expect_row(&b, 1, (int[]){20, 0, 0, 0, 21, 22}, (int[]){-1, -1, -1, 21, 22, -1}, (int[]){0, 1, 2, 3, 4, 5}, NULL);
    loader_close(l);
}

// An image with a side past 32768 (Pillow has no side limit, so LLaVA trains on it) is decoded, and
// in pad mode becomes a 40000-sided square without a 4.8 GB buffer: the batch holds it, equal to
// image_preprocess of the decoded image
static void test_loader_thin_image(void **state) {
    char d[512], dir[600];
    make_temp_dir(d, sizeof d, "thin");
    snprintf(dir, sizeof dir, "%s/s", d);
    HandRec r = HAND3[1];
    r.image = "../../images/rgb_40000x2.png";  // tests/fixtures/images
    write_hand_shards(dir, &r, 1, 3, 8, 0);
    size_t n;
    uint8_t *bytes = read_bytes("tests/fixtures/images/rgb_40000x2.png", &n);
    Image im;
    char err[128];
    assert_int_equal(image_decode(bytes, n, &im, err, sizeof err), 0);
    float *want = xmalloc(3 * 10 * 10 * sizeof(float));
    for (int pad = 0; pad < 2; pad++) {
        LoaderSpec s = loader_spec(dir);
        s.image_tokens = 3;
        s.max_seq_len = 8;
        s.batch_size = 1;
        s.shuffle = 0;
        s.prep.size = 10;
        s.prep.pad_to_square = pad;
        Loader *l = loader_open(&s);
        LoaderBatch b;
        loader_next(l, &b);
        assert_int_equal(b.n_skipped, 0);
        assert_int_equal(b.n_img, 1);
        image_preprocess(&im, &s.prep, want);
        assert_memory_equal(want, b.pixels, 3 * 10 * 10 * sizeof(float));
        loader_close(l);
    }
    image_free(&im);
    free(want);
    free(bytes);
}

// N text samples whose first token tells the sample index
static void write_numbered(const char *dir, int n, int64_t shard_bytes) {
    HandRec *r = xcalloc((size_t)n, sizeof *r);
    for (int i = 0; i < n; i++) {
        r[i].n = 2 + i % 5;
        for (int t = 0; t < r[i].n; t++) r[i].ids[t] = t == 0 ? 1000 + i : 1 + t, r[i].mask[t] = t > 0;
        r[i].image_pos = -1;
    }
    write_hand_shards(dir, r, n, IT, 16, shard_bytes);
    free(r);
}

// the sample indices of one epoch as this rank sees it
static int epoch_order(Loader *l, int64_t epoch, int *out) {
    int n = 0;
    for (;;) {
        LoaderPos p = loader_tell(l);
        if (p.epoch != epoch) break;
        LoaderBatch b;
        assert_int_equal(loader_next(l, &b), epoch);
        for (int r = 0; r < b.B; r++)
            for (int t = 0; t < b.T; t++) {
                int id = b.ids[(size_t)r * b.T + t];
                if (id >= 1000 && b.pos[(size_t)r * b.T + t] == 0) out[n++] = id - 1000;
            }
    }
    return n;
}

static void test_loader_permutation_and_ranks(void **state) {
    char d[512], dir[600];
    make_temp_dir(d, sizeof d, "perm");
    snprintf(dir, sizeof dir, "%s/s", d);
    const int N = 103;
    write_numbered(dir, N, 300);  // many small shards
    LoaderSpec s = loader_spec(dir);
    s.batch_size = 5;
    s.max_seq_len = 16;
    int e0[N], e1[N], again[N], seen[N];
    Loader *l = loader_open(&s);
    assert_int_equal(loader_samples_per_rank(l), N);
    assert_int_equal(epoch_order(l, 0, e0), N);
    assert_int_equal(epoch_order(l, 1, e1), N);
    loader_close(l);
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < N; i++) seen[e0[i]]++;
    for (int i = 0; i < N; i++) assert_int_equal(seen[i], 1);  // a permutation
    assert_true(memcmp(e0, e1, sizeof e0) != 0);                // epochs differ
    int identity = 1;
    for (int i = 0; i < N; i++) identity &= e0[i] == i;
    assert_false(identity);
    l = loader_open(&s);  // same seed: the same order
    assert_int_equal(epoch_order(l, 0, again), N);
    assert_memory_equal(e0, again, sizeof e0);
    loader_close(l);
    s.seed = 99;
    l = loader_open(&s);
    assert_int_equal(epoch_order(l, 0, again), N);
    assert_true(memcmp(e0, again, sizeof e0) != 0);
    loader_close(l);
    s.seed = 1234;

    // three ranks: disjoint, equal counts, covering the epoch minus the remainder
    memset(seen, 0, sizeof seen);
    int total = 0;
    for (int r = 0; r < 3; r++) {
        s.rank = r;
        s.world = 3;
        l = loader_open(&s);
        assert_int_equal(loader_samples_per_rank(l), N / 3);
        int got[N];
        assert_int_equal(epoch_order(l, 0, got), N / 3);
        for (int i = 0; i < N / 3; i++) {
            seen[got[i]]++;
            assert_int_equal(got[i], e0[r + 3 * i]);  // entries r, r + world, ... of the permutation
        }
        total += N / 3;
        loader_close(l);
    }
    for (int i = 0; i < N; i++) assert_true(seen[i] <= 1);
    assert_int_equal(total, N - N % 3);
    assert_int_equal(seen[e0[N - 1]], 0);  // the remainder is dropped
    // no shuffling: file order
    s.rank = 1;
    s.shuffle = 0;
    l = loader_open(&s);
    int got[N];
    assert_int_equal(epoch_order(l, 0, got), N / 3);
    for (int i = 0; i < N / 3; i++) assert_int_equal(got[i], 1 + 3 * i);
    loader_close(l);
}

// packing keeps samples apart: segments, restarting positions, no target across a boundary
static void test_loader_packing_boundaries(void **state) {
    char d[512], dir[600];
    make_temp_dir(d, sizeof d, "pack");
    snprintf(dir, sizeof dir, "%s/s", d);
    write_numbered(dir, 40, 0);
    LoaderSpec s = loader_spec(dir);
    s.batch_size = 9;
    s.max_seq_len = 16;
    s.packing = 1;
    Loader *l = loader_open(&s);
    int samples = 0;
    for (int it = 0; it < 4; it++) {
        LoaderBatch b;
        loader_next(l, &b);
        samples += b.n_samples;
        assert_true(b.B < b.n_samples);
        int lab = 0;
        for (int r = 0; r < b.B; r++) {
            int prev_seg = -1;
            for (int t = 0; t < b.T; t++) {
                size_t i = (size_t)r * b.T + t;
                if (b.seg[i] < 0) {  // padding to the end of the row
                    assert_int_equal(b.targets[i], -1);
                    continue;
                }
                if (b.seg[i] != prev_seg) {  // a sample starts: its first token is the numbered one
                    assert_int_equal(b.seg[i], prev_seg + 1);
                    assert_int_equal(b.pos[i], 0);
                    assert_true(b.ids[i] >= 1000);
                    prev_seg = b.seg[i];
                } else {
                    assert_int_equal(b.pos[i], b.pos[i - 1] + 1);
                }
                int last = t == b.T - 1 || b.seg[i + 1] != b.seg[i];
                if (last) assert_int_equal(b.targets[i], -1);
                else assert_int_equal(b.targets[i], b.ids[i + 1]);  // every non-first token carries loss here
                lab += b.targets[i] >= 0;
            }
        }
        assert_int_equal(lab, b.n_labelled);
    }
    assert_int_equal(samples, 36);
    loader_close(l);
}

// hashes everything a batch holds
static uint64_t batch_hash(const LoaderBatch *b, size_t img_floats) {
    size_t bt = (size_t)b->B * b->T;
    uint64_t h = shards_fnv1a64(&b->B, sizeof(int) * 2, SHARDS_FNV_INIT);
    h = shards_fnv1a64(b->ids, bt * 4, h);
    h = shards_fnv1a64(b->targets, bt * 4, h);
    h = shards_fnv1a64(b->pos, bt * 4, h);
    if (b->seg) h = shards_fnv1a64(b->seg, bt * 4, h);
    h = shards_fnv1a64(&b->n_img, 4, h);
    h = shards_fnv1a64(b->pixels, (size_t)b->n_img * img_floats * 4, h);
    h = shards_fnv1a64(b->img_row, (size_t)b->n_img * 4, h);
    h = shards_fnv1a64(b->img_start, (size_t)b->n_img * 4, h);
    int counts[3] = {b->n_samples, b->n_labelled, b->n_skipped};
    return shards_fnv1a64(counts, sizeof counts, h);
}

static void run_hashes(Loader *l, int n, uint64_t *out, size_t img_floats) {
    for (int i = 0; i < n; i++) {
        LoaderBatch b;
        int64_t e = loader_next(l, &b);
        out[i] = batch_hash(&b, img_floats) ^ (uint64_t)e;
    }
}

// the same batches, bit for bit, whatever the thread count and prefetch depth
static void test_loader_determinism_threads(void **state) {
    for (int packing = 0; packing < 2; packing++) {
        LoaderSpec s = loader_spec(g_json_out);
        s.packing = packing;
        s.batch_size = 4;
        s.threads = 1;
        s.prefetch = 1;
        size_t imf = 3 * 14 * 14;
        uint64_t h1[10], h4[10];
        Loader *l = loader_open(&s);
        run_hashes(l, 10, h1, imf);  // 2.5 epochs of 15 samples
        loader_close(l);
        s.threads = 4;
        s.prefetch = 3;
        l = loader_open(&s);
        run_hashes(l, 10, h4, imf);
        loader_close(l);
        assert_memory_equal(h1, h4, sizeof h1);
    }
}

// tell/seek: after K batches, the next M are the same whether read on, re-read after a seek,
// or read by a fresh loader seeked there (crossing an epoch boundary)
static void test_loader_tell_seek(void **state) {
    LoaderSpec s = loader_spec(g_json_out);
    s.batch_size = 4;
    s.threads = 3;
    s.prefetch = 3;
    size_t imf = 3 * 14 * 14;
    const int K = 3, M = 4;
    uint64_t a[M], b[M], c[M], skip[K];
    Loader *l = loader_open(&s);
    run_hashes(l, K, skip, imf);
    LoaderPos p = loader_tell(l);
    assert_int_equal(p.epoch, 0);
    assert_int_equal(p.index, 12);
    run_hashes(l, M, a, imf);  // crosses into epoch 1 (4 batches per epoch: 4, 4, 4, 3)
    assert_int_equal(loader_tell(l).epoch, 1);
    loader_seek(l, p);
    assert_int_equal(loader_tell(l).index, 12);
    run_hashes(l, M, b, imf);
    assert_memory_equal(a, b, sizeof a);
    loader_close(l);
    l = loader_open(&s);
    LoaderBatch tmp;
    loader_next(l, &tmp);  // something prefetched that the seek must discard
    loader_seek(l, p);
    run_hashes(l, M, c, imf);
    assert_memory_equal(a, c, sizeof a);
    // a position at the very end of an epoch is the start of the next
    loader_seek(l, (LoaderPos){0, loader_samples_per_rank(l)});
    assert_int_equal(loader_tell(l).epoch, 1);
    assert_int_equal(loader_tell(l).index, 0);
    loader_close(l);
}

static void open_spec_fn(void *arg) {
    Loader *l = loader_open((const LoaderSpec *)arg);
    loader_close(l);
}

static void test_loader_spec_mismatch_fatal(void **state) {
    LoaderSpec s = loader_spec(g_json_out);
    s.image_tokens = 144;
    expect_fatal(open_spec_fn, &s, "--image-tokens 4", "144", "re-run ./prepare");
    s = loader_spec(g_json_out);
    s.max_seq_len = 128;
    expect_fatal(open_spec_fn, &s, "--max-seq-len 256", "re-run ./prepare");
    s = loader_spec(FIX "/nothere");
    expect_fatal(open_spec_fn, &s, "nothere", "prepare");
    s = loader_spec(g_json_out);
    s.world = 16;
    expect_fatal(open_spec_fn, &s, "fewer than the 16 ranks");
}

// ---------------------------------------------------------------- issue 14: limits and confinement

// ./prepare on data (text only) into out, output in log; returns its peak resident memory in KiB
static long prepare_peak_kib(const char *data, const char *out, const char *log) {
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen(log, "w", stdout) || dup2(fileno(stdout), 2) < 0) _exit(126);
        execl("./prepare", "./prepare", "--data", data, "--llm", FIX "/llm", "--template", "chatml", "--out", out,
              "--threads", "2", "--max-seq-len", "256", (char *)NULL);
        _exit(127);
    }
    int st;
    struct rusage ru;
    assert_int_equal(wait4(pid, &st, 0, &ru), pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        size_t n;
        fail_msg("./prepare failed:\n%s", (char *)read_bytes(log, &n));
    }
    return ru.ru_maxrss;  // KiB on Linux
}

// A JSONL line over LLAVA_MAX_SAMPLE_BYTES is a counted skip read in bounded memory: ./prepare's
// peak resident memory exceeds that of the same data without the line by less than half the
// line (before: a line under 256 MB was parsed whole, ~13x its size).
static void test_jsonl_long_line_bounded(void **state) {
    if (!file_exists("prepare")) {
        fprintf(stderr, "./prepare not built: long line test skipped\n");
        skip();
    }
    char d[512], data[600], out[600], log[600];
    make_temp_dir(d, sizeof d, "longline");
    snprintf(data, sizeof data, "%s/big.jsonl", d);
    snprintf(out, sizeof out, "%s/out", d);
    snprintf(log, sizeof log, "%s/log.txt", d);
    const size_t line = (size_t)LLAVA_MAX_SAMPLE_BYTES + (32u << 20);  // 96 MiB
    FILE *f = fopen(data, "wb");
    assert_non_null(f);
    fputs(GOOD_SAMPLE "\n", f);
    const char *head = "{\"id\": \"big\", \"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"";
    fputs(head, f);
    char *chunk = xmalloc(1 << 20);
    memset(chunk, 'a', 1 << 20);
    for (size_t w = strlen(head); w < line; w += 1 << 20) fwrite(chunk, 1, 1 << 20, f);
    free(chunk);
    fputs("\"}]}\n" GOOD_SAMPLE "\n", f);
    assert_int_equal(fclose(f), 0);
    long peak = prepare_peak_kib(data, out, log);
    unlink(data);
    size_t n;
    char *text = (char *)read_bytes(log, &n);
    assert_non_null(strstr(text, "wrote 2 of 3 samples"));
    assert_non_null(strstr(text, "too_long 1"));
    assert_non_null(strstr(text, "over the 64 MiB a sample may have"));
    free(text);
    assert_int_equal(meta_int(out, "too_long", "skipped"), 1);
    // the same without the long line: what ./prepare holds anyway (libraries, tokenizer, threads)
    snprintf(data, sizeof data, "%s/small.jsonl", d);
    write_text(data, GOOD_SAMPLE "\n" GOOD_SAMPLE "\n");
    snprintf(out, sizeof out, "%s/out_small", d);
    long base = prepare_peak_kib(data, out, log);
    printf("    ./prepare peak resident memory: %ld MiB with a %zu MiB line, %ld MiB without\n", peak >> 10, line >> 20,
           base >> 10);
    assert_true((size_t)(peak - base) * 1024 < line / 2);
}

// the same cap in a JSON list: the element is scanned to its end (still checked for balance) but
// not held, and the samples after it are read
static void test_json_long_element_skipped(void **state) {
    char d[512], p[600];
    make_temp_dir(d, sizeof d, "longelem");
    snprintf(p, sizeof p, "%s/data.json", d);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs("[" GOOD_SAMPLE ", {\"id\": \"big\", \"pad\": \"", f);
    char *chunk = xmalloc(1 << 20);
    memset(chunk, 'b', 1 << 20);
    for (size_t w = 0; w <= LLAVA_MAX_SAMPLE_BYTES; w += 1 << 20) fwrite(chunk, 1, 1 << 20, f);
    free(chunk);
    fputs("\", \"conversations\": []},\n" GOOD_SAMPLE "]", f);
    assert_int_equal(fclose(f), 0);
    LlavaReader *r = llava_open(p);
    LlavaSample s;
    int skips[3];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(llava_next(r, &s), 1);
        skips[i] = s.skip;
        if (i == 1) {
            assert_non_null(strstr(s.why, "over the 64 MiB"));
            assert_true(s.bytes > (int64_t)LLAVA_MAX_SAMPLE_BYTES);
            assert_int_equal(s.line, 1);
        }
        llava_sample_free(&s);
    }
    assert_int_equal(llava_next(r, &s), 0);
    llava_close(r);
    unlink(p);
    assert_int_equal(skips[0], LLAVA_OK);
    assert_int_equal(skips[1], LLAVA_SKIP_TOO_LONG);
    assert_int_equal(skips[2], LLAVA_OK);
}

#define IMG_SAMPLE(id, img) \
    "{\"id\": \"" id "\", \"image\": \"" img "\", \"conversations\": [{\"from\": \"human\", \"value\": \"<image>\\nHi\"}, " \
    "{\"from\": \"gpt\", \"value\": \"Hi.\"}]}"

// prepare in a child with warnings on; returns its status, stderr in err
typedef struct {
    PrepareSpec spec;
} PrepArg;
static void prepare_child_fn(void *arg) {
    PrepareSummary sum;
    prepare_run(&((PrepArg *)arg)->spec, &sum);
    exit(0);
}

// Image names that leave the image folder (absolute, or ../ above it) are refused unless
// allow_outside_images is set; a file that is not an image never has its bytes printed.
static void test_image_outside_folder(void **state) {
    char d[512], p[600], out[600], abs_img[PATH_MAX], secret[PATH_MAX], json[3 * PATH_MAX];
    make_temp_dir(d, sizeof d, "outside");
    assert_non_null(realpath(FIX "/images/a.jpg", abs_img));
    snprintf(p, sizeof p, "%s/secret.txt", d);
    write_text(p, "SECRET-KEY-material: do not print me\n");
    assert_non_null(realpath(p, secret));
    snprintf(p, sizeof p, "%s/data.json", d);
    snprintf(out, sizeof out, "%s/out", d);
    snprintf(json, sizeof json,
             "[" GOOD_SAMPLE ", " IMG_SAMPLE("abs", "%s") ", " IMG_SAMPLE("up", "../images/a.jpg") ", "
             IMG_SAMPLE("inside", "sub/../a.jpg") ", " IMG_SAMPLE("passwd", "../../../../../../../../etc/passwd") ", "
             IMG_SAMPLE("secret", "%s") "]",
             abs_img, secret);
    write_text(p, json);
    PrepareSpec s;
    spec_for(&s, p, out);
    PrepareSummary sum;
    prepare_run(&s, &sum);
    assert_int_equal(sum.samples, 2);  // GOOD_SAMPLE and "inside"
    assert_int_equal(sum.skipped[PREPARE_SKIP_IMAGE_OUTSIDE], 4);
    assert_int_equal(meta_int(out, "image_outside_folder", "skipped"), 4);
    char why[256];
    s.allow_outside_images = 1;  // the option is part of what the output was made with
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 0);
    assert_non_null(strstr(why, "allow_outside_images"));
    prepare_run(&s, &sum);
    assert_int_equal(sum.samples, 4);  // abs and up read as LLaVA reads them
    assert_int_equal(sum.skipped[PREPARE_SKIP_IMAGE_OUTSIDE], 0);
    assert_int_equal(sum.skipped[PREPARE_SKIP_IMAGE_CORRUPT], 2);  // /etc/passwd and the secret: not images
    assert_int_equal(prepare_is_current(out, &s, why, sizeof why), 1);
    // the warnings name the files but never show their bytes (as text or as hex)
    PrepArg a = {.spec = s};
    a.spec.quiet = 0;
    snprintf(out, sizeof out, "%s/out2", d);
    a.spec.out_dir = out;
    char err[8192];
    assert_int_equal(run_child(prepare_child_fn, &a, err, sizeof err), 0);
    assert_non_null(strstr(err, "secret.txt"));
    assert_non_null(strstr(err, "not a PNG or JPEG image"));
    assert_null(strstr(err, "SECRET-KEY"));
    assert_null(strstr(err, "53 45 43"));  // "SEC" in hex
    assert_null(strstr(err, "root:"));
    assert_null(strstr(err, "72 6f 6f 74"));  // "root" in hex
}

// A text on which the tokenizer's regex hits PCRE2's match limit is one counted skip with the
// reason; before, the whole prepare stopped (fatal in the pre-tokenizer).
static void test_tokenizer_failure_skipped(void **state) {
    char d[512], llm[600], p[700], out[600];
    make_temp_dir(d, sizeof d, "tokfail");
    snprintf(llm, sizeof llm, "%s/llm", d);
    assert_int_equal(mkdir(llm, 0755), 0);
    size_t n;
    char *t = (char *)read_bytes(FIX "/llm/config.json", &n);
    snprintf(p, sizeof p, "%s/config.json", llm);
    write_text(p, t);
    free(t);
    t = (char *)read_bytes(FIX "/llm/tokenizer.json", &n);
    cJSON *tok = cJSON_Parse(t);
    free(t);
    assert_non_null(tok);
    // a first Split whose regex backtracks exponentially on a long run of 'a' not at the end
    cJSON *list = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tok, "pre_tokenizer"), "pretokenizers");
    assert_non_null(list);
    cJSON_InsertItemInArray(list, 0, cJSON_Parse("{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a|aa)+$\"}, "
                                                 "\"behavior\": \"Isolated\", \"invert\": false}"));
    char *text = cJSON_Print(tok);
    cJSON_Delete(tok);
    snprintf(p, sizeof p, "%s/tokenizer.json", llm);
    write_text(p, text);
    free(text);
    snprintf(p, sizeof p, "%s/data.jsonl", d);
    snprintf(out, sizeof out, "%s/out", d);
    write_text(p, GOOD_SAMPLE "\n{\"id\": \"evil\", \"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, "
                  "{\"from\": \"gpt\", \"value\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac\"}]}\n" GOOD_SAMPLE "\n");
    PrepareSpec s;
    spec_for(&s, p, out);
    s.llm_dir = llm;
    PrepareSummary sum;
    prepare_run(&s, &sum);
    assert_int_equal(sum.samples, 2);
    assert_int_equal(sum.skipped[PREPARE_SKIP_TOKENIZER], 1);
    assert_int_equal(meta_int(out, "tokenizer_failed", "skipped"), 1);
    // the reason reaches the warning
    PrepArg a = {.spec = s};
    a.spec.quiet = 0;
    snprintf(out, sizeof out, "%s/out2", d);
    a.spec.out_dir = out;
    char err[8192];
    assert_int_equal(run_child(prepare_child_fn, &a, err, sizeof err), 0);
    assert_non_null(strstr(err, "skipped (tokenizer_failed)"));
    assert_non_null(strstr(err, "match limit"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reader_tricky_json),
        cmocka_unit_test(test_reader_malformed_offsets),
        cmocka_unit_test(test_reader_bad_strings),
        cmocka_unit_test(test_prepare_malformed_json_fatal),
        cmocka_unit_test(test_jsonl_malformed_line_skipped),
        cmocka_unit_test(test_prepare_counts),
        cmocka_unit_test(test_prepare_records_match_template),
        cmocka_unit_test(test_prepare_threads_identical),
        cmocka_unit_test(test_prepare_program),
        cmocka_unit_test(test_prepare_is_current),
        cmocka_unit_test(test_skip_no_gpt),
        cmocka_unit_test(test_skip_missing_image),
        cmocka_unit_test(test_skip_corrupt_image),
        cmocka_unit_test(test_skip_placeholder_mismatch),
        cmocka_unit_test(test_tiled_multi_image),
        cmocka_unit_test(test_tiled_idefics3),
        cmocka_unit_test(test_overlong),
        cmocka_unit_test(test_prepare_bad_inputs_fatal),
        cmocka_unit_test(test_prepare_images_without_folder_fatal),
        cmocka_unit_test(test_prepare_id_limit),
        cmocka_unit_test(test_prepare_stale_tmp_by_host),
        cmocka_unit_test(test_prepare_write_failure),
        cmocka_unit_test(test_truncated_shard_fatal),
        cmocka_unit_test(test_loader_prep_unset),
        cmocka_unit_test(test_index_damage_fatal),
        cmocka_unit_test(test_corrupt_record_skipped),
        cmocka_unit_test(test_loader_layout_by_hand),
        cmocka_unit_test(test_loader_host_memory),
        cmocka_unit_test(test_loader_bad_image_dropped),
        cmocka_unit_test(test_loader_thin_image),
        cmocka_unit_test(test_loader_permutation_and_ranks),
        cmocka_unit_test(test_loader_packing_boundaries),
        cmocka_unit_test(test_loader_determinism_threads),
        cmocka_unit_test(test_loader_tell_seek),
        cmocka_unit_test(test_loader_spec_mismatch_fatal),
        cmocka_unit_test(test_meta_numbers_range_checked),
        cmocka_unit_test(test_jsonl_long_line_bounded),
        cmocka_unit_test(test_json_long_element_skipped),
        cmocka_unit_test(test_image_outside_folder),
        cmocka_unit_test(test_tokenizer_failure_skipped),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
