"""The ``pbridge`` command line.

pbridge train DATASET --out RUN_DIR [--steps N] [--seed S] [--device auto|cpu|cuda]
              [--preset small|paper] [--variant end-to-end|two-stage|pixelcnn|vqvae]
              [--codebook gradient|ema] [--restart-dead-codes U] [--resume]
              [--devices N [--nodes M --rdzv-endpoint HOST:PORT]]
pbridge train path/to/variant.py --out RUN_DIR [--steps N] [--seed S] [--resume] ...
pbridge sample RUN_DIR [--num N] [--sampler ancestral|respaced|sde|ode] [--steps S]
pbridge evaluate RUN_DIR [--items N] [--samples N] [--fd-draws N] [--patch-items N]
                 [--patch-draws N] [--sampler ...] [--steps S]
pbridge analyze RUN_DIR [--num N] [--items N] [--seed S] [--sampler ...] [--steps S]

docs/cli.md describes every command and option.

Exit status: 0 done, 2 bad input, 128 + signal number when stopped by SIGINT/SIGTERM (a
checkpoint was written first).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

__all__ = ["main"]

from pbridge.data import DATASETS as IMAGE_DATASETS

DATASETS = ("toy", *IMAGE_DATASETS)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbridge",
        description="Diffusion-bridge VQ-VAE: train end to end with Pyro SVI, sample, score.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train a variant end to end and write a run directory",
        description="Train end to end; writes config.json, checkpoint.pt, metrics.json and plots. "
        "DATASET may be a variant file path/to/variant.py defining build(config) (and CONFIG): "
        "see docs/tutorial-variant.md.",
    )
    train.add_argument(
        "dataset",
        help=f"what to train on: one of {', '.join(DATASETS)}, or a variant file ending in .py",
    )
    train.add_argument("--out", required=True, help="run directory to write")
    train.add_argument("--steps", type=_positive_int, help="SVI steps (default: the preset's)")
    train.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    train.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    train.add_argument(
        "--latent-warmup",
        type=int,
        help="steps of linear warm-up of the latent (KL and prior) terms (default: the preset's)",
    )
    train.add_argument(
        "--autocast",
        action="store_true",
        default=None,
        help="mixed precision: bfloat16 autocast of the networks (for GPUs)",
    )
    train.add_argument(
        "--preset", choices=("small", "paper"), help="image network sizes (default: small)"
    )
    train.add_argument(
        "--variant",
        choices=("end-to-end", "two-stage", "pixelcnn", "vqvae"),
        help="image variant: the joint model (default); a VQ-VAE then the bridge on its frozen "
        "encodings; a VQ-VAE then a PixelCNN prior on its frozen codes; the VQ-VAE alone "
        "(uniform prior)",
    )
    train.add_argument(
        "--codebook",
        choices=("gradient", "ema"),
        help="VQ-VAE codebook: codebook loss (default) or exponential moving averages",
    )
    train.add_argument(
        "--restart-dead-codes",
        type=float,
        metavar="U",
        help="VQ-VAE: move codes used by fewer than U cells per batch (moving average) onto "
        "encodings of the batch",
    )
    train.add_argument(
        "--vqvae-steps",
        type=_positive_int,
        help="two-stage and pixelcnn variants: steps of the VQ-VAE stage (default: the preset's)",
    )
    train.add_argument("--root", help="data folder (default: $PBRIDGE_DATA or ~/.cache/pbridge)")
    train.add_argument(
        "--download", action="store_true", help="download the data set with torchvision"
    )
    train.add_argument(
        "--devices",
        type=_positive_int,
        default=1,
        help="data-parallel processes per machine (one per GPU; gloo on CPU), via torchrun",
    )
    train.add_argument(
        "--nodes", type=_positive_int, default=1, help="machines in the job (needs --rdzv-endpoint)"
    )
    train.add_argument(
        "--rdzv-endpoint", help="HOST:PORT of the rendezvous, the same on every machine"
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument(
        "--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt if present"
    )

    sample = sub.add_parser(
        "sample",
        help="draw prior samples from a trained run",
        description="Draw prior samples (Algorithm 2); writes samples.pt and samples.png.",
    )
    sample.add_argument("run_dir", help="a run directory written by `pbridge train`")
    sample.add_argument("--num", type=_positive_int, default=1000, help="number of samples")
    sample.add_argument("--seed", type=int, default=0, help="random seed")
    sample.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_sampler_options(sample)

    evaluate = sub.add_parser(
        "evaluate",
        help="score a trained image run under the common protocol",
        description="Bits/dim, masked-patch bits per latent cell, FD-FMNIST, codebook usage and "
        "sampling time on the test split; writes eval.json, eval.md and inpainting.png "
        "(docs/evaluation.md).",
    )
    evaluate.add_argument("run_dir", help="an image run directory written by `pbridge train`")
    evaluate.add_argument("--items", type=_positive_int, default=1000, help="images for bits/dim")
    evaluate.add_argument(
        "--chain-steps",
        type=_positive_int,
        default=100,
        help="bridge: stratified chain steps per image in the bound (tight: 1..T-1, beside the "
        "exact read-out step; paper formulation: must divide T)",
    )
    evaluate.add_argument(
        "--samples", type=_positive_int, default=500, help="prior samples per FD-FMNIST figure"
    )
    evaluate.add_argument(
        "--fd-draws",
        type=_positive_int,
        default=3,
        help="independent sets of --samples prior samples (FD-FMNIST: mean and standard error)",
    )
    evaluate.add_argument(
        "--patch-items", type=_positive_int, default=64, help="images for the masked-patch NLL"
    )
    evaluate.add_argument(
        "--patch-draws", type=_positive_int, default=4, help="inpainting draws per image"
    )
    _add_draw_options(evaluate)

    analyze = sub.add_parser(
        "analyze",
        help="prior and posterior draws of a trained run as arviz InferenceData, with plots",
        description="Prior, posterior and predictive draws with the test items and the training "
        "loss, as arviz InferenceData in analysis.nc; analysis_summary.csv (az.summary) and "
        "reverse_chain.png, code_usage.png, code_entropy.png, elbo_trace.png (docs/analysis.md).",
    )
    analyze.add_argument("run_dir", help="a run directory written by `pbridge train`")
    analyze.add_argument(
        "--num", type=_positive_int, default=16, help="prior draws, and guide draws per item"
    )
    analyze.add_argument(
        "--items", type=_positive_int, default=8, help="test items for the posterior"
    )
    _add_draw_options(analyze)
    return parser


def _add_draw_options(parser: argparse.ArgumentParser) -> None:
    """Seed, sampler, device and data folder of the commands that draw from a trained run and
    read its test split."""
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    _add_sampler_options(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--root", help="data folder (default: $PBRIDGE_DATA or ~/.cache/pbridge)")


def _add_sampler_options(parser: argparse.ArgumentParser) -> None:
    from pbridge.samplers import ODE_METHODS, SAMPLERS, SDE_METHODS

    parser.add_argument(
        "--sampler",
        default="ancestral",
        choices=SAMPLERS,
        help="bridge: the T-step chain; DDIM-style respaced steps; reverse-time SDE; "
        "probability-flow ODE (torchsde)",
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        help="bridge: sampling steps (default T; sde/ode without it: adaptive steps)",
    )
    parser.add_argument(
        "--eta", type=float, help="respaced: DDIM noise fraction in [0, 1] (default 1)"
    )
    parser.add_argument(
        "--method",
        choices=sorted(set(SDE_METHODS) | set(ODE_METHODS)),
        help=f"sde: one of {', '.join(SDE_METHODS)}; ode: one of {', '.join(ODE_METHODS)}",
    )


def _sampler_options(args: argparse.Namespace) -> dict:
    options = {"sampler": args.sampler, "steps": args.steps, "eta": args.eta, "method": args.method}
    return {k: v for k, v in options.items() if v is not None or k == "steps"}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 / 143 stopped by
    SIGINT / SIGTERM after writing a checkpoint)."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    from pbridge.checkpoint import CorruptCheckpointError
    from pbridge.data import UnreadableDataError
    from pbridge.inference.svi import TrainingInterrupted

    try:
        launch = args.command == "train" and (args.devices > 1 or args.nodes > 1)
        if launch and "WORLD_SIZE" not in os.environ:
            return _launch_data_parallel(args, argv)
        return _run(args)
    except TrainingInterrupted as stopped:
        print(f"pbridge: {stopped}; continue with --resume", file=sys.stderr)
        return 128 + signal.Signals.__members__.get(stopped.signal_name, signal.SIGTERM).value
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        UnreadableDataError,
        CorruptCheckpointError,
    ) as err:
        print(f"pbridge: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


def _launch_data_parallel(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this same command under ``torchrun`` with ``--devices`` processes per machine."""
    if args.nodes > 1 and not args.rdzv_endpoint:
        raise ValueError(f"--nodes {args.nodes} needs --rdzv-endpoint HOST:PORT")
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(args.devices),
    ]
    if args.nodes > 1:
        launcher += ["--nnodes", str(args.nodes), "--rdzv-backend", "c10d"]
        launcher += ["--rdzv-endpoint", args.rdzv_endpoint, "--rdzv-id", "pbridge"]
    else:
        launcher.append("--standalone")
    inner = _without_launch_options(argv)
    return subprocess.run([*launcher, "-m", "pbridge.cli", *inner], check=False).returncode


def _without_launch_options(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in ("--devices", "--nodes", "--rdzv-endpoint"):
            skip = True
        elif not item.startswith(("--devices=", "--nodes=", "--rdzv-endpoint=")):
            kept.append(item)
    return kept


def _run(args: argparse.Namespace) -> int:
    from pbridge.inference.images import run_images, sample_image_run
    from pbridge.inference.toy import run_toy, sample_toy_run
    from pbridge.presets import ToyConfig, image_preset

    if args.command == "train" and args.dataset.endswith(".py"):
        metrics = _train_variant_file(args)
    elif args.command == "train":
        if args.dataset not in DATASETS:
            print(
                f"pbridge: unknown dataset {args.dataset!r}; expected one of {', '.join(DATASETS)}",
                file=sys.stderr,
            )
            return 2
        overrides = _train_overrides(args)
        progress = not args.no_progress
        if args.dataset == "toy":
            config = ToyConfig()
            config = replace(config, train=replace(config.train, **overrides))
            metrics = run_toy(config, args.out, args.device, progress, resume=args.resume)
        else:
            config = image_preset(args.dataset, args.preset or "small")
            variant = args.variant or "end-to-end"
            config = replace(config, variant=variant, train=replace(config.train, **overrides))
            vqvae_options = {
                "vqvae_steps": args.vqvae_steps,
                "vqvae_codebook": args.codebook,
                "restart_dead_codes": args.restart_dead_codes,
            }
            config = replace(config, **{k: v for k, v in vqvae_options.items() if v is not None})
            metrics = run_images(
                config,
                args.out,
                args.device,
                progress,
                root=args.root,
                download=args.download,
                resume=args.resume,
            )
    elif args.command == "evaluate":
        from pbridge.inference.evaluate import EvalSettings, evaluate_run

        settings = EvalSettings(
            bpd_items=args.items,
            chain_steps=args.chain_steps,
            num_samples=args.samples,
            fd_draws=args.fd_draws,
            patch_items=args.patch_items,
            patch_draws=args.patch_draws,
            seed=args.seed,
        )
        metrics = evaluate_run(
            args.run_dir, settings, args.device, args.root, **_sampler_options(args)
        )
    elif args.command == "analyze":
        from pbridge.inference.analysis import analyze_run

        metrics = analyze_run(
            args.run_dir,
            args.num,
            args.items,
            args.seed,
            args.device,
            args.root,
            **_sampler_options(args),
        )
    else:
        config_file = Path(args.run_dir) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{args.run_dir} is not a run directory: no config.json")
        is_image_run = "dataset" in json.loads(config_file.read_text())
        sample_run = sample_image_run if is_image_run else sample_toy_run
        metrics = sample_run(
            args.run_dir, args.num, device=args.device, seed=args.seed, **_sampler_options(args)
        )
    if metrics:  # empty on the processes of a data-parallel job other than the first
        print(json.dumps(metrics, indent=2))
    return 0


def _train_overrides(args: argparse.Namespace) -> dict:
    given = {
        "steps": args.steps,
        "seed": args.seed,
        "latent_warmup": args.latent_warmup,
        "autocast": args.autocast,
    }
    return {k: v for k, v in given.items() if v is not None}


def _train_variant_file(args: argparse.Namespace) -> dict:
    """``pbridge train path/to/variant.py``: the file's build(config) and CONFIG; the options
    of the built-in image variants do not apply."""
    from pbridge.inference.user_variant import run_user_variant

    built_in = {
        "--preset": args.preset,
        "--variant": args.variant,
        "--codebook": args.codebook,
        "--restart-dead-codes": args.restart_dead_codes,
        "--vqvae-steps": args.vqvae_steps,
    }
    given = [name for name, value in built_in.items() if value is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} do not apply to a variant file ({args.dataset}): set them in "
            "its CONFIG"
        )
    return run_user_variant(
        args.dataset,
        args.out,
        args.device,
        not args.no_progress,
        _train_overrides(args),
        root=args.root,
        download=args.download,
        resume=args.resume,
    )


if __name__ == "__main__":
    sys.exit(main())
