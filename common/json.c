// json.c: cJSON with file-and-offset error messages and typed field access (see json.h).
#include "common/json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

cJSON *json_parse(const char *text, size_t len, const char *what, char *err, size_t errlen) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    const char *bad = NULL;
    if (!root) {
        bad = end ? end : text;
    } else {  // anything but whitespace after the value is an error too
        for (const char *p = end; p < text + len; p++)
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') { bad = p; break; }
        if (bad) { cJSON_Delete(root); root = NULL; }
    }
    if (bad) {
        size_t off = (size_t)(bad - text), line = 1, col = 1;
        for (const char *p = text; p < bad; p++) {
            if (*p == '\n') line++, col = 1;
            else col++;
        }
        snprintf(err, errlen, "%s: malformed JSON at byte %zu (line %zu, column %zu)", what, off, line, col);
    }
    return root;
}

cJSON *json_load_file(const char *path) {
    size_t len;
    char *text = file_read_all(path, &len);
    if (!text) fatal("%s: cannot read: %s", path, strerror(errno));
    char err[1024];
    cJSON *root = json_parse(text, len, path, err, sizeof err);
    free(text);
    if (!root) fatal("%s", err);
    return root;
}

static const cJSON *lookup(const cJSON *obj, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    return (j && !cJSON_IsNull(j)) ? j : NULL;
}

static double get_num(const cJSON *j, const char *key, const char *path) {
    if (!cJSON_IsNumber(j)) fatal("%s: key \"%s\" must be a number", path, key);
    return j->valuedouble;
}

int json_get_int(const cJSON *obj, const char *key, const char *path) {
    const cJSON *j = lookup(obj, key);
    if (!j) fatal("%s: missing key \"%s\"", path, key);
    return json_get_int_opt(obj, key, 0, path);
}

int json_get_int_opt(const cJSON *obj, const char *key, int def, const char *path) {
    const cJSON *j = lookup(obj, key);
    if (!j) return def;
    double v = get_num(j, key, path);
    if (v != floor(v) || v < -2147483648.0 || v > 2147483647.0)
        fatal("%s: key \"%s\" must be an integer, got %g", path, key, v);
    return (int)v;
}

double json_get_num(const cJSON *obj, const char *key, const char *path) {
    const cJSON *j = lookup(obj, key);
    if (!j) fatal("%s: missing key \"%s\"", path, key);
    return get_num(j, key, path);
}

double json_get_num_opt(const cJSON *obj, const char *key, double def, const char *path) {
    const cJSON *j = lookup(obj, key);
    return j ? get_num(j, key, path) : def;
}

int json_is_i64(const cJSON *j, int64_t lo, int64_t hi, int64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double v = j->valuedouble;
    // compared as doubles first: the cast below is defined only inside int64's range
    if (!(v >= -(double)JSON_INT_MAX && v <= (double)JSON_INT_MAX) || v != floor(v)) return 0;
    int64_t i = (int64_t)v;
    if (i < lo || i > hi) return 0;
    *out = i;
    return 1;
}

int64_t json_get_i64_opt(const cJSON *obj, const char *key, int64_t def, int64_t lo, int64_t hi, const char *path) {
    const cJSON *j = lookup(obj, key);
    if (!j) return def;
    int64_t v;
    if (!cJSON_IsNumber(j)) fatal("%s: key \"%s\" must be a number", path, key);
    if (!json_is_i64(j, lo, hi, &v))
        fatal("%s: key \"%s\" must be an integer in [%lld, %lld], got %.17g", path, key, (long long)lo, (long long)hi,
              j->valuedouble);
    return v;
}

int64_t json_get_i64(const cJSON *obj, const char *key, int64_t lo, int64_t hi, const char *path) {
    if (!lookup(obj, key)) fatal("%s: missing key \"%s\"", path, key);
    return json_get_i64_opt(obj, key, 0, lo, hi, path);
}

int json_get_bool_opt(const cJSON *obj, const char *key, int def, const char *path) {
    const cJSON *j = lookup(obj, key);
    if (!j) return def;
    if (!cJSON_IsBool(j)) fatal("%s: key \"%s\" must be true or false", path, key);
    return cJSON_IsTrue(j);
}

const char *json_get_str(const cJSON *obj, const char *key, const char *path) {
    const cJSON *j = lookup(obj, key);
    if (!j) fatal("%s: missing key \"%s\"", path, key);
    if (!cJSON_IsString(j)) fatal("%s: key \"%s\" must be a string", path, key);
    return j->valuestring;
}

const char *json_get_str_opt(const cJSON *obj, const char *key, const char *def, const char *path) {
    const cJSON *j = lookup(obj, key);
    if (!j) return def;
    if (!cJSON_IsString(j)) fatal("%s: key \"%s\" must be a string", path, key);
    return j->valuestring;
}

int json_get_float3(const cJSON *root, const char *key, float out[3], const char *path) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) return 0;
    if (cJSON_IsNumber(j)) {
        out[0] = out[1] = out[2] = (float)j->valuedouble;
        return 1;
    }
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != 3) fatal("%s: \"%s\" must be a list of 3 numbers", path, key);
    for (int i = 0; i < 3; i++) {
        const cJSON *e = cJSON_GetArrayItem(j, i);
        if (!cJSON_IsNumber(e)) fatal("%s: \"%s\" must be a list of 3 numbers", path, key);
        out[i] = (float)e->valuedouble;
    }
    return 1;
}

const char *json_type_name(const cJSON *j) {
    if (!j) return "missing";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsArray(j)) return "a list";
    if (cJSON_IsObject(j)) return "an object";
    return "null";
}
