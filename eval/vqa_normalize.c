// vqa_normalize.c: the official VQA evaluation's answer normalisation (eval/vqa_metrics.h).
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "eval/text.h"
#include "eval/vqa_metrics.h"

// vqaEval.py's punct list
static const uint32_t PUNCT[] = {';', ':', '/', '\'', '[', ']', '"', '(', ')', '=', '+', '\\', '_', '>', '<', '@', '`', ',', '?'};
// vqaEval.py's manualMap
static const char *const NUMBER_WORDS[][2] = {{"none", "0"}, {"zero", "0"}, {"one", "1"}, {"two", "2"},
                                              {"three", "3"}, {"four", "4"}, {"five", "5"}, {"six", "6"},
                                              {"seven", "7"}, {"eight", "8"}, {"nine", "9"}, {"ten", "10"}};
static const char *const ARTICLES[] = {"a", "an", "the"};
// vqaEval.py's contractions, copied as they are (curly apostrophes included; the keys with an
// ASCII apostrophe or a capital letter can never match, since processPunctuation removes "'" and
// the words are lowercased first: kept so the table stays the original's)
static const char *const CONTRACTIONS[][2] = {
    {"aint", "ain't"},
    {"arent", "aren't"},
    {"cant", "can't"},
    {"couldve", "could've"},
    {"couldnt", "couldn't"},
    {"couldn'tve", "couldn’t’ve"},
    {"couldnt’ve", "couldn’t’ve"},
    {"didnt", "didn’t"},
    {"doesnt", "doesn’t"},
    {"dont", "don’t"},
    {"hadnt", "hadn’t"},
    {"hadnt’ve", "hadn’t’ve"},
    {"hadn'tve", "hadn’t’ve"},
    {"hasnt", "hasn’t"},
    {"havent", "haven’t"},
    {"hed", "he’d"},
    {"hed’ve", "he’d’ve"},
    {"he’dve", "he’d’ve"},
    {"hes", "he’s"},
    {"howd", "how’d"},
    {"howll", "how’ll"},
    {"hows", "how’s"},
    {"Id’ve", "I’d’ve"},
    {"I’dve", "I’d’ve"},
    {"Im", "I’m"},
    {"Ive", "I’ve"},
    {"isnt", "isn’t"},
    {"itd", "it’d"},
    {"itd’ve", "it’d’ve"},
    {"it’dve", "it’d’ve"},
    {"itll", "it’ll"},
    {"let’s", "let’s"},
    {"maam", "ma’am"},
    {"mightnt", "mightn’t"},
    {"mightnt’ve", "mightn’t’ve"},
    {"mightn’tve", "mightn’t’ve"},
    {"mightve", "might’ve"},
    {"mustnt", "mustn’t"},
    {"mustve", "must’ve"},
    {"neednt", "needn’t"},
    {"notve", "not’ve"},
    {"oclock", "o’clock"},
    {"oughtnt", "oughtn’t"},
    {"ow’s’at", "’ow’s’at"},
    {"’ows’at", "’ow’s’at"},
    {"’ow’sat", "’ow’s’at"},
    {"shant", "shan’t"},
    {"shed’ve", "she’d’ve"},
    {"she’dve", "she’d’ve"},
    {"she’s", "she’s"},
    {"shouldve", "should’ve"},
    {"shouldnt", "shouldn’t"},
    {"shouldnt’ve", "shouldn’t’ve"},
    {"shouldn’tve", "shouldn’t’ve"},
    {"somebody’d", "somebodyd"},
    {"somebodyd’ve", "somebody’d’ve"},
    {"somebody’dve", "somebody’d’ve"},
    {"somebodyll", "somebody’ll"},
    {"somebodys", "somebody’s"},
    {"someoned", "someone’d"},
    {"someoned’ve", "someone’d’ve"},
    {"someone’dve", "someone’d’ve"},
    {"someonell", "someone’ll"},
    {"someones", "someone’s"},
    {"somethingd", "something’d"},
    {"somethingd’ve", "something’d’ve"},
    {"something’dve", "something’d’ve"},
    {"somethingll", "something’ll"},
    {"thats", "that’s"},
    {"thered", "there’d"},
    {"thered’ve", "there’d’ve"},
    {"there’dve", "there’d’ve"},
    {"therere", "there’re"},
    {"theres", "there’s"},
    {"theyd", "they’d"},
    {"theyd’ve", "they’d’ve"},
    {"they’dve", "they’d’ve"},
    {"theyll", "they’ll"},
    {"theyre", "they’re"},
    {"theyve", "they’ve"},
    {"twas", "’twas"},
    {"wasnt", "wasn’t"},
    {"wed’ve", "we’d’ve"},
    {"we’dve", "we’d’ve"},
    {"weve", "we've"},
    {"werent", "weren’t"},
    {"whatll", "what’ll"},
    {"whatre", "what’re"},
    {"whats", "what’s"},
    {"whatve", "what’ve"},
    {"whens", "when’s"},
    {"whered", "where’d"},
    {"wheres", "where's"},
    {"whereve", "where’ve"},
    {"whod", "who’d"},
    {"whod’ve", "who’d’ve"},
    {"who’dve", "who’d’ve"},
    {"wholl", "who’ll"},
    {"whos", "who’s"},
    {"whove", "who've"},
    {"whyll", "why’ll"},
    {"whyre", "why’re"},
    {"whys", "why’s"},
    {"wont", "won’t"},
    {"wouldve", "would’ve"},
    {"wouldnt", "wouldn’t"},
    {"wouldnt’ve", "wouldn’t’ve"},
    {"wouldn’tve", "wouldn’t’ve"},
    {"yall", "y’all"},
    {"yall’ll", "y’all’ll"},
    {"y’allll", "y’all’ll"},
    {"yall’d’ve", "y’all’d’ve"},
    {"y’alld’ve", "y’all’d’ve"},
    {"y’all’dve", "y’all’d’ve"},
    {"youd", "you’d"},
    {"youd’ve", "you’d’ve"},
    {"you’dve", "you’d’ve"},
    {"youll", "you’ll"},
    {"youre", "you’re"},
    {"youve", "you’ve"},
};

static int is_space(uint32_t c) { return text_class(c) == TEXT_SPACE; }
static int is_digit(uint32_t c) { return text_class(c) == TEXT_DIGIT; }

// processPunctuation on in[0..n) into out (room for n); returns the new length
static int process_punctuation(const uint32_t *in, int n, uint32_t *out) {
    int comma_digit = 0;  // re.search("(\d)(\,)(\d)", inText)
    for (int i = 0; i + 2 < n; i++)
        if (is_digit(in[i]) && in[i + 1] == ',' && is_digit(in[i + 2])) comma_digit = 1;
    // per punctuation mark: delete (1) or replace by a space (0), decided on the input text
    int del[sizeof PUNCT / sizeof PUNCT[0]];
    for (size_t p = 0; p < sizeof PUNCT / sizeof PUNCT[0]; p++) {
        int near_space = 0;
        for (int i = 0; i + 1 < n; i++)
            if ((in[i] == PUNCT[p] && in[i + 1] == ' ') || (in[i] == ' ' && in[i + 1] == PUNCT[p])) near_space = 1;
        del[p] = near_space || comma_digit;
    }
    uint32_t *mid = xmalloc(((size_t)n + 1) * sizeof(uint32_t));
    int m = 0;
    for (int i = 0; i < n; i++) {
        int p = -1;
        for (size_t j = 0; j < sizeof PUNCT / sizeof PUNCT[0]; j++)
            if (in[i] == PUNCT[j]) p = (int)j;
        if (p < 0) mid[m++] = in[i];
        else if (!del[p]) mid[m++] = ' ';
    }
    // periodStrip "(?!<=\d)(\.)(?!\d)": the lookbehind is misspelt as a lookahead that never
    // fails, so every '.' not followed by a digit goes, the first 32 of them (re.sub's count)
    int k = 0, removed = 0;
    for (int i = 0; i < m; i++) {
        if (mid[i] == '.' && removed < 32 && !(i + 1 < m && is_digit(mid[i + 1]))) {
            removed++;
            continue;
        }
        out[k++] = mid[i];
    }
    free(mid);
    return k;
}

char *vqa_normalize(const char *answer) {
    int n;
    uint32_t *cp = text_decode(answer, strlen(answer), &n);
    for (int i = 0; i < n; i++)
        if (cp[i] == '\n' || cp[i] == '\t') cp[i] = ' ';
    int a = 0, b = n;  // str.strip()
    while (a < b && is_space(cp[a])) a++;
    while (b > a && is_space(cp[b - 1])) b--;
    uint32_t *pun = xmalloc(((size_t)(b - a) + 1) * sizeof(uint32_t));
    int np = process_punctuation(cp + a, b - a, pun);
    int nl;
    uint32_t *lo = text_lower(pun, np, &nl);
    // processDigitArticle: words at whitespace, mapped, joined by single spaces
    size_t cap = (size_t)nl * 4 + 64, len = 0;
    char *out = xmalloc(cap);
    out[0] = 0;
    for (int i = 0; i < nl;) {
        if (is_space(lo[i])) {
            i++;
            continue;
        }
        int j = i;
        while (j < nl && !is_space(lo[j])) j++;
        char *w = text_encode(lo + i, j - i);
        const char *word = w;
        for (size_t t = 0; t < sizeof NUMBER_WORDS / sizeof NUMBER_WORDS[0]; t++)
            if (!strcmp(word, NUMBER_WORDS[t][0])) word = NUMBER_WORDS[t][1];
        int article = 0;
        for (size_t t = 0; t < sizeof ARTICLES / sizeof ARTICLES[0]; t++) article |= !strcmp(word, ARTICLES[t]);
        if (!article) {
            for (size_t t = 0; t < sizeof CONTRACTIONS / sizeof CONTRACTIONS[0]; t++)
                if (!strcmp(word, CONTRACTIONS[t][0])) word = CONTRACTIONS[t][1];
            size_t wl = strlen(word);
            if (len + wl + 2 > cap) out = xrealloc(out, cap = (len + wl + 2) * 2);
            if (len > 0) out[len++] = ' ';
            memcpy(out + len, word, wl + 1);
            len += wl;
        }
        free(w);
        i = j;
    }
    free(lo);
    free(pun);
    free(cp);
    return out;
}
