"""The bound of a Pyro model/guide pair, estimated from traces: the training loss, the ELBO
per item and by site, and the checks that it is one.

The loss is Pyro's ``Trace_ELBO`` differentiable loss divided by the batch size (negative ELBO
per item); ``latent_scale`` = beta weighs the latent sites of model and guide,
``-(log p(x|z) + beta (log p(z) - log q(z)))``, by a ``poutine.scale`` on the unobserved sites.
The bound's figures leave out the guide's training surrogates
(:class:`~pbridge.variant.SurrogateSites`), so they are the ELBO itself.

A batch is ``x: (B, ...)`` or a tuple ``(x, *more)`` of tensors with B rows each (e.g. class
labels ``y: (B,)``); model and guide are called as ``model(x, *more)``.

This module sits below the training loop (:mod:`.svi`) and the data-parallel code
(:mod:`.distributed`), which both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.scale_messenger import ScaleMessenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from pbridge.bridge_prior import prior_options
from pbridge.codebook import CodeUsage, code_usage
from pbridge.variant import SurrogateSites

__all__ = [
    "Batch",
    "batch_arguments",
    "batch_rows",
    "negative_elbo",
    "elbo_terms",
    "elbo_per_item",
    "estimate_elbo",
    "bound_guide",
    "check_model_guide_sites",
    "non_finite_sites",
    "posterior_code_usage",
]


Batch = torch.Tensor | tuple[torch.Tensor, ...]


def batch_arguments(batch: Batch) -> tuple[torch.Tensor, ...]:
    """The model's and guide's arguments: ``(x,)`` or the tuple ``(x, *more)`` itself."""
    return batch if isinstance(batch, tuple) else (batch,)


def batch_rows(batch: Batch, index: torch.Tensor) -> Batch:
    """The rows ``index`` of every tensor of the batch."""
    return tuple(t[index] for t in batch) if isinstance(batch, tuple) else batch[index]


class _LatentScale(ScaleMessenger):
    """``poutine.scale`` restricted to unobserved sample sites (observations and
    ``pyro.factor`` surrogates keep their weight)."""

    def _process_message(self, msg: dict) -> None:
        if not msg["is_observed"]:
            super()._process_message(msg)


def negative_elbo(variant: nn.Module, x: Batch, latent_scale: float = 1.0) -> torch.Tensor:
    """The training loss: a one-sample estimate of the negative ELBO per item, plus any surrogate
    terms the guide adds with ``pyro.factor`` (a differentiable scalar). ``latent_scale`` = beta
    weighs the latent sites of model and guide, ``-(log p(x|z) + beta (log p(z) - log q(z)))``."""
    model, guide = variant.model, variant.guide
    if latent_scale != 1.0:
        model, guide = _LatentScale(latent_scale)(model), _LatentScale(latent_scale)(guide)
    args = batch_arguments(x)
    return Trace_ELBO().differentiable_loss(model, guide, *args) / args[0].shape[0]


@torch.no_grad()
def posterior_code_usage(variant: nn.Module, x: Batch) -> CodeUsage:
    """Codebook usage of the guide's z_q^0 on ``x``."""
    site = poutine.trace(variant.guide).get_trace(*batch_arguments(x)).nodes["z_q_0"]
    return code_usage(site["fn"].indices(site["value"]), variant.codebook.num_codes)


def bound_guide(variant: nn.Module) -> Callable[..., None]:
    """The guide of ``variant`` as a term of the bound: its training surrogates
    (:class:`~pbridge.variant.SurrogateSites`) blocked."""
    hidden = variant.surrogate_sites if isinstance(variant, SurrogateSites) else ()
    return poutine.block(variant.guide, hide=list(hidden))


def check_model_guide_sites(variant: nn.Module, data: Batch, items: int = 2) -> None:
    """``ValueError`` naming the sites unless ``variant``'s model and guide sample the same
    latent sites, traced once on the first ``items`` items of ``data`` as Pyro's validation
    does (:func:`pyro.util.check_model_guide_match`): every unobserved sample site of the
    model (replayed on the guide) must be a site of the guide, and every sample site of the
    guide one of the model. The guide's training surrogates (:class:`~pbridge.variant.
    SurrogateSites`) are guide-only by design; observed sites are the model's own. Nothing of
    the run changes: the draws come from forked random states, without gradients, in a
    parameter store of their own, the variant's buffers restored afterwards, and without
    Pyro's validation of values (a NaN is the training guard's to name)."""
    args = batch_arguments(
        batch_rows(data, torch.arange(min(items, len(batch_arguments(data)[0]))))
    )
    device = args[0].device
    store = pyro.get_param_store()
    buffers = [(buffer, buffer.clone()) for buffer in variant.buffers()]  # batch norm's stats
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        torch.no_grad(),
        store.scope(),
        pyro.validation_enabled(False),  # sites only: a bad value is the training's to name
    ):
        try:
            guide_trace = poutine.trace(bound_guide(variant)).get_trace(*args)
            model = poutine.replay(variant.model, trace=guide_trace)
            model_trace = poutine.trace(model).get_trace(*args)
        finally:
            for buffer, saved in buffers:
                buffer.copy_(saved)
    guide_sites = {
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
        if not site["infer"].get("is_auxiliary")
    }
    model_sites = {
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site) and not site["is_observed"]
    }
    guide_only, model_only = sorted(guide_sites - model_sites), sorted(model_sites - guide_sites)
    if guide_only or model_only:
        named = [f"{', '.join(map(repr, guide_only))} in the guide only"] if guide_only else []
        named += [f"{', '.join(map(repr, model_only))} in the model only"] if model_only else []
        raise ValueError(
            f"the model and guide of {type(variant).__name__} sample different latent sites: "
            f"{'; '.join(named)}; the ELBO is a bound only when the guide draws every unobserved "
            "site of the model and nothing else (a guide's pyro.factor surrogates are named in "
            "its surrogate_sites; docs/tutorial-variant.md)"
        )


def _bound_sites(
    variant: nn.Module, args: tuple[torch.Tensor, ...], strata: int | None
) -> Iterator[tuple[str, float, dict]]:
    """``(name, sign, site)`` of every sample site of one draw of the bound: the guide (its
    surrogates blocked) with sign -1 and the model replayed on it with sign +1, the bridge's
    prior scoring ``strata`` stratified chain steps per item (``None``: its training
    estimate)."""
    guide = bound_guide(variant)
    model = prior_options(variant.model, strata=strata)
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                yield name, sign, site


@torch.no_grad()
def elbo_terms(variant: nn.Module, x: Batch) -> dict[str, float]:
    """One draw of the ELBO split by site, nats per item: ``log p - log q`` of every latent site
    (``z_e`` sites summed, so the chain and the guide's entropy are one term) and ``log p`` of
    the observation ``x``. Surrogate sites are left out; the values add up to the ELBO."""
    args = batch_arguments(x)
    terms: dict[str, float] = {}
    for name, sign, site in _bound_sites(variant, args, None):
        key = "z_e" if name.startswith("z_e_") else name
        value = sign * float(site["fn"].log_prob(site["value"]).sum()) / args[0].shape[0]
        terms[key] = terms.get(key, 0.0) + value
    return terms


@torch.no_grad()
def elbo_per_item(variant: nn.Module, x: Batch, strata: int | None = None) -> torch.Tensor:
    """One draw of the ELBO of every item, nats, ``(N,)`` float64: ``sum over sites of
    log p - log q`` per item, surrogate sites left out, the bridge's prior scoring ``strata``
    stratified chain steps per item. Its mean is one draw of :func:`estimate_elbo`."""
    args = batch_arguments(x)
    n = args[0].shape[0]
    elbo = torch.zeros(n, dtype=torch.float64, device=args[0].device)
    for _, sign, site in _bound_sites(variant, args, strata):
        elbo += sign * site["fn"].log_prob(site["value"]).double().reshape(n, -1).sum(-1)
    return elbo


@torch.no_grad()
def estimate_elbo(
    variant: nn.Module, x: Batch, repeats: int = 10, strata: int | None = None
) -> tuple[float, float]:
    """The ELBO per item (nats) on ``x``, its mean over ``repeats`` one-sample estimates and the
    standard error of that mean. Surrogate sites named in ``variant.surrogate_sites`` are left out,
    so the figure is the bound itself. ``strata``: the bridge's prior scores ``strata``
    stratified chain steps per item (:func:`~pbridge.bridge_prior.prior_options`; a lower
    variance bound for evaluation); ``None``: its training estimate."""
    guide = bound_guide(variant)
    model = prior_options(variant.model, strata=strata)
    args = batch_arguments(x)
    values = torch.tensor(
        [-float(Trace_ELBO().loss(model, guide, *args)) / args[0].shape[0] for _ in range(repeats)]
    )
    stderr = float(values.std() / repeats**0.5) if repeats > 1 else float("nan")
    return float(values.mean()), stderr


def non_finite_sites(variant: nn.Module, x: Batch) -> list[str]:
    """Sample sites of one model/guide draw on ``x`` whose log-density is NaN or infinite,
    as ``"name (guide)"`` / ``"name (model)"`` (surrogate ``pyro.factor`` sites included)."""
    args = batch_arguments(x)
    with torch.no_grad():
        guide_trace = poutine.trace(variant.guide).get_trace(*args)
        model = poutine.replay(variant.model, trace=guide_trace)
        model_trace = poutine.trace(model).get_trace(*args)
    bad = []
    for role, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if not torch.isfinite(site["fn"].log_prob(site["value"]).sum()):
                bad.append(f"{name} ({role})")
    return bad
