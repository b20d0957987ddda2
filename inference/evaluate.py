"""``pbridge evaluate RUN_DIR``: one protocol for every prior (docs/evaluation.md).

Writes ``eval.json``, ``eval.md`` (a one-row Markdown table), ``inpainting.png`` (rows: items;
columns: masked input, completions, original) and ``eval_samples.png`` to the run directory.

Measures, on the test split:

- bits/dim: the negative ELBO (bridge: ``chain_steps`` stratified chain steps per image) or the
  exact NLL bound (PixelCNN over codes + decoder; uniform prior), same discretised likelihood,
  no dequantisation;
- masked-patch bits per latent cell (:mod:`pbridge.masked_patch`): Monte Carlo over inpainting
  draws for every prior (given the visible cells), plus the exact autoregressive figure for the
  PixelCNN (given the cells before the patch in raster order) and the conditional bound for
  the tight bridge (given every visible cell);
- FD-FMNIST of prior samples (decoder means) against the test split, with two reference
  figures: reconstructions and training images against the same test split
  (:mod:`pbridge.feature_distance`; Fashion-MNIST only);
- codebook usage of the guide's codes over the whole test split;
- bridge variants: where the bound goes, the chain's bits per latent cell by band of steps t;
- sampling time per image.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

from pbridge.codebook import code_usage, gather_codes
from pbridge.data import load_images
from pbridge.feature_distance import (
    CLASSIFIER_DATASET,
    classifier_accuracy,
    fd_fmnist,
    load_classifier,
)
from pbridge.masked_patch import central_patch, patch_bits, patch_bits_monte_carlo
from pbridge.samplers import OnStep, SamplerSettings
from pbridge.variant import AutoregressivePrior, BridgeChain, Inpaints, TakesLabels

from .images import test_bits_per_dim
from .plots import plot_image_grid, plot_image_table, sampler_name
from .progress import QUIET, Progress
from .run_dir import LoadedRun, write_json
from .sampling import chain_progress, check_sampler, sample_posterior, sample_prior

__all__ = [
    "EvalSettings",
    "evaluate_images",
    "results_table",
    "chain_bits_by_step",
    "masked_patch_scores",
]


@dataclass(frozen=True)
class EvalSettings:
    """How much of the protocol to run.

    Attributes:
        bpd_items: test images scored for bits/dim.  chain_steps: stratified chain steps per
            image in the bridge's bound (:func:`~pbridge.bridge_prior.stratified_steps`).
        num_samples: prior samples per FD-FMNIST figure (and for the sampling time).
        fd_draws: independent sets of ``num_samples`` prior samples; FD-FMNIST is reported as
            the mean over the sets and its standard error.
        patch_items / patch_draws: test items and inpainting draws per item of the masked-patch
            estimate.
        seed: seed of every draw.
    """

    bpd_items: int = 1000
    chain_steps: int = 100
    num_samples: int = 500
    fd_draws: int = 3
    patch_items: int = 64
    patch_draws: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name != "seed" and value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")


BATCH_SIZE = 250
"""Items per network call when scoring."""


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def _posterior_codes(variant, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [
            sample_posterior(variant, x[i : i + batch_size]).codes
            for i in range(0, len(x), batch_size)
        ]
    )


def _inpainting_grid(variant, x, codes, known, completions, path: Path) -> None:
    """Rows: items; columns: the data with the patch's pixels grey, completions, the data."""
    scale = x.shape[-1] // codes.shape[-1]
    hidden = (~known).repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    hidden = F.pad(hidden, (0, x.shape[-1] - hidden.shape[-1], 0, x.shape[-2] - hidden.shape[-2]))
    masked = torch.where(hidden[:, None], torch.full_like(x, 0.5), x)
    book = variant.codebook()
    decoded = [variant.decoder(gather_codes(c, book)).mean for c in completions]
    frames = torch.stack([masked, *decoded, x], dim=1)
    names = ["input, patch grey", *(f"completion {i + 1}" for i in range(len(decoded)))]
    title = f"inpainting the central latent patch of {len(x)} test images"
    plot_image_table(frames.cpu(), path, title, [*names, "original"])


def _inpaint(
    variant,
    codes: torch.Tensor,
    known: torch.Tensor,
    sampler: SamplerSettings,
    on_step: OnStep | None = None,
):
    """``variant.inpaint``: a bridge's chain drawn by ``sampler``; the other priors draw their
    own way (and take only the default sampler, :func:`check_sampler`). ``on_step(done,
    total)`` is told the draw's progress (the chain's steps, an autoregressive prior's cells)."""
    if isinstance(variant, BridgeChain):
        return variant.inpaint(codes, known, sampler, on_step=on_step)
    return variant.inpaint(codes, known, on_step=on_step)


@torch.no_grad()
def masked_patch_scores(
    variant,
    x: torch.Tensor,
    settings: EvalSettings,
    sampler: SamplerSettings,
    out: Path,
    progress: Progress = QUIET,
) -> dict:
    """Masked-patch bits per latent cell of the items ``x`` (the central patch of their codes)
    and ``inpainting.png`` (``out``), for a variant that inpaints
    (:class:`~pbridge.variant.Inpaints`): the Monte Carlo figure of ``settings.patch_draws``
    completions by ``sampler`` (given the visible cells), the PixelCNN's exact figure (given the
    cells before the patch in raster order) and the tight bridge's conditional bound (given the
    visible cells, ``settings.chain_steps`` strata; docs/maths.md s. 7). For another variant,
    ``None`` and a note saying why. ``progress`` shows each draw's steps
    (:func:`.sampling.chain_progress`)."""
    if not isinstance(variant, Inpaints):
        return {
            "masked_patch_bits_per_cell": None,
            "masked_patch_bits_per_cell_stderr": None,
            "masked_patch_note": f"a {type(variant).__name__} does not inpaint (no inpaint())",
        }
    codes = sample_posterior(variant, x).codes
    patch = central_patch(tuple(codes.shape[1:])).to(codes.device)
    known = (~patch).expand_as(codes)
    n = settings.patch_draws
    draws = [
        _inpaint(
            variant,
            codes,
            known,
            sampler,
            chain_progress(variant, sampler, progress, f"inpainting, draw {i} of {n}"),
        )
        for i in range(1, n + 1)
    ]
    probs = torch.stack([p for _, p in draws])
    bits = patch_bits_monte_carlo(codes, probs, patch, PATCH_FLOOR)
    mean, stderr = _mean_and_stderr(bits)
    result = {
        "masked_patch_bits_per_cell": mean,
        "masked_patch_bits_per_cell_stderr": stderr,
        "patch_cells": int(patch.sum()),
        "patch_items": x.shape[0],
        "patch_draws": settings.patch_draws,
        "patch_floor": PATCH_FLOOR,
    }
    if isinstance(variant, AutoregressivePrior):
        exact = patch_bits(variant.code_log_prob_per_cell(codes), patch)
        mean, stderr = _mean_and_stderr(exact)
        result["masked_patch_bits_per_cell_exact"] = mean
        result["masked_patch_bits_per_cell_exact_stderr"] = stderr
    if _bounds_cells(variant):
        shares = variant.code_bound_per_cell(codes, settings.chain_steps)
        mean, stderr = _mean_and_stderr(patch_bits(shares, patch))
        result["masked_patch_conditional_bound_bits_per_cell"] = mean
        result["masked_patch_conditional_bound_bits_per_cell_stderr"] = stderr
    items = min(8, x.shape[0])
    completions = [c[:items] for c, _ in draws]
    _inpainting_grid(variant, x[:items], codes[:items], known[:items], completions, out)
    return result


def _bounds_cells(variant) -> bool:
    """Whether ``variant``'s bound splits over the cells: the tight bridge, unlabelled."""
    splits = getattr(variant, "splits_bound_over_cells", False)
    return isinstance(variant, BridgeChain) and splits and not isinstance(variant, TakesLabels)


PATCH_FLOOR = 0.01  # the uniform share of the masked-patch predictive (pbridge.masked_patch)
CHAIN_BANDS = ((1, 1), (2, 5), (6, 20), (21, 50), (51, 100), (101, 200), (201, 400), (401, 1000))


@torch.no_grad()
def chain_bits_by_step(variant, x: torch.Tensor, per_band: int = 8) -> dict:
    """Where the bridge's bound goes, in bits per latent cell: the chain terms of the guide's
    latent for ``x`` summed over bands of steps t (each band's mean over ``per_band`` evenly
    spaced steps times its width), plus L_T. Tight: the terms of the guide's codes, t = 1 the
    read-out's -log p(k | z^1). Paper: the terms of the guide's z_e^0, t = 1 is
    -log p(z^0 | z^1) (negative when the chain reconstructs z^0 sharply), and the guide's
    log-density log q(z_e^0 | x) besides."""
    posterior = sample_posterior(variant, x)
    prior, num_steps = variant.prior(x.shape[0]), variant.schedule.num_steps
    # The value the prior scores: the guide's z_e^0 where it draws one, else the codes' e_k.
    guide_draws = posterior.z_e is not None
    z0 = posterior.z_e if guide_draws else gather_codes(posterior.codes, variant.codebook())

    def term(t: torch.Tensor) -> torch.Tensor:
        return prior.step_terms(z0, t)

    cells = z0[0, 0].numel() * math.log(2)
    bands = {}
    for low, high in CHAIN_BANDS:
        if low > num_steps:
            break
        high = min(high, num_steps)
        steps = torch.linspace(low, high, min(per_band, high - low + 1)).round().long()
        terms = [term(torch.full((len(x),), int(t), device=x.device)) for t in steps]
        bands[f"{low}-{high}"] = float(torch.stack(terms).mean()) * (high - low + 1) / cells
    result = {
        "chain_bits_per_cell_by_step": bands,
        "prior_kl_bits_per_cell": float(variant.schedule.prior_kl(z0).mean()) / cells,
    }
    if guide_draws:
        d = z0.shape[1]
        log_q = -0.5 * math.log(2 * math.pi * math.e) * d - d * math.log(variant.encoder_scale())
        result["guide_log_density_bits_per_cell"] = log_q / math.log(2)
    return result


def _feature_distances(draws, recon, train_x, test_x, test_labels, dataset: str) -> dict:
    """FD-FMNIST of every set of prior samples in ``draws`` (mean and standard error over the
    sets), of reconstructions and of training images against the test split."""
    if dataset != CLASSIFIER_DATASET:
        return {"fd_fmnist": None, "fd_note": f"FD-FMNIST needs Fashion-MNIST, not {dataset}"}
    net = load_classifier().to(test_x.device)
    n = draws[0].shape[0]
    per_draw = torch.tensor([fd_fmnist(samples, test_x, net) for samples in draws])
    stderr = float(per_draw.std() / math.sqrt(len(draws))) if len(draws) > 1 else None
    return {
        "fd_fmnist": float(per_draw.mean()),
        "fd_fmnist_stderr": stderr,
        "fd_fmnist_per_draw": per_draw.tolist(),
        "fd_fmnist_reconstructions": fd_fmnist(recon[:n], test_x, net),
        "fd_fmnist_train_images": fd_fmnist(train_x[:n], test_x, net),
        "classifier_test_accuracy": classifier_accuracy(net, test_x, test_labels),
    }


def evaluate_images(
    loaded: LoadedRun,
    run_dir: str | Path,
    settings: EvalSettings,
    root: str | Path | None,
    sampler: SamplerSettings,
    progress: Progress,
    variant_name: str,
) -> dict:
    """Run the protocol on ``loaded``, an opened image run (a registry variant's or a variant
    file's, named ``variant_name`` in the result), whose directory is ``run_dir``; returns and
    writes ``eval.json``/``eval.md``. ``sampler``: the bridge's sampler for prior draws and
    inpainting; ``progress`` shows each stage, the bound's batches and the chain's steps. Any
    run: :func:`~.run_kinds.evaluate_run`."""
    run = Path(run_dir)
    config, variant = loaded.config, loaded.variant
    check_sampler(variant, sampler)
    dev = next(variant.parameters()).device
    test = load_images(config.dataset, "test", root)
    test_x = test.as_float().to(dev)
    timings: dict[str, float] = {}
    result: dict = {
        "variant": variant_name,
        "dataset": config.dataset,
        "settings": asdict(settings),
        "sampler": asdict(sampler),
    }
    torch.manual_seed(settings.seed)
    pyro.set_rng_seed(settings.seed)
    with pyro.validation_enabled(False):
        start = time.perf_counter()
        bpd_x = test_x[: settings.bpd_items]
        progress.stage(f"evaluating the test bound on {len(bpd_x):,} test images")
        batch = max(1, min(BATCH_SIZE, settings.bpd_items // 4))  # >= 4 batches: s.e.
        bpd, bpd_se = test_bits_per_dim(variant, bpd_x, batch, settings.chain_steps, progress)
        result.update(test_bits_per_dim=bpd, test_bits_per_dim_stderr=bpd_se)
        timings["bits_per_dim"] = time.perf_counter() - start

        if isinstance(variant, BridgeChain):
            result.update(chain_bits_by_step(variant, test_x[: min(200, settings.bpd_items)]))

        codes = _posterior_codes(variant, test_x, BATCH_SIZE)
        usage = code_usage(codes, variant.codebook.num_codes)
        result.update(codes_used=usage.codes_used, perplexity=usage.perplexity)

        start = time.perf_counter()
        patch_x = test_x[: settings.patch_items]
        progress.stage(
            f"inpainting the central patch of {len(patch_x):,} test images, "
            f"{settings.patch_draws} draws each"
        )
        picture = run / "inpainting.png"
        result.update(masked_patch_scores(variant, patch_x, settings, sampler, picture, progress))
        timings["masked_patch"] = time.perf_counter() - start

        progress.stage(f"drawing {settings.fd_draws} x {settings.num_samples:,} samples")
        start = time.perf_counter()
        draws = [
            sample_prior(variant, settings.num_samples, sampler, progress).x_mean
            for _ in range(settings.fd_draws)
        ]
        seconds = time.perf_counter() - start
        result["sampling_seconds_per_image"] = seconds / (settings.num_samples * settings.fd_draws)
        title = f"64 of {settings.num_samples} prior samples, {sampler_name(sampler)}"
        plot_image_grid(draws[0][:64].cpu(), run / "eval_samples.png", title)

        start = time.perf_counter()
        recon = sample_posterior(variant, test_x[: settings.num_samples]).x_mean
    train_x = load_images(config.dataset, "train", root).as_float()[: settings.num_samples]
    distances = _feature_distances(
        draws, recon, train_x.to(dev), test_x, test.labels.to(dev), config.dataset
    )
    result.update(distances)
    timings["feature_distance"] = time.perf_counter() - start
    result["seconds"] = timings
    _write_results(run, result)
    return result


def _write_results(run: Path, result: dict) -> None:
    """``eval.json`` and ``eval.md`` of ``run``, with the run's training time when known."""
    metrics_file = run / "metrics.json"
    if metrics_file.is_file():
        result["train_seconds"] = json.loads(metrics_file.read_text()).get("train_seconds")
    write_json(run / "eval.json", result)
    (run / "eval.md").write_text(results_table({run.name: result}))


def _cell(value, stderr=None, digits: int = 2) -> str:
    """``value ± stderr``; ``n/a`` without a value, the value alone without a standard error
    (``None``, as eval.json writes one of a single batch, or NaN)."""
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    known = stderr is not None and math.isfinite(stderr)
    return f"{text} ± {stderr:.{digits}f}" if known else text


def results_table(results: dict[str, dict]) -> str:
    """A Markdown table, one row per named ``eval.json`` result."""
    lines = [
        "| model | bits/dim | masked-patch bits/cell: Monte Carlo (exact raster-order "
        "/ conditional bound) | FD-FMNIST | codes used | "
        "train time (s) | sampling (s/image) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        patch = _cell(r["masked_patch_bits_per_cell"], r["masked_patch_bits_per_cell_stderr"])
        if "masked_patch_bits_per_cell_exact" in r:
            patch += f" (exact {_cell(r['masked_patch_bits_per_cell_exact'])})"
        if "masked_patch_conditional_bound_bits_per_cell" in r:
            bound = r["masked_patch_conditional_bound_bits_per_cell"]
            patch += f" (conditional bound {_cell(bound)})"
        train = r.get("train_seconds")
        lines.append(
            f"| {name} | {_cell(r['test_bits_per_dim'], r['test_bits_per_dim_stderr'])} | "
            f"{patch} | {_cell(r.get('fd_fmnist'), r.get('fd_fmnist_stderr'), 1)} | "
            f"{r['codes_used']} | "
            f"{'n/a' if train is None else f'{train:.0f}'} | "
            f"{r['sampling_seconds_per_image']:.3f} |"
        )
    return "\n".join(lines) + "\n"
