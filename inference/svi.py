"""SVI training of a Pyro model/guide pair on the joint ELBO.

The loss is Pyro's ``Trace_ELBO`` differentiable loss divided by the batch size (negative ELBO
per item), minimised with ``torch.optim.Adam`` and gradient-norm clipping over every parameter
of the variant: encoder, decoder, codebook and prior train together. Options: a warm-up of the
latent (KL) terms, ``beta * (log p(z) - log q(z))`` with beta rising linearly from 0 to 1, by a
``poutine.scale`` on the unobserved sites of model and guide; bfloat16 autocast of the networks.

A batch is ``x: (B, ...)`` or a tuple ``(x, *more)`` of tensors with B rows each (e.g. class
labels ``y: (B,)``); model and guide are called as ``model(x, *more)``.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.scale_messenger import ScaleMessenger
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from pbridge.bridge_prior import prior_options
from pbridge.checkpoint import (
    check_state_fits,
    load_latest_checkpoint,
    previous_path,
    save_checkpoint,
)
from pbridge.codebook import CodeUsage, code_usage
from pbridge.config import TrainSettings
from pbridge.variant import SurrogateSites, Variant

from .distributed import ELBOLoss, World, local_batches, mean_over_processes, step_seed
from .training_log import Hook, TrainingLog, csv_columns, untouched

__all__ = [
    "Batch",
    "TrainSettings",
    "TrainResult",
    "TrainState",
    "Hook",
    "TrainingInterrupted",
    "non_finite_sites",
    "resolve_device",
    "load_checkpoint_of",
    "train",
    "negative_elbo",
    "posterior_code_usage",
    "estimate_elbo",
    "elbo_terms",
    "elbo_per_item",
    "bound_guide",
    "check_model_guide_sites",
]


Batch = torch.Tensor | tuple[torch.Tensor, ...]


def _arguments(batch: Batch) -> tuple[torch.Tensor, ...]:
    """The model's and guide's arguments: ``(x,)`` or the tuple ``(x, *more)`` itself."""
    return batch if isinstance(batch, tuple) else (batch,)


def _rows(batch: Batch, index: torch.Tensor) -> Batch:
    """The rows ``index`` of every tensor of the batch."""
    return tuple(t[index] for t in batch) if isinstance(batch, tuple) else batch[index]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"`` / ``"cuda[:i]"`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda[:i]'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


@dataclass
class TrainResult:
    """Per-step negative ELBO per item (``losses``), the wall time of the loop, and the EMA of
    the weights at the end (a state dict of the variant; ``None`` when not kept)."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    ema: dict[str, torch.Tensor] | None = None

    def use_ema(self, variant: nn.Module) -> None:
        """Load the EMA weights into ``variant`` (as sampling and evaluation use by default);
        nothing when none were kept."""
        if self.ema is not None:
            variant.load_state_dict(self.ema)


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
    args = _arguments(x)
    return Trace_ELBO().differentiable_loss(model, guide, *args) / args[0].shape[0]


def load_checkpoint_of(variant: nn.Module, path: Path) -> tuple[dict, Path]:
    """The newest intact checkpoint at ``path`` (or its previous copy), checked to have been
    written by a run of ``variant``'s class with tensors of its shapes; returns the state and
    the file read."""
    state, used = load_latest_checkpoint(path)
    written_by = state.get("variant")
    if written_by != type(variant).__name__:
        raise ValueError(
            f"{used} was written by a {written_by} run; cannot resume a "
            f"{type(variant).__name__} from it"
        )
    check_state_fits(variant, state["model"], str(used))
    return state, used


@torch.no_grad()
def posterior_code_usage(variant: nn.Module, x: Batch) -> CodeUsage:
    """Codebook usage of the guide's z_q^0 on ``x``."""
    site = poutine.trace(variant.guide).get_trace(*_arguments(x)).nodes["z_q_0"]
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
    args = _arguments(_rows(data, torch.arange(min(items, len(_arguments(data)[0])))))
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
    args = _arguments(x)
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
    args = _arguments(x)
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
    args = _arguments(x)
    values = torch.tensor(
        [-float(Trace_ELBO().loss(model, guide, *args)) / args[0].shape[0] for _ in range(repeats)]
    )
    stderr = float(values.std() / repeats**0.5) if repeats > 1 else float("nan")
    return float(values.mean()), stderr


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived during training; a checkpoint of ``step`` was written."""

    def __init__(self, step: int, signal_name: str, checkpoint: Path | None) -> None:
        where = f"; checkpoint written to {checkpoint}" if checkpoint else " (no checkpoint path)"
        super().__init__(f"training stopped by {signal_name} after step {step}{where}")
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint


@contextmanager
def _signals_as_flag(flag: dict[str, str | None]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM set ``flag["signal"]`` instead of killing the
    process (main thread only; elsewhere signals keep their handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        flag["signal"] = signal.Signals(signum).name

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def _check_data(variant: nn.Module, data: Batch) -> None:
    if isinstance(data, tuple) and not data:
        raise ValueError("data is an empty tuple; expected x or a tuple (x, *more)")
    data, *more = _arguments(data)
    if not isinstance(data, torch.Tensor):
        raise TypeError(
            f"data must be a torch.Tensor, got {type(data).__name__} (x, or a tuple (x, *more) "
            "of tensors)"
        )
    if not torch.is_floating_point(data):
        raise TypeError(f"data must be floating point (e.g. uint8 images / 255), got {data.dtype}")
    if data.shape[0] == 0:
        raise ValueError("the training data set is empty")
    expected = variant.data_shape if isinstance(variant, Variant) else None
    if expected is not None and tuple(data.shape[1:]) != tuple(expected):
        raise ValueError(
            f"data items have shape {tuple(data.shape[1:])}, the variant expects {tuple(expected)}"
        )
    if not torch.isfinite(data).all():
        bad = int((~torch.isfinite(data)).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"the training data contain NaN or inf values (first in item {bad})")
    for i, tensor in enumerate(more, start=1):
        if not isinstance(tensor, torch.Tensor) or tensor.shape[:1] != data.shape[:1]:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(
                f"data[{i}] must be a tensor with one row per item ({data.shape[0]}), got {got}"
            )


def _rng_states(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_states(device: torch.device, states: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)


def _loss_and_gradients(
    loss_of: Callable[[Batch, float], torch.Tensor],
    optimiser: torch.optim.Optimizer,
    x: Batch,
    beta: float,
    bf16: bool,
) -> torch.Tensor:
    """The training loss ``loss_of(x, beta)`` (bfloat16 autocast if ``bf16``), its gradients
    left in the parameters' ``.grad``."""
    with torch.autocast(_arguments(x)[0].device.type, torch.bfloat16, enabled=bf16):
        loss = loss_of(x, beta)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    return loss


def non_finite_sites(variant: nn.Module, x: Batch) -> list[str]:
    """Sample sites of one model/guide draw on ``x`` whose log-density is NaN or infinite,
    as ``"name (guide)"`` / ``"name (model)"`` (surrogate ``pyro.factor`` sites included)."""
    args = _arguments(x)
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


def _raise_non_finite(loop: _Loop, step: int, batch: Batch, beta: float, loss: float) -> None:
    """Raise ``FloatingPointError`` naming the sites whose log-density went non-finite (a
    non-finite ``loss``) or the parameters whose gradient did; the caller has restored the
    random states of the step, so the diagnosis replays the same draws."""
    variant = loop.state.variant
    if not math.isfinite(loss):
        sites = non_finite_sites(variant, batch)
        named = ", ".join(sites) or "no single site (the surrogate or a sum)"
        raise FloatingPointError(f"non-finite loss at step {step}: {named}")
    _loss_and_gradients(loop.loss_of, loop.state.optimiser, batch, beta, loop.settings.autocast)
    names = [
        n
        for n, p in variant.named_parameters()
        if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
    raise FloatingPointError(
        f"non-finite gradient at step {step} in {', '.join(names[:5])}"
        + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    )


def _summary(variant: nn.Module, batch: Batch) -> dict[str, float | int]:
    """The log's figures of ``batch`` (:data:`~.training_log.SUMMARY_COLUMNS`, the codebook's
    for a variant with one, and one ``term_<site>`` per ELBO term), computed
    :func:`~.training_log.untouched`: showing or logging them never changes the training run."""
    with untouched(variant):
        terms = elbo_terms(variant, batch)
        usage = posterior_code_usage(variant, batch) if isinstance(variant, Variant) else None
    elbo, dims = sum(terms.values()), _arguments(batch)[0][0].numel()
    summary: dict[str, float | int] = {
        "neg_elbo": -elbo,
        "bits_per_dim": -elbo / (dims * math.log(2)),
    }
    if usage is not None:
        summary.update(codes_used=usage.codes_used, perplexity=usage.perplexity)
    return summary | {f"term_{name}": value for name, value in terms.items()}


def _lr_factor(steps: int, decay: str) -> Callable[[int], float]:
    """The learning-rate factor after ``i`` schedule steps: cosine from 1 to 0 over ``steps``,
    or constant."""
    return lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)) if decay == "cosine" else 1.0


def ema_decay_at(decay: float, updates: int) -> float:
    """The EMA's decay at its ``updates``-th update after the first (which copies the weights):
    ``min(decay, (1 + n) / (10 + n))``, the warm-up of TensorFlow's ExponentialMovingAverage, so
    that a short run's average forgets its random initialisation (with 0.995 fixed, 150 steps
    leave 47% of it in)."""
    return min(decay, (1 + updates) / (10 + updates))


def warmup_ema(decay: float) -> Callable[[list, list, torch.Tensor], None]:
    """``AveragedModel``'s ``multi_avg_fn`` for an EMA with :func:`ema_decay_at`'s warm-up:
    ``ema <- d ema + (1 - d) weights``, integer buffers copied."""

    @torch.no_grad()
    def update(averaged: list, current: list, updates: torch.Tensor) -> None:
        weight = 1.0 - ema_decay_at(decay, int(updates))
        for mean, value in zip(averaged, current, strict=True):
            if mean.is_floating_point():
                mean.lerp_(value, weight)
            else:
                mean.copy_(value)

    return update


class TrainState:
    """Everything a checkpoint restores: the variant's weights, the optimiser (Adam), the
    learning-rate schedule, the batch generator, the EMA of the weights (when
    ``settings.ema_decay > 0``: ``AveragedModel`` with :func:`warmup_ema`, buffers averaged
    too), the per-step losses and the last step done."""

    def __init__(self, variant: nn.Module, settings: TrainSettings, device: torch.device) -> None:
        self.variant, self.settings = variant, settings
        self.optimiser = torch.optim.Adam(variant.parameters(), lr=settings.lr, foreach=True)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimiser, _lr_factor(settings.steps, settings.lr_decay)
        )
        self.generator = torch.Generator(device=device).manual_seed(settings.seed)
        self.ema = (
            AveragedModel(variant, multi_avg_fn=warmup_ema(settings.ema_decay), use_buffers=True)
            if settings.ema_decay
            else None
        )
        self.losses: list[float] = []
        self.step = 0

    @property
    def weights_for_sampling(self) -> nn.Module:
        """The model sampling and evaluation use by default: the EMA weights when kept."""
        return self.variant if self.ema is None else self.ema.module

    def advance(self) -> None:
        """The optimiser's step, the schedule's and the EMA's, after the gradients."""
        self.optimiser.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update_parameters(self.variant)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's training state, every random-number state included."""
        state = {
            "variant": type(self.variant).__name__,
            "model": self.variant.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "schedule": self.schedule.state_dict(),
            "batch_rng": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "losses": self.losses,
            "step": self.step,
        }
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
            state["ema_updates"] = int(self.ema.n_averaged)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; a checkpoint without EMA weights (written before they were
        kept) starts the average at the next step's weights."""
        self.variant.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
            self.ema.n_averaged.fill_(state["ema_updates"])
        self.losses, self.step = list(state["losses"]), int(state["step"])


@dataclass
class _Loop:
    """What every step of :func:`train` reads: the state, the data, the settings, the
    data-parallel world, the loss (DDP-wrapped across processes) and the stop flag that the
    signal handler sets."""

    state: TrainState
    data: Batch
    settings: TrainSettings
    world: World
    loss_of: Callable[[Batch, float], torch.Tensor]
    shards: Iterator[torch.Tensor] | None
    stop: dict[str, str | None]

    @property
    def device(self) -> torch.device:
        return _arguments(self.data)[0].device

    def batch(self, step: int) -> Batch:
        """The batch of ``step``: this process's shard of the global batch (re-seeding torch
        by (seed, rank, step)), or ``batch_size`` items drawn with the batch generator."""
        if self.shards is not None:
            index = next(self.shards).to(self.device)
            torch.manual_seed(step_seed(self.settings.seed, self.world.rank, step))
        else:
            num_items = _arguments(self.data)[0].shape[0]
            index = torch.randint(
                num_items,
                (self.settings.batch_size,),
                generator=self.state.generator,
                device=self.device,
            )
        return _rows(self.data, index)


def _open_loop(
    variant: nn.Module, data: Batch, settings: TrainSettings, world: World, first_step: int
) -> _Loop:
    """The loop of a run continuing at ``first_step`` (its state is loaded by the caller)."""
    device = _arguments(data)[0].device
    state = TrainState(variant, settings, device)
    if world.size == 1:
        loss_of, shards = (lambda x, beta: negative_elbo(variant, x, beta)), None
    else:
        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(ELBOLoss(variant), device_ids=ids)
        num_items = _arguments(data)[0].shape[0]
        loss_of = ddp
        shards = local_batches(num_items, settings.batch_size, world, settings.seed, first_step)
    return _Loop(state, data, settings, world, loss_of, shards, {"signal": None})


def _take_step(loop: _Loop, step: int) -> tuple[dict[str, float], Batch]:
    """One SVI step: the batch, the loss and its gradients, clipping, the loss and the stop
    flag averaged over the processes, the non-finite guard, then the optimiser's, schedule's
    and EMA's steps. Returns the step's figures (:data:`~.training_log.STEP_COLUMNS`) and
    its batch."""
    state, settings = loop.state, loop.settings
    start = time.perf_counter()
    batch = loop.batch(step)
    rng_before = _rng_states(loop.device)
    beta = min(1.0, step / settings.latent_warmup) if settings.latent_warmup else 1.0
    loss = _loss_and_gradients(loop.loss_of, state.optimiser, batch, beta, settings.autocast)
    grad_norm = float(
        torch.nn.utils.clip_grad_norm_(state.variant.parameters(), settings.clip_norm)
    )
    stopping = float(loop.stop["signal"] is not None)
    shared = torch.tensor([float(loss.detach()), stopping], device=loop.device)
    shared = mean_over_processes(shared, loop.world)
    value = float(shared[0])
    if shared[1] > 0 and loop.stop["signal"] is None:
        loop.stop["signal"] = "a signal to another process"
    if not (math.isfinite(value) and math.isfinite(grad_norm)):
        _set_rng_states(loop.device, rng_before)  # replay the same draws, unclipped
        _raise_non_finite(loop, step, batch, beta, value)
    lr = state.optimiser.param_groups[0]["lr"]
    state.advance()
    state.losses.append(value)
    state.step = step
    seconds = time.perf_counter() - start
    return {
        "step": step,
        "loss": value,
        "lr": lr,
        "grad_norm": grad_norm,
        "seconds": seconds,
    }, batch


def _checkpoint_due(loop: _Loop, step: int) -> bool:
    """Process 0 writes a checkpoint every ``checkpoint_every`` steps, at the last step and
    when training stops on a signal."""
    every = loop.settings.checkpoint_every
    return loop.world.is_main and (
        step == loop.settings.steps
        or loop.stop["signal"] is not None
        or bool(every and step % every == 0)
    )


def _report(loop: _Loop, log: TrainingLog, hooks: Sequence[Hook], row: dict, batch: Batch) -> None:
    """Add the summary of the batch (every ``log_every`` steps) and the figures of the hooks
    that are due to the step's row and write it to the log (process 0 only)."""
    if not loop.world.is_main:
        return
    step, settings = int(row["step"]), loop.settings
    if log.wants_summary and (step % settings.log_every == 0 or step == settings.steps):
        row.update(_summary(loop.state.variant, batch))
    model = loop.state.weights_for_sampling
    for hook in hooks:
        if hook.due(step, settings.steps):
            with untouched(model, eval_mode=True):
                row.update(hook.run(step, model) or {})
    log.write(row)


def _open_log(
    loop: _Loop, progress: bool, log: str | Path | None, hooks: Sequence[Hook], first_step: int
) -> TrainingLog:
    """The training log of process 0 (``train.csv`` at ``log``, if given); silent elsewhere."""
    main, settings = loop.world.is_main, loop.settings
    path = Path(log) if log is not None and main else None
    terms: list[str] = []
    if path is not None:  # the ELBO's sites name the term columns
        probe = _rows(loop.data, torch.arange(min(2, _arguments(loop.data)[0].shape[0])))
        terms = [
            k.removeprefix("term_")
            for k in _summary(loop.state.variant, probe)
            if k.startswith("term_")
        ]
    columns = csv_columns(terms, hooks)
    return TrainingLog(
        path, columns, first_step, settings.steps, settings.log_every, progress and main
    )


def train(
    variant: nn.Module,
    data: Batch,
    settings: TrainSettings,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    extra: dict[str, Any] | None = None,
    world: World | None = None,
    log: str | Path | None = None,
    hooks: Sequence[Hook] = (),
) -> TrainResult:
    """Train ``variant`` on ``data: (N, ...)``, or on ``(x, *more)`` of tensors with N rows each
    (passed to model and guide as ``model(x, *more)``), already on the variant's device.

    With ``world`` of more than one process (:mod:`pbridge.inference.distributed`), the loss
    runs under DistributedDataParallel on this process's shard of each global batch of
    ``settings.batch_size`` items, losses and stop requests are averaged over the processes,
    and only process 0 writes checkpoints, logs and shows progress.

    With ``checkpoint``, the training state (:class:`TrainState`: parameters, optimiser,
    learning-rate schedule, EMA weights, step, losses, every random-number state, the variant's
    class) is written there atomically, with a checksum and the previous file kept as
    ``<checkpoint>.prev`` (:mod:`pbridge.checkpoint`), every ``settings.checkpoint_every`` steps
    and at the end, with ``extra`` (e.g. the config) alongside; ``resume=True`` continues from
    the newest intact one, so an interrupted run ends with the same parameters as an
    uninterrupted one.

    ``log``: the per-step CSV (and TensorBoard scalars beside it; :mod:`.training_log`);
    ``hooks``: functions of the model run every so many steps (:class:`Hook`). Neither changes
    the trained bits.

    SIGINT / SIGTERM during training finish the current step, write a checkpoint and raise
    :class:`TrainingInterrupted`. A non-finite loss or gradient raises ``FloatingPointError``
    naming the step and the sites or parameters that went non-finite; the last checkpoint is
    then left as it was. Before the first step, model and guide are checked to sample the same
    latent sites (:func:`check_model_guide_sites`).
    """
    _check_data(variant, data)
    check_model_guide_sites(variant, data)
    world = world or World()
    saved = None
    if resume and checkpoint is not None:
        path = Path(checkpoint)
        if path.is_file() or previous_path(path).is_file():
            saved = load_checkpoint_of(variant, path)[0]
    first_step = saved["step"] + 1 if saved else 1
    loop = _open_loop(variant, data, settings, world, first_step)
    if saved:
        loop.state.load_state_dict(saved)
    training_log = _open_log(loop, progress, log, hooks, first_step)
    start = time.perf_counter()
    try:
        with _signals_as_flag(loop.stop):
            for step in range(first_step, settings.steps + 1):
                row, batch = _take_step(loop, step)
                _report(loop, training_log, hooks, row, batch)
                if checkpoint is not None and _checkpoint_due(loop, step):
                    training_log.flush()
                    save_checkpoint({**(extra or {}), **loop.state.state_dict()}, checkpoint)
                if loop.stop["signal"] is not None:
                    raise TrainingInterrupted(
                        step, loop.stop["signal"], Path(checkpoint) if checkpoint else None
                    )
    finally:
        training_log.close()
    if world.size > 1:  # every process leaves together, after process 0's last checkpoint
        torch.distributed.barrier()
    pyro.clear_param_store()
    ema = loop.state.ema
    return TrainResult(
        loop.state.losses,
        time.perf_counter() - start,
        None if ema is None else ema.module.state_dict(),
    )
