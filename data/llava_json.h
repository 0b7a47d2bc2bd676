// llava_json.h: streaming reader of LLaVA-format data with bounded memory (LLaVA-665k is ~1 GB).
//
// Formats, chosen by the file name:
//   *.jsonl  one sample object per line; blank lines are ignored. A line that is not valid JSON is
//            a counted skip (LLAVA_SKIP_MALFORMED_LINE) whose reason gives the line and column:
//            lines are independent, so one bad line does not spoil the rest.
//   other    a top-level JSON list of sample objects. The list is scanned element by element
//            (strings, escapes and nesting tracked here, each element parsed with cJSON), so
//            memory is bounded by the largest sample (and the cap below), not the file. Malformed JSON anywhere
//            (including a missing ',' or ']', trailing garbage, or a file that ends early) is a
//            fatal() error: "FILE: malformed JSON at byte N (line L, column C)".
// Strings: a lone UTF-16 surrogate escape ("\ud800" without its pair) is valid JSON that Python's
// json accepts but UTF-8 cannot hold: the sample is a counted skip (LLAVA_SKIP_BAD_STRING), in
// both formats, with the escape's byte offset. So is a "\u0000" escape in a string the sample
// uses (id, image, a turn's role or text, or the keys naming them): a C string would end there.
// A NUL in a field svlm ignores does not matter.
// A sample: {"id": string|number, "image": string, or a list of 1 to LLAVA_MAX_IMAGES strings
// (several images, one "<image>" placeholder each, in order; absent/null: text only), "conversations": [{"from": "human"|"gpt"|"system", "value": string}, ...]}. "role" and
// "content" are accepted in place of "from" and "value". Unknown fields are ignored; wrong types
// are counted skips with reasons (LLAVA_SKIP_*).
//
// Memory: one sample is held at a time, so a sample may have at most LLAVA_MAX_SAMPLE_BYTES
// (64 MiB) of JSON: a longer JSONL line or list element is read past without being held or
// parsed (the reader's buffer stays at the cap) and is a counted skip (LLAVA_SKIP_TOO_LONG) with
// its length; the rest of the file is read as usual. Real samples are kilobytes.
#pragma once
#include <stdint.h>

#include <cjson/cJSON.h>

#include "data/template.h"

enum {
    LLAVA_OK = 0,
    LLAVA_SKIP_MALFORMED_LINE = 1,  // JSONL only
    LLAVA_SKIP_NOT_OBJECT,          // the list element or line is not a JSON object
    LLAVA_SKIP_BAD_CONVERSATIONS,   // conversations missing, not a list, or a turn of wrong types
    LLAVA_SKIP_BAD_IMAGE,           // image of the wrong type (not a string / list of 1..LLAVA_MAX_IMAGES strings)
    LLAVA_SKIP_BAD_STRING,          // valid JSON that C strings cannot hold (see below)
    LLAVA_SKIP_TOO_LONG,            // over LLAVA_MAX_SAMPLE_BYTES: read past, not parsed
};

#define LLAVA_MAX_SAMPLE_BYTES (64u << 20)  // the per-line (per-element) cap, in bytes
#define LLAVA_MAX_IMAGES 16                 // images per sample (data/shards.h SHARDS_MAX_IMAGES)

typedef struct {
    int64_t index;   // 0-based element (or non-blank line) number in the file
    int64_t offset;  // byte offset in the file where it starts
    int64_t line;    // 1-based line where it starts
    int64_t bytes;   // its length in the file (without the JSONL line's newline)
    int skip;        // LLAVA_OK or LLAVA_SKIP_*
    char why[160];   // reason when skip != 0
    cJSON *root;     // parsed element (owned), NULL when it did not parse
    const char *id;  // "" when absent; points into root or idbuf
    char idbuf[40];
    const char *image;  // NULL: text-only sample; else images[0]
    const char *images[LLAVA_MAX_IMAGES];  // every image, in order (point into root)
    int n_images;
    Turn *turns;        // malloc'd; role/text point into root
    int n_turns;
} LlavaSample;

typedef struct LlavaReader LlavaReader;

// fatal() naming the file when it cannot be opened, or when a JSON file is not a list
LlavaReader *llava_open(const char *path);
void llava_close(LlavaReader *r);
int llava_is_jsonl(const LlavaReader *r);
// Reads the next sample into *s (free with llava_sample_free). Returns 1, or 0 at the end.
int llava_next(LlavaReader *r, LlavaSample *s);
void llava_sample_free(LlavaSample *s);
int64_t llava_bytes_read(const LlavaReader *r);  // progress: bytes consumed so far
int64_t llava_file_size(const LlavaReader *r);
// JSONL: number of non-blank lines (a quick pass over the file); -1 for a JSON list
int64_t llava_count_samples(const char *path);
