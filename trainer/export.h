// export.h: a run's checkpoint as files other tools load:
//   llm/                    the base LLM directory with LoRA merged into its weights (each tensor
//                           in its own dtype), config.json and tokenizer files copied: transformers
//                           loads it as it is
//   adapter/                peft's adapter_model.safetensors + adapter_config.json (stage 2)
//   connector.safetensors   the connector, fp32, model.mm_projector.* names
//   svlm.json               vision tower, connector, image settings, template: what ./generate needs
// Written to OUT.tmp and renamed when complete.
#pragma once

// src: a run directory (its newest checkpoint) or a step_NNNNNNNN directory of one
void export_run(const char *src, const char *out_dir);
// the step directory and run directory src names; fatal() when it is neither
void export_resolve(const char *src, char *step_dir, char *run_dir, int cap);
