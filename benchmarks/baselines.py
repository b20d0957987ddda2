"""Train the four priors at an equal training budget on Fashion-MNIST, score them under one
protocol (``pbridge evaluate``) and write docs/results.md.

    python benchmarks/baselines.py --out runs/baselines

Rows: uniform-prior VQ-VAE, VQ-VAE + PixelCNN, two-stage bridge, end-to-end bridge. The step
counts below give each about the same training wall time, from the step costs measured side by
side at batch 64 on a 2-core CPU (docs/baselines.md): end to end 0.233 s, VQ-VAE 0.083 s,
bridge on a frozen VQ-VAE 0.174 s, PixelCNN on a frozen VQ-VAE 0.47 s. The commands run one
after the other with the same number of torch threads (``OMP_NUM_THREADS``, default 1, so that
other work on a second core does not disturb the timings), so their times are comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

THREADS = os.environ.get("OMP_NUM_THREADS", "1")
ROWS = {
    "uniform-prior VQ-VAE": ("vqvae", {"steps": 3600}),
    "VQ-VAE + PixelCNN": ("pixelcnn", {"vqvae-steps": 700, "steps": 500}),
    "two-stage bridge": ("two-stage", {"vqvae-steps": 700, "steps": 1300}),
    "end-to-end bridge": ("end-to-end", {"steps": 1300}),
}


def _pbridge(*args: str) -> None:
    command = [sys.executable, "-m", "pbridge.cli", *args]
    print("$ pbridge " + " ".join(args), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": THREADS})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/baselines", help="folder of the four runs")
    parser.add_argument("--results", default="docs/results.md", help="Markdown file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=400, help="prior samples for FD-FMNIST")
    parser.add_argument("--items", type=int, default=500, help="test images for bits/dim")
    args = parser.parse_args()

    from pbridge.inference.evaluate import results_table

    out = Path(args.out)
    results, commands = {}, []
    start = time.perf_counter()
    for name, (variant, options) in ROWS.items():
        run = out / variant
        flags = [f"--{key}={value}" for key, value in options.items()]
        train = ["train", "fashion-mnist", "--preset", "small", "--variant", variant, *flags]
        train += ["--seed", str(args.seed), "--out", str(run), "--no-progress"]
        evaluate = [
            "evaluate",
            str(run),
            "--samples",
            str(args.samples),
            "--items",
            str(args.items),
        ]
        evaluate += ["--seed", str(args.seed)]
        if not (run / "eval.json").is_file():  # a row already scored is kept (rerun to continue)
            _pbridge(*train)
            _pbridge(*evaluate)
        commands += ["pbridge " + " ".join(train), "pbridge " + " ".join(evaluate)]
        results[name] = json.loads((run / "eval.json").read_text())
    minutes = (time.perf_counter() - start) / 60

    first = next(iter(results.values()))
    text = [
        "# Results: four priors under one protocol (Fashion-MNIST)",
        "",
        f"Produced by `OMP_NUM_THREADS={THREADS} python benchmarks/baselines.py --out {args.out}` "
        f"in {minutes:.0f} min on "
        f"{platform.machine()}, {THREADS} torch thread(s) per command (torch "
        f"{torch.__version__}); protocol in [evaluation.md](evaluation.md).",
        "",
        results_table(results),
        "Masked patch: the central 5 x 5 of the 14 x 14 code grid, "
        f"{first['patch_items']} test images x {first['patch_draws']} inpainting draws. "
        "FD-FMNIST: "
        f"{args.samples} prior samples against the 10,000 test images; reference figures "
        "(same sizes): reconstructions "
        + ", ".join(f"{r['fd_fmnist_reconstructions']:.1f}" for r in results.values())
        + f"; training images {first['fd_fmnist_train_images']:.1f}. "
        f"Classifier test accuracy {first['classifier_test_accuracy']:.4f}.",
        "",
        "Commands, in the order run:",
        "",
        "```bash",
        *commands,
        "```",
        "",
    ]
    Path(args.results).write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
