"""The ``pbridge`` command line.

pbridge train toy --out RUN_DIR [--steps N] [--seed S] [--device auto|cpu|cuda]
pbridge sample RUN_DIR [--num N]
"""

from __future__ import annotations

import argparse
import json
import signal
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
        description="Train end to end; writes config.json, checkpoint.pt, metrics.json and plots.",
    )
    train.add_argument("dataset", help=f"what to train on: one of {', '.join(DATASETS)}")
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
        "--preset", default="small", choices=("small", "paper"), help="image network sizes"
    )
    train.add_argument(
        "--variant",
        default="end-to-end",
        choices=("end-to-end", "two-stage"),
        help="image variant: the joint model, or a VQ-VAE then the bridge on frozen encodings",
    )
    train.add_argument(
        "--vqvae-steps",
        type=_positive_int,
        help="two-stage variant: steps of the VQ-VAE stage (default: the preset's)",
    )
    train.add_argument("--root", help="data folder (default: $PBRIDGE_DATA or ~/.cache/pbridge)")
    train.add_argument(
        "--download", action="store_true", help="download the data set with torchvision"
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 / 143 stopped by
    SIGINT / SIGTERM after writing a checkpoint)."""
    args = _parser().parse_args(argv)
    from pbridge.checkpoint import CorruptCheckpointError
    from pbridge.data import UnreadableDataError
    from pbridge.inference.svi import TrainingInterrupted

    try:
        return _run(args)
    except TrainingInterrupted as stopped:
        print(f"pbridge: {stopped}; continue with --resume", file=sys.stderr)
        return 128 + signal.Signals[stopped.signal_name].value
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        UnreadableDataError,
        CorruptCheckpointError,
    ) as err:
        print(f"pbridge: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from pbridge.inference.images import run_images, sample_image_run
    from pbridge.inference.toy import run_toy, sample_toy_run
    from pbridge.presets import ToyConfig, image_preset

    if args.command == "train":
        if args.dataset not in DATASETS:
            print(
                f"pbridge: unknown dataset {args.dataset!r}; expected one of {', '.join(DATASETS)}",
                file=sys.stderr,
            )
            return 2
        given = {
            "steps": args.steps,
            "seed": args.seed,
            "latent_warmup": args.latent_warmup,
            "autocast": args.autocast,
        }
        overrides = {k: v for k, v in given.items() if v is not None}
        progress = not args.no_progress
        if args.dataset == "toy":
            config = ToyConfig()
            config = replace(config, train=replace(config.train, **overrides))
            metrics = run_toy(config, args.out, args.device, progress, resume=args.resume)
        else:
            config = image_preset(args.dataset, args.preset)
            config = replace(config, variant=args.variant, train=replace(config.train, **overrides))
            if args.vqvae_steps is not None:
                config = replace(config, vqvae_steps=args.vqvae_steps)
            metrics = run_images(
                config,
                args.out,
                args.device,
                progress,
                root=args.root,
                download=args.download,
                resume=args.resume,
            )
    else:
        config_file = Path(args.run_dir) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{args.run_dir} is not a run directory: no config.json")
        is_image_run = "dataset" in json.loads(config_file.read_text())
        sample_run = sample_image_run if is_image_run else sample_toy_run
        metrics = sample_run(args.run_dir, args.num, device=args.device, seed=args.seed)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
