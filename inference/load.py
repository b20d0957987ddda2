"""``pbridge.load_run``: any run directory the command line writes, read back in one call.

Toy runs, image runs of every preset and variant (end to end, two-stage, PixelCNN, VQ-VAE) and
runs of a variant file (rebuilt from the run's copy ``variant.py``, e.g. the class-conditional
bridge) all come back as a :class:`~.run_dir.LoadedRun`.
"""

from __future__ import annotations

from pathlib import Path

from .run_dir import LoadedRun
from .run_kinds import kind_of

__all__ = ["load_run"]


def load_run(path: str | Path, *, weights: str | None = None, device: str = "auto") -> LoadedRun:
    """The trained variant (eval mode), config and training losses of the run directory
    ``path``, on ``device`` (``"auto"``: CUDA when available), with its EMA weights
    (``weights="ema"``), its raw ones (``"raw"``) or, by default, the EMA weights when the
    run kept them. Errors name the file at fault (no ``config.json``, no checkpoint yet, a
    damaged checkpoint, a config that contradicts its checkpoint)."""
    return kind_of(path).open(path, device, weights)
