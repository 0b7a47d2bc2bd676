#!/usr/bin/env python3
"""make bench-eval: decode speed of svlm's batched generation against transformers' generate.

    python3 scripts/bench_eval.py [--dir build/bench/eval] [--batches 1,8,32] [--prompts 32]
                                  [--new-tokens 32] [--rounds 2] [--threads 2]

1. Writes one random model twice (once, into --dir): an svlm export (export/: svlm.json, llm/ a
   Qwen2ForCausalLM with the fixtures' Qwen2 tokenizer, vision/ a CLIPVisionModel, an mlp2x_gelu
   connector.safetensors) and the same weights as transformers' LlavaForConditionalGeneration
   (llava/), plus --prompts requests with images of different question lengths (prompts.jsonl).
2. For each round and batch size, alternately: `./generate export/ --batch prompts.jsonl
   --batch-size B --max-new-tokens N` (its decode tokens/s: single-token steps x rows / their
   seconds, as it prints), then transformers' generate on the same token ids and pixels in
   batches of B (left-padded, greedy, every request N new tokens; decode seconds from the first
   logits processor call, i.e. after the prefill, to the end).
3. Prints a table (and --result JSON) with both and the ratio, and checks that at batch 1 svlm's
   answers equal transformers' greedy answers (the same model).
Everything runs on the CPU with --threads threads for both (OMP_NUM_THREADS, torch.set_num_threads)
and OpenMP's passive wait policy for both (svlm's programs choose it; with torch's default spinning
on a busy 2-core machine transformers decoded ~10x slower).
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

# torch's OpenMP reads its wait policy when it loads: the passive policy svlm's programs choose
# (common/util.h: openmp_prefer_passive), so both sides wait for work alike on a busy machine
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "passive"
    os.execv(sys.executable, [sys.executable] + sys.argv)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyreq import require  # noqa: E402

require("numpy", "torch", "safetensors", "transformers", "tokenizers", "PIL")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
import transformers  # noqa: E402
from transformers import (CLIPVisionConfig, CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration,  # noqa: E402
                          LogitsProcessor, LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "qwen2.json")
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
SYSTEM = "You are a helpful assistant."
WORDS = ("where is the red circle what colour are the squares how many triangles describe the picture "
         "in detail and say which shapes are left of the centre").split()


def model_configs(a):
    vision = CLIPVisionConfig(hidden_size=a.vision_hidden, intermediate_size=4 * a.vision_hidden, num_hidden_layers=a.vision_layers,
                              num_attention_heads=a.vision_hidden // 64, image_size=a.image_size, patch_size=14,
                              hidden_act="quick_gelu", projection_dim=a.vision_hidden)
    text = Qwen2Config(hidden_size=a.hidden, intermediate_size=a.mlp, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                       num_key_value_heads=a.kv_heads, vocab_size=a.vocab, max_position_embeddings=2048, rope_theta=1e6,
                       rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=None, eos_token_id=3000)
    return vision, text


def make(a):
    """the random model as an svlm export and as a transformers LLaVA model, prompts and images"""
    torch.manual_seed(1234)
    vcfg, tcfg = model_configs(a)
    exp = os.path.join(a.dir, "export")
    os.makedirs(exp, exist_ok=True)
    clip = CLIPVisionModel(vcfg).eval()
    llm = Qwen2ForCausalLM(tcfg).eval()
    with torch.no_grad():  # a larger spread than the default init, so greedy answers are not one token repeated
        for p in llm.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    conn = {"model.mm_projector.0.weight": torch.randn(a.hidden, a.vision_hidden) / a.vision_hidden ** 0.5,
            "model.mm_projector.0.bias": torch.randn(a.hidden) * 0.02,
            "model.mm_projector.2.weight": torch.randn(a.hidden, a.hidden) / a.hidden ** 0.5,
            "model.mm_projector.2.bias": torch.randn(a.hidden) * 0.02}
    clip.save_pretrained(os.path.join(exp, "vision"))
    with open(os.path.join(exp, "vision", "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": a.image_size},
                   "crop_size": {"height": a.image_size, "width": a.image_size}, "do_resize": True, "do_center_crop": True,
                   "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
                   "image_mean": MEAN, "image_std": STD, "resample": 3}, f)
    llm.save_pretrained(os.path.join(exp, "llm"))
    with open(TOKENIZER) as f:
        tok_json = f.read()
    with open(os.path.join(exp, "llm", "tokenizer.json"), "w") as f:
        f.write(tok_json)
    save_file({k: v.contiguous() for k, v in conn.items()}, os.path.join(exp, "connector.safetensors"))
    n_img = (a.image_size // 14) ** 2
    with open(os.path.join(exp, "svlm.json"), "w") as f:
        json.dump({"format": "svlm-export-1", "vision": "vision", "vision_layer": -2, "connector": "mlp2x_gelu",
                   "image_size": a.image_size, "image_mean": MEAN, "image_std": STD, "pad_to_square": True,
                   "template": "chatml", "system": None, "image_tokens": n_img, "llm": "llm"}, f, indent=1)
    # the same weights as LlavaForConditionalGeneration; <image> is a spare embedding row
    image_id = Tokenizer.from_str(tok_json).get_vocab_size(with_added_tokens=True)
    assert image_id < a.vocab
    cfg = LlavaConfig(vision_config=vcfg.to_dict(), text_config=tcfg.to_dict(), image_token_index=image_id,
                      image_seq_length=n_img, vision_feature_layer=-2, vision_feature_select_strategy="default",
                      projector_hidden_act="gelu", tie_word_embeddings=True)
    lv = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        lv.model.vision_tower.load_state_dict(clip.state_dict())
        lv.model.language_model.load_state_dict(llm.model.state_dict())
        p = lv.model.multi_modal_projector
        p.linear_1.weight.copy_(conn["model.mm_projector.0.weight"])
        p.linear_1.bias.copy_(conn["model.mm_projector.0.bias"])
        p.linear_2.weight.copy_(conn["model.mm_projector.2.weight"])
        p.linear_2.bias.copy_(conn["model.mm_projector.2.bias"])
    lv.tie_weights()
    assert torch.equal(lv.lm_head.weight, llm.lm_head.weight)
    lv.save_pretrained(os.path.join(a.dir, "llava"))
    # prompts: images of random pixels, questions of 3 to 40 words
    rng = np.random.default_rng(7)
    os.makedirs(os.path.join(a.dir, "images"), exist_ok=True)
    with open(os.path.join(a.dir, "prompts.jsonl"), "w") as f:
        for i in range(a.prompts):
            img = rng.integers(0, 256, (a.image_size, a.image_size, 3), dtype=np.uint8)
            name = os.path.join(a.dir, "images", f"img_{i:03d}.png")
            Image.fromarray(img).save(name)
            q = " ".join(rng.choice(WORDS, int(rng.integers(3, 41)))) + "?"
            f.write(json.dumps({"id": i, "image": name, "prompt": q}) + "\n")
    with open(os.path.join(a.dir, "made.json"), "w") as f:
        json.dump(vars(a), f)


def requests(a, tok, image_id, n_img):
    """token ids (svlm's chatml prompt with the image first in the turn) and pixel values"""
    out = []
    with open(os.path.join(a.dir, "prompts.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            pre = tok.encode(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n", add_special_tokens=False).ids
            post = tok.encode("\n" + r["prompt"] + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).ids
            img = np.asarray(Image.open(r["image"]).convert("RGB"), dtype=np.float32) / 255.0
            px = (img - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
            out.append((pre + [image_id] * n_img + post, torch.from_numpy(px.transpose(2, 0, 1).copy())))
    return out


class FirstCall(LogitsProcessor):
    """notes when the first logits arrive: the prefill has ended"""

    def __init__(self):
        self.t = None

    def __call__(self, input_ids, scores):
        if self.t is None:
            self.t = time.perf_counter()
        return scores


def run_torch(a, model, reqs, B, pad_id):
    n_dec, t_dec, answers = 0, 0.0, []
    for i in range(0, len(reqs), B):
        chunk = reqs[i:i + B]
        L = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), L), dtype=torch.long)
        for j, (x, _) in enumerate(chunk):  # left padding, as batched generation needs
            ids[j, L - len(x):] = torch.tensor(x)
            mask[j, L - len(x):] = 1
        px = torch.stack([p for _, p in chunk])
        fc = FirstCall()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=px, max_new_tokens=a.new_tokens,
                                 min_new_tokens=a.new_tokens, do_sample=False, logits_processor=LogitsProcessorList([fc]),
                                 pad_token_id=pad_id, eos_token_id=None)
        t_end = time.perf_counter()
        n_dec += len(chunk) * (a.new_tokens - 1)
        t_dec += t_end - fc.t
        answers += [row[L:].tolist() for row in out]
    return n_dec / t_dec, answers


SVLM_LINE = re.compile(r"decode: (\d+) new tokens, (\d+) decoded in ([0-9.]+) s, ([0-9.]+) tok/s")


def run_svlm(a, B):
    out = os.path.join(a.dir, f"svlm_b{B}.jsonl")
    cmd = [os.path.join(ROOT, "generate"), os.path.join(a.dir, "export"), "--batch", os.path.join(a.dir, "prompts.jsonl"),
           "--batch-size", str(B), "--max-new-tokens", str(a.new_tokens), "--device", "cpu", "--out", out]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"bench-eval: {' '.join(cmd)} failed: {r.stderr.strip()}")
    m = SVLM_LINE.search(r.stderr)
    if not m:
        sys.exit(f"bench-eval: no speed line in ./generate's output: {r.stderr.strip()}")
    with open(out) as f:
        answers = [json.loads(line)["answer"] for line in f]
    return float(m.group(4)), answers, " ".join(cmd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="build/bench/eval")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--result", default=None, help="JSON file for the numbers (default DIR/result.json)")
    # the model: a Qwen2-style decoder of ~40 M parameters (a 2-core CPU runs both sides in minutes),
    # the fixtures' Qwen2 tokenizer (3007 tokens)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--mlp", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=3072)
    ap.add_argument("--vision-hidden", type=int, default=256)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=112)
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    torch.set_num_threads(a.threads)
    os.makedirs(a.dir, exist_ok=True)
    made = os.path.join(a.dir, "made.json")
    want = {k: v for k, v in vars(a).items() if k not in ("batches", "rounds", "threads", "result", "new_tokens")}
    if not os.path.exists(made) or {k: v for k, v in json.load(open(made)).items() if k in want} != want:
        print(f"bench-eval: writing the random model and {a.prompts} prompts into {a.dir}")
        make(a)
    tok = Tokenizer.from_file(os.path.join(a.dir, "export", "llm", "tokenizer.json"))
    model = LlavaForConditionalGeneration.from_pretrained(os.path.join(a.dir, "llava"), dtype=torch.float32).eval()
    n_img = model.config.image_seq_length
    reqs = requests(a, tok, model.config.image_token_index, n_img)
    n_params = sum(p.numel() for p in model.model.language_model.parameters())
    print(f"bench-eval: {platform.node()}, {os.cpu_count()} CPUs, {a.threads} threads each, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}; LLM {a.layers} x {a.hidden} (mlp {a.mlp}, vocab {a.vocab}, "
          f"{n_params / 1e6:.1f} M parameters), CLIP {a.vision_layers} x {a.vision_hidden}, {n_img} image tokens; "
          f"{len(reqs)} prompts of {min(len(r[0]) for r in reqs)}-{max(len(r[0]) for r in reqs)} positions, "
          f"{a.new_tokens} new tokens each")
    res = {b: {"svlm": [], "torch": []} for b in batches}
    same = None
    cmds = {}
    for rnd in range(a.rounds):
        for b in batches:  # svlm and torch alternate, so load on the machine hits both alike
            s, s_ans, cmds[b] = run_svlm(a, b)
            t, t_ans = run_torch(a, model, reqs, b, pad_id=3000)
            res[b]["svlm"].append(s)
            res[b]["torch"].append(t)
            print(f"  round {rnd + 1} batch {b:3d}: svlm {s:9.1f} tok/s | transformers {t:9.1f} tok/s", flush=True)
            if b == 1 and same is None:
                t_text = [tok.decode(x, skip_special_tokens=True) for x in t_ans]
                # svlm stops at <|im_end|>; compare the text up to where it stopped
                same = sum(1 for sv, tv in zip(s_ans, t_text) if tv.startswith(sv))
    print(f"\n| batch | svlm decode tok/s | transformers decode tok/s | svlm / transformers |\n|---|---|---|---|")
    table = {}
    for b in batches:
        s, t = statistics.mean(res[b]["svlm"]), statistics.mean(res[b]["torch"])
        table[b] = {"svlm": res[b]["svlm"], "torch": res[b]["torch"], "svlm_mean": s, "torch_mean": t}
        print(f"| {b} | {s:.1f} | {t:.1f} | {s / t:.2f} |")
    print(f"\nbatch 1 greedy answers: {same}/{len(reqs)} of svlm's equal transformers' (the same model)")
    out = a.result or os.path.join(a.dir, "result.json")
    with open(out, "w") as f:
        json.dump({"machine": platform.node(), "cpus": os.cpu_count(), "threads": a.threads, "torch": torch.__version__,
                   "transformers": transformers.__version__, "new_tokens": a.new_tokens, "prompts": len(reqs),
                   "same_answers_batch1": same, "svlm_command": cmds, "results": table}, f, indent=1)
    print(f"bench-eval: numbers in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
