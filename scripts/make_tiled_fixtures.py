#!/usr/bin/env python3
"""The tiled, multi-image VLM parity fixture that tests/test_model_parity.c checks svlm against:
transformers' own InternVLForConditionalGeneration (not a hand-made scatter) on tiles.

    /work/venv/bin/python scripts/make_tiled_fixtures.py [--out tests/fixtures]

Reads the family fixtures of scripts/make_family_fixtures.py (internvl_vision/,
internvl_hf_qwen2.safetensors) and qwen2/ + qwen2_lora/ of scripts/make_fixtures.py, joins them
into one InternVLForConditionalGeneration (image_token_id = V - 1 as <IMG_CONTEXT>, V - 3 / V - 2
as <img> / </img>), puts the qwen2_lora adapter on its language model with peft, and runs one
forward + backward on a batch of two rows: row 0 holds a sample with two images (a 1x2 grid +
thumbnail: 3 tiles, then a single tile), row 1 a sample with one image of 3 tiles (2x1 +
thumbnail). pixel_values are the 7 tiles in order; HF scatters the projector's rows into the
<IMG_CONTEXT> positions in order. Writes vlm_qwen2_internvl_tiled.safetensors in the vlm_*
fixture layout (img_row / img_start: each tile's first <IMG_CONTEXT> position, 25 rows each),
with logits, loss, connector_out and the LoRA and projector gradients (native names).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyreq import require  # noqa: E402

require("torch", "safetensors", "transformers", "peft")

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen2Config

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    fx = ap.parse_args().out
    vcfg = InternVLVisionConfig.from_pretrained(os.path.join(fx, "internvl_vision"))
    qcfg = Qwen2Config.from_pretrained(os.path.join(fx, "qwen2"))
    V = qcfg.vocab_size
    IMG, END, CTX = V - 3, V - 2, V - 1
    cfg = InternVLConfig(vision_config=vcfg.to_dict(), text_config=qcfg.to_dict(), downsample_ratio=0.5,
                         projector_hidden_act="gelu", image_token_id=CTX, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    cfg._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    model = InternVLForConditionalGeneration(cfg).eval()
    sd = {}
    for k, v in load_file(os.path.join(fx, "internvl_vision", "model.safetensors")).items():
        sd["model.vision_tower." + k] = v
    sd.update(load_file(os.path.join(fx, "internvl_hf_qwen2.safetensors")))
    for k, v in load_file(os.path.join(fx, "qwen2", "model.safetensors")).items():
        assert k.startswith("model."), k
        sd["model.language_model." + k[len("model."):]] = v
    sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]  # tied in qwen2/
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)

    with open(os.path.join(fx, "qwen2_lora", "adapter_config.json")) as fh:
        acfg = json.load(fh)
    targets = "|".join(sorted(acfg["target_modules"]))
    lcfg = LoraConfig(r=acfg["r"], lora_alpha=acfg["lora_alpha"], lora_dropout=0.0, use_rslora=acfg["use_rslora"],
                      target_modules=r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(%s)" % targets)
    pm = get_peft_model(model, lcfg)
    ad = load_file(os.path.join(fx, "qwen2_lora", "adapter_model.safetensors"))
    params = dict(pm.named_parameters())
    n = 0
    with torch.no_grad():
        for k, v in ad.items():  # base_model.model.model.layers.0... -> ...model.language_model.layers.0...
            name = k.replace("base_model.model.model.", "base_model.model.model.language_model.").replace(".weight", ".default.weight")
            params[name].copy_(v)
            n += 1
    assert n == sum(1 for k in params if "lora_" in k), n
    for k, p in pm.named_parameters():  # the projector trains too (stage 2)
        if "multi_modal_projector" in k:
            p.requires_grad_(True)
    pm.eval()

    tokens = 25  # (30 / 3 / 2)^2 per tile
    g = torch.Generator().manual_seed(18001)
    T = 2 + (2 + 3 * tokens) + 3 + (2 + tokens) + 5
    ids = torch.randint(0, V - 3, (2, T), generator=g)
    labels = torch.full((2, T), -100, dtype=torch.int64)
    starts, rows = [], []

    def slot(r, at, tiles):
        ids[r, at] = IMG
        for t in range(tiles):
            starts.append(at + 1 + t * tokens)
            rows.append(r)
        ids[r, at + 1:at + 1 + tiles * tokens] = CTX
        ids[r, at + 1 + tiles * tokens] = END
        return at + 2 + tiles * tokens

    e = slot(0, 2, 3)
    e = slot(0, e + 3, 1)
    labels[0, e:T] = ids[0, e:T]
    labels[0, e - 3 + 1] = ids[0, e - 3 + 1]  # a labelled token between the two images
    e1 = slot(1, 4, 3)
    labels[1, e1:e1 + 6] = ids[1, e1:e1 + 6]
    ids[1, e1 + 6:] = V - 4  # padding in row 1, no loss
    pix = torch.randn((len(starts), 3, 30, 30), generator=g)
    res = pm(input_ids=ids, pixel_values=pix, attention_mask=torch.ones_like(ids), labels=labels)
    res.loss.backward()
    with torch.no_grad():
        conn_out = model.model.get_image_features(pixel_values=pix, vision_feature_layer=-1,
                                                  vision_feature_select_strategy="default")
        if not torch.is_tensor(conn_out):
            conn_out = conn_out.pooler_output if hasattr(conn_out, "pooler_output") else conn_out[0]
    assert conn_out.shape == (len(starts), tokens, qcfg.hidden_size), conn_out.shape
    t = {
        "pixel_values": pix.contiguous(),
        "input_ids": ids.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "img_row": torch.tensor(rows, dtype=torch.int32),
        "img_start": torch.tensor(starts, dtype=torch.int32),
        "connector_out": conn_out.detach().contiguous(),
        "logits": res.logits.detach().contiguous(),
        "loss": res.loss.detach().reshape(1).contiguous(),
    }
    for k, p in pm.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, k
            name = k.replace("base_model.model.", "", 1).replace(".default.", ".").replace("model.language_model.", "model.")
            t["grad." + name] = p.grad.detach().clone().contiguous()
    save_file(t, os.path.join(fx, "vlm_qwen2_internvl_tiled.safetensors"))
    print("tiles", len(starts), "T", T, "loss %.6f" % res.loss.item(), "grads", sum(k.startswith("grad.") for k in t))


if __name__ == "__main__":
    main()
