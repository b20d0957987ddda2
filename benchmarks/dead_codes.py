"""Dead-code restart in the VQ-VAE stage, side by side: the stage every image variant starts
from (Fashion-MNIST, `small`, 1,000 steps: the 900-s rows' first stage), seeds 0, 1, 2, without
restart (the default) and with ``--restart-dead-codes 1`` (a code whose moving average of cells
per batch falls below 1, of 64 x 196 = 12,544, jumps onto an encoding of the batch). Reports
the codes the 2,000 scored test images use, their perplexity, the uniform prior's bits/dim
(the decoder's share plus log2 K per cell) and the reconstruction error, from each run's
metrics.json. Writes its section of docs/training.md.

    OMP_NUM_THREADS=1 python benchmarks/dead_codes.py [--out runs/dead-codes]

A run directory that already holds a finished run is read, not retrained (rows resume).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from doc_section import write_section

SEEDS = (0, 1, 2)
RESTART = (None, 1.0)
STEPS = 1000
SECTION = "dead-codes"


def flags(seed: int | str, restart: float | None) -> list[str]:
    """The training command's arguments after ``pbridge train`` (``seed`` may be a placeholder)."""
    args = ["fashion-mnist", "--preset", "small", "--variant", "vqvae", f"--steps={STEPS}"]
    args += ["--seed", str(seed)]
    return args + ([] if restart is None else ["--restart-dead-codes", f"{restart:g}"])


def run(out: Path, seed: int, restart: float | None) -> dict:
    """Train one run unless its folder holds a finished one; its metrics."""
    folder = out / f"seed{seed}-{'none' if restart is None else f'restart{restart:g}'}"
    if not (folder / "metrics.json").is_file():
        command = [sys.executable, "-m", "pbridge.cli", "train", *flags(seed, restart)]
        subprocess.run([*command, "--out", str(folder), "--no-progress"], check=True)
    return json.loads((folder / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/dead-codes", help="folder of the runs")
    parser.add_argument("--doc", default="docs/training.md")
    args = parser.parse_args()
    lines = [
        "Produced by `OMP_NUM_THREADS=1 python benchmarks/dead_codes.py` (each run: "
        f"`pbridge train {' '.join(flags('S', 1.0))}`, without "
        "the last flag for no restart).",
        "",
        "| seed | restart below | codes used (of 128) | perplexity | bits/dim, uniform prior "
        "| reconstruction MSE |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for seed in SEEDS:
        for restart in RESTART:
            m = run(Path(args.out), seed, restart)
            lines.append(
                f"| {seed} | {'none' if restart is None else f'{restart:g} cell per batch'} "
                f"| {m['codes_used']} | {m['perplexity']:.1f} "
                f"| {m['test_bits_per_dim']:.3f} ± {m['test_bits_per_dim_stderr']:.3f} "
                f"| {m['reconstruction_mse']:.5f} |"
            )
            write_section(args.doc, SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
