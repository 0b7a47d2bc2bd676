#!/usr/bin/env python3
"""Generate the chat-template fixtures that tests/test_template.c checks data/template.c against.

    python3 scripts/make_template_fixtures.py [--out tests/fixtures/templates] [--corpus data/corpus]

Needs only the Hugging Face `tokenizers` package (tested with 0.23). Writes:

  tokenizer.json  a byte-level BPE tokenizer of 1000 tokens trained on svlm's corpus (data/corpus
                  en.txt, ko.txt, vi.txt, fed whole so that "\\n\\n" merges) and a few chat lines
                  written here, with Qwen2's pipeline: NFC, Split(Qwen2 regex, Isolated),
                  ByteLevel(add_prefix_space=False, use_regex=False), ByteLevel decoder and
                  post_processor ByteLevel(trim_offsets=False); special tokens after the vocab:
                  <|endoftext|> <|im_start|> <|im_end|> <|endofturn|> (no <s>, so no bos).
  expected.json   for every (conversation, template) pair: the rendered text, the token ids, the
                  loss mask (a string of 0/1) and image_pos, or the error the C code must return;
                  and for every template the generation prompt of conversations ending in a
                  human turn. Each conversation also lists "answers": the text of each gpt turn
                  that is kept, as rewritten, with the slot left out (what its loss covers); and
                  "python_whitespace" lists the code points str.strip() removes.

The reference is written independently of the C code's piece lists:
  0. the turns are taken as LLaVA takes them (llava/train/train.py): a first system turn is the
     system prompt (svlm's convention); then a first gpt turn is dropped, once (preprocess_v1:
     "Skip the first one if it is not from human"); every other turn that holds "<image>" goes
     through LLaVA's preprocess_multimodal code, copied verbatim (llava_multimodal below: the tag
     removed, Python's own str.strip(), the tag put first followed by "\n"), except plain's human
     turn, which preprocess_plain replaces by "<image>" alone. svlm's own refusals: more than one
     "<image>" in the kept turns (counted before the rewrite), one in the system turn, or a
     rewritten turn that holds two (the removal joined "<ima" and "ge>");
  1. each template is rendered as ONE string by plain string formatting (special tokens written
     as their text, the image as "<image>"), recording three kinds of character spans: the
     labelled spans (assistant text and its end token(s), or plain's caption and end token), the
     special tokens the template wrote, and the image placeholder;
  2. the string is split at the image placeholder and each side is encoded by `tokenizers`
     (Tokenizer.encode, add_special_tokens=False), which finds the special tokens in the text;
  3. a token carries loss iff its character span (Encoding.offsets) lies inside a labelled span.
     A token that overlaps a labelled span without lying inside it means the loss boundary falls
     inside a token: the sample cannot be split there and the expected result is
     TEMPLATE_ERR_RETOKENIZE.
Special-token text typed inside user or assistant content must stay plain text (the C code
encodes content with allow_special = 0), but step 2 would match it as a special token. For
conversations whose content holds such text the reference instead splits the rendered string at
the special tokens the TEMPLATE wrote (known from step 1) and encodes each text run with a copy
of the tokenizer whose encode_special_tokens is set (specials not recognised), offsets shifted
back into the whole string. For every other conversation both ways are computed and must agree.
As a further self-check, the script encodes the text between every pair of boundaries (special
tokens, the image, loss-span edges) separately and asserts the concatenation equals the reference
ids exactly when no token straddles a loss boundary, which is the check the C code makes.

Rerunning rewrites the same files (training is deterministic).
"""
import argparse
import json
import os

from pyreq import require  # noqa: E402

require("tokenizers")

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|endofturn|>"]
VOCAB = 1000
IMAGE = "<image>"

CHATML_SYSTEM = "You are a helpful assistant."
VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
# the end token template_new picks when eos_id is -1 (first of these the tokenizer has)
EOS_CANDIDATES = ["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"]

# a few lines of chat-like text so that the template words get merges of their own
CHAT_TEXT = """<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
What is in the picture? Describe the image in detail.<|im_end|>
<|im_start|>assistant
The picture shows a cat sleeping on a red sofa next to a window.<|im_end|>
A chat between a curious human and an artificial intelligence assistant. USER: What color is the sofa? ASSISTANT: The sofa is red.
USER: How many people are in the photo? ASSISTANT: There are two people standing near the bus stop.
Ảnh này chụp một con mèo đang ngủ trên ghế sofa màu đỏ. Bức ảnh có gì? Hãy mô tả bức ảnh.
이 사진에 무엇이 있나요? 고양이가 빨간 소파 위에서 자고 있습니다. 사진을 자세히 설명해 주세요.

A dog runs along the beach at sunset.

Two children play football in a park.
"""

CONVERSATIONS = [
    ("image_first", [
        ("human", "<image>\nWhat is in the picture?"),
        ("gpt", "A cat is sleeping on a red sofa."),
        ("human", "What color is the sofa?"),
        ("gpt", "The sofa is red."),
    ]),
    ("image_end", [
        ("human", "Describe this photo in one sentence.\n<image>"),
        ("gpt", "Two children play football in a park."),
    ]),
    ("image_middle", [
        ("user", "Look at this <image> and tell me what time it is."),
        ("assistant", "The clock on the wall shows ten past three."),
    ]),
    ("image_later_turn", [
        ("human", "Hello! Can you help me with a photo?"),
        ("gpt", "Of course. Please send the image."),
        ("human", "Here it is:\n<image>\nWhat does the sign say?"),
        ("gpt", "The sign says \"No parking\"."),
    ]),
    ("text_only", [
        ("human", "What is the capital of Vietnam?"),
        ("gpt", "The capital of Vietnam is Hà Nội."),
        ("human", "And of Korea?"),
        ("gpt", "Seoul (서울) is the capital of South Korea."),
    ]),
    ("custom_system", [
        ("system", "Bạn là một trợ lý hữu ích. Hãy trả lời ngắn gọn."),
        ("human", "<image>\nBức ảnh có gì?"),
        ("gpt", "Một con mèo đang ngủ trên ghế sofa màu đỏ."),
    ]),
    ("literal_specials", [
        ("human", "<image>\nPlease repeat: <|im_end|>\n<|im_start|>assistant\n<|endoftext|> and <|endofturn|>"),
        ("gpt", "You typed <|im_end|> and <|endofturn|>, which are just text here."),
    ]),
    ("korean", [
        ("human", "<image>\n이 사진에 무엇이 있나요? 자세히 설명해 주세요."),
        ("gpt", "고양이가 빨간 소파 위에서 자고 있습니다.\n창문 옆에 화분도 보입니다."),
        ("human", "고양이는 무슨 색인가요?"),
        ("gpt", "고양이는 회색과 흰색입니다."),
    ]),
    ("vietnamese", [
        ("human", "Hãy mô tả bức ảnh này.\n<image>"),
        ("gpt", "Bức ảnh chụp một con chó đang chạy dọc bãi biển lúc hoàng hôn."),
    ]),
    ("whitespace", [
        ("human", "  <image>  what   is this?  "),
        ("gpt", "  A  bus\tstop,  with spaces kept.  \n"),
        ("human", "\n\nAnd now?\n"),
        ("gpt", "Still\n\nthe same."),
    ]),
    # the answer starts with a newline: after "<|im_start|>assistant\n" the two newlines are one
    # pre-token ("\n\n" is a merge), so a token straddles the loss boundary in the ChatML
    # templates (TEMPLATE_ERR_RETOKENIZE); vicuna_v1 and plain have no boundary there.
    ("answer_starts_newline", [
        ("human", "<image>\nList two fruits."),
        ("gpt", "\n1. Apple\n2. Mango"),
    ]),
    # LLaVA's preprocess_multimodal: the slot goes first in its turn, then "\n" and the rest
    # stripped with Python's str.strip() (Unicode whitespace: U+3000, U+00A0, U+2003, U+0085 ...)
    ("image_spaces", [
        ("human", "  \n <image> \n What is in this photo?  \n\t"),
        ("gpt", "A bus stop."),
    ]),
    ("image_unicode_space", [
        ("human", "\u3000Hãy mô tả bức ảnh này.\u00a0<image>\u3000\u2003\u0085\u2028\u1680\u001f"),
        ("gpt", "Một con chó trên bãi biển."),
    ]),
    ("image_inner_unicode_space", [
        ("human", "사진\u3000<image>\u00a0설명"),
        ("gpt", "고양이입니다."),
    ]),
    # not whitespace for str.isspace(): zero-width space, Mongolian vowel separator, BOM
    ("image_not_space", [
        ("human", "\u200b<image>\u180e What is this?\ufeff"),
        ("gpt", "A sign."),
    ]),
    ("image_alone", [
        ("human", "<image>"),
        ("gpt", "A red bus on a wet street."),
    ]),
    ("image_space_only", [
        ("human", " \u00a0<image>\u3000\n"),
        ("gpt", "Two children play football in a park."),
    ]),
    # removing the tag joins "<ima" and "ge>" into a second "<image>": LLaVA would make two
    # slots (refused), except in plain, whose human turn becomes the slot alone
    ("image_rejoined", [
        ("human", "<ima<image>ge> What is this?"),
        ("gpt", "A tag."),
    ]),
    # a gpt turn holding the image is rewritten too (preprocess_multimodal rewrites every turn)
    ("image_in_answer", [
        ("human", "Show me the picture again."),
        ("gpt", "Here it is: <image> "),
    ]),
    # LLaVA drops a first turn that is not from the human, once
    ("gpt_first", [
        ("gpt", "Hi! Send me a picture."),
        ("human", "What animal is this? <image>"),
        ("gpt", "A dog."),
    ]),
    ("system_then_gpt_first", [
        ("system", "Be brief."),
        ("gpt", "Hello."),
        ("human", "Describe.\n<image>"),
        ("gpt", "A cat on a sofa."),
        ("human", "Its colour?"),
        ("gpt", "Grey."),
    ]),
    # the dropped turn takes its "<image>" with it: no slot
    ("gpt_first_image", [
        ("gpt", "<image>\nLook at this."),
        ("human", "What is it?"),
        ("gpt", "A cat."),
    ]),
    ("gpt_first_twice", [
        ("gpt", "Hello."),
        ("gpt", "Hello again."),
        ("human", "<image>\nHi."),
        ("gpt", "A cat."),
    ]),
    ("system_image", [
        ("system", "Look at <image> carefully."),
        ("human", "What is it?"),
        ("gpt", "A cat."),
    ]),
]

# conversations ending in a human turn: generation prompts
PROMPTS = [
    ("prompt_image", [("human", "<image>\nWhat is in the picture?")]),
    ("prompt_history", [
        ("system", "Trả lời bằng tiếng Việt."),
        ("human", "Xin chào!"),
        ("gpt", "Chào bạn! Tôi có thể giúp gì?"),
        ("human", "Ảnh này chụp gì?\n<image>"),
    ]),
    ("prompt_text", [("human", "이 사진에 무엇이 있나요?")]),
    ("prompt_image_end", [("human", "What is this?\u3000<image>\n")]),
    ("prompt_gpt_first", [("gpt", "Hello! Send a photo."), ("human", " <image> Describe it.")]),
]

TEMPLATES = ["plain", "chatml", "hyperclovax", "vicuna_v1"]
HUMAN = {"human", "user"}
GPT = {"gpt", "assistant"}


class Refused(Exception):
    pass


class Render:
    """The rendered string and its character spans."""

    def __init__(self):
        self.s = ""
        self.labelled = []   # (start, end)
        self.specials = []   # (start, end) of special tokens written by the template
        self.image = None    # (start, end) of "<image>"

    def text(self, s, label=False):
        a = len(self.s)
        self.s += s
        if label and s:
            self.labelled.append((a, len(self.s)))
        if IMAGE in s:
            i = a + s.index(IMAGE)
            self.image = (i, i + len(IMAGE))

    def special(self, tok, label=False):
        a = len(self.s)
        self.s += tok
        self.specials.append((a, len(self.s)))
        if label:
            self.labelled.append((a, len(self.s)))


def llava_multimodal(value):
    """LLaVA's preprocess_multimodal on one turn (llava/train/train.py), verbatim."""
    if IMAGE in value:
        value = value.replace(IMAGE, '').strip()
        value = IMAGE + '\n' + value
        value = value.strip()
    return value


def kept_turns(turns):
    """(system or None, the turns LLaVA keeps): a first system turn is svlm's system prompt, then
    a first turn that is not from the human is skipped, once, as LLaVA's preprocess_v1 does."""
    system = None
    if turns and turns[0][0] == "system":
        system = turns[0][1]
        turns = turns[1:]
    if turns and turns[0][0] in GPT:
        turns = turns[1:]
    return system, turns


def answers_of(turns):
    """the text of each kept gpt turn as rewritten, without the slot: what its loss covers"""
    return [llava_multimodal(t).replace(IMAGE, "") for r, t in kept_turns(turns)[1] if r in GPT]


def check_turns(turns, prompt, template):
    """Validation in the C code's order: roles, alternation starting with human, a gpt turn,
    images; then the turns rewritten as LLaVA rewrites them."""
    for role, _ in turns:
        if role not in HUMAN | GPT | {"system"}:
            raise Refused("bad_role")
    system, turns = kept_turns(turns)
    for i, (role, _) in enumerate(turns):
        if role not in (HUMAN if i % 2 == 0 else GPT):
            raise Refused("order")
    if prompt and (not turns or turns[-1][0] not in HUMAN):
        raise Refused("order")
    if not prompt and not any(r in GPT for r, _ in turns):
        raise Refused("no_gpt")
    if system is not None and IMAGE in system:
        raise Refused("images")
    if sum(t.count(IMAGE) for _, t in turns) > 1:
        raise Refused("images")
    out = []
    for i, (role, text) in enumerate(turns):
        if template == "plain" and i == 0:
            # preprocess_plain: the human turn becomes "<image>" (nothing when it has none)
            out.append((role, IMAGE if IMAGE in text else ""))
            continue
        text = llava_multimodal(text)
        if text.count(IMAGE) > 1:
            raise Refused("images")
        out.append((role, text))
    if template == "plain":
        system = None  # plain writes no system prompt
    return system, out


def render(template, turns, eos_tok, has_bos, prompt=False):
    system, turns = check_turns(turns, prompt, template)
    r = Render()
    if template == "plain":
        # LLaVA preprocess_plain: the human turn becomes "<image>", then the caption and the end
        # token (LLaVA's "\n" replaced by the LLM's eos); one human turn and one gpt turn only
        if len(turns) != (1 if prompt else 2):
            raise Refused("order")
        if has_bos:
            r.special("<s>")
        r.text(turns[0][1])
        if not prompt:
            r.text(turns[1][1], label=True)
            r.special(eos_tok, label=True)
    elif template in ("chatml", "hyperclovax"):
        if system is None:
            system = CHATML_SYSTEM if template == "chatml" else ""
        if system:
            r.special("<|im_start|>")
            r.text("system\n" + system)
            r.special("<|im_end|>")
            r.text("\n")
        for role, text in turns:
            r.special("<|im_start|>")
            if role in HUMAN:
                r.text("user\n" + text)
                r.special("<|im_end|>")
            else:
                r.text("assistant\n")
                r.text(text, label=True)
                r.special("<|im_end|>", label=True)
                if template == "hyperclovax":
                    r.special("<|endofturn|>", label=True)
            r.text("\n")
        if prompt:
            r.special("<|im_start|>")
            r.text("assistant\n")
    elif template == "vicuna_v1":
        # LLaVA conv_vicuna_v1.get_prompt(): system + " " + "USER: q " + "ASSISTANT: a" + "</s>" ...
        # with the LLM's eos for "</s>"; the space after "ASSISTANT:" belongs to the answer
        if system is None:
            system = VICUNA_SYSTEM
        if has_bos:
            r.special("<s>")
        if system:
            r.text(system + " ")
        for role, text in turns:
            if role in HUMAN:
                r.text("USER: " + text + " ")
            else:
                r.text("ASSISTANT:")
                r.text(" " + text, label=True)
                r.special(eos_tok, label=True)
        if prompt:
            r.text("ASSISTANT:")
    else:
        raise ValueError(template)
    return r


def encode_span(tok, s, offset):
    if not s:
        return [], []
    e = tok.encode(s, add_special_tokens=False)
    return list(e.ids), [(a + offset, b + offset) for a, b in e.offsets]


def tokenise_sides(tok, r):
    """Way A: each side of the image through tokenizers, specials found in the text."""
    cuts = [(0, len(r.s))] if r.image is None else [(0, r.image[0]), (r.image[1], len(r.s))]
    ids, offs, image_pos = [], [], -1
    for k, (a, b) in enumerate(cuts):
        if k == 1:
            image_pos = len(ids)
        i, o = encode_span(tok, r.s[a:b], a)
        ids += i
        offs += o
    return ids, offs, image_pos


def tokenise_runs(tok, plain, r):
    """Way B: split at the template's special tokens and the image; text runs with specials off."""
    marks = [(a, b, "special") for a, b in r.specials]
    if r.image:
        marks.append((r.image[0], r.image[1], "image"))
    marks.sort()
    ids, offs, image_pos, pos = [], [], -1, 0
    for a, b, kind in marks + [(len(r.s), len(r.s), "end")]:
        i, o = encode_span(plain, r.s[pos:a], pos)
        ids += i
        offs += o
        if kind == "special":
            ids.append(tok.token_to_id(r.s[a:b]))
            offs.append((a, b))
        elif kind == "image":
            image_pos = len(ids)
        pos = b
    return ids, offs, image_pos


def piecewise(tok, plain, r):
    """The C code's way: every boundary (specials, image, loss-span edges) cut, pieces encoded alone."""
    cuts = {0, len(r.s)}
    for a, b in r.specials + r.labelled + ([r.image] if r.image else []):
        cuts |= {a, b}
    special_at = dict(r.specials)
    ids, pos = [], 0
    for c in sorted(cuts):
        if c <= pos:
            continue
        if pos in special_at:
            ids.append(tok.token_to_id(r.s[pos:special_at[pos]]))
        elif not (r.image and pos == r.image[0]):
            ids += plain.encode(r.s[pos:c], add_special_tokens=False).ids
        pos = c
    return ids


def mask_of(offs, labelled):
    mask, straddle = [], False
    for a, b in offs:
        inside = any(la <= a and b <= lb for la, lb in labelled)
        overlap = any(a < lb and la < b for la, lb in labelled)
        if overlap and not inside:
            straddle = True
        mask.append(1 if inside else 0)
    return mask, straddle


def content_has_special(turns):
    return any(sp in t for _, t in turns for sp in SPECIALS + ["<s>", "</s>"])


def reference(tok, plain, template, turns, eos_tok, has_bos, prompt):
    try:
        r = render(template, turns, eos_tok, has_bos, prompt)
    except Refused as e:
        return {"error": str(e)}
    if prompt:
        r.labelled = []  # a prompt carries no loss: its text is encoded whole between specials
    ids_b, offs_b, pos_b = tokenise_runs(tok, plain, r)
    if content_has_special(turns):
        ids, offs, image_pos = ids_b, offs_b, pos_b
    else:
        ids, offs, image_pos = tokenise_sides(tok, r)
        assert (ids, offs, image_pos) == (ids_b, offs_b, pos_b), (template, r.s)
    mask, straddle = mask_of(offs, r.labelled)
    pieces = piecewise(tok, plain, r)
    if straddle:
        assert pieces != ids, (template, r.s)
        return {"error": "retokenize", "text": r.s}
    assert pieces == ids, ("no token straddles a boundary, yet the pieces differ", template, r.s)
    if prompt:
        if not ids and image_pos < 0:
            return {"error": "empty", "text": r.s}  # nothing to condition on (plain without image)
        return {"text": r.s, "ids": ids, "image_pos": image_pos}
    # every labelled span is covered exactly by labelled tokens
    covered = set()
    for (a, b), m in zip(offs, mask):
        if m:
            covered |= set(range(a, b))
    slot = set(range(*r.image)) if r.image else set()
    assert covered == set(c for la, lb in r.labelled for c in range(la, lb)) - slot, (template, r.s)
    return {"text": r.s, "ids": ids, "mask": "".join(map(str, mask)), "image_pos": image_pos}


def train(corpus_dir):
    texts = [CHAT_TEXT]
    for name in ["en.txt", "ko.txt", "vi.txt"]:
        with open(os.path.join(corpus_dir, name), encoding="utf-8", newline="") as f:
            texts.append(f.read())
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/templates")
    ap.add_argument("--corpus", default="data/corpus")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(json.loads(train(args.corpus).to_str()), f, ensure_ascii=False, separators=(",", ":"))
    tok = Tokenizer.from_file(path)
    plain = Tokenizer.from_file(path)
    plain.encode_special_tokens = True
    assert tok.token_to_id("ĊĊ") is not None, "\\n\\n must be one token for the retokenize case"

    eos_tok = next(s for s in EOS_CANDIDATES if tok.token_to_id(s) is not None)
    has_bos = tok.token_to_id("<s>") is not None
    out = {
        "tokenizer": "tokenizer.json",
        "eos": eos_tok, "eos_id": tok.token_to_id(eos_tok),
        "chatml_system": CHATML_SYSTEM, "vicuna_system": VICUNA_SYSTEM,
        # what str.strip() removes (this Python's str.isspace()), for the C test's own checks
        "python_whitespace": [c for c in range(0x110000) if chr(c).isspace()],
        "conversations": [], "prompts": [],
    }
    for name, turns in CONVERSATIONS:
        c = {"name": name, "turns": [{"from": a, "value": b} for a, b in turns], "answers": answers_of(turns),
             "expect": {}}
        for t in TEMPLATES:
            c["expect"][t] = reference(tok, plain, t, turns, eos_tok, has_bos, prompt=False)
        out["conversations"].append(c)
    for name, turns in PROMPTS:
        c = {"name": name, "turns": [{"from": a, "value": b} for a, b in turns], "expect": {}}
        for t in TEMPLATES:
            c["expect"][t] = reference(tok, plain, t, turns, eos_tok, has_bos, prompt=True)
        out["prompts"].append(c)
    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")
    for c in out["conversations"] + out["prompts"]:
        print("%-22s %s" % (c["name"], "  ".join("%s:%s" % (t, e.get("error") or len(e["ids"])) for t, e in c["expect"].items())))
    for f in sorted(os.listdir(args.out)):
        print("%-16s %8d bytes" % (f, os.path.getsize(os.path.join(args.out, f))))


if __name__ == "__main__":
    main()
