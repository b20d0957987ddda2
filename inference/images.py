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
from torchvision.utils import save_image

from pbridge.codebook import code_usage
from pbridge.config import ImageConfig
from pbridge.data import load_images
from pbridge.likelihoods import bits_per_dim
from pbridge.models.builders import build_image_model, build_image_vqvae, image_variant
from pbridge.samplers import ANCESTRAL, SamplerSettings

from .run_dir import (
    CHECKPOINT_FILE,
    atomic_write,
    check_resume,
    check_writable,
    load_run,
    start_run,
    train_in_run,
    write_json,
    write_run_files,
)
from .sampling import sample_posterior, sample_prior
from .svi import estimate_elbo
from .train_hooks import image_grid, training_hooks
from .user_variant import VARIANT_FILE, load_user_run

__all__ = ["run_images", "test_bits_per_dim", "load_image_run", "sample_image_run"]

SAMPLES_IN_GRID = 1024
"""At most this many draws in ``samples.png`` (``samples.pt`` holds them all)."""


@torch.no_grad()
def test_bits_per_dim(
    variant, x: torch.Tensor, batch_size: int = 250, strata: int = 10
) -> tuple[float, float]:
    """Negative ELBO of ``x`` in bits/dim (all terms; discretised likelihood, no dequantisation)
    with ``strata`` stratified chain steps per image (a bridge's), and its standard error over
    batches."""
    values = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        elbo, _ = estimate_elbo(variant, batch, repeats=1, strata=strata)
        values.append(bits_per_dim(-elbo, x[0].numel()))
    tensor = torch.tensor(values)
    stderr = float(tensor.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(tensor.mean()), stderr


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
    """Train the image bridge VQ-VAE end to end, score it on the test split, write the run
    (``resume``: continue from the run directory's checkpoint; ``overwrite``: replace the run
    it holds). Nothing is written before the data, the directory and the checkpoints are
    checked."""
    start = time.perf_counter()
    spec = image_variant(config.variant)
    out, dev, world = start_run(out_dir, config, device)
    train_x = load_images(config.dataset, "train", root, download).as_float()
    test_x = load_images(config.dataset, "test", root, download).as_float()
    train_x, test_x = train_x[: config.max_train].to(dev), test_x[: config.eval_items].to(dev)

    generator = torch.Generator(device=dev).manual_seed(config.train.seed)
    two_stage = spec.pretrains_vqvae
    if two_stage:
        vqvae = build_image_vqvae(config).to(dev)
        vqvae.initialise_codebook(train_x[:1024], generator)
    else:  # end to end, or the VQ-VAE alone
        variant = spec.build(config).to(dev)
        variant.initialise_codebook(train_x[:1024], generator)
    if resume:
        if two_stage:
            check_resume(vqvae, out / "vqvae.pt", config)
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                check_resume(spec.build(config), out / CHECKPOINT_FILE, config)
        else:
            check_resume(variant, out / CHECKPOINT_FILE, config)
    write_run_files(out, config, world, resume, overwrite)
    if two_stage:
        vqvae_settings = replace(config.train, steps=config.vqvae_steps)
        stage_one = train_in_run(
            vqvae, train_x, vqvae_settings, out / "vqvae.pt", config, progress, resume, world
        )
        variant = spec.on_vqvae(config, vqvae).to(dev)
    else:
        stage_one = None
    hooks = training_hooks(config.train, out, test_x, image_grid())
    result = train_in_run(
        variant,
        train_x,
        config.train,
        out / "checkpoint.pt",
        config,
        progress,
        resume,
        world,
        hooks,
    )
    if not world.is_main:
        return {}
    result.use_ema(variant)

    variant.eval()
    with pyro.validation_enabled(False):
        bpd, bpd_se = test_bits_per_dim(variant, test_x)
        posterior = sample_posterior(variant, test_x)
        sample_start = time.perf_counter()
        prior = sample_prior(variant, 64)
        sample_seconds = time.perf_counter() - sample_start
    usage = code_usage(posterior.codes, variant.codebook.num_codes)
    with atomic_write(out / "reconstructions.png") as tmp:
        save_image(torch.cat([test_x[:32], posterior.x_mean[:32]]).cpu(), tmp)
    with atomic_write(out / "samples.png") as tmp:
        save_image(prior.x_mean.cpu(), tmp)
    metrics = {
        "test_bits_per_dim": bpd,
        "test_bits_per_dim_stderr": bpd_se,
        "codes_used": usage.codes_used,
        "perplexity": usage.perplexity,
        "reconstruction_mse": float((posterior.x_mean - test_x).pow(2).mean()),
        "steps": config.train.steps,
        "train_seconds": result.seconds + (stage_one.seconds if stage_one else 0.0),
        "sampling_seconds_per_image": sample_seconds / 64,
        "seconds": time.perf_counter() - start,
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def load_image_run(run_dir: str | Path, device: str = "auto", weights: str | None = None):
    """The config and trained variant of an image run directory (a variant file's run is
    rebuilt from its copy of the file), with its EMA or raw ``weights`` (:func:`load_run`)."""
    if (Path(run_dir) / VARIANT_FILE).is_file():
        return load_user_run(run_dir, device, weights)
    return load_run(run_dir, ImageConfig.from_dict, build_image_model, device, weights)


def sample_image_run(
    run_dir: str | Path,
    num: int,
    device: str = "auto",
    seed: int = 0,
    sampler: SamplerSettings = ANCESTRAL,
    weights: str | None = None,
) -> dict:
    """Draw ``num`` prior samples by ``sampler``; write ``samples.png`` (a grid) and
    ``samples.pt`` (codes)."""
    run = Path(run_dir)
    _, variant = load_image_run(run, device, weights)
    check_writable(run)
    torch.manual_seed(seed)
    start = time.perf_counter()
    with pyro.validation_enabled(False):
        draws = sample_prior(variant, num, sampler)
    seconds = time.perf_counter() - start
    with atomic_write(run / "samples.png") as tmp:
        save_image(draws.x_mean[:SAMPLES_IN_GRID].cpu(), tmp)
    with atomic_write(run / "samples.pt") as tmp:
        torch.save({"codes": draws.codes.cpu(), "x": draws.x_mean.cpu()}, tmp)
    return {"num": num, "seconds_per_image": seconds / num}
