#!/usr/bin/env python3
"""Generate the whole-model (`model = DIR`) fixtures: tiny random VLMs saved as their classes ship
them, and each one's logits, loss and gradients from transformers + peft.

    python3 scripts/make_vlm_dir_fixtures.py --out tests/fixtures

Run after scripts/make_chat_format_fixtures.py (its tokenizer.json goes into the InternVL directories).

Writes (each directory is a real Hugging Face model directory):

  vlm_internvl_hf/           InternVLForConditionalGeneration (save_pretrained): InternViT 30 px,
                             patch 3 (10x10 grid, CLS), pixel shuffle 0.5 -> 25 tokens per tile,
                             the native projector, Qwen2 (vocab 1056, tied embeddings as the class
                             default), image_token_id 1006 (<IMG_CONTEXT> in its tokenizer.json,
                             the chat-format fixtures' 1047 tokens) and transformers' InternVL
                             chat_template.json
  vlm_internvl_chat/         the same weights under InternVL's remote-code names (vision_model.*,
                             fused attn.qkv, mlp1.{0,1,3}, language_model.model.*) with an
                             InternVLChatModel config.json (llm_config, select_layer -1,
                             downsample_ratio 0.5, ps_version v2, template Hermes-2) and the
                             same tokenizer.json (<|im_start|> <|im_end|>, <IMG_CONTEXT> 1006):
                             the remote code is not installed, so this copy is checked against
                             the native model's numbers (the mapping of names is the fact under test)
  vlm_internvl.safetensors   the batch (below): input_ids, labels, pixel_values (12 tiles, 3, 30,
                             30), img_row / img_start (each tile's row and first position),
                             image_tiles (tiles per image), logits of 128 random vocabulary
                             columns (logit_cols; metadata vocab_size), loss, lora.<svlm name>
                             (the adapter's weights, random A and B), grad.<svlm name> for every
                             LoRA tensor and for the projector under both namings
  vlm_idefics3_dir/          Idefics3ForConditionalGeneration: Idefics3 vision 12 px, patch 2
                             (6x6 grid), scale_factor 3 -> 4 tokens of 9*C, Llama (vocab 1056,
                             tie_word_embeddings true), image_token_id 1005 (<image>), the chat
                             formats' tokenizer.json and SmolVLM's chat_template.json
  vlm_idefics3.safetensors   as above (14 tiles of 12 px; transformers got them as (2, 8, 3, 12,
                             12) with two all-zero padding tiles in row 0)
  vlm_llava_dir/             LlavaForConditionalGeneration: CLIP vision 12 px, patch 4 (3x3 grid,
                             CLS dropped), vision_feature_layer -2, the projector linear_1/2,
                             Llama (vocab 1056), image_token_index 1005 (<image>), the chat
                             formats' tokenizer.json and llava-hf's chat_template.json as shipped
  vlm_llava.safetensors      as above (4 images)

The batch: 2 rows, two images in each: InternVL 3 + 3 tiles a row (1x2 or 2x1 grid + thumbnail,
<img> <IMG_CONTEXT> x 25 per tile </img>), Idefics3 3 + 3 and 5 + 3 tiles (grid + global image,
Idefics3Processor's text for each image tokenized by the tokenizer: <fake_token_around_image>
<row_i_col_j> <image>..., <global-img>), Llava one tile per image; random text ids below the tokenizer's added
tokens, labels on about half of the text positions after the first image (never on an image
token or a marker); every position attended. The logits of all 1056 columns over these rows would
be 1.4 MB (InternVL): 128 random columns, more than the hidden size, pin the final hidden state
at every position, and the loss covers the whole vocabulary. LoRA r 4 (alpha 8; random A and B at
0.2) on the seven
projections of the language model only; the projector trainable (stage 2). float32, one thread,
deterministic, eager attention: a rerun rewrites the same bytes.
"""
import argparse
import json
import os
import shutil

from pyreq import require  # noqa: E402

require("numpy", "torch", "safetensors", "tokenizers", "transformers", "peft")

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from transformers import (CLIPVisionConfig, Idefics3Config, Idefics3ForConditionalGeneration, InternVLConfig,
                          InternVLForConditionalGeneration, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          Qwen2Config)
from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
from peft import LoraConfig, get_peft_model

from make_fixtures import ATTN, clean_dir, gen, perturb_layernorms, perturb_llm, setup_torch, versions
from make_family_fixtures import internvl_vision_config, perturb_vision, remote_internvit_names
from make_chat_format_fixtures import INTERNVL_HF_TEMPLATE, LLAVA_HF_TEMPLATE_SHIPPED, SMOLVLM_TEMPLATE

# the text vocabulary of every directory: the chat formats' tokenizer (1047 tokens: ids below 1000 text,
# 1000..1010 the formats' specials, 1011..1046 SmolVLM's <row_i_col_j>) fits, rounded up to 1056
VOCAB = 1056

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


def copy_tokenizer(tok_json, d, template):
    """the chat formats' tokenizer.json and the class's shipped chat_template.json into d: ./train reads the
    format from them (template auto) and the round trip trains on the directory as it is"""
    with open(tok_json) as fh:
        t = json.load(fh)
    n = max(max(t["model"]["vocab"].values()), max(a["id"] for a in t["added_tokens"])) + 1
    assert n <= VOCAB, f"{tok_json}: {n} tokens, the directories' vocabulary is {VOCAB}"
    shutil.copy(tok_json, os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "chat_template.json"), "w") as fh:
        json.dump({"chat_template": template}, fh, indent=2)
        fh.write("\n")


def text_id_limit(tok_json):
    """ordinary text ids lie below the first added (special) token: no random id is an image token"""
    with open(tok_json) as fh:
        return min(a["id"] for a in json.load(fh)["added_tokens"])


TILE = "tile"  # a slot item: one tile's n_tok image tokens


def make_batch(seed, text_hi, rows, slot, n_tok, image_id):
    """rows[r]: the images of row r; slot(image) -> its items in order (a marker id, or TILE for one
    tile's n_tok image tokens). Each row: 2 text tokens, then each image's slot followed by 3 text
    tokens, then text up to the longest row + 6 (the answer); labels on about half of the text
    positions after the first slot (the first after each slot always), never on an image token or
    a marker. Returns ids, labels (2, T), each tile's row and first position, each image's tiles."""
    g = gen(seed)
    items, tile_row, tile_start, image_tiles = [], [], [], []
    for r, images in enumerate(rows):
        row = ["text"] * 2
        for im in images:
            its = slot(im)
            image_tiles.append(sum(x == TILE for x in its))
            row += its + ["answer", "text", "text"]
        items.append(row)
    n = [sum(n_tok if x == TILE else 1 for x in row) for row in items]
    T = max(n) + 6
    ids = torch.randint(0, text_hi, (len(rows), T), generator=g, dtype=torch.int64)
    labels = torch.full((len(rows), T), -100, dtype=torch.int64)
    coin = torch.rand((len(rows), T), generator=g)
    for r, row in enumerate(items):
        row += ["answer"] * (T - n[r])
        p, seen = 0, False
        for x in row:
            if x == TILE:
                tile_row.append(r)
                tile_start.append(p)
                ids[r, p:p + n_tok] = image_id
                p += n_tok
                seen = True
                continue
            if isinstance(x, int):
                ids[r, p] = x  # a marker: ordinary text to the model
            elif seen and (x == "answer" or coin[r, p] < 0.5):
                labels[r, p] = ids[r, p]
            p += 1
        assert p == T
    return ids, labels, tile_row, tile_start, image_tiles


def run(model_dir, cls, rows, slot, n_tok, image_id, text_hi, seed, conn_prefix, out_file,
        extra_conn_names=None, per_row_pixels=False, logit_cols=0):
    """loads model_dir, adds random LoRA, runs forward + backward on the batch of make_batch(rows =
    rows) with random tiles; writes out_file. per_row_pixels: pixel_values (B, max tiles, 3, S, S)
    with all-zero padding tiles (Idefics3's processor), else (tiles, 3, S, S). logit_cols > 0: the
    logits of that many random vocabulary columns only (logit_cols; more columns than the hidden
    size pin the final hidden state at every position), so that the fixture stays small"""
    model = cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=ATTN).eval()
    V = model.config.get_text_config().vocab_size
    S = model.config.vision_config.image_size
    S = S if isinstance(S, int) else S[0]
    ids, labels, tile_row, tile_start, image_tiles = make_batch(seed, text_hi, rows, slot, n_tok, image_id)
    assert int((ids == image_id).sum()) == n_tok * len(tile_row)
    flat = torch.randn((len(tile_row), 3, S, S), generator=gen(seed + 2))
    if per_row_pixels:
        per = [tile_row.count(r) for r in range(len(rows))]
        pixels = torch.zeros((len(rows), max(per), 3, S, S))
        i = 0
        for r in range(len(rows)):
            pixels[r, :per[r]] = flat[i:i + per[r]]
            i += per[r]
    else:
        pixels = flat
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_RE, bias="none")
    pm = get_peft_model(model, lcfg)
    g = gen(seed + 1)
    # LoRA at 0.2: scale * B @ A about the base weights' size. At 0.3 it was twice that, the attention
    # sharp enough that fp32 rounding reached 1e-5 of the logits in any implementation (transformers'
    # own fp32 1.9e-5 from float64 on InternVL at vocabulary 1056); at 0.2 1.4e-6
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    conn = {}
    for name, p in pm.named_parameters():
        if conn_prefix in name:
            p.requires_grad_(True)
            conn[name[name.index(conn_prefix):]] = p
    assert conn, conn_prefix
    res = pm(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids), labels=labels)
    res.loss.backward()
    logits = res.logits.detach()
    tensors = {"pixel_values": flat.contiguous(),
               "input_ids": ids.to(torch.int32).contiguous(), "labels": labels.to(torch.int32).contiguous(),
               "img_row": torch.tensor(tile_row, dtype=torch.int32),
               "img_start": torch.tensor(tile_start, dtype=torch.int32),
               "image_tiles": torch.tensor(image_tiles, dtype=torch.int32),
               "loss": res.loss.detach().reshape(1).contiguous()}
    if logit_cols:
        assert logit_cols > model.config.get_text_config().hidden_size
        cols = torch.sort(torch.randperm(V, generator=gen(seed + 3))[:logit_cols]).values
        tensors["logit_cols"] = cols.to(torch.int32)
        logits = logits[:, :, cols]
    tensors["logits"] = logits.contiguous()
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
    save_file(tensors, out_file, metadata={"vocab_size": str(V)})
    return dict(file=os.path.basename(out_file), loss=res.loss.item(), lora_tensors=nlora, T=ids.shape[1],
                tiles=len(tile_row), image_tiles=image_tiles)


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
    image_id = token_id(tok_json, "<IMG_CONTEXT>")  # as the directory's tokenizer.json says
    cfg = InternVLConfig(vision_config=internvl_vision_config().to_dict(), text_config=qwen2_text(VOCAB).to_dict(),
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
    llm = qwen2_text(VOCAB).to_dict()
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
    copy_tokenizer(tok_json, d, INTERNVL_HF_TEMPLATE)

    # <img> <IMG_CONTEXT> x 25 per tile </img>; each image a 1x2 or 2x1 grid + its thumbnail
    img, end = token_id(tok_json, "<img>"), token_id(tok_json, "</img>")

    def slot(tiles):
        return [img] + [TILE] * tiles + [end]

    return run(d, InternVLForConditionalGeneration, [[3, 3], [3, 3]], slot, n_tok=25, image_id=image_id,
               text_hi=text_id_limit(tok_json), seed=31004, logit_cols=128,
               conn_prefix="model.multi_modal_projector.", out_file=os.path.join(out, "vlm_internvl.safetensors"),
               extra_conn_names=remote_conn_name)


# ---------------------------------------------------------------------------------------- Idefics3

def make_idefics3(out, tok_json):
    d = os.path.join(out, "vlm_idefics3_dir")
    clean_dir(d)
    V = VOCAB  # the chat formats' tokenizer fits: the round trip trains on it
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
    copy_tokenizer(tok_json, d, SMOLVLM_TEMPLATE)
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
    # Idefics3Processor's text for a grid image: per grid tile <fake_token_around_image> <row_i_col_j>
    # <image> x 4, "\n" after each grid row, then "\n" <fake_token_around_image> <global-img> <image> x 4
    # <fake_token_around_image> (transformers' _prompt_split_image), tokenized by the directory's
    # tokenizer as the processor does: the real marker ids (<row_i_col_j> 1011..1046, "\n\n" one token)
    tok = Tokenizer.from_file(tok_json)

    def slot(grid):
        text = ""
        for i in range(grid[0]):
            for j in range(grid[1]):
                text += f"<fake_token_around_image><row_{i + 1}_col_{j + 1}>" + "<image>" * 4
            text += "\n"
        text += "\n<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>"
        ids = tok.encode(text, add_special_tokens=False).ids
        items, k = [], 0
        while k < len(ids):
            if ids[k] == image_id:
                assert ids[k:k + 4] == [image_id] * 4, ids
                items.append(TILE)
                k += 4
            else:
                items.append(ids[k])
                k += 1
        assert sum(x == TILE for x in items) == grid[0] * grid[1] + 1, items
        assert sum(x == token_id(tok_json, f"<row_{i + 1}_col_{j + 1}>") for i in range(grid[0])
                   for j in range(grid[1]) for x in items) == grid[0] * grid[1], items
        return items

    # rows of 3 + 3 and 5 + 3 tiles: row 0's pixel_values end in two all-zero padding tiles
    return run(d, Idefics3ForConditionalGeneration, [[(1, 2), (2, 1)], [(2, 2), (1, 2)]], slot, n_tok=4,
               image_id=image_id, text_hi=text_id_limit(tok_json), seed=32004, per_row_pixels=True, logit_cols=128,
               conn_prefix="model.connector.", out_file=os.path.join(out, "vlm_idefics3.safetensors"))


# ---------------------------------------------------------------------------------------- Llava

def make_llava(out, tok_json):
    d = os.path.join(out, "vlm_llava_dir")
    clean_dir(d)
    V = VOCAB
    image_id = token_id(tok_json, "<image>")  # image_token_index: the directory's tokenizer's <image>, as llava-hf ships
    vis = CLIPVisionConfig(hidden_size=20, intermediate_size=28, num_hidden_layers=3, num_attention_heads=2,
                           image_size=12, patch_size=4, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                           projection_dim=8)
    cfg = LlavaConfig(vision_config=vis.to_dict(), text_config=llama_text(V).to_dict(), image_token_index=image_id,
                      vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
                      image_seq_length=9, tie_word_embeddings=False)
    torch.manual_seed(33001)
    m = LlavaForConditionalGeneration(cfg).eval()
    perturb_all(m, 33002)
    m.save_pretrained(d)
    sd = load_file(os.path.join(d, "model.safetensors"))
    assert "multi_modal_projector.linear_1.weight" in sd and "language_model.lm_head.weight" in sd, sorted(sd)[:6]
    assert "vision_tower.embeddings.class_embedding" in sd, sorted(sd)[:6]  # hub files: vision_tower.vision_model.*
    # llava-hf's chat_template.json as llava-1.5-7b-hf ships it (svlm's llava_hf format): the round trip
    # trains on the directory with its own format
    copy_tokenizer(tok_json, d, LLAVA_HF_TEMPLATE_SHIPPED)
    # two images a row, one tile each (llava-hf does not tile), <image> x 9 each
    return run(d, LlavaForConditionalGeneration, [[1, 1], [1, 1]], lambda im: [TILE], n_tok=9, image_id=image_id,
               text_hi=text_id_limit(tok_json), seed=33004, logit_cols=128,
               conn_prefix="model.multi_modal_projector.", out_file=os.path.join(out, "vlm_llava.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    setup_torch()
    out = args.out
    # the chat formats' tokenizer (make_chat_format_fixtures.py: 1047 tokens, the formats' specials and
    # SmolVLM's <row_i_col_j>), in every directory
    tok = os.path.join(out, "chat_formats", "tokenizer.json")
    log = {"internvl": make_internvl(out, tok), "idefics3": make_idefics3(out, tok), "llava": make_llava(out, tok)}
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
