"""``pbridge sample RUN``: prior draws of any trained run, written into its directory.

``samples.pt`` holds every draw (codes, most probable codes, decoder means); ``samples.png``
shows them: up to :data:`SAMPLES_IN_GRID` images as a grid, or 16 walks for the toy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyro
import torch

from pbridge.config import ToyConfig
from pbridge.samplers import ANCESTRAL, SamplerSettings

from .load import load_run
from .plots import plot_image_grid, plot_toy_samples, sampler_name, weights_name
from .progress import QUIET, Progress
from .run_dir import atomic_write, check_writable
from .sampling import Draws, check_sampler, sample_prior
from .toy import toy_sample_scores

__all__ = ["SAMPLES_IN_GRID", "TOY_WALKS_SHOWN", "sample_run"]

SAMPLES_IN_GRID = 1024
"""At most this many images in ``samples.png`` (``samples.pt`` holds them all)."""
TOY_WALKS_SHOWN = 16
"""Walks in a toy run's ``samples.png``."""


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
    ``samples.pt`` and ``samples.png``. Returns the number, the seconds per draw and, for the
    toy, the draws' transition accuracy (:func:`~.toy.toy_sample_scores`)."""
    run = Path(run_dir)
    loaded = load_run(run, weights=weights, device=device)
    variant = loaded.variant
    check_sampler(variant, sampler)
    check_writable(run)
    torch.manual_seed(seed)
    progress.stage(f"drawing {num:,} samples")
    start = time.perf_counter()
    with pyro.validation_enabled(False):
        draws = sample_prior(variant, num, sampler, progress)
    seconds = time.perf_counter() - start
    with atomic_write(run / "samples.pt") as tmp:
        saved = {"codes": draws.codes, "mode_codes": draws.mode_codes, "x": draws.x_mean}
        torch.save({name: value.cpu() for name, value in saved.items()}, tmp)
    how = f"{sampler_name(sampler)}, {weights_name(loaded.weights)}"
    result: dict[str, Any] = {"num": num, "seconds_per_draw": seconds / num}
    if isinstance(loaded.config, ToyConfig):
        _plot_walks(draws, run / "samples.png", f"sampled walks, {how}")
        result.update(toy_sample_scores(variant, draws))
    else:
        shown = draws.x_mean[:SAMPLES_IN_GRID].cpu()
        title = f"{len(shown)} of {num} prior samples (decoder mean), {how}"
        with atomic_write(run / "samples.png") as tmp:
            plot_image_grid(shown, tmp, title, nrow=max(8, round(len(shown) ** 0.5)))
    return result


def _plot_walks(draws: Draws, path: Path, what: str) -> None:
    shown = draws.x_mean[:TOY_WALKS_SHOWN].cpu()
    with atomic_write(path) as tmp:
        plot_toy_samples(shown, tmp, f"{len(shown)} of {len(draws.x_mean)} {what}")
