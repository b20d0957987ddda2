"""Two image runs' bounds on the same test images, per image: the paired difference of their
bits/dim, and how much of each figure's standard error is the estimator's own noise.

    python benchmarks/paired_bound.py runs/baselines/end-to-end runs/baselines/pixelcnn

The standard error that ``pbridge evaluate`` reports is over batches of images, so it mostly
measures how images differ, not how noisy the bound's estimate is. Here every image is scored
twice with independent draws (the bridge: the read-out term and ``--chain-steps`` strata of the
chain, docs/evaluation.md): half the spread of the two scores' difference is the estimator's
variance, and the difference between two runs on the same images cancels the images' spread.
Prints a Markdown table (append it to docs/results.md by hand or with ``>>``).
"""

from __future__ import annotations

import argparse
import math

import pyro
import torch

from pbridge.data import load_images
from pbridge.inference.bound import elbo_per_item
from pbridge.inference.load import load_run


def bits_per_image(variant, x: torch.Tensor, chain_steps: int, batch: int = 100) -> torch.Tensor:
    """``-ELBO / (D log 2)`` of every image of ``x``, ``(N,)``: one draw of the guide and of the
    prior's estimate per image (:func:`~pbridge.inference.bound.elbo_per_item`)."""
    scores = [
        elbo_per_item(variant, x[i : i + batch], chain_steps) for i in range(0, len(x), batch)
    ]
    return -torch.cat(scores) / (x[0].numel() * math.log(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs=2, help="two image run directories")
    parser.add_argument("--items", type=int, default=500, help="test images")
    parser.add_argument("--chain-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", choices=("ema", "raw"), help="default: ema when kept")
    args = parser.parse_args()

    pyro.set_rng_seed(args.seed)
    scores = {}
    with pyro.validation_enabled(False):
        for run in args.runs:
            loaded = load_run(run, weights=args.weights, device="cpu")
            config, variant = loaded.config, loaded.variant
            x = load_images(config.dataset, "test").as_float()[: args.items]
            scores[run] = [bits_per_image(variant, x, args.chain_steps) for _ in range(2)]
    n = args.items
    lines = [
        f"Per-image bounds on the first {n} test images, each scored twice with independent "
        f"draws (`python benchmarks/paired_bound.py {' '.join(args.runs)} --items {n}`):",
        "",
        "| run | bits/dim | s.e. over images | s.e. of the estimator alone |",
        "|---|---:|---:|---:|",
    ]
    for run, (a, b) in scores.items():
        mean = (a + b) / 2
        images_se = float(mean.std() / math.sqrt(n))
        estimator_se = float((a - b).std() / math.sqrt(2) / math.sqrt(n))
        lines.append(f"| {run} | {float(mean.mean()):.3f} | {images_se:.3f} | {estimator_se:.4f} |")
    (a0, b0), (a1, b1) = scores.values()
    diff = (a0 + b0) / 2 - (a1 + b1) / 2
    lines += [
        "",
        f"Paired difference, {args.runs[0]} minus {args.runs[1]}, same images: "
        f"{float(diff.mean()):+.3f} ± {float(diff.std() / math.sqrt(n)):.3f} bits/dim.",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
