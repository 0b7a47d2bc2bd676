#!/usr/bin/env python3
"""Generate the whole-model (`model = DIR`) fixtures: tiny random VLMs saved as their classes ship
them, and each one's logits, loss and gradients from transformers + peft.

    python3 scripts/make_vlm_dir_fixtures.py --out tests/fixtures

Run after scripts/make_chat_format_fixtures.py (its tokenizer.json goes into the InternVL directories).

Writes (each directory is a real Hugging Face model directory):

  vlm_internvl_hf/           InternVLForConditionalGeneration (save_pretrained): InternViT 30 px,
                             patch 3 (10x10 grid, CLS), pixel shuffle 0.5 -> 25 tokens per image,
                             the native projector, Qwen2 (vocab 1024, tied embeddings as the class
                             default), image_token_id 1006 (<IMG_CONTEXT> in its tokenizer.json,
                             the chat-format fixtures' 1011 tokens) and transformers' InternVL
                             chat_template.json
  vlm_internvl_chat/         the same weights under InternVL's remote-code names (vision_model.*,
                             fused attn.qkv, mlp1.{0,1,3}, language_model.model.*) with an
                             InternVLChatModel config.json (llm_config, select_layer -1,
                             downsample_ratio 0.5, ps_version v2, template Hermes-2) and the
                             same tokenizer.json (<|im_start|> <|im_end|>, <IMG_CONTEXT> 1006):
                             the remote code is not installed, so this copy is checked against
                             the native model's numbers (the mapping of names is the fact under test)
  vlm_internvl.safetensors   input_ids with the image token over each slot, labels, pixel_values
                             (2, 3, 30, 30), img_row / img_start, logits, loss, lora.<svlm name>
                             (the adapter's weights, random A and B), grad.<svlm name> for every
                             LoRA tensor and for the projector under both namings
  vlm_idefics3_dir/          Idefics3ForConditionalGeneration: Idefics3 vision 12 px, patch 2
                             (6x6 grid), scale_factor 3 -> 4 tokens of 9*C, Llama (vocab 1024,
                             tie_word_embeddings true), image_token_id 1005 (<image>), the chat
                             formats' tokenizer.json and SmolVLM's chat_template.json
  vlm_idefics3.safetensors   as above (pixel_values (2, 3, 12, 12): one image per row)
  vlm_llava_dir/             LlavaForConditionalGeneration: CLIP vision 12 px, patch 4 (3x3 grid,
                             CLS dropped), vision_feature_layer -2, the projector linear_1/2,
                             Llama, image_token_index 159 (V - 1; no tokenizer.json)
  vlm_llava.safetensors      as above

The batch: 2 rows of T tokens, one image per row (one tile), random text ids, labels on about
half of the positions after each slot; every position attended. LoRA r 4 (alpha 8) on the seven
projections of the language model only; the projector trainable (stage 2). float32, one thread,
deterministic, eager attention: a rerun rewrites the same bytes.
"""
import argparse
import json
import os
import shutil

from pyreq import require  # noqa: E402

require("numpy", "torch", "safetensors", "transformers", "peft")

import torch
from safetensors.torch import load_file, save_file

from transformers import (CLIPVisionConfig, Idefics3Config, Idefics3ForConditionalGeneration, InternVLConfig,
                          InternVLForConditionalGeneration, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          Qwen2Config)
from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
from peft import LoraConfig, get_peft_model

from make_fixtures import ATTN, clean_dir, gen, perturb_layernorms, perturb_llm, setup_torch, versions
from make_family_fixtures import internvl_vision_config, perturb_vision, remote_internvit_names
from make_chat_format_fixtures import INTERNVL_HF_TEMPLATE, SMOLVLM_TEMPLATE

LORA_RE = r".*(language_model|text_model)\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def qwen2_text(vocab):
    return Qwen2Config(vocab_size=vocab, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                       max_position_embeddings=512, initializer_range=0.1, tie_word_embeddings=True)


def llama_text(vocab):
    return LlamaConfig(vocab_size=vocab, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
                       rope_theta=10000.0, max_position_embeddings=256, initializer_range=0.1,
                       tie_word_embeddings=False)


def svlm_lora_name(peft_name):
    """base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight ->
    model.layers.0.self_attn.q_proj.lora_A.weight (the LLM's own names, as svlm declares them)"""
    i = peft_name.index("layers.")
    return "model." + peft_name[i:].replace(".default.", ".")


def perturb_all(model, seed):
    perturb_layernorms(model, seed)
    perturb_llm(model, seed + 1)
    perturb_vision(model, seed + 2)


def token_id(tok_json, token):
    """the id tokenizer.json gives `token` (an added token): the config's image_token_id must match it"""
    with open(tok_json) as fh:
        for a in json.load(fh)["added_tokens"]:
            if a["content"] == token:
                return a["id"]
    raise SystemExit(f"{tok_json}: no added token {token}")


def text_id_limit(tok_json):
    """ordinary text ids lie below the first added (special) token: no random id is an image token"""
    with open(tok_json) as fh:
        return min(a["id"] for a in json.load(fh)["added_tokens"])


def make_batch(seed, text_hi, T, n_tok, image_id, starts):
    g = gen(seed)
    ids = torch.randint(0, text_hi, (2, T), generator=g, dtype=torch.int64)
    labels = torch.full((2, T), -100, dtype=torch.int64)
    coin = torch.rand((2, T), generator=g)
    for r in range(2):
        s = starts[r]
        ids[r, s:s + n_tok] = image_id
        for p in range(s + n_tok, T):
            if p == s + n_tok or coin[r, p] < 0.5:
                labels[r, p] = ids[r, p]
    return ids, labels


def run(model_dir, cls, pixels, T, n_tok, image_id, text_hi, starts, seed, conn_prefix, out_file,
        extra_conn_names=None):
    """loads model_dir, adds random LoRA, runs forward + backward; writes out_file"""
    model = cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=ATTN).eval()
    ids, labels = make_batch(seed, text_hi, T, n_tok, image_id, starts)
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_RE, bias="none")
    pm = get_peft_model(model, lcfg)
    g = gen(seed + 1)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    conn = {}
    for name, p in pm.named_parameters():
        if conn_prefix in name:
            p.requires_grad_(True)
            conn[name[name.index(conn_prefix):]] = p
    assert conn, conn_prefix
    res = pm(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids), labels=labels)
    res.loss.backward()
    tensors = {"pixel_values": pixels.reshape(-1, *pixels.shape[-3:]).contiguous(),
               "input_ids": ids.to(torch.int32).contiguous(), "labels": labels.to(torch.int32).contiguous(),
               "img_row": torch.tensor([0, 1], dtype=torch.int32),
               "img_start": torch.tensor(starts, dtype=torch.int32),
               "logits": res.logits.detach().contiguous(), "loss": res.loss.detach().reshape(1).contiguous()}
    nlora = 0
    for name, p in pm.named_parameters():
        if "lora_" in name:
            tensors["lora." + svlm_lora_name(name)] = p.detach().clone().contiguous()
            tensors["grad." + svlm_lora_name(name)] = p.grad.detach().clone().contiguous()
            nlora += 1
    for name, p in conn.items():
        tensors["grad." + name] = p.grad.detach().clone().contiguous()
        if extra_conn_names:
            tensors["grad." + extra_conn_names(name)] = p.grad.detach().clone().contiguous()
    assert nlora == 2 * 7 * 2, nlora
    save_file(tensors, out_file)
    return dict(file=os.path.basename(out_file), loss=res.loss.item(), lora_tensors=nlora)


# ---------------------------------------------------------------------------------------- InternVL

REMOTE_CONN = {"layer_norm": "mlp1.0", "linear_1": "mlp1.1", "linear_2": "mlp1.3"}


def remote_conn_name(native):
    """model.multi_modal_projector.linear_1.weight -> mlp1.1.weight"""
    rest = native[len("model.multi_modal_projector."):]
    mod, suf = rest.split(".", 1)
    return REMOTE_CONN[mod] + "." + suf


def make_internvl(out, tok_json):
    d = os.path.join(out, "vlm_internvl_hf")
    clean_dir(d)
    V = 1024
    image_id = token_id(tok_json, "<IMG_CONTEXT>")  # as the directory's tokenizer.json says
    cfg = InternVLConfig(vision_config=internvl_vision_config().to_dict(), text_config=qwen2_text(V).to_dict(),
                         downsample_ratio=0.5, projector_hidden_act="gelu", image_token_id=image_id,
                         vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=25)
    torch.manual_seed(31001)
    m = InternVLForConditionalGeneration(cfg).eval()
    perturb_all(m, 31002)
    g = gen(31005)
    with torch.no_grad():
        for name, p in sorted(m.named_parameters()):
            if "lambda_" in name:
                p.copy_(0.1 + 0.5 * torch.randn(p.shape, generator=g))
            if name.endswith("cls_token") or name.endswith("position_embeddings"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    m.save_pretrained(d)
    sd = load_file(os.path.join(d, "model.safetensors"))
    assert "vision_tower.embeddings.patch_embeddings.projection.weight" in sd, sorted(sd)[:6]  # the files keep transformers 4 names
    assert "multi_modal_projector.linear_1.weight" in sd and "language_model.model.embed_tokens.weight" in sd
    assert not any(k.endswith("lm_head.weight") for k in sd), "tied: transformers stores no lm_head"

    # the remote-code copy: same weights, InternVL's own names and config.json
    rd = os.path.join(out, "vlm_internvl_chat")
    clean_dir(rd)
    vis = {k[len("vision_tower."):]: v for k, v in sd.items() if k.startswith("vision_tower.")}
    remote = remote_internvit_names(vis)
    for k, v in sd.items():
        if k.startswith("multi_modal_projector."):
            remote[remote_conn_name("model." + k)] = v
        elif k.startswith("language_model."):
            remote[k] = v  # language_model.model.*: the remote code's names already
        else:
            assert k.startswith("vision_tower."), k
    save_file(remote, os.path.join(rd, "model.safetensors"), metadata={"format": "pt"})
    vc = internvl_vision_config()
    llm = qwen2_text(V).to_dict()
    llm["architectures"] = ["Qwen2ForCausalLM"]
    # as InternVL2.5-1B's llm_config (Qwen2.5) states it: dynamic NTK scaling, which transformers
    # applies only past max_position_embeddings (512 here): the native model's numbers hold
    llm["rope_scaling"] = {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"}
    rcfg = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "downsample_ratio": 0.5,
            "ps_version": "v2", "select_layer": -1, "template": "Hermes-2", "force_image_size": 30,
            "dynamic_image_size": False, "use_thumbnail": False, "max_dynamic_patch": 1, "min_dynamic_patch": 1,
            "llm_config": llm,
            "vision_config": {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
                              "hidden_size": vc.hidden_size, "intermediate_size": vc.intermediate_size,
                              "num_hidden_layers": vc.num_hidden_layers,
                              "num_attention_heads": vc.num_attention_heads, "image_size": 30, "patch_size": 3,
                              "num_channels": 3, "hidden_act": "gelu", "norm_type": "layer_norm",
                              "layer_norm_eps": 1e-6, "qkv_bias": True, "qk_normalization": False,
                              "use_flash_attn": False, "drop_path_rate": 0.0}}
    with open(os.path.join(rd, "config.json"), "w") as fh:
        fh.write(json.dumps(rcfg, indent=2, sort_keys=True) + "\n")
    shutil.copy(tok_json, os.path.join(rd, "tokenizer.json"))
    with open(os.path.join(rd, "modeling_internvl_chat.py"), "w") as fh:  # stands for the remote code
        fh.write("# remote code placeholder: ./export copies the directory's .py files as they are\n")

    # tokenizer and transformers' InternVL chat template, so that ./train reads its format (auto)
    shutil.copy(tok_json, os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "chat_template.json"), "w") as fh:
        json.dump({"chat_template": INTERNVL_HF_TEMPLATE}, fh, indent=2)
        fh.write("\n")

    pix = torch.randn((2, 3, 30, 30), generator=gen(31003))
    return run(d, InternVLForConditionalGeneration, pix, T=32, n_tok=25, image_id=image_id,
               text_hi=text_id_limit(tok_json), starts=[1, 3], seed=31004,
               conn_prefix="model.multi_modal_projector.", out_file=os.path.join(out, "vlm_internvl.safetensors"),
               extra_conn_names=remote_conn_name)


# ---------------------------------------------------------------------------------------- Idefics3

def make_idefics3(out, tok_json):
    d = os.path.join(out, "vlm_idefics3_dir")
    clean_dir(d)
    V = 1024  # the chat formats' tokenizer fits: the round trip trains on it
    image_id = token_id(tok_json, "<image>")
    vis = Idefics3VisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                               image_size=12, patch_size=2, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    # tied (Idefics3Config's default is untied: the top-level key decides, as transformers reads it)
    cfg = Idefics3Config(vision_config=vis.to_dict(), text_config=llama_text(V).to_dict(), scale_factor=3,
                         image_token_id=image_id, tie_word_embeddings=True)
    torch.manual_seed(32001)
    m = Idefics3ForConditionalGeneration(cfg).eval()
    perturb_all(m, 32002)
    m.save_pretrained(d)
    sd = load_file(os.path.join(d, "model.safetensors"))
    assert "model.connector.modality_projection.proj.weight" in sd and "lm_head.weight" not in sd, sorted(sd)[:6]
    shutil.copy(tok_json, os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "chat_template.json"), "w") as fh:
        json.dump({"chat_template": SMOLVLM_TEMPLATE}, fh, indent=2)
        fh.write("\n")
    assert "model.text_model.embed_tokens.weight" in sd and "model.vision_model.post_layernorm.weight" in sd
    # the bucketized position ids are 0..n-1 at this grid (svlm assumes it; vit_siglip.c)
    emb = m.model.vision_model.embeddings
    seen = {}
    h = emb.position_embedding.register_forward_pre_hook(lambda mod, a: seen.setdefault("ids", a[0].clone()))
    pix = torch.randn((2, 1, 3, 12, 12), generator=gen(32003))
    with torch.no_grad():
        emb(pix[:, 0], torch.ones((2, 6, 6), dtype=torch.bool))
    h.remove()
    assert torch.equal(seen["ids"][0], torch.arange(36)), seen["ids"][0]
    return run(d, Idefics3ForConditionalGeneration, pix, T=16, n_tok=4, image_id=image_id,
               text_hi=text_id_limit(tok_json), starts=[1, 3], seed=32004,
               conn_prefix="model.connector.", out_file=os.path.join(out, "vlm_idefics3.safetensors"))


# ---------------------------------------------------------------------------------------- Llava

def make_llava(out):
    d = os.path.join(out, "vlm_llava_dir")
    clean_dir(d)
    V = 160
    vis = CLIPVisionConfig(hidden_size=20, intermediate_size=28, num_hidden_layers=3, num_attention_heads=2,
                           image_size=12, patch_size=4, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                           projection_dim=8)
    cfg = LlavaConfig(vision_config=vis.to_dict(), text_config=llama_text(V).to_dict(), image_token_index=V - 1,
                      vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
                      image_seq_length=9, tie_word_embeddings=False)
    torch.manual_seed(33001)
    m = LlavaForConditionalGeneration(cfg).eval()
    perturb_all(m, 33002)
    m.save_pretrained(d)
    sd = load_file(os.path.join(d, "model.safetensors"))
    assert "multi_modal_projector.linear_1.weight" in sd and "language_model.lm_head.weight" in sd, sorted(sd)[:6]
    assert "vision_tower.embeddings.class_embedding" in sd, sorted(sd)[:6]  # hub files: vision_tower.vision_model.*
    pix = torch.randn((2, 3, 12, 12), generator=gen(33003))
    return run(d, LlavaForConditionalGeneration, pix, T=24, n_tok=9, image_id=V - 1, text_hi=V - 2, starts=[2, 5], seed=33004,
               conn_prefix="model.multi_modal_projector.", out_file=os.path.join(out, "vlm_llava.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    setup_torch()
    out = args.out
    # the chat formats' tokenizer (make_chat_format_fixtures.py: 1011 tokens, ChatML's and InternVL's specials)
    tok = os.path.join(out, "chat_formats", "tokenizer.json")
    log = {"internvl": make_internvl(out, tok), "idefics3": make_idefics3(out, tok), "llava": make_llava(out)}
    total = 0
    for name in ("vlm_internvl_hf", "vlm_internvl_chat", "vlm_idefics3_dir", "vlm_llava_dir"):
        for root, _, names in os.walk(os.path.join(out, name)):
            total += sum(os.path.getsize(os.path.join(root, x)) for x in names)
    for f in ("vlm_internvl", "vlm_idefics3", "vlm_llava"):
        total += os.path.getsize(os.path.join(out, f + ".safetensors"))
    log["bytes"] = total
    assert total < 2 * 1024 * 1024, total
    log["versions"] = versions()
    print(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
