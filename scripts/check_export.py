#!/usr/bin/env python3
"""Checks an ./export directory with the Hugging Face stack (torch, transformers, peft).

    python3 scripts/check_export.py EXPORT_DIR [--tokens 64]
        [--image IMG --prompt TEXT ...] [--generate ./generate] [--max-new-tokens 24]

- llm/ loads with transformers' AutoModelForCausalLM as it is (LoRA merged),
- adapter/ loads with peft on top of the base model named in adapter_config.json,
- both give the same logits on random token ids (float32; relative error printed and checked),
- connector.safetensors holds the model.mm_projector.* tensors svlm.json's connector needs,
- vision/ is inside the export (a copy, or the --link symbolic link),
- llava/ (mlp2x_gelu exports) loads as LlavaForConditionalGeneration with AutoProcessor, and for
  each --image/--prompt pair its greedy answer (processor chat template, generate with
  do_sample=False) equals the text `./generate EXPORT_DIR --image IMG --prompt TEXT` prints.
An export of a run trained from `model = DIR` (a whole VLM: svlm_export.json) is checked as that
model's own layout instead:
- every tensor of the base model (adapter_config.json's base_model_name_or_path) is in the export
  under its name, shape and dtype; the LoRA targets equal W + scale * B @ A from adapter/ (computed
  here in float32), the projector differs only where training moved it, the rest is identical;
  config.json and the remote-code .py files are the base's, byte for byte;
- transformers' own classes (InternVLForConditionalGeneration, Idefics3ForConditionalGeneration,
  LlavaForConditionalGeneration) load the export, and its logits on random ids with one image
  equal those of the base model + the adapter through peft, with the export's projector (the
  remote-code layout, InternVLChatModel, is compared by tensors and config only: its code is
  not installed).
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
    ap.add_argument("--image", action="append", default=[], help="image of a greedy-answer case (with --prompt)")
    ap.add_argument("--prompt", action="append", default=[], help="question of a greedy-answer case")
    ap.add_argument("--generate", default="./generate", help="svlm's ./generate program")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()
    if len(args.image) != len(args.prompt):
        ap.error("--image and --prompt go in pairs")
    d = args.export_dir
    if os.path.exists(os.path.join(d, "svlm_export.json")):
        ok = check_whole(d, args)
        print("ok" if ok else "FAILED")
        return 0 if ok else 1
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
    vision = os.path.join(d, meta["vision"])
    inside = not os.path.isabs(meta["vision"]) and os.path.isdir(vision)
    print(f"vision/: {'a link to ' + os.path.realpath(vision) if os.path.islink(vision) else 'a copy'}"
          f" ({'inside the export' if inside else 'NOT inside the export'})")
    ok &= inside
    llava = os.path.join(d, "llava")
    if meta["connector"] == "mlp2x_gelu":
        ok &= os.path.isdir(llava)
        if os.path.isdir(llava):
            ok &= check_llava(llava, d, args)
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


def check_llava(llava, export_dir, args):
    """llava/ in transformers: loads, and greedy answers equal ./generate's."""
    import subprocess
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(llava, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(llava)
    cfg = model.config
    print(f"llava/: {type(model).__name__} loaded ({type(proc).__name__}, {type(proc.image_processor).__name__}), "
          f"image token {cfg.image_token_index}, {cfg.image_seq_length} image tokens, "
          f"vision layer {cfg.vision_feature_layer} ({cfg.vision_feature_select_strategy})")
    ok = True
    for img, prompt in zip(args.image, args.prompt):
        out = subprocess.run([args.generate, export_dir, "--image", img, "--prompt", prompt, "--max-new-tokens",
                              str(args.max_new_tokens), "--device", "cpu"], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"  ./generate failed: {out.stderr.strip()}")
            return False
        svlm = out.stdout.rstrip("\n")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = proc.apply_chat_template(messages, add_generation_prompt=True)
        inputs = proc(images=Image.open(img), text=text, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        new = gen[0, inputs["input_ids"].shape[1]:]
        hf = proc.tokenizer.decode(new, skip_special_tokens=True)
        same = hf == svlm
        ok &= same
        print(f"  {os.path.basename(img)} \"{prompt}\": {len(new)} tokens, transformers {hf!r} "
              f"{'==' if same else '!='} ./generate {svlm!r}")
    return ok


def check_whole(d, args):
    """a whole-model export against its base model and adapter"""
    import filecmp
    import re
    import transformers
    with open(os.path.join(d, "svlm_export.json")) as f:
        meta = json.load(f)
    adapter = os.path.join(d, "adapter")
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        acfg = json.load(f)
    base_dir = acfg["base_model_name_or_path"]
    ok = True
    for name in sorted(os.listdir(base_dir)):
        if name == "config.json" or name.endswith(".py"):
            same = filecmp.cmp(os.path.join(base_dir, name), os.path.join(d, name), shallow=False)
            print(f"{name}: {'the base model' + chr(39) + 's' if same else 'DIFFERS from the base'}")
            ok &= same
    base = load_file(os.path.join(base_dir, "model.safetensors"))
    out = load_file(os.path.join(d, "model.safetensors"))
    lora = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    scale = acfg["lora_alpha"] / (acfg["r"] ** 0.5 if acfg.get("use_rslora") else acfg["r"])
    # adapter names: base_model.model.<module>.lora_A.weight, the module's file name by the layout
    to_file = {"internvl_chat": ("language_model.model.", "language_model.model."),
               "internvl_hf": ("model.language_model.", "language_model.model."),
               "llava": ("model.language_model.", "language_model.model."),
               "idefics3": ("model.text_model.", "model.text_model.")}[meta["layout"]]
    merged = {}
    for k, a in lora.items():
        if ".lora_A." not in k:
            continue
        mod = k[len("base_model.model."):k.index(".lora_A.")]
        b = lora[k.replace(".lora_A.", ".lora_B.")]
        fname = to_file[1] + mod[len(to_file[0]):] + ".weight"
        if fname not in base and "model." + fname in base:
            fname = "model." + fname
        merged[fname] = base[fname].float() + scale * (b.float() @ a.float())
    worst, n_same, n_conn = 0.0, 0, 0
    ok &= sorted(base) == sorted(out)
    for k in sorted(base):
        x, y = base[k], out[k]
        ok &= x.shape == y.shape and x.dtype == y.dtype
        if k in merged:
            worst = max(worst, ((y.float() - merged[k]).abs().max() / merged[k].abs().max()).item())
        elif torch.equal(x, y):
            n_same += 1
        else:
            n_conn += 1
            conn = re.search(r"(mlp1\.|multi_modal_projector\.|connector\.)", k) is not None
            if not conn:
                print(f"  {k}: changed, but it is neither a LoRA target nor the projector")
            ok &= conn
    print(f"model.safetensors: {len(out)} tensors; {len(merged)} merged (max rel err vs W + scale*B@A "
          f"{worst:.2e}), {n_conn} projector tensors trained, {n_same} identical")
    ok &= worst < args.tol and len(merged) > 0
    if meta["layout"] == "internvl_chat":
        print("InternVLChatModel: remote code not installed; compared by tensors and config")
        return ok
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cls = getattr(transformers, cfg["architectures"][0])
    model = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    ref = cls.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager").eval()
    from peft import PeftModel
    # the export's projector into the reference, so that only the merge is compared
    conn_sd = {k: v for k, v in model.state_dict().items() if re.search(r"multi_modal_projector|\.connector\.", k)}
    ref.load_state_dict(conn_sd, strict=False)
    ref = PeftModel.from_pretrained(ref, adapter).eval()
    tc = model.config.get_text_config()
    vc = model.config.vision_config
    size = vc.image_size if isinstance(vc.image_size, int) else vc.image_size[0]
    g = torch.Generator().manual_seed(0)
    image_id = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    with torch.no_grad():
        pix = torch.randn((1, 3, size, size), generator=g)
        if meta["layout"] == "idefics3":
            pix = pix[:, None]
        feats = model.get_image_features(pixel_values=pix).pooler_output
        feats = torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats
        n_img = feats.reshape(-1, feats.shape[-1]).shape[0]  # the image's tokens
        ids = torch.randint(0, min(tc.vocab_size, image_id) - 1, (1, n_img + args.tokens), generator=g)
        ids[0, 2:2 + n_img] = image_id
        la = model(input_ids=ids, pixel_values=pix).logits
        lb = ref(input_ids=ids, pixel_values=pix).logits
    err = ((la - lb).abs().max() / lb.abs().max()).item()
    print(f"{cls.__name__}: the export's logits vs base + adapter (peft) rel err {err:.2e}")
    return ok and err < args.tol


if __name__ == "__main__":
    sys.exit(main())
