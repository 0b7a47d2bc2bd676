// vlm_dir.h: a whole vision-language model in one Hugging Face directory, read as it ships
// (`model = DIR`): which layout it is, and what its config.json says the vision / connector / LLM
// specs are. The towers and the LLM load from the same directory: vit_load finds the vision
// tensors' prefix by its family's anchor, llm_load the decoder's by "embed_tokens.weight", and
// llm_config_load / vit_config_load read the nested sub-configs (vlm_dir_text_config here).
//
//   layout         architectures[0] (model_type)            names in the files              sub-configs
//   internvl_chat  InternVLChatModel (internvl_chat):        vision_model.*, mlp1.*,         vision_config,
//                  InternVL 1.5-2.5 / Vintern remote code    language_model.model.*,         llm_config
//                                                            language_model.lm_head.*
//   internvl_hf    InternVLForConditionalGeneration          vision_tower.*,                 vision_config,
//                  (internvl), transformers' native          multi_modal_projector.*,        text_config
//                                                            language_model.model.*, language_model.lm_head.*
//   idefics3       Idefics3ForConditionalGeneration          model.vision_model.*,           vision_config,
//                  (idefics3; SmolVLM ships as it),          model.connector.modality_projection.proj.*,
//                  SmolVLMForConditionalGeneration (smolvlm) model.text_model.*, lm_head.*   text_config
//   llava          LlavaForConditionalGeneration (llava)     vision_tower.*, multi_modal_projector.linear_{1,2}.*,
//                                                            language_model.model.*,         vision_config,
//                                                            language_model.lm_head.*        text_config
// transformers 5 names internvl_hf's and llava's modules model.vision_tower, model.multi_modal_projector,
// model.language_model and lm_head in memory, but loads and saves the files under the names above
// (its conversion mapping, both ways: save_pretrained writes them): svlm reads either form (the
// towers' and the LLM's prefixes are found by anchors; the connector's declared
// model.multi_modal_projector.* names are read without the leading "model." when the files hold them so).
//
// The config keys each layout reads, with its config class's defaults (transformers 5.x,
// InternVL's configuration_internvl_chat.py):
//   internvl_chat  select_layer (-1), downsample_ratio (0.5; 1/ratio must be an integer),
//                  ps_version ("v1": refused, svlm's pixel shuffle is v2), template (its chat
//                  format), llm_config.tie_word_embeddings; image token <IMG_CONTEXT> by name
//   internvl_hf    vision_feature_layer (-1), vision_feature_select_strategy ("default": CLS
//                  dropped; "full" refused), downsample_ratio (0.5), projector_hidden_act
//                  ("gelu"), image_token_id (151667), tie_word_embeddings (true)
//   idefics3       scale_factor (2), image_token_id (128257), tie_word_embeddings (false); the
//                  features are the tower's last_hidden_state (post_layernorm)
//   llava          vision_feature_layer (-2), vision_feature_select_strategy ("default"),
//                  projector_hidden_act ("gelu"), multimodal_projector_bias (true),
//                  image_token_index / image_token_id (32000), tie_word_embeddings (false, or
//                  text_config's when that is true, as LlavaConfig does)
// Anything else (another architecture, a missing sub-config, a list of feature layers) stops with
// one line naming config.json and the key.
#pragma once
#include <cjson/cJSON.h>

#include "data/template.h"
#include "data/tokenizer.h"
#include "model/connector.h"
#include "model/params.h"

typedef enum { VLM_LAYOUT_INTERNVL_CHAT, VLM_LAYOUT_INTERNVL_HF, VLM_LAYOUT_IDEFICS3, VLM_LAYOUT_LLAVA, N_VLM_LAYOUTS } VlmLayout;

#define VLM_DIR_PATH 1024

typedef struct {
    VlmLayout layout;
    char dir[VLM_DIR_PATH];
    char arch[64];              // architectures[0] (or the layout's class when absent)
    ConnectorType connector;    // the layout's projector, under its own names
    int connector_scale;        // pixel shuffle side (1/downsample_ratio, scale_factor); 0: none
    int vision_layer;           // hidden_states index of the connector's input
    int image_token_id;         // the id of the image slot's token (-1: looked up by name)
    char image_token[32];       // its text: <IMG_CONTEXT>, <image>
    char template_name[64];     // config.json's "template" (InternVL remote code), else ""
    int pad_to_square;          // the model pads images to a square (InternVL's pad2square at one tile:
                                // dynamic_image_size false); else its processor's own resize
    int max_tiles;              // the model's own tiles per image at most, the thumbnail / global image
                                // not counted (svlm's max_tiles, data/tiling.h); 1: one tile
    int split_tiles;            // idefics3: the tiles its splitting gives (ceil(longest / max)^2) even
                                // when do_image_splitting is false; else max_tiles
    char image_format[16];      // the image slot its processor writes: internvl, idefics3, llava
} VlmDir;

const char *vlm_layout_name(VlmLayout l);
// 1 when dir/config.json describes a whole vision-language model of a layout svlm reads (by its
// architectures or model_type), 0 otherwise (a plain LLM, a vision model, no config.json)
int vlm_dir_is(const char *dir);
// reads dir/config.json (and preprocessor_config.json for the tiling); fatal() in one line naming
// the file and the key on anything svlm cannot run
//
// The model's own tiling (max_tiles), as its processor runs:
//   internvl_chat  config.json: dynamic_image_size (false: one tile), max_dynamic_patch (6),
//                  min_dynamic_patch (1; else refused), use_thumbnail (false: refused when tiling),
//                  pad2square (false; pads only when not tiling)
//   internvl_hf    preprocessor_config.json: max_patches (12), min_patches (1; else refused);
//                  InternVLProcessor always passes crop_to_patches=True, so the file's flag is not read
//   idefics3       preprocessor_config.json: do_image_splitting (true), size.longest_edge
//                  (4 x max), max_image_size.longest_edge (vision_config.image_size): ceil(longest / max)^2
//   llava          one tile (CLIP's resize and crop)
void vlm_dir_open(VlmDir *d, const char *dir);
// The config's image_token_id (where the layout has one) is the tokenizer's id of the layout's
// image token: fatal() naming config.json when not (an export would mark its images with
// another token than the ones svlm trained on)
void vlm_dir_check_image_token(const VlmDir *d, const Tokenizer *tok);
// For llm_config_load: when root (the config.json at path) is a whole VLM, its text sub-config
// (llm_config / text_config), with *tied set to the tie_word_embeddings its model class applies
// (-1: the files decide) and *def_type to the model_type its class assumes when the sub-config
// names none; NULL when root is not a whole VLM. fatal() when the sub-config is missing.
const cJSON *vlm_dir_text_config(const cJSON *root, const char *path, int *tied, const char **def_type);
// The shipped connector: every tensor of train's connector group read from the directory's
// weights under the layout's names (transformers 4's llava names too). Returns the count read.
int vlm_dir_load_connector(const VlmDir *d, ParamSet *train);
// The chat format the model ships with: config.json's "template" for InternVL's remote code
// (Hermes-2 -> hermes2, internvl2_5 -> internvl2_5: what its chat() uses), else the chat template
// of chat_template.jinja, chat_template.json or tokenizer_config.json (the first there) recognised
// by its structure (template_recognize).
// *system: the format's default system prompt as the model writes it (NULL: the kind's own, "":
// none). fatal() in one line naming the file and key when there is none or it is no known format.
TemplateKind vlm_dir_template(const VlmDir *d, const char **system);
// the names peft gives the LLM's modules inside this layout's model class (in memory, not the
// file names): "language_model.model." (remote code), "model.language_model." (internvl_hf,
// llava), "model.text_model." (idefics3); the adapter of a whole-model export uses them
const char *vlm_dir_peft_prefix(const VlmDir *d);
// the name this directory's files store connector tensor `name` (svlm's) under, in out
void vlm_dir_connector_name(const VlmDir *d, const char *name, char *out, size_t cap);
