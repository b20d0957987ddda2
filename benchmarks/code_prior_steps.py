"""What the number of steps T costs in the tight bound: the bridge prior fitted to Markov codes
of known entropy rate (docs/codes.md's path: ``pbridge.train`` on a ``BridgeCodeModel``) at
T = 100, 250 and 1000, the same network, data and SVI steps for each; the held-out bound
against the exact entropy. Writes its table between the markers of docs/maths.md.

    OMP_NUM_THREADS=1 python benchmarks/code_prior_steps.py

The codes: sequences of 16 cells over 64 codes, a uniform first code, then a step of -2, -1,
+1 or +2 (mod 64) with probability 1/4 each: exact entropy (6 + 15 x 2) / 16 = 2.25 bits per
cell; the unigram entropy is 6. The codebook: 64 fixed random directions on the unit sphere of
R^8. Each T is a schedule of ``pbridge.image_schedule(T, ...)`` with the DDPM betas scaled so
that abar_T is the same (about 4e-5) for every T.
"""

from __future__ import annotations

import argparse
import math

import torch
from doc_section import write_section

import pbridge

K, CELLS, DIM = 64, 16, 8
ENTROPY = (math.log2(K) + (CELLS - 1) * 2.0) / CELLS
SECTION = "code-prior-steps"
"""The section of ``--doc`` this benchmark writes (:mod:`doc_section`)."""


def markov_codes(n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, CELLS)`` int64: a uniform first code, then steps of -2, -1, +1, +2 (mod K)."""
    first = torch.randint(0, K, (n, 1), generator=generator)
    steps = torch.tensor([-2, -1, 1, 2])[torch.randint(0, 4, (n, CELLS - 1), generator=generator)]
    return torch.cat([first, first + steps.cumsum(1)], 1) % K


def schedule(num_steps: int) -> pbridge.OUSchedule:
    """DDPM betas linear from 1e-4 to 0.02, scaled by 1000 / T: abar_T alike for every T."""
    scale = 1000 / num_steps
    return pbridge.image_schedule(num_steps, 1e-4 * scale, 0.02 * scale)


def run(num_steps: int, steps: int, items: int) -> dict:
    torch.manual_seed(0)
    codebook = torch.nn.functional.normalize(
        torch.randn(K, DIM, generator=torch.Generator().manual_seed(0)), dim=1
    )
    network = pbridge.build_chain_network(DIM, K, (CELLS,), width=256, blocks=3)
    model = pbridge.BridgeCodeModel(codebook, network, schedule(num_steps), (CELLS,))
    data = markov_codes(20_000, torch.Generator().manual_seed(0))
    settings = pbridge.TrainSettings(steps=steps, batch_size=128, lr=2e-3, seed=0)
    result = pbridge.train(model, data, settings, progress=False)
    result.use_ema(model)
    model.eval()
    held_out = markov_codes(items, torch.Generator().manual_seed(1))
    bits = model.bound_bits_per_cell(held_out, strata=100)
    prior_kl = model.schedule.prior_kl(codebook[held_out].movedim(-1, 1))
    return {
        "T": num_steps,
        "bits": float(bits.mean()),
        "stderr": float(bits.std()) / math.sqrt(items),
        "prior_kl": float(prior_kl.mean()) / (math.log(2) * CELLS),
        "abar_T": float(model.schedule.abar_at(torch.tensor([num_steps]), codebook[:1])),
    }


def table(rows: list[dict], steps: int, items: int) -> str:
    lines = [
        "Produced by `OMP_NUM_THREADS=1 python benchmarks/code_prior_steps.py` (sequences of "
        f"{CELLS} cells over {K} codes, exact entropy {ENTROPY:.3f} bits per cell, unigram "
        f"{math.log2(K):.0f}; {steps:,} SVI steps of 128 for every T; the bound on {items:,} "
        "held-out sequences with the read-out and 100 stratified steps; bits per cell):",
        "",
        "| T | abar_T | bound | bound minus the entropy | of which L_T | network calls per draw |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['T']} | {r['abar_T']:.1e} | {r['bits']:.3f} ± {r['stderr']:.3f} "
            f"| {r['bits'] - ENTROPY:+.3f} | {r['prior_kl']:.4f} | {r['T']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="SVI steps for every T")
    parser.add_argument("--items", type=int, default=1000, help="held-out sequences")
    parser.add_argument("--doc", default="docs/maths.md")
    args = parser.parse_args()
    rows = []
    for num_steps in (100, 250, 1000):
        rows.append(run(num_steps, args.steps, args.items))
        print(rows[-1], flush=True)
    write_section(args.doc, SECTION, table(rows, args.steps, args.items))


if __name__ == "__main__":
    main()
