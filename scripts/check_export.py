#!/usr/bin/env python3
"""Checks an ./export directory with the Hugging Face stack (torch, transformers, peft).

    python3 scripts/check_export.py EXPORT_DIR [--tokens 64]

- llm/ loads with transformers' AutoModelForCausalLM as it is (LoRA merged),
- adapter/ loads with peft on top of the base model named in adapter_config.json,
- both give the same logits on random token ids (float32; relative error printed and checked),
- connector.safetensors holds the model.mm_projector.* tensors svlm.json's connector needs.
Exits non-zero when a check fails. Not needed by CI (make test has the C-side checks).
"""
import argparse
import json
import os
import sys

from pyreq import require  # noqa: E402

require("torch", "safetensors", "transformers", "peft")

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    d = args.export_dir
    with open(os.path.join(d, "svlm.json")) as f:
        meta = json.load(f)
    merged = AutoModelForCausalLM.from_pretrained(os.path.join(d, "llm"), dtype=torch.float32).eval()
    vocab = merged.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, args.tokens), generator=g)
    with torch.no_grad():
        lm = merged(input_ids=ids).logits
    print(f"llm/: {type(merged).__name__} loaded, vocab {vocab}, logits {tuple(lm.shape)}")
    ok = True
    adapter = os.path.join(d, "adapter")
    if os.path.isdir(adapter):
        from peft import PeftModel
        with open(os.path.join(adapter, "adapter_config.json")) as f:
            base_dir = json.load(f)["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        model = PeftModel.from_pretrained(base, adapter).eval()
        with torch.no_grad():
            la = model(input_ids=ids).logits
            with model.disable_adapter():
                lb = model(input_ids=ids).logits
        err = ((la - lm).abs().max() / lm.abs().max()).item()
        moved = ((la - lb).abs().max() / lb.abs().max()).item()
        print(f"adapter/: peft on {base_dir}: logits vs merged llm/ rel err {err:.2e} (LoRA moves them by {moved:.2e})")
        ok &= err < args.tol
        if moved == 0:
            print("warning: the adapter does not change the logits (LoRA B still zero?)")
    conn = load_file(os.path.join(d, "connector.safetensors"))
    names = sorted(conn)
    want = {"ldp": "model.mm_projector.peg.peg.0.weight", "mlp2x_gelu": "model.mm_projector.2.weight"}[meta["connector"]]
    print(f"connector.safetensors: {len(names)} tensors ({meta['connector']})")
    ok &= want in conn
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
