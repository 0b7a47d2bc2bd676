// export.h: a run's checkpoint as files other tools load:
//   llm/                    the base LLM directory with LoRA merged into its weights (each tensor
//                           in its own dtype), config.json and tokenizer files copied: transformers
//                           loads it as it is
//   adapter/                peft's adapter_model.safetensors + adapter_config.json (stage 2)
//   connector.safetensors   the connector, fp32, model.mm_projector.* names
//   vision/                 a copy of the vision tower's files (config.json, preprocessor_config.json,
//                           safetensors), or with link_vision a symbolic link to it: svlm.json
//                           names it relatively, so the export is whole where it is moved
//   llava/                  mlp2x_gelu only: the Hugging Face LlavaForConditionalGeneration
//                           checkpoint (trainer/export_llava.c)
//   svlm.json               vision tower, connector, image settings, template: what ./generate needs
// A run trained from `model = DIR` (a whole VLM) is written back in DIR's own layout instead
// (trainer/export_whole.c): OUT holds the model's files, every tensor under its own name and dtype
// with the LoRA targets merged and the trained projector, the other files of DIR copied as they
// are (config.json, remote-code .py files, tokenizer and processor files), adapter/ (peft, the
// model class's module names) and svlm_export.json (chat format, checkpoint): the same class
// loads OUT, and ./generate reads it as a whole model.
// Written to OUT.tmp and renamed when complete.
#pragma once
#include "data/template.h"

#define EXPORT_PATH 4096

typedef struct {
    int link_vision;  // vision/ a symbolic link to the training run's tower instead of a copy
} ExportOptions;

// src: a run directory (its newest checkpoint) or a step_NNNNNNNN directory of one
void export_run(const char *src, const char *out_dir);
void export_run_with(const char *src, const char *out_dir, const ExportOptions *o);
// the whole-model export of a run whose config names model = DIR (c: its config.conf)
#include "trainer/train_config.h"
void export_whole(const TrainConfig *c, const char *step_dir, const char *out_dir);
// copies a file's bytes (streamed), fatal() naming the file on failure
void export_copy_file(const char *from, const char *to);

// what export_llava needs (paths in EXPORT_PATH)
typedef struct {
    const char *out;             // the directory to create
    const char *vision_dir, *llm_dir, *merged_llm_dir, *connector_file;
    int vision_layer, has_cls, image_size, patch_size, image_tokens, pad_to_square;
    float mean[3], std[3];
    TemplateKind template_kind;
    const char *system;          // NULL: the template's default
} ExportLlava;
void export_llava(const ExportLlava *e);
// the step directory and run directory src names; fatal() when it is neither
void export_resolve(const char *src, char *step_dir, char *run_dir, int cap);

// What the three export layouts (export.c, export_whole.c, export_llava.c) share; each fatal()s
// naming the file on failure.
#include <cjson/cJSON.h>
#include "common/safetensors.h"
void export_write_text(const char *path, const char *text);
// the JSON text (cJSON_Print when formatted, else unformatted) and a newline
void export_write_json(const char *path, const cJSON *j, int formatted);
void export_save_st(StWriter *w, const char *path);
// n floats as dtype dt: x itself for F32, else a malloc'd BF16 / F16 copy (round to nearest
// even) and x freed; other dtypes fatal() naming file and tensor
void *export_f32_as(float *x, size_t n, StDtype dt, const char *file, const char *name);
// base weight t of f with its LoRA pair A, B of the checkpoint ck merged, W + scale * B @ A in
// fp32, in t's own dtype (malloc'd); shapes checked against t and the run's rank r
void *export_merge_lora(const StFile *f, const StTensor *t, const StFile *ck, const StTensor *A, const StTensor *B,
                        int r, float scale);
// adapter/adapter_model.safetensors: the checkpoint's LoRA tensors whose names start with strip,
// renamed base_model.model.<add><name without strip> (peft's layout)
void export_adapter_tensors(const StFile *ck, const char *path, const char *strip, const char *add);
// adapter_config.json's fields for a run (c), target_modules as given (owned by the result),
// task_type CAUSAL_LM when causal_lm
cJSON *export_adapter_config(const TrainConfig *c, const char *base_model, cJSON *target_modules, int causal_lm);
// tmp (complete) becomes out_dir; a previous out_dir is kept as out_dir.old until tmp is in place
void export_replace_dir(const char *tmp, const char *out_dir);
