// export.c: LoRA merge into the base LLM, peft adapter, connector and svlm.json (see export.h).
#include "trainer/export.h"

#include "kernels/cpu/blas.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <dirent.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fs_safe.h"
#include "common/safetensors.h"
#include "common/util.h"
#include "model/connector.h"
#include "model/hf.h"
#include "model/llm.h"
#include "model/vit.h"
#include "trainer/checkpoint.h"
#include "trainer/train_config.h"

void export_resolve(const char *src, char *step_dir, char *run_dir, int cap) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/state.json", src);
    if (file_exists(path)) {  // a checkpoint: its run directory is the parent
        snprintf(step_dir, cap, "%s", src);
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s", src);
        size_t n = strlen(tmp);
        while (n > 1 && tmp[n - 1] == '/') tmp[--n] = 0;
        snprintf(run_dir, cap, "%s", dirname(tmp));
    } else {
        if (!dir_exists(src)) fatal("%s: no such run or checkpoint directory", src);
        snprintf(run_dir, cap, "%s", src);
        if (!checkpoint_latest(src, step_dir, cap)) fatal("%s: no complete checkpoint (step_NNNNNNNN/ with state.json) in it", src);
    }
    snprintf(path, sizeof path, "%s/config.conf", run_dir);
    if (!file_exists(path)) fatal("%s: missing (the run directory's resolved configuration)", path);
}

void export_copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in) fatal("%s: cannot read: %s", from, strerror(errno));
    FILE *f = fopen(to, "wb");
    if (!f) fatal("%s: cannot create: %s", to, strerror(errno));
    char *buf = xmalloc(1 << 20);
    size_t n;
    int ok = 1;
    while (ok && (n = fread(buf, 1, 1 << 20, in)) > 0) ok = fwrite(buf, 1, n, f) == n;
    if (ferror(in)) fatal("%s: read failed: %s", from, strerror(errno));
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) != 0 || !ok) fatal("%s: write failed: %s", to, strerror(errno));
    fclose(in);
    free(buf);
}

// out/vision: the tower's files svlm and transformers read (configs, weights, shard index), or a
// symbolic link to the tower's directory
static void export_vision(const char *vision_dir, const char *out, int link) {
    char abs[PATH_MAX];
    if (!realpath(vision_dir, abs)) fatal("%s: %s", vision_dir, strerror(errno));
    if (link) {
        if (symlink(abs, out) != 0) fatal("%s: cannot create a link to %s: %s", out, abs, strerror(errno));
        return;
    }
    if (mkdir(out, 0755) != 0) fatal("%s: cannot create: %s", out, strerror(errno));
    DIR *d = opendir(abs);
    if (!d) fatal("%s: cannot list: %s", abs, strerror(errno));
    struct dirent *de;
    int n = 0;
    char from[PATH_MAX + 300], to[PATH_MAX + 300];
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        size_t len = strlen(nm);
        int want = !strcmp(nm, "config.json") || !strcmp(nm, "preprocessor_config.json") ||
                   !strcmp(nm, "model.safetensors.index.json") || (len > 12 && !strcmp(nm + len - 12, ".safetensors"));
        snprintf(from, sizeof from, "%s/%s", abs, nm);
        if (!want || !file_exists(from)) continue;
        snprintf(to, sizeof to, "%s/%s", out, nm);
        export_copy_file(from, to);
        n++;
    }
    closedir(d);
    if (!n) fatal("%s: no vision tower files in it", abs);
}

void export_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) fatal("%s: cannot create: %s", path, strerror(errno));
    int ok = fputs(text, f) >= 0 && fflush(f) == 0;
    if (fclose(f) != 0 || !ok) fatal("%s: write failed: %s", path, strerror(errno));
}

void export_write_json(const char *path, const cJSON *j, int formatted) {
    char *text = formatted ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
    if (!text) fatal("%s: out of memory", path);
    size_t n = strlen(text);
    text = xrealloc(text, n + 2);
    text[n] = '\n';
    text[n + 1] = 0;
    export_write_text(path, text);
    free(text);
}

void export_save_st(StWriter *w, const char *path) {
    char err[2300];
    if (st_writer_save(w, path, err, sizeof err) != 0) fatal("%s", err);
}

void *export_f32_as(float *x, size_t n, StDtype dt, const char *file, const char *name) {
    if (dt == ST_F32) return x;
    if (dt != ST_BF16 && dt != ST_F16)
        fatal("%s: tensor %s has dtype %s: export writes F32, BF16 and F16", file, name, st_dtype_name(dt));
    uint16_t *h = xmalloc(n * sizeof(uint16_t));
    for (size_t j = 0; j < n; j++) h[j] = dt == ST_BF16 ? f32_to_bf16(x[j]) : f32_to_f16(x[j]);
    free(x);
    return h;
}

void *export_merge_lora(const StFile *f, const StTensor *t, const StFile *ck, const StTensor *A, const StTensor *B,
                        int lora_r, float scale) {
    int out = (int)t->shape[0], in = (int)t->shape[1], r = (int)A->shape[0];
    if (t->ndim != 2 || A->shape[1] != in || B->shape[0] != out || B->shape[1] != r || r != lora_r)
        fatal("%s: LoRA tensors for %s do not match its shape", ck->path, t->name);
    float *W = xmalloc((size_t)out * in * sizeof(float)), *a = xmalloc((size_t)r * in * sizeof(float));
    float *b = xmalloc((size_t)out * r * sizeof(float));
    st_read_f32(f, t, W);
    st_read_f32(ck, A, a);
    st_read_f32(ck, B, b);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, r, scale, b, r, a, in, 1.0f, W, in);
    free(a);
    free(b);
    return export_f32_as(W, (size_t)out * in, t->dtype, f->path, t->name);
}

void export_adapter_tensors(const StFile *ck, const char *path, const char *strip, const char *add) {
    StWriter *aw = st_writer_new();
    char **names = xcalloc(ck->n + 1, sizeof(char *));
    size_t ns = strlen(strip);
    for (int i = 0; i < ck->n; i++) {
        const StTensor *t = &ck->tensors[i];
        if (!strstr(t->name, ".lora_") || strncmp(t->name, strip, ns)) continue;
        names[i] = xmalloc(strlen(t->name) + strlen(add) + 32);
        sprintf(names[i], "base_model.model.%s%s", add, t->name + ns);
        st_writer_add(aw, names[i], t->dtype, t->ndim, t->shape, st_data(ck, t));
    }
    st_writer_meta(aw, "format", "pt");
    export_save_st(aw, path);
    st_writer_free(aw);
    for (int i = 0; i < ck->n; i++) free(names[i]);
    free(names);
}

cJSON *export_adapter_config(const TrainConfig *c, const char *base_model, cJSON *target_modules, int causal_lm) {
    cJSON *j = cJSON_CreateObject();
    char abs[PATH_MAX];
    cJSON_AddStringToObject(j, "base_model_name_or_path", realpath(base_model, abs) ? abs : base_model);
    cJSON_AddStringToObject(j, "bias", "none");
    cJSON_AddBoolToObject(j, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(j, "inference_mode", 1);
    cJSON_AddBoolToObject(j, "init_lora_weights", 1);
    cJSON_AddNumberToObject(j, "lora_alpha", c->lora_alpha);
    cJSON_AddNumberToObject(j, "lora_dropout", c->lora_dropout);
    cJSON_AddNullToObject(j, "modules_to_save");
    cJSON_AddStringToObject(j, "peft_type", "LORA");
    cJSON_AddNumberToObject(j, "r", c->lora_r);
    cJSON_AddItemToObject(j, "target_modules", target_modules);
    if (causal_lm) cJSON_AddStringToObject(j, "task_type", "CAUSAL_LM");
    cJSON_AddBoolToObject(j, "use_rslora", c->rslora);
    cJSON_AddBoolToObject(j, "use_dora", 0);
    return j;
}

// an export directory svlm wrote, removed without following links (common/fs_safe.h)
static void remove_tree(const char *dir) {
    if (fs_remove(dir) != 0) fatal("%s: cannot remove: %s", dir, strerror(errno));
}

void export_replace_dir(const char *tmp, const char *out_dir) {
    char old[PATH_MAX + 16];
    snprintf(old, sizeof old, "%s.old", out_dir);
    int had_old = dir_exists(out_dir);
    if (had_old) {
        if (dir_exists(old)) remove_tree(old);
        if (rename(out_dir, old) != 0) fatal("%s: cannot rename to %s: %s", out_dir, old, strerror(errno));
    }
    if (rename(tmp, out_dir) != 0) fatal("%s: cannot rename to %s: %s", tmp, out_dir, strerror(errno));
    if (had_old) remove_tree(old);
}

void export_run(const char *src, const char *out_arg) {
    ExportOptions o = {0};
    export_run_with(src, out_arg, &o);
}

void export_run_with(const char *src, const char *out_arg, const ExportOptions *o) {
    char step_dir[PATH_MAX], run_dir[PATH_MAX], path[PATH_MAX + 64], tmp[PATH_MAX + 16], old[PATH_MAX + 16];
    char out_dir[PATH_MAX];  // without trailing slashes: "out/" must give "out.tmp", not "out/.tmp"
    snprintf(out_dir, sizeof out_dir, "%s", out_arg);
    for (size_t n = strlen(out_dir); n > 1 && out_dir[n - 1] == '/'; n--) out_dir[n - 1] = 0;
    snprintf(path, sizeof path, "%s/svlm.json", out_dir);
    snprintf(old, sizeof old, "%s/svlm_export.json", out_dir);
    if (dir_exists(out_dir) && !file_exists(path) && !file_exists(old))
        fatal("%s exists and is not an svlm export: choose another output directory", out_dir);
    export_resolve(src, step_dir, run_dir, sizeof step_dir);
    snprintf(path, sizeof path, "%s/config.conf", run_dir);
    TrainConfig c;
    train_config_load(&c, path, 0, NULL);
    if (c.model[0]) {  // back in the whole model's own layout
        export_whole(&c, step_dir, out_dir);
        return;
    }

    // the trainable tensors, named as in the checkpoint
    StFile ck;
    snprintf(path, sizeof path, "%s/trainable.safetensors", step_dir);
    st_open_or_die(&ck, path);
    LoraConfig lora = {0};
    if (c.stage == 2)
        lora = (LoraConfig){.r = c.lora_r, .alpha = (float)c.lora_alpha, .rslora = c.rslora,
                            .targets = lora_targets_parse(c.lora_targets), .dropout = (float)c.lora_dropout};
    float scale = lora_scaling(&lora);

    snprintf(tmp, sizeof tmp, "%s.tmp", out_dir);
    if (dir_exists(tmp)) remove_tree(tmp);
    if (mkdir(tmp, 0755) != 0) fatal("%s: cannot create: %s", tmp, strerror(errno));
    char llm_out[PATH_MAX + 32];
    snprintf(llm_out, sizeof llm_out, "%s/llm", tmp);
    if (mkdir(llm_out, 0755) != 0) fatal("%s: cannot create: %s", llm_out, strerror(errno));

    // llm/: every base tensor, LoRA targets merged W += scale * B @ A in fp32, then stored in
    // the tensor's own dtype (rounded to nearest even for bf16 / f16)
    HfWeights hw;
    hf_weights_open(&hw, c.llm);
    StWriter *w = st_writer_new();
    void **owned = xcalloc(hw.n + 1, sizeof(void *));
    int merged = 0;
    char name[512];
    for (int i = 0; i < hw.n; i++) {
        const StTensor *t = hw.tensors[i];
        const StFile *f = &hw.files[hw.file_of[i]];
        const char *dot = strrchr(t->name, '.');
        const StTensor *A = NULL, *Bt = NULL;
        if (lora.r > 0 && dot && !strcmp(dot, ".weight")) {
            snprintf(name, sizeof name, "%.*s.lora_A.weight", (int)(dot - t->name), t->name);
            A = st_find(&ck, name);
            snprintf(name, sizeof name, "%.*s.lora_B.weight", (int)(dot - t->name), t->name);
            Bt = st_find(&ck, name);
        }
        if (!A || !Bt) {  // untouched: the original bytes, straight from the mapped file
            st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, st_data(f, t));
            continue;
        }
        owned[i] = export_merge_lora(f, t, &ck, A, Bt, lora.r, scale);
        st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, owned[i]);
        merged++;
    }
    int expect = 0;
    for (int i = 0; i < ck.n; i++) expect += strstr(ck.tensors[i].name, ".lora_A.weight") != NULL;
    if (merged != expect) fatal("%s: %d LoRA pairs in the checkpoint but %d base weights found to merge them into", ck.path, expect, merged);
    st_writer_meta(w, "format", "pt");
    snprintf(path, sizeof path, "%s/model.safetensors", llm_out);
    export_save_st(w, path);
    st_writer_free(w);
    for (int i = 0; i < hw.n; i++) free(owned[i]);
    free(owned);
    hf_weights_close(&hw);
    const char *copies[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                            "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja"};
    char from[PATH_MAX + 64];
    for (size_t i = 0; i < sizeof copies / sizeof copies[0]; i++) {
        snprintf(from, sizeof from, "%s/%s", c.llm, copies[i]);
        snprintf(path, sizeof path, "%s/%s", llm_out, copies[i]);
        if (file_exists(from)) export_copy_file(from, path);
    }

    // adapter/: peft's layout, tensors as base_model.model.<name>
    if (lora.r > 0) {
        snprintf(path, sizeof path, "%s/adapter", tmp);
        if (mkdir(path, 0755) != 0) fatal("%s: cannot create: %s", path, strerror(errno));
        snprintf(path, sizeof path, "%s/adapter/adapter_model.safetensors", tmp);
        export_adapter_tensors(&ck, path, "", "");
        cJSON *tm = cJSON_CreateArray();
        for (int p = 0; p < N_PROJ; p++)
            if (lora.targets & (1u << p)) cJSON_AddItemToArray(tm, cJSON_CreateString(proj_names[p]));
        cJSON *j = export_adapter_config(&c, c.llm, tm, 1);
        snprintf(path, sizeof path, "%s/adapter/adapter_config.json", tmp);
        export_write_json(path, j, 1);
        cJSON_Delete(j);
    }

    // connector.safetensors: the tensors the connector type declares, as the checkpoint holds
    // them (in its order); the connector says which they are and how many tokens it gives
    VitConfig vc;
    vit_config_load(&vc, c.vision);
    LlmConfig lc;
    llm_config_load(&lc, c.llm);
    ConnectorType ct = connector_type_parse(c.connector);
    int image_tokens = connector_tokens(ct, c.pixel_shuffle, vc.grid);
    ParamSet decl;  // declared only, never allocated: names and shapes
    params_init(&decl, kernels_cpu(), 1);
    connector_declare_params(&decl, ct, c.pixel_shuffle, vit_feature_dim(&vc), lc.hidden, NULL);
    for (int i = 0; i < decl.n; i++)
        if (!st_find(&ck, decl.p[i].name))
            fatal("%s: connector tensor %s is missing (the run's connector is %s)", ck.path, decl.p[i].name, c.connector);
    StWriter *cw = st_writer_new();
    for (int i = 0; i < ck.n; i++) {
        const StTensor *t = &ck.tensors[i];
        if (params_find(&decl, t->name) < 0) continue;
        st_writer_add(cw, t->name, t->dtype, t->ndim, t->shape, st_data(&ck, t));
    }
    params_free(&decl);
    st_writer_meta(cw, "format", "pt");
    st_writer_meta(cw, "connector", c.connector);
    snprintf(path, sizeof path, "%s/connector.safetensors", tmp);
    export_save_st(cw, path);
    st_writer_free(cw);

    // vision/, and llava/ for the connector LLaVA has
    snprintf(path, sizeof path, "%s/vision", tmp);
    export_vision(c.vision, path, o->link_vision);
    ImagePrep prep;
    vit_image_prep(&vc, c.vision, &prep);
    int has_llava = ct == CONNECTOR_MLP2X_GELU;
    if (has_llava) {
        char llava[PATH_MAX + 32], conn[PATH_MAX + 64];
        snprintf(llava, sizeof llava, "%s/llava", tmp);
        snprintf(conn, sizeof conn, "%s/connector.safetensors", tmp);
        ExportLlava e = {.out = llava, .vision_dir = c.vision, .llm_dir = c.llm, .merged_llm_dir = llm_out,
                         .connector_file = conn, .vision_layer = c.vision_layer, .has_cls = vit_has_cls(&vc),
                         .image_size = vc.image_size, .patch_size = vc.patch, .image_tokens = image_tokens,
                         .pad_to_square = !strcmp(c.image_aspect, "pad"), .template_kind = template_parse(c.template_),
                         .system = strcmp(c.system, "default") ? c.system : NULL};
        memcpy(e.mean, prep.mean, sizeof e.mean);
        memcpy(e.std, prep.std, sizeof e.std);
        export_llava(&e);
    }

    // svlm.json: what ./generate needs besides the weights
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "format", "svlm-export-1");
    cJSON_AddStringToObject(j, "vision", "vision");  // under the export (model/model_dir.c looks there first)
    cJSON_AddNumberToObject(j, "vision_layer", c.vision_layer);
    cJSON_AddStringToObject(j, "connector", c.connector);
    cJSON_AddNumberToObject(j, "pixel_shuffle", connector_scale(ct, c.pixel_shuffle));
    cJSON_AddNumberToObject(j, "image_size", vc.image_size);
    cJSON_AddItemToObject(j, "image_mean", cJSON_CreateFloatArray(prep.mean, 3));
    cJSON_AddItemToObject(j, "image_std", cJSON_CreateFloatArray(prep.std, 3));
    cJSON_AddBoolToObject(j, "pad_to_square", !strcmp(c.image_aspect, "pad"));
    cJSON_AddStringToObject(j, "template", c.template_);
    if (strcmp(c.system, "default")) cJSON_AddStringToObject(j, "system", c.system);
    else cJSON_AddNullToObject(j, "system");
    cJSON_AddNumberToObject(j, "image_tokens", image_tokens);
    cJSON_AddNumberToObject(j, "max_tiles", c.max_tiles);  // data/tiling.h, data/image_slot.h
    if (c.image_format[0]) cJSON_AddStringToObject(j, "image_format", c.image_format);
    cJSON_AddStringToObject(j, "llm", "llm");
    cJSON_AddStringToObject(j, "checkpoint", step_dir);
    snprintf(path, sizeof path, "%s/svlm.json", tmp);
    export_write_json(path, j, 1);
    cJSON_Delete(j);
    st_close(&ck);

    // the old export is replaced only once the new one is complete, and kept until it is in place
    export_replace_dir(tmp, out_dir);
    printf("export: %s -> %s (llm/ with %d LoRA-merged weights%s, connector.safetensors, vision/ (%s)%s, svlm.json)\n",
           step_dir, out_dir, merged, lora.r > 0 ? ", adapter/" : "", o->link_vision ? "a link" : "a copy",
           has_llava ? ", llava/ (LlavaForConditionalGeneration)" : "");
}
