// model_dir.h: a trained model ready for generation, read from one of the two directories svlm
// writes:
//
//   export dir  svlm.json  {"vision": "<CLIP vision dir>", "vision_layer": -2, "connector": "ldp",
//                           "image_size": 336, "image_mean": [3], "image_std": [3],
//                           "pad_to_square": true, "template": "chatml", "system": null | "...",
//                           "image_tokens": 144, "llm": "llm"}   (./export writes it: trainer/export.c)
//               llm/       Hugging Face LLM with LoRA merged (config.json, safetensors, tokenizer.json)
//               connector.safetensors   model.mm_projector.*
//   run dir     config.conf            ./train's resolved config (trainer/train_config.h)
//               step_NNNNNNNN/         trainable.safetensors (connector + LoRA, svlm names) and
//                                      state.json; the newest complete one is used, as ./export
//                                      picks it (export_resolve). MODEL_DIR may also name one
//                                      step directory of a run.
//
//   whole model  a Hugging Face directory holding a whole VLM (model/vlm_dir.h: InternVL remote code
//               or native, Idefics3 / SmolVLM, llava-hf) as it ships, or as ./export writes a run
//               trained from one (LoRA merged, svlm_export.json naming the chat format it trained with);
//               the shipped projector, no LoRA; the chat format from svlm_export.json, else the model's own
//
// Relative paths inside svlm.json / config.conf (vision, llm) are looked up relative to the
// model directory first, then to the current directory. Image settings absent from svlm.json (and
// always for a run dir) come from the vision dir's preprocessor_config.json, else the tower's
// processor defaults (CLIP: OpenAI CLIP's mean/std) and the vision config's image_size. Every problem is a one-line fatal() naming the file.
#pragma once
#include "data/image_slot.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "model/vlm.h"
#include "trainer/train_config.h"

#define MODEL_DIR_PATH 1024

// what a model directory says to load (model_dir_resolve): the one place that knows the formats
typedef struct {
    int is_export;                     // 1: export dir, 0: run dir
    int is_whole;                      // a whole-VLM directory: vision_dir = llm_dir = dir (weights: a description)
    char dir[MODEL_DIR_PATH];
    char vision_dir[MODEL_DIR_PATH];
    char llm_dir[MODEL_DIR_PATH];
    char weights[MODEL_DIR_PATH];      // connector.safetensors (export) or step_*/trainable.safetensors
    int vision_layer;
    ConnectorType connector;
    int connector_scale;               // svlm.json / config pixel_shuffle (0: the connector's default)
    LoraConfig lora;                   // r = 0: none (export dirs: merged into llm/)
    TemplateKind template_kind;
    int has_system;                    // 0: the template's default system prompt
    char system[4096];
    int image_size;                    // 0: from the vision dir
    int has_image_norm;                // image_mean / image_std given
    float image_mean[3], image_std[3];
    int pad_to_square;
    int image_tokens;                  // 0: not stated; else checked against the connector
    int max_tiles;                     // svlm.json / config max_tiles (data/tiling.h; 1: one tile)
    char image_format[16];             // svlm.json / config image_format ("": the connector's)
} ModelDirSpec;

void model_dir_resolve(ModelDirSpec *s, const char *dir);
// The model a training config describes (towers, connector, template, system, image aspect, LoRA):
// its vision and llm paths looked up under base, then as given; conf names the file in errors.
void model_dir_spec_from_config(ModelDirSpec *s, const TrainConfig *tc, const char *base, const char *conf);

typedef struct {
    ModelDirSpec spec;
    Vlm vlm;              // gen_model_load's model: max_B 1, max_T 1, max_images 1, inference only
    Vlm *m;               // the model to run: &vlm, or the borrowed one of gen_model_borrow
    Tokenizer *tok;
    Template *tpl;
    int image_size;       // S of the (3, S, S) vision input (prep.size)
    ImagePrep prep;       // the tower's preprocessing, mean / std and pad_to_square from svlm.json
    int stop_ids[2];      // the template's stop token, and the LLM's eos when it differs
    int n_stop;
    ImageSlot slot;       // the image slot's format (data/image_slot.h)
} GenModel;

// Resolves dir and loads everything: vision encoder, connector, LLM (+ LoRA), tokenizer,
// template. system: NULL keeps the model's system prompt, else replaces it ("" for none).
void gen_model_load(GenModel *g, const Kernels *k, const char *dir, const char *system);
// The tokenizer, template and image settings of spec (vision_dir, llm_dir, template_kind,
// system, pad_to_square, image settings) for a model already in memory (./train's eval_data: the
// model being trained), which g->m borrows and gen_model_free leaves alone.
void gen_model_borrow(GenModel *g, Vlm *m, const ModelDirSpec *spec, const char *system);
void gen_model_free(GenModel *g);
// Reads, decodes and preprocesses an image file into pixels (3, S, S); fatal() naming the file
// when it cannot be read, is not a PNG/JPEG, or is corrupt.
void gen_model_image(const GenModel *g, const char *path, float *pixels);
// Encodes a one-turn prompt with the model's template. with_image: "<image>\n" is put before text
// unless text already holds "<image>"; *image_pos gets the slot (-1 without image). Returns the
// token count; *ids is malloc'd.
int gen_model_prompt(const GenModel *g, const char *text, int with_image, int **ids, int *image_pos);
// The same with the image's slot expanded in the ids (its tiles, marker tokens: data/image_slot.h):
// image (a file, or NULL) is read and cut into *n_tiles tiles, *pixels (n_tiles, 3, S, S) and
// *tile_start (each tile's first feature position) malloc'd; the prompt for gen_prefill_tiles
// (a GenPrompt). pixels NULL: the image is read for its grid only. Every slot format works here
// (llava: one unmarked tile at the image's place), so batched generation and ./evaluate take this.
int gen_model_prompt_tiles(const GenModel *g, const char *text, const char *image, int **ids, float **pixels,
                           int **tile_start, int *n_tiles);
// The image file's tiles as gen_model_prompt_tiles cuts them: (*n_tiles, 3, S, S) malloc'd
float *gen_model_image_tiles(const GenModel *g, const char *path, int *n_tiles);

