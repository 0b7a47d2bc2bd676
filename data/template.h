// template.h: chat templates that turn a LLaVA-style conversation into token ids and a loss
// mask (1 where the model is trained to predict the token), with the image slot marked.
//
// Templates (exact text in template.c):
//   plain        stage 1: [image] caption <end>; loss on the caption and the end token
//   chatml       Qwen2: <|im_start|>system\n{system}<|im_end|>\n then per turn
//                <|im_start|>{user|assistant}\n{text}<|im_end|>\n; loss on assistant text and its <|im_end|>
//   hyperclovax  ChatML whose assistant turns end <|im_end|><|endofturn|>; loss on the text and both
//   vicuna_v1    LLaVA-1.5: "{system} USER: {q} ASSISTANT: {a}<eos>USER: ..."; loss on the answer and <eos>
//   hermes2      InternVL's conversation template "Hermes-2" (MPT style): <|im_start|>system\n{system}<|im_end|>
//                then <|im_start|>user\n{q}<|im_end|><|im_start|>assistant\n{a}<|im_end|>, nothing between
//                turns; its default system prompt; loss on the answer and its <|im_end|>
//   internvl2_5  InternVL's "internvl2_5": as hermes2 with "\n" after every <|im_end|> (ChatML with
//                InternVL's system prompt, always written)
//   idefics3     Idefics3 / SmolVLM: [bos]User: {q}<end_of_utterance>\nAssistant: {a}<end_of_utterance>\n;
//                an image opens its turn right after "User:"; loss on " {a}<end_of_utterance>"
//   llava_hf     llava-hf's chat_template (LlavaForConditionalGeneration repositories):
//                [bos]{system} USER: {q} ASSISTANT: {a} USER: ...; no default system prompt and no
//                end token after an answer (the template writes none); loss on " {a}" (the space
//                after "ASSISTANT:" with it, as vicuna_v1; the " " after an answer is the start of
//                the next token, " USER" or the last one, so it stays unlabelled); a turn's image
//                opens it as "<image>\n"; generation stops at the tokenizer's eos
//   internvl_hf  transformers' InternVL (InternVLProcessor's chat_template): chatml without a default
//                system prompt, whose image always renders "<IMG_CONTEXT>\n": a turn that is the
//                image alone gets "\n" after the slot (LLaVA's normal form strips it; chatml keeps
//                LLaVA's)
// Turns are taken as LLaVA's preprocess_* take them (rules, in order, in template.c): a first
// system turn is the system prompt (svlm's convention); then a first gpt turn is dropped, once
// (LLaVA: "Skip the first one if it is not from human"); the rest alternates human, gpt.
// The "<image>" placeholder (at most one in the kept turns; none in a system prompt) becomes the
// image slot, placed as LLaVA's preprocess_multimodal places it: the turn that holds it becomes
//     "<image>" + "\n" + (its text with "<image>" removed).strip()
// ("<image>" alone when that is empty; strip() is Python's, Unicode whitespace included), so the
// slot always opens its turn; plain's human turn is the slot alone (LLaVA's preprocess_plain).
// A turn without "<image>" is kept exactly. ids hold no token for the slot; *image_pos is the
// index in ids before which the slot's tokens are inserted when the model's slot length is known
// (the loader does that). Text on each side of the slot is tokenised separately, as LLaVA's
// tokenizer_image_token does.
//
// Every encoded sample is checked: the concatenation of its per-piece token ids must equal the
// tokenisation of the whole rendered text (per side of the image slot), so that the loss mask
// boundaries are the ones the model sees; otherwise the sample is refused (counted and skipped
// by the caller, never trained with a wrong mask).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "data/tokenizer.h"

typedef enum {
    TEMPLATE_PLAIN,
    TEMPLATE_CHATML,
    TEMPLATE_HYPERCLOVAX,
    TEMPLATE_VICUNA_V1,
    TEMPLATE_HERMES2,      // InternVL's "Hermes-2" (InternVL2, Vintern-1B-v2)
    TEMPLATE_INTERNVL2_5,  // InternVL's "internvl2_5" (InternVL2.5 / 3, Vintern-1B-v3.5)
    TEMPLATE_IDEFICS3,     // Idefics3 / SmolVLM: User: / Assistant: / <end_of_utterance>
    TEMPLATE_LLAVA_HF,     // llava-hf's chat_template: USER: / ASSISTANT: / " " between turns
    TEMPLATE_INTERNVL_HF,  // transformers' InternVL chat_template: ChatML, "<IMG_CONTEXT>\n" per image
    N_TEMPLATE_KINDS
} TemplateKind;

// why template_encode refused a sample (the caller counts these by reason)
enum {
    TEMPLATE_ERR_NO_GPT = -1,       // no assistant turn, so nothing to learn
    TEMPLATE_ERR_BAD_ROLE = -2,     // a role other than human/user, gpt/assistant, system
    TEMPLATE_ERR_ORDER = -3,        // turns do not alternate human, gpt (system only first)
    TEMPLATE_ERR_IMAGES = -4,       // more <image> than allowed (template_encode: 1; one re-formed by removing it counts), or one in a system turn
    TEMPLATE_ERR_RETOKENIZE = -5,   // per-piece ids differ from the whole text's ids
    TEMPLATE_ERR_SPECIAL = -6,      // reserved: a missing special token is a fatal() in template_new
    TEMPLATE_ERR_EMPTY = -7,        // no token carries loss (a prompt: no token and no image)
    TEMPLATE_ERR_TOKENIZER = -8,    // the tokenizer failed on the text (its regex hit PCRE2's match limit)
};

typedef struct {
    const char *role;  // "human"/"user", "gpt"/"assistant", or "system"
    const char *text;  // UTF-8
} Turn;

typedef struct Template Template;

// "plain", "chatml", "hyperclovax", "vicuna_v1", "hermes2", "internvl2_5", "idefics3", "llava_hf" or
// "internvl_hf"; fatal()
// naming the value otherwise
TemplateKind template_parse(const char *name);
// Recognises a model's own chat template (a Jinja text: tokenizer_config.json's or
// chat_template.json's chat_template) as one of the formats above by its structure: the literal
// pieces each format writes and its default system prompt. Returns 1 and sets *kind and *system
// (the format's default system prompt as that template writes it: NULL for the kind's default, ""
// for none), or 0 when the text is none of them: the caller refuses, never guesses.
int template_recognize(const char *jinja, TemplateKind *kind, const char **system);
const char *template_name(TemplateKind kind);
// system: NULL for the template's default system prompt. eos_id: the LLM's end-of-sequence
// token (used by plain, vicuna_v1 and llava_hf; -1 to take the tokenizer's). fatal() when the tokenizer
// lacks a token the template needs, or when system holds "<image>".
Template *template_new(TemplateKind kind, const Tokenizer *tok, const char *system, int eos_id);
void template_free(Template *t);

// Encodes a whole conversation for training. Returns the token count (>= 1) with malloc'd
// *ids and *mask (mask[i] = 1: ids[i] is a prediction target) and *image_pos (-1 when the
// conversation has no <image>), or a TEMPLATE_ERR_* code with a short reason in err.
int template_encode(const Template *t, const Turn *turns, int n_turns, int **ids, uint8_t **mask,
                    int *image_pos, char *err, size_t errlen);
// Encodes a prompt for generation: the turns (ending with a human turn) then the assistant's
// opening, so that the model continues with the answer. Same outputs, without a mask (it would be
// all zero); the count can be 0 when the prompt is the image slot alone (plain), and
// TEMPLATE_ERR_ORDER when the turns do not end with a human turn. A prompt is exactly the
// start of the training sample of the same turns followed by a gpt turn.
int template_encode_prompt(const Template *t, const Turn *turns, int n_turns, int **ids, int *image_pos,
                           char *err, size_t errlen);
// The same for samples with several images (at most max_images): image_pos[0 .. *n_images) get
// the slots' positions in order. One image is placed as above (LLaVA's normalisation); with
// several, each "<image>" stays where it is in its turn's text (kept exactly, as the multi-image
// formats of InternVL and Idefics3 write them), and plain's human turn is the slots alone.
// TEMPLATE_ERR_IMAGES for more than max_images.
int template_encode_images(const Template *t, const Turn *turns, int n_turns, int **ids, uint8_t **mask, int *image_pos,
                           int max_images, int *n_images, char *err, size_t errlen);
int template_encode_prompt_images(const Template *t, const Turn *turns, int n_turns, int **ids, int *image_pos,
                                  int max_images, int *n_images, char *err, size_t errlen);
// the token that ends an assistant turn (generation stops there)
int template_stop_id(const Template *t);
// the system prompt the template writes before the first turn (its default when template_new
// got NULL; "" for none, always for plain), and whether it starts with the tokenizer's bos
const char *template_system_text(const Template *t);
int template_has_bos(const Template *t);
