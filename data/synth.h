// synth.h: the built-in synthetic dataset and tiny models, so that svlm trains, exports and
// generates end to end (`make demo`) for a user with no model and no data.
//
// Everything is a pure function of the seed: the same seed writes the same bytes.
//
// Images: S x S RGB (S = SYNTH_IMAGE_SIZE) of 1-3 objects of one shape (circle, square,
// triangle, star, cross) and one colour (red, green, blue, yellow, purple, orange, white, black)
// on a grey background, placed on the left / right / at the top / bottom / in the centre (several
// objects lie in a column on the left or right, in a row at the top or bottom, side by side or in
// a triangle in the centre), anti-aliased by 4x4 supersampling. Every fourth image is a JPEG
// (quality 92, 4:4:4), the rest PNG, so both decoders are exercised.
//
// Texts (every word of them is one token of the tokenizer written here):
//   stage 1 caption       "two red circles on the left"
//   stage 2 conversation  "<image>\nWhat colour is the square?" -> "The square is blue.", with
//                         questions on colour, count (also of absent shapes: "There are no
//                         stars."), position, shape and a description; 40% have a second round;
//                         about 5% are text-only ("How many sides does a triangle have?").
//
// Layout written by synth_run (OUT = the output directory):
//   OUT/data/images/img_NNNNN.{png,jpg}   training images (stage 1 and stage 2 share them)
//   OUT/data/images/val_NNNNN.{png,jpg}   validation images (never in training)
//   OUT/data/stage1_{train,val}.json      LLaVA JSON, captions (plain template)
//   OUT/data/stage2_{train,val}.json      LLaVA JSON, conversations (chatml template)
//   OUT/data/heldout_K.png, heldout.json  images for generation with their true answers
//   OUT/data/bench_mc.jsonl, bench_vqa.jsonl  held-out benchmarks for ./evaluate (images
//                                         images/bench_NNNNN.*, never in training): per image one
//                                         multiple-choice question (colour, count, position or
//                                         shape in turn; four answer sentences as options, one
//                                         right) and one VQA question of the next kind with its
//                                         answer sentence as the reference; "category" is the kind
//   OUT/models/vision/                    CLIPVisionModel (config.json, model.safetensors,
//                                         preprocessor_config.json): 64x64 images, patch 8 (an
//                                         8x8 grid: 16 tokens after ldp), 128 wide, 2 layers
//   OUT/models/llm/                       Qwen2ForCausalLM (config.json, model.safetensors,
//                                         tokenizer.json, tokenizer_config.json): 128 wide,
//                                         2 layers, 4 heads / 2 KV heads, MLP 384, tied
//                                         embeddings; eos and the chatml stop token are both
//                                         <|im_end|>
// The sizes were chosen so that configs/tiny_stage{1,2}.conf train in well under a minute each
// on a 2-core CPU with the validation loss falling 55-60% (stage 1) and 90-95% (stage 2).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "model/llm.h"
#include "model/vit.h"

#define SYNTH_IMAGE_SIZE 64
#define SYNTH_MAX_OBJECTS 3

enum { SHAPE_CIRCLE, SHAPE_SQUARE, SHAPE_TRIANGLE, SHAPE_STAR, SHAPE_CROSS, SYNTH_N_SHAPES };
enum { COL_RED, COL_GREEN, COL_BLUE, COL_YELLOW, COL_PURPLE, COL_ORANGE, COL_WHITE, COL_BLACK, SYNTH_N_COLOURS };
enum { POS_LEFT, POS_RIGHT, POS_TOP, POS_BOTTOM, POS_CENTRE, SYNTH_N_POSITIONS };

extern const char *const synth_shape_names[SYNTH_N_SHAPES];   // "circle", ...
extern const char *const synth_shape_plurals[SYNTH_N_SHAPES]; // "circles", ... "crosses"
extern const char *const synth_colour_names[SYNTH_N_COLOURS]; // "red", ...
extern const uint8_t synth_colour_rgb[SYNTH_N_COLOURS][3];    // nominal colour (drawn within +-12)
extern const char *const synth_position_phrases[SYNTH_N_POSITIONS];  // "on the left", ...

typedef struct {
    int shape, colour, count, position;
    float cx[SYNTH_MAX_OBJECTS], cy[SYNTH_MAX_OBJECTS];  // object centres, pixels
    float radius;                                        // outer radius of each object
    uint8_t rgb[3];                                      // drawn object colour
    uint8_t bg[3];                                       // background colour
} SynthScene;

// which set a scene belongs to (each has its own random streams)
enum { SYNTH_SPLIT_TRAIN, SYNTH_SPLIT_VAL, SYNTH_SPLIT_HELDOUT, SYNTH_SPLIT_BENCH };

// the scene of image `index` of a split, from the seed alone
void synth_scene(SynthScene *s, uint64_t seed, int split, int index);
// 1 when (dx, dy) from an object's centre (its centroid) lies inside the shape drawn with outer
// radius r: circle of radius r, square of half-side 0.85 r, cross of arms 0.95 r long and 0.38 r
// half-wide, upward equilateral triangle and five-pointed star (inner radius 0.45) both of
// circumradius 1.2 r
int synth_shape_contains(int shape, float dx, float dy, float r);
// renders into rgb (S * S * 3 bytes), 4x4 supersampled coverage blended over the background
void synth_render(const SynthScene *s, uint8_t *rgb);
// caption into buf ("a red circle on the left", "three blue stars in the centre")
void synth_caption(const SynthScene *s, char *buf, size_t cap);

// The words of every synthetic text (each encodes to one token, with or without a leading
// space); *n gets the count.
const char *const *synth_words(int *n);

// Writes a byte-level BPE tokenizer.json whose merges build every synth word (with and without
// its leading space) into one token; special tokens <|endoftext|>, <|im_start|>, <|im_end|>
// follow the model vocabulary. Returns the vocabulary size (ids in use). fatal() on I/O errors.
int synth_write_tokenizer(const char *path);

// the demo models' sizes (vocab: the tokenizer's size); the vision tower is CLIP, and
// synth_vision_family makes it another family's at the same sizes
void synth_model_configs(VitConfig *vision, LlmConfig *llm, int vocab);
void synth_vision_family(VitConfig *vision, VitType type);
// init std of the LLM's weights: 1/sqrt(hidden), so that the frozen tied embeddings can give
// confident logits (with 0.02 a 128-wide model could never push a token above ~2 nats)
float synth_llm_init_std(const LlmConfig *llm);

typedef struct {
    const char *out_dir;
    uint64_t seed;
    int n_train, n_val, n_heldout;
    int n_bench;  // images of the held-out benchmarks (0: none written)
    int quiet;  // no summary line
    const char *vision;  // the vision tower's family (vit_family_parse); NULL: clip
} SynthSpec;

void synth_spec_defaults(SynthSpec *s);  // seed 3, 4000 train, 200 val, 4 held out, 200 benchmark

typedef struct {
    int n_train, n_val, n_heldout, n_jpeg, n_bench;
    int n_stage2_text_only;
    int vocab;                      // tokenizer size = LLM vocab
    int n_words;
    int64_t vision_params, llm_params;
    const char *vision_title;  // the tower's family as people write it ("CLIP")
    double seconds;
} SynthSummary;

// Writes everything listed at the top (directories are created, files rewritten).
void synth_run(const SynthSpec *spec, SynthSummary *sum);
