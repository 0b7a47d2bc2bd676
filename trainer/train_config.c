// train_config.c: the table of ./train's keys and their checks (see train_config.h).
#include "trainer/train_config.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/fs_safe.h"
#include "common/util.h"
#include "data/image_slot.h"
#include "data/template.h"
#include "model/connector.h"
#include "model/llm.h"
#include "model/vlm_dir.h"
#include "trainer/dist.h"

#define K(name, type, field, def, help) {name, type, offsetof(TrainConfig, field), sizeof(((TrainConfig *)0)->field), def, help}

const CfgKey train_keys[] = {
    K("stage", CFG_INT, stage, "1", "1: train the connector; 2: connector + LoRA"),
    K("model", CFG_STR, model, "", "whole-VLM directory as it ships (InternVL / Vintern, transformers' InternVL, SmolVLM / "
      "Idefics3, llava-hf) instead of vision + llm; connector, pixel_shuffle, vision_layer, template from it; stage 1 re-aligns "
      "its own projector, stage 2 starts from it"),
    K("vision", CFG_STR, vision, "", "Hugging Face vision model directory (CLIP, SigLIP, Idefics3 vision)"),
    K("vision_layer", CFG_INT, vision_layer, "-2", "hidden_states index whose features feed the connector"),
    K("llm", CFG_STR, llm, "", "Hugging Face language model directory (config.json, safetensors, tokenizer.json)"),
    K("connector", CFG_STR, connector, "ldp", "ldp | mlp2x_gelu | idefics3 | internvl | internvl_hf | nanovlm | llava_hf"),
    K("pixel_shuffle", CFG_INT, pixel_shuffle, "0", "idefics3, nanovlm: the pixel-shuffle factor (0: 2, 4); others: 0"),
    K("freeze_connector", CFG_BOOL, freeze_connector, "false", "stage 2: keep the connector as loaded (the model's own projector, or init_from's): no gradient, lr 0"),
    K("template", CFG_STR, template_, "", "plain | chatml | hyperclovax | vicuna_v1 | hermes2 | internvl2_5 | idefics3 | llava_hf | internvl_hf | auto "
      "(empty: with model, auto = the model's own format; else plain for stage 1, chatml for stage 2)"),
    K("system", CFG_STR, system, "default", "system prompt; \"default\" for the template's own, \"\" for none"),
    K("data", CFG_STR, data, "", "LLaVA JSON / JSONL file (prepared once into shards) or a shard directory"),
    K("image_folder", CFG_STR, image_folder, "", "directory the data's image paths are relative to"),
    K("allow_outside_images", CFG_BOOL, allow_outside_images, "false", "read image paths that leave the image folder (absolute, ../), as LLaVA does"),
    K("val_data", CFG_STR, val_data, "", "validation data (JSON / JSONL or shards); empty: no validation"),
    K("val_image_folder", CFG_STR, val_image_folder, "", "image folder of val_data (empty: image_folder)"),
    K("data_cache", CFG_STR, data_cache, "", "where JSON data is prepared into shards (empty: out_dir/data)"),
    K("image_aspect", CFG_STR, image_aspect, "", "pad (LLaVA-1.5: pad to a square with the mean colour) | crop (CLIP centre crop; "
      "other towers: their processor's resize); empty: pad, or with model what the model does (InternVL's pad2square at one tile, "
      "else its resize; pad where the model does not is refused)"),
    K("image_format", CFG_STR, image_format, "", "llava | internvl | idefics3: the image slot's marker tokens (empty: the connector's; "
      "with model the model's own)"),
    K("max_tiles", CFG_INT, max_tiles, "0", "tiles per image at most (InternVL dynamic_preprocess, 6 or 12 typical; Idefics3 splitting: 1 or at least "
      "ceil(longest_edge / max_image_size)^2); 0: with model the model's own (a smaller value saves memory), else 1: one tile"),
    K("max_images", CFG_INT, max_images, "1", "images per sample at most (1..16); samples with more are skipped"),
    K("max_seq_len", CFG_INT, max_seq_len, "2048", "tokens per sample, image tokens included"),
    K("packing", CFG_BOOL, packing, "false", "pack several samples per row (attention kept inside each)"),
    K("batch_size", CFG_INT, batch_size, "16", "micro-batch per device"),
    K("global_batch", CFG_INT, global_batch, "256", "samples per optimizer step; gradient accumulation makes up the difference"),
    K("epochs", CFG_INT, epochs, "1", "passes over the data (when max_steps is 0)"),
    K("max_steps", CFG_INT, max_steps, "0", "optimizer steps; 0: from epochs"),
    K("lr", CFG_FLOAT, lr, "2e-4", "peak learning rate (LoRA; the connector too unless connector_lr is set)"),
    K("connector_lr", CFG_FLOAT, connector_lr, "0", "peak learning rate of the connector; 0: lr"),
    K("min_lr", CFG_FLOAT, min_lr, "0", "floor of the cosine decay (as a fraction of each group's peak: min_lr / lr)"),
    K("warmup_ratio", CFG_FLOAT, warmup_ratio, "0.03", "linear warmup over ceil(steps * warmup_ratio) steps"),
    K("weight_decay", CFG_FLOAT, weight_decay, "0", "AdamW decoupled weight decay (not on biases)"),
    K("grad_clip", CFG_FLOAT, grad_clip, "1.0", "clip the global gradient norm to this; 0: no clipping"),
    K("adam_beta1", CFG_FLOAT, adam_beta1, "0.9", "AdamW beta1"),
    K("adam_beta2", CFG_FLOAT, adam_beta2, "0.999", "AdamW beta2"),
    K("adam_eps", CFG_FLOAT, adam_eps, "1e-8", "AdamW epsilon"),
    K("lora_r", CFG_INT, lora_r, "64", "LoRA rank (stage 2)"),
    K("lora_alpha", CFG_FLOAT, lora_alpha, "16", "LoRA alpha: scaling alpha / r (rsLoRA: alpha / sqrt(r))"),
    K("lora_targets", CFG_STR, lora_targets, "q,k,v,o,gate,up,down", "projections that get LoRA"),
    K("lora_dropout", CFG_FLOAT, lora_dropout, "0", "dropout on LoRA's input (peft's lora_dropout)"),
    K("rslora", CFG_BOOL, rslora, "false", "rank-stabilised LoRA scaling"),
    K("init_from", CFG_STR, init_from, "", "stage 2: a stage-1 run or checkpoint directory (or connector.safetensors) to take the connector from"),
    K("seed", CFG_U64, seed, "42", "initialisation and data order"),
    K("out_dir", CFG_STR, out_dir, "checkpoints/run", "run directory: config.conf, metrics.jsonl, step_NNNNNNNN/"),
    K("save_every", CFG_INT, save_every, "500", "checkpoint every this many steps (and at the end); 0: only at the end"),
    K("keep_last", CFG_INT, keep_last, "2", "checkpoints kept (the newest)"),
    K("eval_every", CFG_INT, eval_every, "0", "validation loss and eval_data score every this many steps (and at the start and end); 0: start and end only"),
    K("log_every", CFG_INT, log_every, "1", "progress line and metrics.jsonl record every this many steps"),
    K("resume", CFG_STR, resume, "auto", "auto: newest complete checkpoint in out_dir | never | a checkpoint directory"),
    K("device", CFG_STR, device, "auto", "cpu | cuda | auto (cuda when a GPU is present)"),
    K("memory_limit", CFG_STR, memory_limit, "auto", "device memory the model may plan for (e.g. 60GiB); auto: what is free at start"),
    K("threads", CFG_INT, threads, "0", "image decoding threads; 0: one per core"),
    K("prefetch", CFG_INT, prefetch, "4", "micro-batches prepared ahead"),
    K("nan_policy", CFG_STR, nan_policy, "stop", "stop | skip: what a non-finite loss or gradient does"),
    K("zero_stage", CFG_STR, zero_stage, "auto", "0: every rank keeps the whole optimizer state | 1: each keeps 1/world of it (ZeRO-1) | auto: 1 when world > 1"),
    K("grad_bucket_mb", CFG_FLOAT, grad_bucket_mb, "25", "MiB of gradients summed across ranks at a time, started while the backward runs on; 0: all at once after it"),
    K("dist_timeout", CFG_FLOAT, dist_timeout, "300", "seconds a rank waits in a collective before it stops the run (a lost rank)"),
    K("dist_init_dir", CFG_STR, dist_init_dir, "", "directory every node sees, for NCCL's unique id when launched without MPI (srun)"),
    K("log_samples", CFG_BOOL, log_samples, "false", "metrics.jsonl lists each step's sample indices (checks the data order)"),
    K("eval_data", CFG_STR, eval_data, "", "benchmark file (JSON / JSONL, as ./evaluate takes) scored with the model being trained at each eval_every; empty: none"),
    K("eval_image_folder", CFG_STR, eval_image_folder, "", "image folder of eval_data (empty: eval_data's folder)"),
    K("eval_task", CFG_STR, eval_task, "auto", "auto (from the items' fields) | mc | vqa | caption"),
    K("eval_mc_score", CFG_STR, eval_mc_score, "generate", "multiple choice: generate (the letter of a greedy answer) | likelihood (the likeliest option)"),
    K("eval_batch_size", CFG_INT, eval_batch_size, "8", "eval_data conversations decoded together (the answers do not depend on it)"),
    K("eval_max_new_tokens", CFG_INT, eval_max_new_tokens, "64", "longest eval_data answer generated"),
    K("eval_limit", CFG_INT, eval_limit, "0", "score only the first N items of eval_data; 0: all"),
};
const int n_train_keys = sizeof train_keys / sizeof train_keys[0];

static void need(int ok, const char *key, const char *why) {
    if (!ok) fatal("config: %s %s", key, why);
}

int train_world_size(void) { return dist_detect().world; }

int train_zero_stage(const TrainConfig *c, int world) {
    if (!strcmp(c->zero_stage, "auto")) return world > 1;
    return c->zero_stage[0] - '0';
}

// absolute form of a path that exists (config.conf must work from any directory); else as given
static void absolute(char *p, size_t cap) {
    char buf[PATH_MAX];
    if (p[0] && realpath(p, buf) && strlen(buf) < cap) strcpy(p, buf);
}

// model = DIR: the tower, connector and LLM settings its config.json states, and the way it sees
// images: its slot format, tiling and aspect (model/vlm_dir.h). vision and llm become DIR (the
// resolved config reads back the same); a vision or llm naming anything else, or a connector,
// pixel_shuffle, vision_layer or image_format other than the model's (beyond the keys' defaults),
// is refused. max_tiles 0 becomes the model's own; another value stands (fewer tiles save memory),
// except an Idefics3 limit below what its splitting gives. image_aspect = pad only where the
// model pads (InternVL's pad2square, one tile).
static void resolve_model(TrainConfig *c) {
    absolute(c->model, CFG_PATH);
    if ((c->vision[0] && strcmp(c->vision, c->model)) || (c->llm[0] && strcmp(c->llm, c->model)))
        fatal("config: model = %s is a whole model: leave vision and llm out (they are read from it)", c->model);
    VlmDir d;
    vlm_dir_open(&d, c->model);
    const char *ct = connector_type_name(d.connector);
    if (strcmp(c->connector, "ldp") && strcmp(c->connector, ct))
        fatal("config: connector = %s, but model = %s ships the %s projector (leave connector out)", c->connector, c->model, ct);
    if (c->pixel_shuffle && c->pixel_shuffle != d.connector_scale)
        fatal("config: pixel_shuffle = %d, but model = %s's config.json says %d (leave it out)", c->pixel_shuffle, c->model,
              d.connector_scale);
    if (c->vision_layer != -2 && c->vision_layer != d.vision_layer)
        fatal("config: vision_layer = %d, but model = %s feeds its projector layer %d (leave it out)", c->vision_layer,
              c->model, d.vision_layer);
    snprintf(c->connector, sizeof c->connector, "%s", ct);
    c->pixel_shuffle = d.connector_scale;
    c->vision_layer = d.vision_layer;
    if (c->image_format[0] && strcmp(c->image_format, d.image_format))
        fatal("config: image_format = %s, but model = %s marks its images with the %s slot (leave image_format out)",
              c->image_format, c->model, d.image_format);
    snprintf(c->image_format, sizeof c->image_format, "%s", d.image_format);
    if (c->max_tiles == 0) {
        c->max_tiles = d.max_tiles;
    } else if (d.layout == VLM_LAYOUT_IDEFICS3 && c->max_tiles > 1 && c->max_tiles < d.split_tiles) {
        fatal("config: max_tiles = %d, but model = %s's image splitting cuts up to %d tiles (+ the global image) whatever "
              "the limit: set 1 (no splitting) or at least %d", c->max_tiles, c->model, d.split_tiles, d.split_tiles);
    }
    int pads = d.pad_to_square && c->max_tiles == 1;
    if (!c->image_aspect[0]) {
        snprintf(c->image_aspect, sizeof c->image_aspect, "%s", pads ? "pad" : "crop");
    } else if (!strcmp(c->image_aspect, "pad") && !pads) {
        fatal("config: image_aspect = pad, but model = %s %s", c->model,
              d.pad_to_square ? "pads only one-tile images (max_tiles = 1)" : "does not pad its images (leave image_aspect out)");
    }
    snprintf(c->vision, CFG_PATH, "%s", c->model);
    snprintf(c->llm, CFG_PATH, "%s", c->model);
    if (!c->template_[0] || !strcmp(c->template_, "auto")) {
        const char *system;
        TemplateKind k = vlm_dir_template(&d, &system);
        snprintf(c->template_, sizeof c->template_, "%s", template_name(k));
        // the model's own default system prompt where it differs from the kind's (none, for
        // transformers' InternVL), unless the config names one
        if (system && !strcmp(c->system, "default")) {
            if (strlen(system) >= sizeof c->system) fatal("config: the model's system prompt is too long");
            snprintf(c->system, sizeof c->system, "%s", system);
        }
    }
}

void train_config_load(TrainConfig *c, const char *path, int argc, char **argv) {
    memset(c, 0, sizeof *c);
    if (path && !file_exists(path)) fatal("%s: config file not found", path);
    config_parse(train_keys, n_train_keys, c, path, argc, argv);
    need(c->stage == 1 || c->stage == 2, "stage", "must be 1 or 2");
    need(c->max_tiles >= 0 && c->max_tiles <= 64, "max_tiles", "must be in 0..64 (0: the model's own, or 1)");
    if (c->model[0]) resolve_model(c);
    if (c->max_tiles == 0) c->max_tiles = 1;
    need(c->vision[0], "vision", "is required (a CLIP vision model directory)");
    need(c->llm[0], "llm", "is required (a language model directory)");
    need(c->data[0], "data", "is required (LLaVA JSON / JSONL or a shard directory)");
    connector_scale(connector_type_parse(c->connector), c->pixel_shuffle);  // fatal() on a bad pair
    if (!strcmp(c->template_, "auto")) fatal("config: template = auto reads the format of model = DIR; without model, name one");
    if (!c->template_[0]) strcpy(c->template_, c->stage == 1 ? "plain" : "chatml");
    template_parse(c->template_);
    if (!c->image_aspect[0]) strcpy(c->image_aspect, "pad");
    need(!strcmp(c->image_aspect, "pad") || !strcmp(c->image_aspect, "crop"), "image_aspect", "must be pad or crop");
    need(!c->image_format[0] || image_format_parse(c->image_format) >= 0, "image_format", "must be llava, internvl, idefics3 or empty");
    need(c->max_images >= 1 && c->max_images <= 16, "max_images", "must be in 1..16");
    need(c->max_tiles == 1 || strcmp(c->image_aspect, "pad"), "max_tiles",
         "> 1 tiles the image at its own aspect ratio: set image_aspect = crop (pad would pad only one-tile images)");
    need(c->max_seq_len >= 8, "max_seq_len", "must be at least 8");
    need(c->batch_size >= 1, "batch_size", "must be at least 1");
    need(c->global_batch >= c->batch_size, "global_batch", "must be at least batch_size");
    need(c->epochs >= 1, "epochs", "must be at least 1");
    need(c->max_steps >= 0, "max_steps", "must be 0 or more");
    need(c->lr > 0, "lr", "must be positive");
    need(c->connector_lr >= 0, "connector_lr", "must be 0 or more");
    need(c->min_lr >= 0 && c->min_lr <= c->lr, "min_lr", "must be between 0 and lr");
    need(c->warmup_ratio >= 0 && c->warmup_ratio <= 1, "warmup_ratio", "must be in [0, 1]");
    need(c->weight_decay >= 0, "weight_decay", "must be 0 or more");
    need(c->grad_clip >= 0, "grad_clip", "must be 0 or more");
    need(c->adam_beta1 >= 0 && c->adam_beta1 < 1, "adam_beta1", "must be in [0, 1)");
    need(c->adam_beta2 >= 0 && c->adam_beta2 < 1, "adam_beta2", "must be in [0, 1)");
    need(c->adam_eps > 0, "adam_eps", "must be positive");
    if (c->stage == 2) {
        need(c->lora_r >= 1, "lora_r", "must be at least 1 in stage 2");
        need(c->lora_alpha > 0, "lora_alpha", "must be positive");
        lora_targets_parse(c->lora_targets);
    }
    need(c->lora_dropout >= 0 && c->lora_dropout < 1, "lora_dropout", "must be in [0, 1)");
    need(c->stage == 2 || !c->freeze_connector, "freeze_connector", "must be false in stage 1 (the connector is what it trains)");
    need(c->out_dir[0], "out_dir", "must not be empty");
    need(c->save_every >= 0 && c->eval_every >= 0, "save_every/eval_every", "must be 0 or more");
    need(c->keep_last >= 1, "keep_last", "must be at least 1");
    need(c->log_every >= 1, "log_every", "must be at least 1");
    need(!strcmp(c->device, "auto") || !strcmp(c->device, "cpu") || !strcmp(c->device, "cuda"), "device", "must be cpu, cuda or auto");
    c->memory_limit_bytes = 0;
    if (strcmp(c->memory_limit, "auto") && (!config_parse_size(c->memory_limit, &c->memory_limit_bytes) || !c->memory_limit_bytes))
        fatal("config: memory_limit = \"%s\" is not a size (e.g. 60GiB, 500MB) or auto", c->memory_limit);
    need(c->threads >= 0 && c->prefetch >= 1, "threads/prefetch", "threads >= 0, prefetch >= 1");
    need(!strcmp(c->nan_policy, "stop") || !strcmp(c->nan_policy, "skip"), "nan_policy", "must be stop or skip");
    if (c->stage == 1 && c->init_from[0]) warn("config: init_from is ignored in stage 1");
    if (c->stage == 2 && c->init_from[0] && !file_exists(c->init_from) && !dir_exists(c->init_from))
        fatal("config: init_from = %s: no such file or directory", c->init_from);
    need(!strcmp(c->zero_stage, "auto") || !strcmp(c->zero_stage, "0") || !strcmp(c->zero_stage, "1"), "zero_stage",
         "must be 0, 1 or auto");
    need(c->dist_timeout > 0, "dist_timeout", "must be positive (seconds)");
    need(c->grad_bucket_mb >= 0 && c->grad_bucket_mb <= 1e6, "grad_bucket_mb", "must be between 0 and 1e6 (MiB)");
    need(!strcmp(c->eval_task, "auto") || !strcmp(c->eval_task, "mc") || !strcmp(c->eval_task, "vqa") ||
         !strcmp(c->eval_task, "caption"), "eval_task", "must be auto, mc, vqa or caption");
    need(!strcmp(c->eval_mc_score, "generate") || !strcmp(c->eval_mc_score, "likelihood"), "eval_mc_score",
         "must be generate or likelihood");
    need(c->eval_batch_size >= 1 && c->eval_batch_size <= 4096, "eval_batch_size", "must be in [1, 4096]");
    need(c->eval_max_new_tokens >= 1, "eval_max_new_tokens", "must be at least 1");
    need(c->eval_limit >= 0, "eval_limit", "must be 0 or more");
    if (c->eval_data[0] && !file_exists(c->eval_data)) fatal("config: eval_data = %s: no such file", c->eval_data);
    int world = train_world_size();
    if (c->global_batch % (c->batch_size * world))
        fatal("config: global_batch %d is not a multiple of batch_size x processes (%d x %d)", c->global_batch,
              c->batch_size, world);
    char *paths[] = {c->model, c->vision, c->llm, c->data, c->image_folder, c->val_data, c->val_image_folder, c->init_from, c->out_dir,
                     c->dist_init_dir, c->eval_data, c->eval_image_folder};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) absolute(paths[i], CFG_PATH);
    if (!c->val_image_folder[0]) strcpy(c->val_image_folder, c->image_folder);
    if (!c->data_cache[0]) {
        char buf[CFG_PATH + 8];
        path_join(buf, sizeof buf, c->out_dir, "data");
        if (strlen(buf) >= CFG_PATH) fatal("config: out_dir is too long");
        strcpy(c->data_cache, buf);
    }
}

void train_config_save(const TrainConfig *c, const char *path) {
    // written to memory first, then to a fresh file renamed over path: a link at path (or at a
    // temporary name) is never written through (common/fs_safe.h)
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) fatal("%s: out of memory", path);
    fprintf(f, "# resolved configuration of this run, written by ./train\n");
    config_write(train_keys, n_train_keys, c, f);
    if (fclose(f) != 0) fatal("%s: out of memory", path);
    if (fs_replace(path, text, len) != 0) fatal("%s: write failed: %s", path, strerror(errno));
    free(text);
}

void train_config_print(const TrainConfig *c) {
    printf("config:\n");
    char buf[4200];
    for (int i = 0; i < n_train_keys; i++)
        printf("  %-20s %s\n", train_keys[i].key, config_value(train_keys, n_train_keys, c, train_keys[i].key, buf, sizeof buf));
}
