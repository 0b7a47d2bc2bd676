#!/usr/bin/env python3
"""Reference log-likelihoods for ./evaluate --mc-score likelihood (tests/test_eval_likelihood.c).

    /work/venv/bin/python scripts/make_likelihood_fixtures.py --fixtures tests/fixtures

On the parity fixtures' VLMs (scripts/make_fixtures.py: clip + ldp_qwen2 + qwen2 + the qwen2_lora
adapter, and clip + mlp2x_llama + llama + the llama_lora rsLoRA adapter), transformers + peft
score random multiple-choice questions: for each option, the whole sequence prompt + option is run
in one forward pass (the image's connector features spliced in before prompt[image_pos]) and the
option's log-likelihood is the sum over its tokens of log_softmax(logits)[token] at the position
before it, in float64 from the float32 logits. svlm computes the same with one prefill of the
prompt and a cached extension per option (eval/bench_run.c: bench_option_logprobs).

Writes tests/fixtures/eval/likelihood.json: per model its fixture files, and per question the
prompt ids, image (index into the model's vlm fixture pixel_values, -1 for none), image_pos,
options (token id lists of 1 to 6 tokens) and logp (the reference log-likelihoods), plus the
versions used. CPU, float32, eager attention, fixed seeds: a rerun writes the same file.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyreq import require  # noqa: E402

require("torch", "safetensors", "transformers", "peft")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import CLIPVisionModel, LlamaForCausalLM, Qwen2ForCausalLM  # noqa: E402

from make_fixtures import ATTN, LDP, MLP2xGelu, load_connector, load_llm, vision_features  # noqa: E402

MODELS = [
    # name, vlm fixture (pixel_values), llm, llm class, connector file, connector class, LoRA adapter
    ("qwen2_ldp_lora", "vlm_qwen2_ldp.safetensors", "qwen2", Qwen2ForCausalLM, "ldp_qwen2.safetensors", LDP, "qwen2_lora"),
    ("llama_mlp2x_rslora", "vlm_llama_mlp2x.safetensors", "llama", LlamaForCausalLM, "mlp2x_llama.safetensors", MLP2xGelu,
     "llama_lora"),
]


def option_logp(model, embed, conn_out, prompt, image_pos, option):
    """log-likelihood of option after prompt, in one forward pass over prompt + option"""
    ids = torch.tensor([prompt + option])
    emb = embed(ids)[0]
    if conn_out is not None:
        emb = torch.cat([emb[:image_pos], conn_out, emb[image_pos:]], 0)
    with torch.no_grad():
        logits = model(inputs_embeds=emb[None], attention_mask=torch.ones(1, emb.shape[0], dtype=torch.long)).logits[0]
    lp = torch.log_softmax(logits.double(), -1)
    start = emb.shape[0] - len(option)  # position of the option's first token
    return sum(float(lp[start + j - 1, t]) for j, t in enumerate(option))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="tests/fixtures")
    args = ap.parse_args()
    fx = args.fixtures
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    clip = CLIPVisionModel.from_pretrained(os.path.join(fx, "clip"), dtype=torch.float32, attn_implementation=ATTN).eval()
    out = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
           "models": []}
    for name, vlm_file, llm_dir, llm_cls, conn_file, conn_cls, lora_dir in MODELS:
        pixels = load_file(os.path.join(fx, vlm_file))["pixel_values"]
        feats = vision_features(clip, pixels)                      # (n_img, N, Cv)
        conn = conn_cls(feats.shape[2], load_llm(llm_cls, os.path.join(fx, llm_dir)).config.hidden_size)
        load_connector(conn, os.path.join(fx, conn_file))
        conn.eval()
        with torch.no_grad():
            conn_out = conn(feats)                                  # (n_img, n_tok, H)
        base = load_llm(llm_cls, os.path.join(fx, llm_dir))
        model = PeftModel.from_pretrained(base, os.path.join(fx, lora_dir)).eval()
        embed = model.get_base_model().get_input_embeddings()
        V = base.config.vocab_size
        g = torch.Generator().manual_seed(4242)
        cases = []
        # image first (how svlm prompts it), image inside the prompt, no image; 4 or 5 options
        for image, image_pos_of, n_prompt, n_options in ((0, 0, 13, 4), (1, 7, 19, 5), (-1, -1, 9, 4)):
            prompt = torch.randint(0, V, (n_prompt,), generator=g).tolist()
            options = [torch.randint(0, V, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
                       for _ in range(n_options)]
            options[0] = options[0][:1]  # one single-token option in every question
            co = conn_out[image] if image >= 0 else None
            logp = [option_logp(model, embed, co, prompt, image_pos_of, o) for o in options]
            cases.append({"prompt": prompt, "image": image, "image_pos": image_pos_of, "options": options, "logp": logp})
        out["models"].append({"name": name, "vlm_fixture": vlm_file, "llm": llm_dir, "connector": conn_file,
                              "connector_type": "ldp" if conn_cls is LDP else "mlp2x_gelu", "lora": lora_dir,
                              "image_tokens": int(conn_out.shape[1]), "cases": cases})
    path = os.path.join(fx, "eval", "likelihood.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    n = sum(len(c["options"]) for m in out["models"] for c in m["cases"])
    print(f"wrote {path}: {len(out['models'])} models, {n} option log-likelihoods")


if __name__ == "__main__":
    main()
