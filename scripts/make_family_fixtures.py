#!/usr/bin/env python3
"""Generate the parity fixtures of the SigLIP and Idefics3 vision towers and connector.

    python3 scripts/make_family_fixtures.py --out tests/fixtures

Run after scripts/make_fixtures.py (it reuses that script's llama and llama_lora fixtures).
Writes, as real Hugging Face directories (save_pretrained) and safetensors references:

  siglip/                      SiglipVisionModel (30 px, patch 5: a 6x6 grid, width 36, 3 heads)
  siglip_features.safetensors  pixel_values (2,3,30,30), vision_features = hidden_states[-2],
                               last_hidden_state (post_layernorm applied)
  idefics3_vision/             Idefics3VisionTransformer (27 px, patch 1: a 27x27 grid, as
                               SigLIP-so400m/14 at 384 px in Idefics3 / SmolVLM)
  idefics3_llama.safetensors   Idefics3Connector (scale_factor 3) weights, Idefics3's names
  vlm_llama_idefics3.safetensors  the full VLM (Idefics3 vision last_hidden_state -> pixel
                               shuffle 3 -> Linear -> llama + rsLoRA): logits, loss, connector
                               and LoRA gradients, as make_fixtures.py's vlm_* files
  vlm_llama_idefics3_stage1.safetensors  the same without LoRA (connector gradients only)
  internvl_vision/             InternVLVisionModel, transformers' native InternViT (30 px, patch 3:
                               a 10x10 grid, width 40, 5 heads, q/k/v biases, random layer scales)
  internvit/                   the same weights under InternVL's remote-code names (vision_model.*,
                               fused attn.qkv, ls1 / ls2, norm1 / norm2) with an internvl_chat config
  internvl_qwen2.safetensors   InternVLMultiModalProjector weights as mlp1.{0,1,3};
  internvl_hf_qwen2.safetensors  the same as model.multi_modal_projector.*
  vlm_qwen2_internvl.safetensors  InternViT last_hidden_state (CLS dropped) -> pixel shuffle 0.5
                               (v2) -> mlp1 -> qwen2 + LoRA, gradients under the mlp1 names
  vlm_qwen2_internvl_stage1.safetensors  the same without LoRA
  idefics3_vision_g25/         Idefics3VisionTransformer at a 25x25 grid (25 px, patch 1), where
                               its bucketized position ids skip rows (0..4, 4, 6, ...)
  idefics3_g25_features.safetensors  pixel_values (2,3,25,25), vision_features = last_hidden_state
  nanovlm/                     idefics3_vision's weights and idefics3_llama's connector under nanoVLM's
                               names (vision_encoder.*, fused qkv_proj, MP.proj.weight) in one
                               model.safetensors, with a flat VLMConfig-style config.json (vit_*, mp_*)
  nanovlm_llama.safetensors    the connector alone as MP.proj.weight
  idefics3_position_ids.txt    Idefics3VisionEmbeddings' ids for a full n x n image, n = 2..64:
                               one line "n b_0 .. b_{n-1}", patch (i, j) adding row b_i * n + b_j

Everything runs on the CPU in float32 with fixed seeds, one thread, deterministic algorithms and
eager attention, so a rerun rewrites the same bytes. The versions used are printed at the end and
recorded in tests/fixtures/README.md.
"""
import argparse
import json
import os

from pyreq import require  # noqa: E402

require("numpy", "torch", "safetensors", "transformers", "peft")

import torch
import torch.nn as nn
from safetensors.torch import save_file

from transformers import (Idefics3Config, InternVLConfig, InternVLVisionConfig, InternVLVisionModel,
                          LlamaForCausalLM, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel)
from transformers.models.internvl.modeling_internvl import InternVLModel, InternVLMultiModalProjector
from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector, Idefics3VisionTransformer
from peft import PeftModel

from safetensors.torch import load_file

from make_fixtures import (ATTN, add_lora_grads, base_logits, batch_tensors, clean_dir, gen, load_llm,
                           lora_step, make_batch, perturb_layernorms, safetensors_keys, setup_torch,
                           stage1_step, state_equal, versions)

CONNECTOR_NAME = "model.connector.modality_projection.proj.weight"


def siglip_config():
    return SiglipVisionConfig(hidden_size=36, intermediate_size=52, num_hidden_layers=3,
                              num_attention_heads=3, image_size=30, patch_size=5,
                              hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_channels=3)


def idefics3_vision_config():
    return Idefics3VisionConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                                num_attention_heads=2, image_size=27, patch_size=1,
                                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_channels=3)


def perturb_vision(model, seed):
    """non-trivial norms, biases and positions, so that a skipped bias or a wrong row shows"""
    perturb_layernorms(model, seed)
    g = gen(seed + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith(".bias") and "layer_norm" not in name and "layernorm" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            if name.endswith("position_embedding.weight"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def idefics3_position_ids(model, n_img, pixel_values):
    """the position ids Idefics3's embeddings use for full images (bucketized coordinates)"""
    emb = model.embeddings
    seen = {}

    def hook(mod, args):
        seen["ids"] = args[0].clone()
    h = emb.position_embedding.register_forward_pre_hook(hook)
    mask = torch.ones((n_img, emb.num_patches_per_side, emb.num_patches_per_side), dtype=torch.bool)
    with torch.no_grad():
        emb(pixel_values, mask)
    h.remove()
    return seen["ids"]


def module_position_ids(n):
    """the rows Idefics3VisionEmbeddings adds for a full n x n image (patch 1), read off the module"""
    tower = Idefics3VisionTransformer(idefics3_vision_config_at(n, hidden=4, layers=1)).eval()
    return idefics3_position_ids(tower, 1, torch.zeros((1, 3, n, n)))[0]


def idefics3_vision_config_at(n, hidden=16, layers=2):
    return Idefics3VisionConfig(hidden_size=hidden, intermediate_size=24, num_hidden_layers=layers,
                                num_attention_heads=2, image_size=n, patch_size=1,
                                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_channels=3)


def make_idefics3_positions(out):
    """the id tables of every grid 2..64, and a tower at a grid whose ids are not 0..n*n-1"""
    lines, odd = [], []
    for n in range(2, 65):
        ids = module_position_ids(n)
        b = ids[:n]              # row 0: coordinate 0 is in bucket 0, so ids[j] = b_j
        assert int(b[0]) == 0
        assert torch.equal(ids, (b[:, None] * n + b[None, :]).flatten()), n
        if not torch.equal(ids, torch.arange(n * n)):
            odd.append(n)
        lines.append(" ".join(str(int(x)) for x in [n] + b.tolist()))
    with open(os.path.join(out, "idefics3_position_ids.txt"), "w") as fh:
        fh.write("# Idefics3VisionEmbeddings position ids of a full n x n image (scripts/make_family_fixtures.py):\n"
                 "# n b_0 .. b_{n-1}; patch (i, j) adds position row b_i * n + b_j\n")
        fh.write("\n".join(lines) + "\n")
    assert 25 in odd and 27 not in odd, odd

    d = os.path.join(out, "idefics3_vision_g25")
    clean_dir(d)
    torch.manual_seed(18001)
    iv = Idefics3VisionTransformer(idefics3_vision_config_at(25)).eval()
    perturb_vision(iv, 18002)
    iv.save_pretrained(d)
    re = Idefics3VisionTransformer.from_pretrained(d, dtype=torch.float32, attn_implementation=ATTN).eval()
    state_equal(iv, re)
    pix = torch.randn((2, 3, 25, 25), generator=gen(18003))
    assert not torch.equal(idefics3_position_ids(re, 2, pix)[0], torch.arange(625))
    with torch.no_grad():
        feats = re(pixel_values=pix).last_hidden_state   # (2, 625, 16), post_layernorm
    save_file({"pixel_values": pix.contiguous(), "vision_features": feats.contiguous()},
              os.path.join(out, "idefics3_g25_features.safetensors"))
    return {"grids_not_arange": odd}


def nanovlm_names(sd, n_layers):
    """Idefics3VisionTransformer's state dict -> nanoVLM's ViT names (models/vision_transformer.py,
    under VisionLanguageModel's vision_encoder): q, k, v stacked into qkv_proj in that order, the
    positions as a (1, NP, C) parameter, post_layernorm as layer_norm"""
    out = {"patch_embedding.conv.weight": sd["embeddings.patch_embedding.weight"],
           "patch_embedding.conv.bias": sd["embeddings.patch_embedding.bias"],
           "patch_embedding.position_embedding": sd["embeddings.position_embedding.weight"][None],
           "layer_norm.weight": sd["post_layernorm.weight"], "layer_norm.bias": sd["post_layernorm.bias"]}
    ren = {"layer_norm1": "ln1", "layer_norm2": "ln2", "self_attn.out_proj": "attn.out_proj",
           "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for i in range(n_layers):
        pre = f"encoder.layers.{i}."
        for a, b in ren.items():
            for suf in ("weight", "bias"):
                out[f"blocks.{i}.{b}.{suf}"] = sd[f"{pre}{a}.{suf}"]
        for suf in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv_proj.{suf}"] = torch.cat([sd[f"{pre}self_attn.{x}_proj.{suf}"] for x in "qkv"], 0)
    assert len(out) == 5 + 12 * n_layers and len(sd) == 5 + 16 * n_layers, (len(out), len(sd))
    return {"vision_encoder." + k: v.contiguous() for k, v in out.items()}


def nanovlm_vit(w, cfg, pixels):
    """nanoVLM's ViT forward (no CLS) as its public code computes it: conv, + positions, blocks
    of x + out_proj(sdpa(split(qkv_proj(ln1 x)))) and x + fc2(gelu_tanh(fc1(ln2 x))), layer_norm"""
    import torch.nn.functional as F
    p = lambda k: w["vision_encoder." + k]  # noqa: E731
    C, H, eps = cfg["vit_hidden_dim"], cfg["vit_n_heads"], cfg["vit_ln_eps"]
    x = F.conv2d(pixels, p("patch_embedding.conv.weight"), p("patch_embedding.conv.bias"),
                 stride=cfg["vit_patch_size"]).flatten(2).transpose(1, 2)
    x = x + p("patch_embedding.position_embedding")
    B, T, _ = x.shape
    for i in range(cfg["vit_n_blocks"]):
        b = lambda k: p(f"blocks.{i}.{k}")  # noqa: E731
        h = F.layer_norm(x, (C,), b("ln1.weight"), b("ln1.bias"), eps)
        q, k, v = F.linear(h, b("attn.qkv_proj.weight"), b("attn.qkv_proj.bias")).split(C, dim=2)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, b("attn.out_proj.weight"), b("attn.out_proj.bias"))
        h = F.layer_norm(x, (C,), b("ln2.weight"), b("ln2.bias"), eps)
        h = F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias")), approximate="tanh")
        x = x + F.linear(h, b("mlp.fc2.weight"), b("mlp.fc2.bias"))
    return F.layer_norm(x, (C,), p("layer_norm.weight"), p("layer_norm.bias"), eps)


def nanovlm_pixel_shuffle(x, s):
    """nanoVLM's ModalityProjector.pixel_shuffle (models/modality_projector.py)"""
    b, n, c = x.shape
    g = int(n ** 0.5)
    x = x.reshape(b, g // s, s, g // s, s, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (g // s) ** 2, c * s * s)


def make_nanovlm(out, feats, conn):
    """the Idefics3 fixtures' tower and connector under nanoVLM's names: svlm must give the same
    features, connector output and logits from either (tests/test_model_parity.c)"""
    d = os.path.join(out, "nanovlm")
    clean_dir(d)
    vc = idefics3_vision_config()
    sd = load_file(os.path.join(out, "idefics3_vision", "model.safetensors"))
    w = nanovlm_names(sd, vc.num_hidden_layers)
    proj = conn.modality_projection.proj.weight.detach().contiguous()
    cfg = {"vit_hidden_dim": vc.hidden_size, "vit_inter_dim": vc.intermediate_size, "vit_patch_size": vc.patch_size,
           "vit_img_size": vc.image_size, "vit_n_heads": vc.num_attention_heads, "vit_dropout": 0.0,
           "vit_n_blocks": vc.num_hidden_layers, "vit_ln_eps": vc.layer_norm_eps, "vit_cls_flag": False,
           "vit_model_type": "google/siglip2-base-patch16-512", "lm_hidden_dim": proj.shape[0],
           "mp_pixel_shuffle_factor": 3, "mp_image_token_length": 81}
    with open(os.path.join(d, "config.json"), "w") as fh:
        fh.write(json.dumps(cfg, indent=4) + "\n")
    save_file(dict(w, **{"MP.proj.weight": proj}), os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    save_file({"MP.proj.weight": proj}, os.path.join(out, "nanovlm_llama.safetensors"))
    # nanoVLM's math on these names equals transformers' Idefics3 tower and connector (its
    # positions are 0..n-1, as Idefics3's are at this grid)
    with torch.no_grad():
        mine = nanovlm_vit(w, cfg, PIXELS)
        err = ((mine - feats).abs().max() / feats.abs().max()).item()
        assert err < 1e-5, err
        x = torch.randn((2, 36, 5), generator=gen(19001))
        assert torch.equal(nanovlm_pixel_shuffle(x, 3), conn.pixel_shuffle(x, 3))
        assert torch.equal(nanovlm_pixel_shuffle(x, 2), conn.pixel_shuffle(x, 2))
    return {"nanovlm_vit_vs_idefics3": err}


def run_vlm(out, tag, llm_dir, lora_dir, pixels, feats, conn, T, starts, pads, seed, stage1_tag, llm_cls=LlamaForCausalLM,
            conn_grads=None):
    """conn_grads(conn) -> {svlm name: gradient tensor} of the connector (default: Idefics3's)"""
    if conn_grads is None:
        conn_grads = lambda c: {CONNECTOR_NAME: c.modality_projection.proj.weight.grad}  # noqa: E731
    base = load_llm(llm_cls, llm_dir)
    model = PeftModel.from_pretrained(base, lora_dir, is_trainable=True).eval()
    V = base.config.vocab_size
    with torch.no_grad():
        n_img = conn(feats).shape[1]
    ids, labels, img_row, img_start = make_batch(seed, V, T, n_img, starts, pads)

    conn_out, embeds, res, ntok = lora_step(model, conn, feats, ids, labels, img_row, img_start)
    common = batch_tensors(pixels, ids, labels, img_row, img_start, feats, conn_out)
    tensors = dict(common)
    tensors["logits"] = res.logits.detach().contiguous()
    tensors["loss"] = res.loss.detach().reshape(1).contiguous()
    nlora = add_lora_grads(tensors, model)
    for name, gr in conn_grads(conn).items():
        tensors["grad." + name] = gr.detach().clone().contiguous()
    _, diff = base_logits(model, embeds, ids, res.logits)
    save_file(tensors, os.path.join(out, f"{tag}.safetensors"))
    info = dict(file=f"{tag}.safetensors", loss=res.loss.item(), labelled=ntok, lora_tensors=nlora,
                image_tokens=n_img, max_lora_logit_change=diff)

    # stage 1: the base LLM alone, the connector trainable
    r1 = stage1_step(llm_cls, llm_dir, conn, feats, ids, labels, img_row, img_start)
    t1 = {k: v for k, v in common.items() if k != "vision_features"}  # in the stage-2 file
    t1["logits"] = r1.logits.detach().contiguous()
    t1["loss"] = r1.loss.detach().reshape(1).contiguous()
    for name, gr in conn_grads(conn).items():
        t1["grad." + name] = gr.detach().clone().contiguous()
    save_file(t1, os.path.join(out, f"{stage1_tag}.safetensors"))
    info["stage1_loss"] = r1.loss.item()
    return info


PIXELS = None


def internvl_vision_config():
    return InternVLVisionConfig(hidden_size=40, intermediate_size=56, num_hidden_layers=3,
                                num_attention_heads=5, image_size=30, patch_size=3, attention_bias=True,
                                norm_type="layer_norm", layer_norm_eps=1e-6, hidden_act="gelu",
                                use_mean_pooling=True, layer_scale_init_value=0.1)


def remote_internvit_names(sd):
    """transformers' native internvl_vision names -> InternVL remote code's (vision_model.*): the
    q, k, v projections fused into attn.qkv (rows q, then k, then v), lambda_i -> ls_i"""
    out = {}
    ren = {"embeddings.cls_token": "embeddings.class_embedding",
           "embeddings.patch_embeddings.projection.weight": "embeddings.patch_embedding.weight",
           "embeddings.patch_embeddings.projection.bias": "embeddings.patch_embedding.bias",
           "embeddings.position_embeddings": "embeddings.position_embedding"}
    layer_ren = {"attention.projection_layer": "attn.proj", "lambda_1": "ls1", "lambda_2": "ls2",
                 "layernorm_before": "norm1", "layernorm_after": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for k, v in sd.items():
        if k in ren:
            out["vision_model." + ren[k]] = v
            continue
        assert k.startswith("encoder.layer."), k
        rest = k[len("encoder.layer."):]
        l, name = rest.split(".", 1)
        pre = f"vision_model.encoder.layers.{l}."
        if name.startswith("attention.q_proj."):
            suf = name[len("attention.q_proj."):]
            qkv = [sd[f"encoder.layer.{l}.attention.{x}_proj.{suf}"] for x in "qkv"]
            out[pre + "attn.qkv." + suf] = torch.cat(qkv, 0).contiguous()
            continue
        if name.startswith("attention.k_proj.") or name.startswith("attention.v_proj."):
            continue
        for a, b in layer_ren.items():
            if name == a or name.startswith(a + "."):
                out[pre + b + name[len(a):]] = v
                break
        else:
            raise KeyError(k)
    return out


class InternVLConnector(nn.Module):
    """InternVLModel.get_image_features after the tower: CLS dropped, (B, g, g, C), pixel
    shuffle 0.5, (B, g*g/4, 4C), multi_modal_projector"""
    def __init__(self, cfg):
        super().__init__()
        self.proj = InternVLMultiModalProjector(cfg)

    def forward(self, feats):
        b, n, c = feats.shape
        g = int(n ** 0.5)
        x = InternVLModel.pixel_shuffle(None, feats.reshape(b, g, g, c), scale_factor=0.5)
        return self.proj(x.reshape(b, -1, x.shape[-1]))


REMOTE_CONN = {"layer_norm": "mlp1.0", "linear_1": "mlp1.1", "linear_2": "mlp1.3"}


def make_internvl(out):
    # ---- InternVLVisionModel (native names), random, then the same weights under the remote names
    d = os.path.join(out, "internvl_vision")
    clean_dir(d)
    torch.manual_seed(15001)
    vm = InternVLVisionModel(internvl_vision_config()).eval()
    perturb_vision(vm, 15002)
    g = gen(15003)
    with torch.no_grad():
        for name, p in sorted(vm.named_parameters()):
            if "lambda_" in name:
                p.copy_(0.1 + 0.5 * torch.randn(p.shape, generator=g))
            if name.endswith("cls_token") or name.endswith("position_embeddings"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    vm.save_pretrained(d)
    vm = InternVLVisionModel.from_pretrained(d, dtype=torch.float32, attn_implementation=ATTN).eval()
    sd = load_file(os.path.join(d, "model.safetensors"))
    assert "encoder.layer.0.attention.q_proj.bias" in sd and "encoder.layer.0.lambda_1" in sd, sorted(sd)[:8]
    rd = os.path.join(out, "internvit")
    clean_dir(rd)
    save_file(remote_internvit_names(sd), os.path.join(rd, "model.safetensors"), metadata={"format": "pt"})
    vc = internvl_vision_config()
    cfg = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "downsample_ratio": 0.5,
           "ps_version": "v2", "select_layer": -1, "template": "Hermes-2",
           "vision_config": {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
                             "hidden_size": vc.hidden_size, "intermediate_size": vc.intermediate_size,
                             "num_hidden_layers": vc.num_hidden_layers,
                             "num_attention_heads": vc.num_attention_heads, "image_size": 30, "patch_size": 3,
                             "num_channels": 3, "hidden_act": "gelu", "norm_type": "layer_norm",
                             "layer_norm_eps": 1e-6, "qkv_bias": True, "qk_normalization": False,
                             "use_flash_attn": False, "drop_path_rate": 0.0}}
    with open(os.path.join(rd, "config.json"), "w") as fh:
        fh.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    pix = torch.randn((2, 3, 30, 30), generator=gen(15004))
    with torch.no_grad():
        feats = vm(pixel_values=pix).last_hidden_state[:, 1:].contiguous()   # select_layer -1, CLS dropped
    assert feats.shape == (2, 100, 40)

    # ---- the projector (InternVLMultiModalProjector = mlp1) into qwen2
    qcfg = load_llm(Qwen2ForCausalLM, os.path.join(out, "qwen2")).config
    icfg = InternVLConfig(vision_config=internvl_vision_config().to_dict(), text_config=qcfg.to_dict(),
                          downsample_ratio=0.5, projector_hidden_act="gelu")
    torch.manual_seed(16001)
    conn = InternVLConnector(icfg)
    perturb_layernorms(conn, 16002)
    native = {"model.multi_modal_projector." + k: v.detach().contiguous() for k, v in conn.proj.state_dict().items()}
    remote = {}
    for k, v in conn.proj.state_dict().items():
        mod, suf = k.split(".", 1)
        remote[REMOTE_CONN[mod] + "." + suf] = v.detach().contiguous()
    save_file(remote, os.path.join(out, "internvl_qwen2.safetensors"))
    save_file(native, os.path.join(out, "internvl_hf_qwen2.safetensors"))

    def grads(c):
        return {REMOTE_CONN[k.split(".", 1)[0]] + "." + k.split(".", 1)[1]: p.grad
                for k, p in c.proj.named_parameters()}
    return run_vlm(out, "vlm_qwen2_internvl", os.path.join(out, "qwen2"), os.path.join(out, "qwen2_lora"), pix,
                   feats, conn, T=40, starts=[2, 5], pads=3, seed=17001, stage1_tag="vlm_qwen2_internvl_stage1",
                   llm_cls=Qwen2ForCausalLM, conn_grads=grads)


def main():
    global PIXELS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    out = args.out

    setup_torch()
    log = {}

    # ---- 1. siglip (SiglipVisionModel): features at hidden_states[-2] and last_hidden_state
    d = os.path.join(out, "siglip")
    clean_dir(d)
    torch.manual_seed(11001)
    sig = SiglipVisionModel(siglip_config()).eval()
    perturb_vision(sig, 11002)
    sig.save_pretrained(d)
    keys = safetensors_keys(d)
    assert "embeddings.patch_embedding.bias" in keys, keys[:5]    # transformers 5: bare names
    assert not any("class_embedding" in k for k in keys)
    sig = SiglipVisionModel.from_pretrained(d, dtype=torch.float32, attn_implementation=ATTN).eval()
    pix = torch.randn((2, 3, 30, 30), generator=gen(11003))
    with torch.no_grad():
        o = sig(pixel_values=pix, output_hidden_states=True)
    assert o.hidden_states[-2].shape == (2, 36, 36)
    # SiglipVisionEmbeddings adds position row p to patch p (no bucketing, unlike Idefics3)
    assert torch.equal(sig.embeddings.position_ids[0], torch.arange(36))
    save_file({"pixel_values": pix.contiguous(), "vision_features": o.hidden_states[-2].contiguous(),
               "last_hidden_state": o.last_hidden_state.contiguous()},
              os.path.join(out, "siglip_features.safetensors"))

    # ---- 2. idefics3_vision (Idefics3VisionTransformer, as Idefics3 / SmolVLM hold it)
    d = os.path.join(out, "idefics3_vision")
    clean_dir(d)
    torch.manual_seed(12001)
    iv = Idefics3VisionTransformer(idefics3_vision_config()).eval()
    perturb_vision(iv, 12002)
    iv.save_pretrained(d)
    re = Idefics3VisionTransformer.from_pretrained(d, dtype=torch.float32, attn_implementation=ATTN).eval()
    state_equal(iv, re)
    PIXELS = torch.randn((2, 3, 27, 27), generator=gen(12003))
    pos = idefics3_position_ids(re, 2, PIXELS)
    n = 27
    # Idefics3's embeddings bucketize patch coordinates; at this grid (and the released models'
    # 24, 27, 32) the ids are 0..n*n-1; make_idefics3_positions covers grids where they are not
    assert torch.equal(pos[0], torch.arange(n * n)) and torch.equal(pos[1], pos[0])
    with torch.no_grad():
        feats = re(pixel_values=PIXELS).last_hidden_state             # (2, 729, 24), post_layernorm

    # ---- 3. Idefics3 connector (scale_factor 3: 27x27 -> 9x9 tokens of 9*24) into llama
    cfg = Idefics3Config(vision_config=idefics3_vision_config().to_dict(),
                         text_config=load_llm(LlamaForCausalLM, os.path.join(out, "llama")).config.to_dict(),
                         scale_factor=3)
    torch.manual_seed(13001)
    conn = Idefics3Connector(cfg)
    assert dict(conn.named_parameters()).keys() == {"modality_projection.proj.weight"}
    with torch.no_grad():
        conn.modality_projection.proj.weight.copy_(0.2 * torch.randn(conn.modality_projection.proj.weight.shape,
                                                                     generator=gen(13002)))
    save_file({CONNECTOR_NAME: conn.modality_projection.proj.weight.detach().contiguous()},
              os.path.join(out, "idefics3_llama.safetensors"))

    log["llama_idefics3"] = run_vlm(out, "vlm_llama_idefics3", os.path.join(out, "llama"),
                                    os.path.join(out, "llama_lora"), PIXELS, feats, conn, T=97, starts=[2, 5],
                                    pads=3, seed=14001, stage1_tag="vlm_llama_idefics3_stage1")

    log["nanovlm"] = make_nanovlm(out, feats, conn)
    log["internvl"] = make_internvl(out)
    log["idefics3_positions"] = make_idefics3_positions(out)

    # each family's files stay under 1 MB
    families = {"siglip_idefics3": (("siglip", "idefics3_vision"),
                                    ("siglip_features", "idefics3_llama", "vlm_llama_idefics3",
                                     "vlm_llama_idefics3_stage1")),
                "internvl": (("internvl_vision", "internvit"),
                             ("internvl_qwen2", "internvl_hf_qwen2", "vlm_qwen2_internvl",
                              "vlm_qwen2_internvl_stage1")),
                "idefics3_positions": (("idefics3_vision_g25",), ("idefics3_g25_features",)),
                "nanovlm": (("nanovlm",), ("nanovlm_llama",))}
    for fam, (dirs, files) in families.items():
        total = 0
        for f in dirs:
            for root, _, names in os.walk(os.path.join(out, f)):
                total += sum(os.path.getsize(os.path.join(root, x)) for x in names)
        for f in files:
            total += os.path.getsize(os.path.join(out, f + ".safetensors"))
        log[fam + "_bytes"] = total
        assert total < 1024 * 1024, (fam, total)
    log["versions"] = versions()
    print(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
