// checkpoint.c: atomic checkpoints, resume and connector hand-over between stages (see checkpoint.h).
#include "trainer/checkpoint.h"

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

#include "common/fs_safe.h"
#include "common/safetensors.h"
#include "common/util.h"

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
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

// 1 when out_dir's entry name is a complete checkpoint: a real directory (not a symbolic link)
// holding a regular state.json. A link named step_N is none of svlm's: never loaded, pruned or
// set aside, so nothing svlm does to checkpoints can reach through it.
static int is_checkpoint_at(int dfd, const char *name) {
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode)) return 0;
    int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0) return 0;
    int ok = fstatat(sub, "state.json", &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
    close(sub);
    return ok;
}

// the complete checkpoints of out_dir, sorted by step ascending; returns the count
static int list_checkpoints(const char *out_dir, int64_t **steps) {
    *steps = NULL;
    int dfd = open(out_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return 0;
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return 0;
    }
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int tmp;
        int64_t s = parse_step_name(e->d_name, &tmp);
        if (s < 0 || tmp || !is_checkpoint_at(dirfd(d), e->d_name)) continue;
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
    int dfd = open(out_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return;
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        int tmp;
        // a link named step_N.tmp is unlinked itself: fs_remove_at never follows one
        if (parse_step_name(e->d_name, &tmp) >= 0 && tmp && fs_remove_at(dirfd(d), e->d_name) != 0)
            warn("%s/%s: cannot remove: %s", out_dir, e->d_name, strerror(errno));
    }
    closedir(d);
}

// whether anything (a link included) is at path
static int entry_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
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
            if (!entry_exists(to)) break;
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

static int write_text_file(const char *path, const char *text, char *err, size_t errlen) {
    FILE *f = fopen(path, "w");
    if (!f) return fail(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    int ok = fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int e = errno;
    if (fclose(f) != 0 && ok) ok = 0, e = errno;
    return ok ? 0 : fail(err, errlen, "%s: write failed: %s", path, strerror(e));
}

int checkpoint_save(const char *out_dir, const TrainState *st, const ParamSet *train, const float *w_host,
                    const float *m_host, const float *v_host, const char *signature, int keep_last, char *err, size_t errlen) {
    char dir[2048], tmp[2060], path[2100];
    snprintf(dir, sizeof dir, "%s/step_%08" PRId64, out_dir, st->step);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    snprintf(path, sizeof path, "%s/state.json", dir);
    struct stat sb;
    if (lstat(dir, &sb) == 0) {
        if (S_ISDIR(sb.st_mode) && fs_is_file_nofollow(path)) return 0;  // this step is saved already: same state
        // a link (or file) named like this checkpoint is no checkpoint: the entry itself goes
        if (!S_ISDIR(sb.st_mode) && fs_remove(dir) != 0)
            return fail(err, errlen, "%s: cannot remove: %s", dir, strerror(errno));
    }
    if (fs_remove(tmp) != 0) return fail(err, errlen, "%s: cannot remove: %s", tmp, strerror(errno));
    if (mkdir(tmp, 0755) != 0) return fail(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));

    // host copies of the fp32 spans (on the CPU backend a copy too, so the writer sees stable data)
    const Kernels *k = train->k;
    size_t bytes = train->numel * sizeof(float);
    float *w = xmalloc(bytes ? bytes : 4), *m = xmalloc(bytes ? bytes : 4), *v = xmalloc(bytes ? bytes : 4);
    if (w_host) memcpy(w, w_host, bytes);
    else k->download(w, train->master, bytes);
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
        char *text = checkpoint_state_text(st, signature);
        snprintf(path, sizeof path, "%s/state.json", tmp);
        rc = write_text_file(path, text, err, errlen);
        free(text);
    }
    // the directory entries must be durable before the rename publishes them
    if (!rc && fsync_path(tmp) != 0) rc = fail(err, errlen, "%s: fsync failed: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, dir) != 0) rc = fail(err, errlen, "%s: rename failed: %s", tmp, strerror(errno));
    if (rc) {
        fs_remove(tmp);
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
        if (rename(dir, tmp) == 0 && fs_remove(tmp) != 0) warn("%s: cannot remove: %s", tmp, strerror(errno));
    }
    free(steps);
    return 0;
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
    checkpoint_read_state(dir, st, signature);

    // the checkpoint holds the whole state; a ZeRO-1 rank keeps its slice of the moments, and
    // of the masters where they are sharded (the span's padding past numel stays zero)
    size_t span = train->span > train->numel ? train->span : train->numel;
    float *host = xcalloc(span ? span : 1, sizeof(float));  // alignment padding between tensors stays zero
    const Kernels *k = train->k;
    snprintf(path, sizeof path, "%s/trainable.safetensors", dir);
    read_span(path, train, "", host);
    k->upload(train->master, host + train->master_begin, train->master_len * sizeof(float));
    if (params_masters_sharded(train)) k->upload_act(train->data, host, train->numel);  // the trainer all-gathers it anew
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
