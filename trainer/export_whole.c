// export_whole.c: a run trained from `model = DIR` written back in DIR's own layout (see export.h):
// every tensor of the model's files under its own name, shape and dtype, the LLM's LoRA targets
// merged (W += scale * B @ A in fp32, stored in the tensor's dtype), the projector replaced by the
// trained one; every other file of DIR copied as it is (config.json, the remote code's .py files,
// tokenizer, processor and chat-template files), so the same class loads it; adapter/ (peft, the
// class's module names); svlm_export.json (the chat format trained with, the checkpoint).
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/fs_safe.h"
#include "common/safetensors.h"
#include "common/util.h"
#include "kernels/cpu/blas.h"
#include "model/hf.h"
#include "model/llm.h"
#include "model/vlm_dir.h"
#include "trainer/export.h"
#include "trainer/train_config.h"

static void write_json(const char *path, cJSON *j) {
    char *text = cJSON_Print(j);
    FILE *f = fopen(path, "w");
    if (!f) fatal("%s: cannot create: %s", path, strerror(errno));
    int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF && fflush(f) == 0;
    if (fclose(f) != 0 || !ok) fatal("%s: write failed: %s", path, strerror(errno));
    free(text);
}

static void save_or_die(StWriter *w, const char *path) {
    char err[2300];
    if (st_writer_save(w, path, err, sizeof err) != 0) fatal("%s", err);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

// n floats as dtype dt (F32 as they are, BF16 / F16 rounded to nearest even); malloc'd
static void *as_dtype(float *x, size_t n, StDtype dt, const char *file, const char *name) {
    if (dt == ST_F32) return x;
    if (dt != ST_BF16 && dt != ST_F16)
        fatal("%s: tensor %s has dtype %s: export writes F32, BF16 and F16", file, name, st_dtype_name(dt));
    uint16_t *h = xmalloc(n * sizeof(uint16_t));
    for (size_t j = 0; j < n; j++) h[j] = dt == ST_BF16 ? f32_to_bf16(x[j]) : f32_to_f16(x[j]);
    free(x);
    return h;
}

// every regular file of dir but its weights (*.safetensors and their index), copied into out
static int copy_other_files(const char *dir, const char *out) {
    DIR *d = opendir(dir);
    if (!d) fatal("%s: cannot list: %s", dir, strerror(errno));
    struct dirent *de;
    int n = 0;
    char from[PATH_MAX + 300], to[PATH_MAX + 300];
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        if (nm[0] == '.' || ends_with(nm, ".safetensors") || !strcmp(nm, "model.safetensors.index.json") ||
            !strcmp(nm, "svlm_export.json"))
            continue;
        snprintf(from, sizeof from, "%s/%s", dir, nm);
        if (!file_exists(from)) continue;  // regular files only (file_exists: not a directory)
        snprintf(to, sizeof to, "%s/%s", out, nm);
        export_copy_file(from, to);
        n++;
    }
    closedir(d);
    return n;
}

void export_whole(const TrainConfig *c, const char *step_dir, const char *out_dir) {
    char path[PATH_MAX + 64], tmp[PATH_MAX + 16], old[PATH_MAX + 16], name[600];
    VlmDir vd;
    vlm_dir_open(&vd, c->model);
    StFile ck;
    snprintf(path, sizeof path, "%s/trainable.safetensors", step_dir);
    st_open_or_die(&ck, path);
    LoraConfig lora = {0};
    if (c->stage == 2)
        lora = (LoraConfig){.r = c->lora_r, .alpha = (float)c->lora_alpha, .rslora = c->rslora,
                            .targets = lora_targets_parse(c->lora_targets)};
    float scale = lora_scaling(&lora);

    snprintf(tmp, sizeof tmp, "%s.tmp", out_dir);
    if (dir_exists(tmp) && fs_remove(tmp) != 0) fatal("%s: cannot remove: %s", tmp, strerror(errno));
    if (mkdir(tmp, 0755) != 0) fatal("%s: cannot create: %s", tmp, strerror(errno));

    HfWeights hw;
    hf_weights_open(&hw, c->model);
    // the LLM's names in the files, as llm_load finds them: body prefix and head
    const char *emb = hf_weights_find_suffix(&hw, "embed_tokens.weight");
    if (!emb) fatal("%s: no tensor ending in embed_tokens.weight", c->model);
    size_t blen = strlen(emb) - strlen("embed_tokens.weight");

    StWriter *w = st_writer_new();
    void **owned = xcalloc(hw.n + 1, sizeof(void *));
    int merged = 0, replaced = 0;
    for (int i = 0; i < hw.n; i++) {
        const StTensor *t = hw.tensors[i];
        const StFile *f = &hw.files[hw.file_of[i]];
        // the projector: a checkpoint tensor stored under this name (declared with or without "model.")
        const StTensor *conn = st_find(&ck, t->name);
        if (!conn) {
            snprintf(name, sizeof name, "model.%s", t->name);
            conn = st_find(&ck, name);
        }
        if (conn && !strstr(conn->name, ".lora_")) {
            int same = conn->ndim == t->ndim;
            for (int d = 0; same && d < t->ndim; d++) same = conn->shape[d] == t->shape[d];
            if (!same) fatal("%s: %s's shape differs from %s's %s", ck.path, conn->name, f->path, t->name);
            size_t n = (size_t)st_numel(t);
            float *x = xmalloc(n * sizeof(float));
            st_read_f32(&ck, conn, x);
            owned[i] = as_dtype(x, n, t->dtype, f->path, t->name);
            st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, owned[i]);
            replaced++;
            continue;
        }
        // an LLM weight: its svlm name, and the LoRA pair on it
        const StTensor *A = NULL, *B = NULL;
        if (lora.r > 0 && ends_with(t->name, ".weight")) {
            char own[512] = "";
            if (!strncmp(t->name, emb, blen)) snprintf(own, sizeof own, "model.%s", t->name + blen);
            size_t on = strlen(own);
            if (on > 7) {
                snprintf(name, sizeof name, "%.*s.lora_A.weight", (int)(on - 7), own);
                A = st_find(&ck, name);
                snprintf(name, sizeof name, "%.*s.lora_B.weight", (int)(on - 7), own);
                B = st_find(&ck, name);
            }
        }
        if (!A || !B) {  // untouched: the original bytes
            st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, st_data(f, t));
            continue;
        }
        int out = (int)t->shape[0], in = (int)t->shape[1], r = (int)A->shape[0];
        if (t->ndim != 2 || A->shape[1] != in || B->shape[0] != out || B->shape[1] != r || r != lora.r)
            fatal("%s: LoRA tensors for %s do not match its shape", ck.path, t->name);
        float *W = xmalloc((size_t)out * in * sizeof(float)), *a = xmalloc((size_t)r * in * sizeof(float));
        float *b = xmalloc((size_t)out * r * sizeof(float));
        st_read_f32(f, t, W);
        st_read_f32(&ck, A, a);
        st_read_f32(&ck, B, b);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, r, scale, b, r, a, in, 1.0f, W, in);
        owned[i] = as_dtype(W, (size_t)out * in, t->dtype, f->path, t->name);
        st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, owned[i]);
        free(a);
        free(b);
        merged++;
    }
    int want_pairs = 0, want_conn = 0;
    for (int i = 0; i < ck.n; i++) {
        want_pairs += ends_with(ck.tensors[i].name, ".lora_A.weight");
        want_conn += !strstr(ck.tensors[i].name, ".lora_");
    }
    if (merged != want_pairs)
        fatal("%s: %d LoRA pairs in the checkpoint but %d weights of %s found to merge them into", ck.path, want_pairs,
              merged, c->model);
    if (replaced != want_conn)
        fatal("%s: %d projector tensors in the checkpoint but %d found in %s", ck.path, want_conn, replaced, c->model);
    st_writer_meta(w, "format", "pt");
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    save_or_die(w, path);
    st_writer_free(w);
    for (int i = 0; i < hw.n; i++) free(owned[i]);
    free(owned);
    hf_weights_close(&hw);
    int copied = copy_other_files(c->model, tmp);

    // adapter/: peft's layout for the whole model's class: base_model.model.<its module name>
    if (lora.r > 0) {
        snprintf(path, sizeof path, "%s/adapter", tmp);
        if (mkdir(path, 0755) != 0) fatal("%s: cannot create: %s", path, strerror(errno));
        const char *pre = vlm_dir_peft_prefix(&vd);
        StWriter *aw = st_writer_new();
        char **names = xcalloc(ck.n + 1, sizeof(char *));
        for (int i = 0; i < ck.n; i++) {
            const StTensor *t = &ck.tensors[i];
            if (!strstr(t->name, ".lora_") || strncmp(t->name, "model.", 6)) continue;
            names[i] = xmalloc(strlen(t->name) + strlen(pre) + 32);
            sprintf(names[i], "base_model.model.%s%s", pre, t->name + 6);
            st_writer_add(aw, names[i], t->dtype, t->ndim, t->shape, st_data(&ck, t));
        }
        st_writer_meta(aw, "format", "pt");
        snprintf(path, sizeof path, "%s/adapter/adapter_model.safetensors", tmp);
        save_or_die(aw, path);
        st_writer_free(aw);
        for (int i = 0; i < ck.n; i++) free(names[i]);
        free(names);
        // the targets as a regular expression over the class's module names: a list of names
        // would also catch the vision tower's q_proj / k_proj
        char re[1024], alt[256] = "";
        for (int p = 0; p < N_PROJ; p++)
            if (lora.targets & (1u << p))
                snprintf(alt + strlen(alt), sizeof alt - strlen(alt), "%s%s", alt[0] ? "|" : "", proj_names[p]);
        char epre[128] = "";
        for (const char *q = pre; *q && strlen(epre) + 3 < sizeof epre; q++) {
            if (*q == '.') strcat(epre, "\\");
            strncat(epre, q, 1);
        }
        snprintf(re, sizeof re, "%slayers\\.\\d+\\.(self_attn|mlp)\\.(%s)", epre, alt);
        cJSON *j = cJSON_CreateObject();
        char absm[PATH_MAX];
        cJSON_AddStringToObject(j, "base_model_name_or_path", realpath(c->model, absm) ? absm : c->model);
        cJSON_AddStringToObject(j, "bias", "none");
        cJSON_AddBoolToObject(j, "fan_in_fan_out", 0);
        cJSON_AddBoolToObject(j, "inference_mode", 1);
        cJSON_AddBoolToObject(j, "init_lora_weights", 1);
        cJSON_AddNumberToObject(j, "lora_alpha", c->lora_alpha);
        cJSON_AddNumberToObject(j, "lora_dropout", c->lora_dropout);
        cJSON_AddNullToObject(j, "modules_to_save");
        cJSON_AddStringToObject(j, "peft_type", "LORA");
        cJSON_AddNumberToObject(j, "r", c->lora_r);
        cJSON_AddStringToObject(j, "target_modules", re);
        cJSON_AddBoolToObject(j, "use_rslora", c->rslora);
        cJSON_AddBoolToObject(j, "use_dora", 0);
        snprintf(path, sizeof path, "%s/adapter/adapter_config.json", tmp);
        write_json(path, j);
        cJSON_Delete(j);
    }

    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "format", "svlm-export-whole-1");
    cJSON_AddStringToObject(j, "layout", vlm_layout_name(vd.layout));
    cJSON_AddStringToObject(j, "template", c->template_);
    if (strcmp(c->system, "default")) cJSON_AddStringToObject(j, "system", c->system);
    else cJSON_AddNullToObject(j, "system");
    cJSON_AddBoolToObject(j, "pad_to_square", !strcmp(c->image_aspect, "pad"));
    cJSON_AddStringToObject(j, "checkpoint", step_dir);
    snprintf(path, sizeof path, "%s/svlm_export.json", tmp);
    write_json(path, j);
    cJSON_Delete(j);
    st_close(&ck);

    snprintf(old, sizeof old, "%s.old", out_dir);
    int had_old = dir_exists(out_dir);
    if (had_old) {
        if (dir_exists(old) && fs_remove(old) != 0) fatal("%s: cannot remove: %s", old, strerror(errno));
        if (rename(out_dir, old) != 0) fatal("%s: cannot rename to %s: %s", out_dir, old, strerror(errno));
    }
    if (rename(tmp, out_dir) != 0) fatal("%s: cannot rename to %s: %s", tmp, out_dir, strerror(errno));
    if (had_old && fs_remove(old) != 0) fatal("%s: cannot remove: %s", old, strerror(errno));
    printf("export: %s -> %s (%s in %s's layout: %d LoRA-merged weights, the trained projector (%d tensors), %d "
           "files copied%s, svlm_export.json)\n", step_dir, out_dir, vd.arch, c->model, merged, replaced, copied,
           lora.r > 0 ? ", adapter/" : "");
}
