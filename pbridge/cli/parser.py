"""The parsers of ``pbridge`` and its commands: options, help texts and formatters, and the
sampler settings the drawing commands build from their flags."""

from __future__ import annotations

import argparse

TOY_SUMMARY = "the paper's toy problem (walks of 5 points on 8 circle centroids)"
"""``toy`` in ``train --help``; the image data sets' lines come from :data:`DATASETS`."""


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..2**32 - 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
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


def version() -> str:
    """pbridge's version, from the installed package's metadata (no torch imported)."""
    from importlib import metadata

    try:
        return metadata.version("pbridge")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from pbridge import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbridge",
        description="Diffusion-bridge VQ-VAE: train end to end with Pyro SVI, sample, score.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
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
        "see docs/tutorial-variant.md; or a codes file path/to/codes.pt holding "
        '{"codes": (N, *cells) integer tensor, "codebook": (K, d) float tensor}, to fit the '
        "bridge prior alone to codes you bring: see docs/codes.md. Every setting of the run "
        "can be given with --config FILE and --set KEY=VALUE (precedence: the preset, then "
        "--config, then --set and the flags).",
        epilog=_settings_epilog(),
        formatter_class=_TrainHelpFormatter,
    )
    train.add_argument("dataset", help=_dataset_help())
    train.add_argument("--out", required=True, help="run directory to write")
    _add_setting_options(train)
    _add_run_options(train)


def _dataset_help() -> str:
    """``train``'s DATASET: toy, each data set of the registry with its shape and summary, a
    variant file or a codes file."""
    from pbridge.data import DATASETS

    images = [
        f"{name} ({'x'.join(map(str, entry.shape))}), {entry.summary}"
        for name, entry in DATASETS.items()
    ]
    return (
        f"what to train on: toy, {TOY_SUMMARY}; {'; '.join(images)}; a variant file "
        "ending in .py; or a file of codes and their codebook ending in .pt"
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
        help="set one setting (repeatable), e.g. --set num_codes=256 --set bridge.commitment=0.5 "
        "--set unet_mults=1,2,2; the settings are listed below",
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
        type=_non_negative_int,
        help="steps of the VQ-VAE stage that comes first (two-stage and pixelcnn: then frozen; "
        "end-to-end: the warm start, then trained on with the prior; 0: none) (default: the "
        "preset's)",
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
    (``small`` preset) / codes file, from the config dataclasses."""
    from pbridge.config import (
        CODES_FILE_SETTINGS,
        CodesConfig,
        ImageConfig,
        ToyConfig,
        image_preset,
        setting_type,
        type_name,
    )
    from pbridge.config_overrides import flatten

    from_file = dict.fromkeys(CODES_FILE_SETTINGS)
    from_file.update(cells=(1,), num_codes=1, latent_dim=1, codes_file="", codes_sha256="")
    codes = flatten(CodesConfig(**from_file).to_dict())
    for key in CODES_FILE_SETTINGS:
        del codes[key]
    configs = {
        ToyConfig: flatten(ToyConfig().to_dict()),
        ImageConfig: flatten(image_preset("fashion-mnist", "small").to_dict()),
        CodesConfig: codes,
    }
    lines = [
        "settings of --set KEY=VALUE and --config FILE (default: toy / fashion-mnist small / "
        "codes file; a codes file's own path, SHA-256, cells, num_codes and latent_dim are read "
        "from it):"
    ]
    keys = set().union(*configs.values())
    for key in sorted(keys, key=lambda key: ("." in key, key)):
        cls = next(cls for cls, values in configs.items() if key in values)
        shown = [_shown(values[key]) if key in values else "-" for values in configs.values()]
        lines.append(f"  {key} ({type_name(setting_type(cls, key))}): {' / '.join(shown)}")
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
        help="score a trained run under the common protocol",
        description="An image run: bits/dim, masked-patch bits per latent cell, FD-FMNIST, "
        "codebook usage and sampling time on the test split; writes eval.json, eval.md and "
        "inpainting.png (docs/evaluation.md). A toy run: the ELBO on its test walks, the "
        "transition accuracy of prior draws, codebook usage and sampling time, in eval.json.",
        formatter_class=_HelpFormatter,
    )
    evaluate.add_argument("run_dir", help="a run directory written by `pbridge train`")
    evaluate.add_argument("--items", type=_positive_int, default=1000, help="images for bits/dim")
    evaluate.add_argument(
        "--chain-steps",
        type=_positive_int,
        default=100,
        help="bridge: stratified chain steps per image in the bound, one in each of as many "
        "near-equal strata (tight: of 2..T beside the read-out step; paper formulation: of 1..T)",
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
        "loss, as arviz InferenceData in analysis.nc; analysis_summary.csv (az.summary), "
        "code_usage.png, elbo_trace.png, code_entropy.png (bridge variants) and "
        "reverse_chain.png (image runs of bridge variants) (docs/analysis.md).",
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


def _add_weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        choices=("ema", "raw"),
        help="the EMA of the trained weights or the raw weights (default: ema when the "
        "checkpoint holds them, else raw)",
    )


def _add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """The sampler's flags; their values are checked in one place, when
    :class:`~pbridge.samplers.SamplerSettings` is built (:func:`sampler_settings`)."""
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


def sampler_settings(args: argparse.Namespace):
    """The :class:`~pbridge.samplers.SamplerSettings` of a sample / evaluate / analyze command,
    checked before anything is loaded."""
    from pbridge.samplers import SamplerSettings

    return SamplerSettings(args.sampler, args.sample_steps, args.ddim_eta, args.method)
