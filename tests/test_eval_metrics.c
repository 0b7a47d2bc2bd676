// test_eval_metrics.c: the metric code of eval/ against reference numbers from the official
// implementations (tests/fixtures/eval/metrics.json, made by scripts/make_eval_fixtures.py):
//   - vqa_normalize equals vqaEval.py's normalisation string for string, one case per rule
//     (punctuation deleted or spaced, periods, the 32-period limit, number words, articles,
//     contractions, whitespace, Unicode digits, Korean, Vietnamese);
//   - vqa_accuracy (leave-one-annotator-out min(matches/3, 1)), anls (the anls package) and
//     exact_match equal the reference scores to 1e-6, case by case;
//   - text_tokenize equals the documented Unicode tokenisation (NFC, lowercase, punctuation
//     and whitespace) on English, Vietnamese (precomposed and combining), Korean (syllables
//     and jamo), Japanese punctuation, symbols and emoji;
//   - BLEU-1..4, CIDEr-D (overall and per image) and ROUGE-L (overall and per image) equal
//     pycocoevalcap's scorers to 1e-6 on hand-made, random, empty-hypothesis and Korean /
//     Vietnamese caption sets;
//   - the Unicode tables: every lowercase mapping round-trips through the table lookups.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "eval/caption_metrics.h"
#include "eval/text.h"
#include "eval/vqa_metrics.h"
#include "tests/testlib.h"

#define TOL 1e-6
#define FIXTURE "eval/metrics.json"

static double max_err;  // the largest difference seen, for the log

static void expect_num(const char *what, double got, double want) {
    if (fabs(got - want) > max_err) max_err = fabs(got - want);
    if (!(fabs(got - want) <= TOL)) fail_msg("%s: got %.12g, want %.12g (tol %g)", what, got, want, TOL);
}

// the "answers" list of a case as a C array (pointers into the JSON)
static const char **answers_of(const cJSON *c, int *n) {
    const cJSON *a = fixture_item(c, "answers");
    *n = cJSON_GetArraySize(a);
    const char **out = xmalloc(((size_t)*n + 1) * sizeof(char *));
    for (int i = 0; i < *n; i++) out[i] = cJSON_GetArrayItem(a, i)->valuestring;
    return out;
}

static void test_vqa_normalize(void **state) {
    cJSON *fx = fixture_json(FIXTURE);
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, fixture_item(fx, "vqa_normalize")) {
        const char *rule = fixture_item(c, "rule")->valuestring;
        char *got = vqa_normalize(fixture_item(c, "answer")->valuestring);
        const char *want = fixture_item(c, "normalized")->valuestring;
        if (strcmp(got, want)) fail_msg("normalisation rule \"%s\": got \"%s\", want \"%s\"", rule, got, want);
        free(got);
        n++;
    }
    printf("    %d normalisation rules equal vqaEval.py's\n", n);
    assert_true(n >= 30);
    cJSON_Delete(fx);
}

typedef double (*AnswerScore)(const char *, const char *const *, int);
static double anls_05(const char *p, const char *const *r, int n) { return anls(p, r, n, 0.5); }

static void check_scores(const char *key, AnswerScore f) {
    cJSON *fx = fixture_json(FIXTURE);
    const cJSON *c;
    int cases = 0;
    cJSON_ArrayForEach(c, fixture_item(fx, key)) {
        int n;
        const char **refs = answers_of(c, &n);
        char what[256];
        snprintf(what, sizeof what, "%s \"%s\"", key, fixture_item(c, "rule")->valuestring);
        expect_num(what, f(fixture_item(c, "prediction")->valuestring, refs, n), fixture_item(c, "score")->valuedouble);
        free(refs);
        cases++;
    }
    printf("    %-12s %d cases equal the reference to %g\n", key, cases, TOL);
    assert_true(cases >= 4);
    cJSON_Delete(fx);
}

static void test_vqa_accuracy(void **state) { check_scores("vqa_accuracy", vqa_accuracy); }
static void test_anls(void **state) { check_scores("anls", anls_05); }
static void test_exact_match(void **state) { check_scores("exact_match", exact_match); }

static void test_tokenize(void **state) {
    cJSON *fx = fixture_json(FIXTURE);
    const cJSON *c;
    cJSON_ArrayForEach(c, fixture_item(fx, "tokenize")) {
        const char *text = fixture_item(c, "text")->valuestring, *want = fixture_item(c, "tokens")->valuestring;
        int nt;
        char *got = text_tokenize(text, &nt);
        if (strcmp(got, want)) fail_msg("tokenise \"%s\": got \"%s\", want \"%s\"", text, got, want);
        int spaces = 0;
        for (const char *p = want; *p; p++) spaces += *p == ' ';
        assert_int_equal(nt, *want ? spaces + 1 : 0);
        free(got);
    }
    cJSON_Delete(fx);
}

// a list of strings of the fixture as a C array
static const char **strings_of(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    const char **out = xmalloc(((size_t)*n + 1) * sizeof(char *));
    for (int i = 0; i < *n; i++) out[i] = cJSON_GetArrayItem(a, i)->valuestring;
    return out;
}

static void test_caption_metrics(void **state) {
    cJSON *fx = fixture_json(FIXTURE);
    const cJSON *c;
    int sets = 0;
    cJSON_ArrayForEach(c, fixture_item(fx, "caption")) {
        const char *name = fixture_item(c, "name")->valuestring;
        int n;
        const char **hyp = strings_of(fixture_item(c, "hyp"), &n);
        const cJSON *refs_j = fixture_item(c, "refs");
        const char ***refs = xmalloc((size_t)n * sizeof(char **));
        int *n_refs = xmalloc((size_t)n * sizeof(int));
        for (int i = 0; i < n; i++) refs[i] = strings_of(cJSON_GetArrayItem(refs_j, i), &n_refs[i]);
        CaptionSet s = {.n = n, .hyp = hyp, .refs = (const char *const *const *)refs, .n_refs = n_refs};
        double bleu[4], *cider_per = xmalloc((size_t)n * sizeof(double)), *rouge_per = xmalloc((size_t)n * sizeof(double));
        caption_bleu(&s, bleu);
        double cider = caption_cider_d(&s, cider_per), rouge = caption_rouge_l(&s, rouge_per);
        char what[160];
        for (int k = 0; k < 4; k++) {
            snprintf(what, sizeof what, "%s: BLEU-%d", name, k + 1);
            expect_num(what, bleu[k], cJSON_GetArrayItem(fixture_item(c, "bleu"), k)->valuedouble);
        }
        snprintf(what, sizeof what, "%s: CIDEr-D", name);
        expect_num(what, cider, fixture_item(c, "cider")->valuedouble);
        snprintf(what, sizeof what, "%s: ROUGE-L", name);
        expect_num(what, rouge, fixture_item(c, "rouge_l")->valuedouble);
        for (int i = 0; i < n; i++) {
            snprintf(what, sizeof what, "%s: CIDEr-D of image %d", name, i);
            expect_num(what, cider_per[i], cJSON_GetArrayItem(fixture_item(c, "cider_per_image"), i)->valuedouble);
            snprintf(what, sizeof what, "%s: ROUGE-L of image %d", name, i);
            expect_num(what, rouge_per[i], cJSON_GetArrayItem(fixture_item(c, "rouge_per_image"), i)->valuedouble);
        }
        printf("    %-34s %3d images: BLEU-4 %.6f CIDEr-D %.6f ROUGE-L %.6f equal pycocoevalcap's\n", name, n, bleu[3],
               cider, rouge);
        for (int i = 0; i < n; i++) free(refs[i]);
        free(refs);
        free(n_refs);
        free(hyp);
        free(cider_per);
        free(rouge_per);
        sets++;
    }
    printf("    largest difference from the references so far: %.3g\n", max_err);
    assert_true(sets >= 5);
    cJSON_Delete(fx);
}

// lowercase of a few code points whose mapping is special: two code points, a Greek capital,
// ASCII, a Hangul syllable (no case)
static void test_text_tables(void **state) {
    uint32_t out[2];
    assert_int_equal(text_lower_cp('A', out), 1);
    assert_int_equal(out[0], 'a');
    assert_int_equal(text_lower_cp(0x130, out), 2);  // İ -> i + U+0307 (str.lower())
    assert_int_equal(out[0], 'i');
    assert_int_equal(out[1], 0x307);
    assert_int_equal(text_lower_cp(0x1EA0, out), 1);  // Ạ -> ạ (Vietnamese)
    assert_int_equal(out[0], 0x1EA1);
    assert_int_equal(text_lower_cp(0xD55C, out), 1);  // 한
    assert_int_equal(out[0], 0xD55C);
    assert_int_equal(text_class(' '), TEXT_SPACE);
    assert_int_equal(text_class(0x3000), TEXT_SPACE);  // ideographic space
    assert_int_equal(text_class(0x1C), TEXT_SPACE);    // str.isspace() but not White_Space
    assert_int_equal(text_class('7'), TEXT_DIGIT);
    assert_int_equal(text_class(0x0663), TEXT_DIGIT);  // Arabic-Indic three
    assert_int_equal(text_class(0x3002), TEXT_PUNCT);  // 。
    assert_int_equal(text_class('$'), TEXT_OTHER);
    assert_int_equal(text_upper_len(0xDF), 2);        // ß -> SS
    assert_int_equal(text_upper_len('a'), 1);
}

// bytes that are not UTF-8 become U+FFFD (one per maximal invalid subpart) and count as letters;
// nothing reads past the end (this program also runs under AddressSanitizer)
static void test_invalid_utf8(void **state) {
    char *t = text_tokenize("\xff abc\xe2\x82 d\xc3", NULL);
    assert_string_equal(t, "\xEF\xBF\xBD abc\xEF\xBF\xBD d\xEF\xBF\xBD");
    free(t);
    char *v = vqa_normalize("\xf0\x9f yes.");
    assert_string_equal(v, "\xEF\xBF\xBD yes");
    free(v);
    const char *refs[] = {"\xff"};
    assert_true(fabs(anls("\xfe", refs, 1, 0.5) - 1.0) < TOL);  // both U+FFFD
    assert_true(exact_match("\xc0", refs, 1) == 1.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_tables),   cmocka_unit_test(test_vqa_normalize), cmocka_unit_test(test_vqa_accuracy),
        cmocka_unit_test(test_anls),          cmocka_unit_test(test_exact_match),   cmocka_unit_test(test_tokenize),
        cmocka_unit_test(test_caption_metrics), cmocka_unit_test(test_invalid_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
