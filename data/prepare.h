// prepare.h: converting LLaVA JSON / JSONL data (data/llava_json.h) into a directory of shards
// (data/shards.h) that the loader reads: each sample is templated and tokenised
// (data/template.h), its image read and checked by decoding it (data/image.h), cut to the length
// limit, compressed and written in input order by a pool of threads. The output is byte-identical
// whatever the thread count. ./prepare runs it; ./train calls it when its shards are not current.
//
// Output is written to "<out>.tmp-<host>-<pid>" and renamed to <out> when complete, so a killed
// run never leaves a directory that looks valid; on an error (bad JSON, disk full, ...) the
// unfinished directory is removed before the fatal() error line. An existing <out> is replaced
// only when it is a prepared directory (or empty): moved to "<out>.old-<host>-<pid>", then
// removed. Leftovers of killed runs are removed by the next run on the same host once their
// process is gone; those of other hosts (shared storage) are never touched.
//
// Errors are fatal() on the calling thread (bad settings, unreadable inputs, malformed JSON, data
// with images but no image folder, write errors); what is wrong with one sample is a counted skip
// in the workers, a tokenizer failure on one sample's text included (left in the workers: running
// out of memory).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "data/image_prep.h"

// why a sample was skipped (counted per reason in the summary and in meta.json)
enum {
    PREPARE_SKIP_MALFORMED_LINE,      // JSONL: a line that is not valid JSON
    PREPARE_SKIP_NOT_OBJECT,          // an element that is not a JSON object
    PREPARE_SKIP_BAD_CONVERSATIONS,   // conversations missing / not a list / turns of wrong types
    PREPARE_SKIP_BAD_IMAGE_FIELD,     // "image" not a file name
    PREPARE_SKIP_BAD_STRING,          // a string C cannot hold: lone UTF-16 surrogate, or a NUL (\u0000) in a field used
    PREPARE_SKIP_ID_TOO_LONG,         // "id" over SHARDS_MAX_ID_BYTES
    PREPARE_SKIP_NO_GPT,              // template: no assistant turn
    PREPARE_SKIP_BAD_ROLE,            // template: unknown role
    PREPARE_SKIP_BAD_ORDER,           // template: turns do not alternate
    PREPARE_SKIP_MULTIPLE_IMAGES,     // template: more <image> than SHARDS_MAX_IMAGES (or one re-formed)
    PREPARE_SKIP_RETOKENIZE,          // template: per-piece ids differ from the whole text's
    PREPARE_SKIP_SPECIAL,             // template: a special token is missing
    PREPARE_SKIP_EMPTY,               // template: no token carries loss
    PREPARE_SKIP_IMAGE_NO_PLACEHOLDER,  // more images in "image" than <image> in the text
    PREPARE_SKIP_PLACEHOLDER_NO_IMAGE,  // more <image> in the text than images in "image"
    PREPARE_SKIP_IMAGE_MISSING,       // the image file does not exist
    PREPARE_SKIP_IMAGE_UNREADABLE,    // exists but cannot be read (permissions, a directory...)
    PREPARE_SKIP_IMAGE_CORRUPT,       // not a PNG/JPEG, or libpng/libjpeg rejected it, or truncated
    PREPARE_SKIP_IMAGE_UNSUPPORTED,   // a valid image in a format svlm does not decode
    PREPARE_SKIP_IMAGE_TOO_LARGE,     // file over 64 MB or dimensions over the decoder's limits
    PREPARE_SKIP_OVERLONG,            // over max_seq_len: --overlong skip, or nothing labelled left after the cut
    PREPARE_SKIP_TOKENIZER,           // the tokenizer failed on its text (pre-tokenizer regex over PCRE2's limits)
    PREPARE_SKIP_TOO_LONG,            // JSONL line / JSON element over LLAVA_MAX_SAMPLE_BYTES, read past unparsed
    PREPARE_SKIP_IMAGE_OUTSIDE,       // image path leaves the image folder (absolute or ../) without allow_outside_images
    PREPARE_SKIP_COUNT
};
const char *prepare_skip_name(int reason);  // "no_gpt_turn", "image_missing", ... (meta.json keys)

// This host's name as the temporary names hold it ([A-Za-z0-9._-], anything else as '_').
void prepare_host_tag(char *dst, size_t cap);

typedef struct {
    const char *data;          // LLaVA .json (a list) or .jsonl (one object per line)
    const char *image_folder;  // image names are relative to it; NULL when no sample has an image
    int allow_outside_images;  // 0 (default): a name that leaves the folder (absolute, or .. above
                               // it) is a counted skip; 1: read as LLaVA does (os.path.join)
    const char *llm_dir;       // tokenizer.json, config.json / generation_config.json (eos id)
    const char *template_name; // "plain", "chatml", "hyperclovax", "vicuna_v1"
    const char *out_dir;
    const char *system;        // NULL: the template's default system prompt
    int max_seq_len;           // tokens per sample with the image slot expanded (default 2048)
    int image_tokens;          // feature rows per tile (default 144: CLIP-L/14-336 + ldp; 576 for mlp2x_gelu)
    const char *image_format;  // the image slot's format (data/image_slot.h): NULL or "" for llava
    int max_images;            // images per sample at most (more: a counted multiple_images skip); 0: SHARDS_MAX_IMAGES
    const ImagePrep *prep;     // the tower's preprocessing, whose max_tiles / family / sizes give each
                               // image's grid (data/tiling.h); NULL: one tile per image
    int threads;               // 0: one per core
    int overlong_skip;         // 0: cut text at the end (default), 1: skip over-long samples
    int64_t shard_bytes;       // 0: 512 MiB per shard file
    int level;                 // zstd level, 0: 3
    int quiet;                 // no progress line and no per-sample warnings
} PrepareSpec;

void prepare_spec_defaults(PrepareSpec *s);  // zeroes s and sets the defaults above

typedef struct {
    int64_t samples_read;  // elements / non-blank lines in the data file
    int64_t samples;       // written
    int64_t tokens;        // text tokens written (the image slots not counted)
    int64_t labelled;      // positions that carry loss (slots expanded)
    int64_t images;
    int64_t tiles;         // the images' tiles, thumbnails included (data/tiling.h)
    int64_t image_bytes;   // original image file bytes stored
    int64_t truncated;     // samples cut to max_seq_len
    int64_t skipped[PREPARE_SKIP_COUNT];
    int64_t skipped_total;
    int64_t shard_bytes;   // compressed bytes written
    int shards;
    int eos_id;
    double seconds;
} PrepareSummary;

// Runs the whole conversion; fatal() with one line on bad input or a failed write.
void prepare_run(const PrepareSpec *spec, PrepareSummary *out);
void prepare_print_summary(const PrepareSpec *spec, const PrepareSummary *s, FILE *f);

// 1 when out_dir holds complete shards made from the same data file (path, size and mtime), the
// same tokenizer.json bytes (hash), template, system prompt, eos id, max_seq_len, image_tokens,
// image_format, tiling (max_tiles and the sizes that decide grids),
// --overlong mode and image folder; else 0 with the first difference in why (may be NULL).
int prepare_is_current(const char *out_dir, const PrepareSpec *spec, char *why, size_t whylen);

// What decides the images' grids, as meta.json's "tiling" records it: "none" (p NULL or not
// tiling), or the family, tile size, longest edge and max_tiles. The loader compares it.
void prepare_tiling_text(const ImagePrep *p, char *dst, size_t cap);

// The LLM's end-of-sequence id: config.json eos_token_id (first if a list), else
// generation_config.json's, else the tokenizer's <|endoftext|> (tok may be NULL: then -1).
struct Tokenizer;
int prepare_eos_id(const char *llm_dir, const struct Tokenizer *tok);
