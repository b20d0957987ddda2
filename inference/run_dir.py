"""What every run directory shares: seeding, ``config.json``, checkpointed training, loading."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn

from pbridge.checkpoint import load_checkpoint

from .svi import TrainResult, TrainSettings, resolve_device, train

__all__ = ["start_run", "train_in_run", "load_run"]


def start_run(out_dir: str | Path, config: Any, device: str) -> tuple[Path, torch.device]:
    """Create the run directory, write ``config.json``, seed torch and Pyro with
    ``config.train.seed``; return the directory and the resolved device."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    torch.manual_seed(config.train.seed)
    pyro.set_rng_seed(config.train.seed)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return out, dev


def train_in_run(
    variant: nn.Module,
    data: torch.Tensor,
    settings: TrainSettings,
    checkpoint: Path,
    config: Any,
    progress: bool,
    resume: bool,
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
    variant.load_state_dict(load_checkpoint(run / "checkpoint.pt")["model"])
    return config, variant.to(resolve_device(device)).eval()
