// safetensors.c: the safetensors reader (mmap + strict validation, as the reference Rust
// implementation validates) and writer (header padded to 8 bytes, fsync before returning).
#include "common/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/json.h"
#include "common/util.h"

// the reference implementation refuses headers above 100 MB; so do we
#define ST_MAX_HEADER (100u * 1000u * 1000u)

static const char *dtype_names[ST_NDTYPES] = {"F64", "F32", "F16", "BF16", "I64",
                                              "I32", "I16", "I8",  "U8",   "BOOL"};
static const size_t dtype_sizes[ST_NDTYPES] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1};

const char *st_dtype_name(StDtype d) { return (unsigned)d < ST_NDTYPES ? dtype_names[d] : "?"; }
size_t st_dtype_size(StDtype d) { return dtype_sizes[d]; }

int64_t st_numel(const StTensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

const char *st_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap) {
    size_t o = 0;
    o += snprintf(buf + o, cap - o, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
    return buf;
}

static int fail(char *err, size_t errlen, const char *path, const char *fmt, ...) {
    va_list ap;
    int o = snprintf(err, errlen, "%s: ", path);
    if (o < 0) o = 0;
    if ((size_t)o < errlen) {
        va_start(ap, fmt);
        vsnprintf(err + o, errlen - o, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}

static int cmp_begin(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

// a JSON number that is a non-negative integer representable exactly
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double v = j->valuedouble;
    if (v < 0 || v > 9007199254740992.0 || v != (double)(uint64_t)v) return 0;
    *out = (uint64_t)v;
    return 1;
}

static int parse_tensor(StTensor *t, const cJSON *j, const char *path, char *err, size_t errlen) {
    const char *name = t->name;
    if (!cJSON_IsObject(j)) return fail(err, errlen, path, "tensor %s: header entry is not an object", name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
    if (!cJSON_IsString(dt)) return fail(err, errlen, path, "tensor %s: missing or non-string dtype", name);
    int d = -1;
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(dt->valuestring, dtype_names[i]) == 0) d = i;
    if (d < 0) return fail(err, errlen, path, "tensor %s: unsupported dtype \"%s\"", name, dt->valuestring);
    t->dtype = (StDtype)d;
    if (!cJSON_IsArray(sh)) return fail(err, errlen, path, "tensor %s: missing or non-array shape", name);
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS) return fail(err, errlen, path, "tensor %s: %d dimensions (at most %d)", name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        uint64_t v;
        if (!json_uint(cJSON_GetArrayItem(sh, i), &v) || v > (1ull << 40))
            return fail(err, errlen, path, "tensor %s: shape entry %d is not a valid size", name, i);
        t->shape[i] = (int64_t)v;
        if (v && numel > (1ull << 50) / v) return fail(err, errlen, path, "tensor %s: shape too large", name);
        numel *= v;
    }
    uint64_t b, e;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_uint(cJSON_GetArrayItem(off, 0), &b) ||
        !json_uint(cJSON_GetArrayItem(off, 1), &e))
        return fail(err, errlen, path, "tensor %s: data_offsets must be two non-negative integers", name);
    if (e < b) return fail(err, errlen, path, "tensor %s: data_offsets [%llu, %llu] end before they begin", name,
                           (unsigned long long)b, (unsigned long long)e);
    t->begin = b;
    t->end = e;
    uint64_t need = numel * dtype_sizes[d];
    if (e - b != need) {
        char s[128];
        return fail(err, errlen, path, "tensor %s: data_offsets span %llu bytes but %s %s needs %llu", name,
                    (unsigned long long)(e - b), dtype_names[d], st_shape_str(nd, t->shape, s, sizeof s),
                    (unsigned long long)need);
    }
    return 0;
}

static int parse_header(StFile *f, const char *hdr, size_t hlen, char *err, size_t errlen) {
    char what[1100];
    snprintf(what, sizeof what, "%s: header", f->path);
    cJSON *root = json_parse(hdr, hlen, what, err, errlen);
    if (!root) return -1;
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = fail(err, errlen, f->path, "header is not a JSON object");
        goto done;
    }
    int count = cJSON_GetArraySize(root);
    f->tensors = xcalloc(count ? count : 1, sizeof(StTensor));
    f->meta_keys = xcalloc(count ? count : 1, sizeof(char *));
    f->meta_vals = xcalloc(count ? count : 1, sizeof(char *));
    for (const cJSON *j = root->child; j; j = j->next) {
        if (strcmp(j->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(j)) { rc = fail(err, errlen, f->path, "__metadata__ is not an object"); goto done; }
            for (const cJSON *m = j->child; m; m = m->next) {
                if (!cJSON_IsString(m)) {
                    rc = fail(err, errlen, f->path, "__metadata__ value of \"%s\" is not a string", m->string);
                    goto done;
                }
                if (f->n_meta >= count) {  // metadata has its own members: grow
                    f->meta_keys = xrealloc(f->meta_keys, (f->n_meta + 1) * sizeof(char *));
                    f->meta_vals = xrealloc(f->meta_vals, (f->n_meta + 1) * sizeof(char *));
                }
                f->meta_keys[f->n_meta] = xstrdup(m->string);
                f->meta_vals[f->n_meta] = xstrdup(m->valuestring);
                f->n_meta++;
            }
            continue;
        }
        StTensor *t = &f->tensors[f->n];
        t->name = xstrdup(j->string);
        f->n++;
        if ((rc = parse_tensor(t, j, f->path, err, errlen)) != 0) goto done;
    }
    qsort(f->tensors, f->n, sizeof(StTensor), cmp_name);
    for (int i = 1; i < f->n; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            rc = fail(err, errlen, f->path, "tensor %s appears twice in the header", f->tensors[i].name);
            goto done;
        }
    // the data section must be covered exactly: no overlap, no hole, nothing beyond the file
    size_t data_size = f->size - f->data_start;
    StTensor **by_begin = xmalloc((f->n ? f->n : 1) * sizeof(StTensor *));
    for (int i = 0; i < f->n; i++) by_begin[i] = &f->tensors[i];
    qsort(by_begin, f->n, sizeof(StTensor *), cmp_begin);
    uint64_t pos = 0;
    for (int i = 0; i < f->n && rc == 0; i++) {
        StTensor *t = by_begin[i];
        if (t->end > data_size)
            rc = fail(err, errlen, f->path, "tensor %s: data_offsets [%llu, %llu] beyond the data section (%zu bytes)",
                      t->name, (unsigned long long)t->begin, (unsigned long long)t->end, data_size);
        else if (t->begin < pos)
            rc = fail(err, errlen, f->path, "tensor %s overlaps tensor %s", t->name, by_begin[i - 1]->name);
        else if (t->begin > pos)
            rc = fail(err, errlen, f->path, "tensor %s: %llu unused bytes before its data_offsets", t->name,
                      (unsigned long long)(t->begin - pos));
        pos = t->end;
    }
    if (rc == 0 && pos != data_size)
        rc = fail(err, errlen, f->path, "%llu bytes after the last tensor's data (file truncated or padded?)",
                  (unsigned long long)(data_size - pos));
    free(by_begin);
done:
    cJSON_Delete(root);
    return rc;
}

int st_open(StFile *f, const char *path, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    f->path = xstrdup(path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        fail(err, errlen, path, "cannot open: %s", strerror(errno));
        st_close(f);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        fail(err, errlen, path, "not a regular file");
        st_close(f);
        return -1;
    }
    f->size = (size_t)st.st_size;
    if (f->size < 8) {
        close(fd);
        fail(err, errlen, path, "only %zu bytes: too small to be a safetensors file", f->size);
        st_close(f);
        return -1;
    }
    void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        fail(err, errlen, path, "cannot map: %s", strerror(errno));
        st_close(f);
        return -1;
    }
    f->map = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->map[i];
    int rc;
    if (hlen > f->size - 8)
        rc = fail(err, errlen, path, "header length %llu exceeds the file size (%zu bytes): truncated or not safetensors",
                  (unsigned long long)hlen, f->size);
    else if (hlen > ST_MAX_HEADER)
        rc = fail(err, errlen, path, "header length %llu is above the 100 MB limit", (unsigned long long)hlen);
    else if (hlen < 2)
        rc = fail(err, errlen, path, "header length %llu is too small for a JSON object", (unsigned long long)hlen);
    else {
        f->data_start = 8 + hlen;
        rc = parse_header(f, (const char *)f->map + 8, hlen, err, errlen);
    }
    if (rc) st_close(f);
    return rc;
}

void st_open_or_die(StFile *f, const char *path) {
    char err[1024];
    if (st_open(f, path, err, sizeof err) != 0) fatal("%s", err);
}

void st_close(StFile *f) {
    if (f->map) munmap(f->map, f->size);
    for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->tensors);
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const StTensor *st_find(const StFile *f, const char *name) {
    StTensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, f->n, sizeof(StTensor), cmp_name);
}

const char *st_meta(const StFile *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

const void *st_data(const StFile *f, const StTensor *t) { return f->map + f->data_start + t->begin; }

// little-endian loads that do not assume alignment
static uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t ld32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t ld64(const uint8_t *p) { return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32; }

void st_read_f32(const StFile *f, const StTensor *t, float *dst) {
    const uint8_t *p = st_data(f, t);
    int64_t n = st_numel(t);
    switch (t->dtype) {
    case ST_F32: memcpy(dst, p, n * 4); break;
    case ST_BF16: for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(ld16(p + 2 * i)); break;
    case ST_F16: for (int64_t i = 0; i < n; i++) dst[i] = f16_to_f32(ld16(p + 2 * i)); break;
    case ST_F64:
        for (int64_t i = 0; i < n; i++) {
            uint64_t u = ld64(p + 8 * i);
            double d;
            memcpy(&d, &u, 8);
            dst[i] = (float)d;
        }
        break;
    default: fatal("%s: tensor %s has dtype %s where floating point was expected", f->path, t->name, st_dtype_name(t->dtype));
    }
}

void st_read_i32(const StFile *f, const StTensor *t, int32_t *dst) {
    const uint8_t *p = st_data(f, t);
    int64_t n = st_numel(t);
    for (int64_t i = 0; i < n; i++) {
        int64_t v;
        switch (t->dtype) {
        case ST_I64: v = (int64_t)ld64(p + 8 * i); break;
        case ST_I32: v = (int32_t)ld32(p + 4 * i); break;
        case ST_I16: v = (int16_t)ld16(p + 2 * i); break;
        case ST_I8: v = (int8_t)p[i]; break;
        case ST_U8: v = p[i]; break;
        default: fatal("%s: tensor %s has dtype %s where an integer was expected", f->path, t->name, st_dtype_name(t->dtype));
        }
        if (v < INT32_MIN || v > INT32_MAX) fatal("%s: tensor %s: value %lld does not fit in int32", f->path, t->name, (long long)v);
        dst[i] = (int32_t)v;
    }
}

// ---- writer ----

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} WEntry;

struct StWriter {
    WEntry *e;
    int n, cap;
    char **mk, **mv;
    int nm;
};

StWriter *st_writer_new(void) { return xcalloc(1, sizeof(StWriter)); }

void st_writer_add(StWriter *w, const char *name, StDtype dtype, int ndim, const int64_t *shape, const void *data) {
    CHECK(ndim >= 0 && ndim <= ST_MAX_DIMS, "tensor %s has %d dims", name, ndim);
    for (int i = 0; i < w->n; i++) CHECK(strcmp(w->e[i].name, name) != 0, "tensor %s added twice", name);
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->e = xrealloc(w->e, w->cap * sizeof(WEntry));
    }
    WEntry *e = &w->e[w->n++];
    e->name = xstrdup(name);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->data = data;
}

void st_writer_meta(StWriter *w, const char *key, const char *value) {
    w->mk = xrealloc(w->mk, (w->nm + 1) * sizeof(char *));
    w->mv = xrealloc(w->mv, (w->nm + 1) * sizeof(char *));
    w->mk[w->nm] = xstrdup(key);
    w->mv[w->nm] = xstrdup(value);
    w->nm++;
}

static size_t entry_bytes(const WEntry *e) {
    size_t n = dtype_sizes[e->dtype];
    for (int i = 0; i < e->ndim; i++) n *= (size_t)e->shape[i];
    return n;
}

int st_writer_save(StWriter *w, const char *path, char *err, size_t errlen) {
    cJSON *root = cJSON_CreateObject();
    if (w->nm) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; i < w->nm; i++) cJSON_AddStringToObject(meta, w->mk[i], w->mv[i]);
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const WEntry *e = &w->e[i];
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        cJSON_AddStringToObject(t, "dtype", dtype_names[e->dtype]);
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
        cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
        size_t nb = entry_bytes(e);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    size_t jlen = strlen(json);
    size_t hlen = (jlen + 7) & ~(size_t)7;  // the spec allows trailing spaces to align the data
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        free(json);
        return fail(err, errlen, path, "cannot create: %s", strerror(errno));
    }
    uint8_t lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)(hlen >> (8 * i));
    int ok = fwrite(lenbuf, 1, 8, fp) == 8 && fwrite(json, 1, jlen, fp) == jlen;
    for (size_t i = jlen; ok && i < hlen; i++) ok = fputc(' ', fp) != EOF;
    free(json);
    for (int i = 0; ok && i < w->n; i++) {
        size_t nb = entry_bytes(&w->e[i]);
        ok = nb == 0 || fwrite(w->e[i].data, 1, nb, fp) == nb;
    }
    int saved_errno = errno;
    if (ok && fflush(fp) != 0) ok = 0, saved_errno = errno;
    if (ok && fsync(fileno(fp)) != 0) ok = 0, saved_errno = errno;
    if (fclose(fp) != 0 && ok) ok = 0, saved_errno = errno;
    if (!ok) return fail(err, errlen, path, "write failed: %s", strerror(saved_errno ? saved_errno : EIO));
    return 0;
}

void st_writer_free(StWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->e[i].name);
    for (int i = 0; i < w->nm; i++) {
        free(w->mk[i]);
        free(w->mv[i]);
    }
    free(w->e);
    free(w->mk);
    free(w->mv);
    free(w);
}
