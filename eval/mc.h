// mc.h: multiple-choice prompts and answers, as LLaVA evaluates MMBench
// (llava/eval/model_vqa_mmbench.py with --single-pred-prompt):
//
//   [hint + "\n"] question + "\nA. option" + "\nB. option" ... +
//   "\nAnswer with the option's letter from the given choices directly."
//
// ("<image>\n" is put in front by the model's prompt encoder when the item has an image.)
// Circular evaluation (MMBench's CircularEval) asks each question once per rotation of its
// options (rotation r shows option (i + r) mod n as letter i) and counts it right only when
// every rotation is answered right.
#pragma once

#define MC_INSTRUCTION "Answer with the option's letter from the given choices directly."

// The prompt for options shown in order order[0..n) (indices into options); instruction NULL
// leaves the last line out (likelihood scoring). malloc'd.
char *mc_prompt(const char *hint, const char *question, char *const *options, const int *order, int n,
                const char *instruction);
// the displayed order of rotation r: order[i] = (i + r) mod n
void mc_rotation(int *order, int n, int r);

// The option a generated answer chooses, as a displayed index (0 = A), or -1 when it names
// none or several:
//   1. the text (leading spaces, "(" and "answer:"/"option" words skipped) starts with a letter
//      of the options that is not followed by another letter: "B", "B.", "(B) dog", "B: dog";
//   2. else exactly one letter of the options stands alone in it ("I think C is right");
//      in 1 and 2, two different letters standing alone ("A or B") name none;
//   3. else, when no letter stands alone, exactly one option's text appears in it
//      (case-insensitive), or the whole answer equals one option's text.
int mc_parse_answer(const char *text, char *const *options, const int *order, int n);
