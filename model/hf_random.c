// hf_random.c: random Hugging Face model directories (see hf_random.h).
#include "model/hf_random.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/rng.h"
#include "common/safetensors.h"
#include "common/util.h"
#include "model/params.h"

static void write_text(const char *dir, const char *name, const char *text) {
    char path[2048];
    path_join(path, sizeof path, dir, name);
    FILE *f = fopen(path, "w");
    if (!f) fatal("%s: cannot create: %s", path, strerror(errno));
    int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (fclose(f) != 0 || !ok) fatal("%s: write failed: %s", path, strerror(errno));
}

// fills a declared host (CPU backend) set: names ending in "norm.weight" / "layernorm.weight"
// style (given by is_norm) get 1, biases 0, the rest N(0, std)
static void fill_and_save(ParamSet *ps, const char *dir, float std, uint64_t seed) {
    Rng rng;
    rng_init(&rng, seed);
    float *x = (float *)ps->data;
    StWriter *w = st_writer_new();
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        const char *n = p->name;
        size_t nl = strlen(n);
        int is_bias = nl > 5 && strcmp(n + nl - 5, ".bias") == 0;
        int is_norm = strstr(n, "norm") != NULL && !is_bias;
        for (size_t j = 0; j < p->numel; j++)
            x[p->offset + j] = is_bias ? 0.0f : is_norm ? 1.0f : std * rng_normal(&rng);
        st_writer_add(w, n, ST_F32, p->ndim, p->shape, x + p->offset);
    }
    st_writer_meta(w, "format", "pt");
    char path[2048], err[2200];
    path_join(path, sizeof path, dir, "model.safetensors");
    if (st_writer_save(w, path, err, sizeof err) != 0) fatal("%s", err);
    st_writer_free(w);
}

int64_t hf_random_vision(const char *dir, const VitConfig *c, uint64_t seed) {
    const VitFamily *fam = vit_family(c->type);
    make_dirs(dir);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "dtype", "float32");
    cJSON_AddNumberToObject(j, "hidden_size", c->hidden);
    cJSON_AddNumberToObject(j, "intermediate_size", c->mlp);
    cJSON_AddNumberToObject(j, "num_hidden_layers", c->layers);
    cJSON_AddNumberToObject(j, "num_attention_heads", c->heads);
    cJSON_AddNumberToObject(j, "image_size", c->image_size);
    cJSON_AddNumberToObject(j, "patch_size", c->patch);
    cJSON_AddNumberToObject(j, "num_channels", 3);
    cJSON_AddNumberToObject(j, "layer_norm_eps", c->eps);
    fam->hf_config(j, c);  // last: a family may replace the generic keys with its own (nanoVLM)
    char *text = cJSON_Print(j);
    write_text(dir, "config.json", text);
    free(text);
    cJSON_Delete(j);
    if (fam->hf_preprocessor) {
        j = cJSON_CreateObject();
        fam->hf_preprocessor(j, c->image_size);
        text = cJSON_Print(j);
        write_text(dir, "preprocessor_config.json", text);
        free(text);
        cJSON_Delete(j);
    }

    ParamSet ps;
    params_init(&ps, kernels_cpu(), 0);
    vit_declare(&ps, c, c->layers);
    if (fam->unused_final_norm) {  // part of the HF model even though svlm never runs it
        params_add(&ps, 1, (int64_t[]){c->hidden}, "%s.weight", fam->unused_final_norm);
        params_add(&ps, 1, (int64_t[]){c->hidden}, "%s.bias", fam->unused_final_norm);
    }
    params_alloc(&ps);
    fill_and_save(&ps, dir, 0.02f, seed);
    int64_t n = 0;
    for (int i = 0; i < ps.n; i++) n += (int64_t)ps.p[i].numel;
    params_free(&ps);
    return n;
}

void hf_random_llm(const char *dir, const LlmConfig *c, float init_std, uint64_t seed) {
    make_dirs(dir);
    int qwen2 = strcmp(c->model_type, "qwen2") == 0;
    CHECK(qwen2 || strcmp(c->model_type, "llama") == 0, "model_type %s", c->model_type);
    CHECK(c->tied == 0 || c->tied == 1, "tied must be decided");
    CHECK(!qwen2 || (c->qkv_bias && !c->o_bias && !c->mlp_bias), "qwen2 has q/k/v biases only");
    cJSON *j = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"));
    cJSON_AddStringToObject(j, "model_type", c->model_type);
    cJSON_AddStringToObject(j, "dtype", "float32");
    cJSON_AddStringToObject(j, "hidden_act", "silu");
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab);
    cJSON_AddNumberToObject(j, "hidden_size", c->hidden);
    cJSON_AddNumberToObject(j, "intermediate_size", c->mlp);
    cJSON_AddNumberToObject(j, "num_hidden_layers", c->layers);
    cJSON_AddNumberToObject(j, "num_attention_heads", c->heads);
    cJSON_AddNumberToObject(j, "num_key_value_heads", c->kv_heads);
    cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_pos);
    cJSON_AddNumberToObject(j, "rms_norm_eps", c->eps);
    cJSON_AddNumberToObject(j, "rope_theta", c->rope_theta);  // transformers 4 and 5 both read it
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tied);
    cJSON_AddNumberToObject(j, "initializer_range", init_std);
    if (!qwen2) {
        CHECK(c->qkv_bias == c->o_bias, "llama biases come together");
        cJSON_AddBoolToObject(j, "attention_bias", c->qkv_bias);
        cJSON_AddBoolToObject(j, "mlp_bias", c->mlp_bias);
    }
    if (c->bos_id >= 0) cJSON_AddNumberToObject(j, "bos_token_id", c->bos_id);
    if (c->eos_id >= 0) cJSON_AddNumberToObject(j, "eos_token_id", c->eos_id);
    char *text = cJSON_Print(j);
    write_text(dir, "config.json", text);
    free(text);
    cJSON_Delete(j);

    ParamSet ps;
    params_init(&ps, kernels_cpu(), 0);
    int *idx = xmalloc((size_t)c->layers * LLM_LAYER_TENSORS * sizeof(int));
    llm_declare(&ps, c, idx);
    free(idx);
    params_alloc(&ps);
    fill_and_save(&ps, dir, init_std, seed);
    params_free(&ps);
}
