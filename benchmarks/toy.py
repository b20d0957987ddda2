"""Toy benchmark: wall time of `pbridge train toy` and the Pyro overhead per SVI step.

Runs the command line as a user does (a fresh process per seed, imports included), then times
one SVI step of the default variant through Pyro's Trace_ELBO against the same loss written in
bare torch, side by side in this process. Writes docs/benchmarks.md.

    python benchmarks/toy.py [--seeds 0 1 2] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

from pbridge.codebook import code_logits, gather_codes
from pbridge.config import ToyConfig
from pbridge.inference.bound import negative_elbo
from pbridge.models.builders import build_toy_model
from pbridge.toy import sample_walks


def run_cli(seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pbridge.cli",
                "train",
                "toy",
                "--out",
                out,
                "--seed",
                str(seed),
                "--no-progress",
            ],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - start
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    return {"seed": seed, "wall_seconds": wall, **metrics}


def bare_torch_loss(variant, x: torch.Tensor) -> torch.Tensor:
    """The default (tight) variant's training loss, written without Pyro: the nearest code
    (straight-through), the commitment surrogate, the code prior's one-step estimate and the
    decoder."""
    s, codes = variant.settings, variant.codebook()
    f = variant.encode(x)
    e_k = gather_codes(code_logits(f, codes, 0.0).argmax(-1), codes)
    z_q = e_k + f - f.detach()
    commit = s.commitment * (f - e_k.detach()).pow(2) + (f.detach() - e_k).pow(2)
    log_p = variant.prior(x.shape[0]).log_prob(z_q) + variant.decoder(z_q).log_prob(x)
    return (commit.flatten(1).sum(-1) - log_p).mean()


def time_steps(variant, loss_fn, x, steps: int = 300) -> float:
    opt = torch.optim.Adam(variant.parameters(), lr=1e-4, foreach=True)
    for i in range(steps + 30):
        if i == 30:
            start = time.perf_counter()
        loss = loss_fn(variant, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(variant.parameters(), 10.0)
        opt.step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="docs/benchmarks.md")
    args = parser.parse_args()

    runs = [run_cli(seed) for seed in args.seeds]

    pyro.enable_validation(False)
    config = ToyConfig()
    variant = build_toy_model(config)
    x, _ = sample_walks(config.train.batch_size, generator=torch.Generator().manual_seed(0))
    first = time_steps(variant, negative_elbo, x)
    ms_torch = time_steps(variant, bare_torch_loss, x)
    ms_pyro = min(first, time_steps(variant, negative_elbo, x))  # Pyro timed before and after

    lines = [
        "# Benchmarks",
        "",
        f"## Toy: `pbridge train toy` (default preset, {config.train.steps:,} SVI steps, "
        f"batch {config.train.batch_size})",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, pyro {pyro.__version__}. Produced by "
        "`python benchmarks/toy.py`; wall time is the whole command (imports, training, "
        "scoring, plots) in a fresh process.",
        "",
        "| seed | transition accuracy, sampled codes | most probable codes | codes used | "
        "held-out ELBO (nats/walk) | train s | wall s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['seed']} | {r['transition_accuracy_sampled_zq']:.4f} | "
            f"{r['transition_accuracy']:.4f} | {r['codes_used']} | "
            f"{r['elbo']:.2f} ± {r['elbo_stderr']:.2f} | {r['train_seconds']:.1f} | "
            f"{r['wall_seconds']:.1f} |"
        )
    lines += [
        "",
        "## Pyro overhead per SVI step (same variant, same batch, measured side by side)",
        "",
        "| loss | ms / step (forward + backward + Adam) |",
        "|---|---:|",
        f"| Pyro `Trace_ELBO` (model/guide) | {ms_pyro:.2f} |",
        f"| bare torch, same terms | {ms_torch:.2f} |",
        f"| ratio Pyro / torch | {ms_pyro / ms_torch:.2f} |",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
