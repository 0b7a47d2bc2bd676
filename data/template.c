// template.c: the chat templates of template.h.
//
// What each template renders (S(x) is special token x spliced in by id, [image] the image slot,
// {..} labelled text, i.e. tokens that carry loss; everything else carries none):
//
//   plain        [bos] [image] {caption}{S(eos)}
//                LLaVA's preprocess_plain: the human turn is replaced by the image alone (its
//                text is dropped; no slot when it has no "<image>"), the caption is the gpt turn.
//                LLaVA ends the caption with "\n" (conv_plain's sep); svlm ends it with the LLM's
//                eos token instead, so a stage-1 model learns where a caption stops and
//                generation can stop there. Exactly one human turn then one gpt turn after the
//                rules below (a leading system turn is ignored, a leading gpt turn dropped: LLaVA's
//                preprocess_plain asserts two turns instead); anything else is TEMPLATE_ERR_ORDER.
//                A caption that holds "<image>" is rewritten like any other turn (see Text).
//   chatml       S(<|im_start|>)system\n{system}S(<|im_end|>)\n                 (when system != "")
//                S(<|im_start|>)user\n{text}S(<|im_end|>)\n                     per human turn
//                S(<|im_start|>)assistant\n{text S(<|im_end|>)}\n               per gpt turn
//                default system "You are a helpful assistant." (Qwen2-Instruct's template);
//                the prompt ends with S(<|im_start|>)assistant\n; stop token <|im_end|>.
//   hyperclovax  as chatml, but a gpt turn is S(<|im_start|>)assistant\n{text S(<|im_end|>)
//                S(<|endofturn|>)}\n; no system block by default (HyperCLOVAX's own template
//                always writes one; svlm writes it only when a system prompt is given); stop
//                token <|endofturn|>.
//   vicuna_v1    [bos] {system}" " then per round "USER: {q} ASSISTANT:"{" "a S(eos)}
//                i.e. LLaVA-1.5's conv_vicuna_v1.get_prompt() (sep " ", sep2 "</s>") with the
//                LLM's eos token in place of "</s>" (byte-level BPE vocabularies may have no
//                "</s>"). The space after "ASSISTANT:" is labelled with the answer: byte-level
//                pre-tokenisers glue a space to the word after it, so " Hello" is one token and
//                the model, prompted with "...ASSISTANT:", generates it. A trailing human turn is
//                "USER: {q} " as in LLaVA. The prompt ends with "ASSISTANT:"; stop token eos.
//                An empty system prompt drops the system text and its space.
//   hermes2      S(<|im_start|>)system\n{system}S(<|im_end|>)                   (always, "" too)
//                S(<|im_start|>)user\n{text}S(<|im_end|>)                      per human turn
//                S(<|im_start|>)assistant\n{text S(<|im_end|>)}                 per gpt turn
//                InternVL's conversation.py get_prompt() for its "Hermes-2" template (sep_style
//                MPT, sep "<|im_end|>": nothing between turns; the system block is written even
//                for an empty system message), default system "你是由上海人工智能实验室联合商汤科技
//                开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"; the prompt
//                ends with S(<|im_start|>)assistant\n; stop token <|im_end|>. The image opens its turn
//                as "<image>\n" (InternVL's chat() puts it so), which the slot replaces.
//   internvl2_5  as hermes2 with "\n" (no loss) after every S(<|im_end|>) (sep "<|im_end|>\n"),
//                default system "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及
//                多家合作单位联合开发的多模态大语言模型。"
//   idefics3     [bos]"User:"[image]{text}S(<end_of_utterance>)"\n"    human turn with the image
//                [bos]"User: "{text}S(<end_of_utterance>)"\n"          human turn without
//                "Assistant:"{" "text S(<end_of_utterance>)}"\n"        per gpt turn
//                "System: "{system}S(<end_of_utterance>)"\n"          first, when a system prompt is given
//                Idefics3's / SmolVLM's chat_template rendered on [image, text] content: the role
//                capitalised, ":" before an image, ": " before text, <end_of_utterance>\n after each
//                message; no default system; [bos] is the template's leading literal, <|im_start|>
//                (SmolVLM) or else <|begin_of_text|> (Idefics3), whichever the tokenizer holds as a
//                special token (written once, before the first message). The image's turn is the
//                slot then the rest of its text stripped, without LLaVA's "\n" (the content list
//                [image, text] renders so). The space after "Assistant:" is labelled with the answer,
//                as vicuna_v1's. The prompt ends with "Assistant:"; stop token <end_of_utterance>.
//   [bos]        plain and vicuna_v1 only (LLaVA's tokenizer_image_token keeps the tokenizer's
//                bos): the token "<s>" when the tokenizer has it as a special token (Llama,
//                Vicuna); nothing otherwise (Qwen2, HyperCLOVAX and other byte-level BPE
//                vocabularies have no bos in their chat format). Llama-3's <|begin_of_text|> is
//                not added.
//
// Turns, in this order (the first rule that refuses decides the code):
//   1. every role must be human/user, gpt/assistant or system (else TEMPLATE_ERR_BAD_ROLE);
//   2. a system turn first in the conversation is the system prompt (svlm's convention; it
//      overrides template_new's) and is taken out of the turns;
//   3. then, when the first remaining turn is a gpt turn, it is dropped, once, with whatever
//      it holds (an "<image>" in it too), as LLaVA's preprocess_v1/_mpt/_llama_2 do ("Skip
//      the first one if it is not from human");
//   4. the rest must alternate human, gpt starting with human (a system turn anywhere else:
//      TEMPLATE_ERR_ORDER); a prompt must end with a human turn (TEMPLATE_ERR_ORDER); a training
//      sample needs a gpt turn (TEMPLATE_ERR_NO_GPT);
//   5. TEMPLATE_ERR_IMAGES: a system turn that holds "<image>" (template_new refuses such a
//      system prompt with fatal()), more than one "<image>" in the kept turns, or a turn whose
//      "<image>" removal joins its neighbours into another "<image>" (e.g. "<ima<image>ge>":
//      LLaVA would make two slots of it; not checked in plain's human turn, which LLaVA
//      replaces by the slot alone);
//   6. plain: exactly one human turn then one gpt turn (TEMPLATE_ERR_ORDER).
// Text. A turn without "<image>" is kept exactly as given (no strip). A turn that holds it (human
// or gpt; plain's human turn aside) is rewritten as LLaVA's preprocess_multimodal does:
//     v = v.replace("<image>", "").strip(); v = "<image>" + "\n" + v; v = v.strip()
// with Python's str.strip(): the whitespace of str.isspace() (U+0009-000D, U+001C-001F, U+0020,
// U+0085, U+00A0, U+1680, U+2000-200A, U+2028, U+2029, U+202F, U+205F, U+3000). So the slot
// opens its turn, followed by "\n" and the rest of the text stripped ("a <image> b" gives
// [image]"\na  b"); a turn that is only "<image>" and whitespace becomes the slot alone. The
// text after the slot is tokenised apart from the text before it, as LLaVA's
// tokenizer_image_token does.
//
// Encoding. A sample is built as a list of pieces: special token ids, text runs (each with its
// label) and the image slot. A maximal run of text pieces between two specials or the slot is
// joined and encoded once (allow_special = 0: special-token text typed by a user stays text)
// when all its pieces share one label. When a loss boundary falls inside it, each part with one
// label is encoded alone, and the concatenation must equal the encoding of the joined run;
// otherwise the sample is refused with TEMPLATE_ERR_RETOKENIZE (the boundary falls inside a
// token, e.g. a ChatML answer that starts with "\n": "assistant\n\n..." holds the token "\n\n").
#include "data/template.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define IMAGE_TAG "<image>"
#define IMAGE_TAG_LEN 7

static const char *CHATML_SYSTEM = "You are a helpful assistant.";
static const char *VICUNA_SYSTEM =
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.";
static const char *HERMES2_SYSTEM =
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。";
static const char *INTERNVL2_5_SYSTEM =
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。";
// the end token taken when template_new gets eos_id = -1: the first of these the tokenizer has
static const char *EOS_CANDIDATES[] = {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"};

struct Template {
    TemplateKind kind;
    const Tokenizer *tok;
    char *system;  // NULL: the template's default
    int eos, bos;  // bos -1: none
    int im_start, im_end, endofturn;
    int eou;  // idefics3: <end_of_utterance>
    int stop;
};

static const char *const template_names[N_TEMPLATE_KINDS] = {
    [TEMPLATE_PLAIN] = "plain",     [TEMPLATE_CHATML] = "chatml",           [TEMPLATE_HYPERCLOVAX] = "hyperclovax",
    [TEMPLATE_VICUNA_V1] = "vicuna_v1", [TEMPLATE_HERMES2] = "hermes2", [TEMPLATE_INTERNVL2_5] = "internvl2_5",
    [TEMPLATE_IDEFICS3] = "idefics3", [TEMPLATE_LLAVA_HF] = "llava_hf", [TEMPLATE_INTERNVL_HF] = "internvl_hf"};

// the system prompt a kind writes when none is given ("" for none)
static const char *default_system(TemplateKind kind) {
    switch (kind) {
    case TEMPLATE_CHATML: return CHATML_SYSTEM;
    case TEMPLATE_VICUNA_V1: return VICUNA_SYSTEM;
    case TEMPLATE_HERMES2: return HERMES2_SYSTEM;
    case TEMPLATE_INTERNVL2_5: return INTERNVL2_5_SYSTEM;
    default: return "";
    }
}

TemplateKind template_parse(const char *name) {
    for (int k = 0; name && k < N_TEMPLATE_KINDS; k++)
        if (strcmp(name, template_names[k]) == 0) return (TemplateKind)k;
    fatal("unknown chat template \"%s\" (want plain, chatml, hyperclovax, vicuna_v1, hermes2, internvl2_5, idefics3, "
          "llava_hf or internvl_hf)",
          name ? name : "(null)");
}

const char *template_name(TemplateKind kind) {
    return kind >= 0 && kind < N_TEMPLATE_KINDS ? template_names[kind] : "?";
}

static int need_token(const Tokenizer *tok, TemplateKind kind, const char *s) {
    int id = tokenizer_token_id(tok, s);
    if (id < 0) fatal("chat template %s needs the token %s, which the tokenizer lacks", template_name(kind), s);
    return id;
}

Template *template_new(TemplateKind kind, const Tokenizer *tok, const char *system, int eos_id) {
    CHECK(tok != NULL, "template_new needs a tokenizer");
    if ((unsigned)kind >= N_TEMPLATE_KINDS) fatal("unknown chat template kind %d", (int)kind);
    if (system && strstr(system, IMAGE_TAG))
        fatal("chat template %s: the system prompt holds \"<image>\" (the image slot goes in a human turn)",
              template_name(kind));
    Template *t = xcalloc(1, sizeof *t);
    t->kind = kind;
    t->tok = tok;
    t->system = system ? xstrdup(system) : NULL;
    t->eos = t->bos = t->im_start = t->im_end = t->endofturn = t->eou = -1;
    if (kind == TEMPLATE_PLAIN || kind == TEMPLATE_VICUNA_V1 || kind == TEMPLATE_LLAVA_HF) {
        if (eos_id >= 0) {
            if (eos_id >= tokenizer_vocab_size(tok))
                fatal("chat template %s: eos token id %d is not in the tokenizer (%d ids)", template_name(kind), eos_id,
                      tokenizer_vocab_size(tok));
            t->eos = eos_id;
        } else {
            for (size_t i = 0; i < sizeof EOS_CANDIDATES / sizeof *EOS_CANDIDATES && t->eos < 0; i++)
                t->eos = tokenizer_token_id(tok, EOS_CANDIDATES[i]);
            if (t->eos < 0)
                fatal("chat template %s needs an end token: the tokenizer has none of </s> <|endoftext|> "
                      "<|end_of_text|> <eos>; give the LLM's eos_token_id", template_name(kind));
        }
        int bos = tokenizer_token_id(tok, "<s>");
        if (bos >= 0 && tokenizer_is_special(tok, bos)) t->bos = bos;
        t->stop = t->eos;
    } else if (kind == TEMPLATE_IDEFICS3) {
        t->stop = t->eou = need_token(tok, kind, "<end_of_utterance>");
        const char *lead[2] = {"<|im_start|>", "<|begin_of_text|>"};  // SmolVLM's, Idefics3's
        for (int i = 0; i < 2 && t->bos < 0; i++) {
            int id = tokenizer_token_id(tok, lead[i]);
            if (id >= 0 && tokenizer_is_special(tok, id)) t->bos = id;
        }
        if (t->bos < 0)
            fatal("chat template idefics3 needs the leading token <|im_start|> (SmolVLM) or <|begin_of_text|> "
                  "(Idefics3) as a special token, which the tokenizer lacks");
    } else {
        t->im_start = need_token(tok, kind, "<|im_start|>");
        t->im_end = need_token(tok, kind, "<|im_end|>");
        t->stop = t->im_end;
        if (kind == TEMPLATE_HYPERCLOVAX) t->stop = t->endofturn = need_token(tok, kind, "<|endofturn|>");
    }
    return t;
}

void template_free(Template *t) {
    if (!t) return;
    free(t->system);
    free(t);
}

const char *template_system_text(const Template *t) {
    if (t->kind == TEMPLATE_PLAIN) return "";
    if (t->system) return t->system;
    return default_system(t->kind);
}

int template_has_bos(const Template *t) { return t->bos >= 0; }

int template_stop_id(const Template *t) { return t->stop; }

// ---------------------------------------------------------------------------------------------
// pieces

enum { P_TEXT, P_SPECIAL, P_IMAGE };

typedef struct {
    int kind;
    int label;
    int id;         // P_SPECIAL
    const char *s;  // P_TEXT (not NUL-terminated)
    size_t len;
} Piece;

typedef struct {
    Piece *p;
    int n, cap;
    int multi;  // the sample has several images: each <image> stays where it is (content())
} Pieces;

static void push(Pieces *ps, Piece pc) {
    if (pc.kind == P_TEXT && pc.len == 0) return;
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? 2 * ps->cap : 32;
        ps->p = xrealloc(ps->p, (size_t)ps->cap * sizeof *ps->p);
    }
    ps->p[ps->n++] = pc;
}

static void text(Pieces *ps, const char *s, int label) {
    push(ps, (Piece){P_TEXT, label, -1, s, strlen(s)});
}

static void special(Pieces *ps, int id, int label) { push(ps, (Piece){P_SPECIAL, label, id, NULL, 0}); }

// Length of the whitespace character (Python's str.isspace(), see the top of this file) that
// starts s[0..len), 0 when there is none; and of the one that ends it.
static size_t space_at(const unsigned char *s, size_t len) {
    if (len >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0D) || (s[0] >= 0x1C && s[0] <= 0x20))) return 1;
    if (len >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) return 2;
    if (len >= 3) {
        unsigned c = (unsigned)s[0] << 16 | (unsigned)s[1] << 8 | s[2];
        if (c == 0xE19A80 || (c >= 0xE28080 && c <= 0xE2808A) || c == 0xE280A8 || c == 0xE280A9 || c == 0xE280AF ||
            c == 0xE2819F || c == 0xE38080)
            return 3;
    }
    return 0;
}

static size_t space_before(const unsigned char *s, size_t len) {
    for (size_t k = 1; k <= 3 && k <= len; k++) {
        size_t m = space_at(s + len - k, k);
        if (m == k) return k;
    }
    return 0;
}

// the text of a turn holding "<image>" once, as LLaVA's preprocess_multimodal leaves it: the tag
// removed, then the joined text stripped; *a/*na is the part before the tag, *b/*nb the part after
static void strip_around_image(const char *s, const char *img, const char **a, size_t *na, const char **b,
                               size_t *nb) {
    const unsigned char *pa = (const unsigned char *)s, *pb = (const unsigned char *)img + IMAGE_TAG_LEN;
    size_t la = (size_t)(img - s), lb = strlen((const char *)pb), k;
    while ((k = space_at(pa, la)) > 0) pa += k, la -= k;
    if (la == 0)
        while ((k = space_at(pb, lb)) > 0) pb += k, lb -= k;
    while ((k = space_before(pb, lb)) > 0) lb -= k;
    if (lb == 0)
        while ((k = space_before(pa, la)) > 0) la -= k;
    *a = (const char *)pa, *na = la, *b = (const char *)pb, *nb = lb;
}

// 1 when removing the "<image>" at img joins the text on each side into another "<image>"
static int image_rejoined(const char *s, const char *img) {
    char buf[2 * IMAGE_TAG_LEN];
    size_t la = (size_t)(img - s), lb = strlen(img + IMAGE_TAG_LEN);
    size_t ka = la < IMAGE_TAG_LEN - 1 ? la : IMAGE_TAG_LEN - 1, kb = lb < IMAGE_TAG_LEN - 1 ? lb : IMAGE_TAG_LEN - 1;
    memcpy(buf, img - ka, ka);
    memcpy(buf + ka, img + IMAGE_TAG_LEN, kb);
    buf[ka + kb] = 0;
    return strstr(buf, IMAGE_TAG) != NULL;
}

// a turn's text: kept exactly when it has no "<image>"; otherwise the slot, then "\n" and the
// stripped rest when there is any (LLaVA's preprocess_multimodal; at most one "<image>", checked
// before)
static void content(Pieces *ps, const char *s, int label) {
    const char *img = strstr(s, IMAGE_TAG);
    if (!img) {
        text(ps, s, label);
        return;
    }
    if (ps->multi) {  // several images: each slot where its placeholder is, the text kept exactly
        for (; img; s = img + IMAGE_TAG_LEN, img = strstr(s, IMAGE_TAG)) {
            push(ps, (Piece){P_TEXT, label, -1, s, (size_t)(img - s)});
            push(ps, (Piece){P_IMAGE, 0, -1, NULL, 0});
        }
        text(ps, s, label);
        return;
    }
    const char *a, *b;
    size_t na, nb;
    strip_around_image(s, img, &a, &na, &b, &nb);
    push(ps, (Piece){P_IMAGE, 0, -1, NULL, 0});
    if (na + nb == 0) return;
    text(ps, "\n", label);
    push(ps, (Piece){P_TEXT, label, -1, a, na});
    push(ps, (Piece){P_TEXT, label, -1, b, nb});
}

// 1 when s is "<image>" placeholders (one at least) and whitespace: llava_hf renders no text for it
static int images_only(const char *s) {
    if (!strstr(s, IMAGE_TAG)) return 0;
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s), k;
    while (len) {
        if (len >= IMAGE_TAG_LEN && !memcmp(p, IMAGE_TAG, IMAGE_TAG_LEN)) k = IMAGE_TAG_LEN;
        else if ((k = space_at(p, len)) == 0) return 0;
        p += k, len -= k;
    }
    return 1;
}

// idefics3's turn text: as content(), but the slot is followed by the stripped rest directly (its
// chat template renders the content list [image, text] with nothing between them); with several
// images each slot where its placeholder is, the text kept exactly (the content list [text, image,
// image, text, ...] renders each image as "<image>" between its texts)
static void content_tight(Pieces *ps, const char *s, int label) {
    const char *img = strstr(s, IMAGE_TAG);
    if (!img || ps->multi) {
        content(ps, s, label);
        return;
    }
    const char *a, *b;
    size_t na, nb;
    strip_around_image(s, img, &a, &na, &b, &nb);
    push(ps, (Piece){P_IMAGE, 0, -1, NULL, 0});
    push(ps, (Piece){P_TEXT, label, -1, a, na});
    push(ps, (Piece){P_TEXT, label, -1, b, nb});
}

static int count_images(const char *s) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, IMAGE_TAG)) != NULL; p += IMAGE_TAG_LEN) n++;
    return n;
}

enum { R_HUMAN, R_GPT, R_SYSTEM };

static int role_of(const char *r) {
    if (!r) return -1;
    if (strcmp(r, "human") == 0 || strcmp(r, "user") == 0) return R_HUMAN;
    if (strcmp(r, "gpt") == 0 || strcmp(r, "assistant") == 0) return R_GPT;
    if (strcmp(r, "system") == 0) return R_SYSTEM;
    return -1;
}

static int refuse(int code, char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int refuse(int code, char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

// Checks the turns and builds the pieces. prompt: the turns end with a human turn and the
// assistant's opening follows. Returns 0 or a TEMPLATE_ERR_* code.
static int build(const Template *t, const Turn *turns, int n_turns, int prompt, int max_images, Pieces *ps, char *err,
                 size_t errlen) {
    if (n_turns < 0 || (n_turns > 0 && !turns)) return refuse(TEMPLATE_ERR_NO_GPT, err, errlen, "no turns");
    const char *system = t->system;
    int first = 0;
    for (int i = 0; i < n_turns; i++)
        if (role_of(turns[i].role) < 0)
            return refuse(TEMPLATE_ERR_BAD_ROLE, err, errlen, "turn %d has role \"%.40s\" (want human, gpt or system)", i,
                          turns[i].role ? turns[i].role : "(null)");
    int system_turn = n_turns > 0 && role_of(turns[0].role) == R_SYSTEM;
    if (system_turn) {
        system = turns[0].text ? turns[0].text : "";
        first = 1;
    }
    // LLaVA skips the first turn when it is not from the human (once)
    if (first < n_turns && role_of(turns[first].role) == R_GPT) first++;
    int n_gpt = 0;
    for (int i = first; i < n_turns; i++) {
        int want = (i - first) % 2 == 0 ? R_HUMAN : R_GPT;
        int r = role_of(turns[i].role);
        if (r != want)
            return refuse(TEMPLATE_ERR_ORDER, err, errlen, "turn %d is %s where a %s turn belongs", i, turns[i].role,
                          want == R_HUMAN ? "human" : "gpt");
        n_gpt += r == R_GPT;
    }
    int n_conv = n_turns - first;
    if (prompt && (n_conv == 0 || role_of(turns[n_turns - 1].role) != R_HUMAN))
        return refuse(TEMPLATE_ERR_ORDER, err, errlen, "a prompt must end with a human turn");
    if (!prompt && n_gpt == 0) return refuse(TEMPLATE_ERR_NO_GPT, err, errlen, "no gpt turn");
    if (system_turn && strstr(system, IMAGE_TAG))
        return refuse(TEMPLATE_ERR_IMAGES, err, errlen, "the system turn holds <image>");
    int images = 0;
    for (int i = first; i < n_turns; i++) images += turns[i].text ? count_images(turns[i].text) : 0;
    if (images > max_images)
        return refuse(TEMPLATE_ERR_IMAGES, err, errlen, "%d <image> placeholders (at most %d)", images, max_images);
    ps->multi = images > 1;
    for (int i = first; i < n_turns && images == 1; i++) {
        const char *img = turns[i].text ? strstr(turns[i].text, IMAGE_TAG) : NULL;
        if (img && !(t->kind == TEMPLATE_PLAIN && i == first) && image_rejoined(turns[i].text, img))
            return refuse(TEMPLATE_ERR_IMAGES, err, errlen,
                          "turn %d: removing its <image> leaves another <image> (LLaVA would make two slots)", i);
    }
    if (t->kind == TEMPLATE_PLAIN && n_conv != (prompt ? 1 : 2))
        return refuse(TEMPLATE_ERR_ORDER, err, errlen, "the plain template takes one human turn%s, not %d turns",
                      prompt ? "" : " and one gpt turn (the caption)", n_conv);
    // the system prompt the template writes: plain writes none
    if (t->kind == TEMPLATE_PLAIN) system = NULL;
    else if (!system) system = default_system(t->kind);

#define TXT(i) (turns[i].text ? turns[i].text : "")
    switch (t->kind) {
    case TEMPLATE_PLAIN:
        if (t->bos >= 0) special(ps, t->bos, 0);
        for (int k = count_images(TXT(first)); k > 0; k--) push(ps, (Piece){P_IMAGE, 0, -1, NULL, 0});
        if (!prompt) {
            content(ps, TXT(first + 1), 1);
            special(ps, t->eos, 1);
        }
        break;
    case TEMPLATE_CHATML:
    case TEMPLATE_HYPERCLOVAX:
    case TEMPLATE_INTERNVL_HF:
        if (system[0]) {
            special(ps, t->im_start, 0);
            text(ps, "system\n", 0);
            text(ps, system, 0);
            special(ps, t->im_end, 0);
            text(ps, "\n", 0);
        }
        for (int i = first; i < n_turns; i++) {
            special(ps, t->im_start, 0);
            if (role_of(turns[i].role) == R_HUMAN) {
                text(ps, "user\n", 0);
                content(ps, TXT(i), 0);
                // internvl_hf writes "<IMG_CONTEXT>\n" for an image, also when no text follows
                if (t->kind == TEMPLATE_INTERNVL_HF && !ps->multi && images_only(TXT(i))) text(ps, "\n", 0);
                special(ps, t->im_end, 0);
            } else {
                text(ps, "assistant\n", 0);
                content(ps, TXT(i), 1);
                special(ps, t->im_end, 1);
                if (t->kind == TEMPLATE_HYPERCLOVAX) special(ps, t->endofturn, 1);
            }
            text(ps, "\n", 0);
        }
        if (prompt) {
            special(ps, t->im_start, 0);
            text(ps, "assistant\n", 0);
        }
        break;
    case TEMPLATE_HERMES2:
    case TEMPLATE_INTERNVL2_5: {
        const char *sep = t->kind == TEMPLATE_INTERNVL2_5 ? "\n" : "";  // after each <|im_end|>, no loss
        special(ps, t->im_start, 0);  // MPT writes the system block even for an empty message
        text(ps, "system\n", 0);
        text(ps, system, 0);
        special(ps, t->im_end, 0);
        text(ps, sep, 0);
        for (int i = first; i < n_turns; i++) {
            special(ps, t->im_start, 0);
            int human = role_of(turns[i].role) == R_HUMAN;
            text(ps, human ? "user\n" : "assistant\n", 0);
            content(ps, TXT(i), !human);
            special(ps, t->im_end, !human);
            text(ps, sep, 0);
        }
        if (prompt) {
            special(ps, t->im_start, 0);
            text(ps, "assistant\n", 0);
        }
        break;
    }
    case TEMPLATE_IDEFICS3:
        special(ps, t->bos, 0);
        if (system[0]) {
            text(ps, "System: ", 0);
            text(ps, system, 0);
            special(ps, t->eou, 0);
            text(ps, "\n", 0);
        }
        for (int i = first; i < n_turns; i++) {
            int human = role_of(turns[i].role) == R_HUMAN;
            // the role, then ":" before an image (the turn's first content) or ": " before text;
            // an answer's space is labelled with it (the prompt ends with "Assistant:"). One image
            // opens its turn (LLaVA's normal form); several stay where they are
            int img_first = ps->multi ? !strncmp(TXT(i), IMAGE_TAG, IMAGE_TAG_LEN) : strstr(TXT(i), IMAGE_TAG) != NULL;
            text(ps, human ? "User:" : "Assistant:", 0);
            if (!img_first) text(ps, " ", !human);
            content_tight(ps, TXT(i), !human);
            special(ps, t->eou, !human);
            text(ps, "\n", 0);
        }
        if (prompt) text(ps, "Assistant:", 0);
        break;
    case TEMPLATE_VICUNA_V1:
        if (t->bos >= 0) special(ps, t->bos, 0);
        if (system[0]) {
            text(ps, system, 0);
            text(ps, " ", 0);
        }
        for (int i = first; i < n_turns; i++) {
            if (role_of(turns[i].role) == R_HUMAN) {
                text(ps, "USER: ", 0);
                content(ps, TXT(i), 0);
                text(ps, " ", 0);
            } else {
                text(ps, "ASSISTANT:", 0);
                text(ps, " ", 1);
                content(ps, TXT(i), 1);
                special(ps, t->eos, 1);
            }
        }
        if (prompt) text(ps, "ASSISTANT:", 0);
        break;
    case TEMPLATE_LLAVA_HF:
        // the chat template: a system message's text + " " (no role), then per turn the role
        // upper-cased + ": ", the images ("<image>\n" each), the text + " " (none without text)
        if (t->bos >= 0) special(ps, t->bos, 0);
        if (system[0]) {
            text(ps, system, 0);
            text(ps, " ", 0);
        }
        for (int i = first; i < n_turns; i++) {
            int human = role_of(turns[i].role) == R_HUMAN;
            text(ps, human ? "USER:" : "ASSISTANT:", 0);
            text(ps, " ", !human);
            content(ps, TXT(i), !human);
            if (images_only(TXT(i))) {
                if (!ps->multi) text(ps, "\n", 0);  // content() wrote the slot alone; several are kept as written
            } else {
                text(ps, " ", 0);
            }
        }
        if (prompt) text(ps, "ASSISTANT:", 0);
        break;
    case N_TEMPLATE_KINDS: break;
    }
#undef TXT
    return 0;
}

// ---------------------------------------------------------------------------------------------
// encoding

typedef struct {
    int *ids;
    uint8_t *mask;
    int n, cap;
} Out;

static void out_push(Out *o, int id, int label) {
    if (o->n == o->cap) {
        o->cap = o->cap ? 2 * o->cap : 256;
        o->ids = xrealloc(o->ids, (size_t)o->cap * sizeof *o->ids);
        o->mask = xrealloc(o->mask, (size_t)o->cap);
    }
    o->ids[o->n] = id;
    o->mask[o->n++] = (uint8_t)label;
}

// appends up to max bytes of s to dst (of cap), escaping newlines, tabs and quotes, cut at a
// UTF-8 character boundary
static void snippet(char *dst, size_t cap, const char *s, size_t len, size_t max, int from_end) {
    if (len > max) {
        size_t start = from_end ? len - max : 0, end = from_end ? len : max;
        if (from_end)
            while (start < len && ((unsigned char)s[start] & 0xC0) == 0x80) start++;
        else
            while (end > 0 && ((unsigned char)s[end] & 0xC0) == 0x80) end--;
        s += start;
        len = end - start;
    }
    size_t n = strlen(dst);
    for (size_t i = 0; i < len && n + 3 < cap; i++) {
        char c = s[i];
        if (c == '\n' || c == '\t' || c == '"' || c == '\\') {
            dst[n++] = '\\';
            dst[n++] = c == '\n' ? 'n' : c == '\t' ? 't' : c;
        } else {
            dst[n++] = c;
        }
    }
    dst[n] = 0;
}

// Encodes the text pieces p[0..n) (one run between specials / the slot) into o. Returns 0, or
// TEMPLATE_ERR_RETOKENIZE when the run holds a loss boundary that falls inside a token.
static int encode_run(const Tokenizer *tok, const Piece *p, int n, Out *o, char *err, size_t errlen) {
    size_t total = 0;
    int uniform = 1;
    for (int i = 0; i < n; i++) {
        total += p[i].len;
        uniform &= p[i].label == p[0].label;
    }
    char *joined = xmalloc(total + 1);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        memcpy(joined + at, p[i].s, p[i].len);
        at += p[i].len;
    }
    joined[total] = 0;
    int *whole;
    char terr[200];
    int nw = tokenizer_encode_checked(tok, joined, total, 0, &whole, terr, sizeof terr);
    if (nw < 0) {  // this sample's text, not the tokenizer, is at fault: the caller skips it
        free(joined);
        return refuse(TEMPLATE_ERR_TOKENIZER, err, errlen, "%s", terr);
    }
    if (uniform) {
        for (int i = 0; i < nw; i++) out_push(o, whole[i], p[0].label);
        free(whole);
        free(joined);
        return 0;
    }
    // one label per part: encode the parts alone, compare with the whole run
    int start = o->n, rc = 0;
    size_t part_at = 0, bad_at = 0;
    int k = 0;
    for (int i = 0; i < n;) {
        int j = i;
        size_t len = 0;
        while (j < n && p[j].label == p[i].label) len += p[j++].len;
        int *ids;
        int m = tokenizer_encode_checked(tok, joined + part_at, len, 0, &ids, terr, sizeof terr);
        if (m < 0) {
            o->n = start;
            free(whole);
            free(joined);
            return refuse(TEMPLATE_ERR_TOKENIZER, err, errlen, "%s", terr);
        }
        for (int q = 0; q < m; q++) {
            if (rc == 0 && (k >= nw || ids[q] != whole[k])) {
                rc = TEMPLATE_ERR_RETOKENIZE;
                // the boundary nearest the first differing token: before this part when the
                // part's first token differs, else after it
                bad_at = (q == 0 && part_at > 0) ? part_at : part_at + len;
            }
            k++;
            out_push(o, ids[q], p[i].label);
        }
        free(ids);
        part_at += len;
        i = j;
    }
    if (rc == 0 && k != nw) {
        rc = TEMPLATE_ERR_RETOKENIZE;
        bad_at = total;
    }
    if (rc) {
        o->n = start;
        if (bad_at >= total && total > 0) {
            // the differing token is past the end: report the last boundary
            bad_at = 0;
            size_t a = 0;
            for (int i = 0; i + 1 < n; i++) {
                a += p[i].len;
                if (p[i + 1].label != p[i].label) bad_at = a;
            }
        }
        char msg[160] = "a loss boundary falls inside a token: \"";
        snippet(msg, sizeof msg, joined, bad_at, 24, 1);
        snippet(msg, sizeof msg, "|", 1, 1, 0);
        snippet(msg, sizeof msg, joined + bad_at, total - bad_at, 24, 0);
        refuse(rc, err, errlen, "%s\" tokenises differently whole than split there", msg);
    }
    free(whole);
    free(joined);
    return rc;
}

static int encode_pieces(const Template *t, const Pieces *ps, Out *o, int *image_pos, int *n_images, char *err,
                         size_t errlen) {
    *n_images = 0;
    for (int i = 0; i < ps->n;) {
        const Piece *p = &ps->p[i];
        if (p->kind == P_SPECIAL) {
            out_push(o, p->id, p->label);
            i++;
        } else if (p->kind == P_IMAGE) {
            image_pos[(*n_images)++] = o->n;  // build() refused more than the caller's room
            i++;
        } else {
            int j = i;
            while (j < ps->n && ps->p[j].kind == P_TEXT) j++;
            int rc = encode_run(t->tok, p, j - i, o, err, errlen);
            if (rc) return rc;
            i = j;
        }
    }
    return 0;
}

int template_encode_images(const Template *t, const Turn *turns, int n_turns, int **ids, uint8_t **mask, int *image_pos,
                           int max_images, int *n_images, char *err, size_t errlen) {
    *ids = NULL;
    *mask = NULL;
    *n_images = 0;
    if (err && errlen) err[0] = 0;
    Pieces ps = {0};
    Out o = {0};
    int rc = build(t, turns, n_turns, 0, max_images, &ps, err, errlen);
    if (rc == 0) rc = encode_pieces(t, &ps, &o, image_pos, n_images, err, errlen);
    if (rc == 0) {
        int labelled = 0;
        for (int i = 0; i < o.n; i++) labelled += o.mask[i];
        if (labelled == 0) rc = refuse(TEMPLATE_ERR_EMPTY, err, errlen, "no token carries loss");
    }
    free(ps.p);
    if (rc) {
        free(o.ids);
        free(o.mask);
        *n_images = 0;
        return rc;
    }
    *ids = o.ids;
    *mask = o.mask;
    return o.n;
}

int template_encode(const Template *t, const Turn *turns, int n_turns, int **ids, uint8_t **mask, int *image_pos,
                    char *err, size_t errlen) {
    int n_images, n = template_encode_images(t, turns, n_turns, ids, mask, image_pos, 1, &n_images, err, errlen);
    if (n_images == 0) *image_pos = -1;
    return n;
}

int template_encode_prompt_images(const Template *t, const Turn *turns, int n_turns, int **ids, int *image_pos,
                                  int max_images, int *n_images, char *err, size_t errlen) {
    *ids = NULL;
    *n_images = 0;
    if (err && errlen) err[0] = 0;
    Pieces ps = {0};
    Out o = {0};
    int rc = build(t, turns, n_turns, 1, max_images, &ps, err, errlen);
    if (rc == 0) {
        // a prompt carries no loss: every run is encoded whole
        for (int i = 0; i < ps.n; i++) ps.p[i].label = 0;
        rc = encode_pieces(t, &ps, &o, image_pos, n_images, err, errlen);
    }
    if (rc == 0 && o.n == 0 && *n_images == 0)
        rc = refuse(TEMPLATE_ERR_EMPTY, err, errlen, "the prompt is empty (the plain template needs an <image>)");
    free(ps.p);
    free(o.mask);
    if (rc) {
        free(o.ids);
        *n_images = 0;
        return rc;
    }
    *ids = o.ids ? o.ids : xmalloc(sizeof(int));
    return o.n;
}

// ---------------------------------------------------------------------------------------------
// recognising a model's own chat template

// The Jinja text with its tags made comparable: inside {{ }} and {% %} whitespace outside string
// literals and the whitespace-control dashes are dropped and double quotes become single ones;
// a newline inside a literal is written as its escape; comments {# #} are dropped; text outside
// tags is kept as it is (it is output). malloc'd.
static char *jinja_normalize(const char *s) {
    size_t n = strlen(s);
    char *out = xmalloc(2 * n + 1), *o = out;  // a newline in a literal becomes the two characters \n
    while (*s) {
        if (s[0] == '{' && s[1] == '#') {
            const char *e = strstr(s + 2, "#}");
            s = e ? e + 2 : s + strlen(s);
            continue;
        }
        if (s[0] == '{' && (s[1] == '{' || s[1] == '%')) {
            char close = s[1] == '{' ? '}' : '%';
            *o++ = *s++;
            *o++ = *s++;
            char quote = 0;
            while (*s) {
                if (!quote && s[0] == close && s[1] == '}') break;
                if (!quote && s[0] == '-' && ((s[1] == close && s[2] == '}') || (o[-1] == '{' || o[-1] == '%'))) {
                    s++;  // whitespace control
                    continue;
                }
                char c = *s++;
                if (quote) {
                    if (c == '\\' && *s) {
                        *o++ = c;
                        c = *s++;
                    } else if (c == quote) {
                        quote = 0;
                        c = '\'';
                    } else if (c == '\n') {  // the same string as the escape \n
                        *o++ = '\\';
                        c = 'n';
                    }
                    *o++ = c;
                    continue;
                }
                if (c == '"' || c == '\'') {
                    quote = c;
                    *o++ = '\'';
                    continue;
                }
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
                *o++ = c;
            }
            if (*s) {
                *o++ = *s++;
                *o++ = *s++;
            }
            continue;
        }
        *o++ = *s++;
    }
    *o = 0;
    return out;
}

// a format by its structure: every piece of `all` in the normalised text and none of `none`
typedef struct {
    TemplateKind kind;
    const char *system;  // NULL: the kind's default; "": none
    const char *all[8];
    const char *none[6];
} TemplateShape;

static const TemplateShape shapes[] = {
    // Qwen2-Instruct's ChatML with its default system prompt
    {TEMPLATE_CHATML, NULL,
     {"{{'<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n'}}", "{{'<|im_start|>'+message['role']+'\\n'",
      "'<|im_end|>'", "{{'<|im_start|>assistant\\n'}}", NULL},
     {"tool", "<image>", "<IMG_CONTEXT>", NULL}},
    // transformers' native InternVL (InternVLProcessor's chat_template): ChatML without a default
    // system prompt, the image as "<IMG_CONTEXT>\n" before the text
    {TEMPLATE_INTERNVL_HF, "",
     {"{{'<|im_start|>'+message['role']+'\\n'}}", "{{'<IMG_CONTEXT>\\n'}}", "{{'<|im_end|>\\n'}}",
      "{{'<|im_start|>assistant\\n'}}", NULL},
     {"tool", "system\\n", NULL}},
    // Idefics3 / SmolVLM: role capitalised, ":" before an image, ": " before text
    {TEMPLATE_IDEFICS3, NULL,
     {"{%formessageinmessages%}", "capitalize", "{{':'}}", "{{':'}}", "{{': '}}", "{{'<image>'}}",
      "<end_of_utterance>\n{%endfor%}", "{{'Assistant:'}}"},
     {"tool", "<|im_end|>", "system", NULL}},
    // llava-hf (LlavaForConditionalGeneration): role upper-cased + ": ", images first, each text + " "
    {TEMPLATE_LLAVA_HF, NULL,
     {"{%formessageinmessages%}", "{{message['role'].upper()+': '}}", "{{'<image>\\n'}}", "{{content['text']+' '}}",
      "{{'ASSISTANT:'}}", NULL},
     {"tool", "<|im_start|>", "<|im_end|>", "eos_token", NULL}},
};

int template_recognize(const char *jinja, TemplateKind *kind, const char **system) {
    if (!jinja) return 0;
    char *n = jinja_normalize(jinja);
    int found = -1;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0] && found < 0; i++) {
        int ok = 1;
        for (int j = 0; ok && j < 8 && shapes[i].all[j]; j++) ok = strstr(n, shapes[i].all[j]) != NULL;
        for (int j = 0; ok && j < 6 && shapes[i].none[j]; j++) ok = strstr(n, shapes[i].none[j]) == NULL;
        // idefics3: the leading literal is one the kind writes
        if (ok && shapes[i].kind == TEMPLATE_IDEFICS3)
            ok = !strncmp(n, "<|im_start|>{%for", 17) || !strncmp(n, "<|begin_of_text|>{%for", 22);
        if (ok) found = (int)i;
    }
    free(n);
    if (found < 0) return 0;
    *kind = shapes[found].kind;
    *system = shapes[found].system;
    return 1;
}

int template_encode_prompt(const Template *t, const Turn *turns, int n_turns, int **ids, int *image_pos, char *err,
                           size_t errlen) {
    int n_images, n = template_encode_prompt_images(t, turns, n_turns, ids, image_pos, 1, &n_images, err, errlen);
    if (n_images == 0) *image_pos = -1;
    return n;
}
