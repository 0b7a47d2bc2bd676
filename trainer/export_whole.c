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
#include "model/hf.h"
#include "model/llm.h"
#include "model/vlm_dir.h"
#include "trainer/export.h"
#include "trainer/train_config.h"

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
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
    char path[PATH_MAX + 64], tmp[PATH_MAX + 16], name[600];
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
            owned[i] = export_f32_as(x, n, t->dtype, f->path, t->name);
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
        owned[i] = export_merge_lora(f, t, &ck, A, B, lora.r, scale);
        st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, owned[i]);
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
    export_save_st(w, path);
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
        snprintf(path, sizeof path, "%s/adapter/adapter_model.safetensors", tmp);
        export_adapter_tensors(&ck, path, "model.", pre);
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
        cJSON *j = export_adapter_config(c, c->model, cJSON_CreateString(re), 0);
        snprintf(path, sizeof path, "%s/adapter/adapter_config.json", tmp);
        export_write_json(path, j, 1);
        cJSON_Delete(j);
    }

    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "format", "svlm-export-whole-1");
    cJSON_AddStringToObject(j, "layout", vlm_layout_name(vd.layout));
    cJSON_AddStringToObject(j, "template", c->template_);
    if (strcmp(c->system, "default")) cJSON_AddStringToObject(j, "system", c->system);
    else cJSON_AddNullToObject(j, "system");
    cJSON_AddBoolToObject(j, "pad_to_square", !strcmp(c->image_aspect, "pad"));
    cJSON_AddNumberToObject(j, "max_tiles", c->max_tiles);  // the tiling trained with: ./generate tiles the same
    cJSON_AddStringToObject(j, "checkpoint", step_dir);
    snprintf(path, sizeof path, "%s/svlm_export.json", tmp);
    export_write_json(path, j, 1);
    cJSON_Delete(j);
    st_close(&ck);

    export_replace_dir(tmp, out_dir);
    printf("export: %s -> %s (%s in %s's layout: %d LoRA-merged weights, the trained projector (%d tensors), %d "
           "files copied%s, svlm_export.json)\n", step_dir, out_dir, vd.arch, c->model, merged, replaced, copied,
           lora.r > 0 ? ", adapter/" : "");
}
