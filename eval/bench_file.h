// bench_file.h: benchmark files for ./eval, read whole and checked before any model work.
//
// A file is a JSON list of items or JSONL (one item per line; *.jsonl), as data/llava_json.h
// reads them. An item:
//   "id"        string or number (optional: the item's index)
//   "image"     file name, relative to --image-folder, else to the data file's folder (optional)
//   "question"  string (mc, vqa; caption: optional, the caption prompt replaces it)
//   "hint"      string (mc, optional: put before the question, as LLaVA's MMBench script does)
//   "category"  string (optional: accuracy is also reported per category)
//   mc:      "options": [strings] or MMBench's "A", "B", "C", ... fields (consecutive from A;
//            null or absent ends them), 2 to 26; "answer": the correct option's letter
//   vqa:     "answers": [strings] (annotators' answers, >= 1) or "answer": string
//   caption: "captions": [strings] (references, >= 1)
// The task is --task, or else found from the first item's fields (options or A/B -> mc,
// captions -> caption, answers/answer -> vqa). Every item must then have its task's fields.
// Broken items (malformed JSON, wrong types, missing fields, an answer letter outside the
// options, empty options) are fatal(): "FILE:LINE: item N (id X): what is wrong". An image
// file that does not exist is a counted skip (BenchItem.skip), reported in the summary.
#pragma once
#include <stdint.h>

typedef enum { TASK_NONE = 0, TASK_MC, TASK_VQA, TASK_CAPTION } EvalTask;

typedef struct {
    char *id;
    int64_t line;        // 1-based line of the file where the item starts
    char *image;         // resolved path, NULL: text only
    char *question;      // NULL for captions without one
    char *hint;          // NULL when absent
    char *category;      // NULL when absent
    char **options;      // mc: (n_options)
    int n_options;
    int answer;          // mc: index of the correct option
    char **refs;         // vqa: reference answers; caption: reference captions
    int n_refs;
    const char *skip;    // NULL, or why the item is skipped ("image not found")
} BenchItem;

typedef struct {
    char path[1024];
    EvalTask task;
    BenchItem *items;
    int n;
    int n_skipped;
} BenchSet;

const char *eval_task_name(EvalTask t);  // "mc", "vqa", "caption"
// fatal() on an unknown name
EvalTask eval_task_parse(const char *s);

// Reads and checks path (see the top); image_folder NULL: the file's folder.
void bench_load(BenchSet *b, const char *path, const char *image_folder, EvalTask task);
void bench_free(BenchSet *b);
// keeps the first n items (--limit)
void bench_truncate(BenchSet *b, int n);
