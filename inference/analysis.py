"""``pbridge analyze RUN_DIR``: a trained variant's prior and posterior as arviz InferenceData.

:func:`to_inferencedata` collects, for a variant and test items ``x``
(docs/analysis.md lists every variable with its dims):

- ``prior``, ``prior_predictive``: draws of the generative model with every site sampled
  (Algorithm 2 for the bridge): z_e^0, the codes of z_q^0, the label y of a labelled variant,
  and x with the decoder's mean on z_q^0; one draw per item of a batch of ``num``;
- ``posterior``: ``num`` guide draws of z_e^0 and z_q^0 for every test item
  (``pyro.infer.Predictive`` on the guide), the entropy of the model's discrete kernel at z_e^0
  and the code counts of every draw;
- ``posterior_predictive``: x | z_q^0 for those draws (``Predictive`` on the model with the
  latents conditioned on the guide's draws, the observation unconditioned) and its mean;
- ``observed_data``: the test items (and labels);
- ``training``: the per-step training loss from the checkpoint (dim ``step``).

:func:`analyze_run` writes it to ``analysis.nc`` (NetCDF) with ``analysis_summary.csv``
(``az.summary`` of code counts and per-cell entropy) and the plots ``code_usage.png``,
``elbo_trace.png``, ``code_entropy.png`` (where the variant has a code kernel) and
``reverse_chain.png`` (image runs of a bridge variant; a toy run's chain is in its
``trajectories.png``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pyro
import torch
import xarray as xr
from pyro import poutine
from pyro.infer import Predictive
from torch import nn

from pbridge.bridge_prior import prior_options
from pbridge.codebook import code_logits, gather_codes
from pbridge.models.paper_bridge import PaperBridgeVQVAE
from pbridge.samplers import ANCESTRAL, OnStep, SamplerSettings
from pbridge.variant import BridgeChain, TakesLabels

from .plots import plot_code_entropy, plot_code_usage, plot_elbo_trace, plot_reverse_chain
from .progress import QUIET, Progress
from .run_dir import LoadedRun
from .sampling import chain_progress, check_sampler

__all__ = [
    "to_inferencedata",
    "add_training",
    "summarise",
    "reverse_chain_frames",
    "analyze_variant",
]

_LATENTS = ("z_e_0", "z_q_0")


def _dims(variant: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the latent cells' dims and of one item's dims."""
    cells, data = len(variant.latent_shape) - 1, len(variant.data_shape)
    cell_dims = {1: ["cell"], 2: ["cell_y", "cell_x"]}.get(cells)
    data_dims = ["channel", "pixel_y", "pixel_x"] if data == 3 else None
    return (
        cell_dims or [f"cell_{i}" for i in range(cells)],
        data_dims or [f"x_dim_{i}" for i in range(data)],
    )


def _indices(z_q: torch.Tensor, codes: torch.Tensor, lead: int) -> torch.Tensor:
    """Code indices ``(*lead_shape, *cells)`` of code vectors ``(*lead_shape, d, *cells)`` with
    ``lead`` leading (draw, item) dims."""
    flat = z_q.flatten(0, lead - 1)
    return code_logits(flat, codes, 1.0).argmax(-1).view(*z_q.shape[:lead], *flat.shape[2:])


def _counts(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Cells on each code, per draw: ``(draws, ...) -> (draws, K)``."""
    one_hot = torch.nn.functional.one_hot(indices.flatten(1), num_codes)
    return one_hot.sum(1)


def _entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last axis: ``(..., K) -> (...)``."""
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def _entropy(z_e: torch.Tensor, codes: torch.Tensor, tau: float, lead: int) -> torch.Tensor:
    """Entropy (nats) of softmax(-||z_e - e_k||^2 / tau) per cell: ``(*lead, d, *cells) ->
    (*lead, *cells)``."""
    entropy = _entropy_of(code_logits(z_e.flatten(0, lead - 1), codes, tau))
    return entropy.view(*z_e.shape[:lead], *entropy.shape[1:])


def _numpy(values: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.detach().cpu().numpy() for name, value in values.items()}


def _one_chain(values: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Draws ``(draw, ...)`` as arviz's ``(chain = 1, draw, ...)``."""
    return {name: value[None] for name, value in _numpy(values).items()}


def _check_inputs(
    variant: nn.Module,
    x: torch.Tensor,
    num: int,
    labels: torch.Tensor | None,
    sampler: SamplerSettings,
) -> None:
    """Refuses the arguments of :func:`to_inferencedata` that do not fit ``variant``."""
    if num <= 0:
        raise ValueError(f"num must be a positive integer, got {num}")
    takes_labels = isinstance(variant, TakesLabels)
    if takes_labels != (labels is not None):
        needs = "needs" if takes_labels else "does not take"
        raise ValueError(f"a {type(variant).__name__} {needs} labels")
    if labels is not None and labels.shape != x.shape[:1]:
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
    check_sampler(variant, sampler)


def _draw_all(
    variant: nn.Module,
    args: tuple[torch.Tensor, ...],
    num: int,
    sampler: SamplerSettings,
    progress: Progress,
) -> tuple[poutine.Trace, dict[str, torch.Tensor], torch.Tensor]:
    """The prior's trace of ``num`` draws (the chain's steps shown by ``progress``), ``num``
    guide draws of the latents per item of ``args = (x, [labels])`` ``(num, items, ...)``, and
    the model's x given each of them ``(num, items, *data_shape)``."""
    x = args[0]
    with pyro.validation_enabled(False):
        placeholder = x.new_zeros((num, *variant.data_shape))
        on_step = chain_progress(variant, sampler, progress, f"{num} prior draws")
        prior_model = prior_options(poutine.uncondition(variant.model), sampler, None, on_step)
        trace = poutine.trace(prior_model).get_trace(placeholder)
        latents = Predictive(variant.guide, num_samples=num, return_sites=_LATENTS)(*args)
        # Predictive runs the model twice to set up before its draws: with the latents pinned
        # to the guide's first draw, those runs do not draw the prior (the whole chain).
        pinned = {name: value[0] for name, value in latents.items()}
        if len(args) > 1:
            pinned["y"] = args[1]
        model = poutine.condition(poutine.uncondition(variant.model), data=pinned)
        posterior_x = Predictive(model, posterior_samples=latents, return_sites=("x",))(*args)["x"]
    return trace, latents, posterior_x


def _latent_variables(
    variant: nn.Module, trace: poutine.Trace, latents: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The prior's and the posterior's variables of the groups ``prior`` and ``posterior``:
    code indices, code counts, z_e^0, code entropy and labels, where the variant has them."""
    codes = variant.codebook()
    prior = {n: trace.nodes[n]["value"] for n in (*_LATENTS, "y") if n in trace.nodes}
    readout = trace.nodes["z_q_0"]["fn"].conditional_logits  # a CodeDistribution's
    tau = variant.paper.tau_p if isinstance(variant, PaperBridgeVQVAE) else None  # its kernel's
    prior_codes = _indices(prior["z_q_0"], codes, 1)
    post_codes = _indices(latents["z_q_0"], codes, 2)
    prior_vars = {"z_q_0": prior_codes, "code_count": _counts(prior_codes, codes.shape[0])}
    post_vars = {"z_q_0": post_codes, "code_count": _counts(post_codes, codes.shape[0])}
    if "z_e_0" in latents:
        prior_vars["z_e_0"], post_vars["z_e_0"] = prior["z_e_0"], latents["z_e_0"]
        if tau is not None:
            post_vars["code_entropy"] = _entropy(latents["z_e_0"], codes, tau, 2)
    if readout is not None:  # p(z_q^0 | the chain's end) of each prior draw
        prior_vars["code_entropy"] = _entropy_of(readout)
    if "y" in prior:
        prior_vars["y"] = prior["y"]
    return prior_vars, post_vars


def _groups(
    variant: nn.Module, groups: dict[str, dict[str, torch.Tensor]], items: int
) -> az.InferenceData:
    """InferenceData of the named ``groups`` (``posterior``, ``posterior_predictive``,
    ``observed_data``, ``prior``, ``prior_predictive``) with the dims of docs/analysis.md; a
    prior draw is one generated item: its variables have no item dim."""
    cell_dims, data_dims = _dims(variant)
    coords = {"code": np.arange(variant.codebook.num_codes), "item": np.arange(items)}
    dims = {
        "z_e_0": ["item", "latent_dim", *cell_dims],
        "z_q_0": ["item", *cell_dims],
        "code_entropy": ["item", *cell_dims],
        "code_count": ["code"],
        "x": ["item", *data_dims],
        "x_mean": ["item", *data_dims],
        "y": ["item"],
    }
    attrs = {"variant": type(variant).__name__}
    idata = az.from_dict(
        posterior=_one_chain(groups["posterior"]),
        posterior_predictive=_one_chain(groups["posterior_predictive"]),
        observed_data=_numpy(groups["observed_data"]),
        coords=coords,
        dims=dims,
        attrs=attrs,
    )
    prior_dims = {name: [d for d in value if d != "item"] for name, value in dims.items()}
    prior_side = az.from_dict(
        prior=_one_chain(groups["prior"]),
        prior_predictive=_one_chain(groups["prior_predictive"]),
        coords=coords,
        dims=prior_dims,
        attrs=attrs,
    )
    idata.extend(prior_side)
    return idata


@torch.no_grad()
def to_inferencedata(
    variant: nn.Module,
    x: torch.Tensor,
    num: int = 16,
    labels: torch.Tensor | None = None,
    losses: Sequence[float] | None = None,
    sampler: SamplerSettings = ANCESTRAL,
    progress: Progress = QUIET,
) -> az.InferenceData:
    """Prior, posterior and predictive draws of a trained ``variant`` (in eval mode) as arviz
    InferenceData (``az.from_dict``, one chain), with the test items as observed data.

    Args:
        x: ``(items, *data_shape)`` test items for the posterior.
        num: prior draws, and guide draws per test item.
        labels: ``(items,)`` class labels, for (and only for) a
            :class:`~pbridge.variant.TakesLabels` variant.
        losses: the per-step training loss (``TrainResult.losses``, the checkpoint's
            ``"losses"``), stored in the group ``training``; ``None``: no such group.
        sampler: the sampler of the bridge's prior draws.
        progress: shows the steps of the prior's chain (:mod:`.progress`).
    """
    _check_inputs(variant, x, num, labels, sampler)
    args = (x,) if labels is None else (x, labels)
    trace, latents, posterior_x = _draw_all(variant, args, num, sampler, progress)
    prior_vars, post_vars = _latent_variables(variant, trace, latents)
    prior_z_q = trace.nodes["z_q_0"]["value"]
    post_mean = variant.decoder(latents["z_q_0"].flatten(0, 1)).mean
    groups = {
        "prior": prior_vars,
        "prior_predictive": {
            "x": trace.nodes["x"]["value"],
            "x_mean": variant.decoder(prior_z_q).mean,
        },
        "posterior": post_vars,
        "posterior_predictive": {"x": posterior_x, "x_mean": post_mean.view(posterior_x.shape)},
        "observed_data": {"x": x} if labels is None else {"x": x, "y": labels},
    }
    idata = _groups(variant, groups, x.shape[0])
    if losses is not None:
        add_training(idata, losses, type(variant).__name__)
    return idata


def add_training(idata: az.InferenceData, losses: Sequence[float], variant: str) -> None:
    """The group ``training`` of ``idata``: the per-step training loss ``negative_elbo`` (dim
    ``step``, from 1) of a ``variant``."""
    steps = np.arange(1, len(losses) + 1)
    loss = xr.DataArray(np.asarray(losses, dtype=np.float64), coords={"step": steps})
    idata.add_groups(training=xr.Dataset({"negative_elbo": loss}, attrs={"variant": variant}))


def summarise(idata: az.InferenceData) -> pd.DataFrame:
    """``az.summary`` (mean, sd, 94% HDI over the draws) of the code counts of the posterior
    (all test items per draw) and of the prior (per generated item), and of the posterior code
    entropy of every cell averaged over the test items (when the variant has one)."""
    posterior = idata.posterior[["code_count"]]
    if "code_entropy" in idata.posterior:
        posterior["code_entropy"] = idata.posterior["code_entropy"].mean("item")
    tables = [
        az.summary(posterior, kind="stats").rename(index=lambda name: f"posterior {name}"),
        az.summary(idata.prior[["code_count"]], kind="stats").rename(
            index=lambda name: f"prior {name}"
        ),
    ]
    return pd.concat(tables)


@torch.no_grad()
def reverse_chain_frames(
    variant: nn.Module,
    chains: int,
    columns: int,
    labels: torch.Tensor | None = None,
    on_step: OnStep | None = None,
) -> tuple[list[int], torch.Tensor]:
    """Run ``chains`` backward chains (Algorithm 2, T steps) and decode the states at
    ``columns`` times from T to 0 through their nearest codes.

    ``labels: (chains,)`` condition a labelled variant's chains (its network bound to them,
    ``chain_network(labels)``); ``on_step(done, total)`` is told the chain's progress. Returns
    the times and the decoder means ``(chains, columns, *data_shape)``.
    """
    schedule, codes = variant.schedule, variant.codebook()
    times = sorted({round(schedule.num_steps * i / (columns - 1)) for i in range(columns)})[::-1]
    z_T = schedule.stationary_draw(codes.new_empty((chains, *variant.latent_shape)))
    network = variant.chain_network(labels) if labels is not None else None
    kept = variant.chain_states(z_T, tuple(times), network, on_step)
    # z_q^t per state: the head's most probable code (tight), the nearest code (paper).
    indices = [variant.state_logits(kept[t], t, network).argmax(-1) for t in times]
    nearest = torch.stack(indices, dim=1).flatten(0, 1)  # (chains * columns, *cells)
    decoded = variant.decoder(gather_codes(nearest, codes)).mean
    return times, decoded.view(chains, len(times), *decoded.shape[1:])


def analyze_variant(
    loaded: LoadedRun,
    run: Path,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    num: int,
    sampler: SamplerSettings = ANCESTRAL,
    progress: Progress = QUIET,
) -> dict[str, Any]:
    """:func:`to_inferencedata` of an opened run's variant on the test items ``x`` (and their
    ``labels``, used where the variant takes them) with ``num`` draws, written to the run
    directory ``run`` as ``analysis.nc``, with ``analysis_summary.csv`` and the plots
    (``pbridge analyze`` on a toy or image run). Returns what was written and a few
    figures."""
    variant = loaded.variant
    dev = next(variant.parameters()).device
    labels = labels.to(dev) if labels is not None and isinstance(variant, TakesLabels) else None
    x, items = x.to(dev), x.shape[0]
    progress.stage(f"drawing {num:,} prior samples and {num:,} guide draws of {items:,} items")
    idata = to_inferencedata(variant, x, num, labels, loaded.losses, sampler, progress)
    idata.to_netcdf(str(run / "analysis.nc"))
    summary = summarise(idata)
    summary.to_csv(run / "analysis_summary.csv")
    counts = {
        "posterior": torch.from_numpy(idata.posterior["code_count"].sum(("chain", "draw")).values),
        "prior": torch.from_numpy(idata.prior["code_count"].sum(("chain", "draw")).values),
    }
    written = ["analysis.nc", "analysis_summary.csv", *_plots(idata, variant, counts, run)]
    if isinstance(variant, BridgeChain) and len(variant.data_shape) == 3:
        chains = variant.num_classes if labels is not None else 8
        progress.stage(f"running {chains} backward chains for reverse_chain.png")
        classes = torch.arange(chains, device=dev) if labels is not None else None
        on_step = progress.steps(f"backward chain, {chains} chains")
        times, frames = reverse_chain_frames(variant, chains, 9, classes, on_step)
        rows = [f"y = {c}" for c in range(chains)] if classes is not None else None
        plot_reverse_chain(frames.cpu(), times, run / "reverse_chain.png", rows)
        written.append("reverse_chain.png")
    return {
        "written": written,
        "groups": idata.groups(),
        "posterior_codes_used": int((counts["posterior"] > 0).sum()),
        "prior_codes_used": int((counts["prior"] > 0).sum()),
    }


def _plots(
    idata: az.InferenceData, variant: nn.Module, counts: dict[str, torch.Tensor], run: Path
) -> list[str]:
    """``code_usage.png`` of the prior's and posterior's code ``counts`` ``(K,)``,
    ``elbo_trace.png`` and ``code_entropy.png`` where ``idata`` has what they show; returns
    the names written."""
    written = ["code_usage.png"]
    plot_code_usage(counts, run / "code_usage.png")
    if "training" in idata.groups():
        losses = torch.from_numpy(idata.training["negative_elbo"].values)
        plot_elbo_trace(losses, run / "elbo_trace.png")
        written.append("elbo_trace.png")
    for group, over, label in (
        (
            "posterior",
            ("chain", "draw", "item"),
            "posterior: p(z_q^0 | z_e^0) at the guide's z_e^0",
        ),
        ("prior", ("chain", "draw"), "prior draws: the read-out p(z_q^0 | z^1)"),
    ):
        if "code_entropy" in idata[group]:
            entropy = idata[group]["code_entropy"].mean(over).values
            plot_code_entropy(
                torch.from_numpy(entropy),
                math.log(variant.codebook.num_codes),
                run / "code_entropy.png",
                label,
            )
            written.append("code_entropy.png")
    return written
