// tokenizer.c: Hugging Face tokenizer.json byte-level BPE (see tokenizer.h for what is supported).
// Written against the behaviour of the `tokenizers` library (added_vocabulary.rs, normalizer.rs,
// pre_tokenizers/{split,byte_level,digits}.rs, models/bpe/{model,word}.rs, decoders/byte_level.rs)
// and checked against it by tests/test_tokenizer.c with fixtures from
// scripts/make_tokenizer_fixtures.py.
#include "data/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "data/unicode.h"

// ================================================================ small containers

typedef struct { int *v; size_t n, cap; } IntVec;

static void iv_push(IntVec *a, int x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = xrealloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = x;
}

typedef struct { char *p; size_t n, cap; } Buf;

static void buf_reserve(Buf *b, size_t extra) {
    if (b->n + extra + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 64;
        while (c < b->n + extra + 1) c *= 2;
        b->p = xrealloc(b->p, c);
        b->cap = c;
    }
}

static void buf_put(Buf *b, const void *s, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static uint64_t hash_bytes(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xFF51AFD7ED558CCDULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xC2B2AE3D27D4EB4FULL;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0xC2B2AE3D27D4EB4FULL;
    h ^= h >> 32;
    h *= 0x165667B19E3779F9ULL;
    h ^= h >> 29;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDULL;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ULL;
    x ^= x >> 33;
    return x;
}

// string -> id, open addressing over an array of entries
typedef struct { const char *s; uint32_t len; int32_t id; } StrEnt;
typedef struct { StrEnt *ent; size_t n, cap; uint32_t *slot; size_t mask; } StrMap;

static void strmap_init(StrMap *m, size_t expect) {
    size_t c = 16;
    while (c < expect * 2) c *= 2;
    m->slot = xcalloc(c, sizeof *m->slot);
    m->mask = c - 1;
    m->ent = xmalloc((expect ? expect : 1) * sizeof *m->ent);
    m->cap = expect ? expect : 1;
    m->n = 0;
}

static int strmap_get(const StrMap *m, const char *s, size_t len) {
    if (!m->slot) return -1;
    size_t i = hash_bytes(s, len) & m->mask;
    for (;;) {
        uint32_t e = m->slot[i];
        if (!e) return -1;
        const StrEnt *x = &m->ent[e - 1];
        if (x->len == len && memcmp(x->s, s, len) == 0) return x->id;
        i = (i + 1) & m->mask;
    }
}

// returns 0 if the key was already present (the first id is kept)
static int strmap_put(StrMap *m, const char *s, size_t len, int id) {
    if (m->n + 1 > m->cap || (m->n + 1) * 2 > m->mask + 1) {
        // grow both arrays and rehash
        size_t ncap = m->cap * 2 + 16;
        m->ent = xrealloc(m->ent, ncap * sizeof *m->ent);
        m->cap = ncap;
        size_t c = m->mask + 1;
        while ((m->n + 1) * 2 > c) c *= 2;
        if (c != m->mask + 1) {
            free(m->slot);
            m->slot = xcalloc(c, sizeof *m->slot);
            m->mask = c - 1;
            for (size_t k = 0; k < m->n; k++) {
                size_t i = hash_bytes(m->ent[k].s, m->ent[k].len) & m->mask;
                while (m->slot[i]) i = (i + 1) & m->mask;
                m->slot[i] = (uint32_t)k + 1;
            }
        }
    }
    size_t i = hash_bytes(s, len) & m->mask;
    while (m->slot[i]) {
        const StrEnt *x = &m->ent[m->slot[i] - 1];
        if (x->len == len && memcmp(x->s, s, len) == 0) return 0;
        i = (i + 1) & m->mask;
    }
    m->ent[m->n] = (StrEnt){s, (uint32_t)len, id};
    m->slot[i] = (uint32_t)++m->n;
    return 1;
}

static void strmap_free(StrMap *m) {
    free(m->ent);
    free(m->slot);
}

// (left id, right id) -> (rank, merged id)
typedef struct { uint64_t *key; int32_t *rank, *id; size_t mask; } PairMap;

#define PAIR_EMPTY UINT64_MAX

static inline uint64_t pair_key(int a, int b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static void pairmap_init(PairMap *m, size_t expect) {
    size_t c = 16;
    while (c < expect * 2) c *= 2;
    m->key = xmalloc(c * sizeof *m->key);
    for (size_t i = 0; i < c; i++) m->key[i] = PAIR_EMPTY;
    m->rank = xmalloc(c * sizeof *m->rank);
    m->id = xmalloc(c * sizeof *m->id);
    m->mask = c - 1;
}

// later merges of the same pair overwrite earlier ones, as tokenizers' HashMap collect does
static void pairmap_put(PairMap *m, uint64_t k, int rank, int id) {
    size_t i = hash_u64(k) & m->mask;
    while (m->key[i] != PAIR_EMPTY && m->key[i] != k) i = (i + 1) & m->mask;
    m->key[i] = k;
    m->rank[i] = rank;
    m->id[i] = id;
}

static inline int pairmap_get(const PairMap *m, uint64_t k, int *rank, int *id) {
    size_t i = hash_u64(k) & m->mask;
    for (;;) {
        uint64_t x = m->key[i];
        if (x == k) { *rank = m->rank[i]; *id = m->id[i]; return 1; }
        if (x == PAIR_EMPTY) return 0;
        i = (i + 1) & m->mask;
    }
}

// ================================================================ the tokenizer

enum { BEH_REMOVED, BEH_ISOLATED, BEH_MERGED_PREV, BEH_MERGED_NEXT, BEH_CONTIGUOUS };
enum { PT_SPLIT, PT_BYTELEVEL };

typedef struct {
    int kind;
    pcre2_code *re;  // NULL: the pattern matches nothing (empty String pattern)
    int behavior, invert;
    int add_prefix_space, use_regex;  // ByteLevel
} PreStep;

typedef struct {
    char *content;
    size_t len;
    int id;
    unsigned char special, single_word, lstrip, rstrip, normalized;
} Added;

// byte trie over added-token contents for leftmost-longest search
typedef struct { int first_child, next_sibling, token; unsigned char byte; } TrieNode;
typedef struct {
    TrieNode *node;
    int n, cap;
    int root_child[256];  // node index of the child of the root for each first byte, or -1
    int empty;            // no tokens
} Trie;

#define CACHE_SHARDS 64
#define CACHE_SLOTS 4096  // per shard, power of two; at most half filled
#define CACHE_MAX_KEY 128

typedef struct CacheEnt {
    uint64_t h;
    uint32_t klen, nids;
    int data[];  // nids ids, then the key bytes
} CacheEnt;

typedef struct {
    pthread_mutex_t mu;
    CacheEnt **slot;
    size_t count;
} CacheShard;

struct Tokenizer {
    char *path;
    // model vocab
    StrMap vocab;
    char *vocab_arena;
    int n_rows;             // max id + 1 over vocab and added tokens
    const char **id_tok;    // id -> token of the model vocab (or NULL)
    uint32_t *id_len;
    PairMap merges;
    int n_merges;
    int ignore_merges, byte_fallback, fuse_unk, unk_id;
    char *cont_prefix, *eow_suffix;  // NULL when unset or empty
    // byte level
    int byte_to_cp[256];
    int cp_to_byte[324];  // inverse for code points < 324, -1 elsewhere
    int byte_id[256];     // vocab id of the one-char token of each byte, or -1
    // added tokens
    Added *added;
    int n_added;
    int *added_of_id;  // id -> index into added, or -1 (n_rows entries)
    StrMap added_map;
    Trie trie_raw, trie_norm;
    pcre2_code *word_re;  // Rust regex \w, for single_word
    // pipeline
    int nfc;
    PreStep *steps;
    int n_steps;
    int bytelevel;  // the last pre-tokenizer step is ByteLevel
    int decoder_bytelevel, has_decoder;
    char post_processor[64];
    // decode: bytes of every id as the decoder sees it
    uint32_t *dec_off, *dec_len;
    char *dec_arena;
    // word cache
    CacheShard cache[CACHE_SHARDS];
};

// ================================================================ load helpers

// printable copy of a token for error messages (control characters escaped, cut at 60 bytes)
static const char *esc(const char *s, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; s && s[i] && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= 60) { memcpy(out + o, "...", 3); o += 3; break; }
        if (c < 0x20 || c == 0x7F || c == '"' || c == '\\') o += (size_t)snprintf(out + o, cap - o, "\\x%02X", c);
        else out[o++] = (char)c;
    }
    out[o] = 0;
    return out;
}

static const char *type_of(const cJSON *obj) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static int get_bool(const char *path, const cJSON *obj, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return dflt;
    if (!cJSON_IsBool(v)) fatal("%s: \"%s\" must be true or false", path, key);
    return cJSON_IsTrue(v);
}

// optional string: NULL when absent or null
static const char *get_str(const char *path, const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return NULL;
    if (!cJSON_IsString(v)) fatal("%s: \"%s\" must be a string", path, key);
    return v->valuestring;
}

static int get_id(const char *path, const cJSON *v, const char *what) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 2147483000.0 ||
        v->valuedouble != (double)(int)v->valuedouble)
        fatal("%s: %s must be a non-negative integer id", path, what);
    return (int)v->valuedouble;
}

// Oniguruma (what tokenizers runs, Ruby syntax) and PCRE2 disagree on a few escapes; they are
// rewritten to what Onig means (checked over every code point against tokenizers 0.23):
//   \s  Onig: Unicode White_Space (PCRE2 adds U+180E)
//   \w  Onig: Alphabetic, M, Nd, Pc, and outside a class also U+00B2 B3 B9 BC-BE (PCRE2: L, N, _)
//   \h  Onig: a hex digit (PCRE2: horizontal space)
//   \p{Han} etc.: Onig matches the Script property (PCRE2: Script_Extensions), so -> \p{sc:Han};
//   long category names (\p{Letter}) -> short ones, which PCRE2 10.42 needs.
// \S, \W and \H inside a character class are left to PCRE2 (a class cannot hold a complement).
#define WS_SET "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define WORD_SET "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}"
#define WORD_LATIN1 "\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}"
#define HEX_SET "0-9a-fA-F"

static const char *const gc_long[][2] = {
    {"letter", "L"}, {"casedletter", "L&"}, {"uppercaseletter", "Lu"}, {"lowercaseletter", "Ll"},
    {"titlecaseletter", "Lt"}, {"modifierletter", "Lm"}, {"otherletter", "Lo"}, {"mark", "M"},
    {"combiningmark", "M"}, {"nonspacingmark", "Mn"}, {"spacingmark", "Mc"}, {"enclosingmark", "Me"},
    {"number", "N"}, {"decimalnumber", "Nd"}, {"letternumber", "Nl"}, {"othernumber", "No"},
    {"punctuation", "P"}, {"connectorpunctuation", "Pc"}, {"dashpunctuation", "Pd"},
    {"openpunctuation", "Ps"}, {"closepunctuation", "Pe"}, {"initialpunctuation", "Pi"},
    {"finalpunctuation", "Pf"}, {"otherpunctuation", "Po"}, {"symbol", "S"}, {"mathsymbol", "Sm"},
    {"currencysymbol", "Sc"}, {"modifiersymbol", "Sk"}, {"othersymbol", "So"}, {"separator", "Z"},
    {"spaceseparator", "Zs"}, {"lineseparator", "Zl"}, {"paragraphseparator", "Zp"}, {"other", "C"},
    {"control", "Cc"}, {"format", "Cf"}, {"surrogate", "Cs"}, {"privateuse", "Co"}, {"unassigned", "Cn"},
};

// rewrites the property name of \p{...} / \P{...} (name: the text between the braces)
static void put_property(Buf *b, char pe, const char *name, size_t n) {
    char key[64];
    size_t k = 0;
    int neg = n > 0 && name[0] == '^';
    for (size_t i = neg; i < n && k + 1 < sizeof key; i++) {
        char ch = name[i];
        if (ch == '_' || ch == ' ' || ch == '-') continue;
        key[k++] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    key[k] = 0;
    char out[96];
    const char *rep = NULL;
    for (size_t i = 0; i < sizeof gc_long / sizeof gc_long[0]; i++)
        if (strcmp(key, gc_long[i][0]) == 0) rep = gc_long[i][1];
    if (!rep && n < 60 && !memchr(name, ':', n) && !memchr(name, '=', n)) {
        // a script name? then Onig matches the Script property: sc:Name
        snprintf(out, sizeof out, "\\p{sc:%.*s}", (int)(n - (size_t)neg), name + neg);
        int err;
        PCRE2_SIZE off;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)out, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
        if (re) {
            pcre2_code_free(re);
            snprintf(out, sizeof out, "sc:%.*s", (int)(n - (size_t)neg), name + neg);
            rep = out;
        }
    }
    char head[4] = {'\\', pe, '{', 0};
    buf_put(b, head, 3);
    if (neg) buf_put(b, "^", 1);
    if (rep) buf_put(b, rep, strlen(rep));
    else buf_put(b, name + neg, n - (size_t)neg);
    buf_put(b, "}", 1);
}

static char *onig_to_pcre2(const char *pat) {
    Buf b = {0};
    buf_reserve(&b, strlen(pat));
    int in_class = 0;
    for (size_t i = 0; pat[i];) {
        char c = pat[i];
        if (c == '\\' && pat[i + 1]) {
            char e = pat[i + 1];
            if (e == 'Q') {  // \Q...\E is literal
                const char *end = strstr(pat + i + 2, "\\E");
                size_t n = end ? (size_t)(end + 2 - (pat + i)) : strlen(pat + i);
                buf_put(&b, pat + i, n);
                i += n;
                continue;
            }
            if ((e == 'p' || e == 'P') && pat[i + 2] == '{') {
                const char *end = strchr(pat + i + 3, '}');
                if (end) {
                    put_property(&b, e, pat + i + 3, (size_t)(end - (pat + i + 3)));
                    i = (size_t)(end + 1 - pat);
                    continue;
                }
            }
            const char *rep = NULL;
            if (e == 's') rep = in_class ? WS_SET : "[" WS_SET "]";
            else if (e == 'S' && !in_class) rep = "[^" WS_SET "]";
            else if (e == 'w') rep = in_class ? WORD_SET : "[" WORD_SET WORD_LATIN1 "]";
            else if (e == 'W' && !in_class) rep = "[^" WORD_SET WORD_LATIN1 "]";
            else if (e == 'h') rep = in_class ? HEX_SET : "[" HEX_SET "]";
            else if (e == 'H' && !in_class) rep = "[^" HEX_SET "]";
            if (rep) buf_put(&b, rep, strlen(rep));
            else buf_put(&b, pat + i, 2);
            i += 2;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            buf_put(&b, "[", 1);
            i++;
            if (pat[i] == '^') { buf_put(&b, "^", 1); i++; }
            if (pat[i] == ']') { buf_put(&b, "]", 1); i++; }  // a leading ] is literal
            continue;
        }
        if (in_class && c == '[' && pat[i + 1] == ':') {  // POSIX class [:alpha:]
            const char *end = strstr(pat + i + 2, ":]");
            if (end) {
                size_t n = (size_t)(end + 2 - (pat + i));
                buf_put(&b, pat + i, n);
                i += n;
                continue;
            }
        }
        if (in_class && c == ']') in_class = 0;
        buf_put(&b, &c, 1);
        i++;
    }
    if (!b.p) buf_put(&b, "", 0);
    return b.p;
}

static pcre2_code *compile_re(const char *path, const char *pattern, int literal) {
    int err;
    PCRE2_SIZE off;
    char *pat = literal ? xstrdup(pattern) : onig_to_pcre2(pattern);
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        char e[200];
        fatal("%s: pre_tokenizer regex \"%s\" does not compile: %s (at offset %zu)", path,
              esc(pattern, e, sizeof e), (const char *)msg, (size_t)off);
    }
    free(pat);
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
    return re;
}

static void trie_init(Trie *tr) {
    memset(tr, 0, sizeof *tr);
    for (int i = 0; i < 256; i++) tr->root_child[i] = -1;
    tr->empty = 1;
}

static int trie_new_node(Trie *tr, unsigned char byte) {
    if (tr->n == tr->cap) {
        tr->cap = tr->cap ? tr->cap * 2 : 64;
        tr->node = xrealloc(tr->node, (size_t)tr->cap * sizeof *tr->node);
    }
    tr->node[tr->n] = (TrieNode){-1, -1, -1, byte};
    return tr->n++;
}

static void trie_add(Trie *tr, const char *s, size_t len, int token) {
    if (len == 0) return;
    tr->empty = 0;
    const unsigned char *u = (const unsigned char *)s;
    int cur = tr->root_child[u[0]];
    if (cur < 0) cur = tr->root_child[u[0]] = trie_new_node(tr, u[0]);
    for (size_t i = 1; i < len; i++) {
        int c = tr->node[cur].first_child;
        while (c >= 0 && tr->node[c].byte != u[i]) c = tr->node[c].next_sibling;
        if (c < 0) {
            c = trie_new_node(tr, u[i]);
            tr->node[c].next_sibling = tr->node[cur].first_child;
            tr->node[cur].first_child = c;
        }
        cur = c;
    }
    if (tr->node[cur].token < 0) tr->node[cur].token = token;  // duplicate content: first wins
}

// longest token starting exactly at s[0..n): returns its length and sets *token, or 0
static size_t trie_longest(const Trie *tr, const unsigned char *s, size_t n, int *token) {
    int cur = tr->root_child[s[0]];
    size_t best = 0;
    for (size_t i = 1; cur >= 0; i++) {
        if (tr->node[cur].token >= 0) { best = i; *token = tr->node[cur].token; }
        if (i >= n) break;
        int c = tr->node[cur].first_child;
        while (c >= 0 && tr->node[c].byte != s[i]) c = tr->node[c].next_sibling;
        cur = c;
    }
    return best;
}

// GPT-2's bytes_to_unicode
static void init_byte_map(Tokenizer *t) {
    int n = 0;
    for (int i = 0; i < 324; i++) t->cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte_to_cp[b] = printable ? b : 256 + n++;
        t->cp_to_byte[t->byte_to_cp[b]] = b;
    }
}

static void load_normalizer(Tokenizer *t, const cJSON *nz) {
    if (!nz || cJSON_IsNull(nz)) return;
    const char *type = type_of(nz);
    if (!type) fatal("%s: normalizer has no \"type\"", t->path);
    if (strcmp(type, "NFC") == 0) {
        t->nfc = 1;
    } else if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(nz, "normalizers");
        if (!cJSON_IsArray(list)) fatal("%s: normalizer Sequence has no \"normalizers\" list", t->path);
        const cJSON *x;
        cJSON_ArrayForEach(x, list) load_normalizer(t, x);
    } else {
        fatal("%s: normalizer type \"%s\" is not supported (only NFC, or a Sequence of NFC)", t->path, type);
    }
}

static void add_step(Tokenizer *t, PreStep s) {
    t->steps = xrealloc(t->steps, (size_t)(t->n_steps + 1) * sizeof *t->steps);
    t->steps[t->n_steps++] = s;
}

#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

static void load_pretokenizer(Tokenizer *t, const cJSON *pt) {
    if (!pt || cJSON_IsNull(pt)) return;
    const char *type = type_of(pt);
    if (!type) fatal("%s: pre_tokenizer has no \"type\"", t->path);
    if (t->bytelevel) fatal("%s: pre_tokenizer ByteLevel must be the last in the Sequence (found %s after it)", t->path, type);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
        if (!cJSON_IsArray(list)) fatal("%s: pre_tokenizer Sequence has no \"pretokenizers\" list", t->path);
        const cJSON *x;
        cJSON_ArrayForEach(x, list) load_pretokenizer(t, x);
    } else if (strcmp(type, "Split") == 0) {
        PreStep s = {.kind = PT_SPLIT};
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *str = cJSON_GetObjectItemCaseSensitive(pat, "String");
        if (cJSON_IsString(re)) s.re = compile_re(t->path, re->valuestring, 0);
        else if (cJSON_IsString(str)) s.re = str->valuestring[0] ? compile_re(t->path, str->valuestring, 1) : NULL;
        else fatal("%s: Split pre_tokenizer needs \"pattern\": {\"Regex\": ...} or {\"String\": ...}", t->path);
        const char *beh = get_str(t->path, pt, "behavior");
        if (!beh) fatal("%s: Split pre_tokenizer has no \"behavior\"", t->path);
        static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        s.behavior = -1;
        for (int i = 0; i < 5; i++)
            if (strcmp(beh, names[i]) == 0) s.behavior = i;
        if (s.behavior < 0) fatal("%s: Split behavior \"%s\" is unknown", t->path, beh);
        s.invert = get_bool(t->path, pt, "invert", 0);
        add_step(t, s);
    } else if (strcmp(type, "Digits") == 0) {
        // tokenizers' Digits: each numeric char isolated, or runs of them (Contiguous)
        PreStep s = {.kind = PT_SPLIT, .behavior = BEH_ISOLATED};
        s.re = compile_re(t->path, get_bool(t->path, pt, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+", 0);
        add_step(t, s);
    } else if (strcmp(type, "ByteLevel") == 0) {
        PreStep s = {.kind = PT_BYTELEVEL, .behavior = BEH_ISOLATED};
        s.add_prefix_space = get_bool(t->path, pt, "add_prefix_space", 1);
        s.use_regex = get_bool(t->path, pt, "use_regex", 1);
        if (s.use_regex) s.re = compile_re(t->path, GPT2_PATTERN, 0);
        add_step(t, s);
        t->bytelevel = 1;
    } else {
        fatal("%s: pre_tokenizer type \"%s\" is not supported (only Split, Digits, ByteLevel, Sequence)", t->path, type);
    }
}

static void load_decoder(Tokenizer *t, const cJSON *d) {
    if (!d || cJSON_IsNull(d)) return;
    const char *type = type_of(d);
    if (!type) fatal("%s: decoder has no \"type\"", t->path);
    if (strcmp(type, "ByteLevel") == 0) {
        t->has_decoder = t->decoder_bytelevel = 1;
    } else if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != 1)
            fatal("%s: decoder Sequence is supported only with a single ByteLevel decoder", t->path);
        load_decoder(t, cJSON_GetArrayItem(list, 0));
    } else {
        fatal("%s: decoder type \"%s\" is not supported (only ByteLevel)", t->path, type);
    }
}

static int rows_grow(Tokenizer *t, int id) { return id + 1 > t->n_rows ? id + 1 : t->n_rows; }

// Ids past this many rows beyond the vocab's entries and the added tokens are refused: real
// tokenizers number their tokens densely, and every id sizes the id -> token tables (one absurd
// id in a damaged file would otherwise ask for gigabytes).
#define ID_MARGIN 65536

static void load_model(Tokenizer *t, const cJSON *model, int n_added_listed) {
    const char *path = t->path;
    if (!cJSON_IsObject(model)) fatal("%s: no \"model\" object", path);
    const char *type = type_of(model);
    if (type && strcmp(type, "BPE") != 0)
        fatal("%s: model type \"%s\" is not supported (only BPE)", path, type);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) fatal("%s: model has no \"vocab\" object", path);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
        warn("%s: BPE dropout %g is ignored (encoding is deterministic)", path, dropout->valuedouble);

    // vocab: copy the strings into one arena
    int n = cJSON_GetArraySize(vocab);
    size_t bytes = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, vocab) bytes += strlen(x->string) + 1;
    t->vocab_arena = xmalloc(bytes + 1);
    strmap_init(&t->vocab, (size_t)n);
    char *a = t->vocab_arena;
    int max_id = -1;
    const int64_t id_cap = (int64_t)n + n_added_listed + ID_MARGIN;
    cJSON_ArrayForEach(x, vocab) {
        size_t len = strlen(x->string);
        memcpy(a, x->string, len + 1);
        char e[200];
        int id = get_id(path, x, "vocab entry");
        if (id >= id_cap)
            fatal("%s: vocab token \"%s\" has id %d, beyond what %d vocab entries and %d added tokens can use (ids up to "
                  "%" PRId64 "): a damaged tokenizer.json?",
                  path, esc(a, e, sizeof e), id, n, n_added_listed, id_cap - 1);
        if (!strmap_put(&t->vocab, a, len, id)) fatal("%s: vocab has token \"%s\" twice", path, esc(a, e, sizeof e));
        if (id > max_id) max_id = id;
        a += len + 1;
    }
    t->n_rows = max_id + 1;

    t->ignore_merges = get_bool(path, model, "ignore_merges", 0);
    t->byte_fallback = get_bool(path, model, "byte_fallback", 0);
    t->fuse_unk = get_bool(path, model, "fuse_unk", 0);
    const char *p = get_str(path, model, "continuing_subword_prefix");
    t->cont_prefix = p && *p ? xstrdup(p) : NULL;
    p = get_str(path, model, "end_of_word_suffix");
    t->eow_suffix = p && *p ? xstrdup(p) : NULL;
    t->unk_id = -1;
    const char *unk = get_str(path, model, "unk_token");
    if (unk) {
        t->unk_id = strmap_get(&t->vocab, unk, strlen(unk));
        char e[200];
        if (t->unk_id < 0) fatal("%s: unk_token \"%s\" is not in the vocab", path, esc(unk, e, sizeof e));
    }

    // merges
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (merges && !cJSON_IsNull(merges) && !cJSON_IsArray(merges)) fatal("%s: model \"merges\" must be a list", path);
    int nm = merges ? cJSON_GetArraySize(merges) : 0;
    pairmap_init(&t->merges, (size_t)nm);
    size_t prefix_len = t->cont_prefix ? strlen(t->cont_prefix) : 0;
    Buf joined = {0};
    int rank = 0;
    cJSON_ArrayForEach(x, merges) {
        const char *l, *r;
        size_t ll, rl;
        if (cJSON_IsString(x)) {
            const char *s = x->valuestring;
            if (strncmp(s, "#version", 8) == 0) continue;
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                char e[200];
                fatal("%s: merge %d \"%s\" is not two tokens separated by one space", path, rank + 1, esc(s, e, sizeof e));
            }
            l = s; ll = (size_t)(sp - s);
            r = sp + 1; rl = strlen(r);
        } else if (cJSON_IsArray(x) && cJSON_GetArraySize(x) == 2 && cJSON_IsString(cJSON_GetArrayItem(x, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(x, 1))) {
            l = cJSON_GetArrayItem(x, 0)->valuestring; ll = strlen(l);
            r = cJSON_GetArrayItem(x, 1)->valuestring; rl = strlen(r);
        } else {
            fatal("%s: merge %d is neither a \"a b\" string nor a [\"a\", \"b\"] pair", path, rank + 1);
        }
        int lid = strmap_get(&t->vocab, l, ll), rid = strmap_get(&t->vocab, r, rl);
        joined.n = 0;
        buf_put(&joined, l, ll);
        if (rl >= prefix_len) buf_put(&joined, r + prefix_len, rl - prefix_len);
        int mid = strmap_get(&t->vocab, joined.p, joined.n);
        const char *bad = lid < 0 ? l : rid < 0 ? r : mid < 0 ? joined.p : NULL;
        size_t badlen = lid < 0 ? ll : rid < 0 ? rl : joined.n;
        if (bad) {
            char e[200], cp[128];
            size_t k = badlen < sizeof cp - 1 ? badlen : sizeof cp - 1;
            memcpy(cp, bad, k);
            cp[k] = 0;
            fatal("%s: merge %d refers to unknown token \"%s\"", path, rank + 1, esc(cp, e, sizeof e));
        }
        pairmap_put(&t->merges, pair_key(lid, rid), rank, mid);
        rank++;
    }
    free(joined.p);
    t->n_merges = rank;
}

// tokenizers ignores the ids written in "added_tokens": it adds the tokens in list order, a
// token already in the model vocab keeping that id, every other one getting the next id after
// the model vocab (AddedVocabulary::add_tokens). Same here, with a warning when the file's ids
// differ (tokenizers warns too); duplicates and empty contents are skipped as there.
static void load_added(Tokenizer *t, const cJSON *list) {
    if (!list || cJSON_IsNull(list)) return;
    if (!cJSON_IsArray(list)) fatal("%s: \"added_tokens\" must be a list", t->path);
    int n = cJSON_GetArraySize(list);
    t->added = xcalloc((size_t)n + 1, sizeof *t->added);
    strmap_init(&t->added_map, (size_t)n);
    const int model_size = (int)t->vocab.n;
    int max_id = -1, moved = 0, k = 0;
    char example[256] = "";
    const cJSON *x;
    cJSON_ArrayForEach(x, list) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(x, "content");
        if (!cJSON_IsString(c)) fatal("%s: added token %d has no \"content\" string", t->path, k);
        int file_id = get_id(t->path, cJSON_GetObjectItemCaseSensitive(x, "id"), "added token \"id\"");
        k++;
        size_t len = strlen(c->valuestring);
        if (len == 0 || strmap_get(&t->added_map, c->valuestring, len) >= 0) continue;
        Added *a = &t->added[t->n_added];
        a->content = xstrdup(c->valuestring);
        a->len = len;
        int vid = strmap_get(&t->vocab, a->content, len);
        if (vid >= 0) a->id = vid;
        else if (max_id < 0) a->id = model_size;
        else a->id = max_id >= model_size || model_size == 0 ? max_id + 1 : model_size;
        if (a->id > max_id) max_id = a->id;
        if (a->id != file_id && moved++ == 0) {
            char e[200];
            snprintf(example, sizeof example, "\"%s\" has id %d in the file, gets %d", esc(a->content, e, sizeof e), file_id, a->id);
        }
        a->special = (unsigned char)get_bool(t->path, x, "special", 0);
        a->single_word = (unsigned char)get_bool(t->path, x, "single_word", 0);
        a->lstrip = (unsigned char)get_bool(t->path, x, "lstrip", 0);
        a->rstrip = (unsigned char)get_bool(t->path, x, "rstrip", 0);
        a->normalized = (unsigned char)get_bool(t->path, x, "normalized", !a->special);
        strmap_put(&t->added_map, a->content, a->len, a->id);
        t->n_rows = rows_grow(t, a->id);
        t->n_added++;
    }
    if (moved)
        warn("%s: %d added token(s) get other ids than the file gives (numbered as tokenizers does): %s", t->path, moved, example);
}

// the bytes the decoder produces for every id, computed once
static void build_decode_table(Tokenizer *t) {
    t->dec_off = xcalloc((size_t)t->n_rows + 1, sizeof *t->dec_off);
    t->dec_len = xcalloc((size_t)t->n_rows + 1, sizeof *t->dec_len);
    Buf arena = {0};
    for (int id = 0; id < t->n_rows; id++) {
        const char *s = tokenizer_id_to_token(t, id);
        t->dec_off[id] = (uint32_t)arena.n;
        if (!s) continue;
        size_t len = t->added_of_id[id] >= 0 ? t->added[t->added_of_id[id]].len : t->id_len[id];
        size_t start = arena.n;
        int ok = t->decoder_bytelevel;
        // ByteLevel: every char maps back to its byte, else the token's own UTF-8 bytes
        for (size_t i = 0; ok && i < len;) {
            uint32_t cp;
            int l = utf8_decode((const unsigned char *)s + i, len - i, &cp);
            if (l == 0 || cp >= 324 || t->cp_to_byte[cp] < 0) { ok = 0; break; }
            unsigned char b = (unsigned char)t->cp_to_byte[cp];
            buf_put(&arena, &b, 1);
            i += (size_t)l;
        }
        if (!ok) {
            arena.n = start;
            buf_put(&arena, s, len);
        }
        t->dec_len[id] = (uint32_t)(arena.n - start);
    }
    if (!arena.p) buf_put(&arena, "", 0);
    t->dec_arena = arena.p;
}

Tokenizer *tokenizer_load(const char *path) {
    size_t len;
    char *text = file_read_all(path, &len);
    if (!text) fatal("%s: cannot read tokenizer: %s", path, strerror(errno));
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t off = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        fatal("%s: invalid JSON at byte %zu", path, off);
    }
    if (!cJSON_IsObject(root)) fatal("%s: not a tokenizer.json (top level is not an object)", path);
    Tokenizer *t = xcalloc(1, sizeof *t);
    t->path = xstrdup(path);
    init_byte_map(t);
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    load_model(t, cJSON_GetObjectItemCaseSensitive(root, "model"), cJSON_IsArray(added) ? cJSON_GetArraySize(added) : 0);
    load_added(t, added);
    load_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"));
    load_pretokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"));
    load_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"));
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    const char *ppt = pp && !cJSON_IsNull(pp) ? type_of(pp) : NULL;
    snprintf(t->post_processor, sizeof t->post_processor, "%s", ppt ? ppt : "none");
    cJSON_Delete(root);
    free(text);

    if (t->n_steps > 16) fatal("%s: pre_tokenizer has %d steps, at most 16 are supported", path, t->n_steps);
    // id -> token tables over every id (the added tokens may lie past the model vocab)
    t->id_tok = xcalloc((size_t)t->n_rows + 1, sizeof *t->id_tok);
    t->id_len = xcalloc((size_t)t->n_rows + 1, sizeof *t->id_len);
    for (size_t k = 0; k < t->vocab.n; k++) {
        const StrEnt *e = &t->vocab.ent[k];
        if (!t->id_tok[e->id]) { t->id_tok[e->id] = e->s; t->id_len[e->id] = e->len; }
    }
    t->added_of_id = xmalloc(((size_t)t->n_rows + 1) * sizeof *t->added_of_id);
    for (int i = 0; i <= t->n_rows; i++) t->added_of_id[i] = -1;
    trie_init(&t->trie_raw);
    trie_init(&t->trie_norm);
    for (int i = 0; i < t->n_added; i++) {
        Added *a = &t->added[i];
        if (t->added_of_id[a->id] < 0) t->added_of_id[a->id] = i;
        trie_add(a->normalized ? &t->trie_norm : &t->trie_raw, a->content, a->len, i);
    }
    for (int b = 0; b < 256; b++) {
        char u[4];
        int l = utf8_encode((uint32_t)t->byte_to_cp[b], u);
        t->byte_id[b] = strmap_get(&t->vocab, u, (size_t)l);
    }
    {
        int err;
        PCRE2_SIZE off;
        const char *wp = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]";
        t->word_re = pcre2_compile((PCRE2_SPTR)wp, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &err, &off, NULL);
        CHECK(t->word_re, "the word-character class must compile (PCRE2 10.40 or newer)");
    }
    build_decode_table(t);
    for (int i = 0; i < CACHE_SHARDS; i++) {
        pthread_mutex_init(&t->cache[i].mu, NULL);
        t->cache[i].slot = NULL;
    }
    return t;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < CACHE_SHARDS; i++) {
        CacheShard *s = &t->cache[i];
        if (s->slot)
            for (size_t k = 0; k < CACHE_SLOTS; k++) free(s->slot[k]);
        free(s->slot);
        pthread_mutex_destroy(&s->mu);
    }
    for (int i = 0; i < t->n_steps; i++) pcre2_code_free(t->steps[i].re);
    free(t->steps);
    pcre2_code_free(t->word_re);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->added_of_id);
    strmap_free(&t->added_map);
    free(t->trie_raw.node);
    free(t->trie_norm.node);
    strmap_free(&t->vocab);
    free(t->vocab_arena);
    free(t->id_tok);
    free(t->id_len);
    free(t->merges.key);
    free(t->merges.rank);
    free(t->merges.id);
    free(t->cont_prefix);
    free(t->eow_suffix);
    free(t->dec_off);
    free(t->dec_len);
    free(t->dec_arena);
    free(t->path);
    free(t);
}

// ================================================================ lookups

int tokenizer_token_id(const Tokenizer *t, const char *token) {
    size_t len = strlen(token);
    int id = strmap_get(&t->added_map, token, len);
    return id >= 0 ? id : strmap_get(&t->vocab, token, len);
}

const char *tokenizer_id_to_token(const Tokenizer *t, int id) {
    if (id < 0 || id >= t->n_rows) return NULL;
    if (t->added_of_id[id] >= 0) return t->added[t->added_of_id[id]].content;
    return t->id_tok[id];
}

int tokenizer_is_special(const Tokenizer *t, int id) {
    return id >= 0 && id < t->n_rows && t->added_of_id[id] >= 0 && t->added[t->added_of_id[id]].special;
}

int tokenizer_vocab_size(const Tokenizer *t) { return t->n_rows; }

const char *tokenizer_post_processor(const Tokenizer *t) { return t->post_processor; }

// ================================================================ encode

typedef struct {
    int prev, next, id, alive;
} Sym;

typedef struct {
    int rank, pos, id;
} HeapEnt;

// (start, end, flag) triples
typedef struct { size_t *a; size_t n, cap; } SplitVec;

static void push3(SplitVec *v, size_t s0, size_t e0, size_t m) {
    if (v->n + 3 > v->cap) {
        v->cap = v->cap ? v->cap * 2 : 192;
        v->a = xrealloc(v->a, v->cap * sizeof *v->a);
    }
    v->a[v->n++] = s0;
    v->a[v->n++] = e0;
    v->a[v->n++] = m;
}

typedef struct {
    const Tokenizer *t;
    int allow_special;
    IntVec *out;
    pcre2_match_data *md;
    Buf prefixed;    // ByteLevel add_prefix_space copy
    Buf mapped;      // byte-level mapped word
    Sym *sym;
    size_t sym_cap;
    HeapEnt *heap;
    size_t heap_cap;
    IntVec word;     // ids of one word
    SplitVec spl[16];  // split offsets per pre-tokenizer depth
    int failed;        // a regex match failed (PCRE2's match or heap limit): the encoding stops
    char err[200];
} Ctx;

static inline int heap_less(const HeapEnt *a, const HeapEnt *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(Ctx *c, size_t *n, HeapEnt e) {
    if (*n == c->heap_cap) {
        c->heap_cap = c->heap_cap ? c->heap_cap * 2 : 64;
        c->heap = xrealloc(c->heap, c->heap_cap * sizeof *c->heap);
    }
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &c->heap[p])) break;
        c->heap[i] = c->heap[p];
        i = p;
    }
    c->heap[i] = e;
}

static HeapEnt heap_pop(Ctx *c, size_t *n) {
    HeapEnt top = c->heap[0];
    HeapEnt last = c->heap[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= *n) break;
        size_t m = l + 1 < *n && heap_less(&c->heap[l + 1], &c->heap[l]) ? l + 1 : l;
        if (!heap_less(&c->heap[m], &last)) break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (*n > 0) c->heap[i] = last;
    return top;
}

static void sym_reserve(Ctx *c, size_t n) {
    if (n > c->sym_cap) {
        c->sym_cap = n * 2;
        c->sym = xrealloc(c->sym, c->sym_cap * sizeof *c->sym);
    }
}

// tokenizers' Word::merge_all: a heap of (rank, position) with stale entries skipped
static void merge_all(Ctx *c, int nsym) {
    const Tokenizer *t = c->t;
    Sym *s = c->sym;
    size_t hn = 0;
    for (int i = 0; i + 1 < nsym; i++) {
        int rank, id;
        if (pairmap_get(&t->merges, pair_key(s[i].id, s[i + 1].id), &rank, &id))
            heap_push(c, &hn, (HeapEnt){rank, i, id});
    }
    while (hn > 0) {
        HeapEnt top = heap_pop(c, &hn);
        s = c->sym;
        if (!s[top.pos].alive || s[top.pos].next < 0) continue;
        int nx = s[top.pos].next;
        int rank, id;
        if (!pairmap_get(&t->merges, pair_key(s[top.pos].id, s[nx].id), &rank, &id) || id != top.id) continue;
        // merge the right symbol into this one
        s[top.pos].id = top.id;
        s[top.pos].next = s[nx].next;
        s[nx].alive = 0;
        if (s[nx].next >= 0) s[s[nx].next].prev = top.pos;
        int pv = s[top.pos].prev;
        if (pv >= 0 && pairmap_get(&t->merges, pair_key(s[pv].id, s[top.pos].id), &rank, &id))
            heap_push(c, &hn, (HeapEnt){rank, pv, id});
        int nn = s[top.pos].next;
        if (nn >= 0 && pairmap_get(&t->merges, pair_key(s[top.pos].id, s[nn].id), &rank, &id))
            heap_push(c, &hn, (HeapEnt){rank, top.pos, id});
    }
}

static void sym_add(Ctx *c, int *nsym, int id) {
    sym_reserve(c, (size_t)*nsym + 1);
    c->sym[*nsym] = (Sym){*nsym - 1, -1, id, 1};
    if (*nsym > 0) c->sym[*nsym - 1].next = *nsym;
    (*nsym)++;
}

// tokenizers' BPE::merge_word on the model's view of the word (w, n: the byte-level mapped
// string when the pre-tokenizer is ByteLevel); appends the ids to c->word
static void bpe_word(Ctx *c, const char *w, size_t n) {
    const Tokenizer *t = c->t;
    int nsym = 0;
    int unk_pending = 0;  // an unk symbol waiting (for fuse_unk)
    Buf piece = {0};
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int l = utf8_decode((const unsigned char *)w + i, n - i, &cp);
        if (l == 0) l = 1;  // cannot happen: input is valid UTF-8
        int first = i == 0, last = i + (size_t)l >= n;
        int id;
        if ((!first && t->cont_prefix) || (last && t->eow_suffix)) {
            piece.n = 0;
            if (!first && t->cont_prefix) buf_put(&piece, t->cont_prefix, strlen(t->cont_prefix));
            buf_put(&piece, w + i, (size_t)l);
            if (last && t->eow_suffix) buf_put(&piece, t->eow_suffix, strlen(t->eow_suffix));
            id = strmap_get(&t->vocab, piece.p, piece.n);
        } else {
            id = strmap_get(&t->vocab, w + i, (size_t)l);
        }
        if (id >= 0) {
            if (unk_pending) { sym_add(c, &nsym, t->unk_id); unk_pending = 0; }
            sym_add(c, &nsym, id);
        } else {
            int done = 0;
            if (t->byte_fallback) {
                // every byte of the char must exist as <0xXX>, else fall through to unk
                int ids[8], ok = 1;
                for (int k = 0; k < l; k++) {
                    char name[8];
                    snprintf(name, sizeof name, "<0x%02X>", (unsigned char)w[i + (size_t)k]);
                    ids[k] = strmap_get(&t->vocab, name, 6);
                    if (ids[k] < 0) ok = 0;
                }
                if (ok) {  // (a pending unk stays pending here, as in tokenizers)
                    for (int k = 0; k < l; k++) sym_add(c, &nsym, ids[k]);
                    done = 1;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (unk_pending && !t->fuse_unk) sym_add(c, &nsym, t->unk_id);
                unk_pending = 1;
            }
            // no unk token: the char is dropped, as tokenizers does
        }
        i += (size_t)l;
    }
    if (unk_pending) sym_add(c, &nsym, t->unk_id);
    free(piece.p);
    merge_all(c, nsym);
    for (int i = 0; i < nsym; i++)
        if (c->sym[i].alive) iv_push(&c->word, c->sym[i].id);
}

// fast path for byte-level words: the initial symbols are the byte tokens
static int bpe_bytes(Ctx *c, const unsigned char *w, size_t n) {
    const Tokenizer *t = c->t;
    sym_reserve(c, n);
    for (size_t i = 0; i < n; i++) {
        int id = t->byte_id[w[i]];
        if (id < 0) return 0;
        c->sym[i] = (Sym){(int)i - 1, i + 1 < n ? (int)i + 1 : -1, id, 1};
    }
    merge_all(c, (int)n);
    for (size_t i = 0; i < n; i++)
        if (c->sym[i].alive) iv_push(&c->word, c->sym[i].id);
    return 1;
}

static int cache_lookup(Ctx *c, uint64_t h, const char *w, size_t n) {
    CacheShard *s = (CacheShard *)&c->t->cache[h & (CACHE_SHARDS - 1)];
    int found = 0;
    pthread_mutex_lock(&s->mu);
    if (s->slot) {
        size_t i = (h >> 6) & (CACHE_SLOTS - 1);
        for (CacheEnt *e; (e = s->slot[i]) != NULL; i = (i + 1) & (CACHE_SLOTS - 1)) {
            if (e->h == h && e->klen == n && memcmp((const char *)(e->data + e->nids), w, n) == 0) {
                for (uint32_t k = 0; k < e->nids; k++) iv_push(c->out, e->data[k]);
                found = 1;
                break;
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

static void cache_store(Ctx *c, uint64_t h, const char *w, size_t n, const int *ids, size_t nids) {
    CacheShard *s = (CacheShard *)&c->t->cache[h & (CACHE_SHARDS - 1)];
    CacheEnt *e = xmalloc(sizeof *e + nids * sizeof(int) + n);
    e->h = h;
    e->klen = (uint32_t)n;
    e->nids = (uint32_t)nids;
    if (nids) memcpy(e->data, ids, nids * sizeof(int));  // a word can encode to nothing (ids NULL then)
    memcpy((char *)(e->data + nids), w, n);
    pthread_mutex_lock(&s->mu);
    if (!s->slot) s->slot = xcalloc(CACHE_SLOTS, sizeof *s->slot);
    if (s->count >= CACHE_SLOTS / 2) {  // full: start over
        for (size_t k = 0; k < CACHE_SLOTS; k++) { free(s->slot[k]); s->slot[k] = NULL; }
        s->count = 0;
    }
    size_t i = (h >> 6) & (CACHE_SLOTS - 1);
    int dup = 0;
    for (CacheEnt *x; (x = s->slot[i]) != NULL; i = (i + 1) & (CACHE_SLOTS - 1))
        if (x->h == h && x->klen == n && memcmp((const char *)(x->data + x->nids), w, n) == 0) { dup = 1; break; }
    if (!dup) { s->slot[i] = e; s->count++; }
    pthread_mutex_unlock(&s->mu);
    if (dup) free(e);
}

// the model's view of a word: the byte-level stand-ins when the pre-tokenizer is ByteLevel
static const char *model_view(Ctx *c, const char *w, size_t n, size_t *mn) {
    const Tokenizer *t = c->t;
    if (!t->bytelevel) { *mn = n; return w; }
    c->mapped.n = 0;
    buf_reserve(&c->mapped, 2 * n);
    for (size_t i = 0; i < n; i++)
        c->mapped.n += (size_t)utf8_encode((uint32_t)t->byte_to_cp[(unsigned char)w[i]], c->mapped.p + c->mapped.n);
    *mn = c->mapped.n;
    return c->mapped.p;
}

// one pre-token (raw bytes, before byte-level mapping) through the model (BPE::tokenize)
static void model_encode(Ctx *c, const char *w, size_t n) {
    const Tokenizer *t = c->t;
    if (n == 0) return;
    int plain_bytes = t->bytelevel && !t->cont_prefix && !t->eow_suffix;  // symbols = byte tokens
    if (plain_bytes && n == 1 && t->byte_id[(unsigned char)w[0]] >= 0) {
        iv_push(c->out, t->byte_id[(unsigned char)w[0]]);
        return;
    }
    if (t->ignore_merges) {  // a word that is a token is emitted whole
        size_t mn;
        const char *mw = model_view(c, w, n, &mn);
        int id = strmap_get(&t->vocab, mw, mn);
        if (id >= 0) { iv_push(c->out, id); return; }
    }
    uint64_t h = 0;
    int cacheable = n <= CACHE_MAX_KEY;
    if (cacheable) {
        h = hash_bytes(w, n);
        if (cache_lookup(c, h, w, n)) return;
    }
    c->word.n = 0;
    if (!(plain_bytes && bpe_bytes(c, (const unsigned char *)w, n))) {
        size_t mn;
        const char *mw = model_view(c, w, n, &mn);
        c->word.n = 0;
        bpe_word(c, mw, mn);
    }
    for (size_t i = 0; i < c->word.n; i++) iv_push(c->out, c->word.v[i]);
    if (cacheable) cache_store(c, h, w, n, c->word.v, c->word.n);
}

// next regex match in s[0..n) at or after *last_end, with the Rust onig crate's rule for empty
// matches (one right after the previous match is skipped). Returns 0 when there is none.
static int next_match(Ctx *c, const pcre2_code *re, const char *s, size_t n, size_t *last_end, long *last_match_end,
                      size_t *ms, size_t *me) {
    for (;;) {
        if (*last_end > n) return 0;
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, *last_end, PCRE2_NO_UTF_CHECK, c->md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // very long runs: retry with the interpreter (heap stack)
            rc = pcre2_match(re, (PCRE2_SPTR)s, n, *last_end, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, c->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc < 0) {  // reported by tokenizer_encode_checked: one text's failure, not the tokenizer's
            PCRE2_UCHAR msg[96];
            pcre2_get_error_message(rc, msg, sizeof msg);
            snprintf(c->err, sizeof c->err, "the pre_tokenizer regex failed at byte %zu of a %zu-byte piece: %s", *last_end, n,
                     (const char *)msg);
            c->failed = 1;
            return 0;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t s0 = ov[0], e0 = ov[1];
        if (s0 == e0 && *last_match_end == (long)e0) {
            uint32_t cp;
            int l = *last_end < n ? utf8_decode((const unsigned char *)s + *last_end, n - *last_end, &cp) : 1;
            *last_end += l > 0 ? (size_t)l : 1;
            continue;
        }
        *last_end = e0;
        *last_match_end = (long)e0;
        *ms = s0;
        *me = e0;
        return 1;
    }
}

static void pretokenize(Ctx *c, int step, const char *p, size_t n);

// tokenizers' NormalizedString::split: matches -> pieces per behavior; pieces that are not
// removed and not empty go on to the next step
static void split_emit(Ctx *c, int step, const PreStep *ps, const char *p, SplitVec *v);

// Pieces are handed on in batches of this many triples when the behavior treats each piece
// alone (Isolated, Removed: the regex splits of every supported tokenizer): the memory of a
// split then stays bounded whatever the text's length (a 200 MB text held 1 GB of offsets).
#define SPLIT_BATCH 4096

static void split_step(Ctx *c, int step, const PreStep *ps, const char *p, size_t n) {
    // collect (start, end, is_match) triples into the per-depth array
    SplitVec *v = &c->spl[step];
    v->n = 0;
    int per_piece = ps->behavior == BEH_ISOLATED || ps->behavior == BEH_REMOVED;
    if (n == 0) {
        push3(v, 0, 0, 0);
    } else {
        size_t prev = 0, last_end = 0, ms, me;
        long last_match_end = -1;
        while (ps->re && next_match(c, ps->re, p, n, &last_end, &last_match_end, &ms, &me)) {
            if (prev != ms) push3(v, prev, ms, 0);
            push3(v, ms, me, 1);
            prev = me;
            if (per_piece && v->n >= 3 * SPLIT_BATCH) {
                split_emit(c, step, ps, p, v);
                v->n = 0;
            }
        }
        if (prev != n) push3(v, prev, n, 0);
    }
    split_emit(c, step, ps, p, v);
}

// applies the behavior to the triples of v and passes the pieces that remain to the next step
static void split_emit(Ctx *c, int step, const PreStep *ps, const char *p, SplitVec *v) {
    size_t cnt = v->n / 3;
    size_t *a = v->a;
    if (ps->invert)
        for (size_t i = 0; i < cnt; i++) a[3 * i + 2] = !a[3 * i + 2];
    // apply the behavior in place: each triple becomes (start, end, remove)
    size_t out = 0;
    int prev_match = 0;
    switch (ps->behavior) {
    case BEH_ISOLATED:
        for (size_t i = 0; i < cnt; i++) a[3 * i + 2] = 0;
        out = cnt;
        break;
    case BEH_REMOVED:
        out = cnt;
        break;
    case BEH_CONTIGUOUS:
        for (size_t i = 0; i < cnt; i++) {
            int m = (int)a[3 * i + 2];
            if (m == prev_match && out > 0) {
                a[3 * (out - 1) + 1] = a[3 * i + 1];
            } else {
                a[3 * out] = a[3 * i]; a[3 * out + 1] = a[3 * i + 1]; a[3 * out + 2] = 0;
                out++;
            }
            prev_match = m;
        }
        break;
    case BEH_MERGED_PREV:
        for (size_t i = 0; i < cnt; i++) {
            int m = (int)a[3 * i + 2];
            if (m && !prev_match && out > 0) {
                a[3 * (out - 1) + 1] = a[3 * i + 1];
            } else {
                a[3 * out] = a[3 * i]; a[3 * out + 1] = a[3 * i + 1]; a[3 * out + 2] = 0;
                out++;
            }
            prev_match = m;
        }
        break;
    case BEH_MERGED_NEXT: {
        // walk backwards, build reversed at the end of the array, then reverse into place
        size_t w = cnt;  // next free slot counting down
        for (size_t k = cnt; k-- > 0;) {
            int m = (int)a[3 * k + 2];
            size_t s0 = a[3 * k], e0 = a[3 * k + 1];
            if (m && !prev_match && w < cnt) {
                a[3 * w] = s0;
            } else {
                w--;
                a[3 * w] = s0; a[3 * w + 1] = e0; a[3 * w + 2] = 0;
            }
            prev_match = m;
        }
        out = cnt - w;
        memmove(a, a + 3 * w, out * 3 * sizeof *a);
        break;
    }
    }
    for (size_t i = 0; i < out; i++) {
        size_t s0 = v->a[3 * i], e0 = v->a[3 * i + 1];
        if (v->a[3 * i + 2] || e0 <= s0) continue;
        pretokenize(c, step + 1, p + s0, e0 - s0);  // deeper steps use other arrays
    }
}

static void pretokenize(Ctx *c, int step, const char *p, size_t n) {
    const Tokenizer *t = c->t;
    if (c->failed) return;
    if (step == t->n_steps) { model_encode(c, p, n); return; }
    const PreStep *ps = &t->steps[step];
    if (ps->kind == PT_BYTELEVEL) {
        if (ps->add_prefix_space && (n == 0 || p[0] != ' ')) {
            c->prefixed.n = 0;
            buf_put(&c->prefixed, " ", 1);
            buf_put(&c->prefixed, p, n);
            p = c->prefixed.p;
            n = c->prefixed.n;
        }
        if (!ps->use_regex) { pretokenize(c, step + 1, p, n); return; }
    }
    split_step(c, step, ps, p, n);
}

static int is_word_char(const Tokenizer *t, pcre2_match_data *md, const char *s, size_t n) {
    return pcre2_match(t->word_re, (PCRE2_SPTR)s, n, 0, PCRE2_NO_UTF_CHECK, md, NULL) >= 0;
}

// start of the last char of s[0..n)
static size_t last_char_start(const char *s, size_t n) {
    size_t i = n - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i;
}

// tokenizers' AddedVocabulary::find_matches + split: emits text pieces to fn and tokens to out
typedef void (*PieceFn)(Ctx *c, const char *p, size_t n);

static void split_added(Ctx *c, const Trie *tr, const char *s, size_t n, PieceFn fn) {
    const Tokenizer *t = c->t;
    if (tr->empty) { fn(c, s, n); return; }
    const unsigned char *u = (const unsigned char *)s;
    size_t start_offset = 0, pos = 0;
    while (pos < n) {
        // leftmost-longest: the first position where any token starts, longest token there
        int tok = -1;
        size_t mlen = 0;
        for (; pos < n; pos++) {
            if (tr->root_child[u[pos]] < 0) continue;
            mlen = trie_longest(tr, u + pos, n - pos, &tok);
            if (mlen) break;
        }
        if (!mlen) break;
        size_t start = pos, stop = pos + mlen;
        pos = stop;  // the search resumes after this match whatever happens to it
        const Added *a = &t->added[tok];
        if (a->special && !c->allow_special) continue;
        if (a->single_word) {
            int start_space = start == 0, stop_space = stop == n;
            if (!start_space) {
                size_t cs = last_char_start(s, start);
                start_space = !is_word_char(t, c->md, s + cs, start - cs);
            }
            if (!stop_space) stop_space = !is_word_char(t, c->md, s + stop, n - stop);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t cs = last_char_start(s, ns);
                uint32_t cp;
                if (!utf8_decode(u + cs, ns - cs, &cp) || !unicode_is_whitespace(cp)) break;
                ns = cs;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t cp;
                int l = utf8_decode(u + stop, n - stop, &cp);
                if (!l || !unicode_is_whitespace(cp)) break;
                stop += (size_t)l;
            }
        }
        if (start < start_offset) start = start_offset;  // overlapping strips: never step back
        if (start_offset < start) fn(c, s + start_offset, start - start_offset);
        iv_push(c->out, a->id);
        start_offset = stop;
    }
    if (start_offset < n) fn(c, s + start_offset, n - start_offset);
}

static void after_normalize(Ctx *c, const char *p, size_t n) { pretokenize(c, 0, p, n); }

static void normalize_piece(Ctx *c, const char *p, size_t n) {
    const Tokenizer *t = c->t;
    if (t->nfc && !unicode_nfc_quick(p, n)) {
        // the buffer is reused by nested calls only after this piece is done with it
        Buf mine = {0};
        size_t len = unicode_nfc(p, n, &mine.p, &mine.cap);
        split_added(c, &t->trie_norm, mine.p, len, after_normalize);
        free(mine.p);
        return;
    }
    split_added(c, &t->trie_norm, p, n, after_normalize);
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int allow_special, int **ids_out) {
    char err[200];
    int n = tokenizer_encode_checked(t, text, len, allow_special, ids_out, err, sizeof err);
    if (n < 0) fatal("%s: %s", t->path, err);
    return n;
}

int tokenizer_encode_checked(const Tokenizer *t, const char *text, size_t len, int allow_special, int **ids_out,
                             char *err, size_t errlen) {
    IntVec out = {0};
    Ctx c = {.t = t, .allow_special = allow_special, .out = &out};
    c.md = pcre2_match_data_create(1, NULL);
    char *clean = NULL;
    if (utf8_valid_prefix(text, len) != len) {
        clean = utf8_lossy(text, len, &len);
        text = clean;
    }
    if (len > 0) split_added(&c, &t->trie_raw, text, len, normalize_piece);
    pcre2_match_data_free(c.md);
    free(clean);
    free(c.prefixed.p);
    free(c.mapped.p);
    free(c.sym);
    free(c.heap);
    free(c.word.v);
    for (int i = 0; i < 16; i++) free(c.spl[i].a);
    if (c.failed) {
        free(out.v);
        *ids_out = NULL;
        snprintf(err, errlen, "%s", c.err);
        return -1;
    }
    if (!out.v) out.v = xmalloc(sizeof(int));
    *ids_out = out.v;
    return (int)out.n;
}

// ================================================================ decode

char *tokenizer_decode(const Tokenizer *t, const int *ids, int n, int skip_special, size_t *len_out) {
    Buf b = {0};
    buf_put(&b, "", 0);
    int first = 1;
    for (int i = 0; i < n; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->n_rows || !tokenizer_id_to_token(t, id)) continue;
        if (skip_special && tokenizer_is_special(t, id)) continue;
        if (!t->has_decoder && !first) buf_put(&b, " ", 1);  // no decoder: tokens joined by spaces
        buf_put(&b, t->dec_arena + t->dec_off[id], t->dec_len[id]);
        first = 0;
    }
    if (t->decoder_bytelevel && utf8_valid_prefix(b.p, b.n) != b.n) {
        size_t len;
        char *s = utf8_lossy(b.p, b.n, &len);
        free(b.p);
        if (len_out) *len_out = len;
        return s;
    }
    if (len_out) *len_out = b.n;
    return b.p;
}
