#!/usr/bin/env python3
"""Generate the dynamic-tiling fixtures that tests/test_tiling.c checks against.

    /work/venv/bin/python scripts/make_tiling_fixtures.py [--out tests/fixtures/tiling]

Needs Pillow, numpy, transformers 5 (GotOcr2ImageProcessorPil, Idefics3ImageProcessorPil).
Writes into --out:
  *.png          test images (noise over smooth gradients; RGB, grey, RGBA), small
  manifest.txt   one check per line:
    grid internvl S MAX W H COLS ROWS
        InternVL / Vintern's dynamic_preprocess grid (written out below from the remote code,
        its Python set included) for a W x H image; asserted equal to transformers'
        get_optimal_tiled_canvas (GotOcr2, native InternVL)
    grid idefics3 M L W H COLS ROWS
        Idefics3ImageProcessorPil(do_image_splitting=True, size longest_edge L, max_image_size
        M) rows and cols for a blank W x H image (0 0, no splitting, written as 1 1)
    tiles KIND FILE S PARAM N H0 .. H(N-1) V0 V1 V2
        the N tiles (3, S, S) float32 of FILE: KIND internvl (remote code: Image.open(f).convert
        ("RGB"), dynamic_preprocess(max_num=PARAM, use_thumbnail=True), build_transform on each
        tile: Resize((S, S), BICUBIC) on the PIL tile, ToTensor, Normalize(ImageNet), in numpy
        float32 as torch computes it), gotocr2 (GotOcr2ImageProcessorPil crop_to_patches=True,
        max_patches=PARAM, ImageNet mean / std, on the opened image) or idefics3
        (Idefics3ImageProcessorPil do_image_splitting=True, max_image_size S, size longest_edge
        PARAM, on the opened image). Hi: the hash of tile i's float32 bits as uint32 u[k]:
        sum_k u[k] * 1000003^(k+1) mod 2^64 (hex); V0..V2: tile 0's floats at flat indices 0,
        S*S + 7, 3*S*S - 1 as hex bits
The script also asserts that the remote code's grid never depends on the order of equal-area
grids (which its Python set decides) for W, H <= 1200 and MAX <= 40.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyreq import require  # noqa: E402

require("numpy", "PIL", "transformers")

import numpy as np
from PIL import Image
from transformers import GotOcr2ImageProcessorPil, Idefics3ImageProcessorPil
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, SizeDict
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas


# ---------------------------------------------------------------- InternVL's remote code, as shipped

def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def target_ratios(min_num, max_num):
    return sorted(set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                      if i * j <= max_num and i * j >= min_num), key=lambda x: x[0] * x[1])


def internvl_grid(w, h, image_size, max_num):
    return find_closest_aspect_ratio(w / h, target_ratios(1, max_num), w, h, image_size)


def dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=False):
    orig_width, orig_height = image.size
    target_aspect_ratio = find_closest_aspect_ratio(orig_width / orig_height, target_ratios(min_num, max_num),
                                                    orig_width, orig_height, image_size)
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]
    resized_img = image.resize((target_width, target_height))
    processed_images = []
    for i in range(blocks):
        box = ((i % (target_width // image_size)) * image_size, (i // (target_width // image_size)) * image_size,
               ((i % (target_width // image_size)) + 1) * image_size, ((i // (target_width // image_size)) + 1) * image_size)
        processed_images.append(resized_img.crop(box))
    if use_thumbnail and len(processed_images) != 1:
        processed_images.append(image.resize((image_size, image_size)))
    return processed_images


def build_transform(tile, S):
    # T.Resize((S, S), BICUBIC) on a PIL image is img.resize((S, S), BICUBIC) (a copy at S x S);
    # ToTensor: uint8 -> float32 / 255; Normalize: (x - mean) / std in float32
    tile = tile.resize((S, S), Image.BICUBIC)
    x = np.asarray(tile, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1) / np.float32(255)
    mean = np.array(IMAGENET_DEFAULT_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(IMAGENET_DEFAULT_STD, dtype=np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


# ---------------------------------------------------------------- checks and references

def check_set_order():
    W = np.arange(1, 1201)
    ws, hs = np.meshgrid(W, W)
    ws, hs = ws.ravel(), hs.ravel()
    ar = ws / hs
    for mx in range(1, 41):
        A = target_ratios(1, mx)
        t = np.array([i / j for i, j in A])
        area = np.array([i * j for i, j in A])
        D = np.abs(ar[:, None] - t[None, :])
        tie = D == D.min(1)[:, None]
        for r in np.nonzero(tie.sum(1) > 1)[0]:
            a = area[tie[r]]
            if len(set(a)) == len(a):
                continue  # ties only between grids of different areas: their order is fixed
            w, h = int(ws[r]), int(hs[r])
            native = get_optimal_tiled_canvas.__wrapped__((h, w), (448, 448), 1, mx)
            assert internvl_grid(w, h, 448, mx) == native, (w, h, mx)


def idefics3_rows_cols(w, h, M, L):
    """rows, cols of Idefics3ImageProcessorPil's splitting for a w x h image: its own resize,
    resize_for_vision_encoder and split_images, with the pixel work replaced by empty arrays of
    the sizes it asks for (the grid depends on the sizes alone)"""
    proc = Idefics3ImageProcessorPil(do_image_splitting=True, size={"longest_edge": L}, max_image_size={"longest_edge": M})
    sized = lambda self, image, size, resample=None, **kw: np.empty((3, size.height, size.width), np.uint8)
    PilBackend.resize, saved = sized, PilBackend.resize
    try:
        img = proc.resize(np.empty((3, h, w), np.uint8), SizeDict(longest_edge=L))
        img = proc.resize_for_vision_encoder(img, M)
        frames, r, c = proc.split_images(img, {"longest_edge": M})
    finally:
        PilBackend.resize = saved
    assert len(frames) == (r * c + 1 if r * c else 1)
    return r, c


def tile_hash(t):
    u = np.ascontiguousarray(t, dtype=np.float32).view(np.uint32).ravel().astype(np.uint64)
    pw = np.cumprod(np.full(u.shape, 1000003, dtype=np.uint64), dtype=np.uint64)  # wraps mod 2^64
    return int(np.sum(u * pw, dtype=np.uint64))


def fbits(v):
    return "%08x" % int(np.float32(v).view(np.uint32))


def tiles_line(kind, name, S, param, tiles):
    tiles = [np.asarray(t, dtype=np.float32) for t in tiles]
    assert all(t.shape == (3, S, S) for t in tiles), [t.shape for t in tiles]
    t0 = tiles[0].ravel()
    vals = [fbits(t0[0]), fbits(t0[S * S + 7]), fbits(t0[3 * S * S - 1])]
    return "tiles %s %s %d %d %d %s %s" % (kind, name, S, param, len(tiles), " ".join("%016x" % tile_hash(t) for t in tiles),
                                          " ".join(vals))


def make_image(w, h, mode, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / max(w, 1) * 6.3 + c) * np.cos(y / max(h, 1) * 4.1 - c) for c in range(3)], -1)
    noise = 12 if w * h < 20000 else 0  # the big ones smooth: they compress
    px = np.clip(base + rng.integers(-noise, noise + 1, base.shape), 0, 255).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(px[..., 0], "L")
    if mode == "RGBA":
        a = np.clip(255 * x / max(w - 1, 1) + rng.integers(0, 30, (h, w)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([px, a]), "RGBA")
    return Image.fromarray(px, "RGB")


IMAGES = [  # name, w, h, mode
    ("wide_8x1", 96, 12, "RGB"), ("tall_1x8", 12, 96, "RGB"), ("tiny_3x5", 3, 5, "RGB"), ("tiny_5x3", 5, 3, "RGB"),
    ("square_40", 40, 40, "RGB"), ("odd_37x23", 37, 23, "RGB"), ("odd_101x37", 101, 37, "RGB"), ("grey_29x61", 29, 61, "L"),
    ("alpha_45x30", 45, 30, "RGBA"), ("square_180", 180, 180, "RGB"),
    ("wide_1100x333", 1100, 333, "RGB"), ("tall_300x700", 300, 700, "RGB"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/tiling")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    check_set_order()
    lines = ["# written by scripts/make_tiling_fixtures.py: see its docstring"]
    # grids over many sizes: extremes, squares, ties, random
    rng = np.random.default_rng(17)
    sizes = [(1, 8), (8, 1), (1, 1), (3, 5), (5, 3), (448, 448), (896, 896), (1344, 1344), (500, 400), (400, 500),
             (1, 4000), (4000, 1), (4096, 4096), (5000, 20), (20, 5000), (1456, 1456), (1457, 1455), (2048, 1536),
             (513, 512), (512, 513), (364, 364), (365, 364), (729, 364)]
    sizes += [(int(a), int(b)) for a, b in rng.integers(1, 3000, (120, 2))]
    sizes += [(int(a), int(b)) for a, b in rng.integers(1, 60, (40, 2))]
    for w, h in sizes:
        for mx in (1, 2, 6, 12, 40):
            c, r = internvl_grid(w, h, 448, mx)
            assert (c, r) == get_optimal_tiled_canvas.__wrapped__((h, w), (448, 448), 1, mx)
            lines.append("grid internvl 448 %d %d %d %d %d" % (mx, w, h, c, r))
        for M, L in ((364, 1456), (512, 2048), (384, 1536)):
            r, c = idefics3_rows_cols(w, h, M, L)
            lines.append("grid idefics3 %d %d %d %d %d %d" % (M, L, w, h, max(c, 1), max(r, 1)))
    # pixels
    mean, std = list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
    for i, (name, w, h, mode) in enumerate(IMAGES):
        path = os.path.join(args.out, name + ".png")
        make_image(w, h, mode, 100 + i).save(path, optimize=True)
        opened = Image.open(path)
        for mx in (6, 12):
            tiles = [build_transform(t, 448) for t in dynamic_preprocess(opened.convert("RGB"), 1, mx, 448, True)]
            lines.append(tiles_line("internvl", name + ".png", 448, mx, tiles))
        if min(w, h) in (1, 3):
            continue  # transformers takes an (h, w, 3) array with h or w of 1 or 3 as channels-first
        got = GotOcr2ImageProcessorPil(crop_to_patches=True, max_patches=6, size={"height": 448, "width": 448},
                                       image_mean=mean, image_std=std)
        pv = got(images=[Image.open(path)], return_tensors="np")["pixel_values"]
        lines.append(tiles_line("gotocr2", name + ".png", 448, 6, list(pv)))
        for M, L in ((364, 1456), (512, 2048)):
            proc = Idefics3ImageProcessorPil(do_image_splitting=True, size={"longest_edge": L},
                                             max_image_size={"longest_edge": M})
            out = proc(images=[Image.open(path)], return_tensors="np")
            pv = out["pixel_values"][0]
            assert out["pixel_attention_mask"].all()
            lines.append(tiles_line("idefics3", name + ".png", M, L, list(pv)))
    with open(os.path.join(args.out, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote %d lines to %s" % (len(lines), args.out))


if __name__ == "__main__":
    main()
