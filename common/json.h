// json.h: loading JSON files with errors that name the file and byte offset, and typed field
// access whose errors name the file and the key (config.json, tokenizer.json, index files).
#pragma once
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

// parses text (len bytes); NULL with "<what>: malformed JSON at byte N (line L, column C)" in err
cJSON *json_parse(const char *text, size_t len, const char *what, char *err, size_t errlen);
// reads and parses path; fatal() on a missing file or malformed JSON
cJSON *json_load_file(const char *path);

// Typed lookups. `path` names the file in error messages. The _opt forms return def when the key
// is absent or null; the plain forms fatal() when it is absent. A present key of the wrong type
// is always fatal.
int json_get_int(const cJSON *obj, const char *key, const char *path);
int json_get_int_opt(const cJSON *obj, const char *key, int def, const char *path);
double json_get_num(const cJSON *obj, const char *key, const char *path);
double json_get_num_opt(const cJSON *obj, const char *key, double def, const char *path);
int json_get_bool_opt(const cJSON *obj, const char *key, int def, const char *path);
const char *json_get_str(const cJSON *obj, const char *key, const char *path);
const char *json_get_str_opt(const cJSON *obj, const char *key, const char *def, const char *path);
// Integers read from files that svlm then uses as counts, steps, offsets or sizes: the number
// must be an integer in [lo, hi] (|lo|, |hi| at most 2^53, where doubles are still exact), else
// fatal() "PATH: key "KEY" must be an integer in [lo, hi], got V". Casting an unchecked double
// to an integer type is undefined beyond its range (1e300, inf) and silently wrong for fractions.
int64_t json_get_i64(const cJSON *obj, const char *key, int64_t lo, int64_t hi, const char *path);
int64_t json_get_i64_opt(const cJSON *obj, const char *key, int64_t def, int64_t lo, int64_t hi, const char *path);
// the same test without fatal(): 1 with *out set when j is such a number, else 0
int json_is_i64(const cJSON *j, int64_t lo, int64_t hi, int64_t *out);
// what j is, for messages: "a string", "a number", "a boolean", "a list", "an object", "null",
// or "missing" for NULL
const char *json_type_name(const cJSON *j);
#define JSON_INT_MAX ((int64_t)1 << 53)  // the largest integer a JSON number (a double) holds exactly

// three numbers (or one number for all three) into out; 0 when the key is absent or null
int json_get_float3(const cJSON *obj, const char *key, float out[3], const char *path);
