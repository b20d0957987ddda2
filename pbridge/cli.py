"""The ``pbridge`` command line.

pbridge train DATASET --out RUN_DIR [--config FILE] [--set KEY=VALUE ...]
              [--steps N] [--seed S] [--lr LR] [--batch-size B] [--device auto|cpu|cuda]
              [--preset small|paper] [--variant NAME]
              [--codebook gradient|ema] [--restart-dead-codes U]
              [--overwrite | --resume [--steps N --extend-steps]]
              [--devices N [--nodes M --rdzv-endpoint HOST:PORT]]
pbridge train path/to/variant.py --out RUN_DIR [--set KEY=VALUE ...] [--resume] ...
pbridge --version
pbridge sample RUN_DIR [--num N] [--sampler ancestral|respaced|sde|ode] [--sample-steps S]
               [--ddim-eta E] [--method M] [--no-progress]
pbridge evaluate RUN_DIR [--items N] [--samples N] [--fd-draws N] [--patch-items N]
                 [--patch-draws N] [--sampler ...] [--sample-steps S] [--no-progress]
pbridge analyze RUN_DIR [--num N] [--items N] [--seed S] [--sampler ...] [--sample-steps S]
                [--no-progress]

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

from pbridge.data import DATASETS, data_set

TOY_SUMMARY = "the paper's toy problem (walks of 5 points on 8 circle centroids)"
"""``toy`` in ``train --help``; the image data sets' lines come from :data:`DATASETS`."""


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, except where there is none to show (an option
    whose default is the preset's says so in its help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pbridge")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from pbridge import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbridge",
        description="Diffusion-bridge VQ-VAE: train end to end with Pyro SVI, sample, score.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_sample_parser(sub)
    _add_evaluate_parser(sub)
    _add_analyze_parser(sub)
    return parser


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train a variant end to end and write a run directory",
        description="Train end to end; writes config.json, checkpoint.pt, metrics.json and plots. "
        "DATASET may be a variant file path/to/variant.py defining build(config) (and CONFIG): "
        "see docs/tutorial-variant.md. Every setting of the run can be given with --config FILE "
        "and --set KEY=VALUE (precedence: the preset, then --config, then --set and the flags).",
        epilog=_settings_epilog(),
        formatter_class=_TrainHelpFormatter,
    )
    train.add_argument("dataset", help=_dataset_help())
    train.add_argument("--out", required=True, help="run directory to write")
    _add_setting_options(train)
    _add_run_options(train)


def _dataset_help() -> str:
    """``train``'s DATASET: toy, each data set of the registry with its shape and summary, or a
    variant file."""
    images = [
        f"{name} ({'x'.join(map(str, entry.shape))}), {entry.summary}"
        for name, entry in DATASETS.items()
    ]
    return (
        f"what to train on: toy, {TOY_SUMMARY}; {'; '.join(images)}; or a variant file "
        "ending in .py"
    )


def _add_setting_options(train: argparse.ArgumentParser) -> None:
    """The options of ``train`` that set fields of the run's config (``_SETTING_FLAGS``)."""
    from pbridge.config import ImageConfig
    from pbridge.models.builders import IMAGE_VARIANTS

    train.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a TOML (.toml) or JSON file, e.g. a run's config.json",
    )
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="settings",
        help="set one setting (repeatable), e.g. --set bridge.num_codes=256 --set "
        "unet_mults=1,2,2; the settings are listed below",
    )
    train.add_argument("--steps", type=_positive_int, help="SVI steps (default: the preset's)")
    train.add_argument("--seed", type=_seed, help="random seed (default: the preset's)")
    train.add_argument("--lr", type=float, help="Adam learning rate (default: the preset's)")
    train.add_argument(
        "--batch-size", type=_positive_int, help="items per step (default: the preset's)"
    )
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
        choices=tuple(IMAGE_VARIANTS),
        help=f"image variant (default: {ImageConfig.variant}): "
        + "; ".join(f"{name}, {entry.summary}" for name, entry in IMAGE_VARIANTS.items()),
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


def _add_run_options(train: argparse.ArgumentParser) -> None:
    """The options of ``train`` that say where and how it runs, not what it trains."""
    train.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
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
    _add_progress_option(train)
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR with its own config.json, from its newest checkpoint; "
        "settings given with it must match the run's",
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


class _TrainHelpFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``train --help``: the list of settings after the options keeps its lines."""


def _settings_epilog() -> str:
    """Every setting of ``--set`` / ``--config`` with its type and default, toy / image
    (``small`` preset), from the config dataclasses."""
    from pbridge.config import ImageConfig, ToyConfig, image_preset, setting_type, type_name
    from pbridge.config_overrides import flatten

    toy, image = (
        flatten(ToyConfig().to_dict()),
        flatten(image_preset("fashion-mnist", "small").to_dict()),
    )
    lines = ["settings of --set KEY=VALUE and --config FILE (default: toy / fashion-mnist small):"]
    for key in sorted(toy.keys() | image.keys(), key=lambda key: ("." in key, key)):
        kind = type_name(setting_type(ImageConfig if key in image else ToyConfig, key))
        shown = [_shown(values[key]) if key in values else "-" for values in (toy, image)]
        lines.append(f"  {key} ({kind}): {' / '.join(shown)}")
    return "\n".join(lines)


def _shown(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_sample_parser(sub: argparse._SubParsersAction) -> None:
    sample = sub.add_parser(
        "sample",
        help="draw prior samples from a trained run",
        description="Draw prior samples (Algorithm 2); writes samples.pt and samples.png.",
        formatter_class=_HelpFormatter,
    )
    sample.add_argument("run_dir", help="a run directory written by `pbridge train`")
    sample.add_argument("--num", type=_positive_int, default=1000, help="number of samples")
    sample.add_argument("--seed", type=_seed, default=0, help="random seed")
    sample.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_sampler_options(sample)
    _add_weights_option(sample)
    _add_progress_option(sample)


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "evaluate",
        help="score a trained image run under the common protocol",
        description="Bits/dim, masked-patch bits per latent cell, FD-FMNIST, codebook usage and "
        "sampling time on the test split; writes eval.json, eval.md and inpainting.png "
        "(docs/evaluation.md).",
        formatter_class=_HelpFormatter,
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


def _add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    analyze = sub.add_parser(
        "analyze",
        help="prior and posterior draws of a trained run as arviz InferenceData, with plots",
        description="Prior, posterior and predictive draws with the test items and the training "
        "loss, as arviz InferenceData in analysis.nc; analysis_summary.csv (az.summary) and "
        "reverse_chain.png, code_usage.png, code_entropy.png, elbo_trace.png (docs/analysis.md).",
        formatter_class=_HelpFormatter,
    )
    analyze.add_argument("run_dir", help="a run directory written by `pbridge train`")
    analyze.add_argument(
        "--num", type=_positive_int, default=16, help="prior draws, and guide draws per item"
    )
    analyze.add_argument(
        "--items", type=_positive_int, default=8, help="test items for the posterior"
    )
    _add_draw_options(analyze)


def _add_draw_options(parser: argparse.ArgumentParser) -> None:
    """Seed, sampler, device and data folder of the commands that draw from a trained run and
    read its test split."""
    parser.add_argument("--seed", type=_seed, default=0, help="random seed")
    _add_sampler_options(parser)
    _add_weights_option(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--root", help="data folder (default: $PBRIDGE_DATA or ~/.cache/pbridge)")
    _add_progress_option(parser)


def _add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide progress (bars on a terminal, else plain lines); results are the same bits",
    )


def _progress(args: argparse.Namespace):
    """The :class:`~pbridge.inference.progress.Progress` of ``--no-progress``."""
    from pbridge.inference.progress import Progress

    return Progress(not args.no_progress)


def _add_weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        choices=("ema", "raw"),
        help="the EMA of the trained weights or the raw weights (default: ema when the "
        "checkpoint holds them, else raw)",
    )


def _add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """The sampler's flags; their values are checked in one place, when
    :class:`~pbridge.samplers.SamplerSettings` is built (:func:`_sampler_settings`)."""
    from pbridge.samplers import ODE_METHODS, SAMPLERS, SDE_METHODS

    parser.add_argument(
        "--sampler",
        default="ancestral",
        metavar="{" + ",".join(SAMPLERS) + "}",
        help="bridge: the T-step chain; DDIM-style respaced steps; reverse-time SDE; "
        "probability-flow ODE (torchsde)",
    )
    parser.add_argument(
        "--sample-steps",
        type=int,
        help="respaced: S <= T steps (default T); sde/ode: solver steps (default adaptive)",
    )
    parser.add_argument(
        "--ddim-eta", type=float, help="respaced: DDIM noise fraction in [0, 1] (default 1)"
    )
    parser.add_argument(
        "--method",
        help=f"sde: one of {', '.join(SDE_METHODS)}; ode: one of {', '.join(ODE_METHODS)} "
        "(default euler)",
    )
    # The former spellings, refused with the new flag's name (_sampler_settings).
    parser.add_argument("--steps", dest="former_steps", help=argparse.SUPPRESS)
    parser.add_argument("--eta", dest="former_eta", help=argparse.SUPPRESS)


def _sampler_settings(args: argparse.Namespace):
    """The :class:`~pbridge.samplers.SamplerSettings` of a sample / evaluate / analyze command,
    checked before anything is loaded."""
    from pbridge.samplers import SamplerSettings

    if args.former_steps is not None:
        raise ValueError("--steps applies to train; use --sample-steps")
    if args.former_eta is not None:
        raise ValueError("--eta names the OU coefficient; use --ddim-eta (DDIM noise fraction)")
    return SamplerSettings(args.sampler, args.sample_steps, args.ddim_eta, args.method)


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
            ImportError,  # an optional extra that is not installed (pbridge[digits])
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

        sampler = _sampler_settings(args)
        _check_drawing(args, sampler)
        metrics = analyze_run(
            args.run_dir,
            args.num,
            args.items,
            args.seed,
            args.device,
            args.root,
            sampler,
            args.weights,
            _progress(args),
        )
    else:
        from pbridge.inference.sample_run import sample_run

        sampler = _sampler_settings(args)
        _check_drawing(args, sampler)
        metrics = sample_run(
            args.run_dir, args.num, args.device, args.seed, sampler, args.weights, _progress(args)
        )
    if metrics:  # empty on the processes of a data-parallel job other than the first
        print(json.dumps(metrics, indent=2))
    return 0


def _check_drawing(args: argparse.Namespace, sampler) -> str:
    """Up-front checks of sample / evaluate / analyze: the run directory, its config.json, the
    sampler against the run's chain and that the directory can be written; returns the run's
    kind."""
    from pbridge.inference.run_dir import check_writable, read_config, run_kind

    kind = run_kind(args.run_dir)
    config = read_config(args.run_dir)
    num_steps = config.get("num_steps")
    if kind != "variant-file" and isinstance(num_steps, int):
        sampler.check_chain(num_steps)
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
            channels, height, width = data_set(config["dataset"]).shape
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

    sampler = _sampler_settings(args)
    settings = EvalSettings(
        bpd_items=args.items,
        chain_steps=args.chain_steps,
        num_samples=args.samples,
        fd_draws=args.fd_draws,
        patch_items=args.patch_items,
        patch_draws=args.patch_draws,
        seed=args.seed,
    )
    kind = _check_drawing(args, sampler)
    progress = _progress(args)
    if kind == "toy":
        return evaluate_toy_run(
            args.run_dir, settings, args.device, sampler, args.weights, progress
        )
    result = evaluate_run(
        args.run_dir, settings, args.device, args.root, sampler, args.weights, progress
    )
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


_SETTING_FLAGS = {
    "steps": "train.steps",
    "seed": "train.seed",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "latent_warmup": "train.latent_warmup",
    "autocast": "train.autocast",
    "preset": "preset",
    "variant": "variant",
    "codebook": "vqvae_codebook",
    "restart_dead_codes": "restart_dead_codes",
    "vqvae_steps": "vqvae_steps",
}
"""The ``train`` flags that are shortcuts of settings: argparse destination -> setting."""

_IMAGE_ONLY = ("preset", "variant", "codebook", "restart_dead_codes", "vqvae_steps")
"""Destinations of the flags of the built-in image variants."""


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_train(args: argparse.Namespace):
    """The config a ``train`` command will run, after checking its flags and settings against
    each other, the run directory and (``--resume``) the run's own config.json; writes
    nothing."""
    from pbridge.inference.run_dir import check_out_dir

    variant_file = args.dataset.endswith(".py")
    if not variant_file and args.dataset != "toy" and args.dataset not in DATASETS:
        raise ValueError(
            f"unknown dataset {args.dataset!r}; expected one of toy, {', '.join(DATASETS)} or a "
            "variant file ending in .py"
        )
    image_flags = [_flag(dest) for dest in _IMAGE_ONLY if getattr(args, dest) is not None]
    if variant_file and image_flags:
        raise ValueError(
            f"{', '.join(image_flags)} do not apply to a variant file ({args.dataset}): set them "
            "in its CONFIG, or with --set"
        )
    if args.dataset == "toy":
        given = image_flags + [name for name in ("--root",) if args.root is not None]
        if given or args.download:
            given += ["--download"] if args.download else []
            raise ValueError(f"{', '.join(given)} apply to image data sets, not to toy")
    overrides = _overrides(args)
    if args.extend_steps and not (args.resume and any(o.key == "train.steps" for o in overrides)):
        raise ValueError("--extend-steps goes with --resume and --steps N (the new total)")
    if os.environ.get("RANK", "0") == "0":  # the process that writes
        check_out_dir(args.out, args.resume, args.overwrite)
    if args.resume:
        return _resumed_config(args, overrides)
    return _fresh_config(args, overrides)


def _config_class(dataset: str) -> type:
    from pbridge.config import ImageConfig, ToyConfig

    return ToyConfig if dataset == "toy" else ImageConfig


def _overrides(args: argparse.Namespace) -> list:
    """The settings the command gives, in order of precedence: ``--config FILE``, then
    ``--set`` and the flags (a setting given twice on the command line is refused)."""
    from pbridge.config_overrides import Override, parse_assignment, read_config_file

    cls = _config_class(args.dataset)
    from_file = read_config_file(args.config, cls) if args.config else []
    given = [parse_assignment(text, cls) for text in args.settings or ()]
    for dest, key in _SETTING_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            shown = "" if isinstance(value, bool) else f" {value}"
            given.append(Override(key, value, _flag(dest) + shown))
    first: dict = {}
    for item in given:
        earlier = first.setdefault(item.key, item)
        if earlier.value != item.value:
            raise ValueError(f"{earlier.origin} and {item.origin} both set {item.key}: give one")
    return from_file + given


def _fresh_config(args: argparse.Namespace, overrides: list):
    """The preset (``--preset``, else a ``preset`` setting, else ``small``), a toy config or
    a variant file's ``CONFIG``, with the overrides applied."""
    from pbridge.config import ToyConfig, image_preset
    from pbridge.config_overrides import apply_overrides
    from pbridge.inference.user_variant import load_variant_file
    from pbridge.models.builders import image_variant

    if args.dataset.endswith(".py"):
        return apply_overrides(load_variant_file(args.dataset).config, overrides)
    if args.dataset == "toy":
        return apply_overrides(ToyConfig(), overrides)
    for item in overrides:
        if item.key == "dataset" and item.value != args.dataset:
            raise ValueError(
                f"{item.origin}: the data set is DATASET, here {args.dataset}; drop the setting "
                "or train on that data set"
            )
    presets = [item.value for item in overrides if item.key == "preset"]
    config = apply_overrides(
        image_preset(args.dataset, presets[-1] if presets else "small"), overrides
    )
    image_variant(config.variant)  # an unknown name (--set, --config) is refused here
    return config


def _resumed_config(args: argparse.Namespace, overrides: list):
    """The run's own config.json; every setting given must match it, by name (``train.steps``
    may exceed it with ``--extend-steps``)."""
    from pbridge.config import config_from_dict
    from pbridge.config_overrides import apply_overrides, changed
    from pbridge.inference.run_dir import read_config, run_kind

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
    config = config_from_dict(_config_class(args.dataset), data, str(out / "config.json"))
    wanted = apply_overrides(config, overrides)
    differ = changed(config, wanted, overrides)
    steps = differ.pop("train.steps", None)
    if differ:
        named = [f"{origin} (the run's: {theirs})" for origin, theirs in differ.values()]
        raise ValueError(
            f"--resume continues {out} as its config.json says; these settings contradict it: "
            f"{', '.join(named)}; drop them"
        )
    if steps is None:
        return config
    return _extended(args, out, config, steps[0], wanted.train.steps)


def _extended(args: argparse.Namespace, out: Path, config, origin: str, steps: int):
    """The resumed run's config trained on to ``steps`` (``origin``: the setting asking for
    them), if ``--extend-steps`` allows it and the run has done fewer."""
    from pbridge.checkpoint import load_latest_checkpoint
    from pbridge.inference.run_dir import CHECKPOINT_FILE

    planned = config.train.steps
    if not args.extend_steps:
        raise ValueError(
            f"{origin} differs from the run's {planned} steps ({out}/config.json): --resume "
            "continues the run as configured; drop it, or add --extend-steps to train it on to "
            f"{steps} steps"
        )
    checkpoint = out / CHECKPOINT_FILE
    done = load_latest_checkpoint(checkpoint)[0]["step"] if checkpoint.exists() else 0
    if steps <= done:
        raise ValueError(f"--extend-steps: {origin} must exceed the {done} steps {out} has done")
    _warn(
        f"extending {out} from {planned} to {steps} steps: the cosine learning-rate "
        f"schedule is recomputed for {steps} steps from step {done + 1} on (config.json is "
        f"updated), so the result differs from a run trained for {steps} steps from the "
        "start"
    )
    return replace(config, train=replace(config.train, steps=steps))


if __name__ == "__main__":
    sys.exit(main())
