"""The ``pbridge`` command line.

pbridge train DATASET --out RUN_DIR [--steps N] [--seed S] [--device auto|cpu|cuda]
              [--preset small|paper] [--variant end-to-end|two-stage|pixelcnn|vqvae]
              [--codebook gradient|ema] [--restart-dead-codes U]
              [--overwrite | --resume [--steps N --extend-steps]]
              [--devices N [--nodes M --rdzv-endpoint HOST:PORT]]
pbridge train path/to/variant.py --out RUN_DIR [--steps N] [--seed S] [--resume] ...
pbridge sample RUN_DIR [--num N] [--sampler ancestral|respaced|sde|ode] [--steps S]
pbridge evaluate RUN_DIR [--items N] [--samples N] [--fd-draws N] [--patch-items N]
                 [--patch-draws N] [--sampler ...] [--steps S]
pbridge analyze RUN_DIR [--num N] [--items N] [--seed S] [--sampler ...] [--steps S]

docs/cli.md describes every command and option.

Every command checks its inputs before it writes anything, so a command that refuses leaves
the run directory as it was. Exit status: 0 done; 2 bad input, or a failure named in one line;
128 + signal number when stopped by SIGINT/SIGTERM (in training, after writing a checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

__all__ = ["main"]

from pbridge.data import DATASETS as IMAGE_DATASETS

DATASETS = ("toy", *IMAGE_DATASETS)


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..2**32 - 1, got {value}")
    return value


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
    train.add_argument("--seed", type=_seed, help="random seed (default: the preset's)")
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
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR with its own config.json, from its newest checkpoint; "
        "flags given with it must match the run's",
    )
    train.add_argument(
        "--extend-steps",
        action="store_true",
        help="with --resume --steps N: train the run on to N steps (more than it had); the "
        "cosine learning-rate schedule is then recomputed for N steps, so the result differs "
        "from a run trained for N steps from the start",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in RUN_DIR: its checkpoints, samples and scores are deleted",
    )

    sample = sub.add_parser(
        "sample",
        help="draw prior samples from a trained run",
        description="Draw prior samples (Algorithm 2); writes samples.pt and samples.png.",
    )
    sample.add_argument("run_dir", help="a run directory written by `pbridge train`")
    sample.add_argument("--num", type=_positive_int, default=1000, help="number of samples")
    sample.add_argument("--seed", type=_seed, default=0, help="random seed")
    sample.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_sampler_options(sample)
    _add_weights_option(sample)

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
        help="bridge: stratified chain steps per image in the bound (tight: beside the read-out "
        "step, at most T - 1 used; paper formulation: must divide T)",
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
    parser.add_argument("--seed", type=_seed, default=0, help="random seed")
    _add_sampler_options(parser)
    _add_weights_option(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--root", help="data folder (default: $PBRIDGE_DATA or ~/.cache/pbridge)")


def _add_weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        choices=("ema", "raw"),
        help="the EMA of the trained weights or the raw weights (default: ema when the "
        "checkpoint holds them, else raw)",
    )


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
    """Run the command line; returns the exit status (0 ok, 2 bad input or a failure named in
    one line, 130 / 143 stopped by SIGINT / SIGTERM)."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    from torch import OutOfMemoryError

    from pbridge.checkpoint import CorruptCheckpointError
    from pbridge.inference.svi import TrainingInterrupted

    with warnings.catch_warnings():  # pbridge's warnings as one line each
        warnings.filterwarnings("always", module=r"pbridge\.")
        warnings.showwarning = _one_line_warning
        try:
            launch = args.command == "train" and (args.devices > 1 or args.nodes > 1)
            if launch and "WORLD_SIZE" not in os.environ:
                _check_train(args)
                return _launch_data_parallel(args, argv)
            return _run(args)
        except TrainingInterrupted as stopped:
            print(f"pbridge: {stopped}; continue with --resume", file=sys.stderr)
            return 128 + signal.Signals.__members__.get(stopped.signal_name, signal.SIGTERM).value
        except KeyboardInterrupt:
            print(f"pbridge: {args.command} stopped by SIGINT (Ctrl-C)", file=sys.stderr)
            return 128 + signal.SIGINT
        except (
            ValueError,
            TypeError,
            OSError,  # missing or unreadable files, permissions, a full disk
            CorruptCheckpointError,
            FloatingPointError,
            MemoryError,
            OutOfMemoryError,  # CUDA's
        ) as err:
            print(f"pbridge: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
            return 2
        except RuntimeError as err:
            if "can't allocate memory" not in str(err):  # torch's CPU allocator; else a bug
                raise
            print(f"pbridge: out of memory: {_one_line(err)}", file=sys.stderr)
            return 2


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line, without the trace shapes Pyro appends to errors
    raised inside a model."""
    text = re.split(r"\n\s*Trace Shapes:", str(err))[0].strip()
    return " ".join(line.strip() for line in text.splitlines()) or repr(err)


def _warn(message: object) -> None:
    print(f"pbridge: warning: {message}", file=sys.stderr)


def _one_line_warning(message, category, *args, **kwargs) -> None:
    _warn(message)


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
    if args.command == "train":
        metrics = _train(args)
    elif args.command == "evaluate":
        metrics = _evaluate(args)
    elif args.command == "analyze":
        from pbridge.inference.analysis import analyze_run

        _check_drawing(args)
        metrics = analyze_run(
            args.run_dir,
            args.num,
            args.items,
            args.seed,
            args.device,
            args.root,
            args.weights,
            **_sampler_options(args),
        )
    else:
        from pbridge.inference.images import sample_image_run
        from pbridge.inference.toy import sample_toy_run

        kind = _check_drawing(args)
        sample_run = sample_toy_run if kind == "toy" else sample_image_run
        metrics = sample_run(
            args.run_dir,
            args.num,
            device=args.device,
            seed=args.seed,
            weights=args.weights,
            **_sampler_options(args),
        )
    if metrics:  # empty on the processes of a data-parallel job other than the first
        print(json.dumps(metrics, indent=2))
    return 0


def _check_drawing(args: argparse.Namespace) -> str:
    """Up-front checks of sample / evaluate / analyze: the run directory, its config.json, the
    sampler options and that the directory can be written; returns the run's kind."""
    from pbridge.inference.run_dir import check_writable, read_config, run_kind
    from pbridge.inference.sampling import check_sampler_options

    check_sampler_options(args.sampler, args.steps, args.eta, args.method)
    kind = run_kind(args.run_dir)
    config = read_config(args.run_dir)
    num_steps = config.get("num_steps")
    if kind != "variant-file" and isinstance(num_steps, int):
        check_sampler_options(args.sampler, args.steps, args.eta, args.method, num_steps)
        chain_steps = getattr(args, "chain_steps", None)
        tight = config.get("bridge", {}).get("formulation", "tight") == "tight"
        if chain_steps is not None and not tight and num_steps % chain_steps:
            raise ValueError(f"--chain-steps {chain_steps} must divide the chain's T = {num_steps}")
    draws = args.samples * args.fd_draws if args.command == "evaluate" else args.num
    _check_memory(config, kind, draws, args.device)
    check_writable(args.run_dir)
    return kind


def _check_memory(config: dict, kind: str, num: int, device: str) -> None:
    """``num`` prior draws of the run fit in memory, estimated from its config.json (a variant
    file's shapes are known only once it is built: checked then)."""
    from pbridge.inference.sampling import check_memory_for_draws
    from pbridge.inference.svi import resolve_device

    try:
        d, k = int(config["latent_dim"]), int(config["num_codes"])
        if kind == "toy":
            length = int(config["length"])
            data, latent = (2, length), (d, length)
        elif kind == "image":
            channels, height, width = IMAGE_DATASETS[config["dataset"]]
            scale = 2 ** int(config["downsamples"])
            data, latent = (channels, height, width), (d, height // scale, width // scale)
        else:
            return
    except (KeyError, TypeError, ValueError):
        return  # a config.json that does not read is named when the run is loaded
    check_memory_for_draws(num, data, latent, k, resolve_device(device))


def _evaluate(args: argparse.Namespace) -> dict:
    from pbridge.inference.evaluate import EvalSettings, evaluate_run
    from pbridge.inference.toy import evaluate_toy_run

    settings = EvalSettings(
        bpd_items=args.items,
        chain_steps=args.chain_steps,
        num_samples=args.samples,
        fd_draws=args.fd_draws,
        patch_items=args.patch_items,
        patch_draws=args.patch_draws,
        seed=args.seed,
    )
    kind = _check_drawing(args)
    if kind == "variant-file":
        from pbridge.inference.user_variant import load_user_run

        variant = load_user_run(args.run_dir, "cpu", args.weights)[1]
        needed = ("inpaint", "encoder_scale") if hasattr(variant, "schedule") else ("inpaint",)
        missing = [name for name in needed if not hasattr(variant, name)]
        if missing:
            raise ValueError(
                f"the variant of {args.run_dir} ({type(variant).__name__}) has no "
                f"{', '.join(missing)}, which `pbridge evaluate` needs (masked-patch and chain "
                "figures); its metrics.json holds test bits/dim and codebook usage, and `pbridge "
                "analyze` works on it"
            )
    sampler = _sampler_options(args)
    if kind == "toy":
        return evaluate_toy_run(args.run_dir, settings, args.device, args.weights, **sampler)
    result = evaluate_run(args.run_dir, settings, args.device, args.root, args.weights, **sampler)
    bpd, stderr = result.get("test_bits_per_dim"), result.get("test_bits_per_dim_stderr")
    if bpd is not None and stderr is not None and stderr > abs(bpd) / 4:
        _warn(
            f"test bits/dim {bpd:.2f} +- {stderr:.2f}: noise dominates the estimate; raise "
            "--items (and --chain-steps) for a figure to compare"
        )
    return result


def _train(args: argparse.Namespace) -> dict:
    """``pbridge train``: every check first (flags, the run directory, a resumed run's config),
    then the run; a fresh run that fails before its first checkpoint leaves no directory."""
    from pbridge.inference.images import run_images
    from pbridge.inference.run_dir import is_run_dir
    from pbridge.inference.toy import run_toy
    from pbridge.inference.user_variant import run_user_variant

    config = _check_train(args)
    out, progress = Path(args.out), not args.no_progress
    existed, had_run = out.exists(), out.is_dir() and is_run_dir(out)
    options = {"resume": args.resume, "overwrite": args.overwrite}
    try:
        if args.dataset.endswith(".py"):
            return run_user_variant(
                args.dataset,
                out,
                args.device,
                progress,
                train_overrides=_train_overrides(args),
                root=args.root,
                download=args.download,
                config=config,
                **options,
            )
        if args.dataset == "toy":
            return run_toy(config, out, args.device, progress, **options)
        return run_images(
            config, out, args.device, progress, root=args.root, download=args.download, **options
        )
    except BaseException:  # Ctrl-C included
        if not had_run and out.is_dir() and not is_run_dir(out, checkpoints_only=True):
            _discard_failed_start(out, remove_folder=not existed)
        raise


def _discard_failed_start(out: Path, remove_folder: bool) -> None:
    """Remove what a new run wrote before failing without a checkpoint: nothing to resume."""
    from pbridge.inference.run_dir import RUN_FILES

    try:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        if remove_folder and not any(out.iterdir()):
            out.rmdir()
    except OSError:
        pass  # the error being raised says more


def _check_train(args: argparse.Namespace):
    """The config a ``train`` command will run, after checking its flags against each other,
    the run directory and (``--resume``) the run's own config.json; writes nothing."""
    from pbridge.inference.run_dir import check_out_dir

    variant_file = args.dataset.endswith(".py")
    if not variant_file and args.dataset not in DATASETS:
        raise ValueError(
            f"unknown dataset {args.dataset!r}; expected one of {', '.join(DATASETS)} or a "
            "variant file ending in .py"
        )
    if variant_file:
        _check_variant_file_flags(args)
    elif args.dataset == "toy":
        image_only = {
            "--preset": args.preset,
            "--variant": args.variant,
            "--codebook": args.codebook,
            "--restart-dead-codes": args.restart_dead_codes,
            "--vqvae-steps": args.vqvae_steps,
            "--root": args.root,
        }
        given = [name for name, value in image_only.items() if value is not None]
        if given or args.download:
            given += ["--download"] if args.download else []
            raise ValueError(f"{', '.join(given)} apply to image data sets, not to toy")
    if args.extend_steps and not (args.resume and args.steps):
        raise ValueError("--extend-steps goes with --resume and --steps N (the new total)")
    if os.environ.get("RANK", "0") == "0":  # the process that writes
        check_out_dir(args.out, args.resume, args.overwrite)
    if args.resume:
        return _resumed_config(args)
    if variant_file:
        return None  # the file's CONFIG with the overrides, read by run_user_variant
    return _fresh_config(args)


def _fresh_config(args: argparse.Namespace):
    from pbridge.config import ToyConfig, image_preset

    overrides = _train_overrides(args)
    if args.dataset == "toy":
        config = ToyConfig()
        return replace(config, train=replace(config.train, **overrides))
    config = image_preset(args.dataset, args.preset or "small")
    config = replace(
        config, variant=args.variant or "end-to-end", train=replace(config.train, **overrides)
    )
    vqvae_options = {
        "vqvae_steps": args.vqvae_steps,
        "vqvae_codebook": args.codebook,
        "restart_dead_codes": args.restart_dead_codes,
    }
    return replace(config, **{k: v for k, v in vqvae_options.items() if v is not None})


def _resumed_config(args: argparse.Namespace):
    """The run's own config.json; every flag given must match it, by name (``--steps`` may
    exceed it with ``--extend-steps``)."""
    from pbridge.checkpoint import load_latest_checkpoint
    from pbridge.config import ImageConfig, ToyConfig
    from pbridge.inference.run_dir import CHECKPOINT_FILE, config_from_dict, read_config, run_kind

    out = Path(args.out)
    data, kind = read_config(out), run_kind(out)
    asked = "variant-file" if args.dataset.endswith(".py") else "toy"
    if asked == "toy" and args.dataset != "toy":
        asked = "image"
    held = data.get("dataset", "toy") if kind != "variant-file" else "a variant file"
    if kind != asked or (kind == "image" and data.get("dataset") != args.dataset):
        raise ValueError(
            f"{out} holds a run on {held}, not {args.dataset}: --resume continues a run on its "
            "own data; check --out and DATASET"
        )
    cls = ToyConfig if kind == "toy" else ImageConfig
    config = config_from_dict(cls, data, str(out / "config.json"))
    given = {
        "--seed": (args.seed, config.train.seed),
        "--latent-warmup": (args.latent_warmup, config.train.latent_warmup),
        "--autocast": (args.autocast, config.train.autocast),
    }
    if kind == "image":
        given |= {
            "--preset": (args.preset, config.preset),
            "--variant": (args.variant, config.variant),
            "--codebook": (args.codebook, config.vqvae_codebook),
            "--restart-dead-codes": (args.restart_dead_codes, config.restart_dead_codes),
            "--vqvae-steps": (args.vqvae_steps, config.vqvae_steps),
        }
    differ = [
        f"{flag} {ours} (the run's: {theirs})"
        for flag, (ours, theirs) in given.items()
        if ours is not None and ours != theirs
    ]
    if differ:
        raise ValueError(
            f"--resume continues {out} as its config.json says; these flags contradict it: "
            f"{', '.join(differ)}; drop them"
        )
    planned = config.train.steps
    if args.steps is None or args.steps == planned:
        return config
    if not args.extend_steps:
        raise ValueError(
            f"--steps {args.steps} differs from the run's {planned} steps ({out}/config.json): "
            "--resume continues the run as configured; drop --steps, or add --extend-steps to "
            f"train it on to {args.steps} steps"
        )
    checkpoint = out / CHECKPOINT_FILE
    done = load_latest_checkpoint(checkpoint)[0]["step"] if checkpoint.exists() else 0
    if args.steps <= done:
        raise ValueError(
            f"--extend-steps: --steps {args.steps} must exceed the {done} steps {out} has done"
        )
    _warn(
        f"extending {out} from {planned} to {args.steps} steps: the cosine learning-rate "
        f"schedule is recomputed for {args.steps} steps from step {done + 1} on (config.json is "
        f"updated), so the result differs from a run trained for {args.steps} steps from the "
        "start"
    )
    return replace(config, train=replace(config.train, steps=args.steps))


def _train_overrides(args: argparse.Namespace) -> dict:
    given = {
        "steps": args.steps,
        "seed": args.seed,
        "latent_warmup": args.latent_warmup,
        "autocast": args.autocast,
    }
    return {k: v for k, v in given.items() if v is not None}


def _check_variant_file_flags(args: argparse.Namespace) -> None:
    """The options of the built-in image variants do not apply to a variant file."""
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


if __name__ == "__main__":
    sys.exit(main())
