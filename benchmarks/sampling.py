"""Few-step samplers against the PixelCNN prior, on the same frozen VQ-VAE codes, in one run.

    python benchmarks/sampling.py --bridge runs/baselines/two-stage \\
        --pixelcnn runs/baselines/pixelcnn

Both runs must share their VQ-VAE (``benchmarks/baselines.py`` trains the two with the same
seed and stage-one steps, so they do). For every sampler and step count: network evaluations,
wall time per image at batch 1 and at batch ``--num``, and FD-FMNIST of the ``--num`` samples
against the test split. Writes docs/sampling.md and docs/images/sampling-fd-vs-time.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from pbridge.checkpoint import load_checkpoint  # noqa: E402
from pbridge.codebook import gather_codes  # noqa: E402
from pbridge.data import load_images  # noqa: E402
from pbridge.feature_distance import fd_fmnist, load_classifier  # noqa: E402
from pbridge.inference.load import load_run  # noqa: E402
from pbridge.inference.sampling import sample_posterior, sample_prior  # noqa: E402
from pbridge.samplers import (  # noqa: E402
    ANCESTRAL,
    CountingDenoiser,
    SamplerSettings,
    encode_ode,
    reverse_sample,
)

STEPS = (50, 25, 10)
SAMPLERS = (
    ("respaced", {"ddim_eta": 0.0}, "DDIM (respaced, eta = 0)"),
    ("respaced", {"ddim_eta": 1.0}, "respaced ancestral (eta = 1)"),
    ("sde", {"method": "euler"}, "reverse SDE, Euler-Maruyama"),
    ("ode", {"method": "midpoint"}, "probability-flow ODE, midpoint"),
)


def _shared_vqvae(bridge_run: Path, pixelcnn_run: Path) -> bool:
    a = load_checkpoint(bridge_run / "checkpoint.pt")["model"]
    b = load_checkpoint(pixelcnn_run / "checkpoint.pt")["model"]
    keys = [k for k in a if k.startswith(("encoder.", "decoder.", "codebook."))]
    return bool(keys) and all(k in b and torch.equal(a[k], b[k]) for k in keys)


def _timed(draw, num: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    x = draw(num)
    return x, (time.perf_counter() - start) / num


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bridge", required=True, help="a bridge run (two-stage)")
    parser.add_argument("--pixelcnn", required=True, help="a PixelCNN run on the same VQ-VAE")
    parser.add_argument("--num", type=int, default=256, help="batch size and FD sample count")
    parser.add_argument("--single", type=int, default=3, help="batch-1 draws timed per sampler")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--out", default="docs/sampling.md")
    parser.add_argument("--plot", default="docs/images/sampling-fd-vs-time.png")
    args = parser.parse_args()

    bridge_run, pixelcnn_run = Path(args.bridge), Path(args.pixelcnn)
    if not _shared_vqvae(bridge_run, pixelcnn_run):
        raise SystemExit(f"{bridge_run} and {pixelcnn_run} do not share their VQ-VAE")
    bridge = load_run(bridge_run, device="cpu").variant
    pixelcnn = load_run(pixelcnn_run, device="cpu").variant
    bridge.denoiser = CountingDenoiser(bridge.denoiser)
    test_x = load_images("fashion-mnist", "test").as_float()
    net = load_classifier()
    torch.manual_seed(0)
    pyro.set_rng_seed(0)

    def measure(variant, label: str, evaluations_of, sampler=ANCESTRAL) -> dict:
        def draw(n: int) -> torch.Tensor:
            return sample_prior(variant, n, sampler).x_mean

        _, single = _timed(lambda n: torch.cat([draw(1) for _ in range(n)]), args.single)
        before = evaluations_of()
        x, batched = _timed(draw, args.num)
        row = {
            "label": label,
            "evaluations": evaluations_of() - before,
            "single": single,
            "batched": batched,
            "fd": fd_fmnist(x, test_x, net),
        }
        print(row, flush=True)
        return row

    rows = []
    with pyro.validation_enabled(False):
        grid = pixelcnn.latent_shape[1] * pixelcnn.latent_shape[2]
        rows.append(measure(pixelcnn, "PixelCNN (one pass per cell)", lambda: 0))
        rows[-1]["evaluations"] = grid
        calls = lambda: bridge.denoiser.calls  # noqa: E731
        for name, options, label in SAMPLERS:
            for steps in args.steps:
                sampler = SamplerSettings(name, sample_steps=steps, **options)
                rows.append(measure(bridge, f"{label}, {steps} steps", calls, sampler))
        round_trip = _ode_round_trip(bridge, test_x[:64])
    train_x = load_images("fashion-mnist", "train").as_float()[: args.num]
    floor = fd_fmnist(train_x, test_x, net)
    _write(args, rows, floor, round_trip)


@torch.no_grad()
def _ode_round_trip(bridge, x: torch.Tensor, steps: int = 100) -> dict:
    """Encode the guide's codes of test images (z^0 = e_k) to z^T with the probability-flow ODE
    and run it back to z^1: the fraction of latent cells whose read-out's most probable code is
    the original one, and the relative error of z^1 against the start of the encoding."""
    codes = sample_posterior(bridge, x).codes
    z0 = gather_codes(codes, bridge.codebook())
    schedule, denoiser = bridge.schedule, bridge.chain_denoiser()
    ode = SamplerSettings("ode", sample_steps=steps, method="midpoint")
    z_T = encode_ode(schedule, denoiser, z0, ode)
    back = reverse_sample(schedule, denoiser, z_T, ode, to_time=1)
    start = schedule.z_star + float(schedule.abar[1]) ** 0.5 * (z0 - schedule.z_star)
    same = bridge.readout_logits(back).argmax(-1) == codes
    return {
        "steps": steps,
        "codes_kept": float(same.float().mean()),
        "relative_error": float((back - start).norm() / start.norm()),
    }


def _write(args, rows: list[dict], floor: float, round_trip: dict) -> None:
    pixel = rows[0]
    lines = [
        "# Sampling speed: few-step bridge samplers against the PixelCNN prior",
        "",
        f"Produced by `python benchmarks/sampling.py --bridge {args.bridge} --pixelcnn "
        f"{args.pixelcnn}` on {platform.machine()} (CPU, "
        f"{os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())} torch thread(s)), all rows "
        "in one run. The two runs share one frozen VQ-VAE, so both priors produce the same kind "
        "of codes for the same decoder. Speed-up = PixelCNN time per image / this row's. The "
        "bridge is the tight formulation (docs/maths.md s. 6): its head is self-conditioned, "
        "so every step costs two network evaluations, and its codes are read out at z^1.",
        "",
        f"FD-FMNIST of {args.num} samples (decoder means) against the 10,000 test images; "
        f"{args.num} training images score {floor:.1f} (the floor at this sample size).",
        "",
        "| prior / sampler | network evaluations | s/image, batch 1 | s/image, batch "
        f"{args.num} | speed-up, batch 1 | speed-up, batch {args.num} | FD-FMNIST |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['evaluations']} | {r['single']:.4f} | {r['batched']:.4f} | "
            f"{pixel['single'] / r['single']:.1f}x | {pixel['batched'] / r['batched']:.1f}x | "
            f"{r['fd']:.1f} |"
        )
    lines += [
        "",
        f"Probability-flow ODE round trip (midpoint, {round_trip['steps']} steps each way, 64 "
        "test images): e_k -> z^T -> z^1 keeps the read-out's most probable code of "
        f"{100 * round_trip['codes_kept']:.1f}% of latent cells, relative error "
        f"{round_trip['relative_error']:.3f}.",
        "",
        f"![FD-FMNIST against time per image](images/{Path(args.plot).name})",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in {r["label"].rsplit(",", 1)[0] for r in rows}:
        mine = [r for r in rows if r["label"].rsplit(",", 1)[0] == label]
        ax.plot([r["batched"] for r in mine], [r["fd"] for r in mine], "o-", label=label)
    ax.axhline(floor, color="grey", linestyle=":", label="training images")
    ax.set_xscale("log")
    ax.set_xlabel(f"seconds per image (batch {args.num}, CPU)")
    ax.set_ylabel("FD-FMNIST (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
