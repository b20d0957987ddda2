"""Train the four priors at an equal training budget on Fashion-MNIST, score them under one
protocol (``pbridge evaluate``) and write docs/results.md.

    python benchmarks/baselines.py --out runs/baselines

It also copies each run's prior samples and reconstructions to docs/images/baselines-VARIANT-*.png.

Rows: uniform-prior VQ-VAE, VQ-VAE + PixelCNN, two-stage bridge, end-to-end bridge (the tight
formulation, the default). The step counts give each the same training budget, 900 s at the
step costs measured side by side (one process, one thread, batch 64, on this 2-core CPU shared
with other work): VQ-VAE 0.167 s, PixelCNN on a frozen VQ-VAE 1.10 s, tight bridge on a frozen
VQ-VAE 0.575 s, tight bridge end to end 0.605 s (end to end: the VQ-VAE warm start of 1,000
steps, then 1,210 joint steps). The rows run as two streams of two, each
command with the same number of torch threads (``OMP_NUM_THREADS``, default 1), so the two
streams share the two cores and their times stay comparable. The bridge's prior samples and
inpainting use 100 respaced steps (eta = 1); its bound does not depend on the sampler.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from pbridge.config import image_preset
from pbridge.models.builders import build_image_model
from pbridge.variant import BridgeChain

THREADS = os.environ.get("OMP_NUM_THREADS", "1")
ROWS = {
    "uniform-prior VQ-VAE": ("vqvae", {"steps": 5400}),
    "VQ-VAE + PixelCNN": ("pixelcnn", {"vqvae-steps": 1000, "steps": 670}),
    "two-stage bridge": ("two-stage", {"vqvae-steps": 1000, "steps": 1270}),
    "end-to-end bridge": ("end-to-end", {"vqvae-steps": 1000, "steps": 1210}),
}
STREAMS = (("vqvae", "end-to-end"), ("pixelcnn", "two-stage"))
BRIDGE_SAMPLER = ["--sampler", "respaced", "--sample-steps", "100"]


def _commands(variant: str, options: dict, args: argparse.Namespace) -> list[list[str]]:
    run = str(Path(args.out) / variant)
    flags = [f"--{key}={value}" for key, value in options.items()]
    train = ["train", "fashion-mnist", "--preset", "small", "--variant", variant, *flags]
    train += ["--seed", str(args.seed), "--out", run, "--no-progress"]
    evaluate = ["evaluate", run, "--samples", str(args.samples), "--items", str(args.items)]
    evaluate += ["--seed", str(args.seed)]
    if _has_chain(variant):
        evaluate += BRIDGE_SAMPLER
    return [train, evaluate]


def _has_chain(variant: str) -> bool:
    """Whether the registry's ``variant`` (small preset) samples by a bridge chain."""
    config = replace(image_preset("fashion-mnist", "small"), variant=variant)
    return isinstance(build_image_model(config), BridgeChain)


def _stream(commands: list[list[str]], log: Path) -> subprocess.Popen:
    """Run the commands one after the other in a shell, output to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": THREADS}
    lines = [shlex.join([sys.executable, "-m", "pbridge.cli", *c]) for c in commands]
    return subprocess.Popen(
        ["bash", "-c", "set -e; " + "; ".join(lines)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def _bands_table(results: dict[str, dict]) -> list[str]:
    rows = {n: r for n, r in results.items() if "chain_bits_per_cell_by_step" in r}
    if not rows:
        return []
    bands = list(next(iter(rows.values()))["chain_bits_per_cell_by_step"])
    lines = [
        "Where the bridge's bound goes, bits per latent cell by band of steps t (t = 1: the "
        "read-out; 200 test images, 8 steps per band), and KL(q(z^T | k) || N(z*, sigma2 I)):",
        "",
        "| model | " + " | ".join(f"t = {b}" for b in bands) + " | L_T |",
        "|---|" + "---:|" * (len(bands) + 1),
    ]
    for name, r in rows.items():
        values = r["chain_bits_per_cell_by_step"].values()
        cells = " | ".join(f"{v:.4f}" for v in values)
        lines.append(f"| {name} | {cells} | {r['prior_kl_bits_per_cell']:.4f} |")
    return [*lines, ""]


FIGURES = {"eval_samples.png": "samples", "reconstructions.png": "reconstructions"}


def _copy_figures(out: Path, images: Path) -> None:
    """Copy each run's prior samples and reconstructions to
    ``images/baselines-VARIANT-KIND.png`` (KIND: samples, reconstructions)."""
    images.mkdir(parents=True, exist_ok=True)
    for variant, _ in ROWS.values():
        for name, kind in FIGURES.items():
            if (out / variant / name).is_file():
                shutil.copyfile(out / variant / name, images / f"baselines-{variant}-{kind}.png")
            else:
                print(f"{out / variant / name} is missing: not copied")
    print(f"figures copied to {images}/baselines-VARIANT-{{samples,reconstructions}}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/baselines", help="folder of the four runs")
    parser.add_argument("--results", default="docs/results.md", help="Markdown file to write")
    parser.add_argument("--images", default="docs/images", help="folder for the runs' figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=400, help="prior samples for FD-FMNIST")
    parser.add_argument("--items", type=int, default=500, help="test images for bits/dim")
    args = parser.parse_args()

    from pbridge.inference.evaluate import results_table

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commands = {variant: _commands(variant, options, args) for variant, options in ROWS.values()}
    start = time.perf_counter()
    streams = []
    for i, stream in enumerate(STREAMS):
        todo = [c for v in stream if not (out / v / "eval.json").is_file() for c in commands[v]]
        if todo:  # a row already scored is kept (rerun to continue)
            print(f"stream {i}: " + ", ".join(stream) + f" (log: {out}/stream-{i}.log)", flush=True)
            streams.append(_stream(todo, out / f"stream-{i}.log"))
    if any(p.wait() for p in streams):
        raise SystemExit(f"a command failed: see the stream logs in {out}")
    minutes = (time.perf_counter() - start) / 60
    results = {
        name: json.loads((out / variant / "eval.json").read_text())
        for name, (variant, _) in ROWS.items()
    }

    first = next(iter(results.values()))
    text = [
        "# Results: four priors under one protocol (Fashion-MNIST)",
        "",
        f"Produced by `OMP_NUM_THREADS={THREADS} python benchmarks/baselines.py --out {args.out}` "
        f"in {minutes:.0f} min on "
        f"{platform.machine()}, two streams of commands with {THREADS} torch thread(s) each "
        f"(torch {torch.__version__}); protocol in [evaluation.md](evaluation.md). The bridge "
        "rows are the tight formulation (docs/maths.md s. 6); their samples and inpainting use "
        "100 respaced steps.",
        "",
        results_table(results),
        *_bands_table(results),
        "Masked patch: the central 5 x 5 of the 14 x 14 code grid, "
        f"{first['patch_items']} test images x {first['patch_draws']} inpainting draws. "
        "FD-FMNIST: mean ± standard error over "
        f"{first['settings']['fd_draws']} sets of "
        f"{args.samples} prior samples against the 10,000 test images; reference figures "
        "(same sizes): reconstructions "
        + ", ".join(f"{r['fd_fmnist_reconstructions']:.1f}" for r in results.values())
        + f"; training images {first['fd_fmnist_train_images']:.1f}. "
        f"Classifier test accuracy {first['classifier_test_accuracy']:.4f}.",
        "",
        "Commands (each stream runs its rows' commands in order):",
        "",
        "```bash",
        *["pbridge " + shlex.join(c) for v, _ in ROWS.values() for c in commands[v]],
        "```",
        "",
    ]
    Path(args.results).write_text("\n".join(text))
    _copy_figures(out, Path(args.images))
    print("\n".join(text))


if __name__ == "__main__":
    main()
