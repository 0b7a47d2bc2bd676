#!/usr/bin/env python3
"""The reference side of `make bench-data` (run by build/bench_data): HF `tokenizers` MB/s on one
thread (TOKENIZERS_PARALLELISM=false, one encode call per text) over data/corpus/*.txt split on
blank lines exactly as bench/bench_data.c splits it, and Pillow + each vision family's processor
(the PIL paths) images/s on the same JPEG: CLIPImageProcessor 336, SiglipImageProcessor 384,
InternVL's transform 448 (PIL resize, then ToTensor / Normalize written with torch: torchvision
is not needed), Idefics3ImageProcessor 364 at one tile; then the ratios svlm / reference.

    python3 scripts/bench_data.py --tokenizer T.json --image photo.jpg \
        [--svlm-tokenizer-mbs X --svlm-prep clip=Y --svlm-prep siglip=Z ...]
"""
import argparse
import glob
import io
import os
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "1")

MIN_SECONDS = 1.5
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def corpus_texts():
    texts = []
    for path in sorted(glob.glob("data/corpus/*.txt")):
        with open(path, "rb") as f:
            data = f.read()
        texts += [p for p in data.split(b"\n\n") if p]
    return texts


def bench_tokenizer(path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    texts = corpus_texts()
    nbytes = sum(len(t) for t in texts)
    strs = [t.decode("utf-8", errors="replace") for t in texts]
    for s in strs:  # warm-up, as the C side does
        tok.encode(s, add_special_tokens=False)
    passes, t0 = 0, time.perf_counter()
    while True:
        for s in strs:
            tok.encode(s, add_special_tokens=False)
        passes += 1
        el = time.perf_counter() - t0
        if el >= MIN_SECONDS:
            break
    return nbytes * passes / el / 1e6, passes


def family_processors():
    """family -> (name, function from an opened PIL image to pixel_values), transformers 5's PIL
    backends (4.x: the classes without the Pil suffix)"""
    import numpy as np
    import transformers as tf

    def pil(name):
        return getattr(tf, name + "Pil", None) or getattr(tf, name)

    procs = {}
    clip = pil("CLIPImageProcessor")(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                     image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
    procs["clip"] = ("CLIPImageProcessor", lambda im: clip(images=im.convert("RGB"), return_tensors="np")["pixel_values"])
    siglip = pil("SiglipImageProcessor")(size={"height": 384, "width": 384}, resample=3)
    procs["siglip"] = ("SiglipImageProcessor", lambda im: siglip(images=im.convert("RGB"), return_tensors="np")["pixel_values"])
    try:
        import torch

        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

        def internvl(im):
            from PIL import Image

            x = np.array(im.convert("RGB").resize((448, 448), Image.Resampling.BICUBIC))
            t = torch.from_numpy(x).permute(2, 0, 1).contiguous().float().div(255)
            return t.sub_(mean).div_(std)

        procs["internvl"] = ("InternVL transform", internvl)
    except ImportError:
        pass
    idefics3 = pil("Idefics3ImageProcessor")(do_image_splitting=False)
    procs["idefics3"] = ("Idefics3ImageProcessor", lambda im: idefics3(images=im, return_tensors="np")["pixel_values"])
    return procs


def bench_images(path):
    """family -> (processor name, images/s)"""
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    out = {}
    for family, (name, fn) in family_processors().items():
        n, t0 = 0, time.perf_counter()
        while True:
            fn(Image.open(io.BytesIO(data)))
            n += 1
            el = time.perf_counter() - t0
            if el >= MIN_SECONDS:
                break
        out[family] = (name, n / el)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--svlm-tokenizer-mbs", type=float)
    ap.add_argument("--svlm-prep", action="append", default=[], help="FAMILY=IMAGES_PER_S of svlm")
    a = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    mbs, passes = bench_tokenizer(a.tokenizer)
    print(f"bench-data: HF tokenizers: {mbs:.2f} MB/s (one thread, {passes} passes)")
    svlm = dict((k, float(v)) for k, v in (x.split("=", 1) for x in a.svlm_prep))
    for family, (name, ips) in bench_images(a.image).items():
        ratio = f", ratio svlm / reference {svlm[family] / ips:.2f}x" if family in svlm else ""
        print(f"bench-data: Pillow + {name} ({family}): {ips:.1f} images/s (one thread){ratio}")
    if a.svlm_tokenizer_mbs:
        print(f"bench-data: ratio svlm / HF: tokenizer {a.svlm_tokenizer_mbs / mbs:.2f}x")


if __name__ == "__main__":
    main()
