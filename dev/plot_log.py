#!/usr/bin/env python3
"""Loss curves of one or more train_llama -L logs, drawn to one PNG.

    python3 dev/plot_log.py -o loss.png run_defaults.jsonl run_fp32.jsonl [--labels defaults,fp32]

A log holds one JSON object per line: a training step ({"step", "loss", "lr", "grad_norm", "clip_scale",
"skipped", ...}) or a validation ({"step", "val_loss"}, the loss after that many steps). Each log gets one
colour: training loss as a thin line, validation loss as a thick line with markers; skipped steps (a
non-finite loss or gradient norm) are marked with an x at the bottom. A second panel shows the gradient
norm with the clip scale. Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""
import argparse
import json
import math
import os
import sys


def read_log(path):
    steps, val = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"error: {path}:{number}: not JSON ({e.msg})")
            if "val_loss" in record:
                val.append(record)
            elif "loss" in record:
                steps.append(record)
            else:
                sys.exit(f"error: {path}:{number}: neither a step (\"loss\") nor a validation (\"val_loss\")")
    if not steps and not val:
        sys.exit(f"error: {path}: no records")
    return steps, val


def finite(x):
    return x is not None and math.isfinite(x)


def main():
    parser = argparse.ArgumentParser(description="loss curves of train_llama -L logs")
    parser.add_argument("logs", nargs="+", help="JSON-lines logs written by train_llama -L")
    parser.add_argument("-o", "--output", default="loss.png", help="the PNG to write (default loss.png)")
    parser.add_argument("--labels", help="comma-separated names, one per log (default: the file names)")
    parser.add_argument("--title", default="train_llama", help="the plot's title")
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [os.path.basename(p) for p in args.logs]
    if len(labels) != len(args.logs):
        sys.exit(f"error: --labels: {len(labels)} names for {len(args.logs)} logs")
    runs = [read_log(p) for p in args.logs]

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_norm) = plt.subplots(2, 1, figsize=(9, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for i, ((steps, val), label) in enumerate(zip(runs, labels)):
        colour = f"C{i}"
        good = [r for r in steps if not r.get("skipped") and finite(r["loss"])]
        ax_loss.plot([r["step"] for r in good], [r["loss"] for r in good], color=colour, linewidth=0.8, alpha=0.6,
                     label=f"{label} train")
        if val:
            ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], color=colour, linewidth=2,
                         marker="o", label=f"{label} validation (last {val[-1]['val_loss']:.3f})")
        skipped = [r["step"] for r in steps if r.get("skipped")]
        if skipped:
            ax_loss.plot(skipped, [0.02] * len(skipped), "x", color=colour, transform=ax_loss.get_xaxis_transform(),
                         label=f"{label} skipped")
        norms = [r for r in good if finite(r.get("grad_norm"))]
        ax_norm.plot([r["step"] for r in norms], [r["grad_norm"] for r in norms], color=colour, linewidth=0.8, label=label)
        clipped = [r for r in norms if r.get("clip_scale", 1.0) < 1.0]
        if clipped:
            ax_norm.plot([r["step"] for r in clipped], [r["grad_norm"] for r in clipped], ".", color=colour, markersize=3)
    ax_loss.set_ylabel("loss (nats per token)")
    ax_loss.set_title(args.title)
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_norm.set_ylabel("gradient norm\n(dots: clipped)")
    ax_norm.set_yscale("log")
    ax_norm.set_xlabel("step")
    ax_norm.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}: {len(runs)} run(s)")


if __name__ == "__main__":
    main()
