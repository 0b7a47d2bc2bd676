#!/usr/bin/env python3
"""Generate the chat-format fixtures of the whole-model formats (tests/test_chat_formats.c checks
data/template.c's hermes2, internvl2_5, idefics3 and chatml-without-system against them).

    python3 scripts/make_chat_format_fixtures.py [--out tests/fixtures/chat_formats]

Needs transformers (5.x) and tokenizers. Writes:

  tokenizer.json  the template fixtures' byte-level BPE (tests/fixtures/templates/tokenizer.json,
                  <|endoftext|> <|im_start|> <|im_end|> <|endofturn|>) with the formats' special
                  tokens added: <end_of_utterance> <image> <IMG_CONTEXT> <img> </img>
                  <fake_token_around_image> <global-img> <row_1_col_1> .. <row_6_col_6>
  expected.json   per (format, conversation): the ids and loss mask (a string of 0/1) of the
                  training sample and of the generation prompt (the conversation up to its first
                  human turn), the index of the image slot, and the template kind + system prompt
                  svlm uses for the format; and per known chat_template text, what
                  template_recognize must say (a kind, or refused)

Each format is rendered by the model's own code, never by svlm's piece lists:
  hermes2, internvl2_5   InternVL's conversation templates (conversation.py in InternVL's
                         repository and its HF model repositories: sep_style MPT; "Hermes-2" sep
                         "<|im_end|>", "internvl2_5" sep "<|im_end|>\\n"; system_template
                         "<|im_start|>system\\n{system_message}"), get_prompt() reimplemented below
                         line for line; the question carries "<image>\\n" first as InternVL's
                         chat() puts it
  internvl_hf            transformers' InternVL chat_template (its conversion script's), through
                         PreTrainedTokenizerFast.apply_chat_template, image content first
  smolvlm                SmolVLM's chat_template (Idefics3 / SmolVLM chat_template.json) through
                         apply_chat_template, content lists [image, text]
  llava_hf               llava-hf's chat_template (llava-1.5-7b-hf's chat_template.json) through
                         apply_chat_template, content lists [image, text]; labelled: " " + answer
                         (the space after "ASSISTANT:"); its {% generation %} span is the answer +
                         " ", and that " " starts the next token (" USER" or a lone " "), so the
                         assistant mask transformers derives from it (return_assistant_tokens_mask)
                         is asserted equal to this one but for those tokens
The rendered string is split at the image ("<image>" / "<IMG_CONTEXT>") and each side encoded by
`tokenizers` (add_special_tokens False); a token carries loss iff its characters lie inside a
labelled span: each answer and its end token (idefics3: the space before the answer too). A token
that straddles a span's edge would mean the sample cannot be split there: asserted absent.
"""
import argparse
import json
import os

from pyreq import require  # noqa: E402

require("tokenizers", "transformers")

from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<end_of_utterance>", "<image>", "<IMG_CONTEXT>", "<img>", "</img>", "<fake_token_around_image>",
            "<global-img>"]
# SmolVLM's tokenizer has Idefics3's tile markers as added tokens (its processor writes them as text)
SPECIALS += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]

HERMES2_SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
INTERNVL2_5_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

# transformers' InternVL chat template (the conversion script's, as InternVL*-hf ship it)
INTERNVL_HF_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\n' }}{% endif %}")
# SmolVLM's chat template (chat_template.json of HuggingFaceTB/SmolVLM-*-Instruct)
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == "
    "'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
# Idefics3-8B-Llama3's (the same with <|begin_of_text|> and .capitalize())
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] "
    "== 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
# Qwen2-Instruct's
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}")
# llava-hf's (chat_template.json of llava-hf/llava-1.5-7b-hf, with its {% generation %} tags):
# without its comments, and as shipped
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
LLAVA_HF_TEMPLATE_SHIPPED = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
# templates that are none of svlm's formats: refused
QWEN25_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- endif %}{%- for message in messages %}{{'<|im_start|>' + "
    "message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}{%- endif %}")

CONVERSATIONS = [
    ("en", [("human", "<image>\nWhat is in the picture?"), ("gpt", "A cat is sleeping on a red sofa."),
            ("human", "What color is the sofa?"), ("gpt", "The sofa is red.")]),
    ("vi", [("system", "Bạn là một trợ lý hữu ích."), ("human", "<image>\nBức ảnh có gì?"),
            ("gpt", "Một con mèo đang ngủ trên ghế sofa màu đỏ.")]),
    ("ko", [("human", "<image>\n이 사진에 무엇이 있나요?"), ("gpt", "고양이가 빨간 소파 위에서 자고 있습니다."),
            ("human", "사진을 자세히 설명해 주세요."), ("gpt", "고양이 한 마리가 창가 옆 빨간 소파에서 자고 있습니다.")]),
    ("en_text", [("human", "What is the capital of Vietnam?"), ("gpt", "The capital of Vietnam is Hà Nội.")]),
]


# ---- InternVL's conversation.py, MPT style (get_prompt), for its two templates
def internvl_render(sep, default_system, turns, prompt):
    system = default_system
    msgs = []
    for role, text in turns:
        if role == "system":
            system = text
        else:
            msgs.append(["<|im_start|>user\n" if role == "human" else "<|im_start|>assistant\n", text])
    if prompt:
        msgs.append(["<|im_start|>assistant\n", None])
    ret = "<|im_start|>system\n{system_message}".format(system_message=system) + sep
    spans = []
    for role, message in msgs:
        if message:
            if role.endswith("assistant\n"):
                spans.append((len(ret) + len(role), len(ret) + len(role) + len(message) + len("<|im_end|>")))
            ret += role + message + sep
        else:
            ret += role
    return ret, spans, "<image>"


def content_list(text):
    """LLaVA's "<image>\\n..." as a chat-template content list: the image, then the text"""
    if text.startswith("<image>\n"):
        return [{"type": "image"}, {"type": "text", "text": text[len("<image>\n"):]}]
    return [{"type": "text", "text": text}]


def hf_render(tok, template, turns, prompt, answer_label):
    """apply_chat_template; answer_label(text) is the labelled string of an answer as rendered"""
    role = {"human": "user", "gpt": "assistant", "system": "system"}
    msgs = [{"role": role[r], "content": content_list(t)} for r, t in turns]
    s = tok.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=prompt)
    spans, at = [], 0
    for r, t in turns:
        if r != "gpt":
            continue
        lab = answer_label(t)
        i = s.index(lab, at)
        spans.append((i, i + len(lab)))
        at = i + len(lab)
    return s, spans


def check_generation_mask(hf, tk, turns, s, spans):
    """transformers' assistant mask from llava-hf's {% generation %} tags, on the whole text: the
    tokens of our spans, plus those holding an answer's trailing " " (and nothing else)"""
    role = {"human": "user", "gpt": "assistant", "system": "system"}
    msgs = [{"role": role[r], "content": content_list(t)} for r, t in turns]
    out = hf.apply_chat_template(msgs, chat_template=LLAVA_HF_TEMPLATE_SHIPPED, tokenize=True, return_dict=True,
                                 return_assistant_tokens_mask=True)
    enc = tk.encode(s, add_special_tokens=False)
    assert enc.ids == list(out["input_ids"]), s
    for (a, b), m in zip(enc.offsets, out["assistant_masks"]):
        ours = any(x <= a and b <= y for x, y in spans)
        trailing = any(a <= y < b and s[y] == " " for x, y in spans)  # the answer's " " starts this token
        assert bool(m) == (ours or trailing), (s, a, b, m)


def encode(tk, s, spans, marker):
    """ids, mask and image_pos of s split at marker (each side encoded alone)"""
    parts = s.split(marker)
    assert len(parts) <= 2, s
    ids, mask, image_pos, base = [], [], -1, 0
    for k, part in enumerate(parts):
        if k == 1:
            image_pos = len(ids)
            base += len(marker)
        enc = tk.encode(part, add_special_tokens=False)
        for tid, (a, b) in zip(enc.ids, enc.offsets):
            a, b = a + base, b + base
            inside = any(x <= a and b <= y for x, y in spans)
            straddles = any(a < x < b or a < y < b for x, y in spans)
            assert not straddles, (s, a, b)
            ids.append(tid)
            mask.append("1" if inside else "0")
        base += len(part)
    return ids, "".join(mask), image_pos


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "chat_formats"))
    ap.add_argument("--base", default=os.path.join(here, "..", "tests", "fixtures", "templates", "tokenizer.json"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tk = Tokenizer.from_file(args.base)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok_path = os.path.join(args.out, "tokenizer.json")
    tk.save(tok_path)
    tk = Tokenizer.from_file(tok_path)
    hf = PreTrainedTokenizerFast(tokenizer_file=tok_path)

    cases = []
    for fmt in ("hermes2", "internvl2_5", "internvl_hf", "smolvlm", "llava_hf"):
        for lang, turns in CONVERSATIONS:
            for prompt in (False, True):
                tt = turns
                if prompt:  # up to the first human turn
                    k = next(i for i, (r, _) in enumerate(turns) if r == "human")
                    tt = turns[:k + 1]
                if fmt in ("hermes2", "internvl2_5"):
                    sep, sysd = ("<|im_end|>", HERMES2_SYSTEM) if fmt == "hermes2" else ("<|im_end|>\n", INTERNVL2_5_SYSTEM)
                    s, spans, marker = internvl_render(sep, sysd, tt, prompt)
                    kind, system = fmt, None
                elif fmt == "internvl_hf":
                    s, spans = hf_render(hf, INTERNVL_HF_TEMPLATE, tt, prompt, lambda t: t + "<|im_end|>")
                    marker, kind, system = "<IMG_CONTEXT>\n", "internvl_hf", ""
                elif fmt == "smolvlm":
                    s, spans = hf_render(hf, SMOLVLM_TEMPLATE, tt, prompt, lambda t: " " + t + "<end_of_utterance>")
                    marker, kind, system = "<image>", "idefics3", None
                else:
                    s, spans = hf_render(hf, LLAVA_HF_TEMPLATE_SHIPPED, tt, prompt, lambda t: " " + t)
                    marker, kind, system = "<image>", "llava_hf", None
                    if not prompt:
                        check_generation_mask(hf, tk, tt, s, spans)
                if marker == "<IMG_CONTEXT>\n":  # the chat template writes the image then "\n": svlm's
                    marker = "<IMG_CONTEXT>"     # slot is the token, the "\n" is text after it
                ids, mask, image_pos = encode(tk, s, spans, marker)
                if prompt:
                    assert "1" not in mask
                cases.append({"format": fmt, "lang": lang, "kind": kind, "system": system, "prompt": prompt,
                              "turns": [list(t) for t in tt], "text": s, "ids": ids, "mask": mask,
                              "image_pos": image_pos})
    recognize = [
        {"name": "smolvlm", "jinja": SMOLVLM_TEMPLATE, "kind": "idefics3", "system": None},
        {"name": "idefics3", "jinja": IDEFICS3_TEMPLATE, "kind": "idefics3", "system": None},
        {"name": "internvl_hf", "jinja": INTERNVL_HF_TEMPLATE, "kind": "internvl_hf", "system": ""},
        {"name": "qwen2", "jinja": QWEN2_TEMPLATE, "kind": "chatml", "system": None},
        {"name": "llava_hf", "jinja": LLAVA_HF_TEMPLATE, "kind": "llava_hf", "system": None},
        {"name": "llava_hf_shipped", "jinja": LLAVA_HF_TEMPLATE_SHIPPED, "kind": "llava_hf", "system": None},
        {"name": "qwen2.5_tools", "jinja": QWEN25_TEMPLATE, "kind": None, "system": None},
    ]
    with open(os.path.join(args.out, "expected.json"), "w") as fh:
        json.dump({"cases": cases, "recognize": recognize}, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    print(f"{len(cases)} cases, {len(recognize)} templates to recognise")


if __name__ == "__main__":
    main()
