// ngram.c: interned words and n-grams (eval/ngram.h). Two open-addressing hash tables: word
// text -> word id, and (order, word ids) -> n-gram id; both grow at half full.
#include "eval/ngram.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "eval/text.h"

typedef struct {
    int order;
    int w[NGRAM_MAX];
} Gram;

struct NgramIndex {
    char **words;    // (n_words) interned word text
    int n_words, words_cap;
    int *word_slot;  // (word_slots) word id + 1, 0 empty
    int word_slots;
    Gram *grams;     // (n_grams)
    int n_grams, grams_cap;
    int *gram_slot;  // (gram_slots) n-gram id + 1, 0 empty
    int gram_slots;
};

static uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h;
}

NgramIndex *ngram_index_new(void) {
    NgramIndex *ix = xcalloc(1, sizeof *ix);
    ix->word_slots = 1024;
    ix->word_slot = xcalloc((size_t)ix->word_slots, sizeof(int));
    ix->gram_slots = 4096;
    ix->gram_slot = xcalloc((size_t)ix->gram_slots, sizeof(int));
    return ix;
}

void ngram_index_free(NgramIndex *ix) {
    if (!ix) return;
    for (int i = 0; i < ix->n_words; i++) free(ix->words[i]);
    free(ix->words);
    free(ix->word_slot);
    free(ix->grams);
    free(ix->gram_slot);
    free(ix);
}

int ngram_index_size(const NgramIndex *ix) { return ix->n_grams; }
int ngram_order(const NgramIndex *ix, int id) { return ix->grams[id].order; }

static int word_find_slot(const NgramIndex *ix, const char *w, size_t len) {
    size_t mask = (size_t)ix->word_slots - 1, i = hash_bytes(w, len) & mask;
    for (;; i = (i + 1) & mask) {
        int id = ix->word_slot[i] - 1;
        if (id < 0 || (strlen(ix->words[id]) == len && !memcmp(ix->words[id], w, len))) return (int)i;
    }
}

static int word_id(NgramIndex *ix, const char *w, size_t len) {
    int slot = word_find_slot(ix, w, len);
    if (ix->word_slot[slot]) return ix->word_slot[slot] - 1;
    if (ix->n_words == ix->words_cap) {
        ix->words_cap = ix->words_cap ? ix->words_cap * 2 : 256;
        ix->words = xrealloc(ix->words, (size_t)ix->words_cap * sizeof(char *));
    }
    char *copy = xmalloc(len + 1);
    memcpy(copy, w, len);
    copy[len] = 0;
    int id = ix->n_words++;
    ix->words[id] = copy;
    ix->word_slot[slot] = id + 1;
    if (2 * ix->n_words > ix->word_slots) {  // grow and rehash
        free(ix->word_slot);
        ix->word_slots *= 2;
        ix->word_slot = xcalloc((size_t)ix->word_slots, sizeof(int));
        for (int j = 0; j < ix->n_words; j++)
            ix->word_slot[word_find_slot(ix, ix->words[j], strlen(ix->words[j]))] = j + 1;
    }
    return id;
}

static int gram_find_slot(const NgramIndex *ix, const Gram *g) {
    size_t mask = (size_t)ix->gram_slots - 1, i = hash_bytes(g, sizeof *g) & mask;
    for (;; i = (i + 1) & mask) {
        int id = ix->gram_slot[i] - 1;
        if (id < 0 || !memcmp(&ix->grams[id], g, sizeof *g)) return (int)i;
    }
}

static int gram_id(NgramIndex *ix, const int *w, int order) {
    Gram g;
    memset(&g, 0, sizeof g);  // unused word slots zero, so memcmp and the hash see equal keys
    g.order = order;
    memcpy(g.w, w, (size_t)order * sizeof(int));
    int slot = gram_find_slot(ix, &g);
    if (ix->gram_slot[slot]) return ix->gram_slot[slot] - 1;
    if (ix->n_grams == ix->grams_cap) {
        ix->grams_cap = ix->grams_cap ? ix->grams_cap * 2 : 1024;
        ix->grams = xrealloc(ix->grams, (size_t)ix->grams_cap * sizeof(Gram));
    }
    int id = ix->n_grams++;
    ix->grams[id] = g;
    ix->gram_slot[slot] = id + 1;
    if (2 * ix->n_grams > ix->gram_slots) {
        free(ix->gram_slot);
        ix->gram_slots *= 2;
        ix->gram_slot = xcalloc((size_t)ix->gram_slots, sizeof(int));
        for (int j = 0; j < ix->n_grams; j++) ix->gram_slot[gram_find_slot(ix, &ix->grams[j])] = j + 1;
    }
    return id;
}

int *ngram_words(NgramIndex *ix, const char *text, int split_space, int *n) {
    size_t len = strlen(text);
    int *ids = xmalloc((len + 1) * sizeof(int)), k = 0;
    if (split_space) {  // str.split(" "): len + 1 pieces for len spaces
        const char *s = text;
        for (;;) {
            const char *e = strchr(s, ' ');
            size_t l = e ? (size_t)(e - s) : strlen(s);
            ids[k++] = word_id(ix, s, l);
            if (!e) break;
            s = e + 1;
        }
    } else {  // str.split(): runs of Unicode whitespace
        int ncp;
        uint32_t *cp = text_decode(text, len, &ncp);
        for (int i = 0; i < ncp;) {
            if (text_class(cp[i]) == TEXT_SPACE) {
                i++;
                continue;
            }
            int j = i;
            while (j < ncp && text_class(cp[j]) != TEXT_SPACE) j++;
            char *w = text_encode(cp + i, j - i);
            ids[k++] = word_id(ix, w, strlen(w));
            free(w);
            i = j;
        }
        free(cp);
    }
    *n = k;
    return ids;
}

static int int_cmp(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

void ngram_count(NgramIndex *ix, const char *text, int max_n, NgramCounts *out) {
    CHECK(max_n >= 1 && max_n <= NGRAM_MAX, "ngram_count: order %d", max_n);
    int nw;
    int *w = ngram_words(ix, text, 0, &nw);
    int *ids = xmalloc(((size_t)nw * max_n + 1) * sizeof(int)), k = 0;
    for (int order = 1; order <= max_n; order++)
        for (int i = 0; i + order <= nw; i++) ids[k++] = gram_id(ix, w + i, order);
    qsort(ids, (size_t)k, sizeof(int), int_cmp);
    out->g = xmalloc(((size_t)k + 1) * sizeof(NgramCount));
    out->n = 0;
    for (int i = 0; i < k; i++) {
        if (out->n > 0 && out->g[out->n - 1].id == ids[i]) out->g[out->n - 1].count++;
        else out->g[out->n++] = (NgramCount){ids[i], 1};
    }
    out->words = nw;
    free(ids);
    free(w);
}

void ngram_counts_free(NgramCounts *c) {
    free(c->g);
    c->g = NULL;
    c->n = 0;
}

int ngram_counts_get(const NgramCounts *c, int id) {
    int lo = 0, hi = c->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c->g[mid].id < id) lo = mid + 1;
        else if (c->g[mid].id > id) hi = mid - 1;
        else return c->g[mid].count;
    }
    return 0;
}
