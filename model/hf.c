// hf.c: Hugging Face weight directories: single or sharded safetensors, found by tensor name.
#include "model/hf.h"

#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/util.h"

static int cmp_idx(const void *a, const void *b) {
    const StTensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void add_file(HfWeights *w, const char *path) {
    w->files = xrealloc(w->files, (w->n_files + 1) * sizeof(StFile));
    st_open_or_die(&w->files[w->n_files], path);
    w->n_files++;
}

void hf_weights_open(HfWeights *w, const char *dir) {
    memset(w, 0, sizeof *w);
    snprintf(w->dir, sizeof w->dir, "%s", dir);
    char path[2048], index[2048];
    if (ends_with(dir, ".safetensors") && file_exists(dir)) {
        add_file(w, dir);
    } else {
        if (!dir_exists(dir)) fatal("%s: model directory not found", dir);
        path_join(path, sizeof path, dir, "model.safetensors");
        path_join(index, sizeof index, dir, "model.safetensors.index.json");
        if (file_exists(path)) {
            add_file(w, path);
        } else if (file_exists(index)) {
            cJSON *root = json_load_file(index);
            const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
            if (!cJSON_IsObject(map)) fatal("%s: missing \"weight_map\" object", index);
            // distinct shard names in order of first appearance
            char **names = NULL;
            int n = 0;
            for (const cJSON *e = map->child; e; e = e->next) {
                if (!cJSON_IsString(e)) fatal("%s: weight_map entry \"%s\" is not a file name", index, e->string);
                if (strchr(e->valuestring, '/')) fatal("%s: shard name \"%s\" must be a file in the directory", index, e->valuestring);
                int seen = 0;
                for (int i = 0; i < n && !seen; i++) seen = strcmp(names[i], e->valuestring) == 0;
                if (!seen) {
                    names = xrealloc(names, (n + 1) * sizeof(char *));
                    names[n++] = e->valuestring;
                }
            }
            for (int i = 0; i < n; i++) {
                path_join(path, sizeof path, dir, names[i]);
                if (!file_exists(path)) fatal("%s: shard %s listed in the index is missing", index, names[i]);
                add_file(w, path);
            }
            // every tensor the index names must be in the shard it names
            for (const cJSON *e = map->child; e; e = e->next) {
                int fi = 0;
                while (strcmp(names[fi], e->valuestring) != 0) fi++;
                if (!st_find(&w->files[fi], e->string))
                    fatal("%s: tensor %s is listed in %s but that shard lacks it", w->files[fi].path, e->string, "model.safetensors.index.json");
            }
            free(names);
            cJSON_Delete(root);
        } else {
            fatal("%s: neither model.safetensors nor model.safetensors.index.json found", dir);
        }
    }
    for (int f = 0; f < w->n_files; f++) w->n += w->files[f].n;
    w->tensors = xmalloc((w->n ? w->n : 1) * sizeof(StTensor *));
    w->file_of = xmalloc((w->n ? w->n : 1) * sizeof(int));
    int k = 0;
    for (int f = 0; f < w->n_files; f++)
        for (int i = 0; i < w->files[f].n; i++) w->tensors[k++] = &w->files[f].tensors[i];
    qsort(w->tensors, w->n, sizeof(StTensor *), cmp_idx);
    for (int i = 0; i < w->n; i++) {
        if (i && strcmp(w->tensors[i - 1]->name, w->tensors[i]->name) == 0)
            fatal("%s: tensor %s appears in more than one shard", dir, w->tensors[i]->name);
        // the owning file is the one whose tensor array holds the pointer
        for (int f = 0; f < w->n_files; f++) {
            const StFile *sf = &w->files[f];
            if (w->tensors[i] >= sf->tensors && w->tensors[i] < sf->tensors + sf->n) w->file_of[i] = f;
        }
    }
}

void hf_weights_close(HfWeights *w) {
    for (int f = 0; f < w->n_files; f++) st_close(&w->files[f]);
    free(w->files);
    free(w->tensors);
    free(w->file_of);
    memset(w, 0, sizeof *w);
}

const StTensor *hf_weights_find(const HfWeights *w, const char *name, const StFile **file) {
    int lo = 0, hi = w->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(w->tensors[mid]->name, name);
        if (c == 0) {
            if (file) *file = &w->files[w->file_of[mid]];
            return w->tensors[mid];
        }
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

const char *hf_weights_find_suffix(const HfWeights *w, const char *suffix) {
    for (int i = 0; i < w->n; i++)
        if (ends_with(w->tensors[i]->name, suffix)) return w->tensors[i]->name;
    return NULL;
}

void hf_weights_read(const HfWeights *w, const char *name, int ndim, const int64_t *shape, float *dst) {
    const StFile *f;
    const StTensor *t = hf_weights_find(w, name, &f);
    if (!t) fatal("%s: tensor %s not found", w->n_files == 1 ? w->files[0].path : w->dir, name);
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char a[128], b[128];
        fatal("%s: tensor %s has shape %s but config.json implies %s", f->path, name,
              st_shape_str(t->ndim, t->shape, a, sizeof a), st_shape_str(ndim, shape, b, sizeof b));
    }
    if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F64)
        fatal("%s: tensor %s has dtype %s (expected F32, BF16 or F16)", f->path, name, st_dtype_name(t->dtype));
    if (dst) st_read_f32(f, t, dst);
}
