// train_config.h: every key ./train accepts, its default and its check. The resolved values are
// printed at start and saved as out_dir/config.conf, which ./export and ./generate read back.
#pragma once
#include <stdint.h>

#include "common/config.h"

#define CFG_PATH 1024

typedef struct {
    int stage;
    char model[CFG_PATH];  // a whole-VLM directory (model/vlm_dir.h); vision and llm then name it too
    char vision[CFG_PATH];
    int vision_layer;
    char llm[CFG_PATH];
    char connector[32];
    int pixel_shuffle;  // the connector's scale (0: its default)
    int freeze_connector;  // stage 2: the connector is kept as loaded (no gradient, lr 0)
    char template_[32];
    char system[2048];
    char data[CFG_PATH];
    char image_folder[CFG_PATH];
    int allow_outside_images;  // image paths may leave image_folder (absolute, ../)
    char val_data[CFG_PATH];
    char val_image_folder[CFG_PATH];
    char data_cache[CFG_PATH];
    char image_aspect[16];
    char image_format[16];  // the image slot's format (data/image_slot.h); "": the connector's
    int max_tiles;          // tiles per image at most (data/tiling.h); 1: no tiling (0 in a file: the
                            // model's own with model, else 1; resolved by train_config_load)
    int max_images;         // images per sample at most
    int max_seq_len;
    int packing;
    int batch_size;
    int global_batch;
    int epochs;
    int max_steps;
    double lr, connector_lr, min_lr, warmup_ratio, weight_decay, grad_clip;
    double adam_beta1, adam_beta2, adam_eps;
    int lora_r;
    double lora_alpha;
    char lora_targets[128];
    double lora_dropout;
    int rslora;
    char init_from[CFG_PATH];
    uint64_t seed;
    char out_dir[CFG_PATH];
    int save_every, keep_last, eval_every, log_every;
    char resume[CFG_PATH];
    char device[16];
    char memory_limit[32];
    size_t memory_limit_bytes;  // from memory_limit; 0: auto
    int threads, prefetch;
    char nan_policy[16];
    char zero_stage[8];  // auto | 0 | 1
    double dist_timeout;
    double grad_bucket_mb;  // gradient buckets reduced during the backward; 0: after it
    char dist_init_dir[CFG_PATH];
    int log_samples;
    char eval_data[CFG_PATH];          // benchmark scored during training (eval/bench_file.h); empty: none
    char eval_image_folder[CFG_PATH];
    char eval_task[16];                // auto | mc | vqa | caption
    char eval_mc_score[16];            // generate | likelihood
    int eval_batch_size, eval_max_new_tokens, eval_limit;
} TrainConfig;

extern const CfgKey train_keys[];
extern const int n_train_keys;

// parses the config file and key=value overrides, fills defaults that depend on other keys
// (template from stage), and checks every value; fatal() naming the key otherwise
void train_config_load(TrainConfig *c, const char *path, int argc, char **argv);
// out_dir/config.conf, written atomically
void train_config_save(const TrainConfig *c, const char *path);
void train_config_print(const TrainConfig *c);
// processes launched together (mpirun / srun / torchrun-style environment), 1 when alone
int train_world_size(void);
// zero_stage resolved for a world size: 0 or 1 (auto: 1 when world > 1)
int train_zero_stage(const TrainConfig *c, int world);
