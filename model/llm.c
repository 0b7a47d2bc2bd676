// llm.c: Llama-family decoder with LoRA: config, loading, forward, loss and backward (see llm.h).
#include "model/llm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/rng.h"
#include "common/util.h"
#include "model/vlm_dir.h"

const char *const proj_names[N_PROJ] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
// the groups of llm.h: first member and count
static const int group_first[N_GROUPS] = {PROJ_Q, PROJ_O, PROJ_GATE, PROJ_DOWN};
static const int group_n[N_GROUPS] = {3, 1, 2, 1};

static int first_id(const cJSON *root, const char *key, const char *path) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsArray(j)) j = cJSON_GetArrayItem(j, 0);
    if (!j || cJSON_IsNull(j)) return -1;
    int64_t v;
    if (!json_is_i64(j, 0, INT32_MAX, &v)) fatal("%s: key \"%s\" must be a token id (an integer >= 0)", path, key);
    return (int)v;
}

void llm_config_load(LlmConfig *c, const char *dir) {
    memset(c, 0, sizeof *c);
    char file_path[2048];
    if (!dir_exists(dir)) fatal("%s: language model directory not found", dir);
    path_join(file_path, sizeof file_path, dir, "config.json");
    const char *path = file_path;
    if (!file_exists(path)) fatal("%s: missing (language model directory needs a config.json)", path);
    cJSON *file = json_load_file(path);
    // a whole vision-language model (model/vlm_dir.h): its text sub-config, and the tying its
    // model class applies; the keys below are read from that object
    int vlm_tied = -1;
    const char *def_type = NULL;
    const cJSON *sub = vlm_dir_text_config(file, path, &vlm_tied, &def_type);
    const cJSON *root = sub ? sub : file;
    char where[2100];
    snprintf(where, sizeof where, "%s%s", path, sub ? " (the language model's sub-config)" : "");
    path = where;
    const char *mt = def_type ? json_get_str_opt(root, "model_type", def_type, path) : json_get_str(root, "model_type", path);
    snprintf(c->model_type, sizeof c->model_type, "%s", mt);
    int is_qwen2 = strcmp(mt, "qwen2") == 0, is_llama = strcmp(mt, "llama") == 0, is_mistral = strcmp(mt, "mistral") == 0;
    if (!is_qwen2 && !is_llama && !is_mistral)
        fatal("%s: model_type \"%s\" is not supported (llama, qwen2, mistral)", path, mt);
    c->vocab = json_get_int(root, "vocab_size", path);
    c->hidden = json_get_int(root, "hidden_size", path);
    c->layers = json_get_int(root, "num_hidden_layers", path);
    c->heads = json_get_int(root, "num_attention_heads", path);
    c->kv_heads = json_get_int_opt(root, "num_key_value_heads", c->heads, path);
    c->mlp = json_get_int(root, "intermediate_size", path);
    c->max_pos = json_get_int_opt(root, "max_position_embeddings", 2048, path);
    double eps = json_get_num_opt(root, "rms_norm_eps", 1e-6, path);
    if (!(eps > 0 && eps < 1)) fatal("%s: key \"rms_norm_eps\" must be in (0, 1), got %g", path, eps);
    c->eps = (float)eps;
    if (c->hidden <= 0 || c->layers <= 0 || c->heads <= 0 || c->kv_heads <= 0 || c->mlp <= 0 || c->vocab <= 0)
        fatal("%s: sizes must be positive", path);
    if (c->heads % c->kv_heads)
        fatal("%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, c->heads, c->kv_heads);
    if (!cJSON_GetObjectItemCaseSensitive(root, "head_dim") && c->hidden % c->heads)
        fatal("%s: hidden_size %d is not a multiple of num_attention_heads %d and head_dim is not given", path,
              c->hidden, c->heads);
    c->head_dim = json_get_int_opt(root, "head_dim", c->hidden / c->heads, path);
    if (c->head_dim <= 0 || c->head_dim % 2) fatal("%s: head_dim %d must be even and positive", path, c->head_dim);
    const char *act = json_get_str_opt(root, "hidden_act", "silu", path);
    if (strcmp(act, "silu") != 0) fatal("%s: hidden_act \"%s\" is not supported (silu)", path, act);

    // RoPE: transformers 5 keeps rope_theta in rope_parameters, older files at the top level
    double theta = json_get_num_opt(root, "rope_theta", 10000.0, path);
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    const cJSON *rope_objs[2] = {rp, rs};
    for (int i = 0; i < 2; i++) {
        const cJSON *o = rope_objs[i];
        if (!o || cJSON_IsNull(o)) continue;
        if (!cJSON_IsObject(o)) fatal("%s: \"%s\" must be an object", path, i ? "rope_scaling" : "rope_parameters");
        theta = json_get_num_opt(o, "rope_theta", theta, path);
        const char *type = json_get_str_opt(o, "rope_type", json_get_str_opt(o, "type", "default", path), path);
        // dynamic NTK scaling changes the frequencies only past max_position_embeddings
        // (transformers' _compute_dynamic_ntk_parameters takes max(seq_len, max_pos)): within it,
        // the default embedding; llm_setup and the KV cache refuse anything longer
        if (!strcmp(type, "dynamic")) c->rope_dynamic = 1;
        else if (strcmp(type, "default") != 0)
            fatal("%s: RoPE type \"%s\" is not supported (only the default rotary embedding, and \"dynamic\" within "
                  "max_position_embeddings)", path, type);
    }
    if (!(theta > 0 && theta < 1e30)) fatal("%s: key \"rope_theta\" must be in (0, 1e30), got %g", path, theta);
    c->rope_theta = (float)theta;

    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (cJSON_IsArray(lt))
        for (const cJSON *e = lt->child; e; e = e->next)
            if (!cJSON_IsString(e) || strcmp(e->valuestring, "full_attention") != 0)
                fatal("%s: layer_types holds \"%s\": only full attention is supported", path,
                      cJSON_IsString(e) ? e->valuestring : "?");
    if (is_mistral) c->sliding_window = json_get_int_opt(root, "sliding_window", 0, path);
    if (is_qwen2) {  // Qwen2Attention: bias on q, k, v only
        c->qkv_bias = 1;
        if (json_get_bool_opt(root, "use_sliding_window", 0, path))
            fatal("%s: use_sliding_window = true is not supported", path);
    } else if (is_llama) {
        c->qkv_bias = c->o_bias = json_get_bool_opt(root, "attention_bias", 0, path);
        c->mlp_bias = json_get_bool_opt(root, "mlp_bias", 0, path);
    }
    c->tied = sub ? vlm_tied : json_get_bool_opt(root, "tie_word_embeddings", -1, path);  // -1: decided by the files
    c->bos_id = first_id(root, "bos_token_id", path);
    c->eos_id = first_id(root, "eos_token_id", path);
    if (sub && c->eos_id < 0) c->eos_id = first_id(file, "eos_token_id", path);  // some keep it at the top
    cJSON_Delete(file);
}

int llm_declare(ParamSet *w, const LlmConfig *c, int *idx) {
    int C = c->hidden, I = c->mlp, QD = c->heads * c->head_dim, KD = c->kv_heads * c->head_dim;
    params_add(w, 2, (int64_t[]){c->vocab, C}, "model.embed_tokens.weight");
    params_add(w, 1, (int64_t[]){C}, "model.norm.weight");
    int i_head = c->tied ? -1 : params_add(w, 2, (int64_t[]){c->vocab, C}, "lm_head.weight");
    const int outs[N_PROJ] = {QD, KD, KD, C, I, I, C}, ins[N_PROJ] = {C, C, C, QD, C, C, I};
    const int bias[N_PROJ] = {c->qkv_bias, c->qkv_bias, c->qkv_bias, c->o_bias, c->mlp_bias, c->mlp_bias, c->mlp_bias};
    for (int l = 0; l < c->layers; l++) {
        int *li = idx + l * LLM_LAYER_TENSORS;
        li[0] = params_add(w, 1, (int64_t[]){C}, "model.layers.%d.input_layernorm.weight", l);
        li[1] = params_add(w, 1, (int64_t[]){C}, "model.layers.%d.post_attention_layernorm.weight", l);
        // a group's weights one after another, then its biases: each run is one matrix (llm.h)
        for (int g = 0; g < N_GROUPS; g++) {
            for (int p = group_first[g]; p < group_first[g] + group_n[g]; p++) {
                const char *grp = p <= PROJ_O ? "self_attn" : "mlp";
                if (p > group_first[g]) params_join_next(w);
                li[2 + 2 * p] = params_add(w, 2, (int64_t[]){outs[p], ins[p]}, "model.layers.%d.%s.%s.weight", l, grp, proj_names[p]);
            }
            for (int p = group_first[g]; p < group_first[g] + group_n[g]; p++) {
                const char *grp = p <= PROJ_O ? "self_attn" : "mlp";
                if (!bias[p]) {
                    li[3 + 2 * p] = -1;
                    continue;
                }
                if (p > group_first[g]) params_join_next(w);
                li[3 + 2 * p] = params_add(w, 1, (int64_t[]){outs[p]}, "model.layers.%d.%s.%s.bias", l, grp, proj_names[p]);
            }
        }
    }
    return i_head;
}

void llm_load(Llm *m, const Kernels *k, const char *dir, const LoraConfig *lora, ParamSet *train) {
    memset(m, 0, sizeof *m);
    m->k = k;
    m->train = train;
    llm_config_load(&m->cfg, dir);
    LlmConfig *c = &m->cfg;
    if (lora && lora->r > 0) {
        m->lora = *lora;
        m->lora_scale = lora_scaling(lora);
    }
    HfWeights hw;
    hf_weights_open(&hw, dir);
    // the decoder's names: "model." + rest in an LLM directory; a whole-VLM directory keeps them
    // under its own prefix (language_model.model., model.language_model., model.text_model.),
    // found by the embedding's name, and its head as (language_model.)lm_head.weight
    const char *emb = hf_weights_find_suffix(&hw, "embed_tokens.weight");
    if (!emb) fatal("%s: no tensor ending in embed_tokens.weight: not a language model", dir);
    char body[256], head[256] = "lm_head.weight";
    size_t blen = strlen(emb) - strlen("embed_tokens.weight");
    if (blen >= sizeof body) fatal("%s: tensor name prefix too long", dir);
    memcpy(body, emb, blen);
    body[blen] = 0;
    const char *head_name = hf_weights_find(&hw, head, NULL) ? head : hf_weights_find_suffix(&hw, ".lm_head.weight");
    if (head_name && head_name != head) snprintf(head, sizeof head, "%s", head_name);
    // tied when config.json says so (transformers then ignores any lm_head.weight), and when it
    // is silent and the files hold no lm_head
    int has_head = head_name != NULL;
    if (c->tied < 0) c->tied = !has_head;
    if (!c->tied && !has_head) fatal("%s: tie_word_embeddings is false but the weights have no lm_head.weight", dir);

    ParamSet *w = &m->w;
    params_init(w, k, 0);
    int *idx = xmalloc((size_t)c->layers * LLM_LAYER_TENSORS * sizeof(int));
    int i_head = llm_declare(w, c, idx);
    params_alloc(w);
    const ParamRename names[2] = {{"model.", body}, {"lm_head.weight", head}};
    params_load_hf_renamed(w, &hw, names, 2);
    hf_weights_close(&hw);

    int C = c->hidden, I = c->mlp, QD = c->heads * c->head_dim, KD = c->kv_heads * c->head_dim;
    const int outs[N_PROJ] = {QD, KD, KD, C, I, I, C}, ins[N_PROJ] = {C, C, C, QD, C, C, I};
    m->embed = params_act(w, 0);  // the order of llm_declare
    m->norm = params_act(w, 1);
    m->lm_head = c->tied ? m->embed : params_act(w, i_head);
    m->layer = xcalloc(c->layers, sizeof(LlmLayer));
    if (train) params_declare_group(train, PARAM_GROUP_LORA);  // the adapters declared below
    for (int l = 0; l < c->layers; l++) {
        int *li = idx + l * LLM_LAYER_TENSORS;
        LlmLayer *L = &m->layer[l];
        L->ln1 = params_act(w, li[0]);
        L->ln2 = params_act(w, li[1]);
        for (int g = 0; g < N_GROUPS; g++) {
            LlmGroup *G = &L->g[g];
            G->first = group_first[g];
            G->n = group_n[g];
            G->in = ins[G->first];
            G->w = params_act(w, li[2 + 2 * G->first]);
            G->b = li[3 + 2 * G->first] >= 0 ? params_act(w, li[3 + 2 * G->first]) : NULL;
            G->a_first = -1;
            for (int p = G->first; p < G->first + G->n; p++) {
                LlmProj *pr = &L->p[p];
                pr->w = params_act(w, li[2 + 2 * p]);
                pr->b = li[3 + 2 * p] >= 0 ? params_act(w, li[3 + 2 * p]) : NULL;
                pr->out = outs[p];
                pr->in = ins[p];
                pr->col = G->out;
                pr->a = pr->bb = pr->hcol = -1;
                G->out += outs[p];
                // llm_declare stacked the group's weights and biases (a bias for all or none)
                CHECK(p == G->first || (params_consecutive(w, li[2 + 2 * (p - 1)], li[2 + 2 * p]) &&
                                        (pr->b != NULL) == (G->b != NULL) &&
                                        (!pr->b || params_consecutive(w, li[3 + 2 * (p - 1)], li[3 + 2 * p]))),
                      "llm: %s is not stacked after %s", proj_names[p], proj_names[p - 1]);
            }
            if (!(m->lora.r > 0)) continue;
            // LoRA: the group's A's one after another (x @ [A_1; A_2]^T is one GEMM), then its B's
            int r = m->lora.r;
            for (int p = G->first; p < G->first + G->n; p++) {
                LlmProj *pr = &L->p[p];
                if (!(m->lora.targets & (1u << p))) continue;
                const char *grp = p <= PROJ_O ? "self_attn" : "mlp";
                if (G->lora_n) params_join_next(train);
                pr->a = params_add(train, 2, (int64_t[]){r, ins[p]}, "model.layers.%d.%s.%s.lora_A.weight", l, grp, proj_names[p]);
                pr->hcol = G->lora_n * r;
                if (!G->lora_n) G->a_first = pr->a;
                G->lora_n++;
            }
            for (int p = G->first; p < G->first + G->n; p++) {
                LlmProj *pr = &L->p[p];
                if (pr->a < 0) continue;
                const char *grp = p <= PROJ_O ? "self_attn" : "mlp";
                pr->bb = params_add(train, 2, (int64_t[]){outs[p], r}, "model.layers.%d.%s.%s.lora_B.weight", l, grp, proj_names[p]);
            }
        }
    }
    if (train) params_declare_group(train, PARAM_GROUP_FROZEN);
    free(idx);
}

void llm_setup(Llm *m, int max_B, int max_T) {
    const Kernels *k = m->k;
    const LlmConfig *c = &m->cfg;
    if (c->rope_dynamic && max_T > c->max_pos)
        fatal("max_seq_len %d is longer than max_position_embeddings %d, past which this model's dynamic RoPE "
              "rescales its frequencies (svlm runs the default rotary embedding: set max_seq_len <= %d)", max_T,
              c->max_pos, c->max_pos);
    m->max_B = max_B;
    m->max_T = max_T;
    size_t N = (size_t)max_B * max_T, ab = k->act_bytes;
    size_t C = c->hidden, I = c->mlp, QD = (size_t)c->heads * c->head_dim, KD = (size_t)c->kv_heads * c->head_dim;
    size_t r = m->lora.r;
    m->acts = xcalloc(c->layers, sizeof(LlmActs));
    for (int l = 0; l < c->layers; l++) {
        LlmActs *a = &m->acts[l];
        a->x = k->alloc(N * C * ab);
        a->ln1 = k->alloc(N * C * ab);
        a->rstd1 = k->alloc(N * sizeof(float));
        a->qkv = NULL;  // the shared scratch, set below
        a->q = k->alloc(N * QD * ab);
        a->k = k->alloc(N * KD * ab);
        a->v = k->alloc(N * KD * ab);
        a->att = k->alloc(N * QD * ab);
        a->lse = k->alloc(N * c->heads * sizeof(float));
        a->xmid = k->alloc(N * C * ab);
        a->ln2 = k->alloc(N * C * ab);
        a->rstd2 = k->alloc(N * sizeof(float));
        a->gu = k->alloc(N * 2 * I * ab);
        // the SwiGLU product, kept for the backward instead of recomputed there: N x mlp per
        // layer in the plan (Qwen2-0.5B at 16 x 752 rows: 117 MB a layer, 2.8 GB in all) for a
        // launch and three passes over that size per layer less
        a->act = k->alloc(N * I * ab);
        for (int g = 0; g < N_GROUPS; g++)
            if (m->layer[l].g[g].lora_n) a->lora_h[g] = k->alloc(N * m->layer[l].g[g].lora_n * r * ab);
    }
    size_t QKV = QD + 2 * KD;
    m->qkv = m->dact = k->alloc(N * (QKV > I ? QKV : I) * ab);
    m->qkv_pad = k->alloc(N * QKV * ab);
    m->att_rows = k->alloc(N * QD * ab);
    m->x_keep = k->alloc(N * C * ab);
    for (int l = 0; l < c->layers; l++) m->acts[l].qkv = m->qkv;
    m->x_out = k->alloc(N * C * ab);
    m->lnf = k->alloc(N * C * ab);
    m->rstdf = k->alloc(N * sizeof(float));
    m->dx = k->alloc(N * C * ab);
    m->dln = k->alloc(N * C * ab);
    m->dq = k->alloc(N * QD * ab);
    m->dk = k->alloc(N * KD * ab);
    m->dv = k->alloc(N * KD * ab);
    m->datt = k->alloc(N * QD * ab);
    m->dh = k->alloc(N * (r ? 3 * r : 1) * ab);
    if (m->lora.dropout > 0) {  // the dropped LoRA input and its gradient, for the widest input
        size_t widest = C > QD ? C : QD;
        if (I > widest) widest = I;
        m->xdrop = k->alloc(N * widest * ab);
        m->dxdrop = k->alloc(N * widest * ab);
    }
    m->hid = k->alloc(N * C * ab);
    m->dhid = k->alloc(N * C * ab);
    m->logits = k->alloc((size_t)k->xent_chunk_rows * c->vocab * ab);
    m->losses = k->alloc(N * sizeof(float));
}

void llm_free(Llm *m) {
    const Kernels *k = m->k;
    if (m->acts) {
        for (int l = 0; l < m->cfg.layers; l++) {
            LlmActs *a = &m->acts[l];
            void *bufs[] = {a->x, a->ln1, a->rstd1, a->q, a->k, a->v, a->att, a->lse, a->xmid, a->ln2, a->rstd2, a->gu, a->act};
            for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) k->free(bufs[i]);
            for (int g = 0; g < N_GROUPS; g++)
                if (a->lora_h[g]) k->free(a->lora_h[g]);
        }
        void *bufs[] = {m->x_out, m->lnf, m->rstdf, m->dx, m->dln, m->dq, m->dk, m->dv, m->datt, m->qkv,
                        m->qkv_pad, m->att_rows, m->x_keep, m->dh, m->hid, m->dhid, m->logits, m->losses, m->xdrop, m->dxdrop};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            if (bufs[i]) k->free(bufs[i]);
        free(m->acts);
    }
    params_free(&m->w);
    free(m->layer);
    memset(m, 0, sizeof *m);
}

void llm_lora_init(Llm *m, uint64_t seed) {
    Rng rng;
    rng_init(&rng, seed);
    for (int l = 0; l < m->cfg.layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            const LlmProj *pr = &m->layer[l].p[p];
            if (pr->a < 0) continue;
            size_t na = m->train->p[pr->a].numel, nb = m->train->p[pr->bb].numel;
            float *host = xmalloc((na > nb ? na : nb) * sizeof(float));
            float bound = 1.0f / sqrtf((float)pr->in);
            for (size_t i = 0; i < na; i++) host[i] = (2.0f * rng_uniform(&rng) - 1.0f) * bound;
            params_upload(m->train, pr->a, host);
            memset(host, 0, nb * sizeof(float));
            params_upload(m->train, pr->bb, host);
            free(host);
        }
}

void llm_embed(Llm *m, act_t *x0, const int *ids, int N) {
    m->k->embedding_forward(x0, ids, m->embed, N, m->cfg.hidden, m->cfg.vocab);
}

// the dropout seed of one LoRA input: its own mask per (micro-batch, layer, projection), as peft
// has one nn.Dropout per adapted Linear
static uint64_t lora_seed(const Llm *m, int layer, int proj) {
    return m->dropout_seed ^ ((uint64_t)(layer * N_PROJ + proj + 1) * 0xd1b54a32d192ed03ULL);
}

static int dropout_on(const Llm *m) { return m->training && m->lora.dropout > 0.0f; }

// A group's projections (llm.h) in one GEMM: out (N, g->out) = inp @ [W_1; W_2; ..]^T + b, then
// each LoRA member's scale * (dropout(inp) @ A^T) @ B^T added into its columns. h (N, lora_n * r)
// keeps the LoRA hiddens side by side for dB: x @ [A_1; A_2; ..]^T is one GEMM too, except with
// dropout, where each member has its own mask (peft: one nn.Dropout per adapted Linear).
static void group_forward(const Llm *m, int l, const LlmGroup *g, act_t *out, const act_t *inp, act_t *h, int N) {
    const Kernels *k = m->k;
    const LlmProj *P = m->layer[l].p;
    k->matmul_forward(out, inp, g->w, g->b, N, g->in, g->out, 1.0f, 0);
    if (!g->lora_n) return;
    int r = m->lora.r, R = g->lora_n * r;
    if (!dropout_on(m)) {
        k->matmul_forward(h, inp, params_act(m->train, g->a_first), NULL, N, g->in, R, 1.0f, 0);
    } else {
        for (int p = g->first; p < g->first + g->n; p++) {
            if (P[p].a < 0) continue;  // peft: lora_B(lora_A(dropout(x))) * scaling
            k->dropout(m->xdrop, inp, (size_t)N * g->in, m->lora.dropout, lora_seed(m, l, p));
            k->matmul_forward_ld(act_at(k, h, P[p].hcol), m->xdrop, params_act(m->train, P[p].a), NULL, N, g->in, r,
                                 1.0f, 0, R, g->in);
        }
    }
    for (int p = g->first; p < g->first + g->n; p++)
        if (P[p].a >= 0)
            k->matmul_forward_ld(act_at(k, out, P[p].col), act_at(k, h, P[p].hcol), params_act(m->train, P[p].bb), NULL,
                                 N, r, P[p].out, m->lora_scale, 1, g->out, R);
}

// dinp (N, g->in) (+=, or = when `first`: the buffer's first writer, so nobody clears it before)
// from dout (N, g->out) through the stacked frozen weights (one GEMM, K = g->out) and the LoRA
// path; LoRA grads (+=). With dropout the masks are regenerated from their seeds, not stored.
static void group_backward(const Llm *m, int l, const LlmGroup *g, act_t *dinp, int first, const act_t *dout,
                           const act_t *inp, const act_t *h, int N) {
    const Kernels *k = m->k;
    const LlmProj *P = m->layer[l].p;
    (first ? k->matmul_backward_set : k->matmul_backward)(dinp, NULL, NULL, dout, inp, g->w, N, g->in, g->out, 1.0f);
    if (!g->lora_n) return;
    int r = m->lora.r, R = g->lora_n * r;
    // each member: its columns of dh = scale * dout[:, cols] @ B, and dB += scale * dout[:, cols]^T @ h[:, its cols]
    for (int p = g->first; p < g->first + g->n; p++)
        if (P[p].a >= 0)
            k->matmul_backward_ld(act_at(k, m->dh, P[p].hcol), params_grad(m->train, P[p].bb), NULL,
                                  act_at(k, dout, P[p].col), act_at(k, h, P[p].hcol), params_act(m->train, P[p].bb), N, r,
                                  P[p].out, m->lora_scale, 1, g->out, R);
    if (!dropout_on(m)) {  // the A's stacked: dA and dinp one GEMM each
        k->matmul_backward(dinp, params_grad(m->train, g->a_first), NULL, m->dh, inp, params_act(m->train, g->a_first),
                           N, g->in, R, 1.0f);
        return;
    }
    size_t nx = (size_t)N * g->in;
    for (int p = g->first; p < g->first + g->n; p++) {
        if (P[p].a < 0) continue;
        uint64_t seed = lora_seed(m, l, p);
        k->dropout(m->xdrop, inp, nx, m->lora.dropout, seed);
        k->matmul_backward_ld(m->dxdrop, params_grad(m->train, P[p].a), NULL, act_at(k, m->dh, P[p].hcol), m->xdrop,
                              params_act(m->train, P[p].a), N, g->in, r, 1.0f, 1, R, g->in);
        k->dropout(m->dxdrop, m->dxdrop, nx, m->lora.dropout, seed);
        k->add(dinp, dinp, m->dxdrop, nx);
    }
}

// Attention of the layer: over the block's own rows, or over the KV cache after writing the
// spans' keys and values into it (each span attends to its own slot up to its last position)
static void attend(const Llm *m, int l, LlmActs *a, const LlmAttend *at) {
    const Kernels *k = m->k;
    const LlmConfig *c = &m->cfg;
    int NH = c->heads, NKV = c->kv_heads, HD = c->head_dim;
    if (!at->cache) {
        k->attention_forward(a->att, a->lse, a->q, a->k, a->v, at->seg, at->B, at->T, NH, NKV, HD, 1);
        return;
    }
    const LlmKvCache *kv = at->cache;
    size_t ab = k->act_bytes, KD = (size_t)NKV * HD, QD = (size_t)NH * HD, slot_rows = (size_t)kv->cap * KD;
    size_t row = 0;
    for (int s = 0; s < at->n_spans; s++) {
        const LlmSpan *sp = &at->spans[s];
        CHECK(sp->slot >= 0 && sp->slot < kv->slots && sp->start >= 0 && sp->n >= 1 && sp->start + sp->n <= kv->cap,
              "attend: span of %d rows at %d in slot %d (cache %d x %d)", sp->n, sp->start, sp->slot, kv->slots, kv->cap);
        act_t *kc = act_at(k, kv->k[l], (size_t)sp->slot * slot_rows), *vc = act_at(k, kv->v[l], (size_t)sp->slot * slot_rows);
        k->copy(act_at(k, kc, (size_t)sp->start * KD), act_at(k, a->k, row * KD), (size_t)sp->n * KD * ab);
        k->copy(act_at(k, vc, (size_t)sp->start * KD), act_at(k, a->v, row * KD), (size_t)sp->n * KD * ab);
        k->attention_cached(act_at(k, a->att, row * QD), act_at(k, a->q, row * QD), kc, vc, 1, sp->n,
                            sp->start + sp->n, kv->cap, NH, NKV, HD);
        row += (size_t)sp->n;
    }
}

void llm_layer_forward(const Llm *m, int l, LlmActs *a, act_t *out, int N, const int *pos, const LlmAttend *at) {
    const Kernels *k = m->k;
    const LlmConfig *c = &m->cfg;
    const LlmLayer *L = &m->layer[l];
    int C = c->hidden, I = c->mlp, NH = c->heads, NKV = c->kv_heads, HD = c->head_dim;
    int QD = NH * HD, KD = NKV * HD, QKV = QD + 2 * KD;
    k->rmsnorm_forward(a->ln1, a->rstd1, a->x, L->ln1, N, C, c->eps);
    group_forward(m, l, &L->g[GRP_QKV], a->qkv, a->ln1, a->lora_h[GRP_QKV], N);  // (N, QD | KD | KD)
    const act_t *qkv = a->qkv, *att = a->att;
    int NA = N;  // rows in the attention's layout
    if (at->pad) {  // compact rows: q/k/v to the B x T positions (zero rows past each sequence)
        NA = at->B * at->T;
        k->gather_rows(m->qkv_pad, a->qkv, at->pad, NA, QKV);
        qkv = m->qkv_pad;
    }
    k->rope_forward(a->q, qkv, pos, NA, NH, HD, c->rope_theta, QD, QKV);
    k->rope_forward(a->k, act_at(k, qkv, QD), pos, NA, NKV, HD, c->rope_theta, KD, QKV);
    k->copy_rows(a->v, act_at(k, qkv, QD + KD), NA, KD, KD, QKV);
    attend(m, l, a, at);
    // the rows that go on past the attention: every row (compact: gathered from the B x T
    // layout), or only the kept ones
    const act_t *x = a->x;
    const int *go_on = at->keep ? at->keep_pos : at->rows;  // their attention positions
    if (at->keep) {
        k->gather_rows(m->x_keep, a->x, at->keep, at->n_keep, C);
        x = m->x_keep;
        N = at->n_keep;
    }
    if (go_on) {
        k->gather_rows(m->att_rows, a->att, go_on, N, QD);
        att = m->att_rows;
    }
    group_forward(m, l, &L->g[GRP_O], a->xmid, att, a->lora_h[GRP_O], N);
    k->add_rmsnorm_forward(a->xmid, a->ln2, a->rstd2, a->xmid, x, L->ln2, N, C, c->eps);  // residual, norm
    group_forward(m, l, &L->g[GRP_GU], a->gu, a->ln2, a->lora_h[GRP_GU], N);  // (N, I | I)
    k->swiglu_forward(a->act, a->gu, act_at(k, a->gu, I), N, I, 2 * I);
    // out may be a->x: x is no longer read once xmid holds the residual
    group_forward(m, l, &L->g[GRP_DOWN], out, a->act, a->lora_h[GRP_DOWN], N);
    k->add(out, out, a->xmid, (size_t)N * C);
}

static void check_rows(const Llm *m, const LlmAttend *at, int N) {
    CHECK(at->B <= m->max_B && at->T <= m->max_T && !at->cache, "llm_forward with %dx%d, planned for %dx%d", at->B,
          at->T, m->max_B, m->max_T);
    CHECK(at->pad ? N <= at->B * at->T && at->rows : N == at->B * at->T, "llm_forward: %d rows for %d x %d positions%s",
          N, at->B, at->T, at->pad ? "" : " without a compaction");
}

void llm_forward(Llm *m, const LlmAttend *at, int N, const int *pos) {
    const LlmConfig *c = &m->cfg;
    check_rows(m, at, N);
    LlmAttend inner = *at;  // the kept rows apply to the last layer only
    inner.keep = NULL;
    for (int l = 0; l < c->layers; l++)
        llm_layer_forward(m, l, &m->acts[l], l + 1 < c->layers ? m->acts[l + 1].x : m->x_out, N, pos,
                          l + 1 < c->layers ? &inner : at);
    m->kept = at->keep ? at->n_keep : 0;
    m->k->rmsnorm_forward(m->lnf, m->rstdf, m->x_out, m->norm, m->kept ? m->kept : N, c->hidden, c->eps);
}

void llm_loss(Llm *m, int N, const int *idx, const int *targets, int M, float grad_scale, int backward) {
    const Kernels *k = m->k;
    const LlmConfig *c = &m->cfg;
    int C = c->hidden, V = c->vocab, R = k->xent_chunk_rows;
    // (M, C): only labelled rows meet the vocabulary; with kept rows the final norm's rows are those
    CHECK(!m->kept || m->kept == M, "llm_loss: %d labelled rows, the last layer kept %d", M, m->kept);
    const act_t *hid = m->kept ? m->lnf : m->hid;
    if (!m->kept) k->gather_rows(m->hid, m->lnf, idx, M, C);
    for (int r0 = 0; r0 < M; r0 += R) {
        int n = M - r0 < R ? M - r0 : R;
        const act_t *h = act_at(k, hid, (size_t)r0 * C);
        k->matmul_forward(m->logits, h, m->lm_head, NULL, n, C, V, 1.0f, 0);
        k->cross_entropy(m->losses + r0, backward ? m->logits : NULL, m->logits, targets + r0, n, V, grad_scale);
        if (backward)
            k->matmul_backward_set(act_at(k, m->dhid, (size_t)r0 * C), NULL, NULL, m->logits, h, m->lm_head, n, C, V,
                                   1.0f);  // each chunk the first writer of its rows
    }
    if (!backward) return;
    if (m->kept) {  // the last layer's rows are the labelled ones
        k->rmsnorm_backward_set(m->dx, NULL, m->dhid, m->x_out, m->norm, m->rstdf, M, C);
        return;
    }
    k->zero(m->dln, (size_t)N * C * k->act_bytes);
    k->scatter_rows(m->dln, m->dhid, idx, M, C);
    k->rmsnorm_backward_set(m->dx, NULL, m->dln, m->x_out, m->norm, m->rstdf, N, C);  // dx's first writer
}

void llm_backward(Llm *m, const LlmAttend *at, int N, const int *pos) {
    const Kernels *k = m->k;
    const LlmConfig *c = &m->cfg;
    check_rows(m, at, N);
    int C = c->hidden, I = c->mlp, NH = c->heads, NKV = c->kv_heads, HD = c->head_dim;
    int QD = NH * HD, KD = NKV * HD, QKV = QD + 2 * KD, NA = at->B * at->T;
    CHECK(!m->kept || (at->keep && at->n_keep == m->kept), "llm_backward: the forward kept %d rows", m->kept);
    for (int l = c->layers - 1; l >= 0; l--) {
        const LlmLayer *L = &m->layer[l];
        LlmActs *a = &m->acts[l];
        int kept = l == c->layers - 1 && m->kept, NO = kept ? m->kept : N;  // rows after the attention
        // MLP block; dx = d(layer output) = d(xmid) through the residual
        group_backward(m, l, &L->g[GRP_DOWN], m->dact, 1, m->dx, a->act, a->lora_h[GRP_DOWN], NO);
        // d(gate | up) over the layer's gate | up rows, which nothing reads after this
        k->swiglu_backward(a->gu, act_at(k, a->gu, I), m->dact, a->gu, act_at(k, a->gu, I), NO, I, 2 * I);
        group_backward(m, l, &L->g[GRP_GU], m->dln, 1, a->gu, a->ln2, a->lora_h[GRP_GU], NO);
        k->rmsnorm_backward(m->dx, NULL, m->dln, a->xmid, L->ln2, a->rstd2, NO, C);
        // attention block; dx = d(xmid) = d(layer input) through the residual
        const act_t *att = a->att, *datt = m->datt;
        if (kept || at->pad) {  // o_proj's input, compact (or kept) rows again
            k->gather_rows(m->att_rows, a->att, kept ? at->keep_pos : at->rows, NO, QD);
            att = m->att_rows;
        }
        group_backward(m, l, &L->g[GRP_O], m->datt, 1, m->dx, att, a->lora_h[GRP_O], NO);
        if (kept || at->pad) {  // d(attention output) at the B x T positions: zero where no row ran on
            k->gather_rows(m->att_rows, m->datt, kept ? at->pad_keep : at->pad, NA, QD);
            datt = m->att_rows;
        }
        if (kept) {  // the residual's d(x) at every row: the kept rows', zero elsewhere; the
                     // two (N, C) buffers trade places rather than copy
            k->gather_rows(m->x_keep, m->dx, at->row_keep, N, C);
            act_t *t = m->dx;
            m->dx = m->x_keep;
            m->x_keep = t;
        }
        k->attention_backward(m->dq, m->dk, m->dv, datt, a->q, a->k, a->v, a->att, a->lse, at->seg, at->B, at->T, NH,
                              NKV, HD, 1);
        // d(q | k | v) rows for the fused projection: dq and dk rotated back into their columns, dv
        // copied; at the B x T positions first when the rows are compact
        act_t *dqkv = at->pad ? m->qkv_pad : m->qkv;
        k->rope_backward(dqkv, m->dq, pos, NA, NH, HD, c->rope_theta, QD, QKV);
        k->rope_backward(act_at(k, dqkv, QD), m->dk, pos, NA, NKV, HD, c->rope_theta, KD, QKV);
        k->copy_rows(act_at(k, dqkv, QD + KD), m->dv, NA, KD, QKV, KD);
        if (at->pad) k->gather_rows(m->qkv, m->qkv_pad, at->rows, N, QKV);
        group_backward(m, l, &L->g[GRP_QKV], m->dln, 1, m->qkv, a->ln1, a->lora_h[GRP_QKV], N);
        k->rmsnorm_backward(m->dx, NULL, m->dln, a->x, L->ln1, a->rstd1, N, C);
        int first, n = llm_lora_range(m, l, &first);
        if (n && m->grads_ready.fn) m->grads_ready.fn(m->grads_ready.ctx, first, n);
    }
}

int llm_lora_range(const Llm *m, int l, int *first) {
    int lo = -1, hi = -1;  // llm_load declares A then B of each projection, one layer after another
    for (int p = 0; p < N_PROJ; p++) {
        const LlmProj *pr = &m->layer[l].p[p];
        if (pr->a < 0) continue;
        if (lo < 0 || pr->a < lo) lo = pr->a;
        if (pr->bb > hi) hi = pr->bb;
    }
    *first = lo;
    return lo < 0 ? 0 : hi - lo + 1;
}

void llm_logits(Llm *m, act_t *out, int N) {
    m->k->matmul_forward(out, m->lnf, m->lm_head, NULL, N, m->cfg.hidden, m->cfg.vocab, 1.0f, 0);
}
