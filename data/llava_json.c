// llava_json.c: streaming LLaVA JSON / JSONL reader (see llava_json.h).
#include "data/llava_json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common/json.h"
#include "common/util.h"

#define BUF_MAX (LLAVA_MAX_SAMPLE_BYTES + (1u << 20))  // the read buffer never grows past this

struct LlavaReader {
    char *path;
    FILE *f;
    int jsonl;
    char *buf;
    size_t cap, len, pos;  // valid bytes buf[0, len); buf[pos] is the next unconsumed byte
    int64_t base;          // file offset of buf[0]
    int64_t line;          // 1-based line of buf[pos]
    int64_t line_start;    // file offset where that line starts
    int eof;
    int state;  // JSON list: 1 expect sample or ']', 2 expect ',' or ']', 3 expect sample, 4 closed
    int64_t index;
    int64_t file_size;
};

// reads more bytes, compacting the consumed prefix away; returns the shift applied to indices
// into buf (subtract it) through *shift, and the number of new bytes (0 at end of file)
static size_t more(LlavaReader *r, size_t *shift) {
    *shift = 0;
    if (r->eof) return 0;
    if (r->pos > 0) {
        memmove(r->buf, r->buf + r->pos, r->len - r->pos);
        *shift = r->pos;
        r->base += (int64_t)r->pos;
        r->len -= r->pos;
        r->pos = 0;
    }
    if (r->len == r->cap) {
        // callers read past a sample over LLAVA_MAX_SAMPLE_BYTES before the buffer is full
        CHECK(r->cap < BUF_MAX, "the read buffer is full (%zu bytes) with a sample under the cap", r->cap);
        r->cap = r->cap * 2 < BUF_MAX ? r->cap * 2 : BUF_MAX;
        r->buf = xrealloc(r->buf, r->cap);
    }
    size_t n = fread(r->buf + r->len, 1, r->cap - r->len, r->f);
    if (n == 0) {
        if (ferror(r->f)) fatal("%s: read error at byte %" PRId64 ": %s", r->path, r->base + (int64_t)r->len, strerror(errno));
        r->eof = 1;
    }
    r->len += n;
    return n;
}

// consumes buf[pos, j), keeping the line count
static void advance(LlavaReader *r, size_t j) {
    const char *p = r->buf + r->pos, *end = r->buf + j;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) break;
        r->line++;
        r->line_start = r->base + (nl - r->buf) + 1;
        p = nl + 1;
    }
    r->pos = j;
}

// line and column of buf index k (k >= pos)
static void where(const LlavaReader *r, size_t k, int64_t *line, int64_t *col) {
    int64_t l = r->line, ls = r->line_start;
    for (size_t i = r->pos; i < k && i < r->len; i++)
        if (r->buf[i] == '\n') l++, ls = r->base + (int64_t)i + 1;
    *line = l;
    *col = r->base + (int64_t)k - ls + 1;
}

__attribute__((noreturn)) static void fatal_at(const LlavaReader *r, size_t k, const char *what) {
    int64_t line, col;
    where(r, k, &line, &col);
    fatal("%s: malformed JSON at byte %" PRId64 " (line %" PRId64 ", column %" PRId64 ")%s", r->path,
          r->base + (int64_t)k, line, col, what);
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// skips whitespace; returns 0 at end of file
static int skip_ws(LlavaReader *r) {
    for (;;) {
        size_t j = r->pos;
        while (j < r->len && is_ws(r->buf[j])) j++;
        advance(r, j);
        if (r->pos < r->len) return 1;
        size_t shift;
        if (more(r, &shift) == 0) return 0;
    }
}

static int ends_with_jsonl(const char *p) {
    size_t n = strlen(p);
    return n >= 6 && strcasecmp(p + n - 6, ".jsonl") == 0;
}

LlavaReader *llava_open(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal("%s: cannot open data file: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) fatal("%s: not a regular file", path);
    LlavaReader *r = xcalloc(1, sizeof *r);
    r->path = xstrdup(path);
    r->f = f;
    r->jsonl = ends_with_jsonl(path);
    r->cap = 1 << 20;
    r->buf = xmalloc(r->cap);
    r->line = 1;
    r->file_size = st.st_size;
    size_t shift;
    while (r->len < 3 && more(r, &shift) > 0) {}
    if (r->len >= 3 && memcmp(r->buf, "\xEF\xBB\xBF", 3) == 0) r->pos = 3;  // UTF-8 byte order mark
    if (!r->jsonl) {
        if (!skip_ws(r)) fatal("%s: empty file (expected a JSON list of samples)", path);
        if (r->buf[r->pos] != '[') {
            int64_t line, col;
            where(r, r->pos, &line, &col);
            fatal("%s: expected a JSON list of samples, found '%c' at byte %" PRId64
                  " (line %" PRId64 "); for one object per line name the file .jsonl",
                  path, r->buf[r->pos], r->base + (int64_t)r->pos, line);
        }
        advance(r, r->pos + 1);
        r->state = 1;
    }
    return r;
}

void llava_close(LlavaReader *r) {
    if (!r) return;
    fclose(r->f);
    free(r->buf);
    free(r->path);
    free(r);
}

int llava_is_jsonl(const LlavaReader *r) { return r->jsonl; }
int64_t llava_bytes_read(const LlavaReader *r) { return r->base + (int64_t)r->pos; }
int64_t llava_file_size(const LlavaReader *r) { return r->file_size; }

void llava_sample_free(LlavaSample *s) {
    if (s->root) cJSON_Delete(s->root);
    free(s->turns);
    memset(s, 0, sizeof *s);
}

static const cJSON *get(const cJSON *o, const char *k) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    return (j && !cJSON_IsNull(j)) ? j : NULL;
}


// fills the sample's fields from s->root; sets s->skip on wrong types
static void extract(LlavaSample *s) {
    const cJSON *o = s->root;
    s->id = "";
    if (!cJSON_IsObject(o)) {
        s->skip = LLAVA_SKIP_NOT_OBJECT;
        snprintf(s->why, sizeof s->why, "the sample is %s, not an object", json_type_name(o));
        return;
    }
    const cJSON *id = get(o, "id");
    if (cJSON_IsString(id)) s->id = id->valuestring;
    else if (cJSON_IsNumber(id)) {
        double v = id->valuedouble;
        if (v == floor(v) && fabs(v) < 9e15) snprintf(s->idbuf, sizeof s->idbuf, "%lld", (long long)v);
        else snprintf(s->idbuf, sizeof s->idbuf, "%.17g", v);
        s->id = s->idbuf;
    }
    const cJSON *img = get(o, "image");
    if (img && !cJSON_IsNull(img)) {
        // a file name, or a list of them (several images: one <image> placeholder each, in order)
        int list = cJSON_IsArray(img), n = list ? cJSON_GetArraySize(img) : 1;
        if (list && (n < 1 || n > LLAVA_MAX_IMAGES)) {
            s->skip = LLAVA_SKIP_BAD_IMAGE;
            snprintf(s->why, sizeof s->why, "\"image\" is a list of %d names (1 to %d)", n, LLAVA_MAX_IMAGES);
            return;
        }
        for (int i = 0; i < n; i++) {
            const cJSON *e = list ? cJSON_GetArrayItem(img, i) : img;
            if (!cJSON_IsString(e) || !e->valuestring[0]) {
                s->skip = LLAVA_SKIP_BAD_IMAGE;
                snprintf(s->why, sizeof s->why, "\"image\"%s is %s, not a file name", list ? "'s element" : "",
                         cJSON_IsString(e) ? "empty" : json_type_name(e));
                return;
            }
            s->images[s->n_images++] = e->valuestring;
        }
        s->image = s->images[0];
    }
    const cJSON *conv = get(o, "conversations");
    if (!conv || !cJSON_IsArray(conv)) {
        s->skip = LLAVA_SKIP_BAD_CONVERSATIONS;
        snprintf(s->why, sizeof s->why, "\"conversations\" is %s, not a list", conv ? json_type_name(conv) : "missing");
        return;
    }
    int n = cJSON_GetArraySize(conv);
    s->turns = xcalloc((size_t)(n ? n : 1), sizeof *s->turns);
    int t = 0;
    for (const cJSON *c = conv->child; c; c = c->next, t++) {
        const cJSON *from = cJSON_IsObject(c) ? get(c, "from") : NULL;
        const cJSON *val = cJSON_IsObject(c) ? get(c, "value") : NULL;
        if (cJSON_IsObject(c) && !from) from = get(c, "role");
        if (cJSON_IsObject(c) && !val) val = get(c, "content");
        if (!cJSON_IsString(from) || !cJSON_IsString(val)) {
            s->skip = LLAVA_SKIP_BAD_CONVERSATIONS;
            if (!cJSON_IsObject(c)) snprintf(s->why, sizeof s->why, "turn %d is %s, not an object", t + 1, json_type_name(c));
            else if (!cJSON_IsString(from))
                snprintf(s->why, sizeof s->why, "turn %d: \"from\" is %s, not a string", t + 1, from ? json_type_name(from) : "missing");
            else
                snprintf(s->why, sizeof s->why, "turn %d: \"value\" is %s, not a string", t + 1, val ? json_type_name(val) : "missing");
            return;
        }
        s->turns[t].role = from->valuestring;
        s->turns[t].text = val->valuestring;
    }
    s->n_turns = t;
}

// ---------------------------------------------------------------- strings C cannot hold

enum { ESC_NUL = 1, ESC_LONE = 2 };

static int hex4(const char *p) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

// Looks at every \u escape of p[0, n) (a whole element or line): returns the ESC_* kinds found,
// with the offset of the first of each in *nul_at / *lone_at. Every backslash of valid JSON
// starts an escape inside a string, so strings need no tracking (for invalid JSON the answer
// does not matter: cJSON's verdict decides). With patch set (p writable), the escapes of that
// kind are rewritten in place: \u0000 -> \u0001, a lone surrogate -> \ufffd.
static int walk_escapes(char *p, size_t n, int patch, size_t *nul_at, size_t *lone_at) {
    int found = 0;
    for (size_t i = 0; i < n;) {
        char *b = memchr(p + i, '\\', n - i);
        if (!b) break;
        i = (size_t)(b - p);
        if (i + 6 > n || p[i + 1] != 'u') {
            i += 2;
            continue;
        }
        int cp = hex4(p + i + 2);
        if (cp == 0) {
            if (!(found & ESC_NUL)) *nul_at = i;
            found |= ESC_NUL;
            if (patch == ESC_NUL) p[i + 5] = '1';
        } else if (cp >= 0xD800 && cp <= 0xDFFF) {
            int lo = cp <= 0xDBFF && i + 12 <= n && p[i + 6] == '\\' && p[i + 7] == 'u' ? hex4(p + i + 8) : -1;
            if (lo >= 0xDC00 && lo <= 0xDFFF) {  // a pair: one code point
                i += 12;
                continue;
            }
            if (!(found & ESC_LONE)) *lone_at = i;
            found |= ESC_LONE;
            if (patch == ESC_LONE) memcpy(p + i + 2, "fffd", 4);
        }
        i += 6;
    }
    return found;
}

// cJSON refused text[0, n): 1 when lone surrogate escapes are all that is wrong with it (it
// parses with them replaced), *lone_at then the offset of the first. 0 otherwise, with *fault_at
// the offset of what is wrong once lone surrogates are set aside (where cJSON stopped when it
// has none).
static int only_lone_surrogates(const char *text, size_t n, size_t *lone_at, size_t *fault_at) {
    size_t nul_at;
    if (!(walk_escapes((char *)text, n, 0, &nul_at, lone_at) & ESC_LONE)) return 0;
    char *c = xmalloc(n ? n : 1);
    memcpy(c, text, n);
    walk_escapes(c, n, ESC_LONE, &nul_at, lone_at);
    const char *end = NULL;
    cJSON *t = cJSON_ParseWithLengthOpts(c, n, &end, 0);
    int ok = t != NULL;
    const char *q = end;
    while (ok && q < c + n && is_ws(*q)) q++;
    if (ok && q < c + n) ok = 0;
    if (!ok) *fault_at = end && end >= c && q <= c + n ? (size_t)((t ? q : end) - c) : 0;
    cJSON_Delete(t);
    free(c);
    return ok;
}

static void set_lone_surrogate(LlavaSample *s, const char *text, size_t at) {
    s->root = NULL;
    s->id = "";
    s->skip = LLAVA_SKIP_BAD_STRING;
    snprintf(s->why, sizeof s->why,
             "a lone UTF-16 surrogate escape \"\\u%.4s\" at byte %" PRId64 ": valid JSON, but UTF-8 cannot hold it", text + at + 2,
             s->offset + (int64_t)at);
}

// s parsed from text[0, n) and extracted: when a \u0000 escape lies in a string the sample uses
// or in the key naming it (cJSON's NUL-terminated strings cut both short), the sample becomes a
// LLAVA_SKIP_BAD_STRING. Found by parsing again with \u0001 in its place and comparing the
// fields: a NUL elsewhere changes none of them.
static void check_nuls(LlavaSample *s, const char *text, size_t n) {
    size_t nul_at, lone_at;
    if (!(walk_escapes((char *)text, n, 0, &nul_at, &lone_at) & ESC_NUL)) return;
    char *c = xmalloc(n);
    memcpy(c, text, n);
    walk_escapes(c, n, ESC_NUL, &nul_at, &lone_at);
    LlavaSample t;
    memset(&t, 0, sizeof t);
    t.root = cJSON_ParseWithLengthOpts(c, n, NULL, 0);
    free(c);
    if (!t.root) return;  // cannot happen: only escapes' digits changed
    extract(&t);
    char what[48] = "";
    if (t.skip != s->skip || t.n_turns != s->n_turns) snprintf(what, sizeof what, "a field it uses");
    else if (!s->skip) {
        if (strcmp(t.id, s->id)) snprintf(what, sizeof what, "its id");
        else if (t.n_images != s->n_images) snprintf(what, sizeof what, "its image");
        for (int k = 0; !what[0] && k < s->n_images; k++)
            if (strcmp(t.images[k], s->images[k])) snprintf(what, sizeof what, "its image");
        for (int k = 0; !what[0] && k < s->n_turns; k++) {
            if (strcmp(t.turns[k].role, s->turns[k].role)) snprintf(what, sizeof what, "turn %d's role", k + 1);
            else if (strcmp(t.turns[k].text, s->turns[k].text)) snprintf(what, sizeof what, "turn %d's text", k + 1);
        }
    }
    llava_sample_free(&t);
    if (!what[0]) return;
    s->skip = LLAVA_SKIP_BAD_STRING;
    snprintf(s->why, sizeof s->why, "a NUL character (\"\\u0000\", the first at byte %" PRId64 ") in %s or its key, where a C string ends",
             s->offset + (int64_t)nul_at, what);
}

static int next_jsonl(LlavaReader *r, LlavaSample *s) {
    for (;;) {
        if (r->pos == r->len) {
            size_t shift;
            if (more(r, &shift) == 0) return 0;
        }
        size_t from = r->pos, e;
        int too_long = 0;
        for (;;) {
            char *nl = memchr(r->buf + from, '\n', r->len - from);
            if (nl) { e = (size_t)(nl - r->buf); break; }
            if (r->len - r->pos > LLAVA_MAX_SAMPLE_BYTES) { too_long = 1; break; }
            from = r->len;
            size_t shift;
            size_t got = more(r, &shift);
            from -= shift;
            if (got == 0) {
                e = r->len;
                break;
            }
        }
        if (!too_long && e - r->pos > LLAVA_MAX_SAMPLE_BYTES) too_long = 1;  // its end read already or not
        if (too_long) {  // read past the rest of the line, unparsed, holding no more of it
            memset(s, 0, sizeof *s);
            s->index = r->index++;
            s->offset = r->base + (int64_t)r->pos;
            s->line = r->line;
            s->id = "";
            for (;;) {
                char *nl = memchr(r->buf + r->pos, '\n', r->len - r->pos);
                if (nl) { advance(r, (size_t)(nl - r->buf) + 1); break; }
                advance(r, r->len);
                size_t shift;
                if (more(r, &shift) == 0) break;
            }
            s->bytes = r->base + (int64_t)r->pos - s->offset;
            s->skip = LLAVA_SKIP_TOO_LONG;
            snprintf(s->why, sizeof s->why, "line %" PRId64 " has %" PRId64 " bytes, over the %u MiB a sample may have", s->line,
                     s->bytes, LLAVA_MAX_SAMPLE_BYTES >> 20);
            return 1;
        }
        size_t b = r->pos;
        while (b < e && is_ws(r->buf[b])) b++;
        if (b == e) {  // blank line
            advance(r, e < r->len ? e + 1 : e);
            continue;
        }
        memset(s, 0, sizeof *s);
        s->index = r->index++;
        s->offset = r->base + (int64_t)r->pos;
        s->line = r->line;
        const char *end = NULL;
        s->root = cJSON_ParseWithLengthOpts(r->buf + r->pos, e - r->pos, &end, 0);
        const char *bad = NULL;
        if (!s->root) bad = end ? end : r->buf + r->pos;
        else {
            for (const char *p = end; p < r->buf + e; p++)
                if (!is_ws(*p)) { bad = p; break; }
        }
        size_t lone_at, fault_at = SIZE_MAX;
        if (bad && !s->root && only_lone_surrogates(r->buf + r->pos, e - r->pos, &lone_at, &fault_at)) {
            set_lone_surrogate(s, r->buf + r->pos, lone_at);
        } else if (bad) {
            if (s->root) cJSON_Delete(s->root);
            s->root = NULL;
            s->id = "";
            s->skip = LLAVA_SKIP_MALFORMED_LINE;
            if (fault_at != SIZE_MAX) bad = r->buf + r->pos + fault_at;  // past lone surrogates
            snprintf(s->why, sizeof s->why, "line %" PRId64 ": malformed JSON at column %lld", s->line,
                     (long long)(bad - (r->buf + r->pos)) + 1);
        } else {
            extract(s);
            check_nuls(s, r->buf + r->pos, e - r->pos);
        }
        s->bytes = (int64_t)(e - r->pos);
        advance(r, e < r->len ? e + 1 : e);
        return 1;
    }
}

// Scans one JSON value starting at buf[pos]; returns the index one past its end. A value over
// LLAVA_MAX_SAMPLE_BYTES is scanned to its end all the same but its bytes are dropped as they
// go (*dropped: how many; pos then moves along, so only the end of the value stays in buf).
static size_t scan_value(LlavaReader *r, int64_t *dropped) {
    size_t j = r->pos;
    char c0 = r->buf[j];
    int depth = 0, instr = 0, esc = 0;
    int scalar = !(c0 == '{' || c0 == '[' || c0 == '"');
    *dropped = 0;
    for (;;) {
        if (j == r->len) {
            if (j - r->pos > LLAVA_MAX_SAMPLE_BYTES || *dropped) {
                *dropped += (int64_t)(j - r->pos);
                advance(r, j);
            }
            size_t shift;
            size_t got = more(r, &shift);
            j -= shift;
            if (got == 0) {
                if (scalar) return j;
                fatal_at(r, r->len, ": the file ends inside a sample");
            }
        }
        char c = r->buf[j];
        if (scalar) {
            if (c == ',' || c == ']' || c == '}' || is_ws(c)) return j;
            j++;
            continue;
        }
        j++;
        if (instr) {
            if (esc) esc = 0;
            else if (c == '\\') esc = 1;
            else if (c == '"') {
                instr = 0;
                if (depth == 0) return j;
            }
        } else if (c == '"') {
            instr = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0) return j;
            if (depth < 0) fatal_at(r, j - 1, "");
        }
    }
}

static int next_json(LlavaReader *r, LlavaSample *s) {
    for (;;) {
        if (!skip_ws(r)) {
            if (r->state == 4) return 0;
            fatal_at(r, r->len, ": the file ends before the list is closed");
        }
        char c = r->buf[r->pos];
        switch (r->state) {
        case 1:
        case 3:
            if (c == ']') {
                if (r->state == 3) fatal_at(r, r->pos, ": ',' must be followed by a sample");
                advance(r, r->pos + 1);
                r->state = 4;
                continue;
            }
            if (c == ',') fatal_at(r, r->pos, ": expected a sample");
            break;
        case 2:
            if (c == ',') { advance(r, r->pos + 1); r->state = 3; continue; }
            if (c == ']') { advance(r, r->pos + 1); r->state = 4; continue; }
            fatal_at(r, r->pos, ": expected ',' or ']' after a sample");
        default:
            fatal_at(r, r->pos, ": data after the end of the list");
        }
        int64_t start = r->base + (int64_t)r->pos, start_line = r->line, dropped;
        size_t e = scan_value(r, &dropped);
        memset(s, 0, sizeof *s);
        s->index = r->index++;
        s->offset = start;
        s->line = start_line;
        s->bytes = dropped + (int64_t)(e - r->pos);
        if (s->bytes > (int64_t)LLAVA_MAX_SAMPLE_BYTES) {  // over the cap: not parsed (its end was checked to be a whole value)
            s->id = "";
            s->skip = LLAVA_SKIP_TOO_LONG;
            snprintf(s->why, sizeof s->why, "the sample has %" PRId64 " bytes, over the %u MiB a sample may have", s->bytes,
                     LLAVA_MAX_SAMPLE_BYTES >> 20);
            advance(r, e);
            r->state = 2;
            return 1;
        }
        const char *end = NULL;
        s->root = cJSON_ParseWithLengthOpts(r->buf + r->pos, e - r->pos, &end, 0);
        if (!s->root) {
            // valid JSON that cJSON refuses (Python's json reads it): a counted skip
            size_t lone_at, fault_at = SIZE_MAX;
            if (!only_lone_surrogates(r->buf + r->pos, e - r->pos, &lone_at, &fault_at))
                fatal_at(r, fault_at != SIZE_MAX ? r->pos + fault_at : end ? (size_t)(end - r->buf) : r->pos, "");
            set_lone_surrogate(s, r->buf + r->pos, lone_at);
            advance(r, e);
            r->state = 2;
            return 1;
        }
        if (end < r->buf + e) {
            const char *p = end;
            while (p < r->buf + e && is_ws(*p)) p++;
            if (p < r->buf + e) {
                cJSON_Delete(s->root);
                fatal_at(r, (size_t)(p - r->buf), "");
            }
        }
        extract(s);
        check_nuls(s, r->buf + r->pos, e - r->pos);
        advance(r, e);
        r->state = 2;
        return 1;
    }
}

int llava_next(LlavaReader *r, LlavaSample *s) { return r->jsonl ? next_jsonl(r, s) : next_json(r, s); }

int64_t llava_count_samples(const char *path) {
    if (!ends_with_jsonl(path)) return -1;
    FILE *f = fopen(path, "rb");
    if (!f) fatal("%s: cannot open data file: %s", path, strerror(errno));
    char *buf = xmalloc(1 << 20);
    int64_t n = 0;
    int nonblank = 0;
    size_t got;
    while ((got = fread(buf, 1, 1 << 20, f)) > 0) {
        for (size_t i = 0; i < got; i++) {
            char c = buf[i];
            if (c == '\n') {
                n += nonblank;
                nonblank = 0;
            } else if (!is_ws(c)) {
                nonblank = 1;
            }
        }
    }
    n += nonblank;
    free(buf);
    fclose(f);
    return n;
}
