// vqa_metrics.h: open-ended answer scores: VQA accuracy with the official answer normalisation,
// ANLS, exact match. Reference numbers: scripts/make_eval_fixtures.py; checks: tests/test_eval_metrics.c.
#pragma once

// The answer normalisation of the official VQA evaluation (GT-Vision-Lab/VQA,
// PythonEvaluationTools/vqaEvaluation/vqaEval.py, run by Python 3), step by step:
//   '\n' and '\t' become spaces, then str.strip();
//   processPunctuation: each of ; : / ' [ ] " ( ) = + \ _ > < @ ` , ? is deleted when the text
//     has it next to a space or has a digit-comma-digit anywhere, else replaced by a space; then
//     every '.' not followed by a digit is deleted, at most 32 of them (the original passes
//     re.UNICODE, 32, as re.sub's count argument);
//   processDigitArticle: str.lower(), split at whitespace, number words none/zero..ten become
//     0..10, the articles a, an, the are dropped, the table's contractions are restored
//     ("dont" -> "don’t"), and the words are joined by single spaces.
// Digits are Unicode's (re's \d on str), lowercase is str.lower() (see eval/text.h).
// Returns a malloc'd NUL-terminated string.
char *vqa_normalize(const char *answer);

// VQA accuracy of one prediction against n >= 1 reference answers (annotators): prediction and
// references normalised by vqa_normalize (the references too, as LLaVA's TextVQA evaluator and
// EvalAI do; vqaEval.py assumes pre-normalised ones), then the mean over the n leave-one-out
// subsets of min(1, matches among the other n-1 / 3): with 10 annotators, the 10-choose-9
// average of the official evaluation. With one reference there is no such subset: the score is 1
// when the normalised answers are equal, else 0.
double vqa_accuracy(const char *prediction, const char *const *refs, int n);

// The text compare form shared by ANLS and exact match: " ".join(s.strip().lower().split())
char *answer_compact(const char *s);

// 1 when the prediction equals one of the references after answer_compact, else 0
double exact_match(const char *prediction, const char *const *refs, int n);

// ANLS (Biten et al., ST-VQA 2019) as the anls package computes it: over the references, the max
// of 1 - NL when NL < threshold (0.5) else 0, where NL is the Levenshtein distance in code points
// between the answer_compact forms over the larger of their len(str.upper()) (0 when both empty).
double anls(const char *prediction, const char *const *refs, int n, double threshold);
