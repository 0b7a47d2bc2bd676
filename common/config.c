// config.c: table-driven `key = value` parsing (see config.h).
#include "common/config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static size_t edit_distance(const char *a, const char *b) {
    size_t n = strlen(a), m = strlen(b);
    if (n > 64 || m > 64) return 99;
    size_t d[65][65];
    for (size_t i = 0; i <= n; i++) d[i][0] = i;
    for (size_t j = 0; j <= m; j++) d[0][j] = j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            size_t sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    return d[n][m];
}

static const CfgKey *find_key(const CfgKey *keys, int n, const char *key, const char *where) {
    for (int i = 0; i < n; i++)
        if (strcmp(keys[i].key, key) == 0) return &keys[i];
    const char *best = NULL;
    size_t bd = 4;  // suggest only close matches
    for (int i = 0; i < n; i++) {
        size_t d = edit_distance(key, keys[i].key);
        if (d < bd || (strstr(keys[i].key, key) && d < 8)) bd = d, best = keys[i].key;
    }
    if (best) fatal("%s: unknown key \"%s\" (did you mean \"%s\"?)", where, key, best);
    fatal("%s: unknown key \"%s\"", where, key);
}

static void set_value(const CfgKey *k, void *dst, const char *val, const char *where) {
    char *p = (char *)dst + k->offset, *end;
    errno = 0;
    switch (k->type) {
    case CFG_INT: {
        long v = strtol(val, &end, 10);
        if (!*val || *end || errno || v < INT32_MIN || v > INT32_MAX)
            fatal("%s: %s = \"%s\" is not an integer", where, k->key, val);
        *(int *)p = (int)v;
        break;
    }
    case CFG_U64: {
        if (!*val || *val == '-') fatal("%s: %s = \"%s\" is not a non-negative integer", where, k->key, val);
        unsigned long long v = strtoull(val, &end, 10);
        if (*end || errno) fatal("%s: %s = \"%s\" is not a non-negative integer", where, k->key, val);
        *(uint64_t *)p = (uint64_t)v;
        break;
    }
    case CFG_FLOAT: {
        double v = strtod(val, &end);
        if (!*val || *end || errno || !isfinite(v)) fatal("%s: %s = \"%s\" is not a number", where, k->key, val);
        *(double *)p = v;
        break;
    }
    case CFG_BOOL:
        if (!strcmp(val, "true") || !strcmp(val, "1") || !strcmp(val, "yes")) *(int *)p = 1;
        else if (!strcmp(val, "false") || !strcmp(val, "0") || !strcmp(val, "no")) *(int *)p = 0;
        else fatal("%s: %s = \"%s\" is not true or false", where, k->key, val);
        break;
    case CFG_STR:
        if (strlen(val) >= k->size) fatal("%s: %s is longer than %zu characters", where, k->key, k->size - 1);
        strcpy(p, val);
        break;
    }
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    return s;
}

// value text: a quoted string is taken whole (with \" and \\ escapes), otherwise up to " #"
static char *parse_value(char *v, const char *where, const char *key) {
    v = trim(v);
    if (*v == '"') {
        char *out = v, *in = v + 1;
        while (*in && *in != '"') {
            if (*in == '\\' && in[1] == 'n') {
                *out++ = '\n';
                in += 2;
                continue;
            }
            if (*in == '\\' && (in[1] == '"' || in[1] == '\\')) in++;
            *out++ = *in++;
        }
        if (*in != '"') fatal("%s: %s: unterminated quoted value", where, key);
        char *rest = trim(in + 1);
        if (*rest && *rest != '#') fatal("%s: %s: unexpected text after the quoted value", where, key);
        *out = 0;
        return v;
    }
    for (char *c = v; *c; c++)
        if (*c == '#' && (c == v || isspace((unsigned char)c[-1]))) {
            *c = 0;
            break;
        }
    return trim(v);
}

void config_parse(const CfgKey *keys, int n, void *dst, const char *path, int argc, char **argv) {
    char where[1200];
    for (int i = 0; i < n; i++) {
        snprintf(where, sizeof where, "default of %s", keys[i].key);
        set_value(&keys[i], dst, keys[i].def, where);
    }
    if (path) {
        FILE *f = fopen(path, "r");
        if (!f) fatal("%s: cannot open config file: %s", path, strerror(errno));
        char line[8192];
        int lineno = 0, *seen = xcalloc(n, sizeof(int));
        while (fgets(line, sizeof line, f)) {
            lineno++;
            snprintf(where, sizeof where, "%s:%d", path, lineno);
            if (!strchr(line, '\n') && !feof(f)) fatal("%s: line longer than %zu characters", where, sizeof line - 2);
            char *s = trim(line);
            if (!*s || *s == '#') continue;
            char *eq = strchr(s, '=');
            if (!eq) fatal("%s: expected \"key = value\", got \"%s\"", where, s);
            *eq = 0;
            char *key = trim(s);
            const CfgKey *k = find_key(keys, n, key, where);
            int idx = (int)(k - keys);
            if (seen[idx]) fatal("%s: %s is already set on line %d", where, key, seen[idx]);
            seen[idx] = lineno;
            set_value(k, dst, parse_value(eq + 1, where, key), where);
        }
        fclose(f);
        free(seen);
    }
    for (int a = 0; a < argc; a++) {
        snprintf(where, sizeof where, "argument \"%s\"", argv[a]);
        char *copy = xstrdup(argv[a]);
        char *eq = strchr(copy, '=');
        if (!eq) fatal("%s: expected key=value", where);
        *eq = 0;
        const CfgKey *k = find_key(keys, n, trim(copy), where);
        set_value(k, dst, eq + 1, where);  // the shell already removed any quotes
        free(copy);
    }
}

const char *config_value(const CfgKey *keys, int n, const void *dst, const char *key, char *buf, size_t cap) {
    for (int i = 0; i < n; i++) {
        if (strcmp(keys[i].key, key) != 0) continue;
        const char *p = (const char *)dst + keys[i].offset;
        switch (keys[i].type) {
        case CFG_INT: snprintf(buf, cap, "%d", *(const int *)p); break;
        case CFG_U64: snprintf(buf, cap, "%" PRIu64, *(const uint64_t *)p); break;
        case CFG_FLOAT: snprintf(buf, cap, "%.17g", *(const double *)p); break;
        case CFG_BOOL: snprintf(buf, cap, "%s", *(const int *)p ? "true" : "false"); break;
        case CFG_STR: snprintf(buf, cap, "%s", p); break;
        }
        return buf;
    }
    CHECK(0, "config_value: no key %s", key);
    return NULL;
}

void config_write(const CfgKey *keys, int n, const void *dst, void *fp) {
    FILE *f = fp;
    char buf[4200];
    for (int i = 0; i < n; i++) {
        config_value(keys, n, dst, keys[i].key, buf, sizeof buf);
        int quote = keys[i].type == CFG_STR && (strchr(buf, '#') || strchr(buf, '"') || strchr(buf, '\n') || !*buf ||
                                                isspace((unsigned char)buf[0]) ||
                                                isspace((unsigned char)buf[strlen(buf) - 1]));
        fprintf(f, "%-14s = ", keys[i].key);
        if (quote) {
            fputc('"', f);
            for (const char *c = buf; *c; c++) {
                if (*c == '\n') {
                    fputs("\\n", f);
                    continue;
                }
                if (*c == '"' || *c == '\\') fputc('\\', f);
                fputc(*c, f);
            }
            fputc('"', f);
        } else {
            fputs(buf, f);
        }
        fprintf(f, "%*s# %s\n", 1, "", keys[i].help);
    }
}

int config_parse_size(const char *s, size_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !(v >= 0)) return 0;
    while (*end == ' ') end++;
    static const struct { const char *unit; double mult; } units[] = {
        {"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
        {"K", 1024.0}, {"M", 1048576.0}, {"G", 1073741824.0}, {"T", 1099511627776.0},
        {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0},
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].unit)) continue;
        double b = v * units[i].mult;
        if (b >= 1.8e19) return 0;
        *out = (size_t)b;
        return 1;
    }
    return 0;
}
