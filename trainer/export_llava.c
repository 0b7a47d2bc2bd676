// export_llava.c: an mlp2x_gelu export as a Hugging Face LlavaForConditionalGeneration checkpoint
// (see export.h), in the layout of the llava-hf checkpoints that transformers' convert_llava_weights_to_hf.py
// writes and that transformers (which renames them on load) and vLLM read:
//   vision_tower.vision_model.*            the CLIP vision tower, every layer (LLaVA takes
//                                          hidden_states[vision_feature_layer], CLS dropped:
//                                          vision_feature_select_strategy "default")
//   multi_modal_projector.linear_1/2.*     model.mm_projector.0/2.* (Linear, GELU(erf), Linear)
//   language_model.model.*, language_model.lm_head.weight   the LoRA-merged LLM of llm/
// config.json holds text_config (the LLM's config.json), vision_config (the tower's), and
// image_token_index: the id of "<image>", added to the tokenizer as a special token (the first
// id past the tokenizer's; when the embedding has no spare row, the embedding (and an untied
// lm_head) gets one row of zeros: the processor replaces the image tokens' embeddings by the
// projector's features, and generation_config.json suppresses the token). The processor files:
// preprocessor_config.json (LlavaImageProcessor: do_pad for svlm's pad_to_square, the tower's
// size, mean and std), processor_config.json (LlavaProcessor: patch_size, one extra token for CLS
// that "default" drops), chat_template.jinja / chat_template.json (svlm's template and system
// prompt, the image first in its turn as svlm puts it), tokenizer.json with "<image>".
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/json.h"
#include "common/safetensors.h"
#include "common/util.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "model/hf.h"
#include "model/vit.h"
#include "trainer/export.h"

#define IMAGE_TOKEN "<image>"

// tokenizer.json with "<image>" as an added special token; returns its id (an existing
// "<image>" keeps its id)
static int tokenizer_add_image(const char *from, const char *to) {
    cJSON *t = json_load_file(from);
    cJSON *added = cJSON_GetObjectItemCaseSensitive(t, "added_tokens");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(t, "model");
    const cJSON *vocab = model ? cJSON_GetObjectItemCaseSensitive(model, "vocab") : NULL;
    if (!cJSON_IsArray(added) || !cJSON_IsObject(vocab)) fatal("%s: no added_tokens list or model.vocab object", from);
    int next = 0, id = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) if (cJSON_IsNumber(e) && e->valueint >= next) next = e->valueint + 1;
    cJSON_ArrayForEach(e, added) {
        const cJSON *i = cJSON_GetObjectItemCaseSensitive(e, "id"), *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsNumber(i)) continue;
        if (i->valueint >= next) next = i->valueint + 1;
        if (cJSON_IsString(c) && !strcmp(c->valuestring, IMAGE_TOKEN)) id = i->valueint;
    }
    if (id < 0) {
        id = next;
        cJSON *tok = cJSON_CreateObject();
        cJSON_AddNumberToObject(tok, "id", id);
        cJSON_AddStringToObject(tok, "content", IMAGE_TOKEN);
        cJSON_AddBoolToObject(tok, "single_word", 0);
        cJSON_AddBoolToObject(tok, "lstrip", 0);
        cJSON_AddBoolToObject(tok, "rstrip", 0);
        cJSON_AddBoolToObject(tok, "normalized", 0);
        cJSON_AddBoolToObject(tok, "special", 1);
        cJSON_AddItemToArray(added, tok);
    }
    export_write_json(to, t, 0);
    cJSON_Delete(t);
    return id;
}

// tokenizer_config.json with "<image>" in added_tokens_decoder (when the file lists them)
static void tokenizer_config_add_image(const char *from, const char *to, int id) {
    cJSON *t = file_exists(from) ? json_load_file(from) : cJSON_CreateObject();
    cJSON *dec = cJSON_GetObjectItemCaseSensitive(t, "added_tokens_decoder");
    if (cJSON_IsObject(dec)) {
        char key[32];
        snprintf(key, sizeof key, "%d", id);
        cJSON_DeleteItemFromObjectCaseSensitive(dec, key);
        cJSON *tok = cJSON_AddObjectToObject(dec, key);
        cJSON_AddStringToObject(tok, "content", IMAGE_TOKEN);
        cJSON_AddBoolToObject(tok, "lstrip", 0);
        cJSON_AddBoolToObject(tok, "normalized", 0);
        cJSON_AddBoolToObject(tok, "rstrip", 0);
        cJSON_AddBoolToObject(tok, "single_word", 0);
        cJSON_AddBoolToObject(tok, "special", 1);
    }
    // the chat template is the processor's (chat_template.jinja): the LLM's own one would not put
    // the image in its turn
    cJSON_DeleteItemFromObjectCaseSensitive(t, "chat_template");
    export_write_json(to, t, 1);
    cJSON_Delete(t);
}

// svlm's prompt format for tpl as a Jinja chat template: messages with string content or
// [{"type": "image"}, {"type": "text", "text": ...}] lists; the image goes first in its turn
// followed by "\n", as svlm's template puts it (LLaVA's normalisation)
static char *chat_template_jinja(TemplateKind kind, const Template *tpl) {
    // literal text only inside {{ '...' }}: transformers renders with trim_blocks / lstrip_blocks,
    // which would eat newlines written beside the tags
    const char *content =
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for c in message['content'] if c['type'] == 'image' %}{{ '<image>\\n' }}{% endfor %}"
        "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endif %}";
    cJSON *sys = cJSON_CreateString(template_system_text(tpl));  // a JSON string is a Jinja string literal
    char *sys_lit = cJSON_PrintUnformatted(sys);
    cJSON_Delete(sys);
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    fprintf(f, "{%% set default_system = %s %%}", sys_lit);
    fprintf(f, "{%% if messages and messages[0]['role'] == 'system' %%}{%% set system = messages[0]['content'] %%}"
               "{%% set messages = messages[1:] %%}{%% else %%}{%% set system = default_system %%}{%% endif %%}");
    const char *assistant = "{% if message['role'] in ['assistant', 'gpt'] %}";
    if (kind == TEMPLATE_CHATML || kind == TEMPLATE_HYPERCLOVAX) {
        fprintf(f, "{%% if system %%}{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}{%% endif %%}");
        fprintf(f, "{%% for message in messages %%}%s{{ '<|im_start|>assistant\\n' }}%s{{ '<|im_end|>%s\\n' }}"
                   "{%% else %%}{{ '<|im_start|>user\\n' }}%s{{ '<|im_end|>\\n' }}{%% endif %%}{%% endfor %%}",
                assistant, content, kind == TEMPLATE_HYPERCLOVAX ? "<|endofturn|>" : "", content);
        fprintf(f, "{%% if add_generation_prompt %%}{{ '<|im_start|>assistant\\n' }}{%% endif %%}");
    } else if (kind == TEMPLATE_VICUNA_V1) {
        if (template_has_bos(tpl)) fprintf(f, "{{ bos_token }}");
        fprintf(f, "{%% if system %%}{{ system + ' ' }}{%% endif %%}");
        fprintf(f, "{%% for message in messages %%}%s{{ 'ASSISTANT: ' }}%s{{ eos_token }}{%% else %%}{{ 'USER: ' }}%s"
                   "{{ ' ' }}{%% endif %%}{%% endfor %%}{%% if add_generation_prompt %%}{{ 'ASSISTANT:' }}{%% endif %%}",
                assistant, content, content);
    } else {  // plain: the image and the text, nothing else
        if (template_has_bos(tpl)) fprintf(f, "{{ bos_token }}");
        fprintf(f, "{%% for message in messages %%}%s{%% endfor %%}", content);
    }
    fclose(f);
    free(sys_lit);
    return out;
}

// a copy of t's rows with `extra` rows of zeros after them (owned by the caller)
static void *rows_padded(const StFile *f, const StTensor *t, int extra, int64_t *shape) {
    size_t row = (size_t)t->shape[1] * st_dtype_size(t->dtype), n = (size_t)t->shape[0] * row;
    uint8_t *p = xcalloc(n + (size_t)extra * row, 1);
    memcpy(p, st_data(f, t), n);
    shape[0] = t->shape[0] + extra;
    shape[1] = t->shape[1];
    return p;
}

void export_llava(const ExportLlava *e) {
    char path[EXPORT_PATH + 64], from[EXPORT_PATH + 64];
    if (mkdir(e->out, 0755) != 0) fatal("%s: cannot create: %s", e->out, strerror(errno));

    // tokenizer files, "<image>" added
    snprintf(from, sizeof from, "%s/tokenizer.json", e->llm_dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", e->out);
    int image_id = tokenizer_add_image(from, path);
    snprintf(from, sizeof from, "%s/tokenizer_config.json", e->llm_dir);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", e->out);
    tokenizer_config_add_image(from, path, image_id);
    snprintf(from, sizeof from, "%s/special_tokens_map.json", e->llm_dir);
    snprintf(path, sizeof path, "%s/special_tokens_map.json", e->out);
    if (file_exists(from)) export_copy_file(from, path);

    // the stop tokens and system prompt of svlm's template, from the LLM's own tokenizer
    snprintf(from, sizeof from, "%s/tokenizer.json", e->llm_dir);
    Tokenizer *tok = tokenizer_load(from);
    snprintf(from, sizeof from, "%s/config.json", e->llm_dir);
    cJSON *text_cfg = json_load_file(from);
    int vocab = (int)json_get_i64(text_cfg, "vocab_size", 1, 1 << 30, from);
    const cJSON *eos_j = cJSON_GetObjectItemCaseSensitive(text_cfg, "eos_token_id");
    int eos = cJSON_IsNumber(eos_j) ? eos_j->valueint : -1;
    Template *tpl = template_new(e->template_kind, tok, e->system, eos);
    int stops[2] = {template_stop_id(tpl), eos}, n_stop = eos >= 0 && eos != stops[0] ? 2 : 1;
    const cJSON *tie_j = cJSON_GetObjectItemCaseSensitive(text_cfg, "tie_word_embeddings");
    int tied = cJSON_IsBool(tie_j) ? cJSON_IsTrue(tie_j) : 0;
    int extra = image_id >= vocab ? image_id + 1 - vocab : 0;

    // tensors
    StWriter *w = st_writer_new();
    char name[640];
    HfWeights vis;
    hf_weights_open(&vis, e->vision_dir);
    // the tower's tensors sit under the prefix of its patch embedding, as svlm finds them (model/vit.c):
    // "" in a CLIPVisionModel saved alone, "vision_model." in CLIPModel (whose text tower stays out)
    const char *anchor = hf_weights_find_suffix(&vis, "embeddings.patch_embedding.weight");
    if (!anchor) fatal("%s: no embeddings.patch_embedding.weight (the LLaVA format holds a CLIP-style tower)", e->vision_dir);
    size_t plen = strlen(anchor) - strlen("embeddings.patch_embedding.weight");
    for (int i = 0; i < vis.n; i++) {
        const StTensor *t = vis.tensors[i];
        if (strncmp(t->name, anchor, plen)) continue;
        snprintf(name, sizeof name, "vision_tower.vision_model.%s", t->name + plen);
        st_writer_add(w, name, t->dtype, t->ndim, t->shape, st_data(&vis.files[vis.file_of[i]], t));
    }
    StFile conn;
    st_open_or_die(&conn, e->connector_file);
    const char *proj[][2] = {{"model.mm_projector.0.weight", "multi_modal_projector.linear_1.weight"},
                             {"model.mm_projector.0.bias", "multi_modal_projector.linear_1.bias"},
                             {"model.mm_projector.2.weight", "multi_modal_projector.linear_2.weight"},
                             {"model.mm_projector.2.bias", "multi_modal_projector.linear_2.bias"}};
    for (int i = 0; i < 4; i++) {
        const StTensor *t = st_find(&conn, proj[i][0]);
        if (!t) fatal("%s: %s missing (the LLaVA format needs the mlp2x_gelu connector)", conn.path, proj[i][0]);
        st_writer_add(w, proj[i][1], t->dtype, t->ndim, t->shape, st_data(&conn, t));
    }
    StFile llm;
    snprintf(path, sizeof path, "%s/model.safetensors", e->merged_llm_dir);
    st_open_or_die(&llm, path);
    void *padded[2] = {NULL, NULL};
    int np = 0;
    for (int i = 0; i < llm.n; i++) {
        const StTensor *t = &llm.tensors[i];
        snprintf(name, sizeof name, "language_model.%s", t->name);
        int vocab_rows = t->ndim == 2 && t->shape[0] == vocab &&
                         (!strcmp(t->name, "model.embed_tokens.weight") || !strcmp(t->name, "lm_head.weight"));
        if (extra && vocab_rows) {
            int64_t shape[2];
            padded[np] = rows_padded(&llm, t, extra, shape);
            st_writer_add(w, name, t->dtype, 2, shape, padded[np++]);
        } else {
            st_writer_add(w, name, t->dtype, t->ndim, t->shape, st_data(&llm, t));
        }
    }
    st_writer_meta(w, "format", "pt");
    snprintf(path, sizeof path, "%s/model.safetensors", e->out);
    char err[2300];
    if (st_writer_save(w, path, err, sizeof err) != 0) fatal("%s", err);
    st_writer_free(w);
    for (int i = 0; i < np; i++) free(padded[i]);
    st_close(&llm);
    st_close(&conn);
    hf_weights_close(&vis);

    // config.json
    snprintf(from, sizeof from, "%s/config.json", e->vision_dir);
    cJSON *vcfg = json_load_file(from);
    cJSON *vsub = cJSON_DetachItemFromObjectCaseSensitive(vcfg, "vision_config");  // a full CLIPModel's config
    cJSON *vision_cfg = vsub ? vsub : vcfg;
    if (vsub) cJSON_Delete(vcfg);
    cJSON_DeleteItemFromObjectCaseSensitive(vision_cfg, "architectures");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(vision_cfg, "model_type");
    if (!cJSON_IsString(mt) || !strcmp(mt->valuestring, "clip")) {
        cJSON_DeleteItemFromObjectCaseSensitive(vision_cfg, "model_type");
        cJSON_AddStringToObject(vision_cfg, "model_type", "clip_vision_model");
    }
    cJSON_DeleteItemFromObjectCaseSensitive(text_cfg, "architectures");
    if (extra) {
        cJSON_DeleteItemFromObjectCaseSensitive(text_cfg, "vocab_size");
        cJSON_AddNumberToObject(text_cfg, "vocab_size", vocab + extra);
    }
    cJSON *cfg = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(cfg, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("LlavaForConditionalGeneration"));
    cJSON_AddStringToObject(cfg, "model_type", "llava");
    cJSON_AddNumberToObject(cfg, "image_token_index", image_id);
    cJSON_AddNumberToObject(cfg, "image_seq_length", e->image_tokens);
    cJSON_AddStringToObject(cfg, "projector_hidden_act", "gelu");
    cJSON_AddBoolToObject(cfg, "multimodal_projector_bias", 1);
    cJSON_AddNumberToObject(cfg, "vision_feature_layer", e->vision_layer);
    cJSON_AddStringToObject(cfg, "vision_feature_select_strategy", e->has_cls ? "default" : "full");
    cJSON_AddBoolToObject(cfg, "tie_word_embeddings", tied);
    cJSON_AddItemToObject(cfg, "text_config", text_cfg);
    cJSON_AddItemToObject(cfg, "vision_config", vision_cfg);
    snprintf(path, sizeof path, "%s/config.json", e->out);
    export_write_json(path, cfg, 1);
    cJSON_Delete(cfg);

    // generation_config.json: the LLM's, stopping where svlm stops, never generating <image>
    snprintf(from, sizeof from, "%s/generation_config.json", e->llm_dir);
    cJSON *gen = file_exists(from) ? json_load_file(from) : cJSON_CreateObject();
    cJSON_DeleteItemFromObjectCaseSensitive(gen, "eos_token_id");
    cJSON_AddItemToObject(gen, "eos_token_id", cJSON_CreateIntArray(stops, n_stop));
    if (!cJSON_GetObjectItemCaseSensitive(gen, "pad_token_id")) cJSON_AddNumberToObject(gen, "pad_token_id", stops[0]);
    cJSON_DeleteItemFromObjectCaseSensitive(gen, "suppress_tokens");
    cJSON_AddItemToObject(gen, "suppress_tokens", cJSON_CreateIntArray(&image_id, 1));
    snprintf(path, sizeof path, "%s/generation_config.json", e->out);
    export_write_json(path, gen, 1);
    cJSON_Delete(gen);

    // processor files
    cJSON *pp = cJSON_CreateObject();
    cJSON_AddStringToObject(pp, "image_processor_type", "LlavaImageProcessor");
    cJSON_AddStringToObject(pp, "processor_class", "LlavaProcessor");
    cJSON_AddBoolToObject(pp, "do_pad", e->pad_to_square);
    cJSON_AddBoolToObject(pp, "do_resize", 1);
    cJSON *size = cJSON_AddObjectToObject(pp, "size");
    cJSON_AddNumberToObject(size, "shortest_edge", e->image_size);
    cJSON_AddBoolToObject(pp, "do_center_crop", 1);
    cJSON *crop = cJSON_AddObjectToObject(pp, "crop_size");
    cJSON_AddNumberToObject(crop, "height", e->image_size);
    cJSON_AddNumberToObject(crop, "width", e->image_size);
    cJSON_AddNumberToObject(pp, "resample", 3);  // bicubic, as CLIP's processor
    cJSON_AddBoolToObject(pp, "do_rescale", 1);
    cJSON_AddNumberToObject(pp, "rescale_factor", 1.0 / 255.0);
    cJSON_AddBoolToObject(pp, "do_normalize", 1);
    cJSON_AddItemToObject(pp, "image_mean", cJSON_CreateFloatArray(e->mean, 3));
    cJSON_AddItemToObject(pp, "image_std", cJSON_CreateFloatArray(e->std, 3));
    cJSON_AddBoolToObject(pp, "do_convert_rgb", 1);
    snprintf(path, sizeof path, "%s/preprocessor_config.json", e->out);
    export_write_json(path, pp, 1);
    cJSON_Delete(pp);
    char *jinja = chat_template_jinja(e->template_kind, tpl);
    cJSON *pc = cJSON_CreateObject();
    cJSON_AddStringToObject(pc, "processor_class", "LlavaProcessor");
    cJSON_AddStringToObject(pc, "image_token", IMAGE_TOKEN);
    cJSON_AddNumberToObject(pc, "patch_size", e->patch_size);
    cJSON_AddStringToObject(pc, "vision_feature_select_strategy", e->has_cls ? "default" : "full");
    cJSON_AddNumberToObject(pc, "num_additional_image_tokens", e->has_cls ? 1 : 0);
    snprintf(path, sizeof path, "%s/processor_config.json", e->out);
    export_write_json(path, pc, 1);
    cJSON_Delete(pc);
    snprintf(path, sizeof path, "%s/chat_template.jinja", e->out);
    export_write_text(path, jinja);
    cJSON *ct = cJSON_CreateObject();  // the same, in the file older transformers read
    cJSON_AddStringToObject(ct, "chat_template", jinja);
    snprintf(path, sizeof path, "%s/chat_template.json", e->out);
    export_write_json(path, ct, 1);
    cJSON_Delete(ct);
    free(jinja);
    template_free(tpl);
    tokenizer_free(tok);
}
