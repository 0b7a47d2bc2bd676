// checkpoint.c: atomic checkpoints, resume and connector hand-over between stages (see checkpoint.h).
#include "trainer/checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/json.h"
#include "common/safetensors.h"
#include "common/util.h"

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

// removes a flat directory (checkpoints hold files only)
static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[2048];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

// step number of a name "step_NNNNNNNN" (exactly 8 digits), -1 otherwise; *tmp set for ".tmp"
static int64_t parse_step_name(const char *name, int *tmp) {
    if (strncmp(name, "step_", 5) != 0) return -1;
    const char *p = name + 5;
    for (int i = 0; i < 8; i++)
        if (p[i] < '0' || p[i] > '9') return -1;
    if (p[8] == 0) *tmp = 0;
    else if (!strcmp(p + 8, ".tmp")) *tmp = 1;
    else return -1;
    return strtoll(p, NULL, 10);
}

// the complete checkpoints of out_dir, sorted by step ascending; returns the count
static int list_checkpoints(const char *out_dir, int64_t **steps) {
    DIR *d = opendir(out_dir);
    *steps = NULL;
    if (!d) return 0;
    int n = 0, cap = 0;
    struct dirent *e;
    char path[2048];
    while ((e = readdir(d))) {
        int tmp;
        int64_t s = parse_step_name(e->d_name, &tmp);
        if (s < 0 || tmp) continue;
        snprintf(path, sizeof path, "%s/%s/state.json", out_dir, e->d_name);
        if (!file_exists(path)) continue;
        if (n == cap) *steps = xrealloc(*steps, (cap = cap ? 2 * cap : 16) * sizeof(int64_t));
        (*steps)[n++] = s;
    }
    closedir(d);
    for (int i = 1; i < n; i++)  // insertion sort: a handful of entries
        for (int j = i; j > 0 && (*steps)[j - 1] > (*steps)[j]; j--) {
            int64_t t = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = t;
        }
    return n;
}

void checkpoint_clean_tmp(const char *out_dir) {
    DIR *d = opendir(out_dir);
    if (!d) return;
    struct dirent *e;
    char path[2048];
    while ((e = readdir(d))) {
        int tmp;
        if (parse_step_name(e->d_name, &tmp) >= 0 && tmp) {
            snprintf(path, sizeof path, "%s/%s", out_dir, e->d_name);
            remove_dir(path);
        }
    }
    closedir(d);
}

int checkpoint_set_aside_after(const char *out_dir, int64_t step) {
    int64_t *steps;
    int n = list_checkpoints(out_dir, &steps), moved = 0;
    char from[2048], to[2100];
    for (int i = 0; i < n; i++) {
        if (steps[i] <= step) continue;
        snprintf(from, sizeof from, "%s/step_%08" PRId64, out_dir, steps[i]);
        for (int k = 0;; k++) {  // never overwrite an earlier set-aside copy
            snprintf(to, sizeof to, "%s/abandoned_step_%08" PRId64 "_%d", out_dir, steps[i], k);
            if (!dir_exists(to)) break;
        }
        if (rename(from, to) != 0) fatal("%s: cannot move aside to %s: %s", from, to, strerror(errno));
        moved++;
    }
    free(steps);
    return moved;
}

int checkpoint_latest(const char *out_dir, char *path, size_t cap) {
    int64_t *steps;
    int n = list_checkpoints(out_dir, &steps);
    if (n) snprintf(path, cap, "%s/step_%08" PRId64, out_dir, steps[n - 1]);
    free(steps);
    return n > 0;
}

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static cJSON *state_json(const TrainState *st, const char *signature) {
    cJSON *j = cJSON_CreateObject();
    char buf[32];
    cJSON_AddStringToObject(j, "format", "svlm-checkpoint-1");
    cJSON_AddNumberToObject(j, "step", (double)st->step);
    cJSON_AddNumberToObject(j, "total_steps", (double)st->total_steps);
    cJSON_AddNumberToObject(j, "data_epoch", (double)st->data.epoch);
    cJSON_AddNumberToObject(j, "data_index", (double)st->data.index);  // in the epoch's global order
    cJSON *rng = cJSON_AddArrayToObject(j, "rng");
    for (int i = 0; i < 4; i++) {  // as strings: JSON numbers lose bits above 2^53
        snprintf(buf, sizeof buf, "%" PRIu64, st->rng.s[i]);
        cJSON_AddItemToArray(rng, cJSON_CreateString(buf));
    }
    cJSON_AddNumberToObject(j, "world_size", st->world);
    cJSON_AddNumberToObject(j, "metrics_bytes", (double)st->metrics_bytes);
    cJSON_AddNumberToObject(j, "skipped_steps", (double)st->skipped_steps);
    cJSON_AddNumberToObject(j, "tokens", (double)st->tokens);
    cJSON_AddStringToObject(j, "data", st->data_desc);
    cJSON *sig = cJSON_Parse(signature);
    CHECK(sig, "signature is not JSON: %s", signature);
    cJSON_AddItemToObject(j, "model", sig);
    return j;
}

static int write_text_file(const char *path, const char *text, char *err, size_t errlen) {
    FILE *f = fopen(path, "w");
    if (!f) return fail(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    int ok = fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int e = errno;
    if (fclose(f) != 0 && ok) ok = 0, e = errno;
    return ok ? 0 : fail(err, errlen, "%s: write failed: %s", path, strerror(e));
}

int checkpoint_save(const char *out_dir, const TrainState *st, const ParamSet *train, const float *m_host,
                    const float *v_host, const char *signature, int keep_last, char *err, size_t errlen) {
    char dir[2048], tmp[2060], path[2100];
    snprintf(dir, sizeof dir, "%s/step_%08" PRId64, out_dir, st->step);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    snprintf(path, sizeof path, "%s/state.json", dir);
    if (file_exists(path)) return 0;  // this step is saved already: same state, nothing to do
    remove_dir(tmp);
    if (mkdir(tmp, 0755) != 0) return fail(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));

    // host copies of the fp32 spans (on the CPU backend a copy too, so the writer sees stable data)
    const Kernels *k = train->k;
    size_t bytes = train->numel * sizeof(float);
    float *w = xmalloc(bytes ? bytes : 4), *m = xmalloc(bytes ? bytes : 4), *v = xmalloc(bytes ? bytes : 4);
    k->download(w, train->master, bytes);
    if (m_host) {
        memcpy(m, m_host, bytes);
        memcpy(v, v_host, bytes);
    } else {
        k->download(m, train->m, bytes);
        k->download(v, train->v, bytes);
    }
    StWriter *tw = st_writer_new(), *ow = st_writer_new();
    char name[PARAM_NAME_MAX + 16];
    for (int i = 0; i < train->n; i++) {
        const Param *p = &train->p[i];
        st_writer_add(tw, p->name, ST_F32, p->ndim, p->shape, w + p->offset);
        snprintf(name, sizeof name, "exp_avg.%s", p->name);
        st_writer_add(ow, name, ST_F32, p->ndim, p->shape, m + p->offset);
        snprintf(name, sizeof name, "exp_avg_sq.%s", p->name);
        st_writer_add(ow, name, ST_F32, p->ndim, p->shape, v + p->offset);
    }
    char stepbuf[32];
    snprintf(stepbuf, sizeof stepbuf, "%" PRId64, st->step);
    st_writer_meta(tw, "format", "svlm-trainable");
    st_writer_meta(tw, "step", stepbuf);
    st_writer_meta(ow, "format", "svlm-optimizer");
    st_writer_meta(ow, "step", stepbuf);
    int rc = 0;
    snprintf(path, sizeof path, "%s/trainable.safetensors", tmp);
    rc = st_writer_save(tw, path, err, errlen);
    if (!rc) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
        rc = st_writer_save(ow, path, err, errlen);
    }
    st_writer_free(tw);
    st_writer_free(ow);
    free(w);
    free(m);
    free(v);
    if (!rc) {
        cJSON *j = state_json(st, signature);
        char *text = cJSON_Print(j);
        cJSON_Delete(j);
        snprintf(path, sizeof path, "%s/state.json", tmp);
        rc = write_text_file(path, text, err, errlen);
        free(text);
    }
    // the directory entries must be durable before the rename publishes them
    if (!rc && fsync_path(tmp) != 0) rc = fail(err, errlen, "%s: fsync failed: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, dir) != 0) rc = fail(err, errlen, "%s: rename failed: %s", tmp, strerror(errno));
    if (rc) {
        remove_dir(tmp);
        return rc;
    }
    fsync_path(out_dir);
    int64_t *steps;
    int n = list_checkpoints(out_dir, &steps);
    for (int i = 0; i + keep_last < n; i++) {
        // renamed first: a kill while deleting leaves a .tmp that the next start removes, never
        // a step directory with state.json but missing tensors
        snprintf(dir, sizeof dir, "%s/step_%08" PRId64, out_dir, steps[i]);
        snprintf(tmp, sizeof tmp, "%s.tmp", dir);
        if (rename(dir, tmp) == 0) remove_dir(tmp);
    }
    free(steps);
    return 0;
}

// one line listing the top-level (and one level down) differences of two signatures
static void describe_diff(const cJSON *a, const cJSON *b, char *out, size_t cap) {
    size_t o = 0;
    out[0] = 0;
    for (const cJSON *x = a->child; x && o < cap; x = x->next) {
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, x->string);
        if (y && cJSON_Compare(x, y, 1)) continue;
        if (y && cJSON_IsObject(x) && cJSON_IsObject(y)) {
            for (const cJSON *xx = x->child; xx && o < cap; xx = xx->next) {
                const cJSON *yy = cJSON_GetObjectItemCaseSensitive(y, xx->string);
                if (yy && cJSON_Compare(xx, yy, 1)) continue;
                char *sx = cJSON_PrintUnformatted(xx), *sy = yy ? cJSON_PrintUnformatted(yy) : xstrdup("absent");
                o += snprintf(out + o, cap - o, "%s%s.%s: checkpoint %.60s, this run %.60s", o ? "; " : "", x->string,
                              xx->string, sx, sy);
                free(sx);
                free(sy);
            }
            continue;
        }
        if (cJSON_IsArray(x)) {
            o += snprintf(out + o, cap - o, "%s%s differ", o ? "; " : "", x->string);
            continue;
        }
        char *sx = cJSON_PrintUnformatted(x), *sy = y ? cJSON_PrintUnformatted(y) : xstrdup("absent");
        o += snprintf(out + o, cap - o, "%s%s: checkpoint %.60s, this run %.60s", o ? "; " : "", x->string, sx, sy);
        free(sx);
        free(sy);
    }
    if (!out[0]) snprintf(out, cap, "the model descriptions differ");
}

static int64_t get_i64(const cJSON *j, const char *key, const char *path) {
    return (int64_t)json_get_num(j, key, path);
}

// reads every tensor of the set from file under prefix + name; shapes must match
static void read_span(const char *path, const ParamSet *train, const char *prefix, float *dst) {
    StFile f;
    st_open_or_die(&f, path);
    char name[PARAM_NAME_MAX + 16];
    for (int i = 0; i < train->n; i++) {
        const Param *p = &train->p[i];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        const StTensor *t = st_find(&f, name);
        if (!t) fatal("%s: tensor %s is missing", path, name);
        int same = t->ndim == p->ndim && t->dtype == ST_F32;
        for (int d = 0; same && d < p->ndim; d++) same = t->shape[d] == p->shape[d];
        if (!same) fatal("%s: tensor %s does not have the shape and dtype this run expects (F32)", path, name);
        st_read_f32(&f, t, dst + p->offset);
    }
    st_close(&f);
}

void checkpoint_load(const char *dir, TrainState *st, ParamSet *train, const char *signature) {
    char path[2100];
    snprintf(path, sizeof path, "%s/state.json", dir);
    if (!file_exists(path)) fatal("%s: not a checkpoint (no state.json)", dir);
    cJSON *j = json_load_file(path);
    const char *format = json_get_str(j, "format", path);
    if (strcmp(format, "svlm-checkpoint-1") != 0) fatal("%s: unknown checkpoint format \"%s\"", path, format);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (!cJSON_IsObject(model)) fatal("%s: missing \"model\" description", path);
    cJSON *mine = cJSON_Parse(signature);
    CHECK(mine, "signature is not JSON");
    if (!cJSON_Compare(model, mine, 1)) {
        char diff[1500];
        describe_diff(model, mine, diff, sizeof diff);
        fatal("%s: checkpoint is from another configuration (%s); use another out_dir or resume = never", dir, diff);
    }
    cJSON_Delete(mine);
    memset(st, 0, sizeof *st);
    st->step = get_i64(j, "step", path);
    st->total_steps = get_i64(j, "total_steps", path);
    st->data.epoch = get_i64(j, "data_epoch", path);
    st->data.index = get_i64(j, "data_index", path);
    st->world = (int)get_i64(j, "world_size", path);
    st->metrics_bytes = get_i64(j, "metrics_bytes", path);
    st->skipped_steps = get_i64(j, "skipped_steps", path);
    st->tokens = get_i64(j, "tokens", path);
    snprintf(st->data_desc, sizeof st->data_desc, "%s", json_get_str_opt(j, "data", "", path));
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(j, "rng");
    if (!cJSON_IsArray(rng) || cJSON_GetArraySize(rng) != 4) fatal("%s: \"rng\" must hold 4 values", path);
    for (int i = 0; i < 4; i++) {
        const cJSON *e = cJSON_GetArrayItem(rng, i);
        char *end;
        if (!cJSON_IsString(e)) fatal("%s: \"rng\" values must be strings", path);
        errno = 0;
        st->rng.s[i] = strtoull(e->valuestring, &end, 10);
        if (*end || errno) fatal("%s: bad rng value \"%s\"", path, e->valuestring);
    }
    cJSON_Delete(j);

    // the checkpoint holds the whole state; a ZeRO-1 rank keeps its slice of the moments
    // (the span's padding past numel stays zero)
    size_t bytes = train->numel * sizeof(float), span = train->span > train->numel ? train->span : train->numel;
    float *host = xcalloc(span ? span : 1, sizeof(float));  // alignment padding between tensors stays zero
    const Kernels *k = train->k;
    snprintf(path, sizeof path, "%s/trainable.safetensors", dir);
    read_span(path, train, "", host);
    k->upload(train->master, host, bytes);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    read_span(path, train, "exp_avg.", host);
    k->upload(train->m, host + train->opt_begin, train->opt_len * sizeof(float));
    read_span(path, train, "exp_avg_sq.", host);
    k->upload(train->v, host + train->opt_begin, train->opt_len * sizeof(float));
    free(host);
    params_sync(train);
}

const char *checkpoint_load_connector(const char *from, ParamSet *train, char *used, size_t cap) {
    char path[2100];
    if (dir_exists(from)) {
        char ck[2048];
        snprintf(path, sizeof path, "%s/connector.safetensors", from);  // an export directory
        if (!file_exists(path)) {
            snprintf(path, sizeof path, "%s/trainable.safetensors", from);  // a checkpoint directory
            if (!file_exists(path)) {
                if (!checkpoint_latest(from, ck, sizeof ck))  // a run directory
                    fatal("init_from = %s: no checkpoint, trainable.safetensors or connector.safetensors there", from);
                snprintf(path, sizeof path, "%s/trainable.safetensors", ck);
            }
        }
    } else if (file_exists(from)) {
        snprintf(path, sizeof path, "%s", from);
    } else {
        fatal("init_from = %s: no such file or directory", from);
    }
    StFile f;
    st_open_or_die(&f, path);
    float *host = NULL;
    int n = 0;
    for (int i = 0; i < train->n; i++) {
        const Param *p = &train->p[i];
        if (p->group != PARAM_GROUP_CONNECTOR) continue;
        const StTensor *t = st_find(&f, p->name);
        if (!t) fatal("%s: connector tensor %s is missing (was it trained with another connector type?)", path, p->name);
        int same = t->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++) same = t->shape[d] == p->shape[d];
        if (!same) {
            char a[128], b[128];
            fatal("%s: tensor %s has shape %s, this run's connector needs %s", path, p->name,
                  st_shape_str(t->ndim, t->shape, a, sizeof a), st_shape_str(p->ndim, p->shape, b, sizeof b));
        }
        host = xrealloc(host, p->numel * sizeof(float));
        st_read_f32(&f, t, host);
        params_upload(train, i, host);
        n++;
    }
    free(host);
    st_close(&f);
    if (!n) fatal("init_from = %s: this run has no connector tensors to load", from);
    snprintf(used, cap, "%s", path);
    return used;
}
