"""What every run directory shares: seeding, ``config.json``, checkpointed training, loading.

A command checks everything before it writes: :func:`check_out_dir` (may this directory be
written?), :func:`read_config` (is ``config.json`` readable and of the right types?),
:func:`check_resume` (does the checkpoint fit the variant and its config?) and
:func:`check_writable`; only then does :func:`write_run_files` write ``config.json`` and
``environment.json``. A command that refuses leaves the run directory as it was, and so does
a training session that fails before its first checkpoint (:func:`discard_failed_start`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyro
import torch
import torchsde
from torch import nn

import pbridge
from pbridge.checkpoint import (
    check_state_fits,
    load_checkpoint_of,
    load_latest_checkpoint,
    previous_path,
    written_by_class_of,
)
from pbridge.config import TrainSettings, config_from_dict, upgrade_config_dict

from .distributed import World, world_from_environment
from .run_lock import LOCK_FILE, HeldLock, check_unlocked
from .svi import Hook, TrainResult, train

__all__ = [
    "CONFIG_FILE",
    "CHECKPOINT_FILE",
    "VQVAE_FILE",
    "VARIANT_FILE",
    "start_run",
    "check_out_dir",
    "is_run_dir",
    "check_writable",
    "check_resume",
    "write_run_files",
    "RunBefore",
    "run_before",
    "discard_failed_start",
    "atomic_write",
    "write_json",
    "read_config",
    "train_in_run",
    "LoadedRun",
    "open_run",
    "environment",
    "resolve_device",
]

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
VQVAE_FILE = "vqvae.pt"
"""The checkpoint of the VQ-VAE stage of a variant trained in two stages."""
VARIANT_FILE = "variant.py"
"""The copy of the variant file a run of one was trained from."""

RUN_FILES = (
    "config.json",
    "environment.json",
    CHECKPOINT_FILE,
    f"{CHECKPOINT_FILE}.sha256",
    f"{CHECKPOINT_FILE}.prev",
    f"{CHECKPOINT_FILE}.prev.sha256",
    VQVAE_FILE,
    f"{VQVAE_FILE}.sha256",
    f"{VQVAE_FILE}.prev",
    f"{VQVAE_FILE}.prev.sha256",
    "metrics.json",
    VARIANT_FILE,
    "trajectories.png",
    "reconstructions.png",
    "samples.png",
    "samples.pt",
    "eval.json",
    "eval.md",
    "inpainting.png",
    "eval_samples.png",
    "analysis.nc",
    "analysis_summary.csv",
    "reverse_chain.png",
    "code_usage.png",
    "code_entropy.png",
    "elbo_trace.png",
    "train.csv",
    "vqvae_train.csv",
)
"""Every file a pbridge command writes into a run directory (removed by ``--overwrite``)."""

RUN_FOLDERS = ("samples", "tensorboard")
"""Folders training writes into a run directory (removed by ``--overwrite``)."""


def _git(*args: str) -> str | None:
    source = Path(pbridge.__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", *args], cwd=source, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def environment() -> dict[str, Any]:
    """Versions of Python, torch, Pyro, torchsde and pbridge, and the git commit of the pbridge
    source (``None`` outside a git checkout; ``git_dirty`` when it has uncommitted changes)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "torchsde": torchsde.__version__,
        "pbridge": pbridge.__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def is_run_dir(path: Path) -> bool:
    """A directory holding a run: its ``config.json`` or a checkpoint."""
    names = (CHECKPOINT_FILE, VQVAE_FILE, CONFIG_FILE)
    return any((path / name).exists() or previous_path(path / name).exists() for name in names)


def check_out_dir(out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse (``ValueError`` naming the directory) to start a run where it would lose work:
    an existing file; a directory that holds a run, unless ``resume`` (continue it) or
    ``overwrite`` (replace it); a non-empty directory that holds no run; ``resume`` of a
    missing or empty directory; a directory another process holds (:mod:`.run_lock`). Writes
    nothing."""
    out = Path(out_dir)
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run directory")
    if out.is_dir():
        check_unlocked(out)
    holds_run = out.is_dir() and is_run_dir(out)
    if resume:
        if not holds_run:
            what = "does not exist" if not out.exists() else "holds no run (no config.json)"
            raise ValueError(f"cannot resume {out}: it {what}; check the path, or drop --resume")
        if not (out / CONFIG_FILE).is_file():
            raise ValueError(f"cannot resume {out}: it has a checkpoint but no {CONFIG_FILE}")
        return
    if holds_run and not overwrite:
        raise ValueError(
            f"{out} already holds a run; pass --resume to continue it or --overwrite to replace "
            "it (its checkpoint, samples and scores are deleted)"
        )
    # The lock, and the lock another process is creating under its private name, are no run.
    others = [p for p in out.iterdir() if not p.name.startswith(LOCK_FILE)] if out.is_dir() else []
    if not holds_run and others:
        raise ValueError(f"{out} is not empty and holds no run; choose a new or empty --out")


def check_writable(folder: str | Path) -> None:
    """Raise ``PermissionError`` naming ``folder`` (or, if missing, the folder that would hold
    it) when a file cannot be created there: tried with a temporary file, removed at once."""
    folder = Path(folder)
    target = folder
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        raise ValueError(f"cannot create {folder}: {target} is a file")
    try:
        fd, probe = tempfile.mkstemp(dir=target, prefix=".pbridge-probe-")
    except OSError as err:
        raise PermissionError(
            f"cannot write to {target}{'' if target == folder else f' (to create {folder})'}: "
            f"{err.strerror or err}"
        ) from err
    os.close(fd)
    os.unlink(probe)


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path`` (so a crash,
    Ctrl-C or full disk never leaves half a file), on failure removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # the suffix names the format
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is not None or not err.errno:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err  # a full disk: name the file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON (:func:`json_text`), written atomically
    (:func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json_text(data))


def json_text(data: Any) -> str:
    """``data`` as indented strict JSON: a NaN or infinite float (a standard error of one
    batch, a diverged loss) is written ``null``, which every JSON parser reads."""

    def finite(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(data), indent=2, allow_nan=False)


def start_run(out_dir: str | Path, config: Any, device: str) -> tuple[Path, torch.device, World]:
    """Seed torch and Pyro with ``config.train.seed``; return the run directory, the resolved
    device and the data-parallel world (from torchrun's environment; one process otherwise).
    Under torchrun each process takes the GPU of its local rank. Writes nothing: the run's files
    are written by :func:`write_run_files` once every input has been checked."""
    dev = resolve_device(device)
    world = world_from_environment(dev)
    if world.size > 1 and dev.type == "cuda":
        dev = torch.device("cuda", world.local_rank)
    torch.manual_seed(config.train.seed)
    pyro.set_rng_seed(config.train.seed)
    return Path(out_dir), dev, world


def write_run_files(
    out: Path, config: Any, world: World, resume: bool = False, overwrite: bool = False
) -> None:
    """On process 0: check the directory once more (:func:`check_out_dir`) and that it can be
    written, delete a replaced run's files (``overwrite``), then write ``config.json`` and
    ``environment.json`` (versions and git commit) atomically."""
    if not world.is_main:
        return
    check_out_dir(out, resume, overwrite)
    check_writable(out)
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for name in RUN_FOLDERS:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, config.to_dict())
    write_json(out / "environment.json", {**environment(), "processes": world.size})


REWRITTEN_FILES = (CONFIG_FILE, "environment.json", "train.csv", "vqvae_train.csv")
"""The files of a run that a resumed session rewrites before it writes a checkpoint."""

CHECKPOINT_FILES = tuple(
    f"{name}{tail}" for name in (CHECKPOINT_FILE, VQVAE_FILE) for tail in ("", ".prev")
)


def _checkpoint_state(folder: Path) -> dict[str, tuple[int, int]]:
    """(modification time in ns, size) of each checkpoint in ``folder``."""
    found = {}
    for name in CHECKPOINT_FILES:
        try:
            stat = (folder / name).stat()
        except OSError:
            continue
        found[name] = (stat.st_mtime_ns, stat.st_size)
    return found


@dataclasses.dataclass(frozen=True)
class RunBefore:
    """A run directory as a training session found it, once it held the lock: the names it
    held, the bytes of :data:`REWRITTEN_FILES` and the state of its checkpoints."""

    held: HeldLock
    rewritten: dict[str, bytes]
    checkpoints: dict[str, tuple[int, int]]


def run_before(held: HeldLock) -> RunBefore:
    """What :func:`discard_failed_start` needs to put ``held.folder`` back as it was."""
    out = held.folder
    rewritten = {
        name: (out / name).read_bytes() for name in REWRITTEN_FILES if (out / name).is_file()
    }
    return RunBefore(held, rewritten, _checkpoint_state(out))


def discard_failed_start(before: RunBefore) -> None:
    """Undo a failed training session that wrote no checkpoint (a new run, or a resume that
    failed before its first checkpoint): remove the names that were not in the run directory
    when it took the lock (``before.held.before``; never a file of another process) and put
    back the bytes of the files it rewrote (:data:`REWRITTEN_FILES`: ``config.json``,
    ``environment.json``, the training logs). A session that wrote a checkpoint leaves
    everything: there is work to resume."""
    out = before.held.folder
    try:
        if not out.is_dir() or _checkpoint_state(out) != before.checkpoints:
            return
        for item in out.iterdir():
            if item.name in before.held.before or item.name == LOCK_FILE:
                continue
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
        for name, data in before.rewritten.items():
            if not (out / name).is_file() or (out / name).read_bytes() != data:
                with atomic_write(out / name) as tmp:
                    tmp.write_bytes(data)
    except OSError:
        pass  # the error being raised says more


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``config.json`` as a dict; errors name the file."""
    run = Path(run_dir)
    path = run / CONFIG_FILE
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a run directory: no {CONFIG_FILE} (no such folder)")
    if not path.is_file():
        raise FileNotFoundError(f"{run} is not a run directory: no {CONFIG_FILE}")
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a text file ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def check_config_matches(config: dict, state: dict, config_file: Path, used: Path) -> None:
    """Refuse a ``config.json`` that contradicts the config its checkpoint was written with
    (``train.steps`` may differ: ``--extend-steps``), naming every setting that differs."""
    written = state.get("config")
    if not isinstance(written, dict):
        return
    ours, theirs = _flat(upgrade_config_dict(config)), _flat(upgrade_config_dict(written))
    differ = [
        f"{key} {ours[key]!r} (checkpoint: {theirs[key]!r})"
        for key in ours
        if key in theirs and key != "train.steps" and ours[key] != theirs[key]
    ]
    if differ:
        raise ValueError(
            f"{config_file} contradicts {used}, which was written with other settings: "
            + ", ".join(differ)
        )


def check_resume(variant: nn.Module, checkpoint: Path, config: Any) -> int:
    """Before a resumed run writes anything: the newest intact checkpoint (if any) was written
    by this variant class with tensors of these shapes and with this config; returns its step
    (0 when there is none yet)."""
    if not (checkpoint.is_file() or previous_path(checkpoint).is_file()):
        return 0
    state, used = load_checkpoint_of(variant, checkpoint)
    check_config_matches(config.to_dict(), state, checkpoint.parent / CONFIG_FILE, used)
    return int(state["step"])


def train_in_run(
    variant: nn.Module,
    data: torch.Tensor,
    settings: TrainSettings,
    checkpoint: Path,
    config: Any,
    progress: bool,
    resume: bool,
    world: World | None = None,
    hooks: tuple[Hook, ...] = (),
) -> TrainResult:
    """SVI training (validation off) checkpointed to ``checkpoint`` with the config alongside,
    logged to ``train.csv`` beside it (``<stem>_train.csv`` for another checkpoint name), with
    ``hooks`` (:mod:`.train_hooks`)."""
    name = "train.csv" if checkpoint.name == CHECKPOINT_FILE else f"{checkpoint.stem}_train.csv"
    with pyro.validation_enabled(False):
        return train(
            variant,
            data,
            settings,
            progress=progress,
            checkpoint=checkpoint,
            resume=resume,
            extra={"config": config.to_dict()},
            world=world,
            log=checkpoint.with_name(name),
            hooks=hooks,
        )


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A trained run read back from its run directory.

    ``variant``: the trained model/guide pair (eval mode) with the weights named by
    ``weights`` (``"ema"`` or ``"raw"``); ``config``: its configuration (a
    :class:`~pbridge.config.ToyConfig` or :class:`~pbridge.config.ImageConfig`); ``losses``:
    the negative ELBO per item of every training step so far, ``(step,)`` (a two-stage run's:
    its second stage; the VQ-VAE stage's are in ``vqvae_train.csv``); ``step``: the last step
    trained; ``checkpoint``: the file read (``checkpoint.pt``, or ``checkpoint.pt.prev`` when
    the latest one is damaged)."""

    variant: nn.Module
    config: Any
    losses: tuple[float, ...]
    step: int
    weights: str
    checkpoint: Path


def open_run(
    run_dir: str | Path,
    config_type: type,
    build: Callable[[Any], nn.Module],
    device: str = "auto",
    weights: str | None = None,
) -> LoadedRun:
    """The trained variant (eval mode; ``build`` of its config, a ``config_type``), config and
    losses of a run directory, with its EMA
    weights (``weights="ema"``; ``None``: those when the checkpoint has them, else the raw
    ones) or the raw ones (``"raw"``). Refuses (naming the file)
    a missing, unreadable or mistyped ``config.json``, a run without a checkpoint yet, and a
    ``config.json`` that contradicts its checkpoint; warns when the run stopped before its
    last step."""
    run = Path(run_dir)
    data = read_config(run)
    config = config_from_dict(config_type, data, str(run / CONFIG_FILE))
    checkpoint = run / CHECKPOINT_FILE
    if not (checkpoint.is_file() or previous_path(checkpoint).is_file()):
        raise FileNotFoundError(_missing_checkpoint(run, config.train))
    state, used = load_latest_checkpoint(checkpoint)
    check_config_matches(data, state, run / CONFIG_FILE, used)
    variant = build(config)
    if not written_by_class_of(state, variant):
        raise ValueError(
            f"{used} was written by a {state.get('variant')} run, but config.json builds a "
            f"{type(variant).__name__}"
        )
    check_state_fits(variant, state["model"], str(used))
    steps = config.train.steps
    if state.get("step", steps) < steps:
        warnings.warn(
            f"{run} stopped at step {state['step']} of {steps} (continue it with `pbridge train "
            "... --resume`); using the model as it is",
            stacklevel=2,
        )
    if weights not in (None, "ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    if weights == "ema" and "ema" not in state:
        raise ValueError(f"{used} holds no EMA weights (trained without them); use raw weights")
    chosen = "ema" if weights != "raw" and "ema" in state else "raw"
    variant.load_state_dict(state["ema" if chosen == "ema" else "model"])
    return LoadedRun(
        variant=variant.to(resolve_device(device)).eval(),
        config=config,
        losses=tuple(state["losses"]),
        step=int(state["step"]),
        weights=chosen,
        checkpoint=used,
    )


def _logged_steps(log: Path) -> int:
    """The last step ``train.csv`` logs (0 when it is missing or unreadable)."""
    try:
        with log.open(newline="") as handle:
            steps = [int(row["step"]) for row in csv.DictReader(handle)]
    except (OSError, ValueError, KeyError, TypeError, csv.Error):
        return 0
    return max(steps, default=0)


def _missing_checkpoint(run: Path, settings: TrainSettings) -> str:
    """What a run without ``checkpoint.pt`` (nor its ``.prev``) went through: finished (its
    ``metrics.json``), or trained past a step that writes a checkpoint (its ``train.csv``),
    the checkpoint since removed; or not at its first checkpoint yet."""
    logged = _logged_steps(run / "train.csv")
    if (run / "metrics.json").is_file():
        what = "its training finished (metrics.json is there)"
    elif logged >= min(settings.steps, settings.checkpoint_every or settings.steps):
        what = f"its train.csv logs {logged} of {settings.steps} steps, past a checkpoint"
    else:
        return (
            f"{run} has no checkpoint yet: its training has not reached its first checkpoint "
            "(still running, or stopped before it; continue with `pbridge train ... --resume`)"
        )
    return (
        f"{run} has no {CHECKPOINT_FILE} (nor {CHECKPOINT_FILE}.prev), yet {what}: the "
        "checkpoint was deleted or moved; restore it, or train the run again with "
        "`pbridge train ... --overwrite`"
    )


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"`` / ``"cuda[:i]"`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda[:i]'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device
