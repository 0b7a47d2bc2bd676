#!/usr/bin/env python3
"""Generate the Hugging Face parity fixtures that svlm's C model is tested against.

    python3 scripts/make_fixtures.py --out tests/fixtures

Writes small random models as real Hugging Face directories (save_pretrained), peft LoRA
adapters, connector weights, and reference outputs (logits, loss, gradients) as safetensors
files. Everything runs on the CPU in float32 with fixed seeds, one thread, deterministic
algorithms and eager attention, so a rerun rewrites the same bytes. tests/fixtures/README.md
describes every file and tensor.

Sanity checks are asserted along the way: tied/untied lm_head in the saved files, shard
count, reload equality (every reference is computed from the models as reloaded from disk),
LoRA changes the logits, HF's loss equals a loss recomputed here, and the ldp connector equals
an independent loop implementation.
"""
import argparse
import json
import math
import os
import shutil
import time
import warnings

from pyreq import require  # noqa: E402

require("numpy", "torch", "safetensors", "transformers", "peft")

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import transformers
from transformers import (CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel,
                          LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)
from transformers.utils import logging as hf_logging
import peft
from peft import LoraConfig, PeftModel, get_peft_model

ATTN = "eager"
PROJ = "model.mm_projector."

# --------------------------------------------------------------------------------------------
# configs


def clip_vision_config():
    return CLIPVisionConfig(hidden_size=40, intermediate_size=56, num_hidden_layers=3,
                            num_attention_heads=5, image_size=24, patch_size=4,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3)


def clip_full_config():
    vis = clip_vision_config().to_dict()
    txt = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
               num_attention_heads=2, max_position_embeddings=12, hidden_act="quick_gelu",
               layer_norm_eps=1e-5, projection_dim=8, pad_token_id=1, bos_token_id=62,
               eos_token_id=63)
    return CLIPConfig(text_config=txt, vision_config=vis, projection_dim=8)


# initializer_range 0.1 (HF default 0.02) only changes the random init: larger weights give
# non-uniform attention and non-flat logits, so layout bugs show up clearly in the parity tests.
def qwen2_config():
    return Qwen2Config(vocab_size=131, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-6,
                       rope_theta=1e6, tie_word_embeddings=True, max_position_embeddings=256,
                       initializer_range=0.1)


def llama_config():
    return LlamaConfig(vocab_size=113, hidden_size=40, intermediate_size=56, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                       rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                       attention_bias=False, mlp_bias=False, max_position_embeddings=256,
                       initializer_range=0.1)


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def qwen2_lora_config():
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      bias="none", task_type="CAUSAL_LM")


def llama_lora_config():
    return LoraConfig(r=3, lora_alpha=5, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      bias="none", use_rslora=True, task_type="CAUSAL_LM")


# --------------------------------------------------------------------------------------------
# connectors


class _Mlp(nn.Module):          # names: mlp.0, mlp.2
    def __init__(self, cv, h):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cv, h), nn.GELU(), nn.Linear(h, h))


class _Peg(nn.Module):          # names: peg.0
    def __init__(self, h):
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(h, h, 3, stride=1, padding=1, groups=h, bias=True))


class LDP(nn.Module):
    """MobileVLM-V2 LDPNetV2Projector: MLP, 2x2 average pool, depthwise 3x3 conv + residual."""

    def __init__(self, cv, h):
        super().__init__()
        self.mlp = _Mlp(cv, h)
        self.pool = nn.AvgPool2d(2)
        self.peg = _Peg(h)

    def forward(self, x):                              # x (B, N, Cv), N = g*g, index y*g + x
        x = self.mlp.mlp(x)                            # (B, N, H)
        b, n, h = x.shape
        g = int(round(math.sqrt(n)))
        x = x.transpose(1, 2).reshape(b, h, g, g)      # (B, H, g, g)
        x = self.pool(x)                               # (B, H, g/2, g/2)
        x = self.peg.peg(x) + x
        return x.flatten(2).transpose(1, 2)            # (B, (g/2)^2, H), index y*(g/2) + x


class MLP2xGelu(nn.Module):
    """LLaVA-1.5 mlp2x_gelu: names 0.*, 2.*"""

    def __init__(self, cv, h):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(cv, h), nn.GELU(), nn.Linear(h, h))

    def forward(self, x):
        return self.proj(x)

    def named_for_file(self):
        return {k.replace("proj.", "", 1): v for k, v in self.state_dict().items()}


def connector_state(conn):
    if isinstance(conn, MLP2xGelu):
        sd = conn.named_for_file()
    else:
        sd = conn.state_dict()
    return {PROJ + k: v.detach().clone().contiguous() for k, v in sd.items()}


def connector_named_params(conn):
    out = {}
    for k, p in conn.named_parameters():
        if isinstance(conn, MLP2xGelu):
            k = k.replace("proj.", "", 1)
        out[PROJ + k] = p
    return out


def load_connector(conn, path):
    sd = load_file(path)
    named = connector_named_params(conn)
    assert set(sd) == set(named), (sorted(sd), sorted(named))
    with torch.no_grad():
        for k, p in named.items():
            p.copy_(sd[k])


def ldp_reference_loops(conn, feats):
    """Independent float64 numpy implementation of LDP for one image: feats (N, Cv)."""
    sd = {k: v.detach().double().numpy() for k, v in connector_state(conn).items()}
    w0, b0 = sd[PROJ + "mlp.mlp.0.weight"], sd[PROJ + "mlp.mlp.0.bias"]
    w2, b2 = sd[PROJ + "mlp.mlp.2.weight"], sd[PROJ + "mlp.mlp.2.bias"]
    pw, pb = sd[PROJ + "peg.peg.0.weight"], sd[PROJ + "peg.peg.0.bias"]
    f = feats.detach().double().numpy()
    n, cv = f.shape
    h = w0.shape[0]
    g = int(round(math.sqrt(n)))
    tok = np.zeros((n, h))
    for t in range(n):
        a = w0 @ f[t] + b0
        a = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in a])
        tok[t] = w2 @ a + b2
    gp = g // 2
    pooled = np.zeros((gp, gp, h))
    for y in range(gp):
        for x in range(gp):
            for dy in range(2):
                for dx in range(2):
                    pooled[y, x] += tok[(2 * y + dy) * g + (2 * x + dx)]
            pooled[y, x] /= 4.0
    out = np.zeros((gp * gp, h))
    for y in range(gp):
        for x in range(gp):
            for c in range(h):
                s = pb[c] + pooled[y, x, c]
                for ky in range(3):
                    for kx in range(3):
                        yy, xx = y + ky - 1, x + kx - 1
                        if 0 <= yy < gp and 0 <= xx < gp:
                            s += pw[c, 0, ky, kx] * pooled[yy, xx, c]
                out[y * gp + x, c] = s
    return out


# --------------------------------------------------------------------------------------------
# helpers


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def perturb_layernorms(model, seed):
    g = gen(seed)
    with torch.no_grad():
        for name, m in sorted(model.named_modules()):
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def perturb_clip(model, seed):
    perturb_layernorms(model, seed)
    g = gen(seed + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("embeddings.class_embedding"):
                p.copy_(torch.randn(p.shape, generator=g))


def perturb_llm(model, seed):
    g = gen(seed)
    with torch.no_grad():
        for name, m in sorted(model.named_modules()):
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
        for name, p in sorted(model.named_parameters()):
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def safetensors_keys(d):
    keys = []
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), "pt") as fh:
                keys += list(fh.keys())
    return keys


def state_equal(a, b, exact=True):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb), set(sa) ^ set(sb)
    for k in sa:
        if exact:
            assert torch.equal(sa[k], sb[k].to(sa[k].dtype)), k
        else:
            assert torch.equal(sa[k].to(sb[k].dtype), sb[k]), k


def clean_dir(d):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)


def load_llm(cls, d, dtype=torch.float32):
    m = cls.from_pretrained(d, dtype=dtype, attn_implementation=ATTN)
    return m.eval()


def vision_features(clip_vision, pixel_values):
    with torch.no_grad():
        out = clip_vision(pixel_values=pixel_values, output_hidden_states=True)
    return out.hidden_states[-2][:, 1:].contiguous()


def hf_loss_check(logits, labels, loss):
    lg = logits.detach().double()
    lab = labels.long()
    tot, cnt = 0.0, 0
    b, t, v = lg.shape
    for i in range(b):
        for j in range(t - 1):
            y = int(lab[i, j + 1])
            if y != -100:
                tot -= float(torch.log_softmax(lg[i, j], dim=-1)[y])
                cnt += 1
    mine = tot / cnt
    assert abs(mine - loss.item()) <= 1e-5 * max(1.0, abs(mine)), (mine, loss.item())
    return cnt


def svlm_name(peft_name):
    """base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight ->
    model.layers.0.self_attn.q_proj.lora_A.weight"""
    assert peft_name.startswith("base_model.model."), peft_name
    n = peft_name[len("base_model.model."):]
    assert ".default." in n, n
    return n.replace(".default.", ".")


# --------------------------------------------------------------------------------------------
# batch


def make_batch(seed, V, T, n_img, starts, pads):
    """3 rows: row 0 image at starts[0], row 1 image at starts[1] ending in `pads` pad
    positions, row 2 text only. Labels on about half of the text positions after the slot
    (always the first position after the slot), -100 on image slots and pads."""
    g = gen(seed)
    B = 3
    ids = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64)
    labels = torch.full((B, T), -100, dtype=torch.int64)
    pad_id = V - 1
    img_row = torch.tensor([0, 1], dtype=torch.int32)
    img_start = torch.tensor(starts, dtype=torch.int32)
    coin = torch.rand((B, T), generator=g)
    for r in range(B):
        end = T - pads if r == 1 else T
        if r < 2:
            s = starts[r]
            ids[r, s:s + n_img] = 0
            first = s + n_img
        else:
            first = 4
        ids[r, end:] = pad_id
        for p in range(first, end):
            if p == first or coin[r, p] < 0.5:
                labels[r, p] = ids[r, p]
    assert starts[1] + n_img + 1 < T - pads
    return ids, labels, img_row, img_start


def build_embeds(llm, ids, conn_out, img_row, img_start):
    emb = llm.get_input_embeddings()(ids)
    emb = emb.clone()
    n = conn_out.shape[1]
    for i in range(conn_out.shape[0]):
        r, s = int(img_row[i]), int(img_start[i])
        emb[r, s:s + n] = conn_out[i]
    return emb


# --------------------------------------------------------------------------------------------
# pieces of run_vlm shared with make_family_fixtures.py


def setup_torch():
    """quiet transformers, one thread, deterministic float32: a rerun rewrites the same bytes"""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)


def versions():
    return dict(torch=torch.__version__, transformers=transformers.__version__,
                peft=peft.__version__)


def lora_step(model, conn, feats, ids, labels, img_row, img_start):
    """forward + backward of connector -> peft model; returns conn_out, embeds, the HF output
    and the number of labelled positions (HF's loss checked against hf_loss_check)"""
    conn.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    conn_out = conn(feats)
    embeds = build_embeds(model.get_base_model(), ids, conn_out, img_row, img_start)
    res = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), labels=labels)
    ntok = hf_loss_check(res.logits, labels, res.loss)
    res.loss.backward()
    return conn_out, embeds, res, ntok


def batch_tensors(pixel_values, ids, labels, img_row, img_start, feats, conn_out):
    """the inputs of a vlm_* file, in file order"""
    return {
        "pixel_values": pixel_values.contiguous(),
        "input_ids": ids.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "img_row": img_row.contiguous(),
        "img_start": img_start.contiguous(),
        "vision_features": feats.contiguous(),
        "connector_out": conn_out.detach().contiguous(),
    }


def add_lora_grads(tensors, model):
    """grad.<svlm name> of every trainable (LoRA) parameter; returns how many"""
    nlora = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert "lora_" in name, name
            assert p.grad is not None, name
            tensors["grad." + svlm_name(name)] = p.grad.detach().clone().contiguous()
            nlora += 1
    return nlora


def base_logits(model, embeds, ids, logits):
    """the logits with the adapter disabled, and their max change from `logits`"""
    with torch.no_grad():
        with model.disable_adapter():
            lb = model(inputs_embeds=embeds.detach(), attention_mask=torch.ones_like(ids)).logits
    diff = float((logits.detach() - lb).abs().max())
    assert diff > 0.05, f"LoRA barely changes the logits: {diff}"
    return lb, diff


def stage1_step(llm_cls, llm_dir, conn, feats, ids, labels, img_row, img_start):
    """stage 1: the base LLM without any LoRA, frozen; only the connector gets gradients"""
    llm = load_llm(llm_cls, llm_dir)
    for p in llm.parameters():
        p.requires_grad_(False)
    conn.zero_grad(set_to_none=True)
    conn_out1 = conn(feats)
    emb1 = build_embeds(llm, ids, conn_out1, img_row, img_start)
    r1 = llm(inputs_embeds=emb1, attention_mask=torch.ones_like(ids), labels=labels)
    hf_loss_check(r1.logits, labels, r1.loss)
    r1.loss.backward()
    return r1


def run_vlm(out, tag, llm_dir, llm_cls, lora_dir, clip_dir, conn, conn_file, pixel_values,
            T, starts, pads, seed, stage1_tag=None):
    clip = CLIPVisionModel.from_pretrained(clip_dir, dtype=torch.float32,
                                           attn_implementation=ATTN).eval()
    feats = vision_features(clip, pixel_values)                          # (2, 36, 40)
    load_connector(conn, conn_file)
    conn.eval()

    base = load_llm(llm_cls, llm_dir)
    model = PeftModel.from_pretrained(base, lora_dir, is_trainable=True).eval()
    V = base.config.vocab_size
    n_img = 9 if isinstance(conn, LDP) else 36
    ids, labels, img_row, img_start = make_batch(seed, V, T, n_img, starts, pads)

    # LoRA forward + backward
    conn_out, embeds, res, ntok = lora_step(model, conn, feats, ids, labels, img_row, img_start)
    logits, loss = res.logits, res.loss

    tensors = batch_tensors(pixel_values, ids, labels, img_row, img_start, feats, conn_out)
    tensors["logits"] = logits.detach().contiguous()
    tensors["loss"] = loss.detach().reshape(1).contiguous()
    lb, diff = base_logits(model, embeds, ids, logits)
    tensors["logits_base"] = lb.detach().contiguous()

    # the merge convention svlm uses: W[out,in] += scaling * B[out,r] @ A[r,in], with scaling
    # alpha/r, or alpha/sqrt(r) under rsLoRA, read from adapter_config.json
    with open(os.path.join(lora_dir, "adapter_config.json")) as fh:
        acfg = json.load(fh)
    scaling = acfg["lora_alpha"] / (math.sqrt(acfg["r"]) if acfg["use_rslora"] else acfg["r"])
    merged = load_llm(llm_cls, llm_dir)
    ad = load_file(os.path.join(lora_dir, "adapter_model.safetensors"))
    msd = merged.state_dict()
    with torch.no_grad():
        for k in ad:
            if ".lora_A." in k:
                mod = k[len("base_model.model."):-len(".lora_A.weight")]
                a, b = ad[k], ad[k.replace(".lora_A.", ".lora_B.")]
                msd[mod + ".weight"] += scaling * (b.double() @ a.double()).float()
        lm = merged(inputs_embeds=embeds.detach(), attention_mask=torch.ones_like(ids)).logits
    merr = float((lm - logits.detach()).abs().max())
    assert merr < 1e-4, f"manual merge (scaling {scaling}) differs from peft: {merr}"

    nlora = add_lora_grads(tensors, model)
    for name, p in connector_named_params(conn).items():
        tensors["grad." + name] = p.grad.detach().clone().contiguous()
    # the adapter file holds exactly the tensors we took gradients of
    ad = load_file(os.path.join(lora_dir, "adapter_model.safetensors"))
    ad_names = {k[len("base_model.model."):] for k in ad}
    grad_lora = {k[len("grad."):] for k in tensors if k.startswith("grad.") and "lora_" in k}
    assert ad_names == grad_lora, ad_names ^ grad_lora

    if isinstance(conn, LDP):
        ref = ldp_reference_loops(conn, feats[0])
        got = conn_out[0].detach().double().numpy()
        err = np.abs(ref - got).max()
        assert err < 1e-5 * max(1.0, np.abs(ref).max()), f"ldp loop mismatch {err}"
        ref1 = ldp_reference_loops(conn, feats[1])
        assert np.abs(ref1 - conn_out[1].detach().double().numpy()).max() < 1e-5 * max(1.0, np.abs(ref1).max())

    save_file(tensors, os.path.join(out, f"{tag}.safetensors"))
    info = dict(file=f"{tag}.safetensors", loss=loss.item(), labelled=ntok, lora_tensors=nlora,
                max_lora_logit_change=diff, lora_scaling=scaling, merge_err=merr)

    if stage1_tag:
        r1 = stage1_step(llm_cls, llm_dir, conn, feats, ids, labels, img_row, img_start)
        assert torch.allclose(r1.logits, lb, atol=1e-5, rtol=1e-5)
        t1 = {k: tensors[k] for k in ("pixel_values", "input_ids", "labels", "img_row",
                                      "img_start", "vision_features", "connector_out")}
        t1["logits"] = r1.logits.detach().contiguous()
        t1["loss"] = r1.loss.detach().reshape(1).contiguous()
        for name, p in connector_named_params(conn).items():
            t1["grad." + name] = p.grad.detach().clone().contiguous()
        save_file(t1, os.path.join(out, f"{stage1_tag}.safetensors"))
        info["stage1_loss"] = r1.loss.item()
    return info


# --------------------------------------------------------------------------------------------
# main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    out = args.out
    started = time.time() - 2  # files this run writes have later mtimes (2 s for coarse clocks)

    setup_torch()
    os.makedirs(out, exist_ok=True)
    log = {}

    # ---- 1. clip (CLIPVisionModel)
    d = os.path.join(out, "clip")
    clean_dir(d)
    torch.manual_seed(1001)
    clip = CLIPVisionModel(clip_vision_config()).eval()
    perturb_clip(clip, 1002)
    clip.save_pretrained(d)
    re = CLIPVisionModel.from_pretrained(d, dtype=torch.float32)
    state_equal(clip, re)
    # transformers 5 CLIPVisionModel has no `vision_model` submodule: its file has bare names
    # (embeddings.*, pre_layrnorm.*, encoder.*, post_layernorm.*), unlike a CLIPModel file or a
    # CLIPVisionModel saved by transformers 4 (both prefixed with `vision_model.`).
    keys = safetensors_keys(d)
    assert "embeddings.class_embedding" in keys
    assert not any(k.startswith("vision_model.") for k in keys)

    # ---- 2. clip_full (CLIPModel with its own vision weights)
    d = os.path.join(out, "clip_full")
    clean_dir(d)
    torch.manual_seed(2001)
    clipf = CLIPModel(clip_full_config()).eval()
    perturb_clip(clipf, 2002)
    clipf.save_pretrained(d)
    keys = safetensors_keys(d)
    assert any(k.startswith("text_model.") for k in keys)
    assert "vision_model.embeddings.class_embedding" in keys

    # ---- 3. qwen2
    d = os.path.join(out, "qwen2")
    clean_dir(d)
    torch.manual_seed(3001)
    qwen = Qwen2ForCausalLM(qwen2_config()).eval()
    perturb_llm(qwen, 3002)
    qwen.save_pretrained(d)
    keys = safetensors_keys(d)
    assert "lm_head.weight" not in keys, "qwen2 must be saved tied (no lm_head.weight)"
    assert "model.layers.0.self_attn.q_proj.bias" in keys
    re = load_llm(Qwen2ForCausalLM, d)
    state_equal(qwen, re)
    assert re.lm_head.weight.data_ptr() == re.model.embed_tokens.weight.data_ptr()

    # ---- 4. llama
    d = os.path.join(out, "llama")
    clean_dir(d)
    torch.manual_seed(4001)
    llama = LlamaForCausalLM(llama_config()).eval()
    perturb_llm(llama, 4002)
    llama.save_pretrained(d)
    keys = safetensors_keys(d)
    assert "lm_head.weight" in keys, "llama must have a separate lm_head.weight"
    re = load_llm(LlamaForCausalLM, d)
    state_equal(llama, re)
    assert re.model.layers[0].self_attn.q_proj.weight.shape == (4 * 12, 40)

    # ---- 5. variants
    d = os.path.join(out, "qwen2_sharded")
    clean_dir(d)
    qwen.save_pretrained(d, max_shard_size="40KB")
    shards = [f for f in os.listdir(d) if f.endswith(".safetensors")]
    assert os.path.exists(os.path.join(d, "model.safetensors.index.json"))
    assert len(shards) >= 3, shards
    assert "lm_head.weight" not in safetensors_keys(d)
    state_equal(qwen, load_llm(Qwen2ForCausalLM, d))
    for dt, name in ((torch.bfloat16, "llama_bf16"), (torch.float16, "llama_f16")):
        d = os.path.join(out, name)
        clean_dir(d)
        m = LlamaForCausalLM(llama_config())
        m.load_state_dict(llama.state_dict())
        m = m.to(dt)
        m.save_pretrained(d)
        re = LlamaForCausalLM.from_pretrained(d)     # dtype defaults to "auto" in v5
        assert re.model.embed_tokens.weight.dtype == dt
        state_equal(m, re)
        with safe_open(os.path.join(d, "model.safetensors"), "pt") as fh:
            assert fh.get_tensor("lm_head.weight").dtype == dt
        del m, re

    # ---- 6. LoRA adapters
    for lname, base, lcfg, seed in (("qwen2_lora", qwen, qwen2_lora_config(), 6001),
                                    ("llama_lora", llama, llama_lora_config(), 6101)):
        d = os.path.join(out, lname)
        clean_dir(d)
        cls = type(base)
        b = cls(base.config)
        b.load_state_dict(base.state_dict())
        torch.manual_seed(seed)
        pm = get_peft_model(b, lcfg)
        g = gen(seed + 1)
        with torch.no_grad():
            for name, p in sorted(pm.named_parameters()):
                if "lora_A" in name or "lora_B" in name:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
        pm.save_pretrained(d)
        readme = os.path.join(d, "README.md")    # peft's model card: not needed
        if os.path.exists(readme):
            os.remove(readme)
        # peft keeps target_modules as a set, so its JSON order follows the hash seed: sort it
        # (peft writes json.dumps(indent=2, sort_keys=True)) so reruns give the same bytes.
        cpath = os.path.join(d, "adapter_config.json")
        with open(cpath) as fh:
            cfg = json.load(fh)
        cfg["target_modules"] = sorted(cfg["target_modules"])
        with open(cpath, "w") as fh:
            fh.write(json.dumps(cfg, indent=2, sort_keys=True))
        ad = load_file(os.path.join(d, "adapter_model.safetensors"))
        assert len(ad) == 2 * len(LORA_TARGETS) * base.config.num_hidden_layers, len(ad)
        del pm, b

    # ---- 7. connectors
    torch.manual_seed(7001)
    ldp = LDP(40, 48)
    with torch.no_grad():    # non-default-looking biases everywhere
        ldp.peg.peg[0].bias.copy_(0.1 * torch.randn(48, generator=gen(7002)))
    save_file(connector_state(ldp), os.path.join(out, "ldp_qwen2.safetensors"))
    torch.manual_seed(7101)
    mlp2x = MLP2xGelu(40, 40)
    save_file(connector_state(mlp2x), os.path.join(out, "mlp2x_llama.safetensors"))

    # ---- images (normalised pixels)
    pixel_values = torch.randn((2, 3, 24, 24), generator=gen(8001))

    # ---- 7b. reference computations (models reloaded from disk)
    log["qwen2_ldp"] = run_vlm(out, "vlm_qwen2_ldp", os.path.join(out, "qwen2"), Qwen2ForCausalLM,
                               os.path.join(out, "qwen2_lora"), os.path.join(out, "clip"),
                               LDP(40, 48), os.path.join(out, "ldp_qwen2.safetensors"),
                               pixel_values, T=23, starts=[2, 5], pads=3, seed=9001,
                               stage1_tag="vlm_qwen2_ldp_stage1")
    log["llama_mlp2x"] = run_vlm(out, "vlm_llama_mlp2x", os.path.join(out, "llama"),
                                 LlamaForCausalLM, os.path.join(out, "llama_lora"),
                                 os.path.join(out, "clip"), MLP2xGelu(40, 40),
                                 os.path.join(out, "mlp2x_llama.safetensors"), pixel_values,
                                 T=50, starts=[2, 5], pads=3, seed=9101)

    # ---- 8. clip_full features
    cf = CLIPModel.from_pretrained(os.path.join(out, "clip_full"), dtype=torch.float32,
                                   attn_implementation=ATTN).eval()
    feats_full = vision_features(cf.vision_model, pixel_values)
    feats_clip = load_file(os.path.join(out, "vlm_qwen2_ldp.safetensors"))["vision_features"]
    assert (feats_full - feats_clip).abs().max() > 0.05, "clip_full must differ from clip"
    save_file({"pixel_values": pixel_values.contiguous(), "vision_features": feats_full},
              os.path.join(out, "clip_full_features.safetensors"))

    # the size of what this run wrote (the folder also holds other scripts' fixtures)
    total = 0
    for root, _, files in os.walk(out):
        for f in files:
            st = os.stat(os.path.join(root, f))
            if st.st_mtime >= started:
                total += st.st_size
    log["total_bytes"] = total
    log["versions"] = versions()
    print(json.dumps(log, indent=1))
    assert total < 3 * 1024 * 1024, total


if __name__ == "__main__":
    main()
