// ngram.h: words and n-grams of tokenised captions as small integers, for the caption metrics
// (eval/bleu.c, cider.c, rouge.c). An NgramIndex interns every word and every n-gram it sees,
// so sentences compare by id.
#pragma once

#define NGRAM_MAX 4

typedef struct NgramIndex NgramIndex;

typedef struct {
    int id;     // n-gram id in the index
    int count;  // occurrences in the sentence
} NgramCount;

typedef struct {
    NgramCount *g;  // sorted by id, ids distinct
    int n;
    int words;      // words in the sentence
} NgramCounts;

NgramIndex *ngram_index_new(void);
void ngram_index_free(NgramIndex *ix);
int ngram_index_size(const NgramIndex *ix);  // n-grams interned so far (ids are 0 .. size-1)
int ngram_order(const NgramIndex *ix, int id); // 1..NGRAM_MAX

// Word ids of text: split_space 0 splits as Python's str.split() (runs of whitespace, none kept
// at the ends), 1 as str.split(" ") (every single space; empty words kept). malloc'd; *n gets
// the count.
int *ngram_words(NgramIndex *ix, const char *text, int split_space, int *n);
// Every 1..max_n-gram of text (str.split() words) with its count; free with ngram_counts_free
void ngram_count(NgramIndex *ix, const char *text, int max_n, NgramCounts *out);
void ngram_counts_free(NgramCounts *c);
// count of id in c (0 when absent), by binary search
int ngram_counts_get(const NgramCounts *c, int id);
