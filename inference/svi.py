"""SVI training of a Pyro model/guide pair on the joint ELBO.

The loss (:func:`~.bound.negative_elbo`: Pyro's ``Trace_ELBO`` differentiable loss per item) is
minimised with ``torch.optim.Adam`` and gradient-norm clipping over every parameter
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from pbridge.checkpoint import load_checkpoint_of, previous_path, save_checkpoint
from pbridge.config import TrainSettings
from pbridge.variant import CodeModel, SplitsLearningRate, Variant

from . import bound
from .bound import (
    Batch,
    batch_arguments,
    batch_rows,
    check_model_guide_sites,
    elbo_terms,
    non_finite_sites,
    posterior_code_usage,
)
from .distributed import ELBOLoss, World, local_batches, mean_over_processes, step_seed
from .training_log import Hook, TrainingLog, csv_columns, untouched

__all__ = [
    "TrainSettings",
    "TrainResult",
    "TrainState",
    "Hook",
    "TrainingInterrupted",
    "train",
]


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
    data, *more = batch_arguments(data)
    if not isinstance(data, torch.Tensor):
        raise TypeError(
            f"data must be a torch.Tensor, got {type(data).__name__} (x, or a tuple (x, *more) "
            "of tensors)"
        )
    codes = isinstance(variant, CodeModel)
    if codes and (torch.is_floating_point(data) or data.dtype == torch.bool):
        raise TypeError(f"codes must be integer indices (int64), got {data.dtype}")
    if not codes and not torch.is_floating_point(data):
        raise TypeError(f"data must be floating point (e.g. uint8 images / 255), got {data.dtype}")
    if data.shape[0] == 0:
        raise ValueError("the training data set is empty")
    expected = variant.data_shape if isinstance(variant, Variant | CodeModel) else None
    if expected is not None and tuple(data.shape[1:]) != tuple(expected):
        raise ValueError(
            f"data items have shape {tuple(data.shape[1:])}, the variant expects {tuple(expected)}"
        )
    if codes and not 0 <= int(data.min()) <= int(data.max()) < variant.codebook.num_codes:
        bad = int(data.min()) if int(data.min()) < 0 else int(data.max())
        raise ValueError(
            f"code {bad} in the data is not one of the codebook's {variant.codebook.num_codes} "
            f"(0..{variant.codebook.num_codes - 1})"
        )
    if not codes and not torch.isfinite(data).all():
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
    with torch.autocast(batch_arguments(x)[0].device.type, torch.bfloat16, enabled=bf16):
        loss = loss_of(x, beta)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    return loss


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
    elbo, dims = sum(terms.values()), batch_arguments(batch)[0][0].numel()
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


def _parameter_groups(variant: nn.Module, lr: float) -> list[dict[str, Any]]:
    """Adam's parameter groups of ``variant``: one at ``lr``, or a
    :class:`~pbridge.variant.SplitsLearningRate` variant's, each at ``lr`` times its scale."""
    if not isinstance(variant, SplitsLearningRate):
        return [{"params": list(variant.parameters()), "lr": lr}]
    return [
        {"params": group["params"], "lr": lr * group.get("lr_scale", 1.0)}
        for group in variant.parameter_groups()
    ]


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
        self.optimiser = torch.optim.Adam(
            _parameter_groups(variant, settings.lr), lr=settings.lr, foreach=True
        )
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
    stream: Iterator[Batch] | None = None

    @property
    def device(self) -> torch.device:
        return batch_arguments(self.data)[0].device

    def batch(self, step: int) -> Batch:
        """The batch of ``step``: the next batch of an iterable's stream, this process's shard
        of the global batch (re-seeding torch by (seed, rank, step)), or ``batch_size`` items
        drawn with the batch generator."""
        if self.stream is not None:
            return next(self.stream)
        if self.shards is not None:
            index = next(self.shards).to(self.device)
            torch.manual_seed(step_seed(self.settings.seed, self.world.rank, step))
        else:
            num_items = batch_arguments(self.data)[0].shape[0]
            index = torch.randint(
                num_items,
                (self.settings.batch_size,),
                generator=self.state.generator,
                device=self.device,
            )
        return batch_rows(self.data, index)


def _as_batch(batch: Any, device: torch.device | None) -> Batch:
    """A batch an iterable yielded as :data:`~.bound.Batch`: a list (as a ``DataLoader`` of a
    ``TensorDataset`` yields) becomes a tuple, a one-tensor one its tensor; moved to
    ``device``."""
    if isinstance(batch, list | tuple):
        batch = tuple(batch) if len(batch) != 1 else batch[0]
    if device is None:
        return batch
    if isinstance(batch, tuple):
        return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def _stream(data: Iterable, device: torch.device | None) -> tuple[Batch, Iterator[Batch]]:
    """The first batch of the iterable ``data`` and the stream of every batch from the first
    on, passing over ``data`` again each time it runs out (a new epoch: a ``DataLoader``
    reshuffles). An iterable that yields nothing, or nothing a second time (a generator), is
    a ``ValueError``."""
    first_epoch = iter(data)
    first = next(first_epoch, None)
    if first is None:
        raise ValueError("the data iterable yields no batch")

    def batches() -> Iterator[Batch]:
        yield _as_batch(first, device)
        count = 1
        for batch in first_epoch:
            count += 1
            yield _as_batch(batch, device)
        while True:
            again = 0
            for batch in data:
                again += 1
                yield _as_batch(batch, device)
            if not again:
                raise ValueError(
                    f"the data iterable ran out after {count} batches and yields none when "
                    "iterated again: pass one that can be iterated again (a DataLoader, a list)"
                )

    return _as_batch(first, device), batches()


def _checked_data(
    variant: nn.Module, data: Batch | Iterable[Batch], world: World
) -> tuple[Batch, Iterator[Batch] | None]:
    """``data`` (an iterable's first batch) checked, and the model/guide pair on it; with the
    stream of an iterable's batches (``None`` for tensors)."""
    stream = None
    if not isinstance(data, torch.Tensor | tuple):
        if world.size > 1:
            raise ValueError("data-parallel training takes the data as a tensor, not an iterable")
        if not isinstance(data, Iterable):
            raise TypeError(
                f"data must be a torch.Tensor, got {type(data).__name__} (x, a tuple (x, *more) "
                "of tensors, or an iterable of such batches)"
            )
        param = next(variant.parameters(), None)
        data, stream = _stream(data, None if param is None else param.device)
        if not all(isinstance(t, torch.Tensor) for t in batch_arguments(data)):
            raise TypeError(
                "data must be a torch.Tensor, got an iterable whose first batch is not a tensor "
                "or a tuple of tensors (x, a tuple (x, *more) of tensors, or an iterable of such "
                "batches)"
            )
    _check_data(variant, data)
    check_model_guide_sites(variant, data)
    return data, stream


def _open_loop(
    variant: nn.Module, data: Batch, settings: TrainSettings, world: World, first_step: int
) -> _Loop:
    """The loop of a run continuing at ``first_step`` (its state is loaded by the caller)."""
    device = batch_arguments(data)[0].device
    state = TrainState(variant, settings, device)
    if world.size == 1:
        loss_of, shards = (lambda x, beta: bound.negative_elbo(variant, x, beta)), None
    else:
        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(ELBOLoss(variant), device_ids=ids)
        num_items = batch_arguments(data)[0].shape[0]
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
        probe = batch_rows(loop.data, torch.arange(min(2, batch_arguments(loop.data)[0].shape[0])))
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
    data: Batch | Iterable[Batch],
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
    (passed to model and guide as ``model(x, *more)``), already on the variant's device: each
    step draws ``settings.batch_size`` items. ``data`` may instead be any iterable of such
    batches (a ``torch.utils.data.DataLoader``, a list): each step takes the next batch, moved
    to the variant's device, and the iterable is passed over again when it runs out; the
    iterable sets the batch size, and a resumed run starts it afresh (only a tensor gives a
    resumed run the batches of an uninterrupted one). Data-parallel training takes a tensor.

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
    world = world or World()
    data, stream = _checked_data(variant, data, world)
    saved = None
    if resume and checkpoint is not None:
        path = Path(checkpoint)
        if path.is_file() or previous_path(path).is_file():
            saved = load_checkpoint_of(variant, path)[0]
    first_step = saved["step"] + 1 if saved else 1
    loop = _open_loop(variant, data, settings, world, first_step)
    loop.stream = stream
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
