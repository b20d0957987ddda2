"""The toy experiment end to end: data, training, scoring, run directory.

A run directory holds ``config.json``, ``checkpoint.pt``, ``metrics.json`` and
``trajectories.png``; ``pbridge sample RUN_DIR`` adds ``samples.pt`` and ``samples.png``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import pyro
import torch

from pbridge.codebook import code_usage, gather_codes
from pbridge.config import ToyConfig
from pbridge.models.builders import build_toy_model
from pbridge.samplers import ANCESTRAL, SamplerSettings
from pbridge.toy import nearest_centroid, sample_walks, transition_accuracy

from .plots import plot_toy_samples, plot_toy_trajectories, sampler_name, weights_name
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
from .sampling import check_sampler, sample_posterior, sample_prior
from .svi import estimate_elbo
from .train_hooks import toy_grid, training_hooks

__all__ = [
    "run_toy",
    "open_toy_run",
    "load_toy_run",
    "score_toy_samples",
    "sample_toy_run",
    "evaluate_toy_run",
]

NUM_EVAL = 2000
EVAL_STEPS_PER_ITEM = 10  # stratified steps per walk when the ELBO is reported


def code_centroids(variant) -> torch.Tensor:
    """The circle centroid that each code decodes to, ``(K,)``."""
    one_cell_items = variant.codebook().unsqueeze(-1)  # (K, d, 1)
    return nearest_centroid(variant.decoder(one_cell_items).mean).squeeze(-1)


def score_toy_samples(
    variant, num: int, sampler: SamplerSettings = ANCESTRAL, progress: Progress = QUIET
) -> dict[str, float]:
    """Transition accuracy of ``num`` prior draws by ``sampler`` (steps shown by ``progress``),
    codes mapped to the centroids they decode to.

    ``transition_accuracy`` reads z_q^0 as the most probable code of the read-out at the
    chain's end; ``transition_accuracy_sampled_zq`` uses z_q^0 as the model draws it.
    """
    draws = sample_prior(variant, num, sampler, progress)
    centroid_of = code_centroids(variant)
    return {
        "transition_accuracy": transition_accuracy(centroid_of[draws.mode_codes]),
        "transition_accuracy_sampled_zq": transition_accuracy(centroid_of[draws.codes]),
        "prior_codes_used": code_usage(draws.mode_codes, variant.codebook.num_codes).codes_used,
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
    (``resume``: continue from the run directory's checkpoint; ``overwrite``: replace the run
    it holds). Nothing is written before the directory and the checkpoint are checked."""
    start = time.perf_counter()
    out, dev, world = start_run(out_dir, config, device)
    seed = config.train.seed
    generator = torch.Generator().manual_seed(seed)
    x_train, _ = sample_walks(config.num_train, config.length, config.noise, generator)
    x_test, _ = sample_walks(NUM_EVAL, config.length, config.noise, generator)
    x_train, x_test = x_train.to(dev), x_test.to(dev)

    variant = build_toy_model(config).to(dev)
    variant.initialise_codebook(x_train[:4096], torch.Generator(device=dev).manual_seed(seed))
    if resume:
        check_resume(variant, out / CHECKPOINT_FILE, config)
    write_run_files(out, config, world, resume, overwrite)
    hooks = training_hooks(config.train, out, x_test, toy_grid())
    result = train_in_run(
        variant,
        x_train,
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
    shown = Progress(progress)
    shown.stage(
        f"scoring: the held-out bound on {len(x_test):,} test walks, then "
        f"{config.num_samples:,} prior draws"
    )
    with pyro.validation_enabled(False):
        elbo, elbo_se = estimate_elbo(variant, x_test, repeats=4, strata=EVAL_STEPS_PER_ITEM)
        posterior = sample_posterior(variant, x_test)
        scores = score_toy_samples(variant, config.num_samples, progress=shown)
    usage = code_usage(posterior.codes, variant.codebook.num_codes)
    metrics = {
        **scores,
        "codes_used": usage.codes_used,
        "perplexity": usage.perplexity,
        "elbo": elbo,
        "elbo_stderr": elbo_se,
        "reconstruction_mse": float((posterior.x_mean - x_test).pow(2).mean()),
        "final_train_loss": sum(result.losses[-100:]) / len(result.losses[-100:]),
        "steps": config.train.steps,
        "train_seconds": result.seconds,
    }
    with torch.no_grad():
        forward, reverse = forward_and_reverse_paths(variant, x_test[:32])
    plot_toy_trajectories(
        x_test[:256].cpu(),
        forward.cpu(),
        reverse.cpu(),
        variant.codebook().detach().cpu(),
        out / "trajectories.png",
    )
    metrics["seconds"] = time.perf_counter() - start
    write_json(out / "metrics.json", metrics)
    return metrics


def open_toy_run(
    run_dir: str | Path, device: str = "auto", weights: str | None = None
) -> LoadedRun:
    """A toy run directory read back, with its EMA or raw ``weights``
    (:func:`~.run_dir.open_run`)."""
    return open_run(run_dir, ToyConfig.from_dict, build_toy_model, device, weights)


def load_toy_run(run_dir: str | Path, device: str = "auto", weights: str | None = None):
    """The config and trained variant of a toy run directory (:func:`open_toy_run`)."""
    run = open_toy_run(run_dir, device, weights)
    return run.config, run.variant


def sample_toy_run(
    run_dir: str | Path,
    num: int,
    device: str = "auto",
    seed: int = 0,
    sampler: SamplerSettings = ANCESTRAL,
    weights: str | None = None,
    progress: Progress = QUIET,
) -> dict:
    """Draw ``num`` prior samples of a toy run by ``sampler`` (steps shown by ``progress``);
    write ``samples.pt`` and ``samples.png``."""
    run = Path(run_dir)
    _, variant = load_toy_run(run, device, weights)
    check_writable(run)
    torch.manual_seed(seed)
    progress.stage(f"drawing {num:,} samples")
    with pyro.validation_enabled(False):
        draws = sample_prior(variant, num, sampler, progress)
    with atomic_write(run / "samples.pt") as tmp:
        torch.save(
            {
                "codes": draws.codes.cpu(),
                "mode_codes": draws.mode_codes.cpu(),
                "x": draws.x_mean.cpu(),
            },
            tmp,
        )
    with atomic_write(run / "samples.png") as tmp:
        title = (
            f"{min(num, 16)} of {num} sampled walks, {sampler_name(sampler)}, "
            f"{weights_name(weights)}"
        )
        plot_toy_samples(draws.x_mean[:16].cpu(), tmp, title)
    centroid_of = code_centroids(variant)
    return {
        "num": num,
        "transition_accuracy": transition_accuracy(centroid_of[draws.mode_codes]),
        "transition_accuracy_sampled_zq": transition_accuracy(centroid_of[draws.codes]),
    }


def evaluate_toy_run(
    run_dir: str | Path,
    settings,
    device: str = "auto",
    sampler: SamplerSettings = ANCESTRAL,
    weights: str | None = None,
    progress: Progress = QUIET,
) -> dict:
    """``pbridge evaluate`` on a toy run: what applies to walks, on the run's own test walks
    (``settings``: an :class:`~pbridge.inference.evaluate.EvalSettings`): the ELBO (nats per
    walk, ``chain_steps`` stratified steps per walk), transition accuracy of
    ``num_samples`` prior draws by ``sampler``, codebook usage and sampling time. Bits/dim,
    the masked-patch figure and FD-FMNIST are image measures (noted in the result). Writes
    ``eval.json``; ``progress`` shows its stages and the chain's steps."""
    run = Path(run_dir)
    config, variant = load_toy_run(run, device, weights)
    check_sampler(variant, sampler)
    check_writable(run)
    dev = next(variant.parameters()).device
    generator = torch.Generator().manual_seed(config.train.seed)  # the run's test walks
    sample_walks(config.num_train, config.length, config.noise, generator)
    x_test, _ = sample_walks(NUM_EVAL, config.length, config.noise, generator)
    x_test = x_test[: settings.bpd_items].to(dev)
    torch.manual_seed(settings.seed)
    pyro.set_rng_seed(settings.seed)
    with pyro.validation_enabled(False):
        progress.stage(f"evaluating the bound on {len(x_test):,} test walks")
        elbo, elbo_se = estimate_elbo(variant, x_test, repeats=4, strata=settings.chain_steps)
        usage = code_usage(sample_posterior(variant, x_test).codes, variant.codebook.num_codes)
        progress.stage(f"drawing {settings.num_samples:,} samples")
        start = time.perf_counter()
        scores = score_toy_samples(variant, settings.num_samples, sampler, progress)
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
