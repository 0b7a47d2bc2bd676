// hf.h: reading Hugging Face model directories as they are: config.json, model.safetensors or a
// sharded model.safetensors.index.json, tensors converted to fp32 on the host by name.
#pragma once
#include <stdint.h>

#include "common/safetensors.h"

typedef struct {
    char dir[1024];
    int n_files;
    StFile *files;
    // every tensor name of every file, sorted, with the file that holds it
    int n;
    const StTensor **tensors;
    int *file_of;
} HfWeights;

// opens dir/model.safetensors, or every shard listed in dir/model.safetensors.index.json, or
// a single file when dir is a .safetensors path; fatal() with the file and reason on any problem
void hf_weights_open(HfWeights *w, const char *dir);
void hf_weights_close(HfWeights *w);
// NULL when absent; *file set to the file holding it
const StTensor *hf_weights_find(const HfWeights *w, const char *name, const StFile **file);
// reads tensor `name` into dst as fp32 after checking its shape against (ndim, shape):
// fatal() naming the file and tensor when it is missing or its shape differs; dst NULL: the
// checks only (the memory plan's dry run)
void hf_weights_read(const HfWeights *w, const char *name, int ndim, const int64_t *shape, float *dst);
// the first tensor name ending in suffix, or NULL (finds prefixes such as "vision_model.")
const char *hf_weights_find_suffix(const HfWeights *w, const char *suffix);
