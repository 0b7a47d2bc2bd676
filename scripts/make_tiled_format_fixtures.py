#!/usr/bin/env python3
"""Whole tiled samples rendered by the models' own processors (tests/test_chat_formats.c builds
the same samples through svlm's chain: template_encode_images -> image_grid -> image_slots_insert
and compares).

    /work/venv/bin/python scripts/make_tiled_format_fixtures.py [--out tests/fixtures/chat_formats]

Needs transformers (5.x), tokenizers, pillow, numpy. Reads chat_formats/tokenizer.json (written by
scripts/make_chat_format_fixtures.py, with the <row_i_col_j> added tokens SmolVLM's tokenizer has)
and writes tiled.json: per case the processor settings, the conversation as svlm reads it (LLaVA
turns), the image sizes, per image the grid the processor chose (rows, cols, thumbnail), and the
processor's input_ids and the loss mask (a string of 0/1) of the training sample, or of the
generation prompt (the conversation up to its first human turn, add_generation_prompt).

  internvl_hf  transformers' InternVL chat template (as in make_chat_format_fixtures.py) through
               apply_chat_template, then InternVLProcessor with GotOcr2ImageProcessorPil
               (crop_to_patches, 28 px tiles, max_patches 6, image_seq_length 2): its text
               expansion <img> <IMG_CONTEXT> x (2 x patches) </img>; the grid is the processor's
               own get_optimal_tiled_canvas (the call its crop_to_patches makes), checked
               against the patches it returned
  smolvlm      SmolVLM's chat template, then Idefics3Processor with Idefics3ImageProcessorPil
               (do_image_splitting, max_image_size 28, longest_edge 112, or 28 for one tile;
               image_seq_len 2); the grid is the rows / cols it returns (return_row_col_info)
  llava_hf     llava-hf's chat template, then LlavaProcessor with CLIPImageProcessorPil (12 px,
               patch 4, CLS dropped: <image> x 9); one tile per image (labelled: " " + answer)

Conversations are content lists; svlm's LLaVA text of a turn: with one image in the whole
conversation, "<image>\\n" + text (LLaVA's normal form, the image first); with several, kept
where it is: internvl_hf's and llava_hf's image renders "<IMG_CONTEXT>\\n" / "<image>\\n", so
"<image>\\n", smolvlm's renders "<image>", so "<image>". Loss mask: the processor's ids are
re-encoded from the expanded text (ids decoded, then encoded with offsets; asserted equal to the
processor's) and a token carries loss iff it lies inside an answer span (internvl_hf: answer +
<|im_end|>; smolvlm: " " + answer + <end_of_utterance>; llava_hf: " " + answer).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyreq import require  # noqa: E402

require("tokenizers", "transformers", "PIL", "numpy")

import numpy as np
from PIL import Image
from transformers import Idefics3Processor, InternVLProcessor, LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (GotOcr2ImageProcessorPil,
                                                                       get_optimal_tiled_canvas)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

from make_chat_format_fixtures import INTERNVL_HF_TEMPLATE, LLAVA_HF_TEMPLATE_SHIPPED, SMOLVLM_TEMPLATE  # noqa: E402

TILE = 28
INTERNVL = {"family": "internvl", "size": TILE, "max_tiles": 6, "tokens": 2, "longest_edge": 0}
IDEFICS3 = {"family": "idefics3", "size": TILE, "max_tiles": 17, "tokens": 2, "longest_edge": 4 * TILE}
IDEFICS3_ONE = {"family": "idefics3", "size": TILE, "max_tiles": 2, "tokens": 2, "longest_edge": TILE}
# llava-hf: CLIP 12 px, patch 4, CLS dropped ("default"): 9 image tokens, one tile
CLIP = {"family": "clip", "size": 12, "max_tiles": 1, "tokens": 9, "longest_edge": 0}

IMG = {"type": "image"}


def T(s):
    return {"type": "text", "text": s}


# (lang, turns as (role, content list)); images are taken in order from the case's sizes
CONVERSATIONS = {
    "en": [("user", [IMG, T("What is written on this page?")]), ("assistant", [T("A receipt from a coffee shop.")]),
           ("user", [T("What is the total?")]), ("assistant", [T("The total is 4.50 dollars.")])],
    "vi": [("system", [T("Bạn là một trợ lý hữu ích.")]), ("user", [IMG, T("Tài liệu này viết gì?")]),
           ("assistant", [T("Đây là hoá đơn của một quán cà phê ở Hà Nội.")])],
    "ko": [("user", [IMG, T("이 문서에 무엇이 쓰여 있나요?")]), ("assistant", [T("커피숍 영수증입니다.")]),
           ("user", [T("합계는 얼마인가요?")]), ("assistant", [T("합계는 4,500원입니다.")])],
    # two images: one per human turn, and two in one turn
    "en_2turns": [("user", [IMG, T("What is on the first page?")]), ("assistant", [T("A table of prices.")]),
                  ("user", [IMG, T("And on this one?")]), ("assistant", [T("A hand-drawn map.")])],
    "vi_2in1": [("user", [IMG, IMG, T("Hai ảnh này khác nhau thế nào?")]),
                ("assistant", [T("Ảnh đầu là bản đồ, ảnh sau là hoá đơn.")])],
    # a turn that is the image alone
    "en_imgonly": [("user", [IMG]), ("assistant", [T("A hand-drawn map of a park.")])],
    "ko_2in1": [("user", [T("비교해 주세요: "), IMG, T(" 그리고 "), IMG]),
                ("assistant", [T("첫 번째는 지도이고 두 번째는 영수증입니다.")])],
}

# (format, prep, lang, image sizes (w, h)): one tile, several, extreme 1x4 / 4x1 aspect
CASES = [
    ("internvl_hf", INTERNVL, "en", [(30, 30)]),        # 1 tile
    ("internvl_hf", INTERNVL, "vi", [(100, 30)]),       # 3x1 + thumbnail
    ("internvl_hf", INTERNVL, "ko", [(60, 60)]),        # 2x2 + thumbnail
    ("internvl_hf", INTERNVL, "en", [(100, 25)]),       # 4x1
    ("internvl_hf", INTERNVL, "vi", [(25, 100)]),       # 1x4
    ("internvl_hf", INTERNVL, "en_2turns", [(100, 25), (30, 30)]),
    ("internvl_hf", INTERNVL, "vi_2in1", [(50, 40), (25, 100)]),
    ("internvl_hf", INTERNVL, "ko_2in1", [(90, 60), (60, 90)]),
    ("smolvlm", IDEFICS3_ONE, "en", [(50, 40)]),        # 1 tile (longest_edge = tile)
    ("smolvlm", IDEFICS3_ONE, "ko", [(20, 90)]),
    ("smolvlm", IDEFICS3, "vi", [(100, 30)]),           # 2x4 + global
    ("smolvlm", IDEFICS3, "ko", [(28, 28)]),            # 4x4 + global (upscaled to 112)
    ("smolvlm", IDEFICS3, "en", [(200, 40)]),           # 1x4
    ("smolvlm", IDEFICS3, "vi", [(40, 200)]),           # 4x1
    ("smolvlm", IDEFICS3, "en_2turns", [(200, 40), (70, 50)]),
    ("smolvlm", IDEFICS3, "vi_2in1", [(40, 200), (90, 60)]),
    ("smolvlm", IDEFICS3, "ko_2in1", [(60, 90), (200, 40)]),
    ("internvl_hf", INTERNVL, "en_imgonly", [(60, 30)]),
    ("smolvlm", IDEFICS3, "en_imgonly", [(60, 30)]),
    ("llava_hf", CLIP, "en_imgonly", [(60, 30)]),
    ("llava_hf", CLIP, "en", [(50, 40)]),
    ("llava_hf", CLIP, "vi", [(20, 90)]),
    ("llava_hf", CLIP, "ko", [(30, 30)]),
    ("llava_hf", CLIP, "en_2turns", [(50, 40), (90, 60)]),
    ("llava_hf", CLIP, "vi_2in1", [(40, 200), (90, 60)]),  # (its template writes a turn's images first)
]
TEMPLATES = {"internvl_hf": INTERNVL_HF_TEMPLATE, "smolvlm": SMOLVLM_TEMPLATE, "llava_hf": LLAVA_HF_TEMPLATE_SHIPPED}
KINDS = {"internvl_hf": ("internvl_hf", ""), "smolvlm": ("idefics3", None), "llava_hf": ("llava_hf", None)}

ROLE = {"user": "human", "assistant": "gpt", "system": "system"}


def llava_text(content, fmt, several):
    """svlm's LLaVA text of a content list (see the module doc)"""
    if not several:
        n = sum(c["type"] == "image" for c in content)
        text = "".join(c["text"] for c in content if c["type"] == "text")
        if n:
            assert content[0]["type"] == "image", content
            return "<image>\n" + text
        return text
    img = "<image>" if fmt == "smolvlm" else "<image>\n"
    return "".join(img if c["type"] == "image" else c["text"] for c in content)


def image(w, h, seed):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


def processor(fmt, prep, hf):
    if fmt == "llava_hf":
        ip = CLIPImageProcessorPil(size={"shortest_edge": prep["size"]}, crop_size={"height": prep["size"],
                                                                                  "width": prep["size"]})
        return LlavaProcessor(image_processor=ip, tokenizer=hf, patch_size=4, vision_feature_select_strategy="default",
                              num_additional_image_tokens=1, image_token="<image>")
    if fmt == "internvl_hf":
        ip = GotOcr2ImageProcessorPil(crop_to_patches=True, size={"height": TILE, "width": TILE},
                                      max_patches=prep["max_tiles"], min_patches=1)
        return InternVLProcessor(image_processor=ip, tokenizer=hf, video_processor=InternVLVideoProcessor(),
                                 image_seq_length=prep["tokens"])
    ip = Idefics3ImageProcessorPil(do_image_splitting=True, size={"longest_edge": prep["longest_edge"]},
                                   max_image_size={"longest_edge": TILE})
    return Idefics3Processor(image_processor=ip, tokenizer=hf, image_seq_len=prep["tokens"])


def grids_of(fmt, proc, prep, imgs):
    out = []
    if fmt == "llava_hf":  # one tile: the processor's 9 tokens per image are checked by the ids
        return [[1, 1, 0] for _ in imgs]
    if fmt == "internvl_hf":
        patches = proc.image_processor(images=imgs)["num_patches"]
        for im, n in zip(imgs, patches):
            cols, rows = get_optimal_tiled_canvas((im.height, im.width), (TILE, TILE), 1, prep["max_tiles"])
            thumb = int(rows * cols > 1)
            assert rows * cols + thumb == n, (im.size, rows, cols, n)
            out.append([rows, cols, thumb])
    else:
        r = proc.image_processor(images=[imgs], return_row_col_info=True)
        for rows, cols in zip(r["rows"][0], r["cols"][0]):
            out.append([rows, cols, 1] if rows * cols > 0 else [1, 1, 0])  # 0 x 0: the global image alone
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "chat_formats"))
    args = ap.parse_args()
    tok_path = os.path.join(args.out, "tokenizer.json")
    hf = PreTrainedTokenizerFast(tokenizer_file=tok_path, extra_special_tokens={
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>"})
    assert hf.convert_tokens_to_ids("<row_4_col_4>") != hf.unk_token_id, "tokenizer.json lacks <row_i_col_j>"
    cases = []
    for fmt, prep, lang, sizes in CASES:
        conv = CONVERSATIONS[lang]
        proc = processor(fmt, prep, hf)
        template = TEMPLATES[fmt]
        for prompt in (False, True):
            msgs = conv
            if prompt:  # up to the first human turn
                msgs = conv[:next(i for i, (r, _) in enumerate(conv) if r == "user") + 1]
            n_img = sum(c["type"] == "image" for _, cl in msgs for c in cl)
            several = sum(c["type"] == "image" for _, cl in conv for c in cl) > 1
            imgs = [image(w, h, k) for k, (w, h) in enumerate(sizes[:n_img])]
            s = hf.apply_chat_template([{"role": r, "content": cl} for r, cl in msgs], chat_template=template,
                                       tokenize=False, add_generation_prompt=prompt)
            out = proc(text=s, images=imgs if imgs else None)
            ids = [int(x) for x in out["input_ids"][0]]
            # the expanded text, re-encoded with offsets for the answer spans
            full = hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            enc = hf(full, add_special_tokens=False, return_offsets_mapping=True)
            assert enc["input_ids"] == ids, (fmt, lang)
            spans, at = [], 0
            for r, cl in msgs:
                if r != "assistant":
                    continue
                ans = "".join(c["text"] for c in cl)
                lab = {"internvl_hf": ans + "<|im_end|>", "smolvlm": " " + ans + "<end_of_utterance>",
                       "llava_hf": " " + ans}[fmt]
                i = full.index(lab, at)
                spans.append((i, i + len(lab)))
                at = i + len(lab)
            mask = ""
            for a, b in enc["offset_mapping"]:
                assert not any(a < x < b or a < y < b for x, y in spans), (fmt, lang, a, b)
                mask += "1" if any(x <= a and b <= y for x, y in spans) else "0"
            assert ("1" in mask) != prompt
            cases.append({
                "format": fmt, "lang": lang, "prompt": prompt,
                "kind": KINDS[fmt][0], "system": KINDS[fmt][1],
                "prep": prep,
                "turns": [[ROLE[r], llava_text(cl, fmt, several)] for r, cl in msgs],
                "images": [list(sz) for sz in sizes[:n_img]],
                "grids": grids_of(fmt, proc, prep, imgs) if imgs else [],
                "ids": ids, "mask": mask})
    with open(os.path.join(args.out, "tiled.json"), "w") as fh:
        json.dump({"cases": cases}, fh, ensure_ascii=False, separators=(",", ":"))
        fh.write("\n")
    print(f"{len(cases)} tiled cases")


if __name__ == "__main__":
    main()
