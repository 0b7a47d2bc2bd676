#!/usr/bin/env python3
"""Reference values for the trainer's optimizer path, computed with torch and transformers.

Writes tests/fixtures/train/adamw_schedule.safetensors: over 300 optimizer steps of two parameter
groups (different peak learning rates, weight decay on one), with transformers'
get_cosine_schedule_with_warmup (warmup = ceil(300 * 0.03) = 9 steps) and, in a second run, its
min-lr variant; each step's gradients are random, clipped with torch.nn.utils.clip_grad_norm_
(max_norm 1.0) and applied by torch.optim.AdamW (foreach=False). Saved: the initial parameters,
every step's gradients before clipping, the learning rate of each step and group, the total norms
clip_grad_norm_ returned, and the final parameters and AdamW moments.

    python3 scripts/make_train_fixtures.py --out tests/fixtures/train
"""
import argparse
import math
import os

from pyreq import require  # noqa: E402

require("torch", "safetensors", "transformers")

import torch
from safetensors.torch import save_file
from transformers import get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

STEPS, N0, N1 = 300, 37, 23


def run(min_lr_rate):
    g = torch.Generator().manual_seed(1234)
    p0 = torch.nn.Parameter(torch.randn(N0, generator=g) * 0.5)
    p1 = torch.nn.Parameter(torch.randn(N1, generator=g) * 0.5)
    init = (p0.detach().clone(), p1.detach().clone())
    opt = torch.optim.AdamW([{"params": [p0], "lr": 1e-3, "weight_decay": 0.05},
                             {"params": [p1], "lr": 2e-4, "weight_decay": 0.0}],
                            betas=(0.9, 0.999), eps=1e-8, foreach=False)
    warmup = math.ceil(STEPS * 0.03)
    if min_lr_rate:
        sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, STEPS, min_lr_rate=min_lr_rate)
    else:
        sched = get_cosine_schedule_with_warmup(opt, warmup, STEPS)
    grads0, grads1, lrs, norms = [], [], [], []
    for step in range(STEPS):
        # gradients of varied scale so that clipping sometimes acts and sometimes not
        scale = 0.05 if step % 3 else 2.0
        g0 = torch.randn(N0, generator=g) * scale
        g1 = torch.randn(N1, generator=g) * scale
        grads0.append(g0.clone())
        grads1.append(g1.clone())
        p0.grad, p1.grad = g0, g1
        norms.append(float(torch.nn.utils.clip_grad_norm_([p0, p1], 1.0)))
        lrs.append([opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]])
        opt.step()
        sched.step()
    st0, st1 = opt.state[p0], opt.state[p1]
    return {
        "init0": init[0], "init1": init[1],
        "grads0": torch.stack(grads0), "grads1": torch.stack(grads1),
        "lrs": torch.tensor(lrs, dtype=torch.float64), "norms": torch.tensor(norms, dtype=torch.float64),
        "final0": p0.detach().clone(), "final1": p1.detach().clone(),
        "m0": st0["exp_avg"].clone(), "v0": st0["exp_avg_sq"].clone(),
        "m1": st1["exp_avg"].clone(), "v1": st1["exp_avg_sq"].clone(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/train")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    tensors = {}
    for tag, rate in (("cos", 0.0), ("minlr", 0.1)):
        for k, v in run(rate).items():
            tensors[f"{tag}.{k}"] = v.contiguous()
    save_file(tensors, os.path.join(args.out, "adamw_schedule.safetensors"),
              metadata={"torch": torch.__version__, "steps": str(STEPS), "warmup_ratio": "0.03",
                        "max_norm": "1.0", "lr": "1e-3,2e-4", "weight_decay": "0.05,0", "min_lr_rate": "0.1"})


if __name__ == "__main__":
    main()
