#!/usr/bin/env python3
"""The svlm training step in PyTorch + transformers + peft, timed on the batch bench_step saved.

    ./build/bench_step --device cuda --preset reference --stage 2 --save-batch b.safetensors
    python3 scripts/bench_torch.py --batch b.safetensors            # the same step in PyTorch
    python3 scripts/bench_torch.py --table svlm.json torch.json ...  # comparison table of results

The batch file names everything else in its metadata: the random Hugging Face directories
bench_step wrote (loaded here with from_pretrained, so the weights are the same), the stage,
LoRA settings, learning rates, and the initial trainable tensors (connector, LoRA) saved next to
it, so both implementations start from the same state and their first-step losses agree within
the arithmetic's noise.

The step, as LLaVA / MobileVLM train with the HF Trainer: the vision tower under no_grad up to
hidden_states[vision_layer] (layers after it are dropped: they cannot change the result), CLS
dropped; the connector. Towers and connectors by bench_step's preset:
  CLIP (CLIPVisionModel) + ldp (exactly as scripts/make_fixtures.py defines it, which svlm
    matches): tiny, mid, reference
  InternViT (InternVL remote-code names, loaded into transformers' InternVLVisionModel by
    renaming: fused attn.qkv split, ls1/ls2 -> lambda_1/2) + InternVL's pixel shuffle 0.5 and
    mlp1 (LayerNorm, Linear, GELU, Linear, as InternVLMultiModalProjector): internvit, tiny_internvit
  SigLIP (SiglipVisionModel, last_hidden_state: post_layernorm applied) + Idefics3's pixel
    shuffle and modality_projection (Linear without bias): siglip, tiny_siglip
its output spliced into the token embeddings at the image slots (masked_scatter, as
transformers' LLaVA does); Qwen2ForCausalLM (+ peft LoRA in stage 2) with labels, loss = HF's
mean over labelled positions; backward; clip_grad_norm_(1.0); torch.optim.AdamW (fused on CUDA)
with the connector's and LoRA's learning rates. On CUDA: frozen weights in bf16, trainable
tensors in fp32, autocast to bf16, attn_implementation="sdpa". No attention mask is passed: rows
are right-padded and attention is causal, so pads change no labelled position (svlm does the
same). The batch moves from pinned host memory to the GPU inside each timed step, as svlm
uploads it inside its step.
"""
import argparse
import json
import math
import os
import resource
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyreq import require  # noqa: E402

if "--table" not in sys.argv[1:]:
    require("torch", "transformers", "peft", "safetensors", "numpy")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROJ = "model.mm_projector."


def gib(b):
    return b / 2**30


def fmt_bytes(b):
    return f"{gib(b):.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


# --------------------------------------------------------------------------------------------
# comparison table (no torch needed)


def table(paths):
    res = {}
    for p in paths:
        if not os.path.exists(p):
            print(f"bench: {p}: missing (that run failed or did not run)")
            continue
        with open(p) as fh:
            r = json.load(fh)
        res[(r["stage"], r["impl"])] = r
    if not res:
        print("bench: no results to compare")
        return 1
    print()
    hdr = ("stage", "impl", "device", "B", "ms/step", "samples/s", "tokens/s", "peak GiB", "TFLOP/s", "MFU", "first loss")
    rows = []
    for (stage, impl), r in sorted(res.items()):
        if r.get("gradient_checkpointing"):
            impl += "+ckpt"
        if r.get("oom"):
            rows.append((str(stage), impl, r["device"], str(r["batch"]), "OOM", "", "", "", "", "", ""))
            continue
        rows.append((str(stage), impl, r["device"], str(r["batch"]), f"{r['ms_mean']:.1f}", f"{r['samples_per_s']:.1f}",
                     f"{r['tokens_per_s']:.0f}", f"{gib(r['peak_bytes']):.2f}", f"{r['tflops']:.1f}",
                     f"{100 * r['mfu']:.1f}%", f"{r['loss_first']:.5f}"))
    w = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    line = lambda cells: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(cells)) + " |"
    print(line(hdr))
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for row in rows:
        print(line(row))
    print()
    for stage in sorted({s for s, _ in res}):
        a, b = res.get((stage, "svlm")), res.get((stage, "torch"))
        if not a or not b or a.get("oom") or b.get("oom"):
            print(f"bench: stage {stage}: no comparison (a run is missing or ran out of memory)")
            continue
        speed = a["samples_per_s"] / b["samples_per_s"]
        mem = a["peak_bytes"] / b["peak_bytes"]
        dl = abs(a["loss_first"] - b["loss_first"])
        ok = speed >= 2.0 and mem <= 1.0
        gpu = a["device"] == "cuda" and b["device"] == "cuda"
        verdict = ("met" if ok else "NOT met") if gpu else "not judged (not both on CUDA; CPU memory figures differ in kind)"
        tl = "torch" + (" (with gradient checkpointing: it ran out of memory without)" if b.get("oom_without_checkpointing")
                        else " (with gradient checkpointing)" if b.get("gradient_checkpointing") else "")
        print(f"bench: stage {stage}: svlm vs {tl}: samples/s {speed:.2f}x, peak memory {mem:.2f}x, "
              f"first-step loss {a['loss_first']:.5f} vs {b['loss_first']:.5f} (diff {dl:.2e}, "
              f"rel {dl / max(abs(b['loss_first']), 1e-30):.2e}); goal (>= 2x samples/s, <= 1x memory): {verdict}")
    return 0


# --------------------------------------------------------------------------------------------
# the model


def load_ldp():
    """The LDP connector class the parity fixtures use (scripts/make_fixtures.py), one definition."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_fixtures import LDP
    return LDP


def internvit_native(vdir, vcfg, dtype, attn):
    """InternVL's remote-code InternViT directory (svlm's random one) as transformers' native
    InternVLVisionModel: the same weights renamed, the fused qkv split into q, k, v (rows q, k, v)"""
    import torch
    from safetensors.torch import load_file
    from transformers import InternVLVisionConfig, InternVLVisionModel
    sd = load_file(os.path.join(vdir, "model.safetensors"))
    cfg = InternVLVisionConfig(hidden_size=vcfg["hidden_size"], intermediate_size=vcfg["intermediate_size"],
                               num_hidden_layers=vcfg["num_hidden_layers"], num_attention_heads=vcfg["num_attention_heads"],
                               image_size=vcfg["image_size"], patch_size=vcfg["patch_size"],
                               attention_bias=vcfg.get("qkv_bias", False), norm_type="layer_norm",
                               layer_norm_eps=vcfg["layer_norm_eps"], hidden_act=vcfg["hidden_act"],
                               use_mean_pooling=True, attn_implementation=attn)
    ren = {"embeddings.class_embedding": "embeddings.cls_token",
           "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
           "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
           "embeddings.position_embedding": "embeddings.position_embeddings"}
    layer_ren = {"attn.proj": "attention.projection_layer", "ls1": "lambda_1", "ls2": "lambda_2",
                 "norm1": "layernorm_before", "norm2": "layernorm_after", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    out = {}
    for k, v in sd.items():
        k = k[len("vision_model."):] if k.startswith("vision_model.") else k
        if k in ren:
            out[ren[k]] = v
            continue
        if not k.startswith("encoder.layers."):
            continue  # a final norm svlm never runs
        l, name = k[len("encoder.layers."):].split(".", 1)
        pre = f"encoder.layer.{l}."
        if name.startswith("attn.qkv."):
            for x, part in zip("qkv", v.chunk(3, 0)):
                out[pre + f"attention.{x}_proj." + name[len("attn.qkv."):]] = part.contiguous()
            continue
        for a, b in layer_ren.items():
            if name == a or name.startswith(a + "."):
                out[pre + b + name[len(a):]] = v
                break
        else:
            raise KeyError(k)
    model = InternVLVisionModel(cfg)
    model.load_state_dict(out, strict=True)
    return model.to(dtype)


def make_connector(name, cv, h, scale):
    """the connector's torch module and the prefix that turns its parameter names into svlm's"""
    import torch.nn as nn
    if name == "ldp":
        return load_ldp()(cv, h), PROJ
    if name == "internvl":
        from transformers.models.internvl.modeling_internvl import InternVLModel

        class InternVLConnector(nn.Module):  # pixel shuffle 0.5 (ps_version v2), then mlp1
            def __init__(self):
                super().__init__()
                self.mlp1 = nn.Sequential(nn.LayerNorm(4 * cv), nn.Linear(4 * cv, h), nn.GELU(), nn.Linear(h, h))

            def forward(self, x):
                b, n, c = x.shape
                g = int(round(math.sqrt(n)))
                x = InternVLModel.pixel_shuffle(None, x.reshape(b, g, g, c), scale_factor=0.5)
                return self.mlp1(x.reshape(b, -1, x.shape[-1]))
        return InternVLConnector(), ""
    if name == "idefics3":
        from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

        class Projection(nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = nn.Linear(scale * scale * cv, h, bias=False)

        class Idefics3Like(nn.Module):  # Idefics3Connector: pixel shuffle by scale, then the Linear
            def __init__(self):
                super().__init__()
                self.modality_projection = Projection()

            def forward(self, x):
                return self.modality_projection.proj(Idefics3Connector.pixel_shuffle(None, x, scale))
        return Idefics3Like(), "model.connector."
    raise SystemExit(f"bench: connector {name} is not one bench_torch.py runs (ldp, internvl, idefics3)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", help="batch file written by bench_step --save-batch")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                    help="bfloat16: frozen weights bf16, trainable fp32, autocast bf16 (default on CUDA); "
                         "float32: everything fp32, no autocast (default on CPU; parity checks)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: the batch file's)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: the batch file's)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (default 989)")
    ap.add_argument("--result", help="write the measurements as JSON")
    ap.add_argument("--full-vision", action="store_true",
                    help="run every vision layer (as LLaVA does) instead of stopping at vision_layer")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="LLM gradient checkpointing from the start (by default only after running out of memory)")
    ap.add_argument("--no-retry", action="store_true",
                    help="on CUDA out of memory, do not retry with gradient checkpointing")
    ap.add_argument("--attn", default="sdpa", help='attn_implementation (default "sdpa")')
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print a comparison table of result files and exit")
    args = ap.parse_args()
    if args.table:
        return table(args.table)
    if not args.batch:
        ap.error("--batch is required")

    import torch
    import torch.nn as nn
    from safetensors import safe_open
    from safetensors.torch import load_file
    import transformers
    from transformers import AutoModelForCausalLM, CLIPVisionModel, SiglipVisionModel
    from transformers.utils import logging as hf_logging
    import peft
    from peft import LoraConfig, get_peft_model

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    bf16 = dtype == "bfloat16"
    wdtype = torch.bfloat16 if bf16 else torch.float32

    with safe_open(args.batch, "pt") as f:
        meta = f.metadata()
    t = load_file(args.batch)
    stage = int(meta["stage"])
    warmup = args.warmup if args.warmup is not None else int(meta["warmup"])
    steps = args.steps if args.steps is not None else int(meta["steps"])
    if steps < 1:
        ap.error("--steps must be at least 1")
    lora_r, lora_alpha = int(meta["lora_r"]), float(meta["lora_alpha"])
    vision_layer = int(meta["vision_layer"])
    conn_name = meta["connector"]
    tdir = os.path.dirname(args.batch)
    trainable = load_file(os.path.join(tdir, meta["trainable_file"]))

    devname = torch.cuda.get_device_name(dev) if cuda else "cpu"
    print(f"bench: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"device {devname}, {dtype}{' autocast' if bf16 else ''}, attn {args.attn}")
    t_load = time.perf_counter()
    with open(os.path.join(meta["vision_dir"], "config.json")) as fh:
        vcfg = json.load(fh)
    vtype = vcfg.get("model_type", "clip_vision_model")
    if vtype in ("clip_vision_model", "clip"):
        clip = CLIPVisionModel.from_pretrained(meta["vision_dir"], dtype=wdtype, attn_implementation=args.attn)
    elif vtype == "siglip_vision_model":
        clip = SiglipVisionModel.from_pretrained(meta["vision_dir"], dtype=wdtype, attn_implementation=args.attn)
    elif vtype == "intern_vit_6b":
        clip = internvit_native(meta["vision_dir"], vcfg, wdtype, args.attn)
    else:
        raise SystemExit(f"bench: vision model_type {vtype} is not one bench_torch.py runs")
    cls = 0 if vtype == "siglip_vision_model" else 1  # a class token leads the sequence (dropped)
    post_norm = conn_name == "idefics3"  # Idefics3 reads last_hidden_state: post_layernorm applied
    n_layers = clip.config.num_hidden_layers
    n_run = n_layers + 1 + vision_layer if vision_layer < 0 else vision_layer  # hidden_states index
    assert not post_norm or n_run == n_layers, "the post-norm connector reads the last layer"
    if not args.full_vision:
        enc = getattr(clip, "vision_model", clip).encoder  # transformers 5.2x flattened the towers
        attr = "layers" if hasattr(enc, "layers") else "layer"  # InternVLVisionEncoder: .layer
        setattr(enc, attr, getattr(enc, attr)[:n_run])
    clip = clip.to(dev).eval().requires_grad_(False)

    llm = AutoModelForCausalLM.from_pretrained(meta["llm_dir"], dtype=wdtype, attn_implementation=args.attn)
    llm.requires_grad_(False)
    if stage == 2:
        lcfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, bias="none",
                          target_modules=meta["lora_targets"].split(","), task_type="CAUSAL_LM")
        model = get_peft_model(llm, lcfg)
    else:
        model = llm
    model = model.to(dev)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # dropout is 0 everywhere: train() changes nothing but the flag, as in the Trainer

    grid = vcfg.get("image_size", 224) // vcfg.get("patch_size", 32)
    scale = max(1, grid // max(1, int(round(math.sqrt(int(meta["image_tokens"]))))))  # patches per token side
    conn, prefix = make_connector(conn_name, clip.config.hidden_size, llm.config.hidden_size, scale)
    conn = conn.to(dev)  # fp32 master weights

    # the initial trainable tensors bench_step used, under svlm's names
    conn_params = list(conn.parameters())
    lora_params, placed = [], {}
    for name, p in conn.named_parameters():
        placed[prefix + name] = p
    for name, p in model.named_parameters():
        if "lora_" in name:
            # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
            placed[name[len("base_model.model."):].replace(".default.", ".")] = p
            lora_params.append(p)
    missing = set(trainable) ^ set(placed)
    assert not missing, f"trainable tensors in one set only: {sorted(missing)[:5]}"
    with torch.no_grad():
        for p in lora_params:
            p.data = p.data.to(torch.float32)  # trainable tensors in fp32 (peft may have made them bf16)
            p.requires_grad_(True)

    def init_trainables():
        with torch.no_grad():
            for sv, p in placed.items():
                src = trainable[sv]
                assert src.shape == p.shape, (sv, src.shape, p.shape)
                p.copy_(src)

    init_trainables()
    lr, conn_lr = float(meta["lr"]), float(meta["connector_lr"])
    b1, b2, eps = (float(x) for x in meta["adam_betas_eps"].split(","))
    wd, clip_norm = float(meta["weight_decay"]), float(meta["grad_clip"])
    params = conn_params + lora_params

    def make_opt():
        groups = [{"params": conn_params, "lr": conn_lr}]
        if lora_params:
            groups.append({"params": lora_params, "lr": lr})
        return torch.optim.AdamW(groups, betas=(b1, b2), eps=eps, weight_decay=wd, fused=cuda)

    opt_box = [make_opt()]
    embed = llm.get_input_embeddings()
    if cuda:
        torch.cuda.synchronize()
    t_load = time.perf_counter() - t_load
    n_conn = sum(p.numel() for p in conn_params)
    n_lora = sum(p.numel() for p in lora_params)
    print(f"bench: trainable: connector {n_conn}, LoRA {n_lora} parameters; vision layers run {n_run} of {n_layers}"
          f"{' (all: --full-vision)' if args.full_vision else ''}; models loaded in {t_load:.1f} s")

    # the batch, on the host (pinned on CUDA), moved inside each step
    ids_h = t["input_ids"].long()
    labels_h = t["labels"].long()
    pix_h = t["pixel_values"].float()
    img_row, img_start = t["img_row"].long(), t["img_start"].long()
    B, T = ids_h.shape
    n_img, slot = pix_h.shape[0], int(meta["image_tokens"])
    mask_h = torch.zeros(B, T, dtype=torch.bool)
    order = sorted(range(n_img), key=lambda i: (int(img_row[i]), int(img_start[i])))
    assert order == list(range(n_img)), "images must come in row-major order for masked_scatter"
    for i in range(n_img):
        mask_h[img_row[i], img_start[i]:img_start[i] + slot] = True
    if cuda:
        ids_h, labels_h, pix_h, mask_h = (x.pin_memory() for x in (ids_h, labels_h, pix_h, mask_h))
    tokens, labelled = int(meta["tokens"]), int(meta["labelled"])
    flops = float(meta["model_flops"])

    def step():
        opt = opt_box[0]
        opt.zero_grad(set_to_none=True)
        ids = ids_h.to(dev, non_blocking=True)
        labels = labels_h.to(dev, non_blocking=True)
        pix = pix_h.to(dev, non_blocking=True)
        mask = mask_h.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                out = clip(pixel_values=pix.to(wdtype), output_hidden_states=True)
                feats = out.last_hidden_state if post_norm else out.hidden_states[n_run][:, cls:]
            img = conn(feats)                                       # (n_img, slot, H)
            emb = embed(ids)                                        # (B, T, H); slot rows replaced
            emb = emb.masked_scatter(mask.unsqueeze(-1).expand_as(emb), img.to(emb.dtype))
            res = model(inputs_embeds=emb, labels=labels, use_cache=False)
        loss = res.loss
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, clip_norm)
        opt.step()
        return loss.detach(), gn.detach()

    def run_steps():
        losses, times = [], []
        for s in range(warmup + steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss, gn = step()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            losses.append(float(loss))
            print(f"bench: step {s + 1}/{warmup + steps}{' (warm-up)' if s < warmup else ''}: loss {losses[-1]:.6f}, "
                  f"grad norm {float(gn):.4g}, {dt * 1e3:.1f} ms")
            if s >= warmup:
                times.append(dt)
        return losses, times

    oom = oom_first = False
    losses, times = [], []
    ckpt = args.gradient_checkpointing
    try:
        losses, times = run_steps()
    except torch.OutOfMemoryError as e:
        oom = True
        print(f"bench: torch ran out of memory at B={B}{' with gradient checkpointing' if ckpt else ''}: "
              f"{str(e).splitlines()[0]}")
    if oom and cuda and not ckpt and not args.no_retry:
        # what a PyTorch user does next: the same step with the LLM's activations recomputed
        import gc
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        oom_first, ckpt = True, True
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        init_trainables()
        opt_box[0] = make_opt()
        print("bench: retrying with gradient checkpointing (peak memory counted from here, weights included)")
        try:
            losses, times = run_steps()
            oom = False
        except torch.OutOfMemoryError as e:
            print(f"bench: torch ran out of memory again: {str(e).splitlines()[0]}")

    if cuda:
        peak = torch.cuda.max_memory_allocated(dev)
        reserved = torch.cuda.max_memory_reserved(dev)
        peak_what = f"torch.cuda.max_memory_allocated (max reserved {fmt_bytes(reserved)})"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        reserved = peak
        peak_what = "the process's peak RSS (CPU)"
    res = {"impl": "torch", "preset": meta["preset"], "stage": stage, "device": dev.type, "device_name": devname,
           "dtype": dtype, "batch": B, "T": T, "tokens": tokens, "labelled": labelled, "warmup": warmup,
           "steps": steps, "peak_bytes": peak, "peak_reserved_bytes": reserved, "model_flops": flops,
           "peak_tflops": args.peak_tflops, "losses": losses, "oom": oom, "gradient_checkpointing": ckpt,
           "oom_without_checkpointing": oom_first,
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__}}
    if not oom:
        mean, best = sum(times) / len(times), min(times)
        sps, tps, tfl = B / mean, tokens / mean, flops / mean / 1e12
        res.update(ms_best=best * 1e3, ms_mean=mean * 1e3, samples_per_s=sps, tokens_per_s=tps, tflops=tfl,
                   mfu=tfl / args.peak_tflops, loss_first=losses[0])
        print(f"bench: torch first-step loss {losses[0]:.6f} over {labelled} labelled positions")
        print(f"bench: step {best * 1e3:.1f} ms best, {mean * 1e3:.1f} ms mean of {steps} (after {warmup} warm-up); "
              f"throughput from the mean; tokens/s counts non-pad tokens, image tokens included; "
              f"peak = {peak_what}; FLOPs = bench_step's count of the same model")
        print(f"bench: torch{'+ckpt' if ckpt else ''} stage {stage} {meta['preset']} {dev.type} B={B}: {mean * 1e3:.1f} ms/step, "
              f"{sps:.1f} samples/s, {tps:.0f} tokens/s, peak {fmt_bytes(peak)}, {tfl:.1f} TFLOP/s, "
              f"MFU {100 * tfl / args.peak_tflops:.1f}%")
    if args.result:
        with open(args.result, "w") as fh:
            json.dump(res, fh)
            fh.write("\n")
    return 1 if oom else 0


if __name__ == "__main__":
    sys.exit(main())
