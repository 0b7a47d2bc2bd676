// hf_random.h: writes randomly initialised models as Hugging Face directories (config.json +
// model.safetensors) that transformers loads as they are: the built-in tiny default model and
// the benchmarks' reference-shaped models come from here.
#pragma once
#include <stdint.h>

#include "model/llm.h"
#include "model/vit.h"

// a vision tower of c's family with every layer (config.json, model.safetensors, and the
// family's preprocessor_config.json); weights N(0, 0.02), norms at weight 1, biases 0.
// Returns the parameter count.
int64_t hf_random_vision(const char *dir, const VitConfig *c, uint64_t seed);
// Llama or Qwen2 (c->model_type) decoder; weights N(0, init_std), RMSNorm weights 1, biases 0;
// c->tied decides whether lm_head.weight is written
void hf_random_llm(const char *dir, const LlmConfig *c, float init_std, uint64_t seed);
