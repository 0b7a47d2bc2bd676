// caption_metrics.h: BLEU-1..4, CIDEr-D and ROUGE-L as pycocoevalcap 1.2 computes them
// (bleu/bleu_scorer.py, cider/cider_scorer.py, rouge/rouge.py), on tokenised text: each
// hypothesis and reference a string of tokens separated by spaces (eval/text.h's
// text_tokenize makes them from raw captions; pycocoevalcap's own PTBTokenizer is a Java
// program and English-only, so it is not used). Reference numbers: scripts/make_eval_fixtures.py;
// checks: tests/test_eval_metrics.c.
#pragma once

typedef struct {
    int n;                          // images
    const char *const *hyp;         // (n) one tokenised hypothesis per image
    const char *const *const *refs; // (n) each a list of n_refs[i] >= 1 tokenised references
    const int *n_refs;
} CaptionSet;

// Corpus BLEU-1..4 into bleu[0..3] (Bleu's compute_score: the "closest" reference length per
// image, n-gram counts clipped by the references' maximum, summed over the corpus, with the
// scorer's 1e-15 / 1e-9 smoothing and the brevity penalty). Words: str.split().
void caption_bleu(const CaptionSet *s, double bleu[4]);
// CIDEr-D (pycocoevalcap's Cider: n = 1..4, sigma 6, tf-idf with document frequencies over this
// set's references, clipped hypothesis weights, a Gaussian penalty on the difference of the
// sentences' bigram counts, x10): the mean over images; per_image (n), when not NULL, gets each.
double caption_cider_d(const CaptionSet *s, double *per_image);
// ROUGE-L (beta 1.2, the best precision and the best recall over the references; words:
// str.split(" "), so an empty sentence is one empty word): the mean over images; per_image as above.
double caption_rouge_l(const CaptionSet *s, double *per_image);
