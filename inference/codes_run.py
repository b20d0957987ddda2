"""``pbridge train CODES.pt``: the bridge prior fitted to codes you bring (docs/codes.md).

The codes file is ``torch.save({"codes": k, "codebook": e}, "codes.pt")`` with integer code
indices ``k: (N, *cells)`` and their embedding ``e: (K, d)``, which stays fixed. Its last
``test_items`` items are held out; the rest train a :class:`~pbridge.models.code_prior.
BridgeCodeModel` by SVI on its bound (the same pipeline as every run, :mod:`.pipeline`).

A run directory holds ``config.json`` (with the file's path and SHA-256, checked whenever
the file is read again), ``environment.json``, ``checkpoint.pt``, ``train.csv`` and
``metrics.json``; ``pbridge sample RUN`` adds ``samples.pt`` (the drawn codes) and
``samples.png``, ``pbridge evaluate RUN`` ``eval.json``, ``pbridge analyze RUN``
``analysis.nc`` with its plots. Bounds are in bits per cell.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import time
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path

import arviz as az
import numpy as np
import pyro
import torch
from matplotlib.figure import Figure
from torch import nn

from pbridge.codebook import code_usage, gather_codes
from pbridge.config import CODES_FILE_SETTINGS, CodesConfig
from pbridge.config_overrides import apply_overrides
from pbridge.models.builders import build_chain_network
from pbridge.models.code_prior import BridgeCodeModel
from pbridge.ou_bridge import image_schedule
from pbridge.samplers import ANCESTRAL, SamplerSettings

from .analysis import add_training
from .pipeline import Recipe, RunData, Stage, run
from .plots import plot_code_usage, plot_elbo_trace, sampler_name, weights_name
from .progress import QUIET, Progress
from .run_dir import CHECKPOINT_FILE, LoadedRun, atomic_write, check_writable, open_run, write_json
from .sampling import chain_progress, check_sampler

__all__ = [
    "read_codes_file",
    "codes_config",
    "codes_data",
    "build_codes_model",
    "run_codes",
    "open_codes_run",
    "bound_bits_per_cell",
    "evaluate_codes_run",
    "sample_codes_run",
    "analyze_codes_run",
    "plot_code_draws",
]

BATCH_SIZE = 250
"""Items per call when scoring the bound."""
DRAWS_SHOWN = 64
"""Draws in ``samples.png``."""


def read_codes_file(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes ``(N, *cells)`` int64 and codebook ``(K, d)`` float32 of a codes file, every
    fault named in one ``ValueError`` with the file: not readable by ``torch.load`` (tensors
    only), not a dict with those two entries, codes that are not integers or fall outside the
    codebook, a codebook that is not a finite ``(K, d)`` float tensor."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"codes file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is a bad input, named
        if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err):
            raise ValueError(
                f"{path} holds objects other than tensors, dicts and lists, which torch.load "
                "(weights_only=True) does not read: save the codes and codebook as tensors"
            ) from err
        raise ValueError(
            f"{path} is not a file torch.save wrote ({type(err).__name__} reading it)"
        ) from err
    wanted = '{"codes": (N, *cells) integer tensor, "codebook": (K, d) float tensor}'
    if not isinstance(data, dict) or not {"codes", "codebook"} <= set(data):
        held = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} must hold a dict {wanted}; it holds {held}")
    codes, codebook = data["codes"], data["codebook"]
    if not isinstance(codes, torch.Tensor) or codes.dim() < 2:
        raise ValueError(f"{path}: codes must be an (N, *cells) tensor, got {_described(codes)}")
    if torch.is_floating_point(codes) or torch.is_complex(codes) or codes.dtype == torch.bool:
        raise ValueError(f"{path}: codes must be integer indices, got {codes.dtype}")
    ok = isinstance(codebook, torch.Tensor) and codebook.dim() == 2
    if not ok or not torch.is_floating_point(codebook):
        raise ValueError(
            f"{path}: codebook must be a (K, d) float tensor, got {_described(codebook)}"
        )
    if not torch.isfinite(codebook).all():
        raise ValueError(f"{path}: the codebook holds NaN or inf values")
    num_codes = codebook.shape[0]
    if codes.numel() and not 0 <= int(codes.min()) <= int(codes.max()) < num_codes:
        bad = int(codes.min()) if int(codes.min()) < 0 else int(codes.max())
        raise ValueError(
            f"{path}: code {bad} is not one of the codebook's {num_codes} (0..{num_codes - 1})"
        )
    return codes.long(), codebook.float()


def _described(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def codes_config(path: str | Path, overrides: Sequence = ()) -> CodesConfig:
    """The config of a fresh ``pbridge train CODES.pt``: the file's settings
    (:data:`~pbridge.config.CODES_FILE_SETTINGS`, read from it, never given), the overrides
    applied; the file must leave at least one training item beside the ``test_items``."""
    for item in overrides:
        if item.key in CODES_FILE_SETTINGS:
            raise ValueError(f"{item.origin}: {item.key} is read from the codes file, not set")
    codes, codebook = read_codes_file(path)
    config = apply_overrides(
        CodesConfig(
            codes_file=str(Path(path).resolve()),
            codes_sha256=file_sha256(path),
            cells=tuple(codes.shape[1:]),
            num_codes=codebook.shape[0],
            latent_dim=codebook.shape[1],
        ),
        overrides,
    )
    if config.test_items >= len(codes):
        raise ValueError(
            f"test_items={config.test_items} holds out every one of the {len(codes)} items of "
            f"{path}: set test_items below {len(codes)}"
        )
    return config


def holds_file(config: dict, path: str) -> bool:
    """Whether the run of ``config`` (its config.json) trained on the codes file ``path``
    (same content)."""
    return Path(path).is_file() and file_sha256(path) == config.get("codes_sha256")


def codes_data(config: CodesConfig) -> RunData:
    """The run's codes: the training items, then the last ``config.test_items`` held out;
    ``ValueError`` when the file is gone or its content changed since the run started."""
    path = Path(config.codes_file)
    if not path.is_file():
        raise ValueError(f"the run's codes file {path} is gone: put it back to read the run's data")
    if file_sha256(path) != config.codes_sha256:
        raise ValueError(
            f"{path} changed since the run started (SHA-256 {config.codes_sha256[:12]}... in "
            "config.json): the run's data are the file as it was"
        )
    codes, _ = read_codes_file(path)
    return RunData(codes[: -config.test_items], codes[-config.test_items :])


def build_codes_model(config: CodesConfig, codebook: torch.Tensor | None = None) -> BridgeCodeModel:
    """The :class:`BridgeCodeModel` of ``config`` on ``codebook`` (default zeros: a model to
    load a checkpoint into, which holds the codebook)."""
    if codebook is None:
        codebook = torch.zeros(config.num_codes, config.latent_dim)
    network = build_chain_network(
        config.latent_dim,
        config.num_codes,
        config.cells,
        config.self_condition,
        config.width,
        config.blocks,
    )
    return BridgeCodeModel(
        codebook,
        network,
        image_schedule(config.num_steps, config.beta_start, config.beta_end),
        config.cells,
        self_condition=config.self_condition,
        importance=config.importance,
        readout_aux=config.readout_aux,
    )


@torch.no_grad()
def bound_bits_per_cell(
    model: BridgeCodeModel, codes: torch.Tensor, strata: int
) -> tuple[float, float, torch.Tensor]:
    """The bound on -log2 p(k) per cell of ``codes`` ``(N, *cells)`` (one draw per item, the
    read-out and ``strata`` stratified steps): its mean over items, standard error and the
    per-item values ``(N,)``."""
    dev = model.codebook.weight.device
    bits = torch.cat(
        [model.bound_bits_per_cell(k.to(dev), strata).cpu() for k in codes.split(BATCH_SIZE)]
    )
    stderr = float(bits.std()) / math.sqrt(len(bits)) if len(bits) > 1 else float("nan")
    return float(bits.mean()), stderr, bits


def independent_cells_bits(train: torch.Tensor, test: torch.Tensor, num_codes: int) -> float:
    """Bits per cell of ``test`` under independent cells with the training codes' frequencies
    (add-one smoothed): the reference a prior that learned nothing of the codes' structure
    would reach."""
    counts = torch.bincount(train.flatten(), minlength=num_codes).double() + 1
    log_p = (counts / counts.sum()).log2()
    return float(-log_p[test.flatten()].mean())


def _score(
    config: CodesConfig,
    model: BridgeCodeModel,
    data: RunData,
    out: Path,
    weights: str,
    progress: Progress,
) -> dict:
    """The held-out bound (100 stratified steps per item), the independent-cells reference
    and the codes used by ``config.num_samples`` prior draws (the T-step chain)."""
    progress.stage(
        f"scoring: the bound on {len(data.test_x):,} held-out items, then "
        f"{config.num_samples:,} prior draws"
    )
    with pyro.validation_enabled(False):
        bits, stderr, _ = bound_bits_per_cell(model, data.test_x, strata=100)
        drawn = model.sample_codes(config.num_samples)
    return {
        "test_bits_per_cell": bits,
        "test_bits_per_cell_stderr": stderr,
        "test_items": len(data.test_x),
        "independent_cells_bits_per_cell": independent_cells_bits(
            data.train_x, data.test_x, config.num_codes
        ),
        "prior_codes_used": code_usage(drawn, config.num_codes).codes_used,
        "data_codes_used": code_usage(data.test_x, config.num_codes).codes_used,
    }


def _plot_samples(model: nn.Module, path: Path, step: int) -> None:
    """The training hooks' picture of prior draws at ``step``."""
    drawn = model.sample_codes(DRAWS_SHOWN).cpu()
    plot_code_draws(
        drawn, model.codebook.num_codes, path, f"{DRAWS_SHOWN} prior draws, step {step}"
    )


def run_codes(
    config: CodesConfig,
    out_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Fit the bridge prior to the codes of ``config.codes_file``, score it and write the run
    directory (:func:`~.pipeline.run`; ``resume``: continue from its checkpoint;
    ``overwrite``: replace the run it holds)."""
    _, codebook = read_codes_file(config.codes_file)
    recipe = Recipe(
        config=config,
        data=lambda: codes_data(config),
        stages=[
            Stage(CHECKPOINT_FILE, config.train.steps, lambda: build_codes_model(config, codebook))
        ],
        score=partial(_score, config),
        plot_samples=_plot_samples,
    )
    return run(recipe, out_dir, device, progress, resume, overwrite)


def open_codes_run(
    run_dir: str | Path, device: str = "auto", weights: str | None = None
) -> LoadedRun:
    """A codes run directory read back, with its EMA or raw ``weights``
    (:func:`~.run_dir.open_run`; the codebook comes from the checkpoint)."""
    return open_run(run_dir, CodesConfig, build_codes_model, device, weights)


def evaluate_codes_run(
    loaded: LoadedRun,
    run_dir: str | Path,
    settings,
    sampler: SamplerSettings = ANCESTRAL,
    progress: Progress = QUIET,
) -> dict:
    """``pbridge evaluate`` on an opened codes run: the bound in bits per cell on the first
    ``settings.bpd_items`` held-out items (``settings.chain_steps`` stratified steps each),
    the independent-cells reference, and ``settings.num_samples`` prior draws by ``sampler``
    (codes used, seconds per draw). Writes ``eval.json``."""
    run = Path(run_dir)
    config, model = loaded.config, loaded.variant
    check_sampler(model, sampler)
    check_writable(run)
    data = codes_data(config)
    test = data.test_x[: settings.bpd_items]
    torch.manual_seed(settings.seed)
    pyro.set_rng_seed(settings.seed)
    with pyro.validation_enabled(False):
        progress.stage(f"evaluating the bound on {len(test):,} held-out items")
        bits, stderr, _ = bound_bits_per_cell(model, test, settings.chain_steps)
        progress.stage(f"drawing {settings.num_samples:,} samples")
        start = time.perf_counter()
        on_step = chain_progress(model, sampler, progress, f"{settings.num_samples} draws")
        drawn = model.sample_codes(settings.num_samples, sampler, on_step)
        seconds = time.perf_counter() - start
    result = {
        "variant": "codes",
        "sampler": asdict(sampler),
        "test_bits_per_cell": bits,
        "test_bits_per_cell_stderr": stderr,
        "test_items": len(test),
        "independent_cells_bits_per_cell": independent_cells_bits(
            data.train_x, test, config.num_codes
        ),
        "prior_codes_used": code_usage(drawn, config.num_codes).codes_used,
        "sampling_seconds_per_item": seconds / settings.num_samples,
        "not_applicable": "bits/dim, masked-patch bits and FD-FMNIST are image measures",
    }
    write_json(run / "eval.json", result)
    return result


def sample_codes_run(
    loaded: LoadedRun, run: Path, num: int, sampler: SamplerSettings, progress: Progress
) -> dict:
    """``num`` prior draws of an opened codes run by ``sampler``: ``samples.pt`` (``{"codes":
    (num, *cells) int64}``) and ``samples.png`` (the first :data:`DRAWS_SHOWN`)."""
    model = loaded.variant
    start = time.perf_counter()
    with pyro.validation_enabled(False):
        drawn = model.sample_codes(
            num, sampler, chain_progress(model, sampler, progress, f"{num} draws")
        )
    seconds = time.perf_counter() - start
    drawn = drawn.cpu()
    with atomic_write(run / "samples.pt") as tmp:
        torch.save({"codes": drawn}, tmp)
    shown = drawn[:DRAWS_SHOWN]
    how = f"{sampler_name(sampler)}, {weights_name(loaded.weights)}"
    title = f"{len(shown)} of {num} prior draws\n{how}"
    with atomic_write(run / "samples.png") as tmp:
        plot_code_draws(shown, model.codebook.num_codes, tmp, title)
    return {
        "num": num,
        "seconds_per_draw": seconds / num,
        "prior_codes_used": code_usage(drawn, model.codebook.num_codes).codes_used,
    }


def analyze_codes_run(
    loaded: LoadedRun,
    run: Path,
    num: int,
    items: int,
    sampler: SamplerSettings = ANCESTRAL,
    progress: Progress = QUIET,
) -> dict:
    """``pbridge analyze`` on an opened codes run: arviz InferenceData in ``analysis.nc`` with
    the groups ``prior`` (``codes`` of ``num`` draws by ``sampler``, dims draw x cells),
    ``observed_data`` (the first ``items`` held-out items' ``codes``), ``log_likelihood``
    (``codes``: each held-out cell's share of one draw of the bound on log p(k), nats, 100
    stratified steps; summed over an item's cells, a lower bound on its log p(k)) and
    ``training``; the plots ``code_usage.png`` (prior draws and held-out codes),
    ``bound_by_cell.png`` (the bound's mean bits at each cell) and ``elbo_trace.png``."""
    model, config = loaded.variant, loaded.config
    k = codes_data(config).test_x[:items].to(model.codebook.weight.device)
    progress.stage(f"drawing {num:,} prior samples; the bound on {len(k):,} held-out items")
    with pyro.validation_enabled(False), torch.no_grad():
        on_step = chain_progress(model, sampler, progress, f"{num} draws")
        drawn = model.sample_codes(num, sampler, on_step).cpu()
        prior = model.prior(len(k)).with_options(strata=100)
        shares = prior.cell_log_prob(gather_codes(k, model.codebook())).cpu()
    cell_dims = (
        [f"cell_{i}" for i in range(len(config.cells))] if len(config.cells) > 1 else ["cell"]
    )
    coords = dict(zip(cell_dims, map(np.arange, config.cells), strict=True))
    attrs = {"variant": type(model).__name__, "codes_file": config.codes_file}
    idata = az.from_dict(
        observed_data={"codes": k.cpu().numpy()},
        log_likelihood={"codes": shares.numpy()[None, None]},
        coords={"item": np.arange(len(k)), **coords},
        dims={"codes": ["item", *cell_dims]},
        attrs=attrs,
    )
    prior_draws = {"codes": drawn.numpy()[None]}
    dims = {"codes": cell_dims}
    idata.extend(az.from_dict(prior=prior_draws, coords=coords, dims=dims, attrs=attrs))
    add_training(idata, loaded.losses, type(model).__name__)
    idata.to_netcdf(str(run / "analysis.nc"))
    counts = {
        "prior draws": torch.bincount(drawn.flatten(), minlength=config.num_codes),
        "held-out codes": torch.bincount(k.cpu().flatten(), minlength=config.num_codes),
    }
    plot_code_usage(counts, run / "code_usage.png")
    bits = -shares.mean(0) / math.log(2)
    _plot_bound_by_cell(bits, run / "bound_by_cell.png", len(k))
    plot_elbo_trace(torch.tensor(loaded.losses), run / "elbo_trace.png")
    return {
        "written": ["analysis.nc", "code_usage.png", "bound_by_cell.png", "elbo_trace.png"],
        "groups": idata.groups(),
        "prior_codes_used": int((counts["prior draws"] > 0).sum()),
        "test_bits_per_cell": float(bits.mean()),
    }


def _plot_bound_by_cell(bits: torch.Tensor, path: Path, items: int) -> None:
    """The bound's mean bits at each cell ``(*cells)``: bars for a sequence, a map for a grid
    (more dimensions: flattened)."""
    fig = Figure(figsize=(6, 4.5) if bits.dim() == 2 else (8, 3.5))
    ax = fig.subplots()
    if bits.dim() == 2:
        image = ax.imshow(bits.numpy(), cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="bits")
        ax.set_xticks(range(bits.shape[1]))
        ax.set_yticks(range(bits.shape[0]))
        ax.set_xlabel("cell x")
        ax.set_ylabel("cell y")
    else:
        flat = bits.flatten()
        ax.bar(np.arange(len(flat)), flat.numpy())
        ax.set_xlabel("cell")
        ax.set_ylabel("bits")
    ax.set_title(f"the bound's share of each cell, mean over {items} held-out items", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_code_draws(codes: torch.Tensor, num_codes: int, path: str | Path, title: str) -> None:
    """Drawn codes ``(N, *cells)`` as colours (one colour scale, 0..K-1): a row per draw for
    sequences (and grids of more than two dimensions, flattened), a tile per draw for a
    two-dimensional grid."""
    n = codes.shape[0]
    if codes.dim() == 3:
        cols = min(n, 8)
        rows = (n + cols - 1) // cols
        fig = Figure(figsize=(max(6, 1.3 * cols + 1.2), 1.3 * rows + 1), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, grid in zip(axes.flat, codes, strict=False):
            image = ax.imshow(grid.numpy(), cmap="viridis", vmin=0, vmax=num_codes - 1)
        fig.colorbar(image, ax=axes, label="code", shrink=0.8)
    else:
        flat = codes.flatten(1)
        fig = Figure(
            figsize=(min(12, max(6, 2 + 0.3 * flat.shape[1])), min(10, 2 + 0.12 * n)),
            layout="constrained",
        )
        ax = fig.subplots()
        image = ax.imshow(
            flat.numpy(),
            cmap="viridis",
            vmin=0,
            vmax=num_codes - 1,
            aspect="auto",
            interpolation="nearest",
        )
        ax.set_xlabel("cell")
        ax.set_ylabel("draw")
        fig.colorbar(image, ax=ax, label="code")
    layout = "one per tile" if codes.dim() == 3 else "one per row"
    first, _, rest = title.partition("\n")
    fig.suptitle(f"{first} ({layout}; colour: the code)\n{rest}".strip(), fontsize=10)
    fig.savefig(path, dpi=100)
