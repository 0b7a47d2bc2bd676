#!/usr/bin/env python3
"""Draws the loss curves of one or more svlm runs from their metrics.jsonl as a PNG.

    python3 scripts/plot_metrics.py checkpoints/stage1 [checkpoints/stage2 ...] -o loss.png

Each argument is a run directory (or a metrics.jsonl file). Plotted per run: the training loss
of every logged step (thin), its moving average (thick) and the validation loss (markers); the
learning rate on a second axis. Needs matplotlib (pip install matplotlib).
"""
import argparse
import json
import os
import sys


def read(path):
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    train, val = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e})")
            if "val_loss" in r:
                val.append((r["step"], r["val_loss"]))
            elif "loss" in r:
                train.append((r["step"], r["loss"], r.get("lr", 0.0)))
    return path, train, val


def smooth(ys, k):
    out, acc = [], []
    for y in ys:
        acc.append(y)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("-o", "--out", default="loss.png")
    ap.add_argument("--window", type=int, default=20, help="moving-average window in logged steps")
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    ax2 = ax.twinx()
    for i, run in enumerate(args.runs):
        path, train, val = read(run)
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        colour = f"C{i}"
        if train:
            steps = [t[0] for t in train]
            losses = [t[1] for t in train]
            ax.plot(steps, losses, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(steps, smooth(losses, args.window), color=colour, linewidth=2, label=f"{name} train")
            ax2.plot(steps, [t[2] for t in train], color=colour, linestyle=":", linewidth=1)
        if val:
            ax.plot([v[0] for v in val], [v[1] for v in val], color=colour, marker="o", linestyle="--",
                    label=f"{name} validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over labelled tokens)")
    ax2.set_ylabel("learning rate (dotted)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
