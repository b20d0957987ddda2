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
from collections.abc import Callable, Iterator
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
from tqdm.auto import tqdm

from pbridge.bridge_prior import prior_options
from pbridge.checkpoint import (
    check_state_fits,
    load_latest_checkpoint,
    previous_path,
    save_checkpoint,
)
from pbridge.codebook import CodeUsage, code_usage
from pbridge.config import TrainSettings

from .distributed import ELBOLoss, World, local_batches, mean_over_processes, step_seed

__all__ = [
    "Batch",
    "TrainSettings",
    "TrainResult",
    "TrainingInterrupted",
    "non_finite_sites",
    "resolve_device",
    "load_checkpoint_of",
    "train",
    "negative_elbo",
    "posterior_code_usage",
    "estimate_elbo",
    "elbo_terms",
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
    """Per-step negative ELBO per item (``losses``) and the wall time of the loop."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


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


@torch.no_grad()
def elbo_terms(variant: nn.Module, x: Batch) -> dict[str, float]:
    """One draw of the ELBO split by site, nats per item: ``log p - log q`` of every latent site
    (``z_e`` sites summed, so the chain and the guide's entropy are one term) and ``log p`` of
    the observation ``x``. Surrogate sites are left out; the values add up to the ELBO."""
    guide = poutine.block(variant.guide, hide=list(getattr(variant, "surrogate_sites", ())))
    args = _arguments(x)
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(variant.model, trace=guide_trace)).get_trace(*args)
    terms: dict[str, float] = {}
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            key = "z_e" if name.startswith("z_e_") else name
            value = sign * float(site["fn"].log_prob(site["value"]).sum()) / args[0].shape[0]
            terms[key] = terms.get(key, 0.0) + value
    return terms


@torch.no_grad()
def estimate_elbo(
    variant: nn.Module, x: Batch, repeats: int = 10, strata: int | None = None
) -> tuple[float, float]:
    """The ELBO per item (nats) on ``x``, its mean over ``repeats`` one-sample estimates and the
    standard error of that mean. Surrogate sites named in ``variant.surrogate_sites`` are left out,
    so the figure is the bound itself. ``strata``: the bridge's prior scores ``strata``
    stratified chain steps per item (:func:`~pbridge.bridge_prior.prior_options`; a lower
    variance bound for evaluation); ``None``: its training estimate."""
    guide = poutine.block(variant.guide, hide=list(getattr(variant, "surrogate_sites", ())))
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
    expected = getattr(variant, "data_shape", None)
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


def _summary(variant: nn.Module, batch: Batch, dims: int) -> dict[str, str | int]:
    """The progress bar's figures for ``batch``: -ELBO, bits/dim, its terms, codebook usage.
    Their draws come from forked random states, restored afterwards, so showing the bar
    never changes the training run."""
    device = _arguments(batch)[0].device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        terms = elbo_terms(variant, batch)
        usage = posterior_code_usage(variant, batch)
    elbo = sum(terms.values())
    shown = {
        "-elbo": -elbo,
        "bits/dim": -elbo / (dims * math.log(2)),
        **terms,
        "codes": usage.codes_used,
        "perplexity": usage.perplexity,
    }
    return {k: f"{v:.2f}" if isinstance(v, float) else v for k, v in shown.items()}


def train(
    variant: nn.Module,
    data: Batch,
    settings: TrainSettings,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    extra: dict[str, Any] | None = None,
    world: World | None = None,
) -> TrainResult:
    """Train ``variant`` on ``data: (N, ...)``, or on ``(x, *more)`` of tensors with N rows each
    (passed to model and guide as ``model(x, *more)``), already on the variant's device.

    With ``world`` of more than one process (:mod:`pbridge.inference.distributed`), the loss
    runs under DistributedDataParallel on this process's shard of each global batch of
    ``settings.batch_size`` items, losses and stop requests are averaged over the processes,
    and only process 0 writes checkpoints and shows progress.

    With ``checkpoint``, the training state (parameters, optimiser, learning-rate schedule, step,
    losses, every random-number state, the variant's class) is written there atomically, with a
    checksum and the previous file kept as ``<checkpoint>.prev`` (:mod:`pbridge.checkpoint`),
    every ``settings.checkpoint_every`` steps and at the end, with ``extra`` (e.g. the config)
    alongside; ``resume=True`` continues from the newest intact one, so an interrupted run ends
    with the same parameters as an uninterrupted one.

    SIGINT / SIGTERM during training finish the current step, write a checkpoint and raise
    :class:`TrainingInterrupted`. A non-finite loss or gradient raises ``FloatingPointError``
    naming the step and the sites or parameters that went non-finite; the last checkpoint is
    then left as it was.
    """
    _check_data(variant, data)
    x_all = _arguments(data)[0]
    world = world or World()
    distributed = world.size > 1
    if distributed:
        ids = [x_all.device.index] if x_all.device.type == "cuda" else None
        ddp = DistributedDataParallel(ELBOLoss(variant), device_ids=ids)
    optimiser = torch.optim.Adam(variant.parameters(), lr=settings.lr, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda i: (
            0.5 * (1 + math.cos(math.pi * i / settings.steps))
            if settings.lr_decay == "cosine"
            else 1.0
        ),
    )
    generator = torch.Generator(device=x_all.device).manual_seed(settings.seed)
    result = TrainResult()
    first_step = 1
    if resume and checkpoint is not None:
        path = Path(checkpoint)
        if path.is_file() or previous_path(path).is_file():
            state, _ = load_checkpoint_of(variant, path)
            variant.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            schedule.load_state_dict(state["schedule"])
            generator.set_state(state["batch_rng"])
            torch.set_rng_state(state["torch_rng"])
            if torch.cuda.is_available() and state.get("cuda_rng"):
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            result.losses = list(state["losses"])
            first_step = state["step"] + 1
    if distributed:
        batches = local_batches(
            x_all.shape[0], settings.batch_size, world, settings.seed, first_step
        )

    def loss_of(x: Batch, beta: float) -> torch.Tensor:
        return ddp(x, beta) if distributed else negative_elbo(variant, x, beta)

    def save(step: int) -> None:
        save_checkpoint(
            {
                **(extra or {}),
                "variant": type(variant).__name__,
                "model": variant.state_dict(),
                "optimiser": optimiser.state_dict(),
                "schedule": schedule.state_dict(),
                "batch_rng": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "losses": result.losses,
                "step": step,
            },
            checkpoint,
        )

    start = time.perf_counter()
    steps = range(first_step, settings.steps + 1)
    bar = tqdm(
        steps,
        disable=not (progress and world.is_main),
        desc="SVI",
        unit="step",
        initial=first_step - 1,
        total=settings.steps,
    )
    stop: dict[str, str | None] = {"signal": None}
    with _signals_as_flag(stop):
        for step in bar:
            if distributed:
                index = next(batches).to(x_all.device)
                torch.manual_seed(step_seed(settings.seed, world.rank, step))
            else:
                index = torch.randint(
                    x_all.shape[0], (settings.batch_size,), generator=generator, device=x_all.device
                )
            batch = _rows(data, index)
            rng_before = _rng_states(x_all.device)
            beta = min(1.0, step / settings.latent_warmup) if settings.latent_warmup else 1.0
            loss = _loss_and_gradients(loss_of, optimiser, batch, beta, settings.autocast)
            grad_norm = torch.nn.utils.clip_grad_norm_(variant.parameters(), settings.clip_norm)
            shared = torch.tensor(
                [float(loss.detach()), float(stop["signal"] is not None)], device=x_all.device
            )
            shared = mean_over_processes(shared, world)
            value = float(shared[0])
            if shared[1] > 0 and stop["signal"] is None:
                stop["signal"] = "a signal to another process"
            if not (math.isfinite(value) and math.isfinite(float(grad_norm))):
                _set_rng_states(x_all.device, rng_before)  # replay the same draws, unclipped
                if not math.isfinite(value):
                    sites = non_finite_sites(variant, batch)
                    named = ", ".join(sites) or "no single site (the surrogate or a sum)"
                    raise FloatingPointError(f"non-finite loss at step {step}: {named}")
                _loss_and_gradients(loss_of, optimiser, batch, beta, settings.autocast)
                names = [
                    n
                    for n, p in variant.named_parameters()
                    if p.grad is not None and not torch.isfinite(p.grad).all()
                ]
                raise FloatingPointError(
                    f"non-finite gradient at step {step} in {', '.join(names[:5])}"
                    + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                )
            optimiser.step()
            schedule.step()
            result.losses.append(value)
            if progress and world.is_main and step % 100 == 0:
                bar.set_postfix(_summary(variant, batch, x_all[0].numel()))
            if (checkpoint is not None and world.is_main) and (
                step == settings.steps
                or stop["signal"] is not None
                or (settings.checkpoint_every and step % settings.checkpoint_every == 0)
            ):
                save(step)
            if stop["signal"] is not None:
                bar.close()
                raise TrainingInterrupted(
                    step, stop["signal"], Path(checkpoint) if checkpoint else None
                )
    result.seconds = time.perf_counter() - start
    if distributed:  # every process leaves together, after process 0's last checkpoint
        torch.distributed.barrier()
    pyro.clear_param_store()
    return result
