"""The toy experiment end to end: data, training, scoring, run directory.

A run directory holds ``config.json``, ``checkpoint.pt``, ``metrics.json`` and
``trajectories.png``; ``pbridge sample RUN_DIR`` adds ``samples.pt`` and ``samples.png``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pyro
import torch

from pbridge.codebook import code_usage, gather_codes
from pbridge.config import ToyConfig
from pbridge.models.builders import build_toy_model
from pbridge.samplers import ANCESTRAL, SamplerSettings
from pbridge.toy import nearest_centroid, sample_walks, transition_accuracy

from .bound import estimate_elbo
from .pipeline import Recipe, RunData, Stage, run
from .plots import plot_toy_samples, plot_toy_trajectories, sampler_name, weights_name
from .progress import QUIET, Progress
from .run_dir import (
    CHECKPOINT_FILE,
    LoadedRun,
    atomic_write,
    check_writable,
    open_run,
    write_json,
)
from .sampling import Draws, check_sampler, sample_posterior, sample_prior, write_prior_draws
from .train_hooks import toy_grid

__all__ = [
    "run_toy",
    "open_toy_run",
    "toy_data",
    "toy_sample_scores",
    "evaluate_toy_run",
    "sample_toy_run",
    "TOY_WALKS_SHOWN",
]

TOY_WALKS_SHOWN = 16
"""Walks in the ``samples.png`` of ``pbridge sample``."""

NUM_EVAL = 2000
EVAL_STEPS_PER_ITEM = 10  # stratified steps per walk when the ELBO is reported


def code_centroids(variant) -> torch.Tensor:
    """The circle centroid that each code decodes to, ``(K,)``."""
    one_cell_items = variant.codebook().unsqueeze(-1)  # (K, d, 1)
    return nearest_centroid(variant.decoder(one_cell_items).mean).squeeze(-1)


def toy_sample_scores(variant, draws: Draws) -> dict[str, float]:
    """Transition accuracy of the prior ``draws`` of ``variant``, codes mapped to the centroids
    they decode to, and the number of codes they use.

    ``transition_accuracy`` reads z_q^0 as the most probable code of the read-out at the
    chain's end; ``transition_accuracy_sampled_zq`` uses z_q^0 as the model draws it.
    """
    centroid_of = code_centroids(variant)
    return {
        "transition_accuracy": transition_accuracy(centroid_of[draws.mode_codes]),
        "transition_accuracy_sampled_zq": transition_accuracy(centroid_of[draws.codes]),
        "prior_codes_used": code_usage(draws.mode_codes, variant.codebook.num_codes).codes_used,
    }


def toy_data(config: ToyConfig) -> RunData:
    """The run's walks ``(N, 1, length)``, drawn from ``config.train.seed``: the training
    walks, then :data:`NUM_EVAL` test walks (the same ones for every command on the run)."""
    generator = torch.Generator().manual_seed(config.train.seed)
    x_train, _ = sample_walks(config.num_train, config.length, config.noise, generator)
    x_test, _ = sample_walks(NUM_EVAL, config.length, config.noise, generator)
    return RunData(x_train, x_test)


def _score(
    config: ToyConfig, variant, data: RunData, out: Path, weights: str, progress: Progress
) -> dict[str, float]:
    """The held-out ELBO, the transition accuracy of ``config.num_samples`` prior draws,
    codebook usage and reconstruction error of a trained toy ``variant``; writes
    ``trajectories.png``."""
    x_test = data.test_x
    progress.stage(
        f"scoring: the held-out bound on {len(x_test):,} test walks, then "
        f"{config.num_samples:,} prior draws"
    )
    with pyro.validation_enabled(False):
        elbo, elbo_se = estimate_elbo(variant, x_test, repeats=4, strata=EVAL_STEPS_PER_ITEM)
        posterior = sample_posterior(variant, x_test)
        scores = toy_sample_scores(
            variant, sample_prior(variant, config.num_samples, ANCESTRAL, progress)
        )
    usage = code_usage(posterior.codes, variant.codebook.num_codes)
    with torch.no_grad():
        forward, reverse = forward_and_reverse_paths(variant, x_test[:32])
    plot_toy_trajectories(
        x_test[:256].cpu(),
        forward.cpu(),
        reverse.cpu(),
        variant.codebook().detach().cpu(),
        out / "trajectories.png",
    )
    return {
        **scores,
        "codes_used": usage.codes_used,
        "perplexity": usage.perplexity,
        "elbo": elbo,
        "elbo_stderr": elbo_se,
        "reconstruction_mse": float((posterior.x_mean - x_test).pow(2).mean()),
    }


def run_toy(
    config: ToyConfig,
    out_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, float]:
    """Train the toy bridge VQ-VAE end to end, score it and write the run directory
    (:func:`~.pipeline.run`; ``resume``: continue from the run directory's checkpoint;
    ``overwrite``: replace the run it holds)."""
    recipe = Recipe(
        config=config,
        data=lambda: toy_data(config),
        stages=[Stage(CHECKPOINT_FILE, config.train.steps, lambda: build_toy_model(config))],
        score=partial(_score, config),
        plot_samples=toy_grid(),
        init_items=4096,
    )
    return run(recipe, out_dir, device, progress, resume, overwrite)


def open_toy_run(
    run_dir: str | Path, device: str = "auto", weights: str | None = None
) -> LoadedRun:
    """A toy run directory read back, with its EMA or raw ``weights``
    (:func:`~.run_dir.open_run`)."""
    return open_run(run_dir, ToyConfig, build_toy_model, device, weights)


def evaluate_toy_run(
    loaded: LoadedRun,
    run_dir: str | Path,
    settings,
    sampler: SamplerSettings = ANCESTRAL,
    progress: Progress = QUIET,
) -> dict:
    """``pbridge evaluate`` on ``loaded``, an opened toy run whose directory is ``run_dir``:
    what applies to walks, on the run's own test walks (``settings``: an
    :class:`~pbridge.inference.evaluate.EvalSettings`): the ELBO (nats per walk,
    ``chain_steps`` stratified steps per walk), transition accuracy of ``num_samples`` prior
    draws by ``sampler``, codebook usage and sampling time. Bits/dim, the masked-patch figure
    and FD-FMNIST are image measures (noted in the result). Writes ``eval.json``;
    ``progress`` shows its stages and the chain's steps. Any run:
    :func:`~.run_kinds.evaluate_run`."""
    run = Path(run_dir)
    config, variant = loaded.config, loaded.variant
    check_sampler(variant, sampler)
    check_writable(run)
    dev = next(variant.parameters()).device
    x_test = toy_data(config).test_x[: settings.bpd_items].to(dev)
    torch.manual_seed(settings.seed)
    pyro.set_rng_seed(settings.seed)
    with pyro.validation_enabled(False):
        progress.stage(f"evaluating the bound on {len(x_test):,} test walks")
        elbo, elbo_se = estimate_elbo(variant, x_test, repeats=4, strata=settings.chain_steps)
        usage = code_usage(sample_posterior(variant, x_test).codes, variant.codebook.num_codes)
        progress.stage(f"drawing {settings.num_samples:,} samples")
        start = time.perf_counter()
        draws = sample_prior(variant, settings.num_samples, sampler, progress)
        scores = toy_sample_scores(variant, draws)
        seconds = time.perf_counter() - start
    result = {
        "variant": "toy",
        "sampler": asdict(sampler),
        "elbo": elbo,
        "elbo_stderr": elbo_se,
        "test_items": x_test.shape[0],
        **scores,
        "codes_used": usage.codes_used,
        "perplexity": usage.perplexity,
        "sampling_seconds_per_item": seconds / settings.num_samples,
        "not_applicable": "bits/dim, masked-patch bits and FD-FMNIST are image measures",
    }
    write_json(run / "eval.json", result)
    return result


def sample_toy_run(
    loaded: LoadedRun, run: Path, num: int, sampler: SamplerSettings, progress: Progress
) -> dict:
    """``num`` prior draws of an opened toy run by ``sampler``: ``samples.pt``, the first
    :data:`TOY_WALKS_SHOWN` walks in ``samples.png``, and their transition accuracy
    (:func:`toy_sample_scores`)."""
    with pyro.validation_enabled(False):
        draws, result = write_prior_draws(
            loaded.variant, run / "samples.pt", num, sampler, progress
        )
    shown = draws.x_mean[:TOY_WALKS_SHOWN].cpu()
    how = f"{sampler_name(sampler)}, {weights_name(loaded.weights)}"
    with atomic_write(run / "samples.png") as tmp:
        plot_toy_samples(shown, tmp, f"{len(shown)} of {num} sampled walks, {how}")
    return {**result, **toy_sample_scores(loaded.variant, draws)}


def forward_and_reverse_paths(variant, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent paths for plots, ``(T+1, N, d, L)`` each: the forward OU process simulated with
    torchsde from the guide's z_e^0 of ``x``, and the model's backward chain from z_e^T."""
    schedule = variant.schedule
    posterior = sample_posterior(variant, x)
    z0 = (
        posterior.z_e
        if posterior.z_e is not None
        else gather_codes(posterior.codes, variant.codebook())
    )
    sde = schedule.sde()
    forward = sde.simulate(z0.flatten(1), schedule.times, dt=float(schedule.deltas.min()) / 4)
    forward = forward.view(-1, *z0.shape)
    steps = tuple(range(schedule.num_steps + 1))
    kept = variant.chain_states(schedule.stationary_draw(z0), steps)
    reverse = torch.stack([kept[t] for t in steps])
    return forward, reverse
