"""``pbridge train``: the checks of its flags and settings against each other, the run
directory and a resumed run's config.json; the config it runs, assembled from the preset,
``--config``, ``--set`` and the flags; then the run."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from pbridge.cli.messages import warn


def train_command(args: argparse.Namespace) -> dict:
    """``pbridge train``: every check first (flags, the run directory, a resumed run's config),
    then the run of its kind's recipe (:mod:`~pbridge.inference.run_kinds`), with the run
    directory locked (:func:`~pbridge.inference.pipeline.run`); a fresh run that fails before
    its first checkpoint leaves no directory."""
    from pbridge.inference.run_kinds import kind_for

    config = check_train(args)
    return kind_for(args.dataset).train(
        args.dataset,
        config,
        Path(args.out),
        args.device,
        not args.no_progress,
        args.root,
        args.download,
        args.resume,
        args.overwrite,
    )


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


def check_train(args: argparse.Namespace):
    """The config a ``train`` command will run, after checking its flags and settings against
    each other, the run directory and (``--resume``) the run's own config.json; writes
    nothing."""
    from pbridge.inference.run_dir import check_out_dir
    from pbridge.inference.run_kinds import kind_for

    kind = kind_for(args.dataset)
    image_flags = [_flag(dest) for dest in _IMAGE_ONLY if getattr(args, dest) is not None]
    if kind.name == "variant-file" and image_flags:
        raise ValueError(
            f"{', '.join(image_flags)} do not apply to a variant file ({args.dataset}): set them "
            "in its CONFIG, or with --set"
        )
    if kind.name in ("toy", "codes"):
        given = image_flags + [name for name in ("--root",) if args.root is not None]
        if given or args.download:
            given += ["--download"] if args.download else []
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{', '.join(given)} {verb} to image data sets, not to {args.dataset}")
    overrides = _overrides(args, kind.config_class)
    if args.extend_steps and not (args.resume and any(o.key == "train.steps" for o in overrides)):
        raise ValueError("--extend-steps goes with --resume and --steps N (the new total)")
    if os.environ.get("RANK", "0") == "0":  # the process that writes
        check_out_dir(args.out, args.resume, args.overwrite)
    if args.resume:
        return _resumed_config(args, overrides)
    return kind.fresh_config(args.dataset, overrides)


def check_launch(args: argparse.Namespace, config) -> None:
    """What ``torchrun`` needs of a data-parallel ``train`` (``--devices N``, ``--nodes M``),
    checked before it is launched: a rendezvous for several machines, a global batch that
    the N x M processes share evenly, and N GPUs on this machine when it trains on CUDA."""
    import torch

    from pbridge.inference.run_dir import resolve_device

    if args.nodes > 1 and not args.rdzv_endpoint:
        raise ValueError(f"--nodes {args.nodes} needs --rdzv-endpoint HOST:PORT")
    host, _, port = (args.rdzv_endpoint or "localhost:0").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--rdzv-endpoint {args.rdzv_endpoint!r} must be HOST:PORT")
    processes, batch = args.devices * args.nodes, config.train.batch_size
    if batch % processes:
        lower = batch // processes * processes
        fits = " or ".join(str(b) for b in (lower, lower + processes) if b > 0)
        given = f"--devices {args.devices}" + (f" --nodes {args.nodes}" if args.nodes > 1 else "")
        raise ValueError(
            f"{given}: the batch of {batch} items (train.batch_size) must be shared evenly by "
            f"the {processes} processes; give --batch-size {fits}, or a number of processes "
            f"that divides {batch}"
        )
    if not torch.distributed.is_available():
        raise ValueError(f"--devices {args.devices}: this torch has no torch.distributed")
    device = resolve_device(args.device)
    if device.type == "cuda" and torch.cuda.device_count() < args.devices:
        raise ValueError(
            f"--devices {args.devices} asks for one GPU per process, and this machine has "
            f"{torch.cuda.device_count()}; give --devices {torch.cuda.device_count()} or "
            "--device cpu"
        )


def _overrides(args: argparse.Namespace, cls: type) -> list:
    """The settings the command gives, in order of precedence: ``--config FILE``, then
    ``--set`` and the flags (a setting given twice on the command line is refused), read as
    settings of the config class ``cls``."""
    from pbridge.config_overrides import Override, parse_assignment, read_config_file

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
        if earlier is not item and earlier.value != item.value:
            raise ValueError(f"{earlier.origin} and {item.origin} both set {item.key}: give one")
    return from_file + given


def _resumed_config(args: argparse.Namespace, overrides: list):
    """The run's own config.json; every setting given must match it, by name (``train.steps``
    may exceed it with ``--extend-steps``)."""
    from pbridge.config import config_from_dict
    from pbridge.config_overrides import apply_overrides, changed
    from pbridge.inference.run_dir import read_config
    from pbridge.inference.run_kinds import kind_for, kind_of

    out = Path(args.out)
    data, held, asked = read_config(out), kind_of(out), kind_for(args.dataset)
    if held is not asked or not held.holds(data, args.dataset):
        raise ValueError(
            f"{out} holds a run on {held.data_name(data)}, not {args.dataset}: --resume "
            "continues a run on its own data; check --out and DATASET"
        )
    config = config_from_dict(asked.config_class, data, str(out / "config.json"))
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
    warn(
        f"extending {out} from {planned} to {steps} steps: the cosine learning-rate "
        f"schedule is recomputed for {steps} steps from step {done + 1} on (config.json is "
        f"updated), so the result differs from a run trained for {steps} steps from the "
        "start"
    )
    return replace(config, train=replace(config.train, steps=steps))
