"""An image run end to end: data, SVI training, test bits/dim, grids, run directory.

The run directory holds ``config.json``, ``checkpoint.pt``, ``metrics.json``,
``reconstructions.png`` (rows: data, reconstruction) and ``samples.png`` (prior draws).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import pyro
import torch
from torch import nn

from pbridge.codebook import code_usage
from pbridge.config import ImageConfig
from pbridge.data import load_images
from pbridge.likelihoods import bits_per_dim
from pbridge.models.builders import (
    ImageVariant,
    build_image_model,
    build_image_vqvae,
    image_variant,
)
from pbridge.samplers import ANCESTRAL, SamplerSettings

from .distributed import World
from .plots import plot_image_grid, plot_reconstructions, sampler_name, weights_name
from .progress import QUIET, Progress
from .run_dir import (
    CHECKPOINT_FILE,
    LoadedRun,
    atomic_write,
    check_resume,
    check_writable,
    open_run,
    start_run,
    train_in_run,
    write_json,
    write_run_files,
)
from .sampling import sample_posterior, sample_prior
from .svi import TrainResult, estimate_elbo
from .train_hooks import image_grid, training_hooks
from .user_variant import VARIANT_FILE, open_user_run

__all__ = [
    "run_images",
    "test_bits_per_dim",
    "open_image_run",
    "load_image_run",
    "sample_image_run",
]

SAMPLES_IN_GRID = 1024
"""At most this many draws in ``samples.png`` (``samples.pt`` holds them all)."""


@torch.no_grad()
def test_bits_per_dim(
    variant,
    x: torch.Tensor,
    batch_size: int = 250,
    strata: int = 10,
    progress: Progress = QUIET,
) -> tuple[float, float]:
    """Negative ELBO of ``x`` in bits/dim (all terms; discretised likelihood, no dequantisation)
    with ``strata`` stratified chain steps per image (a bridge's), and its standard error over
    batches (shown by ``progress``)."""
    values = []
    starts = range(0, x.shape[0], batch_size)
    for start in progress.iterate(starts, len(starts), "test bound", "batch"):
        batch = x[start : start + batch_size]
        elbo, _ = estimate_elbo(variant, batch, repeats=1, strata=strata)
        values.append(bits_per_dim(-elbo, x[0].numel()))
    tensor = torch.tensor(values)
    stderr = float(tensor.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(tensor.mean()), stderr


def _score(
    variant, test_x: torch.Tensor, out: Path, weights: str, progress: Progress
) -> dict[str, float]:
    """Test bits/dim, codebook usage and reconstruction error of a trained ``variant`` (eval
    mode, its ``weights`` named in the figures) on ``test_x``, and the time of 64 prior draws;
    writes ``reconstructions.png`` and ``samples.png`` to ``out``."""
    progress.stage(
        f"scoring: the test bound on {len(test_x):,} test images, their reconstructions, "
        "then 64 prior samples"
    )
    with pyro.validation_enabled(False):
        bpd, bpd_se = test_bits_per_dim(variant, test_x, progress=progress)
        posterior = sample_posterior(variant, test_x)
        sample_start = time.perf_counter()
        prior = sample_prior(variant, 64, progress=progress)
        sample_seconds = time.perf_counter() - sample_start
    usage = code_usage(posterior.codes, variant.codebook.num_codes)
    with atomic_write(out / "reconstructions.png") as tmp:
        title = f"32 test images and their reconstructions (decoder mean), {weights}"
        plot_reconstructions(test_x[:32].cpu(), posterior.x_mean[:32].cpu(), tmp, title)
    with atomic_write(out / "samples.png") as tmp:
        title = f"64 prior samples (decoder mean), ancestral sampler, {weights}"
        plot_image_grid(prior.x_mean.cpu(), tmp, title)
    return {
        "test_bits_per_dim": bpd,
        "test_bits_per_dim_stderr": bpd_se,
        "codes_used": usage.codes_used,
        "perplexity": usage.perplexity,
        "reconstruction_mse": float((posterior.x_mean - test_x).pow(2).mean()),
        "sampling_seconds_per_image": sample_seconds / 64,
    }


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
    """Train the image variant ``config.variant`` of the registry
    (:data:`~pbridge.models.builders.IMAGE_VARIANTS`) in its stages, score it on the test split,
    write the run (``resume``: continue from the run directory's checkpoints; ``overwrite``:
    replace the run it holds). Nothing is written before the data, the directory and the
    checkpoints are checked."""
    start = time.perf_counter()
    spec = image_variant(config.variant)
    out, dev, world = start_run(out_dir, config, device)
    train_x = load_images(config.dataset, "train", root, download).as_float()
    test_x = load_images(config.dataset, "test", root, download).as_float()
    train_x, test_x = train_x[: config.max_train].to(dev), test_x[: config.eval_items].to(dev)

    # The module trained first: the VQ-VAE of a variant trained in two stages, else the variant.
    first = (build_image_vqvae(config) if spec.pretrains_vqvae else spec.build(config)).to(dev)
    first.initialise_codebook(
        train_x[:1024], torch.Generator(device=dev).manual_seed(config.train.seed)
    )
    if resume:
        _check_resumable(spec, config, first, out)
    write_run_files(out, config, world, resume, overwrite)
    variant, result, train_seconds = _train_stages(
        spec, config, first, (train_x, test_x), out, progress, resume, world
    )
    if not world.is_main:
        return {}
    result.use_ema(variant)
    variant.eval()
    weights = "EMA weights" if result.ema is not None else "raw weights"
    metrics = _score(variant, test_x, out, weights, Progress(progress))
    metrics.update(
        steps=config.train.steps, train_seconds=train_seconds, seconds=time.perf_counter() - start
    )
    write_json(out / "metrics.json", metrics)
    return metrics


def _check_resumable(spec: ImageVariant, config: ImageConfig, first: nn.Module, out: Path) -> None:
    """The run's checkpoints fit ``first`` (:func:`~.run_dir.check_resume`) and, for a variant
    trained in two stages, the variant of its second stage (built aside, the random state
    left as it was)."""
    if not spec.pretrains_vqvae:
        check_resume(first, out / CHECKPOINT_FILE, config)
        return
    check_resume(first, out / "vqvae.pt", config)
    dev = next(first.parameters()).device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        check_resume(spec.build(config), out / CHECKPOINT_FILE, config)


def _train_stages(
    spec: ImageVariant,
    config: ImageConfig,
    first: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    out: Path,
    progress: bool,
    resume: bool,
    world: World,
) -> tuple[nn.Module, TrainResult, float]:
    """Train ``first`` and, for a variant trained in two stages, then the variant on it (the
    VQ-VAE's ``config.vqvae_steps`` steps to ``vqvae.pt``); ``data = (train_x, test_x)``.
    Returns the variant, the result of its training and the seconds of every stage."""
    train_x, test_x = data
    variant, seconds = first, 0.0
    if spec.pretrains_vqvae:
        settings = replace(config.train, steps=config.vqvae_steps)
        stage_one = train_in_run(
            first, train_x, settings, out / "vqvae.pt", config, progress, resume, world
        )
        variant, seconds = spec.on_vqvae(config, first).to(train_x.device), stage_one.seconds
    hooks = training_hooks(config.train, out, test_x, image_grid())
    result = train_in_run(
        variant,
        train_x,
        config.train,
        out / CHECKPOINT_FILE,
        config,
        progress,
        resume,
        world,
        hooks,
    )
    return variant, result, seconds + result.seconds


def open_image_run(
    run_dir: str | Path, device: str = "auto", weights: str | None = None
) -> LoadedRun:
    """An image run directory read back (a variant file's run is rebuilt from its copy of the
    file), with its EMA or raw ``weights`` (:func:`~.run_dir.open_run`)."""
    if (Path(run_dir) / VARIANT_FILE).is_file():
        return open_user_run(run_dir, device, weights)
    return open_run(run_dir, ImageConfig.from_dict, build_image_model, device, weights)


def load_image_run(run_dir: str | Path, device: str = "auto", weights: str | None = None):
    """The config and trained variant of an image run directory (:func:`open_image_run`)."""
    run = open_image_run(run_dir, device, weights)
    return run.config, run.variant


def sample_image_run(
    run_dir: str | Path,
    num: int,
    device: str = "auto",
    seed: int = 0,
    sampler: SamplerSettings = ANCESTRAL,
    weights: str | None = None,
    progress: Progress = QUIET,
) -> dict:
    """Draw ``num`` prior samples by ``sampler`` (steps shown by ``progress``); write
    ``samples.png`` (a grid) and ``samples.pt`` (codes)."""
    run = Path(run_dir)
    _, variant = load_image_run(run, device, weights)
    check_writable(run)
    torch.manual_seed(seed)
    progress.stage(f"drawing {num:,} samples")
    start = time.perf_counter()
    with pyro.validation_enabled(False):
        draws = sample_prior(variant, num, sampler, progress)
    seconds = time.perf_counter() - start
    with atomic_write(run / "samples.png") as tmp:
        shown = draws.x_mean[:SAMPLES_IN_GRID].cpu()
        title = (
            f"{len(shown)} of {num} prior samples (decoder mean), {sampler_name(sampler)}, "
            f"{weights_name(weights)}"
        )
        plot_image_grid(shown, tmp, title, nrow=max(8, round(len(shown) ** 0.5)))
    with atomic_write(run / "samples.pt") as tmp:
        torch.save({"codes": draws.codes.cpu(), "x": draws.x_mean.cpu()}, tmp)
    return {"num": num, "seconds_per_image": seconds / num}
