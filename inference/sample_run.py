"""``pbridge sample RUN``: prior draws of any trained run, written into its directory.

``samples.pt`` holds every draw and ``samples.png`` shows them, as the run's kind writes them
(:attr:`~.run_kinds.RunKind.sample`): codes, most probable codes and decoder means with up to
1,024 images in a grid (image runs), or 16 walks (the toy); the drawn codes (a codes run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pbridge.samplers import ANCESTRAL, SamplerSettings

from .load import load_run
from .progress import QUIET, Progress
from .run_dir import check_writable
from .run_kinds import kind_of
from .sampling import check_sampler

__all__ = ["sample_run"]


def sample_run(
    run_dir: str | Path,
    num: int,
    device: str = "auto",
    seed: int = 0,
    sampler: SamplerSettings = ANCESTRAL,
    weights: str | None = None,
    progress: Progress = QUIET,
) -> dict[str, Any]:
    """Draw ``num`` prior samples of the run ``run_dir`` (its EMA or raw ``weights``,
    :func:`~.load.load_run`) by ``sampler``, the steps shown by ``progress``; write
    ``samples.pt`` and ``samples.png``. Returns the number, the seconds per draw and what the
    run's kind scores of the draws (the toy: transition accuracy; a codes run: codes used)."""
    run = Path(run_dir)
    loaded = load_run(run, weights=weights, device=device)
    check_sampler(loaded.variant, sampler)
    check_writable(run)
    torch.manual_seed(seed)
    progress.stage(f"drawing {num:,} samples")
    return kind_of(run).sample(loaded, run, num, sampler, progress)
