"""The EMA of the weights against the raw weights, side by side on the same trained runs.

Every run keeps both (docs/training.md), so one training per setting gives the pair: the
end-to-end bridge on Fashion-MNIST at the baselines' budget (docs/results.md: 1,490 steps of
the `small` preset, seed 0), scored by ``pbridge evaluate``'s protocol with each set of weights
(bits/dim, FD-FMNIST with a standard error over sample sets) and by the paired per-image bound
on the same test images; and the toy (seeds 0, 1, 2): the ELBO on its test walks and the
transition accuracy of sampled codes. Writes docs/ema.md.

    OMP_NUM_THREADS=1 python benchmarks/ema.py [--out runs/ema] [--doc docs/ema.md]

A run directory that already holds a finished run is scored, not retrained.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch
from paired_bound import bits_per_image

from pbridge.data import load_images
from pbridge.inference.evaluate import EvalSettings
from pbridge.inference.load import load_run
from pbridge.inference.run_kinds import evaluate_run
from pbridge.samplers import SamplerSettings

FMNIST_STEPS = 1490  # the end-to-end row of docs/results.md (900 s of training at its step cost)
TOY_SEEDS = (0, 1, 2)
WEIGHTS = ("ema", "raw")
SAMPLER = SamplerSettings("respaced", sample_steps=100)
EVAL = EvalSettings(bpd_items=500, num_samples=400, fd_draws=3, seed=0)


def _train(args: list[str], run: Path) -> float:
    """``pbridge train ...`` into ``run`` unless it already holds a finished run; its seconds."""
    if (run / "metrics.json").is_file():
        print(f"{run}: finished run found, scored as it is", flush=True)
        return float("nan")
    start = time.perf_counter()
    command = [sys.executable, "-m", "pbridge.cli", "train", *args, "--out", str(run)]
    subprocess.run([*command, "--no-progress"], check=True)
    return time.perf_counter() - start


def _paired(run: Path, items: int, chain_steps: int) -> tuple[dict, tuple[float, float]]:
    """Per-image bits/dim of the first ``items`` test images under each set of weights (the
    same images and seed): the means, and EMA minus raw with its standard error."""
    per_image = {}
    for weights in WEIGHTS:
        loaded = load_run(run, weights=weights, device="cpu")
        config, variant = loaded.config, loaded.variant
        x = load_images(config.dataset, "test").as_float()[:items]
        pyro.set_rng_seed(0)
        with pyro.validation_enabled(False):
            per_image[weights] = bits_per_image(variant, x, chain_steps)
    diff = per_image["ema"] - per_image["raw"]
    means = {w: float(v.mean()) for w, v in per_image.items()}
    return means, (float(diff.mean()), float(diff.std() / math.sqrt(items)))


def fashion_mnist(out: Path) -> list[str]:
    run = out / "end-to-end"
    flags = ["--preset", "small", "--variant", "end-to-end", f"--steps={FMNIST_STEPS}"]
    seconds = _train(["fashion-mnist", *flags, "--seed", "0"], run)
    scores = {w: evaluate_run(run, EVAL, "cpu", None, SAMPLER, w) for w in WEIGHTS}
    means, (diff, diff_se) = _paired(run, EVAL.bpd_items, EVAL.chain_steps)
    lines = [
        f"## Fashion-MNIST, end-to-end bridge, `small`, {FMNIST_STEPS} steps, seed 0",
        "",
        f"Trained with `pbridge train fashion-mnist {' '.join(flags)} --seed 0` "
        f"({f'{seconds:.0f} s here' if math.isfinite(seconds) else 'an existing run'}); "
        "scored with `pbridge evaluate RUN --weights ema|raw "
        f"--items {EVAL.bpd_items} --samples {EVAL.num_samples} --sampler respaced "
        "--sample-steps 100`.",
        "",
        "| weights | bits/dim | paired per-image bits/dim | FD-FMNIST | codes used |",
        "|---|---:|---:|---:|---:|",
    ]
    for w in WEIGHTS:
        s = scores[w]
        lines.append(
            f"| {w} | {s['test_bits_per_dim']:.3f} "
            f"± {s['test_bits_per_dim_stderr'] or math.nan:.3f} | "
            f"{means[w]:.4f} | {s['fd_fmnist']:.2f} ± {s['fd_fmnist_stderr']:.2f} | "
            f"{s['codes_used']} |"
        )
    lines += [
        "",
        f"Paired on the same {EVAL.bpd_items} test images (one draw each, same seed), EMA minus "
        f"raw: {diff:+.4f} ± {diff_se:.4f} bits/dim.",
        "",
    ]
    return lines


def toy(out: Path) -> list[str]:
    lines = [
        "## Toy, default preset",
        "",
        "| seed | weights | ELBO per walk (nats) | transition accuracy, sampled codes |",
        "|---:|---|---:|---:|",
    ]
    settings = EvalSettings(bpd_items=1000, num_samples=1000, seed=0)
    for seed in TOY_SEEDS:
        run = out / f"toy-{seed}"
        _train(["toy", "--seed", str(seed)], run)
        for w in WEIGHTS:
            s = evaluate_run(run, settings, "cpu", weights=w)
            lines.append(
                f"| {seed} | {w} | {s['elbo']:.2f} ± {s['elbo_stderr']:.2f} | "
                f"{s['transition_accuracy_sampled_zq']:.3f} |"
            )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/ema", help="folder of the trained runs")
    parser.add_argument("--doc", default="docs/ema.md")
    parser.add_argument("--skip-fmnist", action="store_true", help="the toy rows only")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    body = toy(out) + ([] if args.skip_fmnist else fashion_mnist(out))
    minutes = (time.perf_counter() - start) / 60
    command = "python benchmarks/ema.py" + (" --skip-fmnist" if args.skip_fmnist else "")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    head = [
        "# EMA of the weights against the raw weights",
        "",
        f"Produced by `OMP_NUM_THREADS=1 {command}` at commit {commit.stdout.strip() or '?'} "
        f"in {minutes:.0f} min on "
        f"{platform.machine()} with {torch.get_num_threads()} torch thread(s) "
        f"(torch {torch.__version__}). Both sets of weights come from the same runs (the EMA is "
        "kept beside the weights, decay 0.995 with the warm-up of docs/training.md), so every "
        "row pair differs only in the weights.",
        "",
    ]
    Path(args.doc).write_text("\n".join(head + body))
    print(Path(args.doc).read_text())


if __name__ == "__main__":
    main()
