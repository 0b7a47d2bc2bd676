#!/usr/bin/env python3
"""The reference side of `make bench-data` (run by build/bench_data): HF `tokenizers` MB/s on one
thread (TOKENIZERS_PARALLELISM=false, one encode call per text) over data/corpus/*.txt split on
blank lines exactly as bench/bench_data.c splits it, and Pillow + CLIPImageProcessor (the PIL path,
size 336) images/s on the same JPEG; then the ratios svlm / reference.

    python3 scripts/bench_data.py --tokenizer T.json --image photo.jpg \
        [--svlm-tokenizer-mbs X --svlm-images-per-s Y]
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


def bench_images(path):
    from PIL import Image

    try:
        from transformers import CLIPImageProcessorPil as Clip  # transformers 5.x: the PIL path
    except ImportError:
        from transformers import CLIPImageProcessor as Clip  # 4.x: CLIPImageProcessor is the PIL path
    proc = Clip(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
    with open(path, "rb") as f:
        data = f.read()
    n, t0 = 0, time.perf_counter()
    while True:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        out = proc(images=img, return_tensors="np")["pixel_values"]
        assert out.shape == (1, 3, 336, 336)
        n += 1
        el = time.perf_counter() - t0
        if el >= MIN_SECONDS:
            break
    return n / el


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--svlm-tokenizer-mbs", type=float)
    ap.add_argument("--svlm-images-per-s", type=float)
    a = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    mbs, passes = bench_tokenizer(a.tokenizer)
    print(f"bench-data: HF tokenizers: {mbs:.2f} MB/s (one thread, {passes} passes)")
    ips = bench_images(a.image)
    print(f"bench-data: Pillow + CLIPImageProcessor: {ips:.1f} images/s (one thread)")
    if a.svlm_tokenizer_mbs:
        print(f"bench-data: ratio svlm / HF: tokenizer {a.svlm_tokenizer_mbs / mbs:.2f}x, "
              f"images {a.svlm_images_per_s / ips:.2f}x")


if __name__ == "__main__":
    main()
