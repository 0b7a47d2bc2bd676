// config.h: `key = value` configuration files with `#` comments, overridden by key=value
// arguments, parsed against a table of known keys. Every error names the file and line (or the
// argument), the key and what is wrong; an unknown key suggests the nearest known one.
#pragma once
#include <stddef.h>

typedef enum { CFG_INT, CFG_FLOAT, CFG_STR, CFG_BOOL, CFG_U64 } CfgType;

typedef struct {
    const char *key;
    CfgType type;
    size_t offset;     // into the destination struct
    size_t size;       // CFG_STR: capacity of the char array
    const char *def;   // default, as text ("" for an empty string)
    const char *help;  // one line, shown in the resolved config
} CfgKey;

// Sets every key to its default, then applies path (may be NULL) and then the argv pairs.
// Values: integers, floats, true/false/1/0, strings (optionally in double quotes, which keep a
// '#' inside; otherwise " #" starts a comment). A key given twice in the file is an error.
void config_parse(const CfgKey *keys, int n, void *dst, const char *path, int argc, char **argv);
// writes every key = value (with its help as a comment) to f
void config_write(const CfgKey *keys, int n, const void *dst, void *f);
// a size such as 70GiB, 500MB, 1.5T or 123456 (bytes): B, KB/MB/GB/TB (powers of 1000) or
// K/M/G/T with or without iB (powers of 1024). 1 and *out on success, 0 when s is not a size.
int config_parse_size(const char *s, size_t *out);
// the value of key as text (for comparisons and messages); buf of cap bytes
const char *config_value(const CfgKey *keys, int n, const void *dst, const char *key, char *buf, size_t cap);
