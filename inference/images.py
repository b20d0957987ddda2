"""An image run end to end: data, SVI training, test bits/dim, grids, run directory.

The run directory holds ``config.json``, ``checkpoint.pt``, ``metrics.json``,
``reconstructions.png`` (rows: data, reconstruction) and ``samples.png`` (prior draws).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import pyro
import torch

from pbridge.codebook import code_usage
from pbridge.config import ImageConfig
from pbridge.data import load_images
from pbridge.likelihoods import bits_per_dim
from pbridge.models.builders import build_image_model, build_image_vqvae, image_variant
from pbridge.samplers import SamplerSettings
from pbridge.variant import TakesLabels

from .bound import Batch, estimate_elbo
from .pipeline import Recipe, RunData, Stage, run
from .plots import plot_image_grid, plot_reconstructions, sampler_name, weights_name
from .progress import QUIET, Progress
from .run_dir import (
    CHECKPOINT_FILE,
    VQVAE_FILE,
    LoadedRun,
    atomic_write,
    open_run,
)
from .sampling import sample_posterior, sample_prior, write_prior_draws
from .train_hooks import image_grid

__all__ = [
    "run_images",
    "image_data",
    "image_stages",
    "score_images",
    "test_bits_per_dim",
    "open_image_run",
    "sample_image_run",
    "SAMPLES_IN_GRID",
]

SAMPLES_IN_GRID = 1024
"""At most this many images in the ``samples.png`` of ``pbridge sample`` (``samples.pt``
holds them all)."""

SAMPLES_PER_CLASS = 8
"""Prior draws per class in the ``samples.png`` of a variant that takes labels."""


@torch.no_grad()
def test_bits_per_dim(
    variant,
    data: Batch,
    batch_size: int = 250,
    strata: int = 10,
    progress: Progress = QUIET,
) -> tuple[float, float]:
    """Negative ELBO of the images ``data`` (``x`` or ``(x, y)``) in bits/dim (all terms;
    discretised likelihood, no dequantisation) with ``strata`` stratified chain steps per image
    (a bridge's), and its standard error over batches (shown by ``progress``)."""
    args = data if isinstance(data, tuple) else (data,)
    values = []
    starts = range(0, args[0].shape[0], batch_size)
    for start in progress.iterate(starts, len(starts), "test bound", "batch"):
        batch = tuple(t[start : start + batch_size] for t in args)
        elbo, _ = estimate_elbo(variant, batch, repeats=1, strata=strata)
        values.append(bits_per_dim(-elbo, args[0][0].numel()))
    tensor = torch.tensor(values)
    stderr = float(tensor.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(tensor.mean()), stderr


def image_data(
    config: ImageConfig, root: str | Path | None = None, download: bool = False
) -> RunData:
    """The first ``config.max_train`` training and ``config.eval_items`` test images of
    ``config.dataset`` in [0, 1], with their labels (:func:`~pbridge.data.load_images`)."""
    train = load_images(config.dataset, "train", root, download)
    test = load_images(config.dataset, "test", root, download)
    rows, test_rows = slice(config.max_train), slice(config.eval_items)
    return RunData(
        train.as_float()[rows],
        test.as_float()[test_rows],
        train.labels[rows],
        test.labels[test_rows],
    )


def _prior_grid(variant, out: Path, weights: str) -> int:
    """``samples.png``: 64 prior draws, or :data:`SAMPLES_PER_CLASS` per class (one row each)
    for a :class:`~pbridge.variant.TakesLabels` variant; decoder means. Returns the number of
    draws."""
    with atomic_write(out / "samples.png") as tmp:
        if isinstance(variant, TakesLabels):
            classes = torch.arange(variant.num_classes, device=next(variant.parameters()).device)
            samples = variant.sample_class(classes.repeat_interleave(SAMPLES_PER_CLASS))
            title = (
                f"{SAMPLES_PER_CLASS} prior samples per class (rows: classes 0, 1, ...), {weights}"
            )
            plot_image_grid(samples.cpu(), tmp, title, nrow=SAMPLES_PER_CLASS)
        else:
            samples = sample_prior(variant, 64).x_mean
            title = f"64 prior samples (decoder mean), ancestral sampler, {weights}"
            plot_image_grid(samples.cpu(), tmp, title)
    return len(samples)


def score_images(
    variant, data: RunData, out: Path, weights: str, progress: Progress
) -> dict[str, float]:
    """Test bits/dim, codebook usage and reconstruction error of a trained ``variant`` (eval
    mode, its ``weights`` named in the figures) on the test split of ``data``, and the time of
    its prior samples; writes ``reconstructions.png`` and ``samples.png`` to ``out``."""
    args = data.test(variant)
    progress.stage(
        f"scoring: the test bound on {len(args[0]):,} test images, their reconstructions, "
        "then prior samples"
    )
    with pyro.validation_enabled(False):
        bpd, bpd_se = test_bits_per_dim(variant, args, progress=progress)
        posterior = sample_posterior(variant, *args)
        sample_start = time.perf_counter()
        num = _prior_grid(variant, out, weights)
        sample_seconds = time.perf_counter() - sample_start
    usage = code_usage(posterior.codes, variant.codebook.num_codes)
    with atomic_write(out / "reconstructions.png") as tmp:
        title = f"32 test images and their reconstructions (decoder mean), {weights}"
        plot_reconstructions(args[0][:32].cpu(), posterior.x_mean[:32].cpu(), tmp, title)
    return {
        "test_bits_per_dim": bpd,
        "test_bits_per_dim_stderr": bpd_se,
        "codes_used": usage.codes_used,
        "perplexity": usage.perplexity,
        "reconstruction_mse": float((posterior.x_mean - args[0]).pow(2).mean()),
        "sampling_seconds_per_image": sample_seconds / num,
    }


def image_stages(config: ImageConfig) -> list[Stage]:
    """The training stages of ``config.variant`` (:data:`~pbridge.models.builders.IMAGE_VARIANTS`):
    the variant; or, for a variant that pretrains its VQ-VAE and ``config.vqvae_steps > 0``, the
    VQ-VAE for ``config.vqvae_steps`` steps to ``vqvae.pt``, then the variant built on it
    (frozen, or trained on by the end-to-end variant)."""
    spec = image_variant(config.variant)
    variant = Stage(CHECKPOINT_FILE, config.train.steps, partial(spec.build, config))
    if not spec.pretrains_vqvae or config.vqvae_steps == 0:
        return [variant]
    vqvae = Stage(VQVAE_FILE, config.vqvae_steps, partial(build_image_vqvae, config))
    return [vqvae, replace(variant, on_previous=partial(spec.on_vqvae, config))]


def run_images(
    config: ImageConfig,
    out_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    root: str | Path | None = None,
    download: bool = False,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, float]:
    """Train the image variant ``config.variant`` of the registry in its stages
    (:func:`image_stages`), score it on the test split and write the run
    (:func:`~.pipeline.run`; ``resume``: continue from the run directory's checkpoints;
    ``overwrite``: replace the run it holds)."""
    recipe = Recipe(
        config=config,
        data=partial(image_data, config, root, download),
        stages=image_stages(config),
        score=score_images,
        plot_samples=image_grid(),
    )
    return run(recipe, out_dir, device, progress, resume, overwrite)


def open_image_run(
    run_dir: str | Path, device: str = "auto", weights: str | None = None
) -> LoadedRun:
    """An image run directory of a registry variant read back, with its EMA or raw ``weights``
    (:func:`~.run_dir.open_run`)."""
    return open_run(run_dir, ImageConfig, build_image_model, device, weights)


def sample_image_run(
    loaded: LoadedRun, run: Path, num: int, sampler: SamplerSettings, progress: Progress
) -> dict:
    """``num`` prior draws of an opened image run (a variant file's included) by ``sampler``:
    ``samples.pt`` and a grid of up to :data:`SAMPLES_IN_GRID` decoder means in
    ``samples.png``."""
    with pyro.validation_enabled(False):
        draws, result = write_prior_draws(
            loaded.variant, run / "samples.pt", num, sampler, progress
        )
    shown = draws.x_mean[:SAMPLES_IN_GRID].cpu()
    how = f"{sampler_name(sampler)}, {weights_name(loaded.weights)}"
    title = f"{len(shown)} of {num} prior samples (decoder mean), {how}"
    with atomic_write(run / "samples.png") as tmp:
        plot_image_grid(shown, tmp, title, nrow=max(8, round(len(shown) ** 0.5)))
    return result
