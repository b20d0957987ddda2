"""Seconds per training step of the image priors at several network sizes, measured side by side
in one process (one torch thread, batch 64, Fashion-MNIST), so that rows of different sizes can
be given the same training seconds.

    OMP_NUM_THREADS=1 python benchmarks/step_costs.py --results docs/results.md

Each configuration is a stage as the training command runs it (``pbridge.inference.train`` on
the stage's module: the bridge or the PixelCNN on a frozen VQ-VAE, the end-to-end bridge with
its VQ-VAE trained on, the VQ-VAE alone). The configurations are timed in turns, ``--rounds``
times ``--steps`` steps each after ``--warmup`` untimed steps, and each one's median over the
rounds is reported, with its ratio to the ``small`` preset's step of the same stage: the ratios
carry over to the step costs of docs/results.md, which were measured on a machine shared with
other work. The table is printed and, with ``--results``, written between the markers
of its section of that Markdown file (:data:`SECTION`).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import pyro
import torch
from doc_section import write_section

from pbridge.config import image_preset
from pbridge.inference.images import image_data
from pbridge.inference.svi import train
from pbridge.models.builders import build_image_vqvae, image_variant

CONFIGS: dict[str, tuple[str, dict]] = {
    "VQ-VAE": ("vqvae", {}),
    "two-stage, U-Net width 32 (small)": ("two-stage", {}),
    "two-stage, U-Net width 48": ("two-stage", {"unet_width": 48}),
    "two-stage, U-Net width 64": ("two-stage", {"unet_width": 64}),
    "two-stage, U-Net width 32, 2 blocks": ("two-stage", {"unet_blocks": 2}),
    "end-to-end, U-Net width 32 (small)": ("end-to-end", {}),
    "end-to-end, U-Net width 48": ("end-to-end", {"unet_width": 48}),
    "end-to-end, U-Net width 64": ("end-to-end", {"unet_width": 64}),
    "PixelCNN, 64 channels, 8 layers (small)": ("pixelcnn", {}),
}
"""Name -> (variant, overrides of the ``small`` preset)."""

SECTION = "step costs"
"""The section of the ``--results`` file this benchmark writes (:mod:`doc_section`)."""

REFERENCE = {
    "vqvae": "VQ-VAE",
    "two-stage": "two-stage, U-Net width 32 (small)",
    "end-to-end": "end-to-end, U-Net width 32 (small)",
    "pixelcnn": "PixelCNN, 64 channels, 8 layers (small)",
}


def seconds_per_step(variant, x: torch.Tensor, settings, steps: int, warmup: int) -> float:
    """Wall seconds of one SVI step of ``variant``, over ``steps`` steps after ``warmup``."""
    train(variant, x, replace(settings, steps=warmup), progress=False)
    start = time.perf_counter()
    train(variant, x, replace(settings, steps=steps), progress=False)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each round")
    parser.add_argument("--rounds", type=int, default=3, help="turns over the configurations")
    parser.add_argument("--only", nargs="*", default=None, help="names of CONFIGS to time")
    parser.add_argument("--results", help="Markdown file whose step-cost section to rewrite")
    args = parser.parse_args()

    pyro.enable_validation(False)
    base = image_preset("fashion-mnist", "small")
    x = image_data(replace(base, max_train=2048, eval_items=1)).train_x
    names = [n for n in CONFIGS if args.only is None or n in args.only]
    modules = {}
    for name in names:
        variant, overrides = CONFIGS[name]
        config = replace(base, variant=variant, **overrides)
        torch.manual_seed(0)
        modules[name] = image_variant(variant).on_vqvae(config, build_image_vqvae(config))
    settings = replace(base.train, checkpoint_every=0, eval_every=0, sample_every=0)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            times[name].append(
                seconds_per_step(modules[name], x, settings, args.steps, args.warmup)
            )
    median = {name: statistics.median(values) for name, values in times.items()}
    lines = [
        "## Step costs by network size (benchmarks/step_costs.py)",
        "",
        f"Produced by `OMP_NUM_THREADS={torch.get_num_threads()} python "
        "benchmarks/step_costs.py` on "
        f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), batch "
        f"{settings.batch_size}: seconds per SVI step, the median of {args.rounds} rounds of "
        f"{args.steps} steps, every stage timed in turns in one process. The ratio is to the "
        "`small` preset's step of the same stage; the claims rows' step counts scale the step "
        "costs above by it.",
        "",
        "| stage | s / step | ratio to the small preset's |",
        "|---|---:|---:|",
    ]
    for name in names:
        reference = REFERENCE[CONFIGS[name][0]]
        ratio = median[name] / median[reference] if reference in median else float("nan")
        lines.append(f"| {name} | {median[name]:.3f} | {ratio:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.results:
        write_section(args.results, SECTION, table)


if __name__ == "__main__":
    main()
