#!/usr/bin/env python3
"""Generate the image decoding / preprocessing fixtures that tests/test_image.c checks against.

    python3 scripts/make_image_fixtures.py [--out tests/fixtures/images]

Needs Pillow, numpy, torch, transformers 5 (the PIL backends: CLIPImageProcessorPil,
SiglipImageProcessorPil, Idefics3ImageProcessorPil, GotOcr2ImageProcessorPil), gcc with libjpeg
headers (one YCCK JPEG is written by a tiny libjpeg program, Pillow cannot write YCCK) and the
zstd command.

Writes into --out:
  *.png, *.jpg        test images (PNG: every colour type and bit depth, tRNS, interlaced,
                      odd sizes; JPEG: baseline 4:2:0 / 4:2:2 / 4:4:4, progressive, grey, CMYK,
                      YCCK, odd sizes, a 640x480 photo-like image, elongated ones, a side past
                      32768), headers that claim huge dimensions (five over Pillow's
                      DecompressionBombError limit, one between its warning and error limits)
  *.ref.zst           reference arrays, zstd-compressed, each an uncompressed "SVRF" file:
                        bytes 0..3  "SVRF"
                        byte  4     dtype: 1 = uint8, 2 = float32 (little-endian)
                        byte  5     ndim
                        bytes 6..7  zero
                        ndim x uint32 LE dims, then the data, C order
  manifest.txt        one line per check (see its header)

References:
  decode      Image.open(f).convert("RGB") as (h, w, 3) uint8: Pillow's decode and mode
              conversion, what LLaVA feeds the processor
  size        the same decodes, of its width and height only (elongated plain RGB images,
              whose pixel reference would outweigh the PNG)
  bombwarn    a header between Pillow's DecompressionBombWarning and DecompressionBombError
              limits: Pillow's size check lets it through, so must svlm's
  composite   transformers' convert_to_rgb(Image.open(f), return_numpy=True): alpha composited on
              white with PIL.Image.alpha_composite (transformers 5.x processors do this)
  clip        CLIPImageProcessorPil(size={"shortest_edge": S}, crop_size=S x S) with OpenAI CLIP
              mean/std on the converted image: pixel_values[0], (3, S, S) float32. pad=1 first
              applies LLaVA's expand2square with background tuple(int(x * 255) for x in mean).
              transformers 5.x names the PIL path CLIPImageProcessorPil; CLIPImageProcessor is
              the torchvision backend there (and was the PIL path in 4.x).
  resize      Image.resize((W, H), BICUBIC) of the converted image, including a sweep of random
              sizes (Pillow 13 runs the vertical pass first when the height shrinks by more than
              twice as many pixels as the width; Pillow <= 12 always ran horizontal first)
  resample    the same with the other filters (LANCZOS, BILINEAR, BOX, HAMMING)
  prep        a vision family's processor output (3, S, S) float32 (data/image_prep.h):
                siglip    Image.open(f).convert("RGB") -> SiglipImageProcessorPil(size S x S,
                          resample as the config; do_convert_rgb None as SigLIP configs ship it)
                internvl  InternVL / Vintern's build_transform: Image.open(f).convert("RGB"),
                          T.Resize((S, S), BICUBIC) on the PIL image (torchvision calls
                          img.resize((S, S), BICUBIC)), T.ToTensor (torch: uint8 -> float32,
                          .div(255)), T.Normalize (tensor.sub_(mean).div_(std), float32), written
                          out here with torch (torchvision is not in the venv); ALPHA 1: the
                          native GotOcr2ImageProcessorPil on the opened image
                nanovlm   nanoVLM's single-image transform: image.convert("RGB"), T.Resize((S, S))
                          (torchvision calls img.resize((S, S), BILINEAR)), T.ToTensor (uint8 ->
                          float32, .div(255)), no normalisation; written out with torch
                idefics3  Idefics3ImageProcessorPil(do_image_splitting=False, size longest_edge L,
                          max_image_size S) on the opened image (its convert_to_rgb composites
                          alpha on white); pixel_attention_mask asserted all ones
              PAD 1: LLaVA's expand2square (background int(mean * 255)) of the RGB image first
  truncate    for cut points of some files: whether Pillow decodes the first N bytes or raises
The script checks that a rerun gives identical pixels (deterministic inputs, fixed seeds).
"""
import argparse
import io
import os
import struct
import subprocess
import sys
import tempfile
import warnings
import zlib

from pyreq import require  # noqa: E402

require("numpy", "PIL", "transformers")

import numpy as np
from PIL import Image

import transformers
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

try:
    from transformers import CLIPImageProcessorPil as ClipPil
except ImportError:  # transformers 4.x: the PIL path is CLIPImageProcessor itself
    from transformers import CLIPImageProcessor as ClipPil
# the other families' PIL backends (transformers 5)
from transformers import GotOcr2ImageProcessorPil, Idefics3ImageProcessorPil, SiglipImageProcessorPil
import torch


# ------------------------------------------------------------------------------------------
# writing

def write_ref(path, arr):
    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint8:
        code = 1
    elif arr.dtype == np.float32:
        code = 2
    else:
        raise ValueError(arr.dtype)
    head = b"SVRF" + bytes([code, arr.ndim, 0, 0]) + struct.pack("<%dI" % arr.ndim, *arr.shape)
    raw = head + arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    comp = subprocess.run(["zstd", "-19", "-q", "-c", f"--stream-size={len(raw)}"], input=raw, stdout=subprocess.PIPE, check=True).stdout
    with open(path, "wb") as f:
        f.write(comp)


def png_chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_raw(w, h, depth, ctype, rows, extra=b"", interlace=False, samples=None):
    """A PNG from unfiltered rows of raw samples (bytes per row, already packed). With
    interlace, rows must be given as a full-image sample array (samples: (h, w, c) ints) and
    Adam7 passes are built here."""
    if not interlace:
        raw = b"".join(b"\x00" + r for r in rows)
    else:
        raw = b""
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        for x0, y0, dx, dy in passes:
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for r in sub:
                raw += b"\x00" + pack_samples(r, depth)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 1 if interlace else 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", zlib.compress(raw, 9))
            + png_chunk(b"IEND", b""))


def pack_samples(row, depth):
    """row: (w, c) ints -> packed big-endian bytes at the given bit depth"""
    flat = np.asarray(row).reshape(-1)
    if depth == 16:
        return flat.astype(">u2").tobytes()
    if depth == 8:
        return flat.astype(np.uint8).tobytes()
    per = 8 // depth
    out = bytearray()
    for i in range(0, len(flat), per):
        b = 0
        chunk = flat[i:i + per]
        for j in range(per):
            v = int(chunk[j]) if j < len(chunk) else 0
            b |= v << (8 - depth * (j + 1))
        out.append(b)
    return bytes(out)


def png_from_samples(samples, depth, ctype, extra=b"", interlace=False):
    h, w = samples.shape[:2]
    s = samples.reshape(h, w, -1)
    rows = [pack_samples(s[y], depth) for y in range(h)]
    return png_raw(w, h, depth, ctype, rows, extra, interlace, s)


# ------------------------------------------------------------------------------------------
# content

def smooth(w, h, seed, noise=3):
    """gradients, a disc, a hard diagonal edge and a stripe pattern: resampling sees every case"""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 128 + 127 * np.sin(x * 0.7 + y * 0.3)
    disc = (x - w * 0.4) ** 2 + (y - h * 0.6) ** 2 < (min(w, h) * 0.3) ** 2
    r[disc] = 250
    g[disc] = 20
    edge = x * h > y * w * 1.3
    b[edge] = 255 - b[edge]
    stripes = ((x.astype(int) // 2) % 2 == 0) & (y < h * 0.25)
    g[stripes] = 0
    img = np.stack([r, g, b], -1) + rng.normal(0, noise, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def photo(w, h, seed):
    """photo-like: smooth shading, textured regions, sharp object edges, small text-like marks"""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    sky = np.stack([90 + 80 * y / h, 140 + 60 * y / h, 230 - 40 * y / h], -1)
    img = sky.copy()
    ground = y > h * 0.55 + 20 * np.sin(x / 40)
    tex = rng.normal(0, 10, (h, w))
    img[ground] = np.stack([70 + tex, 120 + tex * 0.8, 40 + tex * 0.5], -1)[ground]
    for cx, cy, rad, col in [(0.3, 0.5, 0.12, (200, 30, 40)), (0.7, 0.4, 0.08, (250, 240, 60)),
                             (0.55, 0.75, 0.1, (30, 60, 200))]:
        d = np.sqrt((x - cx * w) ** 2 + (y - cy * h) ** 2)
        m = d < rad * w
        shade = 1 - 0.5 * (d / (rad * w))
        img[m] = (np.array(col)[None, :] * shade[m][:, None])
    house = (x > w * 0.08) & (x < w * 0.22) & (y > h * 0.3) & (y < h * 0.6)
    img[house] = (220, 210, 190)
    for i in range(6):  # windows
        wx, wy = int(w * 0.1 + (i % 3) * w * 0.035), int(h * 0.35 + (i // 3) * h * 0.1)
        img[wy:wy + 12, wx:wx + 9] = (20, 20, 30)
    for i in range(40):  # text-like marks
        tx, ty = int(w * 0.62 + (i % 20) * 9), int(h * 0.12 + (i // 20) * 14)
        img[ty:ty + 10, tx:tx + 2] = 10
        img[ty + 4:ty + 6, tx:tx + 6] = 10
    img += rng.normal(0, 1.5, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


YCCK_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <jpeglib.h>
/* reads W H and W*H*4 CMYK bytes (Adobe inverted convention, as Pillow writes) from stdin,
   writes a YCCK JPEG to stdout */
int main(void) {
    int w, h;
    if (fread(&w, 4, 1, stdin) != 1 || fread(&h, 4, 1, stdin) != 1) return 1;
    unsigned char *px = malloc((size_t)w * h * 4);
    if (fread(px, 1, (size_t)w * h * 4, stdin) != (size_t)w * h * 4) return 1;
    struct jpeg_compress_struct c; struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e); jpeg_create_compress(&c); jpeg_stdio_dest(&c, stdout);
    c.image_width = w; c.image_height = h; c.input_components = 4; c.in_color_space = JCS_CMYK;
    jpeg_set_defaults(&c); jpeg_set_colorspace(&c, JCS_YCCK); jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) { JSAMPROW r = px + (size_t)c.next_scanline * w * 4; jpeg_write_scanlines(&c, &r, 1); }
    jpeg_finish_compress(&c); jpeg_destroy_compress(&c); return 0;
}
"""


def make_ycck(cmyk_inverted, tmp):
    src = os.path.join(tmp, "ycck.c")
    exe = os.path.join(tmp, "ycck")
    with open(src, "w") as f:
        f.write(YCCK_C)
    subprocess.run(["gcc", "-O1", src, "-o", exe, "-ljpeg"], check=True)
    h, w = cmyk_inverted.shape[:2]
    inp = struct.pack("<ii", w, h) + cmyk_inverted.tobytes()
    return subprocess.run([exe], input=inp, stdout=subprocess.PIPE, check=True).stdout


# ------------------------------------------------------------------------------------------

def build_images(tmp):
    """name -> encoded bytes"""
    imgs = {}
    rng = np.random.default_rng(1234)

    def pil_bytes(im, fmt, **kw):
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        return b.getvalue()

    base = smooth(37, 23, 1)
    imgs["rgb_37x23.png"] = pil_bytes(Image.fromarray(base), "PNG")
    imgs["rgb_500x13.png"] = pil_bytes(Image.fromarray(smooth(500, 13, 2)), "PNG")
    imgs["rgb_13x500.png"] = pil_bytes(Image.fromarray(smooth(13, 500, 3)), "PNG")
    imgs["rgb_64x64.png"] = pil_bytes(Image.fromarray(smooth(64, 64, 4)), "PNG")
    imgs["rgb_60x200.png"] = pil_bytes(Image.fromarray(smooth(60, 200, 24)), "PNG")
    # elongated (LLaVA's pad mode turns them into a square of the long side; no noise: small files)
    imgs["rgb_2000x9.png"] = pil_bytes(Image.fromarray(smooth(2000, 9, 25, noise=0)), "PNG")
    imgs["rgb_11x1500.png"] = pil_bytes(Image.fromarray(smooth(11, 1500, 26, noise=0)), "PNG")
    # a side past 32768 (Pillow has no side limit)
    imgs["rgb_40000x2.png"] = pil_bytes(Image.fromarray(smooth(40000, 2, 27, noise=0)), "PNG")
    rgba = np.concatenate([smooth(40, 30, 5), rng.integers(0, 256, (30, 40, 1), dtype=np.uint8)], -1)
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 255
    imgs["rgba_40x30.png"] = pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG")
    grey = smooth(33, 17, 6)[..., 1]
    imgs["grey_33x17.png"] = pil_bytes(Image.fromarray(grey, "L"), "PNG")
    la = np.stack([smooth(20, 21, 7)[..., 0], rng.integers(0, 256, (21, 20), dtype=np.uint8)], -1)
    imgs["greya_20x21.png"] = pil_bytes(Image.fromarray(la, "LA"), "PNG")
    imgs["grey_trns_25x14.png"] = pil_bytes(Image.fromarray(smooth(25, 14, 8)[..., 2], "L"), "PNG",
                                            transparency=int(smooth(25, 14, 8)[3, 3, 2]))
    rgbt = smooth(18, 16, 9)
    imgs["rgb_trns_18x16.png"] = pil_bytes(Image.fromarray(rgbt), "PNG", transparency=tuple(int(v) for v in rgbt[5, 5]))
    # palette with a tRNS table, 8-bit and 4-bit indices
    pal_img = Image.fromarray(smooth(31, 19, 10)).quantize(colors=40, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    trns = bytes(int(v) for v in rng.integers(0, 256, 40))
    imgs["pal_trns_31x19.png"] = pil_bytes(pal_img, "PNG", transparency=trns)
    pal16 = Image.fromarray(smooth(15, 9, 11)).quantize(colors=12, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    imgs["pal4_15x9.png"] = pil_bytes(pal16, "PNG", bits=4)
    # palette with fewer PLTE entries than the indices used (out of range -> black in Pillow)
    idx = rng.integers(0, 6, (7, 11)).astype(np.uint8)
    imgs["pal_short_11x7.png"] = png_from_samples(idx, 8, 3, png_chunk(b"PLTE", bytes([200, 10, 10, 10, 200, 10, 10, 10, 200])))
    imgs["bw1_17x5.png"] = pil_bytes(Image.fromarray(smooth(17, 5, 12)[..., 0] > 128), "PNG")
    g2 = rng.integers(0, 4, (6, 9))
    imgs["grey2_9x6.png"] = png_from_samples(g2, 2, 0)
    g4 = rng.integers(0, 16, (5, 7))
    imgs["grey4_7x5.png"] = png_from_samples(g4, 4, 0)
    # 16-bit (Pillow cannot write 16-bit RGB: written here)
    s16 = rng.integers(0, 65536, (11, 23, 3))
    imgs["rgb16_23x11.png"] = png_from_samples(s16, 16, 2)
    g16 = rng.integers(0, 65536, (13, 19))
    g16[0, :8] = [0, 1, 254, 255, 256, 257, 1000, 65535]
    g16[1:4] = rng.integers(0, 300, (3, 19))  # around the clipping point
    imgs["grey16_19x13.png"] = png_from_samples(g16, 16, 0)
    g16t = rng.integers(0, 400, (7, 11))
    g16t[0, :3] = 77
    imgs["grey16_trns_11x7.png"] = png_from_samples(g16t, 16, 0, png_chunk(b"tRNS", struct.pack(">H", 77)))
    imgs["greya16_9x8.png"] = png_from_samples(rng.integers(0, 65536, (8, 9, 2)), 16, 4)
    imgs["rgba16_10x7.png"] = png_from_samples(rng.integers(0, 65536, (7, 10, 4)), 16, 6)
    # interlaced (Adam7; Pillow cannot write it)
    imgs["interlaced_rgb_29x27.png"] = png_from_samples(smooth(29, 27, 13), 8, 2, interlace=True)
    imgs["interlaced_grey16_10x9.png"] = png_from_samples(rng.integers(0, 400, (9, 10)), 16, 0, interlace=True)
    imgs["interlaced_pal2_13x11.png"] = png_from_samples(
        rng.integers(0, 4, (11, 13)), 2, 3, png_chunk(b"PLTE", bytes(range(12))) + png_chunk(b"tRNS", b"\x00\x80"),
        interlace=True)
    imgs["interlaced_rgba_5x3.png"] = png_from_samples(rng.integers(0, 256, (3, 5, 4)), 8, 6, interlace=True)
    imgs["interlaced_rgb_1x1.png"] = png_from_samples(np.array([[[1, 2, 3]]]), 8, 2, interlace=True)

    # JPEG
    imgs["jpeg_420_37x23.jpg"] = pil_bytes(Image.fromarray(base), "JPEG", quality=90)
    imgs["jpeg_422_45x31.jpg"] = pil_bytes(Image.fromarray(smooth(45, 31, 14)), "JPEG", quality=85, subsampling=1)
    imgs["jpeg_444_33x35.jpg"] = pil_bytes(Image.fromarray(smooth(33, 35, 15)), "JPEG", quality=95, subsampling=0)
    imgs["jpeg_prog_61x47.jpg"] = pil_bytes(Image.fromarray(smooth(61, 47, 16)), "JPEG", quality=88, progressive=True)
    imgs["jpeg_grey_45x29.jpg"] = pil_bytes(Image.fromarray(smooth(45, 29, 17)[..., 0], "L"), "JPEG", quality=90)
    imgs["jpeg_500x13.jpg"] = pil_bytes(Image.fromarray(smooth(500, 13, 18)), "JPEG", quality=90)
    imgs["jpeg_13x500.jpg"] = pil_bytes(Image.fromarray(smooth(13, 500, 19)), "JPEG", quality=90, progressive=True)
    cmyk = np.concatenate([smooth(33, 21, 20), rng.integers(0, 256, (21, 33, 1), dtype=np.uint8)], -1)
    imgs["jpeg_cmyk_33x21.jpg"] = pil_bytes(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=92)
    imgs["jpeg_ycck_27x19.jpg"] = make_ycck(255 - np.concatenate(
        [smooth(27, 19, 21), rng.integers(0, 256, (19, 27, 1), dtype=np.uint8)], -1), tmp)
    imgs["photo_640x480.jpg"] = pil_bytes(Image.fromarray(photo(640, 480, 22)), "JPEG", quality=90)
    imgs["photo_prog_200x150.jpg"] = pil_bytes(Image.fromarray(photo(200, 150, 23)), "JPEG", quality=80,
                                               progressive=True)

    # headers that claim huge sizes
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    imgs["huge_100000x100000.png"] = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                                      + png_chunk(b"IDAT", zlib.compress(b"\x00" * 3000)) + png_chunk(b"IEND", b""))
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # sides fine, 4e8 pixels too many
    imgs["huge_20000x20000.png"] = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                                    + png_chunk(b"IDAT", zlib.compress(b"\x00" * 3000)) + png_chunk(b"IEND", b""))
    # one pixel over Pillow's DecompressionBombError limit (2 * MAX_IMAGE_PIXELS), and one between
    # its warning (1x) and error (2x) limits, whose data then ends early
    ihdr = struct.pack(">IIBBBBB", 1, 2 * Image.MAX_IMAGE_PIXELS + 1, 8, 2, 0, 0, 0)
    imgs["huge_1x178956971.png"] = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                                    + png_chunk(b"IDAT", zlib.compress(b"\x00" * 3000)) + png_chunk(b"IEND", b""))
    ihdr = struct.pack(">IIBBBBB", 13000, 13000, 8, 2, 0, 0, 0)
    imgs["bomb_warn_13000x13000.png"] = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                                         + png_chunk(b"IDAT", zlib.compress(b"\x00" * 3000)) + png_chunk(b"IEND", b""))
    j = bytearray(imgs["jpeg_420_37x23.jpg"])
    sof = j.find(b"\xff\xc0")
    j[sof + 5:sof + 9] = struct.pack(">HH", 65500, 65500)
    imgs["huge_65500x65500.jpg"] = bytes(j)
    j = bytearray(imgs["jpeg_prog_61x47.jpg"])
    sof = j.find(b"\xff\xc2")
    j[sof + 5:sof + 9] = struct.pack(">HH", 65500, 65500)
    imgs["huge_prog_65500x65500.jpg"] = bytes(j)
    return imgs


def clip_ref(rgb_img, size, pad):
    proc = ClipPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                   image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, do_convert_rgb=True)
    if pad:
        bg = tuple(int(x * 255) for x in proc.image_mean)
        w, h = rgb_img.size
        if w != h:  # LLaVA's expand2square
            s = max(w, h)
            sq = Image.new(rgb_img.mode, (s, s), bg)
            sq.paste(rgb_img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
            rgb_img = sq
    out = proc(images=rgb_img, return_tensors="np")["pixel_values"][0]
    assert out.shape == (3, size, size) and out.dtype == np.float32, (out.shape, out.dtype)
    return out


def expand2square(rgb_img, mean):
    """LLaVA's expand2square with background tuple(int(x * 255) for x in mean)"""
    bg = tuple(int(x * 255) for x in mean)
    w, h = rgb_img.size
    if w == h:
        return rgb_img
    s = max(w, h)
    sq = Image.new(rgb_img.mode, (s, s), bg)
    sq.paste(rgb_img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return sq


FAMILY_MEAN_STD = {"siglip": ([0.5] * 3, [0.5] * 3), "idefics3": ([0.5] * 3, [0.5] * 3), "nanovlm": ([0.0] * 3, [1.0] * 3),
                   "internvl": (list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD))}


def prep_ref(data, family, size, longest, resample, alpha, pad):
    """the family's processor on the image file's bytes (see the module docstring)"""
    mean, std = FAMILY_MEAN_STD[family]
    opened = Image.open(io.BytesIO(data))
    # what reaches the processor: convert("RGB") (alpha dropped) or, where the processor's own
    # convert_to_rgb sees the opened image, alpha composited on white (same pixels for pad)
    rgb = Image.fromarray(convert_to_rgb(opened, return_numpy=True)) if alpha else opened.convert("RGB")
    src = expand2square(rgb, mean) if pad else (rgb if not alpha else opened)
    if family == "siglip":
        assert not alpha
        proc = SiglipImageProcessorPil(size={"height": size, "width": size}, resample=resample, image_mean=mean,
                                       image_std=std, do_convert_rgb=None)
        out = proc(images=src, return_tensors="np")["pixel_values"][0]
    elif family == "nanovlm":
        assert not alpha and resample == Image.Resampling.BILINEAR
        img = src.resize((size, size), Image.Resampling.BILINEAR)  # torchvision F_pil.resize
        t = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(size, size, 3).permute((2, 0, 1)).contiguous()
        out = t.to(dtype=torch.float32).div(255).numpy()  # T.ToTensor; nanoVLM normalises nothing
    elif family == "internvl" and alpha:
        proc = GotOcr2ImageProcessorPil(size={"height": size, "width": size}, resample=resample, image_mean=mean,
                                        image_std=std, crop_to_patches=False)
        out = proc(images=src, return_tensors="np")["pixel_values"][0]
    elif family == "internvl":
        assert resample == Image.Resampling.BICUBIC
        img = src.resize((size, size), Image.Resampling.BICUBIC)  # torchvision F_pil.resize
        t = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(size, size, 3).permute((2, 0, 1)).contiguous()
        t = t.to(dtype=torch.float32).div(255)  # T.ToTensor
        m = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
        sd = torch.as_tensor(std, dtype=torch.float32)[:, None, None]
        out = t.clone().sub_(m).div_(sd).numpy()  # T.Normalize
    else:
        proc = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": longest},
                                         max_image_size={"longest_edge": size}, resample=resample, image_mean=mean,
                                         image_std=std)
        r = proc(images=src, return_tensors="np")
        assert r["pixel_values"].shape == (1, 1, 3, size, size), r["pixel_values"].shape
        assert r["pixel_attention_mask"].min() == 1  # one tile of S x S: nothing padded
        out = r["pixel_values"][0, 0]
    assert out.shape == (3, size, size) and out.dtype == np.float32, (out.shape, out.dtype)
    return out


PREP_CASES = [  # (family, image, size, longest_edge, resample, alpha, pad)
    # SigLIP (BICUBIC) and SigLIP2's fixed-resolution configs (BILINEAR): squash to S x S
    ("siglip", "rgb_37x23.png", 24, 0, 3, 0, 0), ("siglip", "rgb_60x200.png", 30, 0, 3, 0, 0),
    ("siglip", "rgb_13x500.png", 28, 0, 2, 0, 0), ("siglip", "rgba_40x30.png", 24, 0, 3, 0, 0),
    ("siglip", "grey_33x17.png", 24, 0, 2, 0, 0), ("siglip", "grey16_19x13.png", 24, 0, 3, 0, 0),
    ("siglip", "jpeg_cmyk_33x21.jpg", 24, 0, 3, 0, 0), ("siglip", "rgb_500x13.png", 24, 0, 3, 0, 1),
    ("siglip", "rgb_2000x9.png", 24, 0, 2, 0, 1), ("siglip", "photo_640x480.jpg", 224, 0, 3, 0, 0),
    # InternVL / Vintern (448 in the real models), and the native processor compositing alpha
    ("internvl", "rgb_37x23.png", 28, 0, 3, 0, 0), ("internvl", "rgb_13x500.png", 28, 0, 3, 0, 0),
    ("internvl", "greya_20x21.png", 28, 0, 3, 0, 0), ("internvl", "pal_trns_31x19.png", 28, 0, 3, 0, 0),
    ("internvl", "rgb16_23x11.png", 28, 0, 3, 0, 0), ("internvl", "jpeg_grey_45x29.jpg", 28, 0, 3, 0, 0),
    ("internvl", "rgb_60x200.png", 28, 0, 3, 0, 1), ("internvl", "photo_640x480.jpg", 448, 0, 3, 0, 0),
    ("internvl", "rgba_40x30.png", 28, 0, 3, 1, 0), ("internvl", "greya16_9x8.png", 28, 0, 3, 1, 0),
    # nanoVLM: squash to S x S, BILINEAR, pixels / 255 (alpha dropped by convert("RGB"))
    ("nanovlm", "rgb_37x23.png", 24, 0, 2, 0, 0), ("nanovlm", "rgb_13x500.png", 28, 0, 2, 0, 0),
    ("nanovlm", "greya_20x21.png", 28, 0, 2, 0, 0), ("nanovlm", "pal_trns_31x19.png", 28, 0, 2, 0, 0),
    ("nanovlm", "rgb16_23x11.png", 28, 0, 2, 0, 0), ("nanovlm", "grey16_19x13.png", 24, 0, 2, 0, 0),
    ("nanovlm", "jpeg_grey_45x29.jpg", 28, 0, 2, 0, 0), ("nanovlm", "rgba_40x30.png", 24, 0, 2, 0, 0),
    ("nanovlm", "rgb_60x200.png", 28, 0, 2, 0, 1), ("nanovlm", "photo_640x480.jpg", 224, 0, 2, 0, 0),
    # Idefics3 / SmolVLM at one tile: longest edge to L (odd: the other side rounds up to even),
    # then S x S, LANCZOS
    ("idefics3", "rgb_37x23.png", 24, 96, 1, 1, 0), ("idefics3", "rgb_60x200.png", 30, 120, 1, 1, 0),
    ("idefics3", "rgb_500x13.png", 26, 104, 1, 1, 0), ("idefics3", "rgb_13x500.png", 26, 57, 1, 1, 0),
    ("idefics3", "rgba_40x30.png", 24, 96, 1, 1, 0), ("idefics3", "pal_trns_31x19.png", 24, 33, 1, 1, 0),
    ("idefics3", "grey16_trns_11x7.png", 24, 96, 1, 1, 0), ("idefics3", "jpeg_422_45x31.jpg", 24, 20, 1, 1, 0),
    ("idefics3", "rgb_37x23.png", 24, 96, 1, 1, 1), ("idefics3", "rgb_2000x9.png", 24, 96, 1, 1, 1),
    ("idefics3", "rgb_60x200.png", 24, 57, 1, 1, 1), ("idefics3", "jpeg_500x13.jpg", 22, 45, 1, 1, 1),
    ("idefics3", "rgb_11x1500.png", 24, 96, 1, 1, 0), ("idefics3", "photo_640x480.jpg", 364, 1456, 1, 1, 0),
]

# other filters through the same resampler: up, down, mixed, vertical pass first, one pixel
RESAMPLE_CASES = [  # (image, filter, w, h)
    (name, f, w, h) for f in (1, 2, 4, 5) for name, w, h in [
        ("rgb_37x23.png", 50, 10), ("rgb_37x23.png", 17, 41), ("rgb_37x23.png", 1, 1),
        ("rgb_60x200.png", 58, 7), ("rgb_60x200.png", 24, 80), ("photo_640x480.jpg", 101, 67),
        ("rgb_13x500.png", 13, 100)]
]


CLIP_CASES = [  # (image, size, pad)
    ("rgb_37x23.png", 24, 0), ("rgb_37x23.png", 24, 1), ("rgb_500x13.png", 24, 0), ("rgb_500x13.png", 24, 1),
    ("rgb_13x500.png", 24, 0), ("rgb_13x500.png", 24, 1), ("rgb_64x64.png", 24, 0), ("rgb_64x64.png", 64, 0),
    ("jpeg_422_45x31.jpg", 24, 0), ("jpeg_13x500.jpg", 24, 1), ("photo_640x480.jpg", 24, 0),
    ("photo_640x480.jpg", 24, 1), ("photo_prog_200x150.jpg", 24, 0), ("greya_20x21.png", 24, 0),
    ("photo_640x480.jpg", 336, 0), ("photo_640x480.jpg", 336, 1),
    ("rgb_60x200.png", 24, 0), ("rgb_60x200.png", 24, 1), ("rgb_37x23.png", 336, 0), ("rgb_500x13.png", 336, 1), ("rgb_13x500.png", 336, 0),
    # pad mode: upscaling (the square's side below SIZE), no resampling (side == SIZE), elongated
    ("rgb_37x23.png", 64, 1), ("rgb_60x200.png", 336, 1), ("rgb_37x23.png", 37, 1),
    ("rgb_2000x9.png", 24, 1), ("rgb_2000x9.png", 336, 1), ("rgb_2000x9.png", 24, 0),
    ("rgb_11x1500.png", 24, 1), ("rgb_11x1500.png", 336, 1), ("rgb_11x1500.png", 24, 0),
]


RESIZE_CASES = [  # (image, w, h): up, down, mixed, same size, to one pixel
    ("rgb_37x23.png", 50, 10), ("rgb_37x23.png", 17, 41), ("rgb_37x23.png", 37, 23), ("rgb_37x23.png", 1, 1),
    ("rgb_37x23.png", 37, 5), ("rgb_500x13.png", 77, 13), ("photo_640x480.jpg", 101, 67),
    ("photo_640x480.jpg", 1000, 3), ("rgb_13x500.png", 10, 100), ("rgb_13x500.png", 13, 100),
    ("rgb_60x200.png", 24, 80), ("rgb_60x200.png", 60, 41), ("rgb_60x200.png", 58, 7),
] + [  # a sweep of random sizes (Pillow 13 picks the pass order from the size change)
    (name, int(w), int(h)) for name, (w, h) in zip(
        ["rgb_64x64.png", "rgb_37x23.png", "rgb_60x200.png"] * 8,
        np.random.default_rng(7).integers(1, 64, (24, 2)))
]

# images listed with their size only: a pixel reference would be larger than the PNG
SIZE_ONLY = {"rgb_2000x9.png", "rgb_11x1500.png", "rgb_40000x2.png"}

TRUNCATE_FILES = [
    "rgb_37x23.png", "interlaced_rgb_29x27.png", "grey16_19x13.png", "pal_trns_31x19.png", "rgba_40x30.png",
    "jpeg_420_37x23.jpg", "jpeg_prog_61x47.jpg", "jpeg_grey_45x29.jpg", "jpeg_cmyk_33x21.jpg", "jpeg_ycck_27x19.jpg",
    "photo_640x480.jpg",
]


def check_rescale_conventions():
    """transformers' rescale (float64 multiply, cast to float32) and torchvision's ToTensor
    (float32 division by 255) give the same float for every byte: svlm uses one table for both"""
    v = np.arange(256, dtype=np.uint8)
    a = (v.astype(np.float64) * (1 / 255)).astype(np.float32)
    b = torch.from_numpy(v).to(dtype=torch.float32).div(255).numpy()
    assert np.array_equal(a, b), np.nonzero(a != b)


def main():
    check_rescale_conventions()
    # Pillow warns that palette transparency "should be converted to RGBA": that is the point here
    warnings.filterwarnings("ignore", message="Palette images with Transparency")
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/images")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):
        if f.endswith((".png", ".jpg", ".ref.zst")) or f == "manifest.txt":
            os.remove(os.path.join(args.out, f))
    with tempfile.TemporaryDirectory() as tmp:
        imgs = build_images(tmp)
        again = build_images(tmp)
        assert all(imgs[k] == again[k] for k in imgs if not k.startswith("jpeg_ycck")), "inputs are not deterministic"
    lines = [
        "# image fixtures for tests/test_image.c, written by scripts/make_image_fixtures.py",
        f"# Pillow {Image.__version__}, transformers {transformers.__version__}, processor {ClipPil.__name__}",
        "# decode FILE REF            Image.open(FILE).convert('RGB') == REF (h, w, 3) uint8",
        "# size FILE W H              Image.open(FILE).convert('RGB') works and is W x H",
        "# composite FILE REF         transformers convert_to_rgb (alpha over white) == REF",
        "# clip FILE SIZE PAD REF     processor output (3, SIZE, SIZE) float32, PAD: LLaVA expand2square",
        "# toolarge FILE              Pillow refuses it (DecompressionBombError); svlm: IMAGE_ERR_TOO_LARGE",
        "# bombwarn FILE              Pillow only warns (DecompressionBombWarning): svlm's size check passes",
        "#                            (the data ends early: an error, but not IMAGE_ERR_TOO_LARGE)",
        "# resize FILE W H REF        Image.open(FILE).convert('RGB').resize((W, H), Image.BICUBIC) == REF",
        "# truncate FILE N ok|error   Pillow on the first N bytes: decodes (the full image) or raises",
        "# resample FILE F W H REF    ... .resize((W, H), F) == REF, F a PIL.Image.Resampling number",
        "# prep FAMILY FILE S L F ALPHA PAD REF   the family's processor (3, S, S) float32: longest edge L",
        "#                            (idefics3), filter F, ALPHA 1: alpha composited on white, PAD 1: expand2square",
        f"# prep processors: SiglipImageProcessorPil, GotOcr2ImageProcessorPil, Idefics3ImageProcessorPil, "
        f"InternVL's build_transform and nanoVLM's transform with torch {torch.__version__}",
    ]
    for name, data in imgs.items():
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(data)
        if name.startswith("bomb_warn_"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                im = Image.open(io.BytesIO(data))  # the size check is in open()
            assert any(issubclass(c.category, Image.DecompressionBombWarning) for c in caught), name
            assert im.size[0] * im.size[1] <= 2 * Image.MAX_IMAGE_PIXELS
            lines.append(f"bombwarn {name}")
            continue
        if name.startswith("huge_"):
            try:
                Image.open(io.BytesIO(data)).convert("RGB")
                raise AssertionError(f"Pillow decoded {name}")
            except Image.DecompressionBombError:
                pass
            lines.append(f"toolarge {name}")
            continue
        im = Image.open(io.BytesIO(data))
        mode = im.mode
        rgb = np.array(im.convert("RGB"))
        if name in SIZE_ONLY:  # plain 8-bit RGB, the decoder's pixels are checked elsewhere
            lines.append(f"size {name} {im.size[0]} {im.size[1]}")
            continue
        ref = name.rsplit(".", 1)[0] + ".rgb.ref.zst"
        write_ref(os.path.join(args.out, ref), rgb)
        lines.append(f"decode {name} {ref}  # Pillow mode {mode}")
        im = Image.open(io.BytesIO(data))
        if "A" in im.getbands() or im.info.get("transparency") is not None:
            comp = convert_to_rgb(im, return_numpy=True)
            ref = name.rsplit(".", 1)[0] + ".comp.ref.zst"
            write_ref(os.path.join(args.out, ref), comp)
            lines.append(f"composite {name} {ref}")
    for name, w, h in RESIZE_CASES:
        out = np.array(Image.open(io.BytesIO(imgs[name])).convert("RGB").resize((w, h), Image.Resampling.BICUBIC))
        ref = f"{name.rsplit('.', 1)[0]}.resize{w}x{h}.ref.zst"
        write_ref(os.path.join(args.out, ref), out)
        lines.append(f"resize {name} {w} {h} {ref}")
    for name, f, w, h in RESAMPLE_CASES:
        out = np.array(Image.open(io.BytesIO(imgs[name])).convert("RGB").resize((w, h), Image.Resampling(f)))
        ref = f"{name.rsplit('.', 1)[0]}.resample{f}_{w}x{h}.ref.zst"
        write_ref(os.path.join(args.out, ref), out)
        lines.append(f"resample {name} {f} {w} {h} {ref}")
    for family, name, size, longest, f, alpha, pad in PREP_CASES:
        out = prep_ref(imgs[name], family, size, longest, Image.Resampling(f), alpha, pad)
        ref = f"{name.rsplit('.', 1)[0]}.{family}{size}_{longest}_{f}{'a' if alpha else ''}{'pad' if pad else ''}.ref.zst"
        write_ref(os.path.join(args.out, ref), out)
        lines.append(f"prep {family} {name} {size} {longest} {f} {alpha} {pad} {ref}")
    for name in TRUNCATE_FILES:
        data = imgs[name]
        n = len(data)
        full = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        for cut in sorted({n - 1, n - 2, n - 13, n - 20, n * 5 // 100, n * 30 // 100, n * 60 // 100, n * 90 // 100}):
            try:
                got = np.array(Image.open(io.BytesIO(data[:cut])).convert("RGB"))
                assert np.array_equal(got, full), f"{name}[:{cut}] decodes to other pixels"
                verdict = "ok"
            except (OSError, SyntaxError, ValueError):
                verdict = "error"
            lines.append(f"truncate {name} {cut} {verdict}")
    for name, size, pad in CLIP_CASES:
        rgb_img = Image.open(io.BytesIO(imgs[name])).convert("RGB")
        out = clip_ref(rgb_img, size, pad)
        ref = f"{name.rsplit('.', 1)[0]}.clip{size}{'pad' if pad else ''}.ref.zst"
        write_ref(os.path.join(args.out, ref), out)
        lines.append(f"clip {name} {size} {pad} {ref}")
    with open(os.path.join(args.out, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"wrote {len(lines)} manifest lines, {total / 1e6:.2f} MB in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
