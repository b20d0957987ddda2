"""What every run directory shares: seeding, ``config.json``, checkpointed training, loading."""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch
import torchsde
from torch import nn

import pbridge
from pbridge.checkpoint import check_state_fits, load_latest_checkpoint

from .distributed import World, world_from_environment
from .svi import TrainResult, TrainSettings, resolve_device, train

__all__ = ["start_run", "train_in_run", "load_run", "environment"]


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


def start_run(out_dir: str | Path, config: Any, device: str) -> tuple[Path, torch.device, World]:
    """Create the run directory, write ``config.json`` and ``environment.json`` (versions and
    git commit), seed torch and Pyro with ``config.train.seed``; return the directory, the
    resolved device and the data-parallel world (from torchrun's environment; one process
    otherwise). Under torchrun each process takes the GPU of its local rank and only process 0
    writes files."""
    out = Path(out_dir)
    dev = resolve_device(device)
    world = world_from_environment(dev)
    if world.size > 1 and dev.type == "cuda":
        dev = torch.device("cuda", world.local_rank)
    torch.manual_seed(config.train.seed)
    pyro.set_rng_seed(config.train.seed)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        recorded = {**environment(), "processes": world.size}
        (out / "environment.json").write_text(json.dumps(recorded, indent=2))
    return out, dev, world


def train_in_run(
    variant: nn.Module,
    data: torch.Tensor,
    settings: TrainSettings,
    checkpoint: Path,
    config: Any,
    progress: bool,
    resume: bool,
    world: World | None = None,
) -> TrainResult:
    """SVI training (validation off) checkpointed to ``checkpoint`` with the config alongside."""
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
        )


def load_run(
    run_dir: str | Path,
    from_dict: Callable[[dict], Any],
    build: Callable[[Any], nn.Module],
    device: str = "auto",
) -> tuple[Any, nn.Module]:
    """The config and trained variant (eval mode) of a run directory."""
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} is not a run directory: no config.json")
    config = from_dict(json.loads((run / "config.json").read_text()))
    variant = build(config)
    state, used = load_latest_checkpoint(run / "checkpoint.pt")
    if state.get("variant") != type(variant).__name__:
        raise ValueError(
            f"{used} was written by a {state.get('variant')} run, but config.json builds a "
            f"{type(variant).__name__}"
        )
    check_state_fits(variant, state["model"], str(used))
    variant.load_state_dict(state["model"])
    return config, variant.to(resolve_device(device)).eval()
