// bench_file.c: reading and checking benchmark files (eval/bench_file.h).
#include "eval/bench_file.h"

#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/util.h"
#include "data/llava_json.h"

const char *eval_task_name(EvalTask t) {
    return t == TASK_MC ? "mc" : t == TASK_VQA ? "vqa" : t == TASK_CAPTION ? "caption" : "none";
}

EvalTask eval_task_parse(const char *s) {
    if (!strcmp(s, "mc")) return TASK_MC;
    if (!strcmp(s, "vqa")) return TASK_VQA;
    if (!strcmp(s, "caption")) return TASK_CAPTION;
    fatal("--task %s: want mc, vqa or caption", s);
}

// where an error is: "FILE:LINE: item N (id X)"
typedef struct {
    const char *path;
    int64_t line;
    int index;
    const char *id;
} Where;

__attribute__((noreturn, format(printf, 2, 3))) static void item_fatal(const Where *w, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (w->id[0]) fatal("%s:%lld: item %d (id \"%s\"): %s", w->path, (long long)w->line, w->index + 1, w->id, msg);
    fatal("%s:%lld: item %d: %s", w->path, (long long)w->line, w->index + 1, msg);
}


// an optional string field: NULL when absent or null, fatal() when of another type
static char *opt_str(const Where *w, const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return NULL;
    if (!cJSON_IsString(v)) item_fatal(w, "\"%s\" is %s, not a string", key, json_type_name(v));
    return xstrdup(v->valuestring);
}

// a list of non-empty strings (>= 1); fatal() naming the key otherwise
static char **str_list(const Where *w, const cJSON *v, const char *key, int *n) {
    if (!cJSON_IsArray(v)) item_fatal(w, "\"%s\" is %s, not a list of strings", key, json_type_name(v));
    *n = cJSON_GetArraySize(v);
    if (*n == 0) item_fatal(w, "\"%s\" is an empty list", key);
    char **out = xcalloc((size_t)*n, sizeof(char *));
    for (int i = 0; i < *n; i++) {
        const cJSON *s = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsString(s)) item_fatal(w, "\"%s\"[%d] is %s, not a string", key, i, json_type_name(s));
        out[i] = xstrdup(s->valuestring);
    }
    return out;
}

static int has(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v && !cJSON_IsNull(v);
}

static EvalTask task_of(const cJSON *o) {
    if (has(o, "options") || (has(o, "A") && has(o, "B"))) return TASK_MC;
    if (has(o, "captions")) return TASK_CAPTION;
    if (has(o, "answers") || has(o, "answer")) return TASK_VQA;
    return TASK_NONE;
}

static void read_mc(const Where *w, const cJSON *o, BenchItem *it) {
    const cJSON *opts = cJSON_GetObjectItemCaseSensitive(o, "options");
    if (opts && !cJSON_IsNull(opts)) {
        it->options = str_list(w, opts, "options", &it->n_options);
    } else {
        it->options = xcalloc(26, sizeof(char *));
        for (int i = 0; i < 26; i++) {
            char key[2] = {(char)('A' + i), 0};
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
            if (!v || cJSON_IsNull(v)) break;
            if (!cJSON_IsString(v)) item_fatal(w, "option \"%s\" is %s, not a string", key, json_type_name(v));
            it->options[it->n_options++] = xstrdup(v->valuestring);
        }
        if (it->n_options < 26) {  // a later letter after a gap is a broken item, not fewer options
            char key[2] = {(char)('A' + it->n_options + 1), 0};
            if (it->n_options + 1 < 26 && has(o, key))
                item_fatal(w, "option \"%s\" is given but \"%c\" before it is not", key, 'A' + it->n_options);
        }
    }
    if (it->n_options > 26) item_fatal(w, "%d options: at most 26 (letters A-Z)", it->n_options);
    if (it->n_options < 2) item_fatal(w, "%d option%s: a multiple-choice item needs at least 2 (\"options\" or \"A\", \"B\", ...)",
                                      it->n_options, it->n_options == 1 ? "" : "s");
    for (int i = 0; i < it->n_options; i++)
        if (!it->options[i][0]) item_fatal(w, "option %c is empty", 'A' + i);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "answer");
    if (!cJSON_IsString(a)) item_fatal(w, "\"answer\" is %s, not an option letter", json_type_name(a));
    const char *s = a->valuestring;
    char c = s[0] >= 'a' && s[0] <= 'z' ? (char)(s[0] - 32) : s[0];
    if (!(c >= 'A' && c <= 'Z') || s[1] || c - 'A' >= it->n_options)
        item_fatal(w, "\"answer\" is \"%s\", not a letter of the %d options (A-%c)", s, it->n_options, 'A' + it->n_options - 1);
    it->answer = c - 'A';
}

void bench_load(BenchSet *b, const char *path, const char *image_folder, EvalTask task) {
    memset(b, 0, sizeof *b);
    snprintf(b->path, sizeof b->path, "%s", path);
    char *pcopy = xstrdup(path);
    char folder[1024];
    snprintf(folder, sizeof folder, "%s", image_folder ? image_folder : dirname(pcopy));
    free(pcopy);
    LlavaReader *r = llava_open(path);
    int cap = 0;
    LlavaSample s;
    while (llava_next(r, &s)) {
        Where w = {path, s.line, b->n, s.id && s.id[0] ? s.id : ""};
        // llava_json reads LLaVA training samples: "conversations" missing is its skip reason,
        // and the right shape for a benchmark item (the parsed object is kept)
        if (s.skip && !(s.skip == LLAVA_SKIP_BAD_CONVERSATIONS && s.root && !cJSON_HasObjectItem(s.root, "conversations")))
            item_fatal(&w, "%s", s.why);
        const cJSON *o = s.root;
        if (b->n == cap) {
            cap = cap ? cap * 2 : 64;
            b->items = xrealloc(b->items, (size_t)cap * sizeof(BenchItem));
        }
        BenchItem *it = &b->items[b->n];
        memset(it, 0, sizeof *it);
        char idx[32];
        snprintf(idx, sizeof idx, "%d", b->n);
        it->id = xstrdup(s.id && s.id[0] ? s.id : idx);
        it->line = s.line;
        EvalTask t = task ? task : b->task ? b->task : task_of(o);
        if (t == TASK_NONE)
            item_fatal(&w, "no task: the item has none of \"options\"/\"A\"+\"B\" (mc), \"answers\"/\"answer\" (vqa), "
                           "\"captions\" (caption); --task names one");
        b->task = t;
        it->question = opt_str(&w, o, "question");
        it->hint = opt_str(&w, o, "hint");
        it->category = opt_str(&w, o, "category");
        if (t != TASK_CAPTION && !it->question) item_fatal(&w, "\"question\" is missing (the %s task needs it)", eval_task_name(t));
        if (t == TASK_MC) {
            read_mc(&w, o, it);
        } else if (t == TASK_VQA) {
            const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "answers");
            if (a && !cJSON_IsNull(a)) {
                it->refs = str_list(&w, a, "answers", &it->n_refs);
            } else {
                const cJSON *one = cJSON_GetObjectItemCaseSensitive(o, "answer");
                if (!cJSON_IsString(one)) item_fatal(&w, "no reference answer: \"answers\" (a list) or \"answer\" (a string) is %s", json_type_name(one));
                it->refs = xcalloc(1, sizeof(char *));
                it->refs[0] = xstrdup(one->valuestring);
                it->n_refs = 1;
            }
        } else {
            it->refs = str_list(&w, cJSON_GetObjectItemCaseSensitive(o, "captions"), "captions", &it->n_refs);
        }
        if (s.image) {
            char full[2048];
            if (s.image[0] == '/') snprintf(full, sizeof full, "%s", s.image);
            else snprintf(full, sizeof full, "%s/%s", folder, s.image);
            it->image = xstrdup(full);
            if (!file_exists(full)) {
                it->skip = "image not found";
                if (++b->n_skipped <= 5)  // the first few by name; the summary counts them all
                    warn("%s:%lld: item %d (id \"%s\"): image %s not found: skipped", path, (long long)s.line, b->n + 1,
                         it->id, full);
            }
        }
        b->n++;
        llava_sample_free(&s);
    }
    llava_close(r);
    if (b->n == 0) fatal("%s: no items", path);
    if (b->n_skipped > 5) warn("%s: %d more items skipped (image not found)", path, b->n_skipped - 5);
}

static void item_free(BenchItem *it) {
    free(it->id);
    free(it->image);
    free(it->question);
    free(it->hint);
    free(it->category);
    for (int j = 0; j < it->n_options; j++) free(it->options[j]);
    free(it->options);
    for (int j = 0; j < it->n_refs; j++) free(it->refs[j]);
    free(it->refs);
}

void bench_truncate(BenchSet *b, int n) {
    for (int i = n; i < b->n; i++) {
        b->n_skipped -= b->items[i].skip != NULL;
        item_free(&b->items[i]);
    }
    if (n < b->n) b->n = n;
}

void bench_free(BenchSet *b) {
    for (int i = 0; i < b->n; i++) item_free(&b->items[i]);
    free(b->items);
    memset(b, 0, sizeof *b);
}
